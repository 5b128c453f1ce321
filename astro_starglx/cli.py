"""
The ``astro-starglx`` command line tool: thin wrappers over the library.

Subcommands::

    astro-starglx demo                 simulate a small CSST-like field and classify it
    astro-starglx classify CAT IMG...  classify a catalog against FITS images
    astro-starglx weights list|download|verify|install
    astro-starglx sim-report           realism report of the simulator
    astro-starglx make-dataset         build a training set from simulated fields
    astro-starglx train                train a model from a data set
    astro-starglx evaluate             evaluate a model on held-out test fields
"""

import argparse
import json
import logging
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]

log = logging.getLogger("astro_starglx")


def _add_weights(sub):
    p = sub.add_parser("weights", help="list, download, verify or install model weights")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    wsub.add_parser("list", help="list registered models")
    d = wsub.add_parser("download", help="fetch a model into the cache")
    d.add_argument("name", nargs="?", default=None, help="model name (default: the default)")
    v = wsub.add_parser("verify", help="check the sha256 of cached/bundled weights")
    v.add_argument("names", nargs="*", help="model names (default: all)")
    i = wsub.add_parser("install", help="copy a weights file obtained elsewhere into the cache")
    i.add_argument("file", help="path to a .safetensors file")
    i.add_argument("--name", default=None, help="registry name (default: from the file)")


def _cmd_weights(args):
    from . import weights

    if args.weights_command == "list":
        rows = weights.list_weights()
        for entry in rows:
            bundled = "bundled" if entry.bundled else "download"
            print(f"{entry.name:20s} {bundled:9s} {entry.sha256[:16]}  {entry.filename}")
        if not rows:
            print("no models registered")
        return 0
    if args.weights_command == "download":
        path = weights.download_weights(args.name, progressbar=True)
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


def _json_config(text):
    """A ``--config`` value: a JSON object, or the path of a file holding one."""
    if not text:
        return {}
    from pathlib import Path

    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"--config must be a JSON object or a JSON file, got {text!r}: {err}"
        raise SystemExit(msg) from None
    if not isinstance(config, dict):
        msg = f"--config must be a JSON object, got {config!r}"
        raise SystemExit(msg)
    return config


def _sim_settings(args):
    # SimConfig fields: --config's, with the shape from --size.
    return {**_json_config(args.config), "shape": (args.size, args.size)}


def _cmd_demo(args):
    from .classifier import StarGalaxyClassifier, StarGalaxyWarning
    from .simulate import simulate_field

    t0 = time.perf_counter()
    images, truth = simulate_field(seed=args.seed, **_sim_settings(args))
    t_sim = time.perf_counter() - t0
    catalog = truth["id", "ra", "dec"]
    clf = StarGalaxyClassifier(args.model, device=args.device)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StarGalaxyWarning)
        result = clf.classify(catalog, images)
    t_cls = time.perf_counter() - t0
    info = result.meta["astro_starglx"]
    print(f"simulated a {args.size}x{args.size} px, {len(images)}-band CSST-like field "
          f"with {len(truth)} sources (seed {args.seed}) in {t_sim:.1f} s")
    print(f"classified with {info['model']} (sha256 {info['weights_sha256'][:12]}...) on "
          f"{info['device']} in {t_cls:.2f} s ({len(result) / t_cls:.0f} objects/s)")
    _print_truth_summary(result, truth, mag_column="mag_r")
    for w in caught:
        print(f"note: {w.message}")
    if args.output:
        result.write(args.output, overwrite=True)
        print(f"wrote {args.output}")
    return 0


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


def _cmd_classify(args):
    from astropy.nddata import CCDData
    from astropy.table import Table

    from .classifier import StarGalaxyClassifier

    catalog = Table.read(args.catalog)
    images = {}
    for spec in args.images:
        band, _, path = spec.partition("=")
        if not path:
            msg = f"images must be given as BAND=FILE, got {spec!r}"
            raise SystemExit(msg)
        images[band] = CCDData.read(path, hdu=args.hdu, unit=args.unit)
    clf = StarGalaxyClassifier(args.model, device=args.device, batch_size=args.batch_size,
                               progress=True)
    result = clf.classify(catalog, images, ra_column=args.ra_column,
                          dec_column=args.dec_column, overwrite=args.overwrite)
    result.write(args.output, overwrite=True)
    print(f"wrote {len(result)} rows to {args.output}")
    return 0


def _cmd_sim_report(args):
    from .simulate import simulate_field
    from .simulate.report import sim_report

    images, truth = simulate_field(seed=args.seed, **_sim_settings(args))
    table = sim_report(images, truth, outdir=args.outdir)
    table.pprint(max_lines=-1, max_width=-1)
    return 0


