"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) and two variants.

The policy's implicit reward is beta * log(pi(y|x) / pi_ref(y|x)) (eq. 5); plugging it into the
Bradley-Terry model gives the DPO loss (eq. 7):
    -log sigma(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]).
Variants (one switch, two values, plus label smoothing):
- "ipo": IPO (Azar et al. 2023, eq. 17), a squared loss that regresses the log-ratio gap to 1 / (2 beta)
  instead of pushing it to infinity on deterministic preferences.
- label_smoothing eps > 0: conservative DPO (cDPO, Mitchell 2023, eq. 3), for labels flipped with prob eps.
All losses take *summed* response log-probs (sequence log-likelihoods), as the papers write them.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cs336_alignment.logprobs import selective_log_softmax


# ---------------------------------------------------------------------------------------------------------
# Batched losses on sequence log-probs
# ---------------------------------------------------------------------------------------------------------

def dpo_implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """Implicit reward beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5), detached.

    Args:
        policy_logps, ref_logps: (B,) float, summed response log-probs (nats).
        beta: KL coefficient > 0.

    Returns:
        (B,) float rewards (nats scaled by beta); a metric, so no gradient flows.
    """
    # BEGIN SOLUTION
    return beta * (policy_logps - ref_logps).detach()
    # END SOLUTION


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float, loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Batched DPO loss (mean over pairs) from summed response log-probs of the policy and the reference.

    With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) per pair:
      "sigmoid": -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)   (DPO eq. 7; cDPO eq. 3 when eps > 0)
      "ipo":     (h - 1 / (2 beta))^2                                      (IPO eq. 17 with tau = beta)
    IPO normalisation: h is built from the *summed* log-probs passed in, exactly as eq. 17 is written. (TRL
    instead feeds IPO per-token *average* log-probs, a choice it confirmed with the authors; to get that,
    pass mean log-probs.) With policy == reference, h = 0 and the sigmoid loss is log 2.

    Args:
        policy_chosen_logps: (B,) float, log pi(y_w | x) summed over response tokens (differentiable).
        policy_rejected_logps: (B,) float, log pi(y_l | x).
        ref_chosen_logps: (B,) float, log pi_ref(y_w | x) (computed under no_grad).
        ref_rejected_logps: (B,) float, log pi_ref(y_l | x) (constants).
        beta: > 0, strength of the implicit KL constraint (tau in IPO).
        loss_type: "sigmoid" (DPO / cDPO) or "ipo".
        label_smoothing: eps in [0, 0.5), the assumed label-flip probability; "sigmoid" only.

    Returns:
        (loss 0-d, metrics) with detached 0-d "dpo/chosen_reward", "dpo/rejected_reward" (mean implicit
        rewards), "dpo/margin" (their mean difference) and "dpo/accuracy" (fraction of pairs whose chosen
        implicit reward is strictly higher).

    Raises:
        ValueError: on shape mismatch, beta <= 0, an unknown loss_type, or label smoothing outside
            [0, 0.5) or used with "ipo".
    """
    if not (policy_chosen_logps.shape == policy_rejected_logps.shape == ref_chosen_logps.shape
            == ref_rejected_logps.shape):
        raise ValueError("the four log-prob tensors must have the same shape (B,)")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5 or (loss_type == "ipo" and label_smoothing != 0.0):
        raise ValueError(f"label_smoothing must be in [0, 0.5) and only with 'sigmoid', got {label_smoothing}")
    # BEGIN SOLUTION
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps                  # (B,)
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps            # (B,)
    h = chosen_log_ratio - rejected_log_ratio                                  # (B,)
    if loss_type == "sigmoid":
        # DPO eq. 7 (Rafailov et al. 2023); label_smoothing > 0 is cDPO eq. 3 (Mitchell 2023).
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2                                     # IPO eq. 17 (Azar et al. 2023)
    chosen_rewards = dpo_implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta)        # (B,)
    rejected_rewards = dpo_implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta)  # (B,)
    metrics = {"dpo/chosen_reward": chosen_rewards.mean(), "dpo/rejected_reward": rejected_rewards.mean(),
               "dpo/margin": (chosen_rewards - rejected_rewards).mean(),
               "dpo/accuracy": (chosen_rewards > rejected_rewards).float().mean()}
    return losses.mean(), metrics
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# Per-instance DPO with a model and the chat template (CS336 assignment 5)
# ---------------------------------------------------------------------------------------------------------

def sequence_log_probs(model: nn.Module, input_ids: Tensor, labels: Tensor, response_mask: Tensor) -> Tensor:
    """Summed log-probs of the response tokens: sum_t response_mask[b, t] * log p(labels[b, t] | input_ids[b, :t+1]).

    Every "log pi(y | x)" of the package is this function: DPO's loss and its training loop, the report's KL to
    the reference (`evaluate.batched_sequence_log_probs`) and the reward model's SFT diagnostic. It uses the given
    (ungraded) chunked `logprobs.selective_log_softmax` on the model's logits, so this part does not wait for
    part 2.1's `get_response_log_probs` (which gives the same values).

    Args:
        model: a causal LM returning (B, T, V) logits, or an output with `.logits` (Hugging Face models).
        input_ids: (B, T) long, right-padded (padding after a sequence cannot change its log-probs).
        labels: (B, T) long, input_ids shifted by one.
        response_mask: (B, T) bool or 0/1, True on response labels (EOS / end-of-turn included).

    Returns:
        (B,) float32 (float64 for a float64 model), log pi(y | x) in nats, differentiable w.r.t. the model's
        parameters.
    """
    if not input_ids.shape == labels.shape == response_mask.shape:
        raise ValueError("input_ids, labels and response_mask must all be (B, T)")
    # BEGIN SOLUTION
    output = model(input_ids)
    logits = getattr(output, "logits", output)                                     # (B, T, V)
    per_token = selective_log_softmax(logits, labels)                               # (B, T), float32 or float64
    return torch.where(response_mask.bool(), per_token, 0.0).sum(dim=-1)            # (B,)
    # END SOLUTION


def compute_per_instance_dpo_loss(lm: nn.Module, lm_ref: nn.Module, tokenizer, beta: float, prompt: str,
                                  response_chosen: str, response_rejected: str) -> Tensor:
    """DPO loss (eq. 7) of one preference pair, rendered with the chat template.

    Each sequence is `tokenizer.render([user: prompt, assistant: response])`:
    `<|user|>{prompt}<|end|><|assistant|>{response}<|end|>`; the response tokens are the assistant content
    and its closing `<|end|>` (the EOS of a chat turn), so the stop decision is part of what is preferred.
    The chosen and rejected sequences go through each model as one right-padded batch of 2; the
    reference runs under no_grad.

    Args:
        lm: policy (TransformerLM or any causal LM returning logits); gradients flow into it.
        lm_ref: frozen reference model.
        tokenizer: `cs336_alignment.lm.tokenizer.Tokenizer` (needs `render` and `pad_token_id`).
        beta: DPO beta > 0.
        prompt: user message.
        response_chosen, response_rejected: assistant messages, preferred first.

    Returns:
        0-d loss tensor (nats).

    Raises:
        ValueError: if beta <= 0.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # BEGIN SOLUTION
    rows = [tokenizer.render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
            for response in (response_chosen, response_rejected)]                 # [(ids, assistant_mask)] x 2
    L = max(len(ids) for ids, _ in rows)
    full = torch.full((2, L), tokenizer.pad_token_id, dtype=torch.long)         # (2, L), right-padded
    mask = torch.zeros((2, L), dtype=torch.bool)
    for i, (ids, assistant_mask) in enumerate(rows):
        full[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = torch.tensor(assistant_mask, dtype=torch.bool)
    device = next(lm.parameters()).device
    input_ids, labels, response_mask = full[:, :-1].to(device), full[:, 1:].to(device), mask[:, 1:].to(device)
    policy_logps = sequence_log_probs(lm, input_ids, labels, response_mask)    # (2,) chosen, rejected
    with torch.no_grad():
        ref_logps = sequence_log_probs(lm_ref, input_ids, labels, response_mask)
    loss, _ = dpo_loss(policy_logps[:1], policy_logps[1:], ref_logps[:1], ref_logps[1:], beta)
    return loss
    # END SOLUTION
