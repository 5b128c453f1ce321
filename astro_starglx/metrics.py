"""
Metrics for binary star/galaxy classification (numpy only).

Labels are integers, ``0`` for a star and ``1`` for a galaxy; the strings
``"star"`` and ``"galaxy"`` (any case, as in the ``class`` column written by
`~astro_starglx.StarGalaxyClassifier.classify`) and booleans (``True`` =
galaxy) are accepted and converted. Scores are ``p_galaxy`` in [0, 1], and a
source is predicted to be a galaxy when ``p_galaxy >= threshold``, the same
rule as the classifier.

Purity is the astronomers' name for precision: the fraction of the sources
predicted to be of a class that truly are of that class. Undefined ratios (a
class with no true or no predicted member) are NaN, never a warning.

This module imports numpy only, so that training, benchmarks and the
classifier can all use it without pulling in astropy or torch.

>>> import numpy as np
>>> from astro_starglx.metrics import classification_report
>>> y = np.array([0, 0, 1, 1, 1])
>>> p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
>>> report = classification_report(y, p)
>>> report["recall_galaxy"], report["purity_galaxy"]   # 2 of 3, 2 of 3
(0.6666666666666666, 0.6666666666666666)
>>> report["confusion"]
[[1, 1], [1, 2]]
"""

import logging
import numbers

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "binned_thresholds",
    "reweight_prior",
    "confusion_matrix",
    "classification_report",
    "roc_curve",
    "roc_auc",
    "brier_score",
    "expected_calibration_error",
    "reliability_curve",
    "binned_report",
    "bootstrap_ci",
    "best_threshold",
    "fit_temperature",
    "softmax",
]

log = logging.getLogger(__name__)

#: Class names in label order: label 0 is a star, label 1 a galaxy.
CLASS_NAMES = ("star", "galaxy")

#: The rates reported per bin by `binned_report` (each with a ``*_err``).
_RATE_NAMES = ("recall_star", "recall_galaxy", "purity_star", "purity_galaxy",
               "f1_star", "f1_galaxy", "accuracy")

_LABEL_HINT = ("labels must be 0 (star) and 1 (galaxy), booleans (True = galaxy), "
               "or the strings 'star' and 'galaxy'")


# ---------------------------------------------------------------------------
# validation (public boundary only; the private cores trust their input)
# ---------------------------------------------------------------------------

def _reject_masked(arr, name):
    if isinstance(arr, np.ma.MaskedArray) and np.ma.getmaskarray(arr).any():
        n_bad = int(np.ma.getmaskarray(arr).sum())
        msg = (f"{name} must not hold masked entries, got {n_bad} masked; "
               f"select the unmasked rows first, e.g. keep = ~{name}.mask")
        raise ValueError(msg)


def _as_1d(arr, name):
    arr = np.asarray(arr)
    if arr.ndim != 1:
        extra = ""
        if arr.ndim == 2 and arr.shape[1:] == (2,):
            extra = f"; for an (N, 2) array of class probabilities pass {name}[:, 1]"
        msg = f"{name} must be a 1-D array of shape (N,), got shape {arr.shape}{extra}"
        raise ValueError(msg)
    return arr


def _as_labels(y, name="y_true"):
    """Convert labels to a 1-D int64 array of 0 (star) and 1 (galaxy)."""
    _reject_masked(y, name)
    arr = _as_1d(np.asarray(y), name)
    if arr.dtype.kind == "O":
        # object columns (e.g. from pandas) hold str or int; let numpy infer
        arr = np.asarray(arr.tolist())
        if arr.ndim != 1:
            msg = f"{name} must be a 1-D array of labels, got nested objects of shape {arr.shape}"
            raise ValueError(msg)
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if kind in "US":
        text = np.char.lower(np.char.strip(arr.astype(str)))
        is_star = text == "star"
        is_galaxy = text == "galaxy"
        bad = ~(is_star | is_galaxy)
        if bad.any():
            examples = sorted(set(arr[bad].astype(str).tolist()))[:5]
            msg = (f"{name}: {_LABEL_HINT}; got the strings {examples}. "
                   f"Map other names first, e.g. np.where(names == 'GALAXY', 1, 0)")
            raise ValueError(msg)
        return is_galaxy.astype(np.int64)
    if kind == "b":
        return arr.astype(np.int64)
    if kind in "iuf":
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            examples = np.unique(arr[bad])[:5].tolist()
            msg = (f"{name}: {_LABEL_HINT}; got the values {examples}. "
                   f"Convert your labels first, e.g. (labels == 3).astype(int)")
            raise ValueError(msg)
        return arr.astype(np.int64)
    msg = f"{name}: {_LABEL_HINT}; got an array of dtype {arr.dtype}"
    raise ValueError(msg)


def _as_probabilities(p, name="p_galaxy"):
    """Convert scores to a 1-D float64 array in [0, 1]."""
    _reject_masked(p, name)
    arr = _as_1d(np.asarray(p), name)
    if arr.dtype.kind not in "biuf":
        msg = f"{name} must hold real numbers (probabilities in [0, 1]), got dtype {arr.dtype}"
        raise ValueError(msg)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        msg = (f"{name} must be finite probabilities in [0, 1], got {n_bad} NaN or "
               f"infinite values; drop those rows first, e.g. keep = np.isfinite({name})")
        raise ValueError(msg)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        msg = (f"{name} must be probabilities in [0, 1], got values from {arr.min()!r} to "
               f"{arr.max()!r}; if these are logits, convert them first, e.g. "
               f"1 / (1 + np.exp(-logit))")
        raise ValueError(msg)
    return arr


