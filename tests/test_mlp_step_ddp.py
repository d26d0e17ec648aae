"""discriminator_step on a DistributedDataParallel-wrapped MLPDiscriminator (gloo, 2 CPU ranks).

Each rank takes half of the batch; DDP averages the ranks' gradients, which must equal the
single-process gradients of the full batch, penalty included (the fused step runs inside the
wrapped module's forward, so DDP's all-reduce sees its gradients). Compared with the harness's
float64 bound (tests/harness.py).

Built so that it fails cleanly instead of aborting or hanging, also on a loaded machine:

- each rank runs one thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``): two ranks
  plus gloo's threads do not oversubscribe a small CI machine;
- every case gets a fresh process group on its own file store, with a timeout, and destroys it
  after a barrier;
- each rank writes everything (Python and C++ output, faulthandler dumps) to its own log file and
  reports success with a marker file, then leaves with ``os._exit(0)``, skipping interpreter
  teardown (where a C++ thread still alive in a static would call std::terminate);
- the parent waits with a deadline, kills ranks that overrun, and on any failure shows each rank's
  exit code and log.
"""
from __future__ import annotations

import copy
import datetime
import faulthandler
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastgan
from fastgan.fused import discriminator_step, generator_step

import harness  # tests/harness.py (on sys.path from conftest.py; the ranks inherit sys.path)

WORLD = 2
TIMEOUT_S = 60  # per collective
DEADLINE_S = 300  # the whole run, per rank
CASES = [  # (loss, penalty factory, steps)
    ("non_saturating", lambda: fastgan.R1Penalty(gamma=3.0), 1),
    ("relativistic", lambda: fastgan.GradientPenalty(weight=5.0), 1),
    ("hinge", lambda: fastgan.R2Penalty(gamma=2.0, every=2), 2),
    ("least_squares", lambda: fastgan.DRAGANPenalty(weight=4.0), 1),
]


def _check_case(rank: int, backend: str, loss_name: str, make_penalty, steps: int) -> None:
    torch.manual_seed(0)  # same model and data on every rank
    D = fastgan.MLPDiscriminator(3, (19, 8), pack=2).double()
    D_ref = copy.deepcopy(D)
    ddp = torch.nn.parallel.DistributedDataParallel(D)
    loss = fastgan.LOSSES[loss_name]()
    pen, ref_pen = make_penalty(), make_penalty()
    for _ in range(steps):
        real = torch.randn(12, 3, dtype=torch.float64)  # 6 rows of pack 2: 3 per rank
        fake = torch.randn(12, 3, dtype=torch.float64)
        per_row = isinstance(pen, fastgan.GradientPenalty)
        eps = torch.rand(6, dtype=torch.float64) if per_row else torch.rand(12, 3, dtype=torch.float64)
        half = slice(6 * rank, 6 * rank + 6)
        my_eps = eps[3 * rank:3 * rank + 3] if per_row else eps[half]
        D_ref.zero_grad(set_to_none=True)
        if isinstance(pen, fastgan.DRAGANPenalty):
            # DRAGAN scales its noise by the batch's std: the objective is the average of the
            # per-rank objectives (every=1 here)
            total = 0
            for r in range(WORLD):
                h = slice(6 * r, 6 * r + 6)
                total = total + discriminator_step(D_ref, real[h], fake[h], loss=loss, penalty=ref_pen,
                                                   backend="reference", eps=eps[h]) / WORLD
        else:
            total = discriminator_step(D_ref, real, fake, loss=loss, penalty=ref_pen, backend="reference",
                                       eps=eps if per_row else None)
        total.backward()
        ddp.zero_grad(set_to_none=True)
        discriminator_step(ddp, real[half], fake[half], loss=loss, penalty=pen, backend=backend,
                           eps=my_eps).backward()
        harness.assert_close([p.grad for p in D.parameters()], [q.grad for q in D_ref.parameters()], None,
                             torch.float64, f"{loss_name} rank {rank}")
    # generator_step on the wrapper: d loss / d fake only, and DDP's next step is unaffected
    fake = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    ddp.zero_grad(set_to_none=True)
    generator_step(ddp, fake, loss="non_saturating", backend=backend).backward()
    assert all(p.grad is None for p in D.parameters())
    want = fake.grad.clone()
    fake.grad = None
    generator_step(D_ref, fake, loss="non_saturating", backend="reference").backward()
    harness.assert_close(want, fake.grad, None, torch.float64, "generator step")
    discriminator_step(ddp, real[:6], fake[:6].detach(), loss="hinge", backend=backend).backward()
    assert all(p.grad is not None for p in D.parameters())


def _rank_main(rank: int, workdir: str, backend: str) -> None:
    """One rank: every case in its own process group; success is the marker file ``rank<r>.ok``."""
    work = Path(workdir)
    log = open(work / f"rank{rank}.log", "w", buffering=1)
    os.dup2(log.fileno(), 1)  # C++ output (gloo, std::terminate) lands in the log too
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    faulthandler.enable(file=log)
    faulthandler.dump_traceback_later(DEADLINE_S, exit=True)  # a hang becomes a stack dump, then exit
    try:
        torch.set_num_threads(1)
        for i, (loss_name, make_penalty, steps) in enumerate(CASES):
            print(f"rank {rank}: case {i} {loss_name}", flush=True)
            store = dist.FileStore(str(work / f"store{i}"), WORLD)
            dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD,
                                    timeout=datetime.timedelta(seconds=TIMEOUT_S))
            try:
                _check_case(rank, backend, loss_name, make_penalty, steps)
                dist.barrier()
            finally:
                dist.destroy_process_group()
        (work / f"rank{rank}.ok").write_text("ok")
        print(f"rank {rank}: done", flush=True)
    except BaseException:  # noqa: BLE001 -- reported through the log
        traceback.print_exc(file=log)
    finally:
        log.flush()
        os._exit(0)


def run_ranks(backend: str, workdir: Path) -> None:
    """Start WORLD ranks, wait with a deadline, and fail with every rank's exit code and log."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, str(workdir), backend), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(DEADLINE_S + 30)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    ok = [(workdir / f"rank{r}.ok").exists() for r in range(WORLD)]
    if not all(ok):
        report = []
        for r, p in enumerate(procs):
            path = workdir / f"rank{r}.log"
            text = path.read_text() if path.exists() else "(no log)"
            report.append(f"--- rank {r}: exit code {p.exitcode}, {'ok' if ok[r] else 'FAILED'} ---\n{text}")
        pytest.fail("DDP ranks failed:\n" + "\n".join(report), pytrace=False)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_ddp_averages_fused_gradients(backend, tmp_path, monkeypatch):
    if backend != "torch":
        from fastgan import fused
        try:
            fused.resolve_backend(backend, "cpu")
        except (ValueError, RuntimeError) as err:
            pytest.skip(f"fused step backend {backend!r} unavailable: {err}")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    # spawned ranks unpickle _rank_main by this module's name, whatever the import mode: give them
    # the repository root and this directory; one thread per rank
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_ranks(backend, tmp_path)
