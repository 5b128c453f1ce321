"""
Catalog positions refined on the images (numpy; no torch).

A catalog's positions are rarely exactly where its sources sit in the
images: another survey's astrometry, a detection on another band or a
coadd, or an image's WCS off by a fraction of an arcsec. A point source
whose stamp is cut a pixel off its centre looks extended to the model
(measured on fresh CSST-like fields, ``rbim-lite-v13``, r <= 25: catalog
positions shifted by 0.1" kept 91.4 % of the stars, by 0.2" 3.2 %, and
random errors of 0.06" per axis 85.0 %). `refine_positions` moves each
position to its source's windowed centroid, as SExtractor's ``XWIN_IMAGE``
does, in two stages:

1. **Per band, the systematic offset** (a band's WCS against the catalog):
   the median shift of the band's bright sources (the
   `MAX_REFERENCE_SOURCES` of highest peak signal-to-noise among
   `STAGE1_SAMPLE`, kept where the centroid window's signal-to-noise is at
   least `REFERENCE_SNR`), each found from the catalog position with a
   window wide enough to capture 0.4" (`SYSTEMATIC_SCHEDULE`). At least
   `MIN_REFERENCE_SOURCES` are needed, else no offset is applied. The
   scatter of their shifts about it says how exact the catalog is: below
   `SKIP_SCATTER` pixels stage 2 is skipped (0.1 s per 10,000 sources and 7 bands
   in all, against 0.3-0.4 s with it).
2. **Per source, the random error** (common to all bands, on the sky):
   each band's windowed centroid from the position corrected for that
   band's offset (`SOURCE_SCHEDULE`), combined over the bands by inverse
   variance in arcsec through each band's pixel-to-sky matrix. The
   combined shift is shrunk towards zero by ``tau**2 / (tau**2 +
   sigma**2)``, where ``sigma`` is its own error and ``tau`` the scatter of
   the bright sources' shifts (what the catalog's errors are, measured on
   this field): a catalog of exact positions (``tau`` near 0) leaves faint
   sources where they are, instead of moving them by their centroids'
   noise; a catalog with 0.06" errors moves every source measured better
   than that. A shift more than 4 times its expected size, or one that
   lands on another catalog source, is not applied: its window was pulled
   to a brighter neighbour.

Duplicated rows are one source, and the order of the rows changes
nothing.

The windowed centroid iterates a circular Gaussian weight of ``sigma_w``
(pixels) centred on the current estimate: ``x <- x + g sum(w I (x' - x)) /
sum(w I)``. The gain ``g = 1 + (sigma_psf / sigma_w)**2`` makes one step
exact for a Gaussian point source (SExtractor's ``XWIN`` uses ``g = 2``, its
window being the source's size): without it each step at the PSF's size
halves the distance left, and 3 steps left bright stars 2-13 times their
error off (measured). The variance is SExtractor's ``ERRX2WIN`` with that
gain, ``g**2 sum(w**2 s**2 (x - x_c)**2) / sum(w I)**2`` with ``s`` the
per-pixel noise: on Gaussian stars of signal-to-noise 40-600 the pulls'
scatter is 1.02-1.04 (1.5 at 2,900, where the pixel sampling's own bias of
a few thousandths of a pixel shows). It is written here on the stamps
rather than with ``sep.winpos`` (SExtractor's own code), which returns no
error and would need the stamps' noise anyway.
"""

import math
import warnings

import numpy as np

from ._validation import check_nddata, uncertainty_scale
from .background import _MAD_TO_STD, _border_mask
from .cutouts import _Plan, _to_sigma

__all__ = ["windowed_centroids", "combine_shifts", "refine_positions",
           "refine_catalog_positions", "window_fwhm", "SYSTEMATIC_SCHEDULE", "SOURCE_SCHEDULE",
           "MIN_REFERENCE_SOURCES", "MIN_SCATTER_REFERENCES", "MAX_REFERENCE_SOURCES",
           "REFERENCE_SNR", "OUTLIER_SIGMAS",
           "MERGE_FWHM", "TAU_FLOOR", "SKIP_SCATTER", "STAGE1_SAMPLE", "MIN_SHIFT",
           "WINDOW_SIZE"]

