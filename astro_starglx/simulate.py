r"""
CSST-like multi-band image simulator.

`simulate_field` draws a field of stars and galaxies in the seven CSST
survey-camera bands (NUV, u, g, r, i, z, y) with GalSim and returns one
`~astropy.nddata.CCDData` per band (e-/s, with its own TAN WCS, inverse
variance and saturation mask) plus a truth `~astropy.table.Table`.

This is a *CSST-like* simulator written for this package, to train and test
star-galaxy classifiers. It is **not** the official CSST image simulation
(which is also built on GalSim but models the real optics, detectors, focal
plane and calibration). What it reproduces, and how:

* the instrument numbers of `astro_starglx.csst` (band ranges, exposures,
  5-sigma point-source depths, PSF 80 % encircled-energy radii), a 2 m
  aperture, 0.074 arcsec pixels, read noise 5 e-, dark current 0.02 e-/s and
  a 90 ke- full well;
* a PSF per band: the diffraction pattern of the 2 m pupil (`galsim.Airy`,
  with an optional central obscuration; CSST itself is an off-axis design
  without one) convolved with a Gaussian pointing jitter whose width is
  solved for so that the 80 % encircled-energy radius measured on the image
  equals the band's ``r80``;
* stars with blackbody SEDs (temperatures from a coarse high-latitude mix of
  M dwarfs, K/G disc dwarfs, halo turn-off stars and a few hot stars), so that
  their colours follow a stellar locus, and power-law number counts;
* galaxies as de Vaucouleurs bulge + exponential disk profiles with a
  size-magnitude relation that makes faint galaxies small (median half-light
  radius 0.17 arcsec at r = 25), colours from the CWW templates shipped with
  GalSim redshifted with `galsim.SED.atRedshift`, and steeper number counts
  than the stars;
* the sky level of each band solved *analytically* from the depth table (see
  `band_model`), so that the 5-sigma point-source depths match the table.

Colours come from SED magnitudes through smooth top-hat bandpasses with AB
zero points; each object is then drawn as an achromatic profile with its
band flux, convolved with that band's PSF. Drawing achromatic profiles is far
faster than chromatic drawing; the price is that an object has the same shape
in every band (no colour gradients). Intergalactic absorption, dust, cosmic
rays, detector defects, bleeding trails and distortion are not modelled.

GalSim is an optional dependency (the ``sim`` extra); it is imported only when
a function needs it.

Depth calibration
-----------------
The depth is that of exact-overlap circular-aperture photometry (what
`photutils.aperture.aperture_photometry` does with ``method="exact"``) in
the optimal aperture. For a point source of total count rate :math:`F`
(e-/s) in a stack of :math:`N` exposures of :math:`t` seconds (:math:`T = N
t`), with sky :math:`B` and dark current :math:`D` (e-/s/pixel) and read
noise :math:`\sigma_{RN}` (e- per exposure), an aperture of radius
:math:`r` that weights each pixel by its overlap :math:`w_i` with the circle
measures

.. math::

    S/N = \frac{F f T}{\sqrt{F q T + n_{eff}\,[(B + D)\,T + N \sigma_{RN}^2]}}

with :math:`f = \langle \sum_i w_i e_i \rangle` the fraction of the light
measured, :math:`q = \langle \sum_i w_i^2 e_i \rangle` the source-noise
factor and :math:`n_{eff} = \langle \sum_i w_i^2 \rangle` the effective
number of background pixels (a bit less than :math:`\pi r^2`, since partial
pixels get weights below one), where :math:`e_i` is the fraction of the
light in pixel :math:`i` and :math:`\langle\rangle` averages over the
source's sub-pixel position. Setting :math:`S/N = 5` at :math:`F_5 =
10^{-0.4 (m_5 - ZP)}` gives the sky level used for each band,

.. math::

    B = \frac{(F_5 f T / 5)^2 - F_5 q T - n_{eff} N \sigma_{RN}^2}{n_{eff} T} - D .

The radius maximises :math:`f / \sqrt{n_{eff}}`, the optimum for
background-limited photometry (1.0-1.3 pixels). :math:`ZP` is the AB
magnitude of a source giving 1 e-/s: :math:`ZP = zp_{AB} + 2.5
\log_{10}(A_{eff} / {\rm cm}^2)` where :math:`zp_{AB}` is GalSim's AB zero
point of the band's bandpass (photons per second per cm\ :sup:`2`), whose
throughput curve includes the band's total system throughput
`SIM_THROUGHPUT`, and :math:`A_{eff} = \pi (D/2)^2 (1 - \epsilon^2)` for a
pupil of diameter :math:`D` with central obscuration :math:`\epsilon`.

With the throughputs of `SIM_THROUGHPUT` the solved sky is 18.2-21.2 AB
mag/arcsec\ :sup:`2`, brighter than the real zodiacal sky at these
wavelengths: for an otherwise ideal instrument (no flat-field, PSF or
background systematics) the table's depths are conservative. The simulator
reproduces the noise that sets the depths, not the sky brightness itself.
"""

import functools
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance
from astropy.table import Table
from astropy.wcs import WCS

from .csst import CSST_BAND_INFO, CSST_BANDS, CSST_PIXEL_SCALE

__all__ = [
    "SimBand",
    "band_model",
    "csst_bandpass",
    "simulate_field",
    "inject_point_sources",
    "SIM_APERTURE_DIAMETER",
    "SIM_OBSCURATION",
    "SIM_THROUGHPUT",
    "SIM_READ_NOISE",
    "SIM_DARK_CURRENT",
    "SIM_FULL_WELL",
    "SIM_DENSITY",
    "SIM_STAR_FRACTION",
    "SIM_STAR_COUNT_SLOPE",
    "SIM_GALAXY_COUNT_SLOPE",
    "SIM_REFERENCE_BAND",
    "PSF_MODELS",
]

# pytest-doctestplus: the examples need the sim extra.
__doctest_requires__ = {("simulate_field",): ["galsim"]}

log = logging.getLogger(__name__)

#: Telescope aperture diameter in metres.
SIM_APERTURE_DIAMETER = 2.0

#: Default linear central obscuration of the pupil. CSST's telescope is an
#: off-axis three-mirror anastigmat, so its pupil is unobstructed; give a value
#: (e.g. 0.3) to model an on-axis telescope.
SIM_OBSCURATION = 0.0

#: Total system throughput (mirrors, filter, detector QE) at the top of each
#: band's top hat. Approximate, CSST-like: about 0.55-0.6 in the optical,
#: lower at the blue and red ends where mirror coatings and the detector QE
#: fall. Only the zero points and the implied sky levels depend on these; the
#: depths do not (the sky is solved for from the depth).
SIM_THROUGHPUT = {"NUV": 0.25, "u": 0.40, "g": 0.55, "r": 0.60, "i": 0.55, "z": 0.40,
                  "y": 0.20}

