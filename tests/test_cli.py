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


def test_every_stage_of_the_table_is_a_command():
    """The stage table (pipeline/stages.py) and the CLI agree: every stage's loop runs alone as a command."""
    from cs336_alignment.pipeline.stages import STAGES

    assert {stage.train.__module__ for stage in STAGES.values()} <= set(COMMANDS.values())


def test_a_user_error_is_one_line_and_status_2(tmp_path, capsys):
    """A malformed data line and a missing checkpoint: `error: <file>:<line>: <field> ...`, no traceback."""
    from cs336_alignment.__main__ import main

    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "2+2?", "response": "4"}\n{"prompt": "3+3?"}\n')
    assert main(["sft", "--data", str(bad), "--out", str(tmp_path / "sft"), "--num-steps", "1", "--d-model", "16",
                 "--num-layers", "1", "--num-heads", "2", "--d-ff", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}:2: ") and "field 'response'" in err, err
    assert "Traceback" not in err

    assert main(["eval", "--ckpt", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {tmp_path / 'nope.pt'}: no checkpoint there"), err

    assert main(["grpo", "--reward", "rm", "--out", str(tmp_path / "g")]) == 2  # a flag value the loop rejects
    assert capsys.readouterr().err.startswith("error: --reward rm needs --reward-model")

    with pytest.raises(FileNotFoundError):  # --debug (anywhere): the traceback instead
        main(["eval", "--debug", "--ckpt", str(tmp_path / "nope.pt")])
