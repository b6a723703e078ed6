"""Mouth crops and the scorer's inputs of a whole video, on the shared clips."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from tests.conftest import SHARED
from workers.errors import ClipError
from workers.landmarks import MediaPipeLandmarker
from workers.mouth import MOUTH_SIZE, mouth_crop, video_sync_inputs

CLIP = SHARED / "data" / "clips" / "WDA_BobMenendez_000.mp4"


@pytest.fixture(scope="module")
def frame_and_landmarks():
    cap = cv2.VideoCapture(str(CLIP))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    lm = MediaPipeLandmarker(max_faces=1)
    try:
        faces = lm.detect(rgb, 40)
    finally:
        lm.close()
    return rgb, faces[0].landmarks_68


def test_crop_follows_the_face_through_roll_zoom_and_shift(frame_and_landmarks):
    img, lms = frame_and_landmarks
    crop = mouth_crop(img, lms)
    assert crop.shape == MOUTH_SIZE[::-1] and crop.dtype == np.uint8
    # the same face rolled 12 degrees, zoomed 1.25x and moved: the crop shows the same mouth
    m = cv2.getRotationMatrix2D((256, 256), 12, 1.25)
    m[:, 2] += (20, -15)
    moved = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR)
    moved_lms = lms @ m[:, :2].T + m[:, 2]
    other = mouth_crop(moved, moved_lms)
    same = np.abs(other.astype(float) - crop).mean()
    elsewhere = np.abs(mouth_crop(img, lms + (0, 40)).astype(float) - crop).mean()
    assert same < 6 and elsewhere > 3 * same, (same, elsewhere)


def test_video_inputs_of_a_real_clip():
    s = video_sync_inputs(CLIP, max_frames=60)
    assert s.crops.shape == (60, 48, 96) and s.mel.shape == (60, 16, 80) and s.valid.all()
    assert s.crops.std() > 10  # a mouth, not a blank


def test_video_without_a_face_or_without_audio_is_a_clear_error(tmp_path):
    blank = tmp_path / "blank.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=128x128:d=1", "-pix_fmt",
                    "yuv420p", str(blank)], check=True)
    with pytest.raises(ClipError, match="blank.mp4.*no face found"):
        video_sync_inputs(blank)
    with pytest.raises(ClipError, match="no audio track"):
        video_sync_inputs(_silent_copy(tmp_path))


def _silent_copy(tmp_path):
    out = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(CLIP), "-t", "1", "-an", "-c:v", "copy", str(out)], check=True)
    return out
