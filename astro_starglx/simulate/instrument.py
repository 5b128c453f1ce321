r"""
The simulator's instrument: bands, bandpasses, PSF, noise and drawing.

What it models, and how:

* the instrument numbers of `astro_starglx.csst` (band ranges, exposures,
  5-sigma point-source depths, PSF 80 % encircled-energy radii), a 2 m
  aperture, 0.074 arcsec pixels, read noise 5 e-, dark current 0.02 e-/s and
  a 90 ke- full well;
* each band's bandpass as a smooth top hat over its range
  (`~astro_starglx.simulate.csst_bandpass`) whose plateau is the band's total
  system throughput `~astro_starglx.simulate.SIM_THROUGHPUT`;
* a PSF per band: the diffraction pattern of the 2 m pupil (`galsim.Airy`,
  with an optional central obscuration; CSST itself is an off-axis design
  without one) convolved with a Gaussian pointing jitter whose width is
  solved for so that the 80 % encircled-energy radius measured on the image
  equals the band's ``r80``; or a Moffat or Gaussian with the same FWHM
  (`~astro_starglx.simulate.PSF_MODELS`); any of them dilated by a factor;
* the sky level of each band solved *analytically* from the depth table (see
  `~astro_starglx.simulate.band_model`), so that the 5-sigma point-source
  depths match the table;
* Poisson noise of sky, dark current and sources, Gaussian read noise per
  exposure, and saturation at the full well.

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
`~astro_starglx.simulate.SIM_THROUGHPUT`, and :math:`A_{eff} = \pi (D/2)^2 (1 - \epsilon^2)` for a
pupil of diameter :math:`D` with central obscuration :math:`\epsilon`.

With the throughputs of `~astro_starglx.simulate.SIM_THROUGHPUT` the solved sky is 18.2-21.2 AB
mag/arcsec\ :sup:`2`, brighter than the real zodiacal sky at these
wavelengths: for an otherwise ideal instrument (no flat-field, PSF or
background systematics) the table's depths are conservative. The simulator
reproduces the noise that sets the depths, not the sky brightness itself.

Exposure time and depth
-----------------------
``exptime_scale`` lengthens every exposure (their number is kept). The depth
then follows from the same S/N formula, solved for :math:`F_5` with the
band's sky: :math:`F_5 = [b + \sqrt{b^2 + 4 a c}] / (2 a)` with :math:`a =
(f T)^2`, :math:`b = 25 q T` and :math:`c = 25 n_{eff} [(B + D) T + N
\sigma_{RN}^2]`. The read noise, 8-35 % of the background variance at the
nominal exposures, does not grow with the exposure time, so the depth moves
faster than the sky-limited :math:`1.25 \log_{10}` of the scale (4 times
the exposure: 0.80-0.96 mag deeper, not 0.75). `~astro_starglx.simulate.exptime_scale_for_depth`
inverts the mapping; for the CSST table:

==========  =======  =======  =======  =======  =======  =======  =======
depth       NUV      u        g        r        i        z        y
==========  =======  =======  =======  =======  =======  =======  =======
-1.0 mag    0.237    0.236    0.257    0.262    0.305    0.244    0.218
-0.5 mag    0.469    0.469    0.490    0.495    0.538    0.476    0.450
+0.25 mag   1.498    1.496    1.468    1.461    1.397    1.486    1.523
+0.5 mag    2.274    2.269    2.189    2.171    1.987    2.242    2.343
==========  =======  =======  =======  =======  =======  =======  =======

(``exptime_scale`` giving each change of the 5-sigma depth), so
``exptime_scale`` from 0.22 to 2.35 spans depths from 1 mag shallower to
0.5 mag deeper than the table.
"""

import functools
import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from .._optional import import_optional
from .._validation import check_real
from ..csst import CSST_BAND_INFO, CSST_BANDS, CSST_PIXEL_SCALE

