"""fastgan: compiled-kernel GAN losses, gradient penalties and a fused discriminator step.

Nothing here touches a GPU or loads the compiled extension at import; backends are chosen per
call (see :mod:`fastgan._dispatch`).
"""
import fastgan.ops  # noqa: F401  defines torch.ops.fastgan.* (schemas, fakes, Python backends)
from fastgan._dispatch import BACKENDS, BackendStatus, available_backends, use_backend
from fastgan.cuda_graph import GraphedStep
from fastgan.fused import StepParts, StepPlan, discriminator_step, explain, generator_step
from fastgan.losses import (
    LOSSES,
    GANLoss,
    HingeLoss,
    LeastSquaresLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    RelativisticLoss,
    WassersteinLoss,
    discriminator_loss,
    generator_loss,
    get_loss,
)
from fastgan.mlp import MLPDiscriminator
from fastgan.penalties import (
    PENALTIES,
    DRAGANPenalty,
    GradientPenalty,
    GradientPenaltyBase,
    R1Penalty,
    R2Penalty,
)

from fastgan.unrolled import UnrolledDiscriminator, unrolled_generator_step
from fastgan import divergences, reference

__version__ = "0.1.0"


def __getattr__(name: str):
    """``fastgan.lab`` and ``fastgan.bench`` load on first use (they import matplotlib and the
    benchmark machinery, which plain training code does not need); so does ``fastgan.generic_step``
    (the linearised step for any discriminator: ``fastgan.generic_step.prepare(D)`` before
    ``torch.compile``)."""
    if name in ("lab", "bench", "generic_step"):
        import importlib
        return importlib.import_module(f"fastgan.{name}")
    raise AttributeError(f"module 'fastgan' has no attribute {name!r}")

__all__ = [
    "BACKENDS", "BackendStatus", "available_backends", "use_backend",
    "LOSSES", "GANLoss", "HingeLoss", "LeastSquaresLoss", "MinimaxLoss", "NonSaturatingLoss",
    "RelativisticLoss", "WassersteinLoss", "discriminator_loss", "generator_loss", "get_loss",
    "MLPDiscriminator", "StepParts", "StepPlan", "discriminator_step", "explain", "generator_step",
    "PENALTIES", "DRAGANPenalty", "GradientPenalty", "GradientPenaltyBase", "R1Penalty", "R2Penalty",
    "UnrolledDiscriminator", "unrolled_generator_step", "GraphedStep",
    "divergences", "reference",
]
