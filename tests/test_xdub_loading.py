"""X-Dub's plumbing outside the model: the Wan2.2 latent normalisation, the diffusers VAE codec, the umt5 context
converter, the speech encoders attached to the backend, the registry entry, fp8 weights, and the node adapters."""

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_helpers import pack_module
from omnisync_model.backends.registry import detect_family, load_backend
from omnisync_model.backends.xdub import loading
from omnisync_model.backends.xdub.codec import (WAN22_LATENT_MEAN, WAN22_LATENT_STD, XDubLatentCodec,
                                                check_wan22_codec)
from omnisync_model.backends.xdub.context import (context_from_conditioning, load_context, make_xdub_context,
                                                  save_context)
from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.sampling.options import AudioInput
from xdub_helpers import TINY_VAE, write_audio_models, write_context, write_vae, write_xdub

transformers = pytest.importorskip("transformers")


class RawCodec:
    """Latent = a fixed function of the frames, 48 channels at 16x / 4x (the Wan2.2 VAE's contract)."""

    latent_channels, spatial_factor, temporal_factor = 48, 16, 4

    def encode(self, frames):
        t = 1 + (frames.shape[0] - 1) // 4
        h, w = frames.shape[1] // 16, frames.shape[2] // 16
        base = frames.mean() * torch.arange(48.0).view(1, 48, 1, 1, 1)
        return base.expand(1, 48, t, h, w).clone()

    def decode(self, latent):
        t = 1 + (latent.shape[2] - 1) * 4
        return torch.full((t, latent.shape[3] * 16, latent.shape[4] * 16, 3), float(latent[0, 1].mean()))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xdub_files")
    write_context(folder / "xdub_context.safetensors")
    return write_xdub(folder / "X-Dub_model.safetensors")


# --------------------------------------------------------------------------------------------- latents


def test_normalisation_is_the_reference_formula():
    codec = XDubLatentCodec(RawCodec())
    mu = torch.randn(1, 48, 2, 3, 3)
    mean = torch.tensor(WAN22_LATENT_MEAN).view(1, 48, 1, 1, 1)
    scale = 1.0 / torch.tensor(WAN22_LATENT_STD).view(1, 48, 1, 1, 1)
    assert torch.equal(codec.normalise(mu), (mu - mean) * scale)  # wan_video_vae.py: (mu - mean) * (1 / std)
    assert torch.equal(codec.denormalise(mu), mu / scale + mean)  # z / (1 / std) + mean
    assert torch.allclose(codec.denormalise(codec.normalise(mu)), mu, atol=1e-6)
    frames = torch.rand(5, 32, 32, 3)
    assert torch.equal(codec.encode(frames), codec.normalise(RawCodec().encode(frames)))
    assert len(WAN22_LATENT_MEAN) == len(WAN22_LATENT_STD) == 48 and min(WAN22_LATENT_STD) > 0


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH not set")
def test_statistics_equal_comfyui_wan22_latent_format():
    text = (Path(os.environ["COMFYUI_PATH"]) / "comfy" / "latent_formats.py").read_text()
    body = text[text.index("class Wan22(Wan21)"):]
    lists = re.findall(r"torch\.tensor\(\[([^\]]*)\]", body)[:2]
    mean, std = ([float(x) for x in part.replace("\n", " ").split(",") if x.strip()] for part in lists)
    assert tuple(mean) == WAN22_LATENT_MEAN and tuple(std) == WAN22_LATENT_STD


def test_backend_wraps_and_checks_the_vae(ckpt):
    backend = load_backend(ckpt)
    codec = backend.prepare_codec(RawCodec())
    assert isinstance(codec, XDubLatentCodec) and backend.prepare_codec(codec) is codec  # never wrapped twice

    class Wan21(RawCodec):
        latent_channels, spatial_factor = 16, 8

    with pytest.raises(ValueError, match="16-channel.*Wan 2.1"):
        backend.prepare_codec(Wan21())

    class Spatial8(RawCodec):
        spatial_factor = 8

    with pytest.raises(ValueError, match="8x spatial"):
        check_wan22_codec(Spatial8())


def test_diffusers_codec_contract(tmp_path):
    from omnisync_model.media.diffusers_vae import load_diffusers_vae

    pytest.importorskip("diffusers")
    folder = write_vae(tmp_path / "vae")
    codec = load_diffusers_vae(folder, channels=48)
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (48, 16, 4)
    frames = torch.rand(9, 32, 48, 3)
    z = codec.encode(frames)
    assert z.shape == (1, 48, 3, 2, 3)
    with torch.no_grad():
        want = codec.vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mean  # mu, never a sample
    assert torch.equal(z, want)
    out = codec.decode(z)
    assert out.shape == (9, 32, 48, 3) and 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(CheckpointError, match="48"):
        load_diffusers_vae(folder, channels=16)
    assert TINY_VAE["z_dim"] == 48


