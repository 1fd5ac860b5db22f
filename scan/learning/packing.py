"""Forming packs: trials that share the step structure (batch size, epochs) train together as one fused model.

Batch sizes that are small multiples of a smaller one share a pack (256 and 512: the engine steps micro-batches
of 256 and a 512 branch updates every second one), so a grid over batch sizes compiles one program, not one each.

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


# A batch of at most this many micro-batches shares a pack with the smaller batch size: beyond it the larger
# batches' trials would step in slivers (a GPU's matmuls want the rows).
MAX_MICRO_BATCHES = 4


def step_structure(trial: Trial) -> tuple[int, ...]:
    """What shapes a trial's training steps: batch size and number of epochs (the registry's step-structure keys)."""
    return hyperparameters.step_structure(trial.hyperparameters)


def batch_size(trial: Trial) -> int:
    return step_structure(trial)[hyperparameters.step_structure_names().index("batch_size")]


def pack_structures(trials: Sequence[Trial]) -> list[tuple[int, ...]]:
    """What trials of one pack must share, for each trial: its step structure, where a ``micro_batched`` entry
    (the batch size) is the smallest value among ``trials`` that its own is a multiple of (by at most
    ``MAX_MICRO_BATCHES``): 256 and 512 share 256, 100 and 256 stay apart. A function of the trials' values only."""
    names = hyperparameters.step_structure_names()
    structures = [step_structure(t) for t in trials]
    for i in (i for i, name in enumerate(names) if hyperparameters.REGISTRY[name].micro_batched):
        bases: dict[tuple[int, ...], list[int]] = {}
        for value, rest in sorted((s[i], s[:i] + s[i + 1 :]) for s in structures):
            found = bases.setdefault(rest, [])
            if not any(_steps_in(value, base) for base in found):
                found.append(value)
        structures = [(*s[:i], next(b for b in bases[s[:i] + s[i + 1 :]] if _steps_in(s[i], b)), *s[i + 1 :])
                      for s in structures]  # fmt: skip
    return structures


def _steps_in(value: int, base: int) -> bool:
    return value % base == 0 and value // base <= MAX_MICRO_BATCHES


def form_packs(trials: Sequence[Trial], pack_size: int) -> list[list[Trial]]:
    """Group by pack structure (first appearance order), then split each group into near-equal packs."""
    if pack_size < 1:
        raise ValueError(f"pack_size must be positive, got {pack_size}")
    groups: dict[tuple[int, ...], list[Trial]] = {}
    for trial, structure in zip(trials, pack_structures(trials), strict=True):
        groups.setdefault(structure, []).append(trial)
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
