"""Derive the MediaPipe-mesh -> 68-point index table from the ICT model's 68 landmark vertices.

The ICT model marks the iBUG 68 points as vertices (``landmarks68``). This script fits the model to
MediaPipe meshes of real clips and picks, for each of the 68 vertices, the mesh point whose image
position is nearest on average; then refits with the new table and repeats until the table is
stable (an ICP-style fixed point). Start: the hand-made table in ``workers/landmarks.py``, first
fitted on its reliable inner points only. The printed table goes into ``workers/landmarks.py``.

    PARLEY_ASSETS=../shared/assets python scripts/derive_mediapipe_68.py ../shared/data/clips/*.mp4
"""

import sys

import numpy as np
import torch

from workers.landmarks import MEDIAPIPE_TO_68, MediaPipeLandmarker
from workers.media import iter_frames, probe
from workers.morphable import FaceModel, FitConfig, fit_clip, project

model = FaceModel()
clips = []
for path in sys.argv[1:]:
    info = probe(path)
    lm = MediaPipeLandmarker()
    meshes, bss = [], []
    for i, frame in enumerate(iter_frames(path, info)):
        faces = lm.detect(frame, i * 40)
        if faces:
            meshes.append(faces[0].mesh[:, :2])
            bss.append(faces[0].blendshapes)
    lm.close()
    clips.append((info, np.stack(meshes), model.expression_from_blendshapes(np.stack(bss))))

table = MEDIAPIPE_TO_68.copy()
weights = np.zeros(68, np.float32)
weights[[27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54, 60, 61, 62, 63, 64, 65, 66, 67]] = 1.0
for rnd in range(4):
    dist = np.zeros((68, 468))  # the 10 iris points (468-477) are not face surface
    errs = []
    for info, mesh, exp in clips:
        fit = fit_clip(model, mesh[:, table], info.width, info.height, exp, cfg=FitConfig(), landmark_weights=weights)
        pts = model.landmarks_3d(torch.from_numpy(fit.identity), torch.from_numpy(fit.expression))
        cam = torch.einsum("nij,npj->npi", torch.from_numpy(fit.rotation), pts)
        cam = cam + torch.from_numpy(fit.translation)[:, None]
        uv = project(cam, fit.focal, fit.cx, fit.cy).numpy()  # [N, 68, 2]
        dist += np.linalg.norm(uv[:, :, None] - mesh[:, None, :468], axis=-1).mean(0) / len(clips)
        errs.append(float(np.median(fit.reprojection_error)))
    new = dist.argmin(1)
    print(f"round {rnd}: median error {np.round(errs, 2)} px, {int((new != table).sum())} indices changed",
          file=sys.stderr)
    if rnd > 0 and (new == table).all():
        break
    table = new
    weights = np.ones(68, np.float32)
print(", ".join(str(int(i)) for i in table))
print("mean distance of chosen points (px):", dist.min(1).round(1).tolist(), file=sys.stderr)
