"""fastgan.integrations.ctgan against ctgan itself: weights convert both ways with identical
logits, one discriminator update and the generator's gradient equal ctgan's (fp64, dropout off),
fit / sample / save / load run, bad input fails as in ctgan. Skipped without ctgan
(pip install 'fastgan[ctgan]')."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("ctgan")
pd = pytest.importorskip("pandas")

import ctgan  # noqa: E402
from ctgan.data_sampler import DataSampler  # noqa: E402
from ctgan.data_transformer import DataTransformer  # noqa: E402
from ctgan.errors import InvalidDataError  # noqa: E402
from ctgan.synthesizers.ctgan import Discriminator as CTGANDiscriminator  # noqa: E402
from ctgan.synthesizers.ctgan import Generator  # noqa: E402

import fastgan  # noqa: E402
from fastgan import MLPDiscriminator  # noqa: E402
from fastgan.integrations.ctgan import (  # noqa: E402
    CTGAN, PacError, from_ctgan_discriminator, sample_rows, to_ctgan_discriminator)

PAC = 10


def tiny_table(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    return pd.DataFrame({
        "x": x,
        "y": np.exp(0.5 * x + 0.1 * rng.normal(size=rows)),
        "c": np.where(x > 0, "hi", "lo"),
        "d": rng.choice(["a", "b", "c"], size=rows),
    })


@pytest.fixture(autouse=True)
def _quiet_reference_path():
    """A training-mode dropout D takes the reference path with a one-time warning (expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fastgan: the fused step cannot run")
        yield


def ctgan_pair(in_features=7, hidden=(16, 12), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    theirs = CTGANDiscriminator(in_features, hidden, pac=PAC).to(dtype)
    with torch.no_grad():  # non-zero biases, so a swapped weight/bias would show
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return theirs, from_ctgan_discriminator(theirs)


# ---- the converter ----------------------------------------------------------------------------

def test_converter_round_trip_and_identical_logits():
    theirs, ours = ctgan_pair()
    assert (ours.in_features, ours.hidden, ours.pack) == (7, (16, 12), PAC)
    assert (ours.negative_slope, ours.dropout) == (0.2, 0.5)
    theirs.eval(), ours.eval()
    x = torch.randn(5 * PAC, 7, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x).squeeze(1), rtol=0, atol=0)
    back = to_ctgan_discriminator(ours).eval()
    for a, b in zip(back.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)
    assert back.pac == PAC and back.training is False


def test_converter_keeps_training_mode_and_dtype():
    theirs, ours = ctgan_pair(dtype=torch.float32)
    assert ours.training and ours.out.weight.dtype == torch.float32
    assert to_ctgan_discriminator(ours.eval()).training is False


def test_same_seed_same_initial_discriminator_as_ctgan():
    model = CTGAN(discriminator_dim=(16, 12), pac=PAC, batch_size=2 * PAC, enable_gpu=False)
    torch.manual_seed(3)
    theirs = CTGANDiscriminator(7, (16, 12), pac=PAC)
    torch.manual_seed(3)
    ours = model._make_discriminator(7)
    assert ours.training and (ours.dropout, ours.negative_slope, ours.pack) == (0.5, 0.2, PAC)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)


def test_converter_rejects_what_ctgan_cannot_hold():
    with pytest.raises(ValueError, match="negative_slope=0.2, dropout=0.5"):
        to_ctgan_discriminator(MLPDiscriminator(4, (8,), pack=2, dropout=0.0))
    with pytest.raises(ValueError, match="negative_slope=0.2, dropout=0.5"):
        to_ctgan_discriminator(MLPDiscriminator(4, (8,), pack=2, dropout=0.5, negative_slope=0.1))
    with pytest.raises(TypeError, match="MLPDiscriminator"):
        to_ctgan_discriminator(torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match="ctgan's Discriminator"):
        from_ctgan_discriminator(torch.nn.Linear(2, 1))


# ---- one discriminator update, the generator's gradient ----------------------------------------

