"""
The simulator's sources: stars and galaxies, their magnitudes, SEDs and profiles.

* Stars have blackbody SEDs, with temperatures from a coarse high-latitude
  mix of M dwarfs, K/G disc dwarfs, halo turn-off stars and a few hot stars,
  so that their colours follow a stellar locus, and power-law number counts
  (`~astro_starglx.simulate.SIM_STAR_COUNT_SLOPE`).
* Galaxies are de Vaucouleurs bulge + exponential disk profiles (or, on
  request, single Sersic profiles) with a size-magnitude relation that makes
  faint galaxies small (median half-light radius 0.17 arcsec at r = 25),
  colours from the CWW templates shipped with GalSim redshifted with
  `galsim.SED.atRedshift`, and steeper number counts than the stars
  (`~astro_starglx.simulate.SIM_GALAXY_COUNT_SLOPE`).

Colours come from SED magnitudes through the bandpasses of
`astro_starglx.simulate.instrument` with AB zero points; each object is
then drawn as an achromatic profile with its band flux. Drawing achromatic
profiles is far faster than chromatic drawing; the price is that an object
has the same shape in every band (no colour gradients). Intergalactic
absorption and dust are not modelled.
"""

import functools
import math
import os

import numpy as np

from .instrument import _bandpass, _import_galsim

__all__ = [
    "SIM_DENSITY",
    "SIM_STAR_FRACTION",
    "SIM_STAR_COUNT_SLOPE",
    "SIM_GALAXY_COUNT_SLOPE",
    "SIM_REFERENCE_BAND",
]

#: Default source density (stars + galaxies) per square arcminute. Real counts
#: to r = 26 are about 100 per square arcminute; a bit more gives more
#: training sources per simulated pixel without crowding.
SIM_DENSITY = 150.0

#: Default star fraction: the paper's 32,371 stars to 93,525 galaxies.
SIM_STAR_FRACTION = 32371 / (32371 + 93525)

#: Slope of the star counts, d log10 N / dm (high Galactic latitude, faint).
SIM_STAR_COUNT_SLOPE = 0.10

#: Slope of the galaxy counts, d log10 N / dm (r = 20-26).
SIM_GALAXY_COUNT_SLOPE = 0.35

#: Band in which magnitudes are drawn (``mag_range``) and SEDs normalised.
SIM_REFERENCE_BAND = "r"

# Sersic indices of single-component galaxies (a grid, since GalSim builds and
# caches its Hankel tables per index).
_SERSIC_N_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)

# Galaxy populations: CWW template, fraction, bulge-to-total range.
_GALAXY_TYPES = (
    ("CWW_E_ext", 0.15, (0.7, 1.0)),
    ("CWW_Sbc_ext", 0.35, (0.2, 0.5)),
    ("CWW_Scd_ext", 0.30, (0.0, 0.2)),
    ("CWW_Im_ext", 0.20, (0.0, 0.0)),
)

# Size-magnitude relation: log10(hlr / arcsec) = log10(0.17)
#   - 0.12 (m_r - 25) + N(0, 0.2), clipped to [0.03, 3] arcsec (bounds the FFTs).
_HLR_AT_25 = 0.17
_HLR_SLOPE = -0.12
_HLR_SCATTER = 0.2
_HLR_RANGE = (0.03, 3.0)

# Sersic b_n for n = 1 and n = 4 (half the light inside the half-light radius).
_B_EXP = 1.678346990016661
_B_DEV = 7.669249442500


def _powerlaw_mags(rng, n, mag_range, slope):
    lo, hi = mag_range
    if abs(slope) < 1e-9:
        return rng.uniform(lo, hi, n)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.uniform(0.0, 1.0, n) * (b - a)) / slope


