"""End-to-end lip sync: frames + audio -> frames, window by window, for any :class:`~.backend.Backend`.

One entry used by the CLI, the ComfyUI nodes and the tests: :func:`lipsync` (collects into one tensor) built on
:func:`iter_lipsync` (yields finished frames in order, so memory is bounded by the window, not the video). This
module never names a model family: everything family-specific comes from the backend.

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from ..core.codec import Codec, crop_back, pad_frames_to_codec
from .backend import Backend, WindowInputs, latent_first_frames
from .flow import solve
from .guidance import DSCFG, Guidance, GuidedDenoiser, spatial_map
from .options import AudioInput, LipSyncOptions
from .windows import Stitcher, Window, padded_length, plan_windows, round_window

log = logging.getLogger(__name__)

__all__ = ["lipsync", "iter_lipsync", "guided_denoise", "plan_for_codec", "mouth_map", "to_float_frames",
           "validate_fps", "validate_frames", "AudioInput", "LipSyncOptions", "RunStats", "latent_first_frames"]

ProgressFn = Callable[[int, int], None]


class FrameSource(Protocol):
    """Anything with len() and slicing to [n,H,W,3] (a tensor, or a streaming reader)."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: slice) -> torch.Tensor: ...


@dataclass
class RunStats:
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


def _sample_window(backend: Backend, codec: Codec, chunk: torch.Tensor, audio, start: int, firsts: Sequence[int],
                   gmap: torch.Tensor, motion: Optional[torch.Tensor], opts: LipSyncOptions, stats: RunStats,
                   on_step) -> torch.Tensor:
    """Encode -> initial latent -> guided Euler -> decode, for one window of frames [n,H,W,3].

    Returns the decoded frames at the padded size [n',H',W',3] (the caller crops them back)."""
    padded, _ = pad_frames_to_codec(chunk, backend.pixel_multiple(codec), codec.temporal_factor)
    # contiguous: the pixel codec returns a channel-last view, which makes every per-step op (Euler update,
    # CFG batching) take a strided path 2-4x slower than on packed memory; one copy per window avoids that
    source = codec.encode(padded.to(backend.device)).to(backend.device, torch.float32).contiguous()  # [1,C,T,h,w]
    cond = backend.condition(WindowInputs(source, padded, codec, audio, start, firsts, motion))
    sigmas = backend.sigmas(opts.steps, opts.tau, opts.shift)
    noise = backend.window_noise(source.shape, opts.seed, firsts, source.device, source.dtype)
    x = backend.initial_latent(source, noise, float(sigmas[0]))
    guidance = backend.guidance(gmap.to(source.device), float(sigmas[0]), opts)
    x, guided = guided_denoise(backend, x, cond, guidance, sigmas, on_step=lambda i: on_step(), solver=opts.solver)
    with torch.no_grad():
        out = codec.decode(x)
    stats.model_calls += guided.calls
    stats.evaluations += guided.evaluations
    return out.float().cpu()


def guided_denoise(backend: Backend, x: torch.Tensor, cond, guidance: Guidance, sigmas: torch.Tensor,
                   on_step: Optional[Callable[[int], None]] = None,
                   solver: str = "euler") -> tuple[torch.Tensor, GuidedDenoiser]:
    """Guided ODE solve (``solver``, see :data:`.flow.SOLVERS`) over ``sigmas`` from the initial latent x [1,C,T,h,w]
    with the backend's window condition.

    Returns the denoised latent and the guidance wrapper (its counters). ``on_step(i)`` gets the finished step count.
    """
    guided = GuidedDenoiser(backend.denoise, cond, guidance)
    callback = (lambda i, _x: on_step(i + 1)) if on_step is not None else None
    with torch.no_grad():
        x = solve(solver, guided, x, sigmas, callback=callback)
    return x, guided


