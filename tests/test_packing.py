"""Fused packs: a packed branch is the trial trained alone; packs form, fail and resume as trials do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_tensorflow, run_cli
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import callbacks, packing, training, trial
from hhscan.settings import config

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.gpu  # `pytest -m gpu` on a GPU machine: what a GPU changes (packing, chunking, devices)


def _equivalence_settings(analysis, restore_best_weights: bool = False) -> None:
    """Without restoring best weights, a stopped branch's final weights show that it stayed frozen."""
    stopping = {"patience": 1, "min_delta": 0.002, "restore_best_weights": restore_best_weights}
    analysis.edit_parameters(
        hyperparameters={"epochs": [6]}, training={"early_stopping": stopping, "reduce_lr": {"patience": 1}}
    )


def _check(report: dict) -> None:
    assert report["n_train"] % 128, report  # a partial last batch (stepped padded where every layer is per event)
    stopped = [alone for alone, _ in report["epochs_run"] if alone < 6]
    assert stopped and len(stopped) < len(report["epochs_run"]), report  # some branches froze, others went on
    assert all(alone == packed for alone, packed in report["epochs_run"]), report
    assert max(report["history"]) < 1e-5, report
    assert max(report["weights"]) < 1e-5, report


@pytest.mark.parametrize("restore_best_weights", [False, True])
def test_packed_branches_equal_keras_fit_alone_on_jax(analysis, restore_best_weights):
    import packcheck

    _equivalence_settings(analysis, restore_best_weights)
    _check(packcheck.compare(analysis.root))


@needs_tensorflow
def test_packed_branches_equal_keras_fit_alone_on_tensorflow(analysis):
    _equivalence_settings(analysis)
    result = subprocess.run(
        [sys.executable, str(HERE / "packcheck.py"), str(analysis.root)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _check(json.loads(result.stdout.strip().splitlines()[-1]))


def _dataset(analysis):
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    return parameters, runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))


def test_a_trials_result_does_not_depend_on_its_pack(analysis):
    analysis.edit_parameters(hyperparameters={"neurons": [8, 16], "epochs": [3]})
    parameters, data = _dataset(analysis)
    trials = trial.expand(parameters)
    alone = training.train(trials[1], data, parameters)
    packed = training.train_pack(trials, data, parameters)[1]
    np.testing.assert_allclose(alone.history["val_loss"], packed.history["val_loss"], rtol=1e-5)
    assert alone.metrics["val_auc"] == pytest.approx(packed.metrics["val_auc"], abs=1e-6)


