"""Safetensors checkpoint I/O shared by every model family: format sniffing, header checks, strict loading
with errors that name the file and the wrong keys, atomic writes.

Pickle-based files (``.pt``, ``.pth``, ``.ckpt``, ``.bin``: zip or raw pickle) are refused without being opened by a
pickle loader, since unpickling can run arbitrary code; ``omnisync convert`` turns a released pickle into
safetensors once with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_output

PathLike = Union[str, os.PathLike]
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_LISTED = 10  # keys listed per category in load errors
CONVERT_HINT = ("Convert it once (only if you trust where it came from) with `omnisync convert IN OUT.safetensors`, "
                "which reads plain tensors only (torch.load(weights_only=True)) and never runs code from the file.")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: wrong format, damaged, or does not match the model."""


# --------------------------------------------------------------------------------------------- save


def export_tensor(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous().clone()  # own storage: safetensors refuses shared tensors


def atomic_save(tensors: dict[str, torch.Tensor], path: PathLike, meta: dict[str, str],
                inputs: Sequence[Optional[PathLike]] = ()) -> None:
    """Write to a temporary file next to ``path`` and rename it into place (``core.files.atomic_output``): never
    leave a partial file, keep an existing ``path`` intact on failure, and refuse (SameFileError, before writing)
    a ``path`` that is one of ``inputs`` (e.g. the checkpoint being converted), also through links."""
    with atomic_output(path, *inputs) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# --------------------------------------------------------------------------------------------- inspect


def sniff_format(path: PathLike) -> str:
    """Identify a weights file from its first bytes, without parsing or unpickling it.

    Returns ``"safetensors"``, ``"zip"`` (PyTorch .pt/.pth/.ckpt archive), ``"pickle"`` (legacy torch.save or raw
    pickle), ``"gguf"``, ``"empty"`` or ``"other"``.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and 1 <= head[1] <= 5:
        return "pickle"
    return "other"


def _refusal(path: PathLike, kind: str) -> CheckpointError:
    if kind in ("zip", "pickle"):
        return CheckpointError(
            f"{path} is a PyTorch pickle/zip checkpoint; the pack loads only .safetensors files because pickle "
            f"files can execute code. {CONVERT_HINT}")
    if kind == "gguf":
        return CheckpointError(f"{path} is a GGUF file; the pack loads only .safetensors checkpoints")
    if kind == "empty":
        return CheckpointError(f"{path} is empty (0 bytes); the download or save was probably interrupted")
    return CheckpointError(f"{path} is not a safetensors file (unrecognised first bytes); "
                           f"the pack loads only .safetensors checkpoints")


def check_path(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    kind = sniff_format(path)
    if kind != "safetensors":
        raise _refusal(path, kind)
    return path


def read_header(path: PathLike) -> dict:
    """Parsed safetensors header of a checked file: {name: {"dtype", "shape", "data_offsets"}, "__metadata__"?}.

    Raises ``FileNotFoundError`` or :class:`CheckpointError` (refused format, truncated file, corrupt header).
    """
    path = check_path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: safetensors header length {n} is implausible; the file is corrupt")
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated: its header alone needs {8 + n} bytes, the file has {size}")
        raw = fh.read(n)
    header = _parse_header(path, raw)
    expected = 8 + n + _data_end(path, header)
    if size < expected:
        raise CheckpointError(f"{path} is truncated: expected {expected} bytes, found {size}")
    return header


def _parse_header(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    return header


def _data_end(path: Path, header: dict) -> int:
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: header entry {name!r} has no valid data_offsets; the file is corrupt") from exc
    return end


def read_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors checkpoint ({} when absent)."""
    meta = read_header(path).get("__metadata__") or {}
    return dict(meta)


def read_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the header only (no tensor data is loaded)."""
    header = read_header(path)
    return {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}


def checkpoint_parameters(path: PathLike) -> int:
    """Parameter count of a checkpoint from its header alone (no tensor is loaded)."""
    return sum(math.prod(shape) for shape in read_shapes(path).values())


def read_tensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checked safetensors file (header verified first)."""
    read_header(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from exc


# --------------------------------------------------------------------------------------------- strict load


def listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def state_dict_mismatches(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """{"missing": [...], "unexpected": [...], "shape": ["name: expected [..], found [..]", ...]}."""
    expected = model.state_dict()
    shape = [f"{k}: expected {list(expected[k].shape)}, found {list(v.shape)}"
             for k, v in state_dict.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    return {
        "missing": sorted(set(expected) - set(state_dict)),
        "unexpected": sorted(set(state_dict) - set(expected)),
        "shape": sorted(shape),
    }


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise :class:`CheckpointError` naming ``source`` and every missing, unexpected and mis-shaped key."""
    problems = state_dict_mismatches(model, state_dict)
    titles = {"missing": "missing keys", "unexpected": "unexpected keys", "shape": "shape mismatches"}
    parts = [listing(titles[k], v) for k, v in problems.items() if v]
    if parts:
        raise CheckpointError(f"{source} does not match the model:\n" + "\n".join(parts))


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            source: str = "state dict") -> None:
    """Strict load; raises :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
