"""The ``hhscan`` command: a thin layer over the library.

Heavy modules (Keras, uproot, matplotlib) are imported inside the commands so ``hhscan --help`` stays instant.
Errors a user can fix print one line and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

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


def _load(parameters_path: Path, samples: Path | None):
    from hhscan import config

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
    from hhscan import session
    from hhscan import views as console_views

    console = _console()
    params, sample_list = _load(parameters, samples)
    prepared = session.prepare(params, sample_list, Path(workspace), name, kind="local")
    console_views.print_summaries(console, prepared.dataset.summaries, prepared.backend)
    todo = prepared.scan.missing()[: max_trials if max_trials is not None else None]
    console.print(f"scan [bold]{name}[/]: {len(prepared.trials)} trials, {len(todo)} to run → {prepared.scan.root}")
    with console_views.TrialProgress(console, len(todo)) as progress:
        session.run_local(prepared, [t.id for t in todo], on_trial_end=progress.advance)
    console_views.print_leaderboard(console, prepared.scan, params)


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        app()
    except HhscanError as error:
        if debug:
            raise
        print(f"hhscan: error: {' '.join(str(error).split())}", file=sys.stderr)
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
