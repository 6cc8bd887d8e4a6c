"""Synthetic lip-sync benchmark (``omnisync bench``): held-out seeds and an unseen style, with the paper's ablations.

Each case is a synthetic clip whose mouth was driven by its own speech (the *source*), re-driven by a different
speech (the *drive*). Measured on the output:
  sync_r          Pearson r between the mouth opening measured in the output and the drive's ground truth
  leakage_r       r with the source's own opening (want ~0: the source lips must not leak through)
  psnr_outside_db / ssim_outside   preservation outside the (dilated) mouth box, against the source
  seam_score      frame-to-frame change at window boundaries / elsewhere (1 = invisible seams)
  off_colour      fraction of output frames whose mouth does not look like any of the source's mouths (pale blobs,
                  smears): more than 5% of the mouth box in colours the source's mouth boxes never show over all its
                  frames (CIE Lab, > 10 delta-E; ``off_palette_frames``), or L* contrast in the box under 3/4 of the
                  flattest source mouth's (``washed_out_frames``); ``off_colour_frames`` counts either, and
                  ``pale_frames`` the pale blobs among them (washed out, or off-palette colours lighter than the
                  nearest source colour)
DS-CFG uses the clip's ground-truth mouth centres, so the benchmark measures the model, not the locator.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..backends.omnisync import OmniSyncBackend
from ..sampling.guidance import DSCFG
from .metrics import estimate_mouth_opening, mouth_colour_outliers, pearson_r, psnr_outside, seam_score, ssim_outside
from ..families.omnisync.model import OmniSyncModel
from ..sampling.pipeline import AudioInput, LipSyncOptions, lipsync, plan_for_codec
from .synthetic import STYLES, make_speech, make_talking_clip, mouth_opening

log = logging.getLogger(__name__)

HELD_OUT_SEED = 900_000  # training uses seeds 1000.. (TrainConfig.data_seed); these never overlap
METRIC_KEYS = ("sync_r", "leakage_r", "psnr_outside_db", "ssim_outside", "seam_score", "off_colour")
COUNT_KEYS = ("off_colour_frames", "off_palette_frames", "washed_out_frames", "pale_frames", "frames")  # summed, not averaged, over the cases of a group
ABLATIONS = {
    "tau_init_0.92": dict(),
    "pure_noise_tau_1.0": dict(tau=1.0),
    "ds_cfg": dict(),
    "static_cfg_low_1.5": dict(guidance=DSCFG.static(1.5)),
    "static_cfg_high_6.0": dict(guidance=DSCFG.static(6.0)),
    "windows_overlap": dict(),
    "windows_no_overlap": dict(overlap=0),
}


@dataclass(frozen=True)
class Case:
    style: str
    seed: int
    seconds: float
    fps: float
    size: int


def make_cases(styles, per_style: int, seconds: float, fps: float, size: int) -> list[Case]:
    return [Case(style, HELD_OUT_SEED + 97 * i + j, seconds, fps, size)
            for j, style in enumerate(styles) for i in range(per_style)]


def pick_drive(case: Case, source_open: torch.Tensor, max_r: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """A driving speech whose ground-truth opening is nearly uncorrelated with the source's (|r| < max_r), so
    that leakage_r measures leakage and not a coincidence between the two speeches. Returns (waveform, opening)."""
    best = None
    for k in range(32):
        wave, _ = make_speech(case.seed + 55_555 + 1_000 * k, case.seconds)
        gt = mouth_opening(wave, 16000, case.fps, source_open.shape[0])
        r = abs(pearson_r(gt, source_open))
        if best is None or r < best[0]:
            best = (r, wave, gt)
        if r < max_r:
            break
    return best[1], best[2]


def synth_case(case: Case):
    """(clip, driving waveform, driving ground-truth opening) for a held-out case."""
    clip, _, _ = make_talking_clip(case.seed, case.style, case.seconds, case.fps, case.size)
    drive, gt = pick_drive(case, clip.mouth_open)
    return clip, drive, gt


def measure(out: torch.Tensor, clip, gt: torch.Tensor, options: LipSyncOptions) -> dict:
    """The figures of one output against its source clip and the driving ground truth."""
    n = clip.frames.shape[0]
    measured = estimate_mouth_opening(out, clip.mouth_box)
    wins = plan_for_codec(n, options, 1)  # the pixel codec's windows, as the pipeline plans them
    bounds = sorted({w.start for w in wins[1:]} | {w.end for w in wins[:-1]})
    flags = {k: int(v.sum()) for k, v in mouth_colour_outliers(out, clip.frames, clip.mouth_box).items()}
    return {
        "sync_r": pearson_r(measured, gt),
        "leakage_r": pearson_r(measured, clip.mouth_open),
        "psnr_outside_db": psnr_outside(out, clip.frames, clip.mouth_box),
        "ssim_outside": ssim_outside(out, clip.frames, clip.mouth_box),
        "seam_score": seam_score(out, bounds),
        "off_colour": flags["any"] / n,
        "off_colour_frames": flags["any"],
        "off_palette_frames": flags["off_palette"],
        "washed_out_frames": flags["washed_out"],
        "pale_frames": flags["pale"],
        "frames": n,
    }


def sync_case(model: OmniSyncModel, case: Case, options: LipSyncOptions):
    """(clip, driving speech, its ground-truth opening, the lip-synced frames) of one held-out case."""
    clip, drive, gt = synth_case(case)
    out = lipsync(clip.frames, case.fps, AudioInput(drive, 16000), OmniSyncBackend(model), None, options,
                  mouth_centres=clip.mouth_centre)
    return clip, drive, gt, out


def run_case(model: OmniSyncModel, case: Case, options: LipSyncOptions) -> dict:
    clip, _, gt, out = sync_case(model, case, options)
    return measure(out, clip, gt, options)


def mean_metrics(rows: list[dict]) -> dict:
    out = {}
    for key in METRIC_KEYS:
        vals = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    for key in COUNT_KEYS:
        out[key] = sum(int(r.get(key, 0)) for r in rows)
    out["n"] = len(rows)
    return out


def run_benchmark(model: OmniSyncModel, quick: bool = False, options: Optional[LipSyncOptions] = None,
                  styles=STYLES) -> dict:
    """The full table: per style, overall, and one entry per ablation (on a subset of the cases)."""
    options = options or LipSyncOptions()
    per_style = 1 if quick else 3
    seconds = 2.4 if quick else 4.0
    cases = make_cases(styles, per_style, seconds, 25.0, int(model.config.extra.get("resolution", 64)))
    t0 = time.perf_counter()
    rows = [(c, run_case(model, c, options)) for c in cases]
    result = {"styles": {}, "ablations": {}}
    for style in styles:
        result["styles"][style] = mean_metrics([r for c, r in rows if c.style == style])
    result["overall"] = mean_metrics([r for _, r in rows])
    abl_cases = cases[:: max(1, len(cases) // (3 if quick else 5))]
    base_rows = [r for c, r in rows if c in abl_cases]
    for name, changes in ABLATIONS.items():
        if not changes:
            result["ablations"][name] = mean_metrics(base_rows)
            continue
        opts = replace(options, **changes)
        result["ablations"][name] = mean_metrics([run_case(model, c, opts) for c in abl_cases])
    result["seconds"] = time.perf_counter() - t0
    result["settings"] = {"quick": quick, "cases": len(cases), "ablation_cases": len(abl_cases),
                          "tau": options.tau, "steps": options.steps, "solver": options.solver,
                          "shift": options.shift, "window": options.window,
                          "overlap": options.overlap, "guidance": vars(options.guidance)}
    return result


def format_table(result: dict) -> str:
    head = f"{'':24s}" + "".join(f"{k:>17s}" for k in METRIC_KEYS)
    lines = [head]
    def row(name, m):
        return f"{name:24s}" + "".join(f"{m[k]:17.3f}" for k in METRIC_KEYS)
    for style, m in result["styles"].items():
        lines.append(row(style, m))
    lines.append(row("overall", result["overall"]))
    lines.append("ablations:")
    for name, m in result["ablations"].items():
        lines.append(row("  " + name, m))
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..cli.main import emit, load_model, write_json

    model = load_model(args.checkpoint, torch.device("cpu"))
    options = LipSyncOptions(steps=args.steps, solver=args.solver, shift=args.shift)
    result = run_benchmark(model, quick=args.quick, options=options)
    emit(format_table(result))
    o = result["overall"]
    emit(f"({result['settings']['cases']} held-out clips, {result['seconds']:.0f}s; {options.solver} "
         f"{options.steps} steps; off-colour mouths: {o['off_colour_frames']} of {o['frames']} frames, "
         f"{o['pale_frames']} of them pale)")
    if args.json:
        write_json(args.json, result)
    return 0
