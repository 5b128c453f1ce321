"""
Orientation invariance of the bundled models: the gap, the fix, its cost.

A star is a star in any orientation. This script flips, transposes and
rotates by 90 degrees the pixels of simulated CSST-like fields *and* their
WCSs consistently (every source keeps its sky position; `orient_image`),
classifies the same catalog on every orientation and reports, on sources
unflagged in both orientations:

- the invariance gap: max |dp_galaxy| against the original orientation and
  the fraction of sources whose class flips, per ``symmetrize`` option
  (``"none"``, ``"flips"``: the 4 flips, ``"d4"``: the 8 flips and
  rotations of `astro_starglx.inference.SYMMETRIES`, and ``"canonical"``,
  the default: each stamp turned to a pose chosen from its own pixels);
- whether the pipeline before the network is itself equivariant: the
  stamps cut from the oriented images equal the oriented stamps of the
  original (same centring), and the catalog features agree;
- the accuracy: recall of stars and galaxies with r <= 25 against the
  truth, per option, and the log-loss of averaging logits (what
  `~astro_starglx.inference.Predictor` does) versus averaging calibrated
  probabilities.

Throughput per option is measured by ``python -m benchmarks.bench_classify
--symmetrize ...``. Run::

    python -m benchmarks.orientation [--size 2048] [--seeds 1 2 3] [--models rbim-lite rbim-lite-v2]

Simulated fields are cached in ``--cache`` (default
``/tmp/astro_starglx_orientation``) so a rerun skips GalSim.
"""

import argparse
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.nddata import CCDData
from astropy.wcs import WCS

from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning
from astro_starglx.inference import SYMMETRIES, Predictor, _orient, calibrated_proba
from astro_starglx.inputs import extract_inputs, pixel_positions
from astro_starglx.psf import resolve_psf

#: The 8 elements of D4 as (transpose, flip_y, flip_x), applied in that order.
OPERATIONS = {
    "identity": (False, False, False),
    "flip_x": (False, False, True),
    "flip_y": (False, True, False),
    "rot180": (False, True, True),
    "transpose": (True, False, False),
    "rot90": (True, False, True),
    "rot270": (True, True, False),
    "antitranspose": (True, True, True),
}
MODES = ("none", "flips", "d4")


# ------------------------------------------------------------------ geometry


def _pixel_map(shape, transpose, flip_y, flip_x):
    """``(A, b, new_shape)``: old 0-based pixel (x, y) = A @ new (x, y) + b."""
    ny, nx = shape
    a, b = np.eye(2), np.zeros(2)
    if transpose:  # new[i, j] = old[j, i]: x_old = y_new, y_old = x_new
        a = np.array([[0.0, 1.0], [1.0, 0.0]])
        ny, nx = nx, ny
    # flips act on the transposed grid (ny, nx): x_t = nx - 1 - x_new, y_t = ny - 1 - y_new
    f, g = np.eye(2), np.zeros(2)
    if flip_x:
        f[0, 0], g[0] = -1.0, nx - 1.0
    if flip_y:
        f[1, 1], g[1] = -1.0, ny - 1.0
    return a @ f, a @ g + b, (ny, nx)


def orient_array(array, operation):
    """``operation`` (transpose, flip_y, flip_x) on the last two axes of ``array``."""
    return _orient(np.asarray(array), *operation)


def orient_wcs(wcs, shape, operation):
    """The WCS of the oriented pixel grid: every pixel keeps its sky position."""
    if wcs.sip is not None or wcs.cpdis1 is not None or wcs.det2im1 is not None:
        raise ValueError("orient_wcs handles linear (CD/PC) WCSs only")
    a, b, _ = _pixel_map(shape, *operation)
    new = WCS(naxis=2)
    new.wcs.ctype = list(wcs.wcs.ctype)
    new.wcs.cunit = list(wcs.wcs.cunit)
    new.wcs.crval = list(wcs.wcs.crval)
    new.wcs.lonpole, new.wcs.latpole = wcs.wcs.lonpole, wcs.wcs.latpole
    new.wcs.radesys = wcs.wcs.radesys
    new.wcs.cd = wcs.pixel_scale_matrix @ a
    crpix0 = np.asarray(wcs.wcs.crpix) - 1.0
    new.wcs.crpix = np.linalg.solve(a, crpix0 - b) + 1.0
    new.wcs.set()
    return new


