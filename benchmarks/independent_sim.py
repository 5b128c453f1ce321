"""
CSST-like fields from a second, independent simulator, for the robustness benchmark.

Every other robustness figure comes from `astro_starglx.simulate`, the GalSim
simulator the released models were trained on: a model can learn that
simulator's habits (its galaxy profiles, colours, noise and PSF families) and
still score well on it. These fields share none of its code. They are drawn
with astropy.modeling and scipy only, with choices of their own:

- **PSF**: a circular Moffat profile (``beta`` 3 by default) whose FWHM grows
  from 0.13" in NUV to 0.16" in y (`FWHM`), times ``psf_scale``; no Airy
  core, no jitter, no pixel-response model other than integration over the
  pixel (5 x 5 sub-pixels).
- **Stars**: blackbodies of 3,000-12,000 K (`~astropy.modeling.models.BlackBody`
  at each band's mid wavelength), r uniform in 18-26.
- **Galaxies**: single Sersic profiles (`~astropy.modeling.models.Sersic2D`),
  n log-uniform in 0.5-4, axis ratio 0.3-1, half-light radius log-normal
  around 0.35" at r = 20, shrinking by 0.06 dex a magnitude; power-law
  spectra f_nu ~ nu^-alpha with alpha uniform in 0-3; counts rising as
  10^(0.35 r) in r 18-26.5. Each is convolved with the PSF on the
  5 x 5 sub-pixel grid.
- **Noise and units**: images in nJy with the sky left in (a level of 40
  times the sky noise and a gradient across the field), sky-limited Poisson
  noise (Gaussian, of variance sky + source over one effective gain), the
  per-pixel sky noise set so that an optimally weighted PSF fit reaches the
  CSST wide-survey 5-sigma depth of each band (`~astro_starglx.csst.CSST_BAND_INFO`)
  plus ``depth_shift``; a `~astropy.nddata.StdDevUncertainty` of that noise.
- **Catalog and WCS**: a TAN WCS of 0.074" pixels (``pixel_scale``: another
  survey's for the fine-tuning benchmark), the sources uniform over
  the field; truth in the layout of `astro_starglx.simulate.simulate_field`
  (``id``, ``ra``, ``dec``, ``label``, ``mag_r``, ``x_<band>``, ``y_<band>``),
  the FWHM of the PSF (integrated over a pixel, as the simulator's
  ``PSFFWHM``) in each header's ``PSFFWHM`` (arcsec) for the PSF
  errors (the benchmark removes it before classifying, as for its own
  fields).

Used through ``python -m benchmarks.robustness --conditions 'independent
nominal' ...`` (`benchmarks.robustness.EXTRA_CONDITIONS`) and ``python -m
benchmarks.adapt_independent`` (fine-tuning on another survey's pixels).
"""

import math

import astropy.units as u
import numpy as np
from astropy.constants import c as speed_of_light
from astropy.modeling.models import BlackBody, Moffat2D, Sersic2D
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import Table
from astropy.wcs import WCS
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve

from astro_starglx.csst import CSST_BAND_INFO, CSST_BANDS, CSST_PIXEL_SCALE

__all__ = ["FWHM", "simulate_independent"]

#: PSF FWHM per band at ``psf_scale`` 1, arcsec (this simulator's own choice).
FWHM = {"NUV": 0.130, "u": 0.133, "g": 0.138, "r": 0.145, "i": 0.150, "z": 0.155, "y": 0.160}

#: Sub-pixels per pixel and axis.
OVERSAMPLE = 5

#: AB zero point of an image in nJy (31.4 = -2.5 log10(1 nJy / 3631 Jy)).
ZEROPOINT_NJY = 31.4

#: Sources per square arcminute (about CSST's r < 26.5 density).
DENSITY = 140.0


def _subpixel_grid(half):
    """Sub-pixel centres (pixels from the stamp's centre) of a (2 half + 1)^2 stamp."""
    n = 2 * half + 1
    g = (np.arange(n * OVERSAMPLE) + 0.5) / OVERSAMPLE - n / 2.0
    return np.meshgrid(g, g, indexing="ij")


def _bin(fine):
    n = fine.shape[0] // OVERSAMPLE
    return fine.reshape(n, OVERSAMPLE, n, OVERSAMPLE).sum(axis=(1, 3))


