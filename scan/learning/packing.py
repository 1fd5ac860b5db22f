"""Forming packs: trials that share the step structure (batch size, epochs) train together as one fused model.

Packs are formed from a job's whole trial list, deterministically, so a requeued job finds the same packs (and
their checkpoints) again; trials already done are then left out of their pack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from hhscan.learning.trial import Trial
from hhscan.settings import hyperparameters

# Up to this many trials are packed whole without probing: on 2 CPU cores the cost per trial of the example
# falls 10× from K=1 to K=16 (bench/RESULTS.md), and a GPU only widens that.
DEFAULT_PACK_SIZE = 16


def step_structure(trial: Trial) -> tuple[int, ...]:
    """What trials of one pack must share: batch size and number of epochs (the registry's step-structure keys)."""
    return hyperparameters.step_structure(trial.hyperparameters)


def form_packs(trials: Sequence[Trial], pack_size: int) -> list[list[Trial]]:
    """Group by step structure (first appearance order), then split each group into near-equal packs."""
    if pack_size < 1:
        raise ValueError(f"pack_size must be positive, got {pack_size}")
    groups: dict[tuple[int, int], list[Trial]] = {}
    for trial in trials:
        groups.setdefault(step_structure(trial), []).append(trial)
    packs = []
    for members in groups.values():
        n_packs = -(-len(members) // pack_size)
        base, extra = divmod(len(members), n_packs)
        start = 0
        for index in range(n_packs):
            size = base + (1 if index < extra else 0)
            packs.append(members[start : start + size])
            start += size
    return packs


def pack_key(trials: Sequence[Trial]) -> str:
    """A stable name for a pack's checkpoint."""
    return hashlib.sha256(",".join(t.id for t in trials).encode()).hexdigest()[:12]
