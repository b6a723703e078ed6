"""RAD-NeRF on its own audio net vs on the registered contrastive audio code (``model.head.audio.source``), at an
equal CPU budget, on clips whose people the audio-lip models never saw.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/audio_source.py --tracking-uri URI
        [--clips A.mp4 ...] [--minutes 30] [--holdout 0.25] [--parallel] [--work DIR]

``--tracking-uri`` holds the registered ``audio-lip`` and ``lip-sync-scorer`` champions (``benchmarks/sync.py``
trains them with the three shared clips' people left out); a clip whose identity is among the clips either model
was trained or validated on is refused.

What is measured, per clip (default: the three shared clips):

* A one-identity dataset of the whole clip (cached in ``--work``); its last ``--holdout`` share of frames is held
  out (0.25: 50 of 200 frames, enough for the sync score's -15..15 offsets; the default split's 19 are not).
* Two trainings of the ``cpu`` preset at 256 px, each to ``--minutes`` of training wall-clock with the stages
  sized as in ``benchmarks/train.py`` (head 70%, lips 5%, torso 25%): ``own`` (the head's own audio net, learnt
  from this clip) and ``learnt`` (the registered encoder, fine-tuned at ``lr_audio``). ``--parallel`` trains the
  two side by side, half of the CPUs each, so that both see the same machine load.
* On the held-out frames: PSNR, LPIPS, LMD, and LSE-C / LSE-D / offset of the render and of the ground truth of
  the same frames (``parley evaluate``'s protocol). Then the same frames rendered with their audio shuffled
  (each frame takes the audio of another held-out frame, a fixed permutation) and scored against the true audio:
  ``lse_c_shuffled`` must fall below ``lse_c`` if the mouth follows the audio at all.

Writes ``audio_source_<clip>_<variant>.json`` per run and ``audio_source.json`` in ``--work``. The last line is
``name=value`` pairs of the means over the clips:

    psnr_own=... psnr_learnt=... lmd_own=... lmd_learnt=... lse_c_own=... lse_c_learnt=... lse_c_gt=...
    lse_c_shuffled_own=... lse_c_shuffled_learnt=... minutes=...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED, build_dataset, run_variants, with_steps  # noqa: E402

VARIANTS = ("own", "learnt")
CLIPS = sorted((SHARED / "data" / "clips").glob("*.mp4"))
SOURCE = "models:/audio-lip@champion"
SHUFFLE_SEED = 0


def check_unseen(uri: str, run_id: str, identity: str, what: str) -> None:
    """Stop when ``identity`` had a clip in the training or validation split of the run that made a model."""
    from jobs import tracking

    with tempfile.TemporaryDirectory() as tmp:
        split = json.loads(Path(tracking.client(uri).download_artifacts(run_id, "split.json", tmp)).read_text())
    seen = [c for c in split.get("train_clips", []) + split.get("val_clips", []) if c.split("/")[0] == identity]
    if seen:
        raise SystemExit(f"audio_source.py: the registered {what} saw {identity} ({', '.join(seen)}); train it "
                         "with that identity excluded (benchmarks/sync.py does)")


def scored_renders(trainer: Any, scorer: Any, source: str, audio_from: dict[int, int] | None = None) -> dict:
    """Sync metrics of the held-out frames rendered with their own audio (or frame -> audio frame ``audio_from``),
    scored against their true audio, and of the ground truth."""
    from jobs.eval_sync import SyncEvaluator
    from jobs.train import landmark_fn

    sync = SyncEvaluator(scorer, source)
    detect_pred, detect_gt, close = landmark_fn()
    detect_pred, detect_gt = sync.wrap(detect_pred, detect_gt)
    try:
        for f in trainer.data.val_ids.tolist():
            pred = trainer.render_frame(f, audio_from=(audio_from or {}).get(f))
            pred_u8 = (pred.clamp(0, 1) * 255).round().byte().cpu().numpy()
            gt = trainer.data.images[f]
            detect_pred(pred_u8)
            detect_gt(gt)
            sync.on_frame(f, pred_u8, gt)
    finally:
        close()
    return sync.metrics(trainer.data.audio, np.zeros(len(trainer.data.audio), np.int64))


def run_one(clip: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one variant on one clip; the report row."""
    import torch

    from benchmarks.train import SHARES, Run, budget_steps, replan_to_budget, seconds_per_step, train_with_curve
    from jobs import learnt_audio, tracking
    from jobs.eval_sync import SyncEvaluator
    from jobs.sync_score import load_registered_scorer
    from jobs.train import landmark_fn, load_identity, lpips_module
    from nerf.avatar import evaluate
    from nerf.methods import preset

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    identity = clip.stem
    scorer, scorer_info = load_registered_scorer(uri)
    check_unseen(uri, scorer_info["run_id"], identity, "lip-sync scorer")
    cfg = preset("cpu")
    cfg = replace(cfg, trainer=replace(cfg.trainer, size=args.size))
    pretrained = None
    pinned: dict[str, Any] = {}
    if variant == "learnt":
        cfg, pinned = learnt_audio.pin(learnt_audio.with_source(cfg, args.source), uri)
        check_unseen(uri, pinned["audio_lip_run"], identity, "audio-lip model")
        pretrained = learnt_audio.weights(cfg, uri, "head.audio_net")
    root = build_dataset(clip, args.work)
    data = load_identity(str(root), identity, args.size, holdout=args.holdout)
    lips = lpips_module()
    budget_s = args.minutes * 60.0
    per_step = {s: seconds_per_step(cfg, data, s, lips) for s in ("head", "lips", "torso")}
    cap = {s: getattr(cfg.trainer, s).steps for s in ("head", "lips", "torso")}
    steps = budget_steps(per_step, budget_s, SHARES, cap)
    run = Run(variant, with_steps(cfg, steps["head"], steps["lips"], steps["torso"]))
    print(f"[{identity}/{variant}] {data.n_train} train + {len(data.val_ids)} held-out frames, "
          f"{torch.get_num_threads()} threads: " + ", ".join(f"{s} {per_step[s]:.2f} s/step x {n}"
                                                            for s, n in steps.items()), flush=True)
    trainer = train_with_curve(run, data, lips, budget_s, replan_to_budget(per_step, budget_s, SHARES, cap),
                               pretrained=pretrained)
    trainer.save_checkpoint(args.work / f"audio_source_{identity}_{variant}.pt")
    t = time.perf_counter()
    sync = SyncEvaluator(scorer, f"models:/lip-sync-scorer/{scorer_info['version']}")
    detect_pred, detect_gt, close = landmark_fn()
    try:
        res = evaluate(trainer, lpips=lips, landmarks=sync.wrap(detect_pred, detect_gt), on_frame=sync.on_frame)
    finally:
        close()
    metrics = {**res.metrics, **sync.metrics(data.audio, np.zeros(len(data.audio), np.int64))}
    val = data.val_ids.tolist()
    perm = np.random.default_rng(SHUFFLE_SEED).permutation(len(val))
    shuffled = scored_renders(trainer, scorer, sync.scorer_source, {f: val[int(perm[i])] for i, f in enumerate(val)})
    metrics.update({f"{k}_shuffled": v for k, v in shuffled.items() if k.startswith(("lse_", "sync_offset"))
                    and not k.endswith("_gt")})
    row = {"clip": str(clip), "identity": identity, "variant": variant, "minutes": args.minutes,
           "train_s": run.train_s, "stage_s": run.stage_s, "steps": {s: trainer.stage_config(s).steps for s in steps},
           "threads": torch.get_num_threads(), "n_train": data.n_train, "n_val": len(val), **pinned,
           "scorer": sync.scorer_source, "eval_s": time.perf_counter() - t, "metrics": metrics}
    print(f"[{identity}/{variant}] trained {run.train_s:.0f} s: PSNR {metrics['psnr']:.2f} LMD {metrics['lmd']:.2f} "
          f"LSE-C {metrics.get('lse_c', float('nan')):.3f} (GT {metrics.get('lse_c_gt', float('nan')):.3f}, "
          f"shuffled audio {metrics.get('lse_c_shuffled', float('nan')):.3f})", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True, help="MLflow with the audio-lip and lip-sync-scorer champions")
    ap.add_argument("--clips", nargs="+", type=Path, default=CLIPS)
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-clock of each run (default: 30)")
    ap.add_argument("--holdout", type=float, default=0.25, help="held-out share of each clip's last frames")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--source", default=SOURCE, help="the audio-lip version of the learnt variant")
    ap.add_argument("--parallel", action="store_true", help="train the two variants side by side")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/parley_bench_audio_source"))
    ap.add_argument("--one", nargs=2, metavar=("CLIP", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        clip, variant = Path(args.one[0]), args.one[1]
        run_variants(__file__, clip, [variant], args.work, lambda v: run_one(clip, v, args))
        return 0
    rows = []
    for clip in args.clips:
        if not clip.is_file():
            raise SystemExit(f"audio_source.py: {clip}: no such clip")
        build_dataset(clip, args.work)  # once, before two runs would race to build it
        command = None
        if args.parallel:
            threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
            command = [sys.executable, __file__, "--tracking-uri", args.tracking_uri, "--minutes", str(args.minutes),
                       "--holdout", str(args.holdout), "--size", str(args.size), "--source", args.source,
                       "--threads", str(threads), "--work", str(args.work)]
        rows += run_variants(__file__, clip, list(VARIANTS), args.work,
                             lambda v, clip=clip: run_one(clip, v, args), command)
    (args.work / "audio_source.json").write_text(json.dumps(rows, indent=2, default=float))

    def mean(variant: str, key: str) -> float:
        vals = [r["metrics"].get(key, np.nan) for r in rows if r["variant"] == variant]
        return float(np.nanmean(vals)) if vals else float("nan")

    keys = ("psnr", "lpips", "lmd", "lse_c", "lse_d", "sync_offset", "lse_c_gt", "sync_offset_gt", "lse_c_shuffled")
    print(f"\n{'clip':<34} {'variant':<7} " + " ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print(f"{r['identity']:<34} {r['variant']:<7} "
              + " ".join(f"{r['metrics'].get(k, np.nan):14.3f}" for k in keys))
    print(f"psnr_own={mean('own', 'psnr'):.2f} psnr_learnt={mean('learnt', 'psnr'):.2f} "
          f"lmd_own={mean('own', 'lmd'):.3f} lmd_learnt={mean('learnt', 'lmd'):.3f} "
          f"lse_c_own={mean('own', 'lse_c'):.3f} lse_c_learnt={mean('learnt', 'lse_c'):.3f} "
          f"lse_c_gt={mean('own', 'lse_c_gt'):.3f} lse_c_shuffled_own={mean('own', 'lse_c_shuffled'):.3f} "
          f"lse_c_shuffled_learnt={mean('learnt', 'lse_c_shuffled'):.3f} minutes={args.minutes:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
