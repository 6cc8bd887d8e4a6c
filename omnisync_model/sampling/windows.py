"""Temporal windows for long videos: planning, crossfade weights and a streaming stitcher.

A long video is processed in overlapping windows of frames (or latent frames). Memory stays bounded by the
window, not by the video: the :class:`Stitcher` keeps only the frames that a later window still touches.

Shape legend
    n_frames  total frames F of the video (or latent frames T when stitching latents)
    L         frames in one window (``Window.length``)
    ...       any trailing shape: pixels [L, H, W, 3], latents [L, C, h, w], features [L, D]

Planning (:func:`plan_windows`)
    Windows of ``window`` frames step by ``window - overlap``. The last window is shifted back so it ends exactly
    at ``n_frames``: no tail frame is dropped, and that window overlaps its predecessor by more than ``overlap``
    (when the step is larger than ``overlap`` it may even reach the window before; the weights handle any number
    of windows on a frame). With ``multiple > 1`` every window length is ``1 + k * multiple`` (a causal video
    VAE with temporal factor 4 encodes 1, 5, 9, ... frames): the requested window is rounded *down* to that form.
    A video shorter than the window becomes one window of ``n_frames`` frames, which is allowed for
    ``multiple > 1`` only when ``n_frames`` already has that form; otherwise the caller pads the video to
    :func:`padded_length` first (a ValueError says so).

Crossfade (:func:`window_weights`, :func:`frame_weights`)
    Each window has a raw weight per frame: a raised-cosine ramp up across its overlap with the previous window
    times a raised-cosine ramp down across its overlap with the next one (1 elsewhere). The ramps of two
    consecutive windows over the same overlap are sin^2 and cos^2 of the same angle, so they already sum to 1;
    the raw weights are strictly positive inside a window (samples sit at half-frame positions), and dividing by
    their sum over the windows on each frame makes the normalised weights a partition of unity in any case.

Stitching (:class:`Stitcher`)
    The stitcher computes the normalised weighted mean as a running mean: the first window on a frame sets it,
    each later window j moves it by ``alpha = r_j / (r_0 + ... + r_j)`` towards its own value
    (``acc += alpha * (x_j - acc)``). That equals ``sum_i w_i x_i`` and is *bitwise exact* when all windows
    agree on a frame (``x_j - acc`` is then exactly 0): a constant video stitches back to the same constant and
    windows cut from one video stitch back to that video, with no rounding at the seams.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Window",
    "plan_windows",
    "round_window",
    "padded_length",
    "validate_plan",
    "raw_window_weights",
    "window_weights",
    "frame_weights",
    "Stitcher",
    "stitch_all",
]


@dataclass(frozen=True)
class Window:
    """A half-open range of frames ``[start, end)`` processed together; ``index`` is its place in the plan."""

    index: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"Window needs 0 <= start < end, got start={self.start}, end={self.end}")

    @property
    def length(self) -> int:
        """Number of frames in the window."""
        return self.end - self.start


# ----------------------------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")


def round_window(window: int, multiple: int = 1) -> int:
    """Largest length of the form ``1 + k * multiple`` that is <= ``window`` (``window`` itself if multiple == 1)."""
    _check_int("window", window, 1)
    _check_int("multiple", multiple, 1)
    return 1 + ((window - 1) // multiple) * multiple


def padded_length(n: int, multiple: int) -> int:
    """Smallest length of the form ``1 + k * multiple`` that is >= ``n`` (what a short video must be padded to)."""
    _check_int("n", n, 1)
    _check_int("multiple", multiple, 1)
    return 1 + -(-(n - 1) // multiple) * multiple


def _window_starts(n_frames: int, window: int, step: int) -> list[int]:
    """Start frames: 0, step, 2*step, ... while the window does not reach the end, then ``n_frames - window``."""
    starts = list(range(0, n_frames - window, step))
    starts.append(n_frames - window)  # last window shifted back so it ends exactly at n_frames
    return starts


def plan_windows(n_frames: int, window: int, overlap: int, multiple: int = 1) -> list[Window]:
    """Plan overlapping windows covering ``[0, n_frames)``.

    Args:
        n_frames: frames in the video (>= 1).
        window: requested window length (>= 1); rounded down to ``1 + k * multiple`` when ``multiple > 1``.
        overlap: frames shared by consecutive windows (0 <= overlap < window, and < the rounded window).
        multiple: temporal factor of the codec; window lengths must be ``1 + k * multiple``.

    Returns:
        Windows in order, starts strictly increasing; all have the (rounded) window length, except a single
        window of ``n_frames`` frames when the video is not longer than the window.

    Raises:
        ValueError: on a bad argument (the message names it and its value), or when ``multiple > 1`` and a video
            shorter than the window has a length not of the form ``1 + k * multiple`` (pad it to
            :func:`padded_length` first).
    """
    _check_int("n_frames", n_frames, 1)
    _check_int("window", window, 1)
    _check_int("overlap", overlap, 0)
    _check_int("multiple", multiple, 1)
    if overlap >= window:
        raise ValueError(f"overlap must be < window={window}, got overlap={overlap}")
    length = round_window(window, multiple)
    if length != window:
        logger.debug("window=%d rounded down to %d (lengths must be 1 + k*%d)", window, length, multiple)
    if n_frames <= length:
        return [_single_window(n_frames, multiple)]
    if overlap >= length:
        raise ValueError(
            f"overlap must be < the window rounded to 1 + k*{multiple} ({length}), got overlap={overlap}"
        )
    starts = _window_starts(n_frames, length, length - overlap)
    return [Window(i, s, s + length) for i, s in enumerate(starts)]


def _single_window(n_frames: int, multiple: int) -> Window:
    """The one window of a video no longer than the window; its length must suit the codec."""
    if (n_frames - 1) % multiple != 0:
        raise ValueError(
            f"n_frames={n_frames} is shorter than the window and not of the form 1 + k*{multiple}; "
            f"pad the video to padded_length({n_frames}, {multiple}) = {padded_length(n_frames, multiple)} frames"
        )
    return Window(0, 0, n_frames)


def validate_plan(windows: Sequence[Window], n_frames: int) -> None:
    """Check that ``windows`` is a usable plan for ``n_frames`` frames, else raise ValueError.

    A usable plan has indices 0..k-1 in order, starts and ends strictly increasing, no gap between consecutive
    windows, first start 0 and last end ``n_frames``.
    """
    _check_int("n_frames", n_frames, 1)
    if not windows:
        raise ValueError("windows must not be empty")
    for i, win in enumerate(windows):
        if win.index != i:
            raise ValueError(f"windows[{i}].index must be {i}, got index={win.index}")
        if i and not (windows[i - 1].start < win.start <= windows[i - 1].end < win.end):
            raise ValueError(f"windows[{i}]={win} must start after, overlap or touch, and end after {windows[i - 1]}")
    if windows[0].start != 0 or windows[-1].end != n_frames:
        raise ValueError(f"windows must cover [0, {n_frames}), got [{windows[0].start}, {windows[-1].end})")


# ----------------------------------------------------------------------------------------------------------------
# crossfade weights
# ----------------------------------------------------------------------------------------------------------------


def _ramp_up(j: int, n: int) -> float:
    """Raised-cosine ramp at sample ``j`` of ``n`` (half-frame positions), strictly inside (0, 1): sin^2."""
    return math.sin(0.5 * math.pi * (j + 0.5) / n) ** 2


def _ramp_down(j: int, n: int) -> float:
    """Complement of :func:`_ramp_up` at the same sample: cos^2, so up + down = 1."""
    return math.cos(0.5 * math.pi * (j + 0.5) / n) ** 2


def raw_window_weights(windows: Sequence[Window], i: int) -> torch.Tensor:
    """Unnormalised crossfade weight of window ``i`` per frame: float64 [L], in (0, 1].

    Ramps up over ``[start_i, end_{i-1})`` and down over ``[start_{i+1}, end_i)``; 1 elsewhere.
    Depends only on windows i-1, i and i+1. Built as a Python list: windows are short and this runs per window.
    """
    win = windows[i]
    values = [1.0] * win.length
    if i > 0 and windows[i - 1].end > win.start:
        n_in = windows[i - 1].end - win.start
        for j in range(n_in):
            values[j] *= _ramp_up(j, n_in)
    if i + 1 < len(windows) and windows[i + 1].start < win.end:
        n_out = win.end - windows[i + 1].start
        for j in range(n_out):
            values[win.length - n_out + j] *= _ramp_down(j, n_out)
    return torch.tensor(values, dtype=torch.float64)


def _weight_sum(windows: Sequence[Window], i: int) -> torch.Tensor:
    """Sum of the raw weights of every window touching window ``i``'s frames: float64 [L_i]."""
    win = windows[i]
    total = torch.zeros(win.length, dtype=torch.float64)
    j = i
    while j > 0 and windows[j - 1].end > win.start:  # earliest window reaching into window i
        j -= 1
    while j < len(windows) and windows[j].start < win.end:
        other = windows[j]
        lo, hi = max(win.start, other.start), min(win.end, other.end)
        total[lo - win.start : hi - win.start] += raw_window_weights(windows, j)[lo - other.start : hi - other.start]
        j += 1
    return total


