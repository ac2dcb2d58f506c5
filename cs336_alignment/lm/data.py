"""Data for every stage: validated jsonl, prompt/response tokenization, packing, collation and batches.

`tokenize_prompt_and_output`, `get_packed_sft_dataset` and `iterate_batches` follow Stanford CS336
assignment 5 (SFT data); `get_batch` is CS336 assignment 1's random-window sampler for pretraining.
Loaders never drop a bad record silently: malformed JSON, a missing field, a wrong type or an empty
response raises `DataError` with "<file>:<line>: field '<name>': <problem>".
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class DataError(ValueError):
    """A bad record in a data file (or a bad example passed in); the message names file, line and field."""


# ----------------------------------------------------------------------------
# jsonl

def _iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; DataError on undecodable or non-object lines."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _require(record: Mapping[str, Any], field: str, kind: type, where: str, non_empty: bool = False) -> Any:
    if field not in record:
        raise DataError(f"{where}: missing field {field!r}")
    value = record[field]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {field!r} must be {kind.__name__}, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return value


def load_jsonl(path: str | os.PathLike, fields: Mapping[str, type] | None = None, non_empty: bool = False
               ) -> list[dict[str, Any]]:
    """Read a jsonl file (one JSON object per line; blank lines skipped).

    Args:
        path: the file.
        fields: optional {field name: python type} every record must have, e.g. {"question": str}.
        non_empty: the str `fields` must also hold more than whitespace.
    Returns:
        the records, in file order.
    Raises:
        DataError: "<path>:<line>: ..." on a line that is not UTF-8, not JSON or not an object, and on a
            missing field or one of the wrong type (or an empty one, with non_empty).
    """
    records = []
    for lineno, record in _iter_jsonl(path):
        for field, kind in (fields or {}).items():
            _require(record, field, kind, f"{path}:{lineno}", non_empty=non_empty and kind is str)
        records.append(record)
    return records


def load_problems_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The {"question": str, "answer": str} problems of a jsonl file (eval, grpo, ppo and ei --data), both fields
    non-empty (other fields kept).

    Raises:
        DataError: "<path>:<line>: ..." on a bad record (see `load_jsonl`), "<path>: no problems" on a file
            without records.
    """
    problems = load_jsonl(path, fields={"question": str, "answer": str}, non_empty=True)
    if not problems:
        raise DataError(f"{path}: no problems (an empty file): expected one {{\"question\", \"answer\"}} object per "
                        f"line")
    return problems


