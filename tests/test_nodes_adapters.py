"""Adapter logic of the ComfyUI nodes (nodes/adapters.py), tested without ComfyUI.

The pack is imported as a package (as ComfyUI does), so the adapters' relative imports resolve; all OmniSync
objects below come from that package.
"""

import math
from fractions import Fraction

import pytest
import torch

from conftest import randomize_zero_inits
from comfy_helpers import pack_module

AU = pack_module("nodes.adapters.audio")
CO = pack_module("nodes.adapters.codecs")
FR = pack_module("nodes.adapters.frames")
LA = pack_module("nodes.adapters.latents")
LS = pack_module("nodes.adapters.lipsync")
TR = pack_module("nodes.adapters.tracks")
P = pack_module("omnisync_model.sampling.pipeline")
BACKEND = pack_module("omnisync_model.backends.omnisync")
BK = pack_module("omnisync_model.sampling.backend")
CODEC = pack_module("omnisync_model.core.codec")
GUIDE = pack_module("omnisync_model.sampling.guidance")
LOCATE = pack_module("omnisync_model.media.locate")
CONFIG = pack_module("omnisync_model.families.omnisync.config")
MODEL = pack_module("omnisync_model.families.omnisync.model")


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = MODEL.OmniSyncModel(CONFIG.get_preset("tiny").replace(external_audio_dim=8)).eval()
    randomize_zero_inits(m, seed=1)  # gates / output get small values: the output depends on every input
    return BACKEND.OmniSyncBackend(m)


def _frames(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, size, size, 3), generator=g).float() / 256.0)


def _speech(seconds=0.6, rate=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * 220 * t) * (torch.rand(t.shape, generator=g) > 0.3)).float()


# --------------------------------------------------------------------------------------------- frames and audio


def test_image_to_frames_views_rgb_and_converts_other_layouts():
    rgb = torch.rand(3, 8, 8, 3)
    assert FR.image_to_frames(rgb).data_ptr() == rgb.data_ptr()  # no copy of a float RGB IMAGE
    rgba = torch.rand(3, 8, 8, 4)
    assert torch.equal(FR.image_to_frames(rgba), rgba[..., :3])
    grey = torch.rand(2, 8, 8, 1)
    assert torch.equal(FR.image_to_frames(grey), grey.expand(-1, -1, -1, 3))
    assert FR.image_to_frames(torch.rand(8, 8, 3)).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="IMAGE batch"):
        FR.image_to_frames(torch.rand(2, 3, 8, 8, 3))


@pytest.mark.parametrize("bad", [0, -25, float("nan"), float("inf"), "fast", None])
def test_check_fps_refuses_bad_rates(bad):
    with pytest.raises(ValueError, match="fps"):
        FR.check_fps(bad)


def test_check_fps_accepts_fractions():
    assert FR.check_fps(Fraction(30000, 1001)) == pytest.approx(29.97002997)


def test_audio_from_comfy_uses_first_clip_and_validates():
    wave = torch.randn(2, 2, 100)
    out, rate = AU.audio_from_comfy({"waveform": wave, "sample_rate": 44100})
    assert rate == 44100 and torch.equal(out, wave[0])
    with pytest.raises(ValueError, match="AUDIO dict"):
        AU.audio_from_comfy({"waveform": wave})
    with pytest.raises(ValueError, match="samples > 0"):
        AU.audio_from_comfy({"waveform": torch.zeros(1, 2, 0), "sample_rate": 16000})


@pytest.mark.parametrize("n_in", [40000, 32000, 7000])
def test_fit_audio_to_video_trims_or_pads_to_the_video_length(n_in):
    wave = torch.randn(1, 2, n_in)
    out = AU.fit_audio_to_video({"waveform": wave, "sample_rate": 16000}, n_frames=50, fps=25.0)
    assert out["sample_rate"] == 16000 and out["waveform"].shape == (1, 2, 32000)  # 50 / 25 s at 16 kHz
    keep = min(n_in, 32000)
    assert torch.equal(out["waveform"][..., :keep], wave[..., :keep])
    assert torch.count_nonzero(out["waveform"][..., keep:]) == 0


