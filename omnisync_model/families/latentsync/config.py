"""Configuration of the LatentSync / MuseTalk UNet: a frozen dataclass, named presets, inference from shapes.

Both families are the Stable Diffusion 1.5 UNet with the text cross-attention replaced by Whisper-tiny audio
features (width 384):

* **LatentSync 1.5 / 1.6** (bytedance/LatentSync, ``configs/unet/stage2.yaml`` / ``stage2_512.yaml``): a UNet3D
  whose 2D convolutions run on every frame, whose ResNet GroupNorms take their statistics over all frames of the
  window, and with AnimateDiff motion modules (temporal self-attention, a 24-frame positional table) after every
  ResNet/attention pair of the encoder and decoder. 13 input channels: noisy latent 4, mask 1, masked frame 4,
  reference frame 4. 1.5 and 1.6 are the same network; they differ only in the training resolution (256 / 512).
* **MuseTalk 1.5** (TMElyralab/MuseTalk, ``musetalkV15/musetalk.json``): diffusers' ``UNet2DConditionModel``, the
  same layout without motion modules, every image normalised alone; 8 input channels: masked frame 4, reference 4.

The configuration is rebuilt from a checkpoint's tensor shapes (:func:`infer_config`); the two quantities shapes
cannot tell (attention heads, GroupNorm groups) are 8 and 32 in every released file and in the presets.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

FAMILIES = ("latentsync", "musetalk")
LATENTSYNC_IN_CHANNELS = 13  # noisy latent 4 + mask 1 + masked frame 4 + reference frame 4
MUSETALK_IN_CHANNELS = 8  # masked frame 4 + reference frame 4
AUDIO_WIDTH = 384  # Whisper tiny's hidden width
SD_TEXT_WIDTHS = {768: "SD-1.5", 1024: "SD-2"}  # text cross-attention widths of plain Stable Diffusion UNets


@dataclass(frozen=True)
class LatentSyncConfig:
    """Hyper-parameters of the UNet (field names follow the reference's config where one exists).

    temporal: True for LatentSync's UNet3D, whose ResNet (and final) GroupNorms span the window's frames; False
    for MuseTalk's UNet2D (every image normalised alone). attention_levels[i]: encoder level i (and the mirrored
    decoder level) has spatial transformers. motion_down / motion_up: motion modules in the encoder / decoder
    blocks (LatentSync: both; its "efficient" variant: decoder only). audio_dim 0: no audio cross-attention.
    resolution: the face crop the weights were trained at (informational; the network takes any multiple of 8).
    """

    name: str = "custom"
    family: str = "latentsync"
    in_channels: int = LATENTSYNC_IN_CHANNELS
    out_channels: int = 4
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    heads: int = 8
    audio_dim: int = AUDIO_WIDTH
    norm_groups: int = 32
    norm_eps: float = 1e-5
    temporal: bool = True
    motion_down: bool = True
    motion_up: bool = True
    motion_heads: int = 8
    motion_attention_blocks: int = 2  # "Temporal_Self", "Temporal_Self"
    motion_layers: int = 1  # temporal transformer blocks per motion module
    motion_max_frames: int = 24  # rows of the sinusoidal positional table: the longest window
    motion_norm_groups: int = 32  # fixed in the reference's temporal transformer
    resolution: int = 256

    def __post_init__(self) -> None:
        errors = []
        if self.family not in FAMILIES:
            errors.append(f"family={self.family!r} is not one of {FAMILIES}")
        if not self.block_channels:
            errors.append("block_channels is empty")
        if len(self.attention_levels) != len(self.block_channels):
            errors.append(f"attention_levels has {len(self.attention_levels)} entries for "
                          f"{len(self.block_channels)} levels")
        for ch in self.block_channels:
            if ch % self.norm_groups:
                errors.append(f"block channel {ch} is not divisible by norm_groups={self.norm_groups}")
            if ch % self.heads:
                errors.append(f"block channel {ch} is not divisible by heads={self.heads}")
            if self.has_motion and (ch % self.motion_heads or ch % self.motion_norm_groups):
                errors.append(f"block channel {ch} is not divisible by the motion module's heads / groups")
        for name in ("in_channels", "out_channels", "layers_per_block", "heads", "norm_groups"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.has_motion and not self.temporal:
            errors.append("motion modules need a temporal UNet (temporal=True)")
        if self.has_motion and (self.motion_max_frames <= 0 or self.motion_attention_blocks <= 0
                                or self.motion_layers <= 0):
            errors.append("motion modules need motion_max_frames, motion_attention_blocks, motion_layers > 0")
        if errors:
            raise ValueError("invalid LatentSyncConfig: " + "; ".join(errors))

    @property
    def has_motion(self) -> bool:
        return self.motion_down or self.motion_up

    @property
    def time_dim(self) -> int:
        """Width of the timestep embedding (4 x the first block's channels, as in SD)."""
        return 4 * self.block_channels[0]

    @property
    def max_frames(self) -> Optional[int]:
        """The longest window the network can take (None: no limit)."""
        return self.motion_max_frames if self.has_motion else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatentSyncConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LatentSyncConfig fields: {unknown}")
        values = dict(data)
        for name in ("block_channels", "attention_levels"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> "LatentSyncConfig":
        return dataclasses.replace(self, **changes)


_LATENTSYNC = LatentSyncConfig(name="latentsync-1.5")
PRESETS: dict[str, LatentSyncConfig] = {
    "latentsync-1.5": _LATENTSYNC,
    "latentsync-1.6": _LATENTSYNC.replace(name="latentsync-1.6", resolution=512),
    "musetalk-1.5": LatentSyncConfig(name="musetalk-1.5", family="musetalk", in_channels=MUSETALK_IN_CHANNELS,
                                     temporal=False, motion_down=False, motion_up=False),
    # tests: two levels, one layer each, motion modules on; a 16-frame 8x8 forward runs in well under a second
    "tiny": LatentSyncConfig(name="tiny", block_channels=(32, 64), layers_per_block=1,
                             attention_levels=(True, False), audio_dim=16),
}


def get_preset(name: str) -> LatentSyncConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown LatentSync preset {name!r}; choose from {sorted(PRESETS)}") from None


# --------------------------------------------------------------------------------------------- from shapes

_DOWN_RESNET = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
_MOTION_BLOCK = re.compile(r"\.motion_modules\.\d+\.temporal_transformer\.transformer_blocks\.(\d+)\."
                           r"attention_blocks\.(\d+)\.")


def _indices(shapes: Mapping[str, Sequence[int]], pattern: re.Pattern, group: int) -> set[int]:
    return {int(m.group(group)) for k in shapes if (m := pattern.search(k))}


def input_channels(shapes: Mapping[str, Sequence[int]]) -> Optional[int]:
    shape = shapes.get("conv_in.weight")
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def cross_attention_width(shapes: Mapping[str, Sequence[int]]) -> Optional[int]:
    """Context width of the spatial transformers' attn2 (384: Whisper tiny audio; 768: SD-1.5 text)."""
    for k, shape in shapes.items():
        if k.endswith(".attn2.to_k.weight") and ".attentions." in k:
            return int(shape[1])
    return None


def has_motion_modules(shapes: Mapping[str, Sequence[int]]) -> bool:
    return any(".motion_modules." in k for k in shapes)


def infer_config(shapes: Mapping[str, Sequence[int]], family: Optional[str] = None,
                 name: str = "from-shapes") -> LatentSyncConfig:
    """Rebuild the configuration from tensor shapes {name: shape} (a state dict's or a safetensors header's).

    ``family`` None takes it from the layout (motion modules or 13 input channels: LatentSync; else MuseTalk);
    heads (8) and GroupNorm groups (32) are not visible in shapes and keep the released values. Raises
    ``ValueError`` when the shapes are not an SD-1.5-family UNet at all.
    """
    levels = sorted(_indices(shapes, _DOWN_RESNET, 1))
    cin = input_channels(shapes)
    if cin is None or not levels or levels != list(range(len(levels))) or "conv_out.weight" not in shapes:
        raise ValueError("not an SD-1.5-family UNet: conv_in / down_blocks.*.resnets / conv_out are missing")
    block_channels = tuple(int(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0]) for i in levels)
    layers = len({m.group(2) for k in shapes if (m := _DOWN_RESNET.match(k)) and m.group(1) == "0"})
    attention = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in shapes) for i in levels)
    motion_down = any(k.startswith("down_blocks.") and ".motion_modules." in k for k in shapes)
    motion_up = any(k.startswith("up_blocks.") and ".motion_modules." in k for k in shapes)
    if family is None:
        family = "latentsync" if (motion_down or motion_up or cin == LATENTSYNC_IN_CHANNELS) else "musetalk"
    pe = next((shape for k, shape in shapes.items() if k.endswith(".pos_encoder.pe")), None)
    motion = {}
    if motion_down or motion_up:
        motion = {"motion_attention_blocks": max(_indices(shapes, _MOTION_BLOCK, 2), default=0) + 1,
                  "motion_layers": max(_indices(shapes, _MOTION_BLOCK, 1), default=0) + 1}
        if pe is not None:
            motion["motion_max_frames"] = int(pe[1])
    return LatentSyncConfig(
        name=name,
        family=family,
        in_channels=cin,
        out_channels=int(shapes["conv_out.weight"][0]),
        block_channels=block_channels,
        layers_per_block=layers,
        attention_levels=attention,
        audio_dim=cross_attention_width(shapes) or 0,
        temporal=family == "latentsync",
        motion_down=motion_down,
        motion_up=motion_up,
        **motion,
    )
