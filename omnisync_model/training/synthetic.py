"""Synthetic talking-face suite: procedurally drawn faces driven by speech-like audio (``speech.py``).

It lets the project prove that a small model trained with the OmniSync recipe lip-syncs (DESIGN.md section 7).

Shape legend:
  N      audio samples (mono, float32)
  F      video frames; frame i is centred at time (i + 0.5) / fps seconds
  H = W  frame side in pixels (``size``)
  frames [F, H, W, 3] float32 in 0..1 (ComfyUI IMAGE layout); per-frame maps [F, H, W];
  per-frame scalars are kept as [F, 1, 1] so that they broadcast against maps.

Geometry: image x points right, y points down, pixel centres at (i + 0.5). Each face is drawn in head-local
"face units" (u right, v down, head half-height ~1, one unit = ``r`` pixels) with signed-distance fields; a
shape's coverage is ``clamp(0.5 - distance_px, 0, 1)`` (a soft 1-pixel edge), so 64x64 frames stay clean.
All motion (wobble, pose drift, blinks) is defined in seconds, so any fps works.

Pseudo-pair property: ``render(spec, mouth_open)`` is a pure function of the spec and the per-frame opening, and
the opening only enters the mouth layer, which is clipped to ``mouth_box``: two openings give frames that are
bitwise equal outside the mouth box. Randomness comes from numpy Generators seeded with ``[seed, stream]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .metrics import LUMA_709
from . import sdf
from .styles import STYLES  # noqa: F401 (public API)
from .speech import SAMPLE_RATE, seeded_rng, make_speech, mouth_opening  # noqa: F401 (make_speech: public API)

logger = logging.getLogger(__name__)

BACKGROUNDS = ("noise", "stripes", "gradient")
_MOUTH_PAD_PX = 1.5  # mouth box margin around the drawn lips, in pixels
_CHUNK = 128  # frames rendered at once (bounds memory on long clips)
_STREAM_POSE, _STREAM_LOOK, _STREAM_BG, _STREAM_BLINK, _STREAM_OCC = range(2, 7)  # stream 1 is the speech (speech.py)


# ---- Specs and results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Everything that defines a synthetic clip except the mouth opening."""

    seed: int
    style: str = "realistic"
    n_frames: int = 48
    fps: float = 25.0
    size: int = 64
    occluder: bool = False
    occluder_over_mouth: bool = False  # when True the occluder may cover part of the mouth
    motion: float = 1.0  # scales head wobble and pose drift (0 = static head)
    background: str | None = None  # one of BACKGROUNDS, None = drawn from the seed
    blink: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS} or None, got {self.background!r}")
        if self.n_frames < 1 or self.fps <= 0 or self.size < 16 or self.seed < 0:
            raise ValueError(f"invalid spec: n_frames>=1, fps>0, size>=16, seed>=0 required ({self})")


@dataclass(frozen=True)
class SyntheticClip:
    frames: torch.Tensor  # [F, H, W, 3] float32 0..1
    mouth_open: torch.Tensor  # [F] 0..1, the opening that drove the mouth
    mouth_centre: torch.Tensor  # [F, 2] normalised (x, y): centre of the mouth region at full opening
    mouth_box: torch.Tensor  # [F, 4] normalised (x0, y0, x1, y1): covers the mouth at full opening
    face_box: torch.Tensor  # [F, 4] normalised: bounding box of the head outline (ears excluded)
    style: str
    fps: float
    spec: ClipSpec | None = None


# ---- Per-clip random choices: pose track, layout, palette ----------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    """Per-frame head transform; every field [F, 1, 1] (float32)."""

    cx: torch.Tensor  # head centre x, pixels
    cy: torch.Tensor
    r: torch.Tensor  # pixels per face unit
    cos: torch.Tensor  # roll
    sin: torch.Tensor
    yaw: torch.Tensor  # feature shift (face units) from turning the head
    pitch: torch.Tensor


@dataclass(frozen=True)
class _Layout:
    head_a: float  # head half-width (face units)
    head_b: float  # head half-height
    chin: float  # narrowing of the lower head (anime)
    eye_x: float
    eye_y: float
    eye_a: float
    eye_b: float
    iris_r: float
    mouth_y: float  # mouth line
    mouth_w: float  # half-width of the mouth interior
    mouth_h: float  # interior height at full opening
    lip_t: float  # lip thickness


@dataclass(frozen=True)
class _Palette:
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    sclera: tuple[float, float, float]
    lips: tuple[float, float, float]
    interior: tuple[float, float, float]
    teeth: tuple[float, float, float] | None
    line: tuple[float, float, float]
    light: tuple[float, float, float]  # unit light direction (shading)
    pattern: float = 0.0  # fur stripes (animal)


