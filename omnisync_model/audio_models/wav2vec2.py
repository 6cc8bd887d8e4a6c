"""wav2vec2 speech features (X-Dub uses facebook/wav2vec2-base-960h): strict loading of a local Hugging Face
folder, a one-time ``pytorch_model.bin`` -> safetensors converter, and 50 Hz features.

The network is transformers' ``Wav2Vec2Model`` built from the folder's config.json (never by name from a
model hub). Checkpoints saved from ``Wav2Vec2ForCTC`` (the 960h release) carry a ``wav2vec2.`` prefix and an
``lm_head``; the prefix is stripped and task heads are dropped. Legacy weight-norm names (``weight_g`` /
``weight_v``, as in the release files) become ``parametrizations.weight.original0`` / ``original1``.

Features follow X-Dub (``diffsynth/thirdparties/audio_processor.py`` lines 209-226): input normalised per file to
zero mean and unit variance, ``(x - mean) / sqrt(var + 1e-7)`` (Wav2Vec2FeatureExtractor, do_normalize=True), one
forward over the whole file, the last hidden state (``hidden_states[-1]``, which equals ``last_hidden_state``).
The conv stem (receptive field 400 samples, stride 320) gives (N - 400) // 320 + 1 frames at 50 Hz.

Shape legend
  N   samples at 16 kHz     B   batch of equal-length files     T   50 Hz frames     D   hidden size
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..core.checkpoint import CheckpointError, PathLike, read_tensors
from ..convert import convert_pickle_checkpoint
from ..core.checkpoint import check_state_dict
from .common import SAMPLE_RATE, check_wave16k, require_transformers

logger = logging.getLogger(__name__)

__all__ = ["MIN_SAMPLES", "NORM_EPS", "wav2vec2_keys", "load_wav2vec2", "convert_wav2vec2_bin",
           "normalise_wave", "wav2vec2_features"]

MIN_SAMPLES = 400  # receptive field of the conv stem: one output frame
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
HEAD_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "projector.", "classifier.")
TRAINING_ONLY = ("masked_spec_embed",)  # SpecAugment vector, unused in eval; zero-filled when absent
WEIGHTS = "model.safetensors"
PICKLE = "pytorch_model.bin"


def wav2vec2_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Wav2Vec2Model`` names: ``wav2vec2.`` prefix stripped, task heads dropped, legacy weight-norm renamed."""
    prefixed = any(k.startswith("wav2vec2.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if prefixed and key.startswith("wav2vec2."):
            key = key[len("wav2vec2."):]
        elif prefixed and key.startswith(HEAD_PREFIXES):
            continue  # CTC / pre-training heads of the release checkpoints
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
        out[key] = value
    return out


def _folder_files(folder: PathLike) -> tuple[Path, Path]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"wav2vec2 folder not found: {folder}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass the wav2vec2 model folder (config.json + "
                              f"{WEIGHTS}), e.g. models/audio_encoders/wav2vec2-base-960h")
    config, weights = folder / "config.json", folder / WEIGHTS
    if not config.is_file():
        raise FileNotFoundError(f"wav2vec2 config not found: {config}")
    if not weights.is_file():
        pickle = folder / PICKLE
        if pickle.is_file():
            raise CheckpointError(
                f"{folder} has only {PICKLE}, a pickle the pack does not load (it can execute code). Convert it "
                f"once with `omnisync convert {pickle} {weights}` (convert_wav2vec2_bin; reads tensors only)")
        raise FileNotFoundError(f"wav2vec2 weights not found: {weights}")
    return config, weights


def _read_config(path: Path):
    transformers = require_transformers()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON config: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if data.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type {data.get('model_type')!r} is not wav2vec2")
    config = transformers.Wav2Vec2Config.from_dict(data)
    config._attn_implementation = "sdpa"
    return config


def load_wav2vec2(folder: PathLike, device: Union[str, torch.device] = "cpu",
                  dtype: Optional[torch.dtype] = torch.float32):
    """A strict-loaded transformers ``Wav2Vec2Model`` (eval, no grad) from a local folder with config.json and
    model.safetensors. Missing folder / config / weights are refused naming the path; a folder with only
    pytorch_model.bin is refused with the conversion command."""
    config_path, weights = _folder_files(folder)
    config = _read_config(config_path)
    from transformers import Wav2Vec2Model

    with torch.device("meta"):
        model = Wav2Vec2Model(config)
    tensors = wav2vec2_keys(read_tensors(weights, device))
    expected = model.state_dict()
    for name in TRAINING_ONLY:
        if name in expected and name not in tensors:
            tensors[name] = torch.zeros(expected[name].shape, device=device)
    check_state_dict(model, tensors, f"{weights} (wav2vec2 of {config_path.name})")
    model.load_state_dict(tensors, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.requires_grad_(False)
    return model.eval()


def convert_wav2vec2_bin(src: PathLike, dst: PathLike) -> Path:
    """Convert a Hugging Face ``pytorch_model.bin`` into safetensors (same key names; put it next to config.json
    as model.safetensors). Read with ``torch.load(weights_only=True)`` only; written atomically; refuses
    ``dst`` that is ``src``."""
    return convert_pickle_checkpoint(src, dst, metadata={"format": "pt"})


def normalise_wave(wave: torch.Tensor) -> torch.Tensor:
    """Per-file zero mean, unit variance [B, N]: (x - mean) / sqrt(var + 1e-7), population variance."""
    wide = wave.to(torch.float64)
    mean = wide.mean(dim=-1, keepdim=True)  # [B, 1]
    var = wide.var(dim=-1, unbiased=False, keepdim=True)  # [B, 1]
    return ((wide - mean) / torch.sqrt(var + NORM_EPS)).to(torch.float32)


@torch.no_grad()
def wav2vec2_features(model, wave16k: torch.Tensor, *, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Last hidden state at ~50 Hz, float32 [T, D] ([B, T, D] for [B, N]), T = (N - 400) // 320 + 1, on the
    model's device; one forward over the whole file, as X-Dub runs it."""
    wave = check_wave16k(wave16k, sample_rate, MIN_SAMPLES)  # [B, N]
    param = next(model.parameters())
    values = normalise_wave(wave.to(param.device)).to(param.dtype)
    feats = model(values).last_hidden_state.float()  # [B, T, D]
    return feats[0] if wave16k.dim() == 1 else feats
