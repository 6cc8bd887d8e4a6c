"""``omnisync landmarks``: per-frame face landmarks, boxes and confidences of a video as JSON (and a preview).

Detection + the 478-point face mesh (MediaPipe's models in PyTorch, weights in the pack), followed frame to frame,
smoothed; frames without a face fall back to the weight-free locator, then to their neighbours (``source`` per
frame in the JSON says which).
"""

from __future__ import annotations

import argparse
from pathlib import Path

RULES_HELP = "largest (default), index (left to right, with --index), nearest (to --point x,y in 0..1)"


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y in 0..1, got {text!r}") from None
    return x, y


def register_cli(sub) -> None:
    p = sub.add_parser("landmarks", help="face landmarks, boxes and confidences per frame of a video, as JSON")
    p.add_argument("--video", type=Path, required=True, help="the video file to track")
    p.add_argument("--json", type=Path, required=True, help="where to write the per-frame landmarks (JSON)")
    p.add_argument("--draw", type=Path, default=None, help="also write a preview video with the points drawn")
    p.add_argument("--speaker", choices=("largest", "index", "nearest"), default="largest",
                   help="which face to follow when there are several: " + RULES_HELP + " (default: largest)")
    p.add_argument("--index", type=int, default=0, help="face index for --speaker index, 0 = leftmost (default: 0)")
    p.add_argument("--point", type=_point, default=None, help="x,y in 0..1 for --speaker nearest")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.set_defaults(func=_cmd_landmarks)


def _cmd_landmarks(args: argparse.Namespace) -> int:
    from ..core.files import refuse_same_file
    from ..faces import SpeakerChoice
    from ..faces.export import landmarks_command
    from .main import CliError, emit, resolve_device

    if not args.video.is_file():
        raise CliError(f"no such file: {args.video}")
    for out in (args.json, args.draw):
        if out is not None:
            refuse_same_file(out, args.video)
    try:
        choice = SpeakerChoice(rule=args.speaker, index=args.index, point=args.point)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    track = landmarks_command(args.video, args.json, args.draw, choice=choice, device=resolve_device(args.device))
    found = int(track.valid.sum())
    emit(f"wrote {args.json}: {len(track.valid)} frames, a face in {found}"
         + (f"; preview {args.draw}" if args.draw else ""))
    return 0
