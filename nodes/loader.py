"""OmniSyncModelLoader: a safetensors checkpoint from models/omnisync (or the pack's shipped one) -> OMNISYNC_MODEL."""

from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import folder_paths

from ..omnisync_model.backends.registry import load_backend
from ..omnisync_model.core.checkpoint import CheckpointError, checkpoint_parameters
from ..omnisync_model.families.omnisync.weights import ASSETS_DIR, DEMO_CHECKPOINT
from .runtime import OmniSyncHolder
from .types import CATEGORY, OmniModel

log = logging.getLogger(__name__)

FOLDER = "omnisync"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CACHE: dict[tuple, object] = {}  # (path, mtime_ns, size, dtype) -> ModelPatcher; module level (nodes are cloned)


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


def load_patcher(name: str, weight_dtype: str):
    """ModelPatcher around the checkpoint, cached by (path, mtime, size, dtype)."""
    path = resolve_checkpoint(name)
    stat = os.stat(path)
    load_device = mm.get_torch_device()
    try:
        n_params = checkpoint_parameters(path)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load OmniSync checkpoint {name!r}: {exc}") from exc
    dtype = pick_dtype(weight_dtype, n_params, load_device)
    key = (path, stat.st_mtime_ns, stat.st_size, str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    try:
        backend = load_backend(path, device="cpu", dtype=dtype, operations=comfy.ops.manual_cast)
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
            description="Loads an OmniSync lip-sync checkpoint (.safetensors) from models/omnisync or the pack's "
                        "shipped demo model.",
            inputs=[
                io.Combo.Input("ckpt_name", options=names,
                               default=DEMO_CHECKPOINT if DEMO_CHECKPOINT in names else None,
                               tooltip="Checkpoint file in models/omnisync (safetensors only). The pack ships "
                                       f"{DEMO_CHECKPOINT}, a small model trained on synthetic faces."),
                io.Combo.Input("weight_dtype", options=list(DTYPES), default="auto",
                               tooltip="Precision of the weights in memory. auto: bf16 where the device supports "
                                       "it and the model is large, else fp32. Computation follows the inputs."),
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
    def execute(cls, ckpt_name: str, weight_dtype: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(load_patcher(ckpt_name, weight_dtype))
