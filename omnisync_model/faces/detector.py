"""MediaPipe's short-range face detector (BlazeFace, 128x128) in PyTorch, with MediaPipe's decoding.

Facts (from MediaPipe's ``face_detection_short_range.pbtxt`` / ``face_detection.pbtxt`` graphs and the converted
``face_detection_short_range.tflite``):

- Input: RGB letterboxed to 128x128 (aspect kept, zero border), values mapped to -1..1.
- Network: 5x5 stride-2 stem (24 channels, ReLU), 16 BlazeBlocks (ReLU), two heads: on the 16x16 map (88 channels)
  2 anchors per cell, on the 8x8 map (96 channels) 6 anchors per cell; per anchor 16 regressors
  (x, y, w, h of the box, then 6 keypoints x, y) and one score logit. 16*16*2 + 8*8*6 = 896 anchors.
- SSD anchors: strides (8, 16, 16, 16), one aspect ratio 1.0 plus the interpolated scale, fixed anchor size,
  offset 0.5: centres ((x + 0.5) / fw, (y + 0.5) / fh), w = h = 1, in cell order (y, x, anchor).
- Decoding (scales 128): centre = raw / 128 * anchor size + anchor centre, size = raw / 128 * anchor size; score =
  sigmoid(clip(logit, -100, 100)); detections below 0.5 are dropped; weighted non-maximum suppression with IoU
  threshold 0.3 (each kept box is the score-weighted mean of the boxes and keypoints it suppresses, with the top
  score).
- Keypoints: 0 right eye, 1 left eye (of the person; MediaPipe calls index 0 "left eye" from the viewer's side),
  2 nose tip, 3 mouth centre, 4 right ear tragion, 5 left ear tragion.

Shape legend
  B  batch      A  anchors (896)      K  keypoints (6)      D  detections kept
  boxes are (xmin, ymin, xmax, ymax) normalised to the 128x128 input (0..1), keypoints (x, y) likewise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .layers import SameConv, block_stack, nhwc_flat


@dataclass(frozen=True)
class BlazeFaceConfig:
    input_size: int = 128
    stem_channels: int = 24
    stem_kernel: int = 5
    # (cin, cout, stride) of the 16 blocks; the 16x16 head reads block ``fine_tap``'s output, the 8x8 head the last.
    blocks: tuple[tuple[int, int, int], ...] = (
        (24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1), (56, 64, 1),
        (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1))
    fine_tap: int = 10
    anchors_fine: int = 2  # anchors per cell on the 16x16 map
    anchors_coarse: int = 6  # on the 8x8 map
    strides: tuple[int, ...] = (8, 16, 16, 16)
    num_keypoints: int = 6
    score_clip: float = 100.0
    min_score: float = 0.5
    nms_iou: float = 0.3

    @property
    def num_coords(self) -> int:
        return 4 + 2 * self.num_keypoints


PRESETS = {"short_range": BlazeFaceConfig()}


def get_preset(name: str) -> BlazeFaceConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown face detector preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


class BlazeFace(nn.Module):
    """[B,3,128,128] in -1..1 -> (regressors [B,A,16], score logits [B,A,1]), MediaPipe's raw outputs."""

    def __init__(self, config: BlazeFaceConfig = BlazeFaceConfig(), device=None, dtype=None, operations=nn):
        super().__init__()
        c = self.config = config
        self.stem = SameConv(3, c.stem_channels, c.stem_kernel, 2, activation="relu", device=device, dtype=dtype,
                             operations=operations)
        self.blocks = block_stack(c.blocks, "relu", device, dtype, operations)
        fine, coarse = c.blocks[c.fine_tap][1], c.blocks[-1][1]
        conv = lambda cin, cout: operations.Conv2d(cin, cout, 1, device=device, dtype=dtype)  # noqa: E731
        self.fine_scores = conv(fine, c.anchors_fine)
        self.fine_boxes = conv(fine, c.anchors_fine * c.num_coords)
        self.coarse_scores = conv(coarse, c.anchors_coarse)
        self.coarse_boxes = conv(coarse, c.anchors_coarse * c.num_coords)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        fine = None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.config.fine_tap:
                fine = x  # [B,88,16,16]
        n = self.config.num_coords
        boxes = torch.cat([nhwc_flat(self.fine_boxes(fine), n), nhwc_flat(self.coarse_boxes(x), n)], 1)  # [B,A,16]
        scores = torch.cat([nhwc_flat(self.fine_scores(fine), 1), nhwc_flat(self.coarse_scores(x), 1)], 1)  # [B,A,1]
        return boxes, scores