def test_weights_drawn_at_one_compiled_size_are_the_ones_keras_draws():
    """Built under ``one_compiled_uniform_draw`` (as hhscan builds every network), a network holds the weights Keras
    draws itself, for weights smaller and larger than one compiled draw."""
    import keras
    from hhscan.learning import model

    def build():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((300,))
        hidden = keras.layers.Dense(70)(inputs)  # 21 000 values: more than one draw of UNIFORM_DRAW_SIZE
        return keras.Model(inputs, keras.layers.Dense(5, kernel_initializer="he_uniform")(hidden))

    keras_own = build()
    with model.one_compiled_uniform_draw():
        drawn = build()
    assert model.UNIFORM_DRAW_SIZE < 300 * 70
    for theirs, ours in zip(keras_own.weights, drawn.weights, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert np.std(drawn.weights[0].numpy()) > 0.01  # drawn, not zeros
    import jax

    assert jax.random.uniform.__module__.startswith("jax.")  # JAX's own function put back


def test_a_micro_batch_draws_its_rows_of_the_batch_dropout_mask():
    """A batch of 512 stepped as micro-batches of 128: each draws the rows of the uniform numbers (Keras' Dropout
    mask is uniform < keep) that ``jax.random.uniform`` draws for the whole batch."""
    import jax
    from hhscan.learning import branch_values, fused

    seed = np.array([7, 3], dtype=np.uint32)
    whole = np.asarray(jax.random.uniform(seed, (512, 5)))
    parts = [np.asarray(branch_values.uniform_rows(seed, (128, 5), first)) for first in (0, 128, 256, 384)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # the schedule: branches of 1, 2 and 4 micro-batches a batch, over 5 micro-batches (the last one partial)
    ends, batch_counts, first_rows = fused.micro_schedule(np.array([128, 128, 128, 128, 50.0]), np.array([1, 2, 4]),
                                                          128)  # fmt: skip
    assert ends.T.tolist() == [[True] * 5, [False, True, False, True, True], [False, False, False, True, True]]
    assert batch_counts.T.tolist() == [[128] * 4 + [50], [256] * 4 + [50], [512] * 4 + [50]]
    assert first_rows.T.tolist() == [[0] * 5, [0, 128, 0, 128, 0], [0, 128, 256, 384, 0]]


def test_packs_group_by_step_structure_into_near_equal_sizes():
    def make(batch, epochs, index):
        hp = {"batch_size": batch, "epochs": epochs, "layers": index}
        return trial.Trial(trial.trial_id(hp, 0), hp, 0)

    trials = [make(128, 2, i) for i in range(7)] + [make(256, 2, 0), make(128, 3, 0), make(128, 2, 99),
                                                    make(96, 2, 0), make(1024, 2, 0)]  # fmt: skip
    packs = packing.form_packs(trials, 3)
    # 256 steps as two micro-batches of 128 (one pack structure); 96 divides neither, 1024 is 8 × 128: apart
    assert [[packing.batch_size(t) for t in p] for p in packs] == [[128, 128, 128], [128, 128, 128],
                                                                   [128, 256, 128], [128], [96], [1024]]  # fmt: skip
    assert [len(set(packing.pack_structures(p))) for p in packs] == [1] * 6
    assert sorted(t.id for p in packs for t in p) == sorted(t.id for t in trials)
    assert packing.form_packs(trials, 3) == packs
    with pytest.raises(ValueError):
        training.train_pack(trials[:1] + trials[8:9], None, None)  # 2 and 3 epochs


def test_a_failing_trial_does_not_fail_its_pack(analysis, capsys, monkeypatch):
    """A trial whose model cannot be built fails alone; its pack mates are retried alone and finish.

    The configuration now refuses every bad value that used to make Keras raise, so the failure is injected into the
    real build of one trial (neurons 13), where a Keras error would come from.
    """
    from hhscan.learning import model

    real_build = model.build_model

    def build(hyperparameters, *args, **kwargs):
        if hyperparameters["neurons"] == 13:
            raise ValueError("injected: this model cannot be built")
        return real_build(hyperparameters, *args, **kwargs)

    monkeypatch.setattr(model, "build_model", build)
    analysis.edit_parameters(hyperparameters={"neurons": [8, 13]}, training={"pack_size": 4})
    code, _, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    found, _ = Workspace(analysis.root).scan("local").records()
    by_neurons = {}
    for record in found.values():
        by_neurons.setdefault(record.hyperparameters["neurons"], set()).add(record.status)
    assert by_neurons == {8: {"DONE"}, 13: {"FAIL"}}
    assert all("injected" in r.error for r in found.values() if not r.done)
    assert {r.pack_size for r in found.values()} == {1}  # retried alone after the pack of 4 failed


def test_pack_records_carry_the_pack_size_and_a_share_of_the_time(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8]})
    code, _, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    found, _ = Workspace(analysis.root).scan("local").records()
    assert {r.pack_size for r in found.values()} == {4}  # "auto" packs a small request whole
    assert {r.backend for r in found.values()} == {"jax"}


def test_auto_pack_size_is_probed_once_and_kept(analysis):
    analysis.edit_parameters(hyperparameters={"epochs": [1]})
    parameters, data = _dataset(analysis)
    first = trial.expand(parameters)[0]
    cache = analysis.root / "pack_size.json"
    size = training.probed_pack_size(first, data, parameters, cache)
    stored = json.loads(cache.read_text())
    (entry,) = stored.values()
    assert size == entry["pack_size"] and str(size) in entry["seconds_per_trial"]
    assert len(entry["seconds_per_trial"]) >= 2  # at least one doubling was measured
    entry["pack_size"] = 3  # a kept answer is reused, not measured again
    cache.write_text(json.dumps(stored))
    assert training.probed_pack_size(first, data, parameters, cache) == 3


def test_callbacks_follow_keras_decisions():
    stopper = callbacks.EarlyStopping(patience=2)
    decisions = [stopper.update(epoch, value) for epoch, value in enumerate([1.0, 0.9, 0.95, 0.97])]
    assert decisions == [(True, False), (True, False), (False, False), (False, True)]
    assert stopper.best_epoch == 1
    scheduler = callbacks.ReduceLROnPlateau(patience=1, factor=0.5, min_lr=0.3)
    assert scheduler.update(1.0, 1.0) is None
    assert scheduler.update(1.0, 1.0) == 0.5
    assert scheduler.update(1.0, 0.5) == 0.3
    assert scheduler.update(1.0, 0.3) is None  # at the floor
    with pytest.raises(ValueError):
        config.Training.model_validate({"early_stopping": {"monitor": "val_acc"}})


