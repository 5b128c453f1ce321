"""Tests of astro_starglx.simulate (the CSST-like field simulator)."""

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, InverseVariance

from astro_starglx.csst import CSST_BAND_INFO, CSST_BANDS, CSST_PIXEL_SCALE
from astro_starglx.simulate import (
    SIM_STAR_FRACTION,
    band_model,
    csst_bandpass,
    inject_point_sources,
    simulate_field,
)

HAS_GALSIM = importlib.util.find_spec("galsim") is not None
requires_galsim = pytest.mark.skipif(not HAS_GALSIM, reason="needs galsim (the sim extra)")

SMALL = {"shape": (160, 192), "n_stars": 12, "n_galaxies": 18, "mag_range": (18.0, 25.0)}


@pytest.fixture(scope="module")
def field():
    return simulate_field(**SMALL, seed=42)


@pytest.fixture(scope="module")
def jittered():
    return simulate_field(**SMALL, bands=("g", "r", "i"), wcs_jitter=1.0,
                          rotation_jitter=0.5, seed=42)


@requires_galsim
def test_bands_wcs_and_headers(field):
    images, truth = field
    assert tuple(images) == CSST_BANDS
    for band, image in images.items():
        model = band_model(band)
        assert isinstance(image, CCDData)
        assert image.data.shape == SMALL["shape"]
        assert image.data.dtype == np.float32
        assert image.unit == u.electron / u.s
        assert image.wcs.has_celestial
        assert list(image.wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
        scales = [s.to_value(u.arcsec) for s in image.wcs.proj_plane_pixel_scales()]
        np.testing.assert_allclose(scales, CSST_PIXEL_SCALE, rtol=1e-6)
        assert isinstance(image.uncertainty, InverseVariance)
        assert np.all(image.uncertainty.array > 0)
        assert image.mask.dtype == bool and image.mask.shape == image.data.shape
        hdr = image.meta
        assert hdr["FILTER"] == band
        assert hdr["BUNIT"] == "electron/s"
        assert hdr["EXPTIME"] == CSST_BAND_INFO[band].total_exptime
        assert hdr["MAGZERO"] == pytest.approx(model.zeropoint)
        assert hdr["GAIN"] == 1.0 and hdr["RDNOISE"] == 5.0
        # The inverse variance is the background noise of the image.
        _, _, std = _clipped_stats(image.data)
        assert std == pytest.approx(1 / math.sqrt(image.uncertainty.array[0, 0]), rel=0.1)


def _clipped_stats(data):
    from astropy.stats import sigma_clipped_stats

    return sigma_clipped_stats(data, sigma=3.0, maxiters=5)


@requires_galsim
def test_truth_table(field):
    images, truth = field
    assert len(truth) == 30
    stars = truth["label"] == "star"
    assert stars.sum() == 12 and (truth["label"] == "galaxy").sum() == 18
    for band in CSST_BANDS:
        for name in (f"x_{band}", f"y_{band}", f"mag_{band}", f"flux_{band}"):
            assert name in truth.colnames
            assert np.all(np.isfinite(truth[name]))
    assert np.all((truth["mag_r"] >= 18.0) & (truth["mag_r"] <= 25.0))
    assert np.all(np.isnan(truth["redshift"][stars]))
    assert np.all(truth["redshift"][~stars] > 0)
    assert np.all(truth["hlr"][stars] == 0) and np.all(truth["hlr"][~stars] > 0)
    assert np.all(truth["teff"][stars] > 2000) and np.all(np.isnan(truth["teff"][~stars]))
    assert set(truth["sed"][~stars]) <= {"CWW_E", "CWW_Sbc", "CWW_Scd", "CWW_Im"}
    np.testing.assert_array_equal(truth["id"], np.arange(30))
    # Blackbody colours: cooler stars are redder, a one-parameter locus.
    order = np.argsort(truth["teff"][stars])
    g_r = np.asarray(truth["mag_g"] - truth["mag_r"])[stars][order]
    assert np.all(np.diff(g_r) < 0)


@requires_galsim
def test_deterministic_by_seed():
    kwargs = {"shape": (48, 56), "n_stars": 3, "n_galaxies": 3, "bands": ("g", "r")}
    im1, t1 = simulate_field(**kwargs, seed=5)
    im2, t2 = simulate_field(**kwargs, seed=5)
    im3, t3 = simulate_field(**kwargs, seed=6)
    for band in ("g", "r"):
        np.testing.assert_array_equal(im1[band].data, im2[band].data)
        np.testing.assert_array_equal(im1[band].mask, im2[band].mask)
        assert not np.array_equal(im1[band].data, im3[band].data)
    for name in t1.colnames:
        np.testing.assert_array_equal(t1[name], t2[name])
    assert not np.array_equal(t1["ra"], t3["ra"])


@requires_galsim
def test_counts_from_density():
    _, truth = simulate_field(shape=(200, 200), density=300.0, bands=("r",),
                              mag_range=(24.0, 26.0), seed=1)
    n_total = round(300.0 * (200 * CSST_PIXEL_SCALE / 60) ** 2)
    assert len(truth) == n_total
    assert (truth["label"] == "star").sum() == round(SIM_STAR_FRACTION * n_total)


@requires_galsim
def test_wcs_jitter_moves_pixels_not_sky(field, jittered):
    images, truth = jittered
    _, plain = field
    np.testing.assert_allclose(truth["ra"], plain["ra"])
    for band, image in images.items():
        # Each band's own WCS maps the sky position to the truth pixel position.
        x, y = image.wcs.world_to_pixel_values(truth["ra"], truth["dec"])
        np.testing.assert_allclose(x, truth[f"x_{band}"], atol=1e-6)
        np.testing.assert_allclose(y, truth[f"y_{band}"], atol=1e-6)
        # ... and differs from the aligned grid.
        shift = np.hypot(truth[f"x_{band}"] - plain[f"x_{band}"],
                         truth[f"y_{band}"] - plain[f"y_{band}"])
        assert np.median(shift) > 1.0
    assert np.median(np.abs(truth["x_g"] - truth["x_r"])
                     + np.abs(truth["y_g"] - truth["y_r"])) > 0.5


@requires_galsim
@pytest.mark.parametrize("which", ["field", "jittered"])
def test_truth_positions_land_on_sources(which, request):
    images, truth = request.getfixturevalue(which)
    n_checked = 0
    for band, image in images.items():
        data = image.data
        x, y = truth[f"x_{band}"], truth[f"y_{band}"]
        for k in range(len(truth)):
            ix, iy = int(round(x[k])), int(round(y[k]))
            d = np.hypot(x - x[k], y - y[k])
            d[k] = np.inf
            mag = truth[f"mag_{band}"]
            isolated = not np.any((d < 8) & (mag < mag[k] + 3))
            inside = 4 <= ix < data.shape[1] - 4 and 4 <= iy < data.shape[0] - 4
            snr = 5 * truth[f"flux_{band}"][k] / band_model(band).depth_flux
            # Bright and compact enough for the peak to stand out of the noise.
            compact = truth["hlr"][k] < 0.2 and snr > 100
            if not (isolated and inside and (truth["label"][k] == "star" and snr > 50
                                             or compact)):
                continue
            box = data[iy - 3:iy + 4, ix - 3:ix + 4]
            jy, jx = np.unravel_index(np.argmax(box), box.shape)
            # The brightest pixel near the source is at its truth position.
            assert math.hypot(ix - 3 + jx - x[k], iy - 3 + jy - y[k]) < 1.5, (band, k)
            if truth["label"][k] == "star":
                core = data[iy - 2:iy + 3, ix - 2:ix + 3].astype(float)
                gy, gx = np.mgrid[-2:3, -2:3]
                cx = ix + (core * gx).sum() / core.sum()
                cy = iy + (core * gy).sum() / core.sum()
                assert math.hypot(cx - x[k], cy - y[k]) < 0.35, (band, k)
            n_checked += 1
    assert n_checked >= 3 * len(images)


@requires_galsim
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


@requires_galsim
def test_band_models():
    models = [band_model(b) for b in CSST_BANDS]
    for band, model in zip(CSST_BANDS, models):
        assert model.r80 == pytest.approx(CSST_BAND_INFO[band].r80, abs=0.002)
        assert model.sky_rate > 0
        assert 0.4 < model.aperture_fraction < 0.8
        assert 0.05 < model.aperture_radius < 0.15
        assert model.aperture_npix < math.pi * (model.aperture_radius / model.pixel_scale) ** 2
    assert np.all(np.diff([m.fwhm for m in models]) > 0)
    assert np.all(np.diff([m.lam_over_diam for m in models]) > 0)
    bandpass = csst_bandpass("g")
    assert bandpass.blue_limit < 400 < 550 < bandpass.red_limit
    # 1 e-/s at the zero point: a flat f_nu source of AB magnitude ZP.
    import galsim

    sed = galsim.SED(lambda w: 1.0, wave_type="nm", flux_type="fnu")
    sed = sed.withMagnitude(models[2].zeropoint, bandpass)
    area = math.pi * 100.0**2
    assert sed.calculateFlux(bandpass) * area == pytest.approx(1.0, rel=1e-6)


@requires_galsim
def test_galaxy_population():
    from astro_starglx.simulate import _draw_population

    rng = np.random.default_rng(0)
    pop = _draw_population(rng, 300, 1500, (17.0, 26.0), 0.10, 0.35)
    gal = pop["label"] == "galaxy"
    mag, hlr = pop["mag_ref"], pop["hlr"]
    faint = gal & (mag > 24.5) & (mag < 25.5)
    assert 0.12 < np.median(hlr[faint]) < 0.25
    assert np.mean((hlr[faint] > 0.1) & (hlr[faint] < 0.2)) > 0.4
    bright = gal & (mag < 20)
    assert np.median(hlr[bright]) > 0.5
    # Galaxies dominate the faint end, stars the bright end.
    assert np.mean(gal[mag > 25]) > 0.9
    assert np.mean(gal[mag < 19]) < 0.5
    assert np.median(pop["redshift"][gal & (mag > 25)]) > np.median(
        pop["redshift"][gal & (mag < 21)])
    # The bulge and disk radii give the drawn composite half-light radius: half
    # of the (unit) flux of the round GalSim profile falls inside hlr
    # (EE = integral of 2 pi r^2 I(r) dln r, on a fine logarithmic grid).
    import galsim

    from astro_starglx.simulate import _galaxy_profile

    round_pop = {**pop, "g_bulge": 0 * pop["g_bulge"], "g_disk": 0 * pop["g_disk"]}
    for k in np.flatnonzero(gal & (pop["bulge_fraction"] > 0.1)
                            & (pop["bulge_fraction"] < 0.9))[:3]:
        profile = _galaxy_profile(galsim, round_pop, k)
        radii = np.geomspace(1e-7, 1.0, 4000) * hlr[k]
        intensity = np.array([profile.xValue(r, 0.0) for r in radii])
        inside = np.trapezoid(2 * np.pi * radii**2 * intensity, np.log(radii))
        assert inside == pytest.approx(0.5, abs=0.005)


@requires_galsim
def test_saturation_mask():
    images, truth = simulate_field(shape=(64, 64), n_stars=1, n_galaxies=0,
                                   mag_range=(13.0, 13.5), bands=("r",), seed=0)
    image = images["r"]
    assert image.mask.any()
    np.testing.assert_allclose(image.data[image.mask], image.meta["SATURATE"], rtol=1e-5)
    iy, ix = int(round(truth["y_r"][0])), int(round(truth["x_r"][0]))
    assert image.mask[iy, ix]


@requires_galsim
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


def test_import_is_lazy_and_works_without_galsim():
    code = ("import sys; import astro_starglx.simulate; "
            "assert 'galsim' not in sys.modules and 'torch' not in sys.modules; "
            "sys.modules['galsim'] = None; import importlib; "
            "importlib.reload(astro_starglx.simulate)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_simulate_without_galsim_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "galsim", None)
    with pytest.raises(ImportError, match=r'pip install "astro_starglx\[sim\]"'):
        simulate_field(shape=(8, 8), n_stars=0, n_galaxies=0, bands=("r",))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"shape": (0, 10)}, "shape"),
    ({"shape": (10,)}, "shape"),
    ({"shape": (10.5, 10)}, "shape"),
    ({"n_stars": -1}, "n_stars"),
    ({"n_galaxies": 2.5}, "n_galaxies"),
    ({"density": -1.0}, "density"),
    ({"star_fraction": 1.5}, "star_fraction"),
    ({"mag_range": (26.0, 17.0)}, "mag_range"),
    ({"mag_range": (17.0, float("nan"))}, "mag_range"),
    ({"mag_range": 20.0}, "mag_range"),
    ({"bands": ("r", "w")}, "bands"),
    ({"bands": ()}, "bands"),
    ({"bands": ("r", "r")}, "bands"),
    ({"pixel_scale": 0.0}, "pixel_scale"),
    ({"pixel_scale": -0.074}, "pixel_scale"),
    ({"pixel_scale": 0.2}, "pixel_scale"),
    ({"ra": 400.0}, "ra"),
    ({"dec": 95.0}, "dec"),
    ({"wcs_jitter": -1.0}, "wcs_jitter"),
    ({"rotation_jitter": -0.1}, "rotation_jitter"),
    ({"psf_scale": 0.0}, "psf_scale"),
    ({"obscuration": 1.0}, "obscuration"),
    ({"star_slope": float("inf")}, "star_slope"),
    ({"galaxy_slope": "steep"}, "galaxy_slope"),
    ({"subtract_sky": "yes"}, "subtract_sky"),
    ({"psf_model": "kolmogorov"}, "psf_model must be one of"),
    ({"psf_beta": 1.0}, "psf_beta must be a finite number >= 1.1"),
    ({"exptime_scale": 0.0}, "exptime_scale"),
    ({"galaxy_size_scale": -1.0}, "galaxy_size_scale"),
    ({"sersic_fraction": 1.5}, "sersic_fraction"),
    ({"colour_scatter": -0.1}, "colour_scatter"),
])
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_field(**kwargs)


