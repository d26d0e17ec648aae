"""The mode-collapse lab: exact data generators, the published metrics on hand-built samples,
the honest scatter, objectives, the CLI end to end on a tiny configuration, and bitwise
reproducibility."""
import json
import math
from dataclasses import replace

import pytest
import torch

from fastgan.lab import cli, plots
from fastgan.lab.data import get_dataset, grid, ring
from fastgan.lab.metrics import mean_se, mode_metrics
from fastgan.lab.train import UNROLLED_GAN, UNROLLED_GAN_FULL, OBJECTIVES, get_objective, train_run

TINY = replace(UNROLLED_GAN, steps=25, batch=32, latent=8, g_hidden=(16,), d_hidden=(16,), eval_samples=400)


# ---- data ------------------------------------------------------------------------------------
def test_ring_means_and_std():
    mix = ring()
    assert mix.modes == 8 and mix.std == 0.01
    h = math.sqrt(0.5)
    expected = torch.tensor([[1, 0], [h, h], [0, 1], [-h, h], [-1, 0], [-h, -h], [0, -1], [h, -h]],
                            dtype=torch.float64)
    torch.testing.assert_close(mix.means, expected, rtol=0, atol=1e-15)


def test_ring_has_eight_distinct_modes():
    means = ring().means
    dist = torch.cdist(means, means) + torch.eye(8, dtype=torch.float64) * 10
    assert dist.min() == pytest.approx(2 * math.sin(math.pi / 8), rel=1e-14)  # neighbours on the unit circle


def test_grid_means_and_std():
    mix = grid()
    assert mix.modes == 25 and mix.std == 0.05
    got = sorted(map(tuple, mix.means.tolist()))
    assert got == [(float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)]


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_samples_have_equal_weights_and_the_stated_std(name):
    mix = get_dataset(name)
    n = 100_000
    x = mix.sample(n, torch.Generator().manual_seed(1), torch.float64)
    k = torch.cdist(x, mix.means).argmin(dim=1)
    counts = torch.bincount(k, minlength=mix.modes).double()
    p = 1 / mix.modes  # each count ~ Binomial(n, p): 5 standard deviations
    assert (counts - n * p).abs().max() < 5 * math.sqrt(n * p * (1 - p))
    resid = x - mix.means[k]
    assert resid.mean(dim=0).abs().max() < 5 * mix.std / math.sqrt(n)
    assert resid.std(dim=0).sub(mix.std).abs().max() < 0.01 * mix.std  # std of the std ~ 0.2%


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    mix = ring()
    state = torch.get_rng_state()
    a = mix.sample(64, torch.Generator().manual_seed(3))
    b = mix.sample(64, torch.Generator().manual_seed(3))
    c = mix.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.dtype == torch.float32 and a.shape == (64, 2)


def test_unknown_dataset_and_bad_size_raise():
    with pytest.raises(ValueError, match="dataset must be one of"):
        get_dataset("moons")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ring().sample(0, torch.Generator())


# ---- metrics ---------------------------------------------------------------------------------
def test_metrics_all_modes_equally():
    mix = ring()
    m = mode_metrics(mix.means.repeat(10, 1), mix)
    assert (m.modes_captured, m.high_quality_pct) == (8, 100.0)
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-15)


def test_metrics_one_mode():
    mix = grid()
    m = mode_metrics(mix.means[7].repeat(30, 1), mix)
    assert (m.modes_captured, m.high_quality_pct) == (1, 100.0)
    assert m.reverse_kl == pytest.approx(math.log(25), rel=1e-14)


def test_metrics_off_mode_samples_are_not_high_quality():
    mix = ring()
    s = mix.std
    d = lambda dx, dy: torch.tensor([dx * s, dy * s], dtype=torch.float64)  # noqa: E731
    samples = torch.stack([
        mix.means[0], mix.means[0], mix.means[0],  # 3 on mode 0
        mix.means[1] + d(2.99, 0.0),               # inside 3 std of mode 1
        mix.means[2] + d(3.01, 0.0),               # just outside mode 2
        mix.means[3] + d(2.2, 2.2),                # |d| = 3.11 std: outside mode 3
        torch.zeros(2, dtype=torch.float64),       # the centre: far from every mode
        torch.zeros(2, dtype=torch.float64),
    ]).repeat(10, 1)  # 80 rows: more than cdist's exact-path limit
    m = mode_metrics(samples, mix)
    p = [3 / 4, 1 / 4]
    assert m.modes_captured == 2
    assert m.high_quality_pct == pytest.approx(100 * 4 / 8, rel=1e-15)
    assert m.reverse_kl == pytest.approx(sum(q * math.log(8 * q) for q in p), rel=1e-14)


