"""The generic step's fast path for piecewise-linear discriminators: the tangent pass reuses
the backward signals of the input-gradient pass, and the loss's backward on a penalised side is
folded into the same weight-gradient products.

For a discriminator whose parameters enter only as the weights and biases of ``Linear`` /
``Conv1d/2d/3d`` layers and whose other operations are piecewise linear (ReLU, LeakyReLU,
Hardtanh, clamp, pooling, dropout with its mask, adds, products with constants, reshapes, sums
over non-batch dimensions, padding, ...), the tangent pass ``t = J_x D . v`` is D run on ``v``
with the primal's masks and no biases, and it depends on the parameters only through those
weights (a mask's derivative is zero almost everywhere). With ``delta_l = d sum(D) / d z_l`` at a
layer's output ``z_l = W_l a_{l-1} + b_l`` (the backward signal of the input-gradient pass), the
derivative of ``sum(t)`` with respect to the tangent at that layer is ``delta_l`` too (the same
linear map), so

    d sum(t) / d W_l = sum over rows of delta_l (x) t_{l-1}

is one weight-gradient product per layer: no backward through the tangent pass. When D treats
rows independently (each row of every tensor reaches one output row only), the loss's backward
on that side has the signals ``c_r delta_l`` (``c = d loss / d D(x)``), so its weight gradient
joins the same product, ``delta_l (x) (c a_{l-1} + t_{l-1})``, and its bias gradient is
``sum c_r delta_l``: the penalised side needs no autograd graph at all.

Per penalised side the step is then: the primal pass with the weights detached (no graph), the
input-gradient pass by this module's own backward rules (``g`` and ``delta_l``), the tangent
pass, and one weight-gradient product per layer. The gradients ``G`` are handed to autograd by
the surrogate ``sum_l <W_l, G_l> + <b_l, G_b>`` (its gradient with respect to the weights is
``G``; parametrizations and DDP's all-reduce see it as an ordinary term). In passes of a
forward ``F`` (a layer's input gradient and weight gradient each cost about ``F``), NS + R1 is
``2F`` forward + ``F`` input gradient + ``F`` tangent + ``F`` weight gradients on the real
side + ``2F`` backward on the fake side = ``7F``, against ``6F`` for the loss alone and
``10F`` for the linearised step with an autograd tangent pass.

Eligibility is decided when D is traced (:class:`Piecewise`): every node on the input's path
needs a rule listed here, and a parameter outside ``Linear`` / ``Conv`` (a norm, an embedding, a
learned scale) makes the step take the general path. Row independence is checked on the
primal's shapes: an operation that mixes rows (a reduction or a broadcast over the batch
dimension, a concatenation along it, ...) raises :class:`RowsMixed` and the step falls back,
once, to the general path (:mod:`fastgan.generic_step`).
"""
from __future__ import annotations

import builtins
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastgan import linearize as L

__all__ = ["Piecewise", "RowsMixed"]


class RowsMixed(RuntimeError):
    """A node of D mixes rows (found on the primal's shapes): the fast path does not apply."""


# node kinds: how the backward signal crosses a node (and what the row check looks at)
_LAYER, _SAME, _DIAG, _RESHAPE, _REDUCE, _ADD, _SCALE, _CAT, _INDEX, _WHERE, _PERMUTE, _PAD = range(12)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYER_FORWARD = {nn.Linear: nn.Linear.forward, nn.Conv1d: nn.Conv1d.forward, nn.Conv2d: nn.Conv2d.forward,
                  nn.Conv3d: nn.Conv3d.forward}

# parameter-free modules on x's path: (kind)
_MODULE_KINDS: dict[type, int] = {
    nn.ReLU: _DIAG, nn.LeakyReLU: _DIAG, nn.ReLU6: _DIAG, nn.Hardtanh: _DIAG,
    nn.Dropout: _DIAG, nn.Dropout1d: _DIAG, nn.Dropout2d: _DIAG, nn.Dropout3d: _DIAG,
    nn.Flatten: _RESHAPE, nn.Unflatten: _RESHAPE, nn.Identity: _RESHAPE,
    **{cls: _SAME for cls in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                              nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                              nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.PixelShuffle,
                              nn.PixelUnshuffle, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
                              nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ZeroPad1d,
                              nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)},
}

