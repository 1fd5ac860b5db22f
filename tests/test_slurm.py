"""Submission, resubmission and status on the real localhost Slurm cluster (scripts/slurm-cluster.sh)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from hhscan.execution import jobstate, leases, slurm
from hhscan.execution.scandir import Workspace
from hhscan.learning import training

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"


@pytest.fixture(scope="session")
def cluster():
    """Start the project's cluster (a no-op when it runs) and point every client at it."""
    subprocess.run([str(SCRIPT), "start"], check=True, capture_output=True, text=True, timeout=600)
    conf = subprocess.run([str(SCRIPT), "env"], check=True, capture_output=True, text=True).stdout
    os.environ["SLURM_CONF"] = conf.strip().split("=", 1)[1]
    # The cluster's GPUs are emulated (character devices, no CUDA): its jobs train on the CPU on purpose.
    os.environ["HHSCAN_ALLOW_CPU"] = "1"
    return os.environ["SLURM_CONF"]


@pytest.fixture
def slurm_analysis(analysis, cluster):
    analysis.edit_parameters(
        hyperparameters={"learning_rate": [0.01, 0.003, 0.001], "neurons": [4, 8]},
        slurm={"resources": {"timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2, "gpus_per_node": 1}},
    )
    return analysis


def release_requeued() -> None:
    """Slurm holds a requeued job ~2 minutes (BeginTime); start it now, as an admin would."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %r"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        job_id, _, reason = line.partition(" ")
        if reason.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


def wait_until_settled(scan, limit_s: float = 300.0):
    """Poll the scan's status until nothing is queued or running (bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = jobstate.scan_status(scan)
        if not status.of("running", "pending"):
            return status
        release_requeued()
        time.sleep(2)
    raise AssertionError(f"scan {scan.name} still busy after {limit_s} s: {Counter(t.state for t in status.trials)}")


def wait_for_job_state(job_id: str, wanted: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        if wanted in out:
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {wanted}")


def records_exactly_once(scan) -> None:
    records, corrupt = scan.records()
    expected = {t.id for t in scan.trials()}
    assert set(records) == expected and not corrupt
    assert all(r.done for r in records.values()), [r.error for r in records.values() if not r.done]
    assert len(list(scan.output_dir.glob("*.zip"))) == len(expected)


def test_submit_runs_every_trial_once_with_a_split_that_does_not_divide(slurm_analysis, capsys, monkeypatch):
    slurm_analysis.edit_parameters(slurm={"max_array_size": 3})  # 3 groups of 2 (and one of 0) → arrays of 2
    code, out, err = run_cli(["submit", "--name", "jobs", "--split", "4"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("jobs")
    jobs = scan.manifest()["jobs"]
    assert [len(j["trial_ids"]) for j in jobs] == [4, 2]  # 6 trials, 4 per job: the partial group kept
    status = wait_until_settled(scan)
    assert status.count("done") == 6
    records_exactly_once(scan)
    records, _ = scan.records()
    assert {r.job_id for r in records.values()} == {j["job_id"] for j in jobs}
    assert all(Path(r.log_path).exists() for r in records.values())
    # Each job trained its trials as one fused pack ("auto" packs a small job whole).
    assert sorted(r.pack_size for r in records.values()) == [2, 2, 4, 4, 4, 4]
    code, out, _ = run_cli(["status", "jobs"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and "done: 6" in out and "missing: 0" in out
    code, _, err = run_cli(["submit", "--name", "jobs"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and "already exists" in err and "hhscan resubmit jobs" in err


def test_split_one_and_resubmit_after_scancel(slurm_analysis, capsys, monkeypatch):
    code, _, err = run_cli(["submit", "--name", "cancel", "--split", "1"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("cancel")
    jobs = scan.manifest()["jobs"]
    assert len(jobs) == 6 and all(len(j["trial_ids"]) == 1 for j in jobs)
    victim = jobs[-1]
    subprocess.run(["scancel", victim["job_id"]], check=True)
    status = wait_until_settled(scan)
    lost = status.of("missing")
    assert [t.trial.id for t in lost] == victim["trial_ids"]
    code, out, _ = run_cli(["status", "cancel"], slurm_analysis.root, capsys, monkeypatch)
    assert "missing: 1" in out and victim["job_id"] in out and ("CANCELLED" in out or "GONE" in out)
    code, out, err = run_cli(["resubmit", "cancel", "--dry-run"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and victim["trial_ids"][0] in out and len(scan.manifest()["jobs"]) == 6
    code, out, err = run_cli(["resubmit", "cancel"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    assert scan.manifest()["jobs"][-1]["trial_ids"] == victim["trial_ids"]
    wait_until_settled(scan)
    records_exactly_once(scan)
    code, out, _ = run_cli(["resubmit", "cancel"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and "nothing to submit" in out


def test_concurrent_resubmits_never_submit_a_trial_twice(slurm_analysis, capsys, monkeypatch):
    from hhscan.execution import session

    code, _, err = run_cli(["run", "--local", "--name", "twice", "--max-trials", "2"], slurm_analysis.root, capsys,
                           monkeypatch)  # fmt: skip
    assert code == 0, err
    results = []

    def resubmit():
        results.append(session.resubmit(slurm_analysis.root, "twice", split=1)[3])

    threads = [threading.Thread(target=resubmit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submitted = [trial for jobs in results for job in jobs for trial in job["trial_ids"]]
    assert len(submitted) == 4 and len(set(submitted)) == 4
    scan = Workspace(slurm_analysis.root).scan("twice")
    wait_until_settled(scan)
    records_exactly_once(scan)


def test_resubmit_refuses_a_changed_dictionary_and_accepts_a_changed_time_limit(slurm_analysis, capsys, monkeypatch):
    code, _, err = run_cli(["submit", "--name", "change", "--dry-run"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err  # a dry run creates nothing
    assert not (slurm_analysis.root / "slurm" / "change").exists()
    run_cli(["run", "--local", "--name", "change", "--max-trials", "5"], slurm_analysis.root, capsys, monkeypatch)
    slurm_analysis.edit_parameters(hyperparameters={"epochs": [3]})
    code, _, err = run_cli(["resubmit", "change"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and "dictionary changed" in err and "epochs: [2] → [3]" in err
    slurm_analysis.edit_parameters(hyperparameters={"epochs": [2]}, slurm={"resources": {"timeout_min": 7}})
    code, _out, err = run_cli(["resubmit", "change"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("change")
    assert scan.load_config()[0].slurm.resources["timeout_min"] == 7
    wait_until_settled(scan)
    records_exactly_once(scan)


def test_time_limit_requeues_and_resumes_from_the_last_epoch(analysis, cluster, capsys, monkeypatch):
    analysis.edit_parameters(
        # ≈0.09 s an epoch on one core: ≈3 min in all, so the 2-minute limit falls mid-training.
        hyperparameters={"learning_rate": [0.001], "epochs": [2000], "batch_size": [8], "neurons": [256],
                         "layers": [3]},
        training={"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False}, "checkpoint_interval_s": 0},
        slurm={"resources": {"timeout_min": 2, "slurm_signal_delay_s": 60, "cpus_per_task": 1, "mem_gb": 2,
                                 "max_num_timeout": 20}},  # headroom on a loaded machine
    )
    code, _, err = run_cli(["submit", "--name", "limit"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(analysis.root).scan("limit")
    status = wait_until_settled(scan, limit_s=1500)  # ≈5 min here; a slower machine needs more requeues
    (record,) = scan.records()[0].values()
    assert status.count("done") == 1 and record.done
    assert record.resumed_from_epoch is not None and 0 < record.resumed_from_epoch < 2000
    assert record.epochs_run == 2000 and len(record.history["loss"]) == 2000
    # The history is continuous across the requeue: one value per epoch, no restart from scratch.
    assert len(record.history["val_loss"]) == 2000
    stderr = Path(record.log_path.replace("_log.out", "_log.err")).read_text()
    assert "timed-out" in stderr


def test_slurmd_killed_during_a_job_then_restarted(slurm_analysis, capsys, monkeypatch):
    code, _, err = run_cli(["submit", "--name", "node", "--split", "3"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("node")
    first = scan.manifest()["jobs"][0]["job_id"]
    wait_for_job_state(first, "RUNNING")
    pid_file = Path(os.environ["SLURM_CONF"]).parent.parent / "run" / "slurmd.pid"
    subprocess.run(["kill", "-9", pid_file.read_text().strip()], check=True)
    time.sleep(3)
    subprocess.run(["slurmd", "-f", os.environ["SLURM_CONF"]], check=True)
    wait_until_settled(scan)
    subprocess.run([str(SCRIPT), "status"], check=True, capture_output=True)
    code, _, err = run_cli(["resubmit", "node"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    wait_until_settled(scan)
    records_exactly_once(scan)


def test_unknown_resource_lists_the_valid_names(slurm_analysis, capsys, monkeypatch):
    slurm_analysis.edit_parameters(slurm={"resources": {"partiton": "gpu"}})
    code, _, err = run_cli(["submit", "--name", "bad"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and "slurm.resources.partiton: unknown Slurm resource" in err and "closest: partition" in err
    assert "timeout_min" in err and len(err.strip().splitlines()) == 1


def test_no_slurm_reachable_says_how_to_start_the_cluster(slurm_analysis, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nowhere.conf"))
    code, _, err = run_cli(["submit", "--name", "bad"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and "Slurm is not reachable" in err and "scripts/slurm-cluster.sh start" in err
    assert "nowhere.conf" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm clients at all
    code, _, err = run_cli(["submit", "--name", "bad"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and "Slurm is not installed here" in err


def cancel_jobs(scan) -> None:
    ids = [str(job["job_id"]) for job in scan.manifest().get("jobs", [])]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def test_a_refused_later_array_keeps_the_jobs_queued_before_it(slurm_analysis, capsys, monkeypatch):
    """sbatch refuses the second array of a submission: the first array's jobs are in the manifest, status follows
    them, and resubmit submits only the trials of the refused and later arrays."""
    slurm_analysis.edit_parameters(slurm={"max_array_size": 3})  # 6 trials, one per job: arrays of 2 jobs
    executor_class, calls = slurm.submitit.AutoExecutor, []
    real_map_array = executor_class.map_array

    def refuse_the_second(self, *args):
        calls.append(len(args[1]))
        if len(calls) == 2:
            # What submitit raises when sbatch exits non-zero: its stderr, as a FailedJobError.
            raise slurm.submitit.core.utils.FailedJobError("sbatch: error: QOSMaxSubmitJobPerUserLimit")
        return real_map_array(self, *args)

    monkeypatch.setattr(executor_class, "map_array", refuse_the_second)
    code, _, err = run_cli(["submit", "--name", "chunks", "--split", "1"], slurm_analysis.root, capsys, monkeypatch)
    scan = Workspace(slurm_analysis.root).scan("chunks")
    try:
        assert code == 1 and "sbatch refused the submission" in err and len(err.strip().splitlines()) == 1, err
        assert "the 2 job(s) of this submission queued before it are in the scan" in err, err
        assert "hhscan resubmit chunks" in err and calls == [2, 2]
        jobs = scan.manifest()["jobs"]
        queued = {trial_id for job in jobs for trial_id in job["trial_ids"]}
        assert len(jobs) == 2 and len(queued) == 2
        status = jobstate.scan_status(scan)
        assert {t.trial.id for t in status.of("pending", "running", "done")} == queued
        assert {t.trial.id for t in status.of("missing")} == {t.id for t in scan.trials()} - queued
        monkeypatch.setattr(executor_class, "map_array", real_map_array)
        code, out, err = run_cli(["resubmit", "chunks", "--dry-run"], slurm_analysis.root, capsys, monkeypatch)
        assert code == 0, err
        assert "would submit 4 trial(s)" in out and not any(trial_id in out for trial_id in queued), out
    finally:
        cancel_jobs(scan)


class SkewedClock:
    """The ``time`` module as seen on a login host whose clock runs an hour ahead of the controller's."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() + 3600


def test_jobs_are_recognised_by_slurms_own_submit_time_whatever_the_login_hosts_clock(
    slurm_analysis, capsys, monkeypatch
):
    """A login host an hour ahead, in a time zone 14 h from UTC: the scan's jobs are still the scan's (queued or
    running), never GONE, and their trials never counted missing."""
    slurm_analysis.edit_parameters(hyperparameters={"learning_rate": [0.01]})  # 2 trials, one job each
    monkeypatch.setattr(slurm, "time", SkewedClock())
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        code, _, err = run_cli(["submit", "--name", "skew", "--split", "1"], slurm_analysis.root, capsys, monkeypatch)
        assert code == 0, err
        scan = Workspace(slurm_analysis.root).scan("skew")
        try:
            status = jobstate.scan_status(scan)
            assert len(status.jobs) == 2 and all(info.state in jobstate.ACTIVE_STATES for info in status.jobs.values())
            assert status.count("missing") == 0 and status.count("pending") + status.count("running") == 2
        finally:
            cancel_jobs(scan)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_unknown_scan_lists_the_existing_ones(slurm_analysis, capsys, monkeypatch):
    run_cli(["run", "--local", "--name", "alpha", "--max-trials", "1"], slurm_analysis.root, capsys, monkeypatch)
    for command in (["status", "alpah"], ["resubmit", "alpah"]):
        code, _, err = run_cli(command, slurm_analysis.root, capsys, monkeypatch)
        assert code == 1 and "no scan 'alpah'" in err and "closest: alpha" in err


# --- Exactly once when Slurm forgets (leases), honest status ---------------------------------------------------

LONG_TRIALS = {"epochs": [200], "batch_size": [8], "neurons": [256], "layers": [3]}  # ≈0.1 s an epoch on one core
NO_CALLBACKS = {"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False}, "checkpoint_interval_s": 1}


class Watch:
    """Samples a scan while it runs: two live lease holders of one trial at once (two processes training it), or
    a DONE record that changes after it was first seen (an overwrite), are recorded as violations."""

    def __init__(self, scan):
        self.scan, self.first_done, self.violations = scan, {}, []

    def sample(self) -> None:
        store = leases.Leases(self.scan.root)
        for trial_id in {t.id for t in self.scan.trials()}:
            live = [lease for lease in store.history(trial_id) if lease.live()]
            if len(live) > 1:
                self.violations.append(f"{trial_id} trained by {[(x.job_id, x.pid) for x in live]} at once")
        for trial_id, record in self.scan.records()[0].items():
            if record.done:
                key = (record.attempt, record.finished_at, record.job_id)
                if self.first_done.setdefault(trial_id, key) != key:
                    self.violations.append(f"{trial_id} DONE record replaced: {self.first_done[trial_id]} → {key}")

    def until(self, condition, limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.sample()
            if condition():
                return
            release_requeued()
            time.sleep(1)
        raise AssertionError(f"{what} not reached in {limit_s} s")


def queued_job_ids() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


def training_epochs(scan) -> dict[str, int]:
    return {t: lease.epoch for t, lease in leases.Leases(scan.root).live().items()}


def test_controller_losing_its_state_while_tasks_run_then_resubmit_and_a_reused_job_id(
    slurm_analysis, capsys, monkeypatch
):
    monkeypatch.setenv("HHSCAN_LEASE_HEARTBEAT_S", "2")  # exported to the jobs by sbatch
    slurm_analysis.edit_parameters(hyperparameters={**LONG_TRIALS, "learning_rate": [0.01, 0.003, 0.001, 0.0003]},
                                   training=NO_CALLBACKS)  # fmt: skip
    code, _, err = run_cli(["submit", "--name", "lost", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("lost")
    watch = Watch(scan)
    watch.until(lambda: len(training_epochs(scan)) == 4 and min(training_epochs(scan).values()) >= 2, 180,
                "4 trials training")  # fmt: skip
    code, out, _ = run_cli(["status", "lost"], slurm_analysis.root, capsys, monkeypatch)
    assert "running: 4" in out and "pending: 0" in out and "elapsed" in out and "of 10:00" in out
    assert out.count("(2 trials)") == 2  # one line per job, its trials below it with their epoch
    assert "/200  best val_auc 0." in out, out
    old_jobs = scan.manifest()["jobs"]
    try:
        _lose_state_then_resubmit(scan, old_jobs, watch, slurm_analysis.root, capsys, monkeypatch)
    finally:
        subprocess.run(["scancel", "-n", "unrelated"], capture_output=True)
        if subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode != 0:  # slurmd left stopped
            subprocess.run(["slurmd", "-f", os.environ["SLURM_CONF"]], capture_output=True)
    watch.sample()
    assert watch.violations == []
    records_exactly_once(scan)
    for record in scan.records()[0].values():  # each resumed from its own checkpoint, none from scratch
        assert record.epochs_run == 200 and record.resumed_from_epoch and record.resumed_from_epoch >= 3


def _lose_state_then_resubmit(scan, old_jobs, watch, root, capsys, monkeypatch) -> None:
    subprocess.run([str(SCRIPT), "ctld-lose-state"], check=True, capture_output=True, timeout=120)
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""
    # A job unrelated to the scan now carries the scan's first array id (ids restart after a state loss).
    base = old_jobs[0]["job_id"].split("_")[0]
    hold = ["sbatch", "--parsable", "--hold", "--wrap", "sleep 300", "-J", "unrelated", "--array=0-1"]
    while (unrelated := int(subprocess.run(hold, capture_output=True, text=True, check=True).stdout)) < int(base):
        pass  # held, cancelled at the end
    assert unrelated == int(base)
    # The tasks still train, unknown to Slurm: their leases say so; the unrelated job's pending tasks under
    # the scan's ids are not the scan's.
    code, out, err = run_cli(["status", "lost"], root, capsys, monkeypatch)
    assert "running: 4" in out and "pending: 0" in out and "missing: 0" in out, out
    code, out, err = run_cli(["resubmit", "lost"], root, capsys, monkeypatch)
    assert code == 0 and "nothing to submit" in out, out + err
    assert len(scan.manifest()["jobs"]) == len(old_jobs)
    watch.sample()
    # The node comes back: the controller kills the tasks it does not know; their trials become missing.
    subprocess.run(["slurmd", "-f", os.environ["SLURM_CONF"]], check=True)
    watch.until(lambda: jobstate.scan_status(scan).count("missing") == 4, 120, "the orphaned tasks killed")
    code, out, err = run_cli(["status", "lost"], root, capsys, monkeypatch)
    assert "pending: 0" in out and "missing: 4" in out and "ended " in out, out
    code, out, err = run_cli(["resubmit", "lost"], root, capsys, monkeypatch)
    assert code == 0 and "submitted 4 trial(s)" in out, out + err
    watch.until(lambda: not jobstate.scan_status(scan).of("running", "pending", "missing"), 300, "settled")


def test_a_pack_exhausting_its_requeues_then_a_regrouped_resubmit_resumes_each_trial(
    slurm_analysis, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("HHSCAN_LEASE_HEARTBEAT_S", "2")
    slurm_analysis.edit_parameters(
        hyperparameters={**LONG_TRIALS, "learning_rate": [0.01, 0.001], "neurons": [256]},
        training=NO_CALLBACKS,
        slurm={"resources": {"timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2, "max_num_timeout": 0},
               "array_parallelism": 1},
    )
    code, _, err = run_cli(["submit", "--name", "spent", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("spent")
    (job,) = scan.manifest()["jobs"]
    watch = Watch(scan)
    def checkpointed() -> bool:  # both trials training, each with a checkpoint past epoch 2 (saved every 1 s)
        saved = [training.checkpoint_epoch(scan.root / "checkpoints", t.id) for t in scan.trials()]
        return len(training_epochs(scan)) == 2 and all(epoch is not None and epoch >= 2 for epoch in saved)

    watch.until(checkpointed, 180, "the pack training and checkpointed")
    # The checkpoint signal with no requeue left: submitit raises UncompletedJobError inside the training loop.
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True)
    watch.until(lambda: job["job_id"] not in queued_job_ids(), 120, "the job ended")
    log = Path(job["stdout"]).read_text() + Path(job["stdout"].replace("_log.out", "_log.err")).read_text()
    assert "timed-out too many times" in log
    assert scan.records()[0] == {}  # no trial was turned into a FAIL or retrained alone
    saved = {t.id: training.checkpoint_epoch(scan.root / "checkpoints", t.id) for t in scan.trials()}
    assert all(epoch is not None and epoch >= 2 for epoch in saved.values()), saved
    # Slurm unreachable: one line, fast, and only what the records prove (nothing is called missing).
    original = os.environ["SLURM_CONF"]
    dead = tmp_path / "dead.conf"  # what clients see with the daemons stopped: nothing answers on their ports
    dead.write_text(Path(original).read_text().replace("SlurmctldPort=6817", "SlurmctldPort=6917")
                    .replace("AccountingStoragePort=6819", "AccountingStoragePort=6919"))  # fmt: skip
    (tmp_path / "gres.conf").write_text((Path(original).parent / "gres.conf").read_text())
    monkeypatch.setenv("SLURM_CONF", str(dead))
    started = time.monotonic()
    code, out, err = run_cli(["status", "spent"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and time.monotonic() - started < 3, err
    assert "Slurm is unreachable" in out and "unknown: 2" in out and "missing: 0" in out
    assert "GONE" not in out and "resubmit" not in out and "sacct" not in out + err
    monkeypatch.setenv("SLURM_CONF", original)
    code, out, _ = run_cli(["status", "spent"], slurm_analysis.root, capsys, monkeypatch)
    assert "missing: 2" in out and f"job {job['job_id']}  (2 trials)  ended " in out, out
    # Regrouped: one trial per job, one job at a time. Each resumes from its own checkpoint.
    code, _, err = run_cli(["resubmit", "spent", "--split", "1"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    watch.until(lambda: len(training_epochs(scan)) == 1 and min(training_epochs(scan).values()) > 0, 120,
                "the first task training")  # fmt: skip
    code, out, _ = run_cli(["status", "spent"], slurm_analysis.root, capsys, monkeypatch)
    # One task runs, the other waits behind it in the same array: each is shown as what it is, and the log of
    # the task that has not started is not shown as if it existed.
    assert "running: 1" in out and "pending: 1" in out and "/200  best val_auc" in out, out
    not_started = [j["stdout"] for j in scan.manifest()["jobs"][1:] if not Path(j["stdout"]).exists()]
    assert len(not_started) == 1 and not_started[0] not in out.replace("\n", "")
    watch.until(lambda: not jobstate.scan_status(scan).of("running", "pending"), 300, "settled")
    watch.sample()
    assert watch.violations == []
    records_exactly_once(scan)
    for record in scan.records()[0].values():
        assert record.resumed_from_epoch == saved[record.trial_id] + 1 and record.epochs_run == 200
        assert len(record.history["loss"]) == 200
        log = Path(record.log_path).read_text()
        assert f"resuming trial {record.trial_id} from epoch {record.resumed_from_epoch}" in log
    # The last job cleans up after writing its record: wait for it to end before looking.
    watch.until(lambda: not scan_jobs_queued(scan), 120, "the jobs ended")
    assert not (scan.root / "checkpoints").exists() and not (scan.root / "leases").exists()


def test_a_task_past_its_memory_is_killed_and_resubmitted_with_more(slurm_analysis, capsys, monkeypatch):
    # The cluster enforces --mem (OverMemoryKill, sampled every 2 s): a worker (≈0.22 GB once Keras and JAX are
    # imported, more with data and training) under 0.15 GB is killed while it starts, before any trial can end
    # between two samples; submit warns with the measured baseline first.
    slurm_analysis.edit_parameters(hyperparameters={"learning_rate": [0.01]},  # 2 trials, one job each
                                   slurm={"resources": {"timeout_min": 10, "cpus_per_task": 1, "mem_gb": 0.15}})
    code, _, err = run_cli(["submit", "--name", "oom"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and "hhscan: warning: slurm.resources.mem_gb 0.15 GB" in err and "baseline of" in err, err
    scan = Workspace(slurm_analysis.root).scan("oom")
    status = wait_until_settled(scan)
    # OverMemoryKill ends the job FAILED (OUT_OF_MEMORY is the cgroup OOM killer's state); Slurm says why in
    # the job's stderr, and status repeats it.
    assert status.count("missing") == 2 and {t.job_state for t in status.trials} == {"FAILED"}
    for job in scan.manifest()["jobs"]:
        assert "exceeded memory limit" in Path(job["stdout"].replace("_log.out", "_log.err")).read_text()
    code, out, _ = run_cli(["status", "oom"], slurm_analysis.root, capsys, monkeypatch)
    assert out.count("ended FAILED (killed past its memory limit: raise slurm.resources.mem_gb)") == 2
    slurm_analysis.edit_parameters(slurm={"resources": {"mem_gb": 2}})
    code, _, err = run_cli(["resubmit", "oom"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0 and "warning" not in err, err
    wait_until_settled(scan)
    records_exactly_once(scan)


def test_a_job_failing_before_training_shows_its_error_in_status(slurm_analysis, capsys, monkeypatch):
    """GPUs given but the backend sees none (the cluster's GPUs are emulated) and no HHSCAN_ALLOW_CPU: the job
    ends FAILED before any trial, and status shows the first line of its error, as the job's stderr ends with."""
    monkeypatch.delenv("HHSCAN_ALLOW_CPU")  # sbatch exports the environment to the job
    slurm_analysis.edit_parameters(hyperparameters={"learning_rate": [0.01], "neurons": [4]})  # one trial
    code, _, err = run_cli(["submit", "--name", "nogpu"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("nogpu")
    status = wait_until_settled(scan)
    assert status.count("missing") == 1 and {t.job_state for t in status.trials} == {"FAILED"}
    (job,) = scan.manifest()["jobs"]
    stderr = Path(job["stdout"].replace("_log.out", "_log.err")).read_text().splitlines()
    raised = [line for line in stderr if line.startswith("hhscan.errors.DeviceError: ")]
    assert raised and "but the" in raised[-1] and "sees none" in raised[-1]
    code, out, _ = run_cli(["status", "nogpu"], slurm_analysis.root, capsys, monkeypatch)
    printed = " ".join(out.split())  # rich wraps long lines
    expected = raised[-1].removeprefix("hhscan.errors.")
    assert f"job {job['job_id']} (1 trial) ended FAILED: {' '.join(expected.split())}" in printed, printed


def test_an_array_task_that_just_ended_has_its_final_state_before_accounting_catches_up(cluster, tmp_path):
    # slurmdbd lags the controller: for seconds after the tasks end, sacct shows the array as one combined row
    # (or still running). The controller's ended-job record is the truth then; the CI run on record once called
    # such tasks GONE and took an out-of-memory kill for a lost job.
    submitted_before = time.time()
    job = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--job-name=ends-at-once", "-o", str(tmp_path / "%a"),
                          "--wrap", "exit 3"], capture_output=True, text=True, check=True).stdout.strip()
    jobs = [{"job_id": f"{job}_{task}", "job_name": "ends-at-once", "submitted_before": submitted_before,
             "submitted_at": time.time()} for task in (0, 1)]
    # Polled from submission until both tasks have ended (they may run one after the other on a busy node): the
    # first state seen after each ends must be its real one, never GONE.
    deadline, states = time.monotonic() + 120, set()
    while time.monotonic() < deadline and not (states and not states & jobstate.ACTIVE_STATES):
        states = {info.state for info in jobstate.job_infos(jobs).values()}
        assert "GONE" not in states, states
        time.sleep(0.2)
    assert states == {"FAILED"}, states


# --- Adaptive search on the real cluster ------------------------------------------------------------------------


def scan_jobs_queued(scan) -> set[str]:
    ours = {str(job["job_id"]) for job in scan.manifest().get("jobs", [])}
    return ours & queued_job_ids()


def freeze_a_worker_mid_trial(scan, watch: Watch, array_ids: set[str]) -> leases.Lease:
    """Stops (SIGSTOP) a worker of one of these arrays while it holds a live lease and its trial has no record yet.

    A trial can end between seeing its lease and the kill: stopping the process first, then checking for its record,
    makes "killed mid-trial" certain; a worker that finished in between is let go."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        watch.sample()
        for lease in leases.Leases(scan.root).live().values():
            if lease.job_id.split("_")[0] not in array_ids or lease.host != socket.gethostname():
                continue
            try:
                os.kill(lease.pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            still = leases.Leases(scan.root).live().get(lease.trial_id)
            if lease.trial_id not in scan.records()[0] and still is not None and still.attempt == lease.attempt:
                return lease
            os.kill(lease.pid, signal.SIGCONT)
        time.sleep(0.5)
    raise AssertionError("no worker of the first array caught mid-trial in 240 s")


def test_adaptive_scan_with_two_arrays_at_once_and_a_killed_worker_trains_the_budget_exactly_once(
    slurm_analysis, capsys, monkeypatch
):
    from hhscan.execution import search

    # Long enough epochs that a worker can be killed mid-pack; a median pruner with no warm-up, so some trials are
    # pruned once two have finished.
    slurm_analysis.edit_parameters(
        hyperparameters={"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "neurons": [64, 128],
                         "layers": [2], "epochs": [12], "batch_size": [16]},
        search={"sampler": "tpe", "trials": 6, "pruner": "median", "seed": 3,
                "pruner_settings": {"n_startup_trials": 2, "n_warmup_steps": 0}},
        training={"pack_size": 2, "early_stopping": {"enabled": False}, "checkpoint_interval_s": 1},
    )  # fmt: skip
    code, _, err = run_cli(["submit", "--name", "ad", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(slurm_analysis.root).scan("ad")
    first_array = set(scan_jobs_queued(scan))
    # A second array on the same scan while the first runs: the budget raised to 10, resubmit sends workers for
    # the 4 trials no queued worker covers.
    slurm_analysis.edit_parameters(search={"trials": 10})
    code, out, err = run_cli(["resubmit", "ad", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    second_array = scan_jobs_queued(scan) - first_array
    assert second_array, out
    watch = Watch(scan)
    # One worker of the first array dies mid-trial (SIGKILL, as the OOM killer or a failing node would). Not scancel:
    # its SIGTERM is only logged by submitit, and a trial can end in the KillWait that follows (CI saw one).
    victim = freeze_a_worker_mid_trial(scan, watch, {j.split("_")[0] for j in first_array})
    os.kill(victim.pid, signal.SIGKILL)
    watch.until(lambda: not scan_jobs_queued(scan), 600, "every worker ended")
    records, corrupt = scan.records()
    assert victim.trial_id not in records or records[victim.trial_id].job_id != victim.job_id
    # The killed worker's trial is asked and unrecorded: resubmit trains exactly what is missing.
    code, out, err = run_cli(["resubmit", "ad", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    watch.until(lambda: not scan_jobs_queued(scan), 600, "the resubmitted workers ended")
    watch.sample()
    assert watch.violations == []
    records, corrupt = scan.records()
    slots = [asked.trial.id for asked in search.read_asked(scan.root)]
    assert not corrupt and len(slots) == 10 == len(set(slots))  # the budget, each point once
    assert set(records) == set(slots)  # every asked trial recorded, none beyond the budget
    states = {record.status for record in records.values()}
    assert states <= {"DONE", "PRUNED"} and "PRUNED" in states, states
    for record in records.values():
        if record.status == "PRUNED":
            assert 1 <= record.pruned_epoch < 12 and record.epochs_run == record.pruned_epoch
    code, out, _ = run_cli(["status", "ad"], slurm_analysis.root, capsys, monkeypatch)
    assert "(10 trials, 10 asked)" in out and "missing: 1" not in out, out


def test_an_adaptive_worker_past_its_time_limit_is_requeued_and_resumes_its_own_trial(
    analysis, cluster, capsys, monkeypatch
):
    from hhscan.execution import search

    analysis.edit_parameters(
        # ≈2 min of training on an idle core (≈0.09 s an epoch), so a 2-minute limit with a 60 s signal delay falls
        # mid-training; up to 20 requeues leave headroom on a loaded machine.
        hyperparameters={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "epochs": [1200],
                         "batch_size": [8], "neurons": [256], "layers": [3]},
        search={"sampler": "random", "trials": 1, "seed": 5},
        training={"early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False}, "checkpoint_interval_s": 0},
        slurm={"resources": {"timeout_min": 2, "slurm_signal_delay_s": 60, "cpus_per_task": 1, "mem_gb": 2,
                             "max_num_timeout": 20}},
    )  # fmt: skip
    code, _, err = run_cli(["submit", "--name", "adlimit"], analysis.root, capsys, monkeypatch)
    assert code == 0, err
    scan = Workspace(analysis.root).scan("adlimit")
    watch = Watch(scan)
    watch.until(lambda: not scan_jobs_queued(scan), 1500, "the worker ended")
    assert watch.violations == []
    (asked,) = search.read_asked(scan.root)  # one point asked, never a second one after the requeue
    (record,) = scan.records()[0].values()
    assert record.trial_id == asked.trial.id and record.done
    assert record.resumed_from_epoch is not None and 0 < record.resumed_from_epoch < 1200
    assert record.epochs_run == 1200 and len(record.history["val_loss"]) == 1200
    assert "timed-out" in Path(record.log_path.replace("_log.out", "_log.err")).read_text()


def test_an_own_model_scan_runs_on_slurm_from_the_scans_copy_of_its_source(slurm_analysis, capsys, monkeypatch):
    """An own model (residual blocks × width) submitted to the cluster: the jobs import the scan's copy of the
    model file, so editing the user's file after submission changes no job; report exports a zip plain Keras loads."""
    from test_own_model import NETS_BAR, own_model

    own_model(slurm_analysis, hyperparameters={"blocks": [1, 2], "width": [4, 8], "epochs": [1]})
    code, _, err = run_cli(["submit", "--name", "own", "--split", "2"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    # The user's file broken at once: a job that imported it would fail.
    (slurm_analysis.parameters.parent / "nets_bar.py").write_text(NETS_BAR + "\nraise RuntimeError('edited')\n")
    scan = Workspace(slurm_analysis.root).scan("own")
    status = wait_until_settled(scan)
    assert status.count("done") == 4, [t.record.error for t in status.trials if t.record is not None]
    records_exactly_once(scan)
    records, _ = scan.records()
    assert {(r.hyperparameters["blocks"], r.hyperparameters["width"]) for r in records.values()} == {
        (1, 4), (1, 8), (2, 4), (2, 8)}  # fmt: skip
    # resubmit of the scan now refuses the changed source in one line, submitting nothing.
    code, _, err = run_cli(["resubmit", "own"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "nets_bar.py" in err, err
    code, _, err = run_cli(["report", "own", "--no-plots"], slurm_analysis.root, capsys, monkeypatch)
    assert code == 0, err
    best = slurm_analysis.root / "models" / "own_best.zip"
    check = ("import sys, zipfile, io, keras; z = zipfile.ZipFile(sys.argv[1]); "
             "open('m.keras', 'wb').write(z.read('model.keras')); m = keras.saving.load_model('m.keras'); "
             "print(m.count_params())")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", check, str(best)], capture_output=True, text=True,
                            cwd=slurm_analysis.root, env={**os.environ, "KERAS_BACKEND": "jax"})  # fmt: skip
    assert loaded.returncode == 0 and int(loaded.stdout.split()[-1]) > 0, loaded.stderr[-2000:]
