"""Tests for omnisync_model.media.video_io: PyAV read / write round trips, probing, audio, errors and atomic writes."""

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from omnisync_model.media.video_io import (MediaError, VideoWriter, _align_audio, _count_packets, iter_video_frames,
                                     probe_video, read_audio, read_video, to_fraction)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
AAC_FRAME = 1024


def _frames(n=12, h=32, w=32):
    """Smooth moving content (gradients + a square), the kind H.264 keeps well: float [n,h,w,3] in 0..1."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.empty(n, h, w, 3)
    for i in range(n):
        out[i, ..., 0] = x
        out[i, ..., 1] = y
        out[i, ..., 2] = 0.5 + 0.3 * math.sin(i / 3)
        top = 4 + i % (h - 12)
        out[i, top:top + 8, 6:14] = torch.tensor([0.9, 0.2, 0.1])
    return out


def _sine(seconds, rate, channels=1, freq=440.0, onset=0.0):
    t = torch.arange(int(round(seconds * rate))) / rate
    wave = 0.4 * torch.sin(2 * math.pi * freq * t) * (t >= onset)
    return wave[None].repeat(channels, 1).float()


def _write(path, frames, fps, audio=None, chunk=5):
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], audio=audio) as out:
        for i in range(0, len(frames), chunk):
            out.write(frames[i:i + chunk])
    return path


def _onset(wave, threshold=0.1):
    return int(np.argmax(wave.abs().numpy() > threshold))


# ---- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps,rate,channels", [(Fraction(25), 16000, 1), (Fraction(30000, 1001), 44100, 2),
                                               (Fraction(60), 48000, 1)])
def test_write_read_round_trip(tmp_path, fps, rate, channels):
    frames = _frames(n=23)
    seconds = len(frames) / fps
    wave = _sine(float(seconds), rate, channels, onset=0.1)
    path = _write(tmp_path / "clip.mp4", frames, fps, audio=(wave, rate))
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.frames.dtype == torch.float32
    assert video.fps == fps and isinstance(video.fps, Fraction)
    assert (video.frames - frames).abs().mean() < 0.05
    back, back_rate = video.audio
    assert back_rate == rate and back.shape[0] == channels and back.dtype == torch.float32
    assert abs(back.shape[1] - wave.shape[1]) <= AAC_FRAME
    assert abs(_onset(back[0]) - _onset(wave[0])) <= rate // 1000  # audio stays in sync (within 1 ms)
    n = min(back.shape[1], wave.shape[1])
    assert torch.corrcoef(torch.stack((back[0, :n], wave[0, :n])))[0, 1] > 0.95


def test_probe(tmp_path):
    audio = (_sine(0.7, 16000), 16000)
    path = _write(tmp_path / "p.mp4", _frames(n=17, h=24, w=40), Fraction(24000, 1001), audio=audio)
    info = probe_video(path)
    assert info == (17, Fraction(24000, 1001), 40, 24, True)
    assert (info.n_frames, info.width, info.height, info.has_audio) == (17, 40, 24, True)


def test_probe_counts_frames_when_container_has_no_count(tmp_path):
    path = _write(tmp_path / "clip.mkv", _frames(n=13), 25)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    assert probe_video(path).n_frames == 13
    assert read_video(path).frames.shape[0] == 13


def test_video_without_audio(tmp_path):
    path = _write(tmp_path / "silent.mp4", _frames(n=10), 30)
    assert probe_video(path).has_audio is False
    assert read_video(path).audio is None
    with pytest.raises(MediaError, match="silent.mp4 has no audio stream"):
        read_audio(path)


def test_float_fps_becomes_exact_fraction(tmp_path):
    path = _write(tmp_path / "ntsc.mp4", _frames(n=10), 29.97)
    assert read_video(path).fps == Fraction(30000, 1001)


@pytest.mark.parametrize("value,expect", [(29.97, Fraction(30000, 1001)), (23.976, Fraction(24000, 1001)),
                                          (59.94, Fraction(60000, 1001)), (25.0, Fraction(25)), (12.5, Fraction(25, 2)),
                                          (30, Fraction(30)), (Fraction(30000, 1001), Fraction(30000, 1001))])
def test_to_fraction(value, expect):
    assert to_fraction(value) == expect


def test_to_fraction_rejects_non_positive():
    with pytest.raises(ValueError):
        to_fraction(0)


@pytest.mark.parametrize("h,w", [(31, 33), (32, 33), (31, 32)])
def test_odd_sizes_keep_their_exact_size(tmp_path, h, w):
    """An odd side cannot be 4:2:0: the writer encodes yuv444p (H.264 High 4:4:4) and the decoded frames have the
    source's exact width and height; even sizes stay yuv420p."""
    frames = _frames(n=10, h=h, w=w)
    path = _write(tmp_path / "odd.mp4", frames, 25)
    video = read_video(path)
    assert video.frames.shape == (10, h, w, 3)
    assert (video.frames - frames).abs().mean() < 0.03
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv444p"
        assert (stream.codec_context.width, stream.codec_context.height) == (w, h)
    even = _write(tmp_path / "even.mp4", _frames(n=3, h=32, w=32), 25)
    with av.open(str(even)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_odd_size_with_a_4_2_0_format_is_refused(tmp_path):
    with pytest.raises(MediaError, match=r"33x31.*yuv444p"):
        VideoWriter(tmp_path / "x.mp4", 25, 33, 31, pix_fmt="yuv420p")


def test_uint8_and_max_frames(tmp_path):
    frames = _frames(n=14)
    path = _write(tmp_path / "u8.mp4", frames, 25)
    as_float = read_video(path)
    as_u8 = read_video(path, max_frames=5, as_uint8=True, with_audio=False)
    assert as_u8.frames.dtype == torch.uint8 and as_u8.frames.shape == (5, 32, 32, 3)
    assert torch.equal(as_u8.frames.float() / 255, as_float.frames[:5])


def test_writer_accepts_uint8_and_numpy(tmp_path):
    frames = (_frames(n=10) * 255).round().to(torch.uint8)
    path = _write(tmp_path / "np.mp4", frames.numpy(), 25)
    back = read_video(path, as_uint8=True).frames
    assert (back.float() - frames.float()).abs().mean() < 0.05 * 255


def test_iter_video_frames_chunks(tmp_path):
    path = _write(tmp_path / "it.mp4", _frames(n=10), 25)
    chunks = list(iter_video_frames(path, chunk=4))
    assert [c.shape[0] for c in chunks] == [4, 4, 2]
    assert all(c.dtype == torch.float32 and c.shape[1:] == (32, 32, 3) for c in chunks)
    assert torch.equal(torch.cat(chunks), read_video(path).frames)
    assert sum(c.shape[0] for c in iter_video_frames(path, chunk=3, max_frames=7)) == 7
    with pytest.raises(ValueError):
        next(iter_video_frames(path, chunk=0))


def _write_rotated(path, rotation):
    """A 32 wide x 16 high clip whose display matrix says 'rotate by `rotation` degrees counter-clockwise'."""
    image = np.zeros((16, 32, 3), np.uint8)
    image[:6, :8] = 255  # white block at the top-left of the stored frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(rotation)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="PyAV too old")
def test_display_rotation_is_applied(tmp_path):
    path = _write_rotated(tmp_path / "rot.mp4", 90)
    info = probe_video(path)
    assert (info.width, info.height) == (16, 32)
    frames = read_video(path).frames
    assert frames.shape == (3, 32, 16, 3)
    # rotated 90 degrees counter-clockwise, the top-left block ends up at the bottom-left
    assert frames[0, -6:, :6].mean() > 0.9 and frames[0, :6, :6].mean() < 0.1


# ---- audio files ------------------------------------------------------------------------------------


def _write_audio(path, codec, wave, rate, fmt=None):
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        size = stream.codec_context.frame_size or None
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate, frame_size=size)
        frame = av.AudioFrame.from_ndarray(wave.numpy().copy(), format="fltp", layout=layout)
        frame.sample_rate = rate
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("name,codec,fmt,lossless", [("a.wav", "pcm_s16le", None, True), ("a.flac", "flac", None, True),
                                                     ("a.mp3", "libmp3lame", None, False),
                                                     ("a.m4a", "aac", "ipod", False), ("a.aac", "aac", "adts", False)])
