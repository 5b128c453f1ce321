"""
Robustness of released models to the observing conditions of the fields.

For each condition (PSF width, family and gradient, exposure time, zero
point, close neighbours, ...) simulates fresh fields once, with seeds that no
data set used (the same seeds for every condition, so that conditions differ
only in what they change), and classifies them with every model given
through the public API, ``StarGalaxyClassifier(model).classify(truth["id",
"ra", "dec"], images)``. Per condition and model it reports star and galaxy
recall (binomial errors) for r <= 25 and r <= 26, the expected calibration
error of ``p_galaxy`` for r <= 25 and, for PSF-aware models, the accuracy of
the PSF the classifier used: per band the median over sources of
|estimate at the source / true FWHM - 1|, reported as the worst band's.

A magnitude limit means another signal-to-noise ratio in a shallower field
or under a wider PSF. So for models that record their training depth
(``meta.depth``) it also reports the recalls at equal S/N: each field's
limit is r <= 25 shifted by its own r-band 5-sigma point-source depth
(`~astro_starglx.background.point_source_depths`, at the PSF the classifier
measured) minus the model's, e.g. r <= 24 on a field 1 mag shallower.

The conditions named ``independent ...`` are drawn by a second simulator
that shares no code with the one the models were trained on
(`benchmarks.independent_sim`): what of a model's accuracy holds outside its
training simulator's habits.

By default (``--psf-source measured``) the PSF keywords are removed from
copies of the images, so that PSF-aware models must measure the PSF from the
field, as on real images without such keywords; ``--psf-source header``
leaves them in. Run::

    python -m benchmarks.robustness --models rbim-lite path/to/other.safetensors \\
        [--conditions nominal "psf x1.4" ...] [--fields 2] [--size 2048] \\
        [--seed 70001] [--jobs 2] [--psf-source {measured,header}] \\
        [--precision auto bf16 fp32] \\
        [--output robustness.ecsv] [--rst robustness.rst] [--cache fields/] \\
        [--baseline sextractor]

It prints one line per condition and model as it goes, then the table, an
RST grid table for the model card, the total wall time and each model's
classification speed (objects/s; reported, not asserted).

``--baseline sextractor`` adds a row per condition for what surveys run
today: SExtractor + PSFEx on the r band alone, classified by the DES cut on
``SPREAD_MODEL`` (`benchmarks.bench_sextractor.spread_model_baseline`; needs
``source-extractor`` and ``psfex`` on the ``PATH``). It detects its own
sources, so its recalls are of the truth it detected within 0.2 arcsec (its
``n`` is smaller than the models'), it has no ``p_galaxy`` (no ECE) and no
per-source PSF (no PSF error); its speed counts its detections.
"""

import argparse
import math
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from astropy.nddata import CCDData
from astropy.table import Table

from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning
from astro_starglx.background import point_source_depths
from astro_starglx.inputs import get_zeropoint
from astro_starglx.metrics import expected_calibration_error
from astro_starglx.psf import PSFEstimate
from astro_starglx.simulate import SimConfig, exptime_scale_for_depth, simulate_field
from benchmarks.fresh_fields import recall
from benchmarks.independent_sim import simulate_independent

#: The nominal CSST-like field of every condition (``shape`` from ``--size``).
NOMINAL = SimConfig(wcs_jitter=0.5, rotation_jitter=0.02)

#: The conditions of the issue "A classifier that knows the PSF", run by
#: default: name -> `SimConfig` fields replaced in ``NOMINAL`` (``psf x1.0``
#: is ``nominal``).
CONDITIONS = {
    "nominal": {},
    "psf x0.8": {"psf_scale": 0.8},
    "psf x1.2": {"psf_scale": 1.2},
    "psf x1.4": {"psf_scale": 1.4},
    "psf x1.6": {"psf_scale": 1.6},
    "moffat b=2.5": {"psf_model": "moffat", "psf_beta": 2.5},
    "gaussian": {"psf_model": "gaussian"},
    "exptime x0.25": {"exptime_scale": 0.25},
    "exptime x4": {"exptime_scale": 4.0},
    "zero point 24": {"zeropoint": 24.0},
    "zero point 31": {"zeropoint": 31.0},
    "neighbours 0.5-1 arcsec": {"neighbour_fraction": 0.3,
                                "neighbour_separation": (0.5, 1.0)},
    "psf gradient 0.4": {"psf_gradient": 0.4},
}

