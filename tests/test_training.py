"""Tests of training: learning, exact resume, determinism, export."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from astro_starglx import inference, training
from astro_starglx.csst import CSST_BANDS
from astro_starglx.features import FEATURE_NAMES, PSF_FEATURE_NAMES
from astro_starglx.inference import predict_logits
from astro_starglx.metrics import softmax
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


# --------------------------------------------------------------------------
# mid-epoch checkpoints, precision, feature subsets, PSF validity


def quick_split(n, *, seed):
    """`toy_split` on 9-pixel stamps with a stronger size feature: learnt in 2 epochs."""
    split = toy_split(n, seed=seed, size=9)
    split.features[:, :, 3] *= 2
    return split


@pytest.fixture(scope="module")
def quick_data():
    return quick_split(192, seed=5), quick_split(64, seed=6)


def quick_config(**kw):
    base = dict(model="rbim-lite", epochs=2, batch_size=32, lr=1e-2, seed=3, patience=10,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def uninterrupted(quick_data, tmp_path_factory):
    train, val = quick_data
    output_dir = tmp_path_factory.mktemp("full")
    result = fit(train, val, config=quick_config(), output_dir=output_dir)
    return SimpleNamespace(result=result, output_dir=output_dir)


def test_checkpoint_once_per_epoch_by_default(uninterrupted):
    log_text = (uninterrupted.output_dir / "train.log").read_text()
    assert "epoch 0:" in log_text and "epoch 1:" in log_text
    assert "checkpoint after batch" not in log_text  # 10 minutes never passed
    ckpt = torch.load(uninterrupted.output_dir / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["rng_state"]) == (2, 0, None)


def test_mid_epoch_resume_is_exact(quick_data, uninterrupted, tmp_path):
    train, val = quick_data
    # every batch checkpoints (1e-6 minutes); not part of the run's identity
    config = quick_config(checkpoint_minutes=1e-6)
    assert config.run_key() == quick_config().run_key()
    # 6 batches per epoch: saves 1-5 are within epoch 0, save 6 ends it, and
    # save 8 follows batch 2 of epoch 1
    _run_epochs(train, val, config, tmp_path, stop_after=8)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert ckpt["rng_state"] is not None and ckpt["torch_rng"] is not None
    assert ckpt["n_seen"] == 2 * config.batch_size and len(ckpt["history"]) == 1
    resumed = fit(train, val, config=config, output_dir=tmp_path, resume=True)
    full = uninterrupted.result.network.state_dict()
    for key, value in resumed.network.state_dict().items():
        assert torch.equal(value, full[key]), key
    assert resumed.history == uninterrupted.result.history
    log_text = (tmp_path / "train.log").read_text()
    assert f"resumed from {tmp_path / 'checkpoint.pt'} at epoch 1, batch 2" in log_text
    assert "epoch 0: checkpoint after batch 1 of 6" in log_text


def test_fit_without_validation_runs_the_whole_schedule(quick_data, tmp_path):
    """val=None: every epoch runs (patience unused) and the last weights are kept."""
    train, val = quick_data
    config = quick_config(epochs=3, patience=1)
    result = fit(train, None, config=config, output_dir=tmp_path)
    assert [entry["epoch"] for entry in result.history] == [0, 1, 2]
    assert all(set(entry) == {"epoch", "train_loss", "lr"} for entry in result.history)
    assert result.best_epoch == 2
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key, value in result.network.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key
    p = softmax(predict_logits(result.network, val, result.normalization))[:, 1]
    assert np.mean((p >= 0.5) == val.labels) > 0.9  # it learns the problem


def test_precision_fp32_and_bf16_agree(quick_data, uninterrupted, tmp_path):
    """bf16 autocast (emulated on CPUs without native bf16; the LSTM stays fp32)."""
    train, val = quick_data
    config = quick_config(precision="bf16")
    assert config.use_bf16(torch.device("cpu"))
    assert not quick_config().use_bf16(torch.device("cpu"))
    bf16 = fit(train, val, config=config, output_dir=tmp_path)
    assert "bf16 autocast" in (tmp_path / "train.log").read_text()
    fp32 = uninterrupted.result
    p32 = softmax(predict_logits(fp32.network, val, fp32.normalization))[:, 1]
    p16 = softmax(predict_logits(bf16.network, val, bf16.normalization))[:, 1]
    # both learn the problem ...
    assert np.mean((p32 >= 0.5) == val.labels) > 0.95
    assert np.mean((p16 >= 0.5) == val.labels) > 0.95
    # ... to the same classes and nearly the same probabilities (0.04 measured)
    np.testing.assert_array_equal(p32 >= 0.5, p16 >= 0.5)
    assert np.max(np.abs(p32 - p16)) < 0.1
    # and bf16 really ran: the weights are not those of the fp32 run
    state = fp32.network.state_dict()
    assert not all(torch.equal(v, state[k]) for k, v in bf16.network.state_dict().items())


def test_precision_auto(monkeypatch):
    config = TrainConfig()
    assert config.precision == "auto"
    assert config.use_bf16(torch.device("cuda"))
    for native in (False, True):
        monkeypatch.setattr(inference, "_cpu_native_bf16", lambda native=native: native)
        assert config.use_bf16(torch.device("cpu")) is native
    assert TrainConfig(precision="fp32").use_bf16(torch.device("cuda")) is False
    monkeypatch.undo()
    assert isinstance(inference._cpu_native_bf16(), bool)


def test_new_config_errors_and_run_key():
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32' or 'bf16', got 'fp16'"):
        TrainConfig(precision="fp16")
    for minutes in (0, -1.0):
        with pytest.raises(ValueError, match="checkpoint_minutes must be > 0"):
            TrainConfig(checkpoint_minutes=minutes)
    for features in ("mag", (), ["mag", 3]):
        with pytest.raises(ValueError, match="features must be None or a non-empty sequence"):
            TrainConfig(features=features)
    config = TrainConfig(features=["mag", "radius"])
    assert config.features == ("mag", "radius")
    key = config.run_key()
    assert "checkpoint_minutes" not in key and key["features"] == ["mag", "radius"]
    assert json.loads(json.dumps(key)) == key
    assert TrainConfig(checkpoint_minutes=1.0).run_key() == TrainConfig().run_key()
    assert TrainConfig(precision="bf16").run_key() != TrainConfig().run_key()
    assert TrainConfig(features=["mag"]).run_key() != TrainConfig().run_key()
    assert TrainConfig(threshold_max_mag=25).run_key() == TrainConfig().run_key()
    for bad in (float("nan"), "25", True):
        with pytest.raises(ValueError, match="threshold_max_mag must be None or a finite"):
            TrainConfig(threshold_max_mag=bad)


ALL_FEATURES = list(FEATURE_NAMES + PSF_FEATURE_NAMES)


def test_select_features():
    split = quick_split(8, seed=7)
    split.features = np.arange(8 * 7 * 8, dtype=np.float32).reshape(8, 7, 8)
    info = {"feature_names": ALL_FEATURES}
    names, splits = training._select_features(TrainConfig(), info, [split])
    assert names == ALL_FEATURES and splits[0] is split
    names, (sub,) = training._select_features(TrainConfig(features=["psf_fwhm", "mag"]), info,
                                              [split])
    assert names == ["psf_fwhm", "mag"]
    np.testing.assert_array_equal(sub.features, split.features[:, :, [5, 0]])
    assert sub.stamps is split.stamps and sub.labels is split.labels
    with pytest.raises(ValueError, match=r"TrainConfig.features names \['size'\], which the "
                                         r"data set does not have; it has \['mag'"):
        training._select_features(TrainConfig(features=["mag", "size"]), info, [split])


def test_psf_validity():
    rng = np.random.default_rng(8)
    bands = ["g", "r"]
    features = rng.normal(size=(1000, 2, 3)).astype(np.float32)
    features[:, 0, 1] = rng.uniform(0.1, 0.2, 1000)
    features[:, 1, 1] = rng.uniform(0.15, 0.3, 1000)
    features[:5, 1, 1] = np.nan  # unmeasured: ignored
    info = {"bands": bands, "nominal_fwhm": {"g": 0.13, "r": np.float64(0.14), "i": 0.15}}
    names = ["mag", "psf_fwhm", "radius"]
    psf = training._psf_validity(info, SimpleNamespace(features=features), names)
    assert psf["nominal_fwhm"] == {"g": 0.13, "r": 0.14}
    assert type(psf["nominal_fwhm"]["r"]) is float
    for c, band in enumerate(bands):
        values = features[:, c, 1][np.isfinite(features[:, c, 1])]
        # the central 99 %, widened by 2 % on each side
        expected = np.round(np.quantile(values, [0.005, 0.995]) * [0.98, 1.02], 4)
        np.testing.assert_allclose(psf["fwhm_range"][band], expected, atol=1e-12)
        assert psf["fwhm_range"][band][0] < values.min() * 1.01
        assert psf["fwhm_range"][band][1] > values.max() * 0.99
    assert json.loads(json.dumps(psf)) == psf
    # one PSF for every source of a band (e.g. all fell back): still a range
    same = features.copy()
    same[:, 0, 1] = 0.13
    same[:, 1, 1] = np.nan  # a band never measured: around its nominal PSF
    ranges = training._psf_validity(info, SimpleNamespace(features=same), names)["fwhm_range"]
    assert ranges["g"][0] < 0.13 < ranges["g"][1]
    assert ranges["r"][0] < 0.14 < ranges["r"][1]
    assert training._psf_validity(info, SimpleNamespace(features=features),
                                  ["mag", "radius_excess", "radius"]) is None
    assert "gamma_range" not in psf
    # a model that reads the profile's shape: its central 99 %, widened by 0.05
    features[:, 0, 2] = rng.uniform(-0.2, 0.5, 1000)
    features[:, 1, 2] = np.nan  # never fitted (e.g. the band always fell back)
    psf = training._psf_validity(info, SimpleNamespace(features=features),
                                 ["mag", "psf_fwhm", "psf_gamma"])
    expected = np.round(np.quantile(features[:, 0, 2], [0.005, 0.995]) + [-0.05, 0.05], 4)
    np.testing.assert_allclose(psf["gamma_range"]["g"], expected, atol=1e-12)
    assert psf["gamma_range"]["r"] == [-0.05, 0.05]  # only a Gaussian is "seen"
    assert json.loads(json.dumps(psf)) == psf


def write_toy_dataset(path, *, sizes=(96, 32, 32), seed=11):
    """A data set directory in the format of `astro_starglx.dataset.make_dataset`."""
    from astropy.table import Table

    path.mkdir()
    for k, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        data = quick_split(n, seed=20 + k + 10 * (seed - 11))
        features = np.concatenate(
            [data.features, np.zeros((n, 7, len(PSF_FEATURE_NAMES)), np.float32)], axis=2)
        features[:, :, ALL_FEATURES.index("psf_fwhm")] = np.random.default_rng(k).uniform(
            0.1, 0.25, (n, 7))
        features[:, :, ALL_FEATURES.index("psf_gamma")] = np.random.default_rng(k).uniform(
            -0.1, 0.4, (n, 7))
        arrays = {"stamps": data.stamps, "noise": data.noise, "features": features,
                  "labels": data.labels, "flags": np.zeros(n, np.uint16)}
        for name, array in arrays.items():
            np.save(path / f"{split}_{name}.npy", array)
        Table({"label": np.where(data.labels == 1, "galaxy", "star"),
               "mag_r": np.linspace(20, 26, n)}).write(path / f"{split}_catalog.ecsv")
    info = {"bands": list(CSST_BANDS), "stamp_size": 9, "pixel_scale": 0.074, "seed": seed,
            "config": {"seed": seed}, "feature_names": ALL_FEATURES,
            "nominal_fwhm": {band: 0.13 for band in CSST_BANDS},
            "class_names": ["star", "galaxy"]}
    (path / "dataset.json").write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("features", [("mag", "radius"), ("radius", "psf_fwhm"),
                                      ("psf_fwhm", "psf_gamma", "concentration_model_excess")])
def test_train_release_records_the_feature_subset(tmp_path, features):
    from astro_starglx.weights import read_meta

    dataset = write_toy_dataset(tmp_path / "ds")
    config = quick_config(epochs=1, features=features)
    path = training.train_release(dataset, tmp_path / "out", config=config, device="cpu",
                                  progress=False)
    meta = read_meta(path)
    assert meta.feature_names == features
    assert meta.normalization.shape == (7, len(features))
    assert meta.architecture["n_features"] == len(features)
    assert meta.recipe["config"]["features"] == list(features)
    if "psf_fwhm" in features:
        assert meta.psf["nominal_fwhm"] == {band: 0.13 for band in CSST_BANDS}
        for low, high in meta.psf["fwhm_range"].values():
            # the data's 0.1-0.25 (central 99 %), widened by 2 %
            assert 0.098 <= low < 0.11 and 0.24 < high <= 0.255
        if "psf_gamma" in features:
            for low, high in meta.psf["gamma_range"].values():
                # the data's -0.1-0.4, widened by 0.05
                assert -0.151 <= low < -0.09 and 0.39 < high <= 0.451
        else:
            assert "gamma_range" not in meta.psf
    else:
        assert meta.psf is None


def test_train_release_continues_from_init(tmp_path):
    """init= starts from a model's weights and normalisation, and the recipe names it."""
    from astro_starglx.weights import load_model

    dataset = write_toy_dataset(tmp_path / "ds")
    first = training.train_release(dataset, tmp_path / "a", config=quick_config(epochs=1),
                                   device="cpu", progress=False)
    start = load_model(first, device="cpu")
    # a learning rate too small to move the weights: the result is the start
    again = training.train_release(dataset, tmp_path / "b", device="cpu", progress=False,
                                   config=quick_config(epochs=1, lr=1e-12,
                                                       weight_decay=0.0),
                                   init=first, name="continued")
    result = load_model(again, device="cpu")
    assert result.meta.recipe["init"] == {"name": start.name, "sha256": start.sha256}
    for key in ("feature_mean", "feature_std"):
        np.testing.assert_array_equal(getattr(result.meta.normalization, key),
                                      getattr(start.meta.normalization, key))
    before, after = start.network.state_dict(), result.network.state_dict()
    weights = [k for k, v in before.items() if k.endswith("weight") and v.ndim > 1]
    assert weights
    for key in weights:  # fp16 files: equal to their precision
        torch.testing.assert_close(after[key], before[key], rtol=1e-3, atol=1e-4)
    # a fresh start with the same seed does not give those weights
    fresh = load_model(training.train_release(
        dataset, tmp_path / "c", device="cpu", progress=False,
        config=quick_config(epochs=1, lr=1e-12, weight_decay=0.0, seed=4)), device="cpu")
    assert not any(torch.allclose(fresh.network.state_dict()[k], before[k])
                   for k in weights)
    assert fresh.meta.recipe["init"] is None


