"""OmniSyncLipSyncVideo's ComfyUI-free logic (nodes/video_adapters.py) and the streamed file path under it.

Clips are small synthetic talking faces written to mp4; the model is the tiny preset with random (non-zero) gates.
"""

import io
from fractions import Fraction

import pytest
import torch

from conftest import randomize_zero_inits
from comfy_helpers import pack_module, talking_clip, write_video

V = pack_module("nodes.adapters.video")
LS = pack_module("nodes.adapters.lipsync")
CONFIG = pack_module("omnisync_model.families.omnisync.config")
MODEL = pack_module("omnisync_model.families.omnisync.model")
VIDEO_IO = pack_module("omnisync_model.media.video_io")
PIPELINE = pack_module("omnisync_model.sampling.pipeline")
BACKEND = pack_module("omnisync_model.backends.omnisync")
LIPSYNC_FILE = pack_module("omnisync_model.media.lipsync_file")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MODEL.OmniSyncModel(CONFIG.get_preset("tiny").replace(extra={"resolution": 32})).eval()
    randomize_zero_inits(m, seed=1)  # gates / output get small values: the output depends on every input
    return BACKEND.OmniSyncBackend(m)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """1.2 s at 29.97 fps (36 frames), 64x64, with its own speech track."""
    frames, speech = talking_clip(1.2, 30000 / 1001, seed=5)
    path = tmp_path_factory.mktemp("clips") / "face.mp4"
    return write_video(path, frames, Fraction(30000, 1001), speech), frames.shape[0]


def _audio(seconds, rate=48000, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * rate)
    t = torch.arange(n) / rate
    voice = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (torch.rand(n, generator=g) > 0.2)
    return {"waveform": voice.repeat(1, channels, 1).float(), "sample_rate": rate}


def _options(steps=2):
    return LS.make_options(0.9, steps, 3, 8, 2, 2.5, 1.0, 0.15, 1.5)


def _recorder():
    calls = []
    return calls, LS.NodeHooks(progress=lambda done, total: calls.append((done, total)))


# --------------------------------------------------------------------------------------------- sources


def test_spool_stream_uses_paths_and_copies_in_memory_streams(tmp_path, clip_file):
    path, n = clip_file
    assert V.spool_stream(str(path), tmp_path / "scratch") == (path, False)
    with pytest.raises(ValueError, match="video: the file .* does not exist"):
        V.spool_stream(str(tmp_path / "missing.mp4"), tmp_path)
    data = path.read_bytes()
    copy, is_copy = V.spool_stream(io.BytesIO(data), tmp_path / "scratch")
    assert is_copy and copy.parent == tmp_path / "scratch" and copy.read_bytes() == data
    with pytest.raises(ValueError, match="cannot read a stream of type int"):
        V.spool_stream(3, tmp_path)


def test_write_frames_file_keeps_count_size_and_exact_rate(tmp_path):
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 36), torch.linspace(0, 1, 52), indexing="ij")
    frames = torch.stack([ys, xs, 1 - ys], -1)[None] * torch.linspace(0.3, 1.0, 11).view(11, 1, 1, 1)
    path = V.write_frames_file(frames, Fraction(24000, 1001), tmp_path)
    info = VIDEO_IO.probe_video(path)
    assert (info.n_frames, info.fps, info.width, info.height) == (11, Fraction(24000, 1001), 52, 36)
    back = VIDEO_IO.read_video(path).frames
    assert (back - frames).abs().mean() < 0.01  # near-lossless copy (yuv420 of smooth colours)
    assert VIDEO_IO.probe_video(V.write_frames_file(frames[:2], 29.97, tmp_path)).fps == Fraction(30000, 1001)
    with pytest.raises(ValueError, match="video: frame rate must be positive"):
        V.write_frames_file(frames, Fraction(0), tmp_path)


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("region", ["face (auto)", "whole frame"])
def test_video_file_path_keeps_every_frame_the_rate_and_fits_the_audio(tmp_path, model, clip_file, region):
    path, n = clip_file
    calls, hooks = _recorder()
    result = V.lipsync_video_file(model, path, _audio(0.7), tmp_path / "out", _options(), region=region,
                                  hooks=hooks)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [result.path.name]  # nothing else left behind
    info = VIDEO_IO.probe_video(result.path)
    assert (info.n_frames, info.fps, info.width, info.height) == (n, Fraction(30000, 1001), 64, 64)
    assert result.frames == n and result.audio_seconds == pytest.approx(n * 1001 / 30000, abs=1 / 48000)
    wave, rate = VIDEO_IO.read_audio(result.path)
    assert rate == 48000 and wave.shape[0] == 2
    assert abs(wave.shape[1] / rate - n * 1001 / 30000) < 0.05  # AAC pads to whole 1024-sample frames
    windows = len(PIPELINE.plan_for_codec(n, _options(), 1))
    assert [c[0] for c in calls] == list(range(1, windows * 2 + 1))  # one progress call per step, to the end
    assert {c[1] for c in calls} == {windows * 2}


