"""Batched sampling from a TransformerLM: left-padded prompts, one prefill, then one token at a time with a KV cache.

`sample_next_token` draws from softmax(logits / temperature), optionally truncated to the top k tokens or to
the nucleus (top p); `generate` runs the decoding loop over `model.KVCache`, the cache the attention layers
append to. Rows stop at their EOS or their own token limit and then leave the batch; padding is masked and
positions skip it, so a row gets the tokens and log-probabilities it would get alone (tests/test_generate.py;
greedy output equals transformers' `generate` on loaded checkpoints, tests/test_pretrained.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cs336_alignment.lm.model import KVCache, TransformerLM


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per prompt, EOS included if emitted
    logprobs: list[Tensor]  # (n_i,) float32 on CPU: log softmax(logits / temperature) of each new token


def sample_next_token(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Sample one token per row from softmax(logits / temperature), optionally truncated.

    temperature 0 = greedy (argmax). top_k keeps the k largest logits (ties with the k-th are kept);
    top_p keeps the smallest set of most likely tokens whose probability sums to ≥ top_p (nucleus sampling,
    Holtzman et al. 2020, https://arxiv.org/abs/1904.09751, eq. 3). Both may be combined (top-k first).

    Args:
        logits: (B, V) float.  generator: a torch.Generator on logits' device, for reproducible samples.
    Returns:
        (B,) long.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the top token survives
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate(model: TransformerLM, prompts: list[list[int]], *, max_new_tokens: int | Sequence[int],
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
             generator: torch.Generator | None = None, use_kv_cache: bool = True,
             drop_finished: bool = True) -> GenerationOutput:
    """Batched sampling: left-pad the prompts, prefill once, then decode one token at a time with a KV cache.

    A row stops after it emits an EOS token (kept in its output) or reaches its own max_new_tokens. Padding is
    masked and positions skip it, so each row gets the tokens and logprobs it would get alone. Finished rows
    leave the batch (their cache rows are dropped once a quarter of the batch has finished), so a step costs
    what the rows still running cost. The model runs in eval mode under no_grad; its training mode is restored
    afterwards. use_kv_cache=False recomputes the whole prefix at every step, drop_finished=False keeps finished
    rows in the batch (same results; the baselines of `bench generate`).

    Args:
        prompts: B non-empty lists of token ids.
        max_new_tokens: ≥ 0, one limit for every row or one per row.
        temperature: ≥ 0; 0 = greedy (logprobs are then the temperature-1 log-probabilities).
        top_k, top_p, generator: see sample_next_token (the generator draws for the running rows only).
        eos_token_id: one id or several.  pad_token_id: filler for padding (never attended to).
    Returns:
        GenerationOutput: tokens[i] (≤ its max_new_tokens ids) and logprobs[i] (len(tokens[i]),) float32 on
        CPU, log softmax(logits / temperature) at the sampled token, before top-k/top-p truncation.
    Raises:
        ValueError: on empty prompts, negative max_new_tokens/temperature, a limit list of the wrong length, or
            if a prompt plus its max_new_tokens exceeds model.config.context_length (we raise rather than
            silently truncate).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    B, P = len(prompts), max(len(p) for p in prompts)
    limits = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != B:
        raise ValueError(f"max_new_tokens has {len(limits)} limits for {B} prompts")
    if min(limits) < 0 or temperature < 0:
        raise ValueError(f"need max_new_tokens >= 0 and temperature >= 0, got {min(limits)}, {temperature}")
    context = model.config.context_length
    for i, (p, n) in enumerate(zip(prompts, limits)):
        if len(p) + n > context:
            raise ValueError(f"prompt {i} ({len(p)}) + max_new_tokens ({n}) exceeds context_length {context}")
    N = max(limits)
    device = next(model.parameters()).device
    ids = torch.full((B, P), pad_token_id, dtype=torch.long, device=device)  # (B, P), left-padded
    mask = torch.zeros((B, P), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = True
    eos = torch.tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long, device=device).view(-1)
    new_tokens = torch.full((B, N), pad_token_id, dtype=torch.long, device=device)  # (B, N)
    new_logprobs = torch.zeros((B, N), dtype=torch.float32, device=device)
    lengths = torch.tensor(limits, dtype=torch.long, device=device)  # (B,), set when a row hits EOS
    rows = torch.arange(B, device=device)  # the running rows: their index in the batch
    done = lengths == 0  # (running rows,)

    was_training = model.training
    model.eval()
    try:
        cache = KVCache(model.config.num_layers, P + N) if use_kv_cache else None
        step_ids = ids  # what the model reads next: the prompt, then one token (cache) or everything (no cache)
        for t in range(N):
            n_done = int(done.sum())
            if n_done == len(rows):
                break
            if drop_finished and 4 * n_done >= len(rows):  # drop the finished rows from the batch
                keep = (~done).nonzero().squeeze(-1)  # (B',)
                rows, done, mask, step_ids = rows[keep], done[keep], mask[keep], step_ids[keep]
                if cache is not None:
                    cache.keep(keep)
            hidden = model(step_ids, mask, return_hidden=True, kv_cache=cache)[:, -1]  # (B', d), last position
            # The head in the weights' dtype even under bf16 autocast (float32 for float32 weights): bf16 logits
            # near 20 are rounded to 1/8, which would change sampled tokens' probabilities by up to ~6%.
            with torch.autocast(device.type, enabled=False):
                logits = model.lm_head(hidden.to(model.lm_head.weight.dtype)).float()  # (B', V)
            token = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B',)
            token = torch.where(done, pad_token_id, token)  # finished rows only carry padding
            logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)  # (B', V)
            new_tokens[rows, t] = token  # a finished row's entries lie past its length and are not returned
            new_logprobs[rows, t] = logp.gather(-1, token[:, None]).squeeze(-1)
            hit_eos = ~done & torch.isin(token, eos)
            lengths[rows[hit_eos]] = t + 1
            done = lengths[rows] <= t + 1  # its EOS, or its own limit
            mask = torch.cat([mask, ~done[:, None]], dim=1)  # a finished row's padding is masked, not counted
            # next: the new token alone (cache), or the whole sequence again (no cache: (B', P + t + 1))
            step_ids = token[:, None] if use_kv_cache else torch.cat([step_ids, token[:, None]], dim=1)
    finally:
        model.train(was_training)
    lengths, new_tokens, new_logprobs = lengths.tolist(), new_tokens.cpu(), new_logprobs.cpu()
    return GenerationOutput(tokens=[new_tokens[i, :n].tolist() for i, n in enumerate(lengths)],
                            logprobs=[new_logprobs[i, :n] for i, n in enumerate(lengths)])
