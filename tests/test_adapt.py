"""Tests of astro_starglx.adapt: labels, splits, labelled inputs, fine_tune, priors."""

import json
import types
import warnings

import numpy as np
import pytest
import torch
from astropy.nddata import CCDData
from astropy.table import MaskedColumn, Table
from astropy.utils.exceptions import AstropyUserWarning

import astro_starglx
from astro_starglx.adapt import (
    LabelledInputs,
    fine_tune,
    labelled_inputs,
    parse_labels,
    reweight_prior,
    stratified_folds,
    stratified_split,
)
from astro_starglx.meta import ModelMeta
from astro_starglx.training import TrainConfig, fit
from astro_starglx.weights import load_model, save_weights
from conftest import make_tiny_meta, seeded_state_dict


# A "user survey" that is not the models' CSST: another pixel scale and a
# PSF 1.6 times the nominal one.
USER_PIXEL_SCALE = 0.1


@pytest.fixture(scope="module")
def user_field():
    pytest.importorskip("galsim")
    from astro_starglx.simulate import simulate_field

    images, truth = simulate_field(shape=(256, 256), seed=11, psf_scale=1.6,
                                   pixel_scale=USER_PIXEL_SCALE, n_stars=36, n_galaxies=44)
    catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"]})
    return catalog, images


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    meta = make_tiny_meta()
    save_weights(path, seeded_state_dict(meta), meta)
    return path


@pytest.fixture(scope="module")
def psf_base(tmp_path_factory):
    """A tiny PSF-aware model (reads psf_fwhm), nominal PSFs of CSST."""
    path = tmp_path_factory.mktemp("psfbase") / "tiny-psf.safetensors"
    meta = make_tiny_meta("tiny-psf")
    meta["feature_names"] = meta["feature_names"] + ["psf_fwhm"]
    meta["architecture"]["n_features"] = 6
    meta["normalization"]["feature_mean"] = [row + [0.2] for row in
                                             meta["normalization"]["feature_mean"]]
    meta["normalization"]["feature_std"] = [row + [0.1] for row in
                                            meta["normalization"]["feature_std"]]
    meta["psf"] = {"nominal_fwhm": {b: 0.15 for b in meta["bands"]},
                   "fwhm_range": {b: [0.1, 0.3] for b in meta["bands"]}}
    meta["depth"] = {b: 26.0 for b in meta["bands"]}  # its training data's, not the user's
    save_weights(path, seeded_state_dict(meta), meta)
    return path


@pytest.fixture(scope="module")
def fine_tuned(user_field, tiny_base, tmp_path_factory):
    catalog, images = user_field
    output = tmp_path_factory.mktemp("ft")
    path = fine_tune(catalog, images, output=output, base=str(tiny_base), epochs=2,
                     batch_size=32, seed=1, device="cpu")
    return path


def _state(path):
    return load_model(path, device="cpu").network.state_dict()


# ---------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("values, expected", [
    (["Star", "GALAXY", " star ", "galaxy"], [0, 1, 0, 1]),
    ([b"star", b"galaxy"], [0, 1]),
    ([0, 1, 1], [0, 1, 1]),
    (np.array([0.0, 1.0]), [0, 1]),
    ([True, False], [1, 0]),
    (np.array(["star", 1], dtype=object), None),  # mixed: numpy makes strings -> error
])
def test_parse_labels(values, expected):
    if expected is None:
        with pytest.raises(ValueError, match="label column 'label'"):
            parse_labels(values)
        return
    labels = parse_labels(values)
    assert labels.dtype == np.int8
    assert labels.tolist() == expected


def test_parse_labels_errors():
    with pytest.raises(ValueError, match=r"'cls' must hold .*\['QSO', 'unknown'\] in 2 row"):
        parse_labels(["star", "QSO", "galaxy", "unknown"], column="cls")
    with pytest.raises(ValueError, match=r"'label' must hold .*\['2'\] in 1 row"):
        parse_labels([0, 1, 2])
    with pytest.raises(ValueError, match=r"\['nan'\]"):
        parse_labels([0.0, np.nan])
    with pytest.raises(ValueError, match="'label' has 1 masked value"):
        parse_labels(MaskedColumn(["star", "galaxy"], mask=[False, True]))
    with pytest.raises(ValueError, match="must be 1-D"):
        parse_labels(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dtype complex"):
        parse_labels(np.array([1j]))


def test_parse_labels_allow_missing():
    """Masked values, NaN, None and blanks are 'no label' (-1) only when allowed."""
    column = MaskedColumn(["star", "galaxy", "x", "star"], mask=[False, False, True, False])
    assert parse_labels(column, allow_missing=True).tolist() == [0, 1, -1, 0]
    assert parse_labels([0.0, np.nan, 1.0], allow_missing=True).tolist() == [0, -1, 1]
    assert parse_labels(np.array(["galaxy", None, "star"], dtype=object),
                        allow_missing=True).tolist() == [1, -1, 0]
    assert parse_labels(["", " star", "  "], allow_missing=True).tolist() == [-1, 0, -1]
    assert parse_labels(np.array([0, None, 1], dtype=object),
                        allow_missing=True).tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match=r"has 1 masked value.*self_training=True"):
        parse_labels(column)
    with pytest.raises(ValueError, match=r"\['QSO'\] in 1 row"):  # other values still fail
        parse_labels(["QSO", ""], allow_missing=True)
    with pytest.raises(ValueError, match="allow_missing must be"):
        parse_labels(["star"], allow_missing="yes")


