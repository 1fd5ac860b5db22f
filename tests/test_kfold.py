"""k-fold cross-training: the split, fold models fused in one pack, ranking by the mean, the bundle and its guard."""

from __future__ import annotations

import numpy as np
import pytest
import uproot
import yaml
from conftest import run_cli
from hhscan.data import split
from hhscan.errors import ModelError, SplitError
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts, model, training, trial
from hhscan.settings import config
from sklearn.metrics import roc_auc_score

KFOLD = {"name": "k3", "kind": "kfold", "folds": 3, "variable": "event", "train": None, "validation": None,
         "test": None}  # fmt: skip


def _kfold(analysis, **hyperparameters) -> None:
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [2], **hyperparameters})


@pytest.mark.parametrize(
    ("split_settings", "expected"),
    [
        ({"kind": "kfold", "folds": 3}, "kind: kfold needs folds (an integer ≥ 3) and variable"),
        ({"kind": "kfold", "folds": 2, "variable": "event"}, "folds is 2: k-fold needs at least 3"),
        ({"kind": "kfold", "folds": 3, "variable": "event +"}, "split: variable:"),
        ({"folds": 3}, "folds and variable belong to kind: kfold"),
    ],
)
def test_bad_kfold_settings_are_refused_in_one_line(analysis, capsys, monkeypatch, split_settings, expected):
    analysis.edit_parameters(split={"train": None, "validation": None, "test": None, **split_settings})
    code, _, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
    assert code == 1 and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_fold_numbers_follow_the_rule_for_negative_and_float_event_numbers():
    values = np.array([-7, -1, 0, 1, 5, 2**40 + 1], dtype=np.int64)
    by_hand = [((int(v) % 3) + 3) % 3 for v in values]  # the C++ form of the rule written into bundles
    assert split.fold_numbers(values, 3, "f").tolist() == by_hand
    assert split.fold_numbers(values.astype(np.float64), 3, "f").tolist() == by_hand
    unsigned = np.array([2**64 - 1, 2**63, 2**63 + 1, 7], dtype=np.uint64)  # above int64: they must not wrap
    assert split.fold_numbers(unsigned, 3, "f").tolist() == [int(v) % 3 for v in unsigned.tolist()]
    for bad, words in ((np.array([1.5]), "must be an integer"), (np.array([2.0**53 + 2]), "must be an integer"),
                       (np.array([True]), "boolean")):  # fmt: skip
        with pytest.raises(SplitError, match=words):
            split.fold_numbers(bad, 3, "f")


