"""Tests of StarGalaxyClassifier on synthetic multi-band images built in code."""

import warnings

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.coordinates import SkyCoord
from astropy.nddata import CCDData, InverseVariance, NDData
from astropy.table import Table
from astropy.wcs import WCS

from astro_starglx import ClassFlag, StarGalaxyClassifier, StarGalaxyWarning
from astro_starglx.csst import CSST_BANDS
from astro_starglx.weights import read_meta, save_weights

SHAPE = (120, 150)  # (ny, nx): non-square to catch x/y swaps
ZP = 25.0


def make_wcs(*, crpix=(75.0, 60.0), scale=0.074, rot_deg=0.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]  # FITS is 1-based
    c, s = np.cos(np.deg2rad(rot_deg)), np.sin(np.deg2rad(rot_deg))
    w.wcs.cd = scale / 3600.0 * np.array([[-c, s], [s, c]])
    return w


def render(xs, ys, fluxes, sigmas, *, shape=SHAPE, noise=0.02, seed=0, scale=1.0, zp=ZP):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    data = np.zeros(shape)
    for x, y, f, s in zip(xs, ys, fluxes, sigmas):
        data += f / (2 * np.pi * s**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s**2))
    data += np.random.default_rng(seed).normal(0, noise, shape)
    return data * scale


@pytest.fixture
def field():
    """A 7-band field with per-band WCS offsets (integer pixels) and a catalog."""
    rng = np.random.default_rng(42)
    n = 12
    x = rng.uniform(20, SHAPE[1] - 20, n)
    y = rng.uniform(20, SHAPE[0] - 20, n)
    sig = np.where(np.arange(n) % 2 == 0, 1.0, 2.5)
    flux = rng.uniform(20, 60, n)
    base = make_wcs()
    coords = base.pixel_to_world(x, y)
    images = {}
    for k, band in enumerate(CSST_BANDS):
        dx, dy = (k % 3) - 1, (k % 2) * 2 - 1  # each band on its own grid
        w = make_wcs(crpix=(75.0 + dx, 60.0 + dy))
        bx, by = w.world_to_pixel(coords)
        data = render(bx, by, flux, sig, seed=k)
        images[band] = CCDData(data, unit="electron/s", wcs=w,
                               meta={"MAGZERO": ZP, "FILTER": band},
                               uncertainty=InverseVariance(np.full(SHAPE, 1 / 0.02**2)))
    catalog = Table({"id": np.arange(n), "ra": coords.ra.deg, "dec": coords.dec.deg})
    return catalog, images


@pytest.fixture
def clf(tiny_weights_file):
    return StarGalaxyClassifier(tiny_weights_file, device="cpu", batch_size=5)


def test_classify_columns_and_meta(clf, field, tiny_weights_file):
    catalog, images = field
    out = clf.classify(catalog, images)
    assert out is not catalog
    assert out.colnames == ["id", "ra", "dec", "p_star", "p_galaxy", "class", "class_flags"]
    assert out["p_star"].dtype == np.float32 and out["p_galaxy"].dtype == np.float32
    np.testing.assert_allclose(out["p_star"] + out["p_galaxy"], 1.0, atol=1e-6)
    assert set(out["class"]) <= {"star", "galaxy"}
    expected = np.where(out["p_galaxy"] >= clf.meta.threshold, "galaxy", "star")
    assert list(out["class"]) == list(expected)
    prov = out.meta["astro_starglx"]
    assert prov["weights_sha256"] == clf.loaded.sha256
    assert prov["model"] == read_meta(tiny_weights_file).name
    assert prov["threshold"] == 0.5 and prov["device"] == "cpu"
    assert "version" in prov
    assert np.all(out["class_flags"] == 0)


def test_predict_proba_matches_classify(clf, field):
    catalog, images = field
    proba = clf.predict_proba(catalog, images)
    out = clf.classify(catalog, images)
    assert proba.shape == (len(catalog), 2) and proba.dtype == np.float32
    np.testing.assert_array_equal(proba[:, 1], out["p_galaxy"])


