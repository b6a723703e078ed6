"""The Tune function trainable of a fan-out: one identity under one set of config overrides, tracked in its MLflow
run, reporting a quick held-out PSNR and its checkpoint at every trainer checkpoint (so Tune restarts a trial whose
worker died from there, in the same run)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import learnt_audio, pyfunc, tracking
from jobs.fanout_config import FanoutJob, apply_overrides
from jobs.tracking import KIND_TAG, TRIAL_TAG, flatten

REPORT_DIR = "report"
"""Trial-local directory handed to Tune at each report (a copy of the checkpoint + the run id)."""
QUICK_VAL_FRAMES = 2
"""Held-out frames rendered for ``val_psnr`` at each checkpoint."""

def trial_main(config: dict[str, Any], job: dict[str, Any], run: dict[str, Any]) -> None:
    """The Tune function trainable: train one identity under one set of overrides.

    Args:
        config: the trial's point: ``identity`` and the search space's dotted config keys.
        job: the :class:`FanoutJob` as a dict; run: tracking settings and the forwarded environment (both
            handed over with ``tune.with_parameters``, so credentials stay out of the trials' params.json).
    """
    from ray import tune

    t_start, t_wall = time.perf_counter(), time.time()
    run_info = run  # `run` is the parameter's name in with_parameters; the body uses `trun` for the MLflow run
    os.environ.update(run_info.get("env", {}))
    fj = FanoutJob(**job)
    identity = str(config["identity"])
    overrides = {k: v for k, v in config.items() if k != "identity"}
    ctx = tune.get_context()
    key = f"{run_info['tune_name']}/{ctx.get_trial_id()}"
    work = Path(fj.work_root or Path(tempfile.gettempdir()) / "parley-trials") / run_info["tune_name"] / \
        ctx.get_trial_id()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pid").write_text(str(os.getpid()))

    from jobs.train import CHECKPOINT, EVAL_JSON, EVAL_VIDEO, QC_DIR, TrainJob, recipe, train_identity
    from nerf.config import config_to_json

    restored = tune.get_checkpoint()
    resumed_step = 0
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copy(Path(d) / CHECKPOINT, work / CHECKPOINT)
            resumed_step = int(json.loads((Path(d) / "state.json").read_text())["global_step"])
    else:
        (work / CHECKPOINT).unlink(missing_ok=True)  # a fresh trial never inherits a stale local file

    import torch

    device = "cuda" if run_info.get("gpu") and torch.cuda.is_available() else "cpu"
    tjob = TrainJob(dataset=fj.dataset, identity=identity, output=work, preset=fj.preset, method=fj.method,
                    device=device,
                    s3_endpoint=fj.s3_endpoint, steps_scale=fj.steps_scale, max_frames=fj.max_frames,
                    audio_source=fj.audio_source,
                    threads=max(1, int(fj.cpus_per_trial)), tracking_uri=run_info["tracking_uri"])
    cfg, pinned = learnt_audio.pin(apply_overrides(recipe(tjob), overrides), run_info["tracking_uri"])
    cfg_json = json.loads(config_to_json(cfg))

    uri = run_info["tracking_uri"]
    tags = {tracking.IDENTITY_TAG: identity, "parley.method": fj.method, "parley.preset": fj.preset or "default",
            "parley.dataset_version": run_info["dataset_version"], tracking.TUNE_TAG: run_info["tune_name"],
            tracking.STORAGE_TAG: run_info["storage"]}
    if run_info.get("parent_run_id"):
        tags[tracking.PARENT_TAG] = run_info["parent_run_id"]
    name = f"{identity}" + (f"-{ctx.get_trial_id()}" if overrides else "")
    trun = TrialRun(uri, run_info["experiment_id"], key, name, tags)
    trun.start()
    trun.log_params({"config": cfg_json, "dataset": fj.dataset, "dataset_version": run_info["dataset_version"],
                    "git_commit": run_info["git_commit"], "identity": identity, "method": fj.method,
                    "preset": cfg.name,
                    "device": device, "overrides": overrides or "none"})
    if not trun.resumed:
        trun.log_dict(cfg_json, "config.json")
    if pinned:  # the audio-lip version this avatar's audio net came from
        trun.set_tags({"parley.audio_lip": pinned["audio_lip_model"]})
    if resumed_step:
        trun.set_tags({"parley.resumed_from_step": resumed_step})
    stage_state: dict[str, Any] = {"stage": None, "t0": time.perf_counter(), "loss": None, "samples": 0, "s": 0.0}

    def close_stage(step: int) -> None:
        s = stage_state["stage"]
        if s is not None:
            trun.log_metrics({f"stage_{s}_seconds": time.perf_counter() - stage_state["t0"],
                             f"stage_{s}_final_loss": stage_state["loss"],
                             f"stage_{s}_samples_per_s": stage_state["samples"] / max(stage_state["s"], 1e-9)},
                            step, flush=True)

    def on_step(r) -> None:  # noqa: ANN001
        if r.stage != stage_state["stage"]:
            close_stage(r.global_step - 1)
            stage_state.update(stage=r.stage, t0=time.perf_counter(), samples=0, s=0.0)
        stage_state["loss"] = r.loss
        stage_state["samples"] += r.samples
        stage_state["s"] += r.seconds
        trun.log_metrics({"loss": r.loss, "lr": r.lr, "samples_per_s": r.samples / max(r.seconds, 1e-9),
                         **{f"loss_{k}": v for k, v in r.losses.items()}}, r.global_step)

    def on_checkpoint(path: Path, trainer) -> None:  # noqa: ANN001
        val = quick_val_psnr(trainer)
        rep = work / REPORT_DIR
        shutil.rmtree(rep, ignore_errors=True)
        rep.mkdir()
        shutil.copy(path, rep / CHECKPOINT)
        state = {"global_step": trainer.global_step, "stage": trainer.stage, "run_id": trun.run_id}
        (rep / "state.json").write_text(json.dumps(state))
        trun.log_metrics({"val_psnr": val}, trainer.global_step, flush=True)
        tune.report({"val_psnr": val, "global_step": trainer.global_step, "stage": trainer.stage, "finished": False,
                     "resumed_from_step": resumed_step, "run_id": trun.run_id},
                    checkpoint=tune.Checkpoint.from_directory(str(rep)))

    try:
        result = train_identity(tjob, on_step=on_step, on_checkpoint=on_checkpoint, config=cfg)
        close_stage(int(result["steps"]))
        metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
        trun.log_metrics(metrics, int(result["steps"]), flush=True)
        trun.log_artifacts([work / EVAL_JSON, work / EVAL_VIDEO], "evaluation")
        trun.log_artifacts(sorted((work / QC_DIR).glob("*.png")), "qc")
        pyfunc.log_model(uri, trun.run_id, work / CHECKPOINT)
        trun.end("FINISHED")
    except BaseException:
        trun.end("FAILED")
        raise
    tune.report({**metrics, "val_psnr": metrics.get("psnr", float("nan")), "global_step": int(result["steps"]),
                 "stage": "done", "finished": True, "resumed_from_step": resumed_step, "run_id": trun.run_id,
                 "trial_seconds": time.perf_counter() - t_start, "train_seconds": float(result["seconds"]),
                 "trial_start_time": t_wall, "trial_end_time": time.time()})


def quick_val_psnr(trainer, n: int = QUICK_VAL_FRAMES) -> float:  # noqa: ANN001
    """PSNR of up to ``n`` held-out frames (evenly spread), rendered as the method says a model partly trained so
    far compares with its frames (:meth:`nerf.model.AvatarModel.validation_options`); NaN without held-out
    frames."""
    import numpy as np
    import torch

    from nerf.metrics import psnr

    val = trainer.data.val_ids
    if len(val) == 0:
        return float("nan")
    picks = val[np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)]
    options = trainer.model.validation_options(trainer.reached)
    vals = []
    for f in picks.tolist():
        gt = torch.from_numpy(trainer.data.images[f]).float() / 255.0
        vals.append(psnr(trainer.render_frame(f, **options), gt))
    return float(np.mean(vals))


def find_trial_run(uri: str, exp_id: str, key: str) -> str | None:
    """The run of a trial key, if one exists (the oldest, should there be several)."""
    runs = tracking.client(uri).search_runs([exp_id], filter_string=f"tags.`{TRIAL_TAG}` = '{key}'",
                                   order_by=["attributes.start_time ASC"], max_results=5)
    return runs[0].info.run_id if runs else None


@dataclass
class TrialRun:
    """The MLflow run of one training trial: params, buffered metrics, artifacts.

    Args:
        uri: tracking URI.
        exp_id: experiment id.
        key: restart-proof trial key (see :data:`TRIAL_TAG`).
        name: run name.
        tags: extra tags (identity, parent run id, ...).
    """

    uri: str
    exp_id: str
    key: str
    name: str
    tags: dict[str, str]
    run_id: str = ""
    resumed: bool = False
    flush_every_s: float = 5.0

    def __post_init__(self) -> None:
        self._client = tracking.client(self.uri)
        self._metrics: list[Any] = []
        self._last_flush = time.monotonic()
        self._through: dict[str, int] = {}

    def start(self) -> str:
        """Create the run, or find this trial's earlier run and reopen it; returns the run id."""
        existing = find_trial_run(self.uri, self.exp_id, self.key)
        if existing:
            self.run_id, self.resumed = existing, True
            self._client.update_run(existing, status="RUNNING")
        else:
            run = self._client.create_run(self.exp_id, run_name=self.name,
                                          tags={TRIAL_TAG: self.key, KIND_TAG: "trial", **self.tags})
            self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (flattened); a resumed run keeps the values it has (MLflow params are immutable)."""
        from mlflow.entities import Param

        have = self._client.get_run(self.run_id).data.params if self.resumed else {}
        items = [Param(k, tracking.param_value(v)) for k, v in flatten(params).items() if k not in have]
        for k in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[k:k + 100])

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = False) -> None:
        """Buffer metrics at a step (non-finite values dropped); sent every few seconds or on ``flush``.

        In a resumed run, a metric at a step the run already holds is not sent again: a trial restored from its
        checkpoint re-trains the steps after it, and with the checkpoint's random state, to the same values.
        """
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                          if v is not None and math.isfinite(float(v)) and step > self._logged_through(k)]
        if flush or time.monotonic() - self._last_flush > self.flush_every_s:
            self.flush()

    def _logged_through(self, key: str) -> int:
        """The highest step of ``key`` the run held when it was reopened (-1 for a new run); one query per key."""
        if not self.resumed:
            return -1
        if key not in self._through:
            hist = self._client.get_metric_history(self.run_id, key)
            self._through[key] = max((int(m.step) for m in hist), default=-1)
        return self._through[key]

    def flush(self) -> None:
        """Send buffered metrics."""
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload files (missing ones skipped)."""
        for p in paths:
            if Path(p).is_file():
                self._client.log_artifact(self.run_id, str(p), artifact_path)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self._client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._client.set_terminated(self.run_id, status=status)
