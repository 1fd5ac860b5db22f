"""Slurm execution through submitit: groups of trials as job arrays, requeued and resumed on timeout.

Each job runs :func:`hhscan.runner.run_scan_trials` on its group: imports and data once, every finished trial
written at once. On the signal submitit forwards before the time limit (or on preemption), the job is requeued
as a :class:`submitit.helpers.Checkpointable`, and the trial in progress resumes from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from hhscan.config import SlurmSettings
from hhscan.errors import BackendError, did_you_mean
from hhscan.records import TrialRecord
from hhscan.scandir import ScanDirectory
from hhscan.trial import Trial

GENERIC = ("timeout_min", "mem_gb", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node", "name",
           "stderr_to_stdout")  # fmt: skip
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}  # fmt: skip
CLUSTER_HINT = (
    "start the project's cluster with 'scripts/slurm-cluster.sh start' and 'eval \"$(scripts/slurm-cluster.sh env)\"'"
)


class TrialGroupJob(submitit.helpers.Checkpointable):
    """What a Slurm job runs: the given trials of a scan. Requeued with the same arguments on timeout."""

    def __call__(self, scan_root: str, trial_ids: Sequence[str]) -> list[str]:
        from hhscan.runner import JobContext, run_scan_trials

        environment = submitit.JobEnvironment()
        context = JobContext(job_id=str(environment.job_id), log_path=str(environment.paths.stdout))
        records = run_scan_trials(ScanDirectory(Path(scan_root)), list(trial_ids), context=context)
        return [f"{r.trial_id} {r.status}" for r in records]


def resource_parameters(settings: SlurmSettings) -> dict[str, Any]:
    """The resources as AutoExecutor parameters; unknown names are an error listing the valid ones."""
    valid_slurm = sorted(submitit.SlurmExecutor._valid_parameters())
    parameters: dict[str, Any] = {}
    for key, value in settings.resources.items():
        bare = key.removeprefix("slurm_")
        if key in GENERIC:
            parameters[key] = value
        elif bare in valid_slurm:
            parameters[f"slurm_{bare}"] = value
        else:
            valid = [*GENERIC, *valid_slurm]
            raise BackendError(
                f"slurm.resources.{key}: unknown Slurm resource ({did_you_mean(bare, valid, 'valid names')}; "
                f"valid: {', '.join(valid)})"
            )
    parameters["slurm_array_parallelism"] = settings.array_parallelism
    return parameters


def check_reachable() -> None:
    """One line saying Slurm cannot be reached, and how to start the project's cluster."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise BackendError(f"Slurm is not installed here (no sbatch/sinfo on PATH): {CLUSTER_HINT}")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sinfo would retry a missing file for a minute
        raise BackendError(f"Slurm is not reachable (SLURM_CONF={conf} does not exist): {CLUSTER_HINT}")
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise BackendError(f"Slurm is not reachable (sinfo timed out): {CLUSTER_HINT}") from None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:200] or f"exit {result.returncode}"
        raise BackendError(f"Slurm is not reachable (sinfo: {reason}): {CLUSTER_HINT}")


def max_array_size() -> int:
    result = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20)
    for line in result.stdout.splitlines():
        if line.strip().startswith("MaxArraySize"):
            return int(line.split("=")[1])
    return 1001


