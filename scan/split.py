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

    def __init__(self, directory: Path, name: str, ratios: tuple[float, float, float], seed: int):
        self.name = name
        self.ratios = ratios
        self.seed = seed
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
        if tuple(meta["ratios"]) != tuple(self.ratios) or meta["seed"] != self.seed:
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

    def assignment(self, sample: str, fingerprint: SelectionFingerprint) -> np.ndarray:
        """The sample's assignment; made and remembered if new, checked against the data if known."""
        known = self._fingerprints.get(sample)
        if known is None:
            self._assignments[sample] = assign_partitions(fingerprint.selected, self.ratios, self.seed, sample)
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
        atomic_write_bytes(self.meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        self._dirty = False
