"""Tests for astro_starglx.plotting (Agg backend, figures written to tmp_path)."""

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from astro_starglx import metrics  # noqa: E402
from astro_starglx.plotting import (  # noqa: E402
    plot_confusion_matrix,
    plot_cutout_gallery,
    plot_recall_vs_magnitude,
    plot_reliability,
    plot_roc,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    p = np.clip(0.5 + 0.35 * (y - 0.5) + rng.normal(0, 0.25, y.size), 0, 1)
    mag = rng.uniform(18, 26, y.size)
    return y, p, mag


def _save(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    assert path.stat().st_size > 1000
    return path


def test_confusion_matrix_plot(tmp_path, scores):
    y, p, _ = scores
    cm = metrics.confusion_matrix(y, (p >= 0.5).astype(int))
    ax = plot_confusion_matrix(cm)
    _save(ax.figure, tmp_path, "cm.png")
    (image,) = ax.get_images()
    np.testing.assert_allclose(image.get_array(), cm / cm.sum(axis=1, keepdims=True))
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 4
    assert texts[0].startswith(f"{cm[0, 0]}\n(")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["star", "galaxy"]
    # the nested list of classification_report and an existing Axes work too
    fig, ax2 = plt.subplots()
    report = metrics.classification_report(y, p)
    assert plot_confusion_matrix(report["confusion"], class_names=("S", "G"), ax=ax2) is ax2
    assert [t.get_text() for t in ax2.get_yticklabels()] == ["S", "G"]


def test_confusion_matrix_plot_empty_row():
    # no true galaxies: the row fraction is 0, not a division warning
    ax = plot_confusion_matrix([[3, 1], [0, 0]])
    np.testing.assert_allclose(ax.get_images()[0].get_array(), [[0.75, 0.25], [0, 0]])


@pytest.mark.parametrize("cm", [np.ones((2, 3)), [[1, -1], [0, 2]], np.ones(4),
                                [["a", "b"], ["c", "d"]], np.ones((3, 3))])
def test_confusion_matrix_plot_errors(cm):
    with pytest.raises(ValueError, match=r"cm must be a \(2, 2\) array of non-negative counts"):
        plot_confusion_matrix(cm)


def test_recall_vs_magnitude(tmp_path, scores):
    y, p, mag = scores
    table = metrics.binned_report(y, p, mag, bins=np.arange(18, 26.5, 0.5), seed=1)
    ax = plot_recall_vs_magnitude(table, label="model A")
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    for container, name in zip(containers, ("star", "galaxy")):
        assert container.get_label() == f"model A: {name} recall"
        assert container.has_yerr and container.has_xerr
        line = container.lines[0]
        np.testing.assert_allclose(line.get_xdata(), table["bin_center"])
        np.testing.assert_allclose(line.get_ydata(), table[f"recall_{name}"])
    # the y error bars are the bootstrap errors
    star_bars = containers[0].lines[2][1].get_segments()
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in star_bars],
                               2 * table["recall_star_err"])
    # a second classifier on the same axes
    assert plot_recall_vs_magnitude(table, ax=ax, label="model B") is ax
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 4
    assert len(ax.get_legend().get_texts()) == 4
    _save(ax.figure, tmp_path, "recall.png")


def test_recall_vs_magnitude_nan_bins_list_and_table(tmp_path):
    table_mod = pytest.importorskip("astropy.table")
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.2, 0.8, 0.6, 0.9, 0.7])
    mag = np.array([18.2, 18.4, 20.2, 20.4, 20.6])
    table = metrics.binned_report(y, p, mag, bins=[18, 19, 20, 21], n_bootstrap=0)
    # middle bin empty and no bootstrap errors: drawn without y errors, skipping the NaN
    ax = plot_recall_vs_magnitude(table)
    star, galaxy = ax.containers
    assert not star.has_yerr
    np.testing.assert_allclose(star.lines[0].get_xdata(), [18.5, 20.5])
    # an astropy Table and a list of per-bin dicts are accepted too
    rows = [{k: v[i] for k, v in table.items()} for i in range(3)]
    for binned in (table_mod.Table(table), rows):
        ax = plot_recall_vs_magnitude(binned, xlabel="redshift")
        assert ax.get_xlabel() == "redshift"
        assert len(ax.containers) == 2
    _save(ax.figure, tmp_path, "recall_nan.png")


