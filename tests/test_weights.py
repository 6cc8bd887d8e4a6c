"""Tests for omnisync_model.families.omnisync.weights: safetensors round trips, strict checks, refusing pickles, config inference."""

import json
import pickle
import random
import struct

import pytest
import torch
from safetensors.torch import save_file

from omnisync_model.core import checkpoint
from omnisync_model.families.omnisync.config import OmniSyncConfig, get_preset
from omnisync_model.families.omnisync.model import OmniSyncModel
from omnisync_model.core.checkpoint import (CheckpointError, load_state_dict_checked, read_metadata, read_shapes,
                                            sniff_format)
from omnisync_model.families.omnisync.weights import infer_config, load_checkpoint, read_config, save_checkpoint


def _randomised(config):
    """A model whose every parameter is random (the zero-initialised output layer would hide a bad load)."""
    torch.manual_seed(0)
    model = OmniSyncModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def _inputs(config, t=2, hw=4):
    gen = torch.Generator().manual_seed(1)
    shape = (1, config.in_channels, t, hw, hw)
    x, source = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    audio = torch.randn(1, t, config.audio_tokens, config.audio_dim, generator=gen)
    return x, source, torch.tensor([0.7]), audio


def _outputs(model, config):
    x, source, sigma, audio = _inputs(config)
    with torch.no_grad():
        wave = torch.randn(1, 1600, generator=torch.Generator().manual_seed(2))
        return model(x, source, sigma, audio), model(x, source, sigma, None), model.encode_audio(wave)


@pytest.fixture(scope="module")
def tiny():
    config = get_preset("tiny")
    return config, _randomised(config)


@pytest.fixture()
def saved(tmp_path, tiny):
    config, model = tiny
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model, metadata={"note": "test"})
    return path


# ---- save / load round trips ------------------------------------------------------------------------


def test_round_trip_bit_identical(saved, tiny):
    config, model = tiny
    loaded = load_checkpoint(saved)
    assert loaded.config == config
    assert not loaded.training and loaded.dtype == torch.float32
    for a, b in zip(_outputs(model, config), _outputs(loaded, config)):
        assert torch.equal(a, b)
    assert _outputs(model, config)[0].abs().max() > 0  # the comparison is not trivially between zeros


def test_metadata_written(saved, tiny):
    meta = read_metadata(saved)
    assert meta["format"] == "omnisync" and meta["format_version"] == "1" and meta["note"] == "test"
    assert OmniSyncConfig.from_json(meta["omnisync_config"]) == tiny[0]
    assert read_config(saved) == tiny[0]
    assert sniff_format(saved) == "safetensors"


def test_float16_checkpoint_loads_into_float32(tmp_path, tiny):
    config, model = tiny
    path = save_checkpoint(tmp_path / "half.safetensors", model, dtype=torch.float16)
    full = save_checkpoint(tmp_path / "full.safetensors", model)
    assert path.stat().st_size < 0.6 * full.stat().st_size
    assert len(read_shapes(path)) == len(model.state_dict())
    loaded = load_checkpoint(path)
    assert loaded.dtype == torch.float32
    for a, b in zip(_outputs(model, config), _outputs(loaded, config)):
        assert not torch.equal(a, b)  # float16 rounding did happen
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-2 * a.abs().max().item())


def test_load_with_dtype(saved):
    assert load_checkpoint(saved, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_save_is_atomic_and_leaves_no_temp(tmp_path, tiny, monkeypatch):
    path = save_checkpoint(tmp_path / "a.safetensors", tiny[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    before = path.read_bytes()

    def broken(*args, **kwargs):
        with open(args[1], "wb") as fh:
            fh.write(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    assert path.read_bytes() == before  # the previous checkpoint survives


def test_save_rejects_bad_metadata(tmp_path, tiny):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.safetensors", tiny[1], metadata={"format": "other"})
    with pytest.raises(ValueError, match="strings"):
        save_checkpoint(tmp_path / "x.safetensors", tiny[1], metadata={"steps": 5})
    assert not list(tmp_path.iterdir())


def test_metadata_less_checkpoint_infers_config(tmp_path, tiny):
    config, model = tiny
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert read_metadata(path) == {}
    loaded = load_checkpoint(path)
    assert loaded.config == config.replace(name="custom")
    assert torch.equal(_outputs(model, config)[0], _outputs(loaded, config)[0])


def test_metadata_less_foreign_file_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="no OmniSync metadata and the config cannot be inferred"):
        load_checkpoint(path)


# ---- mismatching checkpoints ------------------------------------------------------------------------


def _save_raw(path, state_dict, config):
    meta = {"format": "omnisync", "format_version": "1", "omnisync_config": config.to_json()}
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=meta)
    return path


def test_renamed_key_is_named(tmp_path, tiny):
    config, model = tiny
    sd = dict(model.state_dict())
    sd["dit.blocks.0.ffn.fc9.weight"] = sd.pop("dit.blocks.0.ffn.fc1.weight")
    path = _save_raw(tmp_path / "renamed.safetensors", sd, config)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1)" in msg and "dit.blocks.0.ffn.fc1.weight" in msg
    assert "unexpected keys (1)" in msg and "dit.blocks.0.ffn.fc9.weight" in msg


def test_wrong_shape_names_key_and_shapes(tmp_path, tiny):
    config, model = tiny
    sd = dict(model.state_dict())
    sd["dit.time_embed.fc2.weight"] = torch.zeros(48, 40)
    path = _save_raw(tmp_path / "shape.safetensors", sd, config)
    with pytest.raises(CheckpointError, match=r"dit\.time_embed\.fc2\.weight: expected \[48, 48\], found \[48, 40\]"):
        load_checkpoint(path)


def test_checked_load_lists_first_ten_and_counts(tiny):
    config, _ = tiny
    model = OmniSyncModel(config)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("dit.blocks.")}
    n_missing = len(model.state_dict()) - len(sd)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(model, sd)
    msg = str(err.value)
    assert f"missing keys ({n_missing})" in msg and f"and {n_missing - 10} more" in msg
    assert "unexpected" not in msg and "shape" not in msg
    assert msg.count("dit.blocks.") == 10


