"""Policy losses: REINFORCE, GRPO clip, the GRPO micro-batch step (and Dr. GRPO), PPO terms, KL estimators."""
from __future__ import annotations

import math

import pytest
import torch

from cs336_alignment.policy_losses import AdaptiveKLController, compute_entropy_bonus, compute_ppo_policy_loss
from tests.adapters import run_compute_ppo_value_loss, run_kl_estimate
from tests.adapters_2025 import (run_compute_grpo_clip_loss, run_compute_naive_policy_gradient_loss,
                                 run_compute_policy_gradient_loss, run_grpo_microbatch_train_step)

PART = "4.2 Policy losses (REINFORCE, GRPO, PPO)"

B, T = 4, 6


@pytest.fixture
def batch():
    """Log-probs of sampled tokens, an old policy a little different from the current one, a response mask."""
    policy_log_probs = torch.log_softmax(torch.randn(B, T, 9), -1)[..., 0]   # (B, T)
    old_log_probs = policy_log_probs + 0.3 * torch.randn(B, T)
    raw_rewards = torch.rand(B, 1)
    advantages = torch.randn(B, 1)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (start, end) in enumerate([(1, 6), (2, 4), (0, 6), (3, 5)]):
        mask[b, start:end] = True
    return policy_log_probs, old_log_probs, raw_rewards, advantages, mask


class _TinyPolicy(torch.nn.Module):
    """A fake causal LM: next-token log-probs from the current token only (enough to have parameters)."""

    def __init__(self, vocab_size: int = 13, d: int = 8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, d)
        self.out = torch.nn.Linear(d, vocab_size)

    def forward(self, input_ids, labels):
        logits = self.out(torch.tanh(self.emb(input_ids)))                     # (B, T, V)
        return torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)   # (B, T)


def _naive_clip_loss(a, logp, old, eps):
    """Oracle: -min(rho A, clip(rho, 1 - eps, 1 + eps) A) for one token, in plain python."""
    rho = math.exp(logp - old)
    return -min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)


# ---------------------------------------------------------------------------------------------------------
# Per-token losses
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(1)
def test_compute_naive_policy_gradient_loss(numpy_snapshot, batch):
    policy_log_probs, _, raw_rewards, _, _ = batch
    loss = run_compute_naive_policy_gradient_loss(raw_rewards_or_advantages=raw_rewards,
                                                  policy_log_probs=policy_log_probs)
    expected = torch.tensor([[-raw_rewards[b, 0].item() * policy_log_probs[b, t].item() for t in range(T)]
                             for b in range(B)])
    torch.testing.assert_close(loss, expected, msg="naive policy-gradient loss")
    x = policy_log_probs.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda lp: run_compute_naive_policy_gradient_loss(raw_rewards.double(), lp), (x,))
    numpy_snapshot.assert_match(loss, "test_compute_naive_policy_gradient_loss")


@pytest.mark.points(3)
@pytest.mark.parametrize("cliprange", [0.1, 10.0])
def test_compute_grpo_clip_loss(numpy_snapshot, batch, cliprange):
    policy_log_probs, old_log_probs, _, advantages, _ = batch
    loss, metadata = run_compute_grpo_clip_loss(advantages=advantages, policy_log_probs=policy_log_probs,
                                                old_log_probs=old_log_probs, cliprange=cliprange)
    assert isinstance(metadata, dict)
    expected = torch.tensor([[_naive_clip_loss(advantages[b, 0].item(), policy_log_probs[b, t].item(),
                                               old_log_probs[b, t].item(), cliprange) for t in range(T)]
                             for b in range(B)])
    torch.testing.assert_close(loss, expected, msg="clip loss differs from the naive formula")
    numpy_snapshot.assert_match(loss, f"test_compute_grpo_clip_loss_clip{cliprange:g}")


