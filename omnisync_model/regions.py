"""Crop a region of interest (the face) out of frames at the model's resolution, and paste results back.

Pixels outside the box are never touched by :func:`paste_back` (bit-exact). Inside, a feathered edge blends the
result into the original, after matching the result's colour statistics near the edge to the original's.

Shape legend: F frames, H, W frame size, h, w box size, S working size (height, width).
Boxes are integer pixel (x, y, w, h), either one for all frames or one per frame [F,4].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    region = frames[:, box.y:box.y + box.h, box.x:box.x + box.w]
    region = region.float() / 255.0 if frames.dtype == torch.uint8 else region.float()
    return resize(region, hw)


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
    out = full.clone()
    region = full[:, box.y:box.y + box.h, box.x:box.x + box.w]
    is_u8 = full.dtype == torch.uint8
    orig = region.float() / 255.0 if is_u8 else region.float()
    res = resize(result, (box.h, box.w))
    mask = feather_mask(box.h, box.w, feather)
    res = match_colour(res, orig, mask)
    blended = mask * res + (1 - mask) * orig
    if is_u8:
        blended = (blended * 255.0).round().clamp(0, 255).to(torch.uint8)
    out[:, box.y:box.y + box.h, box.x:box.x + box.w] = blended.to(full.dtype)
    return out
