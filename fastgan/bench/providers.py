"""What is timed: every fastgan backend's fused step and the PyTorch baselines, as runners with
one ``step()`` each (a full step: zero the gradients, the objective, ``.backward()``).

Provider names say whose step it is: ``fastgan-*`` is this library's fused step (its backend
after the dash), ``pytorch-*`` is plain PyTorch written the way GAN code is written today. The
older names (``cpu``, ``torch``, ``reference``, ``func+compile``, ...) are refused on the command
line with their new name (:data:`RENAMED`); results files written under them still load
(:func:`fastgan.bench.report.read_csv`).

=======================  ====================================================================
provider                 one step
=======================  ====================================================================
fastgan-cuda/-triton/    ``D.zero_grad(set_to_none=True)``; ``fastgan.discriminator_step(D,
-cpu/-torch              real, fake, loss=..., penalty=..., backend=<after the dash>)
                         .backward()`` (or ``generator_step``)
pytorch-eager            the same with ``backend="reference"``: plain autograd with
                         ``create_graph=True``, what GAN code does today (baseline)
pytorch-eager+graph      that step captured once in a CUDA graph, then ``graph.replay()``
                         (GPU baseline, where capture works)
fastgan-cuda+graph,      the fused step (``backward=True``: gradients written to D's
fastgan-triton+graph     ``.grad``) captured once in a CUDA graph, then ``graph.replay()``
pytorch-func+compile     ``torch.func.grad_and_value`` of the same objective (input gradient
                         by ``torch.func.grad``) inside ``torch.compile(mode=
                         "reduce-overhead")``; the compile (and graph recording) time is
                         reported as setup (GPU baseline; on the CPU only when asked for)
=======================  ====================================================================
"""
from __future__ import annotations

import copy
import time

import torch

import fastgan
from fastgan import fused
from fastgan.bench.configs import Config, Inputs
from fastgan.reference import losses as ref_losses
from fastgan.reference import penalties as ref_penalties

REFERENCE = "pytorch-eager"  # every provider is checked against it before timing
BACKEND = {"fastgan-cuda": "cuda", "fastgan-triton": "triton", "fastgan-cpu": "cpu", "fastgan-torch": "torch",
           REFERENCE: "reference"}  # the fastgan backend= each eager provider calls
BACKENDS = ("fastgan-cuda", "fastgan-triton", "fastgan-cpu", "fastgan-torch")  # fastgan's fused step
GRAPHED = ("fastgan-cuda+graph", "fastgan-triton+graph")  # fastgan's fused step captured in a CUDA graph
COMPILE = "pytorch-func+compile"
BASELINES = {"cpu": (REFERENCE, "fastgan-torch"), "cuda": (REFERENCE, "pytorch-eager+graph", COMPILE)}
DEFAULTS = {"cpu": ("fastgan-cpu", "fastgan-torch", REFERENCE),
            "cuda": ("fastgan-cuda", "fastgan-cuda+graph", "fastgan-triton", "fastgan-triton+graph",
                     "fastgan-torch", REFERENCE, "pytorch-eager+graph", COMPILE)}
PROVIDERS = BACKENDS + GRAPHED + (REFERENCE, "pytorch-eager+graph", COMPILE)
RENAMED = {"cuda": "fastgan-cuda", "triton": "fastgan-triton", "cpu": "fastgan-cpu", "torch": "fastgan-torch",
           "cuda+graph": "fastgan-cuda+graph", "triton+graph": "fastgan-triton+graph",
           "reference": REFERENCE, "reference+graph": "pytorch-eager+graph", "func+compile": COMPILE}
"""Older provider names -> today's (older results files; a clear error on the command line)."""

DESCRIPTION = {
    "fastgan-cuda": "fastgan's fused step, CUDA kernels",
    "fastgan-triton": "fastgan's fused step, Triton kernels",
    "fastgan-cpu": "fastgan's fused step, C++ CPU kernel",
    "fastgan-torch": "fastgan's fused step in torch ops (not plain PyTorch)",
    "fastgan-cuda+graph": "fastgan-cuda replayed from a CUDA graph",
    "fastgan-triton+graph": "fastgan-triton replayed from a CUDA graph",
    REFERENCE: "plain PyTorch: autograd, create_graph=True",
    "pytorch-eager+graph": "pytorch-eager replayed from a CUDA graph",
    COMPILE: "plain PyTorch: torch.func in torch.compile",
}
"""One short line per provider (at most 54 characters: --help at 80 columns), for the legend
under the table, --help and the report."""

