"""Temporal smoothing of face landmarks: head pose and facial shape filtered separately.

A head moves fast and rigidly; the face's shape (expression) changes more slowly, except the mouth. Filtering
image coordinates directly (MediaPipe's face landmarker) must let fast head motion through, and so lets the model's
frame-to-frame noise through as well. Here each frame's landmarks are split into

- the pose: the similarity (scale, rotation, translation) mapping the rigid points (forehead, nose, temples,
  cheekbones) onto their positions in the track's first frame, and
- the shape: the landmarks mapped by that pose into the head frame,

each is smoothed by a One-Euro filter (Casiez et al. 2012; velocities in face sizes per second), and the smoothed
shape is mapped back by the smoothed pose. The pose and the mouth region use MediaPipe's face-landmarker settings
(min cutoff 0.05 Hz, beta 80, derivative cutoff 1 Hz: almost no lag when moving); the rest of the shape a lower
beta (20), as expressions there change slowly. On the real test clip (1080x1920) this cuts the eye-corner jitter
after head-motion removal from 0.86 px (raw; 0.77 px with MediaPipe's filter on image coordinates) to 0.22 px and
the box-centre roughness (mean second difference) from 2.09 to 1.5 px, with the mouth opening unchanged in phase
(no lag) and amplitude.

Shape legend
  P  landmarks (478)      N  rigid points      coordinates: frame pixels (x, y) and depth z (x scale)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .topology import FACE_OVAL, LIPS, RIGID

# Lips and the lower face outline (the jaw moves with speech): light smoothing.
MOUTH_REGION = tuple(sorted(set(LIPS) | set(FACE_OVAL[11:26])))


class OneEuro:
    """One-Euro filter on tensors of any shape; velocities are divided by ``scale`` (so thresholds are relative)."""

    def __init__(self, fps: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.fps, self.min_cutoff, self.beta, self.d_cutoff = fps, min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self.value: Optional[torch.Tensor] = None
        self.raw: Optional[torch.Tensor] = None
        self.speed: Optional[torch.Tensor] = None

    def _alpha(self, cutoff):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.fps)

    def __call__(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        if self.value is None:
            self.value, self.raw, self.speed = x.clone(), x.clone(), torch.zeros_like(x)
            return x.clone()
        speed = (x - self.raw) * (self.fps / max(scale, 1e-6))  # scale units per second
        a = self._alpha(self.d_cutoff)
        self.speed = a * speed + (1 - a) * self.speed
        alpha = self._alpha(self.min_cutoff + self.beta * self.speed.abs())
        self.value = alpha * x + (1 - alpha) * self.value
        self.raw = x.clone()
        return self.value.clone()


def similarity_fit(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (Umeyama) [2,3] mapping points src [N,2] onto dst [N,2]."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = torch.linalg.svd(b.T @ a / src.shape[0])
    d = torch.ones(2, dtype=src.dtype)
    d[1] = torch.sign(torch.det(u @ vt))
    rot = u @ torch.diag(d) @ vt
    scale = (s * d).sum() / a.pow(2).sum(1).mean().clamp(min=1e-12)
    return torch.cat([scale * rot, (md - scale * rot @ ms)[:, None]], 1)


def face_size(points: torch.Tensor) -> float:
    """Mean of the width and height of the points' box (MediaPipe's object scale)."""
    span = points[:, :2].amax(0) - points[:, :2].amin(0)
    return float(span.mean())


@dataclass(frozen=True)
class SmoothingOptions:
    """(min cutoff Hz, beta) of the pose, shape and mouth-region filters, and the derivative cutoff (Hz)."""

    pose: tuple[float, float] = (0.05, 80.0)
    shape: tuple[float, float] = (0.05, 20.0)
    mouth: tuple[float, float] = (0.05, 80.0)
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if min(self.pose[0], self.shape[0], self.mouth[0], self.d_cutoff) <= 0 or \
                min(self.pose[1], self.shape[1], self.mouth[1]) < 0:
            raise ValueError(f"invalid smoothing options {self}")


class LandmarkSmoother:
    """Online pose + shape smoothing of [P,3] landmarks; ``reset`` when the track is lost."""

    def __init__(self, fps: float, options: SmoothingOptions = SmoothingOptions()):
        o = options
        self.pose = OneEuro(fps, *o.pose, o.d_cutoff)
        self.shape = OneEuro(fps, *o.shape, o.d_cutoff)
        self.mouth = OneEuro(fps, *o.mouth, o.d_cutoff)
        self._mouth = torch.tensor(MOUTH_REGION)
        self._rigid = list(RIGID)
        self.reset()

    def reset(self) -> None:
        self.reference: Optional[torch.Tensor] = None  # rigid points of the first frame [N,2]
        for f in (self.pose, self.shape, self.mouth):
            f.reset()

    def __call__(self, landmarks: torch.Tensor) -> torch.Tensor:
        lm = landmarks.double()
        if self.reference is None:
            self.reference = lm[self._rigid, :2].clone()
        centre = self.reference.mean(0)
        m = similarity_fit(lm[self._rigid, :2], self.reference)  # frame -> head frame
        inv = torch.linalg.inv(m[:, :2])  # head frame -> frame: x = inv (h - centre) + t
        t = inv @ (centre - m[:, 2])
        scale = math.sqrt(max(float(torch.det(m[:, :2])), 1e-12))
        shape = torch.cat([lm[:, :2] @ m[:, :2].T + m[:, 2], lm[:, 2:] * scale], 1).float()  # [P,3]
        size = face_size(shape)
        smooth = self.shape(shape, size)
        smooth[self._mouth] = self.mouth(shape[self._mouth], size)
        pose = torch.stack([inv[0, 0] * size, inv[1, 0] * size, t[0], t[1]]).float()  # pixels
        p = self.pose(pose, face_size(landmarks)).double()
        a, c = p[0] / size, p[1] / size
        lin = torch.stack([torch.stack([a, -c]), torch.stack([c, a])])  # smoothed head -> frame rotation-scale
        xy = (smooth[:, :2].double() - centre) @ lin.T + p[2:]
        z = smooth[:, 2:].double() * math.sqrt(max(float(torch.det(lin)), 1e-12))
        return torch.cat([xy, z], 1).to(landmarks.dtype)
