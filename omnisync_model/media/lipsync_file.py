"""File to file lip sync, streaming: read -> crop -> lip sync -> paste back -> encode, window by window.

The input is decoded three times, so that memory is bounded by a window and not by the video's length:
1. the locator pass keeps only a few numbers per frame (mouth centre, face box, confidence) and counts the frames
   that really decode;
2. one reader feeds the cropped, resized frames to the pipeline;
3. another supplies the full-resolution frames that the finished crops are pasted into.
Per-length memory is then a handful of floats per frame plus the audio waveform.

Shape legend
  F frames   H, W frame size   h, w working (crop) size   C audio channels   N audio samples
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..core.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_rate, check_waveform
from ..sampling.backend import Backend
from ..core.codec import Codec
from .locate import LocateOptions, MouthLocator, MouthTrack, mouth_mask_preview
from ..sampling.pipeline import AudioInput, LipSyncOptions, ProgressFn, iter_lipsync
from .regions import (Box, crop_boxes_from_track, crop_per_frame, map_track_to_crop, paste_back_per_frame,
                      repeat_box, resize, working_size)
from .streams import SequentialFrames
from .video_io import MediaError, PathLike, VideoWriter, iter_video_frames, probe_video, read_audio

log = logging.getLogger(__name__)

READ_CHUNK = 16
LOCATE_SIZE = 160  # the locator works on frames downscaled to this longest side
MOUTH_RADIUS = 0.12  # mouth blend disc radius, as a fraction of the crop's shorter side (crop = 1.6x face)
BLENDS = ("mouth", "box")


@dataclass(frozen=True)
class VideoResult:
    """What :func:`lipsync_video` wrote."""

    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    audio_seconds: float
    mouth_frames: int  # frames where a mouth was found (the others got uniform guidance)

    def summary(self) -> str:
        return (f"wrote {self.path}: {self.frames} frames at {float(self.fps):.3f} fps "
                f"({self.frames / float(self.fps):.2f} s), {self.width}x{self.height}, audio fitted to "
                f"{self.audio_seconds:.2f} s, mouth found in {self.mouth_frames}/{self.frames} frames")


def fit_audio(waveform: torch.Tensor, sample_rate: int, n_frames: int, fps: float) -> torch.Tensor:
    """Trim or zero-pad [C,N] audio to exactly the video's duration n_frames / fps."""
    want = int(round(n_frames / fps * sample_rate))
    if waveform.shape[-1] >= want:
        return waveform[..., :want]
    pad = torch.zeros(waveform.shape[0], want - waveform.shape[-1], dtype=waveform.dtype)
    return torch.cat((waveform, pad), dim=-1)


