"""The ``hhscan`` command: a thin layer over the library.

Heavy modules (Keras, uproot, matplotlib) are imported inside the commands so ``hhscan --help`` stays instant.
Errors a user can fix print one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from hhscan.errors import HhscanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter scans of Keras classifiers on ROOT/HDF5 ntuples, locally or on Slurm.",
)

DEFAULT_PARAMETERS = Path("parameters/scan.yaml")
ParametersOption = Annotated[Path, typer.Option("--parameters", "-p", help="Scan configuration (YAML).")]
SamplesOption = Annotated[
    Path | None,
    typer.Option("--samples", "-s", help="Sample list (YAML); default: the one the parameters name."),
]
WorkspaceOption = Annotated[Path, typer.Option("--workspace", help="Project directory (slurm/, models/, splits/).")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    """hhscan: run --local, submit, resubmit, status, report, test."""


def _console():
    from rich.console import Console

    # Not a terminal (a log, CI): rich would wrap tables at 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _text(value: object) -> str:
    """A name, path or message printed literally: '[/' in it is not rich markup."""
    from rich.markup import escape

    return escape(str(value))


# A scan name becomes a directory (slurm/NAME) and a Slurm job name: no path separators, no leading dot or dash.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_name(name: str | None) -> None:
    if name is not None and not _NAME.fullmatch(name):
        raise HhscanError(
            f"--name {name!r}: a scan name may contain only letters, digits, '_', '.', '-' and must not start "
            f"with '.' or '-' (it names a directory under slurm/ and the Slurm jobs)"
        )


def _check_count(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise HhscanError(f"{option} {value}: must be {minimum} or more")


def _check_writable(workspace: Path, name: str | None) -> None:
    """Every directory a run writes to, checked before any data is read or trial run."""
    from hhscan.execution.scandir import ScanDirectory, Workspace
    from hhscan.fileio import require_writable

    space = Workspace(workspace)
    directories = [space.scans, space.splits, space.cache]
    if name is not None:
        scan = ScanDirectory(space.scans / name)
        directories += [scan.root, scan.output_dir, scan.logs_dir, scan.root / "config", scan.root / "checkpoints"]
    require_writable(directories)


def _load(parameters_path: Path, samples: Path | None):
    from hhscan.settings import config

    parameters = config.load_parameters(parameters_path)
    sample_list = config.load_sample_list(samples or config.samples_path(parameters))
    return parameters, sample_list


@app.command()
def run(
    local: Annotated[bool, typer.Option("--local", help="Run the trials in this process.")] = False,
    parameters: ParametersOption = DEFAULT_PARAMETERS,
    samples: SamplesOption = None,
    name: Annotated[str, typer.Option("--name", "-n", help="Scan name: results under slurm/NAME/.")] = "local",
    max_trials: Annotated[int | None, typer.Option("--max-trials", help="Run at most N missing trials.")] = None,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Run a scan's missing trials locally (a rerun skips trials already done)."""
    if not local:
        raise HhscanError("'hhscan run' runs on this machine: add --local (use 'hhscan submit' for Slurm)")
    _check_name(name)
    _check_count("--max-trials", max_trials, 0)
    from hhscan.execution import session
    from hhscan.results import views as console_views

    console = _console()
    params, sample_list = _load(parameters, samples)
    _check_writable(Path(workspace), name)
    with console_views.Steps(console, "reading the samples and building the split"):
        prepared = session.prepare(params, sample_list, Path(workspace), name, kind="local")
    _print_data(console, prepared)
    if params.search.adaptive:
        finished = _run_adaptive(console, prepared, max_trials)
    else:
        todo = prepared.scan.missing()[: max_trials if max_trials is not None else None]
        console.print(
            f"scan [bold]{name}[/]: {len(prepared.trials)} trials, {len(todo)} to run → {_text(prepared.scan.root)}"
        )
        with console_views.RunProgress(console, len(todo)) as progress:
            finished = session.run_local(
                prepared, [t.id for t in todo], on_trial_end=progress.trial_done, on_epoch=progress.epoch
            )
    console_views.print_scan_leaderboard(console, prepared.scan)
    if finished and not any(record.finished for record in finished):
        raise HhscanError(
            f"all {len(finished)} trial(s) of scan '{name}' failed: their errors are in the FAIL records under "
            f"{prepared.scan.output_dir.absolute()} ('hhscan status {name}' lists them)"
        )
    console.print(f"next: [bold]hhscan report {name}[/] (ranks every trial, exports the best model), "
                  f"then [bold]hhscan test --model best[/] (scores the test split, draws the plots)")  # fmt: skip


