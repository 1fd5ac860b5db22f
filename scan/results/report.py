"""``hhscan report``: all trials of a scan ranked, as a CSV, plots, and the best model as one zip.

Works the same on local and Slurm scans (one record per trial under ``output/``). The best zip is the trial's
own zip (model, metadata with history and split checksum, the configuration used), copied under
``models/NAME_best.zip``; ``models/best.json`` points ``--model best`` at the last reported scan's best.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hhscan.errors import ModelError, ScanError, did_you_mean
from hhscan.execution.scandir import ScanDirectory, Workspace
from hhscan.fileio import atomic_write_bytes, atomic_write_text
from hhscan.learning import artifacts
from hhscan.learning.records import PRUNED, TrialRecord
from hhscan.results.ranking import criterion_value, ranked, unranked, varying

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
) -> Report:
    """Rank by ``criterion``, default the scan's current ``eval_criterion`` (its latest configuration)."""
    scan = workspace.scan(name)
    manifest = scan.manifest()
    criterion = criterion or scan.load_config()[0].eval_criterion
    found, corrupt = scan.records()
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
    if best and export:
        report.best_zip = export_best(workspace, scan, best[0])
    return report


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
