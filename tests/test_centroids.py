"""Tests of astro_starglx.centroids: catalog positions refined on the images."""

import math

import numpy as np
import pytest
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.wcs import WCS

from astro_starglx.centroids import (
    MIN_REFERENCE_SOURCES,
    combine_shifts,
    refine_catalog_positions,
    windowed_centroids,
)

from synthetic_sources import PIXEL_SCALE, moffat

FWHM = 0.17  # arcsec
PSF_SIGMA = FWHM / 2.3548 / PIXEL_SCALE  # pixels


def _gaussian_stamps(rng, n, *, size=21, flux=2000.0, noise=1.0, sigma=PSF_SIGMA):
    yy, xx = np.mgrid[:size, :size]
    cx = (size - 1) / 2 + rng.uniform(-1.5, 1.5, n)
    cy = (size - 1) / 2 + rng.uniform(-1.5, 1.5, n)
    r2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
    stamps = flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)
    stamps = stamps + rng.normal(0.0, noise, stamps.shape)
    return stamps.astype(np.float32), cx, cy


def test_windowed_centroids_find_the_source_with_calibrated_errors():
    rng = np.random.default_rng(1)
    stamps, cx, cy = _gaussian_stamps(rng, 400, flux=600.0)
    start = np.full(400, 10.0)
    x, y, err, snr = windowed_centroids(stamps, np.ones(400), start, start,
                                        psf_sigma=PSF_SIGMA, schedule=(2.0, 1.5, 1, 1, 1))
    assert np.isfinite(x).all() and (snr > 10).all()
    pulls = np.concatenate([(x - cx) / err, (y - cy) / err])
    # unbiased, and the stated error is the scatter (SExtractor's ERRX2WIN)
    assert abs(np.mean(pulls)) < 0.15
    assert np.std(pulls) == pytest.approx(1.0, abs=0.2)


def test_windowed_centroids_of_empty_or_masked_stamps_are_nan():
    rng = np.random.default_rng(2)
    stamps = rng.normal(0.0, 1.0, (3, 21, 21)).astype(np.float32) - 5.0  # no positive flux
    stamps[1] = np.nan
    start = np.array([10.0, 10.0, np.nan])
    x, y, err, snr = windowed_centroids(stamps, np.ones(3), start, start, psf_sigma=1.0,
                                        schedule=(1.0,))
    assert np.isnan(x).all() and np.isnan(y).all() and np.isnan(err).all()
    assert np.isfinite(snr).all()


def test_combine_shifts_shrinks_by_the_catalog_scatter():
    rng = np.random.default_rng(3)
    n = 200
    true = rng.normal(0.0, 0.06, (n, 2))  # catalog errors, arcsec
    errors = np.where(np.arange(n) < 100, 0.002, 0.2)[:, None] * np.ones((n, 3))
    shifts = true[:, None, :] + rng.normal(0.0, 1.0, (n, 3, 2)) * errors[..., None]
    shift, tau = combine_shifts(shifts, errors, reference=np.arange(n) < 100)
    assert tau == pytest.approx(0.06, rel=0.25)
    # well-measured sources move by their shift; poorly measured ones less
    np.testing.assert_allclose(shift[:100], true[:100], atol=0.01)
    assert np.all(np.hypot(*shift[100:].T) < np.hypot(*true[100:].T) + 0.1)
    assert np.median(np.hypot(*shift[100:].T)) < 0.5 * np.median(np.hypot(*true[100:].T))


def test_combine_shifts_needs_references():
    shifts = np.full((MIN_REFERENCE_SOURCES, 2, 2), 0.1)
    errors = np.full((MIN_REFERENCE_SOURCES, 2), 0.001)
    reference = np.ones(MIN_REFERENCE_SOURCES, dtype=bool)
    reference[0] = False
    shift, tau = combine_shifts(shifts, errors, reference=reference)
    assert tau == 0.0 and not shift.any()


def _field(rng, n=60, *, shape=(300, 300), noise=1.0):
    """Stars of S/N ~ 30-1000 on a TAN grid; returns the image, the WCS and the truth."""
    x = rng.uniform(15, shape[1] - 15, n)
    y = rng.uniform(15, shape[0] - 15, n)
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    data = sum(moffat(shape, xi, yi, fi) for xi, yi, fi in zip(x, y, flux))
    data = data + rng.normal(0.0, noise, shape)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    image = CCDData(data.astype(np.float32), unit="adu", wcs=wcs,
                    uncertainty=StdDevUncertainty(np.full(shape, noise, np.float32)))
    return image, x, y, flux


def test_a_systematic_offset_is_found_and_removed_in_every_band():
    rng = np.random.default_rng(4)
    image, x, y, _ = _field(rng)
    images = {"g": image, "r": image}
    # the catalog is off by (+2.4, -1.6) pixels in g and (-2, 0) in r
    xs = {"g": x + 2.4, "r": x - 2.0}
    ys = {"g": y - 1.6, "r": y.copy()}
    before = {b: (xs[b].copy(), ys[b].copy()) for b in xs}
    nx, ny, report = refine_catalog_positions(images, xs, ys, psf_fwhm={"g": FWHM, "r": FWHM},
                                              pixel_scale=PIXEL_SCALE)
    for band in ("g", "r"):
        np.testing.assert_array_equal(xs[band], before[band][0])  # inputs kept
        np.testing.assert_array_equal(ys[band], before[band][1])
        assert np.median(np.abs(nx[band] - x)) < 0.05 and np.median(np.abs(ny[band] - y)) < 0.05
        assert report["n_reference"][band] >= MIN_REFERENCE_SOURCES
    # reported on the sky: east is -x here, so +2.4 px in x is 0.178" to the west
    assert report["offset_arcsec"]["g"] == pytest.approx([2.4 * PIXEL_SCALE, 1.6 * PIXEL_SCALE],
                                                         abs=0.01)
    assert report["offset_arcsec"]["r"] == pytest.approx([-2.0 * PIXEL_SCALE, 0.0], abs=0.01)


