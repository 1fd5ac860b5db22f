"""Figures (seaborn/matplotlib, PNG): hyperparameter effects, learning curves, ROC, overtraining, significance.

Each function takes arrays or a DataFrame and a path, writes one PNG atomically, and computes nothing physics-like
itself: metrics come from :mod:`hhscan.metrics`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hhscan import metrics
from hhscan.fileio import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def hyperparameter_effects(frame, parameters: Sequence[str], criterion: str, directory: Path) -> list[Path]:
    """One plot per varied hyperparameter (criterion per value), one heatmap per pair (mean criterion)."""
    import seaborn as sns

    plt = _pyplot()
    paths = []
    for name in parameters:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        column = f"hp_{name}"
        order = sorted(frame[column].dropna().unique(), key=lambda v: (str(type(v)), v))
        sns.boxplot(data=frame, x=column, y=criterion, order=order, ax=axis, color="#b3cde3", fliersize=0)
        sns.stripplot(data=frame, x=column, y=criterion, order=order, ax=axis, color="#08306b", size=4)
        axis.set_xlabel(name)
        axis.set_title(f"{criterion} by {name}")
        paths.append(_save(figure, directory / f"hp_{name}.png"))
    for first, second in itertools.combinations(parameters, 2):
        table = frame.pivot_table(index=f"hp_{first}", columns=f"hp_{second}", values=criterion, aggfunc="mean")
        figure, axis = plt.subplots(figsize=(5, 4))
        sns.heatmap(table, annot=True, fmt=".3g", cmap="viridis", ax=axis)
        axis.set_xlabel(second)
        axis.set_ylabel(first)
        axis.set_title(f"mean {criterion}")
        paths.append(_save(figure, directory / f"pair_{first}__{second}.png"))
    return paths


def learning_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Training and validation loss per epoch for the given trials (label → history)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, history), color in zip(histories.items(), itertools.cycle(colors)):
        epochs = np.arange(1, len(history.get("loss", [])) + 1)
        axis.plot(epochs, history.get("loss", []), color=color, linestyle="--", alpha=0.7)
        axis.plot(epochs[: len(history.get("val_loss", []))], history.get("val_loss", []), color=color, label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss (dashed: training, solid: validation)")
    axis.legend(fontsize=7)
    return _save(figure, path)


def roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    """Weighted ROC curves; ``curves`` maps a label (train, test) to labels, scores, weights."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (truth, scores, weights) in curves.items():
        fpr, tpr, _ = metrics.weighted_roc(truth, scores, weights)
        auc = metrics.weighted_auc(truth, scores, weights)
        axis.plot(fpr, tpr, label=f"{label}: AUC = {auc:.4f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("background efficiency")
    axis.set_ylabel("signal efficiency")
    axis.set_title(title or "weighted ROC")
    axis.legend()
    return _save(figure, path)


def overtraining(
    scores_by_class: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: Path, score_name: str = "score"
) -> Path:
    """Score distributions, training (filled) vs test (points) per class, with weighted KS p-values."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0, 1, 31)
    centres = 0.5 * (bins[1:] + bins[:-1])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, parts), color in zip(scores_by_class.items(), itertools.cycle(colors)):
        (train_scores, train_weights), (test_scores, test_weights) = parts["train"], parts["test"]
        _, p_value = metrics.weighted_ks(train_scores, test_scores, train_weights, test_weights)
        axis.hist(train_scores, bins=bins, weights=train_weights, density=True, alpha=0.35, color=color,
                  label=f"{name} train (KS p = {p_value:.3f})")  # fmt: skip
        counts, _ = np.histogram(test_scores, bins=bins, weights=test_weights, density=True)
        axis.plot(centres, counts, "o", color=color, markersize=3, label=f"{name} test")
    axis.set_xlabel(score_name)
    axis.set_ylabel("normalised")
    axis.legend(fontsize=7)
    return _save(figure, path)


def significance(thresholds: np.ndarray, z: np.ndarray | None, path: Path, reason: str | None = None) -> Path:
    """Asimov Z against the score cut; without physical yields (``z`` None) the plot says why instead."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    if z is None:
        axis.text(0.5, 0.5, f"Z not computed:\n{reason}", ha="center", va="center", wrap=True, fontsize=8,
                  transform=axis.transAxes)  # fmt: skip
        axis.set_title("Asimov significance: not computed")
    else:
        axis.plot(thresholds, z)
        best = int(np.argmax(z))
        axis.axvline(thresholds[best], color="grey", linestyle=":")
        axis.set_title(f"Asimov Z_max = {z[best]:.3g} at score > {thresholds[best]:.2f}")
    axis.set_xlabel("score cut")
    axis.set_ylabel("Z (physical yields of the test split)")
    return _save(figure, path)


def confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    import seaborn as sns

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 4))
    sns.heatmap(matrix, annot=True, fmt=".2f", xticklabels=class_names, yticklabels=class_names, ax=axis,
                cmap="Blues")  # fmt: skip
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (row-normalised, weighted)")
    return _save(figure, path)


def input_distributions(frame, feature_names: Sequence[str], path: Path) -> Path:
    """Per-class normalised distributions of each input (``frame`` has the inputs, ``class`` and ``weight``)."""
    plt = _pyplot()
    columns = 4
    rows = int(np.ceil(len(feature_names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis, name in zip(axes.flat, feature_names, strict=False):
        values = frame[name].to_numpy()
        low, high = np.percentile(values, [0.5, 99.5])
        bins = np.linspace(low, high if high > low else low + 1, 31)
        for cls, part in frame.groupby("class"):
            axis.hist(part[name], bins=bins, weights=part["weight"], density=True, histtype="step", label=str(cls))
        axis.set_title(name, fontsize=8)
        axis.tick_params(labelsize=6)
    for axis in list(axes.flat)[len(feature_names) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=6)
    return _save(figure, path)


def correlations(frame, feature_names: Sequence[str], path: Path, title: str) -> Path:
    import seaborn as sns

    plt = _pyplot()
    size = max(4, 0.45 * len(feature_names))
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(frame[list(feature_names)].corr(), vmin=-1, vmax=1, cmap="RdBu_r", ax=axis, square=True)
    axis.set_title(title)
    return _save(figure, path)