#: Key of a condition that resamples the simulated images (not a `SimConfig`
#: field): the spline order of a half-pixel shift (`resample_field`).
RESAMPLE = "resample_order"

#: Keys of conditions that perturb the catalog the classifier is given (not
#: `SimConfig` fields): every position moved by this many arcsec to the
#: north-east (a catalog or WCS off as a whole), and by a Gaussian error of
#: this many arcsec per axis (another survey's astrometry), drawn from the
#: field's seed (`with_catalog_errors`).
CATALOG_SHIFT = "catalog_shift"
CATALOG_SCATTER = "catalog_scatter"

#: Key of a condition drawn by the independent simulator
#: (`benchmarks.independent_sim.simulate_independent`, whose keyword
#: arguments the condition's other keys are) instead of `simulate_field`.
INDEPENDENT = "independent_simulator"

#: Further conditions, run only when named in ``--conditions``.
EXTRA_CONDITIONS = {
    "psf x1.8": {"psf_scale": 1.8},
    "moffat b=3.5 x1.2": {"psf_model": "moffat", "psf_beta": 3.5, "psf_scale": 1.2},
    # Wings heavier than most training fields' (beta 2.5-5; one set of four
    # reached 2): rbim-lite-v13's gamma_range flags them OUT_OF_RANGE.
    "moffat b=2": {"psf_model": "moffat", "psf_beta": 2.0},
    "moffat b=2 x1.4": {"psf_model": "moffat", "psf_beta": 2.0, "psf_scale": 1.4},
    # Elongated PSFs (aberrations, tracking, focal-plane tilt): no training
    # set of rbim-lite-v13 had one.
    "psf e=0.1": {"psf_ellipticity": 0.1, "psf_angle": 30.0},
    "psf e=0.2": {"psf_ellipticity": 0.2, "psf_angle": 30.0},
    "psf e=0.2 x1.4": {"psf_ellipticity": 0.2, "psf_angle": 30.0, "psf_scale": 1.4},
    "depth -1 mag": {"exptime_scale": exptime_scale_for_depth(-1.0)},
    "depth +0.5 mag": {"exptime_scale": exptime_scale_for_depth(0.5)},
    "galaxies x0.7": {"galaxy_size_scale": 0.7},
    "sersic galaxies": {"sersic_fraction": 1.0},
    # Clumpy disks (GalSim RandomKnots), which no training set had.
    "knotty galaxies 0.3": {"knot_fraction": 0.3},
    "knotty galaxies 0.6": {"knot_fraction": 0.6},
    "colour scatter 0.1": {"colour_scatter": 0.1},
    # Colours far off the training loci (real stellar spectra against the
    # simulator's blackbodies differ by up to a few tenths of a magnitude):
    # how much the model leans on colour.
    "colour scatter 0.3": {"colour_scatter": 0.3},
    "sky kept": {"subtract_sky": False},
    # Coadds are resampled, which correlates the noise of neighbouring pixels:
    # every band shifted by half a pixel after simulation (its WCS with it),
    # bilinearly (pixel noise x0.50) or by a cubic spline (x0.76), while the
    # uncertainty still states the noise as simulated.
    "resampled bilinear": {RESAMPLE: 1},
    "resampled cubic": {RESAMPLE: 3},
    # Catalogs off the images (classify refines the positions by default;
    # --refine-positions off shows what it saves).
    "catalog shift 0.1 arcsec": {CATALOG_SHIFT: 0.1},
    "catalog shift 0.3 arcsec": {CATALOG_SHIFT: 0.3},
    "catalog errors 0.03 arcsec": {CATALOG_SCATTER: 0.03},
    "catalog errors 0.06 arcsec": {CATALOG_SCATTER: 0.06},
    # Fields of a second simulator that shares no code with the training one
    # (astropy.modeling Sersic galaxies and Moffat PSFs, blackbody and
    # power-law colours, nJy images with the sky in): what of a model's
    # accuracy is the training simulator's habits.
    "independent nominal": {INDEPENDENT: True},
    "independent psf x1.2": {INDEPENDENT: True, "psf_scale": 1.2},
    "independent psf x1.4": {INDEPENDENT: True, "psf_scale": 1.4},
    "independent moffat b=2": {INDEPENDENT: True, "beta": 2.0},
    "independent moffat b=5": {INDEPENDENT: True, "beta": 5.0},
    "independent depth -1 mag": {INDEPENDENT: True, "depth_shift": -1.0},
}

