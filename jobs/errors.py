"""How a command reports bad input: one line on stderr naming the command, exit status 2."""

from __future__ import annotations

import sys


def fail(cmd: str, exc: BaseException) -> int:
    """Print ``<cmd>: <reason>`` to stderr (a KeyError's message without its quotes) and return 2."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    print(f"{cmd}: {msg}", file=sys.stderr)
    return 2
