"""
Star/galaxy labels for your own catalog from Gaia DR3 and SDSS (astroquery).

Two independent sources of labels, for `~astro_starglx.fine_tune` and
`~astro_starglx.evaluation.evaluate_catalog`:

- `gaia_labels`: stars are sources with a significant Gaia DR3 parallax or
  proper motion (galaxies and quasars have neither). Gaia cannot label
  galaxies, and distant halo stars without significant motion stay
  unlabelled.
- `sdss_labels`: the SDSS spectroscopic class (``STAR``, ``GALAXY``,
  ``QSO``) of the nearest spectrum.

Both need the ``remote`` extra (``pip install "astro_starglx[remote]"``),
query the archive in a few batched cone (or box) queries rather than one per
source, retry with exponential backoff on HTTP 429 (rate limit) and 5xx
answers, keep each answer in a local ECSV cache (so that a second call, or a
call on a machine without network that has the cache, needs no query), and
return a new Table aligned row by row with the input catalog, masked where
nothing matched. The input catalog is never modified.
"""

import hashlib
import logging
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ._validation import check_bool, check_catalog, check_count, check_real

__all__ = ["gaia_labels", "sdss_labels", "label_cache_dir"]

log = logging.getLogger(__name__)

#: Gaia DR3 epoch of positions (``ref_epoch`` of ``gaiadr3.gaia_source``).
GAIA_DR3_EPOCH = 2016.0

# Parallax zero point of Gaia (E)DR3 measured on quasars: median -17 uas
# (Lindegren et al. 2021, A&A 649, A2), subtracted before the significance.
_GAIA_PARALLAX_ZEROPOINT = -0.017

_GAIA_COLUMNS = ("source_id", "ra", "dec", "ref_epoch", "parallax", "parallax_error",
                 "pmra", "pmra_error", "pmdec", "pmdec_error", "pmra_pmdec_corr", "ruwe",
                 "astrometric_params_solved", "phot_g_mean_mag")
_SDSS_COLUMNS = ("specObjID", "ra", "dec", "class", "subClass", "z", "zErr", "zWarning")

# HTTP answers worth retrying: rate limiting and server-side failures. TAP
# (Gaia) raises HTTPError with only the reason text, so both are matched.
_RETRY_STATUS = {429, 500, 502, 503, 504}
_RETRY_REASONS = ("too many requests", "internal server error", "bad gateway",
                  "service unavailable", "gateway time")

# time.sleep, replaceable in tests.
_sleep = time.sleep


# ---------------------------------------------------------------------------
# public functions