def _star_teff(rng, n):
    # A coarse high-latitude mix: M dwarfs, K/G disc dwarfs, halo turn-off
    # stars, a few hot stars (A/F, horizontal branch, white dwarfs).
    kind = rng.choice(4, size=n, p=[0.40, 0.25, 0.30, 0.05])
    teff = np.empty(n)
    teff[kind == 0] = rng.uniform(2900.0, 3900.0, np.count_nonzero(kind == 0))
    teff[kind == 1] = rng.uniform(3900.0, 5300.0, np.count_nonzero(kind == 1))
    teff[kind == 2] = rng.normal(5800.0, 400.0, np.count_nonzero(kind == 2))
    teff[kind == 3] = np.exp(rng.uniform(np.log(6500.0), np.log(15000.0),
                                         np.count_nonzero(kind == 3)))
    return np.clip(teff, 2800.0, 20000.0)


def _planck_flambda(wave_nm, teff):
    # Planck's law in wavelength, arbitrary normalisation (hc/k = 1.4388e7 nm K).
    # Not astropy's BlackBody: through galsim.SED it made a star's 7 magnitudes
    # 34x slower (69 ms against 2.0 ms per star, measured), for colours that
    # differ by < 2e-4 mag.
    x = 1.4388e7 / (np.asarray(wave_nm, dtype=float) * teff)
    return 1.0 / (np.asarray(wave_nm, dtype=float) ** 5 * np.expm1(np.minimum(x, 700.0)))


@functools.lru_cache(maxsize=None)
def _cww_sed(name):
    galsim = _import_galsim()
    path = os.path.join(galsim.meta_data.share_dir, "SEDs", f"{name}.sed")
    return galsim.SED(path, wave_type="Angstrom", flux_type="flambda")


def _sed_mags(galsim, sed, mag_ref, bands):
    # Normalise the SED to its reference-band magnitude, then AB magnitudes
    # through every band's bandpass.
    sed = sed.withMagnitude(mag_ref, _bandpass(SIM_REFERENCE_BAND))
    out = np.empty(len(bands))
    for k, band in enumerate(bands):
        bandpass = _bandpass(band)
        flux = sed.calculateFlux(bandpass)
        out[k] = -2.5 * math.log10(flux) + bandpass.zeropoint if flux > 0 else np.inf
    return out


def _composite_ee(radius, bulge_fraction, r_bulge, r_disk):
    # Encircled energy of a circular bulge (n=4) + disk (n=1) at `radius`:
    # regularised lower incomplete gamma P(2n, b_n (r/r_e)^(1/n)).
    from scipy.special import gammainc

    with np.errstate(divide="ignore", invalid="ignore"):
        x_d = _B_EXP * radius / np.where(r_disk > 0, r_disk, 1.0)
        x_b = _B_DEV * (radius / np.where(r_bulge > 0, r_bulge, 1.0)) ** 0.25
    return (bulge_fraction * gammainc(8, x_b)
            + (1.0 - bulge_fraction) * gammainc(2, x_d))


def _component_radii(hlr, bulge_fraction, ratio):
    # Scale s such that r_disk = s * hlr, r_bulge = ratio * s * hlr give a
    # composite half-light radius hlr (bisection, vectorised).
    lo = np.full(hlr.shape, 0.05)
    hi = np.full(hlr.shape, 20.0)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        ee = _composite_ee(hlr, bulge_fraction, ratio * mid * hlr, mid * hlr)
        # more light inside hlr -> profile too compact -> scale up
        lo = np.where(ee > 0.5, mid, lo)
        hi = np.where(ee > 0.5, hi, mid)
    s = 0.5 * (lo + hi)
    return ratio * s * hlr, s * hlr


#: Star-forming knots of a galaxy whose disk has some (``knot_fraction``).
_N_KNOTS = 20


