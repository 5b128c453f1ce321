"""
Evaluation of trained models on held-out test fields, with baselines.

`evaluate_model` measures recall, purity, F1, accuracy, ROC AUC, Brier score
and calibration error overall, per 0.5 mag bin in r and per redshift bin for
galaxies (bootstrap errors), for the model and for baselines trained on the
training fields of the same data set:

- ``morphology-cut``: a classical cut on the r-band second-moment radius
  relative to the stars' (the PSF), threshold tuned on the training fields;
- ``catalog-gbt``: a gradient-boosted tree over the per-band catalog features
  (scikit-learn, in the ``test`` extra);
- any other weights files given (e.g. the image-only and catalog-only
  variants of the network).

It writes ECSV tables and PNG figures and returns the summary table.
"""

import logging
import os
from pathlib import Path

import numpy as np

from . import metrics

__all__ = ["evaluate_model", "evaluate_scores", "morphology_cut_baseline", "gbt_baseline",
           "model_scores"]

log = logging.getLogger(__name__)

_SUMMARY_KEYS = ("recall_star", "recall_galaxy", "purity_star", "purity_galaxy", "f1_star",
                 "f1_galaxy", "accuracy", "roc_auc", "brier", "ece", "n_star", "n_galaxy")


def model_scores(model, data, *, device="cpu", batch_size=1024):
    """
    Calibrated ``p_galaxy`` and threshold of a weights file over a data split.

    Parameters
    ----------
    model : str, path-like or `~astro_starglx.weights.Weights`
        Anything `~astro_starglx.weights.load_model` accepts.
    data : `~astro_starglx.dataset.SplitData`
    device : str, optional
    batch_size : int, optional

    Returns
    -------
    p_galaxy : `~numpy.ndarray`
        ``(N,)`` float.
    threshold : float
    name : str
    """
    from .inference import calibrated_proba, predict_logits
    from .weights import load_model

    loaded = load_model(model, device=device)
    meta = loaded.meta
    _check_compatible(meta, data.info)
    logits = predict_logits(loaded.network, data, meta.normalization,
                            batch_size=batch_size, device=device)
    return calibrated_proba(logits, meta)[:, 1], meta.threshold, loaded.name


def _check_compatible(meta, info):
    for key in ("bands", "stamp_size", "feature_names"):
        value = getattr(meta, key)
        if list(np.atleast_1d(value)) != list(np.atleast_1d(info[key])):
            msg = (f"model {meta.name!r} reads {key}={value!r} but the data set has "
                   f"{info[key]!r}; build the data set with the model's settings")
            raise ValueError(msg)


def _feature_matrix(data):
    feats = np.asarray(data.features, dtype=np.float32)
    return feats.reshape(len(feats), -1)


def morphology_cut_baseline(train, test, *, band_index=None, feature="radius"):
    """
    Classical morphology cut: r-band size relative to the point-source size.

    The cut on the second-moment radius is tuned on the training fields to
    maximise the smaller of the two recalls, the way a survey would tune a
    star/galaxy size cut; the "score" is the radius itself scaled to [0, 1]
    by a logistic around the cut so that ROC and calibration can be
    computed.

    Parameters
    ----------
    train, test : `~astro_starglx.dataset.SplitData`
    band_index : int or None, optional
        Band used (default: ``r``).
    feature : str, optional
        Feature name used.

    Returns
    -------
    p_galaxy : `~numpy.ndarray`
        Scores on ``test``.
    threshold : float
        The size cut, in score units (tuned on ``train``).
    """
    bands = list(train.info["bands"])
    if band_index is None:
        band_index = bands.index("r") if "r" in bands else len(bands) // 2
    j = list(train.info["feature_names"]).index(feature)
    x_train = np.nan_to_num(np.asarray(train.features[:, band_index, j]), nan=0.0)
    x_test = np.nan_to_num(np.asarray(test.features[:, band_index, j]), nan=0.0)
    y_train = np.asarray(train.labels)
    # A monotone map of the radius to [0, 1]; the cut itself is then the
    # threshold that maximises the smaller recall on the training fields.
    centre = float(np.median(x_train))
    scale = max(float(np.std(x_train)) * 0.1, 1e-6)

    def score(x):
        return 0.5 * (1.0 + np.tanh((x - centre) / (2.0 * scale)))

    threshold = metrics.best_threshold(y_train, score(x_train), criterion="balanced")
    return score(x_test), float(threshold)


