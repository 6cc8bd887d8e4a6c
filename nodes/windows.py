"""OmniSyncWindowSplit and OmniSyncWindowStitch: chunked stitching made visible in the graph.

The split hands on a list (one item per window), so ComfyUI runs everything between the two nodes (VAEEncode,
OmniSyncNoiseInit, OmniSyncSampler, VAEDecode) once per window; the stitch takes the whole list back.
"""

from __future__ import annotations

from comfy_api.latest import io

from .adapters.codecs import VAECodec
from .adapters.windows import split_windows, stitch_windows
from .sampling import _DEFAULTS
from .types import CATEGORY, OmniWindow


class OmniSyncWindowSplit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncWindowSplit",
            display_name="OmniSync Window Split",
            category=CATEGORY,
            description="Cuts a video into the overlapping windows OmniSyncLipSync would use and outputs them as a "
                        "list: the nodes after it run once per window. Connect both outputs onwards (the window "
                        "to OmniSyncNoiseInit and OmniSyncSampler) and join the decoded windows with "
                        "OmniSyncWindowStitch.",
            inputs=[
                io.Image.Input("images", tooltip="The whole video (frames), e.g. from GetVideoComponents."),
                io.Int.Input("window", default=_DEFAULTS.window, min=1, max=1024,
                             tooltip="Frames per window (with a video VAE rounded down to 1 + k * its temporal "
                                     "compression)."),
                io.Int.Input("overlap", default=_DEFAULTS.overlap, min=0, max=1023,
                             tooltip="Frames shared by consecutive windows, crossfaded by OmniSyncWindowStitch."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The VAE the windows will be encoded with, only to read its temporal "
                                     "compression. Without it one latent frame is one video frame."),
            ],
            outputs=[
                io.Image.Output("window_images", display_name="images", is_output_list=True),
                OmniWindow.Output("windows", display_name="window", is_output_list=True),
            ],
        )

    @classmethod
    def execute(cls, images, window: int, overlap: int, vae=None) -> io.NodeOutput:
        tf = VAECodec(vae).temporal_factor if vae is not None else 1
        chunks, slots = split_windows(images, window, overlap, tf)
        return io.NodeOutput(chunks, slots)


class OmniSyncWindowStitch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncWindowStitch",
            display_name="OmniSync Window Stitch",
            category=CATEGORY,
            description="Collects the windows of OmniSyncWindowSplit (as decoded frames) and crossfades their "
                        "overlaps back into one video with exactly the input's frame count.",
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The decoded windows (VAEDecode after OmniSyncSampler)."),
                OmniWindow.Input("window", tooltip="The window output of the same OmniSyncWindowSplit."),
            ],
            outputs=[io.Image.Output("stitched", display_name="images")],
        )

    @classmethod
    def execute(cls, images, window) -> io.NodeOutput:
        return io.NodeOutput(stitch_windows(images, window))
