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
from .regions import Box, crop, paste_back, working_size
from .streams import SequentialFrames
from .video_io import VideoWriter, iter_video_frames, probe_video, read_audio

log = logging.getLogger(__name__)

READ_CHUNK = 16


def fit_audio(waveform: torch.Tensor, sample_rate: int, n_frames: int, fps: float) -> torch.Tensor:
    """Trim or zero-pad [C,N] audio to exactly the video's duration n_frames / fps."""
    want = int(round(n_frames / fps * sample_rate))
    if waveform.shape[-1] >= want:
        return waveform[..., :want]
    pad = torch.zeros(waveform.shape[0], want - waveform.shape[-1], dtype=waveform.dtype)
    return torch.cat((waveform, pad), dim=-1)


def lipsync_file(video: Path, audio: Path, out: Path, model: OmniSyncModel, options: LipSyncOptions,
                 box: Optional[str] = None, size: Optional[int] = None,
                 progress: Optional[ProgressFn] = None) -> str:
    """Lip-sync ``video`` to ``audio`` and write ``out`` (H.264 + AAC). Returns a one-line summary."""
    n, fps, width, height, _ = probe_video(video)
    if n < 1:
        raise ValueError(f"{video} has no video frames")
    wave, sr = read_audio(audio)
    region = Box.parse(box).check(height, width) if box else Box(0, 0, width, height)
    codec = make_codec(model.config.codec)
    multiple = codec.spatial_factor * model.config.patch_size
    target = size or int(model.config.extra.get("resolution", max(region.w, region.h)))
    hw = working_size(region, target, multiple)
    log.info("%s: %d frames %dx%d at %s fps; region %s -> %dx%d", video, n, width, height, fps, region, hw[1], hw[0])

    crops = SequentialFrames(iter_video_frames(video, READ_CHUNK), n, transform=lambda c: crop(c, region, hw))
    fulls = iter(_chunks_as_frames(iter_video_frames(video, READ_CHUNK)))
    audio_out = fit_audio(wave, sr, n, float(fps))
    written = 0
    with VideoWriter(out, fps, width, height, audio=(audio_out, sr)) as writer:
        for start, result in iter_lipsync(crops, float(fps), AudioInput(waveform=wave, sample_rate=sr), model, codec,
                                          options, progress=progress):
            full = torch.stack([next(fulls) for _ in range(result.shape[0])])  # [n,H,W,3] originals
            writer.write(paste_back(full, result, region))
            written += result.shape[0]
    if written != n:
        raise RuntimeError(f"wrote {written} frames, expected {n}")
    return (f"wrote {out}: {n} frames at {float(fps):.3f} fps ({n / float(fps):.2f} s), "
            f"audio fitted to {audio_out.shape[-1] / sr:.2f} s")


def _chunks_as_frames(chunks):
    for chunk in chunks:
        yield from chunk
