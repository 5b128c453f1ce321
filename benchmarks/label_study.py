"""
Labels vs accuracy on a survey that is not CSST: fine-tune, scratch, calibrate.

Simulates SDSS-like fields (``SimConfig.preset("sdss")``: ugriz, 0.396"/px,
~1.4" seeing, SDSS-like depths), extracts the labelled sources once with the
base model's settings (`astro_starglx.adapt.labelled_inputs`), and for each
number of labels N draws a class-stratified random subset of the label pool
and runs `astro_starglx.adapt.fine_tune_inputs` in each mode:

- ``fine-tune``: all weights from the released model;
- ``scratch``: the same architecture from a random initialisation;
- ``calibrate``: the released weights, only temperature and threshold refitted;
- ``fine-tune-reinit`` (not run by default): ``fine-tune`` with
  ``reinit_input=True``, the input layer re-initialised (the SDSS pixels are
  5.4 times CSST's);
- ``fine-tune-split`` (not run by default): ``fine-tune`` with ``folds=1``,
  the single-split recipe (early stopping and calibration on 30 % held out);
- ``fine-tune-mthr`` (not run by default): ``fine-tune`` with
  ``magnitude_thresholds=True``;
- ``self-train`` (not run by default): ``fine-tune`` with
  ``self_training=True``, given ``--unlabelled`` other pool sources without
  their labels, as a user's catalog holds many more sources than labels.

Every model (and the released model as it is) is scored on held-out fields
(other seeds, never labelled): accuracy and star/galaxy recall at r < 21 and
overall, plus wall time. Run (niced on a shared machine)::

    nice -n 19 python -m benchmarks.label_study [--labels 100 300 1000 3000]
        [--modes fine-tune scratch calibrate] [--n-test 1200] [--field-size 512]
        [--epochs 20] [--feature-scale auto] [--out label-study] [--inputs fields.pkl]
        [--unlabelled 4000]

The label pool is ``1.05 * max(--labels)`` simulated sources; ``--inputs``
keeps the simulated pool and held-out fields for another run with other
``--labels``, ``--modes`` or ``--feature-scale``.
"""

import argparse
import dataclasses
import json
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _simulate(task):
    from astropy.table import Table

    from astro_starglx.simulate import SimConfig, simulate_field

    seed, size, n_stars, n_galaxies = task
    config = SimConfig.preset("sdss", shape=(size, size), n_stars=n_stars,
                              n_galaxies=n_galaxies, mag_range=(16.0, 23.0))
    images, truth = simulate_field(config, seed=seed)
    catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"],
                     "mag_r": truth["mag_r"], "hlr": truth["hlr"]})
    return catalog, images


def simulate(n_sources, *, size, star_fraction, seed, workers):
    per_field = max(50, int(round(1100 * (size / 512) ** 2 / 4)))
    n_fields = int(np.ceil(n_sources / per_field))
    n_stars = int(round(per_field * star_fraction))
    tasks = [(seed + i, size, n_stars, per_field - n_stars) for i in range(n_fields)]
    if workers > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            fields = list(pool.map(_simulate, tasks))
    else:
        fields = [_simulate(t) for t in tasks]
    return [c for c, _ in fields], [i for _, i in fields]


def truth_column(catalogs, data, name="mag_r"):
    """The simulation's truth ``name`` of each source of ``data`` (NaN if absent)."""
    values = np.full(len(data), np.nan)
    for i, cat in enumerate(catalogs):
        sel = data.field == i
        if name in cat.colnames:
            values[sel] = np.asarray(cat[name], dtype=float)[data.row[sel]]
    return values


def stratified_subset(labels, n, seed):
    """n row indices with the pool's class fractions (at least 4 of each class)."""
    rng = np.random.default_rng(seed)
    out = []
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        k = max(4, int(round(n * members.size / labels.size)))
        out.append(rng.choice(members, size=min(k, members.size), replace=False))
    return np.sort(np.concatenate(out))


#: Study modes: (fine_tune mode, extra fine_tune options).
MODES = {"fine-tune": ("fine-tune", {}), "scratch": ("scratch", {}),
         "calibrate": ("calibrate", {}),
         "fine-tune-reinit": ("fine-tune", {"reinit_input": True}),
         "fine-tune-split": ("fine-tune", {"folds": 1}),
         "fine-tune-mthr": ("fine-tune", {"magnitude_thresholds": True}),
         "self-train": ("fine-tune", {"self_training": True})}