#: Side (pixels) of the stamps the centroids are measured on.
WINDOW_SIZE = 17

#: Window sigmas, in units of the PSF's sigma, of the iterations that find
#: the bright sources' centroids from the catalog positions (stage 1): the
#: first, 4 PSF sigmas (about 0.12" at CSST's nominal PSF), captures shifts
#: up to about 0.4"; the last ones are at the PSF's size.
SYSTEMATIC_SCHEDULE = (4.0, 2.0, 1.0, 1.0)

#: Window sigmas of the per-source iterations (stage 2), which start from
#: the position corrected for the band's offset: random catalog errors are
#: smaller, and a narrower first window is less pulled by neighbours.
SOURCE_SCHEDULE = (2.0, 1.0, 1.0)

#: Bright sources a band needs for its systematic offset; with fewer, none
#: is applied.
MIN_REFERENCE_SOURCES = 5

#: Bright sources needed to measure the catalog's scatter (in a band, for
#: stage 1's decision, and over the bands, for stage 2's shrinkage); with
#: fewer, the scatter counts as 0 and no source moves on its own. Six
#: references, all galaxies (whose windowed centroids scatter more than
#: their errors say), once gave 0.057" for an exact catalog.
MIN_SCATTER_REFERENCES = 20

#: Signal-to-noise in the centroid window above which a source is a
#: reference (stage 1, and the scatter of stage 2).
REFERENCE_SNR = 30.0

#: Sources of highest peak signal-to-noise that stage 1 measures per band
#: (its median needs no more; measuring every source cost 0.5 s per 10,000
#: sources and 7 bands).
MAX_REFERENCE_SOURCES = 500

#: A combined shift larger than this many times ``sqrt(tau**2 +
#: sigma**2)`` is not applied: its window was pulled towards a brighter
#: neighbour (a 2-D Gaussian error exceeds 4 sigmas in 0.03 % of the
#: sources; with 3, 1.1 % of the stars kept an error of 0.06" and 1.9 % of
#: them were lost, against 0.3 % with 4; on fields with catalog errors of
#: 0.06" per axis, 5 let 3 windows of 607 galaxies run to a neighbour).
OUTLIER_SIGMAS = 4.0

#: Two sources whose refined positions lie closer than this many PSF FWHMs
#: have converged on one peak: the one that moved more keeps its catalog
#: position.
MERGE_FWHM = 0.5

#: Floor of the catalog scatter ``tau``, in pixels (0.003" on CSST's):
#: below it a catalog is taken as exact.
TAU_FLOOR = 0.04

#: Catalog scatter per axis, in pixels (0.006" on CSST's), seen by stage
#: 1's references below which stage 2 is skipped: the shrinkage would move
#: a source by less than a tenth of the 0.3 pixels the training jittered
#: positions by, at 0.1-0.3 s per 10,000 sources and 7 bands. In pixels,
#: not arcsec: what matters is where the stamp is cut (on an SDSS-like
#: field of 0.396" pixels, an exact catalog's 0.014" was 0.04 pixel).
SKIP_SCATTER = 0.08

#: Sources per band, spread evenly over the catalog, among which stage 1
#: looks for its references.
STAGE1_SAMPLE = 4000

#: Shifts (pixels) below which a band's offset or a source's own shift is
#: not applied: a sixth of the 0.3 pixels the training jittered positions
#: by, they change nothing the model can use, but a source within a hair
#: of a half pixel would have its stamp cut one pixel over (one faint
#: galaxy of a pinned field moved 0.003 pixel and its p_galaxy 0.12). With
#: it, an exact catalog gives exactly the classes of the positions as given.
MIN_SHIFT = 0.05


