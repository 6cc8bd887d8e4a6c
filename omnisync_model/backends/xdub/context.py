"""The text context X-Dub is always run with: umt5-xxl's states of the empty prompt, made once and kept small.

Facts (X-Dub's pipeline ``diffsynth/pipelines/lip_sync.py`` with DiffSynth's Wan prompter): the prompt is ""; the
tokenizer gives the single end token ``</s>`` (id 1) padded to 512 tokens, umt5-xxl encodes it with the padding
masked out, and every row past the prompt is set to zero. So the whole context is one 4096-wide vector followed by
511 zero rows; :func:`~omnisync_model.families.xdub.pad_context` restores the zeros.

Where it comes from (T5 never stays loaded):
  * ``xdub_context.safetensors`` next to the checkpoint, made once by :func:`make_xdub_context` from a local
    umt5-xxl (a Hugging Face folder with config.json + safetensors, or one safetensors file with Hugging Face T5 key
    names such as ComfyUI's ``umt5_xxl_fp16.safetensors``), run by transformers' ``UMT5EncoderModel``;
  * in ComfyUI, ``CLIPTextEncode("")`` with the umt5 encoder (CLIPLoader type "wan"), whose CONDITIONING has the
    same layout (512 tokens, masked rows zeroed): :func:`context_from_conditioning`.

Shape legend
  L tokens   Ct text width (4096)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ...core.checkpoint import CheckpointError, PathLike, atomic_save, read_header, read_tensors
from ...core.optional import install_hint, require

logger = logging.getLogger(__name__)

__all__ = ["CONTEXT_FILE", "CONTEXT_KEY", "load_context", "save_context", "make_xdub_context",
           "context_from_conditioning", "umt5_config_from_shapes"]

CONTEXT_FILE = "xdub_context.safetensors"
CONTEXT_KEY = "context"
FORMAT = "xdub-context"
EOS_ID = 1  # umt5's </s>: the whole tokenisation of ""
BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
INSTALL_HINT = install_hint("transformers")


def save_context(context: torch.Tensor, dst: PathLike, source: str = "") -> Path:
    """Write the prompt's rows [L, Ct] (trailing zero rows dropped) as ``dst`` (atomic)."""
    ctx = context.detach().float().cpu().reshape(-1, context.shape[-1])  # [1,L,Ct] or [L,Ct] -> [L,Ct]
    rows = int((ctx.abs().sum(dim=-1) > 0).nonzero().max()) + 1 if bool((ctx != 0).any()) else 1
    atomic_save({CONTEXT_KEY: ctx[:rows].contiguous()}, Path(dst), {"format": FORMAT, "prompt": "", "source": source})
    return Path(dst)


def load_context(path: PathLike, text_dim: int) -> torch.Tensor:
    """[1, L, text_dim] float32 from a context file; CheckpointError naming the file when it is not one."""
    header = read_header(path)
    info = header.get(CONTEXT_KEY)
    if info is None:
        raise CheckpointError(f"{path} is not an X-Dub context file: it has no '{CONTEXT_KEY}' tensor (make it with "
                              f"make_xdub_context from a local umt5-xxl)")
    shape = tuple(info["shape"])
    if len(shape) != 2 or shape[1] != text_dim or shape[0] < 1:
        raise CheckpointError(f"{path}: context has shape {list(shape)}; the model takes [L, {text_dim}] "
                              f"(umt5-xxl states)")
    ctx = read_tensors(path)[CONTEXT_KEY].float()
    if not torch.isfinite(ctx).all():
        raise CheckpointError(f"{path}: the context contains NaN or Inf values")
    return ctx[None]  # [L,Ct] -> [1,L,Ct]


