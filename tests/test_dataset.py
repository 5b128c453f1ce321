"""Tests of the on-disk training set built from simulated fields."""

import json

import numpy as np
import pytest

pytest.importorskip("galsim")

from astro_starglx import dataset as ds  # noqa: E402
from astro_starglx.features import FEATURE_NAMES, PSF_FEATURE_NAMES  # noqa: E402
from astro_starglx.flags import ClassFlag  # noqa: E402

ALL_FEATURES = list(FEATURE_NAMES + PSF_FEATURE_NAMES)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "tiny"
    # no companions, so that the source count is n_stars + n_galaxies
    ds.make_dataset(path, n_stars=12, n_galaxies=24, field_size=160, stamp_size=15,
                    n_workers=1, seed=7, split_fractions=(0.6, 0.2, 0.2),
                    neighbour_fraction=0.0)
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
        assert data.features.shape == (n, 7, len(ALL_FEATURES))
        assert data.flags.dtype == np.uint16
        assert isinstance(data.stamps, np.memmap)
        # The catalog rows line up with the arrays.
        assert len(data.catalog) == n
        np.testing.assert_array_equal(data.labels,
                                      (data.catalog["label"] == "galaxy").astype(np.int8))
        np.testing.assert_array_equal(data.flags, data.catalog["flags"])
        assert info["counts"][split] == n
    assert total == 36
    assert info["feature_names"] == ALL_FEATURES
    loaded = ds.load_dataset(tiny_dataset, "train", in_memory=True)
    assert not isinstance(loaded.stamps, np.memmap)


def test_split_by_field(tiny_dataset):
    fields = {split: set(ds.load_dataset(tiny_dataset, split).catalog["field"])
              for split in ds.SPLITS}
    assert fields["train"] and fields["val"] and fields["test"]
    assert not fields["train"] & fields["val"]
    assert not fields["train"] & fields["test"]
    assert not fields["val"] & fields["test"]


def test_stamps_hold_the_sources(psf_dataset):
    """Bright sources peak at the stamp centre (truth positions land on sources)."""
    r = 3  # band index of r
    n_bright = 0
    for split in ds.SPLITS:
        data = ds.load_dataset(psf_dataset, split)
        # unflagged: not cut by the field's edge (a large galaxy cut by it peaks
        # elsewhere), nor blended (a brighter companion may peak elsewhere); the
        # noisy peak of a faint extended galaxy may be 2 pixels off
        mag = np.asarray(data.catalog["mag_r"])
        star = np.asarray(data.catalog["label"]) == "star"
        bright = ((mag < 22) | (star & (mag < 23))) & (np.asarray(data.flags) == 0)
        n_bright += np.count_nonzero(bright)
        for stamp in data.stamps[bright][:, r]:
            iy, ix = np.unravel_index(np.nanargmax(stamp), stamp.shape)
            assert abs(iy - 7) <= 1 and abs(ix - 7) <= 1
    assert n_bright >= 10


def test_resume_uses_finished_shards(tiny_dataset, monkeypatch):
    """A rebuild with all shards present simulates nothing and gives the same arrays."""
    before = ds.load_dataset(tiny_dataset, "test", in_memory=True)

    def no_simulation(task):
        raise AssertionError("simulated a field that was already on disk")

    monkeypatch.setattr(ds, "_field_task", no_simulation)
    ds.make_dataset(tiny_dataset, n_stars=12, n_galaxies=24, field_size=160, stamp_size=15,
                    n_workers=1, seed=7, split_fractions=(0.6, 0.2, 0.2),
                    neighbour_fraction=0.0)
    after = ds.load_dataset(tiny_dataset, "test", in_memory=True)
    np.testing.assert_array_equal(before.stamps, after.stamps)


