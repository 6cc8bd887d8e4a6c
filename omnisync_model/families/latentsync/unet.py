"""The LatentSync 1.5 / 1.6 UNet3D and the MuseTalk 1.5 UNet2D as one module.

``LatentSyncUNet(config)(sample, timestep, audio)`` predicts the diffusion noise (epsilon) of ``sample``:

* LatentSync: sample [B,13,F,h,w] (noisy latent 4, mask 1, masked frame 4, reference frame 4; F <= 24 frames),
  an integer DDPM timestep (0..999) per video, audio [B*F,50,384] (b-major, as the reference's pipeline stacks the
  per-frame Whisper windows) or [B,F,50,384], or None (the reference then skips every audio cross-attention).
* MuseTalk: sample [N,8,h,w] (masked frame 4, reference 4), timestep 0, audio [N,50,384] (Whisper features plus
  MuseTalk's positional table, see :func:`~.loading.musetalk_audio`); a 5D input is taken as B*F separate images.

State-dict keys are those of the released checkpoints, so a converted file loads without renaming.

Shape legend
  B  videos   F  frames per video   N = B * F images (b-major)   C  channels   h, w  latent size (crop / 8)
  S  audio tokens per frame (50)    A  audio width (384)          D  timestep-embedding width (1280)
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...core.layers import sinusoidal_embedding
from .blocks import DownBlock, MidBlock, UpBlock
from .config import LatentSyncConfig
from .motion import PositionalEncoding
from .resnet import group_norm


class TimestepEmbedding(nn.Module):
    """Sinusoidal features (cos | sin, 10000 max period) of the timestep, then linear, SiLU, linear."""

    def __init__(self, freq_dim: int, dim: int, device=None, dtype=None, operations=nn):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = operations.Linear(freq_dim, dim, device=device, dtype=dtype)
        self.linear_2 = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t [B] (any real dtype) -> [B,D]."""
        features = sinusoidal_embedding(t, self.freq_dim).to(dtype)  # float32 features, then the model's dtype
        return self.linear_2(F.silu(self.linear_1(features)))


class LatentSyncUNet(nn.Module):
    def __init__(self, config: LatentSyncConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        c0 = config.block_channels[0]
        levels = len(config.block_channels)
        self.conv_in = operations.Conv2d(config.in_channels, c0, 3, padding=1, **kw)
        self.time_embedding = TimestepEmbedding(c0, config.time_dim, operations=operations, **kw)
        self.down_blocks = nn.ModuleList([DownBlock(config, i, operations=operations, **kw) for i in range(levels)])
        self.mid_block = MidBlock(config, operations=operations, **kw)
        self.up_blocks = nn.ModuleList([UpBlock(config, i, operations=operations, **kw) for i in range(levels)])
        self.conv_norm_out = operations.GroupNorm(config.norm_groups, c0, eps=config.norm_eps, affine=True, **kw)
        self.conv_out = operations.Conv2d(c0, config.out_channels, 3, padding=1, **kw)

    # ------------------------------------------------------------------ helpers

    def reset_positional_tables(self) -> None:
        """Refill every motion module's fixed positional table (``pe`` buffers)."""
        for module in self.modules():
            if isinstance(module, PositionalEncoding):
                module.reset()

    def _timesteps(self, timestep: Union[torch.Tensor, float, int], batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t[None]
        if t.dim() != 1 or t.shape[0] not in (1, batch):
            raise ValueError(f"timestep must be a number or have one entry per video ({batch}); got {tuple(t.shape)}")
        return t.expand(batch)

    def _audio(self, audio: Optional[torch.Tensor], videos: int, frames: int) -> Optional[torch.Tensor]:
        """Audio per image: [N,S,A] (from [B,F,S,A], [N,S,A], or [B,S,A] shared by a video's frames)."""
        if audio is None:
            return None
        n = videos * frames
        if audio.dim() == 4 and audio.shape[0] * audio.shape[1] == n:
            return audio.reshape(n, *audio.shape[2:])  # [B,F,S,A] -> [N,S,A]
        if audio.dim() == 3 and audio.shape[0] == n:
            return audio
        if audio.dim() == 3 and audio.shape[0] == videos:
            return audio.repeat_interleave(frames, dim=0)  # one context for all frames of a video
        raise ValueError(f"audio must be [B*F,S,A], [B,F,S,A] or [B,S,A] with B={videos}, F={frames}; "
                         f"got {tuple(audio.shape)}")

    # ------------------------------------------------------------------ forward

    def forward(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Noise prediction with the input's layout: [B,C_in,F,h,w] -> [B,4,F,h,w], [N,C_in,h,w] -> [N,4,h,w]."""
        video = sample.dim() == 5
        if not video and sample.dim() != 4:
            raise ValueError(f"sample must be [B,C,F,h,w] or [N,C,h,w]; got {tuple(sample.shape)}")
        if sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample has {sample.shape[1]} channels; this UNet takes {self.config.in_channels}")
        b, frames = (sample.shape[0], sample.shape[2]) if video else (sample.shape[0], 1)
        if video and not self.config.temporal:  # MuseTalk: every frame is an independent image
            b, frames = b * frames, 1
        if self.config.max_frames is not None and frames > self.config.max_frames:
            raise ValueError(f"a window of {frames} frames is longer than this UNet's motion modules take "
                             f"({self.config.max_frames}); use windows of at most {self.config.max_frames} frames")
        x = sample.transpose(1, 2).flatten(0, 1) if video else sample  # [B,C,F,h,w] -> [B*F,C,h,w]
        x = x.contiguous()
        temb = self.time_embedding(self._timesteps(timestep, b, x.device), x.dtype)  # [B,D]
        temb = temb.repeat_interleave(frames, dim=0)  # [B,D] -> [N,D]
        ctx = self._audio(audio, b, frames)
        if ctx is not None:
            ctx = ctx.to(x.dtype)
        out = self._unet(x, temb, ctx, frames)
        if video:
            out = out.unflatten(0, (sample.shape[0], sample.shape[2])).transpose(1, 2).contiguous()  # -> [B,4,F,h,w]
        return out

    def _unet(self, x: torch.Tensor, temb: torch.Tensor, audio: Optional[torch.Tensor],
              frames: int) -> torch.Tensor:
        """The network on the image batch: x [N,C_in,h,w] -> [N,4,h,w]."""
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, audio, frames)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, audio, frames)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            size = skips[-n - 1].shape[-2:] if i < len(self.up_blocks) - 1 else None  # next level's skip size
            x = block(x, skips, temb, audio, frames, size)
        x = F.silu(group_norm(self.conv_norm_out, x, frames))
        return self.conv_out(x)
