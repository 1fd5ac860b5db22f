"""One place for each concept: golden trial ids and scan hashes, and the registries they come from.

Adding a hyperparameter (README "Adding a hyperparameter"): one ``Hyperparameter(...)`` entry at the end of
``REGISTRY`` in scan/settings/hyperparameters.py with ``hashed_at_default=False`` and a default that means "what
hhscan did before it existed", plus the model code that reads it. The golden values below were computed with the
hhscan of before ``weight_decay`` existed and must never change: a scan that does not set a new hyperparameter
keeps its trial ids and its scan hash, so upgrading hhscan never orphans an existing scan's results.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from conftest import REPO
from hhscan.execution import search
from hhscan.learning import model, records, trial
from hhscan.settings import config, hyperparameters
from hhscan.settings.hyperparameters import REGISTRY

# `hhscan run --local` of the shipped example (parameters/scan.yaml): its eight trials, before any new entry.
GOLDEN_IDS = [
    "9a98afa0cceb", "68a86a6f8a88", "7d966486f425", "141a54b2b69b",
    "cac29eb0aaac", "4bdc1f77da65", "67c388220dec", "739b8ad99b80",
]  # fmt: skip
GOLDEN_GRID_HASH = "b44d7c8e613c419b"
# An adaptive variant of the example (ranges, a sampler and a pruner) and one point it may ask.
ADAPTIVE = {
    "hyperparameters": {
        "layers": [2, 3],
        "neurons": {"low": 16, "high": 64, "step": 16},
        "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "epochs": [5],
    },
    "search": {"sampler": "tpe", "trials": 6, "pruner": "median", "pruner_settings": {"n_warmup_steps": 2}},
}
GOLDEN_ADAPTIVE_HASH = "434fd5a93981f40d"
GOLDEN_ADAPTIVE_POINT = ({"layers": 3, "neurons": 48, "learning_rate": 0.0005}, "28e916b63bef")


def _example(**changes) -> config.Parameters:
    content = yaml.safe_load((REPO / "parameters" / "scan.yaml").read_text())
    content.update(changes)
    return config.Parameters.model_validate(content)


def test_the_shipped_examples_trial_ids_and_hash_never_change():
    parameters = config.load_parameters(REPO / "parameters" / "scan.yaml")
    assert [t.id for t in trial.expand(parameters)] == GOLDEN_IDS
    assert parameters.dictionary_hash() == GOLDEN_GRID_HASH


# The shipped sample list's data fingerprint (what a scan's data check and the dataset cache key hash), computed
# with the code of 35dd25d, before blocks and the significance guard existed: keys added to the sample list since
# are left out at their defaults, so an existing scan is not refused as "data changed" after an upgrade.
# Files are named by their absolute path: the clone's own folder is written <repo>, so the test passes anywhere.
GOLDEN_SAMPLE_LIST_FINGERPRINT = "ed8354b18700444a"


# The same list with every group in an era "2016" declared without lumi (its samples have no cross-section).
GOLDEN_ERA_WITHOUT_LUMI_FINGERPRINT = "3f921e4dc017dce6"


def _fingerprint(sample_list: config.SampleList) -> str:
    text = json.dumps(sample_list.fingerprint_data(), sort_keys=True).replace(str(REPO), "<repo>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_shipped_sample_lists_fingerprint_never_changes(tmp_path):
    assert _fingerprint(config.load_sample_list(REPO / "sample_lists" / "higgs.yaml")) == GOLDEN_SAMPLE_LIST_FINGERPRINT
    content = yaml.safe_load((REPO / "sample_lists" / "higgs.yaml").read_text())
    content.update(base_dir=str(REPO / "data"), eras={"2016": {}})
    for group in content["groups"]:
        group["era"] = "2016"
    (tmp_path / "era.yaml").write_text(yaml.safe_dump(content))
    assert _fingerprint(config.load_sample_list(tmp_path / "era.yaml")) == GOLDEN_ERA_WITHOUT_LUMI_FINGERPRINT


def test_an_adaptive_scans_hash_and_point_ids_never_change():
    parameters = _example(**ADAPTIVE)
    assert parameters.dictionary_hash() == GOLDEN_ADAPTIVE_HASH
    _, fixed = search.search_space(parameters)
    point, golden = GOLDEN_ADAPTIVE_POINT
    assert search.point_trial(point, fixed).id == golden


def test_a_new_hyperparameter_at_its_default_is_recorded_but_not_hashed():
    parameters = _example()
    first = trial.expand(parameters)[0]
    assert first.hyperparameters["weight_decay"] == 0.0  # recorded: every trial says what it trained with
    written = {**ADAPTIVE["hyperparameters"], "weight_decay": [0]}  # 0 written by hand, as an int
    assert _example(hyperparameters=written, search=ADAPTIVE["search"]).dictionary_hash() == GOLDEN_ADAPTIVE_HASH
    grid = yaml.safe_load((REPO / "parameters" / "scan.yaml").read_text())["hyperparameters"]
    explicit = _example(hyperparameters={**grid, "weight_decay": [0.0]})
    assert [t.id for t in trial.expand(explicit)] == GOLDEN_IDS
    assert explicit.dictionary_hash() == GOLDEN_GRID_HASH


def test_a_new_hyperparameter_away_from_its_default_is_hashed():
    grid = yaml.safe_load((REPO / "parameters" / "scan.yaml").read_text())["hyperparameters"]
    decayed = _example(hyperparameters={**grid, "weight_decay": [0.0, 0.004]})
    ids = [t.id for t in trial.expand(decayed)]
    assert len(ids) == 16 and len(set(ids)) == 16
    assert set(GOLDEN_IDS) < set(ids)  # the weight_decay 0 half are today's trials
    assert decayed.dictionary_hash() != GOLDEN_GRID_HASH
    point = trial.canonical({"weight_decay": 0.004})
    assert point["weight_decay"] == 0.004
    assert trial.trial_id(point, 0) != trial.trial_id(trial.canonical({}), 0)


def test_the_original_entries_are_hashed_at_their_default_and_later_ones_are_not():
    original = ["layers", "neurons", "activation", "dropout", "l2", "optimizer", "learning_rate", "batch_size",
                "epochs"]  # fmt: skip
    assert [name for name, entry in REGISTRY.items() if entry.hashed_at_default] == original
    assert [name for name, entry in REGISTRY.items() if entry.network] == original[:5]
    # An id is the sha256 of the canonical JSON of the original nine (the later entries, at their default, left
    # out) and the repetition: computed here by hand, from the point written out, not by trial.py.
    point = trial.expand(_example())[2].hyperparameters
    nine = {"activation": "relu", "batch_size": 256, "dropout": 0.0, "epochs": 5, "l2": 0.0, "layers": 2,
            "learning_rate": 0.001, "neurons": 64, "optimizer": "adam"}  # fmt: skip
    assert point == {**nine, "weight_decay": 0.0}
    by_hand = hashlib.sha256(json.dumps({"hp": nine, "rep": 0}, sort_keys=True).encode()).hexdigest()[:12]
    assert by_hand == "7d966486f425" == GOLDEN_IDS[2]
    assert trial.trial_id(point, 0) == by_hand


def test_an_old_record_without_a_new_key_reads_as_its_default(tmp_path):
    old_point = {k: v for k, v in trial.expand(_example())[0].hyperparameters.items() if k != "weight_decay"}
    record = records.TrialRecord(GOLDEN_IDS[0], records.DONE, 0, old_point, "val_auc")
    path = records.write_record(tmp_path, record)
    read = records.read_record(path)
    assert read.hyperparameters == {**old_point, "weight_decay": 0.0}
    own_point = {"width": 3, "optimizer": "adam", "learning_rate": 0.01, "batch_size": 64, "epochs": 3}
    own_model = records.TrialRecord("0" * 12, records.DONE, 0, own_point, "val_auc")
    # An own model's record gains the training entries only, never the built-in network's.
    read = records.read_record(records.write_record(tmp_path, own_model))
    assert read.hyperparameters == {**own_point, "weight_decay": 0.0}
    partial = records.TrialRecord("1" * 12, records.DONE, 0, {"a": [1]}, "val_auc")  # no point of hhscan's
    assert records.read_record(records.write_record(tmp_path, partial)).hyperparameters == {"a": [1]}


# Computed with the code of 35dd25d, before weight_decay existed: the example with layers 2, lr 1e-3 and optimizer
# [adam, adamw]. An AdamW trial then trained with Keras' own weight decay 0.004.
GOLDEN_ADAMW = (["9a98afa0cceb", "b38c9bbe99e6", "7d966486f425", "23020bc66e61"], "9b67fa70b9d68283")


def test_adamw_keeps_the_weight_decay_it_trained_with_before_the_entry_existed(tmp_path):
    grid = {**_example().hyperparameters, "optimizer": ["adam", "adamw"], "learning_rate": [0.001], "layers": [2]}
    parameters = _example(hyperparameters=grid)
    trials = trial.expand(parameters)
    assert ([t.id for t in trials], parameters.dictionary_hash()) == GOLDEN_ADAMW
    decay = {t.hyperparameters["optimizer"]: t.hyperparameters["weight_decay"] for t in trials}
    assert decay == {"adam": 0.0, "adamw": 0.004}  # recorded: what each trains with
    for point in (t.hyperparameters for t in trials):  # and what the optimizer is built with
        net = model.build_model(point, 3, 2, np.zeros(3), np.ones(3))
        model.compile_model(net, point, 2)
        expected = None if point["optimizer"] == "adam" else 0.004
        assert net.optimizer.get_config()["weight_decay"] == expected
    # Written out, the optimizer's default is the same trial; anything else is another, hashed.
    explicit = _example(hyperparameters={**grid, "weight_decay": [0.004], "optimizer": ["adamw"]})
    assert [t.id for t in trial.expand(explicit)] == [GOLDEN_ADAMW[0][1], GOLDEN_ADAMW[0][3]]
    none = _example(hyperparameters={**grid, "weight_decay": [0.0], "optimizer": ["adamw"]})
    assert not {t.id for t in trial.expand(none)} & set(GOLDEN_ADAMW[0])
    assert none.dictionary_hash() != explicit.dictionary_hash()
    # An AdamW record written before the entry existed reads as what it trained with.
    old_point = {k: v for k, v in trials[1].hyperparameters.items() if k != "weight_decay"}
    record = records.TrialRecord(trials[1].id, records.DONE, 0, old_point, "val_auc")
    assert records.read_record(records.write_record(tmp_path, record)).hyperparameters["weight_decay"] == 0.004


def test_weight_decay_is_checked_like_every_number(analysis):
    from hhscan.errors import ConfigError

    analysis.edit_parameters(hyperparameters={"weight_decay": [-0.1]})
    try:
        config.load_parameters(analysis.parameters)
    except ConfigError as error:
        assert str(error).endswith("hyperparameters.weight_decay: -0.1 is not in [0, ∞)")
    else:
        raise AssertionError("a negative weight_decay was accepted")
    assert hyperparameters.REGISTRY["weight_decay"].default == 0.0


def test_the_optimizer_is_built_with_exactly_the_trials_weight_decay():
    import keras
    from hhscan.learning import model

    adamw = model.make_optimizer("adamw", 0.01)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.get_config()["weight_decay"] == 0.004  # AdamW's default: what it trained with before the entry
    assert model.make_optimizer("adamw", 0.01, 0.0).get_config()["weight_decay"] == 0.0
    assert model.make_optimizer("AdamW", 0.01, 0.02).get_config()["weight_decay"] == 0.02
    assert model.make_optimizer("sgd", 0.01, 0.05).get_config()["weight_decay"] == 0.05
    assert model.make_optimizer("adam", 0.01, 0.0).get_config()["weight_decay"] is None  # no decay step at all
    # The engine reads it from the trial's hyperparameters (model.compile_model, used by training._build_pack).
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile_model(net, {"optimizer": "adamw", "learning_rate": 0.1, "weight_decay": 0.3}, 2)
    assert net.optimizer.get_config()["weight_decay"] == 0.3


def test_the_per_branch_entries_are_what_the_engine_holds_per_branch():
    """Trials differing in a ``per_branch`` entry only share one structure (one compiled group, one size in
    ``training.fits_whole``); an entry that is not per branch gives another structure. Dropout rates above 0 share
    one; a rate of 0 draws no mask at all (``branch_values``)."""
    from hhscan.learning import fused

    def key(**changed):
        hp = trial.canonical({"layers": 2, "neurons": 8, "optimizer": "adam", **changed})
        net = model.build_model(hp, 3, 2, np.zeros(3), np.ones(3))
        model.compile_model(net, hp, 2)
        return fused.structure_key(net, net.optimizer)

    per_branch = {name for name, entry in REGISTRY.items() if entry.per_branch}
    assert per_branch == {"learning_rate", "dropout", "l2"}
    base = key(learning_rate=1e-3, dropout=0.1, l2=0.0)
    assert key(learning_rate=3e-3, dropout=0.3, l2=1e-4) == base
    assert key(learning_rate=3e-3, dropout=0.0, l2=1e-4) == key(learning_rate=1e-3, dropout=0.0, l2=0.0) != base
    assert key(learning_rate=1e-3, dropout=0.1, l2=0.0, neurons=16) != base
    assert key(learning_rate=1e-3, dropout=0.1, l2=0.0, activation="tanh") != base


# ------------------------------------------------------------------------------------------ no private APIs

PRIVATE_NAMES = ("._storage", "._study_id", "._trial_id", "_valid_parameters", "keras.src", "module_utils", "._save(")


def test_scan_uses_no_private_api_of_optuna_submitit_keras_or_its_own_modules():
    import re

    sources = {path: path.read_text() for path in (REPO / "scan").rglob("*.py")}
    # Whole names only: ``self._trial_ids()`` of hhscan's own class is not optuna's ``._trial_id``.
    found = [f"{path.relative_to(REPO)}: {name}" for path, text in sources.items() for name in PRIVATE_NAMES
             if re.search(re.escape(name) + (r"\b" if name[-1].isalnum() else ""), text)]  # fmt: skip
    assert found == []
    # Nor any other underscore attribute of another object or module (self._x and cls._x are a class's own).
    attribute = re.compile(r"\b(?!self\b|cls\b)[A-Za-z_]\w*\._[A-Za-z]\w*")
    crossing = [f"{path.relative_to(REPO)}: {match.group()}" for path, text in sources.items()
                for match in attribute.finditer(text)]  # fmt: skip
    assert crossing == []


def test_keras_on_jax_never_imports_tensorflow_yet_leaves_it_importable(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from hhscan.learning import model, training\n"
        "training.seed_everything(5)\n"
        "net = model.build_model(model_hp, 3, 2, np.zeros(3), np.ones(3))\n"
        "model.compile_model(net, model_hp, 2)\n"
        "first = [w.copy() for w in net.get_weights()]\n"
        "net.save(sys.argv[1])\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "training.seed_everything(5)\n"
        "again = model.build_model(model_hp, 3, 2, np.zeros(3), np.ones(3)).get_weights()\n"
        "assert all(np.array_equal(a, b) for a, b in zip(first, again)), 'seeding is not reproducible'\n"
        "import tensorflow\n"  # still importable for whatever needs it (an ONNX export) after Keras was told no
        "print('ok')\n"
    ).replace("model_hp", repr(trial.canonical({"layers": 1, "neurons": 4})))
    env = {**__import__("os").environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras")], capture_output=True, text=True,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_keras_imports_without_its_unused_extras_which_stay_importable(tmp_path):
    """A scan process's Keras import skips scikit-learn, matplotlib and pandas (1.8 s of start-up); Keras still
    builds, trains, saves and loads a model, and each extra imports as usual afterwards (hhscan's plots need it)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from hhscan.learning import model, training\n"
        "model.choose_backend('jax')\n"
        "keras = model.import_keras()\n"
        "extras = ('sklearn', 'matplotlib', 'pandas')\n"
        "assert not [m for m in extras if m in sys.modules], [m for m in extras if m in sys.modules]\n"
        "net = model.build_model(model_hp, 3, 2, np.zeros(3), np.ones(3))\n"
        "model.compile_model(net, model_hp, 2)\n"
        "x = np.random.default_rng(1).normal(size=(64, 3)).astype('float32')\n"
        "net.fit(x, (x[:, 0] > 0).astype('float32'), epochs=1, verbose=0)\n"
        "net.save(sys.argv[1])\n"
        "again = keras.saving.load_model(sys.argv[1])\n"
        "assert np.allclose(net.predict(x, verbose=0), again.predict(x, verbose=0))\n"
        "assert not [m for m in extras if m in sys.modules], [m for m in extras if m in sys.modules]\n"
        "import sklearn.metrics, matplotlib.pyplot, pandas\n"
        "print('ok')\n"
    ).replace("model_hp", repr(trial.canonical({"layers": 1, "neurons": 4})))
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras")], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.slurm  # submitit's SlurmExecutor looks for srun: the project's cluster
def test_the_slurm_parameters_kept_by_hhscan_are_submitits_own(tmp_path):
    import re

    import submitit
    from hhscan.execution import slurm

    executor = submitit.SlurmExecutor(folder=tmp_path)
    try:  # submitit's public answer to an unknown name lists every valid one
        executor.update_parameters(not_a_parameter=1)
    except ValueError as error:
        listed = re.findall(r"^\s+- (\w+) \(default", str(error), flags=re.MULTILINE)
    else:
        raise AssertionError("submitit accepted an unknown parameter")
    assert sorted(slurm.SLURM_PARAMETERS) == sorted(listed)
    assert slurm.resource_parameters(config.SlurmSettings(resources={"partition": "gpu", "slurm_qos": "high"})) == {
        "slurm_partition": "gpu", "slurm_qos": "high", "slurm_array_parallelism": 64}  # fmt: skip