@pytest.mark.points(1)
def test_compute_grpo_clip_loss_gradcheck(numpy_snapshot, batch):
    policy_log_probs, old_log_probs, _, advantages, _ = batch
    x = policy_log_probs.double().requires_grad_()
    # cliprange 0.2: some tokens are clipped (zero gradient) and none sits on a kink (|rho - 1| = 0.2 exactly).
    f = lambda lp: run_compute_grpo_clip_loss(advantages.double(), lp, old_log_probs.double(), 0.2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    loss, metadata = run_compute_grpo_clip_loss(advantages, x.float(), old_log_probs, 0.2)
    assert metadata["clipped"].any() and not metadata["clipped"].all(), "fixture should clip some tokens"
    numpy_snapshot.assert_match({"loss": loss, "clipped": metadata["clipped"]}, "test_compute_grpo_clip_loss_gradcheck")


@pytest.mark.points(2)
@pytest.mark.parametrize("loss_type", ["no_baseline", "reinforce_with_baseline", "grpo_clip"])
def test_compute_policy_gradient_loss(numpy_snapshot, batch, loss_type):
    policy_log_probs, old_log_probs, raw_rewards, advantages, _ = batch
    loss, metadata = run_compute_policy_gradient_loss(policy_log_probs=policy_log_probs, loss_type=loss_type,
                                                      raw_rewards=raw_rewards, advantages=advantages,
                                                      old_log_probs=old_log_probs, cliprange=0.2)
    assert isinstance(metadata, dict)
    weight = raw_rewards if loss_type == "no_baseline" else advantages
    if loss_type == "grpo_clip":
        expected = torch.tensor([[_naive_clip_loss(weight[b, 0].item(), policy_log_probs[b, t].item(),
                                                   old_log_probs[b, t].item(), 0.2) for t in range(T)]
                                 for b in range(B)])
    else:
        expected = -weight * policy_log_probs
    torch.testing.assert_close(loss, expected, msg=f"{loss_type} loss")
    numpy_snapshot.assert_match(loss, f"test_compute_policy_gradient_loss_{loss_type}")


@pytest.mark.points(1)
def test_compute_policy_gradient_loss_grpo_no_clip_hand_example(numpy_snapshot):
    """GRPO-No-Clip (CS336 a5 grpo_off_policy_clip_ablation): -rho * A, rho = pi / pi_old, never clipped.
    Hand example: ratios 2, 1/2 and 1 (far outside a 0.2 clip range for the first two), advantages +1 and -3."""
    old = torch.log(torch.tensor([[0.2, 0.4, 0.5], [0.1, 0.3, 0.6]], dtype=torch.float64))
    new = torch.log(torch.tensor([[0.4, 0.2, 0.5], [0.2, 0.15, 0.6]], dtype=torch.float64)).requires_grad_()
    advantages = torch.tensor([[1.0], [-3.0]], dtype=torch.float64)
    loss, metadata = run_compute_policy_gradient_loss(policy_log_probs=new, loss_type="grpo_no_clip",
                                                      raw_rewards=None, advantages=advantages,
                                                      old_log_probs=old, cliprange=0.2)
    expected = torch.tensor([[-2.0, -0.5, -1.0], [6.0, 1.5, 3.0]], dtype=torch.float64)  # -rho * A
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()  # d(-rho A)/d log pi = -rho A: the same numbers
    torch.testing.assert_close(new.grad, expected)
    assert not metadata["clipped"].any()
    torch.testing.assert_close(metadata["ratio"], torch.tensor([[2.0, 0.5, 1.0], [2.0, 0.5, 1.0]],
                                                               dtype=torch.float64))
    # The clipped loss differs exactly where the clip binds (ratio 2 with A > 0; ratio 1/2 with A < 0) ...
    clipped, _ = run_compute_policy_gradient_loss(policy_log_probs=new.detach(), loss_type="grpo_clip",
                                                  raw_rewards=None, advantages=advantages, old_log_probs=old,
                                                  cliprange=0.2)
    assert (clipped != loss.detach()).tolist() == [[True, False, False], [False, True, False]]
    # ... and cliprange is ignored (and may be None), old_log_probs is required.
    again, _ = run_compute_policy_gradient_loss(policy_log_probs=new.detach(), loss_type="grpo_no_clip",
                                                raw_rewards=None, advantages=advantages, old_log_probs=old,
                                                cliprange=None)
    torch.testing.assert_close(again, loss.detach())
    with pytest.raises(ValueError, match="old_log_probs"):
        run_compute_policy_gradient_loss(policy_log_probs=new, loss_type="grpo_no_clip", raw_rewards=None,
                                         advantages=advantages, old_log_probs=None, cliprange=0.2)
    numpy_snapshot.assert_match({"loss": loss, "grad": new.grad, "ratio": metadata["ratio"], "clipped": clipped},
                                "test_compute_policy_gradient_loss_grpo_no_clip_hand_example")


def test_grpo_microbatch_train_step_grpo_no_clip(batch):
    """The micro-batch step with grpo_no_clip: naive loop oracle for loss and gradient; clipfrac 0."""
    policy_log_probs, old_log_probs, _, advantages, mask = batch
    x = policy_log_probs.clone().requires_grad_()
    loss, metadata = run_grpo_microbatch_train_step(policy_log_probs=x, response_mask=mask,
                                                    gradient_accumulation_steps=1, loss_type="grpo_no_clip",
                                                    advantages=advantages, old_log_probs=old_log_probs)
    y = policy_log_probs.clone().requires_grad_()
    total = 0.0
    for b in range(B):
        tokens = [t for t in range(T) if mask[b, t]]
        total = total - (torch.exp(y[b, tokens] - old_log_probs[b, tokens]) * advantages[b, 0]).mean()
    (total / B).backward()
    torch.testing.assert_close(loss, (total / B).detach())
    torch.testing.assert_close(x.grad, y.grad)
    assert float(metadata["policy/clipfrac"]) == 0.0 and "policy/approx_kl" in metadata


# ---------------------------------------------------------------------------------------------------------
# GRPO micro-batch step
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(3)
@pytest.mark.parametrize("loss_type", ["no_baseline", "reinforce_with_baseline", "grpo_clip"])
def test_grpo_microbatch_train_step(numpy_snapshot, batch, loss_type):
    policy_log_probs, old_log_probs, raw_rewards, advantages, mask = batch
    x = policy_log_probs.clone().requires_grad_()
    loss, metadata = run_grpo_microbatch_train_step(policy_log_probs=x, response_mask=mask,
                                                    gradient_accumulation_steps=2, loss_type=loss_type,
                                                    raw_rewards=raw_rewards, advantages=advantages,
                                                    old_log_probs=old_log_probs, cliprange=0.2)
    assert loss.dim() == 0 and isinstance(metadata, dict)
    # Oracle: per-sequence mean over its response tokens, mean over the batch, / 2 accumulation steps.
    y = policy_log_probs.clone().requires_grad_()
    total = 0.0
    for b in range(B):
        a = (raw_rewards if loss_type == "no_baseline" else advantages)[b, 0]
        tokens = [t for t in range(T) if mask[b, t]]
        if loss_type == "grpo_clip":
            rho = torch.exp(y[b, tokens] - old_log_probs[b, tokens])
            per_token = -torch.minimum(rho * a, torch.clamp(rho, 0.8, 1.2) * a)
        else:
            per_token = -a * y[b, tokens]
        total = total + per_token.sum() / len(tokens)
    expected = total / B / 2
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), msg="loss differs from the naive loop")
    torch.testing.assert_close(x.grad, y.grad, msg="gradient differs from the naive loop's")
    numpy_snapshot.assert_match({"loss": loss, "policy_log_probs_grad": x.grad},
                                f"test_grpo_microbatch_train_step_{loss_type}")


