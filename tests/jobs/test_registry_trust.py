"""No code from the registry: `parley render/evaluate --model` load only a version's checkpoint tensors.

A real ``mlflow server`` on loopback (SQLite store, proxied artifacts) holds a tiny real avatar registered the
usual way, beside tampered versions: a ``python_model.pkl`` whose unpickling and a code file whose import would
write a marker file, a checkpoint that is itself such a pickle, and versions whose source lies outside their
run's artifacts. The server itself refuses some of those sources (another run's ``mlflow-artifacts:``, local
paths, ``..``); older servers and anyone with the store's database do not, so those are written into the
server's SQLite store directly. Each payload writes ``pwned-<tag>-<what>`` into ``$PARLEY_TEST_PWNED_DIR``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from jobs import cli, pyfunc, registry, tracking
from jobs.train import TrainJob, train_identity
from nerf.checkpoint import CheckpointError
from tests.conftest import ROOT, SHARED
from tests.conftest import SMALL_IDENTITY as IDENTITY
from tests.services import AWS_UNSET, free_port, mlflow_server
from workers.media import probe

pytestmark = pytest.mark.timeout(600)

NAME = registry.model_name(IDENTITY)
WAV = SHARED / "data" / "audio" / "RD_Radio31_000.wav"
PWNED_ENV = "PARLEY_TEST_PWNED_DIR"
CODE_VERSIONS = ("pickle", "fromcode")
"""Aliases of versions inside their run whose model directory carries code (and a real checkpoint)."""
CHECKPOINT_IN_MODEL = "artifacts/checkpoint.pt"
"""Where an MLflow pyfunc model directory keeps its ``checkpoint`` artifact."""
OUTSIDE = ("otherrun", "localdir", "norun", "escape", "escape_encoded", "s3")
"""Aliases of versions whose source the registry must not follow."""


class _Exec:
    """Pickles as ``exec(code)``: what a crafted ``python_model.pkl`` or ``checkpoint.pt`` does when unpickled."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):  # noqa: ANN204
        return exec, (self.code,)


def _payload(fallback: Path, tag: str, what: str) -> str:
    return (f"import os, pathlib; d = pathlib.Path(os.environ.get({PWNED_ENV!r}) or {str(fallback)!r}); "
            f"d.mkdir(parents=True, exist_ok=True); (d / 'pwned-{tag}-{what}').write_text('ran')")


