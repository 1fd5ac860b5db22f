"""Atomic writes: a file is either absent, the old version, or the complete new version."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hhscan.errors import WorkspaceError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_temporary(path: Path, data: bytes) -> Path:
    """Write ``data`` to a synced temporary file beside ``path`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over ``path``."""
    temporary = _write_temporary(Path(path), data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def require_writable(directories: Iterable[Path]) -> None:
    """Refuse before any work when a directory (or, if it does not exist yet, the nearest existing parent that
    would hold it) cannot be written: a read-only ``models/`` must not surface after minutes of training."""
    for directory in directories:
        existing = Path(directory).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise WorkspaceError(f"{existing}: not a directory, but hhscan needs to write under {directory}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise WorkspaceError(f"{existing}: not writable (hhscan writes under {directory}): fix its permissions")
