"""The metrics hhscan records, in one registry: one entry per metric, and nothing else keeps a list of them.

An entry says how the metric is computed (a function of ``hhscan.data.metrics``, named here so this layer stays
below the data layer), which way is better, whether it is logged every epoch (then callbacks and the pruner may
monitor it) and the name of its training-split twin (the leaderboard's second column). ``evaluate`` and the
per-epoch logs (learning/training.py), ranking, pruning, callbacks and views all loop over ``METRICS``: adding a
metric is one entry here and its function in data/metrics.py (README "Adding a metric").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Literal["min", "max"]
    per_epoch: bool  # logged after every epoch (so callbacks can monitor it), else computed once at the end
    description: str
    # A function of hhscan.data.metrics: (labels, scores, learning weights) → float, or with ``yields`` the
    # partition's guarded significance scan (physical yields) → float. None: the engine's own loss, per epoch only.
    compute: str | None = None
    train_twin: str | None = None  # the same quantity on the training split, as trial records name it
    yields: bool = False  # needs physical yields (cross-sections): absent where the samples have none
    from_engine: bool = False  # per epoch, the engine's own loss (as Keras fit logs it), not ``compute``

    def better(self, value: float, reference: float) -> bool:
        return value < reference if self.direction == "min" else value > reference

    def best(self, values: list[float]) -> float:
        return min(values) if self.direction == "min" else max(values)


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("loss", "min", True, "weighted cross-entropy on the training split (dropout active)",
               from_engine=True),
        Metric("val_loss", "min", True, "weighted cross-entropy on the validation split",
               compute="cross_entropy", train_twin="train_loss", from_engine=True),
        Metric("val_auc", "max", True, "weighted ROC AUC on the validation split (mean one-vs-rest)",
               compute="multiclass_auc", train_twin="train_auc"),
        Metric("val_accuracy", "max", True, "weighted accuracy on the validation split",
               compute="weighted_accuracy", train_twin="train_accuracy"),
        Metric("val_significance", "max", False,
               "Asimov Z at the best score cut, physical validation yields scaled to the whole sample",
               compute="best_significance", train_twin="train_significance", yields=True),
        Metric("val_pr_auc", "max", False,
               "weighted average precision (area under the precision-recall curve) on the validation split "
               "(mean one-vs-rest)",
               compute="multiclass_average_precision", train_twin="train_pr_auc"),
    )
}  # fmt: skip

# What a scan may rank by: validation metrics. What a callback may monitor: what is logged every epoch.
CRITERIA = tuple(name for name, metric in METRICS.items() if metric.train_twin is not None)
MONITORS = tuple(name for name, metric in METRICS.items() if metric.per_epoch)
# Computed from a pack's validation scores after every epoch (loss and val_loss come from the engine itself).
EPOCH_SCORED = tuple(name for name, metric in METRICS.items() if metric.per_epoch and not metric.from_engine)


def metric(name: str) -> Metric:
    return METRICS[name]


def is_valid_value(value: float | None) -> bool:
    """A value a ranking may use: a finite number."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
