"""Face tracking: smoothing, speaker choice, the fallback chain, chunking, bad input, and the JSON / preview export."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnisync_model.faces import SOURCES, FaceLandmarker, SpeakerChoice, TrackOptions, draw_landmarks, face_track
from omnisync_model.faces.speaker import associate, by_rule, choose
from omnisync_model.faces.smoothing import LandmarkSmoother, OneEuro, similarity_fit
from omnisync_model.faces.topology import EYE_CORNERS
from omnisync_model.faces.tracker import iter_chunks
from omnisync_model.faces.bench import eye_jitter
from omnisync_model.faces.export import write_landmarks_json

GOLDEN = Path(__file__).resolve().parent / "golden" / "faces"


@pytest.fixture(scope="module")
def landmarker():
    torch.set_num_threads(2)
    return FaceLandmarker()


@pytest.fixture(scope="module")
def real_frames():
    return np.load(GOLDEN / "frames.npz")["real_frames"]  # [4,224,224,3] uint8, one face


def _track(frames, landmarker, **kw):
    return face_track(frames, 25.0, TrackOptions(**kw), landmarker=landmarker)


# --------------------------------------------------------------------------------------------- smoothing


def test_one_euro_smooths_still_noise_and_follows_fast_motion():
    torch.manual_seed(0)
    f = OneEuro(25.0, 0.05, 80.0, 1.0)
    noise = torch.randn(200, 1) * 0.5  # 0.5 px noise on a still point, face size 300 px
    out = torch.stack([f(100 + n, 300.0) for n in noise])
    assert float(out[50:].std()) < 0.5 * float(noise[50:].std())  # MediaPipe's settings: about 2.5x less noise
    f.reset()
    ramp = torch.arange(50, dtype=torch.float32)[:, None] * 30.0  # 30 px per frame = 2.5 face sizes / s
    lag = torch.stack([f(x, 300.0) for x in ramp])[-10:] - ramp[-10:]
    assert float(lag.abs().max()) < 3.0  # a tenth of a frame's motion: no visible lag
    f.reset()
    assert torch.equal(f(torch.tensor([5.0]), 1.0), torch.tensor([5.0]))  # first value passes through


def _face(g):
    """A synthetic 478-point face: random points in a 300 px box."""
    return torch.cat([torch.rand(478, 2, generator=g) * 300, torch.randn(478, 1, generator=g) * 10], 1)


def test_landmark_smoother_keeps_rigid_motion_and_removes_shape_noise():
    g = torch.Generator().manual_seed(0)
    face = _face(g)
    sm = LandmarkSmoother(25.0)
    for t in range(40):  # fast rigid motion: rotation, zoom and translation of a fixed shape
        a, s = 0.05 * t, 1 + 0.02 * t
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
        xy = face[:, :2] @ rot.T + torch.tensor([20.0 * t, 5.0 * t])
        out = sm(torch.cat([xy, face[:, 2:] * s], 1))
        fit = similarity_fit(face[:, :2].double(), out[:, :2].double()).float()
        resid = (face[:, :2] @ fit[:, :2].T + fit[:, 2] - out[:, :2]).norm(dim=1)
        assert float(resid.max()) < 1e-2  # the output is the same shape, only the pose is filtered
    sm.reset()
    noisy = torch.stack([face + torch.randn(478, 3, generator=g) * torch.tensor([0.5, 0.5, 0.0]) for _ in range(100)])
    out = torch.stack([sm(x) for x in noisy])
    eyes = list(EYE_CORNERS)
    assert float(out[30:, eyes, :2].std(0).mean()) < 0.3 * float(noisy[30:, eyes, :2].std(0).mean())


def test_landmark_smoother_passes_collapsed_faces_through():
    """Rigid points without spread (a degenerate mesh) have no pose: the frame comes back as it is and the next one
    starts a new track, instead of a division by zero."""
    g = torch.Generator().manual_seed(4)
    sm = LandmarkSmoother(25.0)
    collapsed = torch.full((478, 3), 7.0)
    assert torch.equal(sm(collapsed), collapsed)  # collapsed reference
    face = _face(g)
    assert torch.allclose(sm(face), face, atol=1e-4)  # a fresh track: the first frame passes through
    assert torch.equal(sm(collapsed), collapsed) and sm.reference is None  # collapsed frame after a good one


def test_jitter_metric_ignores_head_motion():
    g = torch.Generator().manual_seed(1)
    face = _face(g)
    frames = []
    for t in range(5):
        a = 0.1 * t
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * (1 + 0.05 * t)
        frames.append(torch.cat([face[:, :2] @ rot.T + 7.0 * t, face[:, 2:]], 1))
    lm = torch.stack(frames)
    assert float(eye_jitter(lm).max()) < 1e-3  # rigid motion only: no jitter
    lm[3, list(EYE_CORNERS), :2] += torch.tensor([0.6, -0.8])  # one frame's eye corners displaced by 1 px
    j = eye_jitter(lm)
    assert abs(float(j[2].mean()) - 1.0) < 0.05 and abs(float(j[3].mean()) - 1.0) < 0.05
    assert float(j[[0, 1]].max()) < 1e-3


# --------------------------------------------------------------------------------------------- speaker


BOXES = torch.tensor([[300.0, 100, 400, 220], [10, 100, 150, 260], [600, 90, 700, 200]])  # middle, left (big), right


def test_speaker_rules():
    assert by_rule(BOXES, SpeakerChoice("largest"), 0, 480, 800) == 1
    assert [by_rule(BOXES, SpeakerChoice("index", index=i), 0, 480, 800) for i in range(4)] == [1, 0, 2, None]
    assert by_rule(BOXES, SpeakerChoice("nearest", point=(0.85, 0.3)), 0, 480, 800) == 2
    mask = torch.zeros(480, 800)
    mask[150:200, 320:380] = 1
    assert by_rule(BOXES, SpeakerChoice("mask", mask=mask), 0, 480, 800) == 0
    small = F.interpolate(mask[None, None], size=(48, 80))[0, 0]  # masks of another size are resized
    assert by_rule(BOXES, SpeakerChoice("mask", mask=small), 0, 480, 800) == 0
    assert by_rule(BOXES, SpeakerChoice("mask", mask=torch.zeros(480, 800)), 0, 480, 800) is None
    assert by_rule(BOXES[:0], SpeakerChoice(), 0, 480, 800) is None
    for bad in (dict(rule="loudest"), dict(rule="index", index=-1), dict(rule="nearest"), dict(rule="mask"),
                dict(rule="nearest", point=(math.nan, 0.5))):
        with pytest.raises(ValueError):
            SpeakerChoice(**bad)


def test_speaker_stays_on_the_chosen_face():
    last = torch.tensor([320.0, 110, 420, 230])  # the middle face moved a little
    assert associate(BOXES, last) == 0
    moved = torch.tensor([410.0, 105, 500, 215])  # no overlap, but within one face size of the middle face
    assert associate(BOXES, moved) == 0
    assert associate(BOXES, torch.tensor([1000.0, 400, 1050, 450])) is None
    # the left face is larger, yet the tracked middle face stays chosen; while missing, no other face is taken
    assert choose(BOXES, SpeakerChoice("largest"), 5, 480, 800, last, 0) == 0
    gone = torch.tensor([1000.0, 400, 1050, 450])
    assert choose(BOXES, SpeakerChoice("largest"), 5, 480, 800, gone, 3, max_gap=50) is None
    assert choose(BOXES, SpeakerChoice("largest"), 5, 480, 800, gone, 50, max_gap=50) == 1


def test_two_faces_index_rule_tracks_the_chosen_one(landmarker, real_frames):
    small = F.interpolate(torch.from_numpy(real_frames).permute(0, 3, 1, 2).float(), size=(160, 160), mode="area")
    canvas = torch.zeros(4, 224, 448, 3, dtype=torch.uint8)
    canvas[:, :, :224] = torch.from_numpy(real_frames)
    canvas[:, 32:192, 256:416] = small.round().clamp(0, 255).byte().permute(0, 2, 3, 1)  # smaller face on the right
    for choice, side in ((SpeakerChoice("index", index=0), "left"), (SpeakerChoice("index", index=1), "right"),
                         (SpeakerChoice("largest"), "left"), (SpeakerChoice("nearest", point=(0.9, 0.5)), "right")):
        track = face_track(canvas, 25.0, TrackOptions(locator=False), choice, landmarker=landmarker)
        assert track.source == ("mesh",) * 4
        cx = track.mouths[:, 0]
        assert bool((cx < 0.5).all()) if side == "left" else bool((cx > 0.5).all()), (choice, cx)


# --------------------------------------------------------------------------------------------- tracking and fallbacks


def test_track_of_real_frames(landmarker, real_frames):
    track = _track(real_frames, landmarker)
    assert len(track) == 4 and track.size == (224, 224) and track.source == ("mesh",) * 4
    assert track.landmarks.shape == (4, 478, 3) and bool(track.valid.all()) and bool((track.confidence > 0.9).all())
    lm = track.landmarks[0]
    box = track.boxes[0]
    assert torch.allclose(box, torch.cat([lm[:, :2].amin(0), lm[:, :2].amax(0)]))
    assert bool((track.mouths[:, 1] > lm[:, 1].mean()).all())  # the mouth is below the face centre
    mt = track.mouth_track()
    assert torch.equal(mt.centres, track.mouths) and torch.equal(mt.valid, track.valid)


def test_chunk_size_does_not_change_the_track(landmarker, real_frames):
    a = _track(real_frames, landmarker, chunk=1)
    b = _track(iter([real_frames[:3], real_frames[3]]), landmarker, chunk=64)  # chunks and single frames mixed
    assert torch.equal(a.landmarks, b.landmarks) and a.source == b.source


def test_fallback_chain(landmarker, real_frames):
    blank = np.full_like(real_frames[0], 128)
    frames = np.stack([real_frames[0], blank, blank, real_frames[1]])
    track = _track(frames, landmarker, locator=False)
    assert track.source == ("mesh", "neighbour", "neighbour", "mesh")
    assert track.valid.tolist() == [True, False, False, True] and float(track.confidence[1]) == 0.0
    assert torch.allclose(track.mouths[1], track.mouths[0] * 2 / 3 + track.mouths[3] / 3, atol=1e-6)
    assert bool(torch.isnan(track.landmarks[1]).all())
    nothing = _track(np.stack([blank] * 3), landmarker)
    assert nothing.source == ("uniform",) * 3 and not bool(nothing.valid.any()) and nothing.landmarks is None
    assert torch.allclose(nothing.mouths, torch.full((3, 2), 0.5))


def test_locator_fills_frames_the_mesh_misses(landmarker):
    from omnisync_model.training.synthetic import ClipSpec, make_clip

    clip = make_clip(ClipSpec(seed=3, style="animal", n_frames=6, size=96))
    track = _track(clip.frames, landmarker, chunk=4)
    assert set(track.source) <= set(SOURCES) and len(track) == 6
    assert "locator" in track.source or "mesh" in track.source
    err = (track.mouths - clip.mouth_centre).norm(dim=1)
    assert float(err.mean()) < 0.15  # mouth centres stay on the face either way


@pytest.mark.parametrize("frames", [
    np.zeros((3, 1, 1, 3), np.uint8),  # 1x1 frames
    np.zeros((2, 5, 7, 3), np.uint8),
    np.full((2, 64, 64), 90, np.uint8),  # grey, no channel axis
    np.full((2, 64, 64, 1), 90, np.uint8),
    np.full((2, 64, 64, 4), 200, np.uint8),  # RGBA
    np.full((2, 32, 32, 3), np.nan, np.float32),  # NaN
    np.full((2, 32, 32, 3), np.inf, np.float32),
])
def test_bad_frames_fall_back_cleanly(landmarker, frames):
    track = _track(frames, landmarker)
    assert len(track) == frames.shape[0] and all(s in SOURCES for s in track.source)
    assert bool(torch.isfinite(track.mouths).all()) and bool(torch.isfinite(track.boxes).all())


def test_grey_and_rgba_faces_are_found(landmarker, real_frames):
    grey = real_frames.mean(-1).round().astype(np.uint8)  # [F,H,W]
    rgba = np.concatenate([real_frames, np.full(real_frames.shape[:3] + (1,), 255, np.uint8)], -1)
    floats = real_frames.astype(np.float32) / 255.0
    for frames in (grey, rgba, floats):
        assert _track(frames[:2], landmarker).source == ("mesh", "mesh")


def test_unusable_input_raises_clear_errors(landmarker, real_frames):
    with pytest.raises(ValueError, match="at least one frame"):
        _track(iter([]), landmarker)
    with pytest.raises(ValueError, match="changed size"):
        _track(iter([real_frames[0], real_frames[0][:100]]), landmarker)
    with pytest.raises(ValueError, match="frame must be"):
        _track(iter([np.zeros((4, 4, 2), np.uint8)]), landmarker)
    with pytest.raises(ValueError, match="fps"):
        face_track(real_frames, 0.0, landmarker=landmarker)


def test_iter_chunks_bounds():
    chunks = list(iter_chunks(iter([np.zeros((3, 2, 2, 3)), np.zeros((2, 2, 3)), np.zeros((4, 2, 2, 3))]), 3))
    assert [len(c) for c in chunks] == [3, 3, 2]


# --------------------------------------------------------------------------------------------- export


def test_json_and_preview(landmarker, real_frames, tmp_path):
    blank = np.full_like(real_frames[0], 128)
    track = _track(np.stack([real_frames[0], blank, real_frames[1]]), landmarker, locator=False)
    path = write_landmarks_json(track, tmp_path / "out" / "track.json")
    data = json.loads(path.read_text())
    assert data["frames"] == 3 and data["width"] == 224 and data["landmarks"] == 478
    rows = data["track"]
    assert [r["source"] for r in rows] == ["mesh", "neighbour", "mesh"] and rows[1]["landmarks"] is None
    assert len(rows[0]["landmarks"]) == 478 and rows[0]["landmarks"][33] == pytest.approx(
        track.landmarks[0, 33].tolist(), abs=1e-5)
    frames = torch.from_numpy(np.stack([real_frames[0], blank, real_frames[1]]))
    drawn = draw_landmarks(frames, track)
    assert drawn.shape == frames.shape and drawn.dtype == torch.uint8
    x, y = (track.landmarks[0, 1, :2] * 224 - 0.5).round().long().tolist()
    assert drawn[0, y, x].tolist() == [0, 255, 0] and not torch.equal(drawn[1], frames[1])  # grey box on frame 1
    part = draw_landmarks(frames[2:].float() / 255, track, start=2)
    assert part.shape == (1, 224, 224, 3) and part.dtype == torch.float32
    with pytest.raises(ValueError):
        draw_landmarks(frames, track, start=1)
