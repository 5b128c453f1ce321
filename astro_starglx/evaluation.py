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
`evaluate_catalog` does the same on any labelled catalog + images (your own
survey), not only on a data set's folder.
"""

import logging
import os
from pathlib import Path

import numpy as np

from . import metrics

__all__ = ["evaluate_model", "evaluate_catalog", "evaluate_scores", "morphology_cut_baseline",
           "gbt_baseline", "model_scores"]

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
    logits = predict_logits(loaded.network, _model_features(meta, data), meta.normalization,
                            batch_size=batch_size, device=device)
    return calibrated_proba(logits, meta)[:, 1], meta.threshold, loaded.name


def _check_compatible(meta, info):
    for key in ("bands", "stamp_size"):
        value = getattr(meta, key)
        if list(np.atleast_1d(value)) != list(np.atleast_1d(info[key])):
            msg = (f"model {meta.name!r} reads {key}={value!r} but the data set has "
                   f"{info[key]!r}; build the data set with the model's settings")
            raise ValueError(msg)
    # A data set stores every feature; a model reads those it was trained on.
    missing = [f for f in meta.feature_names if f not in list(info["feature_names"])]
    if missing:
        msg = (f"model {meta.name!r} reads feature_names={tuple(meta.feature_names)!r} but "
               f"the data set has {info['feature_names']!r} (no {missing}); build the data "
               "set with the model's settings")
        raise ValueError(msg)


def _model_features(meta, data):
    """``data`` with the features the model reads, in its order."""
    from types import SimpleNamespace

    names = list(data.info["feature_names"])
    if list(meta.feature_names) == names:
        return data
    index = [names.index(f) for f in meta.feature_names]
    return SimpleNamespace(stamps=data.stamps, noise=data.noise,
                           features=np.asarray(data.features)[:, :, index],
                           labels=data.labels)


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
    # Columns never measured in training (a band's psf_gamma where its PSF
    # always fell back) carry nothing, and scikit-learn's binning fails on them.
    kept = np.isfinite(x_train).any(axis=0)
    clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1,
                                         class_weight="balanced", random_state=seed)
    clf.fit(x_train[:, kept], y_train)
    threshold = metrics.best_threshold(y_train, clf.predict_proba(x_train[:, kept])[:, 1])
    return clf.predict_proba(_feature_matrix(test)[:, kept])[:, 1], float(threshold)


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
    from .dataset import load_dataset

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    test = load_dataset(dataset, split)
    y = np.asarray(test.labels)
    mag_r, mag_band = _reference_mag(test.catalog, test.info["bands"])
    redshift = _redshift(test.catalog)
    scores = {}
    for m in (model, *extra_models):
        p, threshold, name = model_scores(m, test, device=device)
        _add_score(scores, name, m, p, threshold)
    if baselines:
        train = load_dataset(dataset, "train")
        scores["morphology-cut"] = morphology_cut_baseline(train, test)
        scores["catalog-gbt"] = gbt_baseline(train, test, seed=seed)
    return _write_results(scores, y, mag_r=mag_r, redshift=redshift, outdir=outdir,
                          meta={"split": split, "dataset": str(dataset), "mag": mag_band},
                          n_bootstrap=n_bootstrap, seed=seed, plots=plots)


def _add_score(scores, name, model, p, threshold):
    if name in scores:
        # Two releases of one model (e.g. rbim-lite v1 and v2): tell them
        # apart by what the caller passed.
        label = Path(model).stem if isinstance(model, (str, os.PathLike)) else str(model)
        name = f"{name} [{label}]"
    if name in scores:
        msg = (f"extra_models gives the model {name!r} twice; pass each model once")
        raise ValueError(msg)
    scores[name] = (p, threshold)


def _reference_mag(catalog, bands):
    """The magnitudes binned by: ``mag_r``, else the first band's; and the band's name."""
    names = ["r"] + [b for b in bands if b != "r"]
    for band in names:
        if f"mag_{band}" in catalog.colnames:
            return np.asarray(np.ma.filled(np.ma.asarray(catalog[f"mag_{band}"], dtype=float),
                                           np.nan)), f"mag_{band}"
    return None, None


def _redshift(catalog):
    if "redshift" not in catalog.colnames:
        return None
    z = np.asarray(np.ma.filled(np.ma.asarray(catalog["redshift"], dtype=float), np.nan))
    return z if np.isfinite(z).any() else None


def _write_results(scores, y, *, mag_r, redshift, outdir, meta, n_bootstrap, seed, plots):
    """Metrics of every classifier's scores: ECSV tables, figures and the summary."""
    from astropy.table import Table, vstack

    rows, by_mag, by_z, results = [], [], [], {}
    if mag_r is not None and not np.isfinite(mag_r).any():
        mag_r = None
    if mag_r is not None:
        finite = np.isfinite(mag_r)
        if not finite.all():
            log.info("%d of %d sources without a magnitude are left out of the magnitude "
                     "bins", int((~finite).sum()), finite.size)
    for name, (p, threshold) in scores.items():
        res = evaluate_scores(y, p, threshold=threshold, mag_r=mag_r, redshift=redshift,
                              n_bootstrap=n_bootstrap, seed=seed)
        results[name] = res
        row = {"classifier": name, "threshold": threshold}
        for key in _SUMMARY_KEYS:
            row[key] = res["summary"][key]
            if "bright" in res:
                row[f"{key}_r25"] = res["bright"][key]
        rows.append(row)
        if "by_magnitude" in res:
            by_mag.append(_binned_table(res["by_magnitude"], name))
        if "by_redshift" in res:
            by_z.append(_binned_table(res["by_redshift"], name))
    summary = Table(rows=rows)
    summary.meta.update(meta)
    summary.write(outdir / "summary.ecsv", overwrite=True)
    if by_mag:
        vstack(by_mag).write(outdir / "by_magnitude.ecsv", overwrite=True)
    if by_z:
        vstack(by_z).write(outdir / "by_redshift.ecsv", overwrite=True)
    if plots:
        _plots(results, outdir)
    return summary


