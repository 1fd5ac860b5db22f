"""``hhscan test --samples other.yaml --output KEY…``: samples added after training, scored by a trained model.

One tiny model is trained once (one trial, one epoch) on the test analysis of conftest.py; each test writes its
own sample list beside it and scores into its own directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile

import numpy as np
import pytest
import uproot
import yaml
from conftest import build_analysis, make_events, run_cli, write_root

NEW_XSEC, NEW_SUMW, NEW_LUMI = 0.05, 120.0, 59.8
GROUPS = [
    {"name": "hh_new_2018", "files": "hh_new_2018.root", "tree": "Events", "class": "signal", "era": "2018",
     "xsec": NEW_XSEC, "event_weight_sum": NEW_SUMW},
    {"name": "data", "files": "data_2018*.root", "tree": "Events"},  # no class, weight, xsec: real data
    {"name": "hh_renamed", "files": "hh_renamed.root", "tree": "Events", "class": "signal"},
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The analysis with a model ``later_best.zip`` trained on it (scan 'later', reported)."""
    from hhscan import cli

    analysis = build_analysis(tmp_path_factory.mktemp("later") / "project", n=300)
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01], "epochs": [1]})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(analysis.root)
        for args in (["run", "--local", "--name", "later"], ["report", "later", "--no-plots"]):
            patch.setattr(sys, "argv", ["hhscan", *args])
            try:
                cli.main()
            except SystemExit as exit_:
                assert not exit_.code, f"hhscan {' '.join(args)} failed"
    assert (analysis.root / "models" / "later_best.zip").is_file()
    # Added after training: a new signal (weighted, with a cross-section) and real data in two files (no weight,
    # no label), one file with a renamed branch.
    write_root(analysis.data / "hh_new_2018.root", {"Events": make_events(250, 1.0, 21)})
    for part, seed in (("a", 22), ("b", 23)):
        events = make_events(150 + seed, 0.1, seed)
        write_root(analysis.data / f"data_2018{part}.root",
                   {"Events": {k: v for k, v in events.items() if k not in ("weight", "label")}})  # fmt: skip
    renamed = make_events(50, 0.3, 24)
    renamed["jet_btag"] = renamed.pop("jet_b-tag")
    write_root(analysis.data / "hh_renamed.root", {"Events": renamed})
    return analysis


def later_list(analysis, name: str = "later.yaml", groups: list | None = None, **changes) -> str:
    """A sample list in sample_lists/: the model's inputs in another order plus one it does not use."""
    content = {
        "base_dir": "../data",
        "cut": "x2>-6 && !(njet>4)",  # the training cut, spelt differently
        "weight": "weight",
        "inputs": [
            {"name": "njet", "expr": "njet", "one_hot": [2, 3, 4]},
            "x2",
            {"name": "btag", "expr": '"jet_b-tag"'},
            "abs( x2 )",
            "x1",
        ],
        "other_variables": ["event", "njet"],
        "eras": {"2018": {"lumi": NEW_LUMI}},
        "groups": groups or GROUPS,
        **changes,
    }
    path = analysis.root / "sample_lists" / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return f"sample_lists/{name}"


