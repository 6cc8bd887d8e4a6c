"""The fused CPU runtime of the face networks (frozen trace + oneDNN Graph) and its trace-only formulations."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnisync_model.faces.landmarker import FaceLandmarker
from omnisync_model.faces.layers import BlazeBlock, max_pool2
from omnisync_model.faces.runtime import FusedRunner, concat_outputs, onednn_fusion
from omnisync_model.faces.smoothing import similarity_fit

GOLDEN = Path(__file__).resolve().parent / "golden" / "faces"


@pytest.fixture(scope="module")
def landmarker():
    torch.set_num_threads(2)
    return FaceLandmarker(fused=True)


def test_fused_mesh_matches_the_tflite_goldens(landmarker):
    g = dict(np.load(GOLDEN / "mesh.npz"))
    x = torch.from_numpy(g["mesh_input"]).permute(0, 3, 1, 2).float() / 255.0  # [4,192,192,3] -> [4,3,192,192]
    x = x.contiguous(memory_format=torch.channels_last)
    runner = FusedRunner(landmarker.mesh)
    with torch.no_grad():
        out = runner(x)  # a batch of 4 runs item by item through one trace
    assert runner.fused and len(runner._traces) == 1
    for key in ("mesh", "lips", "right_eye", "left_eye", "right_iris", "left_iris"):
        ref = torch.from_numpy(g[f"mesh_raw_{key}"]).view(out[key].shape)
        assert (out[key] - ref).abs().max() < 2e-3, key  # the eager test's bound (192-pixel units)
    assert (out["presence"] - torch.from_numpy(g["mesh_raw_presence"])[:, 0]).abs().max() < 1e-3


def test_fused_detector_matches_the_tflite_goldens(landmarker):
    g = dict(np.load(GOLDEN / "detector.npz"))
    x = torch.from_numpy(g["det_input"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    runner = FusedRunner(landmarker.detector)
    with torch.no_grad():
        boxes, scores = runner(x.contiguous(memory_format=torch.channels_last))
    assert runner.fused
    assert (boxes - torch.from_numpy(g["det_raw_boxes"])).abs().max() < 1e-2
    assert (scores - torch.from_numpy(g["det_raw_scores"])).abs().max() < 2e-2


def test_runner_stays_eager_where_it_should(landmarker):
    x = torch.rand(1, 3, 128, 128)
    runner = FusedRunner(landmarker.detector, enabled=False)
    with torch.no_grad():
        out = runner(x)
    assert not runner.fused and torch.equal(out[0], landmarker.detector(x)[0])
    runner = FusedRunner(nn.Linear(4, 2).double())
    with torch.no_grad():
        runner(torch.rand(1, 4, dtype=torch.float64))  # not float32: eager
        assert not runner.fused
        runner(torch.rand(0, 4, dtype=torch.float64))  # an empty batch: eager
        assert not runner.fused
    runner = FusedRunner(nn.Linear(4, 2))
    runner(torch.rand(1, 4))  # autograd wanted: eager
    assert not runner.fused and not runner._traces


class _Untraceable(nn.Module):
    def forward(self, x):
        return {"shape": x.shape[0]}  # not a tensor output: tracing fails


class _Drifting(nn.Module):
    """Computes something else while traced, so the trace disagrees with the eager check."""

    def forward(self, x):
        return x * (2.0 if torch.jit.is_tracing() else 1.0) * 10


def test_runner_falls_back_to_eager_with_a_warning(caplog):
    x = torch.rand(1, 4)
    for module in (_Untraceable(), _Drifting()):
        runner = FusedRunner(module)
        with caplog.at_level(logging.WARNING, logger="omnisync_model.faces.runtime"), torch.no_grad():
            out = runner(x)
        assert not runner.fused and runner._failed
        assert any("running eagerly" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with torch.no_grad():
            again = runner(x)  # no second attempt, no second warning
        assert not caplog.records and type(again) is type(out)


def test_fusion_switch_is_restored():
    before = torch.jit.onednn_fusion_enabled()
    with onednn_fusion(not before):
        assert torch.jit.onednn_fusion_enabled() == (not before)
    assert torch.jit.onednn_fusion_enabled() == before


def test_outputs_join_along_the_batch():
    parts = [{"a": torch.full((1, 2), float(i)), "b": (torch.tensor([i]),)} for i in range(3)]
    joined = concat_outputs(parts)
    assert torch.equal(joined["a"][:, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(joined["b"][0], torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError):
        concat_outputs([3, 4])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_trace_formulations_equal_the_eager_block():
    """Under tracing, pooling is one op and the channel widening a 1x1 convolution: same values as eager."""
    torch.manual_seed(0)
    block = BlazeBlock(8, 12, 2, "prelu", groups=3).eval()
    x = torch.randn(2, 24, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(block, x, check_trace=False)
        assert torch.allclose(traced(x), block(x), atol=1e-6)
        pooled = torch.jit.trace(max_pool2, x, check_trace=False)
        assert torch.equal(pooled(x), max_pool2(x))


def test_landmarker_reset_rebuilds_traces(landmarker):
    frame = np.zeros((64, 64, 3), np.uint8)
    fresh = FaceLandmarker(fused=True)
    fresh.detect([frame])
    assert fresh._run_detector._traces
    fresh.reset()
    assert not fresh._run_detector._traces and not fresh._run_mesh._traces


def test_closed_form_similarity_is_the_least_squares_fit():
    g = torch.Generator().manual_seed(4)
    src = torch.randn(30, 2, generator=g, dtype=torch.float64)
    a, s = 0.7, 1.3
    rot = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float64) * s
    dst = src @ rot.T + torch.tensor([3.0, -2.0], dtype=torch.float64)
    fit = similarity_fit(src, dst)
    assert torch.allclose(fit[:, :2], rot, atol=1e-12) and torch.allclose(fit[:, 2], torch.tensor([3.0, -2.0],
                                                                                                   dtype=torch.float64))
    noisy = dst + torch.randn(30, 2, generator=g, dtype=torch.float64) * 0.1
    fit = similarity_fit(src, noisy)
    resid = lambda m: float(((src @ m[:, :2].T + m[:, 2] - noisy) ** 2).sum())  # noqa: E731
    for d in (torch.tensor([[1e-3, 0, 0], [0, 1e-3, 0]]), torch.tensor([[0, -1e-3, 0], [1e-3, 0, 0]]),
              torch.tensor([[0, 0, 1e-3], [0, 0, -1e-3]])):
        assert resid(fit) < resid(fit + d.double()) and resid(fit) < resid(fit - d.double())  # a minimum
