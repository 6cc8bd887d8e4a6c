"""LatentSync 1.5 / 1.6 as a pipeline backend: its sampler reproduced exactly as the default mode, OmniSync's
techniques as options.

Reference mode (``mode="reference"``, the reference's ``LipsyncPipeline``): DDIM over 20 steps from t = 951 (the
exact sigma mapping of :mod:`.schedule`), pure noise at the start (one noise tensor repeated over all frames),
CFG 1.5 with zeroed audio as the unconditional branch, non-overlapping 16-frame windows, the last DDIM level
(abar[0]) decoded as it is. The UNet input per frame is [noisy latent 4, mask 1, masked frame 4, reference 4]:
the mask is 1 where the crop is kept and 0 over the lower face, resized to the latent by nearest neighbour; the
masked frame is the crop with the lower face set to mid grey (pixels x mask in -1..1); the reference is the frame
itself. Latents are the SD VAE's (sd-vae-ft-mse) scaled by 0.18215.

Progressive mode (``mode="progressive"``): start from the source latent noised to ``tau`` (0.92 ~ t 958),
timesteps evenly spaced from there to 1, overlapping windows with crossfade and DS-CFG (spatial map and temporal
decay on the epsilon difference, which is the velocity difference: the mapping is affine).

Shape legend
  B batch (1)   C latent channels (4)   T latent frames (= video frames: the SD VAE is per frame)   h, w latent size
  H, W crop size   S feature steps (50 Hz)   K Whisper taps (5)   A audio width (384)   n branches
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ...core.audio import prepare_audio
from ...core.codec import Codec
from ...families.latentsync import LatentSyncUNet
from ...families.latentsync.audio_index import TAPS, latentsync_frame_audio
from ...sampling.backend import AudioCondition, Backend, CropRules, WindowInputs, WindowRules
from ...sampling.flow import seeded_noise
from ...sampling.guidance import DSCFG
from ...sampling.options import AudioInput, LipSyncOptions
from . import schedule as S

logger = logging.getLogger(__name__)

__all__ = ["LatentSyncBackend", "LatentSyncAudio", "LatentSyncCondition", "LatentSyncCodec", "lower_face_mask",
           "MODES"]

MODES = ("reference", "progressive")
VAE_SCALE = 0.18215  # sd-vae-ft-mse's scaling factor (the reference sets shift_factor 0)
REFERENCE_WINDOW = 16
FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # mono 16 kHz wave [N] -> Whisper-tiny features [S,K,A]


def lower_face_mask(height: int, width: int) -> torch.Tensor:
    """The fixed inpainting mask of an aligned face crop [H,W] (1 keep, 0 regenerate): the lower face from the
    nose down to the chin, the nose itself kept. Our parametric version of the reference's mask image: an
    ellipse (centre at mid-crop, half-axes 0.465 W and 0.445 H) below 0.37 H, minus a 0.32 W-wide nose band above
    mid-crop. Pass the reference's own mask image to the backend (``mask=``) for pixel-identical masks."""
    y = (torch.arange(height, dtype=torch.float32) + 0.5)[:, None] / height  # [H,1] in 0..1
    x = (torch.arange(width, dtype=torch.float32) + 0.5)[None, :] / width  # [1,W]
    inside = ((x - 0.5) / 0.465) ** 2 + ((y - 0.5) / 0.445) ** 2 <= 1.0
    region = inside & (y >= 0.37) & ~((y < 0.5) & ((x - 0.5).abs() < 0.16))
    return (~region).float()


class LatentSyncCodec:
    """The SD VAE as the backend needs it: latents scaled by 0.18215 (the pipeline's x0 coordinates), and the
    final flow latent converted to the reference's DDPM latent (x s(sigma_final)) before decoding."""

    def __init__(self, vae: Codec):
        self.vae = vae
        self.spatial_factor = vae.spatial_factor
        self.temporal_factor = vae.temporal_factor
        self.latent_channels = vae.latent_channels
        self.decode_scale = S.flow_scale(S.final_sigma()) / VAE_SCALE

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(frames) * VAE_SCALE

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent * self.decode_scale)


def check_sd_vae(codec: Optional[Codec], family: str) -> Codec:
    """The connected VAE when it is the Stable Diffusion VAE's shape (4 channels, 8x, one latent per frame)."""
    if codec is None:
        raise ValueError(f"the {family} backend needs the SD VAE (sd-vae-ft-mse): connect it")
    if (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) != (4, 8, 1):
        raise ValueError(f"the VAE makes {codec.latent_channels}-channel latents at {codec.spatial_factor}x "
                         f"spatial / {codec.temporal_factor}x temporal; {family} needs the Stable Diffusion "
                         f"VAE (sd-vae-ft-mse: 4 channels, 8x, one latent per frame), not a VAE of another family")
    return codec


