import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std, sigma_clip
from astropy.table import MaskedColumn, QTable, Table
from photutils.aperture import CircularAperture, aperture_photometry

from astro_starglx.features import (
    FEATURE_NAMES,
    SourceInputs,
    estimate_background_noise,
    extract_inputs,
    features_from_table,
    get_zeropoint,
    image_noise,
    measure_features,
)
from astro_starglx.flags import ClassFlag

PIXEL_SCALE = 0.074
ZP = 30.0
SIZE = 25
IMAG, IRAD, ICONC = FEATURE_NAMES.index("mag"), FEATURE_NAMES.index("radius"), 2


def moffat(shape, x, y, flux, fwhm=0.17 / PIXEL_SCALE, beta=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    return flux * (beta - 1.0) / (np.pi * alpha**2) * (1.0 + r2 / alpha**2) ** -beta


def sersic(shape, x, y, flux, r_e=0.3 / PIXEL_SCALE, n=1.0, q=0.6, theta=0.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dx, dy = xx - x, yy - y
    u_ = dx * np.cos(theta) + dy * np.sin(theta)
    v_ = -dx * np.sin(theta) + dy * np.cos(theta)
    r = np.sqrt(u_**2 + (v_ / q) ** 2)
    b_n = 2.0 * n - 1.0 / 3.0
    profile = np.exp(-b_n * ((r / r_e) ** (1.0 / n) - 1.0))
    # total flux of the analytic profile (2 pi q r_e^2 n e^b Gamma(2n) / b^2n), n = 1
    total = 2.0 * np.pi * q * r_e**2 * np.exp(b_n) / b_n**2
    return flux * profile / total


def make_field(rng, kinds, mags, *, shape=(160, 224), spacing=32, noise=1.0, sky=0.0):
    """A noisy field with one source per grid cell; returns data, x, y."""
    ny, nx = shape
    cells = [(cx, cy) for cy in range(spacing // 2, ny, spacing)
             for cx in range(spacing // 2, nx, spacing)]
    if len(cells) < len(kinds):
        raise RuntimeError("field too small for the sources")
    data = np.full(shape, sky, dtype=np.float64)
    x = np.empty(len(kinds))
    y = np.empty(len(kinds))
    for i, (kind, mag) in enumerate(zip(kinds, mags)):
        x[i] = cells[i][0] + rng.uniform(-0.5, 0.5)
        y[i] = cells[i][1] + rng.uniform(-0.5, 0.5)
        flux = 10 ** (-0.4 * (mag - ZP))
        data += (moffat if kind == "star" else sersic)(shape, x[i], y[i], flux)
    data += rng.normal(0.0, noise, shape)
    return data.astype(np.float32), x, y


def ccd(data, *, zp=ZP, **kwargs):
    return CCDData(data, unit="adu", meta={"MAGZERO": zp}, **kwargs)


# --------------------------------------------------------------------------
# measure_features


def test_feature_names():
    assert FEATURE_NAMES == ("mag", "mag_err", "concentration", "radius", "ellipticity")


def test_stars_are_smaller_and_less_concentrated_than_galaxies():
    rng = np.random.default_rng(0)
    kinds = ["star", "galaxy"] * 15
    mags = rng.uniform(19.0, 22.0, len(kinds))
    data, x, y = make_field(rng, kinds, mags)
    out = extract_inputs({"r": ccd(data)}, {"r": x}, {"r": y}, bands=["r"], size=SIZE,
                         pixel_scale=PIXEL_SCALE)
    feats = out.features[:, 0]
    star = np.array(kinds) == "star"
    assert np.all(np.isfinite(feats))
    assert out.flags.tolist() == [0] * len(kinds)
    assert feats[star, IRAD].max() < feats[~star, IRAD].min()
    assert feats[star, ICONC].max() < feats[~star, ICONC].min()
    # a Moffat (beta 3, FWHM 0.17") star: weighted radius ~0.09"
    assert 0.06 < np.median(feats[star, IRAD]) < 0.11
    # the galaxies are elongated (q = 0.6), the stars round
    assert np.median(feats[~star, 4]) > 3 * np.median(feats[star, 4])
    # magnitudes track the injected ones (aperture magnitudes: a little fainter)
    assert np.all(np.abs(feats[star, IMAG] - mags[star] - 0.05) < 0.1)


def sub_pixel_stars(rng, n, flux=2e5):
    offsets = np.column_stack([rng.uniform(11.5, 12.5, n), rng.uniform(11.5, 12.5, n)])
    stamps = np.array([moffat((SIZE, SIZE), ox, oy, flux) for ox, oy in offsets])
    return stamps, offsets


def photutils_mag(stamp, offset, radius_arcsec):
    aperture = CircularAperture(offset, r=radius_arcsec / PIXEL_SCALE)
    flux = aperture_photometry(stamp, aperture, method="exact")["aperture_sum"][0]
    return ZP - 2.5 * np.log10(flux)


def test_magnitude_matches_photutils_aperture_photometry():
    rng = np.random.default_rng(1)
    stamps, offsets = sub_pixel_stars(rng, 40)
    feats = measure_features(stamps, 1e-3, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    ref = np.array([photutils_mag(s, o, 0.30) for s, o in zip(stamps, offsets)])
    # 1e-4 relative in flux is 1.086e-4 mag
    np.testing.assert_allclose(feats[:, IMAG], ref, rtol=0, atol=1.0857e-4)
    # concentration: the apertures sit on a 1/20-pixel grid of positions,
    # which moves the 2-pixel aperture's flux by up to ~2e-3 mag
    conc = np.array([photutils_mag(s, o, 0.15) - photutils_mag(s, o, 0.45)
                     for s, o in zip(stamps, offsets)])
    np.testing.assert_allclose(feats[:, ICONC], conc, rtol=0, atol=5e-3)


def test_exact_on_the_sub_pixel_grid():
    rng = np.random.default_rng(2)
    stamps, offsets = sub_pixel_stars(rng, 10)
    offsets = np.round(offsets * 20) / 20
    stamps = np.array([moffat((SIZE, SIZE), ox, oy, 2e5) for ox, oy in offsets])
    feats = measure_features(stamps, 1e-3, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    for radius, column in ((0.30, feats[:, IMAG]),):
        ref = np.array([photutils_mag(s, o, radius) for s, o in zip(stamps, offsets)])
        np.testing.assert_allclose(column, ref, rtol=0, atol=2e-5)
    conc = np.array([photutils_mag(s, o, 0.15) - photutils_mag(s, o, 0.45)
                     for s, o in zip(stamps, offsets)])
    np.testing.assert_allclose(feats[:, ICONC], conc, rtol=0, atol=2e-5)


def test_bright_point_source_recovers_injected_magnitude():
    # Gaussian PSF, sigma 1 pixel: the 0.30" (4.05 pixel) aperture holds
    # 1 - exp(-r^2 / 2 sigma^2) = 99.97 % of the light; correcting for it
    # recovers the injected magnitude.
    yy, xx = np.mgrid[:SIZE, :SIZE]
    ox, oy = 12.2, 11.9
    mag_true = 20.0
    flux = 10 ** (-0.4 * (mag_true - ZP))
    stamp = flux * np.exp(-0.5 * ((xx - ox) ** 2 + (yy - oy) ** 2)) / (2 * np.pi)
    feats = measure_features(stamp[None], 1.0, zeropoint=ZP, offsets=[[ox, oy]],
                             pixel_scale=PIXEL_SCALE)
    radius = 0.30 / PIXEL_SCALE
    aperture_correction = -2.5 * np.log10(1 - np.exp(-0.5 * radius**2))
    assert abs(feats[0, IMAG] - aperture_correction - mag_true) < 0.05
    assert abs(feats[0, IMAG] - aperture_correction - mag_true) < 1e-3
    # error: 1.0857 / signal-to-noise
    weights = CircularAperture((ox, oy), radius).to_mask(method="exact").data
    snr = flux / np.sqrt((weights**2).sum())
    np.testing.assert_allclose(feats[0, 1], 1.0857 / snr, rtol=1e-3)
    # Gaussian-weighted radius of a sigma = 1 pixel source: s sw / sqrt(s^2 + sw^2)
    sw = 0.25 / PIXEL_SCALE
    np.testing.assert_allclose(feats[0, IRAD], sw / np.sqrt(1 + sw**2) * PIXEL_SCALE, rtol=2e-3)
    assert feats[0, 4] < 1e-3


def test_asinh_magnitude_finite_for_faint_and_negative_flux():
    stamps = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    stamps[1, 12, 12] = -5.0
    stamps[2, 12, 12] = 1e6
    feats = measure_features(stamps, 1.0, zeropoint=ZP, offsets=[[12.0, 12.0]] * 3,
                             pixel_scale=PIXEL_SCALE)
    assert np.all(np.isfinite(feats[:, :3]))
    assert feats[1, IMAG] > feats[0, IMAG] > feats[2, IMAG]
    # no positive weighted flux: shapes are not measurable
    assert np.all(np.isnan(feats[:2, 3:]))


def test_missing_pixels_are_mirrored():
    rng = np.random.default_rng(3)
    stamps, offsets = sub_pixel_stars(rng, 2)
    clean = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    holed = stamps.copy()
    holed[0, 12, 16] = np.nan  # its mirror about the source has data
    holed[1, 10:15, 10:15] = np.nan  # the core and its mirror: not measurable
    copy = holed.copy()
    feats = measure_features(holed, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    np.testing.assert_array_equal(holed, copy)  # not mutated
    assert np.all(np.isfinite(feats[0]))
    np.testing.assert_allclose(feats[0, IMAG], clean[0, IMAG], atol=0.01)
    assert np.all(np.isnan(feats[1]))


def test_unmeasurable_positions():
    stamps = np.ones((4, SIZE, SIZE), dtype=np.float32)
    offsets = [[np.nan, 12.0], [40.0, 12.0], [12.0, -3.0], [1.0, 12.0]]
    feats = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    assert np.all(np.isnan(feats[:3]))
    # at the stamp edge, the apertures reach past it: no magnitudes
    assert np.all(np.isnan(feats[3, :3]))


def test_non_positive_noise_gives_nan_magnitudes():
    rng = np.random.default_rng(4)
    stamps, offsets = sub_pixel_stars(rng, 2)
    feats = measure_features(stamps, [0.0, np.nan], zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    assert np.all(np.isnan(feats[:, :3]))
    assert np.all(np.isfinite(feats[:, 3:]))


def test_small_stamps_cap_the_apertures():
    rng = np.random.default_rng(5)
    offsets = np.column_stack([rng.uniform(3.5, 4.5, 5), rng.uniform(3.5, 4.5, 5)])
    stamps = np.array([moffat((9, 9), ox, oy, 1e4) for ox, oy in offsets])
    feats = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    assert feats.shape == (5, 5)
    assert np.all(np.isfinite(feats))


def test_pixel_scale_quantity():
    rng = np.random.default_rng(6)
    stamps, offsets = sub_pixel_stars(rng, 3)
    plain = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    for scale in (PIXEL_SCALE * u.arcsec, PIXEL_SCALE * u.arcsec / u.pix,
                  PIXEL_SCALE / 3600 * u.deg / u.pix):
        q = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets, pixel_scale=scale)
        np.testing.assert_allclose(q, plain, rtol=1e-6)


def test_measure_features_empty():
    feats = measure_features(np.zeros((0, SIZE, SIZE)), [], zeropoint=ZP,
                             offsets=np.zeros((0, 2)), pixel_scale=PIXEL_SCALE)
    assert feats.shape == (0, len(FEATURE_NAMES)) and feats.dtype == np.float32


def test_measure_features_errors():
    stamps = np.zeros((2, SIZE, SIZE))
    good = dict(zeropoint=ZP, offsets=[[12, 12]] * 2, pixel_scale=PIXEL_SCALE)
    with pytest.raises(ValueError, match=r"stamps must have shape \(N, H, W\)"):
        measure_features(stamps[0], 1.0, **good)
    with pytest.raises(ValueError, match=r"offsets must have shape \(2, 2\)"):
        measure_features(stamps, 1.0, **{**good, "offsets": [[12, 12]]})
    with pytest.raises(ValueError, match=r"noise must be a scalar or have shape \(2,\)"):
        measure_features(stamps, [1.0, 1.0, 1.0], **good)
    with pytest.raises(ValueError, match="zeropoint must be a finite AB magnitude"):
        measure_features(stamps, 1.0, **{**good, "zeropoint": np.nan})
    for scale in (0.0, -1.0, "fast", 3 * u.kg):
        with pytest.raises(ValueError, match="pixel_scale must be a positive number"):
            measure_features(stamps, 1.0, **{**good, "pixel_scale": scale})
    with pytest.raises(ValueError, match="at least 2 x 2 pixels"):
        measure_features(np.zeros((1, 1, 1)), 1.0, zeropoint=ZP, offsets=[[0, 0]],
                         pixel_scale=PIXEL_SCALE)


# --------------------------------------------------------------------------
# background and noise


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


def test_image_noise_respects_mask_and_rejects_empty():
    rng = np.random.default_rng(11)
    data = rng.normal(0, 1.0, (300, 300))
    data[:150] = rng.normal(0, 10.0, (150, 300))
    mask = np.zeros(data.shape, dtype=bool)
    mask[:150] = True
    assert abs(image_noise(CCDData(data, unit="adu", mask=mask)) - 1.0) < 0.05
    with pytest.raises(ValueError, match="at least 16 are needed"):
        image_noise(CCDData(np.full((10, 10), np.nan), unit="adu"))


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


def test_get_zeropoint_errors():
    image = CCDData(np.zeros((3, 3)), unit="adu")
    with pytest.raises(ValueError, match=r"magnitude features need one.*zeropoints=\{'g': value\}"
                                         r".*MAGZERO"):
        get_zeropoint(image, "g")
    with pytest.raises(ValueError, match="must be a finite number"):
        get_zeropoint(image, "g", {"g": np.nan})
    with pytest.raises(ValueError, match="header keyword MAGZERO .* must be a finite number"):
        get_zeropoint(CCDData(np.zeros((3, 3)), unit="adu", meta={"MAGZERO": "n/a"}), "g")
    with pytest.raises(TypeError, match="zeropoints must be a mapping"):
        get_zeropoint(image, "g", 25.0)


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


# --------------------------------------------------------------------------
# features_from_table

COLUMN_MAP = {"mag": "mag_{band}", "mag_err": "magerr_{band}", "concentration": "conc_{band}",
              "radius": "rad_{band}", "ellipticity": "ell_{band}"}


def catalog(bands=("g", "r")):
    table = Table()
    for i, band in enumerate(bands):
        for j, template in enumerate(COLUMN_MAP.values()):
            table[template.format(band=band)] = np.arange(3) + 10 * i + 100 * j
    return table


def test_features_from_table():
    table = catalog()
    table["mag_r"] = MaskedColumn([1.0, 2.0, 3.0], mask=[False, True, False])
    table["ell_g"] = [0.1, np.inf, 0.3]
    feats = features_from_table(table, bands=["g", "r"], column_map=COLUMN_MAP)
    assert feats.shape == (3, 2, 5) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[:, 0, 1], [100, 101, 102])
    np.testing.assert_array_equal(feats[:, 1, 0], [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(feats[:, 0, 4], np.array([0.1, np.nan, 0.3], np.float32))
    assert isinstance(table["mag_r"], MaskedColumn) and table["mag_r"].mask[1]


def test_features_from_table_quantities():
    table = QTable(catalog())
    table["rad_g"] = [0.1, 0.2, 0.3] * u.arcsec
    feats = features_from_table(table, bands=["g", "r"], column_map=COLUMN_MAP)
    np.testing.assert_allclose(feats[:, 0, 3], [0.1, 0.2, 0.3])


def test_features_from_table_errors():
    table = catalog()
    with pytest.raises(KeyError, match=r"column 'mag_i' \(feature 'mag', band 'i'\).*"
                                       r"available columns: mag_g"):
        features_from_table(table, bands=["g", "i"], column_map=COLUMN_MAP)
    partial = {k: v for k, v in COLUMN_MAP.items() if k != "radius"}
    with pytest.raises(ValueError, match=r"missing \['radius'\]"):
        features_from_table(table, bands=["g"], column_map=partial)
    with pytest.raises(ValueError, match=r"unknown \['size'\]"):
        features_from_table(table, bands=["g"], column_map={**COLUMN_MAP, "size": "s"})
    with pytest.raises(TypeError, match="column_map must be a mapping"):
        features_from_table(table, bands=["g"], column_map=["mag_{band}"])
    table["mag_g"] = ["a", "b", "c"]
    with pytest.raises(ValueError, match="column 'mag_g' must be numeric"):
        features_from_table(table, bands=["g"], column_map=COLUMN_MAP)


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


def test_infinite_pixels_are_missing_data():
    rng = np.random.default_rng(21)
    stamps, offsets = sub_pixel_stars(rng, 1)
    holed = stamps.copy()
    holed[0, 12, 16] = np.inf
    clean = measure_features(stamps, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    feats = measure_features(holed, 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    np.testing.assert_allclose(feats, clean, atol=0.01)
