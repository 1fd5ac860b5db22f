"""The metrics hhscan records, in one registry: name, which way is better, and when it is known.

Callbacks may monitor only what is logged every epoch; a scan may rank by any validation metric. Nothing else in
hhscan keeps its own table of directions.
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

    def better(self, value: float, reference: float) -> bool:
        return value < reference if self.direction == "min" else value > reference

    def best(self, values: list[float]) -> float:
        return min(values) if self.direction == "min" else max(values)


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("loss", "min", True, "weighted cross-entropy on the training split (dropout active)"),
        Metric("val_loss", "min", True, "weighted cross-entropy on the validation split"),
        Metric("val_auc", "max", True, "weighted ROC AUC on the validation split (mean one-vs-rest)"),
        Metric("val_accuracy", "max", True, "weighted accuracy on the validation split"),
        Metric(
            "val_significance",
            "max",
            False,
            "Asimov Z at the best score cut, physical validation yields scaled to the whole sample",
        ),
    )
}

# What a scan may rank by: validation metrics. What a callback may monitor: what is logged every epoch.
CRITERIA = tuple(name for name in METRICS if name.startswith("val_"))
MONITORS = tuple(name for name, metric in METRICS.items() if metric.per_epoch)


def metric(name: str) -> Metric:
    return METRICS[name]


def is_valid_value(value: float | None) -> bool:
    """A value a ranking may use: a finite number."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
