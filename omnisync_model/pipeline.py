"""End-to-end lip sync: frames + audio -> frames, window by window.

One entry used by the CLI, the ComfyUI nodes and the tests: :func:`lipsync` (collects into one tensor) built on
:func:`iter_lipsync` (yields finished frames in order, so memory is bounded by the window, not the video).

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size
  K audio tokens per latent frame    A audio width       N audio samples
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from .audio import align_features, audio_span_for_frames, frame_centre_times, prepare_audio
from .codec import Codec, crop_back, pad_frames_to_codec
from .flow import euler_sample, progressive_init, seeded_noise, sigma_schedule
from .guidance import DSCFG, GuidedVelocity, spatial_map
from .model import OmniSyncModel
from .windows import Stitcher, Window, padded_length, plan_windows, round_window

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class LipSyncOptions:
    """Sampling options. ``steps`` are the Euler steps actually run, from sigma = tau down to 0."""

    tau: float = 0.92
    steps: int = 20
    shift: float = 1.0
    window: int = 16
    overlap: int = 2
    seed: int = 0
    guidance: DSCFG = field(default_factory=DSCFG)
    audio_margin_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={self.window}, overlap={self.overlap}")


@dataclass(frozen=True)
class AudioInput:
    """Either a waveform (any rate, any channels) or external features [S, De] at ``feature_rate`` Hz."""

    waveform: Optional[torch.Tensor] = None  # [C,N] or [N]
    sample_rate: int = 16000
    features: Optional[torch.Tensor] = None  # [S,De] external encoder output (Whisper / wav2vec2)
    feature_rate: float = 50.0


class FrameSource(Protocol):
    """Anything with len() and slicing to [n,H,W,3] (a tensor, or a streaming reader)."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: slice) -> torch.Tensor: ...


@dataclass
class _RunStats:
    steps_done: int = 0
    model_calls: int = 0
    evaluations: int = 0


def validate_frames(frames: FrameSource) -> int:
    n = len(frames)
    if n < 1:
        raise ValueError("video has 0 frames; need at least 1")
    return n


def validate_fps(fps: float) -> float:
    fps = float(fps)
    if not fps > 0 or fps != fps or fps == float("inf"):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    return fps


def to_float_frames(chunk: torch.Tensor, name: str = "frames") -> torch.Tensor:
    """uint8 or float [n,H,W,C] with C in {1,3,4} -> float32 RGB [n,H,W,3] in 0..1."""
    if chunk.dim() != 4:
        raise ValueError(f"{name} must be [frames, height, width, channels], got shape {list(chunk.shape)}")
    if chunk.dtype == torch.uint8:
        chunk = chunk.float() / 255.0
    else:
        chunk = chunk.float()
        if not torch.isfinite(chunk).all():
            raise ValueError(f"{name} contain NaN or Inf values")
    c = chunk.shape[-1]
    if c == 1:
        chunk = chunk.expand(-1, -1, -1, 3)  # grayscale -> RGB
    elif c == 4:
        chunk = chunk[..., :3]  # drop alpha
    elif c != 3:
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got {c}")
    return chunk.clamp(0.0, 1.0)


def window_noise(shape: Sequence[int], seed: int, first_frames: Sequence[int], device, dtype) -> torch.Tensor:
    """Noise [1,C,T,h,w] whose latent frame j depends only on (seed, absolute frame first_frames[j]).

    Overlapping windows therefore start from the same noise on the frames they share, which keeps seams quiet.
    """
    _, c, _, h, w = shape
    frames = [seeded_noise((c, h, w), seed * 1_000_003 + int(f), device=device, dtype=dtype) for f in first_frames]
    return torch.stack(frames, dim=1)[None]  # T x [C,h,w] -> [1,C,T,h,w]


def latent_first_frames(start: int, n_frames: int, temporal_factor: int) -> list[int]:
    """Absolute index of the first video frame that each latent frame of a window covers."""
    t = 1 + (n_frames - 1) // temporal_factor
    return [start] + [start + 1 + (j - 1) * temporal_factor for j in range(1, t)]


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if features.dim() == 3 and features.shape[0] == 1:
        features = features[0]  # [1,S,De] -> [S,De]
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"audio features must be [steps, width] with steps > 0, got {list(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("audio features contain NaN or Inf values")
    return features


