"""Reward model: Bradley-Terry loss (margin, centering), accuracy, listwise losses, RewardModel read at EOS."""
from __future__ import annotations

import math

import pytest
import torch

from cs336_alignment.reward_model import plackett_luce_loss, reward_accuracy
from tests.adapters import run_bradley_terry_loss

PART = "3.1 Reward model"


def _neg_log_sigmoid(x: float) -> float:
    return math.log(1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------------
# Bradley-Terry loss and accuracy
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
def test_bradley_terry_loss_hand_computed(numpy_snapshot):
    chosen, rejected = torch.tensor([1.0, 0.0, 2.5]), torch.tensor([0.0, 2.0, 2.5])
    loss, metrics = run_bradley_terry_loss(chosen_rewards=chosen, rejected_rewards=rejected)
    expected = (_neg_log_sigmoid(1.0) + _neg_log_sigmoid(-2.0) + _neg_log_sigmoid(0.0)) / 3
    torch.testing.assert_close(loss, torch.tensor(expected), msg="-log sigma(r_c - r_r), mean over pairs")
    torch.testing.assert_close(metrics["rm/accuracy"], torch.tensor(1.5 / 3), msg="a tie counts 1/2")
    torch.testing.assert_close(metrics["rm/margin"], torch.tensor(-1 / 3), msg="mean r_c - r_r")
    # With a margin: -log sigma(r_c - r_r - m); a scalar or one margin per pair.
    loss_m, _ = run_bradley_terry_loss(chosen, rejected, margin=0.5)
    expected_m = (_neg_log_sigmoid(0.5) + _neg_log_sigmoid(-2.5) + _neg_log_sigmoid(-0.5)) / 3
    torch.testing.assert_close(loss_m, torch.tensor(expected_m), msg="scalar margin")
    loss_v, _ = run_bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0, 2.0]))
    expected_v = (_neg_log_sigmoid(0.0) + _neg_log_sigmoid(-2.0) + _neg_log_sigmoid(-2.0)) / 3
    torch.testing.assert_close(loss_v, torch.tensor(expected_v), msg="per-pair margin")
    # Reward centering: + coef * mean((r_c + r_r)^2) = 0.01 * (1 + 4 + 25) / 3
    loss_c, _ = run_bradley_terry_loss(chosen, rejected, center_coef=0.01)
    torch.testing.assert_close(loss_c, torch.tensor(expected + 0.01 * 30 / 3), msg="centering term")
    numpy_snapshot.assert_match({"loss": loss, "margin": loss_m, "margins": loss_v, "centered": loss_c},
                                "test_bradley_terry_loss")


@pytest.mark.points(1)
def test_bradley_terry_loss_gradcheck(numpy_snapshot):
    chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
    margin = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, r: run_bradley_terry_loss(c, r, margin, 0.05)[0], (chosen, rejected))
    loss = run_bradley_terry_loss(chosen, rejected, margin, 0.05)[0]
    loss.backward()
    numpy_snapshot.assert_match({"loss": loss, "grad_chosen": chosen.grad, "grad_rejected": rejected.grad},
                                "test_bradley_terry_loss_gradcheck")


@pytest.mark.points(1)
def test_bradley_terry_loss_is_shift_invariant_without_centering(numpy_snapshot):
    chosen, rejected = torch.randn(6), torch.randn(6)
    loss, _ = run_bradley_terry_loss(chosen, rejected)
    shifted, _ = run_bradley_terry_loss(chosen + 7.0, rejected + 7.0)
    torch.testing.assert_close(loss, shifted, msg="only differences matter")
    centered, _ = run_bradley_terry_loss(chosen + 7.0, rejected + 7.0, center_coef=0.01)
    assert centered > shifted + 1.0, "the centering term penalizes the shift"
    numpy_snapshot.assert_match({"loss": loss, "shifted": shifted, "centered": centered},
                                "test_bradley_terry_loss_is_shift_invariant_without_centering")


