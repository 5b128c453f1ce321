"""
Cosmic rays masked in single exposures, with settings for CSST's sampling.

The classifier takes an unmasked cosmic-ray hit on a source for part of its
profile: on two nominal CSST-like fields of 2048 x 2048 pixels with 3-pixel
hits of 10-200 sigma on 0.5 % of the pixels of every band (a few hundred
seconds in low Earth orbit), ``rbim-lite-v13`` kept 91.7 % of the stars
and 94.4 % of the galaxies at r <= 25 instead of 100 %. CSST's L1 ``flg``
files mark the hits its pipeline found; where nothing marks them (another
pipeline, a simulation), `mask_cosmic_rays` finds them with LACosmic
(van Dokkum 2001) as ``astroscrappy`` implements it, and adds them to the
image's ``mask``, which ``classify()`` honours.

LACosmic tells a hit from a star by its sharpness (``objlim``): its
default of 5 suits well-sampled ground-based images, but CSST's PSF is
2.3 pixels wide, and at 5 it took the cores of bright stars for hits (star
recall 54 % on the same fields without a single hit). At ``objlim=20``
(the default here) the fields without hits kept every class at r <= 25
(at r <= 26, 4 of 492 faint stars were lost: 99.2 -> 98.4 %), and those
with hits on 0.5 % of the pixels were back to 100 % of both classes
(``runs``-style script: the nominal fields of ``benchmarks/robustness.py``,
``sigclip=4.5``, ``niter=2``). It takes about 3.5 s per 2048 x 2048 band
on one core: use it where no mask marks the hits, not by default.
"""

from collections.abc import Mapping

import numpy as np

from ._optional import import_optional
from ._validation import check_count, check_real

__all__ = ["mask_cosmic_rays", "CSST_OBJLIM"]

#: LACosmic's ``objlim`` (the contrast between a hit's Laplacian and the
#: fine structure around it) that spares stars at CSST's sampling.
CSST_OBJLIM = 20.0


def _mask_one(image, *, objlim, sigclip, niter):
    from astropy.io import fits
    from astropy.nddata import CCDData, NDData

    from ._validation import check_nddata, uncertainty_scale

    data = np.asarray(check_nddata("image", image), dtype=np.float32)
    astroscrappy = import_optional("astroscrappy", "cosmics", feature="mask_cosmic_rays")
    mask = None if image.mask is None else np.asarray(image.mask)
    bad = None if mask is None else (mask if mask.dtype == bool else mask != 0)
    kwargs = {}
    if image.uncertainty is not None:
        power, scale = uncertainty_scale(image)
        values = np.asarray(image.uncertainty.array, dtype=np.float64) * scale
        # astroscrappy's ``invar`` is the variance (its docstring: "noise
        # squared"), not an inverse variance
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = {1: values**2, 2: values, -2: 1.0 / values}[power]
        usable = np.isfinite(variance) & (variance > 0)
        fill = float(np.median(variance[usable])) if usable.any() else 1.0
        kwargs["invar"] = np.where(usable, variance, fill).astype(np.float32)
    # with invar the noise model is the uncertainty's (unusable pixels get the
    # median, and are masked anyway); without, Poisson in the image's own
    # units (gain 1, no read noise)
    hits, _ = astroscrappy.detect_cosmics(
        np.nan_to_num(data), inmask=bad, sigclip=sigclip, objlim=objlim, niter=niter,
        gain=1.0, readnoise=0.0, satlevel=np.inf, sepmed=True, cleantype="meanmask",
        fsmode="median", **kwargs)
    new_mask = hits if bad is None else (bad | hits)
    meta = image.meta.copy() if image.meta is not None else {}
    if isinstance(meta, fits.Header):
        meta["CRMASKED"] = (int(hits.sum()), "pixels masked as cosmic rays (LACosmic)")
    else:
        meta["CRMASKED"] = int(hits.sum())
    kind = CCDData if isinstance(image, CCDData) else NDData
    return kind(image.data, unit=image.unit, wcs=image.wcs, mask=new_mask,
                uncertainty=image.uncertainty, meta=meta)


def mask_cosmic_rays(images, *, objlim=CSST_OBJLIM, sigclip=4.5, niter=2):
    """
    Images with their cosmic-ray hits added to the mask (LACosmic).

    Parameters
    ----------
    images : `~astropy.nddata.CCDData` or mapping
        One image or ``{band: image}`` (`~astropy.nddata.NDData` with an
        optional ``mask`` and ``uncertainty``, which sets the noise model).
        Never modified.
    objlim : float, optional
        LACosmic's contrast limit between a hit and the fine structure of
        the image around it; the default, `CSST_OBJLIM`, spares the stars of
        CSST's 2.3-pixel PSF (LACosmic's own 5 does not).
    sigclip : float, optional
        Detection limit of a hit, in sigmas of the Laplacian.
    niter : int, optional
        LACosmic iterations.

    Returns
    -------
    images : `~astropy.nddata.CCDData` or dict
        New images (sharing the data and uncertainty arrays) whose ``mask``
        is the old one OR the hits, with ``CRMASKED`` (the number of pixels
        masked) in their ``meta``; a dict for a mapping.

    Raises
    ------
    ImportError
        If astroscrappy is not installed (``pip install
        "astro_starglx[cosmics]"``).
    TypeError
        If an image is not an NDData.
    ValueError
        If ``objlim`` or ``sigclip`` is not a positive number or ``niter``
        not a positive integer.

    Examples
    --------
    >>> from astro_starglx.cosmic_rays import mask_cosmic_rays
    >>> clean = mask_cosmic_rays(images)  # doctest: +SKIP
    >>> out = StarGalaxyClassifier().classify(catalog, clean)  # doctest: +SKIP
    """
    objlim = check_real("objlim", objlim, low=0.0, low_open=True, hint="; e.g. objlim=20")
    sigclip = check_real("sigclip", sigclip, low=0.0, low_open=True, hint="; e.g. sigclip=4.5")
    niter = check_count("niter", niter, low=1, hint="; e.g. niter=2")
    options = {"objlim": objlim, "sigclip": sigclip, "niter": niter}
    if isinstance(images, Mapping):
        return {band: _mask_one(image, **options) for band, image in images.items()}
    return _mask_one(images, **options)
