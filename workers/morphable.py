"""Head pose and 3D morphable-model fit: the ICT-FaceKit light model fitted to 68 landmarks.

Conventions:

* Model space: the ICT model in centimetres, +y up, +z towards the viewer, head at the origin.
* World space (what a NeRF sees): model space in metres. The head stays fixed; the camera moves.
* Camera space: OpenGL / NeRF convention, x right, y up, the camera looks down -z. A model point
  ``X`` (cm) lands in camera space at ``R @ X + t`` and projects to pixels
  ``u = cx + f * x / -z``, ``v = cy - f * y / -z``.
* ``pose_c2w`` is the inverse head pose with the translation in metres, i.e. the matrix
  ``transforms.json`` of NeRF / RAD-NeRF expects as ``transform_matrix``.

The fit is batched in torch, after AD-NeRF's face tracker: a grid search over the focal length on a
subset of frames (coarse, then fine), then a joint fit of one identity vector for the clip and a
rotation, translation and expression vector per frame, expressions initialised from (and pulled
towards) MediaPipe's blendshape scores where available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workers import assets
from workers.config import FitConfig
from workers.landmarks import BLENDSHAPE_NAMES

CM_TO_WORLD = 0.01
"""World units are metres; the ICT model is in centimetres."""

# Per-landmark weights of the fit: the jaw contour is the least reliable part of any 68-point detector.
LANDMARK_WEIGHTS = np.ones(68, np.float32)
LANDMARK_WEIGHTS[0:17] = 0.5
LANDMARK_WEIGHTS[36:48] = 1.5
LANDMARK_WEIGHTS[48:68] = 1.5


class FaceModel:
    """The ICT light linear face model: mean + identity basis + expression basis.

    Args:
        path: the ``ict_face_model_light.npz`` file; default from the asset registry.
        n_identity: identity modes used (of 100).
    """

    def __init__(self, path: str | Path | None = None, n_identity: int = 50):
        data = np.load(path or assets.resolve("ict_face_model"))
        self.n_identity = n_identity
        self.exp_names = [str(n) for n in data["exp_names"]]
        self.landmark_index = data["landmarks68"].astype(np.int64)
        self.face_vertex_count = int(data["face_vertex_count"])
        self.triangles = data["triangles"]
        self.mean = data["mean"].astype(np.float32)  # [V, 3]
        self.id_basis = data["id_basis"][:n_identity].astype(np.float32)  # [K, V, 3]
        self.exp_basis = data["exp_basis"].astype(np.float32)  # [E, V, 3]
        li = self.landmark_index
        self.lm_mean = torch.from_numpy(self.mean[li])  # [68, 3]
        self.lm_id = torch.from_numpy(self.id_basis[:, li])  # [K, 68, 3]
        self.lm_exp = torch.from_numpy(self.exp_basis[:, li])  # [E, 68, 3]
        self._bs_map = self._blendshape_map()

    @property
    def n_expression(self) -> int:
        return len(self.exp_names)

    def _blendshape_map(self) -> np.ndarray:
        """[52, E] matrix taking MediaPipe's scores ("_neutral" first) to ICT expression weights."""
        m = np.zeros((52, self.n_expression), np.float32)
        index = {n: i for i, n in enumerate(self.exp_names)}
        for k, name in enumerate(BLENDSHAPE_NAMES, start=1):
            targets = [name.replace("Left", "_L").replace("Right", "_R")]
            if targets[0] not in index:  # browInnerUp, cheekPuff are split in two in ICT
                targets = [targets[0] + "_L", targets[0] + "_R"]
            for t in targets:
                if t in index:
                    m[k, index[t]] = 1.0
        return m

    def expression_from_blendshapes(self, scores: np.ndarray) -> np.ndarray:
        """ICT expression weights ``[..., E]`` from MediaPipe blendshape scores ``[..., 52]``."""
        return np.clip(scores @ self._bs_map, 0.0, 1.0).astype(np.float32)

    def landmarks_3d(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """68 model-space landmarks.

        Args:
            identity: [K] identity coefficients.
            expression: [N, E] expression weights.

        Returns:
            [N, 68, 3] centimetres.
        """
        shape = self.lm_mean + torch.einsum("k,kpc->pc", identity, self.lm_id)
        return shape[None] + torch.einsum("ne,epc->npc", expression, self.lm_exp)

    def vertices(self, identity: np.ndarray, expression: np.ndarray | None = None) -> np.ndarray:
        """All model vertices ``[V, 3]`` (cm) for one identity (and optionally one expression)."""
        v = self.mean + np.einsum("k,kvc->vc", identity[: self.n_identity], self.id_basis)
        if expression is not None:
            v = v + np.einsum("e,evc->vc", expression, self.exp_basis)
        return v.astype(np.float32)


def rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] from axis-angle vectors [N, 3] (differentiable, safe at 0)."""
    theta = torch.sqrt((rvec * rvec).sum(-1, keepdim=True) + 1e-12)  # [N, 1]
    k = rvec / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=rvec.dtype).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def matrix_to_rvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [N, 3] from rotation matrices [N, 3, 3]."""
    import cv2

    out = np.zeros((len(R), 3), np.float32)
    for i, r in enumerate(R):
        u, _, vt = np.linalg.svd(r)
        rv, _ = cv2.Rodrigues((u @ vt).astype(np.float64))
        out[i] = rv[:, 0]
    return out


