"""The Keras 3 classifier: backend choice, the MLP with its input scaler inside, and model I/O.

The scaler is a built-in ``keras.layers.Normalization`` holding the training split's mean and variance, so a
saved ``.keras`` file loads with plain ``keras.saving.load_model(path)``: no custom objects, no side files.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hhscan.errors import ConfigError, DeviceError, ModelError
from hhscan.settings.hyperparameters import REGISTRY

_PREFERENCE = ("jax", "tensorflow")  # the backends the fused trainer supports, fastest first (bench/RESULTS.md)
_MODULE = {"jax": "jax", "tensorflow": "tensorflow"}


def choose_backend(requested: str = "auto") -> str:
    """Select the Keras backend before Keras is imported; ``auto`` picks JAX (fastest measured) if installed.

    Keras reads ``KERAS_BACKEND`` once, at import: a process that already imported Keras keeps its backend.
    """
    if "keras" in sys.modules:
        import keras

        active = keras.backend.backend()
        if requested not in ("auto", active):
            raise ConfigError(
                f"Keras is already running on the '{active}' backend in this process; '{requested}' needs a new process"
            )
        return active
    if requested == "auto":
        requested = os.environ.get("KERAS_BACKEND") or next(
            (name for name in _PREFERENCE if importlib.util.find_spec(_MODULE[name]) is not None),
            "tensorflow",
        )
    if requested not in _MODULE:
        raise ConfigError(f"Keras backend '{requested}' is not supported: use one of {sorted(_MODULE)}")
    if importlib.util.find_spec(_MODULE[requested]) is None:
        raise ConfigError(f"training.backend '{requested}': the package '{_MODULE[requested]}' is not installed")
    os.environ["KERAS_BACKEND"] = requested
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if requested == "jax":
        expose_cpu_cores_as_devices()
    return requested


def expose_cpu_cores_as_devices() -> None:
    """Before JAX starts: one host device per usable core, so a pack's branches spread over the cores.

    XLA runs one small training step on about one core (measured 1.3 of 2); split over two host devices a pack of
    16 trains 1.5× faster. Slurm's ``cpus_per_task`` bounds the cores (``sched_getaffinity``). GPUs are unaffected.
    """
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    cores = len(os.sched_getaffinity(0))
    if cores > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()


# Keras imports these at its own import for features hhscan never calls (its scikit-learn wrappers, its image
# gallery's plots, pandas frames as inputs): 1.8 s of every scan process's start on 2 cores (bench/RESULTS.md).
# Keras imports each inside ``try/except ImportError``.
_KERAS_EXTRAS = ("sklearn", "matplotlib", "pandas")


def import_keras():
    """Keras, imported without the optional packages it would import for nothing (``_KERAS_EXTRAS``).

    While Keras imports, ``sys.modules`` holds None for each extra not yet imported (Python's documented way to
    make an import fail), so Keras takes it as not installed; afterwards each imports as usual for everything
    else, hhscan's own plots included. Only Keras' scikit-learn wrappers, ``keras.visualization`` and pandas
    inputs to ``fit`` stay unavailable in the process. Call it after :func:`choose_backend`.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    hidden = [name for name in _KERAS_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import keras
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return keras


def keep_tensorflow_out() -> None:
    """On JAX, let Keras find TensorFlow unavailable, as if it were not installed.

    Keras asks whether TensorFlow is importable (its serializer, to recognise ``tf.TensorShape``; its
    ``set_random_seed``) and remembers the answer; the question imports TensorFlow whenever it is installed: 6–9 s in
    every worker process, for nothing. Asked once while ``sys.modules`` holds None for it (Python's documented way to
    make an import fail), the answer is no; TensorFlow stays importable for everything else. A Keras that stops
    remembering the answer pays the import and stays correct (tests/test_registries.py pins this).
    """
    import keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        keras.saving.serialize_keras_object(np.float32(0.0))  # a value that reaches the serializer's TensorFlow check
    finally:
        del sys.modules["tensorflow"]


def enable_compilation_cache(directory: Path) -> None:
    """On JAX, keep compiled XLA programs on disk, shared by every trial, process and Slurm job of a workspace.

    Trials that differ only in values (learning rate, seed, repetition) compile to the same programs; small
    trials are compile-bound (measured: the example's 8 trials 10.8 s → 7.8 s in one fresh process).
    """
    import keras

    if keras.backend.backend() != "jax":
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    directory.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(directory):
        # JAX opens its cache once per process: another workspace in the same process needs a reset.
        compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_model(
    hyperparameters: dict[str, Any],
    n_features: int,
    n_classes: int,
    mean: np.ndarray,
    variance: np.ndarray,
    name: str = "hhscan_mlp",
):
    """Normalization → ``layers`` × (Dense(neurons, activation) [+ Dropout]) → sigmoid or softmax."""
    import keras

    l2 = float(hyperparameters["l2"])
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=(n_features,), name="inputs")
    x = keras.layers.Normalization(mean=mean, variance=variance, name="scaler")(inputs)
    for index in range(int(hyperparameters["layers"])):
        x = keras.layers.Dense(
            int(hyperparameters["neurons"]),
            activation=hyperparameters["activation"],
            kernel_regularizer=regularizer,
            name=f"dense_{index}",
        )(x)
        if float(hyperparameters["dropout"]) > 0:
            x = keras.layers.Dropout(float(hyperparameters["dropout"]), name=f"dropout_{index}")(x)
    if n_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    else:
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="score")(x)
    return keras.Model(inputs, outputs, name=name)


