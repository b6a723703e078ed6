"""Training of one identity through a method's stages, with EMA, learning-rate decay and checkpoints.

The trainer knows stages, optimisers, schedulers, EMA, seeding and checkpoints; what a step computes is the
method's (:class:`nerf.model.AvatarModel`). Checkpoints are written by :mod:`nerf.checkpoint`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nerf import methods
from nerf.checkpoint import CheckpointError, load_checkpoint, render_kit, require_method, save_checkpoint
from nerf.config import ExperimentConfig, StageConfig, config_from_json, config_to_json
from nerf.data import IdentityFrames
from nerf.model import AvatarModel, PoseAlignment, StepContext
from nerf.rays import ErrorMap, FrameStore
from nerf.rendering import evaluating


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


@dataclass
class StepResult:
    """Scalars of one training step."""

    stage: str
    step: int
    """Step within the stage (1-based, after the step)."""
    global_step: int
    losses: dict[str, float]
    loss: float
    lr: float
    samples: int
    """Field samples evaluated."""
    seconds: float


class Trainer:
    """Trains a method's model on one identity's frames.

    Args:
        config: the recipe (its ``method`` picks the model, :mod:`nerf.methods`).
        data: the identity's frames at ``config.trainer.size``.
        device: where to train.
        lpips: a module mapping ``pred, target [B, 3, H, W]`` in [0, 1] to per-image LPIPS ``[B]``
            (:class:`nerf.metrics.LPIPS`); required when the method's losses need one with this config.
        pretrained: weights of parts trained elsewhere (e.g. a dataset-wide audio encoder), by the model's state-dict
            key, loaded into the new model before its averages are taken; a resumed checkpoint replaces them.
    """

    def __init__(self, config: ExperimentConfig, data: IdentityFrames, device: str | torch.device = "cpu",
                 lpips: torch.nn.Module | None = None, pretrained: dict[str, Tensor] | None = None):
        self.config = config
        self.method = methods.get(config.method)
        self.tc = config.trainer
        if not isinstance(self.tc, self.method.trainer_config):
            raise TypeError(f"a {config.method} recipe needs a {self.method.trainer_config.__name__}, "
                            f"not a {type(self.tc).__name__}")
        self.stages = self.method.stages
        self.device = torch.device(device)
        if data.size != self.tc.size:
            raise ValueError(f"frames are {data.size}px but the config trains at {self.tc.size}px")
        self.data = data
        self.store = FrameStore(data, self.device)
        with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the global RNG left as it was
            torch.default_generator.manual_seed(self.tc.seed)  # (the model is built on the CPU, then moved)
            model = self.method.model.for_training(config, data, self.store)
        if pretrained:
            unknown = sorted(set(pretrained) - set(model.state_dict()))
            if unknown:
                raise KeyError(f"pretrained weights for keys the {config.method} model lacks: {unknown[:3]}")
            model.load_state_dict(pretrained, strict=False)
        self.model: AvatarModel = model.to(self.device)
        self.lpips = lpips.to(self.device) if lpips is not None else None
        if self.lpips is None and self.method.model.needs_lpips(config):
            raise ValueError(f"{config.method} with this recipe needs an LPIPS module (lpips); pass one, or drop the "
                             "losses that use it")
        self.callbacks = self.model.get_training_callbacks()
        self.ema = Ema(self.model, self.tc.ema_decay)
        self.generator = torch.Generator().manual_seed(self.tc.seed)
        self.error_map = (ErrorMap(data.n_frames, self.tc.error_map, data.size, self.device)
                          if self.tc.error_map else None)
        self.stage = self.stages[0]
        self.stage_step = 0
        self.global_step = 0
        self._make_optimizer()

    # stages ----------------------------------------------------------------------------------------------------
    def stage_config(self, stage: str) -> StageConfig:
        return self.tc.stage(stage)

    def _make_optimizer(self) -> None:
        sc = self.stage_config(self.stage)
        groups = []
        for g in self.model.get_param_groups(self.stage):
            opts = {k: v for k, v in g.items() if k != "name"}
            groups.append({**opts, "lr": sc.lr(g["name"])} if "lr" not in opts else opts)
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99))
        gamma = sc.lr_final ** (1.0 / max(sc.steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)

    def resize_stage(self, stage: str, steps: int) -> None:
        """Give ``stage`` ``steps`` steps in all (time-budgeted training re-plans with this as it learns how fast
        steps run). A later stage just takes the new count; the running stage keeps the steps done and its
        learning rate, and the decay is re-fitted to reach ``lr_final`` at the new end. The trainer's config (and
        so its checkpoints) holds the new count: a resumed run must be given that config.

        Raises:
            ValueError: a stage already finished, or fewer steps than the running stage has done.
        """
        order = self.stages.index(stage) - self.stages.index(self.stage)
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
            i = self.stages.index(self.stage)
            if i + 1 == len(self.stages):
                return False
            self.stage = self.stages[i + 1]
            self.stage_step = 0
            self._make_optimizer()
            if self.error_map is not None:
                self.error_map.reset()
        return True

    @property
    def done(self) -> bool:
        return self.stage == self.stages[-1] and self.stage_step >= self.stage_config(self.stage).steps

    @property
    def reached(self) -> tuple[str, ...]:
        """The stages training has begun (the current one included)."""
        return self.stages[: self.stages.index(self.stage) + 1]

    def total_steps(self) -> int:
        return self.tc.total_steps()

    # one step --------------------------------------------------------------------------------------------------
    def _context(self) -> StepContext:
        return StepContext(config=self.config, stage=self.stage, stage_step=self.stage_step,
                           global_step=self.global_step, generator=self.generator, store=self.store,
                           error_map=self.error_map, lpips=self.lpips)

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
        ctx = self._context()
        for cb in self.callbacks:
            if cb.where == "before_step":
                cb.fn(ctx)
        out = self.model.get_train_loss_dict(ctx)
        losses = out.losses
        if self.error_map is not None and out.rays is not None and out.rgb is not None:
            b = out.rays
            self.error_map.update(b.frame, b.pixels, ((out.rgb.detach() - b.rgb) ** 2).mean(-1))
        loss = torch.stack(list(losses.values())).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        for cb in self.callbacks:
            if cb.where == "after_step":
                cb.fn(ctx)
        self.stage_step += 1
        self.global_step += 1
        values = torch.stack([v.detach() for v in (loss, *losses.values())]).tolist()  # one copy to the host
        return StepResult(stage=stage, step=self.stage_step, global_step=self.global_step,
                          losses=dict(zip(losses, values[1:], strict=True)), loss=values[0],
                          lr=float(self.optimizer.param_groups[0]["lr"]), samples=out.samples,
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

    # evaluation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_frame(self, frame: int, chunk: int | None = None, use_ema: bool = True, **options: Any) -> Tensor:
        """Render one dataset frame under its own conditions ([S, S, 3] float in [0, 1]), with the averaged (EMA)
        weights unless ``use_ema`` is False; ``options`` are the method's (:meth:`AvatarModel.render_frame`)."""
        with self.ema.applied(self.model) if use_ema else contextlib.nullcontext(), evaluating(self.model):
            return self.model.render_frame(self.store, frame, self.reached, chunk=chunk, **options)

    def align_pose(self, frame: int, **options: Any) -> PoseAlignment:
        """Test-time alignment of a frame's pose to its image with the averaged weights, the model frozen
        (:meth:`AvatarModel.align_pose`; NotImplementedError for a method without pose corrections)."""
        with self.ema.applied(self.model), evaluating(self.model):
            return self.model.align_pose(self.store, frame, **options)

    # checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d = self.data
        return {
            "format": self.method.checkpoint_format,
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
        """Write a checkpoint atomically, keeping the one it replaces (:func:`nerf.checkpoint.save_checkpoint`)."""
        return save_checkpoint(self.state_dict(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint of the same method, recipe, identity and frames (falling back to the previous
        checkpoint when this one does not read).

        Raises:
            CheckpointError: unreadable file, another method, recipe or identity, or frames of another build of
                the dataset.
        """
        ckpt = load_checkpoint(path, fallback=True)
        require_method(path, ckpt["method"], self.method.name)
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
