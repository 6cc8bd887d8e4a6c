"""Tiny random X-Dub bundles for the end-to-end tests (CLI, loaders, ComfyUI): an X-Dub-layout DiT of 48 latent
channels, its context file, a Wan2.2-contract VAE (diffusers AutoencoderKLWan, 48 channels, 16x spatial, 4x
temporal, a few channels wide), a converted Whisper encoder and a wav2vec2 folder (the audio-model goldens).
Nothing here is a reference: only shapes and file layouts matter."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omnisync_model.core.checkpoint import read_metadata

AUDIO_GOLDEN = Path(__file__).resolve().parent / "golden" / "audio_models"
TINY_VAE = dict(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12,
                out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)
WAN21_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)


def tiny_xdub_config():
    from omnisync_model.families.xdub import get_preset

    # whisper golden width 32 + wav2vec2 golden width 16 = 48 audio features
    return get_preset("tiny").replace(in_channels=48, out_channels=48, audio_in_dim=48)


def write_xdub(path: Path, seed: int = 0) -> Path:
    from omnisync_model.families.xdub import XDubModel

    torch.manual_seed(seed)
    model = XDubModel(tiny_xdub_config())
    with torch.no_grad():
        model.head.head.weight.mul_(10.0)  # visible velocities
    cfg = model.config
    meta = {"xdub.head_dim": str(cfg.head_dim), "xdub.audio_head_dim": str(cfg.audio_hidden // cfg.audio_heads)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def write_context(path: Path, text_dim: int = 32, seed: int = 1) -> Path:
    from omnisync_model.backends.xdub.context import save_context

    return save_context(torch.randn(1, 1, text_dim, generator=torch.Generator().manual_seed(seed)), path)


def write_vae(folder: Path, config: dict = TINY_VAE, seed: int = 2) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    AutoencoderKLWan(**config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_audio_models(folder: Path) -> Path:
    """folder/whisper/large-v2.safetensors (converted from an OpenAI-format .pt) + folder/wav2vec2-base-960h/."""
    from omnisync_model.audio_models import convert_openai_whisper

    (folder / "whisper").mkdir(parents=True, exist_ok=True)
    src = AUDIO_GOLDEN / "whisper_random.safetensors"
    dims = json.loads(read_metadata(src)["dims"])
    pt = folder / "whisper" / "large-v2.pt"
    torch.save({"dims": dims, "model_state_dict": load_file(src)}, pt)
    convert_openai_whisper(pt, folder / "whisper" / "large-v2.safetensors")
    w2v = folder / "wav2vec2-base-960h"
    w2v.mkdir(exist_ok=True)
    src = AUDIO_GOLDEN / "wav2vec2_random.safetensors"
    (w2v / "config.json").write_text(read_metadata(src)["config"])
    save_file(load_file(src), str(w2v / "model.safetensors"))
    return folder


def write_bundle(folder: Path) -> Path:
    """The --weights DIR layout: X-Dub_model.safetensors, xdub_context.safetensors, Wan2.2_VAE/, whisper/,
    wav2vec2-base-960h/."""
    folder.mkdir(parents=True, exist_ok=True)
    write_xdub(folder / "X-Dub_model.safetensors")
    write_context(folder / "xdub_context.safetensors")
    write_vae(folder / "Wan2.2_VAE")
    write_audio_models(folder)
    return folder
