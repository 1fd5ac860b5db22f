"""Training a pack of trials together: build, fused epochs, per-trial callbacks, checkpoints, evaluation.

Every trial of a pack keeps its own initial weights (its own seed), optimizer, learning rate, early stopping and
learning-rate schedule; all see the same batches, whose order depends only on the scan seed and the epoch — so a
trial's result does not depend on which pack it ran in, or on the pack size.

A checkpoint (every branch's weights and optimizer state, histories, callback states) is one file written
atomically at an epoch end, so a job that is killed, times out or is preempted resumes from that epoch.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hhscan import callbacks, fused, metrics, model, packing
from hhscan.config import Parameters
from hhscan.dataset import Dataset
from hhscan.fileio import atomic_write_bytes, atomic_write_text
from hhscan.split import TRAIN, VALIDATION
from hhscan.trial import Trial


@dataclass
class EpochProgress:
    """What a pack reports after each epoch: for live views and for ``hhscan status`` of a running job."""

    trial_ids: list[str]
    epoch: int  # epochs done, counting from 1
    epochs: int  # epochs planned
    active: list[bool]  # per trial: still training (False once it stopped early)
    seconds_per_epoch: float
    monitor: str  # the quantity ``best`` holds (the scan's eval criterion where it is logged per epoch)
    best: list[float | None] = field(default_factory=list)  # per trial, best value of ``monitor`` so far


EpochCallback = Callable[[EpochProgress], None]


@dataclass
class TrainedTrial:
    model: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None
    resumed_from_epoch: int | None
    seconds: float
    metrics: dict[str, float]


def evaluate(dataset: Dataset, scores_by_partition: dict[int, np.ndarray]) -> dict[str, float]:
    """Weighted loss, AUC, accuracy and Asimov Z_max on the training and validation partitions."""
    result: dict[str, float] = {}
    for prefix, partition in (("train", TRAIN), ("val", VALIDATION)):
        selected = dataset.partition == partition
        y, w = dataset.labels[selected], dataset.learning_weight[selected]
        scores = scores_by_partition[partition]
        result[f"{prefix}_loss"] = metrics.cross_entropy(y, scores, w)
        result[f"{prefix}_auc"] = metrics.multiclass_auc(y, scores, w)
        result[f"{prefix}_accuracy"] = metrics.weighted_accuracy(y, scores, w)
        signal_score = scores if scores.ndim == 1 else scores[:, -1]
        is_signal = y == (len(dataset.class_names) - 1)
        _, z = metrics.significance_scan(is_signal, signal_score, dataset.physics_weight[selected])
        result[f"{prefix}_significance"] = float(z.max())
    return result


def seed_everything(seed: int) -> None:
    """Python, NumPy and Keras seeds; TensorFlow's only on the TensorFlow backend.

    ``keras.utils.set_random_seed`` imports TensorFlow whenever it is installed (≈3 s per process on JAX).
    """
    import random

    import keras

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    random.seed(seed)
    np.random.seed(seed)
    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)




def _scores(outputs: np.ndarray) -> np.ndarray:
    """Engine outputs of one branch (N, outputs) as hhscan scores: (N,) for binary, (N, C) otherwise."""
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def epoch_order(n_events: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The training events' order in one epoch: the same for every trial of a scan, whatever its pack."""
    if not shuffle:
        return np.arange(n_events)
    return np.random.default_rng([seed, epoch]).permutation(n_events)


@dataclass
class _Branch:
    """The bookkeeping of one trial inside a pack."""

    trial: Trial
    history: dict[str, list[float]]
    early_stopping: callbacks.EarlyStopping | None
    reduce_lr: callbacks.ReduceLROnPlateau | None
    active: bool = True
    best_weights: list[np.ndarray] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial.id,
            "history": self.history,
            "active": self.active,
            "early_stopping": self.early_stopping.state() if self.early_stopping else None,
            "reduce_lr": self.reduce_lr.state() if self.reduce_lr else None,
        }


