"""ComfyUI entry point of the OmniSync node pack.

Importing this file outside ComfyUI (pytest, plain Python) registers nothing and does not fail: the nodes are
only imported when ComfyUI's ``comfy_api`` package is importable.
"""

import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
