"""``hhscan test``: a model applied to the persisted test split, or to whole samples, written as ROOT or HDF5.

This module puts the steps together; each job has its own module: which samples may be scored whole
(``later_samples``), the output files and their columns (``outputs``), whole samples streamed in chunks
(``streaming``), the test split's metrics (``evaluation``) and plots (``evaluation_plots``), and the k-fold view of
the test split (``kfold_view``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hhscan.data.dataset import Dataset, load_dataset
from hhscan.data.split import TEST
from hhscan.errors import HhscanError, ModelError
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts, model
from hhscan.results.evaluation import metrics_of_test_split
from hhscan.results.evaluation_plots import evaluation_plots
from hhscan.results.kfold_view import kfold_scoring_view
from hhscan.results.later_samples import later_samples, selected_samples
from hhscan.results.outputs import OutputFile, columns_of_test_events, label_classes, yields_of_test_events
from hhscan.results.streaming import score_whole_sample
from hhscan.settings import config
from hhscan.settings.config import Parameters, Sample, SampleList

Step = Callable[[str], None]


@dataclass
class ApplyResult:
    model: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was not computed and why; the cut behind Z


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
    on_step: Step | None = None,
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
    parameters, trained = load_model_config(path)
    # Refuse unknown or training samples before loading the model (seconds), not after.
    if samples is not None:
        sample_list, selected, notes, twins = later_samples(path, metadata, trained, Path(samples), output_keys or [],
                                                            force)  # fmt: skip
    else:
        sample_list, notes = trained, []
        # A k-fold bundle scores its training samples whole: each event by the model tested on its fold.
        selected = selected_samples(trained, output_keys, force or bool(metadata.get("kfold"))) if output_keys else []
        twins = [sample for sample in selected if sample.training]
    if metadata.get("kfold") and twins:  # training events scored whole, once their folds are checked
        step("checking the events' folds against the persisted split")
        _training_dataset(path, metadata, parameters, trained, workspace)
    model.choose_backend("auto")  # a .keras model loads on any backend
    model.import_keras()
    step(f"loading the model {path.name}")
    keras_model, _ = artifacts.load_model_zip(path)
    model.keep_tensorflow_out()
    out_dir = Path(directory) if directory else workspace.models / path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ApplyResult(model=path, notes=notes)
    suffix = ".root" if file_format == "root" else ".h5"
    if output_keys:
        _score_whole_samples(result, keras_model, metadata, sample_list, selected, out_dir / "samples", suffix,
                             file_format, chunk_size, step)  # fmt: skip
        return result
    step("reading the samples and the split")
    dataset = _training_dataset(path, metadata, parameters, sample_list, workspace)
    step(f"scoring {len(dataset.features)} events")
    if isinstance(keras_model, model.FoldModels):
        dataset, scores = kfold_scoring_view(dataset, keras_model)
    else:
        scores = model.predict(keras_model, dataset.features)
    _write_test_split(result, dataset, scores, _group_keys(dataset, sample_list, parameters.split_name), out_dir,
                      suffix, file_format, step)  # fmt: skip
    result.metrics = metrics_of_test_split(dataset, scores)
    if problem := dataset.yield_problem():
        result.notes.append(f"significance not computed: {problem}")
    else:  # the cut, s and b behind test_significance, and the guard the cut obeys
        test = dataset.partition == TEST
        result.notes.append(f"test_significance: {dataset.significance_scan(test, scores[test]).describe()}")
    if plots:
        result.plots = evaluation_plots(dataset, scores, metadata, out_dir, step)
    return result


def _score_whole_samples(
    result: ApplyResult,
    keras_model,
    metadata: dict,
    sample_list: SampleList,
    selected: list[Sample],
    directory: Path,
    suffix: str,
    file_format: str,
    chunk_size: int,
    step: Step,
) -> None:
    """All or nothing: each sample is scored into a temporary file, and only once every one is complete are they put
    in place. A sample refused midway (a value outside the one-hot categories) leaves the files of an earlier run as
    they were. Whole samples have their own folder: a test-split file of the same sample never shares their name."""
    writers: list[OutputFile] = []
    try:
        for sample in selected:
            target = directory / f"{sample.name}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            step(f"scoring {sample.name} → {target}")
            writers.append(OutputFile(target, file_format))
            result.events[sample.name] = score_whole_sample(keras_model, metadata, sample_list, sample, writers[-1],
                                                            chunk_size)  # fmt: skip
            result.outputs[sample.name] = target
        for writer in writers:
            writer.commit()
    finally:
        for writer in writers:  # a committed file has no temporary left: nothing to remove
            writer.abort()


def _write_test_split(
    result: ApplyResult,
    dataset: Dataset,
    scores: np.ndarray,
    groups: np.ndarray,
    out_dir: Path,
    suffix: str,
    file_format: str,
    step: Step,
) -> None:
    """One file per sample, class or tag (``groups``: each event's) with its test events."""
    yields = yields_of_test_events(dataset)
    for key in sorted(set(groups)):
        selected = (dataset.partition == TEST) & (groups == key)
        target = out_dir / f"{key}{suffix}"
        step(f"writing {target}")
        writer = OutputFile(target, file_format, {"label_classes": label_classes(dataset.class_names)})
        try:
            writer.append(columns_of_test_events(dataset, scores, selected, yields))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        result.outputs[key] = target
        result.events[key] = int(selected.sum())


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
