"""``hhscan export``: a model zip as ONNX (CMSSW, Athena: ONNX Runtime) or a TensorFlow SavedModel, checked.

The export goes through Keras' own ``Model.export`` on the TensorFlow backend. The input scaler stays inside the
exported graph: Keras' ``Normalization`` keeps its statistics as constants that the ONNX converter turns into graph
*inputs*, so the export model carries the same scaling as a fixed linear layer, diag(1/σ)·x − μ/σ, which is what
``Normalization`` computes (σ = max(√variance, ε)). Before anything is reported, the exported model is run on the
model's own test split (ONNX Runtime, or TensorFlow for a SavedModel) and compared with Keras: above ``TOLERANCE`` the
export is refused. Exports are written under temporary names and moved into place after the check, so a refused
one leaves an earlier export of the same name as it was. A JSON file beside it names the inputs in order (with their
expressions), the outputs and the model's provenance. A k-fold bundle exports each fold model to its own file,
checked on the events of the fold it was tested on, and its JSON adds the fold rule (variable mod folds) and which
file scores which fold.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hhscan.errors import HhscanError, ModelError
from hhscan.fileio import atomic_write_text
from hhscan.learning import artifacts, model
from hhscan.settings.config import InputVariable

FORMATS = ("onnx", "saved_model")
PROVENANCE = ("scan", "trial_id", "split_checksum", "data_fingerprint", "code_version", "hyperparameters")
TOLERANCE = 1e-5  # max |Δscore|: float32 arithmetic in another order differs by ~1e-7


@dataclass
class ExportResult:
    paths: list[Path]  # one file (or SavedModel directory), or one per fold model of a k-fold bundle
    description: Path
    max_abs_difference: float
    events_checked: int

    @property
    def path(self) -> Path:
        return self.paths[0]


def check_format(file_format: str) -> None:
    if file_format not in FORMATS:
        raise HhscanError(f"--format must be one of {', '.join(FORMATS)}, not '{file_format}'")


def export_model(
    zip_path: Path,
    file_format: str,
    directory: Path,
    test_features: np.ndarray,
    tolerance: float = TOLERANCE,
    test_folds: np.ndarray | None = None,
) -> ExportResult:
    """Export the model in ``zip_path`` to ``directory`` and check it on ``test_features`` against Keras.

    A k-fold bundle becomes one export per fold model (``<stem>_fold<f>``), each checked on the events of the fold
    it was tested on (``test_folds``: each test event's fold), and one JSON with the fold rule. Needs Keras on the
    TensorFlow backend in this process (``hhscan export`` selects it before importing Keras).
    """
    import keras

    check_format(file_format)
    if keras.backend.backend() != "tensorflow":
        raise HhscanError(
            f"export needs Keras on the TensorFlow backend, this process runs '{keras.backend.backend()}': "
            f"run 'hhscan export' (a fresh process)"
        )
    loaded, metadata = artifacts.load_model_zip(zip_path)
    stem = Path(zip_path).stem
    suffix = ".onnx" if file_format == "onnx" else "_saved_model"
    jobs = _export_jobs(loaded, zip_path, directory, stem, suffix, test_features, test_folds)
    directory.mkdir(parents=True, exist_ok=True)
    description = directory / f"{stem}{suffix}.json"
    written = [target for _, _, target, _ in jobs]
    # Each export is written under a temporary name and moved into place only once every check passed: a refused
    # export leaves an earlier one of the same name as it was.
    token = secrets.token_hex(4)
    temporary = {target: target.with_name(f".{token}.{target.name}") for target in written}
    checks, accepted = [], False
    try:
        for fold, keras_model, target, features in jobs:
            difference = _export_and_check(keras_model, file_format, temporary[target], features)
            checks.append({"fold": fold, "file": target.name, "events": len(features),
                           "max_abs_difference": difference})  # fmt: skip
        difference = max(check["max_abs_difference"] for check in checks)
        events = sum(check["events"] for check in checks)
        if not difference <= tolerance:  # NaN too
            where = "" if len(checks) == 1 else f" (each fold model on its own test fold, {len(checks)} folds)"
            raise ModelError(
                f"{zip_path}: the {file_format} export differs from Keras by up to {difference:.3g} on "
                f"{events} test events{where} (allowed {tolerance:g}): nothing was written"
            )
        accepted = True
    finally:
        if not accepted:
            for path in temporary.values():
                _remove(path)
    for target, path in temporary.items():
        if path.is_dir():  # a SavedModel directory: a rename cannot replace a non-empty one
            _remove(target)
        path.replace(target)
    text = json.dumps(_description(metadata, zip_path, checks, difference, events), indent=1)
    atomic_write_text(description, text)
    return ExportResult(written, description, difference, events)


def _export_jobs(loaded, zip_path: Path, directory: Path, stem: str, suffix: str, features: np.ndarray,
                 folds: np.ndarray | None) -> list[tuple[int | None, object, Path, np.ndarray]]:  # fmt: skip
    """(fold, Keras model, target, its check events) for each export: one, or one per fold of a bundle."""
    if not isinstance(loaded, model.FoldModels):
        if len(features) == 0:
            raise ModelError(f"{zip_path}: no test events to check the export on")
        return [(None, loaded, directory / f"{stem}{suffix}", features)]
    if folds is None or len(folds) != len(features):
        raise ValueError("a k-fold bundle is checked knowing each test event's fold (test_folds)")
    folds = np.asarray(folds)
    outside = ~np.isin(folds, np.arange(loaded.folds))
    if outside.any():
        raise ModelError(f"{zip_path}: {int(outside.sum())} test events have folds outside [0, {loaded.folds})")
    jobs = []
    for fold in range(loaded.folds):
        # The model tested on this fold scores its events (model_for checks the roles written at training).
        index = loaded.model_for(fold)
        mine = features[folds == fold]
        if len(mine) == 0:
            raise ModelError(f"{zip_path}: fold {fold} has no events to check its model's export on")
        jobs.append((fold, loaded.models[index], directory / f"{stem}_fold{index}{suffix}", mine))
    return jobs


def _export_and_check(keras_model, file_format: str, target: Path, features: np.ndarray) -> float:
    """Export one Keras model (scaler folded in) and return max |Δscore| of the export against Keras."""
    exportable = _with_folded_scaler(keras_model)
    if file_format == "onnx":
        exportable.export(str(target), format="onnx", verbose=False)
        exported = _onnx_scores(target, features)
    else:
        exportable.export(str(target), format="tf_saved_model", verbose=False)
        exported = _saved_model_scores(target, features)
    reference = np.asarray(keras_model.predict(features, batch_size=65536, verbose=0))
    return float(np.max(np.abs(exported.reshape(reference.shape) - reference)))


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


def _description(metadata: dict, zip_path: Path, checks: list[dict], difference: float, events: int) -> dict:
    from hhscan.data.dataset import block_layout
    from hhscan.results.apply import load_model_config

    _, sample_list = load_model_config(zip_path)
    expressions = {}
    for variable in sample_list.inputs:
        if variable.length is not None:  # a block: entry i (component k) of its expression, the pad after the last
            expressions.update(block_expressions(variable))
            continue
        for column, value in zip(variable.columns, variable.one_hot or [None], strict=True):
            expressions[column] = variable.expr if value is None else f"({variable.expr}) == {value!r}"
    classes = metadata["class_names"]
    outputs = ["score"] if len(classes) == 2 else [f"score_{name}" for name in classes]
    kfold = metadata.get("kfold")
    files = {"files": [check["file"] for check in checks]} if kfold else {"file": checks[0]["file"]}
    description = {
        **files,
        "inputs": [
            {"index": i, "name": name, "expression": expressions.get(name, name)}
            for i, name in enumerate(metadata["feature_names"])
        ],
        "input_shape": ["batch", len(metadata["feature_names"])],
        # Blocks are plain columns of that one input, entry-major (name_0, name_1 … or name_0_0, name_0_1 …).
        "blocks": block_layout(sample_list),
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
    if kfold:
        k = int(kfold["folds"])
        description["kfold"] = {
            "variable": kfold["variable"],
            "folds": k,
            "rule": "variable mod folds",
            "note": f"the fold is in [0, {k}) for negative values too (Python/NumPy mod); in C++ with an integer "
            f"v: fold = ((v % {k}) + {k}) % {k}. Score an event only with the file of its fold: the other models "
            "trained or were validated on it",
            "file_for_fold": [{"fold": check["fold"], "file": check["file"]} for check in checks],
        }
        description["check"] = {
            "against": "Keras, each fold model on the events of its own test fold",
            "events": events,
            "max_abs_difference": difference,
            "folds": checks,
        }
    return description


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def model_test_events(zip_path: Path, workspace) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's own test events and, for a k-fold bundle, their folds: there every event is a test event, each
    of the model tested on its fold (the persisted fold assignment of the scan's split)."""
    from hhscan.data.dataset import load_dataset
    from hhscan.data.split import TEST
    from hhscan.results.apply import load_model_config

    metadata = artifacts.read_metadata(zip_path)
    parameters, sample_list = load_model_config(zip_path)
    dataset = load_dataset(sample_list, parameters.split, workspace.splits, workspace.cache)
    if dataset.split_checksum != metadata["split_checksum"]:
        raise ModelError(f"{zip_path}: the model's split {metadata['split_checksum']} is not the data's any more")
    kfold = metadata.get("kfold")
    if kfold:
        if dataset.fold is None or dataset.folds != kfold["folds"]:
            raise ModelError(f"{zip_path}: a {kfold['folds']}-fold bundle, but its data are not split into "
                             f"{kfold['folds']} folds")  # fmt: skip
        return np.ascontiguousarray(dataset.features), np.asarray(dataset.fold)
    return np.ascontiguousarray(dataset.features[dataset.partition == TEST]), None


def select_backend() -> None:
    """Before Keras is imported: the export runs on TensorFlow (Keras' ONNX path for JAX needs jax2onnx)."""
    model.choose_backend("tensorflow")


def block_expressions(variable: InputVariable) -> dict[str, str]:
    """Each column of a block input, described: ``Alt$(Jet_pt[i], pad)`` for a block of a bare branch; in words
    (``entry i of <expr>, <pad> where absent``, ``component k of entry i of <expr>, ...``) otherwise, since ROOT's
    TTreeFormula cannot index a parenthesised expression and no parser reads a two-index notation with a pad."""
    bare = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable.expr) is not None
    if variable.components == 1:
        return {
            f"{variable.name}_{i}": f"Alt$({variable.expr}[{i}], {variable.pad:g})"
            if bare
            else f"entry {i} of {variable.expr}, {variable.pad:g} where absent"
            for i in range(variable.length)
        }
    return {
        f"{variable.name}_{i}_{k}": f"component {k} of entry {i} of {variable.expr}, {variable.pad:g} where absent"
        for i in range(variable.length)
        for k in range(variable.components)
    }
