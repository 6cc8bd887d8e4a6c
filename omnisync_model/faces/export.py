"""Writing a :class:`.tracker.FaceTrack` out: per-frame JSON and a preview with the points drawn.

JSON layout (``format`` "omnisync-face-track", version 1)::

    {"format": ..., "version": 1, "fps": 25.0, "width": W, "height": H, "frames": F, "landmarks": 478,
     "coordinates": "...", "track": [
        {"frame": 0, "source": "mesh", "valid": true, "confidence": 0.998, "box": [x0, y0, x1, y1],
         "mouth": [x, y], "landmarks": [[x, y, z], ...]},   # landmarks null where the mesh found nothing
        ...]}

Shape legend
  F  frames      N  frames in a chunk      H, W, C  frame size      P  landmarks
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .speaker import SpeakerChoice
from .tracker import FaceTrack, TrackOptions, face_track

COORDINATES = ("normalised: x = pixel_x / width, y = pixel_y / height with pixel centres at (i + 0.5); "
               "z = depth / width (MediaPipe's relative depth, smaller is nearer); boxes (x0, y0, x1, y1)")
COLOURS = {"mesh": (0, 255, 0), "locator": (255, 160, 0), "neighbour": (160, 160, 160)}


def _num(v: float, digits: int = 5):
    return round(float(v), digits) if math.isfinite(float(v)) else None


def _frame_record(track: FaceTrack, i: int) -> dict:
    rec = {"frame": i, "source": track.source[i], "valid": bool(track.valid[i]),
           "confidence": _num(track.confidence[i], 4), "box": [_num(v) for v in track.boxes[i].tolist()],
           "mouth": [_num(v) for v in track.mouths[i].tolist()], "landmarks": None}
    if track.landmarks is not None and track.source[i] == "mesh":
        rec["landmarks"] = [[_num(v) for v in p] for p in track.landmarks[i].tolist()]
    return rec


def write_landmarks_json(track: FaceTrack, path: Union[str, os.PathLike]) -> Path:
    """Write the track as JSON (one frame per line inside ``track``), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"format": "omnisync-face-track", "version": 1, "fps": track.fps, "width": track.size[1],
            "height": track.size[0], "frames": len(track),
            "landmarks": 0 if track.landmarks is None else int(track.landmarks.shape[1]), "coordinates": COORDINATES}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(head)[:-1] + ', "track": [\n')
            for i in range(len(track)):
                f.write(json.dumps(_frame_record(track, i), separators=(",", ":")))
                f.write(",\n" if i + 1 < len(track) else "\n")
            f.write("]}\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _dots(img: torch.Tensor, xy: torch.Tensor, radius: int, colour: torch.Tensor) -> None:
    """Paint square dots of side 2*radius+1 at pixel positions xy [P,2] into img [H,W,C] in place."""
    h, w = img.shape[:2]
    xy = xy[torch.isfinite(xy).all(1)].round().long()
    offs = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    ys = (xy[:, 1, None] + dy.reshape(1, -1)).reshape(-1)  # [P*(2r+1)^2]
    xs = (xy[:, 0, None] + dx.reshape(1, -1)).reshape(-1)  # [P,(2r+1)^2] -> [P*(2r+1)^2]
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    img[ys[keep], xs[keep]] = colour


def _box(img: torch.Tensor, box: torch.Tensor, colour: torch.Tensor) -> None:
    """Outline a box (x0, y0, x1, y1 in pixels) one pixel wide."""
    h, w = img.shape[:2]
    if not bool(torch.isfinite(box).all()):
        return
    x0, y0, x1, y1 = [int(v) for v in box.round().tolist()]
    x0, x1 = max(0, min(x0, w - 1)), max(0, min(x1, w - 1))
    y0, y1 = max(0, min(y0, h - 1)), max(0, min(y1, h - 1))
    img[y0, x0:x1 + 1] = colour
    img[y1, x0:x1 + 1] = colour
    img[y0:y1 + 1, x0] = colour
    img[y0:y1 + 1, x1] = colour


def draw_landmarks(frames: torch.Tensor, track: FaceTrack, start: int = 0, radius: int = -1) -> torch.Tensor:
    """Copy of ``frames`` [N,H,W,C] (track frames ``start`` .. ``start`` + N - 1) with the landmarks (green), the
    face box (green for the mesh, orange for the locator, grey for filled frames) and the mouth centre drawn.
    ``radius`` < 0 picks one from the frame size. uint8 or float (0..1) frames; C of 1, 3 or 4."""
    if frames.dim() != 4:
        raise ValueError(f"frames must be [frames, height, width, channels], got {list(frames.shape)}")
    n, h, w, c = frames.shape
    if start < 0 or start + n > len(track):
        raise ValueError(f"frames {start}..{start + n - 1} are outside the track's {len(track)} frames")
    out = frames.clone()
    r = max(0, round(min(h, w) / 720)) if radius < 0 else radius
    top = 255.0 if out.dtype == torch.uint8 else 1.0
    scale = torch.tensor([w, h], dtype=torch.float32)
    for k in range(n):
        i = start + k
        src = track.source[i]
        if src not in COLOURS:
            continue
        colour = (torch.tensor(COLOURS[src], dtype=torch.float32) / 255.0 * top)
        colour = (colour[:c] if c >= 3 else colour[:1]).to(out.dtype)
        if c == 4:
            colour = torch.cat([colour[:3], torch.tensor([top], dtype=out.dtype)])
        if track.landmarks is not None and src == "mesh":
            _dots(out[k], track.landmarks[i, :, :2] * scale - 0.5, r, colour)
        _box(out[k], track.boxes[i] * scale.repeat(2) - 0.5, colour)
        _dots(out[k], (track.mouths[i] * scale - 0.5)[None], r + 2, colour)
    return out


def landmarks_command(video: Union[str, os.PathLike], json_out: Union[str, os.PathLike],
                      draw_out: Optional[Union[str, os.PathLike]] = None, options: TrackOptions = TrackOptions(),
                      choice: SpeakerChoice = SpeakerChoice(), device=None,
                      progress: Optional[Callable[[int], None]] = None) -> FaceTrack:
    """``omnisync landmarks --video F --json OUT [--draw OUT.mp4]``: track the video (streamed), write the JSON,
    and with ``draw_out`` a second decoding pass writes the preview (H.264, no audio)."""
    from ..media.video_io import VideoWriter, iter_video_frames, probe_video

    info = probe_video(video)
    track = face_track(iter_video_frames(video, chunk=options.chunk), float(info.fps), options, choice, device=device,
                       progress=progress)
    write_landmarks_json(track, json_out)
    if draw_out is not None:
        with VideoWriter(draw_out, info.fps, info.width, info.height, inputs=(video,)) as writer:
            done = 0
            for chunk in iter_video_frames(video, chunk=options.chunk):
                writer.write(draw_landmarks(chunk, track, start=done))
                done += chunk.shape[0]
    return track
