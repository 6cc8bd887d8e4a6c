"""LatentSync's face alignment (omnisync_model.media.align): the similarity to the template, the smoothing of the
translation, the landmark tables, the crop geometry, and the restore that leaves pixels outside its region exact."""

import math

import pytest
import torch

from omnisync_model.media.align import (GREY, INSIGHTFACE_POINTS, MEDIAPIPE_POINTS, align_chunks, align_crops,
                                        map_points, restore, similarity_from_points, similarity_transforms, template,
                                        three_points)


def _similarity(scale, angle, tx, ty):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]], dtype=torch.float64)


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def _face_points(n=4, seed=0):
    """Three alignment points per frame of a face around (120, 110) in a 240x200 frame, moving a little."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[95.0, 90.0], [145.0, 88.0], [121.0, 118.0]], dtype=torch.float64)
    return base + torch.randn(n, 3, 2, generator=g, dtype=torch.float64) * 1.5


def test_template_matches_the_reference_numbers():
    pts, (h, w) = template(256)
    assert (h, w) == (280, 210)  # int(100 * 2.8), int(75 * 2.8)
    torch.testing.assert_close(pts, torch.tensor([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]], dtype=torch.float64) * 2.8)
    assert template(512)[1] == (560, 420)


def test_similarity_recovers_an_exact_similarity():
    dst, _ = template(256)
    known = _similarity(1.7, 0.3, 12.0, -5.0)
    inv = torch.linalg.inv(torch.cat([known, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]))[:2]
    src = _apply(inv, dst)  # the template seen through the inverse similarity
    m, bias = similarity_from_points(src, dst)
    torch.testing.assert_close(m, known, atol=1e-9, rtol=0)
    # the reference's bias compares the normalised nose points without the rotation: zero only when unrotated
    assert float(bias.abs().max()) > 0.01
    unrotated = _similarity(0.6, 0.0, 3.0, 4.0)
    _, bias = similarity_from_points(_apply(unrotated, dst), dst)
    assert float(bias.abs().max()) < 1e-9


def test_mirrored_points_still_give_a_rotation():
    dst, _ = template(256)
    src = dst * torch.tensor([-1.0, 1.0], dtype=torch.float64)  # a mirror image
    m, _ = similarity_from_points(src, dst)
    assert float(torch.det(m[:, :2])) > 0


def test_translation_smoothing_is_the_reference_recurrence():
    pts = _face_points(5)
    raw, _, _ = similarity_transforms(pts, 256, smooth=False)
    smooth, valid, last = similarity_transforms(pts, 256, smooth=True)
    assert bool(valid.all())
    tpl, (ch, cw) = template(256)
    scale = torch.tensor([256 / cw, 256 / ch], dtype=torch.float64)
    bias = None
    for i in range(5):
        d = similarity_from_points(pts[i], tpl)[1]
        bias = d if bias is None else 0.2 * bias + 0.8 * d
        torch.testing.assert_close(smooth[i, :, 2] - raw[i, :, 2], bias * scale, atol=1e-9, rtol=0)
        torch.testing.assert_close(smooth[i, :, :2], raw[i, :, :2])
    torch.testing.assert_close(last, bias)
    # streaming: the second chunk continued from the first chunk's state equals the whole run
    first = similarity_transforms(pts[:2], 256)
    second, _, _ = similarity_transforms(pts[2:], 256, bias=first[2])
    torch.testing.assert_close(second, smooth[2:])


def test_three_points_from_each_landmark_set():
    g = torch.Generator().manual_seed(1)
    mesh = torch.rand(2, 478, 3, generator=g) * 100
    got = three_points(mesh)
    for j, group in enumerate(MEDIAPIPE_POINTS):
        torch.testing.assert_close(got[:, j], mesh[:, list(group), :2].double().mean(1))
    insight = torch.rand(2, 106, 2, generator=g) * 100
    got = three_points(insight, round_points=True)
    for j, group in enumerate(INSIGHTFACE_POINTS):
        torch.testing.assert_close(got[:, j], insight[:, list(group)].double().mean(1).round())
    assert torch.equal(three_points(mesh[:, :3, :2]), mesh[:, :3, :2].double())
    with pytest.raises(ValueError, match="68 points"):
        three_points(torch.zeros(1, 68, 2))


def test_crop_puts_the_points_on_the_template():
    """A frame with three dots at the landmark points: the crop shows them at the template (resized to R x R)."""
    pts = _face_points(1)[0]
    frame = torch.zeros(1, 200, 240, 3)
    for x, y in pts.round().long().tolist():
        frame[0, y - 1:y + 2, x - 1:x + 2] = 1.0
    crops, tf = align_crops(frame, pts.round()[None], size=256, smooth=False)
    tpl, (ch, cw) = template(256)
    expected = (tpl + 0.5) * torch.tensor([256 / cw, 256 / ch], dtype=torch.float64) - 0.5
    for x, y in expected.tolist():
        patch = crops[0, int(y) - 8:int(y) + 9, int(x) - 8:int(x) + 9, 0]
        assert float(patch.max()) > 0.5  # the dot is there
    assert crops.shape == (1, 256, 256, 3) and tf.frame_size == (200, 240)


@pytest.fixture(scope="module")
def aligned():
    g = torch.Generator().manual_seed(2)
    frames = (torch.rand(3, 200, 240, 3, generator=g) * 255).round() / 255  # 8-bit values
    lm = torch.cat([_face_points(3), torch.full((1, 3, 2), float("nan"), dtype=torch.float64)])  # last: no face
    frames = torch.cat([frames, frames[:1]])
    crops, tf = align_crops(frames, lm, size=256)
    return frames, crops, tf


def test_restore_keeps_pixels_outside_its_region_bit_exact(aligned):
    frames, crops, tf = aligned
    synced = torch.zeros_like(crops)  # black faces: every restored pixel changes
    out = restore(frames, synced, tf)
    assert out.shape == frames.shape
    assert torch.equal(out[3], frames[3])  # no face: untouched
    assert not bool(tf.valid[3]) and crops[3].eq(GREY).all()
    for i in range(3):
        changed = (out[i] != frames[i]).any(-1)  # [H,W]
        assert 0.05 < float(changed.float().mean()) < 0.6  # a face-sized region, not the frame
        ys, xs = changed.nonzero(as_tuple=True)
        # the changed pixels lie inside the crop's footprint (plus the 2 frame pixels that bilinear spill, erosion
        # and blur can reach beyond it): everything else is bit-exact
        m = tf.matrices[i]
        inv = torch.linalg.inv(torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]))
        crop_xy = torch.stack([xs, ys, torch.ones_like(xs)], -1).double() @ m.T  # frame -> crop pixels
        reach = 2.0 * m[:, :2].norm(dim=0).max()  # 2 frame pixels in crop pixels
        assert float(crop_xy.min()) > -0.5 - reach and float(crop_xy.max()) < 255.5 + reach
        assert float(crop_xy.min()) > -0.5 and float(crop_xy.max()) > 250  # and it reaches the crop's edges
        # deep inside, the face replaces the frame completely (soft mask 1)
        centre = tf.matrices[i].new_tensor([128.0, 150.0, 1.0]) @ inv[:2].T
        cx, cy = centre.round().long().tolist()
        assert float(out[i, cy, cx].abs().max()) < 1e-6


def test_restore_of_the_crops_themselves_is_close_to_the_frames(aligned):
    frames, crops, tf = aligned
    smooth = torch.nn.functional.avg_pool2d(frames.permute(0, 3, 1, 2), 9, 1, 4).permute(0, 2, 3, 1)
    crops, tf = align_crops(smooth, torch.cat([_face_points(3), torch.full((1, 3, 2), float("nan"),
                                                                          dtype=torch.float64)]), size=256)
    out = restore(smooth, crops, tf)
    assert float((out - smooth).abs().max()) < 0.05  # two bilinear resamplings of a smooth image


def test_restore_refuses_mismatches(aligned):
    frames, crops, tf = aligned
    with pytest.raises(ValueError, match="do not match"):
        restore(frames, crops[:, :128, :128], tf)
    with pytest.raises(ValueError, match="were made for"):
        restore(frames[:, :100], crops, tf)


def test_against_the_reference_align_restore():
    """Golden from LatentSync's own AlignRestore (resolution 256, float32, its cv2 Lanczos resize of the 210x280
    crop; the restore of a white face onto black frames, uint8 as it returns): same matrices, crops within 2.4 of
    255 (one resampling instead of two), the same blend mask within 4 of 255 (its uint8 truncation) and nowhere
    wider than ours."""
    from pathlib import Path

    from safetensors.torch import load_file

    g = load_file(Path(__file__).resolve().parent / "golden" / "latentsync" / "align_reference.safetensors")
    frames = g["frames"].float() / 255
    crops, tf = align_crops(frames, g["points"], 256, smooth=True)
    _, (ch, cw) = template(256)
    to_box = torch.tensor([[cw / 256, 0, (cw / 256 - 1) / 2], [0, ch / 256, (ch / 256 - 1) / 2], [0, 0, 1]],
                          dtype=torch.float64)  # R x R crop pixel -> the reference's 210 x 280 crop pixel
    bottom = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    for i in range(frames.shape[0]):
        ours = (to_box @ torch.cat([tf.matrices[i], bottom]))[:2]
        torch.testing.assert_close(ours, g["matrices"][i], atol=1e-4, rtol=0)  # the reference works in float32
    diff = (crops * 255 - g["crops"].float()).abs()
    assert float(diff.mean()) < 0.8 and float(diff.max()) < 3.0
    out = restore(torch.zeros_like(frames), torch.ones(3, 256, 256, 3), tf) * 255
    ref = g["restored_white_on_black"].float()
    assert float((out - ref).abs().max()) < 4.5 and float((out - ref).abs().mean()) < 0.3
    assert not bool(((ref > 0).any(-1) & ~(out > 0).any(-1)).any())  # its restored region lies inside ours


def test_streamed_chunks_equal_the_whole_video_and_points_map_to_the_template(aligned):
    frames, crops, tf = aligned
    lm = torch.cat([_face_points(3), torch.full((1, 3, 2), float("nan"), dtype=torch.float64)])
    parts = list(align_chunks(frames.split(2), lm, 256))
    assert torch.equal(torch.cat([c for c, _ in parts]), crops)
    torch.testing.assert_close(torch.cat([t.matrices for _, t in parts]), tf.matrices)
    tpl, (ch, cw) = template(256)
    known = torch.cat([_similarity(0.4, -0.2, 60.0, 40.0), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    pts = _apply(torch.linalg.inv(known)[:2], tpl)[None]  # a face exactly similar to the template
    unsmoothed = align_crops(frames[:1], pts, 256, smooth=False)[1]
    want = (tpl + 0.5) * torch.tensor([256 / cw, 256 / ch], dtype=torch.float64) - 0.5  # template in R x R pixels
    torch.testing.assert_close(map_points(pts, unsmoothed)[0], want, atol=1e-9, rtol=0)