def test_batch_size_does_not_change_results(tiny_weights_file, field):
    catalog, images = field
    a = StarGalaxyClassifier(tiny_weights_file, device="cpu", batch_size=1)
    b = StarGalaxyClassifier(tiny_weights_file, device="cpu", batch_size=1000)
    np.testing.assert_allclose(a.predict_proba(catalog, images),
                               b.predict_proba(catalog, images), atol=1e-6)


def test_inputs_not_mutated(clf, field):
    catalog, images = field
    cat_before = catalog.copy()
    data_before = {b: im.data.copy() for b, im in images.items()}
    clf.classify(catalog, images)
    assert catalog.colnames == cat_before.colnames
    for name in catalog.colnames:
        np.testing.assert_array_equal(catalog[name], cat_before[name])
    for band, image in images.items():
        np.testing.assert_array_equal(image.data, data_before[band])


def test_per_band_wcs_is_used(clf, field):
    """Integer per-band pixel offsets, compensated by the WCS, change nothing."""
    catalog, images = field
    aligned = {}
    for band, image in images.items():
        w = image.wcs
        bx, by = w.world_to_pixel(SkyCoord(catalog["ra"], catalog["dec"], unit="deg"))
        dx = int(round(w.wcs.crpix[0] - 1 - 75.0))
        dy = int(round(w.wcs.crpix[1] - 1 - 60.0))
        # Undo the band's shift in the data and the WCS: same sky, common grid.
        data = np.roll(image.data, (-dy, -dx), axis=(0, 1))
        aligned[band] = CCDData(data, unit=image.unit, wcs=make_wcs(), meta=image.meta,
                                uncertainty=image.uncertainty)
    p_shifted = clf.predict_proba(catalog, images)
    p_aligned = clf.predict_proba(catalog, aligned)
    np.testing.assert_allclose(p_shifted, p_aligned, atol=1e-5)


def test_shared_grid_pixels_equal_sky_positions(clf, field):
    catalog, images = field
    common = {b: CCDData(im.data, unit=im.unit, wcs=images["NUV"].wcs, meta=im.meta)
              for b, im in images.items()}
    x, y = images["NUV"].wcs.world_to_pixel(SkyCoord(catalog["ra"], catalog["dec"],
                                                     unit="deg"))
    pix = Table({"x": x, "y": y})
    np.testing.assert_allclose(clf.predict_proba(pix, common, shared_grid=True),
                               clf.predict_proba(catalog, common), atol=1e-6)


def test_skycoord_column(clf, field):
    catalog, images = field
    sc = Table({"pos": SkyCoord(catalog["ra"], catalog["dec"], unit="deg")})
    np.testing.assert_allclose(clf.predict_proba(sc, images),
                               clf.predict_proba(catalog, images), atol=1e-6)
    q = Table({"RA": catalog["ra"] * u.deg, "DEC": catalog["dec"] * u.deg})
    np.testing.assert_allclose(clf.predict_proba(q, images, ra_column="RA", dec_column="DEC"),
                               clf.predict_proba(catalog, images), atol=1e-6)


def test_zeropoint_and_unit_invariance(clf, field):
    """The same sky at another zero point / exposure scaling gives the same classes."""
    catalog, images = field
    k = 7.3
    scaled = {b: CCDData(im.data * k, unit="adu", wcs=im.wcs,
                         meta={"MAGZERO": ZP + 2.5 * np.log10(k)},
                         uncertainty=InverseVariance(im.uncertainty.array / k**2))
              for b, im in images.items()}
    np.testing.assert_allclose(clf.predict_proba(catalog, scaled),
                               clf.predict_proba(catalog, images), atol=2e-4)
    # The zeropoints argument overrides the header.
    no_zp = {b: CCDData(im.data, unit=im.unit, wcs=im.wcs, uncertainty=im.uncertainty)
             for b, im in scaled.items()}
    clf_zp = StarGalaxyClassifier(clf.model, device="cpu",
                                  zeropoints={b: ZP + 2.5 * np.log10(k) for b in CSST_BANDS})
    np.testing.assert_allclose(clf_zp.predict_proba(catalog, no_zp),
                               clf.predict_proba(catalog, images), atol=2e-4)


