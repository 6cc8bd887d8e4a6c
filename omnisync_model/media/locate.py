"""Weight-free face and mouth locator for real footage, AI clips, cartoons and animals.

Nothing is downloaded: a few image heuristics in plain torch at a reduced resolution; nothing a frame shows can
make it raise. Per frame:

1. Face candidates (working size, longest side ``work_size``): the salient blob (colour far from every border
   colour, or walled off from the top / left / right borders by edges: a minimum-barrier flood) and the two
   thickest skin blobs (YCrCb chroma). Holes are filled, a blob is the component around the deepest pixel of
   its chessboard distance transform, and its face box is the box of a morphological opening (drops a neck).
   A face score rates size, shape and solidity; uncorrelated noise scores 0.
2. Mouth, per candidate, in a square crop around the face box read from the full frame (``crop`` pixels): the
   strongest horizontal bar of lip evidence (luma black-hat: the lip line, an open mouth; local redness: lips)
   inside the face, on rows where the face is wide (not the chin or neck), weighted by a broad prior around
   the usual mouth position and by dark eye-like blobs at the matching place above. The candidate with the best
   weighted face x mouth score wins (skin is preferred: on real footage it is the surer cue).
3. Time: detections far from the running median are dropped, frames without a confident mouth are filled by
   linear interpolation between the nearest valid frames, then centres and boxes get a running median over
   ``smooth_frames`` frames. No valid frame at all: the frame centre, ``valid`` all False (uniform guidance in
   the pipeline) and a logged warning.

Shape legend: F frames, H, W frame size, N frames in a chunk, h, w working size, S mouth crop side.
Coordinates are normalised, x = pixel_x / W and y = pixel_y / H; boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from .floods import border_seeds, fill_holes, minimax_flood, thickest_blob

log = logging.getLogger(__name__)

_INF = float("inf")
_LUMA = (0.299, 0.587, 0.114)  # BT.601, as in YCrCb skin rules
_SKIN_CR = (0.02, 0.18)  # Cr - 0.5, i.e. 133..174 of 255
_SKIN_CB = (-0.2, 0.0)  # Cb - 0.5, i.e. 77..128 of 255
_FAR_COLOUR = 0.12  # RGB distance to every border colour that counts as salient
_MIN_BARRIER = 0.05  # edge barrier (gradient magnitude) that counts as salient
_BORDER_SAMPLES = 32  # border colours compared against
_CORE = 0.65  # blob core: chessboard distance >= _CORE x the blob's maximum
_MOUTH_V, _MOUTH_SIGMA = 0.45, 0.45  # prior: mouth at v = 0.45 of the face half-height below its centre
_DARK_FLOOR, _RED_FLOOR = 0.01, 0.004  # smallest face means that black-hat and redness are divided by
_EYE_SEPARATIONS = (0.2, 0.26, 0.32, 0.38, 0.44)  # eye distances tried, as fractions of the mouth crop side
_EYE_RISE = 1.05  # eye line above the mouth, in eye distances
_EYE_WEIGHT = 0.5  # share of the mouth score that depends on eyes above it
_CANDIDATE_WEIGHTS = (0.5, 1.0, 1.0)  # salient blob, skin blobs: skin is the surer cue on real footage
_STRENGTH = (0.6, 2.4)  # normalised mouth score mapped to strength 0 .. 1


@dataclass(frozen=True, eq=False)
class MouthTrack:
    """Per-frame mouth centres [F,2] (x, y), valid [F] bool, face boxes [F,4] (x0,y0,x1,y1), confidence [F], and,
    from the face mesh, the lip and jaw outline [F,K,2] (NaN rows where the mesh found nothing; None without a
    mesh) for the ``jaw`` paste-back mask."""

    centres: torch.Tensor
    valid: torch.Tensor
    face_boxes: torch.Tensor
    confidence: torch.Tensor
    jaw: Optional[torch.Tensor] = None

    def frames(self, start: int, end: int) -> "MouthTrack":
        """Frames start..end of the track."""
        jaw = None if self.jaw is None else self.jaw[start:end]
        return MouthTrack(self.centres[start:end], self.valid[start:end], self.face_boxes[start:end],
                          self.confidence[start:end], jaw)

    def __len__(self) -> int:
        return int(self.centres.shape[0])


@dataclass(frozen=True)
class LocateOptions:
    """Longest side of the face search, mouth crop side, running-median window in frames (odd, 1 = none; 5 frames
    are 0.2 s at 25 fps), window of the median that detections must stay near (< 3 = no outlier test), valid
    threshold, and frames searched at once."""

    work_size: int = 160
    crop: int = 64
    smooth_frames: int = 5
    outlier_frames: int = 9
    min_confidence: float = 0.35
    chunk: int = 64

    def __post_init__(self) -> None:
        if self.work_size < 16 or self.crop < 16 or self.chunk < 1 or self.smooth_frames < 1:
            raise ValueError(f"invalid locate options {self}")


# --- Small image helpers (all on [N,C,h,w] float) ------------------------------------------------------------------


def _to_float(chunk: torch.Tensor) -> torch.Tensor:
    """uint8 or float [N,H,W,C] -> float32 [N,3,H,W] in 0..1 (grey and alpha handled, NaN -> 0)."""
    x = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else torch.nan_to_num(chunk.float())
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)  # grey -> RGB
    return x[..., :3].permute(0, 3, 1, 2).clamp(0.0, 1.0)  # [N,H,W,3] -> [N,3,H,W]


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    same = tuple(x.shape[-2:]) == tuple(hw)
    return x if same else F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)


def _downscale(frames: torch.Tensor, size: int, step: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """[F,H,W,C] -> (small [F,3,h,w] with max(h, w) ~ size, scale [4]: work-normalised -> frame-normalised).

    Block means over k x k pixels (k = max(H, W) // size) of a view strided by ~k / 4: fast on 1080p and 4K. The
    last H % k rows and W % k columns are dropped; ``scale`` accounts for that.
    """
    n, hgt, wid = frames.shape[:3]
    k = max(1, min(max(hgt, wid) // size, min(hgt, wid)))  # block side, at most the shorter frame side
    stride = max(1, k // 4)  # read every stride-th pixel of each block
    k = k // stride * stride
    b, hh, ww = k // stride, hgt // k * k, wid // k * k  # samples per block side, covered size
    out = []
    for i in range(0, n, step):
        x = frames[i:i + step, :hh:stride, :ww:stride].cpu().float()  # [n,hh/stride,ww/stride,C], on the CPU
        if frames.dtype == torch.uint8:
            x = x / 255.0
        x = x.reshape(x.shape[0], hh // k, b, ww // k, b, x.shape[-1]).mean((2, 4))  # -> [n,hh/k,ww/k,C]
        x = _to_float(x).contiguous()  # -> [n,3,hh/k,ww/k]
        if max(x.shape[-2:]) > 1.25 * size:  # small frames (k = 1) larger than the working size
            f = size / max(x.shape[-2:])
            x = _resize(x, (max(8, round(x.shape[-2] * f)), max(8, round(x.shape[-1] * f))))
        out.append(x)
    scale = torch.tensor([ww / wid, hh / hgt, ww / wid, hh / hgt], dtype=torch.float32)
    return torch.cat(out), scale


def _smooth(x: torch.Tensor, k: int = 3, kw: int | None = None) -> torch.Tensor:
    """Box average over k x kw (odd; kw defaults to k) pixels, separable, edges averaged over pixels inside."""
    kw = k if kw is None else kw
    x = F.avg_pool2d(x, (1, kw), 1, (0, kw // 2), count_include_pad=False) if kw > 1 else x
    return F.avg_pool2d(x, (k, 1), 1, (k // 2, 0), count_include_pad=False) if k > 1 else x


def _dilate(m: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Maximum over a k x k square (odd k), separable."""
    m = F.max_pool2d(m, (1, k), 1, (0, k // 2))
    return F.max_pool2d(m, (k, 1), 1, (k // 2, 0))


def _erode(m: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Minimum over a k x k square (odd k)."""
    return -_dilate(-m, k)


def _odd(v: float) -> int:
    return max(3, int(round(v)) | 1)


def _ycc(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB [N,3,h,w] -> Y, Cr - 0.5, Cb - 0.5, each [N,1,h,w]."""
    y = _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]
    return y, 0.713 * (x[:, 0:1] - y), 0.564 * (x[:, 2:3] - y)


# --- Stage 1: face boxes at the working size -----------------------------------------------------------------------


def _border_colour_distance(xs: torch.Tensor) -> torch.Tensor:
    """[N,1,h,w]: RGB distance from each pixel to the nearest of ``_BORDER_SAMPLES`` border colours (computed at
    half resolution on frames of 64 pixels or more)."""
    n, c, h, w = xs.shape
    small = F.avg_pool2d(xs, 2, ceil_mode=True) if min(h, w) >= 64 else xs
    ring = torch.cat([xs[..., 0, :], xs[..., :, -1], xs[..., -1, :].flip(-1), xs[..., :, 0].flip(-1)], -1)  # [N,3,L]
    idx = torch.linspace(0, ring.shape[-1] - 1, _BORDER_SAMPLES).round().long()
    samples = ring[..., idx]  # [N,3,K]
    pix = small.flatten(2)  # [N,3,P]
    d2 = (pix * pix).sum(1)[:, :, None] + (samples * samples).sum(1)[:, None, :] \
        - 2.0 * torch.bmm(pix.transpose(1, 2), samples)  # [N,P,1] + [N,1,K] - [N,P,K]
    d = d2.min(-1).values.clamp(min=0).sqrt().view(n, 1, *small.shape[-2:])  # [N,P] -> [N,1,h',w']
    return F.interpolate(d, size=(h, w), mode="nearest") if d.shape[-2:] != (h, w) else d


def _edges(xs: torch.Tensor) -> torch.Tensor:
    """Colour gradient magnitude [N,1,h,w] from central differences (replicated edges)."""
    p = F.pad(xs, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) * 0.5
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) * 0.5
    return (gx * gx + gy * gy).sum(1, keepdim=True).sqrt()


def _salient(xs: torch.Tensor) -> torch.Tensor:
    """Binary [N,1,h,w]: far from the border colours, or walled off from the top / left / right borders by edges
    stronger than those crossed inside the background (busy backgrounds raise the bar)."""
    edges = _edges(xs)
    barrier = minimax_flood(edges, border_seeds(edges, bottom=False))
    n, _, h, w = xs.shape
    m = max(1, round(0.08 * min(h, w)))
    ring = torch.cat([barrier[..., :m, :].flatten(1), barrier[..., m:, :m].flatten(1),
                      barrier[..., m:, -m:].flatten(1)], 1)  # [N, pixels near the top / left / right borders]
    level = ring.quantile(0.9, dim=1).view(n, 1, 1, 1)
    far = _border_colour_distance(xs) > _FAR_COLOUR
    mask = (far | (barrier > torch.clamp(1.5 * level, min=_MIN_BARRIER))).float()
    return fill_holes(_erode(_dilate(mask)))  # close 1-pixel gaps, then fill


def _skin(xs: torch.Tensor) -> torch.Tensor:
    y, cr, cb = _ycc(xs)
    ok = (cr > _SKIN_CR[0]) & (cr < _SKIN_CR[1]) & (cb > _SKIN_CB[0]) & (cb < _SKIN_CB[1]) & (y > 0.12)
    return ok.float()


def _span(on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and last index + 1 where ``on`` [N,L] is True (+inf / -inf + 1 where it never is)."""
    ar = torch.arange(on.shape[1], dtype=torch.float32)
    return torch.where(on, ar, _INF).min(1).values, torch.where(on, ar, -_INF).max(1).values + 1.0


def _opened_box(blob: torch.Tensor, dist: torch.Tensor, dmax: torch.Tensor) -> torch.Tensor:
    """Box [N,4] pixels (x0,y0,x1,y1) of the blob's core (distance >= ``_CORE`` dmax) grown by that distance: the
    box of a morphological opening, which drops parts narrower than about 1.3 dmax (a neck under a face)."""
    core = (blob > 0) & (dist >= _CORE * dmax.view(-1, 1, 1, 1))
    (x0, x1), (y0, y1) = _span(core.any(-2).flatten(1)), _span(core.any(-1).flatten(1))  # [N,w], [N,h] -> [N]
    grow = _CORE * dmax + 0.5
    return torch.stack([x0 - grow, y0 - grow, x1 + grow, y1 + grow], 1)


def _structure(xs: torch.Tensor) -> torch.Tensor:
    """[N] in 0..1: 0 for pixel noise, 1 for images with spatially coherent structure. Edge strength on a 2x
    coarser image over that on the image (median and 90th percentile, the larger) is ~1 for uncorrelated noise
    and >= 1.15 for drawn or filmed content."""
    q = torch.tensor([0.5, 0.9])
    fine = _edges(xs).flatten(1).quantile(q, dim=1)  # [2,N]
    coarse = _edges(F.avg_pool2d(xs, 2, ceil_mode=True)).flatten(1).quantile(q, dim=1)
    ratio = (coarse / fine.clamp(min=1e-6)).amax(0)
    return ((ratio - 1.07) / 0.08).clamp(0, 1)


def _face_candidates(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """x [N,3,h,w] -> [(boxes [N,4] work-normalised, blob [N,1,h,w], face score [N] in 0..1)] for the salient
    blob and the two thickest skin blobs (a face next to hands, say)."""
    xs = _smooth(x)
    structure = _structure(xs)
    skin = fill_holes(_erode(_dilate(_skin(xs))))
    first = _candidate(skin)
    second = _candidate(skin * (1.0 - _dilate(first[1])))
    cands = [_candidate(_salient(xs)), first, second]
    return [(boxes, blob, score * structure) for boxes, blob, score in cands]


def _candidate(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = mask.shape[-2:]
    blob, dist, dmax = thickest_blob(mask)
    boxes = _opened_box(blob, dist, dmax)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    boxes = torch.minimum(torch.maximum(boxes, torch.zeros(4)), scale) / scale
    return boxes, blob, _face_score(blob, dmax, boxes)


def _face_score(blob: torch.Tensor, dmax: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """1 for a compact blob of plausible size and shape, falling to 0 for specks, frame-filling, very elongated or
    hollow boxes, blobs that are mostly thin appendages, and boxes that run along several frame edges."""
    n, _, h, w = blob.shape
    x0, y0, x1, y1 = (boxes * torch.tensor([w, h, w, h])).unbind(1)  # pixels
    xs, ys = torch.arange(w).view(1, 1, w) + 0.5, torch.arange(h).view(1, h, 1) + 0.5
    inside = (xs >= x0.view(n, 1, 1)) & (xs <= x1.view(n, 1, 1)) & (ys >= y0.view(n, 1, 1)) & (ys <= y1.view(n, 1, 1))
    total = blob.flatten(1).sum(1)
    in_box = (blob[:, 0] * inside).flatten(1).sum(1)
    box_px = ((x1 - x0) * (y1 - y0)).clamp(min=1.0)
    area = total / (h * w)  # fraction of the frame
    size_ok = ((area - 0.005) / 0.015).clamp(0, 1) * ((0.7 - area) / 0.2).clamp(0, 1)
    aspect = (y1 - y0) / (x1 - x0).clamp(min=1e-3)
    shape_ok = ((aspect - 0.4) / 0.3).clamp(0, 1) * ((2.8 - aspect) / 0.6).clamp(0, 1)
    solid_ok = ((in_box / box_px - 0.35) / 0.2).clamp(0, 1)
    core_ok = ((in_box / total.clamp(min=1.0) - 0.4) / 0.2).clamp(0, 1)
    touch = (boxes[:, 0] < 0.01).float() + (boxes[:, 1] < 0.01).float() + (boxes[:, 2] > 0.99).float() \
        + (boxes[:, 3] > 0.99).float()
    edge_ok = torch.where(touch >= 2, 0.4 ** (touch - 1), torch.ones_like(touch))
    return size_ok * shape_ok * solid_ok * core_ok * edge_ok * (dmax >= 2).float()


# --- Stage 2: the mouth inside each face crop ----------------------------------------------------------------------


_MARGIN = 0.12  # mouth crop: a square around the face box, its longer side plus this fraction on each side


def _crop_frames(frames: torch.Tensor, blob: torch.Tensor, wins: torch.Tensor, scale: torch.Tensor, size: int,
                 idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop windows [N,4] (work-normalised) of frames ``idx`` from the full frames [N,H,W,C] and from the blob
    [N,1,h,w] -> crops [n,3,S,S], masks [n,1,S,S] (n = len(idx))."""
    crops = [_crop_one(frames[i], wins[i] * scale, size) for i in idx]
    masks = [_crop_one(blob[i].permute(1, 2, 0), wins[i], size)[:, :1] for i in idx]  # [1,h,w] -> [h,w,1]
    return torch.cat(crops), (torch.cat(masks) > 0.5).float()


def _square_windows(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Normalised boxes [N,4] of an h x w image -> normalised square windows (equal sides in pixels) [N,4]."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = torch.maximum((boxes[:, 2] - boxes[:, 0]) * w, (boxes[:, 3] - boxes[:, 1]) * h) * (0.5 + _MARGIN)
    half = half.clamp(min=2.0)  # pixels
    return torch.stack([cx - half / w, cy - half / h, cx + half / w, cy + half / h], 1)


def _crop_one(img: torch.Tensor, win: torch.Tensor, size: int) -> torch.Tensor:
    """[H,W,C] window (normalised; may leave the frame: edge pixels repeat) -> float [1,3,S,S]."""
    hgt, wid = img.shape[:2]
    x0, x1 = int(torch.floor(win[0] * wid)), int(torch.ceil(win[2] * wid))
    y0, y1 = int(torch.floor(win[1] * hgt)), int(torch.ceil(win[3] * hgt))
    x0, y0 = min(max(x0, -wid), wid - 1), min(max(y0, -hgt), hgt - 1)  # at least one pixel inside the frame
    x1, y1 = max(min(x1, 2 * wid), x0 + 1, 1), max(min(y1, 2 * hgt), y0 + 1, 1)
    step = max(1, min(x1 - x0, y1 - y0) // (2 * size))  # big windows: read every step-th pixel first
    region = _to_float(img[None, max(0, y0):min(hgt, y1):step, max(0, x0):min(wid, x1):step].cpu())  # [1,3,h',w']
    pad = tuple(-(-p // step) for p in (max(0, -x0), max(0, x1 - wid), max(0, -y0), max(0, y1 - hgt)))
    if any(pad):
        region = F.pad(region, pad, mode="replicate")
    return _resize(region, (size, size))


def _face_mean(m: torch.Tensor, masks: torch.Tensor, floor: float) -> torch.Tensor:
    """Mean of m [N,1,S,S] over the face mask, at least ``floor``: [N,1,1,1]."""
    inside = masks.flatten(1).sum(1).clamp(min=1.0)
    return ((m * masks).flatten(1).sum(1) / inside).clamp(min=floor).view(-1, 1, 1, 1)


def _maps(crops: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip evidence as a horizontal bar [N,1,S,S] inside the eroded face blob, and eye evidence [N,1,S,S].

    Cues: luma black-hat (thin dark structure: the lip line, an open mouth, eyes) and local redness (Cr above its
    neighbourhood: lips), each divided by its mean over the face (with a floor, so a face without any red does not
    amplify noise). Lips average the two over a horizontal bar; eyes are blurred black-hat blobs.
    """
    s = crops.shape[-1]
    y, cr, _ = _ycc(_smooth(crops))
    k = _odd(0.11 * s)
    blackhat = (_erode(_dilate(y, k), k) - y).clamp(min=0)  # closing - image: thin dark structure
    blackhat = blackhat / _face_mean(blackhat, masks, _DARK_FLOOR)
    k2 = _odd(0.27 * s)
    redness = (cr - _smooth(cr, k2)).clamp(min=0)
    redness = redness / _face_mean(redness, masks, _RED_FLOOR)
    ev = 0.5 * (blackhat + redness + (blackhat * redness).sqrt())  # a bonus where dark and red agree: lips
    bar = (_odd(0.05 * s), _odd(0.2 * s))  # (height, width) of the horizontal averaging bar
    lips = _smooth(ev, *bar)
    eyes = _smooth(_smooth(blackhat, _odd(0.1 * s)), _odd(0.1 * s))  # ~ Gaussian, sigma 0.04 s
    rows = masks.sum(-1, keepdim=True)  # [N,1,S,1] face width per row
    wide = ((rows / rows.amax(-2, keepdim=True).clamp(min=1.0) - 0.45) / 0.2).clamp(0, 1)  # not chin, not neck
    return lips * _erode(masks, _odd(0.07 * s)) * wide, eyes


def _shifted(m: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[..., y, x] = m[..., y + dy, x + dx] (zero outside)."""
    p = max(abs(dx), abs(dy))
    padded = F.pad(m, (p, p, p, p))
    h, w = m.shape[-2:]
    return padded[..., p + dy:p + dy + h, p + dx:p + dx + w]


def _eye_support(eyes: torch.Tensor) -> torch.Tensor:
    """[N,1,S,S]: for a mouth at each pixel, the best (over face scales) mean evidence at the two eye positions
    (eye separation d, eye line d above the mouth)."""
    s = eyes.shape[-1]
    best = torch.zeros_like(eyes)
    for frac in _EYE_SEPARATIONS:
        d = frac * s
        half, up = int(round(d / 2)), int(round(_EYE_RISE * d))
        pair = torch.minimum(_shifted(eyes, -half, -up), _shifted(eyes, half, -up))  # both eyes must be there
        best = torch.maximum(best, pair)
    return best


def _mouth_prior(boxes: torch.Tensor, wins: torch.Tensor, size: int) -> torch.Tensor:
    """[N,1,S,S] Gaussian around the expected mouth position in face-box units (u, v in -1..1 over the box)."""
    p = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # crop coordinates 0..1
    span = wins[:, 2:] - wins[:, :2]  # [N,2]
    lo = (boxes[:, :2] - wins[:, :2]) / span  # face box in crop coordinates [N,2]
    hi = (boxes[:, 2:] - wins[:, :2]) / span
    mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp(min=1e-3)
    u = (p.view(1, -1) - mid[:, 0:1]) / half[:, 0:1]  # [N,S]
    v = (p.view(1, -1) - mid[:, 1:2]) / half[:, 1:2]  # [N,S]
    gu = torch.exp(-0.5 * (u / _MOUTH_SIGMA) ** 2)
    gv = torch.exp(-0.5 * ((v - _MOUTH_V) / _MOUTH_SIGMA) ** 2)
    return (gv[:, :, None] * gu[:, None, :])[:, None]  # [N,S,1] x [N,1,S] -> [N,1,S,S]


def _mouth_stage(crops: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                 wins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mouth centres [N,2] (normalised like ``wins``), mouth score [N] (>= 0; above ~2 is mouth-like)."""
    s = crops.shape[-1]
    lips, eyes = _maps(crops, masks)
    support = _eye_support(eyes)
    support = support / support.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1)  # 0..1
    score = lips * (1.0 - _EYE_WEIGHT + _EYE_WEIGHT * support) * _mouth_prior(boxes, wins, s)
    peak, idx = score.flatten(1).max(1)
    cy, cx = (idx // s).float() + 0.5, (idx % s).float() + 0.5  # crop pixels
    x = wins[:, 0] + (wins[:, 2] - wins[:, 0]) * cx / s
    y = wins[:, 1] + (wins[:, 3] - wins[:, 1]) * cy / s
    return torch.stack([x, y], 1), peak


# --- Per chunk, and the public entry -------------------------------------------------------------------------------


def _locate_chunk(frames: torch.Tensor, small: torch.Tensor, scale: torch.Tensor, opts: LocateOptions):
    """frames [N,H,W,C] (any dtype), small [N,3,h,w] -> (centres [N,2], face boxes [N,4], confidence [N]).

    Each face candidate (salient blob, two skin blobs) gets a mouth search; per frame the candidate with the best
    weight x face score x mouth score wins. Confidence = face score x mouth score mapped to 0..1.
    """
    best, best_rank = None, None
    n = frames.shape[0]
    for weight, (boxes, blob, face) in zip(_CANDIDATE_WEIGHTS, _face_candidates(small)):
        centres, peak = torch.full((n, 2), 0.5), torch.zeros(n)
        idx = torch.nonzero(face > 0, as_tuple=True)[0]  # frames where this candidate may be a face
        if idx.numel():
            wins = _square_windows(boxes, small.shape[-2], small.shape[-1])
            crops, masks = _crop_frames(frames, blob, wins, scale, opts.crop, idx.tolist())
            centres[idx], peak[idx] = _mouth_stage(crops, masks, boxes[idx], wins[idx])
        excess = (peak - _STRENGTH[0]).clamp(min=0)
        rank = weight * face * excess
        cand = (centres * scale[:2], boxes * scale, face * (excess / (_STRENGTH[1] - _STRENGTH[0])).clamp(max=1))
        if best is None:
            best, best_rank = cand, rank
            continue
        take = rank > best_rank  # [N]
        best = tuple(torch.where(take.view(-1, *[1] * (c.dim() - 1)), c, b) for c, b in zip(cand, best))
        best_rank = torch.maximum(rank, best_rank)
    return best


def locate_mouths(frames: torch.Tensor, options: LocateOptions = LocateOptions()) -> MouthTrack:
    """Find the mouth in every frame of [F,H,W,C] (float 0..1 or uint8). Never raises for what frames show."""
    locator = MouthLocator(options)
    locator.add(frames)
    return locator.finish()


class MouthLocator:
    """:func:`locate_mouths` fed chunk by chunk, for videos that do not fit in memory: ``add`` frames in pieces of
    any size, then ``finish`` returns the same track as one call on all frames. Only ``options.chunk`` frames and
    a few numbers per frame are kept."""

    def __init__(self, options: LocateOptions = LocateOptions()):
        self.options = options
        self._pending: list[torch.Tensor] = []  # frames not yet searched, fewer than options.chunk in all
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (centres, boxes, confidence)
        self._size: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return sum(p[0].shape[0] for p in self._parts) + sum(f.shape[0] for f in self._pending)

    def add(self, frames: torch.Tensor) -> None:
        if frames.dim() == 3:
            frames = frames[None]  # one frame [H,W,C] -> [1,H,W,C]
        if frames.dim() != 4 or min(frames.shape[1:3]) < 1:
            raise ValueError(f"frames must be [frames, height, width, channels], got {list(frames.shape)}")
        if self._size is not None and tuple(frames.shape[1:3]) != self._size:
            raise ValueError(f"frames changed size from {self._size[1]}x{self._size[0]} to "
                             f"{frames.shape[2]}x{frames.shape[1]}")
        self._size = tuple(frames.shape[1:3])
        self._pending.append(frames)
        chunk = self.options.chunk
        while sum(f.shape[0] for f in self._pending) >= chunk:
            self._search(self._take(chunk))

    def _take(self, k: int) -> torch.Tensor:
        """The first ``k`` pending frames (no copy when one piece holds them all)."""
        out, need = [], k
        while need:
            head = self._pending[0]
            out.append(head[:need])
            if head.shape[0] > need:
                self._pending[0] = head[need:]
                need = 0
            else:
                self._pending.pop(0)
                need -= head.shape[0]
        return out[0] if len(out) == 1 else torch.cat(out)

    def _search(self, frames: torch.Tensor) -> None:
        small, scale = _downscale(frames, self.options.work_size)
        self._parts.append(_locate_chunk(frames, small, scale, self.options))

    def finish(self) -> MouthTrack:
        rest = sum(f.shape[0] for f in self._pending)
        if rest:
            self._search(self._take(rest))
        if not self._parts:
            raise ValueError("frames must be [frames, height, width, channels] with at least one frame, got none")
        centres, boxes, conf = (torch.cat(p) for p in zip(*self._parts))
        opts = self.options
        return finish_track(centres, boxes, conf, conf >= opts.min_confidence, opts.smooth_frames,
                            opts.outlier_frames)


# --- Tracks over time, user masks, previews ------------------------------------------------------------------------


def fill_invalid(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[F,D] values: rows where ``valid`` [F] is False are linearly interpolated between the nearest valid rows
    (copied from the nearest one at either end). All invalid: returned unchanged."""
    idx = torch.nonzero(valid, as_tuple=True)[0]
    if idx.numel() == 0 or idx.numel() == valid.numel():
        return values.clone()
    t = torch.arange(valid.numel())
    right = torch.searchsorted(idx, t).clamp(max=idx.numel() - 1)  # first valid index >= t (or the last)
    left = (right - 1).clamp(min=0)
    left = torch.where(idx[right] <= t, right, left)  # t itself valid, or past the last valid frame
    a, b = idx[left], idx[right]
    w = torch.where(b > a, (t - a).float() / (b - a).clamp(min=1).float(), torch.zeros(t.shape))
    w = w.clamp(0, 1)[:, None]
    return values[a] * (1 - w) + values[b] * w


def median_smooth(values: torch.Tensor, frames: int) -> torch.Tensor:
    """Running median over ``frames`` (odd; even numbers round up) of [F,D] values, edges replicated."""
    half = max(0, int(frames) // 2)
    if half == 0 or values.shape[0] < 2:
        return values.clone()
    padded = torch.cat([values[:1].expand(half, -1), values, values[-1:].expand(half, -1)])  # [F+2h,D]
    return padded.unfold(0, 2 * half + 1, 1).median(-1).values  # [F,D,2h+1] -> [F,D]


def reject_outliers(centres: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """valid [F] with frames removed whose centre is further than 0.3 face sizes from the running median (over
    ``window`` frames) of the valid centres: isolated wrong detections (a hand, the chin) are then refilled."""
    if int(valid.sum()) < 3 or window < 3:
        return valid
    med = median_smooth(fill_invalid(centres, valid), window)  # [F,2]
    size = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # [F]
    size = median_smooth(fill_invalid(size[:, None], valid), window)[:, 0]
    return valid & ((centres - med).norm(dim=1) <= (0.3 * size).clamp(min=0.02))


def uniform_track(n_frames: int) -> MouthTrack:
    """No mouth information: frame centres, all invalid (guidance is then uniform), whole-frame face boxes."""
    return MouthTrack(torch.full((n_frames, 2), 0.5), torch.zeros(n_frames, dtype=torch.bool),
                      torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n_frames, 1), torch.zeros(n_frames))


def finish_track(centres: torch.Tensor, boxes: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor,
                 smooth_frames: int, outlier_frames: int = 0) -> MouthTrack:
    """Drop outliers (see :func:`reject_outliers`, off when ``outlier_frames`` < 3), fill invalid frames from their
    valid neighbours, median-smooth over ``smooth_frames``, and fall back to the frame centre (with a warning)
    when no frame is valid."""
    valid = valid.bool() & torch.isfinite(centres).all(1) & torch.isfinite(boxes).all(1)
    if not bool(valid.any()):
        log.warning("no face or mouth found in any of %d frames: using the frame centre and uniform guidance",
                    centres.shape[0])
        return uniform_track(centres.shape[0])
    valid = reject_outliers(centres, boxes, valid, outlier_frames)
    both = fill_invalid(torch.cat([centres, boxes], 1), valid)  # [F,6]
    both = median_smooth(both, smooth_frames)
    conf = torch.where(valid, confidence.float(), torch.zeros_like(confidence, dtype=torch.float32))
    return MouthTrack(both[:, :2].contiguous(), valid, both[:, 2:].contiguous(), conf)


def mask_to_mouths(mask: torch.Tensor, smooth_frames: int = 1) -> MouthTrack:
    """Mouth track from a user MASK [F,H,W] (or [H,W]) in 0..1: the weighted centroid of each frame's mask and
    the box of its nonzero pixels. Empty frames are filled from their neighbours like frames without a face."""
    m = mask.float().cpu()
    if m.dim() == 2:
        m = m[None]  # [H,W] -> [1,H,W]
    if m.dim() != 3:
        raise ValueError(f"mask must be [frames, height, width], got {list(mask.shape)}")
    m = torch.nan_to_num(m).clamp(0, 1)
    n, hgt, wid = m.shape
    ys = (torch.arange(hgt, dtype=torch.float32) + 0.5) / hgt
    xs = (torch.arange(wid, dtype=torch.float32) + 0.5) / wid
    total = m.sum((1, 2))  # [F]
    cx = (m.sum(1) * xs).sum(1) / total.clamp(min=1e-8)  # [F,W] -> [F]
    cy = (m.sum(2) * ys).sum(1) / total.clamp(min=1e-8)  # [F,H] -> [F]
    valid = total > 1e-6
    (x0, x1), (y0, y1) = _span(m.amax(1) > 0), _span(m.amax(2) > 0)  # [F,W], [F,H] -> [F]
    boxes = torch.stack([x0 / wid, y0 / hgt, x1 / wid, y1 / hgt], 1)
    return finish_track(torch.stack([cx, cy], 1), boxes, valid.float(), valid, smooth_frames)


def mouth_mask_preview(track: MouthTrack, height: int, width: int, radius: float = 0.08) -> torch.Tensor:
    """[F,H,W] float: a soft disc (1 inside, a ramp of a quarter radius at the edge) of ``radius`` x min(H, W)
    pixels at each mouth centre; zeros on frames where the track is not valid."""
    r = max(1.0, radius * min(height, width))
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5  # [H,1]
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5  # [1,W]
    out = torch.zeros(len(track), height, width)
    for i in torch.nonzero(track.valid, as_tuple=True)[0].tolist():
        cx, cy = track.centres[i, 0].item() * width, track.centres[i, 1].item() * height
        d = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)  # [H,W] pixels
        out[i] = ((r - d) / max(1.0, 0.25 * r) + 0.5).clamp(0, 1)
    return out
