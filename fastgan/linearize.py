"""A discriminator's forward pass linearised at its input: the tangent pass behind the generic
discriminator step (:mod:`fastgan.generic_step`).

For a penalty on ``g = grad_x sum(D(x; theta))``, the parameter gradient of ``sum_r c_r |g_r|^2 / 2``
is ``d/dtheta <grad_x sum(D(x; theta)), v>`` at ``v = c * g`` held fixed, and
``<grad_x sum D, v> = sum(J_x D . v)`` is a Jacobian-vector product: D's forward pass linearised at
``x`` and applied to ``v``. This module computes it without double backward:

1. :meth:`Linearized.primal` runs D on ``x`` node by node (a ``torch.fx`` graph of D) and keeps,
   for the tangent pass, every node's value and what a rule needs besides (dropout masks, max-pool
   indices).
2. :meth:`Linearized.tangent` runs the linearised graph on ``v``: each node's tangent from its
   inputs' tangents and its primal inputs. Parameters enter as themselves, so autograd tracks
   theta, and one ordinary backward of ``sum(tangent)`` gives the penalty's parameter gradient.

Rules (the tangent of a node, ``None`` for zero):

- linear in the input, applied to the tangent without bias: ``Linear``, ``Conv1d/2d/3d``,
  ``ConvTranspose1d/2d/3d`` and ``F.linear`` / ``F.conv*``; average and adaptive-average pooling,
  padding (with zeros), up-sampling, flatten/reshape/view/permute/transpose/squeeze/getitem/
  sum/mean/cat/stack/repeat/expand and the like: the same op on the tangent;
- piecewise linear, with pass 1's masks: ``ReLU``, ``LeakyReLU``, ``ReLU6``/``Hardtanh``/
  ``clamp``, max pooling (pass 1's indices), dropout (pass 1's mask: the tangent pass draws no
  randomness);
- add/sub/mul/div/matmul/einsum between data and tensors of x (product rule on primal values);
- smooth functions (SiLU, GELU, tanh, sigmoid, softplus, ELU, exp, sqrt, rsqrt, pow, log, ...)
  and the norms (LayerNorm, GroupNorm, InstanceNorm, BatchNorm): their Jacobian factors are
  computed from the primal values *inside the autograd graph* (not detached), so the final
  backward differentiates them too and the second-derivative term is exact;
- ``Embedding`` and everything else of the condition or of parameters only: zero tangent.

Any other module or function gets **forward-mode AD** for that node (``torch.autograd.forward_ad``
on the node's own call, whose result autograd can differentiate). A node where forward AD fails
raises :class:`LinearizationError` naming it; the step then falls back to double backward with
one warning (:mod:`fastgan.generic_step`).

Tracing: any module graph (not only ``nn.Sequential``). Leaves are the layer types above, the
``torch.nn`` modules (fx's default) and any submodule that ``torch.fx`` cannot trace on its own
(data-dependent control flow and the like), which becomes a forward-AD leaf with one warning
giving the reason. If D itself cannot be traced, D as a whole is that leaf: correct, but slower
(the tangent pass reruns D's primal under forward AD, and dropout inside such a leaf draws fresh
masks there).

Weights: parametrizations (``torch.nn.utils.parametrizations.spectral_norm`` / ``weight_norm``)
are read through ``module.weight``; the step runs inside ``torch.nn.utils.parametrize.cached()``,
so the effective weight (and spectral norm's power iteration) is computed once per step. A
module's forward pre-hooks (the hook-based ``torch.nn.utils.spectral_norm`` / ``weight_norm``)
run once per step, at its first call (:class:`StepState`); other calls in the step use
``module.forward`` with the weight the hook set. Forward (post) hooks do not run.
"""
from __future__ import annotations

import builtins
import inspect
import math
import operator
import warnings
import weakref
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as fwAD

from fastgan import activation_signs

__all__ = ["Linearized", "LinearizationError", "StepState", "linearize"]


class LinearizationError(RuntimeError):
    """A node of D has no tangent rule and forward-mode AD failed on it."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(f"no tangent for {where}: forward-mode AD failed ({type(cause).__name__}: {cause})")
        self.where = where


class StepState:
    """Per-step state shared by every pass of one step: which modules' forward pre-hooks ran."""

    def __init__(self):
        self.hooked: set[int] = set()


# ------------------------------------------------------------------------------ helpers ----

def _has_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_tensor(a) for a in x)
    if isinstance(x, dict):
        return any(_has_tensor(a) for a in x.values())
    return False


def _any_tangent(t) -> bool:
    if t is None:
        return False
    if isinstance(t, (tuple, list)):
        return any(_any_tangent(a) for a in t)
    if isinstance(t, dict):
        return any(_any_tangent(a) for a in t.values())
    return True


def _map_tensors(x, fn):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple):
        return tuple(_map_tensors(a, fn) for a in x)
    if isinstance(x, list):
        return [_map_tensors(a, fn) for a in x]
    return None