def ctgan_discriminator_update(D, optimizer, real_cat, fake_cat, seed):
    """The lines of ctgan.CTGAN.fit's discriminator update (ctgan 0.12), alpha drawn after
    ``torch.manual_seed(seed)``."""
    y_fake = D(fake_cat)
    y_real = D(real_cat)
    torch.manual_seed(seed)
    pen = D.calc_gradient_penalty(real_cat, fake_cat, "cpu", PAC)
    loss_d = -(torch.mean(y_real) - torch.mean(y_fake))
    optimizer.zero_grad(set_to_none=False)
    pen.backward(retain_graph=True)
    loss_d.backward()
    optimizer.step()
    return loss_d.detach()


@pytest.mark.parametrize("backend", [None, "reference"])
def test_one_discriminator_update_equals_ctgans(backend):
    theirs, ours = ctgan_pair()
    theirs.eval(), ours.eval()  # dropout off: the updates are deterministic
    model = CTGAN(batch_size=4 * PAC, pac=PAC, enable_gpu=False, backend=backend)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)
    _, opt_ours = _with_generator(model)._make_optimizers(ours)
    real = torch.randn(4 * PAC, 7, dtype=torch.float64)
    fake = torch.randn(4 * PAC, 7, dtype=torch.float64, requires_grad=True)  # ctgan's fakes carry a graph
    for step, seed in enumerate((11, 12)):  # two steps: Adam's moments are used too
        loss_theirs = ctgan_discriminator_update(theirs, opt_theirs, real, fake, seed)
        torch.manual_seed(seed)
        eps = torch.rand(real.shape[0] // PAC, 1, 1).flatten()  # ctgan's alpha, one per packed row
        loss_ours = model._discriminator_update(ours, opt_ours, real, fake.detach(), eps)
        torch.testing.assert_close(loss_ours, loss_theirs, rtol=0, atol=1e-12)
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=f"step {step}: {name}.grad")
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=f"step {step}: {name}")


def _with_generator(model):
    model._generator = torch.nn.Linear(1, 1)  # _make_optimizers needs a generator to optimise
    return model


@pytest.fixture(scope="module")
def transformed():
    """ctgan's transformer and sampler fitted on the tiny table (shared: the fit is the slow part)."""
    table = tiny_table()
    transformer = DataTransformer()
    transformer.fit(table, ["c", "d"])
    data = transformer.transform(table)
    return transformer, DataSampler(data, transformer.output_info_list, True), data


def test_generator_gradient_equals_ctgans(transformed):
    transformer, sampler, _ = transformed
    model = CTGAN(embedding_dim=8, generator_dim=(16,), batch_size=2 * PAC, pac=PAC, enable_gpu=False)
    model._transformer, model._data_sampler = transformer, sampler
    data_dim, cond_dim = transformer.output_dimensions, sampler.dim_cond_vec()
    torch.manual_seed(0)
    generator = Generator(8 + cond_dim, (16,), data_dim).double()
    theirs, ours = ctgan_pair(data_dim + cond_dim, (16, 12))
    theirs.eval(), ours.eval()
    np.random.seed(0)
    c1, m1, _, _ = sampler.sample_condvec(2 * PAC)
    c1, m1 = torch.from_numpy(c1).double(), torch.from_numpy(m1).double()
    z = torch.cat([torch.randn(2 * PAC, 8, dtype=torch.float64), c1], dim=1)

    grads = []
    for adversarial in ("ctgan", "fastgan"):
        generator.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same Gumbel noise
        fake = generator(z)
        fake_cat = torch.cat([model._apply_activate(fake), c1], dim=1)
        if adversarial == "ctgan":
            adv = -torch.mean(theirs(fake_cat))
        else:
            adv = model._adversarial_loss(ours, fake_cat)
        loss_g = adv + model._cond_loss(fake, c1, m1)
        loss_g.backward()
        grads.append([p.grad.clone() for p in generator.parameters()])
        assert all(p.grad is None for p in ours.parameters())  # no discriminator gradients
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_penalty_reads_ctgans_pac():
    theirs, _ = ctgan_pair()
    theirs.eval()
    real = torch.randn(3 * PAC, 7, dtype=torch.float64)
    fake = torch.randn(3 * PAC, 7, dtype=torch.float64, requires_grad=True)  # ctgan differentiates through it
    torch.manual_seed(5)
    expected = theirs.calc_gradient_penalty(real, fake, "cpu", PAC)
    torch.manual_seed(5)
    eps = torch.rand(3, 1, 1).flatten()
    got = fastgan.GradientPenalty(10)(theirs, real, fake.detach(), eps=eps)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="pack=10"):
        fastgan.GradientPenalty(10)(theirs, real[:25], fake.detach()[:25])


