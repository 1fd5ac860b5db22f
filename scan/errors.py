"""One root exception for everything a user can get wrong, one subclass per layer.

The CLI prints ``str(error)`` as one line and exits non-zero; the traceback only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HhscanError(Exception):
    """An error the user can fix: the message names the file, key or branch at fault."""


class ConfigError(HhscanError):
    """A configuration file is missing, malformed or inconsistent."""


class ExpressionError(HhscanError):
    """A cut or input expression does not parse or names an unknown branch."""


class DataError(HhscanError):
    """A data file, tree, branch or its content is unusable."""


class SplitError(HhscanError):
    """A persisted train/validation/test split does not match the data any more."""


class ScanError(HhscanError):
    """A scan directory is missing, inconsistent or refuses the requested action."""


class WorkspaceError(HhscanError):
    """A directory hhscan must write to is not writable."""


class BackendError(HhscanError):
    """Slurm (or another executor) is unreachable or refused a submission."""


class DeviceError(HhscanError):
    """The job was given an accelerator that the installed backend cannot use."""


class ModelError(HhscanError):
    """A model file is missing, not an hhscan model, or does not fit the data."""


class UserCodeError(ModelError):
    """The user's own code (an own model's file) failed: one line, then their traceback (never hhscan's)."""

    def __init__(self, message: str, user_traceback: str):
        super().__init__(message)
        self.user_traceback = user_traceback


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name``, best first; falls back to a prefix of the sorted list."""
    pool = sorted(set(candidates))
    matches = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not matches:
        lowered = name.lower()
        matches = [c for c in pool if lowered in c.lower() or c.lower() in lowered][:n]
    return matches


def did_you_mean(name: str, candidates: Iterable[str], what: str = "valid names") -> str:
    """A suffix for an error message: the closest names, or the first few valid ones."""
    pool = sorted(set(candidates))
    near = closest(name, pool)
    if near:
        return f"closest: {', '.join(near)}"
    shown = ", ".join(pool[:12]) + (", …" if len(pool) > 12 else "")
    return f"{what}: {shown}" if pool else f"no {what} available"