def test_features_from_encoder_output_trims_whisper_padding():
    feats = torch.randn(1, 1500, 8)  # Whisper: always 30 s at 50 Hz
    out, rate = AU.features_from_encoder_output({"encoded_audio": feats, "audio_samples": int(2.3 * 16000)})
    assert rate == 50.0 and out.shape == (115, 8) and torch.equal(out, feats[0, :115])
    untrimmed, _ = AU.features_from_encoder_output({"encoded_audio": feats[:, :40]})
    assert untrimmed.shape == (40, 8)
    with pytest.raises(ValueError, match="AUDIO_ENCODER_OUTPUT"):
        AU.features_from_encoder_output({"waveform": feats})
    with pytest.raises(ValueError, match="batch, steps, width"):
        AU.features_from_encoder_output({"encoded_audio": feats[0]})


def test_audio_input_prefers_features_and_needs_something():
    feats = {"encoded_audio": torch.randn(1, 30, 8), "audio_samples": 9600}
    audio = {"waveform": torch.randn(1, 1, 9600), "sample_rate": 16000}
    got = AU.audio_input(audio, feats)
    assert got.features is not None and got.waveform is None and got.features.shape == (30, 8)
    assert AU.audio_input(audio, None).waveform.shape == (1, 9600)
    with pytest.raises(ValueError, match="connect an audio input"):
        AU.audio_input(None, None)


def test_encode_audio_tokens_per_frame_match_the_pipeline(model):
    wave = _speech()
    enc = AU.encode_audio(model, P.AudioInput(waveform=wave, sample_rate=16000), fps=25, n_frames=12)
    want = BACKEND.OmniSyncAudio(model.model, P.AudioInput(waveform=wave, sample_rate=16000), 25.0, 1.0).window(0, 12, 1)
    cfg = model.config
    tokens = enc.window(0, 12, 1)
    assert tokens.shape == (1, 12, cfg.audio_tokens, cfg.audio_dim)
    assert torch.equal(tokens, want)
    assert enc.window(0, 12, 4).shape == (1, 3, cfg.audio_tokens, cfg.audio_dim)  # 1 + (12 - 1) // 4
    late = BACKEND.OmniSyncAudio(model.model, P.AudioInput(waveform=wave, sample_rate=16000), 25.0, 1.0).window(8, 4, 1)
    assert torch.equal(enc.window(8, 4, 1), late)  # any window, by absolute time


def test_encode_audio_with_external_features(model):
    feats = torch.randn(40, 8)
    enc = AU.encode_audio(model, P.AudioInput(features=feats, feature_rate=50.0), fps=25, n_frames=20)
    assert enc.window(0, 20, 1).shape[:2] == (1, 20)
    with pytest.raises(ValueError, match="frame_count"):
        AU.encode_audio(model, P.AudioInput(features=feats), fps=25, n_frames=0)


# --------------------------------------------------------------------------------------------- LATENT


def test_latent_layouts_round_trip():
    video = torch.randn(1, 4, 3, 5, 6)
    x, image = LA.latent_to_5d({"samples": video})
    assert x is video and not image
    batch = torch.randn(3, 4, 5, 6)  # image VAE: one latent per frame
    x, image = LA.latent_to_5d({"samples": batch})
    assert image and x.shape == (1, 4, 3, 5, 6) and torch.equal(x[0, :, 1], batch[1])
    back = LA.latent_from_5d(x, image, tau=0.5, seed=None)
    assert torch.equal(back["samples"], batch) and back["omnisync_tau"] == 0.5 and "omnisync_seed" not in back
    with pytest.raises(ValueError, match="video latent"):
        LA.latent_to_5d({"samples": torch.randn(2, 4, 3, 5, 6)})


def test_noise_latent_is_progressive_init_with_per_frame_noise():
    src = torch.randn(1, 4, 5, 3, 3)
    out = LA.noise_latent({"samples": src}, tau=0.6, seed=7)
    noise = BK.per_frame_noise(src.shape, 7, [0, 1, 2, 3, 4], src.device, src.dtype)
    assert torch.allclose(out["samples"], 0.4 * src + 0.6 * noise, atol=1e-6)
    assert (out["omnisync_tau"], out["omnisync_seed"], out["omnisync_temporal_factor"]) == (0.6, 7, 1)
    # frame j's noise depends only on (seed, j): a shorter clip gets the same noise on the frames it has
    short = LA.noise_latent({"samples": src[:, :, :3]}, tau=1.0, seed=7)
    assert torch.equal(short["samples"], noise[:, :, :3])


