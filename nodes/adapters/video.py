"""ComfyUI-free logic of OmniSyncLipSyncVideo: VIDEO file in, VIDEO file out, streamed window by window.

A ComfyUI IMAGE batch holds every frame as float32 (a 10-minute 512x512 clip at 25 fps is 47 GB), so long videos
go through files instead: the input VIDEO's own file is decoded in chunks (three passes, see
``omnisync_model.media.lipsync_file``) and the result is encoded as it is produced. Memory is bounded by a window
and checked before the first model call (the window is shrunk, or the run refused, when it would not fit).

Files: the source is only read (the output, a new name in ComfyUI's temp folder, is refused if it is the source);
results appear only when complete. A variable-frame-rate source keeps every frame's timestamp (warning), odd
sizes keep their exact size (yuv444p), a rotated phone clip comes out upright.

ComfyUI types handled here
  VIDEO  a file-backed video (core LoadVideo: a path or BytesIO) or frames in memory (core CreateVideo)
  AUDIO  {"waveform": float [B,C,N], "sample_rate": int}
"""

from __future__ import annotations

import io
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch

from ...omnisync_model.media.lipsync_file import VideoResult, check_blend, lipsync_video
from ...omnisync_model.media.video_io import VideoWriter, probe_video, to_fraction
from ...omnisync_model.sampling.backend import Backend
from ...omnisync_model.sampling.options import LipSyncOptions
from .audio import audio_from_comfy
from .codecs import codec_for
from .frames import image_to_frames, warn_if_variable_rate
from .lipsync import NodeHooks

log = logging.getLogger(__name__)

REGIONS = {"face (auto)": "auto", "whole frame": None}  # widget value -> lipsync_video's box
WRITE_CHUNK = 16


def unique_path(folder: Union[str, Path], prefix: str = "omnisync", suffix: str = ".mp4") -> Path:
    """A new file name in ``folder`` (created) that no other run uses."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{prefix}_{uuid.uuid4().hex[:12]}{suffix}"


def spool_stream(source: Union[str, Path, io.BytesIO], scratch: Union[str, Path]) -> tuple[Path, bool]:
    """(file path, whether it is a temporary copy) for a VIDEO's stream source: a path is used as is; an
    in-memory BytesIO is copied to ``scratch`` so it can be decoded several times."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"video: the file {path} does not exist")
        return path, False
    if not hasattr(source, "read"):
        raise ValueError(f"video: cannot read a stream of type {type(source).__name__}")
    path = unique_path(scratch, "omnisync_input")
    source.seek(0)
    with open(path, "wb") as f:
        shutil.copyfileobj(source, f)
    return path, True


def write_frames_file(images: torch.Tensor, frame_rate: Any, scratch: Union[str, Path],
                      check_interrupt: Optional[Callable[[], None]] = None) -> Path:
    """Frames in memory (IMAGE [F,H,W,C]) -> a temporary lossless H.264 file at the exact frame rate and size, for
    streaming (an interrupt check after every chunk; nothing is left on error or interrupt)."""
    frames = image_to_frames(images, "video")
    try:
        fps = to_fraction(frame_rate)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"video: frame rate must be positive, got {frame_rate}") from None
    warn_if_variable_rate(float(fps), "OmniSyncLipSyncVideo")
    path = unique_path(scratch, "omnisync_input")
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], crf=0, preset="veryfast") as writer:
        for i in range(0, frames.shape[0], WRITE_CHUNK):
            writer.write(frames[i:i + WRITE_CHUNK])
            if check_interrupt is not None:
                check_interrupt()
    return path


def lipsync_video_file(backend: Backend, source: Path, audio: Mapping[str, Any], out_dir: Union[str, Path],
                       options: LipSyncOptions, region: str = "face (auto)", blend: str = "mouth", size: int = 0,
                       vae: Any = None, hooks: NodeHooks = NodeHooks()) -> VideoResult:
    """The OmniSyncLipSyncVideo node without ComfyUI: lip-sync the video file ``source`` to the AUDIO and write a
    new file in ``out_dir``. Inputs are checked before any work; nothing is left behind on error or interrupt."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {list(REGIONS)}, got {region!r}")
    wave, rate = audio_from_comfy(audio)
    if int(size) < 0:
        raise ValueError(f"size must be >= 0 (0 = the model's resolution), got {size}")
    check_blend(blend)
    codec = codec_for(backend, vae, after_vae=hooks.after_vae)
    backend.window_rules.check(options.window)
    if hooks.prepare is not None:
        _, _, width, height, _ = probe_video(source)
        native = backend.crop_rules.resolution
        side = int(size) or (max(native) if native else max(width, height))
        backend = hooks.prepare(backend.window_tokens(options.window, side, side, codec))
    out = unique_path(out_dir)
    result = lipsync_video(source, wave, rate, out, backend, options, box=REGIONS[region], size=int(size) or None,
                           blend=blend, codec=codec, progress=hooks.progress, check_interrupt=hooks.check_interrupt,
                           budget=hooks.memory(backend))
    log.info("OmniSync: %s", result.summary())
    return result
