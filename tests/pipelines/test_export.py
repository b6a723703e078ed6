"""The RAD-NeRF / ER-NeRF exporter on a small real dataset built from the shared clips."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipelines import dataset as D
from pipelines import schema
from pipelines.commit import write_clip
from pipelines.export import AU45_PER_BLINK, ExportError, ExportReport, export_radnerf
from pipelines.export_frames import torso_rgba
from pipelines.schema import train_count
from pipelines.storage import S3Options, Storage
from tests.conftest import CLIPS
from tests.services import AWS_UNSET, MOTO_CREDENTIALS, moto_server, patched_environ
from workers.clip import ClipConfig, ClipProcessor, ClipResult, clip_id_for
from workers.landmarks import BLENDSHAPE_NAMES
from workers.morphable import FitConfig
from workers.parsing import BACKGROUND, HEAD, NECK, RADNERF_COLOURS, TORSO

N_FRAMES = 24
FAST_FIT = FitConfig(search_iters=20, rigid_iters=20, joint_iters=30, fine_steps=0)  # poses need not be good
BOB_FACELESS = (3, 4)  # frame indices of bob's clip whose face is removed
FACE_KEYS = ("bbox", "landmarks_2d", "landmarks_mesh", "pose_c2w", "focal", "cx", "cy", "expression", "blendshapes",
             "eye_ratio", "mouth_opening", "lips_rect", "face_rect", "parsing_png", "reprojection_error")
COLUMNS = ["face_found", "frame_index", "image_jpeg", "landmarks_2d", "pose_c2w", "focal", "cx", "cy",
           "audio_features", "blendshapes"]


def _drop_face(row: dict) -> dict:
    """The row as the worker writes a frame where it found no face."""
    return {**row, "face_found": False, "error": "removed by the test", **dict.fromkeys(FACE_KEYS)}


@dataclass
class Exported:
    dataset: D.Dataset
    reports: dict[str, ExportReport]


def _as_identity(res: ClipResult, identity: str, clip_id: str) -> ClipResult:
    """The same extracted clip listed under another identity and clip id."""
    rows = [{**r, "identity": identity, "clip_id": clip_id} for r in res.rows]
    return ClipResult({**res.summary, "clip_id": clip_id}, rows, [replace(p, identity=identity) for p in res.people])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """alice: two real clips fitted with different focal lengths; bob: alice's first clip again, with two faceless
    frames; ghost: frames without any face (no identities row). Exports of alice and bob."""
    root = tmp_path_factory.mktemp("export")
    st = Storage(root / "ds")
    p = ClipProcessor(ClipConfig(max_frames=N_FRAMES, fit=replace(FAST_FIT, focal_grid=(1.5,))))
    try:
        first = p(str(CLIPS[0]), identity="alice", clip_id=clip_id_for(str(CLIPS[0])))
        p.config = replace(p.config, fit=replace(FAST_FIT, focal_grid=(2.0,)))
        second = p(str(CLIPS[1]), identity="alice", clip_id=clip_id_for(str(CLIPS[1])))
    finally:
        p.close()
    write_clip(st, first, identity="alice")
    write_clip(st, second, identity="alice")
    bob = _as_identity(first, "bob", "b0b0b0b0b0b0b0b0")
    bob.rows = [_drop_face(r) if r["frame_index"] in BOB_FACELESS else r for r in bob.rows]
    write_clip(st, bob, identity="bob")
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    ghost = _as_identity(first, "ghost", "9a9a9a9a9a9a9a9a")  # committed after identities/ was written
    ghost.rows = [_drop_face(r) for r in ghost.rows]
    write_clip(st, ghost, identity="ghost")
    ds = D.Dataset(st)
    reports = {name: export_radnerf(ds, name, root / name) for name in ("alice", "bob")}
    return Exported(ds, reports)


def _transforms(out: Path, split: str) -> dict:
    return json.loads((out / f"transforms_{split}.json").read_text())


def _faces(ds: D.Dataset, identity: str) -> list[dict]:
    """The identity's rows with a face, in export order (img_id = position)."""
    return [r for r in ds.frames(identity, columns=COLUMNS).to_pylist() if r["face_found"]]


