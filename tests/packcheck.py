"""A packed branch against the same trial trained alone by ``keras.Model.fit``: shared by the backend tests.

Runnable as ``python packcheck.py PROJECT`` so the TensorFlow backend can be checked in its own process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np


def branches(base: dict) -> list[dict]:
    """A mixed pack: depths, widths, activations, L2, dropout, optimizers, learning rates, weight decay."""
    return [
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 0.01},
        {**base, "layers": 1, "neurons": 8, "optimizer": "sgd", "learning_rate": 0.05, "l2": 1e-3},
        {**base, "layers": 3, "neurons": 8, "activation": "tanh", "optimizer": "rmsprop", "learning_rate": 0.003},
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 1e-6},  # stops early
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 0.01, "dropout": 0.2},
        {**base, "layers": 1, "neurons": 8, "optimizer": "adamw", "learning_rate": 0.01, "weight_decay": 0.05},
        # One architecture, other dropout rates and L2 factors: the engine holds them per branch (one group)
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 0.01, "dropout": 0.1, "l2": 1e-3},
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 0.01, "l2": 1e-2},
        # Batches of 2 and 3 micro-batches (the pack steps the smallest batch size): the Dropout mask of each part,
        # the L2 penalty once per batch, the update at the batch's end
        {**base, "layers": 2, "neurons": 16, "optimizer": "adam", "learning_rate": 0.01, "dropout": 0.2,
         "batch_size": 2 * base["batch_size"]},
        {**base, "layers": 1, "neurons": 8, "optimizer": "sgd", "learning_rate": 0.05, "l2": 1e-3,
         "batch_size": 3 * base["batch_size"]},
    ]


def exact_float32() -> None:
    """Equality is the point here: matmuls in full float32 on a GPU too (XLA's and TensorFlow's default there is
    TF32, a 10-bit mantissa, which would make two correct programs differ by ~1e-4)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)


def _values(variables) -> list[np.ndarray]:
    return [v.numpy() for v in variables]


def _largest_difference(a: list, b: list) -> float:
    return max((float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float)))) for x, y in zip(a, b, strict=True)),
               default=0.0)  # fmt: skip


def compare(project: Path, make_branches: Callable[[dict], list[dict]] = branches) -> dict:
    """Train the pack (no shuffling) and each trial alone with Keras' fit and callbacks; report the differences.

    The trials are ``make_branches`` of the project's first grid point, built as hhscan builds them (the built-in
    network, or the parameters' own model)."""
    import keras

    exact_float32()
    from hhscan.data.split import TRAIN, VALIDATION
    from hhscan.execution import runner
    from hhscan.execution.scandir import Workspace
    from hhscan.learning import model, training, trial
    from hhscan.settings import config

    parameters = config.load_parameters(project / "parameters" / "scan.yaml")
    sample_list = config.load_sample_list(project / "sample_lists" / "analysis.yaml")
    data = runner.prepare_dataset(parameters, sample_list, Workspace(project))
    registry = parameters.registry
    base = trial.expand(parameters)[0].hyperparameters
    trials = [trial.Trial(trial.trial_id(hp, 0, registry), trial.canonical(hp, registry), 0)
              for hp in make_branches(base)]  # fmt: skip
    packed = training.train_pack(trials, data, parameters, shuffle=False)
    x, y, w = data.part(TRAIN)
    xv, yv, wv = data.part(VALIDATION)
    es, rl = parameters.training.early_stopping, parameters.training.reduce_lr
    report = {"epochs_run": [], "history": [], "weights": [], "non_trainable": [], "n_train": len(x)}
    for item, result in zip(trials, packed, strict=True):
        hp = item.hyperparameters
        training.seed_everything((parameters.seed + item.seed_offset) % (2**31))
        net = model.build_trial_model(hp, x.shape[1], 2, *model.scaler_statistics(x), parameters.own_model)
        model.compile_model(net, hp, 2)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                          restore_best_weights=es.restore_best_weights),
            keras.callbacks.ReduceLROnPlateau(monitor=rl.monitor, factor=rl.factor, patience=rl.patience,
                                              min_lr=rl.min_lr),
        ]  # fmt: skip
        fit = net.fit(x, model.targets(y, 2), sample_weight=w.astype(np.float32), batch_size=int(hp["batch_size"]),
                      validation_data=(xv, model.targets(yv, 2), wv.astype(np.float32)), epochs=int(hp["epochs"]),
                      shuffle=False, verbose=0, callbacks=callbacks)  # fmt: skip
        report["epochs_run"].append([len(fit.history["loss"]), result.epochs_run])
        keys = ("loss", "val_loss", "learning_rate")
        report["history"].append(_largest_difference([fit.history[k] for k in keys], [result.history[k] for k in keys]))
        report["weights"].append(_largest_difference(_values(net.trainable_variables),
                                                     _values(result.model.trainable_variables)))  # fmt: skip
        # BatchNorm's moving statistics (the dropout seed state too): what model.fit leaves in the model
        report["non_trainable"].append(_largest_difference(_values(net.non_trainable_variables),
                                                           _values(result.model.non_trainable_variables)))  # fmt: skip
    return report


if __name__ == "__main__":
    print(json.dumps(compare(Path(sys.argv[1]))))
