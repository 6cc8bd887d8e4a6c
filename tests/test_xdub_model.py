"""X-Dub family: our model loading the reference's own tiny state dict reproduces the reference model function
(goldens made from KlingAIResearch/X-Dub's classes, see tests/golden/xdub), and the full-size model has exactly
the released checkpoint's names, shapes and DiffSynth hash."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omnisync_model.families.xdub import (
    RELEASED_HASH,
    CastOps,
    XDubModel,
    detect_xdub,
    diffsynth_hash,
    get_preset,
    infer_config,
    load_xdub,
    pad_context,
    xdub_forward,
)
from omnisync_model.families.xdub.audio_proj import position_table

GOLDEN = Path(__file__).parent / "golden" / "xdub"
TINY = GOLDEN / "tiny_model.safetensors"
IO = GOLDEN / "parity_io.safetensors"


@pytest.fixture(scope="module")
def io():
    with safe_open(str(IO), "pt") as fh:
        cases = json.loads(fh.metadata()["cases"])
    return load_file(str(IO)), cases


@pytest.fixture(scope="module")
def tiny():
    return load_xdub(TINY, dtype=torch.float32)


def _run(model, tensors, case, motion=True, **over):
    g = lambda k: over[k] if k in over else tensors.get(f"{case}.{k}")  # noqa: E731
    return xdub_forward(model, g("latents"), g("timestep"), g("context"), g("audio_feats"), g("ref_latents"),
                        g("motion_latents") if motion else None)


@pytest.mark.parametrize("case", ["merged", "motion", "null", "batch2"])
def test_matches_reference_model_function_fp32(tiny, io, case):
    tensors, cases = io
    out = _run(tiny, tensors, case, motion=cases[case].get("use_motion_latents") is True)
    ref = tensors[f"{case}.out"]
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-5


def test_null_conditions_are_the_reference_zeros(tiny, io):
    """ref_latents=None and audio_feats=None are the reference's zero branches (zeros still pass the layers)."""
    tensors, _ = io
    out = _run(tiny, tensors, "null", motion=False, ref_latents=None, audio_feats=None)
    assert (out - tensors["null.out"]).abs().max().item() <= 1e-5
    with_audio = _run(tiny, tensors, "null", motion=False, audio_feats=torch.randn(1, 4, 8, 64))
    assert (with_audio - out).abs().max().item() > 1e-3  # the audio path is live


def test_motion_latents_are_written_and_clean(tiny, io):
    """Motion latents replace the first target frames (and get timestep 0) even when the caller did not write them."""
    tensors, _ = io
    fresh = tensors["motion.latents"].clone()
    fresh[:, :, :2] = torch.randn_like(fresh[:, :, :2])
    out = _run(tiny, tensors, "motion", latents=fresh)
    assert (out - tensors["motion.out"]).abs().max().item() <= 1e-5
    without = _run(tiny, tensors, "motion", motion=False)  # same latents, motion frames at the noisy timestep
    assert (without - tensors["motion.out"]).abs().max().item() > 1e-3


def test_bf16_close_to_reference_bf16(io):
    tensors, _ = io
    model = load_xdub(TINY, dtype=torch.bfloat16)
    out = _run(model, tensors, "bf16").float()
    ref = tensors["bf16.out"].float()
    assert out.dtype == torch.float32 and model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert ((out - ref).abs().mean() / ref.abs().mean()).item() < 1e-2


def test_fp8_weight_only(io, tiny):
    """Linear weights stored in fp8 e4m3, everything else bf16, upcast per layer: close to the fp32 result."""
    tensors, _ = io
    model = load_xdub(TINY, dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    assert model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].self_attn.norm_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.bfloat16
    assert isinstance(model.blocks[0].ffn[0], CastOps.Linear)
    out = _run(model, tensors, "merged").float()
    ref = tensors["merged.out"]
    rel = ((out - ref).abs().mean() / ref.abs().mean()).item()
    assert 1e-4 < rel < 0.1  # fp8 rounding is visible but small


def test_model_call_is_the_model_function(tiny, io):
    tensors, _ = io
    g = lambda k: tensors[f"merged.{k}"]  # noqa: E731
    out = tiny(g("latents"), g("timestep"), g("context"), g("audio_feats"), g("ref_latents"))
    assert (out - g("out")).abs().max().item() <= 1e-5


def test_position_table_is_the_stored_buffer():
    stored = load_file(str(TINY))["audio_embedding.layers.0.pos_embed.pe"]
    assert torch.allclose(position_table(*stored.shape[1:]), stored, atol=1e-6)


def test_tiny_preset_round_trips_through_shapes():
    cfg = get_preset("tiny")
    with torch.device("meta"):
        model = XDubModel(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert detect_xdub(shapes)
    assert infer_config(shapes, head_dim=32, audio_head_dim=16, name="tiny") == cfg
    assert load_xdub(TINY, dtype=torch.float32).config.replace(name="tiny") == cfg


def test_audio_in_some_blocks_only(tmp_path):
    """A checkpoint with audio attention in some blocks only builds those blocks (config.audio_blocks)."""
    sd = load_file(str(TINY))
    sd = {k: v for k, v in sd.items() if not k.startswith("blocks.1.audio_attn") and not k.startswith("blocks.1.norm4")}
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path), metadata={"xdub.head_dim": "32", "xdub.audio_head_dim": "16"})
    model = load_xdub(path, dtype=torch.float32)
    assert model.config.audio_blocks == (0,) and model.blocks[1].audio_attn is None


# ------------------------------------------------------------------------------------------- full size


@pytest.fixture(scope="module")
def full_golden():
    return json.loads((GOLDEN / "full_keys.json").read_text())


@pytest.fixture(scope="module")
def full_meta():
    with torch.device("meta"):
        return XDubModel(get_preset("full"))


def test_full_size_names_and_shapes_equal_the_reference(full_meta, full_golden):
    ours = {k: list(v.shape) for k, v in full_meta.state_dict().items()}
    assert len(ours) == full_golden["count"] == 1245
    assert ours == full_golden["shapes"]
    assert sum(math.prod(s) for s in ours.values()) == full_golden["parameters"] == 6_292_551_360


def test_full_size_diffsynth_hash(full_meta, full_golden):
    shapes = {k: tuple(v.shape) for k, v in full_meta.state_dict().items()}
    assert diffsynth_hash(shapes) == full_golden["diffsynth_hash"] == RELEASED_HASH
    assert infer_config(shapes) == get_preset("full").replace(name="inferred")
    assert diffsynth_hash({**shapes, "head.head.bias": (191,)}) != RELEASED_HASH


def test_pad_context():
    ctx = torch.randn(1, 3, 8)
    out = pad_context(ctx, 5)
    assert out.shape == (1, 5, 8) and torch.equal(out[:, :3], ctx) and not out[:, 3:].any()
    assert pad_context(torch.randn(2, 9, 8), 4).shape == (2, 4, 8)
    assert torch.equal(pad_context(ctx, 2), ctx[:, :2])
