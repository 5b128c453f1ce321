"""
Throughput of the inference path on a 4096 x 4096 x 7-band field with 10,000 sources.

Times, on the current machine:

(a) cutouts + features alone (``inputs.extract_inputs`` over all batches),
(b) the full ``StarGalaxyClassifier.classify()`` call,
(c) the network forward alone (the model on the batches' prepared inputs: after
    ``prepare_inputs`` and the canonical pose, timed apart),

and prints objects/s for each and the ratio of (b)'s throughput to (c)'s; (b)
and (c) once per ``--symmetrize`` option (``canonical`` and ``none``: one
forward per stamp; ``flips``: 4; ``d4``: 8).

It also prints the ceiling of that ratio on this machine: the forward on one
thread (c1) is the least core time the network can take, and (a) + the
normalisation + the PSF estimate (single-threaded numpy) the least the
inputs take, so on ``P`` threads no overlap gets (b) below
``(c1 + inputs) / P``, nor below (c): the ratio is at most
``c / max(c, (c1 + inputs) / P)``.

And the ceiling if every input step but three were free: the pixel gather
of the data and uncertainty stamps (``cutouts.extract_cutouts``; bound by
memory latency: ~50 scattered rows per stamp and band; a numba loop of the
same gather took 2-2.7 times as long as numpy's), the arcsinh of the
normalisation (``preprocess._scaled_arcsinh``, 2-3 times as fast as a numba
loop of ``math.asinh``; both in ``benchmarks/numba_inputs.py``) and the PSF
estimate: ``c / max(c, (c1 + floor) / P)``, what no rewrite of the other
steps can pass on this machine. Run::

    python -m benchmarks.bench_classify [--model NAME_OR_FILE] [--n 10000] [--size 4096]
        [--symmetrize canonical none flips d4] [--cpu-workers N] [--forward-chunk N]

``--cpu-workers 1 --forward-chunk 100000`` times the CPU path as it was
before batch workers and forward chunks.

Not part of the test suite (no timing assertions in tests).
"""

import argparse
import time

import numpy as np
import torch
from astropy.nddata import CCDData, InverseVariance
from astropy.table import Table
from astropy.wcs import WCS

from astro_starglx import StarGalaxyClassifier, classifier, inference
from astro_starglx.csst import CSST_BANDS, CSST_PIXEL_SCALE
from astro_starglx.background import image_noise
from astro_starglx.cutouts import extract_cutouts
from astro_starglx.inputs import extract_inputs, pixel_positions
from astro_starglx.preprocess import _scaled_arcsinh
from astro_starglx.psf import resolve_psf


def make_field(n, size, seed=0):
    """Gaussian stars and broader galaxies rendered with numpy (fast, not GalSim)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, size - 1, n)
    y = rng.uniform(0, size - 1, n)
    sig = np.where(rng.random(n) < 0.3, 1.0, rng.uniform(1.2, 4.0, n))
    flux = 10 ** rng.uniform(0, 2.5, n)
    images = {}
    half = 10
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for k, band in enumerate(CSST_BANDS):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [size / 2 + 0.5 * k, size / 2 - 0.3 * k]
        w.wcs.cdelt = [-CSST_PIXEL_SCALE / 3600, CSST_PIXEL_SCALE / 3600]
        data = rng.normal(0, 0.01, (size, size)).astype(np.float32)
        ix, iy = np.round(x).astype(int), np.round(y).astype(int)
        dx, dy = x - ix, y - iy
        prof = np.exp(-((xx[None] - dx[:, None, None]) ** 2 + (yy[None] - dy[:, None, None]) ** 2)
                      / (2 * sig[:, None, None] ** 2))
        prof *= (flux / (2 * np.pi * sig ** 2))[:, None, None]
        gx = np.clip(ix[:, None, None] + xx[None], 0, size - 1)
        gy = np.clip(iy[:, None, None] + yy[None], 0, size - 1)
        np.add.at(data, (gy, gx), prof.astype(np.float32))
        images[band] = CCDData(data, unit="electron/s", wcs=w, meta={"MAGZERO": 25.5},
                               uncertainty=InverseVariance(np.full((size, size), 1e4,
                                                                   np.float32)))
    ref = images["r"].wcs
    coords = ref.pixel_to_world(x, y)
    return Table({"ra": coords.ra.deg, "dec": coords.dec.deg}), images


def best_of(fn, repeat):
    """The least wall time of ``repeat`` calls of ``fn`` (s)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gather_stamps(images, x, y, *, bands, size):
    """The floor's pixel gather: the data and uncertainty stamps of every band."""
    for b in bands:
        for array in (images[b].data, images[b].uncertainty.array):
            extract_cutouts(array, x[b], y[b], size=size)


def scaled_arcsinh(batch):
    """The floor's arcsinh: the normalisation of one `extract_inputs` batch's stamps."""
    with np.errstate(divide="ignore"):
        _scaled_arcsinh(batch.stamps, (1.0 / batch.noise).astype(np.float32))


