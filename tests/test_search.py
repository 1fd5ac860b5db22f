"""Adaptive search: ranges in the registry, the search: section, slots and budget, reproducibility, pruning, and
the study rebuilt from records — on real tiny trainings (few events, 2–4 epochs)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import build_analysis, run_cli
from hhscan.errors import ConfigError
from hhscan.execution import runner, search, session
from hhscan.execution.scandir import Workspace
from hhscan.learning import records, trial
from hhscan.settings import config

RANGES = {
    "learning_rate": {"low": 1.0e-3, "high": 5.0e-2, "log": True},
    "neurons": {"low": 4, "high": 16, "step": 4},
}


def _adaptive(analysis, sampler="tpe", trials=4, pack_size=2, epochs=2, **search_settings) -> None:
    analysis.edit_parameters(
        hyperparameters={**RANGES, "epochs": [epochs]},
        search={"sampler": sampler, "trials": trials, **search_settings},
        training={"pack_size": pack_size},
    )


def _slots(scan_root: Path) -> list[str]:
    return [asked.trial.id for asked in search.read_asked(scan_root)]


# ------------------------------------------------------------------------------------------ configuration


def test_ranges_are_read_with_every_key_and_typed(analysis):
    _adaptive(analysis)
    parameters = config.load_parameters(analysis.parameters)
    assert parameters.hyperparameters["learning_rate"] == {"low": 0.001, "high": 0.05, "log": True, "step": None}
    assert parameters.hyperparameters["neurons"] == {"low": 4, "high": 16, "log": False, "step": 4}
    space, fixed = search.search_space(parameters)
    assert sorted(space) == ["learning_rate", "neurons"]
    assert space["neurons"].step == 4 and space["learning_rate"].log
    assert fixed["epochs"] == 2 and fixed["layers"] == 1  # single values are fixed, not searched
    assert trial.expand(parameters) == []  # an adaptive scan's trials are asked as it runs


@pytest.mark.parametrize(
    ("hyperparameters", "search_section", "key", "message"),
    [
        ({"learning_rate": {"low": 0, "high": 0.1}}, None, "hyperparameters.learning_rate.low", "0 is not in (0, ∞)"),
        ({"dropout": {"low": 0.0, "high": 1.0}}, None, "hyperparameters.dropout.high", "1 is not in [0, 1)"),
        ({"neurons": {"low": 16, "high": 8}}, None, "hyperparameters.neurons.high", "8 is below low 16"),
        ({"neurons": {"low": 4.5, "high": 8}}, None, "hyperparameters.neurons.low", "4.5 is not an integer"),
        ({"neurons": {"low": 4, "high": 30, "step": 4}}, None, "hyperparameters.neurons.step",
         "high - low = 26 is not a multiple of step 4"),
        ({"neurons": {"low": 4, "high": 32, "step": 0}}, None, "hyperparameters.neurons.step", "0 is not a positive"),
        ({"l2": {"low": 0.0, "high": 0.1, "log": True}}, None, "hyperparameters.l2.low", "a log range needs low > 0"),
        ({"l2": {"low": 0.1, "high": 0.2, "log": "yes"}}, None, "hyperparameters.l2.log", "'yes' is not true or false"),
        ({"learning_rate": {"low": 0.1, "hihg": 0.2}}, None, "hyperparameters.learning_rate.hihg",
         "unknown key of a range (closest: high)"),
        ({"learning_rate": {"high": 0.2}}, None, "hyperparameters.learning_rate.low", "required key of a range"),
        ({"optimizer": {"low": 1, "high": 2}}, None, "hyperparameters.optimizer", "a range needs a numeric"),
        ({"learning_rate": RANGES["learning_rate"]}, {"sampler": "grid"}, "hyperparameters.learning_rate", "a range needs an adaptive search.sampler"),
        ({}, {"sampler": "tpe"}, "search.trials", "required with sampler tpe"),
        ({}, {"trials": 5}, "search.trials", "the budget of an adaptive sampler"),
        ({}, {"pruner": "median"}, "search.pruner", "median needs an adaptive sampler"),
        ({}, {"sampler": "random", "trials": 3, "pruner": "median", "pruner_settings": {"warmup": 1}},
         "search.pruner_settings.warmup", "not a setting of pruner median (closest: n_warmup_steps"),
        ({}, {"sampler": "random", "trials": 0}, "search.trials", "greater than or equal to 1"),
        ({}, {"sampler": "random", "trials": 3, "pruner": "asha", "pruner_settings": {"reduction_factor": 1}},
         "search.pruner_settings", "`reduction_factor >= 2`"),
        ({}, {"sampler": "random", "trials": 3, "pruner": "median", "pruner_settings": {"n_warmup_steps": -1}},
         "search.pruner_settings", "Number of warmup steps cannot be negative"),
    ],
)  # fmt: skip
def test_bad_ranges_and_search_settings_are_one_line_naming_the_key(analysis, hyperparameters, search_section, key,
                                                                    message):  # fmt: skip
    analysis.edit_parameters(hyperparameters=hyperparameters,
                             search=search_section if search_section is not None else {"sampler": "random", "trials": 3})
    with pytest.raises(ConfigError) as caught:
        config.load_parameters(analysis.parameters)
    text = str(caught.value)
    assert text.startswith(f"{analysis.parameters}:{key}: ") and message in text, text
    assert "\n" not in text


def test_a_range_with_the_grid_is_one_line_from_the_command_exit_1(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"learning_rate": RANGES["learning_rate"]})
    code, _, err = run_cli(["run", "--local", "--name", "bad"], analysis.root, capsys, monkeypatch)
    assert code == 1
    assert err.strip() == ("hhscan: error: parameters/scan.yaml:hyperparameters.learning_rate: a range needs an "
                           "adaptive search.sampler (random, tpe, cmaes or qmc); the grid takes lists")  # fmt: skip
    assert "Traceback" not in err and not (analysis.root / "slurm").exists()  # refused before anything is written


def test_grid_ids_and_dictionary_hash_are_unchanged_by_the_search_section(analysis):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8]})
    before = config.load_parameters(analysis.parameters)
    analysis.edit_parameters(search={"sampler": "grid"})
    explicit = config.load_parameters(analysis.parameters)
    assert [t.id for t in trial.expand(before)] == [t.id for t in trial.expand(explicit)]
    assert len(trial.expand(before)) == 4
    # The hash scheme of a grid scan, by hand: sha256 of the sorted JSON of the dictionary and the repetitions
    # (without weight_decay: added later, left out at its default so older scans keep their hash).
    original = {k: v for k, v in before.hyperparameters.items() if k != "weight_decay"}
    by_hand = hashlib.sha256(
        json.dumps({"hp": original, "rep": 1}, sort_keys=True).encode()
    ).hexdigest()[:16]
    assert before.dictionary_hash() == explicit.dictionary_hash() == by_hand
    # An asked point has the id of the same grid point.
    grid_trial = trial.expand(before)[0]
    _, fixed = search.search_space(before)
    assert search.point_trial({"neurons": grid_trial.hyperparameters["neurons"],
                               "learning_rate": grid_trial.hyperparameters["learning_rate"]}, fixed).id == grid_trial.id


# ------------------------------------------------------------------------------------------------ slots


def test_slots_are_taken_exactly_once_under_concurrency(tmp_path):
    """Eight workers racing for a budget of five: five slots, 0…4, each one trial, complete."""
    budget, taken = 5, []

    def worker(index: int) -> None:
        for attempt in range(3):
            point = trial.Trial(f"t{index}-{attempt}", {"neurons": index}, 0)
            slot = search.take_slot(tmp_path, search.Asked(-1, point), budget)
            if slot is not None:
                taken.append((slot, point.id))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slot for slot, _ in taken) == list(range(budget))
    assert {(a.slot, a.trial.id) for a in search.read_asked(tmp_path)} == set(taken)
    assert not list(search.asked_dir(tmp_path).glob(".*"))  # no temporary file left


# ------------------------------------------------------------------------------------ running a search


def test_budget_is_exact_and_a_killed_workers_slot_is_trained_first(analysis, capsys, monkeypatch):
    _adaptive(analysis, sampler="random", trials=5, pack_size=2)
    parameters = config.load_parameters(analysis.parameters)
    scan_root = analysis.root / "slurm" / "budget"
    code, _, err = run_cli(["run", "--local", "--name", "budget", "--max-trials", "0"], analysis.root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    # A worker killed after asking: its slot holds a point without a record or a live lease.
    _, fixed = search.search_space(parameters)
    orphan = search.point_trial({"learning_rate": 0.01, "neurons": 8}, fixed)
    assert search.take_slot(scan_root, search.Asked(-1, orphan), 5) == 0
    code, out, err = run_cli(["run", "--local", "--name", "budget"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    found, corrupt = records.read_records(scan_root / "output")
    assert len(found) == 5 and not corrupt  # the budget, no more
    assert all(r.done for r in found.values())
    assert found[orphan.id].hyperparameters["neurons"] == 8  # the orphan was trained, into its own slot 0
    slots = _slots(scan_root)
    assert slots[0] == orphan.id and len(slots) == len(set(slots)) == 5
    assert set(slots) == set(found)
    assert not (scan_root / "leases").exists()  # the budget spent and finished: leases cleaned
    code, out, err = run_cli(["run", "--local", "--name", "budget"], analysis.root, capsys, monkeypatch)
    assert code == 0 and "5 finished, up to 0 to run" in out
    assert len(records.read_records(scan_root / "output")[0]) == 5
    # The budget may be raised to go on; the sampler or the space may not change.
    analysis.edit_parameters(search={"trials": 6})
    code, out, err = run_cli(["run", "--local", "--name", "budget"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert len(records.read_records(scan_root / "output")[0]) == 6 and len(_slots(scan_root)) == 6
    analysis.edit_parameters(search={"sampler": "tpe"})
    code, _, err = run_cli(["run", "--local", "--name", "budget"], analysis.root, capsys, monkeypatch)
    assert code == 1 and "changed since it was created (sampler)" in err


def test_one_worker_and_a_fixed_seed_give_the_same_trials_in_the_same_order(analysis, capsys, monkeypatch):
    _adaptive(analysis, sampler="tpe", trials=4, pack_size=2, seed=11)
    sequences, values = [], []
    for name in ("first", "second"):
        code, _, err = run_cli(["run", "--local", "--name", name], analysis.root, capsys, monkeypatch)
        assert code == 0, err
        scan_root = analysis.root / "slurm" / name
        sequences.append(_slots(scan_root))
        found = records.read_records(scan_root / "output")[0]
        values.append([found[i].value for i in sequences[-1]])
    assert len(sequences[0]) == 4 and len(set(sequences[0])) == 4
    assert sequences[0] == sequences[1]
    assert values[0] == values[1]
    # Another seed asks other points (checked on the sampler alone: the same empty scan, no training).
    parameters = config.load_parameters(analysis.parameters)
    first = search.build_study(parameters, "x", [], {}).ask()[0].id
    assert first == search.build_study(parameters, "x", [], {}).ask()[0].id
    other = parameters.model_copy(update={"search": parameters.search.model_copy(update={"seed": 12})})
    assert search.build_study(other, "x", [], {}).ask()[0].id != first


# ------------------------------------------------------------------------------------ pruning and the study


WARMUP = 1  # epochs never pruned


@pytest.fixture(scope="module")
def pruned_scan(tmp_path_factory) -> Callable[[], tuple[Path, config.Parameters]]:
    """Eight random trials of 4 epochs, one per pack, pruned by the median rule after one finished trial and from
    the second epoch on. Trained once, by the first test that asks, in its call and under its ``capsys`` (as
    ``run_cli`` trains): trained in a fixture's setup or under pytest's global capture, a later test's capture
    fails ("I/O operation on closed file") and pytest dies reporting it."""
    made: list[tuple[Path, config.Parameters]] = []
    directory = tmp_path_factory.mktemp("pruning")

    def get() -> tuple[Path, config.Parameters]:
        if not made:
            made.append(_train_pruned(directory))
        return made[0]

    return get


def _train_pruned(directory: Path, **changes) -> tuple[Path, config.Parameters]:
    analysis = build_analysis(directory / "project")
    analysis.edit_parameters(
        hyperparameters={"learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "neurons": [2, 8],
                         "epochs": [4]},
        search={"sampler": "random", "trials": 8, "pruner": "median", "seed": 3,
                "pruner_settings": {"n_startup_trials": 1, "n_warmup_steps": WARMUP}},
        training={"pack_size": 1, "early_stopping": {"enabled": False}},
        **changes,
    )  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(config.samples_path(parameters))
    prepared = session.prepare(parameters, sample_list, analysis.root, "pruned", kind="local")
    runner.run_adaptive(prepared.scan, dataset=prepared.dataset)
    return analysis.root, parameters


def _check_the_median_rule(root: Path, curve: Callable[[records.TrialRecord], list[float]]) -> None:
    """Every trial pruned exactly where Optuna's median rule says, computed by hand from the records' curves."""
    scan = Workspace(root).scan("pruned")
    found, _ = scan.records()
    order = _slots(scan.root)
    assert len(order) == len(found) == 8
    epochs, pruned = 4, 0
    for position, trial_id in enumerate(order):
        record = found[trial_id]
        auc = curve(record)
        # One worker, one trial per pack: every earlier slot had finished; the median is over the DONE ones.
        earlier = [curve(found[i]) for i in order[:position] if found[i].status == records.DONE]
        expected = None
        for epoch in range(WARMUP + 1, epochs):  # steps are epochs from 0: the first WARMUP spared; never the last
            if epoch > len(auc) or not earlier:
                break
            at_epoch = [other[epoch - 1] for other in earlier if len(other) >= epoch]
            if at_epoch and max(auc[:epoch]) < float(np.median(at_epoch)):
                expected = epoch
                break
        if expected is None:
            assert record.status == records.DONE and record.pruned_epoch is None and len(auc) == epochs, trial_id
        else:
            pruned += 1
            assert record.status == records.PRUNED and record.pruned_epoch == expected, trial_id
            assert len(auc) == expected and record.epochs_run == expected  # frozen after that epoch
            assert not scan.model_path(trial_id).exists()
    assert 0 < pruned < 8  # the rule was exercised both ways


def test_pruned_trials_match_the_median_rule_computed_from_the_records(pruned_scan, capsys):
    root, _ = pruned_scan()
    _check_the_median_rule(root, lambda record: record.history["val_auc"])


def test_a_kfold_trial_is_pruned_on_the_mean_curve_of_its_folds(tmp_path, capsys):
    # Each fold model's own validation AUC per epoch, averaged by hand: the trial's curve the pruner must see.
    from test_kfold import KFOLD

    root, _ = _train_pruned(tmp_path, split=KFOLD)

    def mean_of_folds(record: records.TrialRecord) -> list[float]:
        per_fold = [record.history[f"fold{f}/val_auc"] for f in range(3)]
        assert len({len(c) for c in per_fold}) == 1  # the folds of a trial are pruned together
        return list(np.mean(per_fold, axis=0))

    _check_the_median_rule(root, mean_of_folds)


def test_status_and_report_count_pruned_trials_as_finished_never_ranked(pruned_scan, capsys, monkeypatch):
    root, _ = pruned_scan()
    found, _ = Workspace(root).scan("pruned").records()
    n_pruned = sum(r.status == records.PRUNED for r in found.values())
    code, out, err = run_cli(["status", "pruned"], root, capsys, monkeypatch)
    assert code == 0, err
    assert f"done: {8 - n_pruned}  pruned: {n_pruned}  failed: 0" in out and "missing: 0" in out
    assert "not yet asked: 0" in out and "resubmit" not in out
    code, out, err = run_cli(["report", "pruned", "--no-plots"], root, capsys, monkeypatch)
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(root / "models" / "pruned.csv")
    ranked = table[table["rank"].notna()]
    assert set(ranked["status"]) == {"DONE"} and len(ranked) == 8 - n_pruned
    assert list(table["status"][: len(ranked)]) == ["DONE"] * len(ranked)  # no PRUNED row above a finished one
    rows = table[table["status"] == "PRUNED"]
    assert {r: int(e) for r, e in zip(rows["trial_id"], rows["pruned_epoch"], strict=True)} == {
        r.trial_id: r.pruned_epoch for r in found.values() if r.status == records.PRUNED
    }
    best = max((r for r in found.values() if r.done), key=lambda r: r.metrics["val_auc"])
    assert ranked.iloc[0]["trial_id"] == best.trial_id


def test_the_study_rebuilt_from_records_has_the_best_value_computed_by_hand(pruned_scan, capsys):
    import optuna

    root, parameters = pruned_scan()
    scan = Workspace(root).scan("pruned")
    found, _ = scan.records()
    rebuilt = search.build_study(parameters, scan.name, search.read_asked(scan.root), found)
    done = [r for r in found.values() if r.status == records.DONE]
    best = max(done, key=lambda r: r.metrics["val_auc"])
    assert rebuilt.study.best_value == best.metrics["val_auc"]
    assert rebuilt.study.best_trial.params == {k: best.hyperparameters[k] for k in ("learning_rate", "neurons")}
    states = [t.state for t in rebuilt.study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(done)
    assert states.count(optuna.trial.TrialState.PRUNED) == len(found) - len(done)
    for frozen, trial_id in zip(rebuilt.study.trials, _slots(scan.root), strict=True):  # slot order, own epochs
        assert frozen.intermediate_values == dict(enumerate(found[trial_id].history["val_auc"]))


def test_report_writes_the_study_to_an_sqlite_file_optuna_reads_back(pruned_scan, capsys, monkeypatch, tmp_path):
    import optuna

    root, _ = pruned_scan()
    found, _ = Workspace(root).scan("pruned").records()
    path = tmp_path / "study.db"
    code, out, err = run_cli(["report", "pruned", "--no-plots", "--optuna-storage", str(path)], root, capsys,
                             monkeypatch)  # fmt: skip
    assert code == 0, err
    assert f"Optuna study 'pruned': {path}" in out.replace("\n", "")
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed
    study = optuna.load_study(study_name="pruned", storage=f"sqlite:///{path}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val_auc
    assert len(study.trials) == len(found) == 8
    states = {"DONE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}
    for frozen in study.trials:
        record = found[frozen.user_attrs["trial_id"]]
        assert frozen.state == states[record.status]
        assert frozen.value == (record.metrics["val_auc"] if record.status == records.DONE else None)
        assert frozen.params == {k: record.hyperparameters[k] for k in ("learning_rate", "neurons")}
        assert frozen.intermediate_values == dict(enumerate(record.history["val_auc"]))
    assert [t.user_attrs["trial_id"] for t in study.trials] == _slots(Workspace(root).scan("pruned").root)
    best = max((r for r in found.values() if r.status == records.DONE), key=lambda r: r.metrics["val_auc"])
    assert study.best_value == best.metrics["val_auc"] and study.best_trial.user_attrs["trial_id"] == best.trial_id
    # Its study exists already: one line, exit 1, the file untouched.
    before = path.read_bytes()
    code, _, err = run_cli(["report", "pruned", "--no-plots", "--optuna-storage", str(path)], root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (f"hhscan: error: --optuna-storage {path}: holds a study 'pruned' already; remove the "
                           "file or choose another path")  # fmt: skip
    assert path.read_bytes() == before
    # A file that is no database: one line, exit 1.
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n" * 100)
    code, _, err = run_cli(["report", "pruned", "--no-plots", "--optuna-storage", str(other)], root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"hhscan: error: --optuna-storage {other}: not an Optuna SQLite storage")
    # A storage holding other studies: the scan's study is added beside them.
    shared = tmp_path / "shared.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{shared}")
    code, _, err = run_cli(["report", "pruned", "--no-plots", "--optuna-storage", str(shared)], root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    assert sorted(optuna.study.get_all_study_names(storage=f"sqlite:///{shared}")) == ["other", "pruned"]
    assert len(optuna.load_study(study_name="pruned", storage=f"sqlite:///{shared}").trials) == 8
    # Ranked by another criterion: the study stays the search as it ran (val_auc, maximised), and the report says so.
    ranked_by_loss = tmp_path / "by_loss.db"
    code, out, err = run_cli(["report", "pruned", "--no-plots", "--criterion", "val_loss", "--optuna-storage",
                              str(ranked_by_loss)], root, capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert "the Optuna study and its plots use val_auc, the objective the search optimised; the ranking uses " \
        "val_loss" in " ".join(out.split())
    by_loss = optuna.load_study(study_name="pruned", storage=f"sqlite:///{ranked_by_loss}")
    assert by_loss.direction == optuna.study.StudyDirection.MAXIMIZE and by_loss.best_value == best.metrics["val_auc"]


def test_report_of_an_adaptive_scan_draws_optunas_importance_and_parallel_coordinates(pruned_scan, capsys,
                                                                                       monkeypatch):  # fmt: skip
    import matplotlib.image

    root, _ = pruned_scan()
    directory = root / "models" / "pruned"
    for name in ("importance.png", "parallel_coordinate.png"):
        (directory / name).unlink(missing_ok=True)
    code, _, err = run_cli(["report", "pruned"], root, capsys, monkeypatch)
    assert code == 0, err
    for name in ("importance.png", "parallel_coordinate.png"):
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(directory / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, (name, image.shape)


def test_search_plots_are_skipped_with_a_note_below_two_completed_trials(pruned_scan, capsys, tmp_path):
    from hhscan.results import report

    root, parameters = pruned_scan()
    scan = Workspace(root).scan("pruned")
    found, _ = scan.records()
    first = search.read_asked(scan.root)[:1]  # one slot: one completed trial at most
    notes: list[str] = []
    paths = report.search_plots(search.build_study(parameters, scan.name, first, found), tmp_path, notes)
    assert paths == [] and not list(tmp_path.iterdir())
    assert notes == ["no search plots: 1 completed trial(s), 2 searched parameter(s)"]


def test_optuna_storage_of_a_grid_scan_is_one_line_before_any_record_is_read(analysis, capsys, monkeypatch):
    analysis.edit_parameters(hyperparameters={"neurons": [4]})
    parameters = config.load_parameters(analysis.parameters)
    session.prepare(parameters, config.load_sample_list(config.samples_path(parameters)), analysis.root, "grid",
                    kind="local")  # fmt: skip
    path = analysis.root / "study.db"
    code, _, err = run_cli(["report", "grid", "--optuna-storage", str(path)], analysis.root, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (f"hhscan: error: --optuna-storage {path}: scan 'grid' is a grid scan; only an adaptive "
                           "scan has a study")  # fmt: skip
    assert not path.exists()


def test_slurm_workers_of_an_adaptive_scan_cover_the_budget_not_finished(analysis, capsys, monkeypatch):
    """Without Slurm: the worker groups a submission would send, and status, from slots and records alone."""
    from hhscan.execution import jobstate, slurm

    _adaptive(analysis, sampler="random", trials=5)
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(config.samples_path(parameters))
    prepared = session.prepare(parameters, sample_list, analysis.root, "workers", kind="slurm")
    groups, jobs = session.submit(prepared, 2, prepared.trials, dry_run=True)
    assert [len(g) for g in groups] == [2, 2, 1] and jobs == []
    assert all(slurm.is_worker_group(g) for g in groups) and not slurm.is_worker_group(["0a3d14a2161b"])
    # Two trials asked: one recorded DONE, one left by a killed worker (no record, no lease).
    _, fixed = search.search_space(parameters)
    done, orphan = (search.point_trial({"learning_rate": lr, "neurons": 8}, fixed) for lr in (0.01, 0.02))
    for point in (done, orphan):
        assert search.take_slot(prepared.scan.root, search.Asked(-1, point), 5) is not None
    records.write_record(prepared.scan.output_dir, records.TrialRecord(done.id, records.DONE, 0, done.hyperparameters,
                                                                       "val_auc", metrics={"val_auc": 0.7}))  # fmt: skip
    status = jobstate.scan_status(prepared.scan)
    assert (status.budget, status.unasked) == (5, 3)
    assert {t.trial.id: t.state for t in status.trials} == {done.id: "done", orphan.id: "missing"}
    groups, _ = session.submit(prepared, 2, prepared.trials, dry_run=True)
    assert [len(g) for g in groups] == [2, 2]  # the orphan and the 3 not asked
    code, out, err = run_cli(["status", "workers"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert "(5 trials, 2 asked)  done: 1  pruned: 0  failed: 0" in out and "missing: 1  not yet asked: 3" in out


def _tell_by_hand(parameters, scan_root: Path, n: int) -> list[str]:
    """n asks, each from a study rebuilt from the slots and records, each told at once as a DONE record whose
    value is a smooth function of the point (no training): the sampler's view across rebuilds."""
    output = scan_root / "output"
    for _ in range(n):
        found = records.read_records(output)[0]
        point, asked = search.build_study(parameters, "s", search.read_asked(scan_root), found).ask()
        assert point.id not in found
        assert search.take_slot(scan_root, asked, n) is not None
        value = 0.9 - (np.log10(point.hyperparameters["learning_rate"]) + 2) ** 2 / 10
        records.write_record(output, records.TrialRecord(point.id, records.DONE, 0, point.hyperparameters, "val_auc",
                                                         metrics={"val_auc": value}))  # fmt: skip
    return _slots(scan_root)


