"""Training one trial: build, fit with callbacks, checkpoint every epoch, evaluate.

A checkpoint (model with optimizer state, the history so far and the callbacks' state) is written atomically at
the end of every epoch, so a job that is killed, times out or is preempted resumes from its last finished epoch.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hhscan import metrics, model
from hhscan.config import Parameters
from hhscan.dataset import Dataset
from hhscan.fileio import atomic_write_bytes, atomic_write_text
from hhscan.split import TRAIN, VALIDATION
from hhscan.trial import Trial


@dataclass
class TrainedTrial:
    model: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None
    resumed_from_epoch: int | None
    seconds: float
    metrics: dict[str, float]


def evaluate(trained_model, dataset: Dataset) -> dict[str, float]:
    """Weighted loss, AUC, accuracy and Asimov Z_max on the training and validation partitions."""
    result: dict[str, float] = {}
    for prefix, partition in (("train", TRAIN), ("val", VALIDATION)):
        selected = dataset.partition == partition
        x, y, w = dataset.features[selected], dataset.labels[selected], dataset.learning_weight[selected]
        scores = model.predict(trained_model, x)
        result[f"{prefix}_loss"] = metrics.cross_entropy(y, scores, w)
        result[f"{prefix}_auc"] = metrics.multiclass_auc(y, scores, w)
        result[f"{prefix}_accuracy"] = metrics.weighted_accuracy(y, scores, w)
        signal_score = scores if scores.ndim == 1 else scores[:, -1]
        is_signal = y == (len(dataset.class_names) - 1)
        _, z = metrics.significance_scan(is_signal, signal_score, dataset.physics_weight[selected])
        result[f"{prefix}_significance"] = float(z.max())
    return result


def _callbacks(parameters: Parameters, state: dict[str, Any] | None):
    import keras

    settings = parameters.training

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state and "early_stopping" in state:
                saved = state["early_stopping"]
                self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
                if saved.get("best_weights") and Path(saved["best_weights"]).exists():
                    with np.load(saved["best_weights"]) as stored:
                        self.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]

    class ResumableReduceLR(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state and "reduce_lr" in state:
                saved = state["reduce_lr"]
                self.wait, self.best, self.cooldown_counter = saved["wait"], saved["best"], saved["cooldown"]

    callbacks = []
    if settings.early_stopping.enabled:
        es = settings.early_stopping
        callbacks.append(
            ResumableEarlyStopping(
                monitor=es.monitor,
                patience=es.patience,
                min_delta=es.min_delta,
                restore_best_weights=es.restore_best_weights,
            )
        )
    if settings.reduce_lr.enabled:
        rl = settings.reduce_lr
        callbacks.append(
            ResumableReduceLR(monitor=rl.monitor, factor=rl.factor, patience=rl.patience, min_lr=rl.min_lr)
        )
    return callbacks


def _checkpointer(directory: Path, history_before: dict[str, list[float]], callbacks: list, interval_s: float):
    """A callback writing model + history + callback state at epoch ends, atomically, every ``interval_s``."""
    import keras

    class Checkpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {k: list(v) for k, v in history_before.items()}
            self.last_saved = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                self.history.setdefault(key, []).append(float(value))
            if time.monotonic() - self.last_saved < interval_s:
                return
            self.last_saved = time.monotonic()
            directory.mkdir(parents=True, exist_ok=True)
            model_path = directory / "model.keras"
            temporary = directory / ".model.keras.tmp.keras"
            self.model.save(temporary)
            temporary.replace(model_path)
            state: dict[str, Any] = {"epoch": epoch, "history": self.history}
            for callback in callbacks:
                if isinstance(callback, keras.callbacks.EarlyStopping):
                    best_path = directory / "best_weights.npz"
                    if callback.best_weights is not None:
                        buffer = io.BytesIO()
                        np.savez(buffer, **{f"w{i}": w for i, w in enumerate(callback.best_weights)})
                        atomic_write_bytes(best_path, buffer.getvalue())
                    state["early_stopping"] = {
                        "wait": callback.wait,
                        "best": _finite_or_none(callback.best),
                        "best_epoch": callback.best_epoch,
                        "best_weights": str(best_path) if best_path.exists() else None,
                    }
                elif isinstance(callback, keras.callbacks.ReduceLROnPlateau):
                    state["reduce_lr"] = {
                        "wait": callback.wait,
                        "best": _finite_or_none(callback.best),
                        "cooldown": callback.cooldown_counter,
                    }
            atomic_write_text(directory / "state.json", json.dumps(state))

    return Checkpoint()


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _load_checkpoint(directory: Path | None) -> tuple[Any, dict[str, Any] | None]:
    if directory is None or not (directory / "state.json").exists() or not (directory / "model.keras").exists():
        return None, None
    import keras

    state = json.loads((directory / "state.json").read_text())
    for section in ("early_stopping", "reduce_lr"):  # JSON has no infinities: None means "no best yet"
        if section in state and state[section]["best"] is None:
            state[section]["best"] = np.inf
    return keras.saving.load_model(directory / "model.keras"), state


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


def train(trial: Trial, dataset: Dataset, parameters: Parameters, checkpoint_dir: Path | None = None) -> TrainedTrial:
    """Train one trial on the training partition, validated on the validation partition."""
    model.keep_tensorflow_out()
    started = time.perf_counter()
    hp = trial.hyperparameters
    n_classes = len(dataset.class_names)
    x_train, y_train, w_train = dataset.part(TRAIN)
    x_val, y_val, w_val = dataset.part(VALIDATION)
    seed_everything((parameters.seed + trial.seed_offset) % (2**31))
    resumed, state = _load_checkpoint(checkpoint_dir)
    if resumed is not None and state is not None:
        net = resumed
        initial_epoch = state["epoch"] + 1
        history_before: dict[str, list[float]] = state["history"]
    else:
        mean, variance = model.scaler_statistics(x_train)
        net = model.build_model(hp, x_train.shape[1], n_classes, mean, variance)
        model.compile_model(net, hp, n_classes, parameters.training.steps_per_execution)
        initial_epoch, history_before = 0, {}
    callbacks = _callbacks(parameters, state)
    interval = parameters.training.checkpoint_interval_s
    if checkpoint_dir is not None and interval is not None:
        callbacks.append(_checkpointer(checkpoint_dir, history_before, callbacks[:], interval))
    fit = net.fit(
        x_train,
        model.targets(y_train, n_classes),
        sample_weight=w_train,
        validation_data=(x_val, model.targets(y_val, n_classes), w_val),
        epochs=int(hp["epochs"]),
        initial_epoch=initial_epoch,
        batch_size=int(hp["batch_size"]),
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    history = {k: list(v) for k, v in history_before.items()}
    for key, values in fit.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    epochs_run = len(history.get("loss", []))
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.argmin(val_losses)) if val_losses else None
    scores = evaluate(net, dataset)
    return TrainedTrial(
        model=net,
        history=history,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        resumed_from_epoch=initial_epoch if resumed is not None else None,
        seconds=time.perf_counter() - started,
        metrics=scores,
    )
