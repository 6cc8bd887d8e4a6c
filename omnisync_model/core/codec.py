"""Video codecs: map frames to the latent the DiT works in, and back.

A codec is anything with ``spatial_factor``, ``temporal_factor``, ``latent_channels``, ``encode`` and ``decode``
(see :class:`Codec`). The pack ships :class:`PixelCodec`, a parameter-free space-to-depth transform used by the
synthetic demo model; ComfyUI nodes wrap a real VAE (e.g. Wan 2.1: 8x spatial, 4x temporal) behind the same
protocol.

Shape legend
  F  video frames     H, W  frame height, width     f  spatial factor     tf  temporal factor
  C  latent channels  T  latent frames (1 + (F-1)//tf)                    h, w  latent height, width (H/f, W/f)
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class Codec(Protocol):
    """Frames [F,H,W,3] in 0..1 <-> latent [1,C,T,h,w].

    ``encode`` requires H and W divisible by ``spatial_factor`` and, when ``temporal_factor`` > 1, F of the form
    1 + k * temporal_factor (use :func:`pad_frames_to_codec`). ``decode`` returns 1 + (T-1) * temporal_factor
    frames, clamped to 0..1.
    """

    spatial_factor: int
    temporal_factor: int
    latent_channels: int

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


class PixelCodec:
    """Parameter-free space-to-depth codec: each f x f pixel block becomes 3*f*f channels, scaled to -1..1.

    Channel order is PyTorch's ``pixel_unshuffle`` order: channel = rgb * f*f + dy * f + dx. One latent frame per
    video frame (temporal factor 1). ``decode(encode(x)) == x`` exactly for values that are multiples of 1/256.
    """

    temporal_factor = 1

    def __init__(self, factor: int = 4):
        if factor < 1:
            raise ValueError(f"PixelCodec factor must be >= 1, got {factor}")
        self.spatial_factor = int(factor)
        self.latent_channels = 3 * self.spatial_factor ** 2

    def __repr__(self) -> str:
        return f"PixelCodec(factor={self.spatial_factor})"

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [F,H,W,3] 0..1 -> latent [1, 3*f*f, F, H/f, W/f] in -1..1."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F, H, W, 3], got {list(frames.shape)}")
        f = self.spatial_factor
        height, width = frames.shape[1:3]
        if height % f or width % f:
            raise ValueError(f"frame size {height}x{width} is not divisible by the codec factor {f}; "
                             f"pad the frames first (pad_frames_to_codec)")
        x = frames.float() * 2 - 1
        x = F.pixel_unshuffle(x.permute(0, 3, 1, 2), f)  # [F,H,W,3] -> [F,3,H,W] -> [F,3*f*f,h,w]
        return x.permute(1, 0, 2, 3).unsqueeze(0)  # [F,C,h,w] -> [1,C,F,h,w]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [1, 3*f*f, T, h, w] -> frames [T, h*f, w*f, 3] clamped to 0..1."""
        if latent.dim() != 5 or latent.shape[0] != 1 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be [1, C={self.latent_channels}, T, h, w], got {list(latent.shape)}")
        x = latent[0].permute(1, 0, 2, 3)  # [1,C,T,h,w] -> [T,C,h,w]
        x = F.pixel_shuffle(x, self.spatial_factor)  # [T,C,h,w] -> [T,3,H,W]
        return ((x.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)  # [T,3,H,W] -> [T,H,W,3]


def make_codec(name: str) -> Codec:
    """Build a built-in codec from its config name: ``"pixel<f>"`` (e.g. ``"pixel4"``)."""
    match = re.fullmatch(r"pixel(\d+)", name)
    if match is None:
        raise ValueError(f"codec {name!r} is not built in (only 'pixel<factor>', e.g. 'pixel4'); "
                         f"load its VAE and wrap it in a Codec instead")
    return PixelCodec(int(match.group(1)))


def latent_frame_count(n_frames: int, temporal_factor: int) -> int:
    """Latent frames for ``n_frames`` video frames with a causal temporal factor: 1 + (n-1)//tf."""
    if n_frames < 1 or temporal_factor < 1:
        raise ValueError(f"need n_frames >= 1 and temporal_factor >= 1, got {n_frames}, {temporal_factor}")
    return 1 + (n_frames - 1) // temporal_factor


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_frames_to_codec(frames: torch.Tensor, spatial_multiple: int,
                        temporal_factor: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Pad frames [F,H,W,C] so a codec accepts them; returns (padded, original (F, H, W)).

    Height and width are padded at the bottom / right by edge replication to multiples of ``spatial_multiple``;
    the frame count is padded by repeating the last frame to the form 1 + k * temporal_factor.
    """
    if frames.dim() != 4 or frames.shape[0] < 1:
        raise ValueError(f"frames must be [F>=1, H, W, C], got {list(frames.shape)}")
    if spatial_multiple < 1 or temporal_factor < 1:
        raise ValueError(f"multiples must be >= 1, got {spatial_multiple}, {temporal_factor}")
    n, height, width = frames.shape[:3]
    n_pad = 1 + _round_up(n - 1, temporal_factor)
    h_pad, w_pad = _round_up(height, spatial_multiple), _round_up(width, spatial_multiple)
    if (n_pad, h_pad, w_pad) == (n, height, width):
        return frames, (n, height, width)
    dev = frames.device
    t_idx = torch.arange(n_pad, device=dev).clamp(max=n - 1)  # repeat the last frame
    y_idx = torch.arange(h_pad, device=dev).clamp(max=height - 1)  # replicate the bottom row
    x_idx = torch.arange(w_pad, device=dev).clamp(max=width - 1)  # replicate the right column
    padded = frames[t_idx][:, y_idx][:, :, x_idx]  # [F',H',W',C]
    return padded, (n, height, width)


def crop_back(frames: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_frames_to_codec`: frames [F',H',W',C] -> [F,H,W,C] for size (F, H, W)."""
    n, height, width = size
    if frames.shape[0] < n or frames.shape[1] < height or frames.shape[2] < width:
        raise ValueError(f"cannot crop frames {list(frames.shape[:3])} back to the larger size {[n, height, width]}")
    return frames[:n, :height, :width]
