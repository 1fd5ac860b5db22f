"""``hhscan report``: all trials of a scan ranked, as a CSV, plots, and the best model as one zip.

Works the same on local and Slurm scans (one record per trial under ``output/``). The best zip is the trial's
own zip (model, metadata with history and split checksum, the configuration used), copied under
``models/NAME_best.zip``; ``models/best.json`` points ``--model best`` at the last reported scan's best.
"""

from __future__ import annotations

import json
import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hhscan.errors import ModelError, ScanError, did_you_mean
from hhscan.execution import search
from hhscan.execution.scandir import ScanDirectory, Workspace
from hhscan.fileio import atomic_write_bytes, atomic_write_text
from hhscan.learning import artifacts
from hhscan.learning.records import PRUNED, TrialRecord
from hhscan.results.ranking import criterion_value, ranked, unranked, varying
from hhscan.settings.config import Parameters

BEST_POINTER = "best.json"


@dataclass
class Report:
    scan: str
    criterion: str
    ranked: list[TrialRecord]
    failed: list[TrialRecord]  # FAIL and PRUNED records, and DONE records without a finite value of the criterion
    corrupt: dict[str, str]
    varying: list[str]
    csv_path: Path
    plot_paths: list[Path] = field(default_factory=list)
    best_zip: Path | None = None
    probable_leaks: dict[str, float] = field(default_factory=dict)
    leak_threshold: float = 0.99
    optuna_storage: Path | None = None
    notes: list[str] = field(default_factory=list)  # plots skipped, and why


def records_frame(records: list[TrialRecord], failed: list[TrialRecord], scan: ScanDirectory, criterion: str):
    """One row per trial, ranked ones first: rank, hyperparameters (hp_*), criterion, metrics, bookkeeping.

    Unranked rows (failed, or no finite value of the criterion) follow, with an empty rank: never dropped.
    """
    import pandas as pd

    rows = []
    for rank, record in enumerate(records + failed, start=1):
        is_ranked = rank <= len(records)
        row: dict = {"rank": rank if is_ranked else None, "trial_id": record.trial_id, "status": record.status}
        row.update({f"hp_{k}": v for k, v in sorted(record.hyperparameters.items())})
        row["repetition"] = record.repetition
        row[criterion] = criterion_value(record, criterion)
        row.update({k: v for k, v in sorted(record.metrics.items()) if k != criterion})
        row.update(
            {
                "epochs_run": record.epochs_run,
                "best_epoch": record.best_epoch,
                "seconds": round(record.seconds, 3),
                "backend": record.backend,
                "split_checksum": record.split_checksum,
                "job_id": record.job_id,
                "log_path": record.log_path,
                "model": str(scan.model_path(record.trial_id)) if record.done else "",
                "error": record.error or ("" if is_ranked else _unranked_reason(record, criterion)),
            }
        )
        if record.status == PRUNED:  # the column appears only in a scan with pruned trials
            row["pruned_epoch"] = record.pruned_epoch
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["rank"] = frame["rank"].astype("Int64")
    return frame


def _unranked_reason(record: TrialRecord, criterion: str) -> str:
    if record.status == PRUNED:
        return f"pruned by the search after epoch {record.pruned_epoch}"
    return f"no finite {criterion} recorded"


