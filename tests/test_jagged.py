"""Jagged (NanoAOD-style) branches and fixed-length blocks: every function against an independent computation.

The files are written here with uproot ``mktree`` (jets zipped under ``Jet``: counter ``nJet``; muons under
``Muon``: counter ``nMuon``). Expected values are computed event by event in plain Python over ``ak.to_list`` of the
branches read back, never with hhscan's own code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot
import yaml
from conftest import run_cli
from hhscan.data import dataset, readers
from hhscan.data.split import TEST, TRAIN
from hhscan.errors import HhscanError
from hhscan.learning import model
from hhscan.settings import config


def nano_events(n: int, seed: int, shift: float) -> dict:
    """NanoAOD-like events: 0–6 jets (pt, eta, btag), 0–2 muons, a flat generator weight and an event number."""
    rng = np.random.default_rng(seed)
    n_jet = rng.integers(0, 7, n)
    n_muon = rng.integers(0, 3, n)
    jets = n_jet.sum()
    jet = ak.zip(
        {
            "pt": ak.unflatten((rng.exponential(40, jets) + 20 + 15 * shift).astype(np.float32), n_jet),
            "eta": ak.unflatten(rng.normal(0, 1.8, jets).astype(np.float32), n_jet),
            "btag": ak.unflatten((rng.random(jets) ** (1 - 0.5 * shift)).astype(np.float32), n_jet),
        }
    )
    muon = ak.zip({"pt": ak.unflatten(rng.exponential(30, n_muon.sum()).astype(np.float32), n_muon)})
    return {
        "Jet": jet,
        "Muon": muon,
        "genWeight": rng.uniform(0.5, 1.5, n),
        "event": np.arange(n, dtype=np.int64) + seed * 1_000_000,
    }


def write_nano(path: Path, n: int, seed: int, shift: float) -> None:
    events = nano_events(n, seed, shift)
    with uproot.recreate(path) as handle:
        handle.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in events.items()})
        handle["Events"].extend(events)


def lists(path: Path, *branches: str) -> dict[str, list]:
    """The branches read back with plain uproot, as Python lists per event."""
    with uproot.open(path) as handle:
        return {b: ak.to_list(handle["Events"][b].array()) for b in branches}


def nano_analysis(root: Path, n: int = 500, inputs: list | None = None, **changes) -> Path:
    """A two-process NanoAOD-like analysis (signal has harder, more b-tagged jets); returns the project root."""
    (root / "data").mkdir(parents=True)
    write_nano(root / "data" / "hh.root", n, 1, 1.0)
    write_nano(root / "data" / "tt.root", n, 2, 0.0)
    samples = {
        "base_dir": "../data",
        "classes": ["background", "signal"],
        "signal_classes": ["signal"],
        "cut": "Length$(Jet_pt) >= 1",
        "weight": "genWeight",
        "groups": [
            {"name": "hh", "files": "hh.root", "tree": "Events", "class": "signal"},
            {"name": "tt", "files": "tt.root", "tree": "Events", "class": "background"},
        ],
        "inputs": inputs
        or [
            {"name": "jet1_pt", "expr": "Jet_pt[0]"},
            {"name": "jet2_pt", "expr": "Alt$(Jet_pt[1], 0)"},
            {"name": "nbtag", "expr": "Sum$(Jet_btag > 0.5)"},
            {"name": "njet", "expr": "Length$(Jet_pt)"},
            {"name": "jet_pt", "expr": "Jet_pt", "length": 4, "pad": 0},
        ],
        "other_variables": ["event"],
        **changes,
    }
    parameters = {
        "samples": "../sample_lists/nano.yaml",
        "hyperparameters": {
            "layers": [1], "neurons": [8], "learning_rate": [0.01, 0.003], "batch_size": [128], "epochs": [1],
        },
        "split": {"name": "nano", "train": 0.6, "validation": 0.2, "test": 0.2, "seed": 3},
        "eval_criterion": "val_auc",
        "training": {"backend": "auto"},
    }
    (root / "sample_lists").mkdir()
    (root / "parameters").mkdir()
    (root / "sample_lists" / "nano.yaml").write_text(yaml.safe_dump(samples, sort_keys=False))
    (root / "parameters" / "scan.yaml").write_text(yaml.safe_dump(parameters, sort_keys=False))
    return root


def _sample(root: Path, name: str = "hh"):
    sample_list = config.load_sample_list(root / "sample_lists" / "nano.yaml")
    return sample_list, next(s for s in sample_list.samples if s.name == name)


def _write_inputs(root: Path, inputs: list, **changes) -> None:
    path = root / "sample_lists" / "nano.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(inputs=inputs, **changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _with_inputs(root: Path, inputs: list, **changes):
    _write_inputs(root, inputs, **changes)
    return _sample(root)


# --------------------------------------------------------------------------------- functions, one by one


def _root_functions(pt, eta, btag, muon, weight):
    """ROOT's TTreeFormula functions per event, in plain Python (Min$/Max$ of no entries is 0)."""

    def minimum(values):
        return min(values) if values else 0.0

    def maximum(values):
        return max(values) if values else 0.0

    central = [[p for p, e in zip(ps, es, strict=True) if abs(e) < 2.4] for ps, es in zip(pt, eta, strict=True)]
    return {
        "Alt$(Jet_pt[1], -5)": [p[1] if len(p) > 1 else -5 for p in pt],
        "Alt$(Jet_eta[2], 9) * 2": [2 * e[2] if len(e) > 2 else 18 for e in eta],
        # ROOT takes any expression as the fallback: one varying per event, or another Alt$
        "Alt$(Jet_pt[1], genWeight)": [p[1] if len(p) > 1 else w for p, w in zip(pt, weight, strict=True)],
        "Alt$(Jet_pt[1], Alt$(Jet_pt[0], -1))": [p[1] if len(p) > 1 else p[0] if p else -1 for p in pt],
        "Length$(Jet_pt)": [len(p) for p in pt],
        "Length$(Muon_pt)": [len(m) for m in muon],
        "Sum$(Jet_btag > 0.5)": [sum(b > 0.5 for b in bs) for bs in btag],
        "Sum$(Jet_pt)": [sum(p) for p in pt],
        "Sum$(Jet_pt > 30 && abs(Jet_eta) < 2.4)": [len([p for p in c if p > 30]) for c in central],
        "Sum$(Jet_pt * genWeight)": [sum(p) * w for p, w in zip(pt, weight, strict=True)],
        "Min$(Jet_pt)": [minimum(p) for p in pt],
        "Max$(Jet_eta)": [maximum(e) for e in eta],
        "MinIf$(Jet_pt, abs(Jet_eta) < 2.4)": [minimum(c) for c in central],
        "MaxIf$(Jet_pt, abs(Jet_eta) < 2.4)": [maximum(c) for c in central],
        "Max$(Jet_pt * (Jet_btag > 0.5))": [
            maximum([p * (b > 0.5) for p, b in zip(ps, bs, strict=True)]) for ps, bs in zip(pt, btag, strict=True)
        ],
        "Sum$(Jet_pt) + Sum$(Muon_pt)": [sum(p) + sum(m) for p, m in zip(pt, muon, strict=True)],
        "Length$(Jet_pt) == 0 || Jet_pt[0] > 60": [len(p) == 0 or p[0] > 60 for p in pt],
        "Length$(Jet_pt) >= 2 && Jet_pt[1] > 40": [len(p) >= 2 and p[1] > 40 for p in pt],
    }