class LatentSyncAudio(AudioCondition):
    """Whisper-tiny features [S,K,A] at 50 Hz (from ``AudioInput.features`` as [S,K*A] or [S,K,A], or encoded
    from the waveform by ``encode``), cut into the reference's per-frame windows by absolute frame index."""

    def __init__(self, audio: AudioInput, fps: float, width: int, encode: Optional[FeatureFn] = None):
        feats = audio.features
        if feats is None:
            if encode is None or audio.waveform is None:
                raise ValueError("LatentSync needs Whisper-tiny features [steps, 5, 384] (AudioInput.features, "
                                 "e.g. from audio_models.latentsync_whisper_features) or a Whisper encoder")
            feats = encode(prepare_audio(audio.waveform, audio.sample_rate))
        elif float(audio.feature_rate) != 50.0:
            raise ValueError(f"LatentSync's audio features run at 50 Hz, got {audio.feature_rate}")
        if feats.dim() == 2 and feats.shape[1] == TAPS * width:
            feats = feats.reshape(feats.shape[0], TAPS, width)  # [S,K*A] -> [S,K,A]
        if feats.dim() != 3 or tuple(feats.shape[1:]) != (TAPS, width) or feats.shape[0] == 0:
            raise ValueError(f"LatentSync audio features must be [steps, {TAPS}, {width}] (or [steps, "
                             f"{TAPS * width}]), got {list(feats.shape)}")
        if not torch.isfinite(feats).all():
            raise ValueError("audio features contain NaN or Inf values")
        self.features, self.fps = feats.float(), float(fps)

    def window(self, start: int, n_frames: int, temporal_factor: int) -> torch.Tensor:
        """Tokens [n_frames, 50, A] for video frames start .. start + n_frames - 1."""
        return latentsync_frame_audio(self.features, range(start, start + n_frames), self.fps)


@dataclass(frozen=True)
class LatentSyncCondition:
    extra: torch.Tensor  # [1,9,T,h,w]: mask, masked-frame latent, reference latent
    audio: torch.Tensor  # [T,50,A]


