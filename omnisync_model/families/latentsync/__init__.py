"""LatentSync 1.5 / 1.6 (UNet3D with motion modules) and MuseTalk 1.5 (UNet2D): one SD-1.5-layout UNet family.

* :class:`LatentSyncUNet` / :class:`LatentSyncConfig` (presets ``latentsync-1.5``, ``latentsync-1.6``,
  ``musetalk-1.5``, ``tiny``) and :func:`infer_config` from tensor shapes;
* :func:`load_latentsync` (strict), :func:`detect_family`, :func:`reference_forward` (the reference UNet's output
  from a converted file and the reference's own inputs);
* :mod:`.audio_index`: the per-frame Whisper-tiny windows LatentSync and MuseTalk feed the UNet.
"""

from .config import PRESETS, LatentSyncConfig, get_preset, infer_config
from .loading import (build_from_state_dict, check_shapes, detect_family, diagnose, expected_shapes, file_config,
                      load_latentsync, reference_forward)
from .unet import LatentSyncUNet

__all__ = ["PRESETS", "LatentSyncConfig", "LatentSyncUNet", "build_from_state_dict", "check_shapes",
           "detect_family", "diagnose", "expected_shapes", "file_config", "get_preset", "infer_config",
           "load_latentsync", "reference_forward"]