@pytest.mark.points(1)
def test_reward_accuracy(numpy_snapshot):
    chosen = torch.tensor([1.0, 2.0, 3.0, 0.0])
    rejected = torch.tensor([0.0, 2.0, 4.0, -1.0])
    torch.testing.assert_close(reward_accuracy(chosen, rejected), torch.tensor((1 + 0.5 + 0 + 1) / 4))
    numpy_snapshot.assert_match(reward_accuracy(chosen, rejected), "test_reward_accuracy")


# ---------------------------------------------------------------------------------------------------------
# Listwise: best-of-K and Plackett-Luce
# ---------------------------------------------------------------------------------------------------------

def _naive_plackett_luce(row: list[float], top_k: int) -> float:
    """-log of the probability of picking row[0], then row[1], ..., written out with exp and sums."""
    nll = 0.0
    for k in range(top_k):
        nll -= math.log(math.exp(row[k]) / sum(math.exp(r) for r in row[k:]))
    return nll


@pytest.mark.points(2)
@pytest.mark.parametrize("top_k", [1, 2, None])
def test_plackett_luce_loss(numpy_snapshot, top_k):
    ranked = torch.randn(3, 4)
    loss = plackett_luce_loss(ranked, top_k=top_k)
    k = 3 if top_k is None else top_k
    expected = sum(_naive_plackett_luce(row, k) for row in ranked.tolist()) / 3
    torch.testing.assert_close(loss, torch.tensor(expected), msg="Plackett-Luce NLL")
    x = ranked.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda r: plackett_luce_loss(r, top_k=top_k), (x,))
    numpy_snapshot.assert_match(loss, f"test_plackett_luce_loss_top{k}")


@pytest.mark.points(1)
def test_listwise_losses_reduce_to_bradley_terry_for_two(numpy_snapshot):
    chosen, rejected = torch.randn(5), torch.randn(5)
    bt, _ = run_bradley_terry_loss(chosen, rejected)
    torch.testing.assert_close(plackett_luce_loss(torch.stack([chosen, rejected], -1)), bt, msg="K = 2")
    ranked = torch.randn(5, 4)                                     # best-of-K = cross-entropy on the best
    torch.testing.assert_close(plackett_luce_loss(ranked, top_k=1),
                               torch.nn.functional.cross_entropy(ranked, torch.zeros(5, dtype=torch.long)))
    numpy_snapshot.assert_match({"bradley_terry": bt,
                                 "plackett_luce_k2": plackett_luce_loss(torch.stack([chosen, rejected], -1)),
                                 "top1": plackett_luce_loss(ranked, top_k=1)},
                                "test_listwise_losses_reduce_to_bradley_terry_for_two")


# ---------------------------------------------------------------------------------------------------------
# RewardModel
# ---------------------------------------------------------------------------------------------------------

def _tiny_config():
    from cs336_alignment.lm.model import TransformerConfig
    return TransformerConfig(vocab_size=40, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)


@pytest.mark.points(3)
def test_reward_model_reads_last_real_token_whatever_the_padding(numpy_snapshot):
    """Invariance 3: the score of a sequence does not change with padding side or amount."""
    from cs336_alignment.reward_model import RewardModel
    rm = RewardModel(_tiny_config()).eval()
    seqs = [torch.randint(1, 40, (n,)) for n in (5, 9, 3)]
    with torch.no_grad():
        # Oracle: each sequence alone, unpadded; the head applied to the trunk's hidden state at its last token.
        alone = torch.stack([rm.head(rm.trunk(s[None], return_hidden=True))[0, -1] for s in seqs])   # (3,)
        for pad_to in (9, 14):
            for side in ("right", "left"):
                ids = torch.zeros(3, pad_to, dtype=torch.long)
                mask = torch.zeros(3, pad_to, dtype=torch.bool)
                for b, s in enumerate(seqs):
                    span = slice(0, len(s)) if side == "right" else slice(pad_to - len(s), pad_to)
                    ids[b, span], mask[b, span] = s, True
                rewards = rm(ids, mask)
                assert rewards.shape == (3,), "one reward per sequence"
                torch.testing.assert_close(rewards, alone, atol=1e-5, rtol=1e-5, msg=f"{side} padding to {pad_to}")
        torch.testing.assert_close(rm(seqs[1][None]), alone[1:2], msg="no mask: the last position")
    with torch.no_grad():
        numpy_snapshot.assert_match({"alone": alone, "left_padded_to_14": rewards, "no_mask": rm(seqs[1][None])},
                                    "test_reward_model_reads_last_real_token_whatever_the_padding", atol=1e-5)


