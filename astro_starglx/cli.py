"""
The ``astro-starglx`` command line tool: thin wrappers over the library.

Subcommands::

    astro-starglx demo                 simulate a small CSST-like field and classify it
    astro-starglx classify CAT IMG...  classify a catalog against FITS images
    astro-starglx classify-tiles MANIFEST -o OUTDIR   classify a survey's tiles on Dask
    astro-starglx weights list|download|verify|install
    astro-starglx sim-report           realism report of the simulator
    astro-starglx make-dataset         build a training set from simulated fields, or
                                       from your images + labelled catalog (--catalog)
    astro-starglx train                train a model from a data set
    astro-starglx evaluate             evaluate a model on held-out test fields, or on
                                       your images + labelled catalog (--catalog)
    astro-starglx fine-tune            adapt a model to your survey with your labels

``-v``/``--verbose`` and ``--debug`` go before or after the subcommand. An
error prints one line, ``astro-starglx COMMAND: error: MESSAGE`` (the
library's own message), and exits with status 1 (2 for a usage error);
``--debug`` shows the traceback instead. Each warning prints once, as
``astro-starglx: warning: MESSAGE``. Output files given with ``-o`` are
never replaced without ``--overwrite``.
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

log = logging.getLogger("astro_starglx")

PROG = "astro-starglx"

# Output columns of StarGalaxyClassifier.classify (checked here, before any
# work, so that the message can name the command line option).
_OUTPUT_COLUMNS = ("p_star", "p_galaxy", "class", "class_flags")


class UsageError(Exception):
    """A command line value that the tool itself refuses (exit status 2)."""


class _HelpFormatter(argparse.HelpFormatter):
    """Append ``(default: ...)`` to an option's help unless the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default is argparse.SUPPRESS
                or action.required):
            return text
        if action.option_strings and action.nargs == 0:
            return f"{text} (default: off)"
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL,
                                                              argparse.ZERO_OR_MORE):
            return text  # a required positional argument has no default
        return f"{text} (default: %(default)s)"


def _common_options(*, top):
    """``-v`` and ``--debug``, accepted before and after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    # On the subcommands the defaults are SUPPRESS, so that an option given
    # before the subcommand is not reset by the subcommand's parser.
    parent.add_argument("-v", "--verbose", action="count",
                        default=0 if top else argparse.SUPPRESS,
                        help="log progress: -v for steps, -vv for details "
                             "(default: warnings only)")
    parent.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="show the full traceback of an error (default: one line)")
    return parent


# --------------------------------------------------------------------------- output files


def _check_output(path, *, overwrite, option, folder_made=False):
    """Refuse an existing file (without ``--overwrite``) or a missing folder, early."""
    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path} already exists; pass --overwrite to replace it, or choose another {option}"
        raise UsageError(msg)
    if not folder_made and not path.parent.is_dir():
        msg = f"{option} {path}: the folder {path.parent} does not exist"
        raise UsageError(msg)
    return path


def _check_table_format(path, option):
    """Refuse a table file name whose format astropy cannot tell from it."""
    from astropy.io.registry import identify_format
    from astropy.table import Table

    if not identify_format("write", Table, str(path), None, [], {}):
        msg = (f"{option} {path}: astropy cannot tell the table format from the file name; "
               "use a name ending in .ecsv, .fits or .csv")
        raise UsageError(msg)


def _write_atomic(obj, path, **kwargs):
    """``obj.write`` to a temporary file next to ``path``, then move it onto ``path``."""
    path = Path(path)
    # The temporary name ends with the real one, so that astropy tells the
    # format from it as it would from ``path``.
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        obj.write(tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _remove_if_empty(folder):
    """Remove ``folder`` if it holds no file (only empty folders, or nothing)."""
    folder = Path(folder)
    if folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        shutil.rmtree(folder)


def _progress(message):
    """A progress line on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- weights


