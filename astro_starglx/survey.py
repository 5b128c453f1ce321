"""
Classify a survey, tile by tile, on Dask.

A survey is a *manifest*: a table (any format astropy reads: ECSV, CSV,
FITS, ...) with one row per tile:

===========  ==============================================================
column       content
===========  ==============================================================
``tile``     unique tile name; the output is ``OUTDIR/<tile>.fits``
``catalog``  path of a table with ``ra``/``dec`` (degrees); empty to detect
             the sources with `astro_starglx.detection.detect_sources`
``<band>``   one column per band, named after it (``NUV``, ``u``, ``g``,
             ...): the path of its FITS image, a plain image or a CSST L1 ``_img_`` file
             whose ``_wht_`` and ``_flg_`` files lie beside it
             (`astro_starglx.csst_io.read_csst_l1`); empty if the tile lacks
             that band (for models that allow missing bands)
===========  ==============================================================

Relative paths are relative to the manifest's folder. Other columns are
ignored.

`classify_tiles` runs one Dask task per tile on a `distributed.Client`
(a `~distributed.LocalCluster` it starts itself, or yours: a cluster of
``dask-jobqueue``, a scheduler address). Each tile's result is written
atomically (a temporary file in the output folder, then `os.replace`), so a
file ``<tile>.fits`` exists only when it is complete; a rerun of the same
call skips the tiles whose output exists and does the rest. A worker that
dies mid-tile (killed, out of memory, preempted) loses nothing: the
scheduler reruns its tiles elsewhere, and a tile run twice writes the same
file once. Each worker process loads the model once and keeps it for all
its tiles; images are memory-mapped and sources are classified in batches,
so a worker's memory is the pixels its tile touches plus a constant.
"""

import contextlib
import glob
import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

__all__ = ["read_manifest", "classify_tiles", "SurveyWarning", "WORKER_ENVIRON"]

log = logging.getLogger(__name__)

#: Columns of the summary table returned by `classify_tiles`.
SUMMARY_COLUMNS = ("tile", "status", "n_sources", "seconds", "output", "worker", "message")

_RESERVED = ("tile", "catalog")

#: Added to the environment Dask gives its worker processes
#: (``distributed.nanny.pre-spawn-environ``) on the cluster `classify_tiles`
#: starts; the survey page of the docs shows the same for your own cluster.
#: Dask sets ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap
#: threshold at 128 KiB: every array above it (cutouts, stamps, the noise
#: medians) is then a fresh mapping whose pages fault in again. One 7 x
#: 2048^2 tile of 2,000 sources on one thread took 1.9 s so, 1.0 s without
#: it, and 1.0 s with it plus ``MALLOC_MMAP_THRESHOLD_`` at 32 MiB (glibc's
#: largest), which keeps Dask's trimming of freed memory.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024}


class SurveyWarning(AstropyUserWarning):
    """Summary of the tiles that failed or warned in one `classify_tiles` call."""


# --------------------------------------------------------------------------- manifest


def _cell(value):
    """A manifest cell as a str; masked, None and blanks are ''."""
    if value is None or value is np.ma.masked:
        return ""
    return str(value).strip()


def _check_tile_name(name, row):
    if not name:
        msg = f"manifest row {row}: the tile column is empty; give every tile a unique name"
        raise ValueError(msg)
    if name in (".", "..") or any(ch in name for ch in "/\\\0") or name.startswith("."):
        msg = (f"manifest row {row}: tile {name!r} cannot be a file name (it holds a path "
               "separator or starts with '.'); use letters, digits, '-' and '_'")
        raise ValueError(msg)


