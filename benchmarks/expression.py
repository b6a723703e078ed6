"""Which per-frame expression features JEAN's expression transformer takes apart best (issue 38, item 1).

    PARLEY_ASSETS=../shared/assets .venv/bin/python benchmarks/expression.py --dataset DIR --tracking-uri URI
        [--identities obama feifei_li ...] [--features geometric blendshapes ict crop] [--steps 1500]
        [--near LO HI] [--steady W] [--crop-steps 1500]

For each identity with several clips, the transformer (:mod:`nerf.jean.expression`) is trained with the
audio-anchored swap on every clip but the last, with each feature set; the audio codes come from the registered
``audio-lip`` champion; the ``crop`` set's encoder (:mod:`nerf.jean.face_crops`) trains on the same clips first
(``train_s`` includes it). On the held-out clip:

* ``recon``: L1 of the plain reconstruction (normalised feature units); ``swap``: L1 of the reconstruction from the
  audio's lip part and the expression part of a window 0.3-2 s away;
* ``mouth_share``: the share of e_e's variance (pooled over its 64 dimensions) that a linear map of the mouth's
  speech shapes (jawOpen, mouthClose, mouthFunnel, mouthPucker, mouth opening) explains, fit on the training clips.
  Low is what the swap is for: the expression part should not say what the mouth says;
* ``upper_share``: the same for the upper face (brows, eye squint and wide, cheek squint, nose sneer) and the
  smile/frown shapes: high means e_e holds the expression;
* ``mouth_in_expr`` / ``upper_in_expr``: the reverse probes, e_e -> shapes (R^2 pooled over the shapes; a shape
  nearly constant in the held-out clip made a per-shape mean meaningless). They find a shape even in a direction
  of e_e with tiny variance, so they bound what e_e holds rather than what a network sees;
* ``mouth_in_audio``: e_e's counterpart for the audio's lip part g(e_a), for scale;
* ``upper_in_features`` / ``mouth_in_features``: the same reverse probes from the features themselves, before the
  transformer (trivially high for the sets that hold the blendshapes; for ``crop``, what the crop encoder kept).

Every probe runs on values centred per clip (codes and shapes): a clip's mean expression differs from another's
(another day, light, mood), and what is asked is whether e_e follows the mouth from moment to moment, not
whether it tells clips apart. All targets are MediaPipe blendshapes of the frames, whatever the feature set.

The last line is ``name=value`` pairs, per feature set ``<set>_mouth_share``, ``<set>_upper_share`` and
``<set>_swap`` (means over identities).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED  # noqa: E402,F401  (sets PARLEY_ASSETS)

IDENTITIES = ["obama", "feifei_li", "andrew_ng", "robert_downey_jr"]
MOUTH = ["jawOpen", "mouthClose", "mouthFunnel", "mouthPucker"]
UPPER = ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "eyeSquintLeft",
         "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
         "noseSneerRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight"]


def audio_codes(mel: np.ndarray, tracking_uri: str) -> np.ndarray:
    from jobs import tracking
    from jobs.registry import fetch_checkpoint
    from nerf.audio_lip.checkpoint import load_audio_lip

    uri = tracking.resolve_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = fetch_checkpoint(uri, "models:/audio-lip@champion", tmp, reader=load_audio_lip)
        enc = load_audio_lip(path).encoder.eval()
    with torch.no_grad():
        codes = torch.cat([enc(torch.from_numpy(mel[k:k + 512])) for k in range(0, len(mel), 512)])
    return torch.nn.functional.normalize(codes, dim=-1).numpy()


def centred(values: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """``values`` minus their clip's mean."""
    out = values.astype(np.float64).copy()
    for c in np.unique(clips):
        out[clips == c] -= out[clips == c].mean(0)
    return out


