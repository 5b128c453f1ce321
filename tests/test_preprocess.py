import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from astro_starglx.preprocess import Normalization, compute_normalization, prepare_inputs


def raw_inputs(rng, n=6, c=3, h=5, f=4):
    stamps = rng.normal(0.0, 2.0, (n, c, h, h)).astype(np.float32)
    noise = rng.uniform(1.0, 3.0, (n, c)).astype(np.float32)
    features = rng.normal(20.0, 1.5, (n, c, f)).astype(np.float32)
    return stamps, noise, features


def test_prepare_inputs_values():
    rng = np.random.default_rng(0)
    stamps, noise, features = raw_inputs(rng)
    stamps[0, 1, 2, 2] = np.nan
    features[1, 0, 3] = np.nan
    norm = compute_normalization(features, softening=2.5)
    x_image, x_catalog = prepare_inputs(stamps, noise, features, norm)
    assert x_image.shape == stamps.shape and x_image.dtype == np.float32
    assert x_catalog.shape == features.shape and x_catalog.dtype == np.float32
    expected = np.arcsinh(stamps / noise[:, :, None, None] / 2.5)
    expected[0, 1, 2, 2] = 0.0
    np.testing.assert_allclose(x_image, expected, rtol=1e-6, atol=1e-7)
    mean = np.nanmean(features, axis=0)
    std = np.nanstd(features, axis=0)
    expected = (features - mean) / std
    expected[1, 0, 3] = 0.0
    np.testing.assert_allclose(x_catalog, expected, rtol=1e-5, atol=1e-6)
    # standardised: zero mean, unit standard deviation over the training set
    np.testing.assert_allclose(np.nanmean(np.where(np.isnan(features), np.nan, x_catalog),
                                          axis=0), 0.0, atol=1e-5)


def test_prepare_inputs_is_unit_invariant():
    rng = np.random.default_rng(1)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features)
    one, _ = prepare_inputs(stamps, noise, features, norm)
    two, _ = prepare_inputs(stamps * 1e4, noise * 1e4, features, norm)
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_prepare_inputs_unusable_noise_and_missing_band():
    rng = np.random.default_rng(2)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features)
    noise[0, 0] = 0.0
    noise[1, 1] = np.nan
    noise[2, 2] = -1.0
    stamps[3, 0] = np.nan  # a missing band
    stamps[4, 1, 0, 0] = np.inf
    features[3, 0] = np.nan
    x_image, x_catalog = prepare_inputs(stamps, noise, features, norm)
    assert np.all(x_image[0, 0] == 0) and np.all(x_image[1, 1] == 0)
    assert np.all(x_image[2, 2] == 0) and np.all(x_image[3, 0] == 0)
    assert x_image[4, 1, 0, 0] == 0
    assert np.all(np.isfinite(x_image))
    assert np.all(x_catalog[3, 0] == 0)


def test_prepare_inputs_does_not_mutate():
    rng = np.random.default_rng(3)
    stamps, noise, features = raw_inputs(rng)
    stamps[0, 0, 0, 0] = np.nan
    features[0, 0, 0] = np.nan
    norm = compute_normalization(features)
    copies = stamps.copy(), noise.copy(), features.copy(), json.dumps(norm.to_dict())
    as_dict = norm.to_dict()
    for normalization in (norm, as_dict):
        prepare_inputs(stamps, noise, features, normalization)
        np.testing.assert_array_equal(stamps, copies[0])
        np.testing.assert_array_equal(noise, copies[1])
        np.testing.assert_array_equal(features, copies[2])
        assert json.dumps(norm.to_dict()) == copies[3]
    assert json.dumps(as_dict) == copies[3]


def test_prepare_inputs_accepts_the_dict_form():
    rng = np.random.default_rng(8)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features)
    from_class = prepare_inputs(stamps, noise, features, norm)
    from_dict = prepare_inputs(stamps, noise, features, json.loads(json.dumps(norm.to_dict())))
    for a, b in zip(from_class, from_dict):
        np.testing.assert_array_equal(a, b)


