"""LatentSync from local files: registry detection and refusals (before any tensor is read), the SD VAE through
diffusers, Whisper-tiny features with no jump at 30 s, and `omnisync lipsync --backend latentsync` end to end on tiny
random weights (a synthetic clip and the real talking-head clip cut short)."""

import importlib.util
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omnisync_model.backends import registry
from omnisync_model.backends.latentsync import loading as L
from omnisync_model.backends.latentsync.speech import LatentSyncWhisperBackend
from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.families.latentsync import LatentSyncUNet, get_preset
from omnisync_model.sampling.options import AudioInput

HAVE = {m: importlib.util.find_spec(m) is not None for m in ("transformers", "diffusers")}
needs_transformers = pytest.mark.skipif(not HAVE["transformers"], reason="optional dependency transformers missing")
needs_diffusers = pytest.mark.skipif(not HAVE["diffusers"], reason="optional dependency diffusers missing")
REAL_CLIP = Path("/work/shared/media/talking_head_25fps.mp4")
WHISPER_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=4)  # tiny: width 16


def speech_like(seconds, rate=16000, seed=0):
    """Voiced, syllable-modulated test signal with pauses, float32 [N], peak 0.5."""
    n = int(seconds * rate)
    t = torch.arange(n, dtype=torch.float64) / rate
    f0 = 130.0 + 20.0 * torch.sin(2 * math.pi * 0.3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
    envelope = torch.sin(2 * math.pi * 3.5 * t).clamp(min=0) ** 2 * (torch.sin(2 * math.pi * 0.13 * t) > -0.5)
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wave = voiced * envelope + 0.01 * noise
    return (0.5 * wave / wave.abs().max()).float()


def _sinusoids(length, width):
    scales = torch.exp(-math.log(10000) / (width // 2 - 1) * torch.arange(width // 2))
    t = torch.arange(length)[:, None] * scales[None]  # [L, D/2]
    return torch.cat([t.sin(), t.cos()], dim=1)


def _unet_file(path, config, seed=0):
    torch.manual_seed(seed)
    model = LatentSyncUNet(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, {"format": "latentsync"})
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A --weights folder: tiny LatentSync UNet + tiny random Whisper (width 16, 4 blocks) + tiny SD-layout VAE."""
    folder = tmp_path_factory.mktemp("latentsync")
    _unet_file(folder / L.CHECKPOINT_FILE, get_preset("tiny"))
    if HAVE["transformers"]:
        from omnisync_model.audio_models import build_whisper_encoder

        torch.manual_seed(1)
        enc = build_whisper_encoder(WHISPER_DIMS, device="cpu")
        for p in enc.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.3)
        with torch.no_grad():  # Whisper's fixed sinusoidal positions (smooth in time, as in the real encoder)
            enc.embed_positions.weight.copy_(_sinusoids(WHISPER_DIMS["n_audio_ctx"], WHISPER_DIMS["n_audio_state"]))
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, folder / "whisper_tiny.safetensors",
                  {"whisper_dims": json.dumps(WHISPER_DIMS)})
    if HAVE["diffusers"]:
        from diffusers import AutoencoderKL

        torch.manual_seed(2)
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        vae.save_pretrained(folder / "sd-vae-ft-mse", safe_serialization=True)
    return folder


# --------------------------------------------------------------------------------------------- registry


def _no_tensor_reads(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a tensor was read before the file was refused")

    monkeypatch.setattr("omnisync_model.families.latentsync.loading._read_cast", refuse)


def test_registry_detects_and_loads_latentsync(weights):
    path = weights / L.CHECKPOINT_FILE
    assert registry.detect_family(path).name == "latentsync"
    backend = registry.load_backend(path)
    assert backend.name == "latentsync" and backend.mode == "reference"
    assert backend.crop_rules.resolution == (256, 256) and backend.window_rules.max_window == 24


@pytest.mark.parametrize("change, message", [
    (dict(audio_dim=768, in_channels=4, motion_down=False, motion_up=False, temporal=False, family="musetalk"),
     "SD-1.5 UNet, not LatentSync or MuseTalk: its cross-attention takes text"),
    (dict(in_channels=9), "LatentSync-layout UNet (motion modules) with 9 input channels"),
    (dict(in_channels=4, motion_down=False, motion_up=False, temporal=False, family="musetalk"),
     "SD-1.5 UNet, not LatentSync or MuseTalk: it has 4 input channels"),
])
def test_wrong_unets_are_refused_before_work(tmp_path, monkeypatch, change, message):
    path = _unet_file(tmp_path / "unet.safetensors", get_preset("tiny").replace(**change))
    assert registry.detect_family(path).name == "latentsync"  # claimed, so that the refusal is precise
    _no_tensor_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.load_backend(path)
    with pytest.raises(CheckpointError, match=str(tmp_path).replace("\\", "\\\\")):
        registry.load_for_cli("latentsync", path)


def test_other_families_are_not_claimed(tmp_path):
    omnisync = {"dit.patch_embed.weight": torch.zeros(2, 2), "dit.null_audio": torch.zeros(2)}
    save_file(omnisync, tmp_path / "o.safetensors")
    assert not L.detect({k: (2, 2) for k in ["blocks.0.self_attn.q.weight", "patch_embedding.weight"]}, {})
    assert registry.detect_family(tmp_path / "o.safetensors").name == "omnisync"


def test_folder_without_a_converted_unet_names_the_conversion(tmp_path):
    (tmp_path / "latentsync_unet.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="convert_latentsync"):
        L.find_checkpoint(tmp_path)


@needs_transformers
def test_whisper_is_found_checked_and_refused_when_unconverted(tmp_path, weights):
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "tiny.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="convert_openai_whisper"):
        L.find_whisper(weights, tmp_path)
    from omnisync_model.audio_models import load_whisper_encoder

    encoder = load_whisper_encoder(L.find_whisper(weights, None))
    L.check_whisper(encoder, 16)
    with pytest.raises(CheckpointError, match="needs Whisper tiny"):
        L.check_whisper(encoder, 384)


# --------------------------------------------------------------------------------------------- SD VAE


@needs_diffusers
def test_sd_vae_folder_and_single_file(tmp_path, weights):
    from diffusers import AutoencoderKL

    from omnisync_model.media.sd_vae import load_sd_vae

    codec = load_sd_vae(weights / "sd-vae-ft-mse")
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (4, 8, 1)
    frames = torch.rand(3, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    latent = codec.encode(frames)
    assert latent.shape == (1, 4, 3, 4, 6) and codec.decode(latent).shape == (3, 32, 48, 3)
    # a single file with diffusers names (GroupNorm 32, as every released SD VAE) gives the same latents as
    # diffusers itself
    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4).eval()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "vae.safetensors")
    single = load_sd_vae(tmp_path / "vae.safetensors")
    with torch.no_grad():
        want = vae.encode(frames.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()  # [F,4,h,w]
    torch.testing.assert_close(single.encode(frames)[0].permute(1, 0, 2, 3), want, atol=1e-5, rtol=0)


@needs_diffusers
def test_vae_of_another_family_is_refused_before_work(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from omnisync_model.media import sd_vae

    flux = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=16,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    save_file({k: v.contiguous() for k, v in flux.state_dict().items()}, tmp_path / "flux.safetensors")
    wan = tmp_path / "wan"
    wan.mkdir()
    (wan / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 48}))
    (wan / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setattr(sd_vae, "read_tensors", lambda *_: pytest.fail("tensors read before the refusal"))
    with pytest.raises(CheckpointError, match="16-channel latents.*not a VAE of another family"):
        sd_vae.load_sd_vae(tmp_path / "flux.safetensors")
    with pytest.raises(CheckpointError, match="AutoencoderKLWan config"):
        sd_vae.check_sd_vae_path(wan)


def test_missing_diffusers_names_the_install(monkeypatch, tmp_path):
    from omnisync_model.media import sd_vae

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match="pip install diffusers"):
        sd_vae._require_diffusers()


# --------------------------------------------------------------------------------------------- audio


def _per_frame_jumps(encoder, chunking, wave, fps=25.0):
    backend = LatentSyncWhisperBackend(LatentSyncUNet(get_preset("tiny"))).with_speech(encoder, chunking)
    cond = backend.audio_condition(AudioInput(waveform=wave[None], sample_rate=16000), fps, backend.default_options())
    n = int(wave.shape[-1] / 16000 * fps)
    feats = cond.window(0, n, 1).flatten(1)  # [n, 50 * 16]: what each frame's UNet call receives
    return (feats[1:] - feats[:-1]).norm(dim=-1)  # [n - 1]


def steady_vowel(seconds, rate=16000, seed=0):
    """A held vowel (slow pitch and loudness wobble, a little noise): the features change slowly and evenly, so a
    chunk boundary stands out."""
    n = int(seconds * rate)
    t = torch.arange(n, dtype=torch.float64) / rate
    phase = 2 * math.pi * torch.cumsum(130 + 10 * torch.sin(2 * math.pi * 0.5 * t), 0) / rate
    wave = sum(torch.sin(k * phase) / k for k in range(1, 8)) * (0.8 + 0.2 * torch.sin(2 * math.pi * 2 * t))
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.4 * wave / wave.abs().max() + 0.005 * noise).float()


@needs_transformers
def test_no_feature_jump_at_30_seconds(weights):
    from omnisync_model.audio_models import load_whisper_encoder

    encoder = load_whisper_encoder(weights / "whisper_tiny.safetensors")
    wave = steady_vowel(34.0)
    at, before = slice(745, 756), slice(600, 740)  # frames whose 10-step windows hold step 1500 (30 s) at 25 fps
    ref = _per_frame_jumps(encoder, "reference", wave)
    ours = _per_frame_jumps(encoder, "overlap", wave)
    assert ref[at].max() > 1.3 * ref[before].max()  # the reference's 30 s chunks do jump at 30 s ...
    assert ours[at].max() < ours[before].max()  # ... the default (overlap) does not
    assert L.CHUNKINGS[0] == "overlap" and LatentSyncWhisperBackend.chunking == "overlap"
    with pytest.raises(ValueError, match="chunking"):
        L.whisper_feature_fn(encoder, "none")


class HostSpeech:
    """What ComfyUI's audio-model loader hands over (duck-typed XDubSpeech): encoders + memory-manager hooks."""

    def __init__(self, whisper):
        self.whisper, self.wav2vec2, self.calls = whisper, None, []
        self.prepare = lambda: self.calls.append("prepare") or "cpu"
        self.release = lambda: self.calls.append("release")


@needs_transformers
def test_with_speech_takes_the_hosts_whisper(weights):
    from omnisync_model.audio_models import (
        latentsync_whisper_features,
        load_whisper_encoder,
    )

    encoder = load_whisper_encoder(weights / "whisper_tiny.safetensors")
    backend = registry.load_backend(weights / L.CHECKPOINT_FILE)
    assert backend.encode is None
    host = HostSpeech(encoder)
    run = backend.with_speech(host)
    assert backend.encode is None and run.model is backend.model  # a copy for the run, same weights
    wave = steady_vowel(2.0)
    cond = run.audio_condition(AudioInput(waveform=wave[None], sample_rate=16000), 25.0, run.default_options())
    torch.testing.assert_close(cond.features, latentsync_whisper_features(encoder, wave, "overlap"))
    assert host.calls == ["prepare", "release"]
    with pytest.raises(CheckpointError, match="needs Whisper tiny"):
        LatentSyncWhisperBackend(LatentSyncUNet(get_preset("tiny").replace(audio_dim=32))).with_speech(host)


# --------------------------------------------------------------------------------------------- command line


class RecordingWriter:
    """Wraps VideoWriter: keeps the frames handed to the encoder (what 'bit-exact before encoding' is about)."""

    def __init__(self, real, frames):
        self.real, self.frames = real, frames

    def __enter__(self):
        self.real.__enter__()
        return self

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)

    def write(self, frames, **kwargs):
        self.frames.append(frames.clone())
        self.real.write(frames, **kwargs)


def _run_cli(monkeypatch, weights, video, audio, out, *extra):
    from omnisync_model.cli.main import main
    from omnisync_model.media import lipsync_file as LF

    written, boxes = [], []
    real_writer, real_boxes = LF.VideoWriter, LF.plan_boxes
    monkeypatch.setattr(LF, "VideoWriter", lambda *a, **k: RecordingWriter(real_writer(*a, **k), written))
    monkeypatch.setattr(LF, "plan_boxes", lambda *a: boxes.append(real_boxes(*a)) or boxes[-1])
    rc = main(["lipsync", "--backend", "latentsync", "--weights", str(weights), "--audio-models", str(weights),
               "--vae", str(weights / "sd-vae-ft-mse"), "--video", str(video), "--audio", str(audio), "--out",
               str(out), "--size", "64", "--steps", "2", "--quiet", *extra])
    assert rc == 0
    return torch.cat(written), boxes[0]


def _outside_exact(written, source, boxes):
    for i in range(source.shape[0]):
        x, y, w, h = (int(v) for v in boxes[i].tolist())
        outside = torch.ones(source.shape[1:3], dtype=torch.bool)
        outside[y:y + h, x:x + w] = False
        assert torch.equal(written[i][outside], source[i][outside]), f"frame {i}: pixels outside the face changed"
        assert not torch.equal(written[i], source[i])  # and the face region was rewritten


@needs_transformers
@needs_diffusers
def test_cli_lipsync_latentsync_on_a_synthetic_clip(tmp_path, monkeypatch, weights):
    from omnisync_model.media.video_io import VideoWriter, probe_video, read_video

    fps = Fraction(30000, 1001)
    frames = torch.rand(20, 96, 96, 3, generator=torch.Generator().manual_seed(0))
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    with VideoWriter(video, fps, 96, 96, audio=(speech_like(1.0)[None], 16000)) as w:
        w.write(frames)
    written, boxes = _run_cli(monkeypatch, weights, video, video, out, "--box", "16,16,64,64", "--blend", "box")
    source = read_video(video).frames
    info = probe_video(out)
    assert info.n_frames == 20 and info.fps == fps and written.shape == source.shape
    _outside_exact(written, source, boxes)


@needs_transformers
@needs_diffusers
@pytest.mark.skipif(not REAL_CLIP.is_file(), reason="shared talking-head clip not available")
def test_cli_lipsync_latentsync_on_the_real_clip_cut_short(tmp_path, monkeypatch, weights):
    from omnisync_model.media.regions import resize
    from omnisync_model.media.video_io import (
        VideoWriter,
        iter_video_frames,
        probe_video,
        read_audio,
        read_video,
    )

    head = resize(next(iter_video_frames(REAL_CLIP, 18, max_frames=18)), (480, 270))  # 18 frames, 1/4 size
    wave, sr = read_audio(REAL_CLIP)
    video, out = tmp_path / "short.mp4", tmp_path / "out.mp4"
    with VideoWriter(video, 25, 270, 480, audio=(wave[:, : int(18 / 25 * sr)], sr)) as w:
        w.write(head)
    written, boxes = _run_cli(monkeypatch, weights, video, video, out, "--box", "auto")
    source = read_video(video).frames
    info = probe_video(out)
    assert info.n_frames == 18 and info.fps == 25 and (info.width, info.height) == (270, 480)
    _outside_exact(written, source, boxes)


@needs_transformers
@needs_diffusers
def test_cli_lipsync_musetalk_one_step(tmp_path, monkeypatch, weights):
    """A folder holding a MuseTalk UNet runs through the same command (--backend latentsync, or auto on the file)."""
    from omnisync_model.media.video_io import VideoWriter, probe_video, read_video

    folder = tmp_path / "musetalk"
    folder.mkdir()
    golden = Path(__file__).resolve().parent / "golden" / "latentsync" / "musetalk_tiny_unet.safetensors"
    (folder / L.MUSETALK_FILE).write_bytes(golden.read_bytes())
    (folder / "whisper_tiny.safetensors").symlink_to(weights / "whisper_tiny.safetensors")
    (folder / "sd-vae-ft-mse").symlink_to(weights / "sd-vae-ft-mse", target_is_directory=True)
    frames = torch.rand(5, 96, 96, 3, generator=torch.Generator().manual_seed(1))
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    with VideoWriter(video, 25, 96, 96, audio=(speech_like(0.2)[None], 16000)) as w:
        w.write(frames)
    written, boxes = _run_cli(monkeypatch, folder, video, video, out, "--box", "16,16,64,64", "--blend", "box")
    assert probe_video(out).n_frames == 5
    _outside_exact(written, read_video(video).frames, boxes)