@pytest.mark.points(2)
@pytest.mark.parametrize("length_normalization", ["sequence", "constant"])
def test_grpo_accumulation_8x1_equals_1x8(numpy_snapshot, length_normalization):
    """Invariance 7: 8 micro-batches of 1 with 8 accumulation steps == 1 micro-batch of 8 with 1 step."""
    policy = _TinyPolicy()
    input_ids, labels = torch.randint(0, 13, (8, 6)), torch.randint(0, 13, (8, 6))
    mask = torch.zeros(8, 6, dtype=torch.bool)
    for b in range(8):
        mask[b, 1 + b % 3: 2 + b % 3 + b % 4] = True
    advantages = torch.randn(8, 1)
    with torch.no_grad():
        old = policy(input_ids, labels) + 0.1 * torch.randn(8, 6)
    kwargs = dict(loss_type="grpo_clip", advantages=advantages, old_log_probs=old, cliprange=0.2)
    extra = dict(length_normalization=length_normalization, max_response_length=6)
    from cs336_alignment.grpo_loss import grpo_microbatch_train_step
    grpo_microbatch_train_step(policy(input_ids, labels), mask, 1, **kwargs, **extra)
    full = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    for b in range(8):
        kwargs.update(advantages=advantages[b:b + 1], old_log_probs=old[b:b + 1])
        grpo_microbatch_train_step(policy(input_ids[b:b + 1], labels[b:b + 1]), mask[b:b + 1], 8, **kwargs, **extra)
    for g_full, p in zip(full, policy.parameters()):
        torch.testing.assert_close(p.grad, g_full, msg="accumulated gradients differ")
    numpy_snapshot.assert_match({"full": torch.cat([g.flatten() for g in full]),
                                 "accumulated": torch.cat([p.grad.flatten() for p in policy.parameters()])},
                                f"test_grpo_accumulation_8x1_equals_1x8_{length_normalization}")


