"""The command line: every command's --help renders (field docs may contain "%", which argparse formats)."""
from __future__ import annotations

import importlib

import pytest

from cs336_alignment.__main__ import COMMANDS


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"grade"}))  # grade forwards its flags to pytest
def test_every_command_help_renders(command, capsys):
    module = importlib.import_module(COMMANDS[command])
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out