def orient_image(image, operation):
    """A new CCDData: data, mask, uncertainty and WCS oriented together."""
    shape = np.shape(image.data)
    unc = image.uncertainty
    if unc is not None:
        unc = type(unc)(orient_array(unc.array, operation), unit=unc.unit)
    return CCDData(orient_array(image.data, operation), unit=image.unit,
                   mask=None if image.mask is None else orient_array(image.mask, operation),
                   uncertainty=unc, wcs=orient_wcs(image.wcs, shape, operation),
                   meta=dict(image.meta))


def check_wcs(images, operation):
    """Max sky offset (arcsec) of every pixel corner mapped through both WCSs."""
    worst = 0.0
    for image in images.values():
        shape = np.shape(image.data)
        a, b, new_shape = _pixel_map(shape, *operation)
        new = orient_wcs(image.wcs, shape, operation)
        xn = np.array([0, new_shape[1] - 1, 0, new_shape[1] - 1, 17.3])
        yn = np.array([0, 0, new_shape[0] - 1, new_shape[0] - 1, 5.6])
        old = a @ np.vstack([xn, yn]) + b[:, None]
        s_new = new.pixel_to_world(xn, yn)
        s_old = image.wcs.pixel_to_world(old[0], old[1])
        worst = max(worst, float(s_new.separation(s_old).arcsec.max()))
    return worst


# ------------------------------------------------------------------ data


def load_fields(seeds, size, cache):
    """``[(images, truth)]``: simulated fields, cached as pickles in ``cache``."""
    from astro_starglx.simulate import SimConfig, simulate_field

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    fields = []
    for seed in seeds:
        # every other field with per-band WCS offsets and rotations (bands not aligned)
        jitter = seed % 2 == 0
        path = cache / f"field_{size}_{seed}_{int(jitter)}.pkl"
        if path.exists():
            fields.append(pickle.loads(path.read_bytes()))
            continue
        t = time.perf_counter()
        config = SimConfig(shape=(size, size), wcs_jitter=0.5 if jitter else 0.0,
                           rotation_jitter=0.3 if jitter else 0.0)
        field = simulate_field(config, seed=seed)
        path.write_bytes(pickle.dumps(field))
        print(f"simulated field seed={seed} {size}^2 ({len(field[1])} sources, "
              f"jitter={jitter}) in {time.perf_counter() - t:.0f} s")
        fields.append(field)
    return fields


# ------------------------------------------------------------------ inference


