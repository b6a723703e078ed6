"""Helpers the benchmark scripts share: the default clip and work directory, the cached one-clip dataset, stage
step counts, and ``--set`` / ``--variant`` config overrides (dotted keys as in ``parley sweep``)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("PARLEY_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("PARLEY_ASSETS", str(SHARED / "assets"))

from jobs.fanout_config import FanoutError, apply_overrides  # noqa: E402
from nerf.config import ExperimentConfig  # noqa: E402

DEFAULT_CLIP = SHARED / "data" / "clips" / "RD_Radio2_000.mp4"
"""The clip the benchmarks train on unless told otherwise."""
DEFAULT_WORK = Path("/tmp/parley_bench_train")
"""Where ``benchmarks/train.py`` caches its dataset and leaves its checkpoint."""
CHECKPOINT = "checkpoint.pt"


def parse_variant(text: str, option: str = "--variant") -> tuple[str, dict[str, object]]:
    """``name=key=value,key=value`` -> (name, overrides); values are YAML scalars (``false``, ``0.01``). Errors name
    ``option``, the command-line option the text came from."""
    import yaml

    name, _, rest = text.partition("=")
    overrides: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{option}: {item!r} is not key=value (in {text.partition('=')[2]!r})")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def apply_sets(cfg: ExperimentConfig, items: list[str],
               extra: dict[str, object] | None = None) -> tuple[ExperimentConfig, dict[str, object]]:
    """``cfg`` with ``--set KEY=VALUE`` items (and ``extra`` overrides under them) applied -> (config, overrides).
    A bad key or value stops with a one-line ``--set: ...`` error."""
    overrides: dict[str, object] = dict(extra or {})
    for item in items:
        overrides.update(parse_variant(f"set={item}", option="--set")[1])
    try:
        return apply_overrides(cfg, overrides), overrides
    except (ValueError, FanoutError) as e:
        raise SystemExit(f"--set: {e}") from None


def build_dataset(clip: Path, work: Path) -> Path:
    """A one-identity dataset (identity = the clip's stem) of the whole clip, built once and cached in ``work``
    (rebuilt when the clip or the feature builder's version changes).

    Returns:
        The dataset root.
    """
    from pipelines import dataset as D
    from pipelines.commit import write_clip
    from pipelines.storage import Storage
    from workers.clip import ClipConfig, ClipProcessor, clip_id_for
    from workers.config import BUILDER_VERSION
    from workers.errors import ParleyError

    root = work / f"dataset_{clip.stem}"
    done = root / ".complete"
    marker = f"{clip.resolve()}\nbuilder {BUILDER_VERSION}"
    if done.is_file() and done.read_text() == marker:
        return root
    shutil.rmtree(root, ignore_errors=True)  # a stale build: its rows would be kept as they are
    t = time.perf_counter()
    processor = ClipProcessor(ClipConfig())
    try:
        res = processor(str(clip), identity=clip.stem, clip_id=clip_id_for(str(clip.resolve())))
    except ParleyError as e:  # a missing or unreadable clip: its one-line reason, not a traceback
        raise SystemExit(f"{Path(sys.argv[0]).name}: {e}") from e
    finally:
        processor.close()
    st = Storage(root)
    write_clip(st, res, identity=clip.stem)
    D.write_identities(st, D.aggregate_identities(D.Dataset(st).clip_rows().values()))
    done.write_text(marker)
    print(f"dataset: processed {clip.name} ({len(res.rows)} frames) in {time.perf_counter() - t:.0f} s -> {root}",
          flush=True)
    return root


def with_steps(cfg: ExperimentConfig, head: int, lips: int, torso: int) -> ExperimentConfig:
    """``cfg`` with each stage's step count replaced."""
    tc = cfg.trainer
    return replace(cfg, trainer=replace(tc, head=replace(tc.head, steps=head), lips=replace(tc.lips, steps=lips),
                                        torso=replace(tc.torso, steps=torso)))


def run_variants(script: str, clip: Path, variants: list[str], work: Path, run: Any,
                 command: list[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate each variant on ``clip``: ``run(variant)`` -> its report row, one after the other, or with
    ``command`` (this script's command line, which ``--one CLIP VARIANT`` completes) two at a time in subprocesses.
    Each row is also written to :func:`report_path`. A bad input (a missing model version, unreadable data) stops
    with a one-line ``script: clip (variant): reason``."""
    import json
    import subprocess

    rows: list[dict[str, Any]] = []
    name = Path(script).name
    if command is not None:
        for k in range(0, len(variants), 2):
            pair = variants[k:k + 2]
            procs = [subprocess.Popen([*command, "--one", str(clip), v]) for v in pair]
            if any(p.wait() for p in procs):
                raise SystemExit(f"{name}: a run of {pair} on {clip.name} failed")
            rows += [json.loads(report_path(work, script, clip, v).read_text()) for v in pair]
        return rows
    for v in variants:
        try:
            row = run(v)
        except (LookupError, ValueError, FileNotFoundError) as exc:  # RegistryError, DataError, no dataset, ...
            raise SystemExit(f"{name}: {clip.name} ({v}): {exc}") from exc
        report_path(work, script, clip, v).write_text(json.dumps(row, indent=2, default=float))
        rows.append(row)
    return rows


def report_path(work: Path, script: str, clip: Path, variant: str) -> Path:
    """Where :func:`run_variants` leaves a variant's report row: ``<script stem>_<clip stem>_<variant>.json``."""
    return work / f"{Path(script).stem}_{clip.stem}_{variant}.json"


def ensure_audio_models(uri: str, dataset: Path, work: Path, script: str,
                        models: tuple[str, ...] = ("audio-lip", "lip-sync-scorer")) -> None:
    """Train the audio-lip models and the lip-sync scorer on ``dataset`` (``parley train-audio``) when ``uri`` lacks
    a champion of one of ``models``; a failed training stops ``script`` with a one-line error."""
    import subprocess

    from jobs.registry import RegistryError, resolve

    try:
        for name in models:
            resolve(uri, f"models:/{name}@champion")
        return
    except (RegistryError, LookupError):
        pass
    print(f"no {' / '.join(models)} champion in {uri}: training them on {dataset}", flush=True)
    cmd = [sys.executable, "-m", "jobs.cli", "train-audio", "--dataset", str(dataset), "--tracking-uri", uri,
           "--storage", str(work / "ray"), "--cache-dir", str(work / "audio_cache")]
    if subprocess.run(cmd, cwd=ROOT).returncode:
        raise SystemExit(f"{Path(script).name}: parley train-audio failed; pass --tracking-uri of a registry with the "
                         f"{' and '.join(models)} champions (benchmarks/sync.py trains them over many people)")