def test_train_count_matches_radnerf_split():
    """The default split is RAD-NeRF's int(n * 10 / 11) for every n > 1; one frame always trains."""
    assert all(train_count(n) == int(n * 10 / 11) for n in range(2, 3000))
    assert train_count(1) == 1 and train_count(10, 0.0) == 10
    with pytest.raises(ValueError, match="val_fraction"):
        train_count(10, 1.0)


def test_transforms_have_radnerf_fields_and_split(exported):
    """Exactly save_transforms' keys and types; train then val, disjoint, covering 0..N-1."""
    rep = exported.reports["alice"]
    assert rep.n_frames == 2 * N_FRAMES and rep.n_train == int(rep.n_frames * 10 / 11)
    ids = []
    for split in ("train", "val"):
        doc = _transforms(rep.output, split)
        assert set(doc) == {"focal_len", "cx", "cy", "frames"}
        assert all(type(doc[k]) is float for k in ("focal_len", "cx", "cy"))
        assert doc["cx"] == doc["cy"] == rep.image_size / 2
        for f in doc["frames"]:
            assert set(f) == {"img_id", "aud_id", "transform_matrix"}
            assert type(f["img_id"]) is int and f["aud_id"] == f["img_id"]
            m = np.array(f["transform_matrix"])
            assert m.shape == (4, 4) and all(type(v) is float for row in f["transform_matrix"] for v in row)
            assert np.allclose(m[3], [0, 0, 0, 1]) and np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-4)
        ids.append([f["img_id"] for f in doc["frames"]])
    assert ids[0] == list(range(rep.n_train)) and ids[1] == list(range(rep.n_train, rep.n_frames))


