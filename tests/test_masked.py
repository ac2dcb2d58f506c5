"""Masked reductions: masked_mean, masked_normalize, masked_whiten."""
from __future__ import annotations

import math

import pytest
import torch

from tests.adapters import run_masked_mean, run_masked_normalize, run_masked_whiten

PART = "2.2 Masked reductions"


@pytest.fixture
def tensor_and_mask():
    tensor = torch.randn(4, 6)                                   # (B, T)
    mask = torch.rand(4, 6) > 0.4                                # (B, T) bool
    mask[:, 0] = True                                            # no empty row or column
    mask[0, :] = True
    return tensor, mask


def _reduce_over(tensor, mask, dim):
    """Naive oracle: masked sums and counts over `dim` (None = everything), with python loops."""
    B, T = tensor.shape
    if dim is None:
        groups = [[(b, t) for b in range(B) for t in range(T)]]
    elif dim % 2 == 1:                                            # reduce over T: one group per row
        groups = [[(b, t) for t in range(T)] for b in range(B)]
    else:                                                         # reduce over B: one group per column
        groups = [[(b, t) for b in range(B)] for t in range(T)]
    sums = [sum(tensor[b, t].item() for b, t in group if mask[b, t]) for group in groups]
    counts = [sum(bool(mask[b, t]) for b, t in group) for group in groups]
    return (sums[0], counts[0]) if dim is None else (sums, counts)


# ---------------------------------------------------------------------------------------------------------
# masked_mean
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_masked_mean_hand_computed(numpy_snapshot):
    tensor = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])
    torch.testing.assert_close(run_masked_mean(tensor, mask), torch.tensor(3.0), msg="dim=None")   # (1+2+6)/3
    torch.testing.assert_close(run_masked_mean(tensor, mask, dim=1), torch.tensor([1.5, 6.0]), msg="dim=1")
    torch.testing.assert_close(run_masked_mean(tensor, mask, dim=0), torch.tensor([1.0, 2.0, 6.0]), msg="dim=0")
    # A 0/1 float mask means the same as a bool mask.
    torch.testing.assert_close(run_masked_mean(tensor, mask.float(), dim=1), torch.tensor([1.5, 6.0]),
                               msg="float mask")
    numpy_snapshot.assert_match({"all": run_masked_mean(tensor, mask), "dim1": run_masked_mean(tensor, mask, dim=1),
                                 "dim0": run_masked_mean(tensor, mask, dim=0),
                                 "float_mask": run_masked_mean(tensor, mask.float(), dim=1)},
                                "test_masked_mean_hand_computed")


@pytest.mark.points(2)
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_masked_mean(numpy_snapshot, tensor_and_mask, dim):
    tensor, mask = tensor_and_mask
    out = run_masked_mean(tensor=tensor, mask=mask, dim=dim)
    sums, counts = _reduce_over(tensor, mask, dim)
    expected = torch.tensor(sums) / torch.tensor(counts, dtype=torch.float32)
    assert out.shape == expected.shape, "wrong output shape (no keepdim; 0-d for dim=None)"
    torch.testing.assert_close(out, expected, msg="masked_mean differs from the naive loop")
    numpy_snapshot.assert_match(out, f"test_masked_mean_dim{dim}")


@pytest.mark.points(1)
def test_masked_mean_empty_slice_is_nan(numpy_snapshot):
    tensor = torch.randn(2, 3)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = run_masked_mean(tensor, mask, dim=-1)
    assert torch.isfinite(out[0]), "a row with masked entries must be finite"
    assert torch.isnan(out[1]), "a row without masked entries is 0/0 = NaN (do not clamp the count)"
    numpy_snapshot.assert_match(out, "test_masked_mean_empty_slice_is_nan")


# Padding may hold NaN or -inf (e.g. log-probs of pad tokens): neither the value nor the gradient may see it.
PADDED = [[1.0, float("-inf"), 3.0], [float("nan"), 2.0, 4.0]]                  # (2, 3); masked out: -inf, NaN
PAD_MASK = [[True, False, True], [False, True, True]]
UPSTREAM = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]                                   # d loss / d out (not all equal)


def _padding_contract(reduce, expected_value, expected_grad) -> dict[str, torch.Tensor]:
    """`reduce(tensor, mask)` on PADDED: the value, and the gradient of its sum (UPSTREAM-weighted when the output
    has the input's shape), are the expected ones; a NaN or -inf that leaks (`tensor * mask`: NaN * 0 = NaN) fails.
    Returns {"value", "grad"} for the test's snapshot."""
    tensor = torch.tensor(PADDED, dtype=torch.float64, requires_grad=True)
    out = reduce(tensor, torch.tensor(PAD_MASK))
    torch.testing.assert_close(out.detach(), expected_value, msg="masked-out NaN/-inf leaked into the value")
    weights = torch.tensor(UPSTREAM, dtype=torch.float64)
    (out * (weights if out.shape == weights.shape else 1.0)).sum().backward()
    torch.testing.assert_close(tensor.grad, expected_grad, msg="masked-out NaN/-inf leaked into the gradient "
                                                                "(it must be finite, and 0 where masked out)")
    return {"value": out.detach(), "grad": tensor.grad}


