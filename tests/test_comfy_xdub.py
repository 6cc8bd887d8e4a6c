"""workflows/lipsync_xdub.json in a real ComfyUI server with tiny random X-Dub weights.

The graph runs as shipped (Load Video -> OmniSyncLipSyncVideo with OmniSyncModelLoader, core VAELoader and
OmniSyncAudioModelLoader -> Save Video), with fewer steps and a 64-pixel working size. The DiT and the speech
encoders are tiny (tests/xdub_helpers.py); the VAE is a FULL-SIZE Wan2.2 VAE with random weights (fp16, 1.4 GB),
because ComfyUI's VAELoader builds the Wan2.2 architecture from the file's keys at its fixed width. Runs only with
COMFYUI_PATH (and COMFYUI_PYTHON) set.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_helpers import (running_server, history_error, load_workflow, nodes_of_type, speech_wav, talking_clip,
                           ui_to_api, write_video)
from conftest import MEDIA

COMFY = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFY or not (Path(COMFY) / "main.py").is_file(),
                                reason="COMFYUI_PATH is not set to a ComfyUI checkout")
GOLDEN = Path(__file__).resolve().parent / "golden" / "xdub"
WORKFLOW = "lipsync_xdub.json"
FPS, SECONDS, AUDIO_S = 25.0, 0.52, 0.8  # 13 frames; the speech is longer than the clip: trimmed
CLIP, SPEECH = MEDIA / "talking_head_25fps.mp4", MEDIA / "speech_16k.wav"
REAL_FRAMES = 9  # the real clip cut to its first 9 frames (1080x1920)


def write_full_wan22_vae(path: Path, seed: int = 0) -> Path:
    """A random Wan2.2 VAE in Wan's original key layout (the names and shapes of X-Dub's VideoVAE38_, 705M
    values) in fp16: norms' gamma 1, biases 0, weights N(0, 1 / fan_in) so activations stay finite."""
    shapes = json.loads((GOLDEN / "wan22_vae_keys.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("gamma"):
            tensors[name] = torch.ones(shape, dtype=torch.float16)
        elif name.endswith("bias"):
            tensors[name] = torch.zeros(shape, dtype=torch.float16)
        else:
            fan_in = math.prod(shape[1:]) or 1
            tensors[name] = (torch.randn(shape, generator=gen) / math.sqrt(fan_in)).half()
    save_file(tensors, str(path))
    return path


def _cut_real_clip(input_dir: Path) -> None:
    import shutil

    from omnisync_model.media.video_io import VideoWriter, iter_video_frames, probe_video

    info = probe_video(CLIP)
    with VideoWriter(input_dir / "real_cut.mp4", info.fps, info.width, info.height) as w:
        w.write(next(iter_video_frames(CLIP, REAL_FRAMES))[:REAL_FRAMES])
    shutil.copy(SPEECH, input_dir / "real_speech.wav")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("transformers")
    from xdub_helpers import write_audio_models, write_context, write_xdub

    def setup(srv):
        models = srv.models_dir
        write_xdub(models / "omnisync" / "X-Dub_model.safetensors")
        write_context(models / "omnisync" / "xdub_context.safetensors")
        (models / "vae").mkdir(parents=True, exist_ok=True)
        write_full_wan22_vae(models / "vae" / "Wan2.2_VAE.safetensors")
        audio = write_audio_models(models / "audio_encoders")
        (audio / "whisper" / "large-v2.safetensors").rename(audio / "whisper-large-v2.safetensors")
        frames, speech = talking_clip(SECONDS, FPS, seed=3)
        write_video(srv.input_dir / "omnisync_face.mp4", frames, FPS, speech)
        speech_wav(srv.input_dir / "omnisync_speech.wav", AUDIO_S)
        if CLIP.is_file() and SPEECH.is_file():
            _cut_real_clip(srv.input_dir)

    with running_server(tmp_path_factory.mktemp("comfy_xdub"), setup) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info", timeout=60)


def _prompt(object_info, video=None, audio=None):
    workflow = load_workflow(WORKFLOW)
    prompt = ui_to_api(workflow, object_info)
    if video is not None:
        prompt[nodes_of_type(prompt, "LoadVideo")[0]]["inputs"]["file"] = video
        prompt[nodes_of_type(prompt, "LoadAudio")[0]]["inputs"]["audio"] = audio
    node = prompt[nodes_of_type(prompt, "OmniSyncLipSyncVideo")[0]]
    assert node["inputs"]["tau"] == 1.0 and node["inputs"]["steps"] == 50 and node["inputs"]["window"] == 77
    node["inputs"].update(steps=2, size=64)  # plumbing, not quality: 2 steps on a 64-pixel crop
    return workflow, prompt


def test_nodes_and_lists(object_info):
    loader = object_info["OmniSyncAudioModelLoader"]["input"]["required"]
    assert loader["whisper"][1]["options"] == ["whisper-large-v2.safetensors"]  # V3 combo: ["COMBO", {options}]
    assert loader["wav2vec2"][1]["options"] == ["none", "wav2vec2-base-960h"]  # none: Whisper alone (LatentSync)
    assert loader["wav2vec2"][1]["default"] == "wav2vec2-base-960h"
    model = object_info["OmniSyncModelLoader"]["input"]
    assert "fp8_e4m3fn" in model["required"]["weight_dtype"][1]["options"] and "context" in model["optional"]
    for node in ("OmniSyncLipSync", "OmniSyncLipSyncVideo"):
        assert "audio_models" in object_info[node]["input"]["optional"]


def test_xdub_workflow_saves_a_lip_synced_video(server, object_info):
    from omnisync_model.media.video_io import probe_video, read_audio

    workflow, prompt = _prompt(object_info)
    history = server.wait(server.queue(prompt, workflow), timeout=1500)
    assert history["status"]["status_str"] == "success", history_error(history) + "\n" + server.log_tail()
    files = server.saved_files(history)
    assert len(files) == 1 and files[0].is_file(), files
    info = probe_video(files[0])
    assert (info.n_frames, info.fps, info.width, info.height) == (13, 25, 64, 64)  # every frame, fps kept
    wave, rate = read_audio(files[0])
    assert abs(wave.shape[1] / rate - 13 / FPS) < 0.05
    log = server.log_tail(200_000)
    assert "lip sync (xdub): 13 frames at 25.000 fps in 1 window" in log
    assert log.count("academic research and technical demonstration only") == 1  # the licence note, once


@pytest.mark.skipif(not CLIP.is_file() or not SPEECH.is_file(), reason="../shared/media is not present")
def test_xdub_workflow_on_the_real_clip(server, object_info):
    from omnisync_model.media.video_io import probe_video

    workflow, prompt = _prompt(object_info, "real_cut.mp4", "real_speech.wav")
    history = server.wait(server.queue(prompt, workflow), timeout=1500)
    assert history["status"]["status_str"] == "success", history_error(history) + "\n" + server.log_tail()
    files = server.saved_files(history)
    assert len(files) == 1, files
    src, out = probe_video(CLIP), probe_video(files[0])
    assert (out.n_frames, out.fps, out.width, out.height) == (REAL_FRAMES, src.fps, src.width, src.height)


def test_plain_wan_checkpoint_is_refused_by_name(server, object_info):
    from safetensors.torch import load_file

    src = server.models_dir / "omnisync" / "X-Dub_model.safetensors"
    plain = server.models_dir / "omnisync" / "wan22_plain.safetensors"
    save_file({k: v for k, v in load_file(src).items() if "audio" not in k}, str(plain))
    info = server.get("/object_info/OmniSyncModelLoader")["OmniSyncModelLoader"]
    assert "wan22_plain.safetensors" in info["input"]["required"]["ckpt_name"][1]["options"]
    workflow, prompt = _prompt(object_info)
    prompt[nodes_of_type(prompt, "OmniSyncModelLoader")[0]]["inputs"]["ckpt_name"] = "wan22_plain.safetensors"
    history = server.wait(server.queue(prompt, workflow), timeout=600)
    assert history["status"]["status_str"] == "error"
    message = history_error(history)
    assert "wan22_plain.safetensors" in message and "plain Wan DiT without X-Dub's audio layers" in message
