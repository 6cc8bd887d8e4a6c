"""Small media files of every awkward kind, made on the fly with PyAV (no ffmpeg binary, nothing downloaded).

``make_clip`` writes a short H.264 (or any PyAV encoder) clip with optional variable-frame-rate timestamps, a
display rotation, a 10-bit pixel format, an odd size, and an AAC audio track that may start later than the video or
last longer; ``make_wav`` a PCM WAV. ``file_digest`` is what the tests compare to prove an input was not touched.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np

VFR_PTS = (0, 512, 1024, 1920, 2304, 2816, 3840, 4352, 4608, 5632, 6144, 6400)  # 1/12800 s ticks: 25-50 fps
VFR_TIME_BASE = Fraction(1, 12800)


def frame_image(i: int, height: int, width: int) -> np.ndarray:
    """Smooth gradients and a moving block (what H.264 keeps well): uint8 [H, W, 3]."""
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    img = np.stack([x, y, np.full_like(x, 0.5 + 0.3 * math.sin(i / 3))], axis=-1)
    top, left = (2 + i) % max(1, height - 6), (3 + 2 * i) % max(1, width - 6)
    img[top:top + 6, left:left + 6] = (0.9, 0.2, 0.1)
    return (img * 255 + 0.5).astype(np.uint8)


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.3 * np.sin(2 * math.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * math.pi * 3 * t))).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def make_clip(path: Path, n: int = 12, width: int = 32, height: int = 32, fps: Fraction = Fraction(25),
              codec: str = "libx264", pix_fmt: str = "yuv420p", pts: Optional[Sequence[int]] = None,
              time_base: Optional[Fraction] = None, rotation: int = 0, audio_seconds: Optional[float] = None,
              audio_start: float = 0.0, audio_rate: int = 16000) -> Path:
    """A clip of ``n`` frames (stored ``width`` x ``height``); ``pts`` in ``time_base`` for variable rates; a display
    ``rotation`` (degrees counter-clockwise); AAC audio of ``audio_seconds`` starting ``audio_start`` s late."""
    tb = Fraction(time_base) if time_base is not None else 1 / Fraction(fps)
    stamps = list(pts) if pts is not None else [round(Fraction(i) / Fraction(fps) / tb) for i in range(n)]
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.time_base = tb
        video.codec_context.time_base = tb
        if rotation:
            video.set_display_rotation(rotation)
        audio = container.add_stream("aac", rate=audio_rate, layout="mono") if audio_seconds else None
        for i, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(frame_image(i, height, width), format="rgb24")
            frame.pts, frame.time_base = stamp, tb
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            _write_audio(container, audio, tone(audio_seconds, audio_rate), audio_rate, audio_start)
    return path


def _write_audio(container, stream, wave: np.ndarray, rate: int, start: float) -> None:
    size, offset = 1024, int(round(start * rate))
    for a in range(0, wave.shape[1], size):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, a:a + size]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, offset + a, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def make_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decoded_pts(path: Path) -> tuple[list[int], Fraction, tuple[int, int], str]:
    """(pts of every decoded frame, time base, (width, height) as stored, pixel format)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return ([f.pts for f in frames], Fraction(stream.time_base), (frames[0].width, frames[0].height),
                stream.codec_context.pix_fmt)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
