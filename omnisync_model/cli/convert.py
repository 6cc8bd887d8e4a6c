"""``omnisync convert``: turn a released pickle (``.pt`` / ``.pth`` / ``.bin``) into safetensors, once.

The file is read with ``torch.load(weights_only=True)`` only (a pickle that needs code is refused, nothing from it
runs), checked against the family's strict key set, and written atomically; the source is never touched and an
output that is the source (symlink, hard link, another spelling) is refused. ``--kind auto`` tells the kind from
the file's structure:

  whisper      OpenAI Whisper (``tiny.pt`` for LatentSync, ``large-v2.pt`` for X-Dub): dict with dims + weights
  latentsync   ``latentsync_unet.pt``: dict whose ``state_dict`` holds the UNet3D (motion modules)
  musetalk     MuseTalk 1.5 ``unet.pth``: the UNet2D's state dict
  wav2vec2     a Hugging Face ``pytorch_model.bin`` of wav2vec2 (save it as model.safetensors next to config.json)
  state-dict   any plain state dict, keys kept as they are
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping

KINDS = ("auto", "whisper", "latentsync", "musetalk", "wav2vec2", "state-dict")


def detect_kind(obj: Any) -> str:
    """The kind of a loaded checkpoint from its structure alone (see the module docstring)."""
    if isinstance(obj, Mapping) and "dims" in obj and "model_state_dict" in obj:
        return "whisper"
    state = obj.get("state_dict") if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) else obj
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, Mapping) else []
    if any("motion_modules" in k for k in keys):
        return "latentsync"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "musetalk"
    if any(k.startswith(("wav2vec2.", "feature_extractor.", "encoder.pos_conv_embed")) for k in keys):
        return "wav2vec2"
    return "state-dict"


def _converters() -> Mapping[str, Callable[[Path, Path], Path]]:
    from ..audio_models import convert_openai_whisper, convert_wav2vec2_bin
    from ..convert import convert_latentsync, convert_musetalk, convert_pickle_checkpoint

    return {"whisper": convert_openai_whisper, "latentsync": convert_latentsync, "musetalk": convert_musetalk,
            "wav2vec2": convert_wav2vec2_bin, "state-dict": convert_pickle_checkpoint}


def convert(src: Path, dst: Path, kind: str = "auto") -> tuple[str, Path]:
    """Convert ``src`` into ``dst``; returns (the kind used, dst)."""
    from ..convert import check_paths, read_pickle_tensors

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        check_paths(src, dst)  # refuse a bad source or destination before reading anything
        kind = detect_kind(read_pickle_tensors(src))  # memory-mapped for zip checkpoints: cheap
    return kind, _converters()[kind](src, dst)


def register_cli(sub) -> None:
    p = sub.add_parser("convert", help="convert a released .pt/.pth/.bin pickle into safetensors, once (reads "
                                       "tensors only, never runs code from the file)")
    p.add_argument("src", type=Path, help="the released file (.pt, .pth, .bin)")
    p.add_argument("dst", type=Path, help="the .safetensors file to write (never the source)")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="what the file holds; auto tells it from the file's structure (default: auto)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..core.checkpoint import CheckpointError, read_shapes
    from .main import CliError, emit

    try:
        kind, out = convert(args.src, args.dst, args.kind)
    except (CheckpointError, FileNotFoundError, ImportError) as exc:
        raise CliError(str(exc)) from None
    emit(f"wrote {out}: {kind}, {len(read_shapes(out))} tensors (source {args.src} unchanged)")
    return 0
