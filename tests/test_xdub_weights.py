"""X-Dub checkpoint checks: wrong files are refused before any tensor is read, with messages naming the file and
what is wrong (a plain Wan2.2 DiT, a truncated file, wrong or missing keys, a pickle)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.families.xdub import detect_xdub, load_xdub, read_xdub_config
from omnisync_model.families.xdub.config import describe_layout

GOLDEN = Path(__file__).parent / "golden" / "xdub"
TINY = GOLDEN / "tiny_model.safetensors"
META = {"xdub.head_dim": "32", "xdub.audio_head_dim": "16"}


def _is_audio(key: str) -> bool:
    return key.startswith("audio_embedding.") or ".audio_attn." in key or ".norm4." in key


def _write(tmp_path, sd, name="x.safetensors", meta=META):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def tiny_sd():
    return load_file(str(TINY))


def test_plain_wan_checkpoint_is_refused_as_such(tmp_path, tiny_sd):
    path = _write(tmp_path, {k: v for k, v in tiny_sd.items() if not _is_audio(k)}, "wan22_5b.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_xdub(path, dtype=torch.float32)
    msg = str(err.value)
    assert str(path) in msg and "plain Wan DiT without X-Dub's audio layers" in msg
    assert "audio_embedding.proj_in.weight" in msg and "blocks.N.audio_attn" in msg


def test_full_size_wan22_5b_layout_is_not_xdub():
    shapes = json.loads((GOLDEN / "full_keys.json").read_text())["shapes"]
    assert detect_xdub(shapes)
    wan = {k: v for k, v in shapes.items() if not _is_audio(k)}  # Wan2.2-TI2V-5B: the same body, no audio
    assert len(wan) == 1245 - 60 - 30 * 12 and not detect_xdub(wan)
    assert "Wan2.2-TI2V-5B base model" in describe_layout(wan)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(TINY.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_xdub(path, dtype=torch.float32)


def test_wrong_shape_is_named(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["blocks.1.ffn.2.weight"] = torch.zeros(64, 100)
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        load_xdub(path, dtype=torch.float32)
    msg = str(err.value)
    assert str(path) in msg and "blocks.1.ffn.2.weight: expected [64, 128], found [64, 100]" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != "blocks.1.cross_attn.o.bias"}
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        load_xdub(path, dtype=torch.float32)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "blocks.1.cross_attn.o.bias" in msg
    assert "unexpected keys (1)" in msg and "blocks.0.extra.weight" in msg


def test_head_width_is_needed_when_not_wan_default(tmp_path, tiny_sd):
    path = _write(tmp_path, tiny_sd, meta={})
    with pytest.raises(CheckpointError, match="head width 128; pass head_dim"):
        read_xdub_config(path)
    assert read_xdub_config(path, head_dim=32, audio_head_dim=16)[0].heads == 2


def test_integer_tensor_is_refused(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["head.head.bias"] = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(CheckpointError, match="not floating point.*head.head.bias"):
        read_xdub_config(_write(tmp_path, sd))


def test_pickle_is_refused_unopened(tmp_path, tiny_sd):
    path = tmp_path / "X-Dub_model.pt"
    torch.save(tiny_sd, path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_xdub(path)


def test_comfy_prefix_is_accepted(tmp_path, tiny_sd):
    path = _write(tmp_path, {"model.diffusion_model." + k: v for k, v in tiny_sd.items()})
    model = load_xdub(path, dtype=torch.float32)
    assert torch.equal(model.head.head.weight, tiny_sd["head.head.weight"])


def test_loaded_model_has_no_gradients_and_requested_dtype():
    model = load_xdub(TINY, dtype=torch.bfloat16)
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.audio_embedding.layers[0].pos_embed.pe.dtype == torch.bfloat16
