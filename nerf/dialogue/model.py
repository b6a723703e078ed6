"""DialogueNeRF's avatar model: one RAD-NeRF head and torso for several people (paper IV-B).

* Each person is a pair of learnt codes (GRAF's split): the shape code enters the head's density and colour nets,
  the appearance code its colour net only; a third code conditions the torso's colour and pose-driven deformation.
  RAD-NeRF's per-frame latents stay beside them (slow appearance drift).
* The head's condition slot (RAD-NeRF's audio coordinate) is fed by the frame's role: a speaking frame by its audio
  features, a listening frame by the person's expression coefficients, each through its own projection, plus a
  role embedding (spec 4.7-2). The ambient loss keeps the speaker's condition on the mouth and lets the listener's
  reach the whole face.
* The motion forecasters (:mod:`nerf.dialogue.forecast`) are trained before the field (:meth:`Dialogue.prepare`)
  and kept in the checkpoint, so a render generates both people's head poses and the listener's expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nerf.config import ExperimentConfig
from nerf.data import NEAREST_LATENTS, IdentityFrames
from nerf.dialogue import motion
from nerf.dialogue.config import DialogueConfig
from nerf.dialogue.forecast import Forecaster, Sequences, train_forecaster
from nerf.fields import mlp
from nerf.model import Driving
from nerf.radnerf import steps
from nerf.radnerf.model import FrameConditions, RadNerf, _trainer
from nerf.rays import FrameStore
from nerf.rendering import gather

SPEAKING, EXPRESSION, HEAD_POSE, VOICE = "speaking", "expression", "head_pose", "voice"
"""The extra per-frame inputs (one row per frame): speaking (1/0) [N], the 57 ICT expression coefficients [N, 57],
the 6-D head pose (:mod:`workers.pose`) [N, 6], and the clip audio's (ZCR, RMS) [N, 2]."""
SHARED = ("head", "torso", "grid", "audio_proj", "expression_proj", "role_embedding")
"""State-dict prefixes of what every person shares (what a warm start carries over)."""


@dataclass
class DialogueConditions(FrameConditions):
    """RAD-NeRF's conditions plus each frame's person, role and expression."""

    person: Tensor | None = None
    """int64 [B]."""
    speaking: Tensor | None = None
    """[B] 1 speaking, 0 listening."""
    expression: Tensor | None = None
    """[B, E] normalised expression coefficients."""


