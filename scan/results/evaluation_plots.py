"""The plots of ``hhscan test``: ROC, rejection, overtraining, significance, confusion, inputs, correlations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from hhscan.data import metrics
from hhscan.data.dataset import Dataset
from hhscan.data.split import TEST, TRAIN


def evaluation_plots(
    dataset: Dataset, scores: np.ndarray, metadata: dict, out_dir: Path, on_step: Callable[[str], None] | None = None
) -> list[Path]:
    """Every plot of the test split (and the training split beside it) under ``out_dir``; their paths."""
    import pandas as pd
    from hhscan.results import plots as figures

    step = on_step or (lambda _text: None)
    step(f"plotting ROC and rejection → {out_dir}")

    signal_name = " + ".join(dataset.signal_classes)
    signal_scores = metrics.signal_scores(scores, dataset.signal_columns)
    is_signal = dataset.is_signal()
    w = dataset.learning_weight
    parts = {name: dataset.partition == p for name, p in (("train", TRAIN), ("test", TEST))}
    curves = {name: (is_signal[m], signal_scores[m], w[m]) for name, m in parts.items()}
    title = f"{signal_name} vs rest, weighted"
    paths = [
        figures.roc(curves, out_dir / "roc.png", title=title),
        figures.rejection(curves, out_dir / "rejection.png", title=title),
    ]
    by_class = {
        cls: {
            name: (signal_scores[m & (dataset.labels == k)], w[m & (dataset.labels == k)]) for name, m in parts.items()
        }
        for k, cls in enumerate(dataset.class_names)
    }
    step(f"plotting overtraining and significance → {out_dir}")
    paths.append(figures.overtraining(by_class, out_dir / "overtraining.png", f"P({signal_name})"))
    test = parts["test"]
    problem = dataset.yield_problem()
    # Physical yields of the test events, each sample scaled up to its whole (weights.partition_yields).
    z_scan = dataset.significance_scan(test, scores[test]) if problem is None else None
    paths.append(figures.significance(z_scan, out_dir / "significance.png", reason=problem))
    if scores.ndim == 2:
        predicted = scores[test].argmax(axis=1)
        n = len(dataset.class_names)
        matrix = np.zeros((n, n))
        np.add.at(matrix, (dataset.labels[test], predicted), w[test])
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
        paths.append(figures.confusion(matrix, dataset.class_names, out_dir / "confusion.png"))
    if metadata.get("history"):
        label = figures.hyperparameter_label(metadata["hyperparameters"], sorted(metadata["hyperparameters"]))
        paths.append(figures.learning_curves({label: metadata["history"]}, out_dir / "training.png"))
    step(f"plotting input distributions and correlations → {out_dir}")
    frame = pd.DataFrame(dataset.features, columns=dataset.feature_names)
    frame["class"] = np.asarray(dataset.class_names)[dataset.labels]
    frame["weight"] = w
    paths.append(figures.input_distributions(frame, dataset.feature_names, out_dir / "inputs.png"))
    for cls, part in frame.groupby("class"):
        paths.append(figures.correlations(part, dataset.feature_names, out_dir / f"correlation_{cls}.png", str(cls)))
    return paths
