"""Per-latent-frame audio indexing: equal to the reference's crop_overlap_audio_window at 25 fps (golden from its
own class), and defined by absolute time at any frame rate."""

import json
from pathlib import Path

import pytest
import torch

from omnisync_model.families.xdub.audio_index import audio_step, audio_window_indices, audio_windows, xdub_audio_windows
from omnisync_model.sampling.backend import latent_first_frames

CASES = json.loads((Path(__file__).parent / "golden" / "xdub" / "audio_index.json").read_text())


def test_equals_reference_at_25_fps():
    assert len(CASES) == 72
    for case in CASES:
        first = latent_first_frames(case["start"], case["num_frames"], 4)
        idx = audio_window_indices(first, 25, case["n_steps"])
        assert idx.tolist() == case["indices"], case


def test_windows_follow_absolute_time_at_other_rates():
    for fps in (24, 30, 60, 29.97):
        first = latent_first_frames(100, 77, 4)
        idx = audio_window_indices(first, fps, 10_000)
        assert idx.shape == (20, 8)
        assert torch.all(idx[:, 1:] - idx[:, :-1] == 1)  # 8 consecutive steps
        end0 = idx[0, -1].item() + 1  # the first latent's window ends where its (single) frame ends
        assert end0 == audio_step(101, fps) and abs(end0 / 50 - 101 / fps) < 1 / 50
        for j, f in enumerate(first[1:], start=1):
            assert idx[j, 0].item() == int(f * 50 / fps + 1e-6)
            assert abs(idx[j, 0].item() / 50 - f / fps) < 1 / 50  # within one step of the frame's time


def test_same_time_same_audio_across_rates():
    """A latent frame starting at the same instant sees the same steps whatever the frame rate."""
    at_25 = audio_window_indices([0, 25], 25, 1000)[1]  # frame 25 at 25 fps = 1.0 s
    at_50 = audio_window_indices([0, 50], 50, 1000)[1]  # frame 50 at 50 fps = 1.0 s
    assert torch.equal(at_25, at_50) and at_25[0].item() == 50


def test_clamped_per_stream_and_whisper_first():
    whisper = torch.arange(10.0)[:, None].expand(10, 1280)
    wav2vec = -torch.arange(7.0)[:, None].expand(7, 768)
    out = xdub_audio_windows(whisper, wav2vec, [0, 1, 5], 25)
    assert out.shape == (3, 8, 2048)
    assert out[0, :, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # [-6, 2) clamped at 0
    assert out[2, :, 0].tolist() == [9.0] * 8  # [10, 18) clamped to the last Whisper step
    assert out[2, :, 1280].tolist() == [-6.0] * 8  # wav2vec2 clamped by its own length
    assert torch.equal(audio_windows(whisper, [0, 1], 25), out[:2, :, :1280])


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        audio_window_indices([0], 25, 0)
    with pytest.raises(ValueError, match="fps"):
        audio_window_indices([0], 0, 10)
