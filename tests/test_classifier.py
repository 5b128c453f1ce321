"""Tests of StarGalaxyClassifier on synthetic multi-band images built in code."""

import re
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
    # A jittered 4 x 3 grid: no source within another's stamp (no BLENDED flag),
    # even when a 0.2"/pixel WCS shrinks the separations 2.7 times.
    gx, gy = np.meshgrid(np.linspace(20, SHAPE[1] - 20, 4), np.linspace(20, SHAPE[0] - 20, 3))
    x = gx.ravel() + rng.uniform(-3, 3, n)
    y = gy.ravel() + rng.uniform(-3, 3, n)
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


def test_images_calibrated_in_njy_need_no_zeropoint(clf, field):
    """Images in nJy (no MAGZERO) classify as the same sky in counts with its zero point."""
    catalog, images = field
    to_njy = 10 ** (-0.4 * (ZP - 31.4000656))  # one image unit in nJy
    njy = {b: CCDData(im.data * to_njy, unit="nJy", wcs=im.wcs,
                      uncertainty=InverseVariance(im.uncertainty.array / to_njy**2))
           for b, im in images.items()}
    assert all("MAGZERO" not in im.meta for im in njy.values())
    np.testing.assert_allclose(clf.predict_proba(catalog, njy),
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


def test_warns_when_the_uncertainty_does_not_describe_the_pixels(clf, field):
    """A weight map wrapped as StdDevUncertainty: one warning naming the band, in the meta."""
    from astropy.nddata import StdDevUncertainty

    catalog, images = field
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = clf.classify(catalog, images)
    assert not any("uncertainty of band" in str(r.message) for r in record)
    assert "uncertainty_mismatch" not in out.meta["astro_starglx"]
    wrong = dict(images)
    weights = images["r"].uncertainty.array  # 1 / sigma**2
    wrong["r"] = CCDData(images["r"].data, unit=images["r"].unit, wcs=images["r"].wcs,
                         meta=images["r"].meta, uncertainty=StdDevUncertainty(weights))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = clf.classify(catalog, wrong)
    messages = [str(r.message) for r in record if "uncertainty of band" in str(r.message)]
    assert len(messages) == 1
    assert "['r']" in messages[0] and "StdDevUncertainty" in messages[0]
    assert "InverseVariance(w)" in messages[0]
    ratio = out.meta["astro_starglx"]["uncertainty_mismatch"]
    assert set(ratio) == {"r"} and ratio["r"] > 100


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


def test_non_finite_coordinates_are_per_source(clf, field):
    """One NaN or masked coordinate used to reject the whole catalog: now it flags that row."""
    catalog, images = field
    ref = clf.classify(catalog, images)
    for kind in ("nan", "masked"):
        bad = Table(catalog, masked=kind == "masked", copy=True)
        if kind == "nan":
            bad["dec"][3] = np.nan
        else:
            bad["ra"].mask[3] = True
        before = bad.copy()
        with pytest.warns(StarGalaxyWarning, match=r"1 of 12 sources flagged \(OFF_IMAGE 1"):
            out = clf.classify(bad, images)
        assert len(out) == len(catalog)
        assert out["class_flags"][3] & ClassFlag.OFF_IMAGE
        assert out["p_galaxy"].mask[3] and out["p_star"].mask[3] and out["class"].mask[3]
        keep = np.arange(len(catalog)) != 3
        assert not np.any(out["p_galaxy"].mask[keep])
        np.testing.assert_allclose(out["p_galaxy"][keep], ref["p_galaxy"][keep], atol=1e-6)
        for name in catalog.colnames:  # the input is untouched
            np.testing.assert_array_equal(bad[name], before[name])


def test_classify_files_lists_and_common_column_names(clf, field, tmp_path):
    """Paths, HDUs and a FILTER-named list give the CCDData results; so do RA/DEC columns."""
    from astropy.io import fits

    catalog, images = field
    ref = clf.classify(catalog, images)
    paths = {}
    for band, image in images.items():
        paths[band] = tmp_path / f"{band}.fits"
        image.write(paths[band])
    hdus = {band: fits.open(path) for band, path in paths.items()}
    upper = catalog.copy()
    upper.rename_columns(["ra", "dec"], ["RA", "DEC"])
    for other_catalog, other_images in [(catalog, paths), (catalog, hdus),
                                        (catalog, list(paths.values())), (upper, images)]:
        out = clf.classify(other_catalog, other_images)
        np.testing.assert_allclose(out["p_galaxy"], ref["p_galaxy"], atol=1e-6)
        assert out.colnames[:len(other_catalog.colnames)] == other_catalog.colnames
    for hdul in hdus.values():
        hdul.close()


def test_survey_band_names(clf, field):
    """Images keyed (or FILTER-named) as surveys name bands give the same result; zero
    points keyed the same way follow them."""
    catalog, images = field
    ref = clf.classify(catalog, images)
    survey = {f"CSST-{band.upper()}": CCDData(im.data, unit=im.unit, wcs=im.wcs,
                                              uncertainty=im.uncertainty)
              for band, im in images.items()}  # no MAGZERO: the zero points come below
    zps = {key: ZP for key in survey}
    out = clf.classify(catalog, survey, zeropoints=zps)
    np.testing.assert_allclose(out["p_galaxy"], ref["p_galaxy"], atol=1e-6)
    listed = []
    for band, im in images.items():
        meta = dict(im.meta, FILTER=f"SDSS {band} filter, c0002")
        listed.append(CCDData(im.data, unit=im.unit, wcs=im.wcs, meta=meta,
                              uncertainty=im.uncertainty))
    out = clf.classify(catalog, listed)
    np.testing.assert_allclose(out["p_galaxy"], ref["p_galaxy"], atol=1e-6)
    with pytest.raises(ValueError, match="has keys 'R' and 'HSC-R' that both name band 'r'"):
        clf.classify(catalog, {"R": images["r"], "HSC-R": images["r"]})


def test_images_type_errors(clf, field):
    catalog, images = field
    with pytest.raises(TypeError, match="images must be a CCDData/NDData or a mapping"):
        clf.classify(catalog, np.zeros((10, 10)))
    with pytest.raises(TypeError, match=r"images\['g'\] must be an astropy CCDData"):
        clf.classify(catalog, dict(images, g=np.zeros((10, 10))))
    with pytest.raises(TypeError, match="catalog must be an astropy Table"):
        clf.classify({"ra": [1.0]}, images)


class _FrameLike:
    """Stands for a pandas DataFrame (pandas is not a test dependency)."""

    def to_numpy(self):
        return np.zeros((1, 2))


@pytest.mark.parametrize("catalog, hint", [
    (_FrameLike(), r"got _FrameLike \(use Table.from_pandas\(df\)\)"),
    ("catalog.fits", r"got str \(read the file first: Table.read\(path\)\)"),
    ({"ra": [150.0], "dec": [2.0]}, r"got dict \(wrap it: Table\(catalog\)\)"),
    (np.zeros(1, dtype=[("ra", float), ("dec", float)]),
     r"got ndarray \(wrap it: Table\(catalog\)\)"),
    ([(150.0, 2.0)], r"got list \(build one with Table\(\{'ra': ..., 'dec': ...\}\) or read"),
])
def test_catalog_type_error_says_how_to_make_a_table(clf, field, catalog, hint):
    _, images = field
    with pytest.raises(TypeError, match="catalog must be an astropy Table, " + hint):
        clf.classify(catalog, images)


def test_single_image_without_band(clf, field):
    catalog, images = field
    lone = NDData(images["r"].data, wcs=images["r"].wcs, meta={"MAGZERO": ZP})
    with pytest.raises(ValueError, match=r"single image but the model reads bands"):
        clf.classify(catalog, lone)
    lone.meta["FILTER"] = "r"
    with pytest.warns(StarGalaxyWarning, match=r"Bands \['NUV', 'u', 'g', 'i', 'z', 'y'\] are "
                                               "not in images.*every source carries "
                                               "BAND_MISSING") as record:
        out = clf.classify(catalog, lone)
    assert len(out) == len(catalog)
    assert out.meta["astro_starglx"]["bands_missing"] == ["NUV", "u", "g", "i", "z", "y"]
    assert np.all(np.asarray(out["class_flags"]) & ClassFlag.BAND_MISSING)
    # said once, not counted again among the per-source flags
    assert not any("BAND_MISSING 12" in str(r.message) for r in record)


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


def test_absurd_zeropoints_and_complex_images(clf, field):
    """Accepted silently before: 1e30 or True as zero points, complex pixels (imaginary dropped)."""
    catalog, images = field
    for zp in (1e30, True, "25.0", np.nan):
        with pytest.raises(ValueError, match=r"zero point from zeropoints\['g'\] must be a finite "
                                             r"real number.*zeropoints=\{'g': 25.0\}"):
            clf.classify(catalog, images, zeropoints={"g": zp})
    header = dict(images, i=CCDData(images["i"].data, unit="electron/s", wcs=images["i"].wcs,
                                    meta={"MAGZERO": 1e30}))
    with pytest.raises(ValueError, match=r"header keyword MAGZERO of band 'i' must be"):
        clf.classify(catalog, header)
    im = images["r"]
    complex_r = dict(images, r=CCDData(im.data + 1j, unit=im.unit, wcs=im.wcs, meta=im.meta))
    with pytest.raises(TypeError, match=r"images\['r'\]\.data must hold real numbers, got "
                                        r"complex dtype"):
        clf.classify(catalog, complex_r)


def test_malformed_images_and_band_keys(clf, field):
    """numpy/astropy errors (broadcast, IndexError, '<' not supported) leaked before."""
    catalog, images = field
    im = images["z"]
    for mask in (np.zeros((3, 3), bool), np.bool_(False)):
        bad = dict(images, z=NDData(im.data, mask=mask, wcs=im.wcs, meta=im.meta))
        with pytest.raises(ValueError, match=r"images\['z'\]\.mask must have the shape of "
                                             r"images\['z'\]\.data \(120, 150\).*mask=None"):
            clf.classify(catalog, bad)
    empty = dict(images, z=CCDData(np.zeros((0, 150)), unit="adu", wcs=im.wcs, meta=im.meta))
    with pytest.raises(ValueError, match=r"images\['z'\]\.data must have at least one row and "
                                         r"one column"):
        clf.classify(catalog, empty)
    for key in (3, ("r", 1), None):
        with pytest.raises(TypeError, match=r"images keys must be band names \(str\), got "
                                            r".* name the mapping's keys after the model's bands"):
            clf.classify(catalog, {**images, key: images["r"]})
    with pytest.raises(TypeError, match="images keys must be band names"):
        clf.classify(catalog, {1: images["r"], "F1": images["g"]})


def test_feature_columns_errors(clf, field):
    """A missing column was a KeyError, a non-string template an AttributeError."""
    catalog, images = field
    columns = {name: f"{name}_{{band}}" for name in clf.meta.feature_names}
    with pytest.raises(ValueError, match=r"column 'mag_NUV' \(feature 'mag', band 'NUV'\) is not "
                                         r"in the table; available columns: id, ra, dec\. Fix "
                                         r"column_map\['mag'\]"):
        clf.classify(catalog, images, feature_columns=columns)
    with pytest.raises(TypeError, match=r"column_map\['radius'\] must be a column-name template"):
        clf.classify(catalog, images, feature_columns={**columns, "radius": 7})


def test_feature_columns_of_a_scaled_model_warn(tiny_weights_file, field, tmp_path):
    """Catalog columns rarely follow a fine-tuned model's feature_scale: say so."""
    import warnings

    from astro_starglx.weights import load_model

    model = load_model(tiny_weights_file)
    path = tmp_path / "scaled.safetensors"
    save_weights(path, model.network.state_dict(), model.meta.replace(feature_scale=3.0))
    scaled = StarGalaxyClassifier(path, device="cpu")
    catalog, images = field
    catalog = catalog.copy()
    for name in scaled.meta.feature_names:
        for band in scaled.meta.bands:
            catalog[f"{name}_{band}"] = np.full(len(catalog), 0.2)
    columns = {name: f"{name}_{{band}}" for name in scaled.meta.feature_names}
    with pytest.warns(StarGalaxyWarning, match=r"3 times wider .* feature_columns are used as "
                                               r"given"):
        scaled.classify(catalog, images, feature_columns=columns)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        scaled.classify(catalog, images)
        StarGalaxyClassifier(tiny_weights_file, device="cpu").classify(
            catalog, images, feature_columns=columns)
    assert not [w for w in seen if "feature_columns are used" in str(w.message)]


def test_band_without_usable_pixels_flags_its_sources(clf, field):
    """Without an uncertainty this raised, advising an image_sigma= that classify() lacks."""
    catalog, images = field
    im = images["u"]
    dead = dict(images, u=CCDData(im.data, unit=im.unit, wcs=im.wcs, meta=im.meta,
                                  mask=np.ones(im.data.shape, bool)))
    with pytest.warns(StarGalaxyWarning, match=r"12 of 12 sources flagged \(MASKED 12, "
                                               r"BAND_MISSING 12\)"):
        out = clf.classify(catalog, dead)
    assert not np.any(out["p_galaxy"].mask)
    nan = dict(images, u=CCDData(np.full(im.data.shape, np.nan), unit=im.unit, wcs=im.wcs,
                                 meta=im.meta))
    with pytest.warns(StarGalaxyWarning, match="BAND_MISSING 12"):
        clf.classify(catalog, nan)


def test_saturated_flag_from_header(clf, field):
    catalog, images = field
    out = clf.classify(catalog, images)
    im = images["g"]
    level = float(np.quantile(im.data, 0.999))
    sat = dict(images, g=CCDData(im.data, unit=im.unit, wcs=im.wcs, uncertainty=im.uncertainty,
                                 meta=dict(im.meta, SATURATE=level)))
    with pytest.warns(StarGalaxyWarning, match="SATURATED"):
        flagged = clf.classify(catalog, sat)
    hit = (np.asarray(flagged["class_flags"]) & ClassFlag.SATURATED) != 0
    assert 0 < hit.sum() < len(catalog)
    # the flag says so; the pixels and the probabilities are unchanged
    np.testing.assert_array_equal(flagged["p_galaxy"], out["p_galaxy"])


def test_library_warnings_are_summarised(clf, field):
    """numpy overflow and astropy WCS non-convergence leaked as their own warnings."""
    catalog, images = field
    im = images["y"]
    data = np.where(np.arange(im.data.size).reshape(im.data.shape) % 2, 3e38, -3e38)
    huge = dict(images, y=CCDData(data.astype(np.float32), unit=im.unit, wcs=im.wcs,
                                  meta=im.meta))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = clf.classify(catalog, huge)
        proba = clf.predict_proba(catalog, huge)
    assert [r.category for r in record] == [StarGalaxyWarning] * 2, \
        [str(r.message) for r in record]
    assert all(r.filename == __file__ for r in record)  # pointing at the caller
    message = str(record[0].message)
    assert re.search(r"warning\(s\) of the libraries underneath were caught: RuntimeWarning "
                     r"'overflow encountered in .*' at astro_starglx/.*\(x\d+\).*float32 limit",
                     message), message
    assert "libraries underneath" in str(record[1].message)
    assert len(out) == len(catalog) and proba.shape == (len(catalog), 2)
    # a SIP distortion that diverges far from the detector: astropy warns per call
    from astropy.wcs import Sip

    sip = make_wcs()
    sip.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[3, 0], b[0, 3], a[2, 0] = 1e-3, 1e-3, 1e-3
    sip.sip = Sip(a, b, None, None, sip.wcs.crpix)
    far = sip.pixel_to_world([10.0, 3000.0], [10.0, -4000.0])
    cat = Table({"ra": far.ra.deg + [0.0, 1.0], "dec": far.dec.deg})
    distorted = {band: CCDData(im.data, unit=im.unit, wcs=sip, meta=im.meta)
                 for band, im in images.items()}
    with pytest.warns(StarGalaxyWarning, match=r"'WCS.all_world2pix' failed to converge.* at "
                                               r"astropy/wcs/.*A WCS did not converge"):
        clf.classify(cat, distorted)


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
    # a bare float() error before; True and NaN were accepted or misreported
    for threshold in ("abc", "0.5", True, np.nan, 0.0, 1.0, -0.2, [0.5]):
        with pytest.raises(ValueError, match=r"threshold must be None or a float in \(0, 1\), "
                                             r"got .*; pass the p_galaxy .* e.g. threshold=0.5"):
            StarGalaxyClassifier(threshold=threshold)
    assert StarGalaxyClassifier(threshold=np.float32(0.25)).threshold == 0.25
    with pytest.raises(TypeError, match="zeropoints must be a mapping"):
        StarGalaxyClassifier(zeropoints=25.0)
    for zp in (1e30, True, "25", np.nan):
        with pytest.raises(ValueError, match=r"zero point from zeropoints\['r'\] must be a finite "
                                             r"real number of AB magnitudes"):
            StarGalaxyClassifier(zeropoints={"r": zp})


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
    with pytest.warns(StarGalaxyWarning,
                      match="differs by more than 10%.*resampling the images does not help"):
        clf.classify(catalog, coarse)


# --------------------------------------------------------------------------
# PSF-aware models, zero points and blends on a simulated field

PSF_FEATURES = ["mag", "mag_err", "concentration", "radius", "ellipticity", "psf_fwhm",
                "radius_excess", "concentration_excess"]
PSF_KEYWORDS = ("PSFFWHM", "SEEING", "FWHM", "PSFR80")


def psf_model_file(path, *, fwhm_range=(0.05, 0.5), name="tiny-psf", depth=None,
                   features=PSF_FEATURES, gamma_range=None):
    """Tiny random-init weights of a PSF-aware model (``features``, ``meta.psf`` set)."""
    from conftest import TINY_ARCHITECTURE, make_tiny_meta, seeded_state_dict

    meta = make_tiny_meta(name)
    n_bands, n_features = len(CSST_BANDS), len(features)
    meta["feature_names"] = list(features)
    meta["architecture"] = dict(TINY_ARCHITECTURE, n_features=n_features)
    meta["normalization"]["feature_mean"] = [[0.01 * (i + j) for j in range(n_features)]
                                             for i in range(n_bands)]
    meta["normalization"]["feature_std"] = [[1.0] * n_features for _ in range(n_bands)]
    meta["psf"] = {"nominal_fwhm": {band: 0.13 for band in CSST_BANDS},
                   "fwhm_range": {band: list(fwhm_range) for band in CSST_BANDS}}
    if gamma_range is not None:
        meta["psf"]["gamma_range"] = {band: list(gamma_range) for band in CSST_BANDS}
    if depth is not None:
        meta["depth"] = depth
    save_weights(path, seeded_state_dict(meta), meta)
    return path


@pytest.fixture(scope="module")
def sim_field():
    """A simulated 7-band 384 x 384 field with PSF header keywords, and its catalog."""
    pytest.importorskip("galsim")
    from astro_starglx.simulate import simulate_field

    images, truth = simulate_field(shape=(384, 384), seed=11, psf_scale=1.0, n_stars=40,
                                   n_galaxies=20)
    return Table({"ra": truth["ra"], "dec": truth["dec"]}), images


def without_psf_keywords(images):
    return {band: CCDData(im.data, unit=im.unit, wcs=im.wcs, mask=im.mask,
                          uncertainty=im.uncertainty,
                          meta={k: v for k, v in im.meta.items() if k not in PSF_KEYWORDS})
            for band, im in images.items()}


def classify_recording(clf, catalog, images, **kwargs):
    """classify(), and the messages of the StarGalaxyWarnings it gave."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = clf.classify(catalog, images, **kwargs)
    ours = [str(r.message) for r in record if issubclass(r.category, StarGalaxyWarning)]
    assert len(ours) == len(record), [str(r.message) for r in record]
    return out, ours


@pytest.fixture
def psf_clf(tmp_path):
    return StarGalaxyClassifier(psf_model_file(tmp_path / "psf.safetensors"), device="cpu",
                                batch_size=16)


def test_psf_from_header(psf_clf, sim_field):
    catalog, images = sim_field
    out, messages = classify_recording(psf_clf, catalog, images)
    psf = out.meta["astro_starglx"]["psf"]
    assert list(psf) == list(CSST_BANDS)
    for band, record in psf.items():
        assert record["source"] == "header" and record["band"] == band
        assert record["fwhm"] == pytest.approx(images[band].meta["PSFFWHM"])
        assert record["detail"].startswith("PSFFWHM")
    assert not np.any(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)
    # one summary warning at most (edge and blend flags), never a PSF one
    assert len(messages) <= 1 and not any("PSF" in m for m in messages)
    np.testing.assert_allclose(out["p_star"] + out["p_galaxy"], 1.0, atol=1e-6)


def test_psf_argument_overrides_the_header(psf_clf, sim_field):
    catalog, images = sim_field
    header, _ = classify_recording(psf_clf, catalog, images)
    out, _ = classify_recording(psf_clf, catalog, images, psf=0.2)
    psf = out.meta["astro_starglx"]["psf"]
    assert {r["source"] for r in psf.values()} == {"argument"}
    assert all(r["fwhm"] == 0.2 for r in psf.values())
    # the PSF features reach the network
    assert np.any(np.asarray(out["p_galaxy"]) != np.asarray(header["p_galaxy"]))
    np.testing.assert_array_equal(psf_clf.predict_proba(catalog, images, psf=0.2)[:, 1],
                                  out["p_galaxy"])
    # one band given, the others from the header
    out, _ = classify_recording(psf_clf, catalog, images, psf={"r": 0.25 * u.arcsec})
    psf = out.meta["astro_starglx"]["psf"]
    assert psf["r"]["source"] == "argument" and psf["r"]["fwhm"] == pytest.approx(0.25)
    assert all(psf[b]["source"] == "header" for b in CSST_BANDS if b != "r")


def test_psf_measured_without_header_keywords(psf_clf, sim_field):
    catalog, images = sim_field
    bare = without_psf_keywords(images)
    out, messages = classify_recording(psf_clf, catalog, bare)
    psf = out.meta["astro_starglx"]["psf"]
    sources = {band: record["source"] for band, record in psf.items()}
    assert set(sources.values()) <= {"measured", "nominal"}
    for band, record in psf.items():
        if record["source"] == "measured":
            assert record["n_stars"] >= 5 and not record["fell_back"]
            assert record["fwhm"] == pytest.approx(images[band].meta["PSFFWHM"], rel=0.1)
    fell_back = [band for band, source in sources.items() if source == "nominal"]
    psf_warnings = [m for m in messages if "too few usable point sources" in m]
    assert len(psf_warnings) == (1 if fell_back else 0)
    assert "measured" in sources.values()
    # the images were not changed
    assert "PSFFWHM" in images["r"].meta and "PSFFWHM" not in bare["r"].meta


def test_header_psf_that_disagrees_with_the_stars_is_not_used(psf_clf, sim_field):
    """PSFFWHM keywords twice the true FWHM: the measured PSF is used, with one warning."""
    catalog, images = sim_field
    doubled = {band: CCDData(im.data, unit=im.unit, wcs=im.wcs, mask=im.mask,
                             uncertainty=im.uncertainty,
                             meta={**im.meta, "PSFFWHM": 2.0 * im.meta["PSFFWHM"]})
               for band, im in images.items()}
    out, messages = classify_recording(psf_clf, catalog, doubled)
    psf = out.meta["astro_starglx"]["psf"]
    checked = [band for band, record in psf.items() if record["source"] == "measured"]
    assert checked  # the field has enough stars in some bands
    for band, record in psf.items():
        true = images[band].meta["PSFFWHM"]
        if band in checked:
            assert record["fwhm"] == pytest.approx(true, rel=0.1)
            assert record["header_fwhm"] == pytest.approx(2.0 * true)
        else:  # too few stars to check: the header
            assert record["source"] == "header" and record["header_fwhm"] is None
    found = [m for m in messages if "differs by more than 20%" in m]
    assert len(found) == 1 and all(f"{band} " in found[0] for band in checked)
    # the same classes as with the true header values
    good, _ = classify_recording(psf_clf, catalog, images)
    np.testing.assert_allclose(out["p_galaxy"], good["p_galaxy"], atol=0.1)


def test_psf_fallback_warns_once_and_flags(psf_clf, sim_field):
    """Three sources give too few stars: nominal PSF, one warning, every source flagged."""
    catalog, images = sim_field
    out, messages = classify_recording(psf_clf, catalog[:3], without_psf_keywords(images))
    psf = out.meta["astro_starglx"]["psf"]
    assert all(r["source"] == "nominal" and r["fell_back"] for r in psf.values())
    assert all(r["fwhm"] == 0.13 for r in psf.values())
    psf_warnings = [m for m in messages if "too few usable point sources" in m]
    assert len(psf_warnings) == 1
    assert "assumed its nominal PSF" in psf_warnings[0] and "psf={band: fwhm_arcsec}" \
        in psf_warnings[0]
    assert np.all(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)


def test_out_of_range_flag(tmp_path, sim_field):
    catalog, images = sim_field
    narrow = StarGalaxyClassifier(psf_model_file(tmp_path / "narrow.safetensors",
                                                 fwhm_range=(0.3, 0.5)), device="cpu")
    out, messages = classify_recording(narrow, catalog, images)
    flags = np.asarray(out["class_flags"])
    assert np.all(flags & ClassFlag.OUT_OF_RANGE)
    # a call-level condition: said once with its bands (and in the meta), not counted
    assert out.meta["astro_starglx"]["psf_out_of_range"] == list(CSST_BANDS)
    assert any("The PSF of band(s) ['NUV'" in m and "every source carries OUT_OF_RANGE" in m
               for m in messages)
    assert not any("OUT_OF_RANGE 60" in m for m in messages)
    # a PSF inside the range: no flag
    out, _ = classify_recording(narrow, catalog, images, psf=0.4)
    assert not np.any(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)
    # a tight range that still holds every band's header PSF (0.125-0.15"): no flag
    wide = StarGalaxyClassifier(psf_model_file(tmp_path / "wide.safetensors",
                                               fwhm_range=(0.1, 0.16)), device="cpu")
    out, _ = classify_recording(wide, catalog, images)
    assert not np.any(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)


SHAPE_FEATURES = ["mag", "mag_err", "concentration", "radius", "ellipticity", "psf_fwhm",
                  "psf_gamma", "radius_model_excess", "concentration_model_excess"]


def test_profile_shape_out_of_range_flag(tmp_path, sim_field):
    """A model reading psf_gamma flags a band whose fitted profile it never saw."""
    catalog, images = sim_field
    images = without_psf_keywords(images)
    ok = StarGalaxyClassifier(psf_model_file(tmp_path / "ok.safetensors",
                                             features=SHAPE_FEATURES, gamma_range=(-0.5, 0.9)),
                              device="cpu")
    out, _ = classify_recording(ok, catalog, images)
    psf = out.meta["astro_starglx"]["psf"]
    gammas = {band: record["gamma"] for band, record in psf.items()}
    measured = [band for band, record in psf.items() if record["source"] == "measured"]
    assert len(measured) >= 5 and all(isinstance(gammas[band], float) for band in measured)
    in_range = ~(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE).astype(bool)
    if len(measured) == len(CSST_BANDS):
        assert np.all(in_range)
    # a range that excludes the fitted shapes: every source flagged, the bands named
    high = max(gammas[band] for band in measured)
    narrow = StarGalaxyClassifier(
        psf_model_file(tmp_path / "narrow.safetensors", features=SHAPE_FEATURES,
                       gamma_range=(round(high, 4) + 0.01, 0.9)), device="cpu")
    out, messages = classify_recording(narrow, catalog, images)
    assert np.all(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)
    assert set(measured) <= set(out.meta["astro_starglx"]["psf_out_of_range"])
    assert any("'gamma_range'" in m for m in messages)
    # a FWHM given as a number has no shape to check, and psf_gamma is NaN (mean)
    out, _ = classify_recording(narrow, catalog, images, psf=0.15)
    assert not np.any(np.asarray(out["class_flags"]) & ClassFlag.OUT_OF_RANGE)
    assert all(r["gamma"] is None for r in out.meta["astro_starglx"]["psf"].values())


def test_zeropoints_in_classify(psf_clf, tiny_weights_file, sim_field):
    catalog, images = sim_field
    zps = {band: im.meta["MAGZERO"] for band, im in images.items()}
    shifted = {band: zp + 2.0 for band, zp in zps.items()}
    for model in (psf_clf.model, tiny_weights_file):
        base, _ = classify_recording(StarGalaxyClassifier(model, device="cpu"), catalog, images)
        # the header's zero points given explicitly change nothing
        same, _ = classify_recording(StarGalaxyClassifier(model, device="cpu"), catalog, images,
                                     zeropoints=zps)
        np.testing.assert_array_equal(same["p_galaxy"], base["p_galaxy"])
        # other zero points move the magnitude features and so p
        moved, _ = classify_recording(StarGalaxyClassifier(model, device="cpu"), catalog,
                                      images, zeropoints=shifted)
        assert np.any(np.asarray(moved["p_galaxy"]) != np.asarray(base["p_galaxy"]))
        # classify's zero points override the constructor's ...
        clf = StarGalaxyClassifier(model, device="cpu", zeropoints=shifted)
        np.testing.assert_array_equal(clf.predict_proba(catalog, images)[:, 1],
                                      moved["p_galaxy"])
        out, _ = classify_recording(clf, catalog, images, zeropoints=zps)
        np.testing.assert_array_equal(out["p_galaxy"], base["p_galaxy"])
        # ... band by band: bands classify does not name keep the constructor's
        partial = StarGalaxyClassifier(model, device="cpu", zeropoints={"r": zps["r"] + 2.0})
        out, _ = classify_recording(partial, catalog, images, zeropoints={"g": zps["g"]})
        mixed, _ = classify_recording(StarGalaxyClassifier(model, device="cpu"), catalog,
                                      images, zeropoints={"r": zps["r"] + 2.0})
        np.testing.assert_array_equal(out["p_galaxy"], mixed["p_galaxy"])
    with pytest.raises(TypeError, match="zeropoints must be a mapping"):
        psf_clf.classify(catalog, images, zeropoints=25.0)


def test_psf_argument_ignored_by_models_without_psf(clf, field):
    catalog, images = field
    base, _ = classify_recording(clf, catalog, images)
    out, messages = classify_recording(clf, catalog, images, psf=0.2)
    ignored = [m for m in messages if "psf= is ignored" in m]
    assert len(ignored) == 1 and "does not read the PSF" in ignored[0]
    assert "psf" not in out.meta["astro_starglx"]
    np.testing.assert_array_equal(out["p_galaxy"], base["p_galaxy"])
    with pytest.warns(StarGalaxyWarning, match="psf= is ignored"):
        clf.predict_proba(catalog, images, psf={"r": 0.2})


def test_blended_flags_for_every_model(clf, psf_clf, sim_field):
    from astro_starglx.inputs import blend_flags

    catalog, images = sim_field
    coords = SkyCoord(catalog["ra"], catalog["dec"], unit="deg")
    x, y = images["r"].wcs.world_to_pixel(coords)
    expected = blend_flags(images["r"], x, y, size=clf.meta.stamp_size)
    assert 0 < np.count_nonzero(expected) < len(catalog)
    for model in (clf, psf_clf):
        out, messages = classify_recording(model, catalog, images)
        got = np.asarray(out["class_flags"]) & ClassFlag.BLENDED
        np.testing.assert_array_equal(got, expected)
        assert any(f"BLENDED {np.count_nonzero(expected)}" in m for m in messages)


def test_feature_columns_of_a_psf_aware_model(psf_clf, sim_field):
    """Table features follow the model's feature list (8 names here), not the default 5."""
    catalog, images = sim_field
    measured, _ = classify_recording(psf_clf, catalog, images)
    table = Table(catalog)
    rng = np.random.default_rng(5)
    for name in PSF_FEATURES:
        for band in CSST_BANDS:
            table[f"{name}_{band}"] = rng.normal(size=len(table))
    columns = {name: f"{name}_{{band}}" for name in PSF_FEATURES}
    out, _ = classify_recording(psf_clf, table, images, feature_columns=columns)
    assert np.all(np.isfinite(np.asarray(out["p_galaxy"])))
    assert np.any(np.asarray(out["p_galaxy"]) != np.asarray(measured["p_galaxy"]))
    with pytest.raises(ValueError, match=r"missing \['psf_fwhm', 'radius_excess'"):
        psf_clf.classify(table, images, feature_columns={name: columns[name]
                                                         for name in PSF_FEATURES[:5]})


def test_symmetrize_option(tiny_weights_file, field):
    catalog, images = field
    from astro_starglx.classifier import SYMMETRIZE_DEFAULT

    assert StarGalaxyClassifier(device="cpu").symmetrize == SYMMETRIZE_DEFAULT
    for value in ("c4", None, 8, "", ("d4",)):
        with pytest.raises(ValueError, match=r"symmetrize must be one of \['canonical', 'd4', "
                                             r"'flips', 'none'\] or a bool, got .*; use"):
            StarGalaxyClassifier(device="cpu", symmetrize=value)
    outs = {}
    for value in ("none", "flips", "d4", "canonical", True):
        clf = StarGalaxyClassifier(tiny_weights_file, device="cpu", symmetrize=value)
        assert f"symmetrize={clf.symmetrize!r}" in repr(clf)
        outs[value] = clf.classify(catalog, images)
        assert outs[value].meta["astro_starglx"]["symmetrize"] == clf.symmetrize
    np.testing.assert_array_equal(outs[True]["p_galaxy"], outs["canonical"]["p_galaxy"])
    for value in ("flips", "d4", "canonical"):
        np.testing.assert_array_equal(outs[value]["class_flags"], outs["none"]["class_flags"])
        np.testing.assert_allclose(outs[value]["p_galaxy"], outs["none"]["p_galaxy"], atol=0.5)


def test_star_fraction_reweights_by_bayes(field):
    """star_fraction moves the posterior from the model's prior (0.5) to the field's."""
    from astro_starglx.metrics import reweight_prior

    catalog, images = field
    clf = StarGalaxyClassifier(device="cpu")
    assert clf.meta.prior_star_fraction == 0.5  # class-balanced training
    plain = clf.classify(catalog, images)
    dense = clf.classify(catalog, images, star_fraction=0.9)
    p0 = np.asarray(plain["p_galaxy"].filled(np.nan), dtype=np.float64)
    p1 = np.asarray(dense["p_galaxy"].filled(np.nan), dtype=np.float64)
    expected = reweight_prior(p0, star_fraction=0.9, train_star_fraction=0.5)
    np.testing.assert_allclose(p1, expected, atol=1e-6)
    ok = np.isfinite(p0) & (p0 > 1e-3) & (p0 < 1 - 1e-3)
    assert np.all(p1[ok] < p0[ok])  # more stars expected: every p_galaxy goes down
    np.testing.assert_allclose(dense["p_star"] + dense["p_galaxy"], 1.0, atol=1e-6)
    assert dense.meta["astro_starglx"]["star_fraction"] == 0.9
    assert dense.meta["astro_starglx"]["prior_star_fraction"] == 0.5
    # one value per row: the same as the scalar when all rows agree
    per_row = clf.classify(catalog, images, star_fraction=np.full(len(catalog), 0.9))
    np.testing.assert_array_equal(per_row["p_galaxy"], dense["p_galaxy"])
    assert per_row.meta["astro_starglx"]["star_fraction"] == "per source"
    # the model's own prior changes nothing
    same = clf.predict_proba(catalog, images, star_fraction=0.5)
    np.testing.assert_allclose(same[:, 1], p0, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, "0.3", float("nan"), [0.2, 0.3], True])