def _draw_galaxies(rng, mag_g, *, rng_var=None, size_scale=1.0, sersic_fraction=0.0,
                   knot_fraction=0.0):
    """Redshifts, types, sizes and shapes of galaxies of reference magnitudes
    ``mag_g``; a dict of arrays of their length."""
    n_galaxies = mag_g.size
    fractions = np.array([t[1] for t in _GALAXY_TYPES])
    gtype = rng.choice(len(_GALAXY_TYPES), size=n_galaxies, p=fractions / fractions.sum())
    # Redshift: p(z) ~ z^2 exp(-(z/z0)^1.5) with a median growing with magnitude;
    # z = z0 * Gamma(2)^(2/3) samples it exactly.
    z_med = np.maximum(0.05, 0.1 + 0.09 * (mag_g - 17.0))
    z = (z_med / 1.412) * rng.gamma(2.0, 1.0, n_galaxies) ** (2.0 / 3.0)
    z = np.clip(z, 0.01, 3.5)
    bt_lo = np.array([t[2][0] for t in _GALAXY_TYPES])[gtype]
    bt_hi = np.array([t[2][1] for t in _GALAXY_TYPES])[gtype]
    bulge_fraction = rng.uniform(bt_lo, bt_hi)
    log_hlr = (math.log10(_HLR_AT_25 * size_scale) + _HLR_SLOPE * (mag_g - 25.0)
               + rng.normal(0.0, _HLR_SCATTER, n_galaxies))
    hlr = np.clip(10.0**log_hlr, *_HLR_RANGE)
    ratio = rng.uniform(0.3, 0.6, n_galaxies)
    r_bulge, r_disk = _component_radii(hlr, bulge_fraction, ratio)
    g_disk = np.minimum(np.hypot(*rng.normal(0.0, 0.25, (2, n_galaxies))), 0.8)
    g_bulge = 0.4 * g_disk
    # Overall ellipticity: the bulge-fraction-weighted mean of the two.
    g_total = bulge_fraction * g_bulge + (1.0 - bulge_fraction) * g_disk
    beta = rng.uniform(0.0, np.pi, n_galaxies)
    # Single-Sersic galaxies (drawn from their own stream, so that the default
    # population does not change): one profile with the composite's size and
    # ellipticity, instead of bulge + disk.
    sersic_n = np.full(n_galaxies, np.nan)
    if sersic_fraction > 0:
        single = rng_var.uniform(0.0, 1.0, n_galaxies) < sersic_fraction
        sersic_n[single] = rng_var.choice(_SERSIC_N_GRID, size=np.count_nonzero(single))
        bulge_fraction = np.where(single, np.nan, bulge_fraction)
    # Knots: a fraction of each disk's light in GalSim's RandomKnots (after
    # every other draw of the variations' stream, so that they keep theirs)
    knots = np.zeros(n_galaxies)
    knot_seed = np.zeros(n_galaxies)
    if knot_fraction > 0:
        knots = np.where(bulge_fraction < 1, knot_fraction, 0.0)
        knot_seed = rng_var.integers(1, 2**31 - 1, n_galaxies).astype(float)
    return {"redshift": z, "hlr": hlr, "bulge_fraction": bulge_fraction,
            "bulge_hlr": r_bulge, "disk_hlr": r_disk, "g_bulge": g_bulge, "g_disk": g_disk,
            "ellipticity": g_total, "sersic_n": sersic_n, "beta": beta, "knot_fraction": knots,
            "knot_seed": knot_seed, "_type": gtype}


# Value of each galaxy quantity for stars.
_STAR_FILL = {"redshift": np.nan, "hlr": 0.0, "bulge_fraction": np.nan, "bulge_hlr": np.nan,
              "disk_hlr": np.nan, "g_bulge": np.nan, "g_disk": np.nan, "ellipticity": 0.0,
              "sersic_n": np.nan, "beta": np.nan, "knot_fraction": 0.0, "knot_seed": 0.0}


