"""ComfyUI runtime glue: the memory manager, progress bars and interrupts for the OmniSync pipeline."""

from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management as mm
import comfy.utils

from ..omnisync_model.model import OmniSyncModel
from .adapters import NodeHooks


class OmniSyncHolder(torch.nn.Module):
    """What the ModelPatcher manages: the OmniSync model plus the plain ``device`` attribute ComfyUI writes to.

    (``OmniSyncModel.device`` is a read-only property, and ModelPatcher assigns ``model.device`` on load.)
    """

    def __init__(self, model: OmniSyncModel):
        super().__init__()
        self.omnisync = model
        self.device = model.device


def inference_memory(model: OmniSyncModel, tokens: int) -> int:
    """Rough bytes of activations for ``tokens`` latent tokens with DS-CFG (two branches in one batch)."""
    cfg = model.config
    per_token = cfg.dim * 4 * (12 + 2 * cfg.ffn_mult)  # float32 activations of one block, with the FFN
    return int(2 * tokens * per_token * 2)


def prepare_model(patcher, tokens: int = 0) -> OmniSyncModel:
    """Load the model through ComfyUI's memory manager; returns the OmniSync model on its load device."""
    holder = patcher.model
    model = holder.omnisync
    mm.load_models_gpu([patcher], memory_required=inference_memory(model, tokens))
    return model


def reload_model(patcher) -> None:
    """Make sure the DiT is (still) loaded; cheap when it is. Called after VAE work, which may have evicted it."""
    mm.load_models_gpu([patcher])


def progress_hooks(total: int) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(progress(done, total), check_interrupt()) for the pipeline: a ComfyUI ProgressBar and the interrupt flag."""
    bar = comfy.utils.ProgressBar(max(1, int(total)))

    def progress(done: int, total_steps: int) -> None:
        bar.update_absolute(done, total_steps)

    return progress, interrupt_check()


def interrupt_check() -> Callable[[], None]:
    """The function that raises when the user pressed Cancel (for long loops outside sampling)."""
    return mm.throw_exception_if_processing_interrupted


def output_device() -> torch.device:
    return mm.intermediate_device()


def comfy_hooks(patcher) -> NodeHooks:
    """NodeHooks for the one-node paths: load through the memory manager, one progress bar over every step of every
    window (the pipeline passes the total), interrupts, outputs on the intermediate device."""
    progress, check = progress_hooks(1)
    return NodeHooks(prepare=lambda tokens: prepare_model(patcher, tokens), progress=progress,
                     check_interrupt=check, after_vae=lambda: reload_model(patcher), output_device=output_device())
