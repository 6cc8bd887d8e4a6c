"""The three MediaPipe custom ops of the attention face mesh, in batched torch.

The model refines lips and eyes by cropping its own 48x48 feature map around each region (the crop follows the
region's landmarks from the coarse mesh), running a small network on the crop and mapping the crop's landmarks back.
Written from MediaPipe's kernels (``mediapipe/util/tflite/operations``: ``Landmarks2TransformMatrix`` v2,
``TransformTensorBilinear`` v2, ``TransformLandmarks`` v2):

- :func:`region_matrix`: rotation r = target - atan2(yR - yL, xR - xL) from two landmarks; the region's landmarks
  rotated by r give an axis-aligned box (size w, h; centre rotated back by -r); the crop matrix maps crop pixel
  (u, v) to ``centre + R(-r) diag(sx, sy) ((u, v) - out / 2)`` with sx = scale_x * w / out_w (sy likewise).
- :func:`crop_features`: samples the feature map at ``M (u + 0.5, v + 0.5) - 0.5`` bilinearly; samples whose
  position falls outside [0, size - 1] are zero.
- :func:`map_landmarks`: x' = M[0,:2] (x, y) + M[0,3] (a plain affine map, no pixel-centre shift).

Shape legend
  B  batch      N  landmarks      C, H, W  feature map      o  crop side (16)
  M  [B,2,3] affine matrices (the top two rows of MediaPipe's 4x4, z column dropped: it multiplies z = 0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``; no op at all when it already is (a trace then records none)."""
    return x if x.dtype == dtype else x.to(dtype)


def _rotation(r: torch.Tensor) -> torch.Tensor:
    """[...] angles -> [...,2,2] rotation matrices [[cos, -sin], [sin, cos]]."""
    c, s = torch.cos(r), torch.sin(r)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def region_matrices(landmarks: torch.Tensor, subsets: torch.Tensor, ends: torch.Tensor, out_hw: tuple[int, int],
                    scale: tuple[float, float], target: float = 0.0) -> torch.Tensor:
    """Crop matrices [B,R,2,3] of R regions of ``landmarks`` [B,N,>=2] at once: region i is given by the indices
    ``subsets[i]`` [L] (shorter regions padded by repeating an index: the box is the same) and its rotation by the
    points ``ends[i]`` = (left, right). Written with einsum and stack, which oneDNN Graph leaves to torch (as its
    own partitions, a 2x2 matmul or a concatenation costs 15-130 us)."""
    lm = _as(landmarks[..., :2], torch.float32)  # [B,N,2]
    b, (r, n) = lm.shape[0], subsets.shape
    ends_xy = lm[:, ends.flatten()].view(b, r, 2, 2)  # [B,R*2,2] -> [B,R,(left, right),2]
    d = ends_xy[:, :, 1] - ends_xy[:, :, 0]  # [B,R,2]
    rot = _rotation(target - torch.atan2(d[..., 1], d[..., 0]))  # [B,R,2,2]
    pts = torch.einsum("brij,brnj->brni", rot, lm[:, subsets.flatten()].view(b, r, n, 2))  # rotated: [B,R,L,2]
    lo, hi = pts.amin(2), pts.amax(2)  # [B,R,2]
    centre = torch.einsum("brji,brj->bri", rot, torch.lerp(lo, hi, 0.5))  # box centre rotated back (R^T): [B,R,2]
    oh, ow = out_hw
    size = hi - lo
    sx, sy = size[..., 0] * (scale[0] / ow), size[..., 1] * (scale[1] / oh)  # [B,R]
    col_x, col_y = rot[..., 0, :] * sx[..., None], rot[..., 1, :] * sy[..., None]  # R(-r) diag(sx, sy) columns
    shift = centre - col_x * (ow / 2.0) - col_y * (oh / 2.0)  # centre - linear (ow/2, oh/2): [B,R,2]
    return torch.stack([col_x, col_y, shift], 3)  # [B,R,2,3]


def region_matrix(landmarks: torch.Tensor, subset: torch.Tensor, left: int, right: int, out_hw: tuple[int, int],
                  scale: tuple[float, float], target: float = 0.0) -> torch.Tensor:
    """Crop matrix [B,2,3] for the region of ``landmarks`` [B,N,>=2] given by the indices ``subset`` [n]."""
    ends = torch.tensor([[left, right]], device=landmarks.device)  # [1,2]
    return region_matrices(landmarks, subset[None], ends, out_hw, scale, target)[:, 0]


def crop_features(features: torch.Tensor, matrix: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[B,C,H,W] sampled through ``matrix`` [B,2,3] (crop pixel -> feature pixel) -> [B,C,o,o]; with R matrices per
    map, [B,R,2,3] -> [B,R,C,o,o] (one sampling call: the R crops are a batch over the same map, sampled in
    parallel)."""
    b, c, h, w = features.shape
    oh, ow = out_hw
    m = _as(matrix, torch.float32).reshape(b, -1, 2, 3)  # [B,R,2,3] (R = 1 for a [B,2,3] matrix)
    r = m.shape[1]
    ys, xs = torch.meshgrid(torch.arange(oh, device=features.device, dtype=torch.float32) + 0.5,
                            torch.arange(ow, device=features.device, dtype=torch.float32) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # (u + 0.5, v + 0.5, 1): [o*o,3]
    pos = torch.einsum("kj,brij->brki", grid, m) - 0.5  # feature pixel coordinates: [B,R,o*o,2]
    inside = ((pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1))  # [B,R,o*o]
    norm = torch.stack([pos[..., 0] / max(w - 1, 1), pos[..., 1] / max(h - 1, 1)], -1) * 2 - 1  # align_corners=True
    grid = _as(norm.view(b * r, oh, ow, 2), features.dtype)  # [B,R,o*o,2] -> [B*R,o,o,2]
    maps = features[:, None].expand(b, r, c, h, w).reshape(b * r, c, h, w)  # each map once per crop (a view if B=1)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # [B*R,C,o,o]
    out = (out * inside.view(b * r, 1, oh, ow)).view(b, r, c, oh, ow)  # outside samples are zero (bool promotes)
    return out if matrix.dim() == 4 else out[:, 0]  # [B,C,o,o] for one matrix per map


def map_landmarks(points: torch.Tensor, matrix: torch.Tensor, shift_scale: float = 1.0) -> torch.Tensor:
    """[...,N,2] through the affine ``matrix`` [...,2,3] (one per leading index; its translation times
    ``shift_scale``) -> [...,N,2]: one einsum of (x, y, shift_scale) with the matrix rows."""
    x, y = points.unbind(-1)
    homogeneous = torch.stack([x, y, torch.full_like(x, shift_scale)], -1)  # [...,N,3]
    return torch.einsum("...nj,...ij->...ni", homogeneous, _as(matrix, points.dtype))
