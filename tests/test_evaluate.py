"""Batched generation for evaluation and preference sampling: each row gets the room its own prompt leaves.

Oracles: each question generated alone (greedy is independent of the batching), and, for prompts that all
fit, the plain `generation.generate` calls on consecutive batches that these functions made before rows got
their own limits (the same samples from the same generator).
"""
from __future__ import annotations

import math

import pytest
import torch

from cs336_alignment.lm.generation import generate
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.rollout import generate_responses, sample_responses
from cs336_alignment.lm.tokenizer import build_prompt, stop_token_ids
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.lm.tokenizer import load_tokenizer

MAX_NEW = 12


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def questions():
    return [p["question"] for p in generate_problems(3, "train", seed=5)]  # prompts of 41, 28, 28 tokens


@pytest.fixture(scope="module")
def long_question(questions):
    return " ".join(questions)  # a prompt of 89 tokens


def tiny_lm(tokenizer, context_length: int) -> TransformerLM:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=context_length, d_model=32,
                               num_layers=2, num_heads=2, d_ff=64)
    return TransformerLM(config).eval()


def old_batches(model, tokenizer, questions, k, max_new_tokens, batch_size, temperature, generator):
    """What the functions did before: one `generate` per batch, its limit set by the batch's longest prompt."""
    stops = stop_token_ids(tokenizer, "chat")
    flat = [build_prompt(q, tokenizer, "chat") for q in questions for _ in range(k)]
    tokens = []
    for i in range(0, len(flat), batch_size):
        prompts = flat[i:i + batch_size]
        room = model.config.context_length - max(len(p) for p in prompts)
        tokens += generate(model, prompts, max_new_tokens=min(max_new_tokens, room), temperature=temperature,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, generator=generator).tokens
    return tokens


def test_generate_responses_equals_each_question_alone(tokenizer, questions):
    model = tiny_lm(tokenizer, 96)
    batched = generate_responses(model, tokenizer, questions, fmt="chat", max_new_tokens=MAX_NEW, batch_size=2)
    alone = [generate_responses(model, tokenizer, [q], fmt="chat", max_new_tokens=MAX_NEW)[0] for q in questions]
    assert batched == alone


def test_a_long_prompt_does_not_truncate_the_other_responses(tokenizer, questions, long_question):
    long_len = len(tokenizer.prompt_ids(long_question))
    model = tiny_lm(tokenizer, long_len + 4)                    # the long prompt leaves room for 4 tokens
    batch = [questions[1], long_question, questions[2]]
    batched = generate_responses(model, tokenizer, batch, fmt="chat", max_new_tokens=MAX_NEW)
    alone = [generate_responses(model, tokenizer, [q], fmt="chat", max_new_tokens=MAX_NEW)[0] for q in batch]
    assert batched == alone
    # The old per-batch limit (4 tokens for every row) cut the short prompts' responses.
    stops = stop_token_ids(tokenizer, "chat")
    old = [tokenizer.decode(t[:-1] if t and t[-1] in stops else t)
           for t in old_batches(model, tokenizer, batch, 1, MAX_NEW, 64, 0.0, None)]
    assert old[1] == batched[1] and (old[0], old[2]) != (batched[0], batched[2])


def test_generate_responses_rejects_a_prompt_that_fills_the_context(tokenizer, questions, long_question):
    model = tiny_lm(tokenizer, len(tokenizer.prompt_ids(long_question)))
    with pytest.raises(ValueError):
        generate_responses(model, tokenizer, [questions[0], long_question], fmt="chat")


def test_sample_responses_unchanged_when_every_prompt_fits(tokenizer, questions):
    model = tiny_lm(tokenizer, 96)
    samples = sample_responses(model, tokenizer, questions, 3, max_new_tokens=MAX_NEW, seed=7, batch_size=4)
    expected = old_batches(model, tokenizer, questions, 3, MAX_NEW, 4, 1.0, torch.Generator().manual_seed(7))
    assert [s["tokens"] for pool in samples for s in pool] == expected
    assert [len(pool) for pool in samples] == [3, 3, 3]


def test_sample_responses_give_each_row_its_own_room(tokenizer, questions, long_question):
    long_len = len(tokenizer.prompt_ids(long_question))
    model = tiny_lm(tokenizer, long_len + 4)
    samples = sample_responses(model, tokenizer, [questions[1], long_question], 2, max_new_tokens=MAX_NEW,
                               temperature=0.0, batch_size=4)
    stops = stop_token_ids(tokenizer, "chat")
    for question, pool in zip([questions[1], long_question], samples):
        alone = generate(model, [build_prompt(question, tokenizer, "chat")], temperature=0.0, eos_token_id=stops,
                         max_new_tokens=min(MAX_NEW, model.config.context_length - len(tokenizer.prompt_ids(question))),
                         pad_token_id=tokenizer.pad_token_id).tokens[0]
        assert [s["tokens"] for s in pool] == [alone, alone]
    assert len(samples[1][0]["tokens"]) <= 4 < len(samples[0][0]["tokens"])