def test_train_release_refuses_an_init_of_another_kind(tmp_path):
    dataset = write_toy_dataset(tmp_path / "ds")
    first = training.train_release(dataset, tmp_path / "a", progress=False, device="cpu",
                                   config=quick_config(epochs=1, features=("mag", "radius")))
    with pytest.raises(ValueError, match=r"init=.* has feature_names .*leave init out"):
        training.train_release(dataset, tmp_path / "b", config=quick_config(epochs=1),
                               device="cpu", progress=False, init=first)
    info = json.loads((dataset / "dataset.json").read_text())
    info["pixel_scale"] = 0.396
    (dataset / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="pixels of 0.074 arcsec.*fine_tune"):
        training.train_release(dataset, tmp_path / "c", progress=False, device="cpu",
                               config=quick_config(epochs=1, features=("mag", "radius")),
                               init=first)


def test_load_dataset_concatenates_several_sets(tmp_path):
    from astro_starglx.dataset import load_dataset

    first = write_toy_dataset(tmp_path / "a", sizes=(40, 20, 10))
    second = write_toy_dataset(tmp_path / "b", sizes=(30, 12, 8), seed=12)
    for split, (n1, n2) in zip(("train", "val", "test"), ((40, 30), (20, 12), (10, 8))):
        a, b = load_dataset(first, split), load_dataset(second, split)
        both = load_dataset([first, second], split)
        assert len(both) == len(both.catalog) == n1 + n2
        for name in ("stamps", "noise", "features", "labels", "flags"):
            np.testing.assert_array_equal(getattr(both, name),
                                          np.concatenate([getattr(a, name), getattr(b, name)]))
        assert list(both.catalog["dataset"]) == [0] * n1 + [1] * n2
        assert both.info["seed"] == [11, 12]
        assert both.info["datasets"] == [str(first), str(second)]
        assert both.info["counts"][split] == n1 + n2
    # one directory in a list is that data set
    assert load_dataset([first], "val").info["seed"] == 11


