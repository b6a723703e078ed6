"""Building blocks every method's fields share: the density activation, small MLPs, the audio net.

Verbs: a field maps positions and per-frame conditions to outputs (``get_density``, ``get_outputs``); it knows
nothing about rays or sampling (:mod:`nerf.rendering`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class _TruncExp(torch.autograd.Function):
    """exp with a gradient clamped at exp(15): the density activation of instant-ngp."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: Tensor) -> Tensor:
    """exp(x) with a clamped gradient."""
    return _TruncExp.apply(x)  # type: ignore[no-any-return]


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with ReLU between them."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class AudioEncoderConfig:
    """The audio net: a window of log-mel frames -> an audio feature vector."""

    n_mels: int = 80
    """Input mel bands (the dataset's ``audio_features`` are [window, n_mels])."""
    window: int = 16
    """Mel frames per video frame."""
    channels: int = 64
    """Convolution channels."""
    out_dim: int = 32
    """Audio feature dimension."""
    source: str = ""
    """Empty: the net is the method's own, trained from scratch on the identity's frames. Otherwise the registered
    ``audio-lip`` version whose contrastive encoder (:class:`nerf.audio_lip.models.AudioLipEncoder`, 64-d,
    learnt over a whole dataset) replaces it, e.g. ``models:/audio-lip@champion``; ``parley train`` pins an alias
    to the version it loaded (``models:/audio-lip/3``). ``channels`` and ``out_dim`` do not apply then."""


class AudioEncoder(nn.Module):
    """RAD-NeRF's AudioNet on log-mels: strided 1D convolutions over time, then a linear layer."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        c = config.channels
        layers: list[nn.Module] = []
        in_ch, length = config.n_mels, config.window
        while length > 1:
            layers += [nn.Conv1d(in_ch, c, 3, stride=2, padding=1), nn.LeakyReLU(0.02, inplace=True)]
            in_ch, length = c, (length + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c, c), nn.LeakyReLU(0.02, inplace=True), nn.Linear(c, config.out_dim))
        self.out_dim = config.out_dim

    def forward(self, mel: Tensor) -> Tensor:
        """``mel [B, window, n_mels]`` -> ``[B, out_dim]``."""
        return self.fc(self.convs(mel.transpose(1, 2)).flatten(1))
