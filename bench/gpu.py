"""The GPU benchmark, one command: what a GPU user runs to measure hhscan's packing on their GPU.

    pip install -e ".[cuda]" && python bench/gpu.py     # full sizes (≈5 min on one H200); writes bench/RESULTS.md
    python bench/gpu.py --baselines jax,torch           # which plain Keras fit loops to compare with (default: all
                                                        # of jax, torch, tensorflow importable here)
    python bench/gpu.py --tiny --output /tmp/R.md       # tiny sizes, runs on a CPU (the test suite runs it)

Sections, every figure a ratio against a baseline measured in the same run on the same device, each written to
RESULTS.md as soon as it is measured (a killed run keeps what it had; other sections are left as they are):
- pack scaling: trials/s of the example grid repeated, in packs of K = 1 … 256, against K = 1;
- the example scan: ``hhscan run --local`` against a plain Keras ``fit`` loop per baseline backend (TensorFlow's
  CPU build cannot share a venv with JAX's CUDA build: give it its own venv, or leave it out);
- training against the device: trained events/s × FLOP per event against a jitted matmul of the MLP's shape;
- memory: the largest pack K that trains and validates with 1M validation events (doubling to out-of-memory).
Each measurement runs in a fresh process (a Keras backend is per process); times exclude imports. ``--tiny``
runs the JAX measurements in its own process (seconds, not minutes: a smoke check of the code, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import results_file  # noqa: E402
from bench import run as bench_run  # noqa: E402  (the CPU benchmark's project copy, data and plain loop)

# Sized to finish in about 5 minutes on one H200 (the first GPU run measured 3.3 s a trial at K = 1, 13 trials/s at
# K = 256): K trains at most 2 packs of K trials (8 trials at K = 1), the largest-pack sweep stops after 90 s.
FULL = {"sizes": [1, 4, 16, 64, 256], "trials": 256, "packs_per_size": 2, "epochs": 5, "scan_epochs": 10,
        "grid": bench_run.EXAMPLE_GRID, "mlp": (30, 256, 3), "batch": 1024, "events": 1_000_000,
        "machine_packs": [1, 16, 64], "validation": 1_000_000, "largest": 1024, "largest_budget_s": 90}  # fmt: skip
TINY = {"sizes": [1, 2], "trials": 2, "epochs": 1, "scan_epochs": 1, "split": [0.1, 0.05, 0.85],
        "grid": {**bench_run.EXAMPLE_GRID, "layers": [1], "neurons": [8], "learning_rate": [0.003]},
        "mlp": (8, 16, 2), "batch": 256, "events": 4096, "machine_packs": [1, 2], "validation": 3000,
        "largest": 2, "largest_budget_s": 60}  # fmt: skip


def _project(root: Path, sizes: dict, epochs: int) -> Path:
    import yaml

    bench_run._project(root, epochs)
    path = root / "parameters" / "scan.yaml"
    parameters = yaml.safe_load(path.read_text())
    parameters["hyperparameters"] = {**sizes["grid"], "epochs": [epochs]}
    if "split" in sizes:  # fewer events: a smoke check
        parameters["split"].update(zip(("train", "validation", "test"), sizes["split"], strict=True))
    path.write_text(yaml.safe_dump(parameters))
    return root


# ----------------------------------------------------------------------------------------------------- workers


def worker_plain(root: str, backend: str) -> dict:
    """The project's grid, one ``model.fit`` per trial: what a scan without hhscan does."""
    os.environ["KERAS_BACKEND"] = backend
    import keras

    _, _, data = bench_run._dataset(Path(root))
    x, y, w = data.part(0)
    xv, yv, wv = data.part(1)
    grid = [dict(zip(bench_run.EXAMPLE_GRID, v, strict=True)) for v in _product(_grid_of(root))]
    started = time.perf_counter()
    aucs = [bench_run._plain_fit(keras, hp, x, y.astype("float32"), w, xv, yv.astype("float32"), wv) for hp in grid]
    return {"wall_s": time.perf_counter() - started, "best_val_auc": max(aucs), "backend": backend,
            "trials": len(grid)}  # fmt: skip


def _grid_of(root: str) -> dict:
    import yaml

    grid = yaml.safe_load((Path(root) / "parameters" / "scan.yaml").read_text())["hyperparameters"]
    return {key: grid[key] for key in bench_run.EXAMPLE_GRID}


def _product(grid: dict) -> list[tuple]:
    import itertools

    return list(itertools.product(*grid.values()))