def gaia_labels(catalog, *, radius=1.0, parallax_snr=5.0, pm_snr=5.0, max_ruwe=1.4,
                epoch=None, label_column="label", chunk_radius=0.25, cache=True, retries=4,
                backoff=2.0, ra_column="ra", dec_column="dec"):
    """
    Mark stars by a significant Gaia DR3 parallax or proper motion.

    The catalog's positions are grouped into cones of at most
    ``chunk_radius`` degrees, each cone is one query of
    ``gaiadr3.gaia_source`` (`astroquery.gaia.Gaia.launch_job_async`), and
    every source is matched to its nearest Gaia source within ``radius``.
    A matched source is labelled ``"star"`` when its astrometry is good
    (five- or six-parameter solution, ``ruwe < max_ruwe``) and either

    - its parallax, corrected for the quasar zero point of -0.017 mas
      (Lindegren et al. 2021, A&A 649, A2), exceeds ``parallax_snr`` times
      its error, or
    - its proper motion differs from zero by more than ``pm_snr`` sigma
      (``sqrt(chi2)`` with the ``pmra``/``pmdec`` covariance).

    All other rows have a masked label: Gaia does not say "galaxy", and a
    star without a significant motion (faint, distant) is not labelled.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Sources with sky positions (degrees, or angle Quantities). Never
        modified.
    radius : float, optional
        Match radius, arcsec.
    parallax_snr, pm_snr : float, optional
        Significance cuts (sigma) of the parallax and the proper motion.
    max_ruwe : float, optional
        Astrometric quality cut: the renormalised unit weight error must be
        below it (1.4 is the Gaia team's recommendation for a
        well-behaved single-star solution, Lindegren et al. 2021).
    epoch : float or None, optional
        Epoch (Julian year) of the catalog's positions: Gaia positions
        (epoch 2016.0) are moved by their proper motion to it before the
        match, so that fast-moving stars still match. ``None`` matches at
        2016.0.
    label_column : str, optional
        Name of the output label column.
    chunk_radius : float, optional
        Largest cone of one query, degrees (a dense Galactic field holds of
        order 10^5 Gaia sources per square degree).
    cache : bool or path-like, optional
        ``True`` keeps each query's answer in
        ``$ASTRO_STARGLX_CACHE/labels`` (else the user cache folder,
        `label_cache_dir`) and reuses it; a folder keeps them there;
        ``False`` always queries.
    retries : int, optional
        Retries of a query answered with HTTP 429 or 5xx (or a dropped
        connection), waiting ``backoff``, ``2 * backoff``, ... seconds.
    backoff : float, optional
        First wait between retries, seconds.
    ra_column, dec_column : str, optional
        Sky position columns
        (with the defaults, ``RA``/``DEC`` and the other names of
        `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).

    Returns
    -------
    labels : `~astropy.table.Table`
        One row per catalog row, in order, masked where nothing matched:
        ``gaia_source_id``, ``gaia_sep`` (arcsec), ``gaia_parallax_snr``,
        ``gaia_pm_snr``, ``gaia_ruwe``, ``gaia_g`` and ``label_column``
        (``"star"`` or masked). ``meta`` records the cuts, the queries and
        the counts.

    Raises
    ------
    ImportError
        If astroquery is not installed (the message names the extra).
    ConnectionError
        If the Gaia archive cannot be reached after the retries; the message
        names the query that failed and what to do.
    TypeError, ValueError
        For an invalid catalog or option; the message names it.

    Notes
    -----
    Purity. An extragalactic source has zero parallax and proper motion, so
    with Gaussian errors it passes a one-sided 5-sigma parallax cut with
    probability 3e-7 and the 5-sigma proper-motion cut (chi2 with 2 degrees
    of freedom above 25) with probability exp(-12.5) = 4e-6. Gaia's formal
    errors are underestimated, by up to about 30 % for bright sources
    (El-Badry, Rix & Heintz 2021, MNRAS 506, 2269); with errors 30 % too
    small the rates become 6e-5 and 6e-4, so fewer than one galaxy in a
    thousand with Gaia astrometry is called a star. The Gaia-CRF3 quasar
    selection uses the same idea in reverse (astrometry consistent with zero
    within a few sigma; Gaia Collaboration, Klioner et al. 2022, A&A 667,
    A148). The cuts on solution type and RUWE remove the spurious
    astrometry of extended and blended sources (Gaia DR3 galaxy candidates
    are mostly compact nuclei, Gaia Collaboration, Bailer-Jones et al. 2023,
    A&A 674, A41). Completeness is the weak side: Gaia reaches G ~ 21, and
    beyond a few kpc most halo stars have no 5-sigma motion, so the labelled
    stars are biased bright and nearby; pair it with `sdss_labels` for
    galaxies.
    """
    check_catalog(catalog)
    radius = check_real("radius", radius, low=0.0, low_open=True, hint=" arcsec; e.g. 1.0")
    parallax_snr = check_real("parallax_snr", parallax_snr, low=0.0, low_open=True,
                              hint="; e.g. parallax_snr=5")
    pm_snr = check_real("pm_snr", pm_snr, low=0.0, low_open=True, hint="; e.g. pm_snr=5")
    max_ruwe = check_real("max_ruwe", max_ruwe, low=1.0, hint="; e.g. max_ruwe=1.4")
    if epoch is not None:
        epoch = check_real("epoch", epoch, low=1900.0, high=2100.0,
                           hint=" (a Julian year, e.g. 2019.5) or None")
    options = _common_options(label_column, chunk_radius, cache, retries, backoff)
    coords, finite = _positions(catalog, ra_column, dec_column)
    gaia = _import_service("astroquery.gaia", "Gaia", "gaia_labels")
    cones = _cones(coords, chunk_radius=options["chunk_radius"], radius=radius)
    parts, queries = [], []
    for ra0, dec0, r in cones:
        query = (f"SELECT {', '.join(_GAIA_COLUMNS)} FROM gaiadr3.gaia_source WHERE 1 = "
                 f"CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra0:.7f}, {dec0:.7f}, "
                 f"{r:.7f}))")
        queries.append(query)
        parts.append(_cached_query("gaia", query, lambda q=query: _gaia_run(gaia, q),
                                   options=options, what="the Gaia DR3 archive "
                                   "(gea.esac.esa.int)"))
    ref = _stack(parts, "source_id", _GAIA_COLUMNS)
    ref_ra, ref_dec = _float(ref, "ra"), _float(ref, "dec")
    pmra = np.nan_to_num(_float(ref, "pmra"))
    pmdec = np.nan_to_num(_float(ref, "pmdec"))
    if epoch is not None and len(ref):
        dt = epoch - np.nan_to_num(_float(ref, "ref_epoch"), nan=GAIA_DR3_EPOCH)
        ref_dec = ref_dec + pmdec * dt / 3.6e6
        ref_ra = ref_ra + pmra * dt / 3.6e6 / np.cos(np.deg2rad(ref_dec))
    idx, sep = _match(coords, ref_ra, ref_dec, radius)

    n = len(catalog)
    matched, sel = _matched_rows(n, finite, idx)
    plx_snr = ((_float(ref, "parallax") - _GAIA_PARALLAX_ZEROPOINT)
               / _float(ref, "parallax_error"))
    pm_sig = _pm_significance(ref)
    solved = np.asarray(ref["astrometric_params_solved"]) if len(ref) else np.zeros(0)
    good = (np.isin(np.ma.filled(solved, 0), (31, 95))
            & (np.nan_to_num(_float(ref, "ruwe"), nan=np.inf) < max_ruwe))
    is_star = good & ((np.nan_to_num(plx_snr, nan=-np.inf) > parallax_snr)
                      | (np.nan_to_num(pm_sig, nan=-np.inf) > pm_snr))
    columns = {
        "gaia_source_id": (np.asarray(ref["source_id"], dtype=np.int64) if len(ref)
                           else np.zeros(0, np.int64), None),
        "gaia_sep": (np.full(len(ref), np.nan), "arcsec"),
        "gaia_parallax_snr": (plx_snr, None),
        "gaia_pm_snr": (pm_sig, None),
        "gaia_ruwe": (_float(ref, "ruwe"), None),
        "gaia_g": (_float(ref, "phot_g_mean_mag"), "mag"),
    }
    out = _aligned(columns, n, matched, sel)
    out["gaia_sep"][matched] = sep[idx >= 0]
    out["gaia_sep"].unit = "arcsec"
    star = np.zeros(n, dtype=bool)
    star[matched] = is_star[sel]
    _add_label(out, label_column, np.where(star, "star", ""), ~star)
    out.meta["gaia_labels"] = {
        "catalog": "gaiadr3.gaia_source", "radius_arcsec": radius,
        "parallax_snr": parallax_snr, "pm_snr": pm_snr, "max_ruwe": max_ruwe,
        "parallax_zeropoint_mas": _GAIA_PARALLAX_ZEROPOINT, "epoch": epoch,
        "n_queries": len(queries), "n_matched": int(matched.sum()), "n_star": int(star.sum()),
    }
    log.info("gaia_labels: %d of %d sources matched, %d marked stars (%d queries)",
             int(matched.sum()), n, int(star.sum()), len(queries))
    return out


