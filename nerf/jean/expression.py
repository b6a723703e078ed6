"""JEAN's expression transformer (JEAN 3.2, supp. 8.3): per-frame expression features of a window of frames in,
a 64-d lip part e_l and a 64-d expression part e_e per frame out, and an autoregressive decoder back to the
features that only the swap makes disentangle the two.

Sizes are the paper's: an input MLP to 128 (hidden 512), 3 encoder layers of 8 heads with dropout 0.2 over windows
of 8 frames padded with start and end tokens, sinusoidal positions, the output split in half, a decoder of the same
size and an output MLP 128 -> 512 -> features. What the paper leaves open is decided here (docs/decisions.md,
'JEAN'):

* the decoder runs free: each step sees its own previous outputs, never the target's, because a decoder fed the
  target's previous frames (teacher forcing) can copy them and need not read e_l or e_e at all;
* without paired recordings (one sentence in two emotions), the swap is anchored on audio: the lip part the
  decoder gets is a mapping of the frozen audio code of the same frames, and the expression part is that of a
  window close in time (the same expression, other words) - see :func:`swap_inputs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SLOPE = 0.02


@dataclass(frozen=True)
class ExpressionTransformerConfig:
    features: int = 111
    """Width of the per-frame expression features (JEAN: 2048 EMOCA features)."""
    width: int = 128
    """Model width; the encoder output splits into e_l | e_e of width / 2 each."""
    hidden: int = 512
    """Hidden width of the input and output MLPs."""
    layers: int = 3
    heads: int = 8
    dropout: float = 0.2
    feedforward: int = 512
    """Width of each layer's feed-forward block (not given by the paper)."""
    window: int = 8
    """Frames per window (omega)."""
    audio: int = 64
    """Width of the audio code the lip part is anchored on."""

    def __post_init__(self) -> None:
        if self.width % 2 or self.width % self.heads:
            raise ValueError(f"expression transformer: width {self.width} must be even and divisible by the "
                             f"{self.heads} heads")
        if self.window < 1 or self.features < 1:
            raise ValueError(f"expression transformer: window {self.window} and features {self.features} must be >= 1")

    @property
    def part(self) -> int:
        return self.width // 2