def test_metrics_without_high_quality_samples():
    m = mode_metrics(torch.zeros(5, 2), ring())
    assert (m.modes_captured, m.high_quality_pct) == (0, 0.0) and math.isnan(m.reverse_kl)


def test_mean_and_standard_error():
    assert mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)), rel=1e-15)
    m, se = mean_se([4.0])
    assert m == 4.0 and math.isnan(se)
    assert mean_se([1.0, float("nan"), 3.0]) == pytest.approx((2.0, 1.0), rel=1e-15)


# ---- the honest scatter --------------------------------------------------------------------------
def test_scatter_counts_the_samples_outside_the_square():
    import matplotlib.pyplot as plt
    mix = ring()
    lim = plots.limit(mix)
    assert lim == pytest.approx(1.35)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [lim * 0.99, -lim * 0.99], [lim * 1.01, 0.0], [0.0, -50.0],
                      [-3.0, 3.0]])
    fig, ax = plt.subplots()
    try:
        assert plots.scatter(ax, x, mix) == 3
        assert ax.get_xlim()[1] >= lim and ax.get_ylim()[0] <= -lim
        drawn = sum(len(c.get_offsets()) for c in ax.collections)
        assert drawn == len(x) + mix.modes  # every sample is drawn (the outside ones on the edge)
    finally:
        plt.close(fig)


# ---- objectives and regimes ------------------------------------------------------------------------
def test_objective_settings_belong_to_the_objective():
    wgan = OBJECTIVES["wgan-gp"]
    assert (wgan.d_steps, wgan.adam, wgan.penalty) == (5, (1e-4, 1e-4, (0.5, 0.9)), "gp")
    assert all(OBJECTIVES[o].d_steps == 1 and OBJECTIVES[o].adam is None for o in ("ns", "ns-r1", "ns-pack2"))
    full = UNROLLED_GAN_FULL
    assert (full.steps, full.batch, full.latent, full.g_hidden, full.d_hidden) == (25_000, 512, 256, (128, 128),
                                                                                   (128, 128))
    assert (full.lr_g, full.lr_d, full.betas[0]) == (1e-3, 1e-4, 0.5)
    assert full.adam(wgan) == wgan.adam and full.adam(OBJECTIVES["ns"]) == (1e-3, 1e-4, (0.5, 0.999))
    scaled = replace(full, objective_lr_scale=10.0)
    assert scaled.adam(wgan) == (1e-3, 1e-3, (0.5, 0.9)) and scaled.adam(OBJECTIVES["ns"]) == full.adam(OBJECTIVES["ns"])


def test_r1_weight_scales_with_the_data_variance():
    """R1's gamma is 100 x the variance per coordinate: 0.01 on the ring (std 0.01), 0.25 on the grid
    (std 0.05), and the penalty the step uses carries it; a weight not marked per-variance is absolute."""
    r1, mixtures = OBJECTIVES["ns-r1"], {"ring": ring(), "grid": grid()}
    assert r1.weight_on(ring()) == pytest.approx(0.01, rel=1e-12)
    assert r1.weight_on(grid()) == pytest.approx(0.25, rel=1e-12)
    assert r1.make_penalty(grid()).weight == pytest.approx(0.25, rel=1e-12)
    assert "R1 gamma 100 x the data's variance per coordinate (ring 0.01, grid 0.25)" in r1.describe(mixtures)
    assert r1.describe().endswith("R1 gamma 100 x the data's variance per coordinate")
    wgan = OBJECTIVES["wgan-gp"]
    assert wgan.weight_on(ring()) == wgan.weight_on(grid()) == wgan.make_penalty(grid()).weight == 0.1
    assert "weight 0.1," in wgan.describe(mixtures) and "variance" not in wgan.describe(mixtures)
    assert OBJECTIVES["ns"].make_penalty(ring()) is None


