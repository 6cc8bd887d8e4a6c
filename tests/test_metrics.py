"""Metrics on constructed cases with known answers, the mouth estimator on every style, SyncNet LSE."""

import logging
import math

import numpy as np
import pytest
import torch

from omnisync_model.training import metrics as M
from omnisync_model.training import synthetic as S


def _frames(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, size, size, 3, generator=g, dtype=torch.float64)


BOX = torch.tensor([0.375, 0.5, 0.625, 0.75])  # pixels 12..19 x 16..23 of a 32-pixel frame


# ---- correlation ----------------------------------------------------------------------------------------------


def test_pearson_known_values(caplog):
    a = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.4])
    assert M.pearson_r(a, 3 * a + 2) == pytest.approx(1.0, abs=1e-12)
    assert M.pearson_r(a, -2 * a + 1) == pytest.approx(-1.0, abs=1e-12)
    assert M.pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    with caplog.at_level(logging.WARNING, logger="omnisync_model.training.metrics"):
        assert M.pearson_r(a, torch.full((5,), 0.3)) == 0.0
    assert "constant" in caplog.text
    with pytest.raises(ValueError):
        M.pearson_r([1, 2, 3], [1, 2])


# ---- mouth estimator ------------------------------------------------------------------------------------------


def test_estimator_reads_a_drawn_dark_region():
    frames = torch.full((3, 32, 32, 3), 0.7)
    frames[1, 18:20, 13:19] = 0.02  # 12 dark pixels
    frames[2, 17:22, 13:19] = 0.02  # 30 dark pixels
    frames[:, 5:9, 5:9] = 0.0  # dark outside the box is ignored
    est = M.estimate_mouth_opening(frames, BOX)
    box_pixels = 8 * 8
    assert est.tolist() == pytest.approx([0.0, 12 / box_pixels, 30 / box_pixels], abs=1e-6)


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("style", S.STYLES)
def test_estimator_tracks_ground_truth_on_every_style(style, size):
    seed = S.STYLES.index(style) + size  # a different face and speech per case; half with an occluder
    clip, _, _ = S.make_talking_clip(seed, style, 2.0, 29.97, size, occluder=seed % 2 == 1)
    assert float(clip.mouth_open.std()) > 0.2
    r = M.sync_score(clip.frames, clip.mouth_box, clip.mouth_open)
    assert r > 0.95, (style, size, seed, r)


def test_sync_and_leakage_scores():
    spec = S.ClipSpec(seed=3, style="cartoon", n_frames=40, fps=25.0)
    g = torch.Generator().manual_seed(1)
    src, drive = torch.rand(40, generator=g), torch.rand(40, generator=g)
    out = S.make_clip(spec, drive)
    measured = M.estimate_mouth_opening(out.frames, out.mouth_box)
    assert M.sync_score(out.frames, out.mouth_box, drive) == pytest.approx(M.pearson_r(measured, drive))
    assert M.leakage_score(out.frames, out.mouth_box, src) == pytest.approx(M.pearson_r(measured, src))
    assert M.sync_score(out.frames, out.mouth_box, drive) > 0.95
    assert abs(M.leakage_score(out.frames, out.mouth_box, src)) < 0.5


# ---- preservation ---------------------------------------------------------------------------------------------


def test_psnr_known_uniform_error():
    a = _frames()
    for e in (0.01, 0.05, 0.1):
        assert M.psnr_outside(a, a + e, BOX) == pytest.approx(10 * math.log10(1 / e**2), abs=1e-6)
    assert M.psnr_outside(a, a.clone(), BOX) == math.inf


