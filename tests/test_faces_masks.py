"""The lip-and-jaw paste-back mask from the face mesh (faces/masks.py, blend 'jaw'): exact polygon filling, the
outline carried from the tracker through the crop, and the paste taking only the masked pixels."""

import dataclasses

import pytest
import torch

from comfy_helpers import pack_module

MASKS = pack_module("omnisync_model.faces.masks")
TOPO = pack_module("omnisync_model.faces.topology")
FA = pack_module("nodes.adapters.faces")
LF = pack_module("omnisync_model.media.lipsync_file")
LOCATE = pack_module("omnisync_model.media.locate")


def test_polygon_fill_is_exact_at_pixel_centres():
    square = torch.tensor([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]])
    m = MASKS.polygon_mask(square, 8, 9)
    want = torch.zeros(8, 9)
    want[2:6, 2:6] = 1.0  # centres 2.5 .. 5.5
    assert torch.equal(m, want)
    assert torch.equal(MASKS.polygon_mask(square.flip(0), 8, 9), want)  # orientation does not matter
    tri = torch.tensor([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]])
    assert abs(float(MASKS.polygon_mask(tri, 40, 40).sum()) - 800) <= 40  # area 800 px^2, edge pixels aside
    bow = torch.tensor([[0.0, 0.0], [10.0, 10.0], [10.0, 0.0], [0.0, 10.0]])  # self-crossing: even-odd rule
    assert float(MASKS.polygon_mask(bow, 10, 10).sum()) == pytest.approx(50, abs=6)


def test_jaw_masks_are_soft_inside_the_outline_and_empty_without_a_mesh():
    ring = torch.tensor([[0.3, 0.4], [0.7, 0.4], [0.7, 0.9], [0.3, 0.9]])[None]  # [1,K,2] normalised
    outlines = torch.cat([ring, torch.full_like(ring, float("nan"))])
    m = MASKS.jaw_masks(outlines, 64, 64)
    assert m.shape == (2, 64, 64) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m[0, 40, 32]) == 1.0 and float(m[0, 5, 5]) == 0.0  # inside, far outside
    assert 0.0 < float(m[0, 26, 32]) < 1.0  # the soft edge at the outline's top (y = 0.4 * 64 = 25.6)
    assert float(m[1].abs().sum()) == 0.0
    assert MASKS.has_outline(outlines).tolist() == [True, False]


def test_tracker_outline_covers_the_mouth_and_not_the_eyes():
    """A drawn realistic face: the mesh's jaw outline, filled, holds the mouth centre and none of the eye corners."""
    from omnisync_model.faces.tracker import face_track
    from omnisync_model.training.synthetic import ClipSpec, make_clip

    clip = make_clip(ClipSpec(seed=1000, style="realistic", n_frames=3, size=192))
    track = face_track(clip.frames, clip.fps)
    assert track.jaw is not None and track.jaw.shape == (3, len(TOPO.JAW_OUTLINE), 2)
    mt = track.mouth_track()
    masks = MASKS.jaw_masks(mt.jaw, 192, 192, feather=0.0)  # hard masks
    for i in range(3):
        cx, cy = (mt.centres[i] * 192).long().tolist()
        assert float(masks[i, cy, cx]) == 1.0
        for p in TOPO.EYE_CORNERS:
            ex, ey = (track.landmarks[i, p, :2] * 192).long().tolist()
            assert float(masks[i, ey, ex]) == 0.0


def _jaw_track(n=4):
    centres = torch.tensor([[0.5, 0.62]]).repeat(n, 1)
    valid = torch.ones(n, dtype=torch.bool)
    face = torch.tensor([[0.35, 0.3, 0.65, 0.75]]).repeat(n, 1)
    jaw = torch.tensor([[0.42, 0.55], [0.58, 0.55], [0.6, 0.72], [0.5, 0.75], [0.4, 0.72]])[None].repeat(n, 1, 1)
    jaw[2] = float("nan")  # frame 2: no mesh -> the mouth disc
    return LOCATE.MouthTrack(centres, valid, face, valid.float(), jaw)


def test_jaw_blend_takes_only_the_outlined_pixels_and_falls_back_to_the_disc():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 96, 128, 3, generator=g)
    crops, crop, crop_mouth = FA.crop_faces(frames, 64, 8, mouth=_jaw_track())
    assert crop_mouth.jaw is not None and bool(torch.isfinite(crop_mouth.jaw[0]).all())
    out = FA.paste_faces(frames, 1.0 - crops, crop, feather=0, blend="jaw")
    weights = LF.blend_weights("jaw", crop.mouth, 0, 4, crop.size)
    disc = LF.blend_weights("mouth", crop.mouth, 0, 4, crop.size)
    assert torch.equal(weights[2], disc[2])  # no outline: the disc
    assert not torch.equal(weights[0], disc[0])
    changed = (out - frames).abs().amax(-1) > 0  # [F,H,W]
    x, y, w, h = crop.boxes[0].tolist()
    inside = torch.zeros(96, 128, dtype=torch.bool)
    inside[y:y + h, x:x + w] = True
    assert not bool(changed[:, ~inside].any())  # outside the crop: bit-exact
    grown = torch.nn.functional.max_pool2d(weights[:1, None], 5, stride=1, padding=2)  # [1,1,h',w'] dilated
    zero = torch.nn.functional.interpolate(grown, size=(h, w), mode="nearest")[0, 0] == 0
    assert bool(zero.any())
    assert not bool(changed[0, y:y + h, x:x + w][zero].any())  # where the mask is 0 (away from its resampled
    # edge), the source stays
    assert bool(changed[0, int(0.65 * 96), 64])  # the jaw area comes from the synced crop


def test_jaw_blend_needs_the_track():
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(4, 96, 128, 3, generator=g)
    crops, crop, _ = FA.crop_faces(frames, 64, 8, mouth=_jaw_track())
    with pytest.raises(ValueError, match="'jaw' needs the mouth track"):
        FA.paste_faces(frames, crops, dataclasses.replace(crop, mouth=None), blend="jaw")
