"""The hyperparameter registry: types, defaults, ranges, activations against Keras, trial ids and packing."""

from __future__ import annotations

import numpy as np
import pytest
from hhscan.errors import ConfigError
from hhscan.learning import packing, trial
from hhscan.settings import config, hyperparameters
from hhscan.settings.hyperparameters import REGISTRY

FULL = {"layers": 2, "neurons": 64, "activation": "relu", "dropout": 0.0, "l2": 0.0, "optimizer": "adam",
        "learning_rate": 0.001, "batch_size": 256, "epochs": 20, "weight_decay": 0.0}  # fmt: skip


def _load(analysis, **hp):
    analysis.edit_parameters(hyperparameters=hp)
    return config.load_parameters(analysis.parameters)


def test_registry_names_the_hyperparameters_the_model_reads():
    assert list(REGISTRY) == list(FULL)
    assert {name: entry.default for name, entry in REGISTRY.items()} == FULL
    # Training unpacks a pack's step structure as (batch size, epochs), whatever the point's key order.
    assert hyperparameters.step_structure({"epochs": 7, "neurons": 4, "batch_size": 32}) == (32, 7)
    assert hyperparameters.step_structure({"epochs": 3}) == (REGISTRY["batch_size"].default, 3)


def test_omitted_keys_take_their_default_and_the_same_trial_id(analysis):
    analysis.edit_parameters(hyperparameters=None)
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.001]})
    short = config.load_parameters(analysis.parameters)
    analysis.edit_parameters(hyperparameters={k: [v] for k, v in FULL.items()})
    full = config.load_parameters(analysis.parameters)
    # weight_decay's default depends on the optimizer: filled point by point, not in the dictionary.
    assert short.hyperparameters == {k: [v] for k, v in FULL.items() if k != "weight_decay"}
    assert full.hyperparameters == {k: [v] for k, v in FULL.items()}
    assert short.dictionary_hash() == full.dictionary_hash()
    assert [t.id for t in trial.expand(short)] == [t.id for t in trial.expand(full)]
    # An omitted key hashes as its default, also for a point built by hand (the golden id is in test_scan_local).
    assert trial.trial_id({"learning_rate": 0.001}, 0) == trial.trial_id(FULL, 0)


