"""OmniSyncModelLoader: a safetensors checkpoint from models/omnisync (or the pack's shipped one) -> OMNISYNC_MODEL.

The family (OmniSync DiT, X-Dub) is detected from the file's header. Weights are built from ``comfy.ops`` layers and
wrapped in a ModelPatcher, so ComfyUI's memory manager loads, offloads and (in low VRAM) partially loads them.
X-Dub also needs the umt5 states of the empty prompt: the optional ``context`` input (CLIPTextEncode("") with the
umt5 encoder) or ``xdub_context.safetensors`` next to the checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import folder_paths

from ..omnisync_model.backends.registry import detect_family, load_backend
from ..omnisync_model.backends.xdub import loading as xdub_loading
from ..omnisync_model.backends.xdub.context import CONTEXT_FILE, context_from_conditioning
from ..omnisync_model.core.checkpoint import CheckpointError, checkpoint_parameters
from ..omnisync_model.families.omnisync.weights import ASSETS_DIR, DEMO_CHECKPOINT
from .runtime import OmniSyncHolder
from .types import CATEGORY, OmniModel

log = logging.getLogger(__name__)

FOLDER = "omnisync"
FP8 = "fp8_e4m3fn"  # weight-only fp8: Linear weights stored in float8 e4m3, computed in bf16 (X-Dub)
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, FP8: torch.bfloat16}
_CACHE: dict[tuple, object] = {}  # (path, mtime_ns, size, dtype) -> ModelPatcher; module level (nodes are cloned)


@functools.lru_cache(maxsize=1)
def log_licence_note() -> None:
    """X-Dub's use limit, logged once per session."""
    log.warning("OmniSync: %s. Use it accordingly.", xdub_loading.LICENCE_NOTE)


def register_model_folder() -> None:
    """models/omnisync plus the pack's shipped assets folder, listing .safetensors files only."""
    for path in (os.path.join(folder_paths.models_dir, FOLDER), str(ASSETS_DIR)):
        folder_paths.add_model_folder_path(FOLDER, path)
    extensions = folder_paths.folder_names_and_paths[FOLDER][1]
    extensions.clear()
    extensions.add(".safetensors")


register_model_folder()


def checkpoint_names() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def resolve_checkpoint(name: str) -> str:
    """Full path of a listed checkpoint; a clear error for unknown names (V3 combos are not validated)."""
    names = checkpoint_names()
    if not isinstance(name, str) or name not in names:
        listed = ", ".join(names[:10]) or "none"
        raise FileNotFoundError(f"OmniSync checkpoint {name!r} not found in models/{FOLDER} "
                                f"({', '.join(folder_paths.get_folder_paths(FOLDER))}); available: {listed}")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"OmniSync checkpoint {name!r} disappeared from models/{FOLDER}")
    return path


def pick_dtype(choice: str, n_params: int, device: torch.device) -> torch.dtype:
    if choice not in DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(DTYPES)}, got {choice!r}")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    return mm.unet_dtype(device=device, model_params=n_params, supported_dtypes=[torch.bfloat16, torch.float32])


def _build_backend(path: str, spec_name: str, dtype: torch.dtype, weight_dtype: str, context):
    ops = comfy.ops.manual_cast
    if spec_name == "xdub":
        log_licence_note()
        fp8 = torch.float8_e4m3fn if weight_dtype == FP8 else None
        return xdub_loading.load(path, device="cpu", dtype=dtype, operations=ops, context=context, weight_dtype=fp8)
    if weight_dtype == FP8:
        raise ValueError(f"weight_dtype {FP8} is for X-Dub checkpoints; {os.path.basename(path)} is a "
                         f"{spec_name} checkpoint")
    return load_backend(path, device="cpu", dtype=dtype, operations=ops)


def _xdub_context(path: str, conditioning):
    """The context tensor from the connected CONDITIONING, else None (the loader reads the file next to it)."""
    if conditioning is None:
        return None
    config, _, _ = xdub_loading.read_xdub_config(path)
    return context_from_conditioning(conditioning, config.text_dim)


