"""The face models' fast input and output paths against their plain forms: the canvas sampler (grid_sample on a
power-of-two float region) against the per-pixel gather, the model input's band layout, the ROI from landmarks in
Python floats, the refinement gather inside the mesh, and the batched region matrices."""

import math
import random

import numpy as np
import pytest
import torch

from omnisync_model.faces import roi as R
from omnisync_model.faces.landmarker import model_input
from omnisync_model.faces.mesh import FaceMesh, FaceMeshConfig, refine
from omnisync_model.faces.mesh_ops import region_matrices, region_matrix
from omnisync_model.faces.topology import ROTATION_POINTS


def _cases(count, seed):
    """Random frames (1..300 px, 1/3/4 channels, some strided views) with ROIs inside, across and outside them."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        h, w, c = rng.randint(1, 300), rng.randint(1, 300), rng.choice([1, 3, 4])
        if rng.random() < 0.3:  # a view into a larger buffer: padded rows, a channel slice
            img = torch.randint(0, 256, (h + 5, w + 7, 4), generator=gen, dtype=torch.uint8)[2:2 + h, 3:3 + w, :c]
        else:
            img = torch.randint(0, 256, (h, w, c), generator=gen, dtype=torch.uint8)
        roi = [rng.uniform(-50, w + 50), rng.uniform(-50, h + 50), rng.uniform(1, 400), rng.uniform(1, 400),
               rng.uniform(-4, 4)]
        yield img, R.roi_matrix(torch.tensor([roi]), 24)[0], rng.choice(["zero", "replicate"])


def test_canvas_sampler_equals_the_pixel_gather_bit_for_bit(monkeypatch):
    """On 8-bit frames the grid_sample path (power-of-two canvas: exact coordinates and weights) gives the same
    values, bit for bit, as reading each sample's four pixels, for any frame size, layout, border and ROI."""
    cases = list(_cases(300, 7))
    fast = []
    for img, m, border in cases:
        assert R._canvas(img, R._positions(m, 24, "cpu"), border) is not None  # small frames: the canvas path
        fast.append(R.sample(img, m, 24, border))
    monkeypatch.setattr(R, "CANVAS_LIMIT", 0)  # every region too large: the gather path
    for (img, m, border), got in zip(cases, fast):
        assert torch.equal(got, R.sample(img, m, 24, border))


def test_axis_aligned_blocks_equal_the_pixel_gather_bit_for_bit(monkeypatch):
    """A letterbox (rotation 0) too large for the canvas reads the pixel blocks of its sample rows and columns: the
    same values as the four-pixel gather, inside, across and outside the frame, for both borders."""
    monkeypatch.setattr(R, "CANVAS_LIMIT", 0)
    g = torch.Generator().manual_seed(9)
    for h, w in ((60, 110), (97, 40), (1, 1), (5, 300)):
        padded = torch.randint(0, 256, (h, w + 3, 3), generator=g, dtype=torch.uint8)
        for img in (padded[:, :w], padded[:, :w].contiguous()):
            for rois in (R.letterbox_rois(h, w), torch.tensor([[w / 3, h / 2, w * 1.7, h * 0.4, 0.0]]),
                         torch.tensor([[-20.0, h + 30.0, 25.0, 25.0, 0.0]])):
                m = R.roi_matrix(rois, 24)[0]
                for border in ("zero", "replicate"):
                    q = R._positions(m, 24, "cpu")
                    assert R._separable(img, q.clone(), border) is not None
                    q = q.long().view(-1, 2)
                    assert torch.equal(R.sample(img, m, 24, border), R._gather(img, q[:, 0], q[:, 1], 24, border))
    m = R.roi_matrix(torch.tensor([[30.0, 30.0, 40.0, 40.0, 0.2]]), 24)[0]  # rotated: not separable
    assert R._separable(padded, R._positions(m, 24, "cpu"), "zero") is None


