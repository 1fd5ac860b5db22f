"""Learning weights from event weights: pure functions on arrays, no I/O.

The physics: within a sample, events keep their relative event weights; between background samples, the
cross-section normalises them (event weight × xsec × lumi / Σweights); signal cross-sections are not known, so
signal keeps its event weight. Each class is then rescaled so that every class carries the same total weight
(times an optional factor), so a rare signal is not drowned by a large background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def positive_weight_mask(event_weight: np.ndarray) -> np.ndarray:
    """Events kept for training: negative and zero weights are dropped (they can point a batch backwards)."""
    return np.asarray(event_weight) > 0


def physics_weight(
    event_weight: np.ndarray,
    *,
    is_signal: bool,
    xsec: float | None = None,
    lumi: float = 1.0,
    event_weight_sum: float | None = None,
) -> np.ndarray:
    """event weight × xsec × lumi / Σweights for backgrounds; the event weight itself for signal."""
    weight = np.asarray(event_weight, dtype=np.float64)
    if is_signal:
        return weight.copy()
    if xsec is None or event_weight_sum is None or event_weight_sum <= 0:
        raise ValueError("a background needs a cross-section and a positive sum of event weights")
    return weight * (xsec * lumi / event_weight_sum)


def equalise_classes(
    weight: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    factors: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Rescale so each class sums to N/C (mean weight 1 over all events), times its factor."""
    weight = np.asarray(weight, dtype=np.float64)
    labels = np.asarray(labels)
    factors = factors or {}
    target = len(weight) / len(class_names)
    result = np.empty_like(weight)
    for index, name in enumerate(class_names):
        selected = labels == index
        total = weight[selected].sum()
        if not selected.any() or total <= 0:
            raise ValueError(f"class '{name}' has no events with positive weight")
        result[selected] = weight[selected] * (target / total) * factors.get(name, 1.0)
    return result