# ------------------------------------------------------------------------------------------ metrics


def test_weighted_average_precision_is_sklearns():
    import numpy as np
    from hhscan.data import metrics
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) * 0.5 + 0.4 * labels, 2)  # ties, which move together
    weights = rng.uniform(0.1, 3.0, 500)
    expected = average_precision_score(labels, scores, sample_weight=weights)
    assert metrics.weighted_average_precision(labels, scores, weights) == pytest.approx(expected, rel=1e-12)
    assert metrics.multiclass_average_precision(labels, scores, weights) == pytest.approx(expected, rel=1e-12)
    classes = rng.integers(0, 3, 500)
    probabilities = rng.dirichlet([1, 1, 1], 500)
    probabilities[np.arange(500), classes] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    macro = average_precision_score(np.eye(3)[classes], probabilities, sample_weight=weights, average="macro")
    assert metrics.multiclass_average_precision(classes, probabilities, weights) == pytest.approx(macro, rel=1e-12)


def test_every_registry_metric_is_recorded_for_both_splits_from_the_registry_alone(analysis):
    import numpy as np
    from hhscan.data.split import TRAIN, VALIDATION
    from hhscan.execution import runner
    from hhscan.execution.scandir import Workspace
    from hhscan.learning import model, training
    from hhscan.settings import criteria
    from sklearn.metrics import average_precision_score, roc_auc_score

    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01]}, eval_criterion="val_pr_auc")
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    data = runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))
    (result,) = training.train_pack(trial.expand(parameters), data, parameters)
    computed = [m for m in criteria.METRICS.values() if m.compute is not None]
    assert sorted(result.metrics) == sorted([m.name for m in computed] + [m.train_twin for m in computed])
    assert sorted(result.history) == sorted([*criteria.MONITORS, "learning_rate"])  # per-epoch ones only
    assert "val_pr_auc" not in result.history and "val_auc" in result.history
    for partition, key in ((VALIDATION, "val"), (TRAIN, "train")):
        x, y, weights = data.part(partition)
        scores = model.predict(result.model, x)
        assert result.metrics[f"{key}_pr_auc"] == pytest.approx(
            average_precision_score(y, scores, sample_weight=weights), rel=1e-6)  # fmt: skip
        assert result.metrics[f"{key}_auc"] == pytest.approx(roc_auc_score(y, scores, sample_weight=weights), rel=1e-6)
    assert np.isfinite(result.metrics["val_significance"])


