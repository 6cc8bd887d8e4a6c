"""Frame timing kept end to end: variable-frame-rate timestamps (reading, writing, the file path and the VIDEO
node), audio taken at each frame's real time (AudioInput.frame_times), the IMAGE nodes' warning, rotation,
10-bit sources and audio that starts later than its video."""

import logging
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from comfy_helpers import pack_module
from conftest import randomize_zero_inits
from media_files import VFR_PTS, VFR_TIME_BASE, decoded_pts, file_digest, make_clip, make_wav
from omnisync_model.backends.omnisync import OmniSyncAudio, OmniSyncBackend
from omnisync_model.core.audio import audio_span_for_frames, frame_centre_times
from omnisync_model.media.video_io import (FrameTiming, VideoWriter, frame_timing, read_audio, read_video,
                                           timing_from_stamps)
from omnisync_model.sampling.frame_times import (check_frame_times, frame_edges, window_centre_times,
                                                 window_time_span)
from omnisync_model.sampling.options import AudioInput

V = pack_module("nodes.adapters.video")
LS = pack_module("nodes.adapters.lipsync")
FR = pack_module("nodes.adapters.frames")


@pytest.fixture(scope="module")
def backend():
    from omnisync_model.families.omnisync.config import get_preset
    from omnisync_model.families.omnisync.model import OmniSyncModel

    torch.manual_seed(0)
    model = OmniSyncModel(get_preset("tiny")).eval()
    randomize_zero_inits(model, seed=1)
    return OmniSyncBackend(model)


# --------------------------------------------------------------------------------------------- reading timestamps


def test_frame_timing_tells_variable_from_constant_rates(tmp_path):
    vfr = frame_timing(make_clip(tmp_path / "vfr.mp4", pts=VFR_PTS, time_base=VFR_TIME_BASE))
    assert vfr.variable and vfr.exact and vfr.time_base == VFR_TIME_BASE
    assert vfr.relative.tolist() == list(VFR_PTS)
    assert vfr.duration == pytest.approx((6400 + 512) / 12800)  # the last frame lasts a typical frame
    assert vfr.average_fps == Fraction(12 * 12800, 6912)
    ntsc = frame_timing(make_clip(tmp_path / "ntsc.mp4", n=30, fps=Fraction(30000, 1001),
                                  time_base=Fraction(1, 1000)))  # 33/34 ms steps: rounding, not a variable rate
    assert not ntsc.variable and abs(float(ntsc.average_fps) - 30000 / 1001) < 0.05
    assert not frame_timing(make_clip(tmp_path / "cfr.mp4", n=5)).variable


def test_decoded_stamps_match_the_packets_and_bad_stamps_fall_back(tmp_path):
    path = make_clip(tmp_path / "vfr.mp4", pts=VFR_PTS, time_base=VFR_TIME_BASE)
    from omnisync_model.media.video_io import iter_video_frames

    stamps = []
    n = sum(c.shape[0] for c in iter_video_frames(path, 5, stamps=stamps))
    assert n == 12 and stamps == list(VFR_PTS)
    assert not timing_from_stamps([0, None, 2], Fraction(1, 25), Fraction(25)).exact
    broken = timing_from_stamps([0, 5, 5, 9], Fraction(1, 25), Fraction(25))  # repeated stamp: damaged file
    assert not broken.exact and broken.relative.tolist() == [0, 1, 2, 3]


def test_raw_stream_without_timestamps_is_constant_rate(tmp_path):
    path = make_clip(tmp_path / "raw.h264", n=6)  # an Annex-B stream has no container timestamps
    timing = frame_timing(path)
    assert len(timing) == 6 and not timing.variable