def sdss_labels(catalog, *, radius=1.0, qso="star", max_zwarning=0, data_release=17,
                label_column="label", chunk_radius=0.25, cache=True, retries=4, backoff=2.0,
                timeout=120, ra_column="ra", dec_column="dec"):
    """
    Labels from SDSS spectroscopic classes (``STAR``, ``GALAXY``, ``QSO``).

    The catalog's positions are grouped into boxes of at most about
    ``2 * chunk_radius`` degrees; each box is one SQL query of the
    ``SpecObj`` view (science-primary spectra) through
    `astroquery.sdss.SDSS.query_sql`, and every source takes the class of
    the nearest spectrum within ``radius``.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Sources with sky positions (degrees). Never modified.
    radius : float, optional
        Match radius, arcsec (SDSS fibres are 3" or 2" wide).
    qso : {"star", "galaxy", None}, optional
        Label of ``QSO`` spectra: ``"star"`` (the default) because a
        star/galaxy classifier separates point sources from resolved ones
        and SDSS quasars are nearly all unresolved at ground-based seeing;
        ``None`` leaves them unlabelled (low-redshift quasars with visible
        hosts are the exception: check ``sdss_z``).
    max_zwarning : int or None, optional
        Only spectra whose ``zWarning`` bit mask is at most this (0: no
        warning, the SDSS recommendation) give a label; ``None`` keeps all.
    data_release : int, optional
        SDSS data release (astroquery's ``data_release``).
    label_column : str, optional
        Name of the output label column.
    chunk_radius : float, optional
        Half side of the largest box of one query, degrees.
    cache : bool or path-like, optional
        As in `gaia_labels`; with ``True`` astroquery's own cache is used
        too.
    retries, backoff : int, float, optional
        As in `gaia_labels`.
    timeout : float, optional
        Timeout of one query, seconds.
    ra_column, dec_column : str, optional
        Sky position columns
        (with the defaults, ``RA``/``DEC`` and the other names of
        `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).

    Returns
    -------
    labels : `~astropy.table.Table`
        One row per catalog row, in order, masked where no spectrum
        matched: ``sdss_specobjid``, ``sdss_sep`` (arcsec), ``sdss_class``,
        ``sdss_subclass``, ``sdss_z``, ``sdss_zwarning`` and
        ``label_column`` (``"star"``/``"galaxy"``, masked where unmatched,
        warned or an unlabelled QSO).

    Raises
    ------
    ImportError
        If astroquery is not installed (the message names the extra).
    ConnectionError
        If SkyServer cannot be reached after the retries.
    TypeError, ValueError
        For an invalid catalog or option; the message names it.

    Notes
    -----
    SDSS spectroscopic classes are very pure where they exist: ``zWarning
    = 0`` redshifts of the main galaxy sample are more than 99 % reliable
    (Strauss et al. 2002, AJ 124, 1810; Bolton et al. 2012, AJ 144, 144).
    But spectra were targeted: bright galaxies (r < 17.77) and
    colour-selected stars and quasars, so the labels are not a fair
    sample of a deep field's magnitudes and colours.
    """
    check_catalog(catalog)
    radius = check_real("radius", radius, low=0.0, low_open=True, hint=" arcsec; e.g. 1.0")
    if qso not in ("star", "galaxy", None):
        msg = f"qso must be 'star', 'galaxy' or None (unlabelled), got {qso!r}"
        raise ValueError(msg)
    if max_zwarning is not None:
        max_zwarning = check_count("max_zwarning", max_zwarning, hint="; 0 or None")
    data_release = check_count("data_release", data_release, low=1, hint="; e.g. 17")
    timeout = check_real("timeout", timeout, low=0.0, low_open=True, hint=" seconds")
    options = _common_options(label_column, chunk_radius, cache, retries, backoff)
    coords, finite = _positions(catalog, ra_column, dec_column)
    sdss = _import_service("astroquery.sdss", "SDSS", "sdss_labels")
    cones = _cones(coords, chunk_radius=options["chunk_radius"], radius=radius)
    parts = []
    for ra0, dec0, r in cones:
        query = _sdss_box_query(ra0, dec0, r)

        def run(q=query):
            return _sdss_run(sdss, q, data_release=data_release, timeout=timeout,
                             cache=options["cache_dir"] is not None)

        parts.append(_cached_query(f"sdss-dr{data_release}", query, run, options=options,
                                   what=f"SDSS DR{data_release} SkyServer"))
    ref = _stack(parts, "specObjID", _SDSS_COLUMNS)
    idx, sep = _match(coords, _float(ref, "ra"), _float(ref, "dec"), radius)
    n = len(catalog)
    matched, sel = _matched_rows(n, finite, idx)
    classes = (np.char.upper(np.char.strip(np.asarray(ref["class"]).astype(str)))
               if len(ref) else np.zeros(0, "U6"))
    zwarning = (np.asarray(np.ma.filled(ref["zWarning"], -1), dtype=np.int64) if len(ref)
                else np.zeros(0, np.int64))
    columns = {
        "sdss_specobjid": (np.asarray(ref["specObjID"]).astype(np.uint64) if len(ref)
                           else np.zeros(0, np.uint64), None),
        "sdss_sep": (np.full(len(ref), np.nan), "arcsec"),
        "sdss_class": (classes.astype("U8"), None),
        "sdss_subclass": ((np.asarray(ref["subClass"]).astype(str) if len(ref)
                           else np.zeros(0, "U8")), None),
        "sdss_z": (_float(ref, "z"), None),
        "sdss_zwarning": (zwarning, None),
    }
    out = _aligned(columns, n, matched, sel)
    out["sdss_sep"][matched] = sep[idx >= 0]
    mapping = {"STAR": "star", "GALAXY": "galaxy", "QSO": qso or ""}
    label = np.full(n, "", dtype="U6")
    label[matched] = [mapping.get(c, "") for c in classes[sel]]
    if max_zwarning is not None:
        bad = np.zeros(n, dtype=bool)
        bad[matched] = (zwarning[sel] > max_zwarning) | (zwarning[sel] < 0)
        label[bad] = ""
    _add_label(out, label_column, label, label == "")
    counts = {cls: int((label == cls).sum()) for cls in ("star", "galaxy")}
    out.meta["sdss_labels"] = {
        "table": "SpecObj", "data_release": data_release, "radius_arcsec": radius,
        "qso": qso, "max_zwarning": max_zwarning, "n_queries": len(cones),
        "n_matched": int(matched.sum()), "n_star": counts["star"],
        "n_galaxy": counts["galaxy"],
    }
    log.info("sdss_labels: %d of %d sources have a spectrum: %d stars, %d galaxies",
             int(matched.sum()), n, counts["star"], counts["galaxy"])
    return out