class _Ref:
    """A reference to the value of step ``i`` in an argument template."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


class _SliceT:
    __slots__ = ("start", "stop", "step")

    def __init__(self, start, stop, step):
        self.start, self.stop, self.step = start, stop, step


def _template(arg, index: dict):
    """fx arguments -> a template of _Ref / containers / constants (no fx objects)."""
    if isinstance(arg, fx.Node):
        return _Ref(index[arg])
    if isinstance(arg, tuple):
        return tuple(_template(a, index) for a in arg)
    if isinstance(arg, list):
        return [_template(a, index) for a in arg]
    if isinstance(arg, dict):
        return {k: _template(v, index) for k, v in arg.items()}
    if isinstance(arg, slice):
        return _SliceT(_template(arg.start, index), _template(arg.stop, index), _template(arg.step, index))
    return arg


def _fill(t, env: list):
    """A template with every _Ref replaced by its value."""
    if isinstance(t, _Ref):
        return env[t.i]
    if isinstance(t, tuple):
        return tuple(_fill(a, env) for a in t)
    if isinstance(t, list):
        return [_fill(a, env) for a in t]
    if isinstance(t, dict):
        return {k: _fill(v, env) for k, v in t.items()}
    if isinstance(t, _SliceT):
        return slice(_fill(t.start, env), _fill(t.stop, env), _fill(t.step, env))
    return t


def _fill_tangent(t, tan: list):
    """A template with every _Ref replaced by its tangent and constants by None."""
    if isinstance(t, _Ref):
        return tan[t.i]
    if isinstance(t, tuple):
        return tuple(_fill_tangent(a, tan) for a in t)
    if isinstance(t, list):
        return [_fill_tangent(a, tan) for a in t]
    if isinstance(t, dict):
        return {k: _fill_tangent(v, tan) for k, v in t.items()}
    return None


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _or_zeros(t, p):
    return t if t is not None else torch.zeros_like(p)


def _normalized_tangent(x: torch.Tensor, t: torch.Tensor, dims, eps: float) -> torch.Tensor:
    """Tangent of ``(x - mean) / sqrt(var + eps)`` over ``dims`` (biased variance), with the
    statistics from the primal ``x`` inside the autograd graph."""
    mu = x.mean(dims, keepdim=True)
    xc = x - mu
    rstd = torch.rsqrt(xc.pow(2).mean(dims, keepdim=True) + eps)
    xhat = xc * rstd
    return rstd * (t - t.mean(dims, keepdim=True) - xhat * (xhat * t).mean(dims, keepdim=True))


def _channel_view(w: torch.Tensor, ndim: int) -> torch.Tensor:
    return w.reshape((1, -1) + (1,) * (ndim - 2)) if ndim >= 2 else w


# ---- smooth elementwise derivatives: d(x, y, **kw) -> dy/dx, from primal values in the graph ----

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _d_gelu(x, approximate="none"):
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
        th = torch.tanh(u)
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


def _d_silu(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _d_softplus(x, beta=1.0, threshold=20.0):
    bx = x * beta
    return torch.where(bx > threshold, torch.ones_like(x), torch.sigmoid(bx))


def _d_elu(x, alpha=1.0):
    return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0)))


def _d_mish(x):
    sp = F.softplus(x)
    tsp = torch.tanh(sp)
    return tsp + x * (1 - tsp * tsp) * torch.sigmoid(x)


# --------------------------------------------------------------------- module rules ----
# A module rule: (module, primal args, primal kwargs, tangent of the first argument, output,
# extra) -> tangent of the output. ``extra`` is what the rule's primal recorded.

def _t_linear(m, a, k, t, out, extra):
    return F.linear(t, m.weight)


def _t_conv(m, a, k, t, out, extra):
    return m._conv_forward(t, m.weight, None)


def _t_conv_transpose(m, a, k, t, out, extra):
    if len(a) > 1 or k:
        raise NotImplementedError("output_size argument")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(m.kernel_size)]
    return fn(t, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)


def _relu_tangent(t, out):
    """``t`` where the input ``x > 0``, else 0: one kernel (ReLU's backward), differentiable in
    ``t``. The mask is read from the output (``relu(x) > 0`` exactly where ``x > 0``, as torch's
    own ReLU backward does; the input may have been overwritten, see :func:`_activation_primal`),
    detached: the primal's mask is a constant."""
    return _leaky_tangent(t, None, out, 0.0)


def _leaky_tangent(t, x, out, slope):
    """``t`` where ``x > 0``, else ``slope * t``: one kernel (LeakyReLU's backward). For a slope
    >= 0 the sign is read from the output, as in :func:`_relu_tangent` (through
    :func:`fastgan.activation_signs.masked` when a compiled CPU graph will differentiate it, so
    the partitioner saves the float output rather than a bool sign); a negative slope flips it,
    so the input is read then."""
    if slope < 0:
        return torch.ops.aten.leaky_relu_backward(t, x.detach(), slope, False)
    if activation_signs.wanted(t):
        return activation_signs.masked(t, out.detach(), slope)
    if slope == 0:
        return torch.ops.aten.threshold_backward(t, out.detach(), 0)
    return torch.ops.aten.leaky_relu_backward(t, out.detach(), slope, True)


def _t_relu(m, a, k, t, out, extra):
    return _relu_tangent(t, out)


def _t_leaky(m, a, k, t, out, extra):
    return _leaky_tangent(t, a[0], out, m.negative_slope)


def _t_hardtanh(m, a, k, t, out, extra):
    x = a[0]
    return t * ((x > m.min_val) & (x < m.max_val))


def _t_same(m, a, k, t, out, extra):
    return m(t, *a[1:], **k)


def _t_zero_pad(m, a, k, t, out, extra):
    return F.pad(t, m.padding)  # constant padding with any value: the tangent pads with 0


def _t_dropout(m, a, k, t, out, extra):
    return t if extra is None else t * extra


def _t_layer_norm(m, a, k, t, out, extra):
    dims = tuple(range(-len(m.normalized_shape), 0))
    d = _normalized_tangent(a[0], t, dims, m.eps)
    return d * m.weight if m.weight is not None else d


def _t_group_norm(m, a, k, t, out, extra):
    x = a[0]
    n = x.shape[0]
    d = _normalized_tangent(x.reshape(n, m.num_groups, -1), t.reshape(n, m.num_groups, -1), (2,), m.eps)
    d = d.reshape(x.shape)
    return d * _channel_view(m.weight, x.dim()) if m.weight is not None else d


def _smooth(deriv: Callable[..., torch.Tensor], attrs: tuple[str, ...] = ()):
    def rule(m, a, k, t, out, extra):
        return t * deriv(a[0], **{name: getattr(m, name) for name in attrs})
    return rule


def _t_tanh_module(m, a, k, t, out, extra):
    return t * (1 - out * out)


def _t_sigmoid_module(m, a, k, t, out, extra):
    return t * (out * (1 - out))


def _t_embedding(m, a, k, t, out, extra):
    return None


MODULE_RULES: dict[type, Callable] = {
    nn.Linear: _t_linear,
    nn.Conv1d: _t_conv, nn.Conv2d: _t_conv, nn.Conv3d: _t_conv,
    nn.ConvTranspose1d: _t_conv_transpose, nn.ConvTranspose2d: _t_conv_transpose,
    nn.ConvTranspose3d: _t_conv_transpose,
    nn.ReLU: _t_relu, nn.LeakyReLU: _t_leaky, nn.ReLU6: _t_hardtanh, nn.Hardtanh: _t_hardtanh,
    nn.AvgPool1d: _t_same, nn.AvgPool2d: _t_same, nn.AvgPool3d: _t_same,
    nn.AdaptiveAvgPool1d: _t_same, nn.AdaptiveAvgPool2d: _t_same, nn.AdaptiveAvgPool3d: _t_same,
    nn.Flatten: _t_same, nn.Unflatten: _t_same, nn.Identity: _t_same, nn.Upsample: _t_same,
    nn.PixelShuffle: _t_same, nn.PixelUnshuffle: _t_same,
    nn.ReflectionPad1d: _t_same, nn.ReflectionPad2d: _t_same, nn.ReflectionPad3d: _t_same,
    nn.ReplicationPad1d: _t_same, nn.ReplicationPad2d: _t_same, nn.ReplicationPad3d: _t_same,
    nn.ZeroPad1d: _t_zero_pad, nn.ZeroPad2d: _t_zero_pad, nn.ZeroPad3d: _t_zero_pad,
    nn.ConstantPad1d: _t_zero_pad, nn.ConstantPad2d: _t_zero_pad, nn.ConstantPad3d: _t_zero_pad,
    nn.Dropout: _t_dropout, nn.Dropout1d: _t_dropout, nn.Dropout2d: _t_dropout, nn.Dropout3d: _t_dropout,
    nn.Embedding: _t_embedding,
    nn.LayerNorm: _t_layer_norm, nn.GroupNorm: _t_group_norm,
    nn.SiLU: _smooth(_d_silu), nn.GELU: _smooth(_d_gelu, ("approximate",)),
    nn.Tanh: _t_tanh_module, nn.Sigmoid: _t_sigmoid_module,
    nn.Softplus: _smooth(_d_softplus, ("beta", "threshold")), nn.ELU: _smooth(_d_elu, ("alpha",)),
    nn.Mish: _smooth(_d_mish),
}


def _module_rule(m: nn.Module):
    for cls in type(m).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is not None:
            return rule
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m).forward is nn.modules.batchnorm._BatchNorm.forward:
        return _t_bn
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return _t_in
    return None


