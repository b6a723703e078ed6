"""Exception types raised by the per-clip workers, one per kind of problem."""

from __future__ import annotations


class ParleyError(Exception):
    """Base class of every error parley raises on purpose."""


class ClipError(ParleyError):
    """A clip cannot be read or used at all (missing, corrupt, no video stream, too short).

    Attributes:
        path: the clip's path or URI.
        reason: what is wrong, in words a person can act on.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AssetError(ParleyError):
    """A model file is missing, unreadable or has the wrong checksum."""
