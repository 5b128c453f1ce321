"""Tests of astro_starglx.psf on synthetic images drawn in code."""

import json
import logging
import math

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance, NDData, StdDevUncertainty
from scipy.ndimage import uniform_filter
from scipy.special import j1

from astro_starglx.psf import (
    PSF_HEADER_KEYWORDS,
    PSFEstimate,
    header_disagreement,
    measure_psf,
    psf_from_argument,
    psf_from_header,
    resolve_psf,
)

SCALE = 0.074  # arcsec per pixel
OVERSAMPLE = 5  # sub-pixels per pixel side when drawing (pixel integration)


def gaussian(fwhm):
    return lambda r2: np.exp(-4.0 * math.log(2.0) * r2 / fwhm**2)


def moffat(fwhm, beta=3.0):
    c = 2.0 ** (1.0 / beta) - 1.0
    return lambda r2: (1.0 + 4.0 * c * r2 / fwhm**2) ** -beta


def airy(fwhm):
    # (2 J1(x) / x)^2 has its half maximum at x = 1.61634.
    k = 2.0 * 1.6163399 / fwhm

    def profile(r2):
        x = np.maximum(k * np.sqrt(r2), 1e-9)
        return (2.0 * j1(x) / x) ** 2

    return profile


def effective_fwhm(profile, half=12, os=21):
    """FWHM (pixels) of ``profile`` convolved with the pixel, along the x axis."""
    t = np.arange(-half * os, half * os + 1) / os
    fine = profile(t[None, :] ** 2 + t[:, None] ** 2)
    row = uniform_filter(fine, size=os, mode="constant")[half * os, half * os:]
    k = int(np.argmax(row < 0.5 * row[0]))
    return 2.0 * np.interp(0.5 * row[0], row[k - 1:k + 1][::-1], t[half * os:][k - 1:k + 1][::-1])


def draw(shape, x, y, flux, profiles, *, half=12):
    """Pixel-integrated sources: profile r2 -> value, summed over sub-pixels."""
    image = np.zeros(shape)
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    d = np.arange(-half, half + 1)
    for xi, yi, fi, prof in zip(x, y, flux, profiles):
        ix, iy = int(round(xi)), int(round(yi))
        gx = (ix + d[:, None] + sub[None, :]).ravel() - xi
        gy = (iy + d[:, None] + sub[None, :]).ravel() - yi
        fine = prof(gx[None, :] ** 2 + gy[:, None] ** 2)
        n = d.size
        pix = fine.reshape(n, OVERSAMPLE, n, OVERSAMPLE).sum(axis=(1, 3))
        # sources lie >= half + 1 pixels from the edges
        image[iy - half:iy + half + 1, ix - half:ix + half + 1] += fi * pix / pix.sum()
    return image


def make_field(family, fwhm, *, n_stars=40, n_galaxies=30, shape=(256, 256), seed=0,
               gradient=0.0, noise=1.0, sky=10.0):
    """Stars of one PSF (FWHM may vary with x), larger galaxies, sky and noise."""
    rng = np.random.default_rng(seed)
    n = n_stars + n_galaxies
    x = rng.uniform(14, shape[1] - 15, n)
    y = rng.uniform(14, shape[0] - 15, n)
    flux = 10 ** rng.uniform(3.3, 4.5, n)
    u_ = 2.0 * x / (shape[1] - 1) - 1.0
    widths = fwhm * (1.0 + gradient * u_)
    widths[n_stars:] *= rng.uniform(1.6, 3.0, n_galaxies)
    maker = {"gaussian": gaussian, "moffat": moffat, "airy": airy}[family]
    profiles = [maker(w) if k < n_stars else moffat(w, 1.5) for k, w in enumerate(widths)]
    image = draw(shape, x, y, flux, profiles) + sky + rng.normal(0, noise, shape)
    return image, x, y