def test_star_fraction_errors(field, value):
    catalog, images = field
    with pytest.raises(ValueError, match="star_fraction must be a"):
        StarGalaxyClassifier(device="cpu").classify(catalog, images, star_fraction=value)


def test_magnitude_thresholds_decide_each_source(tmp_path, tiny_meta, field):
    """With meta thresholds, each source is called at its r-magnitude bin's threshold."""
    from conftest import seeded_state_dict

    catalog, images = field
    plain = StarGalaxyClassifier(_save(tmp_path / "plain.safetensors", tiny_meta),
                                 device="cpu").classify(catalog, images)
    p = np.asarray(plain["p_galaxy"].filled(np.nan), dtype=np.float64)
    assert np.isfinite(p).all()
    # every measured r magnitude lies above the one edge: those sources need
    # p >= 0.999 (sources without a magnitude would keep the default 0.5)
    meta = dict(tiny_meta, thresholds={"feature": "mag", "band": "r", "edges": [-1e9],
                                       "values": [0.5, 0.999]})
    path = tmp_path / "binned.safetensors"
    save_weights(path, seeded_state_dict(meta), meta)
    binned = StarGalaxyClassifier(path, device="cpu").classify(catalog, images)
    np.testing.assert_array_equal(binned["p_galaxy"], plain["p_galaxy"])  # only the class
    expected = np.where(p >= 0.999, "galaxy", "star")
    np.testing.assert_array_equal(np.asarray(binned["class"]), expected)
    t = binned.meta["astro_starglx"]["threshold"]
    assert t["edges"] == [-1e9] and t["values"] == [0.5, 0.999] and t["default"] == 0.5
    assert "bin" in binned["class"].description
    # the user's threshold overrides the model's, bins included
    user = StarGalaxyClassifier(path, device="cpu", threshold=0.5).classify(catalog, images)
    np.testing.assert_array_equal(user["class"], plain["class"])


