"""Trial records: one CSV file per trial (header + one row), written atomically and self-checking.

The last column is a checksum of the others, so a file cut off mid-write (a crash, a full disk) is detected and
never counted as done. A history too long for one spreadsheet cell (a long training: 3000 epochs are ~200 KB, and
Python's ``csv`` module refuses fields over 128 KiB) is written beside the row, as ``<trial>.history.json``; the
row's ``history`` cell then names that file and its SHA-256, so the checksum covers it too. Records written with the
whole history in the row (older hhscan) still read. A failed trial is a record too (status FAIL, with its error),
not a crash. A trial an adaptive search's pruner stopped is PRUNED (with the epoch): finished, never missing, never
ranked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hhscan.fileio import atomic_write_text
from hhscan.settings import hyperparameters as registry

DONE, FAIL, PRUNED = "DONE", "FAIL", "PRUNED"


@dataclass
class TrialRecord:
    trial_id: str
    status: str
    repetition: int
    hyperparameters: dict[str, Any]
    criterion: str
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    seconds: float = 0.0
    backend: str = ""
    device: str = ""  # what trained it: 'gpu:NVIDIA H100 80GB HBM3', 'cpu:2'
    pack_size: int = 1
    split_name: str = ""
    split_checksum: str = ""
    fold: int | None = None
    training_settings: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    dictionary_hash: str = ""
    code_version: str = ""
    model_file: str = ""
    error: str = ""
    traceback: str = ""
    job_id: str = ""
    log_path: str = ""
    host: str = ""
    finished_at: str = ""
    attempt: str = ""  # the lease attempt that wrote it (see leases.py)
    pruned_epoch: int | None = None  # PRUNED: the epoch (from 1) after which the pruner stopped it
    search_state: dict[str, Any] = field(default_factory=dict)  # adaptive search: the sampler's/pruner's attributes

    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def finished(self) -> bool:
        """Nothing left to train: DONE, or PRUNED by an adaptive search's pruner."""
        return self.status in (DONE, PRUNED)


_JSON_FIELDS = {"hyperparameters", "metrics", "history", "training_settings", "search_state"}
_COLUMNS = list(TrialRecord.__dataclass_fields__)


def _encode(record: TrialRecord) -> list[str]:
    values = asdict(record)
    return [json.dumps(values[c], sort_keys=True) if c in _JSON_FIELDS or values[c] is None
            else str(values[c]) for c in _COLUMNS]  # fmt: skip


def _checksum(cells: list[str]) -> str:
    return hashlib.sha256("\x1f".join(cells).encode()).hexdigest()[:16]


# Longest history cell kept in the row: a spreadsheet cell's limit (Python's csv module allows 131072 by default).
HISTORY_INLINE_LIMIT = 32767
HISTORY_FILE = "$file"  # the key of a history cell that names the file beside the row (never a metric name)


def history_path(output_dir: Path, trial_id: str) -> Path:
    return Path(output_dir) / f"{trial_id}.history.json"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _rows(cells: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*_COLUMNS, "checksum"])
    writer.writerow([*cells, _checksum(cells)])
    return buffer.getvalue()


def to_csv(record: TrialRecord) -> str:
    """The record as one CSV row, its whole history in the row (see :func:`write_record` for long ones)."""
    return _rows(_encode(record))


def encode(record: TrialRecord) -> tuple[str, str | None]:
    """The record's CSV text and, for a history longer than ``HISTORY_INLINE_LIMIT``, the history file's text
    (the row then names that file and its SHA-256)."""
    cells = _encode(record)
    index = _COLUMNS.index("history")
    if len(cells[index]) <= HISTORY_INLINE_LIMIT:
        return _rows(cells), None
    history = cells[index]
    name = history_path(Path(), record.trial_id).name
    cells[index] = json.dumps({HISTORY_FILE: name, "sha256": _sha256(history)}, sort_keys=True)
    return _rows(cells), history


class CorruptRecord(ValueError):
    """A record file that is truncated, edited or not a record."""