def test_recall_vs_magnitude_error():
    with pytest.raises(ValueError, match=r"binned must hold the columns .* missing "
                                         r"\['recall_galaxy'\]"):
        plot_recall_vs_magnitude({"bin_center": [1.0], "recall_star": [0.5]})


def test_roc_plot(tmp_path, scores):
    y, p, _ = scores
    fpr, tpr, _ = metrics.roc_curve(y, p)
    auc = metrics.roc_auc(y, p)
    ax = plot_roc(fpr, tpr, auc=auc, label="model A")
    lines = ax.get_lines()
    assert len(lines) == 2                      # chance diagonal + curve
    assert lines[0].get_gid() == "chance"
    np.testing.assert_allclose(lines[1].get_xdata(), fpr)
    np.testing.assert_allclose(lines[1].get_ydata(), tpr)
    assert lines[1].get_label() == f"model A (AUC = {auc:.4f})"
    # overlaying a second curve does not repeat the diagonal
    plot_roc(fpr, tpr, ax=ax)
    assert len(ax.get_lines()) == 3
    _save(ax.figure, tmp_path, "roc.png")
    ax = plot_roc(fpr, tpr, auc=0.9)
    assert ax.get_lines()[1].get_label() == "AUC = 0.9000"


def test_roc_plot_errors():
    with pytest.raises(ValueError, match=r"fpr and tpr must have the same non-zero length"):
        plot_roc([0, 0.5, 1], [0, 1])
    with pytest.raises(ValueError, match=r"fpr and tpr must be rates in \[0, 1\]"):
        plot_roc([0, 2], [0, 1])
    with pytest.raises(ValueError, match=r"tpr must be a 1-D array of real numbers"):
        plot_roc([0, 1], [[0, 1]])


def test_reliability_plot(tmp_path):
    rng = np.random.default_rng(1)
    p = 0.6 * rng.random(2000)          # bins above 0.6 stay empty
    y = (rng.random(p.size) < p).astype(int)
    centers, observed, _, counts = metrics.reliability_curve(y, p, n_bins=40)
    assert np.any(counts == 0)
    ax = plot_reliability(centers, observed, counts, label="model A")
    diagonal, curve = ax.get_lines()
    assert diagonal.get_gid() == "diagonal"
    good = np.isfinite(observed)
    np.testing.assert_allclose(curve.get_xdata(), centers[good])
    np.testing.assert_allclose(curve.get_ydata(), observed[good])
    (twin,) = [other for other in ax.figure.axes if other is not ax]
    assert twin.get_gid() == "counts"
    (stairs,) = twin.patches
    np.testing.assert_array_equal(stairs.get_data().values, counts)
    np.testing.assert_allclose(stairs.get_data().edges, np.linspace(0, 1, 41), atol=1e-12)
    # a second classifier shares the diagonal and the counts axis
    assert plot_reliability(centers, observed, 2 * counts, ax=ax, label="model B") is ax
    assert len(ax.get_lines()) == 3
    assert len(ax.figure.axes) == 2 and len(twin.patches) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["model A", "model B"]
    _save(ax.figure, tmp_path, "reliability.png")
    # without counts: no twin axis
    fig, ax2 = plt.subplots()
    assert plot_reliability(centers, observed, ax=ax2) is ax2
    assert fig.axes == [ax2]


def test_reliability_plot_error():
    with pytest.raises(ValueError, match=r"must have the same length, got \(3, 2\)"):
        plot_reliability([0.1, 0.5, 0.9], [0.1, 0.5])
    with pytest.raises(ValueError, match=r"must have the same length, got \(2, 2, 1\)"):
        plot_reliability([0.25, 0.75], [0.1, 0.5], [3])