def worker_machine(mlp: tuple[int, int, int], batch: int, events: int, packs: list[int]) -> dict:
    """Fused training's events/s against a jitted matmul of the MLP's hidden shape, on the default device."""
    from hhscan.learning import fused, model, training

    model.choose_backend("jax")
    import jax
    import jax.numpy as jnp
    import keras

    model.keep_tensorflow_out()
    inputs, neurons, layers = mlp
    rng = np.random.default_rng(0)
    x = rng.normal(size=(events, inputs)).astype("float32")
    y = (x[:, 0] + rng.normal(size=events) > 0).astype("float32").reshape(-1, 1)
    w = np.ones(events, dtype="float32")
    hp = {"layers": layers, "neurons": neurons, "activation": "relu", "dropout": 0.0, "l2": 0.0, "optimizer": "adam",
          "learning_rate": 1e-3}  # fmt: skip
    table, counts = fused.batch_table(training.epoch_order(events, 0, 0), batch)
    rates = {}
    for size in packs:
        nets = [model.build_model(hp, inputs, 2, x.mean(0), x.var(0)) for _ in range(size)]
        for net in nets:
            model.compile_model(net, hp, 2)
            net.optimizer.build(net.trainable_variables)
        engine = fused.make_engine(nets, [n.optimizer for n in nets], "binary_crossentropy", (x, y, w),
                                   (x[:1000], y[:1000], w[:1000]))  # fmt: skip
        active = np.ones(size, bool)
        engine.train_epoch(table, counts, active)  # compilation
        started = time.perf_counter()
        engine.train_epoch(table, counts, active)
        rates[size] = size * events / (time.perf_counter() - started)
        del engine
        keras.backend.clear_session()
    matmul = jax.jit(lambda a, b: a @ b)
    a = jnp.asarray(rng.normal(size=(65536, neurons)).astype("float32"))
    b = jnp.asarray(rng.normal(size=(neurons, neurons)).astype("float32"))
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            out = matmul(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - started) / 20)
    ceiling = 2 * 65536 * neurons * neurons / best
    # Forward + backward ≈ 3 × 2 × (multiply-adds of every layer) FLOP per event.
    flop_per_event = 3 * 2 * (inputs * neurons + (layers - 1) * neurons * neurons + neurons)
    return {"events_per_s": rates, "ceiling_flops": ceiling, "flop_per_event": flop_per_event,
            "device": model.device_description()}  # fmt: skip


def worker_largest(mlp: tuple[int, int, int], validation: int, largest: int, budget_s: float = float("inf")) -> dict:
    """Double K until the pack does not train and validate any more (the backend's out-of-memory error)."""
    from hhscan.learning import fused, model, training

    model.choose_backend("jax")
    import keras

    model.keep_tensorflow_out()
    inputs, neurons, layers = mlp
    rng = np.random.default_rng(1)
    n_train = 65536 if validation >= 100_000 else 2048
    x = rng.normal(size=(n_train + validation, inputs)).astype("float32")
    y = (x[:, 0] > 0).astype("float32").reshape(-1, 1)
    w = np.ones(len(x), dtype="float32")
    train, valid = (x[:n_train], y[:n_train], w[:n_train]), (x[n_train:], y[n_train:], w[n_train:])
    hp = {"layers": layers, "neurons": neurons, "activation": "relu", "dropout": 0.0, "l2": 0.0, "optimizer": "adam",
          "learning_rate": 1e-3}  # fmt: skip
    table, counts = fused.batch_table(training.epoch_order(n_train, 0, 0), 1024)
    fitted, stopped, seconds, chunk = 0, None, {}, None
    size, began = 1, time.perf_counter()
    while size <= largest and time.perf_counter() - began < budget_s:
        engine = None
        try:
            nets = [model.build_model(hp, inputs, 2, x.mean(0), x.var(0)) for _ in range(size)]
            for net in nets:
                model.compile_model(net, hp, 2)
                net.optimizer.build(net.trainable_variables)
            engine = fused.make_engine(nets, [n.optimizer for n in nets], "binary_crossentropy", train, valid)
            engine.train_epoch(table, counts, np.ones(size, bool))
            started = time.perf_counter()
            engine.validate()
            seconds[size] = time.perf_counter() - started
            chunk = engine.chunk
        except fused.out_of_memory_errors() as error:
            if not fused.is_out_of_memory(error):
                raise
            stopped = size
            break
        finally:
            del engine
            keras.backend.clear_session()
        fitted = size
        size *= 2
    return {"largest": fitted, "out_of_memory_at": stopped, "validate_s": seconds, "chunk": chunk,
            "seconds": time.perf_counter() - began, "stopped_for_time": stopped is None and size <= largest,
            "device": model.device_description()}  # fmt: skip


