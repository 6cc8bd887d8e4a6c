"""Synthetic talking-face suite: speech, ground-truth opening, faces, pseudo-pairs, any fps."""

import math
import time

import pytest
import torch

from omnisync_model.training import synthetic as S
from omnisync_model.training.metrics import estimate_mouth_opening


def _zero_runs(x: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of exact zeros."""
    z = torch.cat([torch.tensor([False]), x == 0, torch.tensor([False])]).int()
    edges = torch.diff(z)
    starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return [(int(s), int(e - s)) for s, e in zip(starts, ends)]


def _dilated_box_mask(box: torch.Tensor, size: int, pad_px: float = 1.0) -> torch.Tensor:
    """[F, 4] normalised boxes -> [F, H, W] bool, True inside the box grown by pad_px pixels."""
    b = box * size + torch.tensor([-pad_px, -pad_px, pad_px, pad_px])
    p = torch.arange(size) + 0.5
    inx = (p.view(1, 1, -1) >= b[:, 0, None, None]) & (p.view(1, 1, -1) <= b[:, 2, None, None])
    iny = (p.view(1, -1, 1) >= b[:, 1, None, None]) & (p.view(1, -1, 1) <= b[:, 3, None, None])
    return inx & iny


# ---- speech ---------------------------------------------------------------------------------------------------


def test_speech_is_deterministic_and_seed_dependent():
    w1, e1 = S.make_speech(7, 2.0)
    w2, e2 = S.make_speech(7, 2.0)
    w3, _ = S.make_speech(8, 2.0)
    assert w1.dtype == torch.float32 and w1.shape == (32000,) and e1.shape == (32000,)
    assert torch.equal(w1, w2) and torch.equal(e1, e2)
    assert not torch.equal(w1, w3)
    assert 0.3 < float(w1.abs().max()) <= 0.95 + 1e-6


def test_speech_has_exact_silences_between_words():
    wave, env = S.make_speech(3, 8.0)
    assert torch.equal(wave == 0, env == 0) or bool(((env == 0) <= (wave == 0)).all())
    runs = [(s, n) for s, n in _zero_runs(env) if s > 0 and s + n < env.numel()]  # interior pauses
    assert len(runs) >= 3
    for _, n in runs:
        assert 0.15 * 16000 - 1 <= n <= 0.8 * 16000 + 1
    assert bool((wave[env == 0] == 0).all())


def test_speech_speakers_differ_in_pitch():
    """The dominant low-frequency peak (f0 or a low harmonic) differs across seeds and lies in the voice band."""
    peaks = []
    for seed in range(4):
        wave, _ = S.make_speech(seed, 2.0)
        spec = torch.fft.rfft(wave.double()).abs()
        freqs = torch.fft.rfftfreq(wave.numel(), 1 / 16000)
        band = (freqs > 70) & (freqs < 1200)
        peaks.append(float(freqs[band][spec[band].argmax()]))
    assert len({round(p, -1) for p in peaks}) >= 3
    assert all(70 < p < 1200 for p in peaks)


def test_speech_other_sample_rates():
    wave, _ = S.make_speech(1, 0.5, sample_rate=44100)
    assert wave.shape == (22050,) and bool(torch.isfinite(wave).all())


# ---- ground truth ---------------------------------------------------------------------------------------------


def test_opening_is_zero_in_silence():
    assert torch.equal(S.mouth_opening(torch.zeros(16000), 16000, 25.0, 25), torch.zeros(25))
    wave = torch.zeros(16000)
    wave[8000:9500] = 0.3 * torch.sin(torch.arange(1500) * 0.1)  # sound in 0.5 .. 0.59375 s only
    op = S.mouth_opening(wave, 16000, 25.0, 25)
    t = (torch.arange(25) + 0.5) / 25.0
    silent = ((t + 0.02) < 0.5) | ((t - 0.02) > 9500 / 16000)  # the 40 ms window misses the sound
    assert bool((op[silent] == 0).all()) and bool((op[~silent] > 0).all())


def test_opening_zero_during_generated_pauses():
    wave, env = S.make_speech(5, 6.0)
    fps = 30.0
    op = S.mouth_opening(wave, 16000, fps, 180)
    checked = 0
    for i in range(180):
        c = (i + 0.5) / fps
        lo, hi = max(0, round((c - 0.02) * 16000)), min(wave.numel(), round((c + 0.02) * 16000))
        if bool((env[lo:hi] == 0).all()):
            assert float(op[i]) == 0.0
            checked += 1
        else:
            assert float(op[i]) > 0.0
    assert checked >= 10


def test_opening_monotone_in_loudness():
    tone = torch.sin(2 * math.pi * 220 * torch.arange(16000) / 16000)
    gains = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    ops = torch.stack([S.mouth_opening(g * tone, 16000, 24.0, 20) for g in gains])  # [G, 20]
    assert bool((ops[1:] >= ops[:-1]).all())
    assert float(ops[0].max()) == 0.0 and float(ops[-1].min()) == 1.0
    assert bool((ops >= 0).all() and (ops <= 1).all())
    ramp = tone * torch.linspace(0, 1, 16000)  # loudness rising over time -> opening non-decreasing
    op = S.mouth_opening(ramp, 16000, 25.0, 24)
    assert bool((op[1:] >= op[:-1]).all()) and float(op[-1]) > float(op[1])


def test_opening_past_the_audio_is_zero():
    wave, _ = S.make_speech(2, 1.0)
    op = S.mouth_opening(wave, 16000, 25.0, 40)
    assert op.shape == (40,) and bool((op[27:] == 0).all())


# ---- faces ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", S.STYLES)
def test_styles_render_at_sizes_and_rates(style):
    for size, fps in ((64, 24.0), (96, 29.97), (64, 60.0)):
        spec = S.ClipSpec(seed=11, style=style, n_frames=9, fps=fps, size=size, occluder=True)
        clip = S.make_clip(spec)
        assert clip.frames.shape == (9, size, size, 3) and clip.frames.dtype == torch.float32
        assert float(clip.frames.min()) >= 0.0 and float(clip.frames.max()) <= 1.0
        assert clip.mouth_open.shape == (9,) and clip.mouth_centre.shape == (9, 2)
        assert clip.mouth_box.shape == (9, 4) and clip.face_box.shape == (9, 4)
        mb, fb = clip.mouth_box, clip.face_box
        assert bool((mb[:, 2] > mb[:, 0]).all() and (mb[:, 3] > mb[:, 1]).all())
        inside = (mb[:, 0] >= fb[:, 0]) & (mb[:, 2] <= fb[:, 2]) & (mb[:, 1] >= fb[:, 1]) & (mb[:, 3] <= fb[:, 3])
        assert bool(inside.all())
        c = clip.mouth_centre
        assert bool(((c[:, 0] > mb[:, 0]) & (c[:, 0] < mb[:, 2]) & (c[:, 1] > mb[:, 1]) & (c[:, 1] < mb[:, 3])).all())
        assert clip.style == style and clip.fps == fps


def test_clip_is_deterministic_and_seed_dependent():
    spec = S.ClipSpec(seed=4, style="animal", n_frames=6, occluder=True)
    a, b = S.make_clip(spec), S.make_clip(spec)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.mouth_box, b.mouth_box)
    other = S.make_clip(S.ClipSpec(seed=5, style="animal", n_frames=6, occluder=True))
    assert not torch.equal(a.frames, other.frames)


@pytest.mark.parametrize("style", S.STYLES)
@pytest.mark.parametrize("occluder", [False, True])
def test_pseudo_pairs_differ_only_in_the_mouth_box(style, occluder):
    spec = S.ClipSpec(seed=21, style=style, n_frames=12, fps=25.0, size=64, occluder=occluder)
    g = torch.Generator().manual_seed(0)
    a = S.make_clip(spec, torch.rand(12, generator=g))
    b = S.make_clip(spec, torch.rand(12, generator=g))
    assert torch.equal(a.mouth_box, b.mouth_box)
    outside = ~_dilated_box_mask(a.mouth_box, 64, 1.0)  # [F, H, W]
    assert torch.equal(a.frames[outside], b.frames[outside])  # bitwise
    assert torch.equal(S.render(spec, a.mouth_open), a.frames)
    inside_change = (a.frames != b.frames).any(-1) & ~outside
    assert int(inside_change.sum()) > 12  # the mouths really differ


def test_occluder_covers_the_face_not_the_mouth():
    spec = S.ClipSpec(seed=2, style="realistic", n_frames=8, occluder=True, blink=False)
    with_occ = S.make_clip(spec, torch.full((8,), 0.5))
    without = S.make_clip(S.ClipSpec(seed=2, style="realistic", n_frames=8, blink=False), torch.full((8,), 0.5))
    changed = (with_occ.frames != without.frames).any(-1)  # [F, H, W]
    assert int(changed.sum()) > 8 * 30  # a visible hand
    assert not bool((changed & _dilated_box_mask(with_occ.mouth_box, 64, 0.0)).any())


def test_closed_mouth_is_a_line_and_opening_grows_the_dark_area():
    for style in S.STYLES:
        spec = S.ClipSpec(seed=8, style=style, n_frames=3, motion=0.0, blink=False)
        clip = S.make_clip(spec, torch.tensor([0.0, 0.5, 1.0]))
        est = estimate_mouth_opening(clip.frames, clip.mouth_box)
        assert 0.0 < float(est[0]) < float(est[1]) < float(est[2]), style
        lum = (clip.frames * torch.tensor([0.2126, 0.7152, 0.0722])).sum(-1)  # [F, H, W]
        dark = (lum < 0.15) & _dilated_box_mask(clip.mouth_box, 64, 0.0)
        per_column = dark.sum(1)  # [F, W] dark pixels in each column
        assert int(per_column[0].max()) <= 2, style  # closed: at most a thin line
        assert int(per_column[2].max()) >= 4, style  # open: a tall dark interior


def test_motion_is_defined_in_seconds():
    """Frame i at 10 fps and frame 3i+1 at 30 fps show the same instant: same pose, same pixels (up to rounding)."""
    slow = S.make_clip(S.ClipSpec(seed=6, style="cartoon", n_frames=5, fps=10.0), torch.full((5,), 0.4))
    fast = S.make_clip(S.ClipSpec(seed=6, style="cartoon", n_frames=15, fps=30.0), torch.full((15,), 0.4))
    idx = torch.arange(5) * 3 + 1
    assert torch.allclose(slow.mouth_box, fast.mouth_box[idx], atol=1e-5)
    assert float((slow.frames - fast.frames[idx]).abs().max()) < 1e-3
    assert not torch.equal(slow.frames[0], slow.frames[4])  # the head does move


def test_static_head_with_motion_zero():
    clip = S.make_clip(S.ClipSpec(seed=3, n_frames=10, fps=25.0, motion=0.0, blink=False), torch.zeros(10))
    assert torch.equal(clip.frames[0], clip.frames[9])


def test_render_validates_inputs():
    spec = S.ClipSpec(seed=0, n_frames=4)
    with pytest.raises(ValueError):
        S.render(spec, torch.zeros(5))
    with pytest.raises(ValueError):
        S.ClipSpec(seed=0, style="oil-painting")
    with pytest.raises(ValueError):
        S.ClipSpec(seed=0, fps=0.0)


def test_talking_clip_is_driven_by_its_speech():
    clip, wave, sr = S.make_talking_clip(9, "anime", 2.0, 29.97, 64)
    assert sr == 16000 and wave.shape == (32000,) and clip.frames.shape[0] == round(2.0 * 29.97)
    assert torch.equal(clip.mouth_open, S.mouth_opening(wave, sr, 29.97, clip.frames.shape[0]))
    assert float(clip.mouth_open.max()) > 0.5 and float(clip.mouth_open.min()) == 0.0
    assert torch.equal(S.default_mouth_track(clip.spec), clip.mouth_open)  # None -> the same track


def test_render_speed():
    """100 frames at 64x64 in well under a second of CPU (one thread, so busy machines do not skew it)."""
    spec = S.ClipSpec(seed=1, style="realistic", n_frames=100, fps=25.0, size=64, occluder=True)
    opening = torch.rand(100, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        S.render(spec, opening)  # warm-up
        t0 = time.process_time()
        S.render(spec, opening)
        spent = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    assert spent < 1.0  # ~0.2 s measured