_LAYOUTS = {
    "realistic": _Layout(0.78, 1.0, 0.0, 0.33, -0.12, 0.14, 0.075, 0.06, 0.45, 0.24, 0.28, 0.055),
    "cartoon": _Layout(0.85, 0.95, 0.0, 0.31, -0.15, 0.15, 0.17, 0.08, 0.45, 0.28, 0.28, 0.045),
    "anime": _Layout(0.8, 1.0, 0.35, 0.33, 0.0, 0.15, 0.2, 0.12, 0.55, 0.17, 0.26, 0.035),
    "animal": _Layout(0.9, 0.9, 0.0, 0.34, -0.2, 0.1, 0.1, 0.09, 0.5, 0.2, 0.24, 0.045),
    "sketch": _Layout(0.78, 1.0, 0.0, 0.33, -0.12, 0.14, 0.08, 0.055, 0.45, 0.24, 0.24, 0.05),
}


_FUR = ((0.85, 0.5, 0.2), (0.45, 0.32, 0.22), (0.55, 0.55, 0.58), (0.92, 0.88, 0.8), (0.3, 0.3, 0.32),
        (0.75, 0.6, 0.4))
_HAIR = ((0.08, 0.06, 0.05), (0.35, 0.22, 0.12), (0.8, 0.68, 0.42), (0.55, 0.25, 0.12), (0.7, 0.7, 0.7))


def _tuple(c) -> tuple[float, float, float]:
    return tuple(float(x) for x in np.clip(np.asarray(c, dtype=float), 0.0, 1.0))


def _lift(c, min_lum: float) -> tuple[float, float, float]:
    """Mix a colour toward white until its luminance is at least ``min_lum``."""
    c = np.clip(np.asarray(c, dtype=float), 0.0, 1.0)
    lum = float(np.dot(LUMA_709, c))
    if lum < min_lum:
        c = c + (1.0 - c) * (min_lum - lum) / (1.0 - lum)
    return _tuple(c)


def _layout(style: str, rng: np.random.Generator) -> _Layout:
    base = _LAYOUTS[style]
    j = rng.uniform(0.9, 1.1, size=4)  # +-10 % jitter of eye spacing, eye size, mouth width, mouth height
    return replace(base, eye_x=base.eye_x * j[0], eye_a=base.eye_a * j[1], eye_b=base.eye_b * j[1],
                   mouth_w=base.mouth_w * j[2], mouth_h=base.mouth_h * j[3],
                   mouth_y=base.mouth_y + float(rng.uniform(-0.03, 0.03)))


def _palette(style: str, rng: np.random.Generator) -> _Palette:
    """Colours per style. Everything that can sit in the mouth box has luminance >= 0.2 (lips >= 0.25), the
    interior <= 0.05, so a luminance threshold separates them."""
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.7, -0.1), 1.0])
    light = _tuple(light / np.linalg.norm(light))
    interior = _tuple(np.array([0.09, 0.02, 0.03]) * rng.uniform(0.6, 1.0))
    rand = rng.uniform(0.0, 1.0, size=(3, 3))  # three random colours
    if style == "realistic":
        t = rng.uniform()
        skin = _lift(np.array([0.95, 0.80, 0.70]) * (1 - t) + np.array([0.47, 0.30, 0.21]) * t, 0.32)
        hair = _HAIR[int(rng.integers(len(_HAIR)))]
        lips = _lift(np.array(skin) * 0.7 + np.array([0.25, 0.02, 0.04]), 0.25)
        return _Palette(skin, hair, _tuple(rand[0] * 0.5 + 0.1), (0.95, 0.94, 0.92), lips, interior,
                        (0.92, 0.9, 0.82), (0.15, 0.1, 0.08), light)
    if style == "cartoon":
        skin = _lift(rand[0] * 0.7 + 0.3, 0.45)
        lips = _lift((0.6 + 0.35 * rand[1]) * np.array([1.0, 0.4, 0.4]), 0.28)
        return _Palette(skin, _tuple(rand[2] * 0.9), (0.05, 0.05, 0.05), (1.0, 1.0, 1.0), lips, interior,
                        (1.0, 1.0, 1.0), (0.05, 0.05, 0.05), light)
    if style == "anime":
        skin = _lift(np.array([1.0, 0.88, 0.8]) - 0.04 * rand[0], 0.75)
        lips = _lift(np.array(skin) * np.array([1.0, 0.72, 0.72]), 0.4)
        return _Palette(skin, _tuple(0.1 + 0.9 * rand[1]), _tuple(0.1 + 0.8 * rand[2]), (1.0, 1.0, 1.0), lips,
                        interior, None, (0.12, 0.08, 0.1), light)
    if style == "animal":
        fur = _lift(np.array(_FUR[int(rng.integers(len(_FUR)))]) * (0.9 + 0.2 * rand[0]), 0.32)
        amber = _tuple((0.5 + 0.5 * rand[1]) * np.array([0.95, 0.7, 0.2]))
        return _Palette(fur, _lift(np.array(fur) * 0.6, 0.2), _tuple(np.array(amber) * 0.6), amber,
                        _lift(np.array(fur) * 0.65, 0.25), interior, None, (0.06, 0.05, 0.05), light,
                        pattern=float(rng.uniform() < 0.5))
    g = float(rng.uniform(0.25, 0.32))  # graphite
    return _Palette((0.93, 0.91, 0.86), (0.93, 0.91, 0.86), (g, g, g), (0.95, 0.94, 0.9), (g, g, g),
                    (0.05, 0.05, 0.06), None, (g, g, g + 0.02), light)