def test_prepare_inputs_accepts_float64_and_empty():
    rng = np.random.default_rng(4)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features)
    x_image, x_catalog = prepare_inputs(stamps.astype(float), noise.astype(float),
                                        features.astype(float), norm)
    assert x_image.dtype == np.float32 and x_catalog.dtype == np.float32
    x_image, x_catalog = prepare_inputs(stamps[:0], noise[:0], features[:0], norm)
    assert x_image.shape == (0,) + stamps.shape[1:] and x_catalog.shape == (0, 3, 4)


def test_compute_normalization():
    rng = np.random.default_rng(5)
    features = rng.normal(10.0, 2.0, (50, 2, 3))
    features[:5, 0, 0] = np.nan
    features[:, 1, 2] = np.nan  # a band never measured
    features[:, 1, 1] = 4.0  # a constant feature
    norm = compute_normalization(features, softening=3.0)
    assert isinstance(norm, Normalization)
    assert [f.name for f in dataclasses.fields(norm)] == ["softening", "feature_mean",
                                                          "feature_std"]
    assert norm.softening == 3.0 and isinstance(norm.softening, float)
    mean, std = norm.feature_mean, norm.feature_std
    assert mean.shape == std.shape == norm.shape == (2, 3)
    assert mean.dtype == std.dtype == np.float64
    np.testing.assert_allclose(mean[0], np.nanmean(features[:, 0], axis=0))
    np.testing.assert_allclose(std[0], np.nanstd(features[:, 0], axis=0))
    assert mean[1, 2] == 0.0 and std[1, 2] == 1.0
    assert mean[1, 1] == 4.0 and std[1, 1] == 1e-3
    # plain Python floats: the dict form goes into JSON weights metadata
    as_dict = norm.to_dict()
    assert set(as_dict) == {"softening", "feature_mean", "feature_std"}
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert isinstance(as_dict["feature_mean"][0][0], float)
    assert Normalization.from_dict(as_dict) == norm
    floor = compute_normalization(features, min_std=0.5)
    assert floor.feature_std[1, 1] == 0.5


def test_compute_normalization_errors():
    with pytest.raises(ValueError, match=r"features must have shape \(N, C, F\)"):
        compute_normalization(np.zeros((3, 4)))
    for bad in (0.0, -1.0, np.nan, "soft"):
        with pytest.raises(ValueError, match="softening must be a positive number"):
            compute_normalization(np.zeros((3, 1, 2)), softening=bad)
    with pytest.raises(ValueError, match="min_std must be a positive number"):
        compute_normalization(np.zeros((3, 1, 2)), min_std=0)


def test_prepare_inputs_shape_errors():
    rng = np.random.default_rng(6)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features)
    with pytest.raises(ValueError, match=r"stamps must have shape \(N, C, H, W\)"):
        prepare_inputs(stamps[0], noise, features, norm)
    with pytest.raises(ValueError, match=r"noise must have shape \(N, C\) = \(6, 3\)"):
        prepare_inputs(stamps, noise[:, :2], features, norm)
    with pytest.raises(ValueError, match=r"features must have shape \(N, C, F\)"):
        prepare_inputs(stamps, noise, features[:, 0], norm)
    with pytest.raises(ValueError, match=r"\(N, C\) = \(6, 3\) to match stamps"):
        prepare_inputs(stamps, noise, features[:3], norm)
    with pytest.raises(ValueError, match="stamps must hold numbers"):
        prepare_inputs(np.full(stamps.shape, "a"), noise, features, norm)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda n: [1, 2], "normalization must be a dict with keys .* got list"),
        (lambda n: {k: v for k, v in n.items() if k != "feature_std"},
         r"normalization lacks the keys \['feature_std'\]"),
        (lambda n: {**n, "softening": 0},
         "normalization softening must be a positive number of noise sigmas, got 0"),
        (lambda n: {**n, "softening": None},
         "normalization softening must be a positive number of noise sigmas, got None"),
        (lambda n: {**n, "softening": np.inf}, "normalization softening must be a positive"),
        (lambda n: {**n, "feature_mean": n["feature_mean"][:2]},
         r"normalization feature_mean \(2, 4\) and feature_std \(3, 4\) must have the same "
         r"\(C, F\) shape"),
        (lambda n: {**n, "feature_mean": n["feature_mean"][0]},
         r"normalization feature_mean must be a \(C, F\) table of numbers .*got shape \(4,\)"),
        (lambda n: {**n, "feature_std": [["a"] * 4] * 3}, "got non-numeric values"),
        (lambda n: {**n, "feature_std": [[1.0] * 4, [1.0] * 3, [1.0] * 4]},
         "got non-numeric values"),  # ragged
        (lambda n: {**n, "feature_std": [[0.0] * 4] * 3},
         "normalization feature_std must be positive everywhere"),
        (lambda n: {**n, "feature_mean": [[np.nan] * 4] * 3},
         "normalization feature_mean must be finite"),
        (lambda n: {**n, "feature_mean": n["feature_mean"][:2],
                    "feature_std": n["feature_std"][:2]},
         r"normalization is for \(C, F\) = \(2, 4\) \(bands x features\) but the features "
         r"have \(3, 4\)"),
    ],
)
def test_normalization_validation(change, match):
    rng = np.random.default_rng(7)
    stamps, noise, features = raw_inputs(rng)
    norm = compute_normalization(features).to_dict()
    with pytest.raises(ValueError, match=match) as info:
        prepare_inputs(stamps, noise, features, change(norm))
    assert "compute_normalization()" in str(info.value)  # the message says the fix


