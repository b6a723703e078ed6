"""Wiring of the face-alignment (FAN) landmark backend, :class:`workers.landmarks.FanLandmarker`.

The real 2D-FAN-4 weights (``2DFAN4-11f355bf06.pth.tar``) cannot be downloaded on this machine (no
internet), so these tests never use them. They check that the asset registry refuses to go on
without them (missing file, wrong checksum), and they generate their own weights for the same network
(``face_alignment.models.FAN(4)``): every layer is zeroed except a few 3x3 convolutions of the last
stack, which turn a constant into "distance to the border" steps through their zero padding, and the
last heatmap layer, which combines the steps so that heatmap ``j`` has exactly one maximum, on the
pixel ``TARGETS[j]``, whatever the image. Those weights go through ``torch.save`` ->
``FanLandmarker(fan_weights=...)`` -> ``torch.load(weights_only=True)`` -> ``load_state_dict``; on a
real frame, with the real BlazeFace detector from ``../shared/assets``, the 68 landmarks must then land
where face-alignment's crop convention maps those heatmap pixels. The landmark *accuracy* of FAN is not
tested here: that needs the real weights.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from face_alignment.detection.blazeface import FaceDetector as BlazeFaceDetector
from face_alignment.models import FAN
from face_alignment.utils import CENTER_Y_OFFSET, HEATMAP_RESOLUTION, REFERENCE_SCALE, SCALE_FACTOR

from workers import assets, media
from workers.errors import AssetError
from workers.landmarks import Face, FanLandmarker, MediaPipeLandmarker

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CLIP = SHARED / "data" / "clips" / "WDA_BobMenendez_000.mp4"
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"

# Heatmap pixels (x, y) that the generated weights make each of the 68 heatmaps peak on: 68 distinct
# points, each at most 5 pixels from two borders of the 64x64 heatmap (the reach of the border steps).
COORDS = (0, 1, 2, 3, 4, 5, 58, 59, 60, 61, 62, 63)
TARGETS = [(x, y) for y in COORDS for x in COORDS][::2][:68]
N_STEPS = 6
# Border steps, one channel per side and distance k: [x >= k], [x <= 63 - k], [y >= k], [y <= 63 - k].
# Each is made by a 3x3 kernel with a single 1 at (ky, kx), which shifts its input one pixel inwards.
SIDE_TAPS = ((1, 0), (1, 2), (0, 1), (2, 1))  # left, right, top, bottom
# Channel of the step "distance >= k" (plus the side index 0..3) in the output of the last stack's
# `top_m_3` block: steps 1-3 come from the hourglass's full-resolution block `m3.b1_4`, 4-6 from
# `top_m_3`; each block writes its three convolutions into output slices 0-127, 128-191, 192-255.
STEP_CHANNEL = {1: 0, 2: 128, 3: 192, 4: 4, 5: 132, 6: 196}


def _real_frame_skip_reason() -> str | None:
    """Why the real-frame tests cannot run here, or None."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        return "ffmpeg/ffprobe not installed"
    if not CLIP.is_file():
        return f"real clip {CLIP} not found"
    try:
        for name in ("blazeface", "blazeface_anchors", "face_landmarker"):
            assets.resolve(name, download=False)
    except AssetError:
        return "BlazeFace / MediaPipe assets not found (set PARLEY_ASSETS=../shared/assets)"
    return None


_SKIP_REASON = _real_frame_skip_reason()
needs_real_frame = pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or "")