def build_trial_model(
    hyperparameters: dict[str, Any],
    n_features: int,
    n_classes: int,
    mean: np.ndarray,
    variance: np.ndarray,
    own_model: tuple[str, str] | None = None,
):
    """The trial's network: the built-in MLP, or with ``own_model`` (the parameters' ``model`` and
    ``model_source``) the user's model behind the same scaler."""
    with one_compiled_uniform_draw():
        if own_model is None:
            return build_model(hyperparameters, n_features, n_classes, mean, variance)
        return build_own_model(*own_model, hyperparameters, n_features, n_classes, mean, variance)


UNIFORM_DRAW_SIZE = 2**14  # values per compiled draw (more: the next power of 2), ≈ 0.2 ms of threefry on a CPU


@contextlib.contextmanager
def one_compiled_uniform_draw() -> Iterator[None]:
    """While networks are built on JAX, Keras' uniform initializers (Glorot, He and Lecun uniform…) draw their
    values at a few fixed sizes, and the same numbers come out.

    ``jax.random.uniform`` compiles once per shape, 0.2–0.3 s each on a CPU (measured: 1.5 s of a cold run of the
    64-trial grid, six weight shapes). With the partitionable threefry (JAX's default) an element's bits depend
    on the key and its flat position only, so the first n values of a larger draw are the n-value draw: a weight
    is the first of ``UNIFORM_DRAW_SIZE`` values reshaped (tests/test_packing.py checks it against Keras).
    """
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    import jax
    from hhscan.learning import branch_values

    if not branch_values.draws_by_position():
        yield
        return
    jax_uniform = jax.random.uniform  # what Keras' JAX backend calls, looked up at each call

    def uniform(key, shape=(), dtype=float, minval=0.0, maxval=1.0, **kwargs):
        size = math.prod(shape)
        drawn = jax_uniform(key, (max(UNIFORM_DRAW_SIZE, 1 << max(size - 1, 0).bit_length()),), dtype, minval,
                            maxval, **kwargs)  # fmt: skip
        return jax.numpy.asarray(np.asarray(drawn)[:size].reshape(shape))  # sliced on the host: no compile per shape

    jax.random.uniform = uniform
    try:
        yield
    finally:
        jax.random.uniform = jax_uniform


def n_outputs(n_classes: int) -> int:
    """One sigmoid column for two classes (P(signal)), one softmax column per class otherwise."""
    return 1 if n_classes == 2 else n_classes


def call_model_function(spec: str, source: str, hyperparameters: dict[str, Any], n_features: int, n_classes: int):
    """``build(n_inputs, n_outputs, **the trial's model hyperparameters)``, checked to be a ``keras.Model``."""
    import keras
    from hhscan.settings import model_function

    build = model_function.load_function(spec)
    net = build(n_features, n_outputs(n_classes), **model_function.arguments(spec, source, hyperparameters))
    if not isinstance(net, keras.Model):
        raise ModelError(f"{build.__name__}() returned {type(net).__name__}, not a keras.Model")
    return net


def build_own_model(spec: str, source: str, hyperparameters: dict[str, Any], n_features: int, n_classes: int,
                    mean: np.ndarray, variance: np.ndarray):  # fmt: skip
    """Input → the training split's ``Normalization`` → the user's model, as one Keras model (saved whole)."""
    import keras

    inner = call_model_function(spec, source, hyperparameters, n_features, n_classes)
    inputs = keras.Input(shape=(n_features,), name="inputs")
    scaled = keras.layers.Normalization(mean=mean, variance=variance, name="scaler")(inputs)
    return keras.Model(inputs, inner(scaled), name="hhscan_own_model")


