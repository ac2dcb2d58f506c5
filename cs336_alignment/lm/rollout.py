"""Sampling from a policy: responses to prompts (evaluation, preference pairs, best-of-N) and rollouts for RL.

An RL step (REINFORCE / GRPO / PPO, and best-of-N sampling) starts the same way: repeat each prompt G times,
sample a response to every copy with the KV-cached `generation.generate`, score the responses, and compute
log-probabilities of the *sampled tokens* again with gradients. This file does the sampling and the layout:

  * `sample_rollouts(policy, tokenizer, prompts, group_size, ...)` -> `Rollouts`: prompt ids, response ids
    (exactly the sampled tokens, stop token included), response texts (stop token removed), the sampler's
    log-probs, and padded next-token tensors input_ids / labels / response_mask (B, T).
  * `generate_per_row(model, prompts, max_new_tokens=...)`: `generation.generate` where each row may use the
    room its own prompt leaves in the context.
  * `sample_and_strip(...)`: the one path from prompts to responses: `generate_per_row`, then the trailing
    stop token cut off and the rest decoded. `generate_responses` (evaluation: texts), `sample_responses`
    (k chat samples per question: preference pairs, best-of-N, the report) and `sample_rollouts` use it.
  * `build_training_tensors(prompt_ids, response_ids, pad_token_id)`: the (B, T) tensors from token ids,
    laid out by `data.tokenize_prompt_and_output` itself, but without re-tokenizing text. Decoding a
    sample and encoding it again can give different tokens, and then the trainer would compute log-probs
    of tokens the policy never sampled (the ratio pi / pi_old would no longer be 1 on-policy).
  * `sequence_widths`, `micro_batch`: rows of the (N, T) tensors cut to their longest real row (RL loops).

Layout: rollouts are in contiguous groups, rows [g*G, (g+1)*G) answer prompt g, as
`advantages.compute_group_normalized_rewards` expects (GRPO, Shao et al. 2024, §4.1.2).

Alignment: row i of the training tensors has response_mask True at positions P_i - 1 ... P_i + R_i - 2
(P_i prompt tokens, R_i response tokens): position t holds token t and predicts labels[t] = token t + 1.
`get_response_log_probs(policy, input_ids, labels)` over the mask gives back `sampler_log_probs` (the
generator's log softmax(logits / temperature); equal up to float rounding). Right padding needs no
attention mask: causal attention never lets a real token see the padding after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cs336_alignment.lm.data import tokenize_prompt_and_output
from cs336_alignment.lm.generation import GenerationOutput, generate
from cs336_alignment.lm.tokenizer import Format, build_prompt, cut_raw_response, stop_token_ids

# ---------------------------------------------------------------------------------------------------------
# Training tensors from token ids
# ---------------------------------------------------------------------------------------------------------


class _TokenIds:
    """A stand-in tokenizer for `data.tokenize_prompt_and_output` whose strings are token ids already: each
    character is one id (chr(id)), so `encode` gives back exactly the ids, and nothing is re-tokenized."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = self.eos_token_id = pad_token_id

    @staticmethod
    def as_text(ids: list[int]) -> str:
        return "".join(map(chr, ids))

    @staticmethod
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]


