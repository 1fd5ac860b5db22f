"""``hhscan status`` on the console: trials grouped by state and job, one line per job; detail on ``--verbose``."""

from __future__ import annotations

import re
from pathlib import Path

from hhscan.execution.jobstate import ScanStatus, TrialStatus
from rich.console import Console
from rich.markup import escape

STATES = ("done", "pruned", "failed", "running", "pending", "missing", "unknown")
COLOURS = {"failed": "red", "running": "green", "pending": "cyan", "missing": "yellow", "unknown": "magenta"}


def _job_key(item: TrialStatus) -> str:
    """The job a trial's line belongs to: the one running it (from its lease), else the last it was given to."""
    if item.lease is not None:
        return item.lease.job_id or f"local pid {item.lease.pid} on {item.lease.host}"
    if item.state == "failed" and item.record is not None and item.record.job_id:
        return item.record.job_id
    return str(item.job["job_id"]) if item.job else ""


def _log(path: str) -> str:
    """A log path only where the file exists: a task that never started has none."""
    return f"  log {path}" if path and Path(path).exists() else ""


def _job_error(job: dict) -> str:
    """Why an ended job failed, from the end of its stderr: Slurm's words for a task killed past its ``--mem``, else
    the first line of the error its Python traceback ends with (submitit prints the job's exception there)."""
    path = Path(str(job.get("stdout", "")).replace("_log.out", "_log.err"))
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 16384))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lowered = tail.lower()
    if "exceeded memory limit" in lowered or "exceeded job memory limit" in lowered or "oom-kill" in lowered:
        return " (killed past its memory limit: raise slurm.resources.mem_gb)"
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    for line in lines[starts[-1] + 1 :] if starts else []:
        if line.strip() and not line[0].isspace():  # the frames are indented; the error is not
            error = re.sub(r"^(?:\w+\.)+(?=\w+:)", "", line.strip())  # hhscan.errors.DeviceError → DeviceError
            return f": {error[:300]}"
    return ""


def _best(item: TrialStatus) -> str:
    lease = item.lease
    assert lease is not None
    if not lease.epochs:
        return "starting"
    best = f"  best {lease.monitor} {lease.best:.4f}" if lease.best is not None else ""
    return f"epoch {lease.epoch}/{lease.epochs}{best}  (heartbeat {lease.age():.0f} s ago)"


def print_status(console: Console, name: str, status: ScanStatus, verbose: bool = False) -> None:
    adaptive = status.budget is not None
    shown = [s for s in STATES if (s != "unknown" or status.count("unknown")) and (s != "pruned" or adaptive)]
    counts = "  ".join(f"{s}: {status.count(s)}" for s in shown)
    if adaptive:  # the budget: trials asked so far (each in one state) and the rest, not asked yet
        counts += f"  not yet asked: {status.unasked}"
        console.print(f"scan [bold]{name}[/] ({status.budget} trials, {len(status.trials)} asked)  {counts}")
    else:
        console.print(f"scan [bold]{name}[/] ({len(status.trials)} trials)  {counts}")
    if status.unreachable:
        console.print(
            f"  [magenta]Slurm is unreachable ({status.unreachable})[/]: states come from records and leases only"
        )
    for state in STATES[2:]:  # done and pruned trials are finished: counted, not listed
        groups: dict[str, list[TrialStatus]] = {}
        for item in status.of(state):
            groups.setdefault(_job_key(item), []).append(item)
        for job_id, items in groups.items():
            _print_group(console, state, job_id, items, status, verbose)
    if status.corrupt:
        console.print(
            f"  [yellow]{len(status.corrupt)} unreadable record file(s)[/]: {', '.join(sorted(status.corrupt))}"
        )
    if status.unrecorded_models:  # a worker stopped between writing the model and writing its record
        console.print(
            f"  [yellow]{len(status.unrecorded_models)} model zip(s) without a record[/] (counted missing; resubmit "
            f"retrains the trial and replaces the zip): " + escape(", ".join(str(p) for p in status.unrecorded_models))
        )
    if status.litter:
        size = sum(p.stat().st_size for p in status.litter if p.exists()) / 2**20
        console.print(
            f"  leftover: {len(status.litter)} file(s), {size:.1f} MiB (checkpoints of finished trials, temporary "
            f"files); removed when the scan finishes"
        )
    if status.count("missing") + status.count("failed"):
        console.print(f"resubmit them with: hhscan resubmit {name}")


def _print_group(
    console: Console, state: str, job_id: str, items: list[TrialStatus], status: ScanStatus, verbose: bool
) -> None:
    colour = COLOURS.get(state, "white")
    count = f"{len(items)} trial{'s' if len(items) != 1 else ''}"
    info = status.jobs.get(job_id)
    where = f"job {job_id}" if job_id and not job_id.startswith("local") else (job_id or "never submitted")
    detail = ""
    if state == "running" and info is not None and info.elapsed:
        detail = f"  elapsed {info.elapsed} of {info.limit}"
    elif state == "pending" and info is not None:
        detail = f"  {info.state}" + (f"  elapsed {info.elapsed} of {info.limit}" if info.state == "RUNNING" else "")
    elif state == "missing" and items[0].job:
        detail = f"  ended {items[0].job_state or 'UNKNOWN'}" + _job_error(items[0].job)
    elif state == "failed":
        errors = {i.record.error for i in items if i.record is not None}
        detail = f"  {sorted(errors)[0]}" + (f" (+{len(errors) - 1} other errors)" if len(errors) > 1 else "")
    log = ""
    if items[0].job and state in ("missing", "failed", "running", "pending"):
        log = _log(str(items[0].job.get("stdout", "")))
    shown = escape(f"{detail}{log if verbose or state != 'pending' else ''}")  # errors and paths are text
    console.print(f"  [{colour}]{state:<8}[/] {escape(where)}  ({count}){shown}")
    if state == "running":
        for item in items:
            console.print(f"      {item.trial.id}  {_best(item)}")
    elif verbose:
        for item in items:
            error = f"  {item.record.error}" if state == "failed" and item.record else ""
            console.print(f"      {item.trial.id}{error}", markup=False)
