"""X-Dub end to end on the command line with tiny random weights (tests/xdub_helpers.py): `omnisync lipsync
--backend xdub --weights DIR` on a synthetic clip and on the real clip in ../shared/media (cut to a few frames);
every frame kept, the fps kept, the frames handed to the encoder bit-exact outside the face box, the speech encoded
from the waveform by the two speech encoders; and the bad inputs refused, naming the file, before any loading."""

import math
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import omnisync_model.media.lipsync_file as LF
from conftest import MEDIA
from omnisync_model.cli.main import main
from omnisync_model.media.video_io import VideoWriter, iter_video_frames, probe_video, read_audio
from xdub_helpers import WAN21_VAE, write_bundle, write_vae

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

CLIP, SPEECH = MEDIA / "talking_head_25fps.mp4", MEDIA / "speech_16k.wav"
GOLDEN = Path(__file__).resolve().parent / "golden" / "xdub"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("xdub") / "weights")


class Recorder(VideoWriter):
    """The writer the CLI uses, keeping every frame handed to the encoder."""

    frames: list = []  # noqa: RUF012 (reset by the fixture for every test)

    def write(self, frames, *args, **kwargs):
        Recorder.frames.append(frames.clone())
        return super().write(frames, *args, **kwargs)


@pytest.fixture
def recorded(monkeypatch):
    Recorder.frames = []
    boxes = []
    plan = LF.plan_boxes

    def plan_and_keep(*args, **kwargs):
        out = plan(*args, **kwargs)
        boxes.append(out)
        return out

    monkeypatch.setattr(LF, "VideoWriter", Recorder)
    monkeypatch.setattr(LF, "plan_boxes", plan_and_keep)
    return boxes


@pytest.fixture
def features_seen(monkeypatch):
    """Count the waveform -> X-Dub feature encodings (the backend's own speech encoders)."""
    from omnisync_model.backends.xdub import speech

    calls = []
    original = speech.XDubSpeech.features

    def features(self, waveform, sample_rate):
        out = original(self, waveform, sample_rate)
        calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(speech.XDubSpeech, "features", features)
    return calls


def _clip(path, n, fps, width=80, height=48, seconds=None):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(n, height, width, 3, generator=g)
    t = torch.arange(int((seconds or n / float(fps)) * 16000)) / 16000
    audio = (0.3 * torch.sin(2 * math.pi * 220 * t) * torch.sin(2 * math.pi * 3 * t))[None]
    with VideoWriter(path, fps, width, height, audio=(audio, 16000)) as w:
        w.write(frames)
    return path


def _outside_exact(source_path, boxes):
    src = torch.cat(list(iter_video_frames(source_path, 16)))
    out = torch.cat(Recorder.frames)
    assert out.shape == src.shape, "every frame goes to the encoder, full size"
    changed = 0
    for i in range(src.shape[0]):
        x, y, w, h = boxes[i].tolist()
        outside = torch.ones(src.shape[1:3], dtype=torch.bool)
        outside[y:y + h, x:x + w] = False
        assert torch.equal(out[i][outside], src[i][outside]), f"frame {i}: pixels outside the box changed"
        changed += int(not torch.equal(out[i], src[i]))
    return changed


def _lipsync(video, audio, out, weights, *extra):
    return main(["lipsync", "--video", str(video), "--audio", str(audio), "--out", str(out), "--weights",
                 str(weights), "--backend", "xdub", "--steps", "2", "--quiet", *extra])


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_cli_synthetic_clip(tmp_path, bundle, recorded, features_seen, fps):
    video, speech, out = tmp_path / "in.mp4", tmp_path / "speech.mp4", tmp_path / "out.mp4"
    _clip(video, 11, fps)
    _clip(speech, 40, Fraction(25), seconds=1.6)  # longer than the video: trimmed
    assert _lipsync(video, speech, out, bundle, "--box", "16,0,48,48", "--size", "32", "--blend", "box") == 0
    info = probe_video(out)
    assert (info.n_frames, info.fps, info.width, info.height) == (11, fps, 80, 48)
    wave, rate = read_audio(out)
    assert abs(wave.shape[-1] / rate - 11 / float(fps)) < 1100 / rate
    assert _outside_exact(video, recorded[0]) == 11  # the box really was re-synthesised, every frame
    assert len(features_seen) == 1 and features_seen[0][1] == 48  # one encoding of the whole waveform, 32 + 16 wide


def test_cli_two_windows_continue_from_motion_frames(tmp_path, bundle, recorded):
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    _clip(video, 23, Fraction(24))
    rc = _lipsync(video, video, out, bundle, "--box", "16,0,48,48", "--size", "32", "--window", "13", "--overlap",
                  "5", "--stitch", "continue")
    assert rc == 0 and probe_video(out).n_frames == 23
    _outside_exact(video, recorded[0])


