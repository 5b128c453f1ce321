"""
The survey-pipeline baseline: SExtractor + PSFEx SPREAD_MODEL next to astro_starglx.

Simulates one CSST-like 7-band field with its truth, writes it as CSST
L1-like files (``_img``/``_wht``/``_flg`` per band, without the simulator's
PSF keywords, so that both pipelines measure the PSF themselves) and runs two
pipelines on those files, each timed end to end by the wall clock, process
start-up included:

A. astro_starglx, in a fresh Python process: read the 7 bands
   (`~astro_starglx.csst_io.read_csst_l1`), detect the sources on their
   noise-weighted stack (`~astro_starglx.detection.detect_sources`, no
   catalog given) and classify them (``StarGalaxyClassifier(model).classify``,
   the default model unless ``--model``).
B. what surveys run today, on the r band alone (the detection and
   measurement image): SExtractor pass 1 writing a FITS-LDAC catalog with
   ``VIGNET`` stamps, PSFEx building a PSF model varying with position, and
   SExtractor pass 2 with ``-PSF_NAME`` measuring ``SPREAD_MODEL``,
   ``SPREADERR_MODEL`` and, for reference, ``CLASS_STAR`` (``SEEING_FWHM``
   from PSFEx's FWHM). A source is a galaxy when ``SPREAD_MODEL + 3
   SPREADERR_MODEL > 0.005`` (`DES_CUT`).

Both catalogs are matched to the truth (nearest neighbour on the sky within
`MATCH_RADIUS`, 0.2 arcsec = 2.7 CSST pixels) and one table reports, per
true r magnitude bin: the truth counts, each pipeline's completeness
(fraction of the truth matched by a detection), star and galaxy recall of
the matched truth (the class of the nearest detection), and false-detection
rate (detections without a truth within the radius over all detections,
binned by the detection's own r magnitude: ``MAG_AUTO`` for SExtractor, the
segment flux for ``detect_sources``). The summary gives each pipeline's wall
time and objects (detections) per second.

SExtractor (``source-extractor`` or ``sex``) and PSFEx (``psfex``) must be on
the ``PATH`` (Debian/Ubuntu: ``apt-get install source-extractor psfex``);
without them the benchmark says so and exits with status 2. The
configuration files are written from Python (`SEXTRACTOR_CONFIG`,
`PSFEX_CONFIG`); the detection filter is a Gaussian written here and the
``CLASS_STAR`` network is the ``default.nnw`` the SExtractor package ships
(``CLASS_STAR`` is left out when it cannot be found). Run::

    python -m benchmarks.bench_sextractor [--size 2048] [--seed 80001] [--model NAME] \\
        [--workdir DIR] [--output comparison.ecsv]

``--output`` writes the table (astropy ECSV, with the settings and timings in
``meta``) and an RST list-table beside it (same stem, ``.rst``). `spread_model_baseline`
runs pipeline B on images in memory and aligns its classes with a truth
table: ``python -m benchmarks.robustness --baseline sextractor`` uses it.
Not part of the test suite: nothing in ``tests/`` needs SExtractor.
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

#: Nearest-neighbour matching radius on the sky, arcsec (2.7 CSST pixels).
MATCH_RADIUS = 0.2

#: The DES star/galaxy cut on SPREAD_MODEL (a galaxy when
#: ``SPREAD_MODEL + k * SPREADERR_MODEL > threshold``): ``(k, threshold)``.
#: SPREAD_MODEL was introduced for star/galaxy separation by Desai et al.
#: 2012 (ApJ 757, 83); the ``+ 3 SPREADERR_MODEL > 0.005`` form is the one in
#: DES Y1's ``EXTENDED_CLASS`` (Drlica-Wagner et al. 2018, ApJS 235, 33),
#: evaluated against other classifiers by Sevilla-Noarbe et al. 2018
#: (MNRAS 481, 5451).
DES_CUT = (3.0, 0.005)

#: True r magnitude bin edges of the comparison table.
MAG_EDGES = (17.0, 20.0, 22.0, 23.0, 24.0, 25.0, 26.0)

#: Names SExtractor's executable goes by (Debian's first).
SEXTRACTOR_NAMES = ("source-extractor", "sex")

#: Folders where SExtractor packages put ``default.nnw``.
SHARE_DIRS = ("/usr/share/source-extractor", "/usr/share/sextractor",
              "/usr/local/share/source-extractor", "/usr/local/share/sextractor",
              "/opt/homebrew/share/sextractor", "/opt/local/share/sextractor")

#: Header keywords that tell the PSF, left out of the images written.
PSF_KEYWORDS = ("PSFFWHM", "SEEING", "FWHM", "PSF_FWHM", "PSFR80", "PSFSCALE", "PSFMODEL",
                "PSFBETA", "PSFGRAD", "PSFJITTR")

#: Header keyword prefixes of a WCS: taken from the image's ``wcs``, not its ``meta``.
WCS_KEYS = ("WCSAXES", "CRPIX", "CRVAL", "CDELT", "CTYPE", "CUNIT", "CD1_", "CD2_", "PC1_",
            "PC2_", "PV1_", "PV2_", "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX", "A_", "B_",
            "AP_", "BP_")

#: SExtractor settings common to both passes. ``{...}`` fields are filled per
#: run. Detection: 1.5 sigma per pixel on the image filtered with a Gaussian
#: of ``filter_fwhm`` px (about the PSF: 1.9 px FWHM in the r band), at least
#: ``detect_minarea`` pixels; the gain is ``EXPTIME * GAIN`` for images in
#: ``e-/s`` or ``adu/s``, given on the command line with ``GAIN_KEY`` naming
#: an absent keyword so that the header's per-exposure ``GAIN`` cannot
#: override it; saturation from the ``SATURATE`` keyword.
SEXTRACTOR_CONFIG = """\
CATALOG_TYPE     FITS_LDAC
DETECT_TYPE      CCD
DETECT_MINAREA   {detect_minarea}
DETECT_THRESH    {detect_thresh}
ANALYSIS_THRESH  {detect_thresh}
FILTER           Y
FILTER_NAME      {filter_name}
DEBLEND_NTHRESH  32
DEBLEND_MINCONT  0.005
CLEAN            Y
CLEAN_PARAM      1.0
MASK_TYPE        CORRECT
WEIGHT_TYPE      MAP_WEIGHT
WEIGHT_GAIN      Y
PHOT_APERTURES   {aperture}
PHOT_AUTOPARAMS  2.5,3.5
PHOT_FLUXFRAC    0.5
SATUR_LEVEL      1e9
SATUR_KEY        SATURATE
MAG_ZEROPOINT    {zeropoint}
GAIN             {gain}
GAIN_KEY         SXNOGAIN
PIXEL_SCALE      0
SEEING_FWHM      {seeing}
STARNNW_NAME     {nnw_name}
BACK_TYPE        AUTO
BACK_SIZE        64
BACK_FILTERSIZE  3
BACKPHOTO_TYPE   GLOBAL
CHECKIMAGE_TYPE  NONE
MEMORY_OBJSTACK  3000
MEMORY_PIXSTACK  3000000
MEMORY_BUFSIZE   1024
VERBOSE_TYPE     QUIET
WRITE_XML        N
NTHREADS         0
"""

#: PSFEx settings: a pixel basis sampled automatically (CSST's PSF is
#: undersampled), varying as a degree-2 polynomial of the position; point
#: sources picked automatically among those with FWHM 1-10 px (PSFEx's
#: default 2-10 px would reject CSST's 1.9 px stars), S/N > 20 and
#: ellipticity < 0.3.
PSFEX_CONFIG = """\
BASIS_TYPE         PIXEL_AUTO
PSF_SAMPLING       0.0
PSF_ACCURACY       0.01
PSF_SIZE           {psf_size},{psf_size}
CENTER_KEYS        X_IMAGE,Y_IMAGE
PHOTFLUX_KEY       FLUX_APER(1)
PHOTFLUXERR_KEY    FLUXERR_APER(1)
PSFVAR_KEYS        X_IMAGE,Y_IMAGE
PSFVAR_GROUPS      1,1
PSFVAR_DEGREES     2
SAMPLE_AUTOSELECT  Y
SAMPLEVAR_TYPE     SEEING
SAMPLE_FWHMRANGE   1.0,10.0
SAMPLE_VARIABILITY 0.2
SAMPLE_MINSN       20
SAMPLE_MAXELLIP    0.3
CHECKPLOT_TYPE     NONE
CHECKIMAGE_TYPE    NONE
PSF_DIR            {psf_dir}
PSF_SUFFIX         .psf
VERBOSE_TYPE       QUIET
WRITE_XML          N
NTHREADS           0
"""

#: Pass 1 measurements: what PSFEx reads.
PASS1_PARAMS = ("VIGNET({vignet},{vignet})", "X_IMAGE", "Y_IMAGE", "FLUX_APER(1)",
                "FLUXERR_APER(1)", "FLUX_RADIUS", "ELONGATION", "FLAGS", "SNR_WIN")

#: Pass 2 measurements (``CLASS_STAR`` is dropped without a ``default.nnw``).
PASS2_PARAMS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000", "FLUX_AUTO",
                "FLUXERR_AUTO", "MAG_AUTO", "MAGERR_AUTO", "FLUX_RADIUS", "FWHM_IMAGE",
                "FLAGS", "CLASS_STAR", "SPREAD_MODEL", "SPREADERR_MODEL")


class ToolMissingError(RuntimeError):
    """SExtractor or PSFEx is not installed."""


# --------------------------------------------------------------------------- tools
def find_tools():
    """
    The SExtractor and PSFEx executables and SExtractor's ``default.nnw``.

    Returns
    -------
    tools : dict
        ``{"sextractor": path, "psfex": path, "nnw": path or None}``.

    Raises
    ------
    ToolMissingError
        If SExtractor or PSFEx is not on the ``PATH``; the message says how
        to install them.
    """
    sextractor = next((p for p in map(shutil.which, SEXTRACTOR_NAMES) if p), None)
    psfex = shutil.which("psfex")
    missing = [name for name, path in (("SExtractor (source-extractor or sex)", sextractor),
                                       ("PSFEx (psfex)", psfex)) if path is None]
    if missing:
        msg = (f"{' and '.join(missing)} not found on the PATH; this benchmark compares "
               "astro_starglx with SExtractor + PSFEx and needs both: on Debian/Ubuntu "
               "'apt-get install source-extractor psfex', elsewhere conda-forge's "
               "'astromatic-source-extractor' and 'astromatic-psfex'")
        raise ToolMissingError(msg)
    nnw = next((str(Path(d) / "default.nnw") for d in SHARE_DIRS
                if (Path(d) / "default.nnw").is_file()), None)
    return {"sextractor": sextractor, "psfex": psfex, "nnw": nnw}


def run_command(command, *, cwd, what):
    """
    Run one external command, failing with its standard error's tail.

    Parameters
    ----------
    command : list of str
        The command line.
    cwd : path-like
        Working folder.
    what : str
        What the command does, for the error message.

    Returns
    -------
    result : `subprocess.CompletedProcess`
        With ``stdout`` and ``stderr`` as text.

    Raises
    ------
    RuntimeError
        If the command exits non-zero or cannot be started; the message
        names the step and the command and shows the last lines it wrote.
    """
    try:
        return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        tail = "\n".join(((err.stderr or "") + (err.stdout or "")).strip().splitlines()[-15:])
        msg = (f"{what} failed (exit status {err.returncode}): {' '.join(map(str, command))}"
               f"\n--- its output (tail) ---\n{tail}")
        raise RuntimeError(msg) from err
    except OSError as err:
        msg = f"{what} could not start: {' '.join(map(str, command))}: {err}"
        raise RuntimeError(msg) from err


def _gaussian_filter(path, fwhm, size=5):
    """Write a SExtractor ``CONV NORM`` filter: a ``size`` x ``size`` Gaussian."""
    r = np.arange(size) - (size - 1) / 2
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    lines = ["CONV NORM", f"# {size}x{size} Gaussian, FWHM = {fwhm:g} pixels (astro_starglx)"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in kernel / kernel.max()]
    Path(path).write_text("\n".join(lines) + "\n")


def _effective_gain(header):
    """Electrons per image unit over the whole exposure (SExtractor's ``GAIN``)."""
    return float(header.get("EXPTIME", 1.0)) * float(header.get("GAIN", 1.0))


def _pixel_scale(header):
    """Pixel scale (arcsec) from the header's celestial WCS."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(WCS(header).celestial)) * 3600)


# ----------------------------------------------------------------------- pipeline B
def run_sextractor_psfex(image_path, weight_path, *, workdir, tools=None, detect_thresh=1.5,
                         detect_minarea=4, filter_fwhm=2.0, cut=DES_CUT):
    """
    Pipeline B on one band: SExtractor, PSFEx, SExtractor with SPREAD_MODEL.

    Parameters
    ----------
    image_path : path-like
        The image (primary HDU or first image extension), with a celestial
        WCS, ``MAGZERO``, ``EXPTIME`` and ``GAIN`` (and ``SATURATE``) keywords.
    weight_path : path-like or None
        Its inverse-variance map (``WEIGHT_TYPE MAP_WEIGHT``); None for
        SExtractor's background noise estimate.
    workdir : path-like
        Folder for the configuration files, catalogs and PSF model (made if
        missing, kept).
    tools : dict or None, optional
        From `find_tools`; None to look them up.
    detect_thresh : float, optional
        SExtractor ``DETECT_THRESH`` and ``ANALYSIS_THRESH`` (sigma per pixel).
    detect_minarea : int, optional
        SExtractor ``DETECT_MINAREA`` (pixels).
    filter_fwhm : float, optional
        FWHM (pixels) of the Gaussian detection filter.
    cut : tuple of float, optional
        ``(k, threshold)``: a galaxy when ``SPREAD_MODEL + k SPREADERR_MODEL >
        threshold``.

    Returns
    -------
    catalog : `~astropy.table.Table`
        SExtractor's pass 2 catalog (its column names) plus ``ra``, ``dec``
        (deg), ``class`` (``"star"``/``"galaxy"`` from ``cut``) and
        ``class_star_class`` (``CLASS_STAR >= 0.5`` is a star; masked
        without a ``default.nnw``). ``meta["sextractor"]`` holds the
        settings, PSFEx's FWHM and the seconds each step took.

    Raises
    ------
    ToolMissingError
        If SExtractor or PSFEx is missing.
    RuntimeError
        If a step fails (the message shows its output) or PSFEx writes no
        PSF model.
    """
    t_start = time.perf_counter()
    tools = find_tools() if tools is None else tools
    workdir = Path(workdir).resolve()  # the tools run in it and are given paths in it
    workdir.mkdir(parents=True, exist_ok=True)
    image_path = Path(image_path).resolve()
    with fits.open(image_path) as hdul:
        header = next(h.header for h in hdul if h.is_image and h.header.get("NAXIS") == 2)
    scale = _pixel_scale(header)
    _gaussian_filter(workdir / "detect.conv", filter_fwhm)
    vignet = 31
    settings = {
        "detect_thresh": detect_thresh, "detect_minarea": detect_minarea,
        "filter_name": "detect.conv", "aperture": round(4 * filter_fwhm, 2),
        "zeropoint": float(header["MAGZERO"]), "gain": _effective_gain(header),
        "seeing": round(filter_fwhm * scale, 4), "nnw_name": tools["nnw"] or "default.nnw",
    }
    (workdir / "pass.sex").write_text(SEXTRACTOR_CONFIG.format(**settings))
    (workdir / "pass1.param").write_text("\n".join(PASS1_PARAMS).format(vignet=vignet) + "\n")
    params = [p for p in PASS2_PARAMS if tools["nnw"] or p != "CLASS_STAR"]
    (workdir / "pass2.param").write_text("\n".join(params) + "\n")
    (workdir / "psf.psfex").write_text(PSFEX_CONFIG.format(psf_size=25, psf_dir=workdir))
    weight = [] if weight_path is None else ["-WEIGHT_IMAGE", str(Path(weight_path).resolve())]
    if weight_path is None:
        weight += ["-WEIGHT_TYPE", "NONE"]
    seconds = {}

    t0 = time.perf_counter()
    run_command([tools["sextractor"], str(image_path), "-c", "pass.sex", *weight,
                 "-PARAMETERS_NAME", "pass1.param", "-CATALOG_NAME", "pass1.cat"],
                cwd=workdir, what="SExtractor pass 1 (catalog for PSFEx)")
    seconds["sextractor_pass1"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_command([tools["psfex"], "pass1.cat", "-c", "psf.psfex"], cwd=workdir,
                what="PSFEx (PSF model)")
    seconds["psfex"] = time.perf_counter() - t0
    psf_path = workdir / "pass1.psf"
    if not psf_path.is_file():
        msg = f"PSFEx wrote no PSF model {psf_path}; see its output with VERBOSE_TYPE NORMAL"
        raise RuntimeError(msg)
    psf_header = fits.getheader(psf_path, 1)
    psf_fwhm = float(psf_header.get("PSF_FWHM", filter_fwhm))
    t0 = time.perf_counter()
    run_command([tools["sextractor"], str(image_path), "-c", "pass.sex", *weight,
                 "-PARAMETERS_NAME", "pass2.param", "-CATALOG_NAME", "pass2.cat",
                 "-PSF_NAME", "pass1.psf", "-SEEING_FWHM", f"{psf_fwhm * scale:.4f}"],
                cwd=workdir, what="SExtractor pass 2 (SPREAD_MODEL with the PSFEx model)")
    seconds["sextractor_pass2"] = time.perf_counter() - t0

    catalog = Table.read(workdir / "pass2.cat", hdu="LDAC_OBJECTS")
    catalog["ra"] = np.asarray(catalog["ALPHA_J2000"], dtype=float)
    catalog["dec"] = np.asarray(catalog["DELTA_J2000"], dtype=float)
    k, threshold = cut
    spread = np.asarray(catalog["SPREAD_MODEL"]) + k * np.asarray(catalog["SPREADERR_MODEL"])
    catalog["class"] = np.where(spread > threshold, "galaxy", "star")
    if "CLASS_STAR" in catalog.colnames:
        catalog["class_star_class"] = np.where(np.asarray(catalog["CLASS_STAR"]) >= 0.5,
                                               "star", "galaxy")
    else:
        catalog["class_star_class"] = np.ma.masked_all(len(catalog), dtype="U6")
    seconds["total"] = time.perf_counter() - t_start
    catalog.meta["sextractor"] = {
        **settings, "image": str(image_path), "weight": None if weight_path is None
        else str(weight_path), "psf_fwhm_px": psf_fwhm, "psf_fwhm_arcsec": psf_fwhm * scale,
        "psfex_stars_loaded": int(psf_header.get("LOADED", -1)),
        "psfex_stars_accepted": int(psf_header.get("ACCEPTED", -1)),
        "cut": f"galaxy if SPREAD_MODEL + {k:g} * SPREADERR_MODEL > {threshold:g}",
        "seconds": seconds,
    }
    return catalog


def _write_band(image, folder, stem):
    """Write a CCDData as ``stem_img.fits`` + ``stem_wht.fits`` (inverse variance)."""
    from astro_starglx.detection import inverse_variance

    header = image.wcs.to_header(relax=True) if image.wcs is not None else fits.Header()
    for key, value in (image.meta or {}).items():
        if key in header or key in PSF_KEYWORDS or len(key) > 8 or key.startswith(WCS_KEYS) \
                or key in ("COMMENT", "HISTORY", ""):
            continue
        try:
            header[key] = value
        except (ValueError, TypeError):  # not representable in FITS: not needed here
            pass
    data = np.asarray(image.data, dtype=np.float32)
    wht = inverse_variance(image.uncertainty)
    img_path = Path(folder) / f"{stem}_img.fits"
    fits.writeto(img_path, data, header, overwrite=True)
    if wht is None:
        return img_path, None
    bad = ~np.isfinite(wht) | ~np.isfinite(data)
    if image.mask is not None:
        bad |= np.asarray(image.mask, dtype=bool)
    wht = np.where(bad, 0.0, wht).astype(np.float32)
    wht_path = Path(folder) / f"{stem}_wht.fits"
    fits.writeto(wht_path, wht, header, overwrite=True)
    return img_path, wht_path


def match_to_truth(truth, catalog, *, radius=MATCH_RADIUS):
    """
    Nearest-neighbour matches between a truth table and a catalog, both ways.

    Parameters
    ----------
    truth, catalog : `~astropy.table.Table`
        With ``ra`` and ``dec`` columns (deg).
    radius : float, optional
        Matching radius, arcsec.

    Returns
    -------
    nearest : ndarray of int
        Per truth row, the index of the nearest catalog row (-1 when none
        lies within ``radius``).
    real : ndarray of bool
        Per catalog row, True when a truth lies within ``radius``.
    """
    from astropy.coordinates import SkyCoord

    nearest = np.full(len(truth), -1)
    real = np.zeros(len(catalog), dtype=bool)
    if len(truth) == 0 or len(catalog) == 0:
        return nearest, real
    t = SkyCoord(np.asarray(truth["ra"]), np.asarray(truth["dec"]), unit="deg")
    c = SkyCoord(np.asarray(catalog["ra"]), np.asarray(catalog["dec"]), unit="deg")
    idx, sep, _ = t.match_to_catalog_sky(c)
    nearest = np.where(sep.arcsec < radius, idx, -1)
    _, sep_c, _ = c.match_to_catalog_sky(t)
    return nearest, sep_c.arcsec < radius


def spread_model_baseline(images, truth=None, *, workdir, band="r", radius=MATCH_RADIUS,
                          tools=None, **options):
    """
    The SExtractor + PSFEx SPREAD_MODEL classes, aligned with a truth table.

    Writes ``band``'s image and inverse-variance map to ``workdir`` (without
    PSF keywords), runs `run_sextractor_psfex` on them and, with ``truth``,
    gives every truth row the class of the nearest detection within
    ``radius``.

    Parameters
    ----------
    images : mapping or `~astropy.nddata.CCDData` or path-like
        ``{band: CCDData or path}``, one CCDData, or the path of a FITS file
        that `~astropy.nddata.CCDData.read` reads (data, ``UNCERT``
        inverse variance, ``MASK``); only ``band`` is used.
    truth : `~astropy.table.Table` or None, optional
        Table with ``ra``/``dec`` (deg); None to return the detections.
    workdir : path-like
        Folder for the files SExtractor and PSFEx read and write (kept).
    band : str, optional
        Band measured (detection and SPREAD_MODEL), when ``images`` is a
        mapping.
    radius : float, optional
        Matching radius, arcsec.
    tools : dict or None, optional
        From `find_tools`; None to look them up.
    **options
        Passed to `run_sextractor_psfex` (``detect_thresh``,
        ``detect_minarea``, ``filter_fwhm``, ``cut``).

    Returns
    -------
    table : `~astropy.table.Table`
        Without ``truth``: the SExtractor catalog of `run_sextractor_psfex`.
        With ``truth``: one row per truth row, in its order, with ``id``
        (when ``truth`` has one), ``ra``, ``dec``, ``class`` (masked where
        no detection lies within ``radius``), ``SPREAD_MODEL``,
        ``SPREADERR_MODEL``, ``CLASS_STAR`` (NaN where unmatched) and
        ``detection`` (catalog row, -1 if none); ``meta["sextractor"]`` as
        in `run_sextractor_psfex` plus ``n_detections`` and ``n_false``
        (detections with no truth within ``radius``).

    Raises
    ------
    ToolMissingError
        If SExtractor or PSFEx is missing.
    KeyError
        If ``band`` is not in ``images``.
    RuntimeError
        If a SExtractor or PSFEx step fails.
    """
    from astropy.nddata import CCDData

    if hasattr(images, "items"):
        images = images[band]
    if not isinstance(images, CCDData):
        images = CCDData.read(images)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    img_path, wht_path = _write_band(images, workdir, band)
    catalog = run_sextractor_psfex(img_path, wht_path, workdir=workdir, tools=tools, **options)
    if truth is None:
        return catalog
    nearest, real = match_to_truth(truth, catalog, radius=radius)
    hit = nearest >= 0
    out = Table()
    if "id" in truth.colnames:
        out["id"] = truth["id"]
    out["ra"], out["dec"] = truth["ra"], truth["dec"]
    out["class"] = np.ma.MaskedArray(np.asarray(catalog["class"], dtype="U6")[nearest],
                                     mask=~hit)
    for name in ("SPREAD_MODEL", "SPREADERR_MODEL", "CLASS_STAR"):
        values = (np.asarray(catalog[name], dtype=float)[nearest] if name in catalog.colnames
                  else np.full(len(truth), np.nan))
        out[name] = np.where(hit, values, np.nan)
    out["detection"] = nearest
    out.meta["sextractor"] = {**catalog.meta["sextractor"], "n_detections": len(catalog),
                              "n_false": int((~real).sum()), "match_radius_arcsec": radius}
    return out


# ----------------------------------------------------------------------- pipeline A
def run_ours(paths, output, model=None):
    """
    Pipeline A: read the L1 files, detect, classify, write the catalog.

    Runs inside the fresh process that `time_ours` starts, so that its wall
    time holds the interpreter, the imports and the model load.

    Parameters
    ----------
    paths : dict of str to str
        ``{band: _img file}``; the ``_wht`` and ``_flg`` files lie beside.
    output : str
        ECSV path for the catalog (``ra``, ``dec``, ``flux``, ``class``,
        ``p_galaxy``), with the step times in ``meta["seconds"]``.
    model : str or None, optional
        Model name or weights file; None for the default.
    """
    import warnings

    t0 = time.perf_counter()
    from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning
    from astro_starglx.csst_io import read_csst_l1
    from astro_starglx.detection import detect_sources

    t1 = time.perf_counter()
    images = {band: read_csst_l1(path) for band, path in paths.items()}
    found = detect_sources(images)
    t2 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarGalaxyWarning)
        out = StarGalaxyClassifier(model, device="cpu").classify(found["id", "ra", "dec"],
                                                                 images)
    t3 = time.perf_counter()
    cat = found["id", "ra", "dec", "flux", "snr"]
    cat["class"] = out["class"]
    cat["p_galaxy"] = out["p_galaxy"]
    cat.meta["zeropoint_r"] = float(images["r"].meta["MAGZERO"]) if "r" in images else None
    cat.meta["model"] = out.meta["astro_starglx"]["model"]
    cat.meta["seconds"] = {"imports": t1 - t0, "read_and_detect": t2 - t1,
                           "classify": t3 - t2}
    cat.write(output, overwrite=True)


def time_ours(paths, workdir, model=None):
    """Run `run_ours` in a fresh Python process; (catalog, wall seconds)."""
    output = Path(workdir) / "ours.ecsv"
    code = ("import json, sys; from benchmarks.bench_sextractor import run_ours; "
            "run_ours(*json.loads(sys.argv[1]))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", code, json.dumps([paths, str(output), model])],
                       cwd=root, env=env, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        tail = "\n".join((err.stderr or "").strip().splitlines()[-15:])
        msg = f"pipeline A (astro_starglx) failed (exit status {err.returncode}):\n{tail}"
        raise RuntimeError(msg) from err
    wall = time.perf_counter() - t0
    return Table.read(output), wall


# -------------------------------------------------------------------------- field
def write_l1_field(images, folder, *, stem="field"):
    """
    Write simulated images as CSST L1-like files without PSF keywords.

    Parameters
    ----------
    images : dict of str to `~astropy.nddata.CCDData`
        The bands (inverse-variance uncertainty, mask True = bad).
    folder : path-like
        Where to write ``{stem}_{band}_L1_img.fits``, ``..._wht.fits`` (0
        on bad pixels) and ``..._flg.fits`` (1 on bad pixels).

    Returns
    -------
    paths : dict of str to str
        ``{band: _img file}``.
    """
    paths = {}
    for band, image in images.items():
        img, wht = _write_band(image, folder, f"{stem}_{band}_L1")
        header = fits.getheader(img)
        flg = np.zeros(image.shape, np.uint8) if image.mask is None \
            else np.asarray(image.mask, dtype=np.uint8)
        fits.writeto(Path(folder) / f"{stem}_{band}_L1_flg.fits", flg, header, overwrite=True)
        paths[band] = str(img)
    return paths


# -------------------------------------------------------------------------- table
def children_cpu_seconds():
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fraction(num, den):
    return num / den if den else math.nan


def comparison_table(truth, ours, sx, *, radius=MATCH_RADIUS, edges=MAG_EDGES):
    """
    The per-magnitude comparison of both pipelines against the truth.

    Parameters
    ----------
    truth : `~astropy.table.Table`
        ``ra``, ``dec``, ``label`` and ``mag_r``.
    ours, sx : `~astropy.table.Table`
        Pipeline A's and B's catalogs: ``ra``, ``dec``, ``class``, ``mag_r``
        (the detection's own r magnitude, NaN when not measurable) and, for
        B, ``class_star_class``.
    radius : float, optional
        Matching radius, arcsec.
    edges : sequence of float, optional
        True r magnitude bin edges; a last row covers ``edges[0]`` to
        ``edges[-1]``.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per bin: ``r_lo``, ``r_hi``, ``n_true``, ``n_star``,
        ``n_galaxy``; per pipeline (suffix ``_ours``, ``_sx``): ``complete``,
        ``star_recall``, ``galaxy_recall`` (of the matched truth; a detection
        left unclassified counts as a miss), ``n_det``
        and ``false_rate`` (detections binned by their own r magnitude);
        ``star_recall_cs`` and ``galaxy_recall_cs`` for B's ``CLASS_STAR >=
        0.5``. Fractions in percent.
    """
    label = np.asarray(truth["label"])
    mag = np.asarray(truth["mag_r"], dtype=float)
    bins = [*zip(edges[:-1], edges[1:]), (edges[0], edges[-1])]
    columns = {"r_lo": [lo for lo, _ in bins], "r_hi": [hi for _, hi in bins]}
    sel_true = [(mag >= lo) & (mag < hi) for lo, hi in bins]
    columns["n_true"] = [int(s.sum()) for s in sel_true]
    columns["n_star"] = [int((s & (label == "star")).sum()) for s in sel_true]
    columns["n_galaxy"] = [int((s & (label == "galaxy")).sum()) for s in sel_true]
    for suffix, cat in (("ours", ours), ("sx", sx)):
        nearest, real = match_to_truth(truth, cat, radius=radius)
        hit = nearest >= 0
        pred = np.where(hit, np.ma.filled(np.asarray(cat["class"], dtype="U6"), "")[nearest],
                        "")
        cmag = np.asarray(cat["mag_r"], dtype=float)
        columns[f"complete_{suffix}"] = [100 * _fraction((s & hit).sum(), s.sum())
                                         for s in sel_true]
        for cls in ("star", "galaxy"):
            columns[f"{cls}_recall_{suffix}"] = [
                100 * _fraction((s & hit & (label == cls) & (pred == cls)).sum(),
                                (s & hit & (label == cls)).sum()) for s in sel_true]
        in_bin = [(cmag >= lo) & (cmag < hi) for lo, hi in bins[:-1]] + [np.ones(len(cat), bool)]
        columns[f"n_det_{suffix}"] = [int(s.sum()) for s in in_bin]
        columns[f"false_rate_{suffix}"] = [100 * _fraction((s & ~real).sum(), s.sum())
                                           for s in in_bin]
        if suffix == "sx":
            cs = np.where(hit, np.ma.filled(np.asarray(cat["class_star_class"], dtype="U6"),
                                            "")[nearest], "")
            for cls in ("star", "galaxy"):
                columns[f"{cls}_recall_cs"] = [
                    100 * _fraction((s & hit & (label == cls) & (cs == cls)).sum(),
                                    (s & hit & (label == cls)).sum()) for s in sel_true]
    table = Table(columns)
    for name in table.colnames:
        if name.startswith(("complete", "star_recall", "galaxy_recall", "false_rate")):
            table[name].format = ".2f"
    return table


#: Column headings of the RST table.
RST_HEADINGS = {
    "r": "r (true)", "n_true": "truth (stars / galaxies)",
    "complete_ours": "completeness: ours (%)", "complete_sx": "SExtractor (%)",
    "star_recall_ours": "star recall: ours (%)", "star_recall_sx": "SPREAD_MODEL (%)",
    "star_recall_cs": "CLASS_STAR (%)",
    "galaxy_recall_ours": "galaxy recall: ours (%)", "galaxy_recall_sx": "SPREAD_MODEL (%)",
    "galaxy_recall_cs": "CLASS_STAR (%)",
    "false_rate_ours": "false detections: ours (%)", "false_rate_sx": "SExtractor (%)",
}


def _cell(value):
    return "-" if not math.isfinite(value) else f"{value:.2f}"


def rst_tables(table):
    """
    The comparison as RST list-tables: per magnitude bin, then the timings.

    Parameters
    ----------
    table : `~astropy.table.Table`
        From `comparison_table`, with ``meta["pipelines"]`` (wall time and
        objects/s of each) and ``meta["field"]``.

    Returns
    -------
    text : str
    """
    meta = table.meta
    field = meta["field"]
    sx = meta["pipelines"]["SExtractor + PSFEx"]
    ours = meta["pipelines"]["astro_starglx"]
    lines = [f"One simulated CSST-like 7-band field of {field['size']} x {field['size']} px "
             f"(seed {field['seed']}, {field['n_sources']} sources), written as L1-like files "
             f"without PSF keywords. Ours: ``detect_sources`` on the "
             f"{meta['detection_image']['ours']}, then ``classify`` with {ours['model']}. "
             f"SExtractor + PSFEx on the {meta['detection_image']['sextractor']} "
             f"(DETECT_THRESH {sx['detect_thresh']}, DETECT_MINAREA {sx['detect_minarea']}, "
             f"PSFEx FWHM {sx['psf_fwhm_arcsec']:.3f} arcsec), {sx['cut']}. Matched to the "
             f"truth within {meta['match_radius_arcsec']} arcsec; recalls are of the matched "
             "truth; false detections are binned by the detection's measured r magnitude "
             "(the last row counts all detections). Made by "
             "``python -m benchmarks.bench_sextractor``.", "",
             ".. list-table:: Star/galaxy classification: astro_starglx (ours) and "
             "SExtractor + PSFEx",
             "   :header-rows: 1", ""]

    def row(cells):
        out = [f"   * - {cells[0]}"]
        out += [f"     - {c}" for c in cells[1:]]
        return out

    lines += row(list(RST_HEADINGS.values()))
    last = len(table) - 1
    for k, r in enumerate(table):
        name = "all" if k == last else f"{r['r_lo']:g}-{r['r_hi']:g}"
        cells = [name, f"{r['n_true']} ({r['n_star']} / {r['n_galaxy']})"]
        cells += [_cell(float(r[c])) for c in list(RST_HEADINGS)[2:]]
        lines += row(cells)
    lines += ["", ".. list-table:: Wall time (process start-up included) and CPU time (user + "
              "system of each pipeline's processes) on the same field",
              "   :header-rows: 1", ""]
    lines += row(["pipeline", "detections", "wall time (s)", "objects/s", "CPU time (s)"])
    for name, rec in table.meta["pipelines"].items():
        lines += row([name, str(rec["n_detections"]), f"{rec['wall_s']:.1f}",
                      f"{rec['objects_per_s']:.0f}", f"{rec['cpu_s']:.1f}"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--size", type=int, default=2048, help="field side, pixels")
    parser.add_argument("--seed", type=int, default=80001, help="simulation seed")
    parser.add_argument("--model", default=None,
                        help="astro_starglx model name or weights file (default: the default)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the field and both pipelines' files, kept "
                             "(default: a temporary folder, removed)")
    parser.add_argument("--detect-thresh", type=float, default=1.5,
                        help="SExtractor DETECT_THRESH (sigma per pixel)")
    parser.add_argument("--detect-minarea", type=int, default=4,
                        help="SExtractor DETECT_MINAREA (pixels)")
    parser.add_argument("--radius", type=float, default=MATCH_RADIUS,
                        help="matching radius to the truth, arcsec")
    parser.add_argument("--output", default=None,
                        help="write the table here (.ecsv) and an RST list-table beside it")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        tools = find_tools()
    except ToolMissingError as err:
        print(f"bench_sextractor: {err}", file=sys.stderr)
        return 2
    from astro_starglx.simulate import SimConfig, simulate_field

    folder = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sextractor-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        config = SimConfig(shape=(args.size, args.size), wcs_jitter=0.5, rotation_jitter=0.02)
        images, truth = simulate_field(config, seed=args.seed)
        paths = write_l1_field(images, folder)
        truth.write(folder / "truth.ecsv", overwrite=True)
        zp = float(images["r"].meta["MAGZERO"])
        del images
        print(f"simulated and wrote a {args.size}^2 7-band field (seed {args.seed}, "
              f"{len(truth)} sources: {int((truth['label'] == 'star').sum())} stars) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)

        (folder / "ours").mkdir(exist_ok=True)
        cpu0 = children_cpu_seconds()
        ours, wall_a = time_ours(paths, folder / "ours", args.model)
        cpu_a = children_cpu_seconds() - cpu0
        with np.errstate(invalid="ignore", divide="ignore"):
            ours["mag_r"] = zp - 2.5 * np.log10(np.asarray(ours["flux"], dtype=float))
        n_unclassified = int(np.ma.getmaskarray(ours["class"]).sum())
        print(f"A astro_starglx: {len(ours)} detections ({n_unclassified} left unclassified) "
              f"in {wall_a:.1f} s ({ {k: round(v, 2) for k, v in ours.meta['seconds'].items()} })",
              flush=True)

        t0, cpu0 = time.perf_counter(), children_cpu_seconds()
        r_img = Path(paths["r"])
        sx = run_sextractor_psfex(r_img, r_img.with_name(r_img.name.replace("_img", "_wht")),
                                  workdir=folder / "sextractor", tools=tools,
                                  detect_thresh=args.detect_thresh,
                                  detect_minarea=args.detect_minarea)
        wall_b = time.perf_counter() - t0
        cpu_b = children_cpu_seconds() - cpu0
        sx["mag_r"] = np.where(np.asarray(sx["MAG_AUTO"]) < 90, sx["MAG_AUTO"], np.nan)
        info = sx.meta["sextractor"]
        print(f"B SExtractor + PSFEx: {len(sx)} detections in {wall_b:.1f} s "
              f"({ {k: round(v, 2) for k, v in info['seconds'].items()} }), PSF FWHM "
              f"{info['psf_fwhm_arcsec']:.3f} arcsec from {info['psfex_stars_accepted']} stars",
              flush=True)

        table = comparison_table(truth, ours, sx, radius=args.radius)
        table.meta.update({
            "field": {"size": args.size, "seed": args.seed, "n_sources": len(truth),
                      "simulation": config.record()},
            "match_radius_arcsec": args.radius,
            "detection_image": {"ours": "noise-weighted stack of the 7 bands",
                                "sextractor": "r band"},
            "false_rate": "unmatched detections / detections, binned by measured r mag",
            "pipelines": {
                "astro_starglx": {"n_detections": len(ours), "wall_s": wall_a, "cpu_s": cpu_a,
                                  "objects_per_s": len(ours) / wall_a,
                                  "model": ours.meta["model"],
                                  "n_unclassified": n_unclassified,
                                  "seconds": ours.meta["seconds"]},
                "SExtractor + PSFEx": {"n_detections": len(sx), "wall_s": wall_b,
                                       "cpu_s": cpu_b,
                                       "objects_per_s": len(sx) / wall_b,
                                       **{k: v for k, v in info.items()
                                          if k not in ("image", "weight")}},
            },
        })
        print()
        table.pprint(max_lines=-1, max_width=-1)
        print("(last row: all magnitudes; recalls are of the truth matched within "
              f"{args.radius} arcsec; _cs: CLASS_STAR >= 0.5 is a star)")
        for name, rec in table.meta["pipelines"].items():
            print(f"{name:>20s}: {rec['n_detections']} detections, wall {rec['wall_s']:.1f} s, "
                  f"{rec['objects_per_s']:.0f} objects/s (CPU {rec['cpu_s']:.1f} s, "
                  "user + system of its processes)")
        if args.output:
            table.write(args.output, overwrite=True)
            rst = Path(args.output).with_suffix(".rst")
            rst.write_text(rst_tables(table))
            print(f"wrote {args.output} and {rst}")
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
