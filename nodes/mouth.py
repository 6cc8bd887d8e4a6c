"""OmniSyncMouthRegion: per-frame mouth centres (for DS-CFG) and a MASK preview. A user MASK wins."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..omnisync_model.media.locate import MouthTrack, mask_to_mouths, mouth_mask_preview, uniform_track
from .adapters.frames import fit_mask_count, image_to_frames
from ..omnisync_model.faces import SpeakerChoice
from .adapters.tracks import FINDERS, locate_track
from .runtime import interrupt_check, output_device
from .types import CATEGORY, OmniMouth

log = logging.getLogger(__name__)

SPEAKER_RULES = ("largest", "index")


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
            description="Finds the mouth in every frame for the guidance map (face detector + mesh shipped in the "
                        "pack, nothing downloaded). A connected MASK wins. Frames without a mouth borrow their neighbours' position; when no frame has "
                        "one, guidance becomes uniform (logged, never an error).",
            inputs=[
                io.Image.Input("images", tooltip="The video frames."),
                io.Float.Input("preview_radius", default=0.08, min=0.01, max=1.0, step=0.01,
                               tooltip="Radius of the circles drawn in the preview mask, as a fraction of the "
                                       "frame's shorter side (preview only; guidance uses the samplers' radius)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional mouth mask (one for all frames, or one per frame). Its centre of "
                                      "mass per frame is the mouth; empty frames borrow their neighbours'."),
                io.Combo.Input("finder", options=list(FINDERS), default="face mesh", optional=True,
                               tooltip="face mesh: MediaPipe's face detector and 478-point mesh (in the pack, run "
                                       "by PyTorch), followed frame to frame; frames it misses (anime, animals, "
                                       "profiles) fall back to the weight-free locator. locator: that locator alone."),
                io.Combo.Input("speaker", options=list(SPEAKER_RULES), default="largest", optional=True,
                               tooltip="Which face speaks when there are several: the largest, or the one at "
                                       "speaker_index counted from the left. The choice is kept over the clip."),
                io.Int.Input("speaker_index", default=0, min=0, max=64, optional=True,
                             tooltip="With speaker = index: 0 is the leftmost face."),
            ],
            outputs=[
                OmniMouth.Output("mouth", display_name="mouth"),
                io.Mask.Output("preview", display_name="mask",
                               tooltip="Preview: a disc at each frame's mouth (empty where no mouth was found)."),
            ],
        )

    @classmethod
    def execute(cls, images, preview_radius: float = 0.08, mask=None, finder: str = "face mesh",
                speaker: str = "largest", speaker_index: int = 0) -> io.NodeOutput:
        frames = image_to_frames(images)
        n, height, width = frames.shape[:3]
        if mask is not None:
            track = mask_track(mask, n)
        else:
            choice = SpeakerChoice(rule=speaker, index=int(speaker_index))
            track = locate_track(frames, interrupt_check(), finder=finder, speaker=choice)
        preview = mouth_mask_preview(track, height, width, float(preview_radius))
        return io.NodeOutput(track, preview.to(output_device()))
