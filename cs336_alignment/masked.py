"""Masked reductions: the three ways every loss in this package turns per-token numbers into one number.

A mask selects the response tokens (True / 1 = counts, False / 0 = prompt or padding). The semantics of
`masked_mean` and `masked_normalize` are those of Stanford CS336 assignment 5; `masked_whiten` is the
whitening used for PPO advantages (as in TRL's `masked_whiten`).

Masked-out entries are *selected away* with `torch.where`, not multiplied by 0: a padding position may
hold -inf or NaN (e.g. the log-prob of a pad token under a mask), and NaN * 0 is NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check_mask(tensor: Tensor, mask: Tensor) -> Tensor:
    """Return `mask` as a bool tensor broadcast to `tensor`'s shape; raise ValueError if it cannot be."""
    try:
        return mask.bool().expand_as(tensor)
    except RuntimeError as err:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to tensor of shape "
                         f"{tuple(tensor.shape)}") from err


# ---------------------------------------------------------------------------------------------------------
# Mean and normalized sum (CS336 assignment 5)
# ---------------------------------------------------------------------------------------------------------

def masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of the entries of `tensor` where `mask` is set: sum(tensor * mask, dim) / sum(mask, dim).

    Args:
        tensor: float tensor of any shape, e.g. (B, T) per-token losses.
        mask: same shape as `tensor` (or broadcastable to it), bool or 0/1 of any dtype.
        dim: dimension to reduce; None reduces over every element and returns a 0-d tensor.

    Returns:
        `tensor`'s dtype; shape of `tensor` with `dim` removed (no keepdim), or 0-d when dim is None.
        A slice with no masked element is 0/0 = NaN. This is deliberate (CS336 semantics): clamping the
        count would silently turn an empty response into a loss of 0; the training loops never feed one.

    Raises:
        ValueError: if `mask` does not broadcast to `tensor`.
    """
    mask = _check_mask(tensor, mask)
    # BEGIN SOLUTION
    total = torch.where(mask, tensor, 0).sum(dim=dim)            # sum of the selected entries
    count = mask.sum(dim=dim)                                     # number of selected entries (int64)
    return total / count
    # END SOLUTION


def masked_normalize(tensor: Tensor, mask: Tensor, dim: int | None = None,
                     normalize_constant: float = 1.0) -> Tensor:
    """Sum of the masked entries of `tensor` divided by a constant: sum(tensor * mask, dim) / normalize_constant.

    Dividing by a constant instead of the number of masked tokens makes every token weigh the same however
    long its sequence is (this is the SFT loss of CS336 and the Dr. GRPO normaliser of Liu et al. 2025).

    Args:
        tensor: float tensor of any shape.
        mask: same shape as `tensor` (or broadcastable), bool or 0/1.
        dim: dimension to sum over; None sums every element and returns a 0-d tensor.
        normalize_constant: the divisor (a positive number, e.g. a fixed maximum length).

    Returns:
        `tensor`'s dtype; shape of `tensor` with `dim` removed, or 0-d when dim is None.

    Raises:
        ValueError: if `mask` does not broadcast to `tensor` or normalize_constant is 0.
    """
    mask = _check_mask(tensor, mask)
    if normalize_constant == 0:
        raise ValueError("normalize_constant must be non-zero")
    # BEGIN SOLUTION
    return torch.where(mask, tensor, 0).sum(dim=dim) / normalize_constant
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# Whitening (PPO advantages)
# ---------------------------------------------------------------------------------------------------------

def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten `values` with the mean and variance of its masked entries: (v - mean) / sqrt(var + eps).

    The variance is the unbiased one (divides by n - 1), as in TRL's `masked_var`. With shift_mean=False
    the mean is added back, so only the scale changes (TRL uses this for rewards, whose sign matters).

    Args:
        values: float tensor of any shape, e.g. (B, T) per-token advantages.
        mask: same shape as `values` (or broadcastable), bool or 0/1.
        shift_mean: subtract the masked mean (True) or keep it (False).
        eps: added to the variance before the square root.

    Returns:
        Same shape and dtype as `values`; masked-out positions are 0, and whatever they held (NaN, -inf) reaches
        neither the result nor the gradient.

    Raises:
        ValueError: if `mask` does not broadcast to `values` or selects fewer than 2 entries (no variance).
    """
    mask = _check_mask(values, mask)
    if int(mask.sum()) < 2:
        raise ValueError("masked_whiten needs at least 2 masked entries to estimate a variance")
    # BEGIN SOLUTION
    n = mask.sum()
    selected = torch.where(mask, values, 0)                    # NaN/-inf padding never enters value or gradient
    mean = selected.sum() / n
    centered = torch.where(mask, selected - mean, 0)
    var = (centered ** 2).sum() / (n - 1)                      # unbiased (Bessel's correction)
    whitened = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = torch.where(mask, whitened + mean, 0)
    return whitened
    # END SOLUTION
