"""Tests of astro_starglx.simulate.population (stars and galaxies)."""

import numpy as np
import pytest

from astro_starglx.simulate.population import (
    _B_DEV,
    _B_EXP,
    _composite_ee,
    _draw_population,
    _planck_flambda,
    _powerlaw_mags,
)

pytest.importorskip("scipy")


def test_galaxy_population():
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
    assert np.all(pop["_type"][~gal] == -1) and np.all(pop["_type"][gal] >= 0)
    assert np.all(np.isnan(pop["teff"][gal])) and np.all(pop["teff"][~gal] > 2000)


def test_bulge_and_disk_radii_give_the_half_light_radius():
    # The bulge and disk radii give the drawn composite half-light radius: half
    # of the (unit) flux of the round GalSim profile falls inside hlr
    # (EE = integral of 2 pi r^2 I(r) dln r, on a fine logarithmic grid).
    galsim = pytest.importorskip("galsim")
    from astro_starglx.simulate.population import _galaxy_profile

    pop = _draw_population(np.random.default_rng(0), 0, 400, (17.0, 26.0), 0.10, 0.35)
    round_pop = {**pop, "g_bulge": 0 * pop["g_bulge"], "g_disk": 0 * pop["g_disk"]}
    chosen = np.flatnonzero((pop["bulge_fraction"] > 0.1) & (pop["bulge_fraction"] < 0.9))
    for k in chosen[:3]:
        profile = _galaxy_profile(galsim, round_pop, k)
        radii = np.geomspace(1e-7, 1.0, 4000) * pop["hlr"][k]
        intensity = np.array([profile.xValue(r, 0.0) for r in radii])
        inside = np.trapezoid(2 * np.pi * radii**2 * intensity, np.log(radii))
        assert inside == pytest.approx(0.5, abs=0.005)


def test_composite_encircled_energy():
    # A pure exponential (n = 1): EE(r) = 1 - exp(-x)(1 + x), x = b_1 r / r_e;
    # a pure de Vaucouleurs holds half its light inside r_e.
    r = np.array([0.5, 1.0, 2.0])
    x = _B_EXP * r
    np.testing.assert_allclose(_composite_ee(r, 0.0, 1.0, 1.0), 1 - np.exp(-x) * (1 + x),
                               rtol=1e-12)
    assert _composite_ee(np.array([1.0]), 1.0, 1.0, 1.0)[0] == pytest.approx(0.5, abs=1e-9)
    assert _composite_ee(np.array([1.0]), 0.0, 1.0, 1.0)[0] == pytest.approx(0.5, abs=1e-9)
    assert _B_DEV == pytest.approx(7.669, abs=1e-3)


def test_sersic_fraction_draws_from_its_own_stream():
    args = (np.random.default_rng(1), 10, 50, (18.0, 25.0), 0.1, 0.35)
    base = _draw_population(*args)
    args = (np.random.default_rng(1), 10, 50, (18.0, 25.0), 0.1, 0.35)
    single = _draw_population(*args, rng_var=np.random.default_rng(2), sersic_fraction=1.0)
    np.testing.assert_array_equal(base["hlr"], single["hlr"])
    gal = single["label"] == "galaxy"
    assert np.all(np.isfinite(single["sersic_n"][gal]))
    assert np.all(np.isnan(single["bulge_fraction"][gal]))


def test_powerlaw_counts_and_blackbody_colours():
    mags = _powerlaw_mags(np.random.default_rng(0), 20000, (20.0, 26.0), 0.35)
    n, _ = np.histogram(mags, bins=[20, 21, 22, 23, 24, 25, 26])
    slope = np.polyfit(np.arange(6), np.log10(n), 1)[0]
    assert slope == pytest.approx(0.35, abs=0.03)
    # Hotter blackbodies are bluer: their blue-to-red flux ratio is larger.
    wave = np.array([400.0, 800.0])
    ratios = [np.divide(*_planck_flambda(wave, t)) for t in (3000.0, 6000.0, 12000.0)]
    assert np.all(np.diff(ratios) > 0)
