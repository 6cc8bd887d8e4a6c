"""A face-parsing-free lip and jaw mask from the face mesh, for the paste-back (``blend="jaw"``).

The polygon :data:`.topology.JAW_OUTLINE` (the jaw line round the chin, closed across the face below the nose)
is filled (even-odd rule at pixel centres) and its edge softened by two box blurs whose width is a fraction of
the polygon's height, so the synced lips, chin and jaw come from the result and the rest of the face keeps the
source's pixels, whatever the face's size, pose or rotation.

Shape legend
  F  frames      K  outline points      h, w  mask size (the crop)
  outlines are normalised to the crop (x / w, y / h, pixel centres at (i + 0.5) / n); NaN rows: no mesh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEATHER = 0.12  # blur width as a fraction of the outline's height


def polygon_mask(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[h,w] float 0/1: the pixel centres inside the closed polygon ``points`` [K,2] (pixels; even-odd rule)."""
    p = points.double()
    a, b = p, torch.roll(p, -1, 0)  # edges a[k] -> b[k], [K,2]
    ys = torch.arange(height, dtype=torch.float64) + 0.5  # [h]
    xs = torch.arange(width, dtype=torch.float64) + 0.5  # [w]
    lo, hi = torch.minimum(a[:, 1], b[:, 1]), torch.maximum(a[:, 1], b[:, 1])  # [K]
    spans = (ys[:, None] >= lo) & (ys[:, None] < hi)  # [h,K] rows each edge crosses (half-open: no double count)
    dy = torch.where(b[:, 1] == a[:, 1], torch.ones_like(a[:, 1]), b[:, 1] - a[:, 1])  # [K]; flat edges never span
    cross_x = a[:, 0] + (ys[:, None] - a[:, 1]) / dy * (b[:, 0] - a[:, 0])  # [h,K] x where row y meets edge k
    cross_x = torch.where(spans, cross_x, torch.full_like(cross_x, -torch.inf))
    inside = (cross_x[:, None, :] > xs[None, :, None]).sum(-1) % 2 == 1  # [h,w,K] -> [h,w] crossings to the right
    return inside.float()


def _box_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable box blur of [h,w] with a (2 radius + 1) window (zero outside)."""
    if radius < 1:
        return mask
    k = 2 * radius + 1
    x = mask[None, None]  # [h,w] -> [1,1,h,w]
    x = F.avg_pool2d(F.pad(x, (radius, radius, 0, 0)), (1, k), stride=1)  # along x
    x = F.avg_pool2d(F.pad(x, (0, 0, radius, radius)), (k, 1), stride=1)  # along y
    return x[0, 0]


def jaw_masks(outlines: torch.Tensor, height: int, width: int, feather: float = FEATHER) -> torch.Tensor:
    """[F,h,w] soft masks (0..1) from normalised outlines [F,K,2]; frames whose outline is not finite get zeros
    (the caller falls back to another mask there)."""
    out = torch.zeros(outlines.shape[0], height, width)
    scale = torch.tensor([width, height], dtype=torch.float32)
    for i in torch.nonzero(has_outline(outlines), as_tuple=True)[0].tolist():
        pts = outlines[i].float() * scale  # [K,2] pixels
        hard = polygon_mask(pts, height, width)
        radius = int(round(feather * float(pts[:, 1].max() - pts[:, 1].min()) / 2))
        out[i] = _box_blur(_box_blur(hard, radius // 2), radius - radius // 2)  # two boxes: a smooth ramp
    return out


def has_outline(outlines: torch.Tensor) -> torch.Tensor:
    """[F] bool: frames with a finite outline."""
    return torch.isfinite(outlines.flatten(1)).all(1)
