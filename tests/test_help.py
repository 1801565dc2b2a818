"""``--help`` tells the truth about defaults: flags are off unless given (also the negated
``--no_prefetch``, whose stored value is True), and every shown default is the value that
parsing no arguments gives."""

from __future__ import annotations

import argparse
import re

import pytest

from calib_mpi import submit
from calib_mpi.config import build_parser


def _entries(parser) -> dict[str, str]:
    """Option string -> its help as printed (defaults filled in)."""
    parser.format_help()  # configargparse adds the [env var: ...] notes here
    fmt = parser._get_formatter()
    return {opt: re.sub(r"\s+", " ", fmt._expand_help(a)) for a in parser._actions
            if a.help for opt in a.option_strings}


@pytest.mark.parametrize("flag", ["--no-prefetch", "--no-node-sharing", "--overwrite",
                                  "--plot", "--dry-run", "--interleaved"])
def test_flags_are_off_by_default(flag):
    entry = _entries(build_parser())[flag]
    assert "(default: True)" not in entry and "(default: False)" not in entry, entry
    assert entry.endswith("(default: off)") or "(default: refuse)" in entry, entry


def test_shown_defaults_are_the_parsed_defaults():
    parser = build_parser()
    text = parser.format_help()
    for wrong in ("(default: None)", "(default: True)", "(default: False)"):
        assert wrong not in text
    entries = _entries(parser)
    parsed = vars(parser.parse_args([]))
    checked = 0
    for action in parser._actions:
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
            continue
        value = parsed[action.dest]
        shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        assert entries[action.option_strings[0]].endswith(f"(default: {shown})"), action.dest
        checked += 1
    assert checked >= 20


def test_submit_help_defaults():
    text = re.sub(r"\s+", " ", submit.build_parser().format_help())
    for wrong in ("(default: None)", "(default: True)", "(default: False)"):
        assert wrong not in text
    assert "wall-clock limit, HH:MM:SS or D-HH:MM:SS (01:00:00)" in text