def test_psnr_and_ssim_ignore_the_mouth_box():
    a = _frames()
    b = a.clone()
    b[:, 16:24, 12:20] = 0.0  # exactly the box
    assert M.psnr_outside(a, b, BOX, margin=0.0) == math.inf
    assert M.ssim_outside(a, b, BOX, margin=0.0) == pytest.approx(1.0, abs=1e-9)
    b[:, 2, 2] = 0.0  # one change outside
    assert M.psnr_outside(a, b, BOX) < 60.0
    assert M.ssim_outside(a, b, BOX) < 1.0
    per_frame = torch.stack([BOX] * 4)  # [F, 4] boxes are accepted too
    assert M.psnr_outside(a, b, per_frame) == M.psnr_outside(a, b, BOX)


def test_ssim_identity_and_noise():
    a = _frames(n=2, size=40)
    assert M.ssim_outside(a, a.clone(), BOX) == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(a.shape, generator=g)
    scores = [M.ssim_outside(a, a + s * noise, BOX) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    flat = torch.full((1, 40, 40, 3), 0.5, dtype=torch.float64)
    # uniform images: SSIM = (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1), the luminance term only
    expect = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert M.ssim_outside(flat, flat + 0.1, BOX) == pytest.approx(expect, rel=1e-9)


# ---- seams ----------------------------------------------------------------------------------------------------


def test_seam_score_ramp_and_jump():
    t = torch.arange(20, dtype=torch.float64).view(-1, 1, 1, 1) / 40
    ramp = t.expand(20, 8, 8, 3).clone()
    assert M.seam_score(ramp, [5, 10, 15]) == pytest.approx(1.0, abs=1e-9)
    jump = ramp.clone()
    jump[10:] += 0.1  # a glitch at boundary 10: diff 0.125 there, 0.025 elsewhere
    assert M.seam_score(jump, [10]) == pytest.approx(5.0, rel=1e-6)
    assert M.seam_score(jump, [5, 10]) == pytest.approx(((0.025 + 0.125) / 2) / 0.025, rel=1e-6)
    assert M.seam_score(ramp, []) == 1.0 and M.seam_score(ramp, [0, 20]) == 1.0  # outside 1..F-1: ignored


# ---- SyncNet --------------------------------------------------------------------------------------------------


def _calc_pdist_reference(v, a, vshift):
    """A direct loop over frames, following syncnet_python's calc_pdist / evaluate."""
    win = 2 * vshift + 1
    ap = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    dists = [torch.nn.functional.pairwise_distance(v[[i], :].repeat(win, 1), ap[i : i + win, :]) for i in range(len(v))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return float(torch.median(mdist) - minval), float(minval), int(vshift - minidx)


@pytest.mark.parametrize("k", [-4, 0, 3])
def test_lse_scores_find_a_known_offset(k):
    g = torch.Generator().manual_seed(5)
    n, d = 60, 32
    video = torch.randn(n, d, generator=g)
    audio = torch.randn(n, d, generator=g)  # unrelated where the shift runs off the end
    for t in range(n):
        if 0 <= t + k < n:
            audio[t] = video[t + k] + 0.1 * torch.randn(d, generator=g)  # audio t matches video t + k
    conf, dist, offset = M.lse_scores(video, audio, vshift=15)
    assert offset == k
    assert conf > 1.0 and dist > 0.0
    ref = _calc_pdist_reference(video, audio, 15)
    assert (conf, dist, offset) == pytest.approx(ref, rel=1e-5)


def test_lse_scores_validate_shapes():
    with pytest.raises(ValueError):
        M.lse_scores(torch.zeros(5, 4), torch.zeros(6, 4))


def test_syncnet_shapes_and_strict_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = M.SyncNet().eval()
    with torch.no_grad():
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        lips = torch.randn(1, 3, 5, 224, 224)
        out = net.forward_lip(lips)
    assert out.shape == (1, 1024)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "netcnnlip.0.weight" in state and "netfcaud.3.weight" in state  # syncnet_python names
    path = tmp_path / "syncnet.safetensors"
    save_file(state, str(path))
    loaded = M.load_syncnet(str(path))
    with torch.no_grad():
        assert torch.equal(loaded.forward_lip(lips), out)
    bad = dict(state)
    bad.pop("netfclip.0.bias")
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        M.load_syncnet(str(tmp_path / "missing.safetensors"))
    save_file({**state, "extra.weight": torch.zeros(1)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        M.load_syncnet(str(tmp_path / "extra.safetensors"))
    save_file({**state, "netfcaud.3.bias": torch.zeros(7)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="wrong shape"):
        M.load_syncnet(str(tmp_path / "shape.safetensors"))


# python_speech_features.mfcc(x, 16000) for the int16 signal below (reference values, 4 frames x 13)
_PSF_REFERENCE = np.array([
    [19.53109, 20.61934, -3.92562, -20.13276, -20.71322, -18.63358, -25.08762, -30.27134, -14.16217, 15.97112,
     32.91384, 22.13455, 1.72197],
    [19.64448, 33.4396, -2.8647, -20.80101, -11.40676, -4.68328, -20.10629, -35.86668, -19.18456, 19.71573,
     41.5064, 26.20031, -1.3838],
    [19.78892, 28.53915, -5.23931, -18.44536, -7.32083, -3.03042, -21.6072, -38.59833, -20.54965, 20.54767,
     43.54295, 27.54767, -1.79517],
    [19.6768, 24.77648, -8.84352, -24.93489, -13.42992, -4.41966, -18.42667, -34.76869, -19.69149, 17.7606,
     38.70379, 23.74529, -2.79061],
])


def test_mfcc_matches_python_speech_features():
    t = np.arange(800) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1234 * t) * np.linspace(0, 1, 800)
    pcm = np.round(32767 * x).astype(np.int16)
    ceps = M.mfcc(torch.from_numpy(pcm.astype(np.float64) / 32768.0))
    assert ceps.shape == (13, 4)  # 1 + ceil((800 - 400) / 160) frames
    np.testing.assert_allclose(ceps.T.numpy(), _PSF_REFERENCE, atol=1e-3)
    assert M.mfcc(torch.zeros(16000)).shape == (13, 99)
    assert bool(torch.isfinite(M.mfcc(torch.zeros(16000))).all())  # log of eps, not -inf


def test_syncnet_embeddings_windows():
    torch.manual_seed(0)
    net = M.SyncNet().eval()
    crops = torch.rand(7, 112, 112, 3)  # resized to 224 inside
    wave = 0.1 * torch.randn(8 * 640)
    video, audio = M.syncnet_embeddings(net, crops, wave, fps=25.0)
    assert video.shape == (2, 1024) and audio.shape == (2, 1024)  # min(7, 8) - 5 windows, as syncnet_python
    conf, dist, offset = M.lse_from_video(net, crops[:6], wave, vshift=2)
    assert math.isfinite(conf) and dist > 0 and offset in (-2, -1, 0, 1, 2)
    with pytest.raises(ValueError):
        M.syncnet_embeddings(net, crops[:5], wave)


# ---- mouth colour: pale blobs ---------------------------------------------------------------------------------


def test_rgb_to_lab_reference_values():
    """sRGB (D65) -> CIE L*a*b*, the standard published values of the primaries, white, mid grey and black."""
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5],
                        [0.0, 0.0, 0.0]])
    want = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                         [32.30, 79.19, -107.86], [53.39, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(M.rgb_to_lab(rgb), want, atol=0.01)


def _talking(style, seed=900_050, seconds=1.2):
    clip, wave, sr = S.make_talking_clip(seed, style, seconds, 25.0, 64)
    other = S.mouth_opening(S.make_speech(seed + 1, seconds)[0], sr, 25.0, clip.frames.shape[0])
    return clip, other


def _paste_pale_blob(clip, frames_idx):
    """A washed-out blob over the mouth: a Gaussian-weighted mix towards a pale tint of the cheek's colour."""
    out = clip.frames.clone()
    _, h, w, _ = out.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")  # pixel centres
    for i in frames_idx:
        x0, y0, x1, y1 = (clip.mouth_box[i] * torch.tensor([w, h, w, h])).tolist()
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        weight = torch.exp(-(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2))[..., None]  # [H, W, 1]
        cheek = clip.frames[i, int(cy), max(0, int(x0) - 2)]
        out[i] = out[i] * (1 - weight) + (0.5 * cheek + 0.5) * weight
    return out


@pytest.mark.parametrize("style", ["realistic", "cartoon", "sketch"])
def test_off_colour_flags_a_pale_blob_and_passes_real_mouths(style):
    clip, other = _talking(style)
    n = clip.frames.shape[0]
    assert not M.mouth_colour_outliers(clip.frames, clip.frames, clip.mouth_box)["any"].any()  # untouched clip
    redriven = S.make_clip(clip.spec, other)  # a perfect lip-sync of another speech: new openings, same colours
    assert M.off_colour_fraction(redriven.frames, clip.frames, clip.mouth_box) == 0.0
    blobbed = [2, 5, 6, 20]
    flags = M.mouth_colour_outliers(_paste_pale_blob(clip, blobbed), clip.frames, clip.mouth_box)
    assert flags["any"].nonzero().flatten().tolist() == blobbed
    assert flags["washed_out"].nonzero().flatten().tolist() == blobbed  # skin / paper tints: in the palette
    assert flags["pale"].nonzero().flatten().tolist() == blobbed
    assert M.off_colour_fraction(_paste_pale_blob(clip, blobbed), clip.frames, clip.mouth_box) == len(blobbed) / n


def test_off_colour_flags_a_colour_smear_the_contrast_test_misses():
    clip, _ = _talking("animal")
    out = clip.frames.clone()
    n, h, w, _ = out.shape
    inside = M._box_mask(clip.mouth_box, n, h, w)  # [F, H, W]
    rows = inside[3].any(1).nonzero().flatten()
    top = rows[: max(1, len(rows) // 4)]  # the top quarter of frame 3's box turns dark green, the mouth stays
    out[3, top] = torch.where(inside[3, top, :, None], torch.tensor([0.0, 0.2, 0.0], dtype=out.dtype), out[3, top])
    flags = M.mouth_colour_outliers(out, clip.frames, clip.mouth_box)
    assert flags["off_palette"].nonzero().flatten().tolist() == [3]
    assert not flags["washed_out"].any()
    assert not flags["pale"].any()  # off the palette, but darker than its nearest source colour
    whitish = clip.frames.clone()
    whitish[3, top] = torch.where(inside[3, top, :, None], torch.tensor([0.9, 1.0, 1.0], dtype=out.dtype),
                                  whitish[3, top])
    assert M.mouth_colour_outliers(whitish, clip.frames, clip.mouth_box)["pale"].nonzero().flatten().tolist() == [3]


def test_off_palette_fraction_counts_pixels_and_ignores_the_outside():
    clip, _ = _talking("anime", seconds=0.4)
    out = clip.frames.clone()
    out[:, :4] = torch.tensor([0.0, 1.0, 0.0])  # green stripe at the top, far from the mouth box
    assert M.off_palette_fraction(out, clip.frames, clip.mouth_box).max() == 0.0
    n, h, w, _ = out.shape
    inside = M._box_mask(clip.mouth_box, n, h, w)  # [F, H, W]
    first = inside[0].nonzero()[:5]  # five mouth-box pixels of frame 0 turned pure green
    out[0, first[:, 0], first[:, 1]] = torch.tensor([0.0, 1.0, 0.0])
    frac = M.off_palette_fraction(out, clip.frames, clip.mouth_box)
    assert float(frac[0]) == pytest.approx(5 / int(inside[0].sum()))
    assert float(frac[1:].max()) == 0.0
    with pytest.raises(ValueError):
        M.off_palette_fraction(out[:2], clip.frames, clip.mouth_box)
