"""`python -m cs336_alignment.course.handout ...` (the same as `python -m cs336_alignment handout ...`)."""
import sys

from cs336_alignment.course.handout.cli import main

sys.exit(main())
