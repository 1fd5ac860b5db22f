"""Learning weights and physical yields from event weights: pure functions on arrays, no I/O.

Two different weights, for two different jobs:

- **Learning weights** (what the network is trained with, as the seed workflow defines them): within a sample
  events keep their relative event weights; between background samples the cross-section normalises them (event
  weight × xsec × lumi / Σweights); signal keeps its event weight; then every class is rescaled so that classes
  carry the same total on the training split (times an optional factor), so a rare signal is not drowned.
- **Yield weights** (what every physics figure uses: s, b, Asimov Z): expected events in the luminosity,
  event weight × xsec × lumi / Σweights for every process, signal included.
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
    xsec: float | None,
    lumi: float,
    event_weight_sum: float | None,
) -> np.ndarray:
    """The learning weight before class equalisation.

    event weight × xsec × lumi / Σweights for a background with a cross-section; the event weight itself for
    signal, and for a background without one (allowed when it is alone in its class: equalisation then cancels
    the normalisation). No number has a default: a luminosity of 1 pb⁻¹ assumed silently made yields wrong.
    """
    weight = np.asarray(event_weight, dtype=np.float64)
    if is_signal or xsec is None:
        return weight.copy()
    if event_weight_sum is None or event_weight_sum <= 0:
        raise ValueError("a background with a cross-section needs a positive sum of event weights")
    return weight * (xsec * lumi / event_weight_sum)


def yield_weight(
    event_weight: np.ndarray, *, xsec: float, lumi: float, event_weight_sum: float, unit_factor: float = 1.0
) -> np.ndarray:
    """Expected events per simulated event: event weight × xsec × lumi / Σweights (× the units' factor)."""
    return np.asarray(event_weight, dtype=np.float64) * (xsec * lumi * unit_factor / event_weight_sum)


def partition_yields(yields: np.ndarray, sample_index: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Yield weights of the ``selected`` events, each sample scaled up by 1 / (its fraction of events selected).

    A partition (validation, test) holds a fraction of each sample's events; scaled this way its yields estimate
    the whole sample's, so train, validation, test and ``hhscan test`` agree in expectation.
    """
    yields = np.asarray(yields, dtype=np.float64)
    sample_index = np.asarray(sample_index)
    selected = np.asarray(selected, dtype=bool)
    total = np.bincount(sample_index, minlength=int(sample_index.max(initial=-1)) + 1)
    kept = np.bincount(sample_index[selected], minlength=len(total))
    scale = np.divide(total, kept, out=np.zeros(len(total)), where=kept > 0)
    return yields[selected] * scale[sample_index[selected]]


def equalise_classes(
    weight: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    factors: Mapping[str, float] | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Rescale so each class sums to N/C over the ``reference`` events (default all), times its factor.

    With ``reference`` the training split, the classes are exactly balanced where the network learns (mean learning
    weight 1 there); the same per-class scale applies to every other event.
    """
    weight = np.asarray(weight, dtype=np.float64)
    labels = np.asarray(labels)
    reference = np.ones(len(weight), dtype=bool) if reference is None else np.asarray(reference, dtype=bool)
    factors = factors or {}
    target = int(reference.sum()) / len(class_names)
    result = np.empty_like(weight)
    for index, name in enumerate(class_names):
        selected = labels == index
        total = weight[selected & reference].sum()
        if not (selected & reference).any() or total <= 0:
            raise ValueError(f"class '{name}' has no events with positive weight")
        result[selected] = weight[selected] * (target / total) * factors.get(name, 1.0)
    return result
