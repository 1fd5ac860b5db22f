"""What ``hhscan test`` measures on the test split: weighted AUCs (overall, signal vs each background) and Z."""

from __future__ import annotations

import numpy as np
from hhscan.data import metrics
from hhscan.data.dataset import Dataset
from hhscan.data.split import TEST, TRAIN


def metrics_of_test_split(dataset: Dataset, scores: np.ndarray) -> dict[str, float]:
    """Weighted AUCs (learning weights) on train and test, and on test: signal vs each background class and sample.

    A headline AUC against all backgrounds together can hide a poor one against the hardest background.
    """
    result = {}
    for name, partition in (("train", TRAIN), ("test", TEST)):
        selected = dataset.partition == partition
        result[f"{name}_auc"] = metrics.multiclass_auc(dataset.labels[selected], scores[selected],
                                                       dataset.learning_weight[selected])  # fmt: skip
    test = dataset.partition == TEST
    signal = dataset.is_signal()
    score = metrics.signal_scores(scores, dataset.signal_columns)
    backgrounds = [(f"class {c}", dataset.labels == k) for k, c in enumerate(dataset.class_names)
                   if c not in dataset.signal_classes]  # fmt: skip
    samples = [(f"sample {n}", dataset.sample_index == i) for i, n in enumerate(dataset.sample_names)]
    backgrounds += [(name, mask) for name, mask in samples if not (mask & signal).any()]
    for name, mask in backgrounds:
        chosen = test & (signal | mask)
        if (chosen & mask).any() and (chosen & signal).any():
            key = f"test_auc_signal_vs_{name.replace(' ', '_')}"
            result[key] = metrics.weighted_auc(signal[chosen], score[chosen], dataset.learning_weight[chosen])
    if dataset.yield_problem() is None:
        result["test_significance"] = dataset.significance_scan(test, scores[test]).best_z
    return result
