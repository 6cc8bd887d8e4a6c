"""OmniSyncLipSyncVideo: the one-node path for long videos. VIDEO + AUDIO -> VIDEO, file to file, any length."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import InputImpl, io

from ..omnisync_model.media.lipsync_file import BLENDS
from .adapters.audio_models import attach_audio_models, model_defaults
from .adapters.lipsync import make_options
from .audio_models import OmniAudioModels
from .runtime import comfy_hooks
from .sampling import _DEFAULTS, guidance_inputs, seed_input, steps_input, tau_input
from .types import CATEGORY, OmniModel
from .adapters.video import REGIONS, lipsync_video_file, spool_stream, write_frames_file

SUBFOLDER = "omnisync"


class OmniSyncLipSyncVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncLipSyncVideo",
            display_name="OmniSync Lip Sync (video, any length)",
            category=CATEGORY,
            description="Lip-syncs a VIDEO (e.g. from Load Video) to new speech, file to file: frames are decoded, "
                        "cropped around the face, synced, pasted back and encoded window by window, so memory "
                        "does not grow with the video's length (an IMAGE batch of a 10-minute 512x512 clip would "
                        "need 47 GB). Returns a VIDEO with the speech fitted to its length; connect Save Video.",
            inputs=[
                OmniModel.Input("model"),
                io.Video.Input("video", tooltip="The source video (its own audio is replaced)."),
                io.Audio.Input("audio", tooltip="The new speech; any sample rate and channel count. Trimmed or "
                                                "padded with silence to the video's length; no frame is dropped."),
                io.Combo.Input("region", options=list(REGIONS), default="face (auto)",
                               tooltip="'face (auto)': follow the located face and work on a crop at the model's "
                                       "resolution (pixels outside the crop are untouched). 'whole frame': the "
                                       "model sees the whole frame, resized to 'size'."),
                io.Combo.Input("blend", options=list(BLENDS), default="mouth",
                               tooltip="'mouth': take only a soft disc around the mouth from the result (the rest "
                                       "keeps the source's full-resolution pixels). 'jaw': the lips, chin and jaw "
                                       "outlined by the face mesh. 'box': take the whole crop."),
                io.Int.Input("size", default=0, min=0, max=4096, step=8,
                             tooltip="Working resolution in pixels; 0 = the resolution the model was trained at."),
                tau_input(),
                steps_input(),
                seed_input(),
                io.Int.Input("window", default=_DEFAULTS.window, min=1, max=1024, tooltip="Frames per window."),
                io.Int.Input("overlap", default=_DEFAULTS.overlap, min=0, max=1023,
                             tooltip="Frames shared by consecutive windows, crossfaded to hide seams."),
                *guidance_inputs(),
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional VAE for models trained in a VAE latent space; empty for the "
                                     "pixel-codec models (like the shipped demo model)."),
                OmniAudioModels.Input("audio_models", optional=True,
                                      tooltip="X-Dub: the speech encoders from OmniSync Audio Model Loader."),
            ],
            outputs=[io.Video.Output("synced", display_name="video")],
        )

    @classmethod
    def execute(cls, model, video, audio, region: str, blend: str, size: int, tau: float, steps: int, seed: int,
                window: int, overlap: int, w_peak: float, w_base: float, radius: float, gamma: float,
                vae=None, audio_models=None) -> io.NodeOutput:
        backend, hooks = attach_audio_models(model.model.backend, comfy_hooks(model), audio_models)
        options = model_defaults(make_options(tau, steps, seed, window, overlap, w_peak, w_base, radius, gamma),
                                 backend)
        scratch = os.path.join(folder_paths.get_temp_directory(), SUBFOLDER)
        copy = None
        try:
            if isinstance(video, InputImpl.VideoFromFile):
                source, is_copy = spool_stream(video.get_stream_source(), scratch)
                copy = source if is_copy else None
            else:  # frames in memory (e.g. Create Video after a generator)
                parts = video.get_components()
                source = copy = write_frames_file(parts.images, parts.frame_rate, scratch, hooks.check_interrupt)
            result = lipsync_video_file(backend, source, audio, scratch, options, region=region,
                                        blend=blend, size=size, vae=vae, hooks=hooks)
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)
        return io.NodeOutput(InputImpl.VideoFromFile(str(result.path)))
