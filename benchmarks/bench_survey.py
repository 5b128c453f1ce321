"""
Survey-scale measurements: tiles on Dask, a full CSST chip, detection vs truth.

Three parts, each printed as a table:

``tiles``
    ``classify_tiles`` on a folder of synthetic 7-band tiles (written as FITS,
    read back memory-mapped), first on 1 then on 2 worker processes of a
    LocalCluster, the one ``classify_tiles`` starts (one thread per worker),
    started and warmed up (model loaded, one tile classified) before the
    clock starts: tiles/s, objects/s and the 1 -> 2 worker scaling, median
    of ``--repeat`` runs taken in turn.
``chip``
    One full CSST chip: 7 bands of 9216 x 9232 px (float32 data and inverse
    variance, 4.8 GB) with ~20,000 sources, written as CSST L1-like
    ``_img_``/``_wht_``/``_flg_`` files, read with ``read_csst_l1``
    (memory-mapped) and classified by ``classify()``: wall time, objects/s
    and peak resident memory (``ru_maxrss``) above the baseline before
    reading (the wall time includes the reading, also shown apart); then the
    network forward alone on the same sources' prepared inputs (at torch's
    default threads and at 1), and the ratios of classify()'s throughput
    (with and without the reading, and of the fastest of ``--repeat``
    calls) to the forward's; the inputs' core-seconds, and the ceilings of
    that ratio as ``bench_classify`` prints them (with today's inputs, and
    with every input step but the pixel gather, the arcsinh and the PSF
    estimate free). ``--precision``
    sets classify()'s (``auto``: bfloat16 where the CPU runs it natively);
    ``--repeat N`` classifies the chip N times and also reports the fastest
    (the first call pays for reading the memory-mapped pixels);
    ``--threads N`` sets torch's threads, classify()'s thread budget (1: a
    Dask worker's).
    ``--workdir DIR --reuse`` keeps the chip for the next run.
``detection``
    ``detect_sources`` on simulated fields (GalSim): completeness (truth
    matched within 0.3 arcsec) per true r magnitude, purity (detections
    matched to a truth) per detected r magnitude, and the time per field.

Run (each part alone, or all)::

    python -m benchmarks.bench_survey tiles [--n-tiles 16 --size 512 --n 200 --repeat 3]
    python -m benchmarks.bench_survey chip [--n 20000 --shape 9232 9216 --workdir DIR --reuse]
        [--precision {auto,bf16,fp32}] [--repeat N] [--threads N]
    python -m benchmarks.bench_survey detection [--n-fields 3 --size 1024]

Not part of the test suite (no timing assertions in tests).
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astro_starglx.csst import CSST_BANDS, CSST_PIXEL_SCALE

ZP = 25.5


def _wcs(shape, k, ra=150.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, 2.0]
    # bands on slightly different grids, as CSST's detectors are
    w.wcs.crpix = [shape[1] / 2 + 0.5 * k, shape[0] / 2 - 0.3 * k]
    w.wcs.cdelt = [-CSST_PIXEL_SCALE / 3600, CSST_PIXEL_SCALE / 3600]
    return w


def write_field(folder, stem, n, shape, *, seed, ra=150.0, l1=True):
    """Gaussian stars and galaxies (numpy, not GalSim) in 7 bands; returns (paths, catalog)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(8, nx - 9, n)
    y = rng.uniform(8, ny - 9, n)
    sig = np.where(rng.random(n) < 0.3, 1.0, rng.uniform(1.2, 4.0, n)).astype(np.float32)
    flux = (10 ** rng.uniform(0, 2.5, n)).astype(np.float32)
    half = 8
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    paths = {}
    catalog = None
    for k, band in enumerate(CSST_BANDS):
        wcs = _wcs(shape, k, ra)
        header = wcs.to_header()
        header["MAGZERO"] = ZP
        header["BUNIT"] = "electron/s"
        data = rng.standard_normal(shape, dtype=np.float32)
        data *= np.float32(0.01)
        bx, by = wcs.world_to_pixel(_wcs(shape, 0, ra).pixel_to_world(x, y))
        ix, iy = np.round(bx).astype(int), np.round(by).astype(int)
        for start in range(0, n, 2000):  # bounded temporary memory
            sl = slice(start, start + 2000)
            dx = (bx[sl] - ix[sl]).astype(np.float32)[:, None, None]
            dy = (by[sl] - iy[sl]).astype(np.float32)[:, None, None]
            s = sig[sl][:, None, None]
            prof = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * s ** 2))
            prof *= (flux[sl] / (2 * np.pi * sig[sl] ** 2))[:, None, None]
            gx = np.clip(ix[sl, None, None] + xx.astype(int), 0, nx - 1)
            gy = np.clip(iy[sl, None, None] + yy.astype(int), 0, ny - 1)
            np.add.at(data, (gy, gx), prof)
        if l1:
            name = f"{stem}_{band}_L1"
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(
                folder / f"{name}_img.fits", overwrite=True)
            del data
            ivar = np.full(shape, 1e4, dtype=np.float32)
            fits.ImageHDU(ivar, header).writeto(folder / f"{name}_wht.fits", overwrite=True)
            del ivar
            fits.ImageHDU(np.zeros(shape, np.uint8), header).writeto(
                folder / f"{name}_flg.fits", overwrite=True)
            paths[band] = str(folder / f"{name}_img.fits")
        else:
            fits.writeto(folder / f"{stem}_{band}.fits", data, header, overwrite=True)
            paths[band] = str(folder / f"{stem}_{band}.fits")
        if catalog is None:
            ra_, dec_ = wcs.pixel_to_world_values(x, y)
            catalog = Table({"id": np.arange(n), "ra": ra_, "dec": dec_})
    return paths, catalog


