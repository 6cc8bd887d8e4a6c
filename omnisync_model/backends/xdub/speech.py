"""X-Dub's speech features from a waveform: Whisper large-v2 (last block before ln_post) next to wav2vec2-base-960h
(last hidden state), both at 50 Hz over the whole file (``audio_models.xdub_audio_features``).

:class:`XDubSpeech` holds the two encoders; the backend uses it when the audio arrives as a waveform. ``prepare`` /
``release`` let a host (ComfyUI's memory manager) move the encoders to the compute device and back.

Shape legend
  C audio channels   N samples   T 50 Hz steps   Ca feature width (Whisper width + wav2vec2 width: 2048)
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Union

import torch

from ...core.audio import prepare_audio
from ...sampling.options import AudioInput

logger = logging.getLogger(__name__)

__all__ = ["XDubSpeech", "FEATURE_RATE", "load_speech"]

FEATURE_RATE = 50.0  # both encoders emit one step per 20 ms at 16 kHz


class XDubSpeech:
    """The two speech encoders (transformers ``WhisperEncoder`` and ``Wav2Vec2Model``).

    prepare(): called before encoding and returns the device to compute on (default: the encoders' own);
    release(): called after (e.g. offload back to the CPU).
    """

    def __init__(self, whisper: torch.nn.Module, wav2vec2: Optional[torch.nn.Module],
                 prepare: Optional[Callable[[], Union[str, torch.device, None]]] = None,
                 release: Optional[Callable[[], None]] = None):
        self.whisper, self.wav2vec2 = whisper, wav2vec2
        self.prepare, self.release = prepare, release

    @property
    def width(self) -> int:
        if self.wav2vec2 is None:
            raise ValueError("X-Dub needs both speech encoders: select the wav2vec2-base-960h folder in OmniSync "
                             "Audio Model Loader (only Whisper was loaded)")
        return int(self.whisper.config.d_model) + int(self.wav2vec2.config.hidden_size)

    def __repr__(self) -> str:
        w2v = self.wav2vec2.config.hidden_size if self.wav2vec2 is not None else "none"
        return f"XDubSpeech(whisper width {self.whisper.config.d_model}, wav2vec2 {w2v})"

    @torch.no_grad()
    def features(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[N] / [C,N] at any rate -> features [T, Ca] float32 on the CPU (downmixed, resampled to 16 kHz)."""
        from ...audio_models import xdub_audio_features

        wave = prepare_audio(waveform, int(sample_rate))  # [N'] mono 16 kHz
        device = self.prepare() if self.prepare is not None else None
        try:
            if device is not None:
                wave = wave.to(device)
            feats = xdub_audio_features(self.whisper, self.wav2vec2, wave)  # [T, Ca]
        finally:
            if self.release is not None:
                self.release()
        return feats.float().cpu()

    def audio_input(self, audio: AudioInput) -> AudioInput:
        """A waveform AudioInput -> the same audio as X-Dub features (features pass through unchanged)."""
        if audio.features is not None or audio.waveform is None:
            return audio
        return AudioInput(features=self.features(audio.waveform, audio.sample_rate), feature_rate=FEATURE_RATE)


def load_speech(whisper_path: Any, wav2vec2_folder: Any, device: Union[str, torch.device] = "cpu",
                dtype: Optional[torch.dtype] = torch.float32) -> XDubSpeech:
    """The encoders from local files (strict key checks; transformers needed): our converted Whisper safetensors
    (``convert_openai_whisper``) and the wav2vec2 folder (config.json + model.safetensors; None: Whisper only, what
    LatentSync needs)."""
    from ...audio_models import load_wav2vec2, load_whisper_encoder

    whisper = load_whisper_encoder(whisper_path, device, dtype)
    wav2vec2 = load_wav2vec2(wav2vec2_folder, device, dtype) if wav2vec2_folder is not None else None
    logger.info("X-Dub speech encoders: %s + %s", whisper_path, wav2vec2_folder)
    return XDubSpeech(whisper, wav2vec2)
