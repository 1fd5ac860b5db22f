"""``hhscan test``: a model applied to the persisted test split, or to whole samples, written as ROOT or HDF5.

Each output holds the inputs as read (unscaled: the scaler is inside the model), the other variables with their
dtypes, the event and learning weights, and the scores (``score`` for binary, ``score_<class>`` otherwise).
Whole samples are streamed in chunks, so memory stays flat in the number of events; they may come from another
sample list added after training (``--samples``), whose data samples are written without weights. Files are
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import ast
import filecmp
import json
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from hhscan.data import metrics, weights
from hhscan.data.dataset import Dataset, load_dataset, read_sample
from hhscan.data.readers import count_entries
from hhscan.data.split import TEST, TRAIN
from hhscan.errors import ConfigError, HhscanError, ModelError, did_you_mean
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts, model
from hhscan.settings import config, expr
from hhscan.settings.config import Parameters, Sample, SampleList

TREE = "Events"


@dataclass
class ApplyResult:
    model: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was not computed and why; the cut behind Z


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


def _input_columns(features: np.ndarray, names: list[str], dtypes: list[str]) -> dict[str, np.ndarray]:
    """The inputs as read: each column back in its own dtype (an integer branch stays an integer)."""
    dtypes = dtypes or ["<f4"] * len(names)
    return {name: features[:, i].astype(np.dtype(dtype)) for i, (name, dtype) in enumerate(zip(names, dtypes,
                                                                                               strict=True))}


def _score_columns(scores: np.ndarray, class_names: list[str]) -> dict[str, np.ndarray]:
    if scores.ndim == 1:
        return {"score": scores.astype(np.float32)}
    return {f"score_{name}": scores[:, k].astype(np.float32) for k, name in enumerate(class_names)}


def _numeric(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in columns.items() if v.dtype.kind in "biuf"}


def load_model_config(path: Path) -> tuple[Parameters, SampleList]:
    try:
        with zipfile.ZipFile(path) as archive:
            snapshot = json.loads(archive.read("config/resolved.json"))
    except KeyError:
        raise ModelError(f"{path}: the zip holds no configuration (config/resolved.json)") from None
    return config.from_snapshot(snapshot)


def apply_model(
    workspace: Workspace,
    model_name: str,
    output_keys: list[str] | None = None,
    file_format: str = "root",
    directory: Path | None = None,
    force: bool = False,
    chunk_size: int = 200_000,
    plots: bool = True,
    on_step: Callable[[str], None] | None = None,
    samples: Path | None = None,
) -> ApplyResult:
    """``on_step`` is told each long step as it starts (loading, reading, scoring, writing, plotting).

    ``samples``: another sample list (added after training) whose samples or groups ``output_keys`` name; it must
    build the model's inputs the same way, and none of its samples may be a training sample of the model.
    """
    from hhscan.results.report import resolve_model

    step = on_step or (lambda _text: None)

    if file_format not in ("root", "h5"):
        raise HhscanError(f"--format must be root or h5, not '{file_format}'")
    path = resolve_model(workspace, model_name)
    metadata = artifacts.read_metadata(path)
    parameters, sample_list = load_model_config(path)
    # Refuse unknown or training samples before loading the model (seconds), not after. A k-fold bundle scores its
    # training samples whole (each event by the model tested on its fold) once the data are checked to fall in the
    # folds they trained in.
    kfold = bool(metadata.get("kfold"))
    trained = sample_list
    if samples is not None:
        sample_list, selected, notes, twins = _later_samples(path, metadata, trained, Path(samples), output_keys or [],
                                                             force)  # fmt: skip
    else:
        selected = _selected_samples(sample_list, output_keys, force or kfold) if output_keys else []
        notes, twins = [], [sample for sample in selected if sample.training]
    if kfold and twins:  # training events scored whole: each by its fold's model, once their folds are checked
        step("checking the events' folds against the persisted split")
        _training_dataset(path, metadata, parameters, trained, workspace)
    model.choose_backend("auto")  # a .keras model loads on any backend
    step(f"loading the model {path.name}")
    keras_model, _ = artifacts.load_model_zip(path)
    model.keep_tensorflow_out()
    out_dir = Path(directory) if directory else workspace.models / path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ApplyResult(model=path, notes=notes)
    suffix = ".root" if file_format == "root" else ".h5"
    if output_keys:
        # All or nothing: each sample is scored into a temporary file, and only once every one is complete are they
        # put in place. A sample refused midway (a value outside the one-hot categories) leaves the files of an
        # earlier run as they were.
        writers: list[OutputFile] = []
        try:
            for sample in selected:
                # Whole samples in their own folder: a test-split file of the same sample never shares their name.
                target = out_dir / "samples" / f"{sample.name}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                step(f"scoring {sample.name} → {target}")
                writers.append(OutputFile(target, file_format))
                result.events[sample.name] = _apply_streaming(keras_model, metadata, sample_list, sample, writers[-1],
                                                              chunk_size)  # fmt: skip
                result.outputs[sample.name] = target
            for writer in writers:
                writer.commit()
        finally:
            for writer in writers:  # a committed file has no temporary left: nothing to remove
                writer.abort()
        return result
    step("reading the samples and the split")
    dataset = _training_dataset(path, metadata, parameters, sample_list, workspace)
    step(f"scoring {len(dataset.features)} events")
    if isinstance(keras_model, model.FoldModels):
        dataset, scores = kfold_scoring_view(dataset, keras_model)
    else:
        scores = model.predict(keras_model, dataset.features)
    groups = _group_keys(dataset, sample_list, parameters.split_name)
    test_yields = _test_yields(dataset)
    for key in sorted(set(groups)):
        selected = (dataset.partition == TEST) & (groups == key)
        target = out_dir / f"{key}{suffix}"
        step(f"writing {target}")
        writer = OutputFile(target, file_format, {"label_classes": label_classes(dataset.class_names)})
        try:
            writer.append(_test_columns(dataset, scores, selected, test_yields))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        result.outputs[key] = target
        result.events[key] = int(selected.sum())
    result.metrics = _test_metrics(dataset, scores)
    if problem := dataset.yield_problem():
        result.notes.append(f"significance not computed: {problem}")
    else:  # the cut, s and b behind test_significance, and the guard the cut obeys
        test = dataset.partition == TEST
        result.notes.append(f"test_significance: {dataset.significance_scan(test, scores[test]).describe()}")
    if plots:
        result.plots = evaluation_plots(dataset, scores, metadata, sample_list, parameters, out_dir, step)
    return result


def _training_dataset(
    path: Path, metadata: dict, parameters: Parameters, sample_list: SampleList, workspace: Workspace
) -> Dataset:
    """The model's training samples read again, with the persisted split; refused unless it is the split the model
    was trained on (a split made again from changed data, e.g. shifted event numbers, puts events a model trained
    on among those it would score)."""
    dataset = load_dataset(sample_list, parameters.split, workspace.splits, workspace.cache)
    if dataset.split_checksum != metadata["split_checksum"]:
        raise ModelError(
            f"{path}: the model was trained on split {metadata['split_checksum']}, the data now give "
            f"{dataset.split_checksum} (split '{parameters.split.name}' in {workspace.splits}): "
            f"its test events are unknown"
        )
    if dataset.feature_names != metadata["feature_names"]:
        raise ModelError(f"{path}: inputs {metadata['feature_names']} differ from the data's {dataset.feature_names}")
    return dataset


def _group_keys(dataset: Dataset, sample_list: SampleList, split_name: str) -> np.ndarray:
    by_name = {s.name: s for s in sample_list.samples}
    if split_name == "sample":
        labels = dataset.sample_names
    elif split_name == "class":
        labels = [by_name[n].class_name for n in dataset.sample_names]
    else:
        labels = [by_name[n].tag for n in dataset.sample_names]
    return np.asarray(labels)[dataset.sample_index]


def _test_yields(dataset: Dataset) -> np.ndarray:
    """Per event: its physical yield with the test split scaled to its whole sample (NaN where no xsec)."""
    test = dataset.partition == TEST
    result = np.full(len(test), np.nan)
    result[test] = dataset.yields(test)
    return result


def _test_columns(
    dataset: Dataset, scores: np.ndarray, selected: np.ndarray, test_yields: np.ndarray
) -> dict[str, np.ndarray]:
    columns = _input_columns(dataset.features[selected], dataset.feature_names, dataset.feature_dtypes)
    columns.update(_numeric({k: v[selected] for k, v in dataset.other.items() if k not in columns}))
    columns["event_weight"] = dataset.event_weight[selected]
    columns["learning_weight"] = dataset.learning_weight[selected]
    if dataset.yield_problem() is None:
        columns["yield_weight"] = test_yields[selected].astype(np.float32)
    columns["label"] = dataset.labels[selected]
    columns.update(_score_columns(scores[selected], dataset.class_names))
    return _numeric(columns)


def _selected_samples(sample_list: SampleList, keys: Iterable[str], force: bool) -> list[Sample]:
    by_name = {s.name: s for s in sample_list.samples}
    selected = []
    for key in keys:
        if key not in by_name:
            raise HhscanError(
                f"--output {key}: no such sample in {sample_list.source.name} ({did_you_mean(key, by_name, 'samples')})"
            )
        sample = by_name[key]
        if sample.training and not force:
            raise HhscanError(
                f"--output {key}: this sample was used in training; scoring it whole would hide overfitting "
                f"(use 'hhscan test' for its test split, or --force)"
            )
        selected.append(sample)
    return selected


def _later_samples(
    model_path: Path, metadata: dict, trained: SampleList, path: Path, keys: list[str], force: bool
) -> tuple[SampleList, list[Sample], list[str], list[Sample]]:
    """The samples of a sample list added after training, checked before the model loads or an event is read.

    Returns that list with the model's own inputs (same names and expressions, in the model's order), the
    samples the keys name, notes on those that share events with a training sample, and the training samples
    scored whole (``force``).
    """
    other = config.load_sample_list(path, scoring=True)
    if not keys:
        names = ", ".join(s.name for s in other.samples[:12]) + (", …" if len(other.samples) > 12 else "")
        raise HhscanError(f"--samples {path}: name the samples to score with --output (samples: {names})")
    if trained.feature_names != metadata["feature_names"]:
        raise ModelError(f"{model_path}: its inputs {metadata['feature_names']} differ from its configuration's")
    _check_inputs(model_path, trained, other)
    other = other.model_copy(update={"inputs": trained.inputs})
    selected = _keyed_samples(other, keys)
    notes, twins = [], []
    for sample in selected:
        twin, overlapping = _training_twin(sample, trained)
        if twin is not None and not force:
            raise HhscanError(
                f"--output {sample.name}: sample '{sample.name}' of {other.source.name} reads the same file (or a "
                f"byte-identical copy), tree and cut as '{twin.name}', a training sample of {model_path.name}: scoring "
                f"it whole would hide overfitting (use --force to score it anyway)"
            )
        if twin is not None:
            twins.append(twin)
            notes.append(f"{sample.name}: the events of training sample '{twin.name}', scored whole (--force)")
        elif overlapping is not None:  # a cut need not exclude the training events: say so, do not guess
            notes.append(
                f"{sample.name}: reads the file and tree of training sample '{overlapping.name}' with another cut: "
                f"events that pass both cuts were trained on"
            )
    for sample in selected:
        # Zero entries: every branch the cut, weight, inputs and other variables use is looked up, none is read.
        read_sample(other, sample, apply_selection=False, entries=(0, 0))
    return other, selected, notes, twins


def _check_inputs(model_path: Path, trained: SampleList, other: SampleList) -> None:
    """Each input of the model, under its name, with the same expression (and one-hot values) in ``other``."""
    by_name = {variable.name: variable for variable in other.inputs}
    for needed in trained.inputs:
        mine = by_name.get(needed.name)
        if mine is None:
            raise ConfigError(
                f"{other.source}:inputs: no input '{needed.name}' ('{needed.expr}'), which {model_path.name} needs "
                f"({did_you_mean(needed.name, by_name, 'inputs')})"
            )
        if not _same_expression(mine.expr, needed.expr):
            raise ConfigError(
                f"{other.source}:inputs: input '{needed.name}' is '{mine.expr}' here, but {model_path.name} was "
                f"trained on '{needed.expr}'"
            )
        if mine.one_hot != needed.one_hot:
            raise ConfigError(
                f"{other.source}:inputs: input '{needed.name}' is one-hot on {mine.one_hot} here, but "
                f"{model_path.name} was trained on {needed.one_hot}"
            )


def _same_expression(first: str | None, second: str | None) -> bool:
    """Equal as parsed: spacing, redundant parentheses and && / and do not make two expressions differ."""
    if first is None or second is None:
        return first is second
    a, b = expr.parse(first), expr.parse(second)
    return ast.dump(a.tree) == ast.dump(b.tree) and list(a.placeholders.items()) == list(b.placeholders.items())


def _keyed_samples(sample_list: SampleList, keys: Iterable[str]) -> list[Sample]:
    """A key is a sample's name or a group's name (all its samples), in the order given, each sample once."""
    by_name = {s.name: [s] for s in sample_list.samples}
    by_group: dict[str, list[Sample]] = {}
    for sample in sample_list.samples:
        if sample.group is not None:
            by_group.setdefault(sample.group, []).append(sample)
    selected: dict[str, Sample] = {}
    for key in keys:
        found = by_name.get(key) or by_group.get(key)
        if found is None:
            candidates = [*by_name, *by_group]
            raise HhscanError(
                f"--output {key}: no such sample or group in {sample_list.source} "
                f"({did_you_mean(key, candidates, 'samples')})"
            )
        selected.update({s.name: s for s in found})
    return list(selected.values())


def _training_twin(sample: Sample, trained: SampleList) -> tuple[Sample | None, Sample | None]:
    """The model's training sample with the same file, tree and cut, whatever either is called; else one with the
    same file and tree but another cut."""
    overlapping = None
    for candidate in trained.training_samples:
        if candidate.tree != sample.tree or not _same_file(candidate.path, sample.path):
            continue
        if _same_expression(candidate.cut, sample.cut):
            return candidate, None
        overlapping = overlapping or candidate
    return None, overlapping


def _same_file(first: Path, second: Path) -> bool:
    """One file, however reached (relative or absolute, through '..', a symbolic or a hard link), or a byte-identical
    copy of it under another name: the same events, whatever the file is called."""
    if first.resolve() == second.resolve():
        return True
    if not (first.exists() and second.exists()):
        return False
    if first.samefile(second):
        return True
    # Sizes first: only a file of exactly the training file's size is read to compare.
    return first.stat().st_size == second.stat().st_size and filecmp.cmp(first, second, shallow=False)


def _apply_streaming(keras_model, metadata, sample_list, sample, writer: OutputFile, chunk_size) -> int:
    """Score ``sample`` chunk by chunk into ``writer``'s temporary file, finished but not yet in place."""
    total = count_entries(sample.path, sample.tree)
    written = 0
    for start in range(0, max(total, 1), chunk_size):
        rule = (keras_model.folds, keras_model.variable) if isinstance(keras_model, model.FoldModels) else None
        part = read_sample(sample_list, sample, apply_selection=False, entries=(start, start + chunk_size),
                           kfold=rule)  # fmt: skip
        if not len(part.features):
            continue
        scores = model.predict(keras_model, part.features, fold=part.fold)
        columns = _input_columns(part.features, metadata["feature_names"], metadata.get("feature_dtypes", []))
        columns.update({k: v for k, v in part.other.items() if k not in columns})
        if not sample.is_data:  # real data has no event weight (and so no yield weight) to write
            columns["event_weight"] = part.event_weight.astype(np.float32)
        if not sample.is_data and sample.xsec is not None and sample.event_weight_sum:  # every weight kept
            columns["yield_weight"] = weights.yield_weight(
                part.event_weight, xsec=sample.xsec, lumi=sample.lumi, event_weight_sum=sample.event_weight_sum,
                unit_factor=sample_list.units.factor,
            ).astype(np.float32)
        columns.update(_score_columns(scores, metadata["class_names"]))
        writer.append(_numeric(columns))
        written += len(part.features)
    if written == 0:
        raise HhscanError(f"{sample.path}:{sample.tree}: no event passes the cut '{sample.cut}'")
    writer.finish()
    return written


