"""OmniSyncLipSync: the one-node path. Frames + audio -> lip-synced frames, window by window."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from .adapters.audio_models import attach_audio_models, model_defaults
from .adapters.lipsync import lipsync_images, make_options
from .audio_models import OmniAudioModels
from .runtime import comfy_hooks
from .sampling import _DEFAULTS, guidance_inputs, seed_input, steps_input, tau_input
from .types import CATEGORY, OmniModel, OmniMouth

log = logging.getLogger(__name__)


class OmniSyncLipSync(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncLipSync",
            display_name="OmniSync Lip Sync",
            category=CATEGORY,
            description="Lip-syncs video frames to new speech, mask-free. Works window by window (encode, sample, "
                        "decode, crossfade the overlap), so memory is bounded by the window and videos of any "
                        "length work. Returns the frames and the audio fitted to the video's length.",
            inputs=[
                OmniModel.Input("model"),
                io.Image.Input("images", tooltip="Video frames (best with the face filling the frame: use "
                                                 "OmniSyncFaceCrop for wide shots)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                               tooltip="Frame rate of the frames (connect GetVideoComponents.fps)."),
                io.Audio.Input("audio", tooltip="The new speech; any sample rate and channel count."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional VAE for models trained in a VAE latent space. Leave empty for the "
                                     "pixel-codec models (like the shipped demo model)."),
                OmniMouth.Input("mouth", optional=True,
                                tooltip="Mouth track from OmniSyncMouthRegion (or OmniSyncFaceCrop). When empty, "
                                        "the built-in locator finds the mouth."),
                io.AudioEncoderOutput.Input("audio_features", optional=True,
                                            tooltip="Optional Whisper / wav2vec2 features (core "
                                                    "AudioEncoderEncode) used instead of the built-in audio "
                                                    "encoder; needs a checkpoint with a feature adapter."),
                OmniAudioModels.Input("audio_models", optional=True,
                                      tooltip="X-Dub: the speech encoders from OmniSync Audio Model Loader."),
                tau_input(),
                steps_input(),
                seed_input(),
                io.Int.Input("window", default=_DEFAULTS.window, min=1, max=1024,
                             tooltip="Frames per window. Larger windows see more context and need more memory; "
                                     "with a video VAE it is rounded down to 1 + k * temporal compression."),
                io.Int.Input("overlap", default=_DEFAULTS.overlap, min=0, max=1023,
                             tooltip="Frames shared by consecutive windows, crossfaded to hide seams "
                                     "(must be smaller than window)."),
                *guidance_inputs(),
            ],
            outputs=[
                io.Image.Output("synced", display_name="images"),
                io.Audio.Output("fitted_audio", display_name="audio",
                                tooltip="The audio trimmed or zero-padded to the video's length."),
            ],
        )

    @classmethod
    def execute(cls, model, images, fps: float, audio, tau: float, steps: int, seed: int, window: int,
                overlap: int, w_peak: float, w_base: float, radius: float, gamma: float, vae=None, mouth=None,
                audio_features=None, audio_models=None) -> io.NodeOutput:
        backend, hooks = attach_audio_models(model.model.backend, comfy_hooks(model), audio_models)
        options = model_defaults(make_options(tau, steps, seed, window, overlap, w_peak, w_base, radius, gamma),
                                 backend)
        frames, fitted = lipsync_images(backend, images, fps, audio, options, vae=vae, mouth=mouth,
                                        audio_features=audio_features, hooks=hooks)
        return io.NodeOutput(frames, fitted)
