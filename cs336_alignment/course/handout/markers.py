"""Solution markers: one text in, the stripped text out (the nbgrader/otter scheme, for .py files and notebooks).

Markers are whole comment lines, exactly as written here, in .py files and notebook code cells:

    BEGIN SOLUTION ... END SOLUTION       -> at the same indentation, the hint
                                             "# TODO: implement this (the reference solution is N lines)"
                                             and `raise NotImplementedError(...)` naming the function and its part
    BEGIN INSTRUCTOR ... END INSTRUCTOR   -> dropped (a block left empty gets `pass`)

(each preceded by "# "). Nested, unterminated or misspelled markers are errors that name file:line; so is a
solution region at module level in a .py file (the module would not import).
"""
from __future__ import annotations

import ast
import io
import json
import re
import textwrap
import tokenize
from dataclasses import dataclass, field

MARKER_RE = re.compile(r"^\s*#+\s*(BEGIN|END)\s+(SOLUTION|INSTRUCTOR)\b")
STUB_HINT = "# TODO: implement this (the reference solution is {n} line{s})"
STUB_RAISE = "raise NotImplementedError"
# The stub's message when the builder knows the region's function and the part that grades it; the grading
# plugin reads it back (grading.STUB_MESSAGE_RE) to skip an ungraded test that needs an unfinished part.
STUB_MESSAGE = "{function} is not implemented yet (part {part})"


class HandoutError(Exception):
    """A build error (bad marker, bad output directory); the message names file:line where it can."""


@dataclass
class Stripped:
    text: str
    solution: list[tuple[int, str, bool]] = field(default_factory=list)  # (source line, stripped text, continuation)
    instructor_lines: int = 0
    regions: int = 0
    functions: list[tuple[int, str]] = field(default_factory=list)  # (region's first line, qualified function name)


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _is_code(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _continuations(body: list[str]) -> set[int]:
    """Indices of the lines that continue a statement begun on an earlier line (inside brackets, strings, ...)."""
    starts, at_start = set(), True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent("".join(body))).readline):
            if tok.type == tokenize.NEWLINE:
                at_start = True
            elif tok.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER) and at_start:
                starts.add(tok.start[0] - 1)
                at_start = tok.type == tokenize.COMMENT
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return set()
    return {k for k, line in enumerate(body) if line.strip() and k not in starts}


def enclosing_functions(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function in `text`, innermost last; [] if it does not parse."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return sorted(found, key=lambda f: (f[0], -f[1]))


def region_function(functions: list[tuple[int, int, str]], line: int) -> str | None:
    """The qualified name of the innermost function holding `line`, or None."""
    inside = [f for f in functions if f[0] <= line <= f[1]]
    return inside[-1][2] if inside else None


def strip_markers(text: str, where: str, *, module_level_ok: bool = False,
                  parts: dict[str, str] | None = None) -> Stripped:
    """Replace solution regions by stubs and drop instructor regions; raise HandoutError naming `where:line`.

    `parts` maps a function's qualified name ("masked_mean", "RewardModel.forward") to the part that grades it:
    the stub then raises `NotImplementedError("masked_mean is not implemented yet (part 2.2 Masked reductions)")`,
    which lets the grading plugin skip an ungraded test that needs it, naming the part. With `parts` given, a
    region in a function it does not list is an error (every graded body belongs to a problem of the writeup).
    """
    lines = text.splitlines(keepends=True)
    result, out = Stripped(text), []
    functions = enclosing_functions(text) if not module_level_ok else []
    kind = start = indent = None
    body: list[str] = []
    for i, line in enumerate(lines, 1):
        m = MARKER_RE.match(line)
        if m is None:
            (body if kind else out).append(line)
            continue
        word, what = m.groups()
        if line.strip() != f"# {word} {what}":
            raise HandoutError(f"{where}:{i}: malformed marker {line.strip()!r}: write exactly '# {word} {what}'")
        if word == "BEGIN":
            if kind:
                raise HandoutError(f"{where}:{i}: nested '# BEGIN {what}' inside the {kind} region opened at line {start}")
            kind, start, indent, body = what, i, _indent(line), []
            continue
        if kind is None:
            raise HandoutError(f"{where}:{i}: '# END {what}' without a matching '# BEGIN {what}'")
        if what != kind:
            raise HandoutError(f"{where}:{i}: '# END {what}' closes the {kind} region opened at line {start}")
        eol = "\r\n" if line.endswith("\r\n") else "\n"
        if kind == "SOLUTION":
            if not indent and not module_level_ok:
                raise HandoutError(f"{where}:{start}: solution region at module level: the handout module would not "
                                   f"import; put regions inside function bodies")
            n = sum(map(_is_code, body))
            out.append(indent + STUB_HINT.format(n=n, s="" if n == 1 else "s") + eol)
            raise_line = STUB_RAISE
            function = region_function(functions, start) if functions else None
            if function:
                result.functions.append((start, function))
            if parts is not None:
                if function not in parts:
                    raise HandoutError(f"{where}:{start}: the solution region in {function or 'module code'} belongs "
                                       f"to no problem of the writeup (name it on a problem's 'Code:' line)")
                raise_line += f"({STUB_MESSAGE.format(function=function, part=parts[function])!r})"
            out.append(indent + raise_line + eol)
            cont = _continuations(body)
            result.solution += [(start + k + 1, b.strip(), k in cont) for k, b in enumerate(body) if b.strip()]
        else:
            result.instructor_lines += sum(1 for b in body if b.strip())
            previous = next((o for o in reversed(out) if _is_code(o)), None)
            following = next((x for x in lines[i:] if _is_code(x)), None)
            opens_block = previous is not None and len(_indent(previous)) < len(indent)
            if opens_block and (following is None or len(_indent(following)) < len(indent)):
                out.append(indent + "pass" + eol)  # the region was the whole block
        result.regions += 1
        kind = None
    if kind:
        raise HandoutError(f"{where}:{start}: '# BEGIN {kind}' is never closed")
    new = "".join(out)
    if text and not text.endswith(("\n", "\r")) and new.endswith("\n"):
        new = new.rstrip("\r\n")  # a notebook cell ending inside a region keeps its missing final newline
    result.text = new
    return result


def strip_notebook(raw: str, where: str) -> Stripped:
    """Strip markers in every code cell, clear outputs and execution counts; text is the re-serialized notebook."""
    nb = json.loads(raw)
    total = Stripped(raw)
    for k, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        s = strip_markers(text, f"{where} cell {k}", module_level_ok=True)
        if s.regions:
            cell["source"] = s.text.splitlines(keepends=True)
            total.solution += s.solution
            total.instructor_lines += s.instructor_lines
            total.regions += s.regions
        cell["outputs"], cell["execution_count"] = [], None
    total.text = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # nbformat's own layout
    return total


def stub_adapter_functions(text: str) -> str:
    """CS336-style adapters: every top-level run_*/get_* body (after its docstring) becomes `raise NotImplementedError`."""
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.parse(text).body:
        if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(("run_", "get_"))):
            continue
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body or body[0].lineno == node.lineno or (len(body) == 1 and ast.unparse(body[0]) == STUB_RAISE):
            continue
        edits.append((body[0].lineno - 1, node.end_lineno, _indent(lines[body[0].lineno - 1])))
    for begin, end, indent in reversed(edits):
        lines[begin:end] = [indent + STUB_RAISE + "\n"]
    return "".join(lines)


