"""Import every module of a package from the current directory and print one JSON line (run by `handout check`).

    python import_check.py PACKAGE   ->   IMPORT-RESULT:{"file": ..., "modules": [...], "failed": {name: traceback}}

It runs in a subprocess with the handout first on PYTHONPATH, so that a module that does not import (a solution
region at module level, a name the stubs removed) is reported with its traceback instead of crashing the check.
"""
import importlib
import json
import pkgutil
import sys
import traceback

name, failed, mods = sys.argv[1], {}, [sys.argv[1]]
try:
    pkg = importlib.import_module(name)
except BaseException:
    print("IMPORT-RESULT:" + json.dumps({"file": None, "modules": mods, "failed": {name: traceback.format_exc()}}))
    raise SystemExit


def onerror(n):
    failed[n] = traceback.format_exc()


for info in pkgutil.walk_packages(pkg.__path__, name + ".", onerror=onerror):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    mods.append(info.name)
    try:
        importlib.import_module(info.name)
    except BaseException:
        failed[info.name] = traceback.format_exc()
print("IMPORT-RESULT:" + json.dumps({"file": pkg.__file__, "modules": mods, "failed": failed}))
