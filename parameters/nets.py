"""A residual network for ``parameters/own_model.yaml``: the model function hhscan scans (README "Your own model").

``build(n_inputs, n_outputs, *, <hyperparameters>)`` receives the scaled inputs (hhscan puts the training split's
``Normalization`` in front) and returns a ``keras.Model`` giving class probabilities: one sigmoid column for two
classes, ``n_outputs`` softmax columns for more. Its keyword-only arguments, typed and with defaults, are the
hyperparameters a scan may vary; hhscan keeps the training ones (optimizer, learning_rate, batch_size, epochs).
"""

from typing import Literal

import keras


def build(
    n_inputs: int,
    n_outputs: int,
    *,
    blocks: int = 2,
    width: int = 32,
    dropout: float = 0.0,
    activation: Literal["relu", "gelu", "silu"] = "relu",
) -> keras.Model:
    """``blocks`` residual blocks (Dense → BatchNorm → activation → Dropout → Dense, added to their input)."""
    inputs = keras.Input(shape=(n_inputs,))
    x = keras.layers.Dense(width, activation=activation)(inputs)
    for _ in range(blocks):
        # no bias before BatchNorm: it would cancel it (a parameter with zero gradient that Adam moves on noise)
        h = keras.layers.Dense(width, use_bias=False)(x)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation(activation)(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout)(h)
        h = keras.layers.Dense(width)(h)
        x = keras.layers.Activation(activation)(keras.layers.Add()([x, h]))
    last = "sigmoid" if n_outputs == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation=last)(x))
