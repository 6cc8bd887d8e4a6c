"""Model configuration: a frozen dataclass with named presets.

The config is stored as JSON in checkpoint metadata (see ``weights.py``) and can be rebuilt from a
checkpoint's tensor shapes when the metadata is missing (``weights.infer_config``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

CONDITION_MODES = ("channel", "token")
PREDICTIONS = ("velocity", "source_x0")
SIGMA_MIN = 1e-3  # velocity from an x0 prediction divides by max(sigma, SIGMA_MIN)


@dataclass(frozen=True)
class OmniSyncConfig:
    """Hyper-parameters of the OmniSync DiT, its audio encoder and its feature adapter.

    Source conditioning (``condition``):
      * ``"channel"`` (default): the source latent is concatenated with the noisy latent along channels before
        patch embedding. It costs no extra tokens (attention cost unchanged) and keeps source and target
        spatially aligned, which suits an edit-in-place model whose init is the noised source itself.
      * ``"token"``: the source is embedded separately and its tokens are appended to each frame's tokens in
        spatial attention (X-Dub style). Doubles the spatial sequence; kept for experiments.
    """

    name: str = "custom"
    # latent / patching
    in_channels: int = 48  # codec latent channels (pixel codec with factor 4: 3 * 4 * 4)
    patch_size: int = 2  # spatial patch (tokens are patch_size x patch_size latent pixels)
    # transformer
    dim: int = 48
    depth: int = 2
    heads: int = 2
    ffn_mult: float = 4.0
    qk_norm: bool = True
    rope_theta: float = 10000.0
    condition: str = "channel"
    # what the DiT's raw output means; forward() always returns the flow-matching velocity
    #   "velocity":  the raw output is the velocity v = eps - x0 (the paper's plain reading)
    #   "source_x0": the raw output is a residual on the source, x0_hat = source + out, and
    #                v = (x - x0_hat) / sigma (exact for the linear path); the model starts as a perfect copy
    prediction: str = "velocity"
    # audio
    audio_dim: int = 48  # width of audio tokens entering cross-attention
    audio_tokens: int = 10  # audio steps per latent frame (window centred on the frame)
    audio_rate: float = 50.0  # audio feature steps per second
    n_mels: int = 80
    audio_layers: int = 1  # transformer layers in the built-in audio encoder
    external_audio_dim: int = 0  # width of external features (Whisper / wav2vec2); 0 = no adapter
    # optional text cross-attention slot (off in all presets)
    text_dim: int = 0
    # codec the model was trained with (informational, checked by the pipeline)
    codec: str = "pixel4"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        errors = []
        if self.dim % self.heads != 0:
            errors.append(f"dim={self.dim} is not divisible by heads={self.heads}")
        elif (self.dim // self.heads) % 6 != 0:
            errors.append(f"head dim {self.dim // self.heads} must be a multiple of 6 for 3D RoPE")
        if self.prediction not in PREDICTIONS:
            errors.append(f"prediction={self.prediction!r} is not one of {PREDICTIONS}")
        if self.condition not in CONDITION_MODES:
            errors.append(f"condition={self.condition!r} is not one of {CONDITION_MODES}")
        for name in ("in_channels", "patch_size", "dim", "depth", "heads", "audio_dim", "audio_tokens", "n_mels"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.audio_rate <= 0:
            errors.append(f"audio_rate must be positive, got {self.audio_rate}")
        if errors:
            raise ValueError("invalid OmniSyncConfig: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def ffn_dim(self) -> int:
        return int(round(self.dim * self.ffn_mult))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OmniSyncConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown OmniSyncConfig fields: {unknown}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "OmniSyncConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "OmniSyncConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, OmniSyncConfig] = {
    # tests: a forward pass on CPU well under a second
    "tiny": OmniSyncConfig(name="tiny", dim=48, depth=2, heads=2, audio_dim=48, audio_layers=1),
    # the synthetic demo model (trained on CPU, shipped in the pack)
    "small": OmniSyncConfig(name="small", dim=144, depth=5, heads=4, audio_dim=96, audio_layers=1,
                            prediction="source_x0"),
    # production size, for a Wan 2.1 VAE latent (16 channels); about 0.97B parameters (965,443,904)
    "base": OmniSyncConfig(
        name="base", in_channels=16, dim=1536, depth=20, heads=16, audio_dim=768, audio_layers=4,
        audio_tokens=12, codec="wan2.1", external_audio_dim=1280,
    ),
}


def get_preset(name: str) -> OmniSyncConfig:
    """Return a named preset; raises ``KeyError`` naming the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
