"""X-Dub's sampler, as pure functions: the shifted flow-matching schedule, the bf16 model timestep, the
three-branch guidance with its time-dependent weights, the Euler step and the latent border replacement.

Reference defaults (its inference script): 50 steps, shift 5, from pure noise, reference weight 2.5 with the
piecewise-cosine schedule, audio weight 10 t^1.5 (``use_dynamic_cfg``), border replacement 1 latent pixel wide.
Per step i, the reference:
  1. rounds ``timesteps[i]`` to bf16 (the model and both weights see that value; ``t = timestep / 1000``);
  2. replaces the latents' outer ring (width 1, frames after the motion frames) with the source latents noised to
     ``clamp(t, 0, 0.95)``;
  3. runs the three branches [no ref / no audio, ref / no audio, ref + audio] in one batch and combines them as
     ``nega + r(t) (pr - nega) + a(t) (pra - pr)``;
  4. steps ``x += v (sigma_{i+1} - sigma_i)`` with the unrounded float32 sigmas (sigma_50 = 0);
  5. writes the motion latents back into the first frames.
After the last step the ring gets the clean source latents and the motion frames are written again.
Every function computes in the dtype of its tensor inputs, in the reference's order of operations, so bf16 inputs
give the reference's bf16 results bit for bit.

Shape legend
  n steps    B batch    C channels    T latent frames    H, W latent size
"""

from __future__ import annotations

import math

import torch

STEPS = 50
SHIFT = 5.0
TRAIN_STEPS = 1000  # timestep = sigma * 1000
REF_SCALE = 2.5
AUDIO_SCALE = 10.0
BORDER_WIDTH = 1
BORDER_MAX_SIGMA = 0.95


def xdub_sigmas(steps: int = STEPS, shift: float = SHIFT, denoise: float = 1.0) -> torch.Tensor:
    """[steps] float32 sigmas, from ``denoise`` (1 = pure noise) down, excluding the final 0:
    ``s' = shift s / (1 + (shift - 1) s)`` over ``linspace(denoise, 0, steps + 1)[:-1]``."""
    s = torch.linspace(denoise, 0.0, steps + 1)[:-1]
    return shift * s / (1 + (shift - 1) * s)


def xdub_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Timesteps on the 0..1000 scale (float32, unrounded)."""
    return sigmas * TRAIN_STEPS


def euler_sigmas(steps: int = STEPS, shift: float = SHIFT, denoise: float = 1.0) -> torch.Tensor:
    """[steps + 1] float32: the sigmas followed by the final 0 (the pipeline's Euler convention)."""
    return torch.cat((xdub_sigmas(steps, shift, denoise), torch.zeros(1)))


def model_timestep(timestep: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The timestep the reference hands the model and the guidance weights: [1], rounded to ``dtype`` (bf16)."""
    return timestep.reshape(1).to(dtype)


def guidance_time(timestep: torch.Tensor) -> torch.Tensor:
    """t = timestep / 1000, in the timestep's dtype (bf16 in the reference)."""
    return timestep / TRAIN_STEPS


def audio_weight(t: torch.Tensor, scale: float = AUDIO_SCALE) -> torch.Tensor:
    """a(t) = scale * t^1.5."""
    return scale * (t ** 1.5)


def _cosine_mix(t: torch.Tensor, start: float, end: float, first: float, second: float) -> torch.Tensor:
    """``first`` at t = start to ``second`` at t = end along half a cosine."""
    blend = (1 - torch.cos((t - start) / (end - start) * math.pi)) / 2
    return first * (1 - blend) + second * blend


def ref_weight(t: torch.Tensor, scale: float = REF_SCALE, p1: float = 0.8, p2: float = 0.4,
               width: float = 0.1) -> torch.Tensor:
    """r(t): ``scale`` for t >= p1 + width/2, 0.6 scale on [p2 + width/2, p1 - width/2), 0.3 scale below
    p2 - width/2, with half-cosine transitions across the two ``width``-wide bands around p1 and p2."""
    high, mid, low = scale * 1.0, scale * 0.6, scale * 0.3
    a_top, a_bottom = p1 + width / 2, p1 - width / 2
    b_top, b_bottom = p2 + width / 2, p2 - width / 2
    out = torch.where(t >= a_top, high, torch.zeros_like(t))
    out = torch.where((t >= a_bottom) & (t < a_top), _cosine_mix(t, a_top, a_bottom, high, mid), out)
    out = torch.where((t >= b_top) & (t < a_bottom), mid, out)
    out = torch.where((t >= b_bottom) & (t < b_top), _cosine_mix(t, b_top, b_bottom, mid, low), out)
    return torch.where(t < b_bottom, low, out)


def combine_branches(nega: torch.Tensor, pr: torch.Tensor, pra: torch.Tensor, r: torch.Tensor,
                     a: torch.Tensor) -> torch.Tensor:
    """nega + r (pr - nega) + a (pra - pr): nega = no ref / no audio, pr = ref / no audio, pra = ref + audio."""
    return nega + r * (pr - nega) + a * (pra - pr)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x + v (sigma_next - sigma); sigmas as 0-dim float32 tensors keep x's dtype, as in the reference."""
    return x + v * (sigma_next - sigma)


def border_sigma(timestep: torch.Tensor) -> torch.Tensor:
    """The noise level the ring of source latents gets: clamp(timestep / 1000, 0, 0.95), in the timestep's dtype."""
    return torch.clamp(timestep / TRAIN_STEPS, min=0.0, max=BORDER_MAX_SIGMA)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(1 - sigma) x0 + sigma noise, sigma [B] (or [1]) per batch element."""
    s = sigma.to(x0.dtype).view(-1, 1, 1, 1, 1)  # [B] -> [B,1,1,1,1]
    return (1.0 - s) * x0 + s * noise


def replace_border(latents: torch.Tensor, border: torch.Tensor, width: int = BORDER_WIDTH,
                   start_frame: int = 0) -> torch.Tensor:
    """A copy of latents [B, C, T, H, W] whose outer ``width`` rows and columns, from latent frame
    ``start_frame`` on, come from ``border``."""
    if width <= 0 or start_frame >= latents.shape[2]:
        return latents
    out = latents.clone()
    f = slice(start_frame, None)
    out[:, :, f, :width] = border[:, :, f, :width]  # top rows
    out[:, :, f, -width:] = border[:, :, f, -width:]  # bottom rows
    out[:, :, f, :, :width] = border[:, :, f, :, :width]  # left columns
    out[:, :, f, :, -width:] = border[:, :, f, :, -width:]  # right columns
    return out