def _t_bn(m, a, k, t, out, extra):
    x = a[0]
    if m.training or not m.track_running_stats or m.running_mean is None:
        d = _normalized_tangent(x, t, (0,) + tuple(range(2, x.dim())), m.eps)
    else:
        d = t * _channel_view(torch.rsqrt(m.running_var + m.eps), x.dim())
    return d * _channel_view(m.weight, x.dim()) if m.weight is not None else d


def _t_in(m, a, k, t, out, extra):
    x = a[0]
    batched = x.dim() == m._get_no_batch_dim() + 1
    xb, tb = (x, t) if batched else (x.unsqueeze(0), t.unsqueeze(0))
    if m.training or not m.track_running_stats or m.running_mean is None:
        d = _normalized_tangent(xb, tb, tuple(range(2, xb.dim())), m.eps)
    else:
        d = tb * _channel_view(torch.rsqrt(m.running_var + m.eps), xb.dim())
    if m.weight is not None:
        d = d * _channel_view(m.weight, xb.dim())
    return d if batched else d.squeeze(0)


# ----------------------------------------------------------- primal rules (record extras) ----

_MAXPOOL_FN = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AMAXPOOL_FN = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_POOL_DIMS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
              nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}


class _PoolIndices:
    """Max pooling's indices and the number of pooled dimensions."""

    __slots__ = ("idx", "dims")

    def __init__(self, idx, dims):
        self.idx, self.dims = idx, dims

    def gather(self, t):
        flat_t = t.flatten(t.dim() - self.dims)
        flat_i = self.idx.flatten(self.idx.dim() - self.dims)
        return flat_t.gather(-1, flat_i).reshape(self.idx.shape)


def _p_maxpool(m, a, k):
    dims = next(d for cls, d in _POOL_DIMS.items() if isinstance(m, cls))
    x = a[0]
    if isinstance(m, nn.modules.pooling._AdaptiveMaxPoolNd):
        out, idx = _AMAXPOOL_FN[dims](x, m.output_size, return_indices=True)
    else:
        out, idx = _MAXPOOL_FN[dims](x, m.kernel_size, m.stride, m.padding, m.dilation,
                                     ceil_mode=m.ceil_mode, return_indices=True)
    return ((out, idx) if m.return_indices else out), _PoolIndices(idx, dims)


def _p_dropout(m, a, k):
    x = a[0]
    if not m.training or m.p == 0:
        return x, None
    fn = {nn.Dropout: F.dropout, nn.Dropout1d: F.dropout1d, nn.Dropout2d: F.dropout2d,
          nn.Dropout3d: F.dropout3d}[type(m)]
    # the same draws as fn(x): a mask of x's shape, scaled by 1/(1-p)
    mask = fn(torch.ones_like(x), m.p, True)
    return x * mask, mask


def _activation_run(slope: float, in_place: bool, module: bool):
    """The primal of a plain ReLU (``slope`` 0) / LeakyReLU node: where
    :func:`fastgan.activation_signs.wanted`, :func:`fastgan.activation_signs.activation` (the
    backward reads the output's sign, never a saved bool); else in place where
    :func:`_activation_primal` allows it."""
    def run(x):
        if activation_signs.wanted(x):
            return activation_signs.activation(x, slope), None
        if slope == 0:
            return F.relu(x, inplace=in_place), None
        return F.leaky_relu(x, slope, inplace=in_place), None
    primal = (lambda m, a, k: run(a[0])) if module else (lambda a, k: run(a[0]))
    primal.in_place = in_place
    return primal


_CONV_FUNCTION_RANKS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, F.conv_transpose1d: 1, F.conv_transpose2d: 2,
                        F.conv_transpose3d: 3}


def _conv_rank(st: _Step) -> int:
    """The spatial rank of a convolution step (a Conv / ConvTranspose module, subclasses
    included, or an ``F.conv*`` call); 0 for any other step."""
    if st.op == "call_module":
        return len(st.module.kernel_size) if isinstance(st.module, nn.modules.conv._ConvNd) else 0
    return _CONV_FUNCTION_RANKS.get(st.target, 0) if st.op == "call_function" else 0


