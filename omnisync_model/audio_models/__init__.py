"""Shared speech encoders for the backends: Whisper (OpenAI checkpoints, run with transformers' WhisperEncoder)
and wav2vec2 (local Hugging Face folders). ``transformers`` is an optional dependency, imported on first use;
importing this package does not need it.

Every function takes mono 16 kHz audio: resample first with ``omnisync_model.core.audio.resample``.
"""

from .common import INSTALL_HINT, SAMPLE_RATE, require_transformers
from .features import latentsync_whisper_features, pad_steps, xdub_audio_features, xdub_whisper_features
from .wav2vec2 import convert_wav2vec2_bin, load_wav2vec2, normalise_wave, wav2vec2_features, wav2vec2_keys
from .whisper import STEP_RATE, WindowPlan, encode, layer_names, log_mel, mel_filters, plan_windows
from .whisper_weights import (build_whisper_encoder, convert_openai_whisper, hf_whisper_to_encoder_keys,
                              infer_whisper_dims, load_whisper_encoder, openai_to_transformers_keys,
                              whisper_config_from_dims)

__all__ = [
    "INSTALL_HINT", "SAMPLE_RATE", "STEP_RATE", "require_transformers",
    "whisper_config_from_dims", "openai_to_transformers_keys", "hf_whisper_to_encoder_keys", "infer_whisper_dims",
    "build_whisper_encoder", "convert_openai_whisper", "load_whisper_encoder",
    "mel_filters", "log_mel", "WindowPlan", "plan_windows", "layer_names", "encode",
    "load_wav2vec2", "convert_wav2vec2_bin", "wav2vec2_keys", "normalise_wave", "wav2vec2_features",
    "latentsync_whisper_features", "xdub_whisper_features", "xdub_audio_features", "pad_steps",
]
