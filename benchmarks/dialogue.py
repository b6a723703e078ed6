"""DialogueNeRF at an equal CPU budget: one joint network against separate RAD-NeRF ones, a warm start from a
network of many people against training from scratch, and the generated head poses.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/dialogue.py [--clips A.mp4 B.mp4 ...]
        [--minutes 30] [--prior-minutes 60] [--prior-frames 100] [--parallel] [--set KEY=VALUE]
        [--tracking-uri URI] [--work DIR]

* **Conversations.** Of ``--clips`` (default: two shared solo clips and the shared video call), a clip with two
  faces is a conversation as it is; the solo clips are paired in order into constructed ones (side by side, their
  audio alternating in 2-3 s turns: ``benchmarks/conversations.py``). One dataset holds them all, built without Ray
  and cached in ``--work``.
* **Joint vs single** (the first conversation). The ``dialogue`` model of both people and a ``radnerf`` model of
  each, every one ``--minutes`` of training (``cpu`` presets at 256 px, stages sized to the budget as in
  ``benchmarks/train.py``; DialogueNeRF's forecasters train inside its budget). Held-out PSNR per person, and the
  parameter counts. ``joint_vs_single_db`` = mean over the two people of (joint - single) held-out PSNR.
* **Table III.** Every conversation's joint model evaluated as ``parley evaluate`` does: held-out PSNR/SSIM/LPIPS
  of speaker and listener frames, CPBD, and the lip-sync score of speaker frames beside the ground truth's (the
  ``lip-sync-scorer`` champion of ``--tracking-uri``; without one, ``parley train-audio`` trains it on the corpus
  dataset first, unless ``--no-sync``).
* **Warm start.** A prior: one ``dialogue`` network over the people of ``../shared/data/corpus`` (``--prior-frames``
  frames of each clip, ``--prior-minutes`` of training). The first conversation's first person alone, from
  scratch and from the prior, ``--minutes`` each. ``warm_start_speedup`` = the from-scratch run's time to its final
  held-out head PSNR over the warm start's time to reach it (curve points every tenth of the budget).
* **Poses** (every conversation; the forecasters alone, trained on the first 70% of each person's frames):
  generated against real poses on the last 30% (``jobs.dialogue_eval``: RMSE, pitch correlation and its
  shuffled-audio control, nod rate, motion variance ratio), and a 60-s generation from the conversation's own
  audio looped (``drift_sd``: the largest distance, in training spreads, of the last 30 s' mean pose from the
  training mean; ``in_range``: that mean inside the training range).

With ``--parallel`` two runs train at a time, each beside one other, so that the runs compared (joint and the
first single, the second single and the prior, scratch and warm) train under the same load. ``--set KEY=VALUE``
sets a recipe field of every DialogueNeRF model (a lever). Writes ``dialogue_<unit>.json`` per run and
``dialogue.json`` in ``--work``. The last line:

    speaker_psnr= listener_psnr= speaker_lse_c= speaker_lse_c_gt= pose_rmse_deg= motion_var_ratio=
    joint_vs_single_db= warm_start_speedup=
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED, apply_sets, ensure_audio_models, with_steps  # noqa: E402

CLIPS = [SHARED / "data" / "clips" / "RD_Radio2_000.mp4", SHARED / "data" / "clips" / "WDA_BobMenendez_000.mp4",
         SHARED / "data" / "conversation" / "video_call_interview.mp4"]
CORPUS = SHARED / "data" / "corpus"
POSE_HOLDOUT = 0.3
DRIFT_SECONDS = 60.0


def faces_in(clip: Path) -> int:
    """Faces MediaPipe finds in the clip's middle frame."""
    from workers.face_search import make_backend
    from workers.media import iter_frames, probe

    info = probe(str(clip))
    frame = list(iter_frames(str(clip), info, max_frames=int(info.video_duration_s * 25 / 2) + 1))[-1]
    lm = make_backend("mediapipe", max_faces=4)  # small faces of wide shots too, as the build finds them
    try:
        return len(lm.detect(frame, 0))
    finally:
        lm.close()


