"""Audio front end shared by every model family: checks, downmix, resampling, log-mel, and alignment of audio
features to (latent) video frames by absolute time. The OmniSync family's learned encoder lives in
``families/omnisync/audio_encoder.py``.

Shape legend
  N   audio samples                      C   audio channels
  B   batch                              M   mel frames (100 Hz at 16 kHz, hop 160)
  S   audio feature steps (50 Hz for AudioEncoder, feature_rate for external features)
  D   feature width (audio_dim after the encoder / adapter, De for external features)
  T   (latent) video frames              K   audio tokens per frame (a window centred on the frame)
  F   n_fft // 2 + 1 frequency bins      L, R  up / down factors of a resampling ratio (new/g, orig/g)

Time conventions (see notes/CONTRACT.md): video frame i is centred at (i + 0.5) / fps seconds; an audio
feature step s of a sequence that starts at ``time_offset`` seconds is centred at
``time_offset + (s + 0.5) / feature_rate``.  ``AudioEncoder`` output step s is centred at s / 50 s from the start
of its waveform (mel frame m is centred on sample 160 m, the stride-2 conv centres step s on mel frame 2 s), so
pass ``time_offset = start_seconds + ENCODER_TIME_SHIFT`` to ``align_features`` for encoder output.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from typing import Callable, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "N_MELS", "MEL_FLOOR", "MEL_NORM_SHIFT", "MEL_NORM_SCALE",
    "ENCODER_RATE", "ENCODER_TIME_SHIFT", "MIN_SAMPLE_RATE", "MAX_SAMPLE_RATE",
    "downmix", "resample", "prepare_audio",
    "mel_filterbank", "mel_power", "log_mel", "normalize_log_mel",
    "frame_centre_times", "align_features", "audio_span_for_frames",
]

SAMPLE_RATE = 16000  # model front-end rate
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop -> 100 mel frames per second
N_MELS = 80
MEL_FLOOR = 1e-10  # log(clamp(mel, min=MEL_FLOOR))
# Fixed affine normalisation of the natural-log mel power fed to AudioEncoder: (log_mel + 4) / 4.
# Silence sits at log(1e-10) = -23.0 -> -4.76; a full-scale tone at about +9 -> +3.2 (roughly Whisper's range).
MEL_NORM_SHIFT = 4.0
MEL_NORM_SCALE = 4.0
ENCODER_RATE = SAMPLE_RATE / HOP_LENGTH / 2  # 50 Hz
ENCODER_TIME_SHIFT = -0.5 / ENCODER_RATE  # encoder step s is centred at s / 50, not (s + 0.5) / 50
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000

# windowed-sinc resampler design (pure-torch path)
_SINC_ZEROS = 16  # zero crossings of the sinc on each side of the centre tap
_ROLLOFF = 0.945  # cutoff as a fraction of the lower Nyquist frequency
_KAISER_BETA = 8.6  # about 86 dB stop-band attenuation
_MAX_POLYPHASE_TAPS = 1 << 22  # larger polyphase kernels (odd ratios such as 44101 -> 16000) use the gather path
_MIN_PHASES = 32  # the conv path widens small ratios to at least this many output phases
_CHUNK_SAMPLES = 1 << 22  # input samples (conv path) / gathered taps (direct path) per chunk


# --------------------------------------------------------------------------------------------- validation


def all_finite(x: torch.Tensor) -> bool:
    """True when no element is NaN or Inf. A finite sum proves it in one pass without a copy (much cheaper than
    isfinite() on an hour of audio or a batch of frames); only when the sum overflows is every element checked."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_waveform(waveform: torch.Tensor, name: str = "waveform") -> None:
    """ValueError naming ``name`` unless ``waveform`` is a non-empty float tensor [N], [C, N] or [B, C, N] of finite
    samples."""
    if not isinstance(waveform, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dim() == 0 or waveform.dim() > 3:
        raise ValueError(f"{name} must have shape [N], [C, N] or [B, C, N]; got {tuple(waveform.shape)}")
    if waveform.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(waveform.shape)}): the audio has no samples")
    if not waveform.is_floating_point():
        raise ValueError(f"{name} must be floating point (-1..1), got dtype {waveform.dtype}")
    if not all_finite(waveform):
        raise ValueError(f"{name} contains NaN or Inf samples")


