"""Finding and loading everything LatentSync needs, for the registry (detect / load) and the command line (load_cli).

Detection claims every Stable Diffusion 1.5-family UNet (``conv_in`` + ``down_blocks.*.resnets``), so that the
files this family is confused with get a precise refusal instead of "unknown family": a plain SD-1.5 / SD-2 UNet
(text cross-attention) and a LatentSync-layout file with the wrong input channel count are refused by :func:`load`
from the header, before any tensor is read. A MuseTalk 1.5 UNet (8 input channels, no motion modules) loads as
:class:`~.musetalk.MuseTalkBackend` (one step at t = 0). A VAE of another family (Wan, Flux: not 4 channels) is
refused by :mod:`..media.sd_vae` from its header / config, also before any work.

The ``--weights DIR`` layout (the Hugging Face download of ByteDance/LatentSync-1.5 or -1.6, with our converted
files added; ``--vae`` and ``--audio-models`` override the folders)::

    DIR/latentsync_unet.safetensors        convert_latentsync(latentsync_unet.pt, ...) (any one LatentSync file;
                                           MuseTalk: musetalk_unet.safetensors from convert_musetalk(unet.pth))
    DIR/whisper_tiny.safetensors           convert_openai_whisper(whisper/tiny.pt, ...) (or whisper/tiny.safetensors)
    DIR/sd-vae-ft-mse/ or DIR/vae/         stabilityai/sd-vae-ft-mse (config.json + diffusion_pytorch_model
                                           .safetensors), or a single SD VAE .safetensors file

Resolution: 1.5 (256 px) and 1.6 (512 px) are the same network, so the file cannot tell; a ``latentsync_config``
metadata entry ``{"resolution": 512}`` or the ``resolution`` argument sets it (the CLI: ``--size 512``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from ...core.checkpoint import CheckpointError, PathLike, read_header
from ...core.files import first_existing
from ...families.latentsync import diagnose, file_config, load_latentsync
from ...families.latentsync.config import input_channels
from ...sampling.backend import Backend
from .backend import MODES
from .musetalk import MuseTalkBackend
from .speech import CHUNKINGS, LatentSyncWhisperBackend, check_whisper, whisper_feature_fn

logger = logging.getLogger(__name__)

__all__ = ["detect", "load", "load_cli", "find_checkpoint", "find_whisper", "find_vae", "whisper_feature_fn",
           "check_whisper", "check_checkpoint", "CHECKPOINT_FILE", "MUSETALK_FILE", "WHISPER_FILES", "VAE_FOLDERS",
           "CHUNKINGS"]

CHECKPOINT_FILE = "latentsync_unet.safetensors"
MUSETALK_FILE = "musetalk_unet.safetensors"
WHISPER_FILES = ("whisper_tiny.safetensors", "whisper/tiny.safetensors", "tiny.safetensors")
WHISPER_PICKLES = ("whisper/tiny.pt", "tiny.pt")
VAE_FOLDERS = ("sd-vae-ft-mse", "vae", "sd-vae")


def _is_sd_unet(shapes: Mapping[str, tuple]) -> bool:
    return input_channels(shapes) is not None and any(k.startswith("down_blocks.") and ".resnets." in k
                                                      for k in shapes)


def detect(shapes: Mapping[str, tuple], meta: Mapping[str, str]) -> bool:
    """Any SD-1.5-family UNet (or a file converted as LatentSync / MuseTalk); :func:`load` then refuses the ones
    that are neither LatentSync nor MuseTalk, naming what they are."""
    return meta.get("format") in ("latentsync", "musetalk") or _is_sd_unet(shapes)


def _shapes(path: Path) -> dict[str, tuple]:
    return {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}


def check_checkpoint(path: PathLike) -> str:
    """"latentsync" or "musetalk" from the header alone; CheckpointError naming what the file is otherwise."""
    family, why = diagnose(_shapes(Path(path)))
    if family is None:
        raise CheckpointError(f"{path} is {why}")
    return family


def load(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
         operations=nn, mode: str = "reference", resolution: Optional[int] = None,
         encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Backend:
    """A :class:`LatentSyncWhisperBackend` (or, for a MuseTalk file, a :class:`MuseTalkBackend`) from a
    safetensors file, checked from its header first.

    mode "reference" (LatentSync's sampler exactly) or "progressive" (OmniSync's options); resolution 256 (1.5) or
    512 (1.6), default the file's metadata / 256; encode: waveform -> Whisper-tiny features (see
    :func:`whisper_feature_fn`; usually attached later with ``with_speech``). MuseTalk ignores mode and resolution.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    family = check_checkpoint(path)
    file_config(path)  # full key / shape check from the header, before any tensor is read
    model = load_latentsync(path, device=device, dtype=dtype, operations=operations)
    if family == "musetalk":
        return MuseTalkBackend(model, encode=encode)
    return LatentSyncWhisperBackend(model, mode=mode, resolution=resolution, encode=encode)


