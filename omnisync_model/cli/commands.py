"""The arguments of the training and benchmark subcommands (train, bench, perf, demo, longvideo).

Defined here, away from their torch-heavy code, so that ``omnisync --help`` and ``omnisync CMD --help`` answer at
once: the handlers are imported only when a command runs (:func:`lazy`). Every option's help shows its default.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Callable

from ..sampling.options import SOLVER_NAMES, LipSyncOptions
from ..training.styles import STYLES
from ..training.train_config import TrainConfig

DEFAULTS = argparse.ArgumentDefaultsHelpFormatter  # appends "(default: ...)" to every option's help


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command handler that imports ``module`` (relative to omnisync_model) only when it runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module, "omnisync_model"), name)(args)

    return run


TRAIN_HELP = {
    "steps": "optimiser steps", "batch": "clips per step", "frames": "frames per training window",
    "size": "frame size in pixels (square)", "clips": "synthetic clips generated for the run",
    "warmup": "learning-rate warm-up steps", "seed": "model initialisation and batching seed",
    "log_every": "steps between log lines", "save_every": "steps between checkpoints", "lr": "AdamW learning rate",
    "threshold": "sigma above which the condition is a pseudo-pair (same frames, other lips); the paper's 0.85",
    "audio_dropout": "share of samples trained with the null audio (for CFG)",
    "clip_seconds": "length of each synthetic clip", "ema": "decay of the weights' moving average",
    "weight_decay": "AdamW weight decay",
    "mouth_weight": "extra loss weight where target and condition differ (the lips), relative to the rest; "
                    "0 = plain flow matching",
}


def _train(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a model with the OmniSync recipe on synthetic talking faces",
                       formatter_class=DEFAULTS)
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoint + resumable state)")
    p.add_argument("--preset", default=d.preset, help="model size preset: tiny, small, base")
    p.add_argument("--prediction", default=d.prediction, choices=("velocity", "source_x0"),
                   help="what the DiT's output means: the velocity, or a residual on the source")
    for name in ("steps", "batch", "frames", "size", "clips", "warmup", "seed", "log_every", "save_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=TRAIN_HELP[name])
    for name in ("lr", "threshold", "audio_dropout", "clip_seconds", "ema", "weight_decay", "mouth_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name), help=TRAIN_HELP[name])
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fresh optimiser; same preset and prediction)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CPU (measured slower on 2 cores)")
    p.set_defaults(func=lazy(".training.train", "_cmd_train"))


def _bench(sub) -> None:
    d = LipSyncOptions()
    p = sub.add_parser("bench", help="synthetic benchmark: sync, leakage, preservation, seams, ablations",
                       formatter_class=DEFAULTS)
    p.add_argument("--checkpoint", type=Path, default=None, help="the model to measure (default: the shipped demo)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter clips")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--steps", type=int, default=d.steps, help="sampling steps from tau down to 0")
    p.add_argument("--solver", choices=SOLVER_NAMES, default=d.solver, help="ODE solver over the schedule")
    p.add_argument("--shift", type=float, default=d.shift, help="sigma schedule shift (1 = linear)")
    p.set_defaults(func=lazy(".training.bench", "_cmd_bench"))


def _perf(sub) -> None:
    p = sub.add_parser("perf", help="performance benchmark: overheads, scaling, evaluations, DiT throughput",
                       formatter_class=DEFAULTS)
    p.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (a few minutes on 2 cores)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure")
    p.add_argument("--presets", default=None, help="comma list (default: tiny,small; tiny,small,base without --quick)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile against eager")
    p.set_defaults(func=lazy(".cli.perf", "_cmd_perf"))


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="lip-sync a generated held-out clip with the shipped model; write mp4 + png",
                       formatter_class=DEFAULTS)
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (demo.mp4, mouths.png)")
    p.add_argument("--checkpoint", type=Path, default=None, help="the model to run (default: the shipped demo)")
    p.add_argument("--style", default="sketch", choices=STYLES,
                   help="drawing style of the generated clip; sketch is held out of training")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the generated clip")
    p.add_argument("--seed", type=int, default=900_123, help="seed of the generated clip and speech")
    p.set_defaults(func=lazy(".training.demo", "_cmd_demo"))


def _longvideo(sub) -> None:
    p = sub.add_parser("longvideo", help="peak memory of a long vs a short clip through the file-to-file path",
                       formatter_class=DEFAULTS)
    p.add_argument("--work", type=Path, default=Path("out/longvideo"), help="folder for the clips and outputs")
    p.add_argument("--minutes", type=float, nargs=2, default=(1.0, 10.0), metavar=("SHORT", "LONG"),
                   help="lengths of the two clips")
    p.add_argument("--size", type=int, default=512, help="frame width = height in pixels")
    p.add_argument("--steps", type=int, default=4, help="sampling steps (memory does not depend on them)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.set_defaults(func=lazy(".cli.longvideo", "_cmd_longvideo"))


def register_cli(sub) -> None:
    for add in (_train, _bench, _perf, _demo, _longvideo):
        add(sub)
