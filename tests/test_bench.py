"""``fastgan bench``: runs end to end on a tiny configuration, writes results that parse, and
reports (not crashes on) missing backends, failing checks and failing providers. No timing
assertions."""
from __future__ import annotations

import csv
import subprocess
import sys

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
    rows, md = _run(tmp_path, "--providers", "torch,reference")
    objectives = list(configs.OBJECTIVES)
    assert [(r["objective"], r["provider"]) for r in rows] == [(o, p) for o in objectives for p in ("torch", "reference")]
    for r in rows:
        assert (r["network"], r["batch"], r["depth"], r["width"], r["pack"]) == ("lab", "6", "3", "64", "1")
        assert r["device"] and r["torch"] == torch.__version__ and r["git_commit"]
    ref = [r for r in rows if r["provider"] == "reference"]
    assert all(r["status"] == "ok" for r in ref)
    for r in ref:  # timed, with the derived columns filled
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert float(r["vs_reference"]) == 1.0
        assert float(r["tflops"]) > 0 and float(r["peak_pct"]) > 0
        assert float(r["launches"]) >= 1 and r["launches_kind"] == "ops"
        assert r["peak_mib"] == "" or float(r["peak_mib"]) >= 0
    for r in rows:  # torch: timed and checked, or reported as missing on a branch without it
        assert r["status"] == "ok" or r["status"].startswith("missing: ")

    table = report.read_markdown_table(md, "Results")
    assert [(t["objective"], t["provider"], t["status"]) for t in table] == \
        [(r["objective"], r["provider"], r["status"]) for r in rows]
    over = report.read_markdown_table(md, "Penalty overhead (median ratios)")
    ref_over = [o for o in over if o["provider"] == "reference"]
    assert len(ref_over) == 1 and float(ref_over[0]["R1/plain"]) > 0 and float(ref_over[0]["GP/plain"]) > 0
    for key in ("torch", "triton", "python", "fastgan", "git commit", "threads", "matmul peak (measured)"):
        assert f"- {key}: " in md
    assert "## Results" in capsys.readouterr().out  # the table is printed too


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
        for name in ("reference", "reference+graph"):
            r = rows[(objective, name)]
            assert r["status"] == "ok" and float(r["median_ms"]) > 0 and float(r["peak_mib"]) >= 0
            assert r["launches_kind"] == "launches" and float(r["launches"]) >= 1
        assert float(rows[(objective, "reference+graph")]["launches"]) < float(rows[(objective, "reference")]["launches"])
        assert float(rows[(objective, "reference+graph")]["setup_s"]) > 0
    for r in rows.values():
        assert r["status"] == "ok" or r["status"].startswith(("missing: ", "error: "))


def test_missing_backend_is_reported_with_its_reason(tmp_path, monkeypatch):
    real = fastgan.available_backends

    def without_cpu():
        return [fastgan.BackendStatus(s.name, False, "simulated: extension did not load")
                if s.name == "cpu" else s for s in real()]

    monkeypatch.setattr(fastgan, "available_backends", without_cpu)
    rows, md = _run(tmp_path, "--providers", "cpu,cuda,reference", "--objectives", "hinge",
                    "--no-memory", "--no-launches")
    status = {r["provider"]: r["status"] for r in rows}
    assert status["cpu"] == "missing: simulated: extension did not load"
    assert status["cuda"].startswith("missing: ")
    assert status["reference"] == "ok"
    assert "| cpu | no | simulated: extension did not load |" in md


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
        if name == "torch":
            runner = Wrong("reference", config, D, data)
            runner.name = "torch"
            return runner
        if name == "cpu":
            return Broken()
        return make(name, config, D, data)

    monkeypatch.setattr(providers, "make_runner", fake_make)
    monkeypatch.setattr(providers, "why_missing", lambda name, device: "")
    rows, _ = _run(tmp_path, "--providers", "torch,cpu,reference", "--objectives", "ns+r1",
                   "--no-memory", "--no-launches")
    status = {r["provider"]: r for r in rows}
    assert status["torch"]["status"] == "check failed" and float(status["torch"]["check_err"]) > 0.1
    assert status["torch"]["median_ms"] == ""  # not timed
    assert status["cpu"]["status"] == "error: RuntimeError: kernel exploded"
    assert status["reference"]["status"] == "ok"


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
