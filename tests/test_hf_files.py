"""Broken checkpoint files give one line naming the file (hf_files.py), not a bare JSONDecodeError/SafetensorError.

Each file kind a Hugging Face directory holds (config.json, model.safetensors.index.json, a .safetensors shard,
model.safetensors, tokenizer.json, tokenizer_config.json) x each way a download goes wrong (empty, truncated to
half its bytes, corrupt bytes, a Git LFS pointer): the error is a ValueError subclass (the command line prints
those as `error: ...` and exits 2) whose one-line message starts with the file's path. The oracle for "bare"
is the library itself: json / safetensors on the same bytes raise an error whose message lacks the name.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from cs336_alignment.lm.hf_files import LFS_POINTER
from cs336_alignment.lm.hf_tokenizer import TokenizerFileError, bytes_to_unicode
from cs336_alignment.lm.model import TransformerLM
from cs336_alignment.lm.pretrained import CheckpointError
from cs336_alignment.lm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

POINTER = (LFS_POINTER + b"\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
           b"size 988097824\n")
CORRUPTIONS = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "corrupt": lambda data: bytes(range(256)) * 4,
    "lfs_pointer": lambda data: POINTER,
}
BYTE_LEVEL = {  # the smallest valid byte-level BPE tokenizer.json: the 256 bytes, no merges, one special token
    "model": {"type": "BPE", "vocab": {c: b for b, c in bytes_to_unicode().items()}, "merges": []},
    "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": True}], "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two tiny Llama directories written by transformers: one sharded (index + shards), one single-file; both
    with a minimal valid tokenizer.json and tokenizer_config.json. Intact, both load."""
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dirs = {}
    for name, shard in (("sharded", "8KB"), ("single", "50GB")):
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path, max_shard_size=shard)
        (path / "tokenizer.json").write_text(json.dumps(BYTE_LEVEL), encoding="utf-8")
        (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}), encoding="utf-8")
        dirs[name] = path
    assert (dirs["sharded"] / "model.safetensors.index.json").is_file()
    for path in dirs.values():  # the control: nothing but the corruption makes a test below fail
        TransformerLM.from_pretrained(path)
        assert Tokenizer.from_pretrained(path).decode(Tokenizer.from_pretrained(path).encode("héllo")) == "héllo"
    return dirs


def _load_model(path):
    TransformerLM.from_pretrained(path)


def _load_tokenizer(path):
    Tokenizer.from_pretrained(path)


KINDS = {  # kind -> (directory, file name or glob, loader, error class)
    "config.json": ("single", "config.json", _load_model, CheckpointError),
    "index": ("sharded", "model.safetensors.index.json", _load_model, CheckpointError),
    "shard": ("sharded", "model-00002-of-*.safetensors", _load_model, CheckpointError),
    "model.safetensors": ("single", "model.safetensors", _load_model, CheckpointError),
    "tokenizer.json": ("single", "tokenizer.json", _load_tokenizer, TokenizerFileError),
    "tokenizer_config.json": ("single", "tokenizer_config.json", _load_tokenizer, TokenizerFileError),
}


def _broken_copy(source, tmp_path, kind, corruption):
    directory, pattern, _, _ = KINDS[kind]
    path = tmp_path / "ckpt"
    shutil.copytree(source[directory], path)
    file = sorted(path.glob(pattern))[0]
    file.write_bytes(CORRUPTIONS[corruption](file.read_bytes()))
    return path, file


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_broken_file_is_named_in_one_line(source, tmp_path, kind, corruption):
    path, file = _broken_copy(source, tmp_path, kind, corruption)
    _, _, load, error = KINDS[kind]
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    print(f"{kind} {corruption}: {message}")
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith(f"{file}: ")
    assert ("this is a Git LFS pointer, not the file" in message) == (corruption == "lfs_pointer")
    if corruption == "empty":
        assert "empty" in message


def test_the_libraries_alone_do_not_name_the_file(source, tmp_path):
    """Why the wrapper exists: json and safetensors on an LFS pointer raise without the file's name."""
    from safetensors import SafetensorError, safe_open

    path, file = _broken_copy(source, tmp_path, "model.safetensors", "lfs_pointer")
    with pytest.raises(SafetensorError) as info:
        safe_open(file, framework="pt")
    assert str(file) not in str(info.value) and file.name not in str(info.value)
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(POINTER.decode())
    assert "config.json" not in str(info.value)


def test_cli_prints_one_error_line_and_exits_2(source, tmp_path):
    """`eval --init DIR` on a directory whose weight shard is a Git LFS pointer: exit 2, one `error:` line."""
    path, file = _broken_copy(source, tmp_path, "shard", "lfs_pointer")
    run = subprocess.run([sys.executable, "-m", "cs336_alignment", "eval", "--init", str(path), "--n-problems", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {file}: this is a Git LFS pointer, not the file"), lines
