"""Finding and loading everything X-Dub needs, for the registry (detect / load) and the command line (load_cli).

Every file is checked from its header or config before any weight is read, so a wrong file is refused, naming it and
what is wrong, before any work: a plain Wan2.2-TI2V-5B DiT (no audio layers), a truncated or non-safetensors file,
a VAE that is not Wan2.2's (Wan 2.1: 16 channels), missing speech encoders or a Whisper still in its ``.pt`` pickle,
a missing umt5 context.

The ``--weights DIR`` layout (X-Dub's own download, with our two converted files added)::

    DIR/X-Dub_model.safetensors           the DiT (any single X-Dub-layout .safetensors is found)
    DIR/xdub_context.safetensors          umt5 states of the empty prompt (make_xdub_context, once)
    DIR/Wan2.2_VAE.safetensors            the Wan2.2 VAE as X-Dub ships it, or a diffusers folder DIR/Wan2.2_VAE/,
                                          DIR/vae/ (or --vae)
    DIR/whisper/large-v2.safetensors      convert_openai_whisper(large-v2.pt, ...) (or --audio-models DIR2)
    DIR/wav2vec2-base-960h/               config.json + model.safetensors
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ...core.checkpoint import CheckpointError, PathLike, read_header
from ...core.files import first_existing
from ...families.xdub import detect_xdub, load_xdub, read_xdub_config
from ...families.xdub.weights import PREFIXES
from .backend import XDubBackend
from .context import CONTEXT_FILE, load_context

logger = logging.getLogger(__name__)

__all__ = ["detect", "load", "load_cli", "explain_not_xdub", "find_checkpoint", "find_context", "find_vae",
           "find_audio_models", "LICENCE_NOTE", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "X-Dub_model.safetensors"
VAE_FOLDERS = ("Wan2.2_VAE", "vae", "Wan2.2-VAE")
VAE_FILES = ("Wan2.2_VAE.safetensors", "wan2.2_vae.safetensors")
WHISPER_FILES = ("whisper/large-v2.safetensors", "whisper-large-v2.safetensors", "large-v2.safetensors")
WAV2VEC2_FOLDERS = ("wav2vec2-base-960h", "wav2vec2")
LICENCE_NOTE = ("X-Dub's weights (KlingTeam/X-Dub) are released for academic research and technical demonstration "
                "only (its README); the X-Dub repository has no licence file")


def detect(shapes: Mapping[str, tuple], meta: Mapping[str, str]) -> bool:
    """X-Dub's key layout, with or without a ComfyUI ``model.diffusion_model.`` prefix (header only)."""
    for prefix in PREFIXES:
        if shapes and all(k.startswith(prefix) for k in shapes):
            return detect_xdub({k[len(prefix):]: v for k, v in shapes.items()})
    return detect_xdub(shapes)


def explain_not_xdub(path: PathLike) -> str:
    """Why a file that no family claims is not X-Dub, when it looks like a Wan DiT ("" otherwise)."""
    from ...families.xdub.config import describe_layout, is_wan_layout

    try:
        shapes = {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}
    except CheckpointError:
        return ""
    return f"; {describe_layout(shapes)}" if is_wan_layout(shapes) else ""


