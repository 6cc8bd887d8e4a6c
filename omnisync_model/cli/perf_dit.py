"""DiT throughput (tokens/s, FLOP/s, MFU on CUDA), torch.compile and the layout / dtype choices of the
performance benchmark (:mod:`.perf`)."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from contextlib import nullcontext
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..families.omnisync.config import get_preset
from ..families.omnisync.model import OmniSyncModel, count_parameters
from ..sampling.pipeline import LipSyncOptions

from .perf_common import (PEAK_BF16_FLOPS, PIXEL_PRESETS, PerfSettings, TARGETS, build_model, evaluation_points,
                          figure, interleaved, lipsync_inputs, median, run_lipsync, steps_needing_uncond, synchronize,
                          timed)
log = logging.getLogger(__name__)

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