class WindowAudio:
    """Per-window audio tokens [1,T,K,A], computed from the waveform (or external features) by absolute time."""

    def __init__(self, model: OmniSyncModel, audio: AudioInput, fps: float, margin_s: float):
        self.model, self.fps, self.margin = model, fps, margin_s
        cfg = model.config
        self.k, self.rate = cfg.audio_tokens, cfg.audio_rate
        self.feature_rate = audio.feature_rate
        self.adapted = None
        self.wave = None
        if audio.features is not None:
            with torch.no_grad():
                self.adapted = model.adapt_features(_check_features(audio.features)[None])  # [1,S,A]
        else:
            if audio.waveform is None:
                raise ValueError("audio: give a waveform or external features")
            self.wave = prepare_audio(audio.waveform, audio.sample_rate)

    @torch.no_grad()
    def tokens(self, start: int, n_frames: int, temporal_factor: int) -> torch.Tensor:
        centres = frame_centre_times(n_frames, self.fps, temporal_factor) + start / self.fps  # [T] seconds, absolute
        if self.adapted is not None:
            return align_features(self.adapted, self.feature_rate, centres, self.k, self.rate)
        s0, s1, offset = audio_span_for_frames(start, start + n_frames, self.fps, 16000, self.margin)
        piece = self.wave[s0:s1]
        if piece.numel() < 400:  # shorter than one STFT window: the audio has ended, use silence
            piece = torch.zeros(400)
        return self.model.audio_tokens(piece[None], offset, centres)  # [1,T,K,A]


def mouth_map(centres: Optional[torch.Tensor], valid: Optional[torch.Tensor], win: Window, n_padded: int,
              temporal_factor: int, latent_hw: tuple[int, int], cfg: DSCFG) -> torch.Tensor:
    """DS-CFG spatial map [T,h,w] for a window padded to ``n_padded`` frames; per-frame centres [F,2] are averaged
    over the frames each latent frame covers (padding frames repeat the window's last frame)."""
    firsts = latent_first_frames(win.start, n_padded, temporal_factor)
    t = len(firsts)
    if centres is None:
        c = torch.full((t, 2), 0.5)
        v = torch.zeros(t, dtype=torch.bool)  # no mouth information: uniform guidance
    else:
        # latent 0 covers its first frame only, latent j >= 1 covers temporal_factor frames (causal video VAE)
        ends = [f + (1 if j == 0 else temporal_factor) for j, f in enumerate(firsts)]
        spans = [(min(a, win.end - 1), min(b, win.end)) for a, b in zip(firsts, ends)]
        c = torch.stack([centres[a:b].float().mean(0) for a, b in spans])  # [T,2]
        vv = valid if valid is not None else torch.ones(len(centres), dtype=torch.bool)
        v = torch.stack([vv[a:b].all() for a, b in spans])  # [T]
    return spatial_map(c, v, latent_hw[0], latent_hw[1], cfg)


def _sample_window(model, codec, chunk, tokens, gmap, noise_firsts, opts, stats, on_step) -> torch.Tensor:
    """Encode -> progressive init -> guided Euler -> decode, for one window of frames [n,H,W,3]."""
    padded, orig = pad_frames_to_codec(chunk, codec.spatial_factor * model.config.patch_size, codec.temporal_factor)
    # contiguous: the pixel codec returns a channel-last view, which makes every per-step op (Euler update,
    # CFG batching) take a strided path 2-4x slower than on packed memory; one copy per window avoids that
    source = codec.encode(padded.to(model.device)).to(model.device, torch.float32).contiguous()  # [1,C,T,h,w]
    noise = window_noise(source.shape, opts.seed, noise_firsts, source.device, source.dtype)
    x = progressive_init(source, noise, opts.tau)
    x, guided = guided_denoise(model, x, source, tokens, gmap, opts.tau, opts.steps, opts.shift, opts.guidance,
                               on_step=lambda i: on_step())
    with torch.no_grad():
        out = codec.decode(x)
    stats.model_calls += guided.calls
    stats.evaluations += guided.evaluations
    return crop_back(out.float().cpu(), orig)


