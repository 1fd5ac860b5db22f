"""Metrics against independent references: scikit-learn, scipy and the formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hhscan.data import metrics
from scipy import stats
from sklearn.metrics import roc_auc_score

rng = np.random.default_rng(3)


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auc_matches_sklearn(ties):
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(labels * 0.7, 1.0)
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    weights = rng.uniform(0.1, 3.0, 2000)
    expected = roc_auc_score(labels, scores, sample_weight=weights)
    assert metrics.weighted_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)
    assert metrics.weighted_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_multiclass_auc_is_the_mean_one_vs_rest():
    labels = rng.integers(0, 3, 900)
    probabilities = rng.dirichlet([1, 1, 1], 900) + np.eye(3)[labels] * 0.3
    weights = rng.uniform(0.5, 2, 900)
    expected = np.mean([roc_auc_score(labels == k, probabilities[:, k], sample_weight=weights) for k in range(3)])
    assert metrics.multiclass_auc(labels, probabilities, weights) == pytest.approx(expected, abs=1e-12)
    # What the README says val_auc/test_auc are: scikit-learn's macro one-vs-rest (on normalised probabilities).
    softmax = probabilities / probabilities.sum(axis=1, keepdims=True)
    macro = roc_auc_score(labels, softmax, multi_class="ovr", average="macro", sample_weight=weights)
    assert metrics.multiclass_auc(labels, softmax, weights) == pytest.approx(macro, abs=1e-12)


def test_asimov_significance_formula_and_limits():
    s, b = 12.0, 50.0
    assert metrics.asimov_significance(s, b) == pytest.approx(np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)))
    assert metrics.asimov_significance(1e-3, 1e4) == pytest.approx(1e-3 / np.sqrt(1e4), rel=1e-3)  # s ≪ b: s/√b
    assert metrics.asimov_significance(0.0, 5.0) == 0 and metrics.asimov_significance(3.0, 0.0) == 0


def test_significance_scan_matches_a_brute_force_cut():
    labels = rng.integers(0, 2, 500).astype(bool)
    scores = rng.random(500)
    weights = rng.uniform(0.1, 1.0, 500)
    result = metrics.significance_scan(labels, scores, weights, np.array([0.0, 0.3, 0.77, 1.0]))
    thresholds, z = result.thresholds, result.z
    assert list(thresholds) == [0.0, 0.3, 0.77, 1.0]
    for cut, value in zip(thresholds, z, strict=True):
        above = scores >= cut
        s, b = weights[above & labels].sum(), weights[above & ~labels].sum()
        expected = np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)) if s > 0 and b > 0 else 0.0  # by hand
        assert value == pytest.approx(expected, rel=1e-12)
    assert z[0] > 0 and z[-1] == 0  # nothing passes a cut at 1


def test_weighted_ks_reduces_to_scipy_with_unit_weights():
    a, b = rng.normal(0, 1, 400), rng.normal(0.2, 1, 300)
    statistic, p_value = metrics.weighted_ks(a, b)
    reference = stats.ks_2samp(a, b, method="asymp")
    assert statistic == pytest.approx(reference.statistic, abs=1e-12)
    assert p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_weighted_ks_uses_the_weights():
    a = np.array([0.0, 1.0])
    b = np.array([0.0, 1.0])
    assert metrics.weighted_ks(a, b)[0] == 0
    assert metrics.weighted_ks(a, b, np.array([3.0, 1.0]), np.array([1.0, 3.0]))[0] == pytest.approx(0.5)


def test_accuracy_and_cross_entropy():
    labels = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.9, 0.4, 0.1])
    w = np.array([1.0, 2.0, 1.0, 1.0])
    assert metrics.weighted_accuracy(labels, p, w) == pytest.approx(4 / 5)
    expected = -(np.log(0.8) + 2 * np.log(0.9) + np.log(0.4) + np.log(0.9)) / 5
    assert metrics.cross_entropy(labels, p, w) == pytest.approx(expected)


def _profile_likelihood_z(s: float, b: float, relative: float) -> float:
    """The Asimov Z from its definition, numerically: n ~ Pois(μs + β), m ~ Pois(τβ) with τ = b/σ², σ = r·b, on the
    Asimov data n = s + b, m = τb; Z² = −2 ln λ(0), β profiled by scipy (no closed form used)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import xlogy

    tau = b / (relative * b) ** 2
    n, m = s + b, tau * b

    def log_likelihood(mu: float, beta: float) -> float:
        return float(xlogy(n, mu * s + beta) - (mu * s + beta) + xlogy(m, tau * beta) - tau * beta)

    profiled = minimize_scalar(lambda beta: -log_likelihood(0.0, beta), bounds=(1e-9, 10 * (s + b)), method="bounded",
                               options={"xatol": 1e-10})  # fmt: skip
    return float(np.sqrt(2 * (log_likelihood(1.0, b) + profiled.fun)))


