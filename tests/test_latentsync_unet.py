"""LatentSync / MuseTalk UNet: parity with the reference classes (goldens), full-size key sets, strict loading.

Goldens (tests/golden/latentsync/, made in a side venv from bytedance/LatentSync @ a229c39 and diffusers 0.32.2):
* latentsync_tiny_unet.safetensors: the state dict of the reference ``UNet3DConditionModel`` at a tiny config
  (block channels 32/32, 2 layers, motion modules on, audio width 16), random float16-exact weights, without the
  ``pe`` tables (so loading must regenerate them); latentsync_tiny_io.safetensors: its inputs and outputs.
* musetalk_tiny_*: diffusers' ``UNet2DConditionModel`` built as MuseTalk builds it (block channels 32/64, 1 layer).
* full_size_keys.json: name -> shape of the reference classes at the released configs, built on meta.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omnisync_model.core.checkpoint import CheckpointError
from omnisync_model.families.latentsync import (LatentSyncUNet, check_shapes, detect_family, get_preset,
                                                infer_config, load_latentsync, reference_forward)
from omnisync_model.families.latentsync.motion import PositionalEncoding, positional_table

GOLDEN = Path(__file__).parent / "golden" / "latentsync"
LS_UNET = GOLDEN / "latentsync_tiny_unet.safetensors"
MT_UNET = GOLDEN / "musetalk_tiny_unet.safetensors"
TOL = 1e-4


@pytest.fixture(scope="module")
def ls_io():
    return {k: v.float() for k, v in load_file(str(GOLDEN / "latentsync_tiny_io.safetensors")).items()}


@pytest.fixture(scope="module")
def mt_io():
    return load_file(str(GOLDEN / "musetalk_tiny_io.safetensors"))


@pytest.fixture(scope="module")
def full_keys():
    return json.loads((GOLDEN / "full_size_keys.json").read_text())


def _max_diff(a, b):
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("t", [951, 501, 1])
def test_latentsync_matches_reference_with_cfg_batch(ls_io, t):
    """The reference pipeline's CFG batch: the same latent twice, audio = cat([zeros, audio]) along (b f)."""
    s, a = ls_io["sample"], ls_io["audio"]
    out = reference_forward(LS_UNET, torch.cat([s, s]), t, torch.cat([torch.zeros_like(a), a]))
    ref = ls_io[f"out_cfg_t{t}"]
    assert out.shape == ref.shape == (2, 4, 16, 8, 8)
    assert _max_diff(out, ref) <= TOL
    assert _max_diff(ref[0], ref[1]) > 1e-2  # zero audio and real audio give different predictions


@pytest.mark.parametrize("t", [951, 501, 1])
def test_latentsync_matches_reference_without_audio(ls_io, t):
    out = reference_forward(LS_UNET, ls_io["sample"], t, None)
    assert _max_diff(out, ls_io[f"out_none_t{t}"]) <= TOL


def test_latentsync_pair_per_video_timesteps_and_4d_audio(ls_io):
    s, s2 = ls_io["sample"][:, :, :8], ls_io["sample2"]
    audio = torch.stack([ls_io["audio"][:8], ls_io["audio2"]])  # [B,F,S,A]
    out = reference_forward(LS_UNET, torch.cat([s, s2]), torch.tensor([951, 1]), audio)
    assert _max_diff(out, ls_io["out_pair"]) <= TOL


def test_latentsync_goldens_are_sensitive(ls_io):
    """Negative controls: the goldens tell timesteps apart, and a per-frame GroupNorm (MuseTalk's 2D semantics)
    without motion modules misses them by far more than the tolerance."""
    assert _max_diff(ls_io["out_cfg_t951"], ls_io["out_cfg_t1"]) > 1e-3
    model = load_latentsync(LS_UNET)
    per_frame = LatentSyncUNet(model.config.replace(temporal=False, motion_down=False, motion_up=False))
    per_frame.load_state_dict({k: v for k, v in model.state_dict().items() if ".motion_modules." not in k})
    with torch.no_grad():
        assert _max_diff(per_frame(ls_io["sample"], 951, ls_io["audio"]), ls_io["out_cfg_t951"][1:]) > 1e-2