ALL_CONDITIONS = {**CONDITIONS, **EXTRA_CONDITIONS}

#: Header keywords that tell the PSF; removed with ``--psf-source measured``.
PSF_KEYWORDS = ("PSFFWHM", "SEEING", "FWHM", "PSF_FWHM", "PSFR80", "PSFSCALE", "PSFMODEL",
                "PSFBETA", "PSFGRAD", "PSFJITTR", "PSFELLIP", "PSFANGLE")

#: Magnitude limits (r band, truth) of the recall columns.
MAG_LIMITS = (25.0, 26.0)

#: Display name of the ``--baseline sextractor`` rows.
SEXTRACTOR_BASELINE = "SExtractor SPREAD_MODEL"


# ----------------------------------------------------------------------- simulation
def _cache_folder(cache, condition, size, seed):
    slug = "".join(c if c.isalnum() or c in ".-" else "_" for c in condition)
    return Path(cache) / f"{slug}_{size}" / str(seed)


def _read_field(folder):
    truth = Table.read(folder / "truth.ecsv")
    bands = truth.meta["bands"]
    images = {b: CCDData.read(folder / f"{b}.fits") for b in bands}
    return images, truth


def _write_field(images, truth, folder):
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for band, image in images.items():
        image.write(tmp / f"{band}.fits", overwrite=True)
    truth = truth.copy(copy_data=False)
    truth.meta["bands"] = list(images)
    truth.write(tmp / "truth.ecsv", overwrite=True)
    tmp.replace(folder)  # atomic: a killed run never leaves a half field


def simulate_condition(condition, n_fields, size, seed, cache=None):
    """The ``n_fields`` fields of one condition and the time it took (s).

    With ``cache`` (a folder), each field is read from there when an earlier
    run wrote it and written there otherwise, so that a second run (e.g. a new
    model) classifies exactly the same pixels without simulating them again.
    Top-level so that `ProcessPoolExecutor` can run it in a worker.
    """
    t0 = time.perf_counter()
    fields = []
    for k in range(n_fields):
        folder = None if cache is None else _cache_folder(cache, condition, size, seed + k)
        if folder is not None and folder.is_dir():
            fields.append(_read_field(folder))
            continue
        settings = dict(ALL_CONDITIONS[condition])
        order = settings.pop(RESAMPLE, None)
        shift = settings.pop(CATALOG_SHIFT, 0.0)
        scatter = settings.pop(CATALOG_SCATTER, 0.0)
        if settings.pop(INDEPENDENT, False):
            field = simulate_independent(seed + k, shape=(size, size), **settings)
        else:
            field = simulate_field(NOMINAL, seed=seed + k, shape=(size, size), **settings)
        if order is not None:
            field = resample_field(*field, order=order)
        if shift or scatter:
            field = (field[0], with_catalog_errors(field[1], shift=shift, scatter=scatter,
                                                   seed=seed + k))
        if folder is not None:
            _write_field(*field, folder)
        fields.append(field)
    return fields, time.perf_counter() - t0


