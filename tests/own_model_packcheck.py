"""Packed branches of an own model (residual blocks with BatchNorm and Dropout) against each trial trained alone
by ``keras.Model.fit``. Runnable as ``python own_model_packcheck.py PROJECT`` for the TensorFlow backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RESIDUAL = '''
import keras


def build(n_inputs: int, n_outputs: int, *, blocks: int = 1, width: int = 8, dropout: float = 0.0) -> keras.Model:
    inputs = keras.Input(shape=(n_inputs,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    for _ in range(blocks):
        # no bias before BatchNorm: it would cancel it (a parameter with zero gradient that Adam moves on noise)
        h = keras.layers.Dense(width, use_bias=False)(x)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("relu")(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout)(h)
        x = keras.layers.Add()([x, keras.layers.Dense(width)(h)])
    last = "sigmoid" if n_outputs == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation=last)(x))
'''


def residual_project(project: Path, epochs: int = 6) -> None:
    """Point the project's parameters at the residual model, with settings where some branches stop early."""
    import yaml

    (project / "parameters" / "nets.py").write_text(RESIDUAL)
    path = project / "parameters" / "scan.yaml"
    content = yaml.safe_load(path.read_text())
    content["model"] = "nets.py:build"
    content["hyperparameters"] = {"blocks": [1], "width": [8], "learning_rate": [0.01], "batch_size": [128],
                                  "epochs": [epochs]}  # fmt: skip
    content["training"]["early_stopping"] = {"patience": 1, "min_delta": 0.002, "restore_best_weights": False}
    content["training"]["reduce_lr"] = {"patience": 1}
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def branches(base: dict) -> list[dict]:
    """Two architectures (one of them three times: a vmapped group), dropout, optimizers, an early stop."""
    return [
        {**base, "blocks": 1, "width": 8, "dropout": 0.2, "optimizer": "adam", "learning_rate": 0.01},
        {**base, "blocks": 2, "width": 16, "dropout": 0.0, "optimizer": "sgd", "learning_rate": 0.05},
        {**base, "blocks": 1, "width": 8, "dropout": 0.2, "optimizer": "adam", "learning_rate": 0.003},
        {**base, "blocks": 1, "width": 8, "dropout": 0.2, "optimizer": "adam", "learning_rate": 1e-6},  # stops early
    ]


def compare(project: Path) -> dict:
    """Train the pack (no shuffling) and each trial alone with Keras' fit and callbacks; report the differences."""
    import keras
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
    trials = [trial.Trial(trial.trial_id(hp, 0, registry), trial.canonical(hp, registry), 0) for hp in branches(base)]
    packed = training.train_pack(trials, data, parameters, shuffle=False)
    x, y, w = data.part(TRAIN)
    xv, yv, wv = data.part(VALIDATION)
    es, rl = parameters.training.early_stopping, parameters.training.reduce_lr
    report = {"epochs_run": [], "history": [], "weights": [], "non_trainable": [], "n_train": len(x)}
    for item, result in zip(trials, packed, strict=True):
        hp = item.hyperparameters
        training.seed_everything((parameters.seed + item.seed_offset) % (2**31))
        net = model.build_own_model(*parameters.own_model, hp, x.shape[1], 2, *model.scaler_statistics(x))
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
        report["history"].append(max(float(np.max(np.abs(np.subtract(fit.history[key], result.history[key]))))
                                      for key in ("loss", "val_loss", "learning_rate")))  # fmt: skip
        report["weights"].append(max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in
                                     zip(net.trainable_variables, result.model.trainable_variables, strict=True)))  # fmt: skip
        # BatchNorm's moving statistics (the dropout seed state too): what model.fit leaves in the model
        report["non_trainable"].append(max(float(np.max(np.abs(np.asarray(a.numpy(), float) - np.asarray(b.numpy(), float))))
                                           for a, b in zip(net.non_trainable_variables,
                                                           result.model.non_trainable_variables, strict=True)))  # fmt: skip
    return report


if __name__ == "__main__":
    print(json.dumps(compare(Path(sys.argv[1]))))
