"""The frames a DialogueNeRF model trains on: the people of a conversation (or any identities joined by ``+``) read
from a dataset and merged (:func:`nerf.data.merge_people`), with their per-frame inputs: who speaks, the 57 ICT
expression coefficients, the 6-D head pose and the audio's ZCR/RMS.

A **subject** names the people: a conversation id (``parley dataset conversations``) or identities joined by ``+``
(``obama+feifei_li``; a set of solo identities, each frame speaking or not by its clip's voice activity).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from jobs.audio_lip_data import stack_column
from nerf.data import PERSON_SEP, DataError, IdentityFrames, merge_people
from nerf.dialogue.config import EXPRESSION_WIDTH
from nerf.dialogue.model import EXPRESSION, HEAD_POSE, SPEAKING, VOICE
from pipelines.conversations import list_conversations
from pipelines.dataset import Dataset
from pipelines.storage import S3Options
from workers.pose import pose_to_6d

INPUTS = (SPEAKING, EXPRESSION, HEAD_POSE, VOICE)
COLUMNS = ["clip_id", "frame_index", "speaking", "expression", "zcr", "rms"]
SEPARATOR = "+"

if TYPE_CHECKING:
    from torch import Tensor

    from nerf.config import ExperimentConfig


def resolve_people(ds: Dataset, subject: str) -> tuple[list[str], str | None]:
    """The identities a subject names, and the conversation id when it is one.

    Raises:
        KeyError: an unknown subject (the conversations and identities are named).
        ValueError: a conversation in which nobody speaks (no segment has a speaker: nothing tells the speaker's
            frames from the listener's).
    """
    conversations = {c.conversation_id: c for c in list_conversations(ds)}
    if subject in conversations:
        conv = conversations[subject]
        if not any(s.speaker for s in conv.segments):
            raise ValueError(f"{ds.storage.uri}: conversation {subject} has no segment with a speaker (active-speaker "
                             "detection found nobody speaking); a dialogue model needs speaking and listening frames "
                             "(give roles with a manifest override, or train its identities joined by '+')")
        return list(conv.identities), subject
    people = [p for p in subject.split(SEPARATOR) if p]
    known = set(ds.identities().column("identity").to_pylist())
    missing = [p for p in people if p not in known]
    if not people or missing:
        unknown = ", ".join(missing) if missing else repr(subject)
        raise KeyError(f"{ds.storage.uri}: {subject!r} is neither a conversation ({', '.join(conversations) or 'none'})"
                       f" nor identities joined by '{SEPARATOR}' (unknown: {unknown}; "
                       f"identities: {', '.join(sorted(known)) or 'none'})")
    return people, None


def load_people(dataset: str, subject: str, load: Callable[[str], IdentityFrames],
                s3_endpoint: str | None = None) -> IdentityFrames:
    """The merged frames of a subject's people, each read with ``load(identity)`` (its own split).

    Raises:
        KeyError, ValueError: see :func:`resolve_people`; DataError: a person without usable frames.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    people, _ = resolve_people(ds, subject)
    merged, _ = merge_people([load(p) for p in people], subject)
    return merged


def frame_inputs(dataset: str, data: IdentityFrames, s3_endpoint: str | None = None) -> dict[str, np.ndarray]:
    """The per-frame inputs of merged frames (:data:`INPUTS`), one row per frame of ``data``: ``speaking`` [N]
    (null: not speaking), ``expression`` [N, 57], ``head_pose`` [N, 6] (:func:`workers.pose.pose_to_6d`), ``voice``
    [N, 2] (ZCR, RMS).

    Raises:
        DataError: a frame of ``data`` that the dataset no longer has.
    """
    ds = Dataset(dataset, S3Options(endpoint_url=s3_endpoint)).require()
    n = data.n_frames
    out = {SPEAKING: np.zeros(n, np.float32), EXPRESSION: np.zeros((n, EXPRESSION_WIDTH), np.float32),
           HEAD_POSE: pose_to_6d(data.poses).astype(np.float32), VOICE: np.zeros((n, 2), np.float32)}
    person = data.person_of()
    people = data.people or (data.identity,)
    for k, name in enumerate(people):
        rows = np.flatnonzero(person == k)
        want = {(data.clip_ids[r].split(PERSON_SEP, 1)[-1] if data.people else data.clip_ids[r],
                 int(data.frame_index[r])): int(r) for r in rows}
        for batch in ds.iter_frames(name, COLUMNS, batch_rows=512):
            clips = batch.column("clip_id").to_pylist()
            frames = batch.column("frame_index").to_numpy()
            hit = np.array([(c, int(f)) in want for c, f in zip(clips, frames, strict=True)], bool)
            if not hit.any():
                continue
            at = np.array([want.pop((c, int(f))) for c, f, h in zip(clips, frames, hit, strict=True) if h])
            pick = np.flatnonzero(hit)
            speaking = batch.column("speaking").fill_null(False).to_numpy(zero_copy_only=False)
            out[SPEAKING][at] = np.asarray(speaking, np.float32)[pick]
            out[EXPRESSION][at] = stack_column(batch.column("expression"), (EXPRESSION_WIDTH,))[pick]
            for j, col in enumerate(("zcr", "rms")):
                out[VOICE][at, j] = np.asarray(batch.column(col).fill_null(0.0).to_numpy(), np.float32)[pick]
        if want:
            (clip, frame), _ = next(iter(want.items()))
            raise DataError(f"{dataset}: identity {name!r} has no row for clip {clip} frame {frame} any more "
                            f"({len(want)} frames missing); the dataset changed under the run")
    return out


def warm_start_weights(cfg: ExperimentConfig, n_people: int, tracking_uri: str | None = None) -> dict[str, Tensor]:
    """The weights a recipe's ``model.warm_start`` gives a new model of ``n_people``
    (:meth:`nerf.dialogue.model.Dialogue.shared_weights`).

    Raises:
        CheckpointError: not a readable dialogue checkpoint; RegistryError: no such registered version;
        ValueError: a model of another shape (its recipe's fields differ from this one's).
    """
    import tempfile

    from jobs import tracking
    from jobs.registry import fetch_checkpoint
    from nerf.checkpoint import CheckpointError, load_checkpoint
    from nerf.config import config_from_json
    from nerf.dialogue.model import Dialogue

    source = str(getattr(cfg.model, "warm_start", ""))
    with tempfile.TemporaryDirectory(prefix="parley-warm-") as tmp:
        path = fetch_checkpoint(tracking.resolve_tracking_uri(tracking_uri), source, tmp)[0] \
            if source.startswith("models:/") else source
        ckpt = load_checkpoint(path)
    if ckpt["method"] != "dialogue":
        raise CheckpointError(f"warm start {source}: a {ckpt['method']} model; a dialogue model starts from another "
                              "dialogue model")
    theirs = config_from_json(ckpt["config"]).model
    mine = cfg.model
    diff = [f for f in ("head", "torso", "grid", "shape_dim", "appearance_dim", "torso_code_dim", "expression_dim",
                        "expression_hidden") if getattr(theirs, f) != getattr(mine, f)]
    if diff:
        raise ValueError(f"warm start {source}: its model differs from this recipe's in {', '.join(diff)} (train "
                         "with the preset it was trained with)")
    return Dialogue.shared_weights(ckpt["model"], n_people, seed=cfg.trainer.seed)