def build(clips: list[tuple[Path, str]], root: Path, max_frames: int | None = None, crop: int = 512) -> Path:
    """A dataset of ``(clip, identity)`` pairs, built once without Ray (cached: ``.complete`` lists the clips)."""
    from pipelines import dataset as D
    from pipelines.commit import write_clip
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for
    from workers.errors import ParleyError

    marker = "\n".join(f"{c.resolve()} {i}" for c, i in clips) + f"\n{max_frames} {crop}"
    done = root / ".complete"
    if done.is_file() and done.read_text() == marker:
        return root
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    st = Storage(root)
    p = ClipProcessor(ClipConfig(max_frames=max_frames, crop_size=crop))
    t = time.perf_counter()
    try:
        for clip, identity in clips:
            try:
                write_clip(st, p(str(clip), identity=identity, clip_id=clip_id_for(str(clip.resolve()))),
                           identity=identity)
            except ParleyError as exc:
                print(f"dialogue.py: {clip.name} left out ({exc})", flush=True)
    finally:
        p.close()
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    done.write_text(marker)
    print(f"dataset: {len(clips)} clips in {time.perf_counter() - t:.0f} s -> {root}", flush=True)
    return root


def conversation_dataset(clips: list[Path], work: Path) -> tuple[Path, list[str]]:
    """The dataset of the conversations (constructed pairs first) and their ids, in that order."""
    from benchmarks.conversations import construct
    from pipelines.dataset import Dataset

    solo = [c for c in clips if faces_in(c) < 2]
    real = [c for c in clips if c not in solo]
    made = []
    for k in range(0, len(solo) - 1, 2):
        out = work / f"pair_{solo[k].stem}_{solo[k + 1].stem}.mp4"
        if not out.is_file():
            construct(solo[k], solo[k + 1], out, seed=k)
        made.append(out)
    if len(solo) % 2:
        print(f"dialogue.py: {solo[-1].name} has no partner; left out", flush=True)
    root = build([(c, c.stem) for c in made + real], work / "conversations")
    by_uri = {r["source_uri"]: r["conversation_id"] for r in Dataset(str(root)).conversations().to_pylist()}
    ids = [by_uri[str(c.resolve())] for c in made + real if str(c.resolve()) in by_uri]
    if not ids:
        raise SystemExit("dialogue.py: no conversation in the clips (a two-person clip, or two solo clips)")
    return root, ids


def prior_dataset(work: Path, frames: int) -> tuple[Path, str]:
    """The corpus's people (manifest names), ``frames`` frames of each clip, and the subject naming them all."""
    import csv

    from pipelines.dataset import Dataset

    with open(CORPUS / "manifest.csv", newline="") as f:
        named = {r["source_uri"]: r["identity"] for r in csv.DictReader(f)}
    clips = sorted(p for p in CORPUS.iterdir() if p.suffix in (".mp4", ".mkv"))
    root = build([(c, named.get(c.name, c.stem)) for c in clips], work / "corpus", max_frames=frames, crop=256)
    return root, "+".join(Dataset(str(root)).identity_names())