@pytest.mark.parametrize("t", [951, 501, 1, 0])
def test_musetalk_matches_reference(mt_io, t):
    out = reference_forward(MT_UNET, mt_io["sample"], t, mt_io["audio"])
    assert out.shape == (4, 4, 8, 8)
    assert _max_diff(out, mt_io[f"out_audio_t{t}"]) <= TOL
    out0 = reference_forward(MT_UNET, mt_io["sample"], t, torch.zeros_like(mt_io["audio"]))
    assert _max_diff(out0, mt_io[f"out_zeros_t{t}"]) <= TOL
    assert _max_diff(mt_io[f"out_audio_t{t}"], mt_io[f"out_zeros_t{t}"]) > 1e-2


def test_musetalk_video_input_is_independent_images(mt_io):
    """A 5D window given to MuseTalk is B*F separate images (per-image norms): same as the 4D call."""
    model = load_latentsync(MT_UNET)
    s, a = mt_io["sample"], mt_io["audio"]
    with torch.no_grad():
        video = model(s.transpose(0, 1).unsqueeze(0), 951, a)  # [N,8,h,w] -> [1,8,N,h,w]
    assert _max_diff(video[0].transpose(0, 1), mt_io["out_audio_t951"]) <= TOL


# --------------------------------------------------------------------------------------------- full size


@pytest.mark.parametrize("preset", ["latentsync-1.5", "latentsync-1.6"])
def test_latentsync_full_size_names_and_shapes(full_keys, preset):
    with torch.device("meta"):
        model = LatentSyncUNet(get_preset(preset))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = full_keys["latentsync"]
    assert ours == theirs
    assert len(ours) == 1246 and sum(k.endswith(".pos_encoder.pe") for k in ours) == 40
    assert sum(p.numel() for p in model.parameters()) == 1_267_099_844  # 1.27B, plus 844,800 table entries


def test_musetalk_full_size_names_and_shapes(full_keys):
    with torch.device("meta"):
        model = LatentSyncUNet(get_preset("musetalk-1.5"))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == full_keys["musetalk"]
    assert len(full_keys["musetalk"]) == 686
    assert sum(p.numel() for p in model.parameters()) == 849_947_844


@pytest.mark.parametrize("family,preset", [("latentsync", "latentsync-1.5"), ("musetalk", "musetalk-1.5")])
def test_infer_config_from_released_shapes(full_keys, family, preset):
    shapes = full_keys[family]
    assert detect_family(shapes) == family
    inferred = infer_config(shapes)
    assert inferred == get_preset(preset).replace(name=inferred.name)
    assert check_shapes(shapes, "released layout") == inferred


# --------------------------------------------------------------------------------------------- loading


def test_missing_pe_is_regenerated_and_kept_when_present(tmp_path):
    model = load_latentsync(LS_UNET)  # the golden file has no pe tables
    tables = [m.pe for m in model.modules() if isinstance(m, PositionalEncoding)]
    assert len(tables) == 20  # 10 motion modules (2 + 2 encoder, 3 + 3 decoder) x 2 attention blocks
    assert not any(k.endswith(".pe") for k in load_file(str(LS_UNET)))
    for t in tables:
        assert torch.equal(t, positional_table(24, t.shape[-1]))
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in tensors if k.endswith(".pe"))
    tensors[key] = tensors[key] * 2  # a file's own table is used as it is (the reference loads it)
    path = tmp_path / "with_pe.safetensors"
    save_file(tensors, str(path))
    reloaded = load_latentsync(path)
    assert torch.equal(reloaded.state_dict()[key], tensors[key])


