"""hhscan benchmarks: every number is a ratio against a baseline measured in the same run.

    python bench/run.py            # all sections, writes bench/RESULTS.md
    python bench/run.py --quick    # smaller sizes, for a smoke check
    python bench/run.py --only scan,data

Sections: scan (hhscan vs a plain Keras loop on TensorFlow vs Talos vs Optuna's GridSampler, the shipped
example), kfold (3 fold models per trial against one), search (hhscan TPE + median pruning against the full grid
in hhscan and a plain Optuna study: epochs and wall time to the grid's best val AUC − 0.003), packing (trials/s for
pack sizes 1…32), machine (training events/s against an MLP-shaped matmul ceiling), grid64 (the 64-trial grid,
whole processes: hhscan cold and warm against a hand-written TF-Keras loop), data (ROOT → arrays vs raw uproot,
cached reload vs np.load), nanoaod (1M NanoAOD-like events, 10 jagged inputs, vs raw uproot arrays()), own_model
(the own-model example packed against plain Keras fits of the same models, whole processes), bookkeeping
(missing-trial detection and report over 10 000 records, ``hhscan --help``). Each tool runs in its own process (a
Keras backend is per process); times exclude imports unless a section says whole processes.
Talos 2.0.10 needs pandas<3: the bench creates its own venv for it in bench/.venv-talos (once; --no-talos skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import results_file  # noqa: E402  (this file runs as a script too)

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


# The example has no event number: an integer made from a continuous variable stands in for it.
EXAMPLE_KFOLD = {"name": "k3", "kind": "kfold", "folds": 3, "variable": "floor(lepton_phi * 100000)"}


# The search section's space: a 64-point grid, given as lists (the sampler's categorical choices) to the searches.
SEARCH_SPACE = {
    **EXAMPLE_GRID,
    "layers": [1, 2, 3, 4],
    "neurons": [16, 32, 64, 128],
    "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2],
}
# Both searches: the same pruner settings (Optuna's MedianPruner defaults, written out) and sampler seed.
SEARCH_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0}
SEARCH_SEED = 7
QUALITY = 0.003  # "reached": best val AUC ≥ the full grid's best − QUALITY


def _project(root: Path, epochs: int, split: dict | None = None, space: dict | None = None,
             search: dict | None = None) -> Path:  # fmt: skip
    import yaml

    for part in ("parameters", "sample_lists", "data"):
        shutil.copytree(REPO / part, root / part)
    parameters = yaml.safe_load((root / "parameters" / "scan.yaml").read_text())
    parameters["hyperparameters"] = {**(space or EXAMPLE_GRID), "epochs": [epochs]}
    if split is not None:
        parameters["split"] = split
    if search is not None:
        parameters["search"] = search
    # Identical training for every tool: no callbacks, fixed epochs.
    parameters["training"] = {"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False},
                              "checkpoint_interval_s": None}  # fmt: skip
    (root / "parameters" / "scan.yaml").write_text(yaml.safe_dump(parameters))
    return root


# ----------------------------------------------------------------------------------------------- workers


def _dataset(root: Path):
    root = Path(root)
    from hhscan.execution import runner
    from hhscan.execution.scandir import Workspace
    from hhscan.settings import config

    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    samples = config.load_sample_list(config.samples_path(parameters))
    return parameters, samples, runner.prepare_dataset(parameters, samples, Workspace(root))


def _prepared_local(root: Path):
    """The project's scan prepared for a local run, Keras imported (imports excluded from every timing)."""
    from hhscan.execution import session
    from hhscan.learning import model
    from hhscan.settings import config

    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    samples = config.load_sample_list(config.samples_path(parameters))
    backend = model.choose_backend("auto")
    import keras  # noqa: F401

    return session.prepare(parameters, samples, root, "bench", kind="local"), backend


def worker_hhscan(root: Path) -> dict:
    root = Path(root)
    from hhscan.execution import session

    prepared, backend = _prepared_local(root)
    started = time.perf_counter()
    records = session.run_local(prepared, [t.id for t in prepared.trials])
    wall = time.perf_counter() - started
    return {"wall_s": wall, "best_val_auc": max(r.metrics["val_auc"] for r in records), "backend": backend,
            "trials": len(records)}  # fmt: skip


