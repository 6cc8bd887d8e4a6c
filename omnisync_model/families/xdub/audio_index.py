"""Which audio feature steps each latent frame of an X-Dub clip sees, by absolute time (any frame rate).

X-Dub's audio features run at 50 steps per second (Whisper large-v2 encoder states and wav2vec2 states, 1280 + 768
wide, concatenated in that order). Each latent frame gets K = 8 consecutive steps (160 ms):
  * the clip's first latent frame encodes one video frame (causal video VAE): its K steps end where that frame ends;
  * every later latent frame encodes 4 video frames: its K steps start where its first video frame starts.
Indices outside the feature sequence are clamped to its first / last step (each stream by its own length).
At 25 fps this is exactly the reference's ``crop_overlap_audio_window`` (window size 0): for a clip starting at video
frame s, latent 0 sees steps [2s - 6, 2s + 2) and latent i > 0 sees [2v, 2v + 8) with v = s + 4 (i - 1) + 1.
At other rates the same times are used (8 steps of audio per latent regardless of fps, as the model was trained).

Shape legend
  T latent frames    K steps per latent frame    N feature steps    C feature width
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

AUDIO_RATE = 50.0  # feature steps per second (Whisper and wav2vec2 at 16 kHz)
TOKENS = 8


def audio_step(frame: int, fps: float, rate: float = AUDIO_RATE) -> int:
    """Index of the feature step where video frame ``frame`` starts (time frame / fps)."""
    return math.floor(frame * rate / fps + 1e-6)  # the epsilon keeps exact products (2.0 at 25 fps) from flooring down


def audio_window_indices(first_frames: Sequence[int], fps: float, n_steps: int, rate: float = AUDIO_RATE,
                         tokens: int = TOKENS) -> torch.Tensor:
    """[T, K] feature indices for the latent frames whose first video frames are ``first_frames`` (absolute
    indices; element 0 is the clip's single-frame first latent), for a feature sequence of ``n_steps`` steps."""
    if n_steps <= 0:
        raise ValueError("the audio feature sequence is empty")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    starts = []
    for j, frame in enumerate(first_frames):
        starts.append(audio_step(frame + 1, fps, rate) - tokens if j == 0 else audio_step(frame, fps, rate))
    idx = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(tokens)[None, :]  # [T, 1] + [1, K]
    return idx.clamp(0, n_steps - 1)


def audio_windows(features: torch.Tensor, first_frames: Sequence[int], fps: float, rate: float = AUDIO_RATE,
                  tokens: int = TOKENS) -> torch.Tensor:
    """features [N, C] -> [T, K, C] for the latent frames starting at ``first_frames``."""
    return features[audio_window_indices(first_frames, fps, features.shape[0], rate, tokens)]  # [T,K] gather


def xdub_audio_windows(whisper: torch.Tensor, wav2vec: torch.Tensor, first_frames: Sequence[int], fps: float,
                       rate: float = AUDIO_RATE, tokens: int = TOKENS) -> torch.Tensor:
    """X-Dub's audio input for one clip: [T, K, 1280 + 768], Whisper first, each stream clamped by its own length."""
    return torch.cat((audio_windows(whisper, first_frames, fps, rate, tokens),
                      audio_windows(wav2vec, first_frames, fps, rate, tokens)), dim=-1)