def test_values_keep_their_spelling_but_hash_canonically(analysis):
    parameters = _load(analysis, l2=[0], optimizer=["Adam"], learning_rate=["1e-3"])
    # As written (the dictionary hash of an existing scan must not move), except YAML's 1e-3, read as text.
    assert parameters.hyperparameters["l2"] == [0] and parameters.hyperparameters["optimizer"] == ["Adam"]
    assert parameters.hyperparameters["learning_rate"] == [0.001]
    (only,) = trial.expand(parameters)
    assert only.hyperparameters["l2"] == 0.0 and isinstance(only.hyperparameters["l2"], float)
    assert only.hyperparameters["optimizer"] == "adam" and only.hyperparameters["learning_rate"] == 0.001


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", 0, "0 is not in [1, ∞)"),
        ("epochs", -5, "-5 is not in [1, ∞)"),
        ("learning_rate", 0, "0 is not in (0, ∞)"),
        ("learning_rate", -0.01, "-0.01 is not in (0, ∞)"),
        ("learning_rate", ".nan", "nan is not in (0, ∞)"),
        ("l2", -0.1, "-0.1 is not in [0, ∞)"),
        ("batch_size", 0, "0 is not in [1, ∞)"),
        ("batch_size", -256, "-256 is not in [1, ∞)"),
        ("neurons", 0, "0 is not in [1, ∞)"),
        ("layers", -1, "-1 is not in [0, ∞)"),
        ("dropout", 1.5, "1.5 is not in [0, 1)"),
        ("dropout", 1.0, "1 is not in [0, 1)"),
        ("dropout", -0.1, "-0.1 is not in [0, 1)"),
        ("neurons", True, "True is not an integer"),
        ("neurons", 64.5, "64.5 is not an integer"),
        ("learning_rate", False, "False is not a number"),
        ("learning_rate", "fast", "'fast' is not a number"),
        ("activation", "relux", "unknown activation 'relux' (closest: relu"),
        ("activation", 3, "3 is not a string"),
        ("optimizer", "adamm", "unknown optimizer 'adamm' (closest: adam"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_key(analysis, key, value, message):
    analysis.edit_parameters(hyperparameters={key: [FULL[key], value]})
    if value == ".nan":
        analysis.parameters.write_text(analysis.parameters.read_text().replace("'.nan'", ".nan"))
    with pytest.raises(ConfigError) as caught:
        config.load_parameters(analysis.parameters)
    assert str(caught.value).startswith(f"{analysis.parameters}:hyperparameters.{key}: {message}")
    assert "\n" not in str(caught.value)


def test_boundary_values_are_accepted_and_built_as_given(analysis):
    import keras
    from hhscan.learning import model

    parameters = _load(analysis, layers=[0, 1], dropout=[0.0, 0.99], l2=[0.0], epochs=[1], batch_size=[1],
                       neurons=[1], learning_rate=[1e-12])  # fmt: skip
    trials = trial.expand(parameters)
    assert sorted((t.hyperparameters["layers"], t.hyperparameters["dropout"]) for t in trials) == [
        (0, 0.0), (0, 0.99), (1, 0.0), (1, 0.99)]  # fmt: skip
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = model.targets(np.array([0, 1, 0, 1]), 2)
    for item in trials:
        hp = item.hyperparameters
        net = model.build_model(hp, 3, 2, x.mean(axis=0), x.var(axis=0))
        hidden = [layer for layer in net.layers if layer.name.startswith("dense_")]
        dropout = [layer.rate for layer in net.layers if isinstance(layer, keras.layers.Dropout)]
        assert [layer.units for layer in hidden] == [1] * hp["layers"]  # layers 0: the score layer alone
        assert dropout == ([0.99] if hp["layers"] and hp["dropout"] else [])
        model.compile_model(net, hp, 2)
        before = [w.copy() for w in net.get_weights()]
        net.fit(x, y, batch_size=hp["batch_size"], epochs=hp["epochs"], verbose=0)  # 4 steps of one event
        assert int(net.optimizer.iterations) == 4
        change = max(float(np.abs(a - b).max()) for a, b in zip(net.get_weights(), before, strict=True))
        assert change < 1e-9  # a learning rate of 1e-12 is used as given (Adam's steps are ≈ the rate)


def test_activations_are_exactly_the_usable_keras_ones():
    import keras
    from keras.src.activations import ALL_OBJECTS_DICT

    public = {name for name in dir(keras.activations) if not name.startswith("_")} - {"get", "serialize", "deserialize"}
    assert set(ALL_OBJECTS_DICT) == public
    assert set(hyperparameters.ACTIVATIONS) | set(hyperparameters.KERAS_ACTIVATIONS_LEFT_OUT) == public
    assert not set(hyperparameters.ACTIVATIONS) & set(hyperparameters.KERAS_ACTIVATIONS_LEFT_OUT)
    x = np.linspace(-2, 2, 15, dtype=np.float32).reshape(3, 5)
    for name in hyperparameters.ACTIVATIONS:  # each works as a hidden layer of odd width
        layer = keras.layers.Dense(5, activation=name)
        out = keras.ops.convert_to_numpy(layer(x))
        assert out.shape == (3, 5) and np.isfinite(out).all(), name
    for name in hyperparameters.KERAS_ACTIVATIONS_LEFT_OUT:
        with pytest.raises(Exception):  # noqa: B017 - what each raises is Keras's business: it must not build
            out = keras.layers.Dense(5, activation=name)(x)
            assert keras.ops.convert_to_numpy(out).shape == (3, 5)


def test_zero_hidden_layers_builds_a_regression_on_the_scaled_inputs():
    from hhscan.learning import model

    net = model.build_model({**FULL, "layers": 0}, 3, 2, np.zeros(3), np.ones(3))
    assert [layer.name for layer in net.layers] == ["inputs", "scaler", "score"]
    assert net.predict(np.ones((4, 3), np.float32), verbose=0).shape == (4, 1)


def test_packing_groups_by_the_registrys_step_structure():
    points = [{**FULL, "batch_size": b, "epochs": e, "neurons": n} for b in (64, 100) for e in (1, 2) for n in (4, 8)]
    trials = [trial.Trial(trial.trial_id(p, 0), trial.canonical(p), 0) for p in points]
    packs = packing.form_packs(trials, 16)
    assert len(packs) == 4 and all(len(p) == 2 for p in packs)
    assert {packing.step_structure(p[0]) for p in packs} == {(64, 1), (64, 2), (100, 1), (100, 2)}
    # the registry's micro_batched entry: a batch size that is a multiple of another steps in its pack
    doubled = [trial.Trial(t.id + "x", {**t.hyperparameters, "batch_size": 128}, 0) for t in trials[:4]]
    assert [len(p) for p in packing.form_packs(trials[:4] + doubled, 16)] == [4, 4]
    assert [e.name for e in REGISTRY.values() if e.micro_batched] == ["batch_size"]
    assert packing.step_structure(trial.Trial("x", {"neurons": 4}, 0)) == (256, 20)  # defaults


def test_zero_hidden_layers_trains_in_a_pack_as_a_logistic_regression(analysis):
    from hhscan.data.split import VALIDATION
    from hhscan.execution import runner
    from hhscan.execution.scandir import Workspace
    from hhscan.learning import training

    analysis.edit_parameters(hyperparameters={"layers": [0, 1]})
    parameters = config.load_parameters(analysis.parameters)
    data = runner.prepare_dataset(parameters, config.load_sample_list(analysis.sample_list), Workspace(analysis.root))
    trials = trial.expand(parameters)
    results = training.train_pack(trials, data, parameters)
    assert all(np.isfinite(r.history["val_loss"]).all() and r.epochs_run == 2 for r in results)
    zero = next(r for t, r in zip(trials, results, strict=True) if t.hyperparameters["layers"] == 0)
    scaler, score = zero.model.get_layer("scaler"), zero.model.get_layer("score")
    mean, variance = (np.ravel(np.asarray(v)) for v in (scaler.mean, scaler.variance))
    kernel, bias = (np.asarray(v, dtype=np.float64) for v in score.get_weights())
    x = data.features[data.partition == VALIDATION].astype(np.float64)
    by_hand = 1 / (1 + np.exp(-(((x - mean) / np.sqrt(variance)) @ kernel + bias)))
    predicted = zero.model.predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(predicted, by_hand, rtol=1e-4, atol=1e-6)
