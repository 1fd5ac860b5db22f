"""hhscan benchmarks: every number is a ratio against a baseline measured in the same run.

    python bench/run.py            # all sections, writes bench/RESULTS.md
    python bench/run.py --quick    # smaller sizes, for a smoke check
    python bench/run.py --only scan,data

Sections: scan (hhscan vs a plain Keras loop on TensorFlow vs Optuna's GridSampler, the shipped example),
machine (training events/s against an MLP-shaped matmul ceiling), data (ROOT → arrays vs raw uproot, cached
reload vs np.load), bookkeeping (missing-trial detection and report over 10 000 records, ``hhscan --help``).
Each tool runs in its own process (a Keras backend is per process); times exclude imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_GRID = {
    "layers": [2, 3],
    "neurons": [32, 64],
    "activation": ["relu"],
    "dropout": [0.0],
    "l2": [0.0],
    "optimizer": ["adam"],
    "learning_rate": [0.001, 0.003],
    "batch_size": [256],
    "epochs": [10],
}


def _project(root: Path, epochs: int) -> Path:
    import yaml

    for part in ("parameters", "sample_lists", "data"):
        shutil.copytree(REPO / part, root / part)
    parameters = yaml.safe_load((root / "parameters" / "scan.yaml").read_text())
    parameters["hyperparameters"] = {**EXAMPLE_GRID, "epochs": [epochs]}
    # Identical training for every tool: no callbacks, fixed epochs.
    parameters["training"] = {"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False},
                              "checkpoint_interval_s": None}  # fmt: skip
    (root / "parameters" / "scan.yaml").write_text(yaml.safe_dump(parameters))
    return root


# ----------------------------------------------------------------------------------------------- workers


def _dataset(root: Path):
    root = Path(root)
    from hhscan import config, runner
    from hhscan.scandir import Workspace

    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    samples = config.load_sample_list(config.samples_path(parameters))
    return parameters, samples, runner.prepare_dataset(parameters, samples, Workspace(root))


def worker_hhscan(root: Path) -> dict:
    root = Path(root)
    from hhscan import config, model, session

    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    samples = config.load_sample_list(config.samples_path(parameters))
    backend = model.choose_backend("auto")
    import keras  # noqa: F401  (imports excluded from the timing, as for every tool)

    prepared = session.prepare(parameters, samples, root, "bench", kind="local")
    started = time.perf_counter()
    records = session.run_local(prepared, [t.id for t in prepared.trials])
    wall = time.perf_counter() - started
    return {"wall_s": wall, "best_val_auc": max(r.metrics["val_auc"] for r in records), "backend": backend,
            "trials": len(records)}  # fmt: skip


def _plain_fit(keras, hp, x, y, w, xv, yv, wv):
    from hhscan import metrics

    mean, variance = x.mean(axis=0), x.var(axis=0)
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
    for _ in range(hp["layers"]):
        h = keras.layers.Dense(hp["neurons"], activation=hp["activation"])(h)
    net = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    net.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss="binary_crossentropy")
    net.fit(x, y, sample_weight=w, validation_data=(xv, yv, wv), epochs=hp["epochs"], batch_size=hp["batch_size"],
            verbose=0)  # fmt: skip
    auc = metrics.weighted_auc(yv, net.predict(xv, batch_size=65536, verbose=0)[:, 0], wv)
    keras.backend.clear_session()
    return auc


def _grid(epochs: int):
    import itertools

    grid = {**EXAMPLE_GRID, "epochs": [epochs]}
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def worker_plain(root: Path, epochs: int) -> dict:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    _, _, data = _dataset(root)
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    started = time.perf_counter()
    aucs = [_plain_fit(keras, hp, x, y.astype("float32"), w, xv, yv.astype("float32"), wv) for hp in _grid(epochs)]
    return {"wall_s": time.perf_counter() - started, "best_val_auc": max(aucs), "backend": "tensorflow"}


def worker_optuna(root: Path, epochs: int) -> dict:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, _, data = _dataset(root)
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    space = dict({**EXAMPLE_GRID, "epochs": [epochs]}.items())

    def objective(trial):
        hp = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
        return _plain_fit(keras, hp, x, y.astype("float32"), w, xv, yv.astype("float32"), wv)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(space, seed=0))
    started = time.perf_counter()
    study.optimize(objective, n_trials=len(_grid(epochs)))
    return {"wall_s": time.perf_counter() - started, "best_val_auc": study.best_value, "backend": "tensorflow"}


def worker_machine(events: int) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    from hhscan import model

    model.keep_tensorflow_out()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(events, 20)).astype("float32")
    y = (x[:, 0] + rng.normal(size=events) > 0).astype("float32")
    hp = {"layers": 3, "neurons": 64, "activation": "relu", "dropout": 0.0, "l2": 0.0, "optimizer": "adam",
          "learning_rate": 1e-3}  # fmt: skip
    net = model.build_model(hp, 20, 2, x.mean(0), x.var(0))
    model.compile_model(net, hp, 2)
    net.fit(x, y, batch_size=512, epochs=1, verbose=0)  # warm-up: compilation
    started = time.perf_counter()
    net.fit(x, y, batch_size=512, epochs=2, verbose=0)
    rate = 2 * events / (time.perf_counter() - started)
    a = rng.normal(size=(65536, 64)).astype("float32")
    b = rng.normal(size=(64, 64)).astype("float32")
    a @ b
    repeats = 50
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    ceiling = repeats * 2 * 65536 * 64 * 64 / (time.perf_counter() - started)
    # Forward + backward ≈ 3 × 2 × (20·64 + 64·64 + 64·64 + 64·1) FLOP per event.
    flop_per_event = 3 * 2 * (20 * 64 + 64 * 64 * 2 + 64)
    return {"events_per_s": rate, "ceiling_flops": ceiling, "flop_per_event": flop_per_event,
            "backend": keras.backend.backend()}  # fmt: skip


WORKERS = {"hhscan": worker_hhscan, "plain": worker_plain, "optuna": worker_optuna}


def _in_process(name: str, *args) -> dict:
    """Run a worker in a fresh interpreter; it prints its result as JSON on the last line."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); from bench.run import *; "
            f"print(json.dumps({name}(*{args!r})))")  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- sections