class LatentSyncBackend(Backend):
    """:class:`LatentSyncUNet` (LatentSync weights) behind the backend interface.

    mode: "reference" or "progressive" (module docstring). resolution: the face crop (256 for 1.5, 512 for 1.6:
    the two share one network, so the file cannot tell). mask: [R,R] in 0..1 (1 keep) to use instead of
    :func:`lower_face_mask`. encode: waveform -> features, when the audio comes as a waveform.
    """

    name = "latentsync"
    branches = ("uncond", "cond")
    patch_size = 1

    def __init__(self, model: LatentSyncUNet, mode: str = "reference", resolution: Optional[int] = None,
                 mask: Optional[torch.Tensor] = None, encode: Optional[FeatureFn] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if model.config.family != "latentsync":
            raise ValueError(f"this backend runs LatentSync UNets; the model is a {model.config.family} UNet")
        self.model = self.module = model
        self.config = model.config
        self.mode, self.mask, self.encode = mode, mask, encode
        res = int(resolution or self.config.resolution)
        self.crop_rules = CropRules(resolution=(res, res), alignment="similarity")
        overlap = 0 if mode == "reference" else 2
        self.window_rules = WindowRules(default_window=REFERENCE_WINDOW, default_overlap=overlap,
                                        max_window=self.config.max_frames)
        self._timesteps: dict[float, int] = {}  # sigma -> DDIM timestep of the reference schedules handed out

    # ------------------------------------------------------------------ codec and options

    def prepare_codec(self, codec: Optional[Codec]) -> Codec:
        if isinstance(codec, LatentSyncCodec):
            return codec
        return LatentSyncCodec(check_sd_vae(codec, "LatentSync"))

    def default_options(self) -> LipSyncOptions:
        if self.mode == "reference":
            return LipSyncOptions(tau=float(S.ddim_sigmas()[0]), steps=S.DEFAULT_STEPS, window=REFERENCE_WINDOW,
                                  overlap=0, guidance=DSCFG.static(S.GUIDANCE_SCALE), solver="euler")
        return LipSyncOptions(tau=0.92, steps=S.DEFAULT_STEPS, window=REFERENCE_WINDOW, overlap=2,
                              guidance=DSCFG(w_peak=S.GUIDANCE_SCALE, w_base=1.0, gamma=1.5), solver="euler")

    def inference_memory(self, tokens: int) -> int:
        """Rough activation bytes of one two-branch forward over ``tokens`` latent positions (T x h x w)."""
        return int(len(self.branches) * tokens * self.config.block_channels[0] * 4 * 40)

    # ------------------------------------------------------------------ conditioning

    def audio_condition(self, audio: AudioInput, fps: float, options: LipSyncOptions) -> LatentSyncAudio:
        return LatentSyncAudio(audio, fps, self.config.audio_dim, self.encode)

    def _mask(self, height: int, width: int, device) -> torch.Tensor:
        """[H,W] (1 keep), the given mask resized to the crop, else the parametric one."""
        if self.mask is None:
            return lower_face_mask(height, width).to(device)
        m = self.mask.float()
        if m.dim() == 3:
            m = m[0] if m.shape[0] in (1, 3) else m[..., 0]  # [C,H,W] or [H,W,C] -> one channel
        if tuple(m.shape) != (height, width):
            m = F.interpolate(m[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        return m.to(device)

    def condition(self, window: WindowInputs) -> LatentSyncCondition:
        frames = window.frames.to(window.source.device)  # [F,H,W,3] 0..1
        _, t, h, w = window.source.shape[1:]
        mask = self._mask(frames.shape[1], frames.shape[2], frames.device)  # [H,W]
        masked = frames * mask[None, :, :, None] + 0.5 * (1.0 - mask[None, :, :, None])  # lower face mid grey
        with torch.no_grad():
            masked_latent = window.codec.encode(masked).to(window.source)  # [1,4,T,h,w]
        small = F.interpolate(mask[None, None], size=(h, w), mode="nearest")  # [1,1,h,w]
        small = small[:, :, None].expand(1, 1, t, h, w).to(window.source)  # -> [1,1,T,h,w]
        extra = torch.cat([small, masked_latent, window.source], dim=1)  # [1,9,T,h,w]
        return LatentSyncCondition(extra, window.audio.to(window.source.device))

    # ------------------------------------------------------------------ sampling

    def window_noise(self, shape: Sequence[int], seed: int, first_frames: Sequence[int], device,
                     dtype) -> torch.Tensor:
        """One noise tensor [1,C,1,h,w] repeated over the frames (the reference's, for the whole video)."""
        b, c, t, h, w = shape
        return seeded_noise((b, c, 1, h, w), seed, device=device, dtype=dtype).expand(b, c, t, h, w).contiguous()

    def sigmas(self, steps: int, start: float, shift: float) -> torch.Tensor:
        if self.mode == "reference":
            sigmas = S.ddim_sigmas(steps)  # DDIM's own start (t = 951 for 20 steps); tau and shift do not apply
            self._timesteps.update(zip(sigmas[:-1].tolist(), S.ddim_timesteps(steps).tolist(), strict=True))
            return sigmas
        return S.progressive_sigmas(steps, start)

    def initial_latent(self, source: torch.Tensor, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
        if self.mode == "reference":
            return S.reference_initial_latent(noise.to(source), sigma0)
        return S.noised(source, noise.to(source), sigma0)

    def timestep(self, sigma: float) -> float:
        """The UNet timestep of ``sigma``: DDIM's integer timestep on the reference schedule, else fractional."""
        t = self._timesteps.get(float(sigma))
        return float(t) if t is not None else S.sigma_to_timestep(float(sigma))

    def denoise(self, x: torch.Tensor, sigma: float, cond: LatentSyncCondition,
                branches: Sequence[str]) -> torch.Tensor:
        unknown = sorted(set(branches) - set(self.branches))
        if unknown:
            raise ValueError(f"unknown guidance branch(es) {unknown}; this backend has {self.branches}")
        n, b, t = len(branches), x.shape[0], x.shape[2]
        sample = torch.cat([x * S.flow_scale(sigma), cond.extra.expand(b, -1, -1, -1, -1)], dim=1)  # [B,13,T,h,w]
        tokens = cond.audio.repeat(b, 1, 1)  # [T,50,A] -> [B*T,50,A]
        audio = torch.cat([torch.zeros_like(tokens) if br == "uncond" else tokens for br in branches])  # [n*B*T,..]
        dtype = next(self.model.parameters()).dtype
        timestep = torch.full((n * b,), self.timestep(sigma), device=x.device, dtype=torch.float64)
        with torch.no_grad():
            eps = self.model(sample.repeat(n, 1, 1, 1, 1).to(dtype), timestep, audio.to(dtype)).float()
        if t != eps.shape[2]:
            raise ValueError(f"the UNet returned {eps.shape[2]} frames for {t}")
        return S.velocity_from_eps(x.repeat(n, 1, 1, 1, 1).float(), eps, sigma).to(x.dtype)  # [n*B,C,T,h,w]
