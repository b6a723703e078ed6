"""``ray job submit -- python -m jobs.cli build-dataset ...`` against a real ``ray start --head``.

The head runs in its own process group with its own ports and temp dir and is stopped by
signalling that group (never ``ray stop``, which would take down every Ray cluster on the machine).

Token authentication (Ray 2.60). ``ray start --head`` turns token auth on by itself when
``RAY_AUTH_MODE`` is unset and a token exists (``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``, which ``ray.init()`` and
``ray get-auth-token --generate`` create). The ``ray job`` client does not: it only sends the token
(``Authorization: Bearer ...``) when ``RAY_AUTH_MODE=token`` is set in *its* environment, and
otherwise fails with "Authentication required ... RAY_AUTH_MODE is currently 'disabled'". So the
way to drive a token-protected cluster is the same environment on both sides::

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/path/to/token   # or rely on ~/.ray/auth_token
    ray start --head ...
    ray job submit --address http://HEAD:8265 ...

This test does exactly that with a token of its own in a temporary file, so it neither depends on
nor touches ``~/.ray/auth_token``. The job's driver and the build's workers inherit the mode and
token path from the head (they need them to talk to the GCS).

``PARLEY_*`` variables are removed from the head's environment: ``PARLEY_ASSETS`` reaches the job
only through ``--runtime-env-json``, and the workers only because the build forwards it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.dataset import Dataset
from tests.conftest import CLIPS, ROOT, link_clip
from tests.services import BIN, http_status, ray_env, ray_head
from workers.clip import clip_id_for

pytestmark = pytest.mark.timeout(900)

N = 20  # frames per clip


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    """A fresh cluster token in a private file (what ``ray get-auth-token --generate`` writes to ~/.ray)."""
    path = tmp_path_factory.mktemp("auth") / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def head(token_file):
    """A ``ray start --head`` cluster with token auth, its job API answering on loopback."""
    env = ray_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
    for k in [k for k in env if k.startswith("PARLEY_") or k in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")]:
        del env[k]
    headers = {"Authorization": f"Bearer {token_file.read_text()}"}
    with ray_head(num_cpus=2, env=env, auth_headers=headers) as h:
        yield h


def api(head, path: str):
    """GET a job API path with the cluster token; the decoded JSON (or text)."""
    req = urllib.request.Request(f"{head.dashboard_url}{path}", headers=head.auth_headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read().decode()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def test_job_submit_builds_a_dataset_on_the_cluster(head, tmp_path):
    # token auth is really on: the job API refuses a request without the token
    assert http_status(f"{head.dashboard_url}/api/jobs/") == 401

    inputs = tmp_path / "inputs"
    clip = link_clip(CLIPS[-1], inputs / CLIPS[-1].name)
    (inputs / "notes.mp4").write_text("this is not a video\n")
    out = tmp_path / "ds"
    assets = Path(os.environ["PARLEY_ASSETS"]).resolve()
    submission_id = f"parley-build-{secrets.token_hex(4)}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--submission-id", submission_id,
           "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"env_vars": {"PARLEY_ASSETS": str(assets)}}),
           "--", "python", "-m", "jobs.cli", "build-dataset", "--input", str(inputs), "--output", str(out),
           "--max-frames", str(N), "--num-workers", "1"]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=head.env, cwd=tmp_path, capture_output=True, text=True, timeout=480)
    took = time.monotonic() - start
    log = f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, log

    # the job's own record: succeeded, and its logs hold the build's summary and progress lines
    info = api(head, f"/api/jobs/{submission_id}")
    assert info["status"] == "SUCCEEDED", info
    logs = api(head, f"/api/jobs/{submission_id}/logs")["logs"]
    assert re.search(r"built 2 of 2 listed clip\(s\) in [\d.]+ s: 1 ok, 1 failed, 0 already built", logs), logs
    assert "notes.mp4" in logs and "not a readable media file" in logs, logs
    assert "built 2 of 2 listed clip(s)" in proc.stdout, log  # `ray job submit` tails the same logs

    # the working dir went up without the virtual environment (.gitignore'd): the unpacked package on the
    # head holds the code and no .venv
    packages = [p for p in head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
                if p.is_dir()]
    assert packages, "no working_dir package unpacked on the head"
    for pkg in packages:
        assert (pkg / "jobs" / "cli.py").is_file() and (pkg / "pipelines" / "build.py").is_file()
        assert not (pkg / ".venv").exists()
        size = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())
        assert size < 50 * 2**20, f"{pkg}: {size / 2**20:.0f} MiB uploaded"

    # the dataset it wrote
    ds = Dataset(str(out))
    clips = ds.clip_rows()
    ok = clips[clip_id_for(str(clip.resolve()))]
    bad = clips[clip_id_for(str((inputs / "notes.mp4").resolve()))]
    assert len(clips) == 2
    assert ok["status"] == "ok" and ok["n_frames"] == N and ok["identity"] == clip.stem, ok
    assert bad["status"] == "failed" and bad["error_kind"] == "input" and "not a readable media file" in bad["error"]
    frames = ds.frames(clip.stem, columns=["frame_index"])
    assert frames.column("frame_index").to_pylist() == list(range(N))
    assert ds.identity_names() == [clip.stem]
    assert [r["identity"] for r in ds.identities().to_pylist()] == [clip.stem]
    assert (out / "qc" / f"{clip.stem}.png").stat().st_size > 10_000
    print(f"ray job submit took {took:.0f} s")


def test_job_submit_trains_on_the_cluster_and_registers(head, small_dataset, tmp_path):
    """``ray job submit -- parley train``: the driver and its Tune trial run on the cluster, report to a real
    ``mlflow server`` and register the model."""
    from jobs import registry, tracking
    from tests.services import mlflow_server

    assets = Path(os.environ["PARLEY_ASSETS"]).resolve()
    submission_id = f"parley-train-{secrets.token_hex(4)}"
    with mlflow_server(tmp_path / "mlflow") as server:
        cmd = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--submission-id", submission_id,
               "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"env_vars": {"PARLEY_ASSETS": str(assets)}}),
               "--", "python", "-m", "jobs.cli", "train", "--dataset", str(small_dataset),
               "--identities", "RD_Radio2_000", "--preset", "debug", "--tracking-uri", server.url,
               "--storage", str(tmp_path / "tune"), "--work-root", str(tmp_path / "scratch")]
        proc = subprocess.run(cmd, env=head.env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
        log = f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        assert proc.returncode == 0, log
        assert api(head, f"/api/jobs/{submission_id}")["status"] == "SUCCEEDED"
        assert "registered avatar-RD_Radio2_000 version 1" in proc.stdout, log
        [version] = registry.versions(server.url, "avatar-RD_Radio2_000")
        run = tracking.client(server.url).get_run(version.run_id)
        assert run.info.status == "FINISHED" and "psnr" in run.data.metrics
        assert version.metrics["psnr"] == pytest.approx(run.data.metrics["psnr"], rel=1e-4)