def _whiten_oracle(shift_mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening written on the 4 selected entries only (a 1-D tensor: no padding anywhere), value and gradient."""
    selected = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)   # row-major order
    mean = selected.mean()
    var = ((selected - mean) ** 2).sum() / 3                                    # unbiased, n - 1 = 3
    out = (selected - mean) / torch.sqrt(var + 1e-8) + (0 if shift_mean else mean)
    (out * torch.tensor([1.0, 3.0, 5.0, 6.0], dtype=torch.float64)).sum().backward()  # UPSTREAM at those entries
    value, grad = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    index = torch.tensor(PAD_MASK)
    value[index], grad[index] = out.detach(), selected.grad
    return value, grad


@pytest.mark.points(1)
def test_masked_mean_ignores_nonfinite_masked_out_entries(numpy_snapshot):
    mask = torch.tensor(PAD_MASK, dtype=torch.float64)
    rows = _padding_contract(lambda t, m: run_masked_mean(t, m, dim=-1),
                             torch.tensor([2.0, 3.0], dtype=torch.float64),
                             mask / 2)                          # d mean / d x = mask / count (2 per row)
    every = _padding_contract(lambda t, m: run_masked_mean(t, m), torch.tensor(2.5, dtype=torch.float64), mask / 4)
    numpy_snapshot.assert_match({"rows_value": rows["value"], "rows_grad": rows["grad"], "all_value": every["value"],
                                 "all_grad": every["grad"]}, "test_masked_mean_ignores_nonfinite_masked_out_entries")


@pytest.mark.points(1)
def test_masked_mean_gradcheck(numpy_snapshot, tensor_and_mask):
    tensor, mask = tensor_and_mask
    x = tensor.double().requires_grad_()
    for dim in (None, 0, 1):
        assert torch.autograd.gradcheck(lambda t: run_masked_mean(t, mask, dim), (x,)), f"dim={dim}"
    # A constant passes gradcheck too: the value must also be right.
    torch.testing.assert_close(run_masked_mean(x, mask), x[mask].mean(), msg="value")
    numpy_snapshot.assert_match({f"dim{dim}": run_masked_mean(x, mask, dim) for dim in (None, 0, 1)},
                                "test_masked_mean_gradcheck")


# ---------------------------------------------------------------------------------------------------------
# masked_normalize
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("normalize_constant", [1.0, 42.0])
def test_masked_normalize(numpy_snapshot, tensor_and_mask, dim, normalize_constant):
    tensor, mask = tensor_and_mask
    out = run_masked_normalize(tensor=tensor, mask=mask, dim=dim, normalize_constant=normalize_constant)
    sums, _ = _reduce_over(tensor, mask, dim)
    expected = torch.tensor(sums) / normalize_constant
    assert out.shape == expected.shape, "wrong output shape"
    torch.testing.assert_close(out, expected, msg="masked_normalize differs from the naive loop")
    numpy_snapshot.assert_match(out, f"test_masked_normalize_dim{dim}_c{normalize_constant:g}")


@pytest.mark.points(1)
def test_masked_normalize_gradcheck(numpy_snapshot, tensor_and_mask):
    tensor, mask = tensor_and_mask
    x = tensor.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: run_masked_normalize(t, mask, -1, 7.0), (x,))
    assert torch.autograd.gradcheck(lambda t: run_masked_normalize(t, mask, None, 0.5), (x,))
    torch.testing.assert_close(run_masked_normalize(x, mask, None, 0.5), x[mask].sum() / 0.5, msg="value")
    numpy_snapshot.assert_match({"rows": run_masked_normalize(x, mask, -1, 7.0),
                                 "all": run_masked_normalize(x, mask, None, 0.5)}, "test_masked_normalize_gradcheck")


@pytest.mark.points(1)
def test_masked_normalize_ignores_nonfinite_masked_out_entries(numpy_snapshot):
    mask = torch.tensor(PAD_MASK, dtype=torch.float64)
    rows = _padding_contract(lambda t, m: run_masked_normalize(t, m, dim=-1, normalize_constant=2.0),
                             torch.tensor([2.0, 3.0], dtype=torch.float64),
                             mask / 2)                          # d (sum / c) / d x = mask / c
    every = _padding_contract(lambda t, m: run_masked_normalize(t, m, normalize_constant=4.0),
                              torch.tensor(2.5, dtype=torch.float64), mask / 4)
    numpy_snapshot.assert_match({"rows_value": rows["value"], "rows_grad": rows["grad"], "all_value": every["value"],
                                 "all_grad": every["grad"]},
                                "test_masked_normalize_ignores_nonfinite_masked_out_entries")


# ---------------------------------------------------------------------------------------------------------
# masked_whiten
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(numpy_snapshot, tensor_and_mask, shift_mean):
    tensor, mask = tensor_and_mask
    tensor = 3.0 * tensor + 1.5
    out = run_masked_whiten(values=tensor, mask=mask, shift_mean=shift_mean)
    selected = [v.item() for v, m in zip(tensor.flatten(), mask.flatten()) if m]
    n = len(selected)
    mean = sum(selected) / n
    var = sum((v - mean) ** 2 for v in selected) / (n - 1)                        # unbiased
    expected = torch.zeros_like(tensor)
    for b in range(tensor.shape[0]):
        for t in range(tensor.shape[1]):
            if mask[b, t]:
                expected[b, t] = (tensor[b, t].item() - mean) / math.sqrt(var + 1e-8) + (0 if shift_mean else mean)
    torch.testing.assert_close(out, expected, msg="masked_whiten differs from the naive formula")
    numpy_snapshot.assert_match(out, f"test_masked_whiten_shift{shift_mean}")


@pytest.mark.points(1)
def test_masked_whiten_gradcheck(numpy_snapshot, tensor_and_mask):
    tensor, mask = tensor_and_mask
    x = tensor.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: run_masked_whiten(t, mask, True), (x,))
    assert torch.autograd.gradcheck(lambda t: run_masked_whiten(t, mask, False), (x,))
    out = run_masked_whiten(x, mask, True)
    torch.testing.assert_close(out[mask].mean(), torch.zeros((), dtype=torch.float64), msg="whitened mean")
    torch.testing.assert_close(out[mask].var(), torch.ones((), dtype=torch.float64), msg="whitened variance")
    numpy_snapshot.assert_match({"shift": out, "no_shift": run_masked_whiten(x, mask, False)},
                                "test_masked_whiten_gradcheck")


@pytest.mark.points(1)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_ignores_nonfinite_masked_out_entries(numpy_snapshot, shift_mean):
    result = _padding_contract(lambda t, m: run_masked_whiten(t, m, shift_mean), *_whiten_oracle(shift_mean))
    numpy_snapshot.assert_match(result, f"test_masked_whiten_ignores_nonfinite_masked_out_entries_shift{shift_mean}")


def test_masked_whiten_needs_two_entries():
    with pytest.raises(ValueError):
        run_masked_whiten(torch.randn(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


# BEGIN INSTRUCTOR
# ---------------------------------------------------------------------------------------------------------
# The padding contract catches the mistakes it is written for (planted implementations; ungraded; instructor-only:
# the old whiten is right in value, so it stays out of the handout)
# ---------------------------------------------------------------------------------------------------------

def _whiten_before_the_fix(values, mask, shift_mean=True, eps=1e-8):
    """The reference masked_whiten of an earlier commit: right values, an all-NaN gradient with NaN padding."""
    mask = mask.bool()
    n = mask.sum()
    mean = torch.where(mask, values, 0).sum() / n
    var = torch.where(mask, (values - mean) ** 2, 0).sum() / (n - 1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    return (whitened if shift_mean else whitened + mean).masked_fill(~mask, 0.0)


@pytest.mark.parametrize("test, name, planted", [
    (test_masked_mean_ignores_nonfinite_masked_out_entries, "run_masked_mean",
     lambda tensor, mask, dim=None: (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)),
    (test_masked_normalize_ignores_nonfinite_masked_out_entries, "run_masked_normalize",
     lambda tensor, mask, dim=None, normalize_constant=1.0: (tensor * mask).sum(dim=dim) / normalize_constant),
    (lambda snapshot: test_masked_whiten_ignores_nonfinite_masked_out_entries(snapshot, True), "run_masked_whiten",
     _whiten_before_the_fix),
], ids=["mean: tensor * mask", "normalize: tensor * mask", "whiten: the old reference"])
def test_the_padding_contract_fails_on_a_planted_mistake(monkeypatch, numpy_snapshot, test, name, planted):
    monkeypatch.setitem(globals(), name, planted)
    with pytest.raises(AssertionError, match="leaked into the"):
        test(numpy_snapshot)
# END INSTRUCTOR
