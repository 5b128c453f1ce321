"""The release recipe and the evaluation command on a tiny simulated data set."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("galsim")
pytest.importorskip("sklearn")

from astropy.table import Table  # noqa: E402

from astro_starglx.cli import main  # noqa: E402
from astro_starglx.dataset import make_dataset  # noqa: E402
from astro_starglx.evaluation import morphology_cut_baseline  # noqa: E402
from astro_starglx.meta import ModelMeta  # noqa: E402
from astro_starglx.preprocess import Normalization  # noqa: E402
from astro_starglx.training import TrainConfig, train_release  # noqa: E402
from astro_starglx.weights import read_meta  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    data = make_dataset(root / "data", n_stars=30, n_galaxies=60, field_size=192,
                        stamp_size=15, n_workers=1, seed=3)
    weights = train_release(data, root / "run", config=TrainConfig(epochs=2, batch_size=16),
                            device="cpu", command="pytest", progress=False)
    return data, weights


def test_exported_meta_is_complete(trained):
    data, weights = trained
    meta = read_meta(weights)
    assert isinstance(meta, ModelMeta)
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    info = json.loads((data / "dataset.json").read_text())
    assert meta.name == "rbim-lite"
    assert meta.stamp_size == 15 and meta.bands[0] == "NUV"
    assert list(meta.bands) == info["bands"]
    assert list(meta.feature_names) == info["feature_names"]
    assert meta.pixel_scale == info["pixel_scale"]
    assert isinstance(meta.normalization, Normalization)
    assert meta.normalization.shape == (len(meta.bands), len(meta.feature_names))
    assert meta.architecture["n_bands"] == len(meta.bands)
    assert 0.0 < meta.threshold < 1.0 and meta.temperature > 0
    assert meta.recipe["command"] == "pytest"
    assert meta.recipe["data_seed"] == info["seed"] == 3
    assert meta.recipe["config"]["epochs"] == 2
    # The data set's recipe (its DatasetConfig record), per-field variations included.
    assert meta.recipe["dataset"] == info["config"]
    for key in ("psf_scale_range", "psf_models", "exptime_scale_range", "galaxy_size_range",
                "sersic_fraction", "colour_scatter", "position_jitter"):
        assert meta.recipe["dataset"][key] == info[key], key
    test = meta.metrics["test"]["all"]
    assert test["n_star"] + test["n_galaxy"] > 0
    assert 0.0 <= test["recall_star"] <= 1.0


def test_morphology_cut_threshold_is_tuned():
    """The size cut is tuned on the training split (not a fixed 0.5 score)."""
    def split(n_star, n_galaxy, seed):
        rng = np.random.default_rng(seed)
        radius = np.concatenate([rng.uniform(0.9, 1.1, n_star), rng.uniform(1.5, 3.0, n_galaxy)])
        features = rng.normal(0.0, 1.0, (len(radius), 7, 5))
        features[:, 3, 3] = radius  # band r, feature "radius"
        return SimpleNamespace(
            info={"bands": ["NUV", "u", "g", "r", "i", "z", "y"],
                  "feature_names": ["mag", "mag_err", "concentration", "radius", "ellipticity"]},
            features=features, labels=np.repeat([0, 1], [n_star, n_galaxy]))

    train, test = split(30, 70, seed=0), split(20, 50, seed=1)
    p_galaxy, threshold = morphology_cut_baseline(train, test)
    assert p_galaxy.shape == (70,) and np.all((p_galaxy >= 0) & (p_galaxy <= 1))
    # with 70 % galaxies the median radius is a galaxy's: the cut lies far below 0.5
    assert isinstance(threshold, float) and 0.0 < threshold < 0.1
    galaxy = p_galaxy >= threshold
    assert np.all(galaxy == (test.labels == 1))  # both recalls are 1 on separable data
    assert np.mean(test.labels[p_galaxy >= 0.5] == 1) == 1.0
    assert np.sum(p_galaxy >= 0.5) < 50  # the fixed 0.5 cut would lose galaxies


def test_evaluate_command(trained, tmp_path):
    data, weights = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--model", str(weights), "--outdir", str(out),
                 "--baselines"]) == 0
    summary = Table.read(out / "summary.ecsv")
    assert list(summary["classifier"]) == ["rbim-lite", "morphology-cut", "catalog-gbt"]
    for key in ("recall_star", "recall_galaxy", "purity_star", "roc_auc", "brier", "ece"):
        assert np.all((summary[key] >= 0) & (summary[key] <= 1))
    by_mag = Table.read(out / "by_magnitude.ecsv")
    assert {"bin_lo", "bin_hi", "recall_star", "recall_star_err"} <= set(by_mag.colnames)
    by_z = Table.read(out / "by_redshift.ecsv")
    assert np.all(by_z["n_star"] == 0)  # the redshift table is galaxies only
    for png in ("recall_vs_magnitude.png", "roc.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluate_refuses_incompatible_model(trained, tiny_meta, tmp_path):
    data, _ = trained
    from astro_starglx.evaluation import evaluate_model
    from astro_starglx.model import build_model
    from astro_starglx.weights import save_weights

    meta = dict(tiny_meta, stamp_size=17, name="wide")
    path = tmp_path / "wide.safetensors"
    save_weights(path, build_model(meta["architecture"]).state_dict(), meta)
    with pytest.raises(ValueError, match="reads stamp_size=17 but the data set has 15"):
        evaluate_model(path, data, outdir=tmp_path / "out", plots=False)


def test_evaluate_two_releases_of_one_model(trained, tmp_path):
    """Two files of one model name get one row each, told apart by file name."""
    import shutil

    from astro_starglx.evaluation import evaluate_model

    data, weights = trained
    copy = tmp_path / "rbim-lite-old.safetensors"
    shutil.copy(weights, copy)
    summary = evaluate_model(weights, data, outdir=tmp_path / "out", plots=False,
                             extra_models=[copy])
    assert list(summary["classifier"]) == ["rbim-lite", "rbim-lite [rbim-lite-old]"]
    # Same weights, same scores.
    assert summary["roc_auc"][0] == summary["roc_auc"][1]
    with pytest.raises(ValueError, match="gives the model .* twice"):
        evaluate_model(weights, data, outdir=tmp_path / "out", plots=False,
                       extra_models=[copy, copy])


@pytest.fixture(scope="module")
def user_catalog():
    """A labelled field as a user has it: catalog (label, mag_r, redshift) + images."""
    from astro_starglx.simulate import simulate_field

    images, truth = simulate_field(shape=(192, 192), seed=5, n_stars=20, n_galaxies=25)
    catalog = Table({"ra": truth["ra"], "dec": truth["dec"], "label": truth["label"],
                     "mag_r": truth["mag_r"], "redshift": truth["redshift"]})
    return catalog, images


def test_evaluate_catalog_tables_and_figures(trained, user_catalog, tmp_path):
    from astro_starglx.evaluation import evaluate_catalog

    _, weights = trained
    catalog, images = user_catalog
    before = catalog.copy()
    out = tmp_path / "cat-eval"
    summary = evaluate_catalog(weights, catalog, images, outdir=out, n_bootstrap=20)
    assert np.all(catalog["ra"] == before["ra"]) and catalog.colnames == before.colnames
    assert list(summary["classifier"]) == ["rbim-lite"]
    assert summary["n_star"][0] + summary["n_galaxy"][0] == len(catalog)
    assert summary.meta["mag"] == "mag_r" and summary.meta["n_dropped"] == 0
    assert "recall_star_r25" in summary.colnames
    by_mag = Table.read(out / "by_magnitude.ecsv")
    assert {"bin_lo", "bin_hi", "recall_star", "recall_star_err"} <= set(by_mag.colnames)
    assert (out / "by_redshift.ecsv").is_file()
    for png in ("recall_vs_magnitude.png", "roc.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000


def test_evaluate_catalog_fields_and_measured_magnitudes(trained, user_catalog, tmp_path):
    from astro_starglx.evaluation import evaluate_catalog

    _, weights = trained
    catalog, images = user_catalog
    bare = catalog["ra", "dec", "label"]
    summary = evaluate_catalog(weights, [bare, bare], [images, images],
                               outdir=tmp_path / "two", plots=False, n_bootstrap=10,
                               extra_models=[weights])
    assert summary.meta["mag"] == "measured mag_r"
    assert summary["n_star"][0] + summary["n_galaxy"][0] == 2 * len(catalog)
    assert len(summary) == 2 and summary["roc_auc"][0] == summary["roc_auc"][1]
    assert not (tmp_path / "two" / "by_redshift.ecsv").exists()
    with pytest.raises(ValueError, match="mag_column 'mag_i' is not in the catalog"):
        evaluate_catalog(weights, bare, images, outdir=tmp_path / "x", mag_column="mag_i")


def test_gbt_baseline_skips_features_never_measured():
    """A column with no finite training value (psf_gamma of a band that always fell back)."""
    from astro_starglx.evaluation import gbt_baseline

    rng = np.random.default_rng(5)

    def split(n):
        labels = rng.integers(0, 2, n)
        features = rng.normal(size=(n, 2, 3)).astype(np.float32)
        features[:, 0, 0] += 3.0 * labels  # separable in one column
        features[:, 1, 2] = np.nan  # never measured
        return SimpleNamespace(features=features, labels=labels)

    train, test = split(400), split(200)
    p, threshold = gbt_baseline(train, test)
    assert p.shape == (200,) and np.all(np.isfinite(p)) and 0 < threshold < 1
    assert np.mean((p > threshold) == test.labels) > 0.9
