"""Crop a region of interest (the face) out of frames at the model's resolution, and paste results back.

Pixels outside the box are never touched by :func:`paste_back` (bit-exact). Inside, a feathered edge blends the
result into the original, after matching the result's colour statistics near the edge to the original's.
Boxes are integer pixel (x, y, w, h), either one :class:`Box` for all frames or one per frame, a [F,4] integer
tensor; the single-box functions are the per-frame ones with the box repeated. :func:`crop_boxes_from_track`
turns a located face track into per-frame boxes of constant size (constant crop resolution) that follow the
face smoothly.

Shape legend: F frames, H, W frame size, h, w box size, S working size (height, width).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Optional

import torch
import torch.nn.functional as F

from .locate import MouthTrack


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> "Box":
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"box must be 'x,y,width,height' in pixels, got {text!r}") from None
        return cls(x, y, w, h)

    def check(self, height: int, width: int) -> "Box":
        if self.w < 8 or self.h < 8:
            raise ValueError(f"box {self} is smaller than 8x8 pixels")
        if self.x < 0 or self.y < 0 or self.x + self.w > width or self.y + self.h > height:
            raise ValueError(f"box {self} does not fit inside the {width}x{height} frame")
        return self


def working_size(box: Box, size: int, multiple: int) -> tuple[int, int]:
    """(height, width) the box is resized to: the longer side becomes ``size``, both sides multiples."""
    scale = size / max(box.w, box.h)
    h = max(multiple, int(round(box.h * scale / multiple)) * multiple)
    w = max(multiple, int(round(box.w * scale / multiple)) * multiple)
    return h, w


def resize(frames: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[F,H,W,3] -> [F,h,w,3] with antialiased bilinear resampling (float32)."""
    x = frames.float().permute(0, 3, 1, 2)  # [F,H,W,3] -> [F,3,H,W]
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1)  # -> [F,h,w,3]


def crop(frames: torch.Tensor, box: Box, hw: tuple[int, int]) -> torch.Tensor:
    """Crop ``box`` from float or uint8 frames [F,H,W,3] and resize it to ``hw``: float32 [F,h,w,3]."""
    return crop_per_frame(frames, repeat_box(box, frames.shape[0]), hw)


PASTE_CHUNK = 16  # frames cropped / blended at once