#: Read noise per exposure, electrons.
SIM_READ_NOISE = 5.0

#: Dark current, electrons per second per pixel.
SIM_DARK_CURRENT = 0.02

#: Full well, electrons per exposure; pixels above it are saturated and masked.
SIM_FULL_WELL = 90000.0

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

#: PSF families `simulate_field` can draw: the diffraction-limited default
#: (``"airy"``, an Airy pattern convolved with Gaussian jitter) and two
#: analytic stand-ins of other simulators and ground-like optics, each given
#: the FWHM of the band's nominal PSF before ``psf_scale`` dilates it.
PSF_MODELS = ("airy", "moffat", "gaussian")

# Sersic indices of single-component galaxies (a grid, since GalSim builds and
# caches its Hankel tables per index).
_SERSIC_N_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)

# Softness of the top-hat edges (tanh width, nm) and the wavelength grid of
# the bandpass lookup tables.
_EDGE_WIDTH = 4.0
_WAVE_GRID = np.arange(200.0, 1200.5, 0.5)

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

# PSF encircled-energy grid: oversampling and radii (native pixels).
_EE_OVERSAMPLE = 5
_EE_RADII = np.arange(0.4, 7.0001, 0.05)


def _import_galsim():
    try:
        import galsim
    except ImportError as err:
        msg = ('the simulator needs GalSim, which is not installed; install it with '
               'pip install "astro_starglx[sim]"')
        raise ImportError(msg) from err
    return galsim


# ----------------------------------------------------------------------------------
# validation helpers (public boundary only)


def _check_real(name, value, *, low=None, high=None, low_open=False, hint=""):
    try:
        ok = np.ndim(value) == 0 and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        val = float(value)
        if low is not None and (val < low or (low_open and val == low)):
            ok = False
        if high is not None and val > high:
            ok = False
    if not ok:
        bound = ""
        if low is not None:
            bound = f" {'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f"{' and' if bound else ''} <= {high}"
        msg = f"{name} must be a finite number{bound}, got {value!r}{hint}"
        raise ValueError(msg)
    return float(value)


def _check_count(name, value):
    if value is None:
        return None
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < 0):
        msg = (f"{name} must be None or a non-negative integer, got {value!r}; pass e.g. "
               f"{name}=100, or None to derive it from density")
        raise ValueError(msg)
    return int(value)


def _check_bands(bands, name="bands"):
    if isinstance(bands, str):
        bands = (bands,)
    try:
        bands = tuple(bands)
    except TypeError:
        bands = None
    if not bands:
        msg = f"{name} must be a non-empty sequence of CSST band names, got {bands!r}"
        raise ValueError(msg)
    unknown = [b for b in bands if not isinstance(b, str) or b not in CSST_BAND_INFO]
    if unknown:
        msg = (f"{name} holds unknown band names {unknown!r}; the simulator knows "
               f"{list(CSST_BANDS)}")
        raise ValueError(msg)
    if len(set(bands)) != len(bands):
        msg = f"{name} must not repeat a band, got {list(bands)!r}; give each band once"
        raise ValueError(msg)
    return bands


def _check_pixel_scale(pixel_scale):
    # The instrument model is calibrated for CSST-like sampling: with much
    # finer pixels read noise alone exceeds the depths' noise budget, with much
    # coarser ones the optimal aperture shrinks below the sampled radii.
    return _check_real("pixel_scale", pixel_scale, low=0.05, high=0.1,
                       hint=" arcsec; CSST's is 0.074")


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


# ----------------------------------------------------------------------------------
# instrument model


def csst_bandpass(band):
    """
    The CSST-like bandpass of one band, with an AB zero point.

    A smooth top hat over the band's range (``tanh`` edges 4 nm wide) whose
    plateau is the band's total system throughput `SIM_THROUGHPUT`.

    Parameters
    ----------
    band : str
        One of ``CSST_BANDS``.

    Returns
    -------
    bandpass : `galsim.Bandpass`
        Wavelengths in nm; ``zeropoint`` is GalSim's AB zero point (magnitude
        of a source giving one photon per second per cm\\ :sup:`2`).
    """
    _check_bands((band,), "band")
    return _bandpass(band)


@functools.lru_cache(maxsize=None)
def _bandpass(band):
    galsim = _import_galsim()
    info = CSST_BAND_INFO[band]
    lam = _WAVE_GRID
    thr = SIM_THROUGHPUT[band] * 0.5 * (np.tanh((lam - info.wave_min) / _EDGE_WIDTH)
                                        - np.tanh((lam - info.wave_max) / _EDGE_WIDTH))
    keep = thr > 1e-6 * thr.max()
    lo, hi = np.flatnonzero(keep)[[0, -1]]
    table = galsim.LookupTable(lam[lo:hi + 1], thr[lo:hi + 1], interpolant="linear")
    return galsim.Bandpass(table, wave_type="nm").withZeropoint("AB")


