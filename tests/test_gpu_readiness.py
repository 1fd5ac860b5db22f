"""Ready for a GPU cluster, checked on the CPU: device check, bounded validation memory, the pack-size probe's
errors and cache, branches spread over several devices, data placed once, the GPU benchmark's single command."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_tensorflow, run_cli
from hhscan.data.split import TRAIN, VALIDATION
from hhscan.errors import DeviceError
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import fused, model, records, training, trial
from hhscan.settings import config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # bench/ is the repository's, not an installed package
pytestmark = pytest.mark.gpu  # `pytest -m gpu` on a GPU machine: these checks are what a GPU changes
GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", model.ALLOW_CPU)


@pytest.fixture
def no_gpu_allocation(monkeypatch):
    for name in GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------------------------------ device check


@pytest.mark.parametrize(
    ("variable", "value"), [("SLURM_JOB_GPUS", "0"), ("SLURM_STEP_GPUS", "1,2"), ("CUDA_VISIBLE_DEVICES", "0")]
)
def test_a_gpu_allocation_with_a_cpu_backend_fails_at_once_in_one_line(analysis, no_gpu_allocation, capsys,
                                                                      variable, value):  # fmt: skip
    no_gpu_allocation.setenv(variable, value)
    code, _out, err = run_cli(["run", "--local", "--name", "gpu"], analysis.root, capsys, no_gpu_allocation)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hhscan: error: this job was given GPUs") and f"{variable}={value}" in lines[0]
    assert "but the jax backend sees none, only cpu:" in lines[0] and "pip install 'hhscan[cuda]'" in lines[0]
    # Nothing trained: no record, no model.
    scan = Workspace(analysis.root).scan("gpu")
    assert not scan.output_dir.exists() or not any(scan.output_dir.iterdir())


def test_gpus_per_node_counts_inside_a_slurm_job_only(no_gpu_allocation):
    resources = {"timeout_min": 5, "gpus_per_node": 2}
    assert model.gpu_allocation(resources) is None  # a local run of a scan configured for Slurm GPUs
    assert model.check_device(resources).startswith("cpu:")
    no_gpu_allocation.setenv("SLURM_JOB_ID", "17")
    assert model.gpu_allocation(resources) == "slurm.resources.gpus_per_node=2"
    assert model.gpu_allocation({"slurm_gres": "gpu:a100:1"}) == "slurm.resources.slurm_gres=gpu:a100:1"
    assert model.gpu_allocation({"gpus_per_node": 0}) is None
    with pytest.raises(DeviceError, match=r"given GPUs \(slurm.resources.gpus_per_node=2\)"):
        model.check_device(resources)
    no_gpu_allocation.setenv(model.ALLOW_CPU, "1")  # on purpose: train on the CPU anyway
    assert model.check_device(resources) == model.device_description()


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_cuda_visible_devices_that_name_no_gpu_are_no_allocation(no_gpu_allocation, value):
    no_gpu_allocation.setenv("CUDA_VISIBLE_DEVICES", value)
    assert model.gpu_allocation() is None


def test_the_cli_process_fails_in_one_line_too(analysis, no_gpu_allocation):
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "hhscan.cli", "run", "--local", "--name", "gpu"],
                            cwd=analysis.root, env={**env, "SLURM_JOB_GPUS": "0"}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "hhscan: error: this job was given GPUs (SLURM_JOB_GPUS=0)" in result.stderr


def test_records_say_which_device_trained_them(analysis, no_gpu_allocation, capsys):
    analysis.edit_parameters(hyperparameters={"epochs": [1], "learning_rate": [0.01]})
    code, _, err = run_cli(["run", "--local", "--name", "dev"], analysis.root, capsys, no_gpu_allocation)
    assert code == 0, err
    found, _ = records.read_records(Workspace(analysis.root).scan("dev").output_dir)
    import jax

    expected = f"cpu:{len(os.sched_getaffinity(0))}" if jax.devices()[0].platform == "cpu" else None
    assert {r.device for r in found.values()} == {expected}


# ------------------------------------------------------------------------------------------ memory, data, devices


def _dataset(analysis):
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    return parameters, runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))


def _mixed_trials(parameters):
    """Two structures (groups of 3 and 1: an L2 factor is a value its branch holds); L2 is counted once per branch."""
    base = trial.expand(parameters)[0].hyperparameters
    grid = [{**base, "layers": 2, "neurons": 8, "learning_rate": lr, "l2": l2}
            for lr, l2 in ((0.01, 0.0), (0.003, 1e-3), (0.001, 0.0))] + [{**base, "layers": 1, "neurons": 4}]  # fmt: skip
    return [trial.Trial(trial.trial_id(hp, 0), hp, 0) for hp in grid]


def _engine(analysis, chunk=None, owner=None):
    """A pack of the mixed trials; with ``owner``, its data from that dataset, placed through the job's cache."""
    model.choose_backend("auto")
    parameters, data = _dataset(analysis)
    data = owner or data
    trials = _mixed_trials(parameters)
    nets, engine = training._build_pack(trials, parameters, 2, data.part(TRAIN), data.part(VALIDATION), owner, chunk)
    return data, nets, engine