SKIPPED = {"cpu": {COMPILE: "not in the CPU default: torch.compile builds C++ per configuration, ~2 min each "
                            "on 2 cores; --providers ...,pytorch-func+compile runs it"}}
"""Providers that can run on a device but are left out of its default set, and why."""


def unknown_provider(name: str) -> str:
    """'' for a provider name, else the error for it (an old name gets its new one)."""
    if name in PROVIDERS:
        return ""
    if name in RENAMED:
        return (f"--providers: {name!r} is now called {RENAMED[name]!r} (fastgan-* = fastgan's fused step, "
                f"pytorch-* = plain PyTorch); choose from {', '.join(PROVIDERS)}")
    return f"--providers: unknown provider {name!r}; choose from {', '.join(PROVIDERS)}"


def why_missing(name: str, device: str) -> str:
    """'' when ``name`` can run on ``device`` ('cpu' or 'cuda'), else why not. A fastgan backend's
    reason is the one :func:`fastgan.available_backends` gives. ValueError for a name that is
    not a provider (an old name is told its new one)."""
    if why := unknown_provider(name):
        raise ValueError(why)
    if name.endswith("+graph"):
        if device != "cuda":
            return "CUDA graphs need a CUDA device"
        name = name.removesuffix("+graph")
        if name == REFERENCE:
            return ""
    if name == COMPILE:
        return ""
    backend = BACKEND[name]
    status = {s.name: s for s in fastgan.available_backends()}[backend]
    if not status.available:
        return status.reason
    if backend == "cuda" and device != "cuda":
        return "the cuda backend runs on CUDA tensors only"
    if backend == "cpu" and device != "cpu":
        return "the cpu backend runs on CPU tensors only"
    if backend not in fused.step_backends():
        return "no fused-step implementation of this backend in this installation"
    return ""


