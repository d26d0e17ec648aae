"""The fused MLP discriminator and generator steps in Triton: host code (docs/DESIGN.md section 4).

``mlp_disc_step`` and ``mlp_gen_step`` implement the contract of the ``mlp_disc_step`` /
``mlp_gen_step`` operators (:mod:`fastgan.ops.mlp_step`, which registers them as
``torch.ops.fastgan.mlp_disc_step_triton`` / ``mlp_gen_step_triton``) without
autograd and without double backward. This module validates the arguments (raising before any
kernel runs), stacks real, fake and penalty rows into one (N, K) batch so that every product is
one launch, and dispatches:

- ``fastgan.kernels.mlp_fused``: the fully fused discriminator step (widths <= 128, depth <= 4);
- ``fastgan.kernels.mlp_general``: any width, one product kernel per layer with its epilogue
  fused; the generator step always;
- ``fastgan.kernels.mlp_rows``: the logits / loss derivative and penalty row kernels both use;
- ``fastgan.kernels.mlp_tuning``: run mode, fp32 precision, compile budget and autotuning.

Options: ``path`` = "auto" (the fused step where it applies), "fused" (raises where it does not)
or "wide" (the products with fused epilogues, ``mlp_general``); ``tensor_cores`` is the schema's
CUDA-only option (Triton's products always use ``tl.dot``: accepted and ignored); keyword-only,
beyond the schema, ``poison`` = True fills every scratch buffer with NaN first, so an element no
kernel writes shows in the results (tests).

Dropout: the ``masks_*`` lists are checked (naming the list) and stacked like the rows, one
(N, H_l) multiplier tensor per hidden layer; the kernels apply them where the activations and
every activation derivative are formed (``h_l = leaky(z_l) * d_l``, factor ``leaky'(z_l) * d_l``).

Precision: fp32 and fp64 accumulate in their own type; bf16/fp16 inputs are cast inside the
kernels, the products take operands in the parameters' dtype and accumulate in fp32, and every
intermediate (H, V, G, Ubar) is stored in fp32. fp32 products are fp32-accurate (3xTF32,
``mlp_tuning.FP32_PRECISION``) unless ``allow_tf32``; fp64 products are plain fp64.

Compile cost: the first call of a new network shape compiles each kernel variant it uses for at
most two configs and times them; Triton's on-disk cache keeps both the binaries and the
timings, so a later process with the same shapes compiles nothing (benchmarks/NOTES.md,
section "Triton", has the counts per benchmark network).
"""
import torch

from fastgan.closed_form import stacked_masks
from fastgan.kernels import mlp_fused, mlp_general, mlp_rows
from fastgan.kernels.mlp_tuning import FP32_PRECISION

PATHS = ("auto", "fused", "wide")


class Operands:
    """One step's operands: the stacked rows ``x`` (N, K), the parameters (contiguous), the
    kernels' scalars ``params`` (9,) in the compute dtype ``cdtype`` (fp64 for fp64, else fp32:
    [alpha, real term sign, shift, scale, fake term sign, shift, scale, penalty weight, center];
    Triton would pass Python floats as fp32), the dropout multipliers ``drops`` (one contiguous
    (N, H_l) tensor per hidden layer, stacked like ``x``; None without dropout), the product
    precision, and the scratch allocator."""

    def __init__(self, x, weights, biases, w_out, b_out, params, allow_tf32, poison, drops=None):
        self.x = x.contiguous()
        self.drops = [d.contiguous() for d in drops] if drops is not None else None
        self.weights = [w.contiguous() for w in weights]
        self.biases = [b.contiguous() for b in biases]
        self.w_out = w_out.contiguous()
        self.b_out = b_out.contiguous() if b_out is not None else None
        self.params = params
        self.cdtype = params.dtype
        self.lowp = self.weights[0].dtype in (torch.float16, torch.bfloat16)
        fp32 = self.cdtype == torch.float32 and not self.lowp
        self.precision = ("tf32" if allow_tf32 else FP32_PRECISION) if fp32 else "ieee"
        self.poison = poison

    def empty(self, *shape, dtype=None):
        """A scratch tensor on the rows' device (compute dtype unless ``dtype``); NaN-filled
        when poisoned."""
        t = torch.empty(shape, device=self.x.device, dtype=dtype or self.cdtype)
        return t.fill_(float("nan")) if self.poison else t