def _in_process(name: str, *args) -> dict:
    return bench_run._in_process(name, *args, module="bench.gpu")


def _run(name: str, *args, fresh: bool = True) -> dict:
    """A worker of this file or of bench/run.py, in a fresh process or (``fresh=False``, JAX only) in this one."""
    if fresh:
        return (_in_process if name in globals() else bench_run._in_process)(name, *args)
    worker = globals().get(name) or getattr(bench_run, name)
    return json.loads(json.dumps(worker(*args)))  # as from a process: keys as strings


# ---------------------------------------------------------------------------------------------------- sections


BACKENDS = ("jax", "torch", "tensorflow")  # the plain Keras fit loop's baselines, in this order


def available_backends() -> list[str]:
    """The Keras backends importable in this venv (TensorFlow's CPU build cannot share a venv with JAX's CUDA one)."""
    import importlib.util

    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def _tool(backend: str) -> str:
    return f"plain Keras loop ({ {'jax': 'JAX', 'torch': 'torch', 'tensorflow': 'TensorFlow'}[backend] })"


def measure_packing(sizes: dict, directory: Path, fresh: bool) -> dict:
    root = _project(directory / "packing", sizes, sizes["epochs"])
    return _run("worker_packing", str(root), sizes["sizes"], sizes["trials"], sizes.get("packs_per_size"),
                fresh=fresh)  # fmt: skip


def measure_scan(sizes: dict, directory: Path, fresh: bool, baselines: list[str]) -> dict:
    rows = {}
    for tool, worker, args in (*((_tool(b), "worker_plain", (b,)) for b in baselines),
                               ("hhscan run --local", "worker_hhscan", ())):  # fmt: skip
        project = _project(directory / f"scan-{len(rows)}", sizes, sizes["scan_epochs"])
        # A Keras backend is per process: every baseline but JAX always runs in a fresh one.
        rows[tool] = _run(worker, str(project), *args, fresh=fresh or args not in ((), ("jax",)))
    return rows


def render_packing(packing: dict, sizes: dict, tiny: bool) -> list[str]:
    base = packing["trials_per_s"]["1"]
    lines = [f"## GPU: measured {time.strftime('%Y-%m-%d')} on {packing['device']}", "",
             f"`python bench/gpu.py{' --tiny' if tiny else ''}`; each section is written as soon as it is measured.",
             "", f"### Pack scaling: the example grid repeated, {sizes['epochs']} epochs, compilation included", "",
             "Pack size K trains the first max(8, K × packs) trials of the grid repeated to "
             f"{sizes['trials']} (packs = {sizes.get('packs_per_size') or 'all'}).", "",
             "| pack size K | trials | trials/s | vs K = 1 | best val AUC |", "|---|---|---|---|---|"]  # fmt: skip
    for size in sizes["sizes"]:
        rate = packing["trials_per_s"][str(size)]
        lines.append(f"| {size} | {packing['trials'][str(size)]} | {rate:.2f} | {rate / base:.1f}× | "
                     f"{packing['best_val_auc'][str(size)]:.4f} |")  # fmt: skip
    return lines


def render_scan(scan: dict, sizes: dict) -> list[str]:
    hhscan = scan["hhscan run --local"]["wall_s"]
    lines = [f"### The example scan: {sizes['scan_epochs']} epochs, imports excluded", "",
             "| tool | backend | wall s | hhscan faster by | best val AUC |", "|---|---|---|---|---|"]  # fmt: skip
    for tool, row in scan.items():
        lines.append(f"| {tool} | {row['backend']} | {row['wall_s']:.1f} | {row['wall_s'] / hhscan:.2f}× | "
                     f"{row['best_val_auc']:.4f} |")  # fmt: skip
    return lines


def render_machine(machine: dict, sizes: dict) -> list[str]:
    inputs, neurons, layers = sizes["mlp"]
    ceiling = machine["ceiling_flops"]
    lines = [f"### Training against the device: {inputs}→{neurons}×{layers}→1 MLP, batch {sizes['batch']}, "
             f"{sizes['events']:,} events", "",
             f"Jitted matmul ceiling (65536×{neurons} @ {neurons}×{neurons}) {ceiling / 1e9:.1f} GFLOP/s, "
             f"{machine['flop_per_event']} FLOP per trained event.", "",
             "| pack size K | trained events/s (events × K) | GFLOP/s | fraction of the ceiling |",
             "|---|---|---|---|"]  # fmt: skip
    for size, rate in machine["events_per_s"].items():
        achieved = rate * machine["flop_per_event"]
        lines.append(f"| {size} | {rate:,.0f} | {achieved / 1e9:.1f} | **{achieved / ceiling:.2f}** |")
    return lines