@pytest.mark.parametrize(("s", "b", "relative"), [(12.0, 50.0, 0.1), (3.0, 400.0, 0.3), (25.0, 1.2, 0.05),
                                                  (0.5, 2000.0, 1e-3)])  # fmt: skip
def test_asimov_significance_with_background_uncertainty(s, b, relative):
    sigma = relative * b
    by_hand = np.sqrt(2 * ((s + b) * np.log((s + b) * (b + sigma**2) / (b**2 + (s + b) * sigma**2))
                           - b**2 / sigma**2 * np.log(1 + sigma**2 * s / (b * (b + sigma**2)))))  # fmt: skip
    value = float(metrics.asimov_significance(s, b, relative))
    assert value == pytest.approx(by_hand, rel=1e-6)
    assert value == pytest.approx(_profile_likelihood_z(s, b, relative), rel=1e-4)
    assert value < float(metrics.asimov_significance(s, b))  # an uncertainty only lowers Z
    assert float(metrics.asimov_significance(s, b, 1e-9)) == pytest.approx(float(metrics.asimov_significance(s, b)),
                                                                            rel=1e-6)  # fmt: skip


def test_the_best_cut_needs_enough_background_monte_carlo():
    """A spike from one background MC event passing a high cut (25 signal vs 1 WW event) is not the best cut."""
    rng_ = np.random.default_rng(11)
    signal_scores, background_scores = rng_.beta(5, 2, 400), rng_.beta(2, 5, 4000)
    background_scores[background_scores > 0.8] = 0.5  # no background above 0.8 …
    background_scores[0] = 0.95  # … but one event
    scores = np.r_[signal_scores, background_scores]
    labels = np.r_[np.ones(400, bool), np.zeros(4000, bool)]
    weights = np.r_[np.full(400, 0.1), np.full(4000, 0.05)]
    weights[400] = 0.001  # the lone event weighs little: b tiny, Z huge
    free = metrics.significance_scan(labels, scores, weights, min_background_events=0, max_background_error=None)
    guarded = metrics.significance_scan(labels, scores, weights, min_background_events=10, max_background_error=0.2)
    np.testing.assert_array_equal(free.z, guarded.z)  # the same curve; only the choice of cut differs
    best_by_hand, best_cut = 0.0, None
    for cut in np.linspace(0, 1, 101):
        above = scores >= cut
        background = weights[above & ~labels]
        s, b = weights[above & labels].sum(), background.sum()
        if len(background) >= 10 and np.sqrt((background**2).sum()) / b <= 0.2:
            z = np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s))
            if z > best_by_hand:
                best_by_hand, best_cut, best_s, best_b, best_n = z, cut, s, b, len(background)
    assert free.background_events[free.best] == 1 and free.best_z > 1.5 * best_by_hand  # the spike
    assert guarded.best_z == pytest.approx(best_by_hand, rel=1e-12)
    assert guarded.thresholds[guarded.best] == pytest.approx(best_cut)
    i = guarded.best
    assert (guarded.signal[i], guarded.background[i], guarded.background_events[i]) == pytest.approx(
        (best_s, best_b, best_n), rel=1e-9)  # fmt: skip
    above = (scores >= best_cut) & ~labels
    assert guarded.background_error[i] == pytest.approx(np.sqrt((weights[above] ** 2).sum()) / weights[above].sum())
    described = guarded.describe()
    assert f"at score ≥ {best_cut:.2f}: s {best_s:.4g}, b {best_b:.4g} ({best_n} bkg MC events" in described
    assert "guard: ≥ 10 bkg MC events, bkg MC error ≤ 20%, σ_b = 0%·b" in described
    nothing = metrics.significance_scan(labels, scores, weights, min_background_events=10**6)
    assert nothing.best is None and nothing.best_z == 0 and "Z not computed" in nothing.describe()
