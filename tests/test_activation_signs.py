"""fastgan.activation_signs: ReLU / LeakyReLU whose backward reads the float output's sign through
an opaque operator, and the compiled generic step that uses them (no bool sign saved)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import activation_signs
from fastgan.bench import zoo
from fastgan.generic_step import discriminator_step


def _special(dtype=torch.float64):
    """Values with exact zeros, infinities and NaN among ordinary ones."""
    x = torch.randn(4, 3, 5, 5, dtype=dtype)
    x.view(-1)[:6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-300], dtype=dtype)
    return x


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_masked_is_the_activations_backward_on_its_output(slope):
    """``masked(t, out, slope)`` equals ATen's backward read from the output, bit for bit, with
    zeros, infinities and NaN in either argument, and keeps t's layout."""
    torch.manual_seed(0)
    out = F.leaky_relu(_special(), slope)
    t = _special().flip(0)
    want = (torch.ops.aten.threshold_backward(t, out, 0) if slope == 0
            else torch.ops.aten.leaky_relu_backward(t, out, slope, True))
    got = activation_signs.masked(t, out, slope)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    t_cl = t.contiguous(memory_format=torch.channels_last)
    assert activation_signs.masked(t_cl, out, slope).stride() == t_cl.stride()


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_masked_passes_opcheck(slope):
    out = F.leaky_relu(torch.randn(3, 4, dtype=torch.float64), slope)
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fastgan.activation_mask.default, (t, out, slope))


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_activation_matches_torch_in_autograd_and_torch_func(slope):
    """Values, first derivatives (autograd and torch.func.vjp) and the derivative of the
    backward in its incoming gradient are F.relu's / F.leaky_relu's."""
    torch.manual_seed(1)
    x = torch.randn(6, 7, dtype=torch.float64)
    x[0, :3] = 0.0
    g = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)

    def ref(x_):
        return F.relu(x_) if slope == 0 else F.leaky_relu(x_, slope)
    for fn in (ref, lambda x_: activation_signs.activation(x_, slope)):
        xs = x.clone().requires_grad_(True)
        out = fn(xs)
        (gx,) = torch.autograd.grad(out, xs, g, create_graph=True)
        (gg,) = torch.autograd.grad(gx.square().sum(), g)
        _, pull = torch.func.vjp(fn, x)
        if fn is ref:
            want = (out.detach(), gx.detach(), gg, pull(g.detach())[0])
        else:
            got = (out.detach(), gx.detach(), gg, pull(g.detach())[0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="slope"):
        activation_signs.activation(x, -0.1)


def test_the_compiled_general_step_saves_no_bool_sign():
    """StyleGAN2-style D (LeakyReLUs feeding average pools, minibatch std: the general path)
    compiled with Inductor's decompositions and min-cut partitioner: the forward graph saves no
    bool tensor for the backward, and the gradients are the eager step's."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    saved: list[torch.dtype] = []

    def forward_compiler(gm, _inputs):
        (outputs,) = [n.args[0] for n in gm.graph.nodes if n.op == "output"]
        saved.extend(n.meta["val"].dtype for n in outputs if isinstance(n, torch.fx.Node) and "val" in n.meta)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _i: make_boxed_func(gm.forward),
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch._dynamo.reset()
    D = zoo.build("stylegan2_64", dtype=torch.float64)
    D_eager = copy.deepcopy(D)
    real, fake, _ = zoo.batch("stylegan2_64", 8, dtype=torch.float64)
    loss, pens = fastgan.NonSaturatingLoss(), [(fastgan.R1Penalty(3.0), 1)]
    fastgan.generic_step.prepare(D)
    assert not fastgan.generic_step.linearized(D).piecewise.ok  # the general path
    step = torch.compile(lambda r, f: discriminator_step(D, r, f, loss=loss, penalties=pens)[0], fullgraph=True,
                         backend=backend)
    step(real, fake).backward()
    assert saved and torch.float64 in saved
    assert torch.bool not in saved, saved
    discriminator_step(D_eager, real, fake, loss=loss, penalties=pens, backward=True)
    for p, q in zip(D.parameters(), D_eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
