"""
A simulated field: `~astro_starglx.simulate.SimConfig` (the settings) and
`~astro_starglx.simulate.simulate_field`.

`~astro_starglx.simulate.simulate_field` places the sources of
`astro_starglx.simulate.population` on the sky, draws them in each band
through that band's own WCS and PSF (`astro_starglx.simulate.instrument`)
and returns one `~astropy.nddata.CCDData` per band plus a truth
`~astropy.table.Table`. Its settings are one frozen
`~astro_starglx.simulate.SimConfig`, validated once; the truth table's
``meta`` records them (``dataclasses.asdict``), so that a field can be
remade from its truth table.

Header keywords
---------------
Each band's image carries these keywords (``image.meta``):

============  ===================  ============================================
keyword       unit                 meaning
============  ===================  ============================================
``FILTER``                         band name
``BUNIT``                          image unit: ``electron/s``, or ``adu/s``
                                   when a ``zeropoint`` was requested
``EXPTIME``   s                    total exposure time
``NEXPOSE``                        number of exposures
``EXPTIME1``  s                    time of one exposure
``GAIN``      e-/ADU               electrons per image unit (1 for e-/s)
``RDNOISE``   e-                   read noise per exposure
``DARKCUR``   e-/s/pixel           dark current (always subtracted)
``FULLWELL``  e-                   full well per exposure
``SATURATE``  image unit           value given to saturated (masked) pixels
``MAGZERO``   AB mag               magnitude of a source giving one image
                                   unit (in total)
``SKYLEVEL``  e-/s/pixel           sky level
``SKYSB``     AB mag/arcsec2       sky surface brightness
``SKYSUB``                         True if the sky was subtracted
``PIXSCALE``  arcsec               pixel scale
``PSFR80``    arcsec               PSF 80 % encircled-energy radius, pixel
                                   included, at the field centre
``PSFFWHM``   arcsec               FWHM of the PSF drawn, pixel included, at
                                   the field centre
``PSFSCALE``                       PSF dilation at the field centre
``PSFGRAD``                        fractional change of the PSF width from the
                                   left to the right edge (``psf_gradient``)
``PSFMODEL``                       PSF family: airy, moffat or gaussian
``PSFBETA``                        Moffat index (used when PSFMODEL = moffat)
``PSFELLIP``                       PSF ellipticity ``(a**2 - b**2) / (a**2 +
                                   b**2)`` (``psf_ellipticity``)
``PSFANGLE``  deg                  angle of the PSF's major axis, east
                                   through north (``psf_angle``)
``PSFJITTR``  arcsec               sigma of the Gaussian jitter (airy)
``OBSCURAT``                       linear central obscuration of the pupil
``WAVEEFF``   nm                   effective wavelength of the band
``DEPTH5``    AB mag               5-sigma point-source depth of the noise
                                   model (the table's at ``exptime_scale=1``)
``APRADIUS``  arcsec               radius of the optimal aperture
``APFRAC``                         fraction of the nominal PSF in it
``TELESCOP``                       ``CSST-like``
``ORIGIN``                         ``astro_starglx.simulate``
============  ===================  ============================================
"""

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance
from astropy.table import Table
from astropy.wcs import WCS

from .._validation import (
    config_record,
    resolve_config,
    check_bool,
    check_choice,
    check_count,
    check_range,
    check_real,
)
from ..csst import CSST_BANDS, CSST_PIXEL_SCALE
from .instrument import (
    PSF_MODELS,
    SIM_OBSCURATION,
    _check_bands,
    _check_obscuration,
    _check_pixel_scale,
    _import_galsim,
    _observe,
    _psf_fwhm_curve,
    _render,
    _scaled_exposure,
    _stamp_half_sizes,
    band_model,
)
from .population import (
    SIM_DENSITY,
    SIM_GALAXY_COUNT_SLOPE,
    SIM_REFERENCE_BAND,
    SIM_STAR_COUNT_SLOPE,
    SIM_STAR_FRACTION,
    _draw_population,
    _galaxy_profile,
    _merge_populations,
    _population_mags,
    _profile_extent,
)

__all__ = ["SimConfig", "simulate_field", "SURVEY_PRESETS"]

# pytest-doctestplus: the examples need the sim extra.
__doctest_requires__ = {("simulate_field",): ["galsim"]}

log = logging.getLogger(__name__)

_SIMULATOR = "astro_starglx.simulate (CSST-like, not the official CSST simulation)"


def _check_shape(shape):
    ok = True
    try:
        ny, nx = shape
    except (TypeError, ValueError):
        ok = False
    if ok:
        ok = all(isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
                 and n > 0 for n in (ny, nx))
    if not ok:
        msg = (f"shape must be a (ny, nx) pair of positive integers, got {shape!r}; "
               "e.g. shape=(1024, 1024)")
        raise ValueError(msg)
    return int(ny), int(nx)


