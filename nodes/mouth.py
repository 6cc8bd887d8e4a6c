"""OmniSyncMouthRegion: per-frame mouth centres (for DS-CFG) and a MASK preview. A user MASK wins."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..omnisync_model.media.locate import MouthTrack, mask_to_mouths, mouth_mask_preview, uniform_track
from .adapters.frames import fit_mask_count, image_to_frames
from .adapters.tracks import locate_track
from .runtime import interrupt_check, output_device
from .types import CATEGORY, OmniMouth

log = logging.getLogger(__name__)


def mask_track(mask: torch.Tensor, n_frames: int) -> MouthTrack:
    """Mouth track from a user MASK (one mask for all frames, or one per frame); never aborts."""
    try:
        return mask_to_mouths(fit_mask_count(mask, n_frames))
    except (ValueError, RuntimeError) as exc:
        log.warning("OmniSync: cannot read a mouth from the mask (%s); using uniform guidance", exc)
        return uniform_track(n_frames)


class OmniSyncMouthRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncMouthRegion",
            display_name="OmniSync Mouth Region",
            category=CATEGORY,
            description="Finds the mouth in every frame for the guidance map (no downloaded weights). A connected "
                        "MASK wins. Frames without a mouth borrow their neighbours' position; when no frame has "
                        "one, guidance becomes uniform (logged, never an error).",
            inputs=[
                io.Image.Input("images", tooltip="The video frames."),
                io.Float.Input("preview_radius", default=0.08, min=0.01, max=1.0, step=0.01,
                               tooltip="Radius of the circles drawn in the preview mask, as a fraction of the "
                                       "frame's shorter side (preview only; guidance uses the samplers' radius)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional mouth mask (one for all frames, or one per frame). Its centre of "
                                      "mass per frame is the mouth; empty frames borrow their neighbours'."),
            ],
            outputs=[
                OmniMouth.Output("mouth", display_name="mouth"),
                io.Mask.Output("preview", display_name="mask",
                               tooltip="Preview: a disc at each frame's mouth (empty where no mouth was found)."),
            ],
        )

    @classmethod
    def execute(cls, images, preview_radius: float = 0.08, mask=None) -> io.NodeOutput:
        frames = image_to_frames(images)
        n, height, width = frames.shape[:3]
        track = mask_track(mask, n) if mask is not None else locate_track(frames, interrupt_check())
        preview = mouth_mask_preview(track, height, width, float(preview_radius))
        return io.NodeOutput(track, preview.to(output_device()))
