"""Tests of training: learning, exact resume, determinism, export."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from astro_starglx.inference import predict_logits
from astro_starglx.preprocess import Normalization, compute_normalization
from astro_starglx.training import TrainConfig, _scheduler, augment_batch, fit


def toy_split(n, *, seed, size=15):
    """Point sources (stars) vs broader blobs (galaxies) in 7 bands."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.7).astype(np.int8)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    sigma = np.where(labels == 1, rng.uniform(1.8, 3.0, n), rng.uniform(0.9, 1.1, n))
    flux = rng.uniform(50, 200, n)
    prof = np.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2))
    prof *= (flux / (2 * np.pi * sigma**2))[:, None, None]
    stamps = prof[:, None] * np.linspace(0.5, 1.5, 7)[None, :, None, None]
    stamps = stamps + rng.normal(0, 1.0, stamps.shape)
    features = rng.normal(0, 1, (n, 7, 5))
    features[:, :, 3] += 2 * sigma[:, None]  # a size feature
    return SimpleNamespace(stamps=stamps.astype(np.float32),
                           noise=np.ones((n, 7), np.float32),
                           features=features.astype(np.float32), labels=labels)


@pytest.fixture(scope="module")
def data():
    return toy_split(384, seed=1), toy_split(128, seed=2)


def small_config(**kw):
    base = dict(model="rbim-lite", epochs=2, batch_size=64, lr=3e-3, seed=3, patience=10)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_a_separable_problem(data, tmp_path):
    train, val = data
    result = fit(train, val, config=small_config(epochs=4), output_dir=tmp_path)
    # the normalisation of the training features, as inference will use it
    assert isinstance(result.normalization, Normalization)
    assert result.normalization == compute_normalization(train.features, softening=3.0)
    logits = predict_logits(result.network, val, result.normalization)
    acc = np.mean(logits.argmax(1) == val.labels)
    assert acc > 0.9
    assert len(result.history) == 4
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_resume_is_exact(data, tmp_path):
    train, val = data
    config = small_config()
    full = fit(train, val, config=config, output_dir=tmp_path / "full")
    interrupted = tmp_path / "interrupted"
    _run_epochs(train, val, config, interrupted, stop_after=1)
    resumed = fit(train, val, config=config, output_dir=interrupted, resume=True)
    for (k, a), (_, b) in zip(full.network.state_dict().items(),
                              resumed.network.state_dict().items()):
        assert torch.equal(a, b), k
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]


def _run_epochs(train, val, config, output_dir, *, stop_after):
    """Run `fit` but stop after `stop_after` epochs, as a killed job would."""
    import astro_starglx.training as training

    class Stop(Exception):
        pass

    original = training._save_atomic
    calls = {"n": 0}

    def save_then_stop(obj, path):
        original(obj, path)
        calls["n"] += 1
        if calls["n"] >= stop_after:
            raise Stop

    training._save_atomic = save_then_stop
    try:
        with pytest.raises(Stop):
            fit(train, val, config=config, output_dir=output_dir)
    finally:
        training._save_atomic = original


def test_deterministic_for_a_seed(data, tmp_path):
    train, val = data
    a = fit(train, val, config=small_config(epochs=1), output_dir=tmp_path / "a")
    b = fit(train, val, config=small_config(epochs=1), output_dir=tmp_path / "b")
    c = fit(train, val, config=small_config(epochs=1, seed=4), output_dir=tmp_path / "c")
    sa, sb, sc = (r.network.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_global_rng_untouched(data, tmp_path):
    train, val = data
    state = torch.get_rng_state()
    fit(train, val, config=small_config(epochs=1), output_dir=tmp_path)
    assert torch.equal(state, torch.get_rng_state())


def test_resume_refuses_other_config(data, tmp_path):
    train, val = data
    fit(train, val, config=small_config(epochs=1), output_dir=tmp_path)
    with pytest.raises(ValueError, match="different TrainConfig"):
        fit(train, val, config=small_config(epochs=1, lr=1e-2), output_dir=tmp_path)


def test_augment_batch():
    rng = np.random.default_rng(0)
    stamps = rng.normal(size=(50, 7, 9, 9)).astype(np.float32)
    feats = rng.normal(size=(50, 7, 5)).astype(np.float32)
    before = stamps.copy()
    s2, f2 = augment_batch(stamps, feats, rng=rng, band_dropout=0.5)
    np.testing.assert_array_equal(stamps, before)  # input untouched
    # Dihedral transforms preserve each band's pixel values.
    kept = ~np.isnan(s2).any(axis=(2, 3))
    np.testing.assert_allclose(np.sort(s2[kept].reshape(kept.sum(), -1), axis=1),
                               np.sort(stamps[kept].reshape(kept.sum(), -1), axis=1))
    dropped = np.isnan(s2).all(axis=(2, 3))
    assert 10 < dropped.sum() < 40
    assert np.isnan(f2[dropped]).all()


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.5, 1.0])
def test_scheduler_warms_up_then_decays_to_zero(warmup_epochs):
    config = small_config(epochs=4, lr=0.1, warmup_epochs=warmup_epochs)
    steps_per_epoch = 10
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.lr)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs = np.array(lrs)
    warmup = max(1, int(warmup_epochs * steps_per_epoch))
    # linear warm-up from lr / warmup to the peak ...
    np.testing.assert_allclose(lrs[:warmup], config.lr * np.arange(1, warmup + 1) / warmup)
    assert lrs.max() == pytest.approx(config.lr)
    # ... then a cosine decay that ends at 0 after the last step
    decay = lrs[warmup:]
    assert decay[0] == pytest.approx(config.lr)
    assert np.all(np.diff(decay) < 0)
    assert 0 < decay[-1] < 0.01 * config.lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    middle = warmup + (len(lrs) - warmup) // 2
    assert lrs[middle] == pytest.approx(config.lr / 2, rel=0.1)


def test_config_errors():
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="vgg")
    with pytest.raises(ValueError, match="mode must be None"):
        TrainConfig(mode="both")
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