def test_qmc_rebuilt_from_files_asks_the_sequence_of_one_persistent_study(analysis, tmp_path):
    import optuna

    _adaptive(analysis, sampler="qmc", trials=8, seed=5)
    parameters = config.load_parameters(analysis.parameters)
    _tell_by_hand(parameters, tmp_path, 8)
    asked = [a.trial.hyperparameters for a in search.read_asked(tmp_path)]
    space, _ = search.search_space(parameters)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        sampler = optuna.samplers.QMCSampler(seed=5, warn_independent_sampling=False)
    persistent = optuna.create_study(sampler=sampler, direction="maximize", storage=optuna.storages.InMemoryStorage())
    for hp in asked:
        t = persistent.ask(space)
        assert t.params == {k: hp[k] for k in space}
        persistent.tell(t, 0.5)


def test_cmaes_keeps_its_generations_across_rebuilds(analysis, tmp_path):
    _adaptive(analysis, sampler="cmaes", trials=14, seed=5)
    parameters = config.load_parameters(analysis.parameters)
    slots = _tell_by_hand(parameters, tmp_path, 14)
    assert len(set(slots)) == 14
    generations = [a.system_attrs.get("cma:generation") for a in search.read_asked(tmp_path)]
    # The first ask is independent (nothing finished to learn the space from); then a population of 6 (two
    # dimensions) per generation: the optimizer, kept in the slots' attributes, moves on across rebuilds.
    assert generations == [None, *[0] * 6, *[1] * 6, 2], generations


