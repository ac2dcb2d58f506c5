"""Rollouts: the sampled tokens, their log-probs and the padded training tensors line up exactly."""
from __future__ import annotations

import pytest
import torch

from cs336_alignment.lm.data import tokenize_prompt_and_output
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.lm.generation import generate
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.rollout import build_training_tensors, generate_per_row, sample_rollouts
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.lm.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=160, d_model=32, num_layers=2,
                               num_heads=2, d_ff=64)
    return TransformerLM(config).eval()


@pytest.fixture(scope="module")
def questions():
    return [p["question"] for p in generate_problems(3, "train", seed=5)]


# ---------------------------------------------------------------------------------------------------------
# build_training_tensors
# ---------------------------------------------------------------------------------------------------------

def test_build_training_tensors_hand_example():
    out = build_training_tensors([[1, 2, 3], [7]], [[4, 5], [8, 9, 10]], pad_token_id=0)
    # full rows: [1 2 3 4 5] and [7 8 9 10 0]
    assert out["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 10]]
    assert out["labels"].tolist() == [[2, 3, 4, 5], [8, 9, 10, 0]]
    assert out["response_mask"].tolist() == [[False, False, True, True], [True, True, True, False]]
    assert out["response_mask"].dtype == torch.bool and out["input_ids"].dtype == torch.long


def test_build_training_tensors_matches_tokenize_prompt_and_output(tokenizer):
    prompts, outputs = ["Tom has 5 apples.", "Hi"], ["5 + 1 = 6\n#### 6", "#### 12"]
    expected = tokenize_prompt_and_output(prompts, outputs, tokenizer)
    got = build_training_tensors([tokenizer.encode(p) for p in prompts], [tokenizer.encode(o) for o in outputs],
                                 tokenizer.pad_token_id)
    for key in ("input_ids", "labels", "response_mask"):
        assert torch.equal(got[key], expected[key]), key


def test_build_training_tensors_rejects_empty():
    with pytest.raises(ValueError):
        build_training_tensors([[1, 2]], [[]], pad_token_id=0)
    with pytest.raises(ValueError):
        build_training_tensors([[1]], [[2], [3]], pad_token_id=0)


# ---------------------------------------------------------------------------------------------------------
# sample_rollouts
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rollouts(tiny_lm, tokenizer, questions):
    # Stop on any of the 256 byte tokens: with a random model about half the tokens, so rows end at
    # different lengths and both the padding and the stop-token paths are exercised.
    generator = torch.Generator().manual_seed(0)
    return sample_rollouts(tiny_lm, tokenizer, questions, group_size=4, temperature=0.7, max_new_tokens=6,
                           generator=generator, stop_token_ids=list(range(256)))


def test_group_layout_is_contiguous(rollouts, tokenizer, questions):
    G = 4
    assert len(rollouts) == len(questions) * G and rollouts.group_size == G
    for i in range(len(rollouts)):
        assert rollouts.prompt_ids[i] == tokenizer.prompt_ids(questions[i // G])


def test_padded_tensors_hold_exactly_the_sampled_tokens(rollouts):
    lengths = {len(r) for r in rollouts.response_ids}
    assert len(lengths) > 1, "expected responses of different lengths (padding path)"
    for i, (prompt, response) in enumerate(zip(rollouts.prompt_ids, rollouts.response_ids)):
        mask = rollouts.response_mask[i]
        assert rollouts.labels[i][mask].tolist() == response
        n = len(prompt) + len(response) - 1                      # real positions of row i
        assert rollouts.input_ids[i, :n].tolist() == (prompt + response)[:-1]
        assert mask.nonzero().squeeze(-1).tolist() == list(range(len(prompt) - 1, n))
        ids, attention = rollouts.sequences()
        assert ids[i][attention[i]].tolist() == prompt + response


def test_sampler_log_probs_match_recomputation(rollouts, tiny_lm):
    recomputed = get_response_log_probs(tiny_lm, rollouts.input_ids, rollouts.labels,
                                        temperature=0.7)["log_probs"]       # (N, T)
    mask = rollouts.response_mask
    torch.testing.assert_close(recomputed[mask], torch.cat(rollouts.sampler_log_probs), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rollouts.sampler_log_probs_padded()[mask], recomputed[mask], atol=2e-5, rtol=1e-5)


def test_texts_and_finished_flags(rollouts, tokenizer):
    stops = set(range(256))
    for response, text, finished in zip(rollouts.response_ids, rollouts.response_texts, rollouts.finished.tolist()):
        assert finished == (response[-1] in stops)
        assert text == tokenizer.decode(response[:-1] if finished else response)
        assert finished or len(response) == 6


def test_same_generator_seed_same_rollouts(tiny_lm, tokenizer, questions, rollouts):
    again = sample_rollouts(tiny_lm, tokenizer, questions, group_size=4, temperature=0.7, max_new_tokens=6,
                            generator=torch.Generator().manual_seed(0), stop_token_ids=list(range(256)))
    assert again.response_ids == rollouts.response_ids


def test_batched_generation_gives_the_same_rows(tiny_lm, tokenizer, questions):
    kwargs = dict(group_size=2, temperature=0.0, max_new_tokens=5)  # greedy: independent of the batching
    whole = sample_rollouts(tiny_lm, tokenizer, questions, **kwargs)
    chunked = sample_rollouts(tiny_lm, tokenizer, questions, batch_size=4, **kwargs)
    assert whole.response_ids == chunked.response_ids
    assert all(whole.response_ids[2 * g] == whole.response_ids[2 * g + 1] for g in range(len(questions)))


def test_a_long_prompt_does_not_shorten_the_other_responses(tiny_lm, tokenizer):
    short, long = tokenizer.prompt_ids("Hi"), [5] * 155                # the long one leaves 5 positions
    ro = sample_rollouts(tiny_lm, tokenizer, [short, long], group_size=2, max_new_tokens=10, stop_token_ids=[],
                         generator=torch.Generator().manual_seed(0))
    assert [len(r) for r in ro.response_ids] == [10, 10, 5, 5]
    assert ro.prompt_ids == [short, short, long, long]
    recomputed = get_response_log_probs(tiny_lm, ro.input_ids, ro.labels)["log_probs"][ro.response_mask]
    torch.testing.assert_close(recomputed, torch.cat(ro.sampler_log_probs), atol=2e-5, rtol=1e-5)


def test_generate_per_row_is_generate_in_chunks_with_a_limit_per_row(tiny_lm, tokenizer, questions):
    prompts = [tokenizer.prompt_ids(q) for q in questions for _ in range(2)]
    prompts[5] = [5] * 157                                              # leaves 3 positions
    kwargs = dict(temperature=1.0, pad_token_id=tokenizer.pad_token_id)
    out = generate_per_row(tiny_lm, prompts, max_new_tokens=6, batch_size=4,
                           generator=torch.Generator().manual_seed(3), **kwargs)
    limits = [6] * len(prompts)
    limits[5] = 3
    generator = torch.Generator().manual_seed(3)
    chunks = [generate(tiny_lm, prompts[i:i + 4], max_new_tokens=limits[i:i + 4], generator=generator, **kwargs)
              for i in range(0, len(prompts), 4)]
    assert len(out.tokens[5]) == 3
    assert out.tokens == [t for c in chunks for t in c.tokens]
    for got, expected in zip(out.logprobs, [lp for c in chunks for lp in c.logprobs]):
        assert torch.equal(got, expected)


def test_sample_rollouts_argument_errors(tiny_lm, tokenizer):
    with pytest.raises(ValueError):
        sample_rollouts(tiny_lm, tokenizer, [], group_size=2)
    with pytest.raises(ValueError):
        sample_rollouts(tiny_lm, tokenizer, ["hi"], group_size=0)
    with pytest.raises(ValueError):
        sample_rollouts(tiny_lm, tokenizer, [[1] * 160], group_size=1)  # fills the whole context
