"""Bad input: one line naming the file, key or branch (and the closest names), exit 1, no traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import LUMI, SUMW, XSEC, Analysis, build_analysis, make_events, run_cli, write_h5, write_root
from hhscan.data import dataset
from hhscan.execution.scandir import ScanDirectory
from hhscan.learning import artifacts, training, trial
from hhscan.settings import config


def _nan_inputs(analysis):
    events = make_events(50, -0.5, 4)
    events["x1"][3] = np.nan
    write_root(analysis.data / "tt_2017.root", {"Events": events})


def _all_negative(analysis):
    events = make_events(50, -0.5, 4)
    events["weight"] = -np.abs(events["weight"])
    write_root(analysis.data / "tt_2017.root", {"Events": events})


def _nan_one_hot(analysis):
    events = make_events(50, -0.5, 4)
    njet = events["njet"].astype(np.float32)
    kept = int(np.flatnonzero((events["x2"] > -6) & (events["weight"] > 0))[0])
    njet[kept] = np.nan  # passes the cut: NaN > 4 is false
    events["njet"] = njet
    write_root(analysis.data / "tt_2017.root", {"Events": events})


def _with_period(analysis, expression):
    """Every file gets an integer branch 'period' = njet + 99998 (100000 … 100002), one-hot on [100001, 100002]."""
    import h5py
    import uproot

    for path in sorted(analysis.data.iterdir()):
        if path.suffix == ".root":
            with uproot.open(path) as handle:
                trees = {name: handle[name].arrays(library="np") for name in handle.keys(cycle=False)}
            for columns in trees.values():
                columns["period"] = columns["njet"].astype(np.int64) + 99998
            write_root(path, trees)
        elif path.suffix == ".h5":
            with h5py.File(path) as handle:
                array = handle["events"][()]
            columns = {name: array[name] for name in array.dtype.names}
            columns["period"] = columns["njet"].astype(np.int64) + 99998
            write_h5(path, "events", columns)
    analysis.edit_samples(inputs=["x1", {"name": "period", "expr": expression, "one_hot": [100001, 100002]}])


def _group_without_era(analysis):
    groups = analysis.samples_yaml()["groups"]
    groups[4] = {k: v for k, v in groups[4].items() if k != "era"}  # a signal: no xsec needed (nor a lumi)
    analysis.edit_samples(groups=groups, inputs=["x1", {"name": "era", "expr": "$era", "one_hot": ["2016", "2017"]}])


def _hp(**values):
    return lambda analysis: analysis.edit_parameters(hyperparameters=values)


def _unequal_h5(analysis):
    import h5py

    events = make_events(400, -0.2, 5)
    (analysis.data / "dy_2016.h5").unlink()
    with h5py.File(analysis.data / "dy_2016.h5", "w") as handle:
        group = handle.create_group("events")
        for name, values in events.items():
            group.create_dataset(name, data=values[:-1] if name == "x1" else values)


def _groups(analysis, index, **changes):
    groups = analysis.samples_yaml()["groups"]
    groups[index].update(changes)
    return {"groups": [{k: v for k, v in g.items() if v is not None} for g in groups]}


CASES = {
    "missing data file": (lambda a: (a.data / "tt_2017.root").unlink(), ["tt_2017.root", "file not found"]),
    "not a ROOT file": (
        lambda a: (a.data / "tt_2017.root").write_text("hello"),
        ["tt_2017.root", "not a readable ROOT"],
    ),
    "missing tree": (
        lambda a: a.edit_samples(**_groups(a, 2, tree="Event")),
        ["no tree 'Event'", "closest: Events"],
    ),
    "missing HDF5 dataset": (
        lambda a: a.edit_samples(**_groups(a, 3, tree="event")),
        ["dy_2016.h5", "no dataset 'event'", "closest: events"],
    ),
    "missing branch": (
        lambda a: a.edit_samples(other_variables=["evnt"]),
        ["other_variables uses unknown branch 'evnt'", "closest: event"],
    ),
    "unknown sample-list key": (
        lambda a: a.edit_samples(input_variables=["x1"]),
        ["analysis.yaml", "unknown key 'input_variables'", "inputs)"],
    ),
    "unknown nested key": (
        lambda a: a.edit_parameters(training={"earlystopping": {}}),
        ["scan.yaml", "training.earlystopping", "closest: early_stopping"],
    ),
    "unknown hyperparameter": (
        lambda a: a.edit_parameters(hyperparameters={"nodes": [3]}),
        ["hyperparameters.nodes", "closest: neurons"],
    ),
    "scalar instead of list": (
        lambda a: a.edit_parameters(hyperparameters={"epochs": 5}),
        ["scan.yaml", "hyperparameters.epochs", "must be a list", "[5]"],
    ),
    "ratios not summing to 1": (
        lambda a: a.edit_parameters(split={"train": 0.7}),
        ["scan.yaml", "split", "must sum to 1", "1.1"],
    ),
    "cut syntax error": (lambda a: a.edit_samples(cut="x2 > -6 &&"), ["analysis.yaml:cut", "syntax error"]),
    "unknown branch in cut": (
        lambda a: a.edit_samples(cut="x3 > 0"),
        ["cut '(x3 > 0)' uses unknown branch 'x3'", "closest: x2, x1", "hh_2016.root"],
    ),
    "zero events after cut": (
        lambda a: a.edit_samples(cut="x1 > 1000"),
        ["no event passes the cut", "x1 > 1000"],
    ),
    "all weights non-positive": (_all_negative, ["tt_2017.root", "weight ≤ 0"]),
    "missing xsec": (
        lambda a: (a.data / "xsec_2017.json").write_text('{"ttbar_2017.root": 1}'),
        ["no cross-section", "tt_2017.root", "closest: ttbar_2017.root"],
    ),
    "missing weight sum": (
        lambda a: (a.data / "event_weight_sum_2017.json").write_text("{}"),
        ["event_weight_sum", "tt_2017.root"],
    ),
    "class with no samples": (
        lambda a: a.edit_samples(classes=["background", "signal", "ttH"]),
        ["analysis.yaml:classes", "class 'ttH' has no samples"],
    ),
    "NaN in inputs": (_nan_inputs, ["tt_2017.root", "input 'x1' is NaN or infinite in 1"]),
    "label branch as input": (
        lambda a: a.edit_samples(inputs=["x1", "label"]),
        ["inputs.1", "label branch 'label'"],
    ),
    "unknown era": (
        lambda a: a.edit_samples(**_groups(a, 1, era="2018")),
        ["groups.1.era", "unknown era '2018'"],
    ),
    "unknown optimizer": (
        lambda a: a.edit_parameters(hyperparameters={"optimizer": ["adamm"]}),
        ["unknown optimizer 'adamm'", "closest: adam"],
    ),
    "unknown criterion": (
        lambda a: a.edit_parameters(eval_criterion="val_f1"),
        ["scan.yaml:eval_criterion: unknown criterion 'val_f1'"],
    ),
    "invalid YAML": (
        lambda a: a.parameters.write_text("samples: [unclosed\n"),
        ["scan.yaml", "not valid YAML"],
    ),
    "missing parameters file": (lambda a: a.parameters.unlink(), ["scan.yaml", "no such configuration file"]),
    "glob matching nothing": (
        lambda a: a.edit_samples(**_groups(a, 0, files="zz_*.root")),
        ["groups.0.files", "matches no file"],
    ),
    # Hyperparameter values (every range of the registry is in tests/test_hyperparameters.py).
    "epochs 0": (_hp(epochs=[0]), ["scan.yaml:hyperparameters.epochs: 0 is not in [1, ∞)"]),
    "negative epochs": (_hp(epochs=[-5]), ["scan.yaml:hyperparameters.epochs: -5 is not in [1, ∞)"]),
    "learning rate 0": (_hp(learning_rate=[0]), ["scan.yaml:hyperparameters.learning_rate: 0 is not in (0, ∞)"]),
    "negative learning rate": (_hp(learning_rate=[-1e-3]), ["hyperparameters.learning_rate: -0.001 is not in (0"]),
    "negative l2": (_hp(l2=[-0.5]), ["scan.yaml:hyperparameters.l2: -0.5 is not in [0, ∞)"]),
    "batch size 0": (_hp(batch_size=[0]), ["scan.yaml:hyperparameters.batch_size: 0 is not in [1, ∞)"]),
    "negative batch size": (_hp(batch_size=[-8]), ["hyperparameters.batch_size: -8 is not in [1, ∞)"]),
    "neurons 0": (_hp(neurons=[8, 0]), ["scan.yaml:hyperparameters.neurons: 0 is not in [1, ∞)"]),
    "dropout 1.5": (_hp(dropout=[1.5]), ["scan.yaml:hyperparameters.dropout: 1.5 is not in [0, 1)"]),
    "misspelt activation": (
        _hp(activation=["rellu"]),
        ["hyperparameters.activation: unknown activation 'rellu'", "closest: relu"],
    ),
    "boolean for a number": (_hp(neurons=[True]), ["hyperparameters.neurons: True is not an integer"]),
    # Values of the configuration files.
    "no test events": (
        lambda a: a.edit_parameters(split={"train": 0.8, "validation": 0.2, "test": 0}),
        ["scan.yaml:split: test is 0", "'hhscan test' scores it"],
    ),
    "no validation events": (
        lambda a: a.edit_parameters(split={"train": 1.0, "validation": 0, "test": 0}),
        ["scan.yaml:split: validation is 0", "ranked"],
    ),
    "zero class factor": (
        lambda a: a.edit_samples(class_weight_factors={"signal": 0}),
        ["analysis.yaml:class_weight_factors: the factor of class 'signal' must be a positive number, got 0"],
    ),
    "negative class factor": (
        lambda a: a.edit_samples(class_weight_factors={"background": -2}),
        ["analysis.yaml:class_weight_factors", "'background'", "got -2"],
    ),
    "zero lumi": (
        lambda a: a.edit_samples(eras={"2017": {"lumi": 0}}),
        ["analysis.yaml:eras.2017.lumi: must be a positive number, got 0"],
    ),
    "era without lumi": (  # its samples have cross-sections: a default of 1 pb-1 would make every yield wrong
        lambda a: a.edit_samples(eras={"2017": {"lumi": None}}),
        ["analysis.yaml:eras.2017: no lumi, which 'tt_2017.root' (groups.2) needs", "give lumi: in pb-1"],
    ),
    "group xsec without era": (
        lambda a: a.edit_samples(**_groups(a, 3, era=None, xsec=6000.0, event_weight_sum=2e7)),
        ["analysis.yaml:groups.3: group 'dy' has xsec but no era, so no lumi", "eras: 2016, 2017"],
    ),
    "group event_weight_sum without era": (
        lambda a: a.edit_samples(**_groups(a, 3, era=None, event_weight_sum=2e7)),
        ["analysis.yaml:groups.3: group 'dy' has event_weight_sum but no era, so no lumi"],
    ),
    "signal_classes naming no class": (
        lambda a: a.edit_samples(signal_classes=["signal", "HH"]),
        ["analysis.yaml:signal_classes: 'HH' is not a class (classes: background, signal"],
    ),
    "negative background uncertainty": (
        lambda a: a.edit_samples(significance={"background_uncertainty": -0.1}),
        ["analysis.yaml:significance.background_uncertainty: Input should be greater than or equal to 0"],
    ),
    "misspelt significance guard": (
        lambda a: a.edit_samples(significance={"min_bkg_events": 5}),
        ["analysis.yaml: unknown key 'significance.min_bkg_events'", "closest: min_background_events"],
    ),
    "negative group xsec": (
        lambda a: a.edit_samples(**_groups(a, 3, xsec=-6000.0, event_weight_sum=2e7)),
        ["analysis.yaml:groups.3.xsec: must be a positive number, got -6000"],
    ),
    "zero xsec in JSON": (
        lambda a: (a.data / "xsec_2017.json").write_text('{"tt_2017.root": 0}'),
        ["xsec_2017.json: 'tt_2017.root' is 0: xsec must be positive"],
    ),
    "nested xsec JSON": (
        lambda a: (a.data / "xsec_2017.json").write_text('{"2017": {"tt_2017.root": 820}}'),
        [
            "xsec_2017.json: key '2017' holds neither 'xsec' nor 'event_weight_sum'",
            '{"<file name, file stem or group name>": number, ...} or',
            '{"xsec": number, "event_weight_sum": number}',
        ],
    ),
    "xsec JSON with text": (
        lambda a: (a.data / "xsec_2017.json").write_text('{"tt_2017.root": "820 pb"}'),
        ["xsec_2017.json: 'tt_2017.root' is \"820 pb\", not a number; expected {"],
    ),
    "process object without a number": (
        lambda a: (a.data / "xsec_2017.json").write_text('{"tt": {"xsec": null, "event_weight_sum": 1.6e6}}'),
        ["xsec_2017.json: 'tt.xsec' is null, not a number"],
    ),
    "xsec JSON as a list": (
        lambda a: (a.data / "xsec_2017.json").write_text("[820]"),
        ["xsec_2017.json: expected an object, laid out as {"],
    ),
    "text one-hot values on a number": (
        lambda a: a.edit_samples(inputs=["x1", {"name": "njet", "expr": "njet", "one_hot": ["two", "three"]}]),
        ["hh_2016.root:Events: one-hot input 'njet' is numeric but its one_hot lists the text 'two'"],
    ),
    "numbers as one-hot values of $era": (
        lambda a: a.edit_samples(inputs=["x1", {"name": "era", "expr": "$era", "one_hot": [2016, 2017]}]),
        ["analysis.yaml:inputs.1: '$era' is text but its one_hot lists the number 2016", 'one_hot: ["2016"]'],
    ),
    "one-hot category absent": (
        lambda a: a.edit_samples(inputs=["x1", {"name": "njet", "expr": "njet", "one_hot": [2, 3, 4, 7]}]),
        [
            "analysis.yaml:inputs: one-hot input 'njet' lists the category 7, which no training event has",
            "(values present: 2, 3, 4)",
        ],
    ),
    "events outside the one-hot categories": (
        lambda a: a.edit_samples(inputs=["x1", {"name": "njet", "expr": "njet", "one_hot": [2, 3]}]),
        ["hh_2016.root:Events: one-hot input 'njet' is 4 in ", " selected events, none of its categories [2, 3]"],
    ),
    "NaN one-hot value": (
        _nan_one_hot,
        ["tt_2017.root:Events: one-hot input 'njet' is NaN or infinite in 1 selected events; cut them away"],
    ),
    "integer one-hot value next to a large category": (
        lambda a: _with_period(a, "period"),  # 100000 is within np.isclose's relative tolerance of 100001
        ["hh_2016.root:Events: one-hot input 'period' is 100000 in ", "none of its categories [100001, 100002]"],
    ),
    "float one-hot value next to a large category": (
        lambda a: _with_period(a, "period * 1.0"),
        ["hh_2016.root:Events: one-hot input 'period' is 100000.0 in ", "none of its categories [100001, 100002]"],
    ),
    "$era of a group without era": (
        _group_without_era,  # its $era is '': adding '' to one_hot is no fix
        ["hh_2017.root:Events: one-hot input 'era' is $era, but the group of this file has no era: give it one "
         "of ['2016', '2017']"],
    ),
    "$era category absent": (
        # Every era present is listed: a present era left out is refused per file first (the case above).
        lambda a: a.edit_samples(inputs=["x1", {"name": "era", "expr": "$era", "one_hot": ["2016", "2017", "2018"]}]),
        ["one-hot input 'era' lists the category '2018'", "(values present: '2016', '2017')"],
    ),
    "$class in a cut": (
        lambda a: a.edit_samples(cut="$class == 1"),
        ["analysis.yaml:cut: '$class == 1' uses '$class', a text column that can only be a one-hot input"],
    ),
    "$sample in a group weight": (
        lambda a: a.edit_samples(**_groups(a, 1, weight="weight * ($sample > 0)")),
        ["analysis.yaml:groups.1.weight", "uses '$sample'"],
    ),
    "missing weight branch": (
        lambda a: a.edit_samples(weight="genWeight"),
        [
            "hh_2016.root:Events: weight 'genWeight' uses unknown branch 'genWeight'",
            'for files without event weights give their group weight: "1"',
        ],
    ),
    "HDF5 datasets of unequal length": (
        lambda a: _unequal_h5(a),
        ["dy_2016.h5:events: datasets of unequal length: 'x2' has 400 entries, 'x1' 399"],
    ),
}


# "eval_criterion: eval_criterion:": a validator's message repeating the location pydantic already names.
DOUBLED_PREFIX = re.compile(r"(?<![\w.])([\w.]+): \1:")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(case, analysis, capsys, monkeypatch):
    break_it, expected = CASES[case]
    break_it(analysis)
    code, _, err = run_cli(["run", "--local", "--name", "bad"], analysis.root, capsys, monkeypatch)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hhscan: error: ")
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err
    assert not DOUBLED_PREFIX.search(lines[0]), f"a key named twice in {lines[0]!r}"


def test_signal_classes_of_a_multiclass_task_must_be_classes(tmp_path, capsys, monkeypatch):
    """With 3+ classes a signal name that is no class gave no signal column: Z 0 for every trial, ranked by id."""
    analysis = build_analysis(tmp_path / "multi", classes=3)
    groups = analysis.samples_yaml()["groups"]
    for group in groups:
        group["class"] = {"TT": "bkgA", "DY": "bkgB"}.get(group["class"], group["class"])
    analysis.edit_samples(classes=["bkgA", "bkgB", "signal"], groups=groups, signal_classes=["HH"])
    code, _, err = run_cli(["run", "--local", "--name", "bad"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "analysis.yaml:signal_classes: 'HH' is not a class (classes: bkgA, bkgB, signal; " in err
    analysis.edit_samples(signal_classes=[])
    code, _, err = run_cli(["run", "--local", "--name", "bad"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "analysis.yaml:signal_classes: empty; name at least one of the classes bkgA, bkgB, signal" in err


def test_debug_shows_the_traceback(analysis, capsys, monkeypatch):
    analysis.edit_samples(cut="x3 > 0")
    with pytest.raises(Exception, match="uses unknown branch 'x3'"):
        run_cli(["--debug", "run", "--local"], analysis.root, capsys, monkeypatch)


def test_a_bad_rerun_damages_nothing_already_written(analysis, capsys, monkeypatch):
    code, _, err = run_cli(["run", "--local", "--name", "keep"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    before = {p: p.read_bytes() for p in analysis.root.rglob("*") if p.is_file() and "data" not in p.parts}
    _nan_inputs(analysis)
    code, _, err = run_cli(["run", "--local", "--name", "keep"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "NaN" in err
    after = {p: p.read_bytes() for p in analysis.root.rglob("*") if p.is_file() and "data" not in p.parts}
    assert after == before


# ------------------------------------------------------------------ a finished scan, reset before each test


def _cli_quietly(args: list[str], cwd: Path) -> int:
    from hhscan import cli

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["hhscan", *args])
        try:
            cli.main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory) -> tuple[Path, Path]:
    """A scan 'keep' run and reported once per module; tests get a copy at the same path (caches stay valid)."""
    base = tmp_path_factory.mktemp("finished")
    analysis = build_analysis(base / "project")
    assert _cli_quietly(["run", "--local", "--name", "keep"], analysis.root) == 0
    assert _cli_quietly(["report", "keep", "--no-plots"], analysis.root) == 0
    shutil.copytree(analysis.root, base / "pristine", symlinks=True)
    return analysis.root, base / "pristine"


@pytest.fixture
def finished(_pristine) -> Analysis:
    root, pristine = _pristine
    if root.exists():
        for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        shutil.rmtree(root)
    shutil.copytree(pristine, root, symlinks=True)
    return Analysis(root, root / "parameters" / "scan.yaml", root / "sample_lists" / "analysis.yaml", root / "data")


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _one_error_line(code: int, err: str, *fragments: str) -> str:
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hhscan: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err
    assert not DOUBLED_PREFIX.search(lines[0]), f"a key named twice in {lines[0]!r}"
    return lines[0]


OPTIONS = {
    "negative --max-trials": (["run", "--local", "--name", "keep", "--max-trials", "-1"],
                              ["--max-trials -1: must be 0 or more"]),
    "name escaping slurm/": (["run", "--local", "--name", "../escape"],
                             ["--name '../escape': a scan name may contain only letters, digits"]),
    "hidden name": (["run", "--local", "--name", ".keep"], ["--name '.keep'", "must not start with '.' or '-'"]),
    "name with a slash": (["submit", "--name", "a/b", "--dry-run"], ["--name 'a/b'"]),
    "resubmit outside slurm/": (["resubmit", "../keep", "--dry-run"], ["--name '../keep'"]),
    "negative --top": (["report", "keep", "--top", "-3"], ["--top -3: must be 0 or more"]),
    "zero --split": (["submit", "--name", "new", "--split", "0"], ["--split 0: must be 1 or more"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_options_are_refused_and_nothing_is_written(case, finished, capsys, monkeypatch):
    args, fragments = OPTIONS[case]
    before = _files(finished.root.parent)
    code, _, err = run_cli(args, finished.root, capsys, monkeypatch)
    _one_error_line(code, err, *fragments)
    assert _files(finished.root.parent) == before
    assert not (finished.root / "escape").exists() and not (finished.root / "slurm" / "a").exists()


def test_debug_is_accepted_after_the_command(analysis, capsys, monkeypatch):
    analysis.edit_samples(cut="x3 > 0")
    code, _, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
    _one_error_line(code, err, "uses unknown branch 'x3'")
    with pytest.raises(Exception, match="uses unknown branch 'x3'"):
        run_cli(["run", "--local", "--debug"], analysis.root, capsys, monkeypatch)


def test_every_trial_failing_exits_1_and_error_text_prints_literally(tmp_path, capsys, monkeypatch):
    # A workspace "a[/b]" puts "[/b]" into paths and errors: rich must print it, not read it as a closing tag.
    analysis = build_analysis(tmp_path / "a[" / "b]")
    # Both trials fail for real: a learning rate that makes a 3-layer ReLU net overflow to NaN in epoch 1.
    analysis.edit_parameters(hyperparameters={"learning_rate": [1.0e30, 1.0e31], "layers": [3], "neurons": [16]})
    trials = trial.expand(config.load_parameters(analysis.parameters))
    scan = ScanDirectory(analysis.root / "slurm" / "bad")
    for item in trials:  # an unreadable checkpoint: said in the log, the trial trains from epoch 1 (no crash)
        training.checkpoint_path(scan.root / "checkpoints", item.id).mkdir(parents=True)
    args = ["run", "--local", "--name", "bad", "--workspace", str(analysis.root)]  # absolute paths in errors
    code, out, err = run_cli(args, analysis.root, capsys, monkeypatch)
    _one_error_line(code, err, "all 2 trial(s) of scan 'bad' failed", f"under {scan.output_dir}", "hhscan status bad")
    printed = " ".join(out.split())  # rich wraps long lines
    assert f"checkpoint {scan.root}/checkpoints/" in printed and "is unreadable" in printed
    assert f"to run → {scan.root}" in printed
    records, corrupt = scan.records()
    assert sorted(records) == sorted(t.id for t in trials) and not corrupt
    assert all(r.status == "FAIL" and "diverged at epoch 1" in r.error for r in records.values())


def _as_unprivileged(args: list[str], cwd: Path) -> tuple[int, str]:
    """The CLI in a subprocess that file permissions bind: root keeps no right to write into read-only dirs."""
    command = [sys.executable, "-m", "hhscan.cli", *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr


READ_ONLY = {
    "slurm/ for a new scan": ("slurm", ["run", "--local", "--name", "new"]),
    "the scan's output/ with a trial to run": ("slurm/keep/output", ["run", "--local", "--name", "keep"]),
    "splits/": ("splits", ["run", "--local", "--name", "new"]),
    "cache/": ("cache", ["run", "--local", "--name", "new"]),
    "slurm/ on submit": ("slurm", ["submit", "--name", "new"]),
    "models/ on report": ("models", ["report", "keep"]),
    "models/ on test": ("models", ["test", "--model", "best"]),
    "test --dir": ("scored", ["test", "--model", "best", "--dir", "scored"]),
}


@pytest.mark.parametrize("case", list(READ_ONLY))
def test_read_only_directories_are_refused_before_any_work(case, finished):
    relative, args = READ_ONLY[case]
    directory = finished.root / relative
    directory.mkdir(exist_ok=True)
    if relative == "slurm/keep/output":  # one trial left to run: its record could never be written
        next(directory.glob("*.csv")).unlink()
    before = _files(finished.root)
    directory.chmod(0o555)
    try:
        code, err = _as_unprivileged(args, finished.root)
    finally:
        directory.chmod(0o755)
    _one_error_line(code, err, f"{directory}: not writable")
    assert _files(finished.root) == before


CORRUPT = {
    "truncated scan.json": ("slurm/keep/scan.json", "slurm/keep/scan.json: unreadable ("),
    "corrupt split .npz": ("splits/unit.npz", "splits/unit.npz: unreadable split file ("),
    "corrupt split .json": ("splits/unit.json", "splits/unit.json: unreadable split file ("),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_damaged_files_of_a_scan_are_one_line_naming_them(case, finished, capsys, monkeypatch):
    relative, fragment = CORRUPT[case]
    damaged = finished.root / relative
    damaged.write_bytes(damaged.read_bytes()[: len(damaged.read_bytes()) // 2])
    if relative == "splits/unit.json":
        shutil.rmtree(finished.root / "cache")  # the cached arrays would not need the split's settings
    before = _files(finished.root)
    code, _, err = run_cli(["run", "--local", "--name", "keep"], finished.root, capsys, monkeypatch)
    _one_error_line(code, err, fragment)
    if relative.startswith("splits"):
        assert "delete" in err and "unit.npz and" in err
    assert _files(finished.root) == before


def test_unknown_output_key_is_refused_before_the_model_loads(finished, capsys, monkeypatch):
    best = next((finished.root / "slurm" / "keep" / "output").glob("*.zip"))
    broken = finished.root / "broken.zip"
    with zipfile.ZipFile(best) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            target.writestr(item, b"not a keras file" if item.filename == "model.keras" else source.read(item))
    with pytest.raises(Exception):  # noqa: B017 - loading it fails somewhere inside Keras: it is never reached
        artifacts.load_model_zip(broken)
    before = _files(finished.root)
    code, _, err = run_cli(["test", "--model", str(broken), "--output", "hh_2O16"], finished.root, capsys, monkeypatch)
    _one_error_line(code, err, "--output hh_2O16: no such sample in analysis.yaml", "closest: hh_2016")
    code, _, err = run_cli(["test", "--model", str(broken), "--output", "hh_2016"], finished.root, capsys, monkeypatch)
    _one_error_line(code, err, "--output hh_2016: this sample was used in training")
    assert _files(finished.root) == before


def test_nan_weight_is_an_error_naming_the_expression(analysis, capsys, monkeypatch):
    import uproot

    analysis.edit_samples(weight="sqrt(weight)")  # the 10% negative weights give NaN
    events = uproot.open(analysis.data / "hh_2016.root")["Events"].arrays(library="np")
    passing = (events["x2"] > -6) & ~(events["njet"] > 4)
    nan = int(np.count_nonzero(passing & (events["weight"] < 0)))
    assert nan > 0
    code, _, err = run_cli(["run", "--local", "--name", "bad"], analysis.root, capsys, monkeypatch)
    _one_error_line(code, err, "hh_2016.root:Events: weight 'sqrt(weight)' is NaN or infinite in "
                    f"{nan} of the {int(passing.sum())} events passing the cut")  # fmt: skip
    assert not (analysis.root / "slurm").exists()


def test_a_file_without_weights_takes_weight_1(analysis):
    """The fix the missing-weight error suggests: the group's weight "1" weighs every event 1."""
    events = make_events(60, -0.5, 4)
    del events["weight"]
    write_root(analysis.data / "tt_2017.root", {"Events": events})
    analysis.edit_samples(**_groups(analysis, 2, weight="1"))
    sample_list = config.load_sample_list(analysis.sample_list)
    sample = next(s for s in sample_list.samples if s.path.name == "tt_2017.root")
    arrays = dataset.read_sample(sample_list, sample)
    passing = (events["x2"] > -6) & ~(events["njet"] > 4)
    assert arrays.summary.used == int(passing.sum()) and arrays.summary.dropped_non_positive == 0
    np.testing.assert_array_equal(arrays.event_weight, np.ones(int(passing.sum())))


