"""Cluster-safe fan-outs: node-local stores refused on several machines, ``--resume`` of an interrupted fan-out,
memory reserved per trial.

The resume test is real: a ``parley train`` driver in a subprocess, connected to the session's local Ray cluster,
is SIGKILLed once Tune's experiment state holds a trial checkpoint; ``parley train --resume`` then restores the
Tune experiment and the trial finishes in its own MLflow run (an ``mlflow server`` on loopback).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import cli, fanout, registry, tracking
from jobs.fanout_config import FanoutError, FanoutJob
from tests.services import mlflow_server, stop_group

pytestmark = pytest.mark.timeout(900)

IDENTITY = "RD_Radio2_000"
GB = 2**30
NFS_MOUNTS = "server:/export /mnt/shared nfs4 rw,relatime 0 0\n/dev/nvme0n1p1 / ext4 rw,relatime 0 0\n"


def node(address: str, cpu: float = 8, memory_gb: float = 32, alive: bool = True) -> dict:
    """One entry of ``ray.nodes()`` (the keys :func:`jobs.fanout.check_cluster` reads)."""
    return {"NodeID": f"id-{address}-{cpu}", "Alive": alive, "NodeManagerAddress": address,
            "Resources": {"CPU": cpu, "memory": memory_gb * GB}}


def test_several_machines_refuse_node_local_stores_with_one_message(monkeypatch):
    """Two machines: the default SQLite store and the default ~/ray_results are refused together, naming the flags
    to pass; a server and S3 are accepted, and so is a storage directory on an NFS mount."""
    monkeypatch.delenv("RAY_STORAGE", raising=False)
    two = [node("10.0.0.1", cpu=0), node("10.0.0.2")]
    job = FanoutJob(dataset="s3://b/ds")
    with pytest.raises(FanoutError) as err:
        fanout.check_cluster(two, job, "sqlite:////home/u/mlflow.db", mounts=NFS_MOUNTS)
    msg = str(err.value)
    assert "spans 2 machines" in msg and "sqlite:////home/u/mlflow.db" in msg and "(the default)" in msg, msg
    assert "--tracking-uri http://" in msg and "--storage s3://" in msg and "\n" not in msg, msg
    for uri in ("file:///home/u/mlruns", "mlruns"):  # MLflow's file store is as node-local
        with pytest.raises(FanoutError, match="is a file on one machine"):
            fanout.check_cluster(two, FanoutJob(dataset="d", storage="s3://b/tune"), uri, mounts=NFS_MOUNTS)

    server = "http://mlflow:5000"
    fanout.check_cluster(two, FanoutJob(dataset="d", storage="s3://b/tune"), server, mounts=NFS_MOUNTS)
    fanout.check_cluster(two, FanoutJob(dataset="d", storage="/mnt/shared/tune"), server, mounts=NFS_MOUNTS)
    with pytest.raises(FanoutError) as err:
        fanout.check_cluster(two, FanoutJob(dataset="d", storage="/data/tune"), server, mounts=NFS_MOUNTS)
    assert "the Tune storage /data/tune is a directory on one machine" in str(err.value)
    assert "--tracking-uri" not in str(err.value)  # only what is wrong is named


def test_autoscaling_head_alone_counts_as_several_machines_and_dead_nodes_do_not():
    """A head that takes no trials (CPU 0, workers yet to come) refuses node-local stores; a dead node is ignored."""
    job = FanoutJob(dataset="d", storage="/data/tune")
    with pytest.raises(FanoutError, match="no node of this Ray cluster fits a trial yet"):
        fanout.check_cluster([node("10.0.0.1", cpu=0)], job, "http://mlflow:5000", mounts="")
    # several raylets of one machine share its disk
    fanout.check_cluster([node("10.0.0.1", cpu=0), node("10.0.0.1"), node("10.0.0.2", alive=False)], job,
                  "sqlite:////tmp/m.db", mounts="")


def test_one_machine_refuses_more_memory_per_trial_than_it_has():
    """A trial asking more memory than the one machine offers Ray would wait forever: refused up front."""
    job = FanoutJob(dataset="d", storage="/data/tune", memory_per_trial_gb=16)
    with pytest.raises(FanoutError, match=r"--memory-per-trial-gb 16: this machine offers Ray 8.0 GB"):
        fanout.check_cluster([node("10.0.0.1", memory_gb=8)], job, "sqlite:////tmp/m.db", mounts="")
    fanout.check_cluster([node("10.0.0.1", memory_gb=8)], FanoutJob(dataset="d", memory_per_trial_gb=0), "sqlite:////m.db")


def test_the_local_single_node_cluster_accepts_local_stores(ray_local, tmp_path):
    """The session's real one-node Ray cluster takes a SQLite store and a local Tune storage directory."""
    job = FanoutJob(dataset="d", storage=str(tmp_path / "tune"), memory_per_trial_gb=1)
    fanout.check_cluster(ray_local.nodes(), job, tracking.resolve_tracking_uri(str(tmp_path / "mlflow.db")))