def _run_adaptive(console, prepared, max_trials: int | None) -> list:
    """An adaptive scan here: this process is one worker, asking and training packs until the budget is spent."""
    from hhscan.execution import runner, search
    from hhscan.results import views as console_views

    settings, scan = prepared.parameters.search, prepared.scan
    records, _ = scan.records()
    asked = search.read_asked(scan.root)
    finished = sum(1 for a in asked if search.finished_state(records.get(a.trial.id)))
    left = max(settings.trials - finished, 0)
    todo = left if max_trials is None else min(left, max_trials)
    pruner = f", pruner {settings.pruner}" if settings.pruner != "none" else ""
    console.print(
        f"scan [bold]{scan.name}[/]: {settings.sampler} search{pruner}, {settings.trials} trials: {finished} finished, "
        f"up to {todo} to run → {_text(scan.root)}"
    )
    with console_views.RunProgress(console, todo) as progress:
        return runner.run_adaptive(scan, on_trial_end=progress.trial_done, dataset=prepared.dataset,
                                   on_epoch=progress.epoch, max_trials=max_trials)  # fmt: skip


@app.command()
def submit(
    name: Annotated[str, typer.Option("--name", "-n", help="Scan name: logs and results under slurm/NAME/.")],
    split: Annotated[int, typer.Option("--split", help="Trials per Slurm job.")] = 1,
    parameters: ParametersOption = DEFAULT_PARAMETERS,
    samples: SamplesOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the jobs, submit nothing.")] = False,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Submit a new scan to Slurm through submitit, N trials per job."""
    _check_name(name)
    _check_count("--split", split, 1)
    from hhscan.execution import session, slurm

    console = _console()
    params, sample_list = _load(parameters, samples)
    if not dry_run:
        _check_writable(Path(workspace), name)
    slurm.resource_parameters(params.slurm)  # unknown resources fail before any data is read
    slurm.check_reachable()
    prepared = session.prepare(
        params, sample_list, Path(workspace), name, kind="slurm", must_be_new=not dry_run, create=not dry_run
    )
    _print_data(console, prepared)
    _warn_memory(params)
    groups, jobs = session.submit(prepared, split, prepared.trials, dry_run=dry_run)
    _print_submission(console, name, groups, jobs, dry_run)


def _print_data(console, prepared) -> None:
    from hhscan.results import views as console_views

    units = prepared.sample_list.units
    console_views.print_summaries(console, prepared.dataset.summaries, prepared.backend, (units.xsec, units.lumi))
    console_views.print_input_warnings(console, prepared.probable_leaks, prepared.sample_list.leak_check.auc)


def _warn_memory(params) -> None:
    from hhscan.execution import runner, slurm

    # Measured here, after what a worker does before its first trial (data loaded, Keras backend initialised).
    warning = slurm.memory_warning(params.slurm, params.training.worker_memory_gb, runner.worker_baseline_gb())
    if warning:
        print(f"hhscan: warning: {warning}", file=sys.stderr)


def _print_submission(console, name: str, groups: list[list[str]], jobs: list[dict], dry_run: bool) -> None:
    trials = sum(len(g) for g in groups)
    if dry_run:
        console.print(f"scan [bold]{_text(name)}[/]: would submit {trials} trial(s) in {len(groups)} job(s):")
        for group in groups:
            console.print("  " + " ".join(group))
        return
    if not jobs:
        console.print(f"scan [bold]{name}[/]: nothing to submit")
        return
    arrays = sorted({str(j["job_id"]).split("_")[0] for j in jobs})
    console.print(
        f"scan [bold]{_text(name)}[/]: submitted {trials} trial(s) in {len(jobs)} job(s) (arrays {', '.join(arrays)}); "
        f"logs under {_text(Path(jobs[0]['stdout']).parent.parent)}"
    )


@app.command()
def resubmit(
    name: Annotated[str | None, typer.Argument(help="Scan name (default: the latest scan).")] = None,
    split: Annotated[int, typer.Option("--split", help="Trials per Slurm job.")] = 1,
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="Do not retry trials that failed.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be submitted.")] = False,
    parameters: Annotated[
        Path | None, typer.Option("--parameters", "-p", help="Default: the file the scan was created from.")
    ] = None,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Submit only the missing (failed, timed out, cancelled, never run) trials into the same scan."""
    _check_name(name)
    _check_count("--split", split, 1)
    from hhscan.execution import session

    console = _console()
    if not dry_run:
        _check_writable(Path(workspace), name)
    prepared, status, groups, jobs = session.resubmit(Path(workspace), name, split, skip_failed, dry_run, parameters)
    _warn_memory(prepared.parameters)
    counts = ", ".join(f"{s} {status.count(s)}" for s in ("done", "failed", "running", "pending", "missing"))
    console.print(f"scan [bold]{prepared.scan.name}[/]: {counts}")
    _print_submission(console, prepared.scan.name, groups, jobs, dry_run)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Scan name (default: the latest scan).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Every trial, error and log path.")] = False,
    watch: Annotated[
        float | None, typer.Option("--watch", help="Refresh every N seconds until nothing runs (Ctrl-C stops).")
    ] = None,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Trials by state and job: running ones with their epoch and best value, jobs' time against their limit."""
    import time

    from hhscan.execution import jobstate
    from hhscan.execution.scandir import Workspace
    from hhscan.results import statusview

    console = _console()
    scan = Workspace(Path(workspace)).scan(name)
    if watch is None:
        statusview.print_status(console, scan.name, jobstate.scan_status(scan), verbose)
        return
    try:
        while True:
            result = jobstate.scan_status(scan)
            console.clear()
            statusview.print_status(console, scan.name, result, verbose)
            if not result.of("running", "pending"):
                return
            time.sleep(max(watch, 0.5))
    except KeyboardInterrupt:
        return


