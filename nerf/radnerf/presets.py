"""RAD-NeRF's training presets; variants are made with ``dataclasses.replace``.

* ``debug``: tiny grids at 64 px, a few steps per stage; runs in seconds (tests, wiring checks).
* ``cpu``: sized for a 2-core machine at 256 px (about half an hour per identity).
* ``paper``: for a GPU at 512 px, after RAD-NeRF: 12-level grids up to 2048 texels, 16 samples per
  ray, 65536 rays per step, 100k head / 25k lips / 100k torso steps (the order of the released
  training scripts; not yet tuned on a GPU here).
"""

from __future__ import annotations

from dataclasses import replace

from nerf.config import ExperimentConfig
from nerf.encoders import GridEncoderConfig
from nerf.fields import AudioEncoderConfig
from nerf.radnerf.config import LossWeights, RadNerfConfig, RadNerfStage, RadNerfTrainerConfig
from nerf.radnerf.fields import HeadFieldConfig, TorsoFieldConfig
from nerf.rendering import OccupancyGridConfig, SamplerConfig


def _debug() -> ExperimentConfig:
    small = GridEncoderConfig(n_levels=2, features_per_level=2, base_resolution=8, max_resolution=32)
    model = RadNerfConfig(
        losses=LossWeights(torso_mask=0.01),  # exercised by the tests; off in the other presets (see LossWeights)
        head=HeadFieldConfig(spatial=small, audio_grid=replace(small, max_resolution=16),
                             audio=AudioEncoderConfig(channels=16, out_dim=8), hidden=32, geo_feat_dim=8),
        torso=TorsoFieldConfig(grid=small, hidden=32, pixel_frequencies=3, pose_frequencies=2),
        grid=OccupancyGridConfig(resolution=16, update_every=4),
        sampler=SamplerConfig(samples_per_ray=8, candidates=32),
    )
    trainer = RadNerfTrainerConfig(size=64, rays_per_batch=256, frames_per_batch=2, head=RadNerfStage(steps=12),
                            lips=RadNerfStage(steps=4, lr_grid=2e-3, lr_net=2e-4), torso=RadNerfStage(steps=6),
                            lips_patch=32, checkpoint_every=10)
    return ExperimentConfig(name="debug", model=model, trainer=trainer)


def _cpu() -> ExperimentConfig:
    # About 27 min of training on 2 cores at 256 px (head 0.18 s/step, lips 0.4, torso 0.08). The head keeps 6000
    # steps, a 256-texel finest plane and a learning rate decaying to 10%: the shorter, coarser or faster-decaying
    # heads tried on the shared clips helped one clip and cost another. The torso's 4000 steps gave +0.04 to +0.11 dB
    # over 2000; pose_refine adds +0.28 dB mean held-out head PSNR over the three clips (measurements:
    # docs/decisions.md, 'RAD-NeRF defaults', the cpu preset and pose_refine).
    model = RadNerfConfig(
        head=HeadFieldConfig(spatial=GridEncoderConfig(n_levels=8, base_resolution=16, max_resolution=256)),
        torso=TorsoFieldConfig(grid=GridEncoderConfig(n_levels=6, base_resolution=16, max_resolution=256)),
        grid=OccupancyGridConfig(resolution=64, update_every=16, cells_per_update=1 << 16),
        pose_refine=True,
    )
    trainer = RadNerfTrainerConfig(size=256, rays_per_batch=4096, frames_per_batch=4, head=RadNerfStage(steps=6000),
                            lips=RadNerfStage(steps=600, lr_grid=2e-3, lr_net=2e-4), torso=RadNerfStage(steps=4000),
                            checkpoint_every=500)
    return ExperimentConfig(name="cpu", model=model, trainer=trainer)


def _paper() -> ExperimentConfig:
    model = RadNerfConfig(
        head=HeadFieldConfig(spatial=GridEncoderConfig(n_levels=12, features_per_level=2, base_resolution=16,
                                                       max_resolution=2048),
                             audio_grid=GridEncoderConfig(n_levels=8, base_resolution=8, max_resolution=128),
                             view_degree=4),
        torso=TorsoFieldConfig(grid=GridEncoderConfig(n_levels=12, base_resolution=16, max_resolution=2048),
                               pose_frequencies=4),
        grid=OccupancyGridConfig(resolution=128, update_every=16),
    )
    trainer = RadNerfTrainerConfig(size=512, rays_per_batch=65536, frames_per_batch=8, head=RadNerfStage(steps=100_000),
                            lips=RadNerfStage(steps=25_000, lr_grid=2e-3, lr_net=2e-4),
                            torso=RadNerfStage(steps=100_000), lips_patch=64, checkpoint_every=5000)
    return ExperimentConfig(name="paper", model=model, trainer=trainer)


PRESETS = {"debug": _debug, "cpu": _cpu, "paper": _paper}
"""Preset name -> a function building its config."""