# layers whose output is a fresh tensor (their own forward, not a subclass's override)
_STOCK_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _activation_slope(n, modules: dict) -> float | None:
    """The slope of a plain ReLU (0) / LeakyReLU node: a stock module without hooks or a
    ``F.relu`` / ``torch.relu`` / ``F.leaky_relu`` call, with a slope >= 0 and not in place
    itself. None for any other node."""
    if n.op == "call_module":
        m = modules[n.target]
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "inplace", False):
            return None
        if type(m) is nn.ReLU:
            return 0.0
        return float(m.negative_slope) if type(m) is nn.LeakyReLU and m.negative_slope >= 0 else None
    kw = dict(n.kwargs)
    if n.op != "call_function" or kw.pop("inplace", False) is not False:
        return None
    if n.target in (F.relu, torch.relu) and len(n.args) == 1 and not kw:
        return 0.0
    if n.target is F.leaky_relu and len(n.args) <= 2 and set(kw) <= {"negative_slope"}:
        slope = n.args[1] if len(n.args) > 1 else kw.get("negative_slope", 0.01)
        if isinstance(slope, (int, float)) and slope >= 0:
            return float(slope)
    return None


def _activation_primal(n, modules: dict):
    """The primal of a plain ReLU / LeakyReLU node (:func:`_activation_slope`; None for any other).

    In place when its input is a stock Linear / Conv output read by nothing else, which changes
    no value but what autograd saves: in place, the activation's backward reads the sign from
    the result, which the next layer keeps anyway; out of place it reads the input, and
    torch.compile's partitioner saves that sign as a bool tensor instead, whose stores are slow
    on AMD CPUs (benchmarks/NOTES.md, "Compiled"). Under torch.compile on the CPU with a graph,
    the partitioner finds the bool either way, so the primal runs through
    :mod:`fastgan.activation_signs` there (:func:`_activation_run`)."""
    slope = _activation_slope(n, modules)
    if slope is None:
        return None
    src = n.args[0] if n.args else None
    in_place = (isinstance(src, torch.fx.Node) and len(src.users) == 1
                and (src.op == "call_module" and getattr(type(modules.get(src.target)), "forward", None)
                     in _STOCK_FORWARDS
                     or src.op == "call_function" and src.target in (F.linear, F.conv1d, F.conv2d, F.conv3d)))
    return _activation_run(slope, in_place, n.op == "call_module")


MODULE_PRIMALS: dict[type, Callable] = {
    **{cls: _p_maxpool for cls in _POOL_DIMS},
    nn.Dropout: _p_dropout, nn.Dropout1d: _p_dropout, nn.Dropout2d: _p_dropout, nn.Dropout3d: _p_dropout,
}


def _t_gather_rule(m, a, k, t, out, extra):
    g = extra.gather(t)
    return (g, None) if m.return_indices else g


for _cls in _POOL_DIMS:
    MODULE_RULES[_cls] = _t_gather_rule


# ------------------------------------------------------------------- function rules ----
# A function rule: (primal args, primal kwargs, tangent args, tangent kwargs, output, extra)
# -> tangent of the output; tangent args mirror the primal args (None: zero or not a tensor).

def _first_only(fn):
    """The op is linear in its first argument and the others are constants."""
    def rule(a, k, ta, tk, out, extra):
        if _any_tangent(ta[1:]) or _any_tangent(tk):
            raise NotImplementedError("tangent in a non-first argument")
        return fn(ta[0], *a[1:], **k)
    return rule


def _same_op(target, method: bool):
    if method:
        return _first_only(lambda t, *rest, **kw: getattr(t, target)(*rest, **kw))
    return _first_only(target)


def _f_add(sign: float):
    def rule(a, k, ta, tk, out, extra):
        alpha = k.get("alpha", 1)
        tb = ta[1] if len(ta) > 1 else tk.get("other")
        if tb is not None and (alpha != 1 or sign != 1):
            tb = tb * (sign * alpha)
        t0 = ta[0]
        r = _add(t0, tb)
        if r is not None and isinstance(out, torch.Tensor) and r.shape != out.shape:
            r = r.expand(out.shape)
        return r
    return rule


def _f_rsub(a, k, ta, tk, out, extra):  # other - self
    t = _f_add(-1.0)(a, k, ta, tk, out, extra)
    return None if t is None else -t


def _bilinear(fn):
    """Product rule for an op bilinear in its first two arguments (mul, matmul, bmm, ...)."""
    def rule(a, k, ta, tk, out, extra):
        x, y = a[0], a[1]
        r = None
        if ta[0] is not None:
            r = fn(ta[0], y, *a[2:], **k)
        if ta[1] is not None:
            r = _add(r, fn(x, ta[1], *a[2:], **k))
        if r is not None and isinstance(out, torch.Tensor) and r.shape != out.shape:
            r = r.expand(out.shape)
        return r
    return rule


def _f_div(a, k, ta, tk, out, extra):
    x, y = a[0], a[1]
    r = None
    if ta[0] is not None:
        r = ta[0] / y
    if ta[1] is not None:
        r = _add(r, -out * ta[1] / y)
    if r is not None and isinstance(out, torch.Tensor) and r.shape != out.shape:
        r = r.expand(out.shape)
    return r


def _f_rdiv(a, k, ta, tk, out, extra):  # other / self  (method __rtruediv__)
    return None if ta[0] is None else -out * ta[0] / a[0]


def _f_pow(a, k, ta, tk, out, extra):
    x, p = a[0], a[1]
    if ta[1] is not None or not isinstance(x, torch.Tensor):
        raise NotImplementedError("pow with a tensor exponent of x")
    return ta[0] * (p * x.pow(p - 1))


def _f_linear(a, k, ta, tk, out, extra):
    x, w = a[0], (a[1] if len(a) > 1 else k["weight"])
    tw = ta[1] if len(ta) > 1 else tk.get("weight")
    tb = ta[2] if len(ta) > 2 else tk.get("bias")
    r = F.linear(ta[0], w) if ta[0] is not None else None
    if tw is not None:
        r = _add(r, F.linear(x, tw))
    return _add(r, tb)


def _f_conv(fn):
    def rule(a, k, ta, tk, out, extra):
        if _any_tangent(ta[1:]) or _any_tangent(tk):
            raise NotImplementedError("tangent in a conv weight or bias")
        args = list(a)
        kw = dict(k)
        if len(args) > 2:
            args[2] = None
        else:
            kw["bias"] = None
        args[0] = ta[0]
        return fn(*args, **kw)
    return rule