def label_cache_dir():
    """
    The folder of the cached Gaia and SDSS answers.

    Returns
    -------
    path : `~pathlib.Path`
        ``$ASTRO_STARGLX_CACHE/labels`` if that variable is set and not
        empty, else ``pooch.os_cache("astro_starglx") / "labels"``. Not
        created here.
    """
    root = os.environ.get("ASTRO_STARGLX_CACHE")
    if not root:
        import pooch

        root = pooch.os_cache("astro_starglx")
    return Path(root) / "labels"


# ---------------------------------------------------------------------------
# options, positions, cones


def _common_options(label_column, chunk_radius, cache, retries, backoff):
    if not isinstance(label_column, str) or not label_column:
        msg = f"label_column must be a non-empty column name (str), got {label_column!r}"
        raise TypeError(msg)
    chunk_radius = check_real("chunk_radius", chunk_radius, low=0.0, high=5.0, low_open=True,
                              hint=" degrees; e.g. chunk_radius=0.25")
    retries = check_count("retries", retries, hint="; e.g. retries=4")
    backoff = check_real("backoff", backoff, low=0.0, hint=" seconds; e.g. backoff=2.0")
    if isinstance(cache, (bool, np.bool_)):
        cache_dir = label_cache_dir() if check_bool("cache", cache) else None
    elif isinstance(cache, (str, os.PathLike)):
        cache_dir = Path(cache)
        if cache_dir.exists() and not cache_dir.is_dir():
            msg = f"cache must be True, False or a folder, got the file {cache_dir}"
            raise ValueError(msg)
    else:
        msg = f"cache must be True, False or a folder (path), got {cache!r}"
        raise TypeError(msg)
    return {"chunk_radius": chunk_radius, "retries": retries, "backoff": backoff,
            "cache_dir": cache_dir}


