"""
Point sources added to simulated images, as the simulator would have drawn them.
"""

from collections.abc import Mapping

import numpy as np
from astropy.nddata import CCDData
from astropy.table import Table

from .field import _psf_dilation
from .instrument import _check_bands, _import_galsim, _render, _stamp_half_sizes, band_model

__all__ = ["inject_point_sources"]

_REQUIRED_KEYS = ("FILTER", "EXPTIME", "EXPTIME1", "MAGZERO", "PIXSCALE", "PSFSCALE",
                  "OBSCURAT", "FULLWELL", "SKYLEVEL", "DARKCUR", "SKYSUB")


def _check_images(images):
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


def _check_mags(mag, images, shape):
    if isinstance(mag, Mapping):
        absent = [b for b in images if b not in mag]
        if absent:
            msg = f"mag has no magnitudes for bands {absent}; give one array per band"
            raise ValueError(msg)
        return {b: np.broadcast_to(np.asarray(mag[b], dtype=float), shape) for b in images}
    try:
        arr = np.broadcast_to(np.asarray(mag, dtype=float), shape)
    except ValueError:
        msg = f"mag must be a scalar or have the shape of ra {shape}"
        raise ValueError(msg) from None
    return {b: arr for b in images}


def _inject_band(galsim, image, ra, dec, mag, rng):
    """One band: the new image and the sources' positions and fluxes (image units)."""
    hdr = image.meta
    model = band_model(hdr["FILTER"], pixel_scale=float(hdr["PIXSCALE"]),
                       obscuration=float(hdr["OBSCURAT"]))
    psf_scale = float(hdr["PSFSCALE"])
    psf_kw = {"psf_model": str(hdr.get("PSFMODEL", "airy")),
              "psf_beta": float(hdr.get("PSFBETA", 3.0)),
              "psf_ellipticity": float(hdr.get("PSFELLIP", 0.0)),
              "psf_angle": float(hdr.get("PSFANGLE", 0.0))}
    # Electrons per image unit (1 for e-/s images).
    gain = float(hdr.get("GAIN", 1.0))
    x, y = image.wcs.all_world2pix(ra, dec, 0)
    flux = 10.0 ** (-0.4 * (mag - float(hdr["MAGZERO"])))
    flux_e = flux * gain
    dilation = _psf_dilation(psf_scale, float(hdr.get("PSFGRAD", 0.0)), x,
                             image.data.shape[1])
    half, _ = _stamp_half_sizes(model, flux_e, np.zeros_like(flux_e), model.pixel_scale,
                                dilation)
    if np.ndim(dilation) == 0:
        psf = model.psf(psf_scale=psf_scale, **psf_kw)
    else:
        psf = [model.psf(psf_scale=float(s), **psf_kw) for s in dilation]
    rate, _ = _render(galsim, image.data.shape, image.wcs, psf, [None] * ra.size, flux_e,
                      x, y, half)
    t_total = float(hdr["EXPTIME"])
    # FFT-drawn profiles (Moffat) ring at the 1e-9 level: clip below zero.
    added = rng.poisson(np.clip(rate, 0.0, None) * t_total) / t_total
    data = image.data.astype(float) * gain + added
    background = float(hdr["SKYLEVEL"]) + float(hdr["DARKCUR"])
    offset = background if hdr["SKYSUB"] else float(hdr["DARKCUR"])
    per_exposure = (data + offset) * float(hdr["EXPTIME1"])
    mask = np.zeros(data.shape, bool) if image.mask is None else image.mask.copy()
    newly = (per_exposure > float(hdr["FULLWELL"])) & (rate > 0)
    mask |= newly
    data[newly] = float(hdr["FULLWELL"]) / float(hdr["EXPTIME1"]) - offset
    if gain != 1.0:
        data /= gain
    uncertainty = None if image.uncertainty is None else image.uncertainty.__class__(
        np.array(image.uncertainty.array, copy=True))
    out = CCDData(data.astype(image.data.dtype), unit=image.unit, wcs=image.wcs.deepcopy(),
                  mask=mask, uncertainty=uncertainty, meta=image.meta.copy())
    return out, x, y, flux


def inject_point_sources(images, ra, dec, mag, *, seed=None):
    """
    Add point sources to images made by `simulate_field`.

    Each source is drawn with the band's PSF (from the image header: at the
    source's position when the field has a PSF gradient) at its sky position
    through the band's WCS, with the Poisson noise of its own electrons, so
    that the result is what `simulate_field` would have made with the sources
    in the field. Pixels pushed over the full well are masked and clipped.

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
        ``flux_<band>`` (image units: e-/s unless the field has another
        zero point) of each source.

    Raises
    ------
    ValueError
        If the images lack the simulator's header keywords or the inputs
        have inconsistent shapes.
    ImportError
        If GalSim is not installed.
    """
    _check_images(images)
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    if ra.ndim != 1 or ra.shape != dec.shape:
        msg = f"ra and dec must be 1-d arrays of one length, got shapes {ra.shape}, {dec.shape}"
        raise ValueError(msg)
    mags = _check_mags(mag, images, ra.shape)

    galsim = _import_galsim()
    rng = np.random.default_rng(seed)
    band_rngs = dict(zip(images, rng.spawn(len(images))))
    out = {}
    table = Table({"ra": ra, "dec": dec})
    for band, image in images.items():
        out[band], x, y, flux = _inject_band(galsim, image, ra, dec, mags[band],
                                             band_rngs[band])
        table[f"x_{band}"] = x
        table[f"y_{band}"] = y
        table[f"mag_{band}"] = mags[band]
        table[f"flux_{band}"] = flux
    return out, table