def _save(path, meta):
    from conftest import seeded_state_dict

    if not path.exists():
        save_weights(path, seeded_state_dict(meta), meta)
    return path


# ---------------------------------------------------------------- prefetching


def test_prefetched_batches_match_the_serial_path(tiny_weights_file, field, monkeypatch,
                                                  two_threads):
    """Batches in two worker threads, or inputs in one: the same bits as the serial path."""
    import contextlib

    import astro_starglx.classifier as classifier
    import astro_starglx.inference as inference

    catalog, images = field
    images = dict(images)
    images["g"] = CCDData(images["g"].data, unit="electron/s", wcs=images["g"].wcs,
                          meta=images["g"].meta)  # one band's noise from the image
    clf = StarGalaxyClassifier(tiny_weights_file, device="cpu", batch_size=3)
    threads = torch.get_num_threads()
    threaded = clf.classify(catalog, images)
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(classifier, "CPU_BATCH_WORKERS", 1)
    one_worker = clf.classify(catalog, images)  # inputs in a thread, network in the caller
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(classifier, "_prefetch",
                        lambda produce, items, **_: (produce(item) for item in items))
    monkeypatch.setattr(inference, "torch_threads", lambda **_: contextlib.nullcontext())
    serial = clf.classify(catalog, images)
    for name in ("p_star", "p_galaxy", "class", "class_flags"):
        np.testing.assert_array_equal(threaded[name], serial[name])
        np.testing.assert_array_equal(one_worker[name], serial[name])
    assert threaded.meta == serial.meta == one_worker.meta