def evaluate_catalog(model, catalog, images, *, outdir, label_column="label",
                     mag_column=None, extra_models=(), zeropoints=None, psf=None,
                     pixel_scale=None, device="cpu", batch_size=1024, n_bootstrap=200,
                     seed=0, plots=True, ra_column="ra", dec_column="dec"):
    """
    Evaluate a model on your own labelled catalog and images.

    The sources are extracted as ``classify()`` extracts them
    (`astro_starglx.adapt.labelled_inputs`: bands mapped by name, your
    pixel scale, the PSF given or measured), scored with the model's
    calibrated probabilities and threshold, and measured as
    `evaluate_model` measures a data set: the same ``summary.ecsv``,
    ``by_magnitude.ecsv`` (0.5 mag bins, bootstrap errors), ``by_redshift.ecsv``
    (when the catalog has a ``redshift`` column) and figures.

    Parameters
    ----------
    model : str, path-like or None
        The model (``None``: the default).
    catalog : `~astropy.table.Table` or sequence of Table
        Labelled sources with sky positions; a sequence holds one table per
        field. Never modified.
    images : mapping or sequence of mapping
        ``{band: CCDData}``, or one per field.
    outdir : path-like
        Folder for the tables and figures (created).
    label_column : str, optional
        ``"star"``/``"galaxy"``, 0/1 (1 = galaxy) or booleans.
    mag_column : str or None, optional
        Catalog column of the magnitudes binned by; ``None`` takes
        ``mag_r`` if the catalog has it, else the measured aperture
        magnitude in r (or the model's first band present).
    extra_models : sequence, optional
        More models evaluated on the same sources.
    zeropoints, psf, pixel_scale
        As in ``classify()`` (see `astro_starglx.adapt.labelled_inputs`).
    device : str, optional
    batch_size : int, optional
    n_bootstrap, seed : int, optional
        Bootstrap resamples of the binned errors and their seed.
    plots : bool, optional
        Write PNG figures (needs matplotlib).
    ra_column, dec_column : str, optional
        Sky position columns (with the defaults, ``RA``/``DEC`` and the other
        names of `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).

    Returns
    -------
    summary : `~astropy.table.Table`
        One row per model; ``*_r25`` columns are for sources with
        magnitude <= 25. ``meta["n_dropped"]`` counts labelled sources left
        out because no band had pixels at their position.

    Raises
    ------
    ValueError
        If ``mag_column`` is not in the catalog, or the errors of
        `~astro_starglx.adapt.labelled_inputs`.
    """
    from astropy.table import Table

    from .adapt import labelled_inputs
    from .inference import calibrated_proba, predict_logits
    from .weights import load_model

    tables = [catalog] if isinstance(catalog, Table) else list(catalog)
    if mag_column is not None:
        for i, cat in enumerate(tables):
            if isinstance(cat, Table) and mag_column not in cat.colnames:
                msg = (f"mag_column {mag_column!r} is not in the catalog"
                       f"{f' of field {i}' if len(tables) > 1 else ''}; available columns: "
                       f"{cat.colnames}")
                raise ValueError(msg)
    outdir = Path(outdir)
    scores, y, mag, redshift, n_dropped, mag_name = {}, None, None, None, 0, mag_column
    for m in (model, *extra_models):
        loaded = load_model(m, device=device)
        meta = loaded.meta
        data = labelled_inputs(catalog, images, meta=meta, label_column=label_column,
                               zeropoints=zeropoints, psf=psf, pixel_scale=pixel_scale,
                               ra_column=ra_column, dec_column=dec_column)
        logits = predict_logits(loaded.network, data, meta.normalization,
                                batch_size=batch_size, device=device)
        p = calibrated_proba(logits, meta)[:, 1]
        if y is None:
            y, keys = data.labels.astype(np.int64), (data.field, data.row)
            n_dropped = data.n_dropped
            mag, mag_name = _catalog_mag(tables, data, meta, mag_column)
            redshift = _per_source(tables, data, "redshift")
        elif (len(data) != len(y) or not np.array_equal(data.field, keys[0])
              or not np.array_equal(data.row, keys[1])):
            msg = (f"model {loaded.name!r} keeps other sources than {model!r} (bands the "
                   "images lack); evaluate the models separately")
            raise ValueError(msg)
        _add_score(scores, loaded.name, m, p, float(meta.threshold))
    outdir.mkdir(parents=True, exist_ok=True)
    if redshift is not None and not np.isfinite(redshift).any():
        redshift = None
    return _write_results(scores, y, mag_r=mag, redshift=redshift, outdir=outdir,
                          meta={"catalog": "user", "mag": mag_name, "n_sources": int(len(y)),
                                "n_dropped": int(n_dropped)},
                          n_bootstrap=n_bootstrap, seed=seed, plots=plots)


