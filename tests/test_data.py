"""Reading, weights, split and cache, checked against computations made directly from the files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import uproot
from conftest import LUMI, SUMW, XSEC, build_analysis, make_events, write_h5, write_root
from hhscan.data import dataset, split
from hhscan.errors import SplitError
from hhscan.settings import config


def load(analysis, cache: bool = False):
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(config.samples_path(parameters))
    cache_dir = analysis.root / "cache" if cache else None
    return dataset.load_dataset(sample_list, parameters.split, analysis.root / "splits", cache_dir), sample_list


def raw(analysis, name: str) -> dict[str, np.ndarray]:
    path = analysis.data / name
    if path.suffix == ".h5":
        with h5py.File(path) as handle:
            array = handle["events"][()]
        return {k: array[k] for k in array.dtype.names}
    with uproot.open(path) as handle:
        return handle["Events"].arrays(library="np")


def expected_selection(columns):
    return (columns["x2"] > -6) & ~(columns["njet"] > 4) & (columns["weight"] > 0)


def test_samples_resolved_with_eras_globs_and_json_tables(analysis):
    _, sample_list = load(analysis)
    by_name = {s.name: s for s in sample_list.samples}
    assert sorted(by_name) == ["dy_2016", "hh_2016", "hh_2017", "tt_2016", "tt_2017"]
    assert by_name["tt_2017"].xsec == XSEC["2017"]["tt_2017.root"]
    assert by_name["tt_2017"].event_weight_sum == SUMW["2017"]["tt_2017.root"]
    assert by_name["tt_2017"].lumi == LUMI["2017"]
    assert by_name["hh_2016"].is_signal and not by_name["dy_2016"].is_signal
    assert sample_list.class_names == ["background", "signal"]


def test_learning_weights_follow_the_physics(analysis):
    data, sample_list = load(analysis)
    stored_split = np.load(analysis.root / "splits" / "unit.npz")
    independent, training = {}, {}
    for sample in sample_list.samples:
        columns = raw(analysis, sample.path.name)
        keep = expected_selection(columns)
        w = columns["weight"][keep]
        training[sample.name] = stored_split[sample.name] == split.TRAIN
        if sample.is_signal:
            independent[sample.name] = w
        else:
            era = sample.era
            independent[sample.name] = w * XSEC[era][sample.path.name] * LUMI[era] / SUMW[era][sample.path.name]
    # Equalise on the training split: each class sums to N_train/2 there, computed here from scratch.
    n_train = sum(t.sum() for t in training.values())
    for cls in ("signal", "background"):
        names = [s.name for s in sample_list.samples if s.class_name == cls]
        total = sum(independent[n][training[n]].sum() for n in names)
        for n in names:
            independent[n] = independent[n] * (n_train / 2) / total
    for index, name in enumerate(data.sample_names):
        got = data.learning_weight[data.sample_index == index]
        np.testing.assert_allclose(got, independent[name], rtol=1e-6)
    train = data.partition == split.TRAIN
    sums = [data.learning_weight[(data.labels == k) & train].sum() for k in range(2)]
    np.testing.assert_allclose(sums, [n_train / 2] * 2, rtol=1e-5)
    assert (data.learning_weight > 0).all()


def test_physical_yields_for_every_process_signal_included(analysis):
    """Yield = w × xsec × lumi / Σw (× Σw passing the cut / Σw kept: the dropped negative weights' share)."""
    data, sample_list = load(analysis)
    for sample in sample_list.samples:
        columns = raw(analysis, sample.path.name)
        passing = (columns["x2"] > -6) & ~(columns["njet"] > 4)
        keep = passing & (columns["weight"] > 0)
        era, file = sample.era, sample.path.name
        correction = columns["weight"][passing].sum() / columns["weight"][keep].sum()
        expected = columns["weight"][keep] * XSEC[era][file] * LUMI[era] / SUMW[era][file] * correction
        got = data.yield_weight[data.sample_index == data.sample_names.index(sample.name)]
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        # The sample's total is the signed yield after the cut, what the full simulation predicts.
        signed = columns["weight"][passing].sum() * XSEC[era][file] * LUMI[era] / SUMW[era][file]
        assert got.sum() == pytest.approx(signed, rel=1e-9)
        summary = next(s for s in data.summaries if s.name == sample.name)
        assert summary.expected_events == pytest.approx(signed, rel=1e-9)
    # A partition's yields, each sample scaled by 1 / its fraction in the partition, sum to the whole yield.
    for partition in (split.TRAIN, split.VALIDATION, split.TEST):
        selected = data.partition == partition
        scaled = data.yields(selected)
        for index in range(len(data.sample_names)):
            mine = data.sample_index[selected] == index
            fraction = mine.sum() / (data.sample_index == index).sum()
            np.testing.assert_allclose(scaled[mine], data.yield_weight[selected][mine] / fraction, rtol=1e-12)
    assert data.yield_problem() is None


def test_units_scale_the_yields(analysis):
    base, _ = load(analysis)
    analysis.edit_samples(units={"xsec": "fb", "lumi": "pb-1"})  # the same numbers read as fb: 1000× smaller
    (analysis.root / "cache").mkdir(exist_ok=True)
    scaled, _ = load(analysis)
    np.testing.assert_allclose(scaled.yield_weight, base.yield_weight * 1e-3, rtol=1e-12)
    np.testing.assert_array_equal(scaled.learning_weight, base.learning_weight)  # learning weights do not care


def test_a_signal_without_cross_section_has_no_yields_and_says_why(analysis):
    (analysis.data / "xsec_2017.json").write_text('{"tt_2017.root": 820.0}')  # hh_2017 has none now
    data, _ = load(analysis)
    assert np.isnan(data.yield_weight[data.sample_index == data.sample_names.index("hh_2017")]).all()
    assert "hh_2017" in data.yield_problem() and "no cross-section" in data.yield_problem()


def test_a_background_alone_in_its_class_needs_no_cross_section(analysis3):
    """DY is alone in class DY: its normalisation cancels in equalisation. TT has two samples: it needs one."""
    (analysis3.data / "xsec_2016.json").write_text('{"tt_2016.root": 800.0}')
    data, _ = load(analysis3)
    dy = data.sample_index == data.sample_names.index("dy_2016")
    columns = raw(analysis3, "dy_2016.h5")
    w = columns["weight"][expected_selection(columns)]
    train = data.partition[dy] == split.TRAIN
    n_train = (data.partition == split.TRAIN).sum()
    np.testing.assert_allclose(data.learning_weight[dy], w * (n_train / 3) / w[train].sum(), rtol=1e-6)
    (analysis3.data / "xsec_2017.json").write_text("{}")
    with pytest.raises(Exception, match=r"no cross-section for background file 'tt_2017.root', one of 2 samples"):
        load(analysis3)


def test_negative_weights_dropped_and_counted_per_file(analysis):
    data, _ = load(analysis)
    for summary in data.summaries:
        columns = raw(analysis, summary.file.split("/")[-1])
        passing_cut = (columns["x2"] > -6) & ~(columns["njet"] > 4)
        assert summary.selected == passing_cut.sum()
        assert summary.dropped_non_positive == (passing_cut & (columns["weight"] <= 0)).sum() > 0
        assert summary.used == summary.selected - summary.dropped_non_positive


def test_three_classes_are_equalised_with_factors(analysis3):
    analysis3.edit_samples(class_weight_factors={"DY": 2.0})
    data, _ = load(analysis3)
    assert data.class_names == ["TT", "DY", "signal"]
    train = data.partition == split.TRAIN
    sums = np.array([data.learning_weight[(data.labels == k) & train].sum() for k in range(3)])
    np.testing.assert_allclose(sums / sums[0], [1.0, 2.0, 1.0], rtol=1e-5)


def test_features_expression_one_hot_and_dash_branch(analysis):
    data, _ = load(analysis)
    assert data.feature_names == ["x1", "abs_x2", "btag", "njet_2", "njet_3", "njet_4"]
    index = data.sample_names.index("tt_2017")
    columns = raw(analysis, "tt_2017.root")
    keep = expected_selection(columns)
    got = data.features[data.sample_index == index]
    np.testing.assert_allclose(got[:, 1], np.abs(columns["x2"][keep]))
    np.testing.assert_allclose(got[:, 2], columns["jet_b-tag"][keep])
    np.testing.assert_array_equal(got[:, 3:].argmax(axis=1) + 2, columns["njet"][keep])
    np.testing.assert_array_equal(got[:, 3:].sum(axis=1), 1)
    np.testing.assert_array_equal(data.other["event"][data.sample_index == index], columns["event"][keep])


def test_a_text_branch_of_hdf5_files_is_one_hot_on_its_quoted_values(analysis):
    # h5py gives text as bytes: the categories are the configuration's text, never refused as absent (b'B' != 'B').
    files = {"hh_2016.h5": (0.8, 1, "signal"), "dy_2016.h5": (-0.2, 5, "background")}
    for name, (shift, seed, _) in files.items():
        events = make_events(400, shift, seed)
        events["period"] = np.where(events["event"] % 3 == 0, b"B", b"C").astype("S1")
        write_h5(analysis.data / name, "events", events)
    for table in ("xsec_2016.json", "event_weight_sum_2016.json"):
        content = json.loads((analysis.data / table).read_text())
        content["hh_2016.h5"] = content["hh_2016.root"]
        (analysis.data / table).write_text(json.dumps(content))
    groups = [{"name": name[:2], "files": name, "tree": "events", "class": kind, "era": "2016"}
              for name, (_, _, kind) in files.items()]  # fmt: skip
    analysis.edit_samples(groups=groups, inputs=["x1", {"name": "period", "expr": "period", "one_hot": ["B", "C"]}])
    data, _ = load(analysis)
    assert data.feature_names == ["x1", "period_B", "period_C"]
    for index, name in enumerate(data.sample_names):
        columns = raw(analysis, f"{name}.h5")
        period = columns["period"][expected_selection(columns)]
        got = data.features[data.sample_index == index]
        np.testing.assert_array_equal(got[:, 1], period == b"B")
        np.testing.assert_array_equal(got[:, 2], period == b"C")


def test_split_is_deterministic_exact_and_persisted(analysis):
    first, _ = load(analysis)
    stored = np.load(analysis.root / "splits" / "unit.npz")
    for index, name in enumerate(first.sample_names):
        part = first.partition[first.sample_index == index]
        np.testing.assert_array_equal(part, stored[name])
        n = len(part)
        assert (part == split.TRAIN).sum() == round(0.6 * n)
        assert (part == split.VALIDATION).sum() == round(0.2 * n)
    # A different random seed in the environment changes nothing: the split is read back.
    np.random.seed(99)
    second, _ = load(analysis)
    np.testing.assert_array_equal(first.partition, second.partition)
    assert first.split_checksum == second.split_checksum
    # Made afresh elsewhere with the same settings, the assignment is identical (determinism).
    fresh = split.assign_partitions(len(stored["tt_2016"]), (0.6, 0.2, 0.2), 7, "tt_2016")
    np.testing.assert_array_equal(fresh, stored["tt_2016"])


def test_changed_data_is_an_error_naming_the_sample(analysis):
    load(analysis)
    write_root(analysis.data / "tt_2017.root", {"Events": make_events(350, -0.5, 4)})
    with pytest.raises(SplitError, match=r"sample 'tt_2017' changed since split 'unit'.*entries 400 → 350"):
        load(analysis)


def test_changed_cut_is_an_error_not_a_resplit(analysis):
    load(analysis)
    analysis.edit_samples(cut="x2 > -3")
    with pytest.raises(SplitError, match=r"changed since split 'unit'.*selected events"):
        load(analysis)


def test_changed_ratios_refused(analysis):
    load(analysis)
    analysis.edit_parameters(split={"train": 0.5, "validation": 0.3})
    with pytest.raises(SplitError, match="was made with ratios"):
        load(analysis)


def test_cache_reload_is_identical_and_invalidated_by_changes(analysis):
    fresh, sample_list = load(analysis, cache=True)
    files = list((analysis.root / "cache").glob("*.npz"))
    assert len(files) == 1
    cached, _ = load(analysis, cache=True)
    for name in ("features", "labels", "learning_weight", "partition", "sample_index"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(cached, name))
    assert cached.split_checksum == fresh.split_checksum
    parameters = config.load_parameters(analysis.parameters)
    key = dataset.cache_key(sample_list, parameters.split)
    analysis.edit_samples(other_variables=["event"])
    changed = config.load_sample_list(analysis.sample_list)
    assert dataset.cache_key(changed, parameters.split) != key
    # Touching a data file (new mtime) also changes the key.
    analysis.edit_samples(other_variables=["event", "njet"])
    same = config.load_sample_list(analysis.sample_list)
    assert dataset.cache_key(same, parameters.split) == key
    write_root(analysis.data / "dy_2016.root", {"Events": make_events(10, 0, 1)})  # unrelated file
    assert dataset.cache_key(same, parameters.split) == key
    (analysis.data / "tt_2016.root").touch()
    assert dataset.cache_key(same, parameters.split) != key


def test_cache_not_used_when_the_split_file_changed(analysis):
    first, _ = load(analysis, cache=True)
    (analysis.root / "splits" / "unit.npz").unlink()
    with pytest.raises(SplitError, match=r"unit.npz is missing"):
        load(analysis, cache=True)
    (analysis.root / "splits" / "unit.json").unlink()
    again, _ = load(analysis, cache=True)  # made again: deterministic, so identical
    assert again.split_checksum == first.split_checksum
    stored = dict(np.load(analysis.root / "splits" / "unit.npz"))
    stored["tt_2016"] = np.roll(stored["tt_2016"], 1)
    np.savez(analysis.root / "splits" / "unit.npz", **stored)
    edited, _ = load(analysis, cache=True)  # the cache is bypassed, the edited split is what is read
    assert edited.split_checksum != first.split_checksum


def test_hdf5_group_layout_is_read(tmp_path):
    project = build_analysis(tmp_path / "p")
    events = make_events(100, -0.2, 5)
    with h5py.File(project.data / "dy_2016.h5", "w") as handle:
        group = handle.create_group("events")
        for key, values in events.items():
            group.create_dataset(key, data=values)
    data, _ = load(project)
    index = data.sample_names.index("dy_2016")
    assert (data.sample_index == index).sum() == expected_selection(events).sum()


def test_a_corrupt_root_file_is_one_line_naming_it_whatever_uproot_trips_on(tmp_path):
    from hhscan.data import readers
    from hhscan.errors import DataError

    good = tmp_path / "good.root"
    with uproot.recreate(good) as handle:
        handle["Events"] = {"x": np.arange(1000, dtype="f8")}
    header = good.read_bytes()[:400]
    corrupt = {
        "short.root": b"hello",  # shorter than a ROOT header: uproot's OSError
        "text.root": b"hello world " * 100,  # no ROOT magic: ValueError
        "garbled.root": b"root" + b"\xff" * 300 + header[304:],  # magic, then a garbled header: DeserializationError
    }
    for name, content in corrupt.items():
        path = tmp_path / name
        path.write_bytes(content)
        for read in (lambda p: readers.read_columns(p, "Events", ["x"]),
                     lambda p: readers.branch_shapes(p, "Events", ["x"]),
                     lambda p: readers.chunk_ranges(p, "Events", 0, 10, 5)):  # fmt: skip
            with pytest.raises(DataError, match=rf"^{path}: not a readable ROOT file \([^\n]+\)$"):
                read(path)
