"""Training a pack of trials together: build, fused epochs, per-trial callbacks, checkpoints, evaluation.

Every trial of a pack keeps its own initial weights (its own seed), optimizer, learning rate, early stopping and
learning-rate schedule; all see the same batches, whose order depends only on the scan seed and the epoch — so a
trial's result does not depend on which pack it ran in, or on the pack size.

A checkpoint (a trial's weights and optimizer state, history, callback states — for k-fold, of all its fold
models) is one file per trial written atomically at an epoch end, so a job that is killed, times out or is
preempted resumes from that epoch, whatever pack the trial is put in next, and a trial's fold models always resume
together. It is written only while this attempt holds the trial's lease: an attempt that lost it stops training
that trial and writes nothing more for it.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hhscan.data import metrics
from hhscan.data.dataset import Dataset
from hhscan.data.split import TRAIN, VALIDATION
from hhscan.fileio import atomic_write_bytes, atomic_write_text
from hhscan.learning import callbacks, fused, model, packing
from hhscan.learning.trial import Trial
from hhscan.settings import criteria
from hhscan.settings.config import Parameters


@dataclass
class EpochProgress:
    """What a pack reports after each epoch: for live views and for ``hhscan status`` of a running job."""

    trial_ids: list[str]
    epoch: int  # epochs done, counting from 1
    epochs: int  # epochs planned
    active: list[bool]  # per trial: still training (False once it stopped early)
    seconds_per_epoch: float
    monitor: str  # the quantity ``best`` holds (the scan's eval criterion where it is logged per epoch)
    best: list[float | None] = field(default_factory=list)  # per trial, best value of ``monitor`` so far


EpochCallback = Callable[[EpochProgress], None]
# An adaptive search's pruner: (trial id, epoch from 1, the trial's history so far) → stop this trial now.
PruneCallback = Callable[[str, int, dict[str, list[float]]], bool]
# Whether this attempt still holds a trial's lease: (trial id, confirm on disk now) → held (``LeaseKeeper.holds``).
HoldsCallback = Callable[[str, bool], bool]


@dataclass
class TrainedTrial:
    model: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int | None  # counting from 1, of the monitored quantity (see ``best_epoch_monitor``)
    resumed_from_epoch: int | None
    seconds: float
    metrics: dict[str, float]
    diverged: str = ""  # why the trial diverged ("epoch 3: loss is nan"): it is a failure, never ranked
    folds: list[TrainedTrial] = field(default_factory=list)  # k-fold: each fold model's own result, in fold order
    pruned_epoch: int | None = None  # the epoch (from 1) after which the search's pruner stopped it
    # The early stopping and learning-rate settings it trained with: those it started with, kept on a resume.
    callback_settings: dict[str, Any] = field(default_factory=dict)
    superseded: bool = False  # another attempt took its lease: stopped, nothing of it may be written


def evaluate(dataset: Dataset, scores_by_partition: dict[int, np.ndarray]) -> dict[str, float]:
    """Every metric of the registry (``criteria.METRICS``) on the training and validation splits: learning weights,
    or physical yields for those that need them (absent when the samples have no cross-sections,
    ``Dataset.yield_problem`` says why). Keys: the metric's name, and its ``train_twin`` for the training split."""
    result: dict[str, float] = {}
    for training_split, partition in ((True, TRAIN), (False, VALIDATION)):
        selected = dataset.partition == partition
        y, w = dataset.labels[selected], dataset.learning_weight[selected]
        scores = scores_by_partition[partition]
        for entry in criteria.METRICS.values():
            if entry.compute is None or (entry.yields and dataset.yield_problem() is not None):
                continue
            compute = getattr(metrics, entry.compute)
            key = entry.train_twin if training_split else entry.name
            if entry.yields:  # at the best cut passing the sample list's MC-statistics guard
                result[key] = compute(dataset.significance_scan(selected, scores))
            else:
                result[key] = compute(y, scores, w)
    return result


def seed_everything(seed: int) -> None:
    """Python, NumPy and Keras seeds (``keras.utils.set_random_seed``), without importing TensorFlow on JAX."""
    import keras

    model.keep_tensorflow_out()
    keras.utils.set_random_seed(seed)


