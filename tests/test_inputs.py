"""Tests of the input extraction: positions, zero points, stamps, noise and features."""

import logging
import re

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import CCDData, NDData, StdDevUncertainty
from astropy.table import QTable, Table
from astropy.utils.masked import Masked
from astropy.wcs import WCS
from synthetic_sources import PIXEL_SCALE, SIZE, ZP, ccd, make_field

from astro_starglx.features import FEATURE_NAMES, PSF_FEATURE_NAMES, psf_features
from astro_starglx.flags import ClassFlag
from astro_starglx.csst import CSST_BANDS
from astro_starglx.inputs import (
    SourceInputs,
    blend_flags,
    extract_inputs,
    get_zeropoint,
    match_band,
    match_band_keys,
    model_images,
    pixel_positions,
    sky_column_names,
    unit_zeropoint,
)
from astro_starglx.psf import PSFEstimate

IMAG = FEATURE_NAMES.index("mag")


# --------------------------------------------------------------------------
# zero points


def test_get_zeropoint_sources():
    image = CCDData(np.zeros((3, 3)), unit="adu",
                    meta={"ZP": 20.0, "PHOTZP": 21.0, "MAGZERO": 22.0})
    assert get_zeropoint(image, "g") == 22.0
    assert get_zeropoint(image, "g", {"g": 25.5}) == 25.5
    assert get_zeropoint(image, "r", {"g": 25.5}) == 22.0
    header = fits.Header()
    header["PHOTZP"] = 23.0
    header["ZP"] = 24.0
    assert get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu", meta=header), "g") == 23.0
    assert get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu", meta={"zp": 24.0}), "g") == 24.0
    # Other surveys' spellings: MAGZP (ZTF-like), MAGZPT; MAGZERO still wins.
    assert get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu",
                                 meta={"MAGZPT": 26.0, "ZP": 24.0}), "g") == 26.0
    assert get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu",
                                 meta={"MAGZP": 27.0, "MAGZPT": 26.0}), "g") == 27.0


@pytest.mark.parametrize(("unit", "expected"), [
    ("nJy", 31.4), ("uJy", 23.9), ("Jy", 8.9), ("nanomaggy", 22.5), (u.mgy, 0.0),
    ("erg / (s cm2 Hz)", -48.6)])
def test_get_zeropoint_from_a_flux_density_unit(unit, expected):
    """An image calibrated in a flux density unit carries its AB zero point."""
    image = CCDData(np.zeros((3, 3)), unit=unit)
    assert get_zeropoint(image, "g") == pytest.approx(expected, abs=1e-3)
    assert unit_zeropoint(unit) == pytest.approx(expected, abs=1e-3)
    # a header keyword and the argument still take precedence
    keyed = CCDData(np.zeros((3, 3)), unit=unit, meta={"MAGZERO": 25.0})
    assert get_zeropoint(keyed, "g") == 25.0
    assert get_zeropoint(image, "g", {"g": 26.0}) == 26.0


@pytest.mark.parametrize("unit", ["adu", "electron / s", "MJy / sr", "", None, u.ABmag,
                                  "Jy / beam", "erg / (s cm2 Angstrom)"])
def test_no_zeropoint_from_other_units(unit):
    assert unit_zeropoint(unit) is None
    image = NDData(np.zeros((3, 3)), unit=unit)
    with pytest.raises(ValueError, match="flux density unit"):
        get_zeropoint(image, "g")


def test_get_zeropoint_from_fluxmag0():
    """HSC/LSST calexps state the flux of magnitude 0: zp = 2.5 log10(FLUXMAG0)."""
    image = CCDData(np.zeros((3, 3)), unit="adu", meta={"FLUXMAG0": 10.0 ** 11.2})
    assert get_zeropoint(image, "i") == pytest.approx(28.0)
    both = CCDData(np.zeros((3, 3)), unit="adu", meta={"FLUXMAG0": 1e11, "MAGZERO": 27.0})
    assert get_zeropoint(both, "i") == 27.0  # the zero-point keywords first
    for bad in (-1.0, 0, "n/a", True, np.nan):
        image = CCDData(np.zeros((3, 3)), unit="adu", meta={"FLUXMAG0": bad})
        with pytest.raises(ValueError, match=r"header keyword FLUXMAG0 = .* must be a finite"):
            get_zeropoint(image, "i")


def test_get_zeropoint_errors():
    image = CCDData(np.zeros((3, 3)), unit="adu")
    with pytest.raises(ValueError, match=r"magnitude features need one.*zeropoints=\{'g': value\}"
                                         r".*MAGZERO"):
        get_zeropoint(image, "g")
    with pytest.raises(ValueError, match="must be a finite real number"):
        get_zeropoint(image, "g", {"g": np.nan})
    with pytest.raises(ValueError, match="header keyword MAGZERO .* must be a finite real number"):
        get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu", meta={"MAGZERO": "n/a"}), "g")
    with pytest.raises(TypeError, match="zeropoints must be a mapping"):
        get_zeropoint(image, "g", 25.0)


@pytest.mark.parametrize("value", [1e30, -1e3, True, np.bool_(False), "25.0", 25 + 0j,
                                   np.array([25.0]), None, np.inf, 25.0 * u.m])
def test_get_zeropoint_refuses_absurd_values(value):
    """Absurd zero points used to be taken at face value (1e30, True, strings)."""
    image = CCDData(np.zeros((3, 3)), unit="adu")
    with pytest.raises(ValueError, match=r"zero point from zeropoints\['g'\] must be a finite "
                                         r"real number of AB magnitudes within \+-100 .*got "
                                         r".* of type .*zeropoints=\{'g': 25.0\}"):
        get_zeropoint(image, "g", {"g": value})
    header = CCDData(np.zeros((3, 3)), unit="adu", meta={"PHOTZP": value})
    if not isinstance(value, (np.ndarray, u.Quantity)) and value is not None:
        with pytest.raises(ValueError, match=r"header keyword PHOTZP of band 'g' must be"):
            get_zeropoint(header, "g")


