"""Speech encoders (omnisync_model.audio_models) against goldens made with the reference code: LatentSync's
whisper copy / audio2feature and X-Dub's audio_processor (transformers 5.1.0) with small random configs."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnisync_model.core.checkpoint import CheckpointError, read_metadata

GOLDEN = Path(__file__).resolve().parent / "golden" / "audio_models"
try:
    HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
except (ImportError, ValueError):  # ValueError: sys.modules["transformers"] is None
    HAVE_TRANSFORMERS = False
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="optional dependency transformers missing")
LAYERS = ["embedding", "block.0", "block.1", "final"]
TOL = 1e-5


def speech_like(seconds: float = 45.0, rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """Deterministic speech-like test signal: a voiced source with a moving pitch, three moving formants, a
    syllable-rate loudness envelope with pauses, and a little breath noise. float32 [N], peak 0.5 (the goldens
    were made from this exact function)."""
    n = int(round(seconds * rate))
    t = torch.arange(n, dtype=torch.float64) / rate
    f0 = 120.0 + 25.0 * torch.sin(2 * math.pi * 0.31 * t) + 10.0 * torch.sin(2 * math.pi * 1.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
    formants = (500.0 + 250.0 * torch.sin(2 * math.pi * 1.3 * t),
                1500.0 + 450.0 * torch.sin(2 * math.pi * 0.9 * t + 1.0),
                2600.0 + 200.0 * torch.sin(2 * math.pi * 0.4 * t + 2.0))
    voiced = torch.zeros(n, dtype=torch.float64)
    for k in range(1, 13):
        freq = k * f0
        gain = sum(torch.exp(-0.5 * ((freq - fc) / 120.0) ** 2) for fc in formants) + 0.02
        voiced += gain * torch.sin(k * phase) / k
    syllables = torch.sin(2 * math.pi * 3.7 * t + 0.8 * torch.sin(2 * math.pi * 0.45 * t)).clamp(min=0.0) ** 2
    phrases = (torch.sin(2 * math.pi * 0.11 * t + 0.3) > -0.6).to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    wave = (voiced + 0.05 * noise) * syllables * phrases + 0.002 * noise
    return (0.5 * wave / wave.abs().max()).to(torch.float32)


class NeedsCode:
    """A custom class: unpickling it needs code, so weights_only loading must refuse it."""

    def __init__(self):
        self.payload = [1, 2, 3]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def wave():
    return speech_like(45.0)


@pytest.fixture(scope="module")
def gold():
    return load_file(GOLDEN / "whisper_random_outputs.safetensors")


@pytest.fixture(scope="module")
def openai_ckpt():
    """(dims, OpenAI-format encoder state dict) of the random reference Whisper."""
    dims = json.loads(read_metadata(GOLDEN / "whisper_random.safetensors")["dims"])
    return dims, load_file(GOLDEN / "whisper_random.safetensors")


def _write_pt(path, dims, state):
    decoder = {"decoder.token_embedding.weight": torch.zeros(4, 2), "decoder.ln.weight": torch.ones(2)}
    torch.save({"dims": dict(dims), "model_state_dict": {**state, **decoder}}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, openai_ckpt):
    from omnisync_model.audio_models import convert_openai_whisper

    if not HAVE_TRANSFORMERS:
        pytest.skip("optional dependency transformers missing")
    folder = tmp_path_factory.mktemp("whisper")
    src = _write_pt(folder / "random.pt", *openai_ckpt)
    return convert_openai_whisper(src, folder / "random_encoder.safetensors")


@pytest.fixture(scope="module")
def encoder(converted):
    from omnisync_model.audio_models import load_whisper_encoder

    return load_whisper_encoder(converted, "cpu", torch.float32)


@pytest.fixture(scope="module")
def reference_feats(encoder, wave):
    from omnisync_model.audio_models import encode

    return encode(encoder, wave, LAYERS, "reference")


@pytest.fixture(scope="module")
def w2v_folder(tmp_path_factory):
    path = GOLDEN / "wav2vec2_random.safetensors"
    folder = tmp_path_factory.mktemp("wav2vec2")
    (folder / "config.json").write_text(read_metadata(path)["config"])
    save_file(load_file(path), folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def w2v(w2v_folder):
    from omnisync_model.audio_models import load_wav2vec2

    if not HAVE_TRANSFORMERS:
        pytest.skip("optional dependency transformers missing")
    return load_wav2vec2(w2v_folder, "cpu", torch.float32)


# --------------------------------------------------------------------------------------------- front end


def test_speech_generator_is_the_goldens(wave, gold):
    assert wave.numel() == 45 * 16000
    torch.testing.assert_close(wave[::97], gold["audio_every_97"], atol=1e-6, rtol=0)


@needs_transformers
def test_mel_filters_equal_openai(gold):
    from omnisync_model.audio_models import mel_filters

    torch.testing.assert_close(mel_filters(80), gold["mel_filters"], atol=1e-7, rtol=0)


@needs_transformers
def test_log_mel_equals_openai(wave, gold):
    from omnisync_model.audio_models import log_mel

    mel = log_mel(wave)
    assert mel.shape == (80, 4500) and mel.dtype == torch.float32
    torch.testing.assert_close(mel[:, gold["logmel_cols"]], gold["logmel"], atol=TOL, rtol=0)


@needs_transformers
def test_log_mel_batch_normalises_each_file_by_its_own_max(wave):
    from omnisync_model.audio_models import log_mel

    rows = torch.stack([wave[:32000], 0.01 * wave[16000:48000]])
    batch = log_mel(rows)
    for i in range(2):
        torch.testing.assert_close(batch[i], log_mel(rows[i]), atol=1e-6, rtol=0)
    assert batch[0].max() > batch[1].max() + 0.5  # the global clamp is per file, not per batch


# --------------------------------------------------------------------------------------------- weights


@needs_transformers
def test_converted_file_has_encoder_keys_and_dims(converted, openai_ckpt):
    from omnisync_model.audio_models import openai_to_transformers_keys

    dims, state = openai_ckpt
    meta = read_metadata(converted)
    assert meta["format"] == "omnisync-whisper-encoder"
    assert json.loads(meta["whisper_dims"]) == {k: dims[k] for k in
                                                ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head",
                                                 "n_audio_layer")}
    mapped = openai_to_transformers_keys(state)
    stored = load_file(converted)
    assert set(stored) == set(mapped) and not any(k.startswith("decoder") for k in stored)
    for key, value in mapped.items():
        assert torch.equal(stored[key], value), key


@pytest.mark.parametrize("name", ["tiny", "large-v2"])
@needs_transformers
def test_full_size_keys_and_shapes_match_openai(name):
    from omnisync_model.audio_models import build_whisper_encoder, openai_to_transformers_keys

    ref = json.loads((GOLDEN / f"openai_whisper_{name}_keys.json").read_text())
    meta_state = {k: torch.empty(shape, device="meta") for k, shape in ref["keys"].items()}
    mapped = openai_to_transformers_keys(meta_state)
    ours = build_whisper_encoder(ref["dims"]).state_dict()  # on meta
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    n_enc = sum(k.startswith("encoder.") for k in ref["keys"])
    assert len(mapped) == n_enc == 5 + 15 * ref["dims"]["n_audio_layer"] + 2
    assert not any(k.endswith("attn.key.bias") for k in ref["keys"])  # OpenAI: key projection without bias
    assert not any(k.endswith("k_proj.bias") for k in ours)  # transformers: k_proj without bias too


@needs_transformers
def test_loaded_encoder_holds_the_reference_weights(encoder, openai_ckpt):
    from omnisync_model.audio_models import openai_to_transformers_keys

    state = encoder.state_dict()
    for key, value in openai_to_transformers_keys(openai_ckpt[1]).items():
        assert torch.equal(state[key], value), key
    assert not any(p.is_meta for p in encoder.parameters()) and not encoder.training


@needs_transformers
def test_hf_layout_loads_with_inferred_dims(tmp_path, openai_ckpt):
    from omnisync_model.audio_models import build_whisper_encoder, load_whisper_encoder, openai_to_transformers_keys

    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 128, "n_audio_head": 2, "n_audio_layer": 1}
    torch.manual_seed(0)
    state = build_whisper_encoder(dims, "cpu").state_dict()
    hf = {f"model.encoder.{k}": v for k, v in state.items()}
    hf["model.decoder.layer_norm.weight"] = torch.ones(3)  # decoder keys of a full checkpoint are ignored
    save_file(hf, tmp_path / "model.safetensors")  # no dims metadata: heads inferred as width // 64
    loaded = load_whisper_encoder(tmp_path / "model.safetensors")
    assert loaded.config.encoder_attention_heads == 2 and loaded.config.encoder_layers == 1
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    narrow = {f"model.encoder.{k}": v for k, v in openai_to_transformers_keys(openai_ckpt[1]).items()}
    save_file(narrow, tmp_path / "narrow.safetensors")  # width 32: no 64-wide heads, refused
    with pytest.raises(CheckpointError, match="head count cannot be inferred"):
        load_whisper_encoder(tmp_path / "narrow.safetensors")


# --------------------------------------------------------------------------------------------- encoder parity


@needs_transformers
def test_reference_chunking_equals_latentsync(reference_feats, gold):
    for name in LAYERS:
        assert reference_feats[name].shape == (2250, 32)
        torch.testing.assert_close(reference_feats[name], gold[name], atol=TOL, rtol=0)


@needs_transformers
def test_latentsync_features_are_the_reference_stack(encoder, wave, gold, reference_feats):
    from omnisync_model.audio_models import latentsync_whisper_features

    feats = latentsync_whisper_features(encoder, wave)
    assert feats.shape == (2250, 3, 32)
    torch.testing.assert_close(feats[:, 2], reference_feats["block.1"], atol=0, rtol=0)
    slices = []
    for vid in (0, 700, 1124):  # LatentSync audio2feature.get_sliced_feature, audio_feat_length [2, 2], 25 fps
        centre = int(vid * 50 / 25)
        idx = [min(max(i, 0), feats.shape[0] - 1) for i in range(centre - 4, centre + 6)]
        slices.append(feats[idx].reshape(-1, 32))
    torch.testing.assert_close(torch.stack(slices), gold["latentsync_slices"], atol=TOL, rtol=0)


def _jumps(x):
    return (x[1:] - x[:-1]).norm(dim=-1)  # [T - 1]: change from step t to t + 1


@needs_transformers
def test_overlap_has_no_jump_and_matches_reference_first_20s(encoder, wave, reference_feats, gold):
    from omnisync_model.audio_models import encode

    overlap = encode(encoder, wave, LAYERS, "overlap")
    for name in LAYERS:
        jumps, ref_jumps = _jumps(overlap[name]), _jumps(reference_feats[name])
        typical = jumps.quantile(0.99)
        assert ref_jumps[1499] > 2.5 * ref_jumps.median()  # the reference does jump at 30 s ...
        assert jumps[1499] <= typical  # ... overlap mode does not
        assert jumps.max() <= 1.6 * typical  # nor anywhere else (the window switch is crossfaded)
        torch.testing.assert_close(overlap[name][:1000], gold[name][:1000], atol=TOL, rtol=0)


@needs_transformers
def test_overlap_without_crossfade_takes_each_step_from_one_window(encoder, wave, gold):
    from omnisync_model.audio_models import encode, plan_windows

    hard = encode(encoder, wave, ["block.1"], "overlap", crossfade_seconds=0.0)["block.1"]
    plans = plan_windows(2250, 1500, "overlap", hop=1000, crossfade=0)
    assert [(p.start, p.lo, p.hi) for p in plans] == [(0, 0, 1125), (750, 1125, 2250)]
    torch.testing.assert_close(hard[:1125], gold["block.1"][:1125], atol=TOL, rtol=0)


def test_plan_windows_cover_every_step_once():
    from omnisync_model.audio_models import plan_windows

    assert [(p.start, p.lo, p.hi) for p in plan_windows(2250)] == [(0, 0, 1500), (1500, 1500, 2250)]
    assert [(p.start, p.lo, p.hi) for p in plan_windows(700, chunking="overlap")] == [(0, 0, 700)]
    n, ctx = 9000, 1500
    hard = plan_windows(n, ctx, "overlap", hop=1000, crossfade=0)
    def score(s, t):  # distance of step t to the nearest inner edge of the window starting at s
        left = t - s if s > 0 else math.inf
        right = s + ctx - 1 - t if s + ctx < n else math.inf
        return min(left, right)

    for t in range(0, n, 7):  # each step's window is the one farthest from an inner edge (brute force)
        best = max((p.start for p in hard if p.start <= t < p.start + ctx), key=lambda s: (score(s, t), -s))
        assert [p.start for p in hard if p.lo <= t < p.hi] == [best]
    total = torch.zeros(n)
    for p in plan_windows(n, ctx, "overlap", hop=1000, crossfade=50):
        assert p.start <= p.lo and p.hi <= p.start + ctx
        total[p.lo:p.hi] += p.weight if p.weight is not None else 1.0
    torch.testing.assert_close(total, torch.ones(n))
    with pytest.raises(ValueError, match="hop"):
        plan_windows(n, ctx, "overlap", hop=ctx)
    with pytest.raises(ValueError, match="chunking"):
        plan_windows(n, ctx, "sliding")


@needs_transformers
def test_batch_rows_equal_single_files(encoder, wave):
    from omnisync_model.audio_models import encode

    rows = torch.stack([wave[:40000], wave[80000:120000]])
    batch = encode(encoder, rows, ["last_block", "final"], "overlap")
    assert batch["final"].shape == (2, 125, 32)
    for i in range(2):
        single = encode(encoder, rows[i], ["last_block"])["last_block"]
        torch.testing.assert_close(batch["last_block"][i], single, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------- wav2vec2 / X-Dub


@needs_transformers
def test_wav2vec2_features_equal_xdub(w2v, wave):
    from omnisync_model.audio_models import wav2vec2_features

    gold = load_file(GOLDEN / "xdub_random_outputs.safetensors")["wav2vec2_last"]
    feats = wav2vec2_features(w2v, wave)
    assert feats.shape == gold.shape == ((wave.numel() - 400) // 320 + 1, 16)
    torch.testing.assert_close(feats, gold, atol=TOL, rtol=0)


def test_normalisation_is_zero_mean_unit_variance(wave):
    from omnisync_model.audio_models import normalise_wave

    x = 0.3 * wave[None, :16000] + 0.1
    y = normalise_wave(x)
    expected = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    var = float(x.double().var(unbiased=False))
    assert abs(float(y.mean())) < 1e-6 and abs(float(y.var(unbiased=False)) - var / (var + 1e-7)) < 1e-5


@needs_transformers
def test_xdub_concatenation_equals_reference_crops(encoder, w2v, wave):
    from omnisync_model.audio_models import xdub_audio_features

    gold = load_file(GOLDEN / "xdub_random_outputs.safetensors")
    feats = xdub_audio_features(encoder, w2v, wave)
    assert feats.shape == (2250, 32 + 16)
    torch.testing.assert_close(feats[-1, 32:], gold["wav2vec2_last"][-1], atol=TOL, rtol=0)  # shorter stream
    for start in (0, 1100):  # X-Dub crop_overlap_audio_window, 77 frames -> 20 tokens of 8 steps
        tokens = []
        for i in range(20):
            centre = 2 * (start if i == 0 else start + (i - 1) * 4 + 1)
            lo, hi = (centre - 6, centre + 2) if i == 0 else (centre, centre + 8)
            tokens.append(feats[[min(max(j, 0), feats.shape[0] - 1) for j in range(lo, hi)]])
        torch.testing.assert_close(torch.stack(tokens), gold[f"xdub_crop_{start}"], atol=TOL, rtol=0)


@needs_transformers
def test_wav2vec2_parametrized_layout_and_bin_conversion(tmp_path, w2v_folder, w2v):
    from omnisync_model.audio_models import convert_wav2vec2_bin, load_wav2vec2

    state = load_file(w2v_folder / "model.safetensors")
    new = {k.replace("weight_g", "parametrizations.weight.original0")
           .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
    folder = tmp_path / "w2v"
    folder.mkdir()
    (folder / "config.json").write_text((w2v_folder / "config.json").read_text())
    torch.save(new, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="omnisync convert"):
        load_wav2vec2(folder)
    convert_wav2vec2_bin(folder / "pytorch_model.bin", folder / "model.safetensors")
    loaded = load_wav2vec2(folder)
    for key, value in w2v.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@needs_transformers
def test_wav2vec2_folder_refusals(tmp_path, w2v_folder):
    from omnisync_model.audio_models import load_wav2vec2

    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_wav2vec2(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config not found: .*empty"):
        load_wav2vec2(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text((w2v_folder / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"weights not found: .*model.safetensors"):
        load_wav2vec2(tmp_path / "empty")
    state = load_file(w2v_folder / "model.safetensors")
    state["wav2vec2.encoder.extra.weight"] = torch.zeros(2)
    del state["wav2vec2.feature_projection.projection.bias"]
    save_file(state, tmp_path / "empty" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys.*feature_projection.projection.bias"
                                              r".*unexpected keys.*encoder.extra.weight"):
        load_wav2vec2(tmp_path / "empty")


# --------------------------------------------------------------------------------------------- bad input


@needs_transformers
def test_converter_refuses_pickles_that_need_code(tmp_path, openai_ckpt):
    from omnisync_model.audio_models import convert_openai_whisper

    src = tmp_path / "evil.pt"
    torch.save({"dims": openai_ckpt[0], "model_state_dict": {}, "extra": NeedsCode()}, src)
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_openai_whisper(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and os.listdir(tmp_path) == ["evil.pt"]


@needs_transformers
def test_converter_refuses_to_overwrite_its_source(tmp_path, openai_ckpt):
    from omnisync_model.audio_models import convert_openai_whisper

    src = _write_pt(tmp_path / "w.pt", *openai_ckpt)
    (tmp_path / "link.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    for dst in (src, tmp_path / "link.safetensors", tmp_path / "hard.safetensors", tmp_path / "." / "w.pt"):
        with pytest.raises(CheckpointError, match="same file|source"):
            convert_openai_whisper(src, dst)
    assert torch.load(src, weights_only=True)["dims"] == openai_ckpt[0]


@needs_transformers
def test_converter_refuses_wrong_dims_and_keys(tmp_path, openai_ckpt):
    from omnisync_model.audio_models import convert_openai_whisper

    dims, state = openai_ckpt
    cases = [
        ({**dims, "n_audio_state": 64}, state, r"shape mismatches.*conv1.weight"),
        ({**dims, "n_audio_layer": 3}, state, r"missing keys.*layers.2."),
        ({**dims, "n_audio_head": 5}, state, "divisible by n_audio_head"),
        ({k: v for k, v in dims.items() if k != "n_mels"}, state, "lack n_mels"),
        (dims, {k: v for k, v in state.items() if k != "encoder.ln_post.weight"}, r"missing keys.*layer_norm.weight"),
        (dims, {**state, "encoder.blocks.0.attn.key.bias": torch.zeros(32)}, r"unmapped.*attn.key.bias"),
    ]
    for i, (d, s, pattern) in enumerate(cases):
        src = _write_pt(tmp_path / f"case{i}.pt", d, s)
        with pytest.raises(CheckpointError, match=f"(?s){pattern}"):
            convert_openai_whisper(src, tmp_path / f"case{i}.safetensors")
    torch.save({"model_state_dict": state}, tmp_path / "nodims.pt")
    with pytest.raises(CheckpointError, match="not an OpenAI Whisper checkpoint"):
        convert_openai_whisper(tmp_path / "nodims.pt", tmp_path / "nodims.safetensors")


@needs_transformers
def test_loader_refuses_pickles_and_openai_names(tmp_path, openai_ckpt):
    from omnisync_model.audio_models import load_whisper_encoder

    src = _write_pt(tmp_path / "w.pt", *openai_ckpt)
    with pytest.raises(CheckpointError, match="omnisync convert"):
        load_whisper_encoder(src)
    save_file(openai_ckpt[1], tmp_path / "openai.safetensors")
    with pytest.raises(CheckpointError, match="convert_openai_whisper"):
        load_whisper_encoder(tmp_path / "openai.safetensors")


@needs_transformers
def test_bad_audio_is_refused(encoder, w2v, wave):
    from omnisync_model.audio_models import encode, log_mel, wav2vec2_features

    nan = wave[:32000].clone()
    nan[100] = float("nan")
    for fn in (lambda x, **k: encode(encoder, x, **k), log_mel, lambda x, **k: wav2vec2_features(w2v, x, **k)):
        with pytest.raises(ValueError, match="NaN"):
            fn(nan)
        with pytest.raises(ValueError, match="empty"):
            fn(torch.zeros(0))
        with pytest.raises(ValueError, match="resample"):
            fn(wave[:32000], sample_rate=44100)
        with pytest.raises(ValueError, match="mono"):
            fn(wave[:32000].reshape(1, 2, 16000))
        with pytest.raises(ValueError, match="at least"):
            fn(wave[:100])
    with pytest.raises(ValueError, match="unknown Whisper layer"):
        encode(encoder, wave[:32000], ["block.7"])


def test_missing_transformers_names_the_install_command(monkeypatch):
    from omnisync_model.audio_models import require_transformers, whisper_config_from_dims

    monkeypatch.setitem(sys.modules, "transformers", None)
    for fn in (require_transformers, lambda: whisper_config_from_dims(
            {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 1, "n_audio_layer": 1})):
        with pytest.raises(ImportError, match="pip install transformers"):
            fn()


def test_package_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None; import omnisync_model.audio_models as m; "
            "print(len(m.__all__))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
