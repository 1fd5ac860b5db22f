"""``pack_size: auto``: what fits in memory is packed whole without probing; only what does not is probed."""

from __future__ import annotations

import numpy as np
from hhscan.execution import runner
from hhscan.execution.scandir import Workspace
from hhscan.learning import fused, model, training, trial
from hhscan.settings import config


def _prepared(analysis):
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    return parameters, runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))


def test_a_branchs_training_memory_is_its_variables_gradients_slots_and_one_batch_of_activations():
    model.choose_backend("auto")
    hp = {"layers": 1, "neurons": 4, "activation": "relu", "dropout": 0.0, "l2": 0.0, "optimizer": "adam",
          "learning_rate": 1e-3}  # fmt: skip
    net = model.build_model(hp, 3, 2, np.zeros(3), np.ones(3))
    model.compile_model(net, hp, 2)
    net.optimizer.build(net.trainable_variables)
    # By hand: 3 → 4 → 1 has 3·4 + 4 + 4·1 + 1 = 21 weights; the scaler, given its mean and variance, holds them
    # as constants (no variables); Adam keeps two slots per weight, its iteration count and learning rate;
    # activations: 3 inputs, 4 hidden and 1 output per event, 3 temporaries each, forward and backward.
    weights, scaler, adam = 21, 0, 2 * 21 + 2
    by_hand = 4 * (2 * weights + scaler + adam + 128 * (3 + 4 + 1) * fused.TEMPORARIES_PER_ACTIVATION * 2)
    assert fused.training_memory_bytes(net, net.optimizer, 3, 128) == by_hand


def test_a_large_request_that_fits_is_packed_whole_without_a_probe(analysis, monkeypatch):
    analysis.edit_parameters(hyperparameters={"neurons": [4, 8], "learning_rate": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3],
                                              "l2": [0.0, 1e-4], "epochs": [1]})  # fmt: skip
    parameters, data = _prepared(analysis)
    trials = trial.expand(parameters)
    assert len(trials) == 20  # one step structure, more than DEFAULT_PACK_SIZE
    probes = []
    monkeypatch.setattr(training, "probe_pack_size", lambda *a: probes.append(a) or {"pack_size": 2})
    workspace = Workspace(analysis.root)
    assert runner.resolve_pack_size(parameters, data, workspace, trials) == 20
    assert probes == [] and not (workspace.cache / "pack_size.json").exists()
    # The same request on a device too small for it is measured.
    monkeypatch.setattr(fused, "training_budget", lambda: 1000)
    assert runner.resolve_pack_size(parameters, data, workspace, trials) == 2
    assert len(probes) == 1