def test_a_metric_not_logged_every_epoch_ranks_but_cannot_be_monitored(analysis):
    from hhscan.errors import ConfigError
    from hhscan.results import views

    analysis.edit_parameters(eval_criterion="val_pr_auc")
    assert config.load_parameters(analysis.parameters).eval_criterion == "val_pr_auc"
    analysis.edit_parameters(training={"early_stopping": {"monitor": "val_pr_auc"}})
    try:
        config.load_parameters(analysis.parameters)
    except ConfigError as error:
        assert "unknown monitor 'val_pr_auc' (computed once at the end, not every epoch)" in str(error)
    else:
        raise AssertionError("val_pr_auc was accepted as a monitor")
    record = records.TrialRecord("a" * 12, records.DONE, 0, {}, "val_pr_auc",
                                 metrics={"val_pr_auc": 0.7, "train_pr_auc": 0.75})  # fmt: skip
    table = views.leaderboard_table("s", "val_pr_auc", {record.trial_id: record})
    assert [column.header for column in table.columns][-3:] == ["val_pr_auc", "train_pr_auc", "epochs run"]


def test_the_leaderboard_names_the_guard_of_any_metric_the_registry_says_needs_yields(monkeypatch):
    """Whether a criterion is a significance (its best cut obeys the sample list's guard) is the registry's
    ``yields``, not a name ending: a new metric needing yields is announced with its guard like val_significance."""
    import io

    from hhscan.results import views
    from hhscan.settings import criteria
    from rich.console import Console

    monkeypatch.setitem(criteria.METRICS, "val_discovery_z", criteria.Metric(
        "val_discovery_z", "max", False, "a significance by another name", compute="best_significance",
        train_twin="train_discovery_z", yields=True))  # fmt: skip
    record = records.TrialRecord("a" * 12, records.DONE, 0, {}, "val_discovery_z",
                                 metrics={"val_discovery_z": 2.0, "train_discovery_z": 2.1})  # fmt: skip
    for criterion, guarded in (("val_discovery_z", True), ("val_pr_auc", False)):
        out = io.StringIO()
        views.print_leaderboard(Console(file=out, width=200), "s", criterion, {record.trial_id: record}, {},
                                significance=config.Significance())  # fmt: skip
        assert (f"{criterion}: Asimov Z at the best score cut with" in out.getvalue()) is guarded


