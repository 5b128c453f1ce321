"""Tests of the per-band feature measurement and of features read from table columns."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, QTable, Table
from photutils.aperture import CircularAperture, aperture_photometry
from synthetic_sources import PIXEL_SCALE, SIZE, ZP, ccd, make_field, moffat

from astro_starglx.features import (
    FEATURE_NAMES,
    PSF_FEATURE_NAMES,
    features_from_table,
    measure_band,
    measure_features,
    point_source_features,
    point_source_model_features,
    psf_features,
)
from astro_starglx.psf import profile_stamps, psf_from_argument
from astro_starglx.inputs import extract_inputs

IMAG, IRAD, ICONC = FEATURE_NAMES.index("mag"), FEATURE_NAMES.index("radius"), 2


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


@pytest.mark.parametrize("n_centred", [0, 6])
def test_sources_off_the_central_pixel_match_photutils(n_centred):
    # Stamps cut around a source have it at the central pixel (a contiguous
    # kernel table); elsewhere the apertures come from the canvas windows.
    # Both in one call give the same magnitudes as photutils.
    rng = np.random.default_rng(5)
    centred, centred_offsets = sub_pixel_stars(rng, n_centred)
    off = np.column_stack([rng.uniform(8.5, 15.5, 12), rng.uniform(8.5, 15.5, 12)])
    assert (np.floor(off + 0.5) != SIZE // 2).any(axis=1).sum() >= 8
    offsets = np.concatenate([centred_offsets, off])
    stamps = np.concatenate([centred.reshape(-1, SIZE, SIZE),
                             [moffat((SIZE, SIZE), ox, oy, 2e5) for ox, oy in off]])
    feats = measure_features(stamps, 1e-3, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    ref = np.array([photutils_mag(s, o, 0.30) for s, o in zip(stamps, offsets)])
    np.testing.assert_allclose(feats[:, IMAG], ref, rtol=0, atol=1.0857e-4)
    alone = [measure_features(s[None], 1e-3, zeropoint=ZP, offsets=o[None],
                              pixel_scale=PIXEL_SCALE)[0] for s, o in zip(stamps, offsets)]
    np.testing.assert_array_equal(feats, np.array(alone))


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


def test_measure_band_is_the_core():
    rng = np.random.default_rng(22)
    stamps, offsets = sub_pixel_stars(rng, 5)
    public = measure_features(stamps, 2.0, zeropoint=ZP, offsets=offsets,
                              pixel_scale=PIXEL_SCALE)
    core = measure_band(stamps.astype(np.float32), np.full(5, 2.0), zeropoint=ZP,
                        offsets=offsets, pixel_scale=PIXEL_SCALE)
    np.testing.assert_array_equal(core, public)

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


def test_features_from_table_feature_names():
    """A model's own feature list (e.g. with PSF features), in its order."""
    table = catalog()
    table["psf_g"] = [0.15, 0.16, 0.17]
    table["psf_r"] = [0.18, 0.19, 0.2]
    column_map = {"radius": "rad_{band}", "psf_fwhm": "psf_{band}", "mag": "mag_{band}"}
    feats = features_from_table(table, bands=["g", "r"], column_map=column_map,
                                feature_names=["psf_fwhm", "mag", "radius"])
    assert feats.shape == (3, 2, 3)
    np.testing.assert_allclose(feats[:, 1, 0], [0.18, 0.19, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(feats[:, 0, 1], table["mag_g"])
    np.testing.assert_array_equal(feats[:, 1, 2], table["rad_r"])
    with pytest.raises(ValueError, match=r"must map exactly the features \['psf_fwhm', 'mag', "
                                         r"'radius', 'ellipticity'\]; missing \['ellipticity'\]"):
        features_from_table(table, bands=["g"], column_map=column_map,
                            feature_names=["psf_fwhm", "mag", "radius", "ellipticity"])


def test_features_from_table_errors():
    table = catalog()
    with pytest.raises(ValueError, match=r"column 'mag_i' \(feature 'mag', band 'i'\).*"
                                         r"available columns: mag_g.*Fix column_map\['mag'\]"):
        features_from_table(table, bands=["g", "i"], column_map=COLUMN_MAP)
    with pytest.raises(TypeError, match=r"column_map\['mag'\] must be a column-name template "
                                        r"\(str\), got 3"):
        features_from_table(table, bands=["g"], column_map={**COLUMN_MAP, "mag": 3})
    with pytest.raises(ValueError, match=r"column_map\['mag'\] = 'mag_\{filter\}' is not a "
                                         r"valid template.*\{band\}"):
        features_from_table(table, bands=["g"], column_map={**COLUMN_MAP, "mag": "mag_{filter}"})
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


# --------------------------------------------------------------------------
# point-source reference and PSF features


def gaussian_star(fwhm, *, flux=1e6, size=SIZE, ox=None, oy=None):
    """A noiseless pixel-integrated circular Gaussian (the effective PSF) at (ox, oy)."""
    from scipy.special import erf

    sigma = fwhm / PIXEL_SCALE / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    centre = (size - 1) / 2.0
    ox = centre if ox is None else ox
    oy = centre if oy is None else oy
    edges = np.arange(size + 1) - 0.5
    line_x = np.diff(0.5 * (1.0 + erf((edges - ox) / (np.sqrt(2.0) * sigma))))
    line_y = np.diff(0.5 * (1.0 + erf((edges - oy) / (np.sqrt(2.0) * sigma))))
    return (flux * line_y[:, None] * line_x[None, :]).astype(np.float32)


def test_psf_feature_names():
    assert PSF_FEATURE_NAMES == ("psf_fwhm", "radius_excess", "concentration_excess",
                                 "psf_gamma", "radius_model_excess",
                                 "concentration_model_excess")
    assert not set(PSF_FEATURE_NAMES) & set(FEATURE_NAMES)


def test_point_source_features_grow_with_fwhm():
    fwhm = np.linspace(0.06, 0.6, 60)
    radius, concentration = point_source_features(fwhm, pixel_scale=PIXEL_SCALE, size=SIZE)
    assert radius.shape == concentration.shape == fwhm.shape
    assert np.all(np.diff(radius) > 0)
    assert np.all(np.diff(concentration) > 0)
    # the fixed weight bounds the radius: s sw / sqrt(s^2 + sw^2) < sw = 0.25"
    assert np.all((radius > 0) & (radius < 0.25))
    scalar = point_source_features(0.17, pixel_scale=PIXEL_SCALE, size=SIZE)
    assert np.ndim(scalar[0]) == 0


@pytest.mark.parametrize("fwhm", [0.1, 0.137, 0.17, 0.23, 0.31])
def test_point_source_features_match_the_measurement(fwhm):
    """The table is what measure_features gives a centred Gaussian star (FWHM off its grid)."""
    centre = (SIZE - 1) / 2.0
    feats = measure_features(gaussian_star(fwhm)[None], 1.0, zeropoint=ZP,
                             offsets=[[centre, centre]], pixel_scale=PIXEL_SCALE)
    radius, concentration = point_source_features(fwhm, pixel_scale=PIXEL_SCALE, size=SIZE)
    assert abs(feats[0, IRAD] - radius) < 1e-3  # arcsec
    assert abs(feats[0, ICONC] - concentration) < 0.01  # mag


def test_point_source_features_depend_on_pixel_scale_and_size():
    a = point_source_features(0.17, pixel_scale=PIXEL_SCALE, size=SIZE)
    b = point_source_features(0.17, pixel_scale=0.1, size=SIZE)
    c = point_source_features(0.17, pixel_scale=PIXEL_SCALE, size=9)
    assert a[0] != b[0] and a[1] != b[1]
    assert a[1] != c[1]  # the 9-pixel stamp caps the large aperture


def test_psf_features_shape_and_nan_propagation():
    rng = np.random.default_rng(30)
    feats = rng.uniform(0.05, 0.5, (4, len(FEATURE_NAMES))).astype(np.float32)
    feats[1, IRAD] = np.nan
    feats[2, ICONC] = np.nan
    fwhm = np.array([0.15, 0.17, 0.2, np.nan])
    out = psf_features(feats, fwhm, pixel_scale=PIXEL_SCALE, size=SIZE)
    assert out.shape == (4, len(PSF_FEATURE_NAMES)) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:3, 0], fwhm[:3].astype(np.float32))
    radius, concentration = point_source_features(fwhm[:3], pixel_scale=PIXEL_SCALE,
                                                  size=SIZE)
    np.testing.assert_allclose(out[[0, 2], 1], feats[[0, 2], IRAD] - radius[[0, 2]],
                               rtol=1e-6)
    np.testing.assert_allclose(out[[0, 1], 2], feats[[0, 1], ICONC] - concentration[[0, 1]],
                               rtol=1e-6)
    assert np.isnan(out[1, 1]) and np.isfinite(out[1, 2])
    assert np.isnan(out[2, 2]) and np.isfinite(out[2, 1])
    assert np.all(np.isnan(out[3]))  # no PSF, no PSF features
    # no profile shape: psf_gamma NaN, the model excesses against a Gaussian
    assert np.all(np.isnan(out[:, 3]))
    radius_g, concentration_g = point_source_model_features(fwhm[:3], 0.0,
                                                            pixel_scale=PIXEL_SCALE, size=SIZE)
    np.testing.assert_allclose(out[[0, 2], 4], feats[[0, 2], IRAD] - radius_g[[0, 2]],
                               rtol=1e-6)
    np.testing.assert_allclose(out[[0, 1], 5], feats[[0, 1], ICONC] - concentration_g[[0, 1]],
                               rtol=1e-6)
    shaped = psf_features(feats, fwhm, gamma=0.4, pixel_scale=PIXEL_SCALE, size=SIZE)
    np.testing.assert_array_equal(shaped[:, :3], out[:, :3])
    np.testing.assert_allclose(shaped[:3, 3], 0.4)
    assert np.all(shaped[[0, 2], 4] < out[[0, 2], 4])  # wings: a larger point source
    assert np.all(np.isnan(shaped[3]))
    empty = psf_features(np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0),
                         pixel_scale=PIXEL_SCALE, size=SIZE)
    assert empty.shape == (0, len(PSF_FEATURE_NAMES))


