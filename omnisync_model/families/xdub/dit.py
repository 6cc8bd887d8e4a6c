"""The X-Dub DiT module: Wan2.2-TI2V-5B's layers plus X-Dub's audio projection and per-block audio attention.

Top-level names follow the released checkpoint with no prefix (``patch_embedding``, ``text_embedding.{0,2}``,
``time_embedding.{0,2}``, ``time_projection.1``, ``audio_embedding.*``, ``blocks.N.*``, ``head.*``). The forward
pass is X-Dub's model function, :func:`.forward.xdub_forward`; ``XDubModel.forward`` calls it.

Every layer takes ``device``, ``dtype`` and ``operations`` (``torch.nn``, ``comfy.ops.*`` or :class:`.ops.CastOps`)
so weights can be offloaded and stored in another dtype (fp8) than the one computed in; the raw parameters
(``modulation``) and the stored position tables are cast to the activations in forward.

Shape legend
  B batch    C latent channels    T latent frames    H, W latent size    h, w token grid (H / 2, W / 2)
  D width    Ct text width    Lc text tokens    n timestep values
"""

from __future__ import annotations

import torch
from torch import nn

from .audio_proj import AudioProjection
from .blocks import OutputHead, XDubBlock
from .config import XDubConfig
from .forward import xdub_forward


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's sinusoidal timestep features, computed in float64: t [n] (0..1000) -> [n, dim] = (cos | sin) of
    ``t * 10000^(-i / (dim / 2))``."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)  # [half]
    args = t.to(torch.float64)[:, None] * freqs[None, :]  # [n, half]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=1)


class XDubModel(nn.Module):
    def __init__(self, config: XDubConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        self.config = config
        c, d = config, config.dim
        self.patch_embedding = operations.Conv3d(c.in_channels, d, kernel_size=c.patch_size, stride=c.patch_size,
                                                 device=device, dtype=dtype)
        self.text_embedding = nn.Sequential(operations.Linear(c.text_dim, d, device=device, dtype=dtype),
                                            nn.GELU(approximate="tanh"),
                                            operations.Linear(d, d, device=device, dtype=dtype))
        self.time_embedding = nn.Sequential(operations.Linear(c.freq_dim, d, device=device, dtype=dtype), nn.SiLU(),
                                            operations.Linear(d, d, device=device, dtype=dtype))
        self.time_projection = nn.Sequential(nn.SiLU(), operations.Linear(d, 6 * d, device=device, dtype=dtype))
        self.audio_embedding = AudioProjection(c.audio_in_dim, c.audio_hidden, d, c.audio_layers, c.audio_heads,
                                               c.audio_pos_len, device, dtype, operations)
        self.blocks = nn.ModuleList([XDubBlock(d, c.heads, c.ffn_dim, c.has_audio(i), device, dtype, operations)
                                     for i in range(c.depth)])
        self.head = OutputHead(d, c.out_channels * c.patch_volume, device, dtype, operations)

    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [B, n] -> (embedding [B, n, D], projection [B, n, 6, D]) in ``dtype``."""
        b, n = t.shape
        feats = timestep_features(t.reshape(-1), self.config.freq_dim).to(dtype)  # [B*n, freq_dim]
        emb = self.time_embedding(feats).reshape(b, n, -1)  # [B*n,D] -> [B,n,D]
        return emb, self.time_projection(emb).unflatten(-1, (6, self.config.dim))  # [B,n,6D] -> [B,n,6,D]

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """[B, C, T, H, W] -> tokens [B, T h w, D] (frame-major, then rows, then columns) and the grid (T, h, w)."""
        x = self.patch_embedding(x)  # [B, D, T, h, w]
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid  # [B,D,T*h*w] -> [B,T*h*w,D]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, T h w, pt ph pw C] (patch offsets major, channels minor) -> [B, C, T pt, h ph, w pw]."""
        t, h, w = grid
        pt, ph, pw = self.config.patch_size
        b = x.shape[0]
        x = x.reshape(b, t, h, w, pt, ph, pw, -1)  # split tokens and (patch, channel) features
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # -> [B, C, T, pt, h, ph, w, pw]
        return x.reshape(b, -1, t * pt, h * ph, w * pw)  # merge each axis with its patch offset

    def forward(self, latents: torch.Tensor, timestep, context: torch.Tensor, audio_feats=None, ref_latents=None,
                motion_latents=None) -> torch.Tensor:
        """X-Dub's model function; see :func:`.forward.xdub_forward`."""
        return xdub_forward(self, latents, timestep, context, audio_feats, ref_latents, motion_latents)
