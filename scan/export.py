"""``hhscan export``: a model zip as ONNX (CMSSW, Athena: ONNX Runtime) or a TensorFlow SavedModel, checked.

The export goes through Keras' own ``Model.export`` on the TensorFlow backend. The input scaler stays inside the
exported graph: Keras' ``Normalization`` keeps its statistics as constants that the ONNX converter turns into graph
*inputs*, so the export model carries the same scaling as a fixed linear layer, diag(1/σ)·x − μ/σ, which is what
``Normalization`` computes (σ = max(√variance, ε)). Before anything is reported, the exported model is run on the
model's own test split (ONNX Runtime, or TensorFlow for a SavedModel) and compared with Keras: above ``TOLERANCE`` the
export is removed and refused. A JSON file beside it names the inputs in order (with their expressions), the outputs
and the model's provenance.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hhscan import artifacts, model
from hhscan.errors import HhscanError, ModelError
from hhscan.fileio import atomic_write_text

FORMATS = ("onnx", "saved_model")
PROVENANCE = ("scan", "trial_id", "split_checksum", "data_fingerprint", "code_version", "hyperparameters")
TOLERANCE = 1e-5  # max |Δscore|: float32 arithmetic in another order differs by ~1e-7


@dataclass
class ExportResult:
    path: Path
    description: Path
    max_abs_difference: float
    events_checked: int


def check_format(file_format: str) -> None:
    if file_format not in FORMATS:
        raise HhscanError(f"--format must be one of {', '.join(FORMATS)}, not '{file_format}'")


def export_model(
    zip_path: Path, file_format: str, directory: Path, test_features: np.ndarray, tolerance: float = TOLERANCE
) -> ExportResult:
    """Export the model in ``zip_path`` to ``directory`` and check it on ``test_features`` against Keras.

    Needs Keras on the TensorFlow backend in this process (``hhscan export`` selects it before importing Keras).
    """
    import keras

    check_format(file_format)
    if keras.backend.backend() != "tensorflow":
        raise HhscanError(
            f"export needs Keras on the TensorFlow backend, this process runs '{keras.backend.backend()}': "
            f"run 'hhscan export' (a fresh process)"
        )
    keras_model, metadata = artifacts.load_model_zip(zip_path)
    exportable = _with_folded_scaler(keras_model)
    directory.mkdir(parents=True, exist_ok=True)
    stem = Path(zip_path).stem
    target = directory / (f"{stem}.onnx" if file_format == "onnx" else f"{stem}_saved_model")
    _remove(target)
    try:
        if file_format == "onnx":
            exportable.export(str(target), format="onnx", verbose=False)
            exported = _onnx_scores(target, test_features)
        else:
            exportable.export(str(target), format="tf_saved_model", verbose=False)
            exported = _saved_model_scores(target, test_features)
        reference = np.asarray(keras_model.predict(test_features, batch_size=65536, verbose=0))
        difference = float(np.max(np.abs(exported.reshape(reference.shape) - reference)))
        if not difference <= tolerance:  # NaN too
            raise ModelError(
                f"{zip_path}: the {file_format} export differs from Keras by up to {difference:.3g} on "
                f"{len(test_features)} test events (allowed {tolerance:g}): nothing was written"
            )
    except BaseException:
        _remove(target)
        raise
    description = directory / f"{target.name}.json"
    atomic_write_text(description, json.dumps(_description(metadata, zip_path, target, difference,
                                                            len(test_features)), indent=1))  # fmt: skip
    return ExportResult(target, description, difference, len(test_features))


def _with_folded_scaler(keras_model):
    """The same network with the ``Normalization`` scaler as a fixed Dense layer (exports as plain MatMul + Add)."""
    import keras

    scaler = keras_model.get_layer("scaler")
    mean = np.ravel(keras.ops.convert_to_numpy(scaler.mean)).astype(np.float64)
    variance = np.ravel(keras.ops.convert_to_numpy(scaler.variance)).astype(np.float64)
    scale = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
    n_features = len(mean)
    inputs = keras.Input(shape=(n_features,), name="inputs")
    folded = keras.layers.Dense(n_features, name="scaler", trainable=False)
    x = folded(inputs)
    folded.set_weights([np.diag(scale).astype(np.float32), (-mean * scale).astype(np.float32)])
    following = keras_model.layers[keras_model.layers.index(scaler) + 1 :]
    for layer in following:
        x = layer(x)
    exportable = keras.Model(inputs, x, name=keras_model.name)
    exportable(np.zeros((1, n_features), np.float32))  # Keras exports only models that were called
    return exportable


def _onnx_scores(path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.ascontiguousarray(features, dtype=np.float32)})[0])


def _saved_model_scores(path: Path, features: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(features, dtype=tf.float32)))


def _description(metadata: dict, zip_path: Path, target: Path, difference: float, events: int) -> dict:
    from hhscan.apply import load_model_config

    _, sample_list = load_model_config(zip_path)
    expressions = {}
    for variable in sample_list.inputs:
        for column, value in zip(variable.columns, variable.one_hot or [None], strict=True):
            expressions[column] = variable.expr if value is None else f"({variable.expr}) == {value!r}"
    classes = metadata["class_names"]
    outputs = ["score"] if len(classes) == 2 else [f"score_{name}" for name in classes]
    return {
        "file": target.name,
        "inputs": [
            {"index": i, "name": name, "expression": expressions.get(name, name)}
            for i, name in enumerate(metadata["feature_names"])
        ],
        "input_shape": ["batch", len(metadata["feature_names"])],
        "input_dtype": "float32",
        "scaler": "inside the model (unscaled inputs in, as read from the files)",
        "outputs": outputs,
        "output_meaning": "P(signal) (binary)" if len(classes) == 2 else "class probabilities (softmax)",
        "class_names": classes,
        "signal_classes": metadata.get("signal_classes", []),
        "provenance": {key: metadata.get(key) for key in PROVENANCE},
        "check": {"against": "Keras on the model's test split", "events": events, "max_abs_difference": difference},
        "source": str(zip_path),
    }


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def model_test_features(zip_path: Path, workspace) -> np.ndarray:
    """The model's own test events (from the persisted split named in its configuration)."""
    from hhscan.apply import load_model_config
    from hhscan.dataset import load_dataset
    from hhscan.split import TEST

    metadata = artifacts.read_metadata(zip_path)
    parameters, sample_list = load_model_config(zip_path)
    dataset = load_dataset(sample_list, parameters.split, workspace.splits, workspace.cache)
    if dataset.split_checksum != metadata["split_checksum"]:
        raise ModelError(f"{zip_path}: the model's split {metadata['split_checksum']} is not the data's any more")
    return np.ascontiguousarray(dataset.features[dataset.partition == TEST])


def select_backend() -> None:
    """Before Keras is imported: the export runs on TensorFlow (Keras' ONNX path for JAX needs jax2onnx)."""
    model.choose_backend("tensorflow")
