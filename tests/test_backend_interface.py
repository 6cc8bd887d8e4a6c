"""The pipeline drives any backend: a toy backend written here (not the OmniSync DiT) with exact, predictable
velocities checks windows, crossfade, per-frame noise sharing, absolute audio indexing and guidance calls."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from omnisync_model.core.codec import PixelCodec
from omnisync_model.sampling.backend import AudioCondition, Backend, WindowRules, per_frame_noise
from omnisync_model.sampling.guidance import DSCFG
from omnisync_model.sampling.options import AudioInput, LipSyncOptions
from omnisync_model.sampling.pipeline import RunStats, lipsync, plan_for_codec
from omnisync_model.sampling.windows import frame_weights

N, SIZE, FPS = 23, 4, 25.0


class ToyAudio(AudioCondition):
    """Window conditioning = the absolute frame index of each latent frame (what a real backend indexes by time)."""

    def __init__(self, log):
        self.log = log

    def window(self, start, n_frames, temporal_factor):
        self.log.append((start, n_frames, temporal_factor))
        return torch.arange(start, start + n_frames, dtype=torch.float64)  # [n] absolute frames


class ToyBackend(Backend):
    """Exact denoiser: branch "cond" aims at pixel value frame / 100 + window_start / 1000, "uncond" at 0.

    With v = (x - x0) / sigma, Euler lands exactly on x0 from any start; a static CFG weight w lands on
    x0_u + w (x0_c - x0_u). The window-dependent term makes overlapping windows disagree, so the crossfade shows.
    """

    name = "toy"
    window_rules = WindowRules(default_window=8, default_overlap=2, max_window=12)

    def __init__(self):
        self.module = nn.Linear(1, 1)
        self.calls, self.noises, self.audio_log, self.windows = [], {}, [], []

    def audio_condition(self, audio, fps, options):
        return ToyAudio(self.audio_log)

    def condition(self, window):
        self.windows.append((window.start, list(window.first_frames)))
        frames = window.audio  # [T] absolute frame indices (temporal factor 1)
        pixel = frames / 100.0 + window.start / 1000.0  # [T]
        target = (2 * pixel - 1).to(torch.float32).view(1, 1, -1, 1, 1).expand_as(window.source)  # [1,C,T,h,w]
        return {"cond": target, "uncond": torch.full_like(window.source, -1.0)}

    def initial_latent(self, source, noise, sigma0):
        for j, f in enumerate(self.windows[-1][1]):
            self.noises.setdefault(f, []).append(noise[0, :, j].clone())
        return super().initial_latent(source, noise, sigma0)

    def denoise(self, x, sigma, cond, branches):
        self.calls.append(list(branches))
        return torch.cat([(x - cond[b]) / sigma for b in branches])


def _frames(n=N):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, SIZE, SIZE, 3, generator=g)


def _run(backend, options, n=N):
    stats = RunStats()
    out = lipsync(_frames(n), FPS, AudioInput(torch.zeros(1600)), backend, PixelCodec(1), options, stats=stats)
    return out, stats


def test_pipeline_imports_no_model_family():
    code = ("import sys, omnisync_model.sampling.pipeline; "
            "bad = [m for m in sys.modules if m.startswith(('omnisync_model.families', 'omnisync_model.backends'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_windows_crossfade_audio_and_noise_with_a_toy_backend():
    backend = ToyBackend()
    options = LipSyncOptions(tau=0.9, steps=3, window=8, overlap=2, seed=4, guidance=DSCFG.static(1.5),
                             solver="euler")  # Euler lands on x0 bitwise: pixels of a frame stay exactly alike
    out, stats = _run(backend, options)
    plan = plan_for_codec(N, options, 1)
    assert len(plan) == 4 and [w.start for w in plan] == [0, 6, 12, 15]  # the last window shifted back
    # the backend saw every window by absolute frame: audio and first frames
    assert backend.audio_log == [(w.start, w.length, 1) for w in plan]
    assert [s for s, _ in backend.windows] == [w.start for w in plan]
    # guidance: static 1.5 runs both branches in one call per step; cond last in chain order
    assert backend.calls == [["uncond", "cond"]] * (len(plan) * 3)
    assert (stats.model_calls, stats.evaluations, stats.steps_done) == (12, 24, 12)
    # exact result: each window lands on 1.5 * (frame / 100 + start / 1000), crossfaded by the plan's weights
    weights = frame_weights(plan, N)  # [windows, N]
    frame = torch.arange(N, dtype=torch.float64)
    per_window = torch.stack([1.5 * (frame / 100 + w.start / 1000) for w in plan])  # [windows, N]
    want = (weights * per_window).sum(0)  # [N]
    assert out.shape == (N, SIZE, SIZE, 3)
    assert torch.allclose(out[:, 0, 0, 0].double(), want, atol=1e-5)
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))  # every pixel of a frame alike
    # noise is per absolute frame: windows that share a frame started from the same noise there
    shared = {f: v for f, v in backend.noises.items() if len(v) > 1}
    assert shared and all(torch.equal(v[0], u) for v in shared.values() for u in v[1:])
    assert torch.equal(backend.noises[7][0], per_frame_noise((1, 3, 1, SIZE, SIZE), 4, [7], "cpu", torch.float32)[0, :, 0])


def test_weight_one_runs_the_conditional_branch_only():
    backend = ToyBackend()
    out, stats = _run(backend, LipSyncOptions(tau=1.0, steps=2, window=8, overlap=2, guidance=DSCFG.static(1.0)))
    assert backend.calls == [["cond"]] * 8 and stats.evaluations == 8
    assert torch.allclose(out[:6, 0, 0, 0].double(), torch.arange(6, dtype=torch.float64) / 100, atol=1e-5)  # window 0 alone


def test_window_rules_are_enforced():
    with pytest.raises(ValueError, match="longer than this model can take"):
        _run(ToyBackend(), LipSyncOptions(steps=1, window=16, overlap=2))
    with pytest.raises(ValueError, match="cannot continue from motion frames"):
        _run(ToyBackend(), LipSyncOptions(steps=1, window=8, overlap=2, stitch="continue"))


class ContinuingBackend(ToyBackend):
    """Motion frames: the window's condition receives the previous window's output frames."""

    window_rules = WindowRules(default_window=8, default_overlap=2, max_window=12, motion_frames=3)

    def __init__(self):
        super().__init__()
        self.motions = []

    def condition(self, window):
        self.motions.append(None if window.motion is None else window.motion.clone())
        return super().condition(window)


def test_continue_mode_hands_over_motion_frames_and_keeps_the_earlier_frames():
    backend = ContinuingBackend()
    options = LipSyncOptions(tau=0.9, steps=2, window=8, overlap=2, guidance=DSCFG.static(1.0), stitch="continue")
    out, _ = _run(backend, options)
    plan = plan_for_codec(N, LipSyncOptions(window=8, overlap=3), 1)  # overlap = the backend's motion frames
    assert [s for s, _ in backend.windows] == [w.start for w in plan]
    assert backend.motions[0] is None and all(m.shape == (3, SIZE, SIZE, 3) for m in backend.motions[1:])
    for k, win in enumerate(plan[1:], start=1):
        # motion frames = the stitched output at the new window's first frames
        assert torch.allclose(backend.motions[k], out[win.start:win.start + 3], atol=1e-6)
    # every frame keeps the value of the first window that produced it (no blending)
    first = torch.tensor([next(w.start for w in plan if w.start <= i < w.end) for i in range(N)], dtype=torch.float64)
    want = torch.arange(N, dtype=torch.float64) / 100 + first / 1000
    assert torch.allclose(out[:, 0, 0, 0].double(), want, atol=1e-5)