def guided_denoise(model: OmniSyncModel, x: torch.Tensor, source: torch.Tensor, tokens: torch.Tensor,
                   gmap: torch.Tensor, tau: float, steps: int, shift: float, guidance: DSCFG,
                   on_step: Optional[Callable[[int], None]] = None) -> tuple[torch.Tensor, GuidedVelocity]:
    """DS-CFG guided Euler from sigma = tau to 0: x, source [1,C,T,h,w], tokens [1,T,K,A], gmap [T,h,w].

    Returns the denoised latent and the guidance wrapper (its counters). ``on_step(i)`` gets the finished step count.
    """
    guided = GuidedVelocity(model, source, tokens.to(source.device), gmap.to(source.device), tau, guidance)
    sigmas = sigma_schedule(steps, start=tau, shift=shift)
    callback = (lambda i, _x: on_step(i + 1)) if on_step is not None else None
    with torch.no_grad():
        x = euler_sample(guided, x, sigmas, callback=callback)
    return x, guided


def iter_lipsync(frames: FrameSource, fps: float, audio: AudioInput, model: OmniSyncModel, codec: Codec,
                 options: LipSyncOptions = LipSyncOptions(), mouth_centres: Optional[torch.Tensor] = None,
                 mouth_valid: Optional[torch.Tensor] = None, progress: Optional[ProgressFn] = None,
                 check_interrupt: Optional[Callable[[], None]] = None,
                 stats: Optional[_RunStats] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, frames [n,H,W,3] float 0..1)`` chunks, in order, each frame exactly once."""
    n = validate_frames(frames)
    fps = validate_fps(fps)
    stats = stats if stats is not None else _RunStats()
    windows = plan_for_codec(n, options, codec.temporal_factor)
    total = len(windows) * options.steps
    wa = WindowAudio(model, audio, fps, options.audio_margin_s)
    stitcher = Stitcher(n, windows)
    log.info("lip sync: %d frames at %.3f fps in %d window(s) of <= %d frames, %d steps from tau=%.2f",
             n, fps, len(windows), options.window, options.steps, options.tau)

    def on_step() -> None:
        stats.steps_done += 1
        if check_interrupt is not None:
            check_interrupt()
        if progress is not None:
            progress(stats.steps_done, total)

    for win in windows:
        chunk = to_float_frames(frames[win.start:win.end])
        n_pad = padded_length(chunk.shape[0], codec.temporal_factor)  # frames the codec will see
        tokens = wa.tokens(win.start, n_pad, codec.temporal_factor)
        lat_hw = _latent_hw(chunk.shape[1:3], codec, model.config.patch_size)
        gmap = mouth_map(mouth_centres, mouth_valid, win, n_pad, codec.temporal_factor, lat_hw, options.guidance)
        firsts = latent_first_frames(win.start, n_pad, codec.temporal_factor)
        out = _sample_window(model, codec, chunk, tokens, gmap, firsts, options, stats, on_step)
        yield from stitcher.add(win.index, out[: win.length])
    stitcher.finish()


def plan_for_codec(n: int, options: LipSyncOptions, temporal_factor: int) -> list[Window]:
    """Windows for ``n`` frames; a clip no longer than one window is one window of any length (the codec
    padding in :func:`_sample_window` gives it the 1 + k * temporal_factor frames a video VAE needs)."""
    if n <= round_window(options.window, temporal_factor):
        return [Window(0, 0, n)]
    return plan_windows(n, options.window, options.overlap, multiple=temporal_factor)


def _latent_hw(hw: Sequence[int], codec: Codec, patch: int) -> tuple[int, int]:
    m = codec.spatial_factor * patch
    return (-(-hw[0] // m) * m // codec.spatial_factor, -(-hw[1] // m) * m // codec.spatial_factor)


def lipsync(frames: FrameSource, fps: float, audio: AudioInput, model: OmniSyncModel, codec: Codec,
            options: LipSyncOptions = LipSyncOptions(), out: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
    """Lip-sync all frames; returns float32 [F,H,W,3] in 0..1 (one extra copy of the video, no more).

    ``out``: an optional preallocated [F,H,W,3] buffer to write into (its device and dtype are kept).
    """
    n = validate_frames(frames)
    if out is not None and (out.dim() != 4 or out.shape[0] != n or out.shape[-1] != 3):
        raise ValueError(f"output buffer {list(out.shape)} does not fit {n} RGB frames")
    for start, chunk in iter_lipsync(frames, fps, audio, model, codec, options, **kwargs):  # each frame once
        if out is None:
            out = torch.empty((n,) + tuple(chunk.shape[1:]), dtype=torch.float32)
        out[start:start + chunk.shape[0]] = chunk.to(out.device, out.dtype)
    return out
