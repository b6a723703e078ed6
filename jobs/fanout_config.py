"""What a fan-out is asked to do (:class:`FanoutJob`), from arguments or a sweep file, and config overrides by dotted
key (``--set`` / a sweep's search space)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from nerf.config import DEFAULT_METHOD

DEFAULT_MEMORY_PER_TRIAL_GB = 4.0
"""Host memory Ray reserves per trial (``--memory-per-trial-gb``), so a node runs no more trials than fit. A
``debug`` trial (30 frames at 64 px) peaks at 1.2 GB RSS, nearly all of it torch and the libraries; each frame
held adds its image and parsing at the training size (~0.26 MB at 256 px, ~1 MB at 512 px), so 4 GB covers about
2500 frames at 512 px. Raise it for longer identities."""

class FanoutError(ValueError):
    """Bad input to a fan-out (unknown identity, empty dataset, bad search space)."""


@dataclass
class FanoutJob:
    """Everything a fan-out needs; plain values only (it travels to the trials as JSON)."""

    dataset: str
    identities: list[str] | None = None
    """None = every identity of the dataset."""
    method: str = DEFAULT_METHOD
    """The avatar method (:mod:`nerf.methods`)."""
    preset: str | None = None
    """The method's preset (None: its default)."""
    steps_scale: float = 1.0
    max_frames: int | None = None
    audio_source: str | None = None
    """A registered ``audio-lip`` version whose encoder is every avatar's audio net (``model.head.audio.source``)."""
    tracking_uri: str | None = None
    experiment: str | None = None
    """MLflow experiment name (default ``parley/<dataset name>``)."""
    storage: str | None = None
    """Tune storage (local path or ``s3://``; default ``RAY_STORAGE``, else Ray's ``~/ray_results``)."""
    s3_endpoint: str | None = None
    name: str | None = None
    """Tune experiment name (default ``<train|sweep>-<dataset>-<time>``)."""
    gpus_per_trial: float = 1.0
    """GPUs per trial when the cluster has GPUs (0: always CPU)."""
    cpus_per_trial: float = 1.0
    memory_per_trial_gb: float = DEFAULT_MEMORY_PER_TRIAL_GB
    """Host memory reserved per trial (Tune's ``memory`` resource; 0 reserves none)."""
    max_concurrent: int | None = None
    max_failures: int = 2
    ray_address: str | None = None
    register: bool = True
    work_root: str | None = None
    """Node-local scratch for trials (default: the temp dir)."""
    space: dict[str, Any] = field(default_factory=dict)
    """Sweep search space (dotted config key -> spec), see :func:`search_space`."""
    num_samples: int = 1
    scheduler: dict[str, Any] = field(default_factory=dict)
    """``{"type": "asha", "grace_period": ..., "reduction_factor": ...}`` or empty (FIFO)."""
    metric: str = "val_psnr"
    mode: str = "max"


