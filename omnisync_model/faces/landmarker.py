"""Face detection and landmarks on whole frames: MediaPipe's pre- and post-processing around the two networks.

``FaceLandmarker.detect`` letterboxes a frame to 128x128, runs BlazeFace, decodes and suppresses as MediaPipe
does, and projects boxes and keypoints back to frame pixels. ``FaceLandmarker.landmarks`` crops each face ROI to
192x192, runs the mesh, refines to 478 points and projects them to frame pixels with their presence probability.

Frames are ``[H,W,C]`` tensors or arrays, uint8 (0..255) or float (0..1), with 1 (grey), 3 (RGB) or 4 (RGBA:
alpha ignored) channels; NaN samples count as black. Only the region around a face is read (converted to float;
the detector's letterbox of a large frame reads just its samples' pixels), so a 4K frame costs about what a 1080p
one does.

Shape legend
  H, W, C  frame size     N  ROIs / faces     D  detections     P  landmarks (478)
  pixel coordinates: integer values at pixel centres (MediaPipe's); ROIs [N,5] (cx, cy, w, h, rotation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from . import roi as R
from .detector import BlazeFace, Detections, decode, ssd_anchors, weighted_nms
from .mesh import FaceMesh
from .runtime import FusedRunner
from .weights import load_detector, load_mesh

Frame = Union[torch.Tensor, np.ndarray]


class FrameError(ValueError):
    """A frame that cannot be read as an image (wrong rank or channel count)."""


def as_frame(frame: Frame) -> tuple[torch.Tensor, float]:
    """A frame as a [H,W,C] tensor (no copy when possible) and the factor that maps its values to 0..255."""
    if isinstance(frame, np.ndarray):  # strided arrays (PyAV pads rows) are read in place; negative steps copied
        t = torch.from_numpy(frame if all(st >= 0 for st in frame.strides) else np.ascontiguousarray(frame))
    else:
        t = frame
    if t.dim() == 2:
        t = t[..., None]  # [H,W] grey -> [H,W,1]
    if t.dim() != 3 or t.shape[-1] not in (1, 3, 4) or min(t.shape[:2]) < 1:
        raise FrameError(f"a frame must be [height, width, 1|3|4 channels], got {list(t.shape)}")
    if t.dtype == torch.uint8:
        return t, 1.0
    if not (t.is_floating_point() or t.dtype in (torch.int16, torch.int32, torch.int64)):
        raise FrameError(f"unsupported frame dtype {t.dtype}")
    return t, (255.0 if t.is_floating_point() else 1.0)


def model_input(frame: torch.Tensor, value_scale: float, rois: torch.Tensor, n: int, border: str,
                value_range: tuple[float, float], device, dtype,
                matrices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[N,3,n,n] model input for each ROI of one frame (8-bit rounding as MediaPipe's warp); ``matrices``: the ROIs'
    :func:`.roi.roi_matrix`, when at hand."""
    lo, hi = value_range
    mats = R.roi_matrix(rois, n) if matrices is None else matrices
    x = torch.empty(len(mats), 3, n, n, device=frame.device, memory_format=torch.channels_last)  # [N,3,n,n] float32
    for i, m in enumerate(mats):
        v = R.sample_bands(frame, m, n, border)  # [P,C,n/P,n] float32, our own buffer: updated in place below
        if value_scale != 1.0:  # float frames (0..1; NaN counts as black); integer frames have no NaN
            v = torch.nan_to_num_(v.mul_(value_scale))
        v = v.add_(0.5).floor_()  # 8-bit rounding (ties up, as OpenCV's fixed-point warp)
        if frame.dtype != torch.uint8:  # bilinear samples of 8-bit pixels stay within 0..255
            v = v.clamp_(0, 255)
        v = v.transpose(0, 1)  # [C,P,n/P,n]
        v = v[:3] if v.shape[0] >= 3 else v.expand(3, -1, -1, -1)  # RGBA -> RGB, grey -> RGB
        torch.mul(v, (hi - lo) / 255.0, out=x[i].unflatten(1, v.shape[1:3]))  # into [3,P,n/P,n] view of row i
    if lo:
        x = x.add_(lo)
    return x.to(device=device, dtype=dtype)


@dataclass(frozen=True, eq=False)
class FaceModels:
    """The two networks (channels-last: faster for these small convolution stacks) and the runners that call them."""

    detector: BlazeFace
    mesh: FaceMesh
    run_detector: FusedRunner
    run_mesh: FusedRunner

    @classmethod
    def build(cls, detector: BlazeFace, mesh: FaceMesh, fused: bool) -> "FaceModels":
        detector = detector.to(memory_format=torch.channels_last)
        mesh = mesh.to(memory_format=torch.channels_last)
        return cls(detector, mesh, FusedRunner(detector, fused), FusedRunner(mesh, fused))


@functools.lru_cache(maxsize=1)
def shipped_cpu_models() -> FaceModels:
    """The shipped detector and mesh on CPU in float32 with fused runners, loaded once per process.

    A process-wide cache on purpose: TorchScript never frees a trace (its global compilation unit and fusion caches
    keep every graph; measured ~50 MB per detector + mesh pair, pytorch/pytorch#35600), so landmarkers share these
    traces instead of building their own each run. Read-only: never change these models' weights."""
    return FaceModels.build(load_detector(), load_mesh(), fused=True)


