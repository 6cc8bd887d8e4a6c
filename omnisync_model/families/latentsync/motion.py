"""AnimateDiff-style motion module of LatentSync: temporal self-attention across the window's frames.

Each motion module (key ``motion_modules.N.temporal_transformer``) is a residual temporal transformer: GroupNorm
(32 groups, eps 1e-6) per frame, a linear projection in, blocks of [pre-LayerNorm temporal self-attention] x 2 and a
pre-LayerNorm GEGLU feed-forward, a linear projection out (zero-initialised in training), plus the module input.
Attention runs along frames, independently at every latent pixel. Before each attention the block adds a fixed
sinusoidal table of frame positions to its (normalised) input, queries and keys alike: ``pe[0, f, 2i] = sin(f
w_i)``, ``pe[0, f, 2i + 1] = cos(f w_i)``, ``w_i = 10000^(-2i / C)``, 24 rows. The table is a persistent buffer
(``attention_blocks.K.pos_encoder.pe``, in the released state dict) and bounds the window to 24 frames.

Shape legend
  B  videos   F  frames (<= 24)   N = B * F images   C  channels   h, w  latent size   P = B * h * w pixels
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import Attention, FeedForward


def positional_table(frames: int, dim: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The fixed frame-position table [1, frames, dim]: sin at even channels, cos at odd ones."""
    position = torch.arange(frames, dtype=torch.float32, device=device)[:, None]  # [F,1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, frames, dim, dtype=torch.float32, device=device)
    table[0, :, 0::2] = torch.sin(position * freq)
    table[0, :, 1::2] = torch.cos(position * freq)
    return table.to(dtype)


class PositionalEncoding(nn.Module):
    """Adds the first F rows of the fixed table to x [P,F,C] (buffer ``pe`` [1,max_frames,C])."""

    def __init__(self, dim: int, max_frames: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("pe", positional_table(max_frames, dim, dtype or torch.float32, device))

    def reset(self) -> None:
        """Refill the table (after loading a file that omits it, or building on the meta device)."""
        with torch.no_grad():
            self.pe.copy_(positional_table(self.pe.shape[1], self.pe.shape[2], self.pe.dtype, self.pe.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"a window of {frames} frames is longer than the motion modules' positional table "
                             f"({self.pe.shape[1]} frames); use windows of at most {self.pe.shape[1]} frames")
        return x + self.pe[:, :frames].to(device=x.device, dtype=x.dtype)


class TemporalAttention(Attention):
    """Self-attention along frames with the positional table added first (``attention_blocks.K``)."""

    def __init__(self, dim: int, heads: int, max_frames: int, device=None, dtype=None, operations=nn):
        super().__init__(dim, heads, device=device, dtype=dtype, operations=operations)
        self.pos_encoder = PositionalEncoding(dim, max_frames, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pos_encoder(x))


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, attention_blocks: int, max_frames: int, device=None, dtype=None,
                 operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, max_frames, operations=operations, **kw) for _ in range(attention_blocks)])
        self.norms = nn.ModuleList([operations.LayerNorm(dim, **kw) for _ in range(attention_blocks)])
        self.ff = FeedForward(dim, operations=operations, **kw)
        self.ff_norm = operations.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [P,F,C] -> [P,F,C]."""
        for attn, norm in zip(self.attention_blocks, self.norms, strict=True):
            x = x + attn(norm(x))
        return x + self.ff(self.ff_norm(x))


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, attention_blocks: int, layers: int, max_frames: int,
                 groups: int, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = operations.GroupNorm(groups, channels, eps=1e-6, affine=True, **kw)
        self.proj_in = operations.Linear(channels, channels, **kw)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, attention_blocks, max_frames, operations=operations, **kw)
             for _ in range(layers)])
        self.proj_out = operations.Linear(channels, channels, **kw)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x [N,C,h,w] (N = B * F, b-major) -> [N,C,h,w]."""
        n, c, h, w = x.shape
        b = n // frames
        t = self.norm(x)  # per-frame GroupNorm
        t = t.view(b, frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, frames, c)  # -> [P,F,C]
        t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t)
        t = self.proj_out(t)
        t = t.view(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(n, c, h, w)  # [P,F,C] -> [N,C,h,w]
        return t + x


class MotionModule(nn.Module):
    """The reference's ``VanillaTemporalModule``: a wrapper whose only child is ``temporal_transformer``."""

    def __init__(self, channels: int, heads: int, attention_blocks: int, layers: int, max_frames: int, groups: int,
                 device=None, dtype=None, operations=nn):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, attention_blocks, layers, max_frames,
                                                        groups, device=device, dtype=dtype, operations=operations)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