def ssd_anchors(config: BlazeFaceConfig = BlazeFaceConfig()) -> torch.Tensor:
    """[A,2] anchor centres (x, y), normalised; anchor sizes are fixed at 1. Layers of equal stride share a grid
    whose anchors per cell are (1 aspect ratio + 1 interpolated scale) x layers."""
    out, layer = [], 0
    strides = config.strides
    while layer < len(strides):
        same = layer
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
        per_cell = 2 * (same - layer)
        size = -(-config.input_size // strides[layer])  # ceil
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        centre = torch.stack([(xs + 0.5) / size, (ys + 0.5) / size], -1).reshape(-1, 1, 2)  # [cells,1,2]
        out.append(centre.expand(-1, per_cell, -1).reshape(-1, 2))  # [cells*per_cell,2] in (y, x, anchor) order
        layer = same
    return torch.cat(out).float()


def decode(boxes: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor,
           config: BlazeFaceConfig = BlazeFaceConfig()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs [B,A,16], [B,A,1] -> boxes [B,A,4] (xmin, ymin, xmax, ymax), keypoints [B,A,K,2], scores [B,A]."""
    s = float(config.input_size)
    raw = boxes.float()
    centre = raw[..., 0:2] / s + anchors  # anchor size 1: [B,A,2]
    half = raw[..., 2:4] / s / 2
    box = torch.cat([centre - half, centre + half], -1)  # [B,A,4]
    kps = raw[..., 4:].reshape(*raw.shape[:2], config.num_keypoints, 2) / s + anchors[:, None, :]  # [B,A,K,2]
    score = torch.sigmoid(logits.float()[..., 0].clamp(-config.score_clip, config.score_clip))  # [B,A]
    return box, kps, score


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with [N,4]."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = (hi - lo).clip(min=0).prod(1)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True, eq=False)
class Detections:
    """Faces found in one image: boxes [D,4] (xmin, ymin, xmax, ymax), keypoints [D,K,2], scores [D]; coordinates in
    whatever frame the producer states (the detector's 128x128 input, or the image after projection)."""

    boxes: torch.Tensor
    keypoints: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(num_keypoints: int = 6) -> "Detections":
        return Detections(torch.zeros(0, 4), torch.zeros(0, num_keypoints, 2), torch.zeros(0))


def weighted_nms(box: torch.Tensor, kps: torch.Tensor, score: torch.Tensor, min_score: float = 0.5,
                 iou: float = 0.3) -> Detections:
    """MediaPipe's weighted non-maximum suppression of one image's decoded anchors ([A,4], [A,K,2], [A]).

    Anchors scoring below ``min_score`` (or with negative / NaN sizes) are dropped; then, by decreasing score, the
    best remaining anchor and every remaining anchor overlapping it by IoU > ``iou`` form a cluster, replaced by
    their score-weighted mean box and keypoints, with the best anchor's score. A few anchors pass the threshold, so
    the loop runs in numpy (float64) and the result comes back as float32 tensors on the inputs' device."""
    b, k, s = (t.detach().cpu().double().numpy() for t in (box, kps, score))
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (s >= min_score) & (w >= 0) & (h >= 0)  # NaN compares False
    order = np.argsort(-s[keep], kind="stable")  # decreasing score, ties in anchor order
    b, k, s = b[keep][order], k[keep][order], s[keep][order]
    out_b, out_k, out_s = [], [], []
    while s.size:
        cluster = _iou(b[0], b) > iou
        cluster[0] = True
        wgt = s[cluster]
        out_b.append((b[cluster] * wgt[:, None]).sum(0) / wgt.sum())
        out_k.append((k[cluster] * wgt[:, None, None]).sum(0) / wgt.sum())
        out_s.append(s[0])
        b, k, s = b[~cluster], k[~cluster], s[~cluster]
    if not out_s:
        return Detections.empty(kps.shape[1])
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(box.device)  # noqa: E731
    return Detections(as_tensor(out_b), as_tensor(out_k), as_tensor(out_s))