def _gain(window_sigma, psf_sigma):
    """Step gain of a window: ``1 + (psf_sigma / window_sigma)**2``."""
    return 1.0 + (psf_sigma / window_sigma) ** 2


def windowed_centroids(stamps, noise, start_x, start_y, *, psf_sigma, schedule):
    """
    Windowed centroids of sources in background-subtracted stamps.

    Parameters
    ----------
    stamps : `~numpy.ndarray`, shape (N, H, W)
        Background-subtracted stamps; NaN pixels (masked, off the image)
        carry no weight.
    noise : `~numpy.ndarray`, shape (N,)
        Per-pixel noise of each stamp.
    start_x, start_y : `~numpy.ndarray`, shape (N,)
        Starting positions inside the stamps (pixels, 0-based).
    psf_sigma : float or `~numpy.ndarray`, shape (N,)
        The PSF's Gaussian sigma in pixels (the window's unit).
    schedule : sequence of float
        Window sigma of each iteration in units of ``psf_sigma`` (at least
        one pixel).

    Returns
    -------
    x, y : `~numpy.ndarray`, shape (N,)
        Centroids inside the stamps, pixels; NaN where a window held no
        positive weighted flux or the centroid left the stamp.
    error : `~numpy.ndarray`, shape (N,)
        Standard error per axis (the mean of the two axes' variances),
        pixels; NaN where ``x`` is.
    snr : `~numpy.ndarray`, shape (N,)
        Signal-to-noise of the weighted flux in the last window (0 where
        it is not finite).
    """
    n, height, width = stamps.shape
    good = np.isfinite(stamps)
    data = np.where(good, stamps, np.float32(0.0)).astype(np.float32, copy=False)
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    cx = np.array(start_x, dtype=np.float64)
    cy = np.array(start_y, dtype=np.float64)
    psf_sigma = np.broadcast_to(np.asarray(psf_sigma, dtype=np.float64), (n,))
    valid = np.isfinite(cx) & np.isfinite(cy)

    def window(factor):
        # float32 exponentials (vectorised; float64 ones took 0.1 s per
        # 10,000 sources and 7 bands), float64 offsets and sums
        sw = np.maximum(factor * psf_sigma, 1.0)[:, None]
        dx = xs - np.where(valid, cx, 0.0)[:, None]  # (N, W)
        dy = ys - np.where(valid, cy, 0.0)[:, None]  # (N, H)
        wx = np.exp((-0.5 * (dx / sw) ** 2).astype(np.float32))
        wy = np.exp((-0.5 * (dy / sw) ** 2).astype(np.float32))
        return sw[:, 0], dx, dy, wx, wy

    for factor in schedule:
        sw, dx, dy, wx, wy = window(factor)
        # The weight is separable: one stacked matmul gives the row sums of
        # w_y I and w_y dy I, (N, 2, W) (the features' moments do the same).
        rows = np.matmul(np.stack([wy, wy * dy], axis=1).astype(np.float32), data)
        rows = rows.astype(np.float64)
        flux = np.einsum("nw,nw->n", rows[:, 0], wx)
        with np.errstate(invalid="ignore", divide="ignore"):
            shift_x = np.einsum("nw,nw->n", rows[:, 0], wx * dx) / flux
            shift_y = np.einsum("nw,nw->n", rows[:, 1], wx) / flux
        ok = valid & (flux > 0) & np.isfinite(shift_x) & np.isfinite(shift_y)
        gain = _gain(sw, psf_sigma)
        cx = np.where(ok, cx + gain * np.where(ok, shift_x, 0.0), np.nan)
        cy = np.where(ok, cy + gain * np.where(ok, shift_y, 0.0), np.nan)
        valid = ok & (cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1)
    # SExtractor's ERRX2WIN / ERRY2WIN in the last window at the centroid,
    # over the data pixels only (separable again: row sums of w_y^2 and
    # w_y^2 dy^2 over the good pixels)
    sw, dx, dy, wx, wy = window(schedule[-1])
    good32 = good.astype(np.float32)
    rows = np.matmul(wy[:, None, :].astype(np.float32), data)[:, 0].astype(np.float64)
    flux = np.einsum("nw,nw->n", rows, wx)
    sums = np.matmul(np.stack([wy**2, wy**2 * dy**2], axis=1).astype(np.float32), good32)
    sums = sums.astype(np.float64)
    s2 = np.asarray(noise, dtype=np.float64) ** 2
    gain2 = _gain(sw, psf_sigma) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        var_x = gain2 * s2 * np.einsum("nw,nw->n", sums[:, 0], wx**2 * dx**2) / flux**2
        var_y = gain2 * s2 * np.einsum("nw,nw->n", sums[:, 1], wx**2) / flux**2
        snr = flux / np.sqrt(s2 * np.einsum("nw,nw->n", sums[:, 0], wx**2))
    error = np.sqrt(0.5 * (var_x + var_y))
    valid &= np.isfinite(error) & (flux > 0)
    nan = np.full(n, np.nan)
    return (np.where(valid, cx, nan), np.where(valid, cy, nan), np.where(valid, error, nan),
            np.where(np.isfinite(snr), snr, 0.0))