def gbt_baseline(train, test, *, seed=0, max_train=200_000):
    """
    Catalog-only gradient-boosted trees (scikit-learn) over all band features.

    Parameters
    ----------
    train, test : `~astro_starglx.dataset.SplitData`
    seed : int, optional
    max_train : int, optional
        At most this many training sources.

    Returns
    -------
    p_galaxy : `~numpy.ndarray`
    threshold : float
        Chosen on the training predictions for equal recalls.
    """
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        msg = ("the catalog-gbt baseline needs scikit-learn: "
               "pip install \"astro_starglx[test]\"")
        raise ImportError(msg) from None
    x_train = _feature_matrix(train)[:max_train]
    y_train = np.asarray(train.labels)[:max_train]
    clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1,
                                         class_weight="balanced", random_state=seed)
    clf.fit(x_train, y_train)
    threshold = metrics.best_threshold(y_train, clf.predict_proba(x_train)[:, 1])
    return clf.predict_proba(_feature_matrix(test))[:, 1], float(threshold)


def evaluate_scores(y_true, p_galaxy, *, threshold, mag_r=None, redshift=None,
                    mag_bins=None, z_bins=None, n_bootstrap=200, seed=0):
    """
    All metrics of one classifier's scores.

    Returns
    -------
    result : dict
        ``summary`` (whole set), ``bright`` (r <= 25, if ``mag_r`` given),
        ``by_magnitude`` and ``by_redshift`` (galaxies) binned reports, and
        ``roc`` / ``reliability`` curves.
    """
    y_true = np.asarray(y_true)
    out = {"summary": metrics.classification_report(y_true, p_galaxy, threshold=threshold)}
    if mag_r is not None:
        bright = mag_r <= 25.0
        out["bright"] = metrics.classification_report(y_true[bright], p_galaxy[bright],
                                                      threshold=threshold)
        bins = mag_bins if mag_bins is not None else np.arange(
            np.floor(np.nanmin(mag_r) * 2) / 2, np.nanmax(mag_r) + 0.5, 0.5)
        out["by_magnitude"] = metrics.binned_report(y_true, p_galaxy, mag_r, bins=bins,
                                                    threshold=threshold,
                                                    n_bootstrap=n_bootstrap, seed=seed)
    if redshift is not None:
        gal = y_true == 1
        z = np.asarray(redshift)
        bins = z_bins if z_bins is not None else np.array([0, 0.25, 0.5, 0.75, 1.0, 1.5,
                                                           2.0, 3.0, 6.0])
        out["by_redshift"] = metrics.binned_report(y_true[gal], p_galaxy[gal], z[gal],
                                                   bins=bins, threshold=threshold,
                                                   n_bootstrap=n_bootstrap, seed=seed)
    out["roc"] = metrics.roc_curve(y_true, p_galaxy)
    out["reliability"] = metrics.reliability_curve(y_true, p_galaxy)
    return out


def _binned_table(binned, name):
    from astropy.table import Table

    if isinstance(binned, list):
        table = Table(rows=binned)
    else:
        table = Table({k: np.asarray(v) for k, v in binned.items()})
    table.add_column(name, name="classifier", index=0)
    return table