def test_discriminator_choice_changes_only_the_discriminator(tmp_path):
    from fastgan.lab.train import with_discriminator
    one = with_discriminator(UNROLLED_GAN, "1x128")
    assert one.d_hidden == (128,) and replace(one, d_hidden=UNROLLED_GAN.d_hidden, name=UNROLLED_GAN.name) == UNROLLED_GAN
    assert "D MLPDiscriminator 2-128-1 " in one.describe() and "discriminator 1x128" in one.name
    assert with_discriminator(UNROLLED_GAN_FULL, "2x128") is UNROLLED_GAN_FULL
    with pytest.raises(ValueError, match="discriminator must be one of"):
        with_discriminator(UNROLLED_GAN, "3x7")
    args = ["--objectives", "ns", "--steps", "5", "--seeds", "1", "--quiet", "--jobs", "1", "--backend", "reference",
            "--discriminator", "1x128", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["regime"]["d_hidden"] == [128] and "2-128-1 " in (tmp_path / "results.md").read_text()


def test_generator_and_discriminator_activations():
    from fastgan.lab.train import Generator
    torch.set_num_threads(1)
    relu = replace(TINY, g_activation="relu", d_slope=0.0, steps=3)
    a = train_run(ring(), OBJECTIVES["ns"], 0, relu)
    b = train_run(ring(), OBJECTIVES["ns"], 0, replace(TINY, steps=3))
    assert not torch.equal(a.samples, b.samples)
    assert "(relu, " in relu.describe() and "(ReLU; " in relu.describe() and "LeakyReLU 0.2" in TINY.describe()
    with pytest.raises(ValueError, match="activation must be one of"):
        Generator(4, (8,), "gelu")


def test_pacgan_regime_is_the_published_setup():
    from fastgan.lab.train import PACGAN, PACGAN_FULL, REGIMES
    full = PACGAN_FULL
    assert (full.steps, full.batch, full.latent, full.g_hidden, full.d_hidden) == (400_000, 100, 2, (400,) * 4,
                                                                                   (200,) * 3)
    assert (full.lr_g, full.lr_d, full.betas[0], full.init_std) == (1e-4, 1e-4, 0.8, 0.02)
    assert (full.g_activation, full.g_batchnorm, full.objective_lr_scale) == ("relu", True, 1.0)
    # the CPU regime changes only its length, widths and learning rates (and their schedule); it
    # also records the grid's length, which is not a training setting
    assert replace(PACGAN, name=full.name, steps=full.steps, g_hidden=full.g_hidden, d_hidden=full.d_hidden,
                   lr_g=full.lr_g, lr_d=full.lr_d, objective_lr_scale=1.0, lr_warmup=0.0, lr_decay=0.0,
                   grid_steps=0) == full
    assert (PACGAN.steps, PACGAN.g_hidden, PACGAN.d_hidden, PACGAN.lr_g, PACGAN.lr_d) == \
        (6000, (256,) * 3, (128,) * 3, 3e-3, 1e-3)
    assert (PACGAN.lr_warmup, PACGAN.lr_decay) == (0.1, 0.5)
    assert REGIMES["pacgan"] == (PACGAN, PACGAN_FULL) and REGIMES["unrolled-gan"] == (UNROLLED_GAN, UNROLLED_GAN_FULL)
    assert "G MLP 2-400-400-400-400-2 (relu with batch norm" in full.describe()
    text = PACGAN.describe()
    assert "G MLP 2-256-256-256-2 (relu with batch norm" in text and "weights N(0, 0.02)" in text
    assert "rising linearly from 0 over the first 10% of the steps and falling linearly to 0 over the last 50%" in text
    assert "weights N(0" not in UNROLLED_GAN.describe() and "falling" not in UNROLLED_GAN.describe()


def test_learning_rate_schedule():
    from fastgan.lab.train import set_lr
    r = replace(TINY, steps=10, lr_decay=0.5)
    assert [r.lr_factor(i) for i in range(1, 11)] == [1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2]
    w = replace(r, lr_warmup=0.2)
    assert [w.lr_factor(i) for i in (1, 2, 3, 9, 10)] == [0.5, 1.0, 1.0, 0.4, 0.2]
    assert all(TINY.lr_factor(i) == 1.0 for i in range(1, TINY.steps + 1))
    for field in ("lr_decay", "lr_warmup"):
        with pytest.raises(ValueError, match=field):
            replace(TINY, **{field: 1.5})
    p = torch.nn.Parameter(torch.zeros(2))
    plain, tensor = torch.optim.Adam([p], lr=0.1), torch.optim.Adam([p], lr=torch.tensor(0.1))
    lr = tensor.param_groups[0]["lr"]
    set_lr((plain, tensor), (0.5, 0.25), 0.5)
    assert plain.param_groups[0]["lr"] == 0.25 and tensor.param_groups[0]["lr"] is lr and float(lr) == 0.125


def test_decaying_run_is_reproducible_and_differs():
    torch.set_num_threads(1)
    decaying = replace(TINY, lr_decay=0.5, lr_warmup=0.2)
    a, b = (train_run(ring(), OBJECTIVES["ns"], 1, decaying) for _ in range(2))
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, train_run(ring(), OBJECTIVES["ns"], 1, TINY).samples)