def test_noise_latent_with_temporal_compression_keys_noise_by_first_video_frame():
    src = torch.zeros(1, 2, 3, 2, 2)
    out = LA.noise_latent({"samples": src}, tau=1.0, seed=3, temporal_factor=4)
    want = BK.per_frame_noise(src.shape, 3, [0, 1, 5], src.device, src.dtype)  # latent j>=1 starts at 1 + 4 (j - 1)
    assert torch.equal(out["samples"], want)
    with pytest.raises(ValueError, match="tau"):
        LA.noise_latent({"samples": src}, tau=0.0, seed=3)


@pytest.mark.parametrize("t, f, tf", [(5, 5, 1), (21, 81, 4), (3, 9, 4), (2, 2, 1)])
def test_infer_temporal_factor(t, f, tf):
    assert LA.infer_temporal_factor(t, f) == tf


def test_infer_temporal_factor_refuses_impossible_pairs():
    with pytest.raises(ValueError):
        LA.infer_temporal_factor(6, 5)


def test_pad_to_multiple_replicates_edges():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 1, 2, 3, 3)
    padded, hw = LA.pad_to_multiple(x, 2)
    assert hw == (3, 3) and padded.shape == (1, 1, 2, 4, 4)
    assert torch.equal(padded[..., :3, :3], x)
    assert torch.equal(padded[..., 3, :3], x[..., 2, :]) and torch.equal(padded[..., :3, 3], x[..., :, 2])
    same, _ = LA.pad_to_multiple(x, 1)
    assert same is x


# --------------------------------------------------------------------------------------------- mouth tracks


def test_fit_track_length_and_mask_count():
    c, v = torch.rand(4, 2), torch.tensor([True, False, True, True])
    c2, v2 = TR.fit_track_length(c, v, 6)
    assert torch.equal(c2[4], c[3]) and torch.equal(c2[5], c[3]) and v2.tolist() == v.tolist() + [True, True]
    c3, v3 = TR.fit_track_length(c, v, 2)
    assert torch.equal(c3, c[:2]) and v3.tolist() == [True, False]
    one = torch.rand(8, 8)
    assert torch.equal(FR.fit_mask_count(one, 3), one[None].expand(3, -1, -1))
    with pytest.raises(ValueError, match="MASK"):
        FR.fit_mask_count(torch.rand(2, 2, 8, 8), 3)


def test_track_arrays_reads_a_mouth_track():
    track = LOCATE.mask_to_mouths(torch.zeros(3, 8, 8).index_fill_(1, torch.tensor([6]), 1.0))
    centres, valid = TR.track_arrays(track, 3)
    assert centres.shape == (3, 2) and valid.all()
    assert torch.allclose(centres[:, 1], torch.full((3,), 6.5 / 8))
    assert TR.track_arrays(None, 3) == (None, None)


# --------------------------------------------------------------------------------------------- codecs


