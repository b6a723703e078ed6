"""A test-only second method: a plain NeRF without audio (a frequency-encoded MLP, uniform samples in the head box,
one stage), written against the public method contract only (:mod:`nerf.model`, :mod:`nerf.methods`) to show a
method needs no edit to RAD-NeRF's files or to the trainer, evaluation and render paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from nerf import methods
from nerf.config import ExperimentConfig, StageConfig, TrainerConfig
from nerf.data import IdentityFrames
from nerf.encoders import FrequencyEncoder, FrequencyEncoderConfig
from nerf.fields import mlp, trunc_exp
from nerf.losses import mse
from nerf.model import AvatarModel, Driving, StepContext, TrainingCallback, TrainOutputs
from nerf.rays import FrameStore
from nerf.rendering import box_intersection, composite, render_image


@dataclass(frozen=True)
class PlainConfig:
    hidden: int = 32
    frequencies: int = 4
    samples: int = 12
    bound: float = 0.25


@dataclass(frozen=True)
class PlainStage(StageConfig):
    lr_net: float = 5e-3


@dataclass(frozen=True)
class PlainTrainerConfig(TrainerConfig):
    STAGES: ClassVar[tuple[str, ...]] = ("fit",)
    fit: PlainStage = field(default_factory=lambda: PlainStage(steps=8))


class PlainNerf(AvatarModel):
    def __init__(self, config: PlainConfig, near: float, far: float):
        super().__init__()
        self.config, self.near, self.far = config, near, far
        self.enc = FrequencyEncoder(3, FrequencyEncoderConfig(config.frequencies))
        self.net = mlp(self.enc.out_dim, 4, config.hidden, 3)
        self.callback_calls = 0

    def rays_rgb(self, origins: Tensor, directions: Tensor, background: Tensor,
                 generator: torch.Generator | None) -> Tensor:
        t0, t1 = box_intersection(origins, directions, self.config.bound)
        t0, t1 = t0.clamp(min=self.near), t1.clamp(max=self.far).clamp(min=self.near)
        s = self.config.samples
        u = (torch.arange(s, device=origins.device) + 0.5).expand(origins.shape[0], s)
        if generator is not None:
            u = torch.arange(s, device=origins.device) + torch.rand(origins.shape[0], s, generator=generator)
        t = t0[:, None] + (t1 - t0)[:, None] * u / s
        pts = origins[:, None] + directions[:, None] * t[..., None]
        h = self.net(self.enc(pts.reshape(-1, 3) / self.config.bound)).view(-1, s, 4)
        _, rgb, acc = composite(trunc_exp(h[..., 0]), torch.sigmoid(h[..., 1:]), ((t1 - t0) / s)[:, None])
        return rgb + (1 - acc[:, None]) * background

    @classmethod
    def for_training(cls, config: ExperimentConfig, data: IdentityFrames, store: FrameStore) -> PlainNerf:
        return cls(config.model, data.near, data.far)

    @classmethod
    def for_rendering(cls, config: ExperimentConfig, kit: dict[str, Any], state: dict[str, Tensor]) -> PlainNerf:
        return cls(config.model, float(kit["near"]), float(kit["far"]))

    def get_param_groups(self, stage: str) -> list[dict[str, Any]]:
        return [{"name": "net", "params": list(self.parameters())}]

    def get_training_callbacks(self) -> list[TrainingCallback]:
        def count(ctx: StepContext) -> None:
            self.callback_calls += 1

        return [TrainingCallback(count, "after_step")]

    def get_train_loss_dict(self, ctx: StepContext) -> TrainOutputs:
        batch = ctx.sample()
        rgb = self.rays_rgb(batch.origins, batch.directions, batch.background, ctx.generator)
        return TrainOutputs({"mse": mse(rgb, batch.rgb)}, samples=rgb.shape[0] * self.config.samples, rays=batch,
                            rgb=rgb)

    def render_frame(self, store: FrameStore, frame: int, reached: Sequence[str], chunk: int | None = None,
                     **options: Any) -> Tensor:
        rays = store.frame_rays(frame)
        return render_image(lambda sl: self.rays_rgb(rays.origins[sl], rays.directions[sl], rays.background[sl], None),
                            rays.origins.shape[0], store.size, store.device, chunk)

    def render_view(self, origins: Tensor, directions: Tensor, pixels: Tensor, background: Tensor,
                    drive: Driving, size: int, chunk: int | None = None) -> Tensor:
        return render_image(lambda sl: self.rays_rgb(origins[sl], directions[sl], background[sl], None),
                            origins.shape[0], size, origins.device, chunk)


def _tiny() -> ExperimentConfig:
    return ExperimentConfig(name="tiny", method="plain", model=PlainConfig(),
                            trainer=PlainTrainerConfig(size=64, rays_per_batch=256, frames_per_batch=2,
                                                       checkpoint_every=3))


METHOD = methods.Method(name="plain", version=1, model=PlainNerf, model_config=PlainConfig,
                        trainer_config=PlainTrainerConfig, presets={"tiny": _tiny}, default_preset="tiny")