def test_batchnorm_generator_and_gaussian_init():
    from fastgan.lab.train import Generator, gaussian_init
    torch.manual_seed(0)
    g = Generator(3, (64, 64), "relu", batchnorm=True)
    linears = [m for m in g.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and [m.bias is None for m in linears] == [True, True, False]
    # each hidden layer is normalised over the batch before its activation
    h = g.net[:2](torch.randn(500, 3))
    assert h.mean(0).abs().max() < 1e-5 and (h.var(0, unbiased=False) - 1).abs().max() < 1e-2  # eps 1e-5 in the variance
    gaussian_init(g, 0.02)
    big = torch.cat([m.weight.detach().reshape(-1) for m in linears])
    assert abs(float(big.std()) - 0.02) < 0.001 and abs(float(big.mean())) < 0.001
    assert all(bool((m.bias == 0).all()) for m in linears if m.bias is not None)
    assert all(bool((n.weight == 1).all()) and bool((n.bias == 0).all()) for n in norms)
    plain = Generator(3, (8,))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules()) and plain.net[0].bias is not None


def test_pacgan_shaped_run_is_reproducible():
    from fastgan.lab.train import PACGAN
    torch.set_num_threads(1)
    tiny = replace(PACGAN, steps=8, batch=16, g_hidden=(16, 16), d_hidden=(16, 16), eval_samples=300)
    a, b, c = (train_run(ring(), OBJECTIVES["ns-pack2"], seed, tiny) for seed in (4, 4, 5))
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert torch.isfinite(a.samples).all()
    # the Gaussian initialisation is what the run starts from: a run without it differs
    assert not torch.equal(a.samples, train_run(ring(), OBJECTIVES["ns-pack2"], 4, replace(tiny, init_std=None)).samples)


def test_unrolled_objectives_by_name():
    u = get_objective("ns-unrolled-5")
    assert (u.loss, u.unrolled, u.unrolled_mode) == ("non_saturating", 5, "exact")
    assert get_objective("ns-unrolled-3-fo").unrolled_mode == "first_order"
    assert get_objective("ns-unrolled") == u and get_objective("ns-unrolled-fo").name == "ns-unrolled-5-fo"
    assert cli.parse_args(["--objectives", "ns", "ns-unrolled-fo"]).objectives == ["ns", "ns-unrolled-5-fo"]
    for bad in ("ns-unrolled-0", "ns-unrolled-x", "nope"):
        with pytest.raises(ValueError, match="objective must be one of"):
            get_objective(bad)


# ---- training and the command -----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", None])  # None: auto, the fastest here
@pytest.mark.parametrize("objective", ["ns-r1", "wgan-gp", "ns-pack2"])
def test_same_seed_same_numbers(objective, backend):
    torch.set_num_threads(1)
    runs = [train_run(ring(), OBJECTIVES[objective], seed, TINY, backend=backend) for seed in (5, 5, 6)]
    a, b, c = runs
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.metrics == b.metrics and a.divergences == b.divergences
    assert a.samples.shape == (TINY.eval_samples, 2)
    assert bool(a.divergences) == OBJECTIVES[objective].logistic


