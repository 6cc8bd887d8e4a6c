"""Tests for omnisync_model.core.audio: downmix, resampling, log-mel, encoder / adapter modules and alignment."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnisync_model.core import audio as A
from omnisync_model.families.omnisync import audio_encoder as E
from omnisync_model.families.omnisync.audio_encoder import AudioEncoder


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.8, n: int | None = None) -> torch.Tensor:
    n = int(round(seconds * rate)) if n is None else n
    t = torch.arange(n, dtype=torch.float64) / rate
    return amp * torch.sin(2 * math.pi * freq * t)


def _mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _hz(m: float) -> float:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _edges(n_mels: int = 80, f_min: float = 0.0, f_max: float = 8000.0) -> list[float]:
    lo, hi = _mel(f_min), _mel(f_max)
    return [_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]


# ------------------------------------------------------------------------------------------------ downmix


def test_downmix_layouts():
    mono = torch.tensor([0.1, -0.2, 0.3])
    assert torch.equal(A.downmix(mono), mono)
    stereo = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])
    assert torch.allclose(A.downmix(stereo), torch.tensor([0.5, 0.5, 0.0]))
    surround = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4)  # 5.1: six channels
    assert torch.allclose(A.downmix(surround), surround.mean(0))
    batch = torch.stack([stereo, -2 * stereo])  # [B=2, C=2, N=3]
    out = A.downmix(batch)
    assert out.shape == (2, 3)
    assert torch.allclose(out[1], -2 * out[0])
    huge = torch.full((2, 4), 1e38)  # finite samples whose sum overflows must still pass validation
    assert torch.equal(A.downmix(huge), torch.full((4,), 1e38))


@pytest.mark.parametrize("bad", [
    torch.zeros(0), torch.zeros(2, 0), torch.zeros(1, 2, 0), torch.tensor([0.0, float("nan")]),
    torch.tensor([[0.0, float("inf")]]), torch.zeros(1, 1, 1, 4), torch.tensor(1.0), torch.zeros(4, dtype=torch.int16),
])
def test_downmix_rejects_bad_audio(bad):
    with pytest.raises(ValueError, match="waveform"):
        A.downmix(bad)


# ------------------------------------------------------------------------------------------------ resample


RATES = [(44100, 16000), (8000, 16000), (48000, 16000), (22050, 16000), (11025, 16000), (96000, 16000),
         (32000, 16000), (16000, 44100), (44100, 48000), (16000, 8000)]


@pytest.mark.parametrize("use_torchaudio", [False, True])
@pytest.mark.parametrize("orig,new", RATES)
def test_resample_keeps_sine(orig, new, use_torchaudio):
    x = _sine(1000.0, orig, 0.25).float()
    y = A.resample(x, orig, new, use_torchaudio=use_torchaudio)
    assert y.dtype == torch.float32
    assert y.shape[0] == math.ceil(x.shape[0] * new / orig)
    ref = _sine(1000.0, new, 0, n=y.shape[0])
    edge = new // 50  # 20 ms away from both ends
    assert (y.double() - ref)[edge:-edge].abs().max() < 1e-2


@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (16000, 44100), (11025, 16000)])
def test_resample_direct_path_matches_conv_path(orig, new):
    torch.manual_seed(0)
    x = torch.randn(2, 3001)
    g = math.gcd(orig, new)
    n_out = math.ceil(3001 * new / orig)
    conv = A._resample_sinc(x, new // g, orig // g, n_out)
    direct = A._resample_sinc(x, new // g, orig // g, n_out, max_kernel=0)
    assert torch.allclose(conv, direct, atol=1e-5)


def test_resample_coprime_rate_and_dc_gain():
    x = _sine(1000.0, 44101, 0.2).float()  # gcd(44101, 16000) = 1: uses the gather path
    y = A.resample(x, 44101, 16000)  # also with torchaudio installed: its kernel would be 16000 x 44101
    ref = _sine(1000.0, 16000, 0, n=y.shape[0])
    assert (y.double() - ref)[320:-320].abs().max() < 1e-2
    dc = A.resample(torch.ones(4410), 44100, 16000, use_torchaudio=False)
    assert torch.allclose(dc[200:-200], torch.ones(1), atol=1e-3)


def test_resample_removes_aliases():
    x = _sine(12000.0, 48000, 0.25).float()  # above the 8 kHz Nyquist of the target rate
    y = A.resample(x, 48000, 16000, use_torchaudio=False)
    assert y[320:-320].abs().max() < 1e-3


def test_resample_identity_length_and_batch_dims():
    x = torch.randn(2, 3, 1000)
    assert torch.equal(A.resample(x, 22050, 22050), x)
    for orig, new in RATES + [(44101, 16000)]:
        for n in (1, 2, 7, 441, 1000):
            y = A.resample(torch.randn(2, 3, n), orig, new, use_torchaudio=False)
            assert y.shape == (2, 3, math.ceil(n * new / orig)), (orig, new, n)
    assert A.resample(torch.randn(5).double(), 48000, 16000).dtype == torch.float64
    assert A.resample(torch.randn(48).half(), 48000, 16000).dtype == torch.float16


@pytest.mark.parametrize("bad", [0, -16000, 44100.5, "16000", None])
def test_resample_rejects_bad_rates(bad):
    with pytest.raises(ValueError, match="orig_sr"):
        A.resample(torch.zeros(10), bad, 16000)


# ------------------------------------------------------------------------------------------------ prepare_audio


def test_prepare_audio_stereo_44k():
    tone = _sine(440.0, 44100, 0.5).float()
    wave = torch.stack([tone, tone]).unsqueeze(0)  # ComfyUI AUDIO waveform [1, 2, N]
    out = A.prepare_audio(wave, 44100)
    assert out.dtype == torch.float32 and out.dim() == 1
    assert out.shape[0] == math.ceil(tone.shape[0] * 16000 / 44100)
    assert (out.double() - _sine(440.0, 16000, 0, n=out.shape[0]))[320:-320].abs().max() < 1e-2
    assert torch.equal(A.prepare_audio(out, 16000), out)
    assert torch.equal(A.prepare_audio(tone[None], 44100.0), out)  # an integral float rate is accepted


@pytest.mark.parametrize("rate", [7999, 96001, 44100.5, "44100", True, None, 0])
def test_prepare_audio_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match="sample_rate"):
        A.prepare_audio(torch.zeros(100), rate)


def test_prepare_audio_rejects_batches_and_bad_samples():
    with pytest.raises(ValueError, match="batch"):
        A.prepare_audio(torch.zeros(2, 1, 100), 16000)
    with pytest.raises(ValueError, match="empty"):
        A.prepare_audio(torch.zeros(1, 2, 0), 16000)
    with pytest.raises(ValueError, match="NaN"):
        A.prepare_audio(torch.full((2, 10), float("nan")), 16000)


# ------------------------------------------------------------------------------------------------ mel front end


def test_filterbank_triangles_match_definition():
    fb = A.mel_filterbank()
    assert fb.shape == (201, 80) and fb.dtype == torch.float32
    assert (fb >= 0).all()
    edges = _edges()
    for m in (0, 10, 40, 79):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k in range(201):
            f = 40.0 * k
            expect = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
            assert abs(fb[k, m].item() - expect) < 1e-5, (m, k)


def test_filterbank_peaks_at_centres_and_partitions_unity():
    fb = A.mel_filterbank(n_freqs=16001)  # 0.5 Hz bins
    edges = _edges()
    freqs = torch.linspace(0, 8000, 16001)
    for m in range(80):
        nearest = int(round(edges[m + 1] / 0.5))
        assert fb[:, m].argmax().item() == nearest
        assert fb[nearest, m].item() > 0.97  # the lowest filters are 22 Hz wide: 0.25 Hz off centre costs 2 %
        support = freqs[fb[:, m] > 1e-6]
        assert support.min() > edges[m] and support.max() < edges[m + 2]
    between = (freqs >= edges[1]) & (freqs <= edges[80])
    assert torch.allclose(fb[between].sum(1), torch.ones(1), atol=1e-4)  # neighbouring triangles sum to 1


def test_mel_power_of_bin_exact_cosine_is_exact():
    k, amp = 50, 0.5  # 2000 Hz = bin 50 of a 400-point FFT at 16 kHz
    x = amp * torch.cos(2 * math.pi * 40.0 * k * torch.arange(3201, dtype=torch.float64) / 16000)
    mel = A.mel_power(x.float()).double()  # 3201 samples: the cosine is symmetric about both end samples
    assert mel.shape == (1, 80, 3201 // 160 + 1)
    fb = A.mel_filterbank().double()
    # periodic Hann: |X_k| = amp * 100, |X_(k +- 1)| = amp * 50, other bins 0 (reflect padding keeps a cosine)
    expect = (amp * 100) ** 2 * fb[k] + (amp * 50) ** 2 * (fb[k - 1] + fb[k + 1])
    assert torch.allclose(mel[0], expect[:, None].expand_as(mel[0]), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("m,shift", [(20, 0.0), (30, 0.25), (45, -0.25), (60, 0.0), (75, 0.3)])
def test_tone_energy_lands_in_nearest_mel_bin(m, shift):
    edges = _edges()
    centres = edges[1:-1]
    spacing = centres[m + 1] - centres[m] if shift > 0 else centres[m] - centres[m - 1]
    freq = centres[m] + shift * spacing
    mel = A.mel_power(_sine(freq, 16000, 0.5).float())[0].sum(-1)
    nearest = min(range(80), key=lambda i: abs(centres[i] - freq))
    assert nearest == m
    assert mel.argmax().item() == m


def test_log_mel_definition_frames_and_short_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 1234) * 0.1
    assert torch.allclose(A.log_mel(x), torch.log(A.mel_power(x).clamp(min=1e-10)))
    assert A.log_mel(x).shape == (2, 80, 1234 // 160 + 1)
    assert A.log_mel(x[0]).shape == (1, 80, 8)
    assert torch.allclose(A.log_mel(torch.zeros(800)), torch.full((1, 80, 6), math.log(1e-10)))
    assert A.log_mel(torch.randn(100)).shape == (1, 80, 1)  # too short to reflect: zero padding
    with pytest.raises(ValueError):
        A.log_mel(torch.zeros(2, 0))


def test_mel_frame_m_is_centred_on_sample_160m():
    x = torch.zeros(16000)
    x[160 * 37] = 1.0  # a click on the centre of frame 37
    energy = A.mel_power(x)[0].sum(0)
    assert energy.argmax().item() == 37
    assert torch.allclose(energy[36], energy[38], rtol=1e-4)  # symmetric neighbours


def test_mel_matches_torchaudio():
    torchaudio = pytest.importorskip("torchaudio")
    try:
        transform = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80)
    except (OSError, RuntimeError, AttributeError) as exc:
        pytest.skip(f"torchaudio does not work here: {exc}")
    torch.manual_seed(0)
    x = torch.randn(2, 16000) * 0.3
    ref = transform(x)
    ours = A.mel_power(x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()
    fb = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 80, 16000, None, "htk")
    assert torch.allclose(A.mel_filterbank(), fb, atol=1e-4)


# ------------------------------------------------------------------------------------------------ modules


class _CountingOps:
    """An ``operations`` namespace that records which layers were built through it."""

    def __init__(self):
        self.built = []
        outer = self

        def wrap(base):
            class Wrapped(base):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    outer.built.append(self)
            return Wrapped

        self.Linear, self.Conv1d, self.LayerNorm = wrap(nn.Linear), wrap(nn.Conv1d), wrap(nn.LayerNorm)


def test_audio_encoder_shapes_and_operations():
    ops = _CountingOps()
    enc = AudioEncoder(n_mels=80, dim=48, layers=2, operations=ops)
    layer_types = (nn.Linear, nn.Conv1d, nn.LayerNorm)
    assert len(ops.built) == sum(isinstance(mod, layer_types) for mod in enc.modules()) == 2 + 2 * 6 + 1
    assert enc.layers[0].attn.heads == 2
    for m in (1, 2, 7, 10):
        assert enc(torch.randn(2, 80, m)).shape == (2, math.ceil(m / 2), 48)
    out = enc.encode_waveform(torch.randn(3, 16000) * 0.1)
    assert out.shape == (3, 51, 48)  # 101 mel frames -> 51 steps at 50 Hz
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="log-mel"):
        enc(torch.randn(1, 64, 10))


def test_audio_encoder_normalisation_and_dtype():
    enc = AudioEncoder(dim=24, layers=1, heads=3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in enc.parameters())
    wave = torch.randn(1, 4000) * 0.1
    expect = enc(((A.log_mel(wave) + 4.0) / 4.0).double())
    assert torch.allclose(enc.encode_waveform(wave), expect)


def test_self_attention_matches_multihead_attention():
    torch.manual_seed(0)
    attn = E.SelfAttention(32, 4)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.out.weight)
        mha.out_proj.bias.copy_(attn.out.bias)
    x = torch.randn(2, 9, 32)
    assert torch.allclose(attn(x), mha(x, x, x, need_weights=False)[0], atol=1e-5)


def test_sinusoidal_positions():
    table = E.sinusoidal_positions(5, 8)
    assert table.shape == (5, 8)
    assert torch.allclose(table[0], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]))
    assert torch.allclose(table[3, 0], torch.tensor(math.sin(3.0)))
    assert torch.allclose(table[3, 7], torch.tensor(math.cos(3.0 / 10000.0)))  # slowest rate 10000 ** -(3 / 3)


def test_feature_adapter_formula():
    ops = _CountingOps()
    adapter = E.FeatureAdapter(1280, 48, operations=ops)
    assert len(ops.built) == 3
    x = torch.randn(2, 7, 1280)
    expect = F.linear(F.gelu(F.linear(F.layer_norm(x, (1280,)), adapter.fc1.weight, adapter.fc1.bias)),
                      adapter.fc2.weight, adapter.fc2.bias)
    assert torch.allclose(adapter(x), expect, atol=1e-6)
    with pytest.raises(ValueError, match="1280"):
        adapter(torch.randn(2, 7, 768))


# ------------------------------------------------------------------------------------------------ alignment

FPS = [Fraction(24000, 1001), 24, 25, Fraction(30000, 1001), 30, 50, 60]


def _time_features(seconds: float, rate: float, offset: float = 0.0) -> torch.Tensor:
    """[1, S, 1] float64 features whose value is the centre time of their own step."""
    n = int(math.ceil(seconds * rate))
    return (offset + (torch.arange(n, dtype=torch.float64) + 0.5) / rate).reshape(1, n, 1)  # [S] -> [1, S, 1]


@pytest.mark.parametrize("fps", FPS)
def test_frame_centres_and_windows(fps):
    n_frames = int(60 * fps)
    centres = A.frame_centre_times(n_frames, fps)
    assert centres.dtype == torch.float64
    exact = [float((i + Fraction(1, 2)) / Fraction(fps)) for i in (0, 1, n_frames // 2, n_frames - 1)]
    assert torch.allclose(centres[[0, 1, n_frames // 2, n_frames - 1]], torch.tensor(exact, dtype=torch.float64),
                          rtol=0, atol=1e-12)
    feats = _time_features(60.0, 50.0)
    out = A.align_features(feats, 50.0, centres, n_tokens=10, token_rate=50.0)
    assert out.shape == (1, n_frames, 10, 1)
    inner = slice(int(fps), n_frames - int(fps))  # windows fully inside the audio
    offsets = (torch.arange(10, dtype=torch.float64) - 4.5) / 50.0
    assert torch.allclose(out[0, inner, :, 0], centres[inner, None] + offsets, rtol=0, atol=1e-9)
    assert (out[0, inner, :, 0].mean(1) - centres[inner]).abs().max() < 1e-6


def test_one_hour_at_29_97_stays_exact():
    fps = Fraction(30000, 1001)
    n_frames = 107892
    centres = A.frame_centre_times(n_frames, fps)
    feats = _time_features(3600.0, 50.0)
    out = A.align_features(feats, 50.0, centres, n_tokens=5, token_rate=50.0)  # odd K: token 2 sits on the centre
    last = float((n_frames - 1 + Fraction(1, 2)) / fps)
    assert abs(centres[-1].item() - last) < 1e-9
    assert (out[0, 1:-1, 2, 0] - centres[1:-1]).abs().max() < 1e-6
    assert (out[0, -1, 2, 0] - last).abs() < 1e-6
    assert (out[0, :, 2, 0] - centres).abs().max() < 0.5 / float(fps)  # within half a frame everywhere


def test_zero_padding_past_both_ends():
    feats = torch.ones(1, 100, 2)  # 2 s of features at 50 Hz
    centres = torch.tensor([0.0, 1.0, 1.995, 2.5], dtype=torch.float64)
    out = A.align_features(feats, 50.0, centres, n_tokens=4, token_rate=50.0)
    times = centres[:, None] + (torch.arange(4, dtype=torch.float64) - 1.5) / 50.0
    inside = ((times >= 0.0) & (times < 2.0)).double()
    assert torch.equal(out[0, :, :, 0], inside)
    assert torch.equal(out[0, :, :, 1], inside)
    assert inside[0].tolist() == [0, 0, 1, 1] and inside[3].sum() == 0 and inside[2].tolist() == [1, 1, 0, 0]


def test_align_interpolation_offset_rates_and_batches():
    feats = torch.tensor([[[0.0], [10.0], [20.0]]])  # steps centred at 0.01, 0.03, 0.05 s
    out = A.align_features(feats, 50.0, torch.tensor([0.02, 0.04]), n_tokens=1)
    assert torch.allclose(out.flatten(), torch.tensor([5.0, 15.0]))
    edge = A.align_features(feats, 50.0, torch.tensor([0.001, 0.059]), n_tokens=1)  # within half a step: repeat
    assert torch.allclose(edge.flatten(), torch.tensor([0.0, 20.0]))
    # features at another rate and offset (a window sliced out of a longer clip)
    feats = _time_features(4.0, 49.5, offset=10.0)
    centres = A.frame_centre_times(400, 25)  # 0 .. 16 s, features cover 10 .. 14 s
    out = A.align_features(feats, 49.5, centres, n_tokens=3, token_rate=50.0, time_offset=10.0)
    times = centres[:, None] + torch.tensor([-0.02, 0.0, 0.02], dtype=torch.float64)
    first, last = 10.0 + 0.5 / 49.5, 10.0 + (feats.shape[1] - 0.5) / 49.5
    inner = (times >= first) & (times <= last)
    assert inner.sum() > 250
    assert torch.allclose(out[0, ..., 0][inner], times[inner], atol=1e-9)
    assert (out[0, ..., 0][(times < 10.0) | (times >= 10.0 + feats.shape[1] / 49.5)] == 0).all()
    # batch and channel layout
    base = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1)
    feats = base + torch.tensor([0.0, 100.0]).reshape(2, 1, 1) + torch.tensor([0.0, 1000.0, 2000.0]).reshape(1, 1, 3)
    out = A.align_features(feats, 50.0, torch.tensor([0.05, 0.07]), n_tokens=2)
    assert out.shape == (2, 2, 2, 3)
    assert torch.allclose(out[1, 1, :, 2], torch.tensor([2102.5, 2103.5], dtype=torch.float64))


def test_latent_frame_centres_tf4():
    for n in range(1, 14):
        assert A.frame_centre_times(n, 25, temporal_factor=4).shape == (1 + (n - 1) // 4,)
    centres = A.frame_centre_times(9, 25, temporal_factor=4)
    frames = A.frame_centre_times(9, 25)
    expect = torch.stack([frames[0], frames[1:5].mean(), frames[5:9].mean()])
    assert torch.allclose(centres, expect, rtol=0, atol=1e-12)
    assert torch.allclose(centres, torch.tensor([0.5, 3.0, 7.0], dtype=torch.float64) / 25)
    with pytest.raises(ValueError):
        A.frame_centre_times(0, 25)


def test_audio_span_for_frames():
    assert A.audio_span_for_frames(0, 25, 25, 16000, 0.2) == (0, 19200, 0.0)
    fps = Fraction(30000, 1001)
    start, end, offset = A.audio_span_for_frames(100, 148, fps, 16000, 0.25)
    assert start == math.floor((100 / fps - Fraction(1, 4)) * 16000)
    assert end == math.ceil((148 / fps + Fraction(1, 4)) * 16000)
    assert offset == start / 16000
    assert A.audio_span_for_frames(100, 148, fps, 16000, 0.25, n_samples=80000) == (start, 80000, offset)
    assert A.audio_span_for_frames(500, 510, 25, 16000, 0.1, n_samples=16000) == (16000, 16000, 1.0)
    # a waveform whose samples hold their own time: the slice starts at time_offset
    wave = torch.arange(200000, dtype=torch.float64) / 16000
    clip = wave[start:end]
    assert clip[0].item() == offset and abs(clip[-1].item() - (148 / fps + 0.25)) <= 1 / 16000
    with pytest.raises(ValueError):
        A.audio_span_for_frames(10, 5, 25, 16000, 0.0)