def _plain_fit(keras, hp, x, y, w, xv, yv, wv, callbacks=()):
    from hhscan.data import metrics

    mean, variance = x.mean(axis=0), x.var(axis=0)
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
    l2 = hp.get("l2", 0.0)
    for _ in range(hp["layers"]):
        h = keras.layers.Dense(hp["neurons"], activation=hp["activation"],
                               kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)(h)  # fmt: skip
        if hp.get("dropout", 0.0):
            h = keras.layers.Dropout(hp["dropout"])(h)
    net = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    net.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss="binary_crossentropy")
    net.fit(x, y, sample_weight=w, validation_data=(xv, yv, wv), epochs=hp["epochs"], batch_size=hp["batch_size"],
            verbose=0, callbacks=list(callbacks))  # fmt: skip
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


# The speed issue's 64-trial grid: the example's, with dropout, L2 and batch size varied too (10 epochs).
GRID64 = {**EXAMPLE_GRID, "dropout": [0.0, 0.1], "l2": [0.0, 1e-4], "batch_size": [256, 512]}


def worker_plain_grid(root: Path) -> dict:
    """The project's own grid (every combination of its scan.yaml), one ``model.fit`` each, on TensorFlow."""
    import itertools

    import yaml

    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    grid = yaml.safe_load((Path(root) / "parameters" / "scan.yaml").read_text())["hyperparameters"]
    _, _, data = _dataset(root)
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    aucs = [_plain_fit(keras, hp, x, y.astype("float32"), w, xv, yv.astype("float32"), wv) for hp in points]
    return {"best_val_auc": max(aucs), "trials": len(points), "backend": "tensorflow"}


def _whole_process(command: list[str], cwd: Path, env: dict | None = None) -> float:
    """Wall seconds of a whole process, start-up and imports included: what a user waits for."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def section_grid64(quick: bool) -> list[str]:
    """The 64-trial grid, whole processes: hhscan cold (no cache/) and warm against a hand-written TF-Keras loop.

    hhscan's runs are repeated (3, 1 when quick) and their median is compared: on this shared 2-core machine one
    run moves by ±15–30% with the load. The plain loop (≈ 250 s) runs once; its own spread is a few percent.
    """
    epochs, repeats = (2, 1) if quick else (10, 3)
    hhscan = str(Path(sys.executable).with_name("hhscan"))
    with tempfile.TemporaryDirectory() as directory:
        root = _project(Path(directory) / "grid64", epochs, space=GRID64)
        cold, warm = [], []
        for _ in range(repeats):  # each cold run starts as the first: no split, data or XLA cache, no scan
            for made in ("cache", "splits", "slurm"):
                shutil.rmtree(root / made, ignore_errors=True)
            cold.append(_whole_process([hhscan, "run", "--local", "--name", "cold"], root))
        for run in range(repeats):  # data, split and XLA cache kept from the cold runs
            warm.append(_whole_process([hhscan, "run", "--local", "--name", f"warm{run}"], root))
        code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); from bench.run import worker_plain_grid; "
                f"print(json.dumps(worker_plain_grid({str(root)!r})))")  # fmt: skip
        plain = _whole_process([sys.executable, "-c", code], REPO)

    def row(label: str, runs: list[float]) -> str:
        median = statistics.median(runs)
        spread = f" ({min(runs):.1f}–{max(runs):.1f})" if len(runs) > 1 else ""
        return f"| {label} | {median:.1f}{spread} | {plain / median:.1f}× |"

    return [f"### The 64-trial grid (layers 2/3 × neurons 32/64 × lr 1e-3/3e-3 × dropout 0/0.1 × l2 0/1e-4 × batch "
            f"256/512), {epochs} epochs, whole processes (start-up, imports and data included)", "",
            f"hhscan: the median of {repeats} runs (their range in brackets); the plain loop: one run.", "",
            "| run | wall s | vs the plain TF-Keras loop |", "|---|---|---|",
            f"| plain TF-Keras loop, one `fit` a trial | {plain:.1f} | 1.0× |",
            row("hhscan run --local, cold (no cache/: split, data, XLA compiled)", cold),
            row("hhscan run --local, warm (cache/ kept)", warm), ""]  # fmt: skip


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


def worker_search_hhscan(root: Path) -> dict:
    """hhscan on the project's config, grid or adaptive: after each trial's record, the elapsed wall time."""
    root = Path(root)
    from hhscan.execution import runner, session

    prepared, backend = _prepared_local(root)
    trace, trained, stopped = [], {}, set()

    def epoch(update) -> None:
        # Epochs trained so far, per trial: a pack's records come at its end, after all of its epochs were spent.
        for trial_id, active in zip(update.trial_ids, update.active, strict=True):
            if trial_id not in stopped:
                trained[trial_id] = update.epoch
            if not active:
                stopped.add(trial_id)

    def ended(record) -> None:
        trace.append({"status": record.status, "val_auc": record.metrics.get("val_auc"), "epochs": record.epochs_run,
                      "spent": sum(trained.values()), "wall_s": time.perf_counter() - started})  # fmt: skip

    started = time.perf_counter()
    if prepared.parameters.search.adaptive:
        runner.run_adaptive(prepared.scan, on_trial_end=ended, dataset=prepared.dataset, on_epoch=epoch)
    else:
        session.run_local(prepared, [t.id for t in prepared.trials], on_trial_end=ended, on_epoch=epoch)
    return {"trace": trace, "backend": backend}


def worker_search_optuna(root: Path, epochs: int, n_trials: int) -> dict:
    """The loop a physicist would write: TPE + MedianPruner, one ``model.fit`` per trial, val AUC reported per epoch."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import optuna
    from hhscan.data import metrics

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, _, data = _dataset(root)
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    y, yv = y.astype("float32"), yv.astype("float32")
    space = {**SEARCH_SPACE, "epochs": [epochs]}

    class Pruning(keras.callbacks.Callback):
        def __init__(self, trial):
            super().__init__()
            self.trial, self.pruned = trial, False

        def on_epoch_end(self, epoch, logs=None):
            auc = metrics.weighted_auc(yv, self.model.predict(xv, batch_size=65536, verbose=0)[:, 0], wv)
            self.trial.report(auc, epoch)
            # As hhscan: no pruning after the last epoch (it would save nothing).
            if epoch + 1 < epochs and self.trial.should_prune():
                self.pruned = self.model.stop_training = True

    def objective(trial):
        hp = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
        pruning = Pruning(trial)
        auc = _plain_fit(keras, hp, x, y, w, xv, yv, wv, callbacks=[pruning])
        if pruning.pruned:
            raise optuna.TrialPruned()
        return auc

    trace = []

    def ended(study, trial) -> None:
        trace.append({"status": trial.state.name, "val_auc": trial.value, "epochs": len(trial.intermediate_values),
                      "wall_s": time.perf_counter() - started})  # fmt: skip

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEARCH_SEED),
                                pruner=optuna.pruners.MedianPruner(**SEARCH_PRUNER))  # fmt: skip
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, callbacks=[ended])
    return {"trace": trace, "backend": "tensorflow"}


