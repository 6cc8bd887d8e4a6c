"""``omnisync convert``: released pickles -> safetensors by kind (auto-detected), refusals as one-line errors."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from omnisync_model.cli.convert import detect_kind
from omnisync_model.cli.main import main
from omnisync_model.core.checkpoint import read_metadata
from omnisync_model.families.latentsync import LatentSyncUNet, get_preset


class NeedsCode:
    """Unpickling this needs the class: torch.load(weights_only=True) must refuse it."""


@pytest.fixture(scope="module")
def latentsync_pt(tmp_path_factory):
    torch.manual_seed(0)
    unet = LatentSyncUNet(get_preset("tiny"))
    path = tmp_path_factory.mktemp("ls") / "latentsync_unet.pt"
    torch.save({"state_dict": unet.state_dict(), "global_step": 1}, path)
    return path, unet.state_dict()


def test_auto_detects_and_converts_a_latentsync_pickle(tmp_path, latentsync_pt, capsys):
    src, state = latentsync_pt
    before = src.read_bytes()
    out = tmp_path / "latentsync_unet.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    assert "latentsync" in capsys.readouterr().out
    got = load_file(out)
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert read_metadata(out)["format"] == "latentsync" and src.read_bytes() == before


def test_detect_kind_from_structure():
    assert detect_kind({"dims": {}, "model_state_dict": {}}) == "whisper"
    assert detect_kind({"state_dict": {"down_blocks.0.motion_modules.0.x": 0}}) == "latentsync"
    assert detect_kind({"conv_in.weight": 0, "down_blocks.0.resnets.0.conv1.weight": 0}) == "musetalk"
    assert detect_kind({"wav2vec2.encoder.layers.0.x": 0}) == "wav2vec2"
    assert detect_kind({"some.weight": 0}) == "state-dict"


def test_plain_state_dict_keeps_its_keys(tmp_path):
    src = tmp_path / "w.pth"
    torch.save({"a.weight": torch.arange(6.0).view(2, 3), "b": torch.ones(1)}, src)
    assert main(["convert", str(src), str(tmp_path / "w.safetensors"), "--kind", "state-dict"]) == 0
    got = load_file(tmp_path / "w.safetensors")
    assert torch.equal(got["a.weight"], torch.arange(6.0).view(2, 3)) and set(got) == {"a.weight", "b"}


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "omnisync_model.cli", "convert", *map(str, argv)],
                          capture_output=True, text=True, timeout=120)


def test_refusals_are_one_line_errors_and_leave_the_source(tmp_path):
    src = tmp_path / "w.pth"
    torch.save({"a": torch.ones(2)}, src)
    before = src.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    evil = tmp_path / "evil.pt"
    torch.save({"a": torch.ones(1), "x": NeedsCode()}, evil)
    cases = [(src, src, "same file"), (src, tmp_path / "link.safetensors", "same file"),
             (src, tmp_path / "hard.safetensors", "same file"), (src, tmp_path / "sub" / ".." / "w.pth", "same file"),
             (evil, tmp_path / "evil.safetensors", "needs code"), (tmp_path / "missing.pt", tmp_path / "m.safetensors",
                                                                    "not found"),
             (src, tmp_path / "out.txt", ".safetensors")]
    (tmp_path / "sub").mkdir()
    for a, b, words in cases:
        proc = _run(a, b)
        assert proc.returncode == 2, (a, b, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("omnisync convert: error:") and words in lines[0], lines
    assert src.read_bytes() == before and not (tmp_path / "evil.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "hard.safetensors", "link.safetensors", "sub",
                                                           "w.pth"]


def test_unknown_kind_is_refused_by_the_parser(tmp_path):
    proc = _run(tmp_path / "a.pt", tmp_path / "b.safetensors", "--kind", "bogus")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
