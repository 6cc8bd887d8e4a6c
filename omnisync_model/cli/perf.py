"""Performance benchmark (``omnisync perf``): the costs of the pipeline and the DiT, measured as ratios.

Figures (one JSON key each, ``{"value", "target", "unit", "ok", "better", "details"}``):
  pipeline_overhead_<preset>  end-to-end ``lipsync`` wall time / time inside OmniSyncModel forwards (hooks)
  length_scaling_time         wall time of 4x the frames / 1x, frames streamed in and consumed chunk by chunk
  length_scaling_memory       peak RSS of 4x / 1x, each run in its own child process
  evaluations_per_frame       DiT frame-evaluations per output frame at default settings (target <= 13; the solver,
                              steps and the skipped unconditional branch all count), checked against always both
  window_overlap_overhead     frames processed / output frames - 1 at the default overlap (and time vs overlap 0)
  dit_throughput_<preset>     forward tokens/s and FLOP/s (CPU fp32; CUDA bf16 with flash SDPA, MFU, frames/s)
  compile                     torch.compile speed-up over eager on one forward shape (``--compile``)
  choice_<name>               measured speed ratios of layout / dtype / mode choices (> 1: the choice pays off)
The JSON also holds ``run`` (settings and environment), which is not a figure.

A machine shared with other work is noisy, so every figure is a ratio taken within one run: the two sides are
interleaved (A, B, A, B, ...) and their medians compared; a slow spell then slows both sides alike.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..core.codec import PixelCodec
from ..families.omnisync.config import get_preset
from ..sampling.flow import evaluation_sigmas, sigma_schedule
from ..sampling.guidance import DSCFG, temporal_weight
from ..families.omnisync.model import OmniSyncModel, count_parameters
from ..backends.omnisync import OmniSyncBackend
from ..sampling.pipeline import AudioInput, LipSyncOptions, RunStats, iter_lipsync, lipsync, plan_for_codec
from ..media.streams import SequentialFrames

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


# ----------------------------------------------------------------------------------------- pipeline overhead


def measure_pipeline_overhead(preset: str, settings: PerfSettings) -> dict:
    """End-to-end ``lipsync`` time / time inside model forwards, same run, median over repeats."""
    sz = settings.sizes
    model = build_model(preset, settings.device, settings.dtype)
    run_lipsync(model, 16, sz.overhead_size)  # warm-up: allocator, thread pool, first-call costs
    lipsync_inputs(sz.overhead_frames, sz.overhead_size)  # inputs made outside the timed runs
    totals, forwards, calls = [], [], 0
    with ForwardTimer(model) as timer:
        for _ in range(sz.repeats):
            timer.reset()
            totals.append(timed(lambda: run_lipsync(model, sz.overhead_frames, sz.overhead_size), settings.device))
            forwards.append(timer.seconds)
            calls = timer.calls
    ratios = [t / f for t, f in zip(totals, forwards)]
    value = median(ratios)
    outside = median([t - f for t, f in zip(totals, forwards)])
    return figure(value, TARGETS["overhead"], "x", value <= TARGETS["overhead"], "lower",
                  total_s=median(totals), forward_s=median(forwards), outside_forward_s=outside,
                  outside_per_forward_ms=1e3 * outside / max(calls, 1), forward_calls=calls,
                  ratios=ratios, frames=sz.overhead_frames, size=sz.overhead_size,
                  windows=len(windows_for(sz.overhead_frames, LipSyncOptions())), settings="LipSyncOptions() defaults")


# ------------------------------------------------------------------------------------------- length scaling


def _proc_status_kb(key: str) -> int:
    """A KiB field of /proc/self/status (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def current_rss_kb() -> int:
    """Resident set size now, in KiB (Linux /proc; 0 where unavailable)."""
    return _proc_status_kb("VmRSS")


def peak_rss_kb() -> int:
    """This process's own peak resident set size in KiB: /proc VmHWM. Not getrusage's ru_maxrss: Linux carries
    that across exec, so a child started by subprocess reports the parent's peak when it was larger."""
    return _proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_length_run(spec: dict) -> dict:
    """One streamed run in this (child) process: frames in chunk by chunk, output consumed chunk by chunk."""
    torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(spec["preset"], device, dtype)
    n, size = int(spec["frames"]), int(spec["size"])
    run_lipsync(model, 16, size)  # warm-up (one window: the same peak as any later window)
    rss_before = current_rss_kb()
    frames = SequentialFrames(frame_chunks(n, size), n)
    audio = AudioInput(synthetic_speech(n / FPS))
    synchronize(device)
    t0 = time.perf_counter()
    out_frames = 0
    for _, chunk in iter_lipsync(frames, FPS, audio, OmniSyncBackend(model), PixelCodec(4), LipSyncOptions()):
        out_frames += chunk.shape[0]
    synchronize(device)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "frames_out": out_frames, "rss_before_kb": rss_before,
              "max_rss_kb": peak_rss_kb()}
    if device == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def run_child(spec: dict, module: str = "omnisync_model.cli.perf") -> dict:
    """Run ``python -m module --child SPEC`` in a fresh process (its own peak RSS); returns its last stdout line."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_length_scaling(settings: PerfSettings) -> tuple[dict, dict]:
    sz = settings.sizes
    n1 = sz.scaling_frames
    base = {"preset": "tiny", "size": sz.scaling_size, "device": settings.device, "threads": torch.get_num_threads()}
    runs = interleaved({"1x": lambda: run_child({**base, "frames": n1}),
                        "4x": lambda: run_child({**base, "frames": 4 * n1})}, sz.repeats)
    for key, n in (("1x", n1), ("4x", 4 * n1)):
        if any(r["frames_out"] != n for r in runs[key]):
            raise RuntimeError(f"length scaling run {key} returned the wrong number of frames")
    t = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["max_rss_kb"] for r in v]) for k, v in runs.items()}
    before = {k: median([r["rss_before_kb"] for r in v]) for k, v in runs.items()}
    opts = LipSyncOptions()
    wins = {"1x": len(windows_for(n1, opts)), "4x": len(windows_for(4 * n1, opts))}
    time_ratio, mem_ratio = t["4x"] / t["1x"], rss["4x"] / rss["1x"]
    common = dict(frames_1x=n1, frames_4x=4 * n1, size=sz.scaling_size, preset="tiny", windows_1x=wins["1x"],
                  windows_4x=wins["4x"], streamed=True)
    time_fig = figure(time_ratio, TARGETS["length_time"], "x", time_ratio <= TARGETS["length_time"], "lower",
                      seconds_1x=t["1x"], seconds_4x=t["4x"], window_ratio=wins["4x"] / wins["1x"],
                      time_per_window_ratio=(t["4x"] / wins["4x"]) / (t["1x"] / wins["1x"]),
                      runs_s={k: [r["seconds"] for r in v] for k, v in runs.items()}, **common)
    mem_fig = figure(mem_ratio, TARGETS["length_memory"], "x", mem_ratio <= TARGETS["length_memory"], "lower",
                     peak_rss_mib_1x=rss["1x"] / 1024, peak_rss_mib_4x=rss["4x"] / 1024,
                     rss_before_run_mib_1x=before["1x"] / 1024, rss_before_run_mib_4x=before["4x"] / 1024,
                     peak_above_rss_before_run_mib_1x=(rss["1x"] - before["1x"]) / 1024,  # a window's working set
                     peak_above_rss_before_run_mib_4x=(rss["4x"] - before["4x"]) / 1024,
                     cuda_peak_mib={k: [r.get("cuda_peak_bytes", 0) / 2**20 for r in v] for k, v in runs.items()},
                     **common)
    return time_fig, mem_fig


# ----------------------------------------------------------------------------------------------- evaluations


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


def evaluation_counts(options: LipSyncOptions) -> dict:
    """Per frame of a window: ours, always both branches, and the full 1 -> 0 schedule at the same step size."""
    both = steps_needing_uncond(options)
    points = len(evaluation_points(options))
    full_steps = math.ceil(options.steps / options.tau - 1e-9)  # same step size, starting from pure noise
    full_points = len(evaluation_points(options, start=1.0, steps=full_steps))
    full_guided = steps_needing_uncond(options, start=1.0, steps=full_steps)
    return {"ours": points + both, "always_both": 2 * points, "evaluation_points": points,
            "full_schedule_steps": full_steps, "full_schedule_always_both": 2 * full_points,
            "full_schedule_with_skip": full_points + full_guided, "guided_steps": both,
            "previous_default": window_frame_evaluations(PREVIOUS_DEFAULT)}


def measure_evaluations(settings: PerfSettings) -> dict:
    """Frame-evaluations per output frame at default settings (target <= 13), vs forcing both branches (same
    output) and vs the previous default sampler (20 Euler steps; counted from its schedule, not run)."""
    sz = settings.sizes
    n = sz.eval_frames
    model = build_model("tiny", settings.device, settings.dtype)
    opts = LipSyncOptions()
    forced = replace(opts, guidance=replace(opts.guidance, force_uncond=True))
    results = {}
    for name, o in (("default", opts), ("always_both", forced)):
        stats = RunStats()
        with ForwardTimer(model) as timer:
            out = run_lipsync(model, n, sz.eval_size, o, stats=stats)
        results[name] = (out, timer.frame_evals, stats, timer.seconds)
    diff = float((results["default"][0] - results["always_both"][0]).abs().max())
    ours, both = results["default"][1] / n, results["always_both"][1] / n
    saving = 1.0 - ours / both
    counts = evaluation_counts(opts)
    target = TARGETS["evals_per_frame"]
    frames_done = frames_processed(n, opts)
    previous = expected_frame_evaluations(n, PREVIOUS_DEFAULT) / n
    ok = ours <= target and diff <= EQUAL_OUTPUT_ATOL
    return figure(ours, target, "evals/frame", ok, "lower",
                  solver=opts.solver, steps=opts.steps, shift=opts.shift, previous_default_per_frame=previous,
                  fraction_of_previous_default=ours / previous,
                  saving_vs_always_both=saving, always_both_per_frame=both, max_abs_diff_vs_always_both=diff,
                  equal_output=diff <= EQUAL_OUTPUT_ATOL,
                  matches_schedule_count=results["default"][1] == expected_frame_evaluations(n, opts)
                  and results["always_both"][1] == expected_frame_evaluations(n, forced),
                  per_window_frame=counts, latentsync_per_frame=LATENTSYNC_EVALS, vs_latentsync=ours / LATENTSYNC_EVALS,
                  saving_from_uncond_skip=1.0 - counts["ours"] / counts["always_both"],
                  saving_from_progressive_init=1.0 - counts["always_both"] / counts["full_schedule_always_both"],
                  saving_combined_vs_full_always_both=1.0 - counts["ours"] / counts["full_schedule_always_both"],
                  window_overlap_factor=frames_done / n, frames=n, size=sz.eval_size,
                  model_calls={k: v[2].model_calls for k, v in results.items()},
                  forward_seconds={k: v[3] for k, v in results.items()})


# ---------------------------------------------------------------------------------------------------- overlap


def mean_overlap_overhead(options: LipSyncOptions, lengths: range) -> float:
    return statistics.mean(frames_processed(n, options) / n - 1.0 for n in lengths)


def measure_overlap(settings: PerfSettings) -> dict:
    sz = settings.sizes
    n = sz.overlap_frames
    opts, flat = LipSyncOptions(), LipSyncOptions(overlap=0)
    model = build_model("tiny", settings.device, settings.dtype)
    run_lipsync(model, 16, sz.overlap_size)
    lipsync_inputs(n, sz.overlap_size)  # inputs made outside the timed runs

    def run(o: LipSyncOptions) -> float:
        return timed(lambda: run_lipsync(model, n, sz.overlap_size, o), settings.device)

    times = interleaved({"overlap": lambda: run(opts), "no_overlap": lambda: run(flat)}, sz.repeats)
    frames_done = frames_processed(n, opts)
    value = frames_done / n - 1.0
    time_overhead = median(times["overlap"]) / median(times["no_overlap"]) - 1.0
    asymptotic = opts.window / (opts.window - opts.overlap) - 1.0
    ok = value <= TARGETS["overlap"] and time_overhead <= TARGETS["overlap"]
    return figure(value, TARGETS["overlap"], "fraction", ok, "lower",
                  time_overhead_vs_overlap_0=time_overhead, seconds=dict(times), frames=n, size=sz.overlap_size,
                  frames_processed=frames_done, window=opts.window, overlap=opts.overlap,
                  long_video_limit=asymptotic,
                  mean_over_lengths_64_to_1024=mean_overlap_overhead(opts, range(64, 1025)))


# ------------------------------------------------------------------------------------------- DiT throughput


def forward_shape(preset: str, device: str, n: int = 16) -> tuple:
    """Latent [B,C,T,h,w] for one forward: B = 2 (both guidance branches, batched), a 16-frame window.

    CPU: 64x64 frames through the pixel codec (n = 16: 16x16 latent); base (~1B params) one small 4x16x16 latent.
    CUDA: 512x512 frames (pixel codec: 128x128 latent; base: Wan 2.1 VAE, 8x spatial / 4x temporal, 13 frames).
    """
    cfg = get_preset(preset)
    if device == "cuda":
        return (2, cfg.in_channels, 16, 128, 128) if preset in PIXEL_PRESETS else (2, cfg.in_channels, 4, 64, 64)
    return (2, cfg.in_channels, n, n, n) if preset in PIXEL_PRESETS else (1, cfg.in_channels, 4, 16, 16)


def forward_inputs(model: OmniSyncModel, shape: tuple, seed: int = 0) -> tuple:
    cfg, dev = model.config, model.device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dev)
    source = torch.randn(shape, generator=gen).to(dev)
    audio = torch.randn(shape[0], shape[2], cfg.audio_tokens, cfg.audio_dim, generator=gen).to(dev)
    return x, source, torch.full((shape[0],), 0.5, device=dev), audio


def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(model: torch.nn.Module, inputs: tuple) -> int:
    """FLOPs of one forward (matmuls and SDPA; the CPU SDPA kernel is not in torch's table, so it is added)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def sdpa_context(device: str):
    """Flash attention only on CUDA; the default backend choice on CPU."""
    if device != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def time_forward(model, inputs, device: str, repeats: int, attention=None) -> list:
    def once():
        with torch.no_grad(), (attention() if attention else nullcontext()):
            model(*inputs)

    once()  # warm-up
    return [timed(once, device) for _ in range(repeats)]


def peak_flops(device_name: str) -> Optional[float]:
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in device_name and "PCIe" not in device_name and "NVL" not in device_name:
            return peak
    return None


def measure_throughput(preset: str, settings: PerfSettings) -> dict:
    device = settings.device
    model = build_model(preset, device, settings.dtype)
    shape = forward_shape(preset, device, settings.sizes.forward_latent)
    inputs = forward_inputs(model, shape)
    flops = count_flops(model, inputs)
    repeats = settings.sizes.forward_repeats if preset in PIXEL_PRESETS or device == "cuda" else 3  # base: ~5 s each
    note = "flash SDPA" if device == "cuda" else "default SDPA backend"
    try:
        times = time_forward(model, inputs, device, repeats, lambda: sdpa_context(device))
    except RuntimeError as exc:  # e.g. a head width flash attention does not take
        note = f"flash SDPA unavailable ({str(exc).splitlines()[0][:120]}); default backend"
        times = time_forward(model, inputs, device, repeats)
    sec = median(times)
    p = model.config.patch_size
    tokens = shape[0] * shape[2] * (shape[3] // p) * (shape[4] // p)
    details = dict(shape=list(shape), tokens=tokens, seconds=sec, flops_per_forward=flops, flop_per_s=flops / sec,
                   params=count_parameters(model.dit), dtype=str(settings.dtype).replace("torch.", ""),
                   attention=note, threads=torch.get_num_threads())
    if device != "cuda":
        return figure(tokens / sec, None, "tokens/s", True, "info", **details)
    return _cuda_throughput_figure(preset, model, tokens / sec, details, settings)


def _cuda_throughput_figure(preset, model, tokens_per_s, details, settings) -> dict:
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    mfu = details["flop_per_s"] / peak if peak else None
    details.update(device_name=name, peak_flop_per_s=peak, mfu=mfu, tokens_per_s=tokens_per_s)
    if preset in PIXEL_PRESETS:
        n = settings.sizes.eval_frames
        run_lipsync(model, 16, 512)
        lipsync_inputs(n, 512)  # inputs made outside the timed run
        details["frames_per_s_512"] = n / timed(lambda: run_lipsync(model, n, 512), "cuda")
    else:
        details["dit_frames_per_s_512_wan_latent"] = _base_frames_per_s(model)
    target = TARGETS["mfu_base"] if preset == "base" else None
    ok = mfu is not None and mfu >= target if target is not None else True
    return figure(mfu, target, "MFU", ok, "higher" if target else "info", **details)


def _base_frames_per_s(model) -> float:
    """DiT-only frames/s at 512x512 with a Wan VAE latent (window 13 frames = 4 latents, overlap 2)."""
    shape1 = (1,) + forward_shape("base", "cuda")[1:]
    t2 = median(time_forward(model, forward_inputs(model, (2,) + shape1[1:]), "cuda", 3, lambda: sdpa_context("cuda")))
    t1 = median(time_forward(model, forward_inputs(model, shape1), "cuda", 3, lambda: sdpa_context("cuda")))
    opts = LipSyncOptions()
    guided = steps_needing_uncond(opts)
    per_window = guided * t2 + (len(evaluation_points(opts)) - guided) * t1
    return (13 - opts.overlap) / per_window


# ------------------------------------------------------------------------------------ compile and choices


def _choice_preset(settings: PerfSettings) -> str:
    return "small" if "small" in settings.presets else settings.presets[0]


def measure_compile(settings: PerfSettings) -> dict:
    preset = _choice_preset(settings)
    if not settings.compile:
        return figure(None, None, "x", True, "info", skipped="pass --compile to measure torch.compile")
    device = settings.device
    model = build_model(preset, device, settings.dtype)
    shape = forward_shape(preset, device, settings.sizes.forward_latent)
    inputs = forward_inputs(model, shape)
    compiled = torch.compile(model.dit)
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(*inputs)
        synchronize(device)
        compile_s = time.perf_counter() - t0
        diff = float((compiled(*inputs).float() - model.dit(*inputs).float()).abs().max())

    def forward(m):
        with torch.no_grad():
            m(*inputs)

    times = interleaved({"eager": lambda: timed(lambda: forward(model.dit), device),
                         "compiled": lambda: timed(lambda: forward(compiled), device)}, settings.sizes.forward_repeats)
    speedup = median(times["eager"]) / median(times["compiled"])
    return figure(speedup, None, "x", True, "info", preset=preset, shape=list(shape), compile_s=compile_s,
                  eager_s=median(times["eager"]), compiled_s=median(times["compiled"]), max_abs_diff=diff)


def choice_variants(model: OmniSyncModel, inputs: tuple, device: str) -> dict:
    """name -> (forward function, what it is); the first is the baseline."""
    x, source, sigma, audio = inputs
    lowp = copy.deepcopy(model).to(torch.bfloat16)
    strided = tuple(t.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3) for t in (x, source))  # codec-like

    def call(m, *args, mode=torch.no_grad, autocast=False):
        with mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            return m(*args)

    return {
        "baseline": (lambda: call(model, x, source, sigma, audio), f"{model.dtype} weights, contiguous, no_grad"),
        "bf16_autocast": (lambda: call(model, x, source, sigma, audio, autocast=True), "bf16 autocast"),
        "bf16_weights": (lambda: call(lowp, x, source, sigma, audio), "bf16 weights"),
        "inference_mode": (lambda: call(model, x, source, sigma, audio, mode=torch.inference_mode), "inference_mode"),
        "channels_last_input": (lambda: call(model, *strided, sigma, audio), "channel-last strided latents (codec)"),
    }


def measure_choices(settings: PerfSettings) -> dict:
    """Speed of each choice relative to the baseline forward (> 1: faster), and its output difference."""
    preset, device = _choice_preset(settings), settings.device
    model = build_model(preset, device, settings.dtype)
    shape = forward_shape(preset, device, settings.sizes.forward_latent)
    variants = choice_variants(model, forward_inputs(model, shape), device)
    with warnings.catch_warnings():  # autocast feeds bf16 into fp32-weight RMSNorm: torch warns it is unfused
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        ref = variants["baseline"][0]().float()
        diffs = {k: float((fn().float() - ref).abs().max()) for k, (fn, _) in variants.items()}  # also warms up
        times = interleaved({k: (lambda fn=fn: timed(fn, device)) for k, (fn, _) in variants.items()},
                            settings.sizes.forward_repeats)
    base = median(times["baseline"])
    out = {}
    for name, (_, what) in variants.items():
        if name == "baseline":
            continue
        speed = base / median(times[name])
        out[f"choice_{name}"] = figure(speed, None, "x", True, "info", what=what, preset=preset, shape=list(shape),
                                       seconds=median(times[name]), baseline_seconds=base,
                                       max_abs_diff=diffs[name], output_scale=float(ref.abs().max()))
    return out


# ---------------------------------------------------------------------------------------------------- driver


def run_perf(settings: PerfSettings) -> dict:
    """Every figure, in one run; returns the JSON-ready dict."""
    t0 = time.perf_counter()
    result = {}
    for preset in PIXEL_PRESETS:
        if preset in settings.presets:
            log.info("perf: pipeline overhead (%s)", preset)
            result[f"pipeline_overhead_{preset}"] = measure_pipeline_overhead(preset, settings)
    log.info("perf: length scaling")
    result["length_scaling_time"], result["length_scaling_memory"] = measure_length_scaling(settings)
    log.info("perf: evaluations per frame")
    result["evaluations_per_frame"] = measure_evaluations(settings)
    log.info("perf: window overlap")
    result["window_overlap_overhead"] = measure_overlap(settings)
    for preset in settings.presets:
        log.info("perf: DiT throughput (%s)", preset)
        result[f"dit_throughput_{preset}"] = measure_throughput(preset, settings)
    log.info("perf: compile and layout / dtype choices")
    result["compile"] = measure_compile(settings)
    result.update(measure_choices(settings))
    result["run"] = run_info(settings, time.perf_counter() - t0)
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(settings: PerfSettings, seconds: float) -> dict:
    return {"quick": settings.quick, "device": settings.device, "presets": list(settings.presets),
            "compile": settings.compile, "seconds": seconds, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "cuda_device": torch.cuda.get_device_name() if settings.device == "cuda" else None,
            "options": {"tau": LipSyncOptions().tau, "steps": LipSyncOptions().steps,
                        "solver": LipSyncOptions().solver, "shift": LipSyncOptions().shift,
                        "window": LipSyncOptions().window, "overlap": LipSyncOptions().overlap,
                        "guidance": vars(DSCFG())}}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(result: dict) -> str:
    lines = [f"{'figure':32s} {'value':>12s} {'target':>10s} {'unit':>12s}  ok"]
    for key, fig in result.items():
        if key == "run":
            continue
        rule = {"lower": "<=", "higher": ">="}.get(fig["better"], "")
        target = f"{rule}{_fmt(fig['target'])}" if fig["target"] is not None else "-"
        lines.append(f"{key:32s} {_fmt(fig['value']):>12s} {target:>10s} {fig['unit']:>12s}  "
                     f"{'yes' if fig['ok'] else 'NO'}")
    return "\n".join(lines)


def parse_presets(text: str) -> tuple:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        get_preset(name)  # KeyError naming the known presets
    if not names:
        raise ValueError("--presets needs at least one preset")
    return names


def _cmd_perf(args: argparse.Namespace) -> int:
    from .main import CliError, emit, resolve_device, write_json

    resolve_device(args.device)  # CliError when CUDA is asked for but absent
    try:
        presets = parse_presets(args.presets or ("tiny,small" if args.quick else "tiny,small,base"))
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc.args[0])) from None
    settings = PerfSettings(quick=args.quick, device=args.device, presets=presets, compile=args.compile)
    if not args.verbose:  # one "lip sync: ..." line per run would bury the progress lines
        logging.getLogger(lipsync.__module__).setLevel(logging.WARNING)
    result = run_perf(settings)
    emit(format_table(result))
    emit(f"({result['run']['seconds']:.0f}s, {result['run']['threads']} threads, device {args.device})")
    if args.json:
        write_json(args.json, result)
    return 0


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnisync_model.cli.perf")
    parser.add_argument("--child", required=True, help="JSON spec of one length-scaling run")
    args = parser.parse_args(argv)
    from .main import emit

    emit(json.dumps(child_length_run(json.loads(args.child))))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
