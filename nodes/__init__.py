"""OmniSync ComfyUI nodes (V3 API). ``comfy_entrypoint`` is what ComfyUI calls to list them.

The node modules import ComfyUI; ``adapters`` does not, so it can be imported (and tested) without ComfyUI.
"""

import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .extension import OmniSyncExtension, comfy_entrypoint  # noqa: F401

    __all__ = ["OmniSyncExtension", "comfy_entrypoint"]
