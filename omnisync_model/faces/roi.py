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

Sampling (:func:`sample`) runs grid_sample on a float copy of the region the samples read, whose sides are powers of
two: then every coordinate the kernel computes is exact (positions are multiples of 1/32), so are the weights and the
sums of 8-bit pixels, and the result equals OpenCV's fixed-point warp bit for bit. Regions over ``CANVAS_LIMIT``
pixels gather the pixel blocks of their sample rows and columns into such a canvas (axis-aligned maps) or read each
sample's four pixels (rotated ones): the same values.

Shape legend
  B  ROIs / frames      N  points      H, W, C  image size      n  tensor side
  ROIs are (cx, cy, w, h, t) [B,5] in pixels and radians; matrices [B,2,3] map tensor pixels to image pixels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .topology import ROTATION_POINTS

ROI_SCALE = 1.5
TAB_BITS = 5
TAB = 1 << TAB_BITS  # OpenCV's bilinear table: sample positions in 1/32 pixel
CANVAS_LIMIT = 1 << 20  # pixels of float region per sampling; larger regions are gathered from the 8-bit image


def normalize_radians(a: torch.Tensor) -> torch.Tensor:
    """Angles into [-pi, pi)."""
    return a - 2 * math.pi * torch.floor((a + math.pi) / (2 * math.pi))


def roi_matrix(rois: torch.Tensor, n: int) -> torch.Tensor:
    """[B,5] ROIs -> [B,2,3] maps from an ``n`` x ``n`` tensor's pixels to image pixels (float32; a few numbers per
    ROI, computed in Python floats)."""
    out = []
    for cx, cy, w, h, t in rois.float().tolist():
        c, s = (math.cos(t), math.sin(t)) if math.isfinite(t) else (math.nan, math.nan)
        a, b = w / n, h / n
        # p = centre + R(t) diag(w/n, h/n) (u, v) - R(t) (w/2, h/2)
        out.append([[c * a, -s * b, cx - (c * w - s * h) / 2], [s * a, c * b, cy - (s * w + c * h) / 2]])
    return torch.tensor(out, dtype=torch.float32, device=rois.device).view(-1, 2, 3)


