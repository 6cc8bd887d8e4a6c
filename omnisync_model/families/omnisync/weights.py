"""OmniSync checkpoints: save, read the config (metadata or inferred from shapes), load strictly.

Generic safetensors checks live in ``core/checkpoint.py``. A checkpoint is one safetensors file holding ``OmniSyncModel.state_dict()`` with metadata
``{"format": "omnisync", "format_version": "1", "omnisync_config": <OmniSyncConfig JSON>, ...}``.
Pickle-based files (``.pt``, ``.pth``, ``.ckpt``, zip or raw pickle) are refused without being opened by a
pickle loader: unpickling can run arbitrary code. Files without metadata are accepted; their config is rebuilt
from the tensor shapes (:func:`infer_config`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ...core.checkpoint import (CheckpointError, PathLike, atomic_save, checkpoint_parameters, export_tensor,
                                load_state_dict_checked, read_header, read_metadata, read_tensors)
from ...core.files import refuse_same_file
from .config import OmniSyncConfig
from .model import OmniSyncModel

logger = logging.getLogger(__name__)

FORMAT_NAME = "omnisync"
FORMAT_VERSION = 1
RESERVED_METADATA = ("format", "format_version", "omnisync_config")


# --------------------------------------------------------------------------------------------- save


def save_checkpoint(path: PathLike, model: OmniSyncModel, metadata: Optional[Mapping[str, str]] = None,
                    dtype: Optional[torch.dtype] = None, inputs: Sequence[Optional[PathLike]] = ()) -> Path:
    """Write ``model``'s weights and config to a safetensors file, atomically; returns the path.

    ``dtype`` casts floating-point tensors (e.g. ``torch.float16`` halves the file). ``metadata`` adds string
    entries; the reserved keys ``format``, ``format_version`` and ``omnisync_config`` cannot be overridden.
    ``inputs``: files ``path`` must not be (refused before anything is written, also through links).
    """
    path = refuse_same_file(path, *inputs)
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(RESERVED_METADATA))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved")
    bad = sorted(k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str))
    if bad:
        raise ValueError(f"metadata keys and values must be strings; offending keys: {bad}")
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
            "omnisync_config": model.config.to_json(), **extra}
    tensors = {name: export_tensor(t, dtype) for name, t in model.state_dict().items()}
    atomic_save(tensors, path, meta, inputs=inputs)
    logger.info("saved %d tensors to %s", len(tensors), path)
    return path


# --------------------------------------------------------------------------------------------- inspect


def read_config(path: PathLike) -> OmniSyncConfig:
    """The checkpoint's config: from its metadata, else inferred from its tensor shapes."""
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    if "omnisync_config" in meta:
        return _config_from_metadata(path, meta)
    logger.warning("%s has no OmniSync metadata; inferring the config from tensor shapes", path)
    shapes = {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    try:
        return infer_config(shapes)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: no OmniSync metadata and the config cannot be inferred: {exc}") from exc


def _config_from_metadata(path: PathLike, meta: Mapping[str, str]) -> OmniSyncConfig:
    fmt = meta.get("format", FORMAT_NAME)
    if fmt != FORMAT_NAME:
        raise CheckpointError(f"{path}: metadata format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version", str(FORMAT_VERSION))
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this code supports "
                              f"({FORMAT_VERSION}); update the OmniSync node pack")
    try:
        return OmniSyncConfig.from_json(meta["omnisync_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the stored omnisync_config is invalid: {exc}") from exc


# --------------------------------------------------------------------------------------------- inference


def _count_indexed(shapes: Mapping[str, Sequence[int]], prefix: str) -> int:
    """Number of consecutive modules ``prefix.<i>.`` present (0, 1, ... without gaps)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
    if found != set(range(len(found))):
        raise ValueError(f"{prefix} indices are not consecutive from 0: {sorted(found)}")
    return len(found)


def _patch_size(out_patch: int, preferred: int) -> int:
    """proj_out gives C * p * p only: keep the preferred p when it divides, else fall back to p = 1."""
    if out_patch % (preferred * preferred) == 0:
        return preferred
    logger.warning("output width %d is not divisible by patch_size^2 = %d; assuming patch_size 1",
                   out_patch, preferred * preferred)
    return 1


def infer_config(shapes: Mapping[str, Sequence[int]], defaults: Optional[OmniSyncConfig] = None) -> OmniSyncConfig:
    """Rebuild an :class:`OmniSyncConfig` from a state dict's tensor shapes ({name: shape}).

    Inferred: in_channels, dim, depth, heads (from the QK-norm width = head dim), ffn_mult, qk_norm, condition,
    audio_dim, audio_tokens, n_mels, audio_layers, external_audio_dim, text_dim.
    Not recoverable from shapes, so taken from ``defaults`` (the dataclass field defaults when None): name, prediction, audio_rate,
    rope_theta, codec, extra, and heads when the model has no QK norm. ``patch_size`` is ambiguous (the
    weights only fix in_channels * patch_size^2): ``defaults.patch_size`` is kept when it divides, else 1.
    """
    base = defaults.to_dict() if defaults is not None else _field_defaults()
    shapes = {name: tuple(shape) for name, shape in shapes.items()}
    dim, in_patch = shapes["dit.patch_embed.weight"]
    out_patch = shapes["dit.proj_out.weight"][0]
    condition = "token" if "dit.source_embed.weight" in shapes else "channel"
    expect_in = out_patch * (2 if condition == "channel" else 1)
    if in_patch != expect_in:
        raise ValueError(f"patch_embed input width {in_patch} does not match proj_out width {out_patch} "
                         f"for condition={condition!r}")
    patch = _patch_size(out_patch, base["patch_size"])
    audio_tokens, audio_dim = shapes["dit.null_audio"]
    q_norm = shapes.get("dit.blocks.0.spatial.q_norm.weight")
    ext = shapes.get("feature_adapter.fc1.weight")
    text = shapes.get("dit.blocks.0.text.kv.weight")
    inferred = dict(
        in_channels=out_patch // (patch * patch), patch_size=patch, dim=dim,
        depth=_count_indexed(shapes, "dit.blocks"),
        heads=dim // q_norm[0] if q_norm is not None else base["heads"],
        ffn_mult=shapes["dit.blocks.0.ffn.fc1.weight"][0] / dim, qk_norm=q_norm is not None, condition=condition,
        audio_dim=audio_dim, audio_tokens=audio_tokens, n_mels=shapes["audio_encoder.conv1.weight"][1],
        audio_layers=_count_indexed(shapes, "audio_encoder.layers"),
        external_audio_dim=ext[1] if ext is not None else 0, text_dim=text[1] if text is not None else 0,
    )
    return OmniSyncConfig.from_dict({**base, **inferred})


def _field_defaults() -> dict:
    """Field defaults of OmniSyncConfig, without constructing (and validating) a default instance."""
    out = {}
    for f in dataclasses.fields(OmniSyncConfig):
        out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


# --------------------------------------------------------------------------------------------- load


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None,
                    operations=nn) -> OmniSyncModel:
    """Load a safetensors checkpoint into a new :class:`OmniSyncModel` in eval mode.

    The model is built on the CPU, loaded strictly, then moved to ``device``. ``dtype`` None keeps float32
    (stored float16 / bfloat16 weights are upcast on load). ``operations`` is passed to the layers (comfy.ops).
    """
    config = read_config(path)
    state_dict = read_tensors(path)
    model = OmniSyncModel(config, dtype=dtype, operations=operations)
    load_state_dict_checked(model, state_dict, source=str(path))
    logger.info("loaded %s (%s, %d tensors)", path, config.name, len(state_dict))
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------- shipped model

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
DEMO_CHECKPOINT = "omnisync_small_demo.safetensors"


def default_checkpoint() -> Optional[Path]:
    """The demo checkpoint shipped inside the package, or None when it is absent."""
    path = ASSETS_DIR / DEMO_CHECKPOINT
    return path if path.is_file() else None


def read_checkpoint_info(path: PathLike) -> tuple[OmniSyncConfig, dict[str, str], int]:
    """(config, metadata, parameter count) from the header alone, without loading tensors."""
    return read_config(path), read_metadata(path), checkpoint_parameters(path)