def test_every_function_matches_an_independent_computation(tmp_path):
    root = nano_analysis(tmp_path / "p")
    path = root / "data" / "hh.root"
    read = lists(path, "Jet_pt", "Jet_eta", "Jet_btag", "Muon_pt", "genWeight")
    expected = _root_functions(read["Jet_pt"], read["Jet_eta"], read["Jet_btag"], read["Muon_pt"], read["genWeight"])
    inputs = [{"name": f"f{i}", "expr": text} for i, text in enumerate(expected)]
    sample_list, sample = _with_inputs(root, inputs, cut=None)
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    assert len(part.features) == len(read["Jet_pt"])  # no cut: every event, jetless ones included
    for column, (text, values) in enumerate(expected.items()):
        np.testing.assert_allclose(part.features[:, column], np.asarray(values, float), rtol=1e-6, err_msg=text)


def test_alt_falls_back_to_another_index_of_the_same_event(tmp_path):
    root = nano_analysis(tmp_path / "p")  # its cut keeps only events with a jet, so Jet_pt[0] always exists
    sample_list, sample = _with_inputs(root, [{"name": "j2", "expr": "Alt$(Jet_pt[1], Jet_pt[0])"}])
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    expected = [p[1] if len(p) > 1 else p[0] for p in lists(root / "data" / "hh.root", "Jet_pt")["Jet_pt"] if p]
    np.testing.assert_allclose(part.features[:, 0], np.asarray(expected, float), rtol=1e-6)


def test_an_index_counts_the_events_lacking_it_unless_cut_or_guarded(tmp_path):
    root = nano_analysis(tmp_path / "p")
    pt = lists(root / "data" / "hh.root", "Jet_pt")["Jet_pt"]
    lacking = sum(len(p) < 2 for p in pt)
    sample_list, sample = _with_inputs(root, [{"name": "j2", "expr": "Jet_pt[1]"}], cut=None)
    with pytest.raises(HhscanError, match=rf"'Jet_pt\[1\]': {lacking} of the {len(pt)} selected events have no "
                                          rf"Jet_pt\[1\]: cut them \(Length\$\(Jet_pt\) > 1\)"):  # fmt: skip
        dataset.read_sample(sample_list, sample)
    # The cut removes them: the index is then defined for every selected event.
    sample_list, sample = _with_inputs(root, [{"name": "j2", "expr": "Jet_pt[1]"}], cut="Length$(Jet_pt) > 1")
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    np.testing.assert_allclose(part.features[:, 0], [p[1] for p in pt if len(p) > 1])
    # In a cut, an unguarded index is refused over the whole file.
    sample_list, sample = _with_inputs(root, [{"name": "n", "expr": "Length$(Jet_pt)"}], cut="Jet_pt[0] > 30")
    lacking_first = sum(len(p) == 0 for p in pt)
    with pytest.raises(HhscanError, match=rf"cut: '\(Jet_pt\[0\] > 30\)': {lacking_first} of the {len(pt)} events"):
        dataset.read_sample(sample_list, sample)


