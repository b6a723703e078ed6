"""Training of one identity through the stages head -> lips -> torso, with EMA, LR decay and checkpoints.

A checkpoint is a plain dict of tensors, numbers and strings (``torch.load(weights_only=True)`` reads
it): the model and EMA weights, the optimizer and scheduler state of the current stage, the stage and
step, the random generator's state, the JSON config, and the render kit (background, the dataset's
poses and eye openness, intrinsics) so a checkpoint renders without the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nerf.data import NEAREST_LATENTS, ErrorMap, FrameStore, IdentityFrames, RayBatch
from nerf.models import STAGES, FrameConditions, RadNerf, RadNerfConfig, Stage
from pipelines.schema import HEAD

CHECKPOINT_FORMAT = "parley-radnerf/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a parley RAD-NeRF checkpoint."""


@dataclass(frozen=True)
class StageConfig:
    """Optimisation of one stage."""

    steps: int
    """Optimiser steps (0 skips the stage)."""
    lr_grid: float = 1e-2
    """Learning rate of feature planes."""
    lr_net: float = 1e-3
    """Learning rate of MLPs and latents."""
    lr_final: float = 0.1
    """The learning rate decays exponentially to this fraction of its start over the stage."""
    lr_pose: float = 5e-4
    """Learning rate of the head pose corrections (only with :attr:`nerf.models.RadNerfConfig.pose_refine`)."""

    def __post_init__(self) -> None:
        # Adam checks only its default learning rate, not a parameter group's: a negative one would train backwards
        bad = [f"{k}={getattr(self, k)}" for k in ("steps", "lr_grid", "lr_net", "lr_pose") if getattr(self, k) < 0]
        if not 0.0 < self.lr_final <= 1.0:
            bad.append(f"lr_final={self.lr_final}")
        if bad:
            raise ValueError(f"stage config: invalid {', '.join(bad)} (steps and learning rates must be >= 0, "
                             "lr_final a fraction in (0, 1])")


@dataclass(frozen=True)
class TrainerConfig:
    """How one identity is trained."""

    size: int = 256
    """Training image side (the person crop scaled)."""
    rays_per_batch: int = 4096
    """Rays per step."""
    frames_per_batch: int = 4
    """Frames the rays of one step come from."""
    face_fraction: float = 0.5
    """Share of a batch's rays drawn inside the face rectangle."""
    error_map: int = 0
    """Cells per side of each training frame's error map (:class:`nerf.data.ErrorMap`; 0: none). ``error_fraction``
    of a batch's rays are drawn from it, in proportion to the recent error; the rest of the batch, after the
    face's share, anywhere. Reset at each stage's start."""
    error_fraction: float = 0.25
    """Share of a batch's rays drawn from the error map (with ``error_map``)."""
    head: StageConfig = field(default_factory=lambda: StageConfig(steps=2000))
    lips: StageConfig = field(default_factory=lambda: StageConfig(steps=300, lr_grid=2e-3, lr_net=2e-4))
    torso: StageConfig = field(default_factory=lambda: StageConfig(steps=1000))
    lips_patch: int = 48
    """Side of the lip patch (rays) of the lips stage."""
    ema_decay: float = 0.95
    """Exponential moving average of weights, updated every step; evaluation and rendering use it."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and at the end of every stage)."""
    max_frames: int | None = None
    """Use only the first frames of the identity (before the held-out split); None for all."""
    seed: int = 0
    """Seed of the initial weights and of every random draw of training (rays, frames, jitter): two trainers with
    the same config and frames start from the same weights and draw the same batches, and on the CPU (same torch,
    same thread count) train to the same weights bit for bit. On a GPU some kernels add in a varying order."""

    def __post_init__(self) -> None:
        share = self.face_fraction + (self.error_fraction if self.error_map else 0.0)
        if self.face_fraction < 0 or self.error_fraction < 0 or share > 1.0:
            raise ValueError(f"trainer config: face_fraction ({self.face_fraction}) and error_fraction "
                             f"({self.error_fraction}) must be >= 0 and sum to at most 1")
        if not 0 <= self.error_map <= self.size:
            raise ValueError(f"trainer config: error_map={self.error_map} must be in [0, size={self.size}]")


