"""Per-identity QC report: a PNG contact sheet and a small table of quality figures, written beside the dataset.

For each identity a build writes::

    qc/<identity>.png    contact sheet: a title strip with the key figures over frames spread across
                         all the identity's clips (landmarks, pose axes and parsing overlaid, see
                         :func:`pipelines.qc.annotate`)
    qc/<identity>.json   the figures of :func:`identity_figures`
    qc/quality.csv       one line per identity (:data:`FIGURE_COLUMNS`), see :func:`write_quality_table`
    qc/conversation_<conversation_id>.png   timeline of each conversation of the identity (:mod:`pipelines.timeline`)

The figures come from the light ``frames/`` columns only (:data:`LIGHT_COLUMNS`); images are read
for the picked frames only, one clip at a time.

Definitions (all per clip first, never across clip boundaries):

* **landmark jitter** (px in the stored crop, ``image_size`` x ``image_size``): for every run of three
  consecutive frames ``t-1, t, t+1`` of one clip that all have a face, the second difference
  ``a = L[t+1] - 2 L[t] + L[t-1]`` of each of the 68 landmarks; the figure is
  ``median(|a|) / sqrt(12 ln 2)`` over all such frames and points, pooled over clips. For a
  static face with white landmark noise of per-coordinate standard deviation ``sigma`` the 2-D
  second difference has a Rayleigh norm with scale ``sqrt(6) sigma`` and median
  ``sqrt(12 ln 2) sigma``, so the figure estimates ``sigma``; smooth head motion (constant velocity
  or slow sinusoid) adds ~0. Fast real motion (speech, quick head turns) adds a little, so on real
  clips it is an upper bound of the noise.
* **blinks** (:func:`count_blinks`): within each clip, ``eye_ratio`` divided by that clip's median
  over frames with a face; a blink starts when it falls below :data:`BLINK_CLOSE` (0.6) and ends
  only when it climbs back above :data:`BLINK_REOPEN` (0.7). The hysteresis band keeps one blink
  (and a long closure, however noisy) one event; two closures with a reopening above 70% of the
  usual openness between them are two blinks. Frames without a face hold the state.
* **speaker_segments** / **speaking_share** (:mod:`pipelines.conversations`): over the identity's conversations
  (``ok`` clips of exactly two people), the speaker segments naming it, and the fraction of their frames in which
  it speaks; empty for an identity without conversations.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import qc, timeline
from pipelines.dataset import Dataset

LIGHT_COLUMNS = ["identity", "clip_id", "frame_index", "time_s", "face_found", "landmarks_2d", "eye_ratio", "speaking",
                 "audio_valid", "reprojection_error"]
"""``frames/`` columns the figures are computed from (no images)."""

IMAGE_COLUMNS = ["clip_id", "frame_index", "face_found", "error", "image_jpeg", "parsing_png", "landmarks_2d",
                 "pose_c2w", "lips_rect", "focal", "cx", "cy", "eye_ratio", "reprojection_error"]
"""``frames/`` columns :func:`pipelines.qc.annotate` draws from."""

FIGURE_COLUMNS = ["identity", "n_clips", "n_rows", "fps", "duration_s", "face_detection_rate", "landmark_jitter_px",
                  "reprojection_error_px", "blink_count", "blinks_per_minute", "speech_s", "speaker_segments",
                  "speaking_share"]
"""The figures, in the order of ``qc/quality.csv``."""

BLINK_CLOSE = 0.6
"""A blink starts when ``eye_ratio`` falls below this fraction of its clip's median."""
BLINK_REOPEN = 0.7
"""A blink ends when ``eye_ratio`` climbs back above this fraction of its clip's median."""

_RAYLEIGH_MEDIAN = math.sqrt(12 * math.log(2))  # median |2-D second difference| / per-coordinate noise sigma
TITLE_HEIGHT = 60
"""Height (px) of the title strip above the contact sheet."""