def check_rate(rate: object, name: str, low: int = 1, high: Optional[int] = None) -> int:
    """An integer sample rate in [low, high] Hz (ints, integral floats and numpy integers accepted)."""
    ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and float(rate).is_integer()
    if not ok or rate < low or (high is not None and rate > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number of Hz {span}, got {rate!r}")
    return int(rate)


# --------------------------------------------------------------------------------------------- downmix


def downmix(waveform: torch.Tensor) -> torch.Tensor:
    """Average all channels (any count, 5.1 included, LFE weighted like the others) to mono.

    [N] -> [N];  [C, N] -> [N];  [B, C, N] (ComfyUI AUDIO) -> [B, N], one mono signal per batch item.
    Raises ValueError for empty audio, NaN / Inf, non-float dtypes or more than 3 dims.
    """
    check_waveform(waveform)
    if waveform.dim() == 1:
        return waveform
    return waveform.mean(dim=-2)  # [C, N] -> [N] or [B, C, N] -> [B, N]


# --------------------------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=1)
def _torchaudio_resample() -> Optional[Callable[..., torch.Tensor]]:
    """torchaudio.functional.resample if torchaudio imports and runs here, else None (checked once)."""
    try:
        import torchaudio.functional as taf

        taf.resample(torch.zeros(1, 64), 2, 1)  # CUDA-linked wheels on CPU machines fail here or at import
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        logger.info("torchaudio unavailable (%s); using the built-in resampler", exc)
        return None
    return taf.resample


def _sinc_design(up: int, down: int) -> tuple[float, int]:
    """Cutoff c (in units of the input Nyquist frequency) and half-width W (input samples) of the filter."""
    cutoff = _ROLLOFF * min(1.0, up / down)
    return cutoff, int(math.ceil(_SINC_ZEROS / cutoff))


def _sinc_taps(arg: torch.Tensor, cutoff: float, half: int) -> torch.Tensor:
    """h(a) = c sinc(c a) kaiser(a / W): the low-pass impulse response at offsets ``arg`` (input samples)."""
    rel = (arg / half).clamp(-1.0, 1.0)
    beta = torch.tensor(_KAISER_BETA, dtype=arg.dtype, device=arg.device)
    window = torch.special.i0(beta * torch.sqrt(1.0 - rel * rel)) / torch.special.i0(beta)
    return cutoff * torch.sinc(cutoff * arg) * window


def _polyphase_kernel(up: int, down: int) -> torch.Tensor:
    """Polyphase taps [L, o_max + 2W] (float64) for one strided conv1d.

    Output sample n = q L + p sits at input position n R / L = q R + o_p + f_p with o_p = floor(p R / L) and
    f_p = (p R mod L) / L. It reads input samples k = q R + o_p - W + 1 + j (j = 0..2W-1) with weight
    h(f_p + W - 1 - j). Phase p's taps are placed at columns o_p .. o_p + 2W - 1 so that every phase reads the
    same input window starting at q R - W + 1.
    """
    cutoff, half = _sinc_design(up, down)
    phase = torch.arange(up, dtype=torch.int64)
    offset = phase * down // up  # o_p
    frac = (phase * down % up).double() / up  # f_p, exact for integer rates
    taps = torch.arange(2 * half, dtype=torch.int64)
    weights = _sinc_taps(frac[:, None] + (half - 1) - taps[None, :].double(), cutoff, half)  # [L, 2W]
    kernel = torch.zeros(up, int(offset[-1]) + 2 * half, dtype=torch.float64)
    return kernel.scatter_(1, offset[:, None] + taps[None, :], weights)  # phase p's taps at columns o_p + j


def _kernel_size(up: int, down: int) -> int:
    """Number of entries of the polyphase kernel [L, o_max + 2W]."""
    _, half = _sinc_design(up, down)
    return up * ((up - 1) * down // up + 2 * half)


def _resample_conv(x: torch.Tensor, up: int, down: int, n_out: int) -> torch.Tensor:
    """[B', N] -> [B', n_out] with one strided conv1d per chunk (all L phases as output channels).

    Few phases (48 -> 16 kHz has L = 1) make a slow single-channel conv, so the ratio is written as kL / kR with
    at least _MIN_PHASES phases: the same filter and the same output, several times faster.
    """
    block = -(-_MIN_PHASES // up)
    up, down = up * block, down * block
    _, half = _sinc_design(up, down)
    kernel = _polyphase_kernel(up, down).to(device=x.device, dtype=x.dtype)
    width = kernel.shape[1]
    kernel = kernel.unsqueeze(1)  # [L, K] -> [L, 1, K] conv1d weight
    n_blocks = -(-n_out // up)  # Q blocks of L output samples
    padded_len = (n_blocks - 1) * down + width
    xp = F.pad(x.unsqueeze(1), (half - 1, max(0, padded_len - x.shape[-1] - (half - 1))))  # [B', N] -> [B', 1, N]
    step = max(1, _CHUNK_SAMPLES // down)  # blocks per chunk
    outs = []
    for q0 in range(0, n_blocks, step):
        q1 = min(n_blocks, q0 + step)
        y = F.conv1d(xp[..., q0 * down:(q1 - 1) * down + width], kernel, stride=down)  # [B', L, q1 - q0]
        outs.append(y.transpose(1, 2).reshape(x.shape[0], -1))  # interleave: [B', q, L] -> [B', q L]
    return torch.cat(outs, dim=1)[:, :n_out]


def _resample_direct(x: torch.Tensor, up: int, down: int, n_out: int) -> torch.Tensor:
    """[B', N] -> [B', n_out] gathering 2W taps per output sample (for ratios whose polyphase kernel is huge)."""
    cutoff, half = _sinc_design(up, down)
    n_in = x.shape[-1]
    taps = torch.arange(2 * half, device=x.device)
    step = max(1, _CHUNK_SAMPLES // (2 * half))
    outs = []
    for n0 in range(0, n_out, step):
        n = torch.arange(n0, min(n_out, n0 + step), device=x.device, dtype=torch.int64) * down
        base, frac = n // up, (n % up).double() / up  # integer and fractional input position
        idx = base[:, None] - half + 1 + taps[None, :]  # [n, 2W] input samples read
        weight = _sinc_taps(frac[:, None] + (half - 1) - taps[None, :].double(), cutoff, half)
        weight = weight * ((idx >= 0) & (idx < n_in))  # zero padding past both ends
        vals = x[:, idx.clamp(0, n_in - 1)]  # [B', n, 2W]
        outs.append((vals * weight.to(x.dtype)).sum(-1))
    return torch.cat(outs, dim=1)


def _resample_sinc(waveform: torch.Tensor, up: int, down: int, n_out: int,
                   max_kernel: int = _MAX_POLYPHASE_TAPS) -> torch.Tensor:
    """Windowed-sinc resampling of [..., N] by up / down (coprime) to [..., n_out]."""
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])  # [..., N] -> [B', N]
    if _kernel_size(up, down) <= max_kernel:
        out = _resample_conv(x, up, down, n_out)
    else:
        out = _resample_direct(x, up, down, n_out)
    return out.reshape(*shape[:-1], n_out)  # [B', N'] -> [..., N']


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int, *, use_torchaudio: bool = True) -> torch.Tensor:
    """Resample [..., N] from orig_sr to new_sr Hz -> [..., ceil(N * new_sr / orig_sr)].

    Uses torchaudio.functional.resample when torchaudio imports and works (and ``use_torchaudio``), otherwise a
    pure-torch Kaiser-windowed sinc polyphase resampler (ratio reduced by the gcd, one strided conv1d over chunks,
    16 zero crossings, cutoff 0.945 x the lower Nyquist; ratios with a huge polyphase kernel such as 44101 -> 16000
    gather their taps per output sample instead). Samples past both ends count as zeros. Half-precision input is
    processed in float32. Equal rates return ``waveform`` itself.
    """
    orig_sr = check_rate(orig_sr, "orig_sr")
    new_sr = check_rate(new_sr, "new_sr")
    if waveform.dim() == 0 or not waveform.is_floating_point():
        raise ValueError(f"waveform must be a floating-point tensor [..., N], got {waveform.dtype} "
                         f"{tuple(waveform.shape)}")
    if orig_sr == new_sr:
        return waveform
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    n_out = -(-waveform.shape[-1] * up // down)  # ceil(N * new / orig)
    if waveform.shape[-1] == 0:
        return waveform.new_zeros(*waveform.shape[:-1], 0)
    work = waveform.float() if waveform.dtype in (torch.float16, torch.bfloat16) else waveform
    # torchaudio builds the full polyphase kernel: use it only for ratios where that kernel is small
    ta_resample = _torchaudio_resample() if use_torchaudio and _kernel_size(up, down) <= _MAX_POLYPHASE_TAPS else None
    if ta_resample is not None:
        out = ta_resample(work, orig_sr, new_sr)[..., :n_out]
    else:
        out = _resample_sinc(work, up, down, n_out)
    return out.to(waveform.dtype)


def prepare_audio(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Validate, downmix and resample to the model's front end: -> [N'] float32 mono at 16 kHz.

    waveform: [N], [C, N] or [1, C, N] (a ComfyUI AUDIO waveform with one clip; B > 1 raises ValueError).
    sample_rate: integer Hz in 8000..96000, else ValueError naming the input.
    """
    sample_rate = check_rate(sample_rate, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    mono = downmix(waveform)
    if mono.dim() == 2:
        if mono.shape[0] != 1:
            raise ValueError(f"waveform holds a batch of {mono.shape[0]} clips; prepare_audio takes one clip")
        mono = mono[0]
    return resample(mono.float(), sample_rate, SAMPLE_RATE).contiguous()


# --------------------------------------------------------------------------------------------- log-mel


def _hz_to_mel(freq: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq / 700.0)  # HTK


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, f_min: float = 0.0, f_max: float = SAMPLE_RATE / 2,
                   n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Triangular HTK mel filters without area normalisation -> [n_freqs, n_mels] float32.

    Bin frequencies are linspace(0, sample_rate // 2, n_freqs); n_mels + 2 edge points are equally spaced on the
    HTK mel scale (mel = 2595 log10(1 + f / 700)) from f_min to f_max; filter m rises linearly from edge m to 1 at
    edge m + 1 and falls to 0 at edge m + 2 (torchaudio melscale_fbanks with mel_scale="htk", norm=None).
    """
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    edges_mel = torch.linspace(float(_hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64))),
                               float(_hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64))),
                               n_mels + 2, dtype=torch.float64)
    edges = _mel_to_hz(edges_mel)  # [n_mels + 2] Hz
    widths = edges[1:] - edges[:-1]  # [n_mels + 1]
    slopes = edges[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.minimum(rising, falling).clamp(min=0.0).float()


def _as_batch(wave: torch.Tensor) -> torch.Tensor:
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)  # [N] -> [1, N]
    if wave.dim() != 2 or wave.shape[-1] == 0:
        raise ValueError(f"expected a 16 kHz waveform [B, N] or [N] with N > 0, got {tuple(wave.shape)}")
    return wave


