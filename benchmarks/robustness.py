"""
Robustness of released models to shifts in the simulated fields.

For each condition of a suite (PSF width and family, depth, galaxy profiles
and sizes, colours, sky left in), simulates fresh fields once with seeds that
no data set used, classifies them with every model given through the public
API (``StarGalaxyClassifier(model).classify(table, images)``) and reports star
and galaxy recall for r <= 25 against the truth, with binomial errors. Run::

    python -m benchmarks.robustness --models rbim-lite path/to/other.safetensors \\
        [--fields 2] [--size 2048] [--seed 70001] [--output robustness.ecsv]

The conditions are deliberately outside or at the edges of what the
training sets drew, to show where a model stops generalising.
"""

import argparse
import time
import warnings

import numpy as np
from astropy.table import Table

from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning
from astro_starglx.simulate import SimConfig, exptime_scale_for_depth, simulate_field
from benchmarks.fresh_fields import recall

#: The nominal CSST-like field of every condition (``shape`` from ``--size``).
NOMINAL = SimConfig(wcs_jitter=0.5, rotation_jitter=0.02)

#: name -> `SimConfig` fields replaced in ``NOMINAL``.
CONDITIONS = {
    "nominal": {},
    "psf x0.8": {"psf_scale": 0.8},
    "psf x1.4": {"psf_scale": 1.4},
    "psf x1.6": {"psf_scale": 1.6},
    "moffat b=2.5": {"psf_model": "moffat", "psf_beta": 2.5},
    "moffat b=3.5 x1.2": {"psf_model": "moffat", "psf_beta": 3.5, "psf_scale": 1.2},
    "gaussian": {"psf_model": "gaussian"},
    "exptime x0.25": {"exptime_scale": 0.25},
    "exptime x4": {"exptime_scale": 4.0},
    "sersic galaxies": {"sersic_fraction": 1.0},
    "galaxies x0.7": {"galaxy_size_scale": 0.7},
    "colour scatter 0.1": {"colour_scatter": 0.1},
    "sky kept": {"subtract_sky": False},
    "depth -1 mag": {"exptime_scale": exptime_scale_for_depth(-1.0)},
    "depth +0.5 mag": {"exptime_scale": exptime_scale_for_depth(0.5)},
    "psf gradient 0.3": {"psf_gradient": 0.3},
    "psf x1.8": {"psf_scale": 1.8},
    "zero point 30": {"zeropoint": 30.0},
    "blends 30 %": {"neighbour_fraction": 0.3},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--models", nargs="+", default=[None],
                        help="model names or weights files (default: the package default)")
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=70001)
    parser.add_argument("--conditions", nargs="*", default=list(CONDITIONS),
                        choices=list(CONDITIONS))
    parser.add_argument("--output", default=None, help="write the table (e.g. .ecsv)")
    args = parser.parse_args()
    classifiers = [StarGalaxyClassifier(m, device="cpu") for m in args.models]
    names = [str(m or "default") for m in args.models]
    rows = []
    for cond in args.conditions:
        fields = []
        t0 = time.perf_counter()
        for k in range(args.fields):
            fields.append(simulate_field(NOMINAL, seed=args.seed + k,
                                         shape=(args.size, args.size), **CONDITIONS[cond]))
        t_sim = time.perf_counter() - t0
        for name, clf in zip(names, classifiers):
            labels, preds = [], []
            for images, truth in fields:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", StarGalaxyWarning)
                    out = clf.classify(truth["id", "ra", "dec"], images)
                sel = ~np.ma.getmaskarray(out["class"]) & (np.asarray(truth["mag_r"]) <= 25)
                labels.append(np.asarray(truth["label"])[sel])
                preds.append(np.asarray(out["class"])[sel])
            label, pred = np.concatenate(labels), np.concatenate(preds)
            rs, es, ns = recall(pred, label, "star")
            rg, eg, ng = recall(pred, label, "galaxy")
            rows.append((cond, name, 100 * rs, 100 * es, ns, 100 * rg, 100 * eg, ng))
            print(f"{cond:>20s}  {name:<40s} star {100 * rs:6.2f} +- {100 * es:4.2f} % "
                  f"(n={ns})  galaxy {100 * rg:6.2f} +- {100 * eg:4.2f} % (n={ng})  "
                  f"[sim {t_sim:.0f} s]", flush=True)
    table = Table(rows=rows, names=("condition", "model", "star_recall", "star_err",
                                    "n_star", "galaxy_recall", "galaxy_err", "n_galaxy"))
    table.meta.update({"fields": args.fields, "size": args.size, "seed": args.seed,
                       "selection": "r <= 25, on the image"})
    for col in ("star_recall", "star_err", "galaxy_recall", "galaxy_err"):
        table[col].format = ".2f"
    if args.output:
        table.write(args.output, overwrite=True)
    table.pprint(max_lines=-1, max_width=-1)


if __name__ == "__main__":
    main()
