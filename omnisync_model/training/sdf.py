"""Signed-distance drawing primitives of the synthetic suite (distances in face units unless named *_px).

A shape's coverage is ``clamp(0.5 - distance_px, 0, 1)``: a soft 1-pixel edge, so 64x64 frames stay clean.

Shape legend: u, v / x, y are coordinate maps [..., H, W]; img [..., H, W, 3]; alpha [..., H, W].
"""

from __future__ import annotations

import torch


def cov(d_px: torch.Tensor) -> torch.Tensor:
    """Coverage of a shape from its signed distance in pixels (soft 1-pixel edge)."""
    return (0.5 - d_px).clamp(0.0, 1.0)


def outline(d_px: torch.Tensor, width_px: float) -> torch.Tensor:
    return cov(d_px.abs() - 0.5 * width_px)


def sd_ellipse(u: torch.Tensor, v: torch.Tensor, a, b) -> torch.Tensor:
    """Approximate signed distance to an ellipse with half-axes a, b (exact on the axes and near the boundary).

    The first-order estimate k0 (k0 - 1) / k1 collapses far outside very flat ellipses (closed eyes, a nearly
    closed mouth), so it is bounded below by the distance to the bounding box, which never exceeds the true one.
    """
    k0 = torch.hypot(u / a, v / b)
    k1 = torch.hypot(u / (a * a), v / (b * b))
    inner = -torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    d = torch.where(k1 > 1e-6, k0 * (k0 - 1.0) / k1.clamp_min(1e-6), inner)
    return torch.maximum(d, torch.maximum(u.abs() - a, v.abs() - b))


def sd_segment(u: torch.Tensor, v: torch.Tensor, a: tuple, b: tuple) -> torch.Tensor:
    """Unsigned distance to the segment a-b (capsule of radius 0)."""
    pu, pv, bu, bv = u - a[0], v - a[1], b[0] - a[0], b[1] - a[1]
    h = ((pu * bu + pv * bv) / (bu * bu + bv * bv)).clamp(0.0, 1.0)
    return torch.hypot(pu - bu * h, pv - bv * h)


def sd_box(x: torch.Tensor, y: torch.Tensor, hw, hh, radius) -> torch.Tensor:
    """Signed distance to a rounded box centred at the origin."""
    qx, qy = x.abs() - hw + radius, y.abs() - hh + radius
    outside = torch.hypot(qx.clamp_min(0), qy.clamp_min(0))
    return outside + torch.maximum(qx, qy).clamp_max(0) - radius


def over(img: torch.Tensor, alpha: torch.Tensor, colour) -> torch.Tensor:
    """Alpha-composite ``colour`` ([3] or [F,H,W,3]) over img [F,H,W,3]; alpha [F,H,W]. alpha 0 keeps img bitwise."""
    colour = torch.as_tensor(colour, dtype=img.dtype).expand_as(img)
    return torch.lerp(img, colour, alpha.unsqueeze(-1))  # exactly img where alpha == 0