@dataclass(frozen=True)
class ExperimentConfig:
    """A complete training recipe: the model's shape and its training."""

    name: str = "cpu"
    model: RadNerfConfig = field(default_factory=RadNerfConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


class Ema:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's parameters and the averages (call twice to restore)."""
        for k, p in model.named_parameters():
            tmp = p.detach().clone()
            p.copy_(self.shadow[k])
            self.shadow[k].copy_(tmp)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The averaged parameters in ``model`` inside the block; its own ones back after it, also on error."""
        self.swap(model)
        try:
            yield
        finally:
            self.swap(model)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; its previous mode back after it, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class StepResult:
    """Scalars of one training step."""

    stage: Stage
    step: int
    """Step within the stage (1-based, after the step)."""
    global_step: int
    losses: dict[str, float]
    loss: float
    lr: float
    samples: int
    """Head samples evaluated."""
    seconds: float


class Trainer:
    """Trains a :class:`RadNerf` on one identity's frames.

    Args:
        config: the recipe.
        data: the identity's frames at ``config.trainer.size``.
        device: where to train.
        lips_loss: a module mapping ``pred, target [B, 3, H, W]`` in [0, 1] to per-image LPIPS ``[B]``
            (:class:`nerf.metrics.LPIPS`); required when the lips stage has steps.
    """

    def __init__(self, config: ExperimentConfig, data: IdentityFrames, device: str | torch.device = "cpu",
                 lips_loss: torch.nn.Module | None = None):
        self.config = config
        self.tc = config.trainer
        self.device = torch.device(device)
        if data.size != self.tc.size:
            raise ValueError(f"frames are {data.size}px but the config trains at {self.tc.size}px")
        self.data = data
        self.store = FrameStore(data, self.device)
        self.latent_pairs = torch.from_numpy(data.train_pairs()).to(self.device)
        with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the global RNG left as it was
            torch.default_generator.manual_seed(self.tc.seed)  # (the model is built on the CPU, then moved)
            self.model = RadNerf(config.model, data.n_frames, data.size, data.near, data.far).to(self.device)
        poses = torch.from_numpy(data.poses[: data.n_train, :3, :4].reshape(-1, 12))
        self.model.pose_mean.copy_(poses.mean(0))
        self.model.n_train.fill_(data.n_train)
        if config.model.head.audio_gate > 0:
            self.model.head.get_buffer("mouth_centre").copy_(self.store.mouth_point())
        self.lips_loss = lips_loss.to(self.device) if lips_loss is not None else None
        if self.tc.lips.steps and lips_loss is None:
            raise ValueError("the lips stage needs an LPIPS module (lips_loss); pass one or set lips steps to 0")
        self.ema = Ema(self.model, self.tc.ema_decay)
        self.generator = torch.Generator().manual_seed(self.tc.seed)
        self.error_map = (ErrorMap(data.n_frames, self.tc.error_map, data.size, self.device)
                          if self.tc.error_map else None)
        self.stage: Stage = STAGES[0]
        self.stage_step = 0
        self.global_step = 0
        self._make_optimizer()

    # stages ----------------------------------------------------------------------------------------------
    def stage_config(self, stage: Stage) -> StageConfig:
        return {"head": self.tc.head, "lips": self.tc.lips, "torso": self.tc.torso}[stage]

    def _make_optimizer(self) -> None:
        sc = self.stage_config(self.stage)
        groups = self.model.get_param_groups(self.stage)
        params = [{"params": groups["grid"], "lr": sc.lr_grid, "eps": 1e-15},
                  {"params": groups["net"], "lr": sc.lr_net, "weight_decay": 0.0}]
        if groups["pose"]:
            params.append({"params": groups["pose"], "lr": sc.lr_pose})
        self.optimizer = torch.optim.Adam(params, betas=(0.9, 0.99))
        gamma = sc.lr_final ** (1.0 / max(sc.steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)

    def resize_stage(self, stage: Stage, steps: int) -> None:
        """Give ``stage`` ``steps`` steps in all (time-budgeted training re-plans with this as it learns how fast
        steps run). A later stage just takes the new count; the running stage keeps the steps done and its
        learning rate, and the decay is re-fitted to reach ``lr_final`` at the new end. The trainer's config (and
        so its checkpoints) holds the new count: a resumed run must be given that config.

        Raises:
            ValueError: a stage already finished, or fewer steps than the running stage has done.
        """
        order = STAGES.index(stage) - STAGES.index(self.stage)
        if order < 0 or (order == 0 and steps <= self.stage_step) or steps < 1:
            raise ValueError(f"cannot give the {stage} stage {steps} steps: the trainer is at {self.stage} step "
                             f"{self.stage_step}")
        sized: dict[str, Any] = {stage: replace(self.stage_config(stage), steps=steps)}
        self.tc = replace(self.tc, **sized)
        self.config = replace(self.config, trainer=self.tc)
        if order == 0 and self.stage_step > 0:
            sc = self.stage_config(stage)
            done = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["initial_lr"]
            self.scheduler.gamma = (sc.lr_final / done) ** (1.0 / (steps - self.stage_step))
        elif order == 0:
            self._make_optimizer()

    def _advance_stage(self) -> bool:
        """Move past finished (or empty) stages; False when all are done."""
        while self.stage_step >= self.stage_config(self.stage).steps:
            i = STAGES.index(self.stage)
            if i + 1 == len(STAGES):
                return False
            self.stage = STAGES[i + 1]
            self.stage_step = 0
            self._make_optimizer()
            if self.error_map is not None:
                self.error_map.reset()
        return True

    @property
    def done(self) -> bool:
        return self.stage == STAGES[-1] and self.stage_step >= self.stage_config(self.stage).steps

    def total_steps(self) -> int:
        return sum(self.stage_config(s).steps for s in STAGES)

    # one step --------------------------------------------------------------------------------------------
    def _conditions(self, batch: RayBatch) -> tuple[FrameConditions, Tensor]:
        """Conditions of the unique frames of a batch and each ray's row in them (grouped on the host when the batch
        has its frames there: a ``unique`` on the GPU waits for the device)."""
        frames = batch.frame if batch.frame_host is None else batch.frame_host
        uniq, inverse = torch.unique(frames, return_inverse=True)
        uniq, inverse = uniq.to(self.device), inverse.to(self.device)
        s = self.store
        cond = self.model.train_conditions(uniq, s.audio[uniq], s.eye[uniq], s.poses[uniq])
        return cond, inverse

    def step(self) -> StepResult | None:
        """One optimiser step of the current stage (moving on to the next stage when it is done).

        Returns:
            The step's scalars, or None when training is complete.
        """
        if not self._advance_stage():
            return None
        t0 = time.perf_counter()
        stage = self.stage
        self.model.train()
        g = self.generator
        grid_cfg = self.config.model.grid
        if stage != "torso" and self.stage_step % grid_cfg.update_every == 0 and self.global_step > 0:
            n = self.store.n_train
            self.model.update_grid(self.store.audio[:n], self.store.eye[:n], g)

        batch = self.store.sample(self.tc.rays_per_batch, self.tc.frames_per_batch, g, head_only=stage != "torso",
                                  face_fraction=self.tc.face_fraction, error_map=self.error_map,
                                  error_fraction=self.tc.error_fraction)
        cond, ray_frame = self._conditions(batch)
        out = self.model.get_outputs(batch.origins, batch.directions, batch.pixels, ray_frame, cond,
                                     batch.background, with_torso=stage == "torso", generator=g,
                                     head_grad=stage != "torso")
        losses = self.model.get_loss_dict(out, batch.rgb, batch.face, batch.label, stage, batch.mouth)
        if self.error_map is not None:
            self.error_map.update(batch.frame, batch.pixels, ((out["rgb"].detach() - batch.rgb) ** 2).mean(-1))
        if self.config.model.losses.latent_smooth:
            losses["latent_smooth"] = self.model.latent_loss(stage, self.latent_pairs)
        if self.config.model.losses.pose_smooth and self.model.pose_deltas is not None and stage != "torso":
            losses["pose_smooth"] = self.model.pose_loss(self.latent_pairs)
        if self.config.model.losses.grid_tv and stage != "torso":
            losses["grid_tv"] = self.model.grid_loss()
        samples = int(out["n_samples"])
        if stage == "lips":
            assert self.lips_loss is not None
            w = self.config.model.losses
            p = self.tc.lips_patch
            rays, target = self.store.lips_patch(g, p)
            pcond, pframe = self._conditions(rays)
            pout = self.model.get_outputs(rays.origins, rays.directions, rays.pixels, pframe, pcond, rays.background,
                                          with_torso=False, generator=g)
            pred = pout["rgb"].view(p, p, 3).permute(2, 0, 1)[None]
            losses["lips_lpips"] = w.lips_lpips * self.lips_loss(pred, target.permute(2, 0, 1)[None]).mean()
            losses["lips_mse"] = w.lips_mse * torch.mean((pout["rgb"] - rays.rgb) ** 2)
            samples += int(pout["n_samples"])
        loss = torch.stack(list(losses.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.stage_step += 1
        self.global_step += 1
        values = torch.stack([v.detach() for v in (loss, *losses.values())]).tolist()  # one copy to the host
        return StepResult(stage=stage, step=self.stage_step, global_step=self.global_step,
                          losses=dict(zip(losses, values[1:], strict=True)), loss=values[0],
                          lr=float(self.optimizer.param_groups[0]["lr"]), samples=samples,
                          seconds=time.perf_counter() - t0)

    def train(self, checkpoint_path: str | Path | None = None,
              on_step: Callable[[StepResult], None] | None = None,
              on_checkpoint: Callable[[Path], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> None:
        """Run every remaining step, checkpointing every ``checkpoint_every`` steps and at each stage's end.

        Args:
            checkpoint_path: where checkpoints go (overwritten atomically); None keeps none.
            on_step: called after every step (metrics reporting).
            on_checkpoint: called after a checkpoint is written.
            should_stop: polled after every step; True stops early (after a checkpoint).
        """
        path = Path(checkpoint_path) if checkpoint_path is not None else None
        while True:
            result = self.step()
            if result is None:
                break
            if on_step is not None:
                on_step(result)
            stage_end = result.step >= self.stage_config(result.stage).steps
            stop = should_stop is not None and should_stop()
            if path is not None and (stage_end or stop or result.global_step % self.tc.checkpoint_every == 0):
                self.save_checkpoint(path)
                if on_checkpoint is not None:
                    on_checkpoint(path)
            if stop:
                break

    # evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_frame(self, frame: int, chunk: int | None = None, use_ema: bool = True,
                     novel: bool | None = None, head_only: bool = False, audio_from: int | None = None,
                     pose_delta: Tensor | None = None, nearest: int = NEAREST_LATENTS) -> Tensor:
        """Render one dataset frame under its own pose, audio and eye.

        Args:
            frame: frame id.
            chunk: rays per forward pass (default: :func:`default_chunk` of the device).
            use_ema: render with the averaged weights.
            novel: render without the frame's own latent (default: for held-out frames, which have none). A
                held-out frame takes the latents of the training frames nearest it in time
                (:meth:`IdentityFrames.nearest_train`); a training frame rendered as novel takes the mean latent.
            head_only: the head over the ground truth's torso and background (the head stage's target) instead
                of the full model.
            audio_from: another frame whose audio drives it (everything else stays ``frame``'s): what the
                audio alone changes.
            pose_delta: [6] a rigid correction of the head pose (:func:`nerf.models.correct_rays`) instead of the
                model's own (none, or the learned one with :attr:`RadNerfConfig.pose_refine`), e.g. from
                :meth:`align_pose`.
            nearest: how many nearest training frames' latents a held-out frame averages.

        Returns:
            [S, S, 3] float in [0, 1].
        """
        s = self.store
        rays = s.frame_rays(frame, head_only=head_only)
        with_torso = not head_only and self.tc.torso.steps > 0 and (self.stage == "torso" or self.done)
        # the latents and pose corrections too, as a registered model (the EMA weights) renders
        with self.ema.applied(self.model) if use_ema else contextlib.nullcontext():
            cond = self._frame_conditions(frame, novel, audio_from, nearest)
            if pose_delta is not None:
                cond.pose_delta = pose_delta.detach().view(1, 6).to(self.device)
            return render_image(self.model, rays.origins, rays.directions, rays.pixels, cond, rays.background,
                                with_torso=with_torso, size=s.size, chunk=chunk)

    def _frame_conditions(self, frame: int, novel: bool | None = None, audio_from: int | None = None,
                          nearest: int = NEAREST_LATENTS) -> FrameConditions:
        """One frame's conditions as :meth:`render_frame` renders it (held-out frames borrow latents)."""
        s = self.store
        fid = torch.tensor([frame], device=self.device)
        audio = s.audio[torch.tensor([frame if audio_from is None else audio_from], device=self.device)]
        if novel is None:
            novel = frame >= s.n_train
        if novel:
            near = (torch.from_numpy(self.data.nearest_train(frame, nearest)).to(self.device)
                    if frame >= s.n_train else None)
            return self.model.novel_conditions(audio, s.eye[fid], s.poses[fid], near)
        return self.model.train_conditions(fid, audio, s.eye[fid], s.poses[fid])

    def align_pose(self, frame: int, steps: int = 60, n_rays: int = 4096, lr: float = 2e-3,
                   margin: int = 8, seed: int = 0) -> PoseAlignment:
        """Fit a rigid correction of one frame's head pose to its own image, the field frozen (test-time pose
        alignment, as BARF evaluates): how much of a frame's error is the tracked pose's rather than the model's.

        The correction (axis-angle and translation, :func:`nerf.models.correct_rays`) starts at the model's own
        (zero, or the learned or borrowed one with :attr:`RadNerfConfig.pose_refine`) and takes ``steps`` Adam
        steps on the photometric error of the head over the ground truth's torso and background (the head
        stage's target), on ``n_rays`` random pixels per step from the head's box (its parsing label, ``margin``
        pixels wider) in the ground truth. Uses the averaged (EMA) weights, as :meth:`render_frame`.

        Returns:
            the :class:`PoseAlignment`; render with it through ``render_frame(frame, pose_delta=...delta)``.
        """
        s = self.store
        rays = s.frame_rays(frame, head_only=True)
        head = (rays.label == HEAD).view(s.size, s.size)
        region = torch.arange(rays.label.shape[0], device=self.device)
        if bool(head.any()):
            ys, xs = torch.nonzero(head, as_tuple=True)
            y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin, s.size - 1)
            x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin, s.size - 1)
            py, px = region // s.size, region % s.size
            region = region[(py >= y0) & (py <= y1) & (px >= x0) & (px <= x1)]
        g = torch.Generator().manual_seed(seed)
        with self.ema.applied(self.model), evaluating(self.model):
            cond = self._frame_conditions(frame)
            start = (cond.pose_delta.detach().clone() if cond.pose_delta is not None
                     else torch.zeros(1, 6, device=self.device))
            delta = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([delta], lr=lr)
            for _ in range(steps):
                pick = region[torch.randint(0, region.shape[0], (n_rays,), generator=g).to(self.device)]
                cond.pose_delta = delta.expand(1, 6)
                fr = torch.zeros(pick.shape[0], dtype=torch.long, device=self.device)
                with torch.enable_grad():
                    out = self.model.get_outputs(rays.origins[pick], rays.directions[pick], rays.pixels[pick], fr,
                                                 cond, rays.background[pick], with_torso=False, generator=None)
                    loss = ((out["rgb"] - rays.rgb[pick]) ** 2).mean()
                    (grad,) = torch.autograd.grad(loss, [delta])  # the field's own parameters get no gradient
                opt.zero_grad()
                delta.grad = grad
                opt.step()
        change = (delta.detach() - start)[0]
        return PoseAlignment(delta=delta.detach()[0], degrees=float(torch.rad2deg(change[:3].norm())),
                             millimetres=float(change[3:].norm() * 1000))

    # checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d = self.data
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config_to_json(self.config),
            "identity": d.identity,
            "stage": self.stage,
            "stage_step": self.stage_step,
            "global_step": self.global_step,
            "done": self.done,
            "model": self.model.state_dict(),
            "ema": dict(self.ema.shadow),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "render_kit": render_kit(d),
            "data_version": d.version,
            **({"error_map": self.error_map.values.clone()} if self.error_map is not None else {}),
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temporary file, then rename); the one it replaces stays beside it as
        :func:`previous_path` (a damaged file then costs the steps since it, not the run)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        if path.exists():  # a hard link, then a rename: `path` itself never goes missing in between
            keep = path.with_name(f".{path.name}.prev-{os.getpid()}")
            try:
                os.link(path, keep)
            except OSError:
                shutil.copy2(path, keep)
            os.replace(keep, previous_path(path))
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint of the same recipe, identity and frames (falling back to the previous
        checkpoint when this one does not read).

        Raises:
            CheckpointError: unreadable file, another format, another recipe or identity, or frames of another
                build of the dataset.
        """
        ckpt = load_checkpoint(path, fallback=True)
        theirs_data = str(ckpt.get("data_version") or "")
        if theirs_data and self.data.version and theirs_data != self.data.version:
            raise CheckpointError(
                f"{path}: trained on another build of {self.data.identity!r}'s frames (data version {theirs_data}, "
                f"now {self.data.version}: the dataset was rebuilt or clips were added); resuming would mix the "
                "two. Train into a new output directory, or delete this one to start over")
        # Compared through a round trip: a checkpoint written before a config field existed holds no value for it,
        # and the old behaviour (the class's ABSENT_IN_OLD_CONFIGS, else the field's default) stands in.
        try:
            theirs = config_to_json(config_from_json(ckpt["config"]))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: its config does not parse ({e})") from e
        if theirs != config_to_json(self.config):
            raise CheckpointError(f"{path}: trained with another config; start a new run or use the same recipe")
        if ckpt["identity"] != self.data.identity:
            raise CheckpointError(f"{path}: a checkpoint of identity {ckpt['identity']!r}, not {self.data.identity!r}")
        self.model.load_state_dict(ckpt["model"])
        self.ema.shadow = {k: v.to(self.device) for k, v in ckpt["ema"].items()}
        self.stage = ckpt["stage"]
        self.stage_step = int(ckpt["stage_step"])
        self.global_step = int(ckpt["global_step"])
        self._make_optimizer()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"])
        if self.error_map is not None and "error_map" in ckpt:
            self.error_map.values.copy_(ckpt["error_map"])


@dataclass
class PoseAlignment:
    """A frame's head pose aligned to its image (:meth:`Trainer.align_pose`)."""

    delta: Tensor
    """[6] the correction to render with (axis-angle radians, then metres)."""
    degrees: float
    """Rotation the alignment added to the model's own correction."""
    millimetres: float
    """Translation it added."""


