"""JEAN's avatar model: RAD-NeRF's head and torso, the head conditioned on [audio code, expression code] (JEAN 3.3).

The head field is RAD-NeRF's (:class:`nerf.radnerf.fields.HeadField`); what changes is what conditions it:

* audio: a registered ``audio-lip`` encoder (the contrastive AE of JEAN 3.1), fine-tuned at ``lr_audio`` (5e-6);
* expression: each frame's e_e from the identity's expression transformer (JEAN 3.2), trained before the field
  (:meth:`Jean.prepare`) and kept in the checkpoint, so that a new expression source can be encoded at render time.
  It is fed where RAD-NeRF feeds its per-frame latent (density and colour nets); JEAN has no per-frame latent, so
  nothing else can carry a frame's expression. The torso keeps RAD-NeRF's per-frame latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.audio_lip.models import AudioLipConfig, AudioLipEncoder
from nerf.config import ExperimentConfig
from nerf.data import NEAREST_LATENTS, IdentityFrames
from nerf.fields import mlp
from nerf.jean.config import JeanConfig
from nerf.jean.expression import ExpressionTransformer
from nerf.jean.expression_train import train_expression
from nerf.jean.face_crops import FaceCropEncoder, train_crop_encoder
from nerf.model import Driving
from nerf.radnerf import steps
from nerf.radnerf.model import FrameConditions, RadNerf
from nerf.rays import FrameStore

EXPRESSION = "expression_features"
"""The extra per-frame input: the recipe's expression features (:attr:`JeanConfig.features`), [N, F]."""
AUDIO_KEY = "head.audio_net."


