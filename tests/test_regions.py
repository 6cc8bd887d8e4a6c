"""Tests for omnisync_model.media.regions: crop / paste-back (single box and per frame) and boxes from a face track."""

import pytest
import torch

from omnisync_model.media.locate import MouthTrack
from omnisync_model.media.regions import (
    Box,
    check_boxes,
    crop,
    crop_boxes_from_track,
    crop_per_frame,
    feather_mask,
    map_track_to_crop,
    moving_average,
    paste_back,
    paste_back_per_frame,
    resize,
    working_size,
)

F_, H, W = 4, 36, 52  # frames, frame size


def _frames(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(F_, H, W, 3, generator=g)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x


def _outside(boxes: torch.Tensor) -> torch.Tensor:
    """[F,H,W] True outside each frame's box."""
    out = torch.ones(len(boxes), H, W, dtype=torch.bool)
    for i, (x, y, w, h) in enumerate(boxes.tolist()):
        out[i, y:y + h, x:x + w] = False
    return out


BOXES = torch.tensor([[0, 0, 20, 16], [10, 5, 20, 16], [32, 20, 20, 16], [5, 18, 20, 16]])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_round_trip_touches_nothing_outside(dtype):
    full = _frames(dtype)
    crops = crop_per_frame(full, BOXES, (16, 20))  # at the boxes' own size: an identity crop
    out = paste_back_per_frame(full, crops, BOXES, feather=4)
    assert out.dtype == dtype and out.shape == full.shape
    outside = _outside(BOXES)
    assert torch.equal(out[outside], full[outside])  # bit-exact
    diff = (out.float() - full.float()).abs()
    assert float(diff.max()) <= (1.0 if dtype == torch.uint8 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resampled_round_trip_stays_close_inside(dtype):
    g = torch.Generator().manual_seed(3)
    smooth = resize(torch.rand(F_, 6, 8, 3, generator=g), (H, W))  # smooth content survives resampling
    full = (smooth * 255).round().to(torch.uint8) if dtype == torch.uint8 else smooth
    crops = crop_per_frame(full, BOXES, (32, 40))
    out = paste_back_per_frame(full, crops, BOXES, feather=4)
    outside = _outside(BOXES)
    assert torch.equal(out[outside], full[outside])
    scale = 255.0 if dtype == torch.uint8 else 1.0
    assert float((out.float() - full.float()).abs().mean()) / scale < 0.01


def test_changed_result_only_changes_the_box():
    full = _frames(torch.float32)
    white = torch.ones(F_, 8, 10, 3)
    out = paste_back_per_frame(full, white, BOXES, feather=3)
    outside = _outside(BOXES)
    assert torch.equal(out[outside], full[outside])
    for i, (x, y, w, h) in enumerate(BOXES.tolist()):  # the feathered centre takes the (colour-matched) result
        inner = out[i, y + 4:y + h - 4, x + 4:x + w - 4]
        assert float(inner.reshape(-1, 3).std(0).max()) < 1e-5  # flat: the result, shifted by one colour per channel


def test_per_frame_matches_single_box_frame_by_frame():
    full = _frames(torch.uint8, seed=1)
    g = torch.Generator().manual_seed(2)
    result = torch.rand(F_, 12, 14, 3, generator=g)
    per_frame = paste_back_per_frame(full, result, BOXES, feather=5)
    for i, b in enumerate(BOXES.tolist()):
        single = paste_back(full[i:i + 1], result[i:i + 1], Box(*b), feather=5)
        assert torch.equal(per_frame[i:i + 1], single)
        assert torch.equal(crop_per_frame(full, BOXES, (9, 11))[i:i + 1], crop(full[i:i + 1], Box(*b), (9, 11)))


def test_equal_boxes_agree_with_the_single_box_functions():
    full = _frames(torch.float32, seed=4)
    result = torch.rand(F_, 10, 10, 3, generator=torch.Generator().manual_seed(5))
    box = Box(7, 9, 24, 18)
    boxes = torch.tensor([[7, 9, 24, 18]]).repeat(F_, 1)
    assert torch.equal(paste_back(full, result, box, feather=4), paste_back_per_frame(full, result, boxes, feather=4))
    assert torch.equal(crop(full, box, (12, 16)), crop_per_frame(full, boxes, (12, 16)))


def test_paste_back_reference_math_on_one_frame():
    """Resize, shift to the original's mean over the feather band, blend with the raised-cosine mask."""
    full = _frames(torch.float32, seed=6)[:1]
    res = torch.rand(1, 16, 20, 3, generator=torch.Generator().manual_seed(7))  # already the box size
    box = Box(3, 4, 20, 16)
    orig = full[:, 4:20, 3:23]
    mask = feather_mask(16, 20, 4)
    band = (mask < 0.999).float()
    shift = ((orig - res) * band).sum((1, 2), keepdim=True) / band.sum()
    want = mask * (res + shift).clamp(0, 1) + (1 - mask) * orig
    out = paste_back(full, res, box, feather=4)
    assert torch.allclose(out[:, 4:20, 3:23], want, atol=1e-6)


def test_check_boxes_rejects_bad_boxes():
    check_boxes(BOXES, F_, H, W)
    for bad in ([[0, 0, 53, 10]] * F_, [[-1, 0, 5, 5]] * F_, [[0, 0, 0, 5]] * F_, [[0, 0, 5, 5]] * (F_ - 1)):
        with pytest.raises(ValueError):
            check_boxes(torch.tensor(bad), F_, H, W)
    with pytest.raises(ValueError):
        paste_back_per_frame(_frames(torch.float32), torch.zeros(F_ - 1, 4, 4, 3), BOXES)


def _track(face_boxes, centres=None) -> MouthTrack:
    fb = torch.tensor(face_boxes, dtype=torch.float32)
    c = centres if centres is not None else torch.stack([(fb[:, 0] + fb[:, 2]) / 2, fb[:, 1] * 0.3 + fb[:, 3] * 0.7], 1)
    n = len(fb)
    return MouthTrack(c, torch.ones(n, dtype=torch.bool), fb, torch.ones(n))


def test_crop_boxes_have_constant_size_and_stay_inside():
    track = _track([[0.0, 0.0, 0.2, 0.3], [0.7, 0.6, 1.0, 1.0], [0.4, 0.4, 0.6, 0.65], [-0.1, 0.8, 0.15, 1.1]])
    boxes = crop_boxes_from_track(track, (200, 320), scale=1.6, square=True, smooth_frames=1)
    assert boxes.dtype == torch.int64 and boxes.shape == (4, 4)
    assert (boxes[:, 2] == boxes[0, 2]).all() and (boxes[:, 3] == boxes[0, 3]).all()
    side = round(max(0.3 * 320, 0.4 * 200, 0.2 * 320, 0.3 * 200) * 1.6)  # largest face side x scale: 154
    assert boxes[0, 2] == side and boxes[0, 3] == side
    x, y, w, h = boxes.unbind(1)
    assert bool(((x >= 0) & (y >= 0) & (x + w <= 320) & (y + h <= 200)).all())
    assert boxes[2].tolist()[:2] == [round(0.5 * 320 - side / 2), round(0.525 * 200 - side / 2)]  # centred


def test_crop_boxes_never_exceed_the_frame():
    track = _track([[0.0, 0.0, 1.0, 1.0]] * 3)  # the no-face fallback
    boxes = crop_boxes_from_track(track, (90, 160))
    assert boxes.tolist() == [[35, 0, 90, 90]] * 3  # square, as large as fits, centred
    boxes = crop_boxes_from_track(track, (90, 160), square=False)
    assert boxes.tolist() == [[0, 0, 160, 90]] * 3


def test_smoothing_reduces_jitter():
    g = torch.Generator().manual_seed(8)
    n = 40
    cx = 0.5 + 0.02 * torch.randn(n, generator=g)
    cy = 0.5 + 0.02 * torch.randn(n, generator=g)
    fb = torch.stack([cx - 0.1, cy - 0.12, cx + 0.1, cy + 0.12], 1)
    track = MouthTrack(torch.stack([cx, cy], 1), torch.ones(n, dtype=torch.bool), fb, torch.ones(n))
    raw = crop_boxes_from_track(track, (400, 400), smooth_frames=1)[:, :2].float()
    smooth = crop_boxes_from_track(track, (400, 400), smooth_frames=9)[:, :2].float()
    jitter = lambda b: float((b[1:] - b[:-1]).abs().mean())  # noqa: E731
    assert jitter(smooth) < 0.4 * jitter(raw)
    assert torch.allclose(moving_average(torch.arange(5.0)[:, None], 3)[:, 0],
                          torch.tensor([1 / 3, 1.0, 2.0, 3.0, 11 / 3]))


def test_map_track_to_crop_coordinates():
    track = MouthTrack(torch.tensor([[0.5, 0.5], [0.1, 0.1]]), torch.tensor([True, True]),
                       torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.0, 0.2, 0.2]]), torch.tensor([0.9, 0.8]))
    boxes = torch.tensor([[30, 10, 40, 60], [50, 40, 20, 20]])  # frame 100 x 80 (h x w)
    mapped = map_track_to_crop(track, boxes, (100, 80))
    assert torch.allclose(mapped.centres[0], torch.tensor([(40 - 30) / 40, (50 - 10) / 60]))
    assert torch.allclose(mapped.face_boxes[0], torch.tensor([(32 - 30) / 40, (30 - 10) / 60, (48 - 30) / 40, 1.0]))
    assert mapped.valid.tolist() == [True, False]  # frame 1's mouth lies outside its crop
    assert torch.equal(mapped.confidence, track.confidence)


def test_box_parse_check_and_working_size():
    assert Box.parse("1,2,30,40") == Box(1, 2, 30, 40)
    with pytest.raises(ValueError):
        Box.parse("1,2,3")
    with pytest.raises(ValueError):
        Box(0, 0, 4, 40).check(100, 100)
    assert working_size(Box(0, 0, 300, 200), 256, 16) == (176, 256)


def test_paste_weights_zero_keeps_the_box_and_one_matches_plain_paste():
    g = torch.Generator().manual_seed(3)
    full = (torch.rand(2, 40, 50, 3, generator=g) * 255).round().to(torch.uint8)
    result = torch.rand(2, 16, 16, 3, generator=g)
    boxes = torch.tensor([[5, 6, 24, 24], [10, 8, 24, 24]])
    kept = paste_back_per_frame(full, result, boxes, weights=torch.zeros(2, 16, 16))
    assert torch.equal(kept, full)
    ones = paste_back_per_frame(full, result, boxes, weights=torch.ones(2, 16, 16))
    assert (ones.int() - paste_back_per_frame(full, result, boxes).int()).abs().max() <= 1  # resampling rounding
