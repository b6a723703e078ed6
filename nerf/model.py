"""The contract of a method's model (after nerfstudio's ``Model``): everything the :class:`nerf.trainer.Trainer`,
evaluation and the render loop ask of a method, so that none of them knows a method's names.

A model owns its fields, its outputs for a batch of rays, every one of its losses (sampling its own batches from
the identity's frames), its parameter groups per stage and its per-step callbacks (occupancy-grid updates).
The trainer owns stages, optimisers, schedulers, EMA, seeding and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from nerf.config import ExperimentConfig
from nerf.data import IdentityFrames
from nerf.rays import ErrorMap, FrameStore, RayBatch


@dataclass
class StepContext:
    """What a model sees of one training step."""

    config: ExperimentConfig
    stage: str
    stage_step: int
    """Steps of the stage done before this one."""
    global_step: int
    """Steps done before this one."""
    generator: torch.Generator
    """The trainer's seeded generator: every random draw of training comes from it, in a fixed order."""
    store: FrameStore
    error_map: ErrorMap | None = None
    lpips: nn.Module | None = None
    """Perceptual loss ``pred, target [B, 3, H, W]`` in [0, 1] -> ``[B]``, when the model asked for one
    (:meth:`AvatarModel.needs_lpips`)."""

    def sample(self, **kwargs: Any) -> RayBatch:
        """Random rays of random training frames as the trainer config says (rays, frames, face share, error map);
        ``kwargs`` go to :meth:`nerf.rays.FrameStore.sample` (e.g. ``head_only``)."""
        tc = self.config.trainer
        return self.store.sample(tc.rays_per_batch, tc.frames_per_batch, self.generator,
                                 face_fraction=tc.face_fraction, error_map=self.error_map,
                                 error_fraction=tc.error_fraction, **kwargs)


@dataclass
class TrainOutputs:
    """One step's losses (each weighted; the trainer sums them in order) and what the trainer records."""

    losses: dict[str, Tensor]
    samples: int = 0
    """Field samples evaluated (for throughput)."""
    rays: RayBatch | None = None
    """The step's random ray batch, with :attr:`rgb`: the error map is updated from them."""
    rgb: Tensor | None = None
    """[R] predicted colours of :attr:`rays`."""


@dataclass
class TrainingCallback:
    """A function called at every step (it decides itself whether to act, from the context)."""

    fn: Callable[[StepContext], None]
    where: Literal["before_step", "after_step"] = "before_step"


@dataclass
class Driving:
    """What drives one rendered frame of new input."""

    pose: Tensor
    """[1, 4, 4] camera-to-world."""
    eye: Tensor
    """[1] eye openness."""
    audio: Tensor | None = None
    """[1, window, n_mels] log-mel window (None for a method without audio)."""
    source_frame: Tensor | None = None
    """int64 [1]: the training frame whose pose this is (a method may borrow its appearance from it), or None."""
    extra: dict[str, Tensor] = field(default_factory=dict)
    """Method-specific conditions (e.g. an expression code)."""


@dataclass
class PoseAlignment:
    """A frame's head pose aligned to its image (:meth:`AvatarModel.align_pose`)."""

    delta: Tensor
    """[6] the correction to render with (axis-angle radians, then metres)."""
    degrees: float
    """Rotation the alignment added to the model's own correction."""
    millimetres: float
    """Translation it added."""


