"""Per-frame presentation times (variable-frame-rate video) for the audio conditioning of a window.

``AudioInput.frame_times`` [F] holds each frame's presentation time in seconds from the first frame (phones
record variable frame rates). Frame i is shown over [t_i, t_{i+1}); the last frame lasts as long as the one
before it, and the codec's padding frames past the end continue at that pace. With ``t_i = i / fps`` every
function here gives exactly the constant-rate figures of :mod:`..core.audio` (centre (i + 0.5) / fps, latent
centre the mean of its frames' centres, audio span [start / fps, end / fps]).

Shape legend
  F video frames   n frames of a window (padded)   T latent frames of a window
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["check_frame_times", "frame_edges", "window_centre_times", "window_time_span"]


def check_frame_times(times: torch.Tensor, n_frames: Optional[int] = None) -> torch.Tensor:
    """[F] seconds as float64: finite, strictly increasing, starting at >= 0 (and F == n_frames when given)."""
    t = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("frame_times is empty")
    if n_frames is not None and t.numel() != n_frames:
        raise ValueError(f"frame_times has {t.numel()} entries for {n_frames} frames")
    if not bool(torch.isfinite(t).all()) or float(t[0]) < 0:
        raise ValueError("frame_times must be finite seconds >= 0")
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise ValueError("frame_times must be strictly increasing")
    return t


def frame_edges(times: torch.Tensor, start: int, n: int, fps: float) -> torch.Tensor:
    """Start times of frames start .. start + n (n + 1 edges, the last one the end of frame start + n - 1), [n+1]
    float64. Frames past the end of ``times`` continue at the pace of the last frame (1 / fps for one frame)."""
    f = times.numel()
    last_step = float(times[-1] - times[-2]) if f > 1 else 1.0 / float(fps)
    idx = torch.arange(start, start + n + 1, dtype=torch.float64)
    inside = times[idx.long().clamp(max=f - 1)]
    beyond = times[-1] + (idx - (f - 1)) * last_step  # extrapolated edges
    return torch.where(idx <= f - 1, inside, beyond)


def window_centre_times(times: torch.Tensor, start: int, n: int, temporal_factor: int, fps: float) -> torch.Tensor:
    """Absolute centre time in seconds of each latent frame of the window [start, start + n) -> [T] float64.

    Latent 0 covers frame ``start``; latent j >= 1 covers frames 1 + (j-1) tf .. j tf of the window (clipped to
    the window), and its centre is the mean of those frames' centres (causal video VAE, as frame_centre_times).
    """
    edges = frame_edges(times, start, n, fps)
    centres = (edges[:-1] + edges[1:]) / 2  # [n] frame centres
    if temporal_factor == 1:
        return centres
    t_latent = 1 + (n - 1) // temporal_factor
    out = [centres[0]]
    for j in range(1, t_latent):
        a, b = 1 + (j - 1) * temporal_factor, min(j * temporal_factor, n - 1)
        out.append(centres[a:b + 1].mean())
    return torch.stack(out)


def window_time_span(times: torch.Tensor, start: int, n: int, fps: float) -> tuple[float, float]:
    """(start time of frame ``start``, end time of frame ``start + n - 1``) in seconds."""
    edges = frame_edges(times, start, n, fps)
    return float(edges[0]), float(edges[-1])
