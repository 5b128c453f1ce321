"""
Realism report of simulated fields, measured from the images.

`sim_report` takes the images and truth table of a simulated field (from
`~astro_starglx.simulate.simulate_field`, or any multi-band field with a truth
table of the same form) and measures, *from the pixels*:

* the 5-sigma point-source depth per band, from the scatter (4-sigma
  clipped standard deviation) of aperture sums at empty positions
  (``depth_empty``) and from the inverse-variance map (``depth_wht``), both
  in the optimal aperture (the radius of at least one pixel that maximises
  EE(r) / sqrt(n_eff(r)), n_eff the sum of squared pixel weights) and
  aperture-corrected with the curve of growth EE(r) of bright isolated stars;
* the PSF FWHM (Gaussian fit, `photutils.psf.fit_fwhm`) and 80 %
  encircled-energy radius (curve of growth) per band from bright isolated,
  unsaturated stars, relative to their flux within 2 arcsec;
* forced aperture photometry of every truth source in every band (positions
  from ``ra``/``dec`` through each band's WCS, point-source aperture
  correction, so extended galaxies come out fainter than their total
  magnitudes), from which the stellar locus in the (g-r, r-i) and (u-g, g-r)
  planes and the number counts are drawn, and the half-light radius within
  0.6 arcsec (curve of growth) of isolated sources detected at S/N >= 10 in
  the reference band, for the size-magnitude relation.

Images whose header says they are sky-subtracted (``SKYSUB``) are measured
as they are; others have a sigma-clipped median subtracted first.

The truth table only says *where* to measure (and which sources are stars);
no simulator input enters a measured number.

Depth formula: with :math:`\\sigma_{ap}` the standard deviation (e-/s) of the
aperture sum of pure background, :math:`f` the fraction of a point source's
light in the aperture and :math:`T` the exposure time (``EXPTIME``; the image
is in e-/s so the source's own Poisson variance is its aperture sum over
:math:`T`), the aperture sum :math:`A_5` of a 5-sigma source solves
:math:`A_5 = 5 \\sqrt{\\sigma_{ap}^2 + A_5/T}`, i.e.
:math:`A_5 = [25/T + \\sqrt{(25/T)^2 + 100 \\sigma_{ap}^2}]/2`, and
:math:`m_5 = ZP - 2.5 \\log_{10}(A_5 / f)`. Treating every pixel's weight as
one in the source-noise term overestimates it slightly (by less than 0.02
mag at the depth).
"""

import functools
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from .._optional import atomic_write, import_optional
from ..csst import CSST_BAND_INFO

__all__ = ["sim_report", "SimReportWarning"]

log = logging.getLogger(__name__)

# Radii of the stars' curves of growth, native pixels.
_COG_RADII = np.arange(0.5, 6.01, 0.1)
# Radii searched for the optimal photometric aperture, native pixels; below one
# pixel an aperture sum depends strongly on the source's sub-pixel position.
_APERTURE_RADII = np.arange(1.0, 3.0001, 0.05)
# Radius (arcsec) of a star's "total" flux: the diffraction wing beyond 2
# arcsec holds about 0.5-1 % of the light (1 - EE ~ 2 lambda / (pi^2 D R)).
_TOTAL_RADIUS = 2.0
# Minimum S/N of a PSF star in a 1.5-pixel aperture.
_PSF_SNR = 30.0
# Radius of the size measurement's total flux, arcsec.
_SIZE_RADIUS = 0.6


class SimReportWarning(AstropyUserWarning):
    """Something in a realism report could not be measured."""


def _import_matplotlib():
    return import_optional("matplotlib.figure", "plot", feature="sim_report(plot=True)",
                           hint=" or pass plot=False").Figure


def _zeropoint(image, band):
    # The classifier's own look-up, so both read the same keywords.
    from ..inputs import get_zeropoint

    return get_zeropoint(image, band)


def _variance(image):
    unc = image.uncertainty
    if unc is None:
        return None
    arr = np.asarray(unc.array, dtype=float)
    with np.errstate(divide="ignore"):
        if isinstance(unc, InverseVariance):
            return np.where(arr > 0, 1.0 / np.where(arr > 0, arr, 1.0), np.inf)
        if isinstance(unc, StdDevUncertainty):
            return arr**2
        if isinstance(unc, VarianceUncertainty):
            return arr
    return None


