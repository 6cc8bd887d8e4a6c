"""The file-level faults the pack is tried against, each a runnable check, and the README table made from them.

Every :class:`Fault` has a short name, what the pack does, and a ``check(ctx)`` that makes the files on the fly
(``media_files``), runs the command line in-process (or the function a node runs), and asserts the outcome: the
exit status and the one-line error of refusals, the output's frame count / size / timestamps, and that every input
file's bytes are unchanged afterwards. ``tests/test_file_safety.py`` runs them all and checks that README.md's
section between ``<!-- file-faults:start -->`` and ``<!-- file-faults:end -->`` is exactly :func:`markdown_table`.

    python tests/file_faults.py     # print the table
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import torch

from media_files import VFR_PTS, VFR_TIME_BASE, decoded_pts, file_digest, make_clip, make_wav

START, END = "<!-- file-faults:start -->", "<!-- file-faults:end -->"


@dataclass
class Ctx:
    """What a check gets: a scratch folder, a tiny checkpoint, pytest's monkeypatch."""

    tmp: Path
    ckpt: Path
    monkeypatch: object
    inputs: dict = field(default_factory=dict)  # path -> digest, checked after the run

    def keep(self, *paths: Path) -> None:
        for p in paths:
            self.inputs[Path(p)] = file_digest(p)

    def assert_inputs_unchanged(self) -> None:
        for path, digest in self.inputs.items():
            assert path.is_file() and file_digest(path) == digest, f"{path} was changed"

    def cli(self, *argv: str) -> tuple[int, str, str]:
        from omnisync_model.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
        return rc, out.getvalue(), err.getvalue()

    def lipsync(self, video: Path, audio: Path, out: Path, *extra: str) -> tuple[int, str, str]:
        return self.cli("lipsync", "--video", video, "--audio", audio, "--out", out, "--checkpoint", self.ckpt,
                        "--steps", "1", "--window", "4", "--overlap", "1", "--quiet", *extra)

    def refused(self, result: tuple[int, str, str], *words: str) -> str:
        rc, _, err = result
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("omnisync "), (rc, err)
        assert "Traceback" not in err and all(w in lines[0] for w in words), lines[0]
        return lines[0]


@dataclass(frozen=True)
class Fault:
    name: str
    outcome: str
    check: Callable[[Ctx], None]


def _clip_and_speech(ctx: Ctx, **clip) -> tuple[Path, Path, Path]:
    video = make_clip(ctx.tmp / "in.mp4", **clip)
    speech = make_wav(ctx.tmp / "speech.wav", 1.0)
    ctx.keep(video, speech)
    return video, speech, ctx.tmp / "out.mp4"


def _frames_and_size(path: Path) -> tuple[int, int, int]:
    pts, _, (w, h), _ = decoded_pts(path)
    return len(pts), w, h


# --------------------------------------------------------------------------------------------- output is an input


