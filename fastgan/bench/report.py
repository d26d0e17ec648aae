"""Result rows and their renderings: the console summary (one table, its legend, what was not
run and why), the markdown file (environment, providers, results, overhead ratios, method) and
the CSV; and :func:`read_csv`, which loads results files of any version under today's provider
names."""
from __future__ import annotations

import csv
import io
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

from fastgan.bench.configs import Config
from fastgan.bench.providers import DESCRIPTION, REFERENCE, RENAMED
from fastgan.bench.timing import Stats


@dataclass
class Row:
    """One provider on one configuration. ``status``: 'ok', 'check failed', 'missing: <why>'
    or 'error: <what>'; failed and missing rows carry no timing ('ok; memory/launch count
    error: ...' when only a measurement after the timing failed)."""

    config: Config
    provider: str
    status: str
    stats: Stats | None = None
    check_err: float | None = None
    peak_bytes: int | None = None
    launches: float | None = None
    setup_s: float | None = None


def _key(c: Config) -> tuple:
    return (c.network.name, c.batch)


def records(rows: list[Row], baselines: list[str], peak_flops: float, count_kind: str) -> list[dict]:
    """Flat records (CSV columns) with the ratios to each baseline (baseline median / this
    median: above 1 means faster than the baseline) and achieved FLOP/s. ``launches`` holds
    what ``launches_kind`` says: GPU launches or CPU operator calls per step."""
    median = {(_key(r.config), r.config.objective.name, r.provider): r.stats.median
              for r in rows if r.stats is not None}
    out = []
    for r in rows:
        c, s = r.config, r.stats
        rec = {"network": c.network.name, "in_features": c.network.in_features, "depth": c.network.depth,
               "width": c.network.width, "pack": c.network.pack, "batch": c.batch,
               "objective": c.objective.name, "provider": r.provider, "status": r.status,
               "median_ms": s.median * 1e3 if s else None, "p20_ms": s.p20 * 1e3 if s else None,
               "p80_ms": s.p80 * 1e3 if s else None}
        for b in baselines:
            base = median.get((_key(c), c.objective.name, b))
            rec[f"vs_{b}"] = base / s.median if s and base else None
        rec["peak_mib"] = r.peak_bytes / 2**20 if r.peak_bytes is not None else None
        rec["tflops"] = c.flops / s.median / 1e12 if s else None
        rec["peak_pct"] = 100 * c.flops / s.median / peak_flops if s and peak_flops else None
        rec["launches"] = r.launches
        rec["launches_kind"] = count_kind
        rec["setup_s"] = r.setup_s
        rec["check_err"] = r.check_err
        out.append(rec)
    return out


def overhead(rows: list[Row]) -> list[dict]:
    """R1/plain and GP/plain: median(ns+r1) / median(hinge) and median(w+gp) / median(hinge)
    per network, batch and provider."""
    median = {(_key(r.config), r.config.objective.name, r.provider): r.stats.median
              for r in rows if r.stats is not None}
    out, seen = [], set()
    for r in rows:
        k = (_key(r.config), r.provider)
        plain = median.get((k[0], "hinge", r.provider))
        if k in seen or plain is None:
            continue
        seen.add(k)
        r1, gp = median.get((k[0], "ns+r1", r.provider)), median.get((k[0], "w+gp", r.provider))
        out.append({"network": r.config.network.name, "batch": r.config.batch, "provider": r.provider,
                    "r1_over_plain": r1 / plain if r1 else None, "gp_over_plain": gp / plain if gp else None})
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 10 ** digits:
            return f"{v:.0f}"
        return f"{v:.{digits}g}" if abs(v) >= 1e-2 else f"{v:.1e}"
    return str(v)


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def results_table(recs: list[dict], baselines: list[str], count_kind: str) -> str:
    header = (["network", "batch", "objective", "provider", "median ms", "p20 ms", "p80 ms"]
              + [f"vs {b}" for b in baselines]
              + ["peak MiB", "TFLOP/s", "% peak", count_kind, "setup s", "check err", "status"])
    body = []
    for r in recs:
        body.append([r["network"], str(r["batch"]), r["objective"], r["provider"], _fmt(r["median_ms"]),
                     _fmt(r["p20_ms"]), _fmt(r["p80_ms"])]
                    + [_fmt(r[f"vs_{b}"]) for b in baselines]
                    + [_fmt(r["peak_mib"]), _fmt(r["tflops"]), _fmt(r["peak_pct"]), _fmt(r["launches"]),
                       _fmt(r["setup_s"]), _fmt(r["check_err"], 2), r["status"]])
    return _table(header, body)


