"""Classifier metrics with event weights: pure functions on arrays.

Weighted ROC/AUC, Asimov significance against a score cut, a weighted two-sample Kolmogorov–Smirnov test,
weighted accuracy and cross-entropy. References in the tests: scikit-learn, scipy and the formulas.
"""

from __future__ import annotations

import numpy as np


class NonFiniteScores(ValueError):
    """Scores with NaN or infinity: a diverged model has no AUC, accuracy or significance."""


def _finite(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise NonFiniteScores(f"{bad} of {scores.size} scores are NaN or infinite")
    return scores


def signal_scores(scores: np.ndarray, signal_columns: list[int]) -> np.ndarray:
    """The score a cut is made on: P(signal) for binary (the one score), Σ P(signal classes) for multi-class.

    The one rule for which outputs are signal: ``signal_classes`` of the sample list, never "the last class".
    """
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return scores
    return scores[:, signal_columns].sum(axis=1)


def weighted_roc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """False- and true-positive rates at every distinct score threshold (descending), ties grouped."""
    thresholds, true_positive, false_positive = _cumulative_counts(labels, scores, weights)
    tp = np.r_[0.0, true_positive]
    fp = np.r_[0.0, false_positive]
    return fp / fp[-1], tp / tp[-1], np.r_[np.inf, thresholds]


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None):
    """The distinct scores (descending) and the weighted signal and background counts at or above each."""
    labels = np.asarray(labels).astype(bool)
    scores = _finite(scores)
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels, weights = scores[order], labels[order], weights[order]
    true_positive = np.cumsum(weights * labels)
    false_positive = np.cumsum(weights * ~labels)
    # Keep the last index of each run of equal scores so tied events move together.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    return scores[last], true_positive[last], false_positive[last]


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the weighted ROC curve (trapezoids, so ties count one half)."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = weighted_roc(labels, scores, weights)
    return float(np.trapezoid(tpr, fpr))


def multiclass_auc(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean one-vs-rest weighted AUC over classes (binary: the AUC of the single score)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        return weighted_auc(labels, probabilities.reshape(-1), weights)
    aucs = [weighted_auc(labels == k, probabilities[:, k], weights) for k in range(probabilities.shape[1])]
    return float(np.nanmean(aucs))


def weighted_average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted average precision: Σ (Rₙ − Rₙ₋₁) Pₙ over the distinct score thresholds (descending, ties grouped),
    the step-wise area under the precision-recall curve (no interpolation, as scikit-learn)."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    _, true_positive, false_positive = _cumulative_counts(labels, scores, weights)
    precision = true_positive / (true_positive + false_positive)
    recall = true_positive / true_positive[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multiclass_average_precision(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Mean one-vs-rest weighted average precision over classes (binary: that of the single score)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        return weighted_average_precision(labels, probabilities.reshape(-1), weights)
    columns = range(probabilities.shape[1])
    values = [weighted_average_precision(labels == k, probabilities[:, k], weights) for k in columns]
    return float(np.nanmean(values))


def predicted_class(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        return (probabilities.reshape(-1) >= 0.5).astype(int)
    return probabilities.argmax(axis=1)


def weighted_accuracy(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> float:
    _finite(probabilities)
    correct = predicted_class(probabilities) == np.asarray(labels)
    return float(np.average(correct, weights=weights))


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted mean binary or categorical cross-entropy."""
    probabilities = np.clip(_finite(probabilities), 1e-7, 1 - 1e-7)
    labels = np.asarray(labels).astype(int)
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        p = probabilities.reshape(-1)
        losses = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        losses = -np.log(probabilities[np.arange(len(labels)), labels])
    return float(np.average(losses, weights=weights))


def asimov_significance(signal: np.ndarray | float, background: np.ndarray | float) -> np.ndarray:
    """Z = sqrt(2((s+b) ln(1+s/b) − s)); 0 where s or b is not positive."""
    s = np.asarray(signal, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    valid = (s > 0) & (b > 0)
    safe_b = np.where(valid, b, 1.0)
    safe_s = np.where(valid, s, 0.0)
    z2 = 2 * ((safe_s + safe_b) * np.log1p(safe_s / safe_b) - safe_s)
    return np.where(valid, np.sqrt(np.maximum(z2, 0.0)), 0.0)


def significance_scan(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Asimov Z of the events with score ≥ cut, for each cut; weights are the expected yields."""
    labels = np.asarray(labels).astype(bool)
    scores = _finite(scores)
    weights = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise ValueError("yields are NaN or infinite: a sample has no cross-section")
    thresholds = np.linspace(0, 1, 101) if thresholds is None else np.asarray(thresholds)
    order = np.argsort(scores)
    sorted_scores = scores[order]
    # Sum of weights above each threshold = total − cumulative sum below it.
    signal_cum = np.r_[0.0, np.cumsum((weights * labels)[order])]
    background_cum = np.r_[0.0, np.cumsum((weights * ~labels)[order])]
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    s = signal_cum[-1] - signal_cum[below]
    b = background_cum[-1] - background_cum[below]
    return thresholds, asimov_significance(s, b)


def best_significance(labels: np.ndarray, scores: np.ndarray, yields: np.ndarray) -> float:
    """Asimov Z at the best of the cuts of :func:`significance_scan` (``labels``: is signal; ``yields``: physical)."""
    _, z = significance_scan(labels, scores, yields)
    return float(z.max())


def weighted_ks(
    a: np.ndarray, b: np.ndarray, weights_a: np.ndarray | None = None, weights_b: np.ndarray | None = None
) -> tuple[float, float]:
    """Two-sample KS statistic on weighted empirical CDFs and its p-value (Kish effective sample sizes).

    The p-value is scipy's asymptotic one (``kstwo`` at n_a·n_b/(n_a+n_b)) with effective sizes for the counts.
    """
    from scipy.stats import kstwo

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    wa = np.ones_like(a) if weights_a is None else np.asarray(weights_a, dtype=np.float64)
    wb = np.ones_like(b) if weights_b is None else np.asarray(weights_b, dtype=np.float64)
    values = np.sort(np.r_[a, b])
    cdf_a = _weighted_cdf(a, wa, values)
    cdf_b = _weighted_cdf(b, wb, values)
    statistic = float(np.max(np.abs(cdf_a - cdf_b)))
    n_a = wa.sum() ** 2 / (wa**2).sum()
    n_b = wb.sum() ** 2 / (wb**2).sum()
    effective = max(1.0, float(np.round(n_a * n_b / (n_a + n_b))))
    return statistic, float(kstwo.sf(statistic, effective))


def _weighted_cdf(sample: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    order = np.argsort(sample)
    cumulative = np.r_[0.0, np.cumsum(weights[order])] / weights.sum()
    return cumulative[np.searchsorted(sample[order], at, side="right")]