def test_checked_load_accepts_exact_match(tiny):
    config, model = tiny
    fresh = OmniSyncModel(config)
    load_state_dict_checked(fresh, model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


# ---- damaged and foreign files ----------------------------------------------------------------------


class _Trap:
    """Unpickling this object creates a marker file (it stands for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_is_refused_without_unpickling(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Trap(marker)}, path, _use_new_zipfile_serialization=zipped)
    assert sniff_format(path) == ("zip" if zipped else "pickle")
    with pytest.raises(CheckpointError, match="pickle/zip checkpoint.*can execute code") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "Convert it" in str(err.value)
    with pytest.raises(CheckpointError):
        read_config(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the trap is live: a real unpickle creates the marker
    assert marker.exists()


def test_raw_pickle_and_gguf_are_refused(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert sniff_format(path) == "pickle"
    with pytest.raises(CheckpointError, match="pickle/zip"):
        load_checkpoint(path)
    gguf = tmp_path / "w.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    assert sniff_format(gguf) == "gguf"
    with pytest.raises(CheckpointError, match="GGUF"):
        load_checkpoint(gguf)


def test_truncated_file(tmp_path, saved):
    data = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"truncated: expected {len(data)} bytes, found {len(data) // 2}"):
        load_checkpoint(cut)
    header_len = struct.unpack("<Q", data[:8])[0]
    cut.write_bytes(data[: 8 + header_len // 2])
    with pytest.raises(CheckpointError, match="truncated: its header alone needs"):
        load_checkpoint(cut)


def test_random_bytes(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "noise.safetensors"
    data = bytearray(rng.getrandbits(8) for _ in range(4096))
    data[0], data[8] = 0x11, 0x22  # not a pickle opcode, not '{'
    path.write_bytes(bytes(data))
    assert sniff_format(path) == "other"
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(path)
    data[8] = ord("{")  # looks like safetensors, but the header length is absurd
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="implausible|truncated"):
        load_checkpoint(path)


def test_corrupt_header_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    body = b'{"a": {"dtype": "F32", oops'
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_empty_missing_directory(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_newer_format_version_refused(tmp_path, tiny):
    config, model = tiny
    path = tmp_path / "future.safetensors"
    meta = {"format": "omnisync", "format_version": "2", "omnisync_config": config.to_json()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_invalid_stored_config(tmp_path, tiny):
    config, model = tiny
    bad = dict(config.to_dict(), heads=5)
    path = tmp_path / "badcfg.safetensors"
    meta = {"format": "omnisync", "format_version": "1", "omnisync_config": json.dumps(bad)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="omnisync_config is invalid"):
        load_checkpoint(path)


# ---- config inference ---------------------------------------------------------------------------------

INFERABLE = [
    get_preset("tiny"),
    get_preset("small"),
    get_preset("tiny").replace(condition="token", text_dim=32, external_audio_dim=20),
    get_preset("tiny").replace(in_channels=12, dim=48, heads=4, depth=3, ffn_mult=2.0, audio_dim=24, audio_tokens=6,
                               n_mels=40, audio_layers=2, external_audio_dim=16, text_dim=8),
    get_preset("tiny").replace(in_channels=3, patch_size=1),  # 3 is not divisible by 4: patch 1 is the only reading
    get_preset("tiny").replace(audio_layers=0),
]


def _shapes(config):
    return {k: tuple(v.shape) for k, v in OmniSyncModel(config).state_dict().items()}


@pytest.mark.parametrize("config", INFERABLE, ids=lambda c: f"{c.name}-{c.condition}-{c.in_channels}-{c.depth}")
def test_infer_config_recovers_config(config):
    # name, prediction (and audio_rate, rope_theta, codec, extra) cannot be read from shapes: defaults are used
    assert infer_config(_shapes(config)) == config.replace(name="custom", prediction="velocity")


def test_infer_config_takes_uninferable_fields_from_defaults():
    config = get_preset("tiny").replace(qk_norm=False, heads=4, rope_theta=500.0)
    defaults = get_preset("tiny").replace(heads=4, rope_theta=500.0, name="mine")
    inferred = infer_config(_shapes(config), defaults=defaults)
    assert inferred == config.replace(name="mine")
    assert infer_config(_shapes(config)).heads == 2  # without QK norm, heads are not in the shapes


def test_infer_config_rejects_inconsistent_shapes():
    shapes = _shapes(get_preset("tiny"))
    shapes["dit.patch_embed.weight"] = (48, 100)
    with pytest.raises(ValueError, match="patch_embed"):
        infer_config(shapes)
    shapes = _shapes(get_preset("tiny"))
    del shapes["dit.null_audio"]
    with pytest.raises(KeyError):
        infer_config(shapes)
