"""Shared pieces of the performance benchmark (:mod:`.perf`): settings, timing helpers, inputs and models."""

from __future__ import annotations

import functools
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..core.codec import PixelCodec
from ..families.omnisync.config import get_preset
from ..sampling.flow import evaluation_sigmas, sigma_schedule
from ..sampling.guidance import temporal_weight
from ..families.omnisync.model import OmniSyncModel
from ..backends.omnisync import OmniSyncBackend
from ..sampling.pipeline import AudioInput, LipSyncOptions, lipsync, plan_for_codec

log = logging.getLogger(__name__)

FPS = 25.0
SAMPLE_RATE = 16000
CHUNK = 8  # frames per chunk of the streamed source
LATENTSYNC_EVALS = 40  # LatentSync default: 20 steps x 2 (CFG) model evaluations per frame
EQUAL_OUTPUT_ATOL = 1e-5
PIXEL_PRESETS = ("tiny", "small")  # presets built for the pixel codec (48 latent channels): run end to end
# dense bf16 peak FLOP/s by device name (H100 SXM reports as "NVIDIA H100 80GB HBM3")
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12}
TARGETS = {"overhead": 1.10, "length_time": 4.2, "length_memory": 1.15, "evals_per_frame": 13.0,
           "overlap": 0.15, "mfu_base": 0.40}
