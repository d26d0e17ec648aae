"""``fastgan bench``: runs end to end on a tiny configuration, writes results that parse (only
where --output says), prints a table with a legend and why any provider was not run, and
reports (not crashes on) missing backends, failing checks and failing providers. No timing
assertions."""
from __future__ import annotations

import csv
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastgan
from fastgan.bench import check, cli, configs, providers, report, timing

TINY = ["--device", "cpu", "--configs", "lab", "--batch", "6", "--repeats", "2", "--warmup", "1", "--min-sample-ms", "0",
        "--threads", "1", "--no-progress"]


def _run(tmp_path, *extra: str) -> tuple[list[dict], str]:
    stem = tmp_path / "run"
    assert cli.main([*TINY, *extra, "--output", str(stem)]) == 0
    with open(f"{stem}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, (tmp_path / "run.md").read_text()


def test_end_to_end_tiny_config_writes_md_and_csv_that_agree(tmp_path, capsys):
    rows, md = _run(tmp_path, "--providers", "fastgan-torch,pytorch-eager")
    objectives = list(configs.OBJECTIVES)
    assert [(r["objective"], r["provider"]) for r in rows] == \
        [(o, p) for o in objectives for p in ("fastgan-torch", "pytorch-eager")]
    for r in rows:
        assert (r["network"], r["batch"], r["depth"], r["width"], r["pack"]) == ("lab", "6", "3", "64", "1")
        assert r["device"] and r["torch"] == torch.__version__ and r["git_commit"]
    ref = [r for r in rows if r["provider"] == "pytorch-eager"]
    assert all(r["status"] == "ok" for r in ref)
    for r in ref:  # timed, with the derived columns filled
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["vs_pytorch-eager"]) == 1.0
        assert float(r["tflops"]) > 0 and float(r["peak_pct"]) > 0
        assert float(r["launches"]) >= 1 and r["launches_kind"] == "ops"
        assert r["peak_mib"] == "" or float(r["peak_mib"]) >= 0
    for r in rows:  # fastgan-torch: timed and checked, or reported as missing on a branch without it
        assert r["status"] == "ok" or r["status"].startswith("missing: ")
    assert "vs_reference" not in rows[0] and "vs_torch" not in rows[0]

    table = report.read_markdown_table(md, "Results")
    assert [(t["objective"], t["provider"], t["status"]) for t in table] == \
        [(r["objective"], r["provider"], r["status"]) for r in rows]
    over = report.read_markdown_table(md, "Penalty overhead (median ratios)")
    ref_over = [o for o in over if o["provider"] == "pytorch-eager"]
    assert len(ref_over) == 1 and float(ref_over[0]["R1/plain"]) > 0 and float(ref_over[0]["GP/plain"]) > 0
    for key in ("torch", "triton", "python", "fastgan", "git commit", "threads", "matmul peak (measured)"):
        assert f"- {key}: " in md
    out = capsys.readouterr().out  # the table is printed too, with its legend
    assert re.search(r"^network +batch +objective +provider +median ms .* vs pytorch-eager +vs fastgan-torch ", out, re.M)
    assert re.search(r"^lab +6 +ns\+r1 +pytorch-eager +[0-9.e-]+ ", out, re.M)
    legend = out.split("\nlegend: ", 1)[1]
    assert legend.startswith("vs pytorch-eager / vs fastgan-torch = that provider's median / this row's median")
    assert f"\n  fastgan-torch  {providers.DESCRIPTION['fastgan-torch']}\n" in legend
    assert f"\n  pytorch-eager  {providers.DESCRIPTION['pytorch-eager']}\n" in legend
    assert "## " not in out  # the environment and method stay in the file
    assert f"wrote {tmp_path / 'run.md'} (full report) and {tmp_path / 'run.csv'}" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_end_to_end_on_gpu_with_every_baseline(tmp_path):
    stem = tmp_path / "gpu"
    args = ["--device", "cuda", "--configs", "lab", "--batch", "6", "--objectives", "ns+r1,gen", "--repeats", "2",
            "--warmup", "1", "--no-progress", "--output", str(stem)]
    assert cli.main(args) == 0
    with open(f"{stem}.csv", newline="") as f:
        rows = {(r["objective"], r["provider"]): r for r in csv.DictReader(f)}
    assert {p for _, p in rows} == set(providers.DEFAULTS["cuda"])
    for objective in ("ns+r1", "gen"):
        for name in ("pytorch-eager", "pytorch-eager+graph"):
            r = rows[(objective, name)]
            assert r["status"] == "ok" and float(r["median_ms"]) > 0 and float(r["peak_mib"]) >= 0
            assert r["launches_kind"] == "launches" and float(r["launches"]) >= 1
        assert float(rows[(objective, "pytorch-eager+graph")]["launches"]) < \
            float(rows[(objective, "pytorch-eager")]["launches"])
        assert float(rows[(objective, "pytorch-eager+graph")]["setup_s"]) > 0
    for r in rows.values():
        assert r["status"] == "ok" or r["status"].startswith(("missing: ", "error: "))