def _sines(rng: np.random.Generator, t: torch.Tensor, n: int, amp: float, f_lo: float, f_hi: float) -> torch.Tensor:
    """Sum of n random sinusoids of time t (seconds), total peak amplitude ~amp."""
    out = torch.zeros_like(t)
    for _ in range(n):
        f, ph, a = rng.uniform(f_lo, f_hi), rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.0) * amp / n
        out = out + a * torch.sin(2 * math.pi * f * t + ph)
    return out


def _frame_times(spec: ClipSpec) -> torch.Tensor:
    return (torch.arange(spec.n_frames, dtype=torch.float64) + 0.5) / spec.fps  # [F] seconds


def _pose(spec: ClipSpec, layout: _Layout) -> _Pose:
    rng = seeded_rng(spec.seed, _STREAM_POSE)
    t, size, m = _frame_times(spec), float(spec.size), spec.motion
    r0 = size * rng.uniform(0.3, 0.4)
    mx, my = layout.head_a * r0 * 1.05, layout.head_b * r0 * 1.05
    cx0, cy0 = rng.uniform(mx, size - mx), rng.uniform(my, size - my)
    r = r0 * (1.0 + _sines(rng, t, 1, 0.04 * m, 0.03, 0.15))
    cx = (cx0 + _sines(rng, t, 3, 0.03 * size * m, 0.2, 1.2)).clamp(mx * 0.9, size - mx * 0.9)
    cy = (cy0 + _sines(rng, t, 3, 0.025 * size * m, 0.2, 1.2)).clamp(my * 0.9, size - my * 0.9)
    roll = math.radians(rng.uniform(-6, 6)) + _sines(rng, t, 2, math.radians(6) * m, 0.03, 0.2)
    yaw = rng.uniform(-0.04, 0.04) + _sines(rng, t, 2, 0.07 * m, 0.03, 0.2)
    pitch = rng.uniform(-0.02, 0.02) + _sines(rng, t, 2, 0.03 * m, 0.05, 0.3)
    as3 = lambda x: x.float().view(-1, 1, 1)  # noqa: E731  [F] -> [F, 1, 1]
    return _Pose(as3(cx), as3(cy), as3(r), as3(torch.cos(roll)), as3(torch.sin(roll)), as3(yaw), as3(pitch))


def _blinks(spec: ClipSpec) -> torch.Tensor:
    """Blink closure per frame [F, 1, 1] in 0..1: 120-250 ms blinks every 1.5-5 s (times in seconds)."""
    t = _frame_times(spec)
    out = torch.zeros_like(t)
    if spec.blink:
        rng = seeded_rng(spec.seed, _STREAM_BLINK)
        start = rng.uniform(0.2, 3.0)
        while start < float(t[-1]) + 1.0:
            dur = rng.uniform(0.12, 0.25)
            x = ((t - start) / dur).clamp(0.0, 1.0)
            out = torch.maximum(out, torch.sin(math.pi * x))
            start += dur + rng.uniform(1.5, 5.0)
    return out.float().view(-1, 1, 1)


# ---- Geometry (signed-distance primitives in sdf.py; distances in face units unless named *_px) ---------------


@dataclass(frozen=True)
class _Geo:
    """Per-chunk drawing coordinates."""

    u: torch.Tensor  # head-local [F, H, W]
    v: torch.Tensor
    fu: torch.Tensor  # feature coordinates (head-local shifted by yaw / pitch) [F, H, W]
    fv: torch.Tensor
    r: torch.Tensor  # pixels per face unit [F, 1, 1]


def _geo(pose: _Pose, size: int) -> _Geo:
    p = torch.arange(size, dtype=torch.float32) + 0.5
    dx = p.view(1, 1, size) - pose.cx  # [F, 1, W]
    dy = p.view(1, size, 1) - pose.cy  # [F, H, 1]
    u = (pose.cos * dx + pose.sin * dy) / pose.r  # [F, H, W]
    v = (-pose.sin * dx + pose.cos * dy) / pose.r
    return _Geo(u, v, u - pose.yaw, v - pose.pitch, pose.r)