def mel_power(wave: torch.Tensor) -> torch.Tensor:
    """Mel power spectrogram of 16 kHz audio [B, N] or [N] -> [B, 80, N // 160 + 1] (float32, or float64 input).

    |STFT|^2 with n_fft = win_length = 400, hop 160, periodic Hann window, centred frames with reflect padding
    (constant zero padding when N <= 200, where reflection is impossible), then the mel_filterbank() projection.
    Equals torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80).
    """
    wave = _as_batch(wave)
    if wave.dtype != torch.float64:
        wave = wave.float()
    window = torch.hann_window(N_FFT, periodic=True, dtype=wave.dtype, device=wave.device)
    pad_mode = "reflect" if wave.shape[-1] > N_FFT // 2 else "constant"
    spec = torch.stft(wave, N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT, window=window, center=True,
                      pad_mode=pad_mode, normalized=False, onesided=True, return_complex=True)  # [B, F, M]
    power = spec.abs().pow(2.0)
    fb = mel_filterbank().to(device=wave.device, dtype=wave.dtype)  # [F, 80]
    return torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)  # [B, M, F] @ [F, 80] -> [B, 80, M]


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """Natural-log mel power: log(clamp(mel_power(wave), min=1e-10)) -> [B, 80, M] (M = N // 160 + 1)."""
    return torch.log(mel_power(wave).clamp(min=MEL_FLOOR))