def make_report(
    workspace: Workspace,
    name: str | None,
    plots: bool = True,
    top_curves: int = 5,
    export: bool = True,
    criterion: str | None = None,
    optuna_storage: Path | None = None,
    force: bool = False,
) -> Report:
    """Rank by ``criterion``, default the scan's current ``eval_criterion`` (its latest configuration).

    An unreadable record file refuses the report before anything is written when it would export the best: the
    trial it describes may be the best, and the best of the others must not replace it (``force`` does).

    An adaptive scan also gets Optuna's importance and parallel-coordinate plots of its study, and with
    ``optuna_storage`` the study written as an SQLite file that ``optuna-dashboard`` opens."""
    scan = workspace.scan(name)
    manifest = scan.manifest()
    parameters = scan.load_config()[0]
    criterion = criterion or parameters.eval_criterion
    if optuna_storage is not None:  # refused before any record is read
        _check_storage(scan.name, parameters, Path(optuna_storage))
    found, corrupt = scan.records()
    if corrupt and export and not force:
        _refuse_unreadable(scan, corrupt)
    records = list(found.values())
    if not records:
        raise ScanError(f"scan '{scan.name}' has no trial records yet under {scan.output_dir}: see 'hhscan status'")
    mixed = {r.split_checksum for r in records} - {manifest["split_checksum"]}
    if mixed:
        raise ScanError(
            f"scan '{scan.name}': records made with another split ({', '.join(sorted(mixed))}) are mixed in"
        )
    best = ranked(records, criterion)
    failed = unranked(records, criterion) + sorted((r for r in records if not r.done), key=lambda r: r.trial_id)
    names = varying(records)
    frame = records_frame(best, failed, scan, criterion)
    workspace.models.mkdir(parents=True, exist_ok=True)
    csv_path = workspace.models / f"{scan.name}.csv"
    atomic_write_text(csv_path, frame.to_csv(index=False))
    report = Report(scan.name, criterion, best, failed, corrupt, names, csv_path)
    checks = scan.input_checks()
    report.probable_leaks = checks.get("probable_leaks", {})
    report.leak_threshold = checks.get("auc_threshold", report.leak_threshold)
    if parameters.search.adaptive and criterion != parameters.eval_criterion and (plots or optuna_storage):
        # The study is the search as it ran: its values are what the sampler and pruner compared.
        report.notes.append(
            f"the Optuna study and its plots use {parameters.eval_criterion}, the objective the search optimised; "
            f"the ranking uses {criterion}"
        )
    if plots and best:
        from hhscan.results import plots as figures

        directory = workspace.models / scan.name
        directory.mkdir(parents=True, exist_ok=True)
        done = frame[frame["rank"].notna()]
        report.plot_paths += figures.hyperparameter_effects(done, names, criterion, directory)
        shown = names or sorted(best[0].hyperparameters)
        curves = {
            f"#{i + 1} " + figures.hyperparameter_label(r.hyperparameters, shown)
            + (f" (repetition {r.repetition})" if r.repetition else ""): r.history
            for i, r in enumerate(best[:top_curves])
        }  # fmt: skip
        report.plot_paths.append(figures.learning_curves(curves, directory / "learning_curves.png"))
        if parameters.search.adaptive:
            rebuilt = search.build_study(parameters, scan.name, search.read_asked(scan.root), found)
            report.plot_paths += search_plots(rebuilt, directory, report.notes)
    if optuna_storage is not None:
        report.optuna_storage = export_study(scan, parameters, found, Path(optuna_storage))
    if best and export:
        report.best_zip = export_best(workspace, scan, best[0])
    return report


def _refuse_unreadable(scan: ScanDirectory, corrupt: dict[str, str]) -> None:
    file = sorted(corrupt)[0]
    others = f" (and {len(corrupt) - 1} other record file(s))" if len(corrupt) > 1 else ""
    raise ScanError(
        f"{scan.output_dir / file}: unreadable trial record ({corrupt[file]}){others}; that trial may be the best, "
        f"so the best model is not re-exported: rerun the trial ('hhscan resubmit {scan.name}', or 'hhscan run "
        f"--local --name {scan.name}' for a local scan) or pass --force to rank and export the readable records only"
    )


def _storage_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _check_storage(scan_name: str, parameters: Parameters, path: Path) -> None:
    """One line if the scan is a grid scan, or the file is no Optuna storage or holds this scan's study already."""
    if not parameters.search.adaptive:
        raise ScanError(
            f"--optuna-storage {path}: scan '{scan_name}' is a grid scan; only an adaptive scan has a study"
        )
    if not path.parent.is_dir():
        raise ScanError(f"--optuna-storage {path}: no directory {path.parent}")
    if not path.exists():
        return
    import optuna
    import sqlalchemy.exc

    try:
        names = optuna.study.get_all_study_names(storage=_storage_url(path))
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = str(error.orig if getattr(error, "orig", None) else error).splitlines()[0]
        raise ScanError(f"--optuna-storage {path}: not an Optuna SQLite storage ({reason})") from None
    if scan_name in names:
        raise ScanError(
            f"--optuna-storage {path}: holds a study '{scan_name}' already; remove the file or choose another path"
        )


