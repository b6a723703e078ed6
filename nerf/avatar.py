"""A trained avatar: evaluation on held-out frames and rendering from new audio features.

Everything here works on arrays; reading audio files, detecting landmarks and writing videos is the
caller's (``jobs/``), passed in as functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerf import methods
from nerf.checkpoint import load_checkpoint
from nerf.config import ExperimentConfig, config_from_json
from nerf.metrics import LPIPS, mouth_landmark_distance, psnr, ssim
from nerf.model import AvatarModel, Driving
from nerf.rays import pixel_rays
from nerf.trainer import Trainer


class AudioError(ValueError):
    """Driving audio that cannot be rendered (no samples, wrong feature shape)."""


@dataclass
class EvalResult:
    """Metrics of held-out frames."""

    metrics: dict[str, float]
    """``psnr``, ``ssim``, ``lpips``, ``lmd`` (px at the training size; NaN without a landmark function),
    ``render_s_per_frame``, ``n_frames``, ``lmd_frames``; with pose alignment, ``psnr_aligned``, ``align_deg``,
    ``align_mm`` (:func:`evaluate`)."""
    per_frame: list[dict[str, float]] = field(default_factory=list)
    """``frame``, ``psnr``, ``ssim``, ``lpips`` (and the alignment's) of each frame."""


def evaluate(trainer: Trainer, frames: np.ndarray | None = None, lpips: LPIPS | None = None,
             landmarks: tuple[Callable[[np.ndarray], np.ndarray | None],
                              Callable[[np.ndarray], np.ndarray | None]] | None = None,
             on_frame: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
             align_poses: bool = False) -> EvalResult:
    """Render frames (default: the held-out ones) and compare them with the ground truth.

    Args:
        trainer: a trained (or resumed) trainer.
        frames: frame ids to evaluate.
        lpips: LPIPS module (None: not computed).
        landmarks: two functions RGB uint8 [S, S, 3] -> [68, 2] landmarks or None (undetected), one for the
            predictions and one for the ground truth (each sees its frames in order); gives LMD on the mouth.
        on_frame: called with (frame id, prediction, ground truth), both uint8 [S, S, 3] (e.g. to write a video).
        align_poses: also align each frame's head pose to its image (:meth:`Trainer.align_pose`) and render it
            again: ``psnr_aligned`` is the PSNR under the aligned pose, ``align_deg`` / ``align_mm`` the rotation
            and translation the alignment needed. The gap ``psnr_aligned - psnr`` is the share of the error that
            is the tracked pose's rather than the model's. Costs about 60 training-size steps per frame.

    Returns:
        Mean metrics and per-frame values; ``view_gap_deg`` is each frame's rotation away from the nearest training
        view (:meth:`nerf.data.IdentityFrames.view_gap`), so errors on new views can be told from errors on seen ones.
    """
    ids = trainer.data.val_ids if frames is None else np.asarray(frames)
    if ids.size == 0:
        raise ValueError("no frames to evaluate (the identity has no held-out frames)")
    per: list[dict[str, float]] = []
    lm_pred, lm_gt = [], []
    render_s = 0.0
    for f in ids.tolist():
        t0 = time.perf_counter()
        pred = trainer.render_frame(int(f))
        render_s += time.perf_counter() - t0
        gt = torch.from_numpy(trainer.data.images[f]).float().to(pred.device) / 255.0
        row = {"frame": float(f), "psnr": psnr(pred, gt), "ssim": ssim(pred, gt),
               "view_gap_deg": trainer.data.view_gap(int(f))}
        if lpips is not None:
            with torch.no_grad():
                row["lpips"] = float(lpips(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None])[0])
        if align_poses:
            try:
                al = trainer.align_pose(int(f))
            except NotImplementedError as e:
                raise ValueError(f"--align-poses: the {trainer.config.method} method has no pose alignment") from e
            row["psnr_aligned"] = psnr(trainer.render_frame(int(f), pose_delta=al.delta), gt)
            row["align_deg"], row["align_mm"] = al.degrees, al.millimetres
        per.append(row)
        pred_u8 = (pred.cpu().numpy() * 255 + 0.5).astype(np.uint8)
        gt_u8 = trainer.data.images[f]
        if landmarks is not None:
            p, g = landmarks[0](pred_u8), landmarks[1](gt_u8)
            lm_pred.append(p if p is not None else np.full((68, 2), np.nan, np.float32))
            lm_gt.append(g if g is not None else np.full((68, 2), np.nan, np.float32))
        if on_frame is not None:
            on_frame(int(f), pred_u8, gt_u8)
    metrics = {k: float(np.mean([r[k] for r in per])) for k in per[0] if k != "frame"}
    for group, mask in trainer.model.evaluation_groups(trainer.data).items():
        rows = [r for r in per if mask[int(r["frame"])]]
        metrics[f"n_frames_{group}"] = float(len(rows))
        for k in ("psnr", "ssim", "lpips"):
            if rows and k in rows[0]:
                metrics[f"{k}_{group}"] = float(np.mean([r[k] for r in rows]))
    metrics["lmd"] = float("nan")
    metrics["lmd_frames"] = 0.0
    if lm_pred:
        a, b = np.stack(lm_pred), np.stack(lm_gt)
        both = np.isfinite(a[:, 48:68]).all((1, 2)) & np.isfinite(b[:, 48:68]).all((1, 2))
        if both.any():
            metrics["lmd"] = mouth_landmark_distance(a, b)
            metrics["lmd_frames"] = float(both.sum())
    metrics["render_s_per_frame"] = render_s / len(per)
    metrics["n_frames"] = float(len(per))
    return EvalResult(metrics=metrics, per_frame=per)