def with_catalog_errors(truth, *, shift, scatter, seed):
    """
    The truth with ``ra_catalog``/``dec_catalog``: its positions moved by
    ``shift`` arcsec to the north-east and by a Gaussian error of ``scatter``
    arcsec per axis, the catalog `classify_fields` then gives the classifier.
    """
    rng = np.random.default_rng(seed)
    n = len(truth)
    east, north = shift / math.sqrt(2.0) + rng.normal(0.0, scatter, (2, n))
    truth = truth.copy()
    dec = np.asarray(truth["dec"], dtype=float)
    truth["ra_catalog"] = np.asarray(truth["ra"], dtype=float) \
        + east / 3600.0 / np.cos(np.deg2rad(dec))
    truth["dec_catalog"] = dec + north / 3600.0
    return truth


def resample_field(images, truth, *, order, shift=0.5):
    """
    The field shifted by ``shift`` pixels along both axes with a spline of
    ``order`` (`scipy.ndimage.shift`), as a coadd's resampling does: the
    noise of neighbouring pixels becomes correlated and the per-pixel noise
    drops, while each image's uncertainty still states the noise as
    simulated. WCSs and truth positions move with the pixels.
    """
    from scipy import ndimage

    out = {}
    for band, image in images.items():
        data = ndimage.shift(np.asarray(image.data, dtype=np.float64), (shift, shift),
                             order=order, mode="nearest").astype(np.float32)
        wcs = image.wcs.deepcopy()
        wcs.wcs.crpix = wcs.wcs.crpix + shift
        out[band] = CCDData(data, unit=image.unit, wcs=wcs, mask=image.mask,
                            uncertainty=image.uncertainty, meta=image.meta.copy())
    truth = truth.copy()
    for band in images:
        for axis in "xy":
            if f"{axis}_{band}" in truth.colnames:
                truth[f"{axis}_{band}"] += shift
    return out, truth


def iter_conditions(conditions, n_fields, size, seed, jobs, cache=None):
    """Yield ``(condition, fields, sim_seconds)`` in order.

    With ``jobs > 1`` the conditions are simulated in ``jobs`` processes,
    keeping at most ``jobs + 1`` conditions ahead of the one being classified
    so that memory stays bounded while the workers never wait for the
    classification.
    """
    if jobs <= 1:
        for cond in conditions:
            yield (cond, *simulate_condition(cond, n_fields, size, seed, cache))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {}
        ahead = iter(conditions)

        def submit_next():
            cond = next(ahead, None)
            if cond is not None:
                pending[cond] = pool.submit(simulate_condition, cond, n_fields, size, seed,
                                            cache)

        for _ in range(jobs + 1):
            submit_next()
        for cond in conditions:
            fields, t_sim = pending.pop(cond).result()
            submit_next()
            yield cond, fields, t_sim


def strip_psf_keywords(images):
    """Copies of ``images`` (sharing the pixel arrays) without PSF keywords."""
    out = {}
    for band, image in images.items():
        meta = image.meta.copy()
        for key in PSF_KEYWORDS:
            meta.pop(key, None)
        out[band] = CCDData(image.data, unit=image.unit, wcs=image.wcs, mask=image.mask,
                            uncertainty=image.uncertainty, meta=meta)
    return out


# ------------------------------------------------------------------------ measures
def psf_errors(psf_meta, images, truth):
    """Per band, ``estimate / truth - 1`` at every source on that band's image.

    The truth is the header's ``PSFFWHM`` for a uniform PSF, else (a PSF
    gradient) each source's ``psf_fwhm_<band>``; the estimate is evaluated at
    each source's position like `~astro_starglx.psf.PSFEstimate.at`.
    """
    errors = {}
    for band, record in psf_meta.items():
        est = _estimate(record)
        image = images[band]
        ny, nx = image.shape
        x, y = np.asarray(truth[f"x_{band}"]), np.asarray(truth[f"y_{band}"])
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        if float(image.meta.get("PSFGRAD", 0.0)) != 0.0:
            true = np.asarray(truth[f"psf_fwhm_{band}"], dtype=float)[inside]
        else:
            true = float(image.meta["PSFFWHM"])
        errors[band] = np.asarray(est.at(x[inside], y[inside])) / true - 1.0
    return errors