def _scores(outputs: np.ndarray) -> np.ndarray:
    """Engine outputs of one branch (N, outputs) as hhscan scores: (N,) for binary, (N, C) otherwise."""
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def epoch_order(n_events: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The training events' order in one epoch: the same for every trial of a scan, whatever its pack."""
    if not shuffle:
        return np.arange(n_events)
    return np.random.default_rng([seed, epoch]).permutation(n_events)


@dataclass
class _Branch:
    """The bookkeeping of one trial inside a pack."""

    trial: Trial
    history: dict[str, list[float]]
    early_stopping: callbacks.EarlyStopping | None
    reduce_lr: callbacks.ReduceLROnPlateau | None
    active: bool = True
    best_weights: list[np.ndarray] | None = None
    diverged: str = ""
    fold: int | None = None  # k-fold: which fold model of the trial this branch is
    pruned_epoch: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the callbacks' settings (a record's, on a resume too)

    def state(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial.id,
            "fold": self.fold,
            "settings": self.settings,
            "history": self.history,
            "active": self.active,
            "diverged": self.diverged,
            "pruned_epoch": self.pruned_epoch,
            "early_stopping": self.early_stopping.state() if self.early_stopping else None,
            "reduce_lr": self.reduce_lr.state() if self.reduce_lr else None,
        }


def _new_branch(trial: Trial, parameters: Parameters, fold: int | None = None) -> _Branch:
    settings = parameters.training
    es, rl = settings.early_stopping, settings.reduce_lr
    return _Branch(
        trial=trial,
        fold=fold,
        history={},
        early_stopping=callbacks.EarlyStopping(es.monitor, es.patience, es.min_delta, es.restore_best_weights)
        if es.enabled
        else None,
        reduce_lr=callbacks.ReduceLROnPlateau(rl.monitor, rl.factor, rl.patience, rl.min_lr) if rl.enabled else None,
        settings={"early_stopping": es.model_dump(mode="json"), "reduce_lr": rl.model_dump(mode="json")},
    )


def checkpoint_path(root: Path, trial_id: str) -> Path:
    """A trial's own checkpoint under ``root`` (all its fold models for k-fold, in one file): it follows the trial
    into whatever pack it runs next."""
    return root / trial_id / "checkpoint.npz"


def _save_checkpoints(root: Path, epoch: int, parts: list[_Part], trials: Sequence[Trial],
                      holds: HoldsCallback | None, lost: set[str]) -> None:  # fmt: skip
    """One file per trial, its fold models together (weights, optimizer state, history, callbacks), written
    atomically, and only while this attempt holds the trial's lease (checked on disk first)."""
    exported = [part.engine.export_state() for part in parts]
    for i, trial in enumerate(trials):
        if trial.id in lost or not _still_held(trial.id, parts, i, holds, lost, confirm=True):
            continue
        own: dict[str, np.ndarray] = {}
        for p, (part, arrays) in enumerate(zip(parts, exported, strict=True)):
            own.update({f"p{p}_b0_{key.split('_', 1)[1]}": value for key, value in arrays.items()
                        if key.startswith(f"b{i}_")})  # fmt: skip
            own.update({f"p{p}_best_{j}": weight for j, weight in enumerate(part.branches[i].best_weights or [])})
        state = {"epoch": epoch, "trial_id": trial.id, "branches": [part.branches[i].state() for part in parts]}
        own["__state__"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **own)
        atomic_write_bytes(checkpoint_path(root, trial.id), buffer.getvalue())


def _still_held(trial_id: str, parts: list[_Part], index: int, holds: HoldsCallback | None, lost: set[str],
                confirm: bool = False) -> bool:  # fmt: skip
    """Whether this attempt still holds the trial; one it lost is frozen (all its fold models) and marked lost."""
    if holds is None or holds(trial_id, confirm):
        return True
    lost.add(trial_id)
    for part in parts:
        part.branches[index].active = False
    return False


def checkpoint_epoch(root: Path | None, trial_id: str, folds: int = 0) -> int | None:
    """The last epoch (from 0) in a trial's checkpoint, or None: runners group trials that resume together.

    Silent about a checkpoint it cannot use: training the trial (``train_pack``) says so in the job log, once."""
    restored = _load_checkpoint(root, trial_id, folds, say=False)
    return None if restored is None else restored[0]["epoch"]