def test_asha_rungs_are_kept_in_the_records_for_the_next_rebuild(analysis, capsys, monkeypatch):
    analysis.edit_parameters(
        hyperparameters={"learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "epochs": [4]},
        search={"sampler": "random", "trials": 4, "pruner": "asha", "seed": 2,
                "pruner_settings": {"min_resource": 1, "reduction_factor": 2}},
        training={"pack_size": 2, "early_stopping": {"enabled": False}},
    )  # fmt: skip
    code, _, err = run_cli(["run", "--local", "--name", "asha"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    found = records.read_records(analysis.root / "slurm" / "asha" / "output")[0]
    assert len(found) == 4
    for record in found.values():
        rungs = record.search_state["system_attrs"]
        auc = record.history["val_auc"]
        # Rung r is reached at step min_resource × factor^r (steps are epochs from 0): epochs 2 and 3.
        assert rungs["completed_rung_0"] == auc[1]
        if "completed_rung_1" in rungs:
            assert rungs["completed_rung_1"] == auc[2]
    parameters = config.load_parameters(analysis.parameters)
    scan_root = analysis.root / "slurm" / "asha"
    rebuilt = search.build_study(parameters, "asha", search.read_asked(scan_root), found)
    assert [t.system_attrs for t in rebuilt.study.trials] == [found[i].search_state["system_attrs"]
                                                              for i in _slots(scan_root)]  # fmt: skip


def test_shipped_example_runs_an_adaptive_search_end_to_end(example, capsys, monkeypatch):
    """The shipped HIGGS example with a TPE search over ranges and a median pruner: run, status, report."""
    example.edit_parameters(
        hyperparameters={"learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
                         "neurons": {"low": 16, "high": 64, "step": 16}, "layers": [1, 2], "epochs": [2]},
        search={"sampler": "tpe", "trials": 3, "pruner": "median"},
        training={"pack_size": 2},
    )  # fmt: skip
    code, out, err = run_cli(["run", "--local", "--name", "tpe"], example.root, capsys, monkeypatch)
    assert code == 0, err
    assert "tpe search, pruner median, 3 trials: 0 finished, up to 3 to run" in out
    scan = Workspace(example.root).scan("tpe")
    found, corrupt = scan.records()
    assert len(found) == 3 and not corrupt and all(r.finished for r in found.values())
    for record in found.values():
        hp = record.hyperparameters
        assert 1.0e-3 <= hp["learning_rate"] <= 1.0e-2 and hp["neurons"] in (16, 32, 48, 64) and hp["layers"] in (1, 2)
        assert record.trial_id == trial.trial_id(hp, 0)
    code, out, err = run_cli(["status", "tpe"], example.root, capsys, monkeypatch)
    assert code == 0 and "(3 trials, 3 asked)" in out and "not yet asked: 0" in out, err
    code, out, err = run_cli(["report", "tpe", "--no-plots"], example.root, capsys, monkeypatch)
    assert code == 0, err
    best = max((r for r in found.values() if r.done), key=lambda r: r.metrics["val_auc"])
    assert json.loads((example.root / "models" / "best.json").read_text())["trial_id"] == best.trial_id


def test_two_workers_at_once_share_the_budget_exactly_once(analysis):
    """Two processes run one adaptive scan at the same time: the budget's trials, each trained by one of them."""
    import os
    import re
    import subprocess
    import sys

    _adaptive(analysis, sampler="tpe", trials=6, pack_size=1)
    # The scan and its split made once before the race (their own concurrency is tested elsewhere).
    parameters = config.load_parameters(analysis.parameters)
    session.prepare(parameters, config.load_sample_list(config.samples_path(parameters)), analysis.root, "two",
                    kind="local")  # fmt: skip
    command = [sys.executable, "-m", "hhscan.cli", "run", "--local", "--name", "two"]
    workers = [subprocess.Popen(command, cwd=analysis.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "KERAS_BACKEND": "jax"}) for _ in range(2)]  # fmt: skip
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-2000:] for _, err in outputs]
    trained = [re.findall(r"^([0-9a-f]{12}) (?:val_auc=|PRUNED)", out, re.MULTILINE) for out, _ in outputs]
    scan_root = analysis.root / "slurm" / "two"
    found = records.read_records(scan_root / "output")[0]
    slots = _slots(scan_root)
    assert len(found) == len(slots) == len(set(slots)) == 6 and set(found) == set(slots)
    assert sorted(trained[0] + trained[1]) == sorted(found)  # each trial trained by exactly one worker
    assert not set(trained[0]) & set(trained[1])
    assert len({r.attempt for r in found.values()}) == sum(1 for ids in trained if ids)  # one attempt per worker