def section_scan(quick: bool) -> list[str]:
    epochs = 2 if quick else 10
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        for tool, worker, args in (
            ("plain Keras loop (TensorFlow)", "worker_plain", (epochs,)),
            ("Optuna GridSampler (TensorFlow)", "worker_optuna", (epochs,)),
            ("hhscan run --local", "worker_hhscan", ()),
        ):
            root = _project(Path(directory) / worker, epochs)
            path = (str(root),)
            rows[tool] = _in_process(worker, *path, *args)
    base = rows["plain Keras loop (TensorFlow)"]["wall_s"]
    lines = [f"### Scan of the shipped example: 8 trials, {epochs} epochs, batch 256 (imports excluded)", "",
             "| tool | backend | wall s | vs plain loop | best val AUC |", "|---|---|---|---|---|"]  # fmt: skip
    for tool, row in rows.items():
        lines.append(f"| {tool} | {row['backend']} | {row['wall_s']:.1f} | {row['wall_s'] / base:.2f} "
                     f"({base / row['wall_s']:.2f}× faster) | {row['best_val_auc']:.4f} |")  # fmt: skip
    lines.append("")
    lines.append("Talos 2.0.10 needs pandas<3 and its own venv: not run here (see the note below).")
    return lines


def section_machine(quick: bool) -> list[str]:
    events = 40_000 if quick else 200_000
    row = _in_process("worker_machine", events)
    achieved = row["events_per_s"] * row["flop_per_event"]
    return [f"### Training vs the machine: 20→64×3→1 MLP, batch 512, {events} events ({row['backend']})", "",
            f"- {row['events_per_s']:,.0f} events/s ≈ {achieved / 1e9:.1f} GFLOP/s "
            f"({row['flop_per_event']} FLOP per event, forward+backward)",
            f"- MLP-shaped matmul ceiling (65536×64 @ 64×64, numpy): {row['ceiling_flops'] / 1e9:.1f} GFLOP/s",
            f"- **fraction of the ceiling: {achieved / row['ceiling_flops']:.2f}**", ""]  # fmt: skip


