"""Batched generation with a KV cache, checked against a plain decoding loop over one unpadded prompt at a time.

Oracles: greedy decoding by argmax of model(full sequence) in a python loop; log_softmax(model(full)/T) at the
sampled tokens; the empirical distribution of many samples vs softmax(logits/T); support of top-k/top-p.
"""
from __future__ import annotations

import pytest
import torch

from cs336_alignment.lm.generation import generate, sample_next_token
from cs336_alignment.lm.model import TransformerConfig, TransformerLM

V = 23
PROMPTS = [[3, 5, 7], [1, 2, 3, 4, 5, 6, 8], [9]]


def tiny_lm(seed: int = 0, use_sdpa: bool = True) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig(vocab_size=V, context_length=24, d_model=16, num_layers=2, num_heads=2,
                                           d_ff=32, use_sdpa=use_sdpa))


@torch.no_grad()
def greedy_oracle(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@torch.no_grad()
def full_sequence_logprobs(model, prompt: list[int], new: list[int], temperature: float) -> torch.Tensor:
    logits = model(torch.tensor([prompt + new]))[0, len(prompt) - 1:-1]  # (n, V): predicts each new token
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(new)[:, None]).squeeze(-1)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_greedy_with_and_without_cache_equals_the_plain_loop(use_sdpa):
    model = tiny_lm(use_sdpa=use_sdpa)
    cached = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0)
    uncached = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, use_kv_cache=False)
    for i, prompt in enumerate(PROMPTS):
        expected = greedy_oracle(model, prompt, 10)
        assert cached.tokens[i] == expected and uncached.tokens[i] == expected
        torch.testing.assert_close(cached.logprobs[i], uncached.logprobs[i], atol=1e-5, rtol=1e-5)
        # temperature 0 reports the temperature-1 log-probabilities
        torch.testing.assert_close(cached.logprobs[i], full_sequence_logprobs(model, prompt, expected, 1.0),
                                   atol=1e-5, rtol=1e-5)


def test_sampled_logprobs_equal_recomputed_logprobs_at_temperature():
    model = tiny_lm()
    out = generate(model, PROMPTS, max_new_tokens=8, temperature=0.7, generator=torch.Generator().manual_seed(1))
    for i, prompt in enumerate(PROMPTS):
        assert len(out.tokens[i]) == 8 and out.logprobs[i].dtype == torch.float32
        torch.testing.assert_close(out.logprobs[i], full_sequence_logprobs(model, prompt, out.tokens[i], 0.7),
                                   atol=1e-5, rtol=1e-5)


def test_logprobs_are_before_top_k_truncation():
    model = tiny_lm()
    out = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, top_k=3, top_p=0.9,
                   generator=torch.Generator().manual_seed(2))
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(out.logprobs[i], full_sequence_logprobs(model, prompt, out.tokens[i], 1.0),
                                   atol=1e-5, rtol=1e-5)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    model = tiny_lm()
    greedy = generate(model, PROMPTS, max_new_tokens=8, temperature=0.0).tokens
    g = torch.Generator().manual_seed(3)
    assert generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, generator=g).tokens == greedy
    assert generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-6, generator=g).tokens == greedy


def test_eos_stops_a_row_and_is_kept():
    model = tiny_lm()
    greedy = generate(model, PROMPTS, max_new_tokens=8, temperature=0.0).tokens
    eos = greedy[0][2]  # row 0 emits this token third
    out = generate(model, PROMPTS, max_new_tokens=8, temperature=0.0, eos_token_id=[eos, V + 5])
    for row, full in zip(out.tokens, greedy):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert row == full[:cut]  # stops right after its first EOS, others are untouched
    assert len(out.tokens[0]) <= 3 and out.tokens[0][-1] == eos
    assert [len(lp) for lp in out.logprobs] == [len(t) for t in out.tokens]
    # all rows stop -> the loop ends early; an int eos id works too
    one = generate(model, [PROMPTS[0]], max_new_tokens=8, temperature=0.0, eos_token_id=greedy[0][0])
    assert one.tokens == [greedy[0][:1]]


