"""Rays of an identity's frames: a frame store on the training device, the random batches and lip patches drawn
from it, and the error map that steers them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nerf.data import IdentityFrames
from pipelines.schema import HEAD, NECK, TORSO


@dataclass
class RayBatch:
    """Rays of a few frames with their targets; every tensor is on the training device."""

    frame: Tensor
    """int64 [R] frame id of each ray."""
    origins: Tensor
    """[R, 3] world."""
    directions: Tensor
    """[R, 3] world, unit length."""
    rgb: Tensor
    """[R, 3] target colour in [0, 1]."""
    background: Tensor
    """[R, 3] colour behind the head (the background, or the torso where the head stage learns the head only)."""
    face: Tensor
    """bool [R] the ray's pixel is inside the face rectangle."""
    mouth: Tensor
    """bool [R] the ray's pixel is inside the mouth region (:func:`mouth_rect`: the lips and the jaw around them)."""
    pixels: Tensor
    """[R, 2] pixel coordinates (x, y) of the ray, centres at +0.5."""
    label: Tensor
    """uint8 [R] parsing label of the ray's pixel (:data:`pipelines.schema.HEAD` etc.)."""
    frame_host: Tensor | None = None
    """int64 [R] ``frame`` in host memory, where the sampler drew the frames there (None otherwise): grouping the rays
    by frame then needs no wait for the device on a GPU."""


def mouth_rect(lips: Tensor) -> Tensor:
    """The region speech moves, from lips rectangles [..., 4] (x0, y0, x1, y1): a quarter of the lips' width
    either side, 0.3 of it above (up to the nose) and 0.6 below (the chin, which moves with the jaw)."""
    x0, y0, x1, y1 = lips.float().unbind(-1)
    w = x1 - x0
    return torch.stack([x0 - 0.25 * w, y0 - 0.3 * w, x1 + 0.25 * w, y1 + 0.6 * w], -1)


