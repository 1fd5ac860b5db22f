"""Slurm execution through submitit: groups of trials as job arrays, requeued and resumed on timeout.

Each job runs :func:`hhscan.execution.runner.run_scan_trials` on its group: imports and data once, every finished trial
written at once. On the signal submitit forwards before the time limit (or on preemption), the job is requeued
as a :class:`submitit.helpers.Checkpointable`, and the trial in progress resumes from its last finished epoch.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hhscan.errors import BackendError, did_you_mean
from hhscan.execution import jobstate, submitit_import
from hhscan.execution.jobstate import ACTIVE_STATES, ScanStatus
from hhscan.execution.scandir import ScanDirectory
from hhscan.learning.trial import Trial
from hhscan.settings.config import SlurmSettings

submitit = submitit_import.load()

GENERIC = ("timeout_min", "mem_gb", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node", "name",
           "stderr_to_stdout")  # fmt: skip
# SlurmExecutor's own parameters (submitit 1.5), kept here: submitit lists them only privately; a test compares
# them with the list its public update_parameters prints, so a new submitit cannot leave them stale.
SLURM_PARAMETERS = (
    "account", "additional_parameters", "array_parallelism", "comment", "constraint", "cpus_per_gpu", "cpus_per_task",
    "dependency", "exclude", "exclusive", "gpus_per_node", "gpus_per_task", "gres", "job_name", "mail_type",
    "mail_user", "mem", "mem_per_cpu", "mem_per_gpu", "nodelist", "nodes", "ntasks_per_node", "num_gpus",
    "partition", "qos", "setup", "signal_delay_s", "srun_args", "stderr_to_stdout", "teardown", "time", "use_srun",
    "wckey",
)  # fmt: skip
SUBMITIT_TIMEOUT_MIN, SUBMITIT_SIGNAL_DELAY_S = 5, 90  # submitit's defaults when the resources name none
CLUSTER_HINT = (
    "start the project's cluster with 'scripts/slurm-cluster.sh start' and 'eval \"$(scripts/slurm-cluster.sh env)\"'"
)


class TrialGroupJob(submitit.helpers.Checkpointable):
    """What a Slurm job runs: the given trials of a scan. Requeued with the same arguments on timeout."""

    def __call__(self, scan_root: str, trial_ids: Sequence[str], config_path: str = "") -> list[str]:
        from hhscan.execution.runner import JobContext, run_adaptive, run_scan_trials

        environment = submitit.JobEnvironment()
        context = JobContext(
            job_id=str(environment.job_id), log_path=str(environment.paths.stdout), config_path=config_path
        )
        scan = ScanDirectory(Path(scan_root))
        if is_worker_group(trial_ids):  # an adaptive scan: ask and train up to this many trials of its budget
            records = run_adaptive(scan, context=context, max_trials=len(trial_ids))
        else:
            records = run_scan_trials(scan, list(trial_ids), context=context)
        return [f"{r.trial_id} {r.status}" for r in records]


# An adaptive scan's jobs are workers: their groups hold placeholders, one per trial each may ask (never an id).
ASK = "ask:"


def worker_groups(count: int, size: int) -> list[list[str]]:
    """Groups of ``size`` placeholders for ``count`` trials of an adaptive scan's budget, not asked yet."""
    batch = secrets.token_hex(3)  # unique per submission: status follows every worker job, not only the last
    return group([Trial(f"{ASK}{batch}:{i}", {}, 0) for i in range(count)], size)


def is_worker_group(trial_ids: Sequence[str]) -> bool:
    return bool(trial_ids) and all(str(t).startswith(ASK) for t in trial_ids)


def queued_workers(scan: ScanDirectory, status: ScanStatus) -> int:
    """How many trials an adaptive scan's queued or running workers may still ask or train: their placeholders,
    less the trials each has recorded already."""
    recorded: dict[str, int] = {}
    for item in status.trials:
        if item.record is not None and item.record.job_id:
            recorded[item.record.job_id] = recorded.get(item.record.job_id, 0) + 1
    total = 0
    for job in scan.manifest().get("jobs", []):
        info = status.jobs.get(str(job["job_id"]))
        if is_worker_group(job["trial_ids"]) and info is not None and info.state in ACTIVE_STATES:
            total += max(0, len(job["trial_ids"]) - recorded.get(str(job["job_id"]), 0))
    return total


def resource_parameters(settings: SlurmSettings) -> dict[str, Any]:
    """The resources as AutoExecutor parameters; unknown names are an error listing the valid ones."""
    valid_slurm = sorted(SLURM_PARAMETERS)
    parameters: dict[str, Any] = {}
    for key, value in settings.resources.items():
        bare = key.removeprefix("slurm_")
        if key in GENERIC or bare == "max_num_timeout":
            parameters["slurm_max_num_timeout" if bare == "max_num_timeout" else key] = value
        elif bare in valid_slurm:
            parameters[f"slurm_{bare}"] = value
        else:
            valid = [*GENERIC, "max_num_timeout", *valid_slurm]
            raise BackendError(
                f"slurm.resources.{key}: unknown Slurm resource ({did_you_mean(bare, valid, 'valid names')}; "
                f"valid: {', '.join(valid)})"
            )
    parameters["slurm_array_parallelism"] = settings.array_parallelism
    check_signal_delay(parameters)
    return parameters


