"""Packed branches of an own model (residual blocks with BatchNorm and Dropout) against each trial trained alone
by ``keras.Model.fit``. Runnable as ``python own_model_packcheck.py PROJECT`` for the TensorFlow backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import packcheck  # beside this file: the tests' folder is on the path

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
        # twice the batch: BatchNorm's statistics are the whole batch's, so it trains in a pass of its own
        {**base, "blocks": 1, "width": 8, "dropout": 0.2, "optimizer": "adam", "learning_rate": 0.003,
         "batch_size": 2 * base["batch_size"]},
    ]


def compare(project: Path) -> dict:
    """The pack of ``branches`` against each trial alone with Keras' fit (``packcheck.compare``)."""
    return packcheck.compare(project, branches)


if __name__ == "__main__":
    print(json.dumps(compare(Path(sys.argv[1]))))