@pytest.mark.parametrize("fwhm", [0.12, 0.17, 0.26])
def test_excesses_separate_point_sources_from_galaxies(fwhm):
    """~0 for a star of the PSF's FWHM (whatever it is), > 0 for an extended Gaussian."""
    rng = np.random.default_rng(31)
    offsets = np.column_stack([rng.uniform(11.6, 12.4, 2), rng.uniform(11.6, 12.4, 2)])
    star = gaussian_star(fwhm, ox=offsets[0, 0], oy=offsets[0, 1])
    # a round Gaussian galaxy of FWHM 0.3" seen through the PSF (widths add in quadrature)
    galaxy = gaussian_star(np.hypot(fwhm, 0.3), ox=offsets[1, 0], oy=offsets[1, 1])
    feats = measure_features(np.stack([star, galaxy]), 1.0, zeropoint=ZP, offsets=offsets,
                             pixel_scale=PIXEL_SCALE)
    out = psf_features(feats, np.full(2, fwhm), pixel_scale=PIXEL_SCALE, size=SIZE)
    r_ex, c_ex = out[:, 1], out[:, 2]
    assert abs(r_ex[0]) < 2e-3 and abs(c_ex[0]) < 0.02
    assert r_ex[1] > 0.02 and c_ex[1] > 0.2


