"""MediaPipe tasks are created without their native notices on stderr, other lines pass, and they close at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, sys
import numpy as np
from workers import mediapipe_tasks
from workers.landmarks import MediaPipeLandmarker
from workers.parsing import PersonSegmenter

with mediapipe_tasks.quiet_native_logs():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nE0000 a real native error\n")
    print("python warning", file=sys.stderr)
img = np.zeros((128, 128, 3), np.uint8)
lm, seg = MediaPipeLandmarker(), PersonSegmenter()   # left open on purpose: closed at exit
print(len(lm.detect(img, 1)), seg(img).shape)
"""


def test_task_creation_is_quiet_but_keeps_other_lines_and_closes_at_exit():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "(128,", "128)"]
    err = out.stderr
    for notice in ("XNNPACK delegate", "Feedback manager", "InitGoogle", "acceleration to xnnpack"):
        assert notice not in err, err
    # what is not a known notice comes back, in order, and nothing is lost
    assert err.index("E0000 a real native error") < err.index("python warning"), err
    assert "Exception ignored" not in err and "NoneType" not in err, err
