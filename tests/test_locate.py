"""Tests for omnisync_model.media.locate: the weight-free face / mouth locator, track filling, masks and previews."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from omnisync_model.media.locate import (
    LocateOptions,
    MouthLocator,
    MouthTrack,
    fill_holes,
    fill_invalid,
    finish_track,
    locate_mouths,
    mask_to_mouths,
    median_smooth,
    minimax_flood,
    mouth_mask_preview,
    reject_outliers,
)
from omnisync_model.training.synthetic import STYLES, ClipSpec, make_clip

from conftest import MEDIA

@pytest.fixture(autouse=True)
def _cpu_threads():
    """Overrides conftest's: the locator runs many small tensor ops that threads only slow down on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TOL = 0.08  # normalised distance to the true mouth centre that counts as a hit
RAW = LocateOptions(smooth_frames=1, outlier_frames=0)  # per-frame detections only


def _hits(track: MouthTrack, clip) -> torch.Tensor:
    return (track.centres - clip.mouth_centre).norm(dim=1) <= TOL  # [F] bool


def _style_hit_rate(style: str, options: LocateOptions) -> float:
    hits = []
    for size in (64, 128):
        for seed in (1, 2):
            clip = make_clip(ClipSpec(seed=seed, style=style, n_frames=8, size=size, motion=1.5))
            hits.append(_hits(locate_mouths(clip.frames, options), clip))
    return torch.cat(hits).float().mean().item()


def test_synthetic_styles_per_frame_accuracy():
    """Raw per-frame detections (no temporal help): >= 90 % of frames within 0.08 for at least 4 of 5 styles."""
    style_rates = {style: _style_hit_rate(style, RAW) for style in STYLES}
    good = [s for s, r in style_rates.items() if r >= 0.9]
    assert len(good) >= 4, f"hit rates per style: {style_rates}"
    assert min(style_rates.values()) >= 0.75, f"hit rates per style: {style_rates}"


def test_synthetic_track_with_temporal_smoothing():
    clip = make_clip(ClipSpec(seed=3, style="cartoon", n_frames=20, size=96, motion=1.5))
    track = locate_mouths(clip.frames)
    assert track.centres.shape == (20, 2) and track.face_boxes.shape == (20, 4) and track.confidence.shape == (20,)
    assert bool(_hits(track, clip).all())
    fb = track.face_boxes
    inside = (fb[:, 0] < clip.mouth_centre[:, 0]) & (clip.mouth_centre[:, 0] < fb[:, 2]) \
        & (fb[:, 1] < clip.mouth_centre[:, 1]) & (clip.mouth_centre[:, 1] < fb[:, 3])
    assert bool(inside.all())


def test_streamed_locator_equals_one_call_on_all_frames():
    """Chunks of any size (crossing the search chunk, one frame, empty) give exactly the one-call track."""
    clip = make_clip(ClipSpec(seed=5, style="anime", n_frames=23, size=64, motion=1.5))
    opts = LocateOptions(chunk=6)
    whole = locate_mouths(clip.frames, opts)
    locator = MouthLocator(opts)
    for a, b in [(0, 4), (4, 4), (4, 5), (5, 17), (17, 23)]:
        locator.add(clip.frames[a:b])
        assert len(locator) == b
    streamed = locator.finish()
    for name in ("centres", "valid", "face_boxes", "confidence"):
        assert torch.equal(getattr(streamed, name), getattr(whole, name)), name
    assert bool(whole.valid.any())
    with pytest.raises(ValueError, match="changed size"):
        locator.add(clip.frames[:1, :32])
    with pytest.raises(ValueError, match="none"):
        MouthLocator(opts).finish()


def test_uint8_frames_give_the_same_answer():
    clip = make_clip(ClipSpec(seed=4, style="realistic", n_frames=4, size=64))
    as_u8 = (clip.frames * 255).round().to(torch.uint8)
    a, b = locate_mouths(clip.frames, RAW), locate_mouths(as_u8, RAW)
    assert torch.allclose(a.centres, b.centres, atol=2 / 64)


def _landscape(n: int, h: int, w: int) -> torch.Tensor:
    y = torch.linspace(0, 1, h).view(1, h, 1, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1)
    sky = torch.cat([0.3 + 0.4 * y + 0 * x, 0.5 + 0.3 * y * x, 0.95 - 0.5 * y + 0 * x], -1)  # [1,h,w,3]
    return sky.expand(n, h, w, 3).contiguous()


