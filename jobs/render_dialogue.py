"""``parley render-dialogue``: a conversation rendered from one audio file with a DialogueNeRF model. Both people's
head poses and the listener's expressions are generated from the audio (the model's forecasters, run frame by
frame), the roles follow a script, and the two renders are placed side by side with the audio muxed in.

A script (``--script roles.csv``) is a CSV with a header ``start,end,speaker``: times in seconds and the speaking
person's identity, or ``none`` for a stretch where nobody speaks. Times it does not cover have no speaker. Without
a script, the conversation's first speaker speaks the whole audio.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.errors import fail
from jobs.render import driving_audio, even_size, output_path, progress_of
from jobs.train_args import MAX_RENDER_SECONDS
from nerf.avatar import AudioError, Avatar
from nerf.checkpoint import CheckpointError, require_method
from workers.errors import ClipError

NOBODY = ("none", "")


def read_script(path: str | Path, people: tuple[str, ...], n: int, fps: float) -> np.ndarray:
    """A roles script as speaking flags per frame and person: float32 [n, P].

    Raises:
        ValueError: not a readable CSV with ``start,end,speaker``, a speaker the model lacks, a stretch that ends
            before it starts, or stretches that overlap (each names the file and the row).
    """
    p = Path(path)
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"--script {p}: cannot be read ({exc})") from exc
    if rows and not {"start", "end", "speaker"} <= set(rows[0]):
        raise ValueError(f"--script {p}: the header must name start,end,speaker (has {', '.join(rows[0])})")
    out = np.zeros((n, len(people)), np.float32)
    taken = np.zeros(n, bool)
    for k, row in enumerate(rows, start=2):
        try:
            start, end = float(row["start"]), float(row["end"])
        except (TypeError, ValueError):
            raise ValueError(f"--script {p} line {k}: start and end must be seconds, got {row['start']!r}, "
                             f"{row['end']!r}") from None
        who = (row["speaker"] or "").strip()
        if not end > start >= 0:
            raise ValueError(f"--script {p} line {k}: a stretch must have 0 <= start < end (got {start}, {end})")
        if who.lower() not in NOBODY and who not in people:
            raise ValueError(f"--script {p} line {k}: speaker {who!r} is not in the model (people: "
                             f"{', '.join(people)}; or none)")
        a, b = (min(int(np.ceil(x * fps - 1e-6)), n) for x in (start, end))  # frames t with start <= t / fps < end
        if taken[a:b].any():
            raise ValueError(f"--script {p} line {k}: the stretch {start}-{end} s overlaps an earlier one")
        taken[a:b] = True
        if who.lower() not in NOBODY:
            out[a:b, people.index(who)] = 1.0
    return out


def first_speaker(avatar: Avatar) -> int:
    """The person who speaks first in the training frames (lowest frame index of a speaking frame; person 0 when
    nobody speaks)."""
    speaking = avatar.model.frame_speaking.cpu().numpy() > 0.5  # type: ignore[union-attr,operator]
    person = avatar.model.frame_person.cpu().numpy()  # type: ignore[union-attr,operator]
    frames = avatar.kit["frame_index"].numpy() if "frame_index" in avatar.kit else np.arange(len(person))
    if not speaking.any():
        return 0
    first = np.flatnonzero(speaking)[np.argmin(frames[speaking])]
    return int(person[first])


def render_dialogue(checkpoint: str | Path, audio: str | Path, out: str | Path, script: str | Path | None = None,
                    size: int | None = None, fps: float = 25.0, device: str = "cpu", progress: bool = False,
                    max_seconds: float | None = MAX_RENDER_SECONDS, seed: int = 0, temperature: float = 1.0,
                    listener_expression: str | Path | None = None, method: str | None = None) -> dict[str, Any]:
    """Render a conversation of a DialogueNeRF model's two people (side by side, the first person on the left)
    speaking and listening to an audio file: an mp4 with the audio muxed in.

    Args:
        script: roles per stretch (:func:`read_script`); None: the first speaker (:func:`first_speaker`) speaks.
        size: each person's side in pixels (default: the training size); the video is 2 size x size.
        seed, temperature: the draws of the generated motion (:func:`nerf.dialogue.generate.generate`).
        listener_expression: a video whose face's expression drives whoever listens, instead of the generated one
            (a real listener track); it plays back and forth when shorter than the audio.
        method: the method the checkpoint must be of (None: any method of several people).

    Returns:
        ``video``, ``frames``, ``seconds``, ``fps`` (rendered conversation frames per second), ``people``,
        ``speaking_share`` per person, ``poses`` (the generated 6-D poses, [T, P, 6]).

    Raises:
        CheckpointError: unreadable, or not a model of several people; ClipError, AudioError: see
        :func:`jobs.render.driving_audio`; ValueError: a bad script, size or output path.
    """
    import torch

    from nerf.dialogue.generate import generate
    from nerf.dialogue.model import EXPRESSION, Dialogue
    from nerf.dialogue.motion import voice_features
    from workers.pose import pose_from_6d
    from workers.video_writer import VideoWriter

    out = output_path(out)
    avatar = Avatar.from_checkpoint(checkpoint, device)
    require_method(checkpoint, avatar.method, method)
    model = avatar.model
    if not isinstance(model, Dialogue):
        raise CheckpointError(f"{checkpoint}: a {avatar.method} model of one person; render-dialogue renders "
                              "conversations (train one with --method dialogue)")
    people = avatar.people
    if len(people) != 2:
        raise ValueError(f"{checkpoint}: the model holds {len(people)} people ({', '.join(people)}); render-dialogue "
                         "renders a conversation of two")
    sound = driving_audio(audio, fps, max_seconds)
    n = sound.mel.shape[0]
    size = even_size(size or int(avatar.kit["size"]))
    if script is None:
        speaking = np.zeros((n, 2), np.float32)
        speaking[:, first_speaker(avatar)] = 1.0
    else:
        speaking = read_script(script, people, n, fps)
    motion = generate(model, voice_features(sound.zcr, sound.rms), speaking, [0, 1], temperature=temperature,
                      seed=seed)
    expression = torch.from_numpy(motion.expression)
    if listener_expression is not None:
        from jobs.expression_source import read_expression_source

        src = read_expression_source(listener_expression, "ict")
        real = model.driving_inputs({EXPRESSION: src.features})["expression"].cpu()
        expression = real[torch.from_numpy(src.frames_for(n, fps))][:, None].expand(n, 2, -1)
    streams = []
    for k in range(2):
        _, eye = avatar.driving_track(n, k)
        extra = {"person": torch.full((n,), k), "speaking": torch.from_numpy(speaking[:, k]),
                 "expression": expression[:, k]}
        streams.append(avatar.render(sound.mel, size=size, poses=pose_from_6d(motion.poses[:, k]), eye=eye,
                                     extra=extra, person=k))
    t0 = time.perf_counter()
    with VideoWriter(out, fps=fps, size=(2 * size, size), audio=audio) as video:
        for left, right in progress_of(zip(*streams, strict=True), n, progress):
            video.write(np.concatenate([left, right], axis=1))
    secs = time.perf_counter() - t0
    return {"video": str(out), "frames": n, "seconds": secs, "fps": n / secs if secs else float("inf"),
            "people": list(people), "speaking_share": speaking.mean(0).tolist(), "poses": motion.poses}


def run_cli(args: argparse.Namespace) -> int:
    """``parley render-dialogue``: a checkpoint file (``--checkpoint``) or a registered version's (``--model``)."""
    from jobs.registry_cli import registered_checkpoint

    try:
        with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
            checkpoint = registered_checkpoint("render-dialogue", args, tmp) if args.model else args.checkpoint
            r = render_dialogue(checkpoint, args.audio, args.out, script=args.script, size=args.size,
                                device=args.device, progress=True,
                                max_seconds=args.max_seconds if args.max_seconds > 0 else None, seed=args.seed,
                                temperature=args.temperature, listener_expression=args.listener_expression,
                                method=args.method)
    except (CheckpointError, ClipError, AudioError, ValueError, LookupError, RuntimeError) as exc:
        return fail("render-dialogue", exc)
    shares = ", ".join(f"{p} speaks {s:.0%}" for p, s in zip(r["people"], r["speaking_share"], strict=True))
    print(f"rendered {r['frames']} frames ({shares}) in {r['seconds']:.1f} s ({r['fps']:.1f} frames/s) -> "
          f"{r['video']}")
    return 0
