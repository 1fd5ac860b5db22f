"""hhscan report and hhscan test on real scans: rankings, files, outputs read back, bad input."""

from __future__ import annotations

import csv
import json
import re
import zipfile

import h5py
import numpy as np
import pytest
import uproot
from conftest import LUMI, SUMW, XSEC, make_events, run_cli, write_root
from hhscan.data import dataset
from hhscan.data.split import TEST
from hhscan.settings import config
from sklearn.metrics import roc_auc_score


@pytest.fixture
def reported(analysis, capsys, monkeypatch):
    """A local scan of 8 trials, 4 of which diverge (FAIL records), reported."""
    analysis.edit_parameters(hyperparameters={"activation": ["relu", "elu"], "neurons": [8, 16], "layers": [3],
                                              "learning_rate": [0.01, 1.0e30]})  # fmt: skip
    code, _, err = run_cli(["run", "--local", "--name", "rep"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(["report", "rep"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    return analysis, out


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_report_ranks_lists_failures_and_exports_the_best(reported):
    analysis, out = reported
    rows = read_csv(analysis.root / "models" / "rep.csv")
    assert len(rows) == 8
    done = [r for r in rows if r["status"] == "DONE"]
    values = [float(r["val_auc"]) for r in done]
    assert values == sorted(values, reverse=True) and [r["rank"] for r in done] == ["1", "2", "3", "4"]
    assert all(r["status"] == "FAIL" and r["error"] for r in rows[4:])
    assert "4 failed trial(s)" in out and "diverged at epoch" in out
    # Only the hyperparameters that vary get a column in the console table and a plot.
    assert "learning_rate" in out and "neurons" in out and "activation" in out and "batch_size" not in out
    plots = {p.name for p in (analysis.root / "models" / "rep").iterdir()}
    assert {"hp_learning_rate.png", "hp_neurons.png", "learning_curves.png"} <= plots
    assert "pair_learning_rate__neurons.png" in plots and "hp_activation.png" in plots
    best = analysis.root / "models" / "rep_best.zip"
    with zipfile.ZipFile(best) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("metadata.json"))
    assert {"model.keras", "metadata.json", "config/parameters.yaml", "config/sample_list.yaml"} <= names
    assert metadata["trial_id"] == done[0]["trial_id"] and metadata["feature_names"][0] == "x1"
    assert json.loads((analysis.root / "models" / "best.json").read_text())["scan"] == "rep"


def test_loss_criterion_ranks_ascending(analysis, capsys, monkeypatch):
    analysis.edit_parameters(eval_criterion="val_loss")
    run_cli(["run", "--local", "--name", "loss"], analysis.root, capsys, monkeypatch)
    code, _, err = run_cli(["report", "loss", "--no-plots"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    values = [float(r["val_loss"]) for r in read_csv(analysis.root / "models" / "loss.csv")]
    assert values == sorted(values)


def test_report_of_a_single_trial(analysis, capsys, monkeypatch):
    run_cli(["run", "--local", "--name", "one", "--max-trials", "1"], analysis.root, capsys, monkeypatch)
    code, out, err = run_cli(["report", "one"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert "top 1 of 1" in out
    assert (analysis.root / "models" / "one_best.zip").exists()


def test_scored_root_outputs_hold_each_test_event_once_with_plain_keras_scores(reported, capsys, monkeypatch):
    import keras

    analysis, _ = reported
    code, out, err = run_cli(["test", "--model", "best"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    data = dataset.load_dataset(sample_list, parameters.split, analysis.root / "splits")
    with zipfile.ZipFile(analysis.root / "models" / "rep_best.zip") as archive:
        archive.extract("model.keras", analysis.root)
    plain = keras.saving.load_model(analysis.root / "model.keras")
    directory = analysis.root / "models" / "rep_best"
    scores = {}
    for name in data.sample_names:
        with uproot.open(directory / f"{name}.root") as handle:
            tree = handle["Events"]
            arrays = tree.arrays(library="np")
            types = {branch.name: branch.interpretation.numpy_dtype for branch in tree.branches}
        selected = data.mask(TEST, name)
        expected_events = data.other["event"][selected]
        assert sorted(arrays["event"].tolist()) == sorted(expected_events.tolist())
        assert len(set(arrays["event"].tolist())) == len(arrays["event"])
        assert arrays["event"].dtype == np.int64 and arrays["njet"].dtype == np.int32
        assert types["score"].kind == "f" and {"x1", "abs_x2", "btag", "event_weight", "learning_weight"} <= set(types)
        np.testing.assert_allclose(arrays["x1"], data.features[selected, 0])  # unscaled inputs
        reference = plain.predict(data.features[selected], verbose=0)[:, 0]
        np.testing.assert_allclose(arrays["score"], reference, rtol=1e-5, atol=1e-6)
        assert arrays["njet_2"].dtype == np.uint8 and arrays["x1"].dtype == np.float32  # inputs keep their dtype
        scores[name] = (arrays["score"], arrays["label"], arrays["learning_weight"], arrays["yield_weight"])
        with uproot.open(directory / f"{name}.root") as handle:
            assert str(handle["label_classes"]) == "0:background;1:signal"
    assert {p.stem for p in directory.glob("*.root")} == set(data.sample_names)
    # Per-background AUCs: signal vs each background sample, on the test split, against scikit-learn.
    signal = [scores[n] for n in data.sample_names if n.startswith("hh")]
    for name in ("tt_2016", "tt_2017", "dy_2016"):
        parts = [*signal, scores[name]]
        y = np.concatenate([p[1] for p in parts])
        expected = roc_auc_score(y == 1, np.concatenate([p[0] for p in parts]),
                                 sample_weight=np.concatenate([p[2] for p in parts]))  # fmt: skip
        assert f"test_auc_signal_vs_sample_{name} {expected:.4f}" in out
    # The test files' yield weights: each event's yield / its sample's test fraction (the whole yield, estimated).
    for index, name in enumerate(data.sample_names):
        mine = data.sample_index == index
        test = mine & (data.partition == TEST)
        expected = data.yield_weight[test].sum() * mine.sum() / test.sum()
        assert scores[name][3].sum() == pytest.approx(expected, rel=1e-5)
    plots = {p.name for p in directory.glob("*.png")}
    assert {"roc.png", "overtraining.png", "significance.png", "training.png", "inputs.png"} <= plots
    assert "test_auc" in out
    # Z from the written files by hand: the best cut of 0, 0.01, …, 1 keeping ≥ 10 background MC events with an MC
    # error ≤ 20 % (the default guard); `test` prints it with its cut, s and b.
    score, label, yields = (np.concatenate([p[k] for p in scores.values()]) for k in (0, 1, 3))
    best = (0.0, 0.0, 0.0, 0.0)
    for cut in np.linspace(0, 1, 101):
        background = yields[(score >= cut) & (label == 0)]
        s_, b_ = yields[(score >= cut) & (label == 1)].sum(), background.sum()
        if len(background) >= 10 and np.sqrt((background.astype(np.float64) ** 2).sum()) / b_ <= 0.2 and s_ > 0:
            z = np.sqrt(2 * ((s_ + b_) * np.log(1 + s_ / b_) - s_))
            best = max(best, (z, -cut, s_, b_))
    z, cut, s_, b_ = best[0], -best[1], best[2], best[3]
    assert z > 0 and f"test_significance {z:.4f}" in out
    flat = " ".join(out.split())  # the console wraps long lines
    shown = re.search(r"test_significance: Z (\S+) at score ≥ (\S+): s (\S+), b (\S+) \((\d+) bkg MC events", flat)
    assert shown is not None, out
    assert float(shown[1]) == pytest.approx(z, rel=1e-3) and float(shown[2]) == pytest.approx(cut)
    assert float(shown[3]) == pytest.approx(s_, rel=1e-3) and float(shown[4]) == pytest.approx(b_, rel=1e-3)
    assert "guard: ≥ 10 bkg MC events, bkg MC error ≤ 20%, σ_b = 0%·b)" in flat


def test_hdf5_outputs_and_split_name_by_class(reported, capsys, monkeypatch, tmp_path):
    analysis, _ = reported
    analysis.edit_parameters(split_name="class")
    # The model carries its own configuration: split_name comes from the zip, so rerun a scan with it.
    run_cli(["run", "--local", "--name", "byclass", "--max-trials", "1"], analysis.root, capsys, monkeypatch)
    run_cli(["report", "byclass", "--no-plots"], analysis.root, capsys, monkeypatch)
    code, _, err = run_cli(["test", "--model", "byclass_best", "--format", "h5", "--dir", str(tmp_path / "h5")],
                           analysis.root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "h5").glob("*.h5")) == ["background.h5", "signal.h5"]
    with h5py.File(tmp_path / "h5" / "signal.h5") as handle:
        group = handle["Events"]
        assert group["event"].dtype == np.int64 and (group["label"][()] == 1).all()
        assert len(group["score"]) == len(group["event"])


def test_output_on_other_samples_streams_in_chunks(reported, capsys, monkeypatch):
    from hhscan.execution.scandir import Workspace
    from hhscan.results.apply import apply_model

    analysis, _ = reported
    write_root(analysis.data / "data_2017.root", {"Events": make_events(1000, 0.1, 11)})
    groups = analysis.samples_yaml()["groups"]
    groups.append({"name": "data", "files": "data_2017.root", "tree": "Events", "class": "data", "training": False})
    analysis.edit_samples(groups=groups)
    # The zip's configuration is frozen; a new scan with the extended sample list carries the data sample.
    run_cli(["run", "--local", "--name", "withdata", "--max-trials", "1"], analysis.root, capsys, monkeypatch)
    run_cli(["report", "withdata", "--no-plots"], analysis.root, capsys, monkeypatch)
    whole = apply_model(Workspace(analysis.root), "withdata_best", ["data"], plots=False)
    chunked = apply_model(Workspace(analysis.root), "withdata_best", ["data"], chunk_size=97,
                          directory=analysis.root / "chunked", plots=False)  # fmt: skip
    events = make_events(1000, 0.1, 11)
    passing = (events["x2"] > -6) & ~(events["njet"] > 4)  # negative weights kept when applying
    assert whole.events["data"] == chunked.events["data"] == passing.sum()
    with uproot.open(whole.outputs["data"]) as a, uproot.open(chunked.outputs["data"]) as b:
        first, second = a["Events"].arrays(library="np"), b["Events"].arrays(library="np")
    np.testing.assert_array_equal(first["event"], events["event"][passing])
    np.testing.assert_allclose(first["score"], second["score"], rtol=1e-6)
    code, _, err = run_cli(
        ["test", "--model", "withdata_best", "--output", "tt_2016"], analysis.root, capsys, monkeypatch
    )
    assert code == 1 and "used in training" in err and "--force" in err
    assert "yield_weight" not in first  # data: no cross-section, no yield
    # A sample with a cross-section: its whole-sample file carries w × xsec × lumi / Σw, negative weights kept.
    forced = apply_model(Workspace(analysis.root), "withdata_best", ["tt_2016"], force=True, plots=False,
                         directory=analysis.root / "forced")  # fmt: skip
    with uproot.open(forced.outputs["tt_2016"]) as handle:
        written = handle["Events"].arrays(library="np")
    with uproot.open(analysis.data / "tt_2016.root") as handle:
        raw = handle["Events"].arrays(library="np")
    passing = (raw["x2"] > -6) & ~(raw["njet"] > 4)
    expected = raw["weight"][passing] * XSEC["2016"]["tt_2016.root"] * LUMI["2016"] / SUMW["2016"]["tt_2016.root"]
    np.testing.assert_allclose(written["yield_weight"], expected, rtol=1e-6)
    # The test split of the same sample, in the same directory, is another file: neither overwrites the other.
    split_file = apply_model(Workspace(analysis.root), "withdata_best", plots=False, directory=analysis.root / "forced")
    assert forced.outputs["tt_2016"] == analysis.root / "forced" / "samples" / "tt_2016.root"
    assert split_file.outputs["tt_2016"] == analysis.root / "forced" / "tt_2016.root"
    with uproot.open(forced.outputs["tt_2016"]) as whole, uproot.open(split_file.outputs["tt_2016"]) as part:
        assert whole["Events"].num_entries == passing.sum() > part["Events"].num_entries


def test_multiclass_report_and_test(analysis3, capsys, monkeypatch):
    run_cli(["run", "--local", "--name", "multi"], analysis3.root, capsys, monkeypatch)
    code, _, err = run_cli(["report", "multi"], analysis3.root, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["test", "--model", "best"], analysis3.root, capsys, monkeypatch)
    assert code == 0, err
    directory = analysis3.root / "models" / "multi_best"
    assert (directory / "confusion.png").exists()
    with uproot.open(directory / "dy_2016.root") as handle:
        arrays = handle["Events"].arrays(library="np")
    total = arrays["score_TT"] + arrays["score_DY"] + arrays["score_signal"]
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["report", "rpe"], ["no scan 'rpe'", "closest: rep"]),
        (["test", "--model", "rep_bets"], ["no model 'rep_bets'", "closest: rep_best"]),
        (["test", "--model", "best", "--output", "tt_2071"], ["--output tt_2071", "closest: tt_2017"]),
        (["test", "--model", "best", "--format", "csv"], ["--format must be root or h5"]),
    ],
)
def test_bad_report_and_test_input(reported, capsys, monkeypatch, args, fragments):
    analysis, _ = reported
    code, _, err = run_cli(args, analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_a_zip_that_is_not_an_hhscan_model(reported, capsys, monkeypatch):
    analysis, _ = reported
    fake = analysis.root / "models" / "fake.zip"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("model.keras", "x")
    code, _, err = run_cli(["test", "--model", "fake"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "not an hhscan model zip" in err
    (analysis.root / "models" / "text.zip").write_text("not a zip")
    code, _, err = run_cli(["test", "--model", "text"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "not an hhscan model zip" in err


def test_split_model_mismatch_is_refused(reported, capsys, monkeypatch):
    analysis, _ = reported
    split_file = analysis.root / "splits" / "unit.npz"
    stored = dict(np.load(split_file))
    stored["tt_2016"] = np.roll(stored["tt_2016"], 1)  # someone re-made the split
    np.savez(split_file, **stored)
    code, _, err = run_cli(["test", "--model", "best"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "trained on split" in err and "test events are unknown" in err


def test_an_unreadable_best_record_never_demotes_the_exported_best(analysis, capsys, monkeypatch):
    """The best trial's record cut off (a damaged file): report refuses in one line naming it and the repair, and
    the exported best, its pointer and the ranking stay byte for byte; --force exports the best readable one."""
    code, _, err = run_cli(["run", "--local", "--name", "dmg", "--max-trials", "2"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["report", "dmg", "--no-plots"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    models = analysis.root / "models"
    written = {name: (models / name).read_bytes() for name in ("dmg_best.zip", "best.json", "dmg.csv")}
    best_id = json.loads(written["best.json"])["trial_id"]
    others = [r["trial_id"] for r in read_csv(models / "dmg.csv") if r["trial_id"] != best_id]
    assert len(others) == 1 and read_csv(models / "dmg.csv")[0]["trial_id"] == best_id
    record = analysis.root / "slurm" / "dmg" / "output" / f"{best_id}.csv"
    record.write_bytes(record.read_bytes()[: len(record.read_bytes()) // 2])

    code, _, err = run_cli(["report", "dmg", "--no-plots"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"dmg/output/{best_id}.csv: unreadable trial record" in err and "hhscan resubmit dmg" in err and "--force" in err
    assert {name: (models / name).read_bytes() for name in written} == written

    code, _, err = run_cli(["report", "dmg", "--no-plots", "--force"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((models / "best.json").read_text())["trial_id"] == others[0]


def test_the_readme_layout_names_every_module_and_no_other():
    """The README's "Layout" lists each subpackage's modules: a module split off or removed must show there."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    layout = re.search(r"## Layout\n(.*?)\n## ", (repo / "README.md").read_text(), re.S).group(1)
    named = set(re.findall(r"`(\w+)`", layout))
    modules = {p.stem for p in (repo / "scan").glob("*/*.py") if p.stem != "__init__"}
    packages = {p.name for p in (repo / "scan").iterdir() if (p / "__init__.py").is_file()}
    assert modules - named == set(), "modules the README's layout does not name"
    assert named - modules - packages - {"hhscan", "errors", "fileio", "cli"} == set(), "names in the layout that are no module"