# --------------------------------------------------------------------------------------------- the command line


def find_checkpoint(path: Path) -> Path:
    """The LatentSync file: ``path`` itself, or in a folder latentsync_unet.safetensors / the one LatentSync file."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"LatentSync weights not found: {path}")
    for name in (CHECKPOINT_FILE, MUSETALK_FILE):
        if (path / name).is_file():
            return path / name
    found = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            if diagnose(_shapes(file))[0] is not None:
                found.append(file)
        except CheckpointError:
            continue
    if len(found) != 1:
        pickle = path / "latentsync_unet.pt"
        hint = (f"; {pickle} is the released pickle: convert it once with convert_latentsync('{pickle}', "
                f"'{path / CHECKPOINT_FILE}') (`omnisync convert`)" if pickle.is_file() else "")
        what = "no LatentSync / MuseTalk UNet" if not found else f"{len(found)} LatentSync / MuseTalk UNets"
        raise CheckpointError(f"{path}: {what} (.safetensors) in the folder; expected {CHECKPOINT_FILE} or pass "
                              f"the file{hint}")
    return found[0]


def find_whisper(weights: Path, audio_models: Optional[PathLike]) -> Path:
    """The converted Whisper-tiny encoder in ``audio_models`` (else next to the weights); an unconverted pickle is
    refused with the conversion command."""
    base = Path(audio_models) if audio_models is not None else (weights if weights.is_dir() else weights.parent)
    if not base.is_dir():
        raise FileNotFoundError(f"audio-model folder not found: {base}")
    found = first_existing(base, WHISPER_FILES, folder=False)
    if found is None:
        pickle = first_existing(base, WHISPER_PICKLES, folder=False)
        hint = (f"; {pickle} is OpenAI's pickle: convert it once with convert_openai_whisper('{pickle}', "
                f"'{base / WHISPER_FILES[0]}') (`omnisync convert`)" if pickle else
                "; LatentSync's whisper/tiny.pt converted with `omnisync convert`")
        raise CheckpointError(f"{base}: no Whisper tiny encoder ({' or '.join(WHISPER_FILES)}){hint}")
    read_header(found)  # a truncated or pickled file is refused here, before anything loads
    return found


def find_vae(weights: Path, vae: Optional[PathLike]) -> Path:
    if vae is not None:
        return Path(vae)
    base = weights if weights.is_dir() else weights.parent
    found = first_existing(base, VAE_FOLDERS, folder=True)
    if found is None:
        raise CheckpointError(f"no SD VAE: pass --vae (the diffusers folder of stabilityai/sd-vae-ft-mse, or its "
                              f".safetensors file) or put it in {base}/{VAE_FOLDERS[0]}/")
    return found


def load_cli(path: PathLike, device: Union[str, torch.device] = "cpu", vae: Optional[PathLike] = None,
             audio_models: Optional[PathLike] = None, dtype: Optional[torch.dtype] = None,
             mode: str = "reference", resolution: Optional[int] = None, chunking: str = "overlap"):
    """(LatentSync or MuseTalk backend with its Whisper-tiny features, the SD VAE codec) from local files: every
    file is found and checked first (UNet header, Whisper header, VAE config / header), then loaded. The encoder's
    width and depth are checked before the UNet's weights are read."""
    from ...audio_models import load_whisper_encoder
    from ...media.sd_vae import check_sd_vae_path, load_sd_vae

    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, got {chunking!r}")
    path = Path(path)
    ckpt = find_checkpoint(path)
    family = check_checkpoint(ckpt)
    config = file_config(ckpt)
    whisper = find_whisper(path, audio_models)
    vae_path = find_vae(path, vae)
    check_sd_vae_path(vae_path)
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    encoder = load_whisper_encoder(whisper, device=device, dtype=torch.float32)
    check_whisper(encoder, config.audio_dim, str(whisper))
    backend = load(ckpt, device=device, dtype=dtype, mode=mode, resolution=resolution).with_speech(encoder, chunking)
    codec = load_sd_vae(vae_path, device=device, dtype=torch.float32)
    logger.info("%s %s (%s mode, %d px), Whisper %s (%s chunking), VAE %s", family, ckpt, mode,
                backend.crop_rules.resolution[0], whisper, chunking, vae_path)
    return backend, backend.prepare_codec(codec)
