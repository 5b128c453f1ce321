"""
Plots of classification results and cutouts (matplotlib optional).

Every function takes plain arrays or the dicts of `astro_starglx.metrics`,
draws on a given `~matplotlib.axes.Axes` (or a new figure), returns the
Axes or Figure and never calls ``plt.show()``. matplotlib is imported only
when a function is called; without it the error names the ``plot`` extra.

>>> import numpy as np
>>> from astro_starglx.metrics import binned_report
>>> from astro_starglx.plotting import plot_recall_vs_magnitude
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 400)
>>> p = np.clip(y + rng.normal(0, 0.4, 400), 0, 1)
>>> mag = rng.uniform(18, 26, 400)
>>> table = binned_report(y, p, mag, bins=np.arange(18, 26.5, 0.5), seed=0)
>>> ax = plot_recall_vs_magnitude(table, label="rbim-lite")   # doctest: +SKIP
>>> ax.figure.savefig("recall_vs_r.png")                       # doctest: +SKIP
"""

import numpy as np

from ._optional import import_optional

__all__ = [
    "plot_confusion_matrix",
    "plot_recall_vs_magnitude",
    "plot_roc",
    "plot_reliability",
    "plot_cutout_gallery",
]

_STRETCHES = ("asinh", "linear", "sqrt", "log")


def _pyplot():
    """Import pyplot, or say which extra to install."""
    return import_optional("matplotlib.pyplot", "plot", feature="astro_starglx.plotting")


def _axes(ax):
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _real_1d(values, name):
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        msg = (f"{name} must be a 1-D array of real numbers, got shape {arr.shape} and "
               f"dtype {arr.dtype}")
        raise ValueError(msg)
    return arr.astype(np.float64)


def plot_confusion_matrix(cm, *, class_names=("star", "galaxy"), ax=None):
    """
    Draw a confusion matrix with counts and row fractions.

    Cells are coloured by the fraction of their row (the recall of the true
    class), so that a rare class stays readable next to a common one.

    Parameters
    ----------
    cm : array-like of shape (K, K), int
        Counts, rows true class and columns predicted class, as from
        `~astro_starglx.metrics.confusion_matrix` or the ``"confusion"`` entry of
        `~astro_starglx.metrics.classification_report`.
    class_names : sequence of str, optional
        The K class names, in label order.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw on; a new figure is made if not given.

    Returns
    -------
    ax : `~matplotlib.axes.Axes`
        The Axes, holding one image and K x K text labels
        ``"count\\n(percent of row)"``.

    Raises
    ------
    ValueError
        If ``cm`` is not a square array of non-negative counts matching
        ``class_names``.
    ImportError
        If matplotlib is not installed.
    """
    counts = np.asarray(cm)
    names = [str(name) for name in class_names]
    if (counts.ndim != 2 or counts.shape[0] != counts.shape[1]
            or counts.shape[0] != len(names) or counts.dtype.kind not in "biuf"
            or not np.all(np.isfinite(counts)) or np.any(counts < 0)):
        msg = (f"cm must be a ({len(names)}, {len(names)}) array of non-negative counts "
               f"matching class_names {tuple(names)}, got shape {counts.shape} and dtype "
               f"{counts.dtype}; pass metrics.confusion_matrix(y_true, y_pred)")
        raise ValueError(msg)
    ax = _axes(ax)
    row_sums = counts.sum(axis=1, keepdims=True)
    fraction = np.zeros(counts.shape)
    np.divide(counts, row_sums, out=fraction, where=row_sums > 0)
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    k = len(names)
    for i in range(k):
        for j in range(k):
            color = "white" if fraction[i, j] > 0.5 else "black"
            count = counts[i, j]
            count_text = f"{int(count)}" if float(count).is_integer() else f"{count:.3g}"
            ax.text(j, i, f"{count_text}\n({100 * fraction[i, j]:.1f}%)", ha="center",
                    va="center", color=color)
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.figure.colorbar(image, ax=ax, label="fraction of true class")
    return ax


