"""Fixtures: small weighted multi-process analyses written as real ROOT (uproot mktree) and HDF5 (h5py) files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's CPU build cannot share a venv with JAX's CUDA build: a GPU machine's `pytest -m gpu` skips the
# TensorFlow checks there. Anywhere else (CI) they run, and a missing TensorFlow fails them.
CUDA_JAX = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") is not None for v in (12, 13))
needs_tensorflow = pytest.mark.skipif(CUDA_JAX and importlib.util.find_spec("tensorflow") is None,
                                      reason="JAX's CUDA build is installed here, and TensorFlow's CPU build is not")


def write_root(path: Path, trees: dict[str, dict[str, np.ndarray]]) -> None:
    import uproot

    with uproot.recreate(path) as handle:
        for name, columns in trees.items():
            tree = handle.mktree(name, {k: v.dtype for k, v in columns.items()})
            tree.extend(columns)


def write_h5(path: Path, dataset: str, columns: dict[str, np.ndarray]) -> None:
    import h5py

    array = np.zeros(len(next(iter(columns.values()))), dtype=[(k, v.dtype) for k, v in columns.items()])
    for key, values in columns.items():
        array[key] = values
    with h5py.File(path, "w") as handle:
        handle.create_dataset(dataset, data=array)


def make_events(n: int, shift: float, seed: int, negative_fraction: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 1.5, n)
    weight[rng.random(n) < negative_fraction] *= -1
    return {
        "x1": rng.normal(shift, 1.0, n).astype(np.float32),
        "x2": rng.normal(-shift, 2.0, n).astype(np.float32),
        "jet_b-tag": rng.random(n).astype(np.float32),
        "njet": rng.integers(2, 5, n).astype(np.int32),
        "weight": weight.astype(np.float64),
        "event": np.arange(n, dtype=np.int64) + seed * 100_000,
        "label": np.full(n, 1 if shift > 0 else 0, dtype=np.int32),
    }


@dataclass
class Analysis:
    root: Path
    parameters: Path
    sample_list: Path
    data: Path

    def edit_parameters(self, **changes) -> None:
        content = yaml.safe_load(self.parameters.read_text())
        _merge(content, changes)
        self.parameters.write_text(yaml.safe_dump(content, sort_keys=False))

    def edit_samples(self, **changes) -> None:
        content = yaml.safe_load(self.sample_list.read_text())
        _merge(content, changes)
        self.sample_list.write_text(yaml.safe_dump(content, sort_keys=False))

    def samples_yaml(self) -> dict:
        return yaml.safe_load(self.sample_list.read_text())


def _merge(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


XSEC = {"2016": {"tt_2016.root": 800.0, "dy_2016.h5": 6000.0, "hh_2016.root": 0.031},
        "2017": {"tt_2017.root": 820.0, "hh_2017.root": 0.033}}  # fmt: skip
SUMW = {"2016": {"tt_2016.root": 1.5e6, "dy_2016.h5": 2.0e7, "hh_2016.root": 350.0},
        "2017": {"tt_2017.root": 1.6e6, "hh_2017.root": 180.0}}  # fmt: skip
LUMI = {"2016": 36.3, "2017": 41.5}


def build_analysis(root: Path, classes: int = 2, n: int = 400) -> Analysis:
    """Signal in 2016+2017, tt in both eras (ROOT), DY in 2016 (HDF5); two or three classes."""
    data = root / "data"
    data.mkdir(parents=True)
    write_root(data / "hh_2016.root", {"Events": make_events(n, 0.8, 1)})
    write_root(data / "hh_2017.root", {"Events": make_events(n // 2, 0.8, 2)})
    write_root(data / "tt_2016.root", {"Events": make_events(n, -0.5, 3), "Other": make_events(5, 0, 9)})
    write_root(data / "tt_2017.root", {"Events": make_events(n, -0.5, 4)})
    write_h5(data / "dy_2016.h5", "events", make_events(n, -0.2, 5))
    for era in ("2016", "2017"):
        (data / f"xsec_{era}.json").write_text(json.dumps(XSEC[era]))
        (data / f"event_weight_sum_{era}.json").write_text(json.dumps(SUMW[era]))
    background_dy = "DY" if classes == 3 else "background"
    background_tt = "TT" if classes == 3 else "background"
    sample_list = {
        "base_dir": "../data",
        "classes": ["background", "signal"] if classes == 2 else ["TT", "DY", "signal"],
        "signal_classes": ["signal"],
        "label_branch": "label",
        "cut": "x2 > -6 && !(njet > 4)",
        "weight": "weight",
        "eras": {
            era: {
                "lumi": LUMI[era],
                "xsec": f"../data/xsec_{era}.json",
                "event_weight_sum": f"../data/event_weight_sum_{era}.json",
            }
            for era in ("2016", "2017")
        },
        "groups": [
            {"name": "hh", "files": "hh_2016.root", "tree": "Events", "class": "signal", "era": "2016"},
            {"name": "tt", "files": "tt_2016.root", "tree": "Events", "class": background_tt, "era": "2016"},
            {"name": "tt", "files": "tt_2017.root", "tree": "Events", "class": background_tt, "era": "2017"},
            {"name": "dy", "files": "dy_2016.h5", "tree": "events", "class": background_dy, "era": "2016"},
            {"name": "hh", "files": "hh_2017.root", "tree": "Events", "class": "signal", "era": "2017"},
        ],
        "inputs": [
            "x1",
            "abs(x2)",
            {"name": "btag", "expr": '"jet_b-tag"'},
            {"name": "njet", "expr": "njet", "one_hot": [2, 3, 4]},
        ],
        "other_variables": ["event", "njet"],
    }
    parameters = {
        "samples": "../sample_lists/analysis.yaml",
        "hyperparameters": {
            "layers": [1],
            "neurons": [8],
            "activation": ["relu"],
            "dropout": [0.0],
            "l2": [0.0],
            "optimizer": ["adam"],
            "learning_rate": [0.01, 0.003],
            "batch_size": [128],
            "epochs": [2],
        },
        "repetitions": 1,
        "split": {"name": "unit", "train": 0.6, "validation": 0.2, "test": 0.2, "seed": 7},
        "eval_criterion": "val_auc",
        "training": {"backend": "auto", "early_stopping": {"patience": 2}, "reduce_lr": {"patience": 1}},
        "slurm": {"resources": {"timeout_min": 5, "cpus_per_task": 1, "mem_gb": 2}},
    }
    (root / "sample_lists").mkdir()
    (root / "parameters").mkdir()
    (root / "sample_lists" / "analysis.yaml").write_text(yaml.safe_dump(sample_list, sort_keys=False))
    (root / "parameters" / "scan.yaml").write_text(yaml.safe_dump(parameters, sort_keys=False))
    return Analysis(root, root / "parameters" / "scan.yaml", root / "sample_lists" / "analysis.yaml", data)


@pytest.fixture
def analysis(tmp_path: Path) -> Analysis:
    return build_analysis(tmp_path / "project")


@pytest.fixture
def analysis3(tmp_path: Path) -> Analysis:
    return build_analysis(tmp_path / "project3", classes=3)


@pytest.fixture
def example(tmp_path: Path) -> Analysis:
    """A copy of the shipped example (parameters/, sample_lists/, data/), made tiny: 1 epoch."""
    root = tmp_path / "example"
    for part in ("parameters", "sample_lists", "data"):
        shutil.copytree(REPO / part, root / part)
    result = Analysis(root, root / "parameters" / "scan.yaml", root / "sample_lists" / "higgs.yaml", root / "data")
    result.edit_parameters(hyperparameters={"epochs": [1], "layers": [1, 2]})
    return result


def run_cli(args: list[str], cwd: Path, capsys=None, monkeypatch=None) -> tuple[int, str, str]:
    """Run ``hhscan`` in this process (through ``main``: error handling included); exit code, out, err."""
    from hhscan import cli

    assert monkeypatch is not None and capsys is not None
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["hhscan", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