@pytest.mark.parametrize("family", ["gaussian", "moffat", "airy"])
@pytest.mark.parametrize("fwhm", [1.6, 3.0])
def test_measure_psf_families(family, fwhm):
    maker = {"gaussian": gaussian, "moffat": moffat, "airy": airy}[family]
    true = effective_fwhm(maker(fwhm)) * SCALE
    image, x, y = make_field(family, fwhm, seed=int(10 * fwhm))
    est = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.15, sigma=1.0,
                      band="r")
    assert est.source == "measured" and not est.fell_back
    assert est.band == "r" and est.plane is None
    assert 15 <= est.n_stars <= 40  # stars only (isolated, off the edges)
    assert est.fwhm == pytest.approx(true, rel=0.03)
    assert est.at(10.0, 20.0) == est.fwhm
    # the profile's shape: Moffat wings (beta 3: gamma 1/3 before the pixel), a
    # Gaussian, an Airy core lighter-shouldered than a Gaussian
    low, high = {"gaussian": (-0.05, 0.05), "moffat": (0.2, 0.4), "airy": (-0.3, -0.08)}[family]
    assert low < est.gamma < high


def test_measure_psf_noise_from_uncertainty_and_ring():
    image, x, y = make_field("moffat", 2.5, seed=3, noise=2.0)
    true = effective_fwhm(moffat(2.5)) * SCALE
    std = np.full(image.shape, 2.0)
    for sigma in (None, 2.0, std, StdDevUncertainty(std), InverseVariance(1.0 / std**2)):
        est = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.15, sigma=sigma)
        assert est.fwhm == pytest.approx(true, rel=0.03)


def test_measure_psf_gradient_gives_plane():
    image, x, y = make_field("gaussian", 2.4, n_stars=150, n_galaxies=20, shape=(512, 512),
                             seed=5, gradient=0.15)
    est = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0)
    assert est.plane is not None and est.shape == (512, 512)
    a, b, c = est.plane
    assert b / a == pytest.approx(0.15, abs=0.04)
    assert abs(c / a) < 0.03
    assert est.at(511.0, 256.0) > est.fwhm > est.at(0.0, 256.0)
    # spatial=False keeps one value
    flat = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0,
                       spatial=False)
    assert flat.plane is None and flat.fwhm == pytest.approx(est.fwhm, rel=0.05)


def test_measure_psf_no_gradient_no_plane():
    image, x, y = make_field("gaussian", 2.4, n_stars=150, n_galaxies=20, shape=(512, 512),
                             seed=6)
    est = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0)
    assert est.plane is None and est.n_stars >= 100


def test_measure_psf_too_few_stars_falls_back(caplog):
    image, x, y = make_field("gaussian", 2.5, n_stars=4, n_galaxies=30, seed=7)
    with caplog.at_level(logging.INFO, logger="astro_starglx.psf"):
        est = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.2, band="g")
    assert est.source == "nominal" and est.fell_back and est.fwhm == 0.2
    assert est.n_stars < 8
    assert "min_stars" in caplog.text
    # no sources at all, or all off the image
    est = measure_psf(image, [], [], pixel_scale=SCALE, nominal_fwhm=0.2)
    assert est.fell_back
    est = measure_psf(image, [-50.0, 900.0], [10.0, np.nan], pixel_scale=SCALE,
                      nominal_fwhm=0.2)
    assert est.fell_back


def test_measure_psf_mask_and_saturation_exclude_stars():
    image, x, y = make_field("gaussian", 2.5, seed=8)
    full = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :128] = True
    half = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0, mask=mask)
    assert half.n_stars < full.n_stars
    assert half.fwhm == pytest.approx(full.fwhm, rel=0.03)
    low = np.percentile(image, 99.9)
    saturated = measure_psf(image, x, y, pixel_scale=SCALE, nominal_fwhm=0.18, sigma=1.0,
                            saturation=low)
    assert saturated.n_stars < full.n_stars
    # non-finite pixels on stars are bad pixels too
    holed = image.copy()
    holed[np.rint(y).astype(int), np.rint(x).astype(int)] = np.nan
    assert measure_psf(holed, x, y, pixel_scale=SCALE, nominal_fwhm=0.18).fell_back


