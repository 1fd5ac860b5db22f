"""Preparing a scan for execution: configuration, backend, data, trials, and the scan directory.

Shared by ``run --local`` and ``submit``/``resubmit``: the same checks guard both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hhscan.data.dataset import Dataset
from hhscan.execution import runner
from hhscan.execution.scandir import ScanDirectory, Workspace
from hhscan.learning import model, training, trial
from hhscan.learning.records import TrialRecord
from hhscan.settings import criteria
from hhscan.settings.config import Parameters, SampleList


@dataclass
class PreparedScan:
    parameters: Parameters
    sample_list: SampleList
    workspace: Workspace
    scan: ScanDirectory
    trials: list[trial.Trial]
    dataset: Dataset
    backend: str
    created: bool
    probable_leaks: dict[str, float]  # input → single-input AUC (folded ≥ 0.5), not acknowledged in leak_check


def prepare(
    parameters: Parameters,
    sample_list: SampleList,
    workspace_root: Path,
    name: str,
    kind: str,
    must_be_new: bool = False,
    must_exist: bool = False,
    create: bool = True,
) -> PreparedScan:
    """Load the data once, then create the scan directory or check the existing one is compatible."""
    from hhscan.data.dataset import probable_leaks
    from hhscan.errors import ConfigError, ScanError

    workspace = Workspace(Path(workspace_root))
    scan = ScanDirectory(workspace.scans / name)

    def refuse_existing() -> None:
        if must_be_new and scan.exists:
            raise ScanError(
                f"scan '{name}' already exists in {workspace.scans}: use 'hhscan resubmit {name}' to complete it, "
                f"or another --name"
            )

    refuse_existing()  # at once, before any data is read; again under the lock, where it is atomic with creating
    if must_exist and not scan.exists:
        workspace.scan(name)  # raises, listing the existing scans
    backend = model.choose_backend(parameters.training.backend)
    trials = trial.expand(parameters)
    if parameters.own_model is not None:  # its import, output shape and values: before any data is read
        check_own_model(parameters, sample_list, trials)
    dataset = runner.prepare_dataset(parameters, sample_list, workspace)
    criterion = parameters.eval_criterion
    if criteria.metric(criterion).yields and (problem := dataset.yield_problem()):
        raise ConfigError(f"{parameters.source}:eval_criterion: {criterion} needs physical yields ({problem})")
    leaks = probable_leaks(dataset, sample_list.leak_check.auc, sample_list.leak_check.allow)
    created = False
    if create and (must_be_new or not scan.exists):
        with scan.lock():
            refuse_existing()
            if not scan.exists:
                scan.create(parameters, sample_list, trials, dataset.split_checksum, dataset.data_fingerprint,
                            workspace, backend, kind)  # fmt: skip
                created = True
    if not created and scan.exists:
        scan.check_compatible(parameters, dataset.split_checksum, dataset.data_fingerprint)
        scan.write_config(parameters, sample_list)
    if scan.exists:
        scan.write_input_checks(leaks, sample_list.leak_check.auc)
    return PreparedScan(parameters, sample_list, workspace, scan, trials, dataset, backend, created, leaks)


def check_own_model(parameters: Parameters, sample_list: SampleList, trials: Sequence[trial.Trial]) -> None:
    """An own model is imported and built once, on one batch, before any trial: an import error, an output of the
    wrong shape or range, or non-finite outputs stop the command in one line (``model.check_model_function``).

    It is built with the first trial whose hyperparameters build (the defaults for an adaptive search): ``build()``
    raising for some hyperparameters is those trials' own failure, a FAIL record each when they run.
    """
    from hhscan.errors import HhscanError
    from hhscan.settings import model_function

    model.import_keras()  # before the source's own ``import keras``: without the extras it does not need
    spec, source = parameters.own_model or ("", "")
    try:
        model_function.load_function(spec)
    except HhscanError:
        raise
    except Exception as error:  # the user's file failed to import: theirs to fix, shown with their traceback
        if not runner.is_trial_failure(error):
            raise
        raise model_function.import_failure(spec, error) from None
    points = [t.hyperparameters for t in trials] or [trial.canonical({}, parameters.registry)]
    n_features, n_classes = len(sample_list.feature_names), len(sample_list.class_names)
    for point in points:
        try:
            model.check_model_function(spec, source, point, n_features, n_classes)
        except HhscanError:
            raise
        except Exception as error:  # the user's build() raising: the trial's own failure (runner's policy)
            if not runner.is_trial_failure(error):
                raise
            continue
        return


def run_local(
    prepared: PreparedScan,
    trial_ids: Sequence[str],
    on_trial_end: Callable[[TrialRecord], None] | None = None,
    on_epoch: training.EpochCallback | None = None,
) -> list[TrialRecord]:
    return runner.run_scan_trials(
        prepared.scan, trial_ids, on_trial_end=on_trial_end, dataset=prepared.dataset, on_epoch=on_epoch
    )


def submit(prepared: PreparedScan, split: int, trials: Sequence[trial.Trial] | None = None, dry_run: bool = False):
    """Submit the scan's missing trials (or the given ones) to Slurm, ``split`` per job; for an adaptive scan,
    workers for its budget, each asking and training up to ``split`` trials (``runner.run_adaptive``)."""
    from hhscan.execution import jobstate, slurm

    if prepared.parameters.search.adaptive:
        if prepared.scan.exists:
            status = jobstate.scan_status(prepared.scan)
            count = status.count("missing") + status.unasked
        else:  # a dry run of a new scan: the whole budget
            count = int(prepared.parameters.search.trials or 0)
        groups = slurm.worker_groups(count, split)
        if dry_run or not groups:
            return groups, []
        with slurm.scan_lock(prepared.scan):
            return groups, slurm.submit_groups(prepared.scan, groups, prepared.parameters.slurm)
    if dry_run:
        return slurm.group(list(trials) if trials is not None else prepared.scan.missing(), split), []
    with slurm.scan_lock(prepared.scan):
        todo = list(trials) if trials is not None else prepared.scan.missing()
        groups = slurm.group(todo, split)
        if not groups:
            return groups, []
        return groups, slurm.submit_groups(prepared.scan, groups, prepared.parameters.slurm)


def resubmit(
    workspace_root: Path,
    name: str | None,
    split: int,
    skip_failed: bool = False,
    dry_run: bool = False,
    parameters_path: Path | None = None,
):
    """Submit only the missing trials of an existing scan, after checking nothing that defines it changed."""
    from hhscan.execution import jobstate, slurm
    from hhscan.settings import config

    workspace = Workspace(Path(workspace_root))
    scan = workspace.scan(name)
    manifest = scan.manifest()
    parameters = config.load_parameters(parameters_path or manifest["parameters_file"])
    sample_list = config.load_sample_list(config.samples_path(parameters))
    scan.check_compatible(parameters)  # fast refusal before reading any data
    prepared = prepare(parameters, sample_list, workspace.root, scan.name, kind=manifest["kind"], must_exist=True)
    slurm.check_reachable()
    with slurm.scan_lock(scan):
        status = jobstate.scan_status(scan)
        if parameters.search.adaptive:  # workers for what no queued worker will ask or train (FAIL is told)
            queued = slurm.queued_workers(scan, status)
            groups = slurm.worker_groups(max(0, status.count("missing") + status.unasked - queued), split)
        else:
            todo = jobstate.to_resubmit(status, skip_failed)
            groups = slurm.group(todo, split) if todo else []
        if dry_run or not groups:
            return prepared, status, groups, []
        return prepared, status, groups, slurm.submit_groups(scan, groups, parameters.slurm)