def check_model_function(spec: str, source: str, hyperparameters: dict[str, Any], n_features: int,
                         n_classes: int, events: int = 256) -> None:  # fmt: skip
    """Before any trial: the model, built with ``hyperparameters`` at its initial weights, maps one batch of
    standard-normal inputs (what the scaler gives) to finite class probabilities of the right shape."""
    from hhscan.settings import model_function

    _, function = model_function.split_spec(spec)
    net = call_model_function(spec, source, hyperparameters, n_features, n_classes)
    batch = np.random.default_rng(0).standard_normal((events, n_features)).astype(np.float32)
    scores = np.asarray(net(batch, training=False))
    wanted = n_outputs(n_classes)
    what = "one sigmoid column" if wanted == 1 else f"{wanted} softmax columns"
    if scores.ndim != 2 or scores.shape[1] != wanted:
        shown = ", ".join(["None", *map(str, scores.shape[1:])])
        raise ModelError(f"{function}() returned shape ({shown}) for {n_classes} classes: it must end in {what}")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ModelError(f"{function}() gives non-finite outputs at initialisation ({bad} of {scores.size} on "
                         f"standard-normal inputs)")  # fmt: skip
    sums = scores.sum(axis=1)
    if scores.min() < 0 or scores.max() > 1 or (wanted > 1 and not np.allclose(sums, 1.0, atol=1e-3)):
        raise ModelError(f"{function}() outputs are not class probabilities (values in [{scores.min():.3g}, "
                         f"{scores.max():.3g}], rows summing to [{sums.min():.3g}, {sums.max():.3g}]): it must end in "
                         f"{what}")  # fmt: skip


def make_optimizer(name: str, learning_rate: float, weight_decay: float | None = None):
    """The Keras optimizer of a trial, with exactly its learning rate and decoupled weight decay.

    ``weight_decay`` is hhscan's own hyperparameter, recorded and hashed where it is not the optimizer's default
    (0.004 for AdamW, as Keras and hhscan before the entry existed; 0 for the others). An optimizer at 0 gets Keras'
    ``None`` (no decay step at all), the same result. ``weight_decay=None``: the optimizer's default.
    """
    import keras

    classes = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "nadam": keras.optimizers.Nadam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adagrad": keras.optimizers.Adagrad,
        "adadelta": keras.optimizers.Adadelta,
        "adamax": keras.optimizers.Adamax,
    }
    kind = name.lower()
    if weight_decay is None:
        weight_decay = REGISTRY["weight_decay"].default_in({"optimizer": kind})
    decay = float(weight_decay)
    return classes[kind](learning_rate=float(learning_rate), weight_decay=decay if decay or kind == "adamw" else None)


def loss_name(n_classes: int) -> str:
    return "binary_crossentropy" if n_classes == 2 else "categorical_crossentropy"


def compile_model(model, hyperparameters: dict[str, Any], n_classes: int) -> None:
    """Attach the trial's optimizer and loss, so a saved model carries them (to fine-tune it later)."""
    model.compile(
        optimizer=make_optimizer(
            hyperparameters["optimizer"],
            hyperparameters["learning_rate"],
            hyperparameters.get("weight_decay"),
        ),
        loss=loss_name(n_classes),
    )


def targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Keras targets: the label itself for binary, one-hot for multi-class."""
    if n_classes == 2:
        return labels.astype(np.float32).reshape(-1, 1)
    return np.eye(n_classes, dtype=np.float32)[labels]


def predict(model, features: np.ndarray, batch_size: int = 65536, fold: np.ndarray | None = None) -> np.ndarray:
    """Scores: P(signal) per event for binary, class probabilities (N, C) for multi-class.

    ``model`` may be a k-fold bundle (:class:`FoldModels`): each event is then scored by the model of its ``fold``.
    """
    if isinstance(model, FoldModels):
        if fold is None:
            raise ModelError(f"{model.source}: a k-fold bundle scores an event only knowing its fold "
                             f"('{model.variable}')")  # fmt: skip
        return model.predict(features, fold, batch_size)
    scores = np.asarray(model.predict(features, batch_size=batch_size, verbose=0))
    return scores[:, 0] if scores.shape[1] == 1 else scores


class FoldModels:
    """The k models of a k-fold trial and their fold rule; scores each event with the model that was *tested* on
    the event's fold, and refuses (the guard) any event whose model trained or was validated on its fold."""

    def __init__(self, models: list, kfold: dict[str, Any], source: str = "k-fold bundle"):
        self.models, self.kfold, self.source = models, kfold, source
        self.folds, self.variable = int(kfold["folds"]), str(kfold["variable"])

    def model_for(self, fold: int, role: str = "test") -> int:
        """The index of the model whose ``role`` (test, or train for overtraining plots) holds ``fold``, checked
        against the roles written at training."""
        roles = self.kfold["roles"]
        chosen = fold if role == "test" else (fold + 1) % self.folds
        seen = roles[chosen]["train"] + roles[chosen]["validation"]
        if fold not in roles[chosen][role] or (role == "test" and fold in seen):
            raise ModelError(
                f"{self.source}: fold model {chosen} was not {'tested' if role == 'test' else 'trained'} on fold "
                f"{fold} (its roles: {roles[chosen]}): refusing to score those events with it"
            )
        return chosen

    def predict(
        self, features: np.ndarray, fold: np.ndarray, batch_size: int = 65536, role: str = "test"
    ) -> np.ndarray:
        fold = np.asarray(fold)
        if len(fold) != len(features):
            raise ValueError(f"{len(fold)} folds for {len(features)} events")
        if len(fold) and (fold.min() < 0 or fold.max() >= self.folds):
            raise ModelError(f"{self.source}: fold numbers outside [0, {self.folds})")
        scores = None
        for f in range(self.folds):
            mine = fold == f
            if not mine.any():
                continue
            part = predict(self.models[self.model_for(f, role)], features[mine], batch_size)
            if scores is None:
                scores = np.zeros((len(features), *part.shape[1:]), dtype=part.dtype)
            scores[mine] = part
        if scores is None:  # no events: the shape of one model's scores
            return predict(self.models[0], features[:0], batch_size)
        return scores


