"""Running trials of a scan in this process: data loaded once, every trial recorded, failures included.

This is what a local run and every Slurm job execute. A finished trial's model and record are written atomically
the moment it ends, so a job killed after 3 of 5 trials keeps 3.
"""

from __future__ import annotations

import shutil
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hhscan import __version__, artifacts, model, training
from hhscan.config import Parameters, SampleList
from hhscan.dataset import Dataset, load_dataset
from hhscan.errors import ScanError
from hhscan.records import DONE, FAIL, TrialRecord, write_record
from hhscan.scandir import ScanDirectory, Workspace
from hhscan.trial import Trial


@dataclass
class JobContext:
    """Where a trial runs, for its record: the Slurm job id and log path, if any."""

    job_id: str = ""
    log_path: str = ""


def prepare_dataset(parameters: Parameters, sample_list: SampleList, workspace: Workspace) -> Dataset:
    return load_dataset(sample_list, parameters.split, workspace.splits, workspace.cache)


def run_scan_trials(
    scan: ScanDirectory,
    trial_ids: Sequence[str] | None = None,
    context: JobContext | None = None,
    on_trial_end: Callable[[TrialRecord], None] | None = None,
    dataset: Dataset | None = None,
) -> list[TrialRecord]:
    """Run the given trials of ``scan`` (all missing ones when None), skipping those already done."""
    context = context or JobContext()
    parameters, sample_list = scan.load_config()
    manifest = scan.manifest()
    backend = model.choose_backend(parameters.training.backend)
    workspace = Workspace(Path(manifest["workspace"]))
    model.enable_compilation_cache(workspace.cache / "xla")
    if dataset is None:
        dataset = prepare_dataset(parameters, sample_list, workspace)
    if dataset.split_checksum != manifest["split_checksum"]:
        raise ScanError(
            f"scan '{scan.name}': the data's split checksum {dataset.split_checksum} differs from the scan's "
            f"{manifest['split_checksum']}: the data or the split changed since submission"
        )
    by_id = {t.id: t for t in scan.trials()}
    unknown = [i for i in trial_ids or [] if i not in by_id]
    if unknown:
        raise ScanError(f"scan '{scan.name}': unknown trial id '{unknown[0]}'")
    # The loop skips what is done, so "all trials" and "the missing ones" are the same request.
    wanted = [by_id[i] for i in trial_ids] if trial_ids is not None else list(by_id.values())
    done_records, _ = scan.records()
    results = []
    for trial in wanted:
        existing = done_records.get(trial.id)
        if existing is not None and existing.done:
            continue
        record = run_trial(scan, trial, parameters, sample_list, dataset, backend, context)
        results.append(record)
        if on_trial_end is not None:
            on_trial_end(record)
    return results


def run_trial(
    scan: ScanDirectory,
    trial: Trial,
    parameters: Parameters,
    sample_list: SampleList,
    dataset: Dataset,
    backend: str,
    context: JobContext,
) -> TrialRecord:
    """Train, save model and record; any exception becomes a FAIL record and the scan goes on."""
    import keras

    base = TrialRecord(
        trial_id=trial.id,
        status=FAIL,
        repetition=trial.repetition,
        hyperparameters=trial.hyperparameters,
        criterion=parameters.eval_criterion,
        backend=backend,
        split_name=parameters.split.name,
        split_checksum=dataset.split_checksum,
        data_fingerprint=dataset.data_fingerprint,
        dictionary_hash=parameters.dictionary_hash(),
        code_version=__version__,
        job_id=context.job_id,
        log_path=context.log_path,
        host=socket.gethostname(),
    )
    started = time.perf_counter()
    checkpoint = scan.checkpoint_dir(trial.id)
    try:
        trained = training.train(trial, dataset, parameters, checkpoint)
        model_path = scan.model_path(trial.id)
        base.status = DONE
        base.value = trained.metrics[parameters.eval_criterion]
        base.metrics = trained.metrics
        base.history = trained.history
        base.epochs_run = trained.epochs_run
        base.best_epoch = trained.best_epoch
        base.resumed_from_epoch = trained.resumed_from_epoch
        base.seconds = trained.seconds
        base.model_file = model_path.name
        artifacts.write_model_zip(
            model_path, trained.model, model_metadata(base, dataset, scan.name), extra=scan.config_files()
        )
    except Exception as error:  # a failed trial is a result, not a crash of the scan
        base.status = FAIL
        base.error = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        base.traceback = "".join(traceback.format_exception(error))[-4000:]
        base.seconds = time.perf_counter() - started
    base.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_record(scan.output_dir, base)
    if base.done:
        shutil.rmtree(checkpoint, ignore_errors=True)
    keras.backend.clear_session()
    return base


def model_metadata(record: TrialRecord, dataset: Dataset, scan_name: str) -> dict:
    return {
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
        "class_names": dataset.class_names,
        "backend": record.backend,
        "code_version": record.code_version,
    }
