"""The leak check: no solution body may reach the handout, verbatim or renamed.

Two detectors, both run by `handout check` on every text file of the built handout:

1. Verbatim lines (`exact_leaks`): every stripped solution line of LEAK_MIN_CHARS+ characters (a statement's first
   line, or a comment), minus generic lines (`is_generic`), must not appear anywhere: code, tests, notebooks, README.
2. Renamed copies (`clone_leaks`), as a token-based clone detector finds "type-2 clones" (Roy & Cordy 2007,
   "A survey on software clone detection research", §3.1; CPD and CCFinder work this way): each logical line
   of Python is tokenized and normalized — local identifiers become `ID`, strings `S`, numbers `N`; keywords,
   builtins, attribute names (after a dot) and keyword-argument names stay — and a run of CLONE_MIN_LINES
   consecutive normalized lines of a solution region, holding CLONE_MIN_TOKENS+ tokens, must not reappear in a
   .py file or notebook code cell. A second rule catches a re-implementation kept under the graded name: a
   module-level function of the handout named like a graded function (`sequence_log_probs`) whose body is
   not the stub.
3. Results (`result_leaks`): the handout states no measured result. A data README (`data/**/*.md`) and every
   "Look for:" line of the handout's README (the rendered writeup's written and experiment problems) must hold no
   result-like number: a ±, a percentage, a signed number, "N points", or a number with decimals.
"""
from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import re
import tokenize
from pathlib import Path

# ---- 1. verbatim lines

# A solution line this long must not appear anywhere in the handout, unless it is generic: listed here or matching
# a pattern below (checked on the stripped line).
LEAK_MIN_CHARS = 12
LEAK_ALLOW = {
    "loss.backward()", "return loss.detach(), metadata", "return loss.detach(), metrics", "@torch.no_grad()",
    "with torch.no_grad():", "except (ValueError, ZeroDivisionError):", "raise NotImplementedError",
}
LEAK_ALLOW_PATTERNS = [re.compile(p) for p in (
    r"[\w, ]+ = [\w.]+\.shape(\[[-\d:]+\])?",              # B, T = input_ids.shape
    r"return [\w., ]+",                                      # return loss, metadata
    r"[\w.]+ = [\[{(]",                                      # metadata = {
    r"(el)?if (not )?[\w.]+( (==|!=|is|is not|in|>|<) [\w.'\"]+)?:",   # if loss_type == "grpo_clip":
    r"for \w+ in (reversed\()?range\(\w+\)\)?:",               # for t in reversed(range(T)):
)]

# ---- 2. renamed copies: a window of this many consecutive normalized logical lines, with this many tokens
CLONE_MIN_LINES = 3
CLONE_MIN_TOKENS = 40

_KEEP = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | {"self", "cls"}


def is_generic(line: str) -> bool:
    """Too short or too generic for the verbatim check (LEAK_MIN_CHARS, LEAK_ALLOW, LEAK_ALLOW_PATTERNS)."""
    return len(line) < LEAK_MIN_CHARS or line in LEAK_ALLOW or any(p.fullmatch(line) for p in LEAK_ALLOW_PATTERNS)


def text_of(path: Path) -> str | None:
    """A file's text for the leak and marker scans (notebooks: raw JSON plus decoded cell sources); None if binary."""
    if path.stat().st_size > 5_000_000:
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(text).get("cells", [])
            text += "\n" + "\n".join("".join(c.get("source", "")) for c in cells)
        except (json.JSONDecodeError, AttributeError):
            pass
    return text


def exact_leaks(out: Path, files: list[str], solution: list[dict]) -> list[str]:
    """`file:line: 'text' (solution line origin)` for every verbatim solution line found in the handout."""
    needles: dict[str, str] = {}
    for rec in solution:
        if rec.get("continuation"):          # `old_log_probs, cliprange)`: the statement's first line is checked
            continue
        line = rec["text"]
        for candidate in {line, line.split("  # ")[0].rstrip()}:  # also the code without its end-of-line comment
            if not is_generic(candidate):
                needles.setdefault(candidate, f"{rec['file']}:{rec['line']}")
    bad = []
    for rel in files:
        text = text_of(out / rel)
        if text is None:
            continue
        for needle, origin in needles.items():
            idx = text.find(needle)
            if idx >= 0:
                where = f"{rel}:{text.count(chr(10), 0, idx) + 1}" if not rel.endswith(".ipynb") else rel
                bad.append(f"{where}: {needle!r} (solution line {origin})")
    return bad


# ---------------------------------------------------------------------------------------------------------
# Renamed copies
# ---------------------------------------------------------------------------------------------------------

def normalized_lines(code: str) -> list[tuple[int, tuple[str, ...]]]:
    """(first source line, normalized tokens) per logical line of `code`; [] when it does not tokenize.

    Identifiers become ID unless they are keywords, builtins, attribute names or keyword-argument names;
    strings (f-strings included) become S and numbers N; comments, blank lines and indentation are dropped.
    """
    out: list[tuple[int, tuple[str, ...]]] = []
    toks: list[str] = []
    start = depth = 0
    prev = ""
    fstring = 0
    try:
        raw = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    for k, tok in enumerate(raw):
        kind, s = tok.type, tok.string
        name = tokenize.tok_name.get(kind, "")
        if name == "FSTRING_START":
            fstring += 1
            if fstring == 1:
                toks.append("S")
            continue
        if name == "FSTRING_END":
            fstring -= 1
            continue
        if fstring:
            continue
        if kind in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
                    tokenize.ENDMARKER):
            continue
        if kind == tokenize.NEWLINE:
            if toks:
                out.append((start, tuple(toks)))
            toks, prev = [], ""
            continue
        if not toks:
            start = tok.start[0]
        if kind == tokenize.OP:
            depth += s in "([{"
            depth -= s in ")]}"
            toks.append(s)
        elif kind == tokenize.NAME:
            nxt = raw[k + 1].string if k + 1 < len(raw) else ""
            kwarg = depth > 0 and nxt == "="
            toks.append(s if s in _KEEP or prev == "." or kwarg else "ID")
        elif kind == tokenize.STRING:
            toks.append("S")
        elif kind == tokenize.NUMBER:
            toks.append("N")
        else:
            toks.append(s)
        prev = s
    if toks:
        out.append((start, tuple(toks)))
    return out