# --------------------------------------------------------------------------------------------- writing timestamps


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_writer_keeps_variable_timestamps_exactly(tmp_path, suffix):
    frames = torch.rand(len(VFR_PTS), 16, 24, 3)
    path = tmp_path / f"out{suffix}"
    with VideoWriter(path, 25, 24, 16, time_base=VFR_TIME_BASE) as writer:
        writer.write(frames[:5], pts=VFR_PTS[:5])
        writer.write(frames[5:], pts=VFR_PTS[5:])
    pts, tb, size, _ = decoded_pts(path)
    assert tb == VFR_TIME_BASE and pts == list(VFR_PTS) and size == (24, 16)


def test_writer_refuses_timestamps_that_do_not_increase(tmp_path):
    with pytest.raises(ValueError, match="increase"):
        with VideoWriter(tmp_path / "x.mp4", 25, 16, 16, time_base=Fraction(1, 100)) as writer:
            writer.write(torch.rand(2, 16, 16, 3), pts=[0, 4])
            writer.write(torch.rand(1, 16, 16, 3), pts=[4])
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# --------------------------------------------------------------------------------------------- frame-time math


@pytest.mark.parametrize("tf", [1, 4])
@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_frame_times_at_a_constant_rate_give_the_constant_rate_figures(tf, fps):
    f = 40
    times = check_frame_times(torch.arange(f, dtype=torch.float64) / fps, f)
    for start, n in ((0, 17), (8, 17), (30, 13), (35, 9)):  # the last two run past the end (codec padding)
        got = window_centre_times(times, start, n, tf, fps)
        want = frame_centre_times(n, fps, tf) + start / fps
        assert torch.allclose(got, want, atol=1e-12), (start, n)
        a, b = window_time_span(times, start, n, fps)
        s0, s1, _ = audio_span_for_frames(start, start + n, fps, 16000, 0.0)
        assert math.floor(a * 16000 + 1e-9) == s0 and math.ceil(b * 16000 - 1e-9) == s1


def test_frame_edges_follow_each_frame_and_extrapolate_the_last_pace():
    times = torch.tensor([0.0, 0.04, 0.06, 0.16])
    assert frame_edges(times, 1, 4, 25.0).tolist() == pytest.approx([0.04, 0.06, 0.16, 0.26, 0.36])
    assert window_centre_times(times, 0, 3, 1, 25.0).tolist() == pytest.approx([0.02, 0.05, 0.11])
    for bad in ([0.0, 0.0, 0.1], [0.1, 0.05], [float("nan")], [-0.1, 0.0]):
        with pytest.raises(ValueError):
            check_frame_times(torch.tensor(bad))


def _speech(seconds=2.0, rate=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * 200 * t) * (torch.rand(t.shape, generator=g) > 0.3))[None]


def test_audio_tokens_follow_frame_times_not_the_nominal_rate(backend):
    """Tokens of frames timed at i / 50 s are those of a 50 fps run, whatever nominal fps comes with them; times
    i / fps reproduce the constant-rate tokens."""
    wave = _speech()
    times50 = torch.arange(60, dtype=torch.float64) / 50
    vfr = OmniSyncAudio(backend.model, AudioInput(waveform=wave, frame_times=times50), 25.0, 1.0)
    cfr50 = OmniSyncAudio(backend.model, AudioInput(waveform=wave), 50.0, 1.0)
    cfr25 = OmniSyncAudio(backend.model, AudioInput(waveform=wave), 25.0, 1.0)
    same25 = OmniSyncAudio(backend.model, AudioInput(waveform=wave, frame_times=torch.arange(60, dtype=torch.float64) / 25), 25.0, 1.0)
    for start in (0, 16, 44):
        assert torch.allclose(vfr.window(start, 16, 1), cfr50.window(start, 16, 1), atol=1e-5)
        assert torch.allclose(same25.window(start, 16, 1), cfr25.window(start, 16, 1), atol=1e-5)
    assert not torch.allclose(vfr.window(16, 16, 1), cfr25.window(16, 16, 1), atol=1e-3)


# --------------------------------------------------------------------------------------------- the file paths