class Jean(RadNerf):
    """One identity's head (audio code + expression code) and torso."""

    extra_inputs = (EXPRESSION,)
    expression_inputs: Tensor
    """[n_frames, D] what :attr:`expression_head` turns into each frame's e_e: the transformer's codes (D = 64), or
    the normalised features in the ``features`` mode."""
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, config: JeanConfig, n_frames: int, image_size: int, near: float, far: float):
        self.jean = config
        if not config.ssl_audio:  # RAD-NeRF's own audio net; the registered encoder only anchors the transformer
            config = replace(config, head=replace(config.head, audio=replace(config.head.audio, source="")))
        super().__init__(config, n_frames, image_size, near, far)
        ec = config.expression
        if config.expression_mode == "transformer":
            self.expression: ExpressionTransformer | None = ExpressionTransformer(ec).eval()  # frozen (see train)
            self.expression_head: nn.Module = nn.Identity()
            width = ec.part
        else:  # the ablation without the transformer: a thin MLP on the features, trained with the field
            self.expression = None
            self.expression_head = mlp(ec.features, ec.part, config.thin_hidden, 2)
            width = ec.features
        # ``crop`` features: the self-supervised crop encoder, trained in prepare and frozen like the transformer
        self.crop_encoder = FaceCropEncoder(config.crop_encoder.width).eval() if config.features == "crop" else None
        self.register_buffer("expression_inputs", torch.zeros(n_frames, width))
        self.register_buffer("feature_mean", torch.zeros(ec.features))
        self.register_buffer("feature_scale", torch.ones(ec.features))

    def train(self, mode: bool = True) -> Jean:
        """As :meth:`torch.nn.Module.train`, but the expression transformer (and the crop encoder) stay in evaluation
        mode: they are trained before the field and frozen, and dropout must not move a new source's codes."""
        super().train(mode)
        for frozen in (self.expression, self.crop_encoder):
            if frozen is not None:
                frozen.eval()
        return self

    # conditions ------------------------------------------------------------------------------------------
    def expression_of(self, frames: Tensor) -> Tensor:
        """e_e [B, 64] of dataset frames [B]."""
        return self.expression_head(self.expression_inputs.index_select(0, frames))

    def train_conditions(self, frames: Tensor, audio: Tensor, eye: Tensor, pose: Tensor) -> FrameConditions:
        cond = super().train_conditions(frames, audio, eye, pose)
        cond.head_latent = self.expression_of(frames)
        return cond

    def novel_conditions(self, audio: Tensor, eye: Tensor, pose: Tensor, latent_from: Tensor | None = None,
                         pose_from: Tensor | None = None) -> FrameConditions:
        """As RAD-NeRF's, with the mean e_e of the frames ``latent_from`` (default: of the training frames); a
        caller with an expression of its own sets ``head_latent`` after."""
        cond = super().novel_conditions(audio, eye, pose, latent_from, pose_from)
        n = max(int(self.n_train), 1)
        rows = torch.arange(n, device=audio.device) if latent_from is None or latent_from.numel() == 0 \
            else latent_from
        cond.head_latent = self.expression_of(rows).mean(0, keepdim=True).expand(audio.shape[0], -1)
        return cond

    def frame_conditions(self, store: FrameStore, frame: int, novel: bool | None = None,
                         audio_from: int | None = None, nearest: int = NEAREST_LATENTS,
                         expression_from: int | None = None) -> FrameConditions:
        """A dataset frame under its own expression code (or ``expression_from``'s), held-out frames too: the frame
        is its own expression source (its torso latent is borrowed as RAD-NeRF's is)."""
        cond = super().frame_conditions(store, frame, novel, audio_from, nearest)
        source = frame if expression_from is None else expression_from
        cond.head_latent = self.expression_of(torch.tensor([source], device=store.device))
        return cond

    def density_latents(self, n: int) -> Tensor:
        return self.expression_of(torch.arange(n, device=self.expression_inputs.device))

    # training ----------------------------------------------------------------------------------------------
    def get_param_groups(self, stage: str) -> list[dict[str, Any]]:
        """RAD-NeRF's groups; the thin MLP of the ``features`` mode trains with the head's nets."""
        groups = super().get_param_groups(stage)
        thin = list(self.expression_head.parameters())
        if thin and stage != "torso":
            net = next(g for g in groups if g["name"] == "net")
            net["params"] = list(net["params"]) + thin
        return groups

    @classmethod
    def prepare(cls, config: ExperimentConfig, data: IdentityFrames, inputs: dict[str, np.ndarray],
                pretrained: dict[str, Tensor]) -> dict[str, Tensor]:
        """Train the identity's expression transformer on its training frames (audio codes from the registered
        encoder in ``pretrained``) and encode every frame: the field's starting weights with the transformer,
        each frame's code and the features' normalisation.

        Raises:
            ValueError: no registered audio encoder in ``pretrained``, or features not one row per frame.
        """
        mc = config.model
        assert isinstance(mc, JeanConfig)
        feats = np.asarray(inputs.get(EXPRESSION, np.zeros((0, 0))), np.float32)
        if feats.shape != (data.n_frames, mc.input_width):
            raise ValueError(f"jean: expression features of shape {list(feats.shape)}, expected "
                             f"[{data.n_frames}, {mc.input_width}] (one row of {mc.features} features "
                             "per frame)")
        enc_state = {k[len(AUDIO_KEY):]: v for k, v in pretrained.items() if k.startswith(AUDIO_KEY)}
        if not enc_state:
            raise ValueError("jean: no audio-lip encoder to anchor the expression transformer on; name a registered "
                             "version in model.head.audio.source (--audio-source models:/audio-lip@champion)")
        n = data.n_train
        clip_of_row = np.unique(np.asarray(data.clip_ids), return_inverse=True)[1].astype(np.int64)
        out = {k: v for k, v in pretrained.items() if mc.ssl_audio or not k.startswith(AUDIO_KEY)}
        if mc.features == "crop":  # the crops' own encoder first, on the training frames
            with torch.random.fork_rng(devices=[]):
                crop_enc = train_crop_encoder(feats[:n], mc.crop_encoder, seed=config.trainer.seed)
            out.update({f"crop_encoder.{k}": v for k, v in crop_enc.state_dict().items()})
            feats = crop_enc.encode(feats).numpy()
        x = torch.from_numpy(feats)
        mean, scale = x[:n].mean(0), x[:n].std(0).clamp_min(1e-4)
        out["feature_mean"], out["feature_scale"] = mean, scale
        if mc.expression_mode == "features":
            out["expression_inputs"] = (x - mean) / scale
            return out
        codes = unit_audio_codes(enc_state, data.audio, mc.head.audio.n_mels, mc.head.audio.window)
        with torch.random.fork_rng(devices=[]):
            tr = train_expression(feats[:n], codes[:n], clip_of_row[:n], mc.expression, mc.expression_train,
                                  seed=config.trainer.seed)
        out.update({f"expression.{k}": v for k, v in tr.state_dict().items()})
        out["expression_inputs"] = tr.expression_codes(x, torch.from_numpy(clip_of_row))
        return out

    # rendering -------------------------------------------------------------------------------------------------
    def driving_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """``expression_features`` [T, F] of an expression source (one clip, in order) -> ``expression`` [T, D]."""
        unknown = sorted(set(inputs) - {EXPRESSION})
        if unknown:
            raise ValueError(f"jean takes {EXPRESSION} as driving input, not {unknown}")
        if EXPRESSION not in inputs:
            return {}
        f = torch.as_tensor(np.asarray(inputs[EXPRESSION], np.float32), device=self.feature_mean.device)
        want = self.jean.input_width
        if f.ndim != 2 or f.shape[1] != want or f.shape[0] == 0:
            raise ValueError(f"expression features are {list(f.shape)}; the model takes [T>0, {want}] "
                             f"({self.jean.features})")
        with torch.no_grad():
            if self.crop_encoder is not None:
                f = self.crop_encoder.encode(f)
            if self.expression is not None:
                return {"expression": self.expression.expression_codes(f)}
            return {"expression": (f - self.feature_mean) / self.feature_scale}

    def render_frame(self, store: FrameStore, frame: int, reached: Sequence[str], chunk: int | None = None,
                     novel: bool | None = None, head_only: bool = False, audio_from: int | None = None,
                     pose_delta: Tensor | None = None, nearest: int = NEAREST_LATENTS,
                     expression_from: int | None = None, **options: Any) -> Tensor:
        """One dataset frame, as RAD-NeRF's (:func:`nerf.radnerf.steps.render_frame`), plus ``expression_from``:
        another frame whose expression code it takes (cross-driving on dataset frames: the pose and eyes stay
        ``frame``'s, ``audio_from`` picks the audio)."""
        if expression_from is None:
            return super().render_frame(store, frame, reached, chunk, novel=novel, head_only=head_only,
                                        audio_from=audio_from, pose_delta=pose_delta, nearest=nearest, **options)
        if options:
            raise TypeError(f"jean render_frame: unknown options {sorted(options)}")
        rays = store.frame_rays(frame, head_only=head_only)
        cond = self.frame_conditions(store, frame, novel, audio_from, nearest, expression_from)
        if pose_delta is not None:
            cond.pose_delta = pose_delta.detach().view(1, 6).to(store.device)
        torso = not head_only and "torso" in reached and self.with_torso
        return steps.render_image(self, rays.origins, rays.directions, rays.pixels, cond, rays.background, torso,
                                  store.size, chunk)

    def render_view(self, origins: Tensor, directions: Tensor, pixels: Tensor, background: Tensor,
                    drive: Driving, size: int, chunk: int | None = None) -> Tensor:
        if drive.audio is None:
            raise ValueError("jean renders from audio: the driving frame has none")
        cond = self.novel_conditions(drive.audio, drive.eye, drive.pose, drive.source_frame, drive.source_frame)
        given = drive.extra.get("expression")
        if given is not None:
            cond.head_latent = self.expression_head(given.to(self.expression_inputs).view(1, -1))
        return steps.render_image(self, origins, directions, pixels, cond, background, self.with_torso, size, chunk)


@torch.no_grad()
def unit_audio_codes(state: dict[str, Tensor], mel: np.ndarray, n_mels: int, window: int,
                     batch: int = 1024) -> np.ndarray:
    """The audio-lip encoder of ``state`` on mel windows [N, window, n_mels] -> unit codes [N, 64] (float32)."""
    enc = AudioLipEncoder(AudioLipConfig(n_mels=n_mels, window=window))
    enc.load_state_dict(state)
    enc.eval()
    m = torch.as_tensor(np.asarray(mel, np.float32))
    out = [F.normalize(enc(m[k:k + batch]), dim=-1) for k in range(0, len(m), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, enc.out_dim), np.float32)
