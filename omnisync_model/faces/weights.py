"""The shipped face model weights (``omnisync_model/assets/faces``): paths, config inference, strict loading.

The files are converted once from MediaPipe's ``.tflite`` models by :mod:`.convert_tflite` (Apache-2.0; the
licence notice sits next to them). Nothing is downloaded: a missing file is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..core.checkpoint import CheckpointError, load_state_dict_checked, read_metadata, read_shapes, read_tensors
from .detector import PRESETS as DETECTOR_PRESETS, BlazeFace
from .mesh import PRESETS as MESH_PRESETS, FaceMesh

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "faces"
DETECTOR_PATH = ASSETS / "face_detector.safetensors"
MESH_PATH = ASSETS / "face_mesh.safetensors"


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def infer_config(path: Union[str, Path], kind: str):
    """The preset whose parameter names and shapes are exactly those of the file (``kind``: detector or mesh)."""
    presets, cls = {"detector": (DETECTOR_PRESETS, BlazeFace), "mesh": (MESH_PRESETS, FaceMesh)}[kind]
    found = read_shapes(path)
    for config in presets.values():
        if _shapes(cls(config, device="meta")) == found:
            return config
    raise CheckpointError(f"{path}: its tensors match no face {kind} preset ({', '.join(presets)}); "
                          "reconvert it with `python -m omnisync_model.faces.convert_tflite`")


def _load(path: Path, kind: str, device, dtype, operations) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"face {kind} weights not found: {path} (shipped with the pack; reinstall it or "
                                "reconvert with `python -m omnisync_model.faces.convert_tflite WHEEL OUT_DIR`)")
    meta = read_metadata(path)
    if meta.get("format") != "omnisync-faces":
        raise CheckpointError(f"{path}: not a converted face model (metadata format {meta.get('format')!r})")
    config = infer_config(path, kind)
    cls = BlazeFace if kind == "detector" else FaceMesh
    # built on CPU, not meta + to_empty: the mesh's index buffers are not in the file (1.2M parameters: ~10 ms)
    model = cls(config, device="cpu", operations=operations)
    state = {k: v.float() for k, v in read_tensors(path).items()}  # float16 on disk, exact in float32
    load_state_dict_checked(model, state, source=str(path))
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval().requires_grad_(False)


def load_detector(path: Optional[Union[str, Path]] = None, device=None, dtype=None, operations=nn) -> BlazeFace:
    """The short-range BlazeFace detector, eval mode, float32 unless ``dtype`` is given."""
    return _load(Path(path) if path else DETECTOR_PATH, "detector", device, dtype, operations)


def load_mesh(path: Optional[Union[str, Path]] = None, device=None, dtype=None, operations=nn) -> FaceMesh:
    """The 478-point attention face mesh, eval mode, float32 unless ``dtype`` is given."""
    return _load(Path(path) if path else MESH_PATH, "mesh", device, dtype, operations)