@dataclass(frozen=True)
class SimBand:
    """
    The simulator's model of one band (see `band_model`).

    Attributes
    ----------
    name : str
        Band name.
    pixel_scale : float
        Pixel scale, arcsec.
    zeropoint : float
        AB magnitude of a source giving 1 e-/s in total.
    throughput : float
        Total system throughput at the top of the band.
    wave_eff : float
        Effective wavelength of the bandpass, nm.
    lam_over_diam : float
        Diffraction scale lambda/D at ``wave_eff``, arcsec.
    obscuration : float
        Linear central obscuration of the pupil.
    jitter_sigma : float
        Standard deviation of the Gaussian jitter kernel, arcsec.
    r80 : float
        80 % encircled-energy radius of a point source as measured with
        circular apertures on the image (averaged over sub-pixel positions),
        arcsec; equals the band's table value unless diffraction and the
        pixel alone exceed it.
    fwhm : float
        FWHM of the pixel-convolved PSF, arcsec.
    aperture_radius : float
        Radius of the optimal photometric aperture, arcsec.
    aperture_fraction : float
        Fraction of a point source's light measured in the optimal aperture
        (exact-overlap aperture photometry, averaged over sub-pixel positions).
    aperture_source_factor : float
        Variance of a point source's electrons in that aperture divided by its
        total electrons.
    aperture_npix : float
        Variance of the aperture sum of pure background divided by the
        per-pixel variance: the effective number of pixels (below
        pi r\\ :sup:`2` because partial pixels get weights below one).
    sky_rate : float
        Sky background, e-/s/pixel, solved from ``depth``.
    sky_brightness : float
        The same sky in AB mag/arcsec\\ :sup:`2`.
    dark_rate, read_noise, full_well : float
        Dark current (e-/s/pixel), read noise (e- per exposure) and full well
        (e- per exposure).
    n_exposures : int
        Number of exposures.
    exptime : float
        Time of one exposure, s.
    depth : float
        5-sigma point-source depth the sky was solved for, AB mag.
    """

    name: str
    pixel_scale: float
    zeropoint: float
    throughput: float
    wave_eff: float
    lam_over_diam: float
    obscuration: float
    jitter_sigma: float
    r80: float
    fwhm: float
    aperture_radius: float
    aperture_fraction: float
    aperture_source_factor: float
    aperture_npix: float
    sky_rate: float
    sky_brightness: float
    dark_rate: float
    read_noise: float
    full_well: float
    n_exposures: int
    exptime: float
    depth: float

    @property
    def total_exptime(self):
        """Total exposure time, s."""
        return self.n_exposures * self.exptime

    @property
    def background_variance(self):
        """Variance of one background pixel of the stacked image, (e-/s)\\ :sup:`2`."""
        t = self.total_exptime
        return ((self.sky_rate + self.dark_rate) * t
                + self.n_exposures * self.read_noise**2) / t**2

    @property
    def depth_flux(self):
        """Total count rate (e-/s) of a point source at the 5-sigma depth."""
        return 10.0 ** (-0.4 * (self.depth - self.zeropoint))

    def psf(self, *, psf_scale=1.0, psf_model="airy", psf_beta=3.0):
        """
        The band's PSF as a GalSim profile (without the pixel).

        Parameters
        ----------
        psf_scale : float, optional
            Factor by which the PSF is dilated (flux kept).
        psf_model : {"airy", "moffat", "gaussian"}, optional
            PSF family (see `PSF_MODELS`). ``"moffat"`` and ``"gaussian"``
            have the FWHM of the nominal ``"airy"`` PSF before dilation.
        psf_beta : float, optional
            Moffat index, used when ``psf_model="moffat"``.

        Returns
        -------
        psf : `galsim.GSObject`
            Unit-flux profile in arcsec.
        """
        return _psf_profile(_import_galsim(), self.lam_over_diam, self.obscuration,
                            self.jitter_sigma, psf_scale, psf_model, psf_beta)

    def psf_size(self, *, psf_scale=1.0, psf_model="airy", psf_beta=3.0):
        """
        FWHM and 80 % encircled-energy radius of a PSF, pixel included.

        Parameters
        ----------
        psf_scale, psf_model, psf_beta
            As for `psf`.

        Returns
        -------
        fwhm, r80 : float
            Arcsec. For the nominal PSF these are ``fwhm`` and ``r80``.
        """
        if psf_model == "airy":
            return self.fwhm * psf_scale, self.r80 * psf_scale
        fwhm_ratio, r80_ratio = _psf_size_ratios(self.name, self.pixel_scale,
                                                 self.obscuration, psf_model, psf_beta)
        return (float(self.fwhm * fwhm_ratio * psf_scale),
                float(self.r80 * r80_ratio * psf_scale))


@functools.lru_cache(maxsize=None)
def _nominal_fwhm(lam_over_diam, obscuration, jitter_sigma):
    # FWHM of the (pixel-free) Airy x jitter profile, measured on a fine grid.
    galsim = _import_galsim()
    psf = _psf_profile(galsim, lam_over_diam, obscuration, jitter_sigma)
    return float(psf.calculateFWHM(scale=lam_over_diam / 20.0, size=400))


def _psf_profile(galsim, lam_over_diam, obscuration, jitter_sigma, psf_scale=1.0,
                 psf_model="airy", psf_beta=3.0):
    if psf_model == "airy":
        psf = galsim.Airy(lam_over_diam=lam_over_diam, obscuration=obscuration)
        if jitter_sigma > 0:
            psf = galsim.Convolve(psf, galsim.Gaussian(sigma=jitter_sigma))
    else:
        fwhm = _nominal_fwhm(lam_over_diam, obscuration, jitter_sigma)
        if psf_model == "moffat":
            psf = galsim.Moffat(beta=psf_beta, fwhm=fwhm)
        else:
            psf = galsim.Gaussian(fwhm=fwhm)
    if psf_scale != 1.0:
        psf = psf.dilate(psf_scale)
    return psf


@functools.lru_cache(maxsize=None)
def _psf_size_ratios(band, pixel_scale, obscuration, psf_model, psf_beta):
    # FWHM and R80 (pixel included) of a non-Airy PSF relative to the band's
    # nominal one, both measured the same way on a 5x oversampled image.
    galsim = _import_galsim()
    model = band_model(band, pixel_scale=pixel_scale, obscuration=obscuration)
    pixel = galsim.Pixel(pixel_scale)
    scale = pixel_scale / _EE_OVERSAMPLE
    sizes = []
    for name in ("airy", psf_model):
        psf = model.psf(psf_model=name, psf_beta=psf_beta)
        # calculateFWHM samples the profile ("sb"), so the pixel is convolved
        # in; calculateHLR draws with pixel integration itself.
        # (GSObject.calculateHLR would return a Moffat's half-light radius
        # whatever flux_frac is, so R80 is measured on a drawn image.)
        image = psf.drawImage(nx=512, ny=512, scale=scale, dtype=float)
        sizes.append((galsim.Convolve(psf, pixel).calculateFWHM(scale=scale, size=256),
                      image.calculateHLR(center=image.true_center, flux=psf.flux,
                                         flux_frac=0.8)))
    return sizes[1][0] / sizes[0][0], sizes[1][1] / sizes[0][1]


@functools.lru_cache(maxsize=4)
def _aperture_maps(n, oversample):
    """Pixel-aperture overlap maps on an oversampled grid.

    Row k holds A_k(d): the fraction of a native pixel centred at offset d
    (the centre of an n x n grid of sub-pixels, `oversample` per native pixel,
    odd so that a native pixel is exactly oversample^2 sub-pixels) that lies in
    a circle of radius _EE_RADII[k] native pixels centred on the origin. It is
    the weight that exact-overlap aperture photometry gives that pixel.
    """
    from photutils.aperture import CircularAperture

    center = (n - 1) / 2.0
    half = oversample // 2
    maps = np.empty((_EE_RADII.size, n * n))
    for k, radius in enumerate(_EE_RADII):
        sub = CircularAperture((center, center), radius * oversample).to_mask(
            method="exact").to_image((n, n))
        # Box-sum over oversample x oversample sub-pixels: the native pixel.
        padded = np.pad(sub, half)
        csum = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        box = (csum[oversample:, oversample:] - csum[:-oversample, oversample:]
               - csum[oversample:, :-oversample] + csum[:-oversample, :-oversample])
        maps[k] = box.ravel() / oversample**2
    return maps, maps**2