def section_data(quick: bool) -> list[str]:
    import uproot
    import yaml
    from hhscan import config, dataset

    n = 200_000 if quick else 1_000_000
    rng = np.random.default_rng(1)
    lines = []
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        names = [f"v{i}" for i in range(30)]
        columns = {name: rng.normal(size=n).astype("float32") for name in names}
        with uproot.recreate(root / "big.root") as handle:
            tree = handle.mktree("Events", dict.fromkeys(names, "float32"))
            for start in range(0, n, 250_000):
                tree.extend({k: v[start : start + 250_000] for k, v in columns.items()})
        (root / "s.yaml").write_text(yaml.safe_dump({
            "classes": ["background", "signal"],
            "groups": [{"name": "sig", "files": "big.root", "tree": "Events", "class": "signal"},
                       {"name": "bkg", "files": "big.root", "tree": "Events", "class": "background",
                        "xsec": 1.0, "event_weight_sum": 1.0}],
            "inputs": names[:29], "cut": "v29 > -100",
        }))  # fmt: skip
        samples = config.load_sample_list(root / "s.yaml")
        settings = config.SplitSettings(name="bench")

        def raw():
            with uproot.open(root / "big.root") as handle:
                handle["Events"].arrays(filter_name=names, library="np")

        raw()  # page cache warm for both
        raw_s = _best_of(3, lambda: [raw(), raw()])
        build_s = _best_of(3, lambda: dataset.load_dataset(samples, settings, root / f"splits{time.time_ns()}"))
        dataset.load_dataset(samples, settings, root / "splits", root / "cache")
        cached_s = _best_of(3, lambda: dataset.load_dataset(samples, settings, root / "splits", root / "cache"))
        cache_file = next((root / "cache").glob("*.npz"))
        arrays = dict(np.load(cache_file))
        np.savez(root / "plain.npz", **arrays)
        npload_s = _best_of(3, lambda: dict(np.load(root / "plain.npz")))
    lines += [f"### Data: {n:,} events × 30 branches, two samples from one ROOT file", "",
              "| step | s | ratio | baseline |", "|---|---|---|---|",
              f"| ROOT → training arrays (cut, weights, split) | {build_s:.2f} | {build_s / raw_s:.2f} | raw uproot "
              f"arrays() of the same branches, twice ({raw_s:.2f} s) |",
              f"| cached reload | {cached_s:.3f} | {cached_s / npload_s:.2f} | np.load of the same arrays "
              f"({npload_s:.3f} s) |", ""]  # fmt: skip
    return lines


def section_bookkeeping(quick: bool) -> list[str]:
    from hhscan import records
    from hhscan.report import make_report
    from hhscan.scandir import ScanDirectory, Workspace

    n = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as directory:
        workspace = Workspace(Path(directory))
        scan = ScanDirectory(workspace.scans / "big")
        scan.output_dir.mkdir(parents=True)
        rng = np.random.default_rng(2)
        trials = []
        for i in range(n):
            hp = {"layers": int(i % 4), "neurons": int(16 * (1 + i % 5)), "learning_rate": float(10 ** -(1 + i % 3))}
            trial_id = f"{i:012x}"
            trials.append({"id": trial_id, "hyperparameters": hp, "repetition": 0})
            if i % 10:  # every tenth trial missing
                records.write_record(scan.output_dir, records.TrialRecord(
                    trial_id=trial_id, status="DONE", repetition=0, hyperparameters=hp, criterion="val_auc",
                    value=float(rng.random()), metrics={"val_auc": 0.5, "train_auc": 0.6},
                    history={"loss": [1.0] * 10, "val_loss": [1.0] * 10}, split_checksum="x"))  # fmt: skip
        (scan.root / "scan.json").write_text(json.dumps({"name": "big", "trials": trials, "eval_criterion": "val_auc",
                                                         "split_checksum": "x", "jobs": []}))  # fmt: skip
        started = time.perf_counter()
        missing = scan.missing()
        detect_s = time.perf_counter() - started
        assert len(missing) == n // 10
        started = time.perf_counter()
        make_report(workspace, "big", plots=True, export=False)
        report_s = time.perf_counter() - started
    python_s = _best_of(5, lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    help_s = _best_of(5, lambda: subprocess.run([sys.executable, "-m", "hhscan.cli", "--help"], check=True,
                                                capture_output=True))  # fmt: skip
    return [f"### Bookkeeping over {n:,} trial records", "",
            f"- missing-trial detection: {detect_s:.2f} s",
            f"- `hhscan report` (ranking, CSV, plots; no model zips to export): {report_s:.2f} s",
            f"- `hhscan --help`: {help_s:.2f} s (bare `python -c pass`: {python_s:.2f} s, ratio "
            f"{help_s / python_s:.1f})", ""]  # fmt: skip


def _best_of(repeats: int, function) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


SECTIONS = {"scan": section_scan, "machine": section_machine, "data": section_data, "bookkeeping": section_bookkeeping}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--output", default=str(REPO / "bench" / "RESULTS.md"))
    arguments = parser.parse_args()
    lines = [f"## Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs"
             f"{' (quick sizes)' if arguments.quick else ''}", ""]  # fmt: skip
    for name in arguments.only.split(","):
        section = SECTIONS[name](arguments.quick)
        print("\n".join(section), flush=True)
        lines += section
    Path(arguments.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
