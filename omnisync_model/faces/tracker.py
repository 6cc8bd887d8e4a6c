"""Face tracking over a video: detect, follow from the previous landmarks, smooth, fall back, never abort.

Per frame (MediaPipe's face tracking, ``face_landmark_front_cpu.pbtxt``): while a face is tracked, the mesh runs on
the ROI from the previous frame's raw landmarks; the detector runs only on the first frame and after the face is
lost (presence below ``min_presence``, 0.5 as MediaPipe's tracking threshold); unlike MediaPipe, a lost frame is
re-detected at once instead of being skipped. With several faces, :mod:`.speaker` picks the speaker and keeps it.

Outputs are smoothed by :class:`.smoothing.LandmarkSmoother` (One-Euro filters on the head pose and, separately, on
the face's shape in the head frame): strong smoothing when still, almost none during fast motion, so fast moves do
not lag; the next frame's ROI still comes from the raw landmarks, as in MediaPipe.

Frames without a mesh fall back, in order, to the weight-free mouth locator (:mod:`..media.locate`), then to the
neighbouring frames (linear interpolation), then to uniform guidance (frame centre, nothing valid).

Frames stream in chunks (``chunk`` frames); only one chunk and a few numbers per frame are kept (plus the
landmarks, 478 x 3 floats per frame, unless ``keep_landmarks`` is off).

Shape legend
  F  frames      P  landmarks (478)      H, W  frame size
  outputs are normalised as the rest of the pack: x = pixel_x / W, y = pixel_y / H with pixel centres at
  (i + 0.5); depth z / W. Boxes (x0, y0, x1, y1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from ..media.locate import LocateOptions, MouthTrack, fill_invalid, locate_mouths, uniform_track
from . import roi as R
from .landmarker import FaceLandmarker, Frame, as_frame
from .smoothing import LandmarkSmoother, SmoothingOptions
from .speaker import SpeakerChoice, choose
from .topology import JAW_OUTLINE, LIPS_OUTER

log = logging.getLogger(__name__)

SOURCES = ("mesh", "locator", "neighbour", "uniform")


@dataclass(frozen=True)
class TrackOptions:
    """Detection and presence thresholds, smoothing, frames per chunk, fallback to the weight-free locator, frames
    a chosen speaker may be missing before the rule chooses again, landmarks kept per frame."""

    min_detection: float = 0.5
    min_presence: float = 0.5
    smooth: bool = True
    smoothing: SmoothingOptions = SmoothingOptions()
    chunk: int = 32
    locator: bool = True
    max_gap: int = 50
    keep_landmarks: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.min_detection <= 1 and 0 <= self.min_presence <= 1):
            raise ValueError(f"thresholds must be in 0..1: {self}")
        if self.chunk < 1 or self.max_gap < 0:
            raise ValueError(f"invalid track options {self}")


@dataclass
class FrameResult:
    """One frame of the tracker: landmarks [P,3] (frame pixels, MediaPipe's convention) or None, presence."""

    landmarks: Optional[torch.Tensor]
    presence: float
    detected: bool  # the detector ran on this frame


class FaceTracker:
    """Frame-by-frame tracking of the chosen speaker (see the module docstring)."""

    def __init__(self, landmarker: FaceLandmarker, options: TrackOptions = TrackOptions(), fps: float = 25.0,
                 choice: SpeakerChoice = SpeakerChoice()):
        self.landmarker, self.options, self.choice = landmarker, options, choice
        self.filter = LandmarkSmoother(fps, options.smoothing)
        self.roi: Optional[torch.Tensor] = None  # [1,5] ROI for the next frame
        self.last_box: Optional[torch.Tensor] = None  # [4] chosen face's last box, frame pixels
        self.missing = 0  # frames since the chosen face was last seen
        self.index = 0

    def _acquire(self, frame: torch.Tensor) -> Optional[torch.Tensor]:
        """ROI [1,5] of the speaker from a detection, or None."""
        det = self.landmarker.detect([frame])[0]
        h, w = frame.shape[:2]
        k = choose(det.boxes, self.choice, self.index, h, w, self.last_box, self.missing, self.options.max_gap)
        if k is None:
            return None
        return R.rois_from_detections(det.boxes[k:k + 1], det.keypoints[k:k + 1])

    def _mesh(self, frame: torch.Tensor, rois: torch.Tensor) -> tuple[Optional[torch.Tensor], float]:
        lm, presence = self.landmarker.landmarks(frame, rois)
        p = float(presence[0])
        ok = p >= self.options.min_presence and bool(torch.isfinite(lm).all())
        return (lm[0] if ok else None), p

    def step(self, frame: Frame) -> FrameResult:
        t, _ = as_frame(frame)
        landmarks, presence, detected = None, 0.0, False
        if self.roi is not None:
            landmarks, presence = self._mesh(t, self.roi)
        if landmarks is None:
            detected = True
            rois = self._acquire(t)
            if rois is not None:
                landmarks, presence = self._mesh(t, rois)
        self.index += 1
        if landmarks is None:
            self.roi, self.missing = None, self.missing + 1
            self.filter.reset()
            return FrameResult(None, presence, detected)
        self.roi = R.rois_from_landmarks(landmarks[None])
        lo, hi = landmarks[:, :2].aminmax(dim=0)
        self.last_box, self.missing = torch.cat([lo, hi]), 0
        if self.options.smooth:
            landmarks = self.filter(landmarks)
        return FrameResult(landmarks, presence, detected)


@dataclass(frozen=True, eq=False)
class FaceTrack:
    """Per-frame face data of a clip (normalised, see the module docstring).

    landmarks [F,478,3] (NaN where the mesh found nothing; None when not kept or never found), boxes [F,4],
    mouths [F,2] (centre of the outer lip contour), confidence [F] (mesh presence, locator confidence, 0 for
    filled frames), valid [F] (mesh or locator), source per frame (one of SOURCES), frame size (H, W), fps."""

    landmarks: Optional[torch.Tensor]
    boxes: torch.Tensor
    mouths: torch.Tensor
    confidence: torch.Tensor
    valid: torch.Tensor
    source: tuple[str, ...]
    size: tuple[int, int]
    fps: float
    detections: int = 0  # frames on which the detector ran
    jaw: Optional[torch.Tensor] = None  # [F,K,2] lip and jaw outline (JAW_OUTLINE), NaN where no mesh

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def mouth_track(self) -> MouthTrack:
        """The track as the pipeline's :class:`MouthTrack` (mouth centres, valid, face boxes, confidence)."""
        jaw = None if self.jaw is None else self.jaw.clone()
        return MouthTrack(self.mouths.clone(), self.valid.clone(), self.boxes.clone(), self.confidence.clone(), jaw)


def iter_chunks(frames: Union[Iterable[Frame], torch.Tensor, np.ndarray], size: int) -> Iterator[list[Frame]]:
    """Lists of up to ``size`` frames [H,W,C] from a [F,H,W,C] tensor / array or an iterable of frames or of
    [N,H,W,C] chunks; nothing beyond one chunk is held."""
    if isinstance(frames, (torch.Tensor, np.ndarray)) and frames.ndim == 4:
        for i in range(0, frames.shape[0], size):
            yield list(frames[i:i + size])
        return
    buf: list[Frame] = []
    for item in frames:
        parts = list(item) if getattr(item, "ndim", 0) == 4 else [item]
        for f in parts:
            buf.append(f)
            if len(buf) == size:
                yield buf
                buf = []
    if buf:
        yield buf


def _locator_fallback(frames: list[torch.Tensor]) -> Optional[MouthTrack]:
    """The weight-free locator on frames without a mesh (per frame: no smoothing, no outlier test)."""
    try:
        stack = torch.stack(frames)  # [N,H,W,C]
        return locate_mouths(stack, LocateOptions(smooth_frames=1, outlier_frames=0, chunk=max(1, len(frames))))
    except (ValueError, RuntimeError) as exc:  # e.g. frames too small for the locator's working size
        log.warning("weight-free locator failed on %d frames (%s): using neighbouring frames", len(frames), exc)
        return None


class _Collector:
    """Per-frame results in the pack's normalised coordinates."""

    def __init__(self, keep_landmarks: bool):
        self.keep = keep_landmarks
        self.landmarks: list[torch.Tensor] = []
        self.boxes: list[torch.Tensor] = []
        self.mouths: list[torch.Tensor] = []
        self.jaw: list[torch.Tensor] = []
        self.conf: list[float] = []
        self.source: list[Optional[str]] = []
        self.size: Optional[tuple[int, int]] = None
        self.detections = 0

    def add_chunk(self, frames: list[torch.Tensor], results: list[FrameResult], locator: bool) -> None:
        h, w = self.size
        scale = torch.tensor([w, h, w], dtype=torch.float32)
        missing = [i for i, r in enumerate(results) if r.landmarks is None]
        located = _locator_fallback([frames[i] for i in missing]) if (missing and locator) else None
        nan = torch.full((4,), float("nan"))
        for i, r in enumerate(results):
            self.detections += int(r.detected)
            if r.landmarks is not None:
                lm = (r.landmarks + torch.tensor([0.5, 0.5, 0.0])) / scale  # MediaPipe pixels -> normalised
                self.boxes.append(torch.cat([lm[:, :2].amin(0), lm[:, :2].amax(0)]))
                self.mouths.append(lm[list(LIPS_OUTER), :2].mean(0))
                self.jaw.append(lm[list(JAW_OUTLINE), :2])
                self.conf.append(r.presence)
                self.source.append("mesh")
            else:
                lm = torch.full((478, 3), float("nan"))
                self.jaw.append(torch.full((len(JAW_OUTLINE), 2), float("nan")))
                j = missing.index(i)
                if located is not None and bool(located.valid[j]):
                    self.boxes.append(located.face_boxes[j].float())
                    self.mouths.append(located.centres[j].float())
                    self.conf.append(float(located.confidence[j]))
                    self.source.append("locator")
                else:
                    self.boxes.append(nan)
                    self.mouths.append(nan[:2])
                    self.conf.append(0.0)
                    self.source.append(None)
            if self.keep:
                self.landmarks.append(lm)

    def finish(self, fps: float) -> FaceTrack:
        n = len(self.source)
        if n == 0:
            raise ValueError("face tracking needs at least one frame, got none")
        boxes, mouths = torch.stack(self.boxes), torch.stack(self.mouths)
        valid = torch.tensor([s is not None for s in self.source])
        source = [s or "neighbour" for s in self.source]
        if bool(valid.any()):
            filled = fill_invalid(torch.cat([mouths, boxes], 1), valid)  # [F,6]
            mouths, boxes = filled[:, :2], filled[:, 2:]
        else:
            log.warning("no face found in any of %d frames: frame centre and uniform guidance", n)
            u = uniform_track(n)
            mouths, boxes, source = u.centres, u.face_boxes, ["uniform"] * n
        meshed = "mesh" in self.source
        lms = torch.stack(self.landmarks) if self.keep and meshed else None
        jaw = torch.stack(self.jaw) if meshed else None
        return FaceTrack(lms, boxes.contiguous(), mouths.contiguous(), torch.tensor(self.conf), valid, tuple(source),
                         self.size, fps, self.detections, jaw)


def face_track(frames: Union[Iterable[Frame], torch.Tensor, np.ndarray], fps: float = 25.0,
               options: TrackOptions = TrackOptions(), choice: SpeakerChoice = SpeakerChoice(),
               landmarker: Optional[FaceLandmarker] = None, device=None,
               progress: Optional[Callable[[int], None]] = None) -> FaceTrack:
    """Track the speaker's face through ``frames`` (a [F,H,W,C] tensor / array, or an iterable of frames or chunks;
    uint8 or float 0..1; grey, RGB or RGBA) with the whole fallback chain. ``progress(frames_done)`` is called after
    each chunk (a place for interrupt checks). Raises ValueError only for unusable input (no frames, wrong rank,
    frames changing size)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    fl = landmarker or FaceLandmarker(device=device, min_detection=options.min_detection)
    tracker = FaceTracker(fl, options, fps, choice)
    out = _Collector(options.keep_landmarks)
    done = 0
    for chunk in iter_chunks(frames, max(1, options.chunk)):
        tensors = [as_frame(f)[0] for f in chunk]
        for t in tensors:
            if out.size is None:
                out.size = (int(t.shape[0]), int(t.shape[1]))
            elif tuple(t.shape[:2]) != out.size:
                raise ValueError(f"frames changed size from {out.size[1]}x{out.size[0]} to {t.shape[1]}x{t.shape[0]}")
        results = [tracker.step(t) for t in tensors]
        out.add_chunk(tensors, results, options.locator)
        done += len(chunk)
        if progress is not None:
            progress(done)
    return out.finish(fps)