def test_vfr_clip_through_the_video_node_keeps_every_timestamp(tmp_path, backend, caplog):
    source = make_clip(tmp_path / "phone.mp4", pts=VFR_PTS, time_base=VFR_TIME_BASE, width=33, height=31,
                       pix_fmt="yuv444p")
    digest = file_digest(source)
    audio = {"waveform": _speech(1.0)[None], "sample_rate": 16000}
    options = LS.make_options(0.9, 1, 0, 4, 1, 2.5, 1.0, 0.15, 1.5)
    with caplog.at_level(logging.WARNING):
        result = V.lipsync_video_file(backend, source, audio, tmp_path / "out", options, region="whole frame")
    assert "variable frame rate" in caplog.text
    pts, tb, size, pix_fmt = decoded_pts(result.path)
    assert size == (33, 31) and pix_fmt == "yuv444p" and len(pts) == len(VFR_PTS)
    got = np.array([float(Fraction(p - pts[0]) * tb) for p in pts])
    assert np.abs(got - np.array(VFR_PTS) / 12800).max() <= 1 / 12800  # within one tick of the source
    wave, rate = read_audio(result.path)
    assert abs(wave.shape[-1] / rate - 6912 / 12800) < 1100 / rate  # the clip's real duration, not 12 / fps
    assert file_digest(source) == digest


def test_image_nodes_warn_on_a_variable_rate_average():
    assert not FR.warn_if_variable_rate(25.0, "X") and not FR.warn_if_variable_rate(30000 / 1001, "X")
    assert not FR.warn_if_variable_rate(24.0, "X") and not FR.warn_if_variable_rate(59.94, "X")
    assert FR.warn_if_variable_rate(29.87, "X") and FR.warn_if_variable_rate(float(Fraction(200, 9)), "X")


def test_lipsync_images_warns_on_an_irregular_fps(backend, caplog):
    frames = torch.rand(4, 16, 16, 3)
    audio = {"waveform": _speech(0.5)[None], "sample_rate": 16000}
    options = LS.make_options(0.9, 1, 0, 4, 1, 2.5, 1.0, 0.15, 1.5)
    with caplog.at_level(logging.WARNING):
        out, _ = LS.lipsync_images(backend, frames, 29.87, audio, options)
    assert out.shape == frames.shape and "OmniSyncLipSyncVideo keeps every frame's timestamp" in caplog.text


def test_rotated_and_10_bit_sources_decode_upright_at_full_size(tmp_path):
    rotated = read_video(make_clip(tmp_path / "rot.mp4", width=32, height=16, rotation=90)).frames
    assert rotated.shape == (12, 32, 16, 3)
    for angle, shape in ((180, (12, 16, 32, 3)), (270, (12, 32, 16, 3))):
        assert read_video(make_clip(tmp_path / f"r{angle}.mp4", width=32, height=16, rotation=angle)).frames.shape \
            == shape
    eight = read_video(make_clip(tmp_path / "8.mp4")).frames
    ten = read_video(make_clip(tmp_path / "10.mp4", pix_fmt="yuv420p10le")).frames
    assert ten.shape == eight.shape and (ten - eight).abs().mean() < 0.02


def test_audio_starting_late_is_aligned_to_the_first_frame(tmp_path):
    path = make_clip(tmp_path / "late.mp4", n=25, audio_seconds=0.5, audio_start=0.3)
    raw, rate = read_audio(path)
    aligned, _ = read_audio(path, align_to_video=True)
    onset = int((aligned.abs().amax(0) > 0.05).nonzero()[0])
    assert abs(onset / rate - 0.3) < 0.01 and aligned.shape[-1] > raw.shape[-1]
    assert read_video(path).audio[0].shape == aligned.shape  # read_video aligns the same way
    plain = make_wav(tmp_path / "a.wav", 0.5)
    assert torch.equal(read_audio(plain, align_to_video=True)[0], read_audio(plain)[0])  # no video: as is


def test_timing_of_a_single_frame():
    one = FrameTiming(np.array([7]), Fraction(1, 90000), Fraction(30))
    assert len(one) == 1 and not one.variable and one.duration == pytest.approx(1 / 30)