@pytest.fixture
def two_threads():
    """torch on two intra-op threads (the thread budget of a 2-core machine), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_budget_of_one_thread_runs_in_the_caller(tiny_weights_file, field, monkeypatch,
                                                   two_threads):
    """torch.set_num_threads(1) (Dask's workers): no thread of ours, the same bits."""
    import threading

    import astro_starglx.classifier as classifier

    catalog, images = field
    images = dict(images)
    images["g"] = CCDData(images["g"].data, unit="electron/s", wcs=images["g"].wcs,
                          meta=images["g"].meta)  # one band's noise from the image
    clf = StarGalaxyClassifier(tiny_weights_file, device="cpu", batch_size=3)
    calls = []

    def recorded(function):
        def wrapper(*args, **kwargs):
            calls.append(threading.current_thread() is threading.main_thread())
            return function(*args, **kwargs)
        return wrapper

    for name in ("extract_inputs", "blend_flags", "image_noise_or_nan"):
        monkeypatch.setattr(classifier, name, recorded(getattr(classifier, name)))
    threaded = clf.classify(catalog, images)
    assert not all(calls)  # two threads: batches and conditions off the caller's thread
    calls.clear()
    torch.set_num_threads(1)
    serial = clf.classify(catalog, images)
    assert calls and all(calls)
    assert torch.get_num_threads() == 1
    for name in ("p_star", "p_galaxy", "class", "class_flags"):
        np.testing.assert_array_equal(threaded[name], serial[name])
    assert threaded.meta == serial.meta


def test_error_in_the_worker_thread_reaches_the_caller(clf, field, monkeypatch, two_threads):
    import threading

    import astro_starglx.classifier as classifier

    catalog, images = field
    real, calls = classifier.extract_inputs, []

    def failing(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise ValueError("cutouts failed in batch 2 (of 3)")
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier, "extract_inputs", failing)
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match=r"^cutouts failed in batch 2 \(of 3\)$"):
        clf.classify(catalog, images)
    assert all(name.startswith("astro_starglx-inputs") for name in calls)
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name.startswith("astro_starglx")]


