"""Tests of astro_starglx.meta: the weights metadata schema, validated once."""

import dataclasses
import json

import numpy as np
import pytest
from safetensors import safe_open

from astro_starglx import meta as meta_module
from astro_starglx import model as model_module
from astro_starglx import weights as weights_module
from astro_starglx.meta import META_KEY, MODEL_CONFIGS, ModelMeta, validate_architecture
from astro_starglx.preprocess import Normalization

from conftest import make_tiny_meta


def stored(meta):
    """The form a file stores: ``meta`` with the optional temperature filled in."""
    return {"temperature": 1.0, **json.loads(json.dumps(meta))}


# --------------------------------------------------------------------- round trip


def test_from_dict_fields(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.name == "tiny"
    assert meta.bands == ("NUV", "u", "g", "r", "i", "z", "y") and meta.n_bands == 7
    assert meta.feature_names == tuple(tiny_meta["feature_names"])
    assert meta.class_names == ("star", "galaxy")
    assert meta.stamp_size == 15 and meta.pixel_scale == 0.074
    assert meta.threshold == 0.5 and meta.temperature == 1.0
    assert meta.allow_missing_bands is True
    assert isinstance(meta.normalization, Normalization)
    assert meta.normalization.shape == (7, 5)
    np.testing.assert_array_equal(meta.normalization.feature_mean,
                                  tiny_meta["normalization"]["feature_mean"])
    assert meta.architecture == tiny_meta["architecture"]
    assert meta.recipe == {"command": "test fixture", "data_seed": 0}
    assert meta.metrics == {} and meta.extra == {}
    assert ModelMeta.from_dict(meta) is meta  # already validated


def test_round_trip(tiny_meta):
    tiny_meta["temperature"] = 1.7
    tiny_meta["metrics"] = {"test": {"auc": 0.99, "n": 12, "ece": None}}
    meta = ModelMeta.from_dict(tiny_meta)
    as_dict = meta.to_dict()
    assert as_dict == tiny_meta
    assert ModelMeta.from_dict(as_dict) == meta
    text = meta.to_json()
    assert json.loads(text) == tiny_meta
    assert text == json.dumps(tiny_meta, sort_keys=True, allow_nan=False)
    assert ModelMeta.from_json(text) == meta
    assert ModelMeta.from_json(text).to_json() == text


def test_to_dict_is_a_json_copy(tiny_meta):
    meta = ModelMeta.from_dict(dict(tiny_meta, feature_names=tuple(tiny_meta["feature_names"])))
    out = meta.to_dict()
    assert out["feature_names"] == tiny_meta["feature_names"]  # tuples become lists
    out["bands"].append("extra")
    out["architecture"]["n_bands"] = 99
    out["recipe"]["command"] = "changed"
    assert meta.bands[-1] == "y" and meta.architecture["n_bands"] == 7
    assert meta.to_dict() == stored(tiny_meta)
    # nor does changing the input dict after validation change the meta
    tiny_meta["architecture"]["n_bands"] = 3
    tiny_meta["normalization"]["feature_mean"][0][0] = 100.0
    assert meta.architecture["n_bands"] == 7
    assert meta.normalization.feature_mean[0, 0] == 0.0


def test_numpy_values_become_plain_json(tiny_meta):
    norm = tiny_meta["normalization"]
    tiny_meta.update(threshold=np.float32(0.25), stamp_size=np.int64(15),
                     normalization=dict(norm, feature_mean=np.array(norm["feature_mean"])),
                     metrics={"auc": np.float64(0.9), "counts": np.array([1, 2])})
    meta = ModelMeta.from_dict(tiny_meta)
    out = meta.to_dict()
    assert out["threshold"] == 0.25 and type(out["threshold"]) is float
    assert type(out["stamp_size"]) is int
    assert out["metrics"] == {"auc": 0.9, "counts": [1, 2]}
    assert json.loads(meta.to_json()) == out


def test_frozen(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.threshold = 0.3
    with pytest.raises(ValueError, match="read-only"):
        meta.normalization.feature_std[0, 0] = 2.0


def test_unknown_keys_are_kept(tiny_meta):
    tiny_meta.update(survey="CSST", psf_range={"fwhm": [0.1, 0.2]}, extra=[1, 2])
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.extra == {"survey": "CSST", "psf_range": {"fwhm": [0.1, 0.2]},
                          "extra": [1, 2]}
    assert meta.to_dict() == stored(tiny_meta)
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta and again.extra == meta.extra
    # replace keeps them, and can set them
    assert meta.replace(threshold=0.3).extra == meta.extra
    changed = meta.replace(extra={"survey": "Euclid"})
    assert changed.extra == {"survey": "Euclid"}
    assert changed.to_dict() == dict(stored(make_tiny_meta()), survey="Euclid")


def test_bundled_registry_entries_round_trip_exactly():
    registry = json.loads(weights_module._REGISTRY_PATH.read_text())
    for name, entry in registry["models"].items():
        meta = ModelMeta.from_dict(entry["meta"])
        assert meta.to_dict() == entry["meta"], name
        assert meta.to_json() == json.dumps(entry["meta"], sort_keys=True, allow_nan=False)
        if entry["bundled"]:
            path = weights_module._BUNDLED_DIR / entry["filename"]
            with safe_open(path, framework="pt") as fh:
                header = fh.metadata()[META_KEY]
            assert ModelMeta.from_json(header) == meta, name
            assert ModelMeta.from_json(header).to_json() == header, name


# ---------------------------------------------------------------------- replace


def test_replace_validates(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    new = meta.replace(threshold=0.3, metrics={"auc": 0.9})
    assert (new.threshold, new.metrics) == (0.3, {"auc": 0.9})
    assert (meta.threshold, meta.metrics) == (0.5, {})  # the original is unchanged
    assert new.replace(threshold=0.5, metrics={}) == meta
    norm = Normalization(softening=2.0, feature_mean=np.zeros((7, 5)),
                         feature_std=np.ones((7, 5)))
    assert meta.replace(normalization=norm).normalization == norm
    with pytest.raises(ValueError, match="threshold must be a number between 0 and 1"):
        meta.replace(threshold=1.5)
    with pytest.raises(ValueError, match=r"normalization must be 7x5 \(bands x features\), "
                                         r"got 3x5"):
        meta.replace(normalization=dict(tiny_meta["normalization"],
                                        feature_mean=[[0.0] * 5] * 3,
                                        feature_std=[[1.0] * 5] * 3))
    with pytest.raises(ValueError, match=r"architecture n_bands=7 does not match the 2 names"):
        meta.replace(bands=["g", "r"], normalization=dict(
            tiny_meta["normalization"], feature_mean=[[0.0] * 5] * 2,
            feature_std=[[1.0] * 5] * 2))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        meta.replace(temperature=-1.0)
    with pytest.raises(ValueError, match="meta must be strict JSON"):
        meta.replace(temperature=float("nan"))


def test_replace_refuses_unknown_fields(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    with pytest.raises(TypeError, match=r"replace\(\) got unknown field\(s\) \['treshold'\]"):
        meta.replace(treshold=0.3)
    with pytest.raises(TypeError, match="extra must be a dict"):
        meta.replace(extra=[1])
    with pytest.raises(ValueError, match=r"extra must not hold ModelMeta fields \['threshold'\]"):
        meta.replace(extra={"threshold": 0.3})


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize("key", ["bands", "stamp_size", "pixel_scale", "feature_names",
                                 "normalization", "class_names", "threshold",
                                 "allow_missing_bands", "architecture", "recipe", "metrics"])
def test_missing_key(tiny_meta, key):
    del tiny_meta[key]
    with pytest.raises(ValueError, match=rf"weights meta is missing \['{key}'\]; it has "
                                         r"\[.*'name'.*\]\. See .*docs/internals.rst"):
        ModelMeta.from_dict(tiny_meta)


def test_optional_keys(tiny_meta):
    del tiny_meta["name"]
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.name is None and meta.temperature == 1.0
    assert meta.to_dict()["name"] is None
    assert ModelMeta.from_dict(meta.to_dict()) == meta


@pytest.mark.parametrize("change, match", [
    ({"name": ""}, "name must be a non-empty string, got ''"),
    ({"name": 3}, "name must be a non-empty string, got 3"),
    ({"bands": ["g", "g"]}, "bands must be a non-empty list of distinct band names"),
    ({"bands": "grizy"}, "bands must be a non-empty list of distinct band names"),
    ({"bands": []}, "bands must be a non-empty list of distinct band names"),
    ({"stamp_size": 16}, "stamp_size must be a positive odd integer, got 16"),
    ({"stamp_size": 15.0}, "stamp_size must be a positive odd integer, got 15.0"),
    ({"stamp_size": True}, "stamp_size must be a positive odd integer, got True"),
    ({"stamp_size": -3}, "stamp_size must be a positive odd integer, got -3"),
    ({"pixel_scale": -1}, r"pixel_scale must be a positive number \(arcsec per pixel\)"),
    ({"pixel_scale": "0.074"}, "pixel_scale must be a positive number"),
    ({"feature_names": ["mag", ""]},
     "feature_names must be a non-empty list of distinct feature names"),
    ({"class_names": ["star"]}, "class_names must be a list of at least 2 distinct"),
    ({"class_names": ["star", "star"]}, "class_names must be a list of at least 2 distinct"),
    ({"threshold": 1.0}, r"threshold must be a number between 0 and 1 \(exclusive\), got 1.0"),
    ({"threshold": 0}, "threshold must be a number between 0 and 1"),
    ({"threshold": None}, "threshold must be a number between 0 and 1"),
    ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
    ({"temperature": "1"}, "temperature must be a positive number"),
    ({"allow_missing_bands": "yes"}, "allow_missing_bands must be true or false, got 'yes'"),
    ({"allow_missing_bands": 1}, "allow_missing_bands must be true or false"),
    ({"normalization": [1, 2]}, "normalization must be a dict with keys"),
    ({"normalization": {"softening": 3.0}},
     r"normalization lacks the keys \['feature_mean', 'feature_std'\]"),
    ({"normalization": {"softening": 0, "feature_mean": [[0.0] * 5] * 7,
                        "feature_std": [[1.0] * 5] * 7}},
     "normalization softening must be a positive number"),
    ({"normalization": {"softening": 3.0, "feature_mean": [[0.0] * 5] * 7,
                        "feature_std": [[0.0] * 5] * 7}},
     "normalization feature_std must be positive everywhere"),
    ({"normalization": {"softening": 3.0, "feature_mean": [[0.0] * 5] * 6,
                        "feature_std": [[1.0] * 5] * 7}},
     r"feature_mean \(6, 5\) and feature_std \(7, 5\) must have the same \(C, F\) shape"),
    ({"normalization": {"softening": 3.0, "feature_mean": [[0.0] * 4] * 7,
                        "feature_std": [[1.0] * 4] * 7}},
     r"normalization must be 7x5 \(bands x features\), got 7x4"),
    ({"architecture": {"mode": "fused"}},
     r"architecture: architecture config is missing \['n_bands'"),
    ({"architecture": "rbim-lite"}, "architecture: config must be a dict"),
    ({"architecture": dict(make_tiny_meta()["architecture"], mode="both")},
     "architecture: architecture mode must be one of"),
    ({"architecture": dict(make_tiny_meta()["architecture"], n_features=4)},
     "architecture n_features=4 does not match the 5 names given"),
    ({"architecture": dict(make_tiny_meta()["architecture"], n_classes=3)},
     "architecture n_classes=3 does not match the 2 names given"),
    ({"architecture": dict(make_tiny_meta()["architecture"], stamp_size=25)},
     "architecture stamp_size=25 does not match stamp_size=15"),
    ({"recipe": {"command": "x"}},
     r"recipe must be a dict with 'command' \(str\) and 'data_seed' \(int, None or a list of "
     r"ints\)"),
    ({"recipe": {"command": None, "data_seed": 0}}, "recipe must be a dict with 'command'"),
    ({"recipe": {"command": "x", "data_seed": 1.5}}, "recipe must be a dict with 'command'"),
    ({"recipe": {"command": "x", "data_seed": []}}, "recipe must be a dict with 'command'"),
    ({"recipe": {"command": "x", "data_seed": [1, "2"]}}, "recipe must be a dict with 'command'"),
    ({"recipe": "train"}, "recipe must be a dict with 'command'"),
    ({"metrics": None}, r"metrics must be a dict \(may be empty\), got None"),
])
def test_bad_values(tiny_meta, change, match):
    tiny_meta.update(change)
    with pytest.raises(ValueError, match=match) as info:
        ModelMeta.from_dict(tiny_meta)
    assert str(info.value).startswith("invalid weights meta:\n  - ")


def test_every_problem_is_listed(tiny_meta):
    tiny_meta.update(bands=["NUV", "u", "g"], stamp_size=16, threshold=2, metrics=[])
    with pytest.raises(ValueError) as info:
        ModelMeta.from_dict(tiny_meta)
    problems = str(info.value).splitlines()[1:]
    assert problems == [
        "  - stamp_size must be a positive odd integer, got 16",
        "  - threshold must be a number between 0 and 1 (exclusive), got 2",
        "  - normalization must be 3x5 (bands x features), got 7x5",
        "  - architecture n_bands=7 does not match the 3 names given",
        "  - metrics must be a dict (may be empty), got []",
    ]


def test_valid_recipe_variants(tiny_meta):
    tiny_meta["recipe"] = {"command": "astro-starglx train", "data_seed": None,
                           "config": {"epochs": 2}}
    assert ModelMeta.from_dict(tiny_meta).recipe["config"] == {"epochs": 2}


def test_type_errors(tiny_meta):
    with pytest.raises(TypeError, match="meta must be a dict .*got list"):
        ModelMeta.from_dict([("bands", [])])
    with pytest.raises(ValueError, match="meta must be strict JSON.*not NaN or inf"):
        ModelMeta.from_dict(dict(tiny_meta, metrics={"auc": float("nan")}))
    with pytest.raises(ValueError, match="meta must be strict JSON"):
        ModelMeta.from_dict(dict(tiny_meta, metrics={"chi2": float("inf")}))
    with pytest.raises(TypeError, match="meta values must be JSON-serialisable, got object"):
        ModelMeta.from_dict(dict(tiny_meta, metrics={"when": object()}))


def test_from_json_errors(tiny_meta):
    with pytest.raises(ValueError, match="weights meta is not JSON"):
        ModelMeta.from_json("{not json")
    with pytest.raises(ValueError, match="weights meta is not JSON"):
        ModelMeta.from_json(None)
    with pytest.raises(TypeError, match="meta must be a dict"):
        ModelMeta.from_json("[1, 2]")
    with pytest.raises(ValueError, match="threshold must be a number"):
        ModelMeta.from_json(json.dumps(dict(tiny_meta, threshold=-1)))


# ----------------------------------------------------------------- architectures


def config(name, **kw):
    return dict(MODEL_CONFIGS[name], n_bands=7, n_features=5, n_classes=2, **kw)


def test_model_configs_are_shared():
    assert model_module.MODEL_CONFIGS is meta_module.MODEL_CONFIGS
    assert set(MODEL_CONFIGS) == {"rbim-resnet50", "rbim-lite"}
    for name in MODEL_CONFIGS:
        assert validate_architecture(config(name)) == config(name)


def test_validate_architecture_fills_defaults_on_a_copy():
    arch = config("rbim-lite")
    del arch["n_classes"]
    out = validate_architecture(arch)
    assert out["n_classes"] == 2 and "n_classes" not in arch
    out["image_encoder"]["widths"].append(128)
    assert arch["image_encoder"]["widths"] == [16, 32, 64]
    assert MODEL_CONFIGS["rbim-lite"]["image_encoder"]["widths"] == [16, 32, 64]


def test_validate_architecture_errors():
    with pytest.raises(ValueError, match=r"missing \['n_bands'\]; it has .*astro-starglx train"):
        validate_architecture({k: v for k, v in config("rbim-lite").items() if k != "n_bands"})
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_architecture(dict(config("rbim-lite"), mode="both"))
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="n_features must be a positive int"):
            validate_architecture(dict(config("rbim-lite"), n_features=bad))
    with pytest.raises(ValueError, match="image_encoder name must be one of"):
        validate_architecture(dict(config("rbim-lite"), image_encoder={"name": "vit"}))
    with pytest.raises(ValueError, match="image_encoder name must be one of"):
        validate_architecture(dict(config("rbim-lite"), image_encoder="resnet"))
    with pytest.raises(TypeError, match="config must be a dict"):
        validate_architecture(["resnet"])


# ----------------------------------------------------------------------------- psf


def psf_entry(bands=("NUV", "u", "g", "r", "i", "z", "y")):
    return {"nominal_fwhm": {band: 0.12 + 0.005 * k for k, band in enumerate(bands)},
            "fwhm_range": {band: [0.08, 0.3] for band in bands}}


def test_psf_defaults_to_none_and_is_not_stored(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.psf is None
    assert "psf" not in meta.to_dict()
    assert ModelMeta.from_dict(dict(tiny_meta, psf=None)) == meta
    assert "psf" not in ModelMeta.from_dict(dict(tiny_meta, psf=None)).to_dict()


def test_psf_round_trip(tiny_meta):
    tiny_meta["psf"] = psf_entry()
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.psf == tiny_meta["psf"]
    assert meta.to_dict()["psf"] == tiny_meta["psf"]
    assert meta.to_dict() == stored(tiny_meta)
    assert ModelMeta.from_json(meta.to_json()) == meta
    assert meta.extra == {}
    # numpy values and tuples are stored as plain JSON
    tiny_meta["psf"]["fwhm_range"]["r"] = (np.float32(0.1), np.float64(0.25))
    assert ModelMeta.from_dict(tiny_meta).psf["fwhm_range"]["r"] == [
        float(np.float32(0.1)), 0.25]
    # replace() adds, keeps and removes it
    plain = ModelMeta.from_dict(make_tiny_meta())
    aware = plain.replace(psf=psf_entry())
    assert aware.psf == psf_entry()
    assert aware.replace(threshold=0.4).psf == psf_entry()
    assert aware.replace(psf=None).psf is None
    assert "psf" not in aware.replace(psf=None).to_dict()


def test_psf_gamma_range(tiny_meta):
    entry = psf_entry()
    entry["gamma_range"] = {band: [-0.2, 0.55] for band in entry["fwhm_range"]}
    meta = ModelMeta.from_dict(dict(tiny_meta, psf=entry))
    assert meta.psf["gamma_range"]["r"] == [-0.2, 0.55]
    assert ModelMeta.from_json(meta.to_json()) == meta
    for bad in ([0.5, 0.2], [-0.6, 0.2], [0.1, 1.2], [0.1], "0.2", None):
        broken = psf_entry()
        broken["gamma_range"] = {band: [-0.2, 0.55] for band in broken["fwhm_range"]}
        if bad is None:
            del broken["gamma_range"]["y"]
        else:
            broken["gamma_range"]["r"] = bad
        with pytest.raises(ValueError, match=r"optionally 'gamma_range' \{band: \[low, high\]\} "
                                             r"within \[-0.5, 0.9\]"):
            ModelMeta.from_dict(dict(tiny_meta, psf=broken))


def test_psf_extra_bands_are_allowed(tiny_meta):
    entry = psf_entry()
    entry["nominal_fwhm"]["w"] = 0.2
    entry["fwhm_range"]["w"] = [0.1, 0.3]
    assert ModelMeta.from_dict(dict(tiny_meta, psf=entry)).psf == entry


def _bad_psf(**changes):
    entry = psf_entry()
    for key, value in changes.items():
        part, band = key.split("__")
        if value is None:
            del entry[part][band]
        else:
            entry[part][band] = value
    return entry


@pytest.mark.parametrize("psf", [
    {},
    [0.1, 0.2],
    "nominal",
    {"nominal_fwhm": {"r": 0.1}},
    {"fwhm_range": psf_entry()["fwhm_range"]},
    {"nominal_fwhm": 0.15, "fwhm_range": psf_entry()["fwhm_range"]},
    {"nominal_fwhm": psf_entry()["nominal_fwhm"], "fwhm_range": [0.1, 0.3]},
    _bad_psf(nominal_fwhm__g=None),
    _bad_psf(fwhm_range__y=None),
    _bad_psf(nominal_fwhm__r=0.0),
    _bad_psf(nominal_fwhm__r=-0.1),
    _bad_psf(nominal_fwhm__r="0.15"),
    _bad_psf(nominal_fwhm__r=True),
    _bad_psf(fwhm_range__r=[0.3, 0.1]),
    _bad_psf(fwhm_range__r=[0.2, 0.2]),
    _bad_psf(fwhm_range__r=[0.0, 0.2]),
    _bad_psf(fwhm_range__r=[0.1]),
    _bad_psf(fwhm_range__r=[0.1, 0.2, 0.3]),
    _bad_psf(fwhm_range__r=0.2),
    _bad_psf(fwhm_range__r=[0.1, None]),
])
def test_psf_validation(tiny_meta, psf):
    with pytest.raises(ValueError, match=r"invalid weights meta:\n  - psf must be None or a dict "
                                         r"with 'nominal_fwhm' \{band: arcsec > 0\} and "
                                         r"'fwhm_range' \{band: \[low, high\]\} for every band"):
        ModelMeta.from_dict(dict(tiny_meta, psf=psf))


def test_psf_validation_nan(tiny_meta):
    with pytest.raises(ValueError, match="meta must be strict JSON"):
        ModelMeta.from_dict(dict(tiny_meta, psf=_bad_psf(nominal_fwhm__r=float("nan"))))
    meta = ModelMeta.from_dict(tiny_meta)
    with pytest.raises(ValueError, match="psf must be None or a dict"):
        meta.replace(psf={"nominal_fwhm": {}, "fwhm_range": {}})


def test_star_fraction_round_trip_and_prior(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.star_fraction is None and "star_fraction" not in meta.to_dict()
    assert meta.prior_star_fraction is None  # nothing to derive it from
    recorded = meta.replace(star_fraction=0.3)
    assert ModelMeta.from_json(recorded.to_json()).star_fraction == 0.3
    assert recorded.prior_star_fraction == 0.3
    # older files: the training data set's own star fraction from the recipe
    recipe = {**meta.recipe, "dataset": {"n_stars": 100, "n_galaxies": 300}}
    assert meta.replace(recipe=recipe).prior_star_fraction == pytest.approx(0.25)
    balanced = {**recipe, "config": {"class_balance": True}}
    assert meta.replace(recipe=balanced).prior_star_fraction == 0.5


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, "0.3", True])
def test_star_fraction_refuses_non_fractions(tiny_meta, value):
    with pytest.raises(ValueError, match="star_fraction"):
        ModelMeta.from_dict({**tiny_meta, "star_fraction": value})


def test_thresholds_round_trip_and_lookup(tiny_meta):
    binned = {"feature": "mag", "band": "r", "edges": [24.0, 25.0], "values": [0.4, 0.6, 0.8]}
    meta = ModelMeta.from_dict({**tiny_meta, "thresholds": binned})
    assert ModelMeta.from_json(meta.to_json()).thresholds == binned
    got = meta.threshold_for([20.0, 24.0, 24.5, 25.0, 30.0, np.nan])
    np.testing.assert_array_equal(got, [0.4, 0.6, 0.6, 0.8, 0.8, meta.threshold])
    features = np.zeros((3, len(meta.bands), len(meta.feature_names)))
    features[:, meta.bands.index("r"), meta.feature_names.index("mag")] = [20.0, 24.5, np.nan]
    features[:, meta.bands.index("g"), meta.feature_names.index("mag")] = 30.0  # not read
    np.testing.assert_array_equal(meta.source_thresholds(features), [0.4, 0.6, meta.threshold])
    plain = ModelMeta.from_dict(tiny_meta)
    np.testing.assert_array_equal(plain.source_thresholds(features), [plain.threshold] * 3)
    assert "thresholds" not in plain.to_dict()
    np.testing.assert_array_equal(plain.threshold_for([20.0, np.nan]), [plain.threshold] * 2)


@pytest.mark.parametrize("change", [
    {"feature": "psf_fwhm"}, {"band": "Q"}, {"edges": []}, {"edges": [25.0, 24.0]},
    {"values": [0.4, 0.6]}, {"values": [0.4, 1.0, 0.5]}, {"extra": 1}])
def test_thresholds_refuse_bad_entries(tiny_meta, change):
    binned = {"feature": "mag", "band": "r", "edges": [24.0, 25.0], "values": [0.4, 0.6, 0.8]}
    with pytest.raises(ValueError, match="thresholds must be None or a dict"):
        ModelMeta.from_dict({**tiny_meta, "thresholds": {**binned, **change}})


def test_feature_scale_round_trip(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.feature_scale == 1.0 and "feature_scale" not in meta.to_dict()
    scaled = meta.replace(feature_scale=10)
    assert isinstance(scaled.feature_scale, float)
    assert scaled.to_dict()["feature_scale"] == 10.0
    assert ModelMeta.from_json(scaled.to_json()) == scaled


@pytest.mark.parametrize("value", [0, -2.0, "2", True, None])
def test_feature_scale_refuses_non_positive_numbers(tiny_meta, value):
    tiny_meta["feature_scale"] = value
    with pytest.raises(ValueError, match="feature_scale must be a finite number > 0"):
        ModelMeta.from_dict(tiny_meta)


def test_depth_round_trip_and_validation(tiny_meta):
    meta = ModelMeta.from_dict(tiny_meta)
    assert meta.depth is None and "depth" not in meta.to_dict()
    recorded = meta.replace(depth={"r": 26.5, "g": 26.8})
    # stored in the model's band order, as floats
    assert list(recorded.depth) == ["g", "r"]
    assert ModelMeta.from_json(recorded.to_json()).depth == {"g": 26.8, "r": 26.5}
    for bad in ({"K": 25.0}, {"r": float("nan")}, {}, [26.0], {"r": "26"}):
        with pytest.raises(ValueError, match="depth must be None or a non-empty dict|strict JSON"):
            ModelMeta.from_dict(dict(tiny_meta, depth=bad))
