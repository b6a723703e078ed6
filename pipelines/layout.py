"""Where each table of a dataset root lives, and the identity names that become its directory names.

The paths are shared by the writers (:mod:`pipelines.commit`), the reader (:mod:`pipelines.dataset`) and the
checks (:mod:`pipelines.check`), so none of them needs another for its paths.
"""

from __future__ import annotations

import re
import unicodedata

IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Identity names: they become directory names (``identity=<name>``) locally and on S3."""


def safe_identity(name: str) -> str:
    """``name`` made into a valid identity: accents dropped (``José`` -> ``Jose``), outer spaces stripped, other
    characters ``_``. Different names can give the same identity; :func:`pipelines.inputs.list_inputs` refuses
    such a collision between two clips."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name.strip()) if not unicodedata.combining(c))
    out = re.sub(r"[^A-Za-z0-9._-]", "_", plain).lstrip("._-")[:128]
    return out or "unnamed"


def clip_path(clip_id: str) -> str:
    """Where a clip's row lives."""
    return f"clips/{clip_id}.parquet"


def frames_path(identity: str, clip_id: str) -> str:
    """Where a clip's frames of one identity live."""
    return f"frames/identity={identity}/{clip_id}.parquet"


IDENTITIES_PATH = "identities/identities.parquet"