def predict_rtol() -> float:
    """How far two programs computing one score in float32 may differ: 1e-4 on a CPU; 1e-3 on a GPU, whose default
    matmul precision is TF32 (10-bit mantissa), with another reduction order (the first H200 run saw 1.09e-4)."""
    import jax

    return 1e-4 if jax.default_backend() == "cpu" else 1e-3


def test_chunked_validation_equals_one_call_over_all_events(analysis):
    data, nets, whole = _engine(analysis, chunk=10**6)
    _, _, chunked = _engine(analysis, chunk=37)
    n = len(data.part(VALIDATION)[0])
    assert whole.chunk == n and chunked.chunk == 37 and n % 37 != 0
    table, counts = fused.batch_table(training.epoch_order(len(data.part(TRAIN)[0]), 1, 0), 64)
    for engine in (whole, chunked):
        engine.train_epoch(table, counts, np.ones(4, bool))
    loss, scores = whole.validate()
    chunked_loss, chunked_scores = chunked.validate()
    np.testing.assert_allclose(chunked_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(chunked_scores, scores, rtol=1e-5, atol=1e-7)
    # Against Keras itself: the trained weights in plain models, their predictions and the loss by hand.
    whole.sync_to_models()
    _, y, w = data.part(VALIDATION)
    x = data.part(VALIDATION)[0]
    for k, net in enumerate(nets):
        p = np.clip(np.asarray(net.predict(x, verbose=0))[:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
        np.testing.assert_allclose(chunked_scores[k, :, 0], p, rtol=predict_rtol(), atol=1e-6)
        by_hand = -np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / n
        # L2 on the hidden layers' kernels of branch 1 (the output layer has none).
        by_hand += sum(1e-3 * float(np.sum(np.square(layer.kernel.numpy()))) for layer in net.layers
                       if getattr(layer, "kernel_regularizer", None) is not None)  # fmt: skip
        np.testing.assert_allclose(chunked_loss[k], by_hand, rtol=predict_rtol())


CHUNKED_TF = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from pathlib import Path
from hhscan.learning import fused, model, training
model.choose_backend("tensorflow")
import test_gpu_readiness as t
from conftest import Analysis
root = Path({root!r})
analysis = Analysis(root, root / "parameters" / "scan.yaml", root / "sample_lists" / "analysis.yaml", root / "data")
results = []
for chunk in (10**6, 37):
    data, nets, engine = t._engine(analysis, chunk=chunk)
    table, counts = fused.batch_table(training.epoch_order(len(data.part(0)[0]), 1, 0), 64)
    engine.train_epoch(table, counts, np.ones(4, bool))
    loss, scores = engine.validate()
    results.append({{"chunk": engine.chunk, "loss": loss.tolist(), "scores": scores.tolist()}})
print(json.dumps(results))
"""


@needs_tensorflow
def test_chunked_validation_equals_one_call_on_tensorflow(analysis):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    code = CHUNKED_TF.format(tests=str(HERE), root=str(analysis.root))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE)
    assert result.returncode == 0, result.stderr[-3000:]
    whole, chunked = json.loads(result.stdout.strip().splitlines()[-1])
    assert chunked["chunk"] == 37 and whole["chunk"] == len(whole["scores"][0]) and whole["chunk"] % 37 != 0
    np.testing.assert_allclose(chunked["loss"], whole["loss"], rtol=1e-5)
    np.testing.assert_allclose(chunked["scores"], whole["scores"], rtol=1e-5, atol=1e-7)


def test_chunk_size_follows_the_memory_budget():
    class Net:  # the only thing sizing looks at: the layers' widths (one bias each)
        def __init__(self):
            self.trainable_variables = [np.zeros((10, 256)), np.zeros(256), np.zeros((256, 256)), np.zeros(256)]

    per_event = 4 * fused.TEMPORARIES_PER_ACTIVATION * (10 + 512)
    assert fused.chunk_events([Net()], 10, budget=2**30) == (2**30 // per_event) // 1024 * 1024
    assert fused.chunk_events([Net()] * 16, 10, budget=2**30) == (2**30 // (16 * per_event)) // 1024 * 1024
    assert fused.chunk_events([Net()] * 4096, 10, budget=2**20) == fused.MIN_CHUNK  # never below one block
    assert fused.chunk_starts(100, 37) == [(0, 0), (37, 37), (63, 74)]  # the last chunk ends at N, masked


def test_two_packs_in_one_process_share_the_data_on_the_device(analysis):
    _, data = _dataset(analysis)
    _, _, first = _engine(analysis, owner=data)
    _, _, second = _engine(analysis, owner=data)
    for a, b in zip(first.train_arrays + first.validation_arrays, second.train_arrays + second.validation_arrays,
                    strict=True):  # fmt: skip
        assert a is b
        assert [s.data.unsafe_buffer_pointer() for s in a.addressable_shards] == [
            s.data.unsafe_buffer_pointer() for s in b.addressable_shards
        ]
    _, other = _dataset(analysis)  # another dataset object (equal content): its own copy, the first released
    _, _, third = _engine(analysis, owner=other)
    assert third.train_arrays[0] is not first.train_arrays[0]
    assert all(held is other for held, _ in fused._RESIDENT.values())
    np.testing.assert_array_equal(np.asarray(third.train_arrays[0]), np.asarray(first.train_arrays[0]))


SPREAD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from pathlib import Path
from hhscan.learning import model, training
model.choose_backend("jax")
import jax
import test_gpu_readiness as t
from conftest import Analysis
root = Path({root!r})
analysis = Analysis(root, root / "parameters" / "scan.yaml", root / "sample_lists" / "analysis.yaml", root / "data")
parameters, data = t._dataset(analysis)
trials = t._mixed_trials(parameters)
_, engine = training._build_pack(trials, parameters, 2, data.part(0), data.part(1))
spread = [len(s[0][0].sharding.device_set) for s in engine.state]
results = training.train_pack(trials, data, parameters)
print(json.dumps({{"devices": len(jax.devices()), "spread": spread, "groups": [len(g) for g in engine.groups],
                  "history": [r.history for r in results],
                  "weights": [[w.tolist() for w in r.model.get_weights()] for r in results]}}))
"""


def test_odd_packs_spread_over_several_devices_with_the_results_of_one(analysis):
    analysis.edit_parameters(hyperparameters={"epochs": [2]})
    outputs = []
    for count in (1, 4):
        env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        code = SPREAD.format(tests=str(HERE), root=str(analysis.root))
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    one, four = outputs
    assert one["groups"] == four["groups"] == [3, 1]
    assert one["devices"] == 1 and one["spread"] == [1, 1]
    assert four["devices"] == 4 and four["spread"] == [4, 4]  # groups of 3 and 1, each padded to 4
    for a, b in zip(one["history"], four["history"], strict=True):
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    for a, b in zip(one["weights"], four["weights"], strict=True):
        for wa, wb in zip(a, b, strict=True):
            np.testing.assert_allclose(wb, wa, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- pack-size probe


def _probe_setup(analysis, monkeypatch, fail_at: int, error):
    """The probe with the pack of ``fail_at`` trials failing as the engine fails: ``error()`` is called there."""
    analysis.edit_parameters(hyperparameters={"epochs": [1]})
    model.choose_backend("jax")
    parameters, data = _dataset(analysis)
    build, sizes = training._build_pack, []

    def build_or_fail(trials, *args, **kwargs):
        sizes.append(len(trials))
        if len(trials) >= fail_at:
            error()
        return build(trials, *args, **kwargs)

    monkeypatch.setattr(training, "_build_pack", build_or_fail)
    return parameters, data, sizes


def _allocate_too_much():
    import jax.numpy as jnp

    jnp.zeros(2**44, jnp.float32).block_until_ready()  # 64 TiB: XLA's own RESOURCE_EXHAUSTED


def test_out_of_memory_stops_the_doubling_and_the_answer_is_kept(analysis, monkeypatch):
    parameters, data, sizes = _probe_setup(analysis, monkeypatch, 2, _allocate_too_much)
    first = trial.expand(parameters)[0]
    cache = analysis.root / "pack_size.json"
    assert training.probed_pack_size(first, data, parameters, cache) == 1
    assert sizes == [1, 2]  # no doubling past the size that did not fit
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["out_of_memory_at"] == 2 and list(entry["seconds_per_trial"]) == ["1"]


def _not_memory():
    import jax

    raise jax.errors.JaxRuntimeError("INTERNAL: a compiler bug, not memory")


@pytest.mark.parametrize("error", [_not_memory, lambda: np.linalg.inv(np.zeros((2, 2)))], ids=["xla", "numpy"])
def test_any_other_probe_error_is_raised_and_nothing_is_cached(analysis, monkeypatch, error):
    parameters, data, sizes = _probe_setup(analysis, monkeypatch, 2, error)
    cache = analysis.root / "pack_size.json"
    with pytest.raises((RuntimeError, np.linalg.LinAlgError)):
        training.probed_pack_size(trial.expand(parameters)[0], data, parameters, cache)
    assert sizes == [1, 2] and not cache.exists()


def test_out_of_memory_with_one_trial_is_raised(analysis, monkeypatch):
    parameters, data, _ = _probe_setup(analysis, monkeypatch, 1, _allocate_too_much)
    cache = analysis.root / "pack_size.json"
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        training.probed_pack_size(trial.expand(parameters)[0], data, parameters, cache)
    assert not cache.exists()


def test_the_probe_times_whole_epochs_with_validation(analysis, monkeypatch):
    analysis.edit_parameters(hyperparameters={"epochs": [1]})
    model.choose_backend("jax")
    parameters, data = _dataset(analysis)
    monkeypatch.setattr(training, "PROBE_SIZES", (1, 2))
    seen = []
    train_epoch, validate = fused.JaxEngine.train_epoch, fused.JaxEngine.validate
    monkeypatch.setattr(fused.JaxEngine, "train_epoch", lambda self, table, *a: seen.append(len(table)) or
                        train_epoch(self, table, *a))  # fmt: skip
    monkeypatch.setattr(fused.JaxEngine, "validate", lambda self: seen.append("validate") or validate(self))
    result = training.probe_pack_size(trial.expand(parameters)[0], data, parameters)
    batches = -(-len(data.part(TRAIN)[0]) // 128)
    assert list(result["seconds_per_trial"]) == ["1", "2"]
    assert seen == [batches, "validate"] * 4  # two whole epochs, each validated, per size


def test_the_probe_key_holds_what_changes_the_cost(analysis):
    model.choose_backend("jax")
    parameters, data = _dataset(analysis)
    first = trial.expand(parameters)[0]
    key = json.loads(training.probe_key(first, data))
    assert key["backend"] == "jax" and key["device"] == model.device_description() and key["hhscan"] == "0.1.0"
    assert key["train"] == list(data.part(TRAIN)[0].shape) and key["validation"] == len(data.part(VALIDATION)[0])
    assert key["dtype"] == "float32" and key["classes"] == 2
    assert {k: key["hyperparameters"].get(k) for k in ("layers", "neurons", "batch_size", "epochs")} == {
        k: first.hyperparameters[k] for k in ("layers", "neurons", "batch_size", "epochs")}
    other_rate = trial.Trial("x", {**first.hyperparameters, "learning_rate": 0.5}, 0)
    wider = trial.Trial("y", {**first.hyperparameters, "neurons": 512}, 0)
    assert training.probe_key(other_rate, data) == training.probe_key(first, data)  # same program, same cost
    assert training.probe_key(wider, data) != training.probe_key(first, data)


STORE = """
import sys
from pathlib import Path
from hhscan.learning import training
for i in range(25):
    training.store_probe(Path(sys.argv[1]), f"{{sys.argv[2]}}-{{i}}", {{"pack_size": i}})
"""


def test_concurrent_tasks_merge_their_probe_answers(tmp_path):
    cache = tmp_path / "cache" / "pack_size.json"
    writers = [subprocess.Popen([sys.executable, "-c", STORE.format(), str(cache), f"task{n}"]) for n in range(4)]
    assert [w.wait() for w in writers] == [0] * 4
    stored = json.loads(cache.read_text())
    assert stored == {f"task{n}-{i}": {"pack_size": i} for n in range(4) for i in range(25)}
    assert not list(cache.parent.glob(".pack_size.json.*.tmp"))


# ------------------------------------------------------------------------------------------------ the benchmark


def test_the_gpu_benchmark_runs_as_one_command_at_tiny_sizes(tmp_path):
    from bench import results_file

    results = tmp_path / "RESULTS.md"
    old_scan = "### Scan of the shipped example\n\nthe CPU table, kept"
    results.write_text("# Benchmarks\n\nintroduction\n\n")
    results_file.write_section(results, "scan", old_scan)
    results_file.write_section(results, "gpu-machine", "an old GPU figure, replaced")
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARIABLES}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--output", str(results),
                          "--json", str(tmp_path / "raw.json")], capture_output=True, text=True, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nintroduction\n\n<!-- bench:scan -->")
    assert results_file.read_section(results, "scan") == old_scan
    assert "replaced" not in text
    # The old machine section was replaced where it stood; new sections follow in the order measured.
    assert text.index("bench:gpu-machine") < text.index("bench:gpu-packing") < text.index("bench:gpu-scan")
    raw = json.loads((tmp_path / "raw.json").read_text())
    # Every ratio in the section is the raw figures' ratio.
    packing = raw["packing"]
    base = packing["trials_per_s"]["1"]
    assert (f"| 2 | {packing['trials']['2']} | {packing['trials_per_s']['2']:.2f} | "
            f"{packing['trials_per_s']['2'] / base:.1f}× |") in text
    hhscan = raw["scan"]["hhscan run --local"]["wall_s"]
    for tool, row in raw["scan"].items():
        assert f"| {tool} | {row['backend']} | {row['wall_s']:.1f} | {row['wall_s'] / hhscan:.2f}× |" in text
    # The baselines by default: every Keras backend importable here (CI's venv: JAX and TensorFlow).
    importable = {name for name in ("jax", "torch", "tensorflow") if importlib.util.find_spec(name) is not None}
    assert {row["backend"] for row in raw["scan"].values()} == importable
    machine = raw["machine"]
    for size, rate in machine["events_per_s"].items():
        fraction = rate * machine["flop_per_event"] / machine["ceiling_flops"]
        assert f"| {size} | {rate:,.0f} | " in text and f"**{fraction:.2f}**" in text
    assert machine["flop_per_event"] == 3 * 2 * (8 * 16 + 16 * 16 + 16)  # 8→16×2→1
    assert raw["largest"]["largest"] == 2 and raw["largest"]["out_of_memory_at"] is None
    assert "K = 16 ≥ 10× K = 1 | not measured at these sizes" in text
    fraction = machine["events_per_s"]["1"] * machine["flop_per_event"] / machine["ceiling_flops"]
    assert f"| K = 1 ≥ 25% of the matmul ceiling | {fraction:.0%} |" in text


def test_a_benchmark_section_replaces_its_own_block_only(tmp_path):
    from bench import results_file

    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmarks\n\n### Against the targets\n\nanalysis\n")
    results_file.write_section(path, "scan", "scan v1", before=results_file.TARGETS)
    results_file.write_section(path, "search", "search v1", before=results_file.TARGETS)
    results_file.write_section(path, "scan", "scan v2", before=results_file.TARGETS)
    text = path.read_text()
    assert text.index("scan v2") < text.index("search v1") < text.index("### Against the targets")
    assert "scan v1" not in text and text.endswith("analysis\n")
    assert results_file.read_section(path, "search") == "search v1"


def test_results_file_keeps_a_section_for_every_benchmark():
    """A partial run rewrites only its own section: every section of bench/run.py stays in RESULTS.md, and a GPU one."""
    from bench import results_file
    from bench import run as bench_run

    path = REPO / "bench" / "RESULTS.md"
    missing = [key for key in bench_run.SECTIONS if not results_file.read_section(path, key)]
    assert missing == []
    assert "<!-- bench:gpu-" in path.read_text()
