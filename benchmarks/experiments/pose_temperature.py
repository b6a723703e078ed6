"""The draws of DialogueNeRF's pose forecaster: the held-out pose metrics (``jobs.dialogue_eval``) of one set of
forecasters at several temperatures, with draws correlated in time as fitted (``Forecaster.noise_rho``) and white
(``noise_rho`` zeroed), on the conversations ``benchmarks/dialogue.py`` built.

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/experiments/pose_temperature.py \
        --dataset /tmp/parley_bench_dialogue/conversations --conversation ID [--temperatures 0 1 1.5 2 3]
        [--draws fitted white]

The forecasters train as the benchmark's pose units do (the ``cpu`` preset, the first 70% of each person's frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--conversation", nargs="+", required=True)
    ap.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--draws", nargs="+", choices=("fitted", "white"), default=["fitted", "white"])
    ap.add_argument("--holdout", type=float, default=0.3)
    args = ap.parse_args()
    import torch

    from jobs.dialogue_data import frame_inputs
    from jobs.dialogue_eval import held_out_motion
    from jobs.train import TrainJob, load_frames, recipe
    from nerf.dialogue.model import Dialogue
    from nerf.rays import FrameStore

    torch.set_num_threads(1)
    keys = ("pose_rmse_deg", "pitch_corr", "pitch_corr_control", "nods_per_min", "nods_per_min_gt",
            "motion_var_ratio")
    for conv in args.conversation:
        cfg = recipe(TrainJob(dataset=args.dataset, identity=conv, output=Path("/tmp"), preset="cpu",
                              method="dialogue", overrides={"trainer.size": 64}))
        data = load_frames("dialogue", args.dataset, conv, 64, holdout=args.holdout)
        inputs = frame_inputs(args.dataset, data)
        model = Dialogue.for_training(cfg, data, FrameStore(data))
        model.load_state_dict(Dialogue.prepare(cfg, data, inputs, {}), strict=False)
        model.eval()
        fitted = model.pose_forecaster.noise_rho.clone()
        print(f"{conv} pose noise_rho={[round(float(r), 3) for r in fitted]}", flush=True)
        for draws in args.draws:
            model.pose_forecaster.noise_rho.copy_(fitted if draws == "fitted" else torch.zeros_like(fitted))
            for t in args.temperatures:
                h = held_out_motion(model, data, inputs, temperature=t)
                print(f"{conv} {draws} T={t:g} " + " ".join(f"{k}={h[k]:.3f}" for k in keys), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