def test_read_audio_formats(tmp_path, name, codec, fmt, lossless):
    rate = 22050 if codec != "aac" else 24000
    wave = _sine(0.5, rate, channels=2, onset=0.2)
    wave[1] *= 0.5  # channels differ
    back, back_rate = read_audio(_write_audio(tmp_path / name, codec, wave, rate, fmt))
    assert back_rate == rate and back.shape[0] == 2 and back.dtype == torch.float32
    if lossless:
        assert back.shape == wave.shape and (back - wave).abs().max() < 1e-4
    else:
        assert abs(back.shape[1] - wave.shape[1]) <= 2 * 1152
        assert back[1].abs().max() < 0.7 * back[0].abs().max()


def test_read_real_wav():
    path = MEDIA / "speech_16k.wav"
    if not path.exists():
        pytest.skip("shared media not available")
    wave, rate = read_audio(path)
    assert rate == 16000 and wave.shape[0] == 1 and 9.0 < wave.shape[1] / rate < 10.0
    assert 0.05 < wave.abs().max() <= 1.0


def test_align_audio():
    wave = np.arange(1, 11, dtype=np.float32)[None]
    assert np.array_equal(_align_audio(wave, 10, 0.2), np.concatenate(([[0, 0]], wave), axis=1))
    assert np.array_equal(_align_audio(wave, 10, -0.3), wave[:, 3:])
    assert _align_audio(wave, 10, 0.0) is wave