def sinusoidal(length: int, width: int) -> Tensor:
    """[length, width] positional encoding of Vaswani et al."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    pe = torch.zeros(length, width)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.LeakyReLU(SLOPE), nn.Linear(h, o))


class ExpressionTransformer(nn.Module):
    """Encoder EE: features [B, T, F] -> (e_l, e_e) [B, T, 64] each; decoder ED: (e_l, e_e) -> features.
    ``mean``/``scale`` normalise the features (set from the training frames)."""

    mean: Tensor
    scale: Tensor
    pe: Tensor

    def __init__(self, config: ExpressionTransformerConfig = ExpressionTransformerConfig()):
        super().__init__()
        self.config = c = config
        self.inp = _mlp(c.features, c.hidden, c.width)
        self.tokens = nn.Parameter(torch.randn(4, c.width) * 0.02)  # encoder start/end, decoder start/end
        enc = nn.TransformerEncoderLayer(c.width, c.heads, c.feedforward, c.dropout, batch_first=True)
        dec = nn.TransformerDecoderLayer(c.width, c.heads, c.feedforward, c.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, c.layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, c.layers)
        self.feedback = nn.Linear(c.features, c.width)
        """Embeds the decoder's previous output as its next input."""
        self.out = _mlp(c.width, c.hidden, c.features)
        self.anchor = _mlp(c.audio, c.width, c.part)
        """g: the frozen audio code of a frame -> a lip part (the audio-anchored swap)."""
        self.register_buffer("mean", torch.zeros(c.features))
        self.register_buffer("scale", torch.ones(c.features))
        self.register_buffer("pe", sinusoidal(c.window + 2, c.width), persistent=False)

    def set_normalisation(self, features: Tensor) -> None:
        """Standardise inputs by the training frames' mean and spread (per feature)."""
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0).clamp_min(1e-4))

    def normalise(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.scale

    def _pad(self, x: Tensor, start: int) -> Tensor:
        b = x.shape[0]
        s, e = self.tokens[start].expand(b, 1, -1), self.tokens[start + 1].expand(b, 1, -1)
        seq = torch.cat([s, x, e], 1)
        return seq + self.pe[: seq.shape[1]]

    def encode(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Features [B, T, F] (raw; T <= window) -> (e_l, e_e), each [B, T, width / 2]."""
        h = self.encoder(self._pad(self.inp(self.normalise(features)), 0))[:, 1:-1]
        return h[..., : self.config.part], h[..., self.config.part:]

    def decode(self, lip: Tensor, expression: Tensor) -> Tensor:
        """(e_l, e_e) [B, T, width / 2] -> features [B, T, F] (normalised units), generated one frame at a time,
        each step fed the decoder's own previous outputs."""
        memory = self._pad(torch.cat([lip, expression], -1), 0)
        b, t = lip.shape[:2]
        seq = self.tokens[2].expand(b, 1, -1)
        outs: list[Tensor] = []
        for k in range(t):
            mask = nn.Transformer.generate_square_subsequent_mask(k + 1, device=lip.device)
            h = self.decoder(seq + self.pe[: k + 1], memory, tgt_mask=mask, tgt_is_causal=True)[:, -1:]
            y = self.out(h)
            outs.append(y)
            seq = torch.cat([seq, self.feedback(y)], 1)
        return torch.cat(outs, 1)

    def lip_from_audio(self, audio: Tensor) -> Tensor:
        """g(e_a): [B, T, audio] unit audio codes -> lip parts [B, T, width / 2]."""
        return self.anchor(audio)

    @torch.no_grad()
    def expression_codes(self, features: Tensor, clip_of_row: Tensor | None = None, batch: int = 512) -> Tensor:
        """e_e of every frame of a sequence [N, F]: the centre frame's of the window around it (JEAN supp. 8.4.2)
        -> [N, width / 2]. A window never crosses from one clip into another (``clip_of_row`` [N], rows of a clip
        consecutive; default one clip): at a clip's ends it repeats the clip's first or last frame."""
        w, n = self.config.window, features.shape[0]
        half = w // 2
        rows = torch.arange(n)
        if clip_of_row is None:
            first, last = torch.zeros(n, dtype=torch.long), torch.full((n,), n - 1)
        else:
            c = torch.as_tensor(clip_of_row)
            new = torch.ones(n, dtype=torch.bool)
            new[1:] = c[1:] != c[:-1]
            first = torch.cummax(torch.where(new, rows, 0), 0).values
            end = torch.ones(n, dtype=torch.bool)
            end[:-1] = new[1:]
            last = torch.flip(torch.cummin(torch.flip(torch.where(end, rows, n), [0]), 0).values, [0])
        idx = torch.maximum(torch.minimum(rows[:, None] + torch.arange(-half, w - half)[None], last[:, None]),
                            first[:, None])
        out = []
        for k in range(0, n, batch):
            out.append(self.encode(features[idx[k:k + batch]])[1][:, half])
        return torch.cat(out) if out else features.new_zeros(0, self.config.part)


def swap_inputs(lip: Tensor, expression: Tensor, audio_lip: Tensor, expression_near: Tensor,
                swap: Tensor) -> tuple[Tensor, Tensor]:
    """The decoder's inputs for reconstructing window A: where ``swap`` [B] is set, the lip part from A's audio
    (``audio_lip`` = g(e_a) of A's frames) and the expression part of a window close to A in time
    (``expression_near``); elsewhere A's own (e_l, e_e).

    A nearby window shares A's expression but not its words, and audio carries A's words but not its face: so the
    expression part must hold what stays over seconds and not what the mouth says, which is what the paper's swap
    of one sentence in two emotions enforces the other way round."""
    s = swap[:, None, None]
    return torch.where(s, audio_lip, lip), torch.where(s, expression_near, expression)
