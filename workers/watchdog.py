"""A watchdog for one clip's work: it ends a clip that stalls or overruns instead of letting it hang a worker.

Two limits: **stall**, the longest wait for the next decoded frame (checked only while frames stream, so a long
fit is not a stall), and **total**, a deadline for the whole clip that grows with its length
(:meth:`Watchdog.expect`). When a limit passes, a background thread kills the clip's ffmpeg processes (a read
blocked on their pipe returns) and the next :meth:`Watchdog.check` in the worker raises :class:`ClipTimeout`.
Code stuck where no check runs (a native call that never returns) cannot be interrupted from Python: after
``grace_s`` the thread calls ``on_stuck`` with the reason, the caller's last resort (the dataset build records the
failure and ends the worker process).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from workers.errors import ParleyError


class ClipTimeout(ParleyError):
    """A clip's work stalled or ran past its deadline (the watchdog ended it).

    Attributes:
        path: the clip.
        reason: what ran out, and where the work was.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class Watchdog:
    """Limits on one clip's work, enforced from a background thread.

    Args:
        what: the clip (for messages).
        stall_s: longest wait for the next frame while frames stream (None: no limit).
        base_s: the whole clip's deadline before :meth:`expect` adds to it (None: no deadline).
        per_frame_s: seconds the deadline grows per expected frame.
        grace_s: how long the work may go on after a limit passed without reaching a check before ``on_stuck``.
        on_stuck: called (from the watchdog's thread) with the reason when the work does not stop; None: nothing.
        poll_s: how often the thread looks.

    Use as a context manager around the clip's work.
    """

    def __init__(self, what: str, stall_s: float | None = 120.0, base_s: float | None = 600.0,
                 per_frame_s: float = 0.5, grace_s: float = 60.0,
                 on_stuck: Callable[[str], None] | None = None, poll_s: float = 0.2):
        self.what = what
        self.stall_s = stall_s
        self.base_s = base_s
        self.per_frame_s = per_frame_s
        self.grace_s = grace_s
        self.on_stuck = on_stuck
        self.poll_s = poll_s
        self.deadline_s = base_s
        self.where = "starting"
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._streams = 0
        self._t0 = self._last = time.monotonic()
        self._fired_at = 0.0
        self._acknowledged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the worker's side -----------------------------------------------------------------------------------------
    def __enter__(self) -> Watchdog:
        self._t0 = self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"watchdog {self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def expect(self, frames: int) -> None:
        """Set the deadline for a clip of about ``frames`` frames (``base_s + per_frame_s * frames``)."""
        if self.base_s is not None:
            self.deadline_s = self.base_s + self.per_frame_s * max(int(frames), 0)

    def beat(self, where: str) -> None:
        """Progress (a frame decoded, a stage begun); raises when a limit has passed.

        Raises:
            ClipTimeout: the watchdog fired.
        """
        self._last = time.monotonic()
        self.where = where
        self.check()

    def check(self) -> None:
        """Raise when a limit has passed.

        Raises:
            ClipTimeout: the watchdog fired.
        """
        if self.reason is not None:
            self._acknowledged = True
            raise ClipTimeout(self.what, self.reason)

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Within the block frames stream: waiting longer than ``stall_s`` for one is a stall."""
        with self._lock:
            self._streams += 1
            self._last = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._streams -= 1

    def attach(self, proc: subprocess.Popen) -> None:
        """A subprocess to kill when the watchdog fires (killed at once if it already has)."""
        with self._lock:
            self._procs.add(proc)
            fired = self.reason is not None
        if fired:
            _kill(proc)

    def detach(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    # the watchdog's thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            if self.reason is None:
                reason = None
                if self.deadline_s is not None and now - self._t0 > self.deadline_s:
                    reason = f"timed out: still running after {self.deadline_s:.0f} s (at {self.where})"
                elif self.stall_s is not None and self._streams > 0 and now - self._last > self.stall_s:
                    reason = (f"stalled: no frame for {self.stall_s:.0f} s (after {self.where}; a damaged clip "
                              "or a stuck decoder)")
                if reason is not None:
                    self._fire(reason)
            elif not self._acknowledged and now - self._fired_at > self.grace_s:
                if self.on_stuck is not None:
                    self.on_stuck(f"{self.reason}; the work did not stop within {self.grace_s:.0f} s")
                return

    def _fire(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            self._fired_at = time.monotonic()
            procs = list(self._procs)
        for p in procs:
            _kill(p)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        if proc.poll() is None:
            proc.kill()