def test_measure_psf_input_errors():
    image = np.zeros((64, 64))
    kw = {"pixel_scale": SCALE, "nominal_fwhm": 0.15}
    with pytest.raises(ValueError, match="x and y must be 1-D arrays of the same length"):
        measure_psf(image, [1.0, 2.0], [1.0], **kw)
    with pytest.raises(ValueError, match="data must be a 2-D numeric image"):
        measure_psf(np.zeros(5), [1.0], [1.0], **kw)
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        measure_psf(image, [1.0], [1.0], mask=np.zeros((3, 3), bool), **kw)
    with pytest.raises(ValueError, match="sigma must be a scalar or an array"):
        measure_psf(image, [1.0], [1.0], sigma=np.ones(3), **kw)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        measure_psf(image, [1.0], [1.0], sigma=-1.0, **kw)
    with pytest.raises(ValueError, match="min_stars must be an integer >= 3"):
        measure_psf(image, [1.0], [1.0], min_stars=1, **kw)
    with pytest.raises(ValueError, match="nominal_fwhm must be a finite number > 0"):
        measure_psf(image, [1.0], [1.0], pixel_scale=SCALE, nominal_fwhm=-1)
    with pytest.raises(ValueError, match="pixel_scale must be a finite number > 0"):
        measure_psf(image, [1.0], [1.0], pixel_scale=np.nan, nominal_fwhm=0.15)


# ----------------------------------------------------------------------------------
# argument


def test_psf_from_argument_numbers_and_quantities():
    assert psf_from_argument(0.15, pixel_scale=SCALE).fwhm == 0.15
    assert psf_from_argument(np.float32(0.25), pixel_scale=SCALE).fwhm == pytest.approx(0.25)
    assert psf_from_argument(150 * u.mas, pixel_scale=SCALE).fwhm == pytest.approx(0.15)
    est = psf_from_argument(2.0 * u.pix, band="r", pixel_scale=SCALE)
    assert est.fwhm == pytest.approx(2 * SCALE) and est.source == "argument" and est.band == "r"


@pytest.mark.parametrize("profile", [gaussian(2.0), moffat(2.5, 2.5), airy(1.8)])
def test_psf_from_argument_images(profile):
    true = effective_fwhm(profile)
    image = draw((25, 25), [12.3], [11.8], [1.0], [profile])
    est = psf_from_argument(image, pixel_scale=SCALE)
    assert est.fwhm == pytest.approx(true * SCALE, rel=0.02)
    gamma = est.gamma
    assert -0.5 <= gamma <= 0.9
    # an ImagePSF-like object, 3x oversampled: the effective PSF on a finer grid
    from photutils.psf import ImagePSF

    t = (np.arange(45) - 22) / 3.0
    fine = profile(t[None, :] ** 2 + t[:, None] ** 2)
    epsf = uniform_filter(fine, size=3, mode="constant")
    est = psf_from_argument(ImagePSF(epsf, oversampling=3), pixel_scale=SCALE)
    assert est.fwhm == pytest.approx(true * SCALE, rel=0.02)
    assert "ImagePSF" in est.detail
    assert est.gamma == pytest.approx(gamma, abs=0.05)


def test_psf_from_argument_images_give_the_profile_shape():
    """Moffat wings > 0 > an Airy core; a Gaussian ~0; a FWHM alone says nothing."""
    gammas = [psf_from_argument(draw((25, 25), [12.3], [11.8], [1.0], [profile]),
                                pixel_scale=SCALE).gamma
              for profile in (airy(1.8), gaussian(2.0), moffat(2.5, 4.0), moffat(2.5, 2.5))]
    assert gammas == sorted(gammas)
    assert gammas[0] < -0.08 and abs(gammas[1]) < 0.03 and gammas[3] > 0.3
    assert psf_from_argument(0.15, pixel_scale=SCALE).gamma is None