def test_every_frame_has_its_files(exported):
    """Each img_id has ori jpg + 68-line lms, parsing, gt and RGBA torso images of image_size, an aud row, an AU."""
    rep = exported.reports["alice"]
    out, size = rep.output, rep.image_size
    aud = np.load(out / "aud.npy")
    assert aud.shape == (rep.n_frames, 16, 80) and aud.dtype == np.float32
    assert cv2.imread(str(out / "bc.jpg")).shape == (size, size, 3)
    for i in range(rep.n_frames):
        assert cv2.imread(str(out / "ori_imgs" / f"{i}.jpg")).shape == (size, size, 3)
        assert cv2.imread(str(out / "gt_imgs" / f"{i}.jpg")).shape == (size, size, 3)
        assert cv2.imread(str(out / "parsing" / f"{i}.png")).shape == (size, size, 3)
        assert cv2.imread(str(out / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED).shape == (size, size, 4)
        lines = (out / "ori_imgs" / f"{i}.lms").read_text().splitlines()
        assert len(lines) == 68 and all(len(line.split(" ")) == 2 for line in lines)
    au = pd.read_csv(out / "au.csv")[" AU45_r"].to_numpy()  # as ER-NeRF's provider reads it
    assert len(au) == rep.n_frames and au.min() >= 0 and au.max() <= 5


@pytest.mark.parametrize("i", [0, N_FRAMES - 1, N_FRAMES, N_FRAMES + 1, 2 * N_FRAMES - 1])
def test_frames_align_with_the_dataset_across_clips(exported, i):
    """img_id i is the i-th face row in (clip, frame) order: same audio, pose, and landmarks (seen by the
    export camera) on both sides of the clip boundary."""
    rep = exported.reports["alice"]
    row = _faces(exported.dataset, "alice")[i]
    assert np.array_equal(np.load(rep.output / "aud.npy")[i], schema.array(row, "audio_features"))
    pose = next(f for s in ("train", "val") for f in _transforms(rep.output, s)["frames"] if f["img_id"] == i)
    assert np.allclose(pose["transform_matrix"], schema.array(row, "pose_c2w"), atol=1e-6)
    a = rep.focal_len / row["focal"]  # the clip's camera -> the export camera
    expected = a * (schema.array(row, "landmarks_2d") - [row["cx"], row["cy"]]) + [rep.cx, rep.cy]
    assert np.allclose(np.loadtxt(rep.output / "ori_imgs" / f"{i}.lms"), expected, atol=1e-4)
    blink = np.mean([row["blendshapes"][1 + BLENDSHAPE_NAMES.index(n)] for n in ("eyeBlinkLeft", "eyeBlinkRight")])
    au = pd.read_csv(rep.output / "au.csv")[" AU45_r"].to_numpy()
    assert au[i] == pytest.approx(AU45_PER_BLINK * blink, abs=0.006)


def test_clips_with_another_camera_are_resampled(exported):
    """alice's clips were fitted with different focal lengths: all frames are resampled onto the mean one,
    and the image moves with the landmarks (the face stays where the .lms says)."""
    rep = exported.reports["alice"]
    assert rep.n_resampled == rep.n_frames and len(rep.clips) == 2
    row = _faces(exported.dataset, "alice")[0]
    ori = cv2.imdecode(np.frombuffer(row["image_jpeg"], np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    new = cv2.imread(str(rep.output / "ori_imgs" / "0.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    a = rep.focal_len / row["focal"]
    m = np.array([[a, 0, rep.cx - a * row["cx"] + 0.5 * (a - 1)], [0, a, rep.cy - a * row["cy"] + 0.5 * (a - 1)]])
    warped = cv2.warpAffine(ori, m, ori.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(new - warped).mean() < 2.0 < np.abs(new - ori).mean()


def test_parsing_colours_and_head_on_the_face(exported):
    """Parsing holds only the 4 RAD-NeRF colours (as cv2 reads them); head pixels cover the landmark hull."""
    rep = exported.reports["alice"]
    allowed = {tuple(c) for c in RADNERF_COLOURS.values()}
    for i in (0, N_FRAMES, rep.n_frames - 1):
        seg = cv2.imread(str(rep.output / "parsing" / f"{i}.png"))
        assert {tuple(int(v) for v in c) for c in np.unique(seg.reshape(-1, 3), axis=0)} <= allowed
        head = (seg == RADNERF_COLOURS[HEAD]).all(-1)
        hull = np.zeros(head.shape, np.uint8)
        lms = np.loadtxt(rep.output / "ori_imgs" / f"{i}.lms")
        cv2.fillConvexPoly(hull, cv2.convexHull(lms.round().astype(np.int32)), 1)
        assert head[hull.astype(bool)].mean() > 0.95


def test_gt_and_torso_images(exported):
    """gt keeps the person and shows bc.jpg on background pixels; the torso image is opaque on neck and torso
    pixels and transparent on the background."""
    rep = exported.reports["alice"]
    bc = cv2.imread(str(rep.output / "bc.jpg")).astype(np.float32)
    i = N_FRAMES + 3
    seg = cv2.imread(str(rep.output / "parsing" / f"{i}.png"))
    bg = (seg == 255).all(-1)
    gt = cv2.imread(str(rep.output / "gt_imgs" / f"{i}.jpg")).astype(np.float32)
    ori = cv2.imread(str(rep.output / "ori_imgs" / f"{i}.jpg")).astype(np.float32)
    assert np.abs(gt - bc)[bg].mean() < 4 and np.abs(gt - ori)[~bg].mean() < 4
    alpha = cv2.imread(str(rep.output / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED)[..., 3]
    body = (seg == RADNERF_COLOURS[NECK]).all(-1) | (seg == RADNERF_COLOURS[TORSO]).all(-1)
    assert body.any() and (alpha[body] == 255).all()
    assert (alpha[bg] == 0).mean() > 0.99


def test_torso_image_fills_under_the_chin():
    """On a synthetic parsing (head over neck over torso) the neck is extended up into the head, opaque, darkening
    upwards; the head and background stay transparent."""
    labels = np.full((64, 64), BACKGROUND, np.uint8)
    labels[5:30, 20:44] = HEAD
    labels[30:40, 26:38] = NECK
    labels[40:, 10:54] = TORSO
    gt = np.full((64, 64, 3), 200, np.uint8)
    rgba = torso_rgba(gt, labels, np.zeros_like(gt))
    alpha = rgba[..., 3]
    assert (alpha[labels == NECK] == 255).all() and (alpha[labels == TORSO] == 255).all()
    assert (alpha[labels == BACKGROUND][:100] == 0).all() and (alpha[:5] == 0).all()
    assert (alpha[15:30, 30] == 255).all() and (alpha[15:30, 21] == 0).all()  # under the chin only
    assert rgba[20, 30, 0] < rgba[30, 30, 0] <= 200


def test_faceless_rows_are_skipped_and_unchanged_camera_keeps_bytes(exported):
    """bob's two faceless frames are skipped with contiguous ids; his one clip's camera is the export camera, so
    the JPEG bytes are written as-is and frame 5 (img_id 3) carries frame 5's data."""
    rep = exported.reports["bob"]
    assert (rep.n_frames, rep.n_skipped, rep.n_resampled) == (N_FRAMES - 2, 2, 0)
    ids = [f["img_id"] for s in ("train", "val") for f in _transforms(rep.output, s)["frames"]]
    assert ids == list(range(rep.n_frames)) and len(np.load(rep.output / "aud.npy")) == rep.n_frames
    faces = _faces(exported.dataset, "bob")
    assert faces[3]["frame_index"] == 5
    for i in (2, 3, rep.n_frames - 1):
        assert (rep.output / "ori_imgs" / f"{i}.jpg").read_bytes() == faces[i]["image_jpeg"]
        assert np.allclose(np.loadtxt(rep.output / "ori_imgs" / f"{i}.lms"), schema.array(faces[i], "landmarks_2d"),
                           atol=1e-5)
        assert np.array_equal(np.load(rep.output / "aud.npy")[i], schema.array(faces[i], "audio_features"))


def test_unknown_identity_names_dataset_and_identities(exported, tmp_path):
    """An unknown identity is a KeyError naming the dataset and the identities it has; nothing is written."""
    with pytest.raises(KeyError) as err:
        export_radnerf(exported.dataset, "carol", tmp_path / "carol")
    msg = str(err.value)
    assert "carol" in msg and "alice" in msg and "bob" in msg and exported.dataset.storage.uri in msg
    assert not (tmp_path / "carol").exists()


def test_identity_without_faces_is_an_export_error(exported, tmp_path):
    """An identity whose rows have no face cannot be exported."""
    with pytest.raises(ExportError, match="ghost.*none with a face"):
        export_radnerf(exported.dataset, "ghost", tmp_path / "ghost")


def test_existing_export_needs_overwrite(exported, tmp_path):
    """Exporting over an earlier export fails unless overwrite=True, which replaces it."""
    out = tmp_path / "bob"
    shutil.copytree(exported.reports["bob"].output, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_radnerf(exported.dataset, "bob", out)
    rep = export_radnerf(exported.dataset, "bob", out, overwrite=True, val_fraction=0.5)
    half = (N_FRAMES - 2) // 2
    assert (rep.n_train, rep.n_val) == (half, half) and len(_transforms(out, "val")["frames"]) == half


def test_export_reads_from_s3(exported, tmp_path):
    """The same export from a dataset on S3 (a real moto server on loopback) gives the same files."""
    root = exported.dataset.storage.root
    with moto_server(tmp_path) as server, patched_environ(MOTO_CREDENTIALS, AWS_UNSET):
        opts = S3Options(endpoint_url=server.url)
        client = opts.boto3_client()
        client.create_bucket(Bucket="parley-export")
        for path in Path(root).rglob("*.parquet"):
            client.upload_file(str(path), "parley-export", f"ds/{path.relative_to(root)}")
        rep = export_radnerf("s3://parley-export/ds", "bob", tmp_path / "bob", s3=opts)
    local = exported.reports["bob"].output
    assert rep.n_frames == N_FRAMES - 2
    for name in ("transforms_train.json", "transforms_val.json", "au.csv", "aud.npy", "ori_imgs/3.jpg",
                 "parsing/3.png", "torso_imgs/3.png"):
        assert (rep.output / name).read_bytes() == (local / name).read_bytes(), name