def _check_same_length(**arrays):
    (name0, a0), *rest = arrays.items()
    for name, arr in rest:
        if len(arr) != len(a0):
            msg = (f"{name} must have the same length as {name0}, got {len(arr)} and "
                   f"{len(a0)}; pass one entry per source in both")
            raise ValueError(msg)


def _check_not_empty(arr, name):
    if arr.size == 0:
        msg = f"{name} must hold at least one source, got an empty array"
        raise ValueError(msg)


def _check_both_classes(y, name="y_true"):
    n_galaxy = int(y.sum())
    n_star = y.size - n_galaxy
    if n_star == 0 or n_galaxy == 0:
        msg = (f"{name} must hold both classes (stars, 0, and galaxies, 1), got "
               f"{n_star} stars and {n_galaxy} galaxies; this metric is undefined "
               f"for a single class")
        raise ValueError(msg)


def _check_threshold(threshold, name="threshold"):
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not np.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
        msg = (f"{name} must be a float in [0, 1] (a source is a galaxy when "
               f"p_galaxy >= {name}), got {threshold!r}")
        raise ValueError(msg)
    return float(threshold)


def _check_positive_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _labels_and_scores(y_true, p_galaxy, *, allow_empty=False):
    y = _as_labels(y_true, "y_true")
    p = _as_probabilities(p_galaxy, "p_galaxy")
    _check_same_length(y_true=y, p_galaxy=p)
    if not allow_empty:
        _check_not_empty(y, "y_true")
    return y, p


# ---------------------------------------------------------------------------
# private cores
# ---------------------------------------------------------------------------

