"""The training arrays: samples read, selected, weighted, split and cached.

Reading is done once per process and shared by every trial; the cache file is keyed by a hash of everything
that shapes the arrays (file identities, trees, cuts, variables, weights, the split), so a changed configuration
can never read a stale cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from hhscan.data import metrics, split, weights
from hhscan.data.readers import branch_shapes, chunk_ranges, count_entries, entries_per_event, read_columns
from hhscan.errors import DataError
from hhscan.fileio import atomic_write_bytes
from hhscan.settings import expr
from hhscan.settings.config import InputVariable, Sample, SampleList, Significance, SplitSettings

CACHE_FORMAT = 5  # 5: blocks' real entries kept (the scaler ignores padding); 4: one-hot values checked
ADDED_COLUMNS = ("$sample", "$era", "$tag", "$class")


@dataclass
class SampleSummary:
    """What happened to one file: the numbers a physicist checks before trusting a training."""

    name: str
    file: str
    class_name: str
    era: str | None
    xsec: float | None
    event_weight_sum: float | None
    lumi: float
    entries: int
    selected: int
    dropped_non_positive: int
    used: int
    selected_weight_sum: float = 0.0  # Σ event weights passing the cut, negative ones included
    used_weight_sum: float = 0.0  # Σ event weights kept (> 0)
    learning_weight_sum: float = 0.0
    expected_events: float | None = None  # the sample's yield in the luminosity (None: no xsec or Σweights)


@dataclass
class SampleArrays:
    """One sample after reading and selection, before class equalisation."""

    sample: Sample
    features: np.ndarray
    feature_dtypes: list[str]
    event_weight: np.ndarray
    other: dict[str, np.ndarray]
    fingerprint: split.SelectionFingerprint
    summary: SampleSummary
    fold: np.ndarray | None = None  # k-fold: each kept event's fold (variable mod k)
    # Per one-hot input, the distinct values of its expression among the selected events.
    categories: dict[str, list[Any]] = field(default_factory=dict)
    block_counts: dict[str, np.ndarray] = field(default_factory=dict)  # per block: each kept event's real entries


@dataclass
class Dataset:
    """All training samples, concatenated; ``partition`` says train (0), validation (1) or test (2)."""

    features: np.ndarray
    labels: np.ndarray
    event_weight: np.ndarray
    yield_weight: np.ndarray  # expected events per event over its whole sample; NaN where the sample has no xsec
    learning_weight: np.ndarray
    sample_index: np.ndarray
    partition: np.ndarray
    other: dict[str, np.ndarray]
    feature_names: list[str]
    class_names: list[str]
    sample_names: list[str]
    split_checksum: str
    data_fingerprint: str
    summaries: list[SampleSummary] = field(default_factory=list)
    signal_classes: list[str] = field(default_factory=list)
    feature_dtypes: list[str] = field(default_factory=list)  # each input column's dtype as read (int stays int)
    input_separation: dict[str, float] = field(default_factory=dict)  # single-input AUC, folded to ≥ 0.5
    # k-fold: each event's fold and the number of folds. ``partition`` is then all TRAIN: each fold model sees its
    # own partition through ``fold_view``.
    fold: np.ndarray | None = None
    folds: int = 0
    significance: Significance = field(default_factory=Significance)  # the sample list's Z guard (not cached)
    # Blocks (inputs with a length): their layout (name, length, components, columns: their feature names in order,
    # entry-major) and each event's real entries (at most length; entries after them are padding).
    blocks: list[dict[str, Any]] = field(default_factory=list)
    block_counts: dict[str, np.ndarray] = field(default_factory=dict)

    def real_entries(self, partition: int) -> np.ndarray | None:
        """Which feature values of a partition's events are real, not a block's padding (None: all are)."""
        if not self.blocks:
            return None
        selected = self.partition == partition
        real = np.ones((int(selected.sum()), len(self.feature_names)), dtype=bool)
        for block in self.blocks:
            counts = self.block_counts[block["name"]][selected]
            entry = np.repeat(np.arange(block["length"]), block["components"])
            columns = [self.feature_names.index(c) for c in block["columns"]]
            real[:, columns] = entry[None, :] < counts[:, None]
        return real

    def fold_view(self, model_fold: int) -> Dataset:
        """The dataset as fold model ``model_fold`` sees it (arrays shared): its fold is the test partition, the
        next one the validation, the rest training; a plain train/validation/test dataset from then on."""
        if self.fold is None:
            raise ValueError("fold_view of a dataset without k-fold split")
        return replace(self, partition=split.fold_partition(self.fold, model_fold, self.folds), fold=None, folds=0)

    @property
    def signal_columns(self) -> list[int]:
        """Indices of the signal classes among the outputs (binary: class 1, the one score)."""
        return [i for i, name in enumerate(self.class_names) if name in self.signal_classes]

    def is_signal(self) -> np.ndarray:
        return np.isin(self.labels, self.signal_columns)

    def yield_problem(self) -> str | None:
        """Why physical yields (and so Z) cannot be computed, or None when every sample has them."""
        missing = [s.name for s in self.summaries if s.expected_events is None]
        if not missing:
            return None
        shown = ", ".join(missing[:4]) + (", …" if len(missing) > 4 else "")
        return f"no cross-section or Σweights for {shown}: physical yields unknown"

    def significance_scan(self, selected: np.ndarray, scores: np.ndarray) -> metrics.SignificanceScan:
        """Z against the cut on the signal score of the ``selected`` events (``scores``: theirs), physical yields,
        with the sample list's MC-statistics guard and background uncertainty."""
        return metrics.significance_scan(
            np.isin(self.labels[selected], self.signal_columns),
            metrics.signal_scores(scores, self.signal_columns),
            self.yields(selected),
            **self.significance.model_dump(),
        )

    def yields(self, selected: np.ndarray) -> np.ndarray:
        """Physical yields of the selected events, each sample scaled to its whole (see weights.partition_yields)."""
        return weights.partition_yields(self.yield_weight, self.sample_index, selected)

    def part(self, partition: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and learning weights of one partition."""
        selected = self.partition == partition
        # Row-major for training: batches are rows; the stored matrix is column-major (cheap to build).
        features = np.ascontiguousarray(self.features[selected])
        return features, self.labels[selected], self.learning_weight[selected]

    def mask(self, partition: int, sample: str | None = None) -> np.ndarray:
        selected = self.partition == partition
        if sample is not None:
            selected &= self.sample_index == self.sample_names.index(sample)
        return selected


def _needed_branches(
    sample_list: SampleList, sample: Sample, fold_variable: str | None = None
) -> tuple[list[expr.Expression], dict[str, str]]:
    """The parsed inputs, and every branch to read with what uses it (for error messages)."""
    parsed = [expr.parse(v.expr, where=f"{sample_list.source}:inputs") for v in sample_list.inputs]
    used_by: dict[str, str] = {}
    for kind, text in (("cut", sample.cut), ("weight", sample.weight), ("split.variable", fold_variable)):
        if text:
            used_by.update({b: f"{kind} '{text}'" for b in expr.parse(text).branches if b not in used_by})
    for expression in parsed:
        used_by.update({b: f"input '{expression.text}'" for b in expression.branches if b not in used_by})
    used_by.update({b: "other_variables" for b in sample_list.other_variables if b not in used_by})
    return parsed, {b: why for b, why in used_by.items() if b not in ADDED_COLUMNS}


CHUNK_ENTRIES = 200_000  # a file with jagged branches is read and reduced to per-event numbers about this many
# at a time (ranges end at the file's cluster boundaries, at most twice this: readers.chunk_ranges)


@dataclass
class _Evaluated:
    """Per event of the range read, the value of each expression (and which events lack an entry it indexes)."""

    entries: int = 0
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    missing: dict[str, list[np.ndarray]] = field(default_factory=dict)
    counts: dict[str, list[np.ndarray]] = field(default_factory=dict)  # blocks: real entries per event

    def add(self, key: str, values: np.ndarray, missing: np.ndarray | None = None) -> None:
        self.values.setdefault(key, []).append(values)
        self.missing.setdefault(key, []).append(np.zeros(len(values), bool) if missing is None else missing)

    def get(self, key: str) -> np.ndarray:
        return _joined(self.values[key])

    def lacking(self, key: str) -> np.ndarray:
        return _joined(self.missing[key])

    def real_counts(self, key: str) -> np.ndarray:
        return _joined(self.counts[key])


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The chunks' arrays as one; a file read in one chunk keeps its array (no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def check_shapes(
    sample_list: SampleList, sample: Sample, shapes: Mapping[str, expr.BranchShape], fold_variable: str | None = None
) -> None:
    """Jagged and fixed-size branches used where ROOT allows them, from the branch types alone (before any data is
    read): one line per misuse, naming the expression or branch."""
    where = f"{sample.path}:{sample.tree}"

    def entries(branch: str) -> str:
        shape = shapes.get(branch, expr.FLAT)
        return shape.describe() if shape.fixed else entries_per_event(sample.path, sample.tree, branch)

    for kind, text in (("cut", sample.cut), ("weight", sample.weight), ("split.variable", fold_variable)):
        if text:
            expr.parse(text).check_shapes(shapes, f"{where}: {kind}", entries=entries)
    for variable in sample_list.inputs:
        parsed = expr.parse(variable.expr)
        shape = parsed.check_shapes(shapes, f"{where}: input '{variable.name}'", variable.length is not None, entries,
                                    block_allowed=True)  # fmt: skip
        if variable.length is not None and shape.components != variable.components:
            raise DataError(
                f"{where}: block '{variable.name}': '{variable.expr}' has {shape.describe()}: give the block "
                f"components: {shape.components} (columns {variable.name}_<entry>_<component>)"
                if shape.components > 1
                else f"{where}: block '{variable.name}' has components: {variable.components}, but '{variable.expr}' "
                f"has one number per entry: drop components"
            )
    for name in sample_list.other_variables:
        if shapes.get(name, expr.FLAT).jagged:
            raise DataError(
                f"{where}: other_variables: {name} is jagged ({entries(name)}): other_variables are one number per "
                f"event; add {name}[0] or Sum$({name}) as an input, or drop it"
            )


def _read_evaluated(
    sample_list: SampleList,
    sample: Sample,
    parsed: list[expr.Expression],
    used_by: dict[str, str],
    entries: tuple[int, int] | None,
    kfold: tuple[int, str] | None,
    jagged: bool,
) -> _Evaluated:
    """Read the branches and evaluate every expression; a file with jagged branches in chunks of
    ``CHUNK_ENTRIES``, so only the per-event numbers of the whole range are ever held at once."""
    where = f"{sample.path}:{sample.tree}"
    start, stop = entries if entries is not None else (0, None)
    if jagged:
        total = count_entries(sample.path, sample.tree)
        stop = total if stop is None else min(stop, total)
        ranges = chunk_ranges(sample.path, sample.tree, start, stop, CHUNK_ENTRIES)
    else:
        ranges = [entries]
    result = _Evaluated()
    texts = {"cut": sample.cut, "weight": sample.weight, "fold": kfold[1] if kfold else None}
    added = {"$sample": sample.name, "$era": sample.era or "", "$tag": sample.tag, "$class": sample.class_name}
    for chunk in ranges:
        columns, n = read_columns(sample.path, sample.tree, list(used_by), used_by, chunk)
        result.entries += n
        for name, value in added.items():
            columns[name] = np.full(n, value)
        for key, text in texts.items():
            if text:
                try:
                    values, missing = expr.parse(text).evaluate_with_missing(columns, where)
                except (TypeError, ValueError) as error:
                    raise DataError(f"{where}: cannot evaluate cut or weight ({error})") from None
                result.add(key, np.broadcast_to(values, (n,)), None if missing is None else missing)
        for variable, expression in zip(sample_list.inputs, parsed, strict=True):
            key = f"input:{variable.name}"
            try:
                if variable.length is None:
                    values, missing = expression.evaluate_with_missing(columns, where)
                    result.add(key, np.broadcast_to(values, (n,)), missing)
                else:
                    block, counts = expression.evaluate_block(columns, variable.length, variable.pad, where)
                    result.add(key, block)
                    result.counts.setdefault(key, []).append(counts)
            except (TypeError, ValueError) as error:
                raise DataError(f"{where}: cannot evaluate input '{variable.expr}' ({error})") from None
        for name in sample_list.other_variables:
            result.add(f"other:{name}", np.asarray(columns[name]))
    return result


def _refuse_missing(expression_text: str, lacking: np.ndarray, relevant: np.ndarray, where: str, what: str) -> None:
    """Events that matter (``relevant``) lacking an entry the expression indexes: an error counting them."""
    count = int(np.count_nonzero(lacking & relevant))
    if count:
        raise DataError(expr.parse(expression_text).missing_message(count, int(relevant.sum()), where, what))


def read_sample(
    sample_list: SampleList,
    sample: Sample,
    apply_selection: bool = True,
    entries: tuple[int, int] | None = None,
    kfold: tuple[int, str] | None = None,
) -> SampleArrays:
    """Read one file (or an entry range of it): evaluate cut, weight and inputs (and with ``kfold`` = (folds,
    variable), each kept event's fold).

    With ``apply_selection`` (training), events with weight ≤ 0 are dropped and an empty selection is an error;
    without (applying a model), every event passing the cut is kept, whatever its weight.
    """
    parsed, used_by = _needed_branches(sample_list, sample, kfold[1] if kfold else None)
    where = f"{sample.path}:{sample.tree}"
    shapes = branch_shapes(sample.path, sample.tree, list(used_by), used_by)
    check_shapes(sample_list, sample, shapes, kfold[1] if kfold else None)  # before any data is read
    requested = entries
    evaluated = _read_evaluated(
        sample_list, sample, parsed, used_by, entries, kfold, any(s.jagged for s in shapes.values())
    )
    entries = evaluated.entries
    if requested is not None and entries and (requested[0] > 0 or entries == requested[1] - requested[0]):
        # A chunk of a larger file: the counts in its errors are the chunk's, so the message says which one.
        where += f" (entries {requested[0]}–{requested[0] + entries})"
    every = np.ones(entries, dtype=bool)
    if sample.cut:
        _refuse_missing(sample.cut, evaluated.lacking("cut"), every, f"{where}: cut", "events")
        selection = np.asarray(evaluated.get("cut"), dtype=bool)
    else:
        selection = every
    if sample.weight:
        _refuse_missing(
            sample.weight, evaluated.lacking("weight"), selection, f"{where}: weight", "events passing the cut"
        )
        try:
            event_weight = np.asarray(evaluated.get("weight")).astype(np.float64)
        except (TypeError, ValueError) as error:
            raise DataError(f"{where}: cannot evaluate cut or weight ({error})") from None
    else:
        event_weight = np.ones(entries)
    not_finite = int(np.count_nonzero(~np.isfinite(event_weight) & selection))
    if not_finite:  # an error in the expression, never an event to drop as "weight ≤ 0"
        raise DataError(
            f"{where}: weight '{sample.weight}' is NaN or infinite in {not_finite} of the {int(selection.sum())} "
            f"events passing the cut: fix the expression or cut those events away"
        )
    n_cut = int(np.count_nonzero(selection))
    cut_passing = selection
    if apply_selection and n_cut == 0:
        raise DataError(f"{where}: no event passes the cut '{sample.cut}' ({entries} entries)")
    positive = weights.positive_weight_mask(event_weight)
    if apply_selection:
        if not np.any(positive & selection):
            raise DataError(f"{where}: all {n_cut} selected events have weight ≤ 0 (weight '{sample.weight}')")
        selection = selection & positive
    features, dtypes, categories, block_counts = _features(sample_list, evaluated, selection, where)
    summary = SampleSummary(
        name=sample.name,
        file=str(sample.path),
        class_name=sample.class_name,
        era=sample.era,
        xsec=sample.xsec,
        event_weight_sum=sample.event_weight_sum,
        lumi=sample.lumi,
        entries=entries,
        selected=n_cut,
        dropped_non_positive=int(n_cut - np.count_nonzero(selection)) if apply_selection else 0,
        used=int(np.count_nonzero(selection)),
        selected_weight_sum=float(event_weight[cut_passing].sum()),
        used_weight_sum=float(event_weight[selection].sum()),
    )
    other = {name: evaluated.get(f"other:{name}")[selection] for name in sample_list.other_variables}
    fold = None
    if kfold is not None:
        _refuse_missing(kfold[1], evaluated.lacking("fold"), selection, f"{where}: split.variable", "selected events")
        values = evaluated.get("fold")
        fold = split.fold_numbers(np.asarray(values)[selection], kfold[0], f"{where}: split.variable '{kfold[1]}'")
    return SampleArrays(
        sample=sample,
        features=features,
        feature_dtypes=dtypes,
        event_weight=event_weight[selection],
        other=other,
        fingerprint=split.SelectionFingerprint.of(sample.path.stat().st_size, selection),
        summary=summary,
        categories=categories,
        fold=fold,
        block_counts=block_counts,
    )


def _features(
    sample_list: SampleList, evaluated: _Evaluated, selection: np.ndarray, where: str
) -> tuple[np.ndarray, list[str], dict[str, list[Any]], dict[str, np.ndarray]]:
    """The input columns (float32, column-major), each column's dtype as read (one-hot columns: uint8), per
    one-hot input the distinct values it took, and per block each selected event's real entries."""
    blocks = []
    dtypes: list[str] = []
    categories: dict[str, list[Any]] = {}
    block_counts: dict[str, np.ndarray] = {}
    for variable in sample_list.inputs:
        key = f"input:{variable.name}"
        if variable.length is not None:  # a block: entry-major columns name_0, name_1… (name_0_0, name_0_1… )
            values = evaluated.get(key)[selection]
            block_counts[variable.name] = evaluated.real_counts(key)[selection].astype(np.int32)
            for column in values.reshape(len(values), int(np.prod(values.shape[1:]))).T:
                blocks.append(column.astype(np.float32))
                dtypes.append(np.dtype(np.float32).str)
            continue
        _refuse_missing(variable.expr, evaluated.lacking(key), selection, f"{where}: input '{variable.name}'",
                        "selected events")  # fmt: skip
        values = evaluated.get(key)[selection]
        if variable.one_hot is None:
            if values.dtype.kind not in "biuf":
                raise DataError(f"{where}: input '{variable.expr}' is not numeric: one-hot encode it")
            blocks.append(values.astype(np.float32))
            dtypes.append("bool" if values.dtype.kind == "b" else values.dtype.str)
        else:
            numeric = values.dtype.kind in "biuf"
            _check_one_hot_values(variable.name, variable.one_hot, numeric, where)
            if not numeric:  # HDF5 text is bytes (b'2016'): compared, listed and named as the configuration's text
                values = values.astype(str)
            categories[variable.name] = np.unique(values).tolist()
            covered = np.zeros(values.shape, dtype=bool)
            for value in variable.one_hot:
                hot = _one_hot_match(values, value) if numeric else values == str(value)
                covered |= hot
                blocks.append(hot.astype(np.float32))
                dtypes.append(np.dtype(np.uint8).str)
            _check_every_event_has_a_category(variable, values, covered, where)
    # Column-major (events × inputs, Fortran order): each input is one contiguous copy, not a strided one.
    features = np.stack(blocks).T if blocks else np.empty((int(selection.sum()), 0), np.float32)
    finite = np.isfinite(features)
    if not finite.all():
        bad_column = int(np.flatnonzero(~finite.all(axis=0))[0])
        count = int((~finite[:, bad_column]).sum())
        name = sample_list.feature_names[bad_column]
        raise DataError(f"{where}: input '{name}' is NaN or infinite in {count} selected events; cut them away")
    return features, dtypes, categories, block_counts


def _check_every_event_has_a_category(
    variable: InputVariable, values: np.ndarray, covered: np.ndarray, where: str
) -> None:
    """An event whose value is none of the listed categories would get all-zero columns, an encoding the model may
    never have seen (a later sample from a new era): refused, never scored silently."""
    if covered.all():
        return
    outside = values[~covered]
    if outside.dtype.kind == "f" and not np.isfinite(outside).all():  # NaN is no category one_hot could list
        count = int(np.count_nonzero(~np.isfinite(outside)))
        raise DataError(
            f"{where}: one-hot input '{variable.name}' is NaN or infinite in {count} selected events; cut them away"
        )
    unlisted, counts = np.unique(outside, return_counts=True)
    listed = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in variable.one_hot or [])
    if variable.expr.strip() == "$era" and unlisted.tolist()[0] == "":  # sample.era None: no category to add
        raise DataError(
            f"{where}: one-hot input '{variable.name}' is $era, but the group of this file has no era: give it one "
            f"of [{listed}]"
        )
    more = f" (and {len(unlisted) - 1} other unlisted values)" if len(unlisted) > 1 else ""
    raise DataError(
        f"{where}: one-hot input '{variable.name}' is {unlisted.tolist()[0]!r} in {int(counts[0])} selected events, "
        f"none of its categories [{listed}]{more}: add it to one_hot (and retrain) or cut those events"
    )


def _one_hot_match(values: np.ndarray, value: float) -> np.ndarray:
    """Which numeric ``values`` are the category ``value``. Integers compare exactly; floats within 1e-6 relative,
    a float32 branch's rounding, where np.isclose's default 1e-5 would make 100000 the category 100001."""
    if values.dtype.kind in "biu":
        return values == value
    return np.isclose(values, float(value), rtol=1e-6)


def _check_one_hot_values(name: str, listed: list[Any], numeric: bool, where: str) -> None:
    """Text categories on a numeric input (or numbers on a text one) would silently match nothing."""
    if numeric:
        text = [v for v in listed if isinstance(v, str)]
        if text:
            raise DataError(
                f"{where}: one-hot input '{name}' is numeric but its one_hot lists the text {text[0]!r}: "
                f"list numbers (one_hot: [2, 3, 4])"
            )
    else:
        numbers = [v for v in listed if not isinstance(v, str)]
        if numbers:
            raise DataError(
                f"{where}: one-hot input '{name}' is text but its one_hot lists the number {numbers[0]}: "
                f'quote it (one_hot: ["{numbers[0]}"])'
            )


def check_categories(sample_list: SampleList, parts: list[SampleArrays]) -> None:
    """Every listed one-hot category must occur in the training samples: an all-zero column learns nothing."""
    for variable in sample_list.inputs:
        if variable.one_hot is None:
            continue
        present = sorted({value for part in parts for value in part.categories.get(variable.name, [])}, key=str)
        shown = ", ".join(repr(p) if isinstance(p, str) else str(p) for p in present[:12])
        shown += ", …" if len(present) > 12 else ""
        numbers = np.asarray([p for p in present if not isinstance(p, str)], dtype=np.float64)
        for value in variable.one_hot:
            found = value in present if isinstance(value, str) else bool(_one_hot_match(numbers, value).any())
            if not found:
                raise DataError(
                    f"{sample_list.source}:inputs: one-hot input '{variable.name}' lists the category {value!r}, "
                    f"which no training event has (values present: {shown})"
                )


def cache_key(sample_list: SampleList, split_settings: SplitSettings) -> str:
    """Hash of everything that shapes the arrays: config, file identities (path, size, mtime), split."""
    files = []
    for sample in sample_list.training_samples:
        stat = sample.path.stat() if sample.path.exists() else None
        identity = (stat.st_size, stat.st_mtime_ns) if stat else None
        files.append([sample.model_dump(mode="json"), identity])
    payload = {
        "format": CACHE_FORMAT,
        "config": sample_list.fingerprint_data(),
        "files": files,
        "split": split_settings.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_dataset(
    sample_list: SampleList,
    split_settings: SplitSettings,
    splits_dir: Path,
    cache_dir: Path | None = None,
) -> Dataset:
    """The dataset of the training samples; from the cache when nothing that shapes it changed."""
    key = cache_key(sample_list, split_settings)
    cache_path = cache_dir / f"{key}.npz" if cache_dir else None
    if cache_path is not None and cache_path.exists():
        dataset = _read_cache(cache_path)
        if _split_file_unchanged(splits_dir, split_settings, dataset):
            dataset.significance = sample_list.significance
            return dataset
    dataset = _build(sample_list, split_settings, splits_dir)
    dataset.significance = sample_list.significance
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _build(sample_list: SampleList, split_settings: SplitSettings, splits_dir: Path) -> Dataset:
    class_names = sample_list.class_names
    kfold = (split_settings.folds, split_settings.variable) if split_settings.kfold else None
    store = split.SplitStore(
        splits_dir,
        split_settings.name,
        (split_settings.train, split_settings.validation, split_settings.test),
        split_settings.seed,
        {"folds": kfold[0], "variable": kfold[1]} if kfold else None,
    )
    parts = [read_sample(sample_list, sample, kfold=kfold) for sample in sample_list.training_samples]
    check_categories(sample_list, parts)
    assignments = {p.sample.name: store.assignment(p.sample.name, p.fingerprint, p.fold) for p in parts}
    store.save()
    labels = np.concatenate([np.full(len(p.event_weight), class_names.index(p.sample.class_name), np.int32)
                             for p in parts])  # fmt: skip
    physics = np.concatenate(
        [
            weights.physics_weight(
                p.event_weight,
                is_signal=p.sample.is_signal,
                xsec=p.sample.xsec,
                lumi=p.sample.lumi,
                event_weight_sum=p.sample.event_weight_sum,
            )
            for p in parts
        ]
    )
    fold = np.concatenate([assignments[p.sample.name] for p in parts]) if kfold else None
    # k-fold: every event trains some fold model; class sums are equalised over all of them.
    partition = np.zeros(len(fold), np.int8) if kfold else np.concatenate([assignments[p.sample.name] for p in parts])
    learning = weights.equalise_classes(
        physics, labels, class_names, sample_list.class_weight_factors, reference=partition == split.TRAIN
    )
    yields = np.concatenate([_yield_weights(p, sample_list.units.factor) for p in parts])
    sample_index = np.concatenate([np.full(len(p.event_weight), i, np.int32) for i, p in enumerate(parts)])
    for i, p in enumerate(parts):
        p.summary.learning_weight_sum = float(learning[sample_index == i].sum())
        sample_yields = yields[sample_index == i]
        p.summary.expected_events = None if np.isnan(sample_yields).any() else float(sample_yields.sum())
    fingerprint = hashlib.sha256(
        json.dumps(
            [sample_list.fingerprint_data(), [[p.sample.name, asdict(p.fingerprint)] for p in parts]],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    features = np.concatenate([p.features.T for p in parts], axis=1).T  # stays column-major
    learning = learning.astype(np.float32)
    return Dataset(
        features=features,
        labels=labels,
        event_weight=np.concatenate([p.event_weight for p in parts]).astype(np.float32),
        yield_weight=yields,
        learning_weight=learning,
        sample_index=sample_index,
        partition=partition,
        other={n: np.concatenate([p.other[n] for p in parts]) for n in sample_list.other_variables},
        feature_names=sample_list.feature_names,
        class_names=class_names,
        sample_names=[p.sample.name for p in parts],
        split_checksum=split.checksum(assignments),
        data_fingerprint=fingerprint,
        summaries=[p.summary for p in parts],
        signal_classes=[c for c in class_names if c in sample_list.signal_classes],
        feature_dtypes=_common_dtypes([p.feature_dtypes for p in parts]),
        input_separation=input_separation(
            features, labels, learning, partition == split.TRAIN, sample_list.feature_names
        ),
        fold=fold,
        folds=kfold[0] if kfold else 0,
        blocks=block_layout(sample_list),
        block_counts={
            b["name"]: np.concatenate([p.block_counts[b["name"]] for p in parts]) for b in block_layout(sample_list)
        },
    )


def block_layout(sample_list: SampleList) -> list[dict[str, Any]]:
    """Each block input: name, length, components and its feature columns in order (entry-major). A model function
    takes the blocks of one length as one (events, length, Σ components) array:
    ``np.concatenate([x[:, idx].reshape(n, length, components) for each block], axis=2)``."""
    return [
        {"name": v.name, "length": v.length, "components": v.components, "columns": v.columns}
        for v in sample_list.inputs
        if v.length is not None
    ]


def _yield_weights(part: SampleArrays, unit_factor: float) -> np.ndarray:
    """Yield weights of a sample's kept events; NaN when it has no cross-section or Σweights.

    Negative-weight events are dropped for training; the kept events are scaled by Σw(selected) / Σw(kept) so that
    the sample's total yield after the cut is the signed one, as the full simulation predicts.
    """
    sample = part.sample
    if sample.xsec is None or not sample.event_weight_sum:
        return np.full(len(part.event_weight), np.nan)
    summary = part.summary
    correction = summary.selected_weight_sum / summary.used_weight_sum if summary.selected_weight_sum > 0 else 1.0
    return correction * weights.yield_weight(
        part.event_weight,
        xsec=sample.xsec,
        lumi=sample.lumi,
        event_weight_sum=sample.event_weight_sum,
        unit_factor=unit_factor,
    )


def _common_dtypes(per_sample: list[list[str]]) -> list[str]:
    """One dtype per input column: the samples' dtypes promoted together (an int in one file, float in another)."""
    return [np.result_type(*map(np.dtype, column)).str for column in zip(*per_sample, strict=True)]


LEAK_CHECK_EVENTS = 20_000  # an AUC near 0.99 is known to ±0.0005 from 20k events: plenty for a warning


def input_separation(
    features: np.ndarray, labels: np.ndarray, weight: np.ndarray, training: np.ndarray, names: list[str]
) -> dict[str, float]:
    """Each input's weighted AUC alone on the training split (one-vs-rest, the most separated class), ≥ 0.5.

    An input that alone separates the classes almost perfectly is a probable label leak. At most
    ``LEAK_CHECK_EVENTS`` training events are used (every k-th): the check costs ~0.2 s whatever the data size.
    """
    from hhscan.data import metrics

    index = np.flatnonzero(training)
    index = index[:: max(1, len(index) // LEAK_CHECK_EVENTS)]
    y, w = labels[index], weight[index]
    classes = np.unique(y)
    result = {}
    for column, name in enumerate(names):
        x = features[index, column]
        aucs = [metrics.weighted_auc(y == k, x, w) for k in (classes[-1:] if len(classes) == 2 else classes)]
        result[name] = round(max(max(a, 1 - a) for a in aucs), 6)
    return result


def probable_leaks(dataset: Dataset, threshold: float, allowed: list[str]) -> dict[str, float]:
    """Inputs whose single-input AUC is ≥ ``threshold`` (or ≤ 1 − threshold), not acknowledged in ``allowed``."""
    return {n: a for n, a in dataset.input_separation.items() if a >= threshold and n not in allowed}


_ARRAYS = (
    "features",
    "labels",
    "event_weight",
    "yield_weight",
    "learning_weight",
    "sample_index",
    "partition",
)


def _write_cache(path: Path, dataset: Dataset) -> None:
    meta: dict[str, Any] = {
        "feature_names": dataset.feature_names,
        "class_names": dataset.class_names,
        "sample_names": dataset.sample_names,
        "split_checksum": dataset.split_checksum,
        "data_fingerprint": dataset.data_fingerprint,
        "summaries": [asdict(s) for s in dataset.summaries],
        "other": list(dataset.other),
        "signal_classes": dataset.signal_classes,
        "feature_dtypes": dataset.feature_dtypes,
        "input_separation": dataset.input_separation,
        "folds": dataset.folds,
        "blocks": dataset.blocks,
    }
    arrays = {name: getattr(dataset, name) for name in _ARRAYS}
    arrays.update({f"block/{name}": counts for name, counts in dataset.block_counts.items()})
    if dataset.fold is not None:
        arrays["fold"] = dataset.fold
    arrays.update({f"other/{name}": values for name, values in dataset.other.items()})
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.array(json.dumps(meta)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_cache(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["__meta__"]))
        arrays = {name: stored[name] for name in _ARRAYS}
        other = {name: stored[f"other/{name}"] for name in meta["other"]}
        fold = stored["fold"] if "fold" in stored.files else None
        block_counts = {block["name"]: stored[f"block/{block['name']}"] for block in meta["blocks"]}
    return Dataset(
        **arrays,
        other=other,
        feature_names=meta["feature_names"],
        class_names=meta["class_names"],
        sample_names=meta["sample_names"],
        split_checksum=meta["split_checksum"],
        data_fingerprint=meta["data_fingerprint"],
        summaries=[SampleSummary(**s) for s in meta["summaries"]],
        signal_classes=meta["signal_classes"],
        feature_dtypes=meta["feature_dtypes"],
        input_separation=meta["input_separation"],
        fold=fold,
        folds=meta["folds"],
        blocks=meta["blocks"],
        block_counts=block_counts,
    )


def _split_file_unchanged(splits_dir: Path, settings: SplitSettings, dataset: Dataset) -> bool:
    """A cached dataset is only valid while the persisted split it was made with is unchanged."""
    npz_path = splits_dir / f"{settings.name}.npz"
    if not npz_path.exists() or not (splits_dir / f"{settings.name}.json").exists():
        return False
    stored = split.read_assignments(npz_path)
    actual = split.checksum({n: stored[n] for n in dataset.sample_names if n in stored})
    return actual == dataset.split_checksum
