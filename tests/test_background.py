"""Tests of the local background and noise estimates."""

import numpy as np
import pytest
from astropy.nddata import CCDData, InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.stats import mad_std, sigma_clip
from synthetic_sources import PIXEL_SCALE, SIZE, ccd, make_field

from astro_starglx.background import (GAUSSIAN_NEA, background_noise, depth_offset,
                                      estimate_background_noise, image_noise,
                                      point_source_depth, point_source_depths)
from astro_starglx.features import FEATURE_NAMES
from astro_starglx.inputs import extract_inputs

IMAG = FEATURE_NAMES.index("mag")


def test_background_is_the_sky_level():
    rng = np.random.default_rng(7)
    kinds = ["star", "galaxy"] * 4
    data, x, y = make_field(rng, kinds, [19.0] * 8, sky=100.0, noise=2.0)
    out = extract_inputs({"r": ccd(data)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    corners = out.stamps[:, 0][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert abs(np.median(corners)) < 1.0
    no_sky, _, _ = make_field(np.random.default_rng(7), kinds, [19.0] * 8, noise=2.0)
    ref = extract_inputs({"r": ccd(no_sky)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    np.testing.assert_allclose(out.features[:, 0, IMAG], ref.features[:, 0, IMAG], atol=0.02)


def test_clipped_border_statistics_match_astropy():
    # the hand-written row statistics against astropy.stats on clean rows
    rng = np.random.default_rng(8)
    stamps = rng.normal(5.0, 2.0, (20, 11, 11))
    stamps[:, 0, :3] = 60.0  # a neighbour in the border
    background, noise = estimate_background_noise(stamps)
    border = np.ones((11, 11), dtype=bool)
    border[1:-1, 1:-1] = False
    for i in range(20):
        kept = sigma_clip(stamps[i][border], sigma=4.0, maxiters=3, stdfunc="mad_std",
                          masked=False)
        assert kept.size == 37  # the neighbour is gone
        np.testing.assert_allclose(background[i], np.median(kept), rtol=1e-5)
        np.testing.assert_allclose(noise[i], mad_std(kept), rtol=1e-5)


def test_uncertainty_sigma_reads_every_kind_against_the_pixels():
    """uncertainty_sigma: StdDev, Variance, InverseVariance alike; units converted; masked."""
    import astropy.units as u

    from astro_starglx.background import uncertainty_sigma

    rng = np.random.default_rng(3)
    sigma = rng.uniform(1.5, 2.5, (300, 300))
    data = rng.normal(0.0, sigma)
    expected = np.median(sigma)
    for unc in (StdDevUncertainty(sigma), VarianceUncertainty(sigma**2),
                InverseVariance(1.0 / sigma**2)):
        image = CCDData(data, unit="adu", uncertainty=unc)
        assert uncertainty_sigma(image) == pytest.approx(expected, rel=1e-9)
    # measured and stated agree on an image whose uncertainty describes it
    image = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(sigma))
    assert uncertainty_sigma(image) / image_noise(image) == pytest.approx(1.0, abs=0.1)
    # a weight map wrapped as a standard deviation: off by the square of sigma and more
    wrong = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(1.0 / sigma**2))
    assert uncertainty_sigma(wrong) / image_noise(wrong) < 0.2
    # the uncertainty's unit is converted to the image's
    milli = CCDData(data * 1000.0, unit="mJy",
                    uncertainty=StdDevUncertainty(sigma, unit=u.Jy))
    assert uncertainty_sigma(milli) == pytest.approx(1000.0 * expected, rel=1e-9)
    # masked pixels and non-positive values are left out; none: NaN
    half = sigma.copy()
    half[:, :150] = 100.0
    mask = np.zeros(sigma.shape, bool)
    mask[:, :150] = True
    masked = CCDData(data, unit="adu", uncertainty=StdDevUncertainty(half), mask=mask)
    assert uncertainty_sigma(masked) == pytest.approx(np.median(sigma[:, 150:]), rel=0.02)
    assert np.isnan(uncertainty_sigma(CCDData(data, unit="adu")))
    assert np.isnan(uncertainty_sigma(
        CCDData(data, unit="adu", uncertainty=StdDevUncertainty(np.zeros_like(sigma)))))


@pytest.mark.parametrize("seed", range(12))
def test_image_noise_is_astropys_clipped_mad_std_to_the_bit(seed):
    # image_noise's clip is hand-written (20x faster): it must give exactly
    # mad_std(sigma_clip(...)) of the subsample, also with outliers on one
    # side, ties (rounded values) and a MAD of 0 (half the pixels equal).
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(4, 700)), int(rng.integers(4, 700)))
    data = rng.normal(rng.normal(0.0, 5.0), rng.uniform(0.01, 10.0), shape)
    n_out = int(rng.integers(0, data.size // 5 + 1))
    data.flat[rng.choice(data.size, n_out, replace=False)] += (
        rng.exponential(rng.uniform(1.0, 100.0), n_out) * rng.choice([1, 1, 1, -1], n_out))
    if seed % 3 == 1:
        data = np.round(data, 1)
    if seed % 4 == 2:
        data.flat[: data.size // 2 + 1] = 3.0
    mask = rng.random(shape) < 0.1
    step = max(1, int(np.ceil(np.sqrt(data.size / 2**18))))
    values = data[::step, ::step][~mask[::step, ::step]]
    expected = mad_std(sigma_clip(values, sigma=4.0, maxiters=10, stdfunc="mad_std",
                                  masked=False, axis=None))
    assert image_noise(CCDData(data, unit="adu", mask=mask)) == expected


def test_noise_from_uncertainty_and_from_mad_agree():
    rng = np.random.default_rng(9)
    sigma = 2.5
    assert abs(image_noise(ccd(rng.normal(0.0, sigma, (256, 256)))) / sigma - 1) < 0.02
    # with sources covering ~10 % of the pixels
    data, x, y = make_field(rng, ["star", "galaxy"] * 8, [21.0] * 16, noise=sigma,
                            shape=(256, 256), spacing=64)
    assert abs(image_noise(ccd(data)) / sigma - 1) < 0.05
    plain = extract_inputs({"r": ccd(data)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                           pixel_scale=PIXEL_SCALE)
    with_unc = extract_inputs(
        {"r": ccd(data, uncertainty=StdDevUncertainty(np.full(data.shape, sigma)))},
        {"r": x}, {"r": y}, bands=["r"], size=SIZE, pixel_scale=PIXEL_SCALE)
    np.testing.assert_allclose(with_unc.noise, sigma, rtol=1e-6)
    np.testing.assert_allclose(plain.noise, with_unc.noise, rtol=0.05)
    # the border MAD of each stamp (no image-level value given)
    cut = extract_inputs({"r": ccd(data)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE).stamps[:, 0]
    _, noise = estimate_background_noise(cut)
    assert abs(np.median(noise) / sigma - 1) < 0.05


def test_estimate_background_noise_options():
    rng = np.random.default_rng(10)
    stamps = rng.normal(3.0, 1.0, (4, 25, 25)).astype(np.float32)
    stamps[3] = np.nan
    sig = np.full(stamps.shape, 1.5, dtype=np.float32)
    sig[1, 0, :] = np.nan
    background, noise = estimate_background_noise(stamps, sig)
    np.testing.assert_allclose(noise[:3], 1.5)
    assert np.all(np.abs(background[:3] - 3.0) < 0.3)
    assert np.isnan(background[3])
    _, noise = estimate_background_noise(stamps, image_sigma=0.7)
    np.testing.assert_allclose(noise, 0.7)
    _, noise = estimate_background_noise(stamps, image_sigma=[1, 2, 3, 4])
    np.testing.assert_allclose(noise, [1, 2, 3, 4])
    _, noise = estimate_background_noise(stamps)
    assert np.isnan(noise[3]) and np.all(np.abs(noise[:3] - 1.0) < 0.25)
    with pytest.raises(ValueError, match="sigma_stamps must have the shape of stamps"):
        estimate_background_noise(stamps, sig[:2])
    with pytest.raises(ValueError, match=r"image_sigma must be a scalar or have shape \(4,\)"):
        estimate_background_noise(stamps, image_sigma=[1.0, 2.0])


def test_masked_border_ring_falls_back_to_whole_stamp():
    rng = np.random.default_rng(20)
    stamps = rng.normal(7.0, 1.0, (2, SIZE, SIZE)).astype(np.float32)
    stamps[:, :2, :] = np.nan
    stamps[:, -2:, :] = np.nan
    stamps[:, :, :2] = np.nan
    stamps[:, :, -2:] = np.nan
    stamps[1] = np.nan
    background, noise = estimate_background_noise(stamps)
    assert abs(background[0] - 7.0) < 0.3 and abs(noise[0] - 1.0) < 0.2
    assert np.isnan(background[1]) and np.isnan(noise[1])
    sigma = np.array([1.0, 1.0])
    background, noise = estimate_background_noise(stamps, image_sigma=sigma)
    assert abs(background[0] - 7.0) < 0.3
    np.testing.assert_array_equal(sigma, [1.0, 1.0])


def test_image_noise_respects_mask_and_rejects_empty():
    rng = np.random.default_rng(11)
    data = rng.normal(0, 1.0, (300, 300))
    data[:150] = rng.normal(0, 10.0, (150, 300))
    mask = np.zeros(data.shape, dtype=bool)
    mask[:150] = True
    assert abs(image_noise(CCDData(data, unit="adu", mask=mask)) - 1.0) < 0.05
    with pytest.raises(ValueError, match="at least 16 are needed"):
        image_noise(CCDData(np.full((10, 10), np.nan), unit="adu"))


def test_background_noise_is_the_core():
    rng = np.random.default_rng(23)
    stamps = rng.normal(2.0, 1.5, (6, 15, 15)).astype(np.float32)
    sig = np.full(stamps.shape, 1.5, dtype=np.float32)
    for sig_stamps, sigma in ((None, None), (sig, None), (None, 1.5)):
        public = estimate_background_noise(stamps, sig_stamps, image_sigma=sigma)
        core = background_noise(stamps, sig_stamps, None if sigma is None else np.full(6, sigma))
        for a, b in zip(core, public):
            np.testing.assert_array_equal(a, b)


def test_point_source_depth_formula_and_edges():
    rng = np.random.default_rng(3)
    data = rng.normal(0.0, 2.0, (300, 300))
    sigma = image_noise(data)
    assert sigma == pytest.approx(2.0, rel=0.02)
    depth = point_source_depth(data, fwhm=3.0, zeropoint=25.0)
    assert depth == pytest.approx(25.0 - 2.5 * np.log10(5 * sigma * np.sqrt(GAUSSIAN_NEA) * 3.0))
    # twice the noise or twice the PSF width: 0.75 mag shallower; S/N 10: 0.75 mag too
    shallower = pytest.approx(depth - 0.7526, abs=1e-3)
    assert point_source_depth(2 * data, fwhm=3.0, zeropoint=25.0) == shallower
    assert point_source_depth(data, fwhm=6.0, zeropoint=25.0) == shallower
    assert point_source_depth(data, fwhm=3.0, zeropoint=25.0, snr=10) == pytest.approx(
        depth - 0.7526, abs=1e-3)
    # Gaussian noise: 5 sigma PSF photometry of a Gaussian PSF, checked by simulation
    yy, xx = np.mgrid[:31, :31] - 15.0
    s = 3.0 / 2.3548
    psf = np.exp(-(xx**2 + yy**2) / (2 * s * s))
    psf /= psf.sum()
    flux = 10 ** (-0.4 * (depth - 25.0))
    fits = [np.sum(psf * (flux * psf + rng.normal(0, sigma, psf.shape))) / np.sum(psf**2)
            for _ in range(2000)]
    assert np.mean(fits) / np.std(fits) == pytest.approx(5.0, rel=0.05)
    assert np.isnan(point_source_depth(np.zeros((50, 50)), fwhm=2.0, zeropoint=25.0))
    assert np.isnan(point_source_depth(np.full((3, 3), 1.0), fwhm=2.0, zeropoint=25.0))
    with pytest.raises(ValueError, match="fwhm"):
        point_source_depth(data, fwhm=0.0, zeropoint=25.0)
    with pytest.raises(ValueError, match="zeropoint"):
        point_source_depth(data, fwhm=2.0, zeropoint=np.nan)


def test_point_source_depths_per_band():
    from astro_starglx.psf import PSFEstimate

    rng = np.random.default_rng(4)
    images = {b: CCDData(rng.normal(0, k + 1.0, (200, 200)), unit="electron/s")
              for k, b in enumerate("gri")}
    psf = {"g": PSFEstimate(fwhm=0.148, source="argument"),
           "r": PSFEstimate(fwhm=0.148, source="nominal", fell_back=True)}
    positions = {b: (np.array([10.0, 50.0]), np.array([20.0, 60.0])) for b in "gri"}
    depths = point_source_depths(images, psf, positions, pixel_scale=0.074,
                                 zeropoints={b: 25.0 for b in "gri"})
    # i has no PSF and r's fell back: only g, at a FWHM of 2 pixels
    assert list(depths) == ["g"]
    assert depths["g"] == pytest.approx(point_source_depth(images["g"], fwhm=2.0,
                                                           zeropoint=25.0), abs=1e-4)
    # the offset to a model's depth: over the bands measured (and in its depth) only
    offset, measured = depth_offset(images, psf, positions, depth={"g": 24.0, "i": 30.0},
                                    pixel_scale=0.074, zeropoints={b: 25.0 for b in "gri"})
    assert measured == depths and offset == pytest.approx(24.0 - depths["g"])
    assert depth_offset(images, psf, positions, depth={"r": 24.0}, pixel_scale=0.074,
                        zeropoints={b: 25.0 for b in "gri"}) == (None, {})
