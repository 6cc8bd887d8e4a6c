"""No input is ever overwritten and no partial file is ever left (omnisync_model.core.files and every writer), and
the README's table of file-level faults is exactly what tests/file_faults.py checks."""

import os
from pathlib import Path

import pytest

from file_faults import FAULTS, Ctx, markdown_table, readme_section
from omnisync_model.core.files import (SameFileError, atomic_output, atomic_write_text, refuse_same_file, same_file,
                                       temp_path_for)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from omnisync_model.cli.main import main

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    assert main(["init", str(path), "--preset", "tiny"]) == 0
    return path


@pytest.mark.parametrize("fault", FAULTS, ids=[f.check.__name__ for f in FAULTS])
def test_file_fault(fault, tmp_path, ckpt, monkeypatch):
    """Each row of the README table, run: refusals end with one line and exit 2; completed runs keep the frame
    count, size and timestamps; the inputs' bytes are unchanged in every case."""
    work = tmp_path / "work"
    work.mkdir()
    fault.check(Ctx(work, ckpt, monkeypatch))


def test_readme_table_is_generated_from_the_checks():
    text = README.read_text() if README.is_file() else ""
    section = readme_section(text)
    if section is None:
        pytest.skip("README.md has no <!-- file-faults:start --> / <!-- file-faults:end --> section yet")
    assert section == markdown_table(), "README's file-fault table is stale: paste `python tests/file_faults.py`"


# --------------------------------------------------------------------------------------------- same-file checks


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"precious source bytes")
    return path


def test_same_file_sees_links_dotdot_and_case(tmp_path, source):
    (tmp_path / "sub").mkdir()
    link, hard, folder_link = tmp_path / "l.mp4", tmp_path / "h.mp4", tmp_path / "alias"
    link.symlink_to(source)
    hard.hardlink_to(source)
    folder_link.symlink_to(tmp_path, target_is_directory=True)
    for alias in (source, link, hard, tmp_path / "sub" / ".." / "clip.mp4", folder_link / "clip.mp4",
                  Path(os.path.relpath(source))):
        assert same_file(alias, source) and same_file(source, alias), alias
    other = tmp_path / "other.mp4"
    assert not same_file(other, source)  # does not exist
    other.write_bytes(b"precious source bytes")  # same bytes, another file
    assert not same_file(other, source)
    assert not same_file(tmp_path / "CLIP.mp4", source)  # case-sensitive file system
    assert same_file(tmp_path / "CLIP.MP4", source, case_insensitive=True)


def test_dangling_link_to_the_input_name_is_refused(tmp_path, source):
    """A link whose target is the input's path is the input, even through a relative target."""
    link = tmp_path / "rel.mp4"
    link.symlink_to("clip.mp4")
    with pytest.raises(SameFileError, match="symbolic link"):
        refuse_same_file(link, source)


def test_refusal_messages_say_how(tmp_path, source):
    hard = tmp_path / "h.mp4"
    hard.hardlink_to(source)
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path, target_is_directory=True)
    cases = {source: "is the input", hard: "a hard link to it", tmp_path / "x" / ".." / "clip.mp4": "is the input",
             alias / "clip.mp4": "under another path"}
    (tmp_path / "x").mkdir()
    for out, words in cases.items():
        with pytest.raises(SameFileError, match=words):
            refuse_same_file(out, None, source)
    with pytest.raises(SameFileError, match="letter case"):
        refuse_same_file(tmp_path / "Clip.mp4", source, case_insensitive=True)
    with pytest.raises(IsADirectoryError):
        refuse_same_file(tmp_path, source)
    assert refuse_same_file(tmp_path / "new.mp4", source, None) == tmp_path / "new.mp4"
    assert source.read_bytes() == b"precious source bytes"


# --------------------------------------------------------------------------------------------- atomic writes


def test_atomic_output_renames_only_when_complete(tmp_path):
    target = tmp_path / "deep" / "out.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".bin" and ".partial" in tmp.name
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("failed midway")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]


def test_atomic_output_refuses_inputs_and_replaces_symlinks_not_their_targets(tmp_path, source):
    with pytest.raises(SameFileError):
        with atomic_output(source, source) as tmp:
            tmp.write_bytes(b"x")
    assert source.read_bytes() == b"precious source bytes"
    unrelated = tmp_path / "old.txt"
    unrelated.write_text("old")
    link = tmp_path / "result.txt"
    link.symlink_to(unrelated)
    atomic_write_text(link, "new")  # replaces the link itself: the file it pointed to is untouched
    assert not link.is_symlink() and link.read_text() == "new" and unrelated.read_text() == "old"


def test_temp_names_are_unique_hidden_and_keep_the_extension(tmp_path):
    names = {temp_path_for(tmp_path / "a.mp4").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(".a.") and n.endswith(".partial.mp4") for n in names)


# --------------------------------------------------------------------------------------------- checkpoint writers


def test_save_checkpoint_refuses_its_inputs_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch, tiny_model):
    import omnisync_model.core.checkpoint as checkpoint
    from omnisync_model.families.omnisync.weights import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    before = path.read_bytes()
    with pytest.raises(SameFileError):
        save_checkpoint(tmp_path / "." / "m.safetensors", tiny_model, inputs=(path,))
    monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model, metadata={"note": "second"})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]
    assert load_checkpoint(path) is not None


def test_train_state_is_written_atomically(tmp_path, monkeypatch):
    """A failing train-state write leaves the previous state and no temporary file (checkpoint.safetensors is
    written through save_checkpoint, tested above)."""
    import omnisync_model.training.train as train

    tc = train.TrainConfig(preset="tiny", steps=1, batch=1, frames=2, size=16, clips=1, clip_seconds=0.4,
                           save_every=1, warmup=1)
    trainer = train.Trainer(tc, tmp_path)
    trainer.save()
    state = (tmp_path / "train_state.safetensors").read_bytes()
    monkeypatch.setattr(train, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    trainer.step = 7
    with pytest.raises(OSError):
        trainer.save()
    assert (tmp_path / "train_state.safetensors").read_bytes() == state
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.safetensors", "train_state.safetensors"]