def _draw_population(rng, n_stars, n_galaxies, mag_range, star_slope, galaxy_slope, *,
                     rng_var=None, size_scale=1.0, sersic_fraction=0.0, knot_fraction=0.0):
    """
    Draw ``n_stars`` stars then ``n_galaxies`` galaxies.

    Returns a dict of arrays of length ``n_stars + n_galaxies`` (stars
    first): ``label``, ``mag_ref`` (reference-band AB magnitude), ``teff``,
    ``redshift``, ``hlr``, ``bulge_fraction``, ``bulge_hlr``, ``disk_hlr``,
    ``g_bulge``, ``g_disk``, ``ellipticity``, ``sersic_n``, ``beta``
    (position angle of the major axis, radians from +x), ``sed`` and
    ``_type`` (-1 for stars, else the index into ``_GALAXY_TYPES``).
    """
    n = n_stars + n_galaxies
    pop = {
        "label": np.array(["star"] * n_stars + ["galaxy"] * n_galaxies),
        "mag_ref": np.concatenate([_powerlaw_mags(rng, n_stars, mag_range, star_slope),
                                   _powerlaw_mags(rng, n_galaxies, mag_range, galaxy_slope)]),
    }
    teff = np.full(n, np.nan)
    teff[:n_stars] = _star_teff(rng, n_stars)
    pop["teff"] = teff
    gal = _draw_galaxies(rng, pop["mag_ref"][n_stars:], rng_var=rng_var,
                         size_scale=size_scale, sersic_fraction=sersic_fraction,
                         knot_fraction=knot_fraction)
    for key, fill in _STAR_FILL.items():
        out = np.full(n, fill, dtype=float)
        out[n_stars:] = gal[key]
        pop[key] = out
    pop["sed"] = np.array(["blackbody"] * n_stars
                          + [_GALAXY_TYPES[k][0].removesuffix("_ext") for k in gal["_type"]])
    pop["_type"] = np.concatenate([np.full(n_stars, -1), gal["_type"]])
    return pop


def _merge_populations(first, second):
    """The sources of two populations, ``first``'s then ``second``'s."""
    return {key: np.concatenate([first[key], second[key]]) for key in first}


def _population_mags(galsim, pop, bands):
    mags = np.empty((pop["mag_ref"].size, len(bands)))
    for k in range(mags.shape[0]):
        if pop["_type"][k] < 0:
            sed = galsim.SED(functools.partial(_planck_flambda, teff=float(pop["teff"][k])),
                             wave_type="nm", flux_type="flambda")
        else:
            name = _GALAXY_TYPES[pop["_type"][k]][0]
            sed = _cww_sed(name).atRedshift(float(pop["redshift"][k]))
        mags[k] = _sed_mags(galsim, sed, float(pop["mag_ref"][k]), bands)
    return mags


def _galaxy_profile(galsim, pop, k):
    """The unit-flux GalSim profile of galaxy ``k`` of ``pop``."""
    beta = float(pop["beta"][k]) * galsim.radians
    if np.isfinite(pop["sersic_n"][k]):
        return galsim.Sersic(n=float(pop["sersic_n"][k]),
                             half_light_radius=float(pop["hlr"][k])).shear(
                                 g=float(pop["ellipticity"][k]), beta=beta)
    bt = float(pop["bulge_fraction"][k])
    parts = []
    if bt > 0:
        parts.append(galsim.DeVaucouleurs(half_light_radius=float(pop["bulge_hlr"][k]),
                                          flux=bt).shear(g=float(pop["g_bulge"][k]), beta=beta))
    if bt < 1:
        knots = float(pop["knot_fraction"][k])
        disk = galsim.Exponential(half_light_radius=float(pop["disk_hlr"][k]),
                                  flux=(1.0 - bt) * (1.0 - knots))
        if knots > 0:
            disk = galsim.Add([disk, galsim.RandomKnots(
                _N_KNOTS, half_light_radius=float(pop["disk_hlr"][k]), flux=(1.0 - bt) * knots,
                rng=galsim.BaseDeviate(int(pop["knot_seed"][k])))])
        parts.append(disk.shear(g=float(pop["g_disk"][k]), beta=beta))
    return parts[0] if len(parts) == 1 else galsim.Add(parts)


def _profile_extent(pop):
    """Radius (arcsec) holding ~99 % of each source's light, PSF excluded."""
    # 6 disk half-light radii (99.9 % of an exponential), 15 bulge ones (98 %
    # of a de Vaucouleurs).
    extent = np.fmax(6.0 * np.nan_to_num(pop["disk_hlr"]) * (pop["bulge_fraction"] < 1),
                     15.0 * np.nan_to_num(pop["bulge_hlr"]) * (pop["bulge_fraction"] > 0))
    # Single Sersic: (4 + 3 n) half-light radii (7 for n = 1, 16 for n = 4).
    return np.fmax(extent, np.nan_to_num((4.0 + 3.0 * pop["sersic_n"]) * pop["hlr"]))