def test_extra_and_missing_keys_are_named(tmp_path):
    tensors = load_file(str(LS_UNET))
    extra = dict(tensors, **{"down_blocks.0.unknown.weight": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\):\s+down_blocks\.0\.unknown\.weight"):
        load_latentsync(tmp_path / "extra.safetensors")
    missing = dict(tensors)
    del missing["mid_block.attentions.0.proj_out.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\):\s+mid_block\.attentions\.0\.proj_out\.bias"):
        load_latentsync(tmp_path / "missing.safetensors")


def _sd15_shapes(full_keys):
    """The plain SD-1.5 UNet layout: MuseTalk's with 4 input channels and 768-wide text cross-attention."""
    shapes = {k: list(v) for k, v in full_keys["musetalk"].items()}
    shapes["conv_in.weight"][1] = 4
    for k, v in shapes.items():
        if ".attn2.to_k." in k or ".attn2.to_v." in k:
            v[1] = 768
    return shapes


def test_plain_sd15_unet_is_refused(full_keys):
    shapes = _sd15_shapes(full_keys)
    assert detect_family(shapes) is None
    with pytest.raises(CheckpointError, match="an SD-1.5 UNet, not LatentSync"):
        check_shapes(shapes, "v1-5-unet.safetensors")


def test_wrong_channel_count_is_refused_with_the_count(full_keys):
    shapes = {k: list(v) for k, v in full_keys["latentsync"].items()}
    shapes["conv_in.weight"][1] = 9
    assert detect_family(shapes) is None
    with pytest.raises(CheckpointError, match=r"9 input channels.*LatentSync expects 13.*MuseTalk 8"):
        check_shapes(shapes, "bad.safetensors")
    shapes = {k: list(v) for k, v in full_keys["musetalk"].items()}
    shapes["conv_in.weight"][1] = 6
    with pytest.raises(CheckpointError, match=r"6 input channels.*LatentSync expects 13"):
        check_shapes(shapes, "bad.safetensors")


def test_family_mismatch_and_not_a_unet():
    with pytest.raises(CheckpointError, match="not a UNet"):
        check_shapes({"dit.patch_embed.weight": (8, 8)}, "x.safetensors")
    shapes = {k: tuple(v.shape) for k, v in load_file(str(MT_UNET)).items()}
    with pytest.raises(CheckpointError, match="is a musetalk UNet, not latentsync"):
        check_shapes(shapes, "x.safetensors", family="latentsync")


def test_window_longer_than_the_positional_table_is_refused():
    model = LatentSyncUNet(get_preset("tiny"))
    with pytest.raises(ValueError, match="at most 24 frames"):
        model(torch.zeros(1, 13, 25, 8, 8), 951, None)


def test_operations_are_injected_everywhere():
    made = []

    class Ops:
        class Linear(nn.Linear):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

        class Conv2d(nn.Conv2d):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

        class GroupNorm(nn.GroupNorm):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

        class LayerNorm(nn.LayerNorm):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

    model = LatentSyncUNet(get_preset("tiny"), operations=Ops)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm))]
    assert layers and all(any(m is x for x in made) for m in layers)


def test_half_precision_load_and_bfloat16_forward(ls_io):
    model = load_latentsync(LS_UNET, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    s, a = ls_io["sample"], ls_io["audio"]
    with torch.no_grad():
        out = model(s.bfloat16(), 951, a.bfloat16()).float()
    ref = ls_io["out_cfg_t951"][1:]
    assert (out - ref).norm() / ref.norm() < 5e-2


def test_musetalk_positional_table_matches_reference(mt_io):
    from omnisync_model.families.latentsync.audio_index import musetalk_audio

    assert _max_diff(musetalk_audio(mt_io["audio_raw"]), mt_io["audio"]) <= 1e-6


def test_hidden_fields_come_from_metadata_only_when_given(tmp_path, ls_io):
    """Shapes cannot show GroupNorm groups: the golden carries norm_groups 16 in its header; without it the
    released value 32 is assumed (and the output no longer matches), and unknown fields are refused."""
    from omnisync_model.families.latentsync import file_config

    assert file_config(LS_UNET).norm_groups == 16 and file_config(MT_UNET).norm_groups == 32
    tensors = load_file(str(LS_UNET))
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    assert file_config(tmp_path / "plain.safetensors").norm_groups == 32
    out = reference_forward(tmp_path / "plain.safetensors", ls_io["sample"], 951, ls_io["audio"])
    assert _max_diff(out, ls_io["out_cfg_t951"][1:]) > 1e-2
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"latentsync_config": '{"in_channels": 4}'})
    with pytest.raises(CheckpointError, match="invalid latentsync_config"):
        file_config(tmp_path / "bad.safetensors")