def record_lines(path: str | os.PathLike) -> list[int]:
    """The line number of each record of a jsonl file (blank lines are skipped by every loader), so that a
    check made after loading can still name "<file>:<line>"."""
    return [lineno for lineno, _ in _iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Write records one JSON object per line (UTF-8, non-ASCII kept as is)."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _messages_example(messages: Any, where: str) -> dict[str, Any]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: field 'messages[{i}]' must be an object")
        role = _require(message, "role", str, f"{where}: messages[{i}]")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: field 'messages[{i}].role' is {role!r}, not system/user/assistant")
        _require(message, "content", str, f"{where}: messages[{i}]")
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages[{last}].role' must be 'assistant' (the response)")
    if not messages[last]["content"].strip():
        raise DataError(f"{where}: field 'messages[{last}].content' is empty")
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    if not users or not users[-1].strip():
        raise DataError(f"{where}: field 'messages' has no non-empty user turn before the response")
    return {"prompt": users[-1], "response": messages[last]["content"],
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def load_sft_examples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load SFT demonstrations in any of three schemas, one per line (they may be mixed):

    * GSM8K: {"question": str, "answer": str}
    * {"prompt": str, "response": str}
    * chat: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]} ending with the
      assistant response; the prompt is the last user turn before it.

    Returns:
        [{"prompt": str, "response": str, "messages": list of messages (the whole chat; for the first two
        schemas [user prompt, assistant response])}].
    Raises:
        DataError: "<path>:<line>: field '<name>': ..." on malformed JSON, an unknown schema, a missing
            field, a wrong type, or an empty prompt or response (never dropped silently).
    """
    examples = []
    for lineno, record in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "messages" in record:
            examples.append(_messages_example(record["messages"], where))
            continue
        if "question" in record or "answer" in record:
            prompt_field, response_field = "question", "answer"
        elif "prompt" in record or "response" in record:
            prompt_field, response_field = "prompt", "response"
        else:
            raise DataError(f"{where}: no known schema: expected fields question/answer, prompt/response or "
                            f"messages, got {sorted(record)}")
        prompt = _require(record, prompt_field, str, where, non_empty=True)
        response = _require(record, response_field, str, where, non_empty=True)
        examples.append({"prompt": prompt, "response": response,
                         "messages": [{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": response}]})
    return examples


# ----------------------------------------------------------------------------
# SFT tensors

def tokenize_prompt_and_output(prompt_strs: list[str], output_strs: list[str], tokenizer) -> dict[str, Tensor]:
    """Tokenize prompt/output pairs for SFT (CS336 assignment 5).

    Prompt and output are tokenized separately (`tokenizer.encode`), concatenated and right-padded with
    `tokenizer.pad_token_id` (or the EOS id when the tokenizer has no pad) to L = the longest prompt+output.
    The model reads input_ids = full[:, :-1] and predicts labels = full[:, 1:]; response_mask marks the
    label positions that are output tokens, so row i has exactly len(encode(output_strs[i])) True entries.

    Args:
        prompt_strs: B non-empty prompts.
        output_strs: B non-empty outputs (responses).
        tokenizer: anything with `encode(str) -> list[int]` and `pad_token_id` / `eos_token_id`.
    Returns:
        {"input_ids": (B, L-1) long, "labels": (B, L-1) long, "response_mask": (B, L-1) bool}.
    Raises:
        ValueError: when the lists differ in length or are empty.
        DataError: on an empty prompt or output string (an empty response has nothing to train on).
    """
    if len(prompt_strs) != len(output_strs) or not prompt_strs:
        raise ValueError(f"need equally many prompts and outputs (>= 1), got {len(prompt_strs)}, {len(output_strs)}")
    for name, strs in (("prompt_strs", prompt_strs), ("output_strs", output_strs)):
        for i, s in enumerate(strs):
            if not isinstance(s, str) or not s:
                raise DataError(f"{name}[{i}] is empty or not a str: every example needs a prompt and a response")
    # BEGIN SOLUTION
    prompts = [tokenizer.encode(p) for p in prompt_strs]
    outputs = [tokenizer.encode(o) for o in output_strs]
    B, L = len(prompts), max(len(p) + len(o) for p, o in zip(prompts, outputs))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    full = torch.full((B, L), pad_id, dtype=torch.long)                 # (B, L)
    is_output = torch.zeros((B, L), dtype=torch.bool)                   # (B, L) True on output tokens
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        full[i, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        is_output[i, len(p): len(p) + len(o)] = True
    # Position t predicts token t+1, so the mask is shifted with the labels.
    return {"input_ids": full[:, :-1], "labels": full[:, 1:], "response_mask": is_output[:, 1:]}
    # END SOLUTION


def collate_chat(conversations: list[list[dict[str, str]]], tokenizer, max_length: int | None = None
                 ) -> dict[str, Tensor]:
    """Pad chat conversations into next-token SFT tensors, supervising what `tokenizer.render` masks.

    Each conversation is rendered with the chat template; the label at position t is token t+1 and
    response_mask[t] is the assistant mask of token t+1: True on assistant content and on the <|end|>
    closing each assistant turn. Rows are right-padded with `tokenizer.pad_token_id` (mask False).

    Args:
        conversations: B message lists (see `Tokenizer.render`).
        tokenizer: a `cs336_alignment.lm.tokenizer.Tokenizer` (needs `render` and `pad_token_id`).
        max_length: if given, keep at most max_length + 1 tokens per conversation (its end is cut).
    Returns:
        {"input_ids": (B, T) long, "labels": (B, T) long, "response_mask": (B, T) bool}, T = longest - 1.
    Raises:
        DataError: when a conversation has no assistant token left to train on.
    """
    rendered = [tokenizer.render(c) for c in conversations]
    if max_length is not None:
        rendered = [(ids[: max_length + 1], mask[: max_length + 1]) for ids, mask in rendered]
    T = max(len(ids) for ids, _ in rendered) - 1
    input_ids = torch.full((len(rendered), T), tokenizer.pad_token_id, dtype=torch.long)    # (B, T)
    labels = input_ids.clone()                                                              # (B, T)
    response_mask = torch.zeros((len(rendered), T), dtype=torch.bool)                      # (B, T)
    for row, (ids, mask) in enumerate(rendered):
        n = len(ids) - 1
        input_ids[row, :n] = torch.tensor(ids[:-1])
        labels[row, :n] = torch.tensor(ids[1:])
        response_mask[row, :n] = torch.tensor(mask[1:], dtype=torch.bool)
        if not response_mask[row].any():
            raise DataError(f"conversations[{row}] has no assistant token to train on")
    return {"input_ids": input_ids, "labels": labels, "response_mask": response_mask}


def pad_sequences(sequences: list[list[int]], pad_value: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Pad token lists to one tensor. Returns ids (B, L) long and attention_mask (B, L) bool (True = token).

    side="left" puts the padding first (batched generation: every prompt then ends at the last column).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    L = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), L), pad_value, dtype=torch.long)     # (B, L)
    attention_mask = torch.zeros((len(sequences), L), dtype=torch.bool)   # (B, L)
    for row, seq in enumerate(sequences):
        cols = slice(L - len(seq), L) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, cols] = True
    return ids, attention_mask


# ----------------------------------------------------------------------------
# Packed SFT dataset and batches

class TensorDictDataset(Dataset):
    """A map-style dataset over equally long tensors: item i is {name: tensor[i]}."""

    def __init__(self, **tensors: Tensor):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) > 1:
            raise ValueError(f"tensors differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values()), []))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {name: t[i] for name, t in self.tensors.items()}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices 0..n-1 sorted by length and cut into batches of at most batch_size, so that a padded batch holds
    sequences of similar length (little padding). Every index appears once; scatter the results back by index."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def get_packed_sft_dataset(tokenizer, dataset_path: str | os.PathLike, seq_length: int, shuffle: bool) -> Dataset:
    """Pack SFT examples into fixed-length language-modelling windows (CS336 assignment 5).

    Every example of `load_sft_examples(dataset_path)` is rendered with the chat template
    (`tokenizer.render(messages)`), followed by the EOS id, and all are concatenated (in file order, or in a
    `torch.randperm` order when shuffle). The token stream is cut into N = (n_tokens - 1) // seq_length
    windows of seq_length + 1 tokens with stride seq_length (consecutive windows share one token); the
    trailing tokens that do not fill a window are dropped. Item i is input_ids = window[:-1], labels =
    window[1:]. Every token is a target: packed SFT trains on prompts as well as responses.

    Args:
        tokenizer: a `cs336_alignment.lm.tokenizer.Tokenizer`.
        dataset_path: jsonl in any schema `load_sft_examples` accepts.
        seq_length: tokens per item (>= 1).
        shuffle: shuffle the documents before packing (uses torch's global RNG).
    Returns:
        a Dataset of N items {"input_ids": (seq_length,) long, "labels": (seq_length,) long}.
    Raises:
        ValueError: on seq_length < 1. DataError: on a bad record (see `load_sft_examples`).
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    # BEGIN SOLUTION
    examples = load_sft_examples(dataset_path)
    order = torch.randperm(len(examples)).tolist() if shuffle else range(len(examples))
    stream: list[int] = []
    for i in order:
        stream += tokenizer.render(examples[i]["messages"])[0] + [tokenizer.eos_token_id]
    tokens = torch.tensor(stream, dtype=torch.long)                              # (n_tokens,)
    n_windows = (len(tokens) - 1) // seq_length
    starts = torch.arange(n_windows) * seq_length                                # (N,)
    windows = tokens[starts[:, None] + torch.arange(seq_length + 1)]             # (N, seq_length + 1)
    return TensorDictDataset(input_ids=windows[:, :-1], labels=windows[:, 1:])
    # END SOLUTION


def iterate_batches(dataset: Dataset, batch_size: int, shuffle: bool):
    """Batches over a map-style dataset with torch DataLoader semantics (CS336 assignment 5).

    Every item appears once per pass; the last batch may be smaller (no drop_last), so there are
    ceil(len(dataset) / batch_size) batches. Items that are dicts of tensors become dicts of stacked tensors.

    Args:
        dataset: supports len() and integer indexing.
        batch_size: items per batch (>= 1).
        shuffle: a new random order every pass (torch's global RNG), else dataset order.
    Returns:
        an iterable with len() (a DataLoader) yielding e.g. {"input_ids": (b, T), "labels": (b, T)}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # BEGIN SOLUTION
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False)
    # END SOLUTION


def get_batch(dataset: np.ndarray, batch_size: int, context_length: int, device: str | torch.device
              ) -> tuple[Tensor, Tensor]:
    """Random language-modelling windows from one long token array (CS336 assignment 1).

    Starts are uniform over 0 .. len(dataset) - context_length - 1 (numpy's global RNG), so every window
    and its one-token-shifted target fit. Works on np.memmap (only the windows are read).

    Args:
        dataset: (n_tokens,) integer token ids.
        batch_size: B windows.
        context_length: T tokens per window.
        device: where to put the tensors, e.g. "cpu" or "cuda:0".
    Returns:
        x (B, T) long and y (B, T) long with y[:, t] = x[:, t+1] in the stream, on `device`.
    Raises:
        ValueError: when the dataset has no more than context_length tokens.
    """
    if len(dataset) <= context_length:
        raise ValueError(f"dataset of {len(dataset)} tokens is too short for context_length {context_length}")
    starts = np.random.randint(0, len(dataset) - context_length, size=batch_size)  # (B,)
    window = starts[:, None] + np.arange(context_length + 1)                         # (B, T + 1)
    chunk = torch.from_numpy(np.asarray(dataset[window], dtype=np.int64))           # (B, T + 1)
    return chunk[:, :-1].to(device), chunk[:, 1:].to(device)
