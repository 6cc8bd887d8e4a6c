"""X-Dub's transformer block (a Wan2.2 block plus a per-frame audio cross-attention) and its output head.

Module and parameter names follow the released checkpoint (``blocks.N.self_attn.q``, ``blocks.N.norm3``, ...).

Per-token time modulation: X-Dub gives every token its own timestep (0 for the reference tokens and for motion
frames, t for the rest). Tokens of one latent frame share their timestep, so the modulation is carried per frame
([B, frames, 6, D]) and broadcast over the frame's h w tokens: the same values as per token, without materialising
[B, L, 6, D].

Shape legend
  B batch    F latent frames (target)    S = h w tokens per frame    L = 2 F S tokens (reference, then target)
  D width    Hd heads    d head width    Lc text tokens    K audio tokens per frame
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...core.layers import attention, merge_heads, rms_norm, split_heads
from .rope import apply_rope

EPS = 1e-6  # every Wan norm (LayerNorm and RMSNorm)


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, frames * S, D] -> [B, frames, S, D]."""
    b, n, d = x.shape
    return x.reshape(b, frames, n // frames, d)  # [B, frames*S, D] -> [B, frames, S, D]


def modulate_frames(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, frames * S, D] * (1 + scale) + shift, with shift / scale [B, frames, D] per frame."""
    frames = shift.shape[1]
    out = per_frame(x, frames) * (1 + scale[:, :, None]) + shift[:, :, None]  # [B, frames, S, D]
    return out.flatten(1, 2)  # -> [B, frames*S, D]


def gate_frames(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x [B, frames * S, D] * g [B, frames, D] per frame."""
    return (per_frame(x, g.shape[1]) * g[:, :, None]).flatten(1, 2)  # [B,frames,S,D] -> [B,frames*S,D]


class WanAttention(nn.Module):
    """Wan attention: q, k, v, o projections with RMSNorm over the full width on q and k (before the head split).

    Self-attention when ``context`` is None (then ``rope`` = (cos, sin) rotates q and k), else cross-attention.
    """

    def __init__(self, dim: int, heads: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.heads = heads
        self.q = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.k = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.v = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.o = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.norm_q = rms_norm(operations, dim, device, dtype)
        self.norm_k = rms_norm(operations, dim, device, dtype)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """x [B, L, D]; context [B, Lc, D] or None -> [B, L, D]."""
        src = x if context is None else context
        q = split_heads(self.norm_q(self.q(x)), self.heads)  # [B,L,D] -> [B,Hd,L,d]
        k = split_heads(self.norm_k(self.k(src)), self.heads)  # [B,Hd,Lc,d]
        v = split_heads(self.v(src), self.heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o(merge_heads(attention(q, k, v)))  # [B,Hd,L,d] -> [B,L,D]


class XDubBlock(nn.Module):
    """One block: modulated self-attention over reference + target tokens, text cross-attention (norm3) and audio
    cross-attention (norm4, per latent frame, no gate) on the target tokens only, modulated FFN over all tokens."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, audio: bool = True, device=None, dtype=None,
                 operations=nn):
        super().__init__()
        self.self_attn = WanAttention(dim, heads, device, dtype, operations)
        self.cross_attn = WanAttention(dim, heads, device, dtype, operations)
        self.norm1 = operations.LayerNorm(dim, eps=EPS, elementwise_affine=False, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, eps=EPS, elementwise_affine=False, device=device, dtype=dtype)
        self.norm3 = operations.LayerNorm(dim, eps=EPS, device=device, dtype=dtype)
        self.ffn = nn.Sequential(operations.Linear(dim, ffn_dim, device=device, dtype=dtype),
                                 nn.GELU(approximate="tanh"),
                                 operations.Linear(ffn_dim, dim, device=device, dtype=dtype))
        # six per-channel offsets added to the time projection: shift/scale/gate for attention, then for the FFN
        self.modulation = nn.Parameter(torch.randn(1, 6, dim, device=device, dtype=dtype) / dim ** 0.5)
        self.norm4 = operations.LayerNorm(dim, eps=EPS, device=device, dtype=dtype) if audio else None
        self.audio_attn = WanAttention(dim, heads, device, dtype, operations) if audio else None

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, audio: Optional[torch.Tensor],
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B, L, D]; mod [B, 2F, 6, D] (time projection per frame); context [B, Lc, D]; audio [B, F, K, D]."""
        m = self.modulation.to(dtype=mod.dtype, device=mod.device)[:, None] + mod  # [1,1,6,D] + [B,2F,6,D]
        shift1, scale1, gate1, shift2, scale2, gate2 = m.unbind(2)  # 6 x [B,2F,D]
        x = x + gate_frames(self.self_attn(modulate_frames(self.norm1(x), shift1, scale1), rope=rope), gate1)
        half = x.shape[1] // 2
        ref, tgt = x[:, :half], x[:, half:]  # [B,F*S,D] each
        tgt = tgt + self.cross_attn(self.norm3(tgt), context)
        if self.audio_attn is not None and audio is not None:
            tgt = tgt + self._audio(tgt, audio)
        x = torch.cat((ref, tgt), dim=1)  # [B,L,D]
        return x + gate_frames(self.ffn(modulate_frames(self.norm2(x), shift2, scale2)), gate2)

    def _audio(self, tgt: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Each latent frame's S tokens attend to that frame's K audio tokens."""
        b, f, k, d = audio.shape
        frames = per_frame(tgt, f).flatten(0, 1)  # [B,F*S,D] -> [B*F,S,D]
        out = self.audio_attn(self.norm4(frames), audio.reshape(b * f, k, d))  # audio [B,F,K,D] -> [B*F,K,D]
        return out.reshape(b, -1, d)  # [B*F,S,D] -> [B,F*S,D]


class OutputHead(nn.Module):
    """Final norm, modulated by (its offsets + the time embedding, not the projection), and the linear unpatch head."""

    def __init__(self, dim: int, out_features: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.norm = operations.LayerNorm(dim, eps=EPS, elementwise_affine=False, device=device, dtype=dtype)
        self.head = operations.Linear(dim, out_features, device=device, dtype=dtype)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim, device=device, dtype=dtype) / dim ** 0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, F S, D] (target tokens), t [B, F, D] time embedding per frame -> [B, F S, out_features]."""
        m = self.modulation.to(dtype=t.dtype, device=t.device)[:, None] + t[:, :, None]  # [B,F,2,D]
        shift, scale = m.unbind(2)  # [B,F,D] each
        return self.head(modulate_frames(self.norm(x), shift, scale))
