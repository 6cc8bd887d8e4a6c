"""The one-node path (OmniSyncLipSync) without ComfyUI: IMAGE + AUDIO -> IMAGE, window by window, any backend.

Memory (checked before the first model call, :mod:`omnisync_model.media.run_memory`): the result is one
preallocated F x H x W float32 IMAGE (as large as the input, which is already in memory), filled window by window;
each window needs its activations. When the whole run does not fit in what the host / device can give, the
window is shrunk; frames much larger than the model's trained resolution (or too large for memory even with a
small window) are lip-synced on the face crop and pasted back (only a soft disc around the mouth is taken from the
result; everything else keeps the source's pixels); when nothing fits the node refuses and says what to use
instead. Allocation then grows window by window, with an interrupt check at every sampling step.

Shape legend
  F video frames   H, W frame size   h, w working (crop) size
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from ...omnisync_model.core.memory import InsufficientMemoryError, MemoryBudget, MemoryNeed
from ...omnisync_model.media.lipsync_file import blend_weights
from ...omnisync_model.media.locate import MouthTrack
from ...omnisync_model.media.regions import Box, crop_boxes_from_track, map_track_to_crop, paste_back_per_frame, \
    working_size
from ...omnisync_model.media.run_memory import (describe_frames, fit_window, frames_bytes, image_run_need,
                                                scale_over_native)
from ...omnisync_model.media.streams import CroppedFrames
from ...omnisync_model.sampling.backend import Backend
from ...omnisync_model.sampling.guidance import DSCFG
from ...omnisync_model.sampling.options import LipSyncOptions
from ...omnisync_model.sampling.pipeline import iter_lipsync, lipsync, plan_for_backend
from .audio import speech_inputs
from .codecs import codec_for
from .frames import check_fps, image_to_frames, warn_if_variable_rate
from .tracks import locate_track, track_arrays

log = logging.getLogger(__name__)

CROP_ABOVE = 4.0  # frames whose longer side exceeds this many times the model's resolution are cropped to the face
IMAGE_ADVICE = ("Use OmniSyncFaceCrop -> OmniSyncLipSync -> OmniSyncFacePaste, or OmniSyncLipSyncVideo (file to "
                "file, any length), for frames this large - or give fewer frames.")


@dataclass(frozen=True)
class NodeHooks:
    """What the ComfyUI glue supplies to the one-node paths (defaults: plain CPU, no progress, no interrupts).

    prepare(window_tokens) loads the model and returns its backend; progress(done, total) and check_interrupt()
    are called once per sampling step; after_vae() runs after each VAE call (VAE work may evict the model);
    budget(backend) says how much memory the run may use (default: measured for the backend's device).
    """

    prepare: Optional[Callable[[int], Backend]] = None
    progress: Optional[Callable[[int, int], None]] = None
    check_interrupt: Optional[Callable[[], None]] = None
    after_vae: Optional[Callable[[], None]] = None
    output_device: Any = "cpu"
    budget: Optional[Callable[[Backend], MemoryBudget]] = None

    def memory(self, backend: Backend) -> MemoryBudget:
        return self.budget(backend) if self.budget is not None else MemoryBudget.detect(backend.device)


@dataclass(frozen=True)
class FaceRegion:
    """Per-frame crop boxes [F,4] (x, y, w, h), the working size (h, w) and the mouth track in crop coordinates."""

    boxes: torch.Tensor
    hw: tuple[int, int]
    track: MouthTrack


def lipsync_images(backend: Backend, images: torch.Tensor, fps: Any, audio: Mapping[str, Any],
                   options: LipSyncOptions, vae: Any = None, mouth: Any = None,
                   audio_features: Optional[Mapping[str, Any]] = None,
                   hooks: NodeHooks = NodeHooks()) -> tuple[torch.Tensor, dict]:
    """The OmniSyncLipSync node without ComfyUI: IMAGE + AUDIO -> (IMAGE [F,H,W,3], AUDIO fitted to F / fps).

    Inputs are checked first (nothing runs on bad input); a missing mouth track is located (never aborts: frames
    without a face get uniform guidance and a warning). Memory is planned before the first model call (see the
    module docstring). The result is written window by window into one preallocated output, the only
    full-resolution copy made.
    """
    frames = image_to_frames(images)
    fps = check_fps(fps)
    warn_if_variable_rate(fps, "OmniSyncLipSync")
    n, height, width = frames.shape[:3]
    wave_input, fitted = speech_inputs(audio, audio_features, n, fps)
    codec = codec_for(backend, vae, after_vae=hooks.after_vae)
    first = plan_for_backend(n, options, backend, codec.temporal_factor)[0]  # checks the window rules too
    track = mouth if mouth is not None else locate_track(frames, hooks.check_interrupt)
    region = None
    if scale_over_native(backend, height, width) > CROP_ABOVE:
        region = face_region(backend, codec, track, frames, hooks.check_interrupt, "too_large")
    work_hw = region.hw if region is not None else (height, width)
    if hooks.prepare is not None:
        backend = hooks.prepare(backend.window_tokens(first.length, work_hw[0], work_hw[1], codec))
    options, region = _plan_memory(backend, codec, options, frames, track, region, hooks)
    out = torch.empty((n, height, width, 3), dtype=torch.float32, device=hooks.output_device)
    if region is None:
        centres, valid = track_arrays(track, n)
        lipsync(frames, fps, wave_input, backend, codec, options, out=out, mouth_centres=centres,
                mouth_valid=valid, progress=hooks.progress, check_interrupt=hooks.check_interrupt)
    else:
        _lipsync_face(frames, fps, wave_input, backend, codec, options, region, out, hooks)
    return out, fitted


def _plan_memory(backend: Backend, codec, options: LipSyncOptions, frames: torch.Tensor, track: Any,
                 region: Optional[FaceRegion], hooks: NodeHooks) -> tuple[LipSyncOptions, Optional[FaceRegion]]:
    """Options that fit the memory budget (window shrunk if needed), cropping to the face when the whole frame does
    not fit at all; InsufficientMemoryError (naming the figures and what to use instead) when nothing fits."""
    n, height, width = frames.shape[:3]
    budget = hooks.memory(backend)
    resident = MemoryNeed().plus("input frames", frames_bytes(n, height, width))

    def attempt(reg: Optional[FaceRegion]) -> LipSyncOptions:
        hw = reg.hw if reg is not None else (height, width)
        what = describe_frames(n, height, width) + (f" (face crop at {hw[1]}x{hw[0]})" if reg is not None else "")

        def need(window: int) -> MemoryNeed:
            return image_run_need(backend, codec, window, (n, height, width), hw, budget.shared, reg is not None)

        return fit_window(options, backend, codec, need, budget, what, IMAGE_ADVICE, already=resident)[0]

    try:
        return attempt(region), region
    except InsufficientMemoryError:
        if region is not None or not backend.crop_rules.resolution:
            raise
        try:
            region = face_region(backend, codec, track, frames, hooks.check_interrupt, "memory")
        except ValueError:
            raise InsufficientMemoryError(
                f"not enough memory for {describe_frames(n, height, width)} and no face to crop to: "
                f"{IMAGE_ADVICE}") from None
        return attempt(region), region


def face_region(backend: Backend, codec, track: Any, frames: torch.Tensor,
                check_interrupt: Optional[Callable[[], None]], reason: str) -> FaceRegion:
    """Crop boxes around the located face at the model's resolution (warning, saying why and what to use for control);
    ValueError when no face is found."""
    n, height, width = frames.shape[:3]
    native = max(backend.crop_rules.resolution)
    if not isinstance(track, MouthTrack) or len(track) != n:
        track = locate_track(frames, check_interrupt)  # an external track has no face boxes to crop to
    if not bool(track.valid.any()):
        raise ValueError(f"{describe_frames(n, height, width)} are {max(height, width) / native:.0f}x the "
                         f"{native}x{native} this model works at and no face was found to crop to. {IMAGE_ADVICE}")
    boxes = crop_boxes_from_track(track, (height, width))
    first = Box(*boxes[0].tolist())
    hw = working_size(first, native, backend.pixel_multiple(codec))
    why = (f"are {max(height, width) / native:.1f}x the {native}x{native} this model works at" if reason == "too_large"
           else "do not fit in memory as whole frames")
    log.warning("OmniSyncLipSync: %s %s: lip-syncing the face (a %dx%d box following it, worked at %dx%d) and "
                "pasting the mouth back; connect OmniSyncFaceCrop / OmniSyncFacePaste to choose the crop, or use "
                "OmniSyncLipSyncVideo for long clips", describe_frames(n, height, width), why, first.w, first.h,
                hw[1], hw[0])
    return FaceRegion(boxes, hw, map_track_to_crop(track, boxes, (height, width)))


def _lipsync_face(frames: torch.Tensor, fps: float, wave_input, backend: Backend, codec, options: LipSyncOptions,
                  region: FaceRegion, out: torch.Tensor, hooks: NodeHooks) -> None:
    """Lip-sync the face crops window by window and paste each finished chunk into ``out`` [F,H,W,3]."""
    found = int(region.track.valid.sum())
    if found < len(region.track):
        log.warning("OmniSyncLipSync: no mouth in %d of %d frames; those frames keep the source's pixels",
                    len(region.track) - found, len(region.track))
    source = CroppedFrames(frames, region.boxes, region.hw)
    for start, result in iter_lipsync(source, fps, wave_input, backend, codec, options,
                                      mouth_centres=region.track.centres, mouth_valid=region.track.valid,
                                      progress=hooks.progress, check_interrupt=hooks.check_interrupt):
        k = result.shape[0]
        weights = blend_weights("mouth", region.track, start, k, region.hw)
        pasted = paste_back_per_frame(frames[start:start + k], result, region.boxes[start:start + k],
                                      weights=weights)
        out[start:start + k] = pasted.to(out.device, out.dtype)


def make_options(tau: float, steps: int, seed: int, window: int, overlap: int, w_peak: float, w_base: float,
                 radius: float, gamma: float) -> LipSyncOptions:
    """LipSyncOptions from node widgets; ValueError (naming the widget) on inconsistent values."""
    guidance = DSCFG(w_peak=float(w_peak), w_base=float(w_base), radius=float(radius), gamma=float(gamma))
    return LipSyncOptions(tau=float(tau), steps=int(steps), seed=int(seed), window=int(window),
                          overlap=int(overlap), guidance=guidance)
