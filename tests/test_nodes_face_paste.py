"""OmniSyncFacePaste's blends (nodes/adapters/faces.py), without ComfyUI: 'mouth' takes only the file path's soft
mouth disc from the synced crops, 'box' the whole crop."""

import dataclasses

import pytest
import torch

from comfy_helpers import pack_module

FA = pack_module("nodes.adapters.faces")
LF = pack_module("omnisync_model.media.lipsync_file")
LOCATE = pack_module("omnisync_model.media.locate")

N, H, W = 5, 96, 128
MOUTH = (0.5, 0.62)  # normalised mouth centre in the full frame
INVALID = 3  # a frame without a located mouth


def _frames(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, H, W, 3, generator=g)


def _track():
    centres = torch.tensor([MOUTH]).repeat(N, 1)
    valid = torch.ones(N, dtype=torch.bool)
    valid[INVALID] = False
    face = torch.tensor([[0.35, 0.3, 0.65, 0.75]]).repeat(N, 1)  # x0, y0, x1, y1 normalised
    return LOCATE.MouthTrack(centres, valid, face, valid.float())


@pytest.fixture
def cropped():
    frames = _frames()
    crops, crop, crop_mouth = FA.crop_faces(frames, 64, 8, mouth=_track())
    synced = 1.0 - crops  # clearly different from the source everywhere
    return frames, synced, crop, crop_mouth


def _disc(crop, i):
    """(centre x, centre y, radius) of frame i's mouth disc in full-frame pixels."""
    x, y, w, h = crop.boxes[i].tolist()
    cx, cy = crop.mouth.centres[i].tolist()
    return x + cx * w, y + cy * h, LF.MOUTH_RADIUS * min(crop.size) * w / crop.size[1]


def test_crop_carries_the_mouth_track_in_crop_coordinates(cropped):
    _, _, crop, crop_mouth = cropped
    assert crop.mouth is crop_mouth and len(crop.mouth) == N


def test_mouth_blend_changes_only_the_mouth_disc_and_takes_it_from_the_synced_crop(cropped):
    frames, synced, crop, _ = cropped
    mouth = FA.paste_faces(frames, synced, crop, feather=8, blend="mouth")
    box = FA.paste_faces(frames, synced, crop, feather=8, blend="box")
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")  # [H,W] pixel centres
    for i in range(N):
        changed = (mouth[i] != frames[i]).any(-1)  # [H,W]
        if i == INVALID:
            assert torch.equal(mouth[i], frames[i])  # no mouth located: the source frame, bit-exact
            continue
        cx, cy, r = _disc(crop, i)
        d = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        assert changed.any() and bool((d[changed] <= 1.25 * r + 2).all())  # nothing outside the soft disc
        inside = d <= 0.6 * r  # the disc's flat part: weight 1, far from the feathered box edge
        assert inside.sum() > 10
        assert torch.allclose(mouth[i][inside], box[i][inside], atol=1e-6)  # = the colour-matched synced crop
        assert (mouth[i][inside] - frames[i][inside]).abs().mean() > 0.2
        x, y, w, h = crop.boxes[i].tolist()
        in_box = torch.zeros(H, W, dtype=torch.bool)
        in_box[y:y + h, x:x + w] = True
        far = in_box & (d > 1.25 * r + 2)
        assert far.any() and torch.equal(mouth[i][far], frames[i][far])  # face and background: the source
        assert (box[i][far] != frames[i][far]).any()  # ... which 'box' does replace


def test_mouth_weights_are_the_file_paths_disc(cropped):
    frames, synced, crop, _ = cropped
    weights = LF.blend_weights("mouth", crop.mouth, 0, N, crop.size)
    manual = LF.paste_back_per_frame(frames, synced, crop.boxes, feather=8, weights=weights)
    assert torch.equal(FA.paste_faces(frames, synced, crop, feather=8, blend="mouth"), manual)


def test_mouth_blend_in_chunks_equals_one_pass(cropped, monkeypatch):
    frames, synced, crop, _ = cropped
    whole = FA.paste_faces(frames, synced, crop, blend="mouth")
    monkeypatch.setattr(FA, "PASTE_FRAMES", 2)
    assert torch.equal(FA.paste_faces(frames, synced, crop, blend="mouth"), whole)


def test_box_blend_keeps_the_old_behaviour(cropped):
    frames, synced, crop, _ = cropped
    expected = LF.paste_back_per_frame(frames, synced, crop.boxes, feather=16)
    assert torch.equal(FA.paste_faces(frames, synced, crop, blend="box"), expected)
    assert torch.equal(FA.paste_faces(frames, synced, dataclasses.replace(crop, mouth=None), blend="box"), expected)


def test_mouth_blend_needs_the_track_and_a_known_blend(cropped):
    frames, synced, crop, _ = cropped
    with pytest.raises(ValueError, match="mouth track"):
        FA.paste_faces(frames, synced, dataclasses.replace(crop, mouth=None), blend="mouth")
    with pytest.raises(ValueError, match="blend"):
        FA.paste_faces(frames, synced, crop, blend="face")


def test_default_blend_is_mouth_like_the_video_node(cropped):
    frames, synced, crop, _ = cropped
    assert torch.equal(FA.paste_faces(frames, synced, crop), FA.paste_faces(frames, synced, crop, blend="mouth"))
