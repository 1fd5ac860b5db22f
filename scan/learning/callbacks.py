"""Early stopping and learning-rate reduction as plain state machines, one per trial.

They follow ``keras.callbacks.EarlyStopping`` and ``ReduceLROnPlateau`` decision for decision (a test trains the
same trial with Keras' own callbacks and compares), but hold no model: a packed trainer runs one per branch, and
their state is a small dict that goes into checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from hhscan.settings.criteria import metric


def _improves(monitor: str, value: float, reference: float | None, min_delta: float) -> bool:
    """As Keras decides, from a best of ±inf: a NaN never improves (so its weights are never kept)."""
    if not math.isfinite(value):
        return False
    if reference is None:
        return True
    mode = metric(monitor).direction
    if mode == "min":
        return value + abs(min_delta) < reference if min_delta else value < reference
    return value - abs(min_delta) > reference if min_delta else value > reference


def best_epoch(monitor: str, values: Sequence[float], min_delta: float = 0.0) -> int | None:
    """The epoch (from 0) early stopping would keep for ``values``: its last improvement by more than
    ``min_delta`` (the first best value when ``min_delta`` is 0); None without a finite value."""
    best, found = None, None
    for epoch, value in enumerate(values):
        if _improves(monitor, value, best, min_delta):
            best, found = value, epoch
    return found


@dataclass
class EarlyStopping:
    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    restore_best_weights: bool = True
    wait: int = 0
    best: float | None = None
    best_epoch: int = 0  # the epoch (from 0) of ``best``: the one whose weights are restored

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """Record one epoch's monitored value; returns (improved: keep these weights, stop now)."""
        self.wait += 1
        if _improves(self.monitor, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True, False
        if self.wait >= self.patience and epoch > 0:
            return False, True
        return False, False

    def state(self) -> dict:
        return asdict(self)


@dataclass
class ReduceLROnPlateau:
    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 3
    min_lr: float = 1e-6
    min_delta: float = 1e-4  # Keras' default
    cooldown: int = 0
    wait: int = 0
    best: float | None = None
    cooldown_counter: int = 0

    def update(self, value: float, learning_rate: float) -> float | None:
        """Record one epoch's monitored value; returns the new learning rate when it is reduced."""
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _improves(self.monitor, value, self.best, self.min_delta):
            self.best, self.wait = float(value), 0
            return None
        if self.cooldown_counter > 0:
            return None
        self.wait += 1
        if self.wait < self.patience or not learning_rate > np.float32(self.min_lr):
            return None
        self.cooldown_counter, self.wait = self.cooldown, 0
        return max(learning_rate * self.factor, self.min_lr)

    def state(self) -> dict:
        return asdict(self)