@pytest.mark.points(2)
def test_dr_grpo_constant_normalizer_is_length_independent(numpy_snapshot):
    """Invariance 8: under Dr. GRPO's constant normalizer a token's gradient does not depend on its sequence's
    length; under GRPO's per-sequence mean it does (1 / |o_i|)."""
    from cs336_alignment.grpo_loss import grpo_microbatch_train_step
    mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, True]])   # lengths 2 and 5
    advantages = torch.tensor([[1.0], [1.0]])
    grads = {}
    for normalization in ("sequence", "constant"):
        x = torch.randn(2, 5).requires_grad_()
        loss, _ = grpo_microbatch_train_step(x, mask, 3, "reinforce_with_baseline", advantages=advantages,
                                             length_normalization=normalization, max_response_length=8)
        grads[normalization] = x.grad
    g = grads["constant"]
    torch.testing.assert_close(g[mask], torch.full((7,), -1.0 / (2 * 8 * 3)), msg="-A / (B * L_max * steps)")
    assert (g[~mask] == 0).all()
    s = grads["sequence"]
    torch.testing.assert_close(s[0, :2], torch.full((2,), -1.0 / (2 * 2 * 3)), msg="GRPO: 1 / |o_i|")
    torch.testing.assert_close(s[1], torch.full((5,), -1.0 / (2 * 5 * 3)), msg="GRPO: 1 / |o_i|")
    numpy_snapshot.assert_match(grads, "test_dr_grpo_constant_normalizer_is_length_independent")


@pytest.mark.points(2)
def test_ratio_is_one_before_first_update(numpy_snapshot):
    """Invariance 5: with the rollout policy's own log-probs, rho == 1 exactly, nothing is clipped, and the
    clipped surrogate has the REINFORCE gradient."""
    policy = _TinyPolicy()
    input_ids, labels = torch.randint(0, 13, (4, 6)), torch.randint(0, 13, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.bool)
    advantages = torch.randn(4, 1)
    with torch.no_grad():
        old = policy(input_ids, labels)                                        # at rollout time
    new = policy(input_ids, labels)                                            # first update, same weights
    loss, metadata = run_compute_grpo_clip_loss(advantages, new, old, 0.2)
    assert (metadata["ratio"] == 1).all(), "ratio exactly 1"
    assert not metadata["clipped"].any(), "nothing clipped"
    ppo_loss, ppo_metrics = compute_ppo_policy_loss(advantages.expand(4, 6), new, old, mask, 0.2)
    assert ppo_metrics["policy/clipfrac"] == 0 and ppo_metrics["policy/approx_kl"] == 0
    x = new.detach().requires_grad_()
    run_compute_grpo_clip_loss(advantages, x, old, 0.2)[0].sum().backward()
    y = new.detach().requires_grad_()
    run_compute_naive_policy_gradient_loss(advantages, y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, msg="at rho = 1 the gradient is REINFORCE's")
    numpy_snapshot.assert_match({"loss": loss, "ratio": metadata["ratio"], "grad": x.grad},
                                "test_ratio_is_one_before_first_update")