def letterbox_rois(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """The whole image padded to a square: [B,5]."""
    side = float(max(height, width))
    return torch.tensor([[width / 2.0, height / 2.0, side, side, 0.0]]).repeat(batch, 1)


def sample(image: torch.Tensor, matrix: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """Bilinear samples of one image [H,W,C] (any dtype) at the pixels of an ``n`` x ``n`` tensor through
    ``matrix`` [2,3] -> [n,n,C] float32, with a zero (``"zero"``) or replicated (``"replicate"``) border.

    As OpenCV's 8-bit warp, sample positions are rounded to 1/32 pixel (its interpolation table), which makes the
    weights exact. Only the region the samples read is converted to float (:func:`_canvas`); a region larger than
    ``CANVAS_LIMIT`` pixels (a letterboxed whole frame) is gathered: the pixel blocks of the sample rows and columns
    when the map is axis-aligned (:func:`_separable`), else each sample's four pixels (:func:`_gather`). All forms
    give the same values, bit for bit, on 8-bit images."""
    bands = sample_bands(image, matrix, n, border)  # [P,C,n/P,n]
    return bands.transpose(0, 1).reshape(-1, n, n).permute(1, 2, 0)  # [C,P,n/P,n] -> [C,n,n] -> [n,n,C]


def sample_bands(image: torch.Tensor, matrix: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """:func:`sample` as it comes from the sampling kernel, P bands of rows sampled in parallel: [P,C,n/P,n]
    (band p holds tensor rows p n/P ..; P = 1 when read by :func:`_gather`)."""
    q = _positions(matrix, n, image.device)  # [n,n,2]
    canvas = _canvas(image, q, border)
    if canvas is None:
        canvas = _separable(image, q, border)
    if canvas is None:
        q = q.clamp_(-2.0 ** 40, 2.0 ** 40).long().view(-1, 2)  # [n,n,2] -> [n*n,2] (far-off positions bounded)
        return _gather(image, q[:, 0], q[:, 1], n, border).permute(2, 0, 1)[None]  # [n,n,C] -> [1,C,n,n]
    pixels, origin, side = canvas
    # canvas coordinates normalised for align_corners=False, g = (2 (q / 32 - origin) + 1) / side - 1 = q d + b:
    # exact here, as is the kernel's x = (g + 1) side / 2 - 1/2 (sides are powers of two, q integers)
    d = [2.0 / (TAB * k) for k in side]
    b = [(TAB // 2 - TAB * o) * dk - 1.0 for o, dk in zip(origin, d)]
    parts = _parts(n)  # the kernel parallelises over the batch only
    grid = torch.empty(parts, n // parts, n, 2, device=q.device)  # float32 [P,n/P,n,2]
    torch.addcmul(q.new_tensor(b), q, q.new_tensor(d), out=grid.view(n, n, 2))  # exact in float64, then cast
    return F.grid_sample(pixels.expand(parts, -1, -1, -1), grid, mode="bilinear",
                         padding_mode="zeros" if border == "zero" else "border", align_corners=False)  # [P,C,n/P,n]


def _power_of_two(count: int) -> int:
    """The smallest power of two >= ``count`` (>= 1)."""
    return 1 << max(count - 1, 0).bit_length()


def _parts(n: int) -> int:
    """The largest divisor of ``n`` up to the number of torch threads."""
    return max(k for k in range(1, min(torch.get_num_threads(), n) + 1) if n % k == 0)


def _canvas(image: torch.Tensor, q: torch.Tensor,
            border: str) -> Optional[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
    """The image region that samples at ``q`` [n,n,2] (1/32 pixel) read, as float32 [1,C,h,w] with power-of-two
    sides, its origin (x, y) and sides (w, h); None when it would exceed ``CANVAS_LIMIT`` pixels.

    Power-of-two sides make grid_sample's coordinate arithmetic exact (positions are multiples of 1/32). The region
    covers every pixel a sample reads; where samples reach past an image edge the region ends at that edge (so the
    kernel's border, clamped or zero, is the image's), and a region wider than the image is the image padded at
    the far end (replicated or zero)."""
    hgt, wid, _ = image.shape
    step = max(q.shape[0] - 1, 1)
    corners = q[::step, ::step].reshape(-1, 2).tolist()  # positions are monotonic in u and v: the extremes
    origin, side = [], []
    for first, last, size in zip(map(min, *corners), map(max, *corners), (wid, hgt)):
        first, last = math.floor(first / TAB), math.floor(last / TAB) + 1  # pixels read
        a, b = min(max(first, 0), size - 1), min(max(last, 0), size - 1)  # the image's pixels among them
        side.append(_power_of_two(b - a + 1))
        origin.append(max(0, min(a, size - side[-1])))
    (ox, oy), (sw, sh) = origin, side
    if sw * sh > CANVAS_LIMIT:
        return None
    region = image[oy:oy + sh, ox:ox + sw]  # [h,w,C] view (shorter than the side only at the image's far edge)
    pixels = region.permute(2, 0, 1)[None].float()  # [h,w,C] -> [1,C,h,w] (float copy in the region's layout)
    short_y, short_x = sh - region.shape[0], sw - region.shape[1]
    if short_x or short_y:
        pixels = F.pad(pixels, (0, short_x, 0, short_y), mode="constant" if border == "zero" else "replicate")
    return pixels, (ox, oy), (sw, sh)


def _separable(image: torch.Tensor, q: torch.Tensor,
               border: str) -> Optional[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
    """For an axis-aligned map (x depends on u only and y on v only: the detector's letterbox) whose region is too
    large for :func:`_canvas`: the two pixels around each sample column times the two around each sample row, [2n,2n]
    gathered by two index_selects (rows first: whole rows, then the columns), as a canvas in which sample (u, v) reads
    the block (2u, 2v) .. (2u + 1, 2v + 1); ``q`` [n,n,2] is rewritten to positions in it. None for a rotated map."""
    n = q.shape[0]
    if not (torch.equal(q[0, :, 0], q[-1, :, 0]) and torch.equal(q[:, 0, 1], q[:, -1, 1])):  # monotonic: ends decide
        return None
    picks = []
    for line, size in ((q[0, :, 0], image.shape[1]), (q[:, 0, 1], image.shape[0])):  # columns [n], then rows [n]
        first = torch.floor(line / TAB)
        pixels = torch.stack([first, first + 1], 1).view(-1).long()  # each sample's two pixels: [2n]
        outside = ((pixels < 0) | (pixels >= size)).nonzero()[:, 0] if border == "zero" else None
        picks.append((pixels.clamp_(0, size - 1), outside, line - first * TAB))  # (pixels, zero ones, 1/32 fraction)
    (cols, cols_out, fx), (rows, rows_out, fy) = picks
    block = image.index_select(0, rows).index_select(1, cols)  # [2n,2n,C] uint8 (or the frame's dtype)
    if border == "zero":  # pixels outside the image are zero
        block = block.index_fill_(0, rows_out, 0).index_fill_(1, cols_out, 0)
    side = _power_of_two(2 * n)
    canvas = F.pad(block.permute(2, 0, 1)[None].float(), (0, side - 2 * n, 0, side - 2 * n))  # [1,C,side,side]
    corner = torch.arange(n, device=q.device, dtype=q.dtype) * (2 * TAB)  # [n] block corners, 1/32 pixel
    q[..., 0] = corner[None, :] + fx[None, :]
    q[..., 1] = corner[:, None] + fy[:, None]
    return canvas, (0, 0), (side, side)


def _gather(image: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """:func:`sample` by reading each sample's four pixels from the 8-bit image (no float copy of a region);
    ``qx``, ``qy`` [n*n] int64 positions in 1/32 pixel."""
    hgt, wid, ch = image.shape
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


def _positions(matrix: torch.Tensor, n: int, device) -> torch.Tensor:
    """Image positions (x, y) of the tensor pixels (u, v) in 1/32 pixel, rounded: [n,n,2] float64 holding integers
    (row v, column u)."""
    g = torch.arange(n, device=device, dtype=torch.float64)[:, None]  # [n,1]
    m = torch.nan_to_num(matrix.to(device, torch.float64), nan=0.0, posinf=0.0, neginf=0.0) * TAB  # NaN ROIs: border
    across = g * m[:, 0]  # u M[:,0]: [n,2]
    down = g * m[:, 1] + m[:, 2]  # v M[:,1] + M[:,2]: [n,2]
    return (across[None] + down[:, None]).round_()  # [1,n,2] + [n,1,2] -> [n,n,2]


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


def project(points: torch.Tensor, rois: torch.Tensor, n: int, matrix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Tensor-pixel points [B,N,>=2] -> image pixels through each ROI (``matrix``: its :func:`roi_matrix`, when at
    hand); a third coordinate (depth, tensor pixels) is scaled like x (by w / n)."""
    m = roi_matrix(rois, n) if matrix is None else matrix  # [B,2,3]
    xy = torch.baddbmm(m[:, None, :, 2], points[..., :2].float(), m[:, :, :2].transpose(1, 2))  # [B,N,2]
    if points.shape[-1] < 3:
        return xy
    z = points[..., 2:3].float() * (rois[:, 2] / n)[:, None, None]
    return torch.cat([xy, z], -1)


def _square_rois(rows: torch.Tensor) -> torch.Tensor:
    """[B,8] (x0, y0, x1, y1) of a box and the two rotation points (p0, p1), image pixels -> square ROIs [B,5]: the
    box centre, its longer side times 1.5 (MediaPipe's square_long, scale 1.5) and the rotation from p0 to p1 (target
    angle 0), normalised to [-pi, pi). A few numbers per face: computed in Python floats; NaN stays NaN."""
    out = []
    for x0, y0, x1, y1, ax, ay, bx, by in rows.tolist():
        w, h = x1 - x0, y1 - y0
        side = (max(w, h) if w == w and h == h else math.nan) * ROI_SCALE  # NaN stays NaN, as in torch.maximum
        t = -math.atan2(-(by - ay), bx - ax)
        t = t - 2 * math.pi * math.floor((t + math.pi) / (2 * math.pi)) if math.isfinite(t) else math.nan
        out.append([(x0 + x1) / 2, (y0 + y1) / 2, side, side, t])
    dtype = rows.dtype if rows.is_floating_point() else torch.float32
    return torch.tensor(out, dtype=dtype, device=rows.device).view(-1, 5)  # [B,5]


def rois_from_detections(boxes: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Boxes [B,4] (x0, y0, x1, y1) and keypoints [B,K,2], image pixels -> face ROIs [B,5] (rotation from keypoint 0
    to keypoint 1)."""
    return _square_rois(torch.cat([boxes, keypoints[:, 0], keypoints[:, 1]], 1))


def rois_from_landmarks(landmarks: torch.Tensor) -> torch.Tensor:
    """Landmarks [B,N,>=2] in image pixels -> the next frame's face ROIs [B,5] (box of all landmarks, rotation from
    point 33 to point 263)."""
    lo, hi = landmarks[..., :2].aminmax(dim=1)  # [B,2] each
    a, b = ROTATION_POINTS
    return _square_rois(torch.cat([lo, hi, landmarks[:, a, :2], landmarks[:, b, :2]], 1))  # [B,8]