def _robust_scatter(values):
    """Per-axis MAD standard deviation of (M, 2) values, averaged in quadrature."""
    med = np.median(values, axis=0)
    mad = np.median(np.abs(values - med), axis=0) * _MAD_TO_STD
    return float(math.sqrt(np.mean(mad**2)))


def combine_shifts(shifts, errors, *, reference, tau_floor=0.003):
    """
    Each source's sky shift from its per-band shifts, shrunk by its error.

    Parameters
    ----------
    shifts : `~numpy.ndarray`, shape (N, B, 2)
        Per-band shifts on the sky (arcsec); NaN where a band measured none.
    errors : `~numpy.ndarray`, shape (N, B)
        Their standard errors per axis (arcsec).
    reference : `~numpy.ndarray`, shape (N,), bool
        Sources bright enough to measure the catalog's scatter.
    tau_floor : float, optional
        Least catalog scatter (arcsec; `refine_positions` gives `TAU_FLOOR`
        pixels).

    Returns
    -------
    shift : `~numpy.ndarray`, shape (N, 2)
        The shift to apply (arcsec), 0 where none is.
    tau : float
        The catalog's scatter per axis (arcsec), at least ``tau_floor``; 0
        when fewer than `MIN_SCATTER_REFERENCES` references measured it.
    """
    n = shifts.shape[0]
    ok = np.isfinite(shifts).all(axis=2) & np.isfinite(errors) & (errors > 0)
    inv_var = np.where(ok, 1.0 / np.where(ok, errors, 1.0) ** 2, 0.0)
    total = inv_var.sum(axis=1)
    measured = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("nb,nbk->nk", inv_var, np.where(ok[..., None], shifts, 0.0)) \
            / total[:, None]
        sigma = 1.0 / np.sqrt(total)
    refs = measured & reference
    if refs.sum() < MIN_SCATTER_REFERENCES:
        return np.zeros((n, 2)), 0.0
    # scatter of the references' shifts beyond their own errors
    scatter = _robust_scatter(mean[refs])
    tau = math.sqrt(max(scatter**2 - float(np.median(sigma[refs] ** 2)), tau_floor**2))
    with np.errstate(invalid="ignore"):
        weight = tau**2 / (tau**2 + sigma**2)
        expected = np.sqrt(tau**2 + sigma**2)
        outlier = np.hypot(mean[:, 0], mean[:, 1]) > OUTLIER_SIGMAS * expected
    apply = measured & ~outlier
    shift = np.where(apply[:, None], weight[:, None] * mean, 0.0)
    return np.nan_to_num(shift), tau