class FaceLandmarker:
    """The detector and the mesh with MediaPipe's processing. Models load from the shipped weights unless given.

    ``fused`` (default None: automatic) runs both networks on CPU float32 through fused frozen traces
    (:mod:`.runtime`: the networks about 2x faster, same outputs to 1e-4 of their scale). Automatic: a CPU float32
    landmarker of the shipped weights with torch.nn layers uses :func:`shipped_cpu_models` (traced once per
    process, shared); anything else runs eagerly. ``fused=True`` with models of your own traces them for this
    landmarker: TorchScript never frees a trace, so build such a landmarker once and reuse it. ``fused=False`` is
    always eager. After changing the weights of fused models of your own, call :meth:`reset`."""

    def __init__(self, device=None, dtype=None, operations=nn, detector: Optional[BlazeFace] = None,
                 mesh: Optional[FaceMesh] = None, min_detection: float = 0.5, fused: Optional[bool] = None):
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        shipped = detector is None and mesh is None and operations is nn
        if fused is not False and shipped and self.device.type == "cpu" and self.dtype == torch.float32:
            models = shipped_cpu_models()
        else:
            models = FaceModels.build(
                detector if detector is not None else load_detector(None, self.device, self.dtype, operations),
                mesh if mesh is not None else load_mesh(None, self.device, self.dtype, operations), bool(fused))
        self.models = models
        self.min_detection = min_detection
        self.anchors = ssd_anchors(self.detector.config).to(self.device)

    @property
    def detector(self) -> BlazeFace:
        return self.models.detector

    @property
    def mesh(self) -> FaceMesh:
        return self.models.mesh

    @property
    def _run_detector(self) -> FusedRunner:
        return self.models.run_detector

    @property
    def _run_mesh(self) -> FusedRunner:
        return self.models.run_mesh

    def reset(self) -> None:
        """Rebuild the fused traces on the next call, after changing the weights of models of your own (the shared
        shipped models never change; TorchScript keeps the old traces' memory)."""
        self._run_detector.reset()
        self._run_mesh.reset()

    # ------------------------------------------------------------------------------------------------ detection

    @torch.no_grad()
    def detect_raw(self, frames: list[Frame]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Letterbox and run the detector on several frames at once: raw ([B,A,16], [B,A,1]) and frame sizes."""
        n = self.detector.config.input_size
        xs, sizes = [], []
        for f in frames:
            t, scale = as_frame(f)
            sizes.append((t.shape[0], t.shape[1]))
            xs.append(model_input(t, scale, R.letterbox_rois(t.shape[0], t.shape[1]), n, "zero", (-1.0, 1.0),
                                  self.device, self.dtype))
        boxes, scores = self._run_detector(torch.cat(xs))
        return boxes, scores, sizes

    @torch.no_grad()
    def detect(self, frames: list[Frame]) -> list[Detections]:
        """Faces in each frame, best first: boxes [D,4] (x0, y0, x1, y1), keypoints [D,6,2] in frame pixels."""
        raw_boxes, raw_scores, sizes = self.detect_raw(frames)
        cfg = self.detector.config
        box, kps, score = decode(raw_boxes, raw_scores, self.anchors, cfg)
        out = []
        for i, (h, w) in enumerate(sizes):
            d = weighted_nms(box[i].cpu(), kps[i].cpu(), score[i].cpu(), self.min_detection, cfg.nms_iou)
            lb = R.letterbox_rois(h, w)[0]  # tensor 0..1 -> frame pixels: left + x * side
            side, left, top = lb[2], lb[0] - lb[2] / 2, lb[1] - lb[3] / 2
            shift = torch.stack([left, top])
            out.append(Detections(d.boxes * side + shift.repeat(2), d.keypoints * side + shift, d.scores))
        return out

    # ------------------------------------------------------------------------------------------------ landmarks

    @torch.no_grad()
    def landmarks_raw(self, frame: Frame, rois: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mesh's outputs for each ROI [N,5] of one frame (192-pixel units; see :class:`.mesh.FaceMesh`)."""
        rois = rois.float()
        return self._mesh_outputs(frame, rois, R.roi_matrix(rois, self.mesh.config.input_size))

    @torch.no_grad()
    def landmarks(self, frame: Frame, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """478 landmarks [N,478,3] in frame pixels (z scaled like x) and presence probabilities [N]."""
        rois = rois.float()
        n = self.mesh.config.input_size
        mats = R.roi_matrix(rois, n)  # [N,2,3], for the crop and the projection back
        raw = self._mesh_outputs(frame, rois, mats)
        points = raw["landmarks"].float().cpu()  # refined in the network (one gather)
        return R.project(points, rois, n, mats), torch.sigmoid(raw["presence"].float()).cpu()

    def _mesh_outputs(self, frame: Frame, rois: torch.Tensor, mats: torch.Tensor) -> dict[str, torch.Tensor]:
        t, scale = as_frame(frame)
        x = model_input(t, scale, rois, self.mesh.config.input_size, "replicate", (0.0, 1.0), self.device, self.dtype,
                        mats)
        return self._run_mesh(x)