def check_signal_delay(parameters: dict[str, Any]) -> None:
    """The checkpoint signal must leave the job time to work: at most half the time limit before it."""
    limit_s = 60 * float(parameters.get("timeout_min", SUBMITIT_TIMEOUT_MIN))
    delay_s = float(parameters.get("slurm_signal_delay_s", SUBMITIT_SIGNAL_DELAY_S))
    if delay_s > limit_s / 2:
        origin = "" if "slurm_signal_delay_s" in parameters else ", submitit's default"
        raise BackendError(
            f"slurm.resources: timeout_min {limit_s / 60:g} ({limit_s:g} s) with the checkpoint signal "
            f"{delay_s:g} s before the limit (slurm_signal_delay_s{origin}) "
            f"leaves the job {max(limit_s - delay_s, 0):g} s before it is told to stop: set slurm_signal_delay_s to at "
            f"most {int(limit_s // 2)} or raise timeout_min"
        )


def memory_warning(settings: SlurmSettings, worker_memory_gb: float | None, baseline_gb: float) -> str | None:
    """A warning when the worker's restart bound (``worker_memory_gb``, else 80% of ``mem_gb``) is below the
    memory a worker needs before training anything (``baseline_gb``, measured): it would restart after every pack."""
    mem_gb = settings.resources.get("mem_gb")
    if worker_memory_gb is not None:
        bound, source = worker_memory_gb, f"training.worker_memory_gb {worker_memory_gb:g} GB"
    elif mem_gb is not None:
        bound, source = 0.8 * float(mem_gb), f"slurm.resources.mem_gb {float(mem_gb):g} GB (restart bound 80%)"
    else:
        return None
    if bound > baseline_gb:
        return None
    return (
        f"{source} is below the worker's baseline of {baseline_gb:.2f} GB (imports and data, measured here): the "
        f"worker would restart after every pack; ask for mem_gb of at least {baseline_gb / 0.8 + 0.5:.1f}"
    )


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


def scan_lock(scan: ScanDirectory):
    """Serialise submissions to one scan: two resubmits at once never submit the same trial twice."""
    return scan.lock()


def submit_groups(scan: ScanDirectory, groups: list[list[str]], settings: SlurmSettings) -> list[dict[str, Any]]:
    """Submit the groups as job arrays (chunked below MaxArraySize) and record the jobs in the manifest."""
    check_reachable()
    parameters = resource_parameters(settings)
    # A fresh folder per submission: job ids restart when a cluster is rebuilt, and a reused folder would
    # hand back another job's result pickles.
    submission = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    frozen = scan.snapshot_config(submission)  # what these jobs run with, even if the scan's config changes later
    name = job_name(scan)
    # How many timeouts a job is requeued after (submitit's default 3) is the executor's, not a job parameter.
    requeues = {k: parameters.pop(k) for k in ("slurm_max_num_timeout",) if k in parameters}
    executor = submitit.AutoExecutor(folder=scan.logs_dir / submission / "%j", cluster="slurm", **requeues)
    try:
        executor.update_parameters(name=name, **parameters)
    except ValueError as error:
        raise BackendError(f"slurm.resources: {' '.join(str(error).split())[:400]}") from None
    chunk = max(1, min(settings.max_array_size or max_array_size(), max_array_size()) - 1)
    job = TrialGroupJob()
    entries: list[dict[str, Any]] = []
    for start in range(0, len(groups), chunk):
        part = groups[start : start + chunk]
        try:
            jobs = executor.map_array(job, [str(scan.root.resolve())] * len(part), part, [str(frozen)] * len(part))
        except (submitit.core.utils.FailedJobError, OSError) as error:  # sbatch refused: say so in its own words
            queued = (f"; the {len(entries)} job(s) of this submission queued before it are in the scan (see "
                      f"'hhscan status {scan.name}'): 'hhscan resubmit {scan.name}' submits only the rest"
                      if entries else "")  # fmt: skip
            raise BackendError(
                f"sbatch refused the submission: {' '.join(str(error).split())[:400]}{queued}"
            ) from None
        submitted = jobstate.submit_times([str(j.job_id) for j in jobs])
        part_entries = [
            {
                "job_id": slurm_job.job_id,
                "trial_ids": trial_ids,
                "submission": submission,
                "stdout": str(slurm_job.paths.stdout),
                "job_name": name,
                **({"slurm_submit": submitted[str(slurm_job.job_id)]} if str(slurm_job.job_id) in submitted else {}),
            }
            for slurm_job, trial_ids in zip(jobs, part, strict=True)
        ]
        # Each chunk's jobs reach the manifest at once: when a later chunk is refused, status still follows them
        # and resubmit never submits their trials a second time.
        scan.add_jobs(part_entries)
        entries += part_entries
    return entries


def job_name(scan: ScanDirectory) -> str:
    return f"hhscan-{scan.name}"
