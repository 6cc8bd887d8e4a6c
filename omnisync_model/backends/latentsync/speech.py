"""LatentSync's speech features from a waveform: the Whisper-tiny encoder (embedding + 4 block outputs before
ln_post, [S, 5, 384] at 50 Hz over the whole file), and the backend the registry hands out, which takes its encoder
from the host the way the X-Dub backend does (``with_speech``: ComfyUI's audio-model loader, the CLI's
``--audio-models``).

Chunking: "overlap" (default) runs 30 s encoder windows that overlap and crossfade, so the features do not jump every
30 s; "reference" is LatentSync's consecutive 30 s chunks (its features exactly, glitch included).

Shape legend
  N samples at 16 kHz   S 50 Hz feature steps   K taps (5)   A Whisper width (384)
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Optional

import torch

from ...core.checkpoint import CheckpointError
from ...families.latentsync.audio_index import TAPS
from .backend import LatentSyncBackend

logger = logging.getLogger(__name__)

__all__ = ["CHUNKINGS", "LatentSyncWhisperBackend", "check_whisper", "whisper_feature_fn"]

CHUNKINGS = ("overlap", "reference")  # the first is the default: no feature jump every 30 s
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def check_whisper(encoder, width: int, source: str = "Whisper encoder") -> None:
    """LatentSync takes the embedding and 4 block outputs of a Whisper of width ``width`` (tiny: 384)."""
    d, layers = int(encoder.config.d_model), len(encoder.layers)
    if d != width or layers + 1 != TAPS:
        raise CheckpointError(f"{source} has width {d} and {layers} blocks; LatentSync needs Whisper tiny "
                              f"(width {width}, {TAPS - 1} blocks: whisper/tiny.pt)")


def whisper_feature_fn(encoder, chunking: str = "overlap", prepare: Optional[Callable[[], Any]] = None,
                       release: Optional[Callable[[], None]] = None) -> FeatureFn:
    """mono 16 kHz wave [N] -> LatentSync's Whisper-tiny features [S,5,A] (float32, CPU) over the whole file.

    prepare() (optional) runs first and returns the device to encode on (a host's memory manager); release() after.
    """
    from ...audio_models import latentsync_whisper_features

    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")

    @torch.no_grad()
    def features(wave16k: torch.Tensor) -> torch.Tensor:
        device = prepare() if prepare is not None else None
        try:
            wave = wave16k.to(device) if device is not None else wave16k
            return latentsync_whisper_features(encoder, wave, chunking).float().cpu()
        finally:
            if release is not None:
                release()

    return features


class LatentSyncWhisperBackend(LatentSyncBackend):
    """:class:`LatentSyncBackend` that takes its Whisper-tiny encoder from the host: ``with_speech(speech)`` with
    any object holding ``whisper`` (a transformers WhisperEncoder) and optionally ``prepare`` / ``release``
    (``backends.xdub.speech.XDubSpeech`` is one: its wav2vec2 is not used)."""

    chunking: str = CHUNKINGS[0]

    def with_speech(self, speech: Any, chunking: Optional[str] = None) -> "LatentSyncWhisperBackend":
        """A shallow copy (same weights) that encodes waveforms with ``speech.whisper``; None removes it. The
        encoder's width and depth are checked first (Whisper tiny: 384 wide, 4 blocks)."""
        out = copy.copy(self)
        out.chunking = chunking or self.chunking
        if speech is None:
            out.encode = None
            return out
        whisper = getattr(speech, "whisper", speech)
        check_whisper(whisper, self.config.audio_dim, "the connected Whisper encoder")
        out.encode = whisper_feature_fn(whisper, out.chunking, getattr(speech, "prepare", None),
                                        getattr(speech, "release", None))
        return out
