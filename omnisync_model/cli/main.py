"""The ``omnisync`` command line: lipsync, info (and the subcommands other modules register).

Errors in arguments or files end with a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

if TYPE_CHECKING:
    import torch

log = logging.getLogger("omnisync")

EXIT_USAGE = 2


class CliError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


def emit(text: str) -> None:
    """Print a command's result on stdout (the command line is the one place that prints)."""
    print(text)


def write_json(path: Path, result) -> None:
    """A command's ``--json`` output (folders created; numbers that JSON lacks, e.g. numpy floats, as floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))


class ProgressBar:
    """A plain text progress bar on stderr (no dependency), updated at most ~10 times a second; without a terminal,
    a log line every ~10 s instead; ``enabled`` False shows nothing."""

    def __init__(self, label: str, enabled: bool = True):
        self.shown, self.enabled = enabled, enabled and sys.stderr.isatty()
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(done, 1) * (total - done)
        msg = f"{self.label} {done}/{total} steps ({100 * done / max(total, 1):.0f}%) {elapsed:.0f}s elapsed, ~{eta:.0f}s left"
        if self.enabled:
            sys.stderr.write("\r" + msg + ("\n" if done >= total else ""))
            sys.stderr.flush()
        elif done >= total or int(elapsed) % 10 == 0:
            log.info(msg)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


BACKEND_NAMES = ("omnisync", "xdub", "latentsync")  # registry names (MuseTalk files load as latentsync)


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    from ..sampling.dscfg import DSCFG
    from ..sampling.options import LipSyncOptions

    d, g = LipSyncOptions(), DSCFG()
    note = "default: the backend's own (OmniSync: %s)"
    p.add_argument("--tau", type=unit_float, default=None,
                   help="progressive init strength, 1 = pure noise; " + note % d.tau)
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps from tau down to 0; " + note % d.steps)
    p.add_argument("--shift", type=float, default=None, help="sigma schedule shift, 1 = linear; " + note % d.shift)
    p.add_argument("--window", type=positive_int, default=None, help="frames per temporal window; " + note % d.window)
    p.add_argument("--overlap", type=int, default=None, help="frames shared by consecutive windows; " + note % d.overlap)
    p.add_argument("--stitch", choices=("crossfade", "continue"), default=None,
                   help="crossfade overlapping windows, or continue from the previous window's last frames "
                        "(backends with motion frames: X-Dub); " + note % d.stitch)
    p.add_argument("--seed", type=int, default=None, help="noise seed; " + note % d.seed)
    p.add_argument("--w-peak", type=float, default=None, help="DS-CFG peak weight at the mouth; " + note % g.w_peak)
    p.add_argument("--w-base", type=float, default=None, help="DS-CFG weight far from the mouth; " + note % g.w_base)
    p.add_argument("--radius", type=float, default=None,
                   help="DS-CFG Gaussian radius as a fraction of the frame; " + note % g.radius)
    p.add_argument("--gamma", type=float, default=None, help="DS-CFG temporal decay exponent; " + note % g.gamma)


SAMPLING_FIELDS = ("tau", "steps", "shift", "window", "overlap", "stitch", "seed")
GUIDANCE_FIELDS = ("w_peak", "w_base", "radius", "gamma")


def options_from_args(args: argparse.Namespace, base=None):
    """The sampling options: ``base`` (the backend's defaults) with every option given on the command line."""
    import dataclasses

    from ..sampling.options import LipSyncOptions

    base = base if base is not None else LipSyncOptions()
    given = {k: getattr(args, k) for k in SAMPLING_FIELDS if getattr(args, k, None) is not None}
    guide = {k: getattr(args, k) for k in GUIDANCE_FIELDS if getattr(args, k, None) is not None}
    try:
        guidance = dataclasses.replace(base.guidance, **guide)
        return dataclasses.replace(base, guidance=guidance, **given)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda was asked for, but no CUDA device is available")
    return device


def load_model(checkpoint: Optional[Path], device: torch.device):
    from ..families.omnisync.weights import CheckpointError, default_checkpoint, load_checkpoint

    path = checkpoint or default_checkpoint()
    if path is None:
        raise CliError("no --checkpoint given and no shipped demo checkpoint found")
    try:
        return load_checkpoint(path, device=device)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None


def load_backend(args: argparse.Namespace, device: torch.device):
    """(backend, codec or None) from --backend / --checkpoint (--weights) / --vae / --audio-models; the family is
    detected from the checkpoint's header unless --backend names it; the shipped demo by default."""
    from ..backends.registry import load_for_cli
    from ..core.checkpoint import CheckpointError
    from ..families.omnisync.weights import default_checkpoint

    path = args.checkpoint or default_checkpoint()
    if path is None:
        raise CliError("no --checkpoint given and no shipped demo checkpoint found")
    try:
        return load_for_cli(args.backend, path, device=device, vae=args.vae, audio_models=args.audio_models)
    except (CheckpointError, FileNotFoundError, ImportError) as exc:
        raise CliError(str(exc)) from None


def cmd_lipsync(args: argparse.Namespace) -> int:
    from ..core.files import refuse_same_file
    from ..media.lipsync_file import lipsync_file

    refuse_same_file(args.out, args.video, args.audio)  # before any work: the output may not be an input
    device = resolve_device(args.device)
    backend, codec = load_backend(args, device)
    options = options_from_args(args, backend.default_options())
    summary = lipsync_file(args.video, args.audio, args.out, backend, options, codec=codec, box=args.box, size=args.size,
                           blend=args.blend, progress=ProgressBar("lipsync", not args.quiet))
    emit(summary)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..families.omnisync.weights import CheckpointError, read_checkpoint_info

    try:
        config, metadata, n_params = read_checkpoint_info(args.checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    emit(f"checkpoint: {args.checkpoint}")
    for key, value in config.to_dict().items():
        emit(f"  {key}: {value}")
    emit(f"parameters: {n_params:,}")
    for key, value in sorted(metadata.items()):
        if key != "omnisync_config":
            emit(f"  meta {key}: {value}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from ..families.omnisync.config import get_preset
    from ..families.omnisync.model import OmniSyncModel, count_parameters
    from ..core.files import refuse_same_file
    from ..families.omnisync.weights import default_checkpoint, save_checkpoint

    try:
        config = get_preset(args.preset)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    refuse_same_file(args.out, default_checkpoint(), kind="shipped demo checkpoint")  # never overwrite the demo
    torch.manual_seed(args.seed)
    model = OmniSyncModel(config)
    save_checkpoint(args.out, model, metadata={"note": "randomly initialised (untrained)"})
    emit(f"wrote {args.out}: preset {config.name}, {count_parameters(model):,} parameters (untrained)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnisync", description="OmniSync mask-free lip sync")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lipsync", help="lip-sync a video file to an audio file")
    p.add_argument("--video", type=existing_file, required=True, help="the video to lip-sync (any fps, any length)")
    p.add_argument("--audio", type=existing_file, required=True,
                   help="the new speech: an audio file, or a video file whose audio track is used")
    p.add_argument("--out", type=Path, required=True, help="output .mp4 (the new audio is muxed in)")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", type=existing_path, default=None,
                   help="model weights: a .safetensors file or a folder holding the backend's files "
                        "(default: the shipped demo model)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKEND_NAMES),
                   help="model family: auto (detected from the weights' header; default), omnisync, xdub, latentsync "
                        "(LatentSync 1.5 / 1.6 and MuseTalk 1.5 files)")
    p.add_argument("--vae", type=existing_path, default=None,
                   help="the VAE the model works in (a diffusers folder or .safetensors file); not needed for the "
                        "pixel-codec OmniSync models")
    p.add_argument("--audio-models", type=existing_path, default=None,
                   help="folder with the speech encoders a backend needs (X-Dub: Whisper large-v2 + wav2vec2; "
                        "LatentSync: Whisper tiny), converted with `omnisync convert`")
    p.add_argument("--box", default=None,
                   help="'auto' (follow the located face), 'x,y,w,h' in pixels, or nothing (the whole frame)")
    p.add_argument("--blend", choices=("mouth", "box", "jaw"), default="mouth",
                   help="take only the mouth from the result, the whole box, or the lips and jaw outlined by the "
                        "face mesh (default: mouth)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="working size: the box's longer side is resized to this (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto: a GPU if there is one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no progress log lines (warnings and errors only)")
    add_sampling_args(p)
    p.set_defaults(func=cmd_lipsync)

    p = sub.add_parser("info", help="print a checkpoint's config and parameter count")
    p.add_argument("checkpoint", type=existing_file, help="an OmniSync .safetensors checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a randomly initialised checkpoint of a preset (for tests)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="the .safetensors file to write")
    p.add_argument("--preset", default="tiny", help="model size preset: tiny, small, base")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.set_defaults(func=cmd_init)

    for register in _extra_commands():
        register(sub)
    return parser


COMMAND_MODULES = (".commands", ".convert", ".landmarks", ".backend_bench")  # light modules: their handlers import the heavy code


def _extra_commands() -> list[Callable]:
    """Subcommands defined next to their code (train, bench, perf, demo, longvideo) register themselves here."""
    return [importlib.import_module(name, __package__).register_cli for name in COMMAND_MODULES]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CliError as exc:
        sys.stderr.write(f"omnisync {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        sys.stderr.write(f"omnisync {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"omnisync {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