def overhead_table(over: list[dict]) -> str:
    return _table(["network", "batch", "provider", "R1/plain", "GP/plain"],
                  [[o["network"], str(o["batch"]), o["provider"], _fmt(o["r1_over_plain"]),
                    _fmt(o["gp_over_plain"])] for o in over])


def backends_table(statuses: list[tuple[str, str, str]]) -> str:
    """``statuses``: (provider, 'run' / 'unavailable' / 'skipped', why not)."""
    return _table(["provider", "what it is", "this run", "why not"],
                  [[n, DESCRIPTION[n], state, why or "-"] for n, state, why in statuses])


METHOD = """\
- One row per provider and configuration; `vs <baseline>` = baseline median / this median
  (above 1: faster than the baseline), both measured in this run, interleaved round by round.
- Providers: `fastgan-*` is fastgan's fused step with the backend after the dash
  (`fastgan-torch`: fastgan's step written in torch ops, not plain PyTorch); `pytorch-*` is
  plain PyTorch: `pytorch-eager` autograd with `create_graph=True` (fastgan's `reference`
  backend), `+graph` that step replayed from a CUDA graph, `pytorch-func+compile` torch.func in
  `torch.compile`. Older results files call them `cpu`, `torch`, `reference`, `func+compile`...
- depth = hidden layers (the output layer is not counted); batch = rows per side (with
  pack m, m samples per row); P = weight-matrix entries (biases not counted).
- TFLOP/s from useful work, the same for every provider (docs/DESIGN.md section 4): 12BP plain
  (hinge), 14BP non-saturating + R1 (gamma 10), 20BP Wasserstein + WGAN-GP (weight 10), 4BP
  generator step; `% peak` against the matmul peak measured in this run (above).
- Peak memory: GPU `max_memory_allocated` during one step above what was allocated before it
  (graph providers: during capture, i.e. their pool); CPU peak-RSS delta of one step in a
  subprocess (see fastgan/bench/memory.py).
- GPU `launches`: host launch calls per step from torch.profiler (a CUDA-graph replay counts
  once). CPU `ops`: top-level operator calls per step (aten::/fastgan::), not launches.
- Every provider was checked against `pytorch-eager` before timing (value and gradients; `check err`
  is the relative 2-norm error per tensor, floored at 1% of the largest reference norm, see
  fastgan/bench/check.py); a failing check marks the row and skips its timing.
- `setup s`: compile / CUDA-graph capture time, not part of the step time."""


def markdown(info: dict[str, str], settings: dict[str, str], statuses, recs, over, baselines,
             count_kind: str) -> str:
    env = "\n".join(f"- {k}: {v}" for k, v in {**info, **settings}.items())
    parts = [f"# fastgan bench: {info['device']}, {info['date']}", env, "## Providers",
             backends_table(statuses), "## Results", results_table(recs, baselines, count_kind),
             "## Penalty overhead (median ratios)", overhead_table(over) if over else "(no plain step timed)",
             "## Method", METHOD]
    return "\n\n".join(parts) + "\n"


def csv_text(recs: list[dict], info: dict[str, str], settings: dict[str, str]) -> str:
    context = {"device": info["device"], "date": info["date"], "dtype": settings["dtype"],
               "precision": settings["precision"], "torch": info["torch"], "triton": info["triton"],
               "fastgan": info["fastgan"], "git_commit": info["git commit"], "threads": info["threads"]}
    buf = io.StringIO()
    if recs:
        writer = csv.DictWriter(buf, fieldnames=list(recs[0]) + list(context), lineterminator="\n")
        writer.writeheader()
        for r in recs:
            writer.writerow({**{k: ("" if v is None else v) for k, v in r.items()}, **context})
    return buf.getvalue()


