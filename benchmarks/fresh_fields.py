"""
End-to-end check of a released model on newly simulated fields.

Simulates fields with seeds that no data set used, classifies them through
the public API exactly as a user would (``StarGalaxyClassifier().classify``
with ``ra``/``dec`` and the images as they come), and reports star and galaxy
recall against the truth with binomial errors, for r <= 25 and per magnitude
range. Run::

    python -m benchmarks.fresh_fields [--model NAME_OR_FILE] [--fields 4] [--seed 90001]
"""

import argparse
import time
import warnings

import numpy as np

from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning
from astro_starglx.simulate import SimConfig, simulate_field


def recall(pred, label, cls):
    sel = label == cls
    n = int(sel.sum())
    if n == 0:
        return float("nan"), 0.0, 0
    r = float(np.mean(pred[sel] == cls))
    return r, float(np.sqrt(max(r * (1 - r), 1.0 / n) / n)), n


def classified(outs, truths):
    """``(class, label, mag_r)`` arrays of the sources classify() gave a class, over fields."""
    pred, label, mag = [], [], []
    for out, truth in zip(outs, truths):
        ok = ~np.ma.getmaskarray(out["class"])
        pred.append(np.asarray(out["class"])[ok])
        label.append(np.asarray(truth["label"])[ok])
        mag.append(np.asarray(truth["mag_r"])[ok])
    return tuple(np.concatenate(a) for a in (pred, label, mag))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--model", default=None)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=90001)
    parser.add_argument("--psf-scale", type=float, default=1.0,
                        help="PSF dilation (the training fields used 0.85-1.25)")
    parser.add_argument("--keep-sky", action="store_true",
                        help="leave the sky in the images (L1-like, not sky-subtracted)")
    args = parser.parse_args()
    clf = StarGalaxyClassifier(args.model, device="cpu")
    config = SimConfig(shape=(args.size, args.size), wcs_jitter=0.5, rotation_jitter=0.02,
                       psf_scale=args.psf_scale, subtract_sky=not args.keep_sky)
    outs, truths = [], []
    t_sim = t_cls = 0.0
    for k in range(args.fields):
        t0 = time.perf_counter()
        images, truth = simulate_field(config, seed=args.seed + k)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            out = clf.classify(truth["id", "ra", "dec"], images)
        t_cls += time.perf_counter() - t1
        t_sim += t1 - t0
        outs.append(out)
        truths.append(truth["label", "mag_r"])
    pred, label, mag = classified(outs, truths)
    print(f"model {out.meta['astro_starglx']['model']} "
          f"({out.meta['astro_starglx']['weights_sha256'][:12]}), {args.fields} fresh fields "
          f"(seeds {args.seed}..{args.seed + args.fields - 1}, psf_scale {args.psf_scale}, "
          f"sky {'kept' if args.keep_sky else 'subtracted'}), {len(label)} sources; "
          f"simulation {t_sim:.0f} s, classify {t_cls:.1f} s")
    for name, sel in (("r <= 25", mag <= 25), ("r < 23", mag < 23),
                      ("23 <= r <= 25", (mag >= 23) & (mag <= 25)),
                      ("25 < r <= 26", mag > 25), ("all", np.ones_like(mag, bool))):
        rs, es, ns = recall(pred[sel], label[sel], "star")
        rg, eg, ng = recall(pred[sel], label[sel], "galaxy")
        print(f"{name:>14s}: star recall {100 * rs:6.2f} +- {100 * es:4.2f} % (n={ns:5d})  "
              f"galaxy recall {100 * rg:6.2f} +- {100 * eg:4.2f} % (n={ng:5d})")


if __name__ == "__main__":
    main()