def _to_image(pose: _Pose, u: float | torch.Tensor, v: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Face units -> image pixels (per frame)."""
    x = pose.cx + pose.r * (pose.cos * u - pose.sin * v)
    y = pose.cy + pose.r * (pose.sin * u + pose.cos * v)
    return x, y


def _mouth_geometry(pose: _Pose, lay: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Mouth centre [F, 2] and mouth box [F, 4] in pixels, both independent of the opening."""
    mu, mv = pose.yaw, pose.pitch + lay.mouth_y
    half_w = lay.mouth_w + lay.lip_t
    top, bottom = -0.2 * lay.mouth_h - lay.lip_t, 0.8 * lay.mouth_h + lay.lip_t
    xs, ys = zip(*(_to_image(pose, mu + cu, mv + cv) for cu in (-half_w, half_w) for cv in (top, bottom)))
    xs, ys = torch.cat(xs, -1).flatten(1), torch.cat(ys, -1).flatten(1)  # [F, 4] corners
    box = torch.stack([xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], 1)
    box = box + torch.tensor([-1.0, -1.0, 1.0, 1.0]) * _MOUTH_PAD_PX
    cx, cy = _to_image(pose, mu, mv + 0.3 * lay.mouth_h)
    return torch.stack([cx.flatten(), cy.flatten()], 1), box


def _box_mask(box_px: torch.Tensor, size: int) -> torch.Tensor:
    """Pixels whose centre lies inside the box: [F, 4] pixels -> [F, H, W] float 0/1."""
    p = torch.arange(size, dtype=torch.float32) + 0.5
    inx = (p.view(1, 1, -1) >= box_px[:, 0, None, None]) & (p.view(1, 1, -1) <= box_px[:, 2, None, None])
    iny = (p.view(1, -1, 1) >= box_px[:, 1, None, None]) & (p.view(1, -1, 1) <= box_px[:, 3, None, None])
    return (inx & iny).float()


# ---- Drawing: background, faces per style, mouth, occluder ---------------------------------------------------------


def _background(spec: ClipSpec, pal: _Palette) -> torch.Tensor:
    """Static textured background [H, W, 3]: smooth noise, stripes or a gradient (paper for sketches)."""
    rng, size = seeded_rng(spec.seed, _STREAM_BG), spec.size
    kind = spec.background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c1, c2 = rng.uniform(0.05, 0.95, size=(2, 3))
    if spec.style == "sketch":
        kind, c1 = "noise", np.array(pal.skin)
        c2 = c1 * 0.93
    p = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    ang = rng.uniform(0.0, 2.0 * math.pi)
    proj = p.view(1, -1) * math.cos(ang) + p.view(-1, 1) * math.sin(ang)  # [H, W]
    if kind == "gradient":
        t = (proj - proj.min()) / (proj.max() - proj.min())
    elif kind == "stripes":
        t = 0.5 + 0.5 * torch.sin(2.0 * math.pi * rng.uniform(2.0, 7.0) * proj + rng.uniform(0.0, 6.3))
    else:
        g = int(rng.integers(3, 8))
        grid = torch.from_numpy(rng.uniform(0.0, 1.0, size=(1, 1, g, g)))  # [1, 1, g, g]
        t = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    col = torch.from_numpy(c1) + torch.from_numpy(c2 - c1) * t.clamp(0.0, 1.0).unsqueeze(-1)  # [H, W, 3]
    grain = torch.from_numpy(rng.normal(0.0, 0.015, size=(size, size, 1)))
    return (col + grain).clamp(0.0, 1.0).float()


def _head_sd(g: _Geo, lay: _Layout) -> torch.Tensor:
    u = g.u / (1.0 - lay.chin * g.v.clamp(0.0, 1.0) ** 2) if lay.chin else g.u  # anime: pointed chin
    return sdf.sd_ellipse(u, g.v, lay.head_a, lay.head_b)


def _shading(g: _Geo, lay: _Layout, light: tuple) -> torch.Tensor:
    """Lambert shading of the head seen as an ellipsoid, with a faint skin texture -> [F, H, W, 1]."""
    nx, ny = g.u / lay.head_a, g.v / lay.head_b
    nz = (1.0 - nx * nx - ny * ny).clamp_min(0.0).sqrt()
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz).clamp_min(1e-6)
    lam = ((nx * light[0] + ny * light[1] + nz * light[2]) / norm).clamp_min(0.0)
    texture = 1.0 + 0.025 * torch.sin(37.0 * g.u + 1.3) * torch.sin(41.0 * g.v + 0.7)
    return ((0.7 + 0.3 * lam) * texture).unsqueeze(-1)


def _hair_sd(g: _Geo, lay: _Layout, bangs: bool) -> torch.Tensor:
    cap = sdf.sd_ellipse(g.u, g.v + 0.05, lay.head_a + 0.07, lay.head_b + 0.08)
    if bangs:
        line = -0.3 + 0.12 * torch.sin(9.0 * g.u).abs()  # zig-zag fringe
    else:
        line = -0.45 + 0.35 * (g.u / lay.head_a) ** 2
    return torch.maximum(cap, g.v - line)


