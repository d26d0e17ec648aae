"""Differential fuzzing of the fused steps against the autograd oracle (tests/fuzz_cases.py).

Hypothesis draws a :class:`fuzz_cases.Draw` (architecture, frozen parameters, spectral / weight
norm, forward overrides and hooks, loss, penalty and lazy schedule, dtype, layouts, NaN / Inf /
extreme values, a seed) and the checks compare every fused backend that runs here (``torch``,
``cpu``, ``triton`` under ``TRITON_INTERPRET=1``) with ``backend="reference"``: values, StepParts,
every ``.grad`` and which parameters have one, the parameters, buffers and the penalty's phase
afterwards, for ``.backward()`` and ``backward=True``; ``generator_step``'s d loss / d fake; and
``unrolled_generator_step(mode="first_order")``.

One test per (backend, category). A category forces one feature on (``frozen``, ``norm``,
``override``, ``nonfinite``, ``lazy``) over otherwise random draws; ``plain`` draws none of them
and ``mixed`` any combination. A failure names the test's category and backend, and Hypothesis
shrinks the draw: the message gives the minimal draw, what differed, and a one-line repro.

Budget: the ``ci`` profile (the default, ``make test``) is derandomized and database-less, so it
draws the same examples on every run (``CI_EXAMPLES``), and reports a failing draw unshrunk unless
``FASTGAN_FUZZ_SHRINK=1``; ``FASTGAN_FUZZ_PROFILE=long`` (``make fuzz``) draws fresh examples,
shrinks failures, keeps them in build/hypothesis-fuzz for replay, and takes
``FASTGAN_FUZZ_EXAMPLES`` draws per test (the interpreted Triton backend and the reference checks a
twentieth).

Run one category: ``TRITON_INTERPRET=1 pytest tests/test_fuzz.py -k "cpu and frozen"``; replay one
draw: paste the failure's ``repro:`` line into ``python`` in tests/.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

import fuzz_cases as fc  # noqa: E402
from fuzz_cases import Draw  # noqa: E402

# ------------------------------------------------------------------------------ the budget ----
PROFILE = os.environ.get("FASTGAN_FUZZ_PROFILE", "ci")
_common = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.differing_executors])
settings.register_profile("fastgan-fuzz-ci", derandomize=True, database=None, **_common)
settings.register_profile("fastgan-fuzz-long", derandomize=False,
                          database=DirectoryBasedExampleDatabase(os.path.join("build", "hypothesis-fuzz")),
                          **_common)
if PROFILE not in ("ci", "long"):
    raise ValueError(f"FASTGAN_FUZZ_PROFILE must be 'ci' or 'long', got {PROFILE!r}")

CI_EXAMPLES = {"torch": 6, "cpu": 6, "triton": 1, "reference": 3}
"""Draws per test in the ci profile (by backend; the Triton interpreter is slow)."""
SLOW = {"triton": 20, "reference": 20}
"""In the long profile a backend takes FASTGAN_FUZZ_EXAMPLES / SLOW[backend] draws."""
SHRINK = os.environ.get("FASTGAN_FUZZ_SHRINK", "0") == "1"
"""The ci profile reports a failing draw as drawn (its message names it and gives a one-line
repro); shrinking takes up to 5 minutes per failing test, so it is opt-in there
(FASTGAN_FUZZ_SHRINK=1) and always on in the long profile."""


def budget(backend: str, factor: float = 1.0) -> settings:
    if PROFILE == "ci":
        n = CI_EXAMPLES[backend]
    else:
        n = int(os.environ.get("FASTGAN_FUZZ_EXAMPLES", "2000")) // SLOW.get(backend, 1)
    n = max(1, int(n * factor))
    kwargs = {}
    if PROFILE == "ci" and not SHRINK:
        kwargs["phases"] = (Phase.explicit, Phase.generate)
    return settings(settings.get_profile(f"fastgan-fuzz-{PROFILE}"), max_examples=n, **kwargs)


# --------------------------------------------------------------------------- the strategies ----
CATEGORIES = ("plain", "frozen", "norm", "override", "nonfinite", "lazy", "mixed")
GEN_CATEGORIES = ("plain", "norm", "override", "nonfinite", "mixed")


def _param_count(hidden, bias, norms) -> int:
    return (len(hidden) + 1) * (2 if bias else 1) + sum(kind.startswith("wn") for _, kind in norms)


@st.composite
def draws(draw, category: str, generator: bool = False) -> Draw:
    """A Draw with ``category``'s feature on (see the module docstring). Choices are listed
    simplest first: Hypothesis shrinks towards them."""
    mixed = category == "mixed"
    hidden = tuple(draw(st.lists(st.sampled_from(fc.WIDTHS), min_size=1, max_size=3)))
    pack = draw(st.sampled_from((1, 2, 3)))
    bias = draw(st.booleans().map(lambda b: not b))  # bias first
    loss = draw(st.sampled_from(fc.LOSS_NAMES))
    loss_kwargs = ()
    if loss == "least_squares" and draw(st.booleans()):
        values = st.sampled_from((0.0, 1.0, -1.0, 0.5, 2.0))
        loss_kwargs = (("a", draw(values)), ("b", draw(values)), ("c", draw(values)))
    lazy = category == "lazy"
    penalties = fc.PENALTY_NAMES[1:] if lazy else fc.PENALTY_NAMES
    penalty = "none" if generator else draw(st.sampled_from(penalties))
    every = draw(st.integers(2, 3)) if lazy else (draw(st.integers(1, 3)) if mixed else 1)
    steps = draw(st.integers(every + 1, 4)) if lazy else (draw(st.integers(1, 4)) if mixed else
                                                          draw(st.integers(1, 2)))
    if generator:
        steps, every = 1, 1
    norms: tuple = ()
    if category == "norm" or (mixed and draw(st.booleans())):
        layers = draw(st.lists(st.integers(0, len(hidden)), min_size=1, max_size=len(hidden) + 1, unique=True))
        norms = tuple((i, draw(st.sampled_from(fc.NORMS))) for i in sorted(layers))
    train = draw(st.booleans().map(lambda b: not b)) if norms else True
    frozen = 0
    if category == "frozen" or (mixed and draw(st.booleans())):
        frozen = draw(st.integers(1, 2 ** _param_count(hidden, bias, norms) - 1))
    override = "none"
    if category == "override" or (mixed and draw(st.booleans())):
        override = draw(st.sampled_from(fc.OVERRIDES[1:]))
    special: tuple = ()
    if category == "nonfinite" or (mixed and draw(st.booleans())):
        special = tuple(draw(st.lists(st.tuples(st.sampled_from(fc.TARGETS), st.integers(0, 200),
                                                st.sampled_from(fc.SPECIAL_VALUES)), min_size=1, max_size=3)))
    spectral_train = train and any(kind.startswith("sn") for _, kind in norms)
    fail_step = -1
    if ("gp" in penalty or "dragan" in penalty) and (lazy or mixed) and not spectral_train:
        fail_step = draw(st.integers(-1, steps - 1))
    in_features, rows_real = draw(st.sampled_from(fc.IN_FEATURES)), draw(st.integers(1, 4))
    if "dragan" in penalty and in_features * pack * rows_real == 1 and category not in ("nonfinite", "mixed"):
        rows_real = 2  # DRAGAN's std of one number is NaN: a non-finite case, kept to those categories
    return Draw(
        in_features=in_features, hidden=hidden,
        slope=draw(st.sampled_from((0.2, 0.0, 0.5))), pack=pack, bias=bias,
        rows_real=rows_real, rows_fake=draw(st.integers(1, 4)),
        loss=loss, loss_kwargs=loss_kwargs, reduction=draw(st.sampled_from(("mean", "sum"))),
        penalty=penalty, weight=draw(st.sampled_from((1.0, 0.1, 3.5, 10.0))),
        center=draw(st.sampled_from((1.0, 0.0, 0.5, 2.0))), dragan_scale=draw(st.sampled_from((0.5, 1.0))),
        every=every, steps=steps, fail_step=fail_step,
        dtype=draw(st.sampled_from(("float64", "float64", "float64", "float32"))),
        layout_real=draw(st.sampled_from(fc.LAYOUTS)), layout_fake=draw(st.sampled_from(fc.LAYOUTS)),
        frozen=frozen, norms=norms, train=train, override=override, special=special,
        accumulate=False if generator else draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 16)))


# ------------------------------------------------------------------------- explicit examples ----
NAN = float("nan")
EXAMPLES: dict[str, list[Draw]] = {
    "frozen": [Draw(frozen=1)],
    "norm": [Draw(norms=((0, "sn_hook"),)), Draw(norms=((0, "sn_param"), (1, "wn_param")), steps=2),
             Draw(norms=((0, "wn_hook"),), steps=2, train=False), Draw(norms=((0, "wn_param"),), penalty="r1+r2")],
    "override": [Draw(override="subclass_input"), Draw(override="layer_hook")],
    "nonfinite": [Draw(loss="hinge", special=(("real", 0, NAN),))],
    "lazy": [Draw(penalty="gp", every=2, steps=3, fail_step=0), Draw(penalty="r1", every=3, steps=4),
             Draw(penalty="r1+r2", every=2, steps=3)],
}
"""Draws every run makes first (Hypothesis' explicit phase), whatever the budget: one per
behaviour the fused path must keep (frozen parameters; spectral norm's one power iteration per
step, weight norm, hook-form state over two steps, a penalty list on effective weights; a forward
override; NaN through a hinge; the lazy phase, of one penalty and of a list). The minimal random draws (1 x 1 layers) would miss some: power iteration is exact there."""
GEN_EXAMPLES: dict[str, list[Draw]] = {
    "norm": [Draw(norms=((0, "sn_hook"),), train=False)],
    "override": [Draw(override="subclass_input"), Draw(override="post_hook")],
}


def _fuzz(test, examples: list[Draw], strategy, backend: str, factor: float = 1.0):
    """``test`` under Hypothesis: its explicit examples, then the budget's draws."""
    test = given(draw=strategy)(test)
    for ex in reversed(examples):
        test = example(draw=ex)(test)
    return budget(backend, factor)(test)


# ---------------------------------------------------------------------------------- the tests ----
def _backends() -> list:
    return [pytest.param(name, id=name, marks=[pytest.mark.skip(reason=f"{name}: {why}")] if why else [])
            for name, why in fc.fused_backends()]


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("backend", _backends())
def test_discriminator_step(backend, category):
    """discriminator_step (.backward() and backward=True) against the oracle."""
    def fuzz(draw):
        fc.check_disc(draw, backend)
    _fuzz(fuzz, EXAMPLES.get(category, []), draws(category), backend)()


@pytest.mark.parametrize("category", ("norm", "lazy"))
def test_reference_semantics(category):
    """The reference backend itself: spectral norm's one power iteration per step (the oracle's
    composition) and the lazy phase (advances after a successful step; in state_dict)."""
    def fuzz(draw):
        fc.check_disc(draw, "reference")
    _fuzz(fuzz, EXAMPLES[category], draws(category), "reference")()


@pytest.mark.parametrize("category", GEN_CATEGORIES)
@pytest.mark.parametrize("backend", _backends())
def test_generator_step(backend, category):
    """generator_step: its loss and d loss / d fake against the oracle; no .grad on D."""
    def fuzz(draw):
        fc.check_gen(draw, backend)
    _fuzz(fuzz, GEN_EXAMPLES.get(category, []), draws(category, generator=True), backend, 0.5)()


@pytest.mark.parametrize("backend", _backends())
def test_unrolled_first_order(backend):
    """unrolled_generator_step(mode="first_order") against its reference-backend run, frozen
    parameters included (an optimiser over all of D's parameters)."""
    @budget(backend, 0.5)
    @given(draw=draws("frozen"), optimizer=st.sampled_from(("adam", "sgd")), steps=st.integers(1, 2))
    def fuzz(draw, optimizer, steps):
        fc.check_unrolled(draw, backend, optimizer, steps)
    fuzz()