def plot_recall_vs_magnitude(binned, *, ax=None, label=None, xlabel="r magnitude"):
    """
    Draw star and galaxy recall against magnitude (or any binned quantity).

    Parameters
    ----------
    binned : dict or `~astropy.table.Table`
        Output of `~astro_starglx.metrics.binned_report` (columns ``bin_center``,
        ``bin_lo``, ``bin_hi``, ``recall_star``, ``recall_galaxy`` and, if
        present, ``recall_star_err`` and ``recall_galaxy_err``), or a list of
        one dict per bin with those keys.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw on; a new figure is made if not given. Call again with
        the same ``ax`` to compare classifiers.
    label : str, optional
        Prefix of the legend entries (e.g. the model name).
    xlabel : str, optional
        Label of the x axis.

    Returns
    -------
    ax : `~matplotlib.axes.Axes`
        The Axes, with two new error-bar containers (stars, then galaxies);
        the x error bars span each bin. Empty bins (NaN) are not drawn.

    Raises
    ------
    ValueError
        If a required column is missing.
    ImportError
        If matplotlib is not installed.
    """
    if isinstance(binned, (list, tuple)):
        binned = {key: np.array([row[key] for row in binned])
                  for key in (binned[0] if binned else {})}
    colnames = getattr(binned, "colnames", None) or list(binned)
    required = ("bin_center", "recall_star", "recall_galaxy")
    missing = [key for key in required if key not in colnames]
    if missing:
        msg = (f"binned must hold the columns {required} (the output of "
               f"metrics.binned_report), missing {missing}")
        raise ValueError(msg)
    x = _real_1d(binned["bin_center"], "binned['bin_center']")
    if "bin_lo" in colnames and "bin_hi" in colnames:
        xerr = np.vstack([x - _real_1d(binned["bin_lo"], "binned['bin_lo']"),
                          _real_1d(binned["bin_hi"], "binned['bin_hi']") - x])
    else:
        xerr = None
    ax = _axes(ax)
    prefix = f"{label}: " if label else ""
    markers = {"star": "*", "galaxy": "o"}
    for name in ("star", "galaxy"):
        y = _real_1d(binned[f"recall_{name}"], f"binned['recall_{name}']")
        err_key = f"recall_{name}_err"
        yerr = _real_1d(binned[err_key], f"binned['{err_key}']") if err_key in colnames else None
        if yerr is not None and not np.any(np.isfinite(yerr)):
            yerr = None
        if yerr is not None:
            yerr = np.where(np.isfinite(yerr), yerr, 0.0)
        good = np.isfinite(y)
        ax.errorbar(x[good], y[good],
                    yerr=None if yerr is None else yerr[good],
                    xerr=None if xerr is None else xerr[:, good],
                    marker=markers[name], linestyle="-", capsize=2,
                    label=f"{prefix}{name} recall")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recall (completeness)")
    ax.legend(loc="lower left")
    return ax