def test_worker_processes_give_the_same_data_set(tiny_dataset, tmp_path):
    """Two spawned workers build the fields that one process builds, bit for bit."""
    path = tmp_path / "two"
    ds.make_dataset(path, n_stars=12, n_galaxies=24, field_size=160, stamp_size=15,
                    n_workers=2, seed=7, split_fractions=(0.6, 0.2, 0.2),
                    neighbour_fraction=0.0, progress=False)
    for split in ds.SPLITS:
        one = ds.load_dataset(tiny_dataset, split, in_memory=True)
        two = ds.load_dataset(path, split, in_memory=True)
        np.testing.assert_array_equal(one.stamps, two.stamps)
        np.testing.assert_array_equal(one.labels, two.labels)


def test_orphaned_worker_ends_itself(monkeypatch):
    """A worker whose make_dataset process is gone (re-parented) exits."""
    parents = iter([1234, 1234, 1])  # its parent, twice, then init after the kill

    class Exited(Exception):
        pass

    def exit_(status):
        raise Exited(status)

    monkeypatch.setattr(ds.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(ds.os, "_exit", exit_)
    with pytest.raises(Exited):
        ds._exit_when_orphaned(1234, interval=0.0)
    assert next(parents, None) is None  # it looked until the parent changed, no further


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="n_stars must be an integer >= 0"):
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


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"stamp_size": 1}, "stamp_size must be an integer >= 2"),
    ({"seed": -3}, "seed must be an integer >= 0"),
    ({"detect": "no"}, "detect must be True or False"),
    ({"psf_scale_range": (0.0, 1.5)}, "psf_scale_range must be a .* positive"),
    ({"psf_scale_range": (1.5, 0.75)}, "psf_scale_range must be a"),
    ({"exptime_scale_range": (-1.0, 2.0)}, "exptime_scale_range must be a"),
    ({"psf_beta_range": (1.0, 2.0)}, "psf_beta_range must be a"),
    ({"psf_gradient_range": (0.0, 1.5)}, "psf_gradient_range must be a"),
    ({"psf_ellipticity_range": (0.0, 0.95)}, "psf_ellipticity_range must be a"),
    ({"knot_fraction": 1.5}, "knot_fraction must be a"),
    ({"neighbour_fraction": 2.0}, "neighbour_fraction"),
    ({"mag_range": (26.0, 17.0)}, "mag_range"),
    ({"bands": ("r", "w")}, "bands holds unknown band names"),
    ({"position_jitter": -1.0}, "position_jitter"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.DatasetConfig(**kwargs)


def test_config_record_and_overrides(tmp_path):
    config = ds.DatasetConfig(n_stars=5, bands=["g", "r"], psf_models=["moffat"])
    assert config.bands == ("g", "r") and config.psf_models == ("moffat",)
    assert ds.DatasetConfig(**config.record()) == config
    sim = config.field_config(psf_scale=1.2)
    assert sim.bands == ("g", "r") and sim.psf_scale == 1.2 and sim.wcs_jitter == 0.5
    with pytest.raises(TypeError, match=r"unknown data set settings \['psf_sigma'\]"):
        ds.make_dataset(tmp_path, psf_sigma=1.0)
    with pytest.raises(TypeError, match="config must be a DatasetConfig"):
        ds.make_dataset(tmp_path, {"n_stars": 3})


def test_config_is_recorded(tiny_dataset):
    info = json.loads((tiny_dataset / "dataset.json").read_text())
    config = ds.DatasetConfig(**info["config"])
    assert config == ds.DatasetConfig(n_stars=12, n_galaxies=24, field_size=160,
                                      stamp_size=15, seed=7, split_fractions=(0.6, 0.2, 0.2),
                                      neighbour_fraction=0.0)
    # Format-1 readers find the settings at the top level too.
    for key, value in info["config"].items():
        assert info[key] == value, key
    # Each field's simulator settings remake it.
    from astro_starglx.simulate import SimConfig

    cond = dict(info["field_conditions"][0])
    seed = cond.pop("seed")
    assert SimConfig(**cond).shape == (160, 160) and isinstance(seed, int)


def test_field_conditions_reach_the_simulator(tmp_path, monkeypatch):
    """Each field draws its PSF, depth and galaxy variations; they are recorded."""
    from astro_starglx import simulate

    calls = []
    real = simulate.simulate_field

    def recording(config, *, seed):
        calls.append((config, seed))
        return real(config, seed=seed)

    monkeypatch.setattr(simulate, "simulate_field", recording)
    path = ds.make_dataset(tmp_path / "v", n_stars=4, n_galaxies=8, field_size=96,
                           stamp_size=11, n_workers=1, seed=3, psf_scale_range=(0.7, 1.6),
                           psf_models=("moffat", "gaussian"), exptime_scale_range=(0.5, 2.0),
                           galaxy_size_range=(0.8, 1.25), sersic_fraction=0.5,
                           colour_scatter=0.05, psf_gradient_range=(-0.4, 0.4),
                           psf_ellipticity_range=(0.05, 0.2), neighbour_fraction=0.5)
    info = json.loads((path / "dataset.json").read_text())
    conditions = info["field_conditions"]
    assert len(conditions) == len(calls) == info["n_fields"] >= 3
    for cond, (config, seed) in zip(conditions, calls):
        assert cond == {**config.record(), "seed": seed}
        assert 0.7 <= cond["psf_scale"] <= 1.6
        assert cond["psf_model"] in ("moffat", "gaussian")
        assert 0.5 <= cond["exptime_scale"] <= 2.0
        assert 0.8 <= cond["galaxy_size_scale"] <= 1.25
        assert -0.4 <= cond["psf_gradient"] <= 0.4
        assert 0.05 <= cond["psf_ellipticity"] <= 0.2 and 0.0 <= cond["psf_angle"] < 180.0
        assert cond["sersic_fraction"] == 0.5 and cond["neighbour_fraction"] == 0.5
    assert len({c["psf_scale"] for c in conditions}) == len(conditions)
    # The stored per-source PSF scale is the field's; the PSF FWHM is each
    # source's own (a gradient), and companions make blends.
    n_blended = 0
    for split in ds.SPLITS:
        data = ds.load_dataset(path, split)
        for field in set(data.catalog["field"]):
            rows = data.catalog["field"] == field
            np.testing.assert_allclose(data.catalog["psf_scale"][rows],
                                       conditions[field]["psf_scale"], rtol=1e-6)
            assert np.ptp(data.catalog["psf_fwhm_r"][rows]) > 0
        n_blended += np.count_nonzero(np.isfinite(data.catalog["neighbour_sep"]))
    assert n_blended > 0


def test_psf_ellipticity_keeps_the_other_draws_of_a_seed():
    # The ellipticities are drawn after every older per-field setting, so a
    # recorded recipe (made before the setting, hence round PSFs: the
    # default) still makes the same fields, and adding elongation changes
    # nothing else of a seed's fields.
    kwargs = {"n_stars": 300, "n_galaxies": 900, "field_size": 512, "seed": 7}
    seeds, splits, sims, _ = ds._field_plan(ds.DatasetConfig(**kwargs))
    seeds_e, splits_e, sims_e, _ = ds._field_plan(
        ds.DatasetConfig(**kwargs, psf_ellipticity_range=(0.0, 0.2)))
    assert seeds == seeds_e and list(splits) == list(splits_e)
    assert {s.psf_ellipticity for s in sims} == {0.0} and {s.knot_fraction for s in sims} == {0}
    knotty = ds._field_plan(ds.DatasetConfig(**kwargs, knot_fraction=0.3))[2]
    assert {s.knot_fraction for s in knotty} == {0.3}
    drawn = [s.psf_ellipticity for s in sims_e]
    assert 0.0 < min(drawn) < max(drawn) <= 0.2
    for sim, sim_e in zip(sims, sims_e):
        assert {**sim.record(), "psf_ellipticity": 0, "psf_angle": 0} == \
            {**sim_e.record(), "psf_ellipticity": 0, "psf_angle": 0}


def test_psf_models_error(tmp_path):
    with pytest.raises(ValueError, match="psf_models must be a non-empty subset"):
        ds.make_dataset(tmp_path, n_stars=3, psf_models=("airy", "kolmogorov"))
    with pytest.raises(ValueError, match="psf_models must be a non-empty subset"):
        ds.make_dataset(tmp_path, n_stars=3, psf_models=())


def test_simulate_inputs_at_detections():
    """detect=True cuts the stamps at the package's detections, matched to the truth."""
    from astropy.coordinates import SkyCoord

    config = ds.DatasetConfig(n_stars=6, n_galaxies=6, field_size=128, stamp_size=15,
                              bands=("g", "r"), mag_range=(19.0, 21.5), neighbour_fraction=0.0)
    sim = config.field_config(n_stars=6, n_galaxies=6)
    at_truth = ds.simulate_inputs(sim, seed=5, field_id=0, stamp_size=15, detect=False,
                                  position_jitter=0.0)
    found = ds.simulate_inputs(sim, seed=5, field_id=0, stamp_size=15, detect=True,
                               position_jitter=0.0)
    # bright, isolated sources: (nearly) all detected, each once, within the match radius
    assert len(at_truth["id"]) - 2 <= len(found["id"]) <= len(at_truth["id"])
    assert len(set(found["id"])) == len(found["id"])
    truth = {i: k for k, i in enumerate(at_truth["id"])}
    k = [truth[i] for i in found["id"]]
    sep = SkyCoord(found["ra"], found["dec"], unit="deg").separation(
        SkyCoord(at_truth["ra"][k], at_truth["dec"][k], unit="deg")).arcsec
    assert np.all(sep < 0.2)
    np.testing.assert_array_equal(found["labels"], at_truth["labels"][k])
    assert found["stamps"].shape[1:] == (2, 15, 15)


# --------------------------------------------------------------------------
# the PSF as classify() finds it


@pytest.fixture(scope="module")
def psf_dataset(tmp_path_factory):
    """Three 512 x 512 fields of 25 sources: enough stars to measure most bands' PSF."""
    path = tmp_path_factory.mktemp("ds") / "psf"
    ds.make_dataset(path, n_stars=45, n_galaxies=30, field_size=512, stamp_size=15,
                    n_workers=1, seed=3, split_fractions=(1, 1, 1))
    return path


def test_psf_features_and_estimates(psf_dataset):
    info = json.loads((psf_dataset / "dataset.json").read_text())
    assert info["feature_names"] == ALL_FEATURES
    bands = info["bands"]
    nominal = ds.nominal_fwhm(bands, pixel_scale=info["pixel_scale"])
    assert info["nominal_fwhm"] == pytest.approx(nominal)
    assert list(nominal) == bands and all(0.1 < v < 0.2 for v in nominal.values())
    assert nominal["NUV"] < nominal["y"]  # the PSF grows with wavelength
    i_fwhm = ALL_FEATURES.index("psf_fwhm")
    n_measured = 0
    for split in ds.SPLITS:
        data = ds.load_dataset(psf_dataset, split)
        cat = data.catalog
        assert data.features.shape[2] == len(ALL_FEATURES)
        fell_back = []
        for c, band in enumerate(bands):
            est = np.asarray(cat[f"psf_est_{band}"])
            truth = np.asarray(cat[f"psf_fwhm_{band}"])
            # the psf_fwhm feature is the estimate at the source
            np.testing.assert_array_equal(data.features[:, c, i_fwhm], est)
            if np.all(est == np.float32(nominal[band])):
                fell_back.append(band)
                continue
            n_measured += 1
            np.testing.assert_allclose(est, truth, rtol=0.15)
            # the fitted profile shape: one per field and band, the psf_gamma feature
            gamma = np.asarray(cat[f"psf_gamma_{band}"])
            assert np.all(np.isfinite(gamma)) and np.ptp(gamma) == 0
            np.testing.assert_array_equal(
                data.features[:, c, ALL_FEATURES.index("psf_gamma")], gamma)
        # one field per split: the flag says whether any band fell back
        assert len(set(cat["field"])) == 1
        assert set(cat["psf_fell_back"]) == {bool(fell_back)}
    assert n_measured >= 14  # most (field, band) pairs are measured


def test_psf_estimates_ignore_the_header(monkeypatch, tmp_path):
    """The simulator's PSF keywords are removed before resolve_psf sees the images."""
    import astro_starglx.psf as psf_module

    seen = []
    original = psf_module.resolve_psf

    def spy(images, positions, **kwargs):
        seen.append({band: dict(image.meta) for band, image in images.items()})
        return original(images, positions, **kwargs)

    monkeypatch.setattr(psf_module, "resolve_psf", spy)
    config = ds.DatasetConfig(n_stars=4, n_galaxies=4, field_size=96, stamp_size=15,
                              bands=("g", "r"))
    arrays = ds.simulate_inputs(config.field_config(n_stars=4, n_galaxies=4), seed=1,
                                field_id=0, stamp_size=15, detect=False, position_jitter=0.0)
    assert len(seen) == 1
    for meta in seen[0].values():
        assert "MAGZERO" in meta
        assert not {"PSFFWHM", "PSF_FWHM", "SEEING", "FWHM", "PSFR80"} & set(meta)
    # too few stars: the nominal PSF, and the field says so
    assert arrays["psf_fell_back"].all()
    for band in ("g", "r"):
        np.testing.assert_allclose(arrays[f"psf_est_{band}"],
                                   ds.nominal_fwhm(["g", "r"], pixel_scale=0.074)[band],
                                   rtol=1e-6)
        assert np.all(np.isnan(arrays[f"psf_gamma_{band}"]))  # no shape fitted
    assert arrays["features"].shape[2] == len(ALL_FEATURES)
    assert arrays["flags"].dtype == np.uint16


def test_blended_flag_in_the_data_set(monkeypatch):
    """simulate_inputs ORs the reference band's BLENDED bits into the flags."""
    import astro_starglx.inputs as inputs_module

    def all_blended(image, x, y, *, size, ratio=0.1):
        return np.full(len(x), ClassFlag.BLENDED, dtype=np.uint16)

    monkeypatch.setattr(inputs_module, "blend_flags", all_blended)
    config = ds.DatasetConfig(n_stars=3, n_galaxies=3, field_size=96, stamp_size=15,
                              bands=("r",))
    arrays = ds.simulate_inputs(config.field_config(n_stars=3, n_galaxies=3), seed=2,
                                field_id=0, stamp_size=15, detect=False, position_jitter=0.0)
    assert np.all(arrays["flags"] & ClassFlag.BLENDED)


# ---------------------------------------------------------------------------
# your own labelled images


@pytest.fixture(scope="module")
def user_fields():
    """Two 3-band fields at 0.1"/px with labelled catalogs (a non-CSST 'survey')."""
    from astropy.table import Table

    from astro_starglx.simulate import simulate_field

    fields = []
    for seed in (21, 22):
        images, truth = simulate_field(shape=(200, 200), seed=seed, bands=("g", "r", "i"),
                                       pixel_scale=0.1, psf_scale=1.5, n_stars=14,
                                       n_galaxies=18)
        catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"],
                         "mag_r": truth["mag_r"]})
        fields.append((catalog, images))
    return fields


