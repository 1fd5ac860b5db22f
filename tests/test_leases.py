"""Exactly once without Slurm's help: trial leases, first DONE wins, the exception policy, per-trial checkpoints,
and the submit-time checks (signal delay, memory baseline). Real files, real processes, real Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_cli
from hhscan.errors import BackendError
from hhscan.execution import jobstate, leases, runner, slurm
from hhscan.execution.scandir import ScanDirectory, Workspace
from hhscan.learning import training, trial
from hhscan.learning.records import read_record, record_path
from hhscan.settings import config
from hhscan.settings.config import SlurmSettings

CLAIM = """
import sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from hhscan.execution import leases
while time.time() < {start}:
    time.sleep(0.001)
mine, other = leases.Leases(Path({root!r})).claim("t1", leases.Attempt(job_id=sys.argv[1]))
print("won" if mine else "lost", flush=True)
time.sleep(3 if mine else 0)
"""


def _dataset(analysis):
    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    return parameters, runner.prepare_dataset(parameters, sample_list, Workspace(analysis.root))


def test_of_many_processes_claiming_one_trial_at_once_exactly_one_wins(tmp_path):
    # All start claiming at one instant, well after every interpreter has imported hhscan.
    source = CLAIM.format(src=str(REPO), root=str(tmp_path), start=time.time() + 4)
    processes = [subprocess.Popen([sys.executable, "-c", source, f"job{i}"], stdout=subprocess.PIPE, text=True)
                 for i in range(6)]  # fmt: skip
    outputs = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert sorted(outputs) == ["lost"] * 5 + ["won"]
    store = leases.Leases(tmp_path)
    (only,) = store.history("t1")
    assert only.generation == 1 and only.job_id == f"job{outputs.index('won')}"
    # Its process has exited: on this host the lease is dead at once, and the next claim supersedes it.
    assert not only.live()
    mine, other = store.claim("t1", leases.Attempt(job_id="next"))
    assert other is None and mine is not None and mine.generation == 2
    assert [lease.generation for lease in store.history("t1")] == [1, 2]


def test_a_claim_that_loses_the_race_for_a_generation_looks_again(tmp_path, monkeypatch):
    """The interleaving a race produces: B read "no lease" before A created generation 1."""
    store = leases.Leases(tmp_path)
    first, _ = store.claim("t1", leases.Attempt(job_id="A", pid=os.getppid()))  # a live process, not us
    reads = iter([None])
    real_current = leases.Leases.current
    monkeypatch.setattr(leases.Leases, "current", lambda self, t: next(reads, "real") and real_current(self, t))
    second, holder = store.claim("t1", leases.Attempt(job_id="B"))
    assert second is None and holder.attempt == first.attempt
    assert [lease.job_id for lease in store.history("t1")] == ["A"]


def test_a_lease_from_another_host_lives_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    store = leases.Leases(tmp_path)
    elsewhere = leases.Attempt(job_id="7_1", host="node-elsewhere", pid=1)
    mine, _ = store.claim("t1", elsewhere)
    assert mine is not None
    refused, holder = store.claim("t1", leases.Attempt(job_id="8_0"))
    assert refused is None and holder.attempt == elsewhere.attempt
    monkeypatch.setattr(leases, "STALE_S", 0.5)
    time.sleep(0.6)  # the other host stopped renewing it
    taken, holder = store.claim("t1", leases.Attempt(job_id="8_0"))
    assert holder is None and taken.generation == 2
    # The old holder learns it was superseded when it next renews, and stops claiming the trial.
    keeper = leases.LeaseKeeper(store, elsewhere)
    keeper.held["t1"] = mine
    keeper._renew()
    assert keeper.superseded == {"t1"} and not keeper.owns("t1")


def test_liveness_is_the_lease_files_age_by_the_file_servers_clock_not_the_holders(tmp_path, monkeypatch):
    real_time = time.time
    skew = 3 * leases.STALE_S
    holder = leases.Attempt(job_id="7_1", host="node-elsewhere", pid=1)
    monkeypatch.setattr(leases.time, "time", lambda: real_time() - skew)  # the holder's clock runs late
    mine, _ = leases.Leases(tmp_path).claim("t1", holder)
    assert mine is not None and mine.heartbeat < real_time() - leases.STALE_S
    monkeypatch.setattr(leases.time, "time", real_time)
    refused, live = leases.Leases(tmp_path).claim("t1", leases.Attempt(job_id="8_0"))
    assert refused is None and live.attempt == holder.attempt
    monkeypatch.setattr(leases.time, "time", lambda: real_time() + skew)  # this reader's clock runs early
    ahead = leases.Leases(tmp_path)
    assert ahead.current("t1").live() and ahead.claim("t1", leases.Attempt(job_id="8_0"))[0] is None
    monkeypatch.setattr(leases.time, "time", real_time)
    # The file itself not written for longer than STALE_S (by its mtime): stale, whatever its heartbeat says.
    path = tmp_path / "leases" / "t1.000001.json"
    stored = json.loads(path.read_text())
    stored["heartbeat"] = real_time()
    path.write_text(json.dumps(stored))
    os.utime(path, (real_time() - 2 * leases.STALE_S,) * 2)
    taken, other = leases.Leases(tmp_path).claim("t1", leases.Attempt(job_id="8_0"))
    assert other is None and taken.generation == 2
    # A reader who may not write the directory (a colleague's `status`) reads with its own clock, without error.
    def refused(self, data):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(leases.Path, "write_bytes", refused)
    assert leases.Leases(tmp_path).current("t1").live()


def test_a_claim_that_keeps_losing_backs_off_and_looks_names_up(tmp_path, monkeypatch):
    store = leases.Leases(tmp_path)
    first, _ = store.claim("t1", leases.Attempt(job_id="A", pid=os.getppid()))  # a live process, not us
    monkeypatch.setattr(os, "scandir", None)  # a directory listing (cached by NFS) is never consulted
    stale_views = iter([None, None, None])  # a cache that keeps saying "no lease" three times
    real_current = leases.Leases.current
    monkeypatch.setattr(leases.Leases, "current", lambda self, t: next(stale_views, "real") and real_current(self, t))
    pauses = []
    monkeypatch.setattr(leases.time, "sleep", pauses.append)
    second, holder = store.claim("t1", leases.Attempt(job_id="B"))
    assert second is None and holder.attempt == first.attempt
    assert len(pauses) == 3 and all(0 <= p <= 1.0 for p in pauses)
    assert max(pauses) > 0  # random in [0, 0.02], [0, 0.04], [0, 0.08]: all zero only by a 0-probability draw


def test_the_heartbeat_survives_a_transient_write_error_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(leases, "HEARTBEAT_S", 0.05)
    store = leases.Leases(tmp_path)
    keeper = leases.LeaseKeeper(store, leases.Attempt(job_id="1_0"))
    keeper.claim(["t1"])
    failures = iter([OSError(5, "Input/output error")])
    real_write = leases.Leases.write

    def flaky(self, lease):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_write(self, lease)

    monkeypatch.setattr(leases.Leases, "write", flaky)
    before = store.current("t1").heartbeat
    with keeper:
        time.sleep(0.5)
        assert keeper._thread.is_alive()
        assert store.current("t1").heartbeat > before + 0.1  # renewed after the failed beat
        assert keeper.holds("t1") and keeper.holds("t1", confirm=True)
    assert "renewing its lease failed (OSError" in capsys.readouterr().err


def test_the_discard_message_names_what_happened_to_the_lease(tmp_path):
    store = leases.Leases(tmp_path)
    mine = leases.LeaseKeeper(store, leases.Attempt(job_id="1_0", host="node-elsewhere", pid=1))
    mine.claim(["t1"])
    os.utime(store.directory / "t1.000001.json", (time.time() - 2 * leases.STALE_S,) * 2)
    winner = leases.LeaseKeeper(store, leases.Attempt(job_id="2_0"))
    winner.claim(["t1"])
    assert runner._lost_lease(mine, "t1") == f"this attempt was superseded by attempt {winner.attempt.attempt} (job 2_0)"
    winner.release(["t1"])
    assert runner._lost_lease(mine, "t1").endswith("(job 2_0), which has finished it")
    store.clear()
    assert "no attempt" not in runner._lost_lease(mine, "t1") and "lease is gone" in runner._lost_lease(mine, "t1")


def test_a_requeued_job_takes_its_own_lease_over_and_no_other_job_does(tmp_path):
    store = leases.Leases(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])  # a live process holding the lease on this host
    try:
        first, _ = store.claim("t1", leases.Attempt(job_id="5_1", pid=sleeper.pid, restart_count=0))
        assert first is not None and first.live()
        assert store.claim("t1", leases.Attempt(job_id="6_0", pid=sleeper.pid + 1))[0] is None
        assert store.claim("t1", leases.Attempt(job_id="5_1", pid=sleeper.pid + 1, restart_count=0))[0] is None
        requeued, _ = store.claim("t1", leases.Attempt(job_id="5_1", pid=sleeper.pid + 1, restart_count=1))
        assert requeued is not None and requeued.generation == 2
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_trial_leased_by_a_live_attempt_is_skipped_shown_running_and_run_once_it_dies(analysis, capsys,
                                                                                         monkeypatch):  # fmt: skip
    code, _, err = run_cli(["run", "--local", "--max-trials", "0"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(analysis.root).scan("local")
    held = scan.trials()[0].id
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lease, _ = leases.Leases(scan.root).claim(held, leases.Attempt(job_id="41_3", pid=sleeper.pid))
        lease.epoch, lease.epochs, lease.monitor, lease.best = 3, 10, "val_auc", 0.8125
        assert leases.Leases(scan.root).write(lease)
        code, out, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
        assert code == 0, err
        records, _ = scan.records()
        assert held not in records and len(records) == len(scan.trials()) - 1
        code, out, _ = run_cli(["status"], analysis.root, capsys, monkeypatch)
        assert "running: 1" in out and "job 41_3" in out and f"{held}  epoch 3/10  best val_auc 0.8125" in out
        assert "resubmit" not in out  # a running trial is not missing
        status = jobstate.scan_status(scan)
        assert jobstate.to_resubmit(status) == []
        # --watch refreshes until nothing runs: the holder dies mid-watch and the trial turns missing.
        watcher = subprocess.Popen([sys.executable, "-m", "hhscan.cli", "status", "--watch", "0.5"],
                                   cwd=analysis.root, stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(4)
        assert watcher.poll() is None  # still watching while the trial runs
    finally:
        sleeper.kill()
        sleeper.wait()
    watched = watcher.communicate(timeout=60)[0]
    assert watcher.returncode == 0 and watched.count("running: 1") >= 2 and "missing: 1" in watched
    assert [t.trial.id for t in jobstate.scan_status(scan).of("missing")] == [held]
    # Litter a killed writer leaves: a temporary record and a finished trial's checkpoint. Status counts them.
    litter = [scan.output_dir / f".{held}.csv.abc.tmp", scan.root / "checkpoints" / scan.trials()[1].id / "x.npz"]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"0" * 2**20)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    code, out, _ = run_cli(["status"], analysis.root, capsys, monkeypatch)
    assert "leftover: 2 file(s), 2.0 MiB" in out
    code, out, err = run_cli(["run", "--local"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    records, _ = scan.records()
    assert records[held].done and records[held].attempt
    # The finished scan leaves no checkpoints, leases or temporary files.
    assert not (scan.root / "checkpoints").exists() and not (scan.root / "leases").exists()
    assert not list(scan.root.rglob("*.tmp")) and not list(scan.output_dir.glob(".*"))


SUPERSEDED_WORKER = """
import sys
sys.path.insert(0, {src!r})
from pathlib import Path
from hhscan.execution import runner
from hhscan.execution.scandir import ScanDirectory
records = runner.run_scan_trials(ScanDirectory(Path({root!r})), [{trial_id!r}], runner.JobContext(job_id="1_0"))
print("records:", len(records), flush=True)
"""


def _create_scan(analysis, name):
    parameters, data = _dataset(analysis)
    trials = trial.expand(parameters)
    scan = ScanDirectory(analysis.root / "slurm" / name)
    scan.create(parameters, config.load_sample_list(analysis.sample_list), trials, data.split_checksum,
                data.data_fingerprint, Workspace(analysis.root), "jax", "local")  # fmt: skip
    return parameters, data, trials, scan


def test_an_attempt_superseded_while_it_trains_stops_and_writes_nothing_more(analysis):
    """Two attempts at once: A trains the trial (checkpointing every epoch) when B takes its lease over (a requeued
    run of its job). A stops training it at its next checkpoint and writes no checkpoint, record or model after."""
    analysis.edit_parameters(hyperparameters={"epochs": [2000], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": {"enabled": False}})  # fmt: skip
    _, _, (only,), scan = _create_scan(analysis, "concurrent")
    source = SUPERSEDED_WORKER.format(src=str(REPO), root=str(scan.root), trial_id=only.id)
    a = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "KERAS_BACKEND": "jax", "HHSCAN_LEASE_HEARTBEAT_S": "0.2"})  # fmt: skip
    checkpoints = scan.root / "checkpoints"
    try:
        deadline = time.time() + 120
        while (training.checkpoint_epoch(checkpoints, only.id) or 0) < 3:  # A is training
            assert a.poll() is None and time.time() < deadline, a.stdout.read() if a.poll() is not None else "slow"
            time.sleep(0.05)
        b = leases.LeaseKeeper(leases.Leases(scan.root), leases.Attempt(job_id="1_0", restart_count=1))
        assert b.claim([only.id]) == {} and b.owns(only.id)
        time.sleep(1.0)  # a checkpoint A was writing as B claimed may land; none may follow
        path = training.checkpoint_path(checkpoints, only.id)
        snapshot = path.read_bytes()
        output = a.communicate(timeout=120)[0]
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0, output[-3000:]
    assert path.read_bytes() == snapshot and training.checkpoint_epoch(checkpoints, only.id) < 1000
    assert "another attempt took its lease; this attempt stops training it" in output
    assert f"superseded by attempt {b.attempt.attempt} (job 1_0); its result is discarded" in output
    assert "records: 0" in output
    assert runner.read_existing(scan, only.id) is None and not scan.model_path(only.id).exists()
    assert not scan.output_dir.exists() or not list(scan.output_dir.iterdir())  # no staged model, no temporary record
    assert b.owns(only.id)  # B's lease untouched: it trains the trial from A's last checkpoint before B's claim


def test_the_first_done_wins_even_for_the_lease_holder(analysis, capsys):
    parameters, data, trials, scan = _create_scan(analysis, "race")
    store = leases.Leases(scan.root)
    slow = leases.LeaseKeeper(store, leases.Attempt(job_id="1_0"))
    slow.claim([trials[0].id])
    # The slow attempt's process is thought dead (same host and pid taken over, as a recycled worker does).
    fast = leases.LeaseKeeper(store, leases.Attempt(job_id="1_0"))
    fast.claim([trials[0].id])
    context = runner.JobContext(job_id="1_0")
    (done,) = runner.run_pack(scan, [trials[0]], parameters, data, "jax", context, keeper=fast)
    assert done.done and done.attempt == fast.attempt.attempt
    zip_bytes = scan.model_path(trials[0].id).read_bytes()
    assert runner.run_pack(scan, [trials[0]], parameters, data, "jax", context, keeper=slow) == []
    assert "superseded by attempt" in capsys.readouterr().out
    # Even the lease holder never replaces a DONE record or its model.
    again = leases.LeaseKeeper(store, leases.Attempt(job_id="2_0"))
    fast.release([trials[0].id])
    again.claim([trials[0].id])
    assert runner.run_pack(scan, [trials[0]], parameters, data, "jax", context, keeper=again) == []
    assert "already DONE" in capsys.readouterr().out
    kept = read_record(record_path(scan.output_dir, trials[0].id))
    assert kept.attempt == fast.attempt.attempt and kept.finished_at == done.finished_at
    assert scan.model_path(trials[0].id).read_bytes() == zip_bytes
    assert not list(scan.output_dir.glob(".*"))  # no staged zip left behind


def test_a_resumed_trial_keeps_the_callbacks_it_started_with_and_its_record_says_so(analysis):
    analysis.edit_parameters(hyperparameters={"epochs": [2], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": {"monitor": "val_loss", "patience": 3},
                                       "reduce_lr": {"patience": 1, "factor": 0.5}})  # fmt: skip
    started, data, (first,), scan = _create_scan(analysis, "resume")
    training.train(first, data, started, scan.root / "checkpoints")  # the first submission: 2 epochs
    longer = trial.Trial(first.id, {**first.hyperparameters, "epochs": 5}, 0)
    uninterrupted = training.train(longer, data, started)
    # Changed before the resubmission: under these, the trial would stop at epoch 3 with its learning rate intact.
    analysis.edit_parameters(training={"early_stopping": {"patience": 1, "min_delta": 0.5}, "reduce_lr": {"enabled": False}})
    changed = config.load_parameters(analysis.parameters)
    (record,) = runner.run_pack(scan, [longer], changed, data, "jax", runner.JobContext())
    assert record.resumed_from_epoch == 2
    assert record.training_settings["early_stopping"] == started.training.early_stopping.model_dump(mode="json")
    assert record.training_settings["reduce_lr"] == started.training.reduce_lr.model_dump(mode="json")
    assert record.epochs_run == uninterrupted.epochs_run and record.best_epoch == uninterrupted.best_epoch
    np.testing.assert_allclose(record.history["val_loss"], uninterrupted.history["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(record.history["learning_rate"], uninterrupted.history["learning_rate"], rtol=1e-6)


def test_a_resumed_trials_best_epoch_follows_the_monitor_it_trained_with(analysis):
    """Early stopping's monitor changed before the resubmission: the resumed trial still stops and keeps weights by
    its own (val_loss, with a min_delta no epoch meets: it keeps epoch 1), and best_epoch names that epoch, not the
    best of the new monitor's curve."""
    stopping = {"monitor": "val_loss", "patience": 10, "min_delta": 10.0, "restore_best_weights": True}
    analysis.edit_parameters(hyperparameters={"epochs": [2], "learning_rate": [0.01]},
                             training={"checkpoint_interval_s": 0, "early_stopping": stopping,
                                       "reduce_lr": {"enabled": False}})  # fmt: skip
    started, data, (first,), scan = _create_scan(analysis, "monitor")
    training.train(first, data, started, scan.root / "checkpoints")  # the first submission: 2 epochs
    longer = trial.Trial(first.id, {**first.hyperparameters, "epochs": 5}, 0)
    uninterrupted = training.train(longer, data, started)
    assert uninterrupted.best_epoch == 1 and int(np.argmax(uninterrupted.history["val_auc"])) > 0
    analysis.edit_parameters(training={"early_stopping": {"monitor": "val_auc", "min_delta": 0.0}})
    changed = config.load_parameters(analysis.parameters)
    (record,) = runner.run_pack(scan, [longer], changed, data, "jax", runner.JobContext())
    assert record.resumed_from_epoch == 2 and record.training_settings["early_stopping"]["monitor"] == "val_loss"
    assert record.best_epoch == uninterrupted.best_epoch == 1
    np.testing.assert_allclose(record.history["val_loss"], uninterrupted.history["val_loss"], rtol=1e-5)


