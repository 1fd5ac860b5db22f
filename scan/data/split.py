"""Train/validation/test assignment: made once per sample, persisted under a name, checked on every read.

Every trial of every scan that names the same split sees exactly the same events in each partition, so models
are compared on the same test events. The persisted file holds, per sample, the assignment and a fingerprint of
the events it was made for (file size, entries, selected events); any change is an error, never a re-split.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hhscan.errors import SplitError
from hhscan.fileio import atomic_write_bytes

TRAIN, VALIDATION, TEST = 0, 1, 2
PARTITIONS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}


@dataclass(frozen=True)
class SelectionFingerprint:
    """What identifies the events of one sample: the file's size, its entries and which of them pass."""

    file_size: int
    entries: int
    selected: int
    selection_hash: str

    @classmethod
    def of(cls, file_size: int, selection: np.ndarray) -> SelectionFingerprint:
        packed = np.packbits(np.asarray(selection, dtype=bool))
        digest = hashlib.sha256(packed.tobytes()).hexdigest()[:16]
        return cls(file_size, len(selection), int(np.count_nonzero(selection)), digest)

    def differences(self, other: SelectionFingerprint) -> str:
        parts = []
        if self.file_size != other.file_size:
            parts.append(f"file size {self.file_size} → {other.file_size} bytes")
        if self.entries != other.entries:
            parts.append(f"entries {self.entries} → {other.entries}")
        if self.selected != other.selected:
            parts.append(f"selected events {self.selected} → {other.selected}")
        if not parts and self.selection_hash != other.selection_hash:
            parts.append("a different set of events passes the cut")
        return ", ".join(parts)


def assign_partitions(n_events: int, ratios: tuple[float, float, float], seed: int, sample: str) -> np.ndarray:
    """Deterministic assignment (0 train, 1 validation, 2 test) with exact counts per partition."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.encode())])
    n_train = round(n_events * ratios[0])
    n_validation = min(round(n_events * ratios[1]), n_events - n_train)
    assignment = np.full(n_events, TEST, dtype=np.int8)
    order = rng.permutation(n_events)
    assignment[order[:n_train]] = TRAIN
    assignment[order[n_train : n_train + n_validation]] = VALIDATION
    return assignment


def fold_numbers(values: np.ndarray, folds: int, where: str) -> np.ndarray:
    """Each event's fold, ``value mod folds`` in [0, folds) (negative values too), from integer values only.

    Floats are accepted only when they hold integers exactly below 2**53: above, two event numbers can share one
    float and so one fold by accident, and the fold rule would no longer be the one a C++ framework applies.
    """
    values = np.asarray(values)
    if values.dtype.kind == "b":
        raise SplitError(f"{where}: the k-fold variable is boolean, not an integer")
    if values.dtype.kind == "f":
        exact = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**53)
        if not exact.all():
            bad = values[~exact][0]
            raise SplitError(f"{where}: the k-fold variable must be an integer; {int((~exact).sum())} events have "
                             f"values like {bad!r}: use an integer branch (e.g. the event number)")  # fmt: skip
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iu":
        raise SplitError(f"{where}: the k-fold variable has type {values.dtype}, not an integer")
    # Unsigned values stay unsigned: uint64 numbers from 2**63 up would wrap to negatives in int64 (another fold).
    wide = values.astype(np.uint64 if values.dtype.kind == "u" else np.int64)
    return np.mod(wide, folds).astype(np.int8)


def fold_partition(fold: np.ndarray, model_fold: int, folds: int) -> np.ndarray:
    """The partition of every event for fold model ``model_fold``: its own fold is its test, the next one its
    validation, the rest its training."""
    partition = np.full(len(fold), TRAIN, dtype=np.int8)
    partition[fold == (model_fold + 1) % folds] = VALIDATION
    partition[fold == model_fold] = TEST
    return partition


def fold_roles(model_fold: int, folds: int) -> dict[str, list[int]]:
    """Which folds fold model ``model_fold`` was tested, validated and trained on (written into model bundles)."""
    validation = (model_fold + 1) % folds
    return {"test": [model_fold], "validation": [validation],
            "train": [f for f in range(folds) if f not in (model_fold, validation)]}  # fmt: skip


def checksum(assignments: dict[str, np.ndarray]) -> str:
    """Checksum of the assignments of the given samples (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(assignments):
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(assignments[name], dtype=np.int8).tobytes())
    return digest.hexdigest()[:16]


def _unreadable(path: Path, error: Exception, npz_path: Path, meta_path: Path) -> str:
    return (
        f"{path}: unreadable split file ({type(error).__name__}: {' '.join(str(error).split())}): delete "
        f"{npz_path} and {meta_path} to make the split again (it is deterministic: the same settings and data give "
        f"the same split, which the scans' split checksum then confirms)"
    )