def test_labelled_inputs_label_errors(user_field, tiny_base):
    catalog, images = user_field
    meta = load_model(tiny_base).meta
    with pytest.raises(ValueError, match="label_column 'kind' is not in the catalog"):
        labelled_inputs(catalog, images, meta=meta, label_column="kind")
    bad = catalog.copy()
    bad["label"] = ["qso"] + list(bad["label"][1:])
    with pytest.raises(ValueError, match=r"'label' must hold .*\['qso'\]"):
        labelled_inputs(bad, images, meta=meta)


# ---------------------------------------------------------------------------
# split


def test_stratified_split_counts():
    labels = np.array([0] * 30 + [1] * 70)
    train, val = stratified_split(labels, val_fraction=0.3, seed=4)
    assert np.bincount(labels[val]).tolist() == [9, 21]
    assert np.bincount(labels[train]).tolist() == [21, 49]
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).tolist() == list(range(100))
    again = stratified_split(labels, val_fraction=0.3, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again))
    other = stratified_split(labels, val_fraction=0.3, seed=5)
    assert not np.array_equal(val, other[1])
    # a rare class keeps at least one member on each side
    train, val = stratified_split(np.array([0, 0] + [1] * 20), val_fraction=0.05, seed=0)
    assert (np.array([0, 0] + [1] * 20)[val] == 0).sum() == 1


def test_stratified_split_errors():
    with pytest.raises(ValueError, match="at least 2 stars and 2 galaxies.*got 1 stars"):
        stratified_split([0, 1, 1, 1], val_fraction=0.3, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split([0, 0, 1, 1], val_fraction=1.0, seed=0)


# ---------------------------------------------------------------------------
# labelled inputs


def test_labelled_inputs_one_field(user_field, tiny_base):
    catalog, images = user_field
    meta = load_model(tiny_base).meta
    data = labelled_inputs(catalog, images, meta=meta.to_dict())  # a dict meta works too
    assert isinstance(data, LabelledInputs)
    n = len(data)
    assert 0 < n <= len(catalog) and n + data.n_dropped == len(catalog)
    assert data.stamps.shape == (n, 7, meta.stamp_size, meta.stamp_size)
    assert data.features.shape == (n, 7, len(meta.feature_names))
    assert data.pixel_scale == pytest.approx(USER_PIXEL_SCALE, rel=1e-6)
    expected = (np.char.lower(np.asarray(catalog["label"], dtype=str)) == "galaxy")
    assert np.array_equal(data.labels, expected[data.row])
    assert (data.field == 0).all()
    # not PSF-aware: no PSF measured
    assert np.isnan(data.psf_fwhm).all()
    # the same extraction as classify(): magnitudes from the header zero points
    assert np.isfinite(data.features[:, 3, 0]).mean() > 0.5


def test_labelled_inputs_maps_bands_by_name(user_field, tiny_base):
    catalog, images = user_field
    meta = load_model(tiny_base).meta
    # A survey with g, r, i only, and one band the model does not read.
    mine = {"g": images["g"], "r": images["r"], "i": images["i"], "H": images["y"]}
    data = labelled_inputs(catalog, mine, meta=meta)
    bands = list(meta.bands)
    for band in ("NUV", "u", "z", "y"):
        assert np.isnan(data.stamps[:, bands.index(band)]).all()
        assert np.isnan(data.features[:, bands.index(band)]).all()
    assert np.isfinite(data.stamps[:, bands.index("r")]).any()
    full = labelled_inputs(catalog, images, meta=meta)
    assert np.array_equal(data.stamps[:, bands.index("r")], full.stamps[:, bands.index("r")],
                          equal_nan=True)
    with pytest.raises(ValueError, match="has bands .* but the model .* reads"):
        labelled_inputs(catalog, {"H": images["y"]}, meta=meta)


def test_labelled_inputs_pixel_scale_and_sequences(user_field, tiny_base):
    catalog, images = user_field
    meta = load_model(tiny_base).meta
    half = len(catalog) // 2
    # positions as given: each field's refinement would measure its own
    # bands' offsets from its own sources (tested below)
    data = labelled_inputs([catalog[:half], catalog[half:]], [images, images], meta=meta,
                           refine_positions=False)
    one = labelled_inputs(catalog, images, meta=meta, refine_positions=False)
    assert len(data) == len(one)
    assert set(np.unique(data.field)) == {0, 1}
    rows = np.where(data.field == 0, data.row, data.row + half)
    assert np.array_equal(rows, one.row)
    assert np.array_equal(data.features, one.features, equal_nan=True)
    # refined (the default, as classify() does): exact positions barely move
    refined = labelled_inputs([catalog[:half], catalog[half:]], [images, images], meta=meta)
    assert np.array_equal(refined.row, data.row)
    # (moves of thousandths of a pixel; a faint source's stamp may then be cut
    # one pixel over, and its background and magnitude change by its noise)
    diff = np.abs(refined.features[..., 0] - data.features[..., 0])
    assert np.nanmedian(diff) < 0.005 and np.nanmean(diff > 0.05) < 0.05
    # an explicit pixel scale wins over the WCS
    scaled = labelled_inputs(catalog, images, meta=meta, pixel_scale=0.2)
    assert scaled.pixel_scale == 0.2
    with pytest.raises(ValueError, match="one entry per field"):
        labelled_inputs([catalog, catalog], [images], meta=meta)
    with pytest.raises(TypeError, match="images must be a sequence"):
        labelled_inputs([catalog], images, meta=meta)
    with pytest.raises(ValueError, match="zeropoints must be one value for all fields"):
        labelled_inputs([catalog, catalog], [images, images], meta=meta,
                        zeropoints=[{"r": 25.0}])
    with pytest.raises(ValueError, match="pixel_scale must be"):
        labelled_inputs(catalog, images, meta=meta, pixel_scale=-1.0)


def test_labelled_inputs_drops_rows_off_the_images(user_field, tiny_base, caplog):
    catalog, images = user_field
    meta = load_model(tiny_base).meta
    far = catalog.copy()
    far["ra"][0] += 1.0  # a degree away: off every band
    with caplog.at_level("INFO", logger="astro_starglx.adapt"):
        data = labelled_inputs(far, images, meta=meta)
    assert data.n_dropped >= 1 and 0 not in data.row
    assert "left out" in caplog.text


# ---------------------------------------------------------------------------
# fit(init_state=...)


def test_fit_starts_from_init_state(tmp_path):
    meta = make_tiny_meta()
    init = seeded_state_dict(meta, seed=7)
    rng = np.random.default_rng(0)
    n = 24
    split = type("Split", (), {})()
    split.stamps = rng.normal(size=(n, 7, 15, 15)).astype(np.float32)
    split.noise = np.ones((n, 7), np.float32)
    split.features = rng.normal(size=(n, 7, 5)).astype(np.float32)
    split.labels = np.arange(n) % 2
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-12, weight_decay=0.0, seed=0)
    result = fit(split, split, config=config, output_dir=tmp_path, init_state=init,
                 architecture=meta["architecture"])
    params = dict(result.network.named_parameters())
    for key, value in params.items():
        assert torch.allclose(value.detach(), init[key], atol=1e-6), key
    fresh = fit(split, split, config=config, output_dir=tmp_path / "fresh",
                architecture=meta["architecture"])
    assert any(not torch.allclose(v.detach(), init[k], atol=1e-3)
               for k, v in fresh.network.named_parameters())