def _cmd_make_dataset(args):
    from .dataset import make_dataset

    # Options given on the command line override --config, which overrides
    # DatasetConfig's defaults.
    given = {name: getattr(args, name) for name in getattr(args, "explicit", ())}
    path = make_dataset(args.output, n_workers=args.workers, progress=True,
                        **{**_json_config(args.config), **given})
    print(path)
    return 0


def _cmd_train(args):
    from .training import TrainConfig, train_release

    overrides = json.loads(args.config) if args.config else {}
    config = TrainConfig(model=args.model, epochs=args.epochs, seed=args.seed, **overrides)
    path = train_release(args.dataset, args.output, config=config, device=args.device,
                         resume=not args.no_resume,
                         command=" ".join(["astro-starglx", *sys.argv[1:]]))
    print(path)
    return 0


def _cmd_evaluate(args):
    from .evaluation import evaluate_model

    table = evaluate_model(args.model, args.dataset, outdir=args.outdir, split=args.split,
                           device=args.device or "cpu", baselines=args.baselines,
                           extra_models=args.extra_models)
    table.pprint(max_lines=-1, max_width=-1)
    return 0


class _Explicit(argparse.Action):
    """Store the value (or ``const`` for a flag) and note that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.explicit = (*getattr(namespace, "explicit", ()), self.dest)


# DatasetConfig fields with their own make-dataset option (the integers, then detect).
_DATASET_OPTIONS = ("n_stars", "n_galaxies", "seed", "stamp_size", "field_size", "detect")

_SIM_CONFIG_HELP = ("SimConfig settings as a JSON object or JSON file, e.g. "
                    "'{\"psf_scale\": 1.3, \"psf_gradient\": 0.3}' (shape comes from --size)")


def build_parser():
    """The argument parser of ``astro-starglx``."""
    parser = argparse.ArgumentParser(prog="astro-starglx", description=__doc__.split("\n")[1])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="simulate a small CSST-like field and classify it "
                                    "(offline)")
    p.add_argument("--size", type=int, default=1024, help="field size in pixels")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--model", default=None, help="model name or weights file")
    p.add_argument("--device", default=None)
    p.add_argument("--output", default=None, help="write the result table (e.g. .ecsv)")
    p.add_argument("--config", default=None, help=_SIM_CONFIG_HELP)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("classify", help="classify a catalog against FITS images")
    p.add_argument("catalog", help="catalog file readable by astropy Table.read")
    p.add_argument("images", nargs="+", help="BAND=FILE for each band")
    p.add_argument("-o", "--output", required=True, help="output table file")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hdu", type=int, default=0)
    p.add_argument("--unit", default=None, help="image unit if BUNIT is absent")
    p.add_argument("--ra-column", default="ra")
    p.add_argument("--dec-column", default="dec")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_classify)

    _add_weights(sub)
    sub.choices["weights"].set_defaults(func=_cmd_weights)

    p = sub.add_parser("sim-report", help="measure the simulator's realism from its images")
    p.add_argument("--outdir", default="sim-report")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--config", default=None, help=_SIM_CONFIG_HELP)
    p.set_defaults(func=_cmd_sim_report)

    p = sub.add_parser("make-dataset", help="simulate fields into an on-disk training set")
    p.add_argument("output", help="output directory")
    from .dataset import DatasetConfig

    for name in _DATASET_OPTIONS[:-1]:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, action=_Explicit,
                       default=getattr(DatasetConfig, name), help="default %(default)s")
    p.add_argument("--detect", nargs=0, action=_Explicit, const=True,
                   default=DatasetConfig.detect,
                   help="detect sources with photutils instead of using truth positions")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--config", default=None,
                   help="DatasetConfig settings as a JSON object or JSON file, e.g. "
                        "'{\"psf_scale_range\": [0.85, 1.25]}'; the options above "
                        "override it")
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("train", help="train a model and export .safetensors weights")
    p.add_argument("dataset", help="data set directory from make-dataset")
    p.add_argument("output", help="output directory (checkpoints, weights)")
    p.add_argument("--model", default="rbim-lite")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--config", default=None, help="JSON object of TrainConfig overrides")
    p.add_argument("--no-resume", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a data set's test fields")
    p.add_argument("dataset")
    p.add_argument("--model", default=None)
    p.add_argument("--outdir", default="evaluation")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default=None)
    p.add_argument("--baselines", action="store_true",
                   help="also run the morphology-cut and catalog-GBT baselines")
    p.add_argument("--extra-models", nargs="*", default=(),
                   help="more weights files to compare (e.g. ablation variants)")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv=None):
    """Run ``astro-starglx``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