class Dialogue(RadNerf):
    """Several people's heads and torsos in one network."""

    extra_inputs = (SPEAKING, EXPRESSION, HEAD_POSE, VOICE)
    several_people = True
    frame_person: Tensor
    frame_speaking: Tensor
    frame_expression: Tensor
    expression_mean: Tensor
    expression_scale: Tensor
    pose_means: Tensor
    pose_stats: Tensor
    """[P, 2, 6] each person's 6-D pose mean and spread (the pose forecaster's normalisation)."""
    expression_bounds: Tensor
    """[2, E] normalised low and high of the training frames' expressions (the rollout's safety net)."""
    pose_bounds: Tensor
    """[P, 2, 6] normalised low and high of each person's training poses, widened (the rollout's safety net)."""
    depth_bounds: Tensor
    """[P, 2] each person's near and far: a ray is sampled within its own person's."""

    def __init__(self, config: DialogueConfig, n_frames: int, image_size: int, near: float, far: float,
                 n_people: int):
        self.dialogue = config
        super().__init__(config, n_frames, image_size, near, far)
        c = config
        self.n_people = n_people
        self.head_latents = nn.Parameter(torch.zeros(n_frames, c.frame_latent_dim))
        self.torso_latents = nn.Parameter(torch.zeros(n_frames, c.torso_frame_dim))
        # small random codes: identical codes would give every person the same gradients at the start
        self.shape_codes = nn.Parameter(0.1 * torch.randn(n_people, c.shape_dim))
        self.appearance_codes = nn.Parameter(0.1 * torch.randn(n_people, c.appearance_dim))
        self.torso_codes = nn.Parameter(0.1 * torch.randn(n_people, c.torso_code_dim))
        a = self.head.audio_dim
        self.audio_proj = nn.Linear(a, a)
        self.expression_proj = mlp(c.expression_dim, a, c.expression_hidden, 2)
        self.role_embedding = nn.Embedding(2, a)
        nn.init.zeros_(self.role_embedding.weight)
        self.pose_forecaster = Forecaster(motion.POSE_COND, 6, c.pose_forecast).eval()
        self.expression_forecaster = Forecaster(motion.EXPRESSION_COND, c.expression_dim,
                                                c.expression_forecast).eval()
        self.register_buffer("frame_person", torch.zeros(n_frames, dtype=torch.long))
        self.register_buffer("frame_speaking", torch.zeros(n_frames))
        self.register_buffer("frame_expression", torch.zeros(n_frames, c.expression_dim))
        self.register_buffer("expression_mean", torch.zeros(c.expression_dim))
        self.register_buffer("expression_scale", torch.ones(c.expression_dim))
        self.register_buffer("pose_means", torch.zeros(n_people, 12))
        self.register_buffer("pose_stats", torch.zeros(n_people, 2, 6))
        self.register_buffer("pose_bounds", torch.zeros(n_people, 2, 6))
        self.register_buffer("expression_bounds", torch.zeros(2, c.expression_dim))
        self.register_buffer("depth_bounds", torch.tensor([[near, far]] * n_people))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # saved before it: the bounds the model was built with (the union, from the render kit)
        state_dict.setdefault(prefix + "depth_bounds", self.depth_bounds.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def ray_bounds(self, ray_frame: Tensor, cond: FrameConditions) -> tuple[Tensor, Tensor]:
        assert isinstance(cond, DialogueConditions) and cond.person is not None
        bounds = self.depth_bounds[cond.person[ray_frame]]  # [R, 2]
        return bounds[:, 0], bounds[:, 1]

    def head_density_latent(self, config: Any) -> int:
        return int(config.shape_dim + config.frame_latent_dim)

    def train(self, mode: bool = True) -> Dialogue:
        """As :meth:`torch.nn.Module.train`; the forecasters stay in evaluation mode (trained before, frozen)."""
        super().train(mode)
        self.pose_forecaster.eval()
        self.expression_forecaster.eval()
        return self

    # conditions ------------------------------------------------------------------------------------------
    def pack(self, person: Tensor, frame_head: Tensor, frame_torso: Tensor, pose: Tensor, audio: Tensor,
             eye: Tensor, speaking: Tensor, expression: Tensor, delta: Tensor | None) -> DialogueConditions:
        """Conditions from each row's person and per-frame latents: the head latent is [shape | frame |
        appearance], the torso's [torso code | frame]."""
        head = torch.cat([self.shape_codes[person], frame_head, self.appearance_codes[person]], -1)
        torso = torch.cat([self.torso_codes[person], frame_torso], -1)
        return DialogueConditions(audio, eye, pose, head, torso, delta, person, speaking, expression)

    def train_conditions(self, frames: Tensor, audio: Tensor, eye: Tensor, pose: Tensor) -> DialogueConditions:
        cond = super().train_conditions(frames, audio, eye, pose)
        return self.pack(self.frame_person[frames], cond.head_latent, cond.torso_latent, pose, audio, eye,
                         self.frame_speaking[frames], self.frame_expression[frames], cond.pose_delta)

    def person_rows(self, person: int) -> Tensor:
        """The training frames of ``person``."""
        n = int(self.n_train)
        return torch.nonzero(self.frame_person[:n] == person).flatten()

    def novel_conditions(self, audio: Tensor, eye: Tensor, pose: Tensor, latent_from: Tensor | None = None,
                         pose_from: Tensor | None = None, person: int | None = None, speaking: Tensor | None = None,
                         expression: Tensor | None = None) -> DialogueConditions:
        """As RAD-NeRF's, for ``person`` (default: the person of ``latent_from``'s first frame, else 0): latents
        and pose corrections from ``latent_from`` (default: that person's training frames), the role ``speaking``
        [B] (default: speaking) and the normalised ``expression`` [B, E] (default: zero, the training frames' mean)."""
        if person is None:
            person = int(self.frame_person[latent_from[0]]) if latent_from is not None and latent_from.numel() else 0
        if latent_from is None or latent_from.numel() == 0:
            latent_from = self.person_rows(person)
        if pose_from is None and self.config.pose_borrow == "mean":  # the person's mean correction, not everyone's
            pose_from = self.person_rows(person)
        cond = super().novel_conditions(audio, eye, pose, latent_from, pose_from)
        b = audio.shape[0]
        who = torch.full((b,), person, dtype=torch.long, device=audio.device)
        spk = torch.ones(b, device=audio.device) if speaking is None else speaking.to(audio.device).view(b)
        expr = torch.zeros(b, self.dialogue.expression_dim, device=audio.device) if expression is None \
            else expression.to(audio.device).view(b, -1)
        return self.pack(who, cond.head_latent, cond.torso_latent, pose, audio, eye, spk, expr, cond.pose_delta)

    def frame_conditions(self, store: FrameStore, frame: int, novel: bool | None = None,
                         audio_from: int | None = None, nearest: int = NEAREST_LATENTS) -> DialogueConditions:
        """A dataset frame under its own person, role and expression (as :func:`nerf.radnerf.steps.
        frame_conditions`: a held-out frame borrows the latents of its person's nearest training frames)."""
        fid = torch.tensor([frame], device=store.device)
        audio = store.audio[torch.tensor([frame if audio_from is None else audio_from], device=store.device)]
        if novel is None:
            novel = frame >= store.n_train
        if not novel:
            return self.train_conditions(fid, audio, store.eye[fid], store.poses[fid])
        near = (torch.from_numpy(store.data.nearest_train(frame, nearest)).to(store.device)
                if frame >= store.n_train else None)
        return self.novel_conditions(audio, store.eye[fid], store.poses[fid], near,
                                     person=int(self.frame_person[frame]), speaking=self.frame_speaking[fid],
                                     expression=self.frame_expression[fid])

    def head_features(self, cond: FrameConditions) -> Tensor:
        """The role-gated condition: speaking rows their projected audio features, listening rows their projected
        expression, each plus its role's embedding."""
        assert isinstance(cond, DialogueConditions) and cond.speaking is not None and cond.expression is not None
        audio = self.audio_proj(self.head.encode_audio(cond.audio))
        expr = self.expression_proj(cond.expression)
        spk = cond.speaking[:, None]
        role = self.role_embedding((cond.speaking > 0.5).long())
        return spk * audio + (1 - spk) * expr + role

    def density_latents(self, n: int) -> Tensor:
        rows = torch.arange(n, device=self.head_latents.device)
        p = self.frame_person[rows]
        return torch.cat([self.shape_codes[p], self.head_latents[rows], self.appearance_codes[p]], -1)

    @torch.no_grad()
    def update_grid(self, audio: Tensor, eye: Tensor, generator: torch.Generator) -> None:
        """RAD-NeRF's occupancy update over the training frames' own conditions (roles, people, latents)."""
        n = audio.shape[0]
        rows = torch.arange(n, device=audio.device)
        cond = self.train_conditions(rows, audio, eye, torch.eye(4, device=audio.device).expand(n, 4, 4))
        feats, latents = self.head_features(cond), cond.head_latent

        def density(x: Tensor) -> Tensor:
            pick = torch.randint(0, n, (x.shape[0],), generator=generator).to(x.device)
            return self.head.get_density(x, feats[pick], eye[pick], latents[pick])

        self.grid.update(density, generator)

    # rendering and losses --------------------------------------------------------------------------------------
    def render_torso(self, pixels: Tensor, ray_frame: Tensor, cond: FrameConditions) -> dict[str, Tensor]:
        """RAD-NeRF's torso, its pose input centred on each person's own mean pose."""
        assert isinstance(cond, DialogueConditions) and cond.person is not None
        uv = pixels / self.image_size * 2 - 1
        pose_in = cond.pose[:, :3, :4].reshape(-1, 12) - self.pose_means[cond.person]
        pose, latent = gather((pose_in, cond.torso_latent), ray_frame)
        return self.torso.get_outputs(uv, pose, latent)

    def get_outputs(self, origins: Tensor, directions: Tensor, pixels: Tensor, ray_frame: Tensor,
                    cond: FrameConditions, background: Tensor, with_torso: bool,
                    generator: torch.Generator | None = None, head_grad: bool = True) -> dict[str, Tensor]:
        out = super().get_outputs(origins, directions, pixels, ray_frame, cond, background, with_torso, generator,
                                  head_grad)
        assert isinstance(cond, DialogueConditions) and cond.speaking is not None
        out["speaking"] = cond.speaking[ray_frame] > 0.5
        return out

    def get_loss_dict(self, outputs: dict[str, Tensor], target: Tensor, face: Tensor, label: Tensor,
                      stage: str, mouth: Tensor | None = None) -> dict[str, Tensor]:
        """RAD-NeRF's losses; the ambient term's region is the mouth on speaking rays, the face on listening ones
        (a listener's expression moves brows, eyes and cheeks)."""
        if mouth is not None and "speaking" in outputs:
            mouth = torch.where(outputs["speaking"], mouth, face)
        return super().get_loss_dict(outputs, target, face, label, stage, mouth)

    def get_param_groups(self, stage: str) -> list[dict[str, Any]]:
        """RAD-NeRF's groups; the head's stages also train the codes and the condition projections, the torso
        stage the torso codes. The forecasters are frozen."""
        groups = super().get_param_groups(stage)
        net = next(g for g in groups if g["name"] == "net")
        extra = [self.torso_codes] if stage == "torso" else \
            [self.shape_codes, self.appearance_codes, *self.audio_proj.parameters(),
             *self.expression_proj.parameters(), *self.role_embedding.parameters()]
        net["params"] = list(net["params"]) + extra
        return groups

    # the method contract --------------------------------------------------------------------------------------
    @classmethod
    def for_training(cls, config: ExperimentConfig, data: IdentityFrames, store: FrameStore) -> Dialogue:
        mc = config.model
        assert isinstance(mc, DialogueConfig)
        model = cls(mc, data.n_frames, data.size, data.near, data.far, data.n_people)
        model.n_train.fill_(data.n_train)
        model.latent_pairs = torch.from_numpy(data.train_pairs())
        person = torch.from_numpy(data.person_of())
        model.frame_person.copy_(person)
        if data.depth_bounds is not None:
            model.depth_bounds.copy_(torch.from_numpy(data.depth_bounds))
        flat = torch.from_numpy(data.poses[:, :3, :4].reshape(-1, 12))
        n = data.n_train
        for k in range(data.n_people):
            rows = torch.nonzero(person[:n] == k).flatten()
            model.pose_means[k] = flat[rows].mean(0) if rows.numel() else flat[:n].mean(0)
        model.pose_mean.copy_(flat[:n].mean(0))
        if mc.head.audio_gate > 0:
            model.head.get_buffer("mouth_centre").copy_(store.mouth_point())
        model.with_torso = _trainer(config).torso.steps > 0
        return model

    @classmethod
    def for_rendering(cls, config: ExperimentConfig, kit: dict[str, Any], state: dict[str, Tensor]) -> Dialogue:
        mc = config.model
        assert isinstance(mc, DialogueConfig)
        model = cls(mc, int(state["head_latents"].shape[0]), int(kit["size"]), float(kit["near"]), float(kit["far"]),
                    int(state["shape_codes"].shape[0]))
        model.with_torso = _trainer(config).torso.steps > 0
        return model

    @classmethod
    def prepare(cls, config: ExperimentConfig, data: IdentityFrames, inputs: dict[str, np.ndarray],
                pretrained: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each frame's role and expression, and the two forecasters trained on the training frames' motion.

        Raises:
            ValueError: an input missing or not one row per frame, or no training sequence to forecast.
        """
        mc = config.model
        assert isinstance(mc, DialogueConfig)
        n_frames, n = data.n_frames, data.n_train
        want = {SPEAKING: (n_frames,), EXPRESSION: (n_frames, mc.expression_dim), HEAD_POSE: (n_frames, 6),
                VOICE: (n_frames, 2)}
        arr = {}
        for key, shape in want.items():
            x = np.asarray(inputs.get(key, np.zeros((0,))), np.float32)
            if x.shape != shape:
                raise ValueError(f"dialogue: input {key} of shape {list(x.shape)}, expected {list(shape)}")
            arr[key] = np.nan_to_num(x)
        person = data.person_of()
        expr = arr[EXPRESSION]
        e_mean, e_scale = expr[:n].mean(0), np.maximum(expr[:n].std(0), 1e-3)
        expr_n = (expr - e_mean) / e_scale
        stats = motion.pose_stats(arr[HEAD_POSE].astype(np.float64), person, np.arange(n), data.n_people)
        pose_n = ((arr[HEAD_POSE] - stats[person, 0]) / stats[person, 1]).astype(np.float32)
        voice = motion.clip_voice(data, arr[VOICE])
        runs = motion.tracks(data, np.arange(n))
        (pc, ps), (ec, es) = motion.sequences(data, runs, pose_n, expr_n, arr[SPEAKING], voice)
        with torch.random.fork_rng(devices=[]):
            pose_tcn = train_forecaster(Sequences(pc, ps), mc.pose_forecast, mc.pose_train, seed=config.trainer.seed)
            expr_tcn = train_forecaster(Sequences(ec, es), mc.expression_forecast, mc.expression_train,
                                        seed=config.trainer.seed + 1)
        bounds = np.zeros((data.n_people, 2, 6), np.float32)
        for k in range(data.n_people):
            x = pose_n[:n][person[:n] == k]
            lo, hi = (x.min(0), x.max(0)) if len(x) else (np.full(6, -1.0), np.full(6, 1.0))
            bounds[k] = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
        e_lo, e_hi = expr_n[:n].min(0), expr_n[:n].max(0)
        out = dict(pretrained)
        out.update({f"pose_forecaster.{k}": v for k, v in pose_tcn.state_dict().items()})
        out.update({f"expression_forecaster.{k}": v for k, v in expr_tcn.state_dict().items()})
        t = torch.from_numpy
        out.update(frame_speaking=t(arr[SPEAKING]), frame_expression=t(expr_n.astype(np.float32)),
                   expression_mean=t(e_mean), expression_scale=t(e_scale), pose_stats=t(stats),
                   pose_bounds=t(bounds), expression_bounds=t(np.stack([e_lo, e_hi]).astype(np.float32)))
        return out

    def evaluation_groups(self, data: IdentityFrames) -> dict[str, np.ndarray]:
        """Speaker and listener frames (Table III's columns), and each person's frames."""
        speaking = self.frame_speaking.cpu().numpy() > 0.5
        person = self.frame_person.cpu().numpy()
        people = data.people or (data.identity,)
        return {"speaker": speaking, "listener": ~speaking, **{name: person == k for k, name in enumerate(people)}}

    @classmethod
    def shared_weights(cls, state: dict[str, Tensor], n_people: int, seed: int = 0) -> dict[str, Tensor]:
        """The part of a trained model's ``state`` another set of people starts from (:attr:`DialogueConfig.
        warm_start`): the fields, occupancy grid and condition projections as they are, and ``n_people`` codes at
        the mean of its people's codes (plus a small seeded spread, so the new people can part). Per-frame and
        per-person state (latents, pose statistics) and the forecasters are left to the new model.

        Raises:
            ValueError: not a dialogue model's state.
        """
        if "shape_codes" not in state:
            raise ValueError("warm start: not the state of a dialogue model (no shape_codes)")
        g = torch.Generator().manual_seed(seed)
        out = {k: v for k, v in state.items() if k.split(".", 1)[0] in SHARED}
        for key in ("shape_codes", "appearance_codes", "torso_codes"):
            mean = state[key].float().mean(0, keepdim=True)
            out[key] = mean.expand(n_people, -1) + 0.01 * torch.randn(n_people, mean.shape[1], generator=g)
        return out

    def driving_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """``expression`` [T, E] raw coefficients (a real listener track) -> normalised ``expression``."""
        unknown = sorted(set(inputs) - {EXPRESSION})
        if unknown:
            raise ValueError(f"dialogue takes {EXPRESSION} as driving input, not {unknown}")
        if EXPRESSION not in inputs:
            return {}
        e = torch.as_tensor(np.asarray(inputs[EXPRESSION], np.float32), device=self.expression_mean.device)
        if e.ndim != 2 or e.shape[1] != self.dialogue.expression_dim or e.shape[0] == 0:
            raise ValueError(f"expression is {list(e.shape)}; the model takes [T>0, {self.dialogue.expression_dim}]")
        return {"expression": (e - self.expression_mean) / self.expression_scale}

    def render_view(self, origins: Tensor, directions: Tensor, pixels: Tensor, background: Tensor,
                    drive: Driving, size: int, chunk: int | None = None) -> Tensor:
        """A frame of new input; ``drive.extra`` holds ``person`` [1] (default 0), ``speaking`` [1] (default 1) and
        ``expression`` [1, E] normalised (default: zero, the training frames' mean)."""
        if drive.audio is None:
            raise ValueError("dialogue renders from audio: the driving frame has none")
        ex = drive.extra
        person = int(ex["person"].flatten()[0]) if "person" in ex else 0
        if not 0 <= person < self.n_people:
            raise ValueError(f"dialogue: person {person} is not one of the model's {self.n_people}")
        cond = self.novel_conditions(drive.audio, drive.eye, drive.pose, drive.source_frame, drive.source_frame,
                                     person=person, speaking=ex.get("speaking"), expression=ex.get("expression"))
        return steps.render_image(self, origins, directions, pixels, cond, background, self.with_torso, size, chunk)
