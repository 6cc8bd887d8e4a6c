"""The measurement logic of ``omnisync perf`` on the tiny preset (counts, hooks, FLOPs, JSON); no timing asserts."""

import json
from dataclasses import replace

import pytest
import torch

from omnisync_model.cli import perf, perf_common, perf_dit
from omnisync_model.sampling.guidance import DSCFG
from omnisync_model.sampling.pipeline import LipSyncOptions, RunStats
from omnisync_model.sampling.windows import plan_windows

TINY_SIZES = perf_common.Sizes(repeats=1, overhead_frames=6, overhead_size=16, scaling_frames=4, scaling_size=16,
                        eval_frames=6, eval_size=16, overlap_frames=20, overlap_size=16, forward_repeats=1,
                        forward_latent=4)


@pytest.fixture(scope="module")
def model():
    return perf.build_model("tiny")

W_PEAK = DSCFG().w_peak  # the default peak weight the pipeline uses


def test_schedule_count_of_the_previous_default_by_hand():
    opts = perf.PREVIOUS_DEFAULT  # 20 Euler steps, shift 1
    # sigma_i = tau (1 - i / 20); DS-CFG weight w_peak (sigma / tau)^gamma = w_peak (1 - i/20)^1.5 needs uncond while > 1
    by_hand = sum(W_PEAK * (1 - i / 20) ** 1.5 > 1.0 for i in range(20))
    assert by_hand == 10 == perf.steps_needing_uncond(opts)  # w_peak 2.5: (1 - i/20)^1.5 > 0.4 for i <= 9
    counts = perf.evaluation_counts(opts)
    assert counts["ours"] == 30 and counts["always_both"] == 40
    assert counts["full_schedule_steps"] == 22  # ceil(20 / 0.92): the same step size from sigma = 1
    assert counts["full_schedule_always_both"] == 44
    # from sigma = 1 the weight w_peak (1 - i/22)^1.5 exceeds 1 for the first steps
    assert counts["full_schedule_with_skip"] == 22 + sum(W_PEAK * (1 - i / 22) ** 1.5 > 1.0 for i in range(22))
    assert perf.expected_frame_evaluations(44, opts) / 44 == pytest.approx(32.727, abs=1e-3)  # issue 15's 32.7


def test_schedule_count_at_defaults_by_hand():
    opts = LipSyncOptions()
    assert (opts.solver, opts.steps, opts.shift) == ("ab2", 9, 0.3)  # measured in issue 15
    # uniform in t from t0 = unshift(tau), warped by sigma = s t / (1 + (s - 1) t); AB2 evaluates once per step
    s, tau = opts.shift, opts.tau
    t0 = tau / (s - (s - 1) * tau)
    sig = [s * t / (1 + (s - 1) * t) for t in (t0 * (1 - i / 9) for i in range(9))]
    by_hand = sum(W_PEAK * (x / tau) ** 1.5 > 1.0 for x in sig)
    assert by_hand == 2 == perf.steps_needing_uncond(opts)  # sigmas 0.92 and 0.66; the third, 0.484 < 0.4996
    assert perf.window_frame_evaluations(opts) == 9 + 2
    assert perf.expected_frame_evaluations(44, opts) / 44 == pytest.approx(12.0)  # perf --quick: 44 frames
    assert 12.0 <= perf.TARGETS["evals_per_frame"] == 13.0
    heun = LipSyncOptions(solver="heun", steps=4, shift=1.0)  # 2 evaluations a step, 1 on the step to sigma = 0
    assert len(perf.evaluation_points(heun)) == 7


@pytest.mark.parametrize("n", [6, 20])
def test_hook_count_matches_schedule_and_guidance_counters(model, n):
    opts = LipSyncOptions(steps=6, window=8, overlap=2, shift=1.0)  # the default solver, one evaluation a step
    stats = RunStats()
    with perf.ForwardTimer(model) as timer:
        perf.run_lipsync(model, n, 16, opts, stats=stats)
    windows = plan_windows(n, opts.window, opts.overlap)
    guided = sum(W_PEAK * (1 - i / 6) ** 1.5 > 1.0 for i in range(6))
    assert 0 < guided < 6
    assert timer.frame_evals == perf.expected_frame_evaluations(n, opts)
    assert timer.frame_evals == sum(w.length for w in windows) * (6 + guided)
    assert stats.evaluations == len(windows) * (6 + guided)  # samples, not frames
    assert timer.calls == stats.model_calls == len(windows) * 6
    assert timer.seconds > 0


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "euler"])
def test_hook_count_matches_schedule_for_every_solver(model, solver):
    """Heun's corrector passes count too: the forward hooks, the guidance counters and the schedule agree."""
    opts = LipSyncOptions(steps=4, window=8, overlap=2, solver=solver)
    stats = RunStats()
    with perf.ForwardTimer(model) as timer:
        perf.run_lipsync(model, 10, 16, opts, stats=stats)
    windows = plan_windows(10, opts.window, opts.overlap)
    points = perf.evaluation_points(opts)
    assert len(points) == (7 if solver == "heun" else 4)
    assert timer.frame_evals == perf.expected_frame_evaluations(10, opts)
    assert stats.evaluations == len(windows) * perf.window_frame_evaluations(opts)
    assert timer.calls == stats.model_calls == len(windows) * len(points)
    assert stats.steps_done == len(windows) * 4  # progress still once per step


