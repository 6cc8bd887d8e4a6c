"""Speech-like audio for the synthetic suite and the ground-truth mouth opening it implies.

Syllables with a speaker's fundamental and formants under a loudness envelope; the ground truth opening of frame i
is the RMS level (dBFS) of a window centred on frame i's time, mapped linearly from FLOOR_DB (closed) to
FLOOR_DB + RANGE_DB (fully open). Randomness comes from numpy Generators seeded with ``[seed, stream]``.

Shape legend:
  N  audio samples (mono, float32)     F  video frames; per-frame scalars [F, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16000
MIN_WINDOW_S = 0.04  # shortest loudness window for the ground truth (keeps 60 fps targets smooth)
FLOOR_DB = -40.0  # RMS level (dBFS) that maps to a closed mouth
RANGE_DB = 30.0  # RMS levels at or above FLOOR_DB + RANGE_DB map to a fully open mouth
_STREAM_SPEECH = 1  # random stream of the speech (synthetic.py numbers the clip's other streams from 2)


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), stream])


@dataclass(frozen=True)
class Speaker:
    f0: float  # fundamental, Hz (90..260)
    formant_scale: float  # vocal tract scale (higher voices have higher formants)
    loudness: float  # peak amplitude of the whole utterance
    rate: float  # syllable duration scale


@dataclass(frozen=True)
class _Syllable:
    start: int  # first sample
    length: int  # samples
    amp: float
    f0: tuple[float, float]  # start, end (Hz)
    formants: tuple[tuple[float, ...], tuple[float, ...]]  # moving from, to (Hz)


def _speaker(rng: np.random.Generator) -> Speaker:
    f0 = float(rng.uniform(90.0, 260.0))
    scale = 0.85 + 0.3 * (f0 - 90.0) / 170.0 + float(rng.uniform(-0.05, 0.05))
    return Speaker(f0, scale, float(rng.uniform(0.35, 0.95)), float(rng.uniform(0.8, 1.2)))


def _formants(rng: np.random.Generator, speaker: Speaker) -> tuple[float, ...]:
    base = (rng.uniform(300, 850), rng.uniform(900, 2300), rng.uniform(2400, 3300))
    return tuple(float(f * speaker.formant_scale) for f in base)


def _syllable_plan(rng: np.random.Generator, speaker: Speaker, n_total: int, sr: int) -> list[_Syllable]:
    """Words of 1-5 syllables (80-300 ms each) separated by pauses of 150-800 ms of exact silence."""
    t = int(rng.uniform(0.0, 0.4) * sr)
    plan: list[_Syllable] = []
    prev = _formants(rng, speaker)
    while True:
        for _ in range(int(rng.integers(1, 6))):
            length = int(np.clip(rng.uniform(0.08, 0.30) * speaker.rate, 0.08, 0.30) * sr)
            if t + length > n_total:
                return plan
            nxt = _formants(rng, speaker)
            f0a = speaker.f0 * float(rng.uniform(0.9, 1.12))
            f0b = f0a * float(rng.uniform(0.88, 1.08))
            plan.append(_Syllable(t, length, float(rng.uniform(0.45, 1.0)), (f0a, f0b), (prev, nxt)))
            prev, t = nxt, t + length
        t += int(rng.uniform(0.15, 0.8) * sr)


def _synth_syllable(syl: _Syllable, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic tone shaped by 3 moving formant peaks, unit RMS, times a smooth envelope -> (wave, envelope)."""
    n = syl.length
    x = (np.arange(n) + 0.5) / n
    f0 = syl.f0[0] + (syl.f0[1] - syl.f0[0]) * x  # [n]
    phase = 2.0 * np.pi * np.cumsum(f0) / sr  # [n]
    k = np.arange(1, int(min(3800.0, 0.45 * sr) / max(syl.f0)) + 1)[:, None]  # harmonic numbers [K, 1]
    move = np.clip(x / 0.6, 0.0, 1.0)  # formants glide during the first 60 % of the syllable
    gain = np.zeros((k.shape[0], n))
    for j, (bw, g) in enumerate(((90.0, 1.0), (130.0, 0.6), (190.0, 0.3))):
        fj = syl.formants[0][j] + (syl.formants[1][j] - syl.formants[0][j]) * move  # [n]
        gain += g / (1.0 + ((k * f0 - fj) / bw) ** 2)  # [K, n]
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(k.shape[0], 1))
    tone = (gain * np.sin(k * phase + phases)).sum(0) + 0.02 * rng.standard_normal(n)
    tone /= np.sqrt(np.mean(tone**2)) + 1e-12
    env = syl.amp * np.sin(np.pi * x) ** 0.6
    return tone * env, env


def make_speech(seed: int, duration_s: float, sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-like audio -> (waveform [N] float32, per-sample loudness envelope [N] float32), N = round(d * sr).

    The envelope is the amplitude applied to a unit-RMS carrier (so it tracks the local RMS); both are exactly 0
    in pauses. The speaker (f0, formant scale, loudness, rate) is drawn from the seed.
    """
    n_total = int(round(duration_s * sample_rate))
    if n_total < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    rng = seeded_rng(seed, _STREAM_SPEECH)
    speaker = _speaker(rng)
    wave = np.zeros(n_total)
    env = np.zeros(n_total)
    for syl in _syllable_plan(rng, speaker, n_total, sample_rate):
        w, e = _synth_syllable(syl, sample_rate, rng)
        wave[syl.start : syl.start + syl.length] = w
        env[syl.start : syl.start + syl.length] = e
    peak = float(np.abs(wave).max()) if n_total else 0.0
    if peak > 0.0:
        wave *= speaker.loudness / peak
        env *= speaker.loudness / peak
    return torch.from_numpy(wave).float(), torch.from_numpy(env).float()


def mouth_opening(waveform: torch.Tensor, sample_rate: int, fps: float, n_frames: int,
                  floor_db: float = FLOOR_DB, range_db: float = RANGE_DB) -> torch.Tensor:
    """Ground-truth mouth opening [n_frames] in 0..1 from the loudness envelope.

    Frame i uses the RMS of the samples in a window of max(1/fps, 40 ms) centred on (i + 0.5) / fps (samples past
    either end count as silence), mapped by clamp((rms_db - floor_db) / range_db, 0, 1): exactly 0 when the window
    is silent, monotone non-decreasing in loudness.
    """
    x = torch.as_tensor(waveform, dtype=torch.float64).reshape(-1)  # [N]
    energy = torch.cat([x.new_zeros(1), torch.cumsum(x * x, 0)])  # prefix sums of x^2 [N + 1]
    width = max(1.0 / fps, MIN_WINDOW_S)
    centre = (torch.arange(n_frames, dtype=torch.float64) + 0.5) / fps
    lo = torch.round((centre - width / 2) * sample_rate).long().clamp(0, x.numel())
    hi = torch.round((centre + width / 2) * sample_rate).long().clamp(0, x.numel())
    ms = (energy[hi] - energy[lo]).clamp_min(0.0) / max(round(width * sample_rate), 1)
    db = 10.0 * torch.log10(ms.clamp_min(1e-30))
    opening = ((db - floor_db) / range_db).clamp(0.0, 1.0)
    return torch.where(ms > 0.0, opening, torch.zeros_like(opening)).float()
