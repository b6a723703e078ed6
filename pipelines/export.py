"""Export one identity of a parley dataset in the RAD-NeRF / ER-NeRF on-disk layout.

What :func:`export_radnerf` writes into the output directory (``N`` exported frames, ids ``0..N-1``)::

    transforms_train.json   {"focal_len", "cx", "cy", "frames": [{"img_id", "aud_id", "transform_matrix"}]}
    transforms_val.json     the same for the validation frames
    ori_imgs/<i>.jpg        the person crop; <i>.lms its 68 landmarks ("x y" per line, np.savetxt "%f")
    parsing/<i>.png         head / neck / torso / background colours, read by RAD-NeRF with cv2.imread
    gt_imgs/<i>.jpg         the crop with its background pixels replaced by bc.jpg
    torso_imgs/<i>.png      BGRA: neck and torso (extended up under the chin), alpha 0 elsewhere
    bc.jpg                  the identity's background image
    aud.npy                 float32 [N, 16, 80]: per-frame mel windows
    au.csv                  OpenFace-style table with ER-NeRF's `` AU45_r`` (blink) column, one row per frame

The files follow RAD-NeRF's ``data_utils/process.py`` (``save_transforms``, ``extract_torso_and_gt``,
``extract_landmarks``) and what its ``nerf/provider.py`` / ER-NeRF's ``nerf_triplane/provider.py`` read.
The decisions, where parley's data and those tools differ:

* **Numbering.** Frames are numbered ``0..N-1`` in (``clip_id``, ``frame_index``) order over all clips of
  the identity; ``img_id == aud_id ==`` that number. Rows without a usable face (``face_found`` false,
  or a null pose / landmarks) are skipped and the numbering stays contiguous (the report counts them).
* **Split.** As ``save_transforms``: the first ``floor(N * 10 / 11)`` frames train, the rest validate
  (``val_fraction`` = 1/11 by default; see :func:`train_count`). At least one frame always trains.
  RAD-NeRF validates on the first 100 validation frames only. With several clips the validation
  frames are the end of the last clip(s).
* **Units and axes.** ``pose_c2w`` (camera-to-world, metres, OpenGL axes: x right, y up, camera looking
  down -z, head at the world origin) is written unchanged as ``transform_matrix``. RAD-NeRF's tracker
  (AD-NeRF's, on the Basel Face Model) works in decimetres with the same projection
  (``u = cx - f x / z``, ``v = cy + f y / z``, z < 0 in front) and ``save_transforms`` divides its
  translation by 10, so its transforms are camera-to-world in metres, OpenGL axes, head at the origin:
  the same convention, no conversion. With RAD-NeRF's defaults (``--scale 4``, ``--offset 0 0 0``,
  ``--bound 1``) parley's head model (about +-0.2 m around the origin) lands inside the unit box.
* **One camera.** RAD-NeRF has one ``focal_len`` per dataset and infers the image size as
  ``2 * cx`` by ``2 * cy``. The export camera is the identity's focal length (frame-weighted mean over
  its clips) with the principal point at the crop centre. Frames whose own camera (their clip's fit)
  differs are resampled onto it: for a pinhole camera a change of intrinsics is exactly the image
  affinity ``p' = f / f_k * (p - c_k) + c``, applied to the image, the parsing (nearest) and the
  landmarks; poses do not change. Frames already on the export camera keep their JPEG bytes as-is.
* **Parsing colours.** RAD-NeRF writes and reads parsing images with OpenCV, so its "head (255, 0, 0)"
  is the array OpenCV reads (B, G, R order): the file pixels of the head are blue to an RGB viewer.
  The same holds here (:data:`workers.parsing.RADNERF_COLOURS` in OpenCV array order).
* **Audio.** ``aud.npy`` is parley's ``audio_features`` reshaped to [16, 80] (16 mel frames around the
  video frame, 80 mel bands), in RAD-NeRF's ``[N, 16, K]`` layout with K = 80. RAD-NeRF picks both the
  file and its audio net's input width from ``--asr_model``: pass a name without ``esperanto``,
  ``deepspeech`` or ``hubert`` (so ``aud.npy`` is read) and set the audio net's ``audio_in_dim`` to 80
  (its fallback is 32); ER-NeRF's ``--audio_extractor`` needs the same change. Audio attention windows
  near a clip boundary take neighbours from the adjacent clip. Frames without audio get zeros
  (counted in the report).
* **Blink.** ER-NeRF reads OpenFace's AU45 intensity (0..5) from ``au.csv`` and uses
  ``clip(AU45_r, 0, 2) / 2``. It is derived as ``5 * mean(eyeBlinkLeft, eyeBlinkRight)`` of MediaPipe's
  blendshapes (:data:`AU45_PER_BLINK`), or, for rows without blendshapes (the FAN backend), from the
  eye aspect ratio relative to the identity's open-eye ratio. RAD-NeRF computes its eye area from the
  ``.lms`` files itself.
* **Torso images** follow ``extract_torso_and_gt``: the ground truth with the head replaced by the
  background, the torso and the (vertically dilated) neck extended upwards where the head sits on them
  (darkening 2% a pixel, the neck part blurred), alpha 0 outside those pixels.

The transforms files are written last: an export without them is unfinished.

This module plans the export and writes the tables; each frame's image files are written by
:mod:`pipelines.export_frames`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.compute as pc

from pipelines.dataset import Dataset
from pipelines.export_frames import JPEG_QUALITY, Camera, ExportError, FrameOut, export_frame
from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW, HOLDOUT_FRACTION, train_count
from pipelines.storage import S3Options, Storage, is_s3

"""RAD-NeRF's split: ``train_val_split = int(valid_num * 10 / 11)``."""
AU45_PER_BLINK = 5.0
"""AU45 intensity (OpenFace's 0..5 scale) of a fully closed eye (blink score 1)."""
LAYOUT = ("transforms_train.json", "transforms_val.json", "ori_imgs", "gt_imgs", "torso_imgs", "parsing",
          "bc.jpg", "aud.npy", "au.csv")
