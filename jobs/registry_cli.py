"""``parley registry list | show | promote``, and ``--model models:/...`` of ``parley render`` / ``evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jobs.registry import (
    CHAMPION,
    DATASET_MODELS,
    RegistryError,
    fetch_checkpoint,
    is_avatar_name,
    list_models,
    model_name,
    promote,
    versions,
)


def registered_checkpoint(cmd: str, args: Any, dst: str) -> Path:
    """``--model models:/...`` of a command: the version's checkpoint downloaded into ``dst`` (tensors only, never
    its code), with a line on stderr saying which version it is.

    Raises:
        RegistryError, TrackingError, ValueError, CheckpointError: see :func:`fetch_checkpoint`.
    """
    from jobs import tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_tracking(uri)
    checkpoint, info = fetch_checkpoint(uri, args.model, dst)
    print(f"{cmd}: {args.model} -> {info.name} version {info.version} (run {info.run_id}; "
          + ", ".join(f"{k} {v:.3g}" for k, v in info.metrics.items()) + ")", file=sys.stderr)
    return checkpoint


def _fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in m.items()) or "-"


def run_cli(args) -> int:  # noqa: ANN001
    """``parley registry list | show | promote``."""
    from jobs import tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        tracking.check_tracking(uri)
        if args.registry_command == "list":
            rows = list_models(uri)
            if not rows:
                print(f"no registered avatars in {uri}")
            for r in rows:
                aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(r["aliases"].items())) or "no aliases"
                print(f"{r['name']:<32} {r['versions']} version(s), latest v{r['latest']}, {aliases}; champion: "
                      f"{_fmt_metrics(r['champion_metrics'])}")
        elif args.registry_command == "show":
            name = args.model if is_avatar_name(args.model) or args.model in DATASET_MODELS else \
                model_name(args.model, args.method)
            for v in versions(uri, name):
                aliases = " ".join(f"@{a}" for a in v.aliases)
                print(f"{name} v{v.version} {aliases:<12} run {v.run_id} {_fmt_metrics(v.metrics)} "
                      f"dataset_version={v.tags.get('dataset_version', '-')} git={v.tags.get('git_commit', '-')}")
        else:
            moved = promote(uri, args.identity, args.version, args.metric, method=args.method,
                            name=getattr(args, "model", None))
            for name, version in moved.items():
                print(f"{name}@{CHAMPION} -> version {version}")
    except (RegistryError, ValueError, tracking.TrackingError) as exc:
        print(f"registry {args.registry_command}: {exc}", file=sys.stderr)
        return 2
    return 0
