"""File to file lip sync, streaming: read -> crop -> lip sync -> paste back -> encode, window by window.

Two readers walk the input in lockstep: one feeds the cropped frames to the pipeline, the other supplies the
full-resolution frames that finished crops are pasted into. Memory is bounded by the window, not the video.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from .codec import make_codec
from .model import OmniSyncModel
from .pipeline import AudioInput, LipSyncOptions, ProgressFn, iter_lipsync
from .locate import MouthTrack, locate_mouths, mouth_mask_preview
from .regions import (Box, crop_boxes_from_track, crop_per_frame, map_track_to_crop, paste_back_per_frame, resize,
                      working_size)
from .streams import SequentialFrames
from .video_io import VideoWriter, iter_video_frames, probe_video, read_audio

log = logging.getLogger(__name__)

READ_CHUNK = 16
LOCATE_SIZE = 160  # the locator works on frames downscaled to this longest side
MOUTH_RADIUS = 0.12  # mouth blend disc radius, as a fraction of the crop's shorter side (crop = 1.6x face)


def fit_audio(waveform: torch.Tensor, sample_rate: int, n_frames: int, fps: float) -> torch.Tensor:
    """Trim or zero-pad [C,N] audio to exactly the video's duration n_frames / fps."""
    want = int(round(n_frames / fps * sample_rate))
    if waveform.shape[-1] >= want:
        return waveform[..., :want]
    pad = torch.zeros(waveform.shape[0], want - waveform.shape[-1], dtype=waveform.dtype)
    return torch.cat((waveform, pad), dim=-1)


def locate_in_video(video: Path, work: int = LOCATE_SIZE) -> MouthTrack:
    """Mouth track of a whole video file, located on frames downscaled to ``work`` px (uint8, streamed)."""
    small = []
    for chunk in iter_video_frames(video, READ_CHUNK):
        h, w = chunk.shape[1:3]
        scale = min(1.0, work / max(h, w))
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        small.append((resize(chunk, hw) * 255).round().to(torch.uint8))  # [n,h',w',3]
    return locate_mouths(torch.cat(small))


def plan_boxes(box: Optional[str], track: MouthTrack, height: int, width: int) -> torch.Tensor:
    """Per-frame crop boxes [F,4]: 'auto' follows the located face; 'x,y,w,h' is fixed; None is the whole frame."""
    if box == "auto":
        return crop_boxes_from_track(track, (height, width))
    region = Box.parse(box).check(height, width) if box else Box(0, 0, width, height)
    return torch.tensor([[region.x, region.y, region.w, region.h]]).repeat(len(track), 1)


def lipsync_file(video: Path, audio: Path, out: Path, model: OmniSyncModel, options: LipSyncOptions,
                 box: Optional[str] = None, size: Optional[int] = None, blend: str = "mouth",
                 progress: Optional[ProgressFn] = None) -> str:
    """Lip-sync ``video`` to ``audio`` and write ``out`` (H.264 + AAC). Returns a one-line summary.

    ``box``: 'auto' (follow the located face), 'x,y,w,h' pixels, or None (the whole frame). ``blend``: 'mouth'
    takes only a soft disc around the located mouth from the result (the rest of the box keeps its full-resolution
    pixels); 'box' takes the whole box. Pixels outside the box never change.
    """
    n, fps, width, height, _ = probe_video(video)
    if n < 1:
        raise ValueError(f"{video} has no video frames")
    if blend not in ("mouth", "box"):
        raise ValueError(f"blend must be 'mouth' or 'box', got {blend!r}")
    wave, sr = read_audio(audio)
    track = locate_in_video(video)
    boxes = plan_boxes(box, track, height, width)
    crop_track = map_track_to_crop(track, boxes, (height, width))
    codec = make_codec(model.config.codec)
    first = Box(*boxes[0].tolist())
    target = size or int(model.config.extra.get("resolution", max(first.w, first.h)))
    hw = working_size(first, target, codec.spatial_factor * model.config.patch_size)
    weights = mouth_mask_preview(crop_track, hw[0], hw[1], MOUTH_RADIUS) if blend == "mouth" else None
    log.info("%s: %d frames %dx%d at %s fps; box %s (%s) -> %dx%d, %d/%d frames with a mouth", video, n, width,
             height, fps, first, box or "whole frame", hw[1], hw[0], int(crop_track.valid.sum()), n)

    crops = SequentialFrames(_cropped(video, boxes, hw), n)
    fulls = iter(_chunks_as_frames(iter_video_frames(video, READ_CHUNK)))
    audio_out = fit_audio(wave, sr, n, float(fps))
    written = 0
    with VideoWriter(out, fps, width, height, audio=(audio_out, sr)) as writer:
        for start, result in iter_lipsync(crops, float(fps), AudioInput(waveform=wave, sample_rate=sr), model, codec,
                                          options, mouth_centres=crop_track.centres, mouth_valid=crop_track.valid,
                                          progress=progress):
            k = result.shape[0]
            full = torch.stack([next(fulls) for _ in range(k)])  # [k,H,W,3] originals
            w = None if weights is None else weights[start:start + k]
            writer.write(paste_back_per_frame(full, result, boxes[start:start + k], weights=w))
            written += k
    if written != n:
        raise RuntimeError(f"wrote {written} frames, expected {n}")
    return (f"wrote {out}: {n} frames at {float(fps):.3f} fps ({n / float(fps):.2f} s), "
            f"audio fitted to {audio_out.shape[-1] / sr:.2f} s")


def _cropped(video: Path, boxes: torch.Tensor, hw: tuple[int, int]):
    """Stream the video's frames cropped at each frame's box and resized to ``hw``."""
    start = 0
    for chunk in iter_video_frames(video, READ_CHUNK):
        yield crop_per_frame(chunk, boxes[start:start + chunk.shape[0]], hw)
        start += chunk.shape[0]


def _chunks_as_frames(chunks):
    for chunk in chunks:
        yield from chunk