def _add_weights(sub):
    p = sub.add_parser("weights", help="list, download, verify or install model weights",
                       description="List, download, verify or install model weights.",
                       formatter_class=_HelpFormatter, parents=[_common_options(top=False)])
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    common = [_common_options(top=False)]
    wsub.add_parser("list", help="list the registered models (* marks the default)",
                    description="List the registered models; * marks the default.",
                    formatter_class=_HelpFormatter, parents=common)
    d = wsub.add_parser("download", help="fetch a model into the cache",
                        description="Fetch a model into the cache (hash checked).",
                        formatter_class=_HelpFormatter, parents=common)
    d.add_argument("name", nargs="?", default=None,
                   help="model name (default: the registry's default model)")
    v = wsub.add_parser("verify", help="check the sha256 of cached and bundled weights",
                        description="Check the sha256 of cached and bundled weights; "
                                    "exits with 1 if a file is corrupt.",
                        formatter_class=_HelpFormatter, parents=common)
    v.add_argument("names", nargs="*", metavar="NAME",
                   help="model names (default: every registered model)")
    i = wsub.add_parser("install", help="copy a weights file obtained elsewhere into the cache",
                        description="Copy a weights file obtained elsewhere (e.g. on an "
                                    "offline cluster) into the cache, hash checked.",
                        formatter_class=_HelpFormatter, parents=common)
    i.add_argument("file", help="path to a .safetensors file")
    i.add_argument("--name", default=None,
                   help="registry name (default: the model name in the file's metadata)")
    p.set_defaults(func=_cmd_weights)


def _cmd_weights(args):
    from . import weights

    if args.weights_command == "list":
        rows = weights.list_weights()
        if not rows:
            print("no models registered")
            return 0
        default = weights.default_weights_name()
        width = max(len("name"), *(len(entry.name) for entry in rows))
        print(f"  {'name':{width}s}  {'where':9s} {'sha256':16s}  file")
        for entry in rows:
            mark = "*" if entry.name == default else " "
            if entry.bundled:
                where = "bundled"
            elif entry.cache_path.is_file():
                where = "cached"
            else:
                where = "download"
            print(f"{mark} {entry.name:{width}s}  {where:9s} {entry.sha256[:16]}  "
                  f"{entry.filename}")
        print("* the default model")
        return 0
    if args.weights_command == "download":
        path = weights.download_weights(args.name, progressbar=sys.stderr.isatty())
        print(path)
        return 0
    if args.weights_command == "verify":
        status = 0
        for result in weights.verify_weights(args.names or None):
            print(f"{result.name:20s} {result.state:8s} {result.message}")
            # A model not downloaded yet is fine; a corrupt file is not.
            status |= result.state == "corrupt"
        return int(status)
    path = weights.install_weights(args.file, name=args.name)
    print(path)
    return 0


# --------------------------------------------------------------------------- demo


def _json_config(text):
    """A ``--config`` value: a JSON object, or the path of a file holding one."""
    if not text:
        return {}
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"--config must be a JSON object or a JSON file, got {text!r}: {err}"
        raise UsageError(msg) from None
    if not isinstance(config, dict):
        msg = f"--config must be a JSON object, got {config!r}"
        raise UsageError(msg)
    return config


def _sim_settings(args):
    # SimConfig fields: --config's, with the shape from --size.
    return {**_json_config(args.config), "shape": (args.size, args.size)}


def _save_paths(folder, bands):
    folder = Path(folder)
    return {**{band: folder / f"field_{band}.fits" for band in bands},
            "catalog": folder / "catalog.ecsv"}


def _cmd_demo(args):
    from .classifier import StarGalaxyClassifier, StarGalaxyWarning
    from .csst import CSST_BANDS
    from .simulate import simulate_field

    settings = _sim_settings(args)
    # Refuse existing outputs before the work, not after it.
    if args.output:
        _check_output(args.output, overwrite=args.overwrite, option="--output")
        _check_table_format(args.output, "--output")
    if args.save:
        bands = settings.get("bands", CSST_BANDS)
        for path in _save_paths(args.save, bands).values():
            _check_output(path, overwrite=args.overwrite, option="--save folder",
                          folder_made=True)
    _progress(f"simulating a {args.size}x{args.size} px CSST-like field (seed {args.seed})...")
    t0 = time.perf_counter()
    images, truth = simulate_field(seed=args.seed, **settings)
    t_sim = time.perf_counter() - t0
    catalog = truth["id", "ra", "dec"]
    clf = StarGalaxyClassifier(args.model, device=args.device, progress=sys.stderr.isatty())
    _progress(f"classifying {len(catalog)} sources...")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StarGalaxyWarning)
        result = clf.classify(catalog, images)
    t_cls = time.perf_counter() - t0
    for w in caught:
        if not issubclass(w.category, StarGalaxyWarning):  # said once below otherwise
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    info = result.meta["astro_starglx"]
    print(f"simulated a {args.size}x{args.size} px, {len(images)}-band CSST-like field "
          f"with {len(truth)} sources (seed {args.seed}) in {t_sim:.1f} s")
    print(f"classified with {info['model']} (sha256 {info['weights_sha256'][:12]}...) on "
          f"{info['device']} ({info['precision']}) in {t_cls:.2f} s "
          f"({len(result) / t_cls:.0f} objects/s)")
    _print_truth_summary(result, truth, mag_column="mag_r")
    for w in caught:
        if issubclass(w.category, StarGalaxyWarning):
            print(f"note: {w.message}")
    if args.save:
        _save_field(images, truth, args.save)
    if args.output:
        _write_atomic(_with_truth(result, truth), args.output, overwrite=True)
        print(f"wrote {args.output} (classes and truth)")
    return 0


