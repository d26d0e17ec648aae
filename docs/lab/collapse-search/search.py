"""The collapse search's runner: each setting of a batch in ``batches.py`` is one lab run
(``fastgan.lab.train.train_run`` on the ring, seed 0 unless set, 3,000 steps of batch 128 unless
the setting changes the regime), in its own fresh process, so that the constructor wrappers below
never leak from one setting into the next. One JSON line per run (modes captured, high-quality %,
reverse KL, and (step, modes, high-quality %, samples off the square) at six points of training).

    python docs/lab/collapse-search/search.py 1 2 3 --out docs/lab/collapse-search/runs.jsonl

Setting keys beyond the regime's fields and ``obj`` (Objective fields): ``init`` = ``xavier``
(Xavier-uniform G weights, zero biases), ``ortho:<gain>`` (orthogonal G init) or ``gout:<f>``
(G's output layer scaled by f); ``dw1`` (D's first-layer weights scaled), ``dstd`` (D weights
N(0, dstd), zero biases), ``dxavier`` (Xavier D); ``tanhD`` (a tanh MLPDiscriminator subclass on
the reference backend); ``simul`` (simultaneous updates: G's gradient against the D of the same
step); ``gsteps`` (generator steps per discriminator step, each on fresh noise); ``gbn`` = (width, depth) (PacGAN's batch-norm ReLU generator); ``radius`` / ``std`` /
``shift`` (the ring scaled, its std, its centre moved along x); ``base`` = ``pacgan`` (start from
the lab's ``PACGAN`` regime instead of ``UNROLLED_GAN``; batches up to 35 override it back to what it
was then). Regime fields such as ``lr_decay`` (batches 34-35) are set directly.
"""
import argparse
import json
import math
import runpy
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path


