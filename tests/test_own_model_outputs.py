"""An own model's outputs: the shipped example end to end (report, test, ONNX), its zip in plain Keras, custom
layers loaded from the zip's source, k-fold and whole-sample scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import uproot
import yaml
from conftest import make_events, run_cli, write_root

PLAIN_KERAS = """
import json, sys, zipfile, tempfile, numpy as np, keras
zip_path, features = sys.argv[1], np.load(sys.argv[2])
with tempfile.TemporaryDirectory() as d:
    zipfile.ZipFile(zip_path).extract("model.keras", d)
    net = keras.saving.load_model(d + "/model.keras")
print(json.dumps(np.asarray(net.predict(features, verbose=0))[:, 0].tolist()))
"""


def _inputs(path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tree = uproot.open(path)["Events"]
    arrays = tree.arrays([*names, "score"], library="np")
    return np.column_stack([arrays[n] for n in names]).astype(np.float32), arrays["score"]


def test_the_shipped_own_model_example_runs_reports_tests_and_exports(example, capsys, monkeypatch, tmp_path):
    parameters = example.root / "parameters" / "own_model.yaml"
    content = yaml.safe_load(parameters.read_text())
    content["hyperparameters"]["epochs"] = [1]
    parameters.write_text(yaml.safe_dump(content, sort_keys=False))
    started = time.perf_counter()
    code, out, err = run_cli(["run", "--local", "-p", str(parameters), "--name", "own"], example.root, capsys,
                             monkeypatch)  # fmt: skip
    assert code == 0, out + err
    print(f"own-model example, 4 trials, 1 epoch: {time.perf_counter() - started:.1f} s")
    assert "4 to run" in out
    for args in (["report", "own", "--no-plots"], ["test", "--model", "best"]):
        code, out, err = run_cli(args, example.root, capsys, monkeypatch)
        assert code == 0, f"{args}: {out}{err}"
    exported = subprocess.run([sys.executable, "-m", "hhscan.cli", "export", "--model", "best", "--format", "onnx"],
                              cwd=example.root, capture_output=True, text=True,
                              env={**os.environ, "KERAS_BACKEND": ""})  # its own process: export runs on TensorFlow
    assert exported.returncode == 0 and "max |Δscore| vs Keras" in exported.stdout, exported.stderr[-3000:]
    best = example.root / "models" / "own_best.zip"
    assert "config/model_source.py" in zipfile.ZipFile(best).namelist()
    names = [item["name"] for item in json.loads((example.root / "models" / "own_best.onnx.json").read_text())["inputs"]]
    features, scores = _inputs(example.root / "models" / "own_best" / "ttbar.root", names)

    # The zip in a fresh process with Keras alone (no hhscan, no model source): the scores hhscan test wrote.
    np.save(tmp_path / "x.npy", features)
    plain = subprocess.run([sys.executable, "-c", PLAIN_KERAS, str(best), str(tmp_path / "x.npy")],
                           capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    np.testing.assert_allclose(json.loads(plain.stdout.strip().splitlines()[-1]), scores, atol=1e-6)

    # The ONNX file with onnxruntime on the unscaled inputs: the same scores.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(example.root / "models" / "own_best.onnx"))
    (onnx_scores,) = session.run(None, {session.get_inputs()[0].name: features})
    np.testing.assert_allclose(onnx_scores[:, 0], scores, atol=1e-5)


CUSTOM = '''
import keras


class Scale(keras.layers.Layer):
    """A layer of the user's own: not a Keras layer, not registered."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def build(n_inputs, n_outputs, *, width: int = 8, factor: float = 0.5):
    inputs = keras.Input(shape=(n_inputs,))
    x = Scale(factor)(keras.layers.Dense(width, activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation="sigmoid")(x))
'''

HHSCAN_LOAD = """
import json, sys, numpy as np
from hhscan.learning import artifacts, model
bundle, metadata = artifacts.load_model_zip(sys.argv[1])
features, fold = np.load(sys.argv[2]), np.load(sys.argv[3])
print(json.dumps(model.predict(bundle, features, fold=fold).tolist()))
"""


def test_custom_layers_load_from_the_zips_source_in_a_kfold_bundle_and_score_later_data(analysis, capsys,
                                                                                       monkeypatch, tmp_path):
    (analysis.parameters.parent / "custom.py").write_text(CUSTOM)
    content = yaml.safe_load(analysis.parameters.read_text())
    content.update(model="custom.py:build", hyperparameters={"width": [8], "factor": [0.5], "epochs": [1]},
                   split={"name": "k3", "kind": "kfold", "folds": 3, "variable": "event"})
    analysis.parameters.write_text(yaml.safe_dump(content, sort_keys=False))
    for args in (["run", "--local", "--name", "custom"], ["report", "custom", "--no-plots"],
                 ["test", "--model", "best", "--output", "tt_2016"]):  # fmt: skip
        code, out, err = run_cli(args, analysis.root, capsys, monkeypatch)
        assert code == 0, f"{args}: {out}{err}"
    best = analysis.root / "models" / "custom_best.zip"
    assert {"fold0.keras", "fold2.keras", "config/model_source.py"} <= set(zipfile.ZipFile(best).namelist())
    # The user's file is gone: the zip alone holds the layer's source. Real data added after training is scored too.
    (analysis.parameters.parent / "custom.py").unlink()
    events = make_events(120, 0.1, 31)
    write_root(analysis.data / "data_2018.root", {"Events": {k: v for k, v in events.items() if k not in ("weight",
                                                                                                     "label")}})
    later = {**yaml.safe_load(analysis.sample_list.read_text()), "groups": [
        {"name": "data", "files": "data_2018.root", "tree": "Events"}]}  # fmt: skip
    for key in ("classes", "signal_classes", "label_branch", "eras"):
        later.pop(key, None)
    (analysis.root / "sample_lists" / "later.yaml").write_text(yaml.safe_dump(later, sort_keys=False))
    code, out, err = run_cli(["test", "--model", "best", "--samples", "sample_lists/later.yaml", "--output", "data"],
                             analysis.root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, out + err
    names = ["x1", "abs_x2", "btag", "njet_2", "njet_3", "njet_4"]
    _check_with_hhscan_in_a_fresh_process(best, analysis.root / "models" / "custom_best" / "samples" / "data.root",
                                          names, tmp_path)  # fmt: skip
    written = analysis.root / "models" / "custom_best" / "samples" / "tt_2016.root"
    _check_with_hhscan_in_a_fresh_process(best, written, names, tmp_path)


def _check_with_hhscan_in_a_fresh_process(best, written, names, tmp_path) -> None:
    tree = uproot.open(written)["Events"]
    assert set(names) <= set(tree.keys())
    features, scores = _inputs(written, names)
    fold = np.mod(tree["event"].array(library="np").astype(np.int64), 3)
    np.save(tmp_path / "x.npy", features)
    np.save(tmp_path / "f.npy", fold)
    loaded = subprocess.run([sys.executable, "-c", HHSCAN_LOAD, str(best), str(tmp_path / "x.npy"),
                             str(tmp_path / "f.npy")], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    np.testing.assert_allclose(json.loads(loaded.stdout.strip().splitlines()[-1]), scores, atol=1e-6)
