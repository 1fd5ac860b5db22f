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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhscan.errors import BackendError, did_you_mean
from hhscan.execution import submitit_import
from hhscan.execution.leases import Lease, Leases
from hhscan.execution.scandir import ScanDirectory
from hhscan.learning.records import PRUNED, TrialRecord
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
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}  # fmt: skip
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
        except Exception as error:  # sbatch refused: say so with its own words
            queued = (f"; the {len(entries)} job(s) of this submission queued before it are in the scan (see "
                      f"'hhscan status {scan.name}'): 'hhscan resubmit {scan.name}' submits only the rest"
                      if entries else "")  # fmt: skip
            raise BackendError(
                f"sbatch refused the submission: {' '.join(str(error).split())[:400]}{queued}"
            ) from None
        submitted = _submit_times([str(j.job_id) for j in jobs])
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


@dataclass
class JobInfo:
    """What Slurm says of one job (an array task is a job), after checking it is the job hhscan submitted."""

    state: str
    elapsed: str = ""
    limit: str = ""


def _query(arguments: list[str], timeout: float = 15) -> str | None:
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


def _submit_times(job_ids: Sequence[str]) -> dict[str, int]:
    """Slurm's own submit time of each just submitted job (array task), from the controller, else accounting."""
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    times: dict[str, int] = {}
    queue = _query(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%V"]) or ""
    accounting = ""
    if not set(job_ids) <= {line.split("|")[0] for line in queue.splitlines()}:
        accounting = _query(["sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", "JobID,Submit"]) or ""
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
    queue = _query(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j|%T|%V|%M|%l"])
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
        accounting = _query(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(rest), "-o", columns]) or ""
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