__all__ = [
    "SimBand",
    "band_model",
    "csst_bandpass",
    "exptime_scale_for_depth",
    "SIM_APERTURE_DIAMETER",
    "SIM_OBSCURATION",
    "SIM_THROUGHPUT",
    "SIM_READ_NOISE",
    "SIM_DARK_CURRENT",
    "SIM_FULL_WELL",
    "PSF_MODELS",
]

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

#: PSF families `simulate_field` can draw: the diffraction-limited default
#: (``"airy"``, an Airy pattern convolved with Gaussian jitter) and two
#: analytic stand-ins of other simulators and ground-like optics, each given
#: the FWHM of the band's nominal PSF before ``psf_scale`` dilates it.
PSF_MODELS = ("airy", "moffat", "gaussian")

# Softness of the top-hat edges (tanh width, nm) and the wavelength grid of
# the bandpass lookup tables.
_EDGE_WIDTH = 4.0
_WAVE_GRID = np.arange(200.0, 1200.5, 0.5)

# PSF encircled-energy grid: oversampling and radii (native pixels).
_EE_OVERSAMPLE = 5
_EE_RADII = np.arange(0.4, 7.0001, 0.05)


def _import_galsim():
    return import_optional("galsim", "sim", feature="the simulator")


# ----------------------------------------------------------------------------------
# validation of instrument parameters (public boundary only)


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
    # With much finer pixels than CSST's, read noise alone exceeds the depths'
    # noise budget. Coarser pixels, up to ground-based surveys' (SDSS 0.396"),
    # are simulated with the PSF dilated to the survey's seeing
    # (SimConfig.preset("sdss")); the depths then follow the noise model.
    return check_real("pixel_scale", pixel_scale, low=0.05, high=0.5,
                      hint=" arcsec; CSST's is 0.074, SDSS's 0.396")


def _check_obscuration(obscuration):
    return check_real("obscuration", obscuration, low=0.0, high=0.95)


# ----------------------------------------------------------------------------------
# bandpasses


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

    Raises
    ------
    ValueError
        If ``band`` is unknown.
    ImportError
        If GalSim is not installed.
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


