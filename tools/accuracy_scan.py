"""How close each CPU fused-step backend comes to the harness's bound on many random problems.

The test suite checks a seeded sample of cases against the bound; this scan runs many more (with
long row sums: up to 200 rows per side) and reports the worst ratio error / bound per backend, the
figure the harness's docstring quotes. Not a test (nothing asserts); run from the repository root:

    python tools/accuracy_scan.py --cases 120 --seeds 777 4242 --out benchmarks/results/<name>.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import harness  # noqa: E402  (tests/harness.py)

BACKENDS = ("torch", "cpu")
ROWS = (1, 8, 50, 100, 200)


def scan(n: int, seed: int) -> list[tuple[float, str, str, str]]:
    """(error / bound, backend, worst tensor, case id) for every case and backend."""
    out = []
    for case in harness.cases(n=n, seed=seed, max_work=2_000_000, rows=ROWS):
        problem = case.build(torch.float32)
        truth, base = harness.expected(harness.reference_disc(case), problem.inputs(), torch.float32)
        limit = harness.bound(harness.error(base, truth), torch.float32)
        for backend in BACKENDS:
            errs = harness.errors(harness.run_disc(problem, backend), truth)
            worst = max(errs, key=errs.get)
            out.append((errs[worst] / limit, backend, worst, case.id))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=120, help="random cases per seed (default 120)")
    p.add_argument("--seeds", type=int, nargs="+", default=[777, 4242], help="harness.cases seeds")
    p.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = sorted((r for seed in args.seeds for r in scan(args.cases, seed)), reverse=True)
    lines = [f"# Accuracy scan: float32 fused step vs the float64 reference, {time.strftime('%Y-%m-%d')}", "",
             f"`python tools/accuracy_scan.py --cases {args.cases} --seeds {' '.join(map(str, args.seeds))}`; "
             f"torch {torch.__version__}, python {platform.python_version()}, 1 thread, "
             f"{time.perf_counter() - start:.0f} s. Each case: harness.cases (up to {max(ROWS)} rows per side); "
             "ratio = the backend's error / the harness bound (4 x the same PyTorch composition's float32 "
             "error + 16 ulp), both against float64.", "",
             "| backend | cases | worst ratio | cases above 0.5 |", "|---|---|---|---|"]
    for backend in BACKENDS:
        mine = [r for r in rows if r[1] == backend]
        lines.append(f"| {backend} | {len(mine)} | {mine[0][0]:.2f} | {sum(r[0] > 0.5 for r in mine)} |")
    lines += ["", "Worst ten:", "", "| ratio | backend | tensor | case |", "|---|---|---|---|"]
    lines += [f"| {r[0]:.2f} | {r[1]} | {r[2]} | {r[3]} |" for r in rows[:10]]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