def _f_relu(a, k, ta, tk, out, extra):
    return _relu_tangent(ta[0], out)


def _f_leaky(a, k, ta, tk, out, extra):
    slope = a[1] if len(a) > 1 else k.get("negative_slope", 0.01)
    return _leaky_tangent(ta[0], a[0], out, slope)


def _f_clamp(a, k, ta, tk, out, extra):
    if _any_tangent(ta[1:]) or _any_tangent(tk):
        raise NotImplementedError("tensor clamp bounds of x")
    x = a[0]
    lo = a[1] if len(a) > 1 else k.get("min")
    hi = a[2] if len(a) > 2 else k.get("max")
    keep = torch.ones_like(x, dtype=torch.bool)
    if lo is not None:
        keep = keep & (x > lo)
    if hi is not None:
        keep = keep & (x < hi)
    return ta[0] * keep


def _f_hardtanh(a, k, ta, tk, out, extra):
    lo = a[1] if len(a) > 1 else k.get("min_val", -1.0)
    hi = a[2] if len(a) > 2 else k.get("max_val", 1.0)
    return ta[0] * ((a[0] > lo) & (a[0] < hi))


def _f_smooth(deriv, names: tuple[str, ...] = ()):
    def rule(a, k, ta, tk, out, extra):
        if _any_tangent(ta[1:]):
            raise NotImplementedError("tangent in a non-first argument")
        kw = {n: v for n, v in zip(names, a[1:])}
        kw.update({n: k[n] for n in names if n in k})
        return ta[0] * deriv(a[0], **kw)
    return rule


def _f_of_out(deriv):
    """Derivative from the output (tanh, sigmoid, exp, sqrt, rsqrt, reciprocal)."""
    def rule(a, k, ta, tk, out, extra):
        return ta[0] * deriv(a[0], out)
    return rule


def _f_cat(fn):
    def rule(a, k, ta, tk, out, extra):
        seq, tseq = a[0], ta[0]
        return fn([_or_zeros(t, p) for t, p in zip(tseq, seq)], *a[1:], **k)
    return rule


def _f_where(a, k, ta, tk, out, extra):
    cond, x, y = a[0], a[1], a[2]
    tx, ty = ta[1], ta[2]
    zx = tx if tx is not None else torch.zeros((), dtype=out.dtype, device=out.device)
    zy = ty if ty is not None else torch.zeros((), dtype=out.dtype, device=out.device)
    return torch.where(cond, zx, zy).expand(out.shape)


def _f_getitem(a, k, ta, tk, out, extra):
    if ta[0] is None:
        return None
    return operator.getitem(ta[0], a[1])


def _f_dropout_t(a, k, ta, tk, out, extra):
    return ta[0] if extra is None else ta[0] * extra


def _f_maxpool_t(a, k, ta, tk, out, extra):
    g = extra.gather(ta[0])
    return (g, None) if isinstance(out, tuple) else g


def _f_pad(a, k, ta, tk, out, extra):
    mode = a[2] if len(a) > 2 else k.get("mode", "constant")
    if mode == "constant":
        return F.pad(ta[0], a[1])
    return F.pad(ta[0], a[1], mode)


