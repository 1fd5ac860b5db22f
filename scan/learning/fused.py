"""Fused training: K independent Keras models stepped together, one compiled program per epoch.

Small trials are bound by per-step dispatch, not arithmetic (≈6 ms a step against ≈0.2 ms of work, measured).
An engine holds K branches — any mix of depths, widths, activations, dropout, L2, optimizers and learning rates —
that see the same batches. The gradient of the summed loss with respect to branch k is branch k's own gradient,
and each branch is updated by its own Keras optimizer, so a branch computes exactly what ``model.fit`` computes for
that model alone on the same batches. A whole epoch is one call: the training arrays stay on the device and a
batch is gathered there from an index table, so there is no per-step dispatch and no per-epoch data copy.

A frozen branch (early-stopped) keeps its weights while the others go on.

Memory is bounded by construction: validation and prediction run in chunks of events sized from the device's free
memory, and a job's data goes to each device once (``resident``), whatever the number of packs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hhscan.errors import ConfigError
from hhscan.learning import branch_values

CPU_BUDGET_BYTES = 256 * 2**20  # evaluation temporaries on a CPU: host memory is the job's, keep them modest
GPU_BUDGET_FRACTION = 0.25  # of the device's free memory: training state and XLA's own buffers need the rest
MIN_CHUNK, MAX_CHUNK = 1024, 2**20
TEMPORARIES_PER_ACTIVATION = 3  # activation, its loss/softmax temporaries, the output copy: measured ≈1 on XLA


def memory_budget() -> int:
    """Bytes the evaluation of a chunk may take: a fixed bound on the CPU, a fraction of what is free on a GPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
        if "bytes_limit" in stats:
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
            return max(int(free * GPU_BUDGET_FRACTION), 2**20)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return 2**30  # TensorFlow reports no limit; 1 GiB fits every GPU hhscan targets
    return CPU_BUDGET_BYTES


