"""What every method's evaluation adds to PSNR / SSIM / LPIPS / LMD: the lip-sync score of the prediction and of
the ground truth of the same frames, and CPBD sharpness of both. The protocol is written in docs/evaluation.md and
stored with each evaluation (:func:`protocol`).

The scorer is the registry's ``lip-sync-scorer@champion`` unless told otherwise; with none registered the sync
metrics are left out with a note, never guessed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.mouth import MOUTH_DROP, MOUTH_SIZE, MOUTH_SPAN, mouth_crop

Detect = Callable[[np.ndarray], "np.ndarray | None"]
MIN_FRAMES = 3
"""Fewest frames an offset's mean distance may rest on in an evaluation."""
CPBD_VERSION = "cpbd/narvekar-karam-2011 (reference implementation cpbd 1.0.7, bit-identical on 8-bit gray)"


@dataclass
class SyncEvaluator:
    """Collects mouth crops and sharpness of each evaluated frame (prediction and ground truth), then scores them.

    Wrap the landmark detectors with :meth:`wrap` and call :meth:`on_frame` for each frame, in order.
    """

    scorer: Any = None
    """A :class:`nerf.audio_lip.models.SyncScorer`, or None (sync metrics left out)."""
    scorer_source: str = ""
    frames: list[int] = field(default_factory=list)
    crops: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"pred": [], "gt": []})
    found: dict[str, list[bool]] = field(default_factory=lambda: {"pred": [], "gt": []})
    sharpness: dict[str, list[float]] = field(default_factory=lambda: {"pred": [], "gt": []})
    _last: dict[str, np.ndarray | None] = field(default_factory=dict)

    def wrap(self, detect_pred: Detect, detect_gt: Detect) -> tuple[Detect, Detect]:
        """The detectors, remembering each frame's landmarks for its mouth crop."""
        def keep(name: str, fn: Detect) -> Detect:
            def detect(img: np.ndarray) -> np.ndarray | None:
                self._last[name] = lms = fn(img)
                return lms
            return detect
        return keep("pred", detect_pred), keep("gt", detect_gt)

    def on_frame(self, frame: int, pred: np.ndarray, gt: np.ndarray) -> None:
        from nerf.sharpness import cpbd

        self.frames.append(frame)
        for name, img in (("pred", pred), ("gt", gt)):
            lms = self._last.pop(name, None)
            ok = lms is not None and bool(np.isfinite(lms).all())
            self.found[name].append(ok)
            self.crops[name].append(mouth_crop(img, lms) if lms is not None and ok else
                                    np.zeros(MOUTH_SIZE[::-1], np.uint8))
            self.sharpness[name].append(cpbd(img))

    def metrics(self, audio: np.ndarray, clip_of_row: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
        """``cpbd``/``cpbd_gt`` and, with a scorer, ``lse_c``/``lse_d``/``sync_offset`` for prediction and ground
        truth (``_gt``) of the collected frames (those ``keep``, bool over the rows, marks), against the identity's
        audio rows (``audio [N, 16, 80]``)."""
        from nerf.audio_lip.scoring import MAX_OFFSET, SyncScoreError, stretch_sync_score
        from workers.mouth import fill_missing

        sel = [i for i, f in enumerate(self.frames) if keep is None or keep[f]]
        if not sel:
            return {}
        out = {"cpbd": float(np.mean([self.sharpness["pred"][i] for i in sel])),
               "cpbd_gt": float(np.mean([self.sharpness["gt"][i] for i in sel]))}
        if self.scorer is None:
            return out
        rows = np.asarray(self.frames)[sel]
        # held-out frames end their clip: offset +k has audio under only n - k of them. Offsets go up to n / 2, so
        # each mean rests on at least half the frames: on 19 frames, offsets resting on 4 won by noise (prediction
        # and ground truth both detected at +15). Recorded as sync_max_offset.
        max_offset = int(min(MAX_OFFSET, max(1, len(rows) // 2)))
        out["sync_max_offset"] = float(max_offset)
        for name, suffix in (("pred", ""), ("gt", "_gt")):
            found = np.asarray(self.found[name])[sel]
            crops = fill_missing(np.stack(self.crops[name])[sel], found)
            try:
                s = stretch_sync_score(self.scorer, crops, found, audio, rows, np.ones(len(audio), bool), max_offset,
                                       MIN_FRAMES, frame_clip=clip_of_row[rows], audio_clip=clip_of_row)
            except SyncScoreError as exc:
                print(f"evaluate: no lip-sync score of the {name} frames ({exc})", file=sys.stderr)
                continue
            out.update({f"lse_c{suffix}": s.lse_c, f"lse_d{suffix}": s.lse_d, f"sync_offset{suffix}": float(s.offset),
                        f"sync_frames{suffix}": float(s.frames)})
        return out

    def protocol(self, size: int, n_frames: int) -> dict[str, Any]:
        from nerf.audio_lip.scoring import MAX_OFFSET, PROTOCOL

        return {"frames": f"held-out: the last 1/11 of the identity's frames ({n_frames}), rendered at {size} px "
                          "under their tracked poses with their own audio",
                "face_crop": f"mouth: similarity warp from MediaPipe's 68 landmarks of each image (prediction and "
                             f"ground truth detected alike), {MOUTH_SIZE[0]}x{MOUTH_SIZE[1]} px spanning "
                             f"{MOUTH_SPAN} eye distances, {MOUTH_DROP} below the mouth corners",
                "sync": PROTOCOL + "; each offset averaged over the frames with audio of the same clip there; a "
                        f"stretch of n < {2 * MAX_OFFSET} frames searches offsets -n/2..n/2 (rounded down)",
                "sync_scorer": self.scorer_source or "none registered (sync metrics left out)",
                "cpbd": CPBD_VERSION, "doc": "docs/evaluation.md"}


def resolve_scorer(model_uri: str | None, checkpoint: str | None, tracking_uri: str | None,
                   required: bool) -> tuple[Any, str]:
    """The scorer an evaluation uses: a file, a registered version, or the champion when one is registered.

    Raises:
        RegistryError, AudioLipCheckpointError: a scorer was asked for (``required``) and cannot be had.
    """
    from jobs import tracking
    from jobs.registry import RegistryError
    from jobs.sync_score import DEFAULT_SCORER, load_registered_scorer
    from nerf.audio_lip.checkpoint import load_scorer

    if checkpoint:
        return load_scorer(checkpoint)[0], checkpoint
    store = tracking.local_store_path(tracking.resolve_tracking_uri(tracking_uri))
    if not required and store is not None and not store.exists():  # looking must not create an empty store
        print(f"evaluate: no lip-sync score (no tracking store at {store}; give --tracking-uri or --sync-checkpoint)",
              file=sys.stderr)
        return None, ""
    try:
        scorer, meta = load_registered_scorer(tracking_uri, model_uri or DEFAULT_SCORER)
    except (RegistryError, tracking.TrackingError) as exc:  # only the default was looked for: a note, not a failure
        if required:
            raise
        print(f"evaluate: no lip-sync score ({exc})", file=sys.stderr)
        return None, ""
    return scorer, f"{meta['name']} version {meta['version']} (run {meta['run_id']})"