def _layout(analysis, name: str) -> None:
    """Rewrite both eras' xsec and Σw tables in one of the accepted layouts."""
    eras = {}
    for era in ("2016", "2017"):
        files = sorted(XSEC[era])
        stem = {f: f.split(".")[0] for f in files}
        group = {f: f.split("_")[0] for f in files}  # the groups are named tt and dy
        if name == "by file stem":
            tables = [{stem[f]: XSEC[era][f] for f in files}, {stem[f]: SUMW[era][f] for f in files}]
        elif name == "by group name":
            tables = [{group[f]: XSEC[era][f] for f in files}, {group[f]: SUMW[era][f] for f in files}]
        else:  # one object per process, both quantities in one file (or inline)
            both = {group[f]: {"xsec": XSEC[era][f], "event_weight_sum": SUMW[era][f], "comment": "x"} for f in files}
            tables = [both, both]
        if name == "per process, inline":
            eras[era] = {"xsec": tables[0], "event_weight_sum": tables[1]}
            continue
        paths = [f"{name.replace(' ', '_')}_{kind}_{era}.json" for kind in ("xsec", "sumw")]
        if name == "per process, one file":
            paths = [paths[0], paths[0]]
        for path, table in zip(paths, tables, strict=True):
            (analysis.data / path).write_text(json.dumps(table))
        eras[era] = {"xsec": f"../data/{paths[0]}", "event_weight_sum": f"../data/{paths[1]}"}
    analysis.edit_samples(eras=eras)


@pytest.mark.parametrize("layout", ["by file stem", "by group name", "per process, one file", "per process, inline"])
def test_xsec_tables_in_every_accepted_layout_give_the_same_numbers(analysis, layout):
    def numbers():
        sample_list = config.load_sample_list(analysis.sample_list)
        return {s.path.name: (s.xsec, s.event_weight_sum, s.lumi) for s in sample_list.samples}

    expected = {f: (XSEC[era][f], SUMW[era][f], LUMI[era]) for era in XSEC for f in XSEC[era]}
    assert numbers() == expected  # the fixture's flat tables keyed by file name
    _layout(analysis, layout)
    assert numbers() == expected
