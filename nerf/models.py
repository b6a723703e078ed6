"""The RAD-NeRF avatar model: head field + torso field + occupancy grid + per-frame latents.

Verbs (after nerfstudio): :meth:`RadNerf.get_outputs` renders rays under per-frame conditions,
:meth:`RadNerf.get_loss_dict` turns outputs and targets into weighted losses,
:meth:`RadNerf.get_param_groups` gives each training stage its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.encoders import PlaneEncoder
from nerf.fields import HeadField, HeadFieldConfig, TorsoField, TorsoFieldConfig
from nerf.losses import LossWeights, alpha_entropy, ambient_l1, latent_smoothness, mask_bce, mse
from nerf.rendering import OccupancyGrid, OccupancyGridConfig, RaySamples, SamplerConfig, composite, sample_rays
from pipelines.schema import HEAD, NECK, TORSO

Stage = Literal["head", "lips", "torso"]
STAGES: tuple[Stage, ...] = ("head", "lips", "torso")


@dataclass(frozen=True)
class RadNerfConfig:
    """Everything that shapes the model (not how it is trained)."""

    head: HeadFieldConfig = field(default_factory=HeadFieldConfig)
    torso: TorsoFieldConfig = field(default_factory=TorsoFieldConfig)
    grid: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    pose_refine: bool = False
    """Learn a rigid correction of each training frame's head pose (rotation and translation, zero at the start)
    with the head: the tracked poses are off by about a degree and a few millimetres (a 3DMM fit to 2D
    landmarks), and a field trained on misaligned views averages them into blur. Held-out frames and new audio
    take the corrections of the training frames their latents come from, or the mean (:attr:`pose_borrow`). The
    learning rate is :attr:`nerf.trainer.StageConfig.lr_pose`.

    On in the ``cpu`` preset. Measured on the three shared clips (benchmarks/headcurve.py --set
    model.pose_refine=true, cpu preset, 6000 head steps, seed 0; held-out head PSNR at 1500 / 3000 / 4500 / 6000
    steps, against the same without): WDA_BobMenendez_000 29.05 / 28.37 / 28.95 / 29.18 dB (without, where the
    held-out head PSNR peaks early and falls: 27.53, 27.54 and 27.74 at the end of three runs);
    WDA_AlexandriaOcasioCortez_000 23.90 / 24.77 / 24.65 / 24.55 (without: 25.34 / 25.14 / 24.99 / 24.90);
    RD_Radio2_000 22.66 / 22.55 / 22.71 / 22.71 (without: 23.03 at the end of a 30-min run's head). So +1.5, -0.35
    and -0.3 dB at the end (head curves vary by ~0.5 dB between runs), steps ~7% slower. Earlier, on an older head
    (before the frame latent fed the density and audio was kept to the mouth), on RD_Radio2_000 (4500 head steps,
    seed 1, benchmarks/variants.py) training-frame head PSNR 24.70 -> 26.60 dB, held-out 22.30 -> 22.23 dB; the
    corrections (median 1.4 degrees, 5 mm) change slowly in time and held-out frames need the borrowed ones
    (19.90 dB with none), and aligning each held-out pose to its image (BARF's test-time protocol) still adds 1.3
    dB. Over a whole 30-min run (benchmarks/train.py --minutes 30, one run, the machine partly busy for ~5 min of
    it) on RD_Radio2_000: held-out PSNR 21.90 dB, LPIPS 0.187, LMD 2.12 px (tracked poses, earlier runs: 22.86-22.97
    dB, LPIPS 0.199-0.219, LMD 2.66-2.93): sharper and better-synced mouths, lower PSNR on the clip whose held-out
    head turns past every training view. The paper preset keeps the tracked poses, as RAD-NeRF does."""
    pose_borrow: Literal["mean", "nearest"] = "nearest"
    """Which correction a frame without one of its own (held-out frames, poses given to a render) takes, with
    :attr:`pose_refine`: ``mean``, the mean over all training frames (the corrections' systematic part, the offset
    between the field's head and the tracker's), or ``nearest``, the mean over the training frames its latents
    come from (``latent_from`` of :meth:`RadNerf.novel_conditions`; the nearest one in time by default). A frame
    rendered under a training frame's pose (the driving track of :class:`nerf.avatar.Avatar`) takes that frame's
    own correction either way.

    ``nearest`` by default. Held-out head PSNR of one checkpoint per clip (cpu preset, pose_refine, 3000 head steps,
    seed 0, benchmarks/variants.py --checkpoints, then benchmarks/latents.py --poses near1,mean,none), the nearest
    training frame's correction / the mean over all / none: WDA_BobMenendez_000 29.03 / 28.55 / 26.80 dB;
    RD_Radio2_000 22.21 / 20.06 / 19.80 (its head turns past every training view and the correction drifts with
    it); WDA_AlexandriaOcasioCortez_000 24.88 / 25.43 / 24.89 (a head trained without pose_refine: 25.31). Means
    over the last 3, 5, 10 or 20 training frames were no better than the better of the two (Bob 28.33 / 27.52 /
    26.65 / 26.47, AOC 24.71 / 24.84 / 25.07 / 25.30, RD 22.17 over 3). Which correction predicts a held-out
    frame's is a property of the clip, not a rule."""

    def __post_init__(self) -> None:
        if self.pose_borrow not in ("mean", "nearest"):
            raise ValueError(f"pose_borrow must be 'mean' or 'nearest', got {self.pose_borrow!r}")


@dataclass
class FrameConditions:
    """What a frame is rendered under; one row per frame of a batch."""

    audio: Tensor
    """[B, window, n_mels] log-mel windows."""
    eye: Tensor
    """[B] eye openness (~1 open)."""
    pose: Tensor
    """[B, 4, 4] camera-to-world."""
    head_latent: Tensor
    """[B, head latent_dim]."""
    torso_latent: Tensor
    """[B, torso latent_dim]."""
    pose_delta: Tensor | None = None
    """[B, 6] rigid correction of the head pose (axis-angle, translation in metres; :func:`correct_rays`), or
    None for the tracked pose."""


class RadNerf(nn.Module):
    """Head and torso of one identity, with a latent per training frame."""

    pose_mean: Tensor
    """[12] mean training pose (3x4), subtracted from the torso's pose input."""
    n_train: Tensor
    """int64 [] training frames (latents [0, n_train) are trained)."""

    def __init__(self, config: RadNerfConfig, n_frames: int, image_size: int, near: float, far: float):
        """Args:
            config: the model's shape.
            n_frames: frames with an appearance latent (all of the identity's frames; held-out ones are never
                trained, and render with their nearest training frames' latents, see :meth:`novel_conditions`).
            image_size: rendered image side (pixels), for the torso's image-plane coordinates.
            near, far: depth bounds of the identity (metres).
        """
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.near, self.far = near, far
        self.head = HeadField(config.head)
        self.torso = TorsoField(config.torso)
        self.grid = OccupancyGrid(config.grid, config.head.bound)
        self.head_latents = nn.Parameter(torch.zeros(n_frames, config.head.latent_dim))
        self.torso_latents = nn.Parameter(torch.zeros(n_frames, config.torso.latent_dim))
        self.pose_deltas = nn.Parameter(torch.zeros(n_frames, 6)) if config.pose_refine else None
        self.register_buffer("pose_mean", torch.zeros(12))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))

    # conditions ------------------------------------------------------------------------------------------
    def train_conditions(self, frames: Tensor, audio: Tensor, eye: Tensor, pose: Tensor) -> FrameConditions:
        """Conditions of training frames (their own latents). ``frames`` [B] ids, the rest per frame."""
        delta = None if self.pose_deltas is None else self.pose_deltas.index_select(0, frames)
        head, torso = gather((self.head_latents, self.torso_latents), frames)
        return FrameConditions(audio, eye, pose, head, torso, delta)

    def novel_conditions(self, audio: Tensor, eye: Tensor, pose: Tensor, latent_from: Tensor | None = None,
                         pose_from: Tensor | None = None) -> FrameConditions:
        """Conditions of frames without a latent of their own (held-out frames, new audio).

        Args:
            audio, eye, pose: per frame [B, ...].
            latent_from: int64 [K] training frames whose latents every frame takes, averaged, e.g. the training
                frames nearest in time; None or empty: the mean over all training frames.
            pose_from: int64 [K] training frames whose head pose corrections (with
                :attr:`RadNerfConfig.pose_refine`) every frame takes, averaged, e.g. the training frame whose
                tracked pose ``pose`` is; None: as :attr:`RadNerfConfig.pose_borrow` says.
        """
        n = max(int(self.n_train), 1)
        b = audio.shape[0]
        rows = slice(0, n) if latent_from is None or latent_from.numel() == 0 else latent_from
        head = self.head_latents[rows].mean(0, keepdim=True).expand(b, -1)
        torso = self.torso_latents[rows].mean(0, keepdim=True).expand(b, -1)
        delta = None
        if self.pose_deltas is not None:
            if pose_from is not None and pose_from.numel() > 0:
                prows: Tensor | slice = pose_from
            else:
                prows = rows if self.config.pose_borrow == "nearest" else slice(0, n)
            delta = self.pose_deltas[prows].mean(0, keepdim=True).expand(b, -1)
        return FrameConditions(audio, eye, pose, head, torso, delta)

    def torso_pose(self, pose: Tensor) -> Tensor:
        """[B, 4, 4] -> the torso's pose input [B, 12] (3x4, centred on the training mean)."""
        return pose[:, :3, :4].reshape(-1, 12) - self.pose_mean

    # rendering -------------------------------------------------------------------------------------------
    def render_head(self, origins: Tensor, directions: Tensor, ray_frame: Tensor, cond: FrameConditions,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The head alone along rays.

        Args:
            origins, directions: [R, 3] world rays.
            ray_frame: int64 [R] row of ``cond`` of each ray.
            cond: per-frame conditions.
            generator: sampling jitter (training) or None (evaluation).

        Returns:
            ``rgb`` [R, 3] premultiplied, ``acc`` [R] alpha, ``ambient`` [R] weighted |audio coordinate|,
            ``n_samples`` (scalar) samples evaluated.
        """
        r = origins.shape[0]
        dev = origins.device
        if cond.pose_delta is not None:
            origins, directions = correct_rays(origins, directions, cond.pose_delta, ray_frame)
        audio_feat = self.head.encode_audio(cond.audio)  # [B, A]
        samples = sample_rays(origins, directions, self.near, self.far, self.grid, self.config.sampler, generator)
        rgb = torch.zeros(r, 3, device=dev)
        acc = torch.zeros(r, device=dev)
        ambient = torch.zeros(r, device=dev)
        n_rays, s = samples.t.shape
        stop = self.config.sampler.stop_transmittance
        if n_rays and stop > 0 and generator is None and not torch.is_grad_enabled():
            c, a, amb = self._march(samples, directions, ray_frame, cond, audio_feat, stop)
            rgb, acc = rgb.index_put((samples.ray,), c), acc.index_put((samples.ray,), a)
            ambient = ambient.index_put((samples.ray,), amb)
        elif n_rays:
            fr = ray_frame[samples.ray].repeat_interleave(s)
            dirs = None
            if self.head.config.view_degree:
                dirs = F.normalize(directions[samples.ray], dim=-1).repeat_interleave(s, 0)
            feat, eye, lat = gather((audio_feat, cond.eye, cond.head_latent), fr)
            out = self.head.get_outputs(samples.points.reshape(-1, 3), feat, eye, lat, dirs=dirs)
            w, c, a = composite(out["sigma"].view(n_rays, s), out["rgb"].view(n_rays, s, 3), samples.delta)
            rgb = rgb.index_put((samples.ray,), c)
            acc = acc.index_put((samples.ray,), a)
            if "audio_coord" in out:
                amb = (w * out["audio_coord"].abs().sum(-1).view(n_rays, s)).sum(-1)
                ambient = ambient.index_put((samples.ray,), amb)
        return {"rgb": rgb, "acc": acc, "ambient": ambient, "n_samples": torch.tensor(n_rays * s)}

    def _march(self, samples: RaySamples, directions: Tensor, ray_frame: Tensor, cond: FrameConditions,
               audio_feat: Tensor, stop: float) -> tuple[Tensor, Tensor, Tensor]:
        """Composite ``samples`` front to back, ``march_group`` samples per ray at a time, evaluating the field
        only for rays whose transmittance is still at least ``stop`` (early ray termination; no gradients).

        Returns:
            colour [R', 3] (premultiplied), alpha [R'] and weighted |audio coordinate| [R'] of the sampled rays.
        """
        n_rays, s = samples.t.shape
        dev = samples.t.device
        g = self.config.sampler.march_group
        rgb = torch.zeros(n_rays, 3, device=dev)
        acc = torch.zeros(n_rays, device=dev)
        ambient = torch.zeros(n_rays, device=dev)
        trans = torch.ones(n_rays, device=dev)
        delta = samples.delta.expand(n_rays, s)
        rows = samples.ray
        frame = ray_frame[rows]
        dirs_all = F.normalize(directions[rows], dim=-1) if self.head.config.view_degree else None
        live = torch.arange(n_rays, device=dev)
        one_frame = audio_feat.shape[0] == 1  # a rendered frame: its conditions broadcast, no per-sample gather
        for k in range(0, s, g):
            if not live.numel():
                break
            pts = samples.points[live, k : k + g]  # [L, G, 3]
            n_live, gk = pts.shape[:2]
            n_pts = n_live * gk
            if one_frame:
                feat, eye = audio_feat.expand(n_pts, -1), cond.eye.expand(n_pts)
                lat = cond.head_latent.expand(n_pts, -1)
            else:
                feat, eye, lat = gather((audio_feat, cond.eye, cond.head_latent), frame[live].repeat_interleave(gk))
            dirs = None if dirs_all is None else dirs_all[live].repeat_interleave(gk, 0)
            out = self.head.get_outputs(pts.reshape(-1, 3), feat, eye, lat, dirs=dirs)
            alpha = 1.0 - torch.exp(-out["sigma"].view(n_live, gk) * delta[live, k : k + g])
            through = torch.cumprod(1.0 - alpha + 1e-10, -1)  # light left after each sample of the group
            t_live = trans[live]
            w = alpha * t_live[:, None] * torch.cat([torch.ones_like(alpha[:, :1]), through[:, :-1]], -1)
            rgb.index_add_(0, live, (w[..., None] * out["rgb"].view(n_live, gk, 3)).sum(1))
            acc.index_add_(0, live, w.sum(1))
            if "audio_coord" in out:
                ambient.index_add_(0, live, (w * out["audio_coord"].abs().sum(-1).view(n_live, gk)).sum(-1))
            t_live = t_live * through[:, -1]
            trans[live] = t_live
            live = live[t_live >= stop]
        return rgb, acc, ambient

    def render_torso(self, pixels: Tensor, ray_frame: Tensor, cond: FrameConditions) -> dict[str, Tensor]:
        """The torso at pixel positions [R, 2] (rows of ``cond`` per ray): ``rgb`` [R, 3], ``alpha`` [R]."""
        uv = pixels / self.image_size * 2 - 1
        pose, latent = gather((self.torso_pose(cond.pose), cond.torso_latent), ray_frame)
        return self.torso.get_outputs(uv, pose, latent)

    def get_outputs(self, origins: Tensor, directions: Tensor, pixels: Tensor, ray_frame: Tensor,
                    cond: FrameConditions, background: Tensor, with_torso: bool,
                    generator: torch.Generator | None = None, head_grad: bool = True) -> dict[str, Tensor]:
        """Render rays: head over (torso over) the background.

        Args:
            origins, directions, pixels: [R, 3], [R, 3], [R, 2] the rays and their pixel positions.
            ray_frame: int64 [R] row of ``cond`` of each ray.
            cond: per-frame conditions.
            background: [R, 3] colour behind everything (in the head stage, the ground truth's torso or the
                background).
            with_torso: render the torso between head and background.
            generator: sampling jitter (training) or None (evaluation).
            head_grad: track gradients through the head (False in the torso stage).

        Returns:
            ``rgb`` [R, 3] the image, ``head_rgb``, ``head_acc``, ``ambient`` and, with the torso, ``torso_rgb``,
            ``torso_alpha``.
        """
        with torch.set_grad_enabled(head_grad and torch.is_grad_enabled()):
            head = self.render_head(origins, directions, ray_frame, cond, generator)
        behind = background
        out = {"head_rgb": head["rgb"], "head_acc": head["acc"], "ambient": head["ambient"],
               "n_samples": head["n_samples"]}
        if with_torso:
            torso = self.render_torso(pixels, ray_frame, cond)
            ta = torso["alpha"][:, None]
            behind = torso["rgb"] * ta + (1 - ta) * background
            out["torso_rgb"], out["torso_alpha"] = torso["rgb"], torso["alpha"]
        out["rgb"] = head["rgb"] + (1 - head["acc"][:, None]) * behind
        return out

    def get_loss_dict(self, outputs: dict[str, Tensor], target: Tensor, face: Tensor, label: Tensor,
                      stage: Stage, mouth: Tensor | None = None) -> dict[str, Tensor]:
        """Weighted losses of a ray batch (the lips stage adds its LPIPS term itself, on a patch).

        Args:
            outputs: from :meth:`get_outputs`.
            target: [R, 3] ground truth colours.
            face: bool [R] rays inside the face rectangle.
            label: uint8 [R] parsing label of each ray's pixel.
            stage: training stage.
            mouth: bool [R] rays inside the mouth region (needed with ``ambient_region="mouth"``).
        """
        w = self.config.losses
        losses = {"mse": mse(outputs["rgb"], target)}
        if stage in ("head", "lips"):
            losses["alpha_entropy"] = w.alpha_entropy * alpha_entropy(outputs["head_acc"])
            if w.ambient_region == "mouth":
                if mouth is None:
                    raise ValueError("ambient_region='mouth' needs the rays' mouth mask")
                audio_region = mouth
            elif w.ambient_region == "face":
                audio_region = face
            else:
                raise ValueError(f"unknown ambient_region {w.ambient_region!r} (face or mouth)")
            losses["ambient_l1"] = w.ambient_l1 * ambient_l1(outputs["ambient"], audio_region)
            if w.head_mask:
                losses["head_mask"] = w.head_mask * mask_bce(outputs["head_acc"], label == HEAD,
                                                             torch.ones_like(face))
        else:
            losses["torso_entropy"] = w.alpha_entropy * alpha_entropy(outputs["torso_alpha"])
            if w.torso_mask:
                body = (label == TORSO) | (label == NECK)
                losses["torso_mask"] = w.torso_mask * mask_bce(outputs["torso_alpha"], body, label != HEAD)
        return losses

    def latent_loss(self, stage: Stage, pairs: Tensor) -> Tensor:
        """The weighted smoothness of the stage's latents over ``pairs`` [P, 2] of neighbouring training frames
        (:attr:`LossWeights.latent_smooth`)."""
        latents = self.torso_latents if stage == "torso" else self.head_latents
        return self.config.losses.latent_smooth * latent_smoothness(latents, pairs)

    def pose_loss(self, pairs: Tensor) -> Tensor:
        """The weighted smoothness of the head pose corrections over ``pairs`` [P, 2] of neighbouring training
        frames (:attr:`LossWeights.pose_smooth`); zero without :attr:`RadNerfConfig.pose_refine`."""
        if self.pose_deltas is None:
            return self.head_latents.sum() * 0.0
        return self.config.losses.pose_smooth * latent_smoothness(self.pose_deltas, pairs)

    def grid_loss(self) -> Tensor:
        """The weighted total variation of the head's feature planes (:attr:`LossWeights.grid_tv`)."""
        tvs = [m.total_variation() for m in self.head.modules() if isinstance(m, PlaneEncoder)]
        if not tvs:  # the frequency-encoded (implicit MLP) head has no planes
            return self.head_latents.sum() * 0.0
        return self.config.losses.grid_tv * torch.stack(tvs).mean()

    def get_param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters of a stage: ``grid`` (feature planes), ``net`` (MLPs, latents) and ``pose`` (the
        head pose corrections, in the head and lips stages with :attr:`RadNerfConfig.pose_refine`)."""
        module: nn.Module = self.torso if stage == "torso" else self.head
        latents = self.torso_latents if stage == "torso" else self.head_latents
        grids = [p for m in module.modules() if isinstance(m, PlaneEncoder) for p in m.parameters()]
        ids = {id(p) for p in grids}
        nets = [p for p in module.parameters() if id(p) not in ids] + [latents]
        poses = [self.pose_deltas] if self.pose_deltas is not None and stage != "torso" else []
        return {"grid": grids, "net": nets, "pose": poses}

    # occupancy -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_grid(self, audio: Tensor, eye: Tensor, generator: torch.Generator) -> None:
        """Update the occupancy grid with random conditions drawn from the training frames' ``audio`` [N, W, M]
        and ``eye`` [N] (and their latents): the grid keeps the maximum density over them."""
        feats = self.head.encode_audio(audio)
        latents = self.head_latents[:feats.shape[0]]

        def density(x: Tensor) -> Tensor:
            pick = torch.randint(0, feats.shape[0], (x.shape[0],), generator=generator).to(x.device)
            return self.head.get_density(x, feats[pick], eye[pick], latents[pick])

        self.grid.update(density, generator)


def gather(tensors: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
    """The rows ``index`` (int64 [N], repeats allowed) of each tensor. ``index_select``, not ``t[index]``: on the CPU
    the latter's backward adds the repeated rows' gradients with atomics, in a different order each run (so
    training was not bit-reproducible), and is 2.5-5x slower."""
    return tuple(t.index_select(0, index) for t in tensors)


def correct_rays(origins: Tensor, directions: Tensor, delta: Tensor, ray_frame: Tensor) -> tuple[Tensor, Tensor]:
    """Rays of a corrected camera pose: ``[R | T] -> [exp(w) R | exp(w) T + t]`` for ``delta = (w, t)`` [B, 6] (a
    rotation about the head's origin, axis-angle in radians, then a translation in metres), one row per frame,
    ``ray_frame`` [R] the row of each ray. Differentiable in ``delta``; zero leaves the rays unchanged."""
    w = delta[:, :3]
    zero = torch.zeros_like(w[:, 0])
    skew = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], -1)
    rot, shift = gather((torch.linalg.matrix_exp(skew.view(-1, 3, 3)), delta[:, 3:]), ray_frame)  # [R, 3, 3], [R, 3]
    o = torch.einsum("rij,rj->ri", rot, origins) + shift
    d = torch.einsum("rij,rj->ri", rot, directions)
    return o, d
