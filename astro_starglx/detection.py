"""
Find sources in multi-band images when no catalog is given.

`detect_sources` builds one noise-weighted stack of every band on the pixel
grid of a reference band, smooths it with a Gaussian of about the PSF,
and runs photutils' `~photutils.segmentation.SourceFinder` (segmentation
with deblending) on it. Positions go to ``ra``/``dec`` through the
reference band's WCS, so that `~astro_starglx.StarGalaxyClassifier.classify`
converts them back to pixels through each band's own WCS: bands are never
assumed pixel-aligned.

The stack is the per-pixel inverse-variance weighted sum divided by the
square root of the summed weights, ``S = sum(w_b d_b) / sqrt(sum(w_b))``,
which has unit noise wherever the noise is uncorrelated, so that one
threshold in sigma holds for any number of bands, depths and units.
Bands on other pixel grids are resampled onto the reference grid with an
affine map fitted to their WCSs (bilinear, `scipy.ndimage.affine_transform`;
a map without rotation or shear is applied as scale and shift, scipy's
faster separable path), two bands at a time where the caller's thread budget
allows; only detection uses the resampled pixels.
"""

import logging

import numpy as np

__all__ = ["detect_sources"]

log = logging.getLogger(__name__)


def _check_positive(name, value, *, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 \
            or not np.isfinite(value):
        what = "a positive int" if integer else "a positive number"
        msg = f"{name} must be {what}, got {value!r}"
        raise ValueError(msg)
    return value


def inverse_variance(uncertainty):
    """
    Per-pixel inverse variance (float32) of an NDData ``uncertainty``.

    `~astropy.nddata.InverseVariance` as it is; variance and standard
    deviation through astropy's ``represent_as`` (a zero variance gives
    ``inf``); None for no uncertainty or another kind.
    """
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    if isinstance(uncertainty, InverseVariance):  # no round trip through the variance
        return np.asarray(uncertainty.array, dtype=np.float32)
    if isinstance(uncertainty, (VarianceUncertainty, StdDevUncertainty)):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(uncertainty.represent_as(InverseVariance).array,
                              dtype=np.float32)
    return None


def _band_weight(image):
    """(data minus background, per-pixel inverse variance) of one band, float32."""
    from .background import image_noise

    data = np.asarray(image.data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if image.mask is not None:
        bad |= np.asarray(image.mask, dtype=bool)
    ivar = inverse_variance(image.uncertainty)
    if ivar is None:
        ivar = np.full(data.shape, 1.0 / image_noise(image) ** 2, dtype=np.float32)
    ivar = np.broadcast_to(ivar, data.shape)
    bad |= ~(np.isfinite(ivar) & (ivar > 0))
    data = np.where(bad, 0.0, data - _sky(data, bad)).astype(np.float32)
    return data, np.where(bad, 0.0, ivar).astype(np.float32)


#: Side (pixels) of the boxes of the sky mesh: 256 CSST pixels are 19", wider
#: than the largest galaxies, as SExtractor's BACK_SIZE 64 is on 0.26" pixels.
BACKGROUND_BOX = 256

#: Pixels of the regular subsample the sky surface is measured on (2^21: a
#: box of a CSST chip holds 1,849 of them, every sixth pixel of every sixth
#: row; 2^22 halved the surface's error on a chip and took 4 times as long
#: on a 3072^2 band, 0.7 s).
SKY_SAMPLE = 2**21


def _sky(data, bad):
    """
    The sky of one band: a smooth surface on images of two boxes or more a
    side, else a constant.

    The surface is photutils' `Background2D` (sigma-clipped medians in boxes
    of `BACKGROUND_BOX` pixels, unfiltered: a 3 x 3 median filter pulled the
    edge boxes of a gradient inwards, by 0.2-0.35 sigma) on a regular
    subsample of about `SKY_SAMPLE` pixels, cut to whole boxes centred on
    the image, interpolated bilinearly between the box centres and
    extrapolated beyond them: on a 9216 x 9232 band of unit noise with a
    gradient, within 0.013 sigma of it (median; 0.07 for 99 % of the
    pixels, 0.18 at worst, in a corner), in 0.36 s. The constant is the
    sigma-clipped median of about 2^18 pixels. A constant alone left a sky
    gradient in: on a field of the independent simulator
    (``benchmarks.independent_sim``, sky kept, 4 sigma across the field)
    60 % of the r < 22 sources were found, among 1,366 false detections of
    1,678, and the deblending took 12 min; with the surface, 100 % and 6
    false detections of 727, in 5 s. The bilinear map is two matrix
    products with the small mesh, faster than scipy's spline on the same
    grid.
    """
    from astropy.stats import sigma_clipped_stats

    mesh = None
    if min(data.shape) >= 2 * BACKGROUND_BOX:
        from photutils.background import Background2D, MedianBackground

        step = max(1, int(np.sqrt(data.size / SKY_SAMPLE)))
        box = max(8, int(round(BACKGROUND_BOX / step)))
        # whole boxes of the subsample, centred on the image (the rest split
        # between both edges, where the surface is extrapolated)
        used = [-(-n // step) // box * box for n in data.shape]
        first = [(-(-n // step) - u) // 2 for n, u in zip(data.shape, used)]
        rows, cols = (slice(f * step, (f + u) * step, step) for f, u in zip(first, used))
        try:
            mesh = (Background2D(data[rows, cols], box, mask=bad[rows, cols], filter_size=1,
                                 bkg_estimator=MedianBackground()).background_mesh
                    if min(used) >= 2 * box else None)
        except ValueError:  # too few good pixels in every box: the constant
            mesh = None
    if mesh is None or not np.all(np.isfinite(mesh)):
        step = max(1, int(np.sqrt(data.size / 2**18)))
        sub, sub_bad = data[::step, ::step], bad[::step, ::step]
        good = sub[~sub_bad]
        level = sigma_clipped_stats(good, sigma=3.0, maxiters=5)[1] if good.size else 0.0
        return np.float32(level)
    weights = [_linear_weights(n, (f + (np.arange(m) + 0.5) * box - 0.5) * step)
               for n, f, m in zip(data.shape, first, mesh.shape)]
    return (weights[0] @ mesh.astype(np.float32)) @ weights[1].T


def _linear_weights(n, centres):
    """
    (n, len(centres)) weights of linear interpolation at pixels 0..n-1, and
    of extrapolation from the outer two centres beyond them (a gradient goes
    on to the edges; held constant, it left false detections along them).
    """
    x = np.arange(n, dtype=np.float64)
    low = np.clip(np.searchsorted(centres, x, side="right") - 1, 0, len(centres) - 2)
    frac = (x - centres[low]) / (centres[low + 1] - centres[low])
    weights = np.zeros((n, len(centres)), dtype=np.float32)
    weights[np.arange(n), low] = 1.0 - frac
    weights[np.arange(n), low + 1] = frac
    return weights


def _affine_to(ref_wcs, wcs, shape):
    """(matrix, offset) mapping reference pixels (row, col) to this band's (row, col), or None."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny - 1:5j, 0:nx - 1:5j]
    xr, yr = xx.ravel(), yy.ravel()
    x, y = wcs.world_to_pixel(ref_wcs.pixel_to_world(xr, yr))
    if np.allclose(x, xr, atol=1e-3) and np.allclose(y, yr, atol=1e-3):
        return None
    design = np.column_stack([yr, xr, np.ones_like(xr)])
    (a, b, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    (d, e, f), *_ = np.linalg.lstsq(design, x, rcond=None)
    return np.array([[a, b], [d, e]]), np.array([c, f])


#: A fitted band-to-reference map whose rotation/shear terms move no pixel
#: of the image by more than this (pixels) is applied as its diagonal (scale
#: and shift), scipy's separable path: 0.096 against 0.157 s for a 2048^2
#: band. Bands that differ by a shift (one detector, dithered) take it.
_DIAGONAL_TOLERANCE = 1e-3

#: Bands weighed and resampled at once, at most (each holds two float32
#: images of the reference's shape while it waits to be added).
_STACK_THREADS = 2


def _stack_threads():
    """
    Threads for the bands of `_stack`: at most `_STACK_THREADS`, and no
    more than the caller's budget: torch's thread count once torch is
    loaded (`astro_starglx.inference.thread_budget`, 1 in a Dask worker),
    else ``OMP_NUM_THREADS`` where set, else the CPUs this process may use.
    """
    import os
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        budget = torch.get_num_threads()
    else:
        try:
            budget = int(os.environ.get("OMP_NUM_THREADS", ""))
        except ValueError:
            budget = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
    return max(1, min(_STACK_THREADS, budget))


def _on_reference_grid(band, image, ref, ref_wcs, shape):
    """One band's (data, ivar) resampled onto the reference grid (bilinear)."""
    from scipy.ndimage import affine_transform

    data, ivar = _band_weight(image)
    mapping = None if band == ref else _affine_to(ref_wcs, image.wcs.celestial, shape)
    if mapping is not None:
        matrix, offset = mapping
        ny, nx = shape
        if abs(matrix[0, 1]) * (nx - 1) <= _DIAGONAL_TOLERANCE \
                and abs(matrix[1, 0]) * (ny - 1) <= _DIAGONAL_TOLERANCE:
            matrix = np.diag(matrix)
        data, ivar = (affine_transform(array, matrix, offset, output_shape=shape, order=1,
                                       cval=0.0) for array in (data, ivar))
    elif data.shape != shape:
        msg = (f"images[{band!r}] has shape {data.shape} and the same WCS as the "
               f"reference band {ref!r} of shape {shape}; give each band its own WCS")
        raise ValueError(msg)
    return data, ivar


def _stack(images, ref):
    """
    Noise-weighted stack on the reference grid: (stack, mask of no data,
    the reference band's background-subtracted data).

    The bands are weighed and resampled in up to `_stack_threads` threads
    (scipy's resampling releases the GIL: 2 bands in 0.39 s on two cores
    against 0.78 s one after the other) and added in band order, so the
    stack does not depend on the number of threads.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    shape = images[ref].data.shape
    ref_wcs = images[ref].wcs.celestial
    num = np.zeros(shape, dtype=np.float32)
    den = np.zeros(shape, dtype=np.float32)
    ref_data = None

    def add(band, future):
        nonlocal ref_data
        data, ivar = future.result()
        if band == ref:
            ref_data = data
        num[...] += data * ivar
        den[...] += ivar

    workers = _stack_threads()
    with ThreadPoolExecutor(max_workers=workers,
                            thread_name_prefix="astro_starglx-stack") as pool:
        # at most `workers` bands in flight: memory stays bounded on a chip
        in_flight = deque()
        for band, image in images.items():
            in_flight.append((band, pool.submit(_on_reference_grid, band, image, ref,
                                                ref_wcs, shape)))
            if len(in_flight) == workers:
                add(*in_flight.popleft())
        while in_flight:
            add(*in_flight.popleft())
    empty = den <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        stack = np.where(empty, 0.0, num / np.sqrt(den)).astype(np.float32)
    return stack, empty, ref_data


def detect_sources(images, *, bands=None, reference=None, nsigma=3.0, n_pixels=5,
                   fwhm=2.0, deblend=True, n_levels=32, contrast=0.001, min_snr=5.0):
    """
    Detect sources on a noise-weighted stack of the bands, with deblending.

    Parameters
    ----------
    images : `~astropy.nddata.CCDData` or mapping
        One image, or ``{band: CCDData}`` (a FITS path or HDU may stand for
        an image); each band needs a celestial WCS. ``mask`` (True = bad)
        and ``uncertainty`` (inverse variance, variance or standard
        deviation) are honoured; without an uncertainty the
        noise is a robust estimate over the image. Never modified.
    bands : sequence of str or None, optional
        Bands to stack; ``None`` for all.
    reference : str or None, optional
        Band whose pixel grid and WCS the detection uses; ``None`` for
        ``"r"`` when present, else the first band.
    nsigma : float, optional
        Per-pixel threshold on the smoothed stack, in units of its noise.
        On an empty simulated 384 x 384 7-band field (with ``n_pixels=5``,
        ``fwhm=2``) 3.0 gave 2 spurious detections, 2.5 gave 31 and 1.5
        gave 860: smoothing correlates the noise, so the single-band 1.5 of
        SExtractor's habit is far too low on a smoothed stack.
    n_pixels : int, optional
        Minimum number of connected pixels above the threshold.
    fwhm : float, optional
        FWHM in reference pixels of the Gaussian smoothing kernel (about the
        PSF: 2 px is 0.15 arcsec at CSST's 0.074 arcsec pixels).
    deblend : bool, optional
        Deblend overlapping sources (multi-thresholding and watershed); needs
        scikit-image.
    n_levels, contrast : int, float, optional
        Deblending settings of `~photutils.segmentation.SourceFinder`.
    min_snr : float, optional
        Keep detections whose isophotal signal-to-noise on the stack
        (``snr``) is at least this; 0 keeps all. Measured on two simulated
        1536 x 1536 CSST-like fields (matched to the truth within 0.2"):
        with no cut 21-29 % of the detections matched no source (noise
        peaks and fragments in galaxy outskirts, nearly all at ``snr < 5``)
        for a completeness of 98.8-99.4 % at r < 24, 97.6-99.2 % at r 24-25
        and 88-91 % at r 25-26; ``min_snr=5`` gave 9-15 % unmatched for the
        same completeness at r < 24, 97.6-97.7 % at r 24-25 and 82-85 % at
        r 25-26.

    Returns
    -------
    sources : `~astropy.table.Table`
        One row per detection: ``id`` (1-based segment label), ``x``, ``y``
        (0-based centroid in reference pixels), ``ra``, ``dec`` (deg),
        ``flux`` (segment sum of the reference band minus its background,
        image units), ``snr`` (segment sum of the stack over the square root
        of its area: the detection signal-to-noise), ``area`` (pixels) and
        ``deblended`` (the segment was split off a larger one). ``meta``
        holds the settings, the reference band and the bands stacked.
        Empty (with these columns) when nothing is found.

    Raises
    ------
    TypeError
        If ``images`` is not an NDData (or a FITS path or HDU, read with
        `~astro_starglx.csst_io.read_image`) or a mapping of them.
    ImportError
        If ``deblend=True`` and scikit-image is not installed.
    ValueError
        For an unknown ``reference`` or band, a band without a celestial WCS,
        or a non-positive setting.

    Examples
    --------
    >>> from astro_starglx.simulate import simulate_field
    >>> from astro_starglx.detection import detect_sources
    >>> images, truth = simulate_field(shape=(128, 128), n_stars=4, n_galaxies=4,
    ...                                bands=("g", "r"), mag_range=(19, 21), seed=3)
    >>> found = detect_sources(images)
    >>> len(found) >= 6
    True
    """
    from astropy.nddata import NDData
    from astropy.table import Table
    from photutils.segmentation import SourceCatalog, SourceFinder, make_2dgaussian_kernel
    from scipy import ndimage

    from .csst_io import is_readable, read_image

    if is_readable(images):
        images = read_image(images)
    elif hasattr(images, "items"):
        images = {band: read_image(image) if is_readable(image) else image
                  for band, image in images.items()}
    if isinstance(images, NDData):
        images = {str((images.meta or {}).get("FILTER", "band")): images}
    elif not hasattr(images, "items"):
        msg = (f"images must be a CCDData or a mapping {{band: CCDData}}, got "
               f"{type(images).__name__}")
        raise TypeError(msg)
    if bands is not None:
        unknown = [band for band in bands if band not in images]
        if unknown:
            msg = f"bands {unknown} are not in images (which has {list(images)})"
            raise ValueError(msg)
        images = {band: images[band] for band in bands}
    if not images:
        msg = "images is empty; pass at least one band"
        raise ValueError(msg)
    for band, image in images.items():
        if not isinstance(image, NDData):
            msg = f"images[{band!r}] must be a CCDData or NDData, got {type(image).__name__}"
            raise TypeError(msg)
        if getattr(image.wcs, "has_celestial", False) is not True:
            msg = (f"images[{band!r}] has no celestial WCS; detections need one to give "
                   "ra/dec (read the image with its header, e.g. CCDData.read)")
            raise ValueError(msg)
    if reference is None:
        reference = "r" if "r" in images else next(iter(images))
    elif reference not in images:
        msg = f"reference={reference!r} is not one of the bands {list(images)}"
        raise ValueError(msg)
    _check_positive("nsigma", nsigma)
    _check_positive("fwhm", fwhm)
    _check_positive("n_pixels", n_pixels, integer=True)
    _check_positive("n_levels", n_levels, integer=True)
    _check_positive("contrast", contrast)
    if isinstance(min_snr, bool) or not isinstance(min_snr, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(min_snr) and min_snr >= 0):
        msg = f"min_snr must be a number >= 0 (0 keeps every detection), got {min_snr!r}"
        raise ValueError(msg)

    if deblend:
        from ._optional import import_optional

        import_optional("skimage", "dask", feature="deblending (deblend=True)",
                        hint=" (or pip install scikit-image), or pass deblend=False")
    stack, empty, ref_data = _stack(images, reference)
    size = int(2 * round(1.5 * fwhm) + 1)
    kernel = make_2dgaussian_kernel(fwhm, size=size)
    # Direct convolution: for this small kernel 14 times faster than
    # astropy's convolve_fft on a 2048^2 stack (0.20 against 2.8 s, equal to
    # 1.2e-7); zero fill past the edges as before.
    convolved = ndimage.convolve(stack.astype(np.float32, copy=False),
                                 kernel.array.astype(np.float32), mode="constant", cval=0.0)
    # Smoothing divides the unit noise of the stack by the kernel's norm.
    threshold = float(nsigma) * float(np.sqrt(np.sum(kernel.array ** 2)))
    finder = SourceFinder(n_pixels=int(n_pixels), deblend=bool(deblend),
                          n_levels=int(n_levels), contrast=float(contrast),
                          progress_bar=False)
    import warnings

    from photutils.utils.exceptions import NoDetectionsWarning

    with warnings.catch_warnings():
        # "no sources found" is an empty result here, not a warning.
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = finder(convolved, threshold, mask=empty)
    out = Table(names=("id", "x", "y", "ra", "dec", "flux", "snr", "area", "deblended"),
                dtype=(np.int64, float, float, float, float, float, float, float, bool))
    out.meta["detection"] = {"reference": reference, "bands": list(images),
                             "nsigma": float(nsigma), "n_pixels": int(n_pixels),
                             "fwhm": float(fwhm), "deblend": bool(deblend),
                             "contrast": float(contrast), "min_snr": float(min_snr)}
    if segm is not None:
        det = SourceCatalog(stack, segm, convolved_data=convolved, mask=empty,
                            wcs=images[reference].wcs.celestial)
        phot = SourceCatalog(ref_data, segm, mask=empty, detection_catalog=det)
        sky = det.sky_centroid
        area = np.asarray(det.area.value, dtype=float)
        n = len(det.label)
        deblended = (np.isin(det.label, segm.deblended_labels)
                     if deblend and hasattr(segm, "deblended_labels") else np.zeros(n, bool))
        out = Table({"id": np.asarray(det.label, dtype=np.int64),
                     "x": np.asarray(det.x_centroid, dtype=float),
                     "y": np.asarray(det.y_centroid, dtype=float),
                     "ra": np.mod(sky.ra.deg, 360.0), "dec": sky.dec.deg,
                     "flux": np.asarray(phot.segment_flux, dtype=float),
                     "snr": np.asarray(det.segment_flux, dtype=float) / np.sqrt(area),
                     "area": area, "deblended": deblended}, meta=out.meta)
        ok = np.isfinite(out["ra"]) & np.isfinite(out["dec"]) & (out["snr"] >= min_snr)
        out = out[ok]
    out["ra"].unit = out["dec"].unit = "deg"
    out["area"].unit = "pix"
    log.info("detected %d sources on the %s stack (reference %s)", len(out),
             "+".join(images), reference)
    return out
