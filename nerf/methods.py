"""The registry of avatar methods: a method is chosen by name (``--method radnerf``) and recorded everywhere it
matters (checkpoint format ``parley-<method>/<version>``, MLflow params, the ``method`` tag of registered versions).

Built-in methods live in their own folder (``nerf/radnerf/``) and register when first asked for; a method of
another package registers with :func:`register` or through the ``parley.methods`` entry point group (an object
that is a :class:`Method`). Importing this module imports neither torch nor any method.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nerf.config import ExperimentConfig, TrainerConfig
    from nerf.model import AvatarModel

BUILTIN = {"radnerf": "nerf.radnerf", "jean": "nerf.jean", "dialogue": "nerf.dialogue"}
"""Built-in method -> the module that registers it on import."""
ENTRY_POINTS = "parley.methods"
"""Entry point group of methods from other packages."""
REGISTRY_PREFIX = {"radnerf": "avatar"}
"""Registered-model name prefix of a method whose models are not named ``<method>-<identity>``: RAD-NeRF's keep the
name they had before there were several methods."""
_FORMAT = re.compile(r"^parley-([a-z][a-z0-9_]*)/(\d+)$")


@dataclass(frozen=True)
class Method:
    """One avatar method: its model class (:class:`nerf.model.AvatarModel`), its config classes and presets."""

    name: str
    """Lowercase name (``--method``)."""
    version: int
    """Checkpoint format version written (``parley-<name>/<version>``); bump it when the state changes shape."""
    model: type[AvatarModel]
    """The :class:`nerf.model.AvatarModel` subclass."""
    model_config: type
    """The model's config dataclass (``ExperimentConfig.model``)."""
    trainer_config: type[TrainerConfig]
    """The :class:`nerf.config.TrainerConfig` subclass naming the method's stages."""
    presets: Mapping[str, Callable[[], ExperimentConfig]]
    """Preset name -> a function building its config."""
    default_preset: str
    reads_versions: tuple[int, ...] = ()
    """Older checkpoint format versions it still reads (same state, older config)."""
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"method name {self.name!r}: lowercase letters, digits and _ only")
        if self.default_preset not in self.presets:
            raise ValueError(f"method {self.name}: default preset {self.default_preset!r} is not one of its presets")

    @property
    def checkpoint_format(self) -> str:
        return f"parley-{self.name}/{self.version}"

    @property
    def stages(self) -> tuple[str, ...]:
        return self.trainer_config.STAGES

    def preset(self, name: str | None = None) -> ExperimentConfig:
        """The named preset (default: :attr:`default_preset`).

        Raises:
            KeyError: an unknown name (the method's presets are listed).
        """
        name = name or self.default_preset
        if name not in self.presets:
            raise KeyError(f"method {self.name} has no preset {name!r} (presets: {', '.join(self.presets)})")
        return self.presets[name]()


_REGISTRY: dict[str, Method] = {}
_entry_points_loaded = False


def register(method: Method, replace: bool = False) -> Method:
    """Make a method available by name.

    Raises:
        ValueError: another method of that name is registered (unless ``replace``).
    """
    old = _REGISTRY.get(method.name)
    if old is not None and old is not method and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Forget a registered method (tests)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        obj = ep.load()
        if not isinstance(obj, Method):
            raise TypeError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINTS}) is not a nerf.methods.Method")
        if obj.name not in _REGISTRY:
            register(obj)


def get(name: str) -> Method:
    """The method called ``name`` (a built-in one is imported on first use).

    Raises:
        KeyError: no such method (the known ones are named).
    """
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"no method {name!r} (methods: {', '.join(names())})")
    return _REGISTRY[name]


def names() -> list[str]:
    """Built-in and registered method names."""
    return sorted(set(BUILTIN) | set(_REGISTRY))


def parse_format(fmt: object) -> tuple[Method, int]:
    """The method and version of a checkpoint's ``format`` string.

    Raises:
        KeyError: not a parley checkpoint format, an unknown method, or a version it does not read.
    """
    m = _FORMAT.match(fmt) if isinstance(fmt, str) else None
    if m is None:
        raise KeyError(f"not a parley checkpoint (format {fmt!r}, expected parley-<method>/<version>)")
    method, version = get(m.group(1)), int(m.group(2))
    if version != method.version and version not in method.reads_versions:
        raise KeyError(f"a {method.name} checkpoint of format version {version}; this parley reads "
                       f"{', '.join(str(v) for v in (method.version, *method.reads_versions))}")
    return method, version


def registry_prefix(method: str) -> str:
    """The registered-model name prefix of a method's avatars (``avatar`` for RAD-NeRF, else the method's name)."""
    return REGISTRY_PREFIX.get(method, method)


MAX_NAME = 200
"""Longest registered model name parley makes (registry databases other than SQLite hold 256 characters)."""


def registered_name(method: str, identity: str) -> str:
    """The registered model of ``identity`` trained with ``method``: ``<prefix>-<identity>``. A subject too long
    for a registry (e.g. the 25 people of a warm-start prior joined by ``+``) is shortened to its first person and
    a count, plus a hash of the whole, so two such subjects never share a name (the model's ``parley.identity``
    tag keeps the whole subject)."""
    prefix = registry_prefix(method)
    if len(prefix) + 1 + len(identity) <= MAX_NAME:
        return f"{prefix}-{identity}"
    digest = hashlib.sha1(identity.encode()).hexdigest()[:8]
    people = identity.split("+")
    head = f"{people[0]}-and-{len(people) - 1}-more" if len(people) > 1 else people[0]
    room = MAX_NAME - len(prefix) - 2 - len(digest)
    return f"{prefix}-{head[:room]}-{digest}"


def preset(name: str | None = None, method: str = "radnerf") -> ExperimentConfig:
    """A method's named preset (default: the method's default one).

    Raises:
        KeyError: an unknown method or preset (the known ones are named).
    """
    return get(method).preset(name)