def pingpong(n_out: int, n_in: int, start: int = 0) -> np.ndarray:
    """Indices that walk 0..n_in-1 forwards, then backwards, ... for ``n_out`` steps (no jump at the turns)."""
    if n_in <= 1:
        return np.zeros(n_out, np.int64)
    period = 2 * (n_in - 1)
    k = (np.arange(n_out) + start) % period
    return np.where(k < n_in, k, period - k).astype(np.int64)


class Avatar:
    """A trained model with what it needs to render: EMA weights, background, poses, eye openness."""

    def __init__(self, model: AvatarModel, config: ExperimentConfig, kit: dict[str, Any], identity: str,
                 device: torch.device):
        self.model = model.eval()
        self.config = config
        self.kit = kit
        self.identity = identity
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Avatar:
        """Load the averaged (EMA) weights of a checkpoint, of whichever method it names.

        Raises:
            nerf.checkpoint.CheckpointError: unreadable or foreign checkpoint.
        """
        ckpt = load_checkpoint(path)
        config = config_from_json(ckpt["config"])
        kit = ckpt["render_kit"]
        model = methods.get(ckpt["method"]).model.for_rendering(config, kit, ckpt["model"])
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(ckpt["ema"][k])
        dev = torch.device(device)
        return cls(model.to(dev), config, kit, str(ckpt["identity"]), dev)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def people(self) -> tuple[str, ...]:
        """The people of a model of several (:attr:`nerf.model.AvatarModel.several_people`); else the identity."""
        return tuple(self.kit.get("people") or (self.identity,))

    def training_frames(self, person: int | None = None) -> np.ndarray:
        """int64: the training frames (of ``person``, for a model of several people)."""
        rows = np.arange(int(self.kit["n_train"]))
        if person is None or "person" not in self.kit:
            return rows
        if not 0 <= person < len(self.people):
            raise ValueError(f"person {person}: the model has {len(self.people)} ({', '.join(self.people)})")
        return rows[self.kit["person"].numpy()[rows] == person]

    def driving_frames(self, n: int, person: int | None = None) -> np.ndarray:
        """int64 [n]: the training frames (of ``person``) walked back and forth, whose poses and eyes drive ``n``
        frames."""
        rows = self.training_frames(person)
        return rows[pingpong(n, len(rows))]

    def driving_track(self, n: int, person: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Poses [n, 4, 4] and eye openness [n] for ``n`` frames (of :meth:`driving_frames`)."""
        idx = self.driving_frames(n, person)
        return self.kit["poses"].numpy()[idx], self.kit["eye"].numpy()[idx]

    def check_audio(self, audio: np.ndarray) -> None:
        """Raises :class:`AudioError` when ``audio`` [T, window, n_mels] cannot drive the model."""
        if audio.ndim != 3 or audio.shape[0] == 0:
            raise AudioError(f"audio features must be [T>0, window, n_mels], got {list(audio.shape)}")
        want = self.model.audio_shape
        if want is not None and audio.shape[1:] != want:
            raise AudioError(f"audio features are {list(audio.shape[1:])} per frame; the model was trained on "
                             f"{list(want)}")

    @torch.no_grad()
    def render(self, audio: np.ndarray, size: int | None = None, poses: np.ndarray | None = None,
               eye: np.ndarray | None = None, chunk: int | None = None,
               extra: dict[str, torch.Tensor] | None = None, person: int | None = None) -> Iterator[np.ndarray]:
        """Render one frame per audio window.

        Args:
            audio: float32 [T, window, n_mels] audio features (as the dataset build computes them).
            size: output side in pixels (default: the training size).
            poses: [T, 4, 4] camera-to-world per frame (default: :meth:`driving_track`, each frame then with the
                appearance of the training frame its pose comes from; given poses: the method's default).
            eye: [T] eye openness per frame (default: :meth:`driving_track`).
            chunk: rays per forward pass (default: :func:`nerf.rendering.default_chunk` of the device).
            extra: method-specific conditions per frame, [T, ...] each (:meth:`nerf.model.AvatarModel.driving_inputs`,
                e.g. JEAN's ``expression``).
            person: which person of a model of several people (:attr:`people`): its background, camera and
                training frames (the model's own conditions pick the person from ``extra``).

        Yields:
            uint8 [size, size, 3] RGB frames.

        Raises:
            AudioError: no audio frames, or features of another shape than the model's.
        """
        self.check_audio(audio)
        n = audio.shape[0]
        short = {k: int(v.shape[0]) for k, v in (extra or {}).items() if v.shape[0] < n}
        if short:
            raise ValueError(f"driving conditions for fewer frames than the audio's {n}: {short}")
        track_poses, track_eye = self.driving_track(n, person)
        source = torch.from_numpy(self.driving_frames(n, person)).to(self.device) if poses is None else None
        poses = track_poses if poses is None else poses
        eye = track_eye if eye is None else eye
        train_size = int(self.kit["size"])
        size = size or train_size
        scale = size / train_size
        bg_img = self.kit["backgrounds"][person] if person is not None and "backgrounds" in self.kit \
            else self.kit["background"]
        bg = bg_img.permute(2, 0, 1)[None].float() / 255.0
        bg = torch.nn.functional.interpolate(bg, size=(size, size), mode="bilinear", align_corners=False)
        bg = bg[0].permute(1, 2, 0).reshape(-1, 3).to(self.device)
        intr = self.kit["intrinsics"][torch.from_numpy(self.training_frames(person))].mean(0) * scale
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float().add(0.5).to(self.device)
        for t in range(n):
            pose = torch.from_numpy(np.asarray(poses[t], np.float32)).to(self.device)
            o, d = pixel_rays(pose, intr.to(self.device), pix)
            drive = Driving(pose=pose[None], eye=torch.tensor([float(eye[t])], device=self.device),
                            audio=torch.from_numpy(np.asarray(audio[t : t + 1], np.float32)).to(self.device),
                            source_frame=None if source is None else source[t : t + 1],
                            extra={k: v[t : t + 1].to(self.device) for k, v in (extra or {}).items()})
            img = self.model.render_view(o, d, pix / scale, bg, drive, size=size, chunk=chunk)
            yield (img.cpu().numpy() * 255 + 0.5).astype(np.uint8)


def side_by_side(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """uint8 [S, 2S, 3]: prediction | ground truth."""
    return np.concatenate([pred, gt], axis=1)


__all__ = ["AudioError", "Avatar", "EvalResult", "evaluate", "pingpong", "side_by_side"]