def _f_einsum(a, k, ta, tk, out, extra):
    eq, ops = a[0], list(a[1:])
    tops = list(ta[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops, tops = list(ops[0]), list(tops[0])
    r = None
    for i, t in enumerate(tops):
        if t is not None:
            r = _add(r, torch.einsum(eq, *(ops[:i] + [t] + ops[i + 1:])))
    return r


# primal rules for functions that record something
def _fp_dropout(fn):
    def primal(a, k):
        names = ("p", "training", "inplace")
        kw = dict(zip(names, a[1:]))
        kw.update(k)
        p, training = kw.get("p", 0.5), kw.get("training", True)
        x = a[0]
        if not training or p == 0:
            return x, None
        mask = fn(torch.ones_like(x), p, True)
        return x * mask, mask
    return primal


def _fp_maxpool(dims, adaptive):
    fn = (_AMAXPOOL_FN if adaptive else _MAXPOOL_FN)[dims]

    def primal(a, k):
        kw = dict(k)
        want = kw.pop("return_indices", False)
        if adaptive and len(a) > 2:
            want, a = a[2], a[:2]
        elif not adaptive and len(a) > 6:
            want, a = a[6], a[:6]
        out, idx = fn(*a, **kw, return_indices=True)
        return ((out, idx) if want else out), _PoolIndices(idx, dims)
    return primal


FUNCTION_PRIMALS: dict[Any, Callable] = {
    F.dropout: _fp_dropout(F.dropout), F.dropout1d: _fp_dropout(F.dropout1d),
    F.dropout2d: _fp_dropout(F.dropout2d), F.dropout3d: _fp_dropout(F.dropout3d),
    F.max_pool1d: _fp_maxpool(1, False), F.max_pool2d: _fp_maxpool(2, False), F.max_pool3d: _fp_maxpool(3, False),
    F.adaptive_max_pool1d: _fp_maxpool(1, True), F.adaptive_max_pool2d: _fp_maxpool(2, True),
    F.adaptive_max_pool3d: _fp_maxpool(3, True),
}

_LINEAR_FUNCTIONS = [
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.sum, torch.mean, torch.neg, operator.neg, operator.pos, torch.movedim, torch.narrow, torch.select,
    torch.flip, torch.roll, torch.chunk, torch.split, torch.unbind, torch.t, torch.repeat_interleave,
    torch.tile, torch.diagonal, torch.trace, torch.real, torch.clone, torch.nn.functional.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.interpolate, F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold, torch.cumsum,
]

FUNCTION_RULES: dict[Any, Callable] = {fn: _first_only(fn) for fn in _LINEAR_FUNCTIONS}
FUNCTION_RULES.update({
    operator.add: _f_add(1.0), torch.add: _f_add(1.0), operator.iadd: _f_add(1.0),
    operator.sub: _f_add(-1.0), torch.sub: _f_add(-1.0), operator.isub: _f_add(-1.0),
    operator.mul: _bilinear(operator.mul), torch.mul: _bilinear(torch.mul), operator.imul: _bilinear(operator.mul),
    operator.matmul: _bilinear(operator.matmul), torch.matmul: _bilinear(torch.matmul),
    torch.bmm: _bilinear(torch.bmm), torch.mm: _bilinear(torch.mm),
    operator.truediv: _f_div, torch.div: _f_div, torch.true_divide: _f_div, operator.itruediv: _f_div,
    operator.pow: _f_pow, torch.pow: _f_pow,
    operator.getitem: _f_getitem,
    torch.cat: _f_cat(torch.cat), torch.concat: _f_cat(torch.cat), torch.concatenate: _f_cat(torch.cat),
    torch.stack: _f_cat(torch.stack),
    torch.where: _f_where,
    F.linear: _f_linear,
    F.conv1d: _f_conv(F.conv1d), F.conv2d: _f_conv(F.conv2d), F.conv3d: _f_conv(F.conv3d),
    F.conv_transpose1d: _f_conv(F.conv_transpose1d), F.conv_transpose2d: _f_conv(F.conv_transpose2d),
    F.conv_transpose3d: _f_conv(F.conv_transpose3d),
    F.relu: _f_relu, torch.relu: _f_relu, F.leaky_relu: _f_leaky,
    F.hardtanh: _f_hardtanh, F.relu6: lambda a, k, ta, tk, out, e: ta[0] * ((a[0] > 0) & (a[0] < 6)),
    torch.clamp: _f_clamp, torch.clip: _f_clamp,
    F.silu: _f_smooth(_d_silu), F.gelu: _f_smooth(_d_gelu, ("approximate",)),
    F.softplus: _f_smooth(_d_softplus, ("beta", "threshold")), F.elu: _f_smooth(_d_elu, ("alpha",)),
    F.mish: _f_smooth(_d_mish),
    torch.tanh: _f_of_out(lambda x, y: 1 - y * y), F.tanh: _f_of_out(lambda x, y: 1 - y * y),
    torch.sigmoid: _f_of_out(lambda x, y: y * (1 - y)), F.sigmoid: _f_of_out(lambda x, y: y * (1 - y)),
    torch.exp: _f_of_out(lambda x, y: y), torch.sqrt: _f_of_out(lambda x, y: 0.5 / y),
    torch.rsqrt: _f_of_out(lambda x, y: -0.5 * y * y * y), torch.reciprocal: _f_of_out(lambda x, y: -y * y),
    torch.log: _f_of_out(lambda x, y: 1 / x), torch.square: _f_smooth(lambda x: 2 * x),
    torch.abs: _f_smooth(torch.sign), operator.abs: _f_smooth(torch.sign),
    torch.einsum: _f_einsum,
    F.dropout: _f_dropout_t, F.dropout1d: _f_dropout_t, F.dropout2d: _f_dropout_t, F.dropout3d: _f_dropout_t,
    F.max_pool1d: _f_maxpool_t, F.max_pool2d: _f_maxpool_t, F.max_pool3d: _f_maxpool_t,
    F.adaptive_max_pool1d: _f_maxpool_t, F.adaptive_max_pool2d: _f_maxpool_t, F.adaptive_max_pool3d: _f_maxpool_t,
    F.pad: _f_pad,
})

_LINEAR_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous",
    "expand", "expand_as", "repeat", "view_as", "reshape_as", "sum", "mean", "t", "flip", "roll", "narrow",
    "select", "movedim", "chunk", "split", "unbind", "clone", "to", "float", "double", "half", "type_as",
    "neg", "__neg__", "repeat_interleave", "tile", "diagonal", "unfold", "cumsum", "swapaxes", "mT",
}

METHOD_RULES: dict[str, Callable] = {name: _same_op(name, True) for name in _LINEAR_METHODS}


def _shape_like(name):
    """``x.view_as(other)`` and the like: ``other`` gives only a shape or dtype."""
    return lambda a, k, ta, tk, out, extra: getattr(ta[0], name)(*a[1:], **k) if ta[0] is not None else None


METHOD_RULES.update({name: _shape_like(name) for name in ("expand_as", "view_as", "reshape_as", "type_as")})
METHOD_RULES.update({
    "add": _f_add(1.0), "__add__": _f_add(1.0), "__radd__": _f_add(1.0), "add_": _f_add(1.0),
    "sub": _f_add(-1.0), "__sub__": _f_add(-1.0), "__rsub__": _f_rsub,
    "mul": _bilinear(operator.mul), "__mul__": _bilinear(operator.mul), "__rmul__": _bilinear(operator.mul),
    "div": _f_div, "__truediv__": _f_div, "__rtruediv__": _f_rdiv,
    "matmul": _bilinear(operator.matmul), "__matmul__": _bilinear(operator.matmul), "bmm": _bilinear(torch.bmm),
    "pow": _f_pow, "__pow__": _f_pow,
    "relu": _f_relu, "clamp": _f_clamp, "clip": _f_clamp,
    "tanh": _f_of_out(lambda x, y: 1 - y * y), "sigmoid": _f_of_out(lambda x, y: y * (1 - y)),
    "exp": _f_of_out(lambda x, y: y), "sqrt": _f_of_out(lambda x, y: 0.5 / y),
    "rsqrt": _f_of_out(lambda x, y: -0.5 * y * y * y), "reciprocal": _f_of_out(lambda x, y: -y * y),
    "log": _f_of_out(lambda x, y: 1 / x), "square": _f_smooth(lambda x: 2 * x), "abs": _f_smooth(torch.sign),
    "__getitem__": _f_getitem,
})

_NO_TANGENT_METHODS = {"size", "dim", "numel", "detach", "type", "long", "int", "bool", "argmax", "argmin",
                       "__len__", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "ge", "gt",
                       "le", "lt", "eq", "ne", "sign", "zero_"}


# ------------------------------------------------------------------------------ tracing ----

class _Tracer(fx.Tracer):
    """Leaves: modules with a rule, ``torch.nn`` modules (fx's default) and any module that cannot
    be traced on its own (recorded in ``untraceable`` with the reason)."""

    def __init__(self, untraceable: dict[str, str]):
        super().__init__()
        self.untraceable = untraceable
        self._probe: dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if _module_rule(m) is not None or type(m) in MODULE_PRIMALS:
            return True
        if super().is_leaf_module(m, qualname):
            return True
        key = id(m)
        if key not in self._probe:
            try:
                _Tracer(self.untraceable).trace(m)
                self._probe[key] = False
            except Exception as err:  # noqa: BLE001 -- any tracing failure makes it a leaf
                self._probe[key] = True
                self.untraceable[qualname or type(m).__name__] = f"{type(err).__name__}: {err}"
        return self._probe[key]


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)} (node {node.name})"
    return f"method .{node.target}() (node {node.name})"


