"""RAD-NeRF's training step (every loss of its stages), its rendering of dataset frames and new views, and its head
pose corrections (rays of a corrected pose, test-time alignment)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nerf.data import NEAREST_LATENTS
from nerf.model import PoseAlignment, StepContext, TrainOutputs
from nerf.rays import FrameStore, RayBatch
from nerf.rendering import gather
from nerf.rendering import render_image as render_chunks
from pipelines.schema import HEAD

if TYPE_CHECKING:
    from nerf.radnerf.model import FrameConditions, RadNerf


def batch_conditions(model: RadNerf, store: FrameStore, batch: RayBatch) -> tuple[FrameConditions, Tensor]:
    """Conditions of the unique frames of a batch and each ray's row in them (grouped on the host when the batch
    has its frames there: a ``unique`` on the GPU waits for the device)."""
    frames = batch.frame if batch.frame_host is None else batch.frame_host
    uniq, inverse = torch.unique(frames, return_inverse=True)
    uniq, inverse = uniq.to(store.device), inverse.to(store.device)
    cond = model.train_conditions(uniq, store.audio[uniq], store.eye[uniq], store.poses[uniq])
    return cond, inverse


def train_step(model: RadNerf, ctx: StepContext) -> TrainOutputs:
    """One step's losses: the photometric and regularising losses of a random ray batch, the latents' and pose
    corrections' smoothness, the planes' total variation and, in the lips stage, LPIPS and MSE on a lip patch."""
    stage, g, store = ctx.stage, ctx.generator, ctx.store
    w = model.config.losses
    batch = ctx.sample(head_only=stage != "torso")
    cond, ray_frame = batch_conditions(model, store, batch)
    out = model.get_outputs(batch.origins, batch.directions, batch.pixels, ray_frame, cond, batch.background,
                            with_torso=stage == "torso", generator=g, head_grad=stage != "torso")
    losses = model.get_loss_dict(out, batch.rgb, batch.face, batch.label, stage, batch.mouth)
    if w.latent_smooth:
        losses["latent_smooth"] = model.latent_loss(stage, model.latent_pairs)
    if w.pose_smooth and model.pose_deltas is not None and stage != "torso":
        losses["pose_smooth"] = model.pose_loss(model.latent_pairs)
    if w.grid_tv and stage != "torso":
        losses["grid_tv"] = model.grid_loss()
    samples = int(out["n_samples"])
    if stage == "lips":
        if ctx.lpips is None:
            raise ValueError("the lips stage needs an LPIPS module")
        p = ctx.config.trainer.lips_patch  # type: ignore[attr-defined]  # a RadNerfTrainerConfig
        rays, target = store.lips_patch(g, p)
        pcond, pframe = batch_conditions(model, store, rays)
        pout = model.get_outputs(rays.origins, rays.directions, rays.pixels, pframe, pcond, rays.background,
                                 with_torso=False, generator=g)
        pred = pout["rgb"].view(p, p, 3).permute(2, 0, 1)[None]
        losses["lips_lpips"] = w.lips_lpips * ctx.lpips(pred, target.permute(2, 0, 1)[None]).mean()
        losses["lips_mse"] = w.lips_mse * torch.mean((pout["rgb"] - rays.rgb) ** 2)
        samples += int(pout["n_samples"])
    return TrainOutputs(losses=losses, samples=samples, rays=batch, rgb=out["rgb"])


@torch.no_grad()
def render_image(model: RadNerf, origins: Tensor, directions: Tensor, pixels: Tensor, cond: FrameConditions,
                 background: Tensor, with_torso: bool, size: int, chunk: int | None = None) -> Tensor:
    """Every ray of one frame (``cond`` has one row), in chunks: [S, S, 3] in [0, 1] with the model's current
    weights (a caller wanting the EMA weights applies them around it)."""
    def rows(sl: slice) -> Tensor:
        fr = torch.zeros(origins[sl].shape[0], dtype=torch.long, device=origins.device)
        return model.get_outputs(origins[sl], directions[sl], pixels[sl], fr, cond, background[sl],
                                 with_torso=with_torso, generator=None)["rgb"]

    return render_chunks(rows, origins.shape[0], size, origins.device, chunk)


def frame_conditions(model: RadNerf, store: FrameStore, frame: int, novel: bool | None = None,
                     audio_from: int | None = None, nearest: int = NEAREST_LATENTS) -> FrameConditions:
    """One dataset frame's conditions as :func:`render_frame` renders it (held-out frames borrow latents)."""
    fid = torch.tensor([frame], device=store.device)
    audio = store.audio[torch.tensor([frame if audio_from is None else audio_from], device=store.device)]
    if novel is None:
        novel = frame >= store.n_train
    if novel:
        near = (torch.from_numpy(store.data.nearest_train(frame, nearest)).to(store.device)
                if frame >= store.n_train else None)
        return model.novel_conditions(audio, store.eye[fid], store.poses[fid], near)
    return model.train_conditions(fid, audio, store.eye[fid], store.poses[fid])


