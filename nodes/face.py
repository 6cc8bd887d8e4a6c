"""OmniSyncFaceCrop / OmniSyncFacePaste: lip-sync small faces in large frames (e.g. 1080x1920).

Crop: a temporally smoothed box around the face and mouth per frame, resized to the model's resolution.
Paste: the synced crops go back with a feathered edge and colour matching (by default only a soft disc around the
mouth, as OmniSyncLipSyncVideo does); pixels outside the boxes are bit-exact copies of the input frames.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..omnisync_model.media.lipsync_file import BLENDS
from .adapters.faces import CropInfo, crop_faces, paste_faces
from .runtime import interrupt_check, output_device
from .types import CATEGORY, OmniCrop, OmniModel, OmniMouth

DEFAULT_RESOLUTION = 256  # when a checkpoint does not state the resolution it was trained at


def model_resolution(patcher, size: int) -> tuple[int, int]:
    """(crop side, size multiple) for the model: its training resolution unless ``size`` > 0."""
    backend = patcher.model.backend
    codec = backend.default_codec()
    factor = codec.spatial_factor if codec is not None else 8  # VAE models: common VAEs compress 8x (or 16x)
    native = backend.crop_rules.resolution
    side = int(size) if int(size) > 0 else (max(native) if native else DEFAULT_RESOLUTION)
    return side, factor * backend.patch_size


class OmniSyncFaceCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncFaceCrop",
            display_name="OmniSync Face Crop",
            category=CATEGORY,
            description="Crops a temporally smoothed square of constant size around the face and mouth in "
                        "every frame, resized to the model's resolution, for videos where the face is small. "
                        "Feed 'crops' and 'mouth' to OmniSyncLipSync and put the result back with "
                        "OmniSyncFacePaste.",
            inputs=[
                OmniModel.Input("model", tooltip="The OmniSync model: its training resolution sets the crop size."),
                io.Image.Input("images", tooltip="Full-size video frames."),
                io.Float.Input("scale", default=1.6, min=1.0, max=4.0, step=0.05,
                               tooltip="Crop side relative to the detected face box (more = more context "
                                       "around the face)."),
                io.Int.Input("smooth_frames", default=9, min=1, max=101, step=2,
                             tooltip="Temporal smoothing of the crop box position, in frames (a centred moving "
                                     "average; 1 = none). Larger values keep the crop steadier."),
                io.Int.Input("size", default=0, min=0, max=4096, step=8,
                             tooltip="Crop resolution in pixels; 0 = the resolution the model was trained at."),
                OmniMouth.Input("mouth", optional=True,
                                tooltip="Optional track from OmniSyncMouthRegion to place the crop (its face boxes "
                                        "set the crop size; a track from a MASK uses the mask's box). When empty "
                                        "the built-in locator runs."),
            ],
            outputs=[
                io.Image.Output("crops", display_name="crops"),
                OmniCrop.Output("crop", display_name="crop", tooltip="Crop boxes, for OmniSyncFacePaste."),
                OmniMouth.Output("crop_mouth", display_name="mouth",
                                 tooltip="The mouth track in crop coordinates, for OmniSyncLipSync."),
            ],
        )

    @classmethod
    def execute(cls, model, images, scale: float = 1.6, smooth_frames: int = 9, size: int = 0,
                mouth=None) -> io.NodeOutput:
        side, multiple = model_resolution(model, size)
        crops, info, crop_mouth = crop_faces(images, side, multiple, scale, smooth_frames, mouth,
                                              check_interrupt=interrupt_check())
        return io.NodeOutput(crops.to(output_device()), info, crop_mouth)


class OmniSyncFacePaste(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncFacePaste",
            display_name="OmniSync Face Paste",
            category=CATEGORY,
            description="Pastes lip-synced crops back into the full frames with a feathered edge and colour "
                        "matching. Pixels outside the crop boxes are unchanged; with blend 'mouth' only a soft "
                        "disc around the mouth is taken from the synced crops.",
            inputs=[
                io.Image.Input("images", tooltip="The full-size frames that were cropped."),
                io.Image.Input("synced", tooltip="The lip-synced crops (OmniSyncLipSync on OmniSyncFaceCrop's "
                                                 "crops)."),
                OmniCrop.Input("crop", tooltip="OmniSyncFaceCrop's crop output."),
                io.Int.Input("feather", default=16, min=0, max=256,
                             tooltip="Width in pixels of the soft edge blending the crop into the frame."),
                io.Combo.Input("blend", options=list(BLENDS), default="mouth", optional=True,  # old prompts: absent
                               tooltip="'mouth': take only a soft disc around the mouth from the synced crops "
                                       "(the rest keeps the source's full-resolution pixels; frames without a "
                                       "located mouth stay unchanged). 'jaw': the lips, chin and jaw outlined by the face "
                                       "mesh (the mouth disc on frames where the mesh found no face). 'box': take "
                                       "the whole crop."),
            ],
            outputs=[io.Image.Output("pasted", display_name="images")],
        )

    @classmethod
    def execute(cls, images, synced, crop: CropInfo, feather: int = 16, blend: str = "mouth") -> io.NodeOutput:
        return io.NodeOutput(paste_faces(images, synced, crop, feather, blend).to(output_device()))