def worker_machine(events: int) -> dict:
    from hhscan.learning import model

    model.choose_backend("auto")  # as hhscan sets up a worker: backend, one host device per core
    import keras

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
    rates = {"Keras fit, one model": 2 * events / (time.perf_counter() - started)}
    from hhscan.learning import fused, training

    w = np.ones(events, dtype="float32")
    table, counts = fused.batch_table(training.epoch_order(events, 0, 0), 512)
    for size in (1, 4, 16):
        nets = [model.build_model(hp, 20, 2, x.mean(0), x.var(0)) for _ in range(size)]
        for each in nets:
            model.compile_model(each, hp, 2)
            each.optimizer.build(each.trainable_variables)
        engine = fused.make_engine(nets, [n.optimizer for n in nets], "binary_crossentropy",
                                   (x, y.reshape(-1, 1), w), (x[:1000], y[:1000].reshape(-1, 1), w[:1000]))  # fmt: skip
        active = np.ones(size, bool)
        engine.train_epoch(table, counts, active)  # warm-up: compilation
        started = time.perf_counter()
        for _ in range(2):
            engine.train_epoch(table, counts, active)
        label = "hhscan fused, one model" if size == 1 else f"hhscan fused, pack of {size} (events × models)"
        rates[label] = size * 2 * events / (time.perf_counter() - started)
        keras.backend.clear_session()
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
    return {"events_per_s": rates, "ceiling_flops": ceiling, "flop_per_event": flop_per_event,
            "backend": keras.backend.backend()}  # fmt: skip


def worker_export(root: Path, target: str) -> dict:
    """The training and validation arrays hhscan prepared, for a tool that runs in another venv."""
    _, _, data = _dataset(root)
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    np.savez(target, x=x, y=y.astype("float32"), w=w, xv=xv, yv=yv.astype("float32"), wv=wv)
    return {"events": len(x)}


