"""OMNISYNC_CROP: the face crop and paste-back of OmniSyncFaceCrop / OmniSyncFacePaste without ComfyUI.

Shape legend
  F video frames   H, W frame size   h, w crop size   boxes [F,4] integer pixels (x, y, w, h)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ...omnisync_model.media.lipsync_file import blend_weights, check_blend
from ...omnisync_model.media.locate import MouthTrack
from ...omnisync_model.media.regions import (Box, crop_boxes_from_track, crop_per_frame, map_track_to_crop,
                                             paste_back_per_frame, working_size)
from .frames import image_to_frames
from .tracks import locate_track

PASTE_FRAMES = 64  # the mouth blend makes its [k,h,w] weights (and pastes) this many frames at a time


@dataclass(frozen=True)
class CropInfo:
    """OMNISYNC_CROP: where each frame's crop came from. boxes [F,4] integer pixels (x, y, w, h)."""

    boxes: torch.Tensor
    size: tuple[int, int]  # (height, width) of the crops
    frame_size: tuple[int, int]  # (height, width) of the full frames
    mouth: Optional[MouthTrack] = None  # the mouth track in crop coordinates, for the mouth-only blend


def crop_faces(images: torch.Tensor, side: int, multiple: int, scale: float = 1.6, smooth_frames: int = 9,
               mouth: Any = None, check_interrupt: Optional[Callable[[], None]] = None
               ) -> tuple[torch.Tensor, CropInfo, MouthTrack]:
    """The OmniSyncFaceCrop node without ComfyUI: IMAGE [F,H,W,C] -> (crops [F,h,w,3] with the longer crop side
    ``side`` rounded to ``multiple``, the crop boxes, the mouth track in crop coordinates). A missing track is
    located (never aborts)."""
    frames = image_to_frames(images)
    n, height, width = frames.shape[:3]
    track = mouth if mouth is not None else locate_track(frames, check_interrupt)
    if len(track) != n:
        raise ValueError(f"the mouth track has {len(track)} frames but images has {n}; connect the "
                         f"OmniSyncMouthRegion made from these frames")
    boxes = crop_boxes_from_track(track, (height, width), scale=float(scale), smooth_frames=int(smooth_frames))
    x, y, w, h = boxes[0].tolist()  # every box has the same size
    hw = working_size(Box(x, y, w, h), side, multiple)
    crops = crop_per_frame(frames, boxes, hw)
    crop_mouth = map_track_to_crop(track, boxes, (height, width))
    return crops, CropInfo(boxes, hw, (height, width), crop_mouth), crop_mouth


def paste_faces(images: torch.Tensor, synced: torch.Tensor, crop: CropInfo, feather: int = 16,
                blend: str = "mouth") -> torch.Tensor:
    """The OmniSyncFacePaste node without ComfyUI: synced crops back into a copy of the frames (feathered edge,
    colour matched); pixels outside the boxes are bit-exact copies of ``images``.

    ``blend``: 'box' takes the whole crop; 'mouth' only the soft mouth disc of the file path, 'jaw' the mesh's lips
    and jaw (:func:`~omnisync_model.media.lipsync_file.blend_weights`), so the rest of the box keeps the source's
    full-resolution pixels; frames without a located mouth stay as they were."""
    check_blend(blend)
    frames = image_to_frames(images)
    result = image_to_frames(synced, "synced")
    if tuple(frames.shape[1:3]) != tuple(crop.frame_size):
        raise ValueError(f"images are {frames.shape[2]}x{frames.shape[1]} but the crop was made on "
                         f"{crop.frame_size[1]}x{crop.frame_size[0]} frames; connect the same frames")
    if result.shape[0] != frames.shape[0] or crop.boxes.shape[0] != frames.shape[0]:
        raise ValueError(f"frame counts differ: images {frames.shape[0]}, synced {result.shape[0]}, "
                         f"crop boxes {crop.boxes.shape[0]}")
    if blend == "box":
        return paste_back_per_frame(frames, result, crop.boxes, feather=int(feather))
    if crop.mouth is None or len(crop.mouth) != frames.shape[0]:
        raise ValueError(f"blend {blend!r} needs the mouth track of OmniSyncFaceCrop's crop; connect its 'crop' "
                         "output or use blend 'box'")
    out = frames.clone()
    for start in range(0, frames.shape[0], PASTE_FRAMES):  # weights [k,h,w] a chunk at a time
        end = min(start + PASTE_FRAMES, frames.shape[0])
        weights = blend_weights(blend, crop.mouth, start, end - start, crop.size)
        out[start:end] = paste_back_per_frame(frames[start:end], result[start:end], crop.boxes[start:end],
                                              feather=int(feather), weights=weights)
    return out
