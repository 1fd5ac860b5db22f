"""hhscan export: ONNX (and SavedModel) equal to Keras on real scans, described by a JSON beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli
from hhscan.data.split import TEST
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import artifacts


def _best(project, capsys, monkeypatch, name: str):
    code, _, err = run_cli(["run", "--local", "--name", name, "--max-trials", "1"], project.root, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["report", name, "--no-plots"], project.root, capsys, monkeypatch)
    assert code == 0, err
    return project.root / "models" / f"{name}_best.zip"


def _export(project, *args):
    """``hhscan export`` as a user runs it: its own process (the export selects the TensorFlow backend)."""
    return subprocess.run([sys.executable, "-m", "hhscan.cli", "export", *args], cwd=project.root,
                          capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": ""})  # fmt: skip


def _test_features(project, name):
    scan = Workspace(project.root).scan(name)
    parameters, sample_list = scan.load_config()
    data = runner.prepare_dataset(parameters, sample_list, Workspace(project.root))
    return data, data.features[data.partition == TEST]


@pytest.mark.parametrize("fixture", ["analysis", "analysis3"])
def test_onnx_export_equals_keras_on_the_test_split(fixture, request, capsys, monkeypatch):
    import onnxruntime

    project = request.getfixturevalue(fixture)
    zip_path = _best(project, capsys, monkeypatch, "exp")
    result = _export(project, "--model", "exp_best", "--format", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    onnx_path = project.root / "models" / "exp_best.onnx"
    assert "max |Δscore| vs Keras" in result.stdout
    data, features = _test_features(project, "exp")
    keras_model, metadata = artifacts.load_model_zip(zip_path)
    reference = np.asarray(keras_model.predict(features, verbose=0))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)})[0]
    assert scores.shape == reference.shape == (len(features), 1 if fixture == "analysis" else 3)
    assert np.max(np.abs(scores - reference)) < 1e-5
    description = json.loads((project.root / "models" / "exp_best.onnx.json").read_text())
    assert [i["name"] for i in description["inputs"]] == metadata["feature_names"] == data.feature_names
    assert description["inputs"][1]["expression"] == "abs(x2)" and description["inputs"][3]["expression"] == "(njet) == 2"
    assert description["class_names"] == data.class_names
    assert description["check"]["events"] == len(features) and description["check"]["max_abs_difference"] < 1e-5
    assert description["provenance"]["split_checksum"] == metadata["split_checksum"]


def test_saved_model_export_is_checked_too(analysis, capsys, monkeypatch):
    _best(analysis, capsys, monkeypatch, "sm")
    result = _export(analysis, "--model", "sm_best", "--format", "saved_model", "--dir", "exported")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (analysis.root / "exported" / "sm_best_saved_model" / "saved_model.pb").exists()
    assert json.loads((analysis.root / "exported" / "sm_best_saved_model.json").read_text())["check"]["events"] > 0


# Run in a subprocess before export_model: the exported network's folded scaler gets its offsets shifted by 0.01,
# so the export really computes other scores than Keras (a damaged export), and the comparison must see it.
DAMAGED_EXPORT = (
    "from hhscan.results import export; export.select_backend(); from pathlib import Path; "
    "from hhscan.execution.scandir import Workspace; folded = export._with_folded_scaler\n"
    "def damaged(keras_model):\n"
    "    exportable = folded(keras_model); scaler = exportable.get_layer('scaler'); w = scaler.get_weights()\n"
    "    scaler.set_weights([w[0], w[1] + 0.01]); return exportable\n"
    "export._with_folded_scaler = damaged\n"
)


def _contents(directory):
    """Every file under ``directory`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_export_that_differs_is_refused_and_the_earlier_one_kept(analysis, capsys, monkeypatch):
    """The check is real: an export whose scores differ from Keras (its scaler damaged) is refused at the default
    tolerance, and an earlier good export of the same name stays byte for byte, with no temporary file left."""
    _best(analysis, capsys, monkeypatch, "tight")
    good = _export(analysis, "--model", "tight_best", "--format", "onnx", "--dir", "out")
    assert good.returncode == 0, good.stderr[-2000:]
    before = _contents(analysis.root / "out")
    assert sorted(before) == ["tight_best.onnx", "tight_best.onnx.json"]
    code = DAMAGED_EXPORT + (
        "w = Workspace(Path('.')); z = Path('models/tight_best.zip'); "
        "export.export_model(z, 'onnx', Path('out'), export.model_test_events(z, w)[0])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=analysis.root, capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": ""})  # fmt: skip
    assert result.returncode != 0, result.stderr[-2000:]
    assert "differs from Keras by up to" in result.stderr and "(allowed 1e-05)" in result.stderr
    assert _contents(analysis.root / "out") == before


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "best", "--format", "lwtnn"], ["--format must be one of onnx, saved_model", "'lwtnn'"]),
        (["--model", "nope_best"], ["no model 'nope_best'"]),
    ],
)
def test_bad_export_input_is_one_line(analysis, capsys, monkeypatch, args, fragments):
    code, _, err = run_cli(["export", *args], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_kfold_bundle_exports_one_onnx_per_fold_and_the_fold_rule(analysis, capsys, monkeypatch):
    """Each event, scored by the ONNX file the JSON names for its fold (``event % 3``, computed here from the files
    read with uproot, features built by hand), gets the bundle's Keras score."""
    import onnxruntime
    import uproot
    import yaml

    kfold = {"name": "k3", "kind": "kfold", "folds": 3, "variable": "event"}
    analysis.edit_parameters(split={**kfold, "train": None, "validation": None, "test": None},
                             hyperparameters={"epochs": [1]})  # fmt: skip
    # ROOT files only (DY is HDF5), so that every event can be read back here with uproot.
    samples = yaml.safe_load(analysis.sample_list.read_text())
    analysis.edit_samples(groups=[group for group in samples["groups"] if group["files"].endswith(".root")])
    zip_path = _best(analysis, capsys, monkeypatch, "kf")
    result = _export(analysis, "--model", "kf_best", "--format", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    models = analysis.root / "models"
    assert sorted(p.name for p in models.glob("kf_best*.onnx")) == [f"kf_best_fold{f}.onnx" for f in range(3)]
    printed = " ".join(result.stdout.split())  # rich wraps long lines

    features, fold = [], []
    for name in ("hh_2016", "tt_2016", "tt_2017", "hh_2017"):
        events = uproot.open(analysis.data / f"{name}.root")["Events"].arrays(library="np")
        keep = (events["x2"] > -6) & ~(events["njet"] > 4) & (events["weight"] > 0)  # training drops weight ≤ 0
        njet = events["njet"][keep]
        columns = [events["x1"][keep], np.abs(events["x2"][keep]), events["jet_b-tag"][keep]]
        features.append(np.column_stack([*columns, *(njet == value for value in (2, 3, 4))]).astype(np.float32))
        fold.append(events["event"][keep] % 3)
    features, fold = np.concatenate(features), np.concatenate(fold)
    bundle, metadata = artifacts.load_model_zip(zip_path)
    assert metadata["feature_names"] == ["x1", "abs_x2", "btag", "njet_2", "njet_3", "njet_4"]
    reference = bundle.predict(features, fold)

    description = json.loads((models / "kf_best.onnx.json").read_text())
    rule = description["kfold"]
    assert rule["variable"] == "event" and rule["folds"] == 3 and rule["rule"] == "variable mod folds"
    assert "((v % 3) + 3) % 3" in rule["note"]
    assert description["files"] == [f"kf_best_fold{f}.onnx" for f in range(3)]
    assert [entry["fold"] for entry in rule["file_for_fold"]] == [0, 1, 2]
    scores = np.full(len(features), np.nan, np.float32)
    for entry in rule["file_for_fold"]:
        session = onnxruntime.InferenceSession(str(models / entry["file"]), providers=["CPUExecutionProvider"])
        mine = fold == entry["fold"]
        scores[mine] = session.run(None, {session.get_inputs()[0].name: features[mine]})[0][:, 0]
    assert np.max(np.abs(scores - reference)) < 1e-5
    check = description["check"]
    assert check["events"] == len(features) and check["max_abs_difference"] < 1e-5
    assert [c["events"] for c in check["folds"]] == [int((fold == f).sum()) for f in range(3)]
    assert check["max_abs_difference"] == max(c["max_abs_difference"] for c in check["folds"])
    assert description["provenance"]["split_checksum"] == metadata["split_checksum"]
    assert f"max |Δscore| vs Keras {check['max_abs_difference']:.2g} on {len(features)} test events (each fold" in printed

    # Refused (each fold model's export damaged): every fold file and the JSON of the good export stay as they were.
    before = {p.name: p.read_bytes() for p in models.glob("kf_best*")}
    code = DAMAGED_EXPORT + (
        "z = Path('models/kf_best.zip'); f, k = export.model_test_events(z, Workspace(Path('.'))); "
        "export.export_model(z, 'onnx', Path('models'), f, test_folds=k)"
    )
    refused = subprocess.run([sys.executable, "-c", code], cwd=analysis.root, capture_output=True, text=True,
                             env={**os.environ, "KERAS_BACKEND": ""})  # fmt: skip
    assert refused.returncode != 0 and "(each fold model on its own test fold, 3 folds)" in refused.stderr
    assert {p.name: p.read_bytes() for p in models.glob("kf_best*")} == before
    assert not list(models.glob(".*kf_best*"))  # no temporary export left behind
