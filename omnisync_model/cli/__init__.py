"""The ``omnisync`` command line: subcommands in :mod:`.main`, benchmark commands in :mod:`.perf` and
:mod:`.longvideo`."""

from .main import main

__all__ = ["main"]