def _safe_div(num, den):
    """``num / den`` as float64, NaN where ``den == 0``, without warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _counts(y, pred):
    """Confusion counts, (2, 2) int64: rows true star/galaxy, columns predicted."""
    return np.bincount(2 * y + pred, minlength=4).astype(np.int64).reshape(2, 2)


def _rates(c):
    """Rates from confusion counts ``c`` of shape (..., 2, 2); NaN where undefined."""
    ss, sg = c[..., 0, 0], c[..., 0, 1]
    gs, gg = c[..., 1, 0], c[..., 1, 1]
    return {
        "recall_star": _safe_div(ss, ss + sg),
        "recall_galaxy": _safe_div(gg, gs + gg),
        "purity_star": _safe_div(ss, ss + gs),
        "purity_galaxy": _safe_div(gg, sg + gg),
        # 2TP / (2TP + FP + FN): the harmonic mean of purity and recall where both
        # exist, and 0 (not NaN) when the class is never predicted correctly
        "f1_star": _safe_div(2 * ss, 2 * ss + sg + gs),
        "f1_galaxy": _safe_div(2 * gg, 2 * gg + sg + gs),
        "accuracy": _safe_div(ss + gg, ss + sg + gs + gg),
    }


def _binary_counts(y, p):
    """
    Cumulative counts at each distinct score, highest score first.

    Returns the distinct scores (descending) and, for a threshold equal to
    each, the int64 numbers of galaxies (tp) and stars (fp) with
    ``p >= threshold``.
    """
    order = np.argsort(p, kind="stable")[::-1]
    ps = p[order]
    ys = y[order]
    last = np.append(np.flatnonzero(ps[1:] != ps[:-1]), ps.size - 1)
    tp = np.cumsum(ys)[last]
    fp = last + 1 - tp
    return ps[last], tp.astype(np.int64), fp.astype(np.int64)


def _auc(y, p):
    _, tp, fp = _binary_counts(y, p)
    tp = np.concatenate(([0], tp))
    fp = np.concatenate(([0], fp))
    # twice the trapezoid area under the (fp, tp) step curve, exact in integers:
    # a tied star-galaxy pair counts one half, as in the Mann-Whitney U statistic
    twice_area = int(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])))
    return twice_area / (2.0 * tp[-1] * fp[-1])


def _bin_index(p, n_bins):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)


def _reliability_sums(y, p, n_bins):
    idx = _bin_index(p, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    return counts, sum_y, sum_p


def _ece(y, p, n_bins):
    if y.size == 0:
        return np.nan
    _, sum_y, sum_p = _reliability_sums(y, p, n_bins)
    # sum_b (n_b / N) |mean_y_b - mean_p_b| = sum_b |sum_y_b - sum_p_b| / N
    return float(np.sum(np.abs(sum_y - sum_p)) / y.size)


def _nanstd(x, axis=0):
    """Sample standard deviation (ddof=1) over finite entries, NaN below two, no warnings."""
    valid = np.isfinite(x)
    k = valid.sum(axis=axis)
    mean = _safe_div(np.where(valid, x, 0.0).sum(axis=axis), k)
    dev = np.where(valid, x - np.expand_dims(mean, axis), 0.0)
    return np.sqrt(_safe_div((dev ** 2).sum(axis=axis), np.where(k >= 2, k - 1.0, 0.0)))


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------

def confusion_matrix(y_true, y_pred):
    """
    The 2 x 2 confusion matrix of a star/galaxy classification.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels: 0 or ``"star"`` for stars, 1 or ``"galaxy"`` for galaxies.
    y_pred : array-like of shape (N,)
        Predicted labels, same encodings as ``y_true``.

    Returns
    -------
    cm : `~numpy.ndarray` of shape (2, 2), int64
        ``cm[i, j]`` is the number of sources of true class ``i`` predicted as
        class ``j`` (0 = star, 1 = galaxy). Equal to scikit-learn's
        ``confusion_matrix(y_true, y_pred, labels=[0, 1])``.

    Raises
    ------
    ValueError
        If the labels are not star/galaxy labels, not 1-D, or differ in length.

    Examples
    --------
    >>> from astro_starglx.metrics import confusion_matrix
    >>> confusion_matrix([0, 0, 1, 1, 1], ["star", "galaxy", "galaxy", "galaxy", "star"])
    array([[1, 1],
           [1, 2]])
    """
    y = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    _check_same_length(y_true=y, y_pred=pred)
    return _counts(y, pred)


def classification_report(y_true, p_galaxy, *, threshold=0.5, n_bins=15):
    """
    Summary metrics of a star/galaxy classification.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels: 0 or ``"star"`` for stars, 1 or ``"galaxy"`` for galaxies.
    p_galaxy : array-like of shape (N,), float
        Predicted probability that each source is a galaxy, in [0, 1].
    threshold : float, optional
        A source is predicted to be a galaxy when ``p_galaxy >= threshold``.
    n_bins : int, optional
        Number of equal-width probability bins for the calibration error.

    Returns
    -------
    report : dict
        Plain Python numbers (JSON-serialisable, NaN where undefined):

        ``recall_star``, ``recall_galaxy`` : float
            Fraction of the true stars (galaxies) classified as such
            (completeness).
        ``purity_star``, ``purity_galaxy`` : float
            Fraction of the sources classified as stars (galaxies) that truly
            are (precision). NaN if no source is predicted in that class.
        ``f1_star``, ``f1_galaxy`` : float
            ``2 TP / (2 TP + FP + FN)``, the harmonic mean of purity and
            recall (as scikit-learn's ``f1_score``).
        ``accuracy`` : float
            Fraction of all sources classified correctly.
        ``roc_auc`` : float
            Area under the ROC curve (`roc_auc`); NaN unless both classes occur.
        ``brier`` : float
            `brier_score`.
        ``ece`` : float
            `expected_calibration_error` with ``n_bins`` bins.
        ``n_star``, ``n_galaxy`` : int
            Numbers of true stars and galaxies.
        ``threshold`` : float
            The decision threshold used.
        ``confusion`` : list of list of int
            The (2, 2) `confusion_matrix` as nested lists
            ``[[star->star, star->galaxy], [galaxy->star, galaxy->galaxy]]``.

    Raises
    ------
    ValueError
        If the inputs are invalid (see `confusion_matrix`), ``p_galaxy`` is not
        a probability, or ``threshold`` is outside [0, 1].

    Notes
    -----
    A class with no member gives NaN for the ratios it enters, and no warning;
    an empty input gives NaN for every rate and zero counts.

    Examples
    --------
    >>> from astro_starglx.metrics import classification_report
    >>> r = classification_report([0, 0, 0, 1], [0.2, 0.3, 0.7, 0.9])
    >>> r["recall_star"], r["purity_galaxy"], r["roc_auc"]
    (0.6666666666666666, 0.5, 1.0)
    >>> r = classification_report([1, 1], [0.2, 0.9])   # no stars at all
    >>> r["recall_star"], r["recall_galaxy"], r["roc_auc"]
    (nan, 0.5, nan)
    """
    y, p = _labels_and_scores(y_true, p_galaxy, allow_empty=True)
    threshold = _check_threshold(threshold)
    n_bins = _check_positive_int(n_bins, "n_bins")
    pred = (p >= threshold).astype(np.int64)
    cm = _counts(y, pred)
    n_galaxy = int(cm[1].sum())
    n_star = int(cm[0].sum())
    report = {name: float(value) for name, value in _rates(cm).items()}
    report["roc_auc"] = float(_auc(y, p)) if n_star and n_galaxy else np.nan
    report["brier"] = float(np.mean((p - y) ** 2)) if y.size else np.nan
    report["ece"] = _ece(y, p, n_bins)
    report["n_star"] = n_star
    report["n_galaxy"] = n_galaxy
    report["threshold"] = threshold
    report["confusion"] = cm.tolist()
    return report


def roc_curve(y_true, p_galaxy):
    """
    Receiver operating characteristic curve, galaxies as the positive class.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``); both classes must occur.
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].

    Returns
    -------
    fpr : `~numpy.ndarray` of shape (M + 1,), float64
        False-positive rate, the fraction of stars with ``p_galaxy >= threshold``
        (``1 - recall_star``), increasing from 0 to 1.
    tpr : `~numpy.ndarray` of shape (M + 1,), float64
        True-positive rate, the fraction of galaxies with ``p_galaxy >= threshold``
        (``recall_galaxy``), increasing from 0 to 1.
    thresholds : `~numpy.ndarray` of shape (M + 1,), float64
        ``inf`` followed by the M distinct values of ``p_galaxy``, decreasing.

    Raises
    ------
    ValueError
        If the inputs are invalid, empty, or hold a single class.

    Notes
    -----
    Every distinct score is kept, so the result equals scikit-learn's
    ``roc_curve(y_true, p_galaxy, drop_intermediate=False)``.

    Examples
    --------
    >>> from astro_starglx.metrics import roc_curve
    >>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    >>> thr.tolist()
    [inf, 0.8, 0.4, 0.35, 0.1]
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    _check_both_classes(y)
    thresholds, tp, fp = _binary_counts(y, p)
    fpr = np.concatenate(([0], fp)) / fp[-1]
    tpr = np.concatenate(([0], tp)) / tp[-1]
    return fpr, tpr, np.concatenate(([np.inf], thresholds))


