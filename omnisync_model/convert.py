"""One-time conversion of released PyTorch pickles (``.pt`` / ``.pth`` / ``.bin``) to safetensors.

Everything else in the pack loads safetensors only. The released LatentSync, MuseTalk (and other) weights are
pickles, which can run arbitrary code when unpickled; this module reads them with ``torch.load(weights_only=True)``
only, so a file that needs anything but tensors and plain containers is refused, never loaded unsafely.

* :func:`convert_pickle_checkpoint` is generic: it takes the ``state_dict`` entry when the pickle holds one (or
  what a ``select`` callable returns), optionally validates the tensors, and writes the safetensors file atomically
  (a temporary file in the target folder, renamed when complete). The source is opened read-only and never
  modified; a destination that is the source itself (also through a symlink, a hard link or ``..``) is refused.
* :func:`convert_latentsync` / :func:`convert_musetalk` add the family's strict key check, so a wrong file is
  refused before anything is written.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from .core.checkpoint import CheckpointError, PathLike, atomic_save, sniff_format

logger = logging.getLogger(__name__)

__all__ = ["convert_pickle_checkpoint", "convert_latentsync", "convert_musetalk", "read_pickle_tensors"]

MAX_NAMED = 10  # offending keys named in an error
Select = Callable[[Any], Mapping[str, torch.Tensor]]
Validate = Callable[[Mapping[str, torch.Tensor]], None]


# --------------------------------------------------------------------------------------------- paths


def _check_source(src: Path) -> str:
    if not src.exists():
        raise FileNotFoundError(f"checkpoint to convert not found: {src}")
    if src.is_dir():
        raise CheckpointError(f"{src} is a directory, not a checkpoint file")
    kind = sniff_format(src)
    if kind == "safetensors":
        raise CheckpointError(f"{src} is already a safetensors file; there is nothing to convert")
    if kind == "empty":
        raise CheckpointError(f"{src} is empty (0 bytes); the download was probably interrupted")
    if kind not in ("zip", "pickle"):
        raise CheckpointError(f"{src} is not a PyTorch checkpoint (.pt / .pth / .bin: zip or pickle); found {kind}")
    return kind


def _check_destination(src: Path, dst: Path) -> None:
    same = os.path.realpath(src) == os.path.realpath(dst)
    if not same and dst.exists() and not dst.is_dir():
        same = os.path.samefile(src, dst)  # hard links and any path spelling of the same file
    if same:
        raise CheckpointError(f"refusing to convert {src} onto itself ({dst} is the same file); "
                              f"choose another destination, the source is kept untouched")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"the converted file must end in .safetensors; got {dst}")
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a directory; give the path of the .safetensors file to write")


# --------------------------------------------------------------------------------------------- reading


def read_pickle_tensors(src: PathLike) -> Any:
    """``torch.load(src, weights_only=True)`` on the CPU (memory-mapped for zip checkpoints), with clear errors.

    A pickle that needs code (classes, functions) raises :class:`CheckpointError`; nothing from it is executed.
    """
    src = Path(src)
    kind = _check_source(src)
    try:
        return torch.load(src, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{src} needs code to load (it holds Python objects other than tensors and plain containers), so it "
            f"was refused and not unpickled: the converter reads tensors only (torch.load(weights_only=True)). "
            f"Detail: {reason}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{src} cannot be read as a PyTorch checkpoint (damaged or truncated?): {exc}") from exc


def _pick(obj: Any, select: Optional[Select], src: Path) -> Mapping[str, torch.Tensor]:
    if select is not None:
        tensors = select(obj)
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        tensors = obj["state_dict"]
    else:
        tensors = obj
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{src} holds a {type(tensors).__name__}, not a state dict of named tensors")
    bad = [str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        top = sorted(map(str, obj)) if isinstance(obj, Mapping) else []
        raise CheckpointError(f"{src}: {len(bad)} entries are not named tensors (e.g. {bad[:MAX_NAMED]}); "
                              f"top-level keys: {top[:MAX_NAMED]}. Pass select= to pick the state dict")
    if not tensors:
        raise CheckpointError(f"{src} holds no tensors")
    return tensors


def _own_storage(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with its own storage (safetensors refuses shared ones); copies only when needed."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous() or t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes:
            t = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


# --------------------------------------------------------------------------------------------- convert


def check_paths(src: PathLike, dst: PathLike) -> tuple[Path, Path]:
    """Refuse, before anything is read, a source that is no PyTorch pickle and a destination that is not a new
    ``.safetensors`` path distinct from the source (symlinks, hard links and ``..`` spellings included)."""
    src, dst = Path(src), Path(dst)
    _check_source(src)
    _check_destination(src, dst)
    return src, dst


def save_converted(src: Path, dst: Path, tensors: Mapping[str, torch.Tensor], *,
                   validate: Optional[Validate] = None, metadata: Optional[Mapping[str, str]] = None,
                   dtype: Optional[torch.dtype] = None) -> Path:
    """Validate ``tensors`` (raise to refuse), then write them to ``dst`` atomically with ``metadata`` (``source``
    added); the source file is never touched."""
    if validate is not None:
        validate(tensors)
    meta = {"source": src.name, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    atomic_save(_own_storage(tensors, dtype), dst, meta, inputs=(src,))  # refuses dst == src again, atomically
    logger.info("converted %s -> %s (%d tensors)", src, dst, len(tensors))
    return dst


def convert_pickle_checkpoint(src: PathLike, dst: PathLike, *, select: Optional[Select] = None,
                              validate: Optional[Validate] = None, metadata: Optional[Mapping[str, str]] = None,
                              dtype: Optional[torch.dtype] = None) -> Path:
    """Convert a ``.pt`` / ``.pth`` / ``.bin`` pickle to a safetensors file at ``dst``; returns ``dst``.

    select: obj -> {name: tensor} (default: ``obj["state_dict"]`` when present, else obj itself). validate: called
    with the tensors before anything is written (raise to refuse). metadata: string entries stored in the header
    (``source`` is added). dtype: cast floating-point tensors (e.g. ``torch.float16`` halves the file).
    """
    src, dst = check_paths(src, dst)
    tensors = _pick(read_pickle_tensors(src), select, src)
    return save_converted(src, dst, tensors, validate=validate, metadata=metadata, dtype=dtype)


def _family_validator(src: Path, family: str) -> Validate:
    from .families.latentsync.loading import check_shapes

    def validate(tensors: Mapping[str, torch.Tensor]) -> None:
        check_shapes({k: tuple(v.shape) for k, v in tensors.items()}, str(src), family=family)

    return validate


def convert_latentsync(src: PathLike, dst: PathLike, dtype: Optional[torch.dtype] = None) -> Path:
    """``latentsync_unet.pt`` (a dict whose ``state_dict`` holds the UNet: 1,246 tensors for 1.5 / 1.6) ->
    safetensors, after LatentSync's strict key check."""
    return convert_pickle_checkpoint(src, dst, validate=_family_validator(Path(src), "latentsync"),
                                     metadata={"format": "latentsync"}, dtype=dtype)


def convert_musetalk(src: PathLike, dst: PathLike, dtype: Optional[torch.dtype] = None) -> Path:
    """MuseTalk's ``unet.pth`` (1.5) or ``pytorch_model.bin`` (1.0): the UNet2D's state dict itself (686 tensors)
    -> safetensors, after MuseTalk's strict key check."""
    return convert_pickle_checkpoint(src, dst, validate=_family_validator(Path(src), "musetalk"),
                                     metadata={"format": "musetalk"}, dtype=dtype)