def test_exact_positions_stay_put_and_random_errors_are_removed():
    rng = np.random.default_rng(5)
    image, x, y, _ = _field(rng, n=80)
    fwhm = {"r": FWHM}
    nx, ny, report = refine_catalog_positions({"r": image}, {"r": x}, {"r": y}, psf_fwhm=fwhm,
                                              pixel_scale=PIXEL_SCALE)
    assert report["scatter_arcsec"] < 0.01
    moved = np.hypot(nx["r"] - x, ny["r"] - y)
    assert np.median(moved) < 0.02 and np.max(moved) < 0.25
    # catalog errors of 0.06" (0.8 pixel) per axis: removed to a small fraction
    ex, ey = rng.normal(0.0, 0.06 / PIXEL_SCALE, (2, x.size))
    nx, ny, report = refine_catalog_positions({"r": image}, {"r": x + ex}, {"r": y + ey},
                                              psf_fwhm=fwhm, pixel_scale=PIXEL_SCALE)
    assert report["scatter_arcsec"] == pytest.approx(0.06, rel=0.3)
    assert np.median(np.hypot(nx["r"] - x, ny["r"] - y)) < 0.1 * np.median(np.hypot(ex, ey))


def test_a_faint_source_is_not_pulled_onto_its_bright_neighbour():
    # A faint galaxy-like blob 0.4" (5.4 px) from a bright star, catalog
    # errors of 0.06" elsewhere: the faint source must not converge on the star.
    rng = np.random.default_rng(6)
    image, x, y, _ = _field(rng, n=60)
    shape = image.data.shape
    bright = (150.0, 150.0)
    faint = (155.4, 150.0)
    extra = moffat(shape, *bright, 3e5) + moffat(shape, *faint, 300.0, fwhm=4.0)
    image = CCDData(image.data + extra.astype(np.float32), unit=image.unit, wcs=image.wcs,
                    uncertainty=image.uncertainty)
    x = np.append(x, [bright[0], faint[0] + 0.3])
    y = np.append(y, [bright[1], faint[1] - 0.3])
    ex, ey = rng.normal(0.0, 0.06 / PIXEL_SCALE, (2, x.size - 2))
    x[:-2] += ex
    y[:-2] += ey
    nx, ny, _ = refine_catalog_positions({"r": image}, {"r": x}, {"r": y},
                                         psf_fwhm={"r": FWHM}, pixel_scale=PIXEL_SCALE)
    assert math.hypot(nx["r"][-1] - faint[0], ny["r"][-1] - faint[1]) < 1.0
    assert math.hypot(nx["r"][-2] - bright[0], ny["r"][-2] - bright[1]) < 0.2


def test_few_sources_and_missing_positions_are_left_alone():
    rng = np.random.default_rng(7)
    image, x, y, _ = _field(rng, n=3)
    x = np.append(x + 2.0, np.nan)
    y = np.append(y, np.nan)
    nx, ny, report = refine_catalog_positions({"r": image}, {"r": x}, {"r": y},
                                              psf_fwhm={"r": FWHM}, pixel_scale=PIXEL_SCALE)
    # too few references for an offset or a scatter: nothing moves
    np.testing.assert_array_equal(nx["r"], x)
    np.testing.assert_array_equal(ny["r"], y)
    assert report["offset_arcsec"]["r"] == [0.0, 0.0] and report["scatter_arcsec"] == 0.0
    assert report["n_moved"] == 0


@pytest.mark.parametrize("errors", [0.0, 0.8])
def test_the_result_does_not_depend_on_the_pixel_scale(errors):
    # The same pixels under a CSST-like WCS and an SDSS-like one (0.396"),
    # with the PSF's FWHM scaled alike: every threshold is in pixels, so the
    # refined pixel positions are the same (an exact catalog stays put).
    rng = np.random.default_rng(8)
    image, x, y, _ = _field(rng, n=80)
    ex, ey = rng.normal(0.0, errors, (2, x.size)) if errors else (0.0, 0.0)
    out = []
    for scale in (PIXEL_SCALE, 0.396):
        wcs = image.wcs.deepcopy()
        wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
        coarse = CCDData(image.data, unit=image.unit, wcs=wcs, uncertainty=image.uncertainty)
        out.append(refine_catalog_positions({"r": coarse}, {"r": x + ex}, {"r": y + ey},
                                            psf_fwhm={"r": FWHM * scale / PIXEL_SCALE},
                                            pixel_scale=scale))
    (x1, y1, r1), (x2, y2, r2) = out
    np.testing.assert_allclose(x1["r"], x2["r"], atol=1e-6)
    np.testing.assert_allclose(y1["r"], y2["r"], atol=1e-6)
    assert r1["n_moved"] == r2["n_moved"] and (r1["n_moved"] == 0) == (errors == 0.0)