def test_original_layout_vae_equals_the_reference():
    """X-Dub's own VideoVAE38_ (tiny width, random weights: golden) and our renamed diffusers AutoencoderKLWan give
    the same normalised latents and decoded frames."""
    from safetensors.torch import load_file

    from omnisync_model.media.diffusers_vae import (DiffusersVAECodec, wan22_config_from_shapes,
                                                    wan22_to_diffusers_keys)

    diffusers = pytest.importorskip("diffusers")
    gold = load_file(Path(__file__).resolve().parent / "golden" / "xdub" / "wan22_vae_tiny.safetensors")
    state = {k[len("model."):]: v for k, v in gold.items() if k.startswith("model.")}
    config = wan22_config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    vae = diffusers.AutoencoderKLWan(**config).eval()
    names = wan22_to_diffusers_keys(state)
    vae.load_state_dict({names[k]: v for k, v in state.items()}, strict=True)
    codec = XDubLatentCodec(DiffusersVAECodec(vae))
    frames = (gold["x"][0].permute(1, 2, 3, 0) + 1) / 2  # [1,3,F,H,W] -1..1 -> [F,H,W,3] 0..1
    assert torch.allclose(codec.encode(frames), gold["mu"], atol=1e-5)
    decoded = (gold["decoded"][0].permute(1, 2, 3, 0) + 1) / 2
    assert torch.allclose(codec.decode(gold["mu"]), decoded, atol=1e-5)


def test_full_size_vae_keys_and_config():
    import json

    from omnisync_model.media.diffusers_vae import WAN22_VAE_CONFIG, wan22_config_from_shapes, wan22_to_diffusers_keys

    diffusers = pytest.importorskip("diffusers")
    ref = json.loads((Path(__file__).resolve().parent / "golden" / "xdub" / "wan22_vae_keys.json").read_text())
    config = wan22_config_from_shapes({k: tuple(v) for k, v in ref.items()})
    assert config == WAN22_VAE_CONFIG  # the Wan2.2-TI2V-5B-Diffusers vae config
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in diffusers.AutoencoderKLWan(**config).state_dict().items()}
    names = wan22_to_diffusers_keys(ref)
    assert {names[k]: tuple(v) for k, v in ref.items()} == want  # all 196 names and shapes
    with pytest.raises(CheckpointError, match="not Wan2.2 VAE keys"):
        wan22_to_diffusers_keys(["encoder.extra.weight"])


# --------------------------------------------------------------------------------------------- context


def _tiny_umt5():
    config = transformers.UMT5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, relative_attention_max_distance=128,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    torch.manual_seed(0)
    return transformers.UMT5EncoderModel(config).eval(), config


def test_context_from_a_umt5_folder_and_file(tmp_path):
    model, _ = _tiny_umt5()
    with torch.no_grad():
        ids = torch.zeros(1, 12, dtype=torch.long)  # "" padded as the reference tokenizer pads: [</s>, pad ...]
        ids[0, 0] = 1
        mask = torch.zeros_like(ids)
        mask[0, 0] = 1
        padded = model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]  # rows past zeroed
    model.save_pretrained(tmp_path / "umt5", safe_serialization=True)
    ctx = load_context(make_xdub_context(tmp_path / "umt5", tmp_path / "a.safetensors"), 16)
    assert ctx.shape == (1, 1, 16)
    assert torch.allclose(ctx[0, 0], padded[0, 0], atol=1e-6) and not padded[0, 1:].any()
    single = tmp_path / "umt5_single.safetensors"  # one file, Hugging Face T5 names (as ComfyUI's umt5 file)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(single))
    assert torch.equal(load_context(make_xdub_context(single, tmp_path / "b.safetensors"), 16), ctx)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({"scaled_fp8": torch.zeros(1), **state}, str(tmp_path / "fp8.safetensors"))
    with pytest.raises(CheckpointError, match="scaled-fp8"):
        make_xdub_context(tmp_path / "fp8.safetensors", tmp_path / "c.safetensors")


def test_context_file_and_conditioning_checks(tmp_path):
    path = save_context(torch.cat([torch.ones(1, 1, 8), torch.zeros(1, 511, 8)], dim=1), tmp_path / "c.safetensors")
    assert load_context(path, 8).shape == (1, 1, 8)  # trailing zero rows dropped; pad_context restores them
    with pytest.raises(CheckpointError, match=r"\[L, 16\]"):
        load_context(path, 16)
    cond = [[torch.randn(1, 512, 8), {"pooled_output": None}]]
    assert torch.equal(context_from_conditioning(cond, 8), cond[0][0])
    with pytest.raises(ValueError, match="umt5"):
        context_from_conditioning([[torch.randn(1, 77, 768), {}]], 8)


