"""DS-CFG's parameters (a plain dataclass: the command line reads its defaults without importing torch; the maths
is in :mod:`.guidance`)."""

from __future__ import annotations

from dataclasses import dataclass


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