def plot_roc(fpr, tpr, *, auc=None, ax=None, label=None):
    """
    Draw a ROC curve (galaxy recall against star contamination).

    Parameters
    ----------
    fpr, tpr : array-like of shape (M,), float
        False- and true-positive rates from `~astro_starglx.metrics.roc_curve`.
    auc : float, optional
        Area under the curve, shown in the legend.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw on; a new figure is made if not given. Call again with
        the same ``ax`` to overlay classifiers: the chance diagonal is drawn
        once.
    label : str, optional
        Legend label of the curve.

    Returns
    -------
    ax : `~matplotlib.axes.Axes`
        The Axes, with the curve and the dashed chance line (``gid="chance"``).

    Raises
    ------
    ValueError
        If ``fpr`` and ``tpr`` are not 1-D arrays of the same length in [0, 1].
    ImportError
        If matplotlib is not installed.
    """
    x = _real_1d(fpr, "fpr")
    y = _real_1d(tpr, "tpr")
    if x.size != y.size or x.size == 0:
        msg = (f"fpr and tpr must have the same non-zero length, got {x.size} and {y.size}; "
               f"pass the first two outputs of metrics.roc_curve")
        raise ValueError(msg)
    if not (np.all((x >= 0) & (x <= 1)) and np.all((y >= 0) & (y <= 1))):
        msg = "fpr and tpr must be rates in [0, 1]; pass the outputs of metrics.roc_curve"
        raise ValueError(msg)
    ax = _axes(ax)
    if not any(line.get_gid() == "chance" for line in ax.get_lines()):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, gid="chance")
    text = label or ""
    if auc is not None:
        text = f"{text} (AUC = {float(auc):.4f})" if text else f"AUC = {float(auc):.4f}"
    ax.plot(x, y, drawstyle="steps-post", label=text or None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_xlabel("false-positive rate (stars called galaxies)")
    ax.set_ylabel("true-positive rate (galaxy recall)")
    if text:
        ax.legend(loc="lower right")
    return ax


def plot_reliability(bin_centers, observed, counts=None, *, ax=None, label=None):
    """
    Draw a reliability (calibration) diagram.

    Parameters
    ----------
    bin_centers : array-like of shape (B,), float
        Probability bin centres from `~astro_starglx.metrics.reliability_curve`
        (equal-width bins).
    observed : array-like of shape (B,), float
        Observed galaxy fraction per bin; NaN (empty) bins are skipped.
    counts : array-like of shape (B,), int, optional
        Sources per bin, drawn as a step histogram in the curve's colour on a
        secondary, logarithmic y axis.
    ax : `~matplotlib.axes.Axes`, optional
        Axes to draw on; a new figure is made if not given. Call again with
        the same ``ax`` to compare classifiers: the diagonal and the
        secondary axis are shared.
    label : str, optional
        Legend label of the curve.

    Returns
    -------
    ax : `~matplotlib.axes.Axes`
        The main Axes, with the dashed diagonal of perfect calibration
        (``gid="diagonal"``) and the observed fractions. The secondary axis,
        if any, has ``gid="counts"``.

    Raises
    ------
    ValueError
        If the arrays are not 1-D or differ in length.
    ImportError
        If matplotlib is not installed.
    """
    x = _real_1d(bin_centers, "bin_centers")
    y = _real_1d(observed, "observed")
    n = None if counts is None else _real_1d(counts, "counts")
    if y.size != x.size or (n is not None and n.size != x.size):
        sizes = (x.size, y.size) + (() if n is None else (n.size,))
        msg = (f"bin_centers, observed and counts must have the same length, got {sizes}; "
               f"pass the outputs of metrics.reliability_curve")
        raise ValueError(msg)
    ax = _axes(ax)
    if not any(line.get_gid() == "diagonal" for line in ax.get_lines()):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, gid="diagonal")
    good = np.isfinite(y)
    (curve,) = ax.plot(x[good], y[good], marker="o", label=label)
    if n is not None and np.any(n > 0):
        twins = [other for other in ax.figure.axes
                 if other.get_gid() == "counts" and other.get_shared_x_axes().joined(ax, other)]
        if twins:
            twin = twins[0]
        else:
            twin = ax.twinx()
            twin.set_gid("counts")
            # log scale: classifier outputs pile up near 0 and 1 by orders of magnitude
            twin.set_yscale("log")
            twin.set_ylabel("sources per bin")
            # the curves above the histograms
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
        half = 0.5 / x.size
        edges = np.concatenate((x - half, [x[-1] + half]))
        twin.stairs(n, edges, baseline=None, color=curve.get_color(), alpha=0.4)
        top = max(10 * np.max(n), twin.get_ylim()[1] if twins else 0)
        twin.set_ylim(0.5, top)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("predicted p_galaxy")
    ax.set_ylabel("observed galaxy fraction")
    if label:
        ax.legend(loc="upper left")
    return ax


def _stretch(name):
    from astropy.visualization import AsinhStretch, LinearStretch, LogStretch, SqrtStretch

    return {"asinh": AsinhStretch, "linear": LinearStretch, "sqrt": SqrtStretch,
            "log": LogStretch}[name]()


def _interval(interval):
    from astropy.visualization import MinMaxInterval, PercentileInterval, ZScaleInterval

    if interval == "zscale":
        return ZScaleInterval()
    if interval == "minmax":
        return MinMaxInterval()
    return PercentileInterval(float(interval))


def _normalized(image, stretch, interval):
    """The stamp scaled to [0, 1] for display; masked pixels (NaN) stay NaN."""
    from astropy.visualization import ImageNormalize

    finite = np.isfinite(image)
    if not finite.any():
        return np.full(image.shape, np.nan)
    vmin, vmax = interval.get_limits(image[finite])
    if not vmax > vmin:  # a flat stamp; avoid a zero range
        vmin, vmax = vmin - 0.5, vmin + 0.5
    norm = ImageNormalize(vmin=vmin, vmax=vmax, stretch=stretch, clip=True)
    out = np.full(image.shape, np.nan)
    out[finite] = norm(image[finite])
    return out


