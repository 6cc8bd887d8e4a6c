"""MuseTalk 1.5 as a pipeline backend: one UNet call per frame at t = 0 whose output is the frame's latent itself.

Facts from the reference (TMElyralab/MuseTalk, ``scripts/inference.py`` lines 50, 175, 200-204 and
``musetalk/models/vae.py`` lines 40-49, 75-76, 84-121): the 256 x 256 face crop is encoded twice by the SD VAE
(sd-vae-ft-mse, latents x 0.18215): once with its lower half set to black (``masked``: rows H/2 .. H zeroed in 0..1,
i.e. -1 after normalisation) and once as it is (the reference image is the frame itself); the UNet2D takes
``cat([masked, reference])`` (8 channels), timestep 0 and the per-frame Whisper-tiny tokens after MuseTalk's
positional table, and returns the predicted latent, which is decoded as it is (divided by 0.18215). No noise, no
guidance, no sampler.

Mapping to the pipeline's flow convention: the schedule is the single step sigma 1 -> 0 and the start is the zero
latent, so Euler gives ``x_0 = x_1 + (0 - 1) v``; with ``v = (x - pred) / sigma`` that is ``pred`` exactly (0 - (0 -
pred) = pred in floating point too). tau, steps, shift, the seed and DS-CFG do not apply (there is one branch);
frames are independent, so windows only batch the frames (overlap 0).

Audio: MuseTalk 1.5 takes transformers' ``hidden_states`` of Whisper tiny: the embedding and blocks 0-2 before
ln_post, then the last block AFTER ln_post ([S,5,384]; :func:`musetalk_whisper_features`), windowed by
``audio_index.musetalk_frame_audio`` (zeros outside the audio) and offset by its sinusoidal table. Deviations: the
reference computes the log-mel per 30 s segment (each normalised on its own maximum, zero-padded as audio); we run
the whole file's log-mel through overlapping windows (no jump at 30 s); the VAE latents are the mean, not a sample.

Shape legend
  C latent channels (4)   T latent frames (= video frames)   h, w latent size   H, W crop size (256)
  S feature steps (50 Hz)   K taps (5)   A audio width (384)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from ...core.audio import prepare_audio
from ...core.codec import Codec
from ...families.latentsync import LatentSyncUNet
from ...families.latentsync.audio_index import TAPS, musetalk_audio, musetalk_frame_audio
from ...sampling.backend import AudioCondition, Backend, CropRules, WindowInputs, WindowRules
from ...sampling.guidance import Guidance
from ...sampling.options import AudioInput, LipSyncOptions
from .backend import VAE_SCALE, check_sd_vae
from .speech import CHUNKINGS, check_whisper

__all__ = ["MuseTalkBackend", "MuseTalkCodec", "MuseTalkAudio", "musetalk_whisper_features", "upper_half_mask"]

RESOLUTION = 256
WINDOW = 16  # frames per UNet batch (frames are independent)
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def upper_half_mask(height: int, width: int) -> torch.Tensor:
    """[H,W]: 1 on rows 0 .. H//2 - 1 (kept), 0 below (the reference's half mask)."""
    mask = torch.zeros(height, width)
    mask[: height // 2] = 1.0
    return mask


def musetalk_whisper_features(encoder, wave16k: torch.Tensor, chunking: str = "overlap") -> torch.Tensor:
    """[S, 5, A]: embedding, blocks 0 .. L-2 before ln_post, then the last block after ln_post (HF hidden_states)."""
    from ...audio_models import encode

    names = ["embedding"] + [f"block.{i}" for i in range(len(encoder.layers) - 1)] + ["final"]
    feats = encode(encoder, wave16k, names, chunking)
    return torch.stack([feats[n] for n in names], dim=-2)  # L + 1 x [S,A] -> [S,L+1,A]


class MuseTalkCodec:
    """The SD VAE with MuseTalk's latent scale: encode x 0.18215, decode / 0.18215."""

    def __init__(self, vae: Codec):
        self.vae = vae
        self.spatial_factor, self.temporal_factor = vae.spatial_factor, vae.temporal_factor
        self.latent_channels = vae.latent_channels

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(frames) * VAE_SCALE

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / VAE_SCALE)


class MuseTalkAudio(AudioCondition):
    """Whisper-tiny hidden states [S,K,A] at 50 Hz -> per-frame tokens [n, 50, A] with MuseTalk's table added."""

    def __init__(self, audio: AudioInput, fps: float, width: int, encode: Optional[FeatureFn]):
        feats = audio.features
        if feats is None:
            if encode is None or audio.waveform is None:
                raise ValueError("MuseTalk needs Whisper-tiny features [steps, 5, 384] or a Whisper encoder "
                                 "(connect the audio models)")
            feats = encode(prepare_audio(audio.waveform, audio.sample_rate))
        if feats.dim() == 2 and feats.shape[1] == TAPS * width:
            feats = feats.reshape(feats.shape[0], TAPS, width)  # [S,K*A] -> [S,K,A]
        if feats.dim() != 3 or tuple(feats.shape[1:]) != (TAPS, width) or feats.shape[0] == 0:
            raise ValueError(f"MuseTalk audio features must be [steps, {TAPS}, {width}], got {list(feats.shape)}")
        self.features, self.fps = feats.float(), float(fps)

    def window(self, start: int, n_frames: int, temporal_factor: int) -> torch.Tensor:
        return musetalk_audio(musetalk_frame_audio(self.features, range(start, start + n_frames), self.fps))


