"""Tests of astro_starglx.simulate.inject (point sources added to simulated images)."""

import importlib.util

import numpy as np
import pytest
from astropy.nddata import CCDData

from astro_starglx.csst import CSST_BAND_INFO, CSST_BANDS, CSST_PIXEL_SCALE
from astro_starglx.simulate import band_model, inject_point_sources, simulate_field

HAS_GALSIM = importlib.util.find_spec("galsim") is not None
pytestmark = pytest.mark.skipif(not HAS_GALSIM, reason="needs galsim (the sim extra)")

SMALL = {"shape": (160, 192), "n_stars": 12, "n_galaxies": 18, "mag_range": (18.0, 25.0)}


@pytest.fixture(scope="module")
def field():
    return simulate_field(**SMALL, bands=("g", "r"), seed=42)


def test_inject_point_sources_adds_light_and_copies(field):
    images, truth = field
    before = {b: im.data.copy() for b, im in images.items()}
    ra, dec = images["r"].wcs.pixel_to_world_values([40.0], [50.0])
    out, table = inject_point_sources(images, ra, dec, 20.0, seed=1)
    for band in images:
        np.testing.assert_array_equal(images[band].data, before[band])
        assert out[band] is not images[band]
        x, y = table[f"x_{band}"][0], table[f"y_{band}"][0]
        ix, iy = int(round(x)), int(round(y))
        added = out[band].data[iy - 3:iy + 4, ix - 3:ix + 4].sum() - \
            before[band][iy - 3:iy + 4, ix - 3:ix + 4].sum()
        assert added == pytest.approx(table[f"flux_{band}"][0], rel=0.15)


def test_depth_matches_table_in_every_band():
    # Faint point sources injected at each band's table depth on an empty field,
    # measured with exact-overlap aperture photometry in the optimal aperture:
    # their measured S/N gives the 5-sigma depth, m5 = m + 2.5 log10(S/N / 5).
    from photutils.aperture import CircularAperture, aperture_photometry

    images, _ = simulate_field(shape=(280, 280), n_stars=0, n_galaxies=0, seed=3)
    grid = np.arange(14.0, 270.0, 14.0)
    gx, gy = np.meshgrid(grid, grid)
    rng = np.random.default_rng(4)
    gx = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    gy = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    ra, dec = images["r"].wcs.pixel_to_world_values(gx, gy)
    depths = {b: CSST_BAND_INFO[b].depth for b in CSST_BANDS}
    injected, table = inject_point_sources(images, ra, dec,
                                           {b: np.full(gx.size, d) for b, d in depths.items()},
                                           seed=5)
    for band, image in injected.items():
        model = band_model(band)
        radius = model.aperture_radius / CSST_PIXEL_SCALE
        apertures = CircularAperture(np.column_stack([table[f"x_{band}"], table[f"y_{band}"]]),
                                     radius)
        flux = np.asarray(aperture_photometry(image.data, apertures,
                                              method="exact")["aperture_sum"])
        snr = flux.mean() / flux.std(ddof=1)
        measured = depths[band] + 2.5 * np.log10(snr / 5.0)
        assert abs(measured - depths[band]) < 0.2, (band, measured)
        # The zero point: the mean measured flux is the aperture fraction of the
        # injected flux (the scatter of the mean is ~1 %).
        expected = table[f"flux_{band}"][0] * model.aperture_fraction
        assert flux.mean() == pytest.approx(expected, rel=0.06), band


def test_inject_errors(field):
    images, _ = field
    with pytest.raises(ValueError, match="images must be a non-empty mapping"):
        inject_point_sources(images["r"], [150.0], [2.0], 20.0)
    bare = CCDData(np.zeros((4, 4)), unit="electron/s")
    with pytest.raises(ValueError, match="lacks the header keywords"):
        inject_point_sources({"r": bare}, [150.0], [2.0], 20.0)
    with pytest.raises(ValueError, match="ra and dec"):
        inject_point_sources(images, [150.0, 150.0], [2.0], 20.0)
    with pytest.raises(ValueError, match="mag has no magnitudes for bands"):
        inject_point_sources(images, [150.0], [2.0], {"r": [20.0]})
    with pytest.raises(ValueError, match="mag must be a scalar"):
        inject_point_sources(images, [150.0], [2.0], [20.0, 21.0])
    odd = {"r": images["r"].copy()}
    odd["r"].meta["FILTER"] = "w"
    with pytest.raises(ValueError, match="unknown band names"):
        inject_point_sources(odd, [150.0], [2.0], 20.0)


