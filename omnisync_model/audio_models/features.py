"""The exact audio features the LatentSync and X-Dub backends feed their networks, at 50 Hz over a whole file.

* LatentSync 1.5/1.6 (Whisper tiny): the input embedding plus every block output, all before ln_post, stacked
  [T, 5, 384] (``latentsync/whisper/whisper/model.py`` lines 157-168: ``embeddings`` collects ``x`` after the
  positional add and after each block, ``ln_post`` output is not kept; ``audio2feature.py`` lines 109-118
  transposes to [T, layers, D] and keeps (chunk frames) // 2 steps per 30 s chunk).
* X-Dub (Whisper large-v2 + wav2vec2-base-960h): the last Whisper block before ln_post [T, 1280]
  (``audio_processor.py`` line 63 takes ``feature_array[:, -1:]`` of the same embeddings stack) next to the
  wav2vec2 last hidden state [T', 768] (lines 219-223), concatenated on the channel axis
  (``pipelines/lip_sync.py`` line 679) after each stream is indexed separately with its index clamped to its own
  length (``audio_processor.py`` line 80). T' = T - 1 or T: :func:`xdub_audio_features` pads the shorter stream
  by repeating its last frame, which gives exactly the reference's values for every (clamped) index.
  ``resample_audio_feature(feat, 50, 50)`` in the reference is the identity.

Shape legend
  N   samples at 16 kHz     B   batch (optional leading axis)     T   50 Hz steps
  L   Whisper blocks        D   Whisper width                      Dv  wav2vec2 hidden size
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import SAMPLE_RATE
from .wav2vec2 import wav2vec2_features
from .whisper import encode

__all__ = ["latentsync_whisper_features", "xdub_whisper_features", "xdub_audio_features", "pad_steps"]


def latentsync_whisper_features(encoder, wave16k: torch.Tensor, chunking: str = "reference", *,
                                sample_rate: int = SAMPLE_RATE, **kwargs) -> torch.Tensor:
    """[T, L + 1, D] (Whisper tiny: [T, 5, 384]): embedding, then blocks 0..L-1, all before ln_post."""
    names = ["embedding"] + [f"block.{i}" for i in range(len(encoder.layers))]
    feats = encode(encoder, wave16k, names, chunking, sample_rate=sample_rate, **kwargs)
    return torch.stack([feats[name] for name in names], dim=-2)  # L + 1 x [.., T, D] -> [.., T, L + 1, D]


def xdub_whisper_features(encoder, wave16k: torch.Tensor, chunking: str = "reference", *,
                          sample_rate: int = SAMPLE_RATE, **kwargs) -> torch.Tensor:
    """[T, D] (large-v2: [T, 1280]): output of the last block, before ln_post."""
    return encode(encoder, wave16k, ["last_block"], chunking, sample_rate=sample_rate, **kwargs)["last_block"]


def pad_steps(feats: torch.Tensor, length: int) -> torch.Tensor:
    """Extend [.., T, D] to ``length`` steps by repeating the last step (index clamping, made explicit)."""
    extra = length - feats.shape[-2]
    if extra < 0:
        raise ValueError(f"cannot pad {feats.shape[-2]} steps down to {length}")
    if extra == 0:
        return feats
    return F.pad(feats.transpose(-1, -2), (0, extra), mode="replicate").transpose(-1, -2)  # pad along T


def xdub_audio_features(whisper_encoder, wav2vec2_model, wave16k: torch.Tensor, chunking: str = "reference", *,
                        sample_rate: int = SAMPLE_RATE, **kwargs) -> torch.Tensor:
    """X-Dub's audio conditioning at 50 Hz: [T, D + Dv] (large-v2 + base-960h: [T, 2048]), T = the longer
    stream; Whisper's last pre-ln block first, wav2vec2's last hidden state second."""
    whisper = xdub_whisper_features(whisper_encoder, wave16k, chunking, sample_rate=sample_rate, **kwargs)
    w2v = wav2vec2_features(wav2vec2_model, wave16k, sample_rate=sample_rate).to(whisper.device)
    length = max(whisper.shape[-2], w2v.shape[-2])
    return torch.cat([pad_steps(whisper, length), pad_steps(w2v, length)], dim=-1)  # [.., T, D + Dv]
