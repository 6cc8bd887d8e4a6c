"""The one-node path (OmniSyncLipSync) without ComfyUI: IMAGE + AUDIO -> IMAGE, window by window, any backend.

Shape legend
  F video frames   H, W frame size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from ...omnisync_model.sampling.backend import Backend
from ...omnisync_model.sampling.guidance import DSCFG
from ...omnisync_model.sampling.options import LipSyncOptions
from ...omnisync_model.sampling.pipeline import lipsync, plan_for_backend
from .audio import speech_inputs
from .codecs import codec_for
from .frames import check_fps, image_to_frames
from .tracks import locate_track, track_arrays


@dataclass(frozen=True)
class NodeHooks:
    """What the ComfyUI glue supplies to the one-node paths (defaults: plain CPU, no progress, no interrupts).

    prepare(window_tokens) loads the model and returns its backend; progress(done, total) and check_interrupt()
    are called once per sampling step; after_vae() runs after each VAE call (VAE work may evict the model).
    """

    prepare: Optional[Callable[[int], Backend]] = None
    progress: Optional[Callable[[int, int], None]] = None
    check_interrupt: Optional[Callable[[], None]] = None
    after_vae: Optional[Callable[[], None]] = None
    output_device: Any = "cpu"


def lipsync_images(backend: Backend, images: torch.Tensor, fps: Any, audio: Mapping[str, Any],
                   options: LipSyncOptions, vae: Any = None, mouth: Any = None,
                   audio_features: Optional[Mapping[str, Any]] = None,
                   hooks: NodeHooks = NodeHooks()) -> tuple[torch.Tensor, dict]:
    """The OmniSyncLipSync node without ComfyUI: IMAGE + AUDIO -> (IMAGE [F,H,W,3], AUDIO fitted to F / fps).

    Inputs are checked first (nothing runs on bad input); a missing mouth track is located (never aborts: frames
    without a face get uniform guidance and a warning). The result is written window by window into one
    preallocated output, the only full-resolution copy made.
    """
    frames = image_to_frames(images)
    fps = check_fps(fps)
    n, height, width = frames.shape[:3]
    wave_input, fitted = speech_inputs(audio, audio_features, n, fps)
    codec = codec_for(backend, vae, after_vae=hooks.after_vae)
    first = plan_for_backend(n, options, backend, codec.temporal_factor)[0]  # checks the window rules too
    track = mouth if mouth is not None else locate_track(frames, hooks.check_interrupt)
    centres, valid = track_arrays(track, n)
    if hooks.prepare is not None:
        backend = hooks.prepare(backend.window_tokens(first.length, height, width, codec))
    out = torch.empty((n, height, width, 3), dtype=torch.float32, device=hooks.output_device)
    lipsync(frames, fps, wave_input, backend, codec, options, out=out, mouth_centres=centres, mouth_valid=valid,
            progress=hooks.progress, check_interrupt=hooks.check_interrupt)
    return out, fitted


def make_options(tau: float, steps: int, seed: int, window: int, overlap: int, w_peak: float, w_base: float,
                 radius: float, gamma: float) -> LipSyncOptions:
    """LipSyncOptions from node widgets; ValueError (naming the widget) on inconsistent values."""
    guidance = DSCFG(w_peak=float(w_peak), w_base=float(w_base), radius=float(radius), gamma=float(gamma))
    return LipSyncOptions(tau=float(tau), steps=int(steps), seed=int(seed), window=int(window),
                          overlap=int(overlap), guidance=guidance)