@pytest.mark.points(1)
def test_reward_model_from_lm_copies_the_trunk(numpy_snapshot):
    from cs336_alignment.lm.model import TransformerLM
    from cs336_alignment.reward_model import RewardModel
    lm = TransformerLM(_tiny_config())
    rm = RewardModel.from_lm(lm)
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(rm.trunk(ids, return_hidden=True), lm(ids, return_hidden=True))
        before = rm(ids)
        for p in lm.parameters():                                  # a copy, not shared weights
            p.add_(1.0)
        torch.testing.assert_close(rm(ids), before, msg="the reward model must not share the LM's weights")
    loss, _ = run_bradley_terry_loss(rm(ids[:1]), rm(ids[1:]))
    loss.backward()
    assert rm.head.weight.grad is not None and rm.trunk.layers[0].attn.q_proj.weight.grad is not None
    numpy_snapshot.assert_match({"rewards": before, "loss": loss, "head_grad": rm.head.weight.grad},
                                "test_reward_model_from_lm_copies_the_trunk", atol=1e-5)


def test_reward_model_likelihood_term_is_head_plus_a_times_mean_response_log_prob():
    """The optional term, against the formula written the naive way: full logits, log_softmax, token by token."""
    from cs336_alignment.reward_model import RewardModel
    torch.manual_seed(0)
    rm = RewardModel(_tiny_config(), likelihood_coef=0.7).double().eval()
    seqs = [torch.randint(1, 40, (n,)) for n in (6, 9, 4)]
    starts = [2, 5, 1]                                             # prompt lengths: the response is the rest

    def naive(s, start):
        with torch.no_grad():
            head = rm.head(rm.trunk(s[None], return_hidden=True))[0, -1]
            logp = torch.log_softmax(rm.trunk(s[None])[0], dim=-1)   # (T, V) from the LM head
        terms = [logp[t - 1, s[t]] for t in range(max(start, 1), len(s))]
        return head + 0.7 * sum(terms) / len(terms)

    oracle = torch.stack([naive(s, st) for s, st in zip(seqs, starts)])
    for side in ("right", "left"):
        ids = torch.zeros(3, 11, dtype=torch.long)
        mask = torch.zeros(3, 11, dtype=torch.bool)
        response = torch.zeros(3, 11, dtype=torch.bool)
        for b, (s, st) in enumerate(zip(seqs, starts)):
            first = 0 if side == "right" else 11 - len(s)
            ids[b, first:first + len(s)], mask[b, first:first + len(s)] = s, True
            response[b, first + st:first + len(s)] = True
        with torch.no_grad():
            torch.testing.assert_close(rm(ids, mask, response), oracle, msg=f"{side} padding")
    with pytest.raises(ValueError, match="response_mask"):
        rm(ids, mask)
    # a is learned: the Bradley-Terry loss reaches it.
    loss, _ = run_bradley_terry_loss(rm(ids[:1], mask[:1], response[:1]), rm(ids[1:2], mask[1:2], response[1:2]))
    loss.backward()
    assert rm.likelihood_coef.grad is not None and rm.likelihood_coef.grad != 0
    assert "likelihood_coef" in rm.state_dict()
    assert "likelihood_coef" not in RewardModel(_tiny_config()).state_dict(), "off by default"


def test_response_start_is_the_last_assistant_turn():
    from cs336_alignment.reward_model import response_start
    F_, T_ = False, True
    assert response_start([F_, F_, T_, T_]) == 2
    assert response_start([F_, T_, T_, F_, F_, T_, T_, T_]) == 5, "multi-turn: the last assistant turn"
    assert response_start([F_, T_, F_]) == 1, "a trailing non-assistant token is not the response"
    assert response_start([F_, F_]) == 0
