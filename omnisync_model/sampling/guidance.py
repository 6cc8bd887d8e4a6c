"""Dynamic Spatiotemporal Classifier-Free Guidance (DS-CFG).

Paper (OmniSync, Sec. DS-CFG):
    spatial   G(x, y) = w_base + (w_peak - w_base) * exp(-d^2 / (2 s^2)),  d = distance to the mouth centre
    temporal  w(t)    = w_peak * (t / T)^gamma,  gamma = 1.5
    combined  eps     = eps_u + G * w(t) * (eps_c - eps_u)
As printed, w_peak appears in both factors. We normalise the spatial map to g = G / w_peak in
[w_base / w_peak, 1], so the peak effective weight is w_peak. With sigma the noise level (1 = noise):
    W(x, y, sigma) = max(1, w_peak * (sigma / sigma_start)^gamma * g(x, y))
The floor of 1 means guidance never extrapolates *towards* the unconditional branch; where W == 1 the
result is exactly the conditional branch and, when W == 1 everywhere, the unconditional pass is skipped.
Velocities combine the same way as eps (the combination is affine): v = v_u + W * (v_c - v_u).
The unconditional branch drops the audio (the model's learned null audio).

Shape legend:
    B  batch            C  latent channels
    T  latent frames    h, w  latent height / width
    K  audio tokens per latent frame    D  audio feature width
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from .dscfg import DSCFG

logger = logging.getLogger(__name__)

__all__ = ["DSCFG", "Guidance", "GuidedDenoiser", "chain_combine", "combine", "ds_cfg_guidance", "guidance_weight",
           "needs_uncond", "spatial_map", "temporal_weight"]


def _check_map_inputs(centres: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> None:
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"centres must be [T, 2], got shape {tuple(centres.shape)}")
    if valid.shape != centres.shape[:1]:
        raise ValueError(f"valid must be [T={centres.shape[0]}], got shape {tuple(valid.shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"latent size must be positive, got h={h}, w={w}")


def spatial_map(
    centres: torch.Tensor,
    valid: torch.Tensor,
    h: int,
    w: int,
    cfg: DSCFG,
) -> torch.Tensor:
    """Normalised spatial guidance map g [T, h, w] in [w_base / w_peak, 1], float32.

    centres [T, 2]: mouth centre (x, y) per latent frame, normalised 0..1 in image coordinates.
    valid [T] bool: frames without a detected mouth (or with non-finite centres) get a uniform map of 1.0.
    Distances are in latent pixels from each cell centre ((i + 0.5), (j + 0.5)); s = radius * min(h, w).
    """
    _check_map_inputs(centres, valid, h, w)
    c = centres.detach().to(dtype=torch.float32)
    ok = valid.to(device=c.device, dtype=torch.bool) & torch.isfinite(c).all(dim=1)  # [T]
    c = torch.where(ok[:, None], c, torch.zeros_like(c))  # keep NaNs out of the arithmetic
    ys = torch.arange(h, dtype=torch.float32, device=c.device) + 0.5  # [h] cell centres, latent px
    xs = torch.arange(w, dtype=torch.float32, device=c.device) + 0.5  # [w]
    dy = ys[None, :] - c[:, 1:2] * h  # [T, h]
    dx = xs[None, :] - c[:, 0:1] * w  # [T, w]
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2  # [T, h, 1] + [T, 1, w] -> [T, h, w]
    s = cfg.radius * min(h, w)
    bump = torch.exp(-d2 / (2.0 * s * s))  # [T, h, w], 1 at the centre
    floor = cfg.floor
    g = (floor + (1.0 - floor) * bump).clamp(max=1.0)
    return torch.where(ok[:, None, None], g, torch.ones_like(g))  # [T] -> [T, 1, 1] broadcast


def temporal_weight(sigma: float, sigma_start: float, cfg: DSCFG) -> float:
    """w_peak * (sigma / sigma_start)^gamma: w_peak at the first step, decaying towards sigma = 0."""
    if not sigma_start > 0.0:
        raise ValueError(f"sigma_start must be > 0, got {sigma_start}")
    if not sigma >= 0.0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    ratio = float(sigma) / float(sigma_start)
    if cfg.gamma == 0.0:
        return float(cfg.w_peak)  # also defines 0 ** 0 = 1 at sigma = 0
    return float(cfg.w_peak) * math.pow(ratio, cfg.gamma)


def guidance_weight(gmap: torch.Tensor, sigma: float, sigma_start: float, cfg: DSCFG) -> torch.Tensor:
    """Effective weight W [T, h, w] = max(1, temporal_weight * gmap)."""
    return (temporal_weight(sigma, sigma_start, cfg) * gmap).clamp(min=1.0)


def needs_uncond(weight: Union[torch.Tensor, float]) -> bool:
    """True iff any weight exceeds 1 (otherwise the guided result equals the conditional branch)."""
    return bool(torch.as_tensor(weight).gt(1.0).any())


def combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, weight: Union[torch.Tensor, float]) -> torch.Tensor:
    """v_u + W * (v_c - v_u); W is a scalar or [T, h, w], broadcast over [B, C, T, h, w]."""
    if v_cond.shape != v_uncond.shape:
        raise ValueError(f"v_cond shape {tuple(v_cond.shape)} != v_uncond shape {tuple(v_uncond.shape)}")
    wt = torch.as_tensor(weight, device=v_cond.device, dtype=v_cond.dtype)
    if wt.ndim not in (0, 3) or (wt.ndim == 3 and tuple(wt.shape) != tuple(v_cond.shape[-3:])):
        raise ValueError(f"weight must be scalar or [T, h, w]={tuple(v_cond.shape[-3:])}, got {tuple(wt.shape)}")
    return v_uncond + wt * (v_cond - v_uncond)  # [T, h, w] broadcasts over leading [B, C]


@dataclass(frozen=True)
class Guidance:
    """An ordered chain of guidance branches and the weights of its terms.

    branches: names ``b_0 .. b_n`` as the backend's ``denoise`` understands them; the last is the fully
    conditioned branch. weights(sigma, step) -> ``[W_1 .. W_n]``, each a float or a [T, h, w] map. The guided
    velocity is ``b_0 + sum_i W_i (b_i - b_{i-1})`` (DS-CFG, CFG and X-Dub's three-branch rule are all of this
    form). evaluate_all: run every branch even where its coefficient is zero (benchmarks of the skip only).
    """

    branches: tuple[str, ...]
    weights: Callable[[float, int], Sequence[Union[torch.Tensor, float]]]
    evaluate_all: bool = False


def _is_one(w: Union[torch.Tensor, float]) -> bool:
    return bool(torch.as_tensor(w).eq(1.0).all())


def _needed(weights: Sequence[Union[torch.Tensor, float]], n: int) -> list[int]:
    """Indices of branches whose coefficient in ``b_0 + sum W_i (b_i - b_{i-1})`` is nonzero somewhere.

    The coefficient of b_j is W_j - W_{j+1} (with W_0 = 1 and W_{n+1} = 0): the last branch always counts; an
    earlier one only where two consecutive weights differ.
    """
    full = [1.0, *weights, 0.0]
    out = []
    for j in range(n):
        a, b = full[j], full[j + 1]
        if j == n - 1 or not bool(torch.as_tensor(a).eq(torch.as_tensor(b)).all()):
            out.append(j)
    return out


def chain_combine(values: Sequence[torch.Tensor], weights: Sequence[Union[torch.Tensor, float]]) -> torch.Tensor:
    """``b_0 + sum_i W_i (b_i - b_{i-1})`` over velocities [B, C, T, h, w] (weights scalar or [T, h, w])."""
    if len(values) == 1:
        return values[0]
    out = combine(values[1], values[0], weights[0])
    for i in range(2, len(values)):
        out = out + _as_weight(weights[i - 1], values[i]) * (values[i] - values[i - 1])
    return out


def _as_weight(w: Union[torch.Tensor, float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(w, device=like.device, dtype=like.dtype)  # scalar or [T, h, w], broadcast over [B, C]


def ds_cfg_guidance(gmap: torch.Tensor, sigma_start: float, cfg: DSCFG,
                    branches: tuple[str, ...] = ("uncond", "cond")) -> Guidance:
    """DS-CFG as a two-branch chain: ``W = max(1, w_peak (sigma / sigma_start)^gamma g(x, y))``."""
    if len(branches) != 2:
        raise ValueError(f"DS-CFG guides two branches (uncond, cond), got {branches}")
    if not sigma_start > 0.0:
        raise ValueError(f"sigma_start must be > 0, got {sigma_start}")
    g = gmap.detach().to(torch.float32)
    return Guidance(branches, lambda sigma, step: [guidance_weight(g, sigma, sigma_start, cfg)], cfg.force_uncond)


DenoiseFn = Callable[[torch.Tensor, float, object, Sequence[str]], torch.Tensor]


class GuidedDenoiser:
    """Velocity function for :func:`flow.euler_sample`: a backend's ``denoise`` steered by a :class:`Guidance`.

    ``denoise(x [B,C,T,h,w], sigma, cond, branches) -> [len(branches) * B, C, T, h, w]`` (branch-major). Only
    branches whose coefficient is nonzero somewhere are evaluated, all of them in ONE call. Counters: ``calls``
    (denoise invocations) and ``evaluations`` (samples evaluated: B per branch run).
    """

    def __init__(self, denoise: DenoiseFn, cond: object, guidance: Guidance) -> None:
        if not guidance.branches:
            raise ValueError("guidance needs at least one branch")
        self.denoise, self.cond, self.guidance = denoise, cond, guidance
        self.calls = 0
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        g = self.guidance
        n = len(g.branches)
        weights = list(g.weights(sigma, step)) if n > 1 else []
        if len(weights) != n - 1:
            raise ValueError(f"guidance gave {len(weights)} weights for {n} branches")
        need = list(range(n)) if g.evaluate_all else _needed(weights, n)
        out = self.denoise(x, sigma, self.cond, [g.branches[j] for j in need])
        b = x.shape[0]
        if out.shape[0] != b * len(need) or out.shape[1:] != x.shape[1:]:
            raise ValueError(f"denoise returned {tuple(out.shape)} for {len(need)} branch(es) of {tuple(x.shape)}")
        self.calls += 1
        self.evaluations += b * len(need)
        values = out.split(b, dim=0)  # [len(need) * B, ...] -> len(need) x [B, ...]
        if len(need) == 1:
            return values[0]  # every other coefficient is zero: the result is this branch exactly
        if len(need) == n:
            logger.debug("guided step %d sigma %.4f (%d branches)", step, sigma, n)
            return chain_combine(values, weights)
        full = [1.0, *weights, 0.0]  # coefficients W_j - W_{j+1} of the branches that run
        acc = None
        for v, j in zip(values, need):
            c = _as_weight(full[j], v) - _as_weight(full[j + 1], v)
            acc = c * v if acc is None else acc + c * v
        return acc
