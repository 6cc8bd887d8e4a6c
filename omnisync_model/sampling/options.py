"""Sampling options and the audio input of a lip-sync run (shared by the pipeline and every backend)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .dscfg import DSCFG

if TYPE_CHECKING:  # torch only in annotations: the command line builds its help from these defaults without torch
    import torch

__all__ = ["LipSyncOptions", "AudioInput", "STITCH_MODES", "SOLVER_NAMES"]

STITCH_MODES = ("crossfade", "continue")
SOLVER_NAMES = ("euler", "heun", "ab2", "dpmpp_2m")  # the solvers of flow.SOLVERS (a test keeps them equal)


@dataclass(frozen=True)
class LipSyncOptions:
    """Sampling options. ``steps`` are the solver steps actually run, from sigma = tau down to 0.

    solver: the ODE solver over the schedule (:data:`~.flow.SOLVERS`): "euler" (one model pass per step), "ab2" and
    "dpmpp_2m" (second-order multistep, one pass per step), "heun" (second order, two passes per step).
    Defaults (issue 15, measured on the shipped model): AB2, 9 steps, shift 0.3 (most steps at low noise, where the
    x0-predicting model's velocity changes fastest): 12 DiT frame-evaluations per output frame instead of 32.7 for
    20 Euler steps at shift 1, and closer to a 100-step Euler solve than those 20 steps are. Families whose
    reference sampler is Euler (X-Dub, LatentSync) pin solver="euler" in their ``default_options``.

    stitch: "crossfade" blends overlapping windows (raised cosine); "continue" conditions each window on the
    previous window's last output frames (backends with motion frames, e.g. X-Dub) and keeps the earlier frames.
    """

    tau: float = 0.92
    steps: int = 9
    shift: float = 0.3
    window: int = 16
    overlap: int = 2
    seed: int = 0
    guidance: DSCFG = field(default_factory=DSCFG)
    audio_margin_s: float = 1.0
    stitch: str = "crossfade"
    solver: str = "ab2"

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={self.window}, overlap={self.overlap}")
        if self.stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {self.stitch!r}")
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {self.solver!r}")


@dataclass(frozen=True)
class AudioInput:
    """Either a waveform (any rate, any channels) or external features [S, De] at ``feature_rate`` Hz.

    ``frame_times`` [F]: each video frame's presentation time in seconds from the first frame, for variable-frame-
    rate video (see :mod:`.frame_times`); None: frame i is at i / fps. The audio starts with the first frame.
    """

    waveform: Optional[torch.Tensor] = None  # [C,N] or [N]
    sample_rate: int = 16000
    features: Optional[torch.Tensor] = None  # [S,De] external encoder output (Whisper / wav2vec2)
    feature_rate: float = 50.0
    frame_times: Optional[torch.Tensor] = None  # [F] float seconds, strictly increasing