def iter_lipsync(frames: FrameSource, fps: float, audio: AudioInput, backend: Backend, codec: Optional[Codec] = None,
                 options: LipSyncOptions = LipSyncOptions(), mouth_centres: Optional[torch.Tensor] = None,
                 mouth_valid: Optional[torch.Tensor] = None, progress: Optional[ProgressFn] = None,
                 check_interrupt: Optional[Callable[[], None]] = None,
                 stats: Optional[RunStats] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, frames [n,H,W,3] float 0..1)`` chunks, in order, each frame exactly once."""
    n = validate_frames(frames)
    fps = validate_fps(fps)
    stats = stats if stats is not None else RunStats()
    codec = backend.prepare_codec(codec)
    windows = plan_for_backend(n, options, backend, codec.temporal_factor)
    total = len(windows) * options.steps
    audio_cond = backend.audio_condition(audio, fps, options)
    stitcher = Stitcher(n, windows)
    log.info("lip sync (%s): %d frames at %.3f fps in %d window(s) of <= %d frames, %d steps from tau=%.2f",
             backend.name, n, fps, len(windows), options.window, options.steps, options.tau)

    def on_step() -> None:
        stats.steps_done += 1
        if check_interrupt is not None:
            check_interrupt()
        if progress is not None:
            progress(stats.steps_done, total)

    previous: Optional[tuple[Window, torch.Tensor]] = None  # last window and its padded output, for "continue"
    for win in windows:
        chunk = to_float_frames(frames[win.start:win.end])
        n_pad = padded_length(chunk.shape[0], codec.temporal_factor)  # frames the codec will see
        lat_hw = _latent_hw(chunk.shape[1:3], codec, backend.pixel_multiple(codec))
        gmap = mouth_map(mouth_centres, mouth_valid, win, n_pad, codec.temporal_factor, lat_hw, options.guidance)
        firsts = latent_first_frames(win.start, n_pad, codec.temporal_factor)
        motion = _motion_frames(previous, win, backend.window_rules.motion_frames) if options.stitch == "continue" \
            else None
        out = _sample_window(backend, codec, chunk, audio_cond.window(win.start, n_pad, codec.temporal_factor),
                             win.start, firsts, gmap, motion, options, stats, on_step)[: win.length]
        if previous is not None and options.stitch == "continue":
            out = _keep_previous(previous, win, out)
        previous = (win, out)
        yield from stitcher.add(win.index, crop_back(out, chunk.shape[:3]))
    stitcher.finish()


def _motion_frames(previous: Optional[tuple[Window, torch.Tensor]], win: Window, m: int) -> Optional[torch.Tensor]:
    """The previous window's output for frames [win.start, win.start + m): what the next window continues from."""
    if previous is None:
        return None
    prev_win, prev_out = previous
    a = win.start - prev_win.start
    return prev_out[a:a + m]


def _keep_previous(previous: tuple[Window, torch.Tensor], win: Window, out: torch.Tensor) -> torch.Tensor:
    """In "continue" mode the frames a window shares with the previous one keep the previous window's values, so
    the crossfade over them is exact (both sides agree) and the continuation is seamless."""
    prev_win, prev_out = previous
    k = prev_win.end - win.start  # frames shared with the previous window
    out = out.clone()
    out[:k] = prev_out[win.start - prev_win.start:]
    return out


def plan_for_backend(n: int, options: LipSyncOptions, backend: Backend, temporal_factor: int) -> list[Window]:
    """:func:`plan_for_codec` after the backend's window rules (maximum length, motion frames) are checked."""
    rules = backend.window_rules
    rules.check(options.window)
    if options.stitch == "continue":
        if rules.motion_frames < 1:
            raise ValueError(f"the {backend.name} backend cannot continue from motion frames; use stitch='crossfade'")
        options = LipSyncOptions(**{**vars(options), "overlap": rules.motion_frames})
    return plan_for_codec(n, options, temporal_factor)


def plan_for_codec(n: int, options: LipSyncOptions, temporal_factor: int) -> list[Window]:
    """Windows for ``n`` frames; a clip no longer than one window is one window of any length (the codec
    padding in :func:`_sample_window` gives it the 1 + k * temporal_factor frames a video VAE needs)."""
    if n <= round_window(options.window, temporal_factor):
        return [Window(0, 0, n)]
    return plan_windows(n, options.window, options.overlap, multiple=temporal_factor)


def _latent_hw(hw: Sequence[int], codec: Codec, multiple: int) -> tuple[int, int]:
    """Latent size of a frame padded up to ``multiple`` pixels."""
    m = multiple
    return (-(-hw[0] // m) * m // codec.spatial_factor, -(-hw[1] // m) * m // codec.spatial_factor)


def lipsync(frames: FrameSource, fps: float, audio: AudioInput, backend: Backend, codec: Optional[Codec] = None,
            options: LipSyncOptions = LipSyncOptions(), out: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
    """Lip-sync all frames; returns float32 [F,H,W,3] in 0..1 (one extra copy of the video, no more).

    ``out``: an optional preallocated [F,H,W,3] buffer to write into (its device and dtype are kept).
    """
    n = validate_frames(frames)
    if out is not None and (out.dim() != 4 or out.shape[0] != n or out.shape[-1] != 3):
        raise ValueError(f"output buffer {list(out.shape)} does not fit {n} RGB frames")
    for start, chunk in iter_lipsync(frames, fps, audio, backend, codec, options, **kwargs):  # each frame once
        if out is None:
            out = torch.empty((n,) + tuple(chunk.shape[1:]), dtype=torch.float32)
        out[start:start + chunk.shape[0]] = chunk.to(out.device, out.dtype)
    return out