def test_noise_from_uncertainty_or_image(clf, field):
    """Without uncertainty the noise is estimated robustly: same classes."""
    catalog, images = field
    bare = {b: CCDData(im.data, unit=im.unit, wcs=im.wcs, meta=im.meta)
            for b, im in images.items()}
    out_a = clf.classify(catalog, images)
    out_b = clf.classify(catalog, bare)
    assert np.mean(out_a["class"] == out_b["class"]) >= 0.9
    np.testing.assert_allclose(out_a["p_galaxy"], out_b["p_galaxy"], atol=0.05)


def test_flags_and_single_summary_warning(clf, field):
    catalog, images = field
    w = images["NUV"].wcs
    extra = w.pixel_to_world([-500.0, 2.0, 60.0], [-500.0, 60.0, 60.0])
    cat = Table({"id": [100, 101, 102], "ra": extra.ra.deg, "dec": extra.dec.deg})
    masked = {}
    for band, image in images.items():
        mask = np.zeros(SHAPE, bool)
        bx, by = image.wcs.world_to_pixel(extra[2])
        mask[int(round(float(by))), int(round(float(bx)))] = True
        masked[band] = CCDData(image.data, unit=image.unit, wcs=image.wcs, meta=image.meta,
                               mask=mask, uncertainty=image.uncertainty)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = clf.classify(cat, masked)
    ours = [r for r in record if issubclass(r.category, StarGalaxyWarning)]
    assert len(ours) == 1
    assert "3 of 3 sources flagged" in str(ours[0].message)
    flags = np.asarray(out["class_flags"])
    assert flags[0] & ClassFlag.OFF_IMAGE
    assert out["p_galaxy"].mask[0] and out["class"].mask[0]
    assert flags[1] & ClassFlag.PARTIAL and not out["p_galaxy"].mask[1]
    assert flags[2] & ClassFlag.MASKED and not flags[2] & ClassFlag.OFF_IMAGE
    assert len(out) == 3


def test_missing_band_flag(clf, field):
    catalog, images = field
    partial = {b: im for b, im in images.items() if b != "u"}
    with pytest.warns(StarGalaxyWarning, match="BAND_MISSING"):
        out = clf.classify(catalog, partial)
    assert np.all(np.asarray(out["class_flags"]) & ClassFlag.BAND_MISSING)
    assert not np.any(out["p_galaxy"].mask)


def test_missing_band_error_when_model_needs_it(tmp_path, tiny_meta, field):
    catalog, images = field
    meta = dict(tiny_meta, allow_missing_bands=False, name="strict")
    from astro_starglx.model import build_model

    path = tmp_path / "strict.safetensors"
    save_weights(path, build_model(meta["architecture"]).state_dict(), meta)
    clf = StarGalaxyClassifier(path, device="cpu")
    partial = {b: im for b, im in images.items() if b != "z"}
    with pytest.raises(ValueError, match=r"missing band\(s\) \['z'\]"):
        clf.classify(catalog, partial)


def test_empty_table(clf, field):
    _, images = field
    empty = Table({"ra": np.zeros(0), "dec": np.zeros(0)})
    out = clf.classify(empty, images)
    assert len(out) == 0
    assert {"p_star", "p_galaxy", "class", "class_flags"} <= set(out.colnames)


def test_overwrite(clf, field):
    catalog, images = field
    out = clf.classify(catalog, images)
    with pytest.raises(ValueError, match="already has output column.*overwrite=True"):
        clf.classify(out, images)
    again = clf.classify(out, images, overwrite=True)
    np.testing.assert_allclose(again["p_galaxy"], out["p_galaxy"], atol=1e-6)
    assert again.colnames == out.colnames


def test_missing_position_columns(clf, field):
    _, images = field
    bad = Table({"alpha": [150.0], "delta": [2.0]})
    with pytest.raises(ValueError, match=r"no sky positions.*available columns: \['alpha', "
                                         r"'delta'\]"):
        clf.classify(bad, images)