def window_weights(windows: Sequence[Window], i: int) -> torch.Tensor:
    """Normalised crossfade weight of window ``i`` per frame: float64 [L] in (0, 1].

    Over all windows the weights of a frame sum to 1 (up to float64 rounding, ~1e-16).
    """
    return raw_window_weights(windows, i) / _weight_sum(windows, i)


def frame_weights(windows: Sequence[Window], n_frames: int) -> torch.Tensor:
    """Dense normalised weights: float64 [len(windows), n_frames], 0 where a window does not reach a frame.

    Size grows with windows x frames: meant for tests and inspection, not for long videos.
    """
    validate_plan(windows, n_frames)
    dense = torch.zeros(len(windows), n_frames, dtype=torch.float64)
    for i, win in enumerate(windows):
        dense[i, win.start : win.end] = raw_window_weights(windows, i)
    return dense / dense.sum(dim=0)  # [W, n] / [n]: every frame has a positive raw weight in a valid plan


# ----------------------------------------------------------------------------------------------------------------
# streaming stitcher
# ----------------------------------------------------------------------------------------------------------------


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype (float32, float16, bfloat16) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Stitcher:
    """Streaming crossfade of window outputs into final frames.

    Call :meth:`add` once per window, in window order; each call returns the chunks that became final (no later
    window touches them) as ``(start_frame, Tensor[n, ...])`` in order, every frame exactly once over the run.
    Only pending frames (those a later window still overlaps) are held: ``pending`` is their count now and
    ``max_pending`` the most ever held (at most the window length). Accumulation is in float32 (float64 for
    float64 input); output is in the input dtype and on the input device.
    """

    def __init__(self, n_frames: int, windows: Sequence[Window]) -> None:
        validate_plan(windows, n_frames)
        self.n_frames = n_frames
        self.windows = list(windows)
        self.next_index = 0  # index of the window the next add() must carry
        self.emitted = 0  # frames emitted so far; pending frames start here
        self.max_pending = 0
        self._acc: torch.Tensor | None = None  # [P, ...] running weighted mean of pending frames
        self._cum = torch.zeros(0, dtype=torch.float64)  # [P] raw weight summed so far per pending frame
        self._dtype: torch.dtype | None = None
        self._trailing: tuple[int, ...] | None = None

    @property
    def pending(self) -> int:
        """Frames held now (received, not yet emitted)."""
        return 0 if self._acc is None else self._acc.shape[0]

    def add(self, window_index: int, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Blend window ``window_index``'s frames [L, ...] in and return the chunks that became final."""
        self._check_add(window_index, frames)
        raw = raw_window_weights(self.windows, window_index)
        # pending frames are [win.start, previous end): this window covers all of them (plan is validated)
        n_shared = self.pending
        fresh = frames[n_shared:].to(_accumulation_dtype(frames.dtype), copy=True)  # [L - n_shared, ...] first cover
        if self._acc is None:
            self._acc = fresh
        else:
            self._acc = torch.cat([self._blend(frames[:n_shared], raw[:n_shared]), fresh])
        self._cum = torch.cat([self._cum, raw[n_shared:]])
        self.max_pending = max(self.max_pending, self.pending)
        self.next_index += 1
        return self._emit_final()

    def finish(self) -> None:
        """Raise RuntimeError unless every window was added and every frame emitted."""
        if self.next_index != len(self.windows) or self.emitted != self.n_frames or self.pending:
            raise RuntimeError(
                f"Stitcher incomplete: {self.next_index}/{len(self.windows)} windows added, "
                f"{self.emitted}/{self.n_frames} frames emitted, {self.pending} pending"
            )

    def _check_add(self, window_index: int, frames: torch.Tensor) -> Window:
        """Validate one add() call and return its window."""
        if window_index != self.next_index:
            raise ValueError(f"windows must be added in order: expected window {self.next_index}, got {window_index}")
        if window_index >= len(self.windows):
            raise ValueError(f"all {len(self.windows)} windows were already added, got window {window_index}")
        win = self.windows[window_index]
        if frames.ndim < 1 or frames.shape[0] != win.length:
            raise ValueError(f"window {window_index} needs {win.length} frames, got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be floating point, got dtype={frames.dtype}")
        trailing = tuple(frames.shape[1:])
        if self._trailing is not None and (trailing != self._trailing or frames.dtype != self._dtype):
            raise ValueError(
                f"window {window_index} has trailing shape {trailing} and dtype {frames.dtype}, "
                f"earlier windows had {self._trailing} and {self._dtype}"
            )
        self._trailing, self._dtype = trailing, frames.dtype
        return win

    def _blend(self, shared: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Move the pending running mean [P, ...] towards this window's frames [P, ...] by raw / (weight so far)."""
        self._cum = self._cum + raw  # [P] float64
        alpha = (raw / self._cum).to(device=self._acc.device, dtype=self._acc.dtype)
        alpha = alpha.reshape((-1,) + (1,) * (shared.ndim - 1))  # [P, 1, ...] broadcasts over trailing dims
        return self._acc + alpha * (shared.to(self._acc.dtype) - self._acc)  # exact where shared == acc

    def _emit_final(self) -> list[tuple[int, torch.Tensor]]:
        """Split off the frames no later window touches and return them as one chunk (or none)."""
        done = len(self.windows) == self.next_index
        final_end = self.n_frames if done else self.windows[self.next_index].start
        n_final = final_end - self.emitted
        if n_final <= 0 or self._acc is None:
            return []
        chunk = self._acc[:n_final].to(self._dtype, copy=True)  # [n_final, ...] own storage, input dtype
        self._acc, self._cum = self._acc[n_final:], self._cum[n_final:]
        start, self.emitted = self.emitted, final_end
        if not self.pending:
            self._acc = None
        return [(start, chunk)]


def stitch_all(windows: Sequence[Window], chunks: Sequence[torch.Tensor], n_frames: int) -> torch.Tensor:
    """Stitch every window's frames (``chunks[i]`` is [L_i, ...]) into the whole video [n_frames, ...]."""
    if len(chunks) != len(windows):
        raise ValueError(f"need one chunk per window ({len(windows)}), got {len(chunks)}")
    stitcher = Stitcher(n_frames, windows)
    parts = []
    for win, frames in zip(windows, chunks):
        parts.extend(part for _, part in stitcher.add(win.index, frames))
    stitcher.finish()
    return torch.cat(parts)
