"""Loading X-Dub checkpoints (``X-Dub_model.safetensors`` or any X-Dub-layout file of any width and depth).

Order of checks, all before any tensor data is read: the file is a complete safetensors file (not a pickle, not
truncated), its keys are X-Dub's (a plain Wan2.2 DiT without the audio layers is refused and named as such), the
config inferred from its shapes builds a model whose names and shapes equal the file's exactly, and every tensor is
floating point. Then tensors are read one by one, cast to the requested dtype (Linear weights to ``weight_dtype``
when it is given, e.g. ``torch.float8_e4m3fn``) and assigned to a model built on the meta device (no random init
of 6.3B parameters).
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ...core.checkpoint import CheckpointError, PathLike, load_state_dict_checked, read_header
from .config import (
    AUDIO_HEAD_DIM,
    RELEASED_HASH,
    WAN_HEAD_DIM,
    XDubConfig,
    describe_layout,
    detect_xdub,
    diffsynth_hash,
    infer_config,
)
from .dit import XDubModel
from .ops import CastOps

logger = logging.getLogger(__name__)

PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI-saved copies carry one of these
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
HEAD_DIM_KEY, AUDIO_HEAD_DIM_KEY = "xdub.head_dim", "xdub.audio_head_dim"  # optional metadata for non-128 heads


def _strip_prefix(names: list[str]) -> str:
    for prefix in PREFIXES:
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return ""


def _head_dims(meta: Mapping[str, str], head_dim: Optional[int], audio_head_dim: Optional[int]) -> tuple[int, int]:
    hd = head_dim if head_dim is not None else int(meta.get(HEAD_DIM_KEY, WAN_HEAD_DIM))
    ad = audio_head_dim if audio_head_dim is not None else int(meta.get(AUDIO_HEAD_DIM_KEY, AUDIO_HEAD_DIM))
    return hd, ad


def read_xdub_config(path: PathLike, head_dim: Optional[int] = None,
                     audio_head_dim: Optional[int] = None) -> tuple[XDubConfig, dict, str]:
    """(config, header, key prefix) of an X-Dub file, from its header alone; :class:`CheckpointError` otherwise."""
    header = read_header(path)
    meta = dict(header.get("__metadata__") or {})
    names = [k for k in header if k != "__metadata__"]
    prefix = _strip_prefix(names)
    shapes = {k[len(prefix):]: tuple(header[k]["shape"]) for k in names}
    if not detect_xdub(shapes):
        raise CheckpointError(f"{path} is not an X-Dub checkpoint: {describe_layout(shapes)}")
    try:
        config = infer_config(shapes, *_head_dims(meta, head_dim, audio_head_dim), name="xdub")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    bad = sorted(k for k in names if header[k].get("dtype") not in FLOAT_DTYPES)
    if bad:
        raise CheckpointError(f"{path}: tensors that are not floating point: {bad[:10]}")
    return config, header, prefix


def linear_weight_names(model: nn.Module) -> set[str]:
    """Names of the Linear weights (what weight-only fp8 stores in fp8)."""
    return {f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


def _read(path: PathLike, model: XDubModel, prefix: str, dtype: torch.dtype,
          weight_dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    low = linear_weight_names(model) if weight_dtype is not None else set()
    out = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for name in model.state_dict():
                out[name] = fh.get_tensor(prefix + name).to(weight_dtype if name in low else dtype)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from exc
    return out


def load_xdub(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = torch.bfloat16,
              operations=nn, weight_dtype: Optional[torch.dtype] = None, head_dim: Optional[int] = None,
              audio_head_dim: Optional[int] = None) -> XDubModel:
    """An :class:`XDubModel` (eval mode, no gradients) with the weights of ``path``.

    dtype: the dtype of every tensor and of the computation (bf16 by default and for None; float32 for exactness).
    weight_dtype: store the Linear weights in this dtype instead (``torch.float8_e4m3fn``: weight-only fp8, upcast
    per layer in forward); with ``operations=torch.nn`` the casting layers :class:`.ops.CastOps` are used.
    head_dim / audio_head_dim: head widths when they are not 128 / 64 (or stored as metadata ``xdub.head_dim`` /
    ``xdub.audio_head_dim``). Raises :class:`CheckpointError` naming the file and the offending keys.
    """
    dtype = dtype if dtype is not None else torch.bfloat16
    config, header, prefix = read_xdub_config(path, head_dim, audio_head_dim)
    if weight_dtype is not None and weight_dtype != dtype and operations is nn:
        operations = CastOps
    model = XDubModel(config, device="meta", dtype=dtype, operations=operations)
    shapes = {k[len(prefix):]: torch.empty(header[k]["shape"], device="meta") for k in header if k != "__metadata__"}
    load_state_dict_checked(model, shapes, source=str(path))  # names and shapes only: meta tensors hold no data
    model.load_state_dict(_read(path, model, prefix, dtype, weight_dtype), strict=True, assign=True)
    key_hash = diffsynth_hash({k: tuple(v.shape) for k, v in shapes.items()})
    logger.info("loaded %s: X-Dub %d blocks, width %d, %s%s", path, config.depth, config.dim, dtype,
                " (the released model)" if key_hash == RELEASED_HASH else "")
    return model.to(device).eval().requires_grad_(False)