def test_get_zeropoint_accepts_numbers_and_magnitudes():
    image = CCDData(np.zeros((3, 3)), unit="adu")
    for value in (25, np.float32(25.0), np.int16(25), 25.0 * u.mag, 25.0 * u.dimensionless_unscaled,
                  u.Magnitude(25.0, u.ABmag), -48.6):
        assert get_zeropoint(image, "g", {"g": value}) == pytest.approx(float(getattr(
            value, "value", value)))


def test_extract_inputs_needs_zeropoints():
    image = CCDData(np.zeros((40, 40)), unit="adu")
    with pytest.raises(ValueError, match="no photometric zero point for band 'r'"):
        extract_inputs({"r": image}, [20.0], [20.0], bands=["r"], size=SIZE,
                       pixel_scale=PIXEL_SCALE)
    rng = np.random.default_rng(12)
    image = CCDData(rng.normal(size=(40, 40)), unit="adu")
    out = extract_inputs({"r": image}, [20.0], [20.0], bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE, zeropoints={"r": ZP})
    assert np.isfinite(out.features[0, 0, IMAG])


# --------------------------------------------------------------------------
# invariance


@pytest.mark.parametrize("with_uncertainty", [False, True])
def test_zeropoint_and_unit_invariance(with_uncertainty):
    rng = np.random.default_rng(13)
    kinds = ["star", "galaxy"] * 10
    data, x, y = make_field(rng, kinds, rng.uniform(20, 25, 20), noise=1.5)
    k = 37.5
    kw1, kw2 = {}, {}
    if with_uncertainty:
        sigma = np.full(data.shape, 1.5, dtype=np.float32)
        kw1 = {"uncertainty": StdDevUncertainty(sigma)}
        kw2 = {"uncertainty": StdDevUncertainty(sigma * np.float32(k))}
    one = extract_inputs({"r": ccd(data, **kw1)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    two = extract_inputs({"r": ccd(data * np.float32(k), zp=ZP + 2.5 * np.log10(k), **kw2)},
                         {"r": x}, {"r": y}, bands=["r"], size=SIZE, pixel_scale=PIXEL_SCALE)
    np.testing.assert_allclose(two.features, one.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two.noise, k * one.noise, rtol=1e-5)
    np.testing.assert_allclose(two.stamps / two.noise[:, :, None, None],
                               one.stamps / one.noise[:, :, None, None], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(two.flags, one.flags)


# --------------------------------------------------------------------------
# extract_inputs


def two_band_field(rng, n=12):
    kinds = ["star", "galaxy"] * (n // 2)
    mags = rng.uniform(20, 22, n)
    data_g, x, y = make_field(rng, kinds, mags)
    # band r sits on another detector: its pixel grid is shifted and the
    # sources are at other pixel positions
    shift = np.array([3.3, -1.7])
    data_r = np.zeros_like(data_g)
    data_r += np.roll(data_g, (-2, 3), axis=(0, 1))  # any content will do
    sigma = np.full(data_g.shape, 1.0, dtype=np.float32)
    images = {"g": ccd(data_g),
              "r": ccd(data_r, uncertainty=StdDevUncertainty(sigma))}
    xs = {"g": x, "r": x + shift[0]}
    ys = {"g": y, "r": y + shift[1]}
    return images, xs, ys


def test_extract_inputs_shapes_and_missing_band():
    rng = np.random.default_rng(14)
    images, xs, ys = two_band_field(rng)
    n = len(xs["g"])
    out = extract_inputs(images, xs, ys, bands=("u", "g", "r"), size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert isinstance(out, SourceInputs)
    assert out.stamps.shape == (n, 3, SIZE, SIZE) and out.stamps.dtype == np.float32
    assert out.noise.shape == (n, 3) and out.noise.dtype == np.float32
    assert out.features.shape == (n, 3, 5) and out.features.dtype == np.float32
    assert out.offsets.shape == (n, 3, 2) and out.offsets.dtype == np.float32
    assert out.flags.shape == (n,) and out.flags.dtype == np.uint16
    assert np.all(out.flags & ClassFlag.BAND_MISSING)
    assert np.all(np.isnan(out.stamps[:, 0])) and np.all(np.isnan(out.features[:, 0]))
    assert np.all(np.isnan(out.noise[:, 0])) and np.all(np.isnan(out.offsets[:, 0]))
    assert np.all(np.isfinite(out.features[:, 1:]))
    assert np.all(np.abs(out.offsets[:, 1:] - 12.0) <= 0.5)
    # per-band offsets follow each band's own positions
    x0 = np.ceil(xs["r"] - SIZE / 2)
    np.testing.assert_allclose(out.offsets[:, 2, 0], xs["r"] - x0, rtol=1e-6)
    # the same band order and content as a one-band call
    alone = extract_inputs({"g": images["g"]}, xs, ys, bands=["g"], size=SIZE,
                           pixel_scale=PIXEL_SCALE)
    np.testing.assert_array_equal(alone.features[:, 0], out.features[:, 1])
    np.testing.assert_array_equal(alone.stamps[:, 0], out.stamps[:, 1])
    with pytest.raises(AttributeError):
        out.flags = None  # frozen


def test_extract_inputs_flags():
    rng = np.random.default_rng(15)
    data, x, y = make_field(rng, ["star"] * 4, [20.0] * 4, shape=(64, 96))
    mask = np.zeros(data.shape, dtype=bool)
    my, mx = int(round(y[1])), int(round(x[1]))
    mask[my - 2:my + 3, mx - 2:mx + 3] = True  # the core and its mirror
    image = ccd(data, mask=mask)
    xx = np.concatenate([x, [-40.0, 2.0]])
    yy = np.concatenate([y, [10.0, 30.0]])
    out = extract_inputs({"r": image}, xx, yy, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert out.flags[0] == 0
    assert out.flags[1] == ClassFlag.MASKED | ClassFlag.NO_FEATURES
    assert out.flags[4] == ClassFlag.OFF_IMAGE | ClassFlag.BAND_MISSING
    assert out.flags[5] & ClassFlag.PARTIAL
    assert not out.flags[5] & ClassFlag.BAND_MISSING


def test_extract_inputs_flags_or_over_bands():
    rng = np.random.default_rng(16)
    images, xs, ys = two_band_field(rng, n=4)
    xs = {b: np.append(v, 1.0) for b, v in xs.items()}
    ys = {b: np.append(v, 20.0) for b, v in ys.items()}
    xs["r"][-1] = -100.0  # off the r image only
    out = extract_inputs(images, xs, ys, bands=("g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    assert out.flags[-1] & ClassFlag.PARTIAL
    assert out.flags[-1] & ClassFlag.OFF_IMAGE
    assert out.flags[-1] & ClassFlag.BAND_MISSING
    assert np.all(out.flags[:4] == 0)


def test_extract_inputs_image_sigma_and_shared_positions():
    rng = np.random.default_rng(17)
    data, x, y = make_field(rng, ["star"] * 3, [21.0] * 3, shape=(64, 96))
    out = extract_inputs({"r": ccd(data)}, x, y, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE, image_sigma={"r": 4.0})
    np.testing.assert_allclose(out.noise, 4.0)


def test_extract_inputs_no_sources_and_no_bands_present():
    rng = np.random.default_rng(18)
    image = ccd(rng.normal(size=(40, 40)))
    out = extract_inputs({"r": image}, {"r": []}, {"r": []}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert out.stamps.shape == (0, 1, SIZE, SIZE) and out.flags.shape == (0,)
    out = extract_inputs({}, {"r": [1.0, 2.0]}, {"r": [1.0, 2.0]}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert out.flags.tolist() == [ClassFlag.BAND_MISSING] * 2


def test_extract_inputs_errors():
    image = ccd(np.zeros((40, 40)))
    kw = dict(size=SIZE, pixel_scale=PIXEL_SCALE)
    with pytest.raises(TypeError, match=r"images must be a mapping \{band: CCDData\}"):
        extract_inputs(image, [1.0], [1.0], bands=["r"], **kw)
    with pytest.raises(TypeError, match=r"images\['r'\] must be an astropy NDData"):
        extract_inputs({"r": np.zeros((4, 4))}, [1.0], [1.0], bands=["r"], **kw)
    with pytest.raises(ValueError, match="bands must be a non-empty sequence"):
        extract_inputs({"r": image}, [1.0], [1.0], bands="r", **kw)
    with pytest.raises(ValueError, match="bands must not repeat a band"):
        extract_inputs({"r": image}, [1.0], [1.0], bands=["r", "r"], **kw)
    with pytest.raises(ValueError, match="x has no positions for band 'r'"):
        extract_inputs({"r": image}, {"g": [1.0]}, {"r": [1.0]}, bands=["r"], **kw)
    with pytest.raises(ValueError, match="the same N sources"):
        extract_inputs({"r": image, "g": image}, {"r": [1.0], "g": [1.0, 2.0]},
                       {"r": [1.0], "g": [1.0, 2.0]}, bands=["r", "g"], **kw)
    with pytest.raises(ValueError, match="x holds no positions"):
        extract_inputs({}, {}, {}, bands=["r"], **kw)
    with pytest.raises(TypeError, match="image_sigma must be a mapping"):
        extract_inputs({"r": image}, [1.0], [1.0], bands=["r"], image_sigma=1.0, **kw)


def test_extract_inputs_does_not_mutate():
    rng = np.random.default_rng(19)
    images, xs, ys = two_band_field(rng, n=6)
    images["g"].mask = rng.uniform(size=images["g"].data.shape) < 0.01
    before = {b: (im.data.copy(), None if im.mask is None else im.mask.copy(),
                  None if im.uncertainty is None else im.uncertainty.array.copy(),
                  dict(im.meta)) for b, im in images.items()}
    pos = {b: (xs[b].copy(), ys[b].copy()) for b in xs}
    extract_inputs(images, xs, ys, bands=("g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    for b, im in images.items():
        data, mask, unc, meta = before[b]
        np.testing.assert_array_equal(im.data, data)
        if mask is not None:
            np.testing.assert_array_equal(im.mask, mask)
        if unc is not None:
            np.testing.assert_array_equal(im.uncertainty.array, unc)
        assert dict(im.meta) == meta
        np.testing.assert_array_equal(xs[b], pos[b][0])
        np.testing.assert_array_equal(ys[b], pos[b][1])


def test_extract_inputs_refuses_malformed_images():
    """Complex, empty, wrongly masked images used to leak numpy errors or lose data."""
    rng = np.random.default_rng(20)
    kw = dict(bands=["r"], size=SIZE, pixel_scale=PIXEL_SCALE)
    data = rng.normal(size=(40, 40))
    with pytest.raises(TypeError, match=r"images\['r'\]\.data must hold real numbers, got "
                                        r"complex dtype complex128; pass the real part"):
        extract_inputs({"r": ccd(data + 1j)}, [20.0], [20.0], **kw)
    for shape in [(0, 40), (40, 0)]:
        with pytest.raises(ValueError, match=r"images\['r'\]\.data must have at least one row "
                                             rf"and one column of pixels, got shape "
                                             rf"{re.escape(str(shape))}"):
            extract_inputs({"r": ccd(np.zeros(shape))}, [20.0], [20.0], **kw)
    for mask in [np.zeros((3, 3), bool), np.bool_(True), False]:
        image = NDData(data, mask=mask, meta={"MAGZERO": ZP})
        with pytest.raises(ValueError, match=r"images\['r'\]\.mask must have the shape of "
                                             r"images\['r'\]\.data \(40, 40\), got .*; give a "
                                             r"boolean array of that shape.*or mask=None"):
            extract_inputs({"r": image}, [20.0], [20.0], **kw)
    with pytest.raises(TypeError, match=r"images\['r'\]\.data must hold pixel values, got a "
                                        r"boolean array.*pass it as mask="):
        extract_inputs({"r": ccd(data > 0)}, [20.0], [20.0], **kw)
    image = NDData(data, mask=np.full((40, 40), "x"), meta={"MAGZERO": ZP})
    with pytest.raises(TypeError, match=r"images\['r'\]\.mask must be a boolean or integer"):
        extract_inputs({"r": image}, [20.0], [20.0], **kw)
    image = ccd(data, uncertainty=StdDevUncertainty(np.ones((40, 40)) + 0j))
    with pytest.raises(TypeError, match=r"images\['r'\]\.uncertainty must hold real numbers"):
        extract_inputs({"r": image}, [20.0], [20.0], **kw)


@pytest.mark.parametrize("with_uncertainty", [False, True])
def test_band_without_usable_pixels_is_flagged(with_uncertainty):
    """
    With no uncertainty this raised, advising an ``image_sigma=`` argument
    that classify() does not have; now it flags, as with an uncertainty.
    """
    rng = np.random.default_rng(21)
    images, xs, ys = two_band_field(rng, n=4)
    data = images["g"].data
    unc = StdDevUncertainty(np.ones(data.shape)) if with_uncertainty else None
    images["g"] = ccd(data, mask=np.ones(data.shape, bool), uncertainty=unc)
    out = extract_inputs(images, xs, ys, bands=("g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    assert np.all(out.flags & ClassFlag.BAND_MISSING)
    assert np.all(np.isnan(out.stamps[:, 0])) and np.all(np.isfinite(out.features[:, 1]))
    # a tiny image (too few pixels for a whole-image noise) measures each stamp's own
    tiny = ccd(rng.normal(size=(3, 4)))
    out = extract_inputs({"r": tiny}, [1.0], [1.5], bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert out.flags[0] & ClassFlag.PARTIAL and not out.flags[0] & ClassFlag.BAND_MISSING
    assert np.isfinite(out.noise[0, 0])


def test_saturated_flag():
    """SATURATED (32) was documented but never set."""
    rng = np.random.default_rng(22)
    data, x, y = make_field(rng, ["star"] * 4, [18.0] * 4, shape=(64, 96))
    peaks = data[np.round(y).astype(int), np.round(x).astype(int)]
    level = float(np.sort(peaks)[1]) + 1e-3  # two sources reach it, two do not
    image = ccd(data)
    image.meta["SATURATE"] = level
    out = extract_inputs({"r": image}, x, y, bands=["r"], size=SIZE, pixel_scale=PIXEL_SCALE)
    saturated = (out.flags & ClassFlag.SATURATED) != 0
    assert saturated.tolist() == (peaks >= level).tolist()
    assert not np.any(out.flags & ClassFlag.MASKED)  # saturated pixels are still data
    # +inf in the central 5 x 5: SATURATED (and MASKED: the pixel has no value);
    # +inf outside it, -inf, or a masked +inf: not SATURATED
    data = data.copy()
    iy, ix = np.round(y).astype(int), np.round(x).astype(int)
    data[iy[0] + 1, ix[0] - 2] = np.inf
    data[iy[1], ix[1] + 6] = np.inf
    data[iy[2], ix[2]] = -np.inf
    data[iy[3], ix[3]] = np.inf
    mask = np.zeros(data.shape, bool)
    mask[iy[3], ix[3]] = True
    out = extract_inputs({"r": ccd(data, mask=mask)}, x, y, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert ((out.flags & ClassFlag.SATURATED) != 0).tolist() == [True, False, False, False]
    assert np.all(out.flags & ClassFlag.MASKED)
    # float64 pixels beyond the float32 range are +inf there: saturated, no numpy warning
    data = np.zeros((40, 40))
    data[20, 20] = 1e39
    out = extract_inputs({"r": ccd(data)}, [20.0], [20.0], bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    assert out.flags[0] & ClassFlag.SATURATED
    for bad in ["n/a", np.nan, True]:
        with pytest.raises(ValueError, match=r"header keyword SATURATE of images\['r'\] must "
                                             r"be the saturation level as a number"):
            image = CCDData(data, unit="adu", meta={"MAGZERO": ZP, "SATURATE": bad})
            extract_inputs({"r": image}, [20.0], [20.0], bands=["r"], size=SIZE,
                           pixel_scale=PIXEL_SCALE)


# --------------------------------------------------------------------------
# pixel_positions


def sky_wcs(*, crpix=(40.0, 30.0), ctype=("RA---TAN", "DEC--TAN")):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = list(ctype)
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]
    wcs.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    return wcs


def sky_field(n=6):
    """Two bands on shifted pixel grids and the sky positions of n sources."""
    images = {"g": NDData(np.zeros((60, 80)), wcs=sky_wcs()),
              "r": NDData(np.zeros((60, 80)), wcs=sky_wcs(crpix=(42.5, 27.0)))}
    rng = np.random.default_rng(30)
    coords = images["g"].wcs.pixel_to_world(rng.uniform(5, 75, n), rng.uniform(5, 55, n))
    return images, coords


def positions(catalog, images, **kwargs):
    kw = dict(ra_column="ra", dec_column="dec", coord_column=None, x_column="x",
              y_column="y", shared_grid=False)
    return pixel_positions(catalog, images, **{**kw, **kwargs})


def test_pixel_positions_per_band_wcs():
    images, coords = sky_field()
    x, y = positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images)
    for band, image in images.items():
        px, py = image.wcs.world_to_pixel(coords)
        np.testing.assert_array_equal(x[band], px)
        np.testing.assert_array_equal(y[band], py)
        assert x[band].dtype == np.float64
    np.testing.assert_allclose(x["r"] - x["g"], 2.5, atol=1e-6)
    sc_x, sc_y = positions(Table({"pos": coords}), images)
    np.testing.assert_allclose(sc_x["r"], x["r"], atol=1e-9)


@pytest.mark.parametrize("unit", ["deg", "rad", "arcmin", "arcsec", "hourangle"])
@pytest.mark.parametrize("container", ["quantity", "column_unit"])
def test_pixel_positions_honour_units(unit, container):
    images, coords = sky_field()
    ref_x, ref_y = positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images)
    ra = coords.ra.to(unit)
    dec = coords.dec.to(u.deg if unit == "hourangle" else unit)
    if container == "quantity":
        catalog = QTable({"ra": ra, "dec": dec})
    else:
        catalog = Table({"ra": ra.value, "dec": dec.value})
        catalog["ra"].unit, catalog["dec"].unit = ra.unit, dec.unit
    x, y = positions(catalog, images)
    for band in images:
        np.testing.assert_allclose(x[band], ref_x[band], atol=1e-6)
        np.testing.assert_allclose(y[band], ref_y[band], atol=1e-6)


def test_pixel_positions_unit_errors():
    images, coords = sky_field()
    catalog = QTable({"ra": coords.ra.deg * u.m, "dec": coords.dec})
    with pytest.raises(ValueError, match=r"column 'ra' has unit m, which is not an angle"):
        positions(catalog, images)
    with pytest.raises(ValueError, match="column 'ra' must hold numbers"):
        positions(Table({"ra": ["10:00:00"] * 6, "dec": coords.dec.deg}), images)


def test_masked_or_nan_positions_are_per_source():
    """One masked or NaN coordinate used to reject the whole catalog."""
    images, coords = sky_field()
    ref_x, ref_y = positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images)
    ra, dec = coords.ra.deg.copy(), coords.dec.deg.copy()
    ra[1], dec[4] = np.nan, np.inf
    catalogs = [
        QTable({"ra": Masked(coords.ra, mask=[False, True] + [False] * 4),
                "dec": Masked(coords.dec, mask=[False] * 4 + [True, False])}),
        Table({"ra": np.ma.MaskedArray(coords.ra.deg, mask=[0, 1, 0, 0, 0, 0]),
               "dec": np.ma.MaskedArray(coords.dec.deg, mask=[0, 0, 0, 0, 1, 0])}),
        Table({"ra": ra, "dec": dec}),
        Table({"c": SkyCoord(ra, np.where(np.isfinite(dec), dec, np.nan), unit="deg")}),
    ]
    for catalog in catalogs:
        x, y = positions(catalog, images)
        for band in images:
            assert np.isnan(x[band][[1, 4]]).all() and np.isnan(y[band][[1, 4]]).all()
            keep = [0, 2, 3, 5]
            np.testing.assert_allclose(x[band][keep], ref_x[band][keep], atol=1e-6)
            np.testing.assert_allclose(y[band][keep], ref_y[band][keep], atol=1e-6)
    x, _ = positions(Table({"x": [1.0, np.nan], "y": [2.0, 3.0]}), images, shared_grid=True)
    assert np.isnan(x["g"][1]) and x["r"][0] == 1.0
    # and the sources without a position are OFF_IMAGE
    data = ccd(np.random.default_rng(0).normal(size=(60, 80)))
    out = extract_inputs({"g": data}, x, x, bands=["g"], size=SIZE, pixel_scale=PIXEL_SCALE)
    assert out.flags[1] & ClassFlag.OFF_IMAGE and np.isnan(out.stamps[1]).all()


def test_pixel_positions_dec_out_of_range():
    images, coords = sky_field()
    dec = coords.dec.deg.copy()
    dec[[2, 4]] = [95.0, -91.0]
    catalog = Table({"ra": coords.ra.deg, "dec": dec})
    with pytest.raises(ValueError, match=r"column 'dec' has 2 value\(s\) outside \[-90, 90\] "
                                         r"degrees \(first at row 2: 95.0 deg\)"):
        positions(catalog, images)
    # the radian values of a unit-less column read as degrees are in range, but
    # arcsec read as degrees are not: the message points at the unit
    catalog = Table({"ra": coords.ra.deg, "dec": coords.dec.arcsec})
    with pytest.raises(ValueError, match=r"first at row 0.*check its unit"):
        positions(catalog, images)


def test_pixel_positions_2d_columns():
    images, coords = sky_field()
    catalog = Table({"ra": np.column_stack([coords.ra.deg, coords.dec.deg]),
                     "dec": coords.dec.deg})
    with pytest.raises(ValueError, match=r"column 'ra' must be 1-D .* shape \(6, 2\); row 0 "):
        positions(catalog, images)
    pixels = Table({"x": np.ones((6, 2)), "y": np.ones(6)})
    with pytest.raises(ValueError, match=r"column 'x' must be 1-D .*row 0 holds \[1.0, 1.0\]"):
        positions(pixels, images, shared_grid=True)
    grid = Table({"pos": SkyCoord(np.full((3, 2), 150.0), np.full((3, 2), 2.0), unit="deg")})
    with pytest.raises(ValueError, match=r"SkyCoord column 'pos' must be 1-D .*\(3, 2\)"):
        positions(grid, images)


def test_pixel_positions_wcs_errors():
    images, coords = sky_field()
    catalog = Table({"ra": coords.ra.deg, "dec": coords.dec.deg})
    cube = WCS(naxis=3)
    cube.wcs.ctype = ["RA---TAN", "DEC--TAN", "FREQ"]
    bad = dict(images, r=NDData(np.zeros((60, 80)), wcs=cube))
    with pytest.raises(ValueError, match=r"images\['r'\]\.wcs must be a 2-D celestial WCS.*"
                                         r"got 3 pixel and 3 world axes"):
        positions(catalog, bad)
    bad = dict(images, g=NDData(np.zeros((60, 80)), wcs=sky_wcs(ctype=("X", "Y"))))
    with pytest.raises(ValueError, match=r"images\['g'\]\.wcs must be a 2-D celestial WCS"):
        positions(catalog, bad)
    bad = dict(images, g=NDData(np.zeros((60, 80))))
    with pytest.raises(ValueError, match=r"images\['g'\] has no WCS"):
        positions(catalog, bad)
    # pixel columns need no WCS at all
    x, _ = positions(Table({"x": [1.0], "y": [2.0]}), bad, shared_grid=True)
    assert x["g"].tolist() == [1.0]


def test_pixel_positions_catalog_and_column_errors():
    images, coords = sky_field()
    with pytest.raises(TypeError, match="catalog must be an astropy Table"):
        positions({"ra": coords.ra.deg, "dec": coords.dec.deg}, images)
    with pytest.raises(ValueError, match="coord_column 'pos' is not in the catalog"):
        positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images,
                  coord_column="pos")
    with pytest.raises(TypeError, match="coord_column 'ra' must hold a SkyCoord"):
        positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images,
                  coord_column="ra")
    with pytest.raises(ValueError, match="catalog has no sky positions"):
        positions(Table({"a": [1.0]}), images)


@pytest.mark.parametrize(("ra", "dec"), [
    ("RA", "DEC"), ("Ra", "Dec"), ("RA_deg", "DEC_deg"), ("RA_J2000", "DEC_J2000"),
    ("RA_ICRS", "DE_ICRS"), ("RAJ2000", "DEJ2000"), ("ALPHA_J2000", "DELTA_J2000"),
    ("X_WORLD", "Y_WORLD")])
def test_pixel_positions_common_column_names(ra, dec):
    """With the default names, a catalog's RA/DEC, VizieR or SExtractor columns are found."""
    images, coords = sky_field()
    ref = positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images)
    got = positions(Table({ra: coords.ra.deg, dec: coords.dec.deg, "x": [0.0] * len(coords),
                           "y": [0.0] * len(coords)}), images)
    for band in images:
        np.testing.assert_array_equal(got[0][band], ref[0][band])
        np.testing.assert_array_equal(got[1][band], ref[1][band])
    # one image with pixel columns: the sky columns still win
    one = {"g": images["g"]}
    got = positions(Table({ra: coords.ra.deg, dec: coords.dec.deg, "x": [0.0] * len(coords),
                           "y": [0.0] * len(coords)}), one)
    np.testing.assert_array_equal(got[0]["g"], ref[0]["g"])


def test_sky_column_names_order_and_explicit_names():
    both = Table({"RA": [1.0], "DEC": [2.0], "ALPHA_J2000": [3.0], "DELTA_J2000": [4.0]})
    assert sky_column_names(both) == ("RA", "DEC")  # the first pair of SKY_COLUMN_ALIASES
    assert sky_column_names(both, "ALPHA_J2000", "DELTA_J2000") == ("ALPHA_J2000",
                                                                    "DELTA_J2000")
    assert sky_column_names(Table({"RA": [1.0], "DE_ICRS": [2.0]})) is None  # no whole pair
    # explicit names are never replaced by an alias
    assert sky_column_names(both, "ra_deg", "dec_deg") is None
    images, _ = sky_field()
    with pytest.raises(ValueError, match="expected columns ra_column='ra_deg'"):
        positions(both, images, ra_column="ra_deg", dec_column="dec_deg")


def test_sky_column_alias_logged_once_and_only_when_used(caplog):
    images, coords = sky_field()
    caplog.set_level(logging.INFO, logger="astro_starglx.inputs")
    positions(Table({"RA": coords.ra.deg, "DEC": coords.dec.deg}), images)
    assert [r.getMessage() for r in caplog.records].count(
        "catalog has no 'ra'/'dec' columns: using 'RA'/'DEC'") == 1
    caplog.clear()
    # a SkyCoord column is used: the RA/DEC columns are not, and not logged
    got = positions(Table({"RA": coords.ra.deg + 1.0, "DEC": coords.dec.deg,
                           "coord": coords}), images)
    assert not caplog.records
    ref = positions(Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images)
    np.testing.assert_array_equal(got[0]["g"], ref[0]["g"])


def test_pixel_positions_empty_catalog():
    images, _ = sky_field()
    x, y = positions(Table({"ra": np.zeros(0), "dec": np.zeros(0)}), images)
    assert x["g"].shape == (0,) and y["r"].shape == (0,)


# --------------------------------------------------------------------------
# feature selection and PSF features


def test_extract_inputs_feature_names_order_and_subset():
    rng = np.random.default_rng(40)
    images, xs, ys = two_band_field(rng, n=6)
    kw = dict(bands=("g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    default = extract_inputs(images, xs, ys, **kw)
    same = extract_inputs(images, xs, ys, feature_names=FEATURE_NAMES, **kw)
    np.testing.assert_array_equal(same.features, default.features)
    subset = extract_inputs(images, xs, ys, feature_names=["radius", "mag"], **kw)
    assert subset.features.shape == (6, 2, 2)
    np.testing.assert_array_equal(subset.features[..., 0],
                                  default.features[..., FEATURE_NAMES.index("radius")])
    np.testing.assert_array_equal(subset.features[..., 1], default.features[..., IMAG])
    # the stamps, noise and flags do not depend on the features asked for
    np.testing.assert_array_equal(subset.stamps, default.stamps)
    np.testing.assert_array_equal(subset.flags, default.flags)


def test_extract_inputs_psf_features():
    rng = np.random.default_rng(41)
    images, xs, ys = two_band_field(rng, n=6)
    ny, nx = images["r"].data.shape
    # band r's PSF grows from left to right: each source gets its local FWHM
    psf = {"g": PSFEstimate(0.15, "argument", band="g"),
           "r": PSFEstimate(0.2, "measured", band="r", plane=(0.2, 0.03, 0.0),
                            shape=(ny, nx), n_stars=10, gamma=0.3)}
    kw = dict(bands=("u", "g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    names = FEATURE_NAMES + PSF_FEATURE_NAMES
    base = extract_inputs(images, xs, ys, **kw)
    out = extract_inputs(images, xs, ys, feature_names=names, psf=psf, **kw)
    assert out.features.shape == (6, 3, len(names))
    np.testing.assert_array_equal(out.features[..., :len(FEATURE_NAMES)], base.features)
    assert np.all(np.isnan(out.features[:, 0]))  # band u is missing
    i_fwhm = names.index("psf_fwhm")
    np.testing.assert_allclose(out.features[:, 1, i_fwhm], 0.15)
    np.testing.assert_allclose(out.features[:, 2, i_fwhm],
                               psf["r"].at(xs["r"], ys["r"]), rtol=1e-6)
    assert np.ptp(out.features[:, 2, i_fwhm]) > 0.01
    i_gamma = names.index("psf_gamma")
    assert np.all(np.isnan(out.features[:, 1, i_gamma]))  # a FWHM alone: no shape
    np.testing.assert_allclose(out.features[:, 2, i_gamma], 0.3)
    for c, band in ((1, "g"), (2, "r")):
        expected = psf_features(base.features[:, c], psf[band].at(xs[band], ys[band]),
                                gamma=psf[band].gamma, pixel_scale=PIXEL_SCALE, size=SIZE)
        np.testing.assert_allclose(out.features[:, c, len(FEATURE_NAMES):], expected,
                                   rtol=1e-6, atol=1e-7)
    # PSF features alone, reordered
    alone = extract_inputs(images, xs, ys, feature_names=["concentration_excess", "psf_fwhm"],
                           psf=psf, **kw)
    np.testing.assert_array_equal(alone.features[..., 0],
                                  out.features[..., names.index("concentration_excess")])
    np.testing.assert_array_equal(alone.features[..., 1], out.features[..., i_fwhm])
    # stars have small radius excesses, galaxies (odd rows) large ones
    excess = out.features[:, 1, names.index("radius_excess")]
    assert excess[1::2].min() > excess[0::2].max()


def test_extract_inputs_feature_scale():
    """feature_scale s measures as on an image of pixel_scale / s, PSF FWHMs divided by s."""
    rng = np.random.default_rng(43)
    images, xs, ys = two_band_field(rng, n=6)
    psf = {"g": PSFEstimate(0.3, "argument", band="g"),
           "r": PSFEstimate(0.4, "argument", band="r")}
    names = FEATURE_NAMES + PSF_FEATURE_NAMES
    kw = dict(bands=("g", "r"), size=SIZE, feature_names=names)
    scaled = extract_inputs(images, xs, ys, pixel_scale=PIXEL_SCALE, feature_scale=2.0,
                            psf=psf, **kw)
    halved = {band: PSFEstimate(est.fwhm / 2.0, "argument", band=band)
              for band, est in psf.items()}
    expected = extract_inputs(images, xs, ys, pixel_scale=PIXEL_SCALE / 2.0, psf=halved, **kw)
    np.testing.assert_allclose(scaled.features, expected.features, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scaled.features[:, :, names.index("psf_fwhm")], [[0.15, 0.2]] * 6)
    # wider apertures than at feature_scale=1: other concentrations and radii
    one = extract_inputs(images, xs, ys, pixel_scale=PIXEL_SCALE, psf=psf, **kw)
    np.testing.assert_array_equal(scaled.stamps, one.stamps)
    i_conc = names.index("concentration")
    assert not np.allclose(scaled.features[..., i_conc], one.features[..., i_conc])
    for bad in (0.0, -1.0, np.nan, "2"):
        with pytest.raises(ValueError, match="feature_scale must be a finite number > 0"):
            extract_inputs(images, xs, ys, pixel_scale=PIXEL_SCALE, feature_scale=bad, psf=psf,
                           **kw)


def test_extract_inputs_feature_names_errors():
    rng = np.random.default_rng(42)
    images, xs, ys = two_band_field(rng, n=2)
    kw = dict(bands=("g", "r"), size=SIZE, pixel_scale=PIXEL_SCALE)
    with pytest.raises(ValueError, match=r"feature_names holds \['size'\], which astro_starglx "
                                         r"cannot measure; known features: \['mag'"):
        extract_inputs(images, xs, ys, feature_names=["mag", "size"], **kw)
    with pytest.raises(TypeError, match="feature_names must be a sequence of feature names, "
                                        "got 'mag'"):
        extract_inputs(images, xs, ys, feature_names="mag", **kw)
    with pytest.raises(TypeError, match="feature_names must be a sequence of feature names"):
        extract_inputs(images, xs, ys, feature_names=["mag", 3], **kw)
    with pytest.raises(ValueError, match=r"asks for PSF features but psf has no estimate for "
                                         r"bands \['g', 'r'\]; pass psf=astro_starglx.psf"):
        extract_inputs(images, xs, ys, feature_names=["mag", "psf_fwhm"], **kw)
    with pytest.raises(ValueError, match=r"no estimate for bands \['r'\]"):
        extract_inputs(images, xs, ys, feature_names=["radius_excess"],
                       psf={"g": PSFEstimate(0.15, "argument")}, **kw)
    # only the bands present need a PSF
    out = extract_inputs({"g": images["g"]}, xs, ys, feature_names=["radius_excess"],
                         psf={"g": PSFEstimate(0.15, "argument")}, **kw)
    assert out.features.shape == (2, 2, 1)


# --------------------------------------------------------------------------
# blend_flags


def gaussian_sources(shape, xs, ys, fluxes, *, sigma=1.2, noise=0.01, seed=0):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    data = np.random.default_rng(seed).normal(0.0, noise, shape)
    for x, y, f in zip(xs, ys, fluxes):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        data += f / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    return data.astype(np.float32)


def test_blend_flags():
    # A and B: equal, 5 pixels apart; C: isolated; D bright with E, 30x fainter,
    # 9 pixels away; F: no position
    x = np.array([20.0, 25.0, 75.0, 40.0, 49.0, np.nan])
    y = np.array([20.0, 20.3, 40.0, 48.0, 48.0, np.nan])
    flux = np.array([100.0, 100.0, 100.0, 900.0, 30.0])
    image = ccd(gaussian_sources((64, 96), x[:5], y[:5], flux))
    flags = blend_flags(image, x, y, size=SIZE)
    assert flags.dtype == np.uint16 and flags.shape == (6,)
    blended = ClassFlag.BLENDED
    assert flags.tolist() == [blended, blended, 0, 0, blended, 0]
    # the neighbour must lie inside the stamp: 5 pixels is outside a 7-pixel stamp
    assert blend_flags(image, x, y, size=7).tolist() == [0] * 6
    # a lower ratio counts the faint neighbour of the bright one too
    assert blend_flags(image, x, y, size=SIZE, ratio=0.01)[3] == blended
    # fewer than two positions: nothing to blend
    assert blend_flags(image, x[:1], y[:1], size=SIZE).tolist() == [0]


def test_blend_flags_tiny_odd_images():
    """Images under 5 pixels, absurd positions and +-3e38 pixels used to raise or warn."""
    for shape in [(1, 1), (3, 2), (4, 7)]:
        image = ccd(np.ones(shape, dtype=np.float32))
        flags = blend_flags(image, np.array([0.0, 1.0, 1e30]), np.array([0.0, 0.0, -1e30]),
                            size=SIZE)
        assert flags.tolist() == [ClassFlag.BLENDED] * 2 + [0]
    data = np.full((20, 20), 3e38, dtype=np.float32)
    data[::2] = -3e38
    data[5, 5] = np.nan
    flags = blend_flags(ccd(data), np.array([5.0, 8.0]), np.array([5.0, 5.0]), size=SIZE)
    assert flags.shape == (2,)
    assert blend_flags(ccd(np.full((20, 20), np.nan)), np.array([5.0, 8.0]),
                       np.array([5.0, 5.0]), size=SIZE).shape == (2,)


# --------------------------------------------------------------------------
# model_images: paths, HDUs and lists


@pytest.mark.parametrize("name, band", [
    ("r", "r"), ("R", "r"), ("HSC-R2", "r"), ("SDSS_r", "r"), ("z-band", "z"),
    ("DECam r SDSS c0002 6415.0 1480.0", "r"), ("GALEX NUV", "NUV"), ("nuv", "NUV"),
    ("H", None), ("gr", None), ("g+r", None), ("", None)])
def test_match_band_survey_names(name, band):
    assert match_band(name, CSST_BANDS) == band


def test_match_band_keys():
    bands = ["g", "r"]
    assert match_band_keys({"G": 1, "r": 2, "Ks": 3}, bands, "x") == {"r": 2, "g": 1, "Ks": 3}
    # the exact key wins; the alias is dropped
    assert match_band_keys({"R": 1, "r": 2}, bands, "x") == {"r": 2}
    with pytest.raises(ValueError, match="x has keys 'HSC-G' and 'G' that both name band 'g'"):
        match_band_keys({"HSC-G": 1, "G": 2}, bands, "x")
    # a model whose bands differ only in case: the case-blind rule names neither
    assert match_band_keys({"HSC-U": 1}, ["U", "u"], "x") == {"HSC-U": 1}


def test_model_images_reads_paths_hdus_and_lists(tmp_path):
    """A band given as a path or HDU is read; a list is mapped by FILTER (case aside)."""
    wcs = sky_wcs()
    data = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    header = wcs.to_header()
    header["MAGZERO"] = ZP
    header["FILTER"] = "G"
    path = tmp_path / "g.fits"
    fits.writeto(path, data, header)
    r_hdu = fits.ImageHDU(data + 1, fits.Header(dict(header, FILTER="r")))
    got = model_images({"g": path, "r": r_hdu}, ["g", "r"], allow_missing=False)
    assert list(got) == ["g", "r"] and all(isinstance(im, CCDData) for im in got.values())
    np.testing.assert_array_equal(got["g"].data, data)
    np.testing.assert_array_equal(got["r"].data, data + 1)
    listed = model_images([r_hdu, str(path)], ["g", "r"], allow_missing=False)
    assert list(listed) == ["g", "r"]
    np.testing.assert_array_equal(listed["g"].data, data)
    single = model_images(path, ["u", "g"], allow_missing=True)  # one image: its FILTER
    assert list(single) == ["g"]
    with pytest.raises(ValueError, match=r"images\[1\] cannot be mapped to a band: its FILTER "
                                         r"keyword is 'G', which names none of the model's "
                                         r"bands \['u', 'r'\]"):
        model_images([r_hdu, path], ["u", "r"], allow_missing=True)
    with pytest.raises(FileNotFoundError, match="the image file does not exist"):
        model_images({"g": tmp_path / "none.fits"}, ["g"], allow_missing=False)