def _tampered(honest: Path, dst: Path, tag: str, kind: str, fallback: Path) -> Path:
    """A copy of an honest pyfunc model directory with a payload: ``pickle`` (python_model.pkl that imports
    code/), ``fromcode`` (a models-from-code file) or ``checkpoint`` (the checkpoint is the crafted pickle)."""
    shutil.copytree(honest, dst)
    mlmodel = yaml.safe_load((dst / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    if kind == "pickle":
        module = f"parley_evil_{tag}"
        (dst / "code").mkdir()
        (dst / "code" / f"{module}.py").write_text(_payload(fallback, tag, "code") + "\n")
        code = _payload(fallback, tag, "pickle") + f"\nimport {module}"
        (dst / "python_model.pkl").write_bytes(pickle.dumps(_Exec(code)))
        flavor["code"] = "code"
    elif kind == "fromcode":
        (dst / "python_model.pkl").unlink()
        (dst / "evil_model.py").write_text(_payload(fallback, tag, "fromcode") + "\n")
        del flavor["python_model"]
        flavor["model_code_path"] = "evil_model.py"
    else:
        import torch

        torch.save(_Exec(_payload(fallback, tag, "checkpoint")), dst / CHECKPOINT_IN_MODEL)
    (dst / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return dst


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite, proxied artifacts) on a loopback port."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as s:
        yield s


@pytest.fixture(scope="module")
def setup(small_dataset, server, tmp_path_factory):
    """A tiny real avatar (3 training steps) registered as usual (@champion), and the tampered versions by alias."""
    work = tmp_path_factory.mktemp("trust")
    fallback = work / "pwned-fallback"
    run_dir = work / "train"
    train_identity(TrainJob(dataset=str(small_dataset), identity=IDENTITY, output=run_dir, preset="debug",
                            steps_scale=0.01, evaluate=False))
    ckpt = run_dir / "checkpoint.pt"
    uri = server.url
    c = tracking.client(uri)
    exp = c.create_experiment("trust")
    run1, run2 = (c.create_run(exp).info.run_id for _ in range(2))
    pyfunc.log_model(uri, run1, ckpt)
    honest_version = registry.register(uri, run1, IDENTITY, {"psnr": 20.0})
    c.set_registered_model_alias(NAME, registry.CHAMPION, str(honest_version))
    versions = {registry.CHAMPION: honest_version}

    honest = pyfunc.save_model(ckpt, work / "honest")
    local: dict[str, Path] = {}
    for tag, kind in (("pickle", "pickle"), ("fromcode", "fromcode"), ("badckpt", "checkpoint")):
        local[tag] = _tampered(honest, work / tag, tag, kind, fallback)
        c.log_artifacts(run1, str(local[tag]), tag)
    for tag in OUTSIDE:
        local[tag] = _tampered(honest, work / tag, tag, "pickle", fallback)
    c.log_artifacts(run2, str(local["otherrun"]), "tampered")
    c.log_artifacts(run1, str(local["norun"]), "norun")

    art1, art2 = c.get_run(run1).info.artifact_uri, c.get_run(run2).info.artifact_uri
    for alias in ("pickle", "fromcode", "badckpt"):  # inside their run: the server accepts them
        versions[alias] = int(c.create_model_version(NAME, f"{art1}/{alias}", run_id=run1).version)
    versions["runs_uri"] = int(c.create_model_version(NAME, f"runs:/{run1}/{registry.ARTIFACT}", run_id=run1).version)
    versions["s3"] = int(c.create_model_version(NAME, "s3://parley-elsewhere/avatar", run_id=run1).version)
    store = tracking.client(f"sqlite:///{server.artifacts.parent / 'mlflow.db'}")  # no source validation here
    for alias, source, run in (("otherrun", f"{art2}/tampered", run1), ("localdir", local["localdir"].as_uri(), run1),
                               ("norun", f"{art1}/norun", None),
                               ("escape", f"{art1}/../../{run2}/artifacts/tampered", run1),
                               ("escape_encoded", f"{art1}/%2e%2e/%2e%2e/{run2}/artifacts/tampered", run1)):
        versions[alias] = int(store.create_model_version(NAME, source, run_id=run).version)
    for alias, v in versions.items():
        if alias != registry.CHAMPION:
            c.set_registered_model_alias(NAME, alias, str(v))
    audio = work / "short.wav"
    samples, sr = sf.read(WAV, dtype="float32", always_2d=True)
    sf.write(audio, samples[: int(0.2 * sr), 0], sr)
    return {"uri": uri, "versions": versions, "runs": (run1, run2), "artifacts": (art1, art2), "audio": audio,
            "local": local, "fallback": fallback, "checkpoint": ckpt}


@pytest.fixture
def pwned(tmp_path, monkeypatch, setup) -> Path:
    """Where a payload that ran leaves its marker during this test (checked empty, with the fallback, after it)."""
    d = tmp_path / "pwned"
    monkeypatch.setenv(PWNED_ENV, str(d))
    # S3 stays on a dead loopback port: nothing in these tests may leave the machine
    for k in AWS_UNSET:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield d
    ran = sorted(p.name for base in (d, setup["fallback"]) if base.is_dir() for p in base.iterdir())
    assert not ran, f"code from the registry ran: {ran}"


def _render(setup, alias: str, out: Path, capsys) -> tuple[int, str]:
    rc = cli.main(["render", "--model", f"models:/{NAME}@{alias}", "--tracking-uri", setup["uri"],
                   "--audio", str(setup["audio"]), "--out", str(out), "--size", "32"])
    return rc, capsys.readouterr().err


def _one_line_error(err: str, cmd: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"{cmd}: ")]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


def test_payloads_are_armed(setup, tmp_path):
    """The tampered versions do run code under `mlflow.pyfunc.load_model` / a plain `torch.load` (a subprocess)."""
    armed = tmp_path / "armed"
    run1 = setup["runs"][0]
    code = textwrap.dedent(f"""
        import mlflow, torch
        mlflow.set_tracking_uri({setup['uri']!r}); mlflow.set_registry_uri({setup['uri']!r})
        for alias in ("pickle", "fromcode", "otherrun", "localdir", "norun"):
            try:
                mlflow.pyfunc.load_model("models:/{NAME}@" + alias)
            except Exception as exc:  # the payloads return nothing usable; they have run by then
                print(alias, type(exc).__name__)
        path = mlflow.MlflowClient({setup['uri']!r}).download_artifacts(
            {run1!r}, "badckpt/{CHECKPOINT_IN_MODEL}", {str(tmp_path / 'dl')!r})
        try:
            torch.load(path, weights_only=False)
        except Exception as exc:
            print("badckpt", type(exc).__name__)
        """)
    env = {**os.environ, PWNED_ENV: str(armed)}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    want = {"pwned-pickle-pickle", "pwned-pickle-code", "pwned-fromcode-fromcode", "pwned-otherrun-pickle",
            "pwned-localdir-pickle", "pwned-norun-pickle", "pwned-badckpt-checkpoint"}
    assert want <= {f.name for f in armed.iterdir()}, (p.stdout, p.stderr[-3000:])


def test_registered_version_still_renders(setup, pwned, tmp_path, capsys):
    """The version `parley train` registers renders from `models:/...@champion`: a short mp4 with sound."""
    out = tmp_path / "champion.mp4"
    rc, err = _render(setup, registry.CHAMPION, out, capsys)
    assert rc == 0, err
    info = probe(out)
    assert info.has_audio and (info.width, info.height) == (32, 32) and abs(info.video_duration_s - 5 / 25) < 0.01
    assert f"{NAME} version {setup['versions'][registry.CHAMPION]}" in err


def test_runs_uri_source_is_inside_its_run(setup, pwned, tmp_path):
    """A version registered from ``runs:/<its run>/avatar`` (which the server accepts) fetches just its checkpoint."""
    dl = tmp_path / "dl"
    path, v = registry.fetch_checkpoint(setup["uri"], f"models:/{NAME}@runs_uri", dl)
    assert v.version == setup["versions"]["runs_uri"] and v.source.startswith("runs:/")
    assert path == dl / "checkpoint.pt" and [p.name for p in dl.rglob("*")] == ["checkpoint.pt"]


def test_embedded_store_and_any_checkpoint_name(setup, pwned, tmp_path, monkeypatch):
    """With the embedded SQLite store (artifacts in file://), a model logged from a checkpoint of another file name
    is fetched from ``artifacts/checkpoint.pt`` and reads as the same tensors."""
    import torch

    monkeypatch.chdir(tmp_path)
    uri = tracking.resolve_tracking_uri("sqlite:///mlflow.db")
    c = tracking.client(uri)
    run = c.create_run(c.create_experiment("embedded", artifact_location=tracking.artifact_root(uri))).info.run_id
    final = tmp_path / "final_weights.pt"
    shutil.copyfile(setup["checkpoint"], final)
    pyfunc.log_model(uri, run, final)
    version = registry.register(uri, run, IDENTITY, {"psnr": 20.0})
    path, v = registry.fetch_checkpoint(uri, f"models:/{NAME}/{version}", tmp_path / "dl")
    assert v.source.startswith("file://") and path.read_bytes() == final.read_bytes()
    assert torch.load(path, weights_only=True)["identity"] == IDENTITY


@pytest.mark.parametrize("alias", CODE_VERSIONS)
def test_code_in_the_version_never_runs(setup, pwned, alias, tmp_path, capsys):
    """A version whose model holds a crafted python_model.pkl + code/ (or a models-from-code file) next to a real
    checkpoint renders from the checkpoint alone; only the checkpoint file is downloaded."""
    out = tmp_path / "out.mp4"
    rc, err = _render(setup, alias, out, capsys)
    assert rc == 0, err
    assert probe(out).has_audio
    dl = tmp_path / "dl"
    path, _ = registry.fetch_checkpoint(setup["uri"], f"models:/{NAME}@{alias}", dl)
    assert path.is_file() and sorted(str(p.relative_to(dl)) for p in dl.rglob("*") if p.is_file()) == [
        "checkpoint.pt"]


def test_crafted_checkpoint_is_refused(setup, pwned, tmp_path, capsys):
    """A checkpoint.pt that is itself a code-running pickle fails with one line naming the version; never runs."""
    out = tmp_path / "out.mp4"
    rc, err = _render(setup, "badckpt", out, capsys)
    line = _one_line_error(err, "render")
    assert rc == 2 and f"{NAME} version {setup['versions']['badckpt']}" in line
    assert "not a readable checkpoint" in line and not out.exists()
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        registry.fetch_checkpoint(setup["uri"], f"models:/{NAME}@badckpt", tmp_path / "dl")


@pytest.mark.parametrize("alias", OUTSIDE)
def test_source_outside_its_run_is_refused(setup, pwned, alias, tmp_path, capsys):
    """A version with no run, a source outside its run's artifacts or a path with `..` is refused before anything
    is downloaded, naming the model, version, source and the run's artifact URI."""
    out = tmp_path / "out.mp4"
    rc, err = _render(setup, alias, out, capsys)
    line = _one_line_error(err, "render")
    assert rc == 2 and not out.exists(), err
    version = setup["versions"][alias]
    assert f"{NAME} version {version}" in line
    dl = tmp_path / "dl"
    with pytest.raises(registry.RegistryError) as exc:
        registry.fetch_checkpoint(setup["uri"], f"models:/{NAME}@{alias}", dl)
    source = tracking.client(setup["uri"]).get_model_version(NAME, str(version)).source
    msg = str(exc.value)
    assert f"{NAME} version {version}" in msg and repr(source) in msg and repr(source) in line
    if alias == "norun":
        assert "names no run" in msg
    else:
        assert setup["artifacts"][0] in msg
    assert not dl.exists() or not any(dl.iterdir())


def test_evaluate_model_loads_only_the_checkpoint(setup, small_dataset, pwned, tmp_path, capsys):
    """`parley evaluate --model` evaluates a version's checkpoint without running its code, refuses a source
    outside its run in one line, and takes --model or --checkpoint, not both."""
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "--model", f"models:/{NAME}@pickle", "--tracking-uri", setup["uri"],
                   "--dataset", str(small_dataset), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (out / "eval.json").is_file()
    rc = cli.main(["evaluate", "--model", f"models:/{NAME}@otherrun", "--tracking-uri", setup["uri"],
                   "--dataset", str(small_dataset), "--output", str(tmp_path / "e2")])
    line = _one_line_error(capsys.readouterr().err, "evaluate")
    assert rc == 2 and "lies outside its run's artifacts" in line and not (tmp_path / "e2").exists()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--model", f"models:/{NAME}@champion", "--checkpoint", "x.pt", "-d", "d", "-o", "o"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_cli_help_names_the_trust_rule():
    """`parley render --help` and `parley evaluate --help` say that --model loads no code from the registry."""
    for cmd in ("render", "evaluate"):
        p = subprocess.run([sys.executable, "-m", "jobs.cli", cmd, "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and "never code from the registry" in " ".join(p.stdout.split()), p.stdout
