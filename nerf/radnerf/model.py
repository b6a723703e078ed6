"""The RAD-NeRF avatar model: head field + torso field + occupancy grid + per-frame latents.

Verbs (after nerfstudio): :meth:`RadNerf.get_outputs` renders rays under per-frame conditions,
:meth:`RadNerf.get_loss_dict` turns outputs and targets into weighted losses, :meth:`RadNerf.get_param_groups`
gives each training stage its parameters; the rest of the method contract (:class:`nerf.model.AvatarModel`) is in
:mod:`nerf.radnerf.steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.config import ExperimentConfig
from nerf.data import NEAREST_LATENTS, IdentityFrames
from nerf.encoders import PlaneEncoder
from nerf.losses import alpha_entropy, ambient_l1, latent_smoothness, mask_bce, mse
from nerf.model import AvatarModel, Driving, PoseAlignment, StepContext, TrainingCallback, TrainOutputs
from nerf.radnerf import steps
from nerf.radnerf.config import RadNerfConfig, RadNerfTrainerConfig
from nerf.radnerf.fields import HeadField, TorsoField
from nerf.rays import FrameStore
from nerf.rendering import OccupancyGrid, composite, gather, march, sample_rays
from pipelines.schema import HEAD, NECK, TORSO


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
    """[B, 6] rigid correction of the head pose (axis-angle, translation in metres;
    :func:`nerf.radnerf.steps.correct_rays`), or None for the tracked pose."""


class RadNerf(AvatarModel):
    """Head and torso of one identity, with a latent per training frame."""

    audio_net_key = "head.audio_net"

    pose_mean: Tensor
    """[12] mean training pose (3x4), subtracted from the torso's pose input."""
    n_train: Tensor
    """int64 [] training frames (latents [0, n_train) are trained)."""
    latent_pairs: Tensor
    """int64 [P, 2] neighbouring training frames (:meth:`nerf.data.IdentityFrames.train_pairs`), for the smoothness
    losses; set for training only (not saved)."""

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
        self.head = HeadField(config.head, self.head_density_latent(config))
        self.torso = TorsoField(config.torso)
        self.grid = OccupancyGrid(config.grid, config.head.bound)
        self.head_latents = nn.Parameter(torch.zeros(n_frames, config.head.latent_dim))
        self.torso_latents = nn.Parameter(torch.zeros(n_frames, config.torso.latent_dim))
        self.pose_deltas = nn.Parameter(torch.zeros(n_frames, 6)) if config.pose_refine else None
        self.register_buffer("pose_mean", torch.zeros(12))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_pairs", torch.zeros((0, 2), dtype=torch.long), persistent=False)
        self.audio_shape = (config.head.audio.window, config.head.audio.n_mels)
        self.with_torso = True  # render the torso with new input (False when the recipe trains no torso)

    def head_density_latent(self, config: RadNerfConfig) -> int | None:  # noqa: ARG002
        return None  # the leading latent dimensions the head's density net sees (HeadField's; None: its default)

    def ray_bounds(self, ray_frame: Tensor, cond: FrameConditions) -> tuple[float | Tensor, float | Tensor]:  # noqa: ARG002
        return self.near, self.far  # each ray's depth bounds (floats: the identity's; a tensor [R]: per ray)

    # conditions ------------------------------------------------------------------------------------------
    def head_features(self, cond: FrameConditions) -> Tensor:
        """[B, A] what drives the head's audio coordinate in each frame of ``cond``: RAD-NeRF's audio features (a
        method with other conditions, e.g. DialogueNeRF's listener expression, maps them into the same slot)."""
        return self.head.encode_audio(cond.audio)

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

    def frame_conditions(self, store: FrameStore, frame: int, novel: bool | None = None,
                         audio_from: int | None = None, nearest: int = NEAREST_LATENTS) -> FrameConditions:
        """One dataset frame's conditions (:func:`nerf.radnerf.steps.frame_conditions`)."""
        return steps.frame_conditions(self, store, frame, novel, audio_from, nearest)

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
            origins, directions = steps.correct_rays(origins, directions, cond.pose_delta, ray_frame)
        audio_feat = self.head_features(cond)  # [B, A]
        samples = sample_rays(origins, directions, *self.ray_bounds(ray_frame, cond), self.grid, self.config.sampler,
                              generator)
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

    def _march(self, samples: Any, directions: Tensor, ray_frame: Tensor, cond: FrameConditions,
               audio_feat: Tensor, stop: float) -> tuple[Tensor, Tensor, Tensor]:
        """The head along ``samples`` with early ray termination (:func:`nerf.rendering.march`): colour, alpha and
        weighted |audio coordinate| of the sampled rays."""
        frame = ray_frame[samples.ray]
        dirs_all = F.normalize(directions[samples.ray], dim=-1) if self.head.config.view_degree else None
        one_frame = audio_feat.shape[0] == 1  # a rendered frame: its conditions broadcast, no per-sample gather

        def field(points: Tensor, live: Tensor, gk: int) -> tuple[Tensor, Tensor, Tensor | None]:
            n_pts = points.shape[0]
            if one_frame:
                feat, eye = audio_feat.expand(n_pts, -1), cond.eye.expand(n_pts)
                lat = cond.head_latent.expand(n_pts, -1)
            else:
                feat, eye, lat = gather((audio_feat, cond.eye, cond.head_latent), frame[live].repeat_interleave(gk))
            dirs = None if dirs_all is None else dirs_all[live].repeat_interleave(gk, 0)
            out = self.head.get_outputs(points, feat, eye, lat, dirs=dirs)
            amb = out["audio_coord"].abs().sum(-1) if "audio_coord" in out else None
            return out["sigma"], out["rgb"], amb

        return march(samples, field, stop, self.config.sampler.march_group)

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
                      stage: str, mouth: Tensor | None = None) -> dict[str, Tensor]:
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

    def latent_loss(self, stage: str, pairs: Tensor) -> Tensor:
        """The weighted smoothness (``LossWeights.latent_smooth``) of the stage's latents over ``pairs`` [P, 2]."""
        latents = self.torso_latents if stage == "torso" else self.head_latents
        return self.config.losses.latent_smooth * latent_smoothness(latents, pairs)

    def pose_loss(self, pairs: Tensor) -> Tensor:
        """The weighted smoothness of the head pose corrections over ``pairs`` [P, 2] (zero without pose_refine)."""
        if self.pose_deltas is None:
            return self.head_latents.sum() * 0.0
        return self.config.losses.pose_smooth * latent_smoothness(self.pose_deltas, pairs)

    def grid_loss(self) -> Tensor:
        """The weighted total variation of the head's feature planes (``LossWeights.grid_tv``)."""
        tvs = [m.total_variation() for m in self.head.modules() if isinstance(m, PlaneEncoder)]
        if not tvs:  # the frequency-encoded (implicit MLP) head has no planes
            return self.head_latents.sum() * 0.0
        return self.config.losses.grid_tv * torch.stack(tvs).mean()

    def get_param_groups(self, stage: str) -> list[dict[str, Any]]:
        """Trainable parameters of a stage: ``grid`` (feature planes), ``net`` (MLPs, latents) and ``pose`` (the
        head pose corrections, in the head and lips stages with :attr:`RadNerfConfig.pose_refine`)."""
        module: nn.Module = self.torso if stage == "torso" else self.head
        latents = self.torso_latents if stage == "torso" else self.head_latents
        grids = [p for m in module.modules() if isinstance(m, PlaneEncoder) for p in m.parameters()]
        learnt = list(self.head.audio_net.parameters()) if stage != "torso" and self.config.head.audio.source else []
        ids = {id(p) for p in grids + learnt}
        nets = [p for p in module.parameters() if id(p) not in ids] + [latents]
        groups: list[dict[str, Any]] = [{"name": "grid", "params": grids, "eps": 1e-15},
                                        {"name": "net", "params": nets, "weight_decay": 0.0}]
        if learnt:  # a dataset-wide encoder: fine-tuned slowly (lr_audio), or frozen at 0
            groups.append({"name": "audio", "params": learnt, "weight_decay": 0.0})
        if self.pose_deltas is not None and stage != "torso":
            groups.append({"name": "pose", "params": [self.pose_deltas]})
        return groups

    # occupancy -------------------------------------------------------------------------------------------
    def density_latents(self, n: int) -> Tensor:
        """[n, latent_dim] the head latents of training frames [0, n), as the occupancy grid's update samples them."""
        return self.head_latents[:n]

    @torch.no_grad()
    def update_grid(self, audio: Tensor, eye: Tensor, generator: torch.Generator) -> None:
        """Update the occupancy grid with random conditions drawn from the training frames' ``audio`` [N, W, M]
        and ``eye`` [N] (and their latents): the grid keeps the maximum density over them."""
        feats = self.head.encode_audio(audio)
        latents = self.density_latents(feats.shape[0])

        def density(x: Tensor) -> Tensor:
            pick = torch.randint(0, feats.shape[0], (x.shape[0],), generator=generator).to(x.device)
            return self.head.get_density(x, feats[pick], eye[pick], latents[pick])

        self.grid.update(density, generator)

    # the method contract (nerf.model.AvatarModel) ----------------------------------------------------------------
    @classmethod
    def for_training(cls, config: ExperimentConfig, data: IdentityFrames, store: FrameStore) -> RadNerf:
        model = cls(config.model, data.n_frames, data.size, data.near, data.far)
        model.pose_mean.copy_(torch.from_numpy(data.poses[: data.n_train, :3, :4].reshape(-1, 12)).mean(0))
        model.n_train.fill_(data.n_train)
        model.latent_pairs = torch.from_numpy(data.train_pairs())
        if config.model.head.audio_gate > 0:
            model.head.get_buffer("mouth_centre").copy_(store.mouth_point())
        model.with_torso = _trainer(config).torso.steps > 0
        return model

    @classmethod
    def for_rendering(cls, config: ExperimentConfig, kit: dict[str, Any], state: dict[str, Tensor]) -> RadNerf:
        model = cls(config.model, int(state["head_latents"].shape[0]), int(kit["size"]), float(kit["near"]),
                    float(kit["far"]))
        model.with_torso = _trainer(config).torso.steps > 0
        return model

    @classmethod
    def needs_lpips(cls, config: ExperimentConfig) -> bool:
        return bool(_trainer(config).lips.steps)

    def get_training_callbacks(self) -> list[TrainingCallback]:
        return [TrainingCallback(self._update_grid_callback)]

    def _update_grid_callback(self, ctx: StepContext) -> None:
        """The occupancy grid's update every ``grid.update_every`` steps of the head's stages."""
        if ctx.stage != "torso" and ctx.stage_step % self.config.grid.update_every == 0 and ctx.global_step > 0:
            n = ctx.store.n_train
            self.update_grid(ctx.store.audio[:n], ctx.store.eye[:n], ctx.generator)

    def get_train_loss_dict(self, ctx: StepContext) -> TrainOutputs:
        return steps.train_step(self, ctx)

    def render_frame(self, store: FrameStore, frame: int, reached: Sequence[str], chunk: int | None = None,
                     novel: bool | None = None, head_only: bool = False, audio_from: int | None = None,
                     pose_delta: Tensor | None = None, nearest: int = NEAREST_LATENTS, **options: Any) -> Tensor:
        """One dataset frame (:func:`nerf.radnerf.steps.render_frame`)."""
        if options:
            raise TypeError(f"radnerf render_frame: unknown options {sorted(options)}")
        return steps.render_frame(self, store, frame, with_torso=not head_only and "torso" in reached and
                                  self.with_torso, chunk=chunk, novel=novel, head_only=head_only,
                                  audio_from=audio_from, pose_delta=pose_delta, nearest=nearest)

    def validation_options(self, reached: Sequence[str]) -> dict[str, Any]:
        # before the torso stage, the head over the ground truth's body (what the head stages fit)
        return {"head_only": "torso" not in reached}

    def render_view(self, origins: Tensor, directions: Tensor, pixels: Tensor, background: Tensor,
                    drive: Driving, size: int, chunk: int | None = None) -> Tensor:
        if drive.audio is None:
            raise ValueError("radnerf renders from audio: the driving frame has none")
        # the latents and pose correction of the training frame whose pose it is, else as novel frames take them
        cond = self.novel_conditions(drive.audio, drive.eye, drive.pose, drive.source_frame, drive.source_frame)
        return steps.render_image(self, origins, directions, pixels, cond, background, self.with_torso, size, chunk)

    def align_pose(self, store: FrameStore, frame: int, **options: Any) -> PoseAlignment:
        return steps.align_pose(self, store, frame, **options)


def _trainer(config: ExperimentConfig) -> RadNerfTrainerConfig:
    tc = config.trainer
    if not isinstance(tc, RadNerfTrainerConfig):
        raise TypeError(f"a radnerf recipe needs a RadNerfTrainerConfig, not a {type(tc).__name__}")
    return tc