class FakeVideoVAE:
    """Mimics comfy.sd.VAE for a causal video VAE: IMAGE [F,H,W,3] -> [1,C,1+(F-1)//tf,H/f,W/f]."""

    latent_dim = 3
    latent_channels = 5

    def __init__(self):
        self.calls = []

    def spacial_compression_encode(self):
        return 8

    def temporal_compression_decode(self):
        return 4

    def encode(self, images):
        self.calls.append(("encode", tuple(images.shape)))
        f, h, w, _ = images.shape
        return torch.zeros(1, 5, 1 + (f - 1) // 4, h // 8, w // 8)

    def decode(self, latent):
        self.calls.append(("decode", tuple(latent.shape)))
        _, _, t, h, w = latent.shape
        return torch.full((1, 1 + (t - 1) * 4, h * 8, w * 8, 3), 2.0)  # out of range: the codec clamps


class FakeImageVAE:
    """Mimics an image VAE (latent_dim 2) that is the identity on pixels: [F,H,W,3] -> [F,3,H,W]."""

    latent_channels = 3

    def spacial_compression_encode(self):
        return 1

    def temporal_compression_decode(self):
        return None

    def encode(self, images):
        return images.permute(0, 3, 1, 2)

    def decode(self, latent):
        return latent.permute(0, 2, 3, 1)


def test_vae_codec_reads_factors_from_a_video_vae():
    vae, reloads = FakeVideoVAE(), []
    codec = CO.VAECodec(vae, after_use=lambda: reloads.append(len(vae.calls)))
    assert (codec.spatial_factor, codec.temporal_factor, codec.latent_channels) == (8, 4, 5)
    z = codec.encode(torch.rand(9, 16, 24, 3))
    assert z.shape == (1, 5, 3, 2, 3)
    frames = codec.decode(z)
    assert frames.shape == (9, 16, 24, 3) and frames.max() == 1.0  # [1,T',H,W,3] -> [T',H,W,3], clamped
    assert reloads == [1, 2]  # the DiT is re-loaded after each VAE call
    assert isinstance(codec, CODEC.Codec)


def test_vae_codec_wraps_image_vaes_frame_by_frame():
    codec = CO.VAECodec(FakeImageVAE())
    assert (codec.spatial_factor, codec.temporal_factor) == (1, 1)
    frames = torch.rand(4, 6, 5, 3)
    z = codec.encode(frames)
    assert z.shape == (1, 3, 4, 6, 5) and torch.equal(z[0, :, 2], frames[2].permute(2, 0, 1))
    assert torch.equal(codec.decode(z), frames)


def test_vae_codec_refuses_objects_that_are_not_vaes():
    with pytest.raises(ValueError, match="has no 'encode'"):
        CO.VAECodec(object())


def test_codec_for_uses_the_pixel_codec_and_refuses_channel_mismatches(model):
    codec = CO.codec_for(model)
    assert isinstance(codec, CODEC.PixelCodec) and codec.spatial_factor == 4
    with pytest.raises(ValueError, match="5-channel latents but the model expects 48"):
        CO.codec_for(model, FakeVideoVAE())
    wan = MODEL.OmniSyncModel(CONFIG.get_preset("tiny").replace(in_channels=16, codec="wan2.1"))
    with pytest.raises(ValueError, match="connect that VAE"):
        CO.codec_for(BACKEND.OmniSyncBackend(wan))


# --------------------------------------------------------------------------------------------- one-node path


class CountingFrames:
    """A frame source that records the slices the pipeline reads."""

    def __init__(self, frames):
        self.frames, self.reads = frames, []

    def __len__(self):
        return self.frames.shape[0]

    def __getitem__(self, item):
        self.reads.append(item.stop - item.start)
        return self.frames[item]


def test_lipsync_fills_a_preallocated_buffer_window_by_window(model):
    frames = _frames(n=9)
    audio = P.AudioInput(waveform=_speech(0.4), sample_rate=16000)
    opts = LS.make_options(0.8, 2, 5, 4, 1, 3.0, 1.0, 0.15, 1.5)
    out = torch.full((9, 32, 32, 3), -1.0)
    source = CountingFrames(frames)
    got = P.lipsync(source, 25.0, audio, model, CODEC.PixelCodec(4), opts, out=out)
    assert got is out and out.min() >= 0.0  # every frame written, in place
    assert max(source.reads) <= 4  # never more than a window of input at once
    want = P.lipsync(frames, 25.0, audio, model, CODEC.PixelCodec(4), opts)
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="output buffer"):
        P.lipsync(frames, 25.0, audio, model, CODEC.PixelCodec(4), opts, out=torch.empty(8, 32, 32, 3))


def test_make_options_names_the_bad_widget():
    with pytest.raises(ValueError, match="w_base"):
        LS.make_options(0.9, 4, 0, 16, 2, 2.0, 3.0, 0.1, 1.5)
    with pytest.raises(ValueError, match="overlap"):
        LS.make_options(0.9, 4, 0, 4, 4, 3.0, 1.0, 0.1, 1.5)


# --------------------------------------------------------------------------------------------- modular path