# ---- fit, sample, save, load, errors ----------------------------------------------------------

def small_model(**kwargs):
    args = dict(embedding_dim=8, generator_dim=(16,), discriminator_dim=(16,), batch_size=2 * PAC, pac=PAC,
                epochs=1, enable_gpu=False)
    args.update(kwargs)
    return CTGAN(**args)


def test_fit_sample_save_load(tmp_path):
    table = tiny_table()
    model = small_model()
    model.set_random_state(0)
    model.fit(table, ["c", "d"])
    assert list(model.loss_values.columns) == ["Epoch", "Generator Loss", "Discriminator Loss"]
    assert len(model.loss_values) == 1 and np.isfinite(model.loss_values.iloc[0, 1:].astype(float)).all()
    assert not hasattr(model, "_discriminator")  # as ctgan: the discriminator lives for the fit only
    synthetic = model.sample(25)
    assert isinstance(synthetic, pd.DataFrame) and list(synthetic.columns) == list(table.columns)
    assert len(synthetic) == 25 and set(synthetic["c"]) <= {"hi", "lo"}

    path = tmp_path / "model.pkl"
    model.save(path)
    loaded = CTGAN.load(path)
    assert type(loaded) is CTGAN and loaded._backend is None
    for a, b in zip(loaded._generator.state_dict().values(), model._generator.state_dict().values()):
        assert torch.equal(a, b)
    # the random state travels with the pickle, as in ctgan: the same samples after loading
    pd.testing.assert_frame_equal(loaded.sample(10), model.sample(10))


