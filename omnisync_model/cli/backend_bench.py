"""``omnisync backend-bench``: peak memory and seconds per clip of a real-weight backend with random weights.

The full-size network (X-Dub: Wan2.2-TI2V-5B + audio, LatentSync 1.5 / 1.6 UNet3D) is built with random weights
and run through the pipeline on one clip (X-Dub: 77 frames at 512x512, LatentSync: 16 frames at 256 or 512), with
the backend's own sampler settings. The VAE and the speech encoders are left out (a stand-in codec of the VAE's
shape contract and zero speech features): the figures are the denoiser's. ``--reduce N`` divides the width and
depth by N for machines that cannot hold the full model (a CPU); the report says so.

Figures: peak memory (CUDA: ``max_memory_allocated``; CPU: the process's VmHWM), seconds for the measured steps and
the extrapolation to the reference's step count, frames per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

BACKENDS = ("xdub", "latentsync-1.5", "latentsync-1.6")


class ShapeCodec:
    """A stand-in for a VAE: average-pools frames to the latent grid, repeats channels; decode upsamples back."""

    def __init__(self, channels: int, spatial: int, temporal: int):
        self.latent_channels, self.spatial_factor, self.temporal_factor = channels, spatial, temporal

    def encode(self, frames):
        import torch.nn.functional as F

        x = frames.permute(3, 0, 1, 2)[None]  # [F,H,W,3] -> [1,3,F,H,W]
        t = 1 + (frames.shape[0] - 1) // self.temporal_factor
        x = F.adaptive_avg_pool3d(x, (t, frames.shape[1] // self.spatial_factor, frames.shape[2] // self.spatial_factor))
        reps = -(-self.latent_channels // 3)
        return (x.repeat(1, reps, 1, 1, 1)[:, : self.latent_channels] * 2 - 1)  # [1,C,T,h,w]

    def decode(self, latent):
        import torch.nn.functional as F

        t = 1 + (latent.shape[2] - 1) * self.temporal_factor
        x = F.interpolate(latent[:, :3].float(), size=(t, latent.shape[3] * self.spatial_factor,
                                                        latent.shape[4] * self.spatial_factor))
        return ((x[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)  # [1,3,T',H,W] -> [T',H,W,3]


def _reduced(cfg, n: int, fields: dict):
    return dataclasses.replace(cfg, **{k: max(1, getattr(cfg, k) // n) for k in fields}) if n > 1 else cfg


def _xdub(device, dtype, reduce: int):
    import torch

    from ..backends.xdub.backend import XDubBackend
    from ..families.xdub import XDubModel, get_preset

    cfg = _reduced(get_preset("full"), reduce, {"dim": 0, "heads": 0, "ffn_dim": 0, "depth": 0, "audio_hidden": 0,
                                                "audio_heads": 0})
    model = XDubModel(cfg, device=device, dtype=dtype).eval()
    backend = XDubBackend(model, torch.zeros(1, 1, cfg.text_dim))
    codec = ShapeCodec(cfg.in_channels, 16, 4)
    return backend, codec, 77, 512, (lambda s: {"features": torch.zeros(s, cfg.audio_in_dim)})


def _latentsync(version: str, device, dtype, reduce: int):
    import torch

    from ..backends.latentsync.backend import LatentSyncBackend
    from ..families.latentsync import LatentSyncUNet, get_preset

    cfg = get_preset(f"latentsync-{version}")
    if reduce > 1:
        cfg = dataclasses.replace(cfg, block_channels=tuple(max(32, c // reduce // 32 * 32) for c in cfg.block_channels))
    model = LatentSyncUNet(cfg, device=device, dtype=dtype).eval()
    size = 256 if version == "1.5" else 512
    backend = LatentSyncBackend(model, resolution=size)
    codec = ShapeCodec(4, 8, 1)
    return backend, codec, 16, size, (lambda s: {"features": torch.zeros(s, 5, cfg.audio_dim)})


def run(name: str, device: str = "cuda", dtype: str = "bf16", reduce: int = 1, steps: int = 2) -> dict:
    """Build, warm up (one step), then time ``steps`` sampling steps on one clip; returns the figures."""
    import torch

    from ..sampling.options import AudioInput
    from ..sampling.pipeline import RunStats, lipsync
    from .perf import peak_rss_kb

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    dev = torch.device(device)
    with torch.device(dev):
        backend, codec, frames, size, audio = (_xdub(dev, torch_dtype, reduce) if name == "xdub" else
                                               _latentsync(name.split("-")[1], dev, torch_dtype, reduce))
    params = sum(p.numel() for p in backend.module.parameters())
    clip = torch.zeros(frames, size, size, 3)
    speech = AudioInput(**audio(int(frames / 25 * 50) + 2), feature_rate=50.0)
    reference = backend.default_options()
    options = dataclasses.replace(reference, steps=1)
    lipsync(clip, 25.0, speech, backend, codec, options)  # warm-up: allocator, kernels
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = RunStats()
    t0 = time.perf_counter()
    lipsync(clip, 25.0, speech, backend, codec, dataclasses.replace(reference, steps=steps), stats=stats)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak_rss_kb() * 1024
    per_step = seconds / steps
    return {"backend": name, "device": device, "dtype": dtype, "reduce": reduce, "parameters": params,
            "frames": frames, "size": size, "steps_measured": steps, "reference_steps": reference.steps,
            "seconds_per_step": per_step, "seconds_per_clip": per_step * reference.steps,
            "frames_per_second": frames / (per_step * reference.steps), "peak_memory_gb": peak / 2 ** 30,
            "evaluations": stats.evaluations}


def register_cli(sub) -> None:
    p = sub.add_parser("backend-bench", help="peak memory and seconds per clip of a real-weight backend (random "
                                             "weights, full size unless --reduce)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="xdub", help="which network")
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="weight and compute dtype")
    p.add_argument("--reduce", type=int, default=1, help="divide width (and X-Dub's depth) by this, for CPUs")
    p.add_argument("--steps", type=int, default=2, help="sampling steps timed (the clip figure is extrapolated)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.set_defaults(func=_cmd_backend_bench)


def _cmd_backend_bench(args: argparse.Namespace) -> int:
    from .main import CliError, emit, write_json

    if args.reduce < 1 or args.steps < 1:
        raise CliError("--reduce and --steps must be >= 1")
    figures = run(args.backend, args.device, args.dtype, args.reduce, args.steps)
    if args.json is not None:
        write_json(args.json, figures)
    emit(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0
