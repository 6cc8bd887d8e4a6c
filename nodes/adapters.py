"""ComfyUI-free adapter logic of the OmniSync nodes: type conversions, codecs, step-by-step sampling.

Nothing here imports ComfyUI, so all of it is unit-tested without a ComfyUI checkout. The node modules
(``loader.py``, ``lipsync.py`` ...) only add the ComfyUI glue: schemas, the memory manager, progress and interrupts.

ComfyUI types handled here
  IMAGE                 float32 [F,H,W,C] in 0..1 (a video is a batch of frames)
  MASK                  float32 [F,H,W] (or [H,W])
  AUDIO                 {"waveform": float [B,C,N], "sample_rate": int}
  AUDIO_ENCODER_OUTPUT  {"encoded_audio": [B,S,D], "audio_samples": int (at 16 kHz)} from core AudioEncoderEncode
  LATENT                {"samples": [B,C,T,h,w] (video) or [F,C,h,w] (image VAE), ...}; ours add "omnisync_*" keys

Shape legend
  F video frames   H, W frame size   C latent channels   T latent frames   h, w latent size
  K audio tokens per latent frame    A audio width       N audio samples   S feature steps   D feature width
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from ..omnisync_model.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, all_finite, check_rate, check_waveform
from ..omnisync_model.codec import Codec, make_codec
from ..omnisync_model.flow import progressive_init
from ..omnisync_model.guidance import DSCFG
from ..omnisync_model.lipsync_file import fit_audio
from ..omnisync_model.locate import MouthLocator, MouthTrack, uniform_track
from ..omnisync_model.model import OmniSyncModel
from ..omnisync_model.pipeline import (AudioInput, FrameSource, LipSyncOptions, WindowAudio, guided_denoise,
                                       latent_first_frames, lipsync, mouth_map, plan_for_codec, to_float_frames,
                                       validate_fps, window_noise)
from ..omnisync_model.regions import (Box, crop_boxes_from_track, crop_per_frame, map_track_to_crop,
                                      paste_back_per_frame, working_size)
from ..omnisync_model.windows import Window

log = logging.getLogger(__name__)

ENCODER_SAMPLE_RATE = 16000  # core audio encoders (Whisper, wav2vec2) resample to 16 kHz
ENCODER_FEATURE_RATE = 50.0  # both emit one feature step per 20 ms
LATENT_KEYS = ("omnisync_tau", "omnisync_seed", "omnisync_temporal_factor", "omnisync_frames")


# --------------------------------------------------------------------------------------------- frames and audio


def image_to_frames(image: torch.Tensor, name: str = "images") -> torch.Tensor:
    """ComfyUI IMAGE [F,H,W,C] (C = 1, 3 or 4) -> float32 RGB frames [F,H,W,3] (a view when already RGB float).

    Every frame is checked here (NaN / Inf), so bad input fails before any model work."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]  # one frame [H,W,C] -> [1,H,W,C]
    if image.dim() != 4:
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, channels], got {list(image.shape)}")
    if image.shape[0] < 1 or min(image.shape[1:3]) < 1:
        raise ValueError(f"{name} has no pixels (shape {list(image.shape)}); need at least 1 frame of at least 1x1")
    if image.is_floating_point() and not all_finite(image):
        raise ValueError(f"{name} contain NaN or Inf values")
    if image.dtype == torch.float32 and image.shape[-1] == 3:
        return image
    return to_float_frames(image, name)


