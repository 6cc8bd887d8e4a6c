"""``omnisync demo``: lip-sync a generated held-out clip with the shipped model and write things to look at.

Writes ``demo.mp4`` (source | lip-synced output side by side, with the new speech), ``mouths.png`` (a strip of mouth
crops: source on top, output below, every few frames) and prints the clip's sync / leakage / preservation figures.
"""

from __future__ import annotations

import argparse
import logging
import struct
import zlib
from pathlib import Path

import torch

from .bench import Case, measure, sync_case
from ..sampling.pipeline import LipSyncOptions
from ..media.video_io import VideoWriter

log = logging.getLogger(__name__)


def write_png(path: Path, image: torch.Tensor) -> None:
    """Write an RGB image [H,W,3] float 0..1 as an 8-bit PNG (no imaging dependency)."""
    h, w, _ = image.shape
    data = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(h))  # filter type 0 per scanline

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                     + chunk(b"IEND", b""))


def mouth_strip(source: torch.Tensor, output: torch.Tensor, boxes: torch.Tensor, every: int, scale: int = 4) -> torch.Tensor:
    """Mouth crops every ``every`` frames: source row above output row, upscaled by ``scale`` -> [H,W,3]."""
    n, h, w, _ = source.shape
    b = boxes.reshape(-1, 4)  # [F,4] or [4] -> [F,4]; the strip shows the union of all frames' boxes
    x0, y0 = b[:, :2].min(0).values.tolist()
    x1, y1 = b[:, 2:].max(0).values.tolist()
    pad = 0.35 * (x1 - x0)
    ya, yb = max(0, int((y0 - pad) * h)), min(h, int((y1 + pad) * h) + 1)
    xa, xb = max(0, int((x0 - pad) * w)), min(w, int((x1 + pad) * w) + 1)
    idx = list(range(0, n, every))
    rows = [torch.cat([frames[i, ya:yb, xa:xb] for i in idx], dim=1) for frames in (source, output)]  # [h',k*w',3]
    strip = torch.cat(rows, dim=0)
    return strip.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def run_demo(model, out_dir: Path, style: str = "sketch", seconds: float = 4.0, seed: int = 900_123,
             options: LipSyncOptions = LipSyncOptions()) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    size = int(model.config.extra.get("resolution", 64))
    clip, drive, gt, out = sync_case(model, Case(style, seed, seconds, 25.0, size), options)
    frames = clip.frames
    figures = measure(out, clip, gt, options)
    side = torch.cat([frames, out], dim=2)  # [F,H,2W,3]
    big = side.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 4x nearest upscale so it is watchable
    with VideoWriter(out_dir / "demo.mp4", 25, big.shape[2], big.shape[1], audio=(drive[None], 16000)) as writer:
        writer.write(big)
    write_png(out_dir / "mouths.png", mouth_strip(frames, out, clip.mouth_box, every=max(1, frames.shape[0] // 16)))
    return figures


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..cli.main import emit, load_model

    model = load_model(args.checkpoint, torch.device("cpu"))
    figures = run_demo(model, args.out, args.style, args.seconds, args.seed)
    emit(f"wrote {args.out / 'demo.mp4'} (source | output) and {args.out / 'mouths.png'}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    return 0
