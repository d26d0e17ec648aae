"""Kernel microbenchmarks: ``fastgan bench`` (see :mod:`fastgan.bench.cli`).

Modules, one job each: ``configs`` (what is run), ``providers`` (backends and baselines as
runners), ``check`` (against ``reference`` before timing), ``timing`` (interleaved samples,
matmul peak), ``memory`` (peak memory), ``launches`` (profiler counts), ``machine``
(environment), ``report`` (tables, markdown, CSV).
"""