def _test_metrics(dataset: Dataset, scores: np.ndarray) -> dict[str, float]:
    """Weighted AUCs (learning weights) on train and test, and on test: signal vs each background class and sample.

    A headline AUC against all backgrounds together can hide a poor one against the hardest background.
    """
    result = {}
    for name, partition in (("train", TRAIN), ("test", TEST)):
        selected = dataset.partition == partition
        result[f"{name}_auc"] = metrics.multiclass_auc(dataset.labels[selected], scores[selected],
                                                       dataset.learning_weight[selected])  # fmt: skip
    test = dataset.partition == TEST
    signal = dataset.is_signal()
    score = metrics.signal_scores(scores, dataset.signal_columns)
    backgrounds = [(f"class {c}", dataset.labels == k) for k, c in enumerate(dataset.class_names)
                   if c not in dataset.signal_classes]  # fmt: skip
    samples = [(f"sample {n}", dataset.sample_index == i) for i, n in enumerate(dataset.sample_names)]
    backgrounds += [(name, mask) for name, mask in samples if not (mask & signal).any()]
    for name, mask in backgrounds:
        chosen = test & (signal | mask)
        if (chosen & mask).any() and (chosen & signal).any():
            key = f"test_auc_signal_vs_{name.replace(' ', '_')}"
            result[key] = metrics.weighted_auc(signal[chosen], score[chosen], dataset.learning_weight[chosen])
    if dataset.yield_problem() is None:
        result["test_significance"] = dataset.significance_scan(test, scores[test]).best_z
    return result


