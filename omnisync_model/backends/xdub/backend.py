"""X-Dub as a pipeline backend: its sampler reproduced as the default mode, OmniSync's techniques as options.

Default mode (the reference's inference script): 50 Euler steps with shift 5 from pure noise, seeded Gaussian noise
for the whole clip, the timestep rounded through bf16, three branches [no ref / no audio, ref / no audio, ref +
audio] in one batch combined with r(t) (piecewise cosine around 2.5) and a(t) = 10 t^1.5, the latents' outer ring
replaced by the noised source every step (and by the clean source at the end), 77-frame windows continued from the
previous window's last 5 output frames (2 latents, written back after every step).

The pipeline integrates ``x += (sigma_next - sigma) v``; the reference also writes into the sample (ring, motion
frames). Those writes are folded into the returned velocity: where the reference sets the sample to y before the
model (ring) the velocity gains ``(y - x) / dt``, and where it sets it to y after the step (motion frames, the final
clean ring) the velocity is ``(y - x) / dt``, so each Euler step lands exactly where the reference's sample is.

Options: ``tau < 1`` (progressive init from the source), ``mouth_map`` (DS-CFG's spatial map multiplying the audio
term), per-frame noise (``reference_noise=False``), ``stitch="crossfade"`` instead of the motion continuation.
The latents are those of the Wan2.2 VAE, normalised per channel as the reference's VAE wrapper does.

Shape legend
  B batch (1)   C latent channels (48)   T latent frames   h, w latent size   K audio steps per latent (8)
  S feature steps   Ca feature width (2048)   n branches
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ...core.codec import Codec
from ...families.xdub import XDubModel, audio_windows, pad_context, xdub_forward
from ...sampling.backend import AudioCondition, Backend, CropRules, WindowInputs, WindowRules, latent_first_frames
from ...sampling.guidance import DSCFG, Guidance
from ...sampling.options import AudioInput, LipSyncOptions
from . import schedule as S
from .codec import WAN22_CHANNELS, XDubLatentCodec, check_wan22_codec
from .speech import XDubSpeech

__all__ = ["XDubBackend", "XDubAudio", "XDubCondition"]

BRANCHES = ("nega", "ref", "ref_audio")
MOTION_FRAMES = 5  # video frames the next clip continues from (2 latents)
CLIP_FRAMES = 77  # 20 latents


class XDubAudio(AudioCondition):
    """Whisper + wav2vec2 features [S, 2048] (the audio models' output, at ``feature_rate``) cut per latent frame by
    absolute time."""

    def __init__(self, audio: AudioInput, fps: float, width: int, tokens: int):
        feats = audio.features
        if feats is None:
            raise ValueError("X-Dub needs Whisper large-v2 + wav2vec2 features: connect the OmniSync Audio Model "
                             "Loader (ComfyUI) or pass --audio-models (CLI), or give AudioInput.features "
                             f"[steps, {width}]")
        if feats.dim() == 3 and feats.shape[0] == 1:
            feats = feats[0]  # [1,S,Ca] -> [S,Ca]
        if feats.dim() != 2 or feats.shape[1] != width or feats.shape[0] == 0:
            raise ValueError(f"X-Dub audio features must be [steps, {width}], got {list(feats.shape)}")
        if not torch.isfinite(feats).all():
            raise ValueError("audio features contain NaN or Inf values")
        self.features, self.fps, self.rate, self.tokens = feats.float(), float(fps), float(audio.feature_rate), tokens

    def window(self, start: int, n_frames: int, temporal_factor: int) -> torch.Tensor:
        firsts = latent_first_frames(start, n_frames, temporal_factor)
        return audio_windows(self.features, firsts, self.fps, self.rate, self.tokens)[None]  # [1,T,K,Ca]


@dataclass(frozen=True)
class XDubCondition:
    ref: torch.Tensor  # [1,C,T,h,w] the source clip's latents (X-Dub's reference video)
    audio: torch.Tensor  # [1,T,K,Ca]
    context: torch.Tensor  # [1,512,Ct]
    motion: Optional[torch.Tensor]  # [1,C,m,h,w] latents of the previous clip's last frames, or None


class XDubBackend(Backend):
    """:class:`XDubModel` behind the backend interface.

    context: the umt5 states of the empty prompt [1, L, 4096] (padded to 512 tokens here). ref_scale / audio_scale:
    the guidance weights (reference 2.5 / 10); dynamic: r(t), a(t) schedules (else constant weights); border: ring
    width replaced by the source (0 = off); mouth_map: multiply the audio term by DS-CFG's spatial map;
    reference_noise: one seeded Gaussian draw per window (else the pipeline's per-frame noise); round_timestep:
    feed the model the bf16-rounded timestep as the reference does. speech: the two speech encoders
    (:class:`.speech.XDubSpeech`) that turn a waveform into features; without them the audio must come as features.
    """

    name = "xdub"
    branches = BRANCHES
    window_rules = WindowRules(default_window=CLIP_FRAMES, default_overlap=MOTION_FRAMES, motion_frames=MOTION_FRAMES)
    crop_rules = CropRules(resolution=(512, 512), alignment="box")

    def __init__(self, model: XDubModel, context: torch.Tensor, ref_scale: float = S.REF_SCALE,
                 audio_scale: float = S.AUDIO_SCALE, dynamic: bool = True, border: int = S.BORDER_WIDTH,
                 mouth_map: bool = False, reference_noise: bool = True, round_timestep: bool = True,
                 speech: Optional[XDubSpeech] = None):
        self.model = self.module = model
        self.config = model.config
        self.patch_size = model.config.patch_size[1]
        self.set_context(context)
        self.speech = speech
        self.ref_scale, self.audio_scale, self.dynamic = ref_scale, audio_scale, dynamic
        self.border, self.mouth_map = border, mouth_map
        self.reference_noise, self.round_timestep = reference_noise, round_timestep
        # per-window state the pipeline sets before denoising (sigmas(), window_noise()): the schedule, to find each
        # step's size, and the window's noise, which the reference also uses for the source ring
        self._sigmas: list[float] = []
        self._noise: Optional[torch.Tensor] = None

    def set_context(self, context: torch.Tensor) -> None:
        """The umt5 states of the empty prompt [1, L, Ct] or [L, Ct] (padded to the model's 512 tokens)."""
        if context.dim() == 2:
            context = context[None]  # [L,Ct] -> [1,L,Ct]
        if context.dim() != 3 or context.shape[0] != 1 or context.shape[-1] != self.config.text_dim:
            raise ValueError(f"context must be [1, L, {self.config.text_dim}] umt5 states, got {list(context.shape)}")
        if not torch.isfinite(context).all():
            raise ValueError("the umt5 context contains NaN or Inf values")
        self.context = pad_context(context.detach().float().cpu(), self.config.text_len)

    def with_speech(self, speech: Optional[XDubSpeech]) -> "XDubBackend":
        """A shallow copy (same weights) that encodes waveforms with ``speech``."""
        if speech is not None and speech.width != self.config.audio_in_dim:
            raise ValueError(f"the speech encoders give {speech.width} features per step; this X-Dub model takes "
                             f"{self.config.audio_in_dim} (Whisper large-v2 1280 + wav2vec2-base 768)")
        out = copy.copy(self)
        out.speech = speech
        return out

    # ------------------------------------------------------------------ codec and options

    def prepare_codec(self, codec: Optional[Codec]) -> Codec:
        """The VAE, checked, with the Wan2.2 latent normalisation (48-channel models; smaller test configs take
        the codec's latents as they are)."""
        if codec is None:
            raise ValueError("the X-Dub backend needs the Wan2.2 VAE (48-channel latents): connect it")
        if isinstance(codec, XDubLatentCodec):
            return codec
        want = self.config.in_channels
        if want == WAN22_CHANNELS:
            check_wan22_codec(codec, want)
            return XDubLatentCodec(codec)
        if codec.latent_channels != want or codec.temporal_factor != 4:
            raise ValueError(f"the VAE makes {codec.latent_channels}-channel latents with temporal factor "
                             f"{codec.temporal_factor}; X-Dub needs the Wan2.2 VAE ({want} channels, factor 4), "
                             f"not a Wan 2.1 VAE")
        return codec

    def check_latent(self, latent: torch.Tensor) -> None:
        if latent.shape[1] != self.config.in_channels:
            raise ValueError(f"the latent has {latent.shape[1]} channels; X-Dub expects {self.config.in_channels} "
                             f"(Wan2.2 VAE)")

    def default_options(self) -> LipSyncOptions:
        return LipSyncOptions(tau=1.0, steps=S.STEPS, shift=S.SHIFT, window=CLIP_FRAMES, overlap=MOTION_FRAMES,
                              stitch="continue", guidance=DSCFG(), solver="euler")

    def inference_memory(self, tokens: int) -> int:
        """Activations of one three-branch forward: reference + target tokens, the FFN dominating (bf16)."""
        c = self.config
        return int(len(self.branches) * 2 * tokens * (8 * c.dim + 2 * c.ffn_dim) * 2)

    # ------------------------------------------------------------------ conditioning

    def audio_condition(self, audio: AudioInput, fps: float, options: LipSyncOptions) -> XDubAudio:
        if audio.features is None and audio.waveform is not None and self.speech is not None:
            audio = self.speech.audio_input(audio)  # Whisper + wav2vec2 over the whole file, once
        return XDubAudio(audio, fps, self.config.audio_in_dim, self.config.audio_tokens)

    def condition(self, window: WindowInputs) -> XDubCondition:
        motion = None
        if window.motion is not None and window.motion.shape[0] > 0:
            with torch.no_grad():  # the previous clip's last frames, re-encoded: 5 frames -> 2 latents
                motion = window.codec.encode(window.motion.to(window.source.device)).to(window.source)
        audio = window.audio.to(window.source.device)
        return XDubCondition(window.source, audio, self.context.to(window.source.device), motion)

    # ------------------------------------------------------------------ sampling

    def window_noise(self, shape: Sequence[int], seed: int, first_frames: Sequence[int], device,
                     dtype) -> torch.Tensor:
        if self.reference_noise:
            gen = torch.Generator("cpu").manual_seed(int(seed))
            noise = torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
        else:
            noise = super().window_noise(shape, seed, first_frames, device, dtype)
        self._noise = noise  # the reference noises the source ring with the window's initial noise
        return noise

    def sigmas(self, steps: int, start: float, shift: float) -> torch.Tensor:
        sig = S.euler_sigmas(steps, shift, start)
        self._sigmas = [float(s) for s in sig]  # denoise folds the reference's sample writes into each step
        return sig

    def guidance(self, gmap: torch.Tensor, sigma_start: float, options: LipSyncOptions) -> Guidance:
        spatial = gmap.detach().float() if self.mouth_map else None

        def weights(sigma: float, step: int):
            t = S.guidance_time(self._timestep(sigma, torch.device("cpu")))  # in the timestep's dtype (bf16)
            r = S.ref_weight(t, self.ref_scale) if self.dynamic else torch.full_like(t, self.ref_scale)
            a = S.audio_weight(t, self.audio_scale) if self.dynamic else torch.full_like(t, self.audio_scale)
            r, a = float(r), float(a)
            return [r, a * spatial.to(gmap.device) if spatial is not None else a]

        return Guidance(self.branches, weights)

    def _timestep(self, sigma: float, device) -> torch.Tensor:
        """[1] timestep: sigma * 1000 in float32, then rounded to bf16 as the reference (kept in bf16: the guidance
        weights and the ring's noise level are computed from it in bf16 too)."""
        t = torch.tensor([sigma], dtype=torch.float32, device=device) * S.TRAIN_STEPS
        return S.model_timestep(t) if self.round_timestep else t

    def _next_sigma(self, sigma: float) -> Optional[float]:
        for i in range(len(self._sigmas) - 1):
            if self._sigmas[i] == sigma:
                return self._sigmas[i + 1]
        return None

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float, cond: XDubCondition, branches: Sequence[str]) -> torch.Tensor:
        unknown = sorted(set(branches) - set(self.branches))
        if unknown:
            raise ValueError(f"unknown guidance branch(es) {unknown}; this backend has {self.branches}")
        timestep = self._timestep(sigma, x.device)
        x_in = self._with_border(x, cond, timestep)
        v = self._velocities(x_in, timestep, cond, branches)  # [n,C,T,h,w]
        return self._fold_writes(x, x_in, v, sigma, cond)

    def _with_border(self, x: torch.Tensor, cond: XDubCondition, timestep: torch.Tensor) -> torch.Tensor:
        """The sample the reference feeds the model: its ring replaced by the source noised to the step's level."""
        if self.border <= 0:
            return x
        noise = self._noise if self._noise is not None and self._noise.shape == x.shape else torch.zeros_like(x)
        start = cond.motion.shape[2] if cond.motion is not None else 0
        ring = S.noised(cond.ref, noise, S.border_sigma(timestep).to(cond.ref.dtype))
        return S.replace_border(x, ring, self.border, start)

    def _velocities(self, x: torch.Tensor, timestep: torch.Tensor, cond: XDubCondition,
                    branches: Sequence[str]) -> torch.Tensor:
        n, dtype = len(branches), self.dtype
        zeros_ref, zeros_audio = torch.zeros_like(cond.ref), torch.zeros_like(cond.audio)
        ref = torch.cat([zeros_ref if b == "nega" else cond.ref for b in branches])  # [n,C,T,h,w]
        audio = torch.cat([cond.audio if b == "ref_audio" else zeros_audio for b in branches])  # [n,T,K,Ca]
        context = cond.context.expand(n, -1, -1)  # [1,512,Ct] -> [n,512,Ct] (a view)
        motion = cond.motion.to(dtype) if cond.motion is not None else None
        out = xdub_forward(self.model, x.to(dtype), timestep, context.to(dtype), audio.to(dtype), ref.to(dtype),
                           motion)
        return out.to(x.dtype)

    def _fold_writes(self, x: torch.Tensor, x_in: torch.Tensor, v: torch.Tensor, sigma: float,
                     cond: XDubCondition) -> torch.Tensor:
        nxt = self._next_sigma(sigma)
        if nxt is None:
            return v
        dt = nxt - sigma
        out = v + (x_in - x) / dt  # the step starts from the ring-replaced sample
        if nxt == 0.0 and self.border > 0:  # the reference's final write: the clean source ring
            start = cond.motion.shape[2] if cond.motion is not None else 0
            target = S.replace_border(x_in + dt * v, cond.ref, self.border, start)
            out = (target - x) / dt
        if cond.motion is not None:
            m = cond.motion.shape[2]
            out[:, :, :m] = (cond.motion - x[:, :, :m]) / dt  # land on the motion latents after every step
        return out