def normalize_log_mel(logmel: torch.Tensor) -> torch.Tensor:
    """The fixed input scaling of AudioEncoder: (log_mel + 4) / 4."""
    return (logmel + MEL_NORM_SHIFT) / MEL_NORM_SCALE


# --------------------------------------------------------------------------------------------- alignment


def frame_centre_times(n_frames: int, fps: float, temporal_factor: int = 1) -> torch.Tensor:
    """Centre time in seconds of each (latent) frame -> [T] float64.

    Video frame i is centred at (i + 0.5) / fps. With temporal_factor tf > 1 (causal video VAE), latent 0 covers
    frame 0 and latent j >= 1 covers frames 1 + (j - 1) tf .. j tf (clipped to n_frames - 1); T = 1 + (n_frames - 1)
    // tf and the latent centre is the mean of its frames' centres.
    """
    if n_frames <= 0 or temporal_factor <= 0 or not float(fps) > 0:
        raise ValueError(f"need n_frames > 0, fps > 0, temporal_factor > 0; got {n_frames}, {fps}, "
                         f"{temporal_factor}")
    fps = float(fps)
    if temporal_factor == 1:
        return (torch.arange(n_frames, dtype=torch.float64) + 0.5) / fps
    n_latent = 1 + (n_frames - 1) // temporal_factor
    j = torch.arange(n_latent, dtype=torch.float64)
    first = torch.where(j == 0, 0.0, 1 + (j - 1) * temporal_factor)
    last = (j * temporal_factor).clamp(max=n_frames - 1)
    return ((first + last) / 2 + 0.5) / fps  # the mean of consecutive frame centres is the middle one's