def keras_scores(analysis, events: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The selection and plain Keras scores of raw events, the inputs built by hand in the model's order."""
    import keras

    with zipfile.ZipFile(analysis.root / "models" / "later_best.zip") as archive:
        archive.extract("model.keras", analysis.root / "plain")
    plain = keras.saving.load_model(analysis.root / "plain" / "model.keras")
    passing = (events["x2"] > -6) & ~(events["njet"] > 4)
    njet = events["njet"][passing]
    features = np.column_stack([events["x1"][passing], np.abs(events["x2"][passing]), events["jet_b-tag"][passing],
                                *[(njet == k) for k in (2, 3, 4)]]).astype(np.float32)  # fmt: skip
    return passing, plain.predict(features, verbose=0)[:, 0]


def read_back(path) -> dict[str, np.ndarray]:
    with uproot.open(path) as handle:
        return handle["Events"].arrays(library="np")


def test_new_signal_and_data_are_scored_like_plain_keras(trained, capsys, monkeypatch, tmp_path):
    other = later_list(trained)
    out = tmp_path / "scored"
    code, stdout, err = run_cli(["test", "--model", "later_best", "--samples", other, "--output", "hh_new_2018", "--output", "data",
                                 "--dir", str(out)], trained.root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    # A group key scores each of its files.
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["data_2018a.root", "data_2018b.root", "hh_new_2018.root"]
    with uproot.open(trained.data / "hh_new_2018.root") as handle:
        raw = handle["Events"].arrays(library="np")
    passing, expected = keras_scores(trained, raw)
    written = read_back(out / "samples" / "hh_new_2018.root")
    assert f"hh_new_2018: {passing.sum()} events" in stdout
    np.testing.assert_array_equal(written["event"], raw["event"][passing])
    np.testing.assert_allclose(written["score"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written["x1"], raw["x1"][passing])
    np.testing.assert_allclose(written["event_weight"], raw["weight"][passing], rtol=1e-6)
    np.testing.assert_allclose(written["yield_weight"], raw["weight"][passing] * NEW_XSEC * NEW_LUMI / NEW_SUMW,
                               rtol=1e-6)
    assert "label" not in written and "x2" not in written  # x2: an input of the other list the model does not use
    for part in ("a", "b"):
        with uproot.open(trained.data / f"data_2018{part}.root") as handle:
            raw = handle["Events"].arrays(library="np")
        passing, expected = keras_scores(trained, raw)
        written = read_back(out / "samples" / f"data_2018{part}.root")
        np.testing.assert_array_equal(written["event"], raw["event"][passing])
        np.testing.assert_allclose(written["score"], expected, rtol=1e-5, atol=1e-6)
        # Data: inputs, other variables and the score; no label, no weights.
        assert set(written) == {"x1", "abs_x2", "btag", "njet_2", "njet_3", "njet_4", "event", "njet", "score"}


@pytest.mark.parametrize("reached", ["relative", "absolute", "hard link", "byte-identical copy"])
def test_a_training_sample_under_another_name_is_refused_unless_forced(trained, capsys, monkeypatch, tmp_path,
                                                                       reached):  # fmt: skip
    # tt_2016.root of the training, reached by another path, with the same cut spelt otherwise.
    files = {"relative": "../sample_lists/../data/tt_2016.root", "absolute": str(trained.data / "tt_2016.root"),
             "hard link": f"tt_link_{tmp_path.name}.root", "byte-identical copy": f"tt_copy_{tmp_path.name}.root",
             }[reached]  # fmt: skip
    if reached == "hard link":
        os.link(trained.data / "tt_2016.root", trained.data / files)
    if reached == "byte-identical copy":  # another file, another name: the same events
        shutil.copyfile(trained.data / "tt_2016.root", trained.data / files)
    groups = [{"name": "ttbar", "files": files, "tree": "Events", "class": "background"}]
    other = later_list(trained, "twin.yaml", groups)
    args = ["test", "--model", "later_best", "--samples", other, "--output", "ttbar", "--dir", str(tmp_path)]
    code, _, err = run_cli(args, trained.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "'ttbar'" in err and "'tt_2016'" in err and "--force" in err
    assert not (tmp_path / "samples").exists()
    code, out, err = run_cli([*args, "--force"], trained.root, capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "samples" / "ttbar.root").is_file()
    assert "ttbar: the events of training sample 'tt_2016', scored whole (--force)" in out
    # Another tree of the same file is another sample; another cut too, with a note (both cuts may pass events).
    later_list(trained, "twin.yaml", [{**groups[0], "tree": "Other"}])
    code, out, err = run_cli(args, trained.root, capsys, monkeypatch)
    assert code == 0 and "training sample" not in out, err
    later_list(trained, "twin.yaml", [{**groups[0], "cut": "x1 > 0"}])
    code, out, err = run_cli(args, trained.root, capsys, monkeypatch)
    assert code == 0, err
    assert "ttbar: reads the file and tree of training sample 'tt_2016' with another cut" in " ".join(out.split())


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        (["x1", "abs(x2)", {"name": "njet", "expr": "njet", "one_hot": [2, 3, 4]}, {"name": "b_tag", "expr": "x1"}],
         ["no input 'btag'", "closest: b_tag", "later_best.zip needs"]),
        (["x1", {"name": "abs_x2", "expr": "x2"}, {"name": "btag", "expr": '"jet_b-tag"'},
          {"name": "njet", "expr": "njet", "one_hot": [2, 3, 4]}],
         ["input 'abs_x2' is 'x2' here", "trained on 'abs(x2)'"]),
        (["x1", "abs(x2)", {"name": "btag", "expr": '"jet_b-tag"'}, {"name": "njet", "expr": "njet", "one_hot": [2, 3]}],
         ["input 'njet' is one-hot on [2, 3]"]),
    ],
)  # fmt: skip
def test_an_input_the_model_needs_must_be_built_the_same_way(trained, capsys, monkeypatch, tmp_path, inputs,
                                                             fragments):  # fmt: skip
    other = later_list(trained, "inputs.yaml", inputs=inputs)
    code, _, err = run_cli(["test", "--model", "later_best", "--samples", other, "--output", "hh_new_2018",
                            "--dir", str(tmp_path)], trained.root, capsys, monkeypatch)  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "inputs.yaml:inputs" in err
    for fragment in fragments:
        assert fragment in err


def test_a_missing_branch_is_refused_before_anything_is_scored(trained, capsys, monkeypatch, tmp_path):
    other = later_list(trained)
    code, _, err = run_cli(["test", "--model", "later_best", "--samples", other, "--output", "hh_new_2018", "--output", "hh_renamed",
                            "--dir", str(tmp_path)], trained.root, capsys, monkeypatch)  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{trained.data / 'hh_renamed.root'}:Events" in err
    assert "'jet_b-tag'" in err and "closest: jet_btag" in err
    assert not (tmp_path / "samples").exists()  # checked before hh_new_2018, the first key, was scored


def test_a_later_sample_outside_the_one_hot_categories_is_refused_and_nothing_is_written(
    trained, capsys, monkeypatch, tmp_path
):
    # A later sample where 7 of the events have 5 jets: the model knows the categories 2, 3 and 4 only, and all-zero
    # njet columns were never seen in training.
    events = make_events(120, 1.0, 25)
    events["njet"][:7] = 5
    write_root(trained.data / "hh_five_jets.root", {"Events": events})
    groups = [GROUPS[0], {**GROUPS[0], "name": "hh_five", "files": "hh_five_jets.root"}]
    other = later_list(trained, "five.yaml", groups=groups, cut="x2 > -6")
    # hh_new_2018 scored once, alone; then again with hh_five after it, which is refused: all or nothing, so the file
    # of the first run is left as it was and nothing else is written.
    code, _, err = run_cli(["test", "--model", "later_best", "--samples", other, "--output", "hh_new_2018",
                            "--dir", str(tmp_path)], trained.root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    first_run = (tmp_path / "samples" / "hh_new_2018.root").read_bytes()
    code, _, err = run_cli(["test", "--model", "later_best", "--samples", other, "--output", "hh_new_2018",
                            "--output", "hh_five", "--dir", str(tmp_path)], trained.root, capsys, monkeypatch)  # fmt: skip
    passing = int(np.count_nonzero(events["x2"][:7] > -6))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"hh_five_jets.root:Events: one-hot input 'njet' is 5 in {passing} selected events" in err
    assert "none of its categories [2, 3, 4]" in err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["hh_new_2018.root"]  # no temporary file left
    assert (tmp_path / "samples" / "hh_new_2018.root").read_bytes() == first_run


def test_a_chunked_later_sample_outside_the_categories_names_the_chunk_its_count_is_from(trained, tmp_path):
    # Scored 50 entries at a time, the events with 5 jets at entries 60-66 and 130-139 are counted per chunk: the
    # message must say which entries its count is of, not pass 7 for the file's 17.
    from hhscan.errors import DataError
    from hhscan.execution.scandir import Workspace
    from hhscan.results import apply

    events = make_events(180, 1.0, 26)
    events["njet"][60:67] = 5
    events["njet"][130:140] = 5
    write_root(trained.data / "hh_five_chunks.root", {"Events": events})
    groups = [{**GROUPS[0], "name": "hh_five", "files": "hh_five_chunks.root"}]
    other = later_list(trained, "five_chunks.yaml", groups=groups, cut=None)
    with pytest.raises(DataError) as raised:
        apply.apply_model(Workspace(trained.root), "later_best", ["hh_five"], directory=tmp_path, chunk_size=50,
                          plots=False, samples=trained.root / other)  # fmt: skip
    assert "hh_five_chunks.root:Events (entries 50–100): one-hot input 'njet' is 5 in 7 selected events" in str(
        raised.value
    )
    assert not list(tmp_path.rglob("*.root"))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--output", "hh_nwe"], ["--output hh_nwe", "later.yaml", "closest: hh_new_2018"]),
        ([], ["--samples", "name the samples to score with --output", "hh_new_2018"]),
    ],
)
def test_bad_keys_of_a_later_sample_list(trained, capsys, monkeypatch, tmp_path, args, fragments):
    other = later_list(trained)
    code, _, err = run_cli(["test", "--model", "later_best", "--samples", other, *args, "--dir", str(tmp_path)],
                           trained.root, capsys, monkeypatch)  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_a_scoring_list_needs_no_class_weight_or_xsec_for_data_and_a_training_list_still_does(analysis):
    from hhscan.errors import ConfigError
    from hhscan.settings import config

    content = analysis.samples_yaml()
    content["groups"] = [
        {"name": "data", "files": "tt_2017.root", "tree": "Events"},
        {"name": "weighted", "files": "hh_2017.root", "tree": "Events", "class": "data", "weight": "1"},
        {"name": "mc", "files": "hh_2016.root", "tree": "Events", "class": "signal"},
    ]
    path = analysis.root / "sample_lists" / "scoring.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    with pytest.raises(ConfigError, match=r"scoring.yaml:groups.0.class: required key is missing"):
        config.load_sample_list(path)
    scoring = config.load_sample_list(path, scoring=True)
    data, weighted, mc = scoring.samples
    assert (data.class_name, data.weight, data.xsec, data.is_data, data.group) == ("data", None, None, True, "data")
    assert (weighted.weight, weighted.is_data) == ("1", False)  # a weight given to a data group is kept
    assert (mc.weight, mc.is_data) == ("weight", False)  # simulation inherits the list's weight
    assert not any(s.training for s in scoring.samples)
    # The group name is for keys only: snapshots (and so cache keys and model zips) are unchanged.
    assert "group" not in config.snapshot(config.load_parameters(analysis.parameters), scoring)["sample_list"][
        "samples"][0]  # fmt: skip
