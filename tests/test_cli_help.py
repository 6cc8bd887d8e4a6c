"""The command line's help: fast (torch is not imported to show it), every option explained with its default, and
the README synopsis equal to the parser's."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omnisync_model.cli.main import build_parser
from omnisync_model.cli.synopsis import synopsis

README = Path(__file__).resolve().parents[1] / "README.md"


def _subparsers(parser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("argv", [["--help"], *[[name, "--help"] for name in _subparsers(build_parser())]])
def test_help_never_imports_torch(argv):
    code = ("import sys\nfrom omnisync_model.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'av', 'kornia', 'transformers') if m in sys.modules)\n"
            "print('HEAVY', heavy)" % (argv,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    assert "usage: omnisync" in proc.stdout


def test_every_option_has_help_that_shows_its_default():
    for name, parser in _subparsers(build_parser()).items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"omnisync {name} {action.option_strings or action.dest} has no help text"
            if action.option_strings and action.default not in (None, False) and action.nargs != 0:
                text = parser._get_formatter()._expand_help(action)
                assert "default" in text, f"omnisync {name} {action.option_strings}: help does not show the default"


def test_readme_synopsis_is_the_parsers():
    text = README.read_text()
    found = re.search(r"<!-- synopsis:start -->\n```\n(.*?)\n```\n<!-- synopsis:end -->", text, re.S)
    assert found, "README has no synopsis block between <!-- synopsis:start --> and <!-- synopsis:end -->"
    assert found.group(1) == synopsis(build_parser()), "README synopsis differs: paste omnisync_model.cli.synopsis"


def test_option_lists_without_torch_match_the_code():
    """The torch-free lists the help is built from equal the code's own (solvers, styles, training styles)."""
    from omnisync_model.sampling.flow import SOLVERS
    from omnisync_model.sampling.options import SOLVER_NAMES
    from omnisync_model.training import synthetic
    from omnisync_model.training.styles import HELD_OUT_STYLES, STYLES, TRAIN_STYLES
    from omnisync_model.training.train_config import TrainConfig

    assert tuple(SOLVERS) == SOLVER_NAMES
    assert synthetic.STYLES == STYLES and set(TRAIN_STYLES) | set(HELD_OUT_STYLES) == set(STYLES)
    assert TrainConfig().styles == TRAIN_STYLES and HELD_OUT_STYLES == ("sketch",)
