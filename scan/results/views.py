"""What the console shows: per-sample numbers, trial progress, and ranked trials (rich)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hhscan.data import metrics
from hhscan.data.dataset import SampleSummary
from hhscan.execution.scandir import ScanDirectory
from hhscan.learning.records import PRUNED, TrialRecord
from hhscan.learning.training import EpochProgress
from hhscan.results.ranking import criterion_value, ranked, varying
from hhscan.settings.config import Significance
from hhscan.settings.criteria import metric
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
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
            _number(s.lumi) if s.xsec is not None else "–",  # no cross-section: no yield, so no luminosity used
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



def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _trial_line(record: TrialRecord) -> str:
    if record.status == PRUNED:
        return (
            f"{record.trial_id} PRUNED after epoch {record.pruned_epoch} "
            f"({record.criterion}={_number(criterion_value(record, record.criterion))}, not ranked)"
        )
    if record.done:
        return (
            f"{record.trial_id} {record.criterion}={_number(criterion_value(record, record.criterion))} "
            f"({record.epochs_run} epochs, {record.seconds:.1f} s"
            + (f" as 1/{record.pack_size} of a pack)" if record.pack_size > 1 else ")")
        )
    return f"[red]{record.trial_id} FAIL[/] {escape(record.error)}"


WAITING = "building a pack; its first epoch includes compilation"


class _PackState:
    """What the view remembers of the pack in training: its number, timings, and the trials already stopped."""

    def __init__(self, number: int, progress: EpochProgress):
        self.number = number
        self.trial_ids = list(progress.trial_ids)
        self.durations: list[float] = []
        self.stopped: set[str] = set()
        self.task: TaskID | None = None

    def seconds_per_epoch(self) -> float:
        # The first epoch of a pack includes compilation: left out once others are measured.
        timed = self.durations[1:] or self.durations
        return sum(timed) / len(timed)

    def describe(self, progress: EpochProgress) -> str:
        """Time per epoch, the remaining time if no trial stops early, the best value so far among the trials."""
        per_epoch = self.seconds_per_epoch()
        remaining = (progress.epochs - progress.epoch) * per_epoch
        known = [b for b in progress.best if b is not None]
        pick = metric(progress.monitor).best
        stopped = f", {len(self.stopped)} stopped early" if self.stopped else ""
        return (
            f"{per_epoch:.2f} s/epoch  ETA {_duration(remaining)}  "
            f"best {progress.monitor} {_number(pick(known)) if known else '–'}{stopped}"
        )


class RunProgress:
    """The live view of a local run: trials done, and the pack in training (epoch i/N, time per epoch, ETA, best
    validation value among its trials). In a terminal rich redraws it; elsewhere (a log, Slurm) it prints one
    plain line per epoch per pack and one per finished trial."""

    def __init__(self, console: Console, total: int):
        self.console = console
        self.live = console.is_terminal
        self.pack: _PackState | None = None
        self.packs = 0
        self.counted: set[str] = set()
        self.total = total
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.trials = self.progress.add_task(f"trials 0/{total}", total=total, detail=WAITING)

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def epoch(self, progress: EpochProgress) -> None:
        """Called by training after every epoch of a pack."""
        if self.pack is None or self.pack.trial_ids != list(progress.trial_ids):
            self._start_pack(progress)
        pack = self.pack
        assert pack is not None
        pack.durations.append(progress.seconds_per_epoch)
        for trial_id, active in zip(progress.trial_ids, progress.active, strict=True):
            if not active and trial_id not in pack.stopped:
                pack.stopped.add(trial_id)
                self._stopped_early(trial_id, progress)
        detail = pack.describe(progress)
        counter = f"epoch {progress.epoch}/{progress.epochs}"
        if not self.live:
            size = f"{len(pack.trial_ids)} trial{'s' if len(pack.trial_ids) > 1 else ''}"
            self.console.print(f"pack {pack.number} ({size}) {counter}  {detail}", markup=False)
            return
        assert pack.task is not None
        over = progress.epoch >= progress.epochs or not any(progress.active)
        self.progress.update(self.trials, detail="scoring and saving the pack's models" if over else "")
        self.progress.update(pack.task, completed=progress.epoch, total=progress.epochs, detail=detail,
                             description=f"pack {pack.number} {counter}")  # fmt: skip
        self.progress.refresh()

    def _start_pack(self, progress: EpochProgress) -> None:
        if self.pack is not None and self.pack.task is not None:
            self.progress.remove_task(self.pack.task)
        self.packs += 1
        self.pack = _PackState(self.packs, progress)
        if self.live:
            self.pack.task = self.progress.add_task(f"pack {self.packs}", total=progress.epochs, detail="")

    def _stopped_early(self, trial_id: str, progress: EpochProgress) -> None:
        self.console.print(f"{trial_id} stopped early after epoch {progress.epoch}/{progress.epochs}", markup=False)
        if trial_id not in self.counted:
            self.counted.add(trial_id)
            self._advance()

    def _advance(self) -> None:
        self.progress.advance(self.trials)
        self.progress.update(self.trials, description=f"trials {len(self.counted)}/{self.total}")

    def trial_done(self, record: TrialRecord) -> None:
        """Called with each trial's record as it is written."""
        self.console.print(_trial_line(record))
        if record.trial_id not in self.counted:
            self.counted.add(record.trial_id)
            self._advance()
        self.progress.update(self.trials, detail=WAITING if len(self.counted) < self.total else "")


