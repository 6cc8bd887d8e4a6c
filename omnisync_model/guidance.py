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
from typing import Callable, Optional, Union

import torch

logger = logging.getLogger(__name__)

ModelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class DSCFG:
    """DS-CFG parameters.

    w_peak: guidance weight at the mouth centre at the start of sampling (>= 1).
    w_base: weight far from the mouth (0 <= w_base <= w_peak); normalised map floor is w_base / w_peak.
    radius: Gaussian s as a fraction of the latent frame's shorter side.
    gamma:  temporal decay exponent (paper: 1.5); 0 disables the temporal decay.
    force_uncond: always run the unconditional branch, even where W == 1 everywhere (the saving is then
        forgone; the result is the same up to rounding). For benchmarking the skip, not for normal use.
    """

    w_peak: float = 2.5
    w_base: float = 1.0
    radius: float = 0.15
    gamma: float = 1.5
    force_uncond: bool = False

    def __post_init__(self) -> None:
        errors = []
        if not self.w_peak >= 1.0:
            errors.append(f"w_peak must be >= 1, got {self.w_peak}")
        if not 0.0 <= self.w_base <= self.w_peak:
            errors.append(f"w_base must satisfy 0 <= w_base <= w_peak, got w_base={self.w_base}, w_peak={self.w_peak}")
        if not self.radius > 0.0:
            errors.append(f"radius must be > 0, got {self.radius}")
        if not self.gamma >= 0.0:
            errors.append(f"gamma must be >= 0, got {self.gamma}")
        if errors:
            raise ValueError("invalid DSCFG: " + "; ".join(errors))

    @classmethod
    def static(cls, scale: float) -> "DSCFG":
        """Uniform static CFG with weight ``scale`` (>= 1) at every pixel and step."""
        return cls(w_peak=float(scale), w_base=float(scale), gamma=0.0)

    @property
    def floor(self) -> float:
        """Minimum of the normalised spatial map, w_base / w_peak."""
        return self.w_base / self.w_peak


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


class GuidedVelocity:
    """Velocity function for :func:`flow.euler_sample` applying DS-CFG around a model.

    Model protocol: ``model(x [B,C,T,h,w], source [B,C,T,h,w], sigma [B], audio [B,T,K,D] | None,
    drop_audio=None | BoolTensor[B]) -> v [B,C,T,h,w]``; ``drop_audio[b]`` True means sample b uses the
    null (unconditional) audio. When the unconditional branch is needed, both branches run in ONE forward
    with the batch doubled (cond first, then uncond). Counters: ``calls`` (model invocations) and
    ``evaluations`` (samples evaluated: B per single call, 2B per batched call).
    """

    def __init__(
        self,
        model: ModelFn,
        source: torch.Tensor,
        audio: Optional[torch.Tensor],
        gmap: torch.Tensor,
        sigma_start: float,
        cfg: DSCFG,
    ) -> None:
        if gmap.ndim != 3 or tuple(gmap.shape) != tuple(source.shape[-3:]):
            raise ValueError(f"gmap must be [T, h, w]={tuple(source.shape[-3:])}, got {tuple(gmap.shape)}")
        if audio is not None and audio.shape[0] != source.shape[0]:
            raise ValueError(f"audio batch {audio.shape[0]} != source batch {source.shape[0]}")
        if not sigma_start > 0.0:
            raise ValueError(f"sigma_start must be > 0, got {sigma_start}")
        self.model = model
        self.source = source
        self.audio = audio
        self.gmap = gmap.detach().to(device=source.device, dtype=torch.float32)
        self.sigma_start = float(sigma_start)
        self.cfg = cfg
        self.calls = 0
        self.evaluations = 0

    def reset_counters(self) -> None:
        self.calls = 0
        self.evaluations = 0

    def _sigma_batch(self, sigma: float, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), float(sigma), device=device, dtype=torch.float32)  # [B]

    def _single(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        b = x.shape[0]
        self.calls += 1
        self.evaluations += b
        return self.model(x, self.source, self._sigma_batch(sigma, b, x.device), self.audio, drop_audio=None)

    def _batched(self, x: torch.Tensor, sigma: float) -> tuple:
        b = x.shape[0]
        x2 = torch.cat([x, x], dim=0)  # [2B, C, T, h, w]: cond half, then uncond half
        src2 = torch.cat([self.source, self.source], dim=0)  # [2B, C, T, h, w]
        audio2 = torch.cat([self.audio, self.audio], dim=0)  # [2B, T, K, D]
        drop = torch.arange(2 * b, device=x.device) >= b  # [2B]: False for cond, True for uncond
        self.calls += 1
        self.evaluations += 2 * b
        v2 = self.model(x2, src2, self._sigma_batch(sigma, 2 * b, x.device), audio2, drop_audio=drop)
        v_cond, v_uncond = v2.split(b, dim=0)  # [2B, ...] -> 2 x [B, ...]
        return v_cond, v_uncond

    def __call__(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        if x.shape != self.source.shape:
            raise ValueError(f"x shape {tuple(x.shape)} != source shape {tuple(self.source.shape)}")
        weight = guidance_weight(self.gmap, sigma, self.sigma_start, self.cfg)  # [T, h, w]
        if self.audio is None or not (self.cfg.force_uncond or needs_uncond(weight)):
            # without audio both branches coincide; with W == 1 everywhere the result is the cond branch
            return self._single(x, sigma)
        v_cond, v_uncond = self._batched(x, sigma)
        logger.debug("DS-CFG step %d sigma %.4f max weight %.3f", step, sigma, float(weight.max()))
        return combine(v_cond, v_uncond, weight)
