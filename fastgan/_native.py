"""The compiled extension ``fastgan._C``: loading it (once, lazily) and the fake (meta)
implementations of its operators, which let ``torch.compile`` trace them without running them."""
from __future__ import annotations

import functools
from types import ModuleType

import torch


@functools.cache
def load() -> tuple[ModuleType | None, str | None]:
    """Import the extension. Returns ``(module, None)`` or ``(None, why it could not load)``."""
    try:
        from fastgan import _C
    except Exception as err:  # ImportError, or an undefined symbol after a torch upgrade
        return None, f"{type(err).__name__}: {err}"
    if _C.built_with_torch.split("+")[0] != torch.__version__.split("+")[0]:
        return None, (f"fastgan._C was built with torch {_C.built_with_torch} but torch "
                      f"{torch.__version__} is installed; reinstall fastgan")
    _register_fakes()
    return _C, None


def _register_fakes() -> None:
    lib = "fastgan::"

    @torch.library.register_fake(lib + "loss_term_forward")
    def _(x, phi, sign, shift, scale, reduction):
        return torch.empty_like(x) if reduction == 0 else x.new_empty(())

    @torch.library.register_fake(lib + "loss_term_backward")
    def _(grad_out, x, phi, sign, shift, scale, reduction):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "penalty_forward")
    def _(grad, kind, weight, center):
        return grad.new_empty(())

    @torch.library.register_fake(lib + "penalty_backward")
    def _(grad_out, grad, kind, weight, center):
        return torch.empty_like(grad)

    @torch.library.register_fake(lib + "mlp_disc_step")
    def _(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope, term_real,
          term_fake, paired, penalty_side, penalty_kind, penalty_weight, penalty_center, allow_tf32,
          masks_real, masks_fake, masks_penalty, path="auto", tensor_cores=False):
        outs = [real.new_empty((4,))]
        outs += [torch.empty_like(w) for w in weights]
        outs += [torch.empty_like(b) for b in biases]
        outs.append(torch.empty_like(w_out))
        if b_out is not None:
            outs.append(torch.empty_like(b_out))
        return outs

    @torch.library.register_fake(lib + "mlp_gen_step")
    def _(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, allow_tf32, masks_fake, masks_real,
          path="auto", tensor_cores=False):
        return [fake.new_empty((2,)), torch.empty_like(fake)]