def speech_channels(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[N] or [C,N] speech -> [C,N] float32; ValueError naming the audio when it is empty, not finite, or at a rate
    the model does not take."""
    wave = torch.as_tensor(waveform)
    if wave.dim() == 1:
        wave = wave[None]  # [N] -> [1,N]
    if wave.dim() != 2:
        raise ValueError(f"audio must be [channels, samples], got {list(wave.shape)}")
    check_waveform(wave, "audio")
    check_rate(sample_rate, "audio sample rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    return wave.float()


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    return blend


def locate_in_video(video: PathLike, work: int = LOCATE_SIZE, options: LocateOptions = LocateOptions(),
                    on_chunk: Optional[Callable[[int], None]] = None) -> MouthTrack:
    """Mouth track of a whole video file, located on frames downscaled to ``work`` px (streamed: memory does not
    grow with the video). ``on_chunk(frames_done)`` runs after every decoded chunk (progress, interrupts)."""
    locator = MouthLocator(options)
    for chunk in iter_video_frames(video, READ_CHUNK):
        h, w = chunk.shape[1:3]
        scale = min(1.0, work / max(h, w))
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        locator.add((resize(chunk, hw) * 255).round().to(torch.uint8))  # [n,h',w',3]
        if on_chunk is not None:
            on_chunk(len(locator))
    if len(locator) == 0:
        raise MediaError(f"{video} has no decodable video frames")
    return locator.finish()


def plan_boxes(box: Optional[str], track: MouthTrack, height: int, width: int) -> torch.Tensor:
    """Per-frame crop boxes [F,4]: 'auto' follows the located face; 'x,y,w,h' is fixed; None is the whole frame."""
    if box == "auto":
        return crop_boxes_from_track(track, (height, width))
    region = Box.parse(box).check(height, width) if box else Box(0, 0, width, height)
    return repeat_box(region, len(track))


def lipsync_video(video: PathLike, waveform: torch.Tensor, sample_rate: int, out: PathLike, backend: Backend,
                  options: LipSyncOptions, box: Optional[str] = None, size: Optional[int] = None,
                  blend: str = "mouth", codec: Optional[Codec] = None, progress: Optional[ProgressFn] = None,
                  check_interrupt: Optional[Callable[[], None]] = None) -> VideoResult:
    """Lip-sync the video file ``video`` to ``waveform`` [C,N] and write ``out`` (H.264 + AAC, the audio trimmed or
    zero-padded to the video's duration). Nothing is written unless every frame was.

    ``box``: 'auto' (follow the located face), 'x,y,w,h' pixels, or None (the whole frame). ``blend``: 'mouth'
    takes only a soft disc around the located mouth from the result (the rest of the box keeps its full-resolution
    pixels); 'box' takes the whole box. Pixels outside the box are never touched before encoding. ``codec``: the
    backend's own codec unless given (e.g. a VAE).
    """
    check_blend(blend)
    wave = speech_channels(waveform, sample_rate)
    probed, fps, width, height, _ = probe_video(video)
    track = locate_in_video(video, on_chunk=(lambda _done: check_interrupt()) if check_interrupt else None)
    n = len(track)  # frames that really decode (a container's count can be off)
    if n != probed:
        log.warning("%s: the container says %d frames, %d decode; using %d", video, probed, n, n)
    boxes = plan_boxes(box, track, height, width)
    crop_track = map_track_to_crop(track, boxes, (height, width))
    codec = backend.prepare_codec(codec)
    first = Box(*boxes[0].tolist())
    native = backend.crop_rules.resolution
    target = size or (max(native) if native else max(first.w, first.h))
    hw = working_size(first, target, backend.pixel_multiple(codec))
    found = int(crop_track.valid.sum())
    log.info("%s: %d frames %dx%d at %s fps; box %s (%s) -> %dx%d, %d/%d frames with a mouth", video, n, width,
             height, fps, first, box or "whole frame", hw[1], hw[0], found, n)

    crops = SequentialFrames(_cropped(video, boxes, hw), n)
    fulls = _frames_one_by_one(iter_video_frames(video, READ_CHUNK))
    audio_out = fit_audio(wave, sample_rate, n, float(fps))
    with VideoWriter(out, fps, width, height, audio=(audio_out, sample_rate)) as writer:
        for start, result in iter_lipsync(crops, float(fps), AudioInput(waveform=wave, sample_rate=sample_rate),
                                          backend, codec, options, mouth_centres=crop_track.centres,
                                          mouth_valid=crop_track.valid, progress=progress,
                                          check_interrupt=check_interrupt):
            k = result.shape[0]
            full = torch.stack([next(fulls) for _ in range(k)])  # [k,H,W,3] originals
            weights = _blend_weights(blend, crop_track, start, k, hw)
            writer.write(paste_back_per_frame(full, result, boxes[start:start + k], weights=weights))
    return VideoResult(Path(out), n, fps, width, height, audio_out.shape[-1] / sample_rate, found)


def lipsync_file(video: Path, audio: Path, out: Path, backend: Backend, options: LipSyncOptions,
                 box: Optional[str] = None, size: Optional[int] = None, blend: str = "mouth",
                 progress: Optional[ProgressFn] = None, codec: Optional[Codec] = None) -> str:
    """:func:`lipsync_video` with the speech read from the file ``audio``. Returns a one-line summary."""
    wave, sr = read_audio(audio)
    result = lipsync_video(video, wave, sr, out, backend, options, box=box, size=size, blend=blend,
                           codec=codec, progress=progress)
    return result.summary()


def _blend_weights(blend: str, crop_track: MouthTrack, start: int, k: int,
                   hw: tuple[int, int]) -> Optional[torch.Tensor]:
    """[k,h,w] mouth-disc weights of frames start..start+k (made per chunk: [F,h,w] for a long video is large)."""
    if blend != "mouth":
        return None
    part = MouthTrack(*(t[start:start + k] for t in (crop_track.centres, crop_track.valid, crop_track.face_boxes,
                                                     crop_track.confidence)))
    return mouth_mask_preview(part, hw[0], hw[1], MOUTH_RADIUS)


def _cropped(video: PathLike, boxes: torch.Tensor, hw: tuple[int, int]) -> Iterator[torch.Tensor]:
    """Stream the video's frames cropped at each frame's box and resized to ``hw``."""
    start = 0
    for chunk in iter_video_frames(video, READ_CHUNK):
        chunk = chunk[: max(0, boxes.shape[0] - start)]  # frames past the located count (never used) are dropped
        if chunk.shape[0]:
            yield crop_per_frame(chunk, boxes[start:start + chunk.shape[0]], hw)
        start += chunk.shape[0]


def _frames_one_by_one(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        yield from chunk