# ---------------------------------------------------------------------------
# fine_tune


def test_fine_tune_writes_a_usable_model(fine_tuned, user_field, tiny_base):
    from astro_starglx import StarGalaxyClassifier

    catalog, images = user_field
    assert fine_tuned.name == "tiny-ft.safetensors" and fine_tuned.is_file()
    assert (fine_tuned.parent / "checkpoint.pt").is_file()
    assert json.loads((fine_tuned.parent / "metrics.json").read_text())["validation"]
    clf = StarGalaxyClassifier(fine_tuned, device="cpu")
    with warnings.catch_warnings():
        # per-source flags (blends, edges) may be summarised in a warning
        warnings.simplefilter("ignore", AstropyUserWarning)
        out = clf.classify(catalog, images)
    assert set(out["class"][~out["class"].mask]) <= {"star", "galaxy"}
    assert np.isfinite(np.asarray(out["p_galaxy"][~out["p_galaxy"].mask])).all()

    meta = clf.meta
    base = load_model(tiny_base)
    assert meta.name == "tiny-ft"
    assert meta.pixel_scale == pytest.approx(USER_PIXEL_SCALE, rel=1e-6)
    assert meta.bands == base.meta.bands and meta.stamp_size == base.meta.stamp_size
    recipe = meta.recipe
    assert recipe["command"].startswith("astro_starglx.fine_tune(")
    # "auto" is recorded as the scale it resolved to, so the call reproduces it
    assert f"feature_scale={meta.feature_scale:g})" in recipe["command"]
    assert recipe["data_seed"] == 1
    assert recipe["base"] == {"name": "tiny", "sha256": base.sha256}
    assert recipe["mode"] == "fine-tune"
    assert recipe["n_train"] + recipe["n_val"] + recipe["n_dropped"] == len(catalog)
    assert recipe["config"]["epochs"] == 2 and recipe["config"]["lr"] == 1e-3
    # cross-fitted: five fold trainings, then the written one on every labelled source
    assert recipe["folds"] == 5 and recipe["n_val"] == 0
    assert recipe["n_calibration"] == recipe["n_train"] and recipe["val_fraction"] is None
    assert sorted(p.name for p in (fine_tuned.parent / "folds").iterdir()) == list("01234")
    assert "folds=5" in recipe["command"] and "val_fraction" not in recipe["command"]
    # the whole schedule, no early stopping: the last epoch's weights
    assert recipe["epochs_run"] == 2 and recipe["best_epoch"] == 1
    assert set(meta.metrics) == {"validation", "base_validation", "history"}
    # the out-of-fold predictions of every labelled source make the validation report
    report = meta.metrics["validation"]
    assert report["n_star"] + report["n_galaxy"] == recipe["n_train"]
    # a trained model decides at the class-balanced 0.5; the temperature is refitted
    assert meta.threshold == 0.5 and meta.thresholds is None
    assert 0.1 <= meta.temperature <= 10
    # refitted to the user's features, so different from the base's
    assert meta.normalization != base.meta.normalization
    # trained: the weights moved away from the base
    state, base_state = _state(fine_tuned), base.network.state_dict()
    assert any(not torch.equal(state[k], base_state[k]) for k in state)