def train_unit(unit: str, method: str, root: Path, subject: str, minutes: float, args: argparse.Namespace,
               warm_start: str = "", max_frames: int | None = None) -> dict[str, Any]:
    """Train one model to the budget and evaluate it as ``parley evaluate`` does; its report row."""
    import torch

    from benchmarks.train import SHARES, Run, budget_steps, replan_to_budget, seconds_per_step, train_with_curve
    from jobs.eval_sync import SyncEvaluator, resolve_scorer
    from jobs.train import TrainJob, evaluate_checkpoint, load_frames, lpips_module, read_extra_inputs, recipe
    from nerf import methods

    torch.manual_seed(0)
    overrides: dict[str, Any] = dict(args.sets) if method == "dialogue" else {}
    if warm_start:
        overrides["model.warm_start"] = warm_start
    if max_frames is not None:
        overrides["trainer.max_frames"] = max_frames
    if method == "dialogue" and args.forecast_steps is not None:  # the pose units keep the preset's
        overrides.update({"model.pose_train.steps": args.forecast_steps,
                          "model.expression_train.steps": args.forecast_steps})
    job = TrainJob(dataset=str(root), identity=subject, output=args.work / unit, preset="cpu", method=method,
                   overrides={**overrides, "trainer.size": args.size})
    cfg = recipe(job)
    lips = lpips_module()
    t0 = time.perf_counter()
    data = load_frames(method, str(root), subject, args.size, max_frames=max_frames)
    model_cls = methods.get(method).model
    pretrained: dict[str, Any] = {}
    if warm_start:
        from jobs.dialogue_data import warm_start_weights

        pretrained = warm_start_weights(cfg, data.n_people)
    if model_cls.extra_inputs:
        pretrained = model_cls.prepare(cfg, data, read_extra_inputs(model_cls.extra_inputs, job, cfg, data),
                                       pretrained)
    prepare_s = time.perf_counter() - t0
    budget_s = max(minutes * 60.0 - prepare_s, 60.0)
    per_step = {s: seconds_per_step(cfg, data, s, lips) for s in ("head", "lips", "torso")}
    cap = {s: getattr(cfg.trainer, s).steps * 10 for s in ("head", "lips", "torso")}
    steps = budget_steps(per_step, budget_s, SHARES, cap)
    run = Run(unit, with_steps(cfg, steps["head"], steps["lips"], steps["torso"]))
    print(f"[{unit}] {data.n_people} people, {data.n_train} train + {len(data.val_ids)} held-out frames, prepared "
          f"in {prepare_s:.0f} s; " + ", ".join(f"{s} {per_step[s]:.2f} s/step x {n}" for s, n in steps.items()),
          flush=True)
    replan = replan_to_budget(per_step, budget_s, SHARES, cap)
    ckpt = args.work / f"dialogue_{unit}.pt"
    if unit == "prior":  # only its weights matter: no curve, no evaluation (hundreds of held-out frames)
        trainer = train_with_curve(run, data, lips, float("inf"), replan, pretrained=pretrained or None, curve=False)
        trainer.save_checkpoint(ckpt)
        return {"unit": unit, "method": method, "subject": subject, "people": list(data.people), "prepare_s": prepare_s,
                "train_s": run.train_s, "curve": [], "metrics": {}, "checkpoint": str(ckpt),
                "parameters": sum(p.numel() for p in trainer.model.parameters()), "steps": trainer.global_step}
    points = 10 if unit in ("scratch", "warm") else 2  # a curve where a time to reach is read off it
    trainer = train_with_curve(run, data, lips, budget_s / points, replan, pretrained=pretrained or None)
    trainer.save_checkpoint(ckpt)
    scorer, source = resolve_scorer(None, None, args.tracking_uri, required=False)
    res = evaluate_checkpoint(ckpt, str(root), args.work / unit, sync=SyncEvaluator(scorer, source))
    return {"unit": unit, "method": method, "subject": subject, "people": list(data.people or (data.identity,)),
            "prepare_s": prepare_s, "train_s": run.train_s, "curve": run.curve, "metrics": res.metrics,
            "parameters": sum(p.numel() for p in trainer.model.parameters()), "checkpoint": str(ckpt)}


