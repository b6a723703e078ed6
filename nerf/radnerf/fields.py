"""RAD-NeRF's fields: the audio-spatial decomposed head field and the pseudo-3D torso."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from nerf.audio_lip.models import AudioLipConfig, AudioLipEncoder
from nerf.encoders import (
    FrequencyEncoder,
    FrequencyEncoderConfig,
    GridEncoderConfig,
    PlaneEncoder,
    spherical_harmonics,
)
from nerf.fields import AudioEncoder, AudioEncoderConfig, mlp, trunc_exp


@dataclass(frozen=True)
class HeadFieldConfig:
    """The head: tri-plane (or frequency) encoding, audio coordinate in a 2D audio grid, eye, latent -> density, RGB."""

    backbone: Literal["grid", "frequency"] = "grid"
    """``grid``: RAD-NeRF's decomposed grids; ``frequency``: an AD-NeRF-like implicit MLP (the baseline)."""
    spatial: GridEncoderConfig = field(default_factory=lambda: GridEncoderConfig(
        n_levels=8, features_per_level=2, base_resolution=16, max_resolution=512))
    """Tri-plane over the head box (``grid`` backbone)."""
    audio_grid: GridEncoderConfig = field(default_factory=lambda: GridEncoderConfig(
        n_levels=4, features_per_level=2, base_resolution=8, max_resolution=64))
    """2D grid over the audio coordinate (``grid`` backbone)."""
    frequency: FrequencyEncoderConfig = field(default_factory=FrequencyEncoderConfig)
    """Positional encoding of the ``frequency`` backbone."""
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    audio_coord_dim: int = 2
    """Dimension of the audio coordinate x_a = MLP(a, f) (RAD-NeRF: 1-3)."""
    use_eye: bool = True
    """Condition density on eye openness."""
    latent_dim: int = 4
    """Per-frame appearance latent fed to the colour net (0: none)."""
    latent_in_density: bool = True
    """Also feed the latent to the density net, so that per-frame changes of shape that audio and eyes do not
    explain (hair, head motion the pose misses) have a condition of their own instead of being learnt as a
    function of the audio (held-out frames take their nearest training frames' latents). Checkpoints from before
    this field render without it. On by default: it raised held-out and training head PSNR (measurements:
    docs/decisions.md, 'RAD-NeRF defaults', latent_in_density)."""
    audio_gate: float = 0.0
    """Radius (metres) of a sphere around the mouth (:meth:`nerf.rays.FrameStore.mouth_point`) outside which the
    audio coordinate is forced to 0, so that audio cannot move anything but the mouth and jaw (0: no gate; the
    ``ambient_l1`` loss alone keeps audio to the mouth, softly). Off by default: a 5 cm gate changed held-out head
    PSNR by less than the run-to-run spread (measurements: docs/decisions.md, 'RAD-NeRF defaults', audio_gate)."""
    view_degree: int = 2
    """Spherical-harmonics degree (1-4: 1, 4, 9 or 16 functions) of the ray direction in the head's frame, fed to the
    colour net as in RAD-NeRF (degree 4 there; 0: colour does not depend on the view; checkpoints from before this
    field render without it). The camera is fixed and the head turns, so the direction in the head's frame is where
    the light falls on it as much as where it is seen from. 2 by default: it fits the seen views better (held-out
    head PSNR +0.2 dB on a clip without new views, -0.1 dB on one with them; degree 4 costs 10% more per step), and
    is RAD-NeRF's design; the whole model's 30-min figures are within the run-to-run spread (measurements:
    docs/decisions.md, 'RAD-NeRF defaults', view_degree)."""
    hidden: int = 64
    """Width of the small MLPs (``grid`` backbone)."""
    geo_feat_dim: int = 32
    """Features passed from the density net to the colour net."""
    mlp_hidden: int = 256
    """Width of the ``frequency`` backbone's MLP."""
    mlp_layers: int = 6
    """Depth of the ``frequency`` backbone's MLP."""
    bound: float = 0.2
    """Half side of the head box in metres (the ICT head spans about +-0.13 x, -0.19..0.15 y, -0.09..0.13 z).
    Hair below the chin (shoulder-length hair) leaves the box and renders as blocks of background at the box's
    edge, but 0.25 gave no gain over two seeds, so the box stays at 0.2 (measurements: docs/decisions.md,
    'RAD-NeRF defaults', bound)."""
    ABSENT_IN_OLD_CONFIGS: ClassVar[dict[str, object]] = {"latent_in_density": False, "view_degree": 0}
    """Fields whose absence from a saved config means the behaviour from before they existed, not the default."""

    def __post_init__(self) -> None:
        bad = [f"audio_coord_dim={self.audio_coord_dim} (1, 2 or 3)"] if not 1 <= self.audio_coord_dim <= 3 else []
        bad += [f"{k}={getattr(self, k)} (>= 0)" for k in ("latent_dim", "audio_gate") if getattr(self, k) < 0]
        bad += [f"view_degree={self.view_degree} (0-4)"] if not 0 <= self.view_degree <= 4 else []
        bad += [f"{k}={getattr(self, k)} (>= 1)" for k in ("hidden", "geo_feat_dim", "mlp_hidden", "mlp_layers")
                if getattr(self, k) < 1]
        bad += [f"bound={self.bound} (> 0)"] if not self.bound > 0 else []
        if bad:
            raise ValueError(f"head config: invalid {', '.join(bad)}")