def check_fps(fps: Any) -> float:
    """A frame rate as a positive finite float (FLOAT widget, int or Fraction); clear ValueError otherwise."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number, got {fps!r}") from None
    return validate_fps(value)


def audio_from_comfy(audio: Mapping[str, Any], name: str = "audio") -> tuple[torch.Tensor, int]:
    """AUDIO dict -> (waveform float32 [C,N], sample_rate). A batch of several clips uses the first (warning)."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{name} must be an AUDIO dict with 'waveform' and 'sample_rate'")
    wave = audio["waveform"]
    if not isinstance(wave, torch.Tensor):
        raise ValueError(f"{name} waveform must be a tensor, got {type(wave).__name__}")
    if wave.dim() == 1:
        wave = wave[None]  # [N] -> [1,N]
    elif wave.dim() == 3:
        if wave.shape[0] > 1:
            log.warning("%s holds a batch of %d clips; using the first", name, wave.shape[0])
        wave = wave[0]  # [B,C,N] -> [C,N]
    if wave.dim() != 2 or wave.shape[-1] == 0:
        raise ValueError(f"{name} waveform must be [batch, channels, samples] with samples > 0, "
                         f"got {list(audio['waveform'].shape)}")
    rate = check_rate(audio["sample_rate"], f"{name} sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    check_waveform(wave, f"{name} waveform")
    return wave.float(), rate


def audio_to_comfy(wave: torch.Tensor, sample_rate: int) -> dict:
    """[C,N] -> AUDIO dict {"waveform": [1,C,N], "sample_rate"}."""
    return {"waveform": wave[None].contiguous(), "sample_rate": int(sample_rate)}


def fit_audio_to_video(audio: Mapping[str, Any], n_frames: int, fps: float) -> dict:
    """AUDIO trimmed or zero-padded to exactly round(n_frames / fps * sample_rate) samples (channels kept)."""
    wave, rate = audio_from_comfy(audio)
    return audio_to_comfy(fit_audio(wave, rate, n_frames, check_fps(fps)), rate)


def silent_audio(n_frames: int, fps: float, sample_rate: int = ENCODER_SAMPLE_RATE) -> dict:
    """A mono AUDIO of silence as long as the video."""
    n = int(round(n_frames / check_fps(fps) * sample_rate))
    return audio_to_comfy(torch.zeros(1, n), sample_rate)


def features_from_encoder_output(output: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
    """Core AUDIO_ENCODER_OUTPUT -> (features [S,D], rate in Hz), trimmed to the real audio.

    Whisper pads every clip to 30 s: steps past ``audio_samples`` (16 kHz samples of the real audio) are dropped.
    Both Whisper and wav2vec2 emit a step per 20 ms (50 Hz).
    """
    if not isinstance(output, Mapping) or "encoded_audio" not in output:
        raise ValueError("audio_features must be an AUDIO_ENCODER_OUTPUT (from the core AudioEncoderEncode node)")
    feats = output["encoded_audio"]
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or feats.shape[1] == 0:
        shape = list(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f"encoded_audio must be [batch, steps, width], got {shape}")
    if feats.shape[0] > 1:
        log.warning("audio_features hold a batch of %d clips; using the first", feats.shape[0])
    feats = feats[0]  # [B,S,D] -> [S,D]
    samples = output.get("audio_samples")
    if samples is not None:
        keep = max(1, math.ceil(int(samples) / ENCODER_SAMPLE_RATE * ENCODER_FEATURE_RATE))
        feats = feats[:keep]  # drop Whisper's padding to 30 s
    return feats.float(), ENCODER_FEATURE_RATE


NO_AUDIO = "connect an audio input (AUDIO) or audio_features (AUDIO_ENCODER_OUTPUT)"


def audio_input(audio: Optional[Mapping[str, Any]], features: Optional[Mapping[str, Any]]) -> AudioInput:
    """The pipeline's audio from an AUDIO and/or an AUDIO_ENCODER_OUTPUT (the features win when both are given)."""
    if features is not None:
        return _features_input(features)
    if audio is None:
        raise ValueError(NO_AUDIO)
    wave, rate = audio_from_comfy(audio)
    return AudioInput(waveform=wave, sample_rate=rate)


def speech_inputs(audio: Optional[Mapping[str, Any]], features: Optional[Mapping[str, Any]], n_frames: int,
                  fps: float) -> tuple[AudioInput, dict]:
    """(the pipeline's audio, the AUDIO output fitted to n_frames / fps), reading and checking the AUDIO once.

    The features win when both are given; with features only, the AUDIO output is silence (warning)."""
    if audio is None:
        if features is None:
            raise ValueError(NO_AUDIO)
        log.warning("OmniSync: only audio_features connected; the audio output is silence")
        return _features_input(features), silent_audio(n_frames, fps)
    wave, rate = audio_from_comfy(audio)
    fitted = audio_to_comfy(fit_audio(wave, rate, n_frames, check_fps(fps)), rate)
    source = _features_input(features) if features is not None else AudioInput(waveform=wave, sample_rate=rate)
    return source, fitted


def _features_input(features: Mapping[str, Any]) -> AudioInput:
    feats, rate = features_from_encoder_output(features)
    return AudioInput(features=feats, feature_rate=rate)


# --------------------------------------------------------------------------------------------- OMNISYNC_AUDIO


@dataclass(frozen=True)
class EncodedAudio:
    """OMNISYNC_AUDIO: audio features aligned to the video's frames by time.

    ``tokens`` [1,F,K,A] holds K audio tokens per video frame (frame i centred at (i + 0.5) / fps). The source
    audio is kept so a sampler working on latent frames that span several video frames (a video VAE) can align
    tokens to the latent frames' centres instead.
    """

    audio: AudioInput
    fps: float
    n_frames: int
    tokens: torch.Tensor  # [1,F,K,A]
    margin_s: float = 1.0

    def for_latent(self, model: OmniSyncModel, temporal_factor: int) -> torch.Tensor:
        """Tokens [1,T,K,A] for the latent frames of a codec with this temporal factor."""
        if temporal_factor == 1:
            return self.tokens
        return WindowAudio(model, self.audio, self.fps, self.margin_s).tokens(0, self.n_frames, temporal_factor)


def encode_audio(model: OmniSyncModel, audio: AudioInput, fps: float, n_frames: int,
                 margin_s: float = 1.0) -> EncodedAudio:
    """Per-frame audio tokens for ``n_frames`` video frames at ``fps`` (the model's encoder or feature adapter)."""
    fps = check_fps(fps)
    if int(n_frames) < 1:
        raise ValueError(f"frame_count must be >= 1, got {n_frames}")
    tokens = WindowAudio(model, audio, fps, margin_s).tokens(0, int(n_frames), 1)  # [1,F,K,A]
    return EncodedAudio(audio, fps, int(n_frames), tokens, margin_s)


# --------------------------------------------------------------------------------------------- LATENT


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


def noise_latent(source: Mapping[str, Any], tau: float, seed: int, temporal_factor: int = 1) -> dict:
    """Progressive init of a source LATENT: (1 - tau) * source + tau * noise; remembers tau, seed and tf.

    Noise of latent frame j depends only on (seed, the first video frame j covers), exactly as
    ``pipeline.window_noise`` for a window starting at frame 0, so the modular path reproduces OmniSyncLipSync.
    """
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if int(temporal_factor) < 1:
        raise ValueError(f"temporal_factor must be >= 1, got {temporal_factor}")
    x, image_batch = latent_to_5d(source, "source latent")
    x = x.float()
    n_video = video_frames_for(x.shape[2], int(temporal_factor))
    firsts = latent_first_frames(0, n_video, int(temporal_factor))
    noise = window_noise(x.shape, int(seed), firsts, x.device, x.dtype)  # [1,C,T,h,w]
    noised = progressive_init(x, noise, float(tau))
    return latent_from_5d(noised, image_batch, tau=float(tau), seed=int(seed), temporal_factor=int(temporal_factor))


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


# --------------------------------------------------------------------------------------------- mouth tracks


def locate_track(frames: torch.Tensor, check_interrupt: Optional[Callable[[], None]] = None) -> MouthTrack:
    """The built-in locator, fed a chunk at a time with an interrupt check after each; never aborts (falls back to
    a uniform track with a warning)."""
    try:
        locator = MouthLocator()
        for start in range(0, frames.shape[0], locator.options.chunk):
            locator.add(frames[start:start + locator.options.chunk])
            if check_interrupt is not None:
                check_interrupt()
        return locator.finish()
    except (ValueError, RuntimeError) as exc:
        log.warning("OmniSync mouth locator failed (%s); using the frame centre with uniform guidance", exc)
        return uniform_track(frames.shape[0])


def fit_track_length(centres: torch.Tensor, valid: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame mouth track [F',2], [F'] fitted to n frames: truncated, or the last entry repeated (warning)."""
    m = centres.shape[0]
    if m == n:
        return centres, valid
    log.warning("mouth track has %d frames, the video %d; %s", m, n, "truncating" if m > n else "repeating the last")
    if m > n:
        return centres[:n], valid[:n]
    idx = torch.arange(n).clamp(max=m - 1)  # repeat the last entry
    return centres[idx], valid[idx]


def track_arrays(track: Any, n_frames: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(centres [F,2] normalised x, y; valid [F] bool) of an OMNISYNC_MOUTH (anything with .centres/.valid)."""
    if track is None:
        return None, None
    centres = torch.as_tensor(track.centres, dtype=torch.float32).reshape(-1, 2)  # [F,2]
    valid = torch.as_tensor(track.valid, dtype=torch.bool).reshape(-1)  # [F]
    if centres.shape[0] == 0:
        return None, None
    return fit_track_length(centres, valid, n_frames)


def fit_mask_count(mask: torch.Tensor, n_frames: int) -> torch.Tensor:
    """MASK [M,H,W] or [H,W] -> [F,H,W]: one mask is used for every frame; other counts are fitted (warning)."""
    if mask.dim() == 2:
        mask = mask[None]  # [H,W] -> [1,H,W]
    if mask.dim() != 3 or mask.shape[0] < 1:
        raise ValueError(f"mask must be a MASK [frames, height, width], got {list(mask.shape)}")
    m = mask.shape[0]
    if m == n_frames:
        return mask
    if m != 1:
        log.warning("mask has %d frames, the video %d; %s", m, n_frames,
                    "truncating" if m > n_frames else "repeating the last")
    idx = torch.arange(n_frames).clamp(max=m - 1)
    return mask[idx]


# --------------------------------------------------------------------------------------------- codecs


class VAECodec:
    """A ComfyUI VAE behind the :class:`Codec` protocol (duck-typed: encode, decode, latent_channels, ...).

    Video VAEs (``latent_dim == 3``, e.g. Wan 2.1: 8x spatial, 4x temporal, 16 channels) encode frames
    [F,H,W,3] to [1,C,T,h,w] and decode to [1,T',H,W,3]. Image VAEs encode each frame ([F,C,h,w]) and have a
    temporal factor of 1. The factors come from the VAE: ``spacial_compression_encode()`` and
    ``temporal_compression_decode()`` (None for image VAEs). Latents are the VAE's raw output, as core VAEEncode
    gives them.
    """

    def __init__(self, vae: Any, after_use: Optional[Callable[[], None]] = None):
        for attr in ("encode", "decode", "latent_channels"):
            if not hasattr(vae, attr):
                raise ValueError(f"the connected VAE has no '{attr}'; connect a VAE from a core VAE loader "
                                 f"or OmniSyncPixelVAE")
        self.vae = vae
        self.video = getattr(vae, "latent_dim", 2) == 3
        self.spatial_factor = int(_call_or(vae, "spacial_compression_encode", 8))
        self.temporal_factor = int(_call_or(vae, "temporal_compression_decode", None) or 1) if self.video else 1
        self.latent_channels = int(vae.latent_channels)
        self.after_use = after_use  # e.g. re-load the DiT if loading the VAE pushed it off the GPU

    def __repr__(self) -> str:
        return (f"VAECodec({type(self.vae).__name__}, spatial={self.spatial_factor}, "
                f"temporal={self.temporal_factor}, channels={self.latent_channels})")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [F,H,W,3] 0..1 -> latent [1,C,T,h,w]."""
        out = self.vae.encode(frames)
        self._used()
        if out.dim() == 4:
            return out.permute(1, 0, 2, 3).unsqueeze(0)  # image VAE [F,C,h,w] -> [1,C,F,h,w]
        return out  # video VAE [1,C,T,h,w]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [1,C,T,h,w] -> frames [T',H,W,3] clamped to 0..1."""
        if self.video:
            images = self.vae.decode(latent)  # [1,T',H,W,3]
        else:
            images = self.vae.decode(latent[0].permute(1, 0, 2, 3))  # [1,C,T,h,w] -> [T,C,h,w] -> [T,H,W,3]
        self._used()
        return images.reshape(-1, *images.shape[-3:]).float().clamp(0, 1)  # [1,T',H,W,3] -> [T',H,W,3]

    def _used(self) -> None:
        if self.after_use is not None:
            self.after_use()


def _call_or(obj: Any, name: str, default: Any) -> Any:
    fn = getattr(obj, name, None)
    return fn() if callable(fn) else default


def codec_for(model: OmniSyncModel, vae: Any = None, after_vae: Optional[Callable[[], None]] = None) -> Codec:
    """The model's built-in codec without a VAE, else the VAE wrapped; refuses a channel mismatch.

    ``after_vae`` runs after every VAE encode / decode (the nodes re-load the DiT there: loading the VAE may have
    moved it off the GPU).
    """
    cfg = model.config
    if vae is None:
        try:
            codec = make_codec(cfg.codec)
        except ValueError:
            raise ValueError(f"this checkpoint works in the latent space of '{cfg.codec}'; connect that VAE to the "
                             f"vae input") from None
    else:
        codec = VAECodec(vae, after_vae)
    check_codec(model, codec)
    return codec


def check_codec(model: OmniSyncModel, codec: Codec) -> None:
    want = model.config.in_channels
    if codec.latent_channels != want:
        hint = " (this is a pixel-codec model: leave the vae input empty or use OmniSyncPixelVAE)" \
            if model.config.codec.startswith("pixel") else ""
        raise ValueError(f"the VAE makes {codec.latent_channels}-channel latents but the model expects {want} "
                         f"channels (trained with codec '{model.config.codec}'){hint}")


# --------------------------------------------------------------------------------------------- one-node path


def lipsync_into(out: torch.Tensor, frames: FrameSource, fps: float, audio: AudioInput, model: OmniSyncModel,
                 codec: Codec, options: LipSyncOptions, **kwargs: Any) -> torch.Tensor:
    """Lip-sync into the preallocated ``out`` [F,H,W,3], the only full-resolution copy made (window by window)."""
    return lipsync(frames, fps, audio, model, codec, options, out=out, **kwargs)


@dataclass(frozen=True)
class NodeHooks:
    """What the ComfyUI glue supplies to the one-node path (defaults: plain CPU, no progress, no interrupts).

    prepare(window_tokens) loads the model and returns it; progress(done, total) and check_interrupt() are called
    once per sampling step; after_vae() runs after each VAE call (VAE work may evict the model).
    """

    prepare: Optional[Callable[[int], OmniSyncModel]] = None
    progress: Optional[Callable[[int, int], None]] = None
    check_interrupt: Optional[Callable[[], None]] = None
    after_vae: Optional[Callable[[], None]] = None
    output_device: Any = "cpu"


def lipsync_images(model: OmniSyncModel, images: torch.Tensor, fps: Any, audio: Mapping[str, Any],
                   options: LipSyncOptions, vae: Any = None, mouth: Any = None,
                   audio_features: Optional[Mapping[str, Any]] = None,
                   hooks: NodeHooks = NodeHooks()) -> tuple[torch.Tensor, dict]:
    """The OmniSyncLipSync node without ComfyUI: IMAGE + AUDIO -> (IMAGE [F,H,W,3], AUDIO fitted to F / fps).

    Inputs are checked first (nothing runs on bad input); a missing mouth track is located (never aborts: frames
    without a face get uniform guidance and a warning).
    """
    frames = image_to_frames(images)
    fps = check_fps(fps)
    n, height, width = frames.shape[:3]
    wave_input, fitted = speech_inputs(audio, audio_features, n, fps)
    codec = codec_for(model, vae, after_vae=hooks.after_vae)
    track = mouth if mouth is not None else locate_track(frames, hooks.check_interrupt)
    centres, valid = track_arrays(track, n)
    if hooks.prepare is not None:
        first = plan_for_codec(n, options, codec.temporal_factor)[0]
        model = hooks.prepare(window_tokens(first.length, height, width, codec, model.config.patch_size))
    out = torch.empty((n, height, width, 3), dtype=torch.float32, device=hooks.output_device)
    lipsync_into(out, frames, fps, wave_input, model, codec, options, mouth_centres=centres, mouth_valid=valid,
                 progress=hooks.progress, check_interrupt=hooks.check_interrupt)
    return out, fitted


def window_tokens(length: int, height: int, width: int, codec: Codec, patch: int) -> int:
    """Latent tokens of one window of ``length`` frames at height x width (for the memory manager's estimate)."""
    m = codec.spatial_factor * patch
    t = 1 + (length - 1) // codec.temporal_factor
    return t * (-(-height // m)) * (-(-width // m))


def make_options(tau: float, steps: int, seed: int, window: int, overlap: int, w_peak: float, w_base: float,
                 radius: float, gamma: float) -> LipSyncOptions:
    """LipSyncOptions from node widgets; ValueError (naming the widget) on inconsistent values."""
    guidance = DSCFG(w_peak=float(w_peak), w_base=float(w_base), radius=float(radius), gamma=float(gamma))
    return LipSyncOptions(tau=float(tau), steps=int(steps), seed=int(seed), window=int(window),
                          overlap=int(overlap), guidance=guidance)


# --------------------------------------------------------------------------------------------- modular sampler


@dataclass(frozen=True)
class SamplerInputs:
    noised: torch.Tensor  # [1,C,T,h,w]
    source: torch.Tensor  # [1,C,T,h,w]
    tau: float
    temporal_factor: int
    image_batch: bool


def sampler_inputs(noised: Mapping[str, Any], source: Mapping[str, Any], audio: EncodedAudio) -> SamplerInputs:
    """Check the two LATENTs and the audio against each other; read tau and the temporal factor."""
    if "omnisync_tau" not in noised:
        raise ValueError("the noised latent does not come from OmniSyncNoiseInit (it carries no tau); "
                         "connect OmniSyncNoiseInit's output to 'noised'")
    x, image_batch = latent_to_5d(noised, "noised latent")
    src, _ = latent_to_5d(source, "source latent")
    if x.shape != src.shape:
        raise ValueError(f"noised latent {list(x.shape)} and source latent {list(src.shape)} differ in shape; "
                         f"noise the same source you connect here")
    tf = int(noised.get("omnisync_temporal_factor") or infer_temporal_factor(x.shape[2], audio.n_frames))
    want = 1 + (audio.n_frames - 1) // tf
    if want != x.shape[2]:
        raise ValueError(f"the latent has {x.shape[2]} frames but the audio was encoded for {audio.n_frames} video "
                         f"frames ({want} latent frames with temporal factor {tf}); set frame_count of "
                         f"OmniSyncAudioEncode to the video's frame count")
    return SamplerInputs(x, src, float(noised["omnisync_tau"]), tf, image_batch)


def sample_latent(model: OmniSyncModel, audio: EncodedAudio, inputs: SamplerInputs, steps: int, cfg: DSCFG,
                  mouth: Any = None, on_step: Optional[Callable[[int], None]] = None, shift: float = 1.0) -> dict:
    """Guided Euler from sigma = tau to 0 over the whole latent (one window); returns the LATENT dict.

    Same maths as one window of ``pipeline.iter_lipsync``: DS-CFG map from the mouth track averaged over each latent
    frame, audio tokens at the latent frames' centres, sigmas ``sigma_schedule(steps, start=tau)``.
    """
    cfg_model = model.config
    if inputs.source.shape[1] != cfg_model.in_channels:
        raise ValueError(f"the latent has {inputs.source.shape[1]} channels, the model expects "
                         f"{cfg_model.in_channels}; encode with the VAE/codec the model was trained with "
                         f"('{cfg_model.codec}')")
    device = model.device
    src, hw = pad_to_multiple(inputs.source.to(device, torch.float32), cfg_model.patch_size)
    x, _ = pad_to_multiple(inputs.noised.to(device, torch.float32), cfg_model.patch_size)
    tokens = audio.for_latent(model, inputs.temporal_factor).to(device)
    centres, valid = track_arrays(mouth, audio.n_frames)
    win = Window(0, 0, audio.n_frames)
    n_video = video_frames_for(src.shape[2], inputs.temporal_factor)  # video frames the latent stands for
    gmap = mouth_map(centres, valid, win, n_video, inputs.temporal_factor, tuple(src.shape[-2:]), cfg)
    out, _ = guided_denoise(model, x, src, tokens, gmap, inputs.tau, int(steps), shift, cfg, on_step=on_step)
    out = out[..., :hw[0], :hw[1]]
    return latent_from_5d(out, inputs.image_batch, temporal_factor=inputs.temporal_factor)


# --------------------------------------------------------------------------------------------- face crop / paste


@dataclass(frozen=True)
class CropInfo:
    """OMNISYNC_CROP: where each frame's crop came from. boxes [F,4] integer pixels (x, y, w, h)."""

    boxes: torch.Tensor
    size: tuple[int, int]  # (height, width) of the crops
    frame_size: tuple[int, int]  # (height, width) of the full frames


def crop_faces(images: torch.Tensor, side: int, multiple: int, scale: float = 1.6, smooth_frames: int = 9,
               mouth: Any = None, check_interrupt: Optional[Callable[[], None]] = None
               ) -> tuple[torch.Tensor, CropInfo, MouthTrack]:
    """The OmniSyncFaceCrop node without ComfyUI: IMAGE [F,H,W,C] -> (crops [F,h,w,3] with the longer crop side
    ``side`` rounded to ``multiple``, the crop boxes, the mouth track in crop coordinates). A missing track is
    located (never aborts)."""
    frames = image_to_frames(images)
    n, height, width = frames.shape[:3]
    track = mouth if mouth is not None else locate_track(frames, check_interrupt)
    if len(track) != n:
        raise ValueError(f"the mouth track has {len(track)} frames but images has {n}; connect the "
                         f"OmniSyncMouthRegion made from these frames")
    boxes = crop_boxes_from_track(track, (height, width), scale=float(scale), smooth_frames=int(smooth_frames))
    x, y, w, h = boxes[0].tolist()  # every box has the same size
    hw = working_size(Box(x, y, w, h), side, multiple)
    crops = crop_per_frame(frames, boxes, hw)
    return crops, CropInfo(boxes, hw, (height, width)), map_track_to_crop(track, boxes, (height, width))


def paste_faces(images: torch.Tensor, synced: torch.Tensor, crop: CropInfo, feather: int = 16) -> torch.Tensor:
    """The OmniSyncFacePaste node without ComfyUI: synced crops back into a copy of the frames (feathered edge,
    colour matched); pixels outside the boxes are bit-exact copies of ``images``."""
    frames = image_to_frames(images)
    result = image_to_frames(synced, "synced")
    if tuple(frames.shape[1:3]) != tuple(crop.frame_size):
        raise ValueError(f"images are {frames.shape[2]}x{frames.shape[1]} but the crop was made on "
                         f"{crop.frame_size[1]}x{crop.frame_size[0]} frames; connect the same frames")
    if result.shape[0] != frames.shape[0] or crop.boxes.shape[0] != frames.shape[0]:
        raise ValueError(f"frame counts differ: images {frames.shape[0]}, synced {result.shape[0]}, "
                         f"crop boxes {crop.boxes.shape[0]}")
    return paste_back_per_frame(frames, result, crop.boxes, feather=int(feather))