def write(stem: Path, md: str, csv_body: str) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` (a given .md/.csv suffix is dropped first)."""
    if stem.suffix in (".md", ".csv"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = Path(f"{stem}.md"), Path(f"{stem}.csv")
    md_path.write_text(md)
    csv_path.write_text(csv_body)
    return md_path, csv_path


def read_markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first table after ``## heading`` in a report (for tests and tools)."""
    lines = text.split(f"## {heading}\n", 1)[1].strip().splitlines()
    table = list(itertools.takewhile(lambda ln: ln.startswith("|"), lines))
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in table[2:]]


LEGEND_COLUMNS = {
    "peak MiB": "peak MiB: a step's memory above its inputs",
    "% peak": "% peak: of this run's measured matmul peak",
    "check err": f"check err: vs {REFERENCE}",
}


def _aligned(header: list[str], body: list[list[str]]) -> list[str]:
    """Plain columns for a terminal: left-aligned text, right-aligned numbers, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = [all(_numeric(row[i]) for row in body) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
    return [line(header), *(line(row) for row in body)]


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == "-"
    return True


def console(headline: str, statuses, recs: list[dict], baselines: list[str], count_kind: str) -> str:
    """What the command prints: a headline, the results table (without the rows of providers
    that are missing here, and without columns empty in every row), a legend (the providers in
    the table, what the ratio and other columns mean) and one line per provider that was not
    run saying why."""
    recs = [r for r in recs if not r["status"].startswith("missing: ")]  # said under "not run"
    table = results_table(recs, baselines, count_kind).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    keep = [i for i in range(len(header)) if any(row[i] != "-" for row in body)] if body else range(len(header))
    header, body = [header[i] for i in keep], [[row[i] for i in keep] for row in body]
    shown = list(dict.fromkeys(r["provider"] for r in recs))
    width = max((len(n) for n in shown), default=0)
    ratios = [c for c in header if c.startswith("vs ")]
    legend = [f"legend: {' / '.join(ratios)} = that provider's median / this row's median, same run (above 1: "
              "this row is faster); p20/p80: percentiles" if ratios else "legend: p20/p80: percentiles"]
    legend += [f"  {n.ljust(width)}  {DESCRIPTION[n]}" for n in shown]
    notes = [LEGEND_COLUMNS[c] for c in LEGEND_COLUMNS if c in header]
    if count_kind in header:
        notes.append("ops: operator calls per step" if count_kind == "ops" else "launches: kernel launches per step")
    if "setup s" in header:
        notes.append("setup s: compile/capture time, not timed")
    rows = _aligned(header, body)
    if notes:
        legend += textwrap.wrap("; ".join(notes), max(100, *map(len, rows)), initial_indent="  ",
                                subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    lines = [headline, *rows, *legend]
    skipped = [(n, state, why) for n, state, why in statuses if state != "run"]
    if skipped:  # one line each: "not run: <provider>  <unavailable|skipped>: <why>"
        width = max(len(n) for n, _, _ in skipped)
        lines += [f"{'not run:' if i == 0 else '':8s} {n.ljust(width)}  {state}: {why}"
                  for i, (n, state, why) in enumerate(skipped)]
    return "\n".join(lines)


def read_csv(path: Path | str) -> list[dict[str, str]]:
    """The rows of a results CSV, any version, under today's provider names: the ``provider``
    values and the ``vs_<baseline>`` columns of older files (``torch``, ``reference``, ...) are
    renamed as :data:`fastgan.bench.providers.RENAMED` says; the file itself is left alone."""
    def new(name: str) -> str:
        return RENAMED.get(name, name)

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        rec = {}
        for k, v in row.items():
            if k.startswith("vs_"):
                k = "vs_" + new(k.removeprefix("vs_"))
            rec[k] = new(v) if k == "provider" else v
        out.append(rec)
    return out
