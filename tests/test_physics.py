"""The numbers a physicist ranks and cuts on, each against a computation made here by hand.

Significance from physical yields (signal included, partition-scaled), the signal class chosen by
``signal_classes``, diverged trials as failures, the best epoch, one criterion per ranking, label leaks.
"""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest
from conftest import run_cli
from hhscan.data.split import TRAIN, VALIDATION
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts, records
from hhscan.settings import config
from sklearn.metrics import roc_auc_score


def hand_asimov_z_max(is_signal: np.ndarray, score: np.ndarray, yields: np.ndarray, min_events: int = 10,
                      max_error: float | None = 0.2, relative_sigma: float = 0.0) -> float:  # fmt: skip
    """Z = sqrt(2((s+b) ln(1+s/b) − s)) of the events with score ≥ cut, maximised over cuts 0, 0.01, …, 1 that
    keep at least ``min_events`` background MC events with a relative MC error √Σw²/Σw of b ≤ ``max_error`` (the
    sample list's default guard); with ``relative_sigma`` Cowan et al.'s Z with σ = relative_sigma · b."""
    best = 0.0
    for cut in np.linspace(0, 1, 101):
        above = score >= cut
        background = yields[above & ~is_signal]
        s, b = yields[above & is_signal].sum(), background.sum()
        trusted = len(background) >= min_events and (max_error is None or np.sqrt((background**2).sum()) / b <= max_error)
        if not (s > 0 and b > 0 and trusted):
            continue
        if relative_sigma:
            v = (relative_sigma * b) ** 2
            z2 = 2 * ((s + b) * np.log((s + b) * (b + v) / (b**2 + (s + b) * v)) - b**2 / v * np.log(1 + v * s / (b * (b + v))))
        else:
            z2 = 2 * ((s + b) * np.log(1 + s / b) - s)
        best = max(best, float(np.sqrt(z2)))
    return best


def hand_partition_yields(data, selected: np.ndarray) -> np.ndarray:
    """Each event's yield divided by its sample's fraction of events in the partition."""
    result = np.empty(int(selected.sum()))
    index = data.sample_index[selected]
    for sample in np.unique(data.sample_index):
        fraction = (selected & (data.sample_index == sample)).sum() / (data.sample_index == sample).sum()
        result[index == sample] = data.yield_weight[selected][index == sample] / fraction
    return result


def _scan(analysis, name, capsys, monkeypatch, *extra):
    code, out, err = run_cli(["run", "--local", "--name", name, *extra], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(analysis.root).scan(name)
    parameters, sample_list = scan.load_config()
    data = runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))
    return scan, data, out


def _validation_scores(scan, record, data):
    keras_model, _ = artifacts.load_model_zip(scan.model_path(record.trial_id))
    val = data.partition == VALIDATION
    return val, np.asarray(keras_model.predict(data.features[val], verbose=0))


def test_val_significance_is_the_asimov_z_of_physical_validation_yields(analysis, capsys, monkeypatch):
    scan, data, _ = _scan(analysis, "z", capsys, monkeypatch, "--max-trials", "1")
    (record,) = scan.records()[0].values()
    val, scores = _validation_scores(scan, record, data)
    expected = hand_asimov_z_max(data.labels[val] == 1, scores[:, 0], hand_partition_yields(data, val))
    assert expected > 0
    assert record.metrics["val_significance"] == pytest.approx(expected, rel=1e-5)
    # Yields, not learning weights: the equalised weights would give a very different (meaningless) Z.
    learning = hand_asimov_z_max(data.labels[val] == 1, scores[:, 0], data.learning_weight[val])
    assert abs(learning - expected) > 0.1 * expected