"""Everything an export writes into its output directory."""
IMAGE_DIRS = ("ori_imgs", "gt_imgs", "torso_imgs", "parsing")

_PASS1_COLUMNS = ["face_found", "pose_c2w", "landmarks_2d", "eye_ratio"]
_FRAME_COLUMNS = ["frame_index", "time_s", "image_jpeg", "landmarks_2d", "pose_c2w", "focal", "cx", "cy",
                  "blendshapes", "eye_ratio", "parsing_png", "audio_features", "audio_valid"]


@dataclass
class ExportReport:
    """What :func:`export_radnerf` wrote."""

    output: Path
    """The export directory."""
    identity: str
    n_frames: int
    """Frames exported (``img_id`` 0..n_frames-1)."""
    n_train: int
    n_val: int
    n_skipped: int
    """Rows of the identity without a usable face, not exported."""
    n_resampled: int
    """Frames resampled onto the export camera (their clip's camera differed)."""
    n_without_audio: int
    """Frames whose audio window is missing or invalid (no audio track)."""
    n_blink_from_landmarks: int
    """Frames whose ``AU45_r`` comes from the eye aspect ratio (no blendshapes)."""
    focal_len: float
    cx: float
    cy: float
    image_size: int
    clips: list[str] = field(default_factory=list)
    """Clips exported, in order."""


@dataclass
class _Plan:
    """Pass 1: which rows are exported and their ids."""

    ids: dict[str, dict[int, int]]
    """clip_id -> frame_index -> img_id, clips in export order."""
    n_rows: int
    open_eye_ratio: float

    @property
    def n_frames(self) -> int:
        return sum(len(v) for v in self.ids.values())


@dataclass
class _Tables:
    """Per-frame values gathered for the tables written at the end."""

    poses: np.ndarray  # [N, 4, 4]
    blink: np.ndarray  # [N]
    times: np.ndarray  # [N]
    n_resampled: int = 0
    n_without_audio: int = 0
    n_blink_from_landmarks: int = 0


