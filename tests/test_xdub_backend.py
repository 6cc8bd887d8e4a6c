"""The X-Dub backend in our pipeline, on a tiny random X-Dub model: the pipeline's Euler loop with the backend's
velocities lands exactly on the reference's sampler (ring replacement, three-branch guidance, motion frames), and a
whole multi-window run with motion continuation works end to end."""

import pytest
import torch
import torch.nn.functional as F

from omnisync_model.backends.xdub import schedule as S
from omnisync_model.backends.xdub.backend import XDubBackend
from omnisync_model.families.xdub import XDubModel, get_preset, xdub_forward
from omnisync_model.sampling.backend import WindowInputs, latent_first_frames
from omnisync_model.sampling.options import AudioInput, LipSyncOptions
from omnisync_model.sampling.pipeline import guided_denoise, lipsync


class StrideCodec:
    """A stand-in causal video codec: 2x2 pixel unshuffle (12 channels), latent 0 = frame 0, latent j = mean of
    frames 4j-3 .. 4j; decode repeats each latent (the first once)."""

    spatial_factor, temporal_factor, latent_channels = 2, 4, 12

    def encode(self, frames):
        x = F.pixel_unshuffle(frames.permute(0, 3, 1, 2), 2)  # [F,H,W,3] -> [F,12,H/2,W/2]
        groups = [x[:1]] + [x[1 + 4 * j: 5 + 4 * j].mean(0, keepdim=True) for j in range((len(x) - 1) // 4)]
        return torch.cat(groups).permute(1, 0, 2, 3)[None]  # [T,12,h,w] -> [1,12,T,h,w]

    def decode(self, latent):
        x = latent[0].permute(1, 0, 2, 3)  # [1,12,T,h,w] -> [T,12,h,w]
        x = torch.cat([x[:1], x[1:].repeat_interleave(4, dim=0)])  # [1 + 4(T-1),12,h,w]
        return F.pixel_shuffle(x, 2).permute(0, 2, 3, 1)  # -> [F,H,W,3]


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    cfg = get_preset("tiny").replace(in_channels=12, out_channels=12)
    model = XDubModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        model.head.head.weight.mul_(20.0)  # visible velocities
    return XDubBackend(model, context=torch.randn(1, 3, cfg.text_dim))


def _reference_loop(backend, x, ref, noise, audio, motion, sigmas):
    """The reference's loop written out with the schedule functions (fp32)."""
    model, m = backend.model, motion.shape[2]
    ctx = backend.context.expand(3, -1, -1)
    x = x.clone()
    x[:, :, :m] = motion
    for i in range(len(sigmas) - 1):
        ts = S.model_timestep(sigmas[i:i + 1] * S.TRAIN_STEPS)  # bf16
        x = S.replace_border(x, S.noised(ref, noise, S.border_sigma(ts).float()), 1, start_frame=m)
        refs = torch.cat([torch.zeros_like(ref), ref, ref])
        auds = torch.cat([torch.zeros_like(audio), torch.zeros_like(audio), audio])
        nega, pr, pra = xdub_forward(model, x, ts, ctx, auds, refs, motion).chunk(3)
        t = S.guidance_time(ts)
        v = S.combine_branches(nega, pr, pra, float(S.ref_weight(t)), float(S.audio_weight(t)))
        x = S.euler_step(x, v, sigmas[i], sigmas[i + 1])
        x[:, :, :m] = motion
    x = S.replace_border(x, ref, 1, start_frame=m)
    x[:, :, :m] = motion
    return x


def test_pipeline_steps_land_on_the_reference_sampler(backend):
    g = torch.Generator().manual_seed(5)
    frames = torch.rand(9, 16, 16, 3, generator=g)
    codec = StrideCodec()
    source = codec.encode(frames)  # [1,12,3,8,8]
    audio = torch.randn(1, 3, 8, 64, generator=g)
    motion_frames = torch.rand(5, 16, 16, 3, generator=g)
    cond = backend.condition(WindowInputs(source, frames, codec, audio, 0, latent_first_frames(0, 9, 4),
                                          motion_frames))
    assert cond.motion.shape == (1, 12, 2, 8, 8)
    opts = backend.default_options()
    sigmas = backend.sigmas(6, opts.tau, opts.shift)
    noise = backend.window_noise(source.shape, 7, latent_first_frames(0, 9, 4), source.device, source.dtype)
    x0 = backend.initial_latent(source, noise, float(sigmas[0]))
    assert torch.equal(x0, noise)  # tau = 1: pure noise, as the reference
    out, guided = guided_denoise(backend, x0, cond, backend.guidance(torch.ones(3, 8, 8), 1.0, opts), sigmas)
    ref = _reference_loop(backend, noise, source, noise, audio, cond.motion, sigmas)
    assert guided.calls == 6 and guided.evaluations == 18  # three branches in one call per step
    assert torch.allclose(out[:, :, :2], cond.motion, atol=1e-5)  # motion frames kept
    assert torch.allclose(out[:, :, 2:, :, 0], source[:, :, 2:, :, 0], atol=1e-5)  # clean source ring at the end
    assert (out - ref).abs().max().item() < 1e-5
    assert (out - source).abs().max().item() > 1e-2  # the interior was generated


def test_whole_run_with_motion_continuation(backend):
    g = torch.Generator().manual_seed(6)
    frames = torch.rand(13, 16, 16, 3, generator=g)
    audio = AudioInput(features=torch.randn(30, 64, generator=g), feature_rate=50.0)
    opts = LipSyncOptions(**{**vars(backend.default_options()), "window": 9, "steps": 3})
    assert opts.stitch == "continue" and opts.tau == 1.0 and opts.shift == 5.0
    out = lipsync(frames, 25.0, audio, backend, StrideCodec(), opts)
    again = lipsync(frames, 25.0, audio, backend, StrideCodec(), opts)
    assert out.shape == frames.shape and torch.isfinite(out).all() and torch.equal(out, again)


def test_refuses_wrong_vae_and_missing_features(backend):
    class Wan21Like(StrideCodec):
        latent_channels = 16

    with pytest.raises(ValueError, match="Wan2.2 VAE"):
        backend.prepare_codec(Wan21Like())
    with pytest.raises(ValueError, match="Wan2.2 VAE"):
        backend.prepare_codec(None)
    with pytest.raises(ValueError, match="features"):
        backend.audio_condition(AudioInput(waveform=torch.zeros(16000)), 25.0, backend.default_options())
    with pytest.raises(ValueError, match=r"\[steps, 64\]"):
        backend.audio_condition(AudioInput(features=torch.zeros(10, 63)), 25.0, backend.default_options())


def test_guidance_weights_and_mouth_map_option(backend):
    opts = backend.default_options()
    sigmas = backend.sigmas(50, opts.tau, opts.shift)
    weights = backend.guidance(torch.ones(3, 8, 8), 1.0, opts).weights
    t = S.guidance_time(S.model_timestep(sigmas[10:11] * S.TRAIN_STEPS))
    assert weights(float(sigmas[10]), 10) == [float(S.ref_weight(t)), float(S.audio_weight(t))]
    gmap = torch.full((3, 8, 8), 0.4)
    gmap[:, 4, 4] = 1.0
    mapped = XDubBackend(backend.model, backend.context[:, :1], mouth_map=True)
    r, a = mapped.guidance(gmap, 1.0, opts).weights(float(sigmas[10]), 10)
    assert r == float(S.ref_weight(t)) and torch.allclose(a, float(S.audio_weight(t)) * gmap)
    fixed = XDubBackend(backend.model, backend.context[:, :1], dynamic=False, ref_scale=2.0, audio_scale=7.0)
    assert fixed.guidance(gmap, 1.0, opts).weights(0.3, 3) == [2.0, 7.0]