def crop_per_frame(frames: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Crop frame i's box ``boxes[i]`` (x, y, w, h pixels) from float or uint8 frames [F,H,W,3] and resize each
    crop to ``hw``: float32 [F,h,w,3]."""
    boxes = check_boxes(boxes, frames.shape[0], frames.shape[1], frames.shape[2])
    out = torch.empty((frames.shape[0], hw[0], hw[1], 3), dtype=torch.float32, device=frames.device)
    for group, (bw, bh) in _size_groups(boxes):
        for k in range(0, len(group), PASTE_CHUNK):  # a few frames at a time: temporaries stay small
            idx = group[k:k + PASTE_CHUNK]
            region = torch.stack([frames[i, y:y + bh, x:x + bw] for i, (x, y) in zip(idx, boxes[idx, :2].tolist())])
            region = region.float() / 255.0 if frames.dtype == torch.uint8 else region.float()  # [n,bh,bw,3]
            out[idx] = resize(region, hw)
    return out


def feather_mask(h: int, w: int, feather: int) -> torch.Tensor:
    """[h,w,1] mask: 1 inside, a raised-cosine ramp to 0 over ``feather`` pixels at the edges."""
    def ramp(n: int) -> torch.Tensor:
        d = torch.minimum(torch.arange(n), torch.arange(n).flip(0)).float() + 0.5  # distance to nearest edge
        r = (d / max(feather, 1)).clamp(max=1.0)
        return 0.5 - 0.5 * torch.cos(torch.pi * r)
    return (ramp(h)[:, None] * ramp(w)[None, :])[..., None]


def match_colour(result: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift each channel of ``result`` so its mean over the edge band (mask < 1) equals the original's."""
    band = (mask < 0.999).float()  # [h,w,1]
    denom = band.sum().clamp(min=1.0)
    diff = ((original - result) * band).sum(dim=(1, 2), keepdim=True) / denom  # [F,1,1,3]
    return (result + diff).clamp(0, 1)


def paste_back(full: torch.Tensor, result: torch.Tensor, box: Box, feather: int = 16) -> torch.Tensor:
    """Paste ``result`` [F,h',w',3] (any size) into ``full`` [F,H,W,3] at ``box``; returns a new tensor.

    ``full`` may be uint8 or float; the output has its dtype. Only pixels inside the box can change.
    """
    return paste_back_per_frame(full, result, repeat_box(box, full.shape[0]), feather)


def paste_back_per_frame(full: torch.Tensor, result: torch.Tensor, boxes: torch.Tensor,
                         feather: int = 16, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Paste frame i of ``result`` [F,h',w',3] (any size) into frame i of ``full`` [F,H,W,3] at ``boxes[i]``
    (x, y, w, h pixels); returns a new tensor of ``full``'s dtype (uint8 or float). Each result is resized to its
    box, shifted to the original's colour over the feather band, and blended in with a raised-cosine edge; pixels
    outside each frame's box are copied bit-exactly. ``weights`` [F,h'',w''] (any size, resized to the box) scale
    the blend per pixel, e.g. a soft mouth disc so that only the mouth is taken from the result."""
    boxes = check_boxes(boxes, full.shape[0], full.shape[1], full.shape[2])
    if result.shape[0] != full.shape[0]:
        raise ValueError(f"result has {result.shape[0]} frames, full has {full.shape[0]}")
    out = full.clone()
    is_u8 = full.dtype == torch.uint8
    for group, (bw, bh) in _size_groups(boxes):
        for k in range(0, len(group), PASTE_CHUNK):  # a few frames at a time: temporaries stay small
            idx = group[k:k + PASTE_CHUNK]
            _paste_group(out, full, result, boxes, idx, bw, bh, feather, weights, is_u8)
    return out


def _paste_group(out, full, result, boxes, idx, bw, bh, feather, weights, is_u8) -> None:
    """Paste frames ``idx`` (boxes all bw x bh) of ``result`` into ``out``; see :func:`paste_back_per_frame`."""
    corners = boxes[idx, :2].tolist()
    region = torch.stack([full[i, y:y + bh, x:x + bw] for i, (x, y) in zip(idx, corners)])  # [n,bh,bw,3]
    orig = region.float() / 255.0 if is_u8 else region.float()
    mask = feather_mask(bh, bw, feather).to(orig.device)  # [bh,bw,1]
    res = match_colour(resize(result[idx].to(orig.device), (bh, bw)), orig, mask)
    if weights is not None:  # per-pixel blend weights [n,h'',w''] -> [n,bh,bw,1]
        mask = mask * resize(weights[idx].unsqueeze(-1), (bh, bw)).to(orig.device)
    blended = mask * res + (1 - mask) * orig
    if is_u8:
        blended = (blended * 255.0).round().clamp(0, 255).to(torch.uint8)
    for j, (i, (x, y)) in enumerate(zip(idx, corners)):
        out[i, y:y + bh, x:x + bw] = blended[j].to(full.dtype)


def check_boxes(boxes: torch.Tensor, n: int, height: int, width: int) -> torch.Tensor:
    """Validate per-frame boxes [n,4] (x, y, w, h) against n frames of height x width -> int64 [n,4]."""
    b = torch.as_tensor(boxes)
    if b.dim() != 2 or b.shape != (n, 4):
        raise ValueError(f"boxes must be [{n}, 4] (x, y, width, height per frame), got {list(b.shape)}")
    if b.is_floating_point() and not torch.equal(b, b.round()):
        raise ValueError("boxes must hold whole pixels")
    b = b.long()
    x, y, w, h = b.unbind(1)
    if bool(((w < 1) | (h < 1) | (x < 0) | (y < 0) | (x + w > width) | (y + h > height)).any()):
        raise ValueError(f"every box must be at least 1x1 and fit inside the {width}x{height} frame")
    return b


def repeat_box(box: Box, n: int) -> torch.Tensor:
    """The same box for n frames: [n,4] (x, y, w, h)."""
    return torch.tensor([[box.x, box.y, box.w, box.h]], dtype=torch.long).repeat(n, 1)  # [n,4]


def _size_groups(boxes: torch.Tensor) -> list[tuple[list[int], tuple[int, int]]]:
    """Frames grouped by box size: [(frame indices, (w, h))] (usually one group: constant-size boxes)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (w, h) in enumerate(boxes[:, 2:].tolist()):
        groups.setdefault((w, h), []).append(i)
    return [(idx, size) for size, idx in groups.items()]


# ---------------------------------------------------------------------------------------------------------------
# Per-frame boxes from a located face track
# ---------------------------------------------------------------------------------------------------------------


def moving_average(values: torch.Tensor, frames: int) -> torch.Tensor:
    """Centred moving average over ``frames`` (odd; even numbers round up) of [F,D] values, edges replicated."""
    half = max(0, int(frames) // 2)
    if half == 0 or values.shape[0] < 2:
        return values.clone()
    padded = torch.cat([values[:1].expand(half, -1), values, values[-1:].expand(half, -1)])  # [F+2h,D]
    return padded.unfold(0, 2 * half + 1, 1).mean(-1)  # [F,D,2h+1] -> [F,D]


def crop_boxes_from_track(track: MouthTrack, frame_hw: tuple[int, int], scale: float = 1.6, square: bool = True,
                          smooth_frames: int = 9) -> torch.Tensor:
    """Per-frame crop boxes int64 [F,4] (x, y, w, h pixels) around the track's face boxes.

    Every box has the same size (the largest face box over the clip times ``scale``; square in pixels when
    ``square``), so the crops share one resolution. Box centres follow the face centres, smoothed by a centred
    moving average over ``smooth_frames`` frames, and are shifted as needed to stay inside the frame; a box
    larger than the frame is shrunk to fit. A track without any valid frame holds the whole-frame face box,
    which gives the whole frame.
    """
    height, width = int(frame_hw[0]), int(frame_hw[1])
    if height < 1 or width < 1 or not scale > 0:
        raise ValueError(f"need a frame size >= 1x1 and scale > 0, got {frame_hw}, {scale}")
    fb = track.face_boxes.float() * torch.tensor([width, height, width, height], dtype=torch.float32)  # pixels
    fw, fh = (fb[:, 2] - fb[:, 0]).clamp(min=1.0), (fb[:, 3] - fb[:, 1]).clamp(min=1.0)
    bw, bh = float(fw.max()) * scale, float(fh.max()) * scale
    if square:
        bw = bh = min(max(bw, bh), float(min(width, height)))
    w, h = max(1, min(width, int(round(bw)))), max(1, min(height, int(round(bh))))
    centres = moving_average(torch.stack([(fb[:, 0] + fb[:, 2]) / 2, (fb[:, 1] + fb[:, 3]) / 2], 1), smooth_frames)
    x = torch.round(centres[:, 0] - w / 2).clamp(0, width - w).long()
    y = torch.round(centres[:, 1] - h / 2).clamp(0, height - h).long()
    return torch.stack([x, y, torch.full_like(x, w), torch.full_like(y, h)], 1)


def map_track_to_crop(track: MouthTrack, boxes: torch.Tensor, frame_hw: tuple[int, int]) -> MouthTrack:
    """Express a full-frame track in the coordinates of per-frame crops ``boxes`` [F,4] (x, y, w, h pixels):
    centres, face boxes and the jaw outline normalised to each crop. A mouth that falls outside its crop is marked invalid."""
    height, width = int(frame_hw[0]), int(frame_hw[1])
    b = check_boxes(boxes, len(track), height, width).float()
    origin, size = b[:, :2], b[:, 2:]  # [F,2] pixels
    px = torch.tensor([width, height], dtype=torch.float32)
    centres = (track.centres.float() * px - origin) / size
    lo = ((track.face_boxes[:, :2].float() * px - origin) / size).clamp(0, 1)
    hi = ((track.face_boxes[:, 2:].float() * px - origin) / size).clamp(0, 1)
    inside = ((centres >= 0) & (centres <= 1)).all(1)
    jaw = None if track.jaw is None else (track.jaw.float() * px - origin[:, None]) / size[:, None]  # [F,K,2]
    return MouthTrack(centres, track.valid & inside, torch.cat([lo, hi], 1), track.confidence.clone(), jaw)