def test_fine_tune_calibrates_on_out_of_fold_predictions(fine_tuned, user_field, tiny_base):
    """Each fold's network predicts the fold it never saw; the temperature is fitted on them."""
    from astro_starglx import metrics
    from astro_starglx.inference import predict_logits
    from astro_starglx.model import build_model
    from astro_starglx.preprocess import Normalization

    catalog, images = user_field
    meta = load_model(fine_tuned).meta
    base = load_model(tiny_base)
    data = labelled_inputs(catalog, images, meta=base.meta, feature_scale="auto")
    logits = np.zeros((len(data), 2), dtype=np.float32)
    for k, (_, held_out) in enumerate(stratified_folds(data.labels, folds=5, seed=1)):
        ckpt = torch.load(fine_tuned.parent / "folds" / str(k) / "checkpoint.pt",
                          map_location="cpu", weights_only=True)
        network = build_model(meta.architecture)
        network.load_state_dict(ckpt["model"])
        network.eval()
        logits[held_out] = predict_logits(network, data.take(held_out),
                                          Normalization.from_dict(ckpt["normalization"]),
                                          device="cpu")
    temperature = metrics.fit_temperature(logits, data.labels.astype(np.int64),
                                          bounds=(0.1, 10.0))
    assert meta.temperature == pytest.approx(temperature, rel=1e-4)
    p = metrics.softmax(logits, temperature=temperature)[:, 1]
    report = metrics.classification_report(data.labels, p, threshold=0.5)
    assert meta.metrics["validation"]["recall_star"] == pytest.approx(report["recall_star"])


def test_fine_tune_one_split(user_field, tiny_base, tmp_path):
    """folds=1: one stratified split, early stopping on it, calibrated on its validation part."""
    catalog, images = user_field
    path = fine_tune(catalog, images, output=tmp_path, base=str(tiny_base), epochs=3,
                     folds=1, val_fraction=0.25, patience=1, batch_size=32, seed=4)
    meta = load_model(path).meta
    recipe = meta.recipe
    data = labelled_inputs(catalog, images, meta=load_model(tiny_base).meta)
    _, val = stratified_split(data.labels, val_fraction=0.25, seed=4)
    assert recipe["folds"] == 1 and recipe["n_val"] == val.size == recipe["n_calibration"]
    assert recipe["n_train"] == len(data) - val.size and recipe["val_fraction"] == 0.25
    assert "folds=1, val_fraction=0.25, patience=1" in recipe["command"]
    report = meta.metrics["validation"]
    assert report["n_star"] == int((data.labels[val] == 0).sum())
    # validated every epoch, and the kept weights are the best epoch's
    history = meta.metrics["history"]
    assert all("val_loss" in entry for entry in history)
    losses = [entry["val_loss"] for entry in history]
    assert recipe["best_epoch"] == int(np.argmin(losses))
    assert not (tmp_path / "folds").exists()
    assert meta.threshold == 0.5


def test_stratified_folds():
    labels = np.array([0] * 13 + [1] * 29)
    splits = stratified_folds(labels, folds=4, seed=3)
    assert len(splits) == 4
    held = np.concatenate([h for _, h in splits])
    np.testing.assert_array_equal(np.sort(held), np.arange(labels.size))  # each row once
    for train, held_out in splits:
        assert np.intersect1d(train, held_out).size == 0
        assert train.size + held_out.size == labels.size
        # both classes in every fold, in about their fractions
        assert np.bincount(labels[held_out]).tolist() in ([3, 7], [3, 8], [4, 7], [4, 8])
    again = stratified_folds(labels, folds=4, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    other = stratified_folds(labels, folds=4, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(splits, other))
    with pytest.raises(ValueError, match="at least folds=5 stars and galaxies"):
        stratified_folds(np.array([0] * 4 + [1] * 9), folds=5, seed=0)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        stratified_folds(labels, folds=1, seed=0)


def test_fine_tune_calibrate_keeps_the_weights(user_field, tiny_base, tmp_path):
    catalog, images = user_field
    path = fine_tune(catalog, images, output=tmp_path, base=str(tiny_base), mode="calibrate",
                     name="tiny-cal", seed=2)
    base = load_model(tiny_base)
    loaded = load_model(path)
    state, base_state = loaded.network.state_dict(), base.network.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[k], base_state[k]) for k in state)
    assert loaded.meta.normalization == base.meta.normalization
    assert loaded.meta.architecture == base.meta.architecture
    assert loaded.meta.recipe["mode"] == "calibrate" and loaded.meta.recipe["epochs_run"] == 0
    changed = {k for k in ModelMeta.__dataclass_fields__
               if getattr(loaded.meta, k) != getattr(base.meta, k)}
    # feature_scale: the user's pixel scale is not the base's (see test_fine_tune_feature_scale)
    assert changed <= {"threshold", "thresholds", "temperature", "pixel_scale", "name",
                       "recipe", "metrics", "feature_scale"}
    assert not (tmp_path / "checkpoint.pt").exists()
    # nothing trained: temperature and threshold fitted on every labelled source, the
    # threshold the one that classifies the most of them right
    from astro_starglx import metrics
    from astro_starglx.inference import predict_logits

    data = labelled_inputs(catalog, images, meta=base.meta, feature_scale="auto")
    logits = predict_logits(base.network, data, base.meta.normalization, device="cpu")
    temperature = metrics.fit_temperature(logits, data.labels.astype(np.int64),
                                          bounds=(0.1, 10.0))
    assert loaded.meta.temperature == pytest.approx(temperature, rel=1e-4)
    p = metrics.softmax(logits, temperature=temperature)[:, 1]
    assert loaded.meta.threshold == pytest.approx(
        np.clip(metrics.best_threshold(data.labels, p, criterion="accuracy"), 1e-4, 1 - 1e-4))
    assert loaded.meta.recipe["n_calibration"] == len(data)