def _draw_eyes(img, g: _Geo, lay: _Layout, pal: _Palette, blink, outline_px: float, brow: float):
    """Two eyes (sclera, iris, pupil, highlight, outline) that close with ``blink``, and eyebrows (``brow`` thick)."""
    open_ = (1.0 - blink).clamp_min(0.05)
    for side in (-1.0, 1.0):
        eu, ev = g.fu - side * lay.eye_x, g.fv - lay.eye_y
        sd_eye = sdf.sd_ellipse(eu, ev, lay.eye_a, lay.eye_b * open_)
        img = sdf.over(img, sdf.cov(sd_eye * g.r), pal.sclera)
        rings = ((lay.iris_r, 0.0, pal.iris), (lay.iris_r * 0.5, 0.0, (0.02, 0.02, 0.02)),
                 (lay.iris_r * 0.3, 0.4 * lay.iris_r, (1.0, 1.0, 1.0)))
        for rad, off, col in rings:
            sd = torch.maximum(torch.hypot(eu + off, ev + off) - rad, sd_eye)
            img = sdf.over(img, sdf.cov(sd * g.r), col)
        if outline_px > 0:
            img = sdf.over(img, sdf.outline(sd_eye * g.r, outline_px), pal.line)
        if brow > 0:
            y = lay.eye_y - lay.eye_b - 0.1
            d = sdf.sd_segment(g.fu, g.fv, (side * (lay.eye_x - lay.eye_a), y), (side * (lay.eye_x + lay.eye_a), y - 0.03))
            img = sdf.over(img, sdf.cov((d - 0.5 * brow) * g.r), pal.hair if pal.hair != pal.skin else pal.line)
    return img


def _draw_realistic(img, g: _Geo, lay: _Layout, pal: _Palette, blink):
    skin = torch.tensor(pal.skin)
    img = sdf.over(img, sdf.cov(sdf.sd_box(g.u, g.v - 1.6, 0.36, 0.9, 0.1) * g.r), skin * 0.72)  # neck
    for side in (-1.0, 1.0):
        img = sdf.over(img, sdf.cov(sdf.sd_ellipse(g.u - side * lay.head_a * 0.97, g.v + 0.02, 0.11, 0.2) * g.r), skin * 0.85)
    img = sdf.over(img, sdf.cov(_head_sd(g, lay) * g.r), skin * _shading(g, lay, pal.light))
    img = sdf.over(img, sdf.cov(_hair_sd(g, lay, False) * g.r), pal.hair)
    img = _draw_eyes(img, g, lay, pal, blink, 0.8, 0.05)
    nose = sdf.sd_ellipse(g.fu - 0.02, g.fv - 0.17, 0.07, 0.05)
    return sdf.over(img, 0.35 * sdf.cov(nose * g.r), skin * 0.6)


def _draw_cartoon(img, g: _Geo, lay: _Layout, pal: _Palette, blink):
    ow = 1.2  # outline width, pixels
    for side in (-1.0, 1.0):
        ear = sdf.sd_ellipse(g.u - side * lay.head_a, g.v, 0.16, 0.16) * g.r
        img = sdf.over(sdf.over(img, sdf.cov(ear), pal.skin), sdf.outline(ear, ow), pal.line)
    head = _head_sd(g, lay) * g.r
    img = sdf.over(sdf.over(img, sdf.cov(head), pal.skin), sdf.outline(head, ow), pal.line)
    hair = _hair_sd(g, lay, False) * g.r
    img = sdf.over(sdf.over(img, sdf.cov(hair), pal.hair), sdf.outline(hair, ow), pal.line)
    img = _draw_eyes(img, g, lay, pal, blink, 1.0, 0.0)
    nose = sdf.sd_ellipse(g.fu, g.fv - 0.15, 0.07, 0.07) * g.r
    return sdf.over(sdf.over(img, sdf.cov(nose), _tuple(np.array(pal.skin) * 0.85)), sdf.outline(nose, 0.8), pal.line)


def _draw_anime(img, g: _Geo, lay: _Layout, pal: _Palette, blink):
    img = sdf.over(img, sdf.cov(sdf.sd_ellipse(g.u, g.v - 0.2, 1.0, 1.2) * g.r), _tuple(np.array(pal.hair) * 0.8))
    img = sdf.over(img, sdf.cov(sdf.sd_box(g.u, g.v - 1.6, 0.28, 0.9, 0.1) * g.r), _tuple(np.array(pal.skin) * 0.85))
    head = _head_sd(g, lay) * g.r
    img = sdf.over(sdf.over(img, sdf.cov(head), pal.skin), sdf.outline(head, 0.7), pal.line)
    img = sdf.over(img, sdf.cov(_hair_sd(g, lay, True) * g.r), pal.hair)
    img = _draw_eyes(img, g, lay, pal, blink, 1.1, 0.03)
    for side in (-1.0, 1.0):  # blush
        blush = sdf.sd_ellipse(g.fu - side * 0.45, g.fv - 0.3, 0.1, 0.05) * g.r
        img = sdf.over(img, 0.4 * sdf.cov(blush), (1.0, 0.55, 0.6))
    nose = sdf.sd_segment(g.fu, g.fv, (0.0, 0.28), (0.02, 0.33)) * g.r
    return sdf.over(img, 0.6 * sdf.cov(nose - 0.4), pal.line)