def roc_auc(y_true, p_galaxy):
    """
    Area under the ROC curve.

    The probability that a random galaxy scores higher than a random star,
    ties counting one half (the Mann-Whitney U statistic over the number of
    star-galaxy pairs).

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``); both classes must occur.
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].

    Returns
    -------
    auc : float
        In [0, 1]; 0.5 for scores unrelated to the class. Equal to
        scikit-learn's ``roc_auc_score`` (computed here exactly in integers up
        to the final division).

    Raises
    ------
    ValueError
        If the inputs are invalid, empty, or hold a single class.

    Examples
    --------
    >>> from astro_starglx.metrics import roc_auc
    >>> # pairs (star, galaxy): (0.1, 0.35) ok, (0.1, 0.8) ok, (0.4, 0.35) wrong,
    >>> # (0.4, 0.8) ok -> 3 of 4
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> roc_auc([0, 1], [0.5, 0.5])   # a tie counts one half
    0.5
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    _check_both_classes(y)
    return float(_auc(y, p))


def brier_score(y_true, p_galaxy):
    """
    Brier score: the mean squared difference of ``p_galaxy`` and the label.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].

    Returns
    -------
    brier : float
        In [0, 1]; 0 for perfect confident predictions, 0.25 for
        ``p_galaxy = 0.5`` everywhere.

    Raises
    ------
    ValueError
        If the inputs are invalid or empty.

    Examples
    --------
    >>> from astro_starglx.metrics import brier_score
    >>> brier_score([0, 1], [0.25, 0.5])   # (0.25**2 + 0.5**2) / 2
    0.15625
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    return float(np.mean((p - y) ** 2))