def _undo_merges(sky, x, y, jacobians, psf_sigma):
    """
    Zero, in place, the shift of the source of each pair whose refined
    positions (``x``, ``y`` + ``sky``, in the first band's pixels) lie
    within `MERGE_FWHM` PSF FWHMs, unless it moved less than its partner:
    two catalog sources cannot sit on one peak, so the one that moved more
    was pulled there from its own, fainter one.
    """
    from scipy.spatial import cKDTree

    band = next(iter(x))
    pix = sky @ np.linalg.inv(np.asarray(jacobians[band], dtype=np.float64)).T
    px, py = x[band] + pix[:, 0], y[band] + pix[:, 1]
    ok = np.flatnonzero(np.isfinite(px) & np.isfinite(py))
    if ok.size < 2:
        return
    radius = MERGE_FWHM * 2.3548 * float(psf_sigma[band])
    pairs = cKDTree(np.column_stack([px[ok], py[ok]])).query_pairs(
        r=max(radius, 1.0), output_type="ndarray")
    if not len(pairs):
        return
    i, j = ok[pairs[:, 0]], ok[pairs[:, 1]]
    moved = np.hypot(sky[:, 0], sky[:, 1])
    sky[np.where(moved[i] >= moved[j], i, j)] = 0.0


def _unique_sources(x, y, bands):
    """
    The distinct sources of per-band positions: ``(keys, inverse)`` with
    ``keys`` (M,) the row of each distinct source (in the order of its
    positions, so any order of the catalog's rows gives the same ones) and
    ``inverse`` (N,) each row's index into them. Duplicated rows are one
    source: they must not count twice, nor be taken for a neighbour.
    """
    stacked = np.column_stack([np.nan_to_num(np.asarray(v[b], dtype=np.float64), nan=-1e300)
                               for b in bands for v in (x, y)])
    _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _evenly(count, limit):
    """``min(count, limit)`` indices spread evenly over ``range(count)``."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _stage1(measure, band, xb, yb, psf_sigma, jac):
    """
    A band's systematic offset from its bright sources: ``(dx, dy)`` pixels,
    the number of references, and their residual shifts (R, 2) and errors
    (R,) in arcsec.
    """
    sample = _evenly(len(xb), STAGE1_SAMPLE)
    stamps, noise, x0, y0 = measure(band, xb[sample], yb[sample])
    ox, oy = xb[sample] - x0, yb[sample] - y0
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = np.max(np.where(np.isfinite(stamps), stamps, -np.inf), axis=(1, 2)) / noise
    peak = np.where(np.isfinite(peak), peak, 0.0)
    top = np.argsort(-peak, kind="stable")[:MAX_REFERENCE_SOURCES]
    top = top[peak[top] >= REFERENCE_SNR / 4.0]
    cx, cy, err, snr = windowed_centroids(stamps[top], noise[top], ox[top], oy[top],
                                          psf_sigma=psf_sigma, schedule=SYSTEMATIC_SCHEDULE)
    bright = np.isfinite(cx) & (snr >= REFERENCE_SNR)
    if bright.sum() < MIN_REFERENCE_SOURCES:
        return 0.0, 0.0, int(bright.sum()), np.empty((0, 2)), np.empty(0)
    shift = np.column_stack([cx[bright] - ox[top][bright], cy[bright] - oy[top][bright]])
    dx, dy = (float(v) for v in np.median(shift, axis=0))
    residual = (shift - [dx, dy]) @ jac.T
    if math.hypot(dx, dy) < MIN_SHIFT:
        dx = dy = 0.0
    return dx, dy, int(bright.sum()), residual, err[bright] * math.sqrt(abs(np.linalg.det(jac)))


def _stage1_scatter(results):
    """The catalog's scatter per axis (arcsec) seen by the bands' references, or 0."""
    taus = []
    for *_, residual, error in results:
        if len(residual) >= MIN_SCATTER_REFERENCES:
            scatter = _robust_scatter(residual)
            taus.append(math.sqrt(max(scatter**2 - float(np.median(error**2)), 0.0)))
    return float(np.median(taus)) if taus else 0.0


def _map(workers, fn, items):
    """``list(map(fn, items))``, on ``workers`` threads when more than one."""
    if workers > 1 and len(items) > 1:
        # numpy releases the GIL in the gathers, matmuls and partitions: 2
        # threads took the 7 bands of 10,000 sources from 0.50 to 0.32 s
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix="astro_starglx-centroids") as pool:
            return list(pool.map(fn, items))
    return [fn(item) for item in items]


def refine_positions(measure, x, y, *, jacobians, psf_sigma, workers=1):
    """
    Per-band pixel positions moved to their sources' windowed centroids.

    Parameters
    ----------
    measure : callable
        ``measure(band, x, y)`` -> ``(stamps, noise, x0, y0)``: the band's
        background-subtracted (N, H, W) stamps cut at the pixel positions
        ``x``, ``y`` (side `WINDOW_SIZE`), their (N,) per-pixel noise and
        the (N,) pixel origin of each stamp (`refine_catalog_positions`
        cuts them from images). Called from ``workers`` threads.
    x, y : dict
        ``{band: (N,) float64}`` catalog positions in each band's pixels (NaN
        allowed: left alone).
    jacobians : dict
        ``{band: (2, 2)}`` arcsec per pixel: sky offset = ``J @ (dx, dy)``.
    psf_sigma : dict
        ``{band: float}`` the PSF's Gaussian sigma in that band's pixels.
    workers : int, optional
        Threads that measure the bands.

    Returns
    -------
    x, y : dict
        New ``{band: (N,) float64}`` arrays (the inputs are not modified).
    report : dict
        ``{"offset_arcsec": {band: [east, north]}, "n_reference": {band:
        int}, "scatter_arcsec": tau, "n_moved": int}``: the systematic
        offset applied per band (the sky offset of its pixel shift, in the
        WCS's intermediate world coordinates), the bright sources it came
        from, the catalog's scatter per axis, and how many rows moved by
        more than 0.01 pixel.

    Notes
    -----
    Duplicated rows are measured once, and the result does not depend on
    the order of the rows. Stage 1 looks at `STAGE1_SAMPLE` sources per
    band at most. When the bright sources show a catalog scatter below
    `SKIP_SCATTER` pixels (exact positions), stage 2 is skipped: its shrinkage
    would move no source by a measurable amount.
    """
    bands = list(x)
    n = len(next(iter(x.values()))) if bands else 0
    report = {"offset_arcsec": {}, "n_reference": {}, "scatter_arcsec": 0.0, "n_moved": 0}
    if n == 0:
        return ({b: np.array(x[b], dtype=np.float64) for b in bands},
                {b: np.array(y[b], dtype=np.float64) for b in bands}, report)
    keys, inverse = _unique_sources(x, y, bands)
    ux = {b: np.asarray(x[b], dtype=np.float64)[keys] for b in bands}
    uy = {b: np.asarray(y[b], dtype=np.float64)[keys] for b in bands}
    jac = {b: np.asarray(jacobians[b], dtype=np.float64) for b in bands}

    results = _map(workers, lambda b: _stage1(measure, b, ux[b], uy[b], psf_sigma[b], jac[b]),
                   bands)
    for band, (dx, dy, n_ref, *_) in zip(bands, results):
        report["offset_arcsec"][band] = [round(float(v), 4) for v in jac[band] @ [dx, dy]]
        report["n_reference"][band] = n_ref
        ux[band] = ux[band] + dx
        uy[band] = uy[band] + dy
    tau = _stage1_scatter(results)
    # the thresholds are in pixels: arcsec through the bands' median scale
    scale = float(np.median([math.sqrt(abs(np.linalg.det(j))) for j in jac.values()]))
    if tau > SKIP_SCATTER * scale:
        tau = _stage2(measure, bands, ux, uy, jac, psf_sigma, workers,
                      tau_floor=TAU_FLOOR * scale)
    report["scatter_arcsec"] = round(tau, 4)
    new_x = {b: ux[b][inverse] for b in bands}
    new_y = {b: uy[b][inverse] for b in bands}
    moved = np.zeros(n, dtype=bool)
    for band in bands:
        with np.errstate(invalid="ignore"):
            moved |= np.hypot(new_x[band] - x[band], new_y[band] - y[band]) > 0.01
    report["n_moved"] = int(moved.sum())
    return new_x, new_y, report


def _stage2(measure, bands, ux, uy, jac, psf_sigma, workers, *, tau_floor):
    """Each source's own shift, combined over the bands and shrunk; moves
    ``ux``, ``uy`` in place and returns the catalog's scatter (arcsec)."""
    m = len(ux[bands[0]])

    def one_band(band):
        stamps, noise, x0, y0 = measure(band, ux[band], uy[band])
        sx, sy = ux[band] - x0, uy[band] - y0
        cx, cy, err, snr = windowed_centroids(stamps, noise, sx, sy, psf_sigma=psf_sigma[band],
                                              schedule=SOURCE_SCHEDULE)
        return (np.column_stack([cx - sx, cy - sy]) @ jac[band].T,
                err * math.sqrt(abs(np.linalg.det(jac[band]))),
                np.isfinite(cx) & (snr >= REFERENCE_SNR))

    results = _map(workers, one_band, bands)
    shifts = np.stack([r[0] for r in results], axis=1) if results else np.empty((m, 0, 2))
    errors = np.stack([r[1] for r in results], axis=1) if results else np.empty((m, 0))
    reference = np.any([r[2] for r in results], axis=0)
    sky, tau = combine_shifts(shifts, errors, reference=reference, tau_floor=tau_floor)
    _undo_merges(sky, ux, uy, jac, psf_sigma)
    band = bands[0]
    small = np.hypot(*(sky @ np.linalg.inv(jac[band]).T).T) < MIN_SHIFT
    sky[small] = 0.0
    for band in bands:
        pix = sky @ np.linalg.inv(jac[band]).T  # (M, 2) pixels
        ux[band] += pix[:, 0]
        uy[band] += pix[:, 1]
    return tau


def _ring_statistics(ring, sigma=None):
    """
    Median of each row of border pixels (NaN ignored; 0 for none) and the
    noise: ``sigma`` where given and finite, else their MAD standard deviation.
    """
    n = len(ring)
    complete = np.isfinite(ring).all(axis=1)
    some = ~complete & np.isfinite(ring).any(axis=1)
    med = np.zeros(n, dtype=np.float32)
    if complete.any():  # np.median partitions: faster than a sort
        med[complete] = np.median(ring[complete], axis=1)
    if some.any():
        med[some] = np.nanmedian(ring[some], axis=1)
    noise = np.full(n, np.nan) if sigma is None else sigma.astype(np.float64)
    need = ~np.isfinite(noise)
    if need.any():
        dev = np.abs(ring[need] - med[need, None])
        with warnings.catch_warnings():  # rows without data: NaN, as intended
            warnings.simplefilter("ignore", RuntimeWarning)
            noise[need] = _MAD_TO_STD * np.nanmedian(dev, axis=1)
    return med, noise


def _pixel_to_arcsec(image, pixel_scale):
    """(2, 2) arcsec per pixel of an image's celestial WCS, else the model's scale."""
    wcs = getattr(image, "wcs", None)
    celestial = getattr(wcs, "celestial", None) if getattr(wcs, "has_celestial", False) \
        else None
    if celestial is not None:
        try:
            matrix = np.asarray(celestial.pixel_scale_matrix, dtype=np.float64) * 3600.0
        except (AttributeError, ValueError):
            matrix = None
        if matrix is not None and matrix.shape == (2, 2) and np.isfinite(matrix).all() \
                and abs(np.linalg.det(matrix)) > 0:
            return matrix
    return np.eye(2) * float(pixel_scale)


def window_fwhm(nominal_fwhm, image_scales, *, model_scale):
    """
    ``{band: arcsec}``: the PSF FWHM that sizes the centroid windows.

    The model's nominal PSF (``meta.psf["nominal_fwhm"]``) as many of the
    images' pixels wide as it is of the model's, as the PSF measurement
    starts from it (on another survey's pixels the nominal FWHM in arcsec
    would be a fraction of a pixel); 2.5 of the model's pixels where the
    model records none.

    Parameters
    ----------
    nominal_fwhm : dict or None
        ``{band: arcsec}`` of the model's nominal PSF.
    image_scales : dict
        ``{band: arcsec per pixel}`` of the images.
    model_scale : float
        Arcsec per pixel of the model.
    """
    nominal = nominal_fwhm or {}
    return {band: float(nominal.get(band, 2.5 * model_scale)) * float(scale) / model_scale
            for band, scale in image_scales.items()}


def refine_catalog_positions(images, x, y, *, psf_fwhm, pixel_scale, workers=1):
    """
    `refine_positions` on images: catalog positions moved to their sources.

    Parameters
    ----------
    images : dict
        ``{band: NDData}`` (validated by the caller); ``mask`` and
        ``uncertainty`` are honoured as in `astro_starglx.cutouts.extract_band`.
    x, y : dict
        ``{band: (N,) float64}`` pixel positions of the catalog's sources in
        each band (as `astro_starglx.inputs.pixel_positions` gives them).
    psf_fwhm : dict
        ``{band: FWHM in arcsec}`` of the PSF (the model's nominal one is
        enough: it only sets the centroid window).
    pixel_scale : float
        Arcsec per pixel of bands without a celestial WCS (a catalog of
        pixel positions on one shared grid).
    workers : int, optional
        Threads that measure the bands.

    Returns
    -------
    x, y, report
        As `refine_positions`.
    """
    jacobians = {band: _pixel_to_arcsec(images[band], pixel_scale) for band in x}
    psf_sigma = {band: float(psf_fwhm[band]) / 2.3548
                 / math.sqrt(abs(np.linalg.det(jacobians[band]))) for band in x}
    data = {band: check_nddata(f"images[{band!r}]", images[band]) for band in x}
    # the stamps' outermost pixels: their median is the background, their
    # MAD the noise where the uncertainty does not give it
    ring = np.flatnonzero(_border_mask(WINDOW_SIZE, WINDOW_SIZE))

    def measure(band, xb, yb):
        # The pixels and the mask at the stamp size, the uncertainty at the
        # source's pixel only: the features' cut (uncertainty stamps) and
        # clipped border statistics took 0.4 s more per 10,000 sources
        # and 7 bands.
        image = images[band]
        plan = _Plan(data[band].shape, xb, yb, WINDOW_SIZE)
        with np.errstate(over="ignore"):
            stamps = plan.gather(data[band], np.nan, np.float32)
        mask = getattr(image, "mask", None)
        if mask is not None:
            mask = np.asanyarray(mask)
            np.copyto(stamps, np.float32(np.nan),
                      where=plan.gather(mask if mask.dtype == bool else mask != 0, False, bool))
        np.copyto(stamps, np.float32(np.nan), where=~np.isfinite(stamps))
        sigma = None
        if image.uncertainty is not None:
            power, scale = uncertainty_scale(image)
            centre = _Plan(data[band].shape, xb, yb, 1)
            with np.errstate(over="ignore"):
                sigma = _to_sigma(centre.gather(np.asanyarray(image.uncertainty.array), np.nan,
                                                np.float32), power, scale)[:, 0, 0]
        background, noise = _ring_statistics(stamps.reshape(len(stamps), -1)[:, ring], sigma)
        stamps -= background[:, None, None].astype(np.float32)
        return stamps, noise, plan.x0, plan.y0

    return refine_positions(measure, x, y, jacobians=jacobians, psf_sigma=psf_sigma,
                            workers=workers)
