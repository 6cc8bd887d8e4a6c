"""X-Dub (KlingAIResearch, arXiv 2512.25066): Wan2.2-TI2V-5B with the reference video as extra tokens along time
and a per-frame audio cross-attention. Its weights are released for academic research and technical demonstration
only (the reference repository has no licence file); this package is our own implementation from the facts.

Public entry points: :func:`xdub_forward` (the model function), :func:`load_xdub`, :func:`detect_xdub`,
:func:`infer_config`, :func:`get_preset`, :class:`XDubModel`, :func:`audio_windows` (per-latent audio indexing).
"""

from .audio_index import audio_window_indices, audio_windows, xdub_audio_windows
from .config import RELEASED_HASH, XDubConfig, detect_xdub, diffsynth_hash, get_preset, infer_config
from .dit import XDubModel
from .forward import pad_context, xdub_forward
from .ops import CastOps
from .weights import load_xdub, read_xdub_config

__all__ = ["XDubConfig", "XDubModel", "xdub_forward", "pad_context", "load_xdub", "read_xdub_config",
           "detect_xdub", "infer_config", "get_preset", "diffsynth_hash", "RELEASED_HASH", "CastOps",
           "audio_window_indices", "audio_windows", "xdub_audio_windows"]
