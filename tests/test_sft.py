"""SFT: response-masked NLL and the gradient-accumulation micro-batch step."""
from __future__ import annotations

import pytest
import torch

from cs336_alignment.sft_step import sft_loss
from tests.adapters import run_sft_microbatch_train_step

PART = "2.3 SFT"


@pytest.fixture
def log_probs_and_mask():
    logits = torch.randn(4, 7, 11)                                             # (B, T, V)
    labels = torch.randint(0, 11, (4, 7))
    policy_log_probs = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)  # (B, T)
    response_mask = torch.zeros(4, 7, dtype=torch.bool)
    for b, (start, end) in enumerate([(2, 7), (3, 5), (1, 2), (4, 7)]):     # prompt, response, padding
        response_mask[b, start:end] = True
    return policy_log_probs, response_mask


class _TinyPolicy(torch.nn.Module):
    """A fake causal LM: next-token log-probs from the current token only (enough to have parameters)."""

    def __init__(self, vocab_size: int = 13, d: int = 8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, d)
        self.out = torch.nn.Linear(d, vocab_size)

    def forward(self, input_ids, labels):
        logits = self.out(torch.tanh(self.emb(input_ids)))                     # (B, T, V)
        return torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)   # (B, T)


# ---------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_sft_loss_hand_computed(numpy_snapshot):
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]])
    mask = torch.tensor([[False, True, True], [True, True, False]])
    # example 0: 2 + 3 = 5; example 1: 0.5 + 0.25 = 0.75; mean over the batch = 2.875
    torch.testing.assert_close(sft_loss(log_probs, mask), torch.tensor(2.875), msg="plain sum")
    torch.testing.assert_close(sft_loss(log_probs, mask, normalize_constant=5.0), torch.tensor(0.575),
                               msg="normalize_constant")
    numpy_snapshot.assert_match({"sum": sft_loss(log_probs, mask),
                                 "constant": sft_loss(log_probs, mask, normalize_constant=5.0)},
                                "test_sft_loss_hand_computed")


@pytest.mark.points(1)
def test_sft_loss_gradcheck(numpy_snapshot, log_probs_and_mask):
    log_probs, mask = log_probs_and_mask
    x = log_probs.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sft_loss(t, mask, 3.0), (x,))
    loss = sft_loss(x, mask, 3.0)
    loss.backward()
    numpy_snapshot.assert_match({"loss": loss, "grad": x.grad}, "test_sft_loss_gradcheck")


# ---------------------------------------------------------------------------------------------------------
# The micro-batch step
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.parametrize("gradient_accumulation_steps", [1, 4])
@pytest.mark.parametrize("normalize_constant", [1.0, 42.0])
def test_sft_microbatch_train_step(numpy_snapshot, log_probs_and_mask, gradient_accumulation_steps,
                                   normalize_constant):
    log_probs, mask = log_probs_and_mask
    policy_log_probs = log_probs.clone().requires_grad_()
    loss, metadata = run_sft_microbatch_train_step(policy_log_probs=policy_log_probs, response_mask=mask,
                                                   gradient_accumulation_steps=gradient_accumulation_steps,
                                                   normalize_constant=normalize_constant)
    assert loss.dim() == 0, "the loss is a 0-d tensor"
    assert isinstance(metadata, dict)
    B, T = log_probs.shape
    # Naive oracle: per example the masked sum of -log p, / normalize_constant; mean over B; / accumulation.
    per_example = [sum(-log_probs[b, t].item() for t in range(T) if mask[b, t]) / normalize_constant
                   for b in range(B)]
    expected_loss = sum(per_example) / B / gradient_accumulation_steps
    torch.testing.assert_close(loss, torch.tensor(expected_loss), msg="loss differs from the naive formula")
    expected_grad = -mask.float() / (normalize_constant * B * gradient_accumulation_steps)
    assert policy_log_probs.grad is not None, "the step must call backward()"
    torch.testing.assert_close(policy_log_probs.grad, expected_grad, msg="gradient differs")
    numpy_snapshot.assert_match({"loss": loss, "policy_log_probs_grad": policy_log_probs.grad},
                                f"test_sft_microbatch_train_step_gas{gradient_accumulation_steps}"
                                f"_c{normalize_constant:g}")


@pytest.mark.points(1)
def test_sft_microbatch_train_step_accumulates_grad(numpy_snapshot, log_probs_and_mask):
    log_probs, mask = log_probs_and_mask
    policy_log_probs = log_probs.clone().requires_grad_()
    run_sft_microbatch_train_step(policy_log_probs, mask, 2)
    once = policy_log_probs.grad.clone()
    run_sft_microbatch_train_step(policy_log_probs, mask, 2)
    torch.testing.assert_close(policy_log_probs.grad, 2 * once, msg="a second call must add to .grad")
    numpy_snapshot.assert_match({"once": once, "twice": policy_log_probs.grad},
                                "test_sft_microbatch_train_step_accumulates_grad")


@pytest.mark.points(2)
def test_sft_accumulation_8x1_equals_1x8(numpy_snapshot):
    """Invariance: 8 micro-batches of 1 with 8 accumulation steps == 1 micro-batch of 8 with 1 step."""
    policy = _TinyPolicy()
    input_ids = torch.randint(0, 13, (8, 6))
    labels = torch.randint(0, 13, (8, 6))
    mask = torch.zeros(8, 6, dtype=torch.bool)
    for b in range(8):
        mask[b, 1 + b % 3: 2 + b % 3 + b % 4] = True                          # different response lengths
    run_sft_microbatch_train_step(policy(input_ids, labels), mask, 1, normalize_constant=6.0)
    full = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    for b in range(8):
        run_sft_microbatch_train_step(policy(input_ids[b:b + 1], labels[b:b + 1]), mask[b:b + 1], 8,
                                      normalize_constant=6.0)
    for g_full, p in zip(full, policy.parameters()):
        torch.testing.assert_close(p.grad, g_full, msg="accumulated gradients differ")
    numpy_snapshot.assert_match({"full": torch.cat([g.flatten() for g in full]),
                                 "accumulated": torch.cat([p.grad.flatten() for p in policy.parameters()])},
                                "test_sft_accumulation_8x1_equals_1x8")
