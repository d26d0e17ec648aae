"""``fastgan lab`` and ``fastgan bench`` check every argument, and that the output location
can be written, before any work: a bad one ends the command with status 2 and one
``fastgan <command>: error: ...`` line, without a traceback and without training or timing
anything first. The work itself is replaced by a function that fails the test if it is called."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

import fastgan
from fastgan import cli as top
from fastgan.bench import cli as bench
from fastgan.bench import machine, timing
from fastgan.lab import cli as lab


class WorkStarted(Exception):
    pass


def _no_work(*args, **kwargs):
    raise WorkStarted("the command started its work")


@pytest.fixture
def no_work(monkeypatch):
    """Training and timing fail the test if they start."""
    monkeypatch.setattr(lab, "run_all", _no_work)
    monkeypatch.setattr(lab, "train_run", _no_work)
    monkeypatch.setattr(torch.optim, "Adam", _no_work)  # lab's first step of work (it imports dynamo: seconds)
    monkeypatch.setattr(bench, "_run_config", _no_work)
    monkeypatch.setattr(timing, "matmul_peak", _no_work)
    monkeypatch.setattr(machine, "describe", _no_work)


def _fails(main, argv, capsys, *expected: str) -> str:
    """Run ``main(argv)``: it must exit with status 2 and one error line (on stderr) that
    names each of ``expected``; returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [ln for ln in captured.err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, captured.err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


LAB = ["--objectives", "ns", "--steps", "2", "--seeds", "1", "--jobs", "1", "--quiet", "--backend", "reference"]
BENCH = ["--device", "cpu", "--configs", "lab", "--batch", "6", "--repeats", "2", "--warmup", "1",
         "--min-sample-ms", "0", "--threads", "1", "--no-progress"]


# ---- fastgan lab ------------------------------------------------------------------------------

def test_lab_out_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_work):
    file = tmp_path / "taken"
    file.write_text("not a folder")
    line = _fails(lab.main, [*LAB, "--out", str(file)], capsys, "fastgan lab: error: --out", "is a file")
    assert str(file) in line
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("where", ["/proc/fastgan-lab-out", "under-a-file/out"])
def test_lab_out_that_cannot_be_created_is_refused_before_training(where, tmp_path, capsys, no_work):
    (tmp_path / "under-a-file").write_text("")
    out = where if where.startswith("/") else str(tmp_path / where)
    _fails(lab.main, [*LAB, "--out", out], capsys, "fastgan lab: error: --out", "cannot write in")


def test_lab_out_whose_result_file_is_a_folder_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "results.json").mkdir()
    _fails(lab.main, [*LAB, "--out", str(tmp_path)], capsys, "--out", "results.json", "is a folder")


def test_lab_out_is_created_before_the_training(tmp_path, no_work):
    out = tmp_path / "new" / "lab"
    with pytest.raises(WorkStarted):  # the arguments are good: the work is reached
        lab.main([*LAB, "--out", str(out)])
    assert out.is_dir()


@pytest.mark.parametrize("option,value", [("--steps", "0"), ("--steps", "-3"), ("--seeds", "0"), ("--seeds", "-1"),
                                          ("--jobs", "0"), ("--threads", "-1"), ("--threads", "0"),
                                          ("--steps", "ten"), ("--seeds", "1.5")])
def test_lab_counts_must_be_positive_integers(option, value, tmp_path, capsys, no_work):
    _fails(lab.main, [*LAB, "--out", str(tmp_path / "out"), option, value], capsys,
           "fastgan lab: error: argument", option)
    assert not (tmp_path / "out").exists()  # a bad argument writes nothing


def _backends(monkeypatch, **unavailable: str) -> None:
    """fastgan.available_backends() as if every backend were available but ``unavailable``
    (name -> reason)."""
    monkeypatch.setattr(fastgan, "available_backends", lambda: [
        fastgan.BackendStatus(name, name not in unavailable, unavailable.get(name, ""))
        for name in fastgan.BACKENDS])


def test_lab_unavailable_backend_says_why(tmp_path, capsys, monkeypatch, no_work):
    _backends(monkeypatch, cuda="simulated: no CUDA here")
    line = _fails(lab.main, [*LAB, "--backend", "cuda", "--out", str(tmp_path)], capsys,
                  "fastgan lab: error: --backend cuda: the cuda backend is unavailable here: simulated: no CUDA here")
    assert "does not implement" not in line


def test_lab_unavailable_backend_says_why_on_this_machine(tmp_path, capsys, no_work):
    """Without the monkeypatch: whatever backend is missing here is refused with fastgan's own reason."""
    status = [s for s in fastgan.available_backends() if not s.available]
    if not status:
        pytest.skip("every backend is available here")
    _fails(lab.main, [*LAB, "--backend", status[0].name, "--out", str(tmp_path)], capsys,
           f"--backend {status[0].name}: the {status[0].name} backend is unavailable here: {status[0].reason}")


def test_lab_backend_for_another_device_is_refused(tmp_path, capsys, monkeypatch, no_work):
    _backends(monkeypatch)
    _fails(lab.main, [*LAB, "--backend", "cuda", "--device", "cpu", "--out", str(tmp_path)], capsys,
           "--backend cuda: the cuda backend cannot run on cpu tensors", "--device cuda")