def main() -> int:
    from jobs.jean_data import FEATURE_SETS, blendshape_index, expression_features, read_expression_rows
    from nerf.jean import expression_train as xt
    from nerf.jean.expression import ExpressionTransformerConfig
    from nerf.jean.face_crops import CropEncoderConfig, train_crop_encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--identities", nargs="+", default=IDENTITIES)
    ap.add_argument("--features", nargs="+", default=list(FEATURE_SETS))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--crop-steps", type=int, default=CropEncoderConfig().steps)
    ap.add_argument("--near", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="frames between a window and its swap partner (default: the recipe's, 8 50)")
    ap.add_argument("--steady", type=float, default=None, help="weight of the steadiness term (default 0.1)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/parley_bench_expression.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = xt.ExpressionTrain(steps=args.steps, **({"near": tuple(args.near)} if args.near else {}),
                             **({"steady": args.steady} if args.steady is not None else {}))
    mouth_idx, upper_idx = blendshape_index(MOUTH), blendshape_index(UPPER)
    rows = []
    for identity in args.identities:
        try:
            d = read_expression_rows(args.dataset, identity, crops="crop" in args.features)
            codes = audio_codes(d["mel"], args.tracking_uri)
        except (LookupError, ValueError, FileNotFoundError) as exc:  # no such identity, dataset or model version
            raise SystemExit(f"expression.py: {identity}: {exc}") from exc
        clips = d["clip"]
        test = clips == clips[-1]
        mouth = centred(np.concatenate([d["blendshapes"][:, mouth_idx], d["mouth_opening"][:, None]], 1), clips)
        upper = centred(d["blendshapes"][:, upper_idx], clips)
        for name in args.features:
            if name not in FEATURE_SETS:
                raise SystemExit(f"expression.py: unknown --features {name!r} (known: {', '.join(FEATURE_SETS)})")
            t = time.perf_counter()
            feats = expression_features(d, name)
            if name == "crop":  # the self-supervised crop encoder, on the training clips' crops
                enc = train_crop_encoder(feats[~test], CropEncoderConfig(steps=args.crop_steps))
                feats = enc.encode(feats).numpy()
            model = xt.train_expression(feats[~test], codes[~test], clips[~test],
                                     ExpressionTransformerConfig(features=feats.shape[1]), cfg)
            train_s = time.perf_counter() - t
            x, a = torch.from_numpy(feats), torch.from_numpy(codes)
            e_train = model.expression_codes(x[~test], torch.from_numpy(clips[~test])).numpy()
            e_test = model.expression_codes(x[test]).numpy()
            g_train = model.lip_from_audio(a[~test]).detach().numpy()
            g_test = model.lip_from_audio(a[test]).detach().numpy()
            starts = np.nonzero(test)[0][0] + xt.window_starts(clips[test], model.config.window)
            near = xt.partners(starts, clips, cfg.near, np.random.default_rng(1))
            with torch.no_grad():
                recon = float(xt.expression_losses(model, x, a, starts, near, cfg, swap=False)["recon"])
                swap = float(xt.expression_losses(model, x, a, starts, near, cfg, swap=True)["recon"])
            e_train, e_test, g_train, g_test = (centred(v, c) for v, c in ((e_train, clips[~test]),
                                                                             (e_test, clips[test]),
                                                                             (g_train, clips[~test]),
                                                                             (g_test, clips[test])))
            f_train, f_test = centred(feats[~test], clips[~test]), centred(feats[test], clips[test])
            row = {"identity": identity, "features": name, "dims": int(feats.shape[1]),
                   "upper_in_features": xt.probe_r2(f_train, upper[~test], f_test, upper[test], pooled=True),
                   "mouth_in_features": xt.probe_r2(f_train, mouth[~test], f_test, mouth[test], pooled=True),
                   "train_frames": int((~test).sum()), "test_frames": int(test.sum()), "train_s": train_s,
                   "recon": recon, "swap": swap,
                   "mouth_share": xt.probe_r2(mouth[~test], e_train, mouth[test], e_test, pooled=True),
                   "upper_share": xt.probe_r2(upper[~test], e_train, upper[test], e_test, pooled=True),
                   "mouth_in_expr": xt.probe_r2(e_train, mouth[~test], e_test, mouth[test], pooled=True),
                   "upper_in_expr": xt.probe_r2(e_train, upper[~test], e_test, upper[test], pooled=True),
                   "mouth_in_audio": xt.probe_r2(g_train, mouth[~test], g_test, mouth[test], pooled=True),
                   "upper_in_audio": xt.probe_r2(g_train, upper[~test], g_test, upper[test], pooled=True)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(rows, indent=2))
    parts = []
    for name in args.features:
        sel = [r for r in rows if r["features"] == name]
        for k in ("mouth_share", "upper_share", "swap"):
            parts.append(f"{name}_{k}={np.mean([r[k] for r in sel]):.3f}")
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
