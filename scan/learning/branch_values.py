"""What vmapped branches may differ in beyond their weights: dropout rates and L2 factors, held per branch as data.

The fused JAX engine traces and compiles one program per group of branches that compute the same function of
different values. A rate or factor baked into a layer as a Python number would make each value its own group: on
the 64-trial grid (dropout 0/0.1 × L2 0/1e-4) 16 groups per pack instead of 8, each traced and compiled (the
cold run's largest cost, bench/RESULTS.md). So these numbers are left out of a network's structure and become
per-branch arrays that the group's representative network reads while it is traced:

- a ``Dropout`` layer draws its mask as Keras' own dropout does (the layer's seed generator, ``bernoulli(p=keep)``,
  ``inputs / keep``) with the branch's ``keep = 1 - rate``. Rates of 0 stay apart: Keras' ``Dropout(0)`` is an
  identity with no random state, and a branch drawing a mask only to keep every event would pay for it (an epoch
  of the grid's 32-trial pack on two CPU cores: 0.41 s with rates of 0 merged, 0.26 s kept apart);
- a weight's L2 penalty is the branch's factor × Σw², Keras' ``L2``; a branch without one has factor 0, which adds
  exact zeros to its loss and gradients.

Branches of one group then hold the same variables in the same order. Packed = alone is tested against
``model.fit`` (tests/packcheck.py).
"""


from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PER_BRANCH = "<per branch>"


def all_layers(layer) -> list:
    """A network's layers, nested models' included, in order (the network itself first)."""
    found = [layer]
    for inner in getattr(layer, "layers", None) or []:
        found += all_layers(inner)
    return found


def varies(layer) -> bool:
    """A layer whose rate the branches may set: Keras' plain Dropout (a subclass or a noise shape may differ)."""
    import keras

    return type(layer) is keras.layers.Dropout and layer.noise_shape is None


def relaxed_config(value: Any) -> Any:
    """A network's config with what ``reading`` sets per branch replaced by a marker: Dropout rates above 0, and
    weight regularizers that are absent or L2 (an activity regularizer or another kind stays as it is)."""
    if isinstance(value, dict):
        config = value.get("config")
        keras_dropout = (value.get("module"), value.get("class_name")) == ("keras.layers", "Dropout")
        if keras_dropout and isinstance(config, dict) and config.get("noise_shape") is None and config.get("rate"):
            value = {**value, "config": {**config, "rate": PER_BRANCH}}
        relaxed = {}
        for key, item in value.items():
            weight_regularizer = key.endswith("_regularizer") and key != "activity_regularizer"
            if weight_regularizer and (item is None or (isinstance(item, dict) and item.get("class_name") == "L2")):
                relaxed[key] = PER_BRANCH
            else:
                relaxed[key] = relaxed_config(item)
        return relaxed
    if isinstance(value, (list, tuple)):
        return [relaxed_config(item) for item in value]
    return value


def _l2_factor(variable) -> float | None:
    """A weight's L2 factor (0 without a regularizer); None for another regularizer (not set per branch)."""
    import keras

    regularizer = variable.regularizer
    if regularizer is None:
        return 0.0
    if type(regularizer) is keras.regularizers.L2:
        return float(regularizer.l2)
    return None


def weights_signature(net) -> str:
    """What the config may not show: each weight's shape and regularizer kind (L2-or-none, or its own config)."""
    kinds = []
    for variable in net.trainable_variables:
        kind = "L2" if _l2_factor(variable) is not None else json.dumps(variable.regularizer.get_config(), default=str)
        kinds.append([list(variable.shape), kind])
    return json.dumps(kinds)


@dataclass(frozen=True)
class Plan:
    """What a group's branches set: the representative's varying Dropout layers and L2-regularized weights."""

    dropout_layers: tuple[int, ...]  # positions in ``all_layers``
    regularized: tuple[int, ...]  # indices in ``trainable_variables``