def test_a_limit_per_row_and_finished_rows_leaving_the_batch():
    """Rows with their own limits, most stopping early (so the batch shrinks): greedy rows equal the plain loop
    cut at their EOS or limit, and sampled logprobs equal the recomputed ones."""
    model = tiny_lm()
    prompts = [[1 + i % 7] * (1 + i % 5) for i in range(12)]
    limits = [0, 3, 9, 1, 12, 5, 2, 8, 4, 6, 11, 7]
    greedy = [greedy_oracle(model, p, n) for p, n in zip(prompts, limits)]
    eos = greedy[4][5]  # some rows stop at it
    out = generate(model, prompts, max_new_tokens=limits, temperature=0.0, eos_token_id=eos)
    for row, full in zip(out.tokens, greedy):
        assert row == (full[:full.index(eos) + 1] if eos in full else full)
    assert len(out.tokens[0]) == 0 and len(out.tokens[4]) <= 6
    assert generate(model, prompts, max_new_tokens=limits, temperature=0.0, eos_token_id=eos,
                    drop_finished=False).tokens == out.tokens
    sampled = generate(model, prompts, max_new_tokens=limits, temperature=0.9, eos_token_id=eos,
                       generator=torch.Generator().manual_seed(4))
    for prompt, row, logprobs, n in zip(prompts, sampled.tokens, sampled.logprobs, limits):
        assert len(row) <= n and (len(row) == n or row[-1] == eos)
        if row:
            torch.testing.assert_close(logprobs, full_sequence_logprobs(model, prompt, row, 0.9),
                                       atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        generate(model, prompts, max_new_tokens=limits[:-1])


def test_a_finished_row_still_in_the_batch_stays_within_the_context():
    """One long prompt with a short limit among seven that run to the end of the context: the finished row is
    carried along (too few rows finished to shrink the batch) and its padding must not count as tokens."""
    model = tiny_lm()  # context_length 24
    prompts = [[2] * 20] + [[1 + i, 3] for i in range(7)]
    limits = [4] + [22] * 7
    out = generate(model, prompts, max_new_tokens=limits, temperature=0.0)
    assert out.tokens == [greedy_oracle(model, p, n) for p, n in zip(prompts, limits)]


def test_same_generator_seed_gives_same_samples():
    model = tiny_lm()
    run = lambda seed: generate(model, PROMPTS, max_new_tokens=10, temperature=1.0,
                                generator=torch.Generator().manual_seed(seed)).tokens
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_restores_training_mode_and_checks_context_length():
    model = tiny_lm()
    model.train()
    generate(model, PROMPTS, max_new_tokens=2, temperature=0.0)
    assert model.training
    with pytest.raises(ValueError):
        generate(model, PROMPTS, max_new_tokens=24 - 7 + 1)  # longest prompt 7 + 18 new > 24
    with pytest.raises(ValueError):
        generate(model, [[1], []], max_new_tokens=2)
    assert generate(model, PROMPTS, max_new_tokens=0).tokens == [[], [], []]


# ---------------------------------------------------------------------------------------------------------
# sample_next_token
# ---------------------------------------------------------------------------------------------------------


def test_sampling_frequencies_match_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 20000
    samples = sample_next_token(logits.expand(n, -1), temperature=0.8, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(samples, minlength=5).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits / 0.8, -1), atol=0.015, rtol=0)


def test_top_k_and_top_p_support():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]]).expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 4}
    # probabilities sorted: 0.636 (id 4), 0.234 (id 0), 0.086 (id 1), ... -> top_p 0.8 keeps {4, 0}, 0.9 adds 1
    assert set(sample_next_token(logits, top_p=0.8, generator=g).tolist()) == {0, 4}
    assert set(sample_next_token(logits, top_p=0.9, generator=g).tolist()) == {0, 1, 4}
    # renormalised within the nucleus: P(4 | {4, 0}) = e^3 / (e^3 + e^2)
    frac = (sample_next_token(logits, top_p=0.8, generator=g) == 4).float().mean().item()
    assert abs(frac - 1 / (1 + torch.e ** -1)) < 0.03
