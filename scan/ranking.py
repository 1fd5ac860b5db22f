"""Ranking trial records by the scan's criterion, in its own direction: pure functions on records."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hhscan.config import CRITERIA
from hhscan.records import TrialRecord


def ranked(records: Sequence[TrialRecord], criterion: str) -> list[TrialRecord]:
    """DONE records best first: losses ascending; AUC, accuracy, significance descending. Ties by trial id."""
    sign = 1 if CRITERIA[criterion] == "min" else -1
    done = [r for r in records if r.done and r.value is not None and not math.isnan(r.value)]
    return sorted(done, key=lambda r: (sign * r.value, r.trial_id))


def varying(records: Sequence[TrialRecord]) -> list[str]:
    """Hyperparameters that take more than one value across the records, whatever they are called."""
    keys = sorted({k for r in records for k in r.hyperparameters})
    return [k for k in keys if len({repr(r.hyperparameters.get(k)) for r in records}) > 1]
