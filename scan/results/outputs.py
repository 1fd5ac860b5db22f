"""Scored events written as ROOT or HDF5: the output file, appended chunk by chunk, and the columns it holds.

Each output holds the inputs as read (unscaled: the scaler is inside the model), the other variables with their
dtypes, the event, learning and yield weights, and the scores (``score`` for binary, ``score_<class>`` otherwise).
Files are written under a temporary name and put in place when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hhscan.data.dataset import Dataset
from hhscan.data.split import TEST

TREE = "Events"


class OutputFile:
    """Chunks appended to one ROOT TTree (uproot ``mktree``) or one HDF5 group of datasets."""

    def __init__(self, path: Path, file_format: str, annotations: dict[str, str] | None = None):
        self.path = path
        self.format = file_format
        self.temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        self.handle = None
        self.tree = None
        # Text beside the events: a TObjString per key (ROOT), an attribute of the Events group (HDF5).
        self.annotations = annotations or {}

    def append(self, columns: dict[str, np.ndarray]) -> None:
        if self.format == "root":
            import uproot

            if self.handle is None:
                self.handle = uproot.recreate(self.temporary)
                self.tree = self.handle.mktree(TREE, {k: v.dtype for k, v in columns.items()})
            self.tree.extend(columns)
            return
        import h5py

        if self.handle is None:
            self.handle = h5py.File(self.temporary, "w")
            group = self.handle.create_group(TREE)
            for key, values in columns.items():
                group.create_dataset(key, data=values, maxshape=(None,), chunks=True)
            return
        group = self.handle[TREE]
        for key, values in columns.items():
            dataset = group[key]
            dataset.resize(len(dataset) + len(values), axis=0)
            dataset[-len(values) :] = values

    def finish(self) -> None:
        """Complete the temporary file (its annotations written, closed); :meth:`commit` puts it in place."""
        if self.handle is None:
            return
        for key, text in self.annotations.items():
            if self.format == "root":
                self.handle[key] = text
            else:
                self.handle[TREE].attrs[key] = text
        self.handle.close()
        self.handle = None

    def commit(self) -> None:
        if self.temporary.exists():
            self.temporary.replace(self.path)

    def close(self) -> None:
        self.finish()
        self.commit()

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        self.temporary.unlink(missing_ok=True)


def label_classes(class_names: list[str]) -> str:
    """What the integer ``label`` means: ``0:background;1:signal``."""
    return ";".join(f"{index}:{name}" for index, name in enumerate(class_names))


def input_columns(features: np.ndarray, names: list[str], dtypes: list[str]) -> dict[str, np.ndarray]:
    """The inputs as read: each column back in its own dtype (an integer branch stays an integer)."""
    dtypes = dtypes or ["<f4"] * len(names)
    return {name: features[:, i].astype(np.dtype(dtype)) for i, (name, dtype) in enumerate(zip(names, dtypes,
                                                                                               strict=True))}


def score_columns(scores: np.ndarray, class_names: list[str]) -> dict[str, np.ndarray]:
    """``score`` (binary: P(signal)), else ``score_<class>`` per output."""
    if scores.ndim == 1:
        return {"score": scores.astype(np.float32)}
    return {f"score_{name}": scores[:, k].astype(np.float32) for k, name in enumerate(class_names)}


def numeric_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns ROOT and HDF5 can hold as numbers (text columns left out), contiguous."""
    return {k: np.ascontiguousarray(v) for k, v in columns.items() if v.dtype.kind in "biuf"}


def yields_of_test_events(dataset: Dataset) -> np.ndarray:
    """Per event: its physical yield with the test split scaled to its whole sample (NaN where no xsec)."""
    test = dataset.partition == TEST
    result = np.full(len(test), np.nan)
    result[test] = dataset.yields(test)
    return result


def columns_of_test_events(
    dataset: Dataset, scores: np.ndarray, selected: np.ndarray, yields: np.ndarray
) -> dict[str, np.ndarray]:
    """The columns of the ``selected`` test events; ``yields``: every event's (``yields_of_test_events``)."""
    columns = input_columns(dataset.features[selected], dataset.feature_names, dataset.feature_dtypes)
    columns.update(numeric_columns({k: v[selected] for k, v in dataset.other.items() if k not in columns}))
    columns["event_weight"] = dataset.event_weight[selected]
    columns["learning_weight"] = dataset.learning_weight[selected]
    if dataset.yield_problem() is None:
        columns["yield_weight"] = yields[selected].astype(np.float32)
    columns["label"] = dataset.labels[selected]
    columns.update(score_columns(scores[selected], dataset.class_names))
    return numeric_columns(columns)