def test_prefetch_is_ordered_bounded_and_joined():
    import threading

    from astro_starglx.classifier import _prefetch

    produced = []

    def produce(item):
        produced.append(item)
        return item * 10

    for k, value in enumerate(_prefetch(produce, list(range(9)), depth=2)):
        assert value == 10 * k
        assert len(produced) <= k + 3  # this one and at most 2 ahead
    assert produced == list(range(9))
    produced.clear()
    batches = _prefetch(produce, list(range(100)), depth=2)
    assert next(batches) == 0
    batches.close()  # the caller stops early: the rest is cancelled, the worker joined
    assert len(produced) <= 3
    assert not [t for t in threading.enumerate() if t.name.startswith("astro_starglx")]
    assert list(_prefetch(produce, [7], depth=2)) == [70]
    produced.clear()
    serial = _prefetch(produce, list(range(5)), depth=2, workers=0)
    assert next(serial) == 0 and produced == [0]  # nothing ahead, nothing in a thread
    assert list(serial) == [10, 20, 30, 40]


def test_prefetch_with_two_workers_keeps_the_order():
    import threading
    import time

    from astro_starglx.classifier import _prefetch

    names = set()

    def produce(item):
        names.add(threading.current_thread().name)
        time.sleep(0.02 * (item % 3 == 0))  # some items finish out of order
        return item * 10

    assert list(_prefetch(produce, list(range(12)), depth=1, workers=2)) == \
        [10 * k for k in range(12)]
    assert len(names) == 2 and all(n.startswith("astro_starglx-inputs") for n in names)
    assert not [t for t in threading.enumerate() if t.name.startswith("astro_starglx")]


