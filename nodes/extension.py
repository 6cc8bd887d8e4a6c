"""The ComfyExtension listing the OmniSync nodes."""

from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .audio import OmniSyncAudioEncode
from .audio_models import OmniSyncAudioModelLoader
from .face import OmniSyncFaceCrop, OmniSyncFacePaste
from .lipsync import OmniSyncLipSync
from .lipsync_video import OmniSyncLipSyncVideo
from .loader import OmniSyncModelLoader
from .mouth import OmniSyncMouthRegion
from .sampling import OmniSyncNoiseInit, OmniSyncSampler
from .vae import OmniSyncPixelVAE
from .windows import OmniSyncWindowSplit, OmniSyncWindowStitch

NODES: list[type[io.ComfyNode]] = [
    OmniSyncModelLoader,
    OmniSyncAudioEncode,
    OmniSyncMouthRegion,
    OmniSyncNoiseInit,
    OmniSyncSampler,
    OmniSyncLipSync,
    OmniSyncLipSyncVideo,
    OmniSyncFaceCrop,
    OmniSyncFacePaste,
    OmniSyncPixelVAE,
    OmniSyncWindowSplit,
    OmniSyncWindowStitch,
    OmniSyncAudioModelLoader,
]


class OmniSyncExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> OmniSyncExtension:
    return OmniSyncExtension()
