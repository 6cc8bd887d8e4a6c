"""The pickle -> safetensors converter (generic, and with LatentSync / MuseTalk's strict checks)."""

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omnisync_model.convert import convert_latentsync, convert_musetalk, convert_pickle_checkpoint
from omnisync_model.core.checkpoint import CheckpointError, read_metadata
from omnisync_model.families.latentsync import load_latentsync

GOLDEN = Path(__file__).parent / "golden" / "latentsync"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ls_state():
    return load_file(str(GOLDEN / "latentsync_tiny_unet.safetensors"))


@pytest.fixture(scope="module")
def mt_state():
    return load_file(str(GOLDEN / "musetalk_tiny_unet.safetensors"))


class NeedsCode:  # a pickled instance of this class can only be loaded by running code
    pass


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)  # what a malicious pickle would do on load


def test_latentsync_round_trip_keeps_the_source(tmp_path, ls_state):
    src = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": ls_state, "global_step": 1234}, src)  # the released layout
    before = _sha(src)
    dst = convert_latentsync(src, tmp_path / "out" / "latentsync_unet.safetensors")
    assert _sha(src) == before
    out = load_file(str(dst))
    assert out.keys() == ls_state.keys() and all(torch.equal(out[k], ls_state[k]) for k in out)
    assert read_metadata(dst)["format"] == "latentsync" and read_metadata(dst)["source"] == src.name
    assert load_latentsync(dst).config.family == "latentsync"
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left behind


def test_musetalk_plain_state_dict_and_dtype(tmp_path, mt_state):
    src = tmp_path / "unet.pth"
    torch.save({k: v.float() for k, v in mt_state.items()}, src)
    dst = convert_musetalk(src, tmp_path / "musetalk.safetensors", dtype=torch.float16)
    out = load_file(str(dst))
    assert {v.dtype for v in out.values()} == {torch.float16}
    assert all(torch.equal(out[k], mt_state[k]) for k in out)


def test_generic_select_and_shared_storage(tmp_path):
    base = torch.arange(12.0)
    src = tmp_path / "model.bin"
    torch.save({"model": {"a": base[:6], "b": base[6:], "c": base.view(3, 4).t()}}, src)  # views of one storage
    dst = convert_pickle_checkpoint(src, tmp_path / "model.safetensors", select=lambda obj: obj["model"])
    out = load_file(str(dst))
    assert torch.equal(out["a"], base[:6]) and torch.equal(out["b"], base[6:])
    assert torch.equal(out["c"], base.view(3, 4).t())


def test_pickle_that_needs_code_is_refused(tmp_path):
    src = tmp_path / "custom.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": NeedsCode()}, src)
    with pytest.raises(CheckpointError, match="needs code to load"):
        convert_pickle_checkpoint(src, tmp_path / "custom.safetensors")
    assert not (tmp_path / "custom.safetensors").exists()


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    src.write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="needs code to load"):
        convert_pickle_checkpoint(src, tmp_path / "evil.safetensors")
    assert not marker.exists()


def test_destination_that_is_the_source_is_refused(tmp_path):
    src = tmp_path / "w.pt"
    torch.save({"state_dict": {"x": torch.ones(3)}}, src)
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    odd = tmp_path / "odd.safetensors"  # a pickle named .safetensors, reached again through ".."
    torch.save({"state_dict": {"x": torch.ones(3)}}, odd)
    (tmp_path / "sub").mkdir()
    cases = [(src, link), (src, hard), (odd, odd), (odd, tmp_path / "sub" / ".." / "odd.safetensors")]
    before = {p: _sha(p) for p in (src, odd)}
    for source, dst in cases:
        with pytest.raises(CheckpointError, match="onto itself"):
            convert_pickle_checkpoint(source, dst)
    assert {p: _sha(p) for p in (src, odd)} == before
    assert link.is_symlink() and hard.stat().st_ino == src.stat().st_ino


def test_bad_destinations_and_sources(tmp_path):
    src = tmp_path / "w.pt"
    torch.save({"x": torch.ones(1)}, src)
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        convert_pickle_checkpoint(src, tmp_path / "w2.pt")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        convert_pickle_checkpoint(src, tmp_path / "d.safetensors")
    with pytest.raises(FileNotFoundError):
        convert_pickle_checkpoint(tmp_path / "missing.pt", tmp_path / "x.safetensors")
    ok = convert_pickle_checkpoint(src, tmp_path / "ok.safetensors")
    with pytest.raises(CheckpointError, match="already a safetensors file"):
        convert_pickle_checkpoint(ok, tmp_path / "again.safetensors")
    torch.save({"state_dict": {"x": torch.ones(1), "step": 3}}, src)
    with pytest.raises(CheckpointError, match="not named tensors"):
        convert_pickle_checkpoint(src, tmp_path / "y.safetensors")


def test_family_check_refuses_before_writing(tmp_path, ls_state, mt_state):
    sd15 = dict(mt_state)
    sd15["conv_in.weight"] = sd15["conv_in.weight"][:, :4].clone()
    src = tmp_path / "sd15.pt"
    torch.save({"state_dict": sd15}, src)
    with pytest.raises(CheckpointError, match="an SD-1.5 UNet, not LatentSync"):
        convert_latentsync(src, tmp_path / "sd15.safetensors")
    torch.save({"state_dict": ls_state}, src)
    with pytest.raises(CheckpointError, match="is a latentsync UNet, not musetalk"):
        convert_musetalk(src, tmp_path / "ls.safetensors")
    wrong = dict(ls_state, **{"conv_in.weight": ls_state["conv_in.weight"][:, :9].clone()})
    torch.save({"state_dict": wrong}, src)
    with pytest.raises(CheckpointError, match="9 input channels"):
        convert_latentsync(src, tmp_path / "wrong.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd15.pt"]