def read_manifest(manifest, *, bands, check_files=True):
    """
    Read and check a survey manifest.

    Parameters
    ----------
    manifest : path-like or `~astropy.table.Table`
        The manifest (see `astro_starglx.survey`); a file is read with
        `astropy.table.Table.read`, and relative paths in it are taken
        relative to its folder (to the working folder for a Table).
    bands : sequence of str
        The bands the model reads: the manifest needs a column for each.
    check_files : bool, optional
        Check that every named file exists (and, for CSST L1 images, their
        ``_wht_`` and ``_flg_`` files).

    Returns
    -------
    tiles : list of dict
        One dict per tile, in manifest order: ``tile`` (str), ``catalog``
        (absolute path str, or ``""`` to detect), ``images`` (``{band:
        absolute path str}`` of the bands given).

    Raises
    ------
    TypeError
        If ``manifest`` is neither a path nor a Table.
    FileNotFoundError
        If the manifest file, or a file it names, does not exist; the
        message names the tile and the column.
    ValueError
        If the ``tile`` or ``catalog`` column or a band column is missing,
        a tile name is empty, repeated or not a valid file name, or a tile
        has no image at all.
    """
    from astropy.table import Table

    base = Path.cwd()
    if isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest)
        if not path.is_file():
            msg = f"manifest {str(path)!r} does not exist"
            raise FileNotFoundError(msg)
        base = path.resolve().parent
        table = Table.read(path)
    elif isinstance(manifest, Table):
        table = manifest
    else:
        msg = (f"manifest must be a path to a table file or an astropy Table, got "
               f"{type(manifest).__name__}")
        raise TypeError(msg)
    bands = [str(band) for band in bands]
    missing = [name for name in (*_RESERVED, *bands) if name not in table.colnames]
    if missing:
        msg = (f"manifest is missing column(s) {missing}; it needs 'tile', 'catalog' (empty "
               f"cells to detect sources) and one image column per band of the model "
               f"{bands} (empty cells for a band a tile lacks); it has {table.colnames}")
        raise ValueError(msg)

    def resolve(text):
        return str(Path(text) if Path(text).is_absolute() else base / text)

    tiles, seen = [], {}
    for row, record in enumerate(table):
        name = _cell(record["tile"])
        _check_tile_name(name, row)
        if name in seen:
            msg = (f"manifest rows {seen[name]} and {row}: tile {name!r} appears twice; tile "
                   "names must be unique (they name the output files)")
            raise ValueError(msg)
        seen[name] = row
        catalog = _cell(record["catalog"])
        images = {band: resolve(_cell(record[band])) for band in bands if _cell(record[band])}
        if not images:
            msg = f"tile {name!r} (row {row}) has no image in any band column {bands}"
            raise ValueError(msg)
        tile = {"tile": name, "catalog": resolve(catalog) if catalog else "", "images": images}
        if check_files:
            _check_tile_files(tile)
        tiles.append(tile)
    return tiles


def _check_tile_files(tile):
    from .csst_io import csst_l1_paths

    named = [("catalog", tile["catalog"])] if tile["catalog"] else []
    for band, path in tile["images"].items():
        named.append((band, path))
        if _is_l1(path):
            paths = csst_l1_paths(path)
            named += [(f"{band} (wht)", str(paths["wht"])), (f"{band} (flg)", str(paths["flg"]))]
    for column, path in named:
        if not Path(path).is_file():
            msg = (f"tile {tile['tile']!r}, column {column!r}: file {path} does not exist; fix "
                   "the path in the manifest (relative paths are relative to the manifest's "
                   "folder)")
            raise FileNotFoundError(msg)


def _is_l1(path):
    from .csst_io import _TAG

    return bool(_TAG.search(Path(path).name))


# --------------------------------------------------------------------------- the worker side

_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _classifier(model, device, batch_size, threshold):
    """The worker process's classifier for these settings, built (and loaded) once."""
    from .classifier import StarGalaxyClassifier

    key = (str(model), device, batch_size, threshold)
    with _MODELS_LOCK:
        clf = _MODELS.get(key)
        if clf is None:
            clf = StarGalaxyClassifier(model, device=device, batch_size=batch_size,
                                       threshold=threshold)
            clf.loaded  # load now, once, under the lock  # noqa: B018
            _MODELS[key] = clf
            log.info("worker %d loaded model %s", os.getpid(), clf.loaded.name)
    return clf


def _read_image(path):
    """A memory-mapped CCDData: CSST L1 (with wht and flg, which must exist) or plain FITS."""
    from .csst_io import read_csst_l1, read_image

    if _is_l1(path):
        return read_csst_l1(path)
    return read_image(path)


def _write_table(table, path):
    """Write ``table`` to a temporary file beside ``path``, then move it onto ``path``."""
    path = Path(path)
    # The temporary name starts with "." and ends in ".tmp": never taken for an output.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        table.write(tmp, format="fits")
        with open(tmp, "rb") as fh:  # on disk before the rename makes it count as done
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    # Temporary files of earlier attempts at this tile that were killed mid-write.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _fits_meta(meta, tile):
    """The table's meta as FITS cards: dicts and lists (provenance) as JSON strings."""
    names = {"astro_starglx": "STARGLX", "detection": "DETECT"}
    out = {"TILE": tile}
    for key, value in meta.items():
        if isinstance(value, (dict, list, tuple)):
            out[names.get(key, key.upper()[:8])] = json.dumps(value, default=str)
        else:
            out[key] = value
    return out