def test_missing_backend_is_reported_with_its_reason(tmp_path, monkeypatch):
    real = fastgan.available_backends

    def without_cpu():
        return [fastgan.BackendStatus(s.name, False, "simulated: extension did not load")
                if s.name == "cpu" else s for s in real()]

    monkeypatch.setattr(fastgan, "available_backends", without_cpu)
    rows, md = _run(tmp_path, "--providers", "fastgan-cpu,fastgan-cuda,pytorch-eager", "--objectives", "hinge",
                    "--no-memory", "--no-launches")
    status = {r["provider"]: r["status"] for r in rows}
    assert status["fastgan-cpu"] == "missing: simulated: extension did not load"
    assert status["fastgan-cuda"].startswith("missing: ")
    assert status["pytorch-eager"] == "ok"
    assert (f"| fastgan-cpu | {providers.DESCRIPTION['fastgan-cpu']} | unavailable | "
            "simulated: extension did not load |") in md
    assert f"| pytorch-eager | {providers.DESCRIPTION['pytorch-eager']} | run | - |" in md


def test_failing_check_and_failing_provider_mark_their_rows(tmp_path, monkeypatch):
    class Wrong(providers.EagerRunner):  # the reference step with a wrong first gradient
        def result(self):
            value, first, *rest = super().result()
            return [value, first * 1.5, *rest]

    class Broken(providers.Runner):
        def __init__(self, *args):
            raise RuntimeError("kernel exploded")

    make = providers.make_runner

    def fake_make(name, config, D, data):
        if name == "fastgan-torch":
            runner = Wrong("pytorch-eager", config, D, data)
            runner.name = "fastgan-torch"
            return runner
        if name == "fastgan-cpu":
            return Broken()
        return make(name, config, D, data)

    monkeypatch.setattr(providers, "make_runner", fake_make)
    monkeypatch.setattr(providers, "why_missing", lambda name, device: "")
    rows, _ = _run(tmp_path, "--providers", "fastgan-torch,fastgan-cpu,pytorch-eager", "--objectives", "ns+r1",
                   "--no-memory", "--no-launches")
    status = {r["provider"]: r for r in rows}
    assert status["fastgan-torch"]["status"] == "check failed" and float(status["fastgan-torch"]["check_err"]) > 0.1
    assert status["fastgan-torch"]["median_ms"] == ""  # not timed
    assert status["fastgan-cpu"]["status"] == "error: RuntimeError: kernel exploded"
    assert status["pytorch-eager"]["status"] == "ok"