class AvatarModel(nn.Module):
    """Base class of a method's model. Subclasses implement every method that raises :class:`NotImplementedError`
    here; those with a default may be kept."""

    audio_shape: tuple[int, int] | None = None
    """(window, n_mels) of the audio features the model is driven by; None: it takes no audio."""
    audio_net_key: str | None = None
    """State-dict prefix of the audio net a learnt ``audio-lip`` encoder replaces (``model.head.audio.source``)."""
    extra_inputs: tuple[str, ...] = ()
    """Per-frame inputs beyond :class:`nerf.data.IdentityFrames` that the caller reads from the dataset, aligned to
    the frames, and hands to :meth:`prepare` (e.g. ``expression_features``; the caller knows how to read each)."""

    several_people: bool = False
    """The model trains on several identities at once (:func:`nerf.data.merge_people`): a job's identity names a
    conversation, or identities joined by ``+`` (DialogueNeRF)."""

    # building ----------------------------------------------------------------------------------------------------
    @classmethod
    def for_training(cls, config: ExperimentConfig, data: IdentityFrames, store: FrameStore) -> AvatarModel:
        """A fresh model for an identity's frames (built on the CPU under the trainer's seed, then moved)."""
        raise NotImplementedError

    @classmethod
    def for_rendering(cls, config: ExperimentConfig, kit: dict[str, Any], state: dict[str, Tensor]) -> AvatarModel:
        """An empty model shaped to load ``state`` (a checkpoint's weights), for rendering with ``kit``
        (:func:`nerf.checkpoint.render_kit`)."""
        raise NotImplementedError

    @classmethod
    def prepare(cls, config: ExperimentConfig, data: IdentityFrames, inputs: dict[str, np.ndarray],
                pretrained: dict[str, Tensor]) -> dict[str, Tensor]:
        """Parts trained before the field from the :attr:`extra_inputs` (``inputs``, one row per frame of ``data``)
        and the ``pretrained`` weights (e.g. JEAN's per-identity expression transformer): the weights the new model
        starts from (default: ``pretrained`` as it is). Not called when a checkpoint is resumed."""
        return pretrained

    def driving_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """Per-frame :attr:`Driving.extra` conditions ([T, ...] each) from raw per-frame inputs of a driving source
        (e.g. an expression video's features, ``expression_features`` [T, F]).

        Raises:
            ValueError: inputs the method does not take, or of the wrong shape.
        """
        if inputs:
            raise ValueError(f"{type(self).__name__} takes no driving inputs (got {sorted(inputs)})")
        return {}

    @classmethod
    def needs_lpips(cls, config: ExperimentConfig) -> bool:
        """Whether training with ``config`` needs a perceptual loss module (:attr:`StepContext.lpips`)."""
        return False

    # training ----------------------------------------------------------------------------------------------------
    def get_param_groups(self, stage: str) -> list[dict[str, Any]]:
        """The stage's parameter groups, in a fixed order: dicts with ``name`` (its learning rate is the stage
        config's ``lr_<name>``), ``params`` and optional Adam options (``eps``, ``weight_decay``). A group with no
        parameters is left out."""
        raise NotImplementedError

    def get_training_callbacks(self) -> list[TrainingCallback]:
        """Functions the trainer calls at every step (e.g. an occupancy-grid update before it)."""
        return []

    def get_train_loss_dict(self, ctx: StepContext) -> TrainOutputs:
        """One step's batch (drawn from ``ctx.generator``), outputs and every weighted loss of the stage."""
        raise NotImplementedError

    # evaluation and rendering ------------------------------------------------------------------------------------
    def render_frame(self, store: FrameStore, frame: int, reached: Sequence[str], chunk: int | None = None,
                     **options: Any) -> Tensor:
        """Render one dataset frame under its own conditions: [S, S, 3] in [0, 1].

        Args:
            store: the identity's frames.
            frame: frame id (held-out frames have no per-frame parameters of their own).
            reached: the stages training has begun (a later stage's parts are left out before it).
            chunk: rays per forward pass (default: :func:`nerf.rendering.default_chunk`).
            options: method-specific (RAD-NeRF: ``novel``, ``head_only``, ``audio_from``, ``pose_delta``).
        """
        raise NotImplementedError

    def evaluation_groups(self, data: IdentityFrames) -> dict[str, np.ndarray]:
        """Named groups of frames (bool [N] each) whose metrics an evaluation also reports apart (e.g. DialogueNeRF's
        speaker and listener frames, and each person's); none by default."""
        return {}

    def validation_options(self, reached: Sequence[str]) -> dict[str, Any]:
        """:meth:`render_frame` options under which a model trained up to the stages ``reached`` is compared with
        its frames during training (e.g. the parts trained so far over the ground truth's other parts)."""
        return {}

    def render_view(self, origins: Tensor, directions: Tensor, pixels: Tensor, background: Tensor,
                    drive: Driving, size: int, chunk: int | None = None) -> Tensor:
        """Render a frame of new input: rays [S*S, 3] and their pixel positions at the training size [S*S, 2],
        the background behind them [S*S, 3], under ``drive``: [size, size, 3] in [0, 1]."""
        raise NotImplementedError

    def align_pose(self, store: FrameStore, frame: int, **options: Any) -> PoseAlignment:
        """Fit a rigid correction of a frame's pose to its image, the model frozen (test-time pose alignment); a
        method that has it renders a frame under the correction with ``render_frame(..., pose_delta=delta)``.

        Raises:
            NotImplementedError: the method has no pose correction.
        """
        raise NotImplementedError(f"{type(self).__name__} has no test-time pose alignment")
