"""AUDIO, AUDIO_ENCODER_OUTPUT and OMNISYNC_AUDIO: ComfyUI audio to the pipeline's audio input and back.

Shape legend
  B batch of clips   C channels   N samples   S feature steps   D feature width
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from ...omnisync_model.core.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_rate, check_waveform
from ...omnisync_model.media.lipsync_file import fit_audio
from ...omnisync_model.sampling.backend import AudioCondition, Backend
from ...omnisync_model.sampling.options import AudioInput, LipSyncOptions
from .frames import check_fps

log = logging.getLogger(__name__)

ENCODER_SAMPLE_RATE = 16000  # core audio encoders (Whisper, wav2vec2) resample to 16 kHz
ENCODER_FEATURE_RATE = 50.0  # both emit one feature step per 20 ms


def audio_from_comfy(audio: Mapping[str, Any], name: str = "audio") -> tuple[torch.Tensor, int]:
    """AUDIO dict -> (waveform float32 [C,N], sample_rate). A batch of several clips uses the first (warning)."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{name} must be an AUDIO dict with 'waveform' and 'sample_rate'")
    wave = audio["waveform"]
    if not isinstance(wave, torch.Tensor):
        raise ValueError(f"{name} waveform must be a tensor, got {type(wave).__name__}")
    if wave.dim() == 1:
        wave = wave[None]  # [N] -> [1,N]
    elif wave.dim() == 3:
        if wave.shape[0] > 1:
            log.warning("%s holds a batch of %d clips; using the first", name, wave.shape[0])
        wave = wave[0]  # [B,C,N] -> [C,N]
    if wave.dim() != 2 or wave.shape[-1] == 0:
        raise ValueError(f"{name} waveform must be [batch, channels, samples] with samples > 0, "
                         f"got {list(audio['waveform'].shape)}")
    rate = check_rate(audio["sample_rate"], f"{name} sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    check_waveform(wave, f"{name} waveform")
    return wave.float(), rate


def audio_to_comfy(wave: torch.Tensor, sample_rate: int) -> dict:
    """[C,N] -> AUDIO dict {"waveform": [1,C,N], "sample_rate"}."""
    return {"waveform": wave[None].contiguous(), "sample_rate": int(sample_rate)}


def fit_audio_to_video(audio: Mapping[str, Any], n_frames: int, fps: float) -> dict:
    """AUDIO trimmed or zero-padded to exactly round(n_frames / fps * sample_rate) samples (channels kept)."""
    wave, rate = audio_from_comfy(audio)
    return audio_to_comfy(fit_audio(wave, rate, n_frames, check_fps(fps)), rate)


def silent_audio(n_frames: int, fps: float, sample_rate: int = ENCODER_SAMPLE_RATE) -> dict:
    """A mono AUDIO of silence as long as the video."""
    n = int(round(n_frames / check_fps(fps) * sample_rate))
    return audio_to_comfy(torch.zeros(1, n), sample_rate)


def features_from_encoder_output(output: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
    """Core AUDIO_ENCODER_OUTPUT -> (features [S,D], rate in Hz), trimmed to the real audio.

    Whisper pads every clip to 30 s: steps past ``audio_samples`` (16 kHz samples of the real audio) are dropped.
    Both Whisper and wav2vec2 emit a step per 20 ms (50 Hz).
    """
    if not isinstance(output, Mapping) or "encoded_audio" not in output:
        raise ValueError("audio_features must be an AUDIO_ENCODER_OUTPUT (from the core AudioEncoderEncode node)")
    feats = output["encoded_audio"]
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or feats.shape[1] == 0:
        shape = list(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f"encoded_audio must be [batch, steps, width], got {shape}")
    if feats.shape[0] > 1:
        log.warning("audio_features hold a batch of %d clips; using the first", feats.shape[0])
    feats = feats[0]  # [B,S,D] -> [S,D]
    samples = output.get("audio_samples")
    if samples is not None:
        keep = max(1, math.ceil(int(samples) / ENCODER_SAMPLE_RATE * ENCODER_FEATURE_RATE))
        feats = feats[:keep]  # drop Whisper's padding to 30 s
    return feats.float(), ENCODER_FEATURE_RATE


NO_AUDIO = "connect an audio input (AUDIO) or audio_features (AUDIO_ENCODER_OUTPUT)"


def audio_input(audio: Optional[Mapping[str, Any]], features: Optional[Mapping[str, Any]]) -> AudioInput:
    """The pipeline's audio from an AUDIO and/or an AUDIO_ENCODER_OUTPUT (the features win when both are given)."""
    if features is not None:
        return _features_input(features)
    if audio is None:
        raise ValueError(NO_AUDIO)
    wave, rate = audio_from_comfy(audio)
    return AudioInput(waveform=wave, sample_rate=rate)


def speech_inputs(audio: Optional[Mapping[str, Any]], features: Optional[Mapping[str, Any]], n_frames: int,
                  fps: float) -> tuple[AudioInput, dict]:
    """(the pipeline's audio, the AUDIO output fitted to n_frames / fps), reading and checking the AUDIO once.

    The features win when both are given; with features only, the AUDIO output is silence (warning)."""
    if audio is None:
        if features is None:
            raise ValueError(NO_AUDIO)
        log.warning("OmniSync: only audio_features connected; the audio output is silence")
        return _features_input(features), silent_audio(n_frames, fps)
    wave, rate = audio_from_comfy(audio)
    fitted = audio_to_comfy(fit_audio(wave, rate, n_frames, check_fps(fps)), rate)
    source = _features_input(features) if features is not None else AudioInput(waveform=wave, sample_rate=rate)
    return source, fitted


def _features_input(features: Mapping[str, Any]) -> AudioInput:
    feats, rate = features_from_encoder_output(features)
    return AudioInput(features=feats, feature_rate=rate)


@dataclass(frozen=True)
class EncodedAudio:
    """OMNISYNC_AUDIO: the run's speech (waveform or encoder features, checked) for a video of ``n_frames`` at
    ``fps``, made ready by the model's backend once. :meth:`window` gives the conditioning of any window by absolute
    time, exactly as the one-node path computes it for that window."""

    audio: AudioInput
    fps: float
    n_frames: int
    condition: AudioCondition

    def window(self, start: int, n_frames: int, temporal_factor: int) -> Any:
        """Conditioning for video frames [start, start + n_frames) (n_frames as the codec sees them)."""
        return self.condition.window(start, n_frames, temporal_factor)


def encode_audio(backend: Backend, audio: AudioInput, fps: float, n_frames: int,
                 options: LipSyncOptions = LipSyncOptions()) -> EncodedAudio:
    """Make the speech ready for ``n_frames`` video frames at ``fps`` (the model's encoder or feature adapter);
    refuses features the model cannot take before any sampling."""
    fps = check_fps(fps)
    if int(n_frames) < 1:
        raise ValueError(f"frame_count must be >= 1, got {n_frames}")
    return EncodedAudio(audio, fps, int(n_frames), backend.audio_condition(audio, fps, options))