def test_make_labelled_dataset_round_trip(user_fields, tmp_path):
    from astro_starglx.training import TrainConfig, train_release

    catalogs = [c for c, _ in user_fields]
    images = [i for _, i in user_fields]
    before = [c.copy() for c in catalogs]
    path = ds.make_labelled_dataset(catalogs, images, tmp_path / "own", stamp_size=15,
                                    split_fractions=(0.6, 0.2, 0.2), seed=3)
    for cat, old in zip(catalogs, before):
        assert cat.colnames == old.colnames and np.all(cat["ra"] == old["ra"])
    info = json.loads((path / "dataset.json").read_text())
    assert info["source"] == "labelled" and info["bands"] == ["g", "r", "i"]
    assert info["pixel_scale"] == pytest.approx(0.1, rel=1e-3)
    assert info["config"]["split_by"] == "source"  # 2 fields: split by source
    assert info["feature_names"] == ALL_FEATURES
    total = 0
    for split in ds.SPLITS:
        data = ds.load_dataset(path, split)
        n = len(data)
        total += n
        assert data.stamps.shape == (n, 3, 15, 15)
        assert data.features.shape == (n, 3, len(ALL_FEATURES))
        assert set(np.unique(data.labels)) == {0, 1}  # stratified: both classes
        cat = data.catalog
        assert {"field", "row", "ra", "dec", "label", "mag_r", "mag_g", "psf_fwhm_r",
                "redshift"} <= set(cat.colnames)
        # rows point back at the user's catalogs; mag_r is the catalog's own column
        for f, r, label, mag in zip(cat["field"], cat["row"], cat["label"], cat["mag_r"]):
            assert catalogs[f]["label"][r] == label
            assert catalogs[f]["mag_r"][r] == pytest.approx(mag, rel=1e-5)
        assert np.isfinite(cat["mag_g"]).mean() > 0.5  # measured where not given
    assert total == sum(len(c) for c in catalogs)
    # the training recipe reads it like a simulated set
    weights = train_release(path, tmp_path / "run", config=TrainConfig(epochs=1, batch_size=16),
                            device="cpu", command="pytest", progress=False)
    assert weights.is_file()
    with pytest.raises(ValueError, match="already holds a data set; pass overwrite=True"):
        ds.make_labelled_dataset(catalogs, images, path, stamp_size=15)
    ds.make_labelled_dataset(catalogs, images, path, stamp_size=15, overwrite=True,
                             bands=("r", "z"), seed=4)
    info = json.loads((path / "dataset.json").read_text())
    assert info["bands"] == ["r", "z"]
    assert np.isnan(ds.load_dataset(path, "train").stamps[:, 1]).all()  # no z images