def test_missing_context_is_refused_before_loading(tmp_path, ckpt, monkeypatch):
    lone = tmp_path / "X-Dub_model.safetensors"
    lone.write_bytes(ckpt.read_bytes())
    monkeypatch.setattr(loading, "load_xdub", lambda *a, **k: pytest.fail("weights read before the refusal"))
    with pytest.raises(CheckpointError, match="xdub_context.safetensors"):
        loading.load(lone)


# --------------------------------------------------------------------------------------------- registry, fp8


def test_registry_detects_and_loads_xdub(ckpt):
    assert detect_family(ckpt).name == "xdub"
    backend = load_backend(ckpt, dtype=torch.float32)
    assert backend.name == "xdub" and backend.context.shape == (1, 512, 32)
    assert backend.config.in_channels == 48 and backend.speech is None


def test_fp8_weights_run(ckpt):
    backend = loading.load(ckpt, dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    lin = backend.model.blocks[0].self_attn.q.weight
    assert lin.dtype == torch.float8_e4m3fn and backend.model.patch_embedding.weight.dtype == torch.bfloat16
    from omnisync_model.families.xdub import xdub_forward

    x = torch.randn(1, 48, 2, 2, 2)
    out = xdub_forward(backend.model, x.bfloat16(), 500.0, backend.context.bfloat16())
    ref = loading.load(ckpt, dtype=torch.float32)
    want = xdub_forward(ref.model, x, 500.0, ref.context)
    assert out.shape == want.shape and torch.isfinite(out).all()
    assert float((out.float() - want).abs().mean()) < 0.1 * float(want.abs().mean())  # fp8 rounding only


# --------------------------------------------------------------------------------------------- speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    from omnisync_model.backends.xdub.speech import load_speech

    folder = write_audio_models(tmp_path_factory.mktemp("audio_models"))
    return load_speech(folder / "whisper" / "large-v2.safetensors", folder / "wav2vec2-base-960h")


def test_speech_features_from_any_waveform(speech):
    from omnisync_model.audio_models import xdub_audio_features
    from omnisync_model.core.audio import prepare_audio

    t = torch.arange(44100) / 44100
    stereo = torch.stack([torch.sin(2 * torch.pi * 200 * t), 0.5 * torch.sin(2 * torch.pi * 300 * t)]) * 0.3
    out = speech.audio_input(AudioInput(waveform=stereo, sample_rate=44100))
    want = xdub_audio_features(speech.whisper, speech.wav2vec2, prepare_audio(stereo, 44100))
    assert out.feature_rate == 50.0 and torch.equal(out.features, want) and want.shape == (50, 48)
    feats = AudioInput(features=torch.zeros(10, 48))
    assert speech.audio_input(feats) is feats  # precomputed features pass through


def test_backend_encodes_waveforms_with_its_speech(ckpt, speech):
    backend = load_backend(ckpt, dtype=torch.float32)
    t = torch.arange(16000) / 16000
    wave = AudioInput(waveform=(0.3 * torch.sin(2 * torch.pi * 180 * t))[None], sample_rate=16000)
    with pytest.raises(ValueError, match="Audio Model Loader"):
        backend.audio_condition(wave, 25.0, backend.default_options())
    with_speech = backend.with_speech(speech)
    assert with_speech.model is backend.model and backend.speech is None  # a copy: the cached backend unchanged
    cond = with_speech.audio_condition(wave, 25.0, backend.default_options())
    assert cond.features.shape == (50, 48)
    assert cond.window(0, 9, 4).shape == (1, 3, 8, 48)
    class FullSize:
        width = 2048  # large-v2 + base-960h, for a model that takes 48

    with pytest.raises(ValueError, match="2048 features"):
        backend.with_speech(FullSize())


def test_node_adapters_attach_speech_and_model_defaults(ckpt, speech):
    AM = pack_module("nodes.adapters.audio_models")
    LS = pack_module("nodes.adapters.lipsync")
    OS = pack_module("omnisync_model.backends.omnisync")
    W = pack_module("omnisync_model.families.omnisync.weights")
    backend = pack_module("omnisync_model.backends.registry").load_backend(ckpt)
    models = AM.AudioModels(speech, "whisper.safetensors", "wav2vec2")
    prepared = []
    hooks = LS.NodeHooks(prepare=lambda tokens: prepared.append(tokens) or backend)
    run, run_hooks = AM.attach_audio_models(backend, hooks, models)
    assert run.speech is speech and run_hooks.prepare(7).speech is speech and prepared == [7]
    assert AM.attach_audio_models(backend, hooks, None) == (backend, hooks)
    opts = AM.model_defaults(LS.make_options(1.0, 50, 0, 77, 5, 2.5, 1.0, 0.15, 1.5), backend)
    assert (opts.shift, opts.stitch, opts.steps, opts.window) == (5.0, "continue", 50, 77)
    demo = W.default_checkpoint()
    if demo is not None:
        omni = OS.OmniSyncBackend(W.load_checkpoint(demo))
        with pytest.raises(ValueError, match="X-Dub"):
            AM.attach_audio_models(omni, hooks, models)
        same = AM.model_defaults(LS.make_options(0.92, 20, 0, 16, 2, 2.5, 1.0, 0.15, 1.5), omni)
        assert same == LS.make_options(0.92, 20, 0, 16, 2, 2.5, 1.0, 0.15, 1.5)  # OmniSync runs unchanged


# --------------------------------------------------------------------------------------------- the workflow


def test_xdub_workflow_file_is_complete():
    import json

    from comfy_helpers import WORKFLOWS

    wf = json.loads((WORKFLOWS / "lipsync_xdub.json").read_text())
    assert wf["version"] == 0.4 and wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
    assert wf["last_link_id"] == max(link[0] for link in wf["links"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id and out["type"] == kind == inp["type"]
    types = [n["type"] for n in wf["nodes"]]
    for needed in ("LoadVideo", "LoadAudio", "OmniSyncModelLoader", "VAELoader", "OmniSyncAudioModelLoader",
                   "OmniSyncLipSyncVideo", "SaveVideo", "Note"):
        assert types.count(needed) == 1, needed
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]]  # 30 px title bar above each body
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"nodes overlap: {a} {b}"
    note = nodes[1]["widgets_values"][0]
    for fact in ("KlingTeam/X-Dub", "X-Dub_model.safetensors", "Wan2.2_VAE", "large-v2.pt",
                 "facebook/wav2vec2-base-960h", "models/omnisync", "models/vae", "models/audio_encoders",
                 "convert_openai_whisper", "make_xdub_context", "academic research and technical demonstration",
                 "no licence file", "What to change"):
        assert fact.lower() in note.lower(), fact
    names = {n["type"]: n["widgets_values"] for n in wf["nodes"]}
    assert names["OmniSyncModelLoader"][0] == "X-Dub_model.safetensors"
    assert names["VAELoader"] == ["Wan2.2_VAE.safetensors"]


def test_image_node_path_with_a_comfy_style_vae(tmp_path, ckpt, speech):
    """OmniSyncLipSync's adapter with X-Dub: a ComfyUI-style video VAE (raw Wan2.2-contract latents through
    VAECodec), the speech encoders attached, the model's own sampler defaults; every frame back, audio fitted."""
    from omnisync_model.media.diffusers_vae import load_diffusers_vae

    pytest.importorskip("diffusers")
    AM = pack_module("nodes.adapters.audio_models")
    LS = pack_module("nodes.adapters.lipsync")
    raw = load_diffusers_vae(write_vae(tmp_path / "vae"), channels=48)

    class ComfyVAE:  # what core VAELoader gives for a Wan2.2 VAE: raw latents, 16x / 4x read from the VAE
        latent_dim, latent_channels = 3, 48

        def spacial_compression_encode(self):
            return 16

        def temporal_compression_decode(self):
            return 4

        def encode(self, frames):
            return raw.encode(frames)

        def decode(self, latent):
            return raw.decode(latent)[None]  # [1,T',H,W,3]

    backend = pack_module("omnisync_model.backends.registry").load_backend(ckpt)
    models = AM.AudioModels(speech, "w", "v")
    run, hooks = AM.attach_audio_models(backend, LS.NodeHooks(), models)
    options = AM.model_defaults(LS.make_options(1.0, 2, 0, 77, 5, 2.5, 1.0, 0.15, 1.5), run)
    images = torch.rand(7, 32, 32, 3)
    t = torch.arange(12000) / 16000
    audio = {"waveform": (0.3 * torch.sin(2 * torch.pi * 200 * t))[None, None], "sample_rate": 16000}
    out, fitted = LS.lipsync_images(run, images, 25.0, audio, options, vae=ComfyVAE(), hooks=hooks)
    assert out.shape == images.shape and torch.isfinite(out).all() and not torch.equal(out, images)
    assert fitted["waveform"].shape[-1] == 7 * 16000 // 25