def build_training_tensors(prompt_ids: list[list[int]], response_ids: list[list[int]],
                           pad_token_id: int) -> dict[str, Tensor]:
    """Right-padded next-token tensors for prompt + response token lists (no tokenization involved).

    The layout of `data.tokenize_prompt_and_output`, which builds them: full_i = prompt_i + response_i, padded
    to L = max_i |full_i|; input_ids = full[:, :-1], labels = full[:, 1:], and response_mask marks the label
    positions that hold response tokens (row i has exactly len(response_ids[i]) True entries).

    Args:
        prompt_ids: B non-empty lists of token ids.
        response_ids: B non-empty lists of token ids (the sampled tokens, stop token included).
        pad_token_id: filler after each row's last token (never a label inside the mask).
    Returns:
        {"input_ids": (B, L-1) long, "labels": (B, L-1) long, "response_mask": (B, L-1) bool}.
    Raises:
        ValueError: on empty or mismatched lists, or an empty prompt or response.
    """
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError(f"need as many prompts as responses (>= 1), got {len(prompt_ids)}, {len(response_ids)}")
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if not p or not r:
            raise ValueError(f"row {i} has an empty prompt or response: every row needs a token to train on")
    return tokenize_prompt_and_output([_TokenIds.as_text(p) for p in prompt_ids],
                                      [_TokenIds.as_text(r) for r in response_ids], _TokenIds(pad_token_id))


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """N = n_prompts * group_size sampled responses, in contiguous groups (rows g*G .. g*G + G - 1 share a prompt).

    Token lists are per row; tensors are (N, T) with T = longest prompt + response - 1.
    """

    prompt_ids: list[list[int]]  # N prompts (each repeated group_size times)
    response_ids: list[list[int]]  # N sampled responses, stop token included if one was emitted
    response_texts: list[str]  # N decoded responses, the trailing stop token removed
    sampler_log_probs: list[Tensor]  # N tensors (R_i,) float32: log softmax(logits / temperature) at each sample
    input_ids: Tensor  # (N, T) long, right-padded
    labels: Tensor  # (N, T) long: input_ids shifted left by one
    response_mask: Tensor  # (N, T) bool: True where labels[i, t] is a sampled response token
    group_size: int  # G
    temperature: float  # the sampling temperature (recompute log-probs at the same one)
    finished: Tensor  # (N,) bool: the response ended with a stop token (False = cut at max_new_tokens)
    pad_token_id: int  # the filler of the padded tensors

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_lengths(self) -> Tensor:
        """(N,) long: number of response tokens per row (stop token included)."""
        return self.response_mask.sum(dim=-1)

    def sampler_log_probs_padded(self) -> Tensor:
        """(N, T) float32: the sampler's log-probs placed at the response positions of the tensors, 0 elsewhere."""
        out = torch.zeros(self.labels.shape, dtype=torch.float32)               # (N, T)
        out[self.response_mask] = torch.cat(self.sampler_log_probs)             # row-major: same order as the mask
        return out

    def sequences(self) -> tuple[Tensor, Tensor]:
        """(ids (N, T+1), attention_mask (N, T+1) bool): whole prompt + response sequences, right-padded
        (e.g. for a reward model that reads the score at the last real token)."""
        ids = torch.cat([self.input_ids[:, :1], self.labels], dim=1)           # (N, T + 1), pad_token_id after
        lengths = torch.tensor([len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)])
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]          # (N, T + 1)
        return ids, mask


@torch.no_grad()
def generate_per_row(model, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int | None = None,
                     **sampling) -> GenerationOutput:
    """`generation.generate` with a length limit per row: row i may generate up to
    min(max_new_tokens, context_length - len(prompts[i])) tokens, so one long prompt does not cut the other
    rows' responses short. The calls are `generate` on consecutive chunks of `batch_size` prompts, each row
    with its own limit.

    Args:
        model: a TransformerLM (anything `generation.generate` accepts; needs model.config.context_length).
        prompts: B non-empty lists of token ids.
        max_new_tokens: >= 0, the limit for a row whose prompt leaves enough room.
        batch_size: rows per `generate` call (None = all rows at once).
        **sampling: passed on to `generate` (temperature, top_k, top_p, eos_token_id, pad_token_id, generator).
    Returns:
        GenerationOutput with tokens[i] and logprobs[i] of prompts[i], in the order of `prompts`.
    Raises:
        ValueError: if a prompt leaves no room in the context (len(prompt) >= context_length), or from
            `generate` (empty prompt, negative max_new_tokens or temperature).
    """
    context = model.config.context_length
    if max((len(p) for p in prompts), default=0) >= context:
        raise ValueError(f"a prompt of {max(len(p) for p in prompts)} tokens leaves no room to respond in "
                         f"context_length {context}")
    limits = [min(max_new_tokens, context - len(p)) for p in prompts]
    step = batch_size or len(prompts)
    tokens: list[list[int]] = []
    logprobs: list[Tensor] = []
    for start in range(0, len(prompts), step):
        out = generate(model, prompts[start:start + step], max_new_tokens=limits[start:start + step], **sampling)
        tokens += out.tokens
        logprobs += out.logprobs
    return GenerationOutput(tokens=tokens, logprobs=logprobs)


