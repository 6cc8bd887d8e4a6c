"""The OmniSync DiT (our own family) as a pipeline backend.

Condition: the source latent (channel- or token-concatenated inside the DiT) and K audio tokens per latent frame
from the built-in encoder, or from external Whisper / wav2vec2 features through the checkpoint's adapter.
Branches: "uncond" (the learned null audio) and "cond"; DS-CFG weighs the difference. The DiT already returns
the flow-matching velocity in the pipeline's convention, so no mapping is needed.

Shape legend
  B batch   C latent channels   T latent frames   h, w latent size   K audio tokens per latent frame   A audio width
  S external feature steps   De external feature width
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..core.audio import SAMPLE_RATE, align_features, audio_span_for_frames, frame_centre_times, prepare_audio
from ..core.codec import Codec, make_codec
from ..families.omnisync.model import OmniSyncModel
from ..sampling.frame_times import check_frame_times, window_centre_times, window_time_span
from ..sampling.backend import AudioCondition, Backend, CropRules, WindowInputs
from ..sampling.options import AudioInput, LipSyncOptions

__all__ = ["OmniSyncBackend", "OmniSyncAudio", "OmniSyncCondition", "check_features"]

MIN_STFT_SAMPLES = 400  # one STFT window at 16 kHz


def check_features(features: torch.Tensor) -> torch.Tensor:
    """External encoder features as [S, De]: finite, at least one step."""
    if features.dim() == 3 and features.shape[0] == 1:
        features = features[0]  # [1,S,De] -> [S,De]
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"audio features must be [steps, width] with steps > 0, got {list(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("audio features contain NaN or Inf values")
    return features


class OmniSyncAudio(AudioCondition):
    """Per-window audio tokens [1,T,K,A], computed from the waveform (or external features) by absolute time."""

    def __init__(self, model: OmniSyncModel, audio: AudioInput, fps: float, margin_s: float):
        self.model, self.fps, self.margin = model, float(fps), margin_s
        cfg = model.config
        self.k, self.rate = cfg.audio_tokens, cfg.audio_rate
        self.feature_rate = audio.feature_rate
        self.times = check_frame_times(audio.frame_times) if audio.frame_times is not None else None  # [F] s
        self.adapted = None
        self.wave = None
        if audio.features is not None:
            with torch.no_grad():
                self.adapted = model.adapt_features(check_features(audio.features)[None])  # [1,S,A]
        else:
            if audio.waveform is None:
                raise ValueError("audio: give a waveform or external features")
            self.wave = prepare_audio(audio.waveform, audio.sample_rate)

    @torch.no_grad()
    def window(self, start: int, n_frames: int, temporal_factor: int) -> torch.Tensor:
        """Audio tokens at each latent frame's real time: i / fps, or the frame's own time (``frame_times``)."""
        if self.times is None:
            centres = frame_centre_times(n_frames, self.fps, temporal_factor) + start / self.fps  # [T] s, absolute
        else:
            centres = window_centre_times(self.times, start, n_frames, temporal_factor, self.fps)  # [T] s
        if self.adapted is not None:
            return align_features(self.adapted, self.feature_rate, centres, self.k, self.rate)
        s0, s1, offset = self._span(start, n_frames)
        piece = self.wave[s0:s1]
        if piece.numel() < MIN_STFT_SAMPLES:  # shorter than one STFT window: the audio has ended, use silence
            piece = torch.zeros(MIN_STFT_SAMPLES)
        return self.model.audio_tokens(piece[None], offset, centres)  # [1,T,K,A]

    def _span(self, start: int, n_frames: int) -> tuple[int, int, float]:
        """Waveform slice (first sample, end sample, time of the first sample) of the window plus the margin."""
        if self.times is None:
            return audio_span_for_frames(start, start + n_frames, self.fps, SAMPLE_RATE, self.margin)
        t0, t1 = window_time_span(self.times, start, n_frames, self.fps)
        s0 = max(0, math.floor((t0 - self.margin) * SAMPLE_RATE + 1e-9))
        s1 = max(s0, math.ceil((t1 + self.margin) * SAMPLE_RATE - 1e-9))
        return s0, s1, s0 / SAMPLE_RATE


@dataclass(frozen=True)
class OmniSyncCondition:
    source: torch.Tensor  # [1,C,T,h,w]
    tokens: torch.Tensor  # [1,T,K,A]


class OmniSyncBackend(Backend):
    """OmniSyncModel behind the backend interface."""

    name = "omnisync"
    branches = ("uncond", "cond")

    def __init__(self, model: OmniSyncModel):
        self.model = model
        self.module = model
        self.patch_size = model.config.patch_size
        res = model.config.extra.get("resolution")
        self.crop_rules = CropRules(resolution=(int(res), int(res)) if res else None)

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def default_codec(self) -> Optional[Codec]:
        try:
            return make_codec(self.config.codec)
        except ValueError:
            return None

    def prepare_codec(self, codec: Optional[Codec]) -> Codec:
        if codec is None:
            codec = self.default_codec()
            if codec is None:
                raise ValueError(f"this checkpoint works in the latent space of '{self.config.codec}'; connect that "
                                 f"VAE to the vae input")
        want = self.config.in_channels
        if codec.latent_channels != want:
            hint = " (this is a pixel-codec model: leave the vae input empty or use OmniSyncPixelVAE)" \
                if self.config.codec.startswith("pixel") else ""
            raise ValueError(f"the VAE makes {codec.latent_channels}-channel latents but the model expects {want} "
                             f"channels (trained with codec '{self.config.codec}'){hint}")
        return codec

    def inference_memory(self, tokens: int) -> int:
        """Rough bytes of activations for ``tokens`` latent tokens with DS-CFG (two branches in one batch)."""
        cfg = self.config
        per_token = cfg.dim * 4 * (12 + 2 * cfg.ffn_mult)  # float32 activations of one block, with the FFN
        return int(2 * tokens * per_token * 2)

    def check_latent(self, latent: torch.Tensor) -> None:
        cfg = self.config
        if latent.shape[1] != cfg.in_channels:
            raise ValueError(f"the latent has {latent.shape[1]} channels, the model expects {cfg.in_channels}; "
                             f"encode with the VAE/codec the model was trained with ('{cfg.codec}')")

    def audio_condition(self, audio: AudioInput, fps: float, options: LipSyncOptions) -> OmniSyncAudio:
        return OmniSyncAudio(self.model, audio, fps, options.audio_margin_s)

    def condition(self, window: WindowInputs) -> OmniSyncCondition:
        return OmniSyncCondition(window.source, window.audio.to(window.source.device))

    def denoise(self, x: torch.Tensor, sigma: float, cond: OmniSyncCondition, branches: Sequence[str]) -> torch.Tensor:
        n, b = len(branches), x.shape[0]
        unknown = sorted(set(branches) - set(self.branches))
        if unknown:
            raise ValueError(f"unknown guidance branch(es) {unknown}; this backend has {self.branches}")
        x_n = x if n == 1 else torch.cat([x] * n, dim=0)  # [n*B,C,T,h,w], branch-major
        src = cond.source if n == 1 else torch.cat([cond.source] * n, dim=0)
        audio = cond.tokens if n == 1 else torch.cat([cond.tokens] * n, dim=0)  # [n*B,T,K,A]
        drop = torch.tensor([br == "uncond" for br in branches for _ in range(b)], device=x.device)  # [n*B]
        sig = torch.full((n * b,), float(sigma), device=x.device, dtype=torch.float32)  # [n*B]
        return self.model(x_n, src, sig, audio, drop_audio=drop if bool(drop.any()) else None)