def export_radnerf(
    dataset: str | os.PathLike | Storage | Dataset,
    identity: str,
    output: str | os.PathLike,
    *,
    val_fraction: float = HOLDOUT_FRACTION,
    overwrite: bool = False,
    threads: int = 4,
    s3: S3Options | None = None,
    clip_ids: list[str] | None = None,
) -> ExportReport:
    """Write one identity of a dataset as a RAD-NeRF / ER-NeRF data directory (see the module docstring).

    Args:
        dataset: the dataset (root URI, local or ``s3://``, a :class:`Storage` or a :class:`Dataset`).
        identity: the identity to export.
        output: a local directory (created if missing).
        val_fraction: fraction of the frames (the last ones) in ``transforms_val.json``.
        overwrite: replace an earlier export in ``output`` (only the files of the layout are removed).
        threads: frames encoded in parallel.
        s3: how to reach S3 when ``dataset`` is a URI.
        clip_ids: export only these clips of the identity (default: all).

    Returns:
        The :class:`ExportReport`.

    Raises:
        KeyError: the dataset has no such identity (the message lists the identities it has).
        ExportError: no usable frame, no background image, or a corrupt frame row.
        FileExistsError: ``output`` holds an export and ``overwrite`` is false.
        ValueError: bad arguments (an S3 output, ``val_fraction`` outside [0, 1), ``threads`` < 1).
    """
    if is_s3(str(output)):
        raise ValueError(f"{output}: the export is written to a local directory; copy it to S3 afterwards")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    train_count(1, val_fraction)  # validates val_fraction before any work
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset if isinstance(dataset, Storage)
                                                              else str(dataset), s3)
    plan = _plan(ds, identity, clip_ids)
    ident = ds.identity(identity)
    size = int(ident.get("image_size") or 0)
    if size <= 0 or not ident.get("focal"):
        raise ExportError(f"{ds.storage.uri}: identity {identity!r} has no image size or focal length in "
                          "identities/; rebuild the identities table")
    cam = Camera(float(ident["focal"]), size / 2.0, size / 2.0, size)
    background = _background(ident, ds, cam)
    out = _prepare_output(Path(output), overwrite)
    cv2.imwrite(str(out / "bc.jpg"), background, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])

    tables = _write_frames(ds, identity, plan, cam, background, out, threads)
    n = plan.n_frames
    n_train = train_count(n, val_fraction)
    _write_au_csv(out / "au.csv", tables.blink, tables.times)
    _write_transforms(out, cam, tables.poses, n_train)
    return ExportReport(
        output=out, identity=identity, n_frames=n, n_train=n_train, n_val=n - n_train,
        n_skipped=plan.n_rows - n, n_resampled=tables.n_resampled, n_without_audio=tables.n_without_audio,
        n_blink_from_landmarks=tables.n_blink_from_landmarks, focal_len=cam.focal, cx=cam.cx, cy=cam.cy,
        image_size=size,
        clips=list(plan.ids),
    )


def export_conversation(dataset: str | os.PathLike | Storage | Dataset, conversation_id: str,
                        output: str | os.PathLike, *, overwrite: bool = False, threads: int = 4,
                        s3: S3Options | None = None) -> list[ExportReport]:
    """Write both people of a conversation (:meth:`Dataset.conversation`) as RAD-NeRF data directories,
    ``<output>/<identity>/`` each, from the conversation's clip only, and ``<output>/conversation.json`` with its
    identities and speaker segments (frame ranges of the clip: the exported ``img_id`` of a frame is its rank among
    that person's frames with a face).

    Raises:
        KeyError: no such conversation (the message lists the known ones); and as :func:`export_radnerf`.
    """
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset if isinstance(dataset, Storage)
                                                              else str(dataset), s3)
    conv = ds.conversation(conversation_id, columns=["frame_index"])
    out = Path(output)
    reports = [export_radnerf(ds, ident, out / ident, overwrite=overwrite, threads=threads, clip_ids=[conv.clip_id])
               for ident in conv.identities]
    meta = {"conversation_id": conv.conversation_id, "clip_id": conv.clip_id, "source_uri": conv.source_uri,
            "identities": list(conv.identities), "fps": conv.fps, "n_frames": conv.n_frames,
            "segments": [{"start": g.start, "end": g.end, "speaker": g.speaker, "listener": g.listener}
                         for g in conv.segments]}
    (out / "conversation.json").write_text(json.dumps(meta, indent=1))
    return reports


# pass 1: which rows ----------------------------------------------------------------------------------------
def _plan(ds: Dataset, identity: str, clip_ids: list[str] | None = None) -> _Plan:
    """Reads the small columns of all the identity's rows and numbers the usable ones.

    Raises:
        KeyError: no such identity.
        ExportError: no usable row.
    """
    table = ds.frames(identity, columns=_PASS1_COLUMNS, clip_ids=clip_ids)
    usable = pc.and_(pc.and_(pc.fill_null(table["face_found"], False), pc.is_valid(table["pose_c2w"])),
                     pc.is_valid(table["landmarks_2d"]))
    ok = np.asarray(usable.to_numpy(zero_copy_only=False), bool)
    if not ok.any():
        raise ExportError(f"{ds.storage.uri}: identity {identity!r} has {table.num_rows} frame rows but none with "
                          "a face (face_found, landmarks and pose); nothing to export")
    clip_ids = table["clip_id"].to_pylist()
    frame_index = table["frame_index"].to_numpy()
    ids: dict[str, dict[int, int]] = {}
    for k, row in enumerate(np.flatnonzero(ok)):  # the table is in (clip_id, frame_index) order
        ids.setdefault(clip_ids[row], {})[int(frame_index[row])] = k
    eye = table["eye_ratio"].to_numpy(zero_copy_only=False)[ok].astype(np.float64)
    eye = eye[np.isfinite(eye)]
    open_eye = float(np.percentile(eye, 90)) if eye.size else 0.3
    return _Plan(ids=ids, n_rows=table.num_rows, open_eye_ratio=open_eye)