def render_kit(d: IdentityFrames) -> dict[str, Any]:
    """What rendering needs from the dataset: background, per-frame poses, intrinsics and eye openness."""
    return {
        "size": d.size,
        "background": torch.from_numpy(d.background.copy()),
        "poses": torch.from_numpy(d.poses.copy()),
        "intrinsics": torch.from_numpy(d.intrinsics.copy()),
        "eye": torch.from_numpy(d.eye.copy()),
        "n_train": d.n_train,
        "near": d.near,
        "far": d.far,
    }


CPU_CHUNK = 1 << 15
"""Rays per forward pass when rendering on the CPU: on 2 cores, 512 px frames of a 30-min RD_Radio2_000 checkpoint
took 4.2 s with 4096 rays per chunk, 3.5 s with 16384, 2.9 s with 32768 and 3.3 s with 65536 (scratch timing,
one run each)."""
CUDA_CHUNK = 1 << 18
"""Rays per forward pass when rendering on a GPU: a whole 512 px frame. A frame is rendered as chunks x marching
rounds x the field's kernels (8 x 8 x ~40 launches at 512 px with :data:`CPU_CHUNK`), so small chunks make a GPU
frame launch-bound. The working set is about 2.6 KB per ray: a 512 px frame in one chunk raised the CPU's peak
memory by 678 MB, in chunks of 32768 by 143 MB. Not measured on a GPU yet: ``benchmarks/gpu.py``'s render sweep
compares 32768 rays with the whole frame."""