def _aperture_curves(galsim, psf, pixel_scale):
    """Aperture photometry of a point source on the pixel grid, averaged over
    the source's sub-pixel position, for the radii _EE_RADII (native pixels).

    Exact-overlap aperture photometry weights pixel i by A(x_i - s) for a
    source at s. Averaging over s turns sums over pixels into integrals over
    the offset d, so with e(d) the pixel-integrated PSF (one oversampled,
    noiseless image of PSF * pixel) and A the overlap maps:

    * fraction of the light measured, f = sum e A;
    * source-noise factor, q = sum e A^2 (variance of the source's electrons
      in the aperture / its total electrons);
    * effective number of background pixels, n_eff = sum A^2 / oversample^2
      (variance of the aperture sum / per-pixel variance; less than pi r^2
      because partial pixels get weights below one).
    """
    os_ = _EE_OVERSAMPLE
    n = 2 * int(math.ceil((_EE_RADII[-1] + 1.0) * os_)) + 1
    maps, maps2 = _aperture_maps(n, os_)
    image = galsim.Convolve(psf, galsim.Pixel(pixel_scale)).drawImage(
        nx=n, ny=n, scale=pixel_scale / os_, method="no_pixel").array.ravel().astype(float)
    frac = maps @ image
    qsrc = maps2 @ image
    n_eff = maps2.sum(axis=1) / os_**2
    return frac, qsrc, n_eff


@functools.lru_cache(maxsize=64)
def _band_model_cached(band, pixel_scale, obscuration):
    galsim = _import_galsim()
    info = CSST_BAND_INFO[band]
    bandpass = _bandpass(band)
    area_cm2 = math.pi * (50.0 * SIM_APERTURE_DIAMETER) ** 2 * (1.0 - obscuration**2)
    zeropoint = float(bandpass.zeropoint) + 2.5 * math.log10(area_cm2)
    wave_eff = float(bandpass.effective_wavelength)
    lam_over_diam = wave_eff * 1e-9 / SIM_APERTURE_DIAMETER * 180.0 / math.pi * 3600.0

    def curves(sigma):
        return _aperture_curves(
            galsim, _psf_profile(galsim, lam_over_diam, obscuration, sigma), pixel_scale)

    def r80_of(sigma):
        return float(np.interp(0.8, curves(sigma)[0], _EE_RADII)) * pixel_scale

    # Solve the jitter for the table's R80 by bisection (R80 grows with sigma).
    if r80_of(0.0) >= info.r80:
        sigma = 0.0
        log.info("band %s: diffraction and pixel alone give R80 = %.3f arcsec > %.3f; "
                 "no jitter added", band, r80_of(0.0), info.r80)
    else:
        lo, hi = 0.0, info.r80
        for _ in range(16):
            mid = 0.5 * (lo + hi)
            if r80_of(mid) < info.r80:
                lo = mid
            else:
                hi = mid
        sigma = 0.5 * (lo + hi)
    frac, qsrc, n_eff = curves(sigma)
    r80 = float(np.interp(0.8, frac, _EE_RADII)) * pixel_scale

    # Optimal aperture for background-limited photometry.
    k = int(np.argmax(frac / np.sqrt(n_eff)))
    ap_radius_pix = float(_EE_RADII[k])

    psf = _psf_profile(galsim, lam_over_diam, obscuration, sigma)
    fwhm = float(galsim.Convolve(psf, galsim.Pixel(pixel_scale)).drawImage(
        nx=64, ny=64, scale=pixel_scale / 8, method="no_pixel").calculateFWHM())

    # Sky from the depth (module docstring).
    t_total = info.n_exposures * info.exptime
    electrons = 10.0 ** (-0.4 * (info.depth - zeropoint)) * t_total
    sky = (((electrons * frac[k] / 5.0) ** 2 - electrons * qsrc[k]
            - n_eff[k] * info.n_exposures * SIM_READ_NOISE**2)
           / (n_eff[k] * t_total) - SIM_DARK_CURRENT)
    if sky <= 0:
        msg = (f"band {band}: the depth {info.depth} cannot be reached with this "
               f"instrument model even without sky (pixel_scale={pixel_scale}, "
               f"obscuration={obscuration}); use a smaller obscuration or a pixel "
               f"scale closer to {CSST_PIXEL_SCALE}")
        raise ValueError(msg)
    sky_brightness = zeropoint - 2.5 * math.log10(sky / pixel_scale**2)
    return SimBand(
        name=band, pixel_scale=pixel_scale, zeropoint=zeropoint,
        throughput=SIM_THROUGHPUT[band], wave_eff=wave_eff, lam_over_diam=lam_over_diam,
        obscuration=obscuration, jitter_sigma=float(sigma), r80=r80, fwhm=fwhm,
        aperture_radius=ap_radius_pix * pixel_scale, aperture_fraction=float(frac[k]),
        aperture_source_factor=float(qsrc[k]), aperture_npix=float(n_eff[k]),
        sky_rate=float(sky), sky_brightness=sky_brightness, dark_rate=SIM_DARK_CURRENT,
        read_noise=SIM_READ_NOISE, full_well=SIM_FULL_WELL,
        n_exposures=info.n_exposures, exptime=info.exptime, depth=info.depth)


def band_model(band, *, pixel_scale=CSST_PIXEL_SCALE, obscuration=SIM_OBSCURATION):
    """
    The simulator's instrument model of one band.

    Computes the band's AB zero point from the collecting area and the
    bandpass, solves the PSF jitter for the table's 80 % encircled-energy
    radius, finds the optimal photometric aperture and solves the sky level
    that gives the table's 5-sigma point-source depth (formula in the module
    docstring). Results are cached.

    Parameters
    ----------
    band : str
        One of ``CSST_BANDS``.
    pixel_scale : float, optional
        Pixel scale in arcsec, in [0.05, 0.1].
    obscuration : float, optional
        Linear central obscuration of the pupil, in [0, 0.95]. An obscured
        pupil puts light into the Airy rings: in the red bands an obscuration
        of 0.3 alone gives an R80 0.02-0.04 arcsec above the table, and then
        no jitter is added (``r80`` tells the value reached).

    Returns
    -------
    model : `SimBand`

    Raises
    ------
    ValueError
        If ``band`` is unknown, ``pixel_scale`` is outside the supported
        [0.05, 0.1] arcsec, ``obscuration`` is outside [0, 0.95], or the depth
        cannot be reached (a large obscuration leaves too little collecting
        area for the read noise).
    ImportError
        If GalSim is not installed.
    """
    _check_bands((band,), "band")
    pixel_scale = _check_pixel_scale(pixel_scale)
    obscuration = _check_real("obscuration", obscuration, low=0.0, high=0.95)
    return _band_model_cached(band, pixel_scale, obscuration)