class RecordingPredictor(Predictor):
    """A `Predictor` that keeps the logits of all 8 stamp orientations of every batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []

    def logits(self, stamps, noise, features):
        from astro_starglx.preprocess import prepare_inputs
        from astro_starglx.inference import predict_batch
        import torch

        x_image, x_catalog = prepare_inputs(stamps, noise, features, self.meta.normalization)
        every = np.stack([predict_batch(self.network, _orient(x_image, *op), x_catalog,
                                        device=self.device, memory_format=torch.channels_last)
                          for op in SYMMETRIES["d4"]])
        self.records.append(every)
        return every[0]


def run_orientation(clf, predictor, catalog, images, operation):
    """``(logits (8, N, 2), flags (N,))`` of one orientation of the field."""
    oriented = {band: orient_image(im, operation) for band, im in images.items()}
    predictor.records.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarGalaxyWarning)
        out = clf.classify(catalog, oriented)
    logits = np.concatenate(predictor.records, axis=1)
    return logits, np.asarray(out["class_flags"]), np.ma.getmaskarray(out["p_galaxy"])


def mode_proba(logits, meta, mode, *, average="logits"):
    """``p_galaxy`` of one option from the 8 orientation logits."""
    k = len(SYMMETRIES[mode])
    i_gal = list(meta.class_names).index("galaxy")
    if average == "logits":
        return calibrated_proba(logits[:k].mean(axis=0), meta)[:, i_gal]
    return np.mean([calibrated_proba(lg, meta)[:, i_gal] for lg in logits[:k]], axis=0)


def stamp_check(images, catalog, meta, operation):
    """Max |difference| of stamps (oriented vs cut from oriented images) and of features."""
    oriented = {band: orient_image(im, operation) for band, im in images.items()}
    out = []
    for ims in (images, oriented):
        x, y = pixel_positions(catalog, ims, ra_column="ra", dec_column="dec",
                               coord_column=None, x_column="x", y_column="y",
                               shared_grid=False)
        psf = None
        if meta.psf is not None:  # PSF-aware model: measured per orientation, as classify() does
            psf = resolve_psf(ims, {b: (x[b], y[b]) for b in ims}, pixel_scale=meta.pixel_scale,
                              nominal_fwhm=meta.psf["nominal_fwhm"])
        out.append(extract_inputs(ims, x, y, bands=meta.bands, size=meta.stamp_size,
                                  pixel_scale=meta.pixel_scale,
                                  feature_names=meta.feature_names, psf=psf))
    ref, new = out
    ok = (ref.flags == 0) & (new.flags == 0)
    d_stamp = np.nanmax(np.abs(orient_array(ref.stamps[ok], operation) - new.stamps[ok]))
    scale = np.nanmax(np.abs(ref.stamps[ok]))
    d_feat = np.nanmax(np.abs(ref.features[ok] - new.features[ok]))
    return float(d_stamp / scale), float(d_feat)


# ------------------------------------------------------------------ report


def recall(p_gal, truth_label, threshold, sel):
    is_gal = truth_label == "galaxy"
    called = p_gal >= threshold
    return (float(np.mean(~called[sel & ~is_gal])), int(np.sum(sel & ~is_gal)),
            float(np.mean(called[sel & is_gal])), int(np.sum(sel & is_gal)))


def log_loss(p_gal, truth_label, sel):
    y = (truth_label == "galaxy")[sel]
    p = np.clip(p_gal[sel], 1e-6, 1 - 1e-6)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--models", nargs="+", default=["rbim-lite", "rbim-lite-v2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cache", default="/tmp/astro_starglx_orientation")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fields = load_fields(args.seeds, args.size, args.cache)
    n_total = sum(len(t) for _, t in fields)
    print(f"{len(fields)} fields of {args.size}^2 x 7 bands, {n_total} sources")
    worst_wcs = max(check_wcs(images, op) for images, _ in fields
                    for op in OPERATIONS.values())
    print(f"WCS check: oriented pixels keep their sky positions to {worst_wcs:.2e} arcsec")

    for name in args.models:
        t0 = time.perf_counter()
        clf = StarGalaxyClassifier(name, device="cpu", symmetrize="none")
        meta = clf.meta
        predictor = RecordingPredictor(clf.loaded.network, meta, device=clf.device)
        clf._predict = predictor
        threshold = float(meta.threshold)
        # per operation: pooled p_galaxy (per mode) and flags over the fields
        gaps = {mode: {} for mode in MODES}
        probs = {mode: [] for mode in MODES}
        probs_mean_p = []
        labels, mags, unflagged_ref = [], [], []
        stamp_err, feat_err = 0.0, 0.0
        for images, truth in fields:
            catalog = truth["ra", "dec"]
            ref_logits, ref_flags, ref_masked = run_orientation(
                clf, predictor, catalog, images, OPERATIONS["identity"])
            ok_ref = (ref_flags == 0) & ~ref_masked
            ref_p = {mode: mode_proba(ref_logits, meta, mode) for mode in MODES}
            for mode in MODES:
                probs[mode].append(ref_p[mode])
            probs_mean_p.append(mode_proba(ref_logits, meta, "d4", average="proba"))
            labels.append(np.asarray(truth["label"]))
            mags.append(np.asarray(truth["mag_r"]))
            unflagged_ref.append(ok_ref)
            for op_name, op in OPERATIONS.items():
                if op_name == "identity":
                    continue
                logits, flags, masked = run_orientation(clf, predictor, catalog, images, op)
                ok = ok_ref & (flags == 0) & ~masked
                for mode in MODES:
                    p = mode_proba(logits, meta, mode)
                    dp = np.abs(p - ref_p[mode])[ok]
                    flips = ((p >= threshold) != (ref_p[mode] >= threshold))[ok]
                    g = gaps[mode].setdefault(op_name, [0.0, 0, 0])
                    g[0] = max(g[0], float(dp.max(initial=0.0)))
                    g[1] += int(flips.sum())
                    g[2] += int(ok.sum())
            for op_name in ("flip_x", "rot90", "transpose"):
                ds, df = stamp_check(images, catalog, meta, OPERATIONS[op_name])
                stamp_err, feat_err = max(stamp_err, ds), max(feat_err, df)
        elapsed = time.perf_counter() - t0

        print(f"\n=== {name} (threshold {threshold:.3f}; {elapsed:.0f} s) ===")
        print(f"pipeline equivariance (flip_x, rot90, transpose; unflagged): stamps cut from "
              f"the oriented images equal the oriented stamps to {stamp_err:.1e} (relative), "
              f"features to {feat_err:.1e}")
        print("invariance gap on sources unflagged in both orientations "
              "(max |dp_galaxy| / class flips):")
        header = f"{'operation':>14} " + " ".join(f"{mode:>22}" for mode in MODES)
        print(header)
        for op_name in OPERATIONS:
            if op_name == "identity":
                continue
            cells = []
            for mode in MODES:
                dp, n_flip, n = gaps[mode][op_name]
                cells.append(f"{dp:8.2e} {n_flip:4d}/{n:<5d}({100 * n_flip / max(n, 1):4.2f}%)")
            print(f"{op_name:>14} " + " ".join(f"{c:>22}" for c in cells))
        totals = []
        for mode in MODES:
            dp = max(g[0] for g in gaps[mode].values())
            n_flip = sum(g[1] for g in gaps[mode].values())
            n = sum(g[2] for g in gaps[mode].values())
            totals.append(f"{dp:8.2e} {n_flip:4d}/{n:<5d}({100 * n_flip / max(n, 1):4.2f}%)")
        print(f"{'all 7':>14} " + " ".join(f"{c:>22}" for c in totals))

        label = np.concatenate(labels)
        mag = np.concatenate(mags)
        ok = np.concatenate(unflagged_ref)
        rows = [(mode, np.concatenate(probs[mode])) for mode in MODES]
        rows.append(("d4 (mean of proba)", np.concatenate(probs_mean_p)))
        for faint in (25.0, 26.0):
            sel = ok & (mag <= faint)
            print(f"accuracy vs truth, unflagged r <= {faint:g} (original orientation):")
            print(f"{'option':>22} {'star recall':>18} {'galaxy recall':>18} {'log-loss':>9}")
            for mode, p in rows:
                rs, ns, rg, ng = recall(p, label, threshold, sel)
                print(f"{mode:>22} {rs:10.4f} (n={ns:4d}) {rg:10.4f} (n={ng:4d}) "
                      f"{log_loss(p, label, sel):9.4f}")

        canonical_report(name, fields)


def canonical_report(name, fields):
    """Gap and accuracy of ``symmetrize="canonical"`` (each stamp in a pose of its own)."""
    clf = StarGalaxyClassifier(name, device="cpu", symmetrize="canonical")
    threshold = float(clf.meta.threshold)
    worst, n_flip, n_all = 0.0, 0, 0
    p_ref, labels, mags, oks = [], [], [], []
    for images, truth in fields:
        outs = {}
        for op_name, op in OPERATIONS.items():
            oriented = {band: orient_image(im, op) for band, im in images.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StarGalaxyWarning)
                outs[op_name] = clf.classify(truth["ra", "dec"], oriented)
        ref = outs["identity"]
        p0 = np.asarray(ref["p_galaxy"].filled(np.nan), dtype=np.float64)
        ok0 = (np.asarray(ref["class_flags"]) == 0) & np.isfinite(p0)
        for op_name, out in outs.items():
            p = np.asarray(out["p_galaxy"].filled(np.nan), dtype=np.float64)
            ok = ok0 & (np.asarray(out["class_flags"]) == 0) & np.isfinite(p)
            worst = max(worst, float(np.abs(p - p0)[ok].max(initial=0.0)))
            n_flip += int(((p >= threshold) != (p0 >= threshold))[ok].sum())
            n_all += int(ok.sum())
        p_ref.append(p0)
        labels.append(np.asarray(truth["label"]))
        mags.append(np.asarray(truth["mag_r"]))
        oks.append(ok0)
    print(f"canonical pose: max |dp_galaxy| {worst:.2e}, class flips {n_flip}/{n_all} "
          "over the 8 orientations")
    p, label, mag, ok = map(np.concatenate, (p_ref, labels, mags, oks))
    for faint in (25.0, 26.0):
        sel = ok & (mag <= faint)
        rs, ns, rg, ng = recall(p, label, threshold, sel)
        print(f"  canonical, unflagged r <= {faint:g}: star {rs:.4f} (n={ns}) galaxy {rg:.4f} "
              f"(n={ng}) log-loss {log_loss(p, label, sel):.4f}")


if __name__ == "__main__":
    main()