def evaluation_plots(
    dataset, scores, metadata, sample_list, parameters, out_dir: Path, on_step: Callable[[str], None] | None = None
) -> list[Path]:
    import pandas as pd
    from hhscan.results import plots as figures

    step = on_step or (lambda _text: None)
    step(f"plotting ROC and rejection → {out_dir}")

    signal_name = " + ".join(dataset.signal_classes)
    signal_scores = metrics.signal_scores(scores, dataset.signal_columns)
    is_signal = dataset.is_signal()
    w = dataset.learning_weight
    parts = {name: dataset.partition == p for name, p in (("train", TRAIN), ("test", TEST))}
    curves = {name: (is_signal[m], signal_scores[m], w[m]) for name, m in parts.items()}
    title = f"{signal_name} vs rest, weighted"
    paths = [
        figures.roc(curves, out_dir / "roc.png", title=title),
        figures.rejection(curves, out_dir / "rejection.png", title=title),
    ]
    by_class = {
        cls: {
            name: (signal_scores[m & (dataset.labels == k)], w[m & (dataset.labels == k)]) for name, m in parts.items()
        }
        for k, cls in enumerate(dataset.class_names)
    }
    step(f"plotting overtraining and significance → {out_dir}")
    paths.append(figures.overtraining(by_class, out_dir / "overtraining.png", f"P({signal_name})"))
    test = parts["test"]
    problem = dataset.yield_problem()
    # Physical yields of the test events, each sample scaled up to its whole (weights.partition_yields).
    z_scan = dataset.significance_scan(test, scores[test]) if problem is None else None
    paths.append(figures.significance(z_scan, out_dir / "significance.png", reason=problem))
    if scores.ndim == 2:
        predicted = scores[test].argmax(axis=1)
        n = len(dataset.class_names)
        matrix = np.zeros((n, n))
        np.add.at(matrix, (dataset.labels[test], predicted), w[test])
        matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
        paths.append(figures.confusion(matrix, dataset.class_names, out_dir / "confusion.png"))
    if metadata.get("history"):
        label = figures.hyperparameter_label(metadata["hyperparameters"], sorted(metadata["hyperparameters"]))
        paths.append(figures.learning_curves({label: metadata["history"]}, out_dir / "training.png"))
    step(f"plotting input distributions and correlations → {out_dir}")
    frame = pd.DataFrame(dataset.features, columns=dataset.feature_names)
    frame["class"] = np.asarray(dataset.class_names)[dataset.labels]
    frame["weight"] = w
    paths.append(figures.input_distributions(frame, dataset.feature_names, out_dir / "inputs.png"))
    for cls, part in frame.groupby("class"):
        paths.append(figures.correlations(part, dataset.feature_names, out_dir / f"correlation_{cls}.png", str(cls)))
    return paths