def default_chunk(device: torch.device | str) -> int:
    """Rays per forward pass for rendering on ``device``: :data:`CUDA_CHUNK` on CUDA, :data:`CPU_CHUNK` elsewhere."""
    return CUDA_CHUNK if torch.device(device).type == "cuda" else CPU_CHUNK


@torch.no_grad()
def render_image(model: RadNerf, origins: Tensor, directions: Tensor, pixels: Tensor, cond: FrameConditions,
                 background: Tensor, with_torso: bool, size: int, chunk: int | None = None) -> Tensor:
    """Render every ray of one frame (``cond`` has one row) in chunks of ``chunk`` rays (default:
    :func:`default_chunk` of the rays' device): [S, S, 3] in [0, 1], with the model's current weights (a caller
    wanting the EMA weights applies them around it, see :meth:`Ema.applied`)."""
    if chunk is None:
        chunk = default_chunk(origins.device)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 rays, got {chunk}")
    with evaluating(model):
        parts = []
        for i in range(0, origins.shape[0], chunk):
            sl = slice(i, i + chunk)
            fr = torch.zeros(origins[sl].shape[0], dtype=torch.long, device=origins.device)
            out = model.get_outputs(origins[sl], directions[sl], pixels[sl], fr, cond, background[sl],
                                    with_torso=with_torso, generator=None)
            parts.append(out["rgb"])
    return torch.cat(parts).clamp(0, 1).view(size, size, 3)


