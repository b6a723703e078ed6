"""The self-supervised face-crop encoder (JEAN's ``crop`` features) and the alignment that feeds it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from jobs.jean_data import TEMPLATE, align_face, read_expression_rows
from nerf.jean.expression_train import probe_r2
from nerf.jean.face_crops import CROP, CropEncoderConfig, train_crop_encoder
from tests.conftest import SMALL_IDENTITY

pytestmark = pytest.mark.timeout(300)


def synthetic_faces(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of a dark 'brow' bar whose height is the expression, under a random light ramp and a 1-px shift:
    (crops uint8 [n, CROP*CROP], brow height [n], light [n])."""
    brow = rng.uniform(0, 1, n)
    light = rng.uniform(-0.4, 0.4, n)
    yy, xx = np.mgrid[0:CROP, 0:CROP] / CROP
    out = np.zeros((n, CROP * CROP), np.uint8)
    for k in range(n):
        dy, dx = rng.integers(-1, 2, 2) / CROP
        img = 0.6 + 0.2 * ((xx - 0.5 - dx) ** 2 + (yy - 0.55 - dy) ** 2 < 0.12)  # the face
        img -= 0.5 * (np.abs(yy - (0.25 + 0.15 * brow[k]) - dy) < 0.04) * (np.abs(xx - 0.5 - dx) < 0.3)
        img *= 1 + light[k] * (xx - 0.5)
        out[k] = np.clip(img * 255, 0, 255).astype(np.uint8).reshape(-1)
    return out, brow, light


def test_the_code_holds_the_expression_and_not_the_light():
    rng = np.random.default_rng(0)
    crops, brow, light = synthetic_faces(400, rng)
    enc = train_crop_encoder(crops[:300], CropEncoderConfig(width=8, steps=300, batch=32), seed=0)
    codes = enc.encode(crops).numpy().astype(np.float64)
    assert codes.shape == (400, 64) and np.isfinite(codes).all()
    # held-out crops: a linear read of the code finds the brow's height
    assert probe_r2(codes[:300], brow[:300, None], codes[300:], brow[300:, None]) > 0.8
    # relighting a crop moves its code less than another brow height does
    again = synthetic_faces(400, np.random.default_rng(0))[0]  # the same draws
    assert np.array_equal(again, crops)
    one = crops[300:301].reshape(CROP, CROP).astype(np.float32)
    relit = np.clip(one * (1 + 0.3 * (np.arange(CROP) / CROP - 0.5)), 0, 255).astype(np.uint8).reshape(1, -1)
    far = int(np.argmax(np.abs(brow - brow[300])))
    c = enc.encode(np.concatenate([crops[300:301], relit, crops[far:far + 1]])).numpy()
    assert np.linalg.norm(c[1] - c[0]) < np.linalg.norm(c[2] - c[0])
    # eval mode: the same crop always gives the same code
    assert torch.equal(enc.encode(crops[:4]), enc.encode(crops[:4]))


def test_bad_crops_are_refused():
    with pytest.raises(ValueError, match=r"takes \[N>1, 4096\]"):
        train_crop_encoder(np.zeros((10, 100), np.uint8))


def test_alignment_undoes_a_turn_of_the_head(small_dataset):
    """A real frame turned in the image plane aligns to the same crop, with the eyes where the template puts them."""
    rows = read_expression_rows(str(small_dataset), SMALL_IDENTITY, crops=True)
    from pipelines.dataset import Dataset

    batch = next(Dataset(str(small_dataset)).require().iter_frames(SMALL_IDENTITY, ["image_jpeg", "landmarks_2d",
                                                                                     "face_found"]))
    row = next(r for r in batch.to_pylist() if r["face_found"])
    image = cv2.imdecode(np.frombuffer(row["image_jpeg"], np.uint8), cv2.IMREAD_GRAYSCALE)
    lm = np.asarray(row["landmarks_2d"], np.float32).reshape(68, 2)
    h, w = image.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 15, 0.9)
    turned = cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
    lm_turned = lm @ turn[:, :2].T + turn[:, 2]
    a, b = align_face(image, lm).astype(np.float32), align_face(turned, lm_turned).astype(np.float32)
    assert a.shape == (CROP, CROP) and a.std() > 10
    assert np.abs(a - b).mean() < 0.25 * np.abs(a - a.mean()).mean()  # nearly the same crop
    # the eyes land where the template says: darker than the cheeks just below them
    eye = (TEMPLATE[0] * CROP).astype(int)
    assert a[eye[1], eye[0] - 2:eye[0] + 3].mean() < a[eye[1] + 10, eye[0] - 2:eye[0] + 3].mean()
    assert rows["crop"].shape == (len(rows["frame"]), CROP * CROP) and rows["crop"].dtype == np.uint8