def worker_packing(root: Path, sizes: list[int], n_trials: int, packs_per_size: int | None = None) -> dict:
    """Trials/s of the example grid (repeated to ``n_trials``) trained in packs of each size, compilation included.

    Size 1 trains the first 8 trials; a larger size K all of them, or ``packs_per_size`` packs of K where given.
    """
    from hhscan.learning import model, training, trial

    model.choose_backend("auto")  # as hhscan sets up a worker: backend, one host device per core
    import keras

    parameters, _, data = _dataset(root)
    grid = trial.expand(parameters)
    trials = [trial.Trial(trial.trial_id(t.hyperparameters, r), t.hyperparameters, r)
              for r in range(-(-n_trials // len(grid))) for t in grid][:n_trials]  # fmt: skip
    rates, best, counts = {}, {}, {}
    for size in sizes:
        if size == 1:
            subset = trials[: min(n_trials, 8)]
        else:
            subset = trials if packs_per_size is None else trials[: size * packs_per_size]
        counts[size] = len(subset)
        started = time.perf_counter()
        results = []
        for start in range(0, len(subset), size):
            results += training.train_pack(subset[start : start + size], data, parameters)
            keras.backend.clear_session()
        rates[size] = len(subset) / (time.perf_counter() - started)
        best[size] = max(r.metrics["val_auc"] for r in results)
    return {"trials_per_s": rates, "best_val_auc": best, "trials": counts, "device": model.device_description()}


def _own_model_project(root: Path, epochs: int) -> Path:
    """A copy of the shipped own-model example: fixed epochs, no callbacks (the plain loop has none)."""
    import yaml

    for part in ("parameters", "sample_lists", "data"):
        shutil.copytree(REPO / part, root / part)
    path = root / "parameters" / "own_model.yaml"
    parameters = yaml.safe_load(path.read_text())
    parameters["hyperparameters"]["epochs"] = [epochs]
    parameters["training"] = {"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False},
                              "checkpoint_interval_s": None}  # fmt: skip
    path.write_text(yaml.safe_dump(parameters))
    return root


def worker_own_plain(root: str, backend: str) -> dict:
    """The own-model example's trials one ``model.fit`` after another: the scaler in front of ``build()``'s model,
    as hhscan builds them, the same data (hhscan's reading and split), Adam at each trial's learning rate."""
    os.environ["KERAS_BACKEND"] = backend
    import keras
    from hhscan.data import metrics
    from hhscan.execution import runner
    from hhscan.execution.scandir import Workspace
    from hhscan.learning import trial
    from hhscan.settings import config, model_function

    parameters = config.load_parameters(Path(root) / "parameters" / "own_model.yaml")
    samples = config.load_sample_list(config.samples_path(parameters))
    data = runner.prepare_dataset(parameters, samples, Workspace(Path(root)))
    (x, y, w), (xv, yv, wv) = data.part(0), data.part(1)
    build = model_function.load_function(parameters.model)
    aucs = []
    for item in trial.expand(parameters):
        hp = item.hyperparameters
        inputs = keras.Input((x.shape[1],))
        scaled = keras.layers.Normalization(mean=x.mean(axis=0), variance=x.var(axis=0))(inputs)
        inner = build(x.shape[1], 1, **model_function.arguments(parameters.model, parameters.model_source, hp))
        net = keras.Model(inputs, inner(scaled))
        net.compile(optimizer=keras.optimizers.Adam(hp["learning_rate"]), loss="binary_crossentropy")
        net.fit(x, y.astype("float32"), sample_weight=w, validation_data=(xv, yv.astype("float32"), wv),
                epochs=hp["epochs"], batch_size=hp["batch_size"], verbose=0)  # fmt: skip
        aucs.append(metrics.weighted_auc(yv, net.predict(xv, batch_size=65536, verbose=0)[:, 0], wv))
        keras.backend.clear_session()
    return {"best_val_auc": max(aucs), "trials": len(aucs), "backend": backend}


WORKERS = {"hhscan": worker_hhscan, "plain": worker_plain, "optuna": worker_optuna}


def _in_process(name: str, *args, module: str = "bench.run") -> dict:
    """Run a worker of ``module`` in a fresh interpreter; it prints its result as JSON on the last line."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); from {module} import *; "
            f"print(json.dumps({name}(*{args!r})))")  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- sections


TALOS_VENV = REPO / "bench" / ".venv-talos"


def _talos_python() -> Path | None:
    """The Talos venv's interpreter, created on first use (Talos 2.0.10 needs pandas<3, hhscan pandas 3)."""
    python = TALOS_VENV / "bin" / "python"
    if not python.exists():
        print("creating bench/.venv-talos (talos 2.0.10, pandas<3, tensorflow-cpu; once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TALOS_VENV)], check=True)
        installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "talos==2.0.10", "pandas<3",
                                    "tensorflow-cpu", "scikit-learn"], capture_output=True, text=True)  # fmt: skip
        if installed.returncode != 0:
            print(f"Talos venv failed: {installed.stderr[-500:]}", flush=True)
            shutil.rmtree(TALOS_VENV, ignore_errors=True)
            return None
    return python


def _talos(root: Path, epochs: int) -> dict:
    python = _talos_python()
    if python is None:
        raise RuntimeError("no Talos venv")
    arrays = root / "arrays.npz"
    _in_process("worker_export", str(root), str(arrays))
    grid = json.dumps({**EXAMPLE_GRID, "epochs": [epochs]})
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run([str(python), str(REPO / "bench" / "talos_scan.py"), str(arrays), grid, str(root)],
                            capture_output=True, text=True, env=env)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"Talos failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def section_scan(quick: bool, talos: bool = True) -> list[str]:
    epochs = 2 if quick else 10
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        for tool, worker, args in (
            ("plain Keras loop (TensorFlow)", "worker_plain", (epochs,)),
            ("Talos 2.0.10 Scan (TensorFlow)", "talos", (epochs,)),
            ("Optuna GridSampler (TensorFlow)", "worker_optuna", (epochs,)),
            ("hhscan run --local", "worker_hhscan", ()),
        ):
            root = _project(Path(directory) / worker, epochs)
            if worker == "talos":
                if talos:
                    rows[tool] = _talos(root, epochs)
                continue
            rows[tool] = _in_process(worker, str(root), *args)
    base = rows["plain Keras loop (TensorFlow)"]["wall_s"]
    lines = [f"### Scan of the shipped example: 8 trials, {epochs} epochs, batch 256 (imports excluded)", "",
             "| tool | backend | wall s | vs plain loop | best val AUC |", "|---|---|---|---|---|"]  # fmt: skip
    for tool, row in rows.items():
        lines.append(f"| {tool} | {row['backend']} | {row['wall_s']:.1f} | {row['wall_s'] / base:.2f} "
                     f"({base / row['wall_s']:.2f}× faster) | {row['best_val_auc']:.4f} |")  # fmt: skip
    lines.append("")
    return lines


def section_kfold(quick: bool) -> list[str]:
    """What k-fold costs: the example grid with 3 fold models per trial (one fused pack) against one model each."""
    epochs = 2 if quick else 10
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        for label, split in (("one model per trial (60/20/20 split)", None),
                             ("3-fold: 3 fold models per trial, one engine per fold", EXAMPLE_KFOLD)):  # fmt: skip
            root = _project(Path(directory) / ("kfold" if split else "ratio"), epochs, split)
            rows[label] = _in_process("worker_hhscan", str(root))
    base = next(iter(rows.values()))["wall_s"]
    lines = [f"### k-fold cost: the example grid (8 trials), {epochs} epochs, batch 256 (imports excluded)", "",
             "Each fold model trains on 1/3 of the events (a 60/20/20 model on 60%): three of them are ≈ 3 × (1/3)/0.6 "
             "= 1.7× the arithmetic of one model, with three engines to compile and dispatch.", "",
             "| scan | wall s | vs one model | best val AUC (k-fold: mean over folds) |",
             "|---|---|---|---|"]  # fmt: skip
    for label, row in rows.items():
        lines.append(f"| {label} | {row['wall_s']:.1f} | {row['wall_s'] / base:.2f}× | {row['best_val_auc']:.4f} |")
    return [*lines, ""]


def _reached(trace: list[dict], target: float) -> dict:
    """Totals of a search's trace (trials in the order they finished), and where its best finished trial's val AUC
    first reached ``target``: trials, epochs spent by then (pruned trials' and a pack's unrecorded ones included),
    wall."""
    best, epochs, reached = float("-inf"), 0, None
    for n, row in enumerate(trace, 1):
        epochs += row["epochs"]
        if row["status"] in ("DONE", "COMPLETE") and row["val_auc"] is not None:
            best = max(best, row["val_auc"])
        if reached is None and best >= target:
            reached = {"trials": n, "epochs": max(epochs, row.get("spent", 0)), "wall_s": row["wall_s"]}
    pruned = sum(row["status"] == "PRUNED" for row in trace)
    return {"trials": len(trace), "pruned": pruned, "epochs": epochs, "wall_s": trace[-1]["wall_s"], "best": best,
            "reached": reached}  # fmt: skip


def section_search(quick: bool) -> list[str]:
    """Adaptive search: hhscan TPE + median pruning against the full grid (hhscan) and a plain Optuna study."""
    epochs = 2 if quick else 8
    n_trials = 8 if quick else 32
    search = {"sampler": "tpe", "trials": n_trials, "pruner": "median", "pruner_settings": SEARCH_PRUNER,
              "seed": SEARCH_SEED}  # fmt: skip
    grid_size = int(np.prod([len(v) for v in SEARCH_SPACE.values()]))
    with tempfile.TemporaryDirectory() as directory:
        grid = _in_process("worker_search_hhscan", str(_project(Path(directory) / "grid", epochs, space=SEARCH_SPACE)))
        adaptive = _in_process("worker_search_hhscan", str(_project(Path(directory) / "tpe", epochs,
                                                                     space=SEARCH_SPACE, search=search)))  # fmt: skip
        root = _project(Path(directory) / "optuna", epochs, space=SEARCH_SPACE)
        plain = _in_process("worker_search_optuna", str(root), epochs, n_trials)
    grid_row = _reached(grid["trace"], float("inf"))
    target = grid_row["best"] - QUALITY
    good = sum(row["status"] == "DONE" and row["val_auc"] >= target for row in grid["trace"])
    # How lucky a first pack of random points is: P(≥ 1 of the grid's `good` points among 16 drawn without return).
    lucky = 1 - math.comb(grid_size - good, 16) / math.comb(grid_size, 16)
    ours, theirs = _reached(adaptive["trace"], target), _reached(plain["trace"], target)
    rows = {f"(a) hhscan full grid ({grid_size} trials, {grid['backend']})": grid_row,
            f"(b) hhscan TPE + median pruner, budget {n_trials} ({adaptive['backend']})": ours,
            f"(c) plain Optuna TPE + MedianPruner, budget {n_trials}, one fit a trial, TensorFlow": theirs}  # fmt: skip
    lines = [f"### Adaptive search: {grid_size}-point space (layers 1–4 × neurons 16–128 × learning rate 3e-4–1e-2), "
             f"{epochs} epochs, batch 256 (imports excluded)", "",
             f"Target quality: the full grid's best val AUC − {QUALITY} = {target:.4f}. Both searches: TPE seed "
             f"{SEARCH_SEED}, MedianPruner({', '.join(f'{k}={v}' for k, v in SEARCH_PRUNER.items())}), the space as "
             "categorical lists; hhscan asks packs (`pack_size: auto`), the plain loop one trial at a time with a "
             "Keras callback reporting val AUC per epoch. Epochs are summed over trials, pruned ones included; to the "
             "target, hhscan's count every epoch its packs trained by then (a pack's records come at its end). "
             f"{good} of the {grid_size} grid points reach the target: 16 points drawn at random hold one with "
             f"probability {lucky:.2f}.", "",
             "| search | trials (pruned) | epochs | wall s | best val AUC | target reached after: trials, epochs, "
             "wall s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, row in rows.items():
        if row is grid_row:
            reached = "(the target's reference)"
        elif row["reached"] is None:
            reached = f"not reached (best {row['best']:.4f})"
        else:
            hit = row["reached"]
            reached = f"{hit['trials']}, {hit['epochs']}, {hit['wall_s']:.1f}"
        lines.append(f"| {label} | {row['trials']} ({row['pruned']}) | {row['epochs']} | {row['wall_s']:.1f} | "
                     f"{row['best']:.4f} | {reached} |")  # fmt: skip
    epochs_target, wall_target = "(b) ≤ 1/3 of the grid's epochs to the target", "(b) ≥ 3× faster wall than (c) to it"
    lines += ["", "| target | measured | |", "|---|---|---|"]
    hit, other = ours["reached"], theirs["reached"]
    if hit is None:
        lines += [f"| {epochs_target} | not reached (best {ours['best']:.4f}) | missed |",
                  f"| {wall_target} | (b) not reached | missed |"]  # fmt: skip
        return [*lines, ""]
    share = hit["epochs"] / grid_row["epochs"]
    lines.append(f"| {epochs_target} | {hit['epochs']} of {grid_row['epochs']} = {share:.2f} | "
                 f"{'met' if share <= 1 / 3 else 'missed'} |")  # fmt: skip
    if other is None:  # (c) never got there: its whole budget is a lower bound of its time to the target
        bound = theirs["wall_s"] / hit["wall_s"]
        lines.append(f"| {wall_target} | (c) not reached in {theirs['trials']} trials (best {theirs['best']:.4f}): "
                     f"≥ {theirs['wall_s']:.1f} s / {hit['wall_s']:.1f} s = {bound:.1f}× | "
                     f"{'met' if bound >= 3 else 'not decided'} |")  # fmt: skip
    else:
        ratio = other["wall_s"] / hit["wall_s"]
        lines.append(f"| {wall_target} | {other['wall_s']:.1f} s / {hit['wall_s']:.1f} s = {ratio:.1f}× | "
                     f"{'met' if ratio >= 3 else 'missed'} |")  # fmt: skip
    return [*lines, ""]


def section_packing(quick: bool) -> list[str]:
    sizes = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32]
    n_trials = 8 if quick else 32
    with tempfile.TemporaryDirectory() as directory:
        root = _project(Path(directory) / "packing", 5)
        row = _in_process("worker_packing", str(root), sizes, n_trials)
    base = row["trials_per_s"]["1"]
    lines = [f"### Pack scaling: the example grid repeated to {n_trials} trials, 5 epochs, on {row['device']}",
             "", "Fresh process, no persistent compilation cache: compilation included, as for a new scan. Pack size 1 "
             "trains the first 8 of the trials (hence its best AUC), the others all of them.", "",
             "| pack size | trials/s | vs pack size 1 | best val AUC |", "|---|---|---|---|"]  # fmt: skip
    for size in sizes:
        rate = row["trials_per_s"][str(size)]
        lines.append(f"| {size} | {rate:.2f} | {rate / base:.1f}× | {row['best_val_auc'][str(size)]:.4f} |")
    return [*lines, ""]


def section_machine(quick: bool) -> list[str]:
    events = 40_000 if quick else 200_000
    row = _in_process("worker_machine", events)
    ceiling = row["ceiling_flops"]
    lines = [f"### Training vs the machine: 20→64×3→1 MLP, batch 512, {events} events ({row['backend']})", "",
             f"MLP-shaped matmul ceiling (65536×64 @ 64×64, numpy, same run): {ceiling / 1e9:.1f} GFLOP/s; "
             f"{row['flop_per_event']} FLOP per trained event (forward + backward).", "",
             "| trainer | trained events/s | GFLOP/s | fraction of the ceiling |", "|---|---|---|---|"]  # fmt: skip
    for label, rate in row["events_per_s"].items():
        achieved = rate * row["flop_per_event"]
        lines.append(f"| {label} | {rate:,.0f} | {achieved / 1e9:.1f} | **{achieved / ceiling:.2f}** |")
    return [*lines, ""]


def section_data(quick: bool) -> list[str]:
    import uproot
    import yaml
    from hhscan.data import dataset
    from hhscan.settings import config

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
                        "era": "bench", "xsec": 1.0, "event_weight_sum": 1.0}],
            "eras": {"bench": {"lumi": 1.0}},  # a sample with a cross-section needs its era's luminosity
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