def test_pixel_columns_need_shared_grid(clf, field):
    _, images = field
    pix = Table({"x": [10.0], "y": [10.0]})
    with pytest.raises(ValueError, match="shared_grid=True"):
        clf.classify(pix, images)
    with pytest.raises(ValueError, match="shared_grid=True needs pixel columns"):
        clf.classify(Table({"a": [1.0]}), images, shared_grid=True)


def test_non_finite_coordinates(clf, field):
    catalog, images = field
    bad = catalog.copy()
    bad["dec"][3] = np.nan
    with pytest.raises(ValueError, match=r"column 'dec' has 1 non-finite.*rows \[3\]"):
        clf.classify(bad, images)


def test_images_type_errors(clf, field):
    catalog, images = field
    with pytest.raises(TypeError, match="images must be a CCDData/NDData or a mapping"):
        clf.classify(catalog, np.zeros((10, 10)))
    with pytest.raises(TypeError, match=r"images\['g'\] must be an astropy CCDData"):
        clf.classify(catalog, dict(images, g=np.zeros((10, 10))))
    with pytest.raises(TypeError, match="catalog must be an astropy Table"):
        clf.classify({"ra": [1.0]}, images)


def test_single_image_without_band(clf, field):
    catalog, images = field
    lone = NDData(images["r"].data, wcs=images["r"].wcs, meta={"MAGZERO": ZP})
    with pytest.raises(ValueError, match=r"single image but the model reads bands"):
        clf.classify(catalog, lone)
    lone.meta["FILTER"] = "r"
    with pytest.warns(StarGalaxyWarning, match="BAND_MISSING"):
        out = clf.classify(catalog, lone)
    assert len(out) == len(catalog)


def test_no_wcs_with_sky_positions(clf, field):
    catalog, images = field
    images = dict(images, r=CCDData(images["r"].data, unit="electron/s",
                                    meta={"MAGZERO": ZP}))
    with pytest.raises(ValueError, match=r"images\['r'\] has no WCS"):
        clf.classify(catalog, images)


def test_no_matching_bands(clf, field):
    catalog, images = field
    renamed = {f"F{k}": im for k, im in enumerate(images.values())}
    with pytest.raises(ValueError, match="name the mapping's keys after the model's bands"):
        clf.classify(catalog, renamed)


def test_device_and_options_errors():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda' was requested"):
            StarGalaxyClassifier(device="cuda")
    with pytest.raises(ValueError, match="device must be None"):
        StarGalaxyClassifier(device="tpu-9000")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        StarGalaxyClassifier(batch_size=0)
    with pytest.raises(ValueError, match="threshold must be None or a float"):
        StarGalaxyClassifier(threshold=1.5)
    with pytest.raises(TypeError, match="zeropoints must be a mapping"):
        StarGalaxyClassifier(zeropoints=25.0)


def test_construction_does_no_io(monkeypatch):
    import astro_starglx.weights as weights

    def boom(*args, **kwargs):
        raise AssertionError("I/O at construction")

    monkeypatch.setattr(weights, "load_model", boom)
    clf = StarGalaxyClassifier("rbim-lite", device="cpu")
    assert clf._loaded is None
    assert "rbim-lite" in repr(clf)


def test_threshold_override(tiny_weights_file, field):
    catalog, images = field
    low = StarGalaxyClassifier(tiny_weights_file, device="cpu", threshold=0.01)
    out = low.classify(catalog, images)
    assert out.meta["astro_starglx"]["threshold"] == 0.01
    assert list(out["class"]) == list(np.where(out["p_galaxy"] >= 0.01, "galaxy", "star"))


def test_pixel_scale_mismatch_warns(clf, field):
    catalog, images = field
    coarse = {b: CCDData(im.data, unit=im.unit, wcs=make_wcs(scale=0.2), meta=im.meta,
                         uncertainty=im.uncertainty) for b, im in images.items()}
    with pytest.warns(StarGalaxyWarning, match="differs by more than 10%.*resample"):
        clf.classify(catalog, coarse)