PREVIOUS_DEFAULT = LipSyncOptions(steps=20, solver="euler", shift=1.0)  # the sampler before issue 15, for comparison


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; ``QUICK`` keeps ``omnisync perf --quick`` to a few minutes on 2 cores."""

    repeats: int  # interleaved repeats of every timed pair
    overhead_frames: int  # 48 frames = 4 windows of 16 at overlap 2
    overhead_size: int
    scaling_frames: int  # 1x; 2 + 14 k frames fill k windows exactly (the 4x run then has one shifted tail window)
    scaling_size: int
    eval_frames: int
    eval_size: int
    overlap_frames: int  # 128 = 8 windows at overlap 0 and 9 at overlap 2, both without a shifted tail window
    overlap_size: int
    forward_repeats: int
    forward_latent: int = 16  # CPU forward shape for the pixel presets: [2, 48, n, n, n] (16 frames of 64x64)


QUICK = Sizes(repeats=3, overhead_frames=48, overhead_size=64, scaling_frames=100, scaling_size=32, eval_frames=44,
              eval_size=32, overlap_frames=128, overlap_size=32, forward_repeats=5)
FULL = Sizes(repeats=3, overhead_frames=96, overhead_size=64, scaling_frames=114, scaling_size=64, eval_frames=100,
             eval_size=64, overlap_frames=128, overlap_size=64, forward_repeats=7)


@dataclass(frozen=True)
class PerfSettings:
    quick: bool = True
    device: str = "cpu"
    presets: tuple = ("tiny", "small")
    compile: bool = False
    size_override: Optional[Sizes] = None  # tests use tiny inputs

    @property
    def sizes(self) -> Sizes:
        if self.size_override is not None:
            return self.size_override
        return QUICK if self.quick else FULL

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


# ------------------------------------------------------------------------------------------------- helpers


def figure(value, target, unit: str, ok: bool, better: str, **details) -> dict:
    """One JSON figure; ``better`` says which way the target goes ("lower" / "higher" / "info")."""
    return {"value": value, "target": target, "unit": unit, "ok": bool(ok), "better": better, "details": details}


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(fns: dict, repeats: int) -> dict:
    """Run each zero-argument timing function once per round (A, B, A, B, ...); returns name -> results."""
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def timed(fn: Callable[[], object], device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


class ForwardTimer:
    """Times every OmniSyncModel forward with pre / post hooks (synchronising CUDA) and counts evaluations.

    ``frame_evals``: one sample through the DiT counts as one evaluation of each video frame of its window
    (a latent of T frames covers 1 + (T - 1) * temporal_factor video frames).
    """

    def __init__(self, model: torch.nn.Module, temporal_factor: int = 1):
        self.device, self.tf = model.device, temporal_factor
        self.seconds, self.calls, self.frame_evals, self._t0 = 0.0, 0, 0, 0.0
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs) -> None:
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._t0
        x = args[0] if args else kwargs["x"]
        self.calls += 1
        self.frame_evals += x.shape[0] * (1 + (x.shape[2] - 1) * self.tf)

    def reset(self) -> None:
        self.seconds, self.calls, self.frame_evals = 0.0, 0, 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> "ForwardTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- inputs, models


def frame_chunks(n: int, size: int, chunk: int = CHUNK, seed: int = 0) -> Iterator[torch.Tensor]:
    """Synthetic frames [<=chunk, size, size, 3] in 0..1, generated chunk by chunk (a moving gradient + noise)."""
    ramp = torch.linspace(0.0, 1.0, size)
    base = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                        torch.full((size, size), 0.5)], dim=-1)  # [size,size,3]
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        shift = (torch.arange(start, start + m, dtype=torch.float32) * 0.01)[:, None, None, None]  # [m,1,1,1]
        yield ((base[None] + shift) % 1.0 * 0.9 + 0.1 * torch.rand(m, size, size, 3, generator=gen)).clamp(0, 1)


def synthetic_frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.cat(list(frame_chunks(n, size, CHUNK, seed)), dim=0)  # [n,size,size,3]


def synthetic_speech(seconds: float, seed: int = 0) -> torch.Tensor:
    """Speech-like mono audio [N] at 16 kHz: a 140 Hz harmonic voice gated into 4 Hz syllables, plus noise."""
    n = max(1, int(round(seconds * SAMPLE_RATE)))
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    voice = sum(torch.sin(2 * math.pi * 140.0 * k * t) / k for k in range(1, 6))
    syllables = torch.sin(2 * math.pi * 4.0 * t).clamp(min=0.0) ** 2
    gen = torch.Generator().manual_seed(seed)
    noise = 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    return (0.2 * voice * syllables + noise).float()


def build_model(preset: str, device="cpu", dtype=torch.float32, seed: int = 0) -> OmniSyncModel:
    """A randomly initialised model in eval mode; the zero-initialised gates and output layer get small random
    values (as after training), so the output depends on every input and on both guidance branches."""
    torch.manual_seed(seed)
    model = OmniSyncModel(get_preset(preset), device=device, dtype=dtype).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and not bool(p.any()):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))
    return model


@functools.lru_cache(maxsize=4)
def lipsync_inputs(n: int, size: int) -> tuple[torch.Tensor, AudioInput]:
    """The synthetic frames and speech for ``n`` frames (made once: call it before timing, runs then reuse it)."""
    return synthetic_frames(n, size), AudioInput(synthetic_speech(n / FPS))


def run_lipsync(model, n: int, size: int, options: LipSyncOptions = LipSyncOptions(), stats=None) -> torch.Tensor:
    frames, audio = lipsync_inputs(n, size)
    return lipsync(frames, FPS, audio, OmniSyncBackend(model), PixelCodec(4), options, stats=stats)


def windows_for(n: int, options: LipSyncOptions):
    return plan_for_codec(n, options, PixelCodec(4).temporal_factor)


def frames_processed(n: int, options: LipSyncOptions) -> int:
    """Window frames the model sees for ``n`` video frames (overlapping frames count once per window)."""
    return sum(w.length for w in windows_for(n, options))


# ------------------------------------------------------------------------------------ evaluation counting


def evaluation_points(options: LipSyncOptions, start: Optional[float] = None,
                      steps: Optional[int] = None) -> list:
    """Sigmas at which the solver evaluates the model over the schedule (Euler: one per step)."""
    s0 = options.tau if start is None else start
    sigmas = sigma_schedule(options.steps if steps is None else steps, start=s0, shift=options.shift)
    return evaluation_sigmas(options.solver, sigmas)


def steps_needing_uncond(options: LipSyncOptions, gmap_max: float = 1.0, start: Optional[float] = None,
                         steps: Optional[int] = None) -> int:
    """Evaluations (for Euler and the multistep solvers: steps) whose DS-CFG weight exceeds 1 somewhere, from the
    schedule alone: w_peak (s / s0)^gamma max(g) > 1."""
    s0 = options.tau if start is None else start
    return sum(temporal_weight(float(s), s0, options.guidance) * gmap_max > 1.0
               for s in evaluation_points(options, s0, steps))


def window_frame_evaluations(options: LipSyncOptions, gmap_max: float = 1.0) -> int:
    """DiT evaluations per frame of a window: every evaluation point, plus the unconditional branch where needed."""
    n = len(evaluation_points(options))
    return n + (n if options.guidance.force_uncond else steps_needing_uncond(options, gmap_max))


def expected_frame_evaluations(n_frames: int, options: LipSyncOptions, gmap_max: float = 1.0) -> int:
    """Independent count of frame-evaluations for a run (pixel codec): window frames x evaluations per frame."""
    return frames_processed(n_frames, options) * window_frame_evaluations(options, gmap_max)