@pytest.mark.parametrize("kind", ["blank", "noise", "landscape", "black"])
def test_no_face_falls_back_to_the_centre_without_raising(kind, caplog):
    g = torch.Generator().manual_seed(0)
    frames = {"blank": torch.full((3, 48, 64, 3), 0.6), "noise": torch.rand(3, 80, 64, 3, generator=g),
              "landscape": _landscape(3, 72, 128), "black": torch.zeros(3, 40, 40, 3)}[kind]
    with caplog.at_level(logging.WARNING, logger="omnisync_model.media.locate"):
        track = locate_mouths(frames)
    assert not bool(track.valid.any())
    assert torch.equal(track.centres, torch.full((3, 2), 0.5))
    assert torch.equal(track.face_boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(3, 1))
    assert torch.equal(track.confidence, torch.zeros(3))
    assert "no face" in caplog.text


def test_odd_inputs_do_not_raise():
    g = torch.Generator().manual_seed(1)
    for frames in (torch.rand(1, 1, 1, 3, generator=g), torch.rand(2, 5, 300, 4, generator=g),
                   torch.rand(1, 3, 2000, 3, generator=g), torch.rand(1, 900, 40, 3, generator=g),
                   torch.full((2, 30, 30, 1), float("nan")), torch.randint(0, 256, (2, 33, 17, 3), dtype=torch.uint8)):
        track = locate_mouths(frames)
        assert track.centres.shape == (frames.shape[0], 2) and bool(torch.isfinite(track.centres).all())
    with pytest.raises(ValueError):
        locate_mouths(torch.zeros(0, 8, 8, 3))


def test_blank_middle_frames_are_filled_from_neighbours():
    clip = make_clip(ClipSpec(seed=5, style="anime", n_frames=12, size=64, motion=1.0))
    frames = clip.frames.clone()
    frames[4:8] = 0.5  # a cut to grey
    track = locate_mouths(frames, LocateOptions(smooth_frames=1))
    assert not bool(track.valid[4:8].any()) and bool(track.valid[[3, 8]].all())
    w = torch.tensor([1, 2, 3, 4], dtype=torch.float32)[:, None] / 5  # frames 4..7 between 3 and 8
    expected = track.centres[3] * (1 - w) + track.centres[8] * w
    assert torch.allclose(track.centres[4:8], expected, atol=1e-6)
    assert float((track.centres[4:8] - clip.mouth_centre[4:8]).norm(dim=1).max()) <= TOL


def test_fill_invalid_interpolates_and_extends():
    values = torch.tensor([[0.0], [9.0], [2.0], [9.0], [9.0], [8.0], [9.0]])
    valid = torch.tensor([False, False, True, False, False, True, False])
    out = fill_invalid(values, valid)
    assert torch.allclose(out[:, 0], torch.tensor([2.0, 2.0, 2.0, 4.0, 6.0, 8.0, 8.0]))
    assert torch.equal(fill_invalid(values, torch.zeros(7, dtype=torch.bool)), values)


def test_median_smooth_and_outlier_rejection():
    x = torch.tensor([[0.0], [0.0], [5.0], [0.0], [0.0]])
    assert torch.equal(median_smooth(x, 3), torch.zeros(5, 1))
    assert torch.equal(median_smooth(x, 1), x)
    centres = torch.full((9, 2), 0.5)
    centres[4] = torch.tensor([0.9, 0.9])  # one wild detection
    boxes = torch.tensor([[0.3, 0.3, 0.7, 0.7]]).repeat(9, 1)
    kept = reject_outliers(centres, boxes, torch.ones(9, dtype=torch.bool), 5)
    assert kept.tolist() == [True] * 4 + [False] + [True] * 4


def test_finish_track_smooths_and_reports_confidence():
    n = 7
    centres = torch.tensor([[0.5, 0.5]]).repeat(n, 1)
    centres[3] = torch.tensor([0.52, 0.5])
    boxes = torch.tensor([[0.2, 0.2, 0.8, 0.8]]).repeat(n, 1)
    conf = torch.linspace(0.4, 1.0, n)
    track = finish_track(centres, boxes, conf, torch.ones(n, dtype=torch.bool), smooth_frames=3)
    assert torch.equal(track.centres, torch.tensor([[0.5, 0.5]]).repeat(n, 1))
    assert torch.equal(track.confidence, conf) and bool(track.valid.all())