def _with_truth(result, truth):
    """The classified table followed by the truth columns it lacks."""
    out = result.copy(copy_data=False)
    for name in truth.colnames:
        if name not in out.colnames:
            out[name] = truth[name]
    return out


def _save_field(images, truth, folder):
    paths = _save_paths(folder, images)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for band, image in images.items():
        _write_atomic(image, paths[band], overwrite=True)
    _write_atomic(truth, paths["catalog"], overwrite=True)
    print(f"saved the field to {Path(folder)}/: catalog.ecsv (with the truth) and "
          f"{len(images)} field_<band>.fits")


def _print_truth_summary(result, truth, *, mag_column):
    ok = ~np.ma.getmaskarray(result["class"])
    label = np.asarray(truth["label"])
    pred = np.asarray(np.ma.filled(result["class"], ""))
    mag = np.asarray(truth[mag_column])
    print(f"{'r range':>14s} {'n_star':>7s} {'star recall':>12s} {'n_gal':>7s} "
          f"{'galaxy recall':>14s}")
    for lo, hi in [(-np.inf, 23.0), (23.0, 25.0), (25.0, np.inf), (-np.inf, 25.0)]:
        sel = ok & (mag >= lo) & (mag < hi)
        row = f"{_range(lo, hi):>14s}"
        for cls, width in (("star", 12), ("galaxy", 14)):
            m = sel & (label == cls)
            n = int(m.sum())
            recall = f"{100 * np.mean(pred[m] == cls):.2f} %" if n else "-"
            row += f" {n:7d} {recall:>{width}s}"
        print(row)


def _range(lo, hi):
    if np.isinf(lo):
        return f"r < {hi:g}"
    if np.isinf(hi):
        return f"r >= {lo:g}"
    return f"{lo:g} <= r < {hi:g}"


# --------------------------------------------------------------------------- classify


def _band_values(specs, option, bands):
    """``--zeropoint``/``--psf`` values: ``BAND=VALUE`` items, or one VALUE for every band."""
    if not specs:
        return None
    values, common = {}, None
    for spec in specs:
        band, sep, text = spec.rpartition("=")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            msg = f"{option} takes BAND=VALUE or one VALUE for every band, got {spec!r}"
            raise UsageError(msg)
        if not sep:
            if common is not None:
                msg = f"{option} got two values for every band ({common:g} and {value:g})"
                raise UsageError(msg)
            common = value
        elif band not in bands:
            msg = f"{option} {spec!r}: no image is given for band {band!r} (bands: {bands})"
            raise UsageError(msg)
        else:
            values[band] = value
    if common is not None:
        values = {band: values.get(band, common) for band in bands}
    return values


def _read_images(specs, *, hdu, unit):
    from .csst_io import read_image

    images = {}
    for spec in specs:
        band, _, path = spec.partition("=")
        if not band or not path:
            msg = f"images must be given as BAND=FILE, got {spec!r}"
            raise UsageError(msg)
        if band in images:
            msg = f"band {band!r} is given twice"
            raise UsageError(msg)
        images[band] = read_image(path, hdu=hdu, unit=unit)
    return images


def _cmd_classify(args):
    from astropy.table import Table

    from .classifier import StarGalaxyClassifier

    output = _check_output(args.output, overwrite=args.overwrite, option="--output")
    _check_table_format(output, "--output")
    catalog = Table.read(args.catalog)
    existing = [name for name in _OUTPUT_COLUMNS if name in catalog.colnames]
    if existing and not args.replace_columns:
        msg = (f"{args.catalog} already has the output column(s) {existing}; pass "
               "--replace-columns to replace them")
        raise UsageError(msg)
    bands = [spec.partition("=")[0] for spec in args.images]
    zeropoints = _band_values(args.zeropoint, "--zeropoint", bands)
    psf = _band_values(args.psf, "--psf", bands)
    images = _read_images(args.images, hdu=args.hdu, unit=args.unit)
    clf = StarGalaxyClassifier(args.model, device=args.device, batch_size=args.batch_size,
                               progress=sys.stderr.isatty(), precision=args.precision)
    result = clf.classify(catalog, images, ra_column=args.ra_column,
                          dec_column=args.dec_column, zeropoints=zeropoints, psf=psf,
                          match_depth=_MATCH_DEPTH[args.match_depth],
                          refine_positions=not args.positions_as_given,
                          overwrite=args.replace_columns)
    _write_atomic(result, output, overwrite=True)
    print(f"wrote {len(result)} rows to {output}")
    return 0