def test_canvas_covers_the_samples_with_power_of_two_sides():
    for img, m, border in _cases(200, 11):
        q = R._positions(m, 24, "cpu")
        pixels, (ox, oy), (sw, sh) = R._canvas(img, q, border)
        assert pixels.shape[-2:] == (sh, sw) and sw & (sw - 1) == 0 and sh & (sh - 1) == 0
        hgt, wid = img.shape[:2]
        lo, hi = q.view(-1, 2).amin(0) / R.TAB, q.view(-1, 2).amax(0) / R.TAB
        for first, last, o, side, size in ((lo[0], hi[0], ox, sw, wid), (lo[1], hi[1], oy, sh, hgt)):
            need_a = min(max(math.floor(first), 0), size - 1)
            need_b = min(max(math.floor(last) + 1, 0), size - 1)
            assert o <= need_a and need_b < o + side  # every image pixel a sample reads is in the canvas
            if first < 0:
                assert o == 0  # samples left of the image: the canvas starts at its edge
            if math.floor(last) + 1 > size - 1:
                assert o + min(side, size) == size  # ... and right of it: the canvas ends at its edge


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bands_reassemble_to_the_same_samples(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for img, m, border in _cases(20, 3):
            bands = R.sample_bands(img, m, 24, border)
            assert bands.shape[0] == max(k for k in range(1, threads + 1) if 24 % k == 0)
            whole = torch.cat(list(bands), 1)  # [P,C,n/P,n] -> [C,n,n]
            assert torch.equal(whole.permute(1, 2, 0), R.sample(img, m, 24, border))
    finally:
        torch.set_num_threads(before)
    torch.set_num_threads(1)
    try:
        one = [R.sample(img, m, 24, border) for img, m, border in _cases(20, 3)]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, R.sample(img, m, 24, border)) for a, (img, m, border) in zip(one, _cases(20, 3)))


@pytest.mark.parametrize("kind", ["rgb", "rgba", "grey", "float"])
def test_model_input_is_the_rounded_scaled_samples(kind):
    g = torch.Generator().manual_seed(5)
    frame = torch.randint(0, 256, (90, 120, {"rgba": 4, "grey": 1}.get(kind, 3)), generator=g, dtype=torch.uint8)
    scale = 1.0
    if kind == "float":
        frame = frame.float() / 255
        frame[10:20, 30:40] = float("nan")  # NaN counts as black
        scale = 255.0
    rois = torch.tensor([[60.0, 45.0, 70.0, 70.0, 0.3], [20.0, 80.0, 50.0, 40.0, -1.0]])
    for border, (lo, hi) in (("replicate", (0.0, 1.0)), ("zero", (-1.0, 1.0))):
        x = model_input(frame, scale, rois, 32, border, (lo, hi), "cpu", torch.float32)
        assert x.shape == (2, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
        for i, m in enumerate(R.roi_matrix(rois, 32)):
            v = torch.nan_to_num(R.sample(frame, m, 32, border) * scale)
            px = torch.floor(v + 0.5).clamp(0, 255)
            px = px[..., :3] if px.shape[-1] >= 3 else px.expand(-1, -1, 3)
            assert torch.equal(x[i], (px * ((hi - lo) / 255.0) + lo).permute(2, 0, 1)), (kind, border, i)


def test_rois_from_landmarks_follow_mediapipe_in_float_math():
    g = torch.Generator().manual_seed(2)
    lm = torch.rand(5, 478, 3, generator=g) * torch.tensor([1920.0, 1080.0, 50.0])
    lm[3, 40, 0] = float("nan")
    got = R.rois_from_landmarks(lm)
    lo, hi = lm[..., :2].amin(1), lm[..., :2].amax(1)
    a, b = ROTATION_POINTS
    d = lm[:, b, :2] - lm[:, a, :2]
    t = R.normalize_radians(-torch.atan2(-d[:, 1], d[:, 0]))
    side = torch.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]) * R.ROI_SCALE
    ref = torch.stack([(lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2, side, side, t], 1)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4, equal_nan=True)
    assert got.dtype == torch.float32 and torch.isnan(got[3, [0, 2, 3]]).all()  # a NaN x: NaN box x, no error
    assert (got[:, 4].abs() <= math.pi).all()


def test_mesh_refines_in_the_network_as_mediapipe():
    torch.manual_seed(0)
    mesh = FaceMesh().eval()
    with torch.no_grad():
        for p in mesh.parameters():
            p.normal_(0, 0.1)
        out = mesh(torch.rand(2, 3, 192, 192))
    assert torch.equal(out["landmarks"], refine(out))


def test_region_matrices_in_one_batch_equal_each_region_alone():
    cfg = FaceMeshConfig()
    coarse = torch.rand(3, 468, 3) * 48
    width = max(len(r.subset) for r in cfg.regions)
    subsets = torch.tensor([r.subset + r.subset[:1] * (width - len(r.subset)) for r in cfg.regions])
    ends = torch.tensor([[r.left, r.right] for r in cfg.regions])
    batched = region_matrices(coarse, subsets, ends, (16, 16), (1.5, 1.5))  # [B,R,2,3]
    for i, r in enumerate(cfg.regions):
        alone = region_matrix(coarse, torch.tensor(r.subset), r.left, r.right, (16, 16), (1.5, 1.5))
        torch.testing.assert_close(batched[:, i], alone, rtol=0, atol=1e-5)
    assert np.isfinite(batched.numpy()).all()
