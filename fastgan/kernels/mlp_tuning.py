"""How the Triton MLP step's kernels are compiled and tuned (docs/DESIGN.md section 4).

Compile budget. A Triton kernel compiles once per (config, specialisation) and an autotuned one
times every config it keeps the first time it meets a new tuning key, so a new network shape
costs (configs kept) x (kernel variants) compilations plus the timing runs. This module keeps
that small:

- sizes that change with the network or the batch are runtime arguments on a GPU (one binary
  serves every width, :func:`runtime_on_gpu`; row counts are not even specialised on
  divisibility: the kernels list them in ``do_not_specialize``);
- tuning keys hold power-of-two buckets of the sizes (:func:`bucket`), not the sizes;
- a config that cannot fit shared memory, or would leave most SMs idle when a smaller one fills
  them, is pruned before anything compiles (:func:`prune`); at most ``KEEP`` survive;
- predictable configs (row-wise reductions, the fully fused kernels) are heuristics, not tuned;
- Triton's on-disk caches keep compiled kernels and (``cache_results=True``) autotune timings,
  so a later process with the same shapes neither compiles nor times anything.

``python tools/compile_count.py`` counts the compilations per benchmark network.
"""
import functools

import torch
import triton
import triton.language as tl

# The run mode (Triton's interpreter or the GPU compiler), read once by the package (see
# kernels/__init__.py); the kernel modules take it from here.
from fastgan.kernels import INTERPRET

# fp32 products when allow_tf32 is False ('highest'): 3xTF32 on tensor cores (each operand split
# into a TF32 part and a TF32 residual, three products summed): fp32-accurate, and an sm_90
# compile shows it spilling 1-5 KB per thread in the fused kernels against 25-90 KB for "ieee"
# (FMA units). The Triton 3.6 interpreter accepts "tf32x3" and computes the product in plain fp32
# (NumPy), so the same constant serves both; only a GPU checks 3xTF32's accuracy
# (test_gpu_precision in tests/test_mlp_step_triton.py).
FP32_PRECISION = "tf32x3"


def runtime_on_gpu(*names):
    """Decorator (below ``@triton.jit``) for arguments used as range() bounds (layer widths, rows
    per program): annotated ``tl.constexpr`` in the source, because the Triton 3.6 interpreter
    cannot take a runtime int as a range() bound (with NumPy >= 2.3) and reads the annotation
    from the source text; on a GPU the annotation is dropped, so they are ordinary runtime ints
    and one binary serves every width."""
    def strip(fn):
        if not INTERPRET:
            # Removed at run time (at decoration, before @triton.jit reads the signature), not in
            # the source: the interpreter needs the constexpr annotation, the GPU compiler must
            # not see it, or it would compile one binary per width.
            for name in names:
                assert fn.__annotations__.pop(name) is tl.constexpr, name
        return fn
    return strip


WARMUP_MS, REP_MS = 5, 20  # timing of one config (Triton's defaults, 25 and 100 ms, cost 5x more)
KEEP = 2  # configs an autotuned kernel may keep for one tuning key (compiled and timed each)
_SMS, _SMEM = 132, 227 * 1024  # H100/H200 defaults when no CUDA tensor says otherwise


def bucket(n: int) -> int:
    """The tuning-key bucket of a size: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(int(n)))


@functools.cache
def _device_limits(index: int) -> tuple[int, int]:
    p = torch.cuda.get_device_properties(index)
    return p.multi_processor_count, getattr(p, "shared_memory_per_block_optin", _SMEM)


def device_limits(t: torch.Tensor) -> tuple[int, int]:
    """(SMs, shared memory per block in bytes) of ``t``'s GPU; H100/H200 values otherwise."""
    return _device_limits(t.device.index or 0) if t.is_cuda else (_SMS, _SMEM)


def configs(blocks, interpret_block):
    """``triton.Config`` per (block sizes, num_warps, num_stages), largest tile first; exactly
    one (``interpret_block``) under the interpreter."""
    if INTERPRET:
        return [triton.Config(interpret_block, num_warps=4, num_stages=1)]
    return [triton.Config(b, num_warps=w, num_stages=s) for b, w, s in blocks]


def prune(configs, *, rows, cols, extent, elem_bytes, fp64, sms, smem):
    """The configs worth timing for one tuning key, largest tile first.

    ``rows``/``cols`` name the block sizes tiling the output, whose ``extent`` is (rows, columns,
    grid z); every config reduces in blocks of BLOCK_R. Drops tiles that overflow shared memory
    (the pipelined operand tiles: (rows + cols) x BLOCK_R x stages x element size), tiles wider
    than 64 x 64 in fp64 (register-bound) and tiles larger than the output's power-of-two extent
    (when a smaller one exists), then keeps the tiles that give every SM a program (or else the
    one giving the most programs), at most ``KEEP`` of them."""
    m, j, z = extent
    smallest = {d: min(c.kwargs[d] for c in configs) for d in (rows, cols)}
    ok = [c for c in configs
          if (c.kwargs[rows] + c.kwargs[cols]) * c.kwargs["BLOCK_R"] * c.num_stages * elem_bytes <= smem
          and not (fp64 and c.kwargs[rows] * c.kwargs[cols] > 64 * 64)
          and c.kwargs[rows] <= max(smallest[rows], triton.next_power_of_2(m))
          and c.kwargs[cols] <= max(smallest[cols], triton.next_power_of_2(j))]
    ok = ok or configs[-1:]

    def programs(c):
        return triton.cdiv(m, c.kwargs[rows]) * triton.cdiv(j, c.kwargs[cols]) * z
    full = [c for c in ok if programs(c) >= sms]
    return (full or [max(ok, key=programs)])[:KEEP]


def autotune_tiles(blocks, interpret_block, *, key, rows, cols, tensor, extent):
    """``triton.autotune`` over ``blocks`` (see :func:`configs`) with :func:`prune` as the early
    pruning, timings cached on disk. ``tensor`` names an argument on the kernel's device;
    ``extent(args)`` gives the output's (rows, columns, grid z)."""
    def early_prune(cfgs, args, **kwargs):
        a = {**args, **kwargs}
        sms, smem = device_limits(a[tensor])
        return prune(cfgs, rows=rows, cols=cols, extent=extent(a),
                     elem_bytes=2 if a["LOWP"] else a["params_ptr"].element_size(),
                     fp64=a["params_ptr"].element_size() == 8, sms=sms, smem=smem)
    return triton.autotune(configs=configs(blocks, interpret_block), key=key,
                           prune_configs_by={"early_config_prune": early_prune}, cache_results=True,
                           do_bench=_time_config)


def _time_config(kernel_call, quantiles):
    """Autotuning's timing of one config (``do_bench``; the warmup/rep arguments are deprecated)."""
    import triton.testing
    return triton.testing.do_bench(kernel_call, warmup=WARMUP_MS, rep=REP_MS, quantiles=quantiles)