def test_make_labelled_dataset_split_by_field(user_fields, tmp_path):
    catalog, images = user_fields[0]
    fields = [(catalog, images)] * 3
    path = ds.make_labelled_dataset([c for c, _ in fields], [i for _, i in fields],
                                    tmp_path / "byfield", stamp_size=15, split_by="field",
                                    split_fractions=(1, 1, 1))
    used = {s: set(ds.load_dataset(path, s).catalog["field"]) for s in ds.SPLITS}
    assert sorted(len(v) for v in used.values()) == [1, 1, 1]
    assert not (used["train"] & used["val"]) and not (used["train"] & used["test"])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"split_fractions": (1.0, 0.0, 0.5)}, ValueError, "split_fractions must be three"),
    ({"split_by": "row"}, ValueError, "split_by"),
    ({"stamp_size": 1}, ValueError, "stamp_size must be an integer >= 2"),
    ({"split_by": "field"}, ValueError, "split_by='field' needs at least 3 fields"),
    ({"label_column": "truth"}, ValueError, "label_column 'truth' is not in the catalog"),
    ({"bands": "r"}, ValueError, "bands must be a sequence of band names"),
    ({"nominal_fwhm": {"g": 1.0}}, ValueError, "nominal_fwhm must give every band"),
])
def test_make_labelled_dataset_errors(user_fields, tmp_path, kwargs, error, match):
    catalog, images = user_fields[0]
    with pytest.raises(error, match=match):
        ds.make_labelled_dataset(catalog, images, tmp_path / "x", **{"stamp_size": 15,
                                                                     **kwargs})


def test_make_labelled_dataset_needs_both_classes(user_fields, tmp_path):
    catalog, images = user_fields[0]
    stars = catalog[catalog["label"] == "star"][:6]
    stars["label"][:1] = "galaxy"  # one galaxy: none left for validation
    with pytest.raises(ValueError, match="both classes are needed"):
        ds.make_labelled_dataset(stars, images, tmp_path / "y", stamp_size=15,
                                 split_fractions=(0.4, 0.3, 0.3))
