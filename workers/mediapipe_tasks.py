"""Creating MediaPipe tasks quietly, and closing them before the interpreter tears down.

MediaPipe's native graph writes a handful of informational lines straight to file descriptor 2 each
time a task is created ("Created TensorFlow Lite XNNPACK delegate", "Feedback manager requires a
model with a single signature", "Logging before InitGoogle"...), once per task per worker process, and
no environment variable turns them off (GLOG_minloglevel does not: the library logs through absl). A
dataset build creates tasks in every Ray worker, so these lines bury the log. :func:`quiet_native_logs`
captures fd 2 while a task is created and writes back every line that is not one of the known notices,
so real warnings and errors still show.

A task that is still open when Python exits raises ``TypeError: 'NoneType' object is not callable``
from its ``__del__`` (MediaPipe's C bindings are gone by then); :func:`close_at_exit` closes tracked
owners first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any

NOTICES = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate|Feedback manager requires a model with a single signature"
    r"|Logging before InitGoogle\(\) is written to STDERR|acceleration to xnnpack by default"
    r"|All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|Sparsity tensors may not yet be fully supported|Creating LiteRT environment|RegisterAccelerator"
    r"|accelerator registered|Flatbuffer model initialized directly|Input tensor memory is not aligned"
    r"|DestroyAccelerator"
)
"""Informational lines of MediaPipe's native code at task creation; anything else is passed through."""

_OWNERS: weakref.WeakSet[Any] = weakref.WeakSet()


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Capture fd 2 during the block; afterwards write back the lines that are not :data:`NOTICES`.

    Python's own ``sys.stderr`` is flushed first, so nothing written before the block is lost or
    reordered; other threads' writes to fd 2 during the block are delayed, not dropped.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured by a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if line.strip() and not NOTICES.search(line)]
            if kept:
                os.write(fd, "".join(kept).encode())


def close_at_exit(owner: Any) -> None:
    """Call ``owner.close()`` at interpreter exit if it is still alive then (held weakly)."""
    _OWNERS.add(owner)


@atexit.register
def _close_owners() -> None:
    for owner in list(_OWNERS):
        with contextlib.suppress(Exception):
            owner.close()