@torch.no_grad()
def sample_and_strip(model, tokenizer, prompts: list[list[int]], stops: list[int], *, max_new_tokens: int,
                     batch_size: int | None = None, **sampling) -> list[dict[str, Any]]:
    """One response per prompt: `generate_per_row`, then the trailing stop token (if emitted) removed and decoded.

    Returns:
        [{"text": decoded response without the stop token, "tokens": the generated ids (stop token included
        when emitted), "logprobs": (len(tokens),) float32 sampler log-probs of those ids (`generate`),
        "n_tokens": len(tokens) without the stop token, "truncated": stopped by the length limit}] in the
        order of `prompts`.
    """
    out = generate_per_row(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **sampling)
    responses = []
    for tokens, logprobs in zip(out.tokens, out.logprobs):
        stopped = bool(tokens) and tokens[-1] in stops
        body = tokens[:-1] if stopped else tokens
        responses.append({"text": tokenizer.decode(body), "tokens": tokens, "logprobs": logprobs,
                          "n_tokens": len(body), "truncated": not stopped})
    return responses


@torch.no_grad()
def generate_responses(model, tokenizer, questions: list[str], *, fmt: Format, max_new_tokens: int = 64,
                       batch_size: int = 64, temperature: float = 0.0,
                       generator: torch.Generator | None = None) -> list[str]:
    """Responses (text, stop token removed) to each question, generated in batches with the KV cache.

    Args:
        questions: N question strings.  fmt: "chat" or "raw" (`tokenizer.build_prompt`); a raw response is
            also cut at a blank line or a new "Question:" (`tokenizer.cut_raw_response`).
        max_new_tokens: upper bound per response (tokens, stop token included); a question whose prompt
            leaves less room in the context gets min(max_new_tokens, context_length - prompt length)
            (`generate_per_row`), without shortening the other responses of its batch.
        batch_size: prompts generated together.
        temperature: 0 = greedy (the default for evaluation).  generator: for reproducible samples at T > 0.
    Returns:
        N strings, in the order of `questions`.
    Raises:
        ValueError: if a prompt fills the whole context (no room for a response).
    """
    prompts = [build_prompt(q, tokenizer, fmt) for q in questions]
    if not prompts:
        return []
    responses = sample_and_strip(model, tokenizer, prompts, stop_token_ids(tokenizer, fmt),
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature,
                                 generator=generator)
    return [cut_raw_response(r["text"]) if fmt == "raw" else r["text"] for r in responses]


