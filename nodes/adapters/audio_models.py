"""OMNISYNC_AUDIO_MODELS without ComfyUI: the speech encoders a backend needs (X-Dub: Whisper large-v2 +
wav2vec2-base-960h), loaded from local files once and attached to the model's backend for a run.

A run attaches them to a shallow copy of the backend (``with_speech``): the cached model is never changed, and a run
without audio models connected gets the backend as it was loaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ...omnisync_model.backends.xdub.speech import XDubSpeech, load_speech
from ...omnisync_model.sampling.backend import Backend
from ...omnisync_model.sampling.options import LipSyncOptions
from .lipsync import NodeHooks

__all__ = ["AudioModels", "load_audio_models", "attach_audio_models", "model_defaults", "wav2vec2_folders"]

_CACHE: dict[tuple, "AudioModels"] = {}  # (paths, mtimes) -> AudioModels; module level (nodes are cloned per run)


@dataclass(frozen=True)
class AudioModels:
    """OMNISYNC_AUDIO_MODELS: the speech encoders and where they came from."""

    speech: XDubSpeech
    whisper: str
    wav2vec2: Optional[str]  # None: Whisper alone (LatentSync)

    def __repr__(self) -> str:
        w2v = Path(self.wav2vec2).name if self.wav2vec2 else "no wav2vec2"
        return f"AudioModels({Path(self.whisper).name} + {w2v})"


def wav2vec2_folders(roots: list[str]) -> list[str]:
    """Sub-folders of ``roots`` that hold a wav2vec2 model (config.json + a weights file), by folder name."""
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if os.path.isfile(os.path.join(folder, "config.json")) and (
                    os.path.isfile(os.path.join(folder, "model.safetensors"))
                    or os.path.isfile(os.path.join(folder, "pytorch_model.bin"))):
                found.append(name)
    return found


def _stamp(path: Union[str, Path]) -> tuple:
    p = Path(path)
    target = p / "model.safetensors" if p.is_dir() else p
    st = target.stat() if target.exists() else None
    return (str(p), st.st_mtime_ns if st else 0, st.st_size if st else 0)


def load_audio_models(whisper: Union[str, Path], wav2vec2: Optional[Union[str, Path]],
                      wrap: Optional[Callable[[XDubSpeech], XDubSpeech]] = None) -> AudioModels:
    """The encoders on the CPU in float32 (strict checks; refusals name the file), cached by file stamps; wav2vec2
    None loads Whisper alone (LatentSync). ``wrap`` lets the host attach its memory management (ComfyUI: a
    ModelPatcher)."""
    whisper, wav2vec2 = Path(whisper), (Path(wav2vec2) if wav2vec2 is not None else None)
    if not whisper.is_file():
        raise FileNotFoundError(f"Whisper encoder not found: {whisper}")
    if wav2vec2 is not None and not wav2vec2.is_dir():
        raise FileNotFoundError(f"wav2vec2 folder not found: {wav2vec2}")
    key = (_stamp(whisper), _stamp(wav2vec2) if wav2vec2 is not None else None)
    if key not in _CACHE:
        speech = load_speech(whisper, wav2vec2, device="cpu", dtype=torch.float32)
        _CACHE.clear()  # one pair at a time
        _CACHE[key] = AudioModels(wrap(speech) if wrap else speech, str(whisper),
                                  str(wav2vec2) if wav2vec2 is not None else None)
    return _CACHE[key]


def attach_audio_models(backend: Backend, hooks: NodeHooks,
                        audio_models: Optional[AudioModels]) -> tuple[Backend, NodeHooks]:
    """(backend, hooks) for a run: with the speech encoders attached when connected (also to the backend the
    memory manager hands back in ``hooks.prepare``); a model that takes none refuses them by name."""
    if audio_models is None:
        return backend, hooks
    if not hasattr(backend, "with_speech"):
        raise ValueError(f"audio_models: the connected model ({backend.name}) has its own audio encoder; "
                         f"the Whisper + wav2vec2 audio models are for X-Dub checkpoints")
    speech = audio_models.speech
    backend = backend.with_speech(speech)  # refuses encoders of the wrong width before any work
    prepare = hooks.prepare
    if prepare is not None:
        hooks = dataclasses.replace(hooks, prepare=lambda tokens: prepare(tokens).with_speech(speech))
    return backend, hooks


def model_defaults(options: LipSyncOptions, backend: Backend) -> LipSyncOptions:
    """The widget options with what the nodes do not expose (schedule shift, solver, stitching, audio margin) taken
    from the model's own defaults: X-Dub's shift 5 and its continuation from the previous window's last frames;
    OmniSync's defaults are the options' own."""
    d = backend.default_options()
    return dataclasses.replace(options, shift=d.shift, solver=d.solver, stitch=d.stitch,
                               audio_margin_s=d.audio_margin_s)