class HeadField(nn.Module):
    """The audio-spatial decomposed head field of RAD-NeRF (or its implicit-MLP baseline)."""

    def __init__(self, config: HeadFieldConfig, density_latent: int | None = None):
        """Args:
            config: the field's shape.
            density_latent: how many leading dimensions of the latent the density net sees (default: all of them
                with ``latent_in_density``, else none); the colour net sees the whole latent. A method whose latent
                is a GRAF-style (shape, appearance) pair puts the shape part first.
        """
        super().__init__()
        self.config = config
        c = config
        self.density_latent = (c.latent_dim if c.latent_in_density else 0) if density_latent is None \
            else density_latent
        if not 0 <= self.density_latent <= c.latent_dim:
            raise ValueError(f"head field: density_latent {density_latent} must be in [0, latent_dim={c.latent_dim}]")
        self.audio_net: nn.Module = AudioEncoder(c.audio) if not c.audio.source else \
            AudioLipEncoder(AudioLipConfig(n_mels=c.audio.n_mels, window=c.audio.window))
        self.audio_dim = int(self.audio_net.out_dim)  # type: ignore[arg-type]
        cond_dim = (1 if c.use_eye else 0) + self.density_latent  # density's per-frame
        self.spatial: PlaneEncoder | FrequencyEncoder
        if c.audio_gate > 0:
            self.register_buffer("mouth_centre", torch.zeros(3))  # world position, set from the data
        if c.backbone == "grid":
            self.spatial = PlaneEncoder(3, c.spatial)
            self.audio_coord_net = mlp(self.spatial.out_dim + self.audio_dim, c.audio_coord_dim, c.hidden, 3)
            # x_a in 1-3 dims: a 2D grid (1 dim: its v = 0 line) or, for 3 dims, a tri-plane.
            self.audio_grid: PlaneEncoder | None = PlaneEncoder(3 if c.audio_coord_dim == 3 else 2, c.audio_grid)
            h_in = self.spatial.out_dim + self.audio_grid.out_dim + cond_dim
            self.sigma_net = mlp(h_in, 1 + c.geo_feat_dim, c.hidden, 3)
            self.color_net = mlp(c.geo_feat_dim + c.latent_dim + c.view_degree**2, 3, c.hidden, 2)
        elif c.backbone == "frequency":
            self.spatial = FrequencyEncoder(3, c.frequency)
            self.audio_coord_net = None  # type: ignore[assignment]
            self.audio_grid = None
            h_in = self.spatial.out_dim + self.audio_dim + cond_dim
            self.sigma_net = mlp(h_in, 1 + c.geo_feat_dim, c.mlp_hidden, c.mlp_layers)
            self.color_net = mlp(c.geo_feat_dim + c.latent_dim + c.view_degree**2, 3, c.mlp_hidden // 2, 2)
        else:
            raise ValueError(f"unknown head backbone {c.backbone!r} (grid or frequency)")

    def normalise(self, x: Tensor) -> Tensor:
        """World positions [N, 3] -> the head box's [-1, 1]^3."""
        return x / self.config.bound

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``[B, window, n_mels]`` -> audio features ``[B, A]``. A learnt audio-lip encoder's code is compared by
        angle in its training, so only its direction is passed on (unit length, scaled to about 1 per dimension)."""
        x = self.audio_net(audio)
        if self.config.audio.source:
            x = torch.nn.functional.normalize(x, dim=-1) * self.audio_dim**0.5
        return x

    def _audio_lookup(self, x_a: Tensor) -> Tensor:
        assert self.audio_grid is not None
        if self.config.audio_coord_dim == 1:
            x_a = torch.cat([x_a, torch.zeros_like(x_a)], -1)
        return self.audio_grid(x_a)

    def get_outputs(self, x: Tensor, audio_feat: Tensor, eye: Tensor, latent: Tensor,
                    with_color: bool = True, dirs: Tensor | None = None) -> dict[str, Tensor]:
        """Density, colour and audio coordinate at points.

        Args:
            x: [N, 3] world positions.
            audio_feat: [N, A] audio features of each point's frame (:meth:`encode_audio`).
            eye: [N] eye openness of each point's frame.
            latent: [N, latent_dim] appearance latent of each point's frame.
            with_color: also compute the colour (not needed to update the occupancy grid).
            dirs: [N, 3] unit ray directions in the head's frame (needed for the colour with ``view_degree``).

        Returns:
            ``sigma`` [N], ``rgb`` [N, 3] (with_color), ``audio_coord`` [N, audio_coord_dim] (grid backbone).
        """
        xn = self.normalise(x)
        enc = self.spatial(xn)
        parts = [enc]
        out: dict[str, Tensor] = {}
        if self.config.backbone == "grid":
            x_a = torch.tanh(self.audio_coord_net(torch.cat([enc, audio_feat], -1)))
            if self.config.audio_gate > 0:
                x_a = x_a * self.audio_gate_weight(x)[:, None]
            out["audio_coord"] = x_a
            parts.append(self._audio_lookup(x_a))
        else:
            parts.append(audio_feat)
        if self.config.use_eye:
            parts.append(eye[:, None])
        if self.density_latent:
            parts.append(latent if self.density_latent == latent.shape[-1] else latent[:, : self.density_latent])
        h = self.sigma_net(torch.cat(parts, -1))
        out["sigma"] = trunc_exp(h[:, 0] - 1.0)
        if with_color:
            geo = h[:, 1:]
            color_in = [geo, latent] if self.config.latent_dim else [geo]
            if self.config.view_degree:
                if dirs is None:
                    raise ValueError("head field: view_degree > 0 needs the rays' directions for the colour")
                color_in.append(spherical_harmonics(dirs, self.config.view_degree))
            out["rgb"] = torch.sigmoid(self.color_net(torch.cat(color_in, -1)))
        return out

    def audio_gate_weight(self, x: Tensor) -> Tensor:
        """[N] in [0, 1]: 1 within ``audio_gate`` metres of the mouth, falling to 0 over a tenth of that outside."""
        r = self.config.audio_gate
        centre: Tensor = self.get_buffer("mouth_centre")
        dist = (x - centre).norm(dim=-1)
        return torch.sigmoid((r - dist) / (0.025 * r))

    def get_density(self, x: Tensor, audio_feat: Tensor, eye: Tensor, latent: Tensor | None = None) -> Tensor:
        """Density ``[N]`` at world positions ``[N, 3]`` (conditions as in :meth:`get_outputs`; the latent
        matters only with ``latent_in_density``, zeros when None)."""
        if latent is None:
            latent = torch.zeros(x.shape[0], self.config.latent_dim, device=x.device)
        return self.get_outputs(x, audio_feat, eye, latent, with_color=False)["sigma"]


@dataclass(frozen=True)
class TorsoFieldConfig:
    """RAD-NeRF's pseudo-3D torso: a 2D image-space grid sampled at pose-deformed pixel positions."""

    grid: GridEncoderConfig = field(default_factory=lambda: GridEncoderConfig(
        n_levels=8, features_per_level=2, base_resolution=16, max_resolution=512))
    """2D grid over the image plane."""
    pixel_frequencies: int = 6
    """Octaves of the pixel position's encoding for the deformation net."""
    pose_frequencies: int = 1
    """Octaves of the head pose's encoding (RAD-NeRF: 4, on projected anchor points; the ``paper`` preset keeps 4).
    On a 200-frame clip 4 octaves let the torso learn each training frame's pose apart and fail between them (the
    held-out frames' neck and collar, which follow the head, go wrong); 1 or 2 gave about 0.7 dB more held-out PSNR
    on WDA_BobMenendez_000 (measurements: docs/decisions.md, 'RAD-NeRF defaults', pose_frequencies)."""
    latent_dim: int = 8
    """Per-frame appearance latent of the torso (0: none)."""
    hidden: int = 64
    """Width of the deformation and colour nets."""
    max_offset: float = 0.25
    """Largest deformation, in the image's [-1, 1] units."""
    pose_in_color: bool = True
    """Also feed the pose to the colour net (RAD-NeRF feeds it to the deformation only; on RD_Radio2_000 the two
    were within the run-to-run spread of held-out PSNR, about +-0.5 dB)."""

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)}" for k in ("pixel_frequencies", "pose_frequencies", "latent_dim")
               if getattr(self, k) < 0]
        bad += [f"hidden={self.hidden}"] if self.hidden < 1 else []
        if bad:
            raise ValueError(f"torso config: invalid {', '.join(bad)} (octaves and latent_dim must be >= 0, "
                             "hidden >= 1)")