def test_band_model_errors():
    with pytest.raises(ValueError, match="band holds unknown band names"):
        band_model("w")
    with pytest.raises(ValueError, match="pixel_scale"):
        band_model("r", pixel_scale=0.0)
    with pytest.raises(ValueError, match="obscuration"):
        band_model("r", obscuration=-0.1)


@requires_galsim
def test_band_model_unreachable_depth():
    with pytest.raises(ValueError, match="band i: the depth 25.9 cannot be reached"):
        band_model("i", pixel_scale=0.05, obscuration=0.5)


@requires_galsim
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


@requires_galsim
@pytest.mark.parametrize(("psf_model", "psf_beta"), [("airy", 3.0), ("moffat", 2.5),
                                                     ("moffat", 4.5), ("gaussian", 3.0)])
def test_psf_models_match_their_headers(psf_model, psf_beta):
    # A bright star put in the middle of an empty field: its measured 80 %
    # radius is the header's PSFR80.
    empty = {"shape": (64, 64), "n_stars": 0, "n_galaxies": 0, "bands": ("r",), "seed": 4}
    images, _ = simulate_field(**empty, psf_model=psf_model, psf_beta=psf_beta,
                               psf_scale=1.3)
    header = images["r"].meta
    assert header["PSFMODEL"] == psf_model and header["PSFBETA"] == psf_beta
    ra, dec = images["r"].wcs.pixel_to_world_values([31.6], [32.3])
    out, star = inject_point_sources(images, ra, dec, 17.0, seed=1)
    data = (out["r"].data - images["r"].data).astype(float).ravel()
    yy, xx = np.indices((64, 64))
    r = np.hypot(xx - star["x_r"][0], yy - star["y_r"][0]).ravel() * CSST_PIXEL_SCALE
    order = np.argsort(r)
    ee = np.cumsum(data[order]) / star["flux_r"][0]
    r80 = r[order][np.searchsorted(ee, 0.8)]
    assert r80 == pytest.approx(header["PSFR80"], abs=0.5 * CSST_PIXEL_SCALE)
    # The FWHM is the nominal one dilated by psf_scale, pixel included.
    nominal = band_model("r")
    assert header["PSFFWHM"] == pytest.approx(1.3 * nominal.fwhm, rel=0.06)


