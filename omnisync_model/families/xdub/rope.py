"""Wan's 3D rotary position embedding, with X-Dub's shifted grid for the reference tokens.

Each head's width d is split into (time, height, width) parts of d - 2 (d // 3), d // 3 and d // 3 channels (for
d = 128: 44, 42, 42). Part k of width d_k rotates its channel pairs (2i, 2i + 1) by ``pos * theta^(-2i / d_k)``.
The per-head pair order is all time pairs, then height pairs, then width pairs.

X-Dub puts the reference video's tokens on the same frame indices as the target and shifts their spatial positions
by the token grid size (h, w), so a reference token at (f, y, x) sits at (f, y + h, x + w).

Shape legend
  F token frames    h, w token grid    L tokens (F h w, or 2 F h w with the reference)    d head width
"""

from __future__ import annotations

import torch


def axis_widths(head_dim: int) -> tuple[int, int, int]:
    """Channel widths of the (time, height, width) parts of one head."""
    third = head_dim // 3
    return head_dim - 2 * third, third, third


def _axis_angles(pos: torch.Tensor, width: int, theta: float) -> torch.Tensor:
    """pos [L] (float64) -> angles [L, width // 2] in float64."""
    exponents = torch.arange(0, width, 2, dtype=torch.float64, device=pos.device)[: width // 2] / width
    return pos[:, None] * theta ** (-exponents)[None, :]


def grid_angles(frames: int, h: int, w: int, head_dim: int, theta: float, offset: tuple[int, int] = (0, 0),
                device=None) -> torch.Tensor:
    """Angles [F h w, d/2] (float64) of a row-major (frame, y, x) token grid whose spatial positions start at
    ``offset`` (0, 0 for the target, (h, w) for X-Dub's reference tokens)."""
    ft, fy, fx = axis_widths(head_dim)
    tt, yy, xx = torch.meshgrid(
        torch.arange(frames, dtype=torch.float64, device=device),
        torch.arange(h, dtype=torch.float64, device=device) + offset[0],
        torch.arange(w, dtype=torch.float64, device=device) + offset[1], indexing="ij")  # 3 x [F, h, w]
    parts = (_axis_angles(tt.reshape(-1), ft, theta), _axis_angles(yy.reshape(-1), fy, theta),
             _axis_angles(xx.reshape(-1), fx, theta))  # [F h w] positions each
    return torch.cat(parts, dim=1)  # [F h w, d/2]


def xdub_rope(frames: int, h: int, w: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, ...]:
    """(cos, sin) [2 F h w, d/2] float32 for X-Dub's token order: reference tokens (shifted by (h, w)) first,
    then the target tokens."""
    angles = torch.cat((grid_angles(frames, h, w, head_dim, theta, (h, w), device),
                        grid_angles(frames, h, w, head_dim, theta, (0, 0), device)), dim=0)  # [2 F h w, d/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of x [B, Hd, L, d] by (cos, sin) [L, d/2]; computed in float32, returned in x's
    dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # [B,Hd,L,d] -> [B,Hd,L,d/2,2]
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)  # [B,Hd,L,d/2,2]
    return out.flatten(-2).to(x.dtype)  # -> [B,Hd,L,d]