def group(trials: Sequence[Trial], size: int) -> list[list[str]]:
    """Consecutive groups of ``size`` trial ids; the last partial group is kept."""
    if size < 1:
        raise BackendError(f"--split must be at least 1, got {size}")
    ids = [t.id for t in trials]
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@contextlib.contextmanager
def scan_lock(scan: ScanDirectory) -> Iterator[None]:
    """Serialise submissions to one scan: two resubmits at once never submit the same trial twice."""
    scan.root.mkdir(parents=True, exist_ok=True)
    with open(scan.root / ".submit.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def submit_groups(scan: ScanDirectory, groups: list[list[str]], settings: SlurmSettings) -> list[dict[str, Any]]:
    """Submit the groups as job arrays (chunked below MaxArraySize) and record the jobs in the manifest."""
    check_reachable()
    parameters = resource_parameters(settings)
    # A fresh folder per submission: job ids restart when a cluster is rebuilt, and a reused folder would
    # hand back another job's result pickles.
    submission = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    executor = submitit.AutoExecutor(folder=scan.logs_dir / submission / "%j", cluster="slurm")
    try:
        executor.update_parameters(name=f"hhscan-{scan.name}", **parameters)
    except ValueError as error:
        raise BackendError(f"slurm.resources: {' '.join(str(error).split())[:400]}") from None
    chunk = max(1, min(settings.max_array_size or max_array_size(), max_array_size()) - 1)
    job = TrialGroupJob()
    entries: list[dict[str, Any]] = []
    for start in range(0, len(groups), chunk):
        part = groups[start : start + chunk]
        try:
            jobs = executor.map_array(job, [str(scan.root.resolve())] * len(part), part)
        except Exception as error:  # sbatch refused: say so with its own words
            raise BackendError(f"sbatch refused the submission: {' '.join(str(error).split())[:400]}") from None
        submitted = time.time()
        for slurm_job, trial_ids in zip(jobs, part, strict=True):
            entries.append(
                {
                    "job_id": slurm_job.job_id,
                    "trial_ids": trial_ids,
                    "submission": submission,
                    "stdout": str(slurm_job.paths.stdout),
                    "submitted_at": submitted,
                }
            )
    scan.add_jobs(entries)
    return entries


def queued_states() -> dict[str, str]:
    """Jobs the controller still holds (array tasks one per line), with their state."""
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)


def job_states(jobs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Slurm state of each job: accounting (submitit's sacct watcher, one query), else the queue.

    An array task cancelled while pending never reaches accounting: absent from both, it is GONE.
    """
    if not jobs:
        return {}
    handles = {j["job_id"]: submitit.SlurmJob(folder=Path(j["stdout"]).parent, job_id=j["job_id"]) for j in jobs}
    for handle in handles.values():
        handle.watcher.register_job(handle.job_id)
    states = {}
    for job_id, handle in handles.items():
        state = handle.watcher.get_state(job_id, mode="force" if job_id == next(iter(handles)) else "cache")
        states[job_id] = state.split()[0] if state else "UNKNOWN"
    if "UNKNOWN" in states.values():
        queued = queued_states()
        for job_id, state in states.items():
            if state == "UNKNOWN":
                states[job_id] = queued.get(job_id, "GONE")
    return states


@dataclass
class TrialStatus:
    trial: Trial
    state: str  # done, failed, running, pending, missing
    record: TrialRecord | None = None
    job: dict[str, Any] | None = None
    job_state: str = ""


@dataclass
class ScanStatus:
    trials: list[TrialStatus] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    def of(self, *states: str) -> list[TrialStatus]:
        return [t for t in self.trials if t.state in states]


def scan_status(scan: ScanDirectory) -> ScanStatus:
    """Each expected trial's state from its record and the Slurm state of the last job that had it."""
    records, corrupt = scan.records()
    jobs = scan.manifest().get("jobs", [])
    last_job: dict[str, dict[str, Any]] = {}
    for job in jobs:
        for trial_id in job["trial_ids"]:
            last_job[trial_id] = job
    latest_jobs = list({id(j): j for j in last_job.values()}.values())
    states = job_states(latest_jobs) if latest_jobs and shutil.which("sacct") else {}
    result = ScanStatus(corrupt=corrupt)
    for trial in scan.trials():
        record = records.get(trial.id)
        job = last_job.get(trial.id)
        job_state = states.get(job["job_id"], "") if job else ""
        if record is not None and record.done:
            state = "done"
        elif job_state == "RUNNING":
            state = "running"
        elif job_state in ACTIVE_STATES:
            state = "pending"
        elif record is not None:
            state = "failed"
        else:
            state = "missing"
        result.trials.append(TrialStatus(trial, state, record, job, job_state))
    return result


def to_resubmit(status: ScanStatus, skip_failed: bool = False) -> list[Trial]:
    """Missing trials, and failed ones unless ``skip_failed``; never a trial still queued or running."""
    states = ("missing",) if skip_failed else ("missing", "failed")
    return [t.trial for t in status.of(*states)]
