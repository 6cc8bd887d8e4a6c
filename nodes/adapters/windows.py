"""OMNISYNC_WINDOW: chunked stitching as graph nodes (OmniSyncWindowSplit / OmniSyncWindowStitch).

The split cuts a video into the overlapping windows the one-node path would use and hands them on as a list, so
ComfyUI runs VAEEncode, OmniSyncNoiseInit, OmniSyncSampler and VAEDecode once per window; the stitch collects the
list and crossfades it back (raised-cosine weights that sum to exactly 1) into exactly the input's frame count.
Each window carries its absolute start, so noise, audio and the mouth track line up with the whole clip.

Shape legend
  F video frames   L frames of one window   H, W frame size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...omnisync_model.sampling.options import LipSyncOptions
from ...omnisync_model.sampling.pipeline import plan_for_codec
from ...omnisync_model.sampling.windows import Stitcher, Window
from .frames import image_to_frames


@dataclass(frozen=True)
class WindowSlot:
    """One window of a split video: its place in the plan, the whole plan, and the video's size."""

    index: int
    start: int
    length: int
    total: int  # frames of the whole video
    plan: tuple[Window, ...]
    height: int
    width: int

    @property
    def end(self) -> int:
        return self.start + self.length


def split_windows(images: torch.Tensor, window: int, overlap: int,
                  temporal_factor: int = 1) -> tuple[list[torch.Tensor], list[WindowSlot]]:
    """IMAGE [F,H,W,C] -> (window frames [L,H,W,3] each, their slots), as the one-node path plans them (the last
    window shifted back so none is dropped; with a video VAE, lengths of the form 1 + k * temporal_factor)."""
    frames = image_to_frames(images)
    n, height, width = frames.shape[:3]
    options = LipSyncOptions(window=int(window), overlap=int(overlap))  # validates window and overlap
    plan = tuple(plan_for_codec(n, options, int(temporal_factor)))
    slots = [WindowSlot(w.index, w.start, w.length, n, plan, height, width) for w in plan]
    return [frames[w.start:w.end] for w in plan], slots  # views: no copy of the video


def stitch_windows(images: Sequence[torch.Tensor], slots: Sequence[WindowSlot]) -> torch.Tensor:
    """The lists of window frames and slots (any order) -> IMAGE [F,H,W,3], every frame once, crossfaded."""
    if len(images) != len(slots):
        raise ValueError(f"got {len(images)} image batches for {len(slots)} windows; connect the decoded windows "
                         f"and the window output of the same OmniSyncWindowSplit")
    if not slots:
        raise ValueError("no windows to stitch")
    first = slots[0]
    if any(s.plan != first.plan or s.total != first.total for s in slots):
        raise ValueError("the windows come from different OmniSyncWindowSplit runs")
    got = sorted(s.index for s in slots)
    if got != list(range(len(first.plan))):
        raise ValueError(f"need each of the {len(first.plan)} windows exactly once, got indices {got}")
    out = torch.empty((first.total, first.height, first.width, 3), dtype=torch.float32)
    stitcher = Stitcher(first.total, first.plan)
    for slot, chunk in sorted(zip(slots, images), key=lambda pair: pair[0].index):
        frames = image_to_frames(chunk, f"window {slot.index}")
        if frames.shape[0] < slot.length or frames.shape[1] < slot.height or frames.shape[2] < slot.width:
            raise ValueError(f"window {slot.index} has {list(frames.shape[:3])} frames x height x width, expected at "
                             f"least {[slot.length, slot.height, slot.width]}")
        window = frames[:slot.length, :slot.height, :slot.width]  # drop the codec's padding
        for start, final in stitcher.add(slot.index, window):
            out[start:start + final.shape[0]] = final
    stitcher.finish()
    return out