def test_default_store_under_ray_job_submit_is_refused(tmp_path, monkeypatch):
    """The default SQLite file in a job's unpacked working_dir (Ray's session directory) is refused, and so is the
    default store of any `ray job submit` driver; an explicit durable store is not."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pkg = tmp_path / "session_2025-01-02_03-04-05_123456_789" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    uri = tracking.resolve_tracking_uri(None)
    with pytest.raises(tracking.TrackingError, match="lies in Ray's temporary session directory"):
        tracking.check_store_location(uri, defaulted=True, environ={})
    with pytest.raises(tracking.TrackingError, match="temporary session directory"):  # explicit but relative
        tracking.check_store_location(tracking.resolve_tracking_uri("mlflow.db"), defaulted=False, environ={})
    monkeypatch.chdir(tmp_path)
    submitted = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {},
                                                            "metadata": {"job_submission_id": "raysubmit_42"}})}
    with pytest.raises(tracking.TrackingError, match=r"raysubmit_42: no tracking store given.*--tracking-uri http"):
        tracking.check_store_location(tracking.resolve_tracking_uri(None), defaulted=True, environ=submitted)
    tracking.check_store_location(f"sqlite:///{tmp_path}/keep/mlflow.db", defaulted=False, environ=submitted)
    tracking.check_store_location("http://mlflow:5000", defaulted=False, environ=submitted)
    tracking.check_store_location(tracking.resolve_tracking_uri(None), defaulted=True, environ={})


def test_parley_train_in_a_ray_job_working_dir_stops_before_ray(small_dataset, tmp_path, monkeypatch, capsys):
    """`parley train` with the default store, run from a job's unpacked working_dir, exits 2 with the fix and leaves
    no mlflow.db there."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pkg = tmp_path / "session_2025-01-02_03-04-05_123456_789" / "runtime_resources" / "working_dir_files" / "_ray_pkg_2"
    pkg.mkdir(parents=True)
    monkeypatch.chdir(pkg)
    rc = cli.main(["train", "--dataset", str(small_dataset), "--preset", "debug", "--storage", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "temporary session directory" in err and "--tracking-uri http://" in err, err
    assert not (pkg / "mlflow.db").exists() and not (tmp_path / "t").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-resume")) as s:
        yield s


def _trial_runs(uri: str, experiment: str, tune_name: str):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = 'trial'")
            if r.data.tags[tracking.TRIAL_TAG].startswith(f"{tune_name}/")]


def test_killed_driver_resumes_in_the_same_run_and_registers(small_dataset, server, ray_local, tmp_path,
                                                             monkeypatch, capsys):
    """SIGKILL a `parley train` driver once Tune's state holds a checkpoint; a new fan-out then names it with the
    --resume command; `parley train --resume` finishes the trial from its checkpoint in the same MLflow run and
    registers the model; resuming again re-trains nothing and registers nothing new."""
    storage, scratch = tmp_path / "tune", tmp_path / "scratch"
    gcs = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--dataset", str(small_dataset), "--preset", "debug",
           "--steps-scale", "10", "--tracking-uri", server.url, "--experiment", "resume", "--storage", str(storage),
           "--work-root", str(scratch), "--name", "resumable", "--address", gcs, "--memory-per-trial-gb", "1.5"]
    # Tune saves its experiment state at most every 10 s by default; every second here, so the kill comes sooner
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1",
           "PARLEY_ASSETS": str(Path(os.environ["PARLEY_ASSETS"]).resolve())}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    reserved = 0.0
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:
            states = list((storage / "resumable").glob("experiment_state-*.json"))
            total, free = ray_local.cluster_resources(), ray_local.available_resources()
            reserved = max(reserved, total.get("memory", 0) - free.get("memory", 0))
            if any(re.search(r"checkpoint_\d{6}", s.read_text(errors="replace")) for s in states):
                os.killpg(driver.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        stop_group(driver, timeout=5)
    assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert reserved >= 1.5 * GB * 0.99, reserved  # the trial held --memory-per-trial-gb of Ray's memory resource
    [pid_file] = scratch.glob("resumable/*/pid")
    first_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60  # Ray ends the dead driver's trial actor
    while time.monotonic() < deadline and Path(f"/proc/{first_pid}").exists():
        time.sleep(0.2)
    [run] = _trial_runs(server.url, "resume", "resumable")
    assert run.info.status == "RUNNING"  # what an interrupted driver leaves behind

    # a new fan-out in the same experiment names the interrupted one and the command (stopped before its trials)
    import ray.tune

    class NoTrials(Exception):
        pass

    def no_tuner(*args, **kwargs):
        raise NoTrials

    with monkeypatch.context() as m:
        m.setattr(ray.tune, "Tuner", no_tuner)
        with pytest.raises(NoTrials):
            fanout.run_fanout(FanoutJob(dataset=str(small_dataset), preset="debug", tracking_uri=server.url,
                                 experiment="resume", storage=str(tmp_path / "other"), name="fresh"))
    note = [line for line in capsys.readouterr().err.splitlines() if "still marked RUNNING" in line]
    assert note == [f"note: MLflow experiment resume holds runs still marked RUNNING from resumable (1 run); if that "
                    "driver stopped, resume it (finished trials are kept, the others continue in their runs): "
                    f"parley train --resume resumable --storage {storage}"], note

    # an unknown name: one line listing what the storage holds
    assert cli.main(["train", "--resume", "nosuch", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train: --resume nosuch: no fan-out 'nosuch' in the Tune storage {storage} (fan-outs there: " \
                  "resumable); pass the --storage it ran with", err

    resume = ["train", "--resume", "resumable", "--storage", str(storage), "--work-root", str(scratch)]
    assert cli.main(resume) == 0  # dataset, preset, steps and tracking store come from the fan-out's record
    out = capsys.readouterr().out
    assert f"registered avatar-{IDENTITY} version 1" in out, out
    [run] = _trial_runs(server.url, "resume", "resumable")  # the same run, no duplicate
    assert run.info.status == "FINISHED" and int(run.data.tags["parley.resumed_from_step"]) >= 10, run.data.tags
    assert int(pid_file.read_text()) != first_pid  # a new trial process finished it
    c = tracking.client(server.url)
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss"))
    total = sum(json.loads(run.data.params[f"config.trainer.{s}.steps"]) for s in ("head", "lips", "torso"))
    assert total == 220 and steps == list(range(1, total + 1))  # every step once, re-trained steps not re-logged
    [version] = registry.versions(server.url, registry.model_name(IDENTITY))
    assert version.run_id == run.info.run_id and version.metrics["psnr"] > 5

    # everything finished: a second resume trains nothing and registers nothing new
    assert cli.main(resume) == 0
    out = capsys.readouterr().out
    assert f"registered avatar-{IDENTITY} version 1" in out, out
    [again] = _trial_runs(server.url, "resume", "resumable")
    assert again.info.end_time == run.info.end_time and again.info.status == "FINISHED"
    assert [v.version for v in registry.versions(server.url, registry.model_name(IDENTITY))] == [1]