# ----------------------------------------------------------------------------------
# source populations


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
    # regularised lower incomplete gamma P(2n, b_n (r/r_e)^(1/n)), closed form
    # for integer 2n.
    def gammainc_int(a, x):
        term = np.ones_like(x)
        total = np.ones_like(x)
        for k in range(1, a):
            term = term * x / k
            total = total + term
        return 1.0 - np.exp(-x) * total

    with np.errstate(divide="ignore", invalid="ignore"):
        x_d = _B_EXP * radius / np.where(r_disk > 0, r_disk, 1.0)
        x_b = _B_DEV * (radius / np.where(r_bulge > 0, r_bulge, 1.0)) ** 0.25
    return (bulge_fraction * gammainc_int(8, x_b)
            + (1.0 - bulge_fraction) * gammainc_int(2, x_d))


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


def _draw_population(rng, n_stars, n_galaxies, mag_range, star_slope, galaxy_slope, *,
                     rng_var=None, size_scale=1.0, sersic_fraction=0.0):
    n = n_stars + n_galaxies
    pop = {
        "label": np.array(["star"] * n_stars + ["galaxy"] * n_galaxies),
        "mag_ref": np.concatenate([_powerlaw_mags(rng, n_stars, mag_range, star_slope),
                                   _powerlaw_mags(rng, n_galaxies, mag_range, galaxy_slope)]),
    }
    teff = np.full(n, np.nan)
    teff[:n_stars] = _star_teff(rng, n_stars)
    pop["teff"] = teff

    mag_g = pop["mag_ref"][n_stars:]
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

    def pad(values, fill):
        out = np.full(n, fill, dtype=float)
        out[n_stars:] = values
        return out

    pop["redshift"] = pad(z, np.nan)
    pop["hlr"] = pad(hlr, 0.0)
    pop["bulge_fraction"] = pad(bulge_fraction, np.nan)
    pop["bulge_hlr"] = pad(r_bulge, np.nan)
    pop["disk_hlr"] = pad(r_disk, np.nan)
    pop["g_bulge"] = pad(g_bulge, np.nan)
    pop["g_disk"] = pad(g_disk, np.nan)
    pop["ellipticity"] = pad(g_total, 0.0)
    pop["sersic_n"] = pad(sersic_n, np.nan)
    pop["beta"] = pad(beta, np.nan)
    sed = np.array(["blackbody"] * n_stars
                   + [_GALAXY_TYPES[k][0].removesuffix("_ext") for k in gtype])
    pop["sed"] = sed
    pop["_type"] = np.concatenate([np.full(n_stars, -1), gtype])
    return pop


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
        parts.append(galsim.Exponential(half_light_radius=float(pop["disk_hlr"][k]),
                                        flux=1.0 - bt).shear(g=float(pop["g_disk"][k]),
                                                             beta=beta))
    return parts[0] if len(parts) == 1 else galsim.Add(parts)


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


def _local_jacobian(galsim, wcs):
    # Intermediate world coordinates of a TAN WCS: (east, north) in arcsec.
    m = wcs.pixel_scale_matrix * 3600.0
    return galsim.JacobianWCS(m[0, 0], m[0, 1], m[1, 0], m[1, 1])


# ----------------------------------------------------------------------------------
# rendering


def _stamp_half_sizes(model, fluxes, extent, pixel_scale, psf_scale):
    # Half-size (pixels) of each object's stamp, so that the stamp holds about
    # 99 % of the light: the PSF out to 20 lambda/D (the Airy wing beyond holds
    # 2/(pi x) ~ 1 %, x = pi r D / lambda), further for bright sources, to
    # where the wing, F (lambda/D) / (pi^3 r^3) per unit area, falls below 5 %
    # of the background noise per pixel; galaxies add their own extent.
    snr = 5.0 * fluxes / model.depth_flux
    sigma_pix = math.sqrt(model.background_variance)
    lod = model.lam_over_diam * psf_scale
    r_wing = np.cbrt(fluxes * lod * pixel_scale**2 / (math.pi**3 * 0.05 * sigma_pix))
    r_psf = np.maximum(20.0 * lod, r_wing)
    radius = np.hypot(r_psf, extent)
    return np.clip(np.ceil(radius / pixel_scale), 8, 256).astype(int), snr


def _render(galsim, shape, wcs, psf, profiles, fluxes, x, y, half):
    """Expected source count rate (e-/s per pixel) of the objects in one band.

    ``profiles[k]`` is None for a point source. Objects are drawn into their own
    stamps and added where the stamp overlaps the image.
    """
    ny, nx = shape
    jac = _local_jacobian(galsim, wcs)
    full = galsim.ImageD(galsim.BoundsI(0, nx - 1, 0, ny - 1), wcs=jac)
    n_drawn = 0
    for k in range(len(fluxes)):
        h = int(half[k])
        ix, iy = int(math.floor(x[k] + 0.5)), int(math.floor(y[k] + 0.5))
        bounds = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h)
        overlap = bounds & full.bounds
        if not overlap.isDefined():
            continue
        obj = psf if profiles[k] is None else galsim.Convolve(profiles[k], psf)
        stamp = galsim.ImageD(bounds, wcs=jac)
        obj.withFlux(float(fluxes[k])).drawImage(image=stamp,
                                                 offset=(x[k] - ix, y[k] - iy))
        full[overlap] += stamp[overlap]
        n_drawn += 1
    return full.array, n_drawn


def _observe(model, source_rate, rng, *, subtract_sky):
    """Noise, saturation and calibration of one band: returns (data, mask)."""
    t_total = model.total_exptime
    background = model.sky_rate + model.dark_rate
    expected = (source_rate + background) * t_total
    counts = rng.poisson(expected).astype(float)
    counts += rng.normal(0.0, math.sqrt(model.n_exposures) * model.read_noise,
                         source_rate.shape)
    data = counts / t_total
    offset = background if subtract_sky else model.dark_rate
    data -= offset
    saturated = (source_rate + background) * model.exptime > model.full_well
    data[saturated] = model.full_well / model.exptime - offset
    return data.astype(np.float32), saturated


