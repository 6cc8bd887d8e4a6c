"""Never take the host down: free-memory queries (meminfo, cgroups, the user's cap), the run estimates, and the
nodes' adapt-or-refuse behaviour before the first model call (smaller window, face crop, clear refusal)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_helpers import REPO, pack_module, talking_clip
from conftest import randomize_zero_inits
from omnisync_model.core import memory as M
from omnisync_model.media import run_memory as RM

LS = pack_module("nodes.adapters.lipsync")
V = pack_module("nodes.adapters.video")
MEM = pack_module("omnisync_model.core.memory")
BACKEND = pack_module("omnisync_model.backends.omnisync")
CONFIG = pack_module("omnisync_model.families.omnisync.config")
MODEL = pack_module("omnisync_model.families.omnisync.model")
GB = 1 << 30


def _backend(resolution=None, seed=0):
    torch.manual_seed(seed)
    extra = {"resolution": resolution} if resolution else {}
    m = MODEL.OmniSyncModel(CONFIG.get_preset("tiny").replace(extra=extra)).eval()
    randomize_zero_inits(m, seed=1)
    return BACKEND.OmniSyncBackend(m)


@pytest.fixture(scope="module")
def backend():
    return _backend()


def _audio(seconds=1.0, rate=16000):
    t = torch.arange(int(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * torch.pi * 220 * t))[None, None], "sample_rate": rate}


def _options(window=8, overlap=2, steps=1):
    return LS.make_options(0.9, steps, 3, window, overlap, 2.5, 1.0, 0.15, 1.5)


class Recorder:
    def __init__(self, budget):
        self.steps, self.prepared, self._budget = [], [], budget

    def hooks(self):
        return LS.NodeHooks(progress=lambda d, t: self.steps.append(d), budget=lambda b: self._budget)


# --------------------------------------------------------------------------------------------- what is free


def test_meminfo_and_cgroup_limits_are_read(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  24683568 kB\nMemFree: 1 kB\nMemAvailable:   23313172 kB\n")
    assert M.meminfo_available(tmp_path / "meminfo") == 23313172 * 1024
    assert M.meminfo_available(tmp_path / "missing") is None
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "memory.max").write_text("max\n")  # the leaf has no limit ...
    (root / "a" / "b" / "memory.current").write_text("100\n")
    (root / "a" / "memory.max").write_text("5000\n")  # ... its parent does
    (root / "a" / "memory.current").write_text("4200\n")
    (tmp_path / "cgroup2").write_text("0::/a/b\n")
    assert M.cgroup_memory_left(tmp_path / "cgroup2", root) == 800
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)  # a container: its own group mounted at the root of the hierarchy
    (v1 / "memory" / "memory.limit_in_bytes").write_text("3000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("1000\n")
    (tmp_path / "cgroup1").write_text("12:pids:/x\n4:memory:/docker/abc\n")
    assert M.cgroup_memory_left(tmp_path / "cgroup1", v1) == 2000
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # "unlimited"
    assert M.cgroup_memory_left(tmp_path / "cgroup1", v1) is None


def test_the_user_cap_and_sizes(monkeypatch):
    assert [M.parse_size(s) for s in ("8G", "512M", "1.5g", "2GiB", "1000")] == \
        [8 * GB, 512 << 20, int(1.5 * GB), 2 * GB, 1000]
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(ValueError, match=M.LIMIT_ENV):
            M.parse_size(bad)
    monkeypatch.setenv(M.LIMIT_ENV, "3M")
    assert M.host_memory_available() == 3 << 20
    monkeypatch.delenv(M.LIMIT_ENV)
    free = M.host_memory_available()
    assert free is not None and 0 < free <= M.meminfo_available()


def test_budget_pools():
    need = M.MemoryNeed().plus("out", 6 * GB).plus("act", 2 * GB, "device")
    assert need.host == 6 * GB and need.device == 2 * GB and need.describe() == "out 6.0 GB + act 2.0 GB"
    assert M.MemoryBudget(host=10 * GB).shortfall(need) is None  # CPU: one pool of 8 GB
    assert "RAM" in M.MemoryBudget(host=9 * GB).shortfall(need)  # 8 > 0.85 * 9
    gpu = M.MemoryBudget(host=10 * GB, device=2 * GB, device_name="cuda:0")
    assert "cuda:0 memory" in gpu.shortfall(need)  # 2 GB of activations in 2 GB free: no headroom
    assert M.MemoryBudget(host=None).shortfall(need) is None  # unknown: no refusal


# --------------------------------------------------------------------------------------------- estimates


def test_window_candidates_have_the_codec_form():
    assert RM.window_candidates(16, 1) == [16, 8, 4, 2, 1]
    assert RM.window_candidates(33, 4) == [33, 13, 5, 1]
    assert RM.window_candidates(21, 4, min_window=9) == [21, 9]


def test_estimates_grow_with_the_frame_size_and_window(backend):
    codec = backend.prepare_codec(None)
    small = RM.image_run_need(backend, codec, 16, (250, 64, 64), (64, 64), True, False)
    big = RM.image_run_need(backend, codec, 16, (250, 1920, 1080), (1920, 1080), True, False)
    short = RM.image_run_need(backend, codec, 4, (250, 1920, 1080), (1920, 1080), True, False)
    out_bytes = 250 * 1920 * 1080 * 3 * 4  # 6.2 GB: the IMAGE output of the real phone clip
    assert ("output of 250 frames 1080x1920", out_bytes, "host") in big.parts
    assert small.total < short.total < big.total
    tokens = backend.window_tokens(16, 1920, 1080, codec)
    assert tokens == 16 * 240 * 135 and backend.inference_memory(tokens) < big.total - out_bytes


def test_fit_window_shrinks_then_refuses(backend, caplog):
    codec = backend.prepare_codec(None)

    def need(window):
        return M.MemoryNeed().plus("output", 100).plus("activations", window * 100)

    opts = _options(window=16, overlap=4)
    same, _ = RM.fit_window(opts, backend, codec, need, M.MemoryBudget(host=10_000), "clip", "advice")
    assert same is opts
    with caplog.at_level(logging.WARNING):
        smaller, got = RM.fit_window(opts, backend, codec, need, M.MemoryBudget(host=1000), "clip", "advice")
    assert (smaller.window, smaller.overlap) == (4, 1) and got.total == 500 and "4-frame windows" in caplog.text
    with pytest.raises(M.InsufficientMemoryError, match=r"clip with 16-frame windows.*even 1-frame.*advice"):
        RM.fit_window(opts, backend, codec, need, M.MemoryBudget(host=200), "clip", "advice")


def test_check_fits_for_fixed_size_calls():
    need = M.MemoryNeed().plus("activations", 3 * GB, "device")
    RM.check_fits(need, M.MemoryBudget(host=1 * GB, device=4 * GB, device_name="cuda:0"), "a latent", "advice")
    with pytest.raises(M.InsufficientMemoryError, match=r"a latent needs 3.0 GB of cuda:0 memory.*advice"):
        RM.check_fits(need, M.MemoryBudget(host=64 * GB, device=3 * GB, device_name="cuda:0"), "a latent", "advice")


# --------------------------------------------------------------------------------------------- the IMAGE node


def test_too_little_memory_is_refused_before_any_step(backend):
    frames = torch.rand(12, 48, 64, 3)
    rec = Recorder(M.MemoryBudget(host=1 << 20))
    with pytest.raises(MEM.InsufficientMemoryError) as err:
        LS.lipsync_images(backend, frames, 25.0, _audio(), _options(), hooks=rec.hooks())
    message = str(err.value)
    assert "12 frames of 64x48" in message and "output of 12 frames" in message and "RAM" in message
    assert "OmniSyncFaceCrop" in message and "OmniSyncLipSyncVideo" in message and "input frames" in message
    assert rec.steps == []  # no sampling step ran


def test_a_tight_budget_shrinks_the_window_and_gives_every_frame(backend, caplog):
    frames = torch.rand(12, 32, 32, 3)
    codec = backend.prepare_codec(None)
    full = RM.image_run_need(backend, codec, 8, (12, 32, 32), (32, 32), True, False).total
    two = RM.image_run_need(backend, codec, 2, (12, 32, 32), (32, 32), True, False).total
    rec = Recorder(M.MemoryBudget(host=int((two + (full - two) / 4) / M.HEADROOM)))
    with caplog.at_level(logging.WARNING):
        out, fitted = LS.lipsync_images(backend, frames, 25.0, _audio(), _options(window=8), hooks=rec.hooks())
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert "using 2-frame windows" in caplog.text or "using 4-frame windows" in caplog.text
    window = 2 if "using 2-frame" in caplog.text else 4
    direct, _ = LS.lipsync_images(backend, frames, 25.0, _audio(), _options(window=window, overlap=window // 4))
    assert torch.equal(out, direct)  # the same run as asking for that window


def _face_clip(size=128, seconds=0.4):
    frames, speech = talking_clip(seconds, 25.0, size=size, seed=5)
    return frames, {"waveform": speech[None, None].float(), "sample_rate": 16000}


def _outside(frames, boxes):
    keep = torch.ones(frames.shape[:3], dtype=torch.bool)
    for i, (x, y, w, h) in enumerate(boxes.tolist()):
        keep[i, y:y + h, x:x + w] = False
    return keep


def test_frames_far_larger_than_the_model_are_lip_synced_on_the_face(caplog):
    backend = _backend(resolution=16)  # 128 px frames are 8x what this model works at
    frames, audio = _face_clip()
    with caplog.at_level(logging.WARNING):
        out, _ = LS.lipsync_images(backend, frames, 25.0, audio, _options(steps=2))
    assert "lip-syncing the face" in caplog.text and "8.0x the 16x16" in caplog.text
    assert out.shape == frames.shape
    region = LS.face_region(backend, backend.prepare_codec(None), None, frames, None, "too_large")
    keep = _outside(frames, region.boxes)
    assert keep.any() and torch.equal(out[keep], frames[keep])  # outside the face box: the source, bit for bit
    assert not torch.equal(out, frames)  # the mouth did change


def test_whole_frames_that_do_not_fit_fall_back_to_the_face_crop(caplog):
    backend = _backend(resolution=48)  # 128 px is 2.7x: whole frames, unless memory says otherwise
    frames, audio = _face_clip()
    codec = backend.prepare_codec(None)
    whole_small = RM.image_run_need(backend, codec, 1, (10, 128, 128), (128, 128), True, False).total
    rec = Recorder(M.MemoryBudget(host=int(0.9 * whole_small / M.HEADROOM)))
    with caplog.at_level(logging.WARNING):
        out, _ = LS.lipsync_images(backend, frames, 25.0, audio, _options(), hooks=rec.hooks())
    assert "do not fit in memory as whole frames" in caplog.text and out.shape == frames.shape
    assert rec.steps  # it ran


def test_large_frames_without_a_face_are_refused_with_advice():
    backend = _backend(resolution=16)
    with pytest.raises(ValueError, match=r"no face was found.*OmniSyncFaceCrop.*OmniSyncLipSyncVideo"):
        LS.lipsync_images(backend, torch.zeros(4, 128, 128, 3), 25.0, _audio(), _options())


# --------------------------------------------------------------------------------------------- the VIDEO node


def test_video_node_refuses_before_sampling_and_leaves_no_file(tmp_path, backend):
    from comfy_helpers import write_video

    frames, speech = talking_clip(0.4, 25.0, size=64, seed=2)
    source = write_video(tmp_path / "in.mp4", frames, 25.0, speech)
    before = source.read_bytes()
    rec = Recorder(M.MemoryBudget(host=4 << 20))
    out_dir = tmp_path / "out"
    with pytest.raises(MEM.InsufficientMemoryError, match=r"not enough memory.*H.264 encoder.*size"):
        V.lipsync_video_file(backend, source, _audio(), out_dir, _options(), region="whole frame",
                             hooks=rec.hooks())
    assert rec.steps == [] and (not out_dir.exists() or not any(out_dir.iterdir()))
    assert source.read_bytes() == before


# --------------------------------------------------------------------------------------------- estimate vs reality

MEASURE = r"""
import json, sys, torch
from comfy_helpers import pack_module
LS = pack_module("nodes.adapters.lipsync")
RM = pack_module("omnisync_model.media.run_memory")
W = pack_module("omnisync_model.families.omnisync.weights")
B = pack_module("omnisync_model.backends.omnisync")
torch.set_num_threads(1)
backend = B.OmniSyncBackend(W.load_checkpoint(W.default_checkpoint()).eval())
frames = torch.rand(16, 192, 192, 3)
audio = {"waveform": torch.randn(1, 1, 16000) * 0.1, "sample_rate": 16000}
mouth = pack_module("omnisync_model.media.locate").uniform_track(16)
seen = {}
real = LS.fit_window
def spy(*a, **k):
    seen["need"] = real(*a, **k)[1]
    return real(*a, **k)
LS.fit_window = spy
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
open("/proc/self/clear_refs", "w").write("5")
base = rss()
LS.lipsync_images(backend, frames, 25.0, audio, LS.make_options(0.9, 1, 0, 16, 2, 2.5, 1.0, 0.15, 1.5), mouth=mouth)
print(json.dumps({"peak": hwm() - base, "estimate": seen["need"].total}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_the_estimate_covers_the_measured_peak():
    """One whole-frame window (16 x 192 x 192, 9,216 tokens) with the shipped model: the estimate is at least the
    measured peak RSS growth and not absurdly above it."""
    proc = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=300,
                          cwd=REPO / "tests", env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                   "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["peak"] <= figures["estimate"] <= 3 * figures["peak"], figures