def plot_cutout_gallery(stamps, *, labels=None, bands=None, n_max=16, stretch="asinh",
                        interval=99.5):
    """
    Draw a gallery of cutout stamps.

    Parameters
    ----------
    stamps : array-like of shape (N, C, H, W) or (N, H, W), float
        Cutouts, as from the cutout extraction; NaN pixels are drawn blank.
    labels : sequence of str, optional
        One label per source (e.g. ``"galaxy, p=0.98"``).
    bands : sequence of str, optional
        Names of the C bands, in channel order (``meta["bands"]``).
    n_max : int, optional
        At most the first ``n_max`` sources are drawn.
    stretch : {"asinh", "linear", "sqrt", "log"}, optional
        Display stretch (`astropy.visualization`).
    interval : float or {"zscale", "minmax"}, optional
        Display limits per stamp and band: the central percentile of the
        pixels with `~astropy.visualization.PercentileInterval` (the default
        99.5 keeps the profile of a bright core visible), the sky-oriented
        `~astropy.visualization.ZScaleInterval` (faint sources), or the full
        range.

    Returns
    -------
    fig : `~matplotlib.figure.Figure`
        One-band stamps fill a near-square grid, one panel per source titled
        by its label; multi-band stamps get one row per source and one
        column per band, the columns titled by band and the rows by label.

    Raises
    ------
    ValueError
        If ``stamps`` has the wrong shape, ``labels`` or ``bands`` the wrong
        length, ``n_max`` is not a positive integer, or ``stretch`` or
        ``interval`` is unknown.
    ImportError
        If matplotlib is not installed.
    """
    data = np.asarray(stamps)
    if data.ndim == 3:
        data = data[:, None]
    if data.ndim != 4 or data.shape[0] == 0 or data.dtype.kind not in "biuf":
        msg = (f"stamps must be a real array of shape (N, C, H, W) or (N, H, W) with N >= 1, "
               f"got shape {np.shape(stamps)} and dtype {data.dtype}")
        raise ValueError(msg)
    n_src, n_band = data.shape[:2]
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        msg = f"n_max must be a positive integer, got {n_max!r}"
        raise ValueError(msg)
    if stretch not in _STRETCHES:
        msg = f"stretch must be one of {_STRETCHES}, got {stretch!r}"
        raise ValueError(msg)
    if interval not in ("zscale", "minmax"):
        try:
            ok = 0.0 < float(interval) <= 100.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            msg = (f"interval must be 'zscale', 'minmax' or a percentile in (0, 100], "
                   f"got {interval!r}")
            raise ValueError(msg)
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != n_src:
            msg = f"labels must hold one label per stamp ({n_src}), got {len(labels)}"
            raise ValueError(msg)
    if bands is not None:
        bands = [str(band) for band in bands]
        if len(bands) != n_band:
            msg = (f"bands must name the {n_band} channels of stamps, got {len(bands)} "
                   f"names {bands}")
            raise ValueError(msg)
    plt = _pyplot()
    n_show = min(n_src, int(n_max))
    data = data[:n_show].astype(np.float64)
    stretch_obj = _stretch(stretch)
    interval_obj = _interval(interval)

    if n_band == 1:
        n_cols = int(np.ceil(np.sqrt(n_show)))
        n_rows = int(np.ceil(n_show / n_cols))
    else:
        n_rows, n_cols = n_show, n_band
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n_show):
        for c in range(n_band):
            if n_band == 1:
                ax = axes.flat[i]
            else:
                ax = axes[i, c]
            ax.imshow(_normalized(data[i, c], stretch_obj, interval_obj), origin="lower",
                      cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if n_band == 1:
                title = labels[i] if labels is not None else (bands[0] if bands else None)
                if title:
                    ax.set_title(title, fontsize="small")
            else:
                if i == 0 and bands is not None:
                    ax.set_title(bands[c], fontsize="small")
                if c == 0 and labels is not None:
                    ax.set_ylabel(labels[i], fontsize="small")
    for ax in axes.flat[n_show if n_band == 1 else axes.size:]:
        ax.set_axis_off()
    return fig
