"""Building blocks shared by the DiT and the audio encoder.

Every layer takes ``device``, ``dtype`` and ``operations`` (default ``torch.nn``) so that ComfyUI can pass
``comfy.ops`` classes and offload weights. All attention goes through :func:`attention` (PyTorch SDPA).

Shape legend
  B  batch            L  sequence length (query)     S  sequence length (keys)
  D  model width      Hd heads                       d  head width (D // Hd)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The one attention function of the package: q [B,Hd,L,d], k/v [B,Hd,S,d] -> [B,Hd,L,d]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def rms_norm(operations, dim: int, device=None, dtype=None) -> nn.Module:
    """RMSNorm from ``operations`` when it has one (comfy.ops does), else torch's."""
    cls = getattr(operations, "RMSNorm", nn.RMSNorm)
    return cls(dim, eps=1e-6, elementwise_affine=True, device=device, dtype=dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B,L,D] -> [B,Hd,L,d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)  # [B,L,Hd,d] -> [B,Hd,L,d]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B,Hd,L,d] -> [B,L,D]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)  # [B,L,Hd,d] -> [B,L,D]


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """3D rotary angles.

    positions: [L, 3] (t, y, x) integer grid positions. Each axis gets a third of the head width.
    Returns angles [L, head_dim // 2] (float32), axis-major: t frequencies, then y, then x.
    """
    third = head_dim // 3
    inv = theta ** (-torch.arange(0, third, 2, dtype=torch.float64, device=positions.device) / third)  # [third/2]
    parts = [positions[:, i : i + 1].double() * inv[None, :] for i in range(3)]  # 3 x [L, third/2]
    return torch.cat(parts, dim=1).float()  # [L, head_dim/2]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B,Hd,L,d] by angles [L,d/2] (or [B,1,L,d/2])."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B,Hd,L,d] -> [B,Hd,L,d/2,2]
    cos, sin = angles.cos(), angles.sin()
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # [B,Hd,L,d/2,2]
    return out.flatten(-2).to(x.dtype)  # -> [B,Hd,L,d]


def grid_positions(t: int, h: int, w: int, device=None) -> torch.Tensor:
    """Integer (t, y, x) positions of a [t, h, w] token grid in row-major order: [t*h*w, 3]."""
    tt, yy, xx = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return torch.stack((tt, yy, xx), dim=-1).reshape(-1, 3)  # [t,h,w,3] -> [t*h*w, 3]


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK RMS-norm and rotary positions; optional extra key/value tokens."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True, device=None, dtype=None, operations=nn):
        super().__init__()
        self.heads = heads
        self.qkv = operations.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.out = operations.Linear(dim, dim, device=device, dtype=dtype)
        head_dim = dim // heads
        self.q_norm = rms_norm(operations, head_dim, device, dtype) if qk_norm else nn.Identity()
        self.k_norm = rms_norm(operations, head_dim, device, dtype) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, angles: torch.Tensor, extra: Optional[torch.Tensor] = None,
                extra_angles: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B,L,D], angles [L,d/2]; extra [B,S,D] tokens that are attended to but not updated."""
        n = x.shape[1]
        src = x if extra is None else torch.cat((x, extra), dim=1)  # [B,L+S,D]
        q, k, v = self.qkv(src).chunk(3, dim=-1)
        q = self.q_norm(split_heads(q[:, :n], self.heads))  # [B,Hd,L,d]
        k = self.k_norm(split_heads(k, self.heads))  # [B,Hd,L+S,d]
        v = split_heads(v, self.heads)
        k_angles = angles if extra is None else torch.cat((angles, extra_angles), dim=0)
        q, k = apply_rope(q, angles), apply_rope(k, k_angles)
        return self.out(merge_heads(attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from x [B,L,D] to a context [B,S,Dc]."""

    def __init__(self, dim: int, context_dim: int, heads: int, qk_norm: bool = True, device=None, dtype=None,
                 operations=nn):
        super().__init__()
        self.heads = heads
        self.q = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.kv = operations.Linear(context_dim, 2 * dim, device=device, dtype=dtype)
        self.out = operations.Linear(dim, dim, device=device, dtype=dtype)
        head_dim = dim // heads
        self.q_norm = rms_norm(operations, head_dim, device, dtype) if qk_norm else nn.Identity()
        self.k_norm = rms_norm(operations, head_dim, device, dtype) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(split_heads(self.q(x), self.heads))  # [B,Hd,L,d]
        k, v = self.kv(context).chunk(2, dim=-1)
        k = self.k_norm(split_heads(k, self.heads))  # [B,Hd,S,d]
        return self.out(merge_heads(attention(q, k, split_heads(v, self.heads))))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.fc1 = operations.Linear(dim, hidden, device=device, dtype=dtype)
        self.fc2 = operations.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """values [B] -> [B, dim] (cos | sin), computed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)


class TimestepEmbedding(nn.Module):
    """sigma in [0,1] -> [B, D]; sigma is scaled to 0..1000 before the sinusoidal features."""

    def __init__(self, dim: int, freq_dim: int = 256, device=None, dtype=None, operations=nn):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = operations.Linear(freq_dim, dim, device=device, dtype=dtype)
        self.fc2 = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(sigma * 1000.0, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x [B,...,D] * (1 + scale) + shift, with shift/scale [B,D] broadcast over the middle axes."""
    view = (shift.shape[0],) + (1,) * (x.dim() - 2) + (shift.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


def gate(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x [B,...,D] * g [B,D] broadcast over the middle axes."""
    return x * g.view((g.shape[0],) + (1,) * (x.dim() - 2) + (g.shape[-1],))
