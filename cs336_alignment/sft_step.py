"""Supervised fine-tuning loss: negative log-likelihood of the response tokens only.

The prompt tokens are given, not predicted, so they are masked out; what is left is the usual language
model loss restricted to the demonstration (Ouyang et al. 2022, InstructGPT §3.5 "SFT"). The micro-batch
step follows Stanford CS336 assignment 5 (`sft_microbatch_train_step`): it scales the loss for gradient
accumulation and calls `backward()` itself.
"""
from __future__ import annotations

import torch
from torch import Tensor

from cs336_alignment.masked import masked_mean, masked_normalize


# ---------------------------------------------------------------------------------------------------------
# Response-masked negative log-likelihood
# ---------------------------------------------------------------------------------------------------------

def sft_loss(policy_log_probs: Tensor, response_mask: Tensor, normalize_constant: float = 1.0) -> Tensor:
    """Response-masked NLL: per example the masked sum of -log pi(y_t | x, y_<t), / normalize_constant,
    then the mean over the batch.

    Args:
        policy_log_probs: (B, T) float, log-probabilities (nats) of the label tokens under the policy.
        response_mask: (B, T) bool or 0/1, True on response (label) tokens.
        normalize_constant: divisor of each example's summed NLL (1.0 = plain sum; a fixed length keeps
            every token's weight independent of its sequence's length).

    Returns:
        0-d tensor (nats per example when normalize_constant = 1), differentiable w.r.t. policy_log_probs.

    Raises:
        ValueError: if the shapes differ.
    """
    if policy_log_probs.shape != response_mask.shape:
        raise ValueError(f"policy_log_probs {tuple(policy_log_probs.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must have the same shape")
    # BEGIN SOLUTION
    per_example = -masked_normalize(policy_log_probs, response_mask, dim=-1,
                                    normalize_constant=normalize_constant)   # (B,)
    return per_example.mean()
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# One micro-batch of a gradient-accumulation step
# ---------------------------------------------------------------------------------------------------------

def sft_microbatch_train_step(policy_log_probs: Tensor, response_mask: Tensor, gradient_accumulation_steps: int,
                              normalize_constant: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Compute the SFT loss of one micro-batch, scale it for gradient accumulation and backpropagate.

    loss = sft_loss(policy_log_probs, response_mask, normalize_constant) / gradient_accumulation_steps.
    `loss.backward()` is called here; gradients *accumulate* into `.grad` (nothing is zeroed), so k calls
    followed by one optimizer step average the k micro-batches: 8 micro-batches of 1 example with 8
    accumulation steps give the same gradient as 1 micro-batch of 8 examples with 1 step.

    Args:
        policy_log_probs: (B, T) float, log-probs of the label tokens; must require grad.
        response_mask: (B, T) bool or 0/1, True on response tokens.
        gradient_accumulation_steps: number of micro-batches per optimizer step (>= 1).
        normalize_constant: divisor of each example's summed NLL (see `sft_loss`).

    Returns:
        (loss, metadata): loss is the scaled 0-d loss (detached; backward has already run). metadata holds
        detached 0-d tensors: "loss/sft" (the unscaled loss), "loss/nll_per_token" (token-mean NLL, for
        logging) and "response/num_tokens" (response tokens in the micro-batch).

    Raises:
        ValueError: if gradient_accumulation_steps < 1 or the shapes differ.
    """
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    # BEGIN SOLUTION
    unscaled = sft_loss(policy_log_probs, response_mask, normalize_constant)
    loss = unscaled / gradient_accumulation_steps          # the average over micro-batches is built up in .grad
    loss.backward()
    with torch.no_grad():
        metadata = {
            "loss/sft": unscaled.detach(),
            "loss/nll_per_token": -masked_mean(policy_log_probs.detach(), response_mask),
            "response/num_tokens": response_mask.sum(),
        }
    return loss.detach(), metadata
    # END SOLUTION