def test_modular_path_reproduces_the_one_node_path(model):
    """PixelCodec encode -> noise_latent -> sample_latent -> decode == pipeline.lipsync with one window."""
    frames, fps, tau, seed, steps = _frames(n=5), 25.0, 0.7, 11, 3
    wave = _speech(0.3)
    mouth = LOCATE.MouthTrack(torch.tensor([[0.5, 0.7]]).repeat(5, 1), torch.ones(5, dtype=torch.bool),
                              torch.tensor([[0.2, 0.2, 0.8, 0.9]]).repeat(5, 1), torch.ones(5))
    cfg = GUIDE.DSCFG(w_peak=3.0, w_base=1.0, radius=0.2, gamma=1.5)
    codec = CODEC.PixelCodec(4)
    source = {"samples": codec.encode(frames)}
    enc = AU.encode_audio(model, P.AudioInput(waveform=wave, sample_rate=16000), fps, 5)
    noised = LA.noise_latent(source, tau, seed)
    steps_seen = []
    inputs = LA.sampler_inputs(noised, source, enc)
    opts = P.LipSyncOptions(tau=tau, steps=steps, seed=seed, window=16, overlap=2, guidance=cfg)
    latent = LA.sample_latent(model, enc, inputs, steps, opts, mouth, on_step=steps_seen.append)
    assert steps_seen == [1, 2, 3]
    modular = codec.decode(latent["samples"])
    one_node = P.lipsync(frames, fps, P.AudioInput(waveform=wave, sample_rate=16000), model, codec, opts,
                         mouth_centres=mouth.centres, mouth_valid=mouth.valid)
    assert torch.allclose(modular, one_node, atol=1e-6)
    assert not torch.allclose(modular, frames, atol=1e-3)  # the model really changed the frames


def test_sample_latent_pads_odd_latent_sizes(model):
    enc = AU.encode_audio(model, P.AudioInput(waveform=_speech(0.2), sample_rate=16000), 25.0, 2)
    source = {"samples": torch.rand(1, 48, 2, 3, 5) * 2 - 1}  # 3 x 5 latent, patch 2
    noised = LA.noise_latent(source, 0.5, 0)
    out = LA.sample_latent(model, enc, LA.sampler_inputs(noised, source, enc), 1, P.LipSyncOptions(steps=1))
    assert out["samples"].shape == (1, 48, 2, 3, 5) and torch.isfinite(out["samples"]).all()


def test_sampler_inputs_explain_wrong_connections(model):
    enc = AU.encode_audio(model, P.AudioInput(waveform=_speech(0.2), sample_rate=16000), 25.0, 4)
    source = {"samples": torch.zeros(1, 48, 4, 2, 2)}
    with pytest.raises(ValueError, match="OmniSyncNoiseInit"):
        LA.sampler_inputs(source, source, enc)
    noised = LA.noise_latent(source, 0.5, 0)
    with pytest.raises(ValueError, match="differ in shape"):
        LA.sampler_inputs(noised, {"samples": torch.zeros(1, 48, 3, 2, 2)}, enc)
    other = AU.encode_audio(model, P.AudioInput(waveform=_speech(0.2), sample_rate=16000), 25.0, 7)
    with pytest.raises(ValueError, match="frame_count"):
        LA.sampler_inputs(noised, source, other)
    wrong = {"samples": torch.zeros(1, 16, 4, 2, 2)}
    inputs = LA.sampler_inputs(LA.noise_latent(wrong, 0.5, 0), wrong, enc)
    with pytest.raises(ValueError, match="model expects 48"):
        LA.sample_latent(model, enc, inputs, 1, P.LipSyncOptions(steps=1))


def test_locate_track_checks_for_interrupts_per_chunk_and_matches_the_locator():
    frames = _frames(n=130, size=24)
    calls = []
    track = TR.locate_track(frames, lambda: calls.append(1), finder="locator")
    assert len(calls) == -(-130 // LOCATE.LocateOptions().chunk) == 3  # one check per chunk of 64 frames
    want = LOCATE.locate_mouths(frames)
    assert torch.equal(track.centres, want.centres) and torch.equal(track.valid, want.valid)

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    for finder in TR.FINDERS:
        with pytest.raises(Stop):  # an interrupt is never taken for a locator failure
            TR.locate_track(frames, stop, finder=finder)


def test_face_mesh_track_follows_a_drawn_face_and_checks_interrupts_per_chunk():
    from comfy_helpers import talking_clip

    frames, _ = talking_clip(1.6, 25.0, size=128, seed=7)  # 40 frames of a drawn realistic face
    calls = []
    track = TR.locate_track(frames, lambda: calls.append(1), finder="face mesh")
    assert len(calls) == 2  # chunks of 32 frames
    assert len(track) == 40 and bool(track.valid.all())
    locator = LOCATE.locate_mouths(frames)
    assert float((track.centres - locator.centres).abs().max()) < 0.08  # both find the same mouth
    assert bool((track.face_boxes[:, 2] > track.face_boxes[:, 0]).all())  # a face box per frame
    with pytest.raises(ValueError, match="finder"):
        TR.locate_track(frames, finder="magic")