def with_hidden_labels(pool, chosen, n_unlabelled, seed):
    """The ``chosen`` pool sources and ``n_unlabelled`` others, their labels hidden (-1)."""
    others = np.setdiff1d(np.arange(len(pool)), chosen)
    others = np.random.default_rng(seed).permutation(others)[:n_unlabelled]
    data = pool.take(np.concatenate([chosen, others]))
    hidden = data.labels.copy()
    hidden[len(chosen):] = -1
    return dataclasses.replace(data, labels=hidden)


def score(model, test, mag, *, device="cpu"):
    from astro_starglx.inference import calibrated_proba, predict_logits

    logits = predict_logits(model.network, test, model.meta.normalization, device=device)
    p = calibrated_proba(logits, model.meta)[:, 1]
    # as classify() decides: per-magnitude thresholds where the model has them
    pred = (p >= model.meta.source_thresholds(test.features)).astype(int)
    return _scores(pred, test.labels.astype(int), mag)


def score_classify(model, catalogs, images):
    """`score` of a released model as a user runs it: ``classify()`` on the held-out fields.

    On another survey's pixels ``classify()`` reads the stamps and measures
    the features at the model's own pixel scale (it warns that the scale
    differs), not at the images' scale as `labelled_inputs` does for
    fine-tuning, so the released model is scored through ``classify()``
    itself.
    """
    import warnings

    from astro_starglx import StarGalaxyClassifier
    from astro_starglx.adapt import parse_labels

    clf = StarGalaxyClassifier(model)
    pred, y, mag = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pixel-scale and flag warnings, expected here
        for cat, imgs in zip(catalogs, images):
            out = clf.classify(cat, imgs)
            usable = np.isfinite(np.asarray(out["p_galaxy"], dtype=float))
            pred.append(np.where(np.asarray(out["class"]) == "galaxy", 1, 0)[usable])
            y.append(parse_labels(cat["label"]).astype(int)[usable])
            mag.append(np.asarray(cat["mag_r"], dtype=float)[usable])
    pred, y, mag = (np.concatenate(a) for a in (pred, y, mag))
    return _scores(pred, y, mag)


def _scores(pred, y, mag):
    out = {}
    for key, sel in (("r<21", mag < 21.0), ("all", np.isfinite(mag))):
        ok = pred[sel] == y[sel]
        out[f"acc_{key}"] = float(ok.mean())
        out[f"star_recall_{key}"] = float((pred[sel][y[sel] == 0] == 0).mean())
        out[f"galaxy_recall_{key}"] = float((pred[sel][y[sel] == 1] == 1).mean())
        out[f"n_{key}"] = int(sel.sum())
    return out


