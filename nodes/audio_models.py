"""OmniSyncAudioModelLoader: the speech encoders X-Dub needs (Whisper large-v2, converted to safetensors, and the
facebook/wav2vec2-base-960h folder) from models/audio_encoders -> OMNISYNC_AUDIO_MODELS for the lip-sync nodes.

The encoders sit behind their own ModelPatcher, so ComfyUI's memory manager moves them to the GPU to encode a
clip's speech and evicts them when the DiT needs the room.
"""

from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..omnisync_model.backends.xdub.speech import XDubSpeech
from .adapters.audio_models import load_audio_models, wav2vec2_folders
from .types import CATEGORY

log = logging.getLogger(__name__)

FOLDER = "audio_encoders"  # ComfyUI's own folder for speech encoders
NO_WAV2VEC2 = "none"  # Whisper alone (LatentSync)
OmniAudioModels = io.Custom("OMNISYNC_AUDIO_MODELS")  # adapters.audio_models.AudioModels


def whisper_names() -> list[str]:
    """.safetensors files in models/audio_encoders, except those inside a wav2vec2 (or other config.json) folder."""
    folders = set(wav2vec2_names())
    return [n for n in folder_paths.get_filename_list(FOLDER) if n.endswith(".safetensors")
            and n.replace("\\", "/").split("/", 1)[0] not in folders]


def wav2vec2_names() -> list[str]:
    return wav2vec2_folders(folder_paths.get_folder_paths(FOLDER))


def _resolve_folder(name: str) -> str:
    for root in folder_paths.get_folder_paths(FOLDER):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"wav2vec2 folder {name!r} not found in models/{FOLDER} "
                            f"({', '.join(folder_paths.get_folder_paths(FOLDER))})")


class _Encoders(torch.nn.Module):
    """What the ModelPatcher manages: both encoders' weights."""

    def __init__(self, speech: XDubSpeech):
        super().__init__()
        self.whisper, self.wav2vec2 = speech.whisper, speech.wav2vec2


def _managed(speech: XDubSpeech) -> XDubSpeech:
    """The encoders behind a ModelPatcher: loaded to the torch device for each encoding."""
    patcher = comfy.model_patcher.ModelPatcher(_Encoders(speech), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    def prepare():
        mm.load_models_gpu([patcher])
        return patcher.load_device

    return XDubSpeech(speech.whisper, speech.wav2vec2, prepare=prepare)


class OmniSyncAudioModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OmniSyncAudioModelLoader",
            display_name="OmniSync Audio Model Loader",
            category=CATEGORY,
            description="Loads the speech encoders of the real-weight models from models/audio_encoders: X-Dub takes "
                        "Whisper large-v2 plus the facebook/wav2vec2-base-960h folder (config.json + "
                        "model.safetensors); LatentSync takes Whisper tiny alone (wav2vec2: none). Convert the "
                        "Whisper .pt once with `omnisync convert` (safetensors only). Connect the output to the "
                        "lip-sync node's audio_models input. Needs the 'transformers' package.",
            inputs=[
                io.Combo.Input("whisper", options=whisper_names(),
                               tooltip="Whisper large-v2 encoder (.safetensors converted from large-v2.pt)."),
                io.Combo.Input("wav2vec2", options=[NO_WAV2VEC2, *wav2vec2_names()],
                               default=(wav2vec2_names() or [NO_WAV2VEC2])[0],
                               tooltip="Folder with wav2vec2-base-960h: config.json + model.safetensors (X-Dub). "
                                       "LatentSync uses Whisper tiny alone: choose 'none'."),
            ],
            outputs=[OmniAudioModels.Output("audio_models", display_name="audio_models")],
        )

    @classmethod
    def validate_inputs(cls, whisper: str, wav2vec2: str):
        if whisper not in whisper_names():
            return f"Whisper encoder {whisper!r} is not in models/{FOLDER} (.safetensors)"
        if wav2vec2 != NO_WAV2VEC2 and wav2vec2 not in wav2vec2_names():
            return f"wav2vec2 folder {wav2vec2!r} is not in models/{FOLDER} (needs config.json + weights)"
        return True

    @classmethod
    def execute(cls, whisper: str, wav2vec2: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, whisper)
        if path is None:
            raise FileNotFoundError(f"Whisper encoder {whisper!r} not found in models/{FOLDER}")
        folder = _resolve_folder(wav2vec2) if wav2vec2 != NO_WAV2VEC2 else None
        return io.NodeOutput(load_audio_models(path, folder, wrap=_managed))