#: ``--match-depth`` choices -> `StarGalaxyClassifier.classify`'s ``match_depth``.
_MATCH_DEPTH = {"auto": None, "on": True, "off": False}


# --------------------------------------------------------------------------- classify-tiles


def _cmd_classify_tiles(args):
    from .survey import classify_tiles

    if args.workers is not None and args.scheduler is not None:
        msg = "give --workers (a local cluster) or --scheduler (an existing one), not both"
        raise UsageError(msg)
    client = None
    if args.scheduler is not None:
        from ._optional import import_optional

        client = import_optional("distributed", "dask", feature="--scheduler").Client(
            args.scheduler)
    detect = {"nsigma": args.detect_nsigma, "min_snr": args.detect_min_snr}
    try:
        summary = classify_tiles(args.manifest, args.output, client=client, model=args.model,
                                 workers=args.workers, device=args.device,
                                 batch_size=args.batch_size, detect=detect,
                                 overwrite=args.overwrite, progress=sys.stderr.isatty())
    finally:
        if client is not None:
            client.close()
    counts = {status: int((summary["status"] == status).sum())
              for status in ("done", "skipped", "failed")}
    print(f"{len(summary)} tiles in {args.output}: {counts['done']} done, "
          f"{counts['skipped']} skipped (output existed), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _add_classify_tiles(sub, common):
    p = sub.add_parser("classify-tiles", help="classify the tiles of a survey manifest on Dask",
                       description="Classify every tile of a manifest (a table with columns "
                                   "tile, catalog and one image path per band; an empty "
                                   "catalog cell detects the sources) on a Dask cluster. "
                                   "Writes OUTDIR/<tile>.fits atomically; rerunning the "
                                   "same command skips finished tiles. Needs the 'dask' "
                                   "extra.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("manifest", help="manifest table file (ECSV, CSV, FITS); relative paths "
                                    "in it are relative to its folder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="output folder, created if missing; one <tile>.fits per tile")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of a local Dask cluster (default: one per CPU)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler, e.g. tcp://host:8786, "
                        "instead of a local cluster (default: a local cluster)")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--device", default="cpu", help="torch device on the workers")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="sources per batch; bounds a worker's memory")
    p.add_argument("--detect-nsigma", type=float, default=3.0,
                   help="detection threshold (noise sigmas on the smoothed stack) for tiles "
                        "without a catalog")
    p.add_argument("--detect-min-snr", type=float, default=5.0,
                   help="keep detections of at least this signal-to-noise (0: all)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo tiles whose output exists (default: skip them)")
    p.set_defaults(func=_cmd_classify_tiles)


# --------------------------------------------------------------------------- the rest


def _cmd_sim_report(args):
    from .simulate import simulate_field
    from .simulate.report import sim_report

    _progress(f"simulating a {args.size}x{args.size} px field (seed {args.seed})...")
    images, truth = simulate_field(seed=args.seed, **_sim_settings(args))
    _progress("measuring...")
    table = sim_report(images, truth, outdir=args.outdir)
    table.pprint(max_lines=-1, max_width=-1)
    return 0


def _user_data(args):
    """``(catalog, images, zeropoints, psf)`` of ``--catalog`` and ``--image``."""
    from astropy.table import Table

    if not args.image:
        msg = "--catalog needs the images: one --image BAND=FILE per band"
        raise UsageError(msg)
    bands = [spec.partition("=")[0] for spec in args.image]
    zeropoints = _band_values(args.zeropoint, "--zeropoint", bands)
    psf = _band_values(args.psf, "--psf", bands)
    images = _read_images(args.image, hdu=args.hdu, unit=args.unit)
    return Table.read(args.catalog), images, zeropoints, psf


def _cmd_make_labelled_dataset(args):
    from .dataset import make_labelled_dataset

    simulated = [name for name in getattr(args, "explicit", ())
                 if name not in ("seed", "stamp_size")]
    if simulated or args.config or args.max_fields is not None:
        given = [f"--{n.replace('_', '-')}" for n in simulated]
        given += ["--config"] * bool(args.config) + ["--max-fields"] * (
            args.max_fields is not None)
        msg = f"{', '.join(given)} set(s) simulated fields; with --catalog leave it out"
        raise UsageError(msg)
    catalog, images, zeropoints, psf = _user_data(args)
    path = make_labelled_dataset(catalog, images, args.output, label_column=args.label_column,
                                 stamp_size=args.stamp_size, zeropoints=zeropoints, psf=psf,
                                 pixel_scale=args.pixel_scale, seed=args.seed,
                                 split_fractions=tuple(args.split_fractions),
                                 split_by=args.split_by, ra_column=args.ra_column,
                                 dec_column=args.dec_column, overwrite=args.overwrite)
    print(path)
    return 0


def _cmd_make_dataset(args):
    from .dataset import make_dataset

    if args.catalog is not None:
        return _cmd_make_labelled_dataset(args)
    # Options given on the command line override --config, which overrides
    # DatasetConfig's defaults.
    given = {name: getattr(args, name) for name in getattr(args, "explicit", ())}
    path = make_dataset(args.output, n_workers=args.workers, progress=True,
                        max_fields=args.max_fields, **{**_json_config(args.config), **given})
    print(path)
    return 0


def _cmd_train(args):
    from .training import TrainConfig, train_release

    config = TrainConfig(model=args.model, epochs=args.epochs, seed=args.seed,
                         **_json_config(args.config))
    path = train_release(args.dataset, args.output, config=config, device=args.device,
                         resume=not args.no_resume, name=args.name, init=args.init,
                         command=" ".join([PROG, *sys.argv[1:]]))
    print(path)
    return 0


def _cmd_evaluate(args):
    from .evaluation import evaluate_catalog, evaluate_model

    if (args.dataset is None) == (args.catalog is None):
        msg = ("give a data set folder, or --catalog with --image BAND=FILE (your labelled "
               "sources), not both")
        raise UsageError(msg)
    if args.catalog is not None and args.baselines:
        msg = "--baselines needs a data set's training fields; leave it out with --catalog"
        raise UsageError(msg)
    outdir = Path(args.outdir)
    created = not outdir.exists()
    try:
        if args.catalog is not None:
            catalog, images, zeropoints, psf = _user_data(args)
            table = evaluate_catalog(args.model, catalog, images, outdir=outdir,
                                     label_column=args.label_column,
                                     mag_column=args.mag_column,
                                     extra_models=args.extra_models, zeropoints=zeropoints,
                                     psf=psf, pixel_scale=args.pixel_scale,
                                     device=args.device, ra_column=args.ra_column,
                                     dec_column=args.dec_column)
        else:
            table = evaluate_model(args.model, args.dataset, outdir=outdir, split=args.split,
                                   device=args.device, baselines=args.baselines,
                                   extra_models=args.extra_models)
    except BaseException:
        if created:  # a failed run leaves no empty output folder behind
            _remove_if_empty(outdir)
        raise
    table.pprint(max_lines=-1, max_width=-1)
    return 0


def _cmd_fine_tune(args):
    from .adapt import fine_tune

    catalog, images, zeropoints, psf = _user_data(args)
    path = fine_tune(catalog, images, output=args.output, label_column=args.label_column,
                     base=args.base or "default", seed=args.seed, epochs=args.epochs,
                     lr=args.lr, batch_size=args.batch_size, folds=args.folds,
                     val_fraction=args.val_fraction,
                     patience=args.patience, zeropoints=zeropoints, psf=psf,
                     pixel_scale=args.pixel_scale, device=args.device, mode=args.mode,
                     name=args.name, ra_column=args.ra_column, dec_column=args.dec_column,
                     progress=sys.stderr.isatty(), reinit_input=args.reinit_input,
                     magnitude_thresholds=args.magnitude_thresholds,
                     feature_scale=args.feature_scale, self_training=args.self_training)
    print(path)
    return 0


def _add_image_options(p):
    """How the images and the catalog's positions are read (classify and your own data)."""
    p.add_argument("--hdu", type=int, default=None,
                   help="FITS HDU of the images (default: the first holding an image)")
    p.add_argument("--unit", default=None,
                   help="image unit, e.g. electron/s (default: the BUNIT header keyword, "
                        "else adu)")
    p.add_argument("--ra-column", default="ra",
                   help="right ascension column, in degrees (with the default, a catalog "
                        "without 'ra' is read from RA, RA_deg, RA_ICRS, RAJ2000, ALPHA_J2000 or "
                        "X_WORLD)")
    p.add_argument("--dec-column", default="dec", help="declination column, in degrees")


def _add_user_data(p, *, required):
    """``--catalog``, ``--image`` and what reading them takes (as ``classify``'s)."""
    p.add_argument("--catalog", required=required, default=None,
                   help="labelled catalog readable by astropy's Table.read, with ra/dec "
                        "columns in degrees and a label column" + (
                            "" if required else " (default: none)"))
    p.add_argument("--image", action="append", metavar="BAND=FILE", default=None,
                   help="one FITS image per band, repeatable, e.g. --image r=field_r.fits "
                        "(default: none)")
    p.add_argument("--label-column", default="label",
                   help="label column: star/galaxy, 0/1 (1 = galaxy) or booleans (True = "
                        "galaxy)")
    p.add_argument("--zeropoint", action="append", metavar="[BAND=]ZP",
                   help="AB zero point of the images: BAND=ZP, repeatable, or one ZP for "
                        "every band (default: the MAGZERO, PHOTZP or ZP header keyword)")
    p.add_argument("--psf", action="append", metavar="[BAND=]FWHM",
                   help="PSF FWHM in arcsec: BAND=FWHM, repeatable, or one for every band "
                        "(default: header keywords, else measured from the field)")
    p.add_argument("--pixel-scale", type=float, default=None,
                   help="arcsec per pixel of the images (default: from their WCS)")
    _add_image_options(p)


def _add_fine_tune(sub, common):
    from .adapt import FINE_TUNE_MODES

    p = sub.add_parser("fine-tune", help="adapt a model to your survey with your labels",
                       description="Adapt a released model to your own images with your "
                                   "own labelled sources: cross-fitted on seeded "
                                   "stratified folds (the temperature fitted on the "
                                   "out-of-fold predictions), then trained on all of "
                                   "them. Writes OUTPUT/<name>.safetensors, usable as "
                                   "--model.",
                       formatter_class=_HelpFormatter, parents=common)
    _add_user_data(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for the checkpoints, train.log, metrics.json and weights")
    p.add_argument("--base", default=None,
                   help="model to start from: a name or .safetensors file (default: the "
                        "registry's default model)")
    p.add_argument("--mode", default="fine-tune", choices=FINE_TUNE_MODES,
                   help="fine-tune all weights from --base, train the same architecture "
                        "from scratch, or only refit temperature and threshold (calibrate)")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs of each training (the maximum with --folds 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-3 to fine-tune, 2e-3 from scratch)")
    p.add_argument("--batch-size", type=int, default=64, help="sources per training batch")
    p.add_argument("--folds", type=int, default=5,
                   help="folds of the cross-fit; 1: one train/validation split with early "
                        "stopping")
    p.add_argument("--val-fraction", type=float, default=0.3,
                   help="with --folds 1: fraction of each class held out for early stopping "
                        "and calibration")
    p.add_argument("--patience", type=int, default=6,
                   help="with --folds 1: epochs without a better validation loss before "
                        "stopping")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument("--name", default=None,
                   help="name of the new model (default: <base name>-ft)")
    p.add_argument("--reinit-input", action="store_true",
                   help="start the input layer from a random initialisation (fine-tune mode; "
                        "default: the base model's weights)")
    p.add_argument("--self-training", action="store_true",
                   help="learn from the catalog's unlabelled rows too (empty or masked "
                        "label): the sources the first model is sure of become "
                        "pseudo-labels for a second training (default: unlabelled rows "
                        "are refused)")
    p.add_argument("--magnitude-thresholds", action="store_true",
                   help="give the bright half of the held-out sources a decision threshold "
                        "of its own (default: one threshold for all magnitudes)")
    p.add_argument("--feature-scale", default="auto", type=_feature_scale,
                   help="angular scale of the catalog features: 'auto' makes the apertures "
                        "as many of your pixels wide as of the base model's (your pixel scale "
                        "over its), a number sets it, 1 keeps the base model's arcsec "
                        "apertures")
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.set_defaults(func=_cmd_fine_tune)


def _feature_scale(value):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        msg = f"expected 'auto' or a number, got {value!r}"
        raise argparse.ArgumentTypeError(msg) from None


class _Explicit(argparse.Action):
    """Store the value (or ``const`` for a flag) and note that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.explicit = (*getattr(namespace, "explicit", ()), self.dest)


# DatasetConfig fields with their own make-dataset option, and their help.
_DATASET_OPTIONS = {
    "n_stars": "simulated stars in all",
    "n_galaxies": "simulated galaxies in all",
    "seed": "data seed; field i gets a seed derived from it",
    "stamp_size": "stamp side in pixels",
    "field_size": "field side in pixels",
}

_SIM_CONFIG_HELP = ("SimConfig settings as a JSON object or JSON file, e.g. "
                    "'{\"psf_scale\": 1.3, \"psf_gradient\": 0.3}'; the shape comes from "
                    "--size (default: none)")
_DESCRIPTION = ("Star-galaxy classification in multi-band survey images: classify a catalog, "
                "try it on a simulated field, manage model weights, simulate, train and "
                "evaluate.")
_MODEL_HELP = "model name or .safetensors file (default: the registry's default model)"
_DEVICE_HELP = "torch device, e.g. cpu or cuda (default: CUDA when available, else cpu)"


def _add_demo(sub, common):
    p = sub.add_parser("demo", help="simulate a small CSST-like field and classify it "
                                    "(offline)",
                       description="Simulate a small CSST-like 7-band field, classify it "
                                   "with a bundled model and print the recall against the "
                                   "simulation's truth. Needs the 'sim' extra (GalSim).",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("--size", type=int, default=1024, help="field side in pixels")
    p.add_argument("--seed", type=int, default=2026, help="simulation seed")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument("-o", "--output", default=None,
                   help="write the classified table with the truth columns (label, mag_r, "
                        "...) to this file, e.g. demo.ecsv (default: no file)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write the simulated field to DIR: field_<band>.fits per band "
                        "and catalog.ecsv with positions and truth (default: not saved)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --output and --save files")
    p.add_argument("--config", default=None, help=_SIM_CONFIG_HELP)
    p.set_defaults(func=_cmd_demo)


def _add_classify(sub, common):
    p = sub.add_parser("classify", help="classify a catalog against FITS images",
                       description="Classify the sources of a catalog against one FITS "
                                   "image per band, each with its own WCS; writes the "
                                   "catalog with p_star, p_galaxy, class and class_flags.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("catalog", help="catalog file readable by astropy's Table.read, with "
                                   "ra/dec columns in degrees")
    p.add_argument("images", nargs="+", metavar="BAND=FILE",
                   help="one FITS image per band, e.g. r=field_r.fits")
    p.add_argument("-o", "--output", required=True,
                   help="output table file, e.g. classified.ecsv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--replace-columns", action="store_true",
                   help="replace p_star, p_galaxy, class and class_flags columns that the "
                        "catalog already has (default: refuse)")
    p.add_argument("--zeropoint", action="append", metavar="[BAND=]ZP",
                   help="AB zero point of the images (the AB magnitude of one image unit): "
                        "BAND=ZP, repeatable, or one ZP for every band (default: the "
                        "MAGZERO, PHOTZP or ZP header keyword)")
    p.add_argument("--psf", action="append", metavar="[BAND=]FWHM",
                   help="PSF FWHM in arcsec for PSF-aware models: BAND=FWHM, repeatable, "
                        "or one FWHM for every band (default: header keywords, else "
                        "measured from the field's point sources)")
    p.add_argument("--match-depth", choices=list(_MATCH_DEPTH), default="auto",
                   help="shift the magnitudes to the model's depth (classify's match_depth): "
                        "auto = on another survey's pixel scale")
    p.add_argument("--positions-as-given", action="store_true",
                   help="cut the stamps at the catalog's positions as they are (default: "
                        "moved to the sources' centroids first, classify's "
                        "refine_positions)")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=1024, help="sources per batch")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="arithmetic of the network: auto = bfloat16 where the CPU or GPU "
                        "runs it natively, else float32; fp32 gives the same numbers on "
                        "every CPU")
    _add_image_options(p)
    p.set_defaults(func=_cmd_classify)


def _add_training(sub, common):
    p = sub.add_parser("sim-report", help="measure the simulator's realism from its images",
                       description="Simulate a field and measure its realism (depths, PSF, "
                                   "counts, stellar locus) from the images alone.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("--outdir", default="sim-report", help="folder for the tables and figures")
    p.add_argument("--size", type=int, default=2048, help="field side in pixels")
    p.add_argument("--seed", type=int, default=1, help="simulation seed")
    p.add_argument("--config", default=None, help=_SIM_CONFIG_HELP)
    p.set_defaults(func=_cmd_sim_report)

    from .dataset import DatasetConfig

    p = sub.add_parser("make-dataset", help="simulate fields into an on-disk training set",
                       description="Simulate fields into an on-disk training set; resumes "
                                   "an interrupted run.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("output", help="output folder")
    for name, text in _DATASET_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, action=_Explicit,
                       default=getattr(DatasetConfig, name), help=text)
    p.add_argument("--detect", nargs=0, action=_Explicit, const=True,
                   default=DatasetConfig.detect,
                   help="detect sources with photutils instead of using truth positions")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    p.add_argument("--max-fields", type=int, default=None,
                   help="build only the first N fields of the set's plan (default: all)")
    p.add_argument("--config", default=None,
                   help="DatasetConfig settings as a JSON object or JSON file, e.g. "
                        "'{\"psf_scale_range\": [0.85, 1.25]}'; the options above "
                        "override it (default: none)")
    _add_user_data(p, required=False)
    p.add_argument("--split-fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2),
                   metavar=("TRAIN", "VAL", "TEST"),
                   help="with --catalog: fractions of train, validation and test sources")
    p.add_argument("--split-by", default="auto", choices=("auto", "field", "source"),
                   help="with --catalog: split by source (stratified by class); 'auto' "
                        "does so for one catalog")
    p.add_argument("--overwrite", action="store_true",
                   help="with --catalog: replace a data set already in the output folder")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("train", help="train a model and export .safetensors weights",
                       description="Train a model on a data set and export .safetensors "
                                   "weights; resumes from the last checkpoint.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("dataset", nargs="+",
                   help="data set folder from make-dataset; several are trained on together")
    p.add_argument("output", help="output folder (checkpoints, weights)")
    p.add_argument("--model", default="rbim-lite", help="architecture name")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument("--config", default=None,
                   help="TrainConfig overrides as a JSON object or JSON file (default: none)")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh instead of resuming from a checkpoint")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="continue training this model (registry name or .safetensors "
                        "file; use a smaller lr, e.g. --config '{\"lr\": 5e-4}') "
                        "(default: random weights)")
    p.add_argument("--name", default=None,
                   help="model name in the weights meta and file name (default: the "
                        "architecture name)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a data set's test fields or "
                                        "on your labelled catalog",
                       description="Evaluate a model (and optional baselines) on a data "
                                   "set's held-out fields, or on your own labelled catalog "
                                   "and images (--catalog, --image): summary and "
                                   "per-magnitude tables and figures in --outdir.",
                       formatter_class=_HelpFormatter, parents=common)
    p.add_argument("dataset", nargs="?", default=None,
                   help="data set folder from make-dataset (or give --catalog)")
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument("--outdir", default="evaluation", help="folder for the tables and figures")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="which held-out fields")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--baselines", action="store_true",
                   help="also run the morphology-cut and catalog-GBT baselines")
    p.add_argument("--extra-models", nargs="*", default=(), metavar="WEIGHTS",
                   help="more weights files to compare, e.g. ablation variants "
                        "(default: none)")
    _add_user_data(p, required=False)
    p.add_argument("--mag-column", default=None,
                   help="with --catalog: magnitude column of the per-magnitude tables "
                        "(default: mag_r if present, else the measured r magnitude)")
    p.set_defaults(func=_cmd_evaluate)


def build_parser():
    """The argument parser of ``astro-starglx``."""
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION,
                                     epilog=f"'{PROG} COMMAND --help' shows a command's options.",
                                     formatter_class=_HelpFormatter,
                                     parents=[_common_options(top=True)])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options(top=False)]
    _add_demo(sub, common)
    _add_classify(sub, common)
    _add_classify_tiles(sub, common)
    _add_weights(sub)
    _add_training(sub, common)
    _add_fine_tune(sub, common)
    return parser


# --------------------------------------------------------------------------- main


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # One line per warning, instead of astropy's logger and Python's
    # warnings.showwarning both printing it.
    print(f"{PROG}: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _logging_to_stderr(verbose):
    """Route the package's log records to stderr at the level ``-v`` asked for."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = log.level, log.propagate
    log.setLevel(level)
    log.addHandler(handler)
    # Not through the root logger as well: records print once.
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _error_line(err):
    text = str(err).strip() or type(err).__name__
    if isinstance(err, (ValueError, TypeError, OSError, ImportError, UsageError)):
        return text
    # Anything else may be a bug: say what it was and how to see more.
    return f"{type(err).__name__}: {text} (--debug shows the traceback)"


def main(argv=None):
    """Run ``astro-starglx``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # astropy replaces warnings.showwarning when it is first imported (its
    # logger then prints AstropyWarnings); import it now, so that ours, set
    # below, is the one in force while the command runs.
    import astropy  # noqa: F401

    with _logging_to_stderr(args.verbose), warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if args.debug:
                raise
            print(f"{PROG} {args.command}: error: {_error_line(err)}", file=sys.stderr)
            return 2 if isinstance(err, UsageError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
