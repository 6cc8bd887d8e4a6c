"""Video and audio file I/O with PyAV (no ffmpeg binary, no torchvision / torchaudio).

Reading returns frames as float32 [F, H, W, 3] in 0..1 (or uint8) torch tensors, the frame rate as an exact
``Fraction`` (29.97 fps is 30000/1001) and the audio as float32 [C, N] with its sample rate. Frames are turned
upright when the file carries a display rotation (phone videos), as ffmpeg does; mirror flags are ignored.
``read_video`` aligns the audio to the first video frame (leading silence is added, or early samples dropped, when
the streams start at different times). ``iter_video_frames`` streams long videos in chunks.

``frame_timing`` gives every frame's presentation timestamp (from the packets, no decoding) and says whether the
clip has a variable frame rate; ``iter_video_frames(..., stamps=[])`` collects the decoded frames' timestamps.

``VideoWriter`` writes H.264 (libx264) with an AAC track, atomically (``core.files``: a temporary file next to the
target, renamed on success, so a failed write leaves nothing behind; an output that is one of ``inputs`` is
refused). Frames keep their exact width and height: even sizes are encoded yuv420p (the most widely played
format); an odd width or height, which 4:2:0 chroma cannot hold, is encoded yuv444p (H.264 High 4:4:4, exact
size, which ffmpeg / VLC / Chrome play and some hardware players do not). With ``time_base`` and per-frame ``pts``
it keeps a variable-frame-rate clip's timestamps exactly (mp4 / mov store them in that time base).

Shape legend
  F frames   H, W frame height, width   C audio channels   N audio samples
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import av
import numpy as np
import torch

from ..core.files import PathLike, commit, refuse_same_file, temp_path_for
from .timing import FrameTiming, constant_timing, timing_from_stamps

__all__ = ["MediaError", "VideoData", "VideoInfo", "VideoWriter", "FrameTiming", "frame_timing", "timing_from_stamps",
           "iter_video_frames", "probe_video", "read_audio", "read_video", "to_fraction", "video_time_base"]

logger = logging.getLogger(__name__)

Audio = tuple[torch.Tensor, int]  # (waveform float32 [C, N], sample rate)
FFmpegError = av.error.FFmpegError
LAYOUTS = {1: "mono", 2: "stereo"}  # channel layouts the writer accepts
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


class MediaError(ValueError):
    """A media file cannot be read or written (no such stream, not a media file, decoder failure)."""


@dataclass
class VideoData:
    frames: torch.Tensor  # [F, H, W, 3] float32 0..1, or uint8
    fps: Fraction
    audio: Optional[Audio]  # (waveform float32 [C, N], sample rate), aligned to the first frame


class VideoInfo(NamedTuple):
    n_frames: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool


# --------------------------------------------------------------------------------------------- reading


def _open(path: PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"media file not found: {path}")
    if path.is_dir():
        raise MediaError(f"{path} is a directory, not a media file")
    try:
        return av.open(str(path))
    except FFmpegError as exc:
        raise MediaError(f"{path} cannot be opened as a video/audio file: {exc}") from exc


def _video_stream(container, path: PathLike):
    if not container.streams.video:
        raise MediaError(f"{path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def to_fraction(fps: Union[Fraction, int, float, str]) -> Fraction:
    """Exact frame rate: NTSC-style floats (23.976, 29.97, 59.94) become n*1000/1001, others a short fraction."""
    if isinstance(fps, (Fraction, int)):
        rate = Fraction(fps)
    else:
        value = float(fps)
        ntsc = value * 1.001
        if abs(ntsc - round(ntsc)) < 1e-3 and abs(value - round(value)) > 1e-3:
            rate = Fraction(round(ntsc) * 1000, 1001)
        else:
            rate = Fraction(value).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def _stream_fps(stream, path: PathLike) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    logger.warning("%s has no frame rate; assuming 25 fps", path)
    return Fraction(25)


def _rotation(frame) -> int:
    """Display rotation in counter-clockwise degrees (0 when PyAV is too old to report it)."""
    return getattr(frame, "rotation", 0) or 0


def _upright(frame) -> np.ndarray:
    """Decoded frame -> uint8 [H, W, 3], rotated by the display matrix (counter-clockwise degrees)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(_rotation(frame) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _decode_uint8(path: PathLike, max_frames: Optional[int] = None,
                  stamps: Optional[list] = None) -> Iterator[np.ndarray]:
    """Yield upright uint8 [H, W, 3] frames of the first video stream (8-bit RGB from any pixel format, 10-bit
    included); ``stamps`` (a list) receives each yielded frame's pts (None when the file has none)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            for i, frame in enumerate(container.decode(stream)):
                if max_frames is not None and i >= max_frames:
                    return
                if stamps is not None:
                    stamps.append(frame.pts)
                yield _upright(frame)
        except FFmpegError as exc:
            raise MediaError(f"{path}: video decoding failed: {exc}") from exc


def _to_float(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float().div_(255.0)


def iter_video_frames(path: PathLike, chunk: int = 16, max_frames: Optional[int] = None,
                      stamps: Optional[list] = None) -> Iterator[torch.Tensor]:
    """Stream a video as float32 chunks [n <= chunk, H, W, 3] in 0..1, so long videos need not fit in memory.

    ``stamps``: a list that receives each frame's pts as it is decoded (see :func:`timing_from_stamps`)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    buffer: list[np.ndarray] = []
    for frame in _decode_uint8(path, max_frames, stamps):
        buffer.append(frame)
        if len(buffer) == chunk:
            yield _to_float(np.stack(buffer))
            buffer = []
    if buffer:
        yield _to_float(np.stack(buffer))


def probe_video(path: PathLike) -> VideoInfo:
    """(n_frames, fps, width, height, has_audio) without decoding the whole file.

    The frame count comes from the container; when it is missing the video packets are counted (no decoding).
    Width and height are those of the upright frames.
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream, path)
        has_audio = bool(container.streams.audio)
        try:
            first = next(container.decode(stream), None)
        except FFmpegError as exc:
            raise MediaError(f"{path}: video decoding failed: {exc}") from exc
        if first is None:
            raise MediaError(f"{path} has a video stream without frames")
        turned = round(_rotation(first) / 90) % 2 == 1
        width, height = (first.height, first.width) if turned else (first.width, first.height)
        n_frames = stream.frames
    if not n_frames:
        n_frames = _count_packets(path)
    return VideoInfo(int(n_frames), fps, int(width), int(height), has_audio)


def _count_packets(path: PathLike) -> int:
    return len(_packet_pts(path)[0])


def _packet_pts(path: PathLike) -> tuple[list[Optional[int]], Fraction, Fraction]:
    """(pts of every video packet with data, in decoding order; the stream's time base; its frame rate)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            pts = [packet.pts for packet in container.demux(stream) if packet.size]
        except FFmpegError as exc:
            raise MediaError(f"{path}: reading the video packets failed: {exc}") from exc
        return pts, Fraction(stream.time_base), _stream_fps(stream, path)


# --------------------------------------------------------------------------------------------- frame timing


def frame_timing(path: PathLike) -> FrameTiming:
    """Every frame's presentation timestamp, from the packets (no decoding): they are sorted into display order
    (B-frames arrive out of order). Files without timestamps get i / fps (``exact`` False)."""
    pts, time_base, fps = _packet_pts(path)
    if not pts:
        raise MediaError(f"{path} has a video stream without frames")
    if any(p is None for p in pts):
        return constant_timing(len(pts), fps)
    return timing_from_stamps(sorted(pts), time_base, fps)


def video_time_base(path: PathLike) -> Fraction:
    with _open(path) as container:
        return Fraction(_video_stream(container, path).time_base)


def _decode_audio(path: PathLike) -> tuple[np.ndarray, int, float]:
    """First audio stream -> (float32 [C, N], sample rate, start time of the first sample in seconds)."""
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        parts: list[np.ndarray] = []
        start, rate, resampler = 0.0, 0, None
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    start = float(frame.time) if frame.time is not None else 0.0
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                    rate = frame.sample_rate
                parts.extend(f.to_ndarray() for f in resampler.resample(frame))  # fltp frames: [C, n]
            if resampler is not None:
                parts.extend(f.to_ndarray() for f in resampler.resample(None))
        except FFmpegError as exc:
            raise MediaError(f"{path}: audio decoding failed: {exc}") from exc
    if not parts:
        raise MediaError(f"{path}: the audio stream holds no samples")
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False), int(rate), start


def read_audio(path: PathLike, align_to_video: bool = False) -> Audio:
    """Decode the first audio track of any file PyAV reads (wav, mp3, flac, aac, m4a, mp4 ...).

    Returns (waveform float32 [C, N], sample_rate). ``align_to_video``: for a file that also has video, the audio
    is shifted so that sample 0 plays with the first video frame (leading silence when the audio starts later,
    early samples dropped when it starts earlier), as ``read_video`` does. Raises ``FileNotFoundError`` or
    :class:`MediaError`.
    """
    wave, rate, start = _decode_audio(path)
    if align_to_video and _has_video(path):
        offset = start - _video_start(path)
        if abs(offset) * rate >= 1:
            logger.info("%s: its audio starts %.3f s %s its video; aligned to the first frame", path, abs(offset),
                        "after" if offset > 0 else "before")
        wave = _align_audio(wave, rate, offset)
    return torch.from_numpy(np.ascontiguousarray(wave)), rate


def _has_video(path: PathLike) -> bool:
    with _open(path) as container:
        return bool(container.streams.video)


def _video_start(path: PathLike) -> float:
    """Time of the first video frame (the stream's start, else the first decoded frame's time)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        if stream.start_time is not None:
            return float(stream.start_time * stream.time_base)
        try:
            first = next(container.decode(stream), None)
        except FFmpegError as exc:
            raise MediaError(f"{path}: video decoding failed: {exc}") from exc
        return float(first.time) if first is not None and first.time is not None else 0.0


def _align_audio(wave: np.ndarray, rate: int, offset: float) -> np.ndarray:
    """Shift audio that starts ``offset`` seconds after the first video frame (negative: before it)."""
    shift = int(round(offset * rate))
    if shift > 0:
        return np.concatenate((np.zeros((wave.shape[0], shift), np.float32), wave), axis=1)
    return wave[:, -shift:] if shift < 0 else wave


def read_video(path: PathLike, max_frames: Optional[int] = None, as_uint8: bool = False,
               with_audio: bool = True) -> VideoData:
    """Read a whole video: frames [F, H, W, 3] (float32 0..1, or uint8), exact fps, audio aligned to frame 0.

    Float frames of a long video need a lot of memory (1080p: 25 MB per frame): use ``iter_video_frames``.
    ``audio`` is None when the file has no audio track (or ``with_audio`` is False); it is not trimmed.
    """
    info = probe_video(path)
    frames = list(_decode_uint8(path, max_frames))
    if not frames:
        raise MediaError(f"{path} has no decodable video frames")
    stacked = torch.from_numpy(np.stack(frames))  # [F, H, W, 3] uint8
    audio = None
    if with_audio and info.has_audio:
        wave, rate, start = _decode_audio(path)
        wave = _align_audio(wave, rate, start - _video_start(path))
        audio = (torch.from_numpy(np.ascontiguousarray(wave)), rate)
    return VideoData(stacked if as_uint8 else stacked.float().div_(255.0), info.fps, audio)


# --------------------------------------------------------------------------------------------- writing


def _as_uint8(frames) -> np.ndarray:
    """float 0..1 or uint8 frames (torch or numpy) [n, H, W, 3] or [H, W, 3] -> uint8 numpy [n, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype == torch.uint8 else frames.float().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [n, H, W, 3], got {list(frames.shape)}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


ODD_SIZE_PIX_FMT = "yuv444p"  # what odd widths / heights are encoded as (4:2:0 needs even sizes)


def pixel_format(width: int, height: int, requested: Optional[str] = None) -> str:
    """yuv420p for even sizes, yuv444p when the width or the height is odd (exact size, H.264 High 4:4:4);
    a requested 4:2:0 format with an odd size is refused, naming the size and the format to use."""
    odd = width % 2 or height % 2
    if requested is None:
        return ODD_SIZE_PIX_FMT if odd else "yuv420p"
    if odd and requested.startswith(("yuv420", "nv12")):
        raise MediaError(f"{requested} cannot hold the odd frame size {width}x{height} (4:2:0 chroma needs even "
                         f"sizes); use pix_fmt {ODD_SIZE_PIX_FMT!r} (the default for odd sizes)")
    return requested


SURROUND_51 = ("FL", "FR", "FC", "LFE", "BL", "BR")  # FFmpeg's 5.1 channel order
_MINUS_3DB = 0.7071067811865476


def stereo_downmix(wave: np.ndarray) -> np.ndarray:
    """[C, N] with C > 2 -> what the writer stores: 5.1 (FFmpeg order FL FR FC LFE BL BR) becomes stereo
    (L = FL + 0.707 FC + 0.707 BL, R likewise, LFE dropped, scaled by 1 / (1 + 2 * 0.707) so full-scale input
    cannot clip); any other count is averaged to mono."""
    if wave.shape[0] == len(SURROUND_51):
        fl, fr, fc, _lfe, bl, br = wave
        gain = 1.0 / (1.0 + 2 * _MINUS_3DB)
        left = (fl + _MINUS_3DB * (fc + bl)) * gain
        right = (fr + _MINUS_3DB * (fc + br)) * gain
        logger.info("downmixing 5.1 audio to stereo for the AAC track")
        return np.stack([left, right]).astype(np.float32)
    logger.info("downmixing %d-channel audio to mono for the AAC track", wave.shape[0])
    return wave.mean(axis=0, keepdims=True, dtype=np.float32)


def _audio_array(audio) -> tuple[np.ndarray, int]:
    wave, rate = audio
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] < 1:
        raise ValueError(f"audio waveform must be [C, N] with C >= 1 channels, got {list(wave.shape)}")
    if wave.shape[0] not in LAYOUTS:
        wave = stereo_downmix(wave)
    if int(rate) <= 0:
        raise ValueError(f"audio sample rate must be positive, got {rate}")
    return np.ascontiguousarray(wave), int(rate)


class VideoWriter:
    """Context manager writing H.264 video (+ AAC audio) frame chunk by frame chunk.

    >>> with VideoWriter("out.mp4", Fraction(30000, 1001), 640, 360, audio=(wave, 44100)) as out:
    ...     for chunk in chunks:  # float [n, 360, 640, 3] in 0..1
    ...         out.write(chunk)

    Audio is written as given (trim or pad it to the video length beforehand) and interleaved as frames arrive.
    Sample rates AAC does not support are resampled to 48 kHz. The file appears only when the block exits
    without an exception. ``inputs``: files the output must not be (refused before anything is written).

    Timing: by default frame i is at i / fps (time base 1 / fps). With ``time_base`` (a source's, e.g. 1/12800)
    each ``write`` may pass ``pts`` (ints in that base, increasing): a variable-frame-rate clip keeps every
    frame's timestamp. ``pix_fmt``: None picks yuv420p, or yuv444p for odd sizes (see :func:`pixel_format`).
    """

    def __init__(self, path: PathLike, fps: Union[Fraction, int, float], width: int, height: int,
                 audio: Optional[tuple] = None, crf: int = 18, preset: str = "medium",
                 time_base: Optional[Fraction] = None, pix_fmt: Optional[str] = None,
                 inputs: Sequence[Optional[PathLike]] = ()):
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.path = refuse_same_file(path, *inputs)
        self.fps = to_fraction(fps)
        self.width, self.height = int(width), int(height)
        self.pix_fmt = pixel_format(self.width, self.height, pix_fmt)
        self.time_base = Fraction(time_base) if time_base is not None else 1 / self.fps
        self.crf, self.preset = int(crf), preset
        self.audio = _audio_array(audio) if audio is not None else None
        self.frames_written = 0
        self.last_pts: Optional[int] = None
        self._container = None
        self._tmp: Optional[Path] = None

    def __enter__(self) -> "VideoWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(f"cannot create the folder of {self.path}: {exc}") from exc
        # a unique hidden name that keeps the extension (it picks the muxer); created with the usual permissions
        self._tmp = temp_path_for(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w")
            self._add_video_stream()
            if self.pix_fmt != "yuv420p":
                logger.info("%s: %dx%d has an odd side; encoding %s to keep the exact size", self.path, self.width,
                            self.height, self.pix_fmt)
            if self.audio is not None:
                self._add_audio_stream()
        except FFmpegError as exc:
            self.abort()
            raise MediaError(f"cannot open {self.path} for writing: {exc}") from exc
        except BaseException:
            self.abort()
            raise

    def _add_video_stream(self) -> None:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.width, self.height  # exact: odd sizes are 4:4:4
        stream.pix_fmt = self.pix_fmt
        stream.time_base = self.time_base  # default 1 / fps: pts = frame index
        stream.codec_context.time_base = self.time_base  # the encoder keeps pts at this resolution
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        self._video = stream

    def _add_audio_stream(self) -> None:
        wave, rate = self.audio
        out_rate = rate if rate in AAC_RATES else 48000
        if out_rate != rate:
            logger.info("AAC does not support %d Hz; resampling the audio to %d Hz", rate, out_rate)
        layout = LAYOUTS[wave.shape[0]]
        self._audio_stream = self._container.add_stream("aac", rate=out_rate, layout=layout)
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=out_rate)
        self._fifo = av.AudioFifo()
        self._audio_in = 0  # input samples handed to the encoder chain
        self._audio_out = 0  # output samples encoded (pts in 1 / out_rate)

    def write(self, frames, pts: Optional[Sequence[int]] = None) -> None:
        """Append frames: float 0..1 (or uint8) [n, H, W, 3], torch or numpy; ``pts`` [n] in ``time_base`` units
        (increasing; default: frame index / fps)."""
        if self._container is None:
            raise RuntimeError("VideoWriter is not open; use it as a context manager")
        data = _as_uint8(frames)
        if data.shape[1:3] != (self.height, self.width):
            raise ValueError(f"frames are {data.shape[2]}x{data.shape[1]}, the writer was opened for "
                             f"{self.width}x{self.height}")
        stamps = self._stamps(data.shape[0], pts)
        for image, stamp in zip(data, stamps):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = stamp
            frame.time_base = self.time_base
            self._mux(self._video.encode(frame))
            self.frames_written += 1
            self.last_pts = stamp
        if self.audio is not None:
            played = (self.last_pts * self.time_base) + 1 / self.fps  # end of the last frame, seconds
            self._push_audio(int(round(played * self.audio[1])), final=False)

    def _stamps(self, n: int, pts: Optional[Sequence[int]]) -> list[int]:
        if pts is None:
            first = self.frames_written
            return [round(Fraction(i) / self.fps / self.time_base) for i in range(first, first + n)]
        stamps = [int(p) for p in pts]
        if len(stamps) != n:
            raise ValueError(f"{len(stamps)} timestamps for {n} frames")
        previous = self.last_pts
        for p in stamps:
            if previous is not None and p <= previous:
                raise ValueError(f"frame timestamps must increase, got {p} after {previous}")
            previous = p
        return stamps

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _push_audio(self, upto: int, final: bool) -> None:
        """Encode input samples up to ``upto`` in whole AAC frames; ``final`` flushes the partial tail too."""
        wave, rate = self.audio
        upto = min(upto, wave.shape[1])
        if upto > self._audio_in:
            frame = av.AudioFrame.from_ndarray(wave[:, self._audio_in:upto].copy(), format="fltp",
                                               layout=LAYOUTS[wave.shape[0]])
            frame.sample_rate = rate
            self._audio_in = upto
            for out in self._resampler.resample(frame):
                self._fifo.write(out)
        if final:
            for out in self._resampler.resample(None):
                self._fifo.write(out)
        size = self._audio_stream.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            self._encode_audio(self._fifo.read(min(size, self._fifo.samples)))

    def _encode_audio(self, frame) -> None:
        frame.pts = self._audio_out
        frame.time_base = Fraction(1, self._audio_stream.codec_context.sample_rate)
        self._audio_out += frame.samples
        self._mux(self._audio_stream.encode(frame))

    def close(self) -> None:
        """Flush the encoders, finish the file and move it into place."""
        if self._container is None:
            return
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"no frames were written to {self.path}; nothing saved")
        try:
            self._mux(self._video.encode(None))
            if self.audio is not None:
                self._push_audio(self.audio[0].shape[1], final=True)
                self._mux(self._audio_stream.encode(None))
            self._container.close()
            self._container = None
            commit(self._tmp, self.path)
            self._tmp = None
        except (FFmpegError, OSError) as exc:
            self.abort()
            raise MediaError(f"writing {self.path} failed: {exc}") from exc
        except BaseException:
            self.abort()
            raise
        logger.info("wrote %s: %d frames at %s fps", self.path, self.frames_written, self.fps)

    def abort(self) -> None:
        """Close without finishing and delete the temporary file."""
        if self._container is not None:
            try:
                self._container.close()
            except (FFmpegError, OSError) as exc:
                logger.debug("closing an aborted writer failed: %s", exc)
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