# --------------------------------------------------------------------------- tiles


def bench_tiles(args):
    from astro_starglx.survey import _client, classify_tiles

    folder = Path(tempfile.mkdtemp(prefix="bench-survey-"))
    try:
        rows = []
        for k in range(args.n_tiles + 1):  # tile 0 warms the workers up
            paths, catalog = write_field(folder, f"tile{k:03d}", args.n, (args.size, args.size),
                                         seed=k, ra=150.0 + 0.05 * k, l1=False)
            catalog.write(folder / f"tile{k:03d}.ecsv")
            rows.append({"tile": f"tile{k:03d}", "catalog": f"tile{k:03d}.ecsv", **paths})
        manifest = Table(rows=rows[1:])
        warm_paths = {band: rows[0][band] for band in CSST_BANDS}  # tile 0
        manifest.write(folder / "manifest.ecsv")
        # the tiles' pages written to disk now, not by the kernel during the first timing
        os.sync()
        walls = {1: [], 2: []}
        n_obj = 0
        for run in range(args.repeat):  # 1, 2, 1, 2, ...: drifts of the machine hit both
            for n_workers in (1, 2):
                # the cluster classify_tiles starts itself (its workers' environment too)
                with _client(None, n_workers) as client, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # Every worker loads the model and classifies the warm-up tile
                    # first (on one worker only, the other's first tile took 2.7 s,
                    # not 1.1).
                    client.run(_warm_up, args.model, str(folder / "tile000.ecsv"),
                               warm_paths)
                    start = time.perf_counter()
                    summary = classify_tiles(folder / "manifest.ecsv",
                                             folder / f"out{n_workers}-{run}",
                                             client=client, model=args.model, progress=False)
                    walls[n_workers].append(time.perf_counter() - start)
                assert (summary["status"] == "done").all(), summary
                n_obj = int(summary["n_sources"].sum())
        results = []
        for n_workers, runs in walls.items():
            wall = float(np.median(runs))
            results.append((n_workers, wall, args.n_tiles / wall, n_obj / wall,
                            " ".join(f"{w:.2f}" for w in runs)))
        table = Table(rows=results, names=("workers", "wall_s", "tiles_per_s", "objects_per_s",
                                           "runs_s"))
        table["scaling"] = table["tiles_per_s"] / table["tiles_per_s"][0]
        for name in ("wall_s", "tiles_per_s", "objects_per_s", "scaling"):
            table[name].format = ".3g"
        print(f"median of {args.repeat} runs (1 and 2 workers in turn)")
        print(f"{args.n_tiles} tiles of 7 x {args.size}^2 px with {args.n} sources each, "
              f"model {args.model or 'default'}")
        table.pprint(max_width=-1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _warm_up(model, catalog, paths):
    """On a worker: load the model (kept for its tiles) and classify one tile."""
    from astro_starglx.survey import _classifier, _read_image

    clf = _classifier(model, "cpu", 1024, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.classify(Table.read(catalog), {band: _read_image(path) for band, path in paths.items()})


# --------------------------------------------------------------------------- chip


def _rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench_chip(args):
    from astro_starglx import StarGalaxyClassifier
    from astro_starglx.csst_io import read_csst_l1

    folder = Path(args.workdir or tempfile.mkdtemp(prefix="bench-chip-"))
    folder.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    saved = folder / f"catalog_{args.n}_{shape[0]}x{shape[1]}.ecsv"
    try:
        t0 = time.perf_counter()
        if args.reuse and saved.exists():  # the same chip, written by an earlier run
            catalog = Table.read(saved)
            paths = {band: str(folder / f"CSST_MSC_chip_{band}_L1_img.fits")
                     for band in CSST_BANDS}
            print(f"reusing the chip in {folder}")
        else:
            paths, catalog = write_field(folder, "CSST_MSC_chip", args.n, shape, seed=1)
            catalog.write(saved, overwrite=True)
            print(f"wrote the chip ({len(paths)} bands of {shape[0]} x {shape[1]} px, "
                  f"{args.n} sources) in {time.perf_counter() - t0:.1f} s")
        if args.threads is not None:  # classify()'s thread budget, e.g. 1 as in a Dask worker
            import torch

            torch.set_num_threads(args.threads)
        clf = StarGalaxyClassifier(args.model, device="cpu", precision=args.precision)
        clf.loaded  # noqa: B018  (model load is not part of the chip time)
        base = _rss_gb()
        t0 = time.perf_counter()
        images = {band: read_csst_l1(path) for band, path in paths.items()}
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = clf.classify(catalog, images)
        wall = time.perf_counter() - t0
        read, classify = t1 - t0, time.perf_counter() - t1
        peak = _rss_gb() - base  # before the forward-only pass below
        again = []
        for _ in range(args.repeat - 1):
            t2 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.classify(catalog, images)
            again.append(time.perf_counter() - t2)
        print(f"precision {result.meta['astro_starglx']['precision']}; classify() "
              f"{classify:.2f} s, then {', '.join(f'{t:.2f}' for t in again) or '-'} s")
        pixels_gb = sum(im.data.nbytes + im.uncertainty.array.nbytes
                        for im in images.values()) / 1024**3
        forward, inputs = _forward_and_inputs(
            clf, catalog, images, sorted({torch_threads_default(), 1}, reverse=True))
        rows = [(shape[0], shape[1], len(result), round(wall, 2), round(len(result) / wall),
                 round(read, 2), round(classify, 2), round(peak, 2), round(pixels_gb, 2))]
        Table(rows=rows, names=("ny", "nx", "sources", "wall_s", "objects_per_s", "read_s",
                                "classify_s", "peak_rss_above_base_GiB", "pixels_and_ivar_GiB")
              ).pprint(max_width=-1)
        # The network alone on the same sources' prepared inputs (cutouts,
        # features and normalisation done beforehand, not timed): the ceiling
        # of classify()'s throughput.
        warm = min([classify, *again])
        Table(rows=[(threads, round(seconds, 2), round(len(result) / seconds),
                     round(seconds / classify, 3), round(seconds / warm, 3),
                     round(seconds / wall, 3))
                    for threads, seconds in forward.items()],
              names=("torch_threads", "forward_only_s", "forward_objects_per_s",
                     "classify_over_forward", "fastest_classify_over_forward",
                     "read_and_classify_over_forward")
              ).pprint(max_width=-1)
        print("inputs (core-s, one thread): "
              + ", ".join(f"{k} {v:.2f}" for k, v in inputs.items()))
        if len(forward) > 1:
            _ceilings(forward, inputs).pprint(max_width=-1)
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


def torch_threads_default():
    import torch

    return torch.get_num_threads()


def _forward_and_inputs(clf, catalog, images, thread_counts):
    """
    Seconds of the network forwards alone over all of ``catalog``, batch by
    batch, at each of ``thread_counts`` torch threads; and the core-seconds
    of the inputs (one thread): ``psf``, ``extract`` (cutouts + features),
    ``prepare`` (normalisation + pose), and of the floor's two per-pixel
    steps, ``gather`` (data and uncertainty stamps) and ``arcsinh``.
    """
    import torch

    from astro_starglx.inference import torch_threads
    from astro_starglx.inputs import extract_inputs, pixel_positions
    from astro_starglx.psf import resolve_psf
    from benchmarks.bench_classify import gather_stamps, scaled_arcsinh

    meta, predict = clf.meta, clf._predictor()
    x, y = pixel_positions(catalog, images, ra_column="ra", dec_column="dec",
                           coord_column=None, x_column="x", y_column="y", shared_grid=False)
    inputs = dict.fromkeys(("psf", "extract", "prepare", "gather", "arcsinh"), 0.0)
    t0 = time.perf_counter()
    psf = (resolve_psf(images, {b: (x[b], y[b]) for b in images}, pixel_scale=meta.pixel_scale,
                       nominal_fwhm=meta.psf["nominal_fwhm"]) if meta.psf is not None else None)
    inputs["psf"] = time.perf_counter() - t0
    prepared = []
    for start in range(0, len(catalog), clf.batch_size):
        sl = slice(start, start + clf.batch_size)
        xb, yb = {b: v[sl] for b, v in x.items()}, {b: v[sl] for b, v in y.items()}
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = extract_inputs(images, xb, yb, bands=meta.bands, size=meta.stamp_size,
                                   pixel_scale=meta.pixel_scale,
                                   feature_names=meta.feature_names, psf=psf)
        t1 = time.perf_counter()
        prepared.append(predict.prepare(batch.stamps, batch.noise, batch.features))
        t2 = time.perf_counter()
        gather_stamps(images, xb, yb, bands=meta.bands, size=meta.stamp_size)
        t3 = time.perf_counter()
        scaled_arcsinh(batch)
        t4 = time.perf_counter()
        for key, seconds in zip(("extract", "prepare", "gather", "arcsinh"),
                                np.diff([t0, t1, t2, t3, t4])):
            inputs[key] += seconds
    before = torch.get_num_threads()
    forward = {}
    for threads in thread_counts:  # at most torch's default, which is restored after each
        with torch_threads(reserve=before - threads):
            t0 = time.perf_counter()
            for p in prepared:
                predict.proba(*p)
            forward[threads] = time.perf_counter() - t0
    return forward, inputs


def _ceilings(forward, inputs):
    """
    The ceilings of classify / forward on ``P`` threads (see
    ``bench_classify``): with today's inputs, and with every input step but
    the floor (gather, arcsinh, PSF) free; and the input core-seconds that
    0.9 would need.
    """
    from benchmarks.bench_classify import ceilings

    p = max(forward)
    c, c1 = forward[p], forward[1]
    total = inputs["psf"] + inputs["extract"] + inputs["prepare"]
    floor = inputs["psf"] + inputs["gather"] + inputs["arcsinh"]
    ceiling, ceiling_floor, needed = ceilings(c, c1, total, floor, p)
    rows = [(p, round(c, 2), round(c1, 2), round(total, 2), round(floor, 2),
             round(ceiling, 3), round(ceiling_floor, 3), round(needed, 2))]
    return Table(rows=rows, names=("threads", "forward_s", "forward_1_thread_s",
                                   "inputs_core_s", "floor_core_s", "ceiling",
                                   "ceiling_floor_only", "inputs_for_0.9_core_s"))


# --------------------------------------------------------------------------- detection


def bench_detection(args):
    from astropy.coordinates import SkyCoord

    from astro_starglx.detection import detect_sources
    from astro_starglx.simulate import simulate_field

    bins = np.arange(18.0, 27.01, 1.0)
    n_true = np.zeros(len(bins) - 1)
    n_found = np.zeros(len(bins) - 1)
    n_det = np.zeros(len(bins) - 1)
    n_real = np.zeros(len(bins) - 1)
    seconds = []
    for seed in range(args.n_fields):
        images, truth = simulate_field(shape=(args.size, args.size), wcs_jitter=0.3, seed=seed)
        t0 = time.perf_counter()
        found = detect_sources(images)
        seconds.append(time.perf_counter() - t0)
        t = SkyCoord(truth["ra"], truth["dec"], unit="deg")
        d = SkyCoord(found["ra"], found["dec"], unit="deg")
        _, sep_t, _ = t.match_to_catalog_sky(d)
        _, sep_d, _ = d.match_to_catalog_sky(t)
        mag_t = np.asarray(truth["mag_r"])
        with np.errstate(invalid="ignore", divide="ignore"):
            mag_d = images["r"].meta["MAGZERO"] - 2.5 * np.log10(np.asarray(found["flux"]))
        n_true += np.histogram(mag_t, bins)[0]
        n_found += np.histogram(mag_t[sep_t.arcsec < 0.3], bins)[0]
        n_det += np.histogram(mag_d, bins)[0]
        n_real += np.histogram(mag_d[sep_d.arcsec < 0.3], bins)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        table = Table({"r_lo": bins[:-1], "r_hi": bins[1:], "n_true": n_true.astype(int),
                       "completeness": n_found / n_true, "n_detected": n_det.astype(int),
                       "purity": n_real / n_det})
    table["completeness"].format = table["purity"].format = ".3f"
    print(f"detect_sources on {args.n_fields} simulated {args.size}^2 7-band fields "
          f"(wcs_jitter 0.3 px): {np.mean(seconds):.2f} s per field")
    table.pprint(max_width=-1, max_lines=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("tiles")
    p.add_argument("--n-tiles", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--model", default=None)
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("chip")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--shape", type=int, nargs=2, default=(9232, 9216))
    p.add_argument("--model", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the chip written in --workdir by an earlier run")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("detection")
    p.add_argument("--n-fields", type=int, default=3)
    p.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    {"tiles": bench_tiles, "chip": bench_chip, "detection": bench_detection}[args.part](args)


if __name__ == "__main__":
    main()
