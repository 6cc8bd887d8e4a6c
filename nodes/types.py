"""Socket types shared by the OmniSync nodes (ComfyUI custom types are plain strings on the wire)."""

from comfy_api.latest import io

CATEGORY = "OmniSync"

OmniModel = io.Custom("OMNISYNC_MODEL")  # a ModelPatcher around a backend's weights (runtime.OmniSyncHolder)
OmniAudio = io.Custom("OMNISYNC_AUDIO")  # adapters.audio.EncodedAudio: the speech, ready for any window
OmniMouth = io.Custom("OMNISYNC_MOUTH")  # a mouth track: per-frame centres (normalised x, y) and validity
OmniCrop = io.Custom("OMNISYNC_CROP")  # per-frame face boxes of OmniSyncFaceCrop, for OmniSyncFacePaste
OmniWindow = io.Custom("OMNISYNC_WINDOW")  # adapters.windows.WindowSlot: one window of a split video
