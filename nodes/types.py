"""Socket types shared by the OmniSync nodes (ComfyUI custom types are plain strings on the wire)."""

from comfy_api.latest import io

CATEGORY = "OmniSync"

OmniModel = io.Custom("OMNISYNC_MODEL")  # a ModelPatcher around the OmniSync DiT + audio encoder
OmniAudio = io.Custom("OMNISYNC_AUDIO")  # adapters.EncodedAudio: audio tokens aligned to the video frames
OmniMouth = io.Custom("OMNISYNC_MOUTH")  # a mouth track: per-frame centres (normalised x, y) and validity
OmniCrop = io.Custom("OMNISYNC_CROP")  # per-frame face boxes of OmniSyncFaceCrop, for OmniSyncFacePaste
