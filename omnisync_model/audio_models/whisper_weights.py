"""Whisper encoder weights: OpenAI checkpoint dims and key names -> transformers ``WhisperEncoder``, the one-time
``.pt`` -> safetensors converter, and the strict loader of converted files.

The network is transformers' ``WhisperEncoder`` built from a config (never by name from a model hub).
OpenAI checkpoints (``tiny.pt``, ``large-v2.pt``) are ``{"dims": {...}, "model_state_dict": {...}}``; only the
encoder half is kept. Name map (OpenAI -> transformers), per block ``i``::

    encoder.conv1.* / conv2.*            -> conv1.* / conv2.*
    encoder.positional_embedding [C, D]  -> embed_positions.weight [C, D]   (fixed sinusoids in OpenAI's file)
    encoder.blocks.i.attn.query|key|value|out.*  -> layers.i.self_attn.q_proj|k_proj|v_proj|out_proj.*
    encoder.blocks.i.attn_ln.*           -> layers.i.self_attn_layer_norm.*
    encoder.blocks.i.mlp.0.* / mlp.2.*   -> layers.i.fc1.* / fc2.*
    encoder.blocks.i.mlp_ln.*            -> layers.i.final_layer_norm.*
    encoder.ln_post.*                    -> layer_norm.*

The key projection has no bias on either side (OpenAI ``Linear(n, n, bias=False)``, transformers
``k_proj = nn.Linear(..., bias=False)``). OpenAI scales q and k by d_head^-0.25 each, transformers q by d_head^-0.5:
the same logits.

Shape legend
  M   mel bins (n_mels)       C   audio context (n_audio_ctx, 1500 = 30 s at 50 Hz)
  D   width (n_audio_state)   H   heads (n_audio_head)      L   blocks (n_audio_layer)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..core.checkpoint import CheckpointError, PathLike, read_header, read_metadata
from ..convert import check_paths, read_pickle_tensors, save_converted
from ..core.checkpoint import check_state_dict, listing
from .common import require_transformers

logger = logging.getLogger(__name__)

__all__ = ["ENCODER_DIMS", "WHISPER_FORMAT", "whisper_config_from_dims", "openai_to_transformers_keys",
           "hf_whisper_to_encoder_keys", "infer_whisper_dims", "convert_openai_whisper", "load_whisper_encoder",
           "build_whisper_encoder"]

ENCODER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
WHISPER_FORMAT = "omnisync-whisper-encoder"  # metadata "format" of our converted files
HEAD_DIM = 64  # every released Whisper uses 64-wide heads (tiny 384/6 ... large 1280/20)

_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "attn.query.weight": "self_attn.q_proj.weight", "attn.query.bias": "self_attn.q_proj.bias",
    "attn.key.weight": "self_attn.k_proj.weight",
    "attn.value.weight": "self_attn.v_proj.weight", "attn.value.bias": "self_attn.v_proj.bias",
    "attn.out.weight": "self_attn.out_proj.weight", "attn.out.bias": "self_attn.out_proj.bias",
    "attn_ln.weight": "self_attn_layer_norm.weight", "attn_ln.bias": "self_attn_layer_norm.bias",
    "mlp.0.weight": "fc1.weight", "mlp.0.bias": "fc1.bias",
    "mlp.2.weight": "fc2.weight", "mlp.2.bias": "fc2.bias",
    "mlp_ln.weight": "final_layer_norm.weight", "mlp_ln.bias": "final_layer_norm.bias",
}
_TOP = {
    "encoder.conv1.weight": "conv1.weight", "encoder.conv1.bias": "conv1.bias",
    "encoder.conv2.weight": "conv2.weight", "encoder.conv2.bias": "conv2.bias",
    "encoder.positional_embedding": "embed_positions.weight",
    "encoder.ln_post.weight": "layer_norm.weight", "encoder.ln_post.bias": "layer_norm.bias",
}


# --------------------------------------------------------------------------------------------- config


def _encoder_dims(dims: Mapping[str, Any], source: str = "dims") -> dict[str, int]:
    if not isinstance(dims, Mapping):
        raise CheckpointError(f"{source}: Whisper dims must be a mapping, got {type(dims).__name__}")
    missing = [k for k in ENCODER_DIMS if k not in dims]
    if missing:
        raise CheckpointError(f"{source}: Whisper dims lack {', '.join(missing)}")
    out = {}
    for key in ENCODER_DIMS:
        value = dims[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{source}: Whisper dim {key} must be a positive integer, got {value!r}")
        out[key] = value
    if out["n_audio_state"] % out["n_audio_head"] or out["n_audio_state"] % 2:
        raise CheckpointError(f"{source}: n_audio_state {out['n_audio_state']} must be even and divisible by "
                              f"n_audio_head {out['n_audio_head']}")
    return out


def whisper_config_from_dims(dims: Mapping[str, Any]):
    """A transformers ``WhisperConfig`` for the encoder described by OpenAI dims (extra dims such as n_vocab or
    the text decoder's are ignored). Dropouts are zero; attention runs through PyTorch SDPA."""
    d = _encoder_dims(dims)
    transformers = require_transformers()
    config = transformers.WhisperConfig(
        num_mel_bins=d["n_mels"], max_source_positions=d["n_audio_ctx"], d_model=d["n_audio_state"],
        encoder_attention_heads=d["n_audio_head"], encoder_layers=d["n_audio_layer"],
        encoder_ffn_dim=4 * d["n_audio_state"], activation_function="gelu", scale_embedding=False,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0)
    config._attn_implementation = "sdpa"
    return config


def infer_whisper_dims(shapes: Mapping[str, tuple[int, ...]], source: str = "checkpoint") -> dict[str, int]:
    """Encoder dims from transformers-named shapes (heads assumed 64 wide, as in every released Whisper)."""
    try:
        n_state, n_mels, _ = shapes["conv1.weight"]
        n_ctx = shapes["embed_positions.weight"][0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a Whisper encoder (no conv1.weight [D, M, 3] / "
                              f"embed_positions.weight)") from exc
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"^layers\.(\d+)\.", k))}
    if n_state % HEAD_DIM:
        raise CheckpointError(f"{source}: width {n_state} is not a multiple of {HEAD_DIM}; the head count cannot "
                              "be inferred, convert the file with convert_openai_whisper (dims in metadata)")
    return {"n_mels": n_mels, "n_audio_ctx": n_ctx, "n_audio_state": n_state,
            "n_audio_head": n_state // HEAD_DIM, "n_audio_layer": len(layers)}


# --------------------------------------------------------------------------------------------- keys


def openai_to_transformers_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder tensors of an OpenAI-format Whisper state dict under transformers ``WhisperEncoder`` names.

    ``decoder.*`` keys are dropped; any other key that does not map (e.g. an ``attn.key.bias``) is an error
    naming it. Completeness against the dims is checked by the converter and the loader.
    """
    out, unmapped = {}, []
    for key, value in state_dict.items():
        if key.startswith("decoder."):
            continue
        block = _BLOCK.match(key)
        if key in _TOP:
            out[_TOP[key]] = value
        elif block and block.group(2) in _BLOCK_PARTS:
            out[f"layers.{block.group(1)}.{_BLOCK_PARTS[block.group(2)]}"] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError("OpenAI Whisper state dict has keys with no WhisperEncoder counterpart:\n"
                              + listing("unmapped keys", sorted(unmapped)))
    return out


def hf_whisper_to_encoder_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder tensors of a Hugging Face Whisper checkpoint (``model.encoder.*``, ``encoder.*``) without the
    prefix; decoder and head keys are dropped. Already-bare encoder keys pass through."""
    prefixes = ("model.encoder.", "encoder.")
    if not any(k.startswith(prefixes) for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
                break
    return out


def build_whisper_encoder(dims: Mapping[str, Any], device: Union[str, torch.device] = "meta"):
    """transformers ``WhisperEncoder`` for ``dims`` (on ``meta`` by default: shapes only, no memory)."""
    config = whisper_config_from_dims(dims)  # raises the install hint when transformers is missing
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device(device):
        encoder = WhisperEncoder(config)
    return encoder.eval()


# --------------------------------------------------------------------------------------------- convert / load


def convert_openai_whisper(src: PathLike, dst: PathLike) -> Path:
    """Convert an OpenAI Whisper ``.pt`` (``tiny.pt``, ``large-v2.pt``) into an encoder-only safetensors file
    with transformers names and the encoder dims as JSON metadata (``whisper_dims``). Read with
    ``torch.load(weights_only=True)`` only; written atomically; refuses ``dst`` that is ``src``."""
    src, dst = check_paths(src, dst)
    ckpt = read_pickle_tensors(src)
    if not isinstance(ckpt, Mapping) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{src} is not an OpenAI Whisper checkpoint: expected keys 'dims' and "
                              f"'model_state_dict', found {found}")
    dims = _encoder_dims(ckpt["dims"], f"{src} dims")
    state = ckpt["model_state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{src}: model_state_dict must map names to tensors")
    tensors = openai_to_transformers_keys(state)
    check_state_dict(build_whisper_encoder(dims), tensors, f"{src} (Whisper encoder of dims {dims})")
    meta = {"format": WHISPER_FORMAT, "whisper_dims": json.dumps(dims, sort_keys=True)}
    return save_converted(src, dst, tensors, metadata=meta)


def _dims_for(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    meta = read_metadata(path)
    if "whisper_dims" in meta:
        try:
            dims = json.loads(meta["whisper_dims"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata whisper_dims is not JSON: {exc}") from exc
        return _encoder_dims(dims, f"{path} metadata whisper_dims")
    return infer_whisper_dims(shapes, str(path))


def _read_encoder_tensors(path: Path, device: Union[str, torch.device]) -> dict[str, torch.Tensor]:
    """Only the encoder tensors of a (checked) file, under bare names: a full HF checkpoint's decoder is never
    read onto the device."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            names = hf_whisper_to_encoder_keys({k: k for k in fh.keys()})  # bare name -> stored name
            return {bare: fh.get_tensor(stored) for bare, stored in names.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from exc


def load_whisper_encoder(path: PathLike, device: Union[str, torch.device] = "cpu",
                         dtype: Optional[torch.dtype] = torch.float32):
    """A strict-loaded transformers ``WhisperEncoder`` (eval, no grad) from our converted safetensors (dims from
    metadata) or a Hugging Face Whisper safetensors (encoder keys; dims inferred from shapes, 64-wide heads).
    OpenAI ``.pt`` files are refused with the conversion hint (read_header sniffs the format)."""
    path = Path(path)
    header = read_header(path)
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    if any(k.startswith("encoder.blocks.") for k in shapes):
        raise CheckpointError(f"{path} uses OpenAI key names; convert the original .pt with "
                              "convert_openai_whisper (or `omnisync convert`)")
    bare_shapes = hf_whisper_to_encoder_keys(shapes)
    dims = _dims_for(path, bare_shapes)
    encoder = build_whisper_encoder(dims)
    tensors = _read_encoder_tensors(path, device)
    check_state_dict(encoder, tensors, f"{path} (Whisper encoder of dims {dims})")
    encoder.load_state_dict(tensors, strict=True, assign=True)
    encoder = encoder.to(device=device, dtype=dtype) if dtype is not None else encoder.to(device)
    encoder.requires_grad_(False)
    return encoder.eval()