def evaluate_model(model, dataset, *, outdir, split="test", device="cpu", baselines=False,
                   extra_models=(), n_bootstrap=200, seed=0, plots=True):
    """
    Evaluate a model (and baselines) on a data set's held-out fields.

    Parameters
    ----------
    model : str, path-like or None
        The model to evaluate (``None``: the default).
    dataset : path-like
        Directory from `astro_starglx.dataset.make_dataset`.
    outdir : path-like
        Where ``summary.ecsv``, ``by_magnitude.ecsv``, ``by_redshift.ecsv``
        and the PNG figures are written.
    split : {"test", "val"}, optional
    device : str, optional
    baselines : bool, optional
        Also run the morphology cut and the catalog-only GBT baselines.
    extra_models : sequence, optional
        More weights (e.g. ablation variants) to evaluate side by side.
    n_bootstrap : int, optional
    seed : int, optional
    plots : bool, optional
        Write PNG figures (needs matplotlib).

    Returns
    -------
    summary : `~astropy.table.Table`
        One row per classifier, metrics on all sources and on r <= 25.
    """
    from astropy.table import Table, vstack

    from .dataset import load_dataset

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    test = load_dataset(dataset, split)
    y = np.asarray(test.labels)
    mag_r = np.asarray(test.catalog["mag_r"], dtype=float)
    redshift = np.asarray(test.catalog["redshift"], dtype=float)
    scores = {}
    for m in (model, *extra_models):
        p, threshold, name = model_scores(m, test, device=device)
        if name in scores:
            # Two releases of one model (e.g. rbim-lite v1 and v2): tell them
            # apart by what the caller passed.
            label = Path(m).stem if isinstance(m, (str, os.PathLike)) else str(m)
            name = f"{name} [{label}]"
        if name in scores:
            msg = (f"extra_models gives the model {name!r} twice; pass each model once")
            raise ValueError(msg)
        scores[name] = (p, threshold)
    if baselines:
        train = load_dataset(dataset, "train")
        scores["morphology-cut"] = morphology_cut_baseline(train, test)
        scores["catalog-gbt"] = gbt_baseline(train, test, seed=seed)
    rows, by_mag, by_z, results = [], [], [], {}
    for name, (p, threshold) in scores.items():
        res = evaluate_scores(y, p, threshold=threshold, mag_r=mag_r, redshift=redshift,
                              n_bootstrap=n_bootstrap, seed=seed)
        results[name] = res
        row = {"classifier": name, "threshold": threshold}
        for key in _SUMMARY_KEYS:
            row[key] = res["summary"][key]
            row[f"{key}_r25"] = res["bright"][key]
        rows.append(row)
        by_mag.append(_binned_table(res["by_magnitude"], name))
        by_z.append(_binned_table(res["by_redshift"], name))
    summary = Table(rows=rows)
    summary.meta["split"] = split
    summary.meta["dataset"] = str(dataset)
    summary.write(outdir / "summary.ecsv", overwrite=True)
    vstack(by_mag).write(outdir / "by_magnitude.ecsv", overwrite=True)
    vstack(by_z).write(outdir / "by_redshift.ecsv", overwrite=True)
    if plots:
        _plots(results, outdir)
    return summary


def _plots(results, outdir):
    from ._optional import import_optional
    from .plotting import plot_recall_vs_magnitude, plot_reliability, plot_roc

    plt = import_optional("matplotlib.pyplot", "plot", feature="evaluation figures",
                          hint=" or pass plots=False")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in results.items():
        plot_recall_vs_magnitude(res["by_magnitude"], ax=ax, label=name)
    fig.savefig(outdir / "recall_vs_magnitude.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, res in results.items():
        fpr, tpr, _ = res["roc"]
        plot_roc(fpr, tpr, auc=res["summary"]["roc_auc"], ax=ax, label=name)
    fig.savefig(outdir / "roc.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, res in results.items():
        centers, observed, _, counts = res["reliability"]
        plot_reliability(centers, observed, counts, ax=ax)
    fig.savefig(outdir / "reliability.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