def read_assignments(path: Path, meta_path: Path | None = None) -> dict[str, np.ndarray]:
    """The persisted assignments of ``splits/NAME.npz``; a damaged file is a :class:`SplitError` naming it."""
    meta_path = meta_path or path.with_suffix(".json")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:  # closed on any error
            assignments = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise SplitError(_unreadable(path, error, path, meta_path)) from None
    for name, values in assignments.items():
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise SplitError(_unreadable(path, ValueError(f"'{name}' is not an assignment"), path, meta_path))
    return assignments


class SplitStore:
    """The persisted split ``splits/<name>.npz`` (assignments) with ``<name>.json`` (settings, fingerprints)."""

    def __init__(self, directory: Path, name: str, ratios: tuple[float, float, float], seed: int,
                 kfold: dict | None = None):  # fmt: skip
        self.name = name
        self.ratios = ratios
        self.seed = seed
        self.kfold = kfold  # {"folds": k, "variable": expression}: assignments are fold numbers
        self.path = directory / f"{name}.npz"
        self.meta_path = directory / f"{name}.json"
        self._assignments: dict[str, np.ndarray] = {}
        self._fingerprints: dict[str, dict] = {}
        self._dirty = False
        if self.meta_path.exists():
            self._load()

    def _load(self) -> None:
        if not self.path.exists():
            raise SplitError(
                f"split '{self.name}': {self.path} is missing but {self.meta_path} is there: restore it, or delete "
                f"both to make the split again (it is deterministic: the same settings give the same split)"
            )
        meta = self._read_meta()
        if meta.get("kfold") != self.kfold:
            def described(kfold: dict | None) -> str:
                return f"{kfold['folds']} folds of '{kfold['variable']}'" if kfold else "ratios"

            raise SplitError(
                f"split '{self.name}' ({self.meta_path}) was made with {described(meta.get('kfold'))}, the "
                f"parameters now ask for {described(self.kfold)}: use a new split name or restore the settings"
            )
        if not self.kfold and (tuple(meta["ratios"]) != tuple(self.ratios) or meta["seed"] != self.seed):
            raise SplitError(
                f"split '{self.name}' ({self.meta_path}) was made with ratios {meta['ratios']} and seed "
                f"{meta['seed']}, the parameters now ask for {list(self.ratios)} and seed {self.seed}: "
                f"use a new split name or restore the settings"
            )
        self._assignments = read_assignments(self.path, self.meta_path)
        self._fingerprints = meta["samples"]

    def _read_meta(self) -> dict:
        try:
            meta = json.loads(self.meta_path.read_text())
            if not isinstance(meta, dict) or not {"ratios", "seed", "samples"} <= set(meta):
                raise ValueError("keys ratios, seed and samples expected")
            for known in meta["samples"].values():
                SelectionFingerprint(**known)
        except (ValueError, TypeError, AttributeError) as error:
            raise SplitError(_unreadable(self.meta_path, error, self.path, self.meta_path)) from None
        return meta

    def assignment(self, sample: str, fingerprint: SelectionFingerprint, folds: np.ndarray | None = None) -> np.ndarray:
        """The sample's assignment; made and remembered if new, checked against the data if known.

        For k-fold, ``folds`` are the events' folds computed from the data now; they must equal the persisted ones.
        """
        known = self._fingerprints.get(sample)
        if known is None:
            self._assignments[sample] = (np.asarray(folds, dtype=np.int8) if self.kfold else
                                         assign_partitions(fingerprint.selected, self.ratios, self.seed, sample))
            self._fingerprints[sample] = fingerprint.__dict__
            self._dirty = True
        else:
            before = SelectionFingerprint(**known)
            if before != fingerprint:
                raise SplitError(
                    f"sample '{sample}' changed since split '{self.name}' was made "
                    f"({before.differences(fingerprint)}): "
                    f"a re-split would mix results; use a new split name or delete {self.path} and {self.meta_path}"
                )
            if self.kfold and not np.array_equal(self._assignments[sample], folds):
                changed = int(np.count_nonzero(self._assignments[sample] != folds))
                raise SplitError(
                    f"sample '{sample}': {changed} events now fall in another fold than when split '{self.name}' "
                    f"was made ('{self.kfold['variable']}' changed): a fold model would score events it trained "
                    f"on; use a new split name"
                )
        return self._assignments[sample]

    def save(self) -> None:
        if not self._dirty:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **self._assignments)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buffer.getvalue())
        meta = {
            "name": self.name,
            "ratios": list(self.ratios),
            "seed": self.seed,
            "samples": self._fingerprints,
        }
        if self.kfold:
            meta["kfold"] = self.kfold
        atomic_write_bytes(self.meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        self._dirty = False