@dataclass(frozen=True)
class MuseTalkCondition:
    latents: torch.Tensor  # [1,8,T,h,w]: masked-frame latent, reference latent
    audio: torch.Tensor  # [T,50,A]


class MuseTalkBackend(Backend):
    """:class:`LatentSyncUNet` with MuseTalk 1.5 weights (UNet2D, 8 input channels) behind the backend interface."""

    name = "musetalk"
    branches = ("cond",)
    patch_size = 1
    crop_rules = CropRules(resolution=(RESOLUTION, RESOLUTION), alignment="box")
    window_rules = WindowRules(default_window=WINDOW, default_overlap=0)

    def __init__(self, model: LatentSyncUNet, encode: Optional[FeatureFn] = None, chunking: str = CHUNKINGS[0]):
        if model.config.family != "musetalk":
            raise ValueError(f"this backend runs MuseTalk UNets; the model is a {model.config.family} UNet")
        self.model = self.module = model
        self.config = model.config
        self.encode, self.chunking = encode, chunking

    def with_speech(self, speech: Any, chunking: Optional[str] = None) -> "MuseTalkBackend":
        """A shallow copy that encodes waveforms with ``speech.whisper`` (Whisper tiny, checked first)."""
        out = copy.copy(self)
        out.chunking = chunking or self.chunking
        if out.chunking not in CHUNKINGS:
            raise ValueError(f"chunking must be one of {CHUNKINGS}, got {out.chunking!r}")
        if speech is None:
            out.encode = None
            return out
        whisper = getattr(speech, "whisper", speech)
        check_whisper(whisper, self.config.audio_dim, "the connected Whisper encoder")
        prepare, release = getattr(speech, "prepare", None), getattr(speech, "release", None)

        @torch.no_grad()
        def features(wave16k: torch.Tensor) -> torch.Tensor:
            device = prepare() if prepare is not None else None
            try:
                wave = wave16k.to(device) if device is not None else wave16k
                return musetalk_whisper_features(whisper, wave, out.chunking).float().cpu()
            finally:
                if release is not None:
                    release()

        out.encode = features
        return out

    def prepare_codec(self, codec: Optional[Codec]) -> Codec:
        if isinstance(codec, MuseTalkCodec):
            return codec
        return MuseTalkCodec(check_sd_vae(codec, "MuseTalk"))

    def default_options(self) -> LipSyncOptions:
        return LipSyncOptions(tau=1.0, steps=1, window=WINDOW, overlap=0, solver="euler")

    def audio_condition(self, audio: AudioInput, fps: float, options: LipSyncOptions) -> MuseTalkAudio:
        return MuseTalkAudio(audio, fps, self.config.audio_dim, self.encode)

    def condition(self, window: WindowInputs) -> MuseTalkCondition:
        frames = window.frames.to(window.source.device)  # [F,H,W,3] 0..1
        mask = upper_half_mask(frames.shape[1], frames.shape[2]).to(frames)
        with torch.no_grad():
            masked = window.codec.encode(frames * mask[None, :, :, None]).to(window.source)  # lower half black
        latents = torch.cat([masked, window.source], dim=1)  # [1,8,T,h,w]
        return MuseTalkCondition(latents, window.audio.to(window.source.device))

    def window_noise(self, shape: Sequence[int], seed: int, first_frames: Sequence[int], device,
                     dtype) -> torch.Tensor:
        return torch.zeros(tuple(shape), device=device, dtype=dtype)

    def sigmas(self, steps: int, start: float, shift: float) -> torch.Tensor:
        return torch.tensor([1.0, 0.0], dtype=torch.float64)  # one step; tau, steps and shift do not apply

    def initial_latent(self, source: torch.Tensor, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
        return torch.zeros_like(source)

    def guidance(self, gmap: torch.Tensor, sigma_start: float, options: LipSyncOptions) -> Guidance:
        return Guidance(self.branches, lambda sigma, step: [])  # one branch, no CFG

    def denoise(self, x: torch.Tensor, sigma: float, cond: MuseTalkCondition,
                branches: Sequence[str]) -> torch.Tensor:
        if tuple(branches) != self.branches:
            raise ValueError(f"MuseTalk has one branch {self.branches}, asked for {tuple(branches)}")
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            pred = self.model(cond.latents.to(dtype), 0, cond.audio.to(dtype)).float()  # [1,4,T,h,w]
        return ((x.float() - pred) / sigma).to(x.dtype)  # Euler to sigma 0 lands on pred
