"""The fused CPU runtime of the face networks (frozen trace + oneDNN Graph), its sharing and its trace-only forms."""

import gc
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnisync_model.faces.landmarker import FaceLandmarker, shipped_cpu_models
from omnisync_model.faces.layers import BlazeBlock, SameConv, max_pool2
from omnisync_model.faces.runtime import MAX_SHAPES, FusedRunner, concat_outputs, onednn_fusion
from omnisync_model.faces.smoothing import similarity_fit
from omnisync_model.faces.weights import load_detector, load_mesh

GOLDEN = Path(__file__).resolve().parent / "golden" / "faces"


@pytest.fixture(scope="module")
def landmarker():
    torch.set_num_threads(2)
    return FaceLandmarker()  # CPU float32, shipped weights: the process's shared fused models


def test_fused_mesh_matches_the_tflite_goldens(landmarker):
    g = dict(np.load(GOLDEN / "mesh.npz"))
    x = torch.from_numpy(g["mesh_input"]).permute(0, 3, 1, 2).float() / 255.0  # [4,192,192,3] -> [4,3,192,192]
    x = x.contiguous(memory_format=torch.channels_last)
    runner = landmarker.models.run_mesh
    with torch.no_grad():
        out = runner(x)  # a batch of 4 runs item by item through one trace
    assert runner.fused and list(runner._traces) == [((1, 3, 192, 192), x[:1].stride())]
    for key in ("mesh", "lips", "right_eye", "left_eye", "right_iris", "left_iris"):
        ref = torch.from_numpy(g[f"mesh_raw_{key}"]).view(out[key].shape)
        assert (out[key] - ref).abs().max() < 2e-3, key  # the eager test's bound (192-pixel units)
    assert (out["presence"] - torch.from_numpy(g["mesh_raw_presence"])[:, 0]).abs().max() < 1e-3


def test_fused_detector_matches_the_tflite_goldens(landmarker):
    g = dict(np.load(GOLDEN / "detector.npz"))
    x = torch.from_numpy(g["det_input"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    runner = landmarker.models.run_detector
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


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 8), (3, 2, 7), (5, 2, 10), (5, 2, 9), (2, 2, 6), (3, 1, 6),
                                                (4, 1, 7)])
def test_traced_same_padding_folds_into_the_kernel_exactly(kernel, stride, size):
    """Under tracing, SAME padding is a kernel with a leading zero row / column and symmetric padding (no pad
    op): same output shape and values as padding first."""
    torch.manual_seed(kernel * 10 + size)
    conv = SameConv(4, 6, kernel, stride, activation="prelu").eval()
    x = torch.randn(1, 4, size, size + 1)  # H and W of different parity
    with torch.no_grad():
        traced = torch.jit.trace(conv, x, check_trace=False)
        want = conv(x)
        got = traced(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    graph = traced.inlined_graph
    convs = [n for n in graph.nodes() if n.kind() in ("aten::_convolution", "aten::conv2d")]
    assert next(convs[0].inputs()).debugName() == list(graph.inputs())[1].debugName()  # the input itself, unpadded


def test_landmarker_reset_rebuilds_traces():
    frame = np.zeros((64, 64, 3), np.uint8)
    own = FaceLandmarker(detector=load_detector(), mesh=load_mesh(), fused=True)  # models of its own: own traces
    assert own.models is not shipped_cpu_models()
    own.detect([frame])
    assert own._run_detector.fused and own._run_detector._traces
    own.reset()
    assert not own._run_detector._traces and not own._run_mesh._traces


def _tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_landmarkers_share_one_pair_of_traces_and_leave_nothing_behind(landmarker):
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    roi = torch.tensor([[80.0, 60.0, 90.0, 90.0, 0.1]])
    landmarker.detect([frame]), landmarker.landmarks(frame, roi)  # both traces built
    shared = shipped_cpu_models()
    traces = (dict(shared.run_detector._traces), dict(shared.run_mesh._traces))
    before = _tensors()
    for _ in range(3):  # what each node run does: a new landmarker, used, dropped
        fl = FaceLandmarker(min_detection=0.3)
        fl.detect([frame]), fl.landmarks(frame, roi)
        assert fl.models is shared and fl._run_detector.fused and fl._run_mesh.fused
        del fl
    assert _tensors() == before  # no models, traces or trace constants left per landmarker
    assert (shared.run_detector._traces, shared.run_mesh._traces) == traces  # no trace rebuilt
    eager = FaceLandmarker(fused=False)
    assert eager.models is not shared and not eager._run_mesh.enabled
    (boxes, scores, _), (fboxes, fscores, _) = eager.detect_raw([frame]), landmarker.detect_raw([frame])
    assert not eager._run_detector.fused and landmarker._run_detector.fused
    assert (boxes - fboxes).abs().max() < 1e-3 * boxes.abs().max() and (scores - fscores).abs().max() < 1e-3


def test_the_networks_make_no_tensors_in_forward(landmarker):
    """Tensors made in ``forward`` become trace constants that TorchScript never frees: index tensors are buffers."""
    for module, side in ((landmarker.mesh, 192), (landmarker.detector, 128)):
        with torch.no_grad():
            trace = torch.jit.trace(module, torch.rand(1, 3, side, side), strict=False, check_trace=False)
        constants = [n for n in trace.inlined_graph.nodes() if n.kind() == "prim::Constant"
                     and n.output().type().kind() == "TensorType" and n.output().type().dim()]
        assert not constants, constants


def test_runner_traces_a_bounded_number_of_shapes():
    runner = FusedRunner(nn.Linear(4, 2))
    with torch.no_grad():
        for n in range(1, MAX_SHAPES + 2):
            x = torch.rand(1, n * 4).view(1, n, 4)  # a new item shape each time
            out = runner(x)
            assert runner.fused == (n <= MAX_SHAPES)  # past the limit: eager, nothing traced or dropped
            assert torch.allclose(out, runner.module(x), atol=1e-6)
    assert len(runner._traces) == MAX_SHAPES


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