def project(points: torch.Tensor, focal: float | torch.Tensor, cx: float, cy: float) -> torch.Tensor:
    """Pixels [..., 2] of camera-space points [..., 3] (OpenGL camera, looking down -z)."""
    z = (-points[..., 2]).clamp(min=1e-3)
    u = cx + focal * points[..., 0] / z
    v = cy - focal * points[..., 1] / z
    return torch.stack([u, v], -1)


@dataclass
class FitResult:
    """The fit of one person in one clip. Arrays cover the frames given to :func:`fit_clip`."""

    focal: float
    cx: float
    cy: float
    identity: np.ndarray
    """float32 [K]."""
    rotation: np.ndarray
    """float32 [N, 3, 3] model -> camera rotation."""
    translation: np.ndarray
    """float32 [N, 3] model -> camera translation, centimetres."""
    expression: np.ndarray
    """float32 [N, E] ICT expression weights."""
    pose_c2w: np.ndarray
    """float32 [N, 4, 4] camera-to-world, metres, OpenGL camera axes."""
    reprojection_error: np.ndarray
    """float32 [N] mean landmark distance in pixels."""
    near: float
    """Nearest head depth over the clip minus a margin (metres)."""
    far: float
    """Farthest head depth over the clip plus a margin (metres)."""
    focal_search: dict[float, float] = field(default_factory=dict)
    """Focal candidate -> mean reprojection error (px) of the search."""


def _initial_pose(lms: np.ndarray, focal: float, cx: float, cy: float, mp_rot: np.ndarray | None):
    """Rotation vectors [N,3] and translations [N,3] (cm) from landmark extents."""
    n = len(lms)
    width_px = np.linalg.norm(lms[:, 16] - lms[:, 0], axis=-1).clip(min=4.0)
    depth = focal * 14.7 / width_px  # ICT jaw-to-jaw width ~14.7 cm
    centre = lms[:, [27, 30, 33, 8]].mean(1)
    t = np.stack([(centre[:, 0] - cx) * depth / focal, -(centre[:, 1] - cy) * depth / focal, -depth - 8.0], -1)
    rvec = matrix_to_rvec(mp_rot) if mp_rot is not None else np.zeros((n, 3), np.float32)
    return rvec.astype(np.float32), t.astype(np.float32)