def _estimate(record):
    """The `PSFEstimate` of one band's record in a result's ``meta["astro_starglx"]["psf"]``."""
    return PSFEstimate(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def field_depth(psf_meta, images, truth, band="r"):
    """
    The ``band`` 5-sigma point-source depth of a field (AB mag), measured as
    `~astro_starglx.release.simulated_depth` measured the model's
    ``meta.depth`` (`~astro_starglx.background.point_source_depths`) at the
    PSF the classifier used (``psf_meta``); NaN without a measured PSF for
    ``band``.
    """
    record = (psf_meta or {}).get(band)
    if record is None:
        return math.nan
    image = images[band]
    pixel_scale = abs(float(image.wcs.proj_plane_pixel_scales()[0].to_value("arcsec")))
    depths = point_source_depths(
        {band: image}, {band: _estimate(record)},
        {band: (np.asarray(truth[f"x_{band}"]), np.asarray(truth[f"y_{band}"]))},
        pixel_scale=pixel_scale, zeropoints={band: get_zeropoint(image, band)})
    return depths.get(band, math.nan)


def score(outs, fields, *, reference_depth=None):
    """
    Recalls, ECE and PSF accuracy of one model on the fields of a condition.

    ``reference_depth``: the model's r-band training depth (``meta.depth``),
    for the recalls at equal S/N (``*_snr``); None leaves them NaN.
    """
    label, mag, pred, p_gal, snr_limit = [], [], [], [], []
    errors, n_fell_back = {}, 0
    # A baseline without probabilities (SPREAD_MODEL) has no p_galaxy: no ECE.
    has_p = all("p_galaxy" in out.colnames for out in outs)
    for out, (images, truth) in zip(outs, fields):
        ok = ~np.ma.getmaskarray(out["class"])
        label.append(np.asarray(truth["label"])[ok])
        mag.append(np.asarray(truth["mag_r"])[ok])
        pred.append(np.asarray(out["class"])[ok])
        p_gal.append(np.ma.getdata(out["p_galaxy"])[ok].astype(float) if has_p
                     else np.full(int(ok.sum()), math.nan))
        psf_meta = out.meta.get("astro_starglx", {}).get("psf")
        shift = (field_depth(psf_meta, images, truth) - reference_depth
                 if reference_depth is not None else math.nan)
        snr_limit.append(np.full(int(ok.sum()), MAG_LIMITS[0] + shift))
        if psf_meta:
            n_fell_back += sum(bool(r["fell_back"]) for r in psf_meta.values())
            for band, err in psf_errors(psf_meta, images, truth).items():
                errors.setdefault(band, []).append(err)
    arrays = (label, mag, pred, p_gal, snr_limit)
    label, mag, pred, p_gal, snr_limit = (np.concatenate(a) for a in arrays)
    row = {}
    for limit in (*MAG_LIMITS, "snr"):
        key = limit if limit == "snr" else f"{limit:.0f}"
        sel = mag <= (snr_limit if limit == "snr" else limit)
        for cls in ("star", "galaxy"):
            r, e, n = recall(pred[sel], label[sel], cls)
            row.update({f"{cls}_recall_{key}": 100 * r, f"{cls}_err_{key}": 100 * e,
                        f"n_{cls}_{key}": n})
    row["limit_snr"] = float(np.mean(snr_limit)) if snr_limit.size else math.nan
    sel = mag <= MAG_LIMITS[0]
    row["ece_25"] = (expected_calibration_error((label[sel] == "galaxy").astype(int),
                                                p_gal[sel]) if sel.any() and has_p
                     else math.nan)
    medians = {band: 100 * float(np.median(np.abs(np.concatenate(errs))))
               for band, errs in errors.items() if sum(e.size for e in errs)}
    worst = max(medians, key=medians.get) if medians else ""
    row.update({"psf_err": medians.get(worst, math.nan), "psf_err_band": worst,
                "psf_fell_back": n_fell_back})
    return row


def classify_fields(clf, fields, psf_source, *, refine_positions=True):
    """Classify every field; the outputs and the classification wall time (s)."""
    outs, t_cls = [], 0.0
    for images, truth in fields:
        given = strip_psf_keywords(images) if psf_source == "measured" else images
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            catalog = truth["id", "ra", "dec"]
            if "ra_catalog" in truth.colnames:  # a condition's perturbed catalog
                catalog = Table({"id": truth["id"], "ra": truth["ra_catalog"],
                                 "dec": truth["dec_catalog"]})
            outs.append(clf.classify(catalog, given, refine_positions=refine_positions))
        t_cls += time.perf_counter() - t0
    return outs, t_cls


# -------------------------------------------------------------------------- output
def _recall_cell(row, limit):
    lim = limit if limit == "snr" else f"{limit:.0f}"
    if not math.isfinite(row[f"star_recall_{lim}"]):
        return "-"
    return (f"{row[f'star_recall_{lim}']:.2f} ± {row[f'star_err_{lim}']:.2f} / "
            f"{row[f'galaxy_recall_{lim}']:.2f} ± {row[f'galaxy_err_{lim}']:.2f}")


def _snr_cell(row):
    if not math.isfinite(row["limit_snr"]):
        return "-"
    return f"{_recall_cell(row, 'snr')} (r<={row['limit_snr']:.2f})"


def _psf_cell(row):
    if not math.isfinite(row["psf_err"]):
        return "-"
    return f"{row['psf_err']:.1f} % ({row['psf_err_band']})"


def rst_grid(table, models):
    """The table as an RST grid table: one row per condition, five columns per model."""
    header = ["condition"]
    for name in models:
        header += [f"{name}: star / galaxy recall r<=25 (%)", "r<=26 (%)",
                   "equal S/N (%): r<=25 + depth shift", "ECE r<=25", "PSF error"]
    body = []
    for cond in dict.fromkeys(table["condition"]):
        line = [cond]
        for name in models:
            rows = table[(table["condition"] == cond) & (table["model"] == name)]
            if len(rows) == 0:
                line += ["-"] * 5
                continue
            row = rows[0]
            line += [_recall_cell(row, 25), _recall_cell(row, 26), _snr_cell(row),
                     "-" if not math.isfinite(row["ece_25"]) else f"{row['ece_25']:.3f}",
                     _psf_cell(row)]
        body.append(line)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def rule(char):
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def cells(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    lines = [rule("-"), cells(header), rule("=")]
    for r in body:
        lines += [cells(r), rule("-")]
    return "\n".join(lines)


def model_names(models):
    """Short unique display names: registry names, or file stems."""
    names = []
    for m in models:
        name = "default" if m is None else (Path(m).stem if str(m).endswith(".safetensors")
                                            else str(m))
        while name in names:
            name += "'"
        names.append(name)
    return names


def build_table(rows, args, speed, wall):
    table = Table(rows=rows)
    table.meta.update({
        "fields": args.fields, "size": args.size,
        "seeds": list(range(args.seed, args.seed + args.fields)),
        "psf_source": args.psf_source, "device": args.device,
        "precision": list(getattr(args, "precision", ["auto"])),
        "selection": "truth mag_r <= limit, classified (on the image)",
        "psf_err": "worst band's median over sources of |estimate / truth - 1|, %",
        "snr": "recalls at truth mag_r <= 25 + (the field's r 5-sigma point-source depth - "
               "the model's meta.depth r); limit_snr: the mean limit",
        "conditions": {c: {k: list(v) if isinstance(v, tuple) else v
                           for k, v in ALL_CONDITIONS[c].items()} for c in args.conditions},
        "wall_s": wall, "objects_per_s": speed,
    })
    for col in table.colnames:
        if col.startswith(("star_", "galaxy_")) or col in ("psf_err", "limit_snr"):
            table[col].format = ".2f"
    for col, fmt in (("ece_25", ".4f"), ("sim_s", ".1f"), ("classify_s", ".2f")):
        table[col].format = fmt
    if getattr(args, "baseline", None):
        table.meta["baseline"] = {
            "name": SEXTRACTOR_BASELINE, "band": "r",
            "what": "SExtractor + PSFEx, galaxy if SPREAD_MODEL + 3 SPREADERR_MODEL > 0.005; "
                    "recalls of the truth detected within 0.2 arcsec; objects/s of detections"}
    return table


def classify_baseline(fields, workdir):
    """
    The ``--baseline sextractor`` classes of every field of a condition.

    Parameters
    ----------
    fields : list of tuple
        ``(images, truth)`` pairs.
    workdir : path-like
        Folder for SExtractor's and PSFEx's files (emptied after each field).

    Returns
    -------
    outs : list of `~astropy.table.Table`
        Per field, one row per truth row with ``class`` (masked where
        nothing was detected within 0.2 arcsec).
    seconds : float
        SExtractor + PSFEx wall time, process start-ups included.
    n_detections : int
        Detections over all fields.
    """
    import shutil

    from benchmarks.bench_sextractor import spread_model_baseline

    outs, seconds, n_det = [], 0.0, 0
    for k, (images, truth) in enumerate(fields):
        folder = Path(workdir) / f"field{k}"
        try:
            out = spread_model_baseline(images, truth, workdir=folder, band="r")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        outs.append(out)
        seconds += out.meta["sextractor"]["seconds"]["total"]
        n_det += out.meta["sextractor"]["n_detections"]
    return outs, seconds, n_det


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--models", nargs="+", default=[None],
                        help="model names or weights files (default: the package default)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=list(ALL_CONDITIONS), metavar="CONDITION",
                        help="conditions to run (default: the issue's); choose from "
                             + ", ".join(repr(c) for c in ALL_CONDITIONS))
    parser.add_argument("--fields", type=int, default=2, help="fields per condition")
    parser.add_argument("--size", type=int, default=2048, help="field side, pixels")
    parser.add_argument("--seed", type=int, default=70001,
                        help="first field seed (never used by a data set)")
    parser.add_argument("--psf-source", choices=("measured", "header"), default="measured",
                        help="measured: remove the PSF keywords so that the classifier "
                             "measures the PSF (default); header: keep them")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes that simulate the conditions' fields")
    parser.add_argument("--refine-positions", choices=("on", "off"), default="on",
                        help="classify's refine_positions (default: on, as classify)")
    parser.add_argument("--device", default="cpu", help="torch device for classify")
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=("auto", "bf16", "fp32"),
                        help="classify's precision; several: a row for each (default: auto)")
    parser.add_argument("--output", default=None, help="write the table (e.g. .ecsv)")
    parser.add_argument("--cache", default=None,
                        help="folder to keep the simulated fields in and reuse them from "
                             "(default: none, simulate every run)")
    parser.add_argument("--rst", default=None, help="also write the RST grid table here")
    parser.add_argument("--baseline", choices=("sextractor",), default=None,
                        help="add a row per condition for SExtractor + PSFEx with the DES "
                             "SPREAD_MODEL cut on the r band (needs source-extractor and "
                             "psfex; default: none)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.baseline:
        from benchmarks.bench_sextractor import ToolMissingError, find_tools

        try:
            find_tools()
        except ToolMissingError as err:
            sys.exit(f"robustness --baseline sextractor: {err}")
        baseline_dir = tempfile.TemporaryDirectory(prefix="robustness-sextractor-")
    t_start = time.perf_counter()
    names, classifiers, depths = [], [], []
    for name, model in zip(model_names(args.models), args.models):
        for precision in args.precision:  # one row per model and precision
            names.append(name if len(args.precision) == 1 else f"{name} {precision}")
            classifiers.append(StarGalaxyClassifier(model, device=args.device,
                                                    precision=precision))
            depths.append((classifiers[-1].meta.depth or {}).get("r"))
    n_objects = dict.fromkeys(names, 0)
    t_classify = dict.fromkeys(names, 0.0)
    rows = []
    print(f"{len(args.conditions)} conditions x {args.fields} field(s) of {args.size}^2 "
          f"(seeds {args.seed}..{args.seed + args.fields - 1}), PSF {args.psf_source}, "
          f"models {names}", flush=True)
    warm = False
    for cond, fields, t_sim in iter_conditions(args.conditions, args.fields, args.size,
                                               args.seed, args.jobs, args.cache):
        if not warm:
            # Untimed: the first call loads the weights and builds the predictor.
            images, truth = fields[0]
            for clf in classifiers:
                classify_fields(clf, [(images, truth[:8])], args.psf_source,
                                refine_positions=args.refine_positions == "on")
            warm = True
        n_src = sum(len(truth) for _, truth in fields)
        for name, clf, depth in zip(names, classifiers, depths):
            outs, t_cls = classify_fields(clf, fields, args.psf_source,
                                          refine_positions=args.refine_positions == "on")
            n_objects[name] += n_src
            t_classify[name] += t_cls
            row = {"condition": cond, "model": name,
                   **score(outs, fields, reference_depth=depth),
                   "n_sources": n_src, "sim_s": t_sim, "classify_s": t_cls}
            rows.append(row)
            psf = _psf_cell(row) + (f", {row['psf_fell_back']} fell back"
                                    if row["psf_fell_back"] else "")
            print(f"{cond:>24s}  {name:<20s} star / galaxy r<=25 {_recall_cell(row, 25)} "
                  f"(n={row['n_star_25']}/{row['n_galaxy_25']})  r<=26 "
                  f"{_recall_cell(row, 26)}  equal S/N {_snr_cell(row)}  "
                  f"ECE {row['ece_25']:.4f}  PSF {psf}  "
                  f"[sim {t_sim:.0f} s, classify {t_cls:.1f} s]", flush=True)
        if args.baseline:
            name = SEXTRACTOR_BASELINE
            outs, t_cls, n_det = classify_baseline(fields, baseline_dir.name)
            n_objects[name] = n_objects.get(name, 0) + n_det
            t_classify[name] = t_classify.get(name, 0.0) + t_cls
            row = {"condition": cond, "model": name, **score(outs, fields),
                   "n_sources": n_src, "sim_s": t_sim, "classify_s": t_cls}
            rows.append(row)
            print(f"{cond:>24s}  {name:<20s} star / galaxy r<=25 {_recall_cell(row, 25)} "
                  f"(n={row['n_star_25']}/{row['n_galaxy_25']} detected)  r<=26 "
                  f"{_recall_cell(row, 26)}  [{n_det} detections, SExtractor + PSFEx "
                  f"{t_cls:.1f} s]", flush=True)
    wall = time.perf_counter() - t_start
    if args.baseline:
        baseline_dir.cleanup()
        names = [*names, SEXTRACTOR_BASELINE]
    speed = {name: n_objects[name] / t_classify[name] if t_classify[name] else math.nan
             for name in names}
    table = build_table(rows, args, speed, wall)
    if args.output:
        table.write(args.output, overwrite=True)
    print()
    table.pprint(max_lines=-1, max_width=-1)
    grid = rst_grid(table, names)
    print("\n" + grid)
    if args.rst:
        Path(args.rst).write_text(grid + "\n")
    print(f"\ntotal wall time {wall:.0f} s")
    for name in names:
        print(f"  {name}: classify {n_objects[name] / max(t_classify[name], 1e-9):.0f} "
              f"objects/s ({n_objects[name]} objects in {t_classify[name]:.1f} s)")


if __name__ == "__main__":
    main()