def test_fine_tune_scratch_and_sequences(user_field, tiny_base, tmp_path):
    catalog, images = user_field
    half = len(catalog) // 2
    path = fine_tune([catalog[:half], catalog[half:]], [images, images], output=tmp_path,
                     base=str(tiny_base), mode="scratch", epochs=1, seed=3)
    meta = load_model(path).meta
    assert meta.recipe["n_fields"] == 2
    assert meta.recipe["config"]["lr"] == 2e-3
    assert meta.recipe["n_train"] + meta.recipe["n_val"] + meta.recipe["n_dropped"] \
        == len(catalog)
    base_state = load_model(tiny_base).network.state_dict()
    state = _state(path)
    assert any(not torch.equal(state[k], base_state[k]) for k in state)


def test_fine_tune_self_training(user_field, tiny_base, tmp_path, monkeypatch):
    """Unlabelled rows: refused by default; with self_training the sure ones train too."""
    import astro_starglx.adapt as adapt

    # the tiny random base is sure of nothing: take every unlabelled source
    monkeypatch.setattr(adapt, "_PSEUDO_CUT", 0.5)
    catalog, images = user_field
    partial = catalog.copy()
    partial["label"] = MaskedColumn(np.asarray(catalog["label"]).astype(str))
    hidden = np.arange(len(partial)) % 2 == 1
    partial["label"].mask = hidden
    with pytest.raises(ValueError, match=r"masked value.*self_training=True"):
        fine_tune(partial, images, output=tmp_path / "no", base=str(tiny_base), epochs=1)
    path = fine_tune(partial, images, output=tmp_path / "st", base=str(tiny_base), epochs=2,
                     batch_size=16, seed=2, self_training=True)
    recipe = load_model(path).meta.recipe
    info = recipe["self_training"]
    assert info["n_unlabelled"] == int(hidden.sum()) and info["cut"] == 0.5
    assert info["n_star"] + info["n_galaxy"] == info["n_unlabelled"]
    assert recipe["epochs_run"] == 4  # two epochs, then two on labelled + pseudo-labelled
    # validation (and the counts of the recipe) hold the labelled rows only
    assert recipe["n_train"] + recipe["n_val"] + recipe["n_dropped"] == int((~hidden).sum())
    assert recipe["command"].endswith("self_training=True)")
    # every row labelled: nothing to pseudo-label, the first model is kept
    full = fine_tune(catalog, images, output=tmp_path / "full", base=str(tiny_base),
                     epochs=1, self_training=True)
    assert load_model(full).meta.recipe["self_training"]["n_unlabelled"] == 0


def test_pseudo_labels_are_the_sure_calibrated_classes(user_field, tiny_base):
    """_pseudo_labelled keeps p <= 0.1 as stars and p >= 0.9 as galaxies, calibrated."""
    from astro_starglx import metrics
    from astro_starglx.adapt import _PSEUDO_CUT, _pseudo_labelled
    from astro_starglx.inference import predict_logits

    catalog, images = user_field
    base = load_model(tiny_base, device="cpu")
    data = labelled_inputs(catalog, images, meta=base.meta)
    val, unlabelled = data.take(np.arange(0, len(data), 2)), data.take(np.arange(1, len(data), 2))
    norm = base.meta.normalization
    temperature = metrics.fit_temperature(predict_logits(base.network, val, norm),
                                          val.labels.astype(np.int64), bounds=(0.1, 10.0))
    pseudo, info = _pseudo_labelled(base.network, norm, temperature, unlabelled, device="cpu")
    p = metrics.softmax(predict_logits(base.network, unlabelled, norm),
                        temperature=temperature)[:, 1]
    sure = (p <= _PSEUDO_CUT) | (p >= 1 - _PSEUDO_CUT)
    np.testing.assert_array_equal(pseudo.row, unlabelled.row[sure])
    np.testing.assert_array_equal(pseudo.labels, (p[sure] >= 0.5).astype(np.int8))
    assert info["n_star"] == int((p <= _PSEUDO_CUT).sum())