def test_val_significance_follows_the_sample_lists_guard_and_background_uncertainty(analysis, capsys, monkeypatch):
    analysis.edit_samples(significance={"min_background_events": 3, "max_background_error": 0.5,
                                        "background_uncertainty": 0.1})  # fmt: skip
    scan, data, _ = _scan(analysis, "zs", capsys, monkeypatch, "--max-trials", "1")
    (record,) = scan.records()[0].values()
    val, scores = _validation_scores(scan, record, data)
    yields = hand_partition_yields(data, val)
    expected = hand_asimov_z_max(data.labels[val] == 1, scores[:, 0], yields, 3, 0.5, 0.1)
    assert expected > 0
    assert record.metrics["val_significance"] == pytest.approx(expected, rel=1e-5)
    plain = hand_asimov_z_max(data.labels[val] == 1, scores[:, 0], yields, 3, 0.5)
    assert expected < plain  # the uncertainty counts
    code, out, err = run_cli(["report", "zs", "--no-plots", "--criterion", "val_significance"], analysis.root, capsys,
                             monkeypatch)  # fmt: skip
    assert code == 0, err
    assert ("val_significance: Asimov Z at the best score cut with ≥ 3 bkg MC events, bkg MC error ≤ 50%, "
            "σ_b = 10%·b") in " ".join(out.split())  # fmt: skip
    assert record.training_settings["significance"] == {"min_background_events": 3, "max_background_error": 0.5,
                                                        "background_uncertainty": 0.1}  # fmt: skip
    assert "not comparable" not in out
    # A record from before the guard existed (none recorded) is named, not ranked as an equal silently.
    path = scan.root / "output" / f"{record.trial_id}.csv"
    old = records.read_record(path)
    del old.training_settings["significance"]
    records.write_record(path.parent, old)
    code, out, err = run_cli(["report", "zs", "--no-plots", "--criterion", "val_significance"], analysis.root, capsys,
                             monkeypatch)  # fmt: skip
    assert code == 0, err
    assert "1 trial(s) computed val_significance under another guard or none" in " ".join(out.split())
    assert record.trial_id in out
    # The guard changes val_significance: an existing scan is not continued under another one.
    analysis.edit_samples(significance={"min_background_events": 4})
    code, _, err = run_cli(["run", "--local", "--name", "zs"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "the significance guard" in err, err


def test_multiclass_significance_uses_the_signal_class_wherever_it_is(analysis3, capsys, monkeypatch):
    analysis3.edit_samples(classes=["signal", "TT", "DY"])  # signal first: "the last class" would be DY
    analysis3.edit_parameters(eval_criterion="val_significance")
    scan, data, _ = _scan(analysis3, "multi", capsys, monkeypatch, "--max-trials", "1")
    (record,) = scan.records()[0].values()
    val, scores = _validation_scores(scan, record, data)
    yields = hand_partition_yields(data, val)
    expected = hand_asimov_z_max(data.labels[val] == 0, scores[:, 0], yields)
    assert record.metrics["val_significance"] == pytest.approx(expected, rel=1e-5)
    wrong = hand_asimov_z_max(data.labels[val] == 2, scores[:, 2], yields)  # DY as if it were the signal
    assert wrong != pytest.approx(expected, rel=1e-3)


def test_significance_criterion_without_signal_cross_section_is_refused(analysis, capsys, monkeypatch):
    (analysis.data / "xsec_2017.json").write_text('{"tt_2017.root": 820.0}')
    analysis.edit_parameters(eval_criterion="val_significance")
    code, _, err = run_cli(["run", "--local", "--name", "noz"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "eval_criterion: val_significance needs physical yields" in err and "hh_2017" in err


def test_a_diverged_trial_fails_and_is_never_ranked_or_exported(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01, 1.0e30], "layers": [3], "neurons": [16]},
                             training={"early_stopping": {"monitor": "val_auc"}})  # fmt: skip
    scan, _, _ = _scan(analysis, "nan", capsys, monkeypatch)
    found = scan.records()[0]
    by_rate = {r.hyperparameters["learning_rate"]: r for r in found.values()}
    diverged = by_rate[1.0e30]
    assert diverged.status == "FAIL" and "diverged at epoch 1" in diverged.error
    assert diverged.epochs_run == 1 and not scan.model_path(diverged.trial_id).exists()
    assert by_rate[0.01].done
    code, _, err = run_cli(["report", "nan", "--no-plots"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    with open(analysis.root / "models" / "nan.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial_id"], r["rank"]) for r in rows] == [(by_rate[0.01].trial_id, "1"), (diverged.trial_id, "")]
    best = json.loads((analysis.root / "models" / "best.json").read_text())
    assert best["trial_id"] == by_rate[0.01].trial_id


def test_best_epoch_follows_the_monitored_quantity_and_counts_from_one(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"epochs": [4], "learning_rate": [0.01]},
                             training={"early_stopping": {"enabled": False}})  # fmt: skip
    scan, _, _ = _scan(analysis, "epochs", capsys, monkeypatch)
    (record,) = scan.records()[0].values()
    auc = record.history["val_auc"]  # criterion val_auc, logged every epoch, no early stopping
    assert record.best_epoch == int(np.argmax(auc)) + 1 and 1 <= record.best_epoch <= 4
    analysis.edit_parameters(training={"early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 9}})
    scan, _, _ = _scan(analysis, "epochs_loss", capsys, monkeypatch)
    (record,) = scan.records()[0].values()
    assert record.best_epoch == int(np.argmin(record.history["val_loss"])) + 1


def test_report_ranks_every_trial_by_the_current_criterion(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8], "learning_rate": [0.01, 0.003]})
    scan, _, _ = _scan(analysis, "crit", capsys, monkeypatch)
    records = list(scan.records()[0].values())
    for criterion, reverse in (("val_loss", False), ("val_auc", True), ("val_significance", True)):
        analysis.edit_parameters(eval_criterion=criterion)
        code, _, err = run_cli(["run", "--local", "--name", "crit"], analysis.root, capsys, monkeypatch)
        assert code == 0, err  # accepted: the criterion changes no trial's result
        code, _, err = run_cli(["report", "crit", "--no-plots"], analysis.root, capsys, monkeypatch)
        assert code == 0, err
        with open(analysis.root / "models" / "crit.csv") as handle:
            order = [r["trial_id"] for r in csv.DictReader(handle)]
        expected = sorted(records, key=lambda r: (r.metrics[criterion] * (-1 if reverse else 1), r.trial_id))
        assert order == [r.trial_id for r in expected], criterion
    code, _, err = run_cli(["report", "crit", "--criterion", "val_auc_typo"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "unknown criterion 'val_auc_typo'" in err and "closest: val_auc" in err


def test_what_changes_a_trials_result_is_refused_and_what_does_not_is_accepted(analysis, capsys, monkeypatch):
    _scan(analysis, "same", capsys, monkeypatch)
    # 0 vs 0.0 and a reordered list: the same trials, accepted with nothing to run.
    analysis.edit_parameters(hyperparameters={"l2": [0], "dropout": [0], "learning_rate": [0.003, 0.01]},
                             training={"reduce_lr": {"patience": 4}})  # fmt: skip
    code, out, err = run_cli(["run", "--local", "--name", "same"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "0 to run" in out, err
    analysis.edit_parameters(seed=99)
    code, _, err = run_cli(["run", "--local", "--name", "same"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "seed 1234 → 99" in err and len(err.strip().splitlines()) == 1


def test_records_say_which_callbacks_trained_them(analysis, capsys, monkeypatch):
    scan, _, _ = _scan(analysis, "settings", capsys, monkeypatch, "--max-trials", "1")
    (record,) = scan.records()[0].values()
    parameters = config.load_parameters(analysis.parameters)
    assert record.training_settings["early_stopping"]["patience"] == parameters.training.early_stopping.patience == 2
    assert record.training_settings["reduce_lr"]["patience"] == 1
    assert record.training_settings["slurm_resources"] == parameters.slurm.resources


@pytest.mark.parametrize("column", ["$class", "$sample", "$tag"])
def test_truth_derived_columns_are_refused_as_inputs(analysis, capsys, monkeypatch, column):
    analysis.edit_samples(inputs=["x1", {"name": "leak", "expr": column, "one_hot": ["signal", "background"]}])
    code, _, err = run_cli(["run", "--local", "--name", "leak"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "inputs.1" in err and f"uses '{column}'" in err and "leak the label" in err


def test_an_input_that_alone_separates_the_classes_is_named(analysis, capsys, monkeypatch):
    # The event number: signal files were generated with lower numbers than every background file.
    analysis.edit_samples(inputs=["x1", "abs(x2)", "event"])
    _, data, out = _scan(analysis, "leaky", capsys, monkeypatch, "--max-trials", "1")
    train = data.partition == TRAIN
    column = data.feature_names.index("event")
    auc = roc_auc_score(data.labels[train] == 1, data.features[train, column],
                        sample_weight=data.learning_weight[train])  # fmt: skip
    assert min(auc, 1 - auc) < 0.01
    assert "input 'event' alone separates the classes" in out and f"{max(auc, 1 - auc):.4f}" in out
    assert "input 'x1'" not in out
    x1 = roc_auc_score(data.labels[train] == 1, data.features[train, 0], sample_weight=data.learning_weight[train])
    assert data.input_separation["x1"] == pytest.approx(max(x1, 1 - x1), abs=1e-5)
    code, out, _ = run_cli(["report", "leaky", "--no-plots"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "input 'event' alone separates the classes" in out
    analysis.edit_samples(leak_check={"allow": ["event"]})
    code, out, _ = run_cli(["run", "--local", "--name", "leaky"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "alone separates" not in out


def test_a_submissions_jobs_run_with_the_configuration_they_were_submitted_with(analysis, capsys, monkeypatch):
    """A frozen copy per submission: rewriting the scan's configuration later does not reach queued jobs."""
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01]})
    _scan(analysis, "frozen", capsys, monkeypatch, "--max-trials", "0")
    scan = Workspace(analysis.root).scan("frozen")
    frozen = scan.snapshot_config("submission-1")
    analysis.edit_parameters(training={"early_stopping": {"patience": 7}})  # a later run rewrites resolved.json
    code, _, err = run_cli(["run", "--local", "--name", "frozen", "--max-trials", "0"], analysis.root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    assert scan.load_config()[0].training.early_stopping.patience == 7
    (record,) = runner.run_scan_trials(scan, context=runner.JobContext(config_path=str(frozen)))
    assert record.training_settings["early_stopping"]["patience"] == 2  # as submitted
    with zipfile.ZipFile(scan.model_path(record.trial_id)) as archive:
        used = json.loads(archive.read("config/resolved.json"))
    assert used["parameters"]["training"]["early_stopping"]["patience"] == 2