def context_from_conditioning(conditioning: Any, text_dim: int) -> torch.Tensor:
    """ComfyUI CONDITIONING (``[[tensor [1, L, Ct], {...}], ...]``, the first entry) -> [1, L, Ct] float32."""
    try:
        cond = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        raise ValueError("context must be a CONDITIONING (CLIPTextEncode with an empty prompt and the umt5 "
                         "encoder)") from None
    if not isinstance(cond, torch.Tensor) or cond.dim() != 3 or cond.shape[0] != 1 or cond.shape[-1] != text_dim:
        shape = list(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"context CONDITIONING must be [1, L, {text_dim}] (umt5-xxl, CLIPLoader type 'wan'); "
                         f"got {shape}: is the text encoder umt5-xxl?")
    return cond.detach().float().cpu()


# --------------------------------------------------------------------------------------------- the converter


def umt5_config_from_shapes(shapes: dict, source: str):
    """transformers ``UMT5Config`` of a Hugging Face T5-named encoder state dict, from its tensor shapes."""
    transformers = _require_transformers()
    try:
        vocab, d_model = shapes["shared.weight"] if "shared.weight" in shapes else shapes["encoder.embed_tokens.weight"]
        layers = len({int(m.group(1)) for k in shapes if (m := BLOCK.match(k))})
        d_ff = shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0]
        buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source} is not a umt5 encoder with Hugging Face T5 key names (missing or odd "
                              f"{exc}); ComfyUI's scaled-fp8 files and Wan's original T5 layout are not read: use "
                              f"umt5_xxl_fp16.safetensors or the google/umt5-xxl folder") from None
    return transformers.UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                                   num_layers=layers, num_heads=heads, relative_attention_num_buckets=buckets,
                                   relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                                   is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)


def _require_transformers():
    return require("transformers", "the umt5 context converter")

def _umt5_files(src: Path) -> tuple[Optional[Path], list[Path]]:
    """(config.json or None, weight files) of a umt5 folder or single file; CheckpointError naming what is missing."""
    if src.is_file():
        return None, [src]
    if not src.is_dir():
        raise FileNotFoundError(f"umt5 encoder not found: {src}")
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{src} holds no .safetensors weights (pickled .bin files are not read)")
    config = src / "config.json"
    return (config if config.is_file() else None), files


def _load_umt5(src: Path, dtype: torch.dtype):
    transformers = _require_transformers()
    config_path, files = _umt5_files(src)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(read_tensors(f))
    if any("scale_weight" in k or k.endswith(".scaled_fp8") or k == "scaled_fp8" for k in tensors):
        raise CheckpointError(f"{src} is a scaled-fp8 text encoder; use the fp16 / bf16 umt5-xxl file")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    tensors.setdefault("encoder.embed_tokens.weight", tensors.get("shared.weight"))
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    if config_path is not None:
        config = transformers.UMT5Config.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    else:
        config = umt5_config_from_shapes(shapes, str(src))
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    bad = sorted(k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or bad:
        raise CheckpointError(f"{src} does not match a umt5 encoder of its config: missing {missing[:8]}, "
                              f"mis-shaped {bad[:8]}")
    model.load_state_dict({k: tensors[k].to(dtype) for k in expected}, strict=True, assign=True)
    return model.eval().requires_grad_(False), config


@torch.no_grad()
def make_xdub_context(src: PathLike, dst: PathLike, dtype: torch.dtype = torch.float32,
                      device: Union[str, torch.device] = "cpu") -> Path:
    """Run a local umt5-xxl (``src``: folder or safetensors file; never downloaded) on the empty prompt and write
    X-Dub's context file ``dst`` (``xdub_context.safetensors``, 16 KB). The reference runs umt5 in bf16: pass
    ``dtype=torch.bfloat16`` for its exact numbers."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.is_dir():
        dst = dst / CONTEXT_FILE
    model, config = _load_umt5(src, dtype)
    model = model.to(device)
    eos = config.eos_token_id if config.eos_token_id is not None else EOS_ID
    ids = torch.tensor([[eos]], device=device)  # "" -> [</s>]
    states = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # [1,1,Ct]
    out = save_context(states.float(), dst, source=src.name)
    logger.info("wrote %s: the umt5 states of the empty prompt (%d x %d) from %s", out, states.shape[1],
                states.shape[2], src)
    return out