# config overrides -----------------------------------------------------------------------------------------
def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A frozen dataclass config with dotted keys replaced (``{"model.head.audio_coord_dim": 3}``).

    Raises:
        FanoutError: a key that is not a config field (the valid ones at that level are named), or a value the
            field cannot take.
    """
    for key, value in overrides.items():
        cfg = _replace_path(cfg, key.split("."), value, key)
    return cfg


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> overrides (values read as YAML scalars: ``false``, ``0.01``, ``crop``).

    Raises:
        FanoutError: an item that is not KEY=VALUE.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FanoutError(f"--set {item!r}: expected KEY=VALUE (e.g. model.features=crop)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _replace_path(obj: Any, path: list[str], value: Any, full: str) -> Any:
    if not is_dataclass(obj) or isinstance(obj, type):
        raise FanoutError(f"config key {full!r}: {type(obj).__name__} has no fields")
    names = {f.name: f for f in fields(obj)}
    head = path[0]
    if head not in names:
        raise FanoutError(f"config key {full!r}: no field {head!r} (fields: {', '.join(sorted(names))})")
    current = getattr(obj, head)
    if len(path) > 1:
        return replace(obj, **{head: _replace_path(current, path[1:], value, full)})
    if is_dataclass(current):
        raise FanoutError(f"config key {full!r} names a section; set one of its fields")
    typed = isinstance(current, int | float | str) and not isinstance(current, bool)
    try:
        return replace(obj, **{head: type(current)(value) if typed else value})
    except (ValueError, TypeError) as e:  # a value of the wrong type, or one the config rejects
        raise FanoutError(f"config key {full!r}: {e}") from e


def search_space(space: dict[str, Any]) -> dict[str, Any]:
    """YAML search-space specs -> Tune domains.

    Each value is a constant or a one-key mapping: ``grid: [..]``, ``choice: [..]``, ``uniform: [lo, hi]``,
    ``loguniform: [lo, hi]``, ``randint: [lo, hi]``, ``quniform: [lo, hi, q]``.

    Raises:
        FanoutError: an unknown spec.
    """
    from ray import tune

    makers = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
              "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
              "quniform": lambda a: tune.quniform(*a)}
    out: dict[str, Any] = {}
    for key, spec in (space or {}).items():
        if key == "identity":
            raise FanoutError(f"search space key {key!r} is reserved")
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in makers:
                raise FanoutError(f"search space {key!r}: expected one of {', '.join(makers)} as the only key, "
                                  f"got {spec!r}")
            kind, arg = next(iter(spec.items()))
            out[key] = makers[kind](arg)
        else:
            out[key] = spec
    return out


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML (``preset``, ``metric``, ``mode``, ``num_samples``, ``scheduler``, ``space``, and any
    :class:`FanoutJob` field).

    Raises:
        FanoutError: unreadable file or unknown keys.
    """
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FanoutError(f"{path}: cannot read the sweep file: {exc}") from exc
    if not isinstance(doc, dict):
        raise FanoutError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in fields(FanoutJob)} - {"dataset"}
    bad = sorted(set(doc) - known)
    if bad:
        raise FanoutError(f"{path}: unknown keys {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return doc


def example_value(spec: Any) -> Any:
    """One value of a search-space spec (to validate its key before any trial starts)."""
    if isinstance(spec, dict) and len(spec) == 1:
        arg = next(iter(spec.values()))
        return arg[0] if isinstance(arg, list) and arg else arg
    return spec


def job_from_args(args, sweep: dict[str, Any] | None = None) -> FanoutJob:  # noqa: ANN001
    """The :class:`FanoutJob` of ``parley train`` / ``sweep`` arguments (and a sweep file's keys).

    Raises:
        FanoutError: ``--resume`` with a different ``--name``.
    """
    doc = dict(sweep or {})
    ids = [s for s in str(args.identities).split(",") if s]
    if getattr(args, "identity", None):
        ids = [args.identity]
    resume = getattr(args, "resume", None)
    if resume and args.name and args.name != resume:
        raise FanoutError(f"--resume {resume} --name {args.name}: the name of a resumed fan-out is its own; "
                          "leave --name out")
    job = FanoutJob(dataset=args.dataset or "", identities=None if ids == ["all"] else ids,
                    gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                    max_concurrent=args.max_concurrent, max_failures=args.max_failures, storage=args.storage,
                    tracking_uri=args.tracking_uri, experiment=args.experiment, name=resume or args.name,
                    register=not args.no_register, ray_address=args.address, s3_endpoint=args.s3_endpoint,
                    work_root=args.work_root)
    job = replace(job, **{k: v for k, v in doc.items() if k != "identities" or not ids or ids == ["all"]})
    for attr in ("method", "preset", "steps_scale", "max_frames", "memory_per_trial_gb", "audio_source"):
        if getattr(args, attr) is not None:
            job = replace(job, **{attr: getattr(args, attr)})
    sets = parse_sets(getattr(args, "overrides", None) or [])
    if sets:  # constants of the search space: every trial takes them
        job = replace(job, space={**job.space, **sets})
    return job