def from_csv(text: str, directory: Path | None = None) -> TrialRecord:
    """A record from its CSV text; records written by an older hhscan (fewer columns) read with defaults. A history
    kept beside the row is read from ``directory`` (the record's own) and checked against its SHA-256."""
    # Records of older hhscan keep a long training's history in one large cell (> the default 128 KiB per field).
    csv.field_size_limit(2**31 - 1)
    rows = list(csv.reader(io.StringIO(text)))
    # Records from before a column was added lack it: any in-order subset of the columns is read, with defaults.
    header = rows[0][:-1] if len(rows) == 2 and rows[0] and rows[0][-1] == "checksum" else []
    if not header or header != [c for c in _COLUMNS if c in header] or len(rows[1]) != len(header) + 1:
        raise CorruptRecord("not a complete trial record")
    if "trial_id" not in header or "status" not in header:
        raise CorruptRecord("not a trial record (no trial_id or status)")
    cells, checksum = rows[1][:-1], rows[1][-1]
    if _checksum(cells) != checksum:
        raise CorruptRecord("checksum mismatch (truncated or edited)")
    values: dict[str, Any] = {}
    types = {name: f.type for name, f in TrialRecord.__dataclass_fields__.items()}
    for column, cell in zip(header, cells, strict=True):
        if column == "history" and cell.startswith(f'{{"{HISTORY_FILE}"'):
            values[column] = _read_history(json.loads(cell), directory)
        elif column in _JSON_FIELDS or cell == "null":
            values[column] = json.loads(cell)
        elif types[column] in ("int", "int | None"):
            values[column] = int(cell)
        elif types[column] in ("float", "float | None"):
            values[column] = float(cell)
        else:
            values[column] = cell
    if isinstance(values.get("hyperparameters"), dict):  # a hyperparameter added since reads as its default
        values["hyperparameters"] = registry.with_defaults(values["hyperparameters"])
    return TrialRecord(**values)


def _read_history(reference: dict[str, str], directory: Path | None) -> dict[str, list[float]]:
    if directory is None:
        raise CorruptRecord(f"its history is kept in {reference[HISTORY_FILE]}: read it with its directory")
    path = Path(directory) / reference[HISTORY_FILE]
    try:
        text = path.read_text()
    except OSError:
        raise CorruptRecord(f"its history file {path.name} is missing or unreadable") from None
    if _sha256(text) != reference.get("sha256"):
        raise CorruptRecord(f"its history file {path.name} does not match the record (truncated or edited)")
    return json.loads(text)


def record_path(output_dir: Path, trial_id: str) -> Path:
    return output_dir / f"{trial_id}.csv"


def write_record(output_dir: Path, record: TrialRecord) -> Path:
    """The history file first (when the history is long), then the row that names it: each written atomically."""
    path = record_path(output_dir, record.trial_id)
    text, history = encode(record)
    if history is not None:
        atomic_write_text(history_path(output_dir, record.trial_id), history)
    atomic_write_text(path, text)
    if history is None:  # a longer history an earlier record of the trial kept beside it
        history_path(output_dir, record.trial_id).unlink(missing_ok=True)
    return path


def read_record(path: Path) -> TrialRecord:
    return from_csv(Path(path).read_text(), Path(path).parent)


def read_records(output_dir: Path) -> tuple[dict[str, TrialRecord], dict[str, str]]:
    """All valid records of a scan by trial id, and the corrupt files with the reason."""
    records: dict[str, TrialRecord] = {}
    corrupt: dict[str, str] = {}
    if not output_dir.is_dir():
        return records, corrupt
    with os.scandir(output_dir) as entries:
        for entry in entries:
            if not entry.name.endswith(".csv") or entry.name.startswith("."):
                continue
            try:
                with open(entry.path) as handle:
                    record = from_csv(handle.read(), output_dir)
            except (CorruptRecord, ValueError, TypeError) as error:
                corrupt[entry.name] = str(error)
                continue
            records[record.trial_id] = record
    return records, corrupt