def test_minimax_flood_matches_brute_force_relaxation():
    g = torch.Generator().manual_seed(2)
    cost = torch.rand(3, 1, 17, 11, generator=g)
    cost[:, :, 3:14, 5] = 4.0  # a wall
    seeds = torch.full_like(cost, math.inf)
    seeds[:, :, 0, :] = cost[:, :, 0, :]
    ref = seeds.clone()
    for _ in range(400):  # relax: dist = min(dist, max(min of 8 neighbours, cost))
        ref = torch.minimum(ref, torch.maximum(-F.max_pool2d(-ref, 3, 1, 1), cost))
    assert torch.equal(minimax_flood(cost, seeds), ref)


def test_fill_holes_fills_a_ring_but_not_a_cup():
    yy, xx = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    d = torch.hypot(yy - 10, xx - 10)
    ring = ((d > 5) & (d < 8)).float()[None, None]
    cup = ring.clone()
    cup[..., 10:, 9:12] = 0  # a gap to the outside
    assert torch.equal(fill_holes(ring)[0, 0], (d < 8).float())
    assert torch.equal(fill_holes(cup), cup)


def _disc_mask(n: int, h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    ys = torch.arange(h, dtype=torch.float32).view(h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, w) + 0.5
    d = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
    return (r - d + 0.5).clamp(0, 1).expand(n, h, w).clone()  # anti-aliased disc [n,h,w]


def test_mask_to_mouths_centroid_is_exact():
    h, w, cx, cy = 48, 80, 31.3, 20.7
    track = mask_to_mouths(_disc_mask(3, h, w, cx, cy, 6.0))
    px = track.centres * torch.tensor([w, h])
    assert float((px - torch.tensor([cx, cy])).abs().max()) < 0.5
    assert bool(track.valid.all()) and torch.equal(track.confidence, torch.ones(3))
    fb = track.face_boxes * torch.tensor([w, h, w, h])
    assert torch.allclose(fb[0], torch.tensor([25.0, 14.0, 38.0, 27.0]))  # pixels within 6.5 of the centre


def test_mask_to_mouths_fills_empty_frames():
    a = _disc_mask(1, 40, 40, 10.0, 10.0, 4.0)
    b = _disc_mask(1, 40, 40, 30.0, 20.0, 4.0)
    mask = torch.cat([a, torch.zeros(3, 40, 40), b])
    track = mask_to_mouths(mask)
    assert track.valid.tolist() == [True, False, False, False, True]
    px = track.centres * 40
    assert torch.allclose(px[2], torch.tensor([20.0, 15.0]), atol=0.05)  # half way
    empty = mask_to_mouths(torch.zeros(2, 16, 16))
    assert not bool(empty.valid.any()) and torch.equal(empty.centres, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        mask_to_mouths(torch.zeros(2, 3, 4, 5))


def test_mouth_mask_preview_discs_and_invalid_frames():
    track = MouthTrack(torch.tensor([[0.25, 0.5], [0.5, 0.5]]), torch.tensor([True, False]),
                       torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.tensor([1.0, 0.0]))
    prev = mouth_mask_preview(track, 40, 80, radius=0.1)  # radius 4 px
    assert prev.shape == (2, 40, 80)
    assert prev[0, 20, 20] == 1.0 and prev[0, 20, 30] == 0.0 and prev[0, 5, 20] == 0.0
    assert 0.0 < prev[0, 20, 23] < 1.0 and prev[0, 20, 25] == 0.0  # soft edge, pixel centres 3.5 and 5.5 px away
    assert torch.equal(prev[1], torch.zeros(40, 80))


def test_options_are_checked():
    with pytest.raises(ValueError):
        LocateOptions(work_size=4)
    with pytest.raises(ValueError):
        LocateOptions(smooth_frames=0)


REAL = MEDIA / "talking_head_25fps.mp4"


@pytest.mark.skipif(not REAL.exists(), reason="shared media not available")
def test_real_clip_face_box_holds_the_mouth():
    from omnisync_model.media.video_io import iter_video_frames

    frames = next(iter_video_frames(REAL, chunk=30, max_frames=30))  # [30,1920,1080,3]
    assert frames.shape[1:3] == (1920, 1080)
    track = locate_mouths(frames)
    scale = torch.tensor([1080.0, 1920.0])
    mouth = torch.tensor([590.0, 790.0])  # lips of the speaker, pixels (viewed; the head moves ~30 px)
    px = track.centres * scale
    boxes = track.face_boxes * torch.cat([scale, scale])
    assert float(track.valid.float().mean()) >= 0.8
    assert float((px - mouth).norm(dim=1).max()) < 80.0  # within a third of the ~250 px face width
    for corner in (torch.tensor([566.0, 816.0]), torch.tensor([590.0, 771.0])):
        assert bool(((boxes[:, :2] <= corner) & (corner <= boxes[:, 2:])).all())