def test_a_fold_model_in_a_pack_equals_keras_fit_on_its_own_events_alone(analysis):
    # The independent computation: plain Keras ``fit`` of the same model (same initial weights, scaler from the
    # training folds only) on the events of its training folds, validated on its validation fold.
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [2], "learning_rate": [0.01, 0.003]},
                             training={"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    trials = trial.expand(parameters)
    results = training.train_pack(trials, data, parameters, shuffle=False)
    x, y, w = data.part(split.TRAIN)  # every event
    for item, result in zip(trials, results, strict=True):
        hp = item.hyperparameters
        for fold, folded in enumerate(result.folds):
            roles = split.fold_roles(fold, 3)
            own, validation = np.isin(data.fold, roles["train"]), data.fold == roles["validation"][0]
            training.seed_everything((parameters.seed + item.seed_offset + fold * 7919) % (2**31))
            net = model.build_model(hp, x.shape[1], 2, *model.scaler_statistics(x[own]))
            model.compile_model(net, hp, 2)
            targets = model.targets(y, 2)
            fit = net.fit(x[own], targets[own], sample_weight=w[own], batch_size=int(hp["batch_size"]), epochs=2,
                          shuffle=False, verbose=0,
                          validation_data=(x[validation], targets[validation], w[validation]))  # fmt: skip
            for mine, theirs in zip(net.get_weights(), folded.model.get_weights(), strict=True):
                np.testing.assert_allclose(mine, theirs, atol=2e-5)
            np.testing.assert_allclose(fit.history["val_loss"], folded.history["val_loss"], atol=2e-5)


def test_three_fold_scan_end_to_end_ranks_by_the_mean_and_scores_each_event_with_its_own_fold(
    analysis, capsys, monkeypatch
):
    _kfold(analysis, learning_rate=[0.01, 0.003])
    code, _, err = run_cli(["run", "--local", "--name", "kf"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(["report", "kf"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    workspace = Workspace(analysis.root)
    records, _ = workspace.scan("kf").records()
    for record in records.values():
        per_fold = [record.metrics[f"val_auc_fold{f}"] for f in range(3)]
        assert record.value == pytest.approx(np.mean(per_fold)) and record.metrics["val_auc_std"] == pytest.approx(
            np.std(per_fold, ddof=1))  # fmt: skip
        assert f"{record.metrics['val_auc']:.4g} ± {record.metrics['val_auc_std']:.4g}" in out
    best = max(records.values(), key=lambda r: r.value)
    bundle, metadata = artifacts.load_model_zip(workspace.models / "kf_best.zip")
    assert isinstance(bundle, model.FoldModels) and metadata["trial_id"] == best.trial_id
    assert [r["test"] for r in metadata["kfold"]["roles"]] == [[0], [1], [2]]

    # Each fold model's recorded val_auc, recomputed with sklearn on its validation fold (the next one).
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), workspace)
    for f in range(3):
        validation = data.fold == (f + 1) % 3
        scores = model.predict(bundle.models[f], data.features[validation])
        expected = roc_auc_score(data.labels[validation], scores, sample_weight=data.learning_weight[validation])
        assert best.metrics[f"val_auc_fold{f}"] == pytest.approx(expected, abs=1e-5)

    code, _, err = run_cli(["test", "--model", "best"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    written = uproot.open(workspace.models / "kf_best" / "hh_2016.root")["Events"]
    events = written["event"].array(library="np")
    source = uproot.open(analysis.data / "hh_2016.root")["Events"].arrays(library="np")
    # Every selected event of the sample is scored once (k-fold: the whole sample is test), by its own fold's model.
    selected = data.sample_index == data.sample_names.index("hh_2016")
    assert len(events) == int(selected.sum())
    fold = np.mod(events.astype(np.int64), 3)
    features = data.features[selected]
    for f in range(3):
        mine = fold == f
        expected = model.predict(bundle.models[f], features[mine])
        np.testing.assert_allclose(written["score"].array(library="np")[mine], expected, atol=1e-6)
    assert set(np.unique(source["event"])) >= set(events)


def _write_uncompressed(path, events) -> None:
    with uproot.recreate(path, compression=None) as handle:  # the size then depends on the dtypes alone
        handle.mktree("Events", {k: v.dtype for k, v in events.items()}).extend(events)


def test_the_guard_refuses_events_that_moved_fold_and_a_bundle_whose_roles_collide(analysis, capsys, monkeypatch):
    path = analysis.data / "hh_2016.root"
    with uproot.open(path) as handle:
        events = handle["Events"].arrays(library="np")
    _write_uncompressed(path, events)
    _kfold(analysis, learning_rate=[0.01])
    code, _, err = run_cli(["run", "--local", "--name", "kf"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    run_cli(["report", "kf"], analysis.root, capsys, monkeypatch)
    workspace = Workspace(analysis.root)
    bundle, _ = artifacts.load_model_zip(workspace.models / "kf_best.zip")

    # A bundle whose fold-0 model says it trained on fold 0 must never score fold-0 events.
    bundle.kfold["roles"][0] = {"test": [0], "validation": [1], "train": [0, 2]}
    with pytest.raises(ModelError, match="refusing to score those events"):
        bundle.predict(np.zeros((3, 6), np.float32), np.array([0, 1, 2]))

    # Events crafted to collide: the same file rewritten with every event number shifted by one (same size, same
    # events passing the cut) now puts each event in a fold whose model trained on it. hhscan test refuses.
    size = path.stat().st_size
    events["event"] = events["event"] + 1
    _write_uncompressed(path, events)
    assert path.stat().st_size == size
    code, _, err = run_cli(["test", "--model", "best"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "now fall in another fold" in err and "hh_2016" in err, err
    assert len(err.strip().splitlines()) == 1
    # The same file named in a later sample list and scored whole (--force): its folds are checked too.
    later = analysis.root / "sample_lists" / "later.yaml"
    content = analysis.samples_yaml()
    content["groups"] = [{"name": "hh_again", "files": "hh_2016.root", "tree": "Events", "class": "signal"}]
    later.write_text(yaml.safe_dump(content))
    scored = analysis.root / "scored"
    code, _, err = run_cli(["test", "--model", "best", "--samples", str(later), "--output", "hh_again", "--force",
                            "--dir", str(scored)], analysis.root, capsys, monkeypatch)  # fmt: skip
    assert code == 1 and "now fall in another fold" in err and "hh_2016" in err, err
    assert len(err.strip().splitlines()) == 1 and not scored.exists()
    # With the persisted split gone, the split made again from the shifted data is not the one the bundle was
    # trained on: whole samples (--output) are refused as the test split is, by the split checksum.
    for made in [*(analysis.root / "splits").iterdir(), *(analysis.root / "cache").glob("*.npz")]:
        made.unlink()
    for command in (["--output", "hh_2016"], []):
        code, _, err = run_cli(["test", "--model", "best", "--dir", str(scored), *command], analysis.root, capsys,
                               monkeypatch)  # fmt: skip
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "kf_best.zip: the model was trained on split" in err and "its test events are unknown" in err
    assert not (scored / "samples").exists()


def test_a_kfold_trial_resumes_every_fold_model_from_its_own_checkpoint(analysis, tmp_path):
    """Interrupted after 2 of 4 epochs, each fold model continues at epoch 3: the same as one uninterrupted run."""
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [2], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    (first,) = trial.expand(parameters)
    checkpoint = tmp_path / "checkpoints"
    partial = training.train(first, data, parameters, checkpoint)
    assert sorted(p.name for p in (checkpoint / first.id).iterdir()) == ["checkpoint.npz"]  # all 3 fold models
    assert training.checkpoint_epoch(checkpoint, first.id, folds=3) == 1
    longer = trial.Trial(first.id, {**first.hyperparameters, "epochs": 4}, 0)
    resumed = training.train(longer, data, parameters, checkpoint)
    uninterrupted = training.train(longer, data, parameters)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    for f in range(3):
        assert resumed.history[f"fold{f}/loss"][:2] == partial.history[f"fold{f}/loss"]
        np.testing.assert_allclose(resumed.history[f"fold{f}/val_loss"], uninterrupted.history[f"fold{f}/val_loss"],
                                   rtol=1e-5)  # fmt: skip


def test_a_kfold_trials_best_epoch_without_restoring_ignores_early_stoppings_min_delta(analysis):
    """Fold models that keep their last weights (restore_best_weights false): the trial's best_epoch is the mean
    curve's plain best, not early stopping's rule (a min_delta no epoch meets would name epoch 1)."""
    stopping = {"monitor": "val_loss", "patience": 10, "min_delta": 10.0, "restore_best_weights": False}
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [3], "learning_rate": [0.01]},
                             training={"early_stopping": stopping, "reduce_lr": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    (result,) = training.train_pack(trial.expand(parameters), data, parameters)
    best = int(np.argmin(result.history["val_loss"]))
    assert best > 0 and result.epochs_run == 3
    assert result.best_epoch == best + 1
    for fold in result.folds:
        assert fold.best_epoch == int(np.argmin(fold.history["val_loss"])) + 1


def test_a_resumed_kfold_trials_best_epoch_follows_the_monitor_it_trained_with(analysis, tmp_path):
    """Early stopping's monitor changed between the submissions: the resumed trial's best_epoch is its own early
    stopping's rule on the mean curve (val_loss, a min_delta no epoch meets: epoch 1), not the new monitor's best."""
    stopping = {"monitor": "val_loss", "patience": 10, "min_delta": 10.0, "restore_best_weights": True}
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [2], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": stopping,
                                       "reduce_lr": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    (first,) = trial.expand(parameters)
    checkpoint = tmp_path / "checkpoints"
    training.train(first, data, parameters, checkpoint)
    analysis.edit_parameters(training={"early_stopping": {"monitor": "val_auc", "min_delta": 0.0}})
    changed = config.load_parameters(analysis.parameters)
    resumed = training.train(trial.Trial(first.id, {**first.hyperparameters, "epochs": 4}, 0), data, changed,
                             checkpoint)  # fmt: skip
    assert resumed.resumed_from_epoch == 2 and resumed.callback_settings["early_stopping"]["monitor"] == "val_loss"
    assert int(np.argmax(resumed.history["val_auc"])) > 0  # the new monitor's best would be another epoch
    assert resumed.best_epoch == 1 and [f.best_epoch for f in resumed.folds] == [1, 1, 1]


def test_a_kfold_trial_is_pruned_on_the_mean_of_its_fold_curves_and_all_its_folds_stop(analysis):
    """The pruner sees each trial's curve as its record keeps it, the mean over its fold models; pruning one trial
    freezes all of its fold models at that epoch and leaves the other trial of the pack training."""
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [4], "learning_rate": [0.01, 0.001]},
                             training={"early_stopping": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    first, second = trial.expand(parameters)
    seen = []

    def prune(trial_id, epoch, history):
        seen.append((trial_id, epoch, list(history["val_auc"])))
        return trial_id == first.id and epoch == 2

    pruned, kept = training.train_pack([first, second], data, parameters, prune=prune)
    assert [(t, e) for t, e, _ in seen] == [(first.id, 1), (second.id, 1), (first.id, 2), (second.id, 2),
                                          (second.id, 3)]  # fmt: skip
    for trial_id, epoch, curve in seen:
        result = pruned if trial_id == first.id else kept
        by_hand = np.mean([result.folds[f].history["val_auc"][:epoch] for f in range(3)], axis=0)
        np.testing.assert_allclose(curve, by_hand, rtol=1e-12)
    assert pruned.pruned_epoch == 2 and [len(f.history["loss"]) for f in pruned.folds] == [2, 2, 2]
    assert kept.pruned_epoch is None and kept.epochs_run == 4


def test_a_resumed_kfold_trial_equals_an_uninterrupted_one(analysis, tmp_path, monkeypatch):
    """The requeue signal arrives after the trial's second checkpoint (one file, all its fold models): every fold
    model resumes from that epoch, and the result is that of an uninterrupted run."""
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [3], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    (first,) = trial.expand(parameters)
    checkpoint = tmp_path / "checkpoints"
    real_write = training.atomic_write_bytes
    written = []

    def killed_after_the_second_write(path, data):
        real_write(path, data)
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt("the requeue signal")

    monkeypatch.setattr(training, "atomic_write_bytes", killed_after_the_second_write)
    with pytest.raises(KeyboardInterrupt):
        training.train(first, data, parameters, checkpoint)
    monkeypatch.setattr(training, "atomic_write_bytes", real_write)
    saved = training.checkpoint_epoch(checkpoint, first.id, folds=3)
    assert saved is not None
    resumed = training.train(first, data, parameters, checkpoint)
    uninterrupted = training.train(first, data, parameters)
    assert resumed.resumed_from_epoch == saved + 1 and resumed.epochs_run == 3
    for f in range(3):
        np.testing.assert_allclose(resumed.history[f"fold{f}/val_loss"], uninterrupted.history[f"fold{f}/val_loss"],
                                   rtol=1e-5)  # fmt: skip


def test_a_kfold_trial_whose_fold_stopped_early_is_still_judged_by_the_pruner(analysis, monkeypatch):
    """Fold 0 stops after epoch 2 (as early stopping stops it); the trial's other folds train on, and the pruner
    goes on hearing the trial every epoch, fold 0 counted with the value of the weights it keeps (its last)."""
    analysis.edit_parameters(split=KFOLD, hyperparameters={"epochs": [4], "learning_rate": [0.01]},
                             training={"early_stopping": {"enabled": False}})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    (first,) = trial.expand(parameters)
    real_end = training._end_of_epoch

    def fold_0_stops_after_epoch_2(branch, k, epoch, logs, engine):
        real_end(branch, k, epoch, logs, engine)
        if branch.fold == 0 and epoch == 1:
            branch.active = False

    monkeypatch.setattr(training, "_end_of_epoch", fold_0_stops_after_epoch_2)
    seen = []
    (result,) = training.train_pack([first], data, parameters,
                                    prune=lambda trial_id, epoch, history: seen.append((epoch, history)) and False)  # fmt: skip
    curves = [fold.history["val_auc"] for fold in result.folds]
    assert [len(c) for c in curves] == [2, 4, 4] and [epoch for epoch, _ in seen] == [1, 2, 3]
    by_hand = np.mean([curves[0] + [curves[0][-1]] * 2, curves[1], curves[2]], axis=0)
    for epoch, history in seen:
        np.testing.assert_allclose(history["val_auc"], by_hand[:epoch], rtol=1e-12)


@pytest.mark.parametrize("kfold", [True, False])
def test_a_checkpoint_of_an_earlier_layout_is_said_once_and_not_resumed(analysis, capsys, monkeypatch, kfold):
    """Before one file per trial, a trial's checkpoint held one model: a k-fold trial had one file per fold model
    (checkpoint-fold<f>.npz), another trial a checkpoint.npz of one branch. Either is never resumed, and the job
    log says so once per trial (not once when the runner groups the trials and again when the pack trains)."""
    import json

    if kfold:
        _kfold(analysis, learning_rate=[0.01])
    else:
        analysis.edit_parameters(hyperparameters={"epochs": [2], "learning_rate": [0.01]})
    code, _, err = run_cli(["run", "--local", "--name", "old", "--max-trials", "0"], analysis.root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    scan = Workspace(analysis.root).scan("old")
    (only,) = scan.trials()
    directory = training.checkpoint_path(scan.checkpoint_dir, only.id).parent
    directory.mkdir(parents=True)
    for fold in range(3) if kfold else [None]:
        state = {"epoch": 0, "branch": {"trial_id": only.id, "fold": fold}}
        name = "checkpoint.npz" if fold is None else f"checkpoint-fold{fold}.npz"
        np.savez(directory / name, __state__=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8))
    assert training.checkpoint_epoch(scan.checkpoint_dir, only.id, folds=3 if kfold else 0) is None
    capsys.readouterr()
    (record,) = runner.run_scan_trials(scan)
    out = " ".join(capsys.readouterr().out.split())
    said = f"hhscan: trial {only.id}: checkpoint {directory}/checkpoint{'-fold*' if kfold else ''}.npz is from an "
    assert out.count(said) == 1 and out.count("from an earlier hhscan") == 1, out
    assert record.done and record.resumed_from_epoch is None and record.epochs_run == 2
