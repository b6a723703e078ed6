"""The MLflow model registry of avatars: ``avatar-<identity>`` models, the ``champion`` alias, rendering.

A registered version is an MLflow ``pyfunc`` model wrapping one checkpoint (:mod:`jobs.pyfunc`): input =
audio file path(s), output = mp4 path(s). Each version carries the held-out metrics of its run as tags
(``psnr``, ``lpips``, ...), which is what ``parley registry list|show`` print and what
``parley registry promote`` ranks by.

Trust: an MLflow registry has no authentication of its own, so whoever can write to it can register a version
whose ``python_model.pkl`` (or models-from-code file) runs code in every process that calls
``mlflow.pyfunc.load_model`` on it. ``parley`` never does: :func:`fetch_checkpoint` downloads only the
version's checkpoint file, from inside the artifacts of the run that produced it, and reads it as tensors
(``torch.load(weights_only=True)``); the installed package's own code renders and evaluates it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.tracking import client
from nerf import methods
from nerf.config import DEFAULT_METHOD

METHOD_TAG = "method"
"""Tag of registered models and versions: the avatar method that trained them (:mod:`nerf.methods`)."""
CHAMPION = "champion"
ARTIFACT = "avatar"
"""Artifact path of the pyfunc model (:mod:`jobs.pyfunc`) inside its run."""
CHECKPOINT_IN_MODEL = "artifacts/checkpoint.pt"
"""Where :func:`jobs.pyfunc.save_model` puts the checkpoint inside the pyfunc model directory (MLflow names the file
after its source, so it hands MLflow a file of this name), and the only file of a version parley downloads."""
METRICS = ("psnr", "ssim", "lpips", "lmd", "render_s_per_frame", "offset_acc", "lse_c", "retrieval_top1", "swap_l1")
"""Held-out metrics copied onto each version as tags (the last four: the dataset-wide audio-lip models')."""
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "lmd": False, "render_s_per_frame": False,
                    "offset_acc": True, "lse_c": True, "retrieval_top1": True, "swap_l1": False}
DATASET_MODELS = ("audio-lip", "lip-sync-scorer")
"""Registered models trained over a whole dataset (``parley train-audio``), not per identity."""


class RegistryError(LookupError):
    """A registered model, version or alias that does not exist (the message lists what does), or a version whose
    checkpoint parley will not fetch (:func:`fetch_checkpoint`: no run, a source outside its run's artifacts)."""


def model_name(identity: str, method: str = DEFAULT_METHOD) -> str:
    """The registered model of an identity's avatars of a method (``avatar-<identity>`` for RAD-NeRF)."""
    return methods.registered_name(method, identity)


def is_avatar_name(name: str) -> bool:
    """Whether a registered model's name is that of an avatar (of a built-in or registered method)."""
    return any(name.startswith(f"{methods.registry_prefix(m)}-") for m in methods.names())


def register(uri: str, run_id: str, identity: str, metrics: dict[str, float],
             tags: dict[str, str] | None = None, method: str = DEFAULT_METHOD) -> int:
    """Register a run's logged model as a new version of :func:`model_name` (``avatar-<identity>`` for
    RAD-NeRF); returns the version.

    The held-out ``metrics`` become version tags (what :func:`promote` ranks by); the model and the version are
    tagged with the ``method``.
    """
    from mlflow.exceptions import MlflowException

    c = client(uri)
    name = model_name(identity, method)
    try:
        c.create_registered_model(name, tags={"parley.identity": identity, METHOD_TAG: method},
                                  description=f"{method} avatar of {identity} (parley)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT}"
    vtags = {k: f"{float(metrics[k]):.6g}" for k in METRICS if k in metrics and metrics[k] is not None}
    vtags.update(tags or {})
    mv = c.create_model_version(name, source, run_id=run_id,
                                tags={"parley.identity": identity, METHOD_TAG: method, **vtags})
    return int(mv.version)


@dataclass
class VersionInfo:
    name: str
    version: int
    run_id: str
    aliases: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]
    created: int
    source: str = ""
    """Where the version's model lies (an artifact URI), as the registry records it."""


def _get_model(c, name: str):  # noqa: ANN001, ANN202
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            known = ", ".join(m.name for m in c.search_registered_models()) or "none"
            raise RegistryError(f"no registered model {name!r} (registered: {known})") from None
        raise