def _background(ident: dict[str, Any], ds: Dataset, cam: Camera) -> np.ndarray:
    """The identity's background as BGR [S, S, 3]."""
    data = ident.get("background_png") or b""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ExportError(f"{ds.storage.uri}: identity {ident['identity']!r} has no background image in "
                          "identities/; rebuild the identities table")
    if bgr.shape[:2] != (cam.size, cam.size):
        bgr = cv2.resize(bgr, (cam.size, cam.size), interpolation=cv2.INTER_AREA)
    return bgr


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """Creates ``out`` and its image folders; an earlier export there is an error unless ``overwrite``."""
    existing = [name for name in LAYOUT if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds an export ({', '.join(existing)}); pass overwrite=True "
                              "to replace it")
    for name in existing:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in IMAGE_DIRS:
        (out / name).mkdir(parents=True, exist_ok=True)
    return out.resolve()


# pass 2: the frames ----------------------------------------------------------------------------------------
def _write_frames(ds: Dataset, identity: str, plan: _Plan, cam: Camera, background: np.ndarray, out: Path,
                  threads: int) -> _Tables:
    """Writes every frame's files and ``aud.npy``; returns what the tables need."""
    n = plan.n_frames
    aud = np.lib.format.open_memmap(out / "aud.npy", mode="w+", dtype=np.float32,
                                    shape=(n, AUDIO_WINDOW, AUDIO_MELS))
    tables = _Tables(np.zeros((n, 4, 4), np.float32), np.zeros(n, np.float32), np.zeros(n, np.float64))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for res in _export_frames(ds, identity, plan, cam, background, out, pool):
            i = res.img_id
            tables.poses[i], tables.blink[i], tables.times[i] = res.pose, res.blink, res.time_s
            if res.audio is not None:
                aud[i] = res.audio
            tables.n_resampled += res.resampled
            tables.n_without_audio += not res.audio_valid
            tables.n_blink_from_landmarks += res.blink_from_landmarks
    aud.flush()
    del aud
    return tables


def _export_frames(ds: Dataset, identity: str, plan: _Plan, cam: Camera, background: np.ndarray, out: Path,
                   pool: ThreadPoolExecutor) -> Iterator[FrameOut]:
    """Writes the frames clip by clip (one clip's rows in memory at a time) and yields what goes in the tables."""
    for clip_id, ids in plan.ids.items():
        rows = [r for r in ds.frames(identity, columns=_FRAME_COLUMNS, clip_ids=[clip_id]).to_pylist()
                if r["frame_index"] in ids]

        def one(row: dict[str, Any], ids: dict[int, int] = ids) -> FrameOut:
            return export_frame(row, ids[row["frame_index"]], cam, background, out, plan.open_eye_ratio)

        yield from pool.map(one, rows)


# the tables ------------------------------------------------------------------------------------------------
def _write_au_csv(path: Path, blink: np.ndarray, times: np.ndarray) -> None:
    """OpenFace-style CSV (``", "`` separators, so the column is named `` AU45_r``), one row per img_id.

    ER-NeRF reads it with pandas and indexes ``AU45_r`` by ``img_id``; ``frame`` is 1-based as in OpenFace,
    ``timestamp`` the frame's time in its clip.
    """
    au45 = np.clip(blink * AU45_PER_BLINK, 0.0, 5.0)
    lines = ["frame, face_id, timestamp, confidence, success, AU45_r"]
    lines += [f"{i + 1}, 0, {t:.3f}, 1.00, 1, {v:.2f}" for i, (t, v) in enumerate(zip(times, au45, strict=True))]
    path.write_text("\n".join(lines) + "\n")


def _write_transforms(out: Path, cam: Camera, poses: np.ndarray, n_train: int) -> None:
    """``transforms_train.json`` (ids ``0..n_train-1``) and ``transforms_val.json`` (the rest)."""
    splits = {"train": range(0, n_train), "val": range(n_train, len(poses))}
    for split, ids in splits.items():
        doc = {
            "focal_len": float(cam.focal),
            "cx": float(cam.cx),
            "cy": float(cam.cy),
            "frames": [{"img_id": i, "aud_id": i, "transform_matrix": poses[i].astype(float).tolist()}
                       for i in ids],
        }
        with open(out / f"transforms_{split}.json", "w") as fp:
            json.dump(doc, fp, indent=2, separators=(",", ": "))