def kfold_scoring_view(dataset: Dataset, bundle: model.FoldModels) -> tuple[Dataset, np.ndarray]:
    """A k-fold dataset as ``hhscan test`` sees it, with its scores: every event once as a test event, scored by the
    fold model tested on its fold (the bundle's guard refuses any other), and once as a training event, scored by a
    fold model that trained on it (for the overtraining comparison). The training copies count as samples of their
    own with no yield, so test yields are whole-sample yields and written files hold each event once.
    """
    if dataset.fold is None or dataset.folds != bundle.folds:
        raise ModelError(f"{bundle.source}: a {bundle.folds}-fold bundle, but the data are split "
                         f"{'into ' + str(dataset.folds) + ' folds' if dataset.folds else 'by ratios'}")  # fmt: skip
    test_scores = bundle.predict(dataset.features, dataset.fold)
    train_scores = bundle.predict(dataset.features, dataset.fold, role="train")
    n_samples = len(dataset.sample_names)

    def twice(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, values])

    view = replace(
        dataset,
        features=twice(dataset.features),
        labels=twice(dataset.labels),
        event_weight=twice(dataset.event_weight),
        yield_weight=np.concatenate([dataset.yield_weight, np.zeros_like(dataset.yield_weight)]),
        learning_weight=twice(dataset.learning_weight),
        sample_index=np.concatenate([dataset.sample_index, dataset.sample_index + n_samples]),
        partition=np.repeat(np.array([TEST, TRAIN], np.int8), len(dataset.labels)),
        other={name: twice(values) for name, values in dataset.other.items()},
        sample_names=dataset.sample_names * 2,
        fold=twice(dataset.fold),
    )
    return view, np.concatenate([test_scores, train_scores])