# ---------------------------------------------------------------------------------------------------------
# PPO: policy, value, entropy
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
def test_ppo_policy_loss(numpy_snapshot, batch):
    policy_log_probs, old_log_probs, _, _, mask = batch
    advantages = torch.randn(B, T)
    loss, metrics = compute_ppo_policy_loss(advantages, policy_log_probs, old_log_probs, mask, 0.2)
    terms, clipped, kls = [], [], []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                a, lp, old = advantages[b, t].item(), policy_log_probs[b, t].item(), old_log_probs[b, t].item()
                terms.append(_naive_clip_loss(a, lp, old, 0.2))
                clipped.append(_naive_clip_loss(a, lp, old, 0.2) > -math.exp(lp - old) * a)
                kls.append(math.exp(lp - old) - 1 - (lp - old))                 # k3 of KL(old || new)
    torch.testing.assert_close(loss, torch.tensor(sum(terms) / len(terms)), msg="token-mean clip loss")
    torch.testing.assert_close(metrics["policy/clipfrac"], torch.tensor(sum(clipped) / len(clipped)))
    torch.testing.assert_close(metrics["policy/approx_kl"], torch.tensor(sum(kls) / len(kls)))
    x = policy_log_probs.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda lp: compute_ppo_policy_loss(advantages.double(), lp, old_log_probs.double(), mask, 0.2)[0], (x,))
    numpy_snapshot.assert_match({"loss": loss, **metrics}, "test_ppo_policy_loss")


@pytest.mark.points(2)
def test_compute_ppo_value_loss(numpy_snapshot, batch):
    *_, mask = batch
    values, old_values, returns = torch.randn(B, T), torch.randn(B, T), torch.randn(B, T)
    loss, metrics = run_compute_ppo_value_loss(values=values, old_values=old_values, returns=returns,
                                               response_mask=mask, cliprange_value=0.2)
    terms, clipped = [], []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                v, v_old, r = values[b, t].item(), old_values[b, t].item(), returns[b, t].item()
                v_clip = min(max(v, v_old - 0.2), v_old + 0.2)
                terms.append(0.5 * max((v - r) ** 2, (v_clip - r) ** 2))
                clipped.append((v_clip - r) ** 2 > (v - r) ** 2)
    torch.testing.assert_close(loss, torch.tensor(sum(terms) / len(terms)), msg="clipped value loss")
    torch.testing.assert_close(metrics["value/clipfrac"], torch.tensor(sum(clipped) / len(clipped)))
    r, v = returns[mask], values[mask]
    explained = 1 - (r - v).var(unbiased=False) / r.var(unbiased=False)
    torch.testing.assert_close(metrics["value/explained_variance"], explained, msg="explained variance")
    x = values.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda val: run_compute_ppo_value_loss(val, old_values.double(), returns.double(), mask, 0.2)[0], (x,))
    numpy_snapshot.assert_match({"loss": loss, **metrics}, "test_compute_ppo_value_loss")


@pytest.mark.points(1)
def test_entropy_bonus(numpy_snapshot):
    entropy = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, metrics = compute_entropy_bonus(entropy, mask)
    torch.testing.assert_close(loss, torch.tensor(-2.0), msg="minus the mean entropy over response tokens")
    torch.testing.assert_close(metrics["policy/entropy"], torch.tensor(2.0))
    x = entropy.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda e: compute_entropy_bonus(e, mask)[0], (x,))
    numpy_snapshot.assert_match({"loss": loss, "entropy": metrics["policy/entropy"]}, "test_entropy_bonus")


# ---------------------------------------------------------------------------------------------------------
# KL estimators and the adaptive KL coefficient
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def two_categoricals():
    p = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)      # pi (the sampling distribution)
    q = torch.tensor([0.15, 0.15, 0.3, 0.2, 0.2], dtype=torch.float64)      # pi_ref
    return p, q, float((p * (p / q).log()).sum())                           # exact KL(p || q)


