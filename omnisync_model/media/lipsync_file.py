"""File to file lip sync, streaming: read -> crop -> lip sync -> paste back -> encode, window by window.

The input is decoded three times, so that memory is bounded by a window and not by the video's length:
1. the locator pass keeps only a few numbers per frame (mouth centre, face box, confidence) and counts the frames
   that really decode;
2. one reader feeds the cropped, resized frames to the pipeline;
3. another supplies the full-resolution frames that the finished crops are pasted into.
Per-length memory is then a handful of floats per frame plus the audio waveform.

Before the first model call the run's memory is estimated (:mod:`.run_memory`: activations of a window at the
working size, the frames being pasted, the decoders and the encoder) and the window shrunk, or the run refused,
when it would not fit. The output is never one of the inputs (refused before any work) and appears only when
complete. Timing: a variable-frame-rate source keeps every frame's timestamp in the output, and the audio is
taken at each frame's real time (``AudioInput.frame_times``); its audio is fitted to the clip's real duration.

Shape legend
  F frames   H, W frame size   h, w working (crop) size   C audio channels   N audio samples
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..core.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_rate, check_waveform
from ..core.files import refuse_same_file
from ..core.memory import MemoryBudget
from ..sampling.backend import Backend
from ..core.codec import Codec
from ..faces import TrackOptions, face_track
from ..faces.masks import has_outline, jaw_masks
from .align import (AlignTransforms, aligned_mouths, landmarks_from_track, restore, transforms_for, transforms_slice,
                    warp_crops)
from .locate import LocateOptions, MouthLocator, MouthTrack, mouth_mask_preview
from ..sampling.pipeline import AudioInput, LipSyncOptions, ProgressFn, iter_lipsync
from .regions import (Box, crop_boxes_from_track, crop_per_frame, map_track_to_crop, paste_back_per_frame,
                      repeat_box, resize, working_size)
from .run_memory import describe_frames, file_run_need, fit_window
from .streams import SequentialFrames
from .video_io import (FrameTiming, MediaError, PathLike, VideoWriter, iter_video_frames, probe_video, read_audio,
                       timing_from_stamps, video_time_base)

log = logging.getLogger(__name__)

READ_CHUNK = 16
LOCATE_SIZE = 160  # the locator works on frames downscaled to this longest side
MOUTH_RADIUS = 0.12  # mouth blend disc radius, as a fraction of the crop's shorter side (crop = 1.6x face)
BLENDS = ("mouth", "box", "jaw")
FINDERS = ("face mesh", "locator")


@dataclass(frozen=True)
class VideoResult:
    """What :func:`lipsync_video` wrote."""

    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    audio_seconds: float
    mouth_frames: int  # frames where a mouth was found (the others got uniform guidance)

    def summary(self) -> str:
        return (f"wrote {self.path}: {self.frames} frames at {float(self.fps):.3f} fps "
                f"({self.frames / float(self.fps):.2f} s), {self.width}x{self.height}, audio fitted to "
                f"{self.audio_seconds:.2f} s, mouth found in {self.mouth_frames}/{self.frames} frames")


def fit_audio(waveform: torch.Tensor, sample_rate: int, n_frames: int, fps: float,
              duration: Optional[float] = None) -> torch.Tensor:
    """Trim or zero-pad [C,N] audio to exactly the video's duration: n_frames / fps, or ``duration`` seconds
    (a variable-frame-rate clip's real length)."""
    seconds = n_frames / fps if duration is None else duration
    want = int(round(seconds * sample_rate))
    if waveform.shape[-1] >= want:
        return waveform[..., :want]
    pad = torch.zeros(waveform.shape[0], want - waveform.shape[-1], dtype=waveform.dtype)
    return torch.cat((waveform, pad), dim=-1)


def speech_channels(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[N] or [C,N] speech -> [C,N] float32; ValueError naming the audio when it is empty, not finite, or at a rate
    the model does not take."""
    wave = torch.as_tensor(waveform)
    if wave.dim() == 1:
        wave = wave[None]  # [N] -> [1,N]
    if wave.dim() != 2:
        raise ValueError(f"audio must be [channels, samples], got {list(wave.shape)}")
    check_waveform(wave, "audio")
    check_rate(sample_rate, "audio sample rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    return wave.float()


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    return blend


def locate_in_video(video: PathLike, work: int = LOCATE_SIZE, options: LocateOptions = LocateOptions(),
                    on_chunk: Optional[Callable[[int], None]] = None,
                    stamps: Optional[list] = None) -> MouthTrack:
    """Mouth track of a whole video file by the weight-free locator alone, on frames downscaled to ``work`` px
    (streamed: memory does not grow with the video). ``on_chunk(frames_done)`` runs after every decoded chunk
    (progress, interrupts); ``stamps`` (a list) receives every decoded frame's pts."""
    locator = MouthLocator(options)
    for chunk in iter_video_frames(video, READ_CHUNK, stamps=stamps):
        h, w = chunk.shape[1:3]
        scale = min(1.0, work / max(h, w))
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        locator.add((resize(chunk, hw) * 255).round().to(torch.uint8))  # [n,h',w',3]
        if on_chunk is not None:
            on_chunk(len(locator))
    if len(locator) == 0:
        raise MediaError(f"{video} has no decodable video frames")
    return locator.finish()


def track_video(video: PathLike, finder: str = "face mesh", keep_landmarks: bool = False,
                on_chunk: Optional[Callable[[int], None]] = None, stamps: Optional[list] = None,
                fps: Optional[float] = None) -> tuple[MouthTrack, Optional[torch.Tensor]]:
    """(mouth track, pixel landmarks [F,478,2] or None) of a whole video file, streamed.

    finder "face mesh": the face detector + mesh followed frame to frame (frames it misses fall back to the
    weight-free locator, then to their neighbours); "locator": :func:`locate_in_video`. ``fps``: the video's rate (the tracker smooths in
    seconds), probed when not given."""
    if finder not in FINDERS:
        raise ValueError(f"finder must be one of {FINDERS}, got {finder!r}")
    if finder == "locator":
        return locate_in_video(video, on_chunk=on_chunk, stamps=stamps), None
    fps = float(fps if fps is not None else probe_video(video).fps)
    track = face_track(iter_video_frames(video, READ_CHUNK, stamps=stamps), fps,
                       TrackOptions(keep_landmarks=keep_landmarks, chunk=READ_CHUNK), progress=on_chunk)
    if len(track) == 0:
        raise MediaError(f"{video} has no decodable video frames")
    landmarks = landmarks_from_track(track) if keep_landmarks and track.landmarks is not None else None
    return track.mouth_track(), landmarks


def plan_boxes(box: Optional[str], track: MouthTrack, height: int, width: int) -> torch.Tensor:
    """Per-frame crop boxes [F,4]: 'auto' follows the located face; 'x,y,w,h' is fixed; None is the whole frame."""
    if box == "auto":
        return crop_boxes_from_track(track, (height, width))
    region = Box.parse(box).check(height, width) if box else Box(0, 0, width, height)
    return repeat_box(region, len(track))


def lipsync_video(video: PathLike, waveform: torch.Tensor, sample_rate: int, out: PathLike, backend: Backend,
                  options: LipSyncOptions, box: Optional[str] = None, size: Optional[int] = None,
                  blend: str = "mouth", codec: Optional[Codec] = None, progress: Optional[ProgressFn] = None,
                  check_interrupt: Optional[Callable[[], None]] = None, budget: Optional[MemoryBudget] = None,
                  inputs: Sequence[Optional[PathLike]] = (), finder: str = "face mesh") -> VideoResult:
    """Lip-sync the video file ``video`` to ``waveform`` [C,N] and write ``out`` (H.264 + AAC, the audio trimmed or
    zero-padded to the video's duration). Nothing is written unless every frame was.

    ``box``: 'auto' (follow the located face), 'x,y,w,h' pixels, or None (the whole frame). ``blend``: 'mouth'
    takes only a soft disc around the located mouth from the result (the rest of the box keeps its full-resolution
    pixels); 'jaw' the lips, chin and jaw outlined by the face mesh (the disc where the mesh found no face); 'box'
    takes the whole box. Pixels outside the box are never touched before encoding. ``codec``: the
    backend's own codec unless given (e.g. a VAE). ``out`` must not be ``video`` nor any of ``inputs`` (refused
    first). ``budget``: the memory free for the run (default: measured now for the backend's device); the window
    is shrunk, or the run refused, before the first model call when it would not fit. ``finder``: how faces are
    found (:func:`track_video`); with ``box`` 'auto' and a backend whose faces are aligned to a template
    (``crop_rules.alignment == "similarity"``, LatentSync) the crops are warped to that template from the mesh
    landmarks and pasted back by the inverse warp; frames without a face pass through untouched.
    """
    out = refuse_same_file(out, video, *inputs)
    check_blend(blend)
    wave = speech_channels(waveform, sample_rate)
    probed, fps, width, height, _ = probe_video(video)
    stamps: list = []
    aligned = backend.crop_rules.alignment == "similarity" and box == "auto"
    track, landmarks = track_video(video, finder, keep_landmarks=aligned, stamps=stamps, fps=float(fps),
                                   on_chunk=(lambda _done: check_interrupt()) if check_interrupt else None)
    n = len(track)  # frames that really decode (a container's count can be off)
    if n != probed:
        log.warning("%s: the container says %d frames, %d decode; using %d", video, probed, n, n)
    timing = _timing(video, stamps, fps)
    boxes = plan_boxes(box, track, height, width)
    crop_track = map_track_to_crop(track, boxes, (height, width))
    codec = backend.prepare_codec(codec)
    first = Box(*boxes[0].tolist())
    native = backend.crop_rules.resolution
    target = size or (max(native) if native else max(first.w, first.h))
    hw = working_size(first, target, backend.pixel_multiple(codec))
    align = None
    if landmarks is not None and bool(torch.isfinite(landmarks).any()):
        align = transforms_for(landmarks, target, (height, width))  # the family's face template, smoothed
        centres, valid = aligned_mouths(landmarks, align)
        crop_track = MouthTrack(centres, valid, crop_track.face_boxes, crop_track.confidence)
        hw = (target, target)
        log.info("%s: faces aligned to the model's template in %d/%d frames", video, int(align.valid.sum()), n)
    found = int(crop_track.valid.sum())
    log.info("%s: %d frames %dx%d at %s fps; box %s (%s) -> %dx%d, %d/%d frames with a mouth", video, n, width,
             height, fps, first, box or "whole frame", hw[1], hw[0], found, n)
    budget = budget if budget is not None else MemoryBudget.detect(backend.device)
    shared = budget.shared
    options, _ = fit_window(options, backend, codec,
                            lambda win: file_run_need(backend, codec, win, n, (height, width), hw, shared), budget,
                            f"{describe_frames(n, height, width)} worked at {hw[1]}x{hw[0]}",
                            "Lower the working size ('size'), crop to the face (region 'face (auto)' / --box auto) "
                            "or use a smaller window.")

    crops = SequentialFrames(_cropped(video, boxes, hw) if align is None else _aligned(video, align), n)
    fulls = _frames_one_by_one(iter_video_frames(video, READ_CHUNK))
    duration = timing.duration if timing.variable else None
    audio_out = fit_audio(wave, sample_rate, n, float(fps), duration)
    frame_times = torch.from_numpy(timing.times) if timing.variable else None
    speech = AudioInput(waveform=wave, sample_rate=sample_rate, frame_times=frame_times)
    pts = timing.relative if timing.variable else None
    with VideoWriter(out, timing.average_fps, width, height, audio=(audio_out, sample_rate),
                     time_base=timing.time_base if timing.variable else None) as writer:
        for start, result in iter_lipsync(crops, float(timing.average_fps), speech, backend, codec, options,
                                          mouth_centres=crop_track.centres, mouth_valid=crop_track.valid,
                                          progress=progress, check_interrupt=check_interrupt):
            k = result.shape[0]
            full = torch.stack([next(fulls) for _ in range(k)])  # [k,H,W,3] originals
            if align is not None:  # the inverse warp with the family's eroded, blurred mask
                pasted = restore(full, result, transforms_slice(align, start, start + k))
            else:
                pasted = paste_back_per_frame(full, result, boxes[start:start + k],
                                              weights=blend_weights(blend, crop_track, start, k, hw))
            writer.write(pasted, pts=None if pts is None else pts[start:start + k])
    return VideoResult(Path(out), n, timing.average_fps, width, height, audio_out.shape[-1] / sample_rate, found)


def _timing(video: PathLike, stamps: list, fps: Fraction) -> FrameTiming:
    """The decoded frames' timing; a variable frame rate is kept (warning: the IMAGE nodes cannot keep it)."""
    timing = timing_from_stamps(stamps, video_time_base(video), fps)
    if timing.variable:
        log.warning("%s has a variable frame rate (%s): every frame keeps its timestamp and the audio is taken at "
                    "each frame's real time", video, timing.describe())
    return timing


def lipsync_file(video: Path, audio: Path, out: Path, backend: Backend, options: LipSyncOptions,
                 box: Optional[str] = None, size: Optional[int] = None, blend: str = "mouth",
                 progress: Optional[ProgressFn] = None, codec: Optional[Codec] = None,
                 budget: Optional[MemoryBudget] = None) -> str:
    """:func:`lipsync_video` with the speech read from the file ``audio`` (a video file's audio is aligned to its
    first frame). ``out`` may be neither input (refused before anything is read). Returns a one-line summary."""
    refuse_same_file(out, video, audio)
    wave, sr = read_audio(audio, align_to_video=True)
    result = lipsync_video(video, wave, sr, out, backend, options, box=box, size=size, blend=blend, codec=codec,
                           progress=progress, budget=budget, inputs=(audio,))
    return result.summary()


def blend_weights(blend: str, crop_track: MouthTrack, start: int, k: int,
                   hw: tuple[int, int]) -> Optional[torch.Tensor]:
    """[k,h,w] paste-back weights of frames start..start+k (made per chunk: [F,h,w] for a long video is large):
    None for 'box' (the whole crop); the soft mouth disc for 'mouth'; for 'jaw', the lips-and-jaw mask from the
    face mesh (:mod:`~omnisync_model.faces.masks`) where the mesh found the face, the mouth disc elsewhere."""
    if blend == "box":
        return None
    part = crop_track.frames(start, start + k)
    if blend != "jaw" or part.jaw is None:
        return mouth_mask_preview(part, hw[0], hw[1], MOUTH_RADIUS)
    found = has_outline(part.jaw) & part.valid
    weights = mouth_mask_preview(dataclasses.replace(part, valid=part.valid & ~found), hw[0], hw[1], MOUTH_RADIUS)
    if bool(found.any()):  # the disc only where there is no outline (zeros elsewhere), the jaw mask there
        weights[found] = jaw_masks(part.jaw[found], hw[0], hw[1])
    return weights


def _cropped(video: PathLike, boxes: torch.Tensor, hw: tuple[int, int]) -> Iterator[torch.Tensor]:
    """Stream the video's frames cropped at each frame's box and resized to ``hw``."""
    start = 0
    for chunk in iter_video_frames(video, READ_CHUNK):
        chunk = chunk[: max(0, boxes.shape[0] - start)]  # frames past the located count (never used) are dropped
        if chunk.shape[0]:
            yield crop_per_frame(chunk, boxes[start:start + chunk.shape[0]], hw)
        start += chunk.shape[0]


def _aligned(video: PathLike, align: AlignTransforms) -> Iterator[torch.Tensor]:
    """Stream the video's frames warped to the aligned crops [n,R,R,3] (grey where a frame has no face)."""
    start = 0
    for chunk in iter_video_frames(video, READ_CHUNK):
        chunk = chunk[: max(0, len(align) - start)]
        if chunk.shape[0]:
            yield warp_crops(chunk, transforms_slice(align, start, start + chunk.shape[0]))
        start += chunk.shape[0]


def _frames_one_by_one(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        yield from chunk