def find_context(path: PathLike, text_dim: int, context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The umt5 context: ``context`` when given, else ``xdub_context.safetensors`` next to the checkpoint."""
    if context is not None:
        return context
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / CONTEXT_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{file} not found: X-Dub runs with the umt5-xxl states of the empty prompt. Make the file once with "
            f"make_xdub_context(UMT5_FOLDER_OR_FILE, '{file}') (`omnisync convert`), or in ComfyUI connect "
            f"CLIPTextEncode(\"\") with the umt5 encoder to the loader's 'context' input")
    return load_context(file, text_dim)


def load(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
         operations=nn, context: Optional[torch.Tensor] = None, weight_dtype: Optional[torch.dtype] = None,
         speech=None) -> XDubBackend:
    """An :class:`XDubBackend` from an X-Dub safetensors file (checked from its header first) and its context
    (``context`` or the context file next to it; also checked before the weights are read)."""
    path = Path(path)
    config, _, _ = read_xdub_config(path)
    ctx = find_context(path, config.text_dim, context)
    model = load_xdub(path, device=device, dtype=dtype, operations=operations, weight_dtype=weight_dtype)
    return XDubBackend(model, ctx, speech=speech)


# --------------------------------------------------------------------------------------------- the command line


def find_checkpoint(path: Path) -> Path:
    """The X-Dub file: ``path`` itself, or in a folder X-Dub_model.safetensors / the one X-Dub-layout file."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"X-Dub weights not found: {path}")
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    found = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            shapes = {k: tuple(v["shape"]) for k, v in read_header(file).items() if k != "__metadata__"}
        except CheckpointError:
            continue
        if detect(shapes, {}):
            found.append(file)
    if len(found) != 1:
        what = "no X-Dub checkpoint" if not found else f"{len(found)} X-Dub checkpoints"
        raise CheckpointError(f"{path}: {what} (.safetensors with X-Dub's keys) in the folder; expected "
                              f"{CHECKPOINT_FILE} or pass the file")
    return found[0]


def find_vae(weights: Path, vae: Optional[PathLike]) -> Path:
    if vae is not None:
        return Path(vae)
    base = weights if weights.is_dir() else weights.parent
    found = first_existing(base, VAE_FOLDERS, folder=True) or first_existing(base, VAE_FILES, folder=False)
    if found is None:
        raise CheckpointError(f"no Wan2.2 VAE in {base}: pass --vae (Wan2.2_VAE.safetensors or a diffusers VAE "
                              f"folder) or put {VAE_FILES[0]} there")
    return found


def find_audio_models(weights: Path, audio_models: Optional[PathLike]) -> tuple[Path, Path]:
    """(Whisper large-v2 safetensors, wav2vec2 folder), refusing a missing folder or an unconverted pickle."""
    base = Path(audio_models) if audio_models is not None else (weights if weights.is_dir() else weights.parent)
    if not base.is_dir():
        raise FileNotFoundError(f"audio-model folder not found: {base}")
    whisper = first_existing(base, WHISPER_FILES, folder=False)
    if whisper is None:
        pickle = first_existing(base, ("whisper/large-v2.pt", "large-v2.pt"), folder=False)
        hint = (f"; {pickle} is a pickle: convert it once with convert_openai_whisper('{pickle}', "
                f"'{base / WHISPER_FILES[0]}') (`omnisync convert`)" if pickle else "")
        raise CheckpointError(f"{base}: no Whisper large-v2 encoder ({' or '.join(WHISPER_FILES)}){hint}")
    wav2vec2 = first_existing(base, WAV2VEC2_FOLDERS, folder=True)
    if wav2vec2 is None:
        raise CheckpointError(f"{base}: no wav2vec2 folder ({' or '.join(WAV2VEC2_FOLDERS)}: config.json + "
                              f"model.safetensors of facebook/wav2vec2-base-960h)")
    read_header(whisper)  # a truncated or pickled file is refused here, before anything loads
    return whisper, wav2vec2


def load_cli(path: PathLike, device: Union[str, torch.device] = "cpu", vae: Optional[PathLike] = None,
             audio_models: Optional[PathLike] = None, dtype: Optional[torch.dtype] = None):
    """(XDubBackend with its speech encoders, the Wan2.2 VAE codec) from local files; everything is found and
    checked first (checkpoint header, context, VAE config, audio files), then loaded."""
    from ...media.diffusers_vae import check_vae_path, load_diffusers_vae
    from .codec import WAN22_CHANNELS
    from .speech import load_speech

    path = Path(path)
    ckpt = find_checkpoint(path)
    config, _, _ = read_xdub_config(ckpt)
    context = find_context(ckpt, config.text_dim)
    vae_path = find_vae(path, vae)
    check_vae_path(vae_path, WAN22_CHANNELS if config.in_channels == WAN22_CHANNELS else config.in_channels)
    whisper, wav2vec2 = find_audio_models(path, audio_models)
    if dtype is None:
        dev = torch.device(device)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    logger.warning("%s.", LICENCE_NOTE)
    speech = load_speech(whisper, wav2vec2, device=device)
    backend = load(ckpt, device=device, dtype=dtype, context=context)
    backend = backend.with_speech(speech)
    codec = load_diffusers_vae(vae_path, device=device, dtype=torch.float32 if dtype == torch.float32 else dtype)
    return backend, backend.prepare_codec(codec)
