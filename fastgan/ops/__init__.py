"""fastgan's operators, one module per operator family. Each module holds the schema (the one
statement of the signature), the fake, the autograd registration where there is one, and the
backend implementations it registers (:mod:`fastgan.ops._library` says how):

==============  =====================================================================
loss_term       ``loss_term_forward`` / ``loss_term_backward``: one loss term, reduced
penalty         ``penalty_forward`` / ``penalty_backward``: a gradient penalty's mean
mlp_step        ``mlp_disc_step`` / ``mlp_gen_step``: the fused MLP step
==============  =====================================================================

``torch.ops.fastgan.<op>`` is the compiled extension's (``cpu`` and ``cuda``, dispatched on the
device), ``torch.ops.fastgan.<op>_triton`` and ``<op>_torch`` the Python backends'. Importing
this package defines them all; the compiled extension only registers kernels.
"""
from fastgan.ops import loss_term, mlp_step, penalty

__all__ = ["loss_term", "mlp_step", "penalty"]