def test_fit_trains_what_ctgan_trains(monkeypatch):
    """With dropout off in both (masks cannot be matched), the same seed draws the same noise,
    conditions, batches, Gumbel noise and interpolation weights in the same order, so the two
    fits agree: the losses, the generator, the samples. The one loose tolerance: the bias of the
    Linear before each BatchNorm has a zero gradient up to rounding, which Adam scales up to
    steps of about lr; BatchNorm removes it from every output."""
    import ctgan.synthesizers.ctgan as ctgan_module

    import fastgan.integrations.ctgan as ours_module
    monkeypatch.setattr(ctgan_module, "Dropout", lambda p: torch.nn.Dropout(0.0))
    monkeypatch.setattr(ours_module, "CTGAN_DROPOUT", 0.0)
    table = tiny_table()
    models = []
    for cls in (ctgan.CTGAN, CTGAN):
        model = cls(embedding_dim=8, generator_dim=(16,), discriminator_dim=(16,), batch_size=2 * PAC, pac=PAC,
                    epochs=2, enable_gpu=False)
        model.set_random_state(0)
        model.fit(table, ["c", "d"])
        models.append(model)
    theirs, ours = models
    pd.testing.assert_frame_equal(ours.loss_values, theirs.loss_values, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(ours._generator.state_dict().items(), theirs._generator.state_dict().values()):
        if name.endswith("fc.bias"):
            torch.testing.assert_close(a, b, rtol=0, atol=4 * 2e-4 * 2 * 3)  # 2 epochs x 3 steps of lr
        elif name.endswith("running_mean"):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # the mean of the output: that bias
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    samples = [m.sample(30) for m in (theirs, ours)]
    pd.testing.assert_frame_equal(samples[1], samples[0], rtol=1e-3, atol=1e-4)


def test_sample_rows_draws_ctgans_rows(transformed):
    """The one-draw sampler returns ctgan's sample_data rows and leaves numpy's stream where
    ctgan's leaves it."""
    _, sampler, data = transformed
    for seed in range(20):
        np.random.seed(seed)
        _, _, col, opt = sampler.sample_condvec(50)
        state = np.random.get_state()
        theirs, after = sampler.sample_data(data, 50, col, opt), np.random.rand()
        np.random.set_state(state)
        ours = sample_rows(sampler, data, 50, col, opt)
        np.testing.assert_array_equal(ours, theirs)
        assert np.random.rand() == after
    np.random.seed(0)
    no_condition = sample_rows(sampler, data, 7, None, None)
    np.random.seed(0)
    np.testing.assert_array_equal(no_condition, sampler.sample_data(data, 7, None, None))


def test_fit_on_a_table_without_discrete_columns():
    table = tiny_table()[["x", "y"]]
    model = small_model(verbose=True, epochs=5)  # ctgan's progress bar and its loss description
    with pytest.warns(DeprecationWarning, match="`epochs` argument in `fit` method has been deprecated"):
        model.fit(table, epochs=1)  # as in ctgan: deprecated, and it wins over the constructor's
    assert len(model.loss_values) == 1
    assert list(model.sample(5).columns) == ["x", "y"]


def _error(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test compares what each raises
        return error
    raise AssertionError("no error raised")


@pytest.mark.parametrize("case", ["missing column", "null values", "not a table", "column index"])
def test_bad_input_errors_match_ctgans(case):
    table = tiny_table()
    data, columns = {
        "missing column": (table, ["c", "nope"]),
        "null values": (table.assign(x=table["x"].where(table.index != 3)), ["c", "d"]),
        "not a table": ([[1.0, 2.0]], []),
        "column index": (table[["x", "y"]].to_numpy(), [5]),
    }[case]
    theirs = _error(lambda: ctgan.CTGAN(epochs=1, enable_gpu=False).fit(data, columns))
    ours = _error(lambda: small_model().fit(data, columns))
    assert type(ours) is type(theirs) and str(ours) == str(theirs)
    if case == "null values":
        assert isinstance(ours, InvalidDataError)


def test_batch_size_not_a_multiple_of_pac_fails_as_in_ctgan():
    table = tiny_table(30)[["x", "c"]]
    with pytest.raises(AssertionError):  # ctgan: the assert in its Discriminator's forward
        ctgan.CTGAN(embedding_dim=8, generator_dim=(16,), discriminator_dim=(16,), batch_size=12, pac=PAC,
                    epochs=1, enable_gpu=False).fit(table, ["c"])
    with pytest.raises(AssertionError, match="batch_size=12 must be a multiple of pac=10") as info:
        small_model(batch_size=12).fit(table, ["c"])
    assert isinstance(info.value, (PacError, ValueError))
    with pytest.raises(AssertionError):  # ctgan's constructor: an even batch size
        small_model(batch_size=15)


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        small_model(backend="nope")
    # an explicit fused backend: runs once the kernels take dropout masks; until then says why not
    model = small_model(backend="torch")
    if fastgan.fused.unfusable_reason(MLPDiscriminator(4, (8,), pack=2, dropout=0.5)):
        with pytest.raises(ValueError, match="dropout"):
            model.fit(tiny_table(), ["c", "d"])
    else:
        model.fit(tiny_table(), ["c", "d"])


@pytest.mark.parametrize("dropout", [1.0, 1.5, -0.1])
def test_dropout_outside_unit_interval_is_an_error_naming_it(dropout):
    with pytest.raises(ValueError, match="dropout"):
        MLPDiscriminator(4, (8,), pack=2, dropout=dropout)