def _keyword_defaults(module: nn.Module) -> dict | None:
    """forward's keyword-only parameters with their defaults, as fx concrete arguments: the step
    never passes them (e.g. ``MLPDiscriminator.forward``'s ``fused=None``), and traced as proxies
    they would take the branch a caller's value takes."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    found = {p.name: p.default for p in params
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
    return found or None


def _fetch_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class Record:
    """What one primal pass leaves for its tangent pass: every step's value and the rules' extras
    (lists indexed by step)."""

    __slots__ = ("values", "extras")

    def __init__(self, values: list, extras: list):
        self.values, self.extras = values, extras

    def split(self):
        """(tensors, skeleton): the record's tensors as a flat list and the rest with slots, so
        that the tensors can leave a ``torch.func`` transform as its auxiliary output."""
        tensors: list = []
        return tensors, (_strip(self.values, tensors), _strip(self.extras, tensors))

    @staticmethod
    def join(tensors: list, skeleton) -> "Record":
        values, extras = skeleton
        return Record(_unstrip(values, tensors), _unstrip(extras, tensors))


class _Slot:
    __slots__ = ("k",)

    def __init__(self, k: int):
        self.k = k


def _strip(x, tensors: list):
    if isinstance(x, torch.Tensor):
        tensors.append(x)
        return _Slot(len(tensors) - 1)
    if isinstance(x, tuple) and not isinstance(x, torch.Size):
        return tuple(_strip(a, tensors) for a in x)
    if isinstance(x, list):
        return [_strip(a, tensors) for a in x]
    if isinstance(x, _PoolIndices):
        return _PoolIndices(_strip(x.idx, tensors), x.dims)
    return x


def _unstrip(x, tensors: list):
    if isinstance(x, _Slot):
        return tensors[x.k]
    if isinstance(x, tuple) and not isinstance(x, torch.Size):
        return tuple(_unstrip(a, tensors) for a in x)
    if isinstance(x, list):
        return [_unstrip(a, tensors) for a in x]
    if isinstance(x, _PoolIndices):
        return _PoolIndices(_unstrip(x.idx, tensors), x.dims)
    return x


class _Step:
    """One node of D's graph, free of fx objects (so torch.compile can trace the passes)."""

    __slots__ = ("op", "target", "args", "kwargs", "module", "rule", "primal", "where")

    def __init__(self, op, target, args, kwargs, module, rule, primal, where):
        self.op, self.target, self.args, self.kwargs = op, target, args, kwargs
        self.module, self.rule, self.primal, self.where = module, rule, primal, where