# ------------------------------------------------------------------------------------------ samplers and pruners


@pytest.mark.parametrize(
    ("search_section", "key", "message"),
    [
        ({"pruner": "median", "pruner_settings": {"n_warmup_steps": True}}, "search.pruner_settings.n_warmup_steps",
         "Input should be a valid integer (True given)"),
        ({"pruner": "patient", "pruner_settings": {"patience": 2.5}}, "search.pruner_settings.patience",
         "Input should be a valid integer (2.5 given)"),
        ({"pruner": "patient"}, "search.pruner_settings.patience", "required key is missing"),
        ({"pruner": "patient", "pruner_settings": {"patience": 1, "min_delta": -1}}, "search.pruner_settings",
         "min_delta"),
        ({"pruner": "patient", "pruner_settings": {"patience": 1, "warmup": 1}}, "search.pruner_settings.warmup",
         "not a setting of pruner patient (settings: min_delta, patience)"),
        ({"pruner": "medain"}, "search.pruner", "unknown pruner 'medain' (closest: median"),
        ({"sampler": "tpee"}, "search.sampler", "unknown sampler 'tpee' (closest: tpe"),
    ],
)  # fmt: skip
def test_pruner_settings_are_typed_and_checked_before_any_data_is_read(analysis, search_section, key, message):
    from hhscan.errors import ConfigError

    analysis.edit_parameters(search={"sampler": "random", "trials": 3, **search_section})
    with pytest.raises(ConfigError) as caught:
        config.load_parameters(analysis.parameters)
    text = str(caught.value)
    assert text.startswith(f"{analysis.parameters}:{key}: ") and message in text, text
    assert "\n" not in text


