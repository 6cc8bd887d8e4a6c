"""The training run's settings (a plain dataclass: ``omnisync train --help`` shows these defaults without importing
torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .styles import TRAIN_STYLES

__all__ = ["TrainConfig", "TRAIN_STYLES"]


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "small"
    prediction: str = "source_x0"
    steps: int = 3000
    batch: int = 8
    frames: int = 16
    size: int = 64
    clips: int = 192
    clip_seconds: float = 4.0
    fps_choices: tuple[float, ...] = (24.0, 25.0, 30.0)
    styles: tuple[str, ...] = TRAIN_STYLES
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    threshold: float = 0.85
    audio_dropout: float = 0.1
    mouth_weight: float = 0.0
    init: str = ""
    ema: float = 0.998
    seed: int = 0
    data_seed: int = 1000
    log_every: int = 10
    save_every: int = 250
    bf16: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames < 2 or self.batch < 1 or self.steps < 1:
            raise ValueError("frames >= 2, batch >= 1 and steps >= 1 are required")
        if self.mouth_weight < 0.0:
            raise ValueError(f"mouth_weight must be >= 0, got {self.mouth_weight}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.audio_dropout < 1.0:
            raise ValueError("threshold must be in [0, 1] and audio_dropout in [0, 1)")
