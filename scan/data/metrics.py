"""Classifier metrics with event weights: pure functions on arrays.

Weighted ROC/AUC, Asimov significance against a score cut (with a guard on background MC statistics), a weighted
two-sample Kolmogorov–Smirnov test, weighted accuracy and cross-entropy. References in the tests: scikit-learn,
scipy and the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def asimov_significance(
    signal: np.ndarray | float, background: np.ndarray | float, background_uncertainty: float = 0.0
) -> np.ndarray:
    """Discovery Asimov Z (Cowan, Cranmer, Gross, Vitells, Eur. Phys. J. C 71 (2011) 1554); 0 where s or b ≤ 0.

    Without uncertainty: Z = sqrt(2((s+b) ln(1+s/b) − s)). With a relative background uncertainty r (σ = r·b):
    Z = sqrt(2((s+b) ln((s+b)(b+σ²)/(b²+(s+b)σ²)) − (b²/σ²) ln(1 + σ²s/(b(b+σ²))))), here with σ² = r²b² divided
    out (b+σ² = b(1+r²b), b²/σ² = 1/r²) and written with log1p, which keeps it accurate for small r.
    """
    if not (math.isfinite(background_uncertainty) and background_uncertainty >= 0):
        raise ValueError(f"background_uncertainty must be ≥ 0, got {background_uncertainty}")
    s = np.asarray(signal, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    valid = (s > 0) & (b > 0)
    safe_b = np.where(valid, b, 1.0)
    safe_s = np.where(valid, s, 0.0)
    if background_uncertainty == 0:
        z2 = 2 * ((safe_s + safe_b) * np.log1p(safe_s / safe_b) - safe_s)
    else:
        r2 = background_uncertainty**2
        total = safe_s + safe_b
        first = total * (np.log(total) + np.log1p(r2 * safe_b) - np.log(safe_b) - np.log1p(r2 * total))
        second = np.log1p(r2 * safe_s / (1 + r2 * safe_b)) / r2
        z2 = 2 * (first - second)
    return np.where(valid, np.sqrt(np.maximum(z2, 0.0)), 0.0)


CUT_GRID = np.linspace(0, 1, 101)  # the Z scan's cuts on the signal score: 0, 0.01, …, 1 (events with score ≥ cut)


@dataclass(frozen=True)
class SignificanceScan:
    """Asimov Z against the score cut, with what each cut selects and whether its background MC can be trusted.

    ``background_events`` counts the background MC events passing (unweighted); ``background_error`` is the
    relative MC statistical error of b, √Σw²/Σw of their yields. ``allowed`` marks the cuts that pass the guard
    (at least ``min_background_events``, error at most ``max_background_error``): only those can be the best cut, so
    Z never rests on a few background events that happen to pass.
    """

    thresholds: np.ndarray
    z: np.ndarray
    signal: np.ndarray
    background: np.ndarray
    background_events: np.ndarray
    background_error: np.ndarray
    allowed: np.ndarray
    min_background_events: int = 0
    max_background_error: float | None = None
    background_uncertainty: float = 0.0

    @property
    def best(self) -> int | None:
        """Index of the allowed cut with the largest Z (the lowest such cut on ties); None if no cut is allowed."""
        if not self.allowed.any():
            return None
        return int(np.argmax(np.where(self.allowed, self.z, -np.inf)))

    @property
    def best_z(self) -> float:
        """Z at the best allowed cut; 0 when no cut has enough background MC."""
        return 0.0 if self.best is None else float(self.z[self.best])

    def guard(self) -> str:
        """The rule the best cut obeys, in words (for plots, tables and ``hhscan test``)."""
        return guard_text(self.min_background_events, self.max_background_error, self.background_uncertainty)

    def describe(self) -> str:
        """``Z 3.21 at score ≥ 0.87: s 12.3, b 45.6 (57 bkg MC events, MC error 13%)`` and the guard."""
        if self.best is None:
            return f"Z not computed: no cut passes the MC-statistics guard ({self.guard()})"
        i = self.best
        selected = f"s {self.signal[i]:.4g}, b {self.background[i]:.4g}"
        mc = f"{int(self.background_events[i])} bkg MC events, MC error {self.background_error[i]:.0%}"
        return f"Z {self.z[i]:.4g} at score ≥ {self.thresholds[i]:.2f}: {selected} ({mc}; guard: {self.guard()})"


def guard_text(min_background_events: int, max_background_error: float | None, background_uncertainty: float) -> str:
    """``≥ 10 bkg MC events, bkg MC error ≤ 20%, σ_b = 0%·b``: the MC-statistics guard and σ_b of a Z scan."""
    parts = [f"≥ {min_background_events} bkg MC events"]
    if max_background_error is not None:
        parts.append(f"bkg MC error ≤ {max_background_error:.0%}")
    parts.append(f"σ_b = {background_uncertainty:.0%}·b")
    return ", ".join(parts)


def significance_scan(
    labels: np.ndarray,
    scores: np.ndarray,
    weights: np.ndarray,
    thresholds: np.ndarray | None = None,
    *,
    min_background_events: int = 0,
    max_background_error: float | None = None,
    background_uncertainty: float = 0.0,
) -> SignificanceScan:
    """Asimov Z of the events with score ≥ cut, for each cut (default ``CUT_GRID``); weights are expected yields."""
    labels = np.asarray(labels).astype(bool)
    scores = _finite(scores)
    weights = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise ValueError("yields are NaN or infinite: a sample has no cross-section")
    thresholds = CUT_GRID if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(scores)
    below = np.searchsorted(scores[order], thresholds, side="left")

    def above(values: np.ndarray) -> np.ndarray:
        """Σ values of the events above each threshold = total − cumulative sum below it."""
        cumulative = np.r_[0.0, np.cumsum(values[order])]
        return cumulative[-1] - cumulative[below]

    background_mask = (~labels).astype(np.float64)
    s = above(weights * labels)
    b = above(weights * background_mask)
    events = np.rint(above(background_mask))
    squared = np.maximum(above(weights**2 * background_mask), 0.0)
    error = np.divide(np.sqrt(squared), b, out=np.full(len(b), np.inf), where=b > 0)
    allowed = (events >= max(min_background_events, 1)) & (b > 0)
    if max_background_error is not None:
        allowed &= error <= max_background_error
    return SignificanceScan(
        thresholds=thresholds,
        z=asimov_significance(s, b, background_uncertainty),
        signal=s,
        background=b,
        background_events=events,
        background_error=error,
        allowed=allowed,
        min_background_events=min_background_events,
        max_background_error=max_background_error,
        background_uncertainty=background_uncertainty,
    )


def best_significance(scan: SignificanceScan) -> float:
    """Asimov Z at the best cut of a :func:`significance_scan` that its MC-statistics guard allows."""
    return scan.best_z


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
