"""MuseTalk 1.5 through the pipeline: one UNet call at t = 0 whose prediction is the output latent (the exact flow
mapping of a one-step model), the reference's half mask and input order, per-frame audio windows, refusals."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from omnisync_model.backends import registry
from omnisync_model.backends.latentsync.musetalk import MuseTalkBackend, upper_half_mask
from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.families.latentsync import reference_forward
from omnisync_model.families.latentsync.audio_index import musetalk_audio, musetalk_frame_audio
from omnisync_model.sampling.options import AudioInput
from omnisync_model.sampling.pipeline import lipsync

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "latentsync"
UNET = GOLDEN_DIR / "musetalk_tiny_unet.safetensors"
FPS = 25


class TinyVAE:
    """A stand-in SD VAE: 8x average pooling to 4 channels, nearest upsampling back."""

    spatial_factor, temporal_factor, latent_channels = 8, 1, 4

    def encode(self, frames):  # [F,H,W,3] 0..1 -> [1,4,F,h,w]
        x = F.avg_pool2d(frames.permute(0, 3, 1, 2) * 2 - 1, 8)  # [F,3,h,w]
        x = torch.cat([x, x.mean(1, keepdim=True)], dim=1)  # [F,4,h,w]
        return x.permute(1, 0, 2, 3)[None]

    def decode(self, latent):  # [1,4,T,h,w] -> [T,H,W,3]
        x = F.interpolate(latent[0].permute(1, 0, 2, 3)[:, :3], scale_factor=8)
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def backend():
    loaded = registry.load_backend(UNET)
    assert isinstance(loaded, MuseTalkBackend)
    return loaded


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(4)
    return torch.rand(20, 64, 64, 3, generator=g), torch.randn(45, 5, 16, generator=g)  # 0.9 s of features


def test_one_step_lands_on_the_unets_prediction(backend, clip):
    frames, feats = clip
    vae = TinyVAE()
    out = lipsync(frames, FPS, AudioInput(features=feats), backend, vae, backend.default_options())
    assert out.shape == frames.shape
    # the reference: cat([VAE(lower half black), VAE(frame)]) * 0.18215, t = 0, tokens with the table, then decode
    half = upper_half_mask(64, 64)[None, :, :, None]
    sample = torch.cat([vae.encode(frames * half), vae.encode(frames)], dim=1) * 0.18215  # [1,8,F,8,8]
    sample = sample[0].permute(1, 0, 2, 3)  # [8,F,h,w] -> [F,8,h,w]: MuseTalk's image batch
    audio = musetalk_audio(musetalk_frame_audio(feats, range(20), FPS))  # [F,50,16]
    pred = reference_forward(UNET, sample, 0, audio)  # [F,4,h,w]
    want = vae.decode(pred.permute(1, 0, 2, 3)[None] / 0.18215)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_audio_changes_the_result_and_settings_that_do_not_apply_are_ignored(backend, clip):
    frames, feats = clip
    opts = backend.default_options()
    base = lipsync(frames[:16], FPS, AudioInput(features=feats), backend, TinyVAE(), opts)
    other = lipsync(frames[:16], FPS, AudioInput(features=feats.flip(0)), backend, TinyVAE(), opts)
    assert float((base - other).abs().max()) > 1e-3
    ignored = lipsync(frames[:16], FPS, AudioInput(features=feats), backend, TinyVAE(),
                      opts.__class__(tau=0.5, steps=7, seed=3, window=16, overlap=0))
    torch.testing.assert_close(ignored, base)
    assert torch.equal(backend.sigmas(20, 0.5, 3.0), torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_refusals(backend):
    with pytest.raises(ValueError, match="not a VAE of another family"):
        backend.prepare_codec(type("Wan", (), dict(latent_channels=16, spatial_factor=8, temporal_factor=4))())
    with pytest.raises(ValueError, match="Whisper encoder"):
        backend.audio_condition(AudioInput(waveform=torch.zeros(1, 16000), sample_rate=16000), FPS,
                                backend.default_options())
    with pytest.raises(ValueError, match="runs MuseTalk UNets"):
        MuseTalkBackend(registry.load_backend(GOLDEN_DIR / "latentsync_tiny_unet.safetensors").model)
    with pytest.raises(CheckpointError, match="needs Whisper tiny"):
        backend.with_speech(type("Speech", (), dict(whisper=_FakeWhisper(384, 4)))())


class _FakeWhisper:
    def __init__(self, width, layers):
        self.config = type("Cfg", (), dict(d_model=width))()
        self.layers = [None] * layers