def _draw_animal(img, g: _Geo, lay: _Layout, pal: _Palette, blink):
    fur = torch.tensor(pal.skin)
    for side in (-1.0, 1.0):  # ears: ellipses tilted outward, pink inside
        c, s = math.cos(side * 0.45), math.sin(side * 0.45)
        eu, ev = g.u - side * 0.55, g.v + 0.75
        ru, rv = c * eu + s * ev, -s * eu + c * ev  # rotate into the ear frame
        img = sdf.over(img, sdf.cov(sdf.sd_ellipse(ru, rv, 0.22, 0.38) * g.r), fur * 0.9)
        img = sdf.over(img, sdf.cov(sdf.sd_ellipse(ru, rv + 0.05, 0.11, 0.22) * g.r), (0.9, 0.6, 0.62))
    texture = 1.0 + 0.07 * torch.sin(45.0 * g.u + 3.0 * torch.sin(20.0 * g.v)) * torch.sin(40.0 * g.v)
    img = sdf.over(img, sdf.cov(_head_sd(g, lay) * g.r), fur * (texture * 0.9 + 0.1).unsqueeze(-1))
    if pal.pattern > 0:  # stripes on the forehead
        band = (torch.sin(18.0 * g.u).abs() - 0.6).clamp_min(0.0) * 2.5 * (-0.25 - g.v).clamp(0.0, 0.1) * 10.0
        img = sdf.over(img, band * sdf.cov(_head_sd(g, lay) * g.r), pal.hair)
    snout = sdf.sd_ellipse(g.fu, g.fv - lay.mouth_y + 0.05, 0.38, 0.3)
    img = sdf.over(img, sdf.cov(snout * g.r), _lift(np.array(pal.skin) * 1.25, 0.5))
    img = _draw_eyes(img, g, lay, pal, blink, 0.6, 0.0)
    img = sdf.over(img, sdf.cov(sdf.sd_ellipse(g.fu, g.fv - lay.mouth_y + 0.3, 0.09, 0.055) * g.r), (0.08, 0.06, 0.06))
    for side in (-1.0, 1.0):
        for k in range(3):
            y0 = lay.mouth_y - 0.06 + 0.05 * k
            d = sdf.sd_segment(g.fu, g.fv, (side * 0.4, y0), (side * 0.85, y0 - 0.1 + 0.1 * k)) * g.r
            img = sdf.over(img, 0.8 * sdf.cov(d - 0.3), (0.25, 0.22, 0.2))
    return img


def _draw_sketch(img, g: _Geo, lay: _Layout, pal: _Palette, blink):
    head = _head_sd(g, lay) * g.r
    lam = _shading(g, lay, pal.light)[..., 0]
    hatch = ((torch.frac((g.u + g.v) * 9.0) - 0.8).clamp_min(0.0) * 5.0) * (lam < 0.85) * sdf.cov(head)
    hatch = hatch * ((g.fu.abs() > 0.5) | (g.fv < 0.1))  # keep hatching away from the mouth
    img = sdf.over(img, 0.5 * hatch, (0.6, 0.6, 0.62))
    for side in (-1.0, 1.0):
        img = sdf.over(img, sdf.outline(sdf.sd_ellipse(g.u - side * lay.head_a * 0.97, g.v, 0.1, 0.2) * g.r, 0.9), pal.line)
        neck = sdf.sd_segment(g.u, g.v, (side * 0.3, 0.9), (side * 0.32, 2.5)) * g.r
        img = sdf.over(img, sdf.cov(neck - 0.45), pal.line)
    img = sdf.over(img, sdf.cov(head), pal.skin)  # paper inside the head hides the ears' inner halves
    img = sdf.over(img, sdf.outline(head, 1.0), pal.line)
    img = sdf.over(img, sdf.outline(_hair_sd(g, lay, False) * g.r, 0.9), pal.line)
    img = _draw_eyes(img, g, lay, pal, blink, 0.9, 0.04)
    nose = sdf.sd_segment(g.fu, g.fv, (0.0, 0.0), (0.04, 0.2)) * g.r
    return sdf.over(img, sdf.cov(nose - 0.4), pal.line)


_DRAW = {"realistic": _draw_realistic, "cartoon": _draw_cartoon, "anime": _draw_anime,
         "animal": _draw_animal, "sketch": _draw_sketch}


