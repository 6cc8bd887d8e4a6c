"""DiT and model: shapes and dtypes through every layer, init, determinism, conditioning paths."""

import time

import pytest
import torch
from torch import nn

from omnisync_model.families.omnisync.config import PRESETS, OmniSyncConfig, get_preset
from omnisync_model.families.omnisync.dit import OmniSyncDiT
from omnisync_model.core.layers import apply_rope, attention, grid_positions, rope_angles
from omnisync_model.families.omnisync.model import OmniSyncModel, count_parameters

from conftest import randomize_zero_inits


def inputs(cfg, b=2, t=3, hw=8, k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, hw, hw, generator=g)
    src = torch.randn(b, cfg.in_channels, t, hw, hw, generator=g)
    audio = torch.randn(b, t, k or cfg.audio_tokens, cfg.audio_dim, generator=g)
    return x, src, torch.rand(b, generator=g), audio


def test_forward_shape_dtype_and_speed(tiny_model, tiny_config):
    x, src, sigma, audio = inputs(tiny_config)
    with torch.no_grad():
        tiny_model(x, src, sigma, audio)  # warm-up
        t0 = time.perf_counter()
        v = tiny_model(x, src, sigma, audio)
        elapsed = time.perf_counter() - t0
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.isfinite(v).all()
    assert elapsed < 1.0, f"tiny forward took {elapsed:.3f}s"


def test_every_layer_shapes_with_hooks(tiny_model, tiny_config):
    """Record every leaf module's output: all finite float32 tensors with the expected trailing widths."""
    seen = {}

    def hook(name):
        def fn(_m, _i, out):
            seen[name] = out
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in tiny_model.dit.named_modules() if len(list(m.children())) == 0]
    x, src, sigma, audio = inputs(tiny_config, b=1, t=2, hw=8)
    with torch.no_grad():
        tiny_model(x, src, sigma, audio)
    for h in handles:
        h.remove()
    d, n_tokens = tiny_config.dim, (8 // tiny_config.patch_size) ** 2
    assert seen["patch_embed"].shape == (1, 2, n_tokens, d)
    assert seen["blocks.0.spatial.out"].shape == (1 * 2, n_tokens, d)
    assert seen["blocks.0.temporal.out"].shape == (1 * n_tokens, 2, d)
    assert seen["blocks.0.audio.out"].shape == (1 * 2, n_tokens, d)
    assert seen["blocks.0.audio.kv"].shape == (1 * 2, tiny_config.audio_tokens, 2 * d)
    assert seen["blocks.1.ffn.fc1"].shape == (1, 2, n_tokens, tiny_config.ffn_dim)
    assert seen["proj_out"].shape == (1, 2, n_tokens, tiny_config.in_channels * tiny_config.patch_size ** 2)
    for name, out in seen.items():
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name


def test_zero_init_output_and_identity_blocks(tiny_config):
    torch.manual_seed(0)
    dit = OmniSyncDiT(tiny_config).eval()
    x, src, sigma, audio = inputs(tiny_config)
    with torch.no_grad():
        assert torch.equal(dit(x, src, sigma, audio), torch.zeros_like(x))
        tokens = torch.randn(2, 3, 16, tiny_config.dim)
        mod = torch.zeros(2, 12, tiny_config.dim)
        ctx = {"spatial_angles": rope_angles(grid_positions(1, 4, 4), tiny_config.head_dim, 1e4),
               "temporal_angles": rope_angles(grid_positions(3, 1, 1), tiny_config.head_dim, 1e4),
               "audio": torch.randn(6, tiny_config.audio_tokens, tiny_config.audio_dim)}
        assert torch.equal(dit.blocks[0](tokens, mod, ctx), tokens)


def test_determinism_and_batch_independence(tiny_model, tiny_config):
    x, src, sigma, audio = inputs(tiny_config)
    with torch.no_grad():
        a = tiny_model(x, src, sigma, audio)
        b = tiny_model(x, src, sigma, audio)
        single = tiny_model(x[1:], src[1:], sigma[1:], audio[1:])
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:], single, atol=1e-5, rtol=1e-5)


def test_output_depends_on_every_input(tiny_model, tiny_config):
    x, src, sigma, audio = inputs(tiny_config)
    with torch.no_grad():
        base = tiny_model(x, src, sigma, audio)
        for changed in ((x + 0.5, src, sigma, audio), (x, src + 0.5, sigma, audio), (x, src, sigma * 0.5, audio),
                        (x, src, sigma, audio.flip(-1)), (x, src, sigma, None)):
            assert not torch.allclose(tiny_model(*changed), base, atol=1e-5)