class Runner:
    """One provider on one configuration. ``setup_s``: compile or capture time (else None);
    ``setup_peak``: bytes allocated while capturing (graph providers' memory is their pool)."""

    name: str
    setup_s: float | None = None
    setup_peak: int | None = None

    def step(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Drop the last step's outputs (before a memory measurement); graphs keep theirs."""

    def result(self) -> list[torch.Tensor]:
        """[value, gradients...] after the last step: D's parameter gradients, or d loss / d fake
        for the generator step."""
        raise NotImplementedError


class EagerRunner(Runner):
    """``discriminator_step``/``generator_step`` with one backend, then ``.backward()``."""

    def __init__(self, name: str, config: Config, D: torch.nn.Module, data: Inputs, one_op: bool = False):
        self.name, self.backend, self.D, self.data = name, BACKEND[name], copy.deepcopy(D), data
        self.one_op = one_op  # discriminator_step(backward=True): no autograd graph
        self.objective = config.objective
        self.loss, self.penalty = self.objective.make_loss(), self.objective.make_penalty()
        self.fake = data.fake.clone().requires_grad_(True) if self.objective.generator else None
        self.value = None

    def step(self) -> None:
        if self.objective.generator:
            self.fake.grad = None
            value = fastgan.generator_step(self.D, self.fake, loss=self.loss, backend=self.backend)
        else:
            self.D.zero_grad(set_to_none=True)
            value = fastgan.discriminator_step(self.D, self.data.real, self.data.fake, loss=self.loss,
                                               penalty=self.penalty, backend=self.backend, eps=self.data.eps,
                                               backward=self.one_op)
        if self.objective.generator or not self.one_op:
            value.backward()
        self.value = value.detach()

    def release(self) -> None:
        self.D.zero_grad(set_to_none=True)
        if self.fake is not None:
            self.fake.grad = None
        self.value = None

    def result(self) -> list[torch.Tensor]:
        grads = [self.fake.grad] if self.objective.generator else [p.grad for p in self.D.parameters()]
        return [self.value, *grads]


class GraphRunner(Runner):
    """A step replayed from a CUDA graph (:class:`fastgan.GraphedStep`: warm-up on a side
    stream, then capture with the gradients unset so that the captured step allocates them in
    the graph's pool):
    ``pytorch-eager+graph`` captures the plain autograd step, ``fastgan-cuda+graph``/
    ``fastgan-triton+graph`` the fused step in its one-op form."""

    def __init__(self, name: str, config: Config, D: torch.nn.Module, data: Inputs):
        self.name = name
        base = name.removesuffix("+graph")
        self.eager = EagerRunner(base, config, D, data, one_op=base != REFERENCE)
        start = time.perf_counter()
        self.graphed = fastgan.GraphedStep(self.eager.step)
        self.graphed.warm_up()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.graphed.capture()  # set_to_none inside the step: backward allocates static gradients
        torch.cuda.synchronize()
        self.setup_peak = torch.cuda.max_memory_allocated() - before
        self.setup_s = time.perf_counter() - start

    def step(self) -> None:
        self.graphed()

    def result(self) -> list[torch.Tensor]:
        return self.eager.result()


def _functional_objective(config: Config, D: torch.nn.Module):
    """The reference objective as a pure function for torch.func: (params, real, fake, eps) ->
    scalar for the discriminator, (fake, params) -> scalar for the generator. Losses and
    penalty formulas are fastgan.reference's; only the input gradient uses torch.func.grad."""
    obj, pack = config.objective, config.network.pack

    def logits(params, x):
        return torch.func.functional_call(D, params, (x,))

    if obj.generator:
        return lambda fake, params: ref_losses.generator_loss(obj.loss, logits(params, fake))

    def objective(params, real, fake, eps):
        value = ref_losses.discriminator_loss(obj.loss, logits(params, real), logits(params, fake))
        if obj.penalty is None:
            return value
        x = real if obj.penalty == "r1" else ref_penalties.interpolate(real, fake, eps, pack)
        g = torch.func.grad(lambda x_: logits(params, x_).sum())(x).reshape(x.shape[0] // pack, -1)
        if obj.penalty == "r1":
            return value + ref_penalties.squared_penalty(g, obj.gamma)
        return value + ref_penalties.centered_penalty(g, obj.gamma, 1.0)

    return objective


class CompileRunner(Runner):
    """``torch.compile(torch.func.grad_and_value(objective), mode="reduce-overhead")``; the
    gradients are handed to D's ``.grad`` like a backward would. Setup = the first three calls
    (compilation and CUDA-graph recording)."""

    def __init__(self, name: str, config: Config, D: torch.nn.Module, data: Inputs):
        self.name, self.data, self.generator = name, data, config.objective.generator
        self.D = copy.deepcopy(D)
        torch._dynamo.reset()  # fresh caches: one code object serves every configuration
        self.params = {k: v.detach() for k, v in self.D.named_parameters()}
        self.fn = torch.compile(torch.func.grad_and_value(_functional_objective(config, self.D)),
                                mode="reduce-overhead")
        self.out = None
        cuda = data.real.is_cuda
        if cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(3):
            self.step()
        if cuda:
            torch.cuda.synchronize()
            self.setup_peak = torch.cuda.max_memory_allocated() - before
        self.setup_s = time.perf_counter() - start

    def step(self) -> None:
        torch.compiler.cudagraph_mark_step_begin()
        if self.generator:
            grad, value = self.fn(self.data.fake, self.params)
            self.out = [value, grad]
        else:
            grads, value = self.fn(self.params, self.data.real, self.data.fake, self.data.eps)
            for p, g in zip(self.D.parameters(), grads.values()):
                p.grad = g
            self.out = [value, *grads.values()]

    def release(self) -> None:
        self.D.zero_grad(set_to_none=True)
        self.out = None

    def result(self) -> list[torch.Tensor]:
        return self.out


def make_runner(name: str, config: Config, D: torch.nn.Module, data: Inputs) -> Runner:
    """A runner for provider ``name`` (already known to be available) on this configuration."""
    if name.endswith("+graph"):
        return GraphRunner(name, config, D, data)
    if name == COMPILE:
        return CompileRunner(name, config, D, data)
    return EagerRunner(name, config, D, data)