def test_load_dataset_refuses_incompatible_sets(tmp_path):
    from astro_starglx.dataset import load_dataset

    first = write_toy_dataset(tmp_path / "a", sizes=(8, 4, 4))
    second = write_toy_dataset(tmp_path / "b", sizes=(8, 4, 4), seed=12)
    info = json.loads((second / "dataset.json").read_text())
    info["pixel_scale"] = 0.396
    (second / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="differ in pixel_scale"):
        load_dataset([first, second], "train")
    with pytest.raises(ValueError, match="at least one data set"):
        load_dataset([], "train")
    with pytest.raises(FileNotFoundError, match="make-dataset"):
        load_dataset([first, tmp_path], "train")


def test_train_release_on_two_data_sets(tmp_path):
    from astro_starglx.weights import read_meta

    first = write_toy_dataset(tmp_path / "a")
    second = write_toy_dataset(tmp_path / "b", sizes=(64, 16, 24), seed=12)
    path = training.train_release([first, second], tmp_path / "out",
                                  config=quick_config(epochs=1), device="cpu", progress=False)
    meta = read_meta(path)
    assert meta.recipe["data_seed"] == [11, 12]
    assert meta.recipe["dataset"] == [{"seed": 11}, {"seed": 12}]
    test = meta.metrics["test"]["all"]
    assert test["n_star"] + test["n_galaxy"] == 32 + 24


