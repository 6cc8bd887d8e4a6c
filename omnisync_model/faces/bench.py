"""Measurements of the face tracker for reports (not timed tests): coverage, jitter, smoothness, speed, and the
detection rate per style of the synthetic suite.

    python -m omnisync_model.faces.bench --video clip.mp4 [--out DIR] [--threads 2] [--frames N]

- Coverage: frames with a mesh (source "mesh") out of all frames.
- Jitter: frame-to-frame motion of the four eye corners after removing the head's motion (a least-squares
  similarity transform fitted on rigid points between consecutive frames), in frame pixels; raw landmarks and
  smoothed output.
- Smoothness of the face box centre path: mean absolute second difference (px / frame^2), raw and smoothed; with
  matplotlib, a plot of the centre over time (``box_centre.png``).
- Speed per frame on ``threads`` CPU threads: detection + mesh (every frame detected), and tracking only (mesh
  from the previous frame's ROI), median over the frames.
- Synthetic suite: per style, the fraction of frames where the mesh finds the face, and the mean mouth-centre
  error (normalised) of the track (with its fallbacks) and of the weight-free locator alone.

Shape legend
  F  frames      P  landmarks
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import roi as R
from .landmarker import FaceLandmarker
from .topology import EYE_CORNERS, RIGID
from .smoothing import LandmarkSmoother, similarity_fit
from .tracker import FaceTrack, TrackOptions, face_track

log = logging.getLogger(__name__)


def read_video(path: Path, limit: Optional[int] = None) -> tuple[list[np.ndarray], float]:
    """RGB uint8 frames [H,W,3] and the frame rate (PyAV)."""
    import av  # a dependency of the pack

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if limit and len(frames) >= limit:
                break
    return frames, fps


def eye_jitter(landmarks_px: torch.Tensor) -> torch.Tensor:
    """Residual motion [F-1,4] (px) of the eye corners between consecutive frames after a similarity fit on the
    rigid points; landmarks [F,P,>=2] in pixels (NaN frames give NaN rows)."""
    out = []
    rigid, corners = list(RIGID), list(EYE_CORNERS)
    lm = landmarks_px[..., :2].double()
    for t in range(1, lm.shape[0]):
        a, b = lm[t - 1], lm[t]
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            out.append(torch.full((len(corners),), float("nan"), dtype=torch.float64))
            continue
        m = similarity_fit(a[rigid], b[rigid])
        pred = a[corners] @ m[:, :2].T + m[:, 2]
        out.append((b[corners] - pred).norm(dim=1))
    return torch.stack(out).float()


def second_difference(path: torch.Tensor) -> float:
    """Mean |x[t+1] - 2 x[t] + x[t-1]| of a path [F,2] (px per frame^2)."""
    d2 = path[2:] - 2 * path[1:-1] + path[:-2]
    return float(d2.norm(dim=1).nanmean())


def _stats(v: torch.Tensor) -> dict:
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {}
    return {"mean": round(float(v.mean()), 4), "median": round(float(v.median()), 4),
            "p95": round(float(v.quantile(0.95)), 4), "max": round(float(v.max()), 4)}


def _pixels(track: FaceTrack) -> torch.Tensor:
    h, w = track.size
    return track.landmarks[..., :2] * torch.tensor([w, h]) - 0.5


def _centres(track: FaceTrack) -> torch.Tensor:
    h, w = track.size
    return (track.boxes[:, :2] + track.boxes[:, 2:]) / 2 * torch.tensor([w, h])


def _plot(raw: torch.Tensor, smooth: torch.Tensor, fps: float, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no box-centre plot")
        return None
    t = np.arange(raw.shape[0]) / fps
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for ax, k, name in zip(axes, (0, 1), ("x", "y")):
        ax.plot(t, raw[:, k].numpy(), lw=0.8, color="0.6", label="raw landmarks")
        ax.plot(t, smooth[:, k].numpy(), lw=1.4, color="C0", label="smoothed (pose + shape One-Euro)")
        ax.set_ylabel(f"box centre {name} (px)")
    axes[0].legend(loc="best", fontsize=8)
    axes[1].set_xlabel("time (s)")
    fig.suptitle("Face box centre over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timed(fn, frames: list[np.ndarray]) -> float:
    """Median seconds per frame of ``fn(frame, index)`` over the frames (after two warm-up calls)."""
    fn(frames[0], 0)
    fn(frames[0], 0)
    times = []
    for i, f in enumerate(frames):
        t = time.perf_counter()
        fn(f, i)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def speed(landmarker: FaceLandmarker, frames: list[np.ndarray], fps: float) -> dict:
    """ms per frame (median) for detection + mesh on every frame, and for tracking only."""
    def detect_and_mesh(f, _):
        det = landmarker.detect([f])[0]
        if len(det):
            landmarker.landmarks(f, R.rois_from_detections(det.boxes[:1], det.keypoints[:1]))

    det = landmarker.detect([frames[0]])[0]
    state = {"roi": R.rois_from_detections(det.boxes[:1], det.keypoints[:1])}
    smoother = LandmarkSmoother(fps)

    def track_only(f, _):
        lm, _p = landmarker.landmarks(f, state["roi"])
        state["roi"] = R.rois_from_landmarks(lm)
        smoother(lm[0])

    full, track = _timed(detect_and_mesh, frames), _timed(track_only, frames)
    return {"detect_and_mesh_ms": round(full * 1e3, 2), "detect_and_mesh_fps": round(1 / full, 1),
            "tracking_only_ms": round(track * 1e3, 2), "tracking_only_fps": round(1 / track, 1)}


def real_clip(landmarker: FaceLandmarker, frames: list[np.ndarray], fps: float, out_dir: Optional[Path]) -> dict:
    raw = face_track(frames, fps, TrackOptions(smooth=False), landmarker=landmarker)
    smooth = face_track(frames, fps, TrackOptions(), landmarker=landmarker)
    res = {"frames": len(raw), "size": list(raw.size), "mesh_frames": raw.source.count("mesh"),
           "detector_runs": raw.detections,
           "eye_jitter_px_raw": _stats(eye_jitter(_pixels(raw))),
           "eye_jitter_px_smoothed": _stats(eye_jitter(_pixels(smooth))),
           "box_centre_d2_px_raw": round(second_difference(_centres(raw)), 4),
           "box_centre_d2_px_smoothed": round(second_difference(_centres(smooth)), 4)}
    if out_dir is not None:
        plot = _plot(_centres(raw), _centres(smooth), fps, out_dir / "box_centre.png")
        res["plot"] = str(plot) if plot else None
    return res


def synthetic_suite(landmarker: FaceLandmarker, clips: int = 3, n_frames: int = 24, size: int = 256) -> dict:
    """Per style: mesh detection rate, mouth-centre error of the track and of the locator alone."""
    from ..media.locate import locate_mouths
    from ..training.synthetic import STYLES, ClipSpec, make_clip

    out = {}
    for style in STYLES:
        found = total = 0
        err_track, err_loc = [], []
        for seed in range(clips):
            clip = make_clip(ClipSpec(seed=1000 + seed, style=style, n_frames=n_frames, size=size))
            track = face_track(clip.frames, clip.fps, landmarker=landmarker)
            found += track.source.count("mesh")
            total += len(track)
            err_track.append((track.mouths - clip.mouth_centre).norm(dim=1).mean())
            err_loc.append((locate_mouths(clip.frames).centres - clip.mouth_centre).norm(dim=1).mean())
        out[style] = {"mesh_rate": round(found / total, 3), "mouth_error_track": round(float(np.mean(err_track)), 4),
                      "mouth_error_locator_only": round(float(np.mean(err_loc)), 4)}
    return out


def run(video: Optional[Path], out_dir: Optional[Path] = None, threads: int = 2, limit: Optional[int] = None,
        clips: int = 3) -> dict:
    """All measurements; writes ``faces_bench.json`` (and the plot) into ``out_dir`` when given."""
    torch.set_num_threads(threads)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    landmarker = FaceLandmarker()  # the default: the process's shared fused models (see FaceLandmarker)
    report: dict = {"threads": threads}
    with torch.no_grad():
        if video is not None:
            frames, fps = read_video(video, limit)
            report["clip"] = real_clip(landmarker, frames, fps, out_dir)
            report["speed"] = speed(landmarker, frames, fps)
            eager = FaceLandmarker(detector=landmarker.detector, mesh=landmarker.mesh, fused=False)
            report["speed_eager"] = speed(eager, frames, fps)  # the same networks without the fused runtime
        report["synthetic"] = synthetic_suite(landmarker, clips)
    if out_dir is not None:
        (out_dir / "faces_bench.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Face tracker measurements")
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--clips", type=int, default=3, help="synthetic clips per style")
    args = parser.parse_args(argv)
    from ..cli.main import emit  # the command line's one place that prints

    emit(json.dumps(run(args.video, args.out, args.threads, args.frames, args.clips), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
