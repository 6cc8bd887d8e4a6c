"""The OmniSync video Diffusion Transformer (mask-free, reference-free).

It predicts the flow-matching velocity for a noisy video latent, conditioned on the source video latent (mask-free:
the whole source enters, nothing is masked), on audio tokens per latent frame, and on sigma.

Shape legend
  B  batch              C  latent channels        T  latent frames      H, W  latent height, width
  p  spatial patch      h, w  token grid (H/p, W/p)                     N  tokens per frame (h*w)
  D  model width        K  audio tokens per frame  A  audio width       L  text tokens
Block = spatial self-attention (within each frame) -> temporal self-attention (per token position, across
frames) -> audio cross-attention (each frame's tokens attend to that frame's audio window) -> [text
cross-attention, optional] -> FFN. AdaLN-single timestep modulation, zero initialised (each block starts as
the identity, the output layer starts at zero). 3D RoPE on (t, y, x) in both self-attentions.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import OmniSyncConfig
from ...core.layers import (CrossAttention, FeedForward, SelfAttention, TimestepEmbedding, gate, grid_positions, modulate,
                     rope_angles)

N_MOD = 12  # (shift, scale, gate) x (spatial, temporal, audio, ffn)


def _layer_norm(dim: int, device, dtype, operations) -> nn.Module:
    return operations.LayerNorm(dim, elementwise_affine=False, eps=1e-6, device=device, dtype=dtype)


class DiTBlock(nn.Module):
    def __init__(self, cfg: OmniSyncConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        d, kw = cfg.dim, dict(device=device, dtype=dtype, operations=operations)
        self.mod_bias = nn.Parameter(torch.zeros(N_MOD, d, device=device, dtype=dtype))
        self.norm_s, self.norm_t, self.norm_a, self.norm_f = (_layer_norm(d, device, dtype, operations) for _ in range(4))
        self.spatial = SelfAttention(d, cfg.heads, cfg.qk_norm, **kw)
        self.temporal = SelfAttention(d, cfg.heads, cfg.qk_norm, **kw)
        self.audio = CrossAttention(d, cfg.audio_dim, cfg.heads, cfg.qk_norm, **kw)
        self.text = CrossAttention(d, cfg.text_dim, cfg.heads, cfg.qk_norm, **kw) if cfg.text_dim > 0 else None
        self.norm_x = _layer_norm(d, device, dtype, operations) if cfg.text_dim > 0 else None
        self.ffn = FeedForward(d, cfg.ffn_dim, **kw)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, ctx: dict) -> torch.Tensor:
        """x [B,T,N,D]; mod [B,12,D] (shared timestep projection); ctx holds angles, audio and source tokens."""
        b, t, n, d = x.shape
        m = (mod + self.mod_bias.to(mod.dtype)).unbind(1)  # 12 x [B,D]
        # spatial: frames are independent sequences of N tokens
        y = modulate(self.norm_s(x), m[0], m[1]).reshape(b * t, n, d)  # [B,T,N,D] -> [B*T,N,D]
        src = ctx.get("source_tokens")
        y = self.spatial(y, ctx["spatial_angles"], extra=src, extra_angles=ctx["spatial_angles"] if src is not None else None)
        x = x + gate(y.reshape(b, t, n, d), m[2])  # [B*T,N,D] -> [B,T,N,D]
        # temporal: each token position is a sequence of T frames
        y = modulate(self.norm_t(x), m[3], m[4]).transpose(1, 2).reshape(b * n, t, d)  # -> [B*N,T,D]
        y = self.temporal(y, ctx["temporal_angles"])
        x = x + gate(y.reshape(b, n, t, d).transpose(1, 2), m[5])  # [B*N,T,D] -> [B,T,N,D]
        # audio: frame j's tokens attend to frame j's K audio tokens
        y = modulate(self.norm_a(x), m[6], m[7]).reshape(b * t, n, d)  # [B,T,N,D] -> [B*T,N,D]
        y = self.audio(y, ctx["audio"])  # audio [B*T,K,A]
        x = x + gate(y.reshape(b, t, n, d), m[8])  # -> [B,T,N,D]
        if self.text is not None and ctx.get("text") is not None:
            y = self.text(self.norm_x(x).reshape(b, t * n, d), ctx["text"])  # [B,T*N,D] x [B,L,Dt]
            x = x + y.reshape(b, t, n, d)
        y = self.ffn(modulate(self.norm_f(x), m[9], m[10]))
        return x + gate(y, m[11])


class OmniSyncDiT(nn.Module):
    def __init__(self, cfg: OmniSyncConfig, device=None, dtype=None, operations=nn):
        super().__init__()
        self.cfg = cfg
        d, p, c = cfg.dim, cfg.patch_size, cfg.in_channels
        kw = dict(device=device, dtype=dtype, operations=operations)
        in_patch = (2 * c if cfg.condition == "channel" else c) * p * p
        self.patch_embed = operations.Linear(in_patch, d, device=device, dtype=dtype)
        self.source_embed = operations.Linear(c * p * p, d, device=device, dtype=dtype) if cfg.condition == "token" else None
        self.time_embed = TimestepEmbedding(d, **kw)
        self.time_mod = operations.Linear(d, N_MOD * d, device=device, dtype=dtype)
        self.audio_pos = nn.Parameter(torch.zeros(cfg.audio_tokens, cfg.audio_dim, device=device, dtype=dtype))
        self.null_audio = nn.Parameter(torch.zeros(cfg.audio_tokens, cfg.audio_dim, device=device, dtype=dtype))
        self.audio_norm = operations.LayerNorm(cfg.audio_dim, device=device, dtype=dtype)
        self.blocks = nn.ModuleList(DiTBlock(cfg, **kw) for _ in range(cfg.depth))
        self.norm_out = _layer_norm(d, device, dtype, operations)
        self.out_mod = operations.Linear(d, 2 * d, device=device, dtype=dtype)
        self.proj_out = operations.Linear(d, c * p * p, device=device, dtype=dtype)
        self.gradient_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier for linear weights, then zero for every modulation and for the output (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.audio_pos, std=0.02)
        for layer in (self.time_mod, self.out_mod, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,T,H,W] -> [B,T,N,C*p*p]."""
        b, c, t, hh, ww = x.shape
        p = self.cfg.patch_size
        x = x.reshape(b, c, t, hh // p, p, ww // p, p)  # split H and W into (h, p) and (w, p)
        return x.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t, (hh // p) * (ww // p), c * p * p)  # [B,T,h*w,C*p*p]

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B,T,N,C*p*p] -> [B,C,T,H,W]."""
        b, t = x.shape[:2]
        p, c = self.cfg.patch_size, self.cfg.in_channels
        x = x.reshape(b, t, h, w, c, p, p)  # unflatten tokens and patch channels
        return x.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, h * p, w * p)  # [B,C,T,H,W]

    def audio_context(self, audio: Optional[torch.Tensor], drop: Optional[torch.Tensor], b: int, t: int,
                      dtype) -> torch.Tensor:
        """Audio tokens [B,T,K,A] (None = all dropped), drop [B] bool -> [B*T,K,A] with the null embedding."""
        null = self.null_audio.to(dtype)[None, None].expand(b, t, -1, -1)  # [B,T,K,A]
        if audio is None:
            audio = null
        else:
            if audio.shape[:2] != (b, t) or audio.shape[2:] != null.shape[2:]:
                raise ValueError(f"audio tokens must be [B={b}, T={t}, K, A]={list(null.shape)}, got {list(audio.shape)}")
            audio = audio.to(dtype)
            if drop is not None:
                audio = torch.where(drop.view(b, 1, 1, 1), null, audio)
        audio = self.audio_norm(audio + self.audio_pos.to(dtype))
        return audio.reshape(b * t, *audio.shape[2:])  # [B,T,K,A] -> [B*T,K,A]

    def _check_input(self, x: torch.Tensor, source: torch.Tensor) -> None:
        p, c = self.cfg.patch_size, self.cfg.in_channels
        if x.dim() != 5 or x.shape[1] != c:
            raise ValueError(f"latent must be [B, C={c}, T, H, W], got {list(x.shape)}")
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"latent height/width {tuple(x.shape[-2:])} must be multiples of patch size {p}")
        if source.shape != x.shape:
            raise ValueError(f"source latent {list(source.shape)} must match the noisy latent {list(x.shape)}")

    def forward(self, x: torch.Tensor, source: torch.Tensor, sigma: torch.Tensor, audio: Optional[torch.Tensor] = None,
                drop_audio: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x, source [B,C,T,H,W]; sigma [B]; audio [B,T,K,A] or None -> velocity [B,C,T,H,W]."""
        self._check_input(x, source)
        b, _, t, hh, ww = x.shape
        p = self.cfg.patch_size
        h, w = hh // p, ww // p
        dtype = self.patch_embed.weight.dtype
        if self.cfg.condition == "channel":
            tokens = self.patch_embed(self.patchify(torch.cat((x, source), dim=1)).to(dtype))  # [B,T,N,D]
            source_tokens = None
        else:
            tokens = self.patch_embed(self.patchify(x).to(dtype))
            source_tokens = self.source_embed(self.patchify(source).to(dtype)).reshape(b * t, h * w, -1)  # [B*T,N,D]
        sigma = sigma.to(x.device).float().expand(b) if sigma.dim() <= 1 else sigma
        temb = self.time_embed(sigma)  # [B,D]
        mod = self.time_mod(torch.nn.functional.silu(temb)).unflatten(1, (N_MOD, -1))  # [B,12*D] -> [B,12,D]
        pos = grid_positions(t, h, w, device=x.device)  # [T*N,3]
        ctx = {
            "spatial_angles": rope_angles(pos[: h * w], self.cfg.head_dim, self.cfg.rope_theta),  # frame 0: [N,d/2]
            "temporal_angles": rope_angles(pos[:: h * w], self.cfg.head_dim, self.cfg.rope_theta),  # token 0: [T,d/2]
            "audio": self.audio_context(audio, drop_audio, b, t, dtype),
            "source_tokens": source_tokens,
            "text": text.to(dtype) if text is not None else None,
        }
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, mod, ctx, use_reentrant=False)
            else:
                tokens = block(tokens, mod, ctx)
        shift, scale = self.out_mod(torch.nn.functional.silu(temb)).chunk(2, dim=-1)
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))  # [B,T,N,C*p*p]
        return self.unpatchify(out, h, w).to(x.dtype)
