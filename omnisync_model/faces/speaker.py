"""Which face speaks: a rule for the first choice, then association so the choice stays on the same person.

Rules (:class:`SpeakerChoice`): ``largest`` face, the ``index``-th face from the left, the face ``nearest`` a point,
or the face that overlaps a ``mask`` most (a MASK from the graph: [H,W] for the whole clip or [F,H,W] per frame).
Once a face is chosen, later detections are matched to it by IoU with its last box (or, when boxes no longer
overlap, by centre distance within one face size). While the chosen face is missing for less than ``max_gap``
frames, no other face is taken (those frames fall back to the locator / neighbours); after that the rule picks again.
So the choice is stable when another face becomes larger, the order changes or the speaker turns away briefly. A
per-frame mask ([F,H,W]) always decides by itself: it says who speaks in each frame.

Shape legend
  D  detections      boxes [D,4] (x0, y0, x1, y1) in frame pixels      H, W  frame size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

RULES = ("largest", "index", "nearest", "mask")
MIN_IOU = 0.1  # a detection overlapping the chosen face's last box at least this much is the same person


@dataclass(frozen=True, eq=False)
class SpeakerChoice:
    """``rule`` in RULES; ``index`` (0 = leftmost) for "index"; ``point`` (x, y) normalised 0..1 for "nearest";
    ``mask`` ([H,W] or [F,H,W], values 0..1) for "mask"."""

    rule: str = "largest"
    index: int = 0
    point: Optional[tuple[float, float]] = None
    mask: Optional[Union[torch.Tensor, np.ndarray]] = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"speaker rule must be one of {RULES}, got {self.rule!r}")
        if self.rule == "index" and self.index < 0:
            raise ValueError(f"speaker index must be >= 0, got {self.index}")
        if self.rule == "nearest" and (self.point is None or len(self.point) != 2
                                       or not all(np.isfinite(v) for v in self.point)):
            raise ValueError(f"speaker rule 'nearest' needs a finite point (x, y), got {self.point}")
        if self.rule == "mask":
            if self.mask is None:
                raise ValueError("speaker rule 'mask' needs a mask")
            if torch.as_tensor(self.mask).dim() not in (2, 3):
                raise ValueError(f"speaker mask must be [H,W] or [F,H,W], got {list(torch.as_tensor(self.mask).shape)}")


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one box [4] with boxes [D,4]."""
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    union = _areas(box[None])[0] + _areas(boxes) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def _mask_frame(mask, frame_index: int, height: int, width: int) -> torch.Tensor:
    """The choice mask for one frame, resized to the frame: [H,W] float."""
    m = torch.nan_to_num(torch.as_tensor(mask).float())
    if m.dim() == 3:
        m = m[min(frame_index, m.shape[0] - 1)]
    if tuple(m.shape) != (height, width):
        m = torch.nn.functional.interpolate(m[None, None], size=(height, width), mode="bilinear",
                                            align_corners=False)[0, 0]
    return m.clamp(0, 1)


def _mask_scores(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask mass inside each box [D]."""
    h, w = mask.shape
    integral = torch.nn.functional.pad(mask.cumsum(0).cumsum(1), (1, 0, 1, 0))  # summed-area table [H+1,W+1]
    x0 = boxes[:, 0].round().clamp(0, w).long()
    x1 = boxes[:, 2].round().clamp(0, w).long()
    y0 = boxes[:, 1].round().clamp(0, h).long()
    y1 = boxes[:, 3].round().clamp(0, h).long()
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def by_rule(boxes: torch.Tensor, choice: SpeakerChoice, frame_index: int, height: int, width: int) -> Optional[int]:
    """Index of the detection the rule picks, or None (no detection, index out of range, mask misses them all)."""
    d = boxes.shape[0]
    if d == 0:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [D,2]
    if choice.rule == "largest":
        return int(torch.argmax(_areas(boxes)))
    if choice.rule == "index":
        order = torch.argsort(centres[:, 0], stable=True)
        return int(order[choice.index]) if choice.index < d else None
    if choice.rule == "nearest":
        target = torch.tensor([choice.point[0] * width, choice.point[1] * height])
        return int(torch.argmin((centres - target).norm(dim=1)))
    scores = _mask_scores(boxes, _mask_frame(choice.mask, frame_index, height, width))
    return int(torch.argmax(scores)) if float(scores.max()) > 0 else None


def associate(boxes: torch.Tensor, last_box: torch.Tensor) -> Optional[int]:
    """The detection that continues a face last seen at ``last_box`` [4], or None."""
    if boxes.shape[0] == 0:
        return None
    overlap = iou(last_box, boxes)
    best = int(torch.argmax(overlap))
    if float(overlap[best]) >= MIN_IOU:
        return best
    size = float(torch.maximum(last_box[2] - last_box[0], last_box[3] - last_box[1]))
    dist = ((boxes[:, :2] + boxes[:, 2:]) / 2 - (last_box[:2] + last_box[2:]) / 2).norm(dim=1)
    near = int(torch.argmin(dist))
    return near if float(dist[near]) <= size else None


def choose(boxes: torch.Tensor, choice: SpeakerChoice, frame_index: int, height: int, width: int,
           last_box: Optional[torch.Tensor] = None, frames_missing: int = 0, max_gap: int = 50) -> Optional[int]:
    """Detection index of the speaker: the one continuing ``last_box`` (seen ``frames_missing`` frames ago) when
    there is one, else (no face chosen yet, or missing for ``max_gap`` frames or more) by the rule."""
    per_frame_mask = choice.rule == "mask" and torch.as_tensor(choice.mask).dim() == 3
    if last_box is not None and not per_frame_mask:
        k = associate(boxes, last_box)
        if k is not None or frames_missing < max_gap:
            return k
    return by_rule(boxes, choice, frame_index, height, width)