@pytest.mark.parametrize("value, error, match", [
    (-0.1, ValueError, r"psf\['r'\] must be a finite number > 0"),
    (np.nan, ValueError, r"psf\['r'\] must be a finite number > 0"),
    (0.0, ValueError, "pass the FWHM in arcsec"),
    ("0.15", TypeError, r"psf\['r'\] must be a number, a Quantity or a PSF image, got str"),
    (True, TypeError, "got bool"),
    (3 * u.m, ValueError, r"has unit .*expected an angle or pixels"),
    (-2 * u.pix, ValueError, "must be a finite number > 0"),
    (np.ones((3, 3, 3)), ValueError, "must be a 2-D PSF image of at least 3 x 3 pixels"),
    (np.ones(5), ValueError, "must be a 2-D PSF image"),
    (np.full((5, 5), np.nan), ValueError, "finite pixels with a positive peak"),
    (-np.ones((5, 5)), ValueError, "finite pixels with a positive peak"),
])
def test_psf_from_argument_errors(value, error, match):
    with pytest.raises(error, match=match):
        psf_from_argument(value, band="r", pixel_scale=SCALE)


# ----------------------------------------------------------------------------------
# header


def test_psf_from_header_order_and_units(caplog):
    assert [k for k, _ in PSF_HEADER_KEYWORDS] == ["PSFFWHM", "PSF_FWHM", "SEEING", "FWHM"]
    header = fits.Header()
    assert psf_from_header(header, pixel_scale=SCALE) is None
    header["FWHM"] = 2.5  # pixels by default
    est = psf_from_header(header, pixel_scale=SCALE, band="i")
    assert est.fwhm == pytest.approx(2.5 * SCALE) and est.detail == "FWHM [pixel]"
    header["FWHM"] = (0.2, "[arcsec] median FWHM")  # the comment's unit wins
    assert psf_from_header(header, pixel_scale=SCALE).fwhm == pytest.approx(0.2)
    header["SEEING"] = (3.0, "[pix] seeing FWHM")
    assert psf_from_header(header, pixel_scale=SCALE).fwhm == pytest.approx(3 * SCALE)
    header["PSF_FWHM"] = 0.17
    assert psf_from_header(header, pixel_scale=SCALE).fwhm == pytest.approx(0.17)
    header["PSFFWHM"] = (0.14, "[arcsec] PSF FWHM (with pixel)")
    est = psf_from_header(header, pixel_scale=SCALE)
    assert est.fwhm == pytest.approx(0.14) and est.source == "header"
    # unusable values and unknown units are skipped, with a log message
    header["PSFFWHM"] = (-1.0, "[arcsec]")
    header["PSF_FWHM"] = (0.3, "[deg]")
    with caplog.at_level(logging.WARNING, logger="astro_starglx.psf"):
        assert psf_from_header(header, pixel_scale=SCALE).detail == "SEEING [pix]"
    assert "PSFFWHM" in caplog.text and "PSF_FWHM" in caplog.text
    # a plain dict has no comments: default units
    assert psf_from_header({"FWHM": 2.0}, pixel_scale=SCALE).fwhm == pytest.approx(2 * SCALE)
    assert psf_from_header({"SEEING": "bad"}, pixel_scale=SCALE) is None
    assert psf_from_header(None, pixel_scale=SCALE) is None


# ----------------------------------------------------------------------------------
# resolve_psf


@pytest.fixture(scope="module")
def field():
    image, x, y = make_field("moffat", 2.2, seed=11)
    return image, x, y, effective_fwhm(moffat(2.2)) * SCALE


