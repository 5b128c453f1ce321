"""
Fine-tuning on another survey's pixels, with fields of the independent simulator.

`benchmarks.independent_sim` draws fields at another survey's pixel scale and
seeing (by default HSC-like: 0.168" pixels, 0.65" FWHM, the bands g, r, i, z,
y), with none of the training simulator's code. The released model reads
them as its own pixels (``classify()`` warns about the pixel scale and
matches the depth); `~astro_starglx.fine_tune` adapts it with the labels of
one field (truth r < ``--label-limit``), exactly as a user with a labelled
field of their own would. Both are scored on other fields (star and galaxy
recall with binomial errors by r limit). Run::

    python -m benchmarks.adapt_independent [--pixel-scale 0.168] [--fwhm 0.65] \\
        [--bands g r i z y] [--size 1024] [--train-seed 11] [--test-seeds 13 14 15] \\
        [--label-limit 24] [--model NAME] [--output adapt.ecsv]
"""

import argparse
import tempfile
import time
import warnings

import numpy as np
from astropy.table import Table

from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning, fine_tune
from benchmarks.fresh_fields import recall
from benchmarks.independent_sim import simulate_independent

#: r limits (truth) of the recall rows.
LIMITS = (22.0, 23.0, 24.0)


def fields(seeds, args):
    """``(images, truth)`` per seed, without the PSF keyword (a user's images have none)."""
    out = []
    for seed in seeds:
        images, truth = simulate_independent(seed, shape=(args.size, args.size),
                                             pixel_scale=args.pixel_scale, fwhm=args.fwhm,
                                             bands=args.bands)
        for image in images.values():
            del image.meta["PSFFWHM"]
        out.append((images, truth))
    return out


def scores(clf, test, name):
    """Recall rows of one model over the test fields."""
    pred, label, mag = [], [], []
    for images, truth in test:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            out = clf.classify(truth["id", "ra", "dec"], images)
        ok = ~np.ma.getmaskarray(out["class"])
        pred.append(np.asarray(out["class"])[ok])
        label.append(np.asarray(truth["label"])[ok])
        mag.append(np.asarray(truth["mag_r"])[ok])
    pred, label, mag = (np.concatenate(a) for a in (pred, label, mag))
    rows = []
    for limit in LIMITS:
        sel = mag < limit
        row = {"model": name, "r_limit": limit}
        for cls in ("star", "galaxy"):
            r, e, n = recall(pred[sel], label[sel], cls)
            row.update({f"{cls}_recall": 100 * r, f"{cls}_err": 100 * e, f"n_{cls}": n})
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--pixel-scale", type=float, default=0.168, help="arcsec per pixel")
    parser.add_argument("--fwhm", type=float, default=0.65, help="PSF FWHM, arcsec")
    parser.add_argument("--bands", nargs="+", default=["g", "r", "i", "z", "y"])
    parser.add_argument("--size", type=int, default=1024, help="field side, pixels")
    parser.add_argument("--train-seed", type=int, default=11)
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[13, 14, 15])
    parser.add_argument("--label-limit", type=float, default=24.0,
                        help="the training field's labels: truth r below this")
    parser.add_argument("--model", default=None, help="released model (default: the default)")
    parser.add_argument("--seed", type=int, default=0, help="fine_tune's seed")
    parser.add_argument("--output", default=None, help="write the table (e.g. .ecsv)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    (images, truth), = fields([args.train_seed], args)
    test = fields(args.test_seeds, args)
    t_sim = time.perf_counter() - t0
    labels = truth["id", "ra", "dec", "label"][truth["mag_r"] < args.label_limit]
    released = StarGalaxyClassifier(args.model)  # None: the default
    with tempfile.TemporaryDirectory(prefix="adapt-independent-") as tmp:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            path = fine_tune(labels, images, base=args.model or "default", output=tmp,
                             seed=args.seed)
        t_fit = time.perf_counter() - t0
        tuned = StarGalaxyClassifier(path)
        rows = scores(released, test, released.loaded.name) + scores(tuned, test, "fine-tuned")
    table = Table(rows=rows)
    for col in table.colnames:
        if col.endswith(("_recall", "_err")):
            table[col].format = ".2f"
    table.meta.update({
        "pixel_scale": args.pixel_scale, "fwhm": args.fwhm, "bands": args.bands,
        "size": args.size, "train_seed": args.train_seed, "test_seeds": args.test_seeds,
        "labels": len(labels), "label_limit": args.label_limit,
        "n_label_stars": int(np.sum(labels["label"] == "star")),
        "simulate_s": t_sim, "fine_tune_s": t_fit})
    print(f"{args.pixel_scale}\" pixels, FWHM {args.fwhm}\", bands {args.bands}; fine_tune "
          f"on {len(labels)} labels (r < {args.label_limit:g}, seed {args.train_seed}) in "
          f"{t_fit:.0f} s; scored on seeds {args.test_seeds} ({args.size}^2 px each; "
          f"simulated in {t_sim:.0f} s)")
    table.pprint(max_lines=-1, max_width=-1)
    if args.output:
        table.write(args.output, overwrite=True)


if __name__ == "__main__":
    main()