def _run_tile(tile, settings):
    """Classify one tile and write its output; never raises (failures are reported)."""
    from astropy.table import Table

    out = Path(settings["output_dir"]) / f"{tile['tile']}.fits"
    start = time.perf_counter()
    report = {"tile": tile["tile"], "status": "done", "n_sources": 0, "seconds": 0.0,
              "output": str(out), "worker": f"{socket.gethostname()}:{os.getpid()}",
              "message": ""}
    if out.exists() and not settings["overwrite"]:
        # Written by an earlier attempt at this task (its worker died after the
        # rename, before reporting): done, not redone.
        from astropy.io import fits

        report["n_sources"] = int(fits.getval(out, "NAXIS2", ext=1))
        report["message"] = "written by an earlier attempt of this run"
        return report
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = {band: _read_image(path) for band, path in tile["images"].items()}
            columns = settings["ra_column"], settings["dec_column"]
            if tile["catalog"]:
                catalog = Table.read(tile["catalog"])
            else:
                from .detection import detect_sources

                catalog = detect_sources(images, **settings["detect"])
                columns = "ra", "dec"
            clf = _classifier(settings["model"], settings["device"], settings["batch_size"],
                              settings["threshold"])
            result = clf.classify(catalog, images, zeropoints=settings["zeropoints"],
                                  psf=settings["psf"], ra_column=columns[0],
                                  dec_column=columns[1])
            result.meta = _fits_meta(result.meta, tile["tile"])
            _write_table(result, out)
        report["n_sources"] = len(result)
        report["message"] = " | ".join(sorted({str(w.message) for w in caught}))
    except Exception as err:  # a bad tile must not stop the survey: reported, not raised
        report["status"] = "failed"
        report["message"] = f"{type(err).__name__}: {err}"
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


# --------------------------------------------------------------------------- the client side


def _model_bands(model):
    from .weights import _resolve_source, fetch_weights, read_meta

    weights, path = _resolve_source(model)
    if weights is not None:
        path = fetch_weights(weights)
    if not Path(path).is_file():
        msg = f"model file {path} does not exist (model={model!r})"
        raise FileNotFoundError(msg)
    return list(read_meta(path).bands)