def test_snapshots_do_not_change_the_run():
    torch.set_num_threads(1)
    plain = train_run(ring(), OBJECTIVES["ns"], 2, TINY)
    watched = train_run(ring(), OBJECTIVES["ns"], 2, TINY, snapshots=5)
    assert torch.equal(plain.samples, watched.samples) and plain.history == []
    assert [s for s, _ in watched.history] == [5, 10, 15, 20, 25]
    assert all(x.shape == (TINY.eval_samples, 2) for _, x in watched.history)
    assert torch.equal(watched.history[-1][1], train_run(ring(), OBJECTIVES["ns"], 2, TINY, snapshots=1).history[0][1])


@pytest.mark.parametrize("name", ["ns-unrolled-2", "ns-unrolled-2-fo"])
def test_unrolled_run_is_reproducible_and_differs_from_ns(name):
    torch.set_num_threads(1)
    short = replace(TINY, steps=6)
    a, b = (train_run(ring(), get_objective(name), 1, short, backend="reference") for _ in range(2))
    ns = train_run(ring(), OBJECTIVES["ns"], 1, short, backend="reference")
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, ns.samples)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pacgan", [False, True])  # True: PacGAN-shaped (batch norm and a learning-rate schedule)
def test_cuda_graph_run_is_reproducible(pacgan):
    regime = replace(TINY, g_activation="relu", g_batchnorm=True, init_std=0.02, lr_warmup=0.2, lr_decay=0.5) \
        if pacgan else TINY
    runs = [train_run(ring(), OBJECTIVES[o], 3, regime, device="cuda") for o in ("wgan-gp", "wgan-gp", "ns-r1")]
    a, b, c = runs
    assert torch.isfinite(a.samples).all() and torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)
    if pacgan:  # the schedule reaches the captured graph's Adam (its rates are device tensors)
        constant = train_run(ring(), OBJECTIVES["wgan-gp"], 3, replace(regime, lr_warmup=0.0, lr_decay=0.0),
                             device="cuda")
        assert not torch.equal(a.samples, constant.samples)