def _new_branch(trial: Trial, parameters: Parameters) -> _Branch:
    settings = parameters.training
    es, rl = settings.early_stopping, settings.reduce_lr
    return _Branch(
        trial=trial,
        history={},
        early_stopping=callbacks.EarlyStopping(es.monitor, es.patience, es.min_delta, es.restore_best_weights)
        if es.enabled
        else None,
        reduce_lr=callbacks.ReduceLROnPlateau(rl.monitor, rl.factor, rl.patience, rl.min_lr) if rl.enabled else None,
    )


def _save_checkpoint(path: Path, epoch: int, branches: list[_Branch], engine) -> None:
    arrays = engine.export_state()
    for k, branch in enumerate(branches):
        for i, weight in enumerate(branch.best_weights or []):
            arrays[f"best{k}_{i}"] = weight
    state = {"epoch": epoch, "branches": [b.state() for b in branches]}
    arrays["__state__"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path | None, trials: Sequence[Trial]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The checkpoint's state and arrays, if it exists and belongs to exactly these trials."""
    if path is None or not path.exists():
        return None
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    state = json.loads(arrays.pop("__state__").tobytes())
    if [b["trial_id"] for b in state["branches"]] != [t.id for t in trials]:
        return None
    return state, arrays


def _build_pack(trials: Sequence[Trial], parameters: Parameters, n_classes: int, train: tuple, validation: tuple,
                data_owner: object | None = None, chunk: int | None = None):  # fmt: skip
    """Each trial's model (its own seed, optimizer built) and the engine that trains them together.

    ``data_owner`` (the dataset) lets every pack of a job share one copy of the data on the device.
    """
    x_train = train[0]
    mean, variance = model.scaler_statistics(x_train)
    nets = []
    for trial in trials:
        seed_everything((parameters.seed + trial.seed_offset) % (2**31))
        net = model.build_model(trial.hyperparameters, x_train.shape[1], n_classes, mean, variance)
        model.compile_model(net, trial.hyperparameters, n_classes)
        net.optimizer.build(net.trainable_variables)
        nets.append(net)

    def arrays(part):
        x, y, w = part
        return x, model.targets(y, n_classes), w.astype(np.float32)

    engine = fused.make_engine(nets, [n.optimizer for n in nets], model.loss_name(n_classes), arrays(train),
                               arrays(validation), data_owner, chunk)  # fmt: skip
    return nets, engine


def train_pack(
    trials: Sequence[Trial],
    dataset: Dataset,
    parameters: Parameters,
    checkpoint: Path | None = None,
    shuffle: bool = True,
    on_epoch: EpochCallback | None = None,
) -> list[TrainedTrial]:
    """Train ``trials`` (same batch size and epochs) as one fused pack; one result per trial, in order.

    ``on_epoch`` is called after every epoch with the pack's progress (it must be cheap: it runs in the loop).
    """
    model.keep_tensorflow_out()
    started = time.perf_counter()
    structures = {packing.step_structure(t) for t in trials}
    if len(structures) != 1:
        raise ValueError(f"a pack needs one batch size and one number of epochs, got {sorted(structures)}")
    ((batch_size, epochs),) = structures
    n_classes = len(dataset.class_names)
    x_train, y_train, w_train = dataset.part(TRAIN)
    x_val, y_val, w_val = dataset.part(VALIDATION)
    nets, engine = _build_pack(trials, parameters, n_classes, (x_train, y_train, w_train), (x_val, y_val, w_val),
                               dataset)  # fmt: skip
    branches = [_new_branch(t, parameters) for t in trials]
    first_epoch, resumed = 0, None
    restored = _load_checkpoint(checkpoint, trials)
    if restored is not None:
        state, arrays = restored
        engine.import_state(arrays)
        for k, (branch, saved) in enumerate(zip(branches, state["branches"], strict=True)):
            branch.history, branch.active = saved["history"], saved["active"]
            if branch.early_stopping and saved["early_stopping"]:
                branch.early_stopping = callbacks.EarlyStopping(**saved["early_stopping"])
            if branch.reduce_lr and saved["reduce_lr"]:
                branch.reduce_lr = callbacks.ReduceLROnPlateau(**saved["reduce_lr"])
            best = sorted((key for key in arrays if key.startswith(f"best{k}_")), key=lambda n: int(n.split("_")[1]))
            branch.best_weights = [arrays[key] for key in best] or None
        first_epoch = resumed = state["epoch"] + 1
    interval = parameters.training.checkpoint_interval_s
    last_saved = time.monotonic()
    per_epoch = ("val_loss", "val_auc", "val_accuracy")
    monitor = parameters.eval_criterion if parameters.eval_criterion in per_epoch else "val_loss"
    for epoch in range(first_epoch, epochs):
        active = np.array([b.active for b in branches])
        if not active.any():
            break
        epoch_started = time.perf_counter()
        table, counts = fused.batch_table(epoch_order(len(x_train), parameters.seed, epoch, shuffle), batch_size)
        train_losses = engine.train_epoch(table, counts, active)
        val_losses, val_outputs = engine.validate()
        for k, branch in enumerate(branches):
            if not branch.active:
                continue
            scores = _scores(val_outputs[k])
            logs = {
                "loss": float(train_losses[k]),
                "val_loss": float(val_losses[k]),
                "val_auc": metrics.multiclass_auc(y_val, scores, w_val),
                "val_accuracy": metrics.weighted_accuracy(y_val, scores, w_val),
                "learning_rate": engine.learning_rate(k),
            }
            for key, value in logs.items():
                branch.history.setdefault(key, []).append(value)
            _end_of_epoch(branch, k, epoch, logs, engine)
        if checkpoint is not None and interval is not None and time.monotonic() - last_saved >= interval:
            _save_checkpoint(checkpoint, epoch, branches, engine)
            last_saved = time.monotonic()
        if on_epoch is not None:
            on_epoch(_progress(branches, epoch, epochs, time.perf_counter() - epoch_started, monitor))
    for k, branch in enumerate(branches):
        if branch.early_stopping and branch.early_stopping.restore_best_weights and branch.best_weights is not None:
            engine.set_branch_weights(k, branch.best_weights)
    engine.sync_to_models()
    both = engine.predict(np.concatenate([x_train, x_val]))  # one call, one compiled shape
    outputs = {TRAIN: both[:, : len(x_train)], VALIDATION: both[:, len(x_train) :]}
    seconds = (time.perf_counter() - started) / len(trials)
    results = []
    for k, branch in enumerate(branches):
        val_history = branch.history.get("val_loss", [])
        results.append(
            TrainedTrial(
                model=nets[k],
                history=branch.history,
                epochs_run=len(branch.history.get("loss", [])),
                best_epoch=int(np.argmin(val_history)) if val_history else None,
                resumed_from_epoch=resumed,
                seconds=seconds,
                metrics=evaluate(dataset, {p: _scores(o[k]) for p, o in outputs.items()}),
            )
        )
    return results


def _progress(branches: list[_Branch], epoch: int, epochs: int, seconds: float, monitor: str) -> EpochProgress:
    pick = min if monitor == "val_loss" else max
    return EpochProgress(
        trial_ids=[b.trial.id for b in branches],
        epoch=epoch + 1,
        epochs=epochs,
        active=[b.active for b in branches],
        seconds_per_epoch=seconds,
        monitor=monitor,
        best=[pick(b.history[monitor]) if b.history.get(monitor) else None for b in branches],
    )


def _end_of_epoch(branch: _Branch, k: int, epoch: int, logs: dict[str, float], engine) -> None:
    """Early stopping first, then the learning-rate schedule: the order of Keras' callbacks list."""
    if branch.early_stopping is not None:
        improved, stop = branch.early_stopping.update(epoch, logs[branch.early_stopping.monitor])
        if improved and branch.early_stopping.restore_best_weights:
            branch.best_weights = engine.branch_weights(k)
        if stop:
            branch.active = False
    if branch.reduce_lr is not None:
        reduced = branch.reduce_lr.update(logs[branch.reduce_lr.monitor], logs["learning_rate"])
        if reduced is not None:
            engine.set_learning_rate(k, reduced)


def train(trial: Trial, dataset: Dataset, parameters: Parameters, checkpoint: Path | None = None) -> TrainedTrial:
    """One trial alone: a pack of one."""
    return train_pack([trial], dataset, parameters, checkpoint)[0]


PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def probe_pack_size(trial: Trial, dataset: Dataset, parameters: Parameters) -> dict[str, Any]:
    """Measure packs of copies of ``trial``, for doubling sizes: whole epochs, validation included.

    A trial's cost in a pack of K is (compile(K) + epochs × epoch(K)) / K: small trials are compile-bound and gain
    from any K, large ones stop gaining once an epoch is arithmetic-bound. Doubling stops when the cost per trial
    falls by less than 10%, or at the backend's out-of-memory error (the previous size is the largest that fits);
    any other error is raised. The answer is the smallest size within 10% of the best.
    """
    import keras

    model.keep_tensorflow_out()
    n_classes = len(dataset.class_names)
    train, validation = dataset.part(TRAIN), dataset.part(VALIDATION)
    batch_size, epochs = packing.step_structure(trial)
    table, counts = fused.batch_table(epoch_order(len(train[0]), parameters.seed, 0), batch_size)
    cost: dict[int, float] = {}
    result: dict[str, Any] = {}
    for size in PROBE_SIZES:
        engine = None
        try:
            _, engine = _build_pack([trial] * size, parameters, n_classes, train, validation, dataset)
            active = np.ones(size, bool)
            started = time.perf_counter()
            engine.train_epoch(table, counts, active)
            engine.validate()
            first = time.perf_counter() - started
            started = time.perf_counter()
            engine.train_epoch(table, counts, active)
            engine.validate()
            epoch = time.perf_counter() - started
        except fused.out_of_memory_errors() as error:
            if not fused.is_out_of_memory(error) or size == PROBE_SIZES[0]:
                raise  # not memory, or not even one trial fits: a failure to report, not a pack size
            result["out_of_memory_at"] = size
            break
        finally:
            del engine
            keras.backend.clear_session()
        cost[size] = (max(first - epoch, 0.0) + epochs * epoch) / size
        if len(cost) > 1 and cost[size] > 0.9 * min(v for k, v in cost.items() if k != size):
            break
    best = min(cost.values())
    chosen = min(k for k, v in cost.items() if v <= 1.1 * best)
    return {"pack_size": chosen, "seconds_per_trial": {str(k): round(v, 4) for k, v in cost.items()}, **result}


def probe_key(trial: Trial, dataset: Dataset) -> str:
    """Everything that changes a pack's cost per epoch: data shapes and dtype, the trial's architecture, batch,
    epochs and optimizer (not its learning rate), the classes, the device, the backend and hhscan's version."""
    import keras
    from hhscan import __version__

    x_train, x_val = dataset.part(TRAIN)[0], dataset.part(VALIDATION)[0]
    return json.dumps(
        {
            "backend": keras.backend.backend(),
            "device": model.device_description(),
            "hhscan": __version__,
            "train": list(x_train.shape),
            "validation": len(x_val),
            "dtype": str(x_train.dtype),
            "classes": len(dataset.class_names),
            "hyperparameters": {k: v for k, v in trial.hyperparameters.items() if k != "learning_rate"},
        },
        sort_keys=True,
        default=str,
    )


def store_probe(cache: Path, key: str, value: dict[str, Any]) -> None:
    """Add one answer to ``cache``: under a lock, merged with what other tasks wrote meanwhile, replaced atomically
    (a reader never sees a partial file; concurrent writers never drop each other's answers)."""
    import fcntl

    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = _read_probes(cache)
        known[key] = value
        atomic_write_text(cache, json.dumps(known, indent=1, sort_keys=True))


def _read_probes(cache: Path) -> dict[str, Any]:
    try:
        known = json.loads(cache.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:  # a file not written by hhscan (writes are atomic): measure again
        return {}
    return known if isinstance(known, dict) else {}


def probed_pack_size(trial: Trial, dataset: Dataset, parameters: Parameters, cache: Path) -> int:
    """``probe_pack_size``, measured once per ``probe_key`` and kept in ``cache`` (shared by a workspace's jobs)."""
    key = probe_key(trial, dataset)
    known = _read_probes(cache).get(key)
    if known is None:
        known = probe_pack_size(trial, dataset, parameters)
        store_probe(cache, key, known)
    return int(known["pack_size"])
