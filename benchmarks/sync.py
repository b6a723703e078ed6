"""The audio-lip models and the lip-sync scorer on people they never saw.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/sync.py [--dataset DIR] [--work DIR]
        [--holdout IDENTITY ...] [--preset default] [--segment-s 4] [--no-train --tracking-uri URI]

What is measured:

* A dataset of the shared corpus (31 clips, ~25 people) and the three shared 512 px clips is built once with
  ``parley build-dataset`` into ``--work`` (or ``--dataset`` is used as it is).
* ``parley train-audio`` (Ray Train, MLflow in ``--work``) trains the three models on every identity except the
  held-out ones (default: six corpus people seen in one clip only, and the three shared clips); ``train_min`` is
  its wall-clock.
* The held-out clips are cut into ``--segment-s`` segments (4 s, 100 frames). On each, with the registered scorer:
  ``offset_acc`` = share whose detected offset with the true audio is within +-1 frame; ``shift_acc`` = share of
  (segment, k) whose audio delayed by k frames (k = +-5..12, every k) is detected at k +-1 (``shift_rel_acc``: at
  the segment's own detected offset + k +-1, which leaves out the clip's own AV offset); ``conf_vs_other`` =
  share of ordered pairs of segments of different people where the true audio's LSE-C beats the other person's
  audio laid over the same video (same length). With the audio encoder: ``retrieval_top1`` = share of held-out
  frames whose mouth code picks its own audio window among 32 of the same clip (chance 1/32). A no-swap
  landmark autoencoder (same recipe, swap probability 0) gives the swap check: ``swap_l1`` vs ``swap_l1_noswap``
  (held-out swapped mouths, eye-distance units).

Writes ``sync_benchmark.json`` in ``--work``. The last line is ``name=value`` pairs:

    offset_acc=... shift_acc=... conf_vs_other=... retrieval_top1=... train_min=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED  # noqa: E402

HOLDOUT = ["pcavs_vox2_00098_david_beckham", "retalking_face2_eric_swalwell", "mimictalk_may_5s",
           "styletalk_ronald_reagan", "liveportrait_d20_young_asian_male_film",
           "pcavs_vox2_681100216_neil_patrick_harris", "RD_Radio2_000", "WDA_BobMenendez_000",
           "WDA_AlexandriaOcasioCortez_000"]
SHIFTS = [k for k in range(5, 13)] + [-k for k in range(5, 13)]


def build(work: Path) -> Path:
    out = work / "dataset"
    if (out / "clips").is_dir():
        return out
    cmd = [str(Path(sys.executable).parent / "parley"), "build-dataset", "-i", str(SHARED / "data/corpus/manifest.csv"),
           "-i", str(SHARED / "data/clips"), "-o", str(out), "--no-qc"]
    subprocess.run(cmd, check=True)
    return out


def segments(spans: np.ndarray, length: int) -> list[tuple[int, int, int]]:
    """(clip, start row, end row) of consecutive segments of ``length`` rows (a shorter clip is one segment)."""
    out = []
    for c, (s, e) in enumerate(spans):
        n = max(1, (e - s) // length)
        out += [(c, s + i * length, s + (i + 1) * length if i < n - 1 else e) for i in range(n)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/parley_bench_sync"))
    ap.add_argument("--holdout", nargs="*", default=HOLDOUT)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--segment-s", type=float, default=4.0)
    ap.add_argument("--no-train", action="store_true", help="use the champions already in --tracking-uri")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))
    args.work.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or build(args.work)
    uri = args.tracking_uri or f"sqlite:///{args.work / 'mlflow.db'}"

    import torch

    from jobs.audio_lip_data import load_audio_lip_data
    from jobs.registry import fetch_checkpoint
    from jobs.train_audio import AudioTrainJob, run_train_audio
    from nerf.audio_lip import checkpoint as ck
    from nerf.audio_lip import train as T
    from nerf.audio_lip.data import canonical_landmarks
    from nerf.audio_lip.scoring import SyncScoreError, retrieval_top1, swap_error, sync_score
    from pipelines.dataset import Dataset

    train_min = float("nan")
    if not args.no_train:
        out = run_train_audio(AudioTrainJob(dataset=str(dataset), tracking_uri=uri, exclude=list(args.holdout),
                                            preset=args.preset, storage=str(args.work / "ray"),
                                            cache_dir=str(args.work / "cache")))
        train_min = out["train_min"]
        print(f"train-audio: {out['train_min']:.1f} min, held-out-clip metrics {out['metrics']}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = ck.load_audio_lip(fetch_checkpoint(uri, "models:/audio-lip@champion", tmp,
                                                    reader=ck.load_audio_lip)[0])
        scorer, meta = ck.load_scorer(fetch_checkpoint(uri, "models:/lip-sync-scorer@champion", f"{tmp}/s",
                                                       reader=ck.load_scorer)[0])
    names = Dataset(str(dataset)).identity_names()
    held = load_audio_lip_data(str(dataset), exclude=tuple(n for n in names if n not in set(args.holdout)),
                               cache_dir=str(args.work / "cache"))
    seen = set(meta["train_clips"])
    assert not seen & set(held.clip_ids), "a held-out clip was trained on"
    segs = segments(held.spans(), int(round(args.segment_s * 25)))
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    offsets: list[int] = []
    gt, shifted, relative, confs = [], [], [], {}
    for i, (_c, s, e) in enumerate(segs):
        idx = np.arange(s, e)
        try:
            r = sync_score(scorer, held.crops[idx], held.mel[idx], held.valid[idx])
        except SyncScoreError:
            continue
        gt.append(abs(r.offset) <= 1)
        offsets.append(r.offset)
        confs[i] = r.lse_c
        for k in SHIFTS:
            src = idx - k  # frame t hears what was said at t - k
            ok = (src >= s) & (src < e)
            r2 = sync_score(scorer, held.crops[idx], held.mel[np.clip(src, s, e - 1)], held.valid[idx] & ok)
            shifted.append(abs(r2.offset - k) <= 1)
            relative.append(abs(r2.offset - r.offset - k) <= 1)  # the shift tracked from the clip's own offset
    wins = []
    for i, (ci, si, ei) in enumerate(segs):
        for j, (cj, sj, ej) in enumerate(segs):
            if i not in confs or j not in confs or held.clip_identity[ci] == held.clip_identity[cj]:
                continue
            n = min(ei - si, ej - sj)
            try:
                own = sync_score(scorer, held.crops[si:si + n], held.mel[si:si + n], held.valid[si:si + n]).lse_c
                other = sync_score(scorer, held.crops[si:si + n], held.mel[sj:sj + n],
                                   held.valid[si:si + n] & held.valid[sj:sj + n]).lse_c
            except SyncScoreError:
                continue
            wins.append(own > other)
    score_s = time.perf_counter() - t0
    canon = canonical_landmarks(held.landmarks, bundle.template)
    retrieval = retrieval_top1(bundle.lae, bundle.encoder, canon, held.mel, held.spans())
    swap = swap_error(bundle.lae, canon, held.spans(), held.valid)
    # the swap check: the same recipe without swapping, on the same training clips
    train = load_audio_lip_data(str(dataset), exclude=tuple(args.holdout), cache_dir=str(args.work / "cache"))
    train = train.subset([c for c in meta["train_clips"] if c in set(train.clip_ids)])
    noswap = T.train_landmark_ae(canonical_landmarks(train.landmarks, bundle.template), train,
                                 T.LandmarkAETrain(swap=0.0))
    swap_noswap = swap_error(noswap, canon, held.spans(), held.valid)
    result = {"offset_acc": float(np.mean(gt)), "shift_acc": float(np.mean(shifted)),
              "shift_rel_acc": float(np.mean(relative)), "offsets": offsets,
              "conf_vs_other": float(np.mean(wins)), "retrieval_top1": retrieval, "retrieval_chance": 1 / 32,
              "train_min": train_min, "swap_l1": swap["swap_l1"], "swap_l1_noswap": swap_noswap["swap_l1"],
              "recon_l1": swap["recon_l1"], "segments": len(gt), "shift_trials": len(shifted), "pairs": len(wins),
              "heldout_identities": args.holdout, "scoring_s": score_s, "dataset": str(dataset),
              "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    (args.work / "sync_benchmark.json").write_text(json.dumps(result, indent=2))
    print(f"segments={len(gt)} shift_trials={len(shifted)} pairs={len(wins)} retrieval_chance={1 / 32:.4f} "
          f"shift_rel_acc={result['shift_rel_acc']:.4f} offsets={offsets} "
          f"swap_l1={swap['swap_l1']:.5f} swap_l1_noswap={swap_noswap['swap_l1']:.5f}")
    print(" ".join(f"{k}={result[k]:.4f}" if k != "train_min" else f"{k}={result[k]:.2f}"
                   for k in ("offset_acc", "shift_acc", "conf_vs_other", "retrieval_top1", "train_min")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
