"""X-Dub's audio projection: per latent frame, K audio feature steps (Whisper 1280 + wav2vec2 768 = 2048 wide)
-> a linear map to 1536 -> N layers of (pre-norm self-attention over the K steps with a sinusoidal position table
added to the normed input, pre-norm GEGLU feed-forward) -> a linear map to the DiT width.

Names follow the released checkpoint, which was built with diffusers' ``Attention`` (``to_q/to_k/to_v`` without
bias, ``to_out.0``), ``FeedForward`` with GEGLU (``ff.net.0.proj`` of width 2 x 4 x hidden, ``ff.net.2``) and
``SinusoidalPositionalEmbedding`` (its table ``pos_embed.pe`` [1, 100, hidden] is a stored buffer). LayerNorms use
PyTorch's default eps 1e-5.

Shape legend
  B batch    F latent frames    K audio steps per frame    C input features    E hidden width    D DiT width
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.layers import attention, merge_heads, split_heads


def position_table(rows: int, width: int) -> torch.Tensor:
    """[1, rows, width]: sin at even channels and cos at odd channels of ``pos * 10000^(-2i / width)``."""
    pos = torch.arange(rows, dtype=torch.float32)[:, None]  # [rows, 1]
    freqs = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))  # [width/2]
    table = torch.zeros(1, rows, width)
    table[0, :, 0::2] = torch.sin(pos * freqs)
    table[0, :, 1::2] = torch.cos(pos * freqs)
    return table


class PositionTable(nn.Module):
    """Holds the stored buffer ``pe`` [1, rows, E]; adds its first K rows to x [N, K, E]."""

    def __init__(self, rows: int, width: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("pe", position_table(rows, width).to(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(dtype=x.dtype, device=x.device)


class StepAttention(nn.Module):
    """Multi-head self-attention over the K steps: bias-free q/k/v, biased output (``to_out.0``)."""

    def __init__(self, width: int, heads: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.heads = heads
        self.to_q = operations.Linear(width, width, bias=False, device=device, dtype=dtype)
        self.to_k = operations.Linear(width, width, bias=False, device=device, dtype=dtype)
        self.to_v = operations.Linear(width, width, bias=False, device=device, dtype=dtype)
        self.to_out = nn.ModuleList([operations.Linear(width, width, device=device, dtype=dtype)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.to_q, self.to_k, self.to_v))  # [N,Hd,K,e]
        return self.to_out[0](merge_heads(attention(q, k, v)))  # [N,Hd,K,e] -> [N,K,E]


class Geglu(nn.Module):
    """``proj`` to 2 x inner, then value * gelu(gate) (exact GELU)."""

    def __init__(self, width: int, inner: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.proj = operations.Linear(width, 2 * inner, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GegluFeedForward(nn.Module):
    """``net`` = [GEGLU, (no-op slot), Linear]: the indices match the checkpoint's ``ff.net.0`` and ``ff.net.2``."""

    def __init__(self, width: int, device=None, dtype=None, operations=nn):
        super().__init__()
        inner = 4 * width
        self.net = nn.ModuleList([Geglu(width, inner, device, dtype, operations), nn.Identity(),
                                  operations.Linear(inner, width, device=device, dtype=dtype)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class AudioProjLayer(nn.Module):
    def __init__(self, width: int, heads: int, rows: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.norm1 = operations.LayerNorm(width, device=device, dtype=dtype)
        self.attn = StepAttention(width, heads, device, dtype, operations)
        self.norm2 = operations.LayerNorm(width, device=device, dtype=dtype)
        self.ff = GegluFeedForward(width, device, dtype, operations)
        self.pos_embed = PositionTable(rows, width, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, K, E] -> [N, K, E] (the position table goes into the attention input only)."""
        x = x + self.attn(self.pos_embed(self.norm1(x)))
        return x + self.ff(self.norm2(x))


class AudioProjection(nn.Module):
    """[B, F, K, C] audio windows -> [B, F, K, D] audio tokens for the blocks' audio cross-attention."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int, heads: int, rows: int, device=None,
                 dtype=None, operations=nn):
        super().__init__()
        self.proj_in = operations.Linear(in_dim, hidden, device=device, dtype=dtype)
        self.layers = nn.ModuleList([AudioProjLayer(hidden, heads, rows, device, dtype, operations)
                                     for _ in range(layers)])
        self.proj_out = operations.Linear(hidden, out_dim, device=device, dtype=dtype)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, f, k, _ = feats.shape
        x = self.proj_in(feats).reshape(b * f, k, -1)  # [B,F,K,E] -> [B*F,K,E]: each frame's steps attend alone
        for layer in self.layers:
            x = layer(x)
        return self.proj_out(x).reshape(b, f, k, -1)  # [B*F,K,D] -> [B,F,K,D]
