"""Strict loading of LatentSync / MuseTalk UNet safetensors files, and the reference-exact forward.

A file converted once from the released pickle (``latentsync_unet.pt`` holds ``{"state_dict": ...}``, MuseTalk's
``unet.pth`` is the state dict itself) by :func:`omnisync_model.convert.convert_latentsync` /
``convert_musetalk`` keeps the released key names. Loading checks the file against the network its shapes describe:

* a plain SD-1.5 UNet (text cross-attention width 768) is refused as such, and a UNet with an input channel count
  that is neither LatentSync's 13 nor MuseTalk's 8 is refused naming the count it found;
* any missing key (except the motion modules' ``pe`` positional tables, which are fixed and regenerated), any extra
  key and any shape mismatch is an error that names the file and the keys.

:func:`reference_forward` is the function to check us against the authors' code with: given any LatentSync- or
MuseTalk-layout safetensors file (config inferred from the tensor shapes) and the inputs the reference UNet takes,
it returns what the reference's ``unet(sample, t, encoder_hidden_states=audio).sample`` returns.
"""

from __future__ import annotations

import json
import logging
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from safetensors import SafetensorError, safe_open

from ...core.checkpoint import CheckpointError, PathLike, listing, read_metadata, read_shapes
from .config import (LATENTSYNC_IN_CHANNELS, MUSETALK_IN_CHANNELS, SD_TEXT_WIDTHS, LatentSyncConfig,
                     cross_attention_width, has_motion_modules, infer_config, input_channels)
from .motion import PositionalEncoding
from .unet import LatentSyncUNet

logger = logging.getLogger(__name__)

PE_SUFFIX = ".pos_encoder.pe"
CONFIG_METADATA = "latentsync_config"  # optional JSON in a file's header: the fields no tensor shape shows
HIDDEN_FIELDS = ("heads", "norm_groups", "norm_eps", "motion_heads", "motion_norm_groups", "resolution")
EXPECTED_CHANNELS = (f"LatentSync expects {LATENTSYNC_IN_CHANNELS} (noisy latent 4 + mask 1 + masked frame 4 + "
                     f"reference frame 4) and MuseTalk {MUSETALK_IN_CHANNELS} (masked frame 4 + reference frame 4)")


# --------------------------------------------------------------------------------------------- family


def diagnose(shapes: Mapping[str, Sequence[int]]) -> tuple[Optional[str], str]:
    """(family, "") for a LatentSync / MuseTalk layout, else (None, why not) from the tensor shapes alone."""
    cin = input_channels(shapes)
    if cin is None or not any(k.startswith("down_blocks.") and ".resnets." in k for k in shapes):
        return None, "not a UNet of the Stable Diffusion 1.5 family (no conv_in / down_blocks.*.resnets tensors)"
    width = cross_attention_width(shapes)
    motion = has_motion_modules(shapes)
    if width in SD_TEXT_WIDTHS:
        return None, (f"an {SD_TEXT_WIDTHS[width]} UNet, not LatentSync or MuseTalk: its cross-attention takes text "
                      f"(width {width}, {cin} input channels) where LatentSync and MuseTalk take Whisper-tiny audio "
                      f"(width 384)")
    if motion or cin == LATENTSYNC_IN_CHANNELS:
        if cin != LATENTSYNC_IN_CHANNELS:
            return None, (f"a LatentSync-layout UNet (motion modules) with {cin} input channels; "
                          f"{EXPECTED_CHANNELS}")
        return "latentsync", ""
    if cin == MUSETALK_IN_CHANNELS:
        return "musetalk", ""
    if cin == 4:
        return None, (f"an SD-1.5 UNet, not LatentSync or MuseTalk: it has 4 input channels (a plain noisy latent); "
                      f"{EXPECTED_CHANNELS}")
    return None, f"a UNet with {cin} input channels, which is neither LatentSync nor MuseTalk: {EXPECTED_CHANNELS}"


def detect_family(shapes: Mapping[str, Sequence[int]]) -> Optional[str]:
    """"latentsync", "musetalk" or None, from a state dict's / safetensors header's shapes."""
    return diagnose(shapes)[0]