def test_a_point_another_worker_holds_is_asked_again_not_given_a_slot(analysis, tmp_path):
    """The race two workers' samplers can run into: both ask the same point before either took its slot. The one
    that does not hold the point's lease never takes a slot for it; its sampler is asked again."""
    import os

    from hhscan.execution import leases
    from hhscan.execution.scandir import ScanDirectory

    _adaptive(analysis, sampler="random", trials=3, seed=4)
    parameters = config.load_parameters(analysis.parameters)
    first = search.build_study(parameters, "race", [], {}).ask()[0]
    # Another live process (this one's parent): a lease of this very pid would be this process's own, restarted.
    other = leases.LeaseKeeper(leases.Leases(tmp_path), leases.Attempt(job_id="other", pid=os.getppid()))
    assert not other.claim([first.id])  # the other worker holds it, its slot not taken yet
    mine = leases.LeaseKeeper(leases.Leases(tmp_path), leases.Attempt())
    pack, _ = runner._next_pack(ScanDirectory(tmp_path), parameters, mine, 3, 1)
    assert len(pack) == 1 and pack[0].id != first.id
    assert _slots(tmp_path) == [pack[0].id] and list(mine.held) == [pack[0].id]


def test_a_point_proposed_again_while_a_pack_fills_keeps_its_trial_mapped_and_numbered_by_its_slot(analysis,
                                                                                                   tmp_path):  # fmt: skip
    """A small categorical space: the sampler proposes the packed points again and again while the pack fills.
    Each packed trial stays the study's trial of its slot (the pruner hears it, its record gets its attributes),
    numbered by its slot as every later rebuild numbers it: Hyperband judges it in the bracket it trained in."""
    from hhscan.execution import leases
    from hhscan.execution.scandir import ScanDirectory

    analysis.edit_parameters(hyperparameters={"layers": [1, 2], "learning_rate": [0.01]}, training={"pack_size": 6},
                             search={"sampler": "random", "trials": 6, "pruner": "hyperband", "seed": 1})  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    keeper = leases.LeaseKeeper(leases.Leases(tmp_path), leases.Attempt())
    # Seed 1: the first point is proposed twice more before the second one (asked as trial number 3, slot 1).
    pack, study = runner._next_pack(ScanDirectory(tmp_path), parameters, keeper, 6, 6)
    assert sorted(t.hyperparameters["layers"] for t in pack) == [1, 2]
    assert _slots(tmp_path) == [t.id for t in pack]
    rebuilt = search.build_study(parameters, ScanDirectory(tmp_path).name, search.read_asked(tmp_path), {})
    for slot, packed in enumerate(pack):
        frozen = study.storage.get_trial(study.ids[packed.id])
        assert frozen.number == slot == rebuilt.storage.get_trial(rebuilt.ids[packed.id]).number
        assert frozen.params["layers"] == packed.hyperparameters["layers"] and frozen.state.name == "RUNNING"
        assert study.trial_state(packed.id) == {"system_attrs": dict(frozen.system_attrs)}
        study.should_prune(packed.id, 1, {"val_auc": [0.5 + slot / 10]})
        assert study.storage.get_trial(study.ids[packed.id]).intermediate_values == {0: 0.5 + slot / 10}
