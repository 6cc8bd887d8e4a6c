"""The memory a lip-sync run will need, estimated before the first model call, and the window that fits.

Every node and command that samples asks :func:`fit_window` first: it adds up what the run allocates (below),
compares it with what the host and the device can give (:class:`~..core.memory.MemoryBudget`), and returns the
requested window, a smaller one (logged as a warning), or raises
:class:`~..core.memory.InsufficientMemoryError` with the figures and what to change. Within the run, memory then
grows only window by window, and each sampling step checks for an interrupt.

Parts, per run (float32 pixels; F frames of H x W, windows of n frames worked at h x w)
  activations  ``backend.inference_memory(backend.window_tokens(n, h, w, codec))``, on the device
  window       WINDOW_COPIES copies of the window's frames at the working size (to_float, padding, codec input /
               output, crossfade) and LATENT_COPIES of its latent (source, noise, x, velocity, branch batches)
  output       IMAGE path only: the F x H x W result (the input is already in memory and is not counted twice)
  paste        crop / file paths: PASTE_COPIES (FILE_PASTE_COPIES) full-resolution copies of a window being pasted
  decoders     file path: two readers (crops and full frames), each a float chunk plus DECODER_FRAMES frames
  encoder      file path: libx264 at H x W (look-ahead, reference frames), ENCODER_FRAMES RGB frames

The constants were measured on CPU (``/work/side/h14`` scripts: peak RSS of each part; see the tests), rounded up.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

from ..core.codec import Codec
from ..core.memory import InsufficientMemoryError, MemoryBudget, MemoryNeed, gib
from ..sampling.backend import Backend
from ..sampling.options import LipSyncOptions
from ..sampling.windows import padded_length, round_window

log = logging.getLogger(__name__)

FLOAT = 4
WINDOW_COPIES = 10
LATENT_COPIES = 8
PASTE_COPIES = 4  # IMAGE path: the window's frames, their paste-back copy, the blend's temporaries
FILE_PASTE_COPIES = 3  # file path (the decoded chunk is counted with the decoders)
DECODER_FRAMES = 96  # uint8 RGB frames' worth per decoder (threads, reordering, conversion), measured ~76
ENCODER_FRAMES = 80  # uint8 RGB frames' worth for libx264 preset medium, measured ~64
READ_CHUNK = 16  # frames per decoded chunk (media.lipsync_file)

NeedFn = Callable[[int], MemoryNeed]  # window length -> what the run needs with it


def frames_bytes(n: int, height: int, width: int, channels: int = 3, itemsize: int = FLOAT) -> int:
    return int(n) * int(height) * int(width) * channels * itemsize


def _padded_hw(hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    return -(-hw[0] // multiple) * multiple, -(-hw[1] // multiple) * multiple


def window_need(backend: Backend, codec: Codec, n: int, work_hw: tuple[int, int], shared: bool) -> MemoryNeed:
    """Activations and the window's own copies for a window of ``n`` frames at ``work_hw`` (padded for the codec)."""
    n_pad = padded_length(max(1, n), codec.temporal_factor)
    h, w = _padded_hw(work_hw, backend.pixel_multiple(codec))
    tokens = backend.window_tokens(n_pad, h, w, codec)
    t = 1 + (n_pad - 1) // codec.temporal_factor
    latent = t * codec.latent_channels * (h // codec.spatial_factor) * (w // codec.spatial_factor) * FLOAT
    pixels = frames_bytes(n_pad, h, w)
    device = "host" if shared else "device"
    need = MemoryNeed().plus(f"activations for {tokens:,} tokens", backend.inference_memory(tokens), device)
    need = need.plus(f"latents of a {n}-frame window", LATENT_COPIES * latent, device)
    need = need.plus(f"frames of a {n}-frame window", WINDOW_COPIES * pixels / (1 if shared else 2), "host")
    if not shared:
        need = need.plus("window frames on the device", WINDOW_COPIES * pixels / 2, "device")
    return need


def image_run_need(backend: Backend, codec: Codec, n: int, frames: tuple[int, int, int], work_hw: tuple[int, int],
                   shared: bool, cropped: bool) -> MemoryNeed:
    """OmniSyncLipSync (IMAGE in, IMAGE out): ``frames`` = (F, H, W) of the input."""
    count, height, width = frames
    need = window_need(backend, codec, min(n, count), work_hw, shared)
    need = need.plus(f"output of {count} frames {width}x{height}", frames_bytes(count, height, width))
    if cropped:
        need = need.plus("face crops being pasted back", PASTE_COPIES * frames_bytes(min(n, count), height, width))
    return need


def file_run_need(backend: Backend, codec: Codec, n: int, count: int, frame_hw: tuple[int, int],
                  work_hw: tuple[int, int], shared: bool) -> MemoryNeed:
    """File to file (the CLI, OmniSyncLipSyncVideo): decode, crop, sample, paste, encode, window by window."""
    height, width = frame_hw
    k = min(n, count)
    need = window_need(backend, codec, k, work_hw, shared)
    rgb = frames_bytes(1, height, width, itemsize=1)
    need = need.plus("frames being pasted back", FILE_PASTE_COPIES * frames_bytes(k + READ_CHUNK, height, width))
    need = need.plus("video decoders", 2 * (DECODER_FRAMES * rgb + frames_bytes(READ_CHUNK, height, width)))
    need = need.plus("crops read ahead", 2 * frames_bytes(k + READ_CHUNK, *_padded_hw(work_hw, 1)))
    return need.plus("H.264 encoder", ENCODER_FRAMES * rgb)


def window_candidates(requested: int, temporal_factor: int, min_window: int = 1) -> list[int]:
    """The requested window, then smaller ones (about halving) down to ``min_window``, each of the codec's form."""
    out, w = [], requested
    while True:
        w = max(min_window, round_window(max(1, w), temporal_factor))
        if w not in out:
            out.append(w)
        if w <= min_window:
            return out
        w = w // 2


def fit_window(options: LipSyncOptions, backend: Backend, codec: Codec, need_for: NeedFn, budget: MemoryBudget,
               what: str, advice: str, already: Optional[MemoryNeed] = None) -> tuple[LipSyncOptions, MemoryNeed]:
    """The requested options when their run fits ``budget``, else the same with the largest smaller window that
    fits (warning); InsufficientMemoryError naming the figures and ``advice`` when even the smallest does not.

    ``what`` describes the run ('250 frames of 1080x1920'); ``already`` what is resident and not counted (shown).
    """
    motion = backend.window_rules.motion_frames if options.stitch == "continue" else 0
    low = padded_length(motion + 1, codec.temporal_factor) if motion else 1
    tried: list[tuple[int, MemoryNeed, str]] = []
    for window in window_candidates(options.window, codec.temporal_factor, min(low, options.window)):
        need = need_for(window)
        short = budget.shortfall(need)
        if short is None:
            if window != options.window:
                log.warning("OmniSync: %s with a %d-frame window would need %s; using %d-frame windows (%s)",
                            what, options.window, tried[0][2], window, need.describe())
                overlap = min(options.overlap, window // 4)
                options = dataclasses.replace(options, window=window, overlap=overlap)
            log.info("OmniSync memory plan: %s, %d-frame windows: %s (free: RAM %s%s)", what, window,
                     need.describe(), gib(budget.host),
                     "" if budget.shared else f", {budget.device_name} {gib(budget.device)}")
            return options, need
        tried.append((window, need, short))
    first, smallest = tried[0], tried[-1]
    resident = f"; already in memory: {already.describe()}" if already is not None and already.total else ""
    raise InsufficientMemoryError(
        f"not enough memory: {what} with {first[0]}-frame windows needs {first[2]} ({first[1].describe()})"
        + (f"; even {smallest[0]}-frame windows need {smallest[2]}" if len(tried) > 1 else "")
        + f"{resident}. {advice}")


def describe_frames(count: int, height: int, width: int) -> str:
    return f"{count} frame{'s' if count != 1 else ''} of {width}x{height}"


def scale_over_native(backend: Backend, height: int, width: int) -> float:
    """How many times the frame's longer side exceeds the model's trained resolution (0 when it has none)."""
    native = backend.crop_rules.resolution
    if not native:
        return 0.0
    return max(height, width) / max(1, max(native))


def check_fits(need: MemoryNeed, budget: MemoryBudget, what: str, advice: str) -> None:
    """InsufficientMemoryError naming the figures and ``advice`` when ``need`` does not fit ``budget`` (for paths
    with a fixed window, e.g. a sampler given one latent: ``need`` = activations + buffers of that call)."""
    short = budget.shortfall(need)
    if short is not None:
        raise InsufficientMemoryError(f"not enough memory: {what} needs {short} ({need.describe()}). {advice}")
