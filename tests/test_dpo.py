"""DPO: the batched loss (sigmoid, cDPO label smoothing, IPO), implicit rewards, per-instance DPO with a model."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from cs336_alignment.dpo import dpo_implicit_rewards
from tests.adapters import run_compute_per_instance_dpo_loss, run_dpo_loss

PART = "5.1 DPO"


@pytest.fixture
def logps():
    """Summed response log-probs (B = 5) of the policy and the reference for chosen and rejected responses."""
    policy_chosen, policy_rejected = -20 + 5 * torch.randn(5), -20 + 5 * torch.randn(5)
    ref_chosen, ref_rejected = policy_chosen + torch.randn(5), policy_rejected + torch.randn(5)
    return policy_chosen, policy_rejected, ref_chosen, ref_rejected


def _h(pc, pr, rc, rr):
    """The log-ratio gap, one pair at a time."""
    return (pc - rc) - (pr - rr)


# ---------------------------------------------------------------------------------------------------------
# Batched losses
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_sigmoid(numpy_snapshot, logps, beta):
    loss, metrics = run_dpo_loss(*logps, beta=beta)
    rows = list(zip(*(t.tolist() for t in logps)))
    expected = sum(-math.log(1 / (1 + math.exp(-beta * _h(*row)))) for row in rows) / len(rows)   # DPO eq. 7
    torch.testing.assert_close(loss, torch.tensor(expected), msg="DPO loss differs from the formula")
    chosen = [beta * (pc - rc) for pc, _, rc, _ in rows]
    rejected = [beta * (pr - rr) for _, pr, _, rr in rows]
    torch.testing.assert_close(metrics["dpo/chosen_reward"], torch.tensor(sum(chosen) / 5))
    torch.testing.assert_close(metrics["dpo/rejected_reward"], torch.tensor(sum(rejected) / 5))
    torch.testing.assert_close(metrics["dpo/margin"], torch.tensor((sum(chosen) - sum(rejected)) / 5))
    torch.testing.assert_close(metrics["dpo/accuracy"], torch.tensor(sum(c > r for c, r in zip(chosen, rejected)) / 5))
    numpy_snapshot.assert_match({"loss": loss, **metrics}, f"test_dpo_loss_sigmoid_beta{beta:g}")


@pytest.mark.points(1)
def test_dpo_loss_is_log2_when_policy_equals_reference(numpy_snapshot, logps):
    pc, pr, _, _ = logps
    loss, metrics = run_dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.3)
    torch.testing.assert_close(loss, torch.tensor(math.log(2)), msg="h = 0 gives -log sigma(0) = log 2")
    assert metrics["dpo/margin"] == 0 and metrics["dpo/accuracy"] == 0
    numpy_snapshot.assert_match({"loss": loss, **metrics}, "test_dpo_loss_is_log2_when_policy_equals_reference")


@pytest.mark.points(2)
def test_cdpo_label_smoothing(numpy_snapshot, logps):
    eps, beta = 0.2, 0.1
    loss, _ = run_dpo_loss(*logps, beta=beta, label_smoothing=eps)
    rows = list(zip(*(t.tolist() for t in logps)))
    sig = lambda x: 1 / (1 + math.exp(-x))                                     # noqa: E731
    expected = sum(-(1 - eps) * math.log(sig(beta * _h(*row))) - eps * math.log(sig(-beta * _h(*row)))
                   for row in rows) / len(rows)                                # cDPO (Mitchell 2023, eq. 3)
    torch.testing.assert_close(loss, torch.tensor(expected), msg="conservative DPO")
    # cDPO's gradient vanishes at sigma(beta h) = 1 - eps instead of only at h = +infinity.
    h = torch.tensor([math.log((1 - eps) / eps) / beta], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    run_dpo_loss(h, zero, zero, zero, beta=beta, label_smoothing=eps)[0].backward()
    assert abs(h.grad.item()) < 1e-12, "cDPO's optimum is at sigma(beta h) = 1 - eps"
    numpy_snapshot.assert_match(loss, "test_cdpo_label_smoothing")


@pytest.mark.points(2)
def test_ipo_loss(numpy_snapshot, logps):
    beta = 0.1
    loss, _ = run_dpo_loss(*logps, beta=beta, loss_type="ipo")
    rows = list(zip(*(t.tolist() for t in logps)))
    expected = sum((_h(*row) - 1 / (2 * beta)) ** 2 for row in rows) / len(rows)   # IPO eq. 17, summed logps
    torch.testing.assert_close(loss, torch.tensor(expected), msg="IPO loss")
    numpy_snapshot.assert_match(loss, "test_ipo_loss")


@pytest.mark.points(1)
@pytest.mark.parametrize("loss_type,label_smoothing", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0)])
def test_dpo_loss_gradcheck(numpy_snapshot, logps, loss_type, label_smoothing):
    inputs = tuple(t.double().requires_grad_() for t in logps)
    assert torch.autograd.gradcheck(
        lambda *x: run_dpo_loss(*x, beta=0.2, loss_type=loss_type, label_smoothing=label_smoothing)[0], inputs)
    loss = run_dpo_loss(*inputs, beta=0.2, loss_type=loss_type, label_smoothing=label_smoothing)[0]
    loss.backward()
    numpy_snapshot.assert_match({"loss": loss, **{f"grad{i}": x.grad for i, x in enumerate(inputs)}},
                                f"test_dpo_loss_gradcheck_{loss_type}_ls{label_smoothing:g}")


@pytest.mark.points(1)
def test_dpo_metrics_are_detached(numpy_snapshot, logps):
    """The metrics are for logging: none may hold the graph (or a caller's .backward() would reach them)."""
    leaves = [x.clone().requires_grad_() for x in logps]
    loss, metrics = run_dpo_loss(*leaves, beta=0.1)
    assert loss.requires_grad, "the loss itself must carry the gradient"
    assert {"dpo/chosen_reward", "dpo/rejected_reward", "dpo/margin"} <= set(metrics)
    for key, value in metrics.items():
        assert not (isinstance(value, torch.Tensor) and value.requires_grad), f"metrics[{key!r}] is not detached"
    numpy_snapshot.assert_match({"loss": loss, **metrics}, "test_dpo_metrics_are_detached")


@pytest.mark.points(1)
def test_dpo_implicit_rewards(numpy_snapshot):
    out = dpo_implicit_rewards(torch.tensor([-3.0, -10.0]), torch.tensor([-4.0, -8.0]), beta=0.5)
    torch.testing.assert_close(out, torch.tensor([0.5, -1.0]), msg="beta * (log pi - log pi_ref)")
    numpy_snapshot.assert_match(out, "test_dpo_implicit_rewards")


# ---------------------------------------------------------------------------------------------------------
# Per-instance DPO with a model and the chat template
# ---------------------------------------------------------------------------------------------------------

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
CHOSEN = "3 + 4 = 7\n#### 7"
REJECTED = "He has 12 apples.\n#### 12"


def _tiny_lm(vocab_size: int, seed: int):
    """A tiny TransformerLM with weights drawn from our own generator (independent of the model's init)."""
    from cs336_alignment.lm.model import TransformerConfig, TransformerLM
    lm = TransformerLM(TransformerConfig(vocab_size=vocab_size, context_length=64, d_model=32, num_layers=2,
                                         num_heads=4, d_ff=64))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(lm.named_parameters()):
            if p.dim() >= 2:                                                   # leave RMSNorm gains at 1
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return lm


def _oracle_sequence_logp(lm, tokenizer, response: str) -> float:
    """Sum of log p(token) over the assistant tokens and their <|end|>, from the model's logits, one token at a time."""
    ids, assistant_mask = tokenizer.render([{"role": "user", "content": PROMPT},
                                            {"role": "assistant", "content": response}])
    with torch.no_grad():
        log_probs = torch.log_softmax(lm(torch.tensor([ids]))[0].double(), dim=-1)   # (L, V)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids)) if assistant_mask[t])


@pytest.mark.points(3)
def test_compute_per_instance_dpo_loss(numpy_snapshot):
    from cs336_alignment.lm.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
    lm, lm_ref = _tiny_lm(tokenizer.vocab_size, 1), _tiny_lm(tokenizer.vocab_size, 2)
    beta = 0.5
    loss = run_compute_per_instance_dpo_loss(lm=lm, lm_ref=lm_ref, tokenizer=tokenizer, beta=beta, prompt=PROMPT,
                                             response_chosen=CHOSEN, response_rejected=REJECTED)
    assert loss.dim() == 0, "a 0-d loss"
    h = ((_oracle_sequence_logp(lm, tokenizer, CHOSEN) - _oracle_sequence_logp(lm_ref, tokenizer, CHOSEN))
         - (_oracle_sequence_logp(lm, tokenizer, REJECTED) - _oracle_sequence_logp(lm_ref, tokenizer, REJECTED)))
    expected = math.log(1 + math.exp(-beta * h))
    torch.testing.assert_close(loss, torch.tensor(expected), atol=1e-4, rtol=1e-4, msg="per-instance DPO loss")
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters() if p.dim() >= 2), "gradients reach the policy"
    assert all(p.grad is None for p in lm_ref.parameters()), "the reference gets no gradient"
    numpy_snapshot.assert_match(loss, "test_compute_per_instance_dpo_loss", atol=1e-5)