def _regions(solution: list[dict]) -> list[tuple[str, int, str]]:
    """Group the stripped lines into regions (file, first line, code): consecutive source lines of one file."""
    regions: list[tuple[str, int, list[str]]] = []
    last = (None, -1)
    for rec in solution:
        if (rec["file"], rec["line"] - 1) != last or not regions:
            regions.append((rec["file"], rec["line"], []))
        regions[-1][2].append(rec["text"])
        last = (rec["file"], rec["line"])
    return [(f, line, "\n".join(body) + "\n") for f, line, body in regions]


def _code_of(path: Path) -> list[tuple[str, str]]:
    """(label, code) pieces of a .py file or of a notebook's code cells."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    if path.suffix == ".py":
        return [("", text)]
    try:
        cells = json.loads(text).get("cells", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [(f" cell {k}", "".join(c.get("source", ""))) for k, c in enumerate(cells) if c.get("cell_type") == "code"]


def _windows(lines: list[tuple[int, tuple[str, ...]]]):
    for i in range(len(lines) - CLONE_MIN_LINES + 1):
        window = lines[i:i + CLONE_MIN_LINES]
        if sum(len(t) for _, t in window) >= CLONE_MIN_TOKENS:
            yield window[0][0], tuple(t for _, t in window)


def clone_leaks(out: Path, files: list[str], solution: list[dict], graded_names: set[str] = frozenset()) -> list[str]:
    """`file:line: renamed copy of the solution at origin` for every clone window (and graded-name redefinition)."""
    index: dict[tuple, tuple[int, str]] = {}                 # window -> (region number, origin file:line)
    for k, (rel, line, code) in enumerate(_regions(solution)):
        # Stripped lines lost their indentation: tokenize them flush left, one logical line each.
        lines = normalized_lines(code)
        for offset, window in _windows(lines):
            index.setdefault(window, (k, f"{rel}:{line + offset - 1}"))
    bad = []
    for rel in files:
        if not rel.endswith((".py", ".ipynb")):
            continue
        for label, code in _code_of(out / rel):
            lines = normalized_lines(code)
            seen = set()                                    # one report per solution region and piece
            for first, window in _windows(lines):
                region, origin = index.get(window, (None, None))
                if origin and region not in seen:
                    seen.add(region)
                    bad.append(f"{rel}{label}:{first}: renamed copy of the solution at {origin} "
                               f"({CLONE_MIN_LINES}+ lines equal after normalizing names, strings and numbers)")
            if rel.endswith(".py") and graded_names:
                bad += [f"{rel}:{line}: {name}() re-implements the graded function of the same name"
                        for line, name in _redefinitions(code, graded_names)]
    return bad


def _redefinitions(code: str, graded_names: set[str]) -> list[tuple[int, str]]:
    """Module-level functions named like a graded function whose body is more than a stub."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in graded_names:
            body = node.body[1:] if (isinstance(node.body[0], ast.Expr)
                                      and isinstance(node.body[0].value, ast.Constant)) else node.body
            stub = any(isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s) for s in body)
            calls = {c.func.id if isinstance(c.func, ast.Name) else getattr(c.func, "attr", None)
                     for c in ast.walk(node) if isinstance(c, ast.Call)}
            calls |= {a.name for c in ast.walk(node) if isinstance(c, ast.ImportFrom) for a in c.names}
            if not stub and node.name not in calls:        # glue that calls the graded function is fine (adapters)
                found.append((node.lineno, node.name))
    return found


# ---- 3. results: the handout tells no answers

RESULT_RE = re.compile(r"±|\+/-|\d\s?%|(?<![\w.])[+−]\d|\b\d+(\.\d+)?\s+points?\b|(?<![\w.=-])\d+\.\d+\b")
LOOK_FOR = re.compile(r"- (\*\*)?Look for:")     # the source's bullet, or the rendered one (bold)


def _look_for_lines(text: str):
    """(line number, text) of every "- Look for:" bullet, continuation lines (indented) included."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if LOOK_FOR.match(line):
            yield i + 1, line
            for j in range(i + 1, len(lines)):
                if not lines[j].startswith("  "):
                    break
                yield j + 1, lines[j]


def result_leaks(out: Path, files: list[str]) -> list[str]:
    """"file:line: text" of every result-like number (RESULT_RE) in a data README or a "Look for" line."""
    bad = []
    for rel in files:
        if rel.startswith("data/") and rel.endswith(".md"):
            found = enumerate((out / rel).read_text(encoding="utf-8").splitlines(), 1)
        elif rel == "README.md":
            found = _look_for_lines((out / rel).read_text(encoding="utf-8"))
        else:
            continue
        bad += [f"{rel}:{n}: a result in the handout: {line.strip()}" for n, line in found
                if RESULT_RE.search(re.sub(r"`[^`]*`", "", line))]        # code spans (flags, calls) are not results
    return bad