# ----------------------------------------------------------------------------------
# the band model


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
        5-sigma point-source depth, AB mag: the table's, or for lengthened
        exposures the depth the noise model gives (module docstring).
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

    def psf(self, *, psf_scale=1.0, psf_model="airy", psf_beta=3.0, psf_ellipticity=0.0,
            psf_angle=0.0):
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
        psf_ellipticity : float, optional
            Ellipticity of the PSF, ``(a**2 - b**2) / (a**2 + b**2)`` (the
            second-moment definition that `astro_starglx.features` measures),
            applied as an area-preserving shear after the dilation, so the
            geometric-mean size is unchanged.
        psf_angle : float, optional
            Angle of the PSF's major axis, degrees counter-clockwise from the
            profile's first axis (east, in the simulator's world coordinates).

        Returns
        -------
        psf : `galsim.GSObject`
            Unit-flux profile in arcsec.
        """
        return _psf_profile(_import_galsim(), self.lam_over_diam, self.obscuration,
                            self.jitter_sigma, psf_scale, psf_model, psf_beta,
                            psf_ellipticity, psf_angle)

    def psf_size(self, *, psf_scale=1.0, psf_model="airy", psf_beta=3.0):
        """
        FWHM and 80 % encircled-energy radius of a PSF, pixel included.

        Both are measured on the PSF drawn (dilated, then convolved with the
        pixel), not scaled from the nominal one: the pixel does not dilate.

        Parameters
        ----------
        psf_scale, psf_model, psf_beta
            As for `psf`.

        Returns
        -------
        fwhm, r80 : float
            Arcsec. For the nominal PSF these are ``fwhm`` and ``r80``.
        """
        if psf_model == "airy" and psf_scale == 1.0:
            return self.fwhm, self.r80
        key = (self.name, self.pixel_scale, self.obscuration, psf_model, float(psf_beta),
               float(psf_scale))
        return _measured_fwhm(*key), _measured_r80(*key)


def _psf_profile(galsim, lam_over_diam, obscuration, jitter_sigma, psf_scale=1.0,
                 psf_model="airy", psf_beta=3.0, psf_ellipticity=0.0, psf_angle=0.0):
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
    if psf_ellipticity > 0.0:
        # GalSim's e is the distortion (a^2 - b^2) / (a^2 + b^2); a shear keeps the area
        psf = psf.shear(e=psf_ellipticity, beta=psf_angle * galsim.degrees)
    return psf


@functools.lru_cache(maxsize=None)
def _nominal_fwhm(lam_over_diam, obscuration, jitter_sigma):
    # FWHM of the (pixel-free) Airy x jitter profile, measured on a fine grid.
    galsim = _import_galsim()
    psf = _psf_profile(galsim, lam_over_diam, obscuration, jitter_sigma)
    return float(psf.calculateFWHM(scale=lam_over_diam / 20.0, size=400))


def _fwhm_with_pixel(galsim, psf, pixel_scale, psf_scale=1.0):
    # FWHM of PSF x pixel on an 8x oversampled grid; the grid is 64 native
    # pixels wide at psf_scale <= 1 (the nominal measurement) and grows with it.
    n = 64 * max(1, math.ceil(psf_scale))
    return float(galsim.Convolve(psf, galsim.Pixel(pixel_scale)).drawImage(
        nx=n, ny=n, scale=pixel_scale / 8, method="no_pixel").calculateFWHM())


@functools.lru_cache(maxsize=256)
def _measured_fwhm(band, pixel_scale, obscuration, psf_model, psf_beta, psf_scale):
    galsim = _import_galsim()
    model = band_model(band, pixel_scale=pixel_scale, obscuration=obscuration)
    psf = model.psf(psf_scale=psf_scale, psf_model=psf_model, psf_beta=psf_beta)
    return _fwhm_with_pixel(galsim, psf, pixel_scale, psf_scale)


@functools.lru_cache(maxsize=256)
def _measured_r80(band, pixel_scale, obscuration, psf_model, psf_beta, psf_scale):
    # R80 as the band model measures the nominal one: exact-overlap aperture
    # photometry averaged over sub-pixel positions, out to 7 pixels.
    galsim = _import_galsim()
    model = band_model(band, pixel_scale=pixel_scale, obscuration=obscuration)
    psf = model.psf(psf_scale=psf_scale, psf_model=psf_model, psf_beta=psf_beta)
    frac = _aperture_curves(galsim, psf, pixel_scale)[0]
    if frac[-10] >= 0.8:
        return float(np.interp(0.8, frac, _EE_RADII)) * pixel_scale
    # Wider (strong Moffat wings): the same quantity is the encircled energy
    # of PSF x pixel x pixel (the pixel integrates the light, the overlap
    # weights it once more), measured on an image 102 native pixels wide per
    # unit of dilation, relative to the nominal PSF measured alike so that
    # the grid's discreteness (~1 %) cancels. (GSObject.calculateHLR would
    # return a Moffat's half-light radius whatever flux_frac is.)
    pixel = galsim.Pixel(pixel_scale)
    n = 512 * max(1, math.ceil(psf_scale))
    sizes = []
    for profile in (model.psf(), psf):
        image = galsim.Convolve(profile, pixel, pixel).drawImage(
            nx=n, ny=n, scale=pixel_scale / _EE_OVERSAMPLE, method="no_pixel", dtype=float)
        sizes.append(image.calculateHLR(center=image.true_center, flux=profile.flux,
                                        flux_frac=0.8))
    return float(model.r80 * sizes[1] / sizes[0])


def _psf_fwhm_curve(model, scales, *, psf_model="airy", psf_beta=3.0):
    """FWHM (arcsec, pixel included) of ``model``'s PSF at each dilation in
    ``scales``: measured on a grid of dilations 0.05 apart and interpolated
    linearly (the FWHM is smooth in the dilation: the interpolation error is
    below 1e-5 arcsec, under the measurement's own grid of 1/8 pixel)."""
    scales = np.asarray(scales, dtype=float)
    if scales.size == 0:
        return np.empty(scales.shape)
    lo, hi = float(scales.min()), float(scales.max())
    grid = np.linspace(lo, hi, max(2, math.ceil((hi - lo) / 0.05) + 1))
    fwhm = [_measured_fwhm(model.name, model.pixel_scale, model.obscuration, psf_model,
                           float(psf_beta), float(s)) for s in grid]
    return np.interp(scales, grid, fwhm)


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


def _solve_jitter(band, r80_of, target):
    # The jitter that gives the table's R80, by bisection (R80 grows with sigma).
    if r80_of(0.0) >= target:
        log.info("band %s: diffraction and pixel alone give R80 = %.3f arcsec > %.3f; "
                 "no jitter added", band, r80_of(0.0), target)
        return 0.0
    lo, hi = 0.0, target
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        if r80_of(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


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

    sigma = _solve_jitter(band, r80_of, info.r80)
    frac, qsrc, n_eff = curves(sigma)
    r80 = float(np.interp(0.8, frac, _EE_RADII)) * pixel_scale

    # Optimal aperture for background-limited photometry.
    k = int(np.argmax(frac / np.sqrt(n_eff)))
    ap_radius_pix = float(_EE_RADII[k])
    fwhm = _fwhm_with_pixel(galsim, _psf_profile(galsim, lam_over_diam, obscuration, sigma),
                            pixel_scale)

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
        Pixel scale in arcsec, in [0.05, 0.5].
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
        [0.05, 0.5] arcsec, ``obscuration`` is outside [0, 0.95], or the depth
        cannot be reached (a large obscuration leaves too little collecting
        area for the read noise).
    ImportError
        If GalSim is not installed.
    """
    _check_bands((band,), "band")
    pixel_scale = _check_pixel_scale(pixel_scale)
    obscuration = _check_obscuration(obscuration)
    return _band_model_cached(band, pixel_scale, obscuration)


# ----------------------------------------------------------------------------------
# exposure time and depth


def _noise_model_depth(model, exptime):
    # 5-sigma depth (AB) of the band with exposures of `exptime` seconds each,
    # from the S/N formula of the module docstring solved for the flux.
    t = model.n_exposures * exptime
    var = (model.sky_rate + model.dark_rate) * t + model.n_exposures * model.read_noise**2
    a = (model.aperture_fraction * t) ** 2
    b = 25.0 * model.aperture_source_factor * t
    c = 25.0 * model.aperture_npix * var
    flux = (b + math.sqrt(b * b + 4.0 * a * c)) / (2.0 * a)
    return model.zeropoint - 2.5 * math.log10(flux)


def _scaled_exposure(model, exptime_scale):
    # The band with every exposure lengthened by exptime_scale; the design
    # depth moves as the noise model says (module docstring).
    if exptime_scale == 1.0:
        return model
    shift = (_noise_model_depth(model, model.exptime * exptime_scale)
             - _noise_model_depth(model, model.exptime))
    return replace(model, exptime=model.exptime * exptime_scale, depth=model.depth + shift)


def exptime_scale_for_depth(depth_change, *, band="r", pixel_scale=CSST_PIXEL_SCALE,
                            obscuration=SIM_OBSCURATION):
    """
    The ``exptime_scale`` that moves a band's 5-sigma depth by ``depth_change``.

    Inverts the noise model (module docstring): positive changes are deeper
    images (longer exposures), negative ones shallower.

    Parameters
    ----------
    depth_change : float
        Change of the 5-sigma point-source depth, mag, in [-3, 3].
    band : str, optional
        Band whose depth is matched.
    pixel_scale, obscuration : float, optional
        As for `band_model`.

    Returns
    -------
    exptime_scale : float

    Raises
    ------
    ValueError
        If ``depth_change`` is not a number in [-3, 3] or the band model
        parameters are invalid.

    Examples
    --------
    >>> from astro_starglx.simulate import exptime_scale_for_depth
    >>> round(exptime_scale_for_depth(0.5), 2)
    2.17
    """
    depth_change = check_real("depth_change", depth_change, low=-3.0, high=3.0,
                              hint=" mag")
    model = band_model(band, pixel_scale=pixel_scale, obscuration=obscuration)
    base = _noise_model_depth(model, model.exptime)
    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _noise_model_depth(model, model.exptime * math.exp(mid)) - base < depth_change:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


# ----------------------------------------------------------------------------------
# drawing and observing


def _local_jacobian(galsim, wcs):
    # Intermediate world coordinates of a TAN WCS: (east, north) in arcsec.
    m = wcs.pixel_scale_matrix * 3600.0
    return galsim.JacobianWCS(m[0, 0], m[0, 1], m[1, 0], m[1, 1])


def _stamp_half_sizes(model, fluxes, extent, pixel_scale, psf_scale):
    # Half-size (pixels) of each object's stamp, so that the stamp holds about
    # 99 % of the light: the PSF out to 20 lambda/D (the Airy wing beyond holds
    # 2/(pi x) ~ 1 %, x = pi r D / lambda), further for bright sources, to
    # where the wing, F (lambda/D) / (pi^3 r^3) per unit area, falls below 5 %
    # of the background noise per pixel; galaxies add their own extent.
    # psf_scale may be one value or one per object.
    snr = 5.0 * fluxes / model.depth_flux
    sigma_pix = math.sqrt(model.background_variance)
    lod = model.lam_over_diam * psf_scale
    r_wing = np.cbrt(fluxes * lod * pixel_scale**2 / (math.pi**3 * 0.05 * sigma_pix))
    r_psf = np.maximum(20.0 * lod, r_wing)
    radius = np.hypot(r_psf, extent)
    return np.clip(np.ceil(radius / pixel_scale), 8, 256).astype(int), snr


def _render(galsim, shape, wcs, psf, profiles, fluxes, x, y, half):
    """Expected source count rate (e-/s per pixel) of the objects in one band.

    ``profiles[k]`` is None for a point source. ``psf`` is one GalSim profile
    for all objects or a list with one per object. Objects are drawn into
    their own stamps and added where the stamp overlaps the image.
    """
    ny, nx = shape
    jac = _local_jacobian(galsim, wcs)
    full = galsim.ImageD(galsim.BoundsI(0, nx - 1, 0, ny - 1), wcs=jac)
    per_object = isinstance(psf, list)
    n_drawn = 0
    for k in range(len(fluxes)):
        h = int(half[k])
        ix, iy = int(math.floor(x[k] + 0.5)), int(math.floor(y[k] + 0.5))
        bounds = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h)
        overlap = bounds & full.bounds
        if not overlap.isDefined():
            continue
        psf_k = psf[k] if per_object else psf
        obj = psf_k if profiles[k] is None else galsim.Convolve(profiles[k], psf_k)
        stamp = galsim.ImageD(bounds, wcs=jac)
        obj.withFlux(float(fluxes[k])).drawImage(image=stamp,
                                                 offset=(x[k] - ix, y[k] - iy))
        full[overlap] += stamp[overlap]
        n_drawn += 1
    return full.array, n_drawn


def _observe(model, source_rate, rng, *, subtract_sky, scale=1.0):
    """Noise, saturation and calibration of one band: returns (data, mask).

    ``scale`` is the number of image units per e-/s (1: the image is in e-/s).
    """
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
    if scale != 1.0:
        data *= scale
    return data.astype(np.float32), saturated
