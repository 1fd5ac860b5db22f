"""Trials: one point of the hyperparameter grid and one repetition, with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hhscan.settings import hyperparameters as registry
from hhscan.settings.config import Parameters


@dataclass(frozen=True)
class Trial:
    id: str
    hyperparameters: dict[str, Any]
    repetition: int

    @property
    def seed_offset(self) -> int:
        return int(self.id[:8], 16)


def canonical(
    hyperparameters: Mapping[str, Any], entries: Mapping[str, registry.Hyperparameter] = registry.REGISTRY
) -> dict[str, Any]:
    """Hyperparameters with canonical types and defaults, so 1 and 1.0, 'Adam' and 'adam', or an omitted key and
    its default, give the same id."""
    return registry.canonical(hyperparameters, entries)


def trial_id(
    hyperparameters: Mapping[str, Any],
    repetition: int,
    entries: Mapping[str, registry.Hyperparameter] = registry.REGISTRY,
) -> str:
    """A stable hash of the canonical hyperparameters and the repetition index.

    Entries added to the registry later are left out while at their default (``registry.hashed``): an id given
    before they existed stays the same (the golden ids of tests/test_registries.py).
    """
    payload = json.dumps({"hp": registry.hashed(hyperparameters, entries), "rep": repetition}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def expand(parameters: Parameters) -> list[Trial]:
    """Every combination of the dictionary's values, times the repetitions, in a stable order; none for an
    adaptive search, whose trials are asked as it runs (``search.py``)."""
    if parameters.search.adaptive:
        return []
    keys = list(parameters.hyperparameters)
    trials = []
    for values in itertools.product(*(parameters.hyperparameters[k] for k in keys)):
        point = canonical(dict(zip(keys, values, strict=True)))
        for repetition in range(parameters.repetitions):
            trials.append(Trial(trial_id(point, repetition), point, repetition))
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):  # e.g. [1, 1.0] in one list: the same trial twice
        seen: dict[str, Trial] = {}
        trials = [seen.setdefault(t.id, t) for t in trials if t.id not in seen]
    return trials