def render_largest(largest: dict, sizes: dict) -> list[str]:
    inputs, neurons, layers = sizes["mlp"]
    if largest["out_of_memory_at"]:
        stop = f"out of memory at K = {largest['out_of_memory_at']}"
    elif largest.get("stopped_for_time"):
        stop = f"the sweep stopped after {largest['seconds']:.0f} s, its time budget"
    else:
        stop = f"no out-of-memory up to K = {sizes['largest']}, the sweep's end"
    return ["### Largest pack", "",
            f"With {sizes['validation']:,} validation events ({inputs}→{neurons}×{layers}→1, validation in chunks of "
            f"{largest['chunk']:,} events): K = {largest['largest']} ({stop}); validation of that pack "
            f"{largest['validate_s'][str(largest['largest'])]:.2f} s."]  # fmt: skip


def render_targets(results: dict, baselines: list[str]) -> list[str]:
    """The issue's targets against whatever has been measured so far."""
    lines = ["### Against the GPU targets", "", "| target | measured | |", "|---|---|---|"]
    rows = []
    if "packing" in results:
        per_size = results["packing"]["trials_per_s"]
        rate = {int(k): v / per_size["1"] for k, v in per_size.items()}
        rows += [("trials/s at K = 16 ≥ 10× K = 1", rate.get(16), 10),
                 ("trials/s at K = 256 ≥ 60× K = 1", rate.get(256), 60)]  # fmt: skip
    if "scan" in results:
        hhscan = results["scan"]["hhscan run --local"]["wall_s"]
        rows += [(f"example scan ≥ 10× the {_tool(b)}", results["scan"][_tool(b)]["wall_s"] / hhscan, 10)
                 for b in baselines]  # fmt: skip
    if "machine" in results:
        machine = results["machine"]
        one = machine["events_per_s"].get("1")
        fraction = None if one is None else one * machine["flop_per_event"] / machine["ceiling_flops"]
        rows.append(("K = 1 ≥ 25% of the matmul ceiling", fraction, 0.25))
    for label, value, goal in rows:
        if value is None:
            lines.append(f"| {label} | not measured at these sizes | |")
        else:
            shown = f"{value:.0%}" if goal < 1 else f"{value:.1f}×"
            lines.append(f"| {label} | {shown} | {'met' if value >= goal else 'not met'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes (seconds)")
    parser.add_argument("--output", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--json", help="also write the raw figures here (after every section)")
    parser.add_argument("--baselines", default="auto",
                        help=f"plain Keras fit loops to compare with, of {', '.join(BACKENDS)}; 'auto': those "
                             "importable here; 'none': hhscan alone")  # fmt: skip
    arguments = parser.parse_args()
    if arguments.baselines == "auto":
        baselines = available_backends()
    elif arguments.baselines == "none":
        baselines = []
    else:
        baselines = arguments.baselines.split(",")
        unknown = [b for b in baselines if b not in BACKENDS]
        missing = [b for b in baselines if b in BACKENDS and b not in available_backends()]
        if unknown or missing:
            sys.exit(f"--baselines: {', '.join(unknown)} not one of {', '.join(BACKENDS)}" if unknown
                     else f"--baselines: {', '.join(missing)} not importable in this venv")  # fmt: skip
    sizes, fresh, output = (TINY if arguments.tiny else FULL), not arguments.tiny, Path(arguments.output)
    results: dict = {}

    def record(key: str, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        results_file.write_section(output, f"gpu-{key}", text)
        results_file.write_section(output, "gpu-targets", "\n".join(render_targets(results, baselines)) + "\n")
        if arguments.json:
            Path(arguments.json).write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory() as directory:
        # Inside the directory throughout: in this process, JAX's compilation cache may point into it.
        results["packing"] = measure_packing(sizes, Path(directory), fresh)
        record("packing", render_packing(results["packing"], sizes, arguments.tiny))
        results["scan"] = measure_scan(sizes, Path(directory), fresh, baselines)
        record("scan", render_scan(results["scan"], sizes))
        results["machine"] = _run("worker_machine", sizes["mlp"], sizes["batch"], sizes["events"],
                                  sizes["machine_packs"], fresh=fresh)  # fmt: skip
        record("machine", render_machine(results["machine"], sizes))
        results["largest"] = _run("worker_largest", sizes["mlp"], sizes["validation"], sizes["largest"],
                                  sizes["largest_budget_s"], fresh=fresh)  # fmt: skip
        record("largest", render_largest(results["largest"], sizes))


if __name__ == "__main__":
    main()
