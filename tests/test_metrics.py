"""Tests for astro_starglx.metrics: hand-computed cases and scikit-learn cross-checks."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from astro_starglx import metrics
from astro_starglx.metrics import (
    best_threshold,
    binned_report,
    bootstrap_ci,
    brier_score,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    roc_auc,
    roc_curve,
)

# A small case worked out by hand (threshold 0.5, galaxy if p >= 0.5):
#   y    = star star star | gal  gal  gal  gal  gal
#   p    = 0.1  0.4  0.6  | 0.3  0.5  0.7  0.8  0.9
#   pred = S    S    G    | S    G    G    G    G
Y_HAND = np.array([0, 0, 0, 1, 1, 1, 1, 1])
P_HAND = np.array([0.1, 0.4, 0.6, 0.3, 0.5, 0.7, 0.8, 0.9])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def random_scores():
    """Imbalanced labels and informative scores with ties (rounded to 0.01)."""
    rng = np.random.default_rng(42)
    y = (rng.random(3000) < 0.7).astype(np.int64)
    p = np.round(_sigmoid(1.5 * (2 * y - 1) + rng.normal(0, 1.5, y.size)), 2)
    return y, p


# ---------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------

def test_confusion_matrix_hand():
    cm = confusion_matrix(Y_HAND, (P_HAND >= 0.5).astype(int))
    # true stars: 0.1, 0.4 -> star, 0.6 -> galaxy;  true galaxies: 0.3 -> star, 4 -> galaxy
    np.testing.assert_array_equal(cm, [[2, 1], [1, 4]])
    assert cm.dtype == np.int64
    assert cm.shape == (2, 2)


def test_classification_report_hand():
    r = classification_report(Y_HAND, P_HAND, threshold=0.5, n_bins=2)
    assert r["confusion"] == [[2, 1], [1, 4]]
    assert r["n_star"] == 3 and r["n_galaxy"] == 5
    assert r["threshold"] == 0.5
    assert r["recall_star"] == pytest.approx(2 / 3)      # 2 of 3 stars
    assert r["recall_galaxy"] == pytest.approx(4 / 5)    # 4 of 5 galaxies
    assert r["purity_star"] == pytest.approx(2 / 3)      # 2 of the 3 predicted stars
    assert r["purity_galaxy"] == pytest.approx(4 / 5)    # 4 of the 5 predicted galaxies
    assert r["f1_star"] == pytest.approx(2 / 3)          # 2*2 / (2*2 + 1 + 1)
    assert r["f1_galaxy"] == pytest.approx(0.8)          # 2*4 / (2*4 + 1 + 1)
    assert r["accuracy"] == pytest.approx(6 / 8)
    # galaxy 0.3 beats 1 star, 0.5 beats 2, 0.7/0.8/0.9 beat 3 each: 12 of 3*5 pairs
    assert r["roc_auc"] == pytest.approx(12 / 15, abs=1e-15)
    # stars 0.01 + 0.16 + 0.36 = 0.53; galaxies 0.49 + 0.25 + 0.09 + 0.04 + 0.01 = 0.88
    assert r["brier"] == pytest.approx(1.41 / 8)
    # bin [0, 0.5): p 0.1, 0.4, 0.3 -> |1 galaxy - 0.8| = 0.2
    # bin [0.5, 1]: p 0.6, 0.5, 0.7, 0.8, 0.9 -> |4 galaxies - 3.5| = 0.5;  (0.2 + 0.5) / 8
    assert r["ece"] == pytest.approx(0.7 / 8)
    expected_keys = {"recall_star", "recall_galaxy", "purity_star", "purity_galaxy",
                     "f1_star", "f1_galaxy", "accuracy", "roc_auc", "brier", "ece",
                     "n_star", "n_galaxy", "threshold", "confusion"}
    assert set(r) == expected_keys
    # plain Python numbers, ready for JSON metadata
    for key in expected_keys - {"confusion"}:
        assert type(r[key]) in (int, float), key


def test_classification_report_threshold_moves_predictions():
    # at 0.65 the star at 0.6 becomes a star and the galaxy at 0.5 too
    r = classification_report(Y_HAND, P_HAND, threshold=0.65)
    assert r["confusion"] == [[3, 0], [2, 3]]
    assert r["purity_galaxy"] == 1.0
    assert r["recall_galaxy"] == pytest.approx(3 / 5)


def test_string_and_bool_labels_are_accepted():
    names = np.where(Y_HAND == 1, "galaxy", "star")
    r_int = classification_report(Y_HAND, P_HAND)
    assert classification_report(names, P_HAND) == r_int
    assert classification_report(list(names), P_HAND) == r_int
    assert classification_report(np.char.upper(names), P_HAND) == r_int
    assert classification_report(Y_HAND.astype(bool), P_HAND) == r_int
    assert classification_report(Y_HAND.astype(float), P_HAND) == r_int
    assert classification_report(names.astype(object), P_HAND) == r_int
    assert classification_report(names.astype("S6"), P_HAND) == r_int


def test_classification_report_single_class_is_nan_without_warning():
    # only galaxies: 0.2 -> star, 0.9 -> galaxy
    r = classification_report([1, 1], [0.2, 0.9])
    assert np.isnan(r["recall_star"])
    assert r["recall_galaxy"] == 0.5
    assert r["purity_star"] == 0.0        # the one predicted star is a galaxy
    assert r["purity_galaxy"] == 1.0
    assert r["f1_star"] == 0.0            # 0 / (0 + 1 + 0)
    assert np.isnan(r["roc_auc"])
    assert r["n_star"] == 0 and r["n_galaxy"] == 2
    # only stars, none predicted a galaxy: purity_galaxy and f1_galaxy undefined
    r = classification_report(["star", "star"], [0.1, 0.2])
    assert r["recall_star"] == 1.0
    assert np.isnan(r["purity_galaxy"]) and np.isnan(r["f1_galaxy"])
    assert np.isnan(r["recall_galaxy"])


def test_classification_report_empty_input():
    r = classification_report([], [])
    assert r["n_star"] == 0 and r["n_galaxy"] == 0
    assert r["confusion"] == [[0, 0], [0, 0]]
    for key in ("recall_star", "purity_galaxy", "accuracy", "roc_auc", "brier", "ece"):
        assert np.isnan(r[key]), key


def test_roc_curve_and_auc_with_ties_hand():
    # stars 0.5, 0.2; galaxies 0.5, 0.8
    y = [0, 1, 0, 1]
    p = [0.5, 0.5, 0.2, 0.8]
    fpr, tpr, thr = roc_curve(y, p)
    # >= 0.8: 1 galaxy; >= 0.5: 2 galaxies + 1 star; >= 0.2: everything
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.5, 0.2])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    # pairs: (g0.5, s0.5) tie 1/2, (g0.5, s0.2) 1, (g0.8, *) 2 -> 3.5 / 4
    assert roc_auc(y, p) == 0.875


def test_auc_extremes():
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert roc_auc([0, 0, 1], [0.4, 0.5, 0.3]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5


def test_brier_hand():
    assert brier_score([0, 1], [0.0, 1.0]) == 0.0
    assert brier_score([0, 1], [1.0, 0.0]) == 1.0
    assert brier_score([0, 1, 1], [0.5, 0.5, 0.5]) == 0.25


def test_reliability_curve_hand():
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.3, 0.3, 0.6, 1.0]   # 1.0 falls in the last bin
    centers, observed, predicted, counts = reliability_curve(y, p, n_bins=4)
    np.testing.assert_allclose(centers, [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_array_equal(counts, [1, 2, 1, 1])
    assert counts.dtype == np.int64
    np.testing.assert_allclose(observed, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(predicted, [0.1, 0.3, 0.6, 1.0])
    # an empty bin is NaN, not a warning
    centers, observed, predicted, counts = reliability_curve([0, 1], [0.1, 0.9], n_bins=3)
    np.testing.assert_array_equal(counts, [1, 0, 1])
    assert np.isnan(observed[1]) and np.isnan(predicted[1])
    # ECE = (1 * 0.1 + 2 * 0.2 + 1 * 0.4 + 1 * 0) / 5
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(0.9 / 5)


def test_best_threshold_hand():
    # y: 4 stars, 2 galaxies.  Thresholds (galaxy if p >= t), from the top:
    #   0.9 : 1 gal, 0 star wrong -> recalls (1/2, 1),   accuracy 5/6
    #   0.6 : 1 gal, 1 star wrong -> (1/2, 3/4),          4/6
    #   0.5 : 2 gal, 1 star wrong -> (1, 3/4),            5/6
    #   0.3 : 2 gal, 2 stars wrong -> (1, 1/2),           4/6
    y = [0, 0, 0, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.6, 0.5, 0.9]
    # balanced: best min recall 3/4 at "p >= 0.5", i.e. any t in (0.3, 0.5] -> midpoint 0.4
    assert best_threshold(y, p) == pytest.approx(0.4)
    # accuracy: 5/6 at 0.9 and at 0.5; the highest threshold wins -> t in (0.6, 0.9] -> 0.75
    assert best_threshold(y, p, criterion="accuracy") == pytest.approx(0.75)
    r = classification_report(y, p, threshold=best_threshold(y, p))
    assert (r["recall_star"], r["recall_galaxy"]) == (0.75, 1.0)


def test_best_threshold_edges():
    # galaxies score lowest: everything a galaxy (t = lowest score) beats everything a star
    # only if stars are rare; here 1 star in 4 -> "all galaxy" has accuracy 3/4
    assert best_threshold([1, 1, 1, 0], [0.1, 0.2, 0.3, 0.9], criterion="accuracy") == 0.1
    # mostly stars with useless scores: "all star" (above the highest score) is most accurate
    t = best_threshold([0, 0, 0, 1], [0.6, 0.7, 0.8, 0.2], criterion="accuracy")
    assert 0.8 < t <= 1.0
    r = classification_report([0, 0, 0, 1], [0.6, 0.7, 0.8, 0.2], threshold=t)
    assert r["accuracy"] == 0.75


@pytest.mark.parametrize("criterion", ["balanced", "accuracy"])
def test_best_threshold_is_optimal_on_random_data(random_scores, criterion):
    y, p = random_scores

    def objective(t):
        r = classification_report(y, p, threshold=t)
        if criterion == "balanced":
            return min(r["recall_star"], r["recall_galaxy"])
        return r["accuracy"]

    t_best = best_threshold(y, p, criterion=criterion)
    candidates = np.concatenate([np.unique(p), np.linspace(0, 1, 101)])
    assert objective(t_best) >= max(objective(t) for t in candidates) - 1e-15


# ---------------------------------------------------------------------------
# cross-checks against scikit-learn on random data
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_report_matches_sklearn(random_scores, threshold):
    skm = pytest.importorskip("sklearn.metrics")
    y, p = random_scores
    pred = (p >= threshold).astype(int)
    r = classification_report(y, p, threshold=threshold)
    for label, name in ((0, "star"), (1, "galaxy")):
        assert r[f"recall_{name}"] == pytest.approx(skm.recall_score(y, pred, pos_label=label))
        assert r[f"purity_{name}"] == pytest.approx(
            skm.precision_score(y, pred, pos_label=label))
        assert r[f"f1_{name}"] == pytest.approx(skm.f1_score(y, pred, pos_label=label))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert abs(r["roc_auc"] - skm.roc_auc_score(y, p)) < 1e-12
    assert r["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    np.testing.assert_array_equal(confusion_matrix(y, pred),
                                  skm.confusion_matrix(y, pred, labels=[0, 1]))
    np.testing.assert_array_equal(r["confusion"], skm.confusion_matrix(y, pred))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 4000))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    # coarse rounding gives many ties
    p = np.round(np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.3, n), 0, 1), 1 + seed)
    assert abs(roc_auc(y, p) - skm.roc_auc_score(y, p)) < 1e-12
    fpr, tpr, thr = roc_curve(y, p)
    fpr_sk, tpr_sk, thr_sk = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, tpr_sk, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], thr_sk[1:])
    assert thr[0] == np.inf


def test_reliability_matches_sklearn(random_scores):
    calibration = pytest.importorskip("sklearn.calibration")
    rng = np.random.default_rng(3)
    p = rng.random(5000)           # continuous: no score sits on a bin edge
    y = (rng.random(5000) < p ** 2).astype(int)
    centers, observed, predicted, counts = reliability_curve(y, p, n_bins=10)
    prob_true, prob_pred = calibration.calibration_curve(y, p, n_bins=10)
    filled = counts > 0
    np.testing.assert_allclose(observed[filled], prob_true)
    np.testing.assert_allclose(predicted[filled], prob_pred)


# ---------------------------------------------------------------------------
# calibration and temperature scaling
# ---------------------------------------------------------------------------

def test_ece_calibrated_small_and_overconfident_large():
    rng = np.random.default_rng(7)
    p = rng.random(100_000)
    y = (rng.random(p.size) < p).astype(int)          # calibrated by construction
    assert expected_calibration_error(y, p) < 0.01
    logit = np.log(p / (1 - p))
    p_over = _sigmoid(3.0 * logit)                     # same ranking, pushed to 0 and 1
    ece_over = expected_calibration_error(y, p_over)
    assert ece_over > 0.1
    assert classification_report(y, p_over)["ece"] == pytest.approx(ece_over)
    assert roc_auc(y, p_over) == pytest.approx(roc_auc(y, p), abs=1e-12)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    rng = np.random.default_rng(11)
    n = 20_000
    d = rng.normal(0.0, 2.5, n)                        # calibrated logit differences
    y = (rng.random(n) < _sigmoid(d)).astype(int)
    offset = rng.normal(0, 5, n)                       # a common shift changes nothing
    logits = np.stack([offset, offset + t_true * d], axis=1)
    t_fit = fit_temperature(logits, y)
    assert t_fit == pytest.approx(t_true, rel=0.05)
    # the NLL at the fit is no worse than at nearby temperatures
    margin = (2 * y - 1) * (logits[:, 1] - logits[:, 0])

    def nll(t):
        return np.mean(np.logaddexp(0, -margin / t))

    assert nll(t_fit) <= min(nll(0.99 * t_fit), nll(1.01 * t_fit))


def test_fit_temperature_degenerate_cases(caplog):
    # all logits tie: nothing to fit
    assert fit_temperature(np.zeros((4, 2)), [0, 1, 0, 1]) == 1.0
    # perfectly separated: the likelihood improves all the way to the lower bound
    logits = np.array([[2.0, -2.0], [1.0, -1.0], [-1.0, 3.0]])
    with caplog.at_level(logging.WARNING, logger="astro_starglx.metrics"):
        t = fit_temperature(logits, ["star", "star", "galaxy"], bounds=(0.01, 100))
    assert t == pytest.approx(0.01, rel=1e-6)
    assert "search bound" in caplog.text


# ---------------------------------------------------------------------------
# binned reports and bootstrap errors
# ---------------------------------------------------------------------------

def test_binned_report_hand():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.9, 0.1])
    mag = np.array([18.2, 18.4, 18.1, 18.9, 19.3, 19.1, 19.6, 20.0, np.nan, 25.0])
    # bin [18, 19): 2 stars right, 2 galaxies right
    # bin [19, 20] (closed): star 0.7 -> galaxy, galaxies 0.6 right, 0.4 and 0.3 wrong
    # the NaN magnitude and the one at 25 (outside) are in no bin
    t = binned_report(y, p, mag, bins=[18.0, 19.0, 20.0], seed=0)
    np.testing.assert_array_equal(t["bin_lo"], [18.0, 19.0])
    np.testing.assert_array_equal(t["bin_hi"], [19.0, 20.0])
    np.testing.assert_array_equal(t["bin_center"], [18.5, 19.5])
    np.testing.assert_array_equal(t["n_star"], [2, 1])
    np.testing.assert_array_equal(t["n_galaxy"], [2, 3])
    assert t["n_star"].dtype == np.int64
    np.testing.assert_allclose(t["recall_star"], [1.0, 0.0])
    np.testing.assert_allclose(t["recall_galaxy"], [1.0, 1 / 3])
    # bin 2: the 2 predicted stars are galaxies; predicted galaxies are star 0.7, galaxy 0.6
    np.testing.assert_allclose(t["purity_star"], [1.0, 0.0])
    np.testing.assert_allclose(t["purity_galaxy"], [1.0, 0.5])
    np.testing.assert_allclose(t["accuracy"], [1.0, 0.25])
    # bin 1 is perfect, so every resample is perfect
    for name in ("recall_star", "recall_galaxy", "purity_star", "purity_galaxy", "accuracy"):
        assert t[f"{name}_err"][0] == 0.0
        assert t[f"{name}_err"][1] >= 0.0
    assert t["accuracy_err"][1] > 0
    lengths = {len(v) for v in t.values()}
    assert lengths == {2}


def test_binned_report_is_a_table_and_handles_empty_bins():
    table_mod = pytest.importorskip("astropy.table")
    y = np.array([0, 1, 0, 1])
    p = np.array([0.2, 0.8, 0.6, 0.9])
    z = np.array([0.1, 0.2, 2.5, 2.6])
    t = binned_report(y, p, z, bins=np.array([0.0, 1.0, 2.0, 3.0]), n_bootstrap=50, seed=3)
    assert t["n_star"][1] == 0 and t["n_galaxy"][1] == 0
    for name in ("recall_star", "purity_galaxy", "accuracy", "accuracy_err"):
        assert np.isnan(t[name][1])
    table = table_mod.Table(t)
    assert len(table) == 3
    assert "recall_galaxy_err" in table.colnames


def test_binned_report_int_bins_seed_and_no_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    mag = rng.uniform(18, 26, 500)
    t1 = binned_report(y, p, mag, bins=4, seed=5)
    t2 = binned_report(y, p, mag, bins=4, seed=5)
    for key in t1:
        np.testing.assert_array_equal(t1[key], t2[key])
    assert t1["bin_lo"][0] == mag.min() and t1["bin_hi"][-1] == mag.max()
    assert t1["n_star"].sum() + t1["n_galaxy"].sum() == 500   # max lands in the last bin
    t0 = binned_report(y, p, mag, bins=4, n_bootstrap=0)
    assert np.all(np.isnan(t0["recall_star_err"]))
    np.testing.assert_array_equal(t0["recall_star"], t1["recall_star"])
    # a masked value is left out, like NaN
    masked = np.ma.masked_array(mag, mask=np.arange(500) < 10)
    tm = binned_report(y, p, masked, bins=[18, 26], n_bootstrap=0)
    assert tm["n_star"][0] + tm["n_galaxy"][0] == 490


def test_binned_report_rates_match_classification_report():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.3, y.size), 0, 1)
    mag = rng.uniform(18, 26, y.size)
    edges = np.arange(18, 26.5, 0.5)
    t = binned_report(y, p, mag, bins=edges, threshold=0.4, n_bootstrap=0)
    for k in range(edges.size - 1):
        sel = (mag >= edges[k]) & (mag < edges[k + 1])
        r = classification_report(y[sel], p[sel], threshold=0.4)
        for name in ("recall_star", "recall_galaxy", "purity_star", "purity_galaxy",
                     "f1_star", "f1_galaxy", "accuracy"):
            assert t[name][k] == pytest.approx(r[name], nan_ok=True)


def _bin_of(n, recall, rng):
    """n stars of which a fraction `recall` is classified correctly, shuffled."""
    n_right = int(round(recall * n))
    p = np.r_[np.full(n_right, 0.1), np.full(n - n_right, 0.9)]
    return np.zeros(n, dtype=int), rng.permutation(p)


def test_bootstrap_errors_shrink_as_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    y_small, p_small = _bin_of(400, 0.8, rng)
    y_large, p_large = _bin_of(6400, 0.8, rng)
    y = np.r_[y_small, y_large]
    p = np.r_[p_small, p_large]
    mag = np.r_[np.full(400, 20.25), np.full(6400, 20.75)]
    t = binned_report(y, p, mag, bins=[20.0, 20.5, 21.0], n_bootstrap=2000, seed=4)
    err_small, err_large = t["recall_star_err"]
    # binomial standard error sqrt(r (1 - r) / n)
    assert err_small == pytest.approx(np.sqrt(0.8 * 0.2 / 400), rel=0.1)
    assert err_large == pytest.approx(np.sqrt(0.8 * 0.2 / 6400), rel=0.1)
    assert err_small / err_large == pytest.approx(4.0, rel=0.15)


def test_multinomial_bootstrap_matches_index_resampling():
    # the per-bin multinomial draw must agree with resampling the sources themselves
    rng = np.random.default_rng(9)
    n = 300
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.3, n), 0, 1)
    t = binned_report(y, p, np.zeros(n), bins=[-1.0, 1.0], n_bootstrap=3000, seed=1)
    pred = p >= 0.5
    idx = rng.integers(0, n, size=(3000, n))
    acc = (pred[idx] == y[idx]).mean(axis=1)
    assert t["accuracy_err"][0] == pytest.approx(acc.std(ddof=1), rel=0.1)


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, y.size), 0, 1)
    value, lo, hi = bootstrap_ci(roc_auc, y, p, n_bootstrap=300, seed=1)
    assert value == roc_auc(y, p)
    assert lo < value < hi
    # reproducible with a seed; a wider confidence gives a wider interval
    assert bootstrap_ci(roc_auc, y, p, n_bootstrap=300, seed=1) == (value, lo, hi)
    _, lo99, hi99 = bootstrap_ci(roc_auc, y, p, n_bootstrap=300, confidence=0.99, seed=1)
    assert lo99 <= lo and hi99 >= hi
    # stratified resampling keeps the class counts: AUC stays defined with 1 galaxy
    y1 = np.r_[np.zeros(20, int), 1]
    p1 = np.r_[rng.random(20) * 0.5, 0.9]
    assert bootstrap_ci(roc_auc, y1, p1, n_bootstrap=50, seed=0) == (1.0, 1.0, 1.0)
    # a metric that is never finite gives NaN bounds, no warning
    value, lo, hi = bootstrap_ci(lambda y, p: np.nan, y, p, n_bootstrap=10,
                                 stratified=False, seed=0)
    assert np.isnan(lo) and np.isnan(hi)


# ---------------------------------------------------------------------------
# validation: every documented error
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("y", "p", "match"), [
    ([0, 1, 2], [0.1, 0.2, 0.3], r"y_true: labels must be 0 \(star\).*got the values \[2\]"),
    (["star", "quasar"], [0.1, 0.2], r"got the strings \['quasar'\].*Map other names"),
    (np.array([1 + 0j, 0j]), [0.1, 0.2], r"got an array of dtype complex128"),
    ([0, 1], [0.1, np.nan], r"p_galaxy must be finite.*got 1 NaN or infinite"),
    ([0, 1], [0.1, 1.5], r"p_galaxy must be probabilities in \[0, 1\], got values from"),
    ([0, 1], ["a", "b"], r"p_galaxy must hold real numbers"),
    ([0, 1, 1], [0.1, 0.2], r"p_galaxy must have the same length as y_true, got 2 and 3"),
    ([[0, 1]], [0.1, 0.2], r"y_true must be a 1-D array of shape \(N,\), got shape \(1, 2\)"),
    ([0, 1], [[0.9, 0.1], [0.2, 0.8]], r"pass p_galaxy\[:, 1\]"),
    (np.ma.masked_array([0, 1], mask=[True, False]), [0.1, 0.2],
     r"y_true must not hold masked entries, got 1 masked"),
    (np.ma.masked_array([0, 1]), np.ma.masked_array([0.1, 0.2], mask=[0, 1]),
     r"p_galaxy must not hold masked entries"),
])
def test_input_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_report(y, p)


def test_nested_object_labels_error():
    y = np.empty(2, dtype=object)
    y[0], y[1] = [0, 1], [1, 0]
    with pytest.raises(ValueError, match=r"y_true must be a 1-D array of labels, got nested"):
        confusion_matrix(y, [0, 1])


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match=r"y_pred: labels must be"):
        confusion_matrix([0, 1], [0, 3])
    with pytest.raises(ValueError, match=r"y_pred must have the same length as y_true"):
        confusion_matrix([0, 1], [0])


@pytest.mark.parametrize("func", [roc_auc, roc_curve, best_threshold])
def test_single_class_errors(func):
    with pytest.raises(ValueError, match=r"y_true must hold both classes.*got 0 stars and 3"):
        func([1, 1, 1], [0.1, 0.5, 0.9])


@pytest.mark.parametrize("func", [roc_auc, brier_score, expected_calibration_error,
                                  reliability_curve])
def test_empty_errors(func):
    with pytest.raises(ValueError, match=r"y_true must hold at least one source"):
        func([], [])


@pytest.mark.parametrize("threshold", [-0.1, 1.5, np.nan, "0.5", True])
def test_threshold_errors(threshold):
    with pytest.raises(ValueError, match=r"threshold must be a float in \[0, 1\]"):
        classification_report([0, 1], [0.2, 0.8], threshold=threshold)


@pytest.mark.parametrize("n_bins", [0, 2.5, True])
def test_n_bins_errors(n_bins):
    with pytest.raises(ValueError, match=r"n_bins must be an integer >= 1"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=n_bins)
    with pytest.raises(ValueError, match=r"n_bins must be an integer >= 1"):
        reliability_curve([0, 1], [0.2, 0.8], n_bins=n_bins)


def test_binned_report_errors():
    y, p = [0, 1, 1], [0.2, 0.8, 0.4]
    with pytest.raises(ValueError, match=r"values must have the same length as y_true"):
        binned_report(y, p, [20.0, 21.0], bins=2)
    with pytest.raises(ValueError, match=r"values must hold real numbers"):
        binned_report(y, p, ["a", "b", "c"], bins=2)
    with pytest.raises(ValueError, match=r"values must be a 1-D array"):
        binned_report(y, p, np.ones((3, 2)), bins=2)
    with pytest.raises(ValueError, match=r"bins given as a number needs finite values"):
        binned_report(y, p, [np.nan] * 3, bins=2)
    for bad in ([20.0], [21.0, 20.0], [[20, 21]], [20, np.inf], ["a", "b"]):
        with pytest.raises(ValueError, match=r"bins must be a positive integer or a 1-D"):
            binned_report(y, p, [20.0, 20.5, 21.0], bins=bad)
    with pytest.raises(ValueError, match=r"bins must be an integer >= 1"):
        binned_report(y, p, [20.0, 20.5, 21.0], bins=0)
    with pytest.raises(ValueError, match=r"n_bootstrap must be 0 \(no errors\) or at least 2"):
        binned_report(y, p, [20.0, 20.5, 21.0], bins=2, n_bootstrap=1)
    with pytest.raises(ValueError, match=r"n_bootstrap must be an integer >= 0"):
        binned_report(y, p, [20.0, 20.5, 21.0], bins=2, n_bootstrap=-5)
    with pytest.raises(ValueError, match=r"threshold must be a float"):
        binned_report(y, p, [20.0, 20.5, 21.0], bins=2, threshold=2)


def test_bootstrap_ci_errors():
    y, p = [0, 1, 1], [0.2, 0.8, 0.4]
    with pytest.raises(ValueError, match=r"metric must be a callable"):
        bootstrap_ci("roc_auc", y, p)
    with pytest.raises(ValueError, match=r"n_bootstrap must be an integer >= 2"):
        bootstrap_ci(roc_auc, y, p, n_bootstrap=1)
    for bad in (0.0, 1.0, 95, "0.9"):
        with pytest.raises(ValueError, match=r"confidence must be a float in \(0, 1\)"):
            bootstrap_ci(roc_auc, y, p, confidence=bad)
    with pytest.raises(ValueError, match=r"y_true must hold at least one source"):
        bootstrap_ci(roc_auc, [], [])


def test_best_threshold_criterion_error():
    with pytest.raises(ValueError, match=r"criterion must be 'balanced' or 'accuracy', got 'f1'"):
        best_threshold([0, 1], [0.2, 0.8], criterion="f1")


def test_fit_temperature_errors():
    y = [0, 1]
    with pytest.raises(ValueError, match=r"logits must be a real array of shape \(N, 2\).*"
                                         r"got shape \(2,\)"):
        fit_temperature([0.5, 1.0], y)
    with pytest.raises(ValueError, match=r"logits must be a real array of shape \(N, 2\)"):
        fit_temperature(np.zeros((2, 3)), y)
    with pytest.raises(ValueError, match=r"logits must be finite"):
        fit_temperature([[0.0, np.inf], [0.0, 1.0]], y)
    with pytest.raises(ValueError, match=r"logits must not hold masked entries"):
        fit_temperature(np.ma.masked_array(np.zeros((2, 2)), mask=[[1, 0], [0, 0]]), y)
    with pytest.raises(ValueError, match=r"y_true must have the same length as logits"):
        fit_temperature(np.zeros((3, 2)), y)
    with pytest.raises(ValueError, match=r"y_true must hold at least one source"):
        fit_temperature(np.zeros((0, 2)), [])
    for bad in ((0.0, 10.0), (5.0, 1.0), (1.0,), None, (1.0, np.inf)):
        with pytest.raises(ValueError, match=r"bounds must be two finite floats"):
            fit_temperature(np.zeros((2, 2)), y, bounds=bad)


def test_metrics_imports_numpy_only():
    # import the module file alone: the package __init__ pulls in astropy by design
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('m', {metrics.__file__!r}); "
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
            "bad = [m for m in ('astropy', 'torch', 'photutils', 'sklearn', 'scipy', "
            "'matplotlib') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_binned_thresholds_per_bin_and_fallback():
    from astro_starglx.metrics import binned_thresholds

    rng = np.random.default_rng(1)
    n = 400
    mag = np.repeat([20.0, 25.0, 28.0], [n, n, 10])
    y = np.tile([0, 1], (2 * n + 10) // 2)
    # bright: separated around 0.3; faint: around 0.7; the last bin too small
    p = np.where(mag < 24, np.where(y == 1, 0.5, 0.1), np.where(y == 1, 0.9, 0.5))
    p = np.clip(p + rng.normal(0, 0.02, p.size), 0, 1)
    t = binned_thresholds(y, p, mag, edges=[24.0, 26.0], fallback=0.42)
    assert 0.15 < t[0] < 0.45 and 0.55 < t[1] < 0.85 and t[2] == 0.42
    # NaN values are left out; bad edges are refused
    t_nan = binned_thresholds(y, p, np.where(mag > 26, np.nan, mag), edges=[24.0, 26.0],
                              fallback=0.42)
    assert t_nan == t
    with pytest.raises(ValueError, match="edges must be a non-empty increasing"):
        binned_thresholds(y, p, mag, edges=[26.0, 24.0], fallback=0.5)
