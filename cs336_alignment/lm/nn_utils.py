"""Hand-written training-loop parts from CS336 assignment 1: softmax, cross-entropy, SiLU, AdamW, the cosine
learning-rate schedule and gradient clipping.

References: AdamW — Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (Algorithm 2),
https://arxiv.org/abs/1711.05101; Adam — Kingma & Ba 2015 (Algorithm 1); SiLU/SwiGLU — Shazeer 2020,
https://arxiv.org/abs/2002.05202; cosine schedule — Loshchilov & Hutter 2017 (SGDR), as used by LLaMA.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------
# Activations and losses
# ---------------------------------------------------------------------------------------------------------


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax along `dim`: exp(x - max) / sum(exp(x - max)).

    Args:
        x: any shape, floating point. Entries may be -inf (masked); a slice that is all -inf gives NaN.
        dim: the dimension that sums to 1.
    Returns:
        Same shape and dtype as `x`.
    """
    shifted = x - x.amax(dim=dim, keepdim=True)  # largest entry becomes 0, so exp never overflows
    exp = torch.exp(shifted)
    return exp / exp.sum(dim=dim, keepdim=True)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable log-softmax along `dim`: x - max - log(sum(exp(x - max))).

    Args:
        x: any shape, floating point.
    Returns:
        Same shape and dtype as `x` (nats).
    """
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of `targets` under softmax(`logits`), stable for huge logits (e.g. 1e4).

    loss_i = logsumexp(logits_i) - logits_i[target_i], averaged over every leading position.

    Args:
        logits: (..., V) float, unnormalized. float16/bfloat16 are upcast to float32.
        targets: (...) long, values in [0, V).
    Returns:
        0-d tensor (nats).
    Raises:
        ValueError: if the leading shapes of `logits` and `targets` differ.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    max_logit = logits.amax(dim=-1, keepdim=True)  # (..., 1), subtracted so exp never overflows
    log_z = (max_logit + torch.log(torch.exp(logits - max_logit).sum(dim=-1, keepdim=True))).squeeze(-1)  # (...)
    return (log_z - target_logits).mean()


def silu(x: Tensor) -> Tensor:
    """SiLU / swish activation x * sigmoid(x) (Elfwing et al. 2017; Shazeer 2020 eq. 5). Same shape as `x`."""
    return x * torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2).

    Per parameter θ with gradient g at step t (1-based):
        θ ← θ − lr·λ·θ                                  (decoupled weight decay, applied first as torch does)
        m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
        θ ← θ − lr/(1 − β1^t) · m / (sqrt(v/(1 − β2^t)) + eps)
    This is exactly torch.optim.AdamW. CS336's handout writes the same update with eps outside the bias
    correction (α_t = lr·sqrt(1 − β2^t)/(1 − β1^t); θ ← θ − α_t·m/(sqrt(v) + eps)) and the decay last; the two
    differ by O(eps) and O(lr²·λ).

    Args:
        params: parameters or parameter groups.
        lr: learning rate ≥ 0.  betas: (β1, β2) in [0, 1).  eps: > 0 (added to sqrt(v̂)).
        weight_decay: λ ≥ 0.
    Raises:
        ValueError: on out-of-range hyperparameters.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            by_step: dict[tuple, list[Tensor]] = {}  # parameters sharing a step count and device: one update
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # lazy init: first moment m, second moment v
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                by_step.setdefault((state["step"], p.device), []).append(p)
            for (t, _), params in by_step.items():
                # The update of the class docstring on every parameter of the list at once (torch._foreach_*: the
                # same element-wise kernels in the same order as one parameter at a time, so the same bits).
                m = [self.state[p]["exp_avg"] for p in params]
                v = [self.state[p]["exp_avg_sq"] for p in params]
                g = [p.grad for p in params]
                torch._foreach_mul_(params, 1 - lr * wd)               # decoupled weight decay
                torch._foreach_mul_(m, beta1)                          # m ← β1 m + (1-β1) g
                torch._foreach_add_(m, g, alpha=1 - beta1)
                torch._foreach_mul_(v, beta2)                          # v ← β2 v + (1-β2) g²
                torch._foreach_addcmul_(v, g, g, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** t
                bias_correction2 = 1 - beta2 ** t
                denom = torch._foreach_sqrt(v)                         # sqrt(v̂) + eps = sqrt(v)/sqrt(1-β2^t) + eps
                torch._foreach_div_(denom, math.sqrt(bias_correction2))
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(params, m, denom, value=-lr / bias_correction1)
        return loss


def get_lr_cosine_schedule(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
                           cosine_cycle_iters: int) -> float:
    """Learning rate at iteration `it`: linear warmup, cosine decay, then constant (CS336 a1 semantics).

    1) it < warmup_iters:                      lr = it / warmup_iters · max_learning_rate
    2) warmup_iters ≤ it ≤ cosine_cycle_iters: lr = min + ½(1 + cos(π·(it − warmup)/(cycle − warmup)))·(max − min)
    3) it > cosine_cycle_iters:                lr = min_learning_rate

    Raises:
        ValueError: if warmup_iters < 0 or cosine_cycle_iters < warmup_iters.
    """
    if warmup_iters < 0 or cosine_cycle_iters < warmup_iters:
        raise ValueError(f"need 0 <= warmup_iters ({warmup_iters}) <= cosine_cycle_iters ({cosine_cycle_iters})")
    if it < warmup_iters:  # 1) linear warmup
        return it / warmup_iters * max_learning_rate
    if it >= cosine_cycle_iters:  # 3) after the cycle (at it == cycle the cosine already equals min)
        return min_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)  # 2) in [0, 1)
    return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)


# ---------------------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale all gradients in place so that their global L2 norm is at most `max_l2_norm`.

    The norm is taken over every gradient together (as if concatenated). Parameters without a gradient are
    skipped. If the norm exceeds `max_l2_norm`, each gradient is multiplied by max_l2_norm / (norm + eps);
    otherwise nothing changes. No host synchronisation (the decision is a torch.where), so it is cheap on GPU.

    Args:
        parameters: iterable of parameters (a generator is fine).
        max_l2_norm: > 0.
    Returns:
        0-d float32 tensor: the global norm *before* clipping (0 if no parameter has a gradient).
    Raises:
        ValueError: if max_l2_norm <= 0.
    """
    if max_l2_norm <= 0:
        raise ValueError(f"max_l2_norm must be > 0, got {max_l2_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))  # (), global L2 norm
    scale = torch.where(total_norm > max_l2_norm, max_l2_norm / (total_norm + eps), torch.ones_like(total_norm))
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total_norm
