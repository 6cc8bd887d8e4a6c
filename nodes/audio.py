"""OmniSyncAudioEncode: AUDIO or core AUDIO_ENCODER_OUTPUT -> OMNISYNC_AUDIO aligned to the video's frames."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from .adapters.audio import encode_audio, speech_inputs
from .adapters.frames import image_to_frames
from .runtime import prepare_model
from .types import CATEGORY, OmniAudio, OmniModel

log = logging.getLogger(__name__)


class OmniSyncAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncAudioEncode",
            display_name="OmniSync Audio Encode",
            category=CATEGORY,
            description="Turns speech into OmniSync audio features, one set per video frame, aligned by time "
                        "(frame i is centred at (i + 0.5) / fps seconds). Also returns the audio trimmed or padded "
                        "to the video's length, ready for CreateVideo.",
            inputs=[
                OmniModel.Input("model"),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                               tooltip="Frame rate of the video the audio drives (connect GetVideoComponents.fps)."),
                io.Int.Input("frame_count", display_name="frame_count (if no images)", default=25, min=1,
                             max=1_000_000,
                             tooltip="Number of video frames, used only when 'images' is NOT connected; with "
                                     "'images' connected their frame count is used and this value is ignored."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Speech, any sample rate and channel count (downmixed and resampled to "
                                       "16 kHz for the model's built-in audio encoder)."),
                io.AudioEncoderOutput.Input("audio_features", optional=True,
                                            tooltip="Optional features from core AudioEncoderEncode (Whisper or "
                                                    "wav2vec2). Used instead of the built-in encoder when "
                                                    "connected; needs a checkpoint with a feature adapter."),
                io.Image.Input("images", optional=True,
                               tooltip="Optional: the video frames, only to count them."),
            ],
            outputs=[
                OmniAudio.Output("encoded", display_name="omnisync_audio"),
                io.Audio.Output("fitted_audio", display_name="audio",
                                tooltip="The input audio trimmed or zero-padded to frame_count / fps seconds "
                                        "(silence when only audio_features are connected)."),
            ],
        )

    @classmethod
    def execute(cls, model, fps: float, frame_count: int, audio=None, audio_features=None,
                images=None) -> io.NodeOutput:
        n_frames = image_to_frames(images).shape[0] if images is not None else int(frame_count)
        source, fitted = speech_inputs(audio, audio_features, n_frames, fps)
        encoded = encode_audio(prepare_model(model), source, fps, n_frames)
        return io.NodeOutput(encoded, fitted)
