"""
Another survey's images without labels: ``classify()`` with and without depth matching.

Simulates fields of three ground-based surveys the models never saw, each
through the simulator's own instrument with another pixel scale, PSF, depth
and band set (the first is the ``"sdss"`` preset; the other two are rough
stand-ins written here, not survey specifications), and classifies them
through the public API with ``match_depth=False`` and with the default
(``None``: on, since the pixel scale is not the model's). Prints the
accuracy and the star / galaxy recall per r magnitude limit, and the
magnitude offset applied. Run::

    python -m benchmarks.depth_matching [--model NAME] [--fields 16] [--seed 7000]
        [--surveys sdss decals hsc] [--workers 2]
"""

import argparse
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks.fresh_fields import classified, recall

#: name -> (SimConfig overrides, r-band magnitude limits of the table)
SURVEYS = {
    # ugriz, 0.396"/px, ~1.4" seeing, r ~ 22.6 (SimConfig.preset("sdss"))
    "sdss": ({"preset": "sdss", "mag_range": (16.0, 23.0)}, (21, 22, 23)),
    # grz, 0.262"/px, ~1.1" seeing (r), 5-sigma r ~ 24: a DECaLS-like stand-in
    "decals": ({"bands": ("g", "r", "z"), "pixel_scale": 0.262, "psf_model": "moffat",
                "psf_beta": 3.5, "psf_scale": 16.0, "exptime_scale": 0.25,
                "mag_range": (16.0, 24.0), "density": 30.0}, (21, 22, 23, 24)),
    # grizy, 0.168"/px, ~0.6" seeing (r), 5-sigma r ~ 26: an HSC-like stand-in
    "hsc": ({"bands": ("g", "r", "i", "z", "y"), "pixel_scale": 0.168, "psf_model": "moffat",
             "psf_beta": 3.0, "psf_scale": 9.0, "exptime_scale": 1.5,
             "mag_range": (17.0, 25.0), "density": 30.0}, (21, 22, 23, 24)),
}


def simulate(task):
    """One field of a survey: (catalog with the truth, images)."""
    from astropy.table import Table

    from astro_starglx.simulate import SimConfig, simulate_field

    survey, seed, size = task
    overrides = dict(SURVEYS[survey][0])
    preset = overrides.pop("preset", None)
    shape = {"shape": (size, size), "n_stars": 100, "n_galaxies": 200}
    config = (SimConfig.preset(preset, **shape, **overrides) if preset
              else SimConfig(**shape, **overrides))
    images, truth = simulate_field(config, seed=seed)
    catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"],
                     "mag_r": truth["mag_r"]})
    return catalog, images


def score(clf, fields, limits, match_depth):
    """Accuracy and recalls per r limit, and the median magnitude offset."""
    from astro_starglx import StarGalaxyWarning

    outs = []
    for catalog, images in fields:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)  # the pixel-scale warning
            outs.append(clf.classify(catalog["ra", "dec"], images, match_depth=match_depth))
    pred, label, mag = classified(outs, [catalog for catalog, _ in fields])
    cells = []
    for limit in limits:
        sel = mag < limit
        acc = np.mean(pred[sel] == label[sel])
        stars = recall(pred[sel], label[sel], "star")[0]
        galaxies = recall(pred[sel], label[sel], "galaxy")[0]
        cells.append(f"r<{limit}: {100 * acc:.1f} ({100 * stars:.1f} / {100 * galaxies:.1f}, "
                     f"n={int(sel.sum())})")
    return cells, median_offset(outs)


def median_offset(outs):
    """The median ``match_depth`` magnitude offset of classify() results (0: none applied)."""
    return float(np.median([out.meta["astro_starglx"].get("depth", {})
                            .get("magnitude_offset", 0.0) for out in outs]))


def main(argv=None):
    from astro_starglx import StarGalaxyClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--model", default=None, help="model name or file (default: default)")
    parser.add_argument("--fields", type=int, default=16, help="fields per survey")
    parser.add_argument("--size", type=int, default=512, help="field side, pixels")
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--surveys", nargs="+", default=list(SURVEYS), choices=list(SURVEYS))
    parser.add_argument("--workers", type=int, default=2, help="simulation processes")
    args = parser.parse_args(argv)
    clf = StarGalaxyClassifier(args.model)
    print(f"model {clf.loaded.name}; accuracy % (star / galaxy recall %) per r limit")
    for survey in args.surveys:
        t0 = time.perf_counter()
        tasks = [(survey, args.seed + k, args.size) for k in range(args.fields)]
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                fields = list(pool.map(simulate, tasks))
        else:
            fields = [simulate(task) for task in tasks]
        t_sim = time.perf_counter() - t0
        limits = SURVEYS[survey][1]
        for match_depth in (False, None):
            cells, offset = score(clf, fields, limits, match_depth)
            print(f"{survey:7s} match_depth={match_depth!s:5s} offset {offset:+.2f} mag | "
                  + " | ".join(cells), flush=True)
        print(f"{survey}: {args.fields} fields simulated in {t_sim:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