def test_control_flow_exceptions_pass_through_a_pack(analysis):
    from submitit.core.utils import UncompletedJobError

    assert runner.is_trial_failure(ValueError("bad value")) and runner.is_trial_failure(MemoryError())
    for error in (UncompletedJobError("last requeue"), KeyboardInterrupt(), SystemExit(-1)):
        assert not runner.is_trial_failure(error)
    analysis.edit_parameters(hyperparameters={"epochs": [3]}, training={"checkpoint_interval_s": 0})
    parameters, data = _dataset(analysis)
    trials = trial.expand(parameters)
    root = analysis.root / "slurm" / "signal"
    scan = ScanDirectory(root)
    scan.create(parameters, config.load_sample_list(analysis.sample_list), trials, data.split_checksum,
                data.data_fingerprint, Workspace(analysis.root), "jax", "local")  # fmt: skip

    def signal_arrives(progress):  # what submitit's handler raises on the last allowed timeout
        if progress.epoch == 2:
            raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    with pytest.raises(UncompletedJobError):
        runner.run_pack(scan, trials, parameters, data, "jax", runner.JobContext(), signal_arrives)
    assert scan.records()[0] == {}  # no trial turned into a FAIL, none retrained alone
    for t in trials:  # both keep their own checkpoint at epoch 2 for the next attempt
        assert training.checkpoint_epoch(root / "checkpoints", t.id) == 1