@pytest.mark.points(1)
def test_kl_estimate_hand_computed(numpy_snapshot):
    log_p, log_q = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])   # r = q / p = 0.5
    torch.testing.assert_close(run_kl_estimate(log_p, log_q, "k1"), torch.tensor([math.log(2)]))
    torch.testing.assert_close(run_kl_estimate(log_p, log_q, "k2"), torch.tensor([0.5 * math.log(2) ** 2]))
    torch.testing.assert_close(run_kl_estimate(log_p, log_q, "k3"), torch.tensor([0.5 - 1 + math.log(2)]))
    numpy_snapshot.assert_match({kind: run_kl_estimate(log_p, log_q, kind) for kind in ("k1", "k2", "k3")},
                                "test_kl_estimate_hand_computed")


@pytest.mark.points(2)
def test_kl_estimators_expectation_and_sample_mean(numpy_snapshot, two_categoricals):
    p, q, kl = two_categoricals
    log_p, log_q = p.log(), q.log()
    # Exact expectations under p: k1 and k3 are unbiased.
    for kind in ("k1", "k3"):
        expectation = (p * run_kl_estimate(log_p, log_q, kind)).sum().item()
        assert abs(expectation - kl) < 1e-12, f"E_p[{kind}] must equal KL(p || q)"
    # Sample means converge: 200k samples from p, within 4 standard errors (k2: biased, within 10%).
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    for kind in ("k1", "k2", "k3"):
        estimates = run_kl_estimate(log_p[samples], log_q[samples], kind)
        stderr = estimates.std().item() / math.sqrt(len(samples))
        tolerance = 0.1 * kl if kind == "k2" else 4 * stderr
        assert abs(estimates.mean().item() - kl) < tolerance, f"{kind} sample mean"
    k3 = run_kl_estimate(log_p[samples], log_q[samples], "k3")
    k1 = run_kl_estimate(log_p[samples], log_q[samples], "k1")
    assert k3.std() < k1.std(), "k3 has lower variance than k1 here"
    numpy_snapshot.assert_match(
        {**{f"expectation_{kind}": (p * run_kl_estimate(log_p, log_q, kind)).sum() for kind in ("k1", "k2", "k3")},
         **{f"sample_mean_{kind}": run_kl_estimate(log_p[samples], log_q[samples], kind).double().mean()
            for kind in ("k1", "k2", "k3")}}, "test_kl_estimators_expectation_and_sample_mean")


@pytest.mark.points(1)
def test_k3_is_nonnegative(numpy_snapshot):
    log_p, log_q = 3 * torch.randn(1000), 3 * torch.randn(1000)
    assert (run_kl_estimate(log_p, log_q, "k3") >= 0).all()
    assert (run_kl_estimate(log_p, log_q, "k2") >= 0).all()
    assert (run_kl_estimate(log_p, log_q, "k1") < 0).any(), "k1 can be negative (sanity check of the fixture)"
    x = log_p[:5].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda lp: run_kl_estimate(lp, log_q[:5].double(), "k3"), (x,))
    numpy_snapshot.assert_match({kind: run_kl_estimate(log_p, log_q, kind) for kind in ("k1", "k2", "k3")},
                                "test_k3_is_nonnegative")


@pytest.mark.points(1)
def test_adaptive_kl_controller(numpy_snapshot):
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(current_kl=12.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))   # clipped +0.2
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(current_kl=6.6, n_steps=256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(current_kl=0.0, n_steps=100) == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))    # clipped -0.2
    assert ctl.value == pytest.approx(0.1 * 0.998)
    numpy_snapshot.assert_match(
        {"high": AdaptiveKLController(value=0.1, target=6.0, horizon=10000).update(current_kl=12.0, n_steps=256),
         "near": AdaptiveKLController(value=0.1, target=6.0, horizon=10000).update(current_kl=6.6, n_steps=256),
         "value_after_low": ctl.value}, "test_adaptive_kl_controller")


def test_policy_gradient_loss_rejects_missing_arguments(batch):
    policy_log_probs, *_ = batch
    with pytest.raises(ValueError):
        run_compute_policy_gradient_loss(policy_log_probs, "grpo_clip", None, None, None, None)
    with pytest.raises(ValueError):
        run_compute_policy_gradient_loss(policy_log_probs, "not_a_loss", None, None, None, None)
    with pytest.raises(ValueError):                            # (B,) would silently broadcast along T
        run_compute_naive_policy_gradient_loss(torch.ones(B), policy_log_probs)
