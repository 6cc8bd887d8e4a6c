"""Whisper features over a whole file at 50 Hz: OpenAI's log-mel front end and the encoder run over 30 s windows.

Whisper's encoder takes exactly 30 s (3000 mel frames -> C = 1500 steps; the positional table is fixed), so a
file is cut into windows:

* ``"reference"``: consecutive 30 s chunks, as LatentSync 1.5/1.6 and X-Dub do (their shared whisper copy,
  ``transcribe.py`` lines 85-126): the log-mel of the WHOLE file is computed once (so ``max - 8`` clamps against
  the file's global maximum), sliced into 3000-frame chunks, the last one right-padded with zeros in the
  normalised log-mel domain (``pad_or_trim``), and each chunk keeps ``(frames in chunk) // 2`` steps.
* ``"overlap"``: 30 s windows every ``hop_seconds`` (the last one ends at the end of the file); each step comes
  from the window where it is farthest from a window edge that is not the file's own start or end, with a short
  linear crossfade between neighbours, so nothing jumps at 30 s. The first window is the reference's first
  chunk, so both modes agree over roughly the first 25 s (hop 20 s).

Layer names: ``"embedding"`` (input of the first block: conv stem + positional table), ``"block.i"`` (output of
block i, no ln_post), ``"last_block"`` (= the last block, before ln_post), ``"final"`` (after ln_post).

Shape legend
  N   samples at 16 kHz        B   batch of equal-length files (a 1-D input gives outputs without B)
  M   mel frames (N // 160)    F   mel bins (n_mels)         T   50 Hz steps (M // 2)
  C   encoder context (1500)   D   encoder width             W   windows in one encoder call
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .common import SAMPLE_RATE, check_wave16k, require_transformers

logger = logging.getLogger(__name__)

__all__ = ["N_FFT", "HOP_LENGTH", "STEP_RATE", "MIN_SAMPLES", "CHUNKINGS", "mel_filters", "log_mel",
           "WindowPlan", "plan_windows", "layer_names", "encode"]

N_FFT = 400  # 25 ms Hann window
HOP_LENGTH = 160  # 10 ms -> 100 mel frames per second
STEP_RATE = SAMPLE_RATE / HOP_LENGTH / 2  # 50 Hz encoder steps (conv2 has stride 2)
MIN_SAMPLES = 2 * HOP_LENGTH  # two mel frames = one encoder step
CHUNKINGS = ("reference", "overlap")


# --------------------------------------------------------------------------------------------- log-mel


def mel_filters(n_mels: int = 80, device=None) -> torch.Tensor:
    """Slaney-scale, slaney-normalised triangular filters [F, N_FFT // 2 + 1] for 16 kHz (0..8 kHz), float32:
    librosa.filters.mel(sr=16000, n_fft=400, n_mels=F), which is what OpenAI ships as mel_filters.npz."""
    require_transformers()
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")
    return torch.from_numpy(bank).to(device=device, dtype=torch.float32).T.contiguous()  # [bins, F] -> [F, bins]


def log_mel(wave16k: torch.Tensor, n_mels: int = 80, *, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """OpenAI Whisper's normalised log-mel spectrogram, float32 [F, M] (or [B, F, M] for [B, N] input).

    STFT n_fft 400 / hop 160 / Hann, centred with reflect padding, the last frame dropped; power; mel;
    log10(clamp 1e-10); clamp below (max - 8) with the max over the whole file; (x + 4) / 4.
    """
    wave = check_wave16k(wave16k, sample_rate, MIN_SAMPLES)  # [B, N] float32
    window = torch.hann_window(N_FFT, device=wave.device, dtype=torch.float32)
    spec = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, return_complex=True)  # [B, bins, N // 160 + 1]
    power = spec[..., :-1].abs() ** 2  # [B, bins, M]
    mel = mel_filters(n_mels, wave.device) @ power  # [F, bins] @ [B, bins, M] -> [B, F, M]
    logspec = torch.clamp(mel, min=1e-10).log10()
    floor = logspec.amax(dim=(1, 2), keepdim=True) - 8.0  # [B, 1, 1]: per file
    logspec = (torch.maximum(logspec, floor) + 4.0) / 4.0
    return logspec[0] if wave16k.dim() == 1 else logspec


# --------------------------------------------------------------------------------------------- windows


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """One encoder window: steps ``[start, start + C)``; it contributes steps ``[lo, hi)`` of the output with
    ``weight`` [hi - lo] (None = weight 1, copy)."""
    start: int
    lo: int
    hi: int
    weight: Optional[torch.Tensor] = None


def _edge_scores(start: int, ctx: int, n_steps: int) -> torch.Tensor:
    """Distance of each step of a window to its nearest edge that is not the file's start or end."""
    t = torch.arange(start, min(start + ctx, n_steps), dtype=torch.float64)
    left = t - start if start > 0 else torch.full_like(t, math.inf)
    right = start + ctx - 1 - t if start + ctx < n_steps else torch.full_like(t, math.inf)
    return torch.minimum(left, right)


def _owners(starts: list[int], ctx: int, n_steps: int) -> list[tuple[int, int]]:
    """[lo, hi) per window: each step goes to the window where it is farthest from an edge (ties: earlier)."""
    best = torch.full((n_steps,), -1.0, dtype=torch.float64)
    owner = torch.full((n_steps,), -1, dtype=torch.long)
    for i, start in enumerate(starts):
        score = _edge_scores(start, ctx, n_steps)
        span = slice(start, start + score.numel())
        better = score > best[span]
        best[span] = torch.where(better, score, best[span])
        owner[span] = torch.where(better, torch.full_like(owner[span], i), owner[span])
    counts = torch.bincount(owner, minlength=len(starts)).tolist()
    bounds = [0] + torch.tensor(counts).cumsum(0).tolist()
    if not bool((owner[1:] >= owner[:-1]).all()):
        raise AssertionError("window owners are not contiguous")  # cannot happen for equal, sorted windows
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def _ramp(n: int, rising: bool) -> torch.Tensor:
    w = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return w if rising else 1.0 - w


def _crossfaded(starts: list[int], spans: list[tuple[int, int]], ctx: int, crossfade: int) -> list[WindowPlan]:
    half = crossfade // 2
    for i in range(1, len(starts)):  # the fade must stay inside both windows and not overlap the next fade
        cut = spans[i][0]
        half = min(half, cut - starts[i], starts[i - 1] + ctx - cut,
                   (spans[i][1] - spans[i][0]) // 2, (spans[i - 1][1] - spans[i - 1][0]) // 2)
    if half <= 0:
        return [WindowPlan(s, lo, hi) for s, (lo, hi) in zip(starts, spans)]
    plans = []
    for i, (start, (lo, hi)) in enumerate(zip(starts, spans)):
        a = lo - half if i > 0 else lo
        b = hi + half if i < len(starts) - 1 else hi
        weight = torch.ones(b - a)
        if i > 0:
            weight[: 2 * half] = _ramp(2 * half, rising=True)
        if i < len(starts) - 1:
            weight[-2 * half:] = _ramp(2 * half, rising=False)
        plans.append(WindowPlan(start, a, b, weight))
    return plans


def plan_windows(n_steps: int, ctx: int = 1500, chunking: str = "reference", hop: int = 1000,
                 crossfade: int = 50) -> list[WindowPlan]:
    """Encoder windows covering ``n_steps`` 50 Hz steps; ``hop`` and ``crossfade`` in steps (overlap mode)."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if chunking == "reference" or n_steps <= ctx:
        return [WindowPlan(s, s, min(s + ctx, n_steps)) for s in range(0, n_steps, ctx)]
    if not 1 <= hop < ctx:
        raise ValueError(f"overlap hop must be 1..{ctx - 1} steps (shorter than a window), got {hop}")
    if crossfade < 0:
        raise ValueError(f"crossfade must be >= 0 steps, got {crossfade}")
    starts = list(range(0, n_steps - ctx, hop)) + [n_steps - ctx]
    return _crossfaded(starts, _owners(starts, ctx, n_steps), ctx, crossfade)


# --------------------------------------------------------------------------------------------- encoder


def layer_names(encoder) -> list[str]:
    """Every layer name :func:`encode` accepts for ``encoder``."""
    return ["embedding"] + [f"block.{i}" for i in range(len(encoder.layers))] + ["last_block", "final"]


def _resolve(encoder, layers: Sequence[str]) -> dict[str, str]:
    """Requested name -> canonical name ("last_block" -> "block.{L-1}")."""
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty sequence of names, got {layers!r}")
    known = layer_names(encoder)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(f"unknown Whisper layer(s) {unknown}; choose from {known}")
    last = f"block.{len(encoder.layers) - 1}"
    return {name: last if name == "last_block" else name for name in layers}


def _run_windows(encoder, mel: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
    """Encoder on full 30 s windows [W, F, 2C]; {canonical name: [W, C, D]} captured with hooks."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, args, kwargs, output=None):
            value = output if output is not None else (args[0] if args else kwargs["hidden_states"])
            captured[name] = value[0] if isinstance(value, tuple) else value  # 4.x layers return tuples

        return hook

    handles = []
    if "embedding" in wanted:
        handles.append(encoder.layers[0].register_forward_pre_hook(keep("embedding"), with_kwargs=True))
    for i, layer in enumerate(encoder.layers):
        if f"block.{i}" in wanted:
            handles.append(layer.register_forward_hook(keep(f"block.{i}"), with_kwargs=True))
    try:
        captured["final"] = encoder(mel).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    return {name: captured[name] for name in wanted}


def _window_mel(mel: torch.Tensor, start: int, ctx: int) -> torch.Tensor:
    """Mel frames of a window [B, F, 2C], right-padded with zeros (normalised log-mel) like pad_or_trim."""
    part = mel[..., 2 * start: 2 * (start + ctx)]
    return F.pad(part, (0, 2 * ctx - part.shape[-1]))


@torch.no_grad()
def encode(encoder, wave16k: torch.Tensor, layers: Sequence[str] = ("final",), chunking: str = "reference", *,
           sample_rate: int = SAMPLE_RATE, hop_seconds: float = 20.0, crossfade_seconds: float = 1.0,
           window_batch: int = 4, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, torch.Tensor]:
    """Whisper encoder features of a whole file at 50 Hz, trimmed to the audio: {name: float32 [T, D]}
    ([B, T, D] for a [B, N] input), T = (N // 160) // 2, on the encoder's device.

    ``encoder`` is a transformers ``WhisperEncoder`` (see :func:`load_whisper_encoder`); ``layers`` are names
    from :func:`layer_names`; ``chunking`` "reference" or "overlap" (module docstring). ``progress(done, total)``
    is called after each encoder call (raise from it to interrupt).
    """
    names = _resolve(encoder, layers)
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    param = next(encoder.parameters())
    ctx = encoder.config.max_source_positions
    mel = log_mel(wave16k.to(param.device), encoder.config.num_mel_bins, sample_rate=sample_rate)
    mel = mel.unsqueeze(0) if mel.dim() == 2 else mel  # [F, M] -> [1, F, M]
    n_steps = mel.shape[-1] // 2
    plans = plan_windows(n_steps, ctx, chunking, hop=round(hop_seconds * STEP_RATE),
                         crossfade=round(crossfade_seconds * STEP_RATE))
    wanted = set(names.values())
    out = {name: mel.new_zeros(mel.shape[0], n_steps, encoder.config.d_model) for name in wanted}  # [B, T, D]
    batch = max(1, int(window_batch))
    for first in range(0, len(plans), batch):
        group = plans[first:first + batch]
        windows = torch.cat([_window_mel(mel, p.start, ctx) for p in group])  # [W * B, F, 2C]
        feats = _run_windows(encoder, windows.to(param.dtype), wanted)
        for name, value in feats.items():
            value = value.float().unflatten(0, (len(group), mel.shape[0]))  # [W * B, C, D] -> [W, B, C, D]
            for p, v in zip(group, value):
                part = v[:, p.lo - p.start: p.hi - p.start]  # [B, hi - lo, D]
                if p.weight is None:
                    out[name][:, p.lo:p.hi] = part
                else:
                    out[name][:, p.lo:p.hi] += part * p.weight.to(part.device)[:, None]  # weight over steps
        if progress is not None:
            progress(min(first + batch, len(plans)), len(plans))
    single = wave16k.dim() == 1
    return {name: out[canon][0] if single else out[canon] for name, canon in names.items()}