@requires_galsim
def test_moffat_wings_are_stronger_than_gaussian():
    fractions = {}
    for psf_model in ("moffat", "gaussian"):
        images, truth = simulate_field(shape=(64, 64), n_stars=1, n_galaxies=0,
                                       bands=("r",), mag_range=(17.0, 17.1), seed=4,
                                       psf_model=psf_model, psf_beta=2.5)
        yy, xx = np.indices(images["r"].data.shape)
        r = np.hypot(xx - truth["x_r"][0], yy - truth["y_r"][0])
        fractions[psf_model] = images["r"].data[r > 5].sum() / truth["flux_r"][0]
    assert fractions["moffat"] > 0.02 > abs(fractions["gaussian"])


@requires_galsim
def test_variations_leave_the_sources_and_change_what_they_say():
    kwargs = {"shape": (96, 96), "n_stars": 20, "n_galaxies": 60, "seed": 11}
    base_images, base = simulate_field(**kwargs)
    images, truth = simulate_field(**kwargs, colour_scatter=0.1, sersic_fraction=1.0,
                                   galaxy_size_scale=0.5, exptime_scale=4.0)
    np.testing.assert_array_equal(truth["ra"], base["ra"])
    np.testing.assert_array_equal(truth["mag_r"], base["mag_r"])
    # Colours scattered off the SED loci, in every band but the reference one.
    scatter = np.concatenate([truth[f"mag_{b}"] - base[f"mag_{b}"]
                              for b in CSST_BANDS if b != "r"])
    assert 0.08 < np.std(scatter) < 0.12
    gal = truth["label"] == "galaxy"
    # Every galaxy a single Sersic from the grid; half the size (before clipping).
    assert np.all(np.isin(truth["sersic_n"][gal], [0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]))
    assert np.all(np.isnan(truth["bulge_fraction"][gal]))
    assert np.all(np.isnan(truth["sersic_n"][~gal]))
    unclipped = gal & (base["hlr"] > 0.07)
    np.testing.assert_allclose(truth["hlr"][unclipped], 0.5 * base["hlr"][unclipped],
                               rtol=1e-12)
    # Four times the exposure: the background noise nearly halves (less than
    # half: the read noise counts less), the design depth is 0.75 mag deeper.
    for band in ("g", "y"):
        model = band_model(band)
        t, n_exp = 4 * model.total_exptime, model.n_exposures
        expected = math.sqrt(((model.sky_rate + model.dark_rate) * t
                              + n_exp * model.read_noise**2) / t**2
                             / model.background_variance)
        ratio = np.sqrt(base_images[band].uncertainty.array[0, 0]
                        / images[band].uncertainty.array[0, 0])
        assert ratio == pytest.approx(expected, rel=1e-5)
        assert 0.45 < ratio < 0.5
        assert images[band].meta["EXPTIME"] == 4 * base_images[band].meta["EXPTIME"]
        assert images[band].meta["DEPTH5"] == pytest.approx(
            base_images[band].meta["DEPTH5"] + 1.25 * math.log10(4.0))


@requires_galsim
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