def test_the_patient_pruner_is_one_row_and_prunes_as_optunas_rule_says(tmp_path):
    import optuna
    from conftest import build_analysis
    from hhscan.execution import runner, session
    from hhscan.execution.scandir import Workspace

    analysis = build_analysis(tmp_path / "project")
    analysis.edit_parameters(
        hyperparameters={"learning_rate": {"low": 3.0, "high": 10.0, "log": True}, "epochs": [5]},  # unsteady
        search={"sampler": "random", "trials": 4, "pruner": "patient", "seed": 1,
                "pruner_settings": {"patience": 0, "min_delta": 0.001}},
        eval_criterion="val_loss", training={"pack_size": 4, "early_stopping": {"enabled": False}},
    )  # fmt: skip
    parameters = config.load_parameters(analysis.parameters)
    built = search._pruner(parameters)
    assert isinstance(built, optuna.pruners.PatientPruner)
    sample_list = config.load_sample_list(config.samples_path(parameters))
    prepared = session.prepare(parameters, sample_list, analysis.root, "patient", kind="local")
    runner.run_adaptive(prepared.scan, dataset=prepared.dataset)
    found, _ = Workspace(analysis.root).scan("patient").records()
    assert len(found) == 4
    pruned = 0
    for record in found.values():
        loss = record.history["val_loss"]
        expected = None  # by hand: pruned after epoch e when its loss is worse than the best before by min_delta
        for epoch in range(2, 5):  # patience 0: one epoch after at least one before; never after the last
            if min(loss[: epoch - 1]) + 0.001 < loss[epoch - 1]:
                expected = epoch
                break
        assert record.pruned_epoch == expected, (record.trial_id, loss)
        pruned += expected is not None
    assert pruned >= 1


