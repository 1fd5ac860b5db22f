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
    thresholds, z = metrics.significance_scan(labels, scores, weights, np.array([0.0, 0.3, 0.77, 1.0]))
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
