"""LatentSync's sampler in the pipeline's flow-matching convention, exactly (pure functions).

The reference samples with diffusers' ``DDIMScheduler`` (``configs/scheduler_config.json``): scaled-linear betas
0.00085 -> 0.012 over 1000 training steps, "leading" spacing with ``steps_offset`` 1, epsilon prediction, eta 0,
``set_alpha_to_one`` False (the last step lands on abar[0], not on clean data). 20 steps visit t = 951, 901, ..., 1.

With abar = alphas_cumprod[t] and s(abar) = sqrt(abar) + sqrt(1 - abar), the change of variables

    sigma  = sqrt(1 - abar) / s(abar)           x_flow = x_ddpm / s(abar)

turns the DDPM marginal ``x_ddpm = sqrt(abar) x0 + sqrt(1 - abar) eps`` into the pipeline's ``x_flow = (1 - sigma)
x0 + sigma eps``. The network's epsilon gives ``x0_hat = (x_flow - sigma eps) / (1 - sigma)`` and the velocity
``v = eps - x0_hat = (eps - x_flow) / (1 - sigma)``. A DDIM step (eta 0) keeps (x0_hat, eps) and moves to the next
abar: ``x_ddpm' = sqrt(abar') x0_hat + sqrt(1 - abar') eps``, i.e. ``x_flow' = (1 - sigma') x0_hat + sigma' eps =
x_flow + (sigma' - sigma) v``: one Euler step over the mapped sigmas, identical to float precision.

v is affine in eps with weights summing to one (for a fixed x_flow), so classifier-free guidance on epsilon
(LatentSync's ``eps_u + 1.5 (eps_c - eps_u)``) equals the same guidance on velocity.

Shape legend
  any shape: these functions act elementwise on latents [B,C,F,h,w]; tables are float64 [1000] unless stated
"""

from __future__ import annotations

import math
from typing import Union

import torch

TRAIN_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
STEPS_OFFSET = 1
DEFAULT_STEPS = 20
GUIDANCE_SCALE = 1.5

Number = Union[float, int]
Tensorish = Union[torch.Tensor, float]


def alphas_cumprod() -> torch.Tensor:
    """abar[t] for t = 0..999 as diffusers computes it (float32 betas and cumprod), returned as float64."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).double()


def ddim_timesteps(steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """DDIM's "leading" timesteps with offset 1: steps 20 -> [951, 901, ..., 1] (int64, decreasing)."""
    if not 1 <= steps <= TRAIN_STEPS:
        raise ValueError(f"steps must be in 1..{TRAIN_STEPS}, got {steps}")
    ratio = TRAIN_STEPS // steps
    return torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + STEPS_OFFSET


def sigma_from_abar(abar: Tensorish) -> Tensorish:
    """sigma = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar))."""
    if isinstance(abar, torch.Tensor):
        a, b = abar.sqrt(), (1.0 - abar).sqrt()
    else:
        a, b = math.sqrt(abar), math.sqrt(1.0 - abar)
    return b / (a + b)


def abar_from_sigma(sigma: Tensorish) -> Tensorish:
    """Inverse of :func:`sigma_from_abar`: with r = sigma / (1 - sigma), abar = 1 / (1 + r^2)."""
    r = sigma / (1.0 - sigma)
    return 1.0 / (1.0 + r * r)


def flow_scale(sigma: Tensorish) -> Tensorish:
    """s = sqrt(abar) + sqrt(1 - abar) at ``sigma`` (= 1 / sqrt(sigma^2 + (1 - sigma)^2)): x_ddpm = s * x_flow."""
    if isinstance(sigma, torch.Tensor):
        return torch.rsqrt(sigma * sigma + (1.0 - sigma) ** 2)
    return 1.0 / math.sqrt(sigma * sigma + (1.0 - sigma) ** 2)


