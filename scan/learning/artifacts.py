"""Model zips: the ``.keras`` model (scaler inside) and its metadata, in one self-contained file.

Inside names are fixed (``model.keras``, ``metadata.json``, ``config/…``), so renaming the zip changes nothing. A
k-fold trial's zip is a bundle: ``fold0.keras`` … one model per fold, and the fold rule with each model's roles
(test, validation, training folds) in the metadata's ``kfold``.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hhscan.errors import ModelError
from hhscan.fileio import atomic_write_bytes

MODEL_NAME = "model.keras"
METADATA_NAME = "metadata.json"
FORMAT = "hhscan-model-1"


def fold_model_name(fold: int) -> str:
    return f"fold{fold}.keras"


def model_names(metadata: dict[str, Any]) -> list[str]:
    """The model files a zip must hold: one, or one per fold."""
    kfold = metadata.get("kfold")
    return [fold_model_name(f) for f in range(kfold["folds"])] if kfold else [MODEL_NAME]


def write_model_zip(path: Path, keras_model, metadata: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    """``keras_model`` is one model, or the list of fold models of a k-fold trial (``metadata['kfold']`` set)."""
    models = keras_model if isinstance(keras_model, list) else [keras_model]
    names = model_names(metadata)
    if len(names) != len(models):
        raise ValueError(f"{len(models)} models for the zip's {len(names)} model files")
    with tempfile.TemporaryDirectory() as directory:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, net in zip(names, models, strict=True):
                net.save(Path(directory) / name)
                archive.write(Path(directory) / name, name)
            archive.writestr(METADATA_NAME, json.dumps({"format": FORMAT, **metadata}, indent=1, sort_keys=True))
            for name, text in (extra or {}).items():
                archive.writestr(name, text)
    atomic_write_bytes(path, buffer.getvalue())


def read_metadata(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_NAME))
            names = archive.namelist()
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        raise ModelError(f"{path}: not an hhscan model zip (no {METADATA_NAME} inside)") from None
    if metadata.get("format") != FORMAT:
        raise ModelError(f"{path}: not an hhscan model zip (format {metadata.get('format')!r})")
    missing = [name for name in model_names(metadata) if name not in names]
    if missing:
        raise ModelError(f"{path}: the zip lacks {', '.join(missing)}")
    return metadata


MODEL_SOURCE = "config/model_source.py"  # an own model's source (``scandir.MODEL_SOURCE`` under ``config/``)


def uses_model_source(keras_file: Path) -> bool:
    """Whether a saved model names classes or functions of an own model's source (custom layers), which are
    saved under the module hhscan imported the source as (``model_function.load_function``)."""
    with zipfile.ZipFile(keras_file) as saved:
        return '"module": "hhscan_model_' in saved.read("config.json").decode()


def model_source_objects(archive: zipfile.ZipFile, directory: Path) -> dict[str, Any]:
    """The classes and functions of the zip's copy of the model source (imported under the module name it trained
    under), as Keras' ``custom_objects``: Keras imports no module outside its own packages when it loads."""
    import sys

    from hhscan.settings import model_function

    if MODEL_SOURCE not in archive.namelist():
        raise ModelError(f"{archive.filename}: the model uses custom classes but the zip holds no {MODEL_SOURCE}")
    source = archive.read(MODEL_SOURCE).decode()
    name = model_function.module_name(source)
    module = sys.modules.get(name)
    if module is None:
        archive.extract(MODEL_SOURCE, directory)
        module = model_function.import_source(name, directory / MODEL_SOURCE)
    return {key: value for key, value in vars(module).items() if getattr(value, "__module__", None) == name}


def load_model_zip(path: Path):
    """The Keras model (a ``model.FoldModels`` for a k-fold bundle) and its metadata; plain
    ``keras.saving.load_model`` on each extracted file."""
    import keras
    from hhscan.learning.model import FoldModels

    metadata = read_metadata(path)
    with tempfile.TemporaryDirectory() as directory, zipfile.ZipFile(path) as archive:
        models = []
        for name in model_names(metadata):
            archive.extract(name, directory)
            own = model_source_objects(archive, Path(directory)) if uses_model_source(Path(directory) / name) else None
            models.append(keras.saving.load_model(Path(directory) / name, custom_objects=own))
    if metadata.get("kfold"):
        return FoldModels(models, metadata["kfold"], str(path)), metadata
    return models[0], metadata
