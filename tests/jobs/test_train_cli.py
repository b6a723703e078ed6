"""`parley train`, `evaluate` and `render` end to end on a small real dataset (debug preset, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jobs.render import render_audio
from jobs.train import TrainJob, train_identity
from nerf.avatar import AudioError, pingpong
from nerf.checkpoint import CheckpointError
from tests.conftest import ROOT, SHARED
from tests.conftest import SMALL_IDENTITY as IDENTITY
from workers.errors import ClipError
from workers.media import probe

WAV = SHARED / "data" / "audio" / "RD_Radio31_000.wav"


def _parley(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PARLEY_ASSETS": str(SHARED / "assets")}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory) -> Path:
    """A debug-preset run of the small dataset's identity, through the library function."""
    out = tmp_path_factory.mktemp("run")
    result = train_identity(TrainJob(dataset=str(small_dataset), identity=IDENTITY, output=out, preset="debug"))
    assert result["steps"] == 22 and not result["resumed"]
    return out


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> Path:
    """The first 1.3 s of a shared speech recording, as a 16 kHz mono wav."""
    samples, sr = sf.read(WAV, dtype="float32", always_2d=True)
    path = tmp_path_factory.mktemp("audio") / "short.wav"
    sf.write(path, samples[: int(1.3 * sr), 0], sr)
    return path


def test_train_writes_checkpoint_log_and_evaluation(trained):
    """Training leaves a checkpoint, the step log of all stages, and eval.json + a side-by-side video of the
    held-out frames."""
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log].count("lips") == 4 and log[-1]["stage"] == "torso"
    ev = json.loads((trained / "eval.json").read_text())
    m = ev["metrics"]
    assert m["n_frames"] == 3 and len(ev["frames"]) == 3
    assert 5 < m["psnr"] < 60 and 0 < m["ssim"] <= 1 and 0 <= m["lpips"] < 1 and m["render_s_per_frame"] > 0
    info = probe(trained / "eval_side_by_side.mp4")
    assert (info.width, info.height) == (128, 64) and abs(info.video_duration_s - 3 / 25) < 0.01


def test_rerun_resumes_and_does_not_retrain(small_dataset, trained):
    """Training the same run again resumes from its final checkpoint and takes no step."""
    result = train_identity(TrainJob(dataset=str(small_dataset), identity=IDENTITY, output=trained, preset="debug",
                                     evaluate=False))
    assert result["resumed"] and result["steps"] == 22


def test_render_has_the_audio_duration_and_sound(trained, short_wav, tmp_path):
    """Rendering new audio gives an mp4 as long as the audio (one frame per 40 ms) with an audio stream."""
    out = tmp_path / "speech.mp4"
    r = render_audio(trained / "checkpoint.pt", short_wav, out)
    assert r["frames"] == 33  # ceil(1.3 s * 25)
    info = probe(out)
    assert info.has_audio and abs(info.video_duration_s - 33 / 25) < 0.01
    assert info.audio_duration_s is not None and abs(info.audio_duration_s - 1.3) < 0.05
    assert (info.width, info.height) == (64, 64)


def test_render_bad_inputs(trained, tmp_path):
    """Audio with no samples, a file without audio and a corrupt checkpoint are clear errors; nothing is left."""
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises((AudioError, ClipError), match="empty.wav"):
        render_audio(trained / "checkpoint.pt", empty, tmp_path / "a.mp4")
    silent_video = tmp_path / "video_only.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.5", "-an",
                    str(silent_video)], check=True)
    with pytest.raises(ClipError, match="video_only.mp4"):
        render_audio(trained / "checkpoint.pt", silent_video, tmp_path / "b.mp4")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        render_audio(corrupt, WAV, tmp_path / "c.mp4")
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["video_only.mp4"]  # no output, not even partial


