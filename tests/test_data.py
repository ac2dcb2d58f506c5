"""SFT data: prompt/response tokenization, packing and batching (graded); loading, collation, get_batch.

Oracles: tensors written out by hand for a character tokenizer, the prompt/response seam (the mask counts
exactly the output's tokens), a packed stream rebuilt with a python loop, and errors that must name
file, line and field.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cs336_alignment.lm.data import (DataError, collate_chat, get_batch, load_jsonl, load_sft_examples,
                                  pad_sequences, write_jsonl)
from cs336_alignment.world.tasks import generate_problems, sft_examples
from cs336_alignment.lm.tokenizer import load_tokenizer
from tests.adapters import get_packed_sft_dataset, run_iterate_batches, run_tokenize_prompt_and_output

PART = "1.2 SFT data"


class CharTokenizer:
    """One token per character (id = code point), pad id 0: every tensor can be written by hand."""
    pad_token_id, eos_token_id = 0, 1

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------
# tokenize_prompt_and_output (graded)

@pytest.mark.points(2)
def test_tokenize_prompt_and_output_by_hand(numpy_snapshot):
    out = run_tokenize_prompt_and_output(prompt_strs=["ab", "c"], output_strs=["x", "yz"],
                                         tokenizer=CharTokenizer())
    a, b, c, x, y, z = map(ord, "abcxyz")
    # full = [[a, b, x], [c, y, z]]; no padding needed.
    assert set(out) == {"input_ids", "labels", "response_mask"}
    assert out["input_ids"].tolist() == [[a, b], [c, y]]
    assert out["labels"].tolist() == [[b, x], [y, z]]
    assert out["response_mask"].tolist() == [[False, True], [True, True]]

    out = run_tokenize_prompt_and_output(prompt_strs=["abc", "a"], output_strs=["xy", "z"],
                                         tokenizer=CharTokenizer())
    # full = [[a, b, c, x, y], [a, z, pad, pad, pad]]
    assert out["input_ids"].tolist() == [[a, b, c, x], [a, z, 0, 0]]
    assert out["labels"].tolist() == [[b, c, x, y], [z, 0, 0, 0]]
    assert out["response_mask"].tolist() == [[False, False, True, True], [True, False, False, False]]
    assert out["input_ids"].dtype == torch.long and out["response_mask"].dtype == torch.bool
    numpy_snapshot.assert_match(dict(out), "test_tokenize_prompt_and_output_by_hand")


@pytest.mark.points(2)
def test_tokenize_prompt_and_output_seam(numpy_snapshot, tok):
    problems = generate_problems(16, "train", seed=11)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p["question"]}], add_generation_prompt=True)
               for p in problems]
    outputs = [p["answer"] + "<|end|>" for p in problems]
    out = run_tokenize_prompt_and_output(prompt_strs=prompts, output_strs=outputs, tokenizer=tok)
    B, T = out["input_ids"].shape
    lengths = [len(tok.encode(p)) + len(tok.encode(o)) for p, o in zip(prompts, outputs)]
    assert B == 16 and T == max(lengths) - 1
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        p_ids, o_ids = tok.encode(prompt), tok.encode(output)
        mask = out["response_mask"][i]
        assert mask.sum().item() == len(o_ids)                               # every output token, nothing else
        assert out["labels"][i][mask].tolist() == o_ids                      # ... at the right positions
        assert out["input_ids"][i, : len(p_ids)].tolist() == p_ids
        assert o_ids[-1] == tok.end_of_turn_id and mask[len(p_ids) + len(o_ids) - 2]   # <|end|> is a target
        assert (out["labels"][i, len(p_ids) + len(o_ids) - 1:] == tok.pad_token_id).all()
    # Same ids as the chat template: the seam does not change tokenization.
    ids, assistant_mask = tok.render([{"role": "user", "content": problems[0]["question"]},
                                      {"role": "assistant", "content": problems[0]["answer"]}])
    n = len(ids) - 1
    assert out["input_ids"][0, :n].tolist() == ids[:-1] and out["response_mask"][0, :n].tolist() == assistant_mask[1:]
    numpy_snapshot.assert_match(dict(out), "test_tokenize_prompt_and_output_seam")


def test_tokenize_prompt_and_output_rejects_empty():
    with pytest.raises(DataError, match=r"output_strs\[1\]"):
        run_tokenize_prompt_and_output(prompt_strs=["a", "b"], output_strs=["x", ""], tokenizer=CharTokenizer())
    with pytest.raises(DataError, match=r"prompt_strs\[0\]"):
        run_tokenize_prompt_and_output(prompt_strs=[""], output_strs=["x"], tokenizer=CharTokenizer())
    with pytest.raises(ValueError):
        run_tokenize_prompt_and_output(prompt_strs=["a"], output_strs=["x", "y"], tokenizer=CharTokenizer())


# ----------------------------------------------------------------------------
# Packed SFT dataset and batches (graded)

@pytest.mark.points(2)
def test_packed_sft_dataset_matches_python_loop(numpy_snapshot, tmp_path, tok):
    problems = generate_problems(7, "train", seed=2)
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, problems)
    seq_length = 16
    dataset = get_packed_sft_dataset(tokenizer=tok, dataset_path=path, seq_length=seq_length, shuffle=False)

    stream = []
    for p in problems:
        stream += ([tok.special_tokens["<|user|>"]] + tok.encode(p["question"]) + [tok.end_of_turn_id]
                   + [tok.special_tokens["<|assistant|>"]] + tok.encode(p["answer"]) + [tok.end_of_turn_id]
                   + [tok.eos_token_id])
    n = (len(stream) - 1) // seq_length
    assert len(dataset) == n
    for i in range(n):
        item = dataset[i]
        assert item["input_ids"].tolist() == stream[i * seq_length: (i + 1) * seq_length]
        assert item["labels"].tolist() == stream[i * seq_length + 1: (i + 1) * seq_length + 1]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (seq_length,)
    numpy_snapshot.assert_match({key: torch.stack([dataset[i][key] for i in range(n)])
                                 for key in ("input_ids", "labels")},
                                "test_packed_sft_dataset_matches_python_loop")


@pytest.mark.points(1)
def test_packed_sft_dataset_shuffle_permutes_documents(numpy_snapshot, tmp_path, tok):
    conversations = sft_examples(9, seed=4)
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, [{"messages": c} for c in conversations])
    seq_length = 8
    dataset = get_packed_sft_dataset(tokenizer=tok, dataset_path=path, seq_length=seq_length, shuffle=True)
    stream = [t for i in range(len(dataset)) for t in dataset[i]["input_ids"].tolist()]
    stream.append(dataset[len(dataset) - 1]["labels"][-1].item())
    documents = {tuple(tok.render(c)[0] + [tok.eos_token_id]) for c in conversations}
    total = sum(len(d) for d in documents)
    assert len(stream) == (total - 1) // seq_length * seq_length + 1           # only the partial tail is dropped
    # Walk the stream: it must be whole documents, each used once, in some order.
    position, order = 0, []
    while position < len(stream):
        doc = next(d for d in documents - set(order)
                   if tuple(stream[position: position + len(d)]) == d[: len(stream) - position])
        order.append(doc)
        position += len(doc)
    file_order = [tuple(tok.render(c)[0] + [tok.eos_token_id]) for c in conversations]
    assert order != file_order[: len(order)]                                    # seeded: not the file order
    # The order is the implementation's own (seeded): only what any correct shuffle gives is recorded.
    numpy_snapshot.assert_match({"length": len(stream), "items": len(dataset)},
                                "test_packed_sft_dataset_shuffle_permutes_documents")


@pytest.mark.points(2)
def test_iterate_batches(numpy_snapshot, tmp_path):
    from cs336_alignment.lm.data import TensorDictDataset
    dataset = TensorDictDataset(input_ids=torch.arange(30).view(10, 3), labels=torch.arange(30).view(10, 3) + 1)
    loader = run_iterate_batches(dataset=dataset, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == math.ceil(10 / 4)
    assert [b["input_ids"].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]                # no drop_last
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), torch.arange(30).view(10, 3))
    assert torch.equal(torch.cat([b["labels"] for b in batches]), torch.arange(30).view(10, 3) + 1)

    shuffled = torch.cat([b["input_ids"] for b in run_iterate_batches(dataset=dataset, batch_size=3, shuffle=True)])
    assert sorted(shuffled[:, 0].tolist()) == list(range(0, 30, 3))                            # each item once
    assert not torch.equal(shuffled, torch.arange(30).view(10, 3))                              # seeded: not sorted
    numpy_snapshot.assert_match({"input_ids": torch.cat([b["input_ids"] for b in batches]),
                                 "labels": torch.cat([b["labels"] for b in batches]),
                                 "shuffled_sorted": shuffled[:, 0].sort().values}, "test_iterate_batches")


# ----------------------------------------------------------------------------
# Loading and validation (ungraded infrastructure)

def test_load_jsonl_errors_name_file_line_and_field(tmp_path):
    good = json.dumps({"question": "q", "answer": "a"})
    cases = [
        ([good, '{"question": "q", "answer": '], r"bad\.jsonl:2: malformed JSON"),
        ([good, "", "[1, 2]"], r"bad\.jsonl:3: expected a JSON object"),
        ([good, json.dumps({"question": "q"})], r"bad\.jsonl:2: missing field 'answer'"),
        ([json.dumps({"question": 3, "answer": "a"})], r"bad\.jsonl:1: field 'question' must be str, got int"),
    ]
    for lines, message in cases:
        path = write_lines(tmp_path / "bad.jsonl", lines)
        with pytest.raises(DataError, match=message):
            load_jsonl(path, fields={"question": str, "answer": str})
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not UTF-8"):
        load_jsonl(path)
    assert isinstance(DataError("x"), ValueError)


def test_load_sft_examples_schemas(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps({"question": "q1", "answer": "a1"}),
                                                json.dumps({"prompt": "p2", "response": "r2"}),
                                                json.dumps({"messages": chat})])
    examples = load_sft_examples(path)
    assert [(e["prompt"], e["response"]) for e in examples] == [("q1", "a1"), ("p2", "r2"), ("2+2?", "4")]
    assert examples[0]["messages"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert examples[2]["messages"] == chat


def test_load_sft_examples_empty_response_names_file_line_field(tmp_path):
    cases = [
        (json.dumps({"question": "q", "answer": ""}), r"sft\.jsonl:2: field 'answer' is empty"),
        (json.dumps({"prompt": "p", "response": "  \n"}), r"sft\.jsonl:2: field 'response' is empty"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}),
         r"sft\.jsonl:2: field 'messages\[1\]\.content' is empty"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), r"sft\.jsonl:2: field 'messages\[0\]\.role'"),
        (json.dumps({"prompt": "p", "response": 5}), r"sft\.jsonl:2: field 'response' must be str"),
        (json.dumps({"text": "p"}), r"sft\.jsonl:2: no known schema"),
    ]
    for bad, message in cases:
        path = write_lines(tmp_path / "sft.jsonl", [json.dumps({"prompt": "ok", "response": "ok"}), bad])
        with pytest.raises(DataError, match=message):
            load_sft_examples(path)


# ----------------------------------------------------------------------------
# Chat collation, padding, get_batch (ungraded)

def test_collate_chat_supervises_end_of_turn(tok):
    conversations = sft_examples(5, seed=1)
    batch = collate_chat(conversations, tok)
    for row, conversation in enumerate(conversations):
        ids, mask = tok.render(conversation)
        answer = tok.encode_ordinary(conversation[1]["content"])
        supervised = batch["labels"][row][batch["response_mask"][row]].tolist()
        assert supervised == answer + [tok.end_of_turn_id]                     # (1) <|end|> is a target
        n = len(ids) - 1
        assert batch["input_ids"][row, :n].tolist() == ids[:-1] and batch["labels"][row, :n].tolist() == ids[1:]
        assert not batch["response_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == tok.pad_token_id).all()
    with pytest.raises(DataError):
        collate_chat([[{"role": "user", "content": "no answer"}]], tok)


def test_pad_sequences():
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_value=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[True] * 3, [False, False, True]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_value=9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[True] * 3, [True, False, False]]


def test_get_batch():
    dataset = np.arange(0, 100)
    context_length, batch_size = 7, 32
    starts = []
    for _ in range(200):
        x, y = get_batch(dataset, batch_size, context_length, "cpu")
        assert x.shape == y.shape == (batch_size, context_length) and x.dtype == torch.long
        assert torch.equal(y, x + 1)                                           # targets are the next tokens
        assert torch.equal(x, x[:, :1] + torch.arange(context_length))        # contiguous windows
        starts += x[:, 0].tolist()
    # Every valid start 0..92 is drawn (6400 draws, 93 values), and nothing beyond.
    assert set(starts) == set(range(len(dataset) - context_length))
    with pytest.raises(ValueError):
        get_batch(np.arange(5), 2, 5, "cpu")


def test_length_sorted_batches_cover_every_index_once_in_length_order():
    from cs336_alignment.lm.data import length_sorted_batches
    lengths = [9, 3, 17, 5, 12, 3, 30]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(7))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert length_sorted_batches([], 4) == []
