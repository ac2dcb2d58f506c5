"""`python -m cs336_alignment handout {build,check,autograder,submit,writeup}`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cs336_alignment.course.handout import writeup
from cs336_alignment.course.handout.build import build
from cs336_alignment.course.handout.check import check
from cs336_alignment.course.handout.gradescope import autograder, submit
from cs336_alignment.course.handout.markers import HandoutError


def default_repo() -> Path:
    """The solution repository this package lives in (or the current directory for a non-editable install)."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cs336_alignment handout",
                                description="Build and check the student handout; make Gradescope zips.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="copy the repo to OUT with solutions stubbed (instructor)")
    b.add_argument("out", type=Path)
    b.add_argument("--stub-adapters", action="store_true", help="tests/adapters.py raises too (the CS336 way)")
    b.add_argument("--repo", type=Path, default=None, help="solution repository (default: this package's repo)")
    c = sub.add_parser("check", help="the invert gate on a built handout (instructor, CI)")
    c.add_argument("out", type=Path)
    c.add_argument("package", nargs="?", default=None)
    c.add_argument("--package", dest="package_opt", default=None, help="package to import (default cs336_alignment)")
    c.add_argument("--slow", action="store_true", help="also run tests marked slow (notebooks)")
    c.add_argument("--allow-ungraded-nie", action="store_true",
                   help="ungraded tests may fail with a bare NotImplementedError (a handout whose stubs do not "
                        "name their part)")
    a = sub.add_parser("autograder", help="write the Gradescope autograder zip (instructor)")
    a.add_argument("zip", type=Path)
    a.add_argument("--repo", type=Path, default=None)
    s = sub.add_parser("submit", help="run the tests and zip your package for Gradescope (students)")
    s.add_argument("--out", type=Path, default=Path("submission.zip"))
    s.add_argument("--repo", type=Path, default=None)
    s.add_argument("--skip-tests", action="store_true")
    s.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest after --")
    w = sub.add_parser("writeup", help="print the assignment's problems and points, or render the writeup")
    w.add_argument("--render", type=Path, default=None, help="write the rendered README.md here")
    w.add_argument("--repo", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.repo or default_repo(), args.out, stub_adapters=args.stub_adapters)
        elif args.cmd == "check":
            return 1 if check(args.out, args.package_opt or args.package or "cs336_alignment", slow=args.slow,
                              allow_ungraded_nie=args.allow_ungraded_nie) else 0
        elif args.cmd == "autograder":
            autograder(args.zip, (args.repo or default_repo()).resolve())
        elif args.cmd == "writeup":
            return writeup.main(args.repo or default_repo(), args.render)
        else:
            extra = [a for a in args.pytest_args if a != "--"] or None
            return submit(args.repo or default_repo(), args.out, run_tests=not args.skip_tests, pytest_args=extra)
    except (HandoutError, writeup.WriteupError) as e:
        print(f"handout {args.cmd}: error\n{e}", file=sys.stderr)
        return 1
    return 0
