"""An own model: named in the parameters, its signature as its registry, packed, reproducible, bad input refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from hhscan.execution.scandir import Workspace
from hhscan.learning import trial
from hhscan.settings import config

HERE = Path(__file__).resolve().parent

# The behaviour the outside check expects: build(n_inputs, n_outputs, *, blocks, width, dropout), 4 trials.
NETS_BAR = '''
import keras


def build(n_inputs, n_outputs, *, blocks: int = 1, width: int = 16, dropout: float = 0.0):
    inputs = keras.Input(shape=(n_inputs,))
    x = keras.layers.Dense(width, activation="relu")(inputs)
    for _ in range(blocks):
        h = keras.layers.Dense(width, use_bias=False)(x)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("relu")(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout)(h)
        x = keras.layers.Add()([x, keras.layers.Dense(width)(h)])
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation="sigmoid")(x))
'''


def own_model(analysis, source: str = NETS_BAR, hyperparameters: dict | None = None, name: str = "nets_bar.py"):
    """The analysis fixture pointed at ``source`` (written beside the parameters) with a 4-trial grid."""
    (analysis.parameters.parent / name).write_text(source)
    content = yaml.safe_load(analysis.parameters.read_text())
    content["model"] = f"{name}:build"
    content["hyperparameters"] = hyperparameters or {"blocks": [1, 2], "width": [8, 16], "epochs": [1]}
    analysis.parameters.write_text(yaml.safe_dump(content, sort_keys=False))


def _error(analysis, capsys, monkeypatch, args=("run", "--local", "--name", "own")) -> str:
    code, out, err = run_cli(list(args), analysis.root, capsys, monkeypatch)
    assert code == 1, out + err
    assert "Traceback" not in err or "nets_bar.py" in err, err
    return err


# ------------------------------------------------------------------------------------------ the signature


def test_the_signature_is_the_registry_and_ids_hash_canonical_values(analysis):
    own_model(analysis, hyperparameters={"blocks": [1, 2], "width": [8, 16], "dropout": [0, 0.0], "epochs": [1]})
    parameters = config.load_parameters(analysis.parameters)
    entries = parameters.registry
    assert {name: (e.kind, e.default, e.network, e.hashed_at_default) for name, e in entries.items()} == {
        "optimizer": (str, "adam", False, True), "learning_rate": (float, 0.001, False, True),
        "batch_size": (int, 256, False, True), "epochs": (int, 20, False, True),
        "weight_decay": (float, 0.0, False, False), "blocks": (int, 1, True, False), "width": (int, 16, True, False), "dropout": (float, 0.0, True, False),
    }  # fmt: skip
    trials = trial.expand(parameters)
    assert len(trials) == 4  # dropout 0 and 0.0 are one value
    assert trials[0].hyperparameters == {"batch_size": 256, "blocks": 1, "dropout": 0.0, "epochs": 1,
                                         "learning_rate": 0.001, "optimizer": "adam", "weight_decay": 0.0,
                                         "width": 8}  # fmt: skip
    # By hand: the canonical point without the entries at their defaults (blocks 1, dropout 0.0, weight_decay 0.0)
    # + repetition.
    hashed = {"batch_size": 256, "epochs": 1, "learning_rate": 0.001, "optimizer": "adam", "width": 8}
    payload = json.dumps({"hp": hashed, "rep": 0}, sort_keys=True)
    assert trials[0].id == hashlib.sha256(payload.encode()).hexdigest()[:12]
    # Omitting the default, or writing 2 for 2.0, is the same trial.
    omitted = {k: v for k, v in trials[0].hyperparameters.items() if k != "dropout"}
    assert trial.trial_id(omitted, 0, entries) == trials[0].id
    assert trial.trial_id({**omitted, "learning_rate": 1e-3, "optimizer": "Adam"}, 0, entries) == trials[0].id


def test_literal_bool_and_string_annotations_and_an_adaptive_search_over_a_range(analysis, capsys, monkeypatch):
    source = NETS_BAR.replace(
        "def build(n_inputs, n_outputs, *, blocks: int = 1, width: int = 16, dropout: float = 0.0):",
        "from typing import Literal\n\n\ndef build(n_inputs, n_outputs, *, blocks: 'int' = 1, width: int = 16, "
        "dropout: float = 0.0, act: Literal['relu', 'gelu'] = 'relu', skip: bool = True):",
    )
    own_model(analysis, source, {"width": {"low": 8, "high": 32, "step": 8}, "act": ["gelu"], "skip": [False],
                                 "epochs": [1]})  # fmt: skip
    analysis.edit_parameters(search={"sampler": "random", "trials": 3})
    parameters = config.load_parameters(analysis.parameters)
    entries = parameters.registry
    assert (entries["blocks"].kind, entries["act"].choices, entries["skip"].kind) == (int, ("relu", "gelu"), bool)
    assert parameters.hyperparameters["width"] == {"low": 8, "high": 32, "log": False, "step": 8}
    assert parameters.hyperparameters["act"] == ["gelu"] and parameters.hyperparameters["skip"] == [False]
    code, out, err = run_cli(["run", "--local", "--name", "adaptive"], analysis.root, capsys, monkeypatch)
    assert code == 0, out + err
    found, _ = Workspace(analysis.root).scan("adaptive").records()
    assert len(found) == 3 and all(r.done for r in found.values())
    for record in found.values():
        point = record.hyperparameters
        assert point["width"] in (8, 16, 24, 32) and point["act"] == "gelu" and point["skip"] is False, point
        assert record.trial_id == trial.trial_id(point, 0, entries)  # an asked point's id is a grid point's


@pytest.mark.parametrize(
    ("hyperparameters", "source_change", "fragments"),
    [
        ({"widht": [8]}, None, ["hyperparameters.widht", "build() in nets_bar.py takes no argument 'widht'",
                                "closest: width"]),
        ({"width": [1.5]}, None, ["hyperparameters.width", "1.5 is not an integer (build() in nets_bar.py takes width: int)"]),
        ({"dropout": [True]}, None, ["hyperparameters.dropout", "True is not a number (build() in nets_bar.py takes dropout: float)"]),
        ({"width": {"low": 8.5, "high": 16}}, None, ["hyperparameters.width.low", "8.5 is not an integer (build() in nets_bar.py takes width: int)"]),
        ({"width": [8]}, ("width: int = 16", "width: list = 16"),
         ["model:", "build() in nets_bar.py: argument 'width' has 'list'", "int, float, bool, str or Literal"]),
        ({"width": [8]}, ("width: int = 16", "width: int"), ["argument 'width' needs a default"]),
        ({"width": [8]}, ("blocks: int = 1", "epochs: int = 1"), ["'epochs' is one of hhscan's training"]),
        ({"width": [8]}, ("def build(", "def biuld("), ["model:", "nets_bar.py has no function 'build'",
                                                           "closest: biuld"]),
    ],
)  # fmt: skip
def test_bad_hyperparameters_and_signatures_are_one_line(analysis, capsys, monkeypatch, hyperparameters,
                                                          source_change, fragments):  # fmt: skip
    source = NETS_BAR if source_change is None else NETS_BAR.replace(*source_change)
    own_model(analysis, source, hyperparameters)
    err = _error(analysis, capsys, monkeypatch)
    assert len(err.strip().splitlines()) == 1, err
    assert all(fragment in err for fragment in fragments), err
    assert not (analysis.root / "splits").exists()  # refused before any data is read


def test_a_missing_model_file_names_the_closest(analysis, capsys, monkeypatch):
    own_model(analysis)
    analysis.edit_parameters(model="nets_baz.py:build")
    err = _error(analysis, capsys, monkeypatch)
    assert "model: " in err and "nets_baz.py: no such file" in err and "closest: nets_bar.py" in err, err


def test_an_import_error_shows_the_users_traceback_only(analysis, capsys, monkeypatch):
    own_model(analysis, NETS_BAR + "\n\ndef helper():\n    return 1 / 0\n\n\nhelper()\n")
    err = _error(analysis, capsys, monkeypatch)
    line, *theirs = err.strip().splitlines()
    assert line.endswith("nets_bar.py: importing it failed (line 19 of nets_bar.py): ZeroDivisionError: division by "
                         "zero"), err  # fmt: skip
    assert theirs[0] == "Traceback (most recent call last):" and theirs[-1] == "ZeroDivisionError: division by zero"
    assert "nets_bar.py\", line 22, in <module>" in err and "nets_bar.py\", line 19, in helper" in err, err
    assert "model_function.py" not in err and "importlib" not in err, err  # none of hhscan's frames


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (('Dense(n_outputs, activation="sigmoid")', 'Dense(3, activation="softmax")'),
         "build() returned shape (None, 3) for 2 classes"),
        (('activation="sigmoid")(x))', 'activation="linear")(x))'), "outputs are not class probabilities"),
        (('activation="sigmoid")(x))', 'activation="sigmoid", bias_initializer=keras.initializers.Constant(float("nan")))(x))'),
         "non-finite outputs at initialisation"),
        (("    return keras.Model(", "    return 3\n    keras.Model("), "build() returned int, not a keras.Model"),
    ],
)  # fmt: skip
def test_a_model_that_does_not_fit_the_classes_is_refused_before_any_trial(analysis, capsys, monkeypatch, change,
                                                                           fragment):  # fmt: skip
    own_model(analysis, NETS_BAR.replace(*change))
    err = _error(analysis, capsys, monkeypatch)
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (analysis.root / "slurm" / "own" / "output").exists()


def test_build_raising_for_some_hyperparameters_fails_those_trials_only(analysis, capsys, monkeypatch):
    own_model(analysis, NETS_BAR.replace("    inputs = keras.Input(",
                                         "    if width == 8:\n        raise ValueError('width 8 is too narrow')\n"
                                         "    inputs = keras.Input("))  # fmt: skip
    code, out, err = run_cli(["run", "--local", "--name", "own"], analysis.root, capsys, monkeypatch)
    assert code == 0, out + err
    found, _ = Workspace(analysis.root).scan("own").records()
    by_width = {(r.hyperparameters["blocks"], r.hyperparameters["width"]): r for r in found.values()}
    assert sorted(by_width) == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert [by_width[k].status for k in sorted(by_width)] == ["FAIL", "DONE", "FAIL", "DONE"]
    assert "width 8 is too narrow" in by_width[(1, 8)].error


# ------------------------------------------------------------------------------------------- reproducible


def test_the_scan_keeps_and_imports_its_copy_and_refuses_a_changed_source(analysis, capsys, monkeypatch):
    own_model(analysis, hyperparameters={"blocks": [1], "width": [8, 16], "epochs": [1]})
    code, out, err = run_cli(["run", "--local", "--name", "own", "--max-trials", "1"], analysis.root, capsys,
                             monkeypatch)  # fmt: skip
    assert code == 0, out + err
    scan = Workspace(analysis.root).scan("own")
    copy = scan.root / "config" / "model_source.py"
    assert copy.read_text() == NETS_BAR
    assert scan.manifest()["model"] == {"function": "build", "sha256": hashlib.sha256(NETS_BAR.encode()).hexdigest()}
    resolved = json.loads((scan.root / "config" / "resolved.json").read_text())["parameters"]
    assert resolved["model"] == f"{copy.resolve()}:build"  # what jobs (local and Slurm) import
    submission = scan.snapshot_config("test")  # a Slurm job's frozen configuration names the copy too
    assert json.loads(submission.read_text())["parameters"]["model"] == f"{copy.resolve()}:build"

    # Editing the user's file mid-scan changes no job: the worker imports the copy (the edit would not import).
    user_file = analysis.parameters.parent / "nets_bar.py"
    user_file.write_text(NETS_BAR + "\nraise RuntimeError('edited mid-scan')\n")
    from hhscan.execution import runner

    done = runner.run_scan_trials(scan, None, context=runner.JobContext(config_path=str(submission)))
    assert [r.status for r in done] == ["DONE"]

    # run and resubmit of the scan refuse the changed source, in one line, writing nothing.
    user_file.write_text(NETS_BAR.replace("width: int = 16", "width: int = 32"))
    before = sorted(p.name for p in scan.output_dir.iterdir())
    err = _error(analysis, capsys, monkeypatch)
    assert "the source of the model " in err and "nets_bar.py:build changed" in err and len(err.strip().splitlines()) == 1, err
    err = _error(analysis, capsys, monkeypatch, ("resubmit", "own"))
    assert "nets_bar.py:build changed" in err, err
    assert sorted(p.name for p in scan.output_dir.iterdir()) == before
    assert copy.read_text() == NETS_BAR


# ------------------------------------------------------------------------------------------------ packing


def _check(report: dict, epochs: int) -> None:
    stopped = [alone for alone, _ in report["epochs_run"] if alone < epochs]
    assert stopped and len(stopped) < len(report["epochs_run"]), report  # some branches froze, others went on
    assert all(alone == packed for alone, packed in report["epochs_run"]), report
    assert report["n_train"] % 128, report  # a partial last batch: BatchNorm sees only its real events
    for key in ("history", "weights", "non_trainable"):
        assert max(report[key]) < 1e-5, (key, report)


def test_packed_residual_branches_equal_keras_fit_alone_on_jax(analysis):
    import own_model_packcheck

    own_model_packcheck.residual_project(analysis.root, epochs=3)
    _check(own_model_packcheck.compare(analysis.root), 3)


def test_packed_residual_branches_equal_keras_fit_alone_on_tensorflow(analysis):
    import own_model_packcheck

    own_model_packcheck.residual_project(analysis.root, epochs=3)
    result = subprocess.run(
        [sys.executable, str(HERE / "own_model_packcheck.py"), str(analysis.root)],
        capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _check(json.loads(result.stdout.strip().splitlines()[-1]), 3)


def test_a_package_module_function_and_its_missing_module(analysis, capsys, monkeypatch):
    package = analysis.root / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NETS_BAR)
    monkeypatch.syspath_prepend(str(analysis.root))
    own_model(analysis)
    analysis.edit_parameters(model="mypackage.nets:build")
    parameters = config.load_parameters(analysis.parameters)
    assert parameters.model == f"{(package / 'nets.py').resolve()}:build" and parameters.model_source == NETS_BAR
    assert len(trial.expand(parameters)) == 4
    analysis.edit_parameters(model="mypackage.nest:build")
    err = _error(analysis, capsys, monkeypatch)
    assert "model: no importable Python module 'mypackage.nest' (closest: nets)" in err, err


def test_three_classes_take_softmax_columns(analysis3, capsys, monkeypatch):
    softmax = NETS_BAR.replace('Dense(n_outputs, activation="sigmoid")', 'Dense(n_outputs, activation="softmax")')
    own_model(analysis3, NETS_BAR, {"blocks": [1], "width": [8], "epochs": [1]})
    err = _error(analysis3, capsys, monkeypatch)
    assert "build() returned shape (None, 1)" not in err and "outputs are not class probabilities" in err, err
    own_model(analysis3, softmax.replace("(n_outputs, activation", "(2, activation"), {"blocks": [1], "width": [8],
                                                                                     "epochs": [1]})  # fmt: skip
    err = _error(analysis3, capsys, monkeypatch)
    assert "build() returned shape (None, 2) for 3 classes: it must end in 3 softmax columns" in err, err
    own_model(analysis3, softmax, {"blocks": [1], "width": [8], "epochs": [1]})
    code, out, err = run_cli(["run", "--local", "--name", "own"], analysis3.root, capsys, monkeypatch)
    assert code == 0, out + err
    (record,) = Workspace(analysis3.root).scan("own").records()[0].values()
    assert record.done and 0 < record.metrics["val_auc"] <= 1


def test_builds_of_one_architecture_share_a_structure_key_whatever_keras_named_their_layers(analysis):
    import numpy as np
    from hhscan.learning import fused, model

    own_model(analysis)
    parameters = config.load_parameters(analysis.parameters)
    mean, variance = np.zeros(6), np.ones(6)

    def key(**point):
        net = model.build_own_model(*parameters.own_model, {"optimizer": "adam", "learning_rate": 0.01, **point}, 6, 2,
                                    mean, variance)  # fmt: skip
        model.compile_model(net, {"optimizer": "adam", "learning_rate": point.get("learning_rate", 0.01)}, 2)
        return fused.structure_key(net, net.optimizer)

    first = key(blocks=1, width=8)
    assert key(blocks=1, width=8, learning_rate=0.003) == first  # Keras named these layers dense_5, dense_6, …
    assert key(blocks=2, width=8) != first and key(blocks=1, width=16) != first