# ---- errors -----------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for reader in (read_video, read_audio, probe_video):
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            reader(missing)
    with pytest.raises(FileNotFoundError):
        next(iter_video_frames(missing))


def test_not_a_video(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 20)
    for reader in (read_video, read_audio, probe_video):
        with pytest.raises(MediaError, match="notes.mp4 cannot be opened as a video/audio file"):
            reader(fake)
    with pytest.raises(MediaError, match="is a directory"):
        read_video(tmp_path)


def test_audio_only_file_has_no_video(tmp_path):
    path = _write_audio(tmp_path / "only.wav", "pcm_s16le", _sine(0.1, 8000), 8000)
    with pytest.raises(MediaError, match="only.wav has no video stream"):
        read_video(path)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, 25, 32, 32, audio=(_sine(1.0, 16000), 16000)) as out:
            out.write(_frames(n=5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path):
    target = _write(tmp_path / "out.mp4", _frames(n=10), 25)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="opened for 32x32"):
        with VideoWriter(target, 25, 32, 32) as out:
            out.write(_frames(n=3, h=16, w=16))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_empty_write_is_an_error(tmp_path):
    with pytest.raises(MediaError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", 25, 32, 32):
            pass
    assert list(tmp_path.iterdir()) == []


def test_writer_downmixes_surround_and_other_layouts():
    import numpy as np
    from omnisync_model.media.video_io import stereo_downmix

    fl, fr, fc, lfe, bl, br = (np.full(4, v, np.float32) for v in (0.1, 0.2, 0.3, 0.9, 0.4, 0.5))
    out = stereo_downmix(np.stack([fl, fr, fc, lfe, bl, br]))
    g, k = 1 / (1 + 2 * 0.5 ** 0.5), 0.5 ** 0.5
    assert out.shape == (2, 4) and out.dtype == np.float32
    assert np.allclose(out[0], (0.1 + k * (0.3 + 0.4)) * g) and np.allclose(out[1], (0.2 + k * (0.3 + 0.5)) * g)
    assert np.abs(stereo_downmix(np.ones((6, 3), np.float32))).max() <= 1.0 + 1e-6  # full scale cannot clip
    three = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert np.allclose(stereo_downmix(three), three.mean(0, keepdims=True))


def test_writer_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        VideoWriter(tmp_path / "x.mp4", 25, 32, 32, audio=(torch.zeros(2, 3, 100), 16000))
    with pytest.raises(ValueError, match="positive"):
        VideoWriter(tmp_path / "x.mp4", 25, 0, 32)
    with pytest.raises(RuntimeError, match="not open"):
        VideoWriter(tmp_path / "x.mp4", 25, 32, 32).write(_frames(n=1))
    assert list(tmp_path.iterdir()) == []


def test_unusual_audio_rate_is_resampled(tmp_path):
    wave = _sine(0.8, 11000, onset=0.3)
    path = _write(tmp_path / "r.mp4", _frames(n=20), 25, audio=(wave, 11000))
    back, rate = read_audio(path)
    assert rate == 48000
    assert abs(back.shape[1] - wave.shape[1] * 48000 / 11000) <= AAC_FRAME
    assert abs(_onset(back[0]) / 48000 - 0.3) < 0.002


# ---- real media ---------------------------------------------------------------------------------------


@pytest.fixture()
def talking_head():
    path = MEDIA / "talking_head_25fps.mp4"
    if not path.exists():
        pytest.skip("shared media not available")
    return path


def test_real_clip_probe_and_read(talking_head):
    info = probe_video(talking_head)
    assert info == (250, Fraction(25), 1080, 1920, True)  # portrait: 1080 wide, 1920 high
    video = read_video(talking_head, max_frames=3)
    assert video.frames.shape == (3, 1920, 1080, 3) and video.fps == 25
    wave, rate = video.audio
    assert rate == 44100 and wave.shape[0] == 2
    assert abs(wave.shape[1] / rate - 10.0) < 0.1


def test_real_clip_streams_frames(talking_head):
    # 1080p float frames are 25 MB each: stream a few chunks only (the whole clip costs ~30 s on a slow CPU)
    sizes = [chunk.shape for chunk in iter_video_frames(talking_head, chunk=16, max_frames=40)]
    assert sizes == [(16, 1920, 1080, 3), (16, 1920, 1080, 3), (8, 1920, 1080, 3)]
    assert _count_packets(talking_head) == 250  # the frame count without container metadata