def main(argv=None):
    # the CLI's parser of --feature-scale ('auto' or a number, with its error)
    from astro_starglx.cli import _feature_scale

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 300, 1000, 3000],
                        help="numbers of labels (default: 100 300 1000 3000)")
    parser.add_argument("--modes", nargs="+", default=["fine-tune", "scratch", "calibrate"],
                        choices=sorted(MODES),
                        help="study modes (default: fine-tune scratch calibrate)")
    parser.add_argument("--n-test", type=int, default=1200,
                        help="held-out test sources (default: 1200)")
    parser.add_argument("--field-size", type=int, default=512,
                        help="field side, pixels (default: 512 = 3.4')")
    parser.add_argument("--star-fraction", type=float, default=0.35,
                        help="fraction of stars (default: 0.35)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of each training (fine_tune's default: 20)")
    parser.add_argument("--base", default="default", help="released model (default: default)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes simulating fields (default: 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default: 2; use 1 on a loaded machine: "
                             "two threads on two busy cores trained 8x slower)")
    parser.add_argument("--feature-scale", default="auto", type=_feature_scale,
                        help="features' angular scale: 'auto' (fine_tune's default: the "
                             "SDSS PSF over the base model's) or a number, 1 = CSST's "
                             "arcsec apertures (default: auto)")
    parser.add_argument("--out", default="label-study", help="output folder")
    parser.add_argument("--inputs", default=None,
                        help="pickle of the simulated pool and test fields: read if it "
                             "exists, else written after simulating (default: none)")
    parser.add_argument("--unlabelled", type=int, default=4000,
                        help="unlabelled pool sources given to the self-train mode "
                             "(default: 4000)")
    args = parser.parse_args(argv)

    import torch

    from astro_starglx.adapt import fine_tune_inputs, labelled_inputs
    from astro_starglx.weights import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_model(None if args.base == "default" else args.base, device="cpu")
    t0 = time.perf_counter()
    if args.inputs and Path(args.inputs).is_file():
        with open(args.inputs, "rb") as fh:
            pool_cats, pool_imgs, test_cats, test_imgs = pickle.load(fh)
        print(f"read {len(pool_cats) + len(test_cats)} fields from {args.inputs}")
    else:
        pool_cats, pool_imgs = simulate(max(args.labels) * 1.05, size=args.field_size,
                                        star_fraction=args.star_fraction,
                                        seed=1000 + args.seed, workers=args.workers)
        test_cats, test_imgs = simulate(args.n_test, size=args.field_size,
                                        star_fraction=args.star_fraction,
                                        seed=9000 + args.seed, workers=args.workers)
        if args.inputs:
            with open(args.inputs, "wb") as fh:
                pickle.dump((pool_cats, pool_imgs, test_cats, test_imgs), fh)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool = labelled_inputs(pool_cats, pool_imgs, meta=base.meta,
                           feature_scale=args.feature_scale)
    # the held-out fields at the scale the pool was measured at
    test = labelled_inputs(test_cats, test_imgs, meta=base.meta,
                           feature_scale=pool.feature_scale)
    t_extract = time.perf_counter() - t0
    test_mag = truth_column(test_cats, test)
    print(f"{len(pool)} pool + {len(test)} test SDSS-like sources "
          f"({len(pool_cats) + len(test_cats)} fields of {args.field_size} px) simulated or "
          f"read in {t_sim:.0f} s, extracted in {t_extract:.0f} s at feature_scale "
          f"{pool.feature_scale:g}", flush=True)
    print(f"base model {base.name}", flush=True)

    # the released model as a user runs it, through classify()
    rows = [{"n_labels": 0, "mode": "released", "seconds": 0.0, "epochs": 0,
             **score_classify(args.base, test_cats, test_imgs)}]
    for n in args.labels:
        chosen = stratified_subset(pool.labels, n, args.seed)
        subset = pool.take(chosen)
        for mode in args.modes:
            ft_mode, options = MODES[mode]
            t0 = time.perf_counter()
            data = (with_hidden_labels(pool, chosen, args.unlabelled, args.seed)
                    if options.get("self_training") else subset)
            path = fine_tune_inputs(data, output=out / f"n{n}-{mode}", base=base,
                                    mode=ft_mode, seed=args.seed, epochs=args.epochs,
                                    device="cpu", name=f"sdss-{mode}-{n}", **options)
            seconds = time.perf_counter() - t0
            model = load_model(path, device="cpu")
            row = {"n_labels": len(subset), "mode": mode, "seconds": round(seconds, 1),
                   "epochs": int(model.meta.recipe.get("epochs_run") or 0),
                   **score(model, test, test_mag)}
            rows.append(row)
            print(f"N={len(subset):5d} {mode:16s} acc(r<21)={row['acc_r<21']:.4f} "
                  f"acc(all)={row['acc_all']:.4f} star/gal recall(r<21)="
                  f"{row['star_recall_r<21']:.3f}/{row['galaxy_recall_r<21']:.3f} "
                  f"{seconds:.0f} s, {row['epochs']} epochs", flush=True)
            (out / "label_study.json").write_text(json.dumps(rows, indent=2))
    (out / "label_study.json").write_text(json.dumps(rows, indent=2))
    print()
    print(f"held-out: {rows[0]['n_r<21']} sources at r < 21, {rows[0]['n_all']} in all "
          f"(r 16-23); star fraction {args.star_fraction}")
    header = (f"{'N labels':>8s} {'mode':>16s} {'acc r<21':>9s} {'acc all':>8s} "
              f"{'star rec r<21':>13s} {'gal rec r<21':>12s} {'time s':>7s}")
    print(header)
    for row in rows:
        print(f"{row['n_labels']:8d} {row['mode']:>16s} {row['acc_r<21']:9.4f} "
              f"{row['acc_all']:8.4f} {row['star_recall_r<21']:13.3f} "
              f"{row['galaxy_recall_r<21']:12.3f} {row['seconds']:7.1f}")


if __name__ == "__main__":
    main()