def _positions(catalog, ra_column, dec_column):
    """SkyCoord of the rows with finite positions and the (N,) mask of those rows."""
    from .inputs import _skycoord_column, _sky_positions, sky_column_names

    found = _skycoord_column(catalog, None)
    if found is not None:
        coords, finite = found
        return coords.icrs, finite
    names = sky_column_names(catalog, ra_column, dec_column)
    if names is None:
        name = ra_column if ra_column not in catalog.colnames else dec_column
        msg = (f"column {name!r} is not in the catalog (sky positions are needed to "
               f"match); available columns: {catalog.colnames}; pass ra_column= and "
               "dec_column=")
        raise ValueError(msg)
    return _sky_positions(catalog, *names)


def _unit_vectors(ra, dec):
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _cones(coords, *, chunk_radius, radius):
    """
    ``[(ra, dec, r)]`` degrees: cones that cover every position plus ``radius``
    arcsec, none wider than ``chunk_radius`` (bisected along the widest axis).
    """
    if len(coords) == 0:
        return []
    vectors = _unit_vectors(coords.ra.deg, coords.dec.deg)
    pad = radius / 3600.0
    out, todo = [], [vectors]
    while todo:
        v = todo.pop()
        centre = v.mean(axis=0)
        centre /= np.linalg.norm(centre)
        extent = np.degrees(np.arccos(np.clip(v @ centre, -1.0, 1.0))).max()
        if extent + pad <= chunk_radius or len(v) == 1 or extent < 1e-9:
            ra0 = math.degrees(math.atan2(centre[1], centre[0])) % 360.0
            dec0 = math.degrees(math.asin(np.clip(centre[2], -1.0, 1.0)))
            # A little margin for rounding in the archive's geometry.
            out.append((ra0, dec0, float(extent + pad) * 1.001 + 1e-6))
            continue
        offsets = v - centre
        _, _, axes = np.linalg.svd(offsets, full_matrices=False)
        side = offsets @ axes[0] > 0
        if side.all() or not side.any():
            side = np.arange(len(v)) < len(v) // 2
        todo += [v[side], v[~side]]
    return sorted(out)