def align_features(features: torch.Tensor, feature_rate: float, centre_times: torch.Tensor, n_tokens: int,
                   token_rate: float = ENCODER_RATE, time_offset: float = 0.0) -> torch.Tensor:
    """Sample a window of ``n_tokens`` audio tokens around each frame centre -> [B, T, K, D].

    Token k of frame t samples time c_t + (k - (K - 1) / 2) / token_rate. Feature step s is centred at
    time_offset + (s + 0.5) / feature_rate; values between step centres are linearly interpolated, values
    within half a step outside the first / last centre repeat the end step, and a sample time outside
    [time_offset, time_offset + S / feature_rate) gives zeros. Times are computed in float64, so hour-long
    inputs stay exact; the whole computation is one gather (no loop over frames).
    """
    if features.dim() != 3 or features.shape[1] == 0:
        raise ValueError(f"features must be [B, S, D] with S > 0, got {tuple(features.shape)}")
    if n_tokens <= 0 or feature_rate <= 0 or token_rate <= 0:
        raise ValueError(f"need n_tokens, feature_rate, token_rate > 0; got {n_tokens}, {feature_rate}, "
                         f"{token_rate}")
    b, s, d = features.shape
    centres = torch.as_tensor(centre_times, dtype=torch.float64).reshape(-1).cpu()  # [T]
    offsets = (torch.arange(n_tokens, dtype=torch.float64) - (n_tokens - 1) / 2) / float(token_rate)  # [K]
    times = centres[:, None] + offsets[None, :]  # [T, K] seconds
    pos = (times - float(time_offset)) * float(feature_rate) - 0.5  # in steps; step s is at pos == s
    valid = (pos >= -0.5) & (pos < s - 0.5)
    pos = pos.clamp(0.0, s - 1)
    lo = pos.floor().long().clamp(max=s - 1)
    hi = (lo + 1).clamp(max=s - 1)
    frac = (pos - lo).to(device=features.device, dtype=features.dtype)
    frac = frac.reshape(1, -1, 1)  # [T, K] -> [1, T K, 1]
    lo_vals = features.index_select(1, lo.reshape(-1).to(features.device))  # [B, T K, D]
    hi_vals = features.index_select(1, hi.reshape(-1).to(features.device))
    out = lo_vals * (1 - frac) + hi_vals * frac
    out = torch.where(valid.reshape(1, -1, 1).to(features.device), out, 0.0)  # [T, K] -> [1, T K, 1]
    return out.reshape(b, centres.shape[0], n_tokens, d)  # [B, T K, D] -> [B, T, K, D]


def audio_span_for_frames(start_frame: int, end_frame: int, fps: float, sample_rate: int, margin_s: float,
                          n_samples: Optional[int] = None) -> tuple[int, int, float]:
    """Waveform slice covering video frames [start_frame, end_frame) plus ``margin_s`` seconds on each side.

    Returns (sample_start, sample_end, time_offset): sample_start = floor((start_frame / fps - margin) * sr)
    clamped to >= 0, sample_end = ceil((end_frame / fps + margin) * sr) clamped to <= n_samples (when given) and
    to >= sample_start; time_offset = sample_start / sample_rate is the absolute time of the slice's first sample.
    """
    if end_frame < start_frame or start_frame < 0:
        raise ValueError(f"need 0 <= start_frame <= end_frame, got {start_frame}, {end_frame}")
    if not float(fps) > 0 or sample_rate <= 0 or margin_s < 0:
        raise ValueError(f"need fps > 0, sample_rate > 0, margin_s >= 0; got {fps}, {sample_rate}, {margin_s}")
    fps = float(fps)
    start = max(0, math.floor((start_frame / fps - margin_s) * sample_rate + 1e-9))
    end = math.ceil((end_frame / fps + margin_s) * sample_rate - 1e-9)
    if n_samples is not None:
        start = min(start, n_samples)
        end = min(end, n_samples)
    end = max(end, start)
    return start, end, start / sample_rate
