"""Per-frame Whisper-tiny windows, as LatentSync and MuseTalk feed them to the UNet (pure functions).

Both take the Whisper-tiny encoder's 50 Hz features with 5 taps per step (the input embedding after the positional
table and the outputs of the 4 blocks, before ``ln_post`` in LatentSync's OpenAI-format encoder), stacked as
``features`` [T, 5, 384]. Video frame i is centred on feature step ``c = floor(i * 50 / fps)`` and takes the 10 steps
``c - 4 .. c + 5`` (two video frames of context on the left, two plus the frame itself on the right, at 2 steps per
25-fps frame); the 10 x 5 taps flatten step-major into 50 tokens of width 384.

* LatentSync (``Audio2Feature.get_sliced_feature``): steps outside ``0 .. T-1`` are clamped to the nearest end.
* MuseTalk (``AudioProcessor.get_whisper_chunk``): the fps is truncated to an integer, steps outside are zeros,
  and the window starts at ``c - 2 * ceil(50 / fps)`` (``c - 4`` at 25 or 30 fps, ``c - 2`` at 50 or 60 fps).

Indices are computed from absolute time with exact rational arithmetic, so any frame of any video (a window of a
long clip included) gets the same features, whatever the window it belongs to.

Shape legend
  T  feature steps (50 per second)   K  taps (5)   D  feature width (384)
  N  frames asked for                W  feature steps per frame (10)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence, Union

import torch

from .motion import positional_table

FEATURE_RATE = 50  # Whisper encoder steps per second
CONTEXT_FRAMES = (2, 2)  # the reference's audio_feat_length: video frames of context before / after
STEPS_PER_FRAME = 2  # feature steps per 25-fps frame, the unit of the reference's window
TAPS = 5
Number = Union[int, float, Fraction]


def window_offsets() -> torch.Tensor:
    """Offsets of a frame's 10 feature steps from its centre step: -4 .. 5."""
    left, right = CONTEXT_FRAMES
    return torch.arange(-left * STEPS_PER_FRAME, (right + 1) * STEPS_PER_FRAME)


def centre_steps(frames: Sequence[int], fps: Number, rate: int = FEATURE_RATE) -> torch.Tensor:
    """floor(i * rate / fps) for each absolute frame index i, exactly (fps may be a Fraction such as 30000/1001)."""
    step = Fraction(rate) / Fraction(fps)
    return torch.tensor([math.floor(int(i) * step) for i in frames], dtype=torch.long)


def latentsync_indices(frames: Sequence[int], fps: Number, num_steps: int) -> torch.Tensor:
    """Feature-step indices [N, 10] of each frame, clamped to 0 .. num_steps - 1 (LatentSync)."""
    if num_steps <= 0:
        raise ValueError("no audio features to index")
    idx = centre_steps(frames, fps)[:, None] + window_offsets()[None, :]  # [N,1] + [1,10] -> [N,10]
    return idx.clamp(0, num_steps - 1)


def musetalk_indices(frames: Sequence[int], fps: Number, num_steps: int) -> torch.Tensor:
    """Feature-step indices [N, 10] of each frame as MuseTalk takes them; -1 marks a zero (padding) step."""
    fps = int(fps)  # MuseTalk truncates the frame rate
    start = centre_steps(frames, fps) - CONTEXT_FRAMES[0] * math.ceil(FEATURE_RATE / fps)  # [N]
    idx = start[:, None] + torch.arange(STEPS_PER_FRAME * sum(CONTEXT_FRAMES) + STEPS_PER_FRAME)[None, :]
    return torch.where((idx >= 0) & (idx < num_steps), idx, torch.full_like(idx, -1))


def gather_windows(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """features [T,K,D], indices [N,W] (-1: zeros) -> [N, W*K, D], step-major (the reference's reshape)."""
    if features.dim() != 3:
        raise ValueError(f"features must be [steps, taps, width]; got {tuple(features.shape)}")
    safe = indices.clamp(min=0).to(features.device)
    out = features[safe]  # [N,W,K,D]
    pad = (indices < 0).to(features.device)
    if bool(pad.any()):
        out = out.masked_fill(pad[:, :, None, None], 0)
    n, w, k, d = out.shape
    return out.reshape(n, w * k, d)  # [N,W,K,D] -> [N,W*K,D]


def latentsync_frame_audio(features: torch.Tensor, frames: Sequence[int], fps: Number) -> torch.Tensor:
    """LatentSync's per-frame audio tokens [N, 50, D] for absolute frame indices ``frames``."""
    return gather_windows(features, latentsync_indices(frames, fps, features.shape[0]))


def musetalk_frame_audio(features: torch.Tensor, frames: Sequence[int], fps: Number) -> torch.Tensor:
    """MuseTalk's per-frame audio tokens [N, 50, D] (before its positional table, see :func:`musetalk_audio`)."""
    return gather_windows(features, musetalk_indices(frames, fps, features.shape[0]))


def musetalk_audio(tokens: torch.Tensor) -> torch.Tensor:
    """MuseTalk's ``PositionalEncoding`` on tokens [N,S,D]: adds the sinusoidal table (sin even, cos odd)."""
    n, s, d = tokens.shape
    return tokens + positional_table(s, d, device=tokens.device).to(tokens.dtype)


def latentsync_frame_count(num_steps: int, fps: Number) -> int:
    """How many per-frame windows LatentSync's ``feature2chunks`` makes from ``num_steps`` features: frames
    0, 1, ... up to and including the first whose centre step lies beyond the features (the reference then trims
    the video to that count or loops it)."""
    step = Fraction(FEATURE_RATE) / Fraction(fps)
    i = 0
    while math.floor(i * step) <= num_steps:
        i += 1
    return i + 1
