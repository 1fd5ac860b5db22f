"""A k-fold dataset as ``hhscan test`` sees it: every event a test event of the fold model tested on its fold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hhscan.data.dataset import Dataset
from hhscan.data.split import TEST, TRAIN
from hhscan.errors import ModelError
from hhscan.learning import model


def kfold_scoring_view(dataset: Dataset, bundle: model.FoldModels) -> tuple[Dataset, np.ndarray]:
    """A k-fold dataset as ``hhscan test`` sees it, with its scores: every event once as a test event, scored by the
    fold model tested on its fold (the bundle's guard refuses any other), and once as a training event, scored by a
    fold model that trained on it (for the overtraining comparison). The training copies count as samples of their
    own with no yield, so test yields are whole-sample yields and written files hold each event once.
    """
    if dataset.fold is None or dataset.folds != bundle.folds:
        raise ModelError(f"{bundle.source}: a {bundle.folds}-fold bundle, but the data are split "
                         f"{'into ' + str(dataset.folds) + ' folds' if dataset.folds else 'by ratios'}")  # fmt: skip
    test_scores = bundle.predict(dataset.features, dataset.fold)
    train_scores = bundle.predict(dataset.features, dataset.fold, role="train")
    n_samples = len(dataset.sample_names)

    def twice(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, values])

    view = replace(
        dataset,
        features=twice(dataset.features),
        labels=twice(dataset.labels),
        event_weight=twice(dataset.event_weight),
        yield_weight=np.concatenate([dataset.yield_weight, np.zeros_like(dataset.yield_weight)]),
        learning_weight=twice(dataset.learning_weight),
        sample_index=np.concatenate([dataset.sample_index, dataset.sample_index + n_samples]),
        partition=np.repeat(np.array([TEST, TRAIN], np.int8), len(dataset.labels)),
        other={name: twice(values) for name, values in dataset.other.items()},
        sample_names=dataset.sample_names * 2,
        fold=twice(dataset.fold),
        block_counts={name: twice(counts) for name, counts in dataset.block_counts.items()},
    )
    return view, np.concatenate([test_scores, train_scores])
