"""workflows/lipsync_latentsync.json: static checks (UI format, the Note's download list, no overlapping nodes) and a
run in a real ComfyUI server with tiny random LatentSync weights, a random full-size SD VAE through core VAELoader
and a tiny Whisper through the audio-model loader: every frame and the fps kept.

The server test runs only when COMFYUI_PATH points at a ComfyUI checkout (COMFYUI_PYTHON: its interpreter).
"""

import importlib.util
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_helpers import running_server, history_error, load_workflow, speech_wav, talking_clip, ui_to_api, write_video

NAME = "lipsync_latentsync.json"
COMFY = os.environ.get("COMFYUI_PATH")
GOLDEN_W2V = Path(__file__).resolve().parent / "golden" / "audio_models" / "wav2vec2_random.safetensors"
WHISPER_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=4)
FPS = Fraction(30000, 1001)
TITLE = 30  # the frontend draws a node's title bar above its pos


@pytest.fixture(scope="module")
def workflow():
    return load_workflow(NAME)


def test_workflow_is_ui_format_with_the_download_note(workflow):
    assert workflow["version"] == 0.4 and {"nodes", "links", "last_node_id", "last_link_id", "extra"} <= set(workflow)
    assert workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    types = [n["type"] for n in workflow["nodes"]]
    assert {"OmniSyncModelLoader", "VAELoader", "OmniSyncAudioModelLoader", "OmniSyncLipSyncVideo",
            "SaveVideo"} <= set(types)
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    for needed in ("ByteDance/LatentSync-1.5", "ByteDance/LatentSync-1.6", "latentsync_unet.pt", "whisper/tiny.pt",
                   "stabilityai/sd-vae-ft-mse-original", "convert_latentsync", "convert_openai_whisper", "models/omnisync",
                   "models/vae", "models/audio_encoders", "512", "What to change"):
        assert needed in notes[0], needed
    loader = next(n for n in workflow["nodes"] if n["type"] == "OmniSyncModelLoader")
    assert loader["widgets_values"][0] == "latentsync_unet.safetensors"
    sync = next(n for n in workflow["nodes"] if n["type"] == "OmniSyncLipSyncVideo")
    # region, blend, size, tau, steps, seed, control, window, overlap, w_peak, w_base, radius, gamma
    assert sync["widgets_values"][4] == 20 and sync["widgets_values"][7:9] == [16, 0]
    assert sync["widgets_values"][9:11] == [1.5, 1.5] and sync["widgets_values"][12] == 0.0  # static CFG 1.5


def test_nodes_do_not_overlap_and_links_agree(workflow):
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, f"nodes {a[0]} and {b[0]} overlap"
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"] and nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]


# --------------------------------------------------------------------------------------------- real server

needs_server = pytest.mark.skipif(
    not COMFY or not (Path(COMFY) / "main.py").is_file()
    or any(importlib.util.find_spec(m) is None for m in ("transformers", "diffusers")),
    reason="COMFYUI_PATH is not set to a ComfyUI checkout, or transformers / diffusers are missing")


def _sinusoids(length, width):
    scales = torch.exp(-math.log(10000) / (width // 2 - 1) * torch.arange(width // 2))
    t = torch.arange(length)[:, None] * scales[None]  # [L, D/2]
    return torch.cat([t.sin(), t.cos()], dim=1)


def _place_models(models: Path) -> None:
    """Tiny LatentSync UNet, a random full-size SD VAE (ComfyUI builds SD VAEs at full size), a tiny Whisper
    (width 16 = the tiny UNet's audio width) and the random wav2vec2 golden (the loader node asks for one)."""
    from diffusers import AutoencoderKL

    from omnisync_model.audio_models import build_whisper_encoder
    from omnisync_model.core.checkpoint import read_metadata
    from omnisync_model.families.latentsync import LatentSyncUNet, get_preset

    torch.manual_seed(0)
    unet = LatentSyncUNet(get_preset("tiny"))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              models / "omnisync" / "latentsync_unet.safetensors", {"format": "latentsync"})
    (models / "vae").mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    half = {k: v.half().contiguous() for k, v in vae.state_dict().items()}  # 167 MB instead of 335
    save_file(half, models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors")
    audio = models / "audio_encoders"
    (audio / "wav2vec2-base-960h").mkdir(parents=True, exist_ok=True)
    encoder = build_whisper_encoder(WHISPER_DIMS, device="cpu")
    with torch.no_grad():
        encoder.embed_positions.weight.copy_(_sinusoids(1500, 16))
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, audio / "whisper_tiny.safetensors",
              {"whisper_dims": json.dumps(WHISPER_DIMS)})
    (audio / "wav2vec2-base-960h" / "config.json").write_text(read_metadata(GOLDEN_W2V)["config"])
    save_file(load_file(GOLDEN_W2V), audio / "wav2vec2-base-960h" / "model.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    def setup(srv):
        _place_models(srv.models_dir)
        frames, speech = talking_clip(0.7, float(FPS), seed=5)
        write_video(srv.input_dir / "omnisync_face.mp4", frames, FPS, speech)
        speech_wav(srv.input_dir / "omnisync_speech.wav", 1.0)

    with running_server(tmp_path_factory.mktemp("comfy_latentsync"), setup) as srv:
        yield srv


@needs_server
def test_latentsync_workflow_runs_in_a_real_server(server, workflow):
    from omnisync_model.media.video_io import probe_video

    n_in = probe_video(server.input_dir / "omnisync_face.mp4").n_frames
    prompt = ui_to_api(workflow, server.get("/object_info", timeout=60))
    sync = next(node for node in prompt.values() if node["class_type"] == "OmniSyncLipSyncVideo")
    sync["inputs"].update(steps=2, size=64)  # tiny weights: a 64 px crop (latent 8x8) and 2 DDIM steps
    history = server.wait(server.queue(prompt, workflow), timeout=900)
    assert history["status"]["status_str"] == "success", history_error(history) + "\n" + server.log_tail()
    files = server.saved_files(history)
    assert len(files) == 1 and files[0].is_file(), files
    info = probe_video(files[0])
    assert info.n_frames == n_in and info.fps == FPS and (info.width, info.height) == (64, 64)
    assert "latentsync backend" in server.log_tail(200_000)
