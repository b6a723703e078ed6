"""The environment a driver hands to its Ray workers (asset paths, S3 and tracking settings), in one place.

It travels as an argument of the workers' constructors or tasks, never in a ``runtime_env``: Ray shows every
``runtime_env`` in its dashboard and state API to anyone who can reach them. Credentials (keys, tokens,
passwords) go only to workers on this machine, which could read the driver's environment anyway; on a cluster
of several machines the nodes should get their S3 access from an instance profile (``cluster.yaml``), and keys
in the driver's environment are left behind with a warning unless ``PARLEY_FORWARD_CREDENTIALS=1`` says
otherwise.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PREFIXES = ("PARLEY_", "AWS_", "MLFLOW_")
"""Environment variables (by prefix) handed to workers."""
FORWARD_CREDENTIALS = "PARLEY_FORWARD_CREDENTIALS"
"""Set to 1 to hand credentials to workers on other machines too."""
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY_ID", "CREDENTIAL")


def is_secret(name: str) -> bool:
    """Whether an environment variable holds a credential (``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_TOKEN``)."""
    return any(w in name.upper() for w in _SECRET_WORDS) and name != FORWARD_CREDENTIALS


def single_machine() -> bool:
    """Whether every alive node of the connected Ray cluster is this machine (True when Ray is not started)."""
    import ray

    if not ray.is_initialized():
        return True
    here = ray.util.get_node_ip_address()
    return all(n.get("NodeManagerAddress") == here for n in ray.nodes() if n.get("Alive"))


def forwarded_env(prefixes: tuple[str, ...] = PREFIXES) -> dict[str, str]:
    """The driver's variables to hand to workers: credentials only when the cluster is this machine (or
    :data:`FORWARD_CREDENTIALS` is 1)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
    secrets = sorted(k for k in env if is_secret(k))
    if secrets and os.environ.get(FORWARD_CREDENTIALS) != "1" and not single_machine():
        for k in secrets:
            env.pop(k)
        log.warning("not handing %s to workers on other machines (give the nodes an instance profile, see "
                    "cluster.yaml; or set %s=1)", ", ".join(secrets), FORWARD_CREDENTIALS)
    return env


def apply(env: dict[str, str] | None) -> None:
    """In a worker: take the driver's variables."""
    os.environ.update(env or {})
