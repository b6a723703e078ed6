"""One identity's frames as training arrays, and the ray batches drawn from them.

The trainer never touches storage: the caller reads the identity's ``frames/`` rows and its
``identities/`` row (with :class:`pipelines.dataset.Dataset`) and hands the two to
:meth:`IdentityFrames.from_rows`. Columns are those of :mod:`pipelines.schema`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from pipelines.schema import AUDIO_MELS, AUDIO_WINDOW, HEAD, HOLDOUT_FRACTION, NECK, TORSO, train_count

NEAREST_LATENTS = 1
"""Training frames whose latents a held-out frame averages (:meth:`IdentityFrames.nearest_train`; 1: it takes the
nearest one's). Appearance drifts slowly (light, hair, skin shine), so the frames just before a held-out stretch
describe it better than the mean over the clip (on RD_Radio2_000, +0.4 dB held-out PSNR for the same checkpoint),
and the last one better than the mean of the last five, as the last value of a drifting series predicts its next
ones better than a window's mean. Full-image held-out PSNR (benchmarks/latents.py) of the same checkpoint with 5 /
2 / 1 (cpu preset, benchmarks/train.py, 30 min): WDA_BobMenendez_000 27.84 / 28.04 / 28.04 dB and (a run with
``grid_tv``) 27.68 / n/a / 28.05; RD_Radio2_000 22.92 / 22.92 / 22.93 dB. On WDA the gain is in the torso's latent
(the head's own PSNR moves by < 0.06 dB) and in the held-out frames nearest the training ones (+0.5 to +0.8 dB on
the first eight, none on the last four)."""

LATENT_PAIR_GAP = 2
"""Training frames at most this many frames apart in their clip are neighbours for the latents' smoothness loss
(:attr:`nerf.losses.LossWeights.latent_smooth`)."""

DECODE_CHUNK = 128
"""Rows turned into Python objects at a time while an identity is decoded."""

COLUMNS = ["clip_id", "frame_index", "face_found", "image_jpeg", "image_size", "pose_c2w", "focal", "cx", "cy",
           "eye_ratio", "lips_rect", "face_rect", "landmarks_2d", "parsing_png", "audio_features", "audio_valid"]
"""The ``frames/`` columns training reads."""


class DataError(ValueError):
    """An identity's rows cannot be trained on (no usable frame, no background, a corrupt image)."""


@dataclass
class IdentityFrames:
    """The usable frames of one identity at one training size, in (clip, frame) order; the last are held out."""

    identity: str
    size: int
    """Images are ``size`` x ``size`` (the person crop scaled)."""
    images: np.ndarray
    """uint8 [N, S, S, 3] RGB."""
    labels: np.ndarray
    """uint8 [N, S, S] parsing labels (BACKGROUND, HEAD, NECK, TORSO)."""
    poses: np.ndarray
    """float32 [N, 4, 4] camera-to-world (OpenGL axes, metres; the head is fixed at the origin)."""
    intrinsics: np.ndarray
    """float32 [N, 3] focal, cx, cy in pixels of the training size."""
    audio: np.ndarray
    """float32 [N, window, n_mels] audio features (zeros where the clip had no audio)."""
    eye: np.ndarray
    """float32 [N] eye openness, the eye aspect ratio divided by the identity's open-eye value (~1 open, ~0 shut)."""
    lips_rect: np.ndarray
    """int32 [N, 4] x0, y0, x1, y1 at the training size."""
    face_rect: np.ndarray
    """int32 [N, 4] x0, y0, x1, y1 at the training size."""
    landmarks: np.ndarray
    """float32 [N, 68, 2] at the training size."""
    background: np.ndarray
    """uint8 [S, S, 3] RGB background of the identity."""
    near: float
    far: float
    clip_ids: list[str]
    frame_index: np.ndarray
    """int32 [N]."""
    n_train: int
    """Frames [0, n_train) train; [n_train, N) are held out."""
    open_eye: float
    """Eye aspect ratio that maps to 1.0 in :attr:`eye`."""
    version: str = ""
    """Which build of the dataset the frames came from (a fingerprint of the identity's clips, set by the reader;
    empty when unknown): a checkpoint records it, and resuming on other frames is refused."""

    @property
    def n_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def train_ids(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val_ids(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_frames)

    def train_pairs(self, max_gap: int = LATENT_PAIR_GAP) -> np.ndarray:
        """int64 [P, 2]: consecutive training frames of the same clip at most ``max_gap`` frames apart (frames
        without a face are dropped, so neighbours in the table may be further apart in the clip)."""
        clips = np.asarray(self.clip_ids[: self.n_train])
        gap = np.diff(self.frame_index[: self.n_train].astype(np.int64))
        first = np.nonzero((clips[1:] == clips[:-1]) & (gap > 0) & (gap <= max_gap))[0]
        return np.stack([first, first + 1], -1).astype(np.int64)

    def view_gap(self, frame: int) -> float:
        """Degrees between ``frame``'s head rotation and the nearest training frame's (0 for a training frame).

        A held-out frame a few degrees beyond every training view asks the model to extrapolate to a new view,
        not to interpolate between seen ones; its error says little about how well the training frames were
        learnt. (On RD_Radio2_000 the head turns 3.8-6.3 degrees past every training view in the last 11 of its
        19 held-out frames; on the two WDA clips every held-out frame is within 1.7 degrees of a training view.)"""
        train = self.poses[: self.n_train, :3, :3].astype(np.float64)
        if train.shape[0] == 0:
            return float("nan")
        cos = (np.einsum("nij,ij->n", train, self.poses[frame, :3, :3].astype(np.float64)) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos.max(), -1.0, 1.0))))

    def nearest_train(self, frame: int, k: int = NEAREST_LATENTS) -> np.ndarray:
        """The ``k`` training frames of ``frame``'s clip closest to it in time (int64, nearest first; empty when its
        clip has no training frame): whose appearance latents a held-out frame borrows."""
        clip = self.clip_ids[frame]
        same = np.array([i for i in range(self.n_train) if self.clip_ids[i] == clip], np.int64)
        if same.size == 0:
            return same
        dist = np.abs(self.frame_index[same].astype(np.int64) - int(self.frame_index[frame]))
        return same[np.argsort(dist, kind="stable")[:k]]

    @classmethod
    def from_rows(cls, frames: pa.Table, identity: dict[str, Any], size: int,
                  holdout: float = HOLDOUT_FRACTION, max_frames: int | None = None) -> IdentityFrames:
        """Decode an identity's rows at a training size (see :meth:`from_batches`).

        Args:
            frames: the identity's ``frames/`` rows (at least :data:`COLUMNS`) in (clip_id, frame_index) order.
            identity, size, holdout, max_frames: see :meth:`from_batches`.

        Raises:
            DataError: no usable frame, no background, or an image that does not decode.
        """

        def batches(columns: list[str]):  # noqa: ANN202
            return frames.select([c for c in columns if c in frames.column_names]).to_batches(DECODE_CHUNK)

        return cls.from_batches(batches, identity, size, holdout, max_frames)

    @classmethod
    def from_batches(cls, batches: Callable[[list[str]], Iterable[pa.RecordBatch]], identity: dict[str, Any],
                     size: int, holdout: float = HOLDOUT_FRACTION, max_frames: int | None = None) -> IdentityFrames:
        """Decode an identity's rows at a training size, streaming: the rows are read twice, once with two small
        columns to find the usable frames and once to decode them a batch at a time, so memory holds the decoded
        arrays and one batch (a whole identity's table would cost several times its images).

        Args:
            batches: ``columns -> record batches`` of the identity's ``frames/`` rows (at least :data:`COLUMNS`)
                in (clip_id, frame_index) order, the same rows on every call
                (:meth:`pipelines.dataset.Dataset.iter_frames`).
            identity: the identity's ``identities/`` row (``background_png``, ``near``, ``far``).
            size: training image side in pixels.
            holdout: fraction of frames (the last ones) held out.
            max_frames: use only the first ``max_frames`` usable frames (before the split).

        Raises:
            DataError: no usable frame, no background, or an image that does not decode.
        """
        name = str(identity.get("identity"))
        masks = [np.asarray(pc.and_(pc.fill_null(b.column("face_found"), False), pc.is_valid(b.column("pose_c2w")))
                            .to_numpy(zero_copy_only=False), bool) for b in batches(["face_found", "pose_c2w"])]
        usable = np.concatenate(masks) if masks else np.zeros(0, bool)
        if usable.size == 0:
            raise DataError(f"identity {name!r} has no frame rows; build the dataset first")
        ok = np.flatnonzero(usable)
        if ok.size == 0:
            raise DataError(f"identity {name!r}: {usable.size} frame rows but none with a face and a pose")
        if max_frames is not None:
            ok = ok[:max_frames]
        n = int(ok.size)

        bg_png = identity.get("background_png") or b""
        bg = cv2.imdecode(np.frombuffer(bg_png, np.uint8), cv2.IMREAD_COLOR) if bg_png else None
        if bg is None:
            raise DataError(f"identity {name!r} has no background image in identities/; rebuild the identities table")
        background = cv2.cvtColor(cv2.resize(bg, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)

        images = np.empty((n, size, size, 3), np.uint8)
        labels = np.empty((n, size, size), np.uint8)
        intr = np.empty((n, 3), np.float32)
        lips = np.empty((n, 4), np.int32)
        face = np.empty((n, 4), np.int32)
        lms = np.full((n, 68, 2), np.nan, np.float32)
        audio = np.zeros((n, AUDIO_WINDOW, AUDIO_MELS), np.float32)
        eye_raw = np.full(n, np.nan, np.float32)
        poses = np.empty((n, 4, 4), np.float32)
        clip_ids: list[str] = []
        frame_index = np.empty(n, np.int32)
        # Decoded DECODE_CHUNK rows at a time: Python objects of a whole identity's rows (JPEG bytes, mel windows
        # as float lists) would cost several times the decoded arrays.
        for k, r in _usable_rows(batches(COLUMNS), ok):
            clip_ids.append(str(r["clip_id"]))
            frame_index[k] = r["frame_index"]
            poses[k] = np.asarray(r["pose_c2w"], np.float32).reshape(4, 4)
            where = f"identity {name!r} clip {r['clip_id']} frame {r['frame_index']}"
            img = cv2.imdecode(np.frombuffer(r["image_jpeg"] or b"", np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"{where}: image_jpeg does not decode")
            src = int(r["image_size"] or img.shape[0])
            s = size / src
            images[k] = cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            lab = cv2.imdecode(np.frombuffer(r["parsing_png"] or b"", np.uint8), cv2.IMREAD_UNCHANGED)
            if lab is None:
                raise DataError(f"{where}: parsing_png does not decode")
            labels[k] = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
            intr[k] = (r["focal"] * s, r["cx"] * s, r["cy"] * s)
            lips[k] = _scale_rect(r["lips_rect"], s, size)
            face[k] = _scale_rect(r["face_rect"], s, size)
            if r["landmarks_2d"] is not None:
                lms[k] = np.asarray(r["landmarks_2d"], np.float32).reshape(68, 2) * s
            if r["audio_features"] is not None:
                a = np.asarray(r["audio_features"], np.float32)
                audio[k] = a.reshape(audio.shape[1:]) if a.size == audio[k].size else 0.0
            if r["eye_ratio"] is not None:
                eye_raw[k] = r["eye_ratio"]
        finite = eye_raw[np.isfinite(eye_raw)]
        open_eye = float(np.percentile(finite, 90)) if finite.size else 0.3
        eye = np.nan_to_num(eye_raw / max(open_eye, 1e-3), nan=1.0).astype(np.float32)
        return cls(
            identity=name, size=size, images=images, labels=labels, poses=poses, intrinsics=intr, audio=audio,
            eye=eye, lips_rect=lips, face_rect=face, landmarks=lms, background=background,
            near=float(identity.get("near") or 0.3), far=float(identity.get("far") or 1.0),
            clip_ids=clip_ids, frame_index=frame_index,
            n_train=train_count(n, holdout), open_eye=open_eye,
        )


def _scale_rect(rect: Any, s: float, size: int) -> np.ndarray:
    if rect is None:
        return np.array([0, 0, size, size], np.int32)
    r = np.asarray(rect, np.float64) * s
    out = np.array([np.floor(r[0]), np.floor(r[1]), np.ceil(r[2]), np.ceil(r[3])])
    return np.clip(out, 0, size).astype(np.int32)


@dataclass
class RayBatch:
    """Rays of a few frames with their targets; every tensor is on the training device."""

    frame: Tensor
    """int64 [R] frame id of each ray."""
    origins: Tensor
    """[R, 3] world."""
    directions: Tensor
    """[R, 3] world, unit length."""
    rgb: Tensor
    """[R, 3] target colour in [0, 1]."""
    background: Tensor
    """[R, 3] colour behind the head (the background, or the torso where the head stage learns the head only)."""
    face: Tensor
    """bool [R] the ray's pixel is inside the face rectangle."""
    mouth: Tensor
    """bool [R] the ray's pixel is inside the mouth region (:func:`mouth_rect`: the lips and the jaw around them)."""
    pixels: Tensor
    """[R, 2] pixel coordinates (x, y) of the ray, centres at +0.5."""
    label: Tensor
    """uint8 [R] parsing label of the ray's pixel (:data:`pipelines.schema.HEAD` etc.)."""
    frame_host: Tensor | None = None
    """int64 [R] ``frame`` in host memory, where the sampler drew the frames there (None otherwise): grouping the rays
    by frame then needs no wait for the device on a GPU."""


def mouth_rect(lips: Tensor) -> Tensor:
    """The region speech moves, from lips rectangles [..., 4] (x0, y0, x1, y1): a quarter of the lips' width
    either side, 0.3 of it above (up to the nose) and 0.6 below (the chin, which moves with the jaw)."""
    x0, y0, x1, y1 = lips.float().unbind(-1)
    w = x1 - x0
    return torch.stack([x0 - 0.25 * w, y0 - 0.3 * w, x1 + 0.25 * w, y1 + 0.6 * w], -1)


def pixel_rays(pose: Tensor, intrinsics: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """World rays through pixel positions (OpenGL camera: x right, y up, looking down -z).

    Args:
        pose: [R, 4, 4] camera-to-world per ray (or [4, 4] for all).
        intrinsics: [R, 3] focal, cx, cy per ray (or [3]).
        pixels: [R, 2] continuous pixel positions (x, y); a pixel's centre is at +0.5.

    Returns:
        origins [R, 3], unit directions [R, 3].
    """
    if pose.dim() == 2:
        pose = pose.expand(pixels.shape[0], 4, 4)
    if intrinsics.dim() == 1:
        intrinsics = intrinsics.expand(pixels.shape[0], 3)
    f, cx, cy = intrinsics.unbind(-1)
    d_cam = torch.stack([(pixels[:, 0] - cx) / f, -(pixels[:, 1] - cy) / f, -torch.ones_like(f)], -1)
    d = torch.einsum("rij,rj->ri", pose[:, :3, :3], d_cam)
    return pose[:, :3, 3].clone(), d / d.norm(dim=-1, keepdim=True)


class FrameStore:
    """An identity's frames as tensors on a device, and the ray batches of the training stages."""

    def __init__(self, data: IdentityFrames, device: torch.device | str = "cpu"):
        self.data = data
        self.device = torch.device(device)
        dev = self.device
        self.size = data.size
        self.images = torch.from_numpy(data.images).to(dev)  # uint8 [N, S, S, 3]
        self.labels = torch.from_numpy(data.labels).to(dev)
        self.poses = torch.from_numpy(data.poses).to(dev)
        self.intrinsics = torch.from_numpy(data.intrinsics).to(dev)
        self.audio = torch.from_numpy(data.audio).to(dev)
        self.eye = torch.from_numpy(data.eye).to(dev)
        self.face_rect = torch.from_numpy(data.face_rect).to(dev)
        self._face_rect_host = torch.from_numpy(data.face_rect)  # ray sampling runs on the host (its generator)
        self.lips_rect = torch.from_numpy(data.lips_rect).to(dev)
        self._lips_rect_host = torch.from_numpy(data.lips_rect)  # the lips patch is placed on the host
        self.background = torch.from_numpy(data.background).to(dev).float() / 255.0  # [S, S, 3]
        self.n_train = data.n_train

    def mouth_point(self) -> Tensor:
        """The mouth's centre in the head's frame [3]: the point nearest (least squares) to the rays through the
        lips rectangles' centres of all training frames (the head is still and the camera moves around it)."""
        n = self.n_train
        lips = self.lips_rect[:n].float()
        centres = torch.stack([(lips[:, 0] + lips[:, 2]) / 2, (lips[:, 1] + lips[:, 3]) / 2], -1)
        o, d = pixel_rays(self.poses[:n].float(), self.intrinsics[:n].float(), centres)
        o, d = o.double(), d.double()
        proj = torch.eye(3, dtype=torch.float64, device=d.device) - d[:, :, None] * d[:, None, :]  # off-ray projectors
        a = proj.sum(0)
        b = torch.einsum("nij,nj->i", proj, o)
        return torch.linalg.solve(a, b).float()

    def rays(self, frames: Tensor, pixels: Tensor, head_only: bool, frames_host: Tensor | None = None) -> RayBatch:
        """A batch for given frames and integer pixel positions.

        Args:
            frames: int64 [R] frame ids.
            pixels: int64 [R, 2] (x, y).
            head_only: the target behind the head is the ground truth's torso and neck (head stage) instead of
                the background.
            frames_host: ``frames`` in host memory, if the caller has them (:attr:`RayBatch.frame_host`).
        """
        x, y = pixels[:, 0], pixels[:, 1]
        rgb = self.images[frames, y, x].float() / 255.0
        bg = self.background[y, x]
        lab = self.labels[frames, y, x]
        if head_only:
            body = (lab == TORSO) | (lab == NECK)
            bg = torch.where(body[:, None], rgb, bg)
        centres = pixels.float() + 0.5
        o, d = pixel_rays(self.poses[frames], self.intrinsics[frames], centres)
        fr = self.face_rect[frames]
        face = (x >= fr[:, 0]) & (x < fr[:, 2]) & (y >= fr[:, 1]) & (y < fr[:, 3])
        mr = mouth_rect(self.lips_rect[frames])
        mouth = (centres[:, 0] >= mr[:, 0]) & (centres[:, 0] < mr[:, 2]) & (centres[:, 1] >= mr[:, 1]) & \
            (centres[:, 1] < mr[:, 3])
        return RayBatch(frame=frames, origins=o, directions=d, rgb=rgb, background=bg, face=face, mouth=mouth,
                        pixels=centres, label=lab, frame_host=frames_host)

    def sample(self, n_rays: int, n_frames: int, generator: torch.Generator, head_only: bool,
               face_fraction: float = 0.5, error_map: ErrorMap | None = None, error_fraction: float = 0.0
               ) -> RayBatch:
        """Random rays of random training frames: of each frame's rays, ``face_fraction`` inside the face
        rectangle, ``error_fraction`` drawn from ``error_map`` (where the model's recent error is), the rest
        anywhere."""
        g = generator
        frames = torch.randint(0, self.n_train, (n_frames,), generator=g)
        per = max(n_rays // n_frames, 1)
        fid = frames.repeat_interleave(per)
        r = fid.shape[0]
        u = torch.rand(r, 2, generator=g)
        j = torch.arange(r) % per  # each ray's place in its frame's block
        face = j < int(round(per * face_fraction))
        rect = self._face_rect_host[fid].float()
        lo = torch.where(face[:, None], rect[:, :2], 0.0)
        hi = torch.where(face[:, None], rect[:, 2:], float(self.size))
        pix = (lo + u * (hi - lo)).long().clamp(0, self.size - 1)
        n_err = int(round(per * error_fraction)) if error_map is not None else 0
        if error_map is not None and n_err > 0:
            pix[j >= per - n_err] = error_map.sample(frames, n_err, g)  # the last n_err rays of each block
        return self.rays(fid.to(self.device), pix.to(self.device), head_only, frames_host=fid)

    def frame_rays(self, frame: int, head_only: bool = False) -> RayBatch:
        """Every pixel of one frame, row by row."""
        ys, xs = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(self.device)
        fid = torch.full((pix.shape[0],), frame, dtype=torch.long, device=self.device)
        return self.rays(fid, pix, head_only)

    def lips_patch(self, generator: torch.Generator, patch: int) -> tuple[RayBatch, Tensor]:
        """A ``patch`` x ``patch`` grid of rays over the lips of a random training frame.

        The grid spans the lips rectangle made square (and enlarged by a random 0-20%); targets are
        bilinear samples of the image at the rays' positions, so small lips still give a full patch.

        Returns:
            the rays ([patch * patch], row by row) and the target patch [patch, patch, 3].
        """
        g = generator
        f = int(torch.randint(0, self.n_train, (1,), generator=g))
        x0, y0, x1, y1 = (float(v) for v in self._lips_rect_host[f].tolist())
        side = max(x1 - x0, y1 - y0, 8.0) * (1.0 + 0.2 * float(torch.rand(1, generator=g)))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        t = (torch.arange(patch, dtype=torch.float32) + 0.5) / patch - 0.5
        ys, xs = torch.meshgrid(cy + t * side, cx + t * side, indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).clamp(0.5, self.size - 0.5).to(self.device)
        img = self.images[f].permute(2, 0, 1)[None].float() / 255.0  # [1, 3, S, S]
        grid = (pix / self.size * 2 - 1).view(1, patch, patch, 2)
        target = torch.nn.functional.grid_sample(img, grid, align_corners=False)[0].permute(1, 2, 0)
        fid = torch.full((pix.shape[0],), f, dtype=torch.long, device=self.device)
        o, d = pixel_rays(self.poses[fid], self.intrinsics[fid], pix)
        bg_grid = torch.nn.functional.grid_sample(self.background.permute(2, 0, 1)[None], grid, align_corners=False)
        face = torch.ones(pix.shape[0], dtype=torch.bool, device=self.device)
        label = torch.full((pix.shape[0],), HEAD, dtype=torch.uint8, device=self.device)
        rays = RayBatch(frame=fid, origins=o, directions=d, rgb=target.reshape(-1, 3),
                        background=bg_grid[0].permute(1, 2, 0).reshape(-1, 3), face=face, mouth=face, pixels=pix,
                        label=label, frame_host=torch.full((pix.shape[0],), f, dtype=torch.long))
        return rays, target


class ErrorMap:
    """Where each training frame's recent photometric error lies, on a coarse ``side`` x ``side`` grid of cells
    (torch-ngp's and RAD-NeRF's ``error_map``): rays drawn from it go where the model is still wrong (hair,
    silhouettes, the mouth) instead of where it has converged (background, cheeks).

    Cells start at 1 (so every cell is drawn until it has been seen); each ray's squared error replaces
    ``1 - keep`` of its cell's value. Values are half precision (sampling weights need no more): 2 bytes per cell,
    8 KiB per frame at 64 x 64, in memory and in checkpoints.

    Args:
        n_frames: frames (training frames are the first).
        side: cells per image side.
        size: image side in pixels.
        device: where the map lives.
        keep: share of a cell's old value an update keeps.
    """

    def __init__(self, n_frames: int, side: int, size: int, device: torch.device | str = "cpu", keep: float = 0.1):
        if side < 1 or side > size:
            raise ValueError(f"error map side {side} must be in [1, {size}] (the image side)")
        self.side, self.size, self.keep = side, size, keep
        self.values = torch.ones(n_frames, side * side, dtype=torch.float16, device=device)

    def reset(self) -> None:
        """Forget every error (a new stage fits another target)."""
        self.values.fill_(1.0)

    def sample(self, frames: Tensor, per: int, generator: torch.Generator) -> Tensor:
        """int64 [len(frames) * per, 2] pixel positions (x, y), frame by frame: cells drawn in proportion to their
        error, a uniform position inside each."""
        w = self.values[frames.to(self.values.device)].float().cpu() + 1e-12
        cells = torch.multinomial(w, per, replacement=True, generator=generator).reshape(-1)
        u = torch.rand(cells.shape[0], 2, generator=generator)
        cell = self.size / self.side
        xy = torch.stack([cells % self.side, cells // self.side], -1).float()
        return ((xy + u) * cell).long().clamp(0, self.size - 1)

    @torch.no_grad()
    def update(self, frames: Tensor, pixels: Tensor, error: Tensor) -> None:
        """Blend rays' errors into their cells.

        Args:
            frames: int64 [R] frame ids.
            pixels: [R, 2] pixel positions (x, y) at the image size (centres or integers).
            error: [R] each ray's squared error (mean over colour channels).
        """
        cell = (pixels.long().clamp(0, self.size - 1) * self.side) // self.size  # truncation: pixels are >= 0
        flat = frames.to(self.values.device) * self.side * self.side + (cell[:, 1] * self.side + cell[:, 0]).to(
            self.values.device)
        v = self.values.view(-1)
        v[flat] = self.keep * v[flat] + (1.0 - self.keep) * error.detach().to(v.device, v.dtype)


def _usable_rows(batches: Iterable[pa.RecordBatch], picks: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
    """(k, row) for the rows at the sorted positions ``picks`` of the batches' concatenation, one batch of Python
    objects at a time; stops after the last pick."""
    start, k = 0, 0
    for batch in batches:
        if k >= picks.size:
            return
        end = start + batch.num_rows
        take = picks[k:][picks[k:] < end] - start
        if take.size:
            for r in batch.take(pa.array(take)).to_pylist():
                yield k, r
                k += 1
        start = end