@pytest.mark.parametrize("gamma", [-0.37, -0.23, 0.05, 0.37, 0.66])
@pytest.mark.parametrize("fwhm", [0.11, 0.163, 0.27])
def test_point_source_model_features_match_the_measurement(gamma, fwhm):
    """The table, off its grid in both FWHM and shape, is what measure_features gives."""
    centre = (SIZE - 1) / 2.0
    star = profile_stamps([fwhm / PIXEL_SCALE], gamma, size=SIZE)
    feats = measure_features((1e5 * star / star.sum()).astype(np.float32), 1.0, zeropoint=ZP,
                             offsets=[[centre, centre]], pixel_scale=PIXEL_SCALE)
    radius, concentration = point_source_model_features(fwhm, gamma, pixel_scale=PIXEL_SCALE,
                                                        size=SIZE)
    assert abs(feats[0, IRAD] - radius) < 3e-4  # arcsec
    assert abs(feats[0, ICONC] - concentration) < 4e-3  # mag


def test_point_source_model_features_follow_the_shape():
    fwhm = np.array([0.12, 0.17, 0.25])
    gaussian = point_source_model_features(fwhm, None, pixel_scale=PIXEL_SCALE, size=SIZE)
    np.testing.assert_array_equal(
        gaussian, point_source_model_features(fwhm, 0.0, pixel_scale=PIXEL_SCALE, size=SIZE))
    rows = [point_source_model_features(fwhm, g, pixel_scale=PIXEL_SCALE, size=SIZE)
            for g in (-0.5, -0.2, 0.0, 0.3, 0.6, 0.9)]
    for field in (0, 1):  # radius, concentration grow with the wings at every FWHM
        assert np.all(np.diff([row[field] for row in rows], axis=0) > 0)
    # shapes outside the fitted range take the range's edge
    np.testing.assert_array_equal(
        point_source_model_features(fwhm, 2.0, pixel_scale=PIXEL_SCALE, size=SIZE),
        point_source_model_features(fwhm, 0.9, pixel_scale=PIXEL_SCALE, size=SIZE))


@pytest.mark.parametrize("beta", [2.5, 4.0])
def test_model_excesses_of_a_moffat_star_are_near_zero(beta):
    """
    A star under Moffat wings looks extended against a Gaussian of its FWHM
    (concentration_excess > 0), not against the profile fitted to it.
    """
    shape, x, y = (SIZE, SIZE), 12.2, 11.7
    star = moffat(shape, x, y, 1e5, fwhm=2.4, beta=beta)
    est = psf_from_argument(moffat((41, 41), 20.0, 20.0, 1.0, fwhm=2.4, beta=beta),
                            pixel_scale=PIXEL_SCALE)
    feats = measure_features(star[None].astype(np.float32), 1.0, zeropoint=ZP,
                             offsets=[[x, y]], pixel_scale=PIXEL_SCALE)
    out = psf_features(feats, np.array([est.fwhm]), gamma=est.gamma, pixel_scale=PIXEL_SCALE,
                       size=SIZE)[0]
    names = PSF_FEATURE_NAMES.index
    assert out[names("concentration_excess")] > 0.1
    assert abs(out[names("concentration_model_excess")]) < 0.03
    assert abs(out[names("radius_model_excess")]) < 2e-3
    assert abs(out[names("radius_model_excess")]) < abs(out[names("radius_excess")])
