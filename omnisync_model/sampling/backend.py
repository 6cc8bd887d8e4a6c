"""The backend interface: everything the pipeline needs from a model family, and nothing more.

The pipeline (:mod:`.pipeline`) runs progressive init, the sigma schedule, guidance, overlapping windows with
crossfade, noise per absolute frame, streaming, progress and interrupts. It never names a model family: it talks to a
:class:`Backend`. Each family (``omnisync_model/families/<name>/``) gets an adapter in
``omnisync_model/backends/<name>`` that subclasses :class:`Backend`; ``omnisync_model/backends/registry.py`` detects
a checkpoint's family and loads it.

Conventions every backend follows
    sigma = 1 is pure noise, 0 is data: ``x_sigma = (1 - sigma) x0 + sigma eps``; :meth:`Backend.denoise` returns
    the flow-matching velocity ``v = eps - x0`` for each requested guidance branch, and the pipeline integrates
    ``x += (sigma_next - sigma) v`` (Euler). A family whose native sampler is something else (DDIM with epsilon
    prediction, say) maps itself into this convention exactly inside its backend: its :meth:`Backend.sigmas` gives
    the mapped schedule, :meth:`Backend.denoise` converts ``x`` and ``sigma`` to its own coordinates and returns the
    velocity, :meth:`Backend.initial_latent` reproduces its native initial sample.

What the pipeline hands a backend, per window
    1. ``audio_condition(audio, fps, options)`` once per run: an :class:`AudioCondition` whose ``window(start, n_frames,
       temporal_factor)`` returns that window's audio conditioning, indexed by absolute time (any fps).
    2. ``condition(window)`` with a :class:`WindowInputs` (source latent, padded source frames, the codec, the
       window's audio, absolute frame indices, the previous window's output frames for motion continuation):
       returns an opaque object that ``denoise`` understands.
    3. ``window_noise`` / ``initial_latent`` / ``sigmas`` / ``guidance``: how sampling starts and is steered.
    4. ``denoise(x, sigma, cond, branches)``: velocities [len(branches) * B, C, T, h, w], branch-major.

Guidance (:class:`~.guidance.Guidance`)
    An ordered chain of branches ``b_0 .. b_n`` and per-term weights ``W_i``: ``v = b_0 + sum_i W_i (b_i -
    b_{i-1})``. OmniSync's DS-CFG is the chain (uncond, cond) with ``W = max(1, w(t) g(x, y))``; LatentSync's CFG
    1.5 is the same chain with ``W = 1.5``; X-Dub's three branches are (no ref / no audio, ref / no audio, ref +
    audio) with ``W_1 = r(t)``, ``W_2 = a(t)``. Branches whose coefficient is zero everywhere are not evaluated.

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size   B batch (1)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..core.codec import Codec
from .flow import progressive_init, seeded_noise, sigma_schedule
from .guidance import Guidance, ds_cfg_guidance
from .options import AudioInput, LipSyncOptions

__all__ = ["Backend", "AudioCondition", "WindowInputs", "WindowRules", "CropRules", "latent_first_frames",
           "per_frame_noise"]


@dataclass(frozen=True)
class WindowRules:
    """How a backend's windows may be cut.

    default_window / default_overlap: what the nodes and the CLI offer first. max_window: the longest window the
    model can take (LatentSync's motion modules have a 24-frame table), None for no limit. motion_frames: > 0 when
    the backend can continue from the previous window's last output frames (``options.stitch = "continue"``).
    """

    default_window: int = 16
    default_overlap: int = 2
    max_window: Optional[int] = None
    motion_frames: int = 0

    def check(self, window: int) -> None:
        if self.max_window is not None and window > self.max_window:
            raise ValueError(f"window {window} is longer than this model can take ({self.max_window} frames)")


@dataclass(frozen=True)
class CropRules:
    """How faces are cropped for this backend: resolution (height, width) it was trained at (None: any size) and the
    alignment ("box": a scaled, smoothed face box; "similarity": a landmark similarity transform to the family's
    face template)."""

    resolution: Optional[tuple[int, int]] = None
    alignment: str = "box"


@dataclass(frozen=True)
class WindowInputs:
    """What the pipeline knows about one window when it asks the backend for its condition.

    source: the source latent [1,C,T,h,w] (the codec's encoding of ``frames``); frames: the padded source frames
    [F',H',W',3] in 0..1 (F' has the codec's 1 + k tf form); codec: the (prepared) codec, for backends that encode
    more than the source (masked frames, references); audio: ``AudioCondition.window`` for this window; start:
    absolute index of the window's first frame; first_frames: absolute first video frame of each latent frame;
    motion: the previous window's last ``motion_frames`` output frames [m,H',W',3], or None.
    """

    source: torch.Tensor
    frames: torch.Tensor
    codec: Codec
    audio: Any
    start: int
    first_frames: Sequence[int]
    motion: Optional[torch.Tensor] = None


class AudioCondition(ABC):
    """Per-run audio state (a waveform or encoder features made ready once) that hands out window conditioning."""

    @abstractmethod
    def window(self, start: int, n_frames: int, temporal_factor: int) -> Any:
        """Conditioning for video frames [start, start + n_frames) (n_frames already padded for the codec)."""


def latent_first_frames(start: int, n_frames: int, temporal_factor: int) -> list[int]:
    """Absolute index of the first video frame that each latent frame of a window covers (causal video VAE)."""
    t = 1 + (n_frames - 1) // temporal_factor
    return [start] + [start + 1 + (j - 1) * temporal_factor for j in range(1, t)]


def per_frame_noise(shape: Sequence[int], seed: int, first_frames: Sequence[int], device, dtype) -> torch.Tensor:
    """Noise [1,C,T,h,w] whose latent frame j depends only on (seed, absolute frame first_frames[j]).

    Overlapping windows therefore start from the same noise on the frames they share, which keeps seams quiet.
    """
    _, c, _, h, w = shape
    frames = [seeded_noise((c, h, w), seed * 1_000_003 + int(f), device=device, dtype=dtype) for f in first_frames]
    return torch.stack(frames, dim=1)[None]  # T x [C,h,w] -> [1,C,T,h,w]


class Backend(ABC):
    """A model family as the pipeline sees it. Subclasses set the attributes and implement the abstract methods;
    the defaults are OmniSync's choices (per-frame noise, progressive init, shifted linear schedule, DS-CFG)."""

    #: short family name ("omnisync", "xdub", "latentsync", "musetalk")
    name: str = "backend"
    #: the torch module ComfyUI's memory manager holds (weights to load / offload)
    module: nn.Module
    window_rules: WindowRules = WindowRules()
    crop_rules: CropRules = CropRules()
    #: spatial patch of the denoiser in latent pixels: frames are padded to codec factor x patch
    patch_size: int = 1
    #: guidance branches in chain order (see the module docstring); the last one is the fully conditioned branch
    branches: tuple[str, ...] = ("uncond", "cond")

    # ------------------------------------------------------------------ device

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    # ------------------------------------------------------------------ codec

    def default_codec(self) -> Optional[Codec]:
        """The codec to use when the caller gives none (None: the caller must supply a VAE)."""
        return None

    def prepare_codec(self, codec: Optional[Codec]) -> Codec:
        """Check that ``codec`` fits this model (and wrap it with the family's latent normalisation)."""
        codec = codec if codec is not None else self.default_codec()
        if codec is None:
            raise ValueError(f"the {self.name} backend needs a VAE: connect one (or pass --vae)")
        return codec

    def pixel_multiple(self, codec: Codec) -> int:
        """Frame height and width must be multiples of this (the pipeline pads, then crops back)."""
        return codec.spatial_factor * self.patch_size

    def check_latent(self, latent: torch.Tensor) -> None:
        """Refuse a latent [1,C,T,h,w] this model cannot take (wrong channel count), naming what it expects."""

    def default_options(self) -> LipSyncOptions:
        """The family's reference sampling settings (the nodes' and the CLI's defaults)."""
        return LipSyncOptions(window=self.window_rules.default_window, overlap=self.window_rules.default_overlap)

    # ------------------------------------------------------------------ conditioning

    @abstractmethod
    def audio_condition(self, audio: AudioInput, fps: float, options: LipSyncOptions) -> AudioCondition:
        """Make the run's audio ready (resample, encode or adapt features) once (``options.audio_margin_s``: the
        context in seconds each window's audio slice takes on either side)."""

    @abstractmethod
    def condition(self, window: WindowInputs) -> Any:
        """The per-window condition ``denoise`` takes (source latents, audio tokens, masks...)."""

    # ------------------------------------------------------------------ sampling

    def window_noise(self, shape: Sequence[int], seed: int, first_frames: Sequence[int], device,
                     dtype) -> torch.Tensor:
        return per_frame_noise(shape, seed, first_frames, device, dtype)

    def sigmas(self, steps: int, start: float, shift: float) -> torch.Tensor:
        """Decreasing sigmas from ``start`` to 0 (steps + 1 values)."""
        return sigma_schedule(steps, start=start, shift=shift)

    def initial_latent(self, source: torch.Tensor, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
        """The sample at the first sigma: progressive init ``(1 - sigma0) source + sigma0 noise``."""
        return progressive_init(source, noise, sigma0)

    def guidance(self, gmap: torch.Tensor, sigma_start: float, options: LipSyncOptions) -> Guidance:
        """Guidance for one window; gmap [T,h,w] is the DS-CFG spatial map of the mouth (1 at the mouth)."""
        return ds_cfg_guidance(gmap, sigma_start, options.guidance, self.branches)

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: float, cond: Any, branches: Sequence[str]) -> torch.Tensor:
        """Velocities for each branch, stacked branch-major: x [B,C,T,h,w] -> [len(branches) * B, C, T, h, w]."""

    # ------------------------------------------------------------------ memory

    def window_tokens(self, n_frames: int, height: int, width: int, codec: Codec) -> int:
        """Tokens (latent positions / patch) a window of that size costs, for memory estimates."""
        f = self.pixel_multiple(codec)
        t = 1 + (max(1, n_frames) - 1) // codec.temporal_factor
        return t * math.ceil(height / f) * math.ceil(width / f)

    def inference_memory(self, tokens: int) -> int:
        """Bytes of activations one guided forward over ``tokens`` tokens needs (a conservative estimate)."""
        width = max((p.shape[-1] for p in self.module.parameters() if p.dim() == 2), default=64)
        return int(tokens * width * len(self.branches) * 4 * 24)
