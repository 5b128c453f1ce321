"""
How much a wrong zero point costs: recall on nominal CSST-like fields with every band's
zero point shifted, with and without depth matching.

Classifies the fields of the robustness benchmark's ``nominal`` condition (the PSF
measured, as ``benchmarks.robustness --psf-source measured``) through the public API
with ``zeropoints`` = the true ones + ``shift`` in every band, once as is
(``match_depth=None``: no shift on the model's own pixels; beyond
``DEPTH_TOLERANCE`` it warns) and once with ``match_depth=True``, which measures the
images' depth and so cancels the error. Prints star / galaxy recall at r <= 25. Run::

    python -m benchmarks.zeropoint_sensitivity [--model NAME] [--fields 4] [--size 2048]
        [--cache runs/robustness-fields] [--shifts -2.5 -1 -0.5 -0.2 0 0.2 0.5 1 2.5]
"""

import argparse
import warnings

from benchmarks.depth_matching import median_offset
from benchmarks.fresh_fields import classified, recall
from benchmarks.robustness import simulate_condition, strip_psf_keywords


def recalls(clf, fields, shift, match_depth):
    """Star and galaxy recall (%) at r <= 25, and the median magnitude offset applied."""
    from astro_starglx import StarGalaxyWarning
    from astro_starglx.inputs import get_zeropoint

    outs = []
    for images, truth in fields:
        images = strip_psf_keywords(images)
        zeropoints = {band: get_zeropoint(image, band) + shift for band, image in images.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StarGalaxyWarning)
            outs.append(clf.classify(truth["id", "ra", "dec"], images, zeropoints=zeropoints,
                                     match_depth=match_depth))
    pred, label, mag = classified(outs, [truth for _, truth in fields])
    sel = mag <= 25.0
    star = 100 * recall(pred[sel], label[sel], "star")[0]
    galaxy = 100 * recall(pred[sel], label[sel], "galaxy")[0]
    return star, galaxy, median_offset(outs)


def main(argv=None):
    from astro_starglx import StarGalaxyClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--model", default=None, help="model name or file (default: default)")
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=70001,
                        help="first field's seed (the robustness benchmark's default)")
    parser.add_argument("--cache", default=None,
                        help="the robustness benchmark's field cache folder, if any")
    parser.add_argument("--shifts", type=float, nargs="+",
                        default=[-2.5, -1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 2.5])
    args = parser.parse_args(argv)
    clf = StarGalaxyClassifier(args.model)
    fields, _ = simulate_condition("nominal", args.fields, args.size, args.seed, args.cache)
    print(f"model {clf.loaded.name}; star / galaxy recall at r <= 25 (%)")
    print(" zero point error | as given (match_depth=None) | match_depth=True (offset)")
    for shift in args.shifts:
        star, galaxy, _ = recalls(clf, fields, shift, None)
        star_m, galaxy_m, offset = recalls(clf, fields, shift, True)
        print(f"   {shift:+5.1f} mag      |   {star:6.2f} / {galaxy:6.2f}          | "
              f"{star_m:6.2f} / {galaxy_m:6.2f} ({offset:+.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
