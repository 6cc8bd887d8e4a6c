"""OMNISYNC_MOUTH: per-frame mouth tracks (the built-in locator, fitting a track to a frame count).

Shape legend
  F video frames   centres [F,2] normalised (x, y)   valid [F] bool
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from ...omnisync_model.faces import SpeakerChoice, TrackOptions, face_track
from ...omnisync_model.media.locate import MouthLocator, MouthTrack, uniform_track

log = logging.getLogger(__name__)


FINDERS = ("face mesh", "locator")  # widget values: MediaPipe's detector + mesh (locator fallback) / locator only


def locate_track(frames: torch.Tensor, check_interrupt: Optional[Callable[[], None]] = None,
                 finder: str = "face mesh", fps: float = 25.0, speaker: Optional[SpeakerChoice] = None,
                 device=None) -> MouthTrack:
    """The mouth track of IMAGE frames [F,H,W,3], a chunk at a time with an interrupt check after each; never
    aborts (falls back to a uniform track with a warning).

    finder "face mesh": the face detector + 478-point mesh, followed frame to frame (``speaker`` picks the face when
    there are several); frames it misses fall back to the weight-free locator, then to their neighbours.
    "locator": the weight-free locator alone.
    """
    if finder not in FINDERS:
        raise ValueError(f"finder must be one of {FINDERS}, got {finder!r}")
    try:
        if finder == "face mesh":
            track = face_track(frames, float(fps), TrackOptions(keep_landmarks=False), speaker or SpeakerChoice(),
                               device=device, progress=(lambda _done: check_interrupt()) if check_interrupt else None)
            return track.mouth_track()
        locator = MouthLocator()
        for start in range(0, frames.shape[0], locator.options.chunk):
            locator.add(frames[start:start + locator.options.chunk])
            if check_interrupt is not None:
                check_interrupt()
        return locator.finish()
    except (ValueError, RuntimeError) as exc:
        log.warning("OmniSync mouth %s failed (%s); using the frame centre with uniform guidance", finder, exc)
        return uniform_track(frames.shape[0])


def fit_track_length(centres: torch.Tensor, valid: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame mouth track [F',2], [F'] fitted to n frames: truncated, or the last entry repeated (warning)."""
    m = centres.shape[0]
    if m == n:
        return centres, valid
    log.warning("mouth track has %d frames, the video %d; %s", m, n, "truncating" if m > n else "repeating the last")
    if m > n:
        return centres[:n], valid[:n]
    idx = torch.arange(n).clamp(max=m - 1)  # repeat the last entry
    return centres[idx], valid[idx]


def track_arrays(track: Any, n_frames: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(centres [F,2] normalised x, y; valid [F] bool) of an OMNISYNC_MOUTH (anything with .centres/.valid)."""
    if track is None:
        return None, None
    centres = torch.as_tensor(track.centres, dtype=torch.float32).reshape(-1, 2)  # [F,2]
    valid = torch.as_tensor(track.valid, dtype=torch.bool).reshape(-1)  # [F]
    if centres.shape[0] == 0:
        return None, None
    return fit_track_length(centres, valid, n_frames)
