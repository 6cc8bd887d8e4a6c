"""Regions of interest and image sampling for the face models, as MediaPipe computes them.

Facts (MediaPipe's ``image_to_tensor_utils.cc``, ``image_to_tensor_converter_opencv.cc``,
``detections_to_rects_calculator.cc``, ``rect_transformation_calculator.cc``, ``landmark_projection_calculator.cc``,
``face_detection_front_detection_to_roi.pbtxt``, ``face_landmark_landmarks_to_roi.pbtxt``):

- Pixel coordinates have integer values at pixel centres (OpenCV's convention); a rotated rectangle (centre c, size
  (w, h), rotation t) maps tensor pixel (u, v) of an ``n`` x ``n`` tensor to ``c + R(t) ((u / n - 1/2) w,
  (v / n - 1/2) h)``; samples are bilinear from the 8-bit image and rounded back to 8 bits (OpenCV's warp on an
  8-bit image), then scaled to the model's range.
- Detector input: the whole image padded to a square (letterbox, the longer side), zero border, range -1..1.
- Mesh input: the ROI, border replicated, range 0..1.
- ROI from a detection: the box centre, rotation ``t = -atan2(-(y1 - y0), x1 - x0)`` from keypoint 0 to keypoint 1
  (in pixels), the longer side of the box (in pixels) times 1.5 as a square.
- ROI from landmarks: the same from the box of all landmarks and the rotation from point 33 to point 263.

Shape legend
  B  ROIs / frames      N  points      H, W, C  image size      n  tensor side
  ROIs are (cx, cy, w, h, t) [B,5] in pixels and radians; matrices [B,2,3] map tensor pixels to image pixels.
"""

from __future__ import annotations

import math

import torch

from .topology import ROTATION_POINTS

ROI_SCALE = 1.5
TAB_BITS = 5
TAB = 1 << TAB_BITS  # OpenCV's bilinear table: sample positions in 1/32 pixel


def normalize_radians(a: torch.Tensor) -> torch.Tensor:
    """Angles into [-pi, pi)."""
    return a - 2 * math.pi * torch.floor((a + math.pi) / (2 * math.pi))


def roi_matrix(rois: torch.Tensor, n: int) -> torch.Tensor:
    """[B,5] ROIs -> [B,2,3] maps from an ``n`` x ``n`` tensor's pixels to image pixels."""
    cx, cy, w, h, t = rois.float().unbind(-1)
    c, s = torch.cos(t), torch.sin(t)
    a, b = w / n, h / n
    # p = centre + R(t) diag(w/n, h/n) (u, v) - R(t) (w/2, h/2)
    row0 = torch.stack([c * a, -s * b, cx - (c * w - s * h) / 2], -1)
    row1 = torch.stack([s * a, c * b, cy - (s * w + c * h) / 2], -1)
    return torch.stack([row0, row1], 1)


def letterbox_rois(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """The whole image padded to a square: [B,5]."""
    side = float(max(height, width))
    return torch.tensor([[width / 2.0, height / 2.0, side, side, 0.0]]).repeat(batch, 1)


def sample(image: torch.Tensor, matrix: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """Bilinear samples of one image [H,W,C] (any dtype) at the pixels of an ``n`` x ``n`` tensor through
    ``matrix`` [2,3] -> [n,n,C] float32, with a zero (``"zero"``) or replicated (``"replicate"``) border.

    As OpenCV's 8-bit warp, sample positions are rounded to 1/32 pixel (its interpolation table), which makes the
    weights exact. Only the sampled pixels are read (no full-frame float copy)."""
    hgt, wid, ch = image.shape
    qx, qy = _positions(matrix, n, image.device)
    table, row_step = pixel_table(image)  # pixel (y, x) is table[y * row_step + x]
    y0, fy = qy >> TAB_BITS, qy & (TAB - 1)  # floor division by 32 (arithmetic shift) and the remainder, [n*n]
    ya, yb = y0.clamp(0, hgt - 1).mul_(row_step), (y0 + 1).clamp(0, hgt - 1).mul_(row_step)  # row offsets
    if border == "replicate" and wid >= 2 and table.stride() == (ch, 1):  # adjacent pixels: gather pairs
        return _sample_pairs(table, wid, qx, ya, yb, fy).view(n, n, ch)  # [n*n,C] -> [n,n,C]
    x0 = qx >> TAB_BITS
    fx, fy = (qx & (TAB - 1)).float().div_(TAB), fy.float().div_(TAB)  # fractions, exact
    gx, gy = 1 - fx, 1 - fy
    w = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], -1)  # weights of the 4 neighbours: [n*n,4]
    xa, xb = x0.clamp(0, wid - 1), (x0 + 1).clamp_(0, wid - 1)
    if border == "zero":  # neighbours outside the image weigh nothing
        inx0, inx1 = (x0 >= 0) & (x0 < wid), (x0 >= -1) & (x0 < wid - 1)
        iny0, iny1 = (y0 >= 0) & (y0 < hgt), (y0 >= -1) & (y0 < hgt - 1)
        w = w * torch.stack([inx0 & iny0, inx1 & iny0, inx0 & iny1, inx1 & iny1], -1)
    idx = torch.stack([ya + xa, ya + xb, yb + xa, yb + xb], 1).view(-1)  # [n*n,4] -> [4*n*n]
    vals = table.index_select(0, idx).view(n * n, 4, ch).float()  # [4*n*n,C] -> [n*n,4,C]
    return torch.bmm(w.view(-1, 1, 4), vals).view(n, n, ch)  # [n*n,1,4] @ [n*n,4,C] -> [n,n,C]


