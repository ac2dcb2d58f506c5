"""Build the student handout from solution markers, check it, and grade it on Gradescope (nbgrader/otter, for pytest).

This repository is the reference solution; the student handout is a build artifact, never edited by hand:

    python -m cs336_alignment handout build OUT [--stub-adapters]   # copy the repo, strip the solutions
    python -m cs336_alignment handout check OUT                     # the invert gate
    python -m cs336_alignment handout autograder autograder.zip     # Gradescope zip: setup.sh, run_autograder, handout/
    python -m cs336_alignment handout submit                        # (students) run the tests, zip the package
    python -m cs336_alignment handout writeup                       # the assignment's problems and points

One idea per file, lowest first:
    markers.py     solution/instructor markers: one text in, the stripped text out
    writeup.py     the assignment (writeup.md): problems, points, deliverables; rendered as the handout's README
    build.py       copy the repo to OUT with every marked region stubbed
    leaks.py       the leak check: verbatim solution lines and renamed copies (a token-based clone detector)
    check.py       the invert gate on a built handout
    gradescope.py  the autograder zip (scripts/ holds the files that run on Gradescope) and the student's zip
    cli.py         the command line
The answer key (answer_key.py, answers.md) is instructor-only: pyproject's exclude list keeps it out of handouts.
"""
from cs336_alignment.course.handout.build import BuildResult, build, list_files, sidecar
from cs336_alignment.course.handout.check import check
from cs336_alignment.course.handout.cli import main
from cs336_alignment.course.handout.gradescope import autograder, submit
from cs336_alignment.course.handout.leaks import clone_leaks, exact_leaks, is_generic, normalized_lines
from cs336_alignment.course.handout.markers import HandoutError, strip_markers, strip_notebook, stub_adapter_functions

__all__ = ["BuildResult", "HandoutError", "autograder", "build", "check", "clone_leaks", "exact_leaks", "is_generic",
           "list_files", "main", "normalized_lines", "sidecar", "strip_markers", "strip_notebook",
           "stub_adapter_functions", "submit"]