def pose_unit(root: Path, conversation: str, args: argparse.Namespace) -> dict[str, Any]:
    """The forecasters alone on the first 70% of each person's frames: held-out and 60-s drift figures."""
    from jobs.dialogue_data import frame_inputs
    from jobs.dialogue_eval import held_out_motion
    from jobs.train import TrainJob, load_frames, recipe
    from nerf.dialogue.generate import generate
    from nerf.dialogue.model import HEAD_POSE, SPEAKING, VOICE, Dialogue
    from nerf.dialogue.motion import voice_features
    from nerf.rays import FrameStore

    cfg = recipe(TrainJob(dataset=str(root), identity=conversation, output=args.work, preset="cpu",
                          method="dialogue", overrides={"trainer.size": 64}))
    data = load_frames("dialogue", str(root), conversation, 64, holdout=POSE_HOLDOUT)
    inputs = frame_inputs(str(root), data)
    t0 = time.perf_counter()
    state = Dialogue.prepare(cfg, data, inputs, {})
    train_s = time.perf_counter() - t0
    model = Dialogue.for_training(cfg, data, FrameStore(data))
    model.load_state_dict(state, strict=False)
    model.eval()
    held = held_out_motion(model, data, inputs)
    # 60 s from the conversation's own audio and roles (person 0's rows: the clip's frames), looped
    person = data.person_of()
    rows = np.flatnonzero(person == 0)
    rows = rows[np.argsort(data.frame_index[rows])]
    n = int(DRIFT_SECONDS * 25)
    loop = np.resize(rows, n)
    partner_rows = np.flatnonzero(person == 1)
    by_frame = {int(data.frame_index[r]): r for r in partner_rows}
    speak1 = np.array([inputs[SPEAKING][by_frame.get(int(data.frame_index[r]), r)] if partner_rows.size else 0.0
                       for r in loop])
    speaking = np.stack([inputs[SPEAKING][loop], speak1], -1) if data.n_people == 2 else inputs[SPEAKING][loop, None]
    voice = voice_features(inputs[VOICE][loop, 0], inputs[VOICE][loop, 1])
    people = list(range(min(data.n_people, 2)))
    motion = generate(model, voice, speaking.astype(np.float32), people)
    pose6 = inputs[HEAD_POSE].astype(np.float64)
    drift, in_range = [], []
    for k in people:
        train = pose6[: data.n_train][person[: data.n_train] == k]
        late = motion.poses[-n // 2:, k].mean(0)
        drift.append(float(np.max(np.abs(late - train.mean(0)) / np.maximum(train.std(0), 1e-6))))
        in_range.append(bool(((late >= train.min(0)) & (late <= train.max(0))).all()))
    return {"unit": f"pose_{conversation}", "conversation": conversation, "forecaster_train_s": train_s,
            "held_out": held, "drift_sd": max(drift), "in_range": all(in_range),
            "generated_pitch_std_deg": float(np.degrees(motion.poses[:, :, 0].std(0)).mean())}


def warm_speedup(scratch: dict[str, Any], warm: dict[str, Any]) -> float:
    """From-scratch time to its final head PSNR over the warm start's time to reach it (NaN when never)."""
    from benchmarks.train import time_to_reach

    target = scratch["curve"][-1]["head_psnr"]
    t_scratch = time_to_reach(scratch["curve"], target)
    t_warm = time_to_reach(warm["curve"], target)
    if t_scratch is None or t_warm is None:
        return float("nan")
    return float(t_scratch / max(t_warm, 1.0))


def run_one(unit: str, args: argparse.Namespace) -> dict[str, Any]:
    root, convs = conversation_dataset(args.clips, args.work)
    if unit.startswith("pose_"):
        return pose_unit(root, unit[len("pose_"):], args)
    if unit.startswith("joint_"):
        return train_unit(unit, "dialogue", root, unit[len("joint_"):], args.minutes, args)
    if unit.startswith("single_"):
        return train_unit(unit, "radnerf", root, unit[len("single_"):], args.minutes, args)
    if unit == "prior":
        proot, subject = prior_dataset(args.work, args.prior_frames)
        return train_unit(unit, "dialogue", proot, subject, args.prior_minutes, args)
    first = conversation_people(root, convs[0])[0]
    if unit == "scratch":
        return train_unit(unit, "dialogue", root, first, args.minutes, args)
    if unit == "warm":
        return train_unit(unit, "dialogue", root, first, args.minutes, args,
                          warm_start=str(args.work / "dialogue_prior.pt"))
    raise SystemExit(f"dialogue.py: unknown unit {unit}")


def pair_up(slots: list[list[str]]) -> list[list[list[str]]]:
    """Slots two to a round, in order: every timed run has one run beside it, so runs compared with each other
    (joint and single, scratch and warm) trained under the same load; the prior comes a round before the warm
    start that reads it (``prior, scratch, warm`` in that order)."""
    return [slots[i:i + 2] for i in range(0, len(slots), 2)]


def run_rounds(rounds: list[list[list[str]]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each unit's report row. A round's slots run side by side in subprocesses with ``--parallel`` (a slot's
    units one after the other), else everything here in turn. A unit whose report an earlier run left in ``--work``
    is not run again (unless ``--fresh``)."""
    def report(u: str) -> Path:
        return args.work / f"dialogue_{u}.json"

    units = [u for slots in rounds for slot in slots for u in slot]
    for slots in rounds:
        if not args.fresh:
            slots = [s for s in ([u for u in slot if not report(u).is_file()] for slot in slots) if s]
        if not slots:
            continue
        if args.parallel:
            threads = max(1, (os.cpu_count() or 2) // len(slots))
            cmd = [sys.executable, __file__, "--minutes", str(args.minutes), "--prior-minutes", str(args.prior_minutes),
                   "--prior-frames", str(args.prior_frames), "--size", str(args.size), "--work", str(args.work),
                   "--tracking-uri", args.tracking_uri, "--threads", str(threads), "--clips", *map(str, args.clips)]
            if args.forecast_steps is not None:
                cmd += ["--forecast-steps", str(args.forecast_steps)]
            cmd += [f"--set={item}" for item in args.set]
            procs = [subprocess.Popen([*cmd, "--one", *slot]) for slot in slots]
            if any(p.wait() for p in procs):
                raise SystemExit(f"dialogue.py: a run of {slots} failed")
        else:
            for u in (u for slot in slots for u in slot):
                report(u).write_text(json.dumps(run_one(u, args), indent=2, default=float))
    return [json.loads(report(u).read_text()) for u in units]


def summary(rows: dict[str, dict[str, Any]], convs: list[str]) -> None:
    joint = rows[f"joint_{convs[0]}"]
    jm = joint["metrics"]
    gaps = []
    for p in joint["people"]:
        single = rows.get(f"single_{p}")
        if single:
            gaps.append(jm.get(f"psnr_{p}", float("nan")) - single["metrics"]["psnr"])
            print(f"{p}: joint {jm.get(f'psnr_{p}', float('nan')):.2f} dB, single {single['metrics']['psnr']:.2f} dB",
                  flush=True)
    singles = [rows[f"single_{p}"]["parameters"] for p in joint["people"] if f"single_{p}" in rows]
    print(f"parameters: joint {joint['parameters']}, separate {sum(singles)}", flush=True)
    tables = [rows[f"joint_{c}"]["metrics"] for c in convs if f"joint_{c}" in rows]

    def mean(key: str, among: list[dict[str, Any]]) -> float:
        vals = [m[key] for m in among if key in m and np.isfinite(m[key])]
        return float(np.mean(vals)) if vals else float("nan")

    poses = [rows[f"pose_{c}"] for c in convs if f"pose_{c}" in rows]
    held = [p["held_out"] for p in poses]
    for p in poses:
        h = p["held_out"]
        print(f"poses {p['conversation']}: rmse {h.get('pose_rmse_deg', float('nan')):.2f} deg, pitch corr "
              f"{h.get('pitch_corr', float('nan')):.3f} (control {h.get('pitch_corr_control', float('nan')):.3f}), "
              f"nods {h.get('nods_per_min', float('nan')):.1f}/min (real {h.get('nods_per_min_gt', float('nan')):.1f})"
              f", var ratio {h.get('motion_var_ratio', float('nan')):.2f}; 60 s: drift {p['drift_sd']:.2f} sd, "
              f"in range {p['in_range']}", flush=True)
    speedup = warm_speedup(rows["scratch"], rows["warm"]) if "scratch" in rows and "warm" in rows else float("nan")
    if "scratch" in rows and "warm" in rows:
        from benchmarks.train import time_to_reach

        target = rows["scratch"]["curve"][-1]["head_psnr"]
        t_s, t_w = (time_to_reach(rows[u]["curve"], target) for u in ("scratch", "warm"))
        print(f"warm start: scratch's final head PSNR {target:.2f} dB, first reached by scratch at "
              f"{t_s or float('nan'):.0f} s, by warm at {t_w or float('nan'):.0f} s, of a "
              f"{rows['scratch']['train_s']:.0f}-s budget; final held-out PSNR scratch "
              f"{rows['scratch']['metrics'].get('psnr', float('nan')):.2f}, warm "
              f"{rows['warm']['metrics'].get('psnr', float('nan')):.2f}", flush=True)
    print(f"speaker_psnr={mean('psnr_speaker', tables):.3f} listener_psnr={mean('psnr_listener', tables):.3f} "
          f"speaker_lse_c={mean('lse_c_speaker', tables):.4f} speaker_lse_c_gt={mean('lse_c_gt_speaker', tables):.4f} "
          f"pose_rmse_deg={mean('pose_rmse_deg', held):.3f} motion_var_ratio={mean('motion_var_ratio', held):.3f} "
          f"joint_vs_single_db={float(np.mean(gaps)) if gaps else float('nan'):.3f} "
          f"warm_start_speedup={speedup:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", nargs="+", type=Path, default=CLIPS, help="clips (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-clock of each model")
    ap.add_argument("--prior-minutes", type=float, default=None, help="the prior's training (default: 2 x --minutes)")
    ap.add_argument("--prior-frames", type=int, default=100, help="frames of each corpus clip in the prior")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--parallel", action="store_true", help="two runs at a time")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--tracking-uri", default=None, help="where the lip-sync-scorer champion is (default: none)")
    ap.add_argument("--forecast-steps", type=int, default=None,
                    help="steps of the forecasters inside the trained models' budgets (default: the preset's; the "
                         "pose figures always use the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe field of every DialogueNeRF model (a lever; repeatable), e.g. "
                         "model.head.spatial.features_per_level=3")
    ap.add_argument("--no-sync", action="store_true", help="no lip-sync scorer trained when none is registered")
    ap.add_argument("--skip", nargs="*", default=[], choices=("single", "warm", "pose"), help="leave parts out")
    ap.add_argument("--fresh", action="store_true", help="run every unit again (default: reuse the reports in --work)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/parley_bench_dialogue"))
    ap.add_argument("--one", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.prior_minutes = args.prior_minutes or 2 * args.minutes
    args.sets = {}
    if args.set:  # parsed and checked here: a bad key stops before any dataset is built
        from nerf.methods import preset

        args.sets = apply_sets(preset("cpu", "dialogue"), args.set)[1]
    args.work.mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    missing = [c for c in args.clips if not c.is_file()]
    if missing:
        raise SystemExit(f"dialogue.py: no such clip {missing[0]}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        for unit in args.one:
            (args.work / f"dialogue_{unit}.json").write_text(json.dumps(run_one(unit, args), indent=2, default=float))
        return 0
    root, convs = conversation_dataset(args.clips, args.work)
    if not args.no_sync:
        ensure_audio_models(args.tracking_uri, prior_dataset(args.work, args.prior_frames)[0], args.work, __file__,
                            ("lip-sync-scorer",))
    people = conversation_people(root, convs[0])
    queue = [f"joint_{convs[0]}"] + ([f"single_{p}" for p in people] if "single" not in args.skip else [])
    if "warm" not in args.skip:
        prior_dataset(args.work, args.prior_frames)  # built here, once, before the runs that read it
        queue += ["prior", "scratch", "warm"]
    poses = [f"pose_{c}" for c in convs] if "pose" not in args.skip else []
    rounds = pair_up([[u] for u in queue + [f"joint_{c}" for c in convs[1:]]] + ([poses] if poses else []))
    rows = {r["unit"]: r for r in run_rounds(rounds, args)}
    (args.work / "dialogue.json").write_text(json.dumps(rows, indent=2, default=float))
    summary(rows, convs)
    return 0


def conversation_people(root: Path, conversation: str) -> list[str]:
    """The people of a conversation of the dataset at ``root``, left to right."""
    from jobs.dialogue_data import resolve_people
    from pipelines.dataset import Dataset

    return resolve_people(Dataset(str(root)), conversation)[0]


if __name__ == "__main__":
    sys.exit(main())