# ------------------------------------------------------------------------------------------ README against them


def _readme_table(header: str) -> list[str]:
    """The rows of README's markdown table whose header line starts with ``header``."""
    lines = (REPO / "README.md").read_text().splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(header)]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_readme_hyperparameter_table_is_the_registry():
    kinds = {int: "integer", float: "number", str: "string", bool: "true or false"}
    expected = []
    for name, entry in REGISTRY.items():
        if name == "activation":  # 30 names: README names the rule, checked below
            valid = "one of Keras' activations a hidden layer takes"
        else:
            valid = entry.domain + (" (any case)" if entry.case_insensitive else "")
        default = _number(entry.default)
        if entry.default_by is not None:  # a default that depends on another entry: each exception named
            other, table = entry.default_by
            default += "".join(f" ({other} {value}: {_number(special)})" for value, special in table)
        expected.append(f"| `{name}` | {kinds[entry.kind]} | {default} | {valid} |")
    assert _readme_table("| hyperparameter |") == expected
    left_out = " and ".join(f"`{name}`" for name in hyperparameters.KERAS_ACTIVATIONS_LEFT_OUT)
    assert f"are all of `keras.activations`\nbut {left_out}" in (REPO / "README.md").read_text()


def test_readme_metric_table_is_the_registry():
    from hhscan.settings import criteria

    rows = _readme_table("| metric |")
    assert len(rows) == len(criteria.METRICS)
    for row, entry in zip(rows, criteria.METRICS.values(), strict=True):
        better = "lower" if entry.direction == "min" else "higher"
        twin = f"`{entry.train_twin}`" if entry.train_twin else "–"
        epoch = "yes" if entry.per_epoch else "no"
        assert row.startswith(f"| `{entry.name}` | {better} | {epoch} | {twin} | "), row