def _stamps(n=5, c=3, size=15):
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:size, :size] - size // 2
    source = np.exp(-(xx ** 2 + yy ** 2) / 4.0)
    return (rng.normal(0, 0.05, (n, c, size, size)) + 10 * source).astype(np.float32)


def test_cutout_gallery_multiband(tmp_path):
    stamps = _stamps()
    stamps[0, 1, 0, 0] = np.nan                  # a masked pixel
    stamps[1, 2] = 7.0                           # a flat band
    stamps[2, 0] = np.nan                        # a band with no data
    labels = [f"src {i}" for i in range(5)]
    fig = plot_cutout_gallery(stamps, labels=labels, bands=["g", "r", "i"], n_max=4)
    assert len(fig.axes) == 4 * 3
    axes = np.array(fig.axes).reshape(4, 3)
    assert [ax.get_title() for ax in axes[0]] == ["g", "r", "i"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == labels[:4]
    data = np.ma.filled(axes[0, 0].get_images()[0].get_array().astype(float), np.nan)
    assert data.shape == (15, 15)
    assert np.nanmin(data) >= 0.0 and np.nanmax(data) <= 1.0
    # the source centre is at the top of the stretch, the sky near the bottom
    assert data[7, 7] == 1.0
    assert np.nanmedian(data) < 0.5
    # NaN pixels are masked in the image, so drawn blank
    assert np.ma.getmaskarray(axes[0, 1].get_images()[0].get_array())[0, 0]
    assert np.ma.getmaskarray(axes[2, 0].get_images()[0].get_array()).all()
    flat = np.ma.filled(axes[1, 2].get_images()[0].get_array().astype(float), np.nan)
    assert np.all(np.isfinite(flat))
    _save(fig, tmp_path, "gallery.png")


@pytest.mark.parametrize(("stretch", "interval"), [("asinh", "zscale"), ("linear", "minmax"),
                                                   ("sqrt", 99.5), ("log", 90)])
def test_cutout_gallery_single_band(tmp_path, stretch, interval):
    stamps = _stamps(n=7, c=1)[:, 0]              # (N, H, W)
    fig = plot_cutout_gallery(stamps, labels=list("abcdefg"), stretch=stretch,
                              interval=interval)
    # 7 stamps in a 3 x 3 grid, the last two panels switched off
    assert len(fig.axes) == 9
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in drawn] == list("abcdefg")
    assert sum(not ax.axison for ax in fig.axes) == 2
    _save(fig, tmp_path, f"gallery_{stretch}.png")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"stamps": np.ones((2, 3))}, r"stamps must be a real array of shape \(N, C, H, W\)"),
    ({"stamps": np.ones((0, 1, 5, 5))}, r"with N >= 1, got shape \(0, 1, 5, 5\)"),
    ({"labels": ["a"]}, r"labels must hold one label per stamp \(2\), got 1"),
    ({"bands": ["g"]}, r"bands must name the 3 channels of stamps, got 1"),
    ({"n_max": 0}, r"n_max must be a positive integer, got 0"),
    ({"stretch": "hist"}, r"stretch must be one of \('asinh'"),
    ({"interval": "auto"}, r"interval must be 'zscale', 'minmax' or a percentile"),
    ({"interval": 150}, r"interval must be 'zscale', 'minmax' or a percentile"),
])
def test_cutout_gallery_errors(kwargs, match):
    kwargs.setdefault("stamps", _stamps(n=2))
    with pytest.raises(ValueError, match=match):
        plot_cutout_gallery(**kwargs)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "astro_starglx\[plot\]"'):
        plot_roc([0, 1], [0, 1])
    with pytest.raises(ImportError, match=r"astro_starglx\[plot\]"):
        plot_cutout_gallery(_stamps(n=1))
