"""The OmniSync family's built-in audio encoder (Whisper-style, learned, weights in the checkpoint) and the
adapter for external features (Whisper / wav2vec2 encoder outputs).

Shape legend
  B   batch      M   mel frames (100 Hz)      S   feature steps (50 Hz for AudioEncoder)
  D   width      De  external feature width   Dh  head width
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...core.audio import N_MELS, log_mel, normalize_log_mel
from ...core.layers import attention, merge_heads

__all__ = ["AudioEncoder", "FeatureAdapter", "EncoderLayer", "SelfAttention", "sinusoidal_positions"]


def _default_heads(dim: int) -> int:
    heads = max(2, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed sin / cos positional table [length, dim] (first half sin, second half cos; odd dim gets a zero)."""
    half = dim // 2
    inv = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]  # [length, dim // 2]
    table = torch.cat([angles.sin(), angles.cos(), torch.zeros(length, dim - 2 * half)], dim=1)
    return table.to(device=device, dtype=dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, device=None, dtype=None, operations=nn):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = operations.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.out = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads)  # [B,S,3D] -> [B,S,3,H,Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x [B,H,S,Dh]
        return self.out(merge_heads(attention(q, k, v)))  # [B,H,S,Dh] -> [B,S,D]


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.norm1 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.attn = SelfAttention(dim, heads, device=device, dtype=dtype, operations=operations)
        self.norm2 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.fc1 = operations.Linear(dim, 4 * dim, device=device, dtype=dtype)
        self.fc2 = operations.Linear(4 * dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class AudioEncoder(nn.Module):
    """Whisper-style encoder: log-mel [B, n_mels, M] at 100 Hz -> features [B, ceil(M / 2), dim] at 50 Hz.

    conv1d(n_mels -> dim, k3, pad 1) GELU -> conv1d(dim -> dim, k3, stride 2, pad 1) GELU -> + sinusoidal
    positions -> ``layers`` pre-norm transformer layers (global attention over the input) -> LayerNorm.
    Output step s is centred on mel frame 2 s, i.e. s / 50 s after the waveform start (see ENCODER_TIME_SHIFT).
    """

    def __init__(self, n_mels: int = N_MELS, dim: int = 64, layers: int = 1, heads: Optional[int] = None,
                 device=None, dtype=None, operations=nn):
        super().__init__()
        self.n_mels = n_mels
        self.dim = dim
        heads = heads or _default_heads(dim)
        self.conv1 = operations.Conv1d(n_mels, dim, 3, padding=1, device=device, dtype=dtype)
        self.conv2 = operations.Conv1d(dim, dim, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, device=device, dtype=dtype, operations=operations) for _ in range(layers))
        self.norm = operations.LayerNorm(dim, device=device, dtype=dtype)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: normalised log-mel [B, n_mels, M] -> [B, ceil(M / 2), dim]."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"AudioEncoder expects log-mel [B, {self.n_mels}, M], got {tuple(mel.shape)}")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, D, S] -> [B, S, D]
        x = x + sinusoidal_positions(x.shape[1], self.dim, device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def encode_waveform(self, wave16k: torch.Tensor) -> torch.Tensor:
        """16 kHz mono [B, N] or [N] -> [B, ceil((N // 160 + 1) / 2), dim]: normalize_log_mel(log_mel(.))."""
        weight = self.conv1.weight
        mel = normalize_log_mel(log_mel(wave16k.to(weight.device)))
        return self.forward(mel.to(weight.dtype))


class FeatureAdapter(nn.Module):
    """External features [B, S, De] (Whisper 1280, wav2vec2 768 / 1024 ...) -> [B, S, audio_dim], same rate.

    LayerNorm(De) -> Linear(De, audio_dim) -> GELU -> Linear(audio_dim, audio_dim).
    """

    def __init__(self, in_dim: int, audio_dim: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.in_dim = in_dim
        self.norm = operations.LayerNorm(in_dim, device=device, dtype=dtype)
        self.fc1 = operations.Linear(in_dim, audio_dim, device=device, dtype=dtype)
        self.fc2 = operations.Linear(audio_dim, audio_dim, device=device, dtype=dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"FeatureAdapter expects features [B, S, {self.in_dim}], got {tuple(features.shape)}")
        return self.fc2(F.gelu(self.fc1(self.norm(features))))