def test_cli_end_to_end(tmp_path, capsys):
    args = ["--data", "ring", "--objectives", "ns", "ns-pack2", "--steps", "20", "--seeds", "2", "--quiet",
            "--backend", "reference"]
    out = tmp_path / "lab"
    assert cli.main(args + ["--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| ring | ns |" in printed and "| ring | ns-pack2 |" in printed
    md = (out / "results.md").read_text()
    assert "| ring | ns-pack2 |" in md and "Regime:" in md and "Shortened: 20 steps" in md
    assert "The grid is left out: it needs more steps than the ring (`fastgan lab --data grid --steps 20000`" in md
    report = json.loads((out / "results.json").read_text())
    assert [(r["objective"], r["seed"]) for r in report["runs"]] == [("ns", 0), ("ns", 1), ("ns-pack2", 0),
                                                                   ("ns-pack2", 1)]
    assert report["regime"]["steps"] == 20 and report["seeds"] == 2
    for png in ("lab.png", "hopping.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one process gives the same numbers as two
    assert cli.main(args + ["--out", str(tmp_path / "serial"), "--jobs", "1"]) == 0
    serial = json.loads((tmp_path / "serial" / "results.json").read_text())
    strip = lambda runs: [{k: v for k, v in r.items() if "seconds" not in k} for r in runs]  # noqa: E731
    assert strip(serial["runs"]) == strip(report["runs"])


def test_cli_regime_choice(tmp_path):
    args = ["--regime", "pacgan", "--objectives", "ns", "--steps", "4", "--seeds", "1", "--quiet", "--jobs", "1",
            "--out", str(tmp_path)]
    assert cli.main(args) == 0
    md = (tmp_path / "results.md").read_text()
    assert "Regime: PacGAN toy regime, narrowed and shortened for CPU:" in md
    assert "published 400,000 steps of batch 100" in md
    assert "D MLPDiscriminator 2-128-128-128-1 " in md  # the regime's own discriminator
    assert "G hidden layers 3 x 256 and D 3 x 128 instead of the published 4 x 400 and 3 x 200" in md
    assert "learning rates are G 0.003 / D 0.001 instead of the published 0.0001 / 0.0001" in md
    assert "rises linearly from 0 over the first 10% of the steps and falls linearly to 0 over the last 50%" in md
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["regime"]["g_batchnorm"] is True and report["regime"]["latent"] == 2
    assert cli.parse_args([]).regime == "pacgan"
    assert cli.main(args[:1] + ["unrolled-gan"] + args[2:]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "Regime: unrolled-GAN MLP regime, shortened for CPU:" in md and "narrowed" not in md
    assert "The grid is left out: it needs more steps than the ring; `--full` includes it." in md  # not measured there


def test_cli_names_the_steps_the_grid_needs():
    """The pacgan regime's grid length (20,000 steps) is named when the grid is left out or run
    shorter, and not when it is run that long."""
    from fastgan.lab.train import PACGAN, PACGAN_FULL
    assert PACGAN.grid_steps == 20_000 and PACGAN_FULL.grid_steps == 0
    assert "(`fastgan lab --data grid --steps 20000`" in cli.scope(PACGAN, PACGAN_FULL, 2, ["ring"])
    short = cli.scope(PACGAN, PACGAN_FULL, 2, ["ring", "grid"])
    assert "The grid is undertrained at this length: this regime needs 20,000 steps there (`--steps 20000`)." in short
    assert "grid" not in cli.scope(replace(PACGAN, steps=20_000), PACGAN_FULL, 2, ["grid"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--regime", "nope"])


def test_cli_rejects_bad_options():
    with pytest.raises(SystemExit):
        cli.main(["--objectives", "nope"])
    with pytest.raises(SystemExit):
        cli.main(["--objectives", "ns-unrolled-0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            cli.main(["--device", "cuda"])
    with pytest.raises(SystemExit):
        cli.main(["--steps", "0"])


# ---- what the user sees: progress, help, the opening, the figures ------------------------------
def _progress_lines(tty: bool):
    import io
    jobs = [("ring", "ns", 0), ("ring", "ns", 1)]
    stream = io.StringIO()
    progress = cli.Progress(jobs, 200, stream=stream, tty=tty)
    for job in jobs:  # interleaved, as two workers report them
        progress(job, 0)
    for _ in range(4):
        for job in jobs:
            progress(job, 50)
    progress.close()
    return stream.getvalue()


def test_progress_off_a_terminal_is_plain_lines_per_run():
    """Not a terminal (a log, a pipe): no carriage return, every line names its run; each run
    has a line at its start, at 25%, 50%, 75% and at its end (with its steps and rate)."""
    text = _progress_lines(tty=False)
    assert "\r" not in text and "\033" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert all(len(ln) < 100 for ln in lines)
    for seed in (0, 1):
        own = [ln for ln in lines if f"ring/ns/seed {seed}:" in ln]
        assert own[0] == f"[{seed + 1}/2] ring/ns/seed {seed}: started, 200 steps"
        assert [ln.split("(")[1].split(")")[0] for ln in own[1:]] == ["25%", "50%", "75%", "100%"]
        assert all("steps/s" in ln for ln in own[1:]) and "step 200/200" in own[-1] and own[-1].endswith(" s")
    assert len(lines) == 10


def test_progress_on_a_terminal_leaves_one_line_per_run():
    text = _progress_lines(tty=True)
    kept = [ln.split("\r\033[K")[-1] for ln in text.split("\n")[:-1]]  # what stays on the screen
    assert len(kept) == 2 and all("step 200/200 (100%)" in ln for ln in kept)
    assert {ln.split(":")[0] for ln in kept} == {"[1/2] ring/ns/seed 0", "[2/2] ring/ns/seed 1"}
    assert "\r\033[K[1/2] ring/ns/seed 0: step 100/200 (50%)" in text  # the live line, rewritten in place
    assert text.endswith("s\n")  # nothing live is left on the screen


def test_cli_progress_and_opening_in_a_log(tmp_path, capsys):
    """Without --quiet and with stderr captured (not a terminal) the command writes plain
    per-run lines to stderr and opens with two lines on stdout."""
    args = ["--objectives", "ns", "ns-pack2", "--steps", "20", "--seeds", "1", "--jobs", "2", "--backend",
            "reference", "--out", str(tmp_path / "lab")]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    for name in ("[1/2] ring/ns/seed 0", "[2/2] ring/ns-pack2/seed 0"):
        assert f"{name}: started, 20 steps" in captured.err
        assert f"{name}: step 20/20 (100%)" in captured.err
    out = captured.out.splitlines()
    assert out[0].startswith("fastgan lab: 2 run(s) (ring; 2 objective(s) x 1 seed(s))") and "20 steps" in out[0]
    assert out[1].startswith("Shortened from the published 400,000 steps") and "results.md" in out[1]
    assert out[2].startswith("| data |")  # then the table: the long paragraph is in results.md only
    assert "The networks are narrowed" in (tmp_path / "lab" / "results.md").read_text()


def test_help_is_plain_text(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps the options' help to the terminal
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "fastgan.lab." not in text
    assert not any(name in text for name in ("PACGAN", "UNROLLED_GAN", "REGIMES", "DISCRIMINATORS"))
    assert "--smoke" in text and "high-quality samples" in text and "examples:" in text
    assert max(len(ln) for ln in text.splitlines()) <= 100


def test_smoke_option():
    args = cli.parse_args(["--smoke"])
    assert (args.smoke, args.steps, args.seeds) == (True, 300, 1)
    assert (cli.parse_args(["--smoke", "--steps", "40"]).steps, cli.parse_args(["--smoke", "--seeds", "3"]).seeds) \
        == (40, 3)
    assert (cli.parse_args([]).steps, cli.parse_args([]).seeds) == (None, None)
    with pytest.raises(SystemExit):
        cli.parse_args(["--smoke", "--full"])


def _kept_figure(monkeypatch):
    """The figure a plots function draws (instead of closing it)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    return kept


def test_hopping_ends_on_the_evaluation_batch(tmp_path, monkeypatch):
    """The last panel of hopping.png shows the samples and metrics that lab.png and the results
    show; every panel is drawn, in rows of at most four, above a key."""
    torch.set_num_threads(1)
    run = train_run(ring(), OBJECTIVES["ns"], 2, TINY, snapshots=8)
    kept = _kept_figure(monkeypatch)
    plots.hopping(run, ring(), tmp_path / "hopping.png")
    fig = kept[0]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 8 and len({round(ax.get_position().y0, 3) for ax in panels}) == 2
    m = run.metrics
    assert panels[-1].get_title().startswith(f"step {TINY.steps} (final)\n{m.modes_captured}/8 modes, "
                                             f"{m.high_quality_pct:.0f}% HQ")
    lim = plots.limit(ring())
    inside = run.samples[~(run.samples.abs() > lim).any(dim=1)]
    assert torch.equal(torch.as_tensor(panels[-1].collections[0].get_offsets().data, dtype=torch.float32), inside)
    key = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(key) == 1 and "3 std" in " ".join(t.get_text() for t in key[0].texts)
    labels = [t.get_text() for t in key[0].get_legend().get_texts()]
    assert labels[:2] == ["generator sample", "mode (a mixture mean)"]


def test_lab_figure_has_a_key_and_no_empty_panel(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    objectives = ["ns", "ns-pack2", "ns-r1", "wgan-gp"]
    runs = [train_run(ring(), OBJECTIVES[o], 0, replace(TINY, steps=4)) for o in objectives]
    kept = _kept_figure(monkeypatch)
    plots.figure({(r.dataset, r.objective): r for r in runs}, {"ring": ring()}, cli.summarise(runs), objectives,
                 tmp_path / "lab.png", seeds=1)
    fig = kept[0]
    assert len(fig.axes) == len(objectives) + len(plots.BAR_METRICS) + 1 and all(ax.get_visible() for ax in fig.axes)
    key = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(key) == 1
    assert [t.get_text() for t in key[0].get_legend().get_texts()][-1] == "number of modes"
    caption = " ".join(t.get_text() for t in key[0].texts).replace("\n", " ")
    assert "HQ: high-quality samples, within 3 std of their nearest mode" in caption and "seed 0" in caption
    titles = [ax.get_title() for ax in fig.axes]
    assert all("seed 0" in t for t in titles[:len(objectives)])
    assert all("mean ± s.e. over 1 seed" in t for t in titles[len(objectives):-1])