def _moffat(fwhm_px, beta, dx=0.0, dy=0.0, half=None):
    """A unit-flux Moffat stamp, centred (dx, dy) pixels off the central pixel."""
    alpha = fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    if half is None:  # out to where the profile is below 1e-4 of its peak
        half = int(math.ceil(alpha * math.sqrt(1e-4 ** (-1.0 / beta) - 1.0)))
    yy, xx = _subpixel_grid(half)
    fine = Moffat2D(amplitude=1.0, x_0=dx, y_0=dy, gamma=alpha, alpha=beta)(xx, yy)
    stamp = _bin(fine)
    return stamp / stamp.sum(), fine / fine.sum()


def _fwhm_with_pixel(fwhm_px, beta, fine=25):
    """FWHM (pixels) of the Moffat profile integrated over a pixel, as a PSF fit sees it."""
    half = int(math.ceil(2.0 * fwhm_px)) + 1
    g = (np.arange(-half * fine, half * fine + 1)) / fine
    yy, xx = np.meshgrid(g, g, indexing="ij")
    alpha = fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    profile = uniform_filter(Moffat2D(1.0, 0.0, 0.0, alpha, beta)(xx, yy), size=fine,
                             mode="constant")[half * fine, half * fine:]
    below = int(np.argmax(profile < 0.5 * profile[0]))
    # linear interpolation between the last sample above half the peak and the first below
    f0, f1 = profile[below - 1], profile[below]
    return 2.0 * (g[half * fine + below - 1] + (f0 - 0.5 * profile[0]) / (f0 - f1) / fine)


def _galaxy(r_eff_px, n, ellip, theta, dx, dy, psf_fine):
    """A unit-flux Sersic galaxy convolved with the PSF (given on the sub-pixel grid)."""
    half = int(np.clip(math.ceil(4.0 * r_eff_px * (1.0 + 0.5 * n)), 10, 60))
    yy, xx = _subpixel_grid(half)
    fine = Sersic2D(amplitude=1.0, r_eff=r_eff_px, n=n, x_0=dx, y_0=dy, ellip=ellip,
                    theta=theta)(xx, yy)
    stamp = _bin(fftconvolve(fine, psf_fine, mode="same"))
    return stamp / stamp.sum()


def _add(image, stamp, ix, iy):
    """Add ``stamp`` centred on pixel (ix, iy), cropped at the edges."""
    h = stamp.shape[0] // 2
    ny, nx = image.shape
    y0, x0 = iy - h, ix - h
    ys = slice(max(y0, 0), min(y0 + stamp.shape[0], ny))
    xs = slice(max(x0, 0), min(x0 + stamp.shape[1], nx))
    if ys.start < ys.stop and xs.start < xs.stop:
        image[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]


def _colours(rng, n_stars, n_galaxies):
    """AB magnitude minus r per band: blackbody stars, power-law galaxies."""
    nu = {b: (speed_of_light / (CSST_BAND_INFO[b].wave_eff * u.nm)).to(u.Hz) for b in CSST_BANDS}
    temperature = rng.uniform(3000.0, 12000.0, n_stars) * u.K
    alpha = rng.uniform(0.0, 3.0, n_galaxies)
    colours = {}
    for b in CSST_BANDS:
        star = -2.5 * np.log10((BlackBody(temperature)(nu[b]) / BlackBody(temperature)(nu["r"]))
                               .to_value(u.dimensionless_unscaled))
        galaxy = 2.5 * alpha * np.log10((nu[b] / nu["r"]).to_value(u.dimensionless_unscaled))
        colours[b] = np.concatenate([star, galaxy])
    return colours


