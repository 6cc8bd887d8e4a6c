"""Long-video memory benchmark: peak RSS of the file-to-file path for a short and a long clip, one run.

``omnisync longvideo`` writes synthetic talking-face clips (default 512x512, 25 fps, 1 and 10 minutes), then lip-syncs
each one in a fresh process through :func:`lipsync_file.lipsync_video`, exactly what the OmniSyncLipSyncVideo node
calls: decode in chunks -> locate -> crop -> tiny model with the pixel codec -> paste -> H.264 + AAC. Each child
holds the whole speech waveform in memory first, as ComfyUI's AUDIO does, and reports its peak RSS; the figure is
the ratio long / short. The output is checked: every frame written, the frame rate kept, audio = frames / fps.

The clip is an 8 s rendered loop repeated (rendering 15,000 frames would dominate the run); the model works on the
face crop at its resolution (64 px here), so the run is about memory and plumbing, not quality.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from ..backends.omnisync import OmniSyncBackend
from ..media.lipsync_file import lipsync_video
from .perf import build_model, current_rss_kb, peak_rss_kb, run_child, synthetic_speech
from ..sampling.pipeline import LipSyncOptions
from ..media.regions import resize
from ..media.video_io import VideoWriter, probe_video, read_audio

log = logging.getLogger(__name__)

FPS = 25
LOOP_S = 8.0
TARGET_RATIO = 1.2


def write_long_clip(path: Path, seconds: float, size: int, seed: int = 7) -> Path:
    """A ``seconds`` long talking-face clip at ``size`` px and 25 fps with speech: an 8 s loop, written in chunks."""
    from ..training.synthetic import make_talking_clip

    clip, _, _ = make_talking_clip(seed, "cartoon", LOOP_S, FPS, 128)
    frames = (resize(clip.frames, (size, size)) * 255).round().to(torch.uint8)  # [L,size,size,3]
    n_loop, total = frames.shape[0], int(round(seconds * FPS))
    with VideoWriter(path, FPS, size, size, preset="ultrafast", crf=23) as writer:
        for start in range(0, total, n_loop):
            writer.write(frames[: min(n_loop, total - start)])
    return path


def speech_waveform(seconds: float, piece_s: float = 10.0) -> torch.Tensor:
    """[1,N] float32 speech at 16 kHz, made in 10 s pieces (so making it does not need float64 of the whole)."""
    pieces, done, i = [], 0.0, 0
    while done < seconds - 1e-9:
        length = min(piece_s, seconds - done)
        pieces.append(synthetic_speech(length, seed=i))
        done, i = done + length, i + 1
    return torch.cat(pieces)[None]


def _is_clip(path: Path, frames: int, size: int) -> bool:
    if not path.is_file():
        return False
    try:
        info = probe_video(path)
    except ValueError:
        return False
    return (info.n_frames, info.width, info.height, info.fps) == (frames, size, size, FPS)


def child_run(spec: dict) -> dict:
    """One lip sync in this (fresh) process; returns RSS figures and what was written."""
    torch.set_num_threads(int(spec["threads"]))
    model = build_model("tiny")
    options = LipSyncOptions(steps=int(spec["steps"]))
    wave = speech_waveform(float(spec["seconds"]))  # [1,N] 16 kHz, held whole like a ComfyUI AUDIO
    baseline = current_rss_kb()
    t0 = time.perf_counter()
    result = lipsync_video(spec["video"], wave, 16000, spec["out"], OmniSyncBackend(model), options, box="auto",
                           size=64)
    seconds = time.perf_counter() - t0
    peak = peak_rss_kb()  # this process's own peak (not ru_maxrss, which can be the parent's)
    info = probe_video(spec["out"])
    audio, rate = read_audio(spec["out"])
    return {"frames_out": result.frames, "frames_file": info.n_frames, "fps": str(info.fps),
            "audio_s": audio.shape[-1] / rate, "baseline_kb": baseline, "peak_kb": peak, "seconds": seconds,
            "mouth_frames": result.mouth_frames}


def run_benchmark(work: Path, minutes: tuple[float, float], size: int, steps: int) -> dict:
    """Short and long clip through the file path; returns the figures and the peak-RSS ratio."""
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for m in minutes:
        clip, want = work / f"clip_{m:g}min.mp4", int(round(m * 60 * FPS))
        if not _is_clip(clip, want, size):  # a clip from an earlier run is reused
            write_long_clip(clip, m * 60, size)
        spec = {"video": str(clip), "out": str(work / f"synced_{m:g}min.mp4"), "seconds": m * 60, "steps": steps,
                "threads": torch.get_num_threads()}
        run = run_child(spec, "omnisync_model.cli.longvideo")
        run["ok_frames"] = run["frames_out"] == run["frames_file"] == want
        run["ok_audio"] = abs(run["audio_s"] - want / FPS) < 0.05  # AAC pads to whole 1024-sample frames
        runs[f"{m:g}min"] = run
        log.info("%g min: %s", m, run)
    short, long_ = (runs[f"{m:g}min"] for m in minutes)
    ratio = long_["peak_kb"] / short["peak_kb"]
    return {"size": size, "fps": FPS, "steps": steps, "runs": runs, "peak_rss_ratio": ratio,
            "target": TARGET_RATIO, "ok": ratio <= TARGET_RATIO and all(r["ok_frames"] and r["ok_audio"]
                                                                       for r in runs.values())}


def format_report(report: dict) -> str:
    lines = [f"{'clip':>8} {'frames':>7} {'fps':>6} {'audio s':>8} {'baseline MB':>12} {'peak MB':>8} {'time s':>7}"]
    for name, r in report["runs"].items():
        lines.append(f"{name:>8} {r['frames_out']:>7} {r['fps']:>6} {r['audio_s']:>8.2f} "
                     f"{r['baseline_kb'] / 1024:>12.0f} {r['peak_kb'] / 1024:>8.0f} {r['seconds']:>7.0f}")
    lines.append(f"peak RSS long / short = {report['peak_rss_ratio']:.3f} (target <= {report['target']}); "
                 f"{'OK' if report['ok'] else 'NOT MET'}")
    return "\n".join(lines)


def _cmd_longvideo(args: argparse.Namespace) -> int:
    from .main import emit, write_json

    report = run_benchmark(args.work, tuple(args.minutes), args.size, args.steps)
    if args.json:
        write_json(args.json, report)
    emit(format_report(report))
    return 0 if report["ok"] else 1


def _child_main(argv: list[str]) -> int:
    from .main import emit

    if len(argv) != 2 or argv[0] != "--child":
        emit("usage: python -m omnisync_model.cli.longvideo --child SPEC_JSON (use `omnisync longvideo`)")
        return 2
    emit(json.dumps(child_run(json.loads(argv[1]))))  # the parent reads this line
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
