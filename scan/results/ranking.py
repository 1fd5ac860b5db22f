"""Ranking trial records by a criterion, in its own direction: pure functions on records.

A trial is ranked by the value of the criterion in its recorded metrics, whatever criterion the scan had when the
trial ran, so changing ``eval_criterion`` re-ranks every trial consistently. A trial without a finite value is not
ranked (it is listed apart, never first).
"""

from __future__ import annotations

from collections.abc import Sequence

from hhscan.learning.records import TrialRecord
from hhscan.settings.criteria import is_valid_value, metric


def criterion_value(record: TrialRecord, criterion: str) -> float | None:
    """The trial's recorded value of ``criterion``: a finite number, or None."""
    value = record.metrics.get(criterion)
    return float(value) if is_valid_value(value) else None


def ranked(records: Sequence[TrialRecord], criterion: str) -> list[TrialRecord]:
    """DONE records with a finite value, best first (losses ascending, the rest descending); ties by trial id."""
    sign = 1 if metric(criterion).direction == "min" else -1
    done = [r for r in records if r.done and criterion_value(r, criterion) is not None]
    return sorted(done, key=lambda r: (sign * criterion_value(r, criterion), r.trial_id))


def unranked(records: Sequence[TrialRecord], criterion: str) -> list[TrialRecord]:
    """DONE records without a finite value of ``criterion`` (e.g. recorded before it existed), by trial id."""
    return sorted((r for r in records if r.done and criterion_value(r, criterion) is None), key=lambda r: r.trial_id)


def varying(records: Sequence[TrialRecord]) -> list[str]:
    """Hyperparameters that take more than one value across the records, whatever they are called."""
    keys = sorted({k for r in records for k in r.hyperparameters})
    return [k for k in keys if len({repr(r.hyperparameters.get(k)) for r in records}) > 1]
