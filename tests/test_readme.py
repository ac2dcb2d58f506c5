"""The README states what the code does: its file map lists every module of the package, its command list is
the CLI's, every flag it or the other documents (data/RESULTS.md, the handout's and the loops' READMEs) show a
command with is in that command's --help, and the pipeline's synopsis lists every pipeline flag. It stays a map:
at most 250 lines. (The metric table: tests/test_metric_names.py.)"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from cs336_alignment.__main__ import COMMANDS
from tests.metric_names import IS_LIBRARY_README, NOT_IN_HANDOUT

pytestmark = pytest.mark.skipif(not IS_LIBRARY_README, reason=NOT_IN_HANDOUT)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS = [ROOT / "README.md", ROOT / "data" / "RESULTS.md", ROOT / "cs336_alignment" / "course" / "handout" / "README.md",
             ROOT / "cs336_alignment" / "train" / "README.md"]
PACKAGE = ROOT / "cs336_alignment"


def file_map() -> str:
    start = README.index("```\ncs336_alignment/\n")
    return README[start:README.index("```\n", start + 4)]


def help_text(command: str, *sub: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(COMMANDS[command]).main([*sub, "--help"])
    return out.getvalue()


def readme_commands() -> list[list[str]]:
    """Every `python -m cs336_alignment ...` the documents show, as argv lists (comments and [...] hints dropped)."""
    commands = []
    flat = re.sub(r"\\\n\s*", " ", "\n".join(path.read_text() for path in DOCUMENTS))  # shell line continuations
    for match in re.finditer(r"python -m cs336_alignment ([^`\n#{]*)", flat):
        text = re.sub(r"\[([^\]]*)\]", r"\1", match.group(1)).replace("|", " ")
        commands.append(shlex.split(text.split(" -- ")[0]))
    return [argv for argv in commands if argv]


def test_readme_is_a_map():
    assert len(README.splitlines()) <= 250, "measured findings belong in data/RESULTS.md"
    for link in re.findall(r"\]\(([^)#]+)", README):
        assert (ROOT / link).exists(), link


def test_file_map_lists_every_module():
    """Every module, under its package: a top-level module or package two spaces in, a package's modules four."""
    mapped, package = set(), ""
    for line in file_map().splitlines()[2:]:
        match = re.match(r"^( {2}| {4})(\w+\.py|\w+/) ", line)
        if not match:
            continue
        indent, name = match.groups()
        if len(indent) == 2:
            package = name if name.endswith("/") else ""
            mapped |= set() if package else {name}
        else:
            mapped.add(package + name)
    handout = PACKAGE / "course" / "handout"  # the handout tool: one line
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and handout not in p.parents}
    assert mapped == modules | {"course/handout/"}


def test_command_list_is_the_clis():
    listed = re.search(r"python -m cs336_alignment \{([\w,]+)\}", file_map()).group(1).split(",")
    assert listed == list(COMMANDS)


def test_every_readme_flag_is_in_its_commands_help():
    commands = readme_commands()
    assert len(commands) >= 10
    for argv in commands:
        command = argv[0]
        assert command in COMMANDS, argv
        if command == "grade":  # forwards its flags to pytest
            continue
        sub = [argv[1]] if command in ("handout", "bench") and len(argv) > 1 and not argv[1].startswith("-") else []
        text = help_text(command, *sub) if command != "bench" else help_text(command)
        for flag in (a for a in argv if a.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", text), (argv, flag)


def test_pipeline_synopsis_lists_every_flag():
    synopsis = next(line for line in README.splitlines() if line.startswith("`python -m cs336_alignment pipeline ["))
    flags = set(re.findall(r"(--[\w-]+)", help_text("pipeline"))) - {"--help"}
    assert flags == set(re.findall(r"(--[\w-]+)", synopsis))
