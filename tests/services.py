"""Real services for integration tests: free loopback ports, a moto S3 server, a ``ray start --head``.

Every service runs as a subprocess in its own process group (``start_new_session=True``) and is
stopped by signalling that group only: nothing here ever runs ``ray stop`` or kills by name, so
tests running beside other tests (and other people's clusters) on one machine leave them alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
"""The virtual environment's ``bin`` (``ray``, ``moto_server``, ``python``)."""


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while picking, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> int | None:
    """The HTTP status of a GET (``None`` when nothing answers)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0,
                  headers: Mapping[str, str] | None = None, ok: tuple[int, ...] = (200,),
                  log: Path | None = None) -> int:
    """Poll ``url`` until it answers with a status in ``ok``; fail early when ``proc`` exits.

    Returns:
        The status that answered.

    Raises:
        RuntimeError: the process died, or the deadline passed (the log's tail is in the message).
    """
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}{_tail(log)}")
        status = http_status(url, headers)
        if status in ok:
            return status
        time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer in {ok} within {timeout:.0f} s (last: {status}){_tail(log)}")


def _tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n--- log tail ---\n" + log.read_text(errors="replace")[-n:]


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL what is left after ``timeout`` seconds."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # the leader may be gone while children (raylet, gcs_server, ...) linger: kill the whole group
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


@contextmanager
def patched_environ(set_: Mapping[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """``os.environ`` with ``set_`` applied and ``unset`` removed; restored exactly on exit."""
    keys = set(set_) | set(unset)
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in unset:
            os.environ.pop(k, None)
        os.environ.update(set_)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------- moto

MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
"""Fake credentials moto accepts while it does not check signatures (and no instance-metadata lookups)."""
AWS_UNSET = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
             "AWS_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "PARLEY_S3_ENDPOINT")
"""Settings from the developer's shell that would point the tests at a real account or endpoint."""


@dataclass
class MotoServer:
    """A moto server (S3 and friends) on a loopback port."""

    proc: subprocess.Popen
    url: str
    log: Path
    credentials: dict[str, str]
    """``AWS_*`` environment variables of a key the server accepts."""


def _require_auth(url: str) -> dict[str, str]:
    """Create an IAM user allowed ``s3:*`` and its access key, then make moto check every request's signature.

    moto accepts any request (signed or not) by default, so a client with no credentials at all would
    pass unnoticed; with this, only requests signed with the returned key get through.
    """
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    iam.create_user(UserName="parley-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="parley-tests", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="parley-tests")["AccessKey"]
    req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    return {**MOTO_CREDENTIALS, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@contextmanager
def moto_server(log_dir: Path, require_auth: bool = False) -> Iterator[MotoServer]:
    """Run ``moto_server`` on 127.0.0.1 and a free port until the block ends.

    Args:
        log_dir: where its log goes.
        require_auth: refuse requests not signed with the key in ``credentials`` (see :func:`_require_auth`).
    """
    exe = BIN / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    port = free_port()
    log = Path(log_dir) / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/", proc, timeout=60, log=log)
        credentials = _require_auth(url) if require_auth else dict(MOTO_CREDENTIALS)
        yield MotoServer(proc, url, log, credentials)
    finally:
        stop_group(proc, timeout=10)


# ----------------------------------------------------------------------------------------- ray head


@dataclass
class RayHead:
    """A ``ray start --head --block`` cluster of its own (own ports, own temp dir)."""

    proc: subprocess.Popen
    gcs_port: int
    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]
    """The environment the head runs with; clients (``ray job submit``) use the same."""
    log: Path
    auth_headers: dict[str, str] = field(default_factory=dict)


def ray_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the venv's ``bin`` first on PATH (jobs find its python)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


@contextmanager
def ray_head(num_cpus: int = 2, env: Mapping[str, str] | None = None, auth_headers: Mapping[str, str] | None = None,
             timeout: float = 180.0) -> Iterator[RayHead]:
    """Start a Ray head node with the dashboard (job API) on loopback; stop its process group after.

    Every port it would otherwise take at a fixed number or from a fixed range (GCS, dashboard,
    dashboard agent, Ray client server, workers) is a free one, so several heads can run on one
    machine at once. The temp dir is short (Unix socket paths are limited to ~107 bytes) and
    removed afterwards.

    Args:
        num_cpus: CPUs the head offers.
        env: the full environment of the head (default: :func:`ray_env`).
        auth_headers: headers that authorise a request to the job API (probed until it answers 200).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    port, dash, agent, client = free_ports(4)
    env = dict(env or ray_env())
    log = temp_dir / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(num_cpus),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
           "--min-worker-port", "0", "--max-worker-port", "0",  # workers on OS-chosen ports, not a shared range
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=temp_dir)
    head = RayHead(proc, port, f"http://127.0.0.1:{dash}", temp_dir, env, log,
                   dict(auth_headers or {}))
    try:
        wait_for_http(f"{head.dashboard_url}/api/jobs/", proc, timeout=timeout, headers=head.auth_headers, log=log)
        yield head
    finally:
        stop_group(proc, timeout=15)
        shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- mlflow


@dataclass
class MlflowServer:
    """An ``mlflow server`` (SQLite backend, artifacts proxied to a local directory) on a loopback port."""

    proc: subprocess.Popen
    url: str
    log: Path
    artifacts: Path


@contextmanager
def mlflow_server(root: Path, timeout: float = 180.0) -> Iterator[MlflowServer]:
    """Run ``mlflow server`` on 127.0.0.1 and a free port until the block ends (one worker, own store)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow.log"
    artifacts = root / "artifacts"
    exe = BIN / "mlflow"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "mlflow"]), "server",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(artifacts)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, timeout=timeout, log=log)
        yield MlflowServer(proc, url, log, artifacts)
    finally:
        stop_group(proc, timeout=10)
