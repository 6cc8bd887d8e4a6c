"""Encoder, middle and decoder blocks of the LatentSync / MuseTalk UNet (SD-1.5 layout).

Encoder level i (``down_blocks.i``): ``layers_per_block`` x [ResNet, spatial transformer (if the level has
attention), motion module (if any)], each output kept as a skip; then a stride-2 conv (all but the last level),
also kept. Middle (``mid_block``): ResNet, transformer, ResNet (no motion module in LatentSync). Decoder level i
(``up_blocks.i``, mirrored): ``layers_per_block + 1`` x [concatenate the latest skip, ResNet, transformer, motion
module], then nearest x2 upsampling and a conv (all but the last level).

Shape legend
  N  images (B videos x F frames)   C  channels   h, w  latent size   D  timestep-embedding width
  S  audio tokens per image         A  audio width
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .attention import SpatialTransformer
from .config import LatentSyncConfig
from .motion import MotionModule
from .resnet import Downsample, ResnetBlock, Upsample


def _resnet(config: LatentSyncConfig, cin: int, cout: int, kw: dict) -> ResnetBlock:
    return ResnetBlock(cin, cout, config.time_dim, config.norm_groups, config.norm_eps, **kw)


def _transformer(config: LatentSyncConfig, channels: int, kw: dict) -> SpatialTransformer:
    return SpatialTransformer(channels, config.heads, config.audio_dim, config.norm_groups, **kw)


def _motion(config: LatentSyncConfig, channels: int, kw: dict) -> MotionModule:
    return MotionModule(channels, config.motion_heads, config.motion_attention_blocks, config.motion_layers,
                        config.motion_max_frames, config.motion_norm_groups, **kw)


class _Stage(nn.Module):
    """Shared forward of one ResNet / transformer / motion-module triple."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList
    motion_modules: nn.ModuleList

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, audio: Optional[torch.Tensor],
               frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb, frames)
        if len(self.attentions):
            x = self.attentions[i](x, audio)
        if len(self.motion_modules):
            x = self.motion_modules[i](x, frames)
        return x


class DownBlock(_Stage):
    def __init__(self, config: LatentSyncConfig, level: int, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype, operations=operations)
        cout = config.block_channels[level]
        cin = config.block_channels[max(level - 1, 0)]
        n = config.layers_per_block
        self.resnets = nn.ModuleList([_resnet(config, cin if j == 0 else cout, cout, kw) for j in range(n)])
        attend = config.attention_levels[level]
        self.attentions = nn.ModuleList([_transformer(config, cout, kw) for _ in range(n)] if attend else [])
        self.motion_modules = nn.ModuleList([_motion(config, cout, kw) for _ in range(n)] if config.motion_down
                                            else [])
        last = level == len(config.block_channels) - 1
        self.downsamplers = None if last else nn.ModuleList([Downsample(cout, **kw)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: Optional[torch.Tensor],
                frames: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, audio, frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Stage):
    def __init__(self, config: LatentSyncConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype, operations=operations)
        c = config.block_channels[-1]
        self.resnets = nn.ModuleList([_resnet(config, c, c, kw), _resnet(config, c, c, kw)])
        self.attentions = nn.ModuleList([_transformer(config, c, kw)])
        self.motion_modules = nn.ModuleList()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, audio: Optional[torch.Tensor],
                frames: int) -> torch.Tensor:
        x = self.resnets[0](x, temb, frames)
        x = self.attentions[0](x, audio)
        return self.resnets[1](x, temb, frames)


class UpBlock(_Stage):
    """Decoder level ``index`` (0 = deepest), mirroring encoder level ``L - 1 - index``."""

    def __init__(self, config: LatentSyncConfig, index: int, device=None, dtype=None, operations=nn):
        super().__init__()
        kw = dict(device=device, dtype=dtype, operations=operations)
        rev = list(reversed(config.block_channels))
        levels = len(rev)
        cout = rev[index]
        prev = rev[max(index - 1, 0)]  # channels coming up from the deeper level
        skip_in = rev[min(index + 1, levels - 1)]  # channels of the encoder level's input (its last skip)
        n = config.layers_per_block + 1
        resnets = []
        for j in range(n):
            skip = skip_in if j == n - 1 else cout
            resnets.append(_resnet(config, (prev if j == 0 else cout) + skip, cout, kw))
        self.resnets = nn.ModuleList(resnets)
        attend = config.attention_levels[levels - 1 - index]
        self.attentions = nn.ModuleList([_transformer(config, cout, kw) for _ in range(n)] if attend else [])
        self.motion_modules = nn.ModuleList([_motion(config, cout, kw) for _ in range(n)] if config.motion_up
                                            else [])
        self.upsamplers = None if index == levels - 1 else nn.ModuleList([Upsample(cout, **kw)])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor,
                audio: Optional[torch.Tensor], frames: int, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Consumes the last ``len(self.resnets)`` entries of ``skips`` (popped); ``size``: upsampled h, w."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)  # [N,C,h,w] + [N,Cs,h,w] -> [N,C+Cs,h,w]
            x = self._layer(i, x, temb, audio, frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x
