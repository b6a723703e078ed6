"""Helpers shared by the avatar tests (not fixtures: those live in the conftest files)."""

from __future__ import annotations

from dataclasses import replace

from nerf.config import ExperimentConfig


def with_steps(cfg: ExperimentConfig, head: int, lips: int = 0, torso: int = 0) -> ExperimentConfig:
    """``cfg`` with these step counts for the stages head, lips and torso (0 skips a stage)."""
    tc = cfg.trainer
    return replace(cfg, trainer=replace(tc, head=replace(tc.head, steps=head), lips=replace(tc.lips, steps=lips),
                                        torso=replace(tc.torso, steps=torso)))