def previous_path(path: str | Path) -> Path:
    """Where :meth:`Trainer.save_checkpoint` keeps the checkpoint a new one replaced (``checkpoint.prev.pt``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def load_checkpoint(path: str | Path, fallback: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Args:
        path: the checkpoint.
        fallback: when it does not read (cut short, damaged), read :func:`previous_path` instead, with a warning.

    Raises:
        CheckpointError: missing, unreadable or not a parley RAD-NeRF checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a corrupt file)
        prev = previous_path(p)
        if fallback and prev.is_file():
            warnings.warn(f"{p} does not read ({type(e).__name__}); resuming from the previous checkpoint {prev}",
                          stacklevel=2)
            return load_checkpoint(prev)
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a parley RAD-NeRF checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return ckpt


# config JSON -------------------------------------------------------------------------------------------------
def config_to_json(config: ExperimentConfig) -> str:
    """The config as JSON (sorted keys: equal configs give equal strings)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str) -> ExperimentConfig:
    """Inverse of :func:`config_to_json`.

    Raises:
        ValueError: a key the config does not have (named), or malformed JSON.
    """
    return _from_dict(ExperimentConfig, json.loads(text), "config")


def _from_dict(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__} (known: {sorted(names)})")
    # a field added with a default that changes the model stands for the old behaviour when a config lacks it
    kwargs: dict[str, Any] = dict(getattr(cls, "ABSENT_IN_OLD_CONFIGS", {}))
    kwargs = {k: v for k, v in kwargs.items() if k not in data}
    for k, v in data.items():
        t = hints[k]
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            kwargs[k] = _from_dict(t, v, f"{where}.{k}")
        elif isinstance(v, list):
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)