def _sdss_box_query(ra0, dec0, r):
    """SQL of the SpecObj rows in the box around a cone (split at ra = 0/360)."""
    dec_lo, dec_hi = max(dec0 - r, -90.0), min(dec0 + r, 90.0)
    cos = max(math.cos(math.radians(max(abs(dec_lo), abs(dec_hi)))), 1e-6)
    half = min(r / cos, 180.0)
    lo, hi = ra0 - half, ra0 + half
    if half >= 180.0:
        ra_cond = "1 = 1"
    elif lo < 0:
        ra_cond = f"(ra >= {lo + 360.0:.7f} OR ra <= {hi:.7f})"
    elif hi >= 360.0:
        ra_cond = f"(ra >= {lo:.7f} OR ra <= {hi - 360.0:.7f})"
    else:
        ra_cond = f"ra BETWEEN {lo:.7f} AND {hi:.7f}"
    return (f"SELECT {', '.join(_SDSS_COLUMNS)} FROM SpecObj WHERE "
            f"dec BETWEEN {dec_lo:.7f} AND {dec_hi:.7f} AND {ra_cond}")


# ---------------------------------------------------------------------------
# queries: services, retries, cache


def _import_service(module, name, feature):
    from ._optional import import_optional

    return getattr(import_optional(module, "remote", feature=feature), name)


def _gaia_run(gaia, query):
    job = gaia.launch_job_async(query)
    return job.get_results()


def _sdss_run(sdss, query, *, data_release, timeout, cache):
    from astropy.table import Table

    with warnings.catch_warnings():
        # astroquery warns (NoResultsWarning) and returns None for an empty box
        warnings.simplefilter("ignore")
        result = sdss.query_sql(query, data_release=data_release, timeout=timeout,
                                cache=cache)
    return Table(names=_SDSS_COLUMNS) if result is None else result


def _status(err):
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None) or getattr(response, "status", None)
    return int(code) if isinstance(code, (int, np.integer)) else None


def _retryable(err):
    """Rate limiting, a server error, or a dropped connection."""
    code = _status(err)
    if code is not None:
        return code in _RETRY_STATUS
    text = str(err).lower()
    if any(reason in text for reason in _RETRY_REASONS):
        return True
    return any(f"{code}" in text for code in _RETRY_STATUS) or isinstance(
        err, (ConnectionError, TimeoutError)) or type(err).__name__ in (
        "ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout")


def _with_retries(run, *, retries, backoff, what):
    for attempt in range(retries + 1):
        try:
            return run()
        except Exception as err:  # noqa: BLE001 (any failure of the remote service)
            if attempt < retries and _retryable(err):
                wait = backoff * 2**attempt
                log.info("%s answered %s; retrying in %.1f s (%d/%d)", what, err, wait,
                         attempt + 1, retries)
                _sleep(wait)
                continue
            tried = f" after {attempt + 1} attempt(s)" if attempt else ""
            if _retryable(err):
                fix = ("Check the network connection (or proxy) and the service's status "
                       "and try again (answers are cached, so finished queries are not "
                       "repeated); on a machine without network, run this where there is "
                       "one and copy the cache folder (cache=), or label the catalog "
                       "yourself")
            else:
                fix = ("The service refused the query; if this persists, report it to "
                       "astro_starglx with the message")
            msg = f"the query of {what} failed{tried}: {type(err).__name__}: {err}. {fix}"
            raise ConnectionError(msg) from err
    raise AssertionError("unreachable")  # pragma: no cover