@torch.no_grad()
def sample_responses(model, tokenizer, questions: list[str], k: int, *, max_new_tokens: int, temperature: float = 1.0,
                     seed: int = 0, batch_size: int = 128, fmt: Format = "chat") -> list[list[dict[str, Any]]]:
    """k sampled responses per question: [[{"text", "tokens", "n_tokens", "truncated"}] * k] * len(questions).

    The prompts are in format `fmt` (`tokenizer.build_prompt`: the chat template by default, or the bare
    question, "question_only"); responses end at `tokenizer.stop_token_ids(tokenizer, fmt)`.

    tokens are the generated ids (the stop token included when emitted); text and n_tokens leave the stop
    token out; truncated = stopped by the length limit (`sample_and_strip`). Each response may have up to
    max_new_tokens tokens, or fewer when its own prompt leaves less room in the context (`generate_per_row`; a
    long question does not shorten the responses to the others). The k copies of each question are
    consecutive rows, generated `batch_size` rows at a time.
    Sampling uses a torch.Generator seeded with `seed`, so the same call gives the same samples.
    Raises:
        ValueError: if a prompt fills the whole context (no room for a response).
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompts = [build_prompt(q, tokenizer, fmt) for q in questions for _ in range(k)]
    if not prompts:
        return [[] for _ in questions]
    out = sample_and_strip(model, tokenizer, prompts, stop_token_ids(tokenizer, fmt),
                           max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature,
                           generator=generator)
    return [out[j * k:(j + 1) * k] for j in range(len(questions))]


@torch.no_grad()
def sample_rollouts(policy, tokenizer, prompts: list[str] | list[list[int]], group_size: int, *,
                    temperature: float = 1.0, max_new_tokens: int = 64, generator: torch.Generator | None = None,
                    top_k: int | None = None, top_p: float | None = None, stop_token_ids: list[int] | None = None,
                    batch_size: int | None = None) -> Rollouts:
    """Sample `group_size` responses to each prompt with the KV-cached sampler and lay them out for training.

    Args:
        policy: a TransformerLM (anything `generation.generate` accepts).
        tokenizer: a `cs336_alignment.lm.tokenizer.Tokenizer` (needs prompt_ids, decode, pad/end ids).
        prompts: n questions (str; rendered with the chat template, `tokenizer.prompt_ids`) or n lists of
            prompt token ids (used as they are).
        group_size: G >= 1 responses per prompt; prompt g's responses are rows g*G .. g*G + G - 1.
        temperature: > 0 for RL (0 = greedy; the log-probs are then the temperature-1 ones).
        max_new_tokens: >= 1; lowered for a row whose prompt leaves less room in the context
            (`generate_per_row`: one long prompt does not shorten the others).
        generator: torch.Generator for reproducible samples.
        top_k, top_p: optional truncation (the stored log-probs are the untruncated ones, see `generate`).
        stop_token_ids: tokens that end a response; default <|end|> and <|endoftext|>.
        batch_size: generate at most this many rows at once (None = all N together).
    Returns:
        Rollouts with N = n * G rows.
    Raises:
        ValueError: on no prompts, group_size < 1, max_new_tokens < 1 or a prompt that fills the context.
    """
    if not prompts or group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"need prompts, group_size >= 1 and max_new_tokens >= 1, got {len(prompts)} prompts, "
                         f"{group_size}, {max_new_tokens}")
    stops = stop_token_ids if stop_token_ids is not None else [tokenizer.end_of_turn_id, tokenizer.eos_token_id]
    prompt_ids = [tokenizer.prompt_ids(p) if isinstance(p, str) else list(p) for p in prompts]
    repeated = [ids for ids in prompt_ids for _ in range(group_size)]          # contiguous groups
    out = sample_and_strip(policy, tokenizer, repeated, stops, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    response_ids, sampler_log_probs = [r["tokens"] for r in out], [r["logprobs"] for r in out]
    finished = torch.tensor([not r["truncated"] for r in out])                 # (N,)
    texts = [r["text"] for r in out]
    tensors = build_training_tensors(repeated, response_ids, tokenizer.pad_token_id)
    return Rollouts(prompt_ids=repeated, response_ids=response_ids, response_texts=texts,
                    sampler_log_probs=sampler_log_probs, input_ids=tensors["input_ids"], labels=tensors["labels"],
                    response_mask=tensors["response_mask"], group_size=group_size, temperature=temperature,
                    finished=finished, pad_token_id=tokenizer.pad_token_id)


# ---------------------------------------------------------------------------------------------------------
# Micro-batches of rollout tensors (the RL loops)
# ---------------------------------------------------------------------------------------------------------


def sequence_widths(rollouts: Rollouts) -> Tensor:
    """(N,) long: real (non-padding) positions of each row of the training tensors (prompt + response - 1)."""
    return torch.tensor([len(p) + len(r) - 1 for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)])


def micro_batch(tensors: dict[str, Tensor], rows: Tensor, widths: Tensor, device: torch.device) -> dict[str, Tensor]:
    """Rows `rows` of each (N, T) tensor, cut to the longest real row among them (right padding only)."""
    width = int(widths[rows].max())
    return {k: v[rows, :width].to(device) for k, v in tensors.items()}