def test_error_in_the_network_stops_the_worker_thread(clf, field, monkeypatch):
    import threading

    from astro_starglx.inference import Predictor

    catalog, images = field
    real, calls = Predictor.proba, []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("forward failed")
        return real(self, *args)

    monkeypatch.setattr(Predictor, "proba", failing)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="^forward failed$"):
        clf.classify(catalog, images)
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name.startswith("astro_starglx")]


# --------------------------------------------------------------------------
# depth matching (match_depth)

def rescaled(catalog, images, factor):
    """The field with every WCS's pixel scale times ``factor`` (same pixels), and a
    catalog whose sky positions stay on the same pixels."""
    import copy

    ref = images["r"].wcs
    x, y = ref.world_to_pixel(SkyCoord(catalog["ra"], catalog["dec"], unit="deg"))
    out = {}
    for band, im in images.items():
        wcs = copy.deepcopy(im.wcs)
        if wcs.wcs.has_cd():
            wcs.wcs.cd = wcs.wcs.cd * factor
        else:
            wcs.wcs.cdelt = wcs.wcs.cdelt * factor
        out[band] = CCDData(im.data, unit=im.unit, wcs=wcs, mask=im.mask,
                            uncertainty=im.uncertainty, meta=im.meta)
    sky = out["r"].wcs.pixel_to_world(x, y)
    return Table({"ra": sky.ra.deg, "dec": sky.dec.deg}), out


