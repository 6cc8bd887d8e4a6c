"""Per-frame Whisper windows == the references' (goldens from LatentSync's Audio2Feature and MuseTalk's
AudioProcessor on index-coded features [37 steps, 5 taps, 6 channels]: value = 100 step + 10 tap + channel)."""

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnisync_model.families.latentsync import audio_index as A

GOLDEN = Path(__file__).parent / "golden" / "latentsync"


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "audio_index.json").read_text())
    return meta, {k: v.float() for k, v in load_file(str(GOLDEN / "audio_index.safetensors")).items()}


def _coded(t, k, d):
    return (torch.arange(t)[:, None, None] * 100 + torch.arange(k)[None, :, None] * 10
            + torch.arange(d)[None, None, :]).float()


def test_latentsync_indices_and_counts_at_many_fps(golden):
    meta, _ = golden
    steps = meta["features"][0]
    for fps, ref in meta["latentsync"].items():
        fps = float(fps)
        assert A.latentsync_frame_count(steps, fps) == ref["count"], fps
        assert A.latentsync_indices(range(ref["count"]), fps, steps).tolist() == ref["indices"], fps


def test_latentsync_tokens_layout_at_25_fps(golden):
    meta, tensors = golden
    feats = _coded(*meta["features"])
    ref = tensors["latentsync_chunks_25"]
    ours = A.latentsync_frame_audio(feats, range(ref.shape[0]), 25)
    assert ours.shape == (20, 50, 6) and torch.equal(ours, ref)
    # token 5j + k is step (centre - 4 + j), tap k: step-major, tap-minor
    assert ours[3, 7].tolist() == [100 * (6 - 4 + 1) + 10 * 2 + d for d in range(6)]


def test_musetalk_windows(golden):
    meta, tensors = golden
    feats = _coded(*meta["features"])
    for fps in meta["musetalk"]:
        ref = tensors[f"musetalk_chunks_{fps}"]
        assert torch.equal(A.musetalk_frame_audio(feats, range(ref.shape[0]), int(fps)), ref), fps


def test_absolute_time_any_fps_and_windows():
    feats = _coded(3000, 5, 2)  # 60 s
    # a window of a long clip gets the same tokens as the whole clip at those frames
    whole = A.latentsync_frame_audio(feats, range(0, 300), Fraction(30000, 1001))
    part = A.latentsync_frame_audio(feats, range(200, 216), Fraction(30000, 1001))
    assert torch.equal(whole[200:216], part)
    # exact rational time: frame 600 at 30000/1001 fps is 20.02 s exactly, feature step 1001
    assert A.centre_steps([600], Fraction(30000, 1001)).item() == 1001
    # no 30 s cut: windows around 30 s index straight through
    idx = A.latentsync_indices([749, 750, 751], 25, 3000)
    assert idx[:, 0].tolist() == [1494, 1496, 1498] and idx[:, -1].tolist() == [1503, 1505, 1507]
