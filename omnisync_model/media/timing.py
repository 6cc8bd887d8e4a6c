"""Presentation timestamps of a clip's frames, and whether its frame rate is variable (phones record these).

:class:`FrameTiming` holds every frame's pts in the stream's time base, in display order; ``video_io`` fills it
from a file's packets (``frame_timing``) or from the decoded frames (``iter_video_frames(..., stamps=[])`` +
:func:`timing_from_stamps`). The lip-sync file path keeps these timestamps in its output and gives the frames'
real times to the audio conditioning.

Shape legend: F frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["FrameTiming", "VFR_TOLERANCE", "constant_timing", "timing_from_stamps"]

VFR_TOLERANCE = 0.05  # a frame this much longer / shorter than the typical one makes a clip variable-rate


@dataclass(frozen=True)
class FrameTiming:
    """Presentation timestamps of a clip's frames: ``pts`` [F] int64 in ``time_base`` units, in display order.

    ``exact`` is False when the file has no usable timestamps (they are then i / fps). ``variable``: some frame
    lasts more than one tick and 5 % longer or shorter than the typical (median) frame (a container's rounding,
    e.g. 29.97 fps stored in milliseconds as 33 / 34 ms, is not a variable rate)."""

    pts: np.ndarray
    time_base: Fraction
    fps: Fraction  # the stream's nominal rate
    exact: bool = True

    def __len__(self) -> int:
        return int(self.pts.shape[0])

    @property
    def relative(self) -> np.ndarray:
        """pts from the first frame (the first is 0), int64 [F]."""
        return self.pts - self.pts[0]

    @property
    def times(self) -> np.ndarray:
        """Seconds from the first frame, float64 [F]."""
        return self.relative.astype(np.float64) * float(self.time_base)

    @property
    def step(self) -> int:
        """Typical frame duration in ticks (the median difference; one frame: 1 / fps)."""
        if len(self) < 2:
            return max(1, round(1 / (self.fps * self.time_base)))
        return int(np.median(np.diff(self.pts)))

    @property
    def variable(self) -> bool:
        if len(self) < 3 or not self.exact:
            return False
        step = self.step
        return bool(np.any(np.abs(np.diff(self.pts) - step) > max(1.0, VFR_TOLERANCE * step)))

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end (the last lasts ``step`` ticks)."""
        return float((int(self.relative[-1]) + self.step) * self.time_base)

    @property
    def average_fps(self) -> Fraction:
        """Frames per second over the whole clip (the nominal rate for a constant-rate clip)."""
        if not self.variable:
            return self.fps
        return Fraction(len(self) / self.duration).limit_denominator(1001)

    def describe(self) -> str:
        if len(self) < 2:
            return f"{len(self)} frame"
        rates = 1.0 / (np.diff(self.pts).astype(np.float64) * float(self.time_base))
        return f"{len(self)} frames over {self.duration:.3f} s, {rates.min():.2f} to {rates.max():.2f} fps"


def constant_timing(n_frames: int, fps: Fraction) -> FrameTiming:
    """Timestamps i / fps (time base 1 / fps) for a clip without usable ones."""
    fps = Fraction(fps)
    return FrameTiming(np.arange(n_frames, dtype=np.int64), 1 / fps, fps, exact=False)


def timing_from_stamps(stamps: Sequence[Optional[int]], time_base: Fraction, fps: Fraction) -> FrameTiming:
    """FrameTiming of decoded (display-order) pts; falls back to i / fps when any is missing or they do not
    strictly increase (a damaged file), with a warning."""
    n = len(stamps)
    if n == 0:
        raise ValueError("no frames were decoded")
    if any(p is None for p in stamps):
        return constant_timing(n, fps)
    pts = np.asarray(stamps, dtype=np.int64)
    if n > 1 and not bool(np.all(np.diff(pts) > 0)):
        logger.warning("frame timestamps do not increase; assuming a constant %s fps", fps)
        return constant_timing(n, fps)
    return FrameTiming(pts, Fraction(time_base), Fraction(fps))