def load_patcher(name: str, weight_dtype: str, context=None):
    """ModelPatcher around the checkpoint, cached by (path, mtime, size, dtype); an X-Dub model gets the
    ``context`` CONDITIONING (or its context file) on every call, so a new prompt state needs no reload."""
    path = resolve_checkpoint(name)
    stat = os.stat(path)
    load_device = mm.get_torch_device()
    try:
        n_params = checkpoint_parameters(path)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load OmniSync checkpoint {name!r}: {exc}") from exc
    dtype = pick_dtype(weight_dtype, n_params, load_device)
    try:
        try:
            spec = detect_family(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{xdub_loading.explain_not_xdub(path)}") from exc
        ctx = _xdub_context(path, context) if spec.name == "xdub" else None
        if spec.name == "xdub" and ctx is None:
            ctx = xdub_loading.find_context(path, xdub_loading.read_xdub_config(path)[0].text_dim)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CheckpointError(f"cannot load OmniSync checkpoint {name!r}: {exc}") from exc
    if spec.name != "xdub" and context is not None:
        log.warning("OmniSync: %s is a %s checkpoint; the context input is ignored", name, spec.title)
    key = (path, stat.st_mtime_ns, stat.st_size, str(dtype), weight_dtype == FP8)
    if key in _CACHE:
        patcher = _CACHE[key]
        if ctx is not None:
            patcher.model.backend.set_context(ctx)
        return patcher
    try:
        backend = _build_backend(path, spec.name, dtype, weight_dtype, ctx)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load OmniSync checkpoint {name!r}: {exc}") from exc
    offload = mm.unet_offload_device()
    backend.module.to(offload)
    patcher = comfy.model_patcher.ModelPatcher(OmniSyncHolder(backend), load_device=load_device,
                                               offload_device=offload)
    log.info("OmniSync: loaded %s (%s backend, %d parameters, %s)", name, backend.name, n_params, dtype)
    _CACHE.clear()  # keep one model: a new file or dtype replaces the old entry
    _CACHE[key] = patcher
    return patcher


class OmniSyncModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = checkpoint_names()
        return io.Schema(
            node_id="OmniSyncModelLoader",
            display_name="OmniSync Model Loader",
            category=CATEGORY,
            description="Loads a lip-sync checkpoint (.safetensors) from models/omnisync: an OmniSync model (the "
                        "pack ships a small demo) or X-Dub_model.safetensors (KlingTeam/X-Dub, released for "
                        "academic research and technical demonstration only). X-Dub also needs the umt5 states of "
                        f"the empty prompt: connect 'context' or put {CONTEXT_FILE} next to the checkpoint.",
            inputs=[
                io.Combo.Input("ckpt_name", options=names,
                               default=DEMO_CHECKPOINT if DEMO_CHECKPOINT in names else None,
                               tooltip="Checkpoint file in models/omnisync (safetensors only). The pack ships "
                                       f"{DEMO_CHECKPOINT}, a small model trained on synthetic faces."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the weights in memory. auto: bf16 where the device supports "
                                       "it and the model is large, else fp32. fp8_e4m3fn (X-Dub): Linear weights "
                                       "stored in fp8 and computed in bf16, about half the memory of bf16."),
                io.Conditioning.Input("context", optional=True,
                                      tooltip="X-Dub only: CLIPTextEncode with an EMPTY prompt and the umt5-xxl "
                                              "text encoder (CLIPLoader type 'wan'). Leave empty to use "
                                              f"{CONTEXT_FILE} next to the checkpoint."),
            ],
            outputs=[OmniModel.Output("model", display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str, weight_dtype: str):
        if ckpt_name not in checkpoint_names():
            return f"OmniSync checkpoint {ckpt_name!r} is not in models/{FOLDER}"
        if weight_dtype not in DTYPES:
            return f"weight_dtype must be one of {list(DTYPES)}, got {weight_dtype!r}"
        return True

    @classmethod
    def execute(cls, ckpt_name: str, weight_dtype: str = "auto", context=None) -> io.NodeOutput:
        return io.NodeOutput(load_patcher(ckpt_name, weight_dtype, context))
