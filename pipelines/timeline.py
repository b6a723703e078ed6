"""QC picture of a conversation: who speaks when, beside the evidence (mouths, audio, confidence), on one time axis.

For each conversation of an identity whose report is written, :func:`write_timelines` writes
``qc/conversation_<conversation_id>.png`` (:func:`timeline_image`), and :func:`conversation_figures` gives the
identity's ``speaker_segments`` and ``speaking_share`` for ``qc/quality.csv`` (:mod:`pipelines.report`).

Drawn with OpenCV, not matplotlib: cv2 is already what every QC image here is made with, needs no display or
backend (headless workers), and imports in milliseconds; the picture is a few lanes of lines and bars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipelines.conversations import Conversation, list_conversations, read_conversation

if TYPE_CHECKING:
    from pipelines.dataset import Dataset

TIMELINE_COLUMNS = ["time_s", "face_found", "mouth_opening", "rms", "speaking_confidence"]
"""``frames/`` columns a timeline is drawn from (besides the conversation's light columns)."""
WIDTH = 1200
"""Width (px) of a timeline image."""
MARGIN = 190
"""Left margin (px) holding the lane labels."""
PERSON_COLOURS = [(231, 76, 60), (52, 152, 219)]
"""RGB of person 0 (left) and 1 (right)."""
SILENT_COLOUR = (150, 150, 150)
DB_FLOOR = -60.0
"""The audio lane's bottom (dB re full scale); quieter frames (and silence, rms 0) are drawn there."""
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BG, _FG, _GRID = (24, 24, 24), (235, 235, 235), (70, 70, 70)


def text_strip(lines: list[str], width: int, height: int) -> np.ndarray:
    """RGB [height, width, 3]: lines of white text on dark grey, each shrunk to fit the width."""
    strip = np.full((height, width, 3), 32, np.uint8)
    thick = 1
    line_h = height // max(len(lines), 1)
    for k, text in enumerate(lines):
        scale = 0.6
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
        if tw > width - 16:
            scale *= (width - 16) / tw
            (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
        y = k * line_h + (line_h + th) // 2
        cv2.putText(strip, text, (8, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return strip


def png_path(conversation_id: str) -> str:
    """Where a conversation's timeline goes, relative to the dataset root."""
    return f"qc/conversation_{conversation_id}.png"


def _floats(conv: Conversation, identity: str, name: str) -> np.ndarray:
    return np.asarray(conv.frames[identity].column(name).to_numpy(zero_copy_only=False), np.float64)


def _curve(img: np.ndarray, y0: int, h: int, x: np.ndarray, v: np.ndarray, lo: float, hi: float,
           colour: tuple[int, int, int]) -> None:
    """A polyline of ``v`` (NaN: a gap) scaled from [lo, hi] into the lane at rows y0..y0+h."""
    y = y0 + h - 2 - (np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1) * (h - 4))
    ok = np.isfinite(y)
    edges = np.flatnonzero(np.diff(ok.astype(np.int8))) + 1
    for a, b in zip(np.r_[0, edges], np.r_[edges, len(v)], strict=True):
        if ok[a] and b - a >= 1:
            pts = np.stack([x[a:b], y[a:b]], 1).round().astype(np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)


def _label(img: np.ndarray, y0: int, h: int, text: str, colour: tuple[int, int, int] = _FG) -> None:
    scale = 0.45
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    if tw > MARGIN - 12:
        scale *= (MARGIN - 12) / tw
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(img, text, (6, y0 + (h + th) // 2), _FONT, scale, colour, 1, cv2.LINE_AA)


def _tick_step(duration_s: float, most: int = 15) -> float:
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if duration_s / step <= most:
            return float(step)
    return 1200.0


def timeline_image(conv: Conversation, width: int = WIDTH, lane: int = 70) -> np.ndarray:
    """The conversation's timeline as RGB [H, width, 3].

    Lanes, top to bottom under a title strip: each person's mouth opening (in the person's colour, gaps where the
    face is missing; the frames where the person speaks shaded in that colour); the audio envelope (``rms`` in dB
    full scale, floor :data:`DB_FLOOR`); the speaker segments as bars (the speaker's colour with its name, grey for
    nobody); ``speaking_confidence`` (0-1, dashed at 0.5); then the time axis in seconds.

    Args:
        conv: a conversation from :func:`pipelines.conversations.read_conversation` with :data:`TIMELINE_COLUMNS`.
        width: image width (px).
        lane: height (px) of a lane.

    Raises:
        ValueError: the conversation has no rows (a listing, or no frames) or lacks a column of
            :data:`TIMELINE_COLUMNS`.
    """
    a, b = conv.identities
    missing = [c for c in TIMELINE_COLUMNS if not conv.frames or c not in conv.frames[a].column_names]
    if missing or not conv.frames[a].num_rows:
        raise ValueError(f"conversation {conv.conversation_id}: read it with columns {TIMELINE_COLUMNS} "
                         f"(lacks {missing or 'rows'})")
    n = max(conv.n_frames, 1)
    fi = conv.frames[a].column("frame_index").to_numpy().astype(np.float64)
    f0, span = float(fi[0]), max(float(fi[-1]) + 1 - float(fi[0]), 1.0)
    plot_w = width - MARGIN - 10

    def x_of(frame: np.ndarray | float) -> np.ndarray:
        return MARGIN + (np.asarray(frame, np.float64) - f0) / span * plot_w

    title = text_strip([
        f"conversation {conv.conversation_id}   {n} frames   {conv.n_frames / conv.fps:.1f} s at {conv.fps:g} fps"
        f"   {len(conv.segments)} segment(s)",
        f"{a} (left) speaks {conv.speaking_share(a):.0%}   {b} (right) speaks {conv.speaking_share(b):.0%}",
    ], width, 50)
    lanes = 5
    img = np.full((lanes * lane + 34, width, 3), _BG, np.uint8)
    x = x_of(fi)
    x_end = x_of(fi + 1)

    # per person: mouth opening, the segments it speaks in shaded
    mouths = [_floats(conv, i, "mouth_opening") for i in (a, b)]
    top = max([float(np.nanmax(m)) for m in mouths if np.isfinite(m).any()] + [0.1])
    for k, ident in enumerate((a, b)):
        y0 = k * lane
        shade = tuple(int(0.35 * c + 0.65 * _BG[0]) for c in PERSON_COLOURS[k])
        for s in conv.segments:
            if s.speaker == ident:
                cv2.rectangle(img, (int(x_of(s.start)), y0 + 2), (int(x_of(s.end)), y0 + lane - 3), shade, -1)
        _curve(img, y0, lane, (x + x_end) / 2, mouths[k], 0.0, top, PERSON_COLOURS[k])
        _label(img, y0, lane, f"{ident} mouth", PERSON_COLOURS[k])

    # audio envelope (dB)
    rms = _floats(conv, a, "rms")
    rms = np.where(np.isfinite(rms), rms, _floats(conv, b, "rms"))
    db = np.where(rms > 0, 20 * np.log10(np.maximum(rms, 1e-12)), DB_FLOOR)
    _curve(img, 2 * lane, lane, (x + x_end) / 2, np.maximum(db, DB_FLOOR), DB_FLOOR, 0.0, _FG)
    _label(img, 2 * lane, lane, f"audio rms dB ({DB_FLOOR:g}..0)")

    # speaker segments
    y0 = 3 * lane
    for s in conv.segments:
        colour = PERSON_COLOURS[conv.identities.index(s.speaker)] if s.speaker else SILENT_COLOUR
        x0 = int(np.rint(x_of(s.start)))
        x1 = max(int(np.rint(x_of(s.end))) - 1, x0)
        cv2.rectangle(img, (x0, y0 + 12), (x1, y0 + lane - 12), colour, -1)
        text = s.speaker or "silent"
        (tw, th), _ = cv2.getTextSize(text, _FONT, 0.4, 1)
        if tw + 6 < x1 - x0:
            cv2.putText(img, text, (x0 + 3, y0 + (lane + th) // 2), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    _label(img, y0, lane, "speaker")

    # confidence
    y0 = 4 * lane
    half = y0 + lane // 2
    for xs in range(MARGIN, width - 10, 8):
        cv2.line(img, (xs, half), (xs + 3, half), _GRID, 1)
    _curve(img, y0, lane, (x + x_end) / 2, _floats(conv, a, "speaking_confidence"), 0.0, 1.0, (241, 196, 15))
    _label(img, y0, lane, "speaking confidence")

    # lane separators and the time axis
    for k in range(1, lanes + 1):
        cv2.line(img, (MARGIN, k * lane), (width - 10, k * lane), _GRID, 1)
    axis = lanes * lane
    step = _tick_step(span / conv.fps)
    t0 = f0 / conv.fps
    for t in np.arange(np.ceil(t0 / step) * step, t0 + span / conv.fps + 1e-9, step):
        xt = int(np.rint(x_of(t * conv.fps)))
        cv2.line(img, (xt, 0), (xt, axis + 5), _GRID, 1)
        cv2.putText(img, f"{t:g}", (xt - 8, axis + 22), _FONT, 0.45, _FG, 1, cv2.LINE_AA)
    cv2.putText(img, "time (s)", (6, axis + 22), _FONT, 0.45, _FG, 1, cv2.LINE_AA)
    return np.concatenate([title, img], 0)


def conversation_figures(dataset: Dataset, identity: str) -> dict[str, Any]:
    """``speaker_segments`` (segments in which ``identity`` speaks, over its conversations) and ``speaking_share``
    (fraction of its conversations' frames in which it speaks); both None without conversations."""
    convs = list_conversations(dataset, identity)
    frames = sum(c.n_frames for c in convs)
    if not convs:
        return {"speaker_segments": None, "speaking_share": None}
    return {"speaker_segments": sum(s.speaker == identity for c in convs for s in c.segments),
            "speaking_share": sum(c.speaking_frames(identity) for c in convs) / frames if frames else None}


def write_timelines(dataset: Dataset, identity: str) -> list[str]:
    """Write the timeline of every conversation of ``identity``; returns the paths written (relative)."""
    written = []
    for conv in list_conversations(dataset, identity):
        image = timeline_image(read_conversation(dataset, conv.conversation_id, TIMELINE_COLUMNS))
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"{conv.conversation_id}: could not encode the timeline as PNG")
        dataset.storage.write_bytes(png_path(conv.conversation_id), png.tobytes())
        written.append(png_path(conv.conversation_id))
    return written