def count_blinks(eye_ratio: np.ndarray, close: float = BLINK_CLOSE, reopen: float = BLINK_REOPEN) -> int:
    """Blink events in one clip's eye-ratio series (see the module docstring).

    Args:
        eye_ratio: [N] eye aspect ratio per frame in frame order; NaN where there is no face (the
            state is held over such frames: a closure spanning them counts once).
        close: a blink starts below ``close`` x the series' median.
        reopen: it ends above ``reopen`` x the median (``reopen >= close``).

    Returns:
        The number of blinks; a series that starts closed counts its first closure.
    """
    x = np.asarray(eye_ratio, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return 0
    med = float(np.median(x))
    if med <= 0:
        return 0
    x = x / med
    count, closed = 0, False
    for v in x:
        if not closed and v < close:
            closed, count = True, count + 1
        elif closed and v > reopen:
            closed = False
    return count


def _clip_bounds(clip_ids: np.ndarray) -> list[tuple[str, int, int]]:
    """(clip_id, start, stop) of each run of equal ids in a sorted column."""
    if not len(clip_ids):
        return []
    edges = np.flatnonzero(clip_ids[1:] != clip_ids[:-1]) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(clip_ids)]])
    return [(str(clip_ids[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _landmarks(table: pa.Table, has_face: np.ndarray) -> np.ndarray:
    """[N, 68, 2] float64 landmarks, NaN where there is no face or the column is null."""
    col = table.column("landmarks_2d").combine_chunks()
    valid = has_face & ~col.is_null().to_numpy(zero_copy_only=False)
    out = np.full((len(table), 68, 2), np.nan)
    if valid.any():
        flat = pc.list_flatten(col.filter(pa.array(valid))).to_numpy(zero_copy_only=False)
        if flat.size != int(valid.sum()) * 136:
            raise ValueError("landmarks_2d: expected 68 x 2 values per frame with a face")
        out[valid] = flat.reshape(-1, 68, 2)
    return out


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), np.float64)


def _bools(table: pa.Table, name: str) -> np.ndarray:
    """A bool column with nulls as False."""
    return np.asarray(pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False), bool)


def _maybe(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def frame_rate(table: pa.Table, default: float = 25.0) -> float:
    """The frame rate of a ``frames/`` table from ``time_s`` of consecutive frames, else ``default``."""
    if len(table) < 2 or "time_s" not in table.column_names:
        return default
    table = table.sort_by([("clip_id", "ascending"), ("frame_index", "ascending")])
    clip = table.column("clip_id").to_numpy(zero_copy_only=False)
    idx = table.column("frame_index").to_numpy(zero_copy_only=False).astype(np.int64)
    t = _floats(table, "time_s")
    dt = np.diff(t)
    ok = (clip[1:] == clip[:-1]) & (np.diff(idx) == 1) & np.isfinite(dt) & (dt > 0)
    return float(round(1.0 / float(np.median(dt[ok])), 3)) if ok.any() else default


def identity_figures(table: pa.Table, fps: float = 25.0) -> dict[str, Any]:
    """Quality figures of one identity's frames (definitions in the module docstring).

    Args:
        table: ``frames/`` rows of one identity with at least :data:`LIGHT_COLUMNS` (any order; it
            is sorted by clip and frame here).
        fps: frame rate of the rows (the build resamples every clip to one rate).

    Returns:
        A dict with the keys of :data:`FIGURE_COLUMNS`:
        ``identity``; ``n_clips``; ``n_rows`` (frames); ``fps``; ``duration_s`` (``n_rows / fps``);
        ``face_detection_rate`` (fraction of rows with a face); ``landmark_jitter_px`` (estimated
        per-coordinate landmark noise, px in the crop); ``reprojection_error_px`` (median over frames
        with a face, px in the crop); ``blink_count`` (summed over clips); ``blinks_per_minute``
        (per minute of frames with a face); ``speech_s`` (frames with ``speaking`` true / fps);
        ``speaker_segments`` and ``speaking_share`` None (:func:`identity_report` fills them from the conversations).
        Figures that cannot be computed (no frame with a face) are None.
    """
    missing = [c for c in LIGHT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"frames table lacks columns {missing}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    table = table.sort_by([("clip_id", "ascending"), ("frame_index", "ascending")])
    identities = (
        sorted({str(v) for v in table.column("identity").to_pylist()}) if "identity" in table.column_names else []
    )
    n = len(table)
    clip = table.column("clip_id").to_numpy(zero_copy_only=False)
    idx = table.column("frame_index").to_numpy(zero_copy_only=False).astype(np.int64)
    face = _bools(table, "face_found")
    lms = _landmarks(table, face)
    eye = np.where(face, _floats(table, "eye_ratio"), np.nan)
    err = _floats(table, "reprojection_error")[face]
    err = err[np.isfinite(err)]

    second_diffs, blinks = [], 0
    for _, a, b in _clip_bounds(clip):
        blinks += count_blinks(eye[a:b])
        if b - a < 3:
            continue
        cl, ci = lms[a:b], idx[a:b]
        consecutive = (ci[2:] - ci[1:-1] == 1) & (ci[1:-1] - ci[:-2] == 1)
        d2 = cl[2:] - 2 * cl[1:-1] + cl[:-2]  # NaN where any of the three frames has no face
        norm = np.linalg.norm(d2[consecutive], axis=-1).reshape(-1)
        second_diffs.append(norm[np.isfinite(norm)])
    d2_all = np.concatenate(second_diffs) if second_diffs else np.zeros(0)
    n_face = int(face.sum())
    face_minutes = n_face / fps / 60.0
    return {
        "identity": ",".join(identities) if identities else None,
        "n_clips": len(_clip_bounds(clip)),
        "n_rows": n,
        "fps": float(fps),
        "duration_s": n / fps,
        "face_detection_rate": n_face / n if n else None,
        "landmark_jitter_px": _maybe(float(np.median(d2_all)) / _RAYLEIGH_MEDIAN) if len(d2_all) else None,
        "reprojection_error_px": _maybe(float(np.median(err))) if len(err) else None,
        "blink_count": blinks,
        "blinks_per_minute": blinks / face_minutes if n_face else None,
        "speech_s": int(_bools(table, "speaking").sum()) / fps,
        "speaker_segments": None,
        "speaking_share": None,
    }


def spread_picks(lengths: list[int], n: int) -> list[list[int]]:
    """Row positions of ``n`` frames spread over clips of the given lengths.

    Each clip gets at least one frame while ``n`` allows (otherwise ``n`` clips evenly spread over
    the list get one each); the rest go to clips in proportion to their length; within a clip the
    picks are evenly spaced (centred in equal parts).

    Args:
        lengths: rows per clip.
        n: frames wanted in all.

    Returns:
        Per clip, the sorted positions picked (possibly empty).
    """
    k = len(lengths)
    alloc = [0] * k
    total = sum(lengths)
    if n <= 0 or total == 0:
        return [[] for _ in lengths]
    nonempty = [i for i, m in enumerate(lengths) if m > 0]
    if n < len(nonempty):
        for j in np.unique(np.linspace(0, len(nonempty) - 1, n).round().astype(int)):
            alloc[nonempty[j]] = 1
    else:
        quota = [n * m / total for m in lengths]
        alloc = [min(m, max(1, int(q))) if m else 0 for m, q in zip(lengths, quota, strict=True)]
        while sum(alloc) > n:  # minimums of one overshot: take from the most over-served clip
            i = max((i for i in range(k) if alloc[i] > 1), key=lambda i: alloc[i] - quota[i])
            alloc[i] -= 1
        while sum(alloc) < n:  # hand the rest to the most under-served clips with frames left
            room = [i for i in range(k) if alloc[i] < lengths[i]]
            if not room:
                break
            i = max(room, key=lambda i: quota[i] - alloc[i])
            alloc[i] += 1
    return [sorted({int((j + 0.5) * m / a) for j in range(a)}) if a else [] for m, a in zip(lengths, alloc,
                                                                                             strict=True)]


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def title_lines(figures: dict[str, Any]) -> list[str]:
    """The two lines of the contact sheet's title strip."""
    f = figures
    return [
        f"{f['identity']}   {f['n_clips']} clip(s)   {f['n_rows']} frames   {_fmt(f['duration_s'], '.1f', ' s')}"
        f"   {_fmt(f['fps'], 'g', ' fps')}",
        f"face {_fmt(f['face_detection_rate'], '.1%')}   jitter {_fmt(f['landmark_jitter_px'], '.2f', ' px')}"
        f"   reproj {_fmt(f['reprojection_error_px'], '.2f', ' px')}   blinks {f['blink_count']}"
        f" ({_fmt(f['blinks_per_minute'], '.1f', '/min')})   speech {_fmt(f['speech_s'], '.1f', ' s')}",
    ]


def identity_report(dataset: Dataset, identity: str, n: int = 12, cols: int = 4,
                    tile: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """The contact sheet and figures of one identity.

    The figures come from :data:`LIGHT_COLUMNS` (frame rate from ``time_s``); then ``n`` frames are
    picked over all the identity's clips (:func:`spread_picks`) and only their clips' image columns
    are read, one clip at a time, so memory holds at most one clip's images.

    Args:
        dataset: the dataset.
        identity: the identity.
        n: frames on the sheet.
        cols: tiles per sheet row.
        tile: tile side (px).

    Returns:
        RGB sheet [TITLE_HEIGHT + ceil(n' / cols) * tile, cols * tile, 3] (``n'`` = frames picked, at
        most ``n``) and the figures of :func:`identity_figures`.

    Raises:
        KeyError: the identity has no frames in the dataset.
    """
    light = dataset.frames(identity, columns=LIGHT_COLUMNS)
    figures = identity_figures(light, fps=frame_rate(light))
    figures["identity"] = identity
    figures.update(timeline.conversation_figures(dataset, identity))
    bounds = _clip_bounds(light.column("clip_id").to_numpy(zero_copy_only=False))
    idx = light.column("frame_index").to_numpy(zero_copy_only=False)
    picks = spread_picks([b - a for _, a, b in bounds], n)
    rows: list[dict[str, Any]] = []
    for (cid, a, _), pos in zip(bounds, picks, strict=True):
        if not pos:
            continue
        wanted = pa.array([int(idx[a + p]) for p in pos], pa.int32())
        frames = dataset.frames(identity, columns=IMAGE_COLUMNS, clip_ids=[cid])
        rows.extend(frames.filter(pc.is_in(frames.column("frame_index"), value_set=wanted)).to_pylist())
        del frames
    sheet = qc.contact_sheet(rows, n=len(rows), cols=cols, tile=tile)
    return np.concatenate([timeline.text_strip(title_lines(figures), sheet.shape[1], TITLE_HEIGHT), sheet], 0), figures


def report_paths(identity: str) -> tuple[str, str]:
    """Where an identity's sheet and figures go, relative to the dataset root."""
    return f"qc/{identity}.png", f"qc/{identity}.json"


QUALITY_TABLE_PATH = "qc/quality.csv"


def write_identity_report(dataset: Dataset, identity: str) -> dict[str, Any]:
    """Write ``qc/<identity>.png``, ``qc/<identity>.json`` and the timelines of its conversations.

    Returns:
        The figures written.

    Raises:
        KeyError: the identity has no frames in the dataset.
    """
    sheet, figures = identity_report(dataset, identity)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{identity}: could not encode the contact sheet as PNG")
    png_rel, json_rel = report_paths(identity)
    dataset.storage.write_bytes(png_rel, png.tobytes())
    dataset.storage.write_bytes(json_rel, (json.dumps(figures, indent=2) + "\n").encode())
    timeline.write_timelines(dataset, identity)
    return figures


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else str(round(value, 3))
    return str(value)


def write_quality_table(dataset: Dataset, figures: list[dict[str, Any]]) -> None:
    """Write ``qc/quality.csv``: a header of :data:`FIGURE_COLUMNS`, then one line per identity.

    Lines are sorted by identity; floats are rounded to 3 decimals; missing figures are empty.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIGURE_COLUMNS)
    for f in sorted(figures, key=lambda f: str(f.get("identity"))):
        writer.writerow([_cell(f.get(c)) for c in FIGURE_COLUMNS])
    dataset.storage.write_bytes(QUALITY_TABLE_PATH, buf.getvalue().encode())


def read_quality_table(dataset: Dataset) -> list[dict[str, Any]]:
    """``qc/quality.csv`` back as dicts (numbers parsed, empty cells None)."""
    out = []
    for rec in csv.DictReader(io.StringIO(dataset.storage.read_bytes(QUALITY_TABLE_PATH).decode())):
        row: dict[str, Any] = {}
        for k, v in rec.items():
            if v == "":
                row[k] = None
            elif k in ("n_clips", "n_rows", "blink_count", "speaker_segments"):
                row[k] = int(v)
            elif k == "identity":
                row[k] = v
            else:
                row[k] = float(v)
        out.append(row)
    return out


def write_reports(dataset: Dataset, identities: list[str] | None = None) -> list[dict[str, Any]]:
    """Write every identity's report (default: all with frames) and ``qc/quality.csv``; returns the figures."""
    names = dataset.identity_names() if identities is None else identities
    figures = [write_identity_report(dataset, name) for name in names]
    write_quality_table(dataset, figures)
    return figures
