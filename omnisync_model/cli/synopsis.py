"""The README's command-line synopsis, generated from the parser itself (a test keeps the README equal to it)."""

from __future__ import annotations

import argparse

WIDTH = 116  # README code blocks stay within the file's 120 columns


def _option(action: argparse.Action) -> str:
    """``--name VALUE`` (or ``--flag``) with the default, as the synopsis shows it."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return f"[{flag}]"
    if action.choices is not None and len(action.choices) <= 6:
        value = "|".join(map(str, action.choices))
    else:
        value = (action.metavar if isinstance(action.metavar, str) else None) or action.dest.upper()
    text = f"{flag} {value}"
    if action.required:
        return text
    if action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, (list, tuple)):
        text += f"={action.default}"
    return f"[{text}]"


def _command(name: str, parser: argparse.ArgumentParser) -> list[str]:
    parts = [a.metavar or a.dest.upper() for a in parser._actions if not a.option_strings]  # positionals
    parts += [_option(a) for a in parser._actions if a.option_strings and a.dest != "help"]
    lines, line = [], f"omnisync {name}"
    indent = " " * len(f"omnisync {name} ")
    for part in parts:
        if len(line) + 1 + len(part) > WIDTH:
            lines.append(line)
            line = indent + part
        else:
            line += " " + part
    return lines + [line]


def synopsis(parser: argparse.ArgumentParser) -> str:
    """Every subcommand with its positionals and options (defaults after ``=``), wrapped to the README's width."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = []
    for name, child in sub.choices.items():
        lines += _command(name, child)
    return "\n".join(lines)