def test_drop_audio_equals_unconditional(tiny_model, tiny_config):
    x, src, sigma, audio = inputs(tiny_config)
    with torch.no_grad():
        uncond = tiny_model(x, src, sigma, None)
        mixed = tiny_model(x, src, sigma, audio, drop_audio=torch.tensor([False, True]))
        cond = tiny_model(x, src, sigma, audio)
    torch.testing.assert_close(mixed[1], uncond[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[0], cond[0], atol=1e-6, rtol=1e-6)


def test_audio_is_per_frame(tiny_model, tiny_config):
    """Changing frame 2's audio changes frame 2 most: cross-attention sees only that frame's window."""
    x, src, sigma, audio = inputs(tiny_config, b=1, t=3)
    audio2 = audio.clone()
    audio2[:, 2] += 1.0
    with torch.no_grad():
        d = (tiny_model(x, src, sigma, audio2) - tiny_model(x, src, sigma, audio)).abs().mean(dim=(0, 1, 3, 4))
    assert d[2] > d[0] and d[2] > d[1]


@pytest.mark.parametrize("changes", [dict(condition="token"), dict(text_dim=32), dict(external_audio_dim=40),
                                     dict(patch_size=1, in_channels=12)])
def test_variants(changes):
    cfg = get_preset("tiny").replace(**changes)
    torch.manual_seed(0)
    model = OmniSyncModel(cfg).eval()
    randomize_zero_inits(model, seed=2)
    x, src, sigma, audio = inputs(cfg, b=1, t=2)
    text = torch.randn(1, 5, cfg.text_dim) if cfg.text_dim else None
    with torch.no_grad():
        v = model(x, src, sigma, audio, text=text)
        assert v.shape == x.shape
        if cfg.condition == "token":
            assert model.dit.source_embed is not None
            assert not torch.allclose(model(x, src + 1, sigma, audio), v)
        if cfg.external_audio_dim:
            assert model.adapt_features(torch.randn(1, 7, 40)).shape == (1, 7, cfg.audio_dim)


def test_bad_inputs_are_named(tiny_model, tiny_config):
    x, src, sigma, audio = inputs(tiny_config)
    with pytest.raises(ValueError, match="C=48"):
        tiny_model(x[:, :3], src[:, :3], sigma, audio)
    with pytest.raises(ValueError, match="multiples of patch size"):
        tiny_model(x[..., :7], src[..., :7], sigma, audio)
    with pytest.raises(ValueError, match="source latent"):
        tiny_model(x, src[:, :, :2], sigma, audio)
    with pytest.raises(ValueError, match="audio tokens"):
        tiny_model(x, src, sigma, audio[:, :2])


def test_bfloat16_weights_run():
    cfg = get_preset("tiny")
    model = OmniSyncModel(cfg, dtype=torch.bfloat16).eval()
    x, src, sigma, audio = inputs(cfg, b=1, t=2)
    with torch.no_grad():
        v = model(x, src, sigma, audio)
    assert v.dtype == torch.float32 and v.shape == x.shape


class CountingLinear(nn.Linear):
    built = 0

    def __init__(self, *a, **k):
        type(self).built += 1
        super().__init__(*a, **k)


class CountingOps:
    Linear = CountingLinear
    LayerNorm = nn.LayerNorm
    Conv1d = nn.Conv1d


def test_operations_are_used_for_every_linear():
    cfg = get_preset("tiny")
    model = OmniSyncModel(cfg, operations=CountingOps)
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert CountingLinear.built == n_linear and n_linear > 20


def test_rope_is_a_rotation_and_relative():
    angles = rope_angles(grid_positions(2, 3, 4), 24, 1e4)
    q, k = torch.randn(1, 1, 24, 24), torch.randn(1, 1, 24, 24)
    rq, rk = apply_rope(q, angles), apply_rope(k, angles)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # relative: shifting every position by the same offset leaves q.k unchanged
    shifted = rope_angles(grid_positions(2, 3, 4) + torch.tensor([1, 2, 3]), 24, 1e4)
    torch.testing.assert_close(apply_rope(q, shifted) @ apply_rope(k, shifted).transpose(-1, -2), rq @ rk.transpose(-1, -2),
                               atol=1e-4, rtol=1e-4)


def test_attention_is_sdpa_softmax():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v), ref, atol=1e-5, rtol=1e-5)


def test_presets_and_config_round_trip():
    assert set(PRESETS) == {"tiny", "small", "base"}
    for cfg in PRESETS.values():
        assert OmniSyncConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(KeyError, match="known presets"):
        get_preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        OmniSyncConfig(dim=50, heads=3)
    with pytest.raises(ValueError, match="unknown OmniSyncConfig fields"):
        OmniSyncConfig.from_dict({"dimm": 3})


def test_parameter_counts_on_meta_device():
    counts = {name: count_parameters(OmniSyncModel(cfg, device="meta")) for name, cfg in PRESETS.items()}
    assert counts["tiny"] < 500_000
    assert 2_000_000 < counts["small"] < 10_000_000  # fits the 20 MB shipped-checkpoint budget in fp16
    assert 0.9e9 < counts["base"] < 1.3e9


def test_source_x0_prediction_is_exact_copy_at_init():
    """With prediction='source_x0' a fresh model predicts x0 = source, so Euler from any tau returns the source."""
    from omnisync_model.sampling.flow import euler_sample, progressive_init, sigma_schedule

    cfg = get_preset("tiny").replace(prediction="source_x0")
    model = OmniSyncModel(cfg).eval()
    x, src, _, audio = inputs(cfg, b=1, t=2)
    sig = sigma_schedule(5, start=0.92)
    start = progressive_init(src, x, 0.92)
    with torch.no_grad():
        v = model(start, src, torch.tensor([0.92]), audio)
        torch.testing.assert_close(start - 0.92 * v, src, atol=1e-5, rtol=1e-5)
        out = euler_sample(lambda xx, s, i: model(xx, src, torch.tensor([s]), audio), start, sig)
    torch.testing.assert_close(out, src, atol=1e-5, rtol=1e-5)