def ceilings(forward, forward1, inputs, floor, threads):
    """
    What the classify / forward ratio can reach on ``threads`` threads: with
    ``inputs`` core-seconds of input work, with only the ``floor``, and the
    input core-seconds that 0.9 needs (``forward`` on all threads,
    ``forward1`` on one).
    """
    return (forward / max(forward, (forward1 + inputs) / threads),
            forward / max(forward, (forward1 + floor) / threads),
            max(0.0, threads * forward / 0.9 - forward1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--symmetrize", nargs="+", default=["canonical", "none"],
                        help="symmetrize options to time (default: canonical none; also "
                             "flips, d4)")
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=("auto", "bf16", "fp32"), help="precisions to time")
    parser.add_argument("--cpu-workers", type=int, default=None,
                        help="classifier.CPU_BATCH_WORKERS for this run (default: the "
                             "package's; 1 = one input thread, the network in the caller)")
    parser.add_argument("--forward-chunk", type=int, default=None,
                        help="inference.CPU_FORWARD_CHUNK for this run (default: the "
                             "package's; a large number = whole batches)")
    args = parser.parse_args()
    if args.cpu_workers is not None:
        classifier.CPU_BATCH_WORKERS = args.cpu_workers
    if args.forward_chunk is not None:
        inference.CPU_FORWARD_CHUNK = args.forward_chunk

    t0 = time.perf_counter()
    catalog, images = make_field(args.n, args.size)
    print(f"field: {args.size}x{args.size}x{len(images)} bands, {args.n} sources "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    clfs = {(option, precision): StarGalaxyClassifier(args.model, device="cpu",
                                                      batch_size=args.batch_size,
                                                      symmetrize=option, precision=precision)
            for option in args.symmetrize for precision in args.precision}
    clf = next(iter(clfs.values()))
    meta = clf.meta
    print(f"model: {clf.loaded.name} ({sum(p.numel() for p in clf.loaded.network.parameters())}"
          f" parameters), stamp {meta.stamp_size} px, device cpu")
    for c in clfs.values():
        c.classify(catalog[:256], images)  # warm-up

    def best(fn):
        return best_of(fn, args.repeat)

    x, y = pixel_positions(catalog, images, ra_column="ra", dec_column="dec",
                           coord_column=None, x_column="x", y_column="y", shared_grid=False)
    sigma = {b: image_noise(im) for b, im in images.items() if im.uncertainty is None}
    psf, t_psf = None, 0.0
    if meta.psf is not None:  # PSF-aware model: the PSF measured once, as classify() does
        t = time.perf_counter()
        psf = resolve_psf(images, {b: (x[b], y[b]) for b in images},
                          pixel_scale=meta.pixel_scale, nominal_fwhm=meta.psf["nominal_fwhm"])
        t_psf = time.perf_counter() - t
        print(f"PSF estimate (7 bands): {t_psf:.3f} s")
    batches = []

    def extract():
        batches.clear()
        for s in range(0, args.n, args.batch_size):
            sl = slice(s, s + args.batch_size)
            batches.append(extract_inputs(images, {b: v[sl] for b, v in x.items()},
                                          {b: v[sl] for b, v in y.items()},
                                          bands=meta.bands, size=meta.stamp_size,
                                          pixel_scale=meta.pixel_scale, image_sigma=sigma,
                                          feature_names=meta.feature_names, psf=psf))

    t_extract = best(extract)

    def gather():
        for s in range(0, args.n, args.batch_size):
            sl = slice(s, s + args.batch_size)
            gather_stamps(images, {b: v[sl] for b, v in x.items()},
                          {b: v[sl] for b, v in y.items()}, bands=meta.bands,
                          size=meta.stamp_size)

    def arcsinh():
        for b in batches:
            scaled_arcsinh(b)

    t_gather, t_arcsinh = best(gather), best(arcsinh)
    t_floor = t_gather + t_arcsinh + t_psf
    n = args.n
    print(f"(a) cutouts + features : {t_extract:7.3f} s  {n / t_extract:9.0f} objects/s")
    for option, c in clfs.items():
        predict = c._predictor()
        prepared = []

        def prep_only():
            prepared.clear()
            prepared.extend(predict.prepare(b.stamps, b.noise, b.features) for b in batches)

        t_prep = best(prep_only)

        def forward():
            for p in prepared:
                predict.proba(*p)

        t_forward = best(forward)
        threads = torch.get_num_threads()
        with inference.torch_threads(reserve=threads - 1):
            t_forward1 = best(forward)
        t_full = best(lambda: c.classify(catalog, images))
        print(f"symmetrize={option[0]!r}, precision={option[1]!r} "
              f"({'bf16' if predict.bf16 else 'fp32'}):")
        print(f"  (b) full classify()    : {t_full:7.3f} s  {n / t_full:9.0f} objects/s  "
              f"(cutouts + features {100 * t_extract / t_full:.1f} %)")
        print(f"  (c) model forward      : {t_forward:7.3f} s  {n / t_forward:9.0f} objects/s "
              f"(on prepared inputs; normalisation + pose {t_prep:.3f} s more)")
        print(f"  (b) / (c) throughput   : {t_forward / t_full:7.3f}")
        inputs = t_extract + t_prep + t_psf
        ceiling, ceiling_floor, needed = ceilings(t_forward, t_forward1, inputs, t_floor,
                                                  threads)
        print(f"  (c1) forward, 1 thread : {t_forward1:7.3f} s; inputs {inputs:.3f} core-s "
              f"(cutouts + features, normalisation + pose, PSF): (b) / (c) is at most "
              f"{ceiling:.3f} on {threads} thread(s)")
        print(f"  floor of the inputs    : {t_floor:7.3f} core-s (pixel gather {t_gather:.3f}, "
              f"arcsinh {t_arcsinh:.3f}, PSF {t_psf:.3f}): "
              f"with every other input step free, (b) / (c) is at most "
              f"{ceiling_floor:.3f}; 0.9 needs inputs <= {needed:.3f} core-s")


if __name__ == "__main__":
    main()