def _positions(matrix: torch.Tensor, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame positions of the tensor pixels (u, v) in 1/32 pixel, rounded: x and y [n*n] int64 (row-major v, u)."""
    g = torch.arange(n, device=device, dtype=torch.float64)
    m = torch.nan_to_num(matrix.to(device, torch.float64), nan=0.0, posinf=0.0, neginf=0.0) * TAB  # NaN ROIs: border
    lim = 2.0 ** 40
    out = []
    for row in (m[0], m[1]):
        q = (row[0] * g)[None, :] + (row[1] * g + row[2])[:, None]  # [n,n] position of tensor pixel (u, v)
        out.append(q.round_().clamp_(-lim, lim).long().view(-1))  # [n,n] -> [n*n]
    return out[0], out[1]


def _sample_pairs(table: torch.Tensor, wid: int, qx: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor,
                  fy: torch.Tensor) -> torch.Tensor:
    """Replicated-border bilinear samples [N,C] from horizontal pixel pairs (one gather per row instead of two) of a
    table whose pixels are adjacent in memory (stride C); ``ya``, ``yb`` are the top and bottom row offsets [N].

    The pair's left pixel is x0 clamped to 0..W-2 and the right pixel's weight (in 1/32) is the position minus
    it, clamped to 0..32: inside the image that is the usual fraction; left of it all weight falls on pixel 0 and
    right of it on pixel W-1, which is what clamping each neighbour (the replicated border) gives. Same values, bit
    for bit, as the four-neighbour form: every weight is a multiple of 1/1024 and every product exact."""
    x0 = (qx >> TAB_BITS).clamp_(0, wid - 2)
    fx = (qx - (x0 << TAB_BITS)).clamp_(0, TAB)  # weight of the right pixel, 1/32 units
    ch = table.shape[1]
    pairs = table.as_strided((table.shape[0] - 1, 2, ch), (ch, ch, 1))  # pixels i and i + 1: [P-1,2,C] (a view)
    idx = torch.stack([ya + x0, yb + x0], 1).view(-1)  # [N,2] (top, bottom) -> [2N]
    vals = pairs.index_select(0, idx).view(-1, 4, ch).float()  # [2N,2,C] -> [N,4,C]: TL, TR, BL, BR
    right, left = fx.float(), (TAB - fx).float()  # horizontal weights, 1/32 units
    bottom, top = fy.float().div_(TAB * TAB), (TAB - fy).float().div_(TAB * TAB)  # vertical, with the 1/1024
    w = torch.stack([top * left, top * right, bottom * left, bottom * right], -1).view(-1, 1, 4)  # [N,4] -> [N,1,4]
    return torch.bmm(w, vals).view(-1, ch)  # [N,1,C] -> [N,C]


def pixel_table(image: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A [P,C] view of an [H,W,C] image's pixels and its row step: pixel (y, x) is ``table[y * step + x]``.

    Frames whose pixels are evenly spaced with adjacent channels (contiguous, or rows padded as PyAV returns them,
    or a crop of either) are viewed in place; other layouts are copied once."""
    hgt, wid, ch = image.shape
    s_row, s_px, s_ch = image.stride()
    if image.is_contiguous():
        return image.reshape(hgt * wid, ch), wid
    if s_ch == 1 and s_px >= ch and s_row % s_px == 0 and s_row >= wid * s_px:
        rows = s_row // s_px
        return image.as_strided(((hgt - 1) * rows + wid, ch), (s_px, 1)), rows  # [P,C] over the frame's memory
    return image.contiguous().reshape(hgt * wid, ch), wid


def project(points: torch.Tensor, rois: torch.Tensor, n: int) -> torch.Tensor:
    """Tensor-pixel points [B,N,>=2] -> image pixels through each ROI; a third coordinate (depth, tensor pixels)
    is scaled like x (by w / n)."""
    m = roi_matrix(rois, n)  # [B,2,3]
    xy = points[..., :2].float() @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]  # [B,N,2]
    if points.shape[-1] < 3:
        return xy
    z = points[..., 2:3].float() * (rois[:, 2] / n)[:, None, None]
    return torch.cat([xy, z], -1)


def _square_roi(cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                rotation: torch.Tensor) -> torch.Tensor:
    side = torch.maximum(w, h) * ROI_SCALE  # square_long, then scale 1.5
    return torch.stack([cx, cy, side, side, rotation], -1)


def _rotation(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """MediaPipe's ROI rotation from point p0 to p1 ([B,2] pixels), target angle 0."""
    return normalize_radians(-torch.atan2(-(p1[:, 1] - p0[:, 1]), p1[:, 0] - p0[:, 0]))


def rois_from_detections(boxes: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Boxes [B,4] (x0, y0, x1, y1) and keypoints [B,K,2], image pixels -> face ROIs [B,5]."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return _square_roi(cx, cy, w, h, _rotation(keypoints[:, 0], keypoints[:, 1]))


def rois_from_landmarks(landmarks: torch.Tensor) -> torch.Tensor:
    """Landmarks [B,N,>=2] in image pixels -> the next frame's face ROIs [B,5]."""
    lo, hi = landmarks[..., :2].amin(1), landmarks[..., :2].amax(1)  # [B,2]
    a, b = ROTATION_POINTS
    return _square_roi((lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2, hi[:, 0] - lo[:, 0],
                       hi[:, 1] - lo[:, 1], _rotation(landmarks[:, a, :2], landmarks[:, b, :2]))