def test_entry_points_list_the_configurations():
    done = subprocess.run([sys.executable, "-m", "fastgan.bench", "--device", "cpu", "--list", "--configs", "lab"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split()[:3] == ["lab", "B=4096", "ns+r1"]
    from fastgan.cli import main as fastgan_main
    assert fastgan_main(["bench", "--device", "cpu", "--list", "--configs", "targets"]) == 0
    done = subprocess.run([sys.executable, "-m", "fastgan", "bench", "--device", "cpu", "--list", "--configs", "lab"],
                          capture_output=True, text=True, check=True)  # python -m fastgan: the same command
    assert done.stdout.split()[:3] == ["lab", "B=4096", "ns+r1"]


def test_bad_options_exit_with_a_message(capsys):
    assert cli.main(["--device", "cpu", "--configs", "nope", "--list"]) == 2
    assert "--configs" in capsys.readouterr().out
    assert cli.main(["--device", "cpu", "--providers", "magic", "--list"]) == 2
    assert "unknown provider 'magic'" in capsys.readouterr().out


@pytest.mark.parametrize("old,new", [("torch", "fastgan-torch"), ("cpu", "fastgan-cpu"), ("reference", "pytorch-eager"),
                                     ("reference+graph", "pytorch-eager+graph"), ("cuda+graph", "fastgan-cuda+graph"),
                                     ("func+compile", "pytorch-func+compile")])
def test_an_old_provider_name_is_refused_with_its_new_name(old, new, capsys):
    assert cli.main(["--device", "cpu", "--providers", f"pytorch-eager,{old}", "--list"]) == 2
    out = capsys.readouterr().out
    assert f"--providers: {old!r} is now called {new!r}" in out
    assert all(name in out for name in providers.PROVIDERS)


def test_every_provider_has_a_description_and_a_name_that_says_whose_it_is():
    assert set(providers.DESCRIPTION) == set(providers.PROVIDERS)
    assert all(n.startswith(("fastgan-", "pytorch-")) for n in providers.PROVIDERS)
    assert set(providers.RENAMED.values()) == set(providers.PROVIDERS)
    for device in ("cpu", "cuda"):
        assert set(providers.DEFAULTS[device]) <= set(providers.PROVIDERS)
        assert set(providers.BASELINES[device]) <= set(providers.DEFAULTS[device])


def _not_run(out: str) -> dict[str, str]:
    """provider -> 'unavailable: why' / 'skipped: why' from the lines under the legend."""
    lines = out.split("\nnot run: ", 1)[1].splitlines()
    lines[0] = "not run: " + lines[0]
    found = {}
    for line in itertools.takewhile(lambda ln: ln.startswith(("not run: ", " " * 9)), lines):
        m = re.fullmatch(r"(?:not run:| {8}) (\S+) +((?:unavailable|skipped): \S.*)", line)
        assert m, line
        found[m[1]] = m[2]
    return found


def _tiny_run_printed(tmp_path, monkeypatch, capfd, *extra: str) -> str:
    """A tiny run from tmp_path without --output; what it printed (both file descriptors)."""
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TINY, "--objectives", "hinge", *extra]) == 0
    captured = capfd.readouterr()
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing written without --output
    return captured.out + captured.err


def test_without_output_nothing_is_written_and_the_profiler_is_silent(tmp_path, monkeypatch, capfd):
    out = _tiny_run_printed(tmp_path, monkeypatch, capfd)
    assert "not written (add --output STEM" in out
    assert "USDT" not in out and "profiler_start" not in out  # kineto's own lines, on fd 2
    assert re.search(r"^lab +6 +hinge +pytorch-eager +.* ok$", out, re.M)
    assert re.search(r"^lab +6 +hinge +fastgan-cpu .*", out, re.M) or \
        _not_run(out)["fastgan-cpu"].startswith("unavailable: ")
    assert "\nlegend: vs pytorch-eager / vs fastgan-torch = " in out


def test_providers_not_run_say_why_one_line_each(tmp_path, monkeypatch, capfd):
    out = _tiny_run_printed(tmp_path, monkeypatch, capfd, "--no-launches", "--no-memory")
    lines = _not_run(out)
    ran = set(re.findall(r"^lab +6 +hinge +(\S+) .* ok$", out, re.M))
    assert ran | set(lines) == set(providers.PROVIDERS) and not ran & set(lines)
    assert lines["fastgan-cuda+graph"] == "unavailable: CUDA graphs need a CUDA device"
    compile_line = lines["pytorch-func+compile"]  # available on the CPU, left out of its default set: why
    assert compile_line.startswith("skipped: not in the CPU default: torch.compile builds C++")
    assert "--providers ...,pytorch-func+compile" in compile_line