_FUNCTION_KINDS: dict[Any, int] = {
    **dict.fromkeys((F.relu, torch.relu, F.leaky_relu, F.hardtanh, F.relu6, torch.clamp, torch.clip, F.dropout,
                     F.dropout1d, F.dropout2d, F.dropout3d), _DIAG),
    **dict.fromkeys((torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.clone), _RESHAPE),
    **dict.fromkeys((torch.sum, torch.mean), _REDUCE),
    **dict.fromkeys((F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                     F.adaptive_avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                     F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.pixel_shuffle,
                     F.pixel_unshuffle), _SAME),
    **dict.fromkeys((operator.add, torch.add, operator.iadd, operator.sub, torch.sub, operator.isub), _ADD),
    **dict.fromkeys((operator.mul, torch.mul, operator.imul, operator.truediv, torch.div, torch.true_divide,
                     operator.itruediv, operator.neg, torch.neg, operator.pos), _SCALE),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate, torch.stack), _CAT),
    operator.getitem: _INDEX, torch.where: _WHERE, torch.permute: _PERMUTE, torch.transpose: _PERMUTE,
    F.pad: _PAD,
}

_METHOD_KINDS: dict[str, int] = {
    **dict.fromkeys(("relu", "clamp", "clip"), _DIAG),
    **dict.fromkeys(("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "contiguous", "view_as",
                     "reshape_as", "clone", "to", "float", "double", "half", "type_as"), _RESHAPE),
    **dict.fromkeys(("sum", "mean"), _REDUCE),
    **dict.fromkeys(("add", "__add__", "__radd__", "add_", "sub", "__sub__", "__rsub__"), _ADD),
    **dict.fromkeys(("mul", "__mul__", "__rmul__", "div", "__truediv__", "neg", "__neg__"), _SCALE),
    "__getitem__": _INDEX, "permute": _PERMUTE, "transpose": _PERMUTE,
}

_PLAIN_SUB = {operator.sub, torch.sub, operator.isub, "sub", "__sub__"}
_PLAIN_ADD = {operator.add, torch.add, operator.iadd, "add", "__add__", "__radd__", "add_"} | _PLAIN_SUB

_AVG_POOL_BACKWARD = {nn.AvgPool2d: torch.ops.aten.avg_pool2d_backward, nn.AvgPool3d: torch.ops.aten.avg_pool3d_backward}

_CONSTANT_FUNCTIONS = {torch.ones_like, torch.zeros_like, torch.full_like, torch.empty_like}

# products and quotients: which argument positions may carry x (the others are constants)
_X_ONLY_FIRST = {operator.truediv, torch.div, torch.true_divide, operator.itruediv, "div", "__truediv__"}


def _refs(t, out: list) -> list:
    """The step indices a template refers to, in order."""
    if isinstance(t, L._Ref):
        out.append(t.i)
    elif isinstance(t, (tuple, list)):
        for a in t:
            _refs(a, out)
    elif isinstance(t, dict):
        for a in t.values():
            _refs(a, out)
    elif isinstance(t, L._SliceT):
        _refs((t.start, t.stop, t.step), out)
    return out


class _Sparse:
    """A list-like view of a dict (missing keys read as None): the tangents of a few nodes."""

    __slots__ = ("d",)

    def __init__(self, d: dict):
        self.d = d

    def __getitem__(self, i):
        return self.d.get(i)


