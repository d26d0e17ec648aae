"""discriminator_step on a DistributedDataParallel-wrapped MLPDiscriminator (gloo, 2 CPU ranks).

Each rank takes half of the batch; DDP averages the ranks' gradients, which must equal the
single-process gradients of the full batch, penalty included (the fused step runs inside the
wrapped module's forward, so DDP's all-reduce sees its gradients).
"""
from __future__ import annotations

import copy
import datetime
import faulthandler
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastgan
from fastgan.fused import discriminator_step, generator_step

WORLD = 2
CASES = [  # (loss, penalty factory, steps)
    ("non_saturating", lambda: fastgan.R1Penalty(gamma=3.0), 1),
    ("relativistic", lambda: fastgan.GradientPenalty(weight=5.0), 1),
    ("hinge", lambda: fastgan.R2Penalty(gamma=2.0, every=2), 2),
    ("least_squares", lambda: fastgan.DRAGANPenalty(weight=4.0), 1),
]


def _worker(rank: int, init_file: str, backend: str):
    # a rank that hangs (its peer died inside a collective) dumps its stack and exits: a failure, not a hang
    faulthandler.dump_traceback_later(240, exit=True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        for loss_name, make_penalty, steps in CASES:
            torch.manual_seed(0)  # same model and data on every rank
            D = fastgan.MLPDiscriminator(3, (19, 8), pack=2).double()
            D_ref = copy.deepcopy(D)
            ddp = torch.nn.parallel.DistributedDataParallel(D)
            loss = fastgan.LOSSES[loss_name]()
            pen, ref_pen = make_penalty(), make_penalty()
            for _ in range(steps):
                real = torch.randn(12, 3, dtype=torch.float64)  # 6 rows of pack 2: 3 per rank
                fake = torch.randn(12, 3, dtype=torch.float64)
                eps = (torch.rand(6, dtype=torch.float64) if isinstance(pen, fastgan.GradientPenalty)
                       else torch.rand(12, 3, dtype=torch.float64))
                half = slice(6 * rank, 6 * rank + 6)
                rows = slice(3 * rank, 3 * rank + 3)
                my_eps = eps[rows] if eps.shape == (6,) else eps[half]
                D_ref.zero_grad(set_to_none=True)
                with fastgan.use_backend("reference"):
                    if isinstance(pen, fastgan.DRAGANPenalty):
                        # DRAGAN scales its noise by the batch's std: the objective is the average
                        # of the per-rank objectives (every=1 here)
                        total = 0
                        for r in range(WORLD):
                            h = slice(6 * r, 6 * r + 6)
                            total = total + (loss.discriminator_loss(D_ref(real[h]), D_ref(fake[h]))
                                             + ref_pen(D_ref, real[h], fake[h], eps=eps[h])) / WORLD
                    else:
                        total = (loss.discriminator_loss(D_ref(real), D_ref(fake))
                                 + ref_pen(D_ref, real, fake, eps=eps if eps.shape == (6,) else None))
                    total.backward()
                ddp.zero_grad(set_to_none=True)
                discriminator_step(ddp, real[half], fake[half], loss=loss, penalty=pen, backend=backend,
                                   eps=my_eps).backward()
                for p, q in zip(D.parameters(), D_ref.parameters()):
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12,
                                               msg=lambda m: f"{loss_name}: {m}")
        # generator_step on the wrapper: d loss / d fake only, and DDP's next step is unaffected
        fake = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
        ddp.zero_grad(set_to_none=True)
        generator_step(ddp, fake, loss="non_saturating", backend=backend).backward()
        assert all(p.grad is None for p in D.parameters())
        want = fake.grad.clone()
        fake.grad = None
        generator_step(D_ref, fake, loss="non_saturating", backend="reference").backward()
        torch.testing.assert_close(want, fake.grad, rtol=1e-9, atol=1e-12)
        discriminator_step(ddp, real[:6], fake[:6].detach(), loss="hinge", backend=backend).backward()
        assert all(p.grad is not None for p in D.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_ddp_averages_fused_gradients(backend, tmp_path, monkeypatch):
    if backend != "torch":
        from fastgan import fused
        try:
            fused._resolve(backend, "cpu")
        except (ValueError, RuntimeError) as err:
            pytest.skip(f"fused step backend {backend!r} unavailable: {err}")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    # spawned workers unpickle _worker by its module name (tests.test_mlp_step_ddp): let them
    # import it whatever the import mode (they inherit sys.path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    mp.spawn(_worker, args=(str(tmp_path / "init"), backend), nprocs=WORLD, join=True)
