"""Shared checks of the speech-encoder package: the optional ``transformers`` import and 16 kHz waveform checks.
(Released pickles are converted by ``omnisync_model.convert``; strict key checks are ``core.checkpoint``'s.)

Shape legend
  N   audio samples at 16 kHz        B   batch (independent files of equal length)
"""

from __future__ import annotations

from types import ModuleType

import torch

from ..core.audio import all_finite
from ..core.optional import install_hint, require

SAMPLE_RATE = 16000  # both Whisper and wav2vec2 take 16 kHz mono
INSTALL_HINT = install_hint("transformers")


def require_transformers() -> ModuleType:
    return require("transformers", "the Whisper / wav2vec2 speech encoders (LatentSync and X-Dub backends)")

def check_wave16k(wave: torch.Tensor, sample_rate: int, min_samples: int, name: str = "wave16k") -> torch.Tensor:
    """A float32 [B, N] view of a mono 16 kHz waveform [N] or [B, N]; ValueError naming ``name`` otherwise.

    Resampling is not done here: callers resample with ``omnisync_model.core.audio.resample`` first.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"{name}: the speech encoders take 16000 Hz audio, got sample_rate={sample_rate!r}; "
                         "resample first (omnisync_model.core.audio.resample); this module never resamples")
    if not isinstance(wave, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(wave).__name__}")
    if wave.dim() not in (1, 2):
        raise ValueError(f"{name} must be mono [N] or a batch [B, N] of mono files; got shape {tuple(wave.shape)} "
                         "(downmix channels first)")
    if wave.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(wave.shape)}): the audio has no samples")
    if not wave.is_floating_point():
        raise ValueError(f"{name} must be floating point (-1..1), got dtype {wave.dtype}")
    if wave.shape[-1] < min_samples:
        raise ValueError(f"{name} has {wave.shape[-1]} samples; at least {min_samples} "
                         f"({1000 * min_samples / SAMPLE_RATE:g} ms at 16 kHz) are needed")
    if not all_finite(wave):
        raise ValueError(f"{name} contains NaN or Inf samples")
    wave = wave.to(torch.float32)
    return wave.unsqueeze(0) if wave.dim() == 1 else wave  # [N] -> [1, N]
