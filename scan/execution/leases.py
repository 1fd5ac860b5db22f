"""Trial leases: which attempt trains a trial right now, proven by files in the scan directory, not by Slurm.

A lease is ``leases/<trial>.<generation>.json``. An attempt claims a trial by creating the next generation with
``os.link`` from a complete temporary file: ``link`` is atomic and fails if the name exists, on local disks and
on NFS (v2/v3/v4, where ``O_EXCL`` was historically unreliable and ``flock`` depends on a lock daemon), so of
two attempts claiming one generation exactly one wins, and a lease is never seen half-written. The holder
renews its lease (heartbeat and progress) by renaming a new complete file over it. A lease is live while it is
not released, its file was modified less than ``STALE_S`` ago, and — on the host that wrote it — its process
exists. A trial with a live lease is never started by another attempt and never resubmitted; a dead or stale
lease is superseded by claiming the next generation, so the highest generation is the one current holder.

What the design needs of the file system, and nothing more:

- atomic: ``link`` (create a name only if it does not exist: the claim) and ``rename`` over an existing name
  (a renewal, a checkpoint, a record); both are atomic on POSIX disks and on NFS servers;
- by name, never by listing: the current generation is found by looking names up one by one (generations are
  1, 2, 3, … without gaps: each claim creates the one after the highest), because NFS clients cache directory
  listings for seconds while a lookup by name revalidates against the server (close-to-open consistency). Only
  ``all_current`` (``hhscan status``) lists the directory, to learn which trials have leases at all;
- one clock: liveness is the age of a lease file by the file server's clock — its mtime, set by the server on
  every write, compared with the mtime of a probe file this reader creates — never the holder's clock against the
  reader's, which on a cluster may differ by minutes.

A requeued Slurm job (same job id, higher ``SLURM_RESTART_COUNT``) and a worker that replaced itself (same host
and pid) take their own lease over at once: Slurm runs one instance of a job at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hhscan.fileio import atomic_write_text

HEARTBEAT_S = float(os.environ.get("HHSCAN_LEASE_HEARTBEAT_S", "30"))
STALE_S = float(os.environ.get("HHSCAN_LEASE_STALE_S", "300"))
PROGRESS_WRITE_S = 1.0  # at most one progress write per second per attempt: epochs can take milliseconds
CLOCK_PROBE_S = 60.0  # how long a measured offset between this host's clock and the file server's is reused


@dataclass
class Lease:
    trial_id: str
    generation: int
    attempt: str
    job_id: str = ""
    host: str = ""
    pid: int = 0
    restart_count: int = 0
    started: float = 0.0
    heartbeat: float = 0.0
    epoch: int = 0
    epochs: int = 0
    monitor: str = ""
    best: float | None = None
    released: bool = False
    # Not stored in the file: its mtime (the file server's clock) and that clock minus the reader's when it was read.
    modified: float = field(default=0.0, compare=False, repr=False)
    clock_offset: float = field(default=0.0, compare=False, repr=False)

    def age(self, now: float | None = None) -> float:
        """Seconds since the lease file was last written, by the file server's clock (``now``: the reader's)."""
        now = time.time() if now is None else now
        if not self.modified:  # a lease built in memory, never read back: only its own heartbeat is known
            return now - self.heartbeat
        return now + self.clock_offset - self.modified

    def live(self, now: float | None = None) -> bool:
        if self.released:
            return False
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return False
        return self.age(now) < STALE_S

    def to_json(self) -> str:
        stored = asdict(self)
        del stored["modified"], stored["clock_offset"]
        return json.dumps(stored)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass
class Attempt:
    """This process as a holder of leases: one attempt id per process start."""

    job_id: str = ""
    attempt: str = field(default_factory=lambda: secrets.token_hex(6))
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    restart_count: int = field(default_factory=lambda: int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))

    def may_take_over(self, lease: Lease) -> bool:
        """Its own earlier run: the same Slurm job requeued, or this very process before it replaced itself."""
        if self.job_id and lease.job_id == self.job_id and self.restart_count > lease.restart_count:
            return True
        return lease.host == self.host and lease.pid == self.pid and lease.attempt != self.attempt


def _file_name(trial_id: str, generation: int) -> str:
    return f"{trial_id}.{generation:06d}.json"


class Leases:
    """The leases of one scan directory."""

    def __init__(self, scan_root: Path):
        self.directory = Path(scan_root) / "leases"
        self._clock: tuple[float, float] | None = None  # (when measured, by this host's monotonic clock; offset)

    def _path(self, trial_id: str, generation: int) -> Path:
        return self.directory / _file_name(trial_id, generation)

    def clock_offset(self) -> float:
        """The file server's clock minus this host's: the mtime of a probe file just created, minus the time now."""
        if self._clock is not None and time.monotonic() - self._clock[0] < CLOCK_PROBE_S:
            return self._clock[1]
        if not self.directory.is_dir():
            return 0.0
        probe = self.directory / f".clock.{secrets.token_hex(6)}"
        try:
            before = time.time()
            probe.write_bytes(b"")
            offset = probe.stat().st_mtime - (before + time.time()) / 2
        except OSError:  # a reader who may not write here (a colleague's `hhscan status`): its own clock
            offset = 0.0
        finally:
            probe.unlink(missing_ok=True)
        self._clock = (time.monotonic(), offset)
        return offset

    def _latest_generation(self, trial_id: str) -> int:
        """The highest generation of a trial (0: none), looked up by name: 1, 2, … until one does not exist."""
        generation = 0
        while self._path(trial_id, generation + 1).exists():
            generation += 1
        return generation

    def _trial_ids(self) -> set[str]:
        """The trials with a lease file: a directory listing, so possibly seconds old on NFS (``status`` only)."""
        found = set()
        if not self.directory.is_dir():
            return found
        with os.scandir(self.directory) as entries:
            for entry in entries:
                parts = entry.name.split(".")
                if len(parts) == 3 and parts[2] == "json" and parts[1].isdigit() and not entry.name.startswith("."):
                    found.add(parts[0])
        return found

    def _read(self, trial_id: str, generation: int, offset: float = 0.0) -> Lease | None:
        path = self._path(trial_id, generation)
        try:
            with open(path) as handle:
                text = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        try:
            lease = Lease(**json.loads(text))
        except (ValueError, TypeError):  # not ours or edited: live while its file is fresh
            lease = Lease(trial_id, generation, attempt="?", heartbeat=modified, started=modified)
        lease.modified, lease.clock_offset = modified, offset
        return lease

    def current(self, trial_id: str) -> Lease | None:
        generation = self._latest_generation(trial_id)
        return self._read(trial_id, generation, self.clock_offset()) if generation else None

    def all_current(self) -> dict[str, Lease]:
        result = {}
        for trial_id in sorted(self._trial_ids()):
            lease = self.current(trial_id)
            if lease is not None:
                result[trial_id] = lease
        return result

    def history(self, trial_id: str) -> list[Lease]:
        """Every generation on disk, oldest first."""
        leases = (self._read(trial_id, g) for g in range(1, self._latest_generation(trial_id) + 1))
        return [lease for lease in leases if lease is not None]

    def live(self) -> dict[str, Lease]:
        return {t: lease for t, lease in self.all_current().items() if lease.live()}

    def claim(self, trial_id: str, attempt: Attempt) -> tuple[Lease | None, Lease | None]:
        """Claim ``trial_id``: (our lease, None), or (None, the live lease of the attempt that holds it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lost = 0
        while True:
            current = self.current(trial_id)
            if current is not None and current.attempt == attempt.attempt:
                return current, None
            if current is not None and current.live() and not attempt.may_take_over(current):
                return None, current
            now = time.time()
            lease = Lease(trial_id, (current.generation + 1) if current else 1, attempt.attempt, attempt.job_id,
                          attempt.host, attempt.pid, attempt.restart_count, now, now)  # fmt: skip
            temporary = self.directory / f".{trial_id}.{attempt.attempt}.claim"
            temporary.write_text(lease.to_json())
            try:
                os.link(temporary, self._path(trial_id, lease.generation))
            except FileExistsError:
                # Another attempt took this generation first: look again, after a random pause that grows with
                # each loss, so that many workers (or a stale cache) do not spin on one name.
                lost += 1
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**lost)))
                continue
            finally:
                temporary.unlink(missing_ok=True)
            return lease, None

    def write(self, lease: Lease) -> bool:
        """Rewrite our lease (heartbeat, progress, release); False when a newer generation superseded it."""
        if self._path(lease.trial_id, lease.generation + 1).exists():
            return False
        if not self._path(lease.trial_id, lease.generation).exists():  # the scan's leases were cleared
            return False
        atomic_write_text(self._path(lease.trial_id, lease.generation), lease.to_json())
        return True

    def clear(self) -> None:
        """Remove every lease file (a finished scan)."""
        if self.directory.is_dir():
            for entry in os.scandir(self.directory):
                Path(entry.path).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a reader's clock probe appeared meanwhile: the next clean takes it
                self.directory.rmdir()