@pytest.mark.skipif(not CLIP.is_file() or not SPEECH.is_file(), reason="../shared/media is not present")
def test_cli_real_clip(tmp_path, bundle, recorded):
    info = probe_video(CLIP)
    cut = tmp_path / "cut.mp4"
    frames = next(iter_video_frames(CLIP, 9))[:9]  # the first 9 frames (0.36 s), full 1080x1920
    with VideoWriter(cut, info.fps, info.width, info.height) as w:
        w.write(frames)
    out = tmp_path / "out.mp4"
    assert _lipsync(cut, SPEECH, out, bundle, "--box", "auto", "--size", "64") == 0
    got = probe_video(out)
    assert (got.n_frames, got.fps, got.width, got.height) == (9, info.fps, info.width, info.height)
    boxes = recorded[0]
    assert 0 < int(boxes[0, 2]) < info.width and 0 < int(boxes[0, 3]) < info.height  # a face box
    _outside_exact(cut, boxes)


# --------------------------------------------------------------------------------------------- refusals


@pytest.fixture
def no_loading(monkeypatch):
    """Any weight loading fails the test: refusals must come before."""
    from omnisync_model.backends.xdub import loading, speech
    from omnisync_model.media import diffusers_vae

    def boom(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(loading, "load_xdub", boom)
    monkeypatch.setattr(speech, "load_speech", boom)
    monkeypatch.setattr(diffusers_vae, "load_diffusers_vae", boom)


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "w")


def _refused(tmp_path, weights, capsys, *extra):
    video = _clip(tmp_path / "in.mp4", 5, Fraction(25))
    out = tmp_path / "out.mp4"
    assert _lipsync(video, video, out, weights, *extra) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_refuses_plain_wan22_checkpoint(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    ckpt = w / "X-Dub_model.safetensors"
    state = {k: v for k, v in load_file(ckpt).items() if "audio" not in k}  # Wan2.2-TI2V-5B: no audio layers
    save_file(state, str(ckpt))
    err = _refused(tmp_path, ckpt, capsys)
    assert str(ckpt) in err and "plain Wan DiT" in err and "audio" in err


def test_refuses_truncated_checkpoint(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    ckpt = w / "X-Dub_model.safetensors"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) - 1000])
    err = _refused(tmp_path, ckpt, capsys)
    assert str(ckpt) in err and "trunc" in err.lower()


def test_refuses_wan21_vae(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    shutil.rmtree(w / "Wan2.2_VAE")
    write_vae(w / "Wan2.2_VAE", WAN21_VAE)
    err = _refused(tmp_path, w, capsys)
    assert str(w / "Wan2.2_VAE") in err and "16-channel" in err and "Wan 2.1" in err


def test_refuses_original_layout_wan21_vae_file(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    fake = w / "Wan2.1_VAE.safetensors"
    save_file({"encoder.downsamples.0.residual.0.gamma": torch.ones(8, 1, 1, 1), "conv2.weight": torch.ones(16, 16)},
              str(fake))
    err = _refused(tmp_path, w, capsys, "--vae", str(fake))
    assert str(fake) in err and "Wan 2.1 VAE (16-channel" in err


def test_runs_with_the_vae_file_as_xdub_ships_it(tmp_path, bundle, recorded):
    """Wan2.2_VAE.safetensors in Wan's own key layout (here X-Dub's VideoVAE38_ at a tiny width) next to the DiT."""
    from safetensors.torch import load_file

    w = _copy(bundle, tmp_path)
    shutil.rmtree(w / "Wan2.2_VAE")
    golden = load_file(GOLDEN / "wan22_vae_tiny.safetensors")
    save_file({k[len("model."):]: v for k, v in golden.items() if k.startswith("model.")},
              str(w / "Wan2.2_VAE.safetensors"))
    video, out = _clip(tmp_path / "in.mp4", 9, Fraction(25)), tmp_path / "out.mp4"
    assert _lipsync(video, video, out, w, "--box", "16,0,48,48", "--size", "32") == 0
    assert probe_video(out).n_frames == 9
    _outside_exact(video, recorded[0])


def test_refuses_missing_audio_models(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    shutil.rmtree(w / "wav2vec2-base-960h")
    err = _refused(tmp_path, w, capsys)
    assert str(w) in err and "wav2vec2" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _refused(tmp_path, w, capsys, "--audio-models", str(empty))
    assert str(empty) in err and "Whisper large-v2" in err


def test_refuses_unconverted_whisper_and_missing_context(tmp_path, bundle, capsys, no_loading):
    w = _copy(bundle, tmp_path)
    (w / "whisper" / "large-v2.safetensors").unlink()
    err = _refused(tmp_path, w, capsys)
    assert "large-v2.pt" in err and "convert_openai_whisper" in err
    (w / "xdub_context.safetensors").unlink()
    err = _refused(tmp_path, w, capsys)
    assert "xdub_context.safetensors" in err and "make_xdub_context" in err


def test_auto_detects_xdub_from_the_file(tmp_path, bundle):
    from omnisync_model.backends.registry import detect_family

    assert detect_family(bundle / "X-Dub_model.safetensors").name == "xdub"
    out = tmp_path / "out.mp4"
    video = _clip(tmp_path / "in.mp4", 5, Fraction(25))
    rc = main(["lipsync", "--video", str(video), "--audio", str(video), "--out", str(out), "--weights",
               str(bundle / "X-Dub_model.safetensors"), "--steps", "1", "--size", "32", "--quiet"])
    assert rc == 0 and probe_video(out).n_frames == 5  # --backend auto: found from the header, rest next to it