def test_pingpong_walks_back_and_forth():
    """Driving poses walk the training frames forwards then backwards without jumps."""
    assert pingpong(9, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert pingpong(3, 1).tolist() == [0, 0, 0]


def test_cli_train_render_and_errors(small_dataset, trained, short_wav, tmp_path):
    """The CLI trains (debug, no eval), renders, and exits 2 with a readable message on bad input."""
    run = tmp_path / "cli_run"
    p = _parley("train", "-d", str(small_dataset), "--identity", IDENTITY, "-o", str(run), "--preset", "debug",
                "--steps-scale", "0.5", "--no-eval")
    assert p.returncode == 0, p.stderr
    assert "trained RD_Radio2_000: 11 steps" in p.stdout and (run / "checkpoint.pt").is_file()
    p = _parley("render", "-c", str(trained / "checkpoint.pt"), "-a", str(short_wav), "-o", str(tmp_path / "o.mp4"))
    assert p.returncode == 0, p.stderr
    assert "rendered 33 frames" in p.stdout and probe(tmp_path / "o.mp4").has_audio
    # stderr is a pipe, not a terminal: progress comes as whole lines (no carriage returns) for logs
    assert "render 33/33 frames" in p.stderr and "\r" not in p.stderr

    p = _parley("train", "-d", str(small_dataset), "--identity", "nobody", "-o", str(tmp_path / "x"),
                "--preset", "debug")
    assert p.returncode == 2 and "no identity 'nobody'" in p.stderr and "RD_Radio2_000" in p.stderr
    (tmp_path / "empty_ds").mkdir()
    p = _parley("train", "-d", str(tmp_path / "empty_ds"), "--identity", IDENTITY, "-o", str(tmp_path / "y"),
                "--preset", "debug")
    assert p.returncode == 2 and "not a dataset" in p.stderr
    p = _parley("render", "-c", str(tmp_path / "missing.pt"), "-a", str(short_wav), "-o", str(tmp_path / "z.mp4"))
    assert p.returncode == 2 and "no such checkpoint" in p.stderr


def test_cli_help_does_not_import_torch():
    """`parley --help` stays light (the method registry imports no method); the help names RAD-NeRF's presets."""
    code = ("import sys; from jobs import cli; cli.build_parser(); import nerf.methods;"
            "print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.startswith("False"), p.stdout + p.stderr
    from jobs.train_args import PRESET_HELP
    from nerf.radnerf.presets import PRESETS

    assert all(name in PRESET_HELP for name in PRESETS)


def test_unknown_method_or_preset_is_a_clear_error(small_dataset, tmp_path):
    p = _parley("train", "-d", str(small_dataset), "--identity", "x", "--output", str(tmp_path / "r"),
                "--method", "nope")
    assert p.returncode == 2 and "no method 'nope' (methods: dialogue, jean, radnerf)" in p.stderr, p.stderr
    p = _parley("train", "-d", str(small_dataset), "--identity", "x", "--output", str(tmp_path / "r"),
                "--preset", "huge")
    assert p.returncode == 2 and "method radnerf has no preset 'huge' (presets: debug, cpu, paper)" in p.stderr
    assert not (tmp_path / "r").exists()


def test_cli_evaluate_with_pose_alignment(small_dataset, trained, tmp_path):
    """`parley evaluate --align-poses` writes eval.json with the aligned PSNR and the alignment's angle per held-out
    frame beside the usual metrics; a corrupt checkpoint exits 2 naming it."""
    out = tmp_path / "eval"
    p = _parley("evaluate", "-c", str(trained / "checkpoint.pt"), "-d", str(small_dataset), "-o", str(out),
                "--align-poses")
    assert p.returncode == 0, p.stderr
    ev = json.loads((out / "eval.json").read_text())
    assert len(ev["frames"]) == 3
    for row in ev["frames"]:
        assert 5 < row["psnr_aligned"] < 60 and 0 <= row["align_deg"] < 20 and row["align_mm"] >= 0
    m = ev["metrics"]
    assert m["psnr_aligned"] == pytest.approx(np.mean([r["psnr_aligned"] for r in ev["frames"]]))
    assert json.loads(p.stdout)["psnr_aligned"] == pytest.approx(m["psnr_aligned"])

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    p = _parley("evaluate", "-c", str(corrupt), "-d", str(small_dataset), "-o", str(tmp_path / "e2"))
    assert p.returncode == 2 and "corrupt.pt" in p.stderr


def test_render_checks_its_output_and_audio_length_before_rendering(trained, short_wav, tmp_path):
    """--out a directory and audio over the length limit are one-line errors before any frame is rendered (a
    directory used to be found only at the end, after rendering everything)."""
    with pytest.raises(ValueError, match="is a directory"):
        render_audio(trained / "checkpoint.pt", short_wav, tmp_path)
    with pytest.raises(AudioError, match="more than the 1 s limit"):
        render_audio(trained / "checkpoint.pt", short_wav, tmp_path / "o.mp4", max_seconds=1.0)
    assert not list(tmp_path.iterdir())
    p = _parley("render", "-c", str(trained / "checkpoint.pt"), "-a", str(short_wav), "-o", str(tmp_path))
    assert p.returncode == 2 and "is a directory" in p.stderr and "Traceback" not in p.stderr


def test_sigterm_during_render_leaves_no_partial_video(trained, tmp_path):
    """A render stopped with SIGTERM (kill, ray job stop) removes its half-written video."""
    import signal
    import time

    long_wav = tmp_path / "long.wav"
    samples, sr = sf.read(WAV, dtype="float32", always_2d=True)
    sf.write(long_wav, np.tile(samples[:, 0], 6), sr)  # ~48 s: minutes of rendering at 64 px on a CPU
    out = tmp_path / "out" / "speech.mp4"
    env = {**os.environ, "PARLEY_ASSETS": str(SHARED / "assets")}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "render", "-c", str(trained / "checkpoint.pt"), "-a",
                             str(long_wav), "-o", str(out)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".*partial*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(out.parent.glob(".*partial*")), "the render never started writing"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list(out.parent.iterdir()), list(out.parent.iterdir())
