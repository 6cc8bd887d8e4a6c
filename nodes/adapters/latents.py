"""LATENT: ComfyUI latents to the pipeline's [1,C,T,h,w] and back; the step-by-step path (noise init, sampler).

Shape legend
  F video frames   C latent channels   T latent frames   h, w latent size   tf temporal factor of the codec
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from ...omnisync_model.sampling.backend import Backend, WindowInputs, latent_first_frames, per_frame_noise
from ...omnisync_model.sampling.flow import progressive_init
from ...omnisync_model.sampling.options import LipSyncOptions
from ...omnisync_model.sampling.pipeline import guided_denoise, mouth_map
from ...omnisync_model.sampling.windows import Window
from .audio import EncodedAudio
from .tracks import track_arrays
from .windows import WindowSlot

log = logging.getLogger(__name__)



def latent_to_5d(latent: Mapping[str, Any], name: str = "latent") -> tuple[torch.Tensor, bool]:
    """LATENT -> (samples [1,C,T,h,w], was_image_batch). Image-VAE latents [F,C,h,w] become [1,C,F,h,w]."""
    if not isinstance(latent, Mapping) or "samples" not in latent:
        raise ValueError(f"{name} must be a LATENT dict with 'samples'")
    x = latent["samples"]
    if x.dim() == 4:
        return x.permute(1, 0, 2, 3).unsqueeze(0), True  # [F,C,h,w] -> [C,F,h,w] -> [1,C,F,h,w]
    if x.dim() != 5 or x.shape[0] != 1:
        raise ValueError(f"{name} samples must be a video latent [1, C, T, h, w] (or an image batch [F, C, h, w]), "
                         f"got {list(x.shape)}")
    return x, False


def latent_from_5d(x: torch.Tensor, image_batch: bool, **meta: Any) -> dict:
    """[1,C,T,h,w] -> LATENT dict in the layout it came in, with ``omnisync_*`` metadata."""
    samples = x[0].permute(1, 0, 2, 3).contiguous() if image_batch else x  # [1,C,T,h,w] -> [T,C,h,w]
    out = {"samples": samples}
    out.update({f"omnisync_{k}": v for k, v in meta.items() if v is not None})
    return out


def video_frames_for(latent_frames: int, temporal_factor: int) -> int:
    """Video frames a causal codec turns into ``latent_frames`` latents: 1 + (T - 1) * tf."""
    return 1 + (latent_frames - 1) * temporal_factor


def infer_temporal_factor(latent_frames: int, video_frames: int) -> int:
    """The codec's temporal factor tf with 1 + (video_frames - 1) // tf == latent_frames.

    An exact fit (video_frames == 1 + (latent_frames - 1) * tf, what causal video VAEs are fed) wins; otherwise the
    smallest tf that gives the count.
    """
    if latent_frames == video_frames:
        return 1
    if latent_frames < 1 or video_frames < latent_frames:
        raise ValueError(f"a latent with {latent_frames} frames cannot come from {video_frames} video frames")
    if latent_frames > 1 and (video_frames - 1) % (latent_frames - 1) == 0:
        return (video_frames - 1) // (latent_frames - 1)
    for tf in range(2, video_frames + 1):
        if 1 + (video_frames - 1) // tf == latent_frames:
            return tf
    raise ValueError(f"no temporal compression maps {video_frames} video frames to {latent_frames} latent frames; "
                     f"check that the audio's frame_count matches the video the latent was encoded from")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad latent [B,C,T,h,w] at the bottom/right so h, w are multiples; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    b, c, t = x.shape[:3]
    flat = x.reshape(b, c * t, h, w)  # [B,C,T,h,w] -> [B,C*T,h,w]: 2-D padding per latent frame
    flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
    return flat.reshape(b, c, t, h + ph, w + pw), (h, w)  # -> [B,C,T,h',w']


def noise_latent(source: Mapping[str, Any], tau: float, seed: int, temporal_factor: int = 1,
                 window: Optional[WindowSlot] = None, backend: Optional[Backend] = None) -> dict:
    """Progressive init of a source LATENT: (1 - tau) * source + tau * noise; remembers tau, seed, tf and start.

    Noise of latent frame j depends only on (seed, the absolute first video frame j covers), exactly as the
    pipeline draws it for a window starting at ``window.start`` (0 without a window), so the modular path
    reproduces OmniSyncLipSync window by window. With a ``backend`` its own noise and init rules are used.
    """
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if int(temporal_factor) < 1:
        raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
    x, image_batch = latent_to_5d(source, "source latent")
    x = x.float()
    start = window.start if window is not None else 0
    firsts = latent_first_frames(start, video_frames_for(x.shape[2], int(temporal_factor)), int(temporal_factor))
    if backend is not None:
        noise = backend.window_noise(x.shape, int(seed), firsts, x.device, x.dtype)  # [1,C,T,h,w]
        noised = backend.initial_latent(x, noise, float(tau))
    else:
        noised = progressive_init(x, per_frame_noise(x.shape, int(seed), firsts, x.device, x.dtype), float(tau))
    return latent_from_5d(noised, image_batch, tau=float(tau), seed=int(seed), temporal_factor=int(temporal_factor),
                          start=start)


@dataclass(frozen=True)
class SamplerInputs:
    noised: torch.Tensor  # [1,C,T,h,w]
    source: torch.Tensor  # [1,C,T,h,w]
    tau: float
    temporal_factor: int
    image_batch: bool


def sampler_inputs(noised: Mapping[str, Any], source: Mapping[str, Any], audio: EncodedAudio,
                   window: Optional[WindowSlot] = None) -> SamplerInputs:
    """Check the two LATENTs and the audio against each other; read tau and the temporal factor."""
    if "omnisync_tau" not in noised:
        raise ValueError("the noised latent does not come from OmniSyncNoiseInit (it carries no tau); "
                         "connect OmniSyncNoiseInit's output to 'noised'")
    x, image_batch = latent_to_5d(noised, "noised latent")
    src, _ = latent_to_5d(source, "source latent")
    if x.shape != src.shape:
        raise ValueError(f"noised latent {list(x.shape)} and source latent {list(src.shape)} differ in shape; "
                         f"noise the same source you connect here")
    n_video = window.length if window is not None else audio.n_frames  # video frames this latent stands for
    tf = int(noised.get("omnisync_temporal_factor") or infer_temporal_factor(x.shape[2], n_video))
    want = 1 + (n_video - 1) // tf
    if want != x.shape[2]:
        where = f"window {window.index} ({n_video} frames)" if window is not None else \
            f"the audio's {n_video} video frames (frame_count of OmniSyncAudioEncode)"
        raise ValueError(f"the latent has {x.shape[2]} frames but {where} make {want} latent frames with temporal "
                         f"factor {tf}; connect the latent made from the same frames")
    if window is not None and int(noised.get("omnisync_start", window.start)) != window.start:
        raise ValueError(f"the noised latent was made for the window starting at frame {noised['omnisync_start']}, "
                         f"not {window.start}; connect the same window to OmniSyncNoiseInit and OmniSyncSampler")
    return SamplerInputs(x, src, float(noised["omnisync_tau"]), tf, image_batch)


def sample_latent(backend: Backend, audio: EncodedAudio, inputs: SamplerInputs, steps: int,
                  options: LipSyncOptions, mouth: Any = None, on_step: Optional[Callable[[int], None]] = None,
                  window: Optional[WindowSlot] = None) -> dict:
    """Guided ODE solve (``options.solver``) from sigma = tau to 0 over one window's latent; returns the LATENT dict.

    Same maths as one window of ``pipeline.iter_lipsync``: audio conditioning and the DS-CFG map of the window's
    absolute frames (the whole clip without a window), the backend's schedule from tau, its guidance and denoiser.
    """
    backend.check_latent(inputs.source)
    device = backend.device
    src, hw = pad_to_multiple(inputs.source.to(device, torch.float32), backend.patch_size)
    x, _ = pad_to_multiple(inputs.noised.to(device, torch.float32), backend.patch_size)
    tf = inputs.temporal_factor
    n_video = video_frames_for(src.shape[2], tf)  # video frames the latent stands for (codec padding included)
    start = window.start if window is not None else 0
    length = window.length if window is not None else audio.n_frames
    win = Window(window.index if window is not None else 0, start, start + length)
    firsts = latent_first_frames(start, n_video, tf)
    centres, valid = track_arrays(mouth, window.total if window is not None else audio.n_frames)
    gmap = mouth_map(centres, valid, win, n_video, tf, tuple(src.shape[-2:]), options.guidance)
    cond = backend.condition(WindowInputs(src, None, None, audio.window(start, n_video, tf), start, firsts))
    sigmas = backend.sigmas(int(steps), inputs.tau, options.shift)
    guidance = backend.guidance(gmap.to(device), float(sigmas[0]), options)
    out, _ = guided_denoise(backend, x, cond, guidance, sigmas, on_step=on_step, solver=options.solver)
    out = out[..., :hw[0], :hw[1]]
    return latent_from_5d(out, inputs.image_batch, temporal_factor=tf)