def test_providers_left_out_of_the_providers_option_say_so(tmp_path, monkeypatch, capfd):
    out = _tiny_run_printed(tmp_path, monkeypatch, capfd, "--no-launches", "--no-memory",
                            "--providers", "pytorch-eager")
    lines = _not_run(out)
    assert lines["pytorch-func+compile"] == lines["fastgan-torch"] == "skipped: not in --providers"


def test_no_write_prints_only_even_with_an_output(tmp_path, capsys):
    assert cli.main([*TINY, "--objectives", "hinge", "--providers", "pytorch-eager", "--no-launches", "--no-memory",
                     "--no-write", "--output", str(tmp_path / "run")]) == 0
    assert not any(tmp_path.iterdir())
    assert "not written" in capsys.readouterr().out


def test_profiler_output_on_native_fds_is_silenced(capfd):
    from fastgan.bench import launches
    print("before")
    with launches.quiet_native_output():  # what C++ writes goes to the descriptors, past sys.stdout
        os.write(2, b"USDT: native stderr\n")
        os.write(1, b"native stdout\n")
    os.write(1, b"after\n")
    captured = capfd.readouterr()
    assert captured.out == "before\nafter\n" and captured.err == ""
    n = launches.count(lambda: torch.ones(3).add_(1), torch.device("cpu"))
    captured = capfd.readouterr()
    assert n >= 2 and captured.out == "" and captured.err == ""