def _draw_mouth(img, g: _Geo, lay: _Layout, pal: _Palette, opening: torch.Tensor, keep: torch.Tensor, sketch: bool):
    """Lips, the closed-mouth line, the dark interior (height = opening * mouth_h) and teeth, clipped to ``keep``."""
    h = opening.view(-1, 1, 1) * lay.mouth_h  # [F, 1, 1] face units
    mu, mv = g.fu, g.fv - lay.mouth_y
    c = mv - 0.3 * h  # the interior grows mostly downward (the jaw drops)
    inner = sdf.sd_ellipse(mu, c, lay.mouth_w, (0.5 * h).clamp_min(1e-4)) * g.r
    outer = sdf.sd_ellipse(mu, c, lay.mouth_w + lay.lip_t, 0.5 * h + lay.lip_t) * g.r
    line = sdf.sd_segment(mu, mv, (-lay.mouth_w, 0.0), (lay.mouth_w, 0.0)) * g.r - 0.5
    img = sdf.over(img, (sdf.outline(outer, 1.0) if sketch else sdf.cov(outer)) * keep, pal.lips)
    img = sdf.over(img, sdf.cov(line) * keep, pal.interior)
    thin = (h * g.r).clamp(max=1.0)  # shapes thinner than a pixel cover proportionally less (0 when closed)
    img = sdf.over(img, sdf.cov(inner) * thin * keep, pal.interior)
    if pal.teeth is not None:  # upper teeth appear once the mouth is a third open; they never hide the line
        tooth = (0.25 * h - 0.02).clamp(0.0, 0.045)
        teeth = torch.maximum(inner, (mv + 0.2 * h - tooth) * g.r)
        img = sdf.over(img, sdf.cov(teeth) * (tooth * g.r).clamp(max=1.0) * keep, pal.teeth)
    return img


@dataclass(frozen=True)
class _Occluder:
    """A hand: palm [F, 1, 1] centre in pixels plus fixed sizes; fingers point up."""

    x: torch.Tensor
    y: torch.Tensor
    r: torch.Tensor  # head scale, pixels per face unit [F, 1, 1]
    colour: tuple[float, float, float]


def _occluder(spec: ClipSpec, pose: _Pose, box: torch.Tensor, centre: torch.Tensor) -> _Occluder:
    rng, t = seeded_rng(spec.seed, _STREAM_OCC), _frame_times(spec)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    drift_x = _sines(rng, t, 2, 0.15, 0.05, 0.4).float().view(-1, 1, 1)
    drift_y = _sines(rng, t, 2, 0.15, 0.05, 0.4).float().view(-1, 1, 1)
    colour = _lift(rng.uniform(0.2, 1.0, size=3) * np.array([1.0, 0.8, 0.7]), 0.25)
    half_h = 0.3 * pose.r
    if spec.occluder_over_mouth:
        width = (box[:, 2] - box[:, 0]).view(-1, 1, 1)
        x = centre[:, 0].view(-1, 1, 1) + side * (0.5 * width + 0.25 * pose.r) + drift_x * pose.r * 0.3
        y = centre[:, 1].view(-1, 1, 1) + half_h * 0.5
    else:  # keep the palm's bottom edge (plus its soft edge) above the mouth box
        x = pose.cx + side * 0.6 * pose.r + drift_x * pose.r
        y = torch.minimum(pose.cy - 0.1 * pose.r + drift_y * pose.r, box[:, 1].view(-1, 1, 1) - half_h - 1.0)
    return _Occluder(x, y, pose.r, colour)


def _draw_occluder(img, occ: _Occluder, size: int):
    p = torch.arange(size, dtype=torch.float32) + 0.5
    dx, dy = p.view(1, 1, -1) - occ.x, p.view(1, -1, 1) - occ.y  # [F, 1, W], [F, H, 1]
    sd = sdf.sd_box(dx, dy, 0.42 * occ.r, 0.3 * occ.r, 0.12 * occ.r)  # palm [F, H, W] pixels
    for k, length in enumerate((0.45, 0.55, 0.5, 0.38)):
        fx = (k - 1.5) * 0.21 * occ.r
        finger = sdf.sd_segment(dx, dy, (fx, -0.2 * occ.r), (fx, -(0.3 + length) * occ.r)) - 0.1 * occ.r
        sd = torch.minimum(sd, finger)
    shade = (1.0 - 0.25 * (dy / occ.r).clamp(-1.0, 1.0)).clamp(0.6, 1.2).unsqueeze(-1)
    return sdf.over(img, sdf.cov(sd), torch.tensor(occ.colour) * shade)


# ---- Scene assembly and public API ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    """Everything of a clip that does not depend on the mouth opening."""

    spec: ClipSpec
    layout: _Layout
    palette: _Palette
    pose: _Pose
    blink: torch.Tensor  # [F, 1, 1]
    background: torch.Tensor  # [H, W, 3]
    mouth_centre: torch.Tensor  # [F, 2] pixels
    mouth_box: torch.Tensor  # [F, 4] pixels
    occluder: _Occluder | None


def _scene(spec: ClipSpec) -> _Scene:
    look = seeded_rng(spec.seed, _STREAM_LOOK)
    layout = _layout(spec.style, look)
    palette = _palette(spec.style, look)
    pose = _pose(spec, layout)
    centre, box = _mouth_geometry(pose, layout)
    occ = _occluder(spec, pose, box, centre) if spec.occluder else None
    return _Scene(spec, layout, palette, pose, _blinks(spec), _background(spec, palette), centre, box, occ)


