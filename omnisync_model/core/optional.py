"""Optional packages (transformers for the speech encoders, diffusers for the command line's VAEs): imported only
where they are used, with one clear message naming the install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def install_hint(package: str) -> str:
    return f"pip install {package}"


def require(package: str, purpose: str) -> ModuleType:
    """The module ``package``, or an ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the optional package '{package}'; install it with "
                          f"`{install_hint(package)}` (it does not replace your torch)") from exc