def export_study(scan: ScanDirectory, parameters: Parameters, records: dict[str, TrialRecord], path: Path) -> Path:
    """The scan's study, one Optuna trial per record in slot order (as ``search.build_study`` rebuilds it),
    written to the SQLite storage ``path`` under the scan's name. A new file is written whole under a temporary
    name, then renamed: never half a file. Slots without a record yet (in training) are left out."""
    import optuna

    path = Path(path)
    space, _ = search.search_space(parameters)
    trials = [search.frozen_trial(parameters, space, item, records[item.trial.id])
              for item in search.read_asked(scan.root) if item.trial.id in records]  # fmt: skip
    target = path if path.exists() else path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    storage = optuna.storages.RDBStorage(_storage_url(target))
    written = False
    try:
        study = optuna.create_study(storage=storage, study_name=scan.name, direction=search.direction(parameters))
        study.add_trials(trials)
        written = True
    finally:
        storage.remove_session()
        storage.engine.dispose()
        if target != path:
            if written:
                target.replace(path)
            else:
                target.unlink(missing_ok=True)  # no half-written temporary file left behind
    return path


def search_plots(rebuilt: search.SearchStudy, directory: Path, notes: list[str]) -> list[Path]:
    """Optuna's parameter importances and parallel coordinates of an adaptive scan's study, when they say
    something: at least two completed trials (and two searched parameters for the importances)."""
    import optuna
    from hhscan.results import plots as figures
    from optuna.visualization import matplotlib as optuna_plots

    study, searched = rebuilt.study, sorted(rebuilt.space)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    target = rebuilt.parameters.eval_criterion
    if len(complete) < 2 or not searched:
        notes.append(f"no search plots: {len(complete)} completed trial(s), {len(searched)} searched parameter(s)")
        return []
    paths = []
    with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental": nothing for a user to act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if len(searched) >= 2:
            axes = optuna_plots.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=target
            )
            paths.append(figures.save_figure(axes.figure, directory / "importance.png"))
        else:
            notes.append(f"no importance plot: only one searched parameter ({searched[0]})")
        axes = optuna_plots.plot_parallel_coordinate(study, target_name=target)
        paths.append(figures.save_figure(axes.figure, directory / "parallel_coordinate.png"))
    return paths


def export_best(workspace: Workspace, scan: ScanDirectory, record: TrialRecord) -> Path:
    source = scan.model_path(record.trial_id)
    artifacts.read_metadata(source)  # refuses anything that is not an hhscan model
    target = workspace.models / f"{scan.name}_best.zip"
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    temporary.replace(target)
    pointer = {"scan": scan.name, "trial_id": record.trial_id, "model": target.name}
    atomic_write_bytes(workspace.models / BEST_POINTER, json.dumps(pointer, indent=1).encode())
    return target


def resolve_model(workspace: Workspace, name: str) -> Path:
    """A model by path, by name under ``models/`` (``NAME`` → ``models/NAME.zip``), or ``best``."""
    as_path = Path(name)
    if as_path.suffix == ".zip" and as_path.is_file():
        return as_path
    if name == "best":
        pointer = workspace.models / BEST_POINTER
        if not pointer.exists():
            raise ModelError("no best model yet: run 'hhscan report NAME' first")
        return workspace.models / json.loads(pointer.read_text())["model"]
    candidate = workspace.models / f"{name.removesuffix('.zip')}.zip"
    if candidate.is_file():
        return candidate
    available = [p.stem for p in workspace.models.glob("*.zip")] if workspace.models.is_dir() else []
    raise ModelError(f"no model '{name}' in {workspace.models} ({did_you_mean(name, [*available, 'best'], 'models')})")
