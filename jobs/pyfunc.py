"""A checkpoint as an MLflow ``pyfunc`` model (:class:`AvatarModel`), for people who call MLflow themselves;
``parley`` itself reads only a registered version's checkpoint (:func:`jobs.registry.fetch_checkpoint`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.registry import ARTIFACT, CHECKPOINT_IN_MODEL
from jobs.tracking import client

try:  # the pyfunc base class; MLflow is a dependency, but keep `import jobs.registry` cheap to fail clearly
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class AvatarModel(PythonModel):
    """A trained avatar as an MLflow pyfunc model, for people who call MLflow themselves.

    ``predict(model_input, params)``: ``model_input`` is an audio path, a list of them, or a DataFrame with
    an ``audio`` column (and optionally ``out``, the mp4 to write per row; for JEAN ``expression``, a video of
    the person whose expression and poses drive that row, as ``parley render --expression``; for a DialogueNeRF
    model ``script`` and ``listener_expression``, as ``parley render-dialogue``, whose conversation it renders);
    ``params`` may hold ``out_dir`` (default: a new temporary directory), ``size`` (default: the size it was
    trained at) and
    ``device`` (default ``cpu``), declared in the model's signature. Returns the list of mp4 paths.

    Trusted registries only: ``mlflow.pyfunc.load_model`` unpickles the version's ``python_model.pkl``, so it runs
    whatever code the version's author put there. ``parley render --model`` / ``parley evaluate --model`` do not
    use this class; they load only the checkpoint's tensors (:func:`jobs.registry.fetch_checkpoint`).
    """

    def load_context(self, context) -> None:  # noqa: ANN001
        from nerf import methods
        from nerf.checkpoint import load_checkpoint

        self.checkpoint = context.artifacts["checkpoint"]
        self.conversation = methods.get(load_checkpoint(self.checkpoint)["method"]).model.several_people

    def render(self, audio: str, out: str, size: int | None = None, device: str = "cpu",
               progress: bool = False, expression: str | None = None, script: str | None = None,
               listener_expression: str | None = None) -> dict[str, Any]:
        if getattr(self, "conversation", False):  # a dialogue model: parley render-dialogue's inputs
            from jobs.render_dialogue import render_dialogue

            return render_dialogue(self.checkpoint, audio, out, script=script, size=size, device=device,
                                   progress=progress, listener_expression=listener_expression)
        from jobs.render import render_audio

        return render_audio(self.checkpoint, audio, out, size=size, device=device, progress=progress,
                            expression=expression)

    # The hint is DataFrame because it is the one input type MLflow takes without inferring a schema from it (a
    # union is refused, no hint draws a warning at every save); paths and lists pass through unchanged, the model
    # has no signature to validate them against.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:  # noqa: ANN001
        params = params or {}
        if isinstance(model_input, str | Path):
            rows = [{"audio": str(model_input)}]
        elif isinstance(model_input, list):
            rows = [{"audio": str(a)} for a in model_input]
        else:  # a DataFrame
            rows = model_input.to_dict("records")
        out_dir = Path(params.get("out_dir") or tempfile.mkdtemp(prefix="parley-render-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        size = params.get("size")
        videos = []
        for k, row in enumerate(rows):
            out = row.get("out") or str(out_dir / f"{Path(str(row['audio'])).stem}_{k}.mp4")
            opt: dict[str, Any] = {k: str(row[k]) for k in ("expression", "script", "listener_expression")
                                   if row.get(k)}
            self.render(str(row["audio"]), str(out), size=int(size) if size else None,
                        device=str(params.get("device", "cpu")), **opt)
            videos.append(str(out))
        return videos


def save_model(checkpoint: str | Path, path: Path) -> Path:
    """Write the pyfunc model of a checkpoint to a local directory (no tracking server involved).

    The checkpoint lands at :data:`CHECKPOINT_IN_MODEL` whatever its file is called (where
    :func:`jobs.registry.fetch_checkpoint` reads it).

    Args:
        checkpoint: the checkpoint file.
        path: the model directory to create (must not exist).

    Returns:
        ``path``.
    """
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    # MLflow drops every predict() param a signature does not declare (a logged warning, nothing more), so the
    # signature declares them; no input schema: a path, a list of paths and a DataFrame all pass unchanged.
    params = ParamSchema([ParamSpec("out_dir", "string", ""), ParamSpec("size", "long", 0),
                          ParamSpec("device", "string", "cpu")])
    name = Path(CHECKPOINT_IN_MODEL).name
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="parley-ckpt-") as stage:
        src = Path(checkpoint)
        if src.name != name:  # MLflow keeps the file's own name; the layout must not depend on it
            staged = Path(stage) / name
            try:
                os.link(src, staged)
            except OSError:  # another filesystem
                shutil.copyfile(src, staged)
            src = staged
        warnings.filterwarnings("ignore", message="An input example was not provided")
        mlflow.pyfunc.save_model(
            path=str(path), python_model=AvatarModel(), artifacts={"checkpoint": str(src)},
            signature=ModelSignature(params=params),
            # the code is the installed `parley` package; listing requirements skips MLflow's inference
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "parley"],
        )
    return path


def log_model(uri: str, run_id: str, checkpoint: str | Path) -> str:
    """Log a checkpoint's pyfunc model into a run (artifact path :data:`ARTIFACT`); returns its ``runs:/`` URI."""
    with tempfile.TemporaryDirectory(prefix="parley-model-") as tmp:
        path = save_model(checkpoint, Path(tmp) / ARTIFACT)
        client(uri).log_artifacts(run_id, str(path), ARTIFACT)
    return f"runs:/{run_id}/{ARTIFACT}"