def test_match_depth(tmp_path, sim_field):
    from astro_starglx.background import point_source_depth

    catalog, images = sim_field
    depth = {band: 27.0 + 0.1 * k for k, band in enumerate(CSST_BANDS)}
    clf = StarGalaxyClassifier(psf_model_file(tmp_path / "d.safetensors", depth=depth),
                               device="cpu", batch_size=16)
    plain = StarGalaxyClassifier(psf_model_file(tmp_path / "p.safetensors"), device="cpu",
                                 batch_size=16)
    # on the model's pixel scale nothing is shifted unless asked
    out, _ = classify_recording(clf, catalog, images)
    assert "depth" not in out.meta["astro_starglx"]
    unshifted = classify_recording(plain, catalog, images)[0]["p_galaxy"]
    np.testing.assert_array_equal(out["p_galaxy"], unshifted)
    out, _ = classify_recording(clf, catalog, images, match_depth=True)
    record = out.meta["astro_starglx"]["depth"]
    psf = out.meta["astro_starglx"]["psf"]
    zps = {band: images[band].meta["MAGZERO"] for band in CSST_BANDS}
    for band, measured in record["image_depth"].items():
        assert record["model_depth"][band] == depth[band]
        # the header's uniform PSF, in pixels, and the image's own noise
        assert measured == pytest.approx(point_source_depth(
            images[band], fwhm=psf[band]["fwhm"] / 0.074, zeropoint=zps[band]), abs=1e-3)
    assert set(record["image_depth"]) == set(CSST_BANDS)
    offset = record["magnitude_offset"]
    assert offset == pytest.approx(np.median([depth[b] - record["image_depth"][b]
                                              for b in CSST_BANDS]), abs=1e-3)
    # exactly a shift of every zero point by one offset
    shifted, _ = classify_recording(clf, catalog, images, match_depth=False,
                                    zeropoints={b: zp + offset for b, zp in zps.items()})
    np.testing.assert_allclose(out["p_galaxy"], shifted["p_galaxy"], atol=2e-6)
    assert np.any(np.abs(out["p_galaxy"] - unshifted) > 1e-4)
    # another survey's pixels: on by default, and the warning says so
    coarse_catalog, coarse = rescaled(catalog, images, 0.2 / 0.074)
    out, messages = classify_recording(clf, coarse_catalog, coarse)
    coarse_offset = out.meta["astro_starglx"]["depth"]["magnitude_offset"]
    assert coarse_offset == pytest.approx(offset, abs=1e-3)
    assert any("shifted to the model's depth" in m for m in messages)
    out, messages = classify_recording(clf, coarse_catalog, coarse, match_depth=False)
    assert "depth" not in out.meta["astro_starglx"]
    assert not any("shifted to the model's depth" in m for m in messages)
    # a model that records no depth: nothing to match, said when asked for
    out, messages = classify_recording(plain, catalog, images, match_depth=True)
    assert "depth" not in out.meta["astro_starglx"]
    assert any("records no training depth" in m for m in messages)
    with pytest.raises(ValueError, match="match_depth must be True or False"):
        clf.classify(catalog, images, match_depth="yes")