def section_nanoaod(quick: bool) -> list[str]:
    """Reading NanoAOD-like jagged branches into training arrays against raw uproot ``arrays()`` of them."""
    import uproot
    import yaml
    from hhscan.data import dataset
    from hhscan.settings import config

    sys.path.insert(0, str(REPO))
    from bench.nanoaod import JAGGED_BRANCHES, write_nanoaod

    n = 100_000 if quick else 1_000_000
    # Ten inputs, one per jagged branch: indices, Alt$, reductions and a conditional one, as an analysis writes them.
    inputs = ["Alt$(Jet_pt[0], 0)", "Alt$(Jet_eta[0], -9)", "Max$(Jet_phi)", "Sum$(Jet_mass)",
              "Sum$(Jet_btagDeepFlavB > 0.5)", "Alt$(Muon_pt[0], 0)", "MaxIf$(Muon_eta, Muon_pt > 10)",
              "Sum$(Electron_pt)", "Alt$(Electron_eta[0], -9)", "Min$(Electron_phi)"]  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        write_nanoaod(root / "nano.root", n, seed=3)
        (root / "s.yaml").write_text(yaml.safe_dump({
            "classes": ["background", "signal"],
            "groups": [{"name": "sig", "files": "nano.root", "tree": "Events", "class": "signal"},
                       {"name": "bkg", "files": "nano.root", "tree": "Events", "class": "background",
                        "xsec": 1.0, "event_weight_sum": 1.0}],
            "inputs": [{"name": f"in{i}", "expr": text} for i, text in enumerate(inputs)],
            "weight": "genWeight",
        }))  # fmt: skip
        samples = config.load_sample_list(root / "s.yaml")
        settings = config.SplitSettings(name="bench")

        def raw():
            with uproot.open(root / "nano.root") as handle:
                handle["Events"].arrays(filter_name=[*JAGGED_BRANCHES, "genWeight"], library="ak")

        raw()  # page cache warm for both
        raw_s = _best_of(3, lambda: [raw(), raw()])
        build_s = _best_of(3, lambda: dataset.load_dataset(samples, settings, root / f"splits{time.time_ns()}"))
        size = (root / "nano.root").stat().st_size
    return [f"### NanoAOD-like jagged inputs: {n:,} events, 10 jagged branches (≈ 3 jets, 0.8 muons, 0.7 electrons "
            f"an event; {size / 1e6:.0f} MB), two samples from one ROOT file", "",
            "| step | s | ratio | baseline |", "|---|---|---|---|",
            f"| ROOT → training arrays (10 jagged inputs: Alt$, Sum$, Max$, MaxIf$ …; weights, split) | "
            f"{build_s:.2f} | {build_s / raw_s:.2f} | raw uproot arrays() of the same 11 branches (awkward), twice "
            f"({raw_s:.2f} s) |",
            ""]  # fmt: skip