def pixel_rays(pose: Tensor, intrinsics: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """World rays through pixel positions (OpenGL camera: x right, y up, looking down -z).

    Args:
        pose: [R, 4, 4] camera-to-world per ray (or [4, 4] for all).
        intrinsics: [R, 3] focal, cx, cy per ray (or [3]).
        pixels: [R, 2] continuous pixel positions (x, y); a pixel's centre is at +0.5.

    Returns:
        origins [R, 3], unit directions [R, 3].
    """
    if pose.dim() == 2:
        pose = pose.expand(pixels.shape[0], 4, 4)
    if intrinsics.dim() == 1:
        intrinsics = intrinsics.expand(pixels.shape[0], 3)
    f, cx, cy = intrinsics.unbind(-1)
    d_cam = torch.stack([(pixels[:, 0] - cx) / f, -(pixels[:, 1] - cy) / f, -torch.ones_like(f)], -1)
    d = torch.einsum("rij,rj->ri", pose[:, :3, :3], d_cam)
    return pose[:, :3, 3].clone(), d / d.norm(dim=-1, keepdim=True)


class FrameStore:
    """An identity's frames as tensors on a device, and the ray batches of the training stages."""

    def __init__(self, data: IdentityFrames, device: torch.device | str = "cpu"):
        self.data = data
        self.device = torch.device(device)
        dev = self.device
        self.size = data.size
        self.images = torch.from_numpy(data.images).to(dev)  # uint8 [N, S, S, 3]
        self.labels = torch.from_numpy(data.labels).to(dev)
        self.poses = torch.from_numpy(data.poses).to(dev)
        self.intrinsics = torch.from_numpy(data.intrinsics).to(dev)
        self.audio = torch.from_numpy(data.audio).to(dev)
        self.eye = torch.from_numpy(data.eye).to(dev)
        self.face_rect = torch.from_numpy(data.face_rect).to(dev)
        self._face_rect_host = torch.from_numpy(data.face_rect)  # ray sampling runs on the host (its generator)
        self.lips_rect = torch.from_numpy(data.lips_rect).to(dev)
        self._lips_rect_host = torch.from_numpy(data.lips_rect)  # the lips patch is placed on the host
        self.background = torch.from_numpy(data.background).to(dev).float() / 255.0  # [S, S, 3]
        # frames of several people (nerf.data.merge_people): each frame's person and each person's background
        self.person = torch.from_numpy(data.person_of()).to(dev)
        self.backgrounds = torch.from_numpy(data.all_backgrounds()).to(dev).float() / 255.0  # [P, S, S, 3]
        self._person_host = torch.from_numpy(data.person_of())
        self.n_train = data.n_train

    def mouth_point(self) -> Tensor:
        """The mouth's centre in the head's frame [3]: the point nearest (least squares) to the rays through the
        lips rectangles' centres of all training frames (the head is still and the camera moves around it)."""
        n = self.n_train
        lips = self.lips_rect[:n].float()
        centres = torch.stack([(lips[:, 0] + lips[:, 2]) / 2, (lips[:, 1] + lips[:, 3]) / 2], -1)
        o, d = pixel_rays(self.poses[:n].float(), self.intrinsics[:n].float(), centres)
        o, d = o.double(), d.double()
        proj = torch.eye(3, dtype=torch.float64, device=d.device) - d[:, :, None] * d[:, None, :]  # off-ray projectors
        a = proj.sum(0)
        b = torch.einsum("nij,nj->i", proj, o)
        return torch.linalg.solve(a, b).float()

    def rays(self, frames: Tensor, pixels: Tensor, head_only: bool, frames_host: Tensor | None = None) -> RayBatch:
        """A batch for given frames and integer pixel positions.

        Args:
            frames: int64 [R] frame ids.
            pixels: int64 [R, 2] (x, y).
            head_only: the target behind the head is the ground truth's torso and neck (head stage) instead of
                the background.
            frames_host: ``frames`` in host memory, if the caller has them (:attr:`RayBatch.frame_host`).
        """
        x, y = pixels[:, 0], pixels[:, 1]
        rgb = self.images[frames, y, x].float() / 255.0
        bg = self.background[y, x] if self.backgrounds.shape[0] == 1 else self.backgrounds[self.person[frames], y, x]
        lab = self.labels[frames, y, x]
        if head_only:
            body = (lab == TORSO) | (lab == NECK)
            bg = torch.where(body[:, None], rgb, bg)
        centres = pixels.float() + 0.5
        o, d = pixel_rays(self.poses[frames], self.intrinsics[frames], centres)
        fr = self.face_rect[frames]
        face = (x >= fr[:, 0]) & (x < fr[:, 2]) & (y >= fr[:, 1]) & (y < fr[:, 3])
        mr = mouth_rect(self.lips_rect[frames])
        mouth = (centres[:, 0] >= mr[:, 0]) & (centres[:, 0] < mr[:, 2]) & (centres[:, 1] >= mr[:, 1]) & \
            (centres[:, 1] < mr[:, 3])
        return RayBatch(frame=frames, origins=o, directions=d, rgb=rgb, background=bg, face=face, mouth=mouth,
                        pixels=centres, label=lab, frame_host=frames_host)

    def sample(self, n_rays: int, n_frames: int, generator: torch.Generator, head_only: bool = False,
               face_fraction: float = 0.5, error_map: ErrorMap | None = None, error_fraction: float = 0.0
               ) -> RayBatch:
        """Random rays of random training frames: of each frame's rays, ``face_fraction`` inside the face
        rectangle, ``error_fraction`` drawn from ``error_map`` (where the model's recent error is), the rest
        anywhere."""
        g = generator
        frames = torch.randint(0, self.n_train, (n_frames,), generator=g)
        per = max(n_rays // n_frames, 1)
        fid = frames.repeat_interleave(per)
        r = fid.shape[0]
        u = torch.rand(r, 2, generator=g)
        j = torch.arange(r) % per  # each ray's place in its frame's block
        face = j < int(round(per * face_fraction))
        rect = self._face_rect_host[fid].float()
        lo = torch.where(face[:, None], rect[:, :2], 0.0)
        hi = torch.where(face[:, None], rect[:, 2:], float(self.size))
        pix = (lo + u * (hi - lo)).long().clamp(0, self.size - 1)
        n_err = int(round(per * error_fraction)) if error_map is not None else 0
        if error_map is not None and n_err > 0:
            pix[j >= per - n_err] = error_map.sample(frames, n_err, g)  # the last n_err rays of each block
        return self.rays(fid.to(self.device), pix.to(self.device), head_only, frames_host=fid)

    def frame_rays(self, frame: int, head_only: bool = False) -> RayBatch:
        """Every pixel of one frame, row by row."""
        ys, xs = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(self.device)
        fid = torch.full((pix.shape[0],), frame, dtype=torch.long, device=self.device)
        return self.rays(fid, pix, head_only)

    def lips_patch(self, generator: torch.Generator, patch: int) -> tuple[RayBatch, Tensor]:
        """A ``patch`` x ``patch`` grid of rays over the lips of a random training frame.

        The grid spans the lips rectangle made square (and enlarged by a random 0-20%); targets are
        bilinear samples of the image at the rays' positions, so small lips still give a full patch.

        Returns:
            the rays ([patch * patch], row by row) and the target patch [patch, patch, 3].
        """
        g = generator
        f = int(torch.randint(0, self.n_train, (1,), generator=g))
        x0, y0, x1, y1 = (float(v) for v in self._lips_rect_host[f].tolist())
        side = max(x1 - x0, y1 - y0, 8.0) * (1.0 + 0.2 * float(torch.rand(1, generator=g)))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        t = (torch.arange(patch, dtype=torch.float32) + 0.5) / patch - 0.5
        ys, xs = torch.meshgrid(cy + t * side, cx + t * side, indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).clamp(0.5, self.size - 0.5).to(self.device)
        img = self.images[f].permute(2, 0, 1)[None].float() / 255.0  # [1, 3, S, S]
        grid = (pix / self.size * 2 - 1).view(1, patch, patch, 2)
        target = torch.nn.functional.grid_sample(img, grid, align_corners=False)[0].permute(1, 2, 0)
        fid = torch.full((pix.shape[0],), f, dtype=torch.long, device=self.device)
        o, d = pixel_rays(self.poses[fid], self.intrinsics[fid], pix)
        bg_img = self.backgrounds[int(self._person_host[f])].permute(2, 0, 1)[None]
        bg_grid = torch.nn.functional.grid_sample(bg_img, grid, align_corners=False)
        face = torch.ones(pix.shape[0], dtype=torch.bool, device=self.device)
        label = torch.full((pix.shape[0],), HEAD, dtype=torch.uint8, device=self.device)
        rays = RayBatch(frame=fid, origins=o, directions=d, rgb=target.reshape(-1, 3),
                        background=bg_grid[0].permute(1, 2, 0).reshape(-1, 3), face=face, mouth=face, pixels=pix,
                        label=label, frame_host=torch.full((pix.shape[0],), f, dtype=torch.long))
        return rays, target


class ErrorMap:
    """Where each training frame's recent photometric error lies, on a coarse ``side`` x ``side`` grid of cells
    (torch-ngp's and RAD-NeRF's ``error_map``): rays drawn from it go where the model is still wrong (hair,
    silhouettes, the mouth) instead of where it has converged (background, cheeks).

    Cells start at 1 (so every cell is drawn until it has been seen); each ray's squared error replaces
    ``1 - keep`` of its cell's value. Values are half precision (sampling weights need no more): 2 bytes per cell,
    8 KiB per frame at 64 x 64, in memory and in checkpoints.

    Args:
        n_frames: frames (training frames are the first).
        side: cells per image side.
        size: image side in pixels.
        device: where the map lives.
        keep: share of a cell's old value an update keeps.
    """

    def __init__(self, n_frames: int, side: int, size: int, device: torch.device | str = "cpu", keep: float = 0.1):
        if side < 1 or side > size:
            raise ValueError(f"error map side {side} must be in [1, {size}] (the image side)")
        self.side, self.size, self.keep = side, size, keep
        self.values = torch.ones(n_frames, side * side, dtype=torch.float16, device=device)

    def reset(self) -> None:
        """Forget every error (a new stage fits another target)."""
        self.values.fill_(1.0)

    def sample(self, frames: Tensor, per: int, generator: torch.Generator) -> Tensor:
        """int64 [len(frames) * per, 2] pixel positions (x, y), frame by frame: cells drawn in proportion to their
        error, a uniform position inside each."""
        w = self.values[frames.to(self.values.device)].float().cpu() + 1e-12
        cells = torch.multinomial(w, per, replacement=True, generator=generator).reshape(-1)
        u = torch.rand(cells.shape[0], 2, generator=generator)
        cell = self.size / self.side
        xy = torch.stack([cells % self.side, cells // self.side], -1).float()
        return ((xy + u) * cell).long().clamp(0, self.size - 1)

    @torch.no_grad()
    def update(self, frames: Tensor, pixels: Tensor, error: Tensor) -> None:
        """Blend rays' errors into their cells.

        Args:
            frames: int64 [R] frame ids.
            pixels: [R, 2] pixel positions (x, y) at the image size (centres or integers).
            error: [R] each ray's squared error (mean over colour channels).
        """
        cell = (pixels.long().clamp(0, self.size - 1) * self.side) // self.size  # truncation: pixels are >= 0
        flat = frames.to(self.values.device) * self.side * self.side + (cell[:, 1] * self.side + cell[:, 0]).to(
            self.values.device)
        v = self.values.view(-1)
        v[flat] = self.keep * v[flat] + (1.0 - self.keep) * error.detach().to(v.device, v.dtype)
