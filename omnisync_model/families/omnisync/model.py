"""OmniSyncModel: the DiT together with its audio encoder and optional external-feature adapter.

Everything a checkpoint holds lives in this one module, so a checkpoint is one state dict.

Shape legend
  B batch   C latent channels   T latent frames   H, W latent size   N samples at 16 kHz
  S audio feature steps (50 Hz for the built-in encoder; the source rate for external features)
  K audio tokens per latent frame   A audio width   De external feature width
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...core.audio import ENCODER_RATE, ENCODER_TIME_SHIFT, align_features
from .audio_encoder import AudioEncoder, FeatureAdapter
from .config import SIGMA_MIN, OmniSyncConfig
from .dit import OmniSyncDiT


class OmniSyncModel(nn.Module):
    def __init__(self, config: OmniSyncConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype, operations=operations)
        self.dit = OmniSyncDiT(config, **kw)
        self.audio_encoder = AudioEncoder(n_mels=config.n_mels, dim=config.audio_dim, layers=config.audio_layers, **kw)
        self.feature_adapter = (
            FeatureAdapter(config.external_audio_dim, config.audio_dim, **kw) if config.external_audio_dim > 0 else None
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.patch_embed.weight.device

    def encode_audio(self, wave16k: torch.Tensor) -> torch.Tensor:
        """16 kHz mono waveform [B,N] -> features [B,S,A] at 50 Hz."""
        return self.audio_encoder.encode_waveform(wave16k.to(self.device))

    def audio_tokens(self, wave16k: torch.Tensor, start_s: float, centre_times: torch.Tensor) -> torch.Tensor:
        """Per-frame audio tokens [B,T,K,A] from a waveform [B,N] that starts at ``start_s`` seconds.

        centre_times [T] are absolute seconds; each frame gets K tokens centred on its time (zero past the ends).
        """
        feats = self.encode_audio(wave16k)  # [B,S,A] at 50 Hz
        return align_features(feats, ENCODER_RATE, centre_times, self.config.audio_tokens, self.config.audio_rate,
                              time_offset=start_s + ENCODER_TIME_SHIFT)

    def adapt_features(self, features: torch.Tensor) -> torch.Tensor:
        """External encoder features [B,S,De] (Whisper, wav2vec2) -> [B,S,A] at their own rate."""
        if self.feature_adapter is None:
            raise ValueError("this checkpoint has no adapter for external audio features (external_audio_dim = 0); "
                             "use the built-in audio encoder instead")
        want = self.config.external_audio_dim
        if features.shape[-1] != want:
            raise ValueError(f"external audio features have width {features.shape[-1]}, this checkpoint expects {want}")
        return self.feature_adapter(features.to(self.device, self.dtype))

    def forward(self, x: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, audio: Optional[torch.Tensor] = None,
                drop_audio: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Flow-matching velocity [B,C,T,H,W] for noisy x and source latents [B,C,T,H,W]; audio [B,T,K,A]."""
        out = self.dit(x, source, sigma, audio, drop_audio=drop_audio, text=text)
        if self.config.prediction == "velocity":
            return out
        x0_hat = source + out  # source-anchored x0 prediction
        s = sigma.to(x.device, torch.float32).reshape(-1, 1, 1, 1, 1).clamp(min=SIGMA_MIN)  # [B] -> [B,1,1,1,1]
        return ((x.float() - x0_hat.float()) / s).to(x.dtype)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