def test_normalization_is_validated_once_and_frozen():
    mean = np.zeros((2, 3))
    std = np.ones((2, 3), dtype=np.float32)
    norm = Normalization(softening=2, feature_mean=mean, feature_std=std)
    assert norm.softening == 2.0 and isinstance(norm.softening, float)
    assert norm.feature_std.dtype == np.float64
    mean[0, 0] = 5.0  # the caller's arrays are copied
    assert norm.feature_mean[0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        norm.feature_mean[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        norm.softening = 1.0
    with pytest.raises(TypeError, match="unhashable"):
        hash(norm)
    assert Normalization.from_dict(norm) is norm
    same = Normalization.from_dict({"softening": 2.0, "feature_mean": [[0.0] * 3] * 2,
                                    "feature_std": [[1.0] * 3] * 2})
    assert same == norm and not (same != norm)
    assert same != Normalization(softening=3.0, feature_mean=mean * 0,
                                 feature_std=std)
    assert norm != norm.to_dict()  # a dict is not a Normalization
    with pytest.raises(ValueError, match="normalization softening must be a positive"):
        Normalization(softening="soft", feature_mean=mean, feature_std=std)


def test_numpy_only():
    # preprocess.py must not pull in astropy or torch: load the file on its
    # own (the package __init__ imports astropy) in a fresh interpreter
    path = Path(importlib.util.find_spec("astro_starglx.preprocess").origin)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pre', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('astropy', 'torch', 'photutils'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("shape", [(3, 2, 5, 5), (2, 3, 300, 300), (0, 7, 25, 25)])
def test_scaled_arcsinh_matches_float64(shape):
    """The vectorised float32 arcsinh of prepare_inputs, across the float32 range."""
    from astro_starglx.preprocess import _scaled_arcsinh

    rng = np.random.default_rng(7)
    mags = np.exp(rng.uniform(-40.0, 88.0, shape))
    stamps = (rng.choice([-1.0, 1.0], shape) * mags).astype(np.float32)
    edges = np.array([0.0, -0.0, 1e-30, 9.99e-5, 1e-4, 1.001e-4, 0.5, 4095.9, 4096.0, 4096.1,
                      -3e38, 3.4e38, np.inf, -np.inf, np.nan], dtype=np.float32)
    flat = stamps.reshape(-1)
    flat[:min(edges.size, flat.size)] = edges[:flat.size]
    inv = rng.uniform(0.5, 2.0, shape[:2]).astype(np.float32)
    if inv.size:
        inv.flat[0] = 0.0  # unusable noise: that stamp is zeros (inf x 0 included)
    got = _scaled_arcsinh(stamps, inv)
    with np.errstate(over="ignore", invalid="ignore"):  # as float32: 3.4e38 x 2 is inf
        expected = np.arcsinh((stamps * inv[:, :, None, None]).astype(np.float64))
    expected[~np.isfinite(expected)] = 0.0
    assert got.dtype == np.float32 and got.shape == shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=4e-7, atol=1e-30)
    assert np.array_equal(np.signbit(got[got != 0]), np.signbit(expected[got != 0]))
