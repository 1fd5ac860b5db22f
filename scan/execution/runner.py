"""Running trials of a scan in this process: data loaded once, trials trained in fused packs, every trial
recorded, failures included.

This is what a local run and every Slurm job execute. A finished pack's models and records are written atomically
the moment it ends, so a job killed after 3 of 5 packs keeps 3.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hhscan import __version__
from hhscan.data.dataset import Dataset, load_dataset
from hhscan.data.split import fold_roles
from hhscan.errors import ScanError
from hhscan.execution import leases, search
from hhscan.execution.scandir import ScanDirectory, Workspace
from hhscan.learning import artifacts, model, packing, training
from hhscan.learning.records import (
    DONE,
    FAIL,
    PRUNED,
    CorruptRecord,
    TrialRecord,
    read_record,
    record_path,
    write_record,
)
from hhscan.learning.trial import Trial
from hhscan.settings import criteria
from hhscan.settings.config import Parameters, SampleList


@dataclass
class JobContext:
    """Where a trial runs, for its record: the Slurm job id and log path, if any."""

    job_id: str = ""
    log_path: str = ""
    config_path: str = ""  # the submission's frozen configuration (empty: the scan's current one)


def prepare_dataset(parameters: Parameters, sample_list: SampleList, workspace: Workspace) -> Dataset:
    return load_dataset(sample_list, parameters.split, workspace.splits, workspace.cache)


def run_scan_trials(
    scan: ScanDirectory,
    trial_ids: Sequence[str] | None = None,
    context: JobContext | None = None,
    on_trial_end: Callable[[TrialRecord], None] | None = None,
    dataset: Dataset | None = None,
    on_epoch: training.EpochCallback | None = None,
) -> list[TrialRecord]:
    """Run the given trials of ``scan`` (all missing ones when None), skipping those already done.

    ``on_trial_end`` is called with each record as it is written, ``on_epoch`` after every epoch of a pack.
    """
    context = context or JobContext()
    parameters, workspace, dataset, backend = _setup(scan, context, dataset)
    by_id = {t.id: t for t in scan.trials()}
    unknown = [i for i in trial_ids or [] if i not in by_id]
    if unknown:
        raise ScanError(f"scan '{scan.name}': unknown trial id '{unknown[0]}'")
    # The loop skips what is done, so "all trials" and "the missing ones" are the same request.
    wanted = [by_id[i] for i in trial_ids] if trial_ids is not None else list(by_id.values())
    done_records, _ = scan.records()
    pack_size = resolve_pack_size(parameters, dataset, workspace, wanted)
    memory_bound = worker_memory_bound(parameters)
    results = []
    keeper = leases.LeaseKeeper(leases.Leases(scan.root), leases.Attempt(job_id=context.job_id))
    todo = [t for t in wanted if not (t.id in done_records and done_records[t.id].finished)]
    held_elsewhere = keeper.claim(t.id for t in todo)
    for trial_id, lease in held_elsewhere.items():
        print(f"hhscan: trial {trial_id} skipped: attempt {lease.attempt} (job {lease.job_id or '–'} on "
              f"{lease.host}, pid {lease.pid}) holds it", flush=True)  # fmt: skip
    # Packs come from the whole request, done and held trials removed after: a requeued job finds its packs again;
    # trials resuming from different epochs (a regrouped resubmit) train in separate packs.
    checkpoints = scan.checkpoint_dir
    packs = [
        [t for t in pack if t.id in keeper.held]
        for whole in packing.form_packs(wanted, pack_size)
        for pack in _by_resume_epoch(whole, checkpoints, dataset.folds)
    ]
    packs = [pack for pack in packs if pack]

    progress = _job_log_progress(keeper, context, on_epoch)
    with keeper:
        for index, pack in enumerate(packs):
            for record in run_pack(scan, pack, parameters, dataset, backend, context, progress, keeper):
                results.append(record)
                if on_trial_end is not None:
                    on_trial_end(record)
            keeper.release(t.id for t in pack)
            last = index + 1 == len(packs)
            if memory_bound is not None and not last and (resident := resident_memory_gb()) > memory_bound:
                recycle_process(f"resident memory {resident:.2f} GB > worker_memory_gb {memory_bound:.2f}")
    if not scan.missing():
        scan.clean_litter()
    return results


def _setup(
    scan: ScanDirectory, context: JobContext, dataset: Dataset | None
) -> tuple[Parameters, Workspace, Dataset, str]:
    """What every worker does first: configuration, backend, device check, data (checked against the scan's split)."""
    parameters, sample_list = scan.load_config(context.config_path or None)
    manifest = scan.manifest()
    backend = model.choose_backend(parameters.training.backend)
    model.check_device(parameters.slurm.resources)  # GPUs given but not seen: fail now, not after hours on the CPU
    workspace = Workspace(Path(manifest["workspace"]))
    model.enable_compilation_cache(workspace.cache / "xla")
    if dataset is None:
        dataset = prepare_dataset(parameters, sample_list, workspace)
    if dataset.split_checksum != manifest["split_checksum"]:
        raise ScanError(
            f"scan '{scan.name}': the data's split checksum {dataset.split_checksum} differs from the scan's "
            f"{manifest['split_checksum']}: the data or the split changed since submission"
        )
    return parameters, workspace, dataset, backend


def _job_log_progress(keeper: leases.LeaseKeeper, context: JobContext,
                      on_epoch: training.EpochCallback | None) -> training.EpochCallback:  # fmt: skip
    def progress(update: training.EpochProgress) -> None:
        keeper.progress(update.trial_ids, update.epoch, update.epochs, update.monitor, update.best)
        if on_epoch is not None:
            on_epoch(update)
        elif context.job_id:  # a Slurm job's log: one plain line per epoch per pack
            known = [b for b in update.best if b is not None]
            best = f"{criteria.metric(update.monitor).best(known):.4g}" if known else "–"
            print(f"hhscan: pack of {len(update.trial_ids)} epoch {update.epoch}/{update.epochs} "
                  f"{update.seconds_per_epoch:.2f} s/epoch, {sum(update.active)} training, best {update.monitor} "
                  f"{best}", flush=True)  # fmt: skip

    return progress


def run_adaptive(
    scan: ScanDirectory,
    context: JobContext | None = None,
    on_trial_end: Callable[[TrialRecord], None] | None = None,
    dataset: Dataset | None = None,
    on_epoch: training.EpochCallback | None = None,
    max_trials: int | None = None,
) -> list[TrialRecord]:
    """One worker of an adaptive scan: ask a pack of trials, train it fused, record, ask again, until the budget
    (``search.trials``) is spent, or this worker has trained ``max_trials``.

    Slots left by a killed worker (asked, no record, no live lease) are trained first. A new point is claimed
    (lease) before its slot is taken, and its slot only while a free one is left, so at most the budget is ever
    asked and no point is trained twice, however many workers share the scan (``search.py``).
    """
    context = context or JobContext()
    parameters, _, dataset, backend = _setup(scan, context, dataset)
    budget = int(parameters.search.trials or 0)
    setting = parameters.training.pack_size
    pack_size = int(setting) if setting != "auto" else max(1, min(packing.DEFAULT_PACK_SIZE, budget))
    keeper = leases.LeaseKeeper(leases.Leases(scan.root), leases.Attempt(job_id=context.job_id))
    progress = _job_log_progress(keeper, context, on_epoch)
    results: list[TrialRecord] = []
    trained = 0
    with keeper:
        while max_trials is None or trained < max_trials:
            want = pack_size if max_trials is None else min(pack_size, max_trials - trained)
            pack, study = _next_pack(scan, parameters, keeper, budget, want)
            if not pack:
                break
            trained += len(pack)
            for group in _by_structure_and_resume(pack, scan.checkpoint_dir, dataset.folds):
                for record in run_pack(scan, group, parameters, dataset, backend, context, progress, keeper, study):
                    results.append(record)
                    if on_trial_end is not None:
                        on_trial_end(record)
                keeper.release(t.id for t in group)
    asked = search.read_asked(scan.root)
    # The whole budget asked and recorded (a FAIL is told, not retried): no worker needs leases or checkpoints.
    if len(asked) >= budget and not scan.missing(skip_failed=True):
        scan.clean_litter()
    return results


def _by_structure_and_resume(trials: Sequence[Trial], checkpoints: Path, folds: int = 0) -> list[list[Trial]]:
    return [group for whole in packing.form_packs(trials, max(1, len(trials)))
            for group in _by_resume_epoch(whole, checkpoints, folds)]  # fmt: skip


def _next_pack(
    scan: ScanDirectory, parameters: Parameters, keeper: leases.LeaseKeeper, budget: int, want: int
) -> tuple[list[Trial], search.SearchStudy]:
    """Up to ``want`` trials claimed by this worker, and the study rebuilt from the scan's files they train with.

    First slots whose trial has no record and no live lease (a killed worker's), then new points asked of the
    sampler while free slots are left.
    """
    records, _ = scan.records()
    asked = search.read_asked(scan.root)
    # Without a live lease of another attempt (looked up by name); this job's own earlier run (requeued) holds
    # nothing it cannot take back.
    orphans = [a.trial for a in asked if a.trial.id not in records and not _held_elsewhere(keeper, a.trial.id)]
    keeper.claim(t.id for t in orphans[:want])
    pack = [t for t in orphans[:want] if t.id in keeper.held]
    study = search.build_study(parameters, scan.name, asked, records)
    if pack:
        return pack, study
    known = {a.trial.id for a in asked}
    duplicates = 0
    while len(pack) < want and len(asked) + len(pack) < budget and duplicates < search.MAX_DUPLICATES:
        point, slot = study.ask()
        if point.id in known or point.id in records:
            record = records.get(point.id)
            study.tell_duplicate(point.id, search.objective_value(parameters, record) if record else None)
            duplicates += 1
            continue
        keeper.claim([point.id])
        # Claimed, then looked up again: a worker that asked the same point first holds its lease until its
        # record is written, so the point is either still held (not ours) or now visible in the slots.
        if point.id not in keeper.held or point.id in {a.trial.id for a in search.read_asked(scan.root)}:
            keeper.release([point.id])
            known.add(point.id)
            study.tell_duplicate(point.id, None)
            duplicates += 1
            continue
        if search.take_slot(scan.root, slot, budget) is None:  # other workers took the last slots
            keeper.release([point.id])
            break
        duplicates = 0
        known.add(point.id)
        pack.append(point)
    if duplicates >= search.MAX_DUPLICATES and not pack:
        print(f"hhscan: scan '{scan.name}': the sampler proposed only points already asked "
              f"{search.MAX_DUPLICATES} times in a row: the search space seems exhausted", flush=True)  # fmt: skip
    if not pack:
        return pack, study
    # The pack trains under the study every later rebuild makes: each trial numbered by its slot (Hyperband's
    # bracket follows the number; at ask time it counted duplicates and other workers' slots).
    return pack, search.build_study(parameters, scan.name, search.read_asked(scan.root), records)


def _held_elsewhere(keeper: leases.LeaseKeeper, trial_id: str) -> bool:
    lease = keeper.leases.current(trial_id)
    return lease is not None and lease.live() and not keeper.attempt.may_take_over(lease)


def _by_resume_epoch(trials: Sequence[Trial], checkpoints: Path, folds: int = 0) -> list[list[Trial]]:
    groups: dict[int | None, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(training.checkpoint_epoch(checkpoints, trial.id, folds), []).append(trial)
    return list(groups.values())


def worker_memory_bound(parameters: Parameters) -> float | None:
    """The configured bound, or 80% of the Slurm job's memory (``SLURM_MEM_PER_NODE`` is in MB)."""
    if parameters.training.worker_memory_gb is not None:
        return parameters.training.worker_memory_gb
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    return 0.8 * int(per_node) / 1024 if per_node and per_node.isdigit() and int(per_node) > 0 else None


def resident_memory_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def worker_baseline_gb() -> float:
    """This process's resident memory once it holds what a worker holds before its first trial: the Keras backend
    initialised (≈0.45 GB with JAX) on top of the data already loaded."""
    import keras

    model.keep_tensorflow_out()
    keras.ops.convert_to_numpy(keras.ops.ones(1))
    return resident_memory_gb()


def recycle_process(reason: str) -> None:
    """Replace this process by a fresh run of the same command: same pid (Slurm keeps tracking it), same job and
    trials; what is done is skipped. Memory that imports, caches or leaks kept is given back."""
    print(f"hhscan: restarting the worker process ({reason}); finished trials are kept", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, sys.orig_argv)


def resolve_pack_size(parameters: Parameters, dataset: Dataset, workspace: Workspace, trials: Sequence[Trial]) -> int:
    """The configured pack size; for ``auto``, the probed one (measured once per workspace and device).

    A request of at most ``DEFAULT_PACK_SIZE`` trials per pack structure is packed whole without probing: the
    cost per trial falls at least that far on every device measured, and the probe would cost more than it saves.
    So is a larger one (up to ``training.MAX_WHOLE_PACK``) whose training state fits the device's memory.
    """
    setting = parameters.training.pack_size
    if setting != "auto":
        return int(setting)
    by_structure: dict[tuple[int, ...], list[Trial]] = {}
    for trial, structure in zip(trials, packing.pack_structures(trials), strict=True):
        by_structure.setdefault(structure, []).append(trial)
    largest = max(by_structure.values(), key=len, default=[])
    if len(largest) <= packing.DEFAULT_PACK_SIZE:
        return max(len(largest), 1)
    try:
        whole = training.fits_whole(largest, dataset, parameters)
    except Exception as error:  # an own model's build() refusing a trial's values: that trial's FAIL, later
        if not is_trial_failure(error):
            raise
        whole = False
    if whole:
        return len(largest)
    probed = training.probed_pack_size(trials[0], dataset, parameters, workspace.cache / "pack_size.json")
    return max(1, probed // max(dataset.folds, 1))  # a k-fold pack is k engines alive at once, one per fold


def is_trial_failure(error: BaseException) -> bool:
    """The one policy on what a trial may catch: its own failures (``Exception``), never control flow.

    Signals and interrupts (``KeyboardInterrupt``, ``SystemExit``, any other ``BaseException``) and submitit's
    ``UncompletedJobError`` (raised from its signal handler when the last requeue is spent) pass through: the job
    ends there, its trials stay unrecorded and resume from their checkpoints when resubmitted.
    """
    from hhscan.execution import submitit_import

    uncompleted = submitit_import.load().core.utils.UncompletedJobError
    return isinstance(error, Exception) and not isinstance(error, uncompleted)


def run_pack(
    scan: ScanDirectory,
    trials: Sequence[Trial],
    parameters: Parameters,
    dataset: Dataset,
    backend: str,
    context: JobContext,
    on_epoch: training.EpochCallback | None = None,
    keeper: leases.LeaseKeeper | None = None,
    study: search.SearchStudy | None = None,
) -> list[TrialRecord]:
    """Train a pack, save each trial's model and record; a failure becomes FAIL records and the scan goes on.

    With an adaptive search's ``study``, its pruner is asked after every epoch; a pruned trial is a PRUNED record
    (with its epoch and metrics, no model), and each record keeps the attributes the sampler and pruner attached.

    When a pack fails as a whole (one trial's bad value, memory), its trials are retried alone, so one trial's
    error is never another trial's. Results are written only while ``keeper`` still holds the trial's lease, and
    a DONE record is never replaced (first DONE wins).
    """
    import keras

    started = time.perf_counter()
    checkpoints = scan.checkpoint_dir
    try:
        prune = study.should_prune if study is not None and study.prunes else None
        holds = keeper.holds if keeper is not None else None
        trained = training.train_pack(trials, dataset, parameters, checkpoints, on_epoch=on_epoch, prune=prune,
                                      holds=holds)  # fmt: skip
    except Exception as error:
        if not is_trial_failure(error):
            raise
        keras.backend.clear_session()
        if len(trials) > 1:
            return [record for trial in trials for record in run_pack(scan, [trial], parameters, dataset, backend,
                                                                       context, on_epoch, keeper, study)]  # fmt: skip
        seconds = time.perf_counter() - started
        record = _failed(_record(trials[0], parameters, dataset, backend, context, 1), error, seconds)
        return [written] if (written := _commit(scan, record, keeper)) is not None else []
    records = []
    for trial, result in zip(trials, trained, strict=True):
        record = _record(trial, parameters, dataset, backend, context, len(trials))
        if (written := _record_result(scan, record, result, parameters, dataset, context, keeper, study)) is not None:
            records.append(written)
    for trial in trials:
        if (existing := read_existing(scan, trial.id)) is not None and existing.finished:
            shutil.rmtree(checkpoints / trial.id, ignore_errors=True)
    keras.backend.clear_session()
    return records


def _record_result(scan: ScanDirectory, record: TrialRecord, result: training.TrainedTrial, parameters: Parameters,
                   dataset: Dataset, context: JobContext, keeper: leases.LeaseKeeper | None,
                   study: search.SearchStudy | None) -> TrialRecord | None:  # fmt: skip
    """A trained trial's record — FAIL when it diverged, PRUNED, else DONE with its model zip — written if this
    attempt may still write it; None when it may not (a superseded attempt stages no model either)."""
    trial_id = record.trial_id
    if keeper is not None and (result.superseded or not keeper.owns(trial_id)):
        print(f"hhscan: trial {trial_id}: {_lost_lease(keeper, trial_id)}; its result is discarded", flush=True)
        return None
    record.training_settings.update(result.callback_settings)  # a resumed trial's own, as it trained
    record.history = result.history
    record.epochs_run = result.epochs_run
    record.resumed_from_epoch = result.resumed_from_epoch
    record.seconds = result.seconds
    if study is not None:
        record.search_state = study.trial_state(trial_id)
    if result.diverged:  # a failure with its history, never a model to rank
        record.error = result.diverged
        return _commit(scan, record, keeper)
    if result.pruned_epoch is not None:  # finished, not ranked: its metrics are kept, its model is not
        record.status, record.pruned_epoch = PRUNED, result.pruned_epoch
        record.metrics, record.best_epoch = result.metrics, result.best_epoch
        record.value = result.metrics.get(parameters.eval_criterion)
        return _commit(scan, record, keeper)
    model_path = scan.model_path(trial_id)
    # The zip is staged under this attempt's name and moved into place only by the commit, so a superseded
    # attempt never replaces the model of the attempt that recorded the trial.
    staged = model_path.with_name(f".{trial_id}.{record.host}.{os.getpid()}.zip")
    try:
        record.status = DONE
        record.value = result.metrics.get(parameters.eval_criterion)
        record.metrics = result.metrics
        record.best_epoch = result.best_epoch
        record.model_file = model_path.name
        metadata = model_metadata(record, dataset, scan.name, parameters)
        extra = scan.config_files(context.config_path or None)
        artifacts.write_model_zip(staged, result.model, metadata, extra=extra)
    except Exception as error:  # e.g. a full disk: this trial fails, the others are still written
        if not is_trial_failure(error):
            raise
        record = _failed(record, error, result.seconds)
    try:
        return _commit(scan, record, keeper, staged if record.done else None)
    finally:
        staged.unlink(missing_ok=True)


def read_existing(scan: ScanDirectory, trial_id: str) -> TrialRecord | None:
    try:
        return read_record(record_path(scan.output_dir, trial_id))
    except (FileNotFoundError, CorruptRecord, ValueError, TypeError):
        return None


def _may_write(scan: ScanDirectory, trial_id: str, keeper: leases.LeaseKeeper | None) -> bool:
    """Results are written by the lease holder only, and never over a DONE record: say so in the job log."""
    if keeper is not None and not keeper.owns(trial_id):
        print(f"hhscan: trial {trial_id}: {_lost_lease(keeper, trial_id)}; its result is discarded", flush=True)
        return False
    existing = read_existing(scan, trial_id)
    if existing is not None and existing.finished:
        print(f"hhscan: trial {trial_id} is already {existing.status} (job {existing.job_id or '–'}); this result is "
              f"discarded",
              flush=True)  # fmt: skip
        return False
    return True


def _lost_lease(keeper: leases.LeaseKeeper, trial_id: str) -> str:
    """Why this attempt no longer holds a trial, for the job log."""
    current = keeper.leases.current(trial_id)
    if current is None:  # the leases are removed once every trial of the scan is recorded
        return "its lease is gone (another attempt finished the scan)"
    holder = f"attempt {current.attempt} (job {current.job_id or '–'})"
    if current.attempt == keeper.attempt.attempt:
        return "this attempt already released its lease"
    return f"this attempt was superseded by {holder}{', which has finished it' if current.released else ''}"


def _commit(
    scan: ScanDirectory, record: TrialRecord, keeper: leases.LeaseKeeper | None, staged_zip: Path | None = None
) -> TrialRecord | None:
    """Write the record (and move its model into place) if this attempt may: the lease holder, no DONE yet."""
    if not _may_write(scan, record.trial_id, keeper):
        return None
    if keeper is not None:
        record.attempt = keeper.attempt.attempt
    if staged_zip is not None:
        os.replace(staged_zip, scan.model_path(record.trial_id))
    return _write(scan, record)


def _failed(record: TrialRecord, error: BaseException, seconds: float) -> TrialRecord:
    record.status = FAIL
    record.error = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    record.traceback = "".join(traceback.format_exception(error))[-4000:]
    record.seconds = seconds
    return record


def _write(scan: ScanDirectory, record: TrialRecord) -> TrialRecord:
    record.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_record(scan.output_dir, record)
    return record


def _record(
    trial: Trial, parameters: Parameters, dataset: Dataset, backend: str, context: JobContext, pack_size: int
) -> TrialRecord:
    return TrialRecord(
        trial_id=trial.id,
        status=FAIL,
        repetition=trial.repetition,
        hyperparameters=trial.hyperparameters,
        criterion=parameters.eval_criterion,
        backend=backend,
        device=model.device_description(),
        split_name=parameters.split.name,
        split_checksum=dataset.split_checksum,
        data_fingerprint=dataset.data_fingerprint,
        dictionary_hash=parameters.dictionary_hash(),
        code_version=__version__,
        job_id=context.job_id,
        log_path=context.log_path,
        host=socket.gethostname(),
        pack_size=pack_size,
        # The guard its significance was computed under: a scan continued across an upgrade can hold trials
        # computed without one, which the leaderboard must not rank as equals silently.
        training_settings={**training_settings(parameters), "significance": dataset.significance.model_dump()},
    )


def training_settings(parameters: Parameters) -> dict:
    """What may change between submissions without changing the trial set: recorded per trial."""
    settings = parameters.training
    return {
        "early_stopping": settings.early_stopping.model_dump(mode="json"),
        "reduce_lr": settings.reduce_lr.model_dump(mode="json"),
        "checkpoint_interval_s": settings.checkpoint_interval_s,
        "slurm_resources": parameters.slurm.resources,
    }


def model_metadata(record: TrialRecord, dataset: Dataset, scan_name: str, parameters: Parameters) -> dict:
    """What a model zip says about itself; for k-fold, the fold rule and each fold model's roles (the guard)."""
    kfold = None
    if dataset.folds:
        kfold = {"folds": dataset.folds, "variable": parameters.split.variable, "rule": "variable mod folds",
                 "roles": [fold_roles(f, dataset.folds) for f in range(dataset.folds)]}  # fmt: skip
    return {
        "kfold": kfold,
        "scan": scan_name,
        "trial_id": record.trial_id,
        "hyperparameters": record.hyperparameters,
        "repetition": record.repetition,
        "criterion": record.criterion,
        "value": record.value,
        "metrics": record.metrics,
        "history": record.history,
        "epochs_run": record.epochs_run,
        "split_name": record.split_name,
        "split_checksum": record.split_checksum,
        "data_fingerprint": record.data_fingerprint,
        "feature_names": dataset.feature_names,
        "feature_dtypes": dataset.feature_dtypes,
        "class_names": dataset.class_names,
        "signal_classes": dataset.signal_classes,
        "backend": record.backend,
        "code_version": record.code_version,
    }
