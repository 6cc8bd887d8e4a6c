"""The omnisync command line: init, info, lipsync on a generated clip, and one-line errors."""

import math
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from omnisync_model.cli.main import main
from omnisync_model.media.video_io import VideoWriter, probe_video, read_audio


def write_clip(path, n=9, fps=Fraction(25), hw=32, seconds=None, still=False):
    """Noise frames (or, ``still``, flat grey ones: no mouth to find however the encoder rounds them)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.full((n, hw, hw, 3), 0.5) if still else torch.rand(n, hw, hw, 3, generator=g)
    sr = 16000
    t = torch.arange(int((seconds or n / float(fps)) * sr)) / sr
    audio = (0.2 * torch.sin(2 * math.pi * 330 * t))[None]
    with VideoWriter(path, fps, hw, hw, audio=(audio, sr)) as w:
        w.write(frames)
    return frames


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "tiny.safetensors"
    assert main(["init", str(path), "--preset", "tiny"]) == 0
    return path


def test_info_prints_config_and_count(ckpt, capsys):
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "dim: 48" in out and "parameters: 218,688" in out


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_lipsync_keeps_frames_fps_and_fits_audio(tmp_path, ckpt, fps):
    video, audio, out = tmp_path / "in.mp4", tmp_path / "speech.mp4", tmp_path / "out.mp4"
    write_clip(video, n=9, fps=fps)
    write_clip(audio, n=50, fps=Fraction(25), seconds=2.0)  # audio longer than the video: trimmed
    rc = main(["lipsync", "--video", str(video), "--audio", str(audio), "--out", str(out), "--checkpoint", str(ckpt),
               "--steps", "2", "--window", "4", "--overlap", "1", "--quiet"])
    assert rc == 0
    info = probe_video(out)
    assert info.n_frames == 9 and info.fps == fps and (info.width, info.height) == (32, 32)
    wave, sr = read_audio(out)
    assert abs(wave.shape[-1] / sr - 9 / float(fps)) < 1100 / sr  # within one AAC frame


def test_box_outside_is_untouched_before_encoding(tmp_path, ckpt):
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(video, n=3, hw=32)
    rc = main(["lipsync", "--video", str(video), "--audio", str(video), "--out", str(out), "--checkpoint", str(ckpt),
               "--box", "8,8,16,16", "--size", "16", "--steps", "1", "--quiet"])
    assert rc == 0 and probe_video(out).n_frames == 3


@pytest.mark.parametrize("argv, message", [
    (["lipsync", "--video", "missing.mp4", "--audio", "x", "--out", "o.mp4"], "no such file"),
    (["lipsync", "--video", "{video}", "--audio", "{video}", "--out", "{out}", "--checkpoint", "{ckpt}",
      "--tau", "1.5"], "must be in (0, 1]"),
    (["lipsync", "--video", "{video}", "--audio", "{video}", "--out", "{out}", "--checkpoint", "{ckpt}",
      "--window", "4", "--overlap", "4"], "overlap"),
    (["lipsync", "--video", "{video}", "--audio", "{video}", "--out", "{out}", "--checkpoint", "{ckpt}",
      "--box", "30,30,16,16"], "does not fit"),
    (["lipsync", "--video", "{video}", "--audio", "{video}", "--out", "{out}", "--checkpoint", "{video}"], "{video}"),
    (["info", "{video}"], "{video}"),
])
def test_errors_are_one_line(tmp_path, ckpt, argv, message):
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(video, n=2)
    fill = {"video": str(video), "out": str(out), "ckpt": str(ckpt)}
    argv = [a.format(**fill) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "omnisync_model.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message.format(**fill) in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("blend", ["mouth", "jaw"])
def test_auto_box_on_a_talking_face(tmp_path, ckpt, blend):
    """--box auto locates the face of a synthetic talking clip; only the mouth region may change (blend mouth, or
    the mesh's lips and jaw)."""
    from omnisync_model.training.synthetic import make_talking_clip
    from omnisync_model.media.video_io import read_video

    clip, wave, sr = make_talking_clip(3, "cartoon", 0.6, 25.0, 128)
    video, out = tmp_path / "face.mp4", tmp_path / "out.mp4"
    with VideoWriter(video, 25, 128, 128, audio=(wave[None], sr)) as w:
        w.write(clip.frames)
    rc = main(["lipsync", "--video", str(video), "--audio", str(video), "--out", str(out), "--checkpoint", str(ckpt),
               "--box", "auto", "--steps", "1", "--quiet", "--blend", blend])
    assert rc == 0
    src, res = read_video(video).frames, read_video(out).frames
    assert res.shape == src.shape
    x0, y0, x1, y1 = (clip.mouth_box.mean(0) * 128).tolist()
    far = torch.ones(128, 128, dtype=torch.bool)
    far[max(0, int(y0) - 30):int(y1) + 30, max(0, int(x0) - 30):int(x1) + 30] = False
    assert (res - src).abs()[:, far].mean() < 0.02  # away from the mouth: unchanged up to re-encoding


def test_quiet_lipsync_logs_warnings_only(tmp_path, ckpt):
    """--quiet: no progress bar and no INFO lines, warnings kept, in a fresh process (so logging is configured by the command)."""
    video = tmp_path / "in.mp4"
    write_clip(video, n=5, hw=32, still=True)  # noise: x264 does not always encode it the same, and the locator
    # can then find a "mouth" in it (1 run in ~10)

    def run(out, *extra):
        args = [sys.executable, "-m", "omnisync_model.cli", "lipsync", "--video", str(video), "--audio", str(video),
                "--out", str(out), "--checkpoint", str(ckpt), "--steps", "1", "--window", "4", "--overlap", "1"]
        return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300)

    quiet = run(tmp_path / "quiet.mp4", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert (tmp_path / "quiet.mp4").exists()
    assert "INFO" not in quiet.stderr and "steps (" not in quiet.stderr
    assert "WARNING" in quiet.stderr  # warnings still show (this flat clip has no face: uniform guidance)
    loud = run(tmp_path / "loud.mp4")
    assert loud.returncode == 0 and "INFO" in loud.stderr