def section_bookkeeping(quick: bool) -> list[str]:
    from hhscan.execution.scandir import ScanDirectory, Workspace
    from hhscan.learning import records
    from hhscan.results.report import make_report

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


def section_own_model(quick: bool) -> list[str]:
    """Issue 20's item 9: the own-model example (residual blocks × width, 4 trials) trained by hhscan (one pack)
    against a plain loop of ``model.fit`` of the same models, each a whole process: start, imports, data, training."""
    epochs = 3 if quick else 10
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        for backend in ("jax", "tensorflow"):
            root = _own_model_project(Path(directory) / f"plain_{backend}", epochs)
            started = time.perf_counter()
            result = _in_process("worker_own_plain", str(root), backend)
            rows[f"plain Keras fit loop ({backend})"] = {**result, "wall_s": time.perf_counter() - started}
        root = _own_model_project(Path(directory) / "hhscan", epochs)
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hhscan.cli", "run", "--local", "-p", "parameters/own_model.yaml",
                        "--name", "bench"], cwd=root, env=env, check=True, capture_output=True)  # fmt: skip
        wall = time.perf_counter() - started
        from hhscan.execution.scandir import Workspace

        records, _ = Workspace(root).scan("bench").records()
        rows["hhscan run --local (one pack, jax)"] = {
            "wall_s": wall, "best_val_auc": max(r.metrics["val_auc"] for r in records.values()), "trials": len(records)}
    base = rows["plain Keras fit loop (jax)"]["wall_s"]
    lines = [f"### Own model: the shipped residual example (blocks × width, 4 trials), {epochs} epochs, batch 256 "
             f"(whole processes: start, imports, data, training)", "",
             "| run | wall s | vs plain loop (jax) | best val AUC |", "|---|---|---|---|"]  # fmt: skip
    for label, row in rows.items():
        lines.append(f"| {label} | {row['wall_s']:.1f} | {row['wall_s'] / base:.2f} | {row['best_val_auc']:.4f} |")
    return [*lines, ""]


def _best_of(repeats: int, function) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


SECTIONS = {"scan": section_scan, "kfold": section_kfold, "search": section_search, "packing": section_packing,
            "machine": section_machine, "grid64": section_grid64, "data": section_data, "nanoaod": section_nanoaod,
            "own_model": section_own_model, "bookkeeping": section_bookkeeping}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--output", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--no-talos", action="store_true", help="skip Talos (its venv needs the package index)")
    arguments = parser.parse_args()
    stamp = f"measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs{', quick sizes' if arguments.quick else ''}"
    for name in arguments.only.split(","):
        if name == "scan":
            section = section_scan(arguments.quick, talos=not arguments.no_talos)
        else:
            section = SECTIONS[name](arguments.quick)
        section[0] += f" — {stamp}"
        print("\n".join(section), flush=True)
        # Written as soon as measured, replacing this section alone: a partial or killed run keeps the others.
        results_file.write_section(Path(arguments.output), name, "\n".join(section), before=results_file.TARGETS)


if __name__ == "__main__":
    main()