def test_train_release_threshold_on_bright_validation_sources(tmp_path, monkeypatch):
    """threshold_max_mag fits the threshold on val sources with mag_r <= it; a finished run
    re-exports with another value without training again."""
    from astro_starglx import metrics
    from astro_starglx.dataset import load_dataset
    from astro_starglx.inference import calibrated_proba
    from astro_starglx.weights import load_model

    dataset = write_toy_dataset(tmp_path / "ds", sizes=(96, 64, 32))
    out = tmp_path / "out"
    first = training.train_release(dataset, out, config=quick_config(epochs=1),
                                   device="cpu", progress=False)
    state = load_model(first).network.state_dict()
    config = quick_config(epochs=1, threshold_max_mag=23.0)
    seen = []
    original = metrics.best_threshold

    def spy(y, p, **kwargs):
        seen.append(len(y))
        return original(y, p, **kwargs)

    monkeypatch.setattr(training.metrics, "best_threshold", spy)
    path = training.train_release(dataset, out, config=config, device="cpu", progress=False)
    fitted = list(seen)
    model = load_model(path)
    # the same network: the run was finished, only the calibration is redone
    assert all(torch.equal(state[k], v) for k, v in model.network.state_dict().items())
    assert model.meta.recipe["config"]["threshold_max_mag"] == 23.0
    val = load_dataset(dataset, "val")
    p = calibrated_proba(predict_logits(model.network, val, model.meta.normalization,
                                        device="cpu"), model.meta)[:, 1]
    bright = np.asarray(val.catalog["mag_r"]) <= 23.0
    assert 0 < bright.sum() < len(bright)
    expected = metrics.best_threshold(np.asarray(val.labels)[bright], p[bright],
                                      criterion="balanced")
    # the weights are stored in fp16: p moves by ~1e-4
    assert model.meta.threshold == pytest.approx(expected, abs=2e-3)
    assert fitted == [bright.sum()]  # fitted on the bright validation sources only
    with pytest.raises(ValueError, match="no validation star or no galaxy"):
        training.train_release(dataset, out, config=quick_config(
            epochs=1, threshold_max_mag=10.0), device="cpu", progress=False)
    (dataset / "val_catalog.ecsv").unlink()
    from astropy.table import Table
    Table({"label": np.where(val.labels == 1, "galaxy", "star")}).write(
        dataset / "val_catalog.ecsv")
    with pytest.raises(ValueError, match="needs a mag_r column"):
        training.train_release(dataset, out, config=config, device="cpu", progress=False)