class LeaseKeeper:
    """The leases this attempt holds, renewed by a background thread while it trains, released at the end."""

    def __init__(self, leases: Leases, attempt: Attempt):
        self.leases, self.attempt = leases, attempt
        self.held: dict[str, Lease] = {}
        self.superseded: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_progress_write = 0.0

    def claim(self, trial_ids: Iterable[str]) -> dict[str, Lease]:
        """Claim each trial; returns the live leases of other attempts for the trials that were not claimed."""
        others = {}
        for trial_id in trial_ids:
            mine, other = self.leases.claim(trial_id, self.attempt)
            if mine is not None:
                with self._lock:
                    self.held[trial_id] = mine
                    self.superseded.discard(trial_id)
            elif other is not None:
                others[trial_id] = other
        return others

    def owns(self, trial_id: str) -> bool:
        """True while our lease is the trial's current one (checked on disk, just before results are written)."""
        current = self.leases.current(trial_id)
        return current is not None and current.attempt == self.attempt.attempt and not current.released

    def holds(self, trial_id: str, confirm: bool = False) -> bool:
        """Whether this attempt still holds ``trial_id``: as the last renewal found it, or (``confirm``) renewed on
        disk now — what a checkpoint write checks first, so a superseded attempt never writes one."""
        if confirm:
            self._renew([trial_id])
        with self._lock:
            return trial_id in self.held and trial_id not in self.superseded

    def _renew(self, trial_ids: Sequence[str] | None = None) -> None:
        now = time.time()
        with self._lock:
            for trial_id in list(trial_ids if trial_ids is not None else self.held):
                lease = self.held.get(trial_id)
                if lease is None:
                    continue
                lease.heartbeat = now
                try:
                    renewed = self.leases.write(lease)
                except OSError as error:  # a file server's hiccup: the lease is still ours; the next beat retries
                    print(f"hhscan: trial {trial_id}: renewing its lease failed ({type(error).__name__}: {error}); "
                          f"retrying", file=sys.stderr, flush=True)  # fmt: skip
                    continue
                if not renewed:
                    print(f"hhscan: trial {trial_id}: another attempt took its lease; this attempt stops training "
                          f"it and writes nothing for it", flush=True)  # fmt: skip
                    self.superseded.add(trial_id)
                    del self.held[trial_id]

    def progress(self, trial_ids: Sequence[str], epoch: int, epochs: int, monitor: str,
                 best: Sequence[float | None]) -> None:  # fmt: skip
        """Record a pack's progress in its leases; written at most once per ``PROGRESS_WRITE_S``."""
        with self._lock:
            for trial_id, value in zip(trial_ids, best, strict=True):
                lease = self.held.get(trial_id)
                if lease is not None:
                    lease.epoch, lease.epochs, lease.monitor, lease.best = epoch, epochs, monitor, value
        if time.monotonic() - self._last_progress_write >= PROGRESS_WRITE_S or epoch == epochs:
            self._last_progress_write = time.monotonic()
            self._renew(trial_ids)

    def release(self, trial_ids: Iterable[str]) -> None:
        with self._lock:
            for trial_id in trial_ids:
                lease = self.held.pop(trial_id, None)
                if lease is not None:
                    lease.released, lease.heartbeat = True, time.time()
                    try:
                        self.leases.write(lease)
                    except OSError as error:  # unreleased, it goes stale: the trial's record says it is done
                        print(f"hhscan: trial {trial_id}: releasing its lease failed ({error})", file=sys.stderr,
                              flush=True)  # fmt: skip

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._renew()

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._beat, name="hhscan-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Only a normal end or a trial-level failure releases: a job killed or requeued keeps its leases until
        # they go stale, or its own requeued run takes them over.
        if exc_info[0] is None:
            self.release(list(self.held))