def plan(nets: Sequence[Any]) -> Plan:
    """The group's plan (``nets[0]`` its representative): Dropout layers holding random state there, and the
    weights some branch regularizes with L2."""
    layers = all_layers(nets[0])
    dropouts = tuple(p for p, layer in enumerate(layers) if varies(layer) and hasattr(layer, "seed_generator"))
    factors = np.array([[_l2_factor(v) for v in net.trainable_variables] for net in nets], dtype=object)
    regularized = tuple(j for j in range(factors.shape[1])
                        if all(f is not None for f in factors[:, j]) and any(f for f in factors[:, j]))  # fmt: skip
    return Plan(dropouts, regularized)


def values(group_plan: Plan, net) -> np.ndarray:
    """One branch's values for ``reading``: its keep probability at each varying Dropout layer, then its L2 factor
    at each regularized weight; float32 as Keras applies them (a Python float meets a float32 tensor)."""
    layers = all_layers(net)
    keep = [1.0 - float(layers[p].rate) for p in group_plan.dropout_layers]
    factors = [_l2_factor(net.trainable_variables[j]) for j in group_plan.regularized]
    return np.array(keep + factors, dtype=np.float32)


def draws_by_position() -> bool:
    """Whether JAX draws Keras' random numbers with the partitionable threefry (its default): an element's bits
    depend on the key and its flat position only, so part of a draw can be made alone (``uniform_rows``)."""
    import jax

    return jax.config.jax_threefry_partitionable and jax.config.jax_default_prng_impl == "threefry2x32"


def uniform_rows(seed: Any, shape: tuple[int, ...], first_row: Any) -> Any:
    """Rows ``first_row`` … ``first_row + shape[0]`` of ``jax.random.uniform(seed, (rows, *shape[1:]))`` for any
    larger number of rows (``draws_by_position``): the part of a batch's draw that falls on one of its micro-batches.

    JAX's own steps, written out: threefry of the flat positions (high word 0 below 2³² values), then 23 random
    mantissa bits make a float in [1, 2), minus 1 (jax.random's ``_uniform``; tests/test_packing.py compares).
    """
    import jax
    import jax.numpy as jnp
    from jax.extend.random import threefry2x32_p

    columns = int(np.prod(shape[1:]))
    position = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    position = position + (jnp.asarray(first_row, jnp.uint32) * jnp.uint32(columns))
    seed = jnp.asarray(seed, jnp.uint32)
    high, low = threefry2x32_p.bind(seed[0], seed[1], jnp.zeros_like(position), position)
    mantissa = jax.lax.shift_right_logical(high ^ low, jnp.uint32(32 - 23)) | jnp.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


@contextlib.contextmanager
def reading(net, group_plan: Plan, branch: Any, first_row: Any = None) -> Iterator[None]:
    """While ``net`` (the representative) is traced, its varying Dropout layers and regularized weights read the
    branch's ``values`` (``branch``: a traced vector); everything is put back afterwards.

    ``first_row``: the traced step is a micro-batch starting at that row of the branch's batch, and a Dropout
    layer's mask is those rows of the mask Keras draws for the whole batch (``uniform_rows``)."""
    import jax
    import jax.numpy as jnp
    import keras

    layers = all_layers(net)
    dropouts = [layers[p] for p in group_plan.dropout_layers]
    weights = [net.trainable_variables[j] for j in group_plan.regularized]
    kept = [w.regularizer for w in weights]

    def dropout(layer, keep):
        def call(inputs, training=False):
            if not training:
                return inputs
            # Keras' own dropout on JAX (backend.random.dropout), with the keep probability a traced number
            seed = layer.seed_generator.next()
            if first_row is None:
                mask = jax.random.bernoulli(seed, p=keep, shape=inputs.shape)
            else:  # bernoulli(p) is uniform < p
                mask = uniform_rows(seed, inputs.shape, first_row) < keep
            return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

        return call

    def l2(factor):
        return lambda weight: factor * keras.ops.sum(keras.ops.square(weight))  # keras.regularizers.L2.__call__

    try:
        for i, layer in enumerate(dropouts):
            layer.call = dropout(layer, branch[i])
        for j, weight in enumerate(weights):
            weight.regularizer = l2(branch[len(dropouts) + j])
        yield
    finally:
        for layer in dropouts:
            del layer.call
        for weight, regularizer in zip(weights, kept, strict=True):
            weight.regularizer = regularizer
