"""Whole samples scored chunk by chunk into an output file, so memory stays flat in the number of events."""

from __future__ import annotations

from typing import Any

import numpy as np
from hhscan.data import weights
from hhscan.data.dataset import read_sample
from hhscan.data.readers import chunk_ranges, count_entries
from hhscan.errors import HhscanError
from hhscan.learning import model
from hhscan.results.outputs import OutputFile, input_columns, numeric_columns, score_columns
from hhscan.settings.config import Sample, SampleList


def score_whole_sample(
    keras_model: Any, metadata: dict, sample_list: SampleList, sample: Sample, writer: OutputFile, chunk_size: int
) -> int:
    """Score ``sample`` chunk by chunk into ``writer``'s temporary file, finished but not yet in place; the number of
    events written. ``keras_model``: a Keras model or a k-fold bundle (each event scored by its fold's model)."""
    total = count_entries(sample.path, sample.tree)
    written = 0
    rule = (keras_model.folds, keras_model.variable) if isinstance(keras_model, model.FoldModels) else None
    # Ranges ending at the file's cluster boundaries: a basket cut by two ranges would be decompressed twice.
    for start, stop in chunk_ranges(sample.path, sample.tree, 0, total, chunk_size):
        whole = start == 0 and stop >= total  # one chunk: its errors need not say which entries
        part = read_sample(sample_list, sample, apply_selection=False, entries=None if whole else (start, stop),
                           kfold=rule)  # fmt: skip
        if not len(part.features):
            continue
        scores = model.predict(keras_model, part.features, fold=part.fold)
        columns = input_columns(part.features, metadata["feature_names"], metadata.get("feature_dtypes", []))
        columns.update({k: v for k, v in part.other.items() if k not in columns})
        if not sample.is_data:  # real data has no event weight (and so no yield weight) to write
            columns["event_weight"] = part.event_weight.astype(np.float32)
        if not sample.is_data and sample.xsec is not None and sample.event_weight_sum:  # every weight kept
            columns["yield_weight"] = weights.yield_weight(
                part.event_weight, xsec=sample.xsec, lumi=sample.lumi, event_weight_sum=sample.event_weight_sum,
                unit_factor=sample_list.units.factor,
            ).astype(np.float32)
        columns.update(score_columns(scores, metadata["class_names"]))
        writer.append(numeric_columns(columns))
        written += len(part.features)
    if written == 0:
        raise HhscanError(f"{sample.path}:{sample.tree}: no event passes the cut '{sample.cut}'")
    writer.finish()
    return written