def _aperture_sums(data, mask, x, y, radii):
    """Exact-overlap aperture sums, shape (len(x), len(radii))."""
    from photutils.aperture import CircularAperture, aperture_photometry

    out = np.full((len(x), len(radii)), np.nan)
    if len(x) == 0:
        return out
    positions = np.column_stack([x, y])
    apertures = [CircularAperture(positions, r) for r in radii]
    phot = aperture_photometry(data, apertures, mask=mask, method="exact")
    for k in range(len(radii)):
        out[:, k] = np.asarray(phot[f"aperture_sum_{k}"], dtype=float)
    return out


@functools.lru_cache(maxsize=1)
def _effective_npix():
    """Mean sum of squared exact-overlap weights of circles of radius
    _APERTURE_RADII at random sub-pixel centres: the variance of an aperture
    sum of white noise in units of the pixel variance."""
    from photutils.aperture import CircularAperture

    centres = np.random.default_rng(0).uniform(-0.5, 0.5, (64, 2))
    out = np.empty(_APERTURE_RADII.size)
    for k, radius in enumerate(_APERTURE_RADII):
        size = int(math.ceil(radius)) + 2
        out[k] = np.mean([np.sum(CircularAperture((size + cx, size + cy), radius)
                                 .to_mask(method="exact").data ** 2) for cx, cy in centres])
    return out


def _inside(x, y, shape, margin):
    ny, nx = shape
    return (x >= margin) & (y >= margin) & (x <= nx - 1 - margin) & (y <= ny - 1 - margin)


def _pixel_scale(image):
    scales = image.wcs.proj_plane_pixel_scales()
    return float(np.mean([s.to_value(u.arcsec) for s in scales]))


def _truth_mag(truth, band):
    for name in (f"mag_{band}", "mag_r"):
        if name in truth.colnames:
            return np.asarray(truth[name], dtype=float)
    return np.full(len(truth), 20.0)