def out_is_the_video(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    ctx.refused(ctx.lipsync(video, speech, video), "is the input")
    ctx.assert_inputs_unchanged()


def out_is_the_audio(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    ctx.refused(ctx.lipsync(video, speech, speech), "is the input")
    ctx.assert_inputs_unchanged()


def out_is_a_symlink_to_the_video(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    link = ctx.tmp / "link.mp4"
    link.symlink_to(video)
    ctx.refused(ctx.lipsync(video, speech, link), "symbolic link")
    assert link.is_symlink()
    ctx.assert_inputs_unchanged()


def out_is_a_hard_link_to_the_video(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    hard = ctx.tmp / "hard.mp4"
    hard.hardlink_to(video)
    ctx.refused(ctx.lipsync(video, speech, hard), "hard link")
    ctx.assert_inputs_unchanged()


def out_reaches_the_video_through_dotdot(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    (ctx.tmp / "sub").mkdir()
    ctx.refused(ctx.lipsync(video, speech, ctx.tmp / "sub" / ".." / video.name), "is the input")
    ctx.assert_inputs_unchanged()


def out_differs_only_in_case(ctx: Ctx) -> None:
    from omnisync_model.core.files import SameFileError, refuse_same_file

    video, _, _ = _clip_and_speech(ctx)
    upper = video.with_name(video.name.upper())
    refuse_same_file(upper, video)  # a case-sensitive file system: another file, allowed
    try:
        refuse_same_file(upper, video, case_insensitive=True)
    except SameFileError as exc:
        assert "letter case" in str(exc)
    else:
        raise AssertionError("a case-only difference was not refused on a case-insensitive file system")
    ctx.assert_inputs_unchanged()


def out_is_a_folder(ctx: Ctx) -> None:
    video, speech, _ = _clip_and_speech(ctx)
    ctx.refused(ctx.lipsync(video, speech, ctx.tmp), "is a folder")
    ctx.assert_inputs_unchanged()


def out_is_the_shipped_model(ctx: Ctx) -> None:
    import omnisync_model.families.omnisync.weights as weights

    demo = ctx.tmp / "demo.safetensors"
    weights.save_checkpoint(demo, _tiny_model())
    ctx.keep(demo)
    ctx.monkeypatch.setattr(weights, "default_checkpoint", lambda: demo)
    ctx.refused(ctx.cli("init", demo), "shipped demo checkpoint")
    ctx.assert_inputs_unchanged()


def checkpoint_over_its_source(ctx: Ctx) -> None:
    from omnisync_model.core.checkpoint import atomic_save
    from omnisync_model.core.files import SameFileError

    src = ctx.tmp / "model.safetensors"
    atomic_save({"w": torch.ones(3)}, src, {})
    ctx.keep(src)
    link = ctx.tmp / "alias.safetensors"
    link.symlink_to(src)
    try:
        atomic_save({"w": torch.zeros(3)}, link, {}, inputs=(src,))
    except SameFileError:
        pass
    else:
        raise AssertionError("a checkpoint written over its own source was not refused")
    ctx.assert_inputs_unchanged()


# --------------------------------------------------------------------------------------------- partial writes


def existing_unrelated_output(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx)
    out.write_bytes(b"an older result")
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    assert _frames_and_size(out) == (12, 32, 32)
    ctx.assert_inputs_unchanged()


def run_fails_midway(ctx: Ctx) -> None:
    from omnisync_model.backends.omnisync import OmniSyncBackend
    from omnisync_model.media.lipsync_file import lipsync_video
    from omnisync_model.media.video_io import read_audio
    from omnisync_model.sampling.options import LipSyncOptions

    video, speech, out = _clip_and_speech(ctx)
    out.write_bytes(b"the previous result")
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt  # what Ctrl-C / ComfyUI's Cancel raise inside the run

    wave, rate = read_audio(speech)
    try:
        lipsync_video(video, wave, rate, out, OmniSyncBackend(_tiny_model()), LipSyncOptions(steps=2, window=4,
                      overlap=1), progress=None, check_interrupt=interrupt)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt did not stop the run")
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in ctx.tmp.iterdir()) == ["in.mp4", "out.mp4", "speech.wav"]  # no partial file
    ctx.assert_inputs_unchanged()


def checkpoint_write_fails(ctx: Ctx) -> None:
    import omnisync_model.core.checkpoint as checkpoint

    path = ctx.tmp / "model.safetensors"
    checkpoint.atomic_save({"w": torch.ones(3)}, path, {})
    before = file_digest(path)

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    ctx.monkeypatch.setattr(checkpoint, "save_file", broken)
    try:
        checkpoint.atomic_save({"w": torch.zeros(3)}, path, {})
    except OSError:
        pass
    assert file_digest(path) == before and [p.name for p in ctx.tmp.iterdir()] == ["model.safetensors"]


# --------------------------------------------------------------------------------------------- awkward inputs


def odd_frame_size(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx, width=33, height=31, pix_fmt="yuv444p")
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    assert _frames_and_size(out) == (12, 33, 31) and decoded_pts(out)[3] == "yuv444p"
    ctx.assert_inputs_unchanged()


def variable_frame_rate(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx, pts=VFR_PTS, time_base=VFR_TIME_BASE)
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    pts, tb, size, _ = decoded_pts(out)
    src = [Fraction(p) * VFR_TIME_BASE for p in VFR_PTS]
    got = [Fraction(p) * tb - Fraction(pts[0]) * tb for p in pts]
    assert len(got) == len(src) and size == (32, 32)
    assert max(abs(a - b) for a, b in zip(got, src)) <= VFR_TIME_BASE, (got, src)  # within one tick
    ctx.assert_inputs_unchanged()


def rotated_phone_clip(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx, width=32, height=16, rotation=90)
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    assert _frames_and_size(out) == (12, 16, 32)  # upright: 16 wide, 32 high
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert not getattr(frame, "rotation", 0)  # stored upright, no rotation left to apply
    ctx.assert_inputs_unchanged()


def ten_bit_source(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx, pix_fmt="yuv420p10le")
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    assert _frames_and_size(out) == (12, 32, 32)
    ctx.assert_inputs_unchanged()


def _audio_of(path: Path) -> tuple[torch.Tensor, int]:
    from omnisync_model.media.video_io import read_audio

    return read_audio(path)


def audio_longer_than_video(ctx: Ctx) -> None:
    video = make_clip(ctx.tmp / "in.mp4", n=12)  # 0.48 s
    speech = make_wav(ctx.tmp / "speech.wav", 3.0)
    ctx.keep(video, speech)
    out = ctx.tmp / "out.mp4"
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    wave, rate = _audio_of(out)
    assert abs(wave.shape[-1] / rate - 0.48) < 1100 / rate  # trimmed to the video (within one AAC frame)
    ctx.assert_inputs_unchanged()


def audio_starts_later(ctx: Ctx) -> None:
    video = make_clip(ctx.tmp / "in.mp4", n=25)  # 1 s, no audio track of its own
    speech = make_clip(ctx.tmp / "speech.mp4", n=25, audio_seconds=0.75, audio_start=0.25)
    ctx.keep(video, speech)
    out = ctx.tmp / "out.mp4"
    rc, _, err = ctx.lipsync(video, speech, out)
    assert rc == 0, err
    wave, rate = _audio_of(out)
    loud = (wave.abs().amax(0) > 0.05).nonzero()
    assert abs(wave.shape[-1] / rate - 1.0) < 1100 / rate
    assert abs(int(loud[0]) / rate - 0.25) < 0.03  # the speech still starts 0.25 s after the first frame
    ctx.assert_inputs_unchanged()


def no_audio_track(ctx: Ctx) -> None:
    video = make_clip(ctx.tmp / "in.mp4")  # a video without audio is a fine --video
    silent = make_clip(ctx.tmp / "silent.mp4")
    ctx.keep(video, silent)
    ctx.refused(ctx.lipsync(video, silent, ctx.tmp / "out.mp4"), "has no audio stream")
    assert not (ctx.tmp / "out.mp4").exists()
    ctx.assert_inputs_unchanged()


def not_a_video(ctx: Ctx) -> None:
    bogus = ctx.tmp / "notes.mp4"
    bogus.write_text("not a video")
    speech = make_wav(ctx.tmp / "speech.wav", 1.0)
    ctx.keep(bogus, speech)
    ctx.refused(ctx.lipsync(bogus, speech, ctx.tmp / "out.mp4"), "cannot be opened")
    ctx.assert_inputs_unchanged()


def truncated_video(ctx: Ctx) -> None:
    video = make_clip(ctx.tmp / "full.mp4", n=25)
    cut = ctx.tmp / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    speech = make_wav(ctx.tmp / "speech.wav", 1.0)
    ctx.keep(cut, speech)
    ctx.refused(ctx.lipsync(cut, speech, ctx.tmp / "out.mp4"), "cut.mp4")
    assert not (ctx.tmp / "out.mp4").exists()
    ctx.assert_inputs_unchanged()


def too_little_memory(ctx: Ctx) -> None:
    video, speech, out = _clip_and_speech(ctx)
    ctx.monkeypatch.setenv("OMNISYNC_MEMORY_LIMIT", "2M")
    line = ctx.refused(ctx.lipsync(video, speech, out), "not enough memory", "RAM")
    assert "window" in line and not out.exists()
    ctx.assert_inputs_unchanged()


def _tiny_model():
    from omnisync_model.families.omnisync.config import get_preset
    from omnisync_model.families.omnisync.model import OmniSyncModel

    torch.manual_seed(0)
    return OmniSyncModel(get_preset("tiny")).eval()


FAULTS = [
    Fault("Output path is the input video", "refused before any work (exit 2, one line)", out_is_the_video),
    Fault("Output path is the audio input", "refused before any work", out_is_the_audio),
    Fault("Output is a symbolic link to the input", "refused (\"through a symbolic link\")",
          out_is_a_symlink_to_the_video),
    Fault("Output is a hard link to the input", "refused (\"a hard link to it\")", out_is_a_hard_link_to_the_video),
    Fault("Output reaches the input through `..`", "refused", out_reaches_the_video_through_dotdot),
    Fault("Output differs from the input only in letter case", "refused on case-insensitive file systems; "
          "a different file on case-sensitive ones", out_differs_only_in_case),
    Fault("Output is a folder", "refused (exit 2)", out_is_a_folder),
    Fault("`omnisync init` onto the shipped demo checkpoint", "refused", out_is_the_shipped_model),
    Fault("Checkpoint written over its own source (via a link)", "refused before writing", checkpoint_over_its_source),
    Fault("Output exists (an unrelated older result)", "replaced, atomically, when the run completes",
          existing_unrelated_output),
    Fault("Run interrupted or failing midway", "no output and no partial file; an older output stays as it was",
          run_fails_midway),
    Fault("Checkpoint write fails midway (disk full)", "the previous checkpoint stays intact, no temporary left",
          checkpoint_write_fails),
    Fault("Odd width / height (33x31)", "exact size kept: H.264 High 4:4:4 (yuv444p)", odd_frame_size),
    Fault("Variable frame rate (12.5 to 50 fps)", "every frame keeps its timestamp (within one tick); audio taken at "
          "each frame's real time", variable_frame_rate),
    Fault("Rotation metadata (portrait stored landscape)", "decoded upright; output stored upright",
          rotated_phone_clip),
    Fault("10-bit source (yuv420p10le)", "decoded to 8-bit RGB; output 8-bit, same frames and size", ten_bit_source),
    Fault("Audio longer than the video", "trimmed to the video's duration", audio_longer_than_video),
    Fault("Audio track starting later than its video", "aligned to the first frame (leading silence kept)",
          audio_starts_later),
    Fault("Audio file without an audio track", "refused (exit 2, \"has no audio stream\")", no_audio_track),
    Fault("Input is not a media file", "refused (exit 2, one line)", not_a_video),
    Fault("Truncated video file", "refused (exit 2, one line); nothing written", truncated_video),
    Fault("Not enough free memory for the run", "refused before the first model call, with the figures and what "
          "to change (exit 2)", too_little_memory),
]


def markdown_table() -> str:
    """The README table: one row per fault in :data:`FAULTS` (each one checked by tests/test_file_safety.py)."""
    rows = ["| File-level fault | What the pack does |", "| --- | --- |"]
    rows += [f"| {f.name} | {f.outcome} |" for f in FAULTS]
    return "\n".join(rows)


def readme_section(text: str) -> str | None:
    """The text between the file-faults markers (stripped), or None when README has no such section."""
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip()


if __name__ == "__main__":
    print(markdown_table())