def test_a_regrouped_pack_resumes_every_trial_from_its_own_checkpoint(analysis, tmp_path):
    analysis.edit_parameters(hyperparameters={"learning_rate": [0.01, 0.003, 0.001, 0.0003]},
                             training={"checkpoint_interval_s": 0, "early_stopping": {"enabled": False}})  # fmt: skip
    parameters, data = _dataset(analysis)
    trials = trial.expand(parameters)  # 2 epochs each
    checkpoints = tmp_path / "checkpoints"
    partial = training.train_pack(trials[:2], data, parameters, checkpoints)  # packs of the first submission
    partial += training.train_pack(trials[2:], data, parameters, checkpoints)
    longer = [trial.Trial(t.id, {**t.hyperparameters, "epochs": 4}, 0) for t in trials]
    regrouped = [longer[1], longer[2]]  # one trial from each earlier pack
    fresh = trial.Trial("abcdef012345", longer[0].hyperparameters, 0)  # never trained: no checkpoint
    assert runner._by_resume_epoch([*regrouped, fresh], checkpoints) == [regrouped, [fresh]]
    resumed = training.train_pack(regrouped, data, parameters, checkpoints)
    for result, before, t in zip(resumed, (partial[1], partial[2]), regrouped, strict=True):
        assert result.resumed_from_epoch == 2 and result.epochs_run == 4
        assert result.history["loss"][:2] == before.history["loss"]
        alone = training.train(t, data, parameters)  # uninterrupted, alone
        np.testing.assert_allclose(result.history["val_loss"], alone.history["val_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="different epochs"):
        training.train_pack([longer[0], fresh], data, parameters, checkpoints)
    state = json.loads(np.load(training.checkpoint_path(checkpoints, trials[0].id))["__state__"].tobytes())
    assert state["epoch"] == 1 and state["trial_id"] == state["branches"][0]["trial_id"] == trials[0].id


def test_a_time_limit_the_checkpoint_signal_cannot_fit_in_is_refused(analysis, capsys, monkeypatch):
    with pytest.raises(BackendError, match=r"timeout_min 1 \(60 s\) with the checkpoint signal 90 s"):
        slurm.resource_parameters(SlurmSettings(resources={"timeout_min": 1}))
    slurm.resource_parameters(SlurmSettings(resources={"timeout_min": 2, "slurm_signal_delay_s": 60}))
    slurm.resource_parameters(SlurmSettings(resources={"timeout_min": 3}))  # 90 s of 180: allowed
    analysis.edit_parameters(slurm={"resources": {"timeout_min": 1}})
    code, _, err = run_cli(["submit", "--name", "short"], analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "set slurm_signal_delay_s to at most 30" in err and "submitit's default" in err
    assert not (analysis.root / "slurm" / "short").exists()


def test_memory_below_the_workers_baseline_is_warned_with_the_number():
    settings = SlurmSettings(resources={"mem_gb": 0.5})
    warning = slurm.memory_warning(settings, None, 0.62)
    assert warning is not None and "0.62 GB" in warning and "mem_gb 0.5 GB" in warning
    assert "at least 1.3" in warning  # 0.62 / 0.8 + 0.5 = 1.275
    assert slurm.memory_warning(SlurmSettings(resources={"mem_gb": 0.8}), None, 0.62) is None  # bound 0.64
    assert slurm.memory_warning(settings, 2.0, 0.62) is None  # an explicit worker_memory_gb decides
    assert slurm.memory_warning(SlurmSettings(resources={}), None, 0.62) is None


def test_two_submits_of_one_new_name_at_once_create_it_once(analysis):
    import threading

    from hhscan.errors import ScanError
    from hhscan.execution import session

    parameters = config.load_parameters(analysis.parameters)
    sample_list = config.load_sample_list(analysis.sample_list)
    outcomes = []

    def submit():
        try:
            session.prepare(parameters, sample_list, analysis.root, "twin", kind="slurm", must_be_new=True)
            outcomes.append("created")
        except ScanError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[0] == "created" and "already exists" in sorted(outcomes)[1], outcomes


def test_importing_submitit_through_hhscan_keeps_the_process_logging_handlers(tmp_path):
    # submitit's own first import runs logging.config.dictConfig, which closes every installed handler: a library
    # user's file log (here) or pytest's capture (how it was found) would then raise on the next record.
    script = (
        "import logging, sys\n"
        f"handler = logging.FileHandler({str(tmp_path / 'user.log')!r})\n"
        "logging.getLogger().addHandler(handler)\n"
        "stream = handler.stream\n"
        "import hhscan.execution.slurm, hhscan.execution.runner\n"
        "hhscan.execution.runner.is_trial_failure(ValueError())\n"
        "logging.getLogger().warning('still here')\n"
        "assert not stream.closed, 'the handler was closed'\n"
        "assert 'submitit' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "still here" in (tmp_path / "user.log").read_text()
