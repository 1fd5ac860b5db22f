"""Bad input: one line naming the file, key or branch (and the closest names), exit 1, no traceback."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_events, run_cli, write_root


def _nan_inputs(analysis):
    events = make_events(50, -0.5, 4)
    events["x1"][3] = np.nan
    write_root(analysis.data / "tt_2017.root", {"Events": events})


def _all_negative(analysis):
    events = make_events(50, -0.5, 4)
    events["weight"] = -np.abs(events["weight"])
    write_root(analysis.data / "tt_2017.root", {"Events": events})


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
    "unknown criterion": (lambda a: a.edit_parameters(eval_criterion="val_f1"), ["eval_criterion", "val_f1"]),
    "invalid YAML": (
        lambda a: a.parameters.write_text("samples: [unclosed\n"),
        ["scan.yaml", "not valid YAML"],
    ),
    "missing parameters file": (lambda a: a.parameters.unlink(), ["scan.yaml", "no such configuration file"]),
    "glob matching nothing": (
        lambda a: a.edit_samples(**_groups(a, 0, files="zz_*.root")),
        ["groups.0.files", "matches no file"],
    ),
}


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
