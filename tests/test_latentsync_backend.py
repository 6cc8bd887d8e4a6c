"""The LatentSync backend on a tiny random UNet: the pipeline runs end to end in both modes, and reference mode
lands on exactly the latent the reference's own loop (DDIM with CFG on epsilon, written out here) produces."""

import pytest
import torch
import torch.nn.functional as F

from omnisync_model.backends.latentsync import schedule as S
from omnisync_model.backends.latentsync.backend import LatentSyncBackend, lower_face_mask
from omnisync_model.core.codec import PixelCodec
from omnisync_model.families.latentsync import LatentSyncUNet, get_preset
from omnisync_model.families.latentsync.audio_index import latentsync_frame_audio
from omnisync_model.sampling.flow import seeded_noise
from omnisync_model.sampling.options import AudioInput, LipSyncOptions
from omnisync_model.sampling.pipeline import lipsync

FPS = 25


class TinyVAE:
    """A stand-in SD VAE: 8x average pooling to 4 channels, nearest upsampling back; records decode inputs."""

    spatial_factor, temporal_factor, latent_channels = 8, 1, 4

    def __init__(self):
        self.decoded = []

    def encode(self, frames):  # [F,H,W,3] 0..1 -> [1,4,F,h,w]
        x = F.avg_pool2d(frames.permute(0, 3, 1, 2) * 2 - 1, 8)  # [F,3,h,w]
        x = torch.cat([x, x.mean(1, keepdim=True)], dim=1)  # [F,4,h,w]
        return x.permute(1, 0, 2, 3)[None]

    def decode(self, latent):  # [1,4,T,h,w] -> [T,H,W,3]
        self.decoded.append(latent.clone())
        x = F.interpolate(latent[0].permute(1, 0, 2, 3)[:, :3], scale_factor=8)
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LatentSyncUNet(get_preset("tiny")).eval()


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(21, 64, 64, 3, generator=g)
    feats = torch.randn(60, 5, 16, generator=g)  # 1.2 s of Whisper-tiny-shaped features (width 16: tiny preset)
    return frames, feats


def test_reference_mode_runs_the_pipeline(model, clip):
    frames, feats = clip
    backend = LatentSyncBackend(model)
    vae = TinyVAE()
    out = lipsync(frames, FPS, AudioInput(features=feats.flatten(1)), backend, vae, backend.default_options())
    assert out.shape == frames.shape and torch.isfinite(out).all()
    # 16-frame windows without overlap; the pipeline keeps every window full length, so the last one starts at
    # frame 5 (the reference would run a 5-frame tail window)
    assert [d.shape[2] for d in vae.decoded] == [16, 16]
    sig = backend.sigmas(20, 0.5, 3.0)  # tau and shift do not apply: DDIM's schedule, its integer timesteps
    assert torch.equal(sig, S.ddim_sigmas(20))
    assert [backend.timestep(float(s)) for s in sig[:-1]] == [float(t) for t in range(951, 0, -50)]


def test_reference_mode_equals_the_reference_loop(model, clip):
    frames, feats = clip
    frames = frames[:16]
    backend = LatentSyncBackend(model)
    vae = TinyVAE()
    lipsync(frames, FPS, AudioInput(features=feats), backend, vae, backend.default_options())
    ours = vae.decoded[0] * 0.18215  # what the reference decodes, in its scaled latent space

    # the reference's loop: latents = one noise tensor repeated; per step CFG on eps, then the DDIM (eta 0) step
    h = w = 8
    mask = lower_face_mask(64, 64)
    pixels = frames.permute(0, 3, 1, 2) * 2 - 1  # [F,3,H,W] in -1..1
    masked = ((pixels * mask + 1) / 2).permute(0, 2, 3, 1)  # pixels x mask, back to 0..1 for the stand-in VAE
    cond = torch.cat([F.interpolate(mask.expand(16, 1, 64, 64), size=(h, w)).permute(1, 0, 2, 3)[None],
                      TinyVAE().encode(masked) * 0.18215, TinyVAE().encode(frames) * 0.18215], dim=1)
    audio = latentsync_frame_audio(feats, range(16), FPS)
    x = seeded_noise((1, 4, 1, h, w), 0).expand(1, 4, 16, h, w).double()
    abar = S.alphas_cumprod()
    ts = S.ddim_timesteps(20).tolist()
    with torch.no_grad():
        for k, t in enumerate(ts):
            inp = torch.cat([torch.cat([x, x]).float(), torch.cat([cond, cond])], dim=1)
            eps_u, eps_c = model(inp, t, torch.cat([torch.zeros_like(audio), audio])).double().chunk(2)
            eps = eps_u + 1.5 * (eps_c - eps_u)
            a, a_prev = abar[t], abar[ts[k + 1]] if k + 1 < len(ts) else abar[0]
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert (ours.double() - x).abs().max().item() < 1e-4


def test_progressive_mode_with_overlap_and_ds_cfg(model, clip):
    frames, feats = clip
    backend = LatentSyncBackend(model, mode="progressive")
    opts = backend.default_options()
    assert opts.tau == 0.92 and opts.overlap == 2
    vae = TinyVAE()
    out = lipsync(frames, FPS, AudioInput(features=feats), backend, vae, opts,
                  mouth_centres=torch.full((21, 2), 0.6))
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert len(vae.decoded) == 2 and sum(d.shape[2] for d in vae.decoded) > 21  # overlapping windows
    sig = backend.sigmas(20, 0.92, 1.0)
    assert sig[0].item() == pytest.approx(0.92) and backend.timestep(float(sig[0])) == pytest.approx(958.35, abs=0.01)
    # the start is the noised source: frames the model never touched still carry the source
    src = TinyVAE().encode(frames[:16]) * 0.18215
    noise = backend.window_noise(src.shape, 0, list(range(16)), "cpu", torch.float32)
    assert torch.allclose(backend.initial_latent(src, noise, 0.92), 0.08 * src + 0.92 * noise)
    assert torch.equal(noise[:, :, 0], noise[:, :, 15])  # one noise tensor repeated over the frames


def test_bad_inputs_are_refused(model, clip):
    frames, feats = clip
    backend = LatentSyncBackend(model)
    with pytest.raises(ValueError, match="not a VAE of another family"):
        backend.prepare_codec(PixelCodec(8))
    with pytest.raises(ValueError, match="longer than this model can take"):
        lipsync(frames, FPS, AudioInput(features=feats), backend, TinyVAE(), LipSyncOptions(window=25, overlap=0))
    with pytest.raises(ValueError, match=r"\[steps, 5, 16\]"):
        lipsync(frames, FPS, AudioInput(features=feats[:, :4]), backend, TinyVAE(), backend.default_options())
    with pytest.raises(ValueError, match="Whisper-tiny features"):
        lipsync(frames, FPS, AudioInput(waveform=torch.zeros(16000)), backend, TinyVAE())
    musetalk = LatentSyncUNet(get_preset("tiny").replace(family="musetalk", in_channels=8, temporal=False,
                                                         motion_down=False, motion_up=False))
    with pytest.raises(ValueError, match="musetalk UNet"):
        LatentSyncBackend(musetalk)
