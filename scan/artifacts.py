"""Model zips: the ``.keras`` model (scaler inside) and its metadata, in one self-contained file.

Inside names are fixed (``model.keras``, ``metadata.json``, ``config/…``), so renaming the zip changes nothing.
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


def write_model_zip(path: Path, keras_model, metadata: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        model_path = Path(directory) / MODEL_NAME
        keras_model.save(model_path)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_path, MODEL_NAME)
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
    if metadata.get("format") != FORMAT or MODEL_NAME not in names:
        raise ModelError(f"{path}: not an hhscan model zip (format {metadata.get('format')!r})")
    return metadata


def load_model_zip(path: Path):
    """The Keras model and its metadata; plain ``keras.saving.load_model`` on the extracted file."""
    import keras

    metadata = read_metadata(path)
    with tempfile.TemporaryDirectory() as directory, zipfile.ZipFile(path) as archive:
        archive.extract(MODEL_NAME, directory)
        keras_model = keras.saving.load_model(Path(directory) / MODEL_NAME)
    return keras_model, metadata
