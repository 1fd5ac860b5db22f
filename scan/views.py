"""What the console shows: per-sample numbers, trial progress, and ranked trials (rich)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hhscan.dataset import SampleSummary
from hhscan.ranking import criterion_value, ranked, varying
from hhscan.records import TrialRecord
from hhscan.scandir import ScanDirectory
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def print_summaries(
    console: Console, summaries: Sequence[SampleSummary], backend: str, units: tuple[str, str] = ("pb", "pb-1")
) -> None:
    """Per sample: what was read, cut and dropped, its learning weight total and its physical yield."""
    xsec_unit, lumi_unit = units
    table = Table(title=f"samples (Keras backend: {backend})", title_justify="left")
    for column in ("sample", "class", "era", f"xsec [{xsec_unit}]", "Σweights", f"lumi [{lumi_unit}]", "entries",
                   "pass cut", "w≤0 dropped", "used", "Σ learning w", "expected events"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("sample", "class", "era") else "right")
    for s in summaries:
        table.add_row(
            escape(s.name), escape(s.class_name), escape(s.era or "–"), _number(s.xsec), _number(s.event_weight_sum),
            _number(s.lumi),
            str(s.entries), str(s.selected), str(s.dropped_non_positive), str(s.used), _number(s.learning_weight_sum),
            _number(s.expected_events) if s.expected_events is not None else "no xsec",
        )  # fmt: skip
    console.print(table)


def print_input_warnings(console: Console, leaks: dict[str, float], threshold: float) -> None:
    """One line per input that alone separates the classes: a probable label leak."""
    for name, auc in sorted(leaks.items(), key=lambda item: -item[1]):
        console.print(
            f"[yellow]warning:[/] input '{name}' alone separates the classes (weighted AUC {auc:.4f} ≥ {threshold} on "
            f"the training split): a probable label leak; if intended, list it in leak_check.allow",
            markup=True,
        )


class TrialProgress:
    """A progress bar that also prints one line per finished trial."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.progress = Progress(
            TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.task = self.progress.add_task("trials", total=total)

    def __enter__(self) -> TrialProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, record: TrialRecord) -> None:
        if record.done:
            message = (
                f"{record.trial_id} {record.criterion}={_number(criterion_value(record, record.criterion))} "
                f"({record.epochs_run} epochs, {record.seconds:.1f} s"
                + (f" as 1/{record.pack_size} of a pack)" if record.pack_size > 1 else ")")
            )
        else:
            message = f"[red]{record.trial_id} FAIL[/] {escape(record.error)}"  # '[/' in an error is text
        self.progress.console.print(message)
        self.progress.advance(self.task)


def print_scan_leaderboard(console: Console, scan: ScanDirectory, top: int = 10) -> None:
    records, corrupt = scan.records()
    print_leaderboard(console, scan.name, scan.load_config()[0].eval_criterion, records, corrupt, top)


def print_leaderboard(
    console: Console,
    scan_name: str,
    criterion: str,
    records: dict[str, TrialRecord],
    corrupt: dict[str, str],
    top: int = 10,
) -> None:
    best = ranked(list(records.values()), criterion)
    columns = varying(list(records.values())) or sorted({k for r in records.values() for k in r.hyperparameters})
    train_key = criterion.replace("val_", "train_")
    table = Table(
        title=f"scan {scan_name}: top {min(top, len(best))} of {len(best)} by {criterion}",
        title_justify="left",
    )
    table.add_column("rank", justify="right")
    table.add_column("trial")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column(criterion, justify="right")
    table.add_column(train_key, justify="right")
    table.add_column("epochs", justify="right")
    for rank, record in enumerate(best[:top], start=1):
        table.add_row(
            str(rank), record.trial_id, *(str(record.hyperparameters.get(c)) for c in columns),
            _number(criterion_value(record, criterion)), _number(record.metrics.get(train_key)), str(record.epochs_run),
        )  # fmt: skip
    console.print(table)
    failed = [r for r in records.values() if not r.done]
    no_value = [r for r in records.values() if r.done and criterion_value(r, criterion) is None]
    if no_value:
        console.print(f"[yellow]{len(no_value)} finished trial(s) without a finite {criterion}[/] (not ranked)")
    if failed:
        console.print(f"[red]{len(failed)} failed trial(s)[/]:")
        for record in failed[:20]:
            where = f" job {record.job_id}" if record.job_id else ""
            log = f" log {record.log_path}" if record.log_path else ""
            console.print(escape(f"  {record.trial_id}{where}: {record.error}{log}"))
    if corrupt:
        console.print(
            f"[yellow]{len(corrupt)} unreadable record file(s) counted as missing[/]: "
            + escape(", ".join(sorted(corrupt)[:5]))
        )
