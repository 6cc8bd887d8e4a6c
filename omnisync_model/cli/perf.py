"""Performance benchmark (``omnisync perf``): the costs of the pipeline and the DiT, measured as ratios.

Figures (one JSON key each, ``{"value", "target", "unit", "ok", "better", "details"}``):
  pipeline_overhead_<preset>  end-to-end ``lipsync`` wall time / time inside OmniSyncModel forwards (hooks)
  length_scaling_time         wall time of 4x the frames / 1x, frames streamed in and consumed chunk by chunk
  length_scaling_memory       peak RSS of 4x / 1x, each run in its own child process
  evaluations_per_frame       DiT frame-evaluations per output frame at default settings (target <= 13; the solver,
                              steps and the skipped unconditional branch all count), checked against always both
  window_overlap_overhead     frames processed / output frames - 1 at the default overlap (and time vs overlap 0)
  dit_throughput_<preset>     forward tokens/s and FLOP/s (CPU fp32; CUDA bf16 with flash SDPA, MFU, frames/s)
  compile                     torch.compile speed-up over eager on one forward shape (``--compile``)
  choice_<name>               measured speed ratios of layout / dtype / mode choices (> 1: the choice pays off)
The JSON also holds ``run`` (settings and environment), which is not a figure.

A machine shared with other work is noisy, so every figure is a ratio taken within one run: the two sides are
interleaved (A, B, A, B, ...) and their medians compared; a slow spell then slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from ..core.codec import PixelCodec
from ..families.omnisync.config import get_preset
from ..sampling.guidance import DSCFG
from ..backends.omnisync import OmniSyncBackend
from ..sampling.pipeline import AudioInput, LipSyncOptions, RunStats, iter_lipsync, lipsync
from ..media.streams import SequentialFrames

from .perf_common import (EQUAL_OUTPUT_ATOL, FPS, ForwardTimer, LATENTSYNC_EVALS, PIXEL_PRESETS, PREVIOUS_DEFAULT,
                          PerfSettings, TARGETS, build_model, evaluation_points, expected_frame_evaluations, figure,
                          frame_chunks, frames_processed, interleaved, lipsync_inputs, median, run_lipsync,
                          steps_needing_uncond, synchronize, synthetic_speech, timed, window_frame_evaluations,
                          windows_for)
from .perf_dit import measure_choices, measure_compile, measure_throughput

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- pipeline overhead


def measure_pipeline_overhead(preset: str, settings: PerfSettings) -> dict:
    """End-to-end ``lipsync`` time / time inside model forwards, same run, median over repeats."""
    sz = settings.sizes
    model = build_model(preset, settings.device, settings.dtype)
    run_lipsync(model, 16, sz.overhead_size)  # warm-up: allocator, thread pool, first-call costs
    lipsync_inputs(sz.overhead_frames, sz.overhead_size)  # inputs made outside the timed runs
    totals, forwards, calls = [], [], 0
    with ForwardTimer(model) as timer:
        for _ in range(sz.repeats):
            timer.reset()
            totals.append(timed(lambda: run_lipsync(model, sz.overhead_frames, sz.overhead_size), settings.device))
            forwards.append(timer.seconds)
            calls = timer.calls
    ratios = [t / f for t, f in zip(totals, forwards)]
    value = median(ratios)
    outside = median([t - f for t, f in zip(totals, forwards)])
    return figure(value, TARGETS["overhead"], "x", value <= TARGETS["overhead"], "lower",
                  total_s=median(totals), forward_s=median(forwards), outside_forward_s=outside,
                  outside_per_forward_ms=1e3 * outside / max(calls, 1), forward_calls=calls,
                  ratios=ratios, frames=sz.overhead_frames, size=sz.overhead_size,
                  windows=len(windows_for(sz.overhead_frames, LipSyncOptions())), settings="LipSyncOptions() defaults")


# ------------------------------------------------------------------------------------------- length scaling


def _proc_status_kb(key: str) -> int:
    """A KiB field of /proc/self/status (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def current_rss_kb() -> int:
    """Resident set size now, in KiB (Linux /proc; 0 where unavailable)."""
    return _proc_status_kb("VmRSS")


def peak_rss_kb() -> int:
    """This process's own peak resident set size in KiB: /proc VmHWM. Not getrusage's ru_maxrss: Linux carries
    that across exec, so a child started by subprocess reports the parent's peak when it was larger."""
    return _proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_length_run(spec: dict) -> dict:
    """One streamed run in this (child) process: frames in chunk by chunk, output consumed chunk by chunk."""
    torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(spec["preset"], device, dtype)
    n, size = int(spec["frames"]), int(spec["size"])
    run_lipsync(model, 16, size)  # warm-up (one window: the same peak as any later window)
    rss_before = current_rss_kb()
    frames = SequentialFrames(frame_chunks(n, size), n)
    audio = AudioInput(synthetic_speech(n / FPS))
    synchronize(device)
    t0 = time.perf_counter()
    out_frames = 0
    for _, chunk in iter_lipsync(frames, FPS, audio, OmniSyncBackend(model), PixelCodec(4), LipSyncOptions()):
        out_frames += chunk.shape[0]
    synchronize(device)
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "frames_out": out_frames, "rss_before_kb": rss_before,
              "max_rss_kb": peak_rss_kb()}
    if device == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def run_child(spec: dict, module: str = "omnisync_model.cli.perf") -> dict:
    """Run ``python -m module --child SPEC`` in a fresh process (its own peak RSS); returns its last stdout line."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_length_scaling(settings: PerfSettings) -> tuple[dict, dict]:
    sz = settings.sizes
    n1 = sz.scaling_frames
    base = {"preset": "tiny", "size": sz.scaling_size, "device": settings.device, "threads": torch.get_num_threads()}
    runs = interleaved({"1x": lambda: run_child({**base, "frames": n1}),
                        "4x": lambda: run_child({**base, "frames": 4 * n1})}, sz.repeats)
    for key, n in (("1x", n1), ("4x", 4 * n1)):
        if any(r["frames_out"] != n for r in runs[key]):
            raise RuntimeError(f"length scaling run {key} returned the wrong number of frames")
    t = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["max_rss_kb"] for r in v]) for k, v in runs.items()}
    before = {k: median([r["rss_before_kb"] for r in v]) for k, v in runs.items()}
    opts = LipSyncOptions()
    wins = {"1x": len(windows_for(n1, opts)), "4x": len(windows_for(4 * n1, opts))}
    time_ratio, mem_ratio = t["4x"] / t["1x"], rss["4x"] / rss["1x"]
    common = dict(frames_1x=n1, frames_4x=4 * n1, size=sz.scaling_size, preset="tiny", windows_1x=wins["1x"],
                  windows_4x=wins["4x"], streamed=True)
    time_fig = figure(time_ratio, TARGETS["length_time"], "x", time_ratio <= TARGETS["length_time"], "lower",
                      seconds_1x=t["1x"], seconds_4x=t["4x"], window_ratio=wins["4x"] / wins["1x"],
                      time_per_window_ratio=(t["4x"] / wins["4x"]) / (t["1x"] / wins["1x"]),
                      runs_s={k: [r["seconds"] for r in v] for k, v in runs.items()}, **common)
    mem_fig = figure(mem_ratio, TARGETS["length_memory"], "x", mem_ratio <= TARGETS["length_memory"], "lower",
                     peak_rss_mib_1x=rss["1x"] / 1024, peak_rss_mib_4x=rss["4x"] / 1024,
                     rss_before_run_mib_1x=before["1x"] / 1024, rss_before_run_mib_4x=before["4x"] / 1024,
                     peak_above_rss_before_run_mib_1x=(rss["1x"] - before["1x"]) / 1024,  # a window's working set
                     peak_above_rss_before_run_mib_4x=(rss["4x"] - before["4x"]) / 1024,
                     cuda_peak_mib={k: [r.get("cuda_peak_bytes", 0) / 2**20 for r in v] for k, v in runs.items()},
                     **common)
    return time_fig, mem_fig


# ----------------------------------------------------------------------------------------------- evaluations


def evaluation_counts(options: LipSyncOptions) -> dict:
    """Per frame of a window: ours, always both branches, and the full 1 -> 0 schedule at the same step size."""
    both = steps_needing_uncond(options)
    points = len(evaluation_points(options))
    full_steps = math.ceil(options.steps / options.tau - 1e-9)  # same step size, starting from pure noise
    full_points = len(evaluation_points(options, start=1.0, steps=full_steps))
    full_guided = steps_needing_uncond(options, start=1.0, steps=full_steps)
    return {"ours": points + both, "always_both": 2 * points, "evaluation_points": points,
            "full_schedule_steps": full_steps, "full_schedule_always_both": 2 * full_points,
            "full_schedule_with_skip": full_points + full_guided, "guided_steps": both,
            "previous_default": window_frame_evaluations(PREVIOUS_DEFAULT)}


def measure_evaluations(settings: PerfSettings) -> dict:
    """Frame-evaluations per output frame at default settings (target <= 13), vs forcing both branches (same
    output) and vs the previous default sampler (20 Euler steps; counted from its schedule, not run)."""
    sz = settings.sizes
    n = sz.eval_frames
    model = build_model("tiny", settings.device, settings.dtype)
    opts = LipSyncOptions()
    forced = replace(opts, guidance=replace(opts.guidance, force_uncond=True))
    results = {}
    for name, o in (("default", opts), ("always_both", forced)):
        stats = RunStats()
        with ForwardTimer(model) as timer:
            out = run_lipsync(model, n, sz.eval_size, o, stats=stats)
        results[name] = (out, timer.frame_evals, stats, timer.seconds)
    diff = float((results["default"][0] - results["always_both"][0]).abs().max())
    ours, both = results["default"][1] / n, results["always_both"][1] / n
    saving = 1.0 - ours / both
    counts = evaluation_counts(opts)
    target = TARGETS["evals_per_frame"]
    frames_done = frames_processed(n, opts)
    previous = expected_frame_evaluations(n, PREVIOUS_DEFAULT) / n
    ok = ours <= target and diff <= EQUAL_OUTPUT_ATOL
    return figure(ours, target, "evals/frame", ok, "lower",
                  solver=opts.solver, steps=opts.steps, shift=opts.shift, previous_default_per_frame=previous,
                  fraction_of_previous_default=ours / previous,
                  saving_vs_always_both=saving, always_both_per_frame=both, max_abs_diff_vs_always_both=diff,
                  equal_output=diff <= EQUAL_OUTPUT_ATOL,
                  matches_schedule_count=results["default"][1] == expected_frame_evaluations(n, opts)
                  and results["always_both"][1] == expected_frame_evaluations(n, forced),
                  per_window_frame=counts, latentsync_per_frame=LATENTSYNC_EVALS, vs_latentsync=ours / LATENTSYNC_EVALS,
                  saving_from_uncond_skip=1.0 - counts["ours"] / counts["always_both"],
                  saving_from_progressive_init=1.0 - counts["always_both"] / counts["full_schedule_always_both"],
                  saving_combined_vs_full_always_both=1.0 - counts["ours"] / counts["full_schedule_always_both"],
                  window_overlap_factor=frames_done / n, frames=n, size=sz.eval_size,
                  model_calls={k: v[2].model_calls for k, v in results.items()},
                  forward_seconds={k: v[3] for k, v in results.items()})


# ---------------------------------------------------------------------------------------------------- overlap


def mean_overlap_overhead(options: LipSyncOptions, lengths: range) -> float:
    return statistics.mean(frames_processed(n, options) / n - 1.0 for n in lengths)


def measure_overlap(settings: PerfSettings) -> dict:
    sz = settings.sizes
    n = sz.overlap_frames
    opts, flat = LipSyncOptions(), LipSyncOptions(overlap=0)
    model = build_model("tiny", settings.device, settings.dtype)
    run_lipsync(model, 16, sz.overlap_size)
    lipsync_inputs(n, sz.overlap_size)  # inputs made outside the timed runs

    def run(o: LipSyncOptions) -> float:
        return timed(lambda: run_lipsync(model, n, sz.overlap_size, o), settings.device)

    times = interleaved({"overlap": lambda: run(opts), "no_overlap": lambda: run(flat)}, sz.repeats)
    frames_done = frames_processed(n, opts)
    value = frames_done / n - 1.0
    time_overhead = median(times["overlap"]) / median(times["no_overlap"]) - 1.0
    asymptotic = opts.window / (opts.window - opts.overlap) - 1.0
    ok = value <= TARGETS["overlap"] and time_overhead <= TARGETS["overlap"]
    return figure(value, TARGETS["overlap"], "fraction", ok, "lower",
                  time_overhead_vs_overlap_0=time_overhead, seconds=dict(times), frames=n, size=sz.overlap_size,
                  frames_processed=frames_done, window=opts.window, overlap=opts.overlap,
                  long_video_limit=asymptotic,
                  mean_over_lengths_64_to_1024=mean_overlap_overhead(opts, range(64, 1025)))


# ---------------------------------------------------------------------------------------------------- driver


def run_perf(settings: PerfSettings) -> dict:
    """Every figure, in one run; returns the JSON-ready dict."""
    t0 = time.perf_counter()
    result = {}
    for preset in PIXEL_PRESETS:
        if preset in settings.presets:
            log.info("perf: pipeline overhead (%s)", preset)
            result[f"pipeline_overhead_{preset}"] = measure_pipeline_overhead(preset, settings)
    log.info("perf: length scaling")
    result["length_scaling_time"], result["length_scaling_memory"] = measure_length_scaling(settings)
    log.info("perf: evaluations per frame")
    result["evaluations_per_frame"] = measure_evaluations(settings)
    log.info("perf: window overlap")
    result["window_overlap_overhead"] = measure_overlap(settings)
    for preset in settings.presets:
        log.info("perf: DiT throughput (%s)", preset)
        result[f"dit_throughput_{preset}"] = measure_throughput(preset, settings)
    log.info("perf: compile and layout / dtype choices")
    result["compile"] = measure_compile(settings)
    result.update(measure_choices(settings))
    result["run"] = run_info(settings, time.perf_counter() - t0)
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(settings: PerfSettings, seconds: float) -> dict:
    return {"quick": settings.quick, "device": settings.device, "presets": list(settings.presets),
            "compile": settings.compile, "seconds": seconds, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "cuda_device": torch.cuda.get_device_name() if settings.device == "cuda" else None,
            "options": {"tau": LipSyncOptions().tau, "steps": LipSyncOptions().steps,
                        "solver": LipSyncOptions().solver, "shift": LipSyncOptions().shift,
                        "window": LipSyncOptions().window, "overlap": LipSyncOptions().overlap,
                        "guidance": vars(DSCFG())}}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(result: dict) -> str:
    lines = [f"{'figure':32s} {'value':>12s} {'target':>10s} {'unit':>12s}  ok"]
    for key, fig in result.items():
        if key == "run":
            continue
        rule = {"lower": "<=", "higher": ">="}.get(fig["better"], "")
        target = f"{rule}{_fmt(fig['target'])}" if fig["target"] is not None else "-"
        lines.append(f"{key:32s} {_fmt(fig['value']):>12s} {target:>10s} {fig['unit']:>12s}  "
                     f"{'yes' if fig['ok'] else 'NO'}")
    return "\n".join(lines)


def parse_presets(text: str) -> tuple:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        get_preset(name)  # KeyError naming the known presets
    if not names:
        raise ValueError("--presets needs at least one preset")
    return names


def _cmd_perf(args: argparse.Namespace) -> int:
    from .main import CliError, emit, resolve_device, write_json

    resolve_device(args.device)  # CliError when CUDA is asked for but absent
    try:
        presets = parse_presets(args.presets or ("tiny,small" if args.quick else "tiny,small,base"))
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc.args[0])) from None
    settings = PerfSettings(quick=args.quick, device=args.device, presets=presets, compile=args.compile)
    if not args.verbose:  # one "lip sync: ..." line per run would bury the progress lines
        logging.getLogger(lipsync.__module__).setLevel(logging.WARNING)
    result = run_perf(settings)
    emit(format_table(result))
    emit(f"({result['run']['seconds']:.0f}s, {result['run']['threads']} threads, device {args.device})")
    if args.json:
        write_json(args.json, result)
    return 0


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnisync_model.cli.perf")
    parser.add_argument("--child", required=True, help="JSON spec of one length-scaling run")
    args = parser.parse_args(argv)
    from .main import emit

    emit(json.dumps(child_length_run(json.loads(args.child))))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