def _per_source(tables, data, column):
    """A catalog column at the extracted sources (NaN where a field lacks it), or None."""
    if not any(column in t.colnames for t in tables):
        return None
    out = np.full(len(data), np.nan)
    for i, cat in enumerate(tables):
        if column in cat.colnames:
            sel = data.field == i
            values = np.ma.filled(np.ma.asarray(cat[column], dtype=float), np.nan)
            out[sel] = values[data.row[sel]]
    return out


def _catalog_mag(tables, data, meta, mag_column):
    """The magnitudes to bin by, and their name (see `evaluate_catalog`)."""
    names = [mag_column] if mag_column else ["mag_r"]
    for name in names:
        values = _per_source(tables, data, name)
        if values is not None:
            return values, name
    if "mag" in meta.feature_names:
        j = list(meta.feature_names).index("mag")
        order = ["r"] + [b for b in meta.bands if b != "r"]
        for band in order:
            if band in meta.bands:
                c = list(meta.bands).index(band)
                values = np.asarray(data.features[:, c, j], dtype=float)
                if np.isfinite(values).any():
                    return values, f"measured mag_{band}"
    return None, None


def _plots(results, outdir):
    from ._optional import import_optional
    from .plotting import plot_recall_vs_magnitude, plot_reliability, plot_roc

    plt = import_optional("matplotlib.pyplot", "plot", feature="evaluation figures",
                          hint=" or pass plots=False")

    if all("by_magnitude" in res for res in results.values()):
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