@app.command()
def report(
    name: Annotated[str | None, typer.Argument(help="Scan name (default: the latest scan).")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows in the console table.")] = 10,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    criterion: Annotated[
        str | None, typer.Option("--criterion", help="Rank by this metric (default: the scan's eval_criterion).")
    ] = None,
    optuna_storage: Annotated[
        Path | None,
        typer.Option("--optuna-storage", help="Adaptive scan: also write its study to this SQLite file "
                     "(optuna-dashboard PATH opens it)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rank and export the best even if some record files are unreadable.")
    ] = False,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Rank all trials: top-N table, models/NAME.csv, plots under models/NAME/, best model models/NAME_best.zip."""
    _check_name(name)
    _check_count("--top", top, 0)
    from hhscan.execution.scandir import Workspace
    from hhscan.fileio import require_writable
    from hhscan.results import views as console_views
    from hhscan.results.report import make_report

    console = _console()
    space = Workspace(Path(workspace))
    require_writable([space.models])
    if criterion is not None:
        from hhscan.settings import config

        config.check_criterion(criterion, "--criterion")
    result = make_report(space, name, plots=not no_plots, criterion=criterion, optuna_storage=optuna_storage,
                         force=force)
    records = {r.trial_id: r for r in result.ranked + result.failed}
    significance = space.scan(result.scan).load_config()[1].significance  # the guard behind *_significance
    console_views.print_leaderboard(console, result.scan, result.criterion, records, result.corrupt, top, significance)
    console_views.print_input_warnings(console, result.probable_leaks, result.leak_threshold)
    console.print(f"all trials ranked: {_text(result.csv_path)}")
    if result.plot_paths:
        console.print(f"plots: {_text(result.plot_paths[0].parent)}/ ({len(result.plot_paths)} files)")
    for note in result.notes:
        console.print(note)
    if result.optuna_storage:
        console.print(f"Optuna study '{_text(result.scan)}': {_text(result.optuna_storage)} "
                      f"(optuna-dashboard sqlite:///{_text(result.optuna_storage.resolve())})")
    if result.best_zip:
        console.print(f"best model: {_text(result.best_zip)} (also 'hhscan test --model best')")


@app.command("test")
def test_model(
    model: Annotated[str, typer.Option("--model", "-m", help="'best', a name under models/, or a zip path.")] = "best",
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="Score these whole samples instead of the test split.")
    ] = None,
    file_format: Annotated[str, typer.Option("--format", help="root or h5.")] = "root",
    directory: Annotated[Path | None, typer.Option("--dir", help="Output directory (default models/<model>/).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Allow --output on samples used in training.")] = False,
    samples: Annotated[
        Path | None,
        typer.Option("--samples", help="Another sample list (added after training) whose samples --output names."),
    ] = None,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Apply a model to the test split (or to other samples): scored ROOT/HDF5 files and evaluation plots."""
    from hhscan.execution.scandir import Workspace
    from hhscan.fileio import require_writable
    from hhscan.results import views as console_views
    from hhscan.results.apply import apply_model

    console = _console()
    require_writable([directory if directory is not None else Path(workspace) / "models"])
    with console_views.Steps(console, "loading the model") as steps:
        result = apply_model(
            Workspace(Path(workspace)), model, output or None, file_format, directory, force, on_step=steps,
            samples=samples,
        )  # fmt: skip
    for key, path in result.outputs.items():
        console.print(f"{_text(key)}: {result.events[key]} events → {_text(path)}")
    if result.metrics:
        console.print("  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    for note in result.notes:
        console.print(note, markup=False)
    if result.plots:
        console.print(f"plots: {_text(result.plots[0].parent)}/ ({len(result.plots)} files)")


@app.command("export")
def export_command(
    model: Annotated[str, typer.Option("--model", "-m", help="'best', a name under models/, or a zip path.")] = "best",
    file_format: Annotated[str, typer.Option("--format", help="onnx or saved_model.")] = "onnx",
    directory: Annotated[Path | None, typer.Option("--dir", help="Output directory (default models/).")] = None,
    workspace: WorkspaceOption = Path(),
) -> None:
    """Export a model (scaler inside) as ONNX or a TensorFlow SavedModel, checked against Keras on its test split."""
    from hhscan.execution.scandir import Workspace
    from hhscan.fileio import require_writable
    from hhscan.results import export
    from hhscan.results.report import resolve_model

    export.check_format(file_format)
    space = Workspace(Path(workspace))
    path = resolve_model(space, model)
    out_dir = directory if directory is not None else space.models
    require_writable([out_dir])
    export.select_backend()
    features, folds = export.model_test_events(path, space)
    result = export.export_model(path, file_format, out_dir, features, test_folds=folds)
    console = _console()
    written = _text(result.path) if len(result.paths) == 1 else ", ".join(_text(p) for p in result.paths)
    each = "" if len(result.paths) == 1 else " (each fold model on its own test fold; fold rule in the JSON)"
    console.print(
        f"{written}: max |Δscore| vs Keras {result.max_abs_difference:.2g} on {result.events_checked} "
        f"test events{each} (allowed {export.TOLERANCE:g}); inputs and outputs in {_text(result.description)}"
    )


def main() -> None:
    # Every error says "rerun with --debug": accept it anywhere on the command line, not only before the command.
    arguments = sys.argv[1:]
    debug = "--debug" in arguments
    if debug:
        arguments = ["--debug", *(a for a in arguments if a != "--debug")]
    try:
        app(args=arguments)
    except HhscanError as error:
        if debug:
            raise
        print(f"hhscan: error: {' '.join(str(error).split())}", file=sys.stderr)
        if getattr(error, "user_traceback", ""):  # the user's own code failed: their traceback is theirs to read
            print(error.user_traceback, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("hhscan: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if debug:
            raise
        print(f"hhscan: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)


if __name__ == "__main__":
    main()