def test_resolve_psf_order(field):
    image, x, y, true = field
    header = fits.Header({"PIXSCALE": SCALE})
    with_header = header.copy()
    with_header["PSFFWHM"] = (1.1 * true, "[arcsec]")  # within HEADER_TOLERANCE
    images = {
        "g": CCDData(image, unit="electron/s", meta=header,
                     uncertainty=StdDevUncertainty(np.ones(image.shape))),
        "r": CCDData(image, unit="electron/s", meta=with_header),
        "i": NDData(image, meta=with_header),
    }
    positions = {band: (x, y) for band in images}
    out = resolve_psf(images, positions, psf={"i": 0.12}, nominal_fwhm=0.15)
    assert list(out) == ["g", "r", "i"]
    assert out["g"].source == "measured" and out["g"].fwhm == pytest.approx(true, rel=0.03)
    assert out["r"].source == "header" and out["r"].fwhm == 1.1 * true
    assert out["r"].header_fwhm is None
    # the header gives the width; the stars the profile's shape
    assert out["r"].gamma == pytest.approx(out["g"].gamma, abs=0.01) and out["g"].gamma > 0.1
    assert out["i"].source == "argument" and out["i"].fwhm == 0.12
    assert out["i"].gamma is None
    assert header_disagreement(out) is None
    # one value for all bands overrides headers and measurement
    out = resolve_psf(images, positions, psf=0.2 * u.arcsec, nominal_fwhm=0.15)
    assert {e.source for e in out.values()} == {"argument"}
    # too few stars: nominal, flagged
    few = {"g": CCDData(np.random.default_rng(1).normal(0, 1, (64, 64)), unit="adu",
                        meta=header)}
    out = resolve_psf(few, {"g": ([30.0], [30.0])}, nominal_fwhm={"g": 0.16})
    assert out["g"].fell_back and out["g"].fwhm == 0.16 and out["g"].gamma is None
    assert json.loads(json.dumps({b: e.to_dict() for b, e in out.items()}))["g"]["fell_back"]


@pytest.mark.parametrize("factor", [0.7, 1.3, 3.0])
def test_resolve_psf_does_not_use_a_header_that_disagrees_with_the_stars(field, factor):
    """A header FWHM > 20 % off the stars' (a seeing monitor's, or another unit) is not used."""
    image, x, y, true = field
    header = fits.Header({"PIXSCALE": SCALE, "SEEING": factor * true})
    images = {"r": CCDData(image, unit="electron/s", meta=header)}
    out = resolve_psf(images, {"r": (x, y)}, nominal_fwhm=0.15)
    est = out["r"]
    assert est.source == "measured" and est.fwhm == pytest.approx(true, rel=0.03)
    assert est.header_fwhm == pytest.approx(factor * true)
    assert "SEEING" in est.detail and "not used" in est.detail
    record = json.loads(json.dumps(est.to_dict()))
    assert record["header_fwhm"] == pytest.approx(factor * true)
    message = header_disagreement(out)
    assert message.startswith("The header's PSF FWHM differs by more than 20%")
    assert f"r {factor * true:.3f} against {est.fwhm:.3f}" in message
    # without the check, or without positions to measure, the header is used as it is
    for kwargs in ({"check_header": False}, {}):
        positions = {"r": (x, y)} if kwargs else {}
        est = resolve_psf(images, positions, nominal_fwhm=0.15, **kwargs)["r"]
        assert est.source == "header" and est.fwhm == pytest.approx(factor * true)
        assert est.header_fwhm is None
    # too few stars to check: the header is used
    few = {"r": CCDData(np.random.default_rng(1).normal(0, 1, (64, 64)), unit="adu",
                        meta=header)}
    est = resolve_psf(few, {"r": ([30.0], [30.0])}, nominal_fwhm=0.15)["r"]
    assert est.source == "header" and not est.fell_back
    with pytest.raises(ValueError, match="header_fwhm must be"):
        PSFEstimate(0.15, "measured", header_fwhm=-1.0)
    with pytest.raises(ValueError, match="check_header must be True or False"):
        resolve_psf(images, {"r": (x, y)}, nominal_fwhm=0.15, check_header="no")


def test_resolve_psf_pixel_scale_from_wcs(field):
    from astropy.wcs import WCS

    image, x, y, true = field
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-SCALE / 3600.0, SCALE / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    images = {"z": CCDData(image, unit="adu", wcs=wcs, meta={"FWHM": 2.0})}
    out = resolve_psf(images, {}, nominal_fwhm=0.15)
    assert out["z"].fwhm == pytest.approx(2.0 * SCALE)