class TorsoField(nn.Module):
    """Torso colour and alpha per pixel: one sample per pixel, deformed in 2D by the head pose."""

    def __init__(self, config: TorsoFieldConfig):
        super().__init__()
        self.config = config
        c = config
        self.grid = PlaneEncoder(2, c.grid)
        self.pixel_enc = FrequencyEncoder(2, FrequencyEncoderConfig(c.pixel_frequencies))
        self.pose_enc = FrequencyEncoder(12, FrequencyEncoderConfig(c.pose_frequencies))
        self.deform_net = mlp(self.pixel_enc.out_dim + self.pose_enc.out_dim + c.latent_dim, 2, c.hidden, 3)
        pose_dim = self.pose_enc.out_dim if c.pose_in_color else 0
        self.color_net = mlp(self.grid.out_dim + pose_dim + c.latent_dim, 4, c.hidden, 3)

    def get_outputs(self, uv: Tensor, pose: Tensor, latent: Tensor) -> dict[str, Tensor]:
        """Torso colour and alpha at image positions.

        Args:
            uv: [N, 2] pixel positions scaled to [-1, 1].
            pose: [N, 12] the frame's head pose (camera-to-world 3x4, minus the training mean).
            latent: [N, latent_dim] the frame's torso latent.

        Returns:
            ``rgb`` [N, 3], ``alpha`` [N], ``offset`` [N, 2] (the deformation).
        """
        pe = self.pose_enc(pose)
        parts = [self.pixel_enc(uv), pe] + ([latent] if self.config.latent_dim else [])
        offset = torch.tanh(self.deform_net(torch.cat(parts, -1))) * self.config.max_offset
        feat = self.grid((uv + offset).clamp(-1, 1))
        parts = [feat] + ([pe] if self.config.pose_in_color else []) + ([latent] if self.config.latent_dim else [])
        h = self.color_net(torch.cat(parts, -1))
        return {"rgb": torch.sigmoid(h[:, :3]), "alpha": torch.sigmoid(h[:, 3]), "offset": offset}