class Steps:
    """Says which long step is under way (reading data, loading a model, scoring, plotting): a spinner line in a
    terminal, nothing elsewhere."""

    def __init__(self, console: Console, first: str = "starting"):
        self.status = console.status(first) if console.is_terminal else None

    def __enter__(self) -> Steps:
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status.update(escape(text))


def print_scan_leaderboard(console: Console, scan: ScanDirectory, top: int = 10) -> None:
    records, corrupt = scan.records()
    parameters, sample_list = scan.load_config()
    print_leaderboard(console, scan.name, parameters.eval_criterion, records, corrupt, top, sample_list.significance)


def print_leaderboard(
    console: Console,
    scan_name: str,
    criterion: str,
    records: dict[str, TrialRecord],
    corrupt: dict[str, str],
    top: int = 10,
    significance: Significance | None = None,
) -> None:
    """The leaderboard and what it leaves out; ranked by a significance, the guard its best cut obeys."""
    console.print(leaderboard_table(scan_name, criterion, records, top))
    if metric(criterion).yields and significance is not None:
        guard = metrics.guard_text(**significance.model_dump())
        console.print(f"{criterion}: Asimov Z at the best score cut with {guard}", markup=False)
        other = sorted(r.trial_id for r in records.values()
                       if r.done and r.training_settings.get("significance") != significance.model_dump())  # fmt: skip
        if other:
            console.print(f"[yellow]{len(other)} trial(s) computed {criterion} under another guard or none (recorded "
                          f"before hhscan had the guard): not comparable, rerun them[/] ({', '.join(other[:10])})")
    failed = [r for r in records.values() if not r.finished]
    pruned = sorted((r for r in records.values() if r.status == PRUNED), key=lambda r: r.trial_id)
    no_value = [r for r in records.values() if r.done and criterion_value(r, criterion) is None]
    if no_value:
        console.print(f"[yellow]{len(no_value)} finished trial(s) without a finite {criterion}[/] (not ranked)")
    if pruned:
        epochs = ", ".join(f"{r.trial_id} at epoch {r.pruned_epoch}" for r in pruned[:20])
        console.print(f"{len(pruned)} trial(s) pruned by the search (finished, not ranked): {epochs}", markup=False)
    if failed:
        console.print(f"[red]{len(failed)} failed trial(s)[/]:")
        for record in failed[:20]:
            where = f" job {record.job_id}" if record.job_id else ""
            log = f" log {record.log_path}" if record.log_path else ""
            console.print(f"  {record.trial_id}{where}: {record.error}{log}", markup=False)
    if corrupt:
        console.print(
            f"[yellow]{len(corrupt)} unreadable record file(s) counted as missing[/]: "
            + escape(", ".join(sorted(corrupt)[:5]))
        )


def leaderboard_table(scan_name: str, criterion: str, records: dict[str, TrialRecord], top: int = 10) -> Table:
    """The top trials: rank, trial id, hyperparameters (those that vary; all of them for a single trial), the
    criterion, its training counterpart, and the epochs each trial ran. Every column has its own name."""
    best = ranked(list(records.values()), criterion)
    columns = varying(list(records.values())) or sorted({k for r in records.values() for k in r.hyperparameters})
    train_key = metric(criterion).train_twin or criterion
    table = Table(
        title=f"scan {scan_name}: top {min(top, len(best))} of {len(best)} by {criterion}",
        title_justify="left",
    )
    table.add_column("rank", justify="right")
    table.add_column("trial")
    fixed = {"rank", "trial", criterion, train_key, "epochs run"}
    for column in columns:
        table.add_column(column if column not in fixed else f"{column} (hyperparameter)", justify="right")
    table.add_column(criterion, justify="right")
    table.add_column(train_key, justify="right")
    table.add_column("epochs run", justify="right")
    for rank, record in enumerate(best[:top], start=1):
        table.add_row(
            str(rank), record.trial_id, *(str(record.hyperparameters.get(c)) for c in columns),
            _with_spread(record, criterion), _with_spread(record, train_key), str(record.epochs_run),
        )  # fmt: skip
    return table


def _with_spread(record: TrialRecord, name: str) -> str:
    """The value, and for a k-fold trial (ranked by its mean over folds) ± the standard deviation over folds."""
    value = _number(criterion_value(record, name))
    spread = record.metrics.get(f"{name}_std")
    return value if spread is None else f"{value} ± {_number(spread)}"