def _params(dtype, device, negative_slope, t_real=(0.0, 0.0, 0.0), t_fake=(0.0, 0.0, 0.0), weight=0.0, center=0.0):
    return torch.tensor([negative_slope, *t_real, *t_fake, weight, center], dtype=dtype, device=device)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_options(path, poison):
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if not isinstance(poison, bool):
        raise TypeError(f"poison must be a bool, got {type(poison).__name__}")


def _check(name, t, dtype, device, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype or t.device != device:
        raise TypeError(f"{name} must be a {dtype} tensor on {device}, got {t.dtype} on {t.device}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _term_args(name, term):
    """(phi constexpr, [sign, shift, scale]) of a [phi, sign, shift, scale] list (or [])."""
    term = list(term)
    if not term:
        return mlp_rows.NO_TERM, [0.0, 0.0, 0.0]
    if len(term) != 4 or int(term[0]) not in (0, 1, 2, 3) or term[0] != int(term[0]):
        raise ValueError(f"{name} must be [] or [phi, sign, shift, scale] with phi in 0..3, got {term}")
    return int(term[0]), [float(v) for v in term[1:]]


def _check_network(x, weights, biases, w_out, b_out, negative_slope):
    """Validates the parameters against rows x; returns the widths [K, H_1, .., H_L]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(f"rows must be a non-empty 2-D floating tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not weights:
        raise ValueError("weights must hold at least one (H_1, K) matrix")
    widths = [x.shape[1]]
    pdtype = weights[0].dtype if isinstance(weights[0], torch.Tensor) else None
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise ValueError(f"weights[{i}] must be a 2-D tensor")
        _check(f"weights[{i}]", w, pdtype, x.device, (w.shape[0], widths[-1]))
        widths.append(w.shape[0])
    if len(biases) not in (0, len(weights)):
        raise ValueError(f"biases must be empty or hold {len(weights)} tensors, got {len(biases)}")
    for i, b in enumerate(biases):
        _check(f"biases[{i}]", b, pdtype, x.device, (widths[i + 1],))
    _check("w_out", w_out, pdtype, x.device, (1, widths[-1]))
    if b_out is not None:
        _check("b_out", b_out, pdtype, x.device, (1,))
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
    return widths


def _masks(parts, names, blocks, widths, x):
    """The dropout multipliers stacked like the rows ``x`` (one (N, H_l) tensor per hidden layer),
    or None without dropout; ``parts``: the mask lists of the row blocks ``blocks`` in stacking
    order. Raises ValueError naming the list that is wrong."""
    drops = stacked_masks(parts, names, [b.shape[0] for b in blocks], widths[1:], x)
    return None if drops[0] is None else drops


def mlp_disc_step(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope, term_real, term_fake,
                  paired, penalty_side, penalty_kind, penalty_weight, penalty_center, allow_tf32,
                  masks_real=(), masks_fake=(), masks_penalty=(), path="auto", tensor_cores=False, *, poison=False):
    """The discriminator step; see the ``mlp_disc_step`` schema in fastgan/ops/mlp_step.py.

    Returns [stats = (loss, penalty, mean real logit, mean fake logit), dW_1..dW_L,
    db_1..db_L (if biases), dw_out, db_out (if b_out)], gradients of loss + penalty.
    ``path``, ``poison``: see the module docstring. ``masks_*``: dropout multipliers per hidden
    layer of each block of rows (all empty: no dropout), stacked like the rows."""
    _check_options(path, poison)
    weights, biases = list(weights), list(biases)
    widths = _check_network(real, weights, biases, w_out, b_out, negative_slope)
    if not isinstance(fake, torch.Tensor) or fake.dim() != 2 or fake.shape[0] == 0:
        raise ValueError("fake must be a non-empty (rows, K) tensor")
    _check("fake", fake, real.dtype, real.device, (fake.shape[0], widths[0]))
    phi_r, t_real = _term_args("term_real", term_real)
    phi_f, t_fake = _term_args("term_fake", term_fake)
    nr, nf = real.shape[0], fake.shape[0]
    if paired and (nr != nf or phi_f != mlp_rows.NO_TERM):
        raise ValueError(f"paired needs as many real as fake rows ({nr} vs {nf}) and an empty term_fake")
    if penalty_side not in (-1, 0, 1, 2):
        raise ValueError(f"penalty_side must be -1, 0, 1 or 2, got {penalty_side}")
    if penalty_side != -1 and penalty_kind not in (0, 1):
        raise ValueError(f"penalty_kind must be 0 (squared) or 1 (centered), got {penalty_kind}")
    if penalty_side == 2:
        if penalty_input is None or not isinstance(penalty_input, torch.Tensor) or penalty_input.dim() != 2:
            raise ValueError("penalty_side 2 needs penalty_input of shape (rows, K)")
        _check("penalty_input", penalty_input, real.dtype, real.device, (penalty_input.shape[0], widths[0]))
        if penalty_input.shape[0] == 0:
            raise ValueError("penalty_input must not be empty")
    hb = mlp_fused.padded_width(widths) if path != "wide" else None
    if path == "fused" and hb is None:
        raise ValueError(f"path='fused' needs every width <= {mlp_fused.FUSED_MAX_WIDTH} and at most "
                         f"{mlp_fused.FUSED_MAX_DEPTH} layers, got widths {widths}")

    if len(masks_penalty) and penalty_side != 2:
        raise ValueError("masks_penalty is given but penalty_side is not 2 (penalty_input)")
    blocks = [real, fake] + ([penalty_input] if penalty_side == 2 else [])
    parts = [masks_real, masks_fake] + ([masks_penalty] if penalty_side == 2 else [])
    drops = _masks(parts, ("masks_real", "masks_fake", "masks_penalty"), blocks, widths, real)

    params = _params(_compute_dtype(real.dtype), real.device, negative_slope, t_real, t_fake, penalty_weight,
                     penalty_center)
    x = torch.cat(blocks)
    ops = Operands(x, weights, biases, w_out, b_out, params, allow_tf32, poison, drops)
    p0, np_ = {-1: (0, 0), 0: (0, nr), 1: (nr, nf), 2: (nr + nf, x.shape[0] - nr - nf)}[penalty_side]
    common = (nr, nf, phi_r, phi_f, bool(paired), p0, np_, penalty_side, penalty_kind)
    if hb is not None:
        dws, dbs, dw_out, sums, penalty = mlp_fused.disc_step(ops, widths, hb, *common)
    else:
        dws, dbs, dw_out, sums, penalty = mlp_general.disc_step(ops, widths, *common)
    stats = torch.stack([sums[0], penalty, sums[1] / nr, sums[2] / nf]).to(real.dtype)
    grads = dws + (dbs if biases else []) + [dw_out]
    if b_out is not None:
        grads.append(sums[3].reshape(1).to(weights[0].dtype))
    # an operator's outputs own their memory: a part of a larger buffer (the padded gradients, sums) is copied
    return [stats] + [g if g.untyped_storage().nbytes() == g.numel() * g.element_size() else g.clone()
                      for g in grads]


def mlp_gen_step(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, allow_tf32,
                 masks_fake=(), masks_real=(), path="auto", tensor_cores=False, *, poison=False):
    """The generator step; see the ``mlp_gen_step`` schema in fastgan/ops/mlp_step.py.

    loss = sum_j term(f_j) (paired: sum_j term(r_j - f_j)); returns
    [stats = (loss, mean fake logit), d loss / d fake = c * g (fake's shape and dtype)].
    It always takes the general path: ``path`` may be "auto" or "wide". ``masks_fake`` (and
    ``masks_real`` when paired): dropout multipliers per hidden layer (empty: no dropout)."""
    _check_options(path, poison)
    if path == "fused":
        raise ValueError("path='fused': the generator step has only the general path")
    weights, biases = list(weights), list(biases)
    widths = _check_network(fake, weights, biases, w_out, b_out, negative_slope)
    phi, t = _term_args("term", term)
    nf = fake.shape[0]
    if paired:
        if real is None:
            raise ValueError("paired needs real (the matching real rows)")
        _check("real", real, fake.dtype, fake.device, (nf, widths[0]))
    if len(masks_real) and not paired:
        raise ValueError("masks_real is given but the loss is not paired")
    # stacked [real (paired only); fake], the masks alike
    blocks, parts, names = ([real, fake], [masks_real, masks_fake], ("masks_real", "masks_fake")) if paired else \
        ([fake], [masks_fake], ("masks_fake",))
    drops = _masks(parts, names, blocks, widths, fake)
    params = _params(_compute_dtype(fake.dtype), fake.device, negative_slope, t, t)
    x = torch.cat(blocks) if paired else fake
    ops = Operands(x, weights, biases, w_out, b_out, params, allow_tf32, poison, drops)
    sums, dfake = mlp_general.gen_step(ops, widths, nf if paired else 0, nf, phi, bool(paired))
    return [torch.stack([sums[0], sums[2] / nf]).to(fake.dtype), dfake]