def _cached_query(service, query, run, *, options, what):
    """A query's answer as a Table, from the ECSV cache or the service (then cached)."""
    from astropy.table import Table

    from ._optional import atomic_write

    cache_dir = options["cache_dir"]
    key = hashlib.sha256(f"{service}\n{query}".encode()).hexdigest()[:32]
    path = None if cache_dir is None else cache_dir / f"{service}-{key}.ecsv"
    if path is not None and path.is_file():
        log.debug("%s: cached answer %s", what, path)
        return Table.read(path, format="ascii.ecsv")
    table = Table(_with_retries(run, retries=options["retries"], backoff=options["backoff"],
                                what=what))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.meta = {"service": service, "query": query}
        with atomic_write(path, "w") as fh:
            table.write(fh, format="ascii.ecsv")
    return table


# ---------------------------------------------------------------------------
# answers to aligned columns


def _stack(parts, key, columns):
    """The answers of all cones in one Table, each source once."""
    from astropy.table import Table, unique, vstack

    parts = [_select(p, columns) for p in parts if len(p)]
    if not parts:
        return Table(names=columns)
    table = vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]
    return unique(table, keys=key) if len(parts) > 1 else table


def _select(table, columns):
    """The named columns, found case-insensitively (TAP and SkyServer differ in case)."""
    from astropy.table import Table

    lower = {name.lower(): name for name in table.colnames}
    missing = [c for c in columns if c.lower() not in lower]
    if missing:
        msg = (f"the archive's answer lacks the column(s) {missing} (got {table.colnames}); "
               "the service's format may have changed: report it to astro_starglx")
        raise ValueError(msg)
    return Table({c: table[lower[c.lower()]] for c in columns})


def _float(table, name):
    if not len(table):
        return np.zeros(0)
    return np.asarray(np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan))


def _pm_significance(ref):
    """sqrt(chi2) of the proper motion against zero, with the pmra/pmdec correlation."""
    if not len(ref):
        return np.zeros(0)
    x, y = _float(ref, "pmra"), _float(ref, "pmdec")
    sx, sy = _float(ref, "pmra_error"), _float(ref, "pmdec_error")
    rho = np.clip(np.nan_to_num(_float(ref, "pmra_pmdec_corr")), -0.999, 0.999)
    with np.errstate(invalid="ignore", divide="ignore"):
        u, v = x / sx, y / sy
        chi2 = (u * u - 2.0 * rho * u * v + v * v) / (1.0 - rho * rho)
    return np.sqrt(chi2)


def _matched_rows(n, finite, idx):
    """Which of ``n`` catalog rows matched (idx >= 0 among the finite ones), and their rows."""
    matched = np.zeros(n, dtype=bool)
    matched[np.flatnonzero(finite)[idx >= 0]] = True
    rows = np.full(n, -1)
    rows[finite] = idx
    return matched, rows[matched]


def _match(coords, ref_ra, ref_dec, radius):
    """Index into the reference (-1: none within ``radius`` arcsec) and separation."""
    from astropy.coordinates import SkyCoord

    n = len(coords)
    if n == 0 or len(ref_ra) == 0:
        return np.full(n, -1), np.full(n, np.nan)
    ref = SkyCoord(ref_ra, ref_dec, unit="deg")
    idx, sep, _ = coords.match_to_catalog_sky(ref)
    sep = sep.arcsec
    idx = np.where(sep <= radius, idx, -1)
    return idx, sep


def _aligned(columns, n, matched, sel):
    """A Table of ``n`` masked rows, filled at the matched rows from the reference."""
    from astropy.table import MaskedColumn, Table

    out = Table()
    for name, (values, unit) in columns.items():
        values = np.asarray(values)
        data = np.zeros(n, dtype=values.dtype)
        if len(values):
            data[matched] = values[sel]
        out[name] = MaskedColumn(data, mask=~matched, unit=unit)
    return out


def _add_label(out, name, values, mask):
    from astropy.table import MaskedColumn

    out[name] = MaskedColumn(np.asarray(values, dtype="U6"), mask=np.asarray(mask, bool))