def simulate_independent(seed, *, shape=(2048, 2048), psf_scale=1.0, beta=3.0,
                         depth_shift=0.0, star_fraction=0.3, density=DENSITY,
                         pixel_scale=CSST_PIXEL_SCALE, fwhm=None, bands=CSST_BANDS):
    """
    One field of the independent simulator.

    Parameters
    ----------
    seed : int
        Seed of every random draw.
    shape : tuple of int, optional
        ``(ny, nx)`` pixels.
    psf_scale : float, optional
        FWHM of every band's PSF over `FWHM`.
    beta : float, optional
        Moffat index of the PSF (smaller: heavier wings).
    depth_shift : float, optional
        Magnitudes added to the CSST 5-sigma depths (negative: shallower).
    star_fraction : float, optional
        Fraction of the sources that are stars.
    density : float, optional
        Sources per square arcminute.
    pixel_scale : float, optional
        Arcsec per pixel (another survey's, for the fine-tuning benchmark).
    fwhm : float or dict, optional
        PSF FWHM in arcsec before ``psf_scale``: one for every band or
        ``{band: fwhm}``; default `FWHM`.
    bands : sequence of str, optional
        The bands drawn (CSST names; their depths from `CSST_BAND_INFO`).

    Returns
    -------
    images : dict of `~astropy.nddata.CCDData`
        ``{band: image}`` in nJy with the sky in, and a `StdDevUncertainty`.
    truth : `~astropy.table.Table`
        One row per source (``id``, ``ra``, ``dec``, ``label``, ``mag_r``,
        ``mag_<band>``, ``x_<band>``, ``y_<band>``).
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    fwhm = dict(FWHM) if fwhm is None else (
        dict(fwhm) if isinstance(fwhm, dict) else dict.fromkeys(CSST_BANDS, float(fwhm)))
    area = ny * nx * (pixel_scale / 60.0) ** 2
    n = max(int(rng.poisson(density * area)), 1)
    n_stars = int(rng.binomial(n, star_fraction))
    n_galaxies = n - n_stars
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [rng.uniform(0.0, 360.0), rng.uniform(-60.0, 60.0)]
    wcs.wcs.crpix = [nx / 2.0 + 0.5, ny / 2.0 + 0.5]
    wcs.wcs.cdelt = [-pixel_scale / 3600.0, pixel_scale / 3600.0]
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    # r magnitudes: stars uniform; galaxies ~ 10^(0.35 r) (inverse CDF)
    k = 0.35 * math.log(10.0)
    lo, hi = math.exp(k * 18.0), math.exp(k * 26.5)
    mag_r = np.concatenate([rng.uniform(18.0, 26.0, n_stars),
                            np.log(lo + rng.uniform(0.0, 1.0, n_galaxies) * (hi - lo)) / k])
    colours = _colours(rng, n_stars, n_galaxies)
    log_r = (math.log10(0.35) - 0.06 * (mag_r[n_stars:] - 20.0)
             + rng.normal(0.0, 0.2, n_galaxies))
    r_eff = np.clip(10.0 ** log_r, 0.05, 2.0) / pixel_scale  # pixels
    sersic_n = np.exp(rng.uniform(math.log(0.5), math.log(4.0), n_galaxies))
    ellip = rng.uniform(0.0, 0.7, n_galaxies)
    theta = rng.uniform(0.0, math.pi, n_galaxies)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    dx, dy = x - ix, y - iy
    yy, xx = np.mgrid[0:ny, 0:nx]
    gradient = (xx / nx + 0.6 * yy / ny).astype(np.float32)
    del yy, xx
    images, truth = {}, Table()
    truth["id"] = np.arange(n)
    ra, dec = wcs.pixel_to_world_values(x, y)
    truth["ra"], truth["dec"] = ra, dec
    truth["label"] = np.array(["star"] * n_stars + ["galaxy"] * n_galaxies, dtype="U6")
    truth["mag_r"] = mag_r
    for band in bands:
        fwhm_px = fwhm[band] * psf_scale / pixel_scale
        psf, psf_fine = _moffat(fwhm_px, beta)
        n_eff = 1.0 / float(np.sum(psf ** 2))  # pixels of an optimal PSF fit
        mag = mag_r + colours[band]
        flux = 10.0 ** (-0.4 * (mag - ZEROPOINT_NJY))
        depth = CSST_BAND_INFO[band].depth + depth_shift
        sigma = 10.0 ** (-0.4 * (depth - ZEROPOINT_NJY)) / (5.0 * math.sqrt(n_eff))
        signal = np.zeros(shape)
        for j in range(n):
            if j < n_stars:
                stamp, _ = _moffat(fwhm_px, beta, dx[j], dy[j], half=psf.shape[0] // 2)
            else:
                g = j - n_stars
                stamp = _galaxy(r_eff[g], sersic_n[g], ellip[g], theta[g], dx[j], dy[j],
                                psf_fine)
            _add(signal, flux[j] * stamp, ix[j], iy[j])
        sky = sigma * (40.0 + 4.0 * gradient)
        gain = 40.0 / sigma  # sky-limited: the sky level's Poisson noise is sigma
        std = np.sqrt(sigma ** 2 + np.clip(signal, 0.0, None) / gain)
        data = signal + sky + rng.normal(0.0, 1.0, shape) * std
        header = {"FILTER": band, "PSFBETA": beta, "BUNIT": "nJy",
                  "PSFFWHM": float(_fwhm_with_pixel(fwhm_px, beta) * pixel_scale)}
        images[band] = CCDData(data.astype(np.float32), unit="nJy", wcs=wcs, meta=header,
                               uncertainty=StdDevUncertainty(std.astype(np.float32)))
        truth[f"mag_{band}"] = mag
        truth[f"x_{band}"], truth[f"y_{band}"] = x, y
    truth.meta["simulator"] = "benchmarks.independent_sim"
    return images, truth