def ddim_sigmas(steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """The mapped schedule, float64 [steps + 1]: sigma(abar[t_k]) for DDIM's timesteps, then sigma(abar[0]) (the
    final level the reference stops at, about 0.0283; it decodes that latent as it is)."""
    table = alphas_cumprod()
    levels = torch.cat([table[ddim_timesteps(steps)], table[:1]])
    return sigma_from_abar(levels)


def timestep_sigmas() -> torch.Tensor:
    """sigma(abar[t]) for t = 0..999 (float64, increasing)."""
    return sigma_from_abar(alphas_cumprod())


def sigma_to_timestep(sigma: float) -> float:
    """The (fractional) DDPM timestep whose sigma is ``sigma``, by linear interpolation in the sigma table;
    clamped to 0..999."""
    table = timestep_sigmas()
    if sigma <= float(table[0]):
        return 0.0
    if sigma >= float(table[-1]):
        return float(TRAIN_STEPS - 1)
    hi = int(torch.searchsorted(table, torch.tensor([sigma], dtype=torch.float64))[0])
    lo = hi - 1
    frac = (sigma - float(table[lo])) / (float(table[hi]) - float(table[lo]))
    return lo + frac


def timestep_to_sigma(t: float) -> float:
    """sigma at a (fractional) timestep 0..999: linear interpolation in the sigma table (inverse of
    :func:`sigma_to_timestep`; exact at integers)."""
    if not 0.0 <= t <= TRAIN_STEPS - 1:
        raise ValueError(f"timestep must lie in 0..{TRAIN_STEPS - 1}, got {t}")
    table = timestep_sigmas()
    lo = min(int(math.floor(t)), TRAIN_STEPS - 2)
    frac = t - lo
    return float(table[lo]) + frac * (float(table[lo + 1]) - float(table[lo]))


def final_sigma() -> float:
    """Where every schedule ends: abar[0]'s sigma (DDIM's last step with set_alpha_to_one False)."""
    return float(sigma_from_abar(alphas_cumprod()[0]))


def progressive_sigmas(steps: int, tau: float) -> torch.Tensor:
    """Sigmas for progressive init at strength ``tau``: ``steps`` timesteps evenly spaced from the timestep of
    ``tau`` down to 1 (DDIM's last), then :func:`final_sigma`; float64 [steps + 1]. At the reference's start
    (tau = sigma(951)) and 20 steps these are DDIM's own timesteps 951, 901, ..., 1."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = tau_to_timestep(tau) if tau < float(timestep_sigmas()[-1]) else float(TRAIN_STEPS - 1)
    ts = torch.linspace(t0, float(STEPS_OFFSET), steps, dtype=torch.float64) if steps > 1 else torch.tensor([t0])
    return torch.tensor([timestep_to_sigma(float(t)) for t in ts] + [final_sigma()], dtype=torch.float64)


def tau_to_timestep(tau: float) -> float:
    """Progressive-init strength tau (a sigma of the pipeline) as a DDPM timestep: tau 0.92 -> t about 958."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie strictly between 0 and 1, got {tau}")
    return sigma_to_timestep(tau)


def ddpm_to_flow(x_ddpm: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_ddpm / flow_scale(sigma)


def flow_to_ddpm(x_flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """The UNet's input sample (and the reference's latent) at ``sigma``."""
    return x_flow * flow_scale(sigma)


def velocity_from_eps(x_flow: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """v = eps - x0_hat = (eps - x_flow) / (1 - sigma)."""
    return (eps - x_flow) / (1.0 - sigma)


def eps_from_velocity(x_flow: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_flow + (1.0 - sigma) * v


def euler_step(x_flow: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    return x_flow + (sigma_next - sigma) * v


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float = GUIDANCE_SCALE) -> torch.Tensor:
    """Classifier-free guidance uncond + scale (cond - uncond), on epsilon or (equivalently) on velocity."""
    return uncond + scale * (cond - uncond)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Forward noising in flow coordinates, (1 - sigma) x0 + sigma noise: the DDPM ``add_noise`` at the matching
    abar divided by s (progressive init from the source latent)."""
    return (1.0 - sigma) * x0 + sigma * noise


def reference_initial_latent(noise: torch.Tensor, sigma0: float) -> torch.Tensor:
    """The reference's start: its latent *is* the noise at the first timestep (init_noise_sigma 1), which in flow
    coordinates is noise / s(sigma0)."""
    return noise / flow_scale(sigma0)
