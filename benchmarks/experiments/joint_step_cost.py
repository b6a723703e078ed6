"""DialogueNeRF's joint network against RAD-NeRF per training step: seconds a head step (alone, one thread, at
the start of training) for several configurations, and the occupancy of trained models' grids, on the data of a
``benchmarks/dialogue.py`` run.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/joint_step_cost.py \
        --work /tmp/parley_bench_dialogue --conversation ID [--checkpoints A.pt B.pt ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="the dialogue benchmark's --work")
    ap.add_argument("--conversation", required=True)
    ap.add_argument("--checkpoints", nargs="*", type=Path, default=[], help="trained models whose grids to read")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    import numpy as np
    import torch

    from benchmarks.dialogue import conversation_people
    from benchmarks.train import seconds_per_step
    from jobs.train import TrainJob, load_frames, recipe

    torch.set_num_threads(1)
    root = args.work / "conversations"
    first = conversation_people(root, args.conversation)[0]

    def cost(method: str, subject: str, sets: dict[str, object]) -> float:
        ov: dict[str, object] = {"trainer.size": args.size, **sets}
        if method == "dialogue":  # the forecasters do not enter a step
            ov.update({"model.pose_train.steps": 0, "model.expression_train.steps": 0})
        cfg = recipe(TrainJob(dataset=str(root), identity=subject, output=args.work / "step_cost", preset="cpu",
                              method=method, overrides=ov))
        data = load_frames(method, str(root), subject, args.size)
        torch.manual_seed(0)
        return float(np.median([seconds_per_step(cfg, data, "head", None, warmup=10, timed=15) for _ in range(2)]))

    two: dict[str, object] = {"model.head.spatial.features_per_level": 2}
    out = {}
    for key, method, subject, sets in (("radnerf_first", "radnerf", first, {}),
                                       ("joint", "dialogue", args.conversation, {}),
                                       ("joint_2features", "dialogue", args.conversation, two),
                                       ("dialogue_first_2features", "dialogue", first, two)):
        out[key] = cost(method, subject, sets)
        print(f"{key}: {out[key]:.3f} s/step", flush=True)
    for ckpt in args.checkpoints:
        mask = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]["grid.mask"]
        print(f"{ckpt.name}: grid {float(mask.float().mean()):.3f} occupied", flush=True)
    print(" ".join(f"{k}_s_per_step={v:.3f}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
