"""Tests for omnisync_model.sampling.windows: planning, crossfade weights, streaming stitcher."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from omnisync_model.sampling.windows import (
    Stitcher,
    Window,
    frame_weights,
    padded_length,
    plan_windows,
    raw_window_weights,
    round_window,
    stitch_all,
    validate_plan,
    window_weights,
)

PAIRS = [(1, 0), (8, 0), (16, 4), (16, 8), (17, 5), (21, 4), (48, 12)]
FRAME_COUNTS = range(1, 301)
CONSTANTS = (0.0, 1.0, 0.1234567, -3.75, 1e-3)


def _check_cover(windows: list[Window], n: int, window: int, overlap: int) -> None:
    """Plan invariants for multiple == 1."""
    assert windows[0].start == 0 and windows[-1].end == n
    assert [w.index for w in windows] == list(range(len(windows)))
    assert all(w.length == min(window, n) for w in windows)
    for prev, cur in zip(windows, windows[1:]):
        assert prev.start < cur.start <= prev.end  # no gap
    for prev, cur in zip(windows[:-1], windows[1:-1]):
        assert cur.start - prev.start == window - overlap  # regular step
    if len(windows) > 1:
        assert windows[-2].end - windows[-1].start >= overlap  # shifted-back tail overlaps at least as much
    covered = torch.zeros(n, dtype=torch.int64)
    for w in windows:
        covered[w.start : w.end] += 1
    assert bool((covered >= 1).all())


@pytest.mark.parametrize("window,overlap", PAIRS)
def test_plan_covers_every_frame(window: int, overlap: int) -> None:
    for n in FRAME_COUNTS:
        windows = plan_windows(n, window, overlap)
        _check_cover(windows, n, window, overlap)
        validate_plan(windows, n)
        if n <= window:
            assert windows == [Window(0, 0, n)]


def test_plan_examples() -> None:
    assert plan_windows(40, 16, 4) == [Window(0, 0, 16), Window(1, 12, 28), Window(2, 24, 40)]
    # tail shifted back: ends at 29 and overlaps its predecessor by 15 > 4
    assert plan_windows(29, 16, 4) == [Window(0, 0, 16), Window(1, 12, 28), Window(2, 13, 29)]
    assert plan_windows(5, 1, 0) == [Window(i, i, i + 1) for i in range(5)]
    assert plan_windows(16, 16, 4) == [Window(0, 0, 16)]
    assert plan_windows(17, 16, 0) == [Window(0, 0, 16), Window(1, 1, 17)]


def _window_data(windows: list[Window], video: torch.Tensor, noise: torch.Tensor) -> list[torch.Tensor]:
    """Per-window [L, 7] frames: one column per constant, then the true video, then per-window random values."""
    const = torch.tensor(CONSTANTS, dtype=torch.float32).expand(max(w.length for w in windows), -1)  # [Lmax, 5]
    return [
        torch.cat([const[: w.length], video[w.start : w.end, None], noise[w.index, : w.length, None]], dim=1)
        for w in windows
    ]


def _run_stitcher(windows: list[Window], chunks: list[torch.Tensor], n: int) -> tuple[torch.Tensor, Stitcher]:
    """Stitch with in-order / exactly-once / bounded-pending checks at every step."""
    stitcher = Stitcher(n, windows)
    parts, next_frame = [], 0
    for w, frames in zip(windows, chunks):
        for start, part in stitcher.add(w.index, frames):
            assert start == next_frame and part.shape[0] >= 1
            next_frame += part.shape[0]
            parts.append(part)
        later = windows[w.index + 1].start if w.index + 1 < len(windows) else n
        assert next_frame == later  # everything before the next window is out
        assert stitcher.pending == w.end - later  # only the overlap is held
        assert stitcher.max_pending <= w.length
    stitcher.finish()
    assert next_frame == n
    return torch.cat(parts), stitcher


@pytest.mark.parametrize("window,overlap", PAIRS)
def test_stitch_exactly_once_and_exact(window: int, overlap: int) -> None:
    gen = torch.Generator().manual_seed(window * 100 + overlap)
    video = torch.rand(300, generator=gen)
    noise = torch.rand(300, window, generator=gen)
    for n in FRAME_COUNTS:
        windows = plan_windows(n, window, overlap)
        chunks = _window_data(windows, video, noise)
        out, stitcher = _run_stitcher(windows, chunks, n)
        assert out.shape == (n, 7) and out.dtype == torch.float32
        assert stitcher.max_pending <= window
        for k, c in enumerate(CONSTANTS):
            assert torch.equal(out[:, k], torch.full((n,), c, dtype=torch.float32)), (n, c)
        assert (out[:, 5] - video[:n]).abs().max() <= 1e-6
        assert torch.equal(out[:, 5], video[:n])  # agreeing windows blend with no rounding at all
        weight_sum = torch.zeros(n, dtype=torch.float64)
        expected = torch.zeros(n, dtype=torch.float64)  # reference: sum_i w_i * x_i
        for w, frames in zip(windows, chunks):
            weights = window_weights(windows, w.index)
            weight_sum[w.start : w.end] += weights
            expected[w.start : w.end] += weights * frames[:, 6].double()
        assert (weight_sum - 1).abs().max() <= 1e-12
        assert (out[:, 6].double() - expected).abs().max() <= 1e-6


def test_weights_are_raised_cosine_in_pairwise_overlap() -> None:
    windows = plan_windows(40, 16, 4)  # [0,16) [12,28) [24,40): overlaps [12,16) and [24,28)
    x = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    down = torch.cos(0.5 * math.pi * x) ** 2
    w0, w1, w2 = (window_weights(windows, i) for i in range(3))
    assert torch.allclose(w0[12:], down, atol=1e-15) and torch.equal(w0[:12], torch.ones(12, dtype=torch.float64))
    assert torch.allclose(w1[:4], 1 - down, atol=1e-15) and torch.allclose(w1[12:], down, atol=1e-15)
    assert torch.equal(w1[4:12], torch.ones(8, dtype=torch.float64))
    assert torch.allclose(w2[:4], 1 - down, atol=1e-15)
    assert bool((w0[12:].diff() < 0).all())  # smooth monotone hand-over
    assert w0.dtype == torch.float64 and w0.shape == (16,)


@pytest.mark.parametrize("n,window,overlap", [(29, 16, 4), (100, 16, 12), (61, 21, 4), (50, 48, 47)])
def test_weights_partition_of_unity_with_triple_overlaps(n: int, window: int, overlap: int) -> None:
    windows = plan_windows(n, window, overlap)
    dense = frame_weights(windows, n)
    assert torch.allclose(dense.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    for w in windows:
        raw = raw_window_weights(windows, w.index)
        assert bool((raw > 0).all()) and bool((raw <= 1).all())
        assert bool((dense[w.index, w.start : w.end] > 0).all())
        assert bool((dense[w.index, : w.start] == 0).all()) and bool((dense[w.index, w.end :] == 0).all())


def test_no_overlap_means_hard_cuts() -> None:
    windows = plan_windows(20, 8, 0)  # [0,8) [8,16) [12,20)
    dense = frame_weights(windows, 20)
    assert torch.equal(dense[0, :8], torch.ones(8, dtype=torch.float64))
    assert torch.equal(dense[1, 8:12], torch.ones(4, dtype=torch.float64))
    assert torch.equal(dense[2, 16:], torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_pixel_shape_preserved(dtype: torch.dtype) -> None:
    n = 37
    windows = plan_windows(n, 16, 4)
    video = torch.rand(n, 2, 3, 3).to(dtype)  # [F, H, W, 3]
    out = stitch_all(windows, [video[w.start : w.end] for w in windows], n)
    assert out.dtype == dtype and out.shape == video.shape
    assert torch.equal(out, video)
    const = torch.full((n, 2, 3, 3), 0.1234567, dtype=dtype)
    assert torch.equal(stitch_all(windows, [const[w.start : w.end] for w in windows], n), const)


def test_latent_shape_and_emitted_chunks_are_independent() -> None:
    n = 30
    windows = plan_windows(n, 12, 4)
    chunks = [torch.rand(w.length, 4, 2, 2) for w in windows]  # [L, C, h, w]
    stitcher = Stitcher(n, windows)
    first = stitcher.add(0, chunks[0])
    copy = first[0][1].clone()
    chunks[0].add_(5.0)  # caller mutating its input must not change anything emitted or pending
    rest = [part for w in windows[1:] for part in stitcher.add(w.index, chunks[w.index])]
    stitcher.finish()
    assert torch.equal(first[0][1], copy)
    assert sum(p[1].shape[0] for p in first + rest) == n


def test_memory_bounded_on_long_video() -> None:
    n, window, overlap = 20000, 48, 12
    windows = plan_windows(n, window, overlap)
    stitcher = Stitcher(n, windows)
    total = 0
    for w in windows:
        for _, part in stitcher.add(w.index, torch.full((w.length, 1), 0.5)):
            total += part.shape[0]
            assert torch.equal(part, torch.full_like(part, 0.5))
        assert stitcher.pending < window
    stitcher.finish()
    assert total == n and stitcher.max_pending <= window


@pytest.mark.parametrize("window,overlap", [(17, 5), (16, 4), (21, 8), (5, 0), (8, 0), (1, 0)])
def test_multiple_four_gives_lengths_one_plus_4k(window: int, overlap: int) -> None:
    length = round_window(window, 4)
    for n in FRAME_COUNTS:
        if n <= length and (n - 1) % 4:
            with pytest.raises(ValueError, match=r"padded_length"):
                plan_windows(n, window, overlap, multiple=4)
            padded = padded_length(n, 4)
            assert plan_windows(padded, window, overlap, multiple=4) == [Window(0, 0, padded)]
            continue
        windows = plan_windows(n, window, overlap, multiple=4)
        assert all((w.length - 1) % 4 == 0 for w in windows)
        assert all(w.length == min(length, n) for w in windows)
        validate_plan(windows, n)
        const = [torch.full((w.length, 1), 0.1234567) for w in windows]
        assert torch.equal(stitch_all(windows, const, n), torch.full((n, 1), 0.1234567))


def test_round_window_and_padded_length() -> None:
    assert [round_window(w, 4) for w in range(1, 11)] == [1, 1, 1, 1, 5, 5, 5, 5, 9, 9]
    assert [padded_length(n, 4) for n in range(1, 11)] == [1, 5, 5, 5, 5, 9, 9, 9, 9, 13]
    assert [padded_length(n, 1) for n in range(1, 6)] == [1, 2, 3, 4, 5]
    assert round_window(16, 1) == 16
    assert plan_windows(40, 16, 4, multiple=4) == [Window(0, 0, 13), Window(1, 9, 22), Window(2, 18, 31),
                                                    Window(3, 27, 40)]


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(n_frames=0, window=8, overlap=0), r"n_frames.*n_frames=0"),
        (dict(n_frames=-3, window=8, overlap=0), r"n_frames=-3"),
        (dict(n_frames=10, window=0, overlap=0), r"window.*window=0"),
        (dict(n_frames=10, window=8, overlap=-1), r"overlap.*overlap=-1"),
        (dict(n_frames=10, window=8, overlap=8), r"overlap=8"),
        (dict(n_frames=10, window=8, overlap=9), r"overlap=9"),
        (dict(n_frames=10, window=8, overlap=0, multiple=0), r"multiple=0"),
        (dict(n_frames=10.0, window=8, overlap=0), r"n_frames=10.0"),
        (dict(n_frames=10, window=True, overlap=0), r"window=True"),
        (dict(n_frames=30, window=8, overlap=6, multiple=4), r"overlap=6"),  # window rounds to 5
        (dict(n_frames=3, window=8, overlap=0, multiple=4), r"n_frames=3.*padded_length\(3, 4\) = 5"),
    ],
)
def test_plan_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        plan_windows(**kwargs)


def test_padded_length_errors() -> None:
    with pytest.raises(ValueError, match=r"n=0"):
        padded_length(0, 4)
    with pytest.raises(ValueError, match=r"multiple=0"):
        padded_length(5, 0)


def test_window_dataclass() -> None:
    w = Window(2, 5, 12)
    assert w.length == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.start = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="start"):
        Window(0, 4, 4)
    with pytest.raises(ValueError, match="start"):
        Window(0, -1, 4)


@pytest.mark.parametrize(
    "windows,n,pattern",
    [
        ([], 5, "empty"),
        ([Window(0, 1, 5)], 5, r"cover"),
        ([Window(0, 0, 4)], 5, r"cover"),
        ([Window(0, 0, 4), Window(1, 5, 9)], 9, r"windows\[1\]"),  # gap at frame 4
        ([Window(0, 0, 4), Window(2, 3, 8)], 8, r"index"),
        ([Window(0, 0, 8), Window(1, 2, 6)], 8, r"windows\[1\]"),  # nested window
    ],
)
def test_validate_plan_errors(windows: list[Window], n: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        Stitcher(n, windows)


def test_stitcher_misuse() -> None:
    windows = plan_windows(20, 8, 2)  # [0,8) [6,14) [12,20)
    stitcher = Stitcher(20, windows)
    with pytest.raises(ValueError, match="expected window 0, got 1"):
        stitcher.add(1, torch.zeros(8, 2))
    with pytest.raises(ValueError, match="needs 8 frames"):
        stitcher.add(0, torch.zeros(7, 2))
    with pytest.raises(ValueError, match="floating point"):
        stitcher.add(0, torch.zeros(8, 2, dtype=torch.int64))
    stitcher.add(0, torch.zeros(8, 2))
    with pytest.raises(ValueError, match="trailing shape"):
        stitcher.add(1, torch.zeros(8, 3))
    with pytest.raises(ValueError, match="dtype"):
        stitcher.add(1, torch.zeros(8, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="1/3 windows added"):
        stitcher.finish()
    stitcher.add(1, torch.zeros(8, 2))
    stitcher.add(2, torch.zeros(8, 2))
    stitcher.finish()
    with pytest.raises(ValueError, match="already added"):
        stitcher.add(3, torch.zeros(8, 2))


def test_stitch_all_needs_one_chunk_per_window() -> None:
    windows = plan_windows(20, 8, 2)
    with pytest.raises(ValueError, match="one chunk per window"):
        stitch_all(windows, [torch.zeros(8)], 20)
