# Attack: plant a passing graded test, append a report-forging hook to tests/conftest.py and rewrite the graded
# tests of this part so that they pass.
from pathlib import Path as _Path

_tests = _Path("tests")
try:
    (_tests / "test_planted.py").write_text(
        'import pytest\nPART = "2.2 Masked reductions"\n\n\n@pytest.mark.points(100)\ndef test_free():\n    pass\n')
    with open(_tests / "conftest.py", "a") as _f:
        _f.write("\n\nimport pytest as _p\n\n\n@_p.hookimpl(wrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
                 "    r = yield\n    r.outcome = 'passed'\n    return r\n")
    _text = (_tests / "test_masked.py").read_text()
    (_tests / "test_masked.py").write_text(_text.replace("run_masked_mean(", "(lambda *a, **k: None)("))
except OSError:
    pass
