"""Reading a Hugging Face checkpoint's files with errors that name the file: JSON and safetensors.

A checkpoint downloaded badly is a common first failure: an empty file, one cut short, or (cloned without
`git lfs`) a Git LFS pointer, the ~130-byte text `version https://git-lfs.github.com/spec/v1 ...` that stands
in for a large file. `json` and `safetensors` then raise a bare JSONDecodeError / SafetensorError without the
file's name. `read_json` and `open_safetensors` say which file and what is wrong with it in one line, raised
as the caller's error class (a ValueError subclass, which the command line prints as `error: ...`, exit 2).

Layering: imports nothing of the package; `hf_tokenizer.py` and `pretrained.py` use it.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def _check_not_empty_or_lfs_pointer(file: Path, error: type[Exception]) -> None:
    """Raise `error` naming `file` when it is empty or a Git LFS pointer."""
    with open(file, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if not head:
        raise error(f"{file}: the file is empty")
    if head == LFS_POINTER:
        raise error(f"{file}: this is a Git LFS pointer, not the file (fetch it with `git lfs pull`)")


def read_json(file: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `file`.

    Raises:
        FileNotFoundError: no such file.
        error: (a ValueError subclass) one line naming the file: empty, a Git LFS pointer, not UTF-8, not
            valid JSON (truncated or corrupt: the parser's message, line and column), or not a JSON object.
    """
    file = Path(file)
    _check_not_empty_or_lfs_pointer(file, error)
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{file}: not UTF-8 text (byte {e.start}); a corrupt file?") from None
    except json.JSONDecodeError as e:
        raise error(f"{file}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); truncated or "
                    "corrupt?") from None
    if not isinstance(value, dict):
        raise error(f"{file}: expected a JSON object, found {type(value).__name__}")
    return value


@contextlib.contextmanager
def open_safetensors(file: str | Path, error: type[Exception] = ValueError) -> Iterator[Any]:
    """`safetensors.safe_open(file, framework="pt")` as a context manager, with one-line errors.

    Raises:
        error: naming the file: empty, a Git LFS pointer, or a header safetensors rejects (corrupt or
            truncated: its message says which).
    """
    file = Path(file)
    _check_not_empty_or_lfs_pointer(file, error)
    try:
        handle = safe_open(file, framework="pt")
    except SafetensorError as e:
        raise error(f"{file}: not a readable safetensors file ({e}); truncated or corrupt?") from None
    with handle as f:
        yield f