@pytest.mark.parametrize("columns", ["40", "60", "80", "132"])
def test_help_never_breaks_a_provider_name(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    text = cli._parser().format_help()
    tokens = [t.strip(",.;:()'`") for t in text.split()]
    pieces = [t for t in tokens if t.startswith(("fastgan-", "pytorch-")) or t.endswith(("+graph", "+compile"))]
    allowed = {*providers.PROVIDERS, "fastgan-*", "pytorch-*"}
    assert pieces and set(pieces) <= allowed, sorted(set(pieces) - allowed)
    for name in providers.PROVIDERS:  # each listed on its own line with what it is
        assert re.search(rf"^  {re.escape(name)} +{re.escape(providers.DESCRIPTION[name])}$", text, re.M)
    assert "default: print only" in " ".join(text.split())


def test_old_results_files_load_under_the_new_names():
    old = Path(__file__).resolve().parent.parent / "benchmarks/results/amd-epyc-2026-11-30.csv"
    with open(old, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = report.read_csv(old)
    assert len(rows) == len(raw) > 0
    assert {r["provider"] for r in raw} == {"cpu", "torch", "reference"}  # the file is as committed
    assert {r["provider"] for r in rows} == {"fastgan-cpu", "fastgan-torch", "pytorch-eager"}
    for r, r0 in zip(rows, raw):
        assert r["vs_pytorch-eager"] == r0["vs_reference"] and r["vs_fastgan-torch"] == r0["vs_torch"]
        assert r["median_ms"] == r0["median_ms"]
    assert all(float(r["vs_pytorch-eager"]) == 1.0 for r in rows if r["provider"] == "pytorch-eager")


@pytest.mark.parametrize("network", [n for fam in configs.FAMILIES.values() for n in fam], ids=lambda n: n.name)
def test_weight_count_is_the_discriminators(network):
    D = configs.make_discriminator(network, torch.device("cpu"), torch.float32)
    assert network.weights == sum(p.numel() for name, p in D.named_parameters() if name.endswith("weight"))
    assert len(D.layers) == network.depth  # depth = hidden layers


def test_cpu_defaults_are_small_and_full_adds_batch_4096():
    default = configs.select("cpu")
    assert max(c.batch for c in default) == 4096
    assert {c.batch for c in default if c.network.name.startswith(("width", "ctgan"))} == {256}
    labels = [c.label for c in default]
    assert len(labels) == len(set(labels))
    assert not any(c.network.name == "width-128" and c.batch == 256 for c in default)  # same as target B=256
    full = configs.select("cpu", full=True)
    assert {c.batch for c in full if c.network.name.startswith("ctgan")} == {256, 4096}
    assert {c.batch for c in configs.select("cuda")} == {256, 4096, 65536}


def test_percentiles_match_numpy():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (20, 50, 80):
        assert timing.percentile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_a_step_that_raises_while_timed_is_dropped_and_reported():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")

    stats, errors = timing.interleaved({"fine": lambda: None, "flaky": flaky}, torch.device("cpu"), repeats=4,
                                       warmup=1, min_sample_s=0)
    assert errors == {"flaky": "RuntimeError: boom"}
    assert set(stats) == {"fine"} and stats["fine"].samples == 4


def test_paired_ratio_is_the_median_of_the_rounds_ratios():
    """Each round's ratio first, then their median (here 1.5 in four rounds of five, whatever the
    machine's speed in that round; the ratio of the medians would be 3.0); a provider missing a
    round gives no ratio."""
    fast = [1.0, 1.0, 2.0, 2.0, 0.5]
    slow = [1.5, 1.5, 3.0, 3.0, 4.0]
    assert timing.paired(slow, fast) == pytest.approx(1.5)
    assert timing.percentile(slow, 50) / timing.percentile(fast, 50) == pytest.approx(3.0)
    assert timing.paired(slow, fast[:4]) is None and timing.paired([], []) is None
    assert timing.paired(slow, fast, 80) == pytest.approx(2.8)  # [1.5, 1.5, 1.5, 1.5, 8.0] at 80%
    from fastgan.bench import any_discriminator
    assert any_discriminator._paired_ratio(slow, fast) == "1.50x (1.50-2.80)"
    assert any_discriminator._paired_ratio(slow, fast[:4]) == ""
    rounds = {}
    timing.interleaved({"a": lambda: None, "b": lambda: None}, torch.device("cpu"), repeats=3, warmup=1,
                       min_sample_s=0, rounds=rounds)
    assert set(rounds) == {"a", "b"} and len(rounds["a"]) == len(rounds["b"]) == 3


def test_check_error_is_relative_and_floored_at_the_gradients_scale():
    ref = [torch.tensor(0.5), torch.ones(3, 4), torch.zeros(2)]
    assert check.relative_error([t.clone() for t in ref], ref) == 0
    assert check.relative_error([ref[0], ref[1] * 1.1, ref[2]], ref) == pytest.approx(0.1)
    # a gradient that vanishes in the reference is judged against 1% of the largest norm
    tiny = torch.full((2,), 1e-7)
    assert check.relative_error([ref[0], ref[1], tiny], ref) == pytest.approx(tiny.norm().item() / 0.01 / 12 ** 0.5)
    assert check.relative_error([ref[0], ref[1], torch.full((2,), float("nan"))], ref) == float("inf")
    assert check.relative_error([ref[0], ref[1], None], ref) == float("inf")
    assert check.relative_error([ref[0], ref[1].T, ref[2]], ref) == float("inf")


def test_help_fits_80_columns():
    env = dict(os.environ, COLUMNS="80")
    done = subprocess.run([sys.executable, "-m", "fastgan.bench", "--help"], capture_output=True, text=True, check=True,
                          env=env)
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_any_discriminator_graph_providers_replay_the_eager_steps():
    """On CUDA the bench adds the double-backward and fastgan steps replayed from CUDA graphs;
    a replay leaves the same gradients as the eager step (same D, same data)."""
    from fastgan.bench import any_discriminator
    steps = any_discriminator.providers("dcgan32-b64", torch.device("cuda"), torch.float32, compiled=False)
    assert {"double_backward+graph", "fastgan+graph"} <= set(steps) and steps["fastgan+graph"].captured
    for name in ("double_backward", "fastgan"):
        eager, graphed = steps[name], steps[f"{name}+graph"]
        eager()
        graphed()
        torch.cuda.synchronize()
        (D_eager,), (D_graph,) = ([c.cell_contents for c in step.__closure__
                                   if isinstance(c.cell_contents, torch.nn.Module) and
                                   not isinstance(c.cell_contents, fastgan.GANLoss)]
                                  for step in (eager, graphed.train_step))
        for p, q in zip(D_eager.parameters(), D_graph.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=f"{name}: the replay's gradients differ")