@contextlib.contextmanager
def _client(client, workers):
    """The given client, or a LocalCluster of ``workers`` one-thread processes, closed on exit."""
    if client is not None:
        yield client
        return
    from ._optional import import_optional

    distributed = import_optional("distributed", "dask", feature="classify_tiles")
    import dask

    n_workers = workers if workers is not None else max(1, (os.cpu_count() or 1))
    key = "distributed.nanny.pre-spawn-environ"
    environ = {**WORKER_ENVIRON, **dask.config.get(key, {})}  # yours first
    with warnings.catch_warnings(), dask.config.set({key: environ}):
        # "Port 8787 is already in use": another cluster's dashboard; a free one is taken.
        warnings.filterwarnings("ignore", message=".*[Pp]ort.*already in use.*")
        cluster = distributed.LocalCluster(n_workers=n_workers,
                                           threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:8787")
    try:
        with distributed.Client(cluster) as own:
            yield own
    finally:
        cluster.close()


def _check_int(name, value, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        msg = f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def classify_tiles(manifest, output_dir, *, client=None, model=None, workers=None,
                   device="cpu", batch_size=1024, threshold=None,
                   zeropoints=None, psf=None, detect=None, ra_column="ra", dec_column="dec",
                   overwrite=False, progress=True):
    """
    Classify every tile of a survey manifest on Dask, one output file per tile.

    Parameters
    ----------
    manifest : path-like or `~astropy.table.Table`
        The tiles (see `astro_starglx.survey` and `read_manifest`).
    output_dir : path-like
        Folder for ``<tile>.fits`` (created if missing). Each file is the
        tile's catalog with ``p_star``, ``p_galaxy``, ``class`` and
        ``class_flags`` (see `~astro_starglx.StarGalaxyClassifier.classify`),
        written atomically: it exists only when complete.
    client : `distributed.Client` or None, optional
        Where to run: ``None`` starts a `~distributed.LocalCluster` of
        ``workers`` processes (closed at the end); pass a client to use your
        own cluster (e.g. ``dask_jobqueue.SLURMCluster``, see the survey
        page of the docs).
    model : None, str or path-like, optional
        Model name or ``.safetensors`` file, as for
        `~astro_starglx.StarGalaxyClassifier`; loaded once per worker.
    workers : int or None, optional
        Worker processes of the local cluster (one thread each: a tile's
        warnings are recorded per process, and Dask limits each worker's
        torch to one thread, which ``classify()`` keeps to); ``None`` for
        one per CPU. The workers start with `WORKER_ENVIRON` added to Dask's
        environment. Ignored with ``client``; give your own workers one
        thread each and that environment too (the survey page of the docs
        shows how; a warning says when they lack it).
    device : str or None, optional
        Torch device on the workers; ``None`` picks CUDA when available.
    batch_size : int, optional
        Sources per batch: a worker's memory is bounded by it, whatever the
        tile's number of sources.
    threshold : float or None, optional
        ``p_galaxy`` threshold; ``None`` for the model's.
    zeropoints, psf : dict or None, optional
        Passed to `~astro_starglx.StarGalaxyClassifier.classify` for every
        tile; ``None`` reads the headers (``MAGZERO``, ...).
    detect : dict or None, optional
        Options of `~astro_starglx.detection.detect_sources` for tiles whose
        ``catalog`` cell is empty.
    ra_column, dec_column : str, optional
        Position columns of the tile catalogs (detections always have
        ``ra``/``dec``).
    overwrite : bool, optional
        Redo tiles whose output exists (default: skip them, which resumes an
        interrupted run).
    progress : bool, optional
        Show a progress bar over tiles (on stderr).

    Returns
    -------
    summary : `~astropy.table.Table`
        One row per tile in manifest order: ``tile``, ``status``
        (``"done"``, ``"skipped"`` (output existed) or ``"failed"``),
        ``n_sources`` (rows written; -1 for a skipped tile), ``seconds``,
        ``output``, ``worker`` (host:pid) and ``message`` (the error of a
        failed tile, or the warnings of a done one). ``meta`` holds the
        dashboard link and the wall time.

    Raises
    ------
    TypeError, ValueError, FileNotFoundError
        For a bad manifest (see `read_manifest`) or setting, before any
        work starts.
    ImportError
        If ``dask[distributed]`` is not installed.

    Warns
    -----
    SurveyWarning
        Once, if some tiles failed (listing them) or warned; once, before
        the tiles, if the workers of ``client`` run with Dask's
        ``MALLOC_TRIM_THRESHOLD_`` but without `WORKER_ENVIRON` (glibc only).

    Examples
    --------
    >>> from astro_starglx.survey import classify_tiles
    >>> summary = classify_tiles("manifest.ecsv", "classified/", workers=2)  # doctest: +SKIP
    >>> summary.meta["dashboard"]  # doctest: +SKIP
    'http://127.0.0.1:8787/status'
    """
    from astropy.table import Table
    from tqdm.auto import tqdm

    from ._optional import import_optional

    distributed = import_optional("distributed", "dask", feature="classify_tiles")
    batch_size = _check_int("batch_size", batch_size)
    workers = _check_int("workers", workers, allow_none=True)
    if detect is not None and not isinstance(detect, dict):
        msg = f"detect must be a dict of detect_sources options or None, got {detect!r}"
        raise TypeError(msg)
    if client is not None and not isinstance(client, distributed.Client):
        msg = (f"client must be a distributed.Client or None, got {type(client).__name__}; "
               "pass Client(cluster) or None for a local cluster")
        raise TypeError(msg)
    tiles = read_manifest(manifest, bands=_model_bands(model))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {"output_dir": str(output_dir.resolve()), "overwrite": bool(overwrite),
                "model": str(model) if isinstance(model, os.PathLike) else model,
                "device": device, "batch_size": batch_size, "threshold": threshold,
                "zeropoints": zeropoints, "psf": psf, "detect": dict(detect or {}),
                "ra_column": ra_column, "dec_column": dec_column}
    reports = {}
    todo = []
    for tile in tiles:
        if not overwrite and (output_dir / f"{tile['tile']}.fits").exists():
            reports[tile["tile"]] = {"tile": tile["tile"], "status": "skipped",
                                     "n_sources": -1, "seconds": 0.0,
                                     "output": str(output_dir / f"{tile['tile']}.fits"),
                                     "worker": "", "message": "output exists"}
        else:
            todo.append(tile)
    log.info("%d tiles: %d to do, %d already done", len(tiles), len(todo), len(reports))
    start = time.perf_counter()
    dashboard = ""
    if todo:
        with _client(client, workers) as dask_client:
            if client is not None:
                _check_worker_environ(dask_client)
            dashboard = dask_client.dashboard_link or ""
            log.info("Dask dashboard: %s", dashboard)
            if progress:
                tqdm.write(f"astro_starglx: Dask dashboard at {dashboard}")
            # pure=False: a rerun after a failure is a new task, never a cached result.
            futures = {dask_client.submit(_run_tile, tile, settings, pure=False,
                                          key=f"classify-tile-{tile['tile']}-{os.getpid()}"
                                              f"-{time.monotonic_ns()}"): tile["tile"]
                       for tile in todo}
            bar = tqdm(total=len(futures), disable=not progress, unit="tile",
                       desc="astro_starglx tiles")
            with bar:
                for future in distributed.as_completed(futures):
                    try:
                        report = future.result()
                    except Exception as err:  # e.g. KilledWorker: the tile killed 3 workers
                        name = futures[future]
                        report = {"tile": name, "status": "failed", "n_sources": 0,
                                  "seconds": 0.0, "worker": "",
                                  "output": str(output_dir / f"{name}.fits"),
                                  "message": f"{type(err).__name__}: {err}"}
                    reports[report["tile"]] = report
                    bar.update(1)
    elapsed = time.perf_counter() - start
    rows = [reports[tile["tile"]] for tile in tiles]
    summary = Table(rows=[[row[name] for name in SUMMARY_COLUMNS] for row in rows],
                    names=SUMMARY_COLUMNS,
                    dtype=(str, str, np.int64, float, str, str, str)) if rows else \
        Table(names=SUMMARY_COLUMNS, dtype=(str, str, np.int64, float, str, str, str))
    summary.meta.update({"dashboard": dashboard, "wall_seconds": round(elapsed, 3),
                         "output_dir": str(output_dir)})
    _warn_summary(summary)
    return summary


def _allocator_environ():
    """
    On a worker: the glibc allocator variables its process started with
    (``/proc/self/environ``: glibc reads them once, at start), or None off
    glibc, where they mean nothing.
    """
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        with open("/proc/self/environ", "rb") as file:
            pairs = (item.partition(b"=") for item in file.read().split(b"\0") if item)
            start = {key.decode(errors="replace"): value.decode(errors="replace")
                     for key, _, value in pairs}
    except OSError:
        return None
    return {name: start.get(name) for name in ("MALLOC_TRIM_THRESHOLD_", *WORKER_ENVIRON)}


def _check_worker_environ(client):
    """Warn once if the workers of ``client`` run with Dask's slow allocator settings."""
    environs = client.run(_allocator_environ)
    slow = [address for address, env in environs.items()
            if env and env["MALLOC_TRIM_THRESHOLD_"] is not None
            and any(env[name] is None for name in WORKER_ENVIRON)]
    if slow:
        settings = ", ".join(f"{name}: {value}" for name, value in WORKER_ENVIRON.items())
        msg = (f"{len(slow)} of {len(environs)} Dask workers run with MALLOC_TRIM_THRESHOLD_ "
               f"(Dask's default) but without {', '.join(WORKER_ENVIRON)}: every large array "
               "is then a fresh memory mapping, and a tile takes about twice as long. Start "
               f"the workers with {{{settings}}} added to the Dask config "
               "distributed.nanny.pre-spawn-environ (the survey page of the docs shows how)")
        warnings.warn(msg, SurveyWarning, stacklevel=3)


def _warn_summary(summary):
    failed = [str(row["tile"]) for row in summary if row["status"] == "failed"]
    warned = [str(row["tile"]) for row in summary
              if row["status"] == "done" and row["message"]]
    parts = []
    if failed:
        first = summary[summary["status"] == "failed"][0]
        parts.append(f"{len(failed)} tile(s) failed: {failed[:10]}"
                     f"{' ...' if len(failed) > 10 else ''} (first: {first['tile']}: "
                     f"{first['message']}); fix them and rerun the same call to do only "
                     "those")
    if warned:
        parts.append(f"{len(warned)} tile(s) had warnings (see the summary's message "
                     "column)")
    if parts:
        warnings.warn("; ".join(parts), SurveyWarning, stacklevel=3)
