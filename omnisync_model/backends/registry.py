"""Which model family a checkpoint belongs to, and how to load it as a backend.

Detection reads the safetensors header only (tensor names, shapes, metadata); no tensor is loaded and nothing is
unpickled. Each family contributes one :class:`BackendSpec`; the tuple :data:`SPECS` is the whole registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..core.checkpoint import CheckpointError, PathLike, read_header
from ..core.codec import Codec
from ..sampling.backend import Backend
from .latentsync import loading as latentsync_loading
from .xdub import loading as xdub_loading

logger = logging.getLogger(__name__)

__all__ = ["BackendSpec", "SPECS", "detect_family", "load_backend", "load_for_cli", "as_backend"]

Shapes = Mapping[str, tuple]


@dataclass(frozen=True)
class BackendSpec:
    """name: the family; title: how errors and the loader name it; detect(shapes, metadata) -> bool from the
    header alone; load(path, device, dtype, operations) -> Backend with strict key and shape checks;
    load_cli(path, device, vae, audio_models) -> (Backend, Codec or None): everything the command line needs from
    local files (the VAE through diffusers, the speech encoders), or None when ``load`` is enough."""

    name: str
    title: str
    detect: Callable[[Shapes, Mapping[str, str]], bool]
    load: Callable[..., Backend]
    load_cli: Optional[Callable[..., tuple[Backend, Optional[Codec]]]] = None


def _omnisync_detect(shapes: Shapes, meta: Mapping[str, str]) -> bool:
    return meta.get("format") == "omnisync" or ("dit.patch_embed.weight" in shapes and "dit.null_audio" in shapes)


def _omnisync_load(path: PathLike, device: Union[str, torch.device] = "cpu", dtype=None, operations=nn) -> Backend:
    from ..families.omnisync.weights import load_checkpoint
    from .omnisync import OmniSyncBackend

    return OmniSyncBackend(load_checkpoint(path, device=device, dtype=dtype, operations=operations))


SPECS: tuple[BackendSpec, ...] = (
    BackendSpec("omnisync", "OmniSync DiT", _omnisync_detect, _omnisync_load),
    BackendSpec("xdub", "X-Dub (Wan2.2-TI2V-5B lip sync)", xdub_loading.detect, xdub_loading.load, xdub_loading.load_cli),
    BackendSpec("latentsync", "LatentSync 1.5 / 1.6, MuseTalk 1.5 (SD-1.5 UNet)", latentsync_loading.detect,
                latentsync_loading.load, latentsync_loading.load_cli),
)


def _header_parts(path: PathLike) -> tuple[dict, dict]:
    header = read_header(path)
    meta = dict(header.get("__metadata__") or {})
    shapes = {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    return shapes, meta


def detect_family(path: PathLike) -> BackendSpec:
    """The spec of the family ``path`` belongs to; :class:`CheckpointError` naming the known families if none."""
    shapes, meta = _header_parts(path)
    for spec in SPECS:
        if spec.detect(shapes, meta):
            return spec
    known = ", ".join(s.title for s in SPECS)
    sample = ", ".join(sorted(shapes)[:5])
    raise CheckpointError(f"{path} is not a checkpoint of any model family this pack runs ({known}); "
                          f"its first tensors are: {sample or 'none'}")


def load_backend(path: PathLike, device: Union[str, torch.device] = "cpu", dtype=None, operations=nn) -> Backend:
    """Detect the family of ``path`` and load it as a :class:`Backend` (strict key and shape checks)."""
    spec = detect_family(path)
    logger.info("%s: %s checkpoint", path, spec.title)
    return spec.load(path, device=device, dtype=dtype, operations=operations)


def spec_named(name: str) -> BackendSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise CheckpointError(f"unknown backend {name!r}; this pack runs: {', '.join(s.name for s in SPECS)}")


def load_for_cli(name: str, path: PathLike, device: Union[str, torch.device] = "cpu",
                 vae: Optional[PathLike] = None, audio_models: Optional[PathLike] = None
                 ) -> tuple[Backend, Optional[Codec]]:
    """(backend, codec or None for the backend's own) for the command line. ``name`` "auto" detects the family
    from ``path`` (a .safetensors file; a folder is searched for the family's main file by its ``load_cli``)."""
    path = Path(path)
    spec = detect_family(path) if name == "auto" and path.is_file() else None
    if spec is None:
        if name == "auto":
            raise CheckpointError(f"{path} is a folder: say which backend it holds with --backend")
        spec = spec_named(name)
    if spec.load_cli is not None:
        return spec.load_cli(path, device=device, vae=vae, audio_models=audio_models)
    if vae is not None or audio_models is not None:
        logger.warning("the %s backend uses neither --vae nor --audio-models; ignoring them", spec.title)
    return spec.load(path, device=device), None


def as_backend(model: Union[Backend, nn.Module]) -> Backend:
    """A backend as is; an :class:`OmniSyncModel` wrapped in its backend (for callers holding a bare model)."""
    if isinstance(model, Backend):
        return model
    from ..families.omnisync.model import OmniSyncModel
    from .omnisync import OmniSyncBackend

    if isinstance(model, OmniSyncModel):
        return OmniSyncBackend(model)
    raise TypeError(f"expected a Backend or an OmniSyncModel, got {type(model).__name__}")