def _reshape_back(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    g = g.reshape(x.shape)
    return g if g.dtype == x.dtype else g.to(x.dtype)


def _to_size(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return g if g.shape == x.shape else g.sum_to_size(x.shape)


def _dims(d, ndim: int) -> tuple[int, ...] | None:
    if d is None:
        return None
    d = (d,) if isinstance(d, int) else tuple(d)
    return tuple(sorted(i % ndim for i in d))


def _reduce_args(a, k):
    dims = a[1] if len(a) > 1 else k.get("dim")
    keep = a[2] if len(a) > 2 else k.get("keepdim", False)
    return dims, keep


def _rows_of(t, rows: int, where: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] % rows:
        raise RowsMixed(f"{where}: a value on the input's path is not a tensor with a multiple of {rows} rows")


class Piecewise:
    """The fast path's plan for one :class:`~fastgan.linearize.Linearized` (built at trace time).

    ``reason`` is None when D qualifies, else why not. ``layers`` maps the step index of each
    Linear / Conv call on x's path to its module.
    """

    def __init__(self, lin: L.Linearized):
        self.lin = lin
        self.reason: str | None = None
        self.layers: dict[int, nn.Module] = {}
        self.kinds: dict[int, int] = {}
        self.xin: dict[int, list[int]] = {}      # step -> its inputs on x's path
        self.random = False                      # dropout nodes (the primal draws)
        self.verified: set = set()               # input shapes whose rows were checked
        try:
            self._classify()
        except _Reject as r:
            self.reason = str(r)
            return
        # the last step that reads each value (free tangents after it)
        self.last_use: dict[int, int] = {}
        for i, ins in self.xin.items():
            for j in ins:
                self.last_use[j] = max(self.last_use.get(j, -1), i)

    @property
    def ok(self) -> bool:
        return self.reason is None

    # ------------------------------------------------------------------ trace time ----
    def _classify(self) -> None:
        lin = self.lin
        if lin.root_leaf or lin.untraceable:
            raise _Reject("torch.fx could not trace D or one of its modules")
        module = lin.module
        xdep = [False] * lin.n
        xdep[lin.placeholders[0][0]] = True
        for i, st in enumerate(lin.steps):
            op = st.op
            if op in ("placeholder", "output"):
                continue
            if op == "get_attr":
                if isinstance(L._fetch_attr(module, st.target), nn.Parameter):
                    raise _Reject(f"parameter {st.target!r} is used outside a Linear / Conv layer")
                continue
            ins = [j for j in _refs((st.args, st.kwargs), []) if xdep[j]]
            if op == "call_module":
                m = st.module
                has_params = any(True for _ in m.parameters())
                if has_params:
                    self._layer(i, st, ins)
                    xdep[i] = True
                    continue
                if not ins:
                    continue
                kind = next((_MODULE_KINDS[c] for c in type(m).__mro__ if c in _MODULE_KINDS), None)
                if kind is None or st.rule is None:
                    raise _Reject(f"{st.where} is not piecewise linear")
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
                    self.random = True
            else:
                if not ins:
                    continue
                key = st.target
                if (op == "call_method" and key in L._NO_TANGENT_METHODS) or key in _CONSTANT_FUNCTIONS:
                    continue  # masks, sizes, new tensors: constants of the tangent
                if op == "call_function" and key is builtins.getattr:
                    if st.args[1] in ("shape", "dtype", "device", "ndim"):
                        continue
                    raise _Reject(f"{st.where} is not piecewise linear")
                kinds = _FUNCTION_KINDS if op == "call_function" else _METHOD_KINDS
                kind = kinds.get(key)
                if kind is None or st.rule is None:
                    raise _Reject(f"{st.where} is not piecewise linear")
                if kind == _SCALE:
                    tensor_args = _refs(st.args, [])
                    if len(ins) > 1 or (key in _X_ONLY_FIRST and tensor_args and tensor_args[0] not in ins):
                        raise _Reject(f"{st.where} multiplies or divides by a value of x (not piecewise linear)")
                if kind == _WHERE and set(_refs(st.args[:1], [])) & set(ins):
                    raise _Reject(f"{st.where}: condition on the input's path")
                if key in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
                    self.random = True
            self.kinds[i] = kind
            self.xin[i] = ins
            xdep[i] = True
        out = lin.output
        if not (isinstance(out, L._Ref) and xdep[out.i]):
            raise _Reject("D's output is not one tensor on the input's path")
        self.out = out.i
        self.x = lin.placeholders[0][0]

    def _layer(self, i, st, ins) -> None:
        m = st.module
        base = next((c for c in type(m).__mro__ if c in _LAYER_FORWARD), None)
        if base is None or type(m).forward is not _LAYER_FORWARD[base]:
            raise _Reject(f"{st.where} has parameters and is not a plain Linear / Conv layer")
        if isinstance(m, _CONV) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise _Reject(f"{st.where}: padding mode {m.padding_mode!r} / padding {m.padding!r}")
        if len(st.args) != 1 or st.kwargs or ins != _refs(st.args, []):
            raise _Reject(f"{st.where} does not take the input's path as its only argument")
        self.layers[i] = m
        self.kinds[i] = _LAYER
        self.xin[i] = ins

    # -------------------------------------------------------------------- row check ----
    def check(self, i: int, a, k, out, rows: int, env: list) -> None:
        """Raise :class:`RowsMixed` if step ``i`` (on x's path) may mix rows."""
        kind = self.kinds.get(i)
        if kind is None:
            return
        st = self.lin.steps[i]
        where = st.where
        _rows_of(out, rows, where)
        x = a[0] if a and isinstance(a[0], torch.Tensor) else None
        if kind == _LAYER:
            want = len(st.module.kernel_size) + 2 if isinstance(st.module, _CONV) else None
            if x.dim() < 2 or (want is not None and x.dim() != want):
                raise RowsMixed(f"{where}: an unbatched input")
            return
        if kind == _RESHAPE:
            return  # row-major: row r's block of elements stays row r's block
        if kind in (_DIAG, _SAME, _PAD, _REDUCE, _PERMUTE) and x.shape[0] != out.shape[0]:
            raise RowsMixed(f"{where} changes the batch dimension")
        if kind == _REDUCE:
            dims = _dims(_reduce_args(a, k)[0], x.dim())
            if dims is None or 0 in dims:
                raise RowsMixed(f"{where} reduces over the batch dimension")
        elif kind == _PERMUTE:
            if st.target in ("permute", torch.permute):
                order = k["dims"] if "dims" in k else (a[1] if isinstance(a[1], (tuple, list)) else a[1:])
                moved = order[0] % x.dim() != 0
            else:
                pair = tuple(a[1:3]) + tuple(k[n] for n in ("dim0", "dim1") if n in k)
                moved = 0 in _dims(pair, x.dim())
            if moved:
                raise RowsMixed(f"{where} moves the batch dimension")
        elif kind == _PAD:
            pad = a[1] if len(a) > 1 else k["pad"]
            if len(pad) > 2 * (x.dim() - 1):
                raise RowsMixed(f"{where} pads the batch dimension")
        elif kind in (_ADD, _SCALE, _WHERE):
            for j in self.xin[i]:
                v = env[j]
                if v.dim() != out.dim() or v.shape[0] != out.shape[0]:
                    raise RowsMixed(f"{where} broadcasts over the batch dimension")
        elif kind == _CAT:
            seq = a[0]
            dim = a[1] if len(a) > 1 else k.get("dim", 0)
            ndim = out.dim() if st.target is torch.stack else seq[0].dim()
            if dim % ndim == 0:
                raise RowsMixed(f"{where} joins along the batch dimension")
        elif kind == _INDEX:
            idx = a[1]
            idx = idx if isinstance(idx, tuple) else (idx,)
            first = idx[0] if idx else None
            full = isinstance(first, slice) and first == slice(None)
            tail = sum(1 for e in idx[1:] if e is not None)
            if not isinstance(x, torch.Tensor):
                return
            if not (full or (first is Ellipsis and tail < x.dim())) or x.shape[0] != out.shape[0] or \
                    any(isinstance(e, torch.Tensor) for e in idx):
                raise RowsMixed(f"{where} indexes the batch dimension")

    # ------------------------------------------------------------------- backward ----
    def backward(self, rec: L.Record, seed: torch.Tensor, acc: dict | None = None):
        """``d sum(seed * D(x)) / d`` (x, every layer's output): (g, {layer step: delta}).

        With ``acc`` (an unpenalised side's loss backward: ``seed = c = d loss / d D(x)``), each
        layer's weight and bias gradients are taken in the product that passes its signal on,
        as autograd's backward does, and added into ``acc``; nothing flows into x (g is None)
        and no deltas are kept."""
        lin, env = self.lin, rec.values
        grads: dict[int, torch.Tensor] = {self.out: seed.reshape(env[self.out].shape)}
        deltas: dict[int, torch.Tensor] = {}
        for i in range(lin.n - 1, -1, -1):
            st = lin.steps[i]
            if i not in grads or st.op == "placeholder":
                continue
            go = grads.pop(i)
            a = L._fill(st.args, env)
            kind = self.kinds[i]
            if kind == _LAYER and acc is not None:
                gi = self._layer_backward(self.layers[i], a[0], go, self.xin[i] != [self.x], acc)
                pairs = [] if gi is None else [(self.xin[i][0], gi)]
            else:
                if kind == _LAYER:
                    deltas[i] = go
                pairs = self._vjp(i, st, kind, a, L._fill(st.kwargs, env), go, env[i], rec.extras[i], env)
            for j, gj in pairs:
                if gj is not None:
                    prev = grads.get(j)
                    grads[j] = gj if prev is None else prev + gj
        return grads.get(self.x) if acc is None else None, deltas

    @staticmethod
    def _layer_backward(m, x, go, need_input: bool, acc: dict):
        """A layer's input gradient (None unless ``need_input``), with its weight and bias
        gradients ``go (x) x`` and ``sum go`` added into ``acc``."""
        w, has_bias = m.weight.detach(), m.bias is not None
        if isinstance(m, nn.Linear):
            go2 = go.reshape(-1, go.shape[-1])
            gw = go2.t().mm(x.reshape(-1, x.shape[-1]))
            gb = go2.sum(0) if has_bias else None
            gi = go.matmul(w) if need_input else None
        else:
            d = len(m.kernel_size)
            gi, gw, gb = torch.ops.aten.convolution_backward(
                go, x, w, [w.shape[0]] if has_bias else None, m.stride, m.padding, m.dilation, False, [0] * d,
                m.groups, [need_input, True, has_bias])
        _add_grads(acc, m, gw, gb)
        return gi

    def _vjp(self, i, st, kind, a, k, go, out, extra, env):
        ins = self.xin[i]
        x = a[0] if a else None
        if kind == _LAYER:
            m = self.layers[i]
            w = m.weight.detach()
            if isinstance(m, nn.Linear):
                return [(ins[0], go.matmul(w))]
            d = len(m.kernel_size)
            gi = torch.ops.aten.convolution_backward(go, x, w, None, m.stride, m.padding, m.dilation, False,
                                                     [0] * d, m.groups, [True, False, False])[0]
            return [(ins[0], gi)]
        if kind == _DIAG:  # elementwise masks: the tangent rule is its own transpose
            return [(ins[0], self.lin._tangent_step(st, a, k, (go,) + (None,) * (len(a) - 1),
                                                    dict.fromkeys(k), out, extra))]
        if kind == _RESHAPE and len(ins) == 1 and isinstance(x, torch.Tensor):
            return [(ins[0], _reshape_back(go, x))]
        if kind == _REDUCE:
            dims, keep = _reduce_args(a, k)
            dims = _dims(dims, x.dim())
            g = go
            if not keep:
                for d in dims:
                    g = g.unsqueeze(d)
            g = g.expand(x.shape)
            if st.target in ("mean", torch.mean):
                n = 1
                for d in dims:
                    n *= x.shape[d]
                g = g / n
            return [(ins[0], g)]
        if kind == _SAME and type(st.module) in _AVG_POOL_BACKWARD:
            m = st.module
            return [(ins[0], _AVG_POOL_BACKWARD[type(m)](go, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                         m.count_include_pad, m.divisor_override))]
        if kind == _ADD and not k and len(st.args) == 2 and st.target in _PLAIN_ADD:
            negate = st.target in _PLAIN_SUB  # a - b: -go for b
            return [(r.i, _to_size(-go if (negate and n == 1) else go, env[r.i])) for n, r in enumerate(st.args)
                    if isinstance(r, L._Ref) and r.i in ins]
        return self._generic(i, st, a, k, go, out, extra, env)

    def _generic(self, i, st, a, k, go, out, extra, env):
        """The transpose of the node's tangent rule, by ``torch.func.vjp`` of that linear map."""
        ins = list(dict.fromkeys(self.xin[i]))

        def f(*ts):
            tan = _Sparse(dict(zip(ins, ts)))
            return self.lin._tangent_step(st, a, k, L._fill_tangent(st.args, tan), L._fill_tangent(st.kwargs, tan),
                                          out, extra)
        zeros = [torch.zeros_like(env[j]) for j in ins]
        if torch.compiler.is_compiling():  # dynamo does not trace torch.autograd.grad
            _, pull = torch.func.vjp(f, *zeros)
            return list(zip(ins, pull(go)))
        leaves = [z.requires_grad_(True) for z in zeros]
        return list(zip(ins, torch.autograd.grad(f(*leaves), leaves, go, allow_unused=True)))

    # -------------------------------------------------------------------- tangent ----
    def weight_grads(self, rec: L.Record, v: torch.Tensor | None, deltas: dict, c: torch.Tensor | None,
                     rows: int, acc: dict) -> None:
        """The tangent pass on ``v`` and, per layer, ``delta (x) (c a + t)`` (weights) and
        ``sum c delta`` (biases) added into ``acc`` (module id -> [module, G_w, G_b])."""
        lin, env = self.lin, rec.values
        tan: list = [None] * lin.n
        tan[self.x] = v
        for i, st in enumerate(lin.steps):
            kind = self.kinds.get(i)
            if kind is None:
                continue
            a = L._fill(st.args, env)
            if kind == _LAYER:
                t = tan[self.xin[i][0]]
                m = self.layers[i]
                if t is not None:
                    tan[i] = F.linear(t, m.weight.detach()) if isinstance(m, nn.Linear) else \
                        m._conv_forward(t, m.weight.detach(), None)
                delta = deltas.pop(i, None)
                if delta is not None and (t is not None or c is not None):
                    self._accumulate(m, a[0], t, delta, c, rows, acc)
            else:
                ta = L._fill_tangent(st.args, tan)
                tk = L._fill_tangent(st.kwargs, tan)
                if L._any_tangent(ta) or L._any_tangent(tk):
                    tan[i] = lin._tangent_step(st, a, L._fill(st.kwargs, env), ta, tk, env[i], rec.extras[i])
            for j in self.xin[i]:
                if self.last_use.get(j) == i:
                    tan[j] = None

    @staticmethod
    def _accumulate(m, x, t, delta, c, rows, acc) -> None:
        if c is None:
            inp = t
        elif t is None:
            inp = (x.reshape(rows, -1) * c.view(rows, 1)).view(x.shape)
        else:
            inp = torch.addcmul(t.reshape(rows, -1), x.reshape(rows, -1), c.view(rows, 1)).view(x.shape)
        w = m.weight
        if isinstance(m, nn.Linear):
            gw = delta.reshape(-1, delta.shape[-1]).t().mm(inp.reshape(-1, inp.shape[-1]))
            per_row = delta.reshape(rows, -1)
        else:
            d = len(m.kernel_size)
            gw = torch.ops.aten.convolution_backward(delta, inp, w.detach(), None, m.stride, m.padding, m.dilation,
                                                     False, [0] * d, m.groups, [False, True, False])[1]
            per_row = delta.flatten(2).sum(2).reshape(rows, -1)
        gb = None
        if c is not None and m.bias is not None:
            gb = torch.mv(per_row.t(), c.reshape(rows)).view(-1, m.bias.shape[0]).sum(0)
        _add_grads(acc, m, gw, gb)


def _add_grads(acc: dict, m: nn.Module, gw: torch.Tensor, gb: torch.Tensor | None) -> None:
    """``acc[id(m)] = [m, G_w, G_b]``, summed over the products that reach layer ``m``."""
    entry = acc.get(id(m))
    if entry is None:
        acc[id(m)] = [m, gw, gb]
    else:
        entry[1] = entry[1] + gw
        entry[2] = gb if entry[2] is None else (entry[2] if gb is None else entry[2] + gb)


def surrogate(acc: dict):
    """``sum <W, G_w> + <b, G_b>`` over the accumulated layers whose weights need a gradient
    (None if none does): its gradient with respect to each weight is that weight's ``G``."""
    s = None
    for m, gw, gb in acc.values():
        w, b = m.weight, m.bias
        if w.requires_grad:
            s = _plus(s, (w * gw).sum())
        if gb is not None and b is not None and b.requires_grad:
            s = _plus(s, (b * gb).sum())
    return s


def _plus(s, t):
    return t if s is None else s + t


class _Reject(Exception):
    pass