def versions(uri: str, name: str) -> list[VersionInfo]:
    """Every version of a registered model, newest first.

    Raises:
        RegistryError: no such model.
    """
    c = client(uri)
    model = _get_model(c, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    out = []
    for mv in c.search_model_versions(f"name = '{name}'"):
        metrics = {}
        for k in METRICS:
            with contextlib.suppress(KeyError, ValueError):
                metrics[k] = float(mv.tags[k])
        out.append(VersionInfo(name, int(mv.version), mv.run_id or "", sorted(by_version.get(str(mv.version), [])),
                               metrics, dict(mv.tags), int(mv.creation_timestamp or 0), mv.source or ""))
    return sorted(out, key=lambda v: -v.version)


def list_models(uri: str) -> list[dict[str, Any]]:
    """Registered avatar models (of every method): name, versions, aliases (alias -> version) and the champion's
    metrics."""
    c = client(uri)
    rows = []
    for m in c.search_registered_models():
        if not (is_avatar_name(m.name) or METHOD_TAG in (m.tags or {}) or m.name in DATASET_MODELS):
            continue
        vs = versions(uri, m.name)
        champ = next((v for v in vs if CHAMPION in v.aliases), None)
        rows.append({"name": m.name, "versions": len(vs), "latest": vs[0].version if vs else None,
                     "aliases": dict(m.aliases or {}), "champion_metrics": champ.metrics if champ else {}})
    return sorted(rows, key=lambda r: r["name"])


def best_version(vs: list[VersionInfo], metric: str = "psnr") -> VersionInfo | None:
    """The version with the best ``metric`` tag (newest on ties); None when no version has it."""
    scored = [v for v in vs if metric in v.metrics and math.isfinite(v.metrics[metric])]
    if not scored:
        return None
    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    return max(scored, key=lambda v: (sign * v.metrics[metric], v.version))


def promote(uri: str, identity: str | None = None, version: int | None = None, metric: str = "psnr",
            alias: str = CHAMPION, method: str = DEFAULT_METHOD, name: str | None = None) -> dict[str, int]:
    """Move the ``champion`` alias.

    With no identity: for every avatar model (:func:`list_models`), to its best version by ``metric``. An
    identity names the model of its ``method``. With an identity and a
    version: to that version. With only an identity: to that model's best version. ``name`` names a model
    directly (``lip-sync-scorer``) in place of an identity.

    Returns:
        model name -> the version now holding the alias.

    Raises:
        RegistryError: unknown model or version, or no version has the metric.
    """
    c = client(uri)
    if version is not None and identity is None and name is None:
        raise ValueError("--version needs --identity or --model")
    names = [name] if name else [model_name(identity, method)] if identity else \
        [m["name"] for m in list_models(uri) if m["name"] not in DATASET_MODELS]
    if not names:
        raise RegistryError("no registered avatar models to promote; train some with `parley train`")
    moved = {}
    for name in names:
        vs = versions(uri, name)
        if version is not None:
            chosen = next((v for v in vs if v.version == version), None)
            if chosen is None:
                raise RegistryError(f"{name} has no version {version} (versions: "
                                    f"{', '.join(str(v.version) for v in vs) or 'none'})")
        else:
            chosen = best_version(vs, metric)
            if chosen is None:
                raise RegistryError(f"{name}: no version has the metric {metric!r} to rank by")
        c.set_registered_model_alias(name, alias, str(chosen.version))
        moved[name] = chosen.version
    return moved


def parse_model_uri(model_uri: str) -> tuple[str, str | None, int | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias, version)."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    rest = model_uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, ver = rest.partition("/")
    if ver:
        if not ver.isdigit():
            raise ValueError(f"{model_uri!r}: the version must be a number")
        return name, None, int(ver)
    return name, None, None


def resolve(uri: str, model_uri: str) -> VersionInfo:
    """The registered version a ``models:/`` URI names (no alias or version: the newest).

    Raises:
        RegistryError: the model, alias or version does not exist (what does is listed).
    """
    name, alias, version = parse_model_uri(model_uri)
    vs = versions(uri, name)
    if alias is not None:
        hit = next((v for v in vs if alias in v.aliases), None)
        if hit is None:
            have = sorted({a for v in vs for a in v.aliases})
            hint = " (run `parley registry promote`)" if alias == CHAMPION else ""
            raise RegistryError(f"{name} has no alias {alias!r} (aliases: {', '.join(have) or 'none'}){hint}")
        return hit
    if version is not None:
        hit = next((v for v in vs if v.version == version), None)
        if hit is None:
            raise RegistryError(f"{name} has no version {version} "
                                f"(versions: {', '.join(str(v.version) for v in vs) or 'none'})")
        return hit
    if not vs:
        raise RegistryError(f"{name} has no versions")
    return vs[0]


def _relative_source(source: str, run_id: str, artifact_uri: str) -> str | None:
    """The version's model path relative to its run's artifacts; None when ``source`` lies outside them."""
    if source.startswith("runs:/"):
        source_run, _, rel = source[len("runs:/"):].partition("/")
        return rel.rstrip("/") if source_run == run_id else None
    root, src = artifact_uri.rstrip("/"), source.rstrip("/")
    if src == root:
        return ""
    if root and src.startswith(root + "/"):
        return src[len(root) + 1:]
    return None


def _escapes(rel: str) -> bool:
    """Whether a run-relative path could leave the run's artifacts (``..``, ``.``, empty or odd segments)."""
    while (unquoted := urllib.parse.unquote(rel)) != rel:  # %2e%2e%2f... is ../ to whoever decodes it
        rel = unquoted
    parts = rel.split("/") if rel else []
    return rel.startswith("/") or any(c in rel for c in ("\\", "\x00")) or any(p in ("", ".", "..") for p in parts)


def checkpoint_path(uri: str, info: VersionInfo) -> str:
    """The run-relative artifact path of a version's checkpoint, once the version's source is checked.

    Args:
        uri: tracking / registry URI.
        info: the version (:func:`resolve`).

    Returns:
        ``<model path in the run>/artifacts/checkpoint.pt``, for ``MlflowClient.download_artifacts(info.run_id, ...)``.

    Raises:
        RegistryError: the version has no run, its run is gone, its source lies outside its run's artifacts, or
            its path escapes them (``..``).
    """
    from mlflow.exceptions import MlflowException

    what = f"{info.name} version {info.version} (source {info.source!r})"
    fix = ("parley loads a registered checkpoint only from the artifacts of the run that produced it; register "
           "that run's model again (`parley train` does) or render its checkpoint.pt with --checkpoint")
    if not info.run_id:
        raise RegistryError(f"{what} names no run; {fix}")
    try:
        artifact_uri = client(uri).get_run(info.run_id).info.artifact_uri or ""
    except MlflowException as exc:
        reason = " ".join(str(exc.message).split())
        raise RegistryError(f"{what}: its run {info.run_id} cannot be read ({reason}); {fix}") from None
    rel = _relative_source(info.source, info.run_id, artifact_uri)
    if rel is None:
        raise RegistryError(f"{what} lies outside its run's artifacts {artifact_uri!r} (run {info.run_id}); {fix}")
    if _escapes(rel):
        raise RegistryError(f"{what}: the path {rel!r} inside its run's artifacts {artifact_uri!r} (run "
                            f"{info.run_id}) is not a plain relative path (.., empty or odd segments); {fix}")
    return f"{rel}/{CHECKPOINT_IN_MODEL}" if rel else CHECKPOINT_IN_MODEL


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def fetch_checkpoint(uri: str, model_uri: str, dst_dir: str | Path,
                     reader: Callable[[Path], object] | None = None) -> tuple[Path, VersionInfo]:
    """Download a registered version's checkpoint (tensors only) and check that it reads as one.

    Nothing else of the version is fetched, unpickled or imported: not its ``python_model.pkl``, code or
    environment. The source checks (:func:`checkpoint_path`) come before any download.

    Args:
        uri: tracking / registry URI.
        model_uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<name>`` (the newest).
        dst_dir: local directory to download into (created if missing; the caller removes it).
        reader: what checks the file reads (default :func:`nerf.checkpoint.load_checkpoint`; the audio-lip models
            pass their own); it raises ``ValueError`` for a file it does not read.

    Returns:
        The local checkpoint path (read it with :func:`nerf.checkpoint.load_checkpoint`) and the version.

    Raises:
        RegistryError: see :func:`resolve` and :func:`checkpoint_path`; or the checkpoint cannot be downloaded.
        ValueError: ``model_uri`` is not a ``models:/`` URI.
        nerf.checkpoint.CheckpointError: the file is not a parley checkpoint (e.g. a pickle that is not only tensors).
    """
    from mlflow.exceptions import MlflowException

    from nerf.checkpoint import CheckpointError, load_checkpoint

    info = resolve(uri, model_uri)
    rel = checkpoint_path(uri, info)
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    where = f"{info.name} version {info.version} (run {info.run_id})"
    try:
        with _no_progress_bar():  # one small file: MLflow's bar would only clutter a job's log
            path = Path(client(uri).download_artifacts(info.run_id, rel, str(dst)))
    except (MlflowException, OSError) as exc:
        msg = " ".join(str(exc.message if isinstance(exc, MlflowException) else exc).split())
        raise RegistryError(f"{where}: cannot download its checkpoint {rel!r} ({msg}); parley reads only that file "
                            "of a registered model: log the checkpoint with jobs.pyfunc.log_model (as `parley "
                            "train` does) and register that") from None
    try:
        (reader or load_checkpoint)(path)
    except (CheckpointError, ValueError) as exc:
        # one line without the temporary path, torch's colours, or its advice to load the file with weights_only=False
        reason = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).removeprefix(f"{path}: ").split()).split(". ")[0]
        reason += ")" * (reason.count("(") - reason.count(")"))
        raise CheckpointError(f"{where}: {rel}: {reason}; a registered checkpoint is read as tensors only "
                              "(torch.load(weights_only=True)), never as code") from exc
    return path, info