def test_lab_device_cuda_without_cuda_is_refused(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(lab.main, [*LAB, "--device", "cuda", "--out", str(tmp_path)], capsys, "--device cuda")


def test_fastgan_command_passes_lab_errors_through(tmp_path, capsys, no_work):
    file = tmp_path / "file"
    file.write_text("")
    _fails(top.main, ["lab", *LAB, "--out", str(file)], capsys, "fastgan lab: error: --out")


def test_fastgan_command_rejects_an_unknown_command(capsys):
    assert top.main(["nope"]) == 2
    assert "fastgan: error: unknown command 'nope'" in capsys.readouterr().err


# ---- fastgan bench ----------------------------------------------------------------------------

@pytest.mark.parametrize("option,value", [
    ("--repeats", "-1"), ("--repeats", "0"), ("--warmup", "-5"), ("--threads", "0"), ("--threads", "-1"),
    ("--min-sample-ms", "-1"), ("--min-sample-ms", "nan"), ("--min-sample-ms", "inf"), ("--seed", "-1"),
    ("--seed", str(2**64)), ("--batch", "0"), ("--batch", "-4"), ("--batch", "6,0"), ("--batch", "6,x"),
    ("--batch", ","), ("--providers", ","), ("--objectives", ""), ("--configs", " , ")])
def test_bench_bad_numbers_and_lists_are_refused(option, value, tmp_path, capsys, no_work):
    _fails(bench.main, [*BENCH, "--output", str(tmp_path / "out" / "run"), option, value], capsys,
           "fastgan bench: error: argument", option)
    assert not (tmp_path / "out").exists()


def test_bench_zero_warmup_and_zero_sample_time_are_allowed(tmp_path, no_work):
    with pytest.raises(WorkStarted):
        bench.main([*BENCH, "--warmup", "0", "--min-sample-ms", "0", "--output", str(tmp_path / "run")])


@pytest.mark.parametrize("where,why", [("/proc/fastgan-bench-out/run", "cannot write in"),
                                       ("under-a-file/run", "under-a-file is a file, not a folder"),
                                       ("under-a-file/deeper/run", "cannot write in")])
def test_bench_unwritable_output_is_refused_before_timing(where, why, tmp_path, capsys, no_work):
    (tmp_path / "under-a-file").write_text("")
    stem = where if where.startswith("/") else str(tmp_path / where)
    _fails(bench.main, [*BENCH, "--output", stem], capsys, "fastgan bench: error: --output", why)


def test_bench_output_whose_file_is_a_folder_is_refused(tmp_path, capsys, no_work):
    (tmp_path / "run.csv").mkdir()
    _fails(bench.main, [*BENCH, "--output", str(tmp_path / "run.md")], capsys, "--output", "run.csv", "is a folder")


def test_bench_output_folder_is_created_before_timing(tmp_path, no_work):
    with pytest.raises(WorkStarted):
        bench.main([*BENCH, "--output", str(tmp_path / "a" / "b" / "run")])
    assert (tmp_path / "a" / "b").is_dir()


def test_bench_list_and_no_write_do_not_need_an_output(tmp_path, capsys, no_work):
    file = tmp_path / "file"
    file.write_text("")
    assert bench.main([*BENCH, "--list", "--output", str(file / "run")]) == 0
    assert "lab" in capsys.readouterr().out
    with pytest.raises(WorkStarted):
        bench.main([*BENCH, "--no-write", "--output", str(file / "run")])


def test_bench_provider_listed_twice_is_refused(tmp_path, capsys, no_work):
    twice = "fastgan-torch,pytorch-eager,fastgan-torch"
    _fails(bench.main, [*BENCH, "--providers", twice, "--output", str(tmp_path / "run")], capsys, "--providers", "twice")


def test_bench_device_cuda_without_cuda_is_refused(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(bench.main, [*BENCH[2:], "--device", "cuda", "--output", str(tmp_path / "run")], capsys,
           "fastgan bench: error: --device cuda")


def test_bench_explicit_repeats_are_used_as_given(tmp_path, monkeypatch, no_work):
    """--repeats N reaches the timing as N (--quick's 5 only when --repeats is not given)."""
    seen = {}

    def record(config, device, dtype, names, missing, tol, args):
        seen.update(repeats=args.repeats, warmup=args.warmup, min_sample_ms=args.min_sample_ms)
        raise WorkStarted

    monkeypatch.setattr(bench, "_run_config", record)
    monkeypatch.setattr(machine, "describe", lambda device: {"device": "test"})
    monkeypatch.setattr(timing, "matmul_peak", lambda dtype, device: 1.0)
    with pytest.raises(WorkStarted):
        bench.main([*BENCH, "--quick", "--repeats", "7", "--output", str(tmp_path / "run")])
    assert seen == {"repeats": 7, "warmup": 1, "min_sample_ms": 0.0}


# ---- the shared argparse types ----------------------------------------------------------------

def test_argument_types():
    assert top.positive_int("3") == 3 and top.non_negative_int("0") == 0
    assert top.positive_ints(" 256, 4096 ,") == [256, 4096] and top.names("a,,b") == ["a", "b"]
    assert top.non_negative_float("0") == 0.0 and top.seed(str(2**64 - 1)) == 2**64 - 1
    for fn, text in [(top.positive_int, "0"), (top.non_negative_int, "-1"), (top.positive_int, "2.0"),
                     (top.non_negative_float, "-0.5"), (top.non_negative_float, "nan"), (top.positive_ints, "1,-1"),
                     (top.names, " ")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)
    assert not math.isnan(top.non_negative_float("1e3"))


def test_a_command_without_its_extra_names_the_install(monkeypatch, capsys):
    """The library installs torch and numpy only; the lab and the bench say what to install."""
    from fastgan import cli
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["lab"]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'fastgan[lab]'" in err
