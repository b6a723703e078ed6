"""Per-identity fan-out on Ray Tune, tracked in a real ``mlflow server``, registered, rendered from the registry.

Everything is real: the local Ray cluster of the session (2 CPUs), an ``mlflow server`` subprocess with a
SQLite store on a loopback port, the shared clips (30 frames per identity), the debug preset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs import registry, tracking
from jobs.fanout import run_fanout
from jobs.fanout_config import FanoutError, FanoutJob
from tests.conftest import ROOT, SHARED
from tests.services import AWS_UNSET, free_port, mlflow_server, moto_server, patched_environ
from workers.audio_decode import audio_duration
from workers.media import probe

pytestmark = pytest.mark.timeout(900)

AUDIO = SHARED / "data" / "audio" / "RD_Radio31_000.wav"
IDS = ["RD_Radio2_000", "WDA_BobMenendez_000"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as s:
        yield s


@pytest.fixture(scope="module")
def fanout(two_identity_dataset, server, ray_local, tmp_path_factory):
    """Both identities trained at once (one CPU each), tracked in the server, registered."""
    work = tmp_path_factory.mktemp("fanout")
    job = FanoutJob(dataset=str(two_identity_dataset), preset="debug", tracking_uri=server.url,
                    storage=str(work / "tune"), work_root=str(work / "scratch"), cpus_per_trial=1.0,
                    max_concurrent=2, name="two-ids")
    return run_fanout(job), job


def _runs(uri: str, exp_id: str):
    return tracking.client(uri).search_runs([exp_id], filter_string=f"tags.`{tracking.KIND_TAG}` = 'trial'")


def test_two_identities_train_concurrently_each_with_its_run(fanout, server):
    out, _ = fanout
    assert sorted(t["identity"] for t in out["trials"]) == IDS
    assert all(t["status"] == "done" for t in out["trials"]), out["trials"]
    runs = {r.data.tags[tracking.IDENTITY_TAG]: r for r in _runs(server.url, out["mlflow_experiment_id"])}
    assert sorted(runs) == IDS  # one run per trial, nothing else
    a, b = runs.values()
    # the two trials ran at the same time (the runs' lifetimes overlap)
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time, (a.info, b.info)
    c = tracking.client(server.url)
    for ident, run in runs.items():
        assert run.info.status == "FINISHED"
        p = run.data.params
        assert p["identity"] == ident and p["preset"] == "debug" and p["method"] == "radnerf"
        assert p["config.method"] == "radnerf" and run.data.tags["parley.method"] == "radnerf"
        assert p["config.trainer.size"] == "64" and "config.model.head.audio_coord_dim" in p
        assert len(p["dataset_version"]) == 12 and p["git_commit"]
        # per-step loss history over every stage, per-stage summaries, held-out metrics
        loss = c.get_metric_history(run.info.run_id, "loss")
        assert len(loss) == 22 and sorted(m.step for m in loss) == list(range(1, 23))
        for stage in ("head", "lips", "torso"):
            assert f"stage_{stage}_seconds" in run.data.metrics
        assert run.data.metrics["psnr"] > 5 and 0 <= run.data.metrics["lpips"] <= 1
        assert len(c.get_metric_history(run.info.run_id, "val_psnr")) >= 2
        arts = {f.path for f in c.list_artifacts(run.info.run_id)}
        assert {"config.json", "evaluation", "qc", "avatar"} <= arts, arts
        ev = {f.path for f in c.list_artifacts(run.info.run_id, "evaluation")}
        assert ev == {"evaluation/eval.json", "evaluation/eval_side_by_side.mp4"}
        assert len(c.list_artifacts(run.info.run_id, "qc")) >= 1
        assert "avatar/MLmodel" in {f.path for f in c.list_artifacts(run.info.run_id, "avatar")}


def test_registry_holds_both_and_promote_render_from_champion(fanout, server, tmp_path):
    out, _ = fanout
    uri = server.url
    assert out["registered"] == {f"avatar-{i}": 1 for i in IDS}
    listed = {r["name"]: r for r in registry.list_models(uri)}
    assert sorted(listed) == [f"avatar-{i}" for i in IDS] and all(not r["aliases"] for r in listed.values())
    assert all(v.tags["method"] == "radnerf" for i in IDS for v in registry.versions(uri, f"avatar-{i}"))

    # no champion yet: a clear error naming the fix
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    model = f"models:/avatar-{IDS[0]}@champion"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "render", "--model", model, "--audio", str(AUDIO),
                        "--out", str(tmp_path / "x.mp4")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "has no alias 'champion'" in r.stderr and "promote" in r.stderr, r.stderr

    r = subprocess.run([sys.executable, "-m", "jobs.cli", "registry", "promote"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(f"avatar-{i}@champion -> version 1" in r.stdout for i in IDS), r.stdout
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "registry", "list", "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("@champion=v1") == 2 and "psnr=" in r.stdout, r.stdout

    video = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "render", "--model", model, "--audio", str(AUDIO),
                        "--out", str(video)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = probe(video)
    assert info.has_audio and abs(info.duration_s - audio_duration(AUDIO)) < 0.2, info

    # the pyfunc interface itself: audio paths in, video paths out
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/avatar-{IDS[1]}@champion")
    vids = pyfunc.predict([str(AUDIO)], params={"out_dir": str(tmp_path / "pf"), "size": 32})
    assert len(vids) == 1 and Path(vids[0]).parent == tmp_path / "pf", vids  # params reach predict
    info = probe(vids[0])
    assert info.has_audio and (info.width, info.height) == (32, 32), info


def test_registry_bad_names_give_clear_errors(fanout, server, tmp_path):
    uri = server.url
    with pytest.raises(registry.RegistryError, match=r"no registered model 'avatar-nobody' \(registered: avatar-"):
        registry.resolve(uri, "models:/avatar-nobody@champion")
    with pytest.raises(registry.RegistryError, match="has no alias 'staging'"):
        registry.resolve(uri, f"models:/avatar-{IDS[0]}@staging")
    with pytest.raises(registry.RegistryError, match="has no version 7"):
        registry.promote(uri, identity=IDS[0], version=7)
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "render", "--model", "models:/avatar-nobody@champion",
                        "--audio", str(AUDIO), "--out", str(tmp_path / "n.mp4"), "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no registered model 'avatar-nobody'" in r.stderr, r.stderr
    assert not (tmp_path / "n.mp4").exists()


def test_bad_input_fails_before_any_trial(two_identity_dataset, server, tmp_path):
    with pytest.raises(FanoutError, match=r"no identity 'nobody' \(identities: RD_Radio2_000, WDA_BobMenendez_000\)"):
        run_fanout(FanoutJob(dataset=str(two_identity_dataset), identities=["nobody"], tracking_uri=server.url))
    empty = tmp_path / "empty"
    (empty / "clips").mkdir(parents=True)
    with pytest.raises(FanoutError, match="has no identities"):
        run_fanout(FanoutJob(dataset=str(empty), tracking_uri=server.url))
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        run_fanout(FanoutJob(dataset=str(tmp_path / "nothing"), tracking_uri=server.url))
    with pytest.raises(FanoutError, match="no field 'audio_dim'"):
        run_fanout(FanoutJob(dataset=str(two_identity_dataset), tracking_uri=server.url,
                             space={"model.head.audio_dim": {"grid": [1, 2]}}))


def test_unreachable_tracking_server_fails_before_compute(two_identity_dataset, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "train", "--dataset", str(two_identity_dataset),
                        "--preset", "debug", "--tracking-uri", dead, "--storage", str(tmp_path / "tune")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"MLflow tracking server {dead} is unreachable" in r.stderr, r.stderr
    assert time.monotonic() - t < 60
    assert not (tmp_path / "tune").exists()  # no Tune experiment was started


def test_killed_worker_resumes_from_its_s3_checkpoint_in_the_same_run(small_dataset, server, ray_local, tmp_path):
    """Trial storage on S3 (a moto server that checks signatures: the credentials must reach the trials).

    SIGKILL the trial's worker process once a checkpoint after its first is in the bucket; Tune restarts the trial
    from its latest checkpoint in the bucket (not from scratch) and it finishes in the same MLflow run.
    (Local trial storage is what the other tests use.)"""
    scratch = tmp_path / "scratch"
    with moto_server(tmp_path, require_auth=True) as s3, patched_environ(s3.credentials, AWS_UNSET):
        from pipelines.storage import S3Options

        client = S3Options(endpoint_url=s3.url).boto3_client()
        client.create_bucket(Bucket="tune")

        def keys() -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket="tune", Prefix="runs/s3fault/")
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

        job = FanoutJob(dataset=str(small_dataset), preset="debug", steps_scale=12.0, tracking_uri=server.url,
                        experiment="s3fault", storage="s3://tune/runs", s3_endpoint=s3.url,
                        work_root=str(scratch), name="s3fault", max_failures=2, register=False)
        killed: dict[str, int] = {}

        def killer() -> None:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and not killed:
                pids = list(scratch.glob("s3fault/*/pid"))
                # any checkpoint after the first (Tune keeps two: checkpoint_000001 alone is gone in a second)
                if pids and any(re.search(r"/checkpoint_0*[1-9][0-9]*/", k) for k in keys()):
                    pid = int(pids[0].read_text())
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                time.sleep(0.2)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        out = run_fanout(job)
        th.join(timeout=5)
        objects = keys()
    assert killed, "the trial finished before it could be killed"
    [trial] = out["trials"]
    assert trial["status"] == "done", trial
    # restored from a checkpoint in the bucket (step 10 or 20: the second may not be registered yet), not step 0
    assert trial["metrics"]["resumed_from_step"] >= 10, trial
    assert trial["path"].startswith("tune/runs/s3fault/"), trial["path"]
    pid_now = int(next(scratch.glob("s3fault/*/pid")).read_text())
    assert pid_now != killed["pid"]  # another worker process finished it
    ckpts = {k.split("/checkpoint_")[1].split("/")[0] for k in objects if "/checkpoint_" in k}
    assert ckpts and all(any(k.endswith(f"checkpoint_{c}/checkpoint.pt") for k in objects) for c in ckpts), objects
    assert any(k.endswith("/state.json") for k in objects)
    assert any(k.startswith("runs/s3fault/") and "experiment_state" in k for k in objects), objects
    runs = _runs(server.url, out["mlflow_experiment_id"])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # no duplicate run
    run = runs[0]
    assert run.info.status == "FINISHED" and int(run.data.tags["parley.resumed_from_step"]) >= 10
    steps = sorted(m.step for m in tracking.client(server.url).get_metric_history(run.info.run_id, "loss"))
    total = sum(json.loads(run.data.params[f"config.trainer.{s}.steps"]) for s in ("head", "lips", "torso"))
    assert steps == list(range(1, total + 1))  # every step is in the one run, once (re-trained steps not re-logged)
    val_steps = [m.step for m in tracking.client(server.url).get_metric_history(run.info.run_id, "val_psnr")]
    assert len(val_steps) == len(set(val_steps)), val_steps


def test_sweep_asha_nests_trials_under_a_parent_run(small_dataset, server, ray_local, tmp_path):
    space = tmp_path / "sweep.yaml"
    space.write_text("preset: debug\nscheduler: {type: asha, grace_period: 1, reduction_factor: 2}\n"
                     "space:\n  model.head.audio_coord_dim: {grid: [1, 2]}\n")
    # a relative dataset path (trials run elsewhere: the driver must hand them an absolute one)
    rel = os.path.relpath(small_dataset, tmp_path)
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "sweep", "--dataset", rel, "--space",
                        str(space), "--tracking-uri", server.url, "--storage", str(tmp_path / "tune"),
                        "--experiment", "sweep", "--work-root", str(tmp_path / "scratch"),
                        "--cpus-per-trial", "1"], capture_output=True, text=True, timeout=800, cwd=tmp_path,
                       env={**os.environ, "PARLEY_ASSETS": str(Path(os.environ["PARLEY_ASSETS"]).resolve())})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    c = tracking.client(server.url)
    exp = c.get_experiment_by_name("sweep")
    [parent] = c.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = 'sweep'")
    trials = _runs(server.url, exp.experiment_id)
    assert len(trials) == 2 and all(t.data.tags[tracking.PARENT_TAG] == parent.info.run_id for t in trials)
    assert sorted(t.data.params["config.model.head.audio_coord_dim"] for t in trials) == ["1", "2"]
    assert parent.info.status == "FINISHED" and "best_psnr_RD_Radio2_000" in parent.data.metrics
    # a trial ASHA stopped early has no held-out metrics and is KILLED; a finished one has them
    for t in trials:
        assert (t.info.status == "FINISHED") == ("psnr" in t.data.metrics), (t.info.status, t.data.metrics)
        assert t.info.status in ("FINISHED", "KILLED")
    assert "registered avatar-RD_Radio2_000 version" in r.stdout


def test_sweep_example_is_valid():
    """The example in the repo parses, and every key it sweeps is a config field."""
    from jobs.fanout_config import apply_overrides, example_value, load_sweep, search_space
    from nerf.methods import preset

    doc = load_sweep(ROOT / "jobs" / "sweeps" / "radnerf.yaml")
    assert doc["space"] and doc["scheduler"]["type"] == "asha"
    apply_overrides(preset(doc.get("preset", "cpu")), {k: example_value(v) for k, v in doc["space"].items()})
    assert set(search_space(doc["space"])) == set(doc["space"])
    head = (ROOT / "jobs" / "sweeps" / "radnerf.yaml").read_text().splitlines()[:5]
    assert any("parley sweep" in line for line in head)


def test_bad_sweep_files_and_overrides_are_named(tmp_path):
    from jobs.fanout_config import apply_overrides, load_sweep, search_space
    from nerf.methods import preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: debug\nspaces: {}\n")
    with pytest.raises(FanoutError, match=r"bad.yaml: unknown keys spaces"):
        load_sweep(bad)
    bad.write_text("space: [unclosed\n")
    with pytest.raises(FanoutError, match="bad.yaml: cannot read the sweep file"):
        load_sweep(bad)
    with pytest.raises(FanoutError, match="cannot read the sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    with pytest.raises(FanoutError, match=r"expected one of grid, choice"):
        search_space({"model.head.audio_coord_dim": {"range": [1, 3]}})
    with pytest.raises(FanoutError, match="names a section"):
        apply_overrides(preset("debug"), {"model.head": 3})
    with pytest.raises(FanoutError, match=r"'trainer.head.lr_pose': stage config: invalid lr_pose=-1.0"):
        apply_overrides(preset("debug"), {"trainer.head.lr_pose": -1})
    with pytest.raises(FanoutError, match=r"'model.torso.pose_frequencies': torso config: invalid pose_frequencies=-1"):
        apply_overrides(preset("debug"), {"model.torso.pose_frequencies": -1})
    with pytest.raises(FanoutError, match=r"'model.head.audio_coord_dim': head config: invalid audio_coord_dim=4"):
        apply_overrides(preset("debug"), {"model.head.audio_coord_dim": 4})
    with pytest.raises(FanoutError, match=r"head config: invalid bound=0.0 \(> 0\)"):
        apply_overrides(preset("debug"), {"model.head.bound": 0})
    with pytest.raises(FanoutError, match=r"'trainer.head.steps': invalid literal"):
        apply_overrides(preset("debug"), {"trainer.head.steps": "many"})
    cfg = apply_overrides(preset("debug"), {"model.head.audio_coord_dim": 3.0, "trainer.head.lr_grid": "0.02"})
    assert cfg.model.head.audio_coord_dim == 3 and isinstance(cfg.model.head.audio_coord_dim, int)
    assert cfg.trainer.head.lr_grid == 0.02


def test_set_overrides_reach_the_recipe_of_both_modes(tmp_path):
    """``parley train --set KEY=VALUE``: a constant of every trial's search space on Ray, the recipe's field in
    local mode; a malformed item or an unknown field is a clear error."""
    import argparse

    from jobs.fanout_config import job_from_args, parse_sets
    from jobs.train import TrainJob, recipe
    from jobs.train_args import add_train_arguments

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(["-d", "D", "--method", "jean", "--set", "model.features=crop", "--set",
                         "model.ssl_audio=false", "--set", "trainer.head.steps=7"])
    job = job_from_args(args)
    assert job.space == {"model.features": "crop", "model.ssl_audio": False, "trainer.head.steps": 7}
    local = TrainJob(dataset="D", identity="x", output=tmp_path, method="jean", preset="debug",
                     overrides=parse_sets(args.overrides))
    cfg = recipe(local)
    assert cfg.model.features == "crop" and cfg.model.ssl_audio is False and cfg.trainer.head.steps == 7
    assert cfg.model.expression.features == 64  # the transformer's width follows the feature set
    with pytest.raises(FanoutError, match="expected KEY=VALUE"):
        parse_sets(["model.features"])
    with pytest.raises(FanoutError, match="no field 'feature'"):
        recipe(TrainJob(dataset="D", identity="x", output=tmp_path, method="jean", overrides={"model.feature": 1}))
