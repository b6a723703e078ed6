"""The three audio-lip networks: the swap landmark autoencoder, the contrastive audio encoder, the lip-sync scorer.

Shapes follow JEAN (supp. 8.1-8.2) and AD-NeRF's AudioNet; the scorer follows SyncNet's input spans (5 frames of
mouth, 0.2 s of audio) with two small CNNs of our own (spec 4.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerf.audio_lip.data import MOUTH

SLOPE = 0.02
"""LeakyReLU negative slope of JEAN's and AD-NeRF's networks."""


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.02) between them (none after the last)."""
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.LeakyReLU(SLOPE, inplace=True))
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class LandmarkAEConfig:
    points: int = 51
    """Landmarks per frame (68 minus the jaw contour)."""
    hidden: tuple[int, ...] = (256, 256, 128)
    """Hidden widths of the encoder (the decoder mirrors them), JEAN supp. 8.1.2."""
    code: int = 64
    """Width of each code: eyes-nose and mouth."""


class LandmarkAE(nn.Module):
    """JEAN's landmark autoencoder: 4 linear layers each way; the encoder's 128 outputs split into e_f | e_m."""

    mean: Tensor
    scale: Tensor

    def __init__(self, config: LandmarkAEConfig = LandmarkAEConfig()):
        super().__init__()
        self.config = config
        d = config.points * 2
        self.encoder = _mlp([d, *config.hidden, 2 * config.code])
        self.decoder = _mlp([2 * config.code, *reversed(config.hidden), d])
        self.register_buffer("mean", torch.zeros(config.points, 2))
        self.register_buffer("scale", torch.ones(()))

    def set_normalisation(self, lms: Tensor) -> None:
        """Centre and scale inputs by the training landmarks' mean shape and spread (speech moves a few % of it)."""
        self.mean.copy_(lms.mean(0))
        self.scale.copy_((lms - self.mean).std().clamp_min(1e-6))

    def encode(self, lms: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 51, 2]`` -> (eyes-nose code ``[B, 64]``, mouth code ``[B, 64]``)."""
        z = self.encoder(((lms - self.mean) / self.scale).flatten(1))
        return z[:, : self.config.code], z[:, self.config.code:]

    def decode(self, face: Tensor, mouth: Tensor) -> Tensor:
        """(eyes-nose code, mouth code) -> landmarks ``[B, 51, 2]``."""
        out = self.decoder(torch.cat([face, mouth], 1)).view(-1, self.config.points, 2)
        return out * self.scale + self.mean


@dataclass(frozen=True)
class AudioLipConfig:
    n_mels: int = 80
    window: int = 16
    """Mel frames per window (0.32 s at a 20-ms hop)."""
    channels: tuple[int, ...] = (32, 32, 64, 64)
    """AD-NeRF's AudioNet convolutions (kernel 3, stride 2: 16 -> 8 -> 4 -> 2 -> 1)."""
    out_dim: int = 64


class AudioLipEncoder(nn.Module):
    """AD-NeRF's AudioNet on log-mel windows: strided Conv1d over time, then Linear-LReLU-Linear to 64-d."""

    def __init__(self, config: AudioLipConfig = AudioLipConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch, length = config.n_mels, config.window
        for c in config.channels:
            layers += [nn.Conv1d(in_ch, c, 3, stride=2, padding=1), nn.LeakyReLU(SLOPE, inplace=True)]
            in_ch, length = c, (length + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.fc = _mlp([in_ch * length, 64, config.out_dim])
        self.out_dim = config.out_dim

    def forward(self, mel: Tensor) -> Tensor:
        """``mel [B, window, n_mels]`` -> ``[B, out_dim]``."""
        return self.fc(self.convs(mel.transpose(1, 2)).flatten(1))


@dataclass(frozen=True)
class SyncScorerConfig:
    frames: int = 5
    """Video frames per visual window (0.2 s at 25 fps, SyncNet's span)."""
    crop: tuple[int, int] = (48, 96)
    """Mouth crop height, width."""
    mels: int = 10
    """Mel frames per audio window (0.2 s)."""
    n_mels: int = 80
    dim: int = 128
    """Embedding width."""


def _conv(i: int, o: int, stride: int | tuple[int, int]) -> list[nn.Module]:
    return [nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]


class SyncScorer(nn.Module):
    """Two towers: 5 stacked grayscale mouth crops -> 128-d, and the same 0.2 s of log-mel -> 128-d (L2-normalised).

    Never the encoder an avatar is conditioned on: it sees pixels, not landmarks, and is trained on its own.
    """

    def __init__(self, config: SyncScorerConfig = SyncScorerConfig()):
        super().__init__()
        self.config = config
        self.visual = nn.Sequential(  # 48x96 -> 24x48 -> 12x24 -> 6x12 -> 3x6
            *_conv(config.frames, 32, 2), *_conv(32, 64, 2), *_conv(64, 128, 2), *_conv(128, 128, 2),
            nn.Flatten(), nn.Linear(128 * 3 * 6, 256), nn.ReLU(inplace=True), nn.Linear(256, config.dim))
        self.audio = nn.Sequential(  # [1, 80 mels, 10 frames] -> 40x10 -> 20x5 -> 10x3 -> 5x2
            *_conv(1, 32, 1), *_conv(32, 32, (2, 1)), *_conv(32, 64, 2), *_conv(64, 128, 2), *_conv(128, 128, 2),
            nn.Flatten(), nn.Linear(128 * 5 * 2, 256), nn.ReLU(inplace=True), nn.Linear(256, config.dim))

    @staticmethod
    def _dynamics(crops: Tensor) -> Tensor:
        """uint8-range crops [B, 5, h, w] -> each frame minus the window's mean frame, over the window's spread.

        Only what changes within the 0.2 s remains: lip shape, beard, skin and light, which tell people (and clips)
        apart and would let the scorer match faces to voices instead of lips, cancel out."""
        x = crops.float()
        return (x - x.mean(1, keepdim=True)) / x.std((1, 2, 3), keepdim=True).clamp_min(1.0)

    def embed_video(self, crops: Tensor) -> Tensor:
        """``[B, 5, 48, 96]`` mouth crops (0-255) -> unit ``[B, 128]``."""
        return F.normalize(self.visual(self._dynamics(crops)), dim=1)

    def embed_audio(self, mel: Tensor) -> Tensor:
        """``[B, 10, 80]`` log-mel (0-1) -> unit ``[B, 128]``; each band's mean over the window is taken out (the
        voice's timbre and the room's colour, which are constant over 0.2 s), its changes are kept."""
        x = (mel - mel.mean(1, keepdim=True)) * 10.0
        return F.normalize(self.audio(x.transpose(1, 2)[:, None]), dim=1)


def swap_targets(a: Tensor, b: Tensor, swapped: Tensor) -> tuple[Tensor, Tensor]:
    """Targets of the swap: A's landmarks with B's mouth and B's with A's where ``swapped`` [B] is set."""
    mouth = torch.zeros(a.shape[1], dtype=torch.bool, device=a.device)
    mouth[MOUTH] = True
    m = swapped.bool()[:, None, None] & mouth[None, :, None]
    return torch.where(m, b, a), torch.where(m, a, b)