def test_best_epoch_with_min_delta_is_the_epoch_early_stopping_restored(analysis):
    """With min_delta > 0 the weights kept are those of the last improvement by more than min_delta, which need not
    be the curve's minimum: best_epoch names that epoch, as Keras' own EarlyStopping decides on the same curve."""
    import keras

    settings = {"monitor": "val_loss", "patience": 10, "restore_best_weights": True}
    analysis.edit_parameters(hyperparameters={"epochs": [6], "learning_rate": [0.01]},
                             training={"early_stopping": settings, "reduce_lr": {"enabled": False}})  # fmt: skip
    parameters, data = _dataset(analysis)
    (only,) = trial.expand(parameters)
    curve = training.train(only, data, parameters).history["val_loss"]
    minimum = int(np.argmin(curve))
    assert minimum > 0
    min_delta = 1.5 * (min(curve[:minimum]) - curve[minimum])  # the minimum's own improvement falls short
    analysis.edit_parameters(training={"early_stopping": {**settings, "min_delta": float(min_delta)}})
    parameters, data = _dataset(analysis)
    result = training.train(only, data, parameters)
    assert result.history["val_loss"] == pytest.approx(curve, rel=1e-6)  # min_delta changes what is kept only
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=min_delta, patience=10,
                                            restore_best_weights=False)  # fmt: skip
    stopper.on_train_begin()
    for epoch, value in enumerate(result.history["val_loss"]):
        stopper.on_epoch_end(epoch, {"val_loss": value})
    assert result.best_epoch == stopper.best_epoch + 1 != minimum + 1
    # The kept weights are that epoch's: the model scores the validation events to that epoch's AUC.
    aucs = result.history["val_auc"]
    assert result.metrics["val_auc"] == pytest.approx(aucs[stopper.best_epoch], abs=1e-6) != aucs[minimum]


def test_best_epoch_without_restoring_is_the_monitors_best_not_early_stoppings(analysis):
    """With restore_best_weights false the weights kept (and the metrics) are the last epoch's: early stopping's
    own best epoch (by its min_delta) names no kept weights, so best_epoch is the monitored curve's best."""
    settings = {"monitor": "val_loss", "patience": 10, "restore_best_weights": False}
    analysis.edit_parameters(hyperparameters={"epochs": [6], "learning_rate": [0.01]},
                             training={"early_stopping": settings, "reduce_lr": {"enabled": False}})  # fmt: skip
    parameters, data = _dataset(analysis)
    (only,) = trial.expand(parameters)
    curve = training.train(only, data, parameters).history["val_loss"]
    minimum = int(np.argmin(curve))
    assert minimum > 0
    min_delta = 1.5 * (min(curve[:minimum]) - curve[minimum])  # early stopping's best falls before the minimum
    analysis.edit_parameters(training={"early_stopping": {**settings, "min_delta": float(min_delta)}})
    parameters, data = _dataset(analysis)
    result = training.train(only, data, parameters)
    assert result.history["val_loss"] == pytest.approx(curve, rel=1e-6)
    assert result.best_epoch == minimum + 1
    assert result.metrics["val_auc"] == pytest.approx(result.history["val_auc"][-1], abs=1e-6)  # the last weights


def test_worker_past_its_memory_bound_restarts_and_the_scan_completes(analysis):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8, 16]},
                             training={"pack_size": 1, "worker_memory_gb": 0.01})  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "hhscan.cli", "run", "--local", "--name", "recycle"],
        cwd=analysis.root, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # Six trials in packs of one: a restart after each pack but the last, each run skipping what is done.
    assert result.stderr.count("restarting the worker process") == 5, result.stderr[-2000:]
    found, _ = Workspace(analysis.root).scan("recycle").records()
    assert len(found) == 6 and all(r.done for r in found.values())


def test_a_pack_reports_its_progress_after_every_epoch(analysis):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8], "epochs": [3]},
                             training={"early_stopping": {"enabled": False}})  # fmt: skip
    parameters, data = _dataset(analysis)
    trials = trial.expand(parameters)
    seen = []
    results = training.train_pack(trials, data, parameters, on_epoch=seen.append)
    assert [p.epoch for p in seen] == [1, 2, 3] and all(p.epochs == 3 for p in seen)
    assert seen[0].trial_ids == [t.id for t in trials] and seen[-1].monitor == "val_auc"
    for k, result in enumerate(results):  # the best value so far is the running maximum of the history
        assert [p.best[k] for p in seen] == list(np.maximum.accumulate(result.history["val_auc"]))


def test_only_nets_whose_layers_work_event_by_event_step_a_padded_last_batch():
    import keras
    from hhscan.learning import fused

    def net(*middle):
        return keras.Sequential([keras.Input((4,)), keras.layers.Normalization(mean=0.0, variance=1.0),
                                 keras.layers.Dense(8, activation="relu"), *middle, keras.layers.Dense(1)])  # fmt: skip

    class Custom(keras.layers.Layer):
        def call(self, x):
            return x

    assert fused.per_event(net(keras.layers.Dropout(0.1)))
    assert not fused.per_event(net(keras.layers.BatchNormalization()))  # batch statistics
    assert not fused.per_event(net(Custom()))  # a layer it does not know
    assert not fused.per_event(keras.Sequential([keras.Input((4,)), net(keras.layers.BatchNormalization())]))