def _slice(obj, sl: slice):
    """Slice every per-frame tensor field of a frozen dataclass along the frame axis."""
    if obj is None:
        return None
    return replace(obj, **{k: v[sl] for k, v in vars(obj).items() if isinstance(v, torch.Tensor) and v.dim() >= 1})


def _render_chunk(scene: _Scene, sl: slice, opening: torch.Tensor) -> torch.Tensor:
    spec, pose = scene.spec, _slice(scene.pose, sl)
    g = _geo(pose, spec.size)
    img = scene.background.expand(g.u.shape[0], -1, -1, -1)  # [F, H, W, 3]
    img = _DRAW[spec.style](img, g, scene.layout, scene.palette, scene.blink[sl])
    keep = _box_mask(scene.mouth_box[sl], spec.size)  # the mouth layer never leaves its box
    img = _draw_mouth(img, g, scene.layout, scene.palette, opening, keep, spec.style == "sketch")
    if scene.occluder is not None:
        img = _draw_occluder(img, _slice(scene.occluder, sl), spec.size)
    return img.clamp(0.0, 1.0)


def _as_opening(mouth_open, n_frames: int) -> torch.Tensor:
    opening = torch.as_tensor(mouth_open, dtype=torch.float32).reshape(-1)
    if opening.numel() != n_frames:
        raise ValueError(f"mouth_open has {opening.numel()} values, the spec has {n_frames} frames")
    return opening.clamp(0.0, 1.0)


def _render_scene(scene: _Scene, opening: torch.Tensor) -> torch.Tensor:
    n = scene.spec.n_frames
    chunks = [_render_chunk(scene, slice(s, s + _CHUNK), opening[s : s + _CHUNK]) for s in range(0, n, _CHUNK)]
    return torch.cat(chunks).contiguous()  # [F, H, W, 3]


def render(spec: ClipSpec, mouth_open) -> torch.Tensor:
    """Frames [F, H, W, 3] float32 0..1: a pure function of (spec, per-frame opening in 0..1).

    Two openings give frames that are bitwise equal outside ``mouth_box`` (the training pseudo-pairs).
    """
    return _render_scene(_scene(spec), _as_opening(mouth_open, spec.n_frames))


def default_mouth_track(spec: ClipSpec) -> torch.Tensor:
    """The opening ``make_clip`` uses when none is given: the ground truth of ``make_speech(spec.seed, ...)``."""
    wave, _ = make_speech(spec.seed, spec.n_frames / spec.fps)
    return mouth_opening(wave, SAMPLE_RATE, spec.fps, spec.n_frames)


def _face_box(pose: _Pose, lay: _Layout) -> torch.Tensor:
    """Bounding box [F, 4] in pixels of the (rotated) head ellipse."""
    ex = pose.r * torch.sqrt((lay.head_a * pose.cos) ** 2 + (lay.head_b * pose.sin) ** 2)
    ey = pose.r * torch.sqrt((lay.head_a * pose.sin) ** 2 + (lay.head_b * pose.cos) ** 2)
    return torch.cat([pose.cx - ex, pose.cy - ey, pose.cx + ex, pose.cy + ey], -1).flatten(1)  # [F, 4]


def make_clip(spec: ClipSpec, mouth_open=None) -> SyntheticClip:
    """Render a clip; ``mouth_open`` [F] in 0..1, or None for ``default_mouth_track(spec)``."""
    opening = _as_opening(default_mouth_track(spec) if mouth_open is None else mouth_open, spec.n_frames)
    scene = _scene(spec)
    frames = _render_scene(scene, opening)
    logger.debug("rendered a %s clip: %d frames of %dx%d at %.3f fps", spec.style, spec.n_frames, spec.size,
                 spec.size, spec.fps)
    size = float(spec.size)
    return SyntheticClip(
        frames=frames,
        mouth_open=opening,
        mouth_centre=scene.mouth_centre / size,
        mouth_box=(scene.mouth_box / size).clamp(0.0, 1.0),
        face_box=(_face_box(scene.pose, scene.layout) / size).clamp(0.0, 1.0),
        style=spec.style,
        fps=spec.fps,
        spec=spec,
    )


def make_talking_clip(
    seed: int,
    style: str = "realistic",
    duration_s: float = 2.0,
    fps: float = 25.0,
    size: int = 64,
    occluder: bool = False,
    **spec_kwargs,
) -> tuple[SyntheticClip, torch.Tensor, int]:
    """Speech from ``seed`` drives the mouth with its ground truth -> (clip, waveform [N], sample_rate).

    The clip has round(duration_s * fps) frames; the audio has round(duration_s * 16000) samples.
    """
    n_frames = max(1, int(round(duration_s * fps)))
    wave, _ = make_speech(seed, duration_s)
    opening = mouth_opening(wave, SAMPLE_RATE, fps, n_frames)
    spec = ClipSpec(seed=seed, style=style, n_frames=n_frames, fps=fps, size=size, occluder=occluder, **spec_kwargs)
    return make_clip(spec, opening), wave, SAMPLE_RATE