def _designed_fan_state(targets: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """A FAN(4) state dict whose heatmap j is 0 at ``targets[j]`` and negative everywhere else."""
    sd = FAN(4).state_dict()
    with torch.no_grad():
        for key, value in sd.items():
            if value.is_floating_point():
                value.zero_()
            if key.endswith("running_var"):
                value.fill_(1.0 - 1e-5)  # var + eps == 1: a BatchNorm with weight 1 is the exact identity

        def identity(bn: str, channels) -> None:
            for c in channels:
                sd[f"{bn}.weight"][c] = 1.0

        def shift(conv: str, src: int, dst: int) -> None:
            for s, (ky, kx) in enumerate(SIDE_TAPS):
                sd[f"{conv}.weight"][dst + s, src + s, ky, kx] = 1.0

        # The whole network sees only zeros until the last hourglass; there a BatchNorm bias makes a
        # constant 1 and each chained 3x3 convolution pushes the zero padding one pixel further in.
        block = "m3.b1_4"
        sd[f"{block}.bn1.bias"][0] = 1.0
        for s, (ky, kx) in enumerate(SIDE_TAPS):
            sd[f"{block}.conv1.weight"][s, 0, ky, kx] = 1.0  # steps k=1 -> channels 0..3
        identity(f"{block}.bn2", range(4))
        shift(f"{block}.conv2", 0, 0)  # k=2 -> 128..131
        identity(f"{block}.bn3", range(4))
        shift(f"{block}.conv3", 0, 0)  # k=3 -> 192..195
        block = "top_m_3"  # its residual carries steps 1-3 through
        identity(f"{block}.bn1", range(192, 196))
        shift(f"{block}.conv1", 192, 4)  # k=4 -> 4..7
        identity(f"{block}.bn2", range(4, 8))
        shift(f"{block}.conv2", 4, 4)  # k=5 -> 132..135
        identity(f"{block}.bn3", range(4, 8))
        shift(f"{block}.conv3", 4, 4)  # k=6 -> 196..199
        sd["conv_last3.weight"][:, :, 0, 0] = torch.eye(256)
        identity("bn_end3", range(256))
        # Heatmap j = -|min(dx, 6) - a| - |min(dy, 6) - b| with dx, dy the distances to the nearest
        # borders: linear in the steps, since |m - a| = sum_{k<=a} (1 - [m>=k]) + sum_{k>a} [m>=k].
        for j, (x, y) in enumerate(targets):
            for pos, near, far in ((x, 0, 1), (y, 2, 3)):
                side, a = (near, pos) if pos < HEATMAP_RESOLUTION // 2 else (far, HEATMAP_RESOLUTION - 1 - pos)
                assert a < N_STEPS
                for k in range(1, N_STEPS + 1):
                    sd["l3.weight"][j, STEP_CHANNEL[k] + side, 0, 0] = 1.0 if k <= a else -1.0
                sd["l3.bias"][j] -= a
    return sd


def _expected_landmarks(box: np.ndarray) -> np.ndarray:
    """Image pixels of :data:`TARGETS` under face-alignment's crop around a detector box [x0, y0, x1, y1]."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * CENTER_Y_OFFSET
    side = SCALE_FACTOR * ((x1 - x0) + (y1 - y0)) / REFERENCE_SCALE  # crop side in image pixels
    hm = np.array(TARGETS, np.float64) + 0.5  # a heatmap pixel's centre
    return np.stack([cx - side / 2 + hm[:, 0] * side / HEATMAP_RESOLUTION,
                     cy - side / 2 + hm[:, 1] * side / HEATMAP_RESOLUTION], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def designed_state() -> dict[str, torch.Tensor]:
    """The generated FAN(4) state dict for :data:`TARGETS`."""
    return _designed_fan_state(TARGETS)


@pytest.fixture(scope="module")
def designed_weights(designed_state, tmp_path_factory) -> Path:
    """The generated state dict, saved with torch.save under the real weights' file name."""
    path = tmp_path_factory.mktemp("fan") / FAN_FILE
    torch.save(designed_state, path)
    return path


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """Frame 0 of a real clip, RGB uint8 [512, 512, 3]."""
    info = media.probe(CLIP)
    return np.array(next(iter(media.iter_frames(CLIP, info, max_frames=1))))


@pytest.fixture(scope="module")
def detector_boxes(frame) -> list[np.ndarray]:
    """BlazeFace boxes [x0, y0, x1, y1, score] on ``frame``, from a detector built here from the asset files."""
    detector = BlazeFaceDetector(device="cpu", path_to_detector=str(assets.resolve("blazeface")),
                                 path_to_anchor=str(assets.resolve("blazeface_anchors")))
    return [np.asarray(b, np.float64) for b in detector.detect_from_image(frame.copy())]


@pytest.fixture(scope="module")
def fan(designed_weights) -> FanLandmarker:
    """A FanLandmarker on the generated weights and the real BlazeFace files."""
    return FanLandmarker(fan_weights=designed_weights)


def test_missing_fan_weights_name_file_env_var_and_url(tmp_path, monkeypatch):
    """Without the FAN file anywhere, resolve() raises AssetError naming the file, PARLEY_ASSETS and the URL."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("PARLEY_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("PARLEY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetError) as info:
        assets.resolve("fan_2d", download=False)
    text = str(info.value)
    for part in (FAN_FILE, "PARLEY_ASSETS", FAN_URL):
        assert part in text, f"{part!r} not in {text!r}"


def test_generated_weights_fail_the_published_checksum(tmp_path, monkeypatch):
    """A generated state dict under the real file name is rejected: its sha256 lacks the 11f355bf06 prefix."""
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("PARLEY_ASSETS", str(tmp_path))
    monkeypatch.setenv("PARLEY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / FAN_FILE
    torch.save(FAN(4).state_dict(), path)
    assert not hashlib.sha256(path.read_bytes()).hexdigest().startswith("11f355bf06")
    with pytest.raises(AssetError, match="checksum") as info:
        assets.resolve("fan_2d", download=False)
    assert str(path) in str(info.value) and "11f355bf06" in str(info.value)
    with pytest.raises(AssetError, match="checksum"):
        FanLandmarker()  # the default weights come from the registry, so the backend refuses too


def test_landmarker_refuses_a_state_dict_of_another_network(tmp_path):
    """A state dict whose keys are not FAN(4)'s fails load_state_dict instead of being half-loaded."""
    path = tmp_path / "not_fan.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(68, 256)}, path)
    with pytest.raises(RuntimeError, match="state_dict"):
        FanLandmarker(fan_weights=path)


def test_designed_weights_peak_on_their_targets(designed_state):
    """The generated FAN(4) heatmaps have one maximum each, on TARGETS[j], for any input image."""
    net = FAN(4)
    net.load_state_dict(designed_state)
    with torch.no_grad():
        heatmaps = net.eval()(torch.rand(1, 3, 256, 256))[-1][0].numpy()
    assert heatmaps.shape == (68, HEATMAP_RESOLUTION, HEATMAP_RESOLUTION)
    for j, (x, y) in enumerate(TARGETS):
        h = heatmaps[j]
        assert h[y, x] == 0.0 and (h == 0.0).sum() == 1 and h.max() == 0.0, j
        if 0 < x < 63 and 0 < y < 63:  # equal neighbours: face-alignment's quarter-pixel nudge is 0
            assert h[y, x + 1] == h[y, x - 1] and h[y + 1, x] == h[y - 1, x], j


@needs_real_frame
def test_detector_finds_the_face_mediapipe_finds(frame, detector_boxes):
    """The real BlazeFace detector finds exactly one face, overlapping MediaPipe's face box (IoU > 0.3)."""
    assert len(detector_boxes) == 1
    mp = MediaPipeLandmarker()
    try:
        mp_faces = mp.detect(frame, 0)
    finally:
        mp.close()
    assert len(mp_faces) == 1
    assert _iou(detector_boxes[0][:4], mp_faces[0].bbox.astype(np.float64)) > 0.3


@needs_real_frame
def test_landmarks_follow_the_loaded_weights(fan, frame, detector_boxes):
    """The 68 landmarks land where the generated heatmap peaks map through the detector's crop."""
    box = detector_boxes[0]
    faces = fan.detect(frame, 0)
    assert len(faces) == 1 and isinstance(faces[0], Face)
    face = faces[0]
    lm = face.landmarks_68
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    # face-alignment truncates image coordinates to integers, so allow one pixel.
    np.testing.assert_allclose(lm, _expected_landmarks(box), atol=1.0)
    assert len(np.unique(lm, axis=0)) == 68
    assert face.bbox.shape == (4,) and face.bbox.dtype == np.float32
    np.testing.assert_array_equal(face.bbox, np.concatenate([lm.min(0), lm.max(0)]))
    assert face.score == pytest.approx(box[4]) and 0.5 <= face.score <= 1.0


@needs_real_frame
def test_blank_frame_has_no_face(fan):
    """A uniform grey frame gives no faces."""
    assert fan.detect(np.full((512, 512, 3), 128, np.uint8), 0) == []