def test_reading_in_chunks_changes_nothing_and_counts_over_the_file(tmp_path, monkeypatch):
    root = nano_analysis(tmp_path / "p")
    sample_list, sample = _sample(root)
    whole = dataset.read_sample(sample_list, sample)
    monkeypatch.setattr(dataset, "CHUNK_ENTRIES", 37)
    calls = []
    original = dataset.read_columns
    monkeypatch.setattr(dataset, "read_columns", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    chunked = dataset.read_sample(sample_list, sample)
    assert len(calls) == -(-500 // 37) and calls[0] == (0, 37)
    np.testing.assert_array_equal(chunked.features, whole.features)
    np.testing.assert_array_equal(chunked.block_counts["jet_pt"], whole.block_counts["jet_pt"])
    np.testing.assert_array_equal(chunked.other["event"], whole.other["event"])
    pt = lists(root / "data" / "hh.root", "Jet_pt")["Jet_pt"]
    sample_list, sample = _with_inputs(root, [{"name": "j3", "expr": "Jet_pt[2]"}], cut=None)
    with pytest.raises(HhscanError, match=rf"{sum(len(p) < 3 for p in pt)} of the 500 selected events"):
        dataset.read_sample(sample_list, sample)


# ------------------------------------------------------------------------------------------------- blocks


def test_a_block_is_the_first_entries_padded_as_numpy_pads_them(tmp_path):
    root = nano_analysis(tmp_path / "p")
    pt, eta = (lists(root / "data" / "hh.root", "Jet_pt", "Jet_eta")[b] for b in ("Jet_pt", "Jet_eta"))
    inputs = [{"name": "pt", "expr": "Jet_pt", "length": 4, "pad": -1},
              {"name": "pz", "expr": "Jet_pt * sinh(Jet_eta)", "length": 3}]  # fmt: skip
    sample_list, sample = _with_inputs(root, inputs, cut=None)
    assert sample_list.feature_names == ["pt_0", "pt_1", "pt_2", "pt_3", "pz_0", "pz_1", "pz_2"]
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    expected_pt = np.full((len(pt), 4), -1.0)
    expected_pz = np.zeros((len(pt), 3))
    for i, (p, e) in enumerate(zip(pt, eta, strict=True)):
        expected_pt[i, : min(len(p), 4)] = p[:4]
        pz = np.asarray(p, float) * np.sinh(np.asarray(e, float))
        expected_pz[i, : min(len(p), 3)] = pz[:3]
    np.testing.assert_allclose(part.features[:, :4], expected_pt, rtol=1e-6)
    np.testing.assert_allclose(part.features[:, 4:], expected_pz, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(part.block_counts["pt"], np.minimum([len(p) for p in pt], 4))


def test_hdf5_fixed_size_fields_are_blocks_and_jagged_values(tmp_path):
    rng = np.random.default_rng(5)
    n = 60
    vectors = rng.normal(size=(n, 200, 4)).astype(np.float32)
    towers = rng.normal(size=(n, 6)).astype(np.float32)
    layout = np.zeros(n, dtype=[("c_vectors", np.float32, (200, 4)), ("towers", np.float32, (6,)), ("w", "f8")])
    layout["c_vectors"], layout["towers"], layout["w"] = vectors, towers, 1.0
    path = tmp_path / "p" / "data" / "const.h5"
    root = nano_analysis(tmp_path / "p")
    with h5py.File(path, "w") as handle:
        handle.create_dataset("events", data=layout)
    assert readers.branch_shapes(path, "events", ["c_vectors", "towers", "w"]) == {
        "c_vectors": readers.BranchShape(jagged=True, fixed=200, components=4),
        "towers": readers.BranchShape(jagged=True, fixed=6),
        "w": readers.FLAT,
    }
    inputs = [{"name": "c", "expr": "c_vectors", "length": 120, "components": 4},
              {"name": "t", "expr": "towers", "length": 8, "pad": -2},
              {"name": "tsum", "expr": "Sum$(towers > 0)"}, {"name": "t0", "expr": "towers[0]"}]  # fmt: skip
    sample_list, _ = _with_inputs(root, inputs, cut=None, weight="w", other_variables=[])
    sample = next(s for s in sample_list.samples if s.name == "hh").model_copy(update={"path": path, "tree": "events"})
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    assert sample_list.feature_names[:5] == ["c_0_0", "c_0_1", "c_0_2", "c_0_3", "c_1_0"]
    np.testing.assert_array_equal(part.features[:, :480], vectors[:, :120, :].reshape(n, 480))
    np.testing.assert_array_equal(part.features[:, 480:488], np.pad(towers, ((0, 0), (0, 2)), constant_values=-2))
    np.testing.assert_array_equal(part.features[:, 488], (towers > 0).sum(axis=1))
    np.testing.assert_array_equal(part.features[:, 489], towers[:, 0])
    np.testing.assert_array_equal(part.block_counts["t"], np.full(n, 6))
    # The block of a field with 4 numbers per entry says how to declare it.
    sample_list, _ = _with_inputs(root, [{"name": "c", "expr": "c_vectors", "length": 120}], cut=None, weight="w",
                                  other_variables=[])
    with pytest.raises(HhscanError, match=r"block 'c': 'c_vectors' has 200 entries per event of 4 numbers: give the "
                                          r"block components: 4"):  # fmt: skip
        dataset.read_sample(sample_list, sample.model_copy(update={"cut": None, "weight": "w"}))


# -------------------------------------------------------------------------------------------------- scaler


def test_the_scaler_counts_real_entries_only(tmp_path):
    root = nano_analysis(tmp_path / "p", n=300)
    sample_list, _ = _sample(root)
    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    data = dataset.load_dataset(sample_list, parameters.split, root / "splits")
    train = data.partition == TRAIN
    mean, variance = model.scaler_statistics(data.features[train], data.real_entries(TRAIN))
    # By hand: jet i's pt over the training events that have a jet i (their event numbers, read back with uproot).
    by_event = {}
    for name in ("hh", "tt"):
        read = lists(root / "data" / f"{name}.root", "Jet_pt", "event")
        by_event.update(zip(read["event"], read["Jet_pt"], strict=True))
    events = data.other["event"][train]
    for i in range(4):
        real = np.asarray([by_event[e][i] for e in events if len(by_event[e]) > i], dtype=np.float64)
        column = data.feature_names.index(f"jet_pt_{i}")
        assert mean[column] == pytest.approx(real.mean(), rel=1e-9)
        assert variance[column] == pytest.approx(real.var(), rel=1e-9)
    # Padding would have pulled the mean down: the statistics of every value differ.
    last = data.feature_names.index("jet_pt_3")
    assert mean[last] > data.features[train, last].astype(np.float64).mean() + 1
    # A plain input is unaffected by the mask.
    first = data.feature_names.index("jet1_pt")
    assert mean[first] == pytest.approx(data.features[train, first].astype(np.float64).mean(), rel=1e-9)
    # The block layout and real entries survive the dataset cache.
    dataset.load_dataset(sample_list, parameters.split, root / "splits", root / "cache")
    cached = dataset.load_dataset(sample_list, parameters.split, root / "splits", root / "cache")
    assert cached.blocks == data.blocks == [{"name": "jet_pt", "length": 4, "components": 1,
                                             "columns": ["jet_pt_0", "jet_pt_1", "jet_pt_2", "jet_pt_3"]}]  # fmt: skip
    np.testing.assert_array_equal(cached.real_entries(TRAIN), data.real_entries(TRAIN))



class _ZeroBundle:
    """Stands in for a k-fold bundle: the view only asks for its fold count, its name and scores."""

    folds, source = 3, "zero bundle"

    def predict(self, features: np.ndarray, fold: np.ndarray, role: str = "test") -> np.ndarray:
        return np.zeros(len(features))


def test_the_kfold_scoring_view_keeps_real_entries_for_both_copies(tmp_path):
    from hhscan.results.kfold_view import kfold_scoring_view

    root = nano_analysis(tmp_path / "p", n=200)
    path = root / "parameters" / "scan.yaml"
    parameters = yaml.safe_load(path.read_text())
    parameters["split"] = {"name": "k3", "kind": "kfold", "folds": 3, "variable": "event"}
    path.write_text(yaml.safe_dump(parameters))
    sample_list, _ = _sample(root)
    data = dataset.load_dataset(sample_list, config.load_parameters(path).split, root / "splits")
    view, _ = kfold_scoring_view(data, _ZeroBundle())
    # Every event is once a test and once a training event: both copies have its real entries.
    whole = data.real_entries(TRAIN)  # k-fold data are all TRAIN
    assert whole is not None and not whole.all()
    np.testing.assert_array_equal(view.real_entries(TEST), whole)
    np.testing.assert_array_equal(view.real_entries(TRAIN), whole)

# -------------------------------------------------------------------------------------------- end to end


def test_a_nanoaod_scan_runs_reports_and_tests_with_inputs_as_awkward_computes_them(tmp_path, capsys, monkeypatch):
    import keras

    root = nano_analysis(tmp_path / "p", n=500)
    code, _, err = run_cli(["run", "--local", "--name", "nano"], root, capsys, monkeypatch)
    assert code == 0, err
    code, out, err = run_cli(["report", "nano", "--no-plots"], root, capsys, monkeypatch)
    assert code == 0, err
    assert "scan nano: top 2 of 2 by val_auc" in out, out
    code, _, err = run_cli(["test", "--model", "best"], root, capsys, monkeypatch)
    assert code == 0, err
    scored = 0
    for name in ("hh", "tt"):
        read = lists(root / "data" / f"{name}.root", "Jet_pt", "Jet_btag", "event")
        truth = {}
        for event, pt, btag in zip(read["event"], read["Jet_pt"], read["Jet_btag"], strict=True):
            if len(pt) >= 1:  # the cut
                block = (pt[:4] + [0.0] * 4)[:4]
                truth[event] = [pt[0], pt[1] if len(pt) > 1 else 0.0, sum(b > 0.5 for b in btag), len(pt), *block]
        with uproot.open(root / "models" / "nano_best" / f"{name}.root") as handle:
            arrays = handle["Events"].arrays(library="np")
        columns = ["jet1_pt", "jet2_pt", "nbtag", "njet", "jet_pt_0", "jet_pt_1", "jet_pt_2", "jet_pt_3"]
        got = np.stack([arrays[c] for c in columns], axis=1)
        expected = np.asarray([truth[e] for e in arrays["event"]], dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        scored += len(got)
    assert scored > 100
    # The model's scaler holds the real-entry statistics of its training events (numpy by hand).
    sample_list, _ = _sample(root)
    parameters = config.load_parameters(root / "parameters" / "scan.yaml")
    data = dataset.load_dataset(sample_list, parameters.split, root / "splits")
    with zipfile.ZipFile(root / "models" / "nano_best.zip") as archive:
        archive.extract("model.keras", tmp_path)
    scaler = keras.saving.load_model(tmp_path / "model.keras").get_layer("scaler")
    train = data.features[data.partition == TRAIN].astype(np.float64)
    counts = data.block_counts["jet_pt"][data.partition == TRAIN]
    for i in range(4):
        column = data.feature_names.index(f"jet_pt_{i}")
        real = train[counts > i, column]
        assert float(np.ravel(scaler.mean)[column]) == pytest.approx(real.mean(), rel=1e-5)
        assert float(np.ravel(scaler.variance)[column]) == pytest.approx(real.var(), rel=1e-4)
    assert int((data.partition == TEST).sum()) == scored
    # A sample added later, scored whole in chunks of 64 entries: its block columns as plain Python pads them.
    write_nano(root / "data" / "hh_new.root", 300, 7, 1.0)
    later = yaml.safe_load((root / "sample_lists" / "nano.yaml").read_text())
    later["groups"].append({"name": "hh_new", "files": "hh_new.root", "tree": "Events", "class": "signal",
                            "training": False})  # fmt: skip
    (root / "sample_lists" / "later.yaml").write_text(yaml.safe_dump(later))
    from hhscan.results import apply

    streaming = apply.score_whole_sample
    monkeypatch.setattr(apply, "score_whole_sample", lambda *args: streaming(*args[:-1], 64))  # chunk_size: 64
    code, _, err = run_cli(["test", "--model", "best", "--samples", "sample_lists/later.yaml", "--output", "hh_new"],
                           root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    read = lists(root / "data" / "hh_new.root", "Jet_pt", "event")
    with uproot.open(root / "models" / "nano_best" / "samples" / "hh_new.root") as handle:
        arrays = handle["Events"].arrays(library="np")
    pt_of = dict(zip(read["event"], read["Jet_pt"], strict=True))
    assert sorted(arrays["event"]) == sorted(e for e, pt in pt_of.items() if len(pt) >= 1)
    for i in range(4):
        expected = [pt_of[e][i] if len(pt_of[e]) > i else 0.0 for e in arrays["event"]]
        np.testing.assert_allclose(arrays[f"jet_pt_{i}"], expected, rtol=1e-6)
    # The leak check sees each block column as an input of its own: its AUC alone, as scikit-learn computes it.
    from sklearn.metrics import roc_auc_score

    training = data.partition == TRAIN
    for column in ("jet_pt_0", "jet_pt_3", "nbtag"):
        auc = roc_auc_score(data.labels[training] == 1, data.features[training, data.feature_names.index(column)],
                            sample_weight=data.learning_weight[training])  # fmt: skip
        assert data.input_separation[column] == pytest.approx(max(auc, 1 - auc), abs=1e-5)


# ---------------------------------------------------------------------------------------------- bad input

BAD = {
    "jagged branch as a scalar": (
        [{"name": "j", "expr": "Jet_pt"}], {},
        "hh.root:Events: input 'j': Jet_pt is jagged (0–6 entries per event) in 'Jet_pt': use Jet_pt[0], "
        "Alt$(Jet_pt[0], 0), a reduction like Sum$(Jet_pt), or a block",
    ),
    "index on a flat branch": (
        [{"name": "w", "expr": "genWeight[0]"}], {},
        "'genWeight[0]': genWeight[0] indexes genWeight, which is one number per event: write genWeight",
    ),
    "reduction of a flat branch": (
        [{"name": "w", "expr": "Sum$(genWeight)"}], {},
        "Sum$(genWeight) reduces entries, but genWeight is one number per event",
    ),
    "length 0": ([{"name": "b", "expr": "Jet_pt", "length": 0}], {}, "length is 0: a block takes the first length ≥ 1"),
    "block of a flat branch": (
        [{"name": "b", "expr": "genWeight", "length": 4}], {},
        "block of 'genWeight', which is one number per event: a block takes a jagged or array branch",
    ),
    "different multiplicities": (
        [{"name": "m", "expr": "Sum$(Jet_pt * Muon_pt)"}], {},
        "Jet_pt (counted by nJet) and Muon_pt (counted by nMuon) have different multiplicities",
    ),
    "jagged cut": ([{"name": "n", "expr": "Length$(Jet_pt)"}], {"cut": "Jet_pt > 30"}, "cut: Jet_pt is jagged"),
    "jagged other variable": (
        [{"name": "n", "expr": "Length$(Jet_pt)"}], {"other_variables": ["Jet_eta"]},
        "other_variables: Jet_eta is jagged (0–6 entries per event)",
    ),
    "unguarded index": (
        [{"name": "j", "expr": "Jet_pt[1]"}], {},
        "input 'j': 'Jet_pt[1]': ",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_jagged_input_gives_one_line_before_data_is_read(case, tmp_path, capsys, monkeypatch):
    inputs, changes, expected = BAD[case]
    root = nano_analysis(tmp_path / "p", n=200)
    _write_inputs(root, inputs, **changes)
    if case != "unguarded index":  # refused from the branch types: reading any data is a failure
        monkeypatch.setattr(dataset, "read_columns", lambda *a, **k: pytest.fail("data read before the refusal"))
    code, _, err = run_cli(["run", "--local", "--name", "bad"], root, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("hhscan: error: ") and expected in lines[0], lines[0]
    assert not (root / "scans" / "bad" / "records").exists() or not any((root / "scans" / "bad" / "records").iterdir())


def test_kfold_refuses_a_jagged_event_number(tmp_path, capsys, monkeypatch):
    root = nano_analysis(tmp_path / "p", n=200)
    path = root / "parameters" / "scan.yaml"
    parameters = yaml.safe_load(path.read_text())
    parameters["split"] = {"name": "k3", "kind": "kfold", "folds": 3, "variable": "Jet_pt"}
    path.write_text(yaml.safe_dump(parameters))
    monkeypatch.setattr(dataset, "read_columns", lambda *a, **k: pytest.fail("data read before the refusal"))
    code, _, err = run_cli(["run", "--local", "--name", "k"], root, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert "split.variable: Jet_pt is jagged (0–6 entries per event) in 'Jet_pt'" in lines[0]
    assert "or a block" not in lines[0]  # a block is an input, no way out for a fold number
    # The event number (one per event) folds a scan with blocks; each fold model's scaler ignores the padding.
    monkeypatch.undo()
    parameters["split"]["variable"] = "event"
    path.write_text(yaml.safe_dump(parameters))
    code, _, err = run_cli(["run", "--local", "--name", "k", "--max-trials", "1"], root, capsys, monkeypatch)
    assert code == 0, err
    from hhscan.learning import artifacts

    sample_list, _ = _sample(root)
    data = dataset.load_dataset(sample_list, config.load_parameters(path).split, root / "splits")
    from hhscan.execution.scandir import Workspace

    scan = Workspace(root).scan("k")
    (record,) = scan.records()[0].values()
    bundle, _ = artifacts.load_model_zip(scan.model_path(record.trial_id))
    for fold in range(3):
        view = data.fold_view(fold)
        train = view.partition == TRAIN
        scaler = bundle.models[fold].get_layer("scaler")
        counts = data.block_counts["jet_pt"][train]
        for i in range(4):
            column = data.feature_names.index(f"jet_pt_{i}")
            real = data.features[train, column].astype(np.float64)[counts > i]
            assert float(np.ravel(scaler.mean)[column]) == pytest.approx(real.mean(), rel=1e-5)
            assert float(np.ravel(scaler.variance)[column]) == pytest.approx(real.var(), rel=1e-4)


def test_a_block_column_is_described_as_alt_only_for_a_bare_branch(tmp_path):
    from hhscan.results.export import block_expressions

    root = nano_analysis(tmp_path / "p", n=20)
    inputs = [{"name": "pt", "expr": "Jet_pt", "length": 2, "pad": -1},
              {"name": "pz", "expr": "Jet_pt * sinh(Jet_eta)", "length": 2, "pad": 0},
              {"name": "c", "expr": "c_vectors", "length": 2, "components": 2, "pad": 0}]  # fmt: skip
    sample_list, _ = _with_inputs(root, inputs)
    described = {}
    for variable in sample_list.inputs:
        described.update(block_expressions(variable))
    # TTreeFormula reads Alt$ of a branch's entry; it cannot index a parenthesised expression, and nothing reads
    # a two-index notation with a pad: those are said in words.
    assert described == {
        "pt_0": "Alt$(Jet_pt[0], -1)",
        "pt_1": "Alt$(Jet_pt[1], -1)",
        "pz_0": "entry 0 of Jet_pt * sinh(Jet_eta), 0 where absent",
        "pz_1": "entry 1 of Jet_pt * sinh(Jet_eta), 0 where absent",
        "c_0_0": "component 0 of entry 0 of c_vectors, 0 where absent",
        "c_0_1": "component 1 of entry 0 of c_vectors, 0 where absent",
        "c_1_0": "component 0 of entry 1 of c_vectors, 0 where absent",
        "c_1_1": "component 1 of entry 1 of c_vectors, 0 where absent",
    }


def test_onnx_export_of_a_block_model_describes_each_column(tmp_path, capsys, monkeypatch):
    import json
    import os
    import subprocess
    import sys

    import onnxruntime
    from hhscan.learning import artifacts

    root = nano_analysis(tmp_path / "p", n=300)
    code, _, err = run_cli(["run", "--local", "--name", "nx", "--max-trials", "1"], root, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["report", "nx", "--no-plots"], root, capsys, monkeypatch)
    assert code == 0, err
    result = subprocess.run([sys.executable, "-m", "hhscan.cli", "export", "--model", "nx_best", "--format", "onnx"],
                            cwd=root, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    description = json.loads((root / "models" / "nx_best.onnx.json").read_text())
    expressions = {i["name"]: i["expression"] for i in description["inputs"]}
    assert expressions["jet_pt_1"] == "Alt$(Jet_pt[1], 0)" and expressions["jet2_pt"] == "Alt$(Jet_pt[1], 0)"
    assert description["input_shape"] == ["batch", 8]
    assert description["blocks"] == [{"name": "jet_pt", "length": 4, "components": 1,
                                      "columns": ["jet_pt_0", "jet_pt_1", "jet_pt_2", "jet_pt_3"]}]  # fmt: skip
    # The ONNX model scores unscaled block columns as Keras does.
    sample_list, _ = _sample(root)
    data = dataset.load_dataset(sample_list, config.load_parameters(root / "parameters" / "scan.yaml").split,
                                root / "splits")  # fmt: skip
    features = data.features[data.partition == TEST]
    keras_model, _ = artifacts.load_model_zip(root / "models" / "nx_best.zip")
    session = onnxruntime.InferenceSession(str(root / "models" / "nx_best.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: features.astype(np.float32)})[0]
    assert np.max(np.abs(scores - np.asarray(keras_model.predict(features, verbose=0)))) < 1e-5


def test_the_shipped_nanoaod_sample_list_runs_and_matches_the_readme(tmp_path, capsys, monkeypatch):
    import re
    import shutil

    from conftest import REPO

    root = tmp_path / "shipped"
    (root / "data").mkdir(parents=True)
    for name in ("nanoaod_like.root", "nanoaod_like_signal.root"):
        shutil.copy(REPO / "data" / name, root / "data" / name)
        assert (REPO / "data" / name).stat().st_size < 1_000_000
    shutil.copytree(REPO / "sample_lists", root / "sample_lists")
    shipped = (REPO / "sample_lists" / "nanoaod.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"```yaml\n(# NanoAOD-style.*?)```", readme, re.S)
    assert shown is not None and yaml.safe_load(shown.group(1)) == yaml.safe_load(shipped)
    (root / "parameters").mkdir()
    (root / "parameters" / "scan.yaml").write_text(yaml.safe_dump({
        "samples": "../sample_lists/nanoaod.yaml", "hyperparameters": {"layers": [1], "neurons": [8], "epochs": [1]},
        "split": {"name": "n", "train": 0.6, "validation": 0.2, "test": 0.2, "seed": 1},
    }))  # fmt: skip
    code, _, err = run_cli(["run", "--local", "--name", "shipped"], root, capsys, monkeypatch)
    assert code == 0, err
    sample_list = config.load_sample_list(root / "sample_lists" / "nanoaod.yaml")
    data = dataset.load_dataset(sample_list, config.load_parameters(root / "parameters" / "scan.yaml").split,
                                root / "splits")  # fmt: skip
    assert [b["name"] for b in data.blocks] == ["jet_pt", "jet_eta"] and len(data.feature_names) == 15
    # The README's layout for a model function: blocks of one length as one (events, length, features) array.
    n = len(data.features)
    stacked = np.concatenate([data.features[:, [data.feature_names.index(c) for c in b["columns"]]]
                              .reshape(n, b["length"], b["components"]) for b in data.blocks], axis=2)  # fmt: skip
    read = {}
    for name in ("nanoaod_like_signal.root", "nanoaod_like.root"):
        got = lists(root / "data" / name, "Jet_pt", "Jet_eta", "event")
        read.update({e: (p, h) for e, p, h in zip(got["event"], got["Jet_pt"], got["Jet_eta"], strict=True)})
    for row, event in enumerate(data.other["event"][:50]):
        pt, eta = read[event]
        for i in range(4):
            expected = (pt[i], eta[i]) if i < len(pt) else (0.0, 0.0)
            np.testing.assert_allclose(stacked[row, i], expected, rtol=1e-6)


def test_a_root_fixed_size_array_is_a_list_and_a_block(tmp_path):
    root = nano_analysis(tmp_path / "p", n=50)
    rng = np.random.default_rng(8)
    towers = rng.normal(size=(50, 3)).astype(np.float32)
    path = root / "data" / "fixed.root"
    with uproot.recreate(path) as handle:
        handle.mktree("Events", {"towers": (np.float32, (3,)), "w": np.float64})
        handle["Events"].extend({"towers": towers, "w": np.ones(50)})
    assert readers.branch_shapes(path, "Events", ["towers", "w"])["towers"] == readers.BranchShape(jagged=True, fixed=3)
    inputs = [{"name": "t", "expr": "towers", "length": 5, "pad": -1}, {"name": "s", "expr": "Sum$(towers * 2)"},
              {"name": "t1", "expr": "towers[1]"}, {"name": "t4", "expr": "Alt$(towers[4], 7)"}]  # fmt: skip
    sample_list, _ = _with_inputs(root, inputs, cut=None, weight="w", other_variables=[])
    sample = sample_list.samples[0].model_copy(update={"path": path})
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    np.testing.assert_array_equal(part.features[:, :5], np.pad(towers, ((0, 0), (0, 2)), constant_values=-1))
    np.testing.assert_allclose(part.features[:, 5], (2 * towers.astype(np.float64)).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(part.features[:, 6], towers[:, 1])
    np.testing.assert_array_equal(part.features[:, 7], np.full(50, 7.0))
    np.testing.assert_array_equal(part.block_counts["t"], np.full(50, 3))


def test_an_rntuple_with_jagged_fields_reads_as_a_ttree(tmp_path):
    root = nano_analysis(tmp_path / "p", n=50)
    pt = [[30.0, 20.0], [], [50.0, 40.0, 10.0]] * 10
    path = root / "data" / "rntuple.root"
    with uproot.recreate(path) as handle:  # a dict assigned to a key is written as an RNTuple
        handle["Events"] = {"Jet_pt": ak.Array(pt), "w": np.ones(30)}
    assert type(uproot.open(path)["Events"]).__name__.endswith("RNTuple")
    inputs = [{"name": "j", "expr": "Jet_pt", "length": 2, "pad": -1}, {"name": "s", "expr": "Sum$(Jet_pt > 25)"}]
    sample_list, _ = _with_inputs(root, inputs, cut=None, weight="w", other_variables=[])
    sample = sample_list.samples[0].model_copy(update={"path": path})
    part = dataset.read_sample(sample_list, sample, apply_selection=False)
    expected = [[*(p[:2]), *([-1.0] * (2 - len(p[:2]))), sum(x > 25 for x in p)] for p in pt]
    np.testing.assert_array_equal(part.features, np.asarray(expected, np.float32))
    with pytest.raises(HhscanError, match=r"Jet_pt is jagged \(0–3 entries per event\) in 'Jet_pt'"):
        dataset.read_sample(*_with_inputs(root, [{"name": "j", "expr": "Jet_pt"}], cut=None, weight="w",
                                          other_variables=[])[:1], sample)  # fmt: skip


def test_chunks_end_at_cluster_boundaries_so_no_basket_is_read_twice(tmp_path, monkeypatch):
    root = nano_analysis(tmp_path / "p", n=50)
    path = root / "data" / "baskets.root"
    with uproot.recreate(path) as handle:  # five extends: baskets (clusters) of 100 entries
        for part in range(5):
            events = nano_events(100, 20 + part, 0.0)
            if part == 0:
                handle.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in events.items()})
            handle["Events"].extend(events)
    with uproot.open(path) as handle:
        assert [int(b) for b in handle["Events"].common_entry_offsets()] == [0, 100, 200, 300, 400, 500]
    assert readers.chunk_ranges(path, "Events", 0, 500, 150) == [(0, 200), (200, 400), (400, 500)]
    # A boundary more than twice the target away is not waited for: the range is cut at the target.
    assert readers.chunk_ranges(path, "Events", 30, 500, 40) == [(30, 100), (100, 140), (140, 200), (200, 240),
                                                                 (240, 300), (300, 340), (340, 400), (400, 440),
                                                                 (440, 480), (480, 500)]  # fmt: skip
    assert readers.chunk_ranges(path, "Events", 0, 500, 30) == [(0, 30), (30, 60), (60, 100), (100, 130), (130, 160),
                                                                (160, 200), (200, 230), (230, 260), (260, 300),
                                                                (300, 330), (330, 360), (360, 400), (400, 430),
                                                                (430, 460), (460, 490), (490, 500)]  # fmt: skip
    sample_list, _ = _sample(root)
    sample = sample_list.samples[0].model_copy(update={"path": path})
    whole = dataset.read_sample(sample_list, sample)
    monkeypatch.setattr(dataset, "CHUNK_ENTRIES", 150)
    chunked = dataset.read_sample(sample_list, sample)
    np.testing.assert_array_equal(chunked.features, whole.features)


class _ConstantModel:
    """Stands in for a Keras model: one score per event."""

    def predict(self, features: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
        return np.full((len(features), 1), 0.5)


class _Collect:
    """Stands in for an output file: keeps what is appended."""

    def __init__(self) -> None:
        self.parts: list[dict] = []

    def append(self, columns: dict) -> None:
        self.parts.append(columns)

    def finish(self) -> None:
        pass


def test_hhscan_test_output_streams_in_chunks_ending_at_cluster_boundaries(tmp_path, monkeypatch):
    from hhscan.results import streaming

    root = nano_analysis(tmp_path / "p", n=50)
    path = root / "data" / "baskets.root"
    with uproot.recreate(path) as handle:  # five extends: baskets (clusters) of 100 entries
        for part in range(5):
            events = nano_events(100, 20 + part, 0.0)
            if part == 0:
                handle.mktree("Events", {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in events.items()})
            handle["Events"].extend(events)
    sample_list, _ = _sample(root)
    sample = sample_list.samples[0].model_copy(update={"path": path})
    asked = []
    read = streaming.read_sample
    monkeypatch.setattr(streaming, "read_sample", lambda *a, entries, **k: asked.append(entries) or read(
        *a, entries=entries, **k))  # fmt: skip
    writer = _Collect()
    metadata = {"feature_names": sample_list.feature_names, "class_names": ["s"]}
    written = streaming.score_whole_sample(_ConstantModel(), metadata, sample_list, sample, writer, 150)
    assert asked == [(0, 200), (200, 400), (400, 500)]  # as readers.chunk_ranges cuts them, not every 150
    whole = dataset.read_sample(sample_list, sample)
    assert written == len(whole.features)
    np.testing.assert_array_equal(np.concatenate([p["event"] for p in writer.parts]), whole.other["event"])