def test_fine_tune_psf_aware_base(user_field, psf_base, tmp_path):
    catalog, images = user_field
    path = fine_tune(catalog, images, output=tmp_path, base=str(psf_base), mode="calibrate")
    meta = load_model(path).meta
    # another pixel scale (feature_scale 'auto' = 1.35): the depth was matched, and the
    # new model keeps the base's depth so that classify() matches it alike
    base_meta = load_model(psf_base).meta
    assert meta.feature_scale > 1.2 and meta.depth == base_meta.depth
    offset = meta.recipe["magnitude_offset"]
    data = labelled_inputs(catalog, images, meta=base_meta, feature_scale="auto")
    assert data.magnitude_offset == (pytest.approx(offset, abs=1e-4),)
    plain = labelled_inputs(catalog, images, meta=base_meta, feature_scale="auto",
                            match_depth=False)
    assert plain.magnitude_offset is None
    mag = list(base_meta.feature_names).index("mag")
    shift = data.features[:, :, mag] - plain.features[:, :, mag]
    np.testing.assert_allclose(shift[np.isfinite(shift)], offset, atol=1e-3)
    # measured on the images' own frame: nothing to match, no depth recorded
    same = load_model(fine_tune(catalog, images, output=tmp_path / "one", base=str(psf_base),
                                mode="calibrate", feature_scale=1.0)).meta
    assert same.depth is None and same.recipe["magnitude_offset"] is None
    with pytest.raises(ValueError, match="match_depth must be True or False"):
        labelled_inputs(catalog, images, meta=base_meta, match_depth="yes")
    for band in meta.bands:
        # the simulator states its (1.6x nominal) PSF in the header; resolve_psf reads it
        fwhm = float(images[band].header["PSFFWHM"])
        assert meta.psf["nominal_fwhm"][band] == pytest.approx(fwhm, abs=1e-4)
        low, high = meta.psf["fwhm_range"][band]
        assert low == pytest.approx(fwhm / 1.15, abs=1e-4)
        assert high == pytest.approx(fwhm * 1.15, abs=1e-4)