def _load_checkpoint(
    root: Path | None, trial_id: str, folds: int = 0, say: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A trial's checkpoint state and arrays, if it has one that belongs to it (and to as many fold models).

    ``say``: print why a checkpoint found is not resumed (the job log's one line per trial)."""
    path = None if root is None else checkpoint_path(root, trial_id)
    if path is None or not path.exists():
        # Before one file per trial, a k-fold trial had one file per fold model: never resumed, but said.
        earlier = [] if path is None else sorted(path.parent.glob("checkpoint-fold*.npz"))
        if earlier and say:
            _say_earlier_layout(trial_id, earlier[0].with_name("checkpoint-fold*.npz"))
        return None
    try:
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        state = json.loads(arrays.pop("__state__").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        # Checkpoints are written atomically, so this is damage from outside: the trial starts again from epoch 0
        # (a result is never built on a checkpoint that cannot be read), and the job log says so.
        if say:
            print(f"hhscan: trial {trial_id}: checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                  f"training it from epoch 1", flush=True)  # fmt: skip
        return None
    if "branch" in state:  # hhscan before one file per trial: no result is built on a layout it cannot check
        if say:
            _say_earlier_layout(trial_id, path)
        return None
    expected = list(range(folds)) if folds else [None]
    if state.get("trial_id") != trial_id or [b.get("fold") for b in state.get("branches", [])] != expected:
        return None
    return state, arrays


def _say_earlier_layout(trial_id: str, path: Path) -> None:
    print(f"hhscan: trial {trial_id}: checkpoint {path} is from an earlier hhscan; training it from epoch 1",
          flush=True)  # fmt: skip


def _build_pack(trials: Sequence[Trial], parameters: Parameters, n_classes: int, train: tuple, validation: tuple,
                data_owner: object | None = None, chunk: int | None = None, fold: int | None = None,
                real: np.ndarray | None = None):  # fmt: skip
    """Each trial's model (its own seed, optimizer built) and the engine that trains them together.

    ``data_owner`` (the dataset) lets every pack of a job share one copy of the data on the device. ``fold``: the
    models are that fold's models of the trials (their own seeds), on that fold's training events.
    """
    x_train = train[0]
    mean, variance = model.scaler_statistics(x_train, real)  # ``real``: blocks' padding does not count
    nets = []
    for trial in trials:
        seed_everything((parameters.seed + trial.seed_offset + (fold or 0) * 7919) % (2**31))
        net = model.build_trial_model(trial.hyperparameters, x_train.shape[1], n_classes, mean, variance,
                                      parameters.own_model)  # fmt: skip
        model.compile_model(net, trial.hyperparameters, n_classes)
        net.optimizer.build(net.trainable_variables)
        nets.append(net)

    def arrays(part):
        x, y, w = part
        return x, model.targets(y, n_classes), w.astype(np.float32)

    batch_sizes = [packing.batch_size(t) for t in trials]
    engine = fused.make_engine(nets, [n.optimizer for n in nets], model.loss_name(n_classes), arrays(train),
                               arrays(validation), data_owner, chunk, batch_sizes)  # fmt: skip
    return nets, engine


@dataclass
class _Part:
    """The branches trained by one engine on one set of events: the whole pack, or for k-fold one fold's models
    of all the pack's trials (they share that fold's training events exactly, so nothing is masked or wasted)."""

    view: Dataset
    branches: list[_Branch]
    nets: list[Any]
    engine: Any
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray, np.ndarray]


def _parts(trials: Sequence[Trial], dataset: Dataset, parameters: Parameters) -> list[_Part]:
    n_classes = len(dataset.class_names)
    views = [(dataset, None, dataset)] if not dataset.folds else [
        (dataset.fold_view(f), f, None) for f in range(dataset.folds)]  # fmt: skip
    parts = []
    for view, fold, owner in views:
        train, validation = view.part(TRAIN), view.part(VALIDATION)
        nets, engine = _build_pack(trials, parameters, n_classes, train, validation, owner, fold=fold,
                                   real=view.real_entries(TRAIN))  # fmt: skip
        branches = [_new_branch(t, parameters, fold) for t in trials]
        parts.append(_Part(view, branches, nets, engine, train, validation))
    return parts


def train_pack(
    trials: Sequence[Trial],
    dataset: Dataset,
    parameters: Parameters,
    checkpoint: Path | None = None,
    shuffle: bool = True,
    on_epoch: EpochCallback | None = None,
    prune: PruneCallback | None = None,
    holds: HoldsCallback | None = None,
) -> list[TrainedTrial]:
    """Train ``trials`` (one pack structure: the same epochs, batch sizes multiples of the smallest) as one fused
    pack; one result per trial, in order.

    ``checkpoint`` is a directory holding one checkpoint per trial (:func:`checkpoint_path`); the trials must
    resume from the same epoch (:func:`checkpoint_epoch`). A resumed trial keeps the early stopping and learning-rate
    schedule it started with (its result's ``callback_settings``). ``on_epoch`` is called after every epoch with the
    pack's progress (it must be cheap: it runs in the loop). ``prune`` (an adaptive search's pruner) is asked after
    every epoch but the last for each trial still training, with the trial's curve (for k-fold the mean over its
    folds, a fold that stopped early counted at the value of the weights it kept); a pruned trial is frozen as
    early stopping freezes it. ``holds`` (the lease keeper's) is asked after every epoch, and on disk before each
    checkpoint: a trial another attempt took is frozen, never checkpointed again, and its result ``superseded``.

    With a k-fold split each trial is k fold models. The fold-f models of all the pack's trials train as one fused
    engine on fold f's own training events (``Dataset.fold_view``), and the k engines step through the epochs
    together, so a pack checkpoints and resumes as one. A trial's result holds each fold's result in ``folds``
    and their mean as its metrics.
    """
    model.keep_tensorflow_out()
    started = time.perf_counter()
    structures = set(packing.pack_structures(trials))
    if len(structures) != 1:
        raise ValueError(f"a pack needs one number of epochs and batch sizes that are multiples of the smallest, "
                         f"got {sorted({packing.step_structure(t) for t in trials})}")  # fmt: skip
    ((_, epochs),) = structures
    batch_size = min(packing.batch_size(t) for t in trials)  # the engine's step: each epoch's table in its batches
    parts = _parts(trials, dataset, parameters)
    resumed = _resume(parts, trials, checkpoint, dataset.folds, epochs)
    lost: set[str] = set()
    interval = parameters.training.checkpoint_interval_s
    last_saved = time.monotonic()
    criterion = criteria.metric(parameters.eval_criterion)  # what the live view shows: logged every epoch
    monitor = criterion.name if criterion.per_epoch else "val_loss"
    branches = [b for part in parts for b in part.branches]
    for epoch in range(resumed or 0, epochs):
        if not any(b.active for b in branches):
            break
        epoch_started = time.perf_counter()
        for part in parts:
            _train_epoch(part, epoch, batch_size, parameters.seed, shuffle)
        for i, trial in enumerate(trials):
            _still_held(trial.id, parts, i, holds, lost)
        if prune is not None and epoch + 1 < epochs:
            _prune(parts, trials, epoch, prune)
        if checkpoint is not None and interval is not None and time.monotonic() - last_saved >= interval:
            _save_checkpoints(checkpoint, epoch, parts, trials, holds, lost)
            last_saved = time.monotonic()
        if on_epoch is not None:
            on_epoch(_progress(branches, epoch, epochs, time.perf_counter() - epoch_started, monitor))
    seconds = (time.perf_counter() - started) / len(trials)
    return _results(parts, trials, dataset, parameters, resumed, seconds, lost)


def _resume(parts: list[_Part], trials: Sequence[Trial], checkpoint: Path | None, folds: int,
            epochs: int) -> int | None:  # fmt: skip
    """Restore the trials that have a checkpoint; the epoch (from 0) they go on from, or None for a fresh pack."""
    restored = [_load_checkpoint(checkpoint, t.id, folds) for t in trials]
    if all(r is None for r in restored):
        return None
    epochs_saved = {r[0]["epoch"] if r is not None else None for r in restored}
    if len(epochs_saved) != 1:  # runners group trials by checkpoint epoch; a mixed pack is a caller's bug
        raise ValueError(f"a pack's trials resume from different epochs: {sorted(map(str, epochs_saved))}")
    for p, part in enumerate(parts):
        _restore(part, p, [r for r in restored if r is not None])
    first_epoch = epochs_saved.pop() + 1
    for trial in trials:  # the job log says so: a resumed trial is not a fresh one
        print(f"hhscan: resuming trial {trial.id} from epoch {first_epoch} ({first_epoch} of {epochs} done)",
              flush=True)  # fmt: skip
    return first_epoch


def _prune(parts: list[_Part], trials: Sequence[Trial], epoch: int, prune: PruneCallback) -> None:
    for i, trial in enumerate(trials):
        own = [part.branches[i] for part in parts]  # the trial's fold models (one without k-fold)
        if any(b.active for b in own) and prune(trial.id, epoch + 1, _pruning_history(own)):
            for branch in own:  # frozen, as early stopping freezes it
                branch.active, branch.pruned_epoch = False, epoch + 1


def _pruning_history(branches: list[_Branch]) -> dict[str, list[float]]:
    """A trial's curve as the pruner sees it: the mean over its fold models, where a fold model that stopped early
    goes on counting with the values of the epoch whose weights it keeps (so the trial is still judged)."""
    if len(branches) == 1:
        return branches[0].history
    length = max(len(b.history.get("loss", [])) for b in branches)
    padded = []
    for branch in branches:
        if branch.active or branch.diverged:  # a diverged fold fails the trial: nothing to carry on
            padded.append(branch.history)
            continue
        stopping = branch.early_stopping
        restores = stopping is not None and stopping.restore_best_weights and stopping.best is not None
        kept = stopping.best_epoch if restores else -1  # the epoch whose weights it keeps: its best, else its last
        padded.append({key: values + [values[kept]] * (length - len(values)) if values else values
                       for key, values in branch.history.items()})  # fmt: skip
    return mean_history(padded)


def _results(parts: list[_Part], trials: Sequence[Trial], dataset: Dataset, parameters: Parameters,
             resumed: int | None, seconds: float, lost: set[str]) -> list[TrainedTrial]:  # fmt: skip
    """Each trial's result, from the weights it keeps (early stopping's best where it restores them)."""
    per_part = []
    for part in parts:
        for k, branch in enumerate(part.branches):
            if branch.early_stopping and branch.early_stopping.restore_best_weights and branch.best_weights is not None:
                part.engine.set_branch_weights(k, branch.best_weights)
        part.engine.sync_to_models()
        x_train, x_val = part.train[0], part.validation[0]
        both = part.engine.predict(np.concatenate([x_train, x_val]))  # one call, one compiled shape
        outputs = [{TRAIN: both[k, : len(x_train)], VALIDATION: both[k, len(x_train) :]}
                   for k in range(len(part.branches))]  # fmt: skip
        # Each branch's monitor follows the callbacks it trained with (a resumed trial keeps its own).
        per_part.append([_result(b, part.nets[k], part.view, outputs[k], best_epoch_monitor(parameters, b.settings),
                                 resumed, seconds, b.trial.id in lost)
                         for k, b in enumerate(part.branches)])  # fmt: skip
    if not dataset.folds:
        return per_part[0]
    bundles = [[results[i] for results in per_part] for i in range(len(trials))]
    return [_fold_bundle(folds, best_epoch_monitor(parameters, folds[0].callback_settings)) for folds in bundles]


def _restore(part: _Part, index: int, restored: list) -> None:
    """A part's branches and engine from their trials' checkpoints (every trial has one: they are saved together).
    The callbacks are rebuilt with the settings the trial started with, as its record says."""
    arrays = part.engine.export_state()
    prefix = f"p{index}_b0_"
    for k, (branch, (state, saved)) in enumerate(zip(part.branches, restored, strict=True)):
        arrays.update({f"b{k}_{key[len(prefix):]}": value for key, value in saved.items() if key.startswith(prefix)})
        own = state["branches"][index]
        branch.history, branch.active = own["history"], own["active"]
        branch.diverged = own.get("diverged", "")
        branch.pruned_epoch = own.get("pruned_epoch")
        branch.settings = own["settings"]
        stopping, schedule = own["early_stopping"], own["reduce_lr"]
        branch.early_stopping = callbacks.EarlyStopping(**stopping) if stopping else None
        branch.reduce_lr = callbacks.ReduceLROnPlateau(**schedule) if schedule else None
        best = sorted((key for key in saved if key.startswith(f"p{index}_best_")), key=lambda n: int(n.split("_")[2]))
        branch.best_weights = [saved[key] for key in best] or None
    part.engine.import_state(arrays)


def _train_epoch(part: _Part, epoch: int, batch_size: int, seed: int, shuffle: bool) -> None:
    """One epoch of a part's active branches, then validation, logs and callbacks per branch."""
    active = np.array([b.active for b in part.branches])
    if not active.any():
        return
    x_train = part.train[0]
    _, y_val, w_val = part.validation
    table, counts = fused.batch_table(epoch_order(len(x_train), seed, epoch, shuffle), batch_size)
    train_losses = part.engine.train_epoch(table, counts, active)
    val_losses, val_outputs = part.engine.validate()
    for k, branch in enumerate(part.branches):
        if not branch.active:
            continue
        scores = _scores(val_outputs[k])
        branch.diverged = _divergence(epoch, train_losses[k], val_losses[k], scores)
        if branch.diverged:  # frozen as it is; it becomes a FAIL record, its weights are never used
            branch.active = False
            continue
        logs = {"loss": float(train_losses[k]), "val_loss": float(val_losses[k])}
        for name in criteria.EPOCH_SCORED:  # the registry's other per-epoch metrics, on the validation scores
            logs[name] = getattr(metrics, criteria.metric(name).compute)(y_val, scores, w_val)
        logs["learning_rate"] = part.engine.learning_rate(k)
        for key, value in logs.items():
            branch.history.setdefault(key, []).append(value)
        _end_of_epoch(branch, k, epoch, logs, part.engine)


def _result(branch: _Branch, net, dataset: Dataset, outputs: dict[int, np.ndarray], monitor: str,
            resumed: int | None, seconds: float, superseded: bool = False) -> TrainedTrial:  # fmt: skip
    history = branch.history.get(monitor, [])
    return TrainedTrial(
        model=net,
        history=branch.history,
        epochs_run=len(branch.history.get("loss", [])) + (1 if branch.diverged else 0),
        best_epoch=_best_epoch(branch, monitor, history),
        resumed_from_epoch=resumed,
        seconds=seconds,
        metrics={} if branch.diverged or superseded else evaluate(dataset, {p: _scores(o) for p, o in outputs.items()}),
        diverged=branch.diverged,
        pruned_epoch=branch.pruned_epoch,
        callback_settings=branch.settings,
        superseded=superseded,
    )


def _best_epoch(branch: _Branch, monitor: str, curve: Sequence[float]) -> int | None:
    """From 1: the epoch whose weights early stopping kept (by its own ``min_delta``) when it watches ``monitor``
    and restores its best weights, else the curve's best epoch (without restoring, the kept weights are the last
    epoch's, which early stopping's best epoch does not name)."""
    stopping = branch.early_stopping
    restores = stopping is not None and stopping.restore_best_weights and stopping.best is not None
    if restores and stopping.monitor == monitor:
        return stopping.best_epoch + 1
    found = callbacks.best_epoch(monitor, curve)
    return None if found is None else found + 1


def _fold_bundle(folds: list[TrainedTrial], monitor: str) -> TrainedTrial:
    """A k-fold trial: its fold results, their mean metrics with the spread (``*_std``, ``*_fold<f>``), and the
    mean history over the epochs every fold ran. One diverged fold makes the trial diverged."""
    diverged = next((f"fold {i}: {f.diverged}" for i, f in enumerate(folds) if f.diverged), "")
    merged: dict[str, float] = {}
    if not diverged:
        for name in folds[0].metrics:
            values = np.array([f.metrics[name] for f in folds], dtype=np.float64)
            merged[name] = float(values.mean())
            merged[f"{name}_std"] = float(values.std(ddof=1))
            merged.update({f"{name}_fold{i}": float(v) for i, v in enumerate(values)})
    history = mean_history([f.history for f in folds])
    for i, fold in enumerate(folds):
        history.update({f"fold{i}/{key}": values for key, values in fold.history.items()})
    # Early stopping's rule (its min_delta) applied to the mean curve when it kept its best weights of ``monitor``:
    # the folds each kept their own epoch. Otherwise the folds kept their last weights: the curve's plain best.
    stopping = folds[0].callback_settings.get("early_stopping", {})
    keeps = stopping.get("enabled", False) and stopping.get("restore_best_weights", False)
    min_delta = stopping.get("min_delta", 0.0) if keeps and stopping.get("monitor") == monitor else 0.0
    best = callbacks.best_epoch(monitor, history.get(monitor, []), min_delta)
    return TrainedTrial(
        model=[f.model for f in folds],
        history=history,
        epochs_run=max(f.epochs_run for f in folds),
        best_epoch=None if best is None else best + 1,
        resumed_from_epoch=folds[0].resumed_from_epoch,
        seconds=folds[0].seconds,
        metrics=merged,
        diverged=diverged,
        pruned_epoch=folds[0].pruned_epoch,  # a trial's fold models are pruned together
        folds=folds,
        callback_settings=folds[0].callback_settings,
        superseded=folds[0].superseded,
    )


def mean_history(histories: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Per key, the mean over ``histories`` (a k-fold trial's fold models) for the epochs every one of them ran."""
    if len(histories) == 1:  # every epoch of every pack: no copy of the lists
        return dict(histories[0])
    merged = {}
    for key in histories[0]:
        length = min(len(h.get(key, [])) for h in histories)
        merged[key] = np.mean([h[key][:length] for h in histories], axis=0).tolist() if length else []
    return merged


def best_epoch_monitor(parameters: Parameters, callback_settings: Mapping[str, Any] | None = None) -> str:
    """The quantity whose best epoch a record reports: early stopping's monitor when it is on (its weights are
    the ones kept), else the eval criterion when it is logged every epoch, else the validation loss.

    ``callback_settings``: the trial's own (a result's ``callback_settings``), which a resumed trial keeps from its
    start; without them, the current configuration's early stopping."""
    own = (callback_settings or {}).get("early_stopping")
    stopping = own if own is not None else parameters.training.early_stopping.model_dump(mode="json")
    if stopping.get("enabled", False):
        return str(stopping["monitor"])
    criterion = criteria.metric(parameters.eval_criterion)
    return criterion.name if criterion.per_epoch else "val_loss"


def _divergence(epoch: int, train_loss: float, val_loss: float, scores: np.ndarray) -> str:
    """Why a branch diverged in this epoch, or "" when its losses and validation scores are finite."""
    for name, value in (("training loss", train_loss), ("validation loss", val_loss)):
        if not np.isfinite(value):
            return f"diverged at epoch {epoch + 1}: the {name} is {value}"
    if not np.isfinite(scores).all():
        return f"diverged at epoch {epoch + 1}: {int((~np.isfinite(scores)).sum())} validation scores are not finite"
    return ""


def _progress(branches: list[_Branch], epoch: int, epochs: int, seconds: float, monitor: str) -> EpochProgress:
    """Per trial: a k-fold trial is active while one of its fold models is, its best the mean of theirs."""
    pick = criteria.metric(monitor).best
    by_trial: dict[str, list[_Branch]] = {}
    for branch in branches:
        by_trial.setdefault(branch.trial.id, []).append(branch)
    bests = []
    for members in by_trial.values():
        values = [pick(b.history[monitor]) for b in members if b.history.get(monitor)]
        bests.append(float(np.mean(values)) if len(values) == len(members) else None)
    return EpochProgress(
        trial_ids=list(by_trial),
        epoch=epoch + 1,
        epochs=epochs,
        active=[any(b.active for b in members) for members in by_trial.values()],
        seconds_per_epoch=seconds,
        monitor=monitor,
        best=bests,
    )


def _end_of_epoch(branch: _Branch, k: int, epoch: int, logs: dict[str, float], engine) -> None:
    """Early stopping first, then the learning-rate schedule: the order of Keras' callbacks list."""
    if branch.early_stopping is not None:
        improved, stop = branch.early_stopping.update(epoch, logs[branch.early_stopping.monitor])
        if improved and branch.early_stopping.restore_best_weights:
            branch.best_weights = engine.branch_weights(k)
        if stop:
            branch.active = False
    if branch.reduce_lr is not None:
        reduced = branch.reduce_lr.update(logs[branch.reduce_lr.monitor], logs["learning_rate"])
        if reduced is not None:
            engine.set_learning_rate(k, reduced)


def train(trial: Trial, dataset: Dataset, parameters: Parameters, checkpoint: Path | None = None) -> TrainedTrial:
    """One trial alone: a pack of one."""
    return train_pack([trial], dataset, parameters, checkpoint)[0]


PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def probe_pack_size(trial: Trial, dataset: Dataset, parameters: Parameters) -> dict[str, Any]:
    """Measure packs of copies of ``trial``, for doubling sizes: whole epochs, validation included.

    A trial's cost in a pack of K is (compile(K) + epochs × epoch(K)) / K: small trials are compile-bound and gain
    from any K, large ones stop gaining once an epoch is arithmetic-bound. Doubling stops when the cost per trial
    falls by less than 10%, or at the backend's out-of-memory error (the previous size is the largest that fits);
    any other error is raised. The answer is the smallest size within 10% of the best.
    """
    import keras

    model.keep_tensorflow_out()
    n_classes = len(dataset.class_names)
    train, validation = dataset.part(TRAIN), dataset.part(VALIDATION)
    batch_size, epochs = packing.step_structure(trial)
    table, counts = fused.batch_table(epoch_order(len(train[0]), parameters.seed, 0), batch_size)
    cost: dict[int, float] = {}
    result: dict[str, Any] = {}
    for size in PROBE_SIZES:
        engine = None
        try:
            _, engine = _build_pack([trial] * size, parameters, n_classes, train, validation, dataset)
            active = np.ones(size, bool)
            started = time.perf_counter()
            engine.train_epoch(table, counts, active)
            engine.validate()
            first = time.perf_counter() - started
            started = time.perf_counter()
            engine.train_epoch(table, counts, active)
            engine.validate()
            epoch = time.perf_counter() - started
        except fused.out_of_memory_errors() as error:
            if not fused.is_out_of_memory(error) or size == PROBE_SIZES[0]:
                raise  # not memory, or not even one trial fits: a failure to report, not a pack size
            result["out_of_memory_at"] = size
            break
        finally:
            del engine
            keras.backend.clear_session()
        cost[size] = (max(first - epoch, 0.0) + epochs * epoch) / size
        if len(cost) > 1 and cost[size] > 0.9 * min(v for k, v in cost.items() if k != size):
            break
    best = min(cost.values())
    chosen = min(k for k, v in cost.items() if v <= 1.1 * best)
    return {"pack_size": chosen, "seconds_per_trial": {str(k): round(v, 4) for k, v in cost.items()}, **result}


# Up to this many trials of one pack structure are packed whole without probing when they fit in memory: the cost
# per trial only falls with K (compilation is shared, arithmetic grows linearly), so the probe could only answer
# "all of them" at a price of several packs' compilation (39 of 92 s of the cold 64-trial grid on 2 cores).
MAX_WHOLE_PACK = 256


def fits_whole(trials: Sequence[Trial], dataset: Dataset, parameters: Parameters) -> bool:
    """Whether every one of ``trials`` (one pack structure) trains in one pack within the device's memory: each
    distinct network (its hyperparameters but the ``per_branch`` ones, which leave its size alone) built once,
    without compiling anything, and counted."""
    import keras

    if len(trials) > MAX_WHOLE_PACK:
        return False
    model.keep_tensorflow_out()
    n_features, n_classes = dataset.features.shape[1], len(dataset.class_names)
    registry = parameters.registry
    per_network: dict[str, int] = {}
    total = 0
    for trial in trials:
        sized_by = {k: v for k, v in trial.hyperparameters.items() if not (k in registry and registry[k].per_branch)}
        key = json.dumps(sized_by, sort_keys=True, default=str)
        if key not in per_network:
            hp = trial.hyperparameters
            net = model.build_trial_model(hp, n_features, n_classes, np.zeros(n_features), np.ones(n_features),
                                          parameters.own_model)  # fmt: skip
            model.compile_model(net, hp, n_classes)
            net.optimizer.build(net.trainable_variables)
            per_network[key] = fused.training_memory_bytes(net, net.optimizer, n_features,
                                                           packing.step_structure(trial)[0])  # fmt: skip
        total += per_network[key]
    keras.backend.clear_session()  # once: 0.15 s a call, more than a network's build
    return total * max(dataset.folds, 1) <= fused.training_budget()  # k-fold: k engines alive at once


def probe_key(trial: Trial, dataset: Dataset) -> str:
    """Everything that changes a pack's cost per epoch: data shapes and dtype, the trial's architecture, batch,
    epochs and optimizer (not its learning rate), the classes, the device, the backend and hhscan's version."""
    import keras
    from hhscan import __version__

    x_train, x_val = dataset.part(TRAIN)[0], dataset.part(VALIDATION)[0]
    return json.dumps(
        {
            "backend": keras.backend.backend(),
            "device": model.device_description(),
            "hhscan": __version__,
            "train": list(x_train.shape),
            "validation": len(x_val),
            "dtype": str(x_train.dtype),
            "classes": len(dataset.class_names),
            "hyperparameters": {k: v for k, v in trial.hyperparameters.items() if k != "learning_rate"},
        },
        sort_keys=True,
        default=str,
    )


def store_probe(cache: Path, key: str, value: dict[str, Any]) -> None:
    """Add one answer to ``cache``: under a lock, merged with what other tasks wrote meanwhile, replaced atomically
    (a reader never sees a partial file; concurrent writers never drop each other's answers)."""
    import fcntl

    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = _read_probes(cache)
        known[key] = value
        atomic_write_text(cache, json.dumps(known, indent=1, sort_keys=True))


def _read_probes(cache: Path) -> dict[str, Any]:
    try:
        known = json.loads(cache.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:  # a file not written by hhscan (writes are atomic): measure again
        return {}
    return known if isinstance(known, dict) else {}


def probed_pack_size(trial: Trial, dataset: Dataset, parameters: Parameters, cache: Path) -> int:
    """``probe_pack_size``, measured once per ``probe_key`` and kept in ``cache`` (shared by a workspace's jobs)."""
    key = probe_key(trial, dataset)
    known = _read_probes(cache).get(key)
    if known is None:
        known = probe_pack_size(trial, dataset, parameters)
        store_probe(cache, key, known)
    return int(known["pack_size"])