def chunk_events(models: Sequence[Any], n_features: int, budget: int | None = None) -> int:
    """Events per evaluation chunk: the budget over every branch's activations per event (float32)."""
    widths = sum(n_features + sum(int(v.shape[0]) for v in net.trainable_variables if len(v.shape) == 1)
                 for net in models)  # fmt: skip  (a bias per layer: its width)
    per_event = 4 * TEMPORARIES_PER_ACTIVATION * max(widths, 1)
    chunk = (budget if budget is not None else memory_budget()) // per_event
    return int(min(max(chunk // MIN_CHUNK * MIN_CHUNK, MIN_CHUNK), MAX_CHUNK))


def training_memory_bytes(net, optimizer, n_features: int, batch_size: int) -> int:
    """Device memory one branch needs while it trains (float32): its variables, their gradients, the optimizer's
    slots, and one batch's activations kept for the backward pass. The data and the evaluation chunks are bounded
    apart (shared by every branch, and sized by ``chunk_events``)."""
    def size(variables) -> int:
        return sum(int(np.prod(v.shape)) for v in variables)

    widths = n_features + sum(int(v.shape[0]) for v in net.trainable_variables if len(v.shape) == 1)
    values = (2 * size(net.trainable_variables) + size(net.non_trainable_variables) + size(optimizer.variables)
              + batch_size * widths * TEMPORARIES_PER_ACTIVATION * 2)  # fmt: skip
    return 4 * values


def training_budget() -> int:
    """Bytes a pack's training state may take without probing: half of the GPU's memory, a quarter of the host's.

    Of the total, not of what is free now: the answer decides how trials are packed, and must be the same for every
    job of a scan on the same kind of node.
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
        if "bytes_limit" in stats:
            return stats["bytes_limit"] // 2
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return 2**31  # TensorFlow reports no limit: assume a small GPU
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def chunk_starts(n: int, chunk: int) -> list[tuple[int, int]]:
    """(start, first new event) of each chunk of ``chunk`` events: every chunk has the same shape (one compiled
    program); the last one is moved back to end at ``n`` and the events it repeats are masked out."""
    if n <= chunk:
        return [(0, 0)]
    return [(min(start, n - chunk), start) for start in range(0, n, chunk)]


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception classes an out-of-memory error comes as, for the backends loaded in this process."""
    classes: list[type[BaseException]] = []
    if "jax" in sys.modules:
        import jax

        classes.append(jax.errors.JaxRuntimeError)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        classes.append(tf.errors.ResourceExhaustedError)
    return tuple(classes)


def is_out_of_memory(error: BaseException) -> bool:
    """The backend's out-of-memory error (XLA's RESOURCE_EXHAUSTED, TensorFlow's ResourceExhaustedError)."""
    if "jax" in sys.modules:
        import jax

        if isinstance(error, jax.errors.JaxRuntimeError) and str(error).startswith("RESOURCE_EXHAUSTED"):
            return True
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        if isinstance(error, tf.errors.ResourceExhaustedError):
            return True
    return False


# The job's data on its devices: (backend, role, devices) → (the dataset object, its arrays there).
_RESIDENT: dict[tuple, tuple[object, tuple]] = {}


def resident(owner: object | None, key: tuple, arrays: Sequence[np.ndarray], put: Callable[[np.ndarray], Any]) -> tuple:
    """``arrays`` on the device(s), once per data ``owner`` (the dataset object: identity, not equality) and
    ``key`` (backend, role, devices): the packs of a job share one copy. Holding the owner keeps its identity
    unique; one dataset is kept, a new one releases the previous one's buffers."""
    if owner is None:
        return tuple(put(np.asarray(a)) for a in arrays)
    for old in [k for k, (held, _) in _RESIDENT.items() if held is not owner]:
        del _RESIDENT[old]
    if key not in _RESIDENT:
        _RESIDENT[key] = (owner, tuple(put(np.asarray(a)) for a in arrays))
    return _RESIDENT[key][1]


def batch_table(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Event indices per batch (padded with 0 to a full table) and the real number of events per batch."""
    n_batches = -(-len(order) // batch_size)
    table = np.zeros(n_batches * batch_size, dtype=np.int32)
    table[: len(order)] = order
    counts = np.full(n_batches, batch_size, dtype=np.float32)
    counts[-1] = len(order) - (n_batches - 1) * batch_size
    return table.reshape(n_batches, batch_size), counts


def split_last_batch(table: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full batches of a table, and the events of a last, partial batch (empty when every batch is full).

    A partial batch stepped at its own size is what ``model.fit`` does; where every layer works event by event
    (``per_event``) the JAX engine steps it padded instead, its extra events weighted 0, which saves compiling
    the step a second time at another shape.
    """
    if len(counts) and counts[-1] < table.shape[1]:
        return table[:-1], counts[:-1], np.asarray(table[-1][: int(counts[-1])])
    return table, counts, np.zeros(0, dtype=table.dtype)


# Layers whose output for an event depends on that event only (and on the layer's weights): a batch padded with
# zero-weighted events steps them as the batch alone does. Keras' Dropout and GaussianNoise too, where a
# partitionable threefry draws each element from its own position (a padded draw's first rows are the short one).
_PER_EVENT_LAYERS = ("InputLayer", "Dense", "Activation", "Normalization", "Rescaling", "Flatten", "Reshape",
                     "Concatenate", "Add", "Multiply", "Subtract", "Average", "Maximum", "Minimum", "Identity",
                     "LayerNormalization", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "Embedding")  # fmt: skip
_RANDOM_PER_EVENT_LAYERS = ("Dropout", "GaussianNoise", "AlphaDropout", "GaussianDropout")


def per_event(net) -> bool:
    """Whether every layer of ``net`` computes each event's output from that event alone: true of Keras' own
    dense layers, false of BatchNormalization (batch statistics) and of any layer it does not know."""
    import jax

    known = _PER_EVENT_LAYERS
    if jax.config.jax_threefry_partitionable:
        known += _RANDOM_PER_EVENT_LAYERS
    for layer in branch_values.all_layers(net)[1:]:
        if getattr(layer, "layers", None):  # a nested model: its layers are checked themselves
            continue
        if type(layer).__module__.split(".")[0] != "keras" or type(layer).__name__ not in known:
            return False
    return True


def micro_batchable(net) -> bool:
    """Whether a batch of ``net`` can be stepped as micro-batches whose gradients add up to the batch's: every
    layer works event by event, and its only random draws are varying Dropout masks, which ``branch_values.reading``
    draws part by part (a Dropout of rate 0 draws nothing)."""
    if not per_event(net) or not branch_values.draws_by_position():
        return False
    random_layers = [layer for layer in branch_values.all_layers(net)[1:]
                     if type(layer).__name__ in _RANDOM_PER_EVENT_LAYERS]  # fmt: skip
    return all(branch_values.varies(layer) or (type(layer).__name__ == "Dropout" and not layer.rate)
               for layer in random_layers)  # fmt: skip


def micro_ratios(batch_sizes: Sequence[int] | None, n_branches: int) -> np.ndarray:
    """Each branch's batch in micro-batches of the smallest batch size; zeros where one is not a multiple of it."""
    if batch_sizes is None:
        return np.ones(n_branches, dtype=np.int64)
    sizes = np.asarray(batch_sizes, dtype=np.int64)
    return np.where(sizes % sizes.min() == 0, sizes // sizes.min(), 0)


def micro_schedule(counts: np.ndarray, ratios: np.ndarray, micro: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each micro-batch (rows) and branch (columns): whether it ends the branch's batch (the update is made
    then), the branch's batch's event count (its mean loss's denominator), and the micro-batch's first row in the
    batch (where its part of a Dropout mask starts). A ratio of 1 is the plain step: every micro-batch a batch."""
    step = np.arange(len(counts))[:, None]
    ratios = np.asarray(ratios, dtype=np.int64)[None, :]
    batch = step // ratios
    ends = (step % ratios == ratios - 1) | (step == len(counts) - 1)
    batch_counts = np.empty(batch.shape, dtype=np.float32)
    for k in range(batch.shape[1]):
        batch_counts[:, k] = np.bincount(batch[:, k], weights=counts)[batch[:, k]]
    return ends, batch_counts, ((step % ratios) * micro).astype(np.uint32)


def train_by_batch_size(train_epoch: Callable, table: np.ndarray, counts: np.ndarray, active: np.ndarray,
                        batch_sizes: Sequence[int]) -> np.ndarray:  # fmt: skip
    """Branches of several batch sizes that cannot step as micro-batches (a BatchNormalization, an unknown layer):
    one pass over the epoch's event order per batch size, the other branches frozen meanwhile."""
    order = table.reshape(-1)[: round(float(np.sum(counts)))]
    sizes = np.asarray(batch_sizes)
    losses = np.zeros(len(sizes))
    for size in sorted(set(sizes.tolist())):
        members = sizes == size
        if (active & members).any():
            losses[members] = train_epoch(*batch_table(order, int(size)), active & members)[members]
    return losses


def make_engine(models: Sequence[Any], optimizers: Sequence[Any], loss: str, train, validation,
                data_owner: object | None = None, chunk: int | None = None,
                batch_sizes: Sequence[int] | None = None):  # fmt: skip
    """The engine for the active Keras backend; ``train``/``validation`` are (features, targets, weights).

    ``data_owner`` is the object the arrays come from (a ``Dataset``): the same owner, the same arrays, so they
    go to the device once per job; ``chunk`` sets the events per evaluation call (default: sized from the
    device's free memory). ``batch_sizes``: each branch's, when they differ; ``train_epoch`` then takes the
    smallest one's batch table (``step_batch_size``).
    """
    import keras

    backend = keras.backend.backend()
    chunk = chunk or chunk_events(models, np.shape(validation[0])[1])
    if backend == "jax":
        return JaxEngine(models, optimizers, loss, train, validation, data_owner, chunk, batch_sizes)
    if backend == "tensorflow":
        return TensorflowEngine(models, optimizers, loss, train, validation, data_owner, chunk, batch_sizes)
    raise ConfigError(f"Keras backend '{backend}': hhscan trains on the jax and tensorflow backends")


def _learning_rate_index(optimizer) -> int:
    names = [v.name for v in optimizer.variables]
    if "learning_rate" not in names:
        raise ValueError(f"optimizer {optimizer.name} has no learning-rate variable (a schedule?)")
    return names.index("learning_rate")


def structure_key(net, optimizer) -> str:
    """Branches with equal keys compute the same function of different values: they can be vectorised.

    Layer names are replaced by their position: Keras numbers unnamed layers per process (``dense_7``), so two
    builds of one own model differ only in names, which change nothing a step computes. Dropout rates and L2
    factors are values too (``branch_values``).
    """
    optimizer_config = {k: v for k, v in optimizer.get_config().items() if k not in ("learning_rate", "name")}
    positions = {name: f"layer{i}" for i, name in enumerate(dict.fromkeys(layer.name for layer in
                                                                         branch_values.all_layers(net)))}  # fmt: skip
    config = branch_values.relaxed_config(_renamed(net.get_config(), positions))
    return json.dumps([config, branch_values.weights_signature(net), type(optimizer).__name__, optimizer_config],
                      sort_keys=True, default=str)  # fmt: skip


def _renamed(value: Any, positions: dict[str, str]) -> Any:
    if isinstance(value, str):
        return positions.get(value, value)
    if isinstance(value, dict):
        return {key: _renamed(item, positions) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_renamed(item, positions) for item in value]
    return value


class JaxEngine:
    """Functional state updated by jitted programs; branches of one structure are stacked and ``vmap``ped.

    Compilation, not arithmetic, dominates small trials (measured: 16 unrolled branches compile in 4.7 s for
    0.27 s of training); stacking makes the program size depend on the number of distinct structures only, and
    turns K small matmuls into one batched matmul.
    """

    def __init__(self, models, optimizers, loss: str, train, validation, data_owner: object | None = None,
                 chunk: int = MAX_CHUNK, batch_sizes: Sequence[int] | None = None):  # fmt: skip
        import jax
        import keras

        self.models, self.optimizers = list(models), list(optimizers)
        self.batch_sizes = batch_sizes
        self.step_batch_size = min(batch_sizes) if batch_sizes else None
        groups: dict[str, list[int]] = {}
        for k, (net, optimizer) in enumerate(zip(self.models, self.optimizers, strict=True)):
            groups.setdefault(structure_key(net, optimizer), []).append(k)
        self.groups = list(groups.values())
        self._where = {k: (g, i) for g, members in enumerate(self.groups) for i, k in enumerate(members)}

        devices = self._spread_over_devices()
        device_ids = tuple(d.id for d in devices)

        def put(array):
            return jax.device_put(array, self._replicated)

        self.train_arrays = resident(data_owner, ("jax", "train", device_ids), train, put)
        self.validation_arrays = resident(data_owner, ("jax", "validation", device_ids), validation, put)
        self.chunk = int(min(chunk, max(len(validation[0]), 1)))
        self._pad_last_batch = all(per_event(net) for net in self.models)
        # Branches of several batch sizes step in micro-batches of the smallest, each applying its update at the
        # end of its own batch: one compiled program instead of one per batch size (bench/RESULTS.md, grid64).
        ratios = micro_ratios(batch_sizes, len(self.models))
        mixed = len(set(ratios.tolist())) > 1
        self._micro_batched = mixed and ratios.all() and all(micro_batchable(net) for net in self.models)
        self._by_batch_size = mixed and not self._micro_batched
        self._ratios = ratios if self._micro_batched else np.ones(len(self.models), dtype=np.int64)
        self._compile_programs(keras.losses.get(loss))

    def _spread_over_devices(self) -> list:
        """Each group's branches, padded and stacked, placed over the devices (one when nothing is to spread)."""
        import jax

        devices = jax.devices()
        if max(len(members) for members in self.groups) < 2:
            devices = devices[:1]  # one branch per structure: nothing to spread, no duplicated work
        # Every group is padded to a multiple of the device count with frozen copies of its first branch, so any
        # pack size spreads over all devices (host CPU devices included); the copies' results are dropped.
        self._padded = [members + [members[0]] * (-len(members) % len(devices)) for members in self.groups]
        mesh = jax.sharding.Mesh(np.array(devices), ("branch",))
        self.devices = list(devices)
        self._split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("branch"))
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def place(array):
            array = np.asarray(array)
            if len(devices) > 1 and array.ndim:
                return jax.device_put(array, self._split)
            return jax.device_put(array, self._replicated)

        self._place = place

        def stacked(values_per_branch):  # stacked on the host: an eager device op compiles once per shape
            return [place(np.stack([np.asarray(v) for v in column])) for column in zip(*values_per_branch,
                                                                                    strict=True)]

        self.state = [
            (
                stacked([[v.value for v in self.models[k].trainable_variables] for k in padded]),
                stacked([[v.value for v in self.models[k].non_trainable_variables] for k in padded]),
                stacked([[v.value for v in self.optimizers[k].variables] for k in padded]),
            )
            for padded in self._padded
        ]
        self._plans = [branch_values.plan([self.models[k] for k in members]) for members in self.groups]
        self._values = [place(np.stack([branch_values.values(plan, self.models[k]) for k in padded]))
                        for plan, padded in zip(self._plans, self._padded, strict=True)]  # fmt: skip
        self._lr_index = [_learning_rate_index(self.optimizers[members[0]]) for members in self.groups]
        return devices

    def _compile_programs(self, loss_fn) -> None:
        """The jitted epoch, validation and forward programs over every group's stacked branches."""
        import jax
        import jax.numpy as jnp

        representatives = [(self.models[m[0]], self.optimizers[m[0]]) for m in self.groups]

        by_position = branch_values.draws_by_position()
        accumulate = self._micro_batched

        def member_parts(g, trainable, non_trainable, values, x, y, w, training, first_row=None):
            """The weighted sum of the events' losses, the regularization, new non-trainables, outputs."""
            net = representatives[g][0]
            with branch_values.reading(net, self._plans[g], values, first_row if by_position else None):
                out, nt, regularization = net.stateless_call(
                    trainable, non_trainable, x, training=training, return_losses=True
                )
            return jnp.sum(loss_fn(y, out) * w), sum(regularization, jnp.float32(0.0)), nt, out

        def group_step(g):
            optimizer = representatives[g][1]

            def update(trainable, non_trainable, optimizer_state, accumulated, values, active, end, batch_count,
                       first_row, x, y, w, count):  # fmt: skip
                def loss(t):
                    # This (micro-)batch's part of its batch's mean loss; the penalty once, with the batch's end.
                    total, regularization, nt, _ = member_parts(g, t, non_trainable, values, x, y, w, True, first_row)
                    return total / batch_count + regularization * end.astype(jnp.float32), (
                        nt, total + regularization * count)

                (_, (nt, loss_sum)), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
                if accumulate:  # the batch's gradient: its micro-batches' parts added up
                    grads = [a + d for a, d in zip(accumulated, grads, strict=True)]
                    accumulated = [jnp.where(end, jnp.zeros_like(d), d) for d in grads]
                t, o = optimizer.stateless_apply(optimizer_state, grads, trainable)
                stepped = jnp.logical_and(active, end)

                def keep(new, old):
                    return [jnp.where(stepped, a, b) for a, b in zip(new, old, strict=True)]

                return keep(t, trainable), keep(nt, non_trainable), keep(o, optimizer_state), accumulated, loss_sum

            return jax.vmap(update, in_axes=(0, 0, 0, 0, 0, 0, 0, 0, 0, None, None, None, None))

        steps = [group_step(g) for g in range(len(self.groups))]

        def epoch(state, values, table, counts, schedule, last, active, x, y, w):
            def one_step(state, accumulated, sums, index, count, scheduled):
                xb, yb = x[index], y[index]
                wb = w[index] * (jnp.arange(index.shape[0]) < count).astype(w.dtype)
                new_state, new_accumulated, new_sums = [], [], []
                for g, (trainable, non_trainable, optimizer_state) in enumerate(state):
                    t, nt, o, a, loss = steps[g](trainable, non_trainable, optimizer_state, accumulated[g], values[g],
                                                 active[g], *scheduled[g], xb, yb, wb, count)  # fmt: skip
                    new_state.append((t, nt, o))
                    new_accumulated.append(a)
                    new_sums.append(sums[g] + loss)
                return new_state, new_accumulated, new_sums

            def step(carry, inputs):
                return one_step(*carry, *inputs), None

            sums = [jnp.zeros(len(padded), jnp.float32) for padded in self._padded]
            accumulated = [[jnp.zeros_like(v) for v in group[0]] if accumulate else [] for group in state]
            (state, accumulated, sums), _ = jax.lax.scan(step, (state, accumulated, sums), (table, counts, schedule))
            if last.shape[0]:  # the partial last batch at its own size (``split_last_batch``), a batch of its own
                alone = [(jnp.ones(len(p), bool), jnp.full(len(p), last.shape[0], jnp.float32),
                          jnp.zeros(len(p), jnp.uint32)) for p in self._padded]  # fmt: skip
                state, _, sums = one_step(state, accumulated, sums, last, jnp.float32(last.shape[0]), alone)
            return state, [s / (jnp.sum(counts) + last.shape[0]) for s in sums]

        size = self.chunk

        def validate_chunk(state, values, x, y, w, start, first_new):
            # One chunk of ``size`` events from ``start``; those before ``first_new`` were counted already.
            xc, yc, wc = (jax.lax.dynamic_slice_in_dim(a, start, size) for a in (x, y, w))
            wc = wc * (start + jnp.arange(size) >= first_new).astype(wc.dtype)
            results = []
            for g, (trainable, non_trainable, _) in enumerate(state):
                total, regularization, _, out = jax.vmap(
                    lambda t, nt, v, g=g: member_parts(g, t, nt, v, xc, yc, wc, False)
                )(trainable, non_trainable, values[g])
                results.append((total, regularization, out))
            return results

        def forward(state, x):
            return [
                jax.vmap(lambda t, nt, net=representatives[g][0]: net.stateless_call(t, nt, x)[0])(trainable, nt)
                for g, (trainable, nt, _) in enumerate(state)
            ]

        self._epoch = jax.jit(epoch)
        self._validate_chunk = jax.jit(validate_chunk)
        self._forward = jax.jit(forward)

    def _per_branch(self, per_group: list) -> np.ndarray:
        """Group-stacked results back in branch order (padding copies dropped)."""
        first = np.asarray(per_group[0])
        result = np.empty((len(self.models), *first.shape[1:]), dtype=first.dtype)
        for members, values in zip(self.groups, per_group, strict=True):
            result[members] = np.asarray(values)[: len(members)]
        return result

    def train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        """One epoch over the batches of ``table`` (of ``step_batch_size`` where branches' batch sizes differ);
        returns each branch's mean training loss."""
        if self._by_batch_size:
            return train_by_batch_size(self._train_epoch, table, counts, np.asarray(active), self.batch_sizes)
        return self._train_epoch(table, counts, active)

    def _train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        active_by_group = [np.asarray([bool(active[k]) for k in members] + [False] * (len(padded) - len(members)))
                           for members, padded in zip(self.groups, self._padded, strict=True)]  # fmt: skip
        if self._pad_last_batch:
            last = np.zeros(0, dtype=table.dtype)
        else:
            table, counts, last = split_last_batch(table, counts)
        schedule = [micro_schedule(counts, self._ratios[padded], table.shape[1]) for padded in self._padded]
        self.state, losses = self._epoch(self.state, self._values, table, counts, schedule, last, active_by_group,
                                         *self.train_arrays)  # fmt: skip
        return self._per_branch(losses).astype(np.float64)

    def validate(self) -> tuple[np.ndarray, np.ndarray]:
        """Each branch's validation loss (K,) and scores (K, N, outputs), ``self.chunk`` events per call.

        The loss is the sum of the weighted event losses over all chunks divided by N, plus the regularization:
        the same number as one call over all events.
        """
        n = len(self.validation_arrays[0])
        totals = np.zeros(len(self.models))
        regularization, pieces = None, []
        for start, first_new in chunk_starts(n, self.chunk):
            results = self._validate_chunk(self.state, self._values, *self.validation_arrays, start, first_new)
            totals += self._per_branch([r[0] for r in results]).astype(np.float64)
            if regularization is None:
                regularization = self._per_branch([r[1] for r in results]).astype(np.float64)
            pieces.append(self._per_branch([r[2] for r in results])[:, first_new - start :])
        return totals / n + regularization, np.concatenate(pieces, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of every branch (K, N, outputs), in fixed-size chunks: one compiled shape for any N."""
        chunk = min(self.chunk, max(len(x), 1))
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
                    self._place(np.stack([arrays[f"b{k}_{kind}{index}"] for k in padded]))
                    for index in range(len(self.state[g][part]))
                ]
                for part, kind in enumerate("tno")
            )
            for g, padded in enumerate(self._padded)
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

    def __init__(self, models, optimizers, loss: str, train, validation, data_owner: object | None = None,
                 chunk: int = MAX_CHUNK, batch_sizes: Sequence[int] | None = None):  # fmt: skip
        import keras
        import tensorflow as tf

        self.models, self.optimizers = list(models), list(optimizers)
        self.batch_sizes = batch_sizes  # several: one pass per batch size (``train_by_batch_size``)
        self.step_batch_size = min(batch_sizes) if batch_sizes else None
        self.train_arrays = resident(data_owner, ("tensorflow", "train"), train, tf.constant)
        self.validation_arrays = resident(data_owner, ("tensorflow", "validation"), validation, tf.constant)
        self.chunk = int(min(chunk, max(len(validation[0]), 1)))
        loss_fn = keras.losses.get(loss)
        self._tf = tf

        def branch_parts(net, x, y, w, training):
            out = net(x, training=training)
            regularization = tf.add_n(net.losses) if net.losses else tf.constant(0.0)
            return tf.reduce_sum(loss_fn(y, out) * w), regularization, out

        def branch_loss(net, x, y, w, count, training):
            total, regularization, out = branch_parts(net, x, y, w, training)
            return total / count + regularization, out

        self._branch_loss = branch_loss
        self._epochs: dict[tuple[bool, ...], Any] = {}

        @tf.function
        def validate_chunk(x, y, w):
            results = [branch_parts(net, x, y, w, False) for net in self.models]
            return [tf.stack([r[i] for r in results]) for i in range(3)]

        @tf.function
        def forward(x):
            return tf.stack([net(x, training=False) for net in self.models])

        self._validate_chunk, self._forward = validate_chunk, forward

    def _epoch_function(self, active: tuple[bool, ...]):
        """Compiled per set of active branches: a frozen branch is simply left out of the program."""
        tf = self._tf
        live = [k for k, on in enumerate(active) if on]
        n_branches = len(self.models)

        def one_step(sums, index, count, x, y, w):
            mask = tf.cast(tf.range(tf.shape(index)[0]) < tf.cast(count, tf.int32), w.dtype)
            xb, yb, wb = tf.gather(x, index), tf.gather(y, index), tf.gather(w, index) * mask
            with tf.GradientTape() as tape:
                losses = [self._branch_loss(self.models[k], xb, yb, wb, count, True)[0] for k in live]
                total = tf.add_n(losses)
            variables = [self.models[k].trainable_variables for k in live]
            grads = tape.gradient(total, variables)
            for position, k in enumerate(live):
                self.optimizers[k].apply(grads[position], variables[position])
            return sums + tf.scatter_nd([[k] for k in live], tf.stack(losses) * count, [n_branches])

        @tf.function
        def epoch(table, counts, last, x, y, w):
            sums = tf.zeros(n_branches)
            for i in tf.range(tf.shape(table)[0]):
                sums = one_step(sums, table[i], counts[i], x, y, w)
            if last.shape[0]:  # the partial last batch at its own size (``split_last_batch``)
                sums = one_step(sums, last, tf.constant(float(last.shape[0])), x, y, w)
            return sums / (tf.reduce_sum(counts) + float(last.shape[0]))

        return epoch

    def train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        if self.batch_sizes is not None and len(set(self.batch_sizes)) > 1:
            return train_by_batch_size(self._train_epoch, table, counts, np.asarray(active), self.batch_sizes)
        return self._train_epoch(table, counts, active)

    def _train_epoch(self, table: np.ndarray, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
        key = tuple(bool(a) for a in active)
        if key not in self._epochs:
            self._epochs[key] = self._epoch_function(key)
        losses = self._epochs[key](*split_last_batch(table, counts), *self.train_arrays)
        return np.asarray(losses, dtype=np.float64)

    def validate(self) -> tuple[np.ndarray, np.ndarray]:
        """As on JAX: ``self.chunk`` events per call, the loss summed over chunks."""
        x, y, w = self.validation_arrays
        n = int(x.shape[0])
        totals = np.zeros(len(self.models))
        regularization, pieces = None, []
        for start, first_new in chunk_starts(n, self.chunk):
            end = start + min(self.chunk, n)
            mask = self._tf.cast(self._tf.range(start, end) >= first_new, w.dtype)
            total, reg, out = self._validate_chunk(x[start:end], y[start:end], w[start:end] * mask)
            totals += np.asarray(total, dtype=np.float64)
            regularization = np.asarray(reg, dtype=np.float64) if regularization is None else regularization
            pieces.append(np.asarray(out)[:, first_new - start :])
        return totals / n + regularization, np.concatenate(pieces, axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        pieces = [np.asarray(self._forward(x[s : s + self.chunk])) for s in range(0, len(x), self.chunk)]
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
