"""The audio-lip models' parts on synthetic inputs: pose-free landmarks, the swap, samplers, the scoring protocol,
augmentation and checkpoint files. Training on real clips is in tests/jobs/test_train_audio.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerf.audio_lip import checkpoint as ck
from nerf.audio_lip import train as T
from nerf.audio_lip.augment import MelAugment, augment_mel
from nerf.audio_lip.data import MOUTH, AudioLipData, canonical_landmarks, lae_pairs, rigid_template, window_starts
from nerf.audio_lip.models import AudioLipEncoder, LandmarkAE, SyncScorer, swap_targets
from nerf.audio_lip.scoring import MAX_OFFSET, SyncScoreError, offset_distances, sync_score


def _face(n: int, rng: np.random.Generator) -> np.ndarray:
    """n frames of a plausible 68-point face whose mouth opens and closes."""
    base = rng.normal(0, 1, (68, 2)) * 5 + np.array([256, 300])
    base[36:42] += [-40, -60]
    base[42:48] += [40, -60]
    lms = np.repeat(base[None], n, 0)
    lms[:, 57:60, 1] += 10 * np.sin(np.arange(n) / 3)[:, None]
    return lms


def _similarity(lms: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return scale * lms @ np.array([[c, s], [-s, c]]) + np.asarray(shift)


def test_canonical_landmarks_remove_head_roll_scale_and_position():
    rng = np.random.default_rng(0)
    lms = _face(20, rng)
    tpl = rigid_template(lms)
    a = canonical_landmarks(lms, tpl)
    b = canonical_landmarks(_similarity(lms, 0.3, 1.7, (40, -25)), tpl)
    assert a.shape == (20, 51, 2)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # the mouth still moves: speech is not aligned away
    assert a[:, MOUTH].std(0).max() > 0.05


def test_swap_targets_exchange_only_the_mouth_of_swapped_rows():
    a, b = torch.zeros(3, 51, 2), torch.ones(3, 51, 2)
    ta, tb = swap_targets(a, b, torch.tensor([True, False, True]))
    assert torch.equal(ta[0, MOUTH], b[0, MOUTH]) and torch.equal(ta[0, : MOUTH[0]], a[0, : MOUTH[0]])
    assert torch.equal(tb[2, MOUTH], a[2, MOUTH]) and torch.equal(ta[1], a[1]) and torch.equal(tb[1], b[1])


def _data(lengths: list[int], invalid: tuple[int, ...] = ()) -> AudioLipData:
    n = sum(lengths)
    clip = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(k) for k in lengths])
    valid = np.ones(n, bool)
    valid[list(invalid)] = False
    rng = np.random.default_rng(1)
    return AudioLipData(np.concatenate([_face(k, rng) for k in lengths]).astype(np.float32),
                        rng.random((n, 16, 80), dtype=np.float32), rng.integers(0, 255, (n, 48, 96), np.uint8),
                        clip, frame, valid, [f"c{i}" for i in range(len(lengths))],
                        ["a", "a", "b"][: len(lengths)])


def test_window_starts_stay_inside_one_clip_and_skip_invalid_frames():
    d = _data([10, 6], invalid=(4,))
    starts = window_starts(d, 5)
    # clip 0: frames 0-3 valid, 4 invalid, 5-9 valid -> one window at 5; clip 1 (rows 10-15): 10, 11
    assert starts.tolist() == [5, 10, 11]


def test_pairs_and_negatives_respect_clips_and_identities():
    d = _data([12, 12, 12])
    rng = np.random.default_rng(0)
    a, b = lae_pairs(d.spans(), d.valid, 500, rng)
    assert np.array_equal(d.clip[a], d.clip[b])
    rows = np.arange(12)  # clip 0 (identity a): its other-clip negatives come from clip 1, the other clip of a
    assert set(d.clip[T.other_clip_rows(rows, d, rng)]) == {1}
    assert set(d.clip[T.other_clip_rows(np.arange(24, 36), d, rng)]) <= {0, 1}


def test_subset_renumbers_clips():
    d = _data([5, 7, 4])
    s = d.subset(["c2", "c0"])
    assert s.clip_ids == ["c0", "c2"] and len(s) == 9 and s.clip.tolist() == [0] * 5 + [1] * 4


def test_offset_distances_find_a_known_shift():
    rng = np.random.default_rng(0)
    t = 80
    v = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(t, 16))).float(), dim=1)
    for k in (0, 4, -7):
        a = torch.roll(v, k, 0)  # a[t + k] = v[t]: the audio lags by k
        d, used = offset_distances(v, a, np.ones(t, bool))
        assert int(d.argmin()) - MAX_OFFSET == k and used == t - 2 * MAX_OFFSET


class _Oracle(SyncScorer):
    """A scorer whose embeddings are exact functions of the inputs: a window's mean brightness and its audio's
    mean level, each spread over two dimensions. Lets the protocol (windows, offsets, sign) be checked exactly."""

    def embed_video(self, crops):
        x = crops.float().mean((2, 3))[:, 2:3] / 255.0
        return torch.nn.functional.normalize(torch.cat([torch.cos(6 * x), torch.sin(6 * x)], 1), dim=1)

    def embed_audio(self, mel):
        x = mel.float().mean((1, 2))[:, None]
        return torch.nn.functional.normalize(torch.cat([torch.cos(6 * x), torch.sin(6 * x)], 1), dim=1)


def test_sync_score_detects_delayed_audio_with_the_published_sign():
    rng = np.random.default_rng(0)
    t = 120
    signal = rng.random(t).astype(np.float32)
    crops = np.repeat((signal * 255).astype(np.uint8)[:, None, None], 48, 1).repeat(96, 2)
    mel = np.repeat(signal[:, None, None], 16, 1).repeat(80, 2)
    scorer = _Oracle()
    assert sync_score(scorer, crops, mel).offset == 0
    delayed = np.concatenate([np.zeros((6, 16, 80), np.float32), mel[:-6]])  # frame t hears t - 6
    r = sync_score(scorer, crops, delayed)
    assert r.offset == 6 and r.lse_c > 0 and r.lse_d < np.median(r.distances)
    assert r.line() == f"lse_c={r.lse_c:.4f} lse_d={r.lse_d:.4f} offset=6"
    with pytest.raises(SyncScoreError, match="at least"):
        sync_score(scorer, crops[:30], mel[:30])
    with pytest.raises(SyncScoreError, match="show a mouth"):
        sync_score(scorer, crops, mel, valid=np.arange(t) % 2 == 0)


def test_augment_mel_keeps_range_and_p0_is_identity():
    mel = torch.rand(8, 16, 80)
    out = augment_mel(mel, MelAugment(), torch.Generator().manual_seed(0))
    assert out.shape == mel.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, mel)
    assert torch.equal(augment_mel(mel, MelAugment(p=0.0), torch.Generator().manual_seed(0)), mel)


def test_swap_training_lowers_the_loss_and_models_have_the_paper_shapes():
    d = _data([40, 40])
    tpl = rigid_template(d.landmarks)
    c = canonical_landmarks(d.landmarks, tpl)
    losses: list[float] = []
    lae = T.train_landmark_ae(c, d, T.LandmarkAETrain(epochs=30, batch=64),
                              on_epoch=lambda e, m: losses.append(m["lae_loss"]))
    assert losses[-1] < 0.5 * losses[0]
    face, mouth = lae.encode(torch.from_numpy(c[:4]))
    assert face.shape == mouth.shape == (4, 64)
    assert AudioLipEncoder()(torch.rand(3, 16, 80)).shape == (3, 64)
    s = SyncScorer().eval()
    assert s.embed_video(torch.randint(0, 255, (2, 5, 48, 96))).shape == (2, 128)
    assert s.embed_audio(torch.rand(2, 10, 80)).norm(dim=1).allclose(torch.ones(2))


def test_checkpoints_round_trip_and_refuse_other_files(tmp_path):
    lae, enc = LandmarkAE().eval(), AudioLipEncoder().eval()
    lae.set_normalisation(torch.rand(10, 51, 2))
    tpl = np.random.default_rng(0).random((68, 2)).astype(np.float32)
    path = ck.save(ck.AudioLipBundle(lae, enc, tpl, {"dataset": "d"}).state(), tmp_path / "a.pt")
    back = ck.load_audio_lip(path)
    x = torch.rand(2, 51, 2)
    assert torch.allclose(back.lae.encode(x)[1], lae.encode(x)[1]) and back.meta == {"dataset": "d"}
    mel = torch.rand(2, 16, 80)
    assert torch.allclose(back.encoder(mel), enc(mel)) and np.array_equal(back.template, tpl)
    scorer = SyncScorer().eval()
    spath = ck.save(ck.scorer_state(scorer, {"m": 1}), tmp_path / "s.pt")
    s2, meta = ck.load_scorer(spath)
    crops = torch.randint(0, 255, (2, 5, 48, 96))
    assert meta == {"m": 1} and torch.allclose(s2.embed_video(crops), scorer.embed_video(crops))
    with pytest.raises(ck.AudioLipCheckpointError, match="expected 'parley-sync-scorer/1'"):
        ck.load_scorer(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.AudioLipCheckpointError, match="junk.pt: not a readable checkpoint"):
        ck.load_audio_lip(tmp_path / "junk.pt")
