"""Copy the student's PACKAGE/**/*.py from a Gradescope submission onto a clean handout (run by run_autograder).

    python3 overlay_submission.py SUBMISSION_DIR HANDOUT_PACKAGE_DIR PACKAGE

The shallowest PACKAGE/ folder in the submission wins (students zip from the repo root or one level above);
grading.py is never overlaid, so the grading plugin stays the instructor's.
"""
import shutil
import sys
from pathlib import Path

sub, dest, package = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
found = sorted((p for p in sub.rglob(package) if p.is_dir() and "__MACOSX" not in p.parts), key=lambda p: len(p.parts))
if not found:
    print(f"no {package}/ folder in the submission: grading the untouched handout")
    raise SystemExit
for f in sorted(found[0].rglob("*.py")):
    rel = f.relative_to(found[0])
    if rel.as_posix() != "grading.py" and "__pycache__" not in rel.parts:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)
        print(f"using the submitted {package}/{rel.as_posix()}")