def _band_header(model, band, *, psf_scale, psf_model, psf_beta, subtract_sky):
    fwhm, r80 = model.psf_size(psf_scale=psf_scale, psf_model=psf_model, psf_beta=psf_beta)
    offset = model.sky_rate + model.dark_rate if subtract_sky else model.dark_rate
    header = fits.Header()
    cards = [
        ("FILTER", band, "CSST-like band"),
        ("BUNIT", "electron/s", "image unit"),
        ("EXPTIME", model.total_exptime, "[s] total exposure time"),
        ("NEXPOSE", model.n_exposures, "number of exposures"),
        ("EXPTIME1", model.exptime, "[s] time of one exposure"),
        ("GAIN", 1.0, "[e-/ADU] image is in electrons (per second)"),
        ("RDNOISE", model.read_noise, "[e-] read noise per exposure"),
        ("DARKCUR", model.dark_rate, "[e-/s/pix] dark current (subtracted)"),
        ("FULLWELL", model.full_well, "[e-] full well per exposure"),
        ("SATURATE", model.full_well / model.exptime - offset, "[e-/s] saturation level"),
        ("MAGZERO", model.zeropoint, "AB mag of 1 e-/s"),
        ("SKYLEVEL", model.sky_rate, "[e-/s/pix] sky level"),
        ("SKYSB", model.sky_brightness, "[AB mag/arcsec2] sky surface brightness"),
        ("SKYSUB", bool(subtract_sky), "sky subtracted from the image"),
        ("PIXSCALE", model.pixel_scale, "[arcsec] pixel scale"),
        ("PSFR80", r80, "[arcsec] PSF 80% encircled-energy radius"),
        ("PSFFWHM", fwhm, "[arcsec] PSF FWHM (with pixel)"),
        ("PSFSCALE", psf_scale, "PSF dilation factor"),
        ("PSFMODEL", psf_model, "PSF family: airy (x jitter), moffat or gaussian"),
        ("PSFBETA", psf_beta, "Moffat index (PSFMODEL = moffat)"),
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


def _seed_stream(seed):
    rng = np.random.default_rng(seed)
    # Streams: catalog, WCS, noise, and the optional variations (a fourth
    # child, so that the first three, and the default field, stay as before).
    return rng.spawn(4)


def _scaled_exposure(model, exptime_scale):
    # The band with every exposure lengthened by exptime_scale; the design
    # depth moves as for a sky-limited point source, 1.25 log10(scale).
    if exptime_scale == 1.0:
        return model
    return replace(model, exptime=model.exptime * exptime_scale,
                   depth=model.depth + 1.25 * math.log10(exptime_scale))


def simulate_field(*, shape=(1024, 1024), n_stars=None, n_galaxies=None,
                   density=SIM_DENSITY, star_fraction=SIM_STAR_FRACTION,
                   mag_range=(17.0, 26.0), bands=CSST_BANDS, pixel_scale=CSST_PIXEL_SCALE,
                   ra=150.0, dec=2.0, wcs_jitter=0.0, rotation_jitter=0.0,
                   psf_scale=1.0, psf_model="airy", psf_beta=3.0,
                   obscuration=SIM_OBSCURATION, exptime_scale=1.0,
                   galaxy_size_scale=1.0, sersic_fraction=0.0, colour_scatter=0.0,
                   star_slope=SIM_STAR_COUNT_SLOPE, galaxy_slope=SIM_GALAXY_COUNT_SLOPE,
                   subtract_sky=True, seed=None):
    """
    Simulate a CSST-like multi-band field of stars and galaxies.

    Sources are placed uniformly at random on the sky over the footprint of
    the nominal (unjittered) pixel grid and drawn into each band through that
    band's own WCS. Magnitudes in the reference band (r) follow power-law
    number counts between ``mag_range``; other bands follow from each
    object's SED. See the module docstring for the physical model.

    Parameters
    ----------
    shape : tuple of int, optional
        Image shape ``(ny, nx)`` of every band.
    n_stars, n_galaxies : int or None, optional
        Numbers of stars and galaxies. ``None`` derives them from ``density``
        and ``star_fraction`` over the field's area.
    density : float, optional
        Sources (stars + galaxies) per square arcminute, used when a count is
        ``None``.
    star_fraction : float, optional
        Fraction of stars among the sources when counts come from ``density``;
        the default is the paper's 32,371 : 93,525.
    mag_range : tuple of float, optional
        ``(bright, faint)`` AB magnitude range in the r band.
    bands : sequence of str, optional
        Bands to simulate, a subset of ``CSST_BANDS``.
    pixel_scale : float, optional
        Pixel scale, arcsec, in [0.05, 0.1].
    ra, dec : float, optional
        Field centre, degrees.
    wcs_jitter : float, optional
        Standard deviation (arcsec) of a random pointing offset given to each
        band's WCS, so that bands are not pixel-aligned.
    rotation_jitter : float, optional
        Standard deviation (degrees) of a random rotation of each band's WCS.
    psf_scale : float, optional
        Factor by which every band's PSF is dilated. The sky is calibrated for
        the nominal PSF, so a larger PSF gives shallower depths, as on a real
        telescope.
    psf_model : {"airy", "moffat", "gaussian"}, optional
        PSF family (`PSF_MODELS`): the diffraction-limited default, or a
        Moffat or Gaussian with the nominal PSF's FWHM (then dilated by
        ``psf_scale``), to test or train against other simulators' PSFs.
    psf_beta : float, optional
        Moffat index (> 1.1) when ``psf_model="moffat"``; smaller values give
        stronger wings.
    obscuration : float, optional
        Linear central obscuration of the pupil (0 for CSST's off-axis design;
        see `band_model` for its effect on the PSF).
    exptime_scale : float, optional
        Factor on every exposure's time: 4 gives about 0.75 mag deeper images
        (sky-limited), 0.25 about 0.75 mag shallower. Header depths follow.
    galaxy_size_scale : float, optional
        Factor on every galaxy's half-light radius (the size-magnitude
        relation's normalisation).
    sersic_fraction : float, optional
        Fraction of galaxies drawn as one Sersic profile (index from
        0.5 to 4) instead of a de Vaucouleurs bulge plus exponential disk.
    colour_scatter : float, optional
        Standard deviation (mag) of independent Gaussian offsets added to
        every source's magnitude in each band other than r: colours scattered
        off the templates' and blackbodies' loci.
    star_slope, galaxy_slope : float, optional
        Slopes d log10 N / dm of the star and galaxy number counts.
    subtract_sky : bool, optional
        Subtract the (known) sky level, as calibrated L1 images are. The dark
        current is always subtracted.
    seed : int, `numpy.random.Generator` or None, optional
        Seed of `numpy.random.default_rng`. The same seed gives identical
        images and truth. GalSim draws noiseless profiles (no photon shooting),
        so all randomness comes from this generator.

    Returns
    -------
    images : dict of str to `~astropy.nddata.CCDData`
        One image per band (in ``bands`` order), float32 in e-/s, with a TAN
        ``wcs``, ``uncertainty`` as `~astropy.nddata.InverseVariance` of the
        background noise (CSST L1 ``wht``), ``mask`` True on saturated pixels,
        and header keywords ``FILTER``, ``BUNIT``, ``EXPTIME`` (total),
        ``MAGZERO`` (AB zero point of 1 e-/s), ``GAIN``, ``RDNOISE``,
        ``SATURATE``, ``SKYLEVEL``, ``PSFR80``, ``PSFFWHM`` and others.
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
        name: ``blackbody`` or the CWW template).
        ``meta`` holds the simulation parameters. Faint galaxies are small: at
        r = 25 about half have half-light radii of 0.1-0.2 arcsec.

    Raises
    ------
    ValueError
        If a parameter is invalid; the message names it.
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
    shape = _check_shape(shape)
    n_stars = _check_count("n_stars", n_stars)
    n_galaxies = _check_count("n_galaxies", n_galaxies)
    density = _check_real("density", density, low=0.0)
    star_fraction = _check_real("star_fraction", star_fraction, low=0.0, high=1.0)
    try:
        m_lo, m_hi = (float(m) for m in mag_range)
        ok = math.isfinite(m_lo) and math.isfinite(m_hi) and m_lo < m_hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        msg = (f"mag_range must be a (bright, faint) pair of finite magnitudes with "
               f"bright < faint, got {mag_range!r}; e.g. mag_range=(17.0, 26.0)")
        raise ValueError(msg)
    bands = _check_bands(bands)
    pixel_scale = _check_pixel_scale(pixel_scale)
    ra = _check_real("ra", ra, low=0.0, high=360.0)
    dec = _check_real("dec", dec, low=-89.0, high=89.0)
    wcs_jitter = _check_real("wcs_jitter", wcs_jitter, low=0.0)
    rotation_jitter = _check_real("rotation_jitter", rotation_jitter, low=0.0)
    psf_scale = _check_real("psf_scale", psf_scale, low=0.0, low_open=True)
    if psf_model not in PSF_MODELS:
        msg = f"psf_model must be one of {PSF_MODELS}, got {psf_model!r}"
        raise ValueError(msg)
    psf_beta = _check_real("psf_beta", psf_beta, low=1.1, hint="; e.g. psf_beta=3.0")
    exptime_scale = _check_real("exptime_scale", exptime_scale, low=0.0, low_open=True)
    galaxy_size_scale = _check_real("galaxy_size_scale", galaxy_size_scale, low=0.0,
                                    low_open=True)
    sersic_fraction = _check_real("sersic_fraction", sersic_fraction, low=0.0, high=1.0)
    colour_scatter = _check_real("colour_scatter", colour_scatter, low=0.0)
    obscuration = _check_real("obscuration", obscuration, low=0.0, high=0.95)
    star_slope = _check_real("star_slope", star_slope)
    galaxy_slope = _check_real("galaxy_slope", galaxy_slope)
    if not isinstance(subtract_sky, (bool, np.bool_)):
        msg = f"subtract_sky must be True or False, got {subtract_sky!r}"
        raise ValueError(msg)

    galsim = _import_galsim()
    t_start = time.perf_counter()
    rng_cat, rng_wcs, rng_noise, rng_var = _seed_stream(seed)

    area = shape[0] * shape[1] * (pixel_scale / 60.0) ** 2
    n_total = int(round(density * area))
    n_star_default = int(round(star_fraction * n_total))
    if n_stars is None:
        n_stars = n_star_default
    if n_galaxies is None:
        n_galaxies = n_total - n_star_default

    models = {b: _scaled_exposure(band_model(b, pixel_scale=pixel_scale,
                                             obscuration=obscuration), exptime_scale)
              for b in bands}
    mag_bands = bands if SIM_REFERENCE_BAND in bands else (*bands, SIM_REFERENCE_BAND)

    pop = _draw_population(rng_cat, n_stars, n_galaxies, (m_lo, m_hi), star_slope,
                           galaxy_slope, rng_var=rng_var, size_scale=galaxy_size_scale,
                           sersic_fraction=sersic_fraction)
    n = n_stars + n_galaxies
    ny, nx = shape
    base = _base_wcs(shape, pixel_scale, ra, dec)
    x_ref = rng_cat.uniform(-0.5, nx - 0.5, n)
    y_ref = rng_cat.uniform(-0.5, ny - 0.5, n)
    src_ra, src_dec = base.all_pix2world(x_ref, y_ref, 0)
    src_ra = np.mod(src_ra, 360.0)
    mags = _population_mags(galsim, pop, mag_bands)
    if colour_scatter > 0:
        scatter = rng_var.normal(0.0, colour_scatter, mags.shape)
        scatter[:, mag_bands.index(SIM_REFERENCE_BAND)] = 0.0
        mags = mags + scatter

    truth = Table()
    truth["id"] = np.arange(n, dtype=np.int64)
    truth["label"] = pop["label"].astype("U6")
    truth["ra"] = src_ra
    truth["dec"] = src_dec
    truth["ra"].unit = truth["dec"].unit = u.deg

    profiles = [None] * n_stars + [_galaxy_profile(galsim, pop, k)
                                   for k in range(n_stars, n)]
    # Radius holding ~99 % of a galaxy's light: 6 disk half-light radii
    # (99.9 % of an exponential), 15 bulge ones (98 % of a de Vaucouleurs).
    extent = np.fmax(6.0 * np.nan_to_num(pop["disk_hlr"]) * (pop["bulge_fraction"] < 1),
                     15.0 * np.nan_to_num(pop["bulge_hlr"]) * (pop["bulge_fraction"] > 0))
    # Single Sersic: (4 + 3 n) half-light radii (7 for n = 1, 16 for n = 4).
    extent = np.fmax(extent, np.nan_to_num((4.0 + 3.0 * pop["sersic_n"]) * pop["hlr"]))
    bands_wcs = {b: _jittered_wcs(base, rng_wcs, wcs_jitter, rotation_jitter)
                 for b in bands}
    noise_rngs = dict(zip(bands, rng_noise.spawn(len(bands))))

    images = {}
    n_renders = 0
    for b in bands:
        model = models[b]
        wcs = bands_wcs[b]
        x, y = wcs.all_world2pix(src_ra, src_dec, 0)
        truth[f"x_{b}"] = x
        truth[f"y_{b}"] = y
        mag_b = mags[:, mag_bands.index(b)]
        flux = 10.0 ** (-0.4 * (mag_b - model.zeropoint))
        half, snr = _stamp_half_sizes(model, flux, extent, pixel_scale, psf_scale)
        # Objects far below the noise (S/N < 0.02) are not drawn; they stay in truth.
        draw = np.flatnonzero(snr >= 0.02)
        psf = model.psf(psf_scale=psf_scale, psf_model=psf_model, psf_beta=psf_beta)
        rate, n_drawn = _render(galsim, shape, wcs, psf, [profiles[k] for k in draw],
                                flux[draw], x[draw], y[draw], half[draw])
        n_renders += n_drawn
        data, mask = _observe(model, rate, noise_rngs[b], subtract_sky=subtract_sky)
        ivar = np.full(shape, 1.0 / model.background_variance, dtype=np.float32)
        images[b] = CCDData(data, unit=u.electron / u.s, wcs=wcs, mask=mask,
                            uncertainty=InverseVariance(ivar),
                            meta=_band_header(model, b, psf_scale=psf_scale,
                                              psf_model=psf_model, psf_beta=psf_beta,
                                              subtract_sky=subtract_sky))

    for b in mag_bands:
        truth[f"mag_{b}"] = mags[:, mag_bands.index(b)]
    for b in bands:
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
    truth.meta.update({
        "simulator": "astro_starglx.simulate (CSST-like, not the official CSST simulation)",
        "shape": list(shape), "bands": list(bands), "pixel_scale": pixel_scale,
        "ra": ra, "dec": dec, "n_stars": n_stars, "n_galaxies": n_galaxies,
        "mag_range": [m_lo, m_hi], "reference_band": SIM_REFERENCE_BAND,
        "star_slope": star_slope, "galaxy_slope": galaxy_slope,
        "wcs_jitter": wcs_jitter, "rotation_jitter": rotation_jitter,
        "psf_scale": psf_scale, "psf_model": psf_model, "psf_beta": psf_beta,
        "obscuration": obscuration, "exptime_scale": exptime_scale,
        "galaxy_size_scale": galaxy_size_scale, "sersic_fraction": sersic_fraction,
        "colour_scatter": colour_scatter,
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
    })
    elapsed = time.perf_counter() - t_start
    log.info("simulated %d sources in %d bands (%d stamps) in %.2f s", n, len(bands),
             n_renders, elapsed)
    return images, truth


# ----------------------------------------------------------------------------------
# injection


_REQUIRED_KEYS = ("FILTER", "EXPTIME", "EXPTIME1", "MAGZERO", "PIXSCALE", "PSFSCALE",
                  "OBSCURAT", "FULLWELL", "SKYLEVEL", "DARKCUR", "SKYSUB")


def inject_point_sources(images, ra, dec, mag, *, seed=None):
    """
    Add point sources to images made by `simulate_field`.

    Each source is drawn with the band's PSF (from the image header) at its
    sky position through the band's WCS, with the Poisson noise of its own
    electrons, so that the result is what `simulate_field` would have made
    with the sources in the field. Pixels pushed over the full well are masked
    and clipped.

    Parameters
    ----------
    images : mapping of str to `~astropy.nddata.CCDData`
        Images from `simulate_field` (their headers describe the instrument).
        Not modified.
    ra, dec : array-like of float
        Sky positions, degrees, shape ``(N,)``.
    mag : float, array-like or mapping of str to array-like
        AB magnitudes: one value for all, ``(N,)`` for all bands, or
        ``{band: (N,)}`` per band (every band of ``images``).
    seed : int, `numpy.random.Generator` or None, optional
        Seed of the Poisson noise.

    Returns
    -------
    images : dict of str to `~astropy.nddata.CCDData`
        New images with the sources added.
    injected : `~astropy.table.Table`
        ``ra``, ``dec``, ``x_<band>``, ``y_<band>``, ``mag_<band>``,
        ``flux_<band>`` (e-/s) of each source.

    Raises
    ------
    ValueError
        If the images lack the simulator's header keywords or the inputs
        have inconsistent shapes.
    ImportError
        If GalSim is not installed.
    """
    if not isinstance(images, Mapping) or not images:
        msg = (f"images must be a non-empty mapping {{band: CCDData}} from simulate_field, "
               f"got {type(images).__name__}")
        raise ValueError(msg)
    for band, image in images.items():
        missing = [k for k in _REQUIRED_KEYS if k not in getattr(image, "meta", {})]
        if missing:
            msg = (f"images[{band!r}] lacks the header keywords {missing}; "
                   "inject_point_sources needs images made by simulate_field")
            raise ValueError(msg)
        _check_bands((image.meta["FILTER"],), f"images[{band!r}].meta['FILTER']")
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    if ra.ndim != 1 or ra.shape != dec.shape:
        msg = f"ra and dec must be 1-d arrays of one length, got shapes {ra.shape}, {dec.shape}"
        raise ValueError(msg)
    if isinstance(mag, Mapping):
        absent = [b for b in images if b not in mag]
        if absent:
            msg = f"mag has no magnitudes for bands {absent}; give one array per band"
            raise ValueError(msg)
        mags = {b: np.broadcast_to(np.asarray(mag[b], dtype=float), ra.shape)
                for b in images}
    else:
        try:
            arr = np.broadcast_to(np.asarray(mag, dtype=float), ra.shape)
        except ValueError:
            msg = f"mag must be a scalar or have the shape of ra {ra.shape}"
            raise ValueError(msg) from None
        mags = {b: arr for b in images}

    galsim = _import_galsim()
    rng = np.random.default_rng(seed)
    band_rngs = dict(zip(images, rng.spawn(len(images))))
    out = {}
    table = Table({"ra": ra, "dec": dec})
    for band, image in images.items():
        hdr = image.meta
        model = band_model(hdr["FILTER"], pixel_scale=float(hdr["PIXSCALE"]),
                           obscuration=float(hdr["OBSCURAT"]))
        psf_scale = float(hdr["PSFSCALE"])
        psf_kw = {"psf_scale": psf_scale, "psf_model": str(hdr.get("PSFMODEL", "airy")),
                  "psf_beta": float(hdr.get("PSFBETA", 3.0))}
        x, y = image.wcs.all_world2pix(ra, dec, 0)
        flux = 10.0 ** (-0.4 * (mags[band] - float(hdr["MAGZERO"])))
        half, _ = _stamp_half_sizes(model, flux, np.zeros_like(flux), model.pixel_scale,
                                    psf_scale)
        rate, _ = _render(galsim, image.data.shape, image.wcs,
                          model.psf(**psf_kw), [None] * ra.size, flux, x, y, half)
        t_total = float(hdr["EXPTIME"])
        # FFT-drawn profiles (Moffat) ring at the 1e-9 level: clip below zero.
        added = band_rngs[band].poisson(np.clip(rate, 0.0, None) * t_total) / t_total
        data = image.data.astype(float) + added
        background = float(hdr["SKYLEVEL"]) + float(hdr["DARKCUR"])
        offset = background if hdr["SKYSUB"] else float(hdr["DARKCUR"])
        per_exposure = (data + offset) * float(hdr["EXPTIME1"])
        mask = np.zeros(data.shape, bool) if image.mask is None else image.mask.copy()
        newly = (per_exposure > float(hdr["FULLWELL"])) & (rate > 0)
        mask |= newly
        data[newly] = float(hdr["FULLWELL"]) / float(hdr["EXPTIME1"]) - offset
        uncertainty = None if image.uncertainty is None else image.uncertainty.__class__(
            np.array(image.uncertainty.array, copy=True))
        out[band] = CCDData(data.astype(image.data.dtype), unit=image.unit,
                            wcs=image.wcs.deepcopy(), mask=mask, uncertainty=uncertainty,
                            meta=image.meta.copy())
        table[f"x_{band}"] = x
        table[f"y_{band}"] = y
        table[f"mag_{band}"] = mags[band]
        table[f"flux_{band}"] = flux
    return out, table