def test_resolve_psf_errors(field):
    image, x, y, _ = field
    images = {"r": CCDData(image, unit="adu")}
    with pytest.raises(TypeError, match="images must be a non-empty mapping"):
        resolve_psf(CCDData(image, unit="adu"), {}, nominal_fwhm=0.15, pixel_scale=SCALE)
    with pytest.raises(ValueError, match=r"psf has bands \['x'\] that are not in images"):
        resolve_psf(images, {}, psf={"x": 0.1}, nominal_fwhm=0.15, pixel_scale=SCALE)
    with pytest.raises(ValueError, match="no pixel scale; pass pixel_scale="):
        resolve_psf(images, {"r": (x, y)}, nominal_fwhm=0.15)
    with pytest.raises(ValueError, match="positions has no entry for band 'r'"):
        resolve_psf(images, {}, nominal_fwhm=0.15, pixel_scale=SCALE)
    with pytest.raises(ValueError, match=r"psf\['r'\] must be a finite number > 0"):
        resolve_psf(images, {}, psf={"r": -1.0}, nominal_fwhm=0.15, pixel_scale=SCALE)
    with pytest.raises(ValueError, match=r"nominal_fwhm\['r'\] must be a finite number > 0.0"):
        resolve_psf(images, {"r": (x, y)}, nominal_fwhm={"g": 0.1}, pixel_scale=SCALE)
    with pytest.raises(TypeError, match=r"images\['r'\] must be an NDData"):
        resolve_psf({"r": image}, {}, nominal_fwhm=0.15, pixel_scale=SCALE)


# ----------------------------------------------------------------------------------
# PSFEstimate


def test_estimate_at_and_to_dict():
    est = PSFEstimate(np.float64(0.15), "measured", n_stars=np.int64(40),
                      plane=(np.float64(0.15), np.float64(0.015), 0.0), shape=(101, 201),
                      band="r", scatter=np.float64(0.004), detail="40 stars",
                      gamma=np.float64(0.3))
    assert est.at(100.0, 50.0) == pytest.approx(0.15)
    assert est.at(200.0, 50.0) == pytest.approx(0.165)
    assert est.at(1e6, 50.0) == pytest.approx(0.165)  # clipped to the edge
    np.testing.assert_allclose(est.at(np.array([0.0, 200.0]), 50.0), [0.135, 0.165])
    record = json.loads(json.dumps(est.to_dict()))
    assert record["plane"] == pytest.approx([0.15, 0.015, 0.0])
    assert record["source"] == "measured" and record["n_stars"] == 40
    assert record["gamma"] == 0.3 and type(record["gamma"]) is float
    const = PSFEstimate(0.2, "nominal", fell_back=True)
    assert const.at([1.0, 2.0], 3.0).tolist() == [0.2, 0.2]
    assert json.loads(json.dumps(const.to_dict()))["plane"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"fwhm": -1.0, "source": "header"}, "fwhm must be a finite number > 0"),
    ({"fwhm": 0.1, "source": "guess"}, "source must be one of"),
    ({"fwhm": 0.1, "source": "measured", "plane": (0.1, 0.0, 0.0)}, "needs the image shape"),
    ({"fwhm": 0.1, "source": "measured", "gamma": 1.5}, r"gamma must be .*<= 0.9"),
    ({"fwhm": 0.1, "source": "measured", "gamma": np.nan}, "gamma must be a finite number"),
])
def test_estimate_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSFEstimate(**kwargs)


def test_measure_psf_candidate_pool(monkeypatch):
    """The statistics of step (a) for the brightest 4 x max_candidates only: same PSF."""
    from astro_starglx import psf as psf_module

    image, x, y = make_field("moffat", 2.2, n_stars=60, n_galaxies=40, seed=4)
    sigma = np.ones(image.shape)
    x, y = np.append(x, [np.nan, -50.0]), np.append(y, [5.0, 20.0])  # skipped as before
    kwargs = dict(pixel_scale=SCALE, nominal_fwhm=0.15, sigma=sigma, max_candidates=12)
    pooled = measure_psf(image, x, y, **kwargs)
    monkeypatch.setattr(psf_module, "_POOL", 10**9)
    everything = measure_psf(image, x, y, **kwargs)
    assert pooled.source == everything.source == "measured"
    assert pooled == everything