class Linearized:
    """D's traced graph with its primal and tangent passes (see the module docstring).

    ``Linearized(D)`` traces D once; :meth:`primal` and :meth:`tangent` run per pass. ``fallbacks``
    lists the nodes that use forward-mode AD (no rule); ``untraceable`` the submodules fx could not
    trace (leaves, with the reason).
    """

    def __init__(self, module: nn.Module):
        # weakly: the generic step caches plans in a WeakKeyDictionary keyed by the module
        self._module = weakref.ref(module)
        self.untraceable: dict[str, str] = {}
        self.root_leaf = False
        try:
            graph = _Tracer(self.untraceable).trace(module, concrete_args=_keyword_defaults(module))
        except Exception as err:  # noqa: BLE001
            self.root_leaf = True
            graph = None
            self.untraceable[type(module).__name__] = f"{type(err).__name__}: {err}"
        modules = dict(module.named_modules())
        nodes = list(graph.nodes) if graph is not None else []
        index = {n: i for i, n in enumerate(nodes)}
        self.placeholders: list[tuple[int, str, tuple]] = []
        self.steps: list[_Step] = []
        self.output = None
        self.fallbacks: list[str] = []
        for i, n in enumerate(nodes):
            where = _describe(n, modules) if n.op.startswith("call_") else n.name
            mod = rule = primal = None
            if n.op == "placeholder":
                self.placeholders.append((i, str(n.target).lstrip("*"), tuple(n.args)))
            elif n.op == "output":
                self.output = _template(n.args[0], index)
            elif n.op == "call_module":
                mod = modules[n.target]
                rule, primal = _module_rule(mod), MODULE_PRIMALS.get(type(mod)) or _activation_primal(n, modules)
                if rule is None:
                    self.fallbacks.append(where)
            elif n.op == "call_function":
                rule, primal = FUNCTION_RULES.get(n.target), FUNCTION_PRIMALS.get(n.target)
                if primal is None and rule is not None:
                    primal = _activation_primal(n, modules)
                if rule is None and n.target is not builtins.getattr:
                    self.fallbacks.append(where)
            elif n.op == "call_method":
                rule = METHOD_RULES.get(n.target)
                if rule is None and n.target not in _NO_TANGENT_METHODS:
                    self.fallbacks.append(where)
            self.steps.append(_Step(n.op, n.target, _template(n.args, index), _template(dict(n.kwargs), index),
                                    mod, rule, primal, where))
        self.n = len(nodes)
        self.conv_ranks = frozenset(r for r in map(_conv_rank, self.steps) if r)
        """The spatial ranks of D's convolutions (2 for ``Conv2d`` / ``F.conv2d``, ...)."""
        for name, why in self.untraceable.items():
            warnings.warn(f"fastgan: {name} cannot be traced by torch.fx ({why}); its tangent uses "
                          "forward-mode AD (slower, and dropout inside it draws fresh masks)", stacklevel=3)

    @property
    def module(self) -> nn.Module:
        return self._module()

    # ------------------------------------------------------------------------- primal ----
    def _bind(self, args: tuple, kwargs: dict) -> list:
        values = []
        names = [name for _, name, _ in self.placeholders]
        for i, (_, name, default) in enumerate(self.placeholders):
            if i < len(args):
                values.append(args[i])
            elif name in kwargs:
                values.append(kwargs[name])
            elif default:
                values.append(default[0])
            else:
                raise TypeError(f"{type(self.module).__name__}.forward takes argument {name!r}: "
                                "pass it in condition=")
        extra = [k for k in kwargs if k not in names]
        if extra or len(args) > len(self.placeholders):
            raise TypeError(f"{type(self.module).__name__}.forward does not take the extra arguments "
                            f"{extra or len(args) - len(self.placeholders)} given in condition=")
        return values

    def _call_module(self, m: nn.Module, primal, a, k, state: StepState, detached: bool = False):
        hooked = bool(m._forward_pre_hooks)
        if hooked and id(m) not in state.hooked:
            state.hooked.add(id(m))
            for hook in list(m._forward_pre_hooks.values()):
                res = hook(m, a)
                if res is not None:
                    a = res if isinstance(res, tuple) else (res,)
        if detached:  # a plain Linear / Conv without a graph to its weights (fastgan.piecewise)
            b = None if m.bias is None else m.bias.detach()
            w = m.weight.detach()
            return (F.linear(a[0], w, b) if isinstance(m, nn.Linear) else m._conv_forward(a[0], w, b)), None
        if primal is not None:
            return primal(m, a, k)
        return (m.forward(*a, **k) if hooked else m(*a, **k)), None

    def primal(self, args: tuple, kwargs: dict, state: StepState, piecewise=None, rows: int | None = None):
        """D(*args, **kwargs) step by step; returns (output, Record). With ``piecewise`` (a
        :class:`fastgan.piecewise.Piecewise` of this graph) its layers run on detached weights,
        and with ``rows`` too every node on the input's path is checked not to mix rows."""
        if self.root_leaf:
            return self.module(*args, **kwargs), Record([(args, kwargs)], [])
        env: list = [None] * self.n
        extras: list = [None] * self.n
        for (i, _, _), value in zip(self.placeholders, self._bind(args, kwargs)):
            env[i] = value
        layers = piecewise.layers if piecewise is not None else ()
        for i, st in enumerate(self.steps):
            op = st.op
            if op == "placeholder" or op == "output":
                continue
            if op == "get_attr":
                env[i] = _fetch_attr(self.module, st.target)
                continue
            a = _fill(st.args, env)
            k = _fill(st.kwargs, env)
            if op == "call_module":
                env[i], extras[i] = self._call_module(st.module, st.primal, a, k, state, i in layers)
            elif op == "call_function":
                if st.primal is not None:
                    env[i], extras[i] = st.primal(a, k)
                else:
                    env[i] = st.target(*a, **k)
            else:  # call_method
                env[i] = getattr(a[0], st.target)(*a[1:], **k)
            if rows is not None:
                piecewise.check(i, a, k, env[i], rows, env)
        return _fill(self.output, env), Record(env, extras)

    # ------------------------------------------------------------------------ tangent ----
    def tangent(self, rec: Record, v: torch.Tensor):
        """The linearised D at the recorded point applied to ``v`` (a tangent of the first input;
        the other inputs are data). Differentiable with respect to D's parameters."""
        if self.root_leaf:
            args, kwargs = rec.values[0]
            return self._forward_ad(lambda *a: self.module(*a, **kwargs), args,
                                    (v,) + (None,) * (len(args) - 1), type(self.module).__name__)
        env = rec.values
        tan: list = [None] * self.n
        tan[self.placeholders[0][0]] = v
        for i, st in enumerate(self.steps):
            op = st.op
            if op == "placeholder" or op == "get_attr" or op == "output":
                continue
            ta = _fill_tangent(st.args, tan)
            tk = _fill_tangent(st.kwargs, tan)
            if not (_any_tangent(ta) or _any_tangent(tk)):
                continue
            out = env[i]
            if not _has_tensor(out):
                continue
            a = _fill(st.args, env)
            k = _fill(st.kwargs, env)
            try:
                tan[i] = self._tangent_step(st, a, k, ta, tk, out, rec.extras[i])
            except LinearizationError:
                raise
            except Exception as err:  # noqa: BLE001 -- reported with the node's name
                raise LinearizationError(st.where, err) from err
        return _fill_tangent(self.output, tan)

    def _tangent_step(self, st: _Step, a, k, ta, tk, out, extra):
        op, rule = st.op, st.rule
        if op == "call_module":
            m = st.module
            if rule is not None and not _any_tangent(ta[1:]) and not _any_tangent(tk):
                return rule(m, a, k, ta[0], out, extra)
            fn = m.forward if m._forward_pre_hooks else m
            return self._forward_ad(lambda *x: fn(*x, **k), a, ta, st.where)
        if op == "call_function":
            target = st.target
            if target is builtins.getattr:
                if a[1] in ("T", "mT", "mH", "H", "real"):
                    return getattr(ta[0], a[1])
                return None
            if rule is not None:
                return rule(a, k, ta, tk, out, extra)
            return self._forward_ad(lambda *x: target(*x, **k), a, ta, st.where, kwargs_tangent=tk)
        name = st.target
        if name in _NO_TANGENT_METHODS:
            return None
        if rule is not None:
            return rule(a, k, ta, tk, out, extra)
        return self._forward_ad(lambda s, *x: getattr(s, name)(*x, **k), a, ta, st.where, kwargs_tangent=tk)

    @staticmethod
    def _forward_ad(fn, a, ta, where: str, kwargs_tangent=None):
        if kwargs_tangent is not None and _any_tangent(kwargs_tangent):
            raise LinearizationError(where, NotImplementedError("tangent in a keyword argument"))
        try:
            with fwAD.dual_level():
                duals = [fwAD.make_dual(p, t) if (t is not None and isinstance(p, torch.Tensor)) else p
                         for p, t in zip(a, ta)]
                out = fn(*duals)
                return _map_tensors(out, lambda o: fwAD.unpack_dual(o).tangent)
        except Exception as err:  # noqa: BLE001
            raise LinearizationError(where, err) from err


def linearize(module: nn.Module) -> Linearized:
    """Trace ``module`` for the generic step (see :class:`Linearized`)."""
    return Linearized(module)