def test_fine_tune_feature_scale(user_field, psf_base, tiny_base, tmp_path):
    """'auto' measures the features on as many of the user's pixels as the model's;
    classify() does the same."""
    from astro_starglx import StarGalaxyClassifier
    from astro_starglx.inference import calibrated_proba, predict_logits

    catalog, images = user_field
    path = fine_tune(catalog, images, output=tmp_path / "psf", base=str(psf_base),
                     mode="calibrate")
    meta = load_model(path).meta
    # the user's pixel scale over the base's, whatever the PSF
    assert meta.feature_scale == pytest.approx(USER_PIXEL_SCALE / 0.074, rel=5e-3)
    assert meta.feature_scale > 1.2
    # classify() measures the features at the model's scale: its p_galaxy is the
    # model's on labelled_inputs at that scale (the meta's, by default)
    data = labelled_inputs(catalog, images, meta=meta)
    assert data.feature_scale == meta.feature_scale
    unscaled = labelled_inputs(catalog, images, meta=meta, feature_scale=1.0)
    assert not np.allclose(np.nan_to_num(unscaled.features), np.nan_to_num(data.features))
    model = load_model(path)
    expected = calibrated_proba(predict_logits(model.network, data, meta.normalization,
                                               device="cpu"), meta)[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        # float32: predict_logits' arithmetic on every CPU
        out = StarGalaxyClassifier(path, device="cpu", precision="fp32").classify(catalog, images)
    p = np.asarray(out["p_galaxy"].filled(np.nan))[data.row]
    np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-5)
    # a base without the PSF alike; at the base's own scale: 1
    meta = load_model(fine_tune(catalog, images, output=tmp_path / "pix", base=str(tiny_base),
                                mode="calibrate")).meta
    assert meta.feature_scale == pytest.approx(USER_PIXEL_SCALE / 0.074, rel=5e-3)
    same = labelled_inputs(catalog, images, meta=load_model(tiny_base).meta,
                           pixel_scale=0.074 * 1.05, feature_scale="auto")
    assert same.feature_scale == 1.0
    with pytest.raises(ValueError, match="feature_scale must be a finite number > 0"):
        labelled_inputs(catalog, images, meta=meta, feature_scale="psf")


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "retrain"}, "mode must be one of"),
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"epochs": 0}, "epochs must be"),
    ({"lr": -1.0}, "lr must be"),
    ({"patience": 0}, "patience must be"),
    ({"folds": 0}, "folds must be an integer >= 1"),
    ({"folds": 2.5}, "folds must be"),
    ({"refit_normalization": "yes"}, "refit_normalization must be"),
    ({"name": "a/b"}, "name must be"),
    ({"reinit_input": "yes"}, "reinit_input must be"),
    ({"magnitude_thresholds": 1}, "magnitude_thresholds must be"),
    ({"reinit_input": True, "mode": "calibrate"}, "applies to mode='fine-tune' only"),
    ({"self_training": 1}, "self_training must be"),
    ({"self_training": True, "mode": "calibrate"}, "mode='calibrate' trains nothing"),
])
def test_fine_tune_option_errors(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        fine_tune(Table({"ra": [1.0]}), {}, output=tmp_path, **kwargs)


def test_fine_tune_reinit_input(user_field, tiny_base, tmp_path):
    from astro_starglx.adapt import _input_layer_init, fine_tune_inputs

    catalog, images = user_field
    loaded = load_model(tiny_base, device="cpu")
    data = labelled_inputs(catalog, images, meta=loaded.meta)
    # a learning rate of ~0: the weights stay where training started
    path = fine_tune_inputs(data, output=tmp_path, base=loaded, epochs=1, lr=1e-12,
                            seed=4, device="cpu", reinit_input=True)
    fresh = _input_layer_init(loaded.meta.architecture, seed=4)
    # the first convolution and its batch norm (weight and bias; buffers move in training)
    conv = [k for k in fresh if k.endswith("weight") and fresh[k].ndim == 4]
    assert len(conv) == 1 and fresh[conv[0]].shape[1] == len(loaded.meta.bands)
    assert len([k for k in fresh if k.endswith("running_mean")]) == 1
    tuned = dict(load_model(path, device="cpu").network.named_parameters())
    base = dict(loaded.network.named_parameters())
    for key, value in tuned.items():
        start = fresh[key] if key in fresh else base[key]
        # weights files hold float16
        assert torch.allclose(value.detach(), start.half().float(), atol=1e-6), key
    assert not torch.allclose(fresh[conv[0]], base[conv[0]])
    meta = load_model(path, device="cpu").meta
    assert meta.recipe["reinit_input"] is True
    assert "reinit_input=True" in meta.recipe["command"]


def test_missing_band_input_weights_do_not_act(user_field, tiny_base):
    # why reinit_input is not needed for bands the user lacks: zeros in, nothing out
    from astro_starglx.inference import predict_logits

    catalog, images = user_field
    loaded = load_model(tiny_base, device="cpu")
    data = labelled_inputs(catalog, {b: im for b, im in images.items() if b != "NUV"},
                           meta=loaded.meta)
    assert np.isnan(data.stamps[:, 0]).all()
    before = predict_logits(loaded.network, data, loaded.meta.normalization, device="cpu")
    network = load_model(tiny_base, device="cpu").network
    conv = next(m for m in network.image_encoder.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight[:, 0] = torch.randn_like(conv.weight[:, 0])
    after = predict_logits(network, data, loaded.meta.normalization, device="cpu")
    np.testing.assert_array_equal(before, after)


def test_fine_tune_drops_the_base_magnitude_thresholds(user_field, tmp_path):
    catalog, images = user_field
    meta = make_tiny_meta("tiny-thr")
    meta["thresholds"] = {"feature": "mag", "band": "r", "edges": [24.0],
                          "values": [0.3, 0.8]}
    base = tmp_path / "tiny-thr.safetensors"
    save_weights(base, seeded_state_dict(meta), meta)
    assert load_model(base).meta.thresholds is not None
    path = fine_tune(catalog, images, output=tmp_path / "out", base=str(base),
                     mode="calibrate")
    meta = load_model(path).meta
    assert meta.thresholds is None
    assert meta.recipe["magnitude_thresholds"] is False
    assert "magnitude_thresholds" not in meta.recipe["command"]
    # refitted ones, if any, are split at the user's magnitudes, not the base's 24
    path = fine_tune(catalog, images, output=tmp_path / "out2", base=str(base),
                     mode="calibrate", magnitude_thresholds=True)
    meta = load_model(path).meta
    assert meta.recipe["magnitude_thresholds"] is True
    assert "magnitude_thresholds=True" in meta.recipe["command"]
    assert meta.thresholds is None or meta.thresholds["edges"] != [24.0]


def test_magnitude_thresholds_of_the_bright_half():
    from astro_starglx.adapt import _magnitude_thresholds
    from astro_starglx.metrics import binned_thresholds

    meta = ModelMeta.from_dict(make_tiny_meta())
    rng = np.random.default_rng(0)
    n = 200
    y = np.arange(n) % 2
    mag = np.where(np.arange(n) < n // 2, 20.0, 23.0) + rng.uniform(-0.5, 0.5, n)
    # bright: well apart around 0.3; faint: stars score higher, around 0.7
    p = np.where(mag < 21.5, np.where(y == 1, 0.45, 0.15), np.where(y == 1, 0.85, 0.55))
    p = p + rng.uniform(-0.05, 0.05, n)
    features = np.full((n, len(meta.bands), len(meta.feature_names)), np.nan, np.float32)
    features[:, meta.bands.index("r"), meta.feature_names.index("mag")] = mag
    out = _magnitude_thresholds(meta, y, p, features, fallback=0.5)
    assert out["feature"] == "mag" and out["band"] == "r"
    assert out["edges"] == [pytest.approx(float(np.median(mag.astype(np.float32))))]
    bright = binned_thresholds(y, p, features[:, meta.bands.index("r"), 0],
                               edges=out["edges"], min_per_class=5, fallback=0.5)[0]
    assert 0.2 < bright < 0.4
    # the faint half keeps the threshold fitted on all sources
    assert out["values"] == [pytest.approx(bright), 0.5]
    # a threshold per source, as classify() applies them
    per_source = meta.replace(thresholds=out).source_thresholds(features)
    is_bright = mag < out["edges"][0]
    assert np.all(per_source[~is_bright] == 0.5)
    assert np.mean((p >= per_source)[is_bright] == y[is_bright]) == 1
    # too few of a class in both halves, no r magnitudes, no r band: one threshold
    assert _magnitude_thresholds(meta, y[:12], p[:12], features[:12], fallback=0.5) is None
    assert _magnitude_thresholds(meta, y, p, np.full_like(features, np.nan),
                                 fallback=0.5) is None
    for bands, names in ((("g", "i"), ("mag",)), (("r",), ("radius",))):
        other = types.SimpleNamespace(bands=bands, feature_names=names)
        assert _magnitude_thresholds(other, y, p, features, fallback=0.5) is None


def test_fine_tune_output_must_be_a_directory(tmp_path, user_field):
    catalog, images = user_field
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ValueError, match="output must be a directory"):
        fine_tune(catalog, images, output=target)


def test_fine_tune_is_exported_lazily():
    assert astro_starglx.fine_tune is fine_tune
    assert "fine_tune" in astro_starglx.__all__


# ---------------------------------------------------------------------------
# priors


def test_reweight_prior_identity_and_monotone():
    p = np.linspace(0.0, 1.0, 21)
    same = reweight_prior(p, star_fraction=0.3, train_star_fraction=0.3)
    assert np.allclose(same, p)
    more_stars = reweight_prior(p, star_fraction=0.9, train_star_fraction=0.3)
    assert np.all(np.diff(more_stars) > 0)  # monotone in p
    inner = slice(1, -1)
    assert np.all(more_stars[inner] < p[inner])  # more stars: less likely a galaxy
    assert more_stars[0] == 0.0 and more_stars[-1] == 1.0
    fractions = np.linspace(0.05, 0.95, 10)
    along = reweight_prior(0.6, star_fraction=fractions, train_star_fraction=0.5)
    assert np.all(np.diff(along) < 0)
    # Bayes: the odds scale by the prior ratio
    q = reweight_prior(0.5, star_fraction=0.2, train_star_fraction=0.5)
    assert q / (1 - q) == pytest.approx(4.0)
    # round trip
    back = reweight_prior(more_stars, star_fraction=0.3, train_star_fraction=0.9)
    assert np.allclose(back, p)
    assert np.isnan(reweight_prior(np.nan, star_fraction=0.5, train_star_fraction=0.2))


def test_reweight_prior_errors():
    with pytest.raises(ValueError, match="star_fraction must be a fraction in"):
        reweight_prior(0.5, star_fraction=0.0, train_star_fraction=0.5)
    with pytest.raises(ValueError, match="train_star_fraction must be a fraction"):
        reweight_prior(0.5, star_fraction=0.5, train_star_fraction=1.2)
    with pytest.raises(ValueError, match="p_galaxy must hold probabilities"):
        reweight_prior([0.5, 1.5], star_fraction=0.5, train_star_fraction=0.5)


def test_fine_tune_inputs_reuses_one_extraction(user_field, tiny_base, tmp_path):
    from astro_starglx.adapt import fine_tune_inputs

    catalog, images = user_field
    loaded = load_model(tiny_base, device="cpu")
    data = labelled_inputs(catalog, images, meta=loaded.meta)
    subset = data.take(np.arange(0, len(data), 2))
    path = fine_tune_inputs(subset, output=tmp_path / "sub", base=loaded, mode="calibrate",
                            name="tiny-sub", device="cpu")
    meta = load_model(path, device="cpu").meta
    assert meta.recipe["n_train"] + meta.recipe["n_val"] == len(subset)
    assert "base='tiny'" in meta.recipe["command"]
    with pytest.raises(TypeError, match="data must be LabelledInputs"):
        fine_tune_inputs({"stamps": []}, output=tmp_path / "x", base=loaded)
    other = data.__class__(**{**{k: getattr(data, k) for k in data.__dataclass_fields__},
                              "bands": ("r",)})
    with pytest.raises(ValueError, match="data holds bands"):
        fine_tune_inputs(other, output=tmp_path / "y", base=loaded)


def test_psf_measured_on_another_surveys_pixels(psf_base):
    """Without PSF keywords, the PSF of an SDSS-like field (0.396"/px, ~1.4" seeing) is
    measured in every band, the star selection starting from the base model's nominal
    PSF in its own pixels (not its 0.15" in arcsec, a fraction of an SDSS pixel)."""
    pytest.importorskip("galsim")
    from astro_starglx.simulate import SimConfig, simulate_field

    config = SimConfig.preset("sdss", shape=(384, 384), n_stars=70, n_galaxies=30,
                              mag_range=(16.0, 20.0))
    images, truth = simulate_field(config, seed=5)
    truth_fwhm = {band: float(im.meta["PSFFWHM"]) for band, im in images.items()}
    bare = {band: CCDData(im.data, unit=im.unit, wcs=im.wcs, mask=im.mask,
                          uncertainty=im.uncertainty,
                          meta={k: v for k, v in im.meta.items()
                                if k not in ("PSFFWHM", "SEEING", "FWHM", "PSFR80")})
            for band, im in images.items()}
    catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"]})
    meta = load_model(psf_base).meta
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)  # no band falls back
        data = labelled_inputs(catalog, bare, meta=meta, feature_scale=1.0)
    for band, fwhm in truth_fwhm.items():
        measured = np.nanmedian(data.psf_fwhm[:, list(meta.bands).index(band)])
        assert measured == pytest.approx(fwhm, rel=0.1), band
