"""End-to-end pipeline on a tiny model: frame counts, determinism, windows, audio handling, interrupts."""

import math

import pytest
import torch

from omnisync_model.core.codec import PixelCodec
from omnisync_model.sampling.guidance import DSCFG
from omnisync_model.backends.omnisync import OmniSyncBackend
from omnisync_model.sampling.pipeline import AudioInput, LipSyncOptions, RunStats, iter_lipsync, lipsync
from omnisync_model.media.streams import SequentialFrames


def clip(n=10, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, hw, hw, 3, generator=g)


def speech(seconds, sr=16000):
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 220 * t) * (torch.sin(2 * math.pi * 3 * t) > 0)).float()


OPTS = LipSyncOptions(steps=3, window=6, overlap=2)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 11])
def test_frame_count_and_range(tiny_model, n):
    frames = clip(n)
    out = lipsync(frames, 25.0, AudioInput(speech(1.0)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    assert out.shape == frames.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_deterministic_and_seed_dependent(tiny_model):
    frames, audio = clip(7), AudioInput(speech(0.5))
    a = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    b = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    c = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), LipSyncOptions(steps=3, window=6, overlap=2, seed=1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_odd_sizes_are_padded_and_cropped_back(tiny_model):
    frames = clip(4)[:, :13, :11]
    out = lipsync(frames, 30.0, AudioInput(speech(0.3)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    assert out.shape == frames.shape


def test_uint8_grayscale_and_rgba_inputs(tiny_model):
    u8 = (clip(3) * 255).to(torch.uint8)
    gray = clip(3)[..., :1]
    rgba = torch.cat([clip(3), torch.ones(3, 16, 16, 1)], dim=-1)
    for frames in (u8, gray, rgba):
        assert lipsync(frames, 25.0, AudioInput(speech(0.2)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS).shape == (3, 16, 16, 3)


def test_bad_inputs_are_clear(tiny_model):
    audio = AudioInput(speech(0.2))
    with pytest.raises(ValueError, match="0 frames"):
        lipsync(clip(0), 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    for fps in (0, -25, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            lipsync(clip(2), fps, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    bad = clip(2)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lipsync(bad, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)


def test_audio_shorter_or_longer_than_video_keeps_every_frame(tiny_model):
    frames = clip(12)
    for seconds in (0.05, 0.2, 3.0):
        out = lipsync(frames, 25.0, AudioInput(speech(seconds)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
        assert out.shape == frames.shape


def test_streaming_source_equals_tensor(tiny_model):
    frames, audio = clip(11), AudioInput(speech(0.5))
    ref = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS)
    stream = SequentialFrames((frames[i:i + 3] for i in range(0, 11, 3)), 11)
    chunks = list(iter_lipsync(stream, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), OPTS))
    assert [s for s, _ in chunks] == sorted(s for s, _ in chunks)
    assert torch.equal(torch.cat([c for _, c in chunks]), ref)


def test_progress_and_model_evaluation_counts(tiny_model):
    calls = []
    stats = RunStats()
    list(iter_lipsync(clip(10), 25.0, AudioInput(speech(0.5)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS,
                      progress=lambda d, t: calls.append((d, t)), stats=stats))
    n_windows = 3  # plan for 10 frames, window 6, overlap 2: [0,6) [4,10)... the stitcher decides
    assert calls[-1][0] == calls[-1][1] == stats.steps_done
    assert stats.steps_done % OPTS.steps == 0 and stats.steps_done // OPTS.steps in (2, n_windows)
    # w_peak=2.5, gamma=1.5, no mouth: uncond needed while 2.5 * (s/tau)^1.5 > 1, i.e. s > 0.54 tau
    assert stats.steps_done < stats.evaluations < 2 * stats.steps_done


def test_interrupt_stops_within_one_step(tiny_model):
    seen = []

    def check():
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lipsync(clip(10), 25.0, AudioInput(speech(0.5)), OmniSyncBackend(tiny_model), PixelCodec(4), OPTS, check_interrupt=check)
    assert len(seen) == 2


def test_mouth_centres_change_guidance(tiny_model):
    frames, audio = clip(4), AudioInput(speech(0.3))
    centres = torch.tensor([[0.5, 0.7]]).repeat(4, 1)
    opts = LipSyncOptions(steps=3, window=6, overlap=2, guidance=DSCFG(w_peak=4.0, w_base=1.0))
    a = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), opts)
    b = lipsync(frames, 25.0, audio, OmniSyncBackend(tiny_model), PixelCodec(4), opts, mouth_centres=centres)
    assert not torch.equal(a, b)


def test_external_features_path():
    from omnisync_model.families.omnisync.config import get_preset
    from omnisync_model.families.omnisync.model import OmniSyncModel

    model = OmniSyncModel(get_preset("tiny").replace(external_audio_dim=32)).eval()
    feats = torch.randn(40, 32)  # 0.8 s at 50 Hz
    out = lipsync(clip(5), 25.0, AudioInput(features=feats, feature_rate=50.0), OmniSyncBackend(model), PixelCodec(4), OPTS)
    assert out.shape == (5, 16, 16, 3)
    with pytest.raises(ValueError, match="NaN"):
        lipsync(clip(5), 25.0, AudioInput(features=feats * float("nan")), OmniSyncBackend(model), PixelCodec(4), OPTS)


def test_overlapping_windows_share_noise_per_frame():
    from omnisync_model.sampling.backend import per_frame_noise as window_noise

    a = window_noise((1, 4, 3, 2, 2), 5, [10, 11, 12], "cpu", torch.float32)
    b = window_noise((1, 4, 2, 2, 2), 5, [11, 12], "cpu", torch.float32)
    assert torch.equal(a[:, :, 1:], b)


class FourFrameCodec(PixelCodec):
    """The pixel codec with a video VAE's temporal rule: keeps frames 0, 4, 8, ... (T = 1 + (F-1)//4)."""

    temporal_factor = 4

    def encode(self, frames):
        return super().encode(frames[::4])

    def decode(self, latent):
        return super().decode(latent).repeat_interleave(4, dim=0)[: 1 + (latent.shape[2] - 1) * 4]


@pytest.mark.parametrize("n", [1, 2, 3, 6, 13, 14, 30])
def test_temporal_codec_any_length(tiny_model, n):
    """A video VAE (temporal factor 4) works for every frame count, short clips included."""
    out = lipsync(clip(n), 25.0, AudioInput(speech(1.0)), OmniSyncBackend(tiny_model), FourFrameCodec(4),
                  LipSyncOptions(steps=2, window=16, overlap=4))
    assert out.shape == (n, 16, 16, 3)
