"""Ready for a GPU cluster, checked on the CPU: device check, bounded validation memory, the pack-size probe's
errors and cache, branches spread over several devices, data placed once, the GPU benchmark's single command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from hhscan import model, records
from hhscan.errors import DeviceError
from hhscan.scandir import Workspace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", model.ALLOW_CPU)


@pytest.fixture
def no_gpu_allocation(monkeypatch):
    for name in GPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------------------------------ device check


@pytest.mark.parametrize(
    ("variable", "value"), [("SLURM_JOB_GPUS", "0"), ("SLURM_STEP_GPUS", "1,2"), ("CUDA_VISIBLE_DEVICES", "0")]
)
def test_a_gpu_allocation_with_a_cpu_backend_fails_at_once_in_one_line(analysis, no_gpu_allocation, capsys,
                                                                      variable, value):  # fmt: skip
    no_gpu_allocation.setenv(variable, value)
    code, _out, err = run_cli(["run", "--local", "--name", "gpu"], analysis.root, capsys, no_gpu_allocation)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hhscan: error: this job was given GPUs") and f"{variable}={value}" in lines[0]
    assert "but the jax backend sees none, only cpu:" in lines[0] and "pip install 'hhscan[cuda]'" in lines[0]
    # Nothing trained: no record, no model.
    scan = Workspace(analysis.root).scan("gpu")
    assert not scan.output_dir.exists() or not any(scan.output_dir.iterdir())


def test_gpus_per_node_counts_inside_a_slurm_job_only(no_gpu_allocation):
    resources = {"timeout_min": 5, "gpus_per_node": 2}
    assert model.gpu_allocation(resources) is None  # a local run of a scan configured for Slurm GPUs
    assert model.check_device(resources).startswith("cpu:")
    no_gpu_allocation.setenv("SLURM_JOB_ID", "17")
    assert model.gpu_allocation(resources) == "slurm.resources.gpus_per_node=2"
    assert model.gpu_allocation({"slurm_gres": "gpu:a100:1"}) == "slurm.resources.slurm_gres=gpu:a100:1"
    assert model.gpu_allocation({"gpus_per_node": 0}) is None
    with pytest.raises(DeviceError, match=r"given GPUs \(slurm.resources.gpus_per_node=2\)"):
        model.check_device(resources)
    no_gpu_allocation.setenv(model.ALLOW_CPU, "1")  # on purpose: train on the CPU anyway
    assert model.check_device(resources) == model.device_description()


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles"])
def test_cuda_visible_devices_that_name_no_gpu_are_no_allocation(no_gpu_allocation, value):
    no_gpu_allocation.setenv("CUDA_VISIBLE_DEVICES", value)
    assert model.gpu_allocation() is None


def test_the_cli_process_fails_in_one_line_too(analysis, no_gpu_allocation):
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "hhscan.cli", "run", "--local", "--name", "gpu"],
                            cwd=analysis.root, env={**env, "SLURM_JOB_GPUS": "0"}, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "hhscan: error: this job was given GPUs (SLURM_JOB_GPUS=0)" in result.stderr


def test_records_say_which_device_trained_them(analysis, no_gpu_allocation, capsys):
    analysis.edit_parameters(hyperparameters={"epochs": [1], "learning_rate": [0.01]})
    code, _, err = run_cli(["run", "--local", "--name", "dev"], analysis.root, capsys, no_gpu_allocation)
    assert code == 0, err
    found, _ = records.read_records(Workspace(analysis.root).scan("dev").output_dir)
    import jax

    expected = f"cpu:{len(os.sched_getaffinity(0))}" if jax.devices()[0].platform == "cpu" else None
    assert {r.device for r in found.values()} == {expected}
