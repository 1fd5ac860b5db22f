"""Trials: one point of the hyperparameter grid and one repetition, with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hhscan.settings import hyperparameters as hp
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
    hyperparameters: dict[str, Any], registry: Mapping[str, hp.Hyperparameter] = hp.REGISTRY
) -> dict[str, Any]:
    """Hyperparameters with canonical types and defaults, so 1 and 1.0, 'Adam' and 'adam', or an omitted key and
    its default, give the same id."""
    return hp.canonical(hyperparameters, registry)


def trial_id(
    hyperparameters: dict[str, Any], repetition: int, registry: Mapping[str, hp.Hyperparameter] = hp.REGISTRY
) -> str:
    """A stable hash of the canonical hyperparameters and the repetition index.

    An entry at its default is left out unless it is ``hashed_at_default`` (the built-in nine, whose ids predate
    the rule), so an own model's new keyword argument with a default changes no existing trial's id.
    """
    point = canonical(hyperparameters, registry)
    hashed = {key: value for key, value in point.items() if key not in registry or registry[key].hashed_at_default
              or not registry[key].is_default_in(value, point)}  # fmt: skip
    payload = json.dumps({"hp": hashed, "rep": repetition}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def expand(parameters: Parameters) -> list[Trial]:
    """Every combination of the dictionary's values, times the repetitions, in a stable order; none for an
    adaptive search, whose trials are asked as it runs (``search.py``)."""
    if parameters.search.adaptive:
        return []
    keys = list(parameters.hyperparameters)
    registry = parameters.registry
    trials = []
    for values in itertools.product(*(parameters.hyperparameters[k] for k in keys)):
        point = canonical(dict(zip(keys, values, strict=True)), registry)
        for repetition in range(parameters.repetitions):
            trials.append(Trial(trial_id(point, repetition, registry), point, repetition))
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):  # e.g. [1, 1.0] in one list: the same trial twice
        seen: dict[str, Trial] = {}
        trials = [seen.setdefault(t.id, t) for t in trials if t.id not in seen]
    return trials