def test_surround_and_low_rate_speech_are_accepted(tmp_path, model, clip_file):
    path, n = clip_file
    result = V.lipsync_video_file(model, path, _audio(2.0, rate=8000, channels=6), tmp_path, _options(1))
    wave, rate = VIDEO_IO.read_audio(result.path)
    assert wave.shape[0] == 2 and rate == 8000  # 5.1 stored as a stereo downmix
    assert abs(wave.shape[1] / rate - n * 1001 / 30000) < 0.15  # trimmed to the video (AAC frame = 128 ms here)


@pytest.mark.parametrize("bad, match", [
    (dict(region="left half"), "region must be one of"),
    (dict(audio={"waveform": torch.full((1, 1, 800), float("nan")), "sample_rate": 16000}), "audio waveform contains NaN"),
    (dict(audio={"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}), "audio waveform must be"),
    (dict(audio={"waveform": torch.zeros(1, 1, 800), "sample_rate": 4000}), "in 8000..96000, got 4000"),
    (dict(blend="soft"), "blend must be one of"),
    (dict(size=-8), "size must be >= 0"),
])
def test_bad_inputs_fail_before_any_work_and_write_nothing(tmp_path, model, clip_file, bad, match):
    path, _ = clip_file
    calls, hooks = _recorder()
    kwargs = dict(region="face (auto)", blend="mouth", size=0)
    audio = bad.pop("audio", _audio(0.5))
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        V.lipsync_video_file(model, path, audio, tmp_path / "out", _options(), hooks=hooks, **kwargs)
    assert calls == [] and not any((tmp_path / "out").glob("*"))


def test_a_file_that_is_not_a_video_is_refused(tmp_path, model):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(VIDEO_IO.MediaError, match="junk.mp4"):
        V.lipsync_video_file(model, junk, _audio(0.5), tmp_path / "out", _options())
    assert not any((tmp_path / "out").glob("*"))


def test_an_interrupt_stops_within_a_step_and_leaves_no_file(tmp_path, model, clip_file):
    path, n = clip_file

    class Interrupted(Exception):
        pass

    checks, steps_done = [], []
    locate_chunks = -(-n // LIPSYNC_FILE.READ_CHUNK)  # the locator pass checks once per decoded chunk

    def check():
        checks.append(1)
        if len(checks) == locate_chunks + 2:  # the second sampling step
            raise Interrupted

    hooks = LS.NodeHooks(progress=lambda done, total: steps_done.append(done), check_interrupt=check)
    with pytest.raises(Interrupted):
        V.lipsync_video_file(model, path, _audio(1.0), tmp_path / "out", _options(4), hooks=hooks)
    assert steps_done == [1]  # stopped in the step after the first, before finishing it
    assert not any((tmp_path / "out").iterdir())  # no partial file
    result = V.lipsync_video_file(model, path, _audio(1.0), tmp_path / "out", _options(1))  # the next run works
    assert result.path.is_file() and VIDEO_IO.probe_video(result.path).n_frames == n


def test_same_seed_same_video_bytes(tmp_path, model, clip_file):
    path, _ = clip_file
    a = V.lipsync_video_file(model, path, _audio(1.0), tmp_path / "a", _options())
    b = V.lipsync_video_file(model, path, _audio(1.0), tmp_path / "b", _options())
    assert a.path.read_bytes() == b.path.read_bytes()