@torch.no_grad()
def render_frame(model: RadNerf, store: FrameStore, frame: int, with_torso: bool, chunk: int | None = None,
                 novel: bool | None = None, head_only: bool = False, audio_from: int | None = None,
                 pose_delta: Tensor | None = None, nearest: int = NEAREST_LATENTS) -> Tensor:
    """Render one dataset frame under its own pose, audio and eye.

    Args:
        with_torso: render the torso (the trainer says whether it has been trained).
        novel: render without the frame's own latent (default: for held-out frames, which have none). A held-out
            frame takes the latents of the training frames nearest it in time
            (:meth:`nerf.data.IdentityFrames.nearest_train`); a training frame rendered as novel takes the mean.
        head_only: the head over the ground truth's torso and background (the head stage's target) instead of the
            full model.
        audio_from: another frame whose audio drives it (everything else stays ``frame``'s): what the audio alone
            changes.
        pose_delta: [6] a rigid correction of the head pose (:func:`correct_rays`) instead of the model's own (none,
            or the learned one with :attr:`nerf.radnerf.config.RadNerfConfig.pose_refine`), e.g. from
            :func:`align_pose`.
        nearest: how many nearest training frames' latents a held-out frame averages.

    Returns:
        [S, S, 3] float in [0, 1].
    """
    rays = store.frame_rays(frame, head_only=head_only)
    cond = model.frame_conditions(store, frame, novel, audio_from, nearest)
    if pose_delta is not None:
        cond.pose_delta = pose_delta.detach().view(1, 6).to(store.device)
    return render_image(model, rays.origins, rays.directions, rays.pixels, cond, rays.background,
                        with_torso=with_torso and not head_only, size=store.size, chunk=chunk)


def align_pose(model: RadNerf, store: FrameStore, frame: int, steps: int = 60, n_rays: int = 4096,
               lr: float = 2e-3, margin: int = 8, seed: int = 0) -> PoseAlignment:
    """Fit a rigid correction of one frame's head pose to its own image, the field frozen (test-time pose
    alignment, as BARF evaluates): how much of a frame's error is the tracked pose's rather than the model's.

    The correction (axis-angle and translation, :func:`correct_rays`) starts at the model's own (zero, or the
    learned or borrowed one with :attr:`nerf.radnerf.config.RadNerfConfig.pose_refine`) and takes ``steps`` Adam
    steps on the photometric error of the head over the ground truth's torso and background (the head stage's
    target), on ``n_rays`` random pixels per step from the head's box (its parsing label, ``margin`` pixels wider) in
    the ground truth. The caller applies the weights to use (the trainer: the averaged ones).

    Returns:
        the :class:`PoseAlignment`; render with it through ``render_frame(..., pose_delta=alignment.delta)``.
    """
    rays = store.frame_rays(frame, head_only=True)
    size = store.size
    head = (rays.label == HEAD).view(size, size)
    region = torch.arange(rays.label.shape[0], device=store.device)
    if bool(head.any()):
        ys, xs = torch.nonzero(head, as_tuple=True)
        y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin, size - 1)
        x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin, size - 1)
        py, px = region // size, region % size
        region = region[(py >= y0) & (py <= y1) & (px >= x0) & (px <= x1)]
    g = torch.Generator().manual_seed(seed)
    cond = model.frame_conditions(store, frame)
    start = (cond.pose_delta.detach().clone() if cond.pose_delta is not None
             else torch.zeros(1, 6, device=store.device))
    delta = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        pick = region[torch.randint(0, region.shape[0], (n_rays,), generator=g).to(store.device)]
        cond.pose_delta = delta.expand(1, 6)
        fr = torch.zeros(pick.shape[0], dtype=torch.long, device=store.device)
        with torch.enable_grad():
            out = model.get_outputs(rays.origins[pick], rays.directions[pick], rays.pixels[pick], fr, cond,
                                    rays.background[pick], with_torso=False, generator=None)
            loss = ((out["rgb"] - rays.rgb[pick]) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, [delta])  # the field's own parameters get no gradient
        opt.zero_grad()
        delta.grad = grad
        opt.step()
    change = (delta.detach() - start)[0]
    return PoseAlignment(delta=delta.detach()[0], degrees=float(torch.rad2deg(change[:3].norm())),
                         millimetres=float(change[3:].norm() * 1000))


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