def test_inject_point_sources_uses_the_field_psf():
    images, _ = simulate_field(shape=(64, 64), n_stars=0, n_galaxies=0, bands=("r",),
                               psf_model="moffat", psf_beta=2.5, seed=0)
    ra, dec = images["r"].wcs.pixel_to_world_values([31.7], [32.2])
    out, table = inject_point_sources(images, ra, dec, 18.0, seed=1)
    yy, xx = np.indices((64, 64))
    r = np.hypot(xx - table["x_r"][0], yy - table["y_r"][0])
    added = out["r"].data - images["r"].data
    # Moffat beta = 2.5 wings: about 3 % of the light beyond 5 pixels.
    assert added[r > 5].sum() / table["flux_r"][0] > 0.02


def test_inject_follows_the_psf_ellipticity():
    # A star injected into a field with an elongated PSF (header PSFELLIP,
    # PSFANGLE) is elongated as the field's own stars are: along x at angle 0.
    images, _ = simulate_field(shape=(48, 48), n_stars=0, n_galaxies=0, bands=("r",),
                               psf_model="gaussian", psf_scale=2.0, psf_ellipticity=0.3,
                               seed=0)
    ra, dec = images["r"].wcs.pixel_to_world_values([23.8], [24.1])
    out, table = inject_point_sources(images, ra, dec, 17.5, seed=1)
    added = (out["r"].data - images["r"].data).astype(float)
    yy, xx = np.indices(added.shape)
    dx, dy = xx - table["x_r"][0], yy - table["y_r"][0]
    near = np.hypot(dx, dy) < 7
    qxx, qyy = (added * dx**2)[near].sum(), (added * dy**2)[near].sum()
    assert (qxx - qyy) / (qxx + qyy) > 0.2


def test_inject_follows_the_psf_gradient():
    # The same star at the left and right edges of a field whose PSF is 80 %
    # wider at the right: its peak holds less of its light on the right.
    kwargs = {"shape": (32, 400), "n_stars": 0, "n_galaxies": 0, "bands": ("r",),
              "psf_model": "gaussian", "seed": 2}
    peaks = {}
    for gradient in (0.0, 0.8):
        images, _ = simulate_field(**kwargs, psf_gradient=gradient)
        ra, dec = images["r"].wcs.pixel_to_world_values([40.0, 360.0], [16.0, 16.0])
        out, table = inject_point_sources(images, ra, dec, 19.0, seed=3)
        added = out["r"].data - images["r"].data
        peaks[gradient] = [added[16, 40] / table["flux_r"][0],
                           added[16, 360] / table["flux_r"][0]]
    assert peaks[0.0][0] == pytest.approx(peaks[0.0][1], rel=0.05)
    assert peaks[0.8][0] > 1.5 * peaks[0.8][1]


def test_inject_into_images_at_another_zero_point():
    # Images in adu/s at zero point 30: the injected source has the same
    # magnitude, hence 10^(0.4 (30 - ZP)) times the image units, and the
    # result is the e-/s one scaled (same seed, same Poisson draws).
    kwargs = {"shape": (48, 48), "n_stars": 0, "n_galaxies": 0, "bands": ("r",), "seed": 6}
    plain, _ = simulate_field(**kwargs)
    scaled, _ = simulate_field(**kwargs, zeropoint=30.0)
    ra, dec = plain["r"].wcs.pixel_to_world_values([23.3], [24.1])
    out_plain, t_plain = inject_point_sources(plain, ra, dec, 19.0, seed=4)
    out_scaled, t_scaled = inject_point_sources(scaled, ra, dec, 19.0, seed=4)
    k = 10 ** (0.4 * (30.0 - plain["r"].meta["MAGZERO"]))
    assert t_scaled["flux_r"][0] == pytest.approx(k * t_plain["flux_r"][0])
    np.testing.assert_allclose(out_scaled["r"].data, k * out_plain["r"].data, rtol=1e-5,
                               atol=1e-5 * k)