def run(batch, cfg):
    import torch
    torch.set_num_threads(1)
    from torch import nn
    import fastgan.lab.train as T
    from fastgan.lab.data import Mixture, get_dataset
    cfg = dict(cfg)
    name = cfg.pop("name")
    obj = T.get_objective(cfg.pop("objective", "ns"))
    seed = cfg.pop("seed", 0)
    objover = cfg.pop("obj", {})
    if objover:  # a weight given here is absolute (the ring's gamma 0.01 is 100 x its variance)
        obj = replace(obj, **({"penalty_per_variance": False} if "penalty_weight" in objover else {}), **objover)
    init = cfg.pop("init", None)
    dw1 = cfg.pop("dw1", None)
    tanhD = cfg.pop("tanhD", False)
    simul = cfg.pop("simul", False)
    gsteps = cfg.pop("gsteps", 1)
    dxavier = cfg.pop("dxavier", False)
    gbn = cfg.pop("gbn", None)
    dstd = cfg.pop("dstd", None)
    data = cfg.pop("data", "ring")
    radius = cfg.pop("radius", None); std = cfg.pop("std", None)
    mix = get_dataset(data)
    shift = cfg.pop("shift", None)
    if shift:
        mix = Mixture(mix.name, mix.means + torch.tensor([shift, 0.0], dtype=torch.float64), mix.std)
    if radius or std:
        mix = Mixture(mix.name, mix.means * (radius or 1.0), std or mix.std)
    regime = replace(T.PACGAN if cfg.pop("base", "default") == "pacgan" else T.UNROLLED_GAN, **cfg)
    import fastgan

    def after_init(cls, fn):
        """Run fn(module) after cls.__init__: a setting's re-initialisation (patched for this process only)."""
        orig = cls.__init__

        def patched(self, *a, **k):
            orig(self, *a, **k)
            with torch.no_grad():
                fn(self)
        cls.__init__ = patched

    def linears(net):
        return [m for m in net.modules() if isinstance(m, nn.Linear)]

    def xavier(net):
        for m in linears(net):
            nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)

    def ortho(net, gain):
        for m in linears(net):
            nn.init.orthogonal_(m.weight, gain); nn.init.zeros_(m.bias)

    if init and init.startswith("gout:"):
        f = float(init[5:])
        after_init(T.Generator, lambda g: (g.net[-1].weight.mul_(f), g.net[-1].bias.mul_(f)))
    if init and init.startswith("ortho:"):
        after_init(T.Generator, lambda g: ortho(g, float(init[6:])))
    if dw1 is not None:
        after_init(fastgan.MLPDiscriminator, lambda d: linears(d)[0].weight.mul_(dw1))
    backend = "cpu"
    lab_step = T.make_step
    if simul:
        def make_step(G, D, opt_g, opt_d, mixture, objective, regime, backend, rng):
            dtype = next(G.parameters()).dtype
            loss = fastgan.get_loss(objective.loss)
            penalty = objective.make_penalty(mixture)
            n = regime.batch * objective.pack
            def step():
                real = mixture.sample(n, rng, dtype)
                fake = G(torch.randn(n, regime.latent, generator=rng, dtype=dtype))
                opt_d.zero_grad(set_to_none=True); opt_g.zero_grad(set_to_none=True)
                fastgan.discriminator_step(D, real, fake.detach(), loss=loss, penalty=penalty, backend=backend,
                                           generator=rng, backward=True)
                fastgan.generator_step(D, fake, loss=loss, backend=backend).backward()
                opt_d.step(); opt_g.step()
            return step
        T.make_step = make_step
    if gsteps > 1:
        def make_step(G, D, opt_g, opt_d, mixture, objective, regime, backend, rng):
            # the lab's step (D steps, one G step), then gsteps - 1 more G steps: the lab's step
            # with no D step
            full = lab_step(G, D, opt_g, opt_d, mixture, objective, regime, backend, rng)
            g_only = lab_step(G, D, opt_g, opt_d, mixture, replace(objective, d_steps=0), regime, backend, rng)
            def step():
                full()
                for _ in range(gsteps - 1):
                    g_only()
            return step
        T.make_step = make_step
    if gbn:  # PacGAN's generator: ReLU with batch norm, N(0, 0.02) weights (the lab's PACGAN regime has it too)
        assert not init, "gbn replaces the generator: no init setting with it"
        width, depth = gbn
        class BNGen(T.Generator):
            def __init__(self, latent, hidden, activation="tanh", batchnorm=False):
                super().__init__(latent, (width,) * depth, "relu", batchnorm=True)
                T.gaussian_init(self, 0.02)
        T.Generator = BNGen
    if dxavier:
        after_init(fastgan.MLPDiscriminator, xavier)
    if dstd is not None:
        after_init(fastgan.MLPDiscriminator, lambda d: T.gaussian_init(d, dstd))
    if tanhD:
        class TanhD(fastgan.MLPDiscriminator):
            def forward(self, x, *, fused=None):
                h = x.reshape(x.shape[0] // self.pack, self.pack * self.in_features)
                for layer in self.layers:
                    h = torch.tanh(layer(h))
                return self.out(h).squeeze(1)
        fastgan.MLPDiscriminator = TanhD
        backend = "reference"
    if init == "xavier":
        after_init(T.Generator, xavier)
    t = time.time()
    r = T.train_run(mix, obj, seed, regime, backend=backend, snapshots=6)
    hist = []
    from fastgan.lab.metrics import mode_metrics
    for s, x in r.history:
        m = mode_metrics(x, mix)
        far = int((x.abs() > 1.6 * float(mix.means.abs().max())).any(1).sum())
        hist.append((s, m.modes_captured, round(m.high_quality_pct, 1), far))
    m = r.metrics
    return {"batch": batch, "name": name, "obj": obj.name, "seed": seed, "modes": m.modes_captured, "hq": round(m.high_quality_pct, 1),
            "rkl": None if math.isnan(m.reverse_kl) else round(m.reverse_kl, 3), "hist": hist, "sec": round(time.time() - t, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("batches", type=int, nargs="+", help="batch numbers of batches.py")
    p.add_argument("--out", type=Path, required=True, help="JSON lines are appended here")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    args = p.parse_args()
    batches = runpy.run_path(str(Path(__file__).with_name("batches.py")))["BATCHES"]
    jobs = [(b, cfg) for b in args.batches for cfg in batches[b]]
    with ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool, args.out.open("a") as out:
        futures = {pool.submit(run, b, cfg): (b, cfg) for b, cfg in jobs}
        for f in as_completed(futures):
            b, cfg = futures[f]
            try:
                res = f.result()
            except Exception as e:  # a setting that cannot run is recorded, not fatal
                res = {"batch": b, "name": cfg["name"], "error": repr(e)}
            line = json.dumps(res)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()


if __name__ == "__main__":
    main()