@pytest.mark.points(1)
def test_per_instance_dpo_is_log2_against_itself(numpy_snapshot):
    from cs336_alignment.lm.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
    lm = _tiny_lm(tokenizer.vocab_size, 3)
    loss = run_compute_per_instance_dpo_loss(lm, copy.deepcopy(lm), tokenizer, 0.1, PROMPT, CHOSEN, REJECTED)
    torch.testing.assert_close(loss, torch.tensor(math.log(2)), atol=1e-5, rtol=0, msg="policy = reference")
    numpy_snapshot.assert_match(loss, "test_per_instance_dpo_is_log2_against_itself", atol=1e-5)


def test_sequence_log_probs_keeps_float64():
    """A float64 model's sequence log-prob stays float64 (an independent float64 sum agrees to 1e-10; a cast to
    float32 inside would leave ~1e-7)."""
    from cs336_alignment.dpo import sequence_log_probs
    from cs336_alignment.lm.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
    lm = _tiny_lm(tokenizer.vocab_size, 4).double()
    ids, assistant_mask = tokenizer.render([{"role": "user", "content": PROMPT},
                                            {"role": "assistant", "content": CHOSEN}])
    out = sequence_log_probs(lm, torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]),
                             torch.tensor([assistant_mask[1:]]))
    assert out.dtype == torch.float64, out.dtype
    expected = _oracle_sequence_logp(lm, tokenizer, CHOSEN)
    assert abs(out.item() - expected) < 1e-10, (out.item(), expected)
