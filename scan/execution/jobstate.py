"""What Slurm says about a scan's jobs, and each trial's state from it, its record and its lease.

Slurm is asked with ``squeue`` (the controller: the first truth for live jobs) and ``sacct`` (accounting, for jobs
that left the queue), its times read as Unix seconds. A job is the scan's own only if its name and the submit time
Slurm recorded at submission match: job ids restart when a cluster is rebuilt. Submission is ``slurm.py``'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhscan.execution.leases import Lease, Leases
from hhscan.execution.scandir import ScanDirectory
from hhscan.learning.records import PRUNED, TrialRecord
from hhscan.learning.trial import Trial

ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}  # fmt: skip


@dataclass
class JobInfo:
    """What Slurm says of one job (an array task is a job), after checking it is the job hhscan submitted."""

    state: str
    elapsed: str = ""
    limit: str = ""


def query(arguments: list[str], timeout: float = 15) -> str | None:
    try:
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **SLURM_TIME_ENV})  # fmt: skip
    except (subprocess.TimeoutExpired, OSError):
        return None
    return result.stdout if result.returncode == 0 else None


def unreachable_reason() -> str | None:
    """Why Slurm cannot be asked right now, in a few words, or None; fast (``scontrol ping`` answers at once)."""
    if shutil.which("scontrol") is None or shutil.which("squeue") is None:
        return "no Slurm clients on PATH"
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist"
    try:
        result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if result.returncode != 0 or "is UP" not in result.stdout:
        return "the controller does not answer (scontrol ping: DOWN)"
    return None


# Slurm prints its own times as Unix seconds (strftime %s): the same number on every host, whatever its clock or
# time zone. A job is recognised by the submit time Slurm itself recorded, never by the login host's clock.
SLURM_TIME_ENV = {"SLURM_TIME_FORMAT": "%s"}


def _timestamp(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def submit_times(job_ids: Sequence[str]) -> dict[str, int]:
    """Slurm's own submit time of each just submitted job (array task), from the controller, else accounting."""
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    times: dict[str, int] = {}
    queue = query(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%V"]) or ""
    accounting = ""
    if not set(job_ids) <= {line.split("|")[0] for line in queue.splitlines()}:
        accounting = query(["sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", "JobID,Submit"]) or ""
    for line in [*queue.splitlines(), *accounting.splitlines()]:
        task, _, submit = line.partition("|")
        for job_id in _task_ids(task):
            if (seconds := _timestamp(submit)) is not None:
                times.setdefault(job_id, seconds)
    return {job_id: times[job_id] for job_id in job_ids if job_id in times}


def _task_ids(job_id: str) -> list[str]:
    """sacct's ids as task ids: ``31_[2-4%8]`` (an array's pending tasks in one row) is 31_2, 31_3, 31_4."""
    base, _, tasks = job_id.partition("_")
    if not tasks.startswith("["):
        return [job_id]
    ids = []
    for part in tasks.strip("[]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def _identical(entry: dict[str, Any], name: str, submit: int | None) -> bool:
    """The job Slurm describes is the one hhscan submitted: same name, and the submit time Slurm gave it then."""
    if name != entry.get("job_name", name):
        return False
    if submit is None:  # known only from a live lease, which proves it
        return True
    if "slurm_submit" in entry:
        return submit == entry["slurm_submit"]
    if "submitted_at" not in entry:
        return True
    # A manifest from before Slurm's own submit time was kept: the login host's clock around the submission.
    after = entry.get("submitted_at", 0.0)
    before = entry.get("submitted_before", after - 600)
    return before - 2 <= submit <= after + 2  # Slurm keeps whole seconds


def job_infos(jobs: Sequence[dict[str, Any]]) -> dict[str, JobInfo]:
    """Slurm's view of each job: the queue (one line per array task), then accounting for those that left it.

    A job id that now names another job (ids restart when a cluster is rebuilt) is not ours: such a job, one
    unknown to both, and one accounting still calls active but the controller does not hold, is GONE.
    """
    if not jobs:
        return {}
    by_id = {str(j["job_id"]): j for j in jobs}
    infos: dict[str, JobInfo] = {}
    # All states: the controller keeps an ended job for MinJobAge (300 s by default) with its final state, while
    # accounting may still show it running or as one combined array row; the controller is the first truth.
    queue = query(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j|%T|%V|%M|%l"])
    # A requeued job keeps its id and name but gets a new submit time: such a queue row is ours if accounting's
    # history of the id (sacct -D) holds the original submission.
    requeued: dict[str, JobInfo] = {}
    for line in (queue or "").splitlines():
        fields = line.split("|")
        if len(fields) != 6 or fields[0] not in by_id:
            continue
        if _identical(by_id[fields[0]], fields[1], _timestamp(fields[3])):
            infos[fields[0]] = JobInfo(fields[2], fields[4], fields[5])
        elif _identical(by_id[fields[0]], fields[1], None):
            requeued[fields[0]] = JobInfo(fields[2], fields[4], fields[5])
    rest = sorted({job_id.split("_")[0] for job_id in by_id if job_id not in infos})
    if rest:
        columns = "JobID,JobName,State,Submit,Elapsed,Timelimit"
        accounting = query(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(rest), "-o", columns]) or ""
        for line in accounting.splitlines():
            fields = line.split("|")
            if len(fields) != 6:
                continue
            for task in _task_ids(fields[0]):
                entry = by_id.get(task)
                if entry is not None and task not in infos and _identical(entry, fields[1], _timestamp(fields[3])):
                    if task in requeued:  # its original submission: the queue's row is the live state
                        infos[task] = requeued[task]
                        continue
                    state = fields[2].split()[0]
                    # Active in accounting but not in the controller's queue: a controller that lost its state
                    # never closes the row. The queue is the truth for active jobs.
                    infos[task] = JobInfo("GONE" if queue is not None and state in ACTIVE_STATES else state,
                                          fields[4], fields[5])  # fmt: skip
    for job_id in by_id:
        infos.setdefault(job_id, JobInfo("GONE"))
    return infos


@dataclass
class TrialStatus:
    trial: Trial
    state: str  # done, pruned, failed, running, pending, missing, unknown
    record: TrialRecord | None = None
    job: dict[str, Any] | None = None
    job_state: str = ""
    lease: Lease | None = None


@dataclass
class ScanStatus:
    trials: list[TrialStatus] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    unreachable: str | None = None  # why Slurm could not be asked; states then come from records and leases
    litter: list[Path] = field(default_factory=list)
    budget: int | None = None  # an adaptive scan's search.trials (None for a grid): trials beyond those asked
    unasked: int = 0  # … the budget's trials not asked yet
    unrecorded_models: list[Path] = field(default_factory=list)  # a missing trial's zip: its record never written

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    def of(self, *states: str) -> list[TrialStatus]:
        return [t for t in self.trials if t.state in states]


def scan_status(scan: ScanDirectory) -> ScanStatus:
    """Each expected trial's state: its record, its lease (a live one means running, whatever Slurm says), and
    the Slurm state of the last job that had it, checked to be that job and not another under a reused id."""
    records, corrupt = scan.records()
    every_lease = Leases(scan.root).all_current()
    live = {trial_id: lease for trial_id, lease in every_lease.items() if lease.live()}
    jobs = scan.manifest().get("jobs", [])
    last_job: dict[str, dict[str, Any]] = {}
    for job in jobs:
        for trial_id in job["trial_ids"]:
            last_job[trial_id] = job
    wanted = {str(j["job_id"]): j for j in last_job.values()}
    every_job = {str(j["job_id"]): j for j in jobs}
    for lease in live.values():  # the job that runs a trial may be an earlier one than its last
        if lease.job_id:
            wanted.setdefault(lease.job_id, every_job.get(lease.job_id, {"job_id": lease.job_id}))
    unreachable = unreachable_reason() if wanted else None
    infos = job_infos(list(wanted.values())) if wanted and unreachable is None else {}
    result = ScanStatus(corrupt=corrupt, jobs=infos, unreachable=unreachable, litter=scan.litter())
    expected = scan.trials()
    if "search" in scan.manifest():  # adaptive: the asked trials, and the rest of the budget not asked yet
        result.budget = scan.load_config()[0].search.trials
        result.unasked = max(0, (result.budget or 0) - len(expected))
    for trial in expected:
        record, job, lease = records.get(trial.id), last_job.get(trial.id), live.get(trial.id)
        if job is None and trial.id in every_lease:  # an adaptive worker's trial: the job its last lease names
            job = every_job.get(every_lease[trial.id].job_id)
        job_state = infos[str(job["job_id"])].state if job and str(job["job_id"]) in infos else ""
        if record is not None and record.done:
            state = "done"
        elif record is not None and record.status == PRUNED:  # finished: never missing, never resubmitted
            state = "pruned"
        elif lease is not None:
            state = "running"
        elif unreachable is not None and job is not None:
            state = "failed" if record is not None else "unknown"
        elif job_state in ACTIVE_STATES:
            state = "pending"  # queued, or its job runs and has not reached it yet
        elif record is not None:
            state = "failed"
        else:
            state = "missing"
            if scan.model_path(trial.id).exists():
                result.unrecorded_models.append(scan.model_path(trial.id))
        result.trials.append(TrialStatus(trial, state, record, job, job_state, lease))
    return result


def to_resubmit(status: ScanStatus, skip_failed: bool = False) -> list[Trial]:
    """Missing trials, and failed ones unless ``skip_failed``; never a trial queued, running or unknown."""
    states = ("missing",) if skip_failed else ("missing", "failed")
    return [t.trial for t in status.of(*states)]
