"""Tests of the on-disk training set built from simulated fields."""

import json

import numpy as np
import pytest

pytest.importorskip("galsim")

from astro_starglx import dataset as ds  # noqa: E402
from astro_starglx.features import FEATURE_NAMES  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "tiny"
    ds.make_dataset(path, n_stars=12, n_galaxies=24, field_size=160, stamp_size=15,
                    n_workers=1, seed=7, split_fractions=(0.6, 0.2, 0.2))
    return path


def test_round_trip(tiny_dataset):
    info = json.loads((tiny_dataset / "dataset.json").read_text())
    total = 0
    for split in ds.SPLITS:
        data = ds.load_dataset(tiny_dataset, split)
        n = len(data)
        total += n
        assert data.stamps.shape == (n, 7, 15, 15) and data.stamps.dtype == np.float32
        assert data.noise.shape == (n, 7)
        assert data.features.shape == (n, 7, len(FEATURE_NAMES))
        assert data.flags.dtype == np.uint16
        assert isinstance(data.stamps, np.memmap)
        # The catalog rows line up with the arrays.
        assert len(data.catalog) == n
        np.testing.assert_array_equal(data.labels,
                                      (data.catalog["label"] == "galaxy").astype(np.int8))
        np.testing.assert_array_equal(data.flags, data.catalog["flags"])
        assert info["counts"][split] == n
    assert total == 36
    assert info["feature_names"] == list(FEATURE_NAMES)
    loaded = ds.load_dataset(tiny_dataset, "train", in_memory=True)
    assert not isinstance(loaded.stamps, np.memmap)


def test_split_by_field(tiny_dataset):
    fields = {split: set(ds.load_dataset(tiny_dataset, split).catalog["field"])
              for split in ds.SPLITS}
    assert fields["train"] and fields["val"] and fields["test"]
    assert not fields["train"] & fields["val"]
    assert not fields["train"] & fields["test"]
    assert not fields["val"] & fields["test"]


def test_stamps_hold_the_sources(tiny_dataset):
    """Bright sources peak at the stamp centre (truth positions land on sources)."""
    data = ds.load_dataset(tiny_dataset, "train")
    bright = np.asarray(data.catalog["mag_r"]) < 22
    r = 3  # band index of r
    for stamp in data.stamps[bright][:, r]:
        iy, ix = np.unravel_index(np.nanargmax(stamp), stamp.shape)
        assert abs(iy - 7) <= 1 and abs(ix - 7) <= 1


def test_resume_uses_finished_shards(tiny_dataset, monkeypatch):
    """A rebuild with all shards present simulates nothing and gives the same arrays."""
    before = ds.load_dataset(tiny_dataset, "test", in_memory=True)

    def no_simulation(task):
        raise AssertionError("simulated a field that was already on disk")

    monkeypatch.setattr(ds, "_field_task", no_simulation)
    ds.make_dataset(tiny_dataset, n_stars=12, n_galaxies=24, field_size=160, stamp_size=15,
                    n_workers=1, seed=7, split_fractions=(0.6, 0.2, 0.2))
    after = ds.load_dataset(tiny_dataset, "test", in_memory=True)
    np.testing.assert_array_equal(before.stamps, after.stamps)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="n_stars must be a non-negative int"):
        ds.make_dataset(tmp_path, n_stars=-1)
    with pytest.raises(ValueError, match="n_stars \\+ n_galaxies must be positive"):
        ds.make_dataset(tmp_path, n_stars=0, n_galaxies=0)
    with pytest.raises(ValueError, match="split_fractions must be three"):
        ds.make_dataset(tmp_path, n_stars=1, split_fractions=(1.0, 0.0))
    with pytest.raises(ValueError, match="n_workers must be a positive int"):
        ds.make_dataset(tmp_path, n_stars=1, n_workers=0)
    with pytest.raises(ValueError, match="split must be one of"):
        ds.load_dataset(tmp_path, "holdout")
    with pytest.raises(FileNotFoundError, match="astro-starglx make-dataset"):
        ds.load_dataset(tmp_path, "train")


def test_field_conditions_reach_the_simulator(tmp_path, monkeypatch):
    """Each field draws its PSF, depth and galaxy variations; they are recorded."""
    from astro_starglx import simulate

    calls = []
    real = simulate.simulate_field

    def recording(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(simulate, "simulate_field", recording)
    path = ds.make_dataset(tmp_path / "v", n_stars=4, n_galaxies=8, field_size=96,
                           stamp_size=11, n_workers=1, seed=3, psf_scale_range=(0.7, 1.6),
                           psf_models=("moffat", "gaussian"), exptime_scale_range=(0.5, 2.0),
                           galaxy_size_range=(0.8, 1.25), sersic_fraction=0.5,
                           colour_scatter=0.05)
    info = json.loads((path / "dataset.json").read_text())
    conditions = info["field_conditions"]
    assert len(conditions) == len(calls) == info["n_fields"] >= 3
    for cond, kwargs in zip(conditions, calls):
        for key in ("psf_scale", "psf_model", "psf_beta", "exptime_scale",
                    "galaxy_size_scale", "sersic_fraction", "colour_scatter"):
            assert kwargs[key] == cond[key], key
        assert 0.7 <= cond["psf_scale"] <= 1.6
        assert cond["psf_model"] in ("moffat", "gaussian")
        assert 0.5 <= cond["exptime_scale"] <= 2.0
        assert 0.8 <= cond["galaxy_size_scale"] <= 1.25
    assert len({c["psf_scale"] for c in conditions}) == len(conditions)
    # The stored per-source PSF scale is the field's.
    for split in ds.SPLITS:
        data = ds.load_dataset(path, split)
        for field in set(data.catalog["field"]):
            rows = data.catalog["field"] == field
            np.testing.assert_allclose(data.catalog["psf_scale"][rows],
                                       conditions[field]["psf_scale"], rtol=1e-6)


def test_psf_models_error(tmp_path):
    with pytest.raises(ValueError, match="psf_models must be a non-empty subset"):
        ds.make_dataset(tmp_path, n_stars=3, psf_models=("airy", "kolmogorov"))
    with pytest.raises(ValueError, match="psf_models must be a non-empty subset"):
        ds.make_dataset(tmp_path, n_stars=3, psf_models=())
