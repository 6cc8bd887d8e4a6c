"""IMAGE and MASK inputs: ComfyUI frame batches to checked float RGB frames, frame rates, per-frame masks.

Shape legend
  F video frames   H, W frame size   C channels (1, 3 or 4)   M masks
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...omnisync_model.core.audio import all_finite
from ...omnisync_model.sampling.pipeline import to_float_frames, validate_fps

log = logging.getLogger(__name__)


def image_to_frames(image: torch.Tensor, name: str = "images") -> torch.Tensor:
    """ComfyUI IMAGE [F,H,W,C] (C = 1, 3 or 4) -> float32 RGB frames [F,H,W,3] (a view when already RGB float).

    Every frame is checked here (NaN / Inf), so bad input fails before any model work."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]  # one frame [H,W,C] -> [1,H,W,C]
    if image.dim() != 4:
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, channels], got {list(image.shape)}")
    if image.shape[0] < 1 or min(image.shape[1:3]) < 1:
        raise ValueError(f"{name} has no pixels (shape {list(image.shape)}); need at least 1 frame of at least 1x1")
    if image.is_floating_point() and not all_finite(image):
        raise ValueError(f"{name} contain NaN or Inf values")
    if image.dtype == torch.float32 and image.shape[-1] == 3:
        return image
    return to_float_frames(image, name)


NTSC_BASES = (24, 30, 48, 60, 120, 240)  # n * 1000 / 1001 rates


def is_standard_rate(fps: float) -> bool:
    """Whole numbers and the NTSC rates (23.976, 29.97, 59.94 ...), within 0.05 %."""
    candidates = [round(fps)] + [n * 1000 / 1001 for n in NTSC_BASES]
    return any(c > 0 and abs(fps - c) <= 5e-4 * c for c in candidates)


def warn_if_variable_rate(fps: float, node: str) -> bool:
    """Warn (and return True) when ``fps`` looks like the average of a variable-frame-rate clip: an IMAGE batch has
    one rate, so such a clip's frames come back evenly spaced and drift against its audio."""
    if is_standard_rate(fps):
        return False
    log.warning("%s: fps %.3f is not a standard frame rate - is this a variable-frame-rate clip (phones record "
                "these)? An IMAGE batch has one rate, so the result plays at a constant %.3f fps and may drift "
                "against the audio; OmniSyncLipSyncVideo keeps every frame's timestamp", node, fps, fps)
    return True


def check_fps(fps: Any) -> float:
    """A frame rate as a positive finite float (FLOAT widget, int or Fraction); clear ValueError otherwise."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number, got {fps!r}") from None
    return validate_fps(value)


def fit_mask_count(mask: torch.Tensor, n_frames: int) -> torch.Tensor:
    """MASK [M,H,W] or [H,W] -> [F,H,W]: one mask is used for every frame; other counts are fitted (warning)."""
    if mask.dim() == 2:
        mask = mask[None]  # [H,W] -> [1,H,W]
    if mask.dim() != 3 or mask.shape[0] < 1:
        raise ValueError(f"mask must be a MASK [frames, height, width], got {list(mask.shape)}")
    m = mask.shape[0]
    if m == n_frames:
        return mask
    if m != 1:
        log.warning("mask has %d frames, the video %d; %s", m, n_frames,
                    "truncating" if m > n_frames else "repeating the last")
    idx = torch.arange(n_frames).clamp(max=m - 1)
    return mask[idx]
