"""Fused training: K independent Keras models stepped together, one compiled program per epoch.

Small trials are bound by per-step dispatch, not arithmetic (≈6 ms a step against ≈0.2 ms of work, measured).
An engine holds K branches — any mix of depths, widths, activations, dropout, L2, optimizers and learning rates —
that see the same batches. The gradient of the summed loss with respect to branch k is branch k's own gradient,
and each branch is updated by its own Keras optimizer, so a branch computes exactly what ``model.fit`` computes for
that model alone on the same batches. A whole epoch is one call: the training arrays stay on the device and a
batch is gathered there from an index table, so there is no per-step dispatch and no per-epoch data copy.

A frozen branch (early-stopped) keeps its weights while the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from hhscan.errors import ConfigError

PREDICT_CHUNK = 65536


def batch_table(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Event indices per batch (padded with 0 to a full table) and the real number of events per batch."""
    n_batches = -(-len(order) // batch_size)
    table = np.zeros(n_batches * batch_size, dtype=np.int32)
    table[: len(order)] = order
    counts = np.full(n_batches, batch_size, dtype=np.float32)
    counts[-1] = len(order) - (n_batches - 1) * batch_size
    return table.reshape(n_batches, batch_size), counts


def make_engine(models: Sequence[Any], optimizers: Sequence[Any], loss: str, train, validation):
    """The engine for the active Keras backend; ``train``/``validation`` are (features, targets, weights)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return JaxEngine(models, optimizers, loss, train, validation)
    if backend == "tensorflow":
        return TensorflowEngine(models, optimizers, loss, train, validation)
    raise ConfigError(f"Keras backend '{backend}': hhscan trains on the jax and tensorflow backends")


def _learning_rate_index(optimizer) -> int:
    names = [v.name for v in optimizer.variables]
    if "learning_rate" not in names:
        raise ValueError(f"optimizer {optimizer.name} has no learning-rate variable (a schedule?)")
    return names.index("learning_rate")


def structure_key(net, optimizer) -> str:
    """Branches with equal keys compute the same function of different values: they can be vectorised."""
    optimizer_config = {k: v for k, v in optimizer.get_config().items() if k not in ("learning_rate", "name")}
    return json.dumps([net.get_config(), type(optimizer).__name__, optimizer_config], sort_keys=True, default=str)


class JaxEngine:
    """Functional state updated by jitted programs; branches of one structure are stacked and ``vmap``ped.

    Compilation, not arithmetic, dominates small trials (measured: 16 unrolled branches compile in 4.7 s for
    0.27 s of training); stacking makes the program size depend on the number of distinct structures only, and
    turns K small matmuls into one batched matmul.
    """

    def __init__(self, models, optimizers, loss: str, train, validation):
        import jax
        import jax.numpy as jnp
        import keras

        self.models, self.optimizers = list(models), list(optimizers)
        groups: dict[str, list[int]] = {}
        for k, (net, optimizer) in enumerate(zip(self.models, self.optimizers, strict=True)):
            groups.setdefault(structure_key(net, optimizer), []).append(k)
        self.groups = list(groups.values())
        self._where = {k: (g, i) for g, members in enumerate(self.groups) for i, k in enumerate(members)}

        devices = jax.devices()
        sizes = [len(members) for members in self.groups]
        if not any(size % len(devices) == 0 for size in sizes):
            devices = devices[:1]  # nothing to spread: one device, no duplicated work
        mesh = jax.sharding.Mesh(np.array(devices), ("branch",))
        self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("branch"))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def place(array):
            # Branches of a group are spread over the devices (host CPU devices included) when they divide evenly.
            array = np.asarray(array)
            if len(devices) > 1 and array.ndim and array.shape[0] % len(devices) == 0:
                return jax.device_put(array, self._split)
            return jax.device_put(array, self._replicated)

        self._place = place

        def stacked(values_per_branch):  # stacked on the host: an eager device op compiles once per shape
            return [place(np.stack([np.asarray(v) for v in column])) for column in zip(*values_per_branch,
                                                                                    strict=True)]

        self.state = [
            (
                stacked([[v.value for v in self.models[k].trainable_variables] for k in members]),
                stacked([[v.value for v in self.models[k].non_trainable_variables] for k in members]),
                stacked([[v.value for v in self.optimizers[k].variables] for k in members]),
            )
            for members in self.groups
        ]
        self._lr_index = [_learning_rate_index(self.optimizers[members[0]]) for members in self.groups]
        self.train_arrays = tuple(jax.device_put(np.asarray(a), self._replicated) for a in train)
        self.validation_arrays = tuple(jax.device_put(np.asarray(a), self._replicated) for a in validation)
        loss_fn = keras.losses.get(loss)
        representatives = [(self.models[m[0]], self.optimizers[m[0]]) for m in self.groups]

        def member_loss(net, trainable, non_trainable, x, y, w, count, training):
            out, nt, regularization = net.stateless_call(
                trainable, non_trainable, x, training=training, return_losses=True
            )
            value = jnp.sum(loss_fn(y, out) * w) / count
            for term in regularization:
                value = value + term
            return value, (nt, out)

        def group_step(g):
            net, optimizer = representatives[g]

            def update(trainable, non_trainable, optimizer_state, active, x, y, w, count):
                (loss, (nt, _)), grads = jax.value_and_grad(
                    lambda t: member_loss(net, t, non_trainable, x, y, w, count, True), has_aux=True
                )(trainable)
                t, o = optimizer.stateless_apply(optimizer_state, grads, trainable)

                def keep(new, old):
                    return [jnp.where(active, a, b) for a, b in zip(new, old, strict=True)]

                return keep(t, trainable), keep(nt, non_trainable), keep(o, optimizer_state), loss

            return jax.vmap(update, in_axes=(0, 0, 0, 0, None, None, None, None))

        steps = [group_step(g) for g in range(len(self.groups))]

        def epoch(state, table, counts, active, x, y, w):
            batch = table.shape[1]

            def step(carry, inputs):
                state, sums = carry
                index, count = inputs
                xb, yb = x[index], y[index]
                wb = w[index] * (jnp.arange(batch) < count).astype(w.dtype)
                new_state, new_sums = [], []
                for g, (trainable, non_trainable, optimizer_state) in enumerate(state):
                    t, nt, o, loss = steps[g](trainable, non_trainable, optimizer_state, active[g], xb, yb, wb, count)
                    new_state.append((t, nt, o))
                    new_sums.append(sums[g] + loss * count)
                return (new_state, new_sums), None

            sums = [jnp.zeros(len(members), jnp.float32) for members in self.groups]
            (state, sums), _ = jax.lax.scan(step, (state, sums), (table, counts))
            return state, [s / jnp.sum(counts) for s in sums]

        def validate(state, x, y, w):
            results = []
            for g, (trainable, non_trainable, _) in enumerate(state):
                net = representatives[g][0]
                loss, (_, out) = jax.vmap(
                    lambda t, nt, net=net: member_loss(net, t, nt, x, y, w, x.shape[0], False)
                )(trainable, non_trainable)
                results.append((loss, out))
            return results

        def forward(state, x):
            return [
                jax.vmap(lambda t, nt, net=representatives[g][0]: net.stateless_call(t, nt, x)[0])(trainable, nt)
                for g, (trainable, nt, _) in enumerate(state)
            ]

        self._epoch = jax.jit(epoch)
        self._validate = jax.jit(validate)
        self._forward = jax.jit(forward)

    def _per_branch(self, per_group: list) -> np.ndarray:
        """Group-stacked results back in branch order."""
        first = np.asarray(per_group[0])
        result = np.empty((len(self.models), *first.shape[1:]), dtype=first.dtype)
        for members, values in zip(self.groups, per_group, strict=True):
            result[members] = np.asarray(values)
        return result

    def train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        """One epoch over the batches of ``table``; returns each branch's mean training loss."""
        active_by_group = [np.asarray([bool(active[k]) for k in members]) for members in self.groups]
        self.state, losses = self._epoch(self.state, table, counts, active_by_group, *self.train_arrays)
        return self._per_branch(losses).astype(np.float64)

    def validate(self) -> tuple[np.ndarray, np.ndarray]:
        """Each branch's validation loss (K,) and scores (K, N, outputs)."""
        results = self._validate(self.state, *self.validation_arrays)
        return self._per_branch([r[0] for r in results]).astype(np.float64), self._per_branch([r[1] for r in results])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of every branch (K, N, outputs), in fixed-size chunks: one compiled shape for any N."""
        chunk = min(PREDICT_CHUNK, max(len(x), 1))
        pieces = []
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            padded = np.zeros((chunk, x.shape[1]), dtype=x.dtype)
            padded[: len(part)] = part
            pieces.append(self._per_branch(self._forward(self.state, padded))[:, : len(part)])
        return np.concatenate(pieces, axis=1)

    def _replace(self, g: int, part: int, index: int, i: int, value) -> None:
        groups = [list(p) for p in self.state[g]]
        stacked = np.array(groups[part][index])  # on the host, for the same reason as in ``stacked``
        stacked[i] = value
        groups[part][index] = self._place(stacked)
        self.state[g] = tuple(groups)

    def learning_rate(self, k: int) -> float:
        g, i = self._where[k]
        return float(np.asarray(self.state[g][2][self._lr_index[g]])[i])

    def set_learning_rate(self, k: int, value: float) -> None:
        g, i = self._where[k]
        self._replace(g, 2, self._lr_index[g], i, value)

    def branch_weights(self, k: int) -> list[np.ndarray]:
        g, i = self._where[k]
        return [np.array(np.asarray(v)[i]) for v in self.state[g][0]]

    def set_branch_weights(self, k: int, weights: list[np.ndarray]) -> None:
        g, i = self._where[k]
        for index, value in enumerate(weights):
            self._replace(g, 0, index, i, value)

    def export_state(self) -> dict[str, np.ndarray]:
        arrays = {}
        for k in range(len(self.models)):
            g, i = self._where[k]
            for part, kind in enumerate("tno"):
                for index, value in enumerate(self.state[g][part]):
                    arrays[f"b{k}_{kind}{index}"] = np.asarray(value)[i]
        return arrays

    def import_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.state = [
            tuple(
                [
                    self._place(np.stack([arrays[f"b{k}_{kind}{index}"] for k in members]))
                    for index in range(len(self.state[g][part]))
                ]
                for part, kind in enumerate("tno")
            )
            for g, members in enumerate(self.groups)
        ]

    def sync_to_models(self) -> None:
        """Write the engine's values into the Keras models and optimizers, for saving."""
        for k, net in enumerate(self.models):
            g, i = self._where[k]
            variables = (net.trainable_variables, net.non_trainable_variables, self.optimizers[k].variables)
            for part, group in enumerate(variables):
                for variable, value in zip(group, self.state[g][part], strict=True):
                    variable.assign(np.asarray(value)[i])


class TensorflowEngine:
    """The same contract on TensorFlow: stateful Keras variables, one ``tf.function`` per epoch."""

    def __init__(self, models, optimizers, loss: str, train, validation):
        import keras
        import tensorflow as tf

        self.models, self.optimizers = list(models), list(optimizers)
        self.train_arrays = tuple(tf.constant(np.asarray(a)) for a in train)
        self.validation_arrays = tuple(tf.constant(np.asarray(a)) for a in validation)
        loss_fn = keras.losses.get(loss)
        self._tf = tf

        def branch_loss(net, x, y, w, count, training):
            out = net(x, training=training)
            value = tf.reduce_sum(loss_fn(y, out) * w) / count
            if net.losses:
                value = value + tf.add_n(net.losses)
            return value, out

        self._branch_loss = branch_loss
        self._epochs: dict[tuple[bool, ...], Any] = {}

        @tf.function
        def validate(x, y, w):
            results = [branch_loss(net, x, y, w, tf.cast(tf.shape(x)[0], tf.float32), False) for net in self.models]
            return tf.stack([r[0] for r in results]), tf.stack([r[1] for r in results])

        @tf.function
        def forward(x):
            return tf.stack([net(x, training=False) for net in self.models])

        self._validate, self._forward = validate, forward

    def _epoch_function(self, active: tuple[bool, ...]):
        """Compiled per set of active branches: a frozen branch is simply left out of the program."""
        tf = self._tf
        live = [k for k, on in enumerate(active) if on]
        n_branches = len(self.models)

        @tf.function
        def epoch(table, counts, x, y, w):
            sums = tf.zeros(n_branches)
            batch = tf.shape(table)[1]
            for i in tf.range(tf.shape(table)[0]):
                index, count = table[i], counts[i]
                mask = tf.cast(tf.range(batch) < tf.cast(count, tf.int32), w.dtype)
                xb, yb, wb = tf.gather(x, index), tf.gather(y, index), tf.gather(w, index) * mask
                with tf.GradientTape() as tape:
                    losses = [self._branch_loss(self.models[k], xb, yb, wb, count, True)[0] for k in live]
                    total = tf.add_n(losses)
                variables = [self.models[k].trainable_variables for k in live]
                grads = tape.gradient(total, variables)
                for position, k in enumerate(live):
                    self.optimizers[k].apply(grads[position], variables[position])
                update = tf.scatter_nd([[k] for k in live], tf.stack(losses) * count, [n_branches])
                sums = sums + update
            return sums / tf.reduce_sum(counts)

        return epoch

    def train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        key = tuple(bool(a) for a in active)
        if key not in self._epochs:
            self._epochs[key] = self._epoch_function(key)
        losses = self._epochs[key](table, counts, *self.train_arrays)
        return np.asarray(losses, dtype=np.float64)

    def validate(self) -> tuple[np.ndarray, np.ndarray]:
        losses, outputs = self._validate(*self.validation_arrays)
        return np.asarray(losses, dtype=np.float64), np.asarray(outputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        pieces = [np.asarray(self._forward(x[s : s + PREDICT_CHUNK])) for s in range(0, len(x), PREDICT_CHUNK)]
        return np.concatenate(pieces, axis=1)

    def learning_rate(self, k: int) -> float:
        return float(np.asarray(self.optimizers[k].learning_rate))

    def set_learning_rate(self, k: int, value: float) -> None:
        self.optimizers[k].learning_rate.assign(value)

    def branch_weights(self, k: int) -> list[np.ndarray]:
        return [np.array(v.numpy()) for v in self.models[k].trainable_variables]

    def set_branch_weights(self, k: int, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.models[k].trainable_variables, weights, strict=True):
            variable.assign(value)

    def export_state(self) -> dict[str, np.ndarray]:
        arrays = {}
        for k, net in enumerate(self.models):
            groups = (("t", net.trainable_variables), ("n", net.non_trainable_variables),
                      ("o", self.optimizers[k].variables))  # fmt: skip
            for kind, variables in groups:
                for i, variable in enumerate(variables):
                    arrays[f"b{k}_{kind}{i}"] = np.asarray(variable.numpy())
        return arrays

    def import_state(self, arrays: dict[str, np.ndarray]) -> None:
        for k, net in enumerate(self.models):
            groups = (("t", net.trainable_variables), ("n", net.non_trainable_variables),
                      ("o", self.optimizers[k].variables))  # fmt: skip
            for kind, variables in groups:
                for i, variable in enumerate(variables):
                    variable.assign(arrays[f"b{k}_{kind}{i}"])

    def sync_to_models(self) -> None:
        """Nothing to do: the models' own variables are trained."""