def scaler_statistics(features: np.ndarray, real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the training features (float64 accumulation). ``real`` (events × features) marks the
    values that are not a block's padding: only those count, so padding never moves a column's mean or variance;
    a column that is padding in every event keeps the statistics of its values (the pad: mean pad, variance 0)."""
    features64 = np.asarray(features, dtype=np.float64)
    if real is None:
        return features64.mean(axis=0), features64.var(axis=0)
    counts = real.sum(axis=0)
    real = np.where(counts > 0, real, True)  # all padding: its own values
    counts = real.sum(axis=0)
    mean = np.where(real, features64, 0.0).sum(axis=0) / np.maximum(counts, 1)
    variance = np.where(real, (features64 - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    return mean, variance


@functools.cache  # a process's devices do not change; records ask for it once per trial
def device_description() -> str:
    """The accelerator training runs on (e.g. 'gpu:NVIDIA H100 80GB HBM3', '2×gpu:…' for several) or the CPU
    and its core count ('cpu:2')."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = jax.devices()
        if devices[0].platform != "cpu":
            kind = "gpu" if devices[0].platform in ("gpu", "cuda", "rocm") else devices[0].platform
            return f"{len(devices)}×" * (len(devices) > 1) + f"{kind}:{devices[0].device_kind}"
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unknown")
            return f"{len(gpus)}×" * (len(gpus) > 1) + f"gpu:{name}"
    return f"cpu:{len(os.sched_getaffinity(0))}"


ALLOW_CPU = "HHSCAN_ALLOW_CPU"  # set to 1: train on the CPU even where the job was given GPUs
_NO_DEVICES = ("", "-1", "none", "nodevfiles")  # what Slurm and CUDA write for "no GPU"


def gpu_allocation(resources: dict[str, Any] | None = None) -> str | None:
    """Where this process was given GPUs, as ``NAME=value``; None when it was given none.

    Slurm writes ``SLURM_JOB_GPUS``/``SLURM_STEP_GPUS`` and ``CUDA_VISIBLE_DEVICES`` for a job with GPUs; the
    scan's ``gpus_per_node`` (or a ``gpu`` gres) counts inside a Slurm job only, since a local run ignores it.
    """
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None and value.strip().lower() not in _NO_DEVICES:
            return f"{name}={value}"
    if resources and os.environ.get("SLURM_JOB_ID"):
        for key, value in resources.items():
            bare = key.removeprefix("slurm_")
            if bare in ("gpus_per_node", "gpus_per_task", "gpus") and str(value) not in ("0", "None", ""):
                return f"slurm.resources.{key}={value}"
            if bare == "gres" and "gpu" in str(value):
                return f"slurm.resources.{key}={value}"
    return None


def check_device(resources: dict[str, Any] | None = None) -> str:
    """At job start: the device training will run on; fails at once where GPUs were given and the backend sees
    none (a CPU build of JAX/TensorFlow in a GPU job would train for hours on the CPU and say nothing)."""
    keras = import_keras()  # a scan process's first Keras import: without the extras it does not need

    device = device_description()
    given = gpu_allocation(resources)
    if given is None or not device.startswith("cpu:") or os.environ.get(ALLOW_CPU, "") not in ("", "0"):
        return device
    backend = keras.backend.backend()
    fix = (
        "install the GPU build: pip install 'hhscan[cuda]' (JAX with CUDA 12)"
        if backend == "jax"
        else "use training.backend: jax with pip install 'hhscan[cuda]', or install tensorflow[and-cuda] in place "
        "of tensorflow-cpu"
    )
    raise DeviceError(
        f"this job was given GPUs ({given}) but the {backend} backend sees none, only {device}: {fix}; "
        f"or set {ALLOW_CPU}=1 to train on the CPU"
    )