def _landmarks_batched(model: FaceModel, identity: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
    """[B, N, 68, 3] from identity [B, K] and expressions [B, N, E]."""
    shape = model.lm_mean + torch.einsum("bk,kpc->bpc", identity, model.lm_id)
    return shape[:, None] + torch.einsum("bne,epc->bnpc", expr, model.lm_exp)


def _optimise(
    model: FaceModel,
    lms: torch.Tensor,
    focal: torch.Tensor,
    cx: float,
    cy: float,
    rvec: torch.Tensor,
    trans: torch.Tensor,
    identity: torch.Tensor,
    exp0: torch.Tensor,
    cfg: FitConfig,
    iters_rigid: int,
    iters_joint: int,
    smooth: bool,
    scale: float,
    weights: torch.Tensor,
):
    """Fit B independent hypotheses (one per focal length) at once.

    Shapes: lms [N, 68, 2], focal [B], rvec/trans [B, N, 3], identity [B, K], exp0 [B, N, E].
    Returns the optimised tensors and the per-frame mean pixel error [B, N].
    """
    b, n = rvec.shape[:2]
    f = focal.view(b, 1, 1)
    rvec = rvec.clone().requires_grad_(True)
    trans = trans.clone().requires_grad_(True)
    identity = identity.clone().requires_grad_(True)
    expr = exp0.clone().requires_grad_(True)

    def uv_of():
        pts = _landmarks_batched(model, identity, expr)  # [B, N, 68, 3]
        rot = rodrigues(rvec.reshape(-1, 3)).view(b, n, 3, 3)
        cam = torch.einsum("bnij,bnpj->bnpi", rot, pts) + trans[:, :, None]
        return project(cam, f, cx, cy)

    def loss_fn(with_shape: bool):
        data = (weights * ((uv_of() - lms) / scale) ** 2).sum(-1).mean((1, 2))  # [B]
        loss = data
        if with_shape:
            loss = loss + cfg.w_identity * (identity**2).sum(-1)
            loss = loss + cfg.w_expression * ((expr - exp0) ** 2).sum(-1).mean(-1)
        if smooth and n > 1:
            loss = loss + cfg.w_smooth * (
                ((rvec[:, 1:] - rvec[:, :-1]) ** 2).sum(-1).mean(-1)
                + (((trans[:, 1:] - trans[:, :-1]) / 10) ** 2).sum(-1).mean(-1)
            )
        return loss.sum()

    opt = torch.optim.Adam([{"params": [rvec], "lr": 0.02}, {"params": [trans], "lr": 0.3}])
    for _ in range(iters_rigid):
        opt.zero_grad()
        loss_fn(False).backward()
        opt.step()
    opt = torch.optim.Adam(
        [
            {"params": [rvec], "lr": 0.01},
            {"params": [trans], "lr": 0.15},
            {"params": [identity], "lr": 0.05},
            {"params": [expr], "lr": 0.02},
        ]
    )
    # Until the loss stops falling (at most iters_joint steps): a plateau lowers the rate once, the next one ends
    # the fit. A fixed count stopped early from some starts (MediaPipe's rotation sits a few degrees off the ICT
    # model's frame): poses 0.2-0.4 degrees from the converged ones, which both starts reach.
    window, tol = 20, 1e-4
    lowered = False
    last = float("inf")
    for i in range(iters_joint):
        opt.zero_grad()
        loss = loss_fn(True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            expr.clamp_(0.0, 1.0)
        if (i + 1) % window == 0:
            now = float(loss.detach())
            if now > last * (1 - tol):
                if lowered:
                    break
                lowered = True
                for g in opt.param_groups:
                    g["lr"] *= 0.3
            last = now
    with torch.no_grad():
        err = (uv_of() - lms).norm(dim=-1).mean(-1)  # [B, N]
    return rvec.detach(), trans.detach(), identity.detach(), expr.detach(), err


def fit_clip(
    model: FaceModel,
    landmarks: np.ndarray,
    width: int,
    height: int,
    expression_init: np.ndarray | None = None,
    rotation_init: np.ndarray | None = None,
    cfg: FitConfig | None = None,
    landmark_weights: np.ndarray | None = None,
) -> FitResult:
    """Fit one identity, a focal length and per-frame pose and expression to a person's landmarks.

    Args:
        model: the face model.
        landmarks: float32 [N, 68, 2] pixels, frames of one person (N >= 1).
        width, height: image size in pixels; the principal point is its centre.
        expression_init: float32 [N, E] initial expression weights (from blendshapes), or None.
        rotation_init: float32 [N, 3, 3] initial head rotations (e.g. MediaPipe's transform), or None.
        cfg: fit settings.
        landmark_weights: float32 [68] weight of each landmark; default :data:`LANDMARK_WEIGHTS`.

    Returns:
        The :class:`FitResult`.

    Raises:
        ValueError: no frames given.
    """
    cfg = cfg or FitConfig()
    n = len(landmarks)
    if n == 0:
        raise ValueError("fit_clip needs at least one frame of landmarks")
    cx, cy = width / 2.0, height / 2.0
    size = float(max(width, height))
    lms_all = torch.from_numpy(np.asarray(landmarks, np.float32))
    exp0_all = torch.from_numpy(
        np.asarray(expression_init, np.float32) if expression_init is not None
        else np.zeros((n, model.n_expression), np.float32)
    )
    face_px = float(np.median(np.linalg.norm(landmarks[:, 16] - landmarks[:, 0], axis=-1)))
    scale = max(face_px, 8.0)
    k = min(cfg.n_identity, model.n_identity)
    w = torch.from_numpy(np.asarray(LANDMARK_WEIGHTS if landmark_weights is None else landmark_weights, np.float32))
    w = w[None, :, None]
    sub = np.unique(np.linspace(0, n - 1, min(cfg.search_frames, n)).round().astype(int))

    rot_sub = None if rotation_init is None else rotation_init[sub]

    def search_round(focals: list[float]):
        inits = [_initial_pose(landmarks[sub], f, cx, cy, rot_sub) for f in focals]
        r0 = torch.from_numpy(np.stack([i[0] for i in inits]))
        t0 = torch.from_numpy(np.stack([i[1] for i in inits]))
        e0 = exp0_all[sub][None].expand(len(focals), -1, -1).contiguous()
        out = _optimise(
            model, lms_all[sub], torch.tensor(focals, dtype=torch.float32), cx, cy, r0, t0,
            torch.zeros(len(focals), k), e0, cfg, cfg.search_iters // 2, cfg.search_iters, False, scale, w,
        )
        errs = out[4].mean(-1)
        return [float(e) for e in errs], out[2]

    search: dict[float, float] = {}
    coarse = [m * size for m in cfg.focal_grid]
    errs, ids = search_round(coarse)
    search.update({round(f, 2): e for f, e in zip(coarse, errs, strict=True)})
    j = int(np.argmin(errs))
    best_f, best_err, identity0 = coarse[j], errs[j], ids[j]
    if cfg.fine_steps > 0 and len(coarse) > 1:
        step = cfg.focal_grid[1] / cfg.focal_grid[0]
        fine = [best_f * step ** (0.9 * ((i / (cfg.fine_steps + 1)) * 2 - 1)) for i in range(1, cfg.fine_steps + 1)]
        errs, ids = search_round(fine)
        search.update({round(f, 2): e for f, e in zip(fine, errs, strict=True)})
        j = int(np.argmin(errs))
        if errs[j] < best_err:
            best_f, identity0 = fine[j], ids[j]
    focal = float(best_f)

    r0, t0 = _initial_pose(landmarks, focal, cx, cy, rotation_init)
    rvec, trans, identity, expr, err = _optimise(
        model, lms_all, torch.tensor([focal]), cx, cy, torch.from_numpy(r0)[None], torch.from_numpy(t0)[None],
        identity0[None], exp0_all[None], cfg, cfg.rigid_iters, cfg.joint_iters, True, scale, w,
    )
    rvec, trans, identity, expr, err = rvec[0], trans[0], identity[0], expr[0], err[0]
    R = rodrigues(rvec).numpy().astype(np.float32)
    t = trans.numpy().astype(np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    c2w[:, :3, :3] = R.transpose(0, 2, 1)
    c2w[:, :3, 3] = -np.einsum("nji,nj->ni", R, t) * CM_TO_WORLD

    # Depth bounds of the whole head (identity shape, neutral) over the clip.
    verts = model.vertices(identity.numpy())
    step_v = max(len(verts) // 2000, 1)
    v = verts[::step_v]
    frames = np.unique(np.linspace(0, n - 1, min(n, 50)).round().astype(int))
    depth = -(np.einsum("nij,vj->nvi", R[frames], v)[..., 2] + t[frames, None, 2]) * CM_TO_WORLD
    near = float(max(depth.min() - 0.05, 0.01))
    far = float(depth.max() + 0.10)
    return FitResult(
        focal=focal, cx=cx, cy=cy, identity=identity.numpy().astype(np.float32), rotation=R, translation=t,
        expression=expr.numpy().astype(np.float32), pose_c2w=c2w, reprojection_error=err.numpy().astype(np.float32),
        near=near, far=far, focal_search=search,
    )
