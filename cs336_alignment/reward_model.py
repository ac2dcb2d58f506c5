"""Reward models: a language-model trunk with a scalar head, trained on human (or synthetic) preferences.

- Bradley-Terry pairwise loss -log sigma(r_chosen - r_rejected) (Ouyang et al. 2022, InstructGPT eq. 1),
  with Llama 2's optional margin (Touvron et al. 2023, eq. 2) and a reward-centering term that pins the
  free additive constant of the rewards near 0 (Eisenstein et al. 2023, "Helping or Herding?").
- Listwise losses for K ranked responses: best-of-K (Ziegler et al. 2019; Stiennon et al. 2020) and the
  full Plackett-Luce ranking likelihood (Plackett 1975; Luce 1959); for K = 2 both equal Bradley-Terry.
- `RewardModel`: a TransformerLM trunk plus a `ScalarHead`, whose reward is the head's output at the last
  real token of each sequence (the EOS / end-of-turn token), whatever the padding side or amount.
- Loading a trained reward model (`load_reward_model`) and scoring with it: text pairs rendered with the chat
  template (`score_responses`), token sequences (`score_sequences`), RL rollouts from their sampled ids
  (`score_rollouts`), and a GRPO reward function over sampled responses (`rollout_reward_fn`).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cs336_alignment.lm.checkpoint import load_checkpoint, load_checkpoint_extra, model_config_from
from cs336_alignment.lm.data import length_sorted_batches, pad_sequences
from cs336_alignment.logprobs import fused_linear_log_probs
from cs336_alignment.lm.model import ScalarHead, TransformerConfig, TransformerLM
from cs336_alignment.lm.rollout import Rollouts
from cs336_alignment.lm.runtime import autocast


# ---------------------------------------------------------------------------------------------------------
# Pairwise (Bradley-Terry) loss and accuracy
# ---------------------------------------------------------------------------------------------------------

def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs the rewards order correctly: mean of [r_chosen > r_rejected], a tie counts 1/2.

    Args:
        chosen_rewards, rejected_rewards: (B,) float.

    Returns:
        0-d float32 tensor in [0, 1] (detached).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError("chosen_rewards and rejected_rewards must have the same shape")
    # BEGIN SOLUTION
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    # A tie is a coin flip: counting it as wrong would score a constant reward model at 0, not 0.5.
    return ((c > r).float() + 0.5 * (c == r).float()).mean()
    # END SOLUTION


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       center_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise reward-model loss: mean of -log sigma(r_chosen - r_rejected - margin), plus
    center_coef * mean((r_chosen + r_rejected)^2).

    Under the Bradley-Terry model P(chosen > rejected) = sigma(r_chosen - r_rejected); the loss is its
    negative log-likelihood (InstructGPT eq. 1). A margin m > 0 asks for a gap of at least ~m on pairs the
    labellers found clearly different (Llama 2 eq. 2). The loss only sees differences, so the rewards'
    mean drifts freely; the centering term (Eisenstein et al. 2023) keeps it near 0.

    Args:
        chosen_rewards: (B,) float, reward of the preferred response.
        rejected_rewards: (B,) float, reward of the other response.
        margin: None, a float, or a (B,) tensor of per-pair margins (constants).
        center_coef: weight of the centering term (>= 0; 0 disables it; TRL suggests 0.01).

    Returns:
        (loss 0-d, metrics) with detached 0-d "rm/accuracy" (see `reward_accuracy`), "rm/margin"
        (mean r_chosen - r_rejected), "rm/chosen_reward" and "rm/rejected_reward" (means).

    Raises:
        ValueError: on shape mismatch or center_coef < 0.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
                         f"{tuple(rejected_rewards.shape)} must both be (B,)")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    # BEGIN SOLUTION
    logits = chosen_rewards - rejected_rewards                                  # (B,)
    if margin is not None:
        logits = logits - margin                                                # Llama 2 eq. 2
    loss = -F.logsigmoid(logits).mean()                                         # InstructGPT eq. 1 (K = 2)
    if center_coef > 0:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    metrics = {"rm/accuracy": reward_accuracy(chosen_rewards, rejected_rewards),
               "rm/margin": (chosen_rewards - rejected_rewards).detach().mean(),
               "rm/chosen_reward": chosen_rewards.detach().mean(),
               "rm/rejected_reward": rejected_rewards.detach().mean()}
    return loss, metrics
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# Listwise losses: best-of-K and Plackett-Luce
# ---------------------------------------------------------------------------------------------------------

def plackett_luce_loss(ranked_rewards: Tensor, top_k: int | None = None) -> Tensor:
    """Negative log-likelihood of a ranking of K responses under the Plackett-Luce model.

    The ranking is built by picking the best response with probability softmax(r) over all K, then the
    second best among the rest, and so on:
        loss = mean over the batch of  sum_{k < top_k} [ logsumexp(r_k, ..., r_{K-1}) - r_k ]
    top_k = 1 keeps only the first choice: the "best-of-K" loss -log softmax(r)_best of Ziegler et al. 2019
    and Stiennon et al. 2020 (labellers picked the best of 4). top_k = None (K - 1) scores the full ranking
    (the last factor is always 1). For K = 2 every choice gives the Bradley-Terry loss.

    Args:
        ranked_rewards: (B, K) float, rewards of K responses to one prompt, ordered best first.
        top_k: number of ranked positions to score, 1 <= top_k <= K - 1 (None = K - 1).

    Returns:
        0-d loss (nats per ranking).

    Raises:
        ValueError: if ranked_rewards is not (B, K) with K >= 2, or top_k is out of range.
    """
    if ranked_rewards.dim() != 2 or ranked_rewards.shape[1] < 2:
        raise ValueError(f"ranked_rewards must be (B, K) with K >= 2, got {tuple(ranked_rewards.shape)}")
    K = ranked_rewards.shape[1]
    top_k = K - 1 if top_k is None else top_k
    if not 1 <= top_k <= K - 1:
        raise ValueError(f"top_k must be in [1, {K - 1}], got {top_k}")
    # BEGIN SOLUTION
    # logsumexp over the responses still in the race at step k: a reversed cumulative logsumexp.
    remaining = torch.logcumsumexp(ranked_rewards.flip(-1), dim=-1).flip(-1)   # (B, K)
    nll = (remaining - ranked_rewards)[:, :top_k]                              # (B, top_k), -log P(choice k)
    return nll.sum(dim=-1).mean()
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

class RewardModel(nn.Module):
    """TransformerLM trunk + ScalarHead; the reward of a sequence is the head's value at its last real token.

    The trunk is a whole TransformerLM (its unused lm_head included, so its state dict is an LM's and
    `from_lm` is a plain copy); it is called with return_hidden=True. Right after `from_lm` the reward is
    a random linear function of the SFT model's features, which is the usual starting point (InstructGPT
    initializes its reward model from the SFT model).

    Optional likelihood term (likelihood_coef not None): the reward adds a * (mean log-prob per response token
    under the trunk's own LM head), a learnable scalar initialised at likelihood_coef. This is SimPO's
    length-normalised implicit reward (Meng et al. 2024, eq. 4) used as a feature: the SFT model's likelihood
    already tells a right answer from a wrong one more often than a new head learns to from a few thousand
    pairs (`train.reward_model`'s eval/rm/sft_correct_preferred), and the term lets the reward model start from
    that and keep training it. The reward then depends on which tokens are the response: pass response_mask.
    """

    def __init__(self, config: TransformerConfig, trunk: TransformerLM | None = None,
                 likelihood_coef: float | None = None):
        super().__init__()
        self.config = config
        self.trunk = trunk if trunk is not None else TransformerLM(config)
        self.head = ScalarHead(config.d_model)
        # Optional learnable weight a of the likelihood term (see `forward`); None = the plain head reward.
        self.likelihood_coef = (None if likelihood_coef is None
                                else nn.Parameter(torch.tensor(float(likelihood_coef))))

    @classmethod
    def from_lm(cls, lm: TransformerLM, likelihood_coef: float | None = None) -> RewardModel:
        """A reward model whose trunk is a deep copy of `lm` (e.g. the SFT policy) and whose head is new;
        likelihood_coef, if given, adds the likelihood term with a learnable weight starting there."""
        return cls(lm.config, trunk=copy.deepcopy(lm), likelihood_coef=likelihood_coef)

    def response_mean_log_probs(self, hidden: Tensor, input_ids: Tensor, response_mask: Tensor,
                                attention_mask: Tensor | None = None) -> Tensor:
        """Mean log-prob per response token under the trunk's own LM head, (B,) nats (float32; float64 for a
        float64 model).

        Token t is predicted from the hidden state at t - 1 (`logprobs.fused_linear_log_probs`, so the (B, T, V)
        logits never exist at once). A row with no response token inside the sequence scores 0.

        Args:
            hidden: (B, T, d) final hidden states of input_ids.  input_ids: (B, T) long.
            response_mask: (B, T) bool or 0/1, 1 on the response's tokens (its stop token included).
            attention_mask: (B, T), 1 = real token; None = no padding.
        """
        log_probs = fused_linear_log_probs(hidden[:, :-1], self.trunk.lm_head.weight, input_ids[:, 1:])  # (B, T-1)
        mask = response_mask[:, 1:].bool()
        if attention_mask is not None:
            mask = mask & attention_mask[:, 1:].bool()
        mask = mask.to(log_probs.dtype)
        return (log_probs * mask).sum(-1) / mask.sum(-1).clamp(min=1)            # (B,)

    def token_scores(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Head output at every position: (B, T) long ids (+ (B, T) mask) -> (B, T) float32."""
        hidden = self.trunk(input_ids, attention_mask, return_hidden=True)    # (B, T, d)
        return self.head(hidden)                                              # (B, T)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                response_mask: Tensor | None = None) -> Tensor:
        """Reward of each sequence, read at its last real token (plus the likelihood term, if the model has one).

        Args:
            input_ids: (B, T) long, prompt + response (ending in EOS / end-of-turn), left- or right-padded.
            attention_mask: (B, T) bool or 0/1, 1 = real token; None = no padding.
            response_mask: (B, T) bool or 0/1, 1 on the response's tokens; needed only by the likelihood term.

        Returns:
            (B,) float32 rewards. The same sequence gets the same reward however it is padded.

        Raises:
            ValueError: if a row of attention_mask has no real token, the shapes differ, or the model has a
                likelihood term and response_mask is None.
        """
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError("attention_mask must have the shape of input_ids")
            if not bool(attention_mask.bool().any(dim=-1).all()):
                raise ValueError("every row needs at least one real token")
        if self.likelihood_coef is not None and (response_mask is None or response_mask.shape != input_ids.shape):
            raise ValueError("this reward model has a likelihood term: pass a response_mask of the shape of input_ids")
        hidden = self.trunk(input_ids, attention_mask, return_hidden=True)    # (B, T, d)
        # BEGIN SOLUTION
        scores = self.head(hidden)                                            # (B, T)
        T = input_ids.shape[1]
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        # Index of the last real token: the largest position whose mask is 1 (works for either padding side).
        positions = torch.arange(T, device=input_ids.device)                  # (T,)
        last = (positions * real).argmax(dim=-1)                              # (B,)
        rewards = scores.gather(1, last[:, None]).squeeze(1)                  # (B,)
        # END SOLUTION
        if self.likelihood_coef is not None:
            rewards = rewards + self.likelihood_coef * self.response_mean_log_probs(hidden, input_ids, response_mask,
                                                                                    attention_mask)
        return rewards


# ---------------------------------------------------------------------------------------------------------
# A trained reward model: loading and scoring (best-of-N, PPO, GRPO, the report)
# ---------------------------------------------------------------------------------------------------------


def load_reward_model(path, device: torch.device | str = "cpu") -> tuple[RewardModel, dict]:
    """Rebuild a RewardModel saved by `python -m cs336_alignment rm` (with its likelihood term, if it was trained
    with one). Returns (model in eval mode, the checkpoint's extra dict). Raises ValueError for a checkpoint of
    another kind."""
    extra = load_checkpoint_extra(path)
    if extra.get("kind") != "reward_model":
        raise ValueError(f"{path} is not a reward-model checkpoint (written by `python -m cs336_alignment rm`)")
    model = RewardModel(model_config_from(extra, path),
                        likelihood_coef=0.0 if extra.get("likelihood_term") else None)  # its value is in the weights
    load_checkpoint(path, model)
    return model.to(device).eval(), extra


def response_start(assistant_mask: list[bool]) -> int:
    """Index of the first token of the last assistant turn of a rendered conversation (`tokenizer.render`'s
    mask): what the likelihood term of a reward model scores. 0 when no token is the assistant's."""
    end = len(assistant_mask)
    while end > 0 and not assistant_mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and assistant_mask[start - 1]:
        start -= 1
    return start


def batch_rewards(model: RewardModel, sequences: list[list[int]], pad_token_id: int,
                  prompt_lengths: list[int] | None = None) -> Tensor:
    """Rewards (B,) float32 of token sequences, right-padded with pad_token_id into one batch (differentiable).

    prompt_lengths[i] is the number of prompt tokens that start sequences[i] (the rest is the response); only a
    reward model with a likelihood term reads it, and it raises ValueError when it is missing (`RewardModel`).
    """
    device = next(model.parameters()).device
    ids, mask = pad_sequences(sequences, pad_token_id)                             # (B, L) each
    response_mask = None
    if prompt_lengths is not None:
        positions = torch.arange(ids.shape[1])                                     # (L,)
        response_mask = mask & (positions[None, :] >= torch.tensor(prompt_lengths)[:, None])  # (B, L)
        response_mask = response_mask.to(device)
    with autocast(device):
        return model(ids.to(device), mask.to(device), response_mask).float()     # (B,)


@torch.no_grad()
def score_sequences(model: RewardModel, sequences: list[list[int]], pad_token_id: int, batch_size: int = 64,
                    prompt_lengths: list[int] | None = None) -> list[float]:
    """Reward of each token sequence (prompt + response ids), read at its last token; no gradient.

    Sequences are right-padded with pad_token_id in batches of `batch_size` sequences of similar length (sorted
    by length, so little of each batch is padding; the padding is masked, so a score does not depend on the
    batch it is in, up to float rounding). prompt_lengths: as in `batch_rewards`. The model is scored in eval
    mode and its training mode is restored afterwards. Returns one float per sequence, in the order of
    `sequences`.
    """
    was_training = model.training
    model.eval()
    scores = [0.0] * len(sequences)
    for rows in length_sorted_batches([len(s) for s in sequences], batch_size):
        starts = None if prompt_lengths is None else [prompt_lengths[i] for i in rows]
        for i, r in zip(rows, batch_rewards(model, [sequences[i] for i in rows], pad_token_id, starts).tolist()):
            scores[i] = r
    model.train(was_training)
    return scores


@torch.no_grad()
def score_responses(model: RewardModel, tokenizer, prompts: list[str], responses: list[str],
                    batch_size: int = 64) -> list[float]:
    """Reward of each (user prompt, assistant response) text pair.

    Each pair is rendered with the chat template (<|end|> appended to the response), cut to the model's
    context_length, and scored by `score_sequences`. Returns one float per pair, in order.
    """
    context = model.config.context_length
    rendered = [tokenizer.render([{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                for p, r in zip(prompts, responses)]
    sequences = [ids[:context] for ids, _ in rendered]
    prompt_lengths = [response_start(assistant_mask) for _, assistant_mask in rendered]
    return score_sequences(model, sequences, tokenizer.pad_token_id, batch_size, prompt_lengths)


@torch.no_grad()
def score_rollouts(model: RewardModel, rollouts: Rollouts, batch_size: int = 128) -> Tensor:
    """(N,) float32: the reward of each prompt + sampled response of a `rollout.Rollouts`, from the sampled
    token ids themselves (no decoding and re-tokenizing), read at the last token, which is the stop token
    when the response has one. Scored by `score_sequences`."""
    sequences = [p + r for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)]
    return torch.tensor(score_sequences(model, sequences, rollouts.pad_token_id, batch_size,
                                        [len(p) for p in rollouts.prompt_ids]))


def rollout_reward_fn(model: RewardModel, rollouts: Rollouts, batch_size: int = 128
                      ) -> Callable[[tuple[int, ...], tuple[int, ...]], dict[str, float]]:
    """A reward function in the shape `advantages.compute_rollout_rewards` takes,
    reward_fn(response, ground_truth) -> {"reward"}, for a reward model: the response is its sampled token
    ids and the "ground truth" the prompt's ids (tuples), so the model scores exactly the tokens the policy
    sampled. All rows are scored at once (`score_rollouts`, batched); the function looks a response up by
    its tokens. Call it with responses [tuple(r) for r in rollouts.response_ids] and prompts likewise.
    """
    scores = score_rollouts(model, rollouts, batch_size).tolist()
    table = {(tuple(p), tuple(r)): s for p, r, s in zip(rollouts.prompt_ids, rollouts.response_ids, scores)}
    return lambda response, prompt: {"reward": table[(tuple(prompt), tuple(response))]}
