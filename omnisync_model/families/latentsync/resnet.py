"""ResNet blocks, resampling and the window-spanning GroupNorm of the LatentSync / MuseTalk UNet.

The whole UNet carries its activations as an *image batch*: the window's frames folded into the batch, so every 2D
convolution runs on all frames at once (the reference's "inflated" Conv3d is exactly a Conv2d per frame). What the
folding must not change is LatentSync's normalisation: its ResNet GroupNorms (and the final one) are plain
``nn.GroupNorm`` layers applied to the 5D video tensor, so their statistics are taken over (channels of the group,
frames, height, width) of each sample. :func:`group_norm` reproduces that on the folded layout without a permute.
MuseTalk's UNet2D (and the spatial transformers' / motion modules' norms in both) normalise every image alone.

Shape legend
  B  videos in the batch      F  frames per video (1 for MuseTalk)      N  B * F images, b-major (b * F + f)
  C  channels                 G  GroupNorm groups                        h, w  latent height / width
  D  timestep-embedding width (4 x the first block's channels)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(norm: nn.Module, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Apply the GroupNorm ``norm`` to the image batch x [N,C,h,w], with statistics over each video's ``frames``.

    frames 1 is an ordinary per-image GroupNorm (the module's own forward). Otherwise mean and variance are taken
    per (video, group) over all frames, in float32 like PyTorch's own kernels, and the module's affine is applied.
    """
    if frames == 1:
        return norm(x)
    n, c, h, w = x.shape
    groups = norm.num_groups
    xv = x.reshape(n // frames, frames, groups, (c // groups) * h * w)  # [N,C,h,w] -> [B,F,G,C/G*h*w]
    xf = xv.float()
    var, mean = torch.var_mean(xf, dim=(1, 3), unbiased=False, keepdim=True)  # [B,1,G,1]
    y = ((xf - mean) * torch.rsqrt(var + norm.eps)).to(x.dtype).view(n, c, h, w)  # -> [N,C,h,w]
    if norm.weight is None:
        return y
    weight = norm.weight.to(device=x.device, dtype=x.dtype)
    bias = norm.bias.to(device=x.device, dtype=x.dtype)
    return torch.addcmul(bias[None, :, None, None], y, weight[None, :, None, None])  # y * w + b per channel


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, conv 3x3, + timestep projection, GroupNorm, SiLU, conv 3x3, + (1x1-projected) input.

    The reference's ``ResnetBlock3D`` / diffusers' ``ResnetBlock2D`` with the SD-1.5 settings (pre-norm, "default"
    time-embedding mode, output scale 1, no dropout at inference). The two GroupNorms span the frames when the
    UNet is temporal (see :func:`group_norm`).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int, eps: float, device=None,
                 dtype=None, operations=nn):
        super().__init__()
        self.norm1 = operations.GroupNorm(groups, in_channels, eps=eps, affine=True, device=device, dtype=dtype)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype)
        self.time_emb_proj = operations.Linear(time_dim, out_channels, device=device, dtype=dtype)
        self.norm2 = operations.GroupNorm(groups, out_channels, eps=eps, affine=True, device=device, dtype=dtype)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, device=device, dtype=dtype)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = operations.Conv2d(in_channels, out_channels, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        """x [N,C_in,h,w], temb [N,D] (already repeated per frame) -> [N,C_out,h,w]."""
        h = self.conv1(F.silu(group_norm(self.norm1, x, frames)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # [N,C_out] -> [N,C_out,1,1]
        h = self.conv2(F.silu(group_norm(self.norm2, h, frames)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample(nn.Module):
    """Conv 3x3 with stride 2 and padding 1 (SD's downsampler; key ``downsamplers.0.conv``)."""

    def __init__(self, channels: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize (to ``size``, else x2), then conv 3x3 (key ``upsamplers.0.conv``)."""

    def __init__(self, channels: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bfloat16 kernel on every device
            x = x.float()
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x.to(dtype))