def test_force_uncond_equal_output_and_more_evaluations(model):
    opts = LipSyncOptions(steps=5, window=8, overlap=2)
    forced = replace(opts, guidance=replace(opts.guidance, force_uncond=True))
    runs = {}
    for name, o in (("skip", opts), ("both", forced)):
        with perf.ForwardTimer(model) as timer:
            runs[name] = (perf.run_lipsync(model, 10, 16, o), timer.frame_evals)
    frames_done = sum(w.length for w in plan_windows(10, 8, 2))
    assert runs["both"][1] == frames_done * 2 * 5 == perf.expected_frame_evaluations(10, forced)
    assert runs["skip"][1] < runs["both"][1]
    assert (runs["skip"][0] - runs["both"][0]).abs().max() <= perf.EQUAL_OUTPUT_ATOL
    plain = perf.run_lipsync(model, 10, 16, replace(opts, guidance=DSCFG.static(1.0)))
    assert (plain - runs["skip"][0]).abs().max() > 1e-3  # guidance matters: the equality above is not vacuous


def test_forward_timer_removes_its_hooks(model):
    inputs = perf_dit.forward_inputs(model, (1, 48, 2, 4, 4))
    timer = perf.ForwardTimer(model)
    with torch.no_grad():
        model(*inputs)
    timer.close()
    with torch.no_grad():
        model(*inputs)
    assert timer.calls == 1 and timer.frame_evals == 2


def test_flop_count_includes_attention_exactly(model):
    b, t, hw = 2, 3, 8
    inputs = perf_dit.forward_inputs(model, (b, 48, t, hw, hw))
    cfg = model.config
    n, d, k = (hw // cfg.patch_size) ** 2, cfg.dim, cfg.audio_tokens
    with torch.no_grad(), perf_dit.FlopCounterMode(display=False) as plain:
        model(*inputs)
    attention = cfg.depth * 4 * d * (b * t * n * n + b * n * t * t + b * t * n * k)  # spatial, temporal, audio
    assert perf_dit.count_flops(model, inputs) - plain.get_total_flops() == attention


def test_peak_flops_table():
    assert perf_dit.peak_flops("NVIDIA H200") == 989e12
    assert perf_dit.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert perf_dit.peak_flops("NVIDIA H100 PCIe") is None
    assert perf_dit.peak_flops("NVIDIA A100-SXM4-80GB") is None


def test_interleaved_order():
    calls = []
    out = perf.interleaved({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, 3)
    assert calls == ["a", "b"] * 3 and out == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_streamed_frames_are_the_generated_frames():
    whole = perf_common.synthetic_frames(19, 8)
    chunks = list(perf.frame_chunks(19, 8))
    assert [c.shape[0] for c in chunks] == [8, 8, 3]
    assert torch.equal(torch.cat(chunks), whole) and 0 <= whole.min() and whole.max() <= 1
    assert not torch.equal(whole[0], whole[9])


def test_child_run_streams_every_frame():
    spec = {"preset": "tiny", "frames": 20, "size": 16, "device": "cpu", "threads": torch.get_num_threads()}
    result = perf.child_length_run(spec)
    assert result["frames_out"] == 20
    # the peak (/proc VmHWM) is read after the run, the baseline (VmRSS) before it
    assert result["max_rss_kb"] >= result["rss_before_kb"] > 100_000  # KiB; torch alone needs > 100 MiB


def test_json_has_every_figure(tmp_path):
    settings = perf.PerfSettings(quick=True, presets=("tiny",), size_override=TINY_SIZES)
    result = perf.run_perf(settings)
    expected = {"pipeline_overhead_tiny", "length_scaling_time", "length_scaling_memory", "evaluations_per_frame",
                "window_overlap_overhead", "dit_throughput_tiny", "compile", "choice_bf16_autocast",
                "choice_bf16_weights", "choice_inference_mode", "choice_channels_last_input"}
    assert set(result) == expected | {"run"}
    text = json.dumps(result)  # plain JSON: no tensors, no NaN
    assert "NaN" not in text
    for key in expected:
        fig = result[key]
        assert set(fig) >= {"value", "target", "unit", "ok", "details"}, key
        assert isinstance(fig["ok"], bool)
    assert result["evaluations_per_frame"]["details"]["equal_output"] is True
    assert result["evaluations_per_frame"]["details"]["matches_schedule_count"] is True
    assert result["length_scaling_time"]["details"]["frames_4x"] == 16
    assert result["compile"]["value"] is None  # not asked for
    table = perf.format_table(result)
    assert all(key in table for key in expected)


def test_child_peak_rss_is_its_own_not_the_parents():
    """getrusage's ru_maxrss survives exec on Linux: a child of a large parent would report the parent's peak.
    peak_rss_kb() reads the child's own high-water mark."""
    import subprocess
    import sys

    from omnisync_model.cli.perf import peak_rss_kb

    ballast = torch.ones(200_000_000)  # 800 MB held by this (parent) process
    code = ("import resource; from omnisync_model.cli.perf import peak_rss_kb; "
            "print(peak_rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert peak_rss_kb() > 800_000 and float(ballast[-1]) == 1.0
    assert own < 600_000 < inherited  # KiB: torch alone needs a few hundred MiB, never the parent's 800 MB
