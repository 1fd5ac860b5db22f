"""Which samples ``hhscan test --output`` may score whole, checked before the model loads or an event is read.

Samples of the model's own sample list, or of another one added after training (``--samples``): that list must
build every input the model needs the same way, and a sample reading a training sample's events (the same file,
however reached or copied, tree and cut) is refused unless ``--force``, so scoring it whole never hides overfitting.
"""

from __future__ import annotations

import ast
import filecmp
from collections.abc import Iterable
from pathlib import Path

from hhscan.data.dataset import read_sample
from hhscan.errors import ConfigError, HhscanError, ModelError, did_you_mean
from hhscan.settings import config, expr
from hhscan.settings.config import Sample, SampleList


def selected_samples(sample_list: SampleList, keys: Iterable[str], force: bool) -> list[Sample]:
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


def later_samples(
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