def test_implausible_depth_warns(tmp_path, sim_field):
    """On the model's own pixels nothing is shifted, but zero points that put the images'
    depth far from the model's are said to be suspect."""
    catalog, images = sim_field
    probe = StarGalaxyClassifier(psf_model_file(tmp_path / "probe.safetensors",
                                                depth={b: 26.0 for b in CSST_BANDS}),
                                 device="cpu", batch_size=16)
    out, _ = classify_recording(probe, catalog, images, match_depth=True)
    measured = out.meta["astro_starglx"]["depth"]["image_depth"]
    clf = StarGalaxyClassifier(psf_model_file(tmp_path / "d.safetensors", depth=measured),
                               device="cpu", batch_size=16)
    out, messages = classify_recording(clf, catalog, images)
    assert "depth" not in out.meta["astro_starglx"]
    assert not any("check the zero points" in m for m in messages)
    zps = {band: images[band].meta["MAGZERO"] for band in CSST_BANDS}
    for shift, word in ((2.5, "deeper"), (-2.0, "shallower")):
        wrong = {band: zp + shift for band, zp in zps.items()}
        out, messages = classify_recording(clf, catalog, images, zeropoints=wrong)
        assert "depth" not in out.meta["astro_starglx"]  # warned, not shifted
        assert any(f"{abs(shift):.1f} mag {word} than the model's training fields" in m
                   and "check the zero points" in m for m in messages), messages
    # within the exposures the model was trained on: no warning
    out, messages = classify_recording(clf, catalog, images,
                                       zeropoints={b: zp + 0.5 for b, zp in zps.items()})
    assert not any("check the zero points" in m for m in messages)


def test_precision_option(tiny_weights_file, field, monkeypatch):
    from astro_starglx import inference

    catalog, images = field
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16', 'fp32'\]"):
        StarGalaxyClassifier(device="cpu", precision="half")
    outs = {}
    for value in ("fp32", "bf16"):
        clf = StarGalaxyClassifier(tiny_weights_file, device="cpu", precision=value)
        assert f"precision={value!r}" in repr(clf)
        outs[value] = clf.classify(catalog, images)
        assert outs[value].meta["astro_starglx"]["precision"] == value
    p32 = np.asarray(outs["fp32"]["p_galaxy"].filled(np.nan))
    p16 = np.asarray(outs["bf16"]["p_galaxy"].filled(np.nan))
    np.testing.assert_array_equal(np.isnan(p16), np.isnan(p32))
    ok = np.isfinite(p32)
    assert ok.any() and not np.array_equal(p16[ok], p32[ok])
    np.testing.assert_allclose(p16[ok], p32[ok], atol=0.03)
    np.testing.assert_array_equal(outs["bf16"]["class_flags"], outs["fp32"]["class_flags"])
    # "auto" is what the hardware runs natively, reported as such
    for native in (False, True):
        monkeypatch.setattr(inference, "_cpu_native_bf16", lambda native=native: native)
        out = StarGalaxyClassifier(tiny_weights_file, device="cpu").classify(catalog, images)
        assert out.meta["astro_starglx"]["precision"] == ("bf16" if native else "fp32")
        same = outs["bf16" if native else "fp32"]
        np.testing.assert_array_equal(out["p_galaxy"], same["p_galaxy"])


def test_catalog_positions_off_by_a_fraction_of_an_arcsec_are_refined(sim_field):
    """A catalog 0.2" (2.7 pixels) off the images: refined, the default model's
    classes are those of the exact positions; as given, point sources look
    extended."""
    catalog, images = sim_field
    clf = StarGalaxyClassifier(device="cpu")

    def run(table, **kwargs):  # the field's edge and blend flags warn: not tested here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            return clf.classify(table, images, **kwargs)

    exact = run(catalog)
    shifted = catalog.copy()
    shifted["dec"] = shifted["dec"] + 0.2 / 3600.0
    out = run(shifted)
    report = out.meta["astro_starglx"]["positions"]
    for band in CSST_BANDS:  # north is +y: the catalog's offset, seen from the images
        east, north = report["offset_arcsec"][band]
        assert abs(east) < 0.02 and north == pytest.approx(-0.2, abs=0.02)
    assert report["n_moved"] == len(catalog)
    np.testing.assert_allclose(out["p_galaxy"], exact["p_galaxy"], atol=0.05)
    assert list(out["class"]) == list(exact["class"])
    as_given = run(shifted, refine_positions=False)
    assert "positions" not in as_given.meta["astro_starglx"]
    stars = np.asarray(exact["class"]) == "star"
    assert np.mean(np.asarray(as_given["class"])[stars] == "star") < 0.8
    # exact positions stay put: their refinement changes the probabilities little
    unrefined = run(catalog, refine_positions=False)
    np.testing.assert_allclose(exact["p_galaxy"], unrefined["p_galaxy"], atol=0.05)
    with pytest.raises(ValueError, match="refine_positions must be"):
        run(catalog, refine_positions="yes")
