"""JEAN on one clip at an equal CPU budget: the full model, the two ablations of its Table 2, and RAD-NeRF.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/jean.py [--clip CLIP] [--minutes 30]
        [--tracking-uri URI] [--holdout 0.25] [--parallel] [--work DIR] [--dataset D --identity X]
        [--variants jean no_ssl no_transformer radnerf jean_crop] [--features geometric|crop|...]

* A one-identity dataset of the whole clip (cached in ``--work``); its last ``--holdout`` share of frames is held
  out (the expression source and the poses of the cross-driving).
* The ``audio-lip`` and ``lip-sync-scorer`` champions of ``--tracking-uri`` (default: ``--work``/mlflow.db); when
  none is registered there, ``parley train-audio`` trains them on the clip's dataset first (one clip is a poor
  corpus: ``benchmarks/sync.py`` trains them over many people, the clip's left out).
* Four trainings of the ``cpu`` presets at 256 px, each ``--minutes`` of wall-clock with the stages sized as in
  ``benchmarks/train.py`` (JEAN's expression transformer trains inside that budget): ``radnerf`` (its own audio
  net), ``jean``, ``no_ssl`` (JEAN with RAD-NeRF's own audio net: Table 2 without the contrastive encoder) and
  ``no_transformer`` (JEAN with the raw features through a thin MLP: Table 2 without the transformer).
  ``--parallel`` trains two at a time, half the CPUs each. ``jean_crop`` (run when named) is ``jean`` on the
  self-supervised face-crop features; ``--features`` sets the features of every JEAN variant.
* Self-driven held-out frames (their own audio, expression and pose): PSNR, SSIM, LPIPS, LSE-C beside the ground
  truth's, and Exp-Diff (``jobs.eval_expression``).
* Cross-driven held-out frames: the audio of the stretch just before the held-out one (A; with ``--dataset`` and an
  identity of several clips, the first clip's first frames), the expression and pose of each held-out frame (B).
  ``lse_c_cross`` scores the mouth against A's audio; ``exp_diff_cross`` (and its ``_upper``/``_mouth`` parts)
  compares the face with B's; face-crop PSNR/SSIM/LPIPS against B. The control renders
  the same frames with A's expression too: ``exp_diff_upper_control`` must be above ``exp_diff_upper_cross`` if
  the face follows the expression source (``exp_diff_sources_upper``, A's real frames against B's, is the room there
  is between the two); ``mouth_moved`` (Exp-Diff of the mouth between the cross-driven and
  self-driven renders) is above 0 when the new audio moves the mouth.

Writes ``jean_<clip>_<variant>.json`` per run and ``jean.json`` in ``--work``. The last line:

    psnr= lpips= lse_c= lse_c_gt= exp_diff= ablation_lse_c_no_ssl= ablation_exp_diff_no_transformer=
    radnerf_psnr= lse_c_cross= exp_diff_upper_cross= exp_diff_upper_control= upper_gain_ci=[lo,hi] minutes=

``upper_gain_ci`` is a bootstrap 95% interval of the mean per-frame gain of the upper-face Exp-Diff over the
control: above 0 when the face follows B's expression rather than A's. ``--eval-only`` evaluates the checkpoints
an earlier run left in ``--work`` again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    DEFAULT_CLIP,
    SHARED,
    build_dataset,
    ensure_audio_models,
    report_path,
    run_variants,
    with_steps,
)

VARIANTS = ("jean", "no_ssl", "no_transformer", "radnerf")
OPTIONAL = ("jean_crop",)
"""Variants run only when named: ``jean_crop`` is JEAN on the self-supervised face-crop features."""
SOURCE = "models:/audio-lip@champion"


def recipe(variant: str, size: int, features: str | None = None) -> Any:
    from nerf.methods import preset

    cfg = preset("cpu", "radnerf" if variant == "radnerf" else "jean")
    if variant != "radnerf" and (features or variant == "jean_crop"):
        cfg = replace(cfg, model=replace(cfg.model, features="crop" if variant == "jean_crop" else features))
    if variant == "no_ssl":
        cfg = replace(cfg, model=replace(cfg.model, ssl_audio=False))
    elif variant == "no_transformer":
        cfg = replace(cfg, model=replace(cfg.model, expression_mode="features"))
    return replace(cfg, trainer=replace(cfg.trainer, size=size))


def render_set(trainer: Any, frames: list[int], **options: Any) -> list[np.ndarray]:
    return [(trainer.render_frame(f, **{k: (v[i] if isinstance(v, list) else v) for k, v in options.items()})
             .clamp(0, 1) * 255).round().byte().cpu().numpy() for i, f in enumerate(frames)]


def sync_of(scorer: Any, source: str, preds: list[np.ndarray], gts: list[np.ndarray], frames: list[int],
            audio: np.ndarray) -> dict[str, float]:
    """LSE-C etc. of rendered frames (and the ground truth's) against ``audio`` rows at ``frames``."""
    from jobs.eval_sync import SyncEvaluator
    from jobs.train import landmark_fn

    sync = SyncEvaluator(scorer, source)
    dp, dg, close = landmark_fn()
    dp, dg = sync.wrap(dp, dg)
    try:
        for f, p, g in zip(frames, preds, gts, strict=True):
            dp(p)
            dg(g)
            sync.on_frame(f, p, g)
    finally:
        close()
    return sync.metrics(audio, np.zeros(len(audio), np.int64))


def audio_source_frames(data: Any) -> list[int]:
    """A's frame for each held-out frame: with several clips, the first clip's first frames (another recording of
    the same person); else the stretch just before the held-out one, as long."""
    val = data.val_ids.tolist()
    clips = np.asarray(data.clip_ids)
    if clips[0] != clips[val[0]]:
        first = np.nonzero(clips == clips[0])[0]
        return [int(first[k % len(first)]) for k in range(len(val))]
    return [f - len(val) for f in val]


def train_variant(variant: str, identity: str, root: Path, uri: str, lips: Any,
                  args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Train one variant to the budget (JEAN's transformer inside it); the trainer and what to report of the run."""
    import torch

    from benchmarks.train import SHARES, Run, budget_steps, replan_to_budget, seconds_per_step, train_with_curve
    from jobs import learnt_audio
    from jobs.jean_data import frame_features
    from jobs.train import load_identity
    from nerf import methods

    cfg, pinned = learnt_audio.pin(recipe(variant, args.size, args.features), uri)
    data = load_identity(str(root), identity, args.size, holdout=args.holdout)
    t0 = time.perf_counter()
    pretrained = learnt_audio.weights(cfg, uri, "head.audio_net") if pinned else {}
    model_cls = methods.get(cfg.method).model
    if model_cls.extra_inputs:
        feats = frame_features(str(root), identity, data.clip_ids, data.frame_index, cfg.model.features)
        pretrained = model_cls.prepare(cfg, data, {"expression_features": feats}, pretrained)
    prepare_s = time.perf_counter() - t0
    budget_s = max(args.minutes * 60.0 - prepare_s, 60.0)
    per_step = {s: seconds_per_step(cfg, data, s, lips) for s in ("head", "lips", "torso")}
    cap = {s: getattr(cfg.trainer, s).steps for s in ("head", "lips", "torso")}
    steps = budget_steps(per_step, budget_s, SHARES, cap)
    run = Run(variant, with_steps(cfg, steps["head"], steps["lips"], steps["torso"]))
    print(f"[{identity}/{variant}] {data.n_train} train + {len(data.val_ids)} held-out frames, prepared in "
          f"{prepare_s:.0f} s; " + ", ".join(f"{s} {per_step[s]:.2f} s/step x {n}" for s, n in steps.items()),
          flush=True)
    torch.manual_seed(0)
    trainer = train_with_curve(run, data, lips, budget_s, replan_to_budget(per_step, budget_s, SHARES, cap),
                               pretrained=pretrained or None)
    trainer.save_checkpoint(args.work / f"jean_{identity}_{variant}.pt")
    return trainer, {**pinned, "prepare_s": prepare_s, "train_s": run.train_s,
                     "steps": {s: trainer.stage_config(s).steps for s in steps}}


def run_one(clip: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one variant; the report row."""
    import torch

    from jobs import tracking
    from jobs.eval_expression import (
        coefficient_groups,
        exp_diff_metrics,
        face_crop_metrics,
        fit_expressions,
        paired,
        per_frame_diff,
    )
    from jobs.sync_score import load_registered_scorer
    from jobs.train import load_identity, lpips_module
    from workers.morphable import FaceModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    if args.dataset:
        identity, root = args.identity, Path(args.dataset)
    else:
        identity, root = clip.stem, build_dataset(clip, args.work)
    scorer, scorer_info = load_registered_scorer(uri)
    lips = lpips_module()
    ckpt_path = args.work / f"jean_{identity}_{variant}.pt"
    if args.eval_only:  # the trained checkpoint of an earlier run, evaluated again
        from nerf.checkpoint import load_checkpoint
        from nerf.config import config_from_json
        from nerf.trainer import Trainer

        if not ckpt_path.is_file():
            raise ValueError(f"--eval-only: no {ckpt_path}")
        cfg = config_from_json(load_checkpoint(ckpt_path)["config"])
        data = load_identity(str(root), identity, args.size, holdout=args.holdout)
        trainer = Trainer(cfg, data, lpips=lips)
        trainer.load_checkpoint(ckpt_path)
        old = report_path(args.work, __file__, clip, variant)
        info = {k: v for k, v in json.loads(old.read_text()).items() if k != "metrics"} if old.is_file() else {}
    else:
        trainer, info = train_variant(variant, identity, root, uri, lips, args)
    data = trainer.data
    t = time.perf_counter()
    val = data.val_ids.tolist()
    source = audio_source_frames(data)
    gts = [data.images[f] for f in val]
    own = render_set(trainer, val)
    jean = variant != "radnerf"
    cross = render_set(trainer, val, audio_from=source)
    control = render_set(trainer, val, audio_from=source, expression_from=source) if jean else cross
    src = f"models:/lip-sync-scorer/{scorer_info['version']}"
    m: dict[str, Any] = {}
    from nerf.metrics import psnr, ssim

    def mean_img(fn: Any, preds: list[np.ndarray]) -> float:
        return float(np.mean([fn(torch.from_numpy(p).float() / 255, torch.from_numpy(g).float() / 255)
                              for p, g in zip(preds, gts, strict=True)]))

    m["psnr"], m["ssim"] = mean_img(psnr, own), mean_img(ssim, own)
    with torch.no_grad():
        m["lpips"] = float(np.mean([float(lips(torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255,
                                               torch.from_numpy(g).permute(2, 0, 1)[None].float() / 255)[0])
                                    for p, g in zip(own, gts, strict=True)]))
    m.update(sync_of(scorer, src, own, gts, val, data.audio))
    # A's audio track laid under B's frames, neighbours included, so that every offset searched hears A
    shift = np.arange(len(data.audio)) - val[0] + source[0]
    inside = (shift >= 0) & (shift < len(data.audio))
    cross_audio = data.audio.copy()
    cross_audio[inside] = data.audio[shift[inside]]
    m.update({f"{k}_cross": v for k, v in sync_of(scorer, src, cross, gts, val, cross_audio).items()
              if not k.endswith("_gt")})
    names = FaceModel().exp_names
    srcs = [data.images[f] for f in source]
    fit = {k: fit_expressions(v) for k, v in (("gt", gts), ("own", own), ("cross", cross), ("control", control),
                                                ("source", srcs))}
    # how far A's real expression is from B's: the room a render has to follow B rather than A
    m.update(exp_diff_metrics(fit["source"], fit["gt"], names, "exp_diff_sources"))
    m.update(exp_diff_metrics(fit["own"], fit["gt"], names))
    m.update(exp_diff_metrics(fit["cross"], fit["gt"], names, "exp_diff_cross"))
    m.update(exp_diff_metrics(fit["control"], fit["gt"], names, "exp_diff_control"))
    m["mouth_moved"] = exp_diff_metrics(fit["cross"], fit["own"], names, "x")["x_mouth"]
    upper = coefficient_groups(names)["upper"]
    if jean:  # does the face follow B's expression more than A's, frame by frame?
        vs = paired(per_frame_diff(fit["cross"], fit["gt"], upper), per_frame_diff(fit["control"], fit["gt"], upper))
        m.update({f"upper_vs_control_{k}": v for k, v in vs.items()})
    crops = [face_crop_metrics(p, g, data.face_rect[f], lips) for p, g, f in zip(cross, gts, val, strict=True)]
    m.update({f"{k}_cross": float(np.mean([c[k] for c in crops])) for k in crops[0]})
    row = {**info, "clip": str(clip), "identity": identity, "variant": variant, "minutes": args.minutes,
           "threads": torch.get_num_threads(), "n_train": data.n_train, "n_val": len(val), "scorer": src,
           "eval_s": time.perf_counter() - t, "metrics": m}
    print(f"[{identity}/{variant}] PSNR {m['psnr']:.2f} LSE-C {m.get('lse_c', np.nan):.3f} (GT "
          f"{m.get('lse_c_gt', np.nan):.3f}) Exp-Diff cross {m['exp_diff_cross']:.4f} upper "
          f"{m['exp_diff_cross_upper']:.4f} vs control {m['exp_diff_control_upper']:.4f}", flush=True)
    return row


def summary(rows: list[dict[str, Any]], minutes: float) -> None:
    """The table of the variants and the last line."""
    by = {r["variant"]: r["metrics"] for r in rows}
    if "jean" not in by and "jean_crop" in by:  # the full model of this run is JEAN on the crop features
        by["jean"] = by["jean_crop"]

    def get(variant: str, key: str) -> float:
        return float(by.get(variant, {}).get(key, np.nan))

    keys = ("psnr", "lpips", "lse_c", "lse_c_gt", "exp_diff", "lse_c_cross", "exp_diff_cross",
            "exp_diff_cross_upper", "exp_diff_control_upper", "exp_diff_sources_upper", "upper_vs_control_wins",
            "mouth_moved",
            "face_psnr_cross")
    print(f"\n{'variant':<15} " + " ".join(f"{k:>22}" for k in keys))
    for r in rows:
        print(f"{r['variant']:<15} " + " ".join(f"{r['metrics'].get(k, np.nan):22.4f}" for k in keys))
    print(f"psnr={get('jean', 'psnr'):.2f} lpips={get('jean', 'lpips'):.4f} lse_c={get('jean', 'lse_c'):.4f} "
          f"lse_c_gt={get('jean', 'lse_c_gt'):.4f} exp_diff={get('jean', 'exp_diff_cross'):.5f} "
          f"ablation_lse_c_no_ssl={get('no_ssl', 'lse_c'):.4f} "
          f"ablation_exp_diff_no_transformer={get('no_transformer', 'exp_diff_cross'):.5f} "
          f"radnerf_psnr={get('radnerf', 'psnr'):.2f} lse_c_cross={get('jean', 'lse_c_cross'):.4f} "
          f"exp_diff_upper_cross={get('jean', 'exp_diff_cross_upper'):.5f} "
          f"exp_diff_upper_control={get('jean', 'exp_diff_control_upper'):.5f} "
          f"upper_gain_ci=[{get('jean', 'upper_vs_control_gain_lo'):.5f},"
          f"{get('jean', 'upper_vs_control_gain_hi'):.5f}] "
          f"minutes={minutes:g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock of each training (default: 30)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow with the audio-lip and lip-sync-scorer champions "
                    "(default: sqlite in --work, trained there when missing)")
    ap.add_argument("--dataset", default=None, help="an existing dataset instead of --clip (with --identity): an "
                    "identity with several clips takes A's audio from its first clip")
    ap.add_argument("--identity", default=None, help="the identity of --dataset")
    ap.add_argument("--holdout", type=float, default=0.25, help="held-out share of the clip's last frames")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + OPTIONAL)
    ap.add_argument("--features", default=None, choices=("geometric", "blendshapes", "ict", "crop"),
                    help="the JEAN variants' expression features (default: the preset's, geometric)")
    ap.add_argument("--parallel", action="store_true", help="train two variants at a time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/parley_bench_jean"))
    ap.add_argument("--eval-only", action="store_true", help="evaluate the checkpoints of an earlier run in --work")
    ap.add_argument("--one", nargs=2, metavar=("CLIP", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))
    args.work.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    clip = args.clip
    if args.one:
        clip, variant = Path(args.one[0]), args.one[1]
        run_variants(__file__, clip, [variant], args.work, lambda v: run_one(clip, v, args))
        return 0
    if args.dataset:
        if not args.identity:
            raise SystemExit("jean.py: --dataset needs --identity")
        clip = Path(args.identity)  # names the reports
        ensure_audio_models(args.tracking_uri, Path(args.dataset), args.work, __file__)
    else:
        if not clip.is_file():
            raise SystemExit(f"jean.py: {clip}: no such clip")
        ensure_audio_models(args.tracking_uri, build_dataset(clip, args.work), args.work, __file__)
    command = None
    if args.parallel:
        threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
        command = [sys.executable, __file__, "--tracking-uri", args.tracking_uri, "--minutes", str(args.minutes),
                   "--holdout", str(args.holdout), "--size", str(args.size), "--threads", str(threads),
                   "--work", str(args.work)] + (["--eval-only"] if args.eval_only else []) \
            + (["--features", args.features] if args.features else []) \
            + (["--dataset", args.dataset, "--identity", args.identity] if args.dataset else [])
    rows = run_variants(__file__, clip, args.variants, args.work, lambda v: run_one(clip, v, args), command)
    (args.work / "jean.json").write_text(json.dumps(rows, indent=2, default=float))
    summary(rows, args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