def test_readme_sampler_and_pruner_tables_are_the_tables():
    from hhscan.settings import searchers

    samplers = [f"| `{entry.name}` | {entry.description} |" for entry in searchers.SAMPLERS.values()]
    assert _readme_table("| sampler |") == samplers
    pruners = []
    for entry in searchers.PRUNERS.values():
        fields = entry.settings.model_fields
        names = [f"`{n}`" + (" (required)" if f.is_required() else "") for n, f in fields.items()]
        pruners.append(f"| `{entry.name}` | {', '.join(names) or '–'} | {entry.description} |")
    assert _readme_table("| pruner |") == pruners


def test_readme_parameters_example_shows_the_defaults_of_training_and_slurm():
    import typing

    text = (REPO / "README.md").read_text()
    block = text.split("**Parameters**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    config.Parameters.model_validate(shown)  # every key and value of the example is valid

    def subset(written, default, where):
        for key, value in written.items():
            if isinstance(value, dict):
                subset(value, default[key], f"{where}.{key}")
            else:
                assert value == default[key], f"README {where}.{key}: {value!r}, default {default[key]!r}"

    subset(shown["training"], config.Training().model_dump(), "training")
    defaults = config.SlurmSettings()
    assert shown["slurm"]["array_parallelism"] == defaults.array_parallelism
    assert defaults.resources.items() <= shown["slurm"]["resources"].items()
    choices = typing.get_args(config.Parameters.model_fields["split_name"].annotation)
    assert f"one file per {', '.join(choices[:-1])} or {choices[-1]}" in block
    backends = typing.get_args(config.Training.model_fields["backend"].annotation)
    assert backends == ("auto", "jax", "tensorflow") and "auto = JAX if installed" in block


def test_readme_says_the_one_command_that_gives_a_contributor_pytest_and_ruff():
    import re

    pyproject = (REPO / "pyproject.toml").read_text()
    extra = re.search(r"^test = \[(.*)\]$", pyproject, flags=re.MULTILINE)
    assert extra is not None
    tools = {re.split(r"[<>=\[; ]", item.strip().strip('"'))[0] for item in extra.group(1).split(",")}
    assert {"pytest", "ruff"} <= tools
    commands = (REPO / "README.md").read_text().split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest tests/' in commands
    assert "scripts/run-tests.sh" in commands and '-e ".[test]"' in (REPO / "scripts" / "run-tests.sh").read_text()
