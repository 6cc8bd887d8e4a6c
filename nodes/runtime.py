"""ComfyUI runtime glue: the memory manager, progress bars and interrupts for the OmniSync pipeline.

Memory: the model is loaded through ComfyUI's manager (which frees room for the window's activations by
offloading other models); the budget the one-node paths plan with is then what that device has free
(``get_free_memory`` less ComfyUI's reserve) and, for the host, the free system RAM the pack measures itself
(``MemAvailable`` and cgroup limits, ``OMNISYNC_MEMORY_LIMIT``).
"""

from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management as mm
import comfy.utils

from ..omnisync_model.core.memory import MemoryBudget, host_memory_available
from ..omnisync_model.sampling.backend import Backend
from .adapters.lipsync import NodeHooks


class OmniSyncHolder(torch.nn.Module):
    """What the ModelPatcher manages: the backend's module (its weights) plus the plain ``device`` attribute
    ComfyUI writes to; the backend itself rides along as a plain attribute (not a submodule twice).

    (``Backend.device`` is a read-only property, and ModelPatcher assigns ``model.device`` on load.)
    """

    def __init__(self, backend: Backend):
        super().__init__()
        self.weights = backend.module
        self.backend = backend  # a plain attribute (Backend is not a Module): the weights are registered once
        self.device = backend.device


def prepare_model(patcher, tokens: int = 0) -> Backend:
    """Load the model through ComfyUI's memory manager; returns its backend on the load device."""
    backend = patcher.model.backend
    mm.load_models_gpu([patcher], memory_required=backend.inference_memory(tokens))
    return backend


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


def memory_budget(backend: Backend) -> MemoryBudget:
    """Free host RAM (cgroup-aware) and, on an accelerator, what ComfyUI's memory manager reports free there."""
    device = torch.device(backend.device)
    host = host_memory_available()
    if mm.is_device_cpu(device) or device.type == "mps":  # mps shares system memory
        return MemoryBudget(host, None, str(device))
    free = max(0, int(mm.get_free_memory(device)) - int(mm.extra_reserved_memory()))
    return MemoryBudget(host, free, str(device))


def comfy_hooks(patcher) -> NodeHooks:
    """NodeHooks for the one-node paths: load through the memory manager, one progress bar over every step of every
    window (the pipeline passes the total), interrupts, outputs on the intermediate device."""
    progress, check = progress_hooks(1)
    return NodeHooks(prepare=lambda tokens: prepare_model(patcher, tokens), progress=progress,
                     check_interrupt=check, after_vae=lambda: reload_model(patcher), output_device=output_device(),
                     budget=memory_budget)