def _check_zeropoint(zeropoint, bands):
    if zeropoint is None:
        return None
    hint = "; give one AB zero point for all bands, {band: value}, or None"
    if isinstance(zeropoint, Mapping):
        missing = [b for b in bands if b not in zeropoint]
        extra = [b for b in zeropoint if b not in bands]
        if missing or extra:
            msg = (f"zeropoint must give a value for every band of bands {list(bands)}, "
                   f"missing {missing}, unknown {extra}{hint}")
            raise ValueError(msg)
        return {b: check_real(f"zeropoint[{b!r}]", zeropoint[b], low=0.0, high=50.0,
                              hint=hint) for b in bands}
    return check_real("zeropoint", zeropoint, low=0.0, high=50.0, hint=hint)


@dataclass(frozen=True)
class SimConfig:
    """
    The settings of a simulated field (frozen, validated on creation).

    Make variants with `dataclasses.replace`; record one with
    `dataclasses.asdict`. Every field has a default that gives the nominal
    CSST-like field.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)`` of every band.
    n_stars, n_galaxies : int or None
        Numbers of stars and galaxies (before companions, see
        ``neighbour_fraction``). ``None`` derives them from ``density`` and
        ``star_fraction`` over the field's area.
    density : float
        Sources (stars + galaxies) per square arcminute, used when a count is
        ``None``.
    star_fraction : float
        Fraction of stars among the sources when counts come from ``density``;
        the default is the paper's 32,371 : 93,525.
    mag_range : tuple of float
        ``(bright, faint)`` AB magnitude range in the r band.
    bands : tuple of str
        Bands to simulate, a subset of ``CSST_BANDS``.
    pixel_scale : float
        Pixel scale, arcsec, in [0.05, 0.5] (`SimConfig.preset` gives
        other surveys' settings, e.g. SDSS's 0.396 with its seeing).
    ra, dec : float
        Field centre, degrees.
    wcs_jitter : float
        Standard deviation (arcsec) of a random pointing offset given to each
        band's WCS, so that bands are not pixel-aligned.
    rotation_jitter : float
        Standard deviation (degrees) of a random rotation of each band's WCS.
    psf_scale : float
        Factor by which every band's PSF is dilated (at the field centre). The
        sky is calibrated for the nominal PSF, so a larger PSF gives
        shallower depths, as on a real telescope. 0.7-1.8 is tested for all
        PSF families.
    psf_model : {"airy", "moffat", "gaussian"}
        PSF family (`~astro_starglx.simulate.PSF_MODELS`): the
        diffraction-limited default, or a Moffat or Gaussian with the nominal
        PSF's FWHM (then dilated by ``psf_scale``), to test or train against
        other simulators' PSFs.
    psf_beta : float
        Moffat index (> 1.1) when ``psf_model="moffat"``; smaller values give
        stronger wings.
    psf_ellipticity : float
        Ellipticity of every band's PSF, ``(a**2 - b**2) / (a**2 + b**2)``
        (the second-moment definition of the ``ellipticity`` feature), in
        [0, 0.9): an area-preserving shear applied after the dilation, as
        optical aberrations, tracking errors or a tilted focal plane give
        (space telescopes' requirements are typically below 0.15). The
        headers' ``PSFFWHM`` and the truth's ``psf_fwhm_<band>`` stay those
        of the round PSF of the same area.
    psf_angle : float
        Angle of the PSF's major axis on the sky, degrees from east through
        north (on the base grid, whose x grows to the west, the axis lies at
        ``180 - psf_angle`` degrees from +x towards +y).
    psf_gradient : float
        Fractional change of the PSF width across the field, in [-1, 1]: the
        dilation at column ``x`` of a band is ``psf_scale * (1 + psf_gradient
        * (x - (nx - 1) / 2) / nx)``, so 0.3 makes the PSF 15 % wider than
        nominal at the right edge and 15 % narrower at the left one (30 % of
        the nominal width across the field), and the centre keeps
        ``psf_scale``. Each source is drawn with the PSF at its position.
    obscuration : float
        Linear central obscuration of the pupil (0 for CSST's off-axis design;
        see `~astro_starglx.simulate.band_model` for its effect on the PSF).
    exptime_scale : float
        Factor on every exposure's time: in the r band 2.17 gives 0.5 mag
        deeper images, 0.262 1 mag shallower (the mapping for every band is
        in `astro_starglx.simulate.instrument`;
        `~astro_starglx.simulate.exptime_scale_for_depth` inverts it). The
        headers' ``DEPTH5`` follows.
    zeropoint : float, dict of str to float, or None
        AB zero point of the images (one for all bands, or one per band):
        the images and their uncertainties are scaled so that ``MAGZERO``
        equals it, as a user's images at another calibration are (then in
        ``adu/s``, with ``GAIN`` e-/ADU). ``None`` keeps e-/s.
    galaxy_size_scale : float
        Factor on every galaxy's half-light radius (the size-magnitude
        relation's normalisation).
    sersic_fraction : float
        Fraction of galaxies drawn as one Sersic profile (index from 0.5 to
        4) instead of a de Vaucouleurs bulge plus exponential disk.
    knot_fraction : float
        Fraction of every galaxy disk's light, in [0, 1), in 20 star-forming
        knots (`galsim.RandomKnots`, spread like the disk's light): clumpy,
        irregular galaxies instead of smooth ones, as some simulators draw
        them. Single-Sersic galaxies and pure bulges have none.
    colour_scatter : float
        Standard deviation (mag) of independent Gaussian offsets added to
        every source's magnitude in each band other than r: colours scattered
        off the templates' and blackbodies' loci.
    neighbour_fraction : float
        Fraction of the sources, in [0, 1], that get a close companion,
        drawn from the same population (star or galaxy in the field's
        proportions, the same magnitude range and variations) and placed at a
        random angle at a separation drawn uniformly from
        ``neighbour_separation``: fields with blends.
    neighbour_separation : tuple of float
        ``(min, max)`` separation of companions, arcsec.
    star_slope, galaxy_slope : float
        Slopes d log10 N / dm of the star and galaxy number counts.
    subtract_sky : bool
        Subtract the (known) sky level, as calibrated L1 images are. The dark
        current is always subtracted.

    Raises
    ------
    ValueError
        If a setting is invalid; the message names it and says what is
        expected.
    """

    shape: tuple = (1024, 1024)
    n_stars: int | None = None
    n_galaxies: int | None = None
    density: float = SIM_DENSITY
    star_fraction: float = SIM_STAR_FRACTION
    mag_range: tuple = (17.0, 26.0)
    bands: tuple = CSST_BANDS
    pixel_scale: float = CSST_PIXEL_SCALE
    ra: float = 150.0
    dec: float = 2.0
    wcs_jitter: float = 0.0
    rotation_jitter: float = 0.0
    psf_scale: float = 1.0
    psf_model: str = "airy"
    psf_beta: float = 3.0
    psf_ellipticity: float = 0.0
    psf_angle: float = 0.0
    psf_gradient: float = 0.0
    obscuration: float = SIM_OBSCURATION
    exptime_scale: float = 1.0
    zeropoint: float | dict | None = None
    galaxy_size_scale: float = 1.0
    sersic_fraction: float = 0.0
    knot_fraction: float = 0.0
    colour_scatter: float = 0.0
    neighbour_fraction: float = 0.0
    neighbour_separation: tuple = (0.5, 2.0)
    star_slope: float = SIM_STAR_COUNT_SLOPE
    galaxy_slope: float = SIM_GALAXY_COUNT_SLOPE
    subtract_sky: bool = True

    def __post_init__(self):
        hint = "; pass e.g. {0}=100, or None to derive it from density"
        try:
            m_lo, m_hi = (float(m) for m in self.mag_range)
            ok = math.isfinite(m_lo) and math.isfinite(m_hi) and m_lo < m_hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            msg = (f"mag_range must be a (bright, faint) pair of finite magnitudes with "
                   f"bright < faint, got {self.mag_range!r}; e.g. mag_range=(17.0, 26.0)")
            raise ValueError(msg)
        bands = _check_bands(self.bands)
        values = {
            "shape": _check_shape(self.shape),
            "n_stars": check_count("n_stars", self.n_stars, allow_none=True,
                                   hint=hint.format("n_stars")),
            "n_galaxies": check_count("n_galaxies", self.n_galaxies, allow_none=True,
                                      hint=hint.format("n_galaxies")),
            "density": check_real("density", self.density, low=0.0),
            "star_fraction": check_real("star_fraction", self.star_fraction, low=0.0,
                                        high=1.0),
            "mag_range": (m_lo, m_hi),
            "bands": bands,
            "pixel_scale": _check_pixel_scale(self.pixel_scale),
            "ra": check_real("ra", self.ra, low=0.0, high=360.0),
            "dec": check_real("dec", self.dec, low=-89.0, high=89.0),
            "wcs_jitter": check_real("wcs_jitter", self.wcs_jitter, low=0.0),
            "rotation_jitter": check_real("rotation_jitter", self.rotation_jitter, low=0.0),
            "psf_scale": check_real("psf_scale", self.psf_scale, low=0.0, low_open=True),
            "psf_model": check_choice("psf_model", self.psf_model, PSF_MODELS),
            "psf_beta": check_real("psf_beta", self.psf_beta, low=1.1,
                                   hint="; e.g. psf_beta=3.0"),
            "psf_ellipticity": check_real("psf_ellipticity", self.psf_ellipticity, low=0.0,
                                          high=0.9, high_open=True,
                                          hint="; e.g. psf_ellipticity=0.1"),
            "psf_angle": check_real("psf_angle", self.psf_angle, hint="; e.g. psf_angle=30.0"),
            "psf_gradient": check_real("psf_gradient", self.psf_gradient, low=-1.0,
                                       high=1.0, hint="; e.g. psf_gradient=0.3"),
            "obscuration": _check_obscuration(self.obscuration),
            "exptime_scale": check_real("exptime_scale", self.exptime_scale, low=0.0,
                                        low_open=True),
            "zeropoint": _check_zeropoint(self.zeropoint, bands),
            "galaxy_size_scale": check_real("galaxy_size_scale", self.galaxy_size_scale,
                                            low=0.0, low_open=True),
            "sersic_fraction": check_real("sersic_fraction", self.sersic_fraction, low=0.0,
                                          high=1.0),
            "knot_fraction": check_real("knot_fraction", self.knot_fraction, low=0.0,
                                        high=1.0, high_open=True,
                                        hint="; e.g. knot_fraction=0.3"),
            "colour_scatter": check_real("colour_scatter", self.colour_scatter, low=0.0),
            "neighbour_fraction": check_real("neighbour_fraction", self.neighbour_fraction,
                                             low=0.0, high=1.0),
            "neighbour_separation": check_range(
                "neighbour_separation", self.neighbour_separation, low=0.0,
                hint=" arcsec; e.g. neighbour_separation=(0.5, 2.0)"),
            "star_slope": check_real("star_slope", self.star_slope),
            "galaxy_slope": check_real("galaxy_slope", self.galaxy_slope),
            "subtract_sky": check_bool("subtract_sky", self.subtract_sky),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def record(self):
        """The settings as a JSON-friendly dict (`dataclasses.asdict`, tuples
        as lists): what the truth table's ``meta`` and data sets store."""
        return config_record(self)

    @classmethod
    def preset(cls, survey, **overrides):
        """
        The settings of a survey preset (`SURVEY_PRESETS`), with overrides.

        Parameters
        ----------
        survey : {"csst", "sdss"}
            ``"csst"``: the defaults. ``"sdss"``: an SDSS-like field, ugriz
            at 0.396"/px with a Moffat (beta = 4.765) seeing PSF of about
            1.4" FWHM in r and depths near SDSS's (see `SURVEY_PRESETS`).
        **overrides
            `SimConfig` fields that replace the preset's, e.g. ``shape``.

        Returns
        -------
        config : `SimConfig`

        Raises
        ------
        ValueError
            If ``survey`` is not a preset, or an override is invalid.

        Examples
        --------
        >>> from astro_starglx.simulate import SimConfig
        >>> config = SimConfig.preset("sdss", shape=(256, 256))
        >>> config.bands, config.pixel_scale
        (('u', 'g', 'r', 'i', 'z'), 0.396)
        """
        check_choice("survey", survey, tuple(SURVEY_PRESETS))
        return cls(**{**SURVEY_PRESETS[survey], **overrides})


#: Survey presets of `SimConfig.preset`. ``"sdss"`` follows the published
#: SDSS imaging figures: ugriz, 0.396"/px (Gunn et al. 1998), median r
#: seeing 1.4" (Moffat index 4.765, Trujillo et al. 2001) and 95 %
#: point-source completeness u, g, r, i, z = 22.0, 22.2, 22.2, 21.3, 20.5
#: (York et al. 2000). The PSF is the simulator's, dilated 20 times: PSFFWHM
#: headers 0.83, 1.06, 1.36, 1.63, 1.96" (it grows with wavelength, where
#: real seeing shrinks slightly); 5-sigma point-source depths measured on the
#: images' noise: 22.6, 23.2, 22.6, 22.3, 21.5 (exptime_scale = 0.05).
SURVEY_PRESETS = {
    "csst": {},
    "sdss": {
        "bands": ("u", "g", "r", "i", "z"), "pixel_scale": 0.396, "psf_model": "moffat",
        "psf_beta": 4.765, "psf_scale": 20.0, "exptime_scale": 0.05,
        "mag_range": (15.0, 23.0), "density": 30.0,
    },
}


def _resolve_config(config, overrides):
    return resolve_config(SimConfig, config, overrides, what="simulator",
                          example="; e.g. simulate_field(SimConfig(shape=(512, 512)), seed=1)")


# ----------------------------------------------------------------------------------
# geometry


def _base_wcs(shape, pixel_scale, ra, dec):
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    wcs.wcs.cd = np.array([[-pixel_scale, 0.0], [0.0, pixel_scale]]) / 3600.0
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    return wcs


def _jittered_wcs(base, rng, offset_sigma, rotation_sigma):
    wcs = base.deepcopy()
    if offset_sigma > 0 or rotation_sigma > 0:
        dx, dy = rng.normal(0.0, offset_sigma, 2) / 3600.0
        theta = np.deg2rad(rng.normal(0.0, rotation_sigma))
        ra0, dec0 = base.wcs.crval
        wcs.wcs.crval = [(ra0 + dx / math.cos(math.radians(dec0))) % 360.0,
                         float(np.clip(dec0 + dy, -89.999, 89.999))]
        rot = np.array([[math.cos(theta), -math.sin(theta)],
                        [math.sin(theta), math.cos(theta)]])
        wcs.wcs.cd = rot @ base.wcs.cd
        wcs.wcs.set()
    return wcs


def _psf_dilation(psf_scale, psf_gradient, x, nx):
    """PSF dilation at columns ``x`` of an image ``nx`` pixels wide: one value
    without a gradient, else one per position (`SimConfig.psf_gradient`)."""
    if psf_gradient == 0.0:
        return psf_scale
    return psf_scale * (1.0 + psf_gradient * (np.asarray(x, float) - (nx - 1) / 2.0) / nx)


# ----------------------------------------------------------------------------------
# field assembly


def _seed_stream(seed):
    rng = np.random.default_rng(seed)
    # Streams: catalog, WCS, noise, the optional variations and the
    # companions (children 4 and 5, so that the first three, and the default
    # field, stay as before: spawn(5)[:4] == spawn(4)).
    return rng.spawn(5)


def _source_counts(config):
    area = config.shape[0] * config.shape[1] * (config.pixel_scale / 60.0) ** 2
    n_total = int(round(config.density * area))
    n_star_default = int(round(config.star_fraction * n_total))
    n_stars = n_star_default if config.n_stars is None else config.n_stars
    n_galaxies = n_total - n_star_default if config.n_galaxies is None else config.n_galaxies
    return n_stars, n_galaxies


def _draw_sources(galsim, config, rng, rng_var, n_stars, n_galaxies, mag_bands):
    """Population, magnitudes in ``mag_bands`` and positions on the base grid."""
    pop = _draw_population(rng, n_stars, n_galaxies, config.mag_range, config.star_slope,
                           config.galaxy_slope, rng_var=rng_var,
                           size_scale=config.galaxy_size_scale,
                           sersic_fraction=config.sersic_fraction,
                           knot_fraction=config.knot_fraction)
    ny, nx = config.shape
    n = n_stars + n_galaxies
    x_ref = rng.uniform(-0.5, nx - 0.5, n)
    y_ref = rng.uniform(-0.5, ny - 0.5, n)
    mags = _population_mags(galsim, pop, mag_bands)
    if config.colour_scatter > 0:
        scatter = rng_var.normal(0.0, config.colour_scatter, mags.shape)
        scatter[:, mag_bands.index(SIM_REFERENCE_BAND)] = 0.0
        mags = mags + scatter
    return pop, mags, x_ref, y_ref


def _add_neighbours(galsim, config, rng, sources, mag_bands):
    """Give a fraction of the sources a companion (`SimConfig.neighbour_fraction`).

    ``sources`` is ``(pop, mags, x_ref, y_ref)``; returns it with the
    companions appended, and each source's partner id (-1 for none) and
    separation (arcsec, NaN for none).
    """
    pop, mags, x_ref, y_ref = sources
    n = x_ref.size
    partner = np.full(n, -1, dtype=np.int64)
    separation = np.full(n, np.nan)
    if config.neighbour_fraction == 0.0 or n == 0:
        return sources, partner, separation
    hosts = np.flatnonzero(rng.uniform(0.0, 1.0, n) < config.neighbour_fraction)
    is_star = rng.uniform(0.0, 1.0, hosts.size) < np.mean(pop["label"] == "star")
    # Companions come stars first (as _draw_population orders them).
    hosts = np.concatenate([hosts[is_star], hosts[~is_star]])
    comp = _draw_population(rng, int(is_star.sum()), int((~is_star).sum()),
                            config.mag_range, config.star_slope, config.galaxy_slope,
                            rng_var=rng, size_scale=config.galaxy_size_scale,
                            sersic_fraction=config.sersic_fraction,
                            knot_fraction=config.knot_fraction)
    comp_mags = _population_mags(galsim, comp, mag_bands)
    if config.colour_scatter > 0:
        scatter = rng.normal(0.0, config.colour_scatter, comp_mags.shape)
        scatter[:, mag_bands.index(SIM_REFERENCE_BAND)] = 0.0
        comp_mags = comp_mags + scatter
    sep = rng.uniform(*config.neighbour_separation, hosts.size)
    angle = rng.uniform(0.0, 2.0 * np.pi, hosts.size)
    # Base grid: x grows to the west (CD1_1 < 0), y to the north; a separation
    # in arcsec is sep / pixel_scale pixels.
    x_c = x_ref[hosts] + sep / config.pixel_scale * np.cos(angle)
    y_c = y_ref[hosts] + sep / config.pixel_scale * np.sin(angle)
    ids = n + np.arange(hosts.size)
    partner = np.concatenate([partner, hosts])
    partner[hosts] = ids
    separation = np.concatenate([separation, sep])
    separation[hosts] = sep
    sources = (_merge_populations(pop, comp), np.vstack([mags, comp_mags]),
               np.concatenate([x_ref, x_c]), np.concatenate([y_ref, y_c]))
    return sources, partner, separation


def _draw_band(galsim, config, model, band, wcs, sources, rng):
    """One band's image and its sources' pixel positions and PSF FWHM."""
    src_ra, src_dec, mag_b, profiles, extent = sources
    shape = config.shape
    psf_kw = {"psf_model": config.psf_model, "psf_beta": config.psf_beta}
    shape_kw = {"psf_ellipticity": config.psf_ellipticity, "psf_angle": config.psf_angle}
    x, y = wcs.all_world2pix(src_ra, src_dec, 0)
    flux = 10.0 ** (-0.4 * (mag_b - model.zeropoint))
    dilation = _psf_dilation(config.psf_scale, config.psf_gradient, x, shape[1])
    half, snr = _stamp_half_sizes(model, flux, extent, config.pixel_scale, dilation)
    # Objects far below the noise (S/N < 0.02) are not drawn; they stay in truth.
    draw = np.flatnonzero(snr >= 0.02)
    if np.ndim(dilation) == 0:
        psf = model.psf(psf_scale=config.psf_scale, **psf_kw, **shape_kw)
    else:
        psf = [model.psf(psf_scale=float(dilation[k]), **psf_kw, **shape_kw) for k in draw]
    rate, n_drawn = _render(galsim, shape, wcs, psf, [profiles[k] for k in draw],
                            flux[draw], x[draw], y[draw], half[draw])
    zeropoint = (config.zeropoint.get(band) if isinstance(config.zeropoint, dict)
                 else config.zeropoint)
    # Image units per e-/s (1 unless a zero point was asked for).
    scale = 1.0 if zeropoint is None else 10.0 ** (0.4 * (zeropoint - model.zeropoint))
    data, mask = _observe(model, rate, rng, subtract_sky=config.subtract_sky, scale=scale)
    ivar = np.full(shape, 1.0 / (model.background_variance * scale**2), dtype=np.float32)
    unit = u.electron / u.s if zeropoint is None else u.adu / u.s
    image = CCDData(data, unit=unit, wcs=wcs, mask=mask, uncertainty=InverseVariance(ivar),
                    meta=_band_header(model, band, config, scale=scale))
    fwhm = _psf_fwhm_curve(model, np.broadcast_to(dilation, x.shape), **psf_kw)
    return image, x, y, fwhm, n_drawn


def _band_header(model, band, config, *, scale):
    fwhm, r80 = model.psf_size(psf_scale=config.psf_scale, psf_model=config.psf_model,
                               psf_beta=config.psf_beta)
    subtract_sky = config.subtract_sky
    offset = model.sky_rate + model.dark_rate if subtract_sky else model.dark_rate
    header = fits.Header()
    cards = [
        ("FILTER", band, "CSST-like band"),
        ("BUNIT", "electron/s" if scale == 1.0 else "adu/s", "image unit"),
        ("EXPTIME", model.total_exptime, "[s] total exposure time"),
        ("NEXPOSE", model.n_exposures, "number of exposures"),
        ("EXPTIME1", model.exptime, "[s] time of one exposure"),
        ("GAIN", 1.0 / scale, "[e-/ADU] electrons per image unit"),
        ("RDNOISE", model.read_noise, "[e-] read noise per exposure"),
        ("DARKCUR", model.dark_rate, "[e-/s/pix] dark current (subtracted)"),
        ("FULLWELL", model.full_well, "[e-] full well per exposure"),
        ("SATURATE", (model.full_well / model.exptime - offset) * scale,
         "[image unit] saturation level"),
        ("MAGZERO", model.zeropoint + 2.5 * math.log10(scale), "AB mag of 1 image unit"),
        ("SKYLEVEL", model.sky_rate, "[e-/s/pix] sky level"),
        ("SKYSB", model.sky_brightness, "[AB mag/arcsec2] sky surface brightness"),
        ("SKYSUB", bool(subtract_sky), "sky subtracted from the image"),
        ("PIXSCALE", model.pixel_scale, "[arcsec] pixel scale"),
        ("PSFR80", r80, "[arcsec] PSF 80% encircled-energy radius"),
        ("PSFFWHM", fwhm, "[arcsec] PSF FWHM (with pixel)"),
        ("PSFSCALE", config.psf_scale, "PSF dilation factor"),
        ("PSFGRAD", config.psf_gradient, "fractional PSF width change left to right"),
        ("PSFMODEL", config.psf_model, "PSF family: airy (x jitter), moffat or gaussian"),
        ("PSFBETA", config.psf_beta, "Moffat index (PSFMODEL = moffat)"),
        ("PSFELLIP", config.psf_ellipticity, "PSF ellipticity (a2-b2)/(a2+b2)"),
        ("PSFANGLE", config.psf_angle, "[deg] PSF major axis, east through north"),
        ("PSFJITTR", model.jitter_sigma, "[arcsec] Gaussian jitter sigma"),
        ("OBSCURAT", model.obscuration, "linear central obscuration"),
        ("WAVEEFF", model.wave_eff, "[nm] effective wavelength"),
        ("DEPTH5", model.depth, "[AB mag] 5-sigma point-source depth (design)"),
        ("APRADIUS", model.aperture_radius, "[arcsec] optimal aperture radius"),
        ("APFRAC", model.aperture_fraction, "PSF fraction in the optimal aperture"),
        ("TELESCOP", "CSST-like", "simulated, not the official CSST simulation"),
        ("ORIGIN", "astro_starglx.simulate", "software that made this image"),
    ]
    for key, value, comment in cards:
        if isinstance(value, np.floating):
            value = float(value)
        header[key] = (value, comment)
    return header


def _truth_table(pop, src_ra, src_dec, positions, mags, mag_bands, models, neighbours):
    n = src_ra.size
    truth = Table()
    truth["id"] = np.arange(n, dtype=np.int64)
    truth["label"] = pop["label"].astype("U6")
    truth["ra"] = src_ra
    truth["dec"] = src_dec
    truth["ra"].unit = truth["dec"].unit = u.deg
    for b, (x, y, _) in positions.items():
        truth[f"x_{b}"] = x
        truth[f"y_{b}"] = y
    for b in mag_bands:
        truth[f"mag_{b}"] = mags[:, mag_bands.index(b)]
    for b in positions:
        truth[f"flux_{b}"] = 10.0 ** (-0.4 * (truth[f"mag_{b}"] - models[b].zeropoint))
        truth[f"flux_{b}"].unit = u.electron / u.s
    truth["redshift"] = pop["redshift"]
    truth["hlr"] = pop["hlr"]
    truth["hlr"].unit = u.arcsec
    truth["bulge_fraction"] = pop["bulge_fraction"]
    truth["ellipticity"] = pop["ellipticity"]
    truth["sersic_n"] = pop["sersic_n"]
    pa = np.mod(90.0 - np.rad2deg(pop["beta"]), 180.0)
    truth["pa"] = pa
    truth["pa"].unit = u.deg
    truth["teff"] = pop["teff"]
    truth["teff"].unit = u.K
    truth["sed"] = pop["sed"]
    for b, (_, _, fwhm) in positions.items():
        truth[f"psf_fwhm_{b}"] = fwhm
        truth[f"psf_fwhm_{b}"].unit = u.arcsec
    truth["neighbour_id"], truth["neighbour_sep"] = neighbours
    truth["neighbour_sep"].unit = u.arcsec
    return truth


def simulate_field(config=None, *, seed=None, **overrides):
    """
    Simulate a CSST-like multi-band field of stars and galaxies.

    Sources are placed uniformly at random on the sky over the footprint of
    the nominal (unjittered) pixel grid and drawn into each band through that
    band's own WCS. Magnitudes in the reference band (r) follow power-law
    number counts between ``mag_range``; other bands follow from each
    object's SED. See `astro_starglx.simulate` for the physical model.

    Parameters
    ----------
    config : `SimConfig` or None, optional
        The settings; ``None`` for the defaults.
    seed : int, `numpy.random.Generator` or None, optional
        Seed of `numpy.random.default_rng`. The same seed and settings give
        identical images and truth. GalSim draws noiseless profiles (no
        photon shooting), so all randomness comes from this generator.
    **overrides
        `SimConfig` fields that replace those of ``config``, e.g.
        ``simulate_field(shape=(512, 512), seed=1)``.

    Returns
    -------
    images : dict of str to `~astropy.nddata.CCDData`
        One image per band (in ``bands`` order), float32 in e-/s (or adu/s
        with a ``zeropoint``), with a TAN ``wcs``, ``uncertainty`` as
        `~astropy.nddata.InverseVariance` of the background noise (CSST L1
        ``wht``), ``mask`` True on saturated pixels, and the header keywords
        of `astro_starglx.simulate.field` (``MAGZERO``, ``EXPTIME``,
        ``PSFFWHM``, ...).
    truth : `~astropy.table.Table`
        One row per source: ``id``, ``label`` (``"star"``/``"galaxy"``),
        ``ra``, ``dec`` (deg), ``x_<band>``, ``y_<band>`` (0-based pixel
        position in each band, may lie off the image when WCSs are jittered),
        ``mag_<band>`` (true AB magnitude; ``mag_r`` is always present),
        ``flux_<band>`` (true total count rate, e-/s), ``redshift`` (NaN for
        stars), ``hlr`` (half-light radius of the circularised profile, arcsec;
        0 for stars), ``bulge_fraction``, ``ellipticity`` (flux-weighted mean
        of the bulge's and disk's ``(a-b)/(a+b)``; 0 for stars), ``pa``
        (position angle of the major axis east of north, deg), ``sersic_n``
        (index of single-Sersic galaxies, NaN otherwise, when their
        ``bulge_fraction`` is NaN too), ``teff`` (K, stars), ``sed`` (SED
        name: ``blackbody`` or the CWW template), ``psf_fwhm_<band>`` (FWHM
        of the PSF the source was drawn with, pixel included, arcsec),
        ``neighbour_id`` (the ``id`` of its companion, -1 for none) and
        ``neighbour_sep`` (their separation, arcsec; NaN for none).
        Companions follow the other sources. ``meta`` holds the settings
        (`SimConfig.record`, with ``n_stars`` and ``n_galaxies`` as drawn,
        before companions), ``n_neighbours`` and ``seed``. Faint galaxies
        are small: at r = 25 about half have half-light radii of 0.1-0.2
        arcsec.

    Raises
    ------
    ValueError
        If a setting is invalid; the message names it.
    TypeError
        If an override is not a `SimConfig` field.
    ImportError
        If GalSim is not installed.

    Examples
    --------
    >>> from astro_starglx.simulate import simulate_field
    >>> images, truth = simulate_field(shape=(64, 64), n_stars=2, n_galaxies=3,
    ...                                bands=("g", "r"), seed=1)
    >>> list(images), len(truth)
    (['g', 'r'], 5)
    >>> images["r"].meta["MAGZERO"]  # doctest: +FLOAT_CMP
    25.924196432784434
    """
    config = _resolve_config(config, overrides)
    galsim = _import_galsim()
    t_start = time.perf_counter()
    rng_cat, rng_wcs, rng_noise, rng_var, rng_nb = _seed_stream(seed)
    n_stars, n_galaxies = _source_counts(config)
    bands = config.bands
    models = {b: _scaled_exposure(band_model(b, pixel_scale=config.pixel_scale,
                                             obscuration=config.obscuration),
                                  config.exptime_scale)
              for b in bands}
    mag_bands = bands if SIM_REFERENCE_BAND in bands else (*bands, SIM_REFERENCE_BAND)
    sources = _draw_sources(galsim, config, rng_cat, rng_var, n_stars, n_galaxies, mag_bands)
    sources, partner, separation = _add_neighbours(galsim, config, rng_nb, sources, mag_bands)
    pop, mags, x_ref, y_ref = sources
    n = x_ref.size
    base = _base_wcs(config.shape, config.pixel_scale, config.ra, config.dec)
    src_ra, src_dec = base.all_pix2world(x_ref, y_ref, 0)
    src_ra = np.mod(src_ra, 360.0)
    profiles = [None if pop["_type"][k] < 0 else _galaxy_profile(galsim, pop, k)
                for k in range(n)]
    extent = _profile_extent(pop)
    bands_wcs = {b: _jittered_wcs(base, rng_wcs, config.wcs_jitter, config.rotation_jitter)
                 for b in bands}
    noise_rngs = dict(zip(bands, rng_noise.spawn(len(bands))))

    images, positions = {}, {}
    n_renders = 0
    for b in bands:
        band_sources = (src_ra, src_dec, mags[:, mag_bands.index(b)], profiles, extent)
        images[b], x, y, fwhm, n_drawn = _draw_band(galsim, config, models[b], b,
                                                    bands_wcs[b], band_sources, noise_rngs[b])
        positions[b] = (x, y, fwhm)
        n_renders += n_drawn

    truth = _truth_table(pop, src_ra, src_dec, positions, mags, mag_bands, models,
                         (partner, separation))
    truth.meta.update({
        "simulator": _SIMULATOR, **config.record(), "n_stars": n_stars,
        "n_galaxies": n_galaxies, "n_neighbours": n - n_stars - n_galaxies,
        "reference_band": SIM_REFERENCE_BAND,
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
    })
    elapsed = time.perf_counter() - t_start
    log.info("simulated %d sources in %d bands (%d stamps) in %.2f s", n, len(bands),
             n_renders, elapsed)
    return images, truth