def reliability_curve(y_true, p_galaxy, *, n_bins=15):
    """
    Observed galaxy fraction against predicted probability, in equal-width bins.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    n_bins : int, optional
        Number of bins of width ``1 / n_bins`` over [0, 1]. Bin ``k`` holds
        ``k / n_bins <= p_galaxy < (k + 1) / n_bins``; the last bin also holds
        ``p_galaxy == 1``.

    Returns
    -------
    bin_centers : `~numpy.ndarray` of shape (n_bins,), float64
        Bin centres.
    observed_frequency : `~numpy.ndarray` of shape (n_bins,), float64
        Fraction of galaxies among the sources in each bin (NaN if empty).
    mean_predicted : `~numpy.ndarray` of shape (n_bins,), float64
        Mean ``p_galaxy`` in each bin (NaN if empty).
    counts : `~numpy.ndarray` of shape (n_bins,), int64
        Number of sources in each bin.

    Raises
    ------
    ValueError
        If the inputs are invalid or empty, or ``n_bins`` is not a positive
        integer.

    Examples
    --------
    >>> from astro_starglx.metrics import reliability_curve
    >>> centers, observed, predicted, counts = reliability_curve(
    ...     [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    >>> centers.tolist(), observed.tolist(), counts.tolist()
    ([0.25, 0.75], [0.0, 1.0], [2, 2])
    >>> predicted.round(3).tolist()
    [0.15, 0.8]
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    n_bins = _check_positive_int(n_bins, "n_bins")
    counts, sum_y, sum_p = _reliability_sums(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    return centers, _safe_div(sum_y, counts), _safe_div(sum_p, counts), counts


def expected_calibration_error(y_true, p_galaxy, *, n_bins=15):
    """
    Expected calibration error of ``p_galaxy`` in equal-width bins.

    ``ECE = sum_b (n_b / N) |observed_b - predicted_b|``, with the bins of
    `reliability_curve`: the count-weighted mean distance of the reliability
    curve from the diagonal.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    n_bins : int, optional
        Number of equal-width bins over [0, 1].

    Returns
    -------
    ece : float
        In [0, 1]; near 0 for calibrated probabilities (up to a
        finite-sample bias of order ``sqrt(n_bins / N)``).

    Raises
    ------
    ValueError
        If the inputs are invalid or empty, or ``n_bins`` is not a positive
        integer.

    Notes
    -----
    This is the calibration of the galaxy probability itself; for two
    classes it is never smaller than the top-label ECE of Guo et al. (2017),
    which bins ``max(p_star, p_galaxy)``.

    Examples
    --------
    >>> from astro_starglx.metrics import expected_calibration_error
    >>> # bin [0, 0.5): 2 sources, observed 0.0, mean p 0.15 -> 0.15
    >>> # bin [0.5, 1]: 2 sources, observed 1.0, mean p 0.8  -> 0.2
    >>> round(expected_calibration_error([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2), 6)
    0.175
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    n_bins = _check_positive_int(n_bins, "n_bins")
    return _ece(y, p, n_bins)


def _check_values(values, n):
    if isinstance(values, np.ma.MaskedArray):
        values = np.ma.filled(values.astype(np.float64), np.nan)
    arr = _as_1d(np.asarray(values), "values")
    if arr.dtype.kind not in "biuf":
        msg = f"values must hold real numbers (e.g. magnitudes), got dtype {arr.dtype}"
        raise ValueError(msg)
    if arr.size != n:
        msg = (f"values must have the same length as y_true, got {arr.size} and {n}; "
               f"pass one value per source")
        raise ValueError(msg)
    return arr.astype(np.float64)


def _check_bins(bins, values):
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        n_bins = _check_positive_int(bins, "bins")
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            msg = ("bins given as a number needs finite values to span, got no finite "
                   "value; pass explicit bin edges instead, e.g. bins=np.arange(18, 27, 0.5)")
            raise ValueError(msg)
        return np.histogram_bin_edges(finite, bins=n_bins)
    edges = np.asarray(bins)
    if (edges.ndim != 1 or edges.size < 2 or edges.dtype.kind not in "iuf"
            or not np.all(np.isfinite(edges)) or not np.all(np.diff(edges) > 0)):
        msg = (f"bins must be a positive integer or a 1-D array of at least two finite, "
               f"strictly increasing bin edges, got {bins!r}; e.g. bins=np.arange(18, 27, 0.5)")
        raise ValueError(msg)
    return edges.astype(np.float64)


def binned_report(y_true, p_galaxy, values, *, bins, threshold=0.5, n_bootstrap=200,
                  seed=None):
    """
    Recall, purity and accuracy in bins of a quantity, with bootstrap errors.

    Typically the bins are 0.5 mag wide in r, or in redshift.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    values : array-like of shape (N,), float
        The binned quantity (e.g. r magnitude) per source. NaN or masked
        values, and values outside the bins, are left out of every bin.
    bins : int or array-like of shape (n_bins + 1,)
        Bin edges, strictly increasing, or a number of equal-width bins over
        the range of the finite ``values``. As in `numpy.histogram`, each bin
        holds ``lo <= value < hi`` except the last, which also holds its upper
        edge.
    threshold : float, optional
        A source is predicted to be a galaxy when ``p_galaxy >= threshold``.
    n_bootstrap : int, optional
        Number of bootstrap resamples for the errors; 0 skips them (errors NaN).
    seed : None, int or `numpy.random.Generator`, optional
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    table : dict of `~numpy.ndarray`, each of shape (n_bins,)
        Columns of equal length, so that ``astropy.table.Table(table)`` works:

        ``bin_lo``, ``bin_hi``, ``bin_center`` : float64
            Bin edges and centres.
        ``n_star``, ``n_galaxy`` : int64
            Numbers of true stars and galaxies in the bin.
        ``recall_*``, ``purity_*``, ``f1_*`` (``_star``, ``_galaxy``), ``accuracy`` : float64
            ``recall_star``, ``recall_galaxy``, ``purity_star``,
            ``purity_galaxy``, ``f1_star``, ``f1_galaxy`` and ``accuracy``, as
            in `classification_report`, NaN where undefined in the bin.
        ``recall_star_err``, ... , ``accuracy_err`` : float64
            Bootstrap standard errors (standard deviation over resamples) of
            each of those rates; NaN without at least two defined resamples.

    Raises
    ------
    ValueError
        If the inputs are invalid or differ in length, ``bins`` is not a
        positive integer or increasing edges, or ``n_bootstrap`` is negative
        or 1.

    Notes
    -----
    Each bin is resampled on its own with replacement (a bootstrap stratified
    by bin), keeping the number of sources in the bin. The counts of the four
    (true, predicted) outcomes in a resample of ``n_b`` sources follow a
    multinomial distribution with the bin's observed fractions, so the
    resamples are drawn as multinomial counts: the same distribution as
    resampling the sources, at a cost independent of ``N``.

    A bin without a single misclassification has a bootstrap error of 0;
    quote a binomial limit there instead.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.metrics import binned_report
    >>> y = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    >>> p = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    >>> r_mag = np.array([18.2, 18.4, 18.1, 18.9, 19.3, 19.1, 19.6, 19.8])
    >>> t = binned_report(y, p, r_mag, bins=[18.0, 19.0, 20.0], seed=1)
    >>> t["n_star"].tolist(), t["n_galaxy"].tolist()
    ([2, 1], [2, 3])
    >>> t["recall_star"].tolist(), t["recall_galaxy"].round(3).tolist()
    ([1.0, 0.0], [1.0, 0.333])
    >>> float(t["recall_star_err"][0])   # no misclassified star: nothing varies
    0.0
    """
    y, p = _labels_and_scores(y_true, p_galaxy, allow_empty=True)
    v = _check_values(values, y.size)
    edges = _check_bins(bins, v)
    threshold = _check_threshold(threshold)
    n_bootstrap = _check_positive_int(n_bootstrap, "n_bootstrap", minimum=0)
    if n_bootstrap == 1:
        msg = ("n_bootstrap must be 0 (no errors) or at least 2 to estimate a standard "
               "error, got 1; the default is 200")
        raise ValueError(msg)
    n_bins = edges.size - 1

    idx = np.searchsorted(edges, v, side="right") - 1
    idx[v == edges[-1]] = n_bins - 1  # the last bin is closed, as in np.histogram
    inside = np.isfinite(v) & (idx >= 0) & (idx < n_bins)
    pred = (p >= threshold).astype(np.int64)
    cell = 4 * idx[inside] + 2 * y[inside] + pred[inside]
    counts = np.bincount(cell, minlength=4 * n_bins).reshape(n_bins, 4).astype(np.int64)

    table = {
        "bin_lo": edges[:-1].copy(),
        "bin_hi": edges[1:].copy(),
        "bin_center": 0.5 * (edges[:-1] + edges[1:]),
        "n_star": counts[:, 0] + counts[:, 1],
        "n_galaxy": counts[:, 2] + counts[:, 3],
    }
    rates = _rates(counts.reshape(n_bins, 2, 2))
    table.update(rates)

    if n_bootstrap:
        rng = np.random.default_rng(seed)
        n_in_bin = counts.sum(axis=1)
        # an empty bin draws nothing; any valid pvals will do
        pvals = np.where(n_in_bin[:, None] > 0, counts / np.maximum(n_in_bin, 1)[:, None],
                         0.25)
        resampled = rng.multinomial(n_in_bin, pvals, size=(n_bootstrap, n_bins))
        boot = _rates(resampled.reshape(n_bootstrap, n_bins, 2, 2))
        errors = {name: _nanstd(boot[name], axis=0) for name in _RATE_NAMES}
    else:
        errors = {name: np.full(n_bins, np.nan) for name in _RATE_NAMES}
    for name in _RATE_NAMES:
        table[f"{name}_err"] = errors[name]
    return table


def bootstrap_ci(metric, y_true, p_galaxy, *, n_bootstrap=1000, confidence=0.95,
                 stratified=True, seed=None):
    """
    Bootstrap percentile confidence interval of any metric.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, p_galaxy) -> float``, called with int64 labels and
        float64 probabilities, e.g. `roc_auc`, `brier_score` or
        ``lambda y, p: classification_report(y, p)["recall_star"]``.
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    n_bootstrap : int, optional
        Number of resamples (at least 2).
    confidence : float, optional
        Coverage of the interval, in (0, 1).
    stratified : bool, optional
        Resample stars and galaxies separately, keeping their numbers, so
        that metrics that need both classes (such as `roc_auc`) stay defined.
    seed : None, int or `numpy.random.Generator`, optional
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    value : float
        The metric on the full sample.
    lower, upper : float
        The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
        the metric over the resamples in which it is finite (NaN if none).

    Raises
    ------
    ValueError
        If ``metric`` is not callable, the inputs are invalid or empty, or
        ``n_bootstrap`` or ``confidence`` are out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.metrics import bootstrap_ci, roc_auc
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 500)
    >>> p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 500), 0, 1)
    >>> value, lower, upper = bootstrap_ci(roc_auc, y, p, n_bootstrap=200, seed=1)
    >>> bool(lower < value < upper)
    True
    """
    if not callable(metric):
        msg = (f"metric must be a callable metric(y_true, p_galaxy) -> float, got "
               f"{metric!r}; e.g. astro_starglx.metrics.roc_auc")
        raise ValueError(msg)
    y, p = _labels_and_scores(y_true, p_galaxy)
    n_bootstrap = _check_positive_int(n_bootstrap, "n_bootstrap", minimum=2)
    if (isinstance(confidence, bool) or not isinstance(confidence, numbers.Real)
            or not 0.0 < confidence < 1.0):
        msg = f"confidence must be a float in (0, 1), e.g. 0.95, got {confidence!r}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    value = float(metric(y, p))
    groups = [np.flatnonzero(y == k) for k in (0, 1)] if stratified else [np.arange(y.size)]
    groups = [g for g in groups if g.size]
    samples = np.empty(n_bootstrap)
    for i in range(n_bootstrap):
        take = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        samples[i] = metric(y[take], p[take])
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return value, np.nan, np.nan
    lower, upper = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return value, float(lower), float(upper)


def best_threshold(y_true, p_galaxy, *, criterion="balanced"):
    """
    The decision threshold that is best on labelled (validation) data.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``); both classes must occur.
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    criterion : {"balanced", "accuracy"}, optional
        ``"balanced"`` maximises the smaller of the two recalls (so neither
        class is sacrificed to the more numerous one); ``"accuracy"``
        maximises the fraction of correct classes.

    Returns
    -------
    threshold : float
        In [0, 1], for the rule ``galaxy if p_galaxy >= threshold``. Where a
        range of thresholds gives the same classes, the midpoint between the
        neighbouring distinct scores is returned; among equally good
        classifications, the one with the highest threshold.

    Raises
    ------
    ValueError
        If the inputs are invalid, empty or hold a single class, or
        ``criterion`` is unknown.

    Examples
    --------
    >>> from astro_starglx.metrics import best_threshold
    >>> # stars score below 0.3, galaxies above 0.4: any cut in (0.3, 0.4] separates them
    >>> best_threshold([0, 0, 1, 1, 1], [0.1, 0.3, 0.4, 0.6, 0.9])
    0.35
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    _check_both_classes(y)
    if criterion not in ("balanced", "accuracy"):
        msg = f"criterion must be 'balanced' or 'accuracy', got {criterion!r}"
        raise ValueError(msg)
    scores, tp, fp = _binary_counts(y, p)
    n_galaxy, n_star = tp[-1], fp[-1]
    # candidate k = 0 classifies everything as a star (threshold above every score)
    tp = np.concatenate(([0], tp))
    fp = np.concatenate(([0], fp))
    if criterion == "balanced":
        objective = np.minimum(tp / n_galaxy, (n_star - fp) / n_star)
    else:
        objective = (tp + n_star - fp) / y.size
    if scores[0] >= 1.0:
        objective[0] = -np.inf  # no threshold in [0, 1] lies above a score of 1
    k = int(np.argmax(objective))
    upper = 1.0 if k == 0 else scores[k - 1]
    if k == scores.size:
        return float(upper)
    lower = scores[k]
    mid = 0.5 * (upper + lower)
    # the midpoint must keep the same classes: above `lower`, not above `upper`
    return float(mid if lower < mid <= upper else upper)


def binned_thresholds(y_true, p_galaxy, values, *, edges, criterion="balanced",
                      min_per_class=30, fallback):
    """
    One decision threshold per bin of a quantity (e.g. magnitude).

    Faint sources are harder than bright ones, and a single threshold set on
    all of them trades the bright galaxies for the faint stars. Here each bin
    gets the `best_threshold` of its own sources; a bin with fewer than
    ``min_per_class`` sources of either class keeps ``fallback``.

    Parameters
    ----------
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    p_galaxy : array-like of shape (N,), float
        Predicted galaxy probabilities in [0, 1].
    values : array-like of shape (N,), float
        The binning quantity; NaN rows are not used.
    edges : sequence of float
        Increasing bin edges; the bins are ``(-inf, edges[0])``,
        ``[edges[0], edges[1])``, ..., ``[edges[-1], inf)``.
    criterion : {"balanced", "accuracy"}, optional
        As in `best_threshold`.
    min_per_class : int, optional
        Fewest stars and galaxies a bin needs for its own threshold.
    fallback : float
        Threshold of the bins with too few sources, in (0, 1).

    Returns
    -------
    thresholds : list of float
        ``len(edges) + 1`` thresholds.

    Examples
    --------
    >>> from astro_starglx.metrics import binned_thresholds
    >>> y = [0, 1] * 40
    >>> p = [0.1, 0.9] * 20 + [0.55, 0.75] * 20      # faint stars score higher
    >>> mag = [20.0] * 40 + [25.0] * 40
    >>> [round(t, 2) for t in binned_thresholds(y, p, mag, edges=[24.0], fallback=0.5,
    ...                                          min_per_class=10)]
    [0.5, 0.65]
    """
    y, p = _labels_and_scores(y_true, p_galaxy)
    values = _check_values(values, y.size)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size == 0 or not np.isfinite(edges).all() \
            or np.any(np.diff(edges) <= 0):
        msg = f"edges must be a non-empty increasing sequence of finite numbers, got {edges!r}"
        raise ValueError(msg)
    _check_threshold(fallback, "fallback")
    _check_positive_int(min_per_class, "min_per_class")
    index = np.searchsorted(edges, values, side="right")
    known = np.isfinite(values)
    out = []
    for k in range(edges.size + 1):
        sel = known & (index == k)
        if min(np.sum(y[sel] == 0), np.sum(y[sel] == 1)) < min_per_class:
            out.append(float(fallback))
        else:
            out.append(best_threshold(y[sel], p[sel], criterion=criterion))
    return out


def softmax(logits, *, temperature=1.0):
    """
    Class probabilities ``softmax(logits / temperature)`` along axis 1.

    Parameters
    ----------
    logits : array-like of shape (N, K)
    temperature : float, optional
        Calibration temperature from `fit_temperature` (``meta["temperature"]``).

    Returns
    -------
    proba : `~numpy.ndarray` of shape (N, K)
        Rows sum to one; float32 for float32 logits.

    Examples
    --------
    >>> from astro_starglx.metrics import softmax
    >>> softmax([[0.0, 0.0], [0.0, 2.0]], temperature=2.0).round(4).tolist()
    [[0.5, 0.5], [0.2689, 0.7311]]
    """
    z = np.asarray(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits, y_true, *, bounds=(1e-3, 1e3)):
    """
    Temperature that calibrates a classifier's logits.

    Finds ``T > 0`` minimising the mean negative log likelihood of
    ``softmax(logits / T)`` on labelled (validation) data; ``T > 1`` means
    the raw probabilities were overconfident. Temperature scaling (Guo et al.
    2017) keeps the ranking, so the ROC curve is unchanged.

    Parameters
    ----------
    logits : array-like of shape (N, 2), float
        Logits for (star, galaxy), as produced by the network.
    y_true : array-like of shape (N,)
        True labels (0/``"star"``, 1/``"galaxy"``).
    bounds : tuple of two floats, optional
        Search range ``(T_min, T_max)``, ``0 < T_min < T_max``.

    Returns
    -------
    temperature : float
        The fitted temperature. Calibrated probabilities are
        ``softmax(logits / temperature, axis=1)``. If the likelihood keeps
        improving to a bound (for example, perfectly separated training
        data), that bound is returned and a message is logged.

    Raises
    ------
    ValueError
        If ``logits`` is not a finite (N, 2) array, the labels are invalid,
        the lengths differ, or ``bounds`` is not an increasing positive pair.

    Notes
    -----
    For two classes the likelihood depends on the logit difference
    ``d = logit_galaxy - logit_star`` only:
    ``NLL(T) = mean(log(1 + exp(-s d / T)))`` with ``s = +1`` for galaxies and
    ``-1`` for stars. It is convex in ``1 / T``, hence unimodal in ``log T``,
    and is minimised by golden-section search in ``log T`` to a relative
    precision of about ``1e-9``.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.metrics import fit_temperature
    >>> rng = np.random.default_rng(0)
    >>> d = rng.normal(0, 3, 20000)                       # calibrated logit differences
    >>> y = (rng.random(20000) < 1 / (1 + np.exp(-d))).astype(int)
    >>> logits = np.stack([np.zeros_like(d), 2.0 * d], axis=1)   # twice overconfident
    >>> round(fit_temperature(logits, y), 1)
    2.0
    """
    _reject_masked(logits, "logits")
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] != 2 or z.dtype.kind not in "biuf":
        msg = (f"logits must be a real array of shape (N, 2) for (star, galaxy), got "
               f"shape {z.shape} and dtype {z.dtype}; for a 1-D logit difference d pass "
               f"np.stack([np.zeros_like(d), d], axis=1)")
        raise ValueError(msg)
    z = z.astype(np.float64)
    if not np.all(np.isfinite(z)):
        msg = "logits must be finite, got NaN or infinite values; drop those rows first"
        raise ValueError(msg)
    y = _as_labels(y_true, "y_true")
    _check_same_length(logits=z, y_true=y)
    _check_not_empty(y, "y_true")
    try:
        t_min, t_max = (float(b) for b in bounds)
    except (TypeError, ValueError):
        t_min = t_max = np.nan
    if not (np.isfinite(t_min) and np.isfinite(t_max) and 0.0 < t_min < t_max):
        msg = (f"bounds must be two finite floats with 0 < T_min < T_max, got {bounds!r}; "
               f"the default is (1e-3, 1e3)")
        raise ValueError(msg)

    margin = (2 * y - 1) * (z[:, 1] - z[:, 0])
    if not np.any(margin):
        return 1.0  # all logits tie: every temperature gives p = 0.5

    def nll(log_t):
        return float(np.mean(np.logaddexp(0.0, -margin * np.exp(-log_t))))

    lo, hi = np.log(t_min), np.log(t_max)
    inv_phi = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-9:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = nll(d)
    best = 0.5 * (a + b)
    # the search never evaluates the bounds themselves; compare them explicitly
    candidates = [(nll(best), best), (nll(lo), lo), (nll(hi), hi)]
    _, best = min(candidates)
    if best in (lo, hi) or b - lo < 1e-6 or hi - a < 1e-6:
        log.warning("fit_temperature: the likelihood is best at the search bound T = %.3g; "
                    "the data may be perfectly separated. Widen bounds or use more "
                    "validation data.", np.exp(best))
    return float(np.exp(best))


def reweight_prior(p_galaxy, *, star_fraction, train_star_fraction):
    """
    Galaxy probabilities under another prior star fraction (Bayes' rule).

    A classifier's posterior odds are its likelihood ratio times the prior
    odds it learned. Changing the prior multiplies the galaxy odds by
    ``[(1 - f) / f] / [(1 - f_train) / f_train]``, with ``f`` the star
    fraction of the new population (it grows by orders of magnitude toward
    low Galactic latitude and bright magnitudes) and ``f_train`` the one the
    model's probabilities assume.

    Parameters
    ----------
    p_galaxy : array_like
        Galaxy probabilities in [0, 1] (NaN passes through; 0 and 1 stay).
    star_fraction : float or array_like
        Prior fraction of stars among the sources classified, in (0, 1);
        an array (broadcast with ``p_galaxy``) gives one per source, e.g.
        by magnitude or position.
    train_star_fraction : float or array_like
        The star fraction the probabilities assume, in (0, 1). Models
        trained with a class-balanced loss (every released model and
        `~astro_starglx.adapt.fine_tune`) assume 0.5, whatever their training
        set held (`~astro_starglx.meta.ModelMeta.prior_star_fraction`).

    Returns
    -------
    p_galaxy : `~numpy.ndarray` or float
        Re-weighted galaxy probabilities (``p_star = 1 - p_galaxy``); a
        float for scalar inputs.

    Raises
    ------
    ValueError
        If a probability is outside [0, 1] or a fraction outside (0, 1).

    Examples
    --------
    >>> from astro_starglx.metrics import reweight_prior
    >>> round(reweight_prior(0.5, star_fraction=0.9, train_star_fraction=0.5), 4)
    0.1
    >>> round(reweight_prior(0.7, star_fraction=0.3, train_star_fraction=0.3), 12)
    0.7
    """
    p = np.asarray(p_galaxy, dtype=np.float64)
    finite = p[np.isfinite(p)]
    if np.isinf(p).any() or (finite.size and (finite.min() < 0.0 or finite.max() > 1.0)):
        msg = "p_galaxy must hold probabilities in [0, 1] (or NaN), got values outside"
        raise ValueError(msg)
    fractions = {}
    for key, value in (("star_fraction", star_fraction),
                       ("train_star_fraction", train_star_fraction)):
        arr = np.asarray(value, dtype=np.float64)
        if not (np.isfinite(arr).all() and (arr > 0.0).all() and (arr < 1.0).all()):
            msg = (f"{key} must be a fraction in (0, 1) (or an array of them), got {value!r}; "
                   "a prior of exactly 0 or 1 would decide every source by itself")
            raise ValueError(msg)
        fractions[key] = arr
    f, f_train = fractions["star_fraction"], fractions["train_star_fraction"]
    shift = (np.log1p(-f) - np.log(f)) - (np.log1p(-f_train) - np.log(f_train))
    with np.errstate(divide="ignore"):  # p = 0 or 1: log-odds -+inf, kept as 0 or 1
        log_odds = np.log(p) - np.log1p(-p)
    out = 0.5 * (1.0 + np.tanh(0.5 * (log_odds + shift)))  # the logistic function
    return float(out) if out.ndim == 0 else out
