"""Attention, GEGLU feed-forward and the per-frame spatial transformer of the LatentSync / MuseTalk UNet.

Key names follow the released checkpoints (diffusers' naming): ``to_q`` / ``to_k`` / ``to_v`` without bias,
``to_out.0`` with bias; the feed-forward is ``ff.net.0.proj`` (GEGLU: one linear to twice the hidden width, value
half times GELU(gate half)) and ``ff.net.2``. The spatial transformer (``attentions.N``) normalises and attends
within each frame: GroupNorm (eps 1e-6), 1x1-conv projection in, one block of self-attention, audio
cross-attention (``attn2``, skipped when no audio is given, as in the reference) and feed-forward, each pre-LayerNorm
and residual, 1x1-conv projection out, plus the block input.

Shape legend
  N  images (frames folded into the batch)   C  channels   h, w  latent size   L = h * w tokens per image
  S  audio tokens per image (50)             A  audio width (384)              Hd heads   d head width (C / Hd)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...core.layers import attention, merge_heads, split_heads


class Attention(nn.Module):
    """Multi-head attention from x [N,L,C] to a context [N,S,Cc] (x itself when no context is given)."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None, device=None, dtype=None,
                 operations=nn):
        super().__init__()
        self.heads = heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.to_k = operations.Linear(context_dim, dim, bias=False, device=device, dtype=dtype)
        self.to_v = operations.Linear(context_dim, dim, bias=False, device=device, dtype=dtype)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, device=device, dtype=dtype)])  # key to_out.0

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)  # [N,L,C] -> [N,Hd,L,d]
        k = split_heads(self.to_k(context), self.heads)  # [N,S,C] -> [N,Hd,S,d]
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out[0](merge_heads(attention(q, k, v)))  # [N,Hd,L,d] -> [N,L,C]


class GEGLU(nn.Module):
    """proj(x) split in (value, gate) halves: value * GELU(gate) (exact GELU). Key ``net.0.proj``."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim, 2 * hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4 x dim, then a linear back (``net.1`` is the reference's parameter-free dropout slot)."""

    def __init__(self, dim: int, mult: int = 4, device=None, dtype=None, operations=nn):
        super().__init__()
        hidden = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, hidden, device=device, dtype=dtype, operations=operations),
                                  nn.Identity(),
                                  operations.Linear(hidden, dim, device=device, dtype=dtype)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, audio cross-attention (when the UNet has audio layers) and GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, audio_dim: int, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = operations.LayerNorm(dim, **kw)
        self.attn1 = Attention(dim, heads, operations=operations, **kw)
        self.norm2 = self.attn2 = None
        if audio_dim > 0:
            self.norm2 = operations.LayerNorm(dim, **kw)
            self.attn2 = Attention(dim, heads, context_dim=audio_dim, operations=operations, **kw)
        self.ff = FeedForward(dim, operations=operations, **kw)
        self.norm3 = operations.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor, audio: Optional[torch.Tensor]) -> torch.Tensor:
        """x [N,L,C], audio [N,S,A] or None (no cross-attention, as the reference does without audio)."""
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None and audio is not None:
            x = x + self.attn2(self.norm2(x), audio)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Per-frame transformer on an image batch (the reference's ``Transformer3DModel`` / diffusers'
    ``Transformer2DModel`` with 1x1-conv projections)."""

    def __init__(self, channels: int, heads: int, audio_dim: int, groups: int, layers: int = 1, device=None,
                 dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = operations.GroupNorm(groups, channels, eps=1e-6, affine=True, **kw)
        self.proj_in = operations.Conv2d(channels, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, audio_dim, operations=operations, **kw) for _ in range(layers)])
        self.proj_out = operations.Conv2d(channels, channels, 1, **kw)

    def forward(self, x: torch.Tensor, audio: Optional[torch.Tensor]) -> torch.Tensor:
        """x [N,C,h,w], audio [N,S,A] or None -> [N,C,h,w]."""
        n, c, h, w = x.shape
        t = self.proj_in(self.norm(x))
        t = t.permute(0, 2, 3, 1).reshape(n, h * w, c)  # [N,C,h,w] -> [N,L,C]
        for block in self.transformer_blocks:
            t = block(t, audio)
        t = t.reshape(n, h, w, c).permute(0, 3, 1, 2)  # [N,L,C] -> [N,C,h,w]
        return self.proj_out(t.contiguous()) + x