def _measure_band(image, band, truth, rng, n_empty):
    data = np.asarray(image.data, dtype=float)
    shape = data.shape
    mask = np.zeros(shape, bool) if image.mask is None else np.asarray(image.mask, bool)
    mask = mask | ~np.isfinite(data)
    zp = _zeropoint(image, band)
    t_exp = float(image.meta.get("EXPTIME", np.inf))
    scale = _pixel_scale(image)
    _, bkg, pix_sigma = sigma_clipped_stats(data, mask=mask, sigma=3.0, maxiters=5)
    # Images that say they are sky-subtracted (SKYSUB) are taken as they are:
    # the clipped median is biased high by faint sources (by ~5 % of the pixel
    # noise here, 1-3 % of a bright star's flux over a 2 arcsec aperture).
    if image.meta.get("SKYSUB", False):
        bkg = 0.0
    data = np.where(mask, 0.0, data - bkg)

    x, y = image.wcs.all_world2pix(np.asarray(truth["ra"], float),
                                   np.asarray(truth["dec"], float), 0)
    mag_true = _truth_mag(truth, band)
    is_star = np.asarray(truth["label"]) == "star"
    hlr = np.asarray(truth["hlr"], float) if "hlr" in truth.colnames else np.zeros(len(x))
    r_tot = _TOTAL_RADIUS / scale

    # Bright isolated unsaturated stars for the PSF.
    inside = _inside(x, y, shape, r_tot + 2)
    cand = np.flatnonzero(is_star & inside)
    good = []
    h = int(math.ceil(r_tot))
    for k in cand:
        d = np.hypot(x - x[k], y - y[k])
        d[k] = np.inf
        crowded = np.any((d < r_tot + 3.0) & (mag_true < mag_true[k] + 4.0))
        iy0, ix0 = int(round(y[k])), int(round(x[k]))
        if crowded or mask[iy0 - h:iy0 + h + 1, ix0 - h:ix0 + h + 1].any():
            continue
        good.append(k)
    good = np.asarray(good, dtype=int)
    cog = np.empty((0, _COG_RADII.size + 1))
    if good.size:
        sums = _aperture_sums(data, mask, x[good], y[good], [*_COG_RADII, r_tot])
        core = sums[:, np.argmin(np.abs(_COG_RADII - 1.5))]
        bright = core / np.sqrt(2.25 * np.pi * pix_sigma**2 + np.abs(core) / t_exp) > _PSF_SNR
        order = np.argsort(-sums[bright, -1])[:40]
        good = good[bright][order]
        cog = sums[bright][order]
    n_psf = good.size

    row = {"band": band, "n_psf_stars": n_psf, "n_empty": 0,
           "sigma_pixel": float(pix_sigma), "zeropoint": zp}
    nan = float("nan")
    r_ap = f_ap = s_ap = r80 = fwhm = depth_empty = depth_wht = nan
    if n_psf >= 3:
        # Weighted mean of the stars' normalised curves of growth, weights
        # (S/N)^2 of their totals capped at S/N = 100: faint stars' noisy totals
        # count little, and no single bright star (one sub-pixel phase) rules.
        total = cog[:, -1]
        snr_tot = total / np.sqrt(np.pi * r_tot**2 * pix_sigma**2
                                  + np.clip(total, 0, None) / t_exp)
        weight = np.minimum(np.clip(snr_tot, 0, None), 100.0) ** 2
        ee = weight @ (cog[:, :-1] / total[:, None]) / weight.sum()
        r80 = float(np.interp(0.8, np.maximum.accumulate(ee), _COG_RADII)) * scale
        # Optimal aperture: maximal S/N of a faint point source in white noise,
        # EE(r) / sqrt(sum of squared pixel weights); choosing it from geometry
        # rather than from the measured noise keeps the choice from chasing the
        # noise of single radii.
        ee_ap = np.interp(_APERTURE_RADII, _COG_RADII, ee)
        n_eff = _effective_npix()
        k = int(np.argmax(ee_ap / np.sqrt(n_eff)))
        r_ap, f_ap = float(_APERTURE_RADII[k]), float(ee_ap[k])
        with warnings.catch_warnings():
            # fit_fwhm warns when a fit may not have converged; the median absorbs it.
            warnings.simplefilter("ignore", AstropyUserWarning)
            from photutils.psf import fit_fwhm

            fwhm = float(np.median(fit_fwhm(data, xypos=np.column_stack([x[good], y[good]]),
                                            fit_shape=7, fwhm=2.0, mask=mask))) * scale

        # Empty positions: away from every truth source (further from bright ones).
        margin = r_ap + 2
        excl = (1.0 + 4.0 * np.nan_to_num(hlr)
                + 0.4 * np.clip(22.0 - mag_true, 0, None)) / scale
        cx = rng.uniform(margin, shape[1] - 1 - margin, 6 * n_empty)
        cy = rng.uniform(margin, shape[0] - 1 - margin, 6 * n_empty)
        keep = ~mask[np.round(cy).astype(int), np.round(cx).astype(int)]
        for start in range(0, cx.size, 2000):
            sl = slice(start, start + 2000)
            dist = np.hypot(cx[sl, None] - x[None, :], cy[sl, None] - y[None, :])
            keep[sl] &= np.all(dist > excl[None, :], axis=1)
        cx, cy = cx[keep][:n_empty], cy[keep][:n_empty]
        row["n_empty"] = cx.size
        if cx.size >= 50:
            empty = _aperture_sums(data, mask, cx, cy, [r_ap])[:, 0]
            # 4-sigma clipping drops sums hit by undetected sources and biases
            # the standard deviation of Gaussian noise by less than 0.1 %.
            s_ap = float(sigma_clipped_stats(empty, sigma=4.0, maxiters=5)[2])
            a5 = 0.5 * (25.0 / t_exp + math.sqrt((25.0 / t_exp) ** 2 + 100.0 * s_ap**2))
            depth_empty = zp - 2.5 * math.log10(a5 / f_ap)
        var = _variance(image)
        if var is not None:
            var_pix = float(np.median(var[~mask & np.isfinite(var)]))
            s_wht = math.sqrt(var_pix * n_eff[k])
            a5w = 0.5 * (25.0 / t_exp + math.sqrt((25.0 / t_exp) ** 2 + 100.0 * s_wht**2))
            depth_wht = zp - 2.5 * math.log10(a5w / f_ap)
            if not np.isfinite(s_ap):
                s_ap = s_wht

    # Forced photometry of every source in the optimal aperture.
    n = len(truth)
    flux = np.full(n, np.nan)
    err = np.full(n, np.nan)
    if np.isfinite(s_ap):
        ok = _inside(x, y, shape, r_ap + 1)
        sums = _aperture_sums(data, mask, x[ok], y[ok], [r_ap])[:, 0]
        flux[ok] = sums / f_ap
        err[ok] = np.sqrt(s_ap**2 + np.clip(sums, 0, None) / t_exp) / f_ap
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
        mag = np.where(flux > 0, zp - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    zp_offset = nan
    offsets = (mag[good] - mag_true[good]) if n_psf else np.empty(0)
    if np.isfinite(offsets).any():
        zp_offset = float(np.nanmedian(offsets))
    row.update({
        "depth_empty": depth_empty, "depth_wht": depth_wht, "fwhm": fwhm, "r80": r80,
        "aperture_radius": r_ap * scale, "aperture_fraction": f_ap, "zp_offset": zp_offset,
        "n_detected": int(np.count_nonzero(snr >= 5)),
    })
    return row, {"x": x, "y": y, "mag": mag, "magerr": 1.0857 / snr, "snr": snr,
                 "data": data, "mask": mask, "scale": scale, "pix_sigma": float(pix_sigma),
                 "t_exp": t_exp}


def _half_light_radius(meas, mag_true):
    """Curve-of-growth half-light radius (arcsec) within _SIZE_RADIUS, for
    sources detected at S/N >= 10 within that radius and without a neighbour
    (brighter than 2.5 mag fainter) inside that radius plus 3 pixels."""
    scale = meas["scale"]
    r_max = _SIZE_RADIUS / scale
    radii = np.arange(0.5, r_max + 0.01, 0.5)
    x, y = meas["x"], meas["y"]
    out = np.full(x.size, np.nan)
    cand = np.flatnonzero(_inside(x, y, meas["data"].shape, r_max + 1)
                          & (np.nan_to_num(meas["snr"]) >= 5))
    keep = []
    for k in cand:
        d = np.hypot(x - x[k], y - y[k])
        d[k] = np.inf
        if not np.any((d < r_max + 3.0) & (mag_true < mag_true[k] + 2.5)):
            keep.append(k)
    idx = np.asarray(keep, dtype=int)
    if idx.size == 0:
        return out
    sums = _aperture_sums(meas["data"], meas["mask"], x[idx], y[idx], radii)
    total = sums[:, -1]
    noise = np.sqrt(np.pi * r_max**2 * meas["pix_sigma"] ** 2
                    + np.clip(total, 0, None) / meas["t_exp"])
    for j in np.flatnonzero(total >= 10.0 * noise):
        curve = np.maximum.accumulate(sums[j] / total[j])
        out[idx[j]] = float(np.interp(0.5, curve, radii)) * scale
    return out


def sim_report(images, truth, *, outdir, plot=True, n_empty=1000, reference_band="r",
               seed=0):
    """
    Measure the realism of a simulated field from its images.

    Parameters
    ----------
    images : mapping of str to `~astropy.nddata.CCDData`
        One image per band, with a celestial WCS, a zero point in the header
        (``MAGZERO``, ``PHOTZP`` or ``ZP``), ``EXPTIME`` (for the source
        noise of an image in e-/s) and optionally an ``uncertainty``. Not
        modified.
    truth : `~astropy.table.Table`
        ``id``, ``label`` (``"star"``/``"galaxy"``), ``ra``, ``dec`` (deg),
        and optionally ``mag_<band>`` (to pick isolated stars, and to compare)
        and ``hlr`` (arcsec). Not modified.
    outdir : str or `~pathlib.Path`
        Folder for the outputs (created if needed): ``sim_report_bands.ecsv``
        (the returned table), ``sim_report_sources.ecsv`` (forced photometry
        of every source) and, with ``plot=True``, ``sim_report_psf_depth.png``,
        ``sim_report_locus.png``, ``sim_report_size_mag.png`` and
        ``sim_report_counts.png``.
    plot : bool, optional
        Write the figures (needs matplotlib).
    n_empty : int, optional
        Number of empty apertures per band for the depth.
    reference_band : str, optional
        Band of the size and number-count measurements.
    seed : int or None, optional
        Seed of the empty-aperture positions.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per band: ``band``, ``wave_eff`` (nm), ``depth_design``,
        ``depth_empty``, ``depth_wht`` (AB mag), ``fwhm``, ``r80``,
        ``r80_design``, ``aperture_radius`` (arcsec), ``aperture_fraction``,
        ``zp_offset`` (median measured minus true magnitude of the PSF stars),
        ``sigma_pixel`` (image units), ``n_psf_stars``, ``n_empty``,
        ``n_detected`` (S/N >= 5), ``zeropoint``. Values that could not be
        measured (fewer than 3 bright isolated stars, or 50 empty positions)
        are NaN, with one `SimReportWarning` per call.

    Raises
    ------
    ValueError
        If ``images``, ``truth``, ``n_empty`` or ``reference_band`` is invalid.
    ImportError
        If ``plot=True`` and matplotlib is not installed.
    """
    if not isinstance(images, Mapping) or not images:
        msg = f"images must be a non-empty mapping {{band: CCDData}}, got {type(images).__name__}"
        raise ValueError(msg)
    for band, image in images.items():
        if getattr(image, "wcs", None) is None or not image.wcs.has_celestial:
            msg = f"images[{band!r}] has no celestial WCS; every band needs its own WCS"
            raise ValueError(msg)
        _zeropoint(image, band)
    if not isinstance(truth, Table):
        msg = f"truth must be an astropy Table, got {type(truth).__name__}"
        raise ValueError(msg)
    missing = [c for c in ("id", "label", "ra", "dec") if c not in truth.colnames]
    if missing:
        msg = f"truth lacks the columns {missing}; pass the truth table of simulate_field"
        raise ValueError(msg)
    if (isinstance(n_empty, (bool, np.bool_)) or not isinstance(n_empty, (int, np.integer))
            or n_empty < 50):
        msg = f"n_empty must be an integer >= 50, got {n_empty!r}"
        raise ValueError(msg)
    if reference_band not in images:
        msg = (f"reference_band must be one of the bands of images {list(images)}, "
               f"got {reference_band!r}")
        raise ValueError(msg)
    Figure = _import_matplotlib() if plot else None

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, meas = [], {}
    for band, image in images.items():
        row, meas[band] = _measure_band(image, band, truth, rng, int(n_empty))
        info = CSST_BAND_INFO.get(band)
        row["wave_eff"] = float(image.meta.get("WAVEEFF", info.wave_eff if info else np.nan))
        row["depth_design"] = float(image.meta.get("DEPTH5", info.depth if info else np.nan))
        row["r80_design"] = info.r80 if info else np.nan
        rows.append(row)
    names = ["band", "wave_eff", "depth_design", "depth_empty", "depth_wht", "fwhm", "r80",
             "r80_design", "aperture_radius", "aperture_fraction", "zp_offset",
             "sigma_pixel", "n_psf_stars", "n_empty", "n_detected", "zeropoint"]
    table = Table(rows=[[r[c] for c in names] for r in rows], names=names)
    for col, unit in (("wave_eff", u.nm), ("depth_design", u.mag), ("depth_empty", u.mag),
                      ("depth_wht", u.mag), ("fwhm", u.arcsec), ("r80", u.arcsec),
                      ("r80_design", u.arcsec), ("aperture_radius", u.arcsec),
                      ("zp_offset", u.mag), ("zeropoint", u.mag)):
        table[col].unit = unit
    failed = [r["band"] for r in rows if not np.isfinite(r["depth_empty"])]
    if failed:
        warnings.warn(f"could not measure the PSF and depth in bands {failed}: fewer than 3 "
                      "bright isolated unsaturated stars or 50 empty positions; simulate a "
                      "larger field or more stars", SimReportWarning, stacklevel=2)

    sources = Table()
    sources["id"] = truth["id"]
    sources["label"] = truth["label"]
    for band in images:
        m = meas[band]
        sources[f"mag_true_{band}"] = _truth_mag(truth, band)
        sources[f"mag_{band}"] = m["mag"]
        sources[f"magerr_{band}"] = m["magerr"]
        sources[f"snr_{band}"] = m["snr"]
    ref = meas[reference_band]
    sources["r50"] = _half_light_radius(ref, _truth_mag(truth, reference_band))
    sources["r50"].unit = u.arcsec
    if "hlr" in truth.colnames:
        sources["hlr_true"] = truth["hlr"]

    table.meta["reference_band"] = reference_band
    table.meta["n_sources"] = len(truth)
    files = [outdir / "sim_report_bands.ecsv", outdir / "sim_report_sources.ecsv"]
    for path, result in zip(files, (table, sources)):
        with atomic_write(path, "w") as fh:
            result.write(fh, format="ascii.ecsv")
    if plot:
        files += _plots(Figure, table, sources, list(images), reference_band, outdir)
    log.info("realism report written to %s", outdir)
    return table


def _plots(Figure, table, sources, bands, ref, outdir):
    files = []
    is_star = np.asarray(sources["label"]) == "star"

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    wave = np.asarray(table["wave_eff"], float)
    ax1.plot(wave, table["depth_design"], "ks--", label="design")
    ax1.plot(wave, table["depth_empty"], "o", label="empty apertures")
    ax1.plot(wave, table["depth_wht"], "x", label="inverse variance")
    ax1.set(xlabel="wavelength (nm)", ylabel="5-sigma point-source depth (AB)")
    ax1.legend()
    ax2.plot(wave, table["r80_design"], "ks--", label="R80 design")
    ax2.plot(wave, table["r80"], "o", label="R80 measured")
    ax2.plot(wave, table["fwhm"], "^", label="FWHM measured")
    ax2.set(xlabel="wavelength (nm)", ylabel="arcsec")
    ax2.legend()
    files.append(_save(fig, outdir / "sim_report_psf_depth.png"))

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (b1, b2, b3) in zip(axes, (("g", "r", "i"), ("u", "g", "r"))):
        if not all(b in bands for b in (b1, b2, b3)):
            ax.text(0.5, 0.5, f"needs {b1}, {b2}, {b3}", ha="center", transform=ax.transAxes)
            continue
        snr = [np.asarray(sources[f"snr_{b}"], float) for b in (b1, b2, b3)]
        snr_min = np.nan_to_num(np.min(snr, axis=0))
        good = snr_min >= np.where(is_star, 20.0, 10.0)
        c_x = np.asarray(sources[f"mag_{b2}"]) - np.asarray(sources[f"mag_{b3}"])
        c_y = np.asarray(sources[f"mag_{b1}"]) - np.asarray(sources[f"mag_{b2}"])
        t_x = np.asarray(sources[f"mag_true_{b2}"]) - np.asarray(sources[f"mag_true_{b3}"])
        t_y = np.asarray(sources[f"mag_true_{b1}"]) - np.asarray(sources[f"mag_true_{b2}"])
        ax.plot(c_x[good & ~is_star], c_y[good & ~is_star], ".", color="0.6", ms=3,
                label="galaxies")
        ax.plot(c_x[good & is_star], c_y[good & is_star], "r.", ms=5, label="stars")
        ax.plot(t_x[is_star], t_y[is_star], "k+", ms=4, alpha=0.5, label="stars (true)")
        ax.set(xlabel=f"{b2} - {b3}", ylabel=f"{b1} - {b2}",
               title="S/N >= 20 (stars), 10 (galaxies) in all three")
        ax.legend(fontsize="small")
    files.append(_save(fig, outdir / "sim_report_locus.png"))

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    mag = np.asarray(sources[f"mag_{ref}"], float)
    r50 = np.asarray(sources["r50"], float)
    ax.plot(mag[~is_star], r50[~is_star], ".", color="tab:blue", ms=3, label="galaxies")
    ax.plot(mag[is_star], r50[is_star], "r.", ms=4, label="stars")
    if "hlr_true" in sources.colnames:
        ax.plot(np.asarray(sources[f"mag_true_{ref}"])[~is_star],
                np.asarray(sources["hlr_true"])[~is_star], "x", color="0.6", ms=3,
                label="galaxies, true hlr")
    ax.set(xlabel=f"{ref} (AB, measured)", ylabel="half-light radius (arcsec)", yscale="log",
           title=f"{ref}: r50 within {_SIZE_RADIUS} arcsec (isolated, S/N >= 10)")
    ax.legend(fontsize="small")
    files.append(_save(fig, outdir / "sim_report_size_mag.png"))

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    true_mag = np.asarray(sources[f"mag_true_{ref}"], float)
    finite = true_mag[np.isfinite(true_mag)]
    if finite.size:
        edges = np.arange(np.floor(finite.min()), np.ceil(finite.max()) + 0.51, 0.5)
        detected = np.nan_to_num(np.asarray(sources[f"snr_{ref}"], float)) >= 5
        for sel, name, color in ((is_star, "stars", "r"), (~is_star, "galaxies", "tab:blue")):
            n_true, _ = np.histogram(true_mag[sel], edges)
            n_det, _ = np.histogram(mag[sel & detected], edges)
            ax.step(edges[:-1], n_true, where="post", color=color, label=f"{name} (true)")
            ax.step(edges[:-1], n_det, where="post", color=color, ls="--",
                    label=f"{name} (measured, S/N >= 5)")
        ax.set(yscale="log", xlabel=f"{ref} (AB)", ylabel="N per 0.5 mag",
               title="number counts")
        ax.legend(fontsize="small")
    files.append(_save(fig, outdir / "sim_report_counts.png"))
    return files


def _save(fig, path):
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    return path
