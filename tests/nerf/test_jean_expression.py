"""JEAN's expression transformer: shapes, the audio-anchored swap, and that training takes expression apart from
speech on data where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerf.jean.expression import ExpressionTransformer, ExpressionTransformerConfig, swap_inputs
from nerf.jean.expression_train import (
    ExpressionDataError,
    ExpressionTrain,
    expression_losses,
    partners,
    probe_r2,
    train_expression,
    window_starts,
)

TINY = ExpressionTransformerConfig(features=12, width=32, hidden=64, layers=1, heads=4, feedforward=64, window=4,
                                   audio=8, dropout=0.0)


def test_shapes_and_codes_per_frame():
    torch.manual_seed(0)
    m = ExpressionTransformer(TINY).eval()
    x = torch.randn(5, 4, 12)
    lip, expr = m.encode(x)
    assert lip.shape == expr.shape == (5, 4, 16)
    assert m.decode(lip, expr).shape == (5, 4, 12)
    seq = torch.randn(9, 12)
    codes = m.expression_codes(seq)
    assert codes.shape == (9, 16)
    # frame k's code is the centre of the window around k: it moves when a frame inside that window moves
    moved = seq.clone()
    moved[8] += 5.0
    changed = (m.expression_codes(moved) - codes).abs().sum(-1) > 1e-6
    assert changed[8] and changed[7] and not changed[:5].any()
    # windows stay in their clip: moving the first clip's last frame leaves the second clip's codes alone
    clips = torch.tensor([0] * 5 + [1] * 4)
    per_clip = m.expression_codes(seq, clips)
    moved = seq.clone()
    moved[4] += 5.0
    changed = (m.expression_codes(moved, clips) - per_clip).abs().sum(-1) > 1e-6
    assert changed[4] and not changed[5:].any()
    assert torch.allclose(per_clip[5:], m.expression_codes(seq[5:]))


def test_decoder_runs_on_its_own_outputs():
    """Each output frame depends on the codes, never on a target: the same codes decode the same features."""
    torch.manual_seed(0)
    m = ExpressionTransformer(TINY).eval()
    lip, expr = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    a, b = m.decode(lip, expr), m.decode(lip, expr)
    assert torch.equal(a, b)
    assert not torch.allclose(m.decode(lip, expr + 1.0), a)


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        ExpressionTransformerConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="near"):
        ExpressionTrain(near=(5, 2))


def test_swap_inputs_take_audio_lips_and_nearby_expression():
    lip, expr, g, near = (torch.full((2, 3, 4), float(v)) for v in (1, 2, 3, 4))
    lip_in, expr_in = swap_inputs(lip, expr, g, near, torch.tensor([True, False]))
    assert (lip_in[0] == 3).all() and (expr_in[0] == 4).all()
    assert (lip_in[1] == 1).all() and (expr_in[1] == 2).all()


def test_windows_stay_in_one_clip_and_partners_are_near():
    clip = np.repeat([0, 1, 2], [30, 40, 3])
    starts = window_starts(clip, 4)
    assert len(starts) == 27 + 37  # the 3-frame clip has no window
    assert all(clip[s] == clip[s + 3] for s in starts)
    p = partners(starts, clip, (8, 12), np.random.default_rng(0))
    assert (clip[p] == clip[starts]).all()
    d = np.abs(p - starts)
    assert ((d >= 8) & (d <= 12)).all()


def test_too_few_frames_is_a_clear_error():
    with pytest.raises(ExpressionDataError, match="windows of 4 frames"):
        train_expression(np.zeros((4, 12), np.float32), np.zeros((4, 8), np.float32), np.zeros(4), TINY,
                         ExpressionTrain(steps=1))


def test_probe_r2():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(200, 5))
    y = c @ rng.normal(size=(5, 2))
    assert probe_r2(c[:150], y[:150], c[150:], y[150:]) > 0.99
    assert probe_r2(c[:150], rng.normal(size=150), c[150:], rng.normal(size=50)) < 0.1
    # a target kept in a direction of tiny variance: found by the code -> target probe, but a tiny share of the
    # code's variance (the pooled target -> code probe)
    t = rng.normal(size=200)
    code = np.concatenate([rng.normal(size=(200, 4)), 1e-3 * t[:, None]], 1)
    assert probe_r2(code[:150], t[:150], code[150:], t[150:], ridge=1e-9) > 0.99
    assert probe_r2(t[:150], code[:150], t[150:], code[150:], pooled=True) < 0.01


def test_training_reconstructs_and_separates_expression_from_speech():
    """Features mix a speech part (a function of the audio code) and a slow expression part through a random
    rotation. Training lowers the held-out clip's reconstruction error, plain and swapped (the audio's lip part
    and a nearby window's expression part), well below the untrained model's, and takes the two apart."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(0)
    n = 800
    audio = rng.normal(size=(n, 8)).astype(np.float32)
    speech = np.tanh(audio @ rng.normal(size=(8, 6)))
    expression = gaussian_filter1d(rng.normal(size=(n, 6)), 10, axis=0)
    expression /= expression.std(0)
    rot = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    feats = (np.concatenate([speech, expression], 1) @ rot).astype(np.float32)
    clip = np.repeat(np.arange(4), n // 4)
    train = clip < 3
    cfg = ExpressionTrain(steps=600, batch=32, lr=2e-3, final_lr=2e-4, near=(4, 8))
    x, a = torch.from_numpy(feats), torch.from_numpy(audio)
    starts = np.nonzero(~train)[0][0] + window_starts(clip[~train], TINY.window)
    near = partners(starts, clip, cfg.near, np.random.default_rng(1))

    def errors(model: ExpressionTransformer) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            return tuple(float(expression_losses(model, x, a, starts, near, cfg, swap=s)["recon"])
                         for s in (False, True))  # type: ignore[return-value]

    torch.manual_seed(0)
    untrained = ExpressionTransformer(TINY)
    untrained.set_normalisation(x[torch.from_numpy(train)])
    before = errors(untrained)
    model = train_expression(feats[train], audio[train], clip[train], TINY, cfg)
    trained = errors(model)
    assert trained[0] < 0.85 * before[0] and trained[1] < 0.9 * before[1], (before, trained)
    # and the expression part owes its variance to the expression, not to the speech of its frame (the share of
    # e_e's variance a linear map of each explains on the held-out clip)
    e = model.expression_codes(x).numpy()
    expr_share = probe_r2(expression[train], e[train], expression[~train], e[~train], pooled=True)
    speech_share = probe_r2(speech[train], e[train], speech[~train], e[~train], pooled=True)
    print(f"held-out variance share of e_e: expression {expr_share:.3f}, speech {speech_share:.3f}")
    assert speech_share < 0.05 and expr_share > speech_share + 0.1, (expr_share, speech_share)
