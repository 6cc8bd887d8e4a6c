"""Output files that can never destroy an input, written so that a failed run never leaves a partial file.

Every writer of the pack (the lipsync CLI, the VIDEO node, the checkpoint writers of init / train / convert) uses
these helpers:

``refuse_same_file(out, *inputs)``
    Before any work: :class:`SameFileError` (a ValueError, so the CLI exits with status 2) when ``out`` names
    one of the inputs - the same path, through a symbolic link on either side, a hard link, ``..`` segments, or
    a case-only difference on a case-insensitive file system - and an ``IsADirectoryError`` when ``out`` is a
    folder. On a case-insensitive file system the differently-cased output name already *is* the input (it
    exists and ``os.path.samefile`` says so); ``case_insensitive=True`` also compares names case-folded, which
    is how the check is exercised on a case-sensitive one. An unrelated existing output may be overwritten.

``atomic_output(path, *inputs)``
    A context manager that yields a temporary path in the target folder (hidden, the same extension so a muxer
    picks the same format) and renames it over ``path`` only when the block completes; the data are flushed to
    disk first. On any exception (an interrupt included) the temporary file is deleted and an existing ``path``
    is left exactly as it was.

``temp_path_for`` / ``commit`` are the two halves of ``atomic_output`` for writers with their own open / close
protocol (``VideoWriter``); ``atomic_write_bytes`` / ``atomic_write_text`` for small files.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PARTIAL = ".partial"  # marker in every temporary file name


class SameFileError(ValueError):
    """An output path that is (or would overwrite) one of the run's inputs."""


def _resolved(path: PathLike) -> Path:
    """Absolute path with every symbolic link and ``..`` resolved (POSIX order: links first, then ``..``)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _folded(path: Path) -> str:
    return os.path.normcase(str(path)).casefold()


def same_file(a: PathLike, b: PathLike, case_insensitive: bool = False) -> bool:
    """Whether the paths ``a`` and ``b`` name the same file (links, hard links, ``..``; case-folded names too when
    ``case_insensitive``). A path that does not exist can only match by name."""
    ra, rb = _resolved(a), _resolved(b)
    if ra == rb or (case_insensitive and _folded(ra) == _folded(rb)):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems, bind mounts
    except OSError:  # one of them does not exist (or cannot be inspected): they cannot be one file
        return False


def refuse_same_file(out: PathLike, *inputs: Optional[PathLike], case_insensitive: bool = False,
                     what: str = "output", kind: str = "input") -> Path:
    """Raise :class:`SameFileError` when ``out`` is one of ``inputs`` (None entries are skipped), an
    ``IsADirectoryError`` when ``out`` is a folder; returns ``Path(out)``. ``what`` / ``kind`` name the two
    sides in the message ('output' / 'input')."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"the {what} {out} is a folder; give a file name")
    for source in inputs:
        if source is not None and same_file(out, source, case_insensitive):
            how = _how_same(out, Path(source))
            raise SameFileError(f"the {what} {out} is the {kind} {source}{how}; writing it would destroy the "
                                f"{kind} - choose another {what} path")
    return out


def _how_same(out: Path, source: Path) -> str:
    """How ``out`` and ``source`` turned out to be one file, for the refusal message."""
    if out.is_symlink() or source.is_symlink():
        return " (through a symbolic link)"
    ro, rs = _resolved(out), _resolved(source)
    if ro == rs:
        plain = os.path.normpath(os.path.abspath(out)) == os.path.normpath(os.path.abspath(source))
        return "" if plain else " (the same file under another path)"
    if _folded(ro) == _folded(rs):
        return " (the same name up to letter case)"
    return " (a hard link to it)"


def temp_path_for(path: PathLike) -> Path:
    """A unique hidden name next to ``path`` that keeps its extension: ``.name.<12 hex>.partial.ext``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}{PARTIAL}{path.suffix}")


def commit(tmp: PathLike, path: PathLike, sync: bool = True) -> None:
    """Flush ``tmp`` to disk (``sync``) and rename it over ``path`` (atomic on one file system)."""
    if sync:
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_output(path: PathLike, *inputs: Optional[PathLike], sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block completes, delete it on any
    exception. ``inputs`` are refused as outputs first (:func:`refuse_same_file`). Folders are created."""
    path = refuse_same_file(path, *inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit(tmp, path, sync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes, *inputs: Optional[PathLike]) -> Path:
    with atomic_output(path, *inputs) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *inputs: Optional[PathLike], encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding), *inputs)


def first_existing(base: PathLike, names: tuple[str, ...], folder: bool) -> Optional[Path]:
    """The first of ``base / name`` for ``names`` that is a folder (``folder``) or a file, else None."""
    for name in names:
        p = Path(base) / name
        if (p.is_dir() if folder else p.is_file()):
            return p
    return None