def expected_shapes(config: LatentSyncConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the UNet of ``config`` holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = LatentSyncUNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(shapes: Mapping[str, Sequence[int]], source: str = "state dict",
                 family: Optional[str] = None, config: Optional[LatentSyncConfig] = None) -> LatentSyncConfig:
    """Validate a LatentSync / MuseTalk key set; returns its config or raises :class:`CheckpointError`.

    ``family`` (when given) must match the detected one. Missing ``pe`` tables are allowed (regenerated on load).
    """
    found, why = diagnose(shapes)
    if found is None:
        raise CheckpointError(f"{source} is {why}")
    if family is not None and found != family:
        raise CheckpointError(f"{source} is a {found} UNet, not {family}")
    try:
        config = config or infer_config(shapes, family=found)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    expected = expected_shapes(config)
    given = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    problems = {
        "missing keys": sorted(k for k in set(expected) - set(given) if not k.endswith(PE_SUFFIX)),
        "unexpected keys": sorted(set(given) - set(expected)),
        "shape mismatches": sorted(f"{k}: expected {list(expected[k])}, found {list(given[k])}"
                                   for k in set(given) & set(expected) if given[k] != expected[k]),
    }
    parts = [listing(title, items) for title, items in problems.items() if items]
    if parts:
        raise CheckpointError(f"{source} does not match the {found} UNet its shapes describe:\n" + "\n".join(parts))
    return config


# --------------------------------------------------------------------------------------------- load


def _materialise_tables(model: LatentSyncUNet, device: torch.device, dtype: torch.dtype) -> int:
    """Fill the positional tables the file did not provide (still on meta); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, PositionalEncoding) and module.pe.is_meta:
            module.pe = torch.empty(module.pe.shape, device=device, dtype=dtype)
            module.reset()
            count += 1
    return count


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "state dict",
                          device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                          operations=nn, config: Optional[LatentSyncConfig] = None) -> LatentSyncUNet:
    """A UNet (eval mode) holding ``state_dict`` after the strict checks of :func:`check_shapes`.

    dtype None keeps float32 (half-precision files are upcast); the model is built on the meta device and takes
    the tensors over, so loading costs one copy of the weights.
    """
    config = check_shapes({k: v.shape for k, v in state_dict.items()}, source, config=config)
    dtype = dtype or torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    model = LatentSyncUNet(config, device="meta", dtype=dtype, operations=operations)
    model.load_state_dict(tensors, strict=False, assign=True)
    regenerated = _materialise_tables(model, torch.device("cpu"), dtype)
    if regenerated:
        logger.info("%s: regenerated %d motion-module positional tables", source, regenerated)
    return model.to(device).eval()


def file_config(path: PathLike) -> LatentSyncConfig:
    """The config of a safetensors file, checked: inferred from its tensor shapes, with the fields no shape shows
    (heads, GroupNorm groups and eps; 8 / 32 / 1e-5 in every released file) taken from the optional
    ``latentsync_config`` JSON metadata entry when the file has one. Raises :class:`CheckpointError`."""
    shapes = read_shapes(path)
    found, why = diagnose(shapes)
    if found is None:
        raise CheckpointError(f"{path} is {why}")
    config = infer_config(shapes, family=found)
    raw = read_metadata(path).get(CONFIG_METADATA)
    if raw:
        try:
            hidden = json.loads(raw)
            unknown = sorted(set(hidden) - set(HIDDEN_FIELDS))
            if not isinstance(hidden, dict) or unknown:
                raise ValueError(f"only {HIDDEN_FIELDS} may be given, found {unknown}")
            config = config.replace(**hidden)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: invalid {CONFIG_METADATA} metadata: {exc}") from exc
    return check_shapes(shapes, str(path), config=config)


def load_latentsync(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                    operations=nn, config: Optional[LatentSyncConfig] = None) -> LatentSyncUNet:
    """Load a LatentSync 1.5 / 1.6 or MuseTalk 1.5 UNet from a safetensors file, strictly checked (eval mode).

    The config is :func:`file_config` (``model.config.family`` tells which family it is) unless ``config`` is
    given; ``operations`` is passed to every layer (``comfy.ops`` in ComfyUI).
    """
    if config is None:
        config = file_config(path)  # from the header: refuse before reading any tensor
    else:
        check_shapes(read_shapes(path), str(path), config=config)
    return build_from_state_dict(_read_cast(path, dtype or torch.float32), str(path), device, dtype, operations,
                                 config)


def _read_cast(path: PathLike, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors, each cast to ``dtype`` as it is read (peak memory: the result plus one tensor)."""
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                tensors[name] = t.to(dtype) if t.is_floating_point() else t
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from exc
    return tensors


# --------------------------------------------------------------------------------------------- exactness


@torch.no_grad()
def reference_forward(path: PathLike, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int],
                      audio: Optional[torch.Tensor] = None, device: Union[str, torch.device, None] = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference UNet's output for the same inputs, from any LatentSync- or MuseTalk-layout safetensors file
    (config from the tensor shapes, see :func:`file_config`).

    * LatentSync (``latentsync.models.unet.UNet3DConditionModel`` built from ``configs/unet/stage2*.yaml``):
      ``sample`` [B,13,F,h,w], ``timestep`` an int / [B] tensor, ``audio`` [B*F,50,384] (b-major: the reference's
      pipeline passes ``torch.cat([zeros, audio])`` for CFG) or [B,F,50,384] or None; returns
      ``unet(sample, timestep, encoder_hidden_states=audio).sample`` [B,4,F,h,w].
    * MuseTalk (diffusers ``UNet2DConditionModel(**musetalk.json)``): ``sample`` [N,8,h,w], ``timestep`` (0 in
      MuseTalk), ``audio`` [N,50,384] as the UNet receives it (Whisper features after MuseTalk's ``PositionalEncoding``,
      see :func:`~.audio_index.musetalk_audio`); returns ``unet(sample, timestep, encoder_hidden_states=audio).sample``.

    Runs in ``dtype`` (float32 for comparisons) on ``device`` (default: the sample's).
    """
    device = torch.device(device) if device is not None else sample.device
    model = load_latentsync(path, device=device, dtype=dtype)
    audio = None if audio is None else audio.to(device=device, dtype=dtype)
    return model(sample.to(device=device, dtype=dtype), timestep, audio)