# ---------------------------------------------------------------------------------------------------------
# log_generations (CS336 a5): summary metrics and records, against a hand-computed example
# ---------------------------------------------------------------------------------------------------------


def test_log_generations_hand_example():
    from cs336_alignment.evaluation.evaluate import log_generations
    from cs336_alignment.world.verifier import gold_reward

    truths = ["3 + 4 = 7\n#### 7", "#### 12", "#### 5"]
    responses = ["3 + 4 = 7\n#### 7",   # worked, correct
                 "#### 12",             # hasty, correct
                 "2 * 3 = 6\n#### 6"]   # worked, formatted, wrong
    prompts = ["q1", "q2", "q3"]
    rewards = [gold_reward(r, t) for r, t in zip(responses, truths)]
    rewards.append({"reward": 0.0, "format_reward": 0.0, "answer_reward": 0.0})  # a 4th: unformatted, hasty
    responses, truths, prompts = responses + ["seven"], truths + ["#### 7"], prompts + ["q4"]
    summary, records = log_generations(prompts, responses, truths, rewards, token_entropy=[1.0, None, 2.0, 0.5],
                                       lengths=[10, 4, 12, 2])
    assert summary["reward/gold_mean"] == summary["reward/answer_mean"] == 2 / 4
    assert summary["reward/format_mean"] == 3 / 4
    assert summary["policy/entropy"] == pytest.approx((1.0 + 2.0 + 0.5) / 3)  # the three measured ones
    assert summary["response/length_mean"] == (10 + 4 + 12 + 2) / 4
    assert summary["response/length_correct_mean"] == (10 + 4) / 2
    assert summary["response/length_incorrect_mean"] == (12 + 2) / 2
    assert summary["response/worked_share"] == 2 / 4
    assert len(records) == 4
    assert records[2] == {"prompt": "q3", "response": "2 * 3 = 6\n#### 6", "ground_truth": "#### 5", "reward": 0.0,
                          "format_reward": 1.0, "answer_reward": 0.0, "entropy": 2.0, "length": 12, "worked": True}
    assert records[1]["entropy"] is None and records[1]["worked"] is False

    # without entropies, lengths in characters, and only the first record
    summary, records = log_generations(prompts[:2], responses[:2], truths[:2], rewards[:2], n_records=1)
    assert "policy/entropy" not in summary and len(records) == 1
    assert summary["response/length_mean"] == (len(responses[0]) + len(responses[1])) / 2
    assert math.isnan(summary["response/length_incorrect_mean"])  # no incorrect response
    with pytest.raises(ValueError, match="3 rewards"):
        log_generations(prompts[:2], responses[:2], truths[:2], rewards[:3])


def test_evaluate_policy_gold_within_each_style_hand_example(monkeypatch, tokenizer):
    """Four fixed samples (the sampler is replaced): worked right, worked wrong, hasty right, hasty wrong, hasty
    right. Within the worked style 1 of 2 is right, within the hasty one 2 of 3; with only hasty samples the
    worked key is absent."""
    from cs336_alignment.evaluation import evaluate
    texts = ["3 + 4 = 7\n#### 7", "3 + 4 = 8\n#### 8", "#### 7", "#### 9", "#### 7"]

    def fake_sample(policy, tok, questions, k, **kwargs):
        return [[{"text": t, "tokens": [1, 2], "n_tokens": 2, "truncated": False} for t in texts[:k]]
                for _ in questions]

    monkeypatch.setattr(evaluate, "sample_responses", fake_sample)
    problem = {"question": "q", "answer": "3 + 4 = 7\n#### 7"}
    m = evaluate.evaluate_policy(None, tokenizer, [problem], samples_per_prompt=5, greedy=False)
    assert m["reward/gold_mean"] == pytest.approx(3 / 5) and m["response/worked_share"] == pytest.approx(2 / 5)
    assert m["reward/gold_mean_worked"] == pytest.approx(1 / 2)
    assert m["reward/gold_mean_hasty"] == pytest.approx(2 / 3)
    assert m["response/prose_lines_mean"] == 0.0
    texts[:] = ["So it is 7.\n#### 7", "3 + 4 = 7\nSo it is 7.\nSeven.\n#### 7"]
    m = evaluate.evaluate_policy(None, tokenizer, [problem], samples_per_prompt=2, greedy=False)
    assert m["response/prose_lines_mean"] == pytest.approx((1 + 2) / 2)
    texts[:] = ["#### 7", "#### 9"]
    m = evaluate.evaluate_policy(None, tokenizer, [problem], samples_per_prompt=2, greedy=False)
    assert "reward/gold_mean_worked" not in m and m["reward/gold_mean_hasty"] == 0.5
