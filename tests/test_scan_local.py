"""Trials and local scans end to end: models, records, failures, reruns, the shipped example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO, run_cli
from hhscan.data import metrics
from hhscan.data.split import TRAIN, VALIDATION
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts, records, trial
from hhscan.settings import config


def test_trial_ids_are_canonical_and_stable_across_processes():
    point = {"layers": 2, "neurons": 64, "activation": "relu", "dropout": 0.0, "l2": 0, "optimizer": "Adam",
             "learning_rate": 0.001, "batch_size": 256, "epochs": 5}  # fmt: skip
    same = {**point, "l2": 0.0, "optimizer": "adam", "dropout": 0}
    assert trial.trial_id(point, 0) == trial.trial_id(dict(reversed(list(same.items()))), 0)
    assert trial.trial_id(point, 0) != trial.trial_id(point, 1)
    assert trial.trial_id(point, 0) != trial.trial_id({**point, "epochs": 6}, 0)
    code = f"from hhscan.learning.trial import trial_id; print(trial_id({point!r}, 0))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})  # fmt: skip
    assert other.stdout.strip() == trial.trial_id(point, 0)
    # A golden value: changing the id scheme orphans every existing scan's results.
    assert trial.trial_id(point, 0) == "7d966486f425"  # sha256 of the canonical JSON, computed by hand


def test_grid_expansion_counts_and_repetitions(analysis):
    analysis.edit_parameters(repetitions=3, hyperparameters={"neurons": [4, 8, 16]})
    parameters = config.load_parameters(analysis.parameters)
    trials = trial.expand(parameters)
    assert len(trials) == 2 * 3 * 3
    assert len({t.id for t in trials}) == len(trials)
    assert sorted({t.repetition for t in trials}) == [0, 1, 2]


def test_local_scan_end_to_end_and_rerun_skips_done(analysis, capsys, monkeypatch):
    code, out, err = run_cli(["run", "--local", "--name", "unit"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert "2 to run" in out and "hh_2016" in out
    scan = Workspace(analysis.root).scan("unit")
    found, corrupt = scan.records()
    assert len(found) == 2 and not corrupt
    assert all(r.done and r.epochs_run == 2 and r.backend == "jax" for r in found.values())
    manifest = scan.manifest()
    assert all(r.split_checksum == manifest["split_checksum"] for r in found.values())
    assert all(len(r.history["val_loss"]) == 2 for r in found.values())
    assert any((analysis.root / "cache" / "xla").iterdir())  # compiled programs shared by later trials and jobs
    mtimes = {p.name: p.stat().st_mtime_ns for p in scan.output_dir.iterdir()}
    code, out, _ = run_cli(["run", "--local", "--name", "unit"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "0 to run" in out
    assert {p.name: p.stat().st_mtime_ns for p in scan.output_dir.iterdir()} == mtimes
    assert not list((scan.root / "checkpoints").glob("*"))


def test_model_zip_loads_with_plain_keras_and_reproduces_the_record(analysis, capsys, monkeypatch, tmp_path):
    import keras

    code, _, err = run_cli(
        ["run", "--local", "--name", "unit", "--max-trials", "1"], analysis.root, capsys, monkeypatch
    )
    assert code == 0, err
    scan = Workspace(analysis.root).scan("unit")
    (record,) = scan.records()[0].values()
    with zipfile.ZipFile(scan.model_path(record.trial_id)) as archive:
        archive.extract("model.keras", tmp_path)
        metadata = json.loads(archive.read("metadata.json"))
    plain = keras.saving.load_model(tmp_path / "model.keras")  # no custom objects, no side files
    from hhscan.execution import runner

    parameters, sample_list = scan.load_config()
    data = runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))
    val = data.partition == VALIDATION
    scores = plain.predict(data.features[val], verbose=0)[:, 0]
    assert metrics.weighted_auc(data.labels[val], scores, data.learning_weight[val]) == pytest.approx(
        record.metrics["val_auc"], abs=1e-6
    )
    reloaded, meta = artifacts.load_model_zip(scan.model_path(record.trial_id))
    np.testing.assert_allclose(reloaded.predict(data.features[val], verbose=0)[:, 0], scores, rtol=1e-6)
    assert meta == metadata and meta["feature_names"] == data.feature_names
    # The scaler inside the model holds the training split's statistics.
    scaler = plain.get_layer("scaler")
    train = data.features[data.partition == TRAIN].astype(np.float64)
    np.testing.assert_allclose(np.ravel(scaler.mean), train.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.ravel(scaler.variance), train.var(axis=0), rtol=1e-4, atol=1e-6)


def test_failed_trial_is_recorded_and_the_scan_goes_on(analysis, capsys, monkeypatch):
    # A real training-time failure: a learning rate that makes a 3-layer ReLU net overflow to NaN in epoch 1.
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01, 1.0e30], "layers": [3], "neurons": [16]})
    code, out, err = run_cli(["run", "--local", "--name", "unit"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    found, _ = Workspace(analysis.root).scan("unit").records()
    statuses = sorted(r.status for r in found.values())
    assert statuses == ["DONE", "FAIL"]
    failed = next(r for r in found.values() if r.status == "FAIL")
    assert "diverged at epoch 1" in failed.error and failed.hyperparameters["learning_rate"] == 1.0e30
    assert "1 failed trial" in out
    # FAIL counts as missing: a rerun tries it again.
    assert [t.id for t in Workspace(analysis.root).scan("unit").missing()] == [failed.trial_id]


def test_truncated_record_is_never_counted_as_done(analysis, capsys, monkeypatch):
    run_cli(["run", "--local", "--name", "unit", "--max-trials", "1"], analysis.root, capsys, monkeypatch)
    scan = Workspace(analysis.root).scan("unit")
    (path,) = scan.output_dir.glob("*.csv")
    text = path.read_text()
    for cut in (len(text) - 2, len(text) // 2, 10):
        path.write_text(text[:cut])
        found, corrupt = scan.records()
        assert not found and path.name in corrupt
        assert len(scan.missing()) == 2
    path.write_text(text.replace('"DONE"', "DONE").replace(",DONE,", ",FAIL,"))
    assert not scan.records()[0]


def test_status_names_a_model_zip_without_its_record(analysis, capsys, monkeypatch):
    """A worker killed between the zip's rename and the record's write: status counts the trial missing and names
    the zip (resubmit retrains it)."""
    run_cli(["run", "--local", "--name", "unit", "--max-trials", "2"], analysis.root, capsys, monkeypatch)
    scan = Workspace(analysis.root).scan("unit")
    kept, lost = sorted(scan.records()[0])
    scan.output_dir.joinpath(f"{lost}.csv").unlink()
    code, out, _ = run_cli(["status", "unit"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "done: 1" in out and f"missing: {len(scan.trials()) - 1}" in out
    printed = " ".join(out.split())  # rich wraps long lines
    assert f"1 model zip(s) without a record (counted missing; resubmit retrains the trial and replaces the zip): " \
           f"slurm/unit/output/{lost}.zip" in printed
    assert f"{kept}.zip" not in printed


def test_record_round_trip():
    record = records.TrialRecord(trial_id="abc", status="DONE", repetition=0, hyperparameters={"a": [1]},
                                 criterion="val_auc", value=0.5, metrics={"val_auc": 0.5},
                                 history={"loss": [1.0, 0.5]}, best_epoch=None, error='x, "y"\nz')  # fmt: skip
    assert records.from_csv(records.to_csv(record)) == record
    long = records.TrialRecord(trial_id="abc", status="DONE", repetition=0, hyperparameters={}, criterion="val_auc",
                               history={key: [0.123456789] * 5000 for key in ("loss", "val_loss", "val_auc")})
    # A record of an older hhscan: the whole history in one cell, far beyond the csv module's default limit.
    assert records.from_csv(records.to_csv(long)) == long


def test_a_long_trainings_record_reads_with_pythons_csv_module(tmp_path):
    """3000 epochs of four metrics: the history goes beside the row, so the row reads with the csv module's default
    field limit (131072) and fits a spreadsheet cell; the record reads back whole, and a cut or missing history file
    makes it unreadable, never a record with half a history."""
    import csv
    import hashlib

    history = {key: [0.123456789012 + epoch / 7 for epoch in range(3000)] for key in ("loss", "val_loss", "auc", "val_auc")}
    record = records.TrialRecord(trial_id="long", status="DONE", repetition=0, hyperparameters={"a": 1},
                                 criterion="val_auc", value=0.7, metrics={"val_auc": 0.7}, history=history,
                                 epochs_run=3000)  # fmt: skip
    path = records.write_record(tmp_path, record)
    previous = csv.field_size_limit(131072)  # Python's default, as a user's own script has it
    try:
        with open(path, newline="") as handle:
            header, row = list(csv.reader(handle))
    finally:
        csv.field_size_limit(previous)
    assert max(len(cell) for cell in row) <= 32767 and path.stat().st_size < 4096
    beside = tmp_path / "long.history.json"
    assert json.loads(beside.read_text()) == history
    assert json.loads(row[header.index("history")]) == {"$file": "long.history.json",
                                                        "sha256": hashlib.sha256(beside.read_bytes()).hexdigest()}
    assert records.read_record(path) == record and records.read_records(tmp_path) == ({"long": record}, {})
    text = beside.read_text()
    beside.write_text(text[: len(text) // 2])
    found, corrupt = records.read_records(tmp_path)
    assert not found and "long.history.json does not match the record" in corrupt["long.csv"]
    beside.unlink()
    found, corrupt = records.read_records(tmp_path)
    assert not found and "long.history.json is missing" in corrupt["long.csv"]
    # Rewritten with a short history (kept in the row): the file beside it goes.
    short = records.TrialRecord(trial_id="long", status="DONE", repetition=0, hyperparameters={"a": 1},
                                criterion="val_auc", history={"loss": [0.5]})  # fmt: skip
    beside.write_text(text)
    records.write_record(tmp_path, short)
    assert not beside.exists() and records.read_records(tmp_path) == ({"long": short}, {})


def test_changed_dictionary_refused_for_an_existing_scan(analysis, capsys, monkeypatch):
    run_cli(["run", "--local", "--name", "unit", "--max-trials", "1"], analysis.root, capsys, monkeypatch)
    analysis.edit_parameters(hyperparameters={"epochs": [3]})
    code, _, err = run_cli(["run", "--local", "--name", "unit"], analysis.root, capsys, monkeypatch)
    assert code == 1
    assert "dictionary changed" in err and "epochs: [2] → [3]" in err and "Traceback" not in err


def test_three_class_scan(analysis3, capsys, monkeypatch):
    code, _, err = run_cli(
        ["run", "--local", "--name", "multi", "--max-trials", "1"], analysis3.root, capsys, monkeypatch
    )
    assert code == 0, err
    scan = Workspace(analysis3.root).scan("multi")
    (record,) = scan.records()[0].values()
    assert record.done and 0 < record.metrics["val_auc"] <= 1
    keras_model, meta = artifacts.load_model_zip(scan.model_path(record.trial_id))
    assert keras_model.output_shape == (None, 3) and meta["class_names"] == ["TT", "DY", "signal"]


def test_shipped_example_runs_end_to_end(example, capsys, monkeypatch):
    code, _, err = run_cli(["run", "--local", "--max-trials", "2"], example.root, capsys, monkeypatch)
    assert code == 0, err
    found, _ = Workspace(example.root).scan("local").records()
    assert len(found) == 2 and all(r.done for r in found.values())
    # The label branch never reaches the inputs: not among the model's features, and the scaler has 17 of them.
    record = next(iter(found.values()))
    metadata = artifacts.read_metadata(Workspace(example.root).scan("local").model_path(record.trial_id))
    assert "Type" not in metadata["feature_names"] and len(metadata["feature_names"]) == 17
    assert all(0.55 < r.value < 0.9 for r in found.values())


def test_tensorflow_backend_runs_a_trial(analysis):
    analysis.edit_parameters(training={"backend": "tensorflow"}, hyperparameters={"learning_rate": [0.01]})
    result = subprocess.run(
        [sys.executable, "-m", "hhscan.cli", "run", "--local", "--name", "tf"],
        cwd=analysis.root, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found, _ = Workspace(analysis.root).scan("tf").records()
    (record,) = found.values()
    assert record.done and record.backend == "tensorflow"


def test_cli_help_is_instant_and_lists_commands():
    result = subprocess.run([sys.executable, "-m", "hhscan.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO)  # fmt: skip
    assert result.returncode == 0 and "run" in result.stdout
    code = "import sys, hhscan.cli; print(sorted(m for m in ('keras', 'uproot', 'matplotlib', 'tensorflow', 'jax') if m in sys.modules))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert modules.stdout.strip() == "[]"


def test_a_trial_resumes_from_its_epoch_checkpoint(analysis, tmp_path):
    """Interrupted after 2 of 4 epochs (the checkpoint a killed job leaves), training continues at epoch 3."""
    from hhscan.execution import runner
    from hhscan.learning import training

    analysis.edit_parameters(training={"checkpoint_interval_s": 0, "early_stopping": {"enabled": False}})
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    data = runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))
    first = trial.expand(parameters)[0]
    checkpoint = tmp_path / "checkpoints"
    partial = training.train(first, data, parameters, checkpoint)  # 2 epochs, as a job killed after epoch 2
    with np.load(training.checkpoint_path(checkpoint, first.id)) as stored:
        assert json.loads(stored["__state__"].tobytes())["epoch"] == 1
    longer = trial.Trial(first.id, {**first.hyperparameters, "epochs": 4}, 0)
    resumed = training.train(longer, data, parameters, checkpoint)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 4
    assert resumed.history["loss"][:2] == partial.history["loss"]
    assert len(resumed.history["val_loss"]) == 4
    # Resuming is continuing: the same four epochs as one uninterrupted run.
    uninterrupted = training.train(longer, data, parameters)
    np.testing.assert_allclose(resumed.history["val_loss"], uninterrupted.history["val_loss"], rtol=1e-5)


def test_a_record_from_an_older_hhscan_still_reads():
    """Columns added later default; the checksum still guards the cells that are there."""
    import csv
    import io

    record = records.TrialRecord(trial_id="abc", status="DONE", repetition=0, hyperparameters={"a": 1},
                                 criterion="val_auc", value=0.7, metrics={"val_auc": 0.7})  # fmt: skip
    rows = list(csv.reader(io.StringIO(records.to_csv(record))))
    keep = [i for i, name in enumerate(rows[0][:-1]) if name not in ("training_settings", "fold")]
    cells = [rows[1][i] for i in keep]
    old = io.StringIO()
    writer = csv.writer(old, lineterminator="\n")
    writer.writerow([rows[0][i] for i in keep] + ["checksum"])
    writer.writerow([*cells, records._checksum(cells)])
    assert records.from_csv(old.getvalue()) == record
    tampered = old.getvalue().replace("0.7", "0.9")
    with pytest.raises(records.CorruptRecord, match="checksum"):
        records.from_csv(tampered)


def test_the_readme_from_python_example_runs(example, monkeypatch, capsys):
    # The README's library example, run as written on a copy of the shipped example: it cannot rot unseen.
    import re

    code = re.search(r"## From Python.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(example.root)
    exec(compile(code, "README.md", "exec"), {})
    assert "TrialRecord(trial_id=" in capsys.readouterr().out
    records, _ = Workspace(example.root).scan("mine").records()
    assert records and all(record.done for record in records.values())
