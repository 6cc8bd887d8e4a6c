"""X-Dub's model function: the one public forward of the family (the reference's own ``LipSyncModel.forward`` is
broken; this reproduces ``model_fn_wan_video`` of its lip-sync pipeline from the same inputs).

What it does, in order:
  1. Batches are merged: every input has batch 1 or N (the sampler stacks its three guidance branches in N).
  2. Motion continuation: the first m target latent frames are the previous clip's re-encoded last frames; they are
     written into the latents and get timestep 0 (the reference pipeline writes them before every call, the model
     function only zeroes their timestep; writing them again is a no-op there).
  3. Timesteps per token: 0 for the reference tokens, 0 for motion frames, ``timestep`` for the rest; the timestep is
     first cast to the latents' dtype (the reference feeds it through bf16).
  4. Tokens: [reference latents | target latents] concatenated along time, patch-embedded together; RoPE frame
     indices equal for both halves, the reference's spatial positions shifted by the grid size (h, w).
  5. Blocks: self-attention over all tokens; text and audio cross-attention on the target tokens only.
  6. The head and unpatchify act on the target tokens only.
Missing conditions are the reference's null conditions: ``ref_latents=None`` is all-zero reference latents (still
present as tokens) and ``audio_feats=None`` all-zero audio features (still projected), as its guidance branches use.

Shape legend
  N batch (guidance branches x clips)    C latent channels    F latent frames    H, W latent size    m motion frames
  K audio steps per frame (8)    Ca audio features (2048)    Lc text tokens (512)    Ct text width (4096)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

import torch

from .rope import xdub_rope

if TYPE_CHECKING:
    from .dit import XDubModel

Timestep = Union[float, torch.Tensor]


def _batch(x: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}; expected 1 or {n}")


def _frame_timesteps(timestep: Timestep, n: int, frames: int, motion: int, dtype, device) -> torch.Tensor:
    """[N, 2F]: 0 for the F reference frames, then ``timestep`` per target frame with the first ``motion`` at 0."""
    t = torch.as_tensor(timestep, device=device).to(dtype).reshape(-1)  # the model sees the timestep in its dtype
    if t.numel() not in (1, n):
        raise ValueError(f"timestep has {t.numel()} values; expected 1 or {n}")
    out = torch.zeros(n, 2 * frames, dtype=dtype, device=device)
    out[:, frames + motion:] = t[:, None]  # [N or 1, 1] broadcast over the noisy target frames
    return out


def _check_inputs(config, latents: torch.Tensor, context: torch.Tensor) -> None:
    if latents.dim() != 5 or latents.shape[1] != config.in_channels:
        raise ValueError(f"latents must be [N, {config.in_channels}, F, H, W]; got {list(latents.shape)}")
    _, ph, pw = config.patch_size
    if latents.shape[3] % ph or latents.shape[4] % pw:
        raise ValueError(f"latent size {tuple(latents.shape[3:])} is not a multiple of the patch ({ph}, {pw})")
    if context.dim() != 3 or context.shape[2] != config.text_dim:
        raise ValueError(f"context must be [N, Lc, {config.text_dim}]; got {list(context.shape)}")


def xdub_forward(model: "XDubModel", latents: torch.Tensor, timestep: Timestep, context: torch.Tensor,
                 audio_feats: Optional[torch.Tensor] = None, ref_latents: Optional[torch.Tensor] = None,
                 motion_latents: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The velocity (noise - data) of the target latents.

    latents [N|1, C, F, H, W] noisy target; timestep on the 0..1000 scale (scalar, [1] or [N]); context
    [N|1, Lc, Ct] umt5 states (see :func:`pad_context`); audio_feats [N|1, F, K, Ca] (see ``audio_index``) or None;
    ref_latents [N|1, C, F, H, W] or None; motion_latents [N|1, C, m, H, W] or None. Computes in the latents' dtype.
    Returns [N, C_out, F, H, W].
    """
    cfg = model.config
    _check_inputs(cfg, latents, context)
    dtype, device = latents.dtype, latents.device
    given = [t for t in (latents, context, audio_feats, ref_latents, motion_latents) if t is not None]
    n = max(t.shape[0] for t in given)
    x = _batch(latents, n, "latents")
    frames = x.shape[2]
    motion = 0
    if motion_latents is not None:
        motion = motion_latents.shape[2]
        if not 0 < motion <= frames or motion_latents.shape[1] != x.shape[1] or motion_latents.shape[3:] != x.shape[3:]:
            raise ValueError(f"motion_latents {list(motion_latents.shape)} do not fit latents {list(x.shape)}")
        x = x.clone()
        x[:, :, :motion] = _batch(motion_latents, n, "motion_latents").to(dtype)  # clean frames the clip continues
    ref = torch.zeros_like(x) if ref_latents is None else _batch(ref_latents, n, "ref_latents").to(dtype)
    if ref.shape != x.shape:
        raise ValueError(f"ref_latents {list(ref.shape)} must match latents {list(x.shape)}")
    if audio_feats is None:
        audio_feats = torch.zeros(n, frames, cfg.audio_tokens, cfg.audio_in_dim, dtype=dtype, device=device)
    if audio_feats.dim() != 4 or audio_feats.shape[1] != frames or audio_feats.shape[3] != cfg.audio_in_dim:
        raise ValueError(f"audio_feats must be [N, {frames}, K, {cfg.audio_in_dim}]; got {list(audio_feats.shape)}")

    emb, mod = model.embed_time(_frame_timesteps(timestep, n, frames, motion, dtype, device), dtype)  # per frame
    ctx = model.text_embedding(_batch(context, n, "context").to(device=device, dtype=dtype))
    audio = model.audio_embedding(_batch(audio_feats, n, "audio_feats").to(device=device, dtype=dtype))
    tokens, (_, h, w) = model.patchify(torch.cat((ref, x), dim=2))  # [N, 2F h w, D]: reference first
    rope = xdub_rope(frames, h, w, cfg.head_dim, cfg.rope_theta, device=device)
    for block in model.blocks:
        tokens = block(tokens, mod, ctx, audio, rope)
    out = model.head(tokens[:, frames * h * w:], emb[:, frames:])  # target tokens and their time embedding
    return model.unpatchify(out, (frames, h, w))


def pad_context(context: torch.Tensor, length: int = 512) -> torch.Tensor:
    """umt5 states [N, L, Ct] -> [N, length, Ct]: zeros after the prompt's tokens, cut at ``length``.

    The reference pads every prompt to 512 tokens with zero rows, and the text cross-attention attends to all of
    them (zero rows still pass the text embedding), so the padding changes the result: always pad. For X-Dub's
    empty prompt the umt5 output has one token (</s>) followed by 511 zero rows.
    """
    n, L, c = context.shape
    out = context.new_zeros(n, length, c)
    out[:, : min(L, length)] = context[:, :length]
    return out
