"""The fast paths give the numbers of the readable forms they replace: RoPE as one complex multiplication, AdamW
on lists of parameters (torch._foreach_*), GRPO's first optimizer step reusing its own forward for the old
log-probs; the plain log-prob path against the fused kernel on our model (`bench peers --variant plain-logprobs`);
and `bench peers` (its clocks, and it skips cleanly without TRL). The oracles are the old forms, written out here."""
from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

from cs336_alignment.bench import clocks
from cs336_alignment.bench import peers as bench_peers
from cs336_alignment.lm.checkpoint import load_model, save_checkpoint
from cs336_alignment.logprobs import get_response_log_probs, naive_entropy
from cs336_alignment.lm.model import RotaryPositionalEmbedding, TransformerConfig, TransformerLM
from cs336_alignment.lm.nn_utils import AdamW
from cs336_alignment.train import grpo


def rope_pairs(rope: RotaryPositionalEmbedding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The interleaved pair rotation as the course writes it (Su et al. 2021, eq. 34)."""
    cos, sin = rope.cos[positions].to(x.dtype), rope.sin[positions].to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_rope_gives_the_pair_formula_bits_forward_and_backward(dtype):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(10000.0, 16, 64)
    # a (B, T, H, dh) projection viewed as (B, H, T, dh), as the attention passes it: not contiguous
    x = torch.randn(3, 20, 4, 16, dtype=dtype).transpose(1, 2).requires_grad_()
    positions = torch.randint(0, 64, (3, 1, 20))
    upstream = torch.randn(3, 4, 20, 16, dtype=dtype)
    fast = rope(x, positions)
    (grad_fast,) = torch.autograd.grad(fast, x, upstream)
    slow = rope_pairs(rope, x, positions)
    (grad_slow,) = torch.autograd.grad(slow, x, upstream)
    assert torch.equal(fast, slow) and torch.equal(grad_fast, grad_slow)
    # and the rotation itself, in float64: |x| per pair is kept and position 0 is the identity
    pairs = fast.detach().double().unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pairs, x.detach().double().unflatten(-1, (-1, 2)).norm(dim=-1))
    assert torch.equal(rope(x, torch.zeros_like(positions)), x)


def test_rope_inputs_that_are_not_complex_views_take_the_pair_formula():
    rope = RotaryPositionalEmbedding(10000.0, 8, 16)
    base = torch.randn(2, 5, 9)
    x = base[..., 1:]  # odd storage offset: not viewable as complex
    positions = torch.arange(5)
    assert torch.equal(rope(x, positions), rope_pairs(rope, x, positions))
    bf16 = torch.randn(2, 5, 8).bfloat16()
    assert torch.equal(rope(bf16, positions), rope_pairs(rope, bf16, positions))


class LoopAdamW(torch.optim.Optimizer):
    """The per-parameter AdamW loop that nn_utils.AdamW replaced (same order of operations)."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["step"] += 1
                t, m, v, g = state["step"], state["m"], state["v"], p.grad
                p.mul_(1 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


def test_list_adamw_gives_the_per_parameter_loop_bits_and_torch_adamw_values():
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    start = [torch.randn(s) for s in shapes]
    runs = {}
    for name, cls in (("ours", AdamW), ("loop", LoopAdamW), ("torch", torch.optim.AdamW)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        g = torch.Generator().manual_seed(1)
        for step in range(6):
            for i, p in enumerate(params):  # the last parameter skips step 2: its step count falls behind
                p.grad = None if (i == 2 and step == 2) else torch.randn(p.shape, generator=g)
            opt.step()
        runs[name] = params
    for ours, loop, ref in zip(runs["ours"], runs["loop"], runs["torch"]):
        assert torch.equal(ours, loop)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_grpo_first_step_old_log_probs_are_the_sampling_policys(tmp_path, monkeypatch):
    """Epoch 0's first optimizer step takes its old log-probs from its own forward (no extra no-grad pass);
    they equal a no-grad forward of the sampling policy bit for bit, and later steps still get stored ones."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=512, context_length=64, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    init = tmp_path / "init.pt"
    save_checkpoint(TransformerLM(config), None, 0, init, model_config=dataclasses.asdict(config))
    calls = []  # (grad enabled, input_ids) of every policy forward in the update phase
    olds = []   # old_log_probs passed to each micro-batch's backward

    def recording_log_probs(model, input_ids, labels, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), input_ids.clone(), labels.clone()))
        return get_response_log_probs(model, input_ids, labels, *args, **kwargs)

    def recording_backward(log_probs, *args, **kwargs):
        olds.append(kwargs["old_log_probs"].clone())
        return real_backward(log_probs, *args, **kwargs)

    real_backward = grpo.policy_and_kl_backward
    monkeypatch.setattr(grpo, "get_response_log_probs", recording_log_probs)
    monkeypatch.setattr(grpo, "policy_and_kl_backward", recording_backward)
    cfg = grpo.GRPOConfig(init=str(init), out=str(tmp_path / "run"), num_steps=1, prompts_per_step=2, group_size=4,
                          epochs_per_rollout_batch=2, minibatches=2, micro_batch_size=2, n_problems=16,
                          n_eval_problems=0, max_new_tokens=3, warmup_steps=0, eval_every=100, quiet=True,
                          drop_zero_variance_groups=False)
    grpo.train(cfg, reward_fn=lambda response, truth: {"reward": float(len(response) % 2)})
    no_grad = [(ids, labels) for grad, ids, labels in calls if not grad]
    with_grad = [(ids, labels) for grad, ids, labels in calls if grad]
    assert len(with_grad) == 8 and len(no_grad) == 2  # 4 micro-batches x 2 epochs; only minibatch 2 pre-computed
    policy, _ = load_model(str(init))
    with torch.no_grad():
        for (ids, labels), old in zip(with_grad[:2], olds[:2]):  # the first optimizer step's micro-batches
            assert torch.equal(old, get_response_log_probs(policy, ids, labels)["log_probs"])
    assert all(old.abs().sum() > 0 for old in olds)  # every step had stored or reused old log-probs


def test_bench_peers_skips_without_trl(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    assert bench_peers.peers_missing() is not None
    from cs336_alignment.bench.cli import main
    assert main(["peers"]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow  # ~30 s: loads both models four times and times every row once
def test_bench_peers_runs_and_both_sides_agree(capsys):
    pytest.importorskip("trl")
    from cs336_alignment.bench.cli import main
    assert main(["peers", "--batch-size", "4", "--repeats", "2", "--prompts", "4", "--new-tokens", "4",
                 "--memory-steps", "0", "--variant", "plain-logprobs"]) == 0
    out = capsys.readouterr().out
    assert "median thread CPU time" in out and "vs ours" in out and "padded positions" in out
    for row in ("fwd+bwd", "sft", "dpo", "grpo", "sample"):
        assert f"\n{row} " in out
    diffs = [float(part.split()[-1].rstrip(",")) for line in out.splitlines() if "loss rel diff" in line
             for part in [line.split("loss rel diff")[1].split(", grad norm")[0]]]
    assert len(diffs) == 4 and max(diffs) < 1e-4  # same weights, same batches: the same losses step for step


def test_fast_kernels_stay_within_rounding_of_the_course_forms():
    """use_fast_kernels (F.silu, rsqrt) changes only float rounding: logits and gradients within 1e-5 (float32;
    RMSNorm computes in float32 whatever the dtype); the two formulas agree in float64 within 1e-12."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=96)
    ids = torch.randint(0, 64, (3, 16))
    for dtype, tol in ((torch.float32, 1e-5),):
        course = TransformerLM(config).to(dtype)
        fast = TransformerLM(config).to(dtype)
        fast.load_state_dict(course.state_dict())
        assert not any(getattr(m, "fast", False) for m in fast.modules())
        fast.use_fast_kernels()
        outs = []
        for model in (course, fast):
            logits = model(ids)
            (grad,) = torch.autograd.grad(logits.pow(2).mean(), model.layers[0].ffn.w1.weight)
            outs.append((logits.detach(), grad))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=tol, atol=tol)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=tol, atol=tol)
    x = torch.randn(1000, dtype=torch.float64) * 5
    torch.testing.assert_close(torch.nn.functional.silu(x), x / (1 + torch.exp(-x)), rtol=1e-12, atol=1e-12)
    ms = x.pow(2).mean() + 1e-5
    torch.testing.assert_close(x * torch.rsqrt(ms), x / torch.sqrt(ms), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_plain_and_fused_log_prob_paths_agree_on_the_transformer(dtype, tol):
    """Both paths of get_response_log_probs on a TransformerLM: log-probs, entropies and every parameter's gradient
    agree within rounding, and both match the naive formula on the model's own logits."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=96, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=96)
    model = TransformerLM(config).to(dtype)
    ids = torch.randint(0, 96, (3, 16))
    labels = torch.roll(ids, -1, dims=1)
    outs = []
    for fused in (True, False):
        out = get_response_log_probs(model, ids, labels, return_token_entropy=True, fused=fused)
        loss = (out["log_probs"] * torch.linspace(-1, 1, 16, dtype=dtype)).sum() + 0.3 * out["token_entropy"].sum()
        outs.append((out["log_probs"], out["token_entropy"], torch.autograd.grad(loss, list(model.parameters()))))
    with torch.no_grad():
        logits = model(ids).double()
    oracle = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    for log_probs, entropy, _ in outs:
        torch.testing.assert_close(log_probs.double(), oracle, rtol=tol, atol=tol)
        torch.testing.assert_close(entropy.double(), naive_entropy(logits), rtol=tol, atol=tol)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_clocks_ratio_spread_and_interleaved_order():
    """compare() on hand-made times; a constant per-round ratio has zero spread; interleave reverses the order
    every round and times only the rounds after the warm-up."""
    times = {"ours": [(1.0, 2.0), (3.0, 4.0), (2.0, 9.0)], "peer": [(2.0, 2.0), (6.0, 8.0), (4.0, 1.0)]}
    row = clocks.compare("x", times)
    assert (row["ours_cpu_s"], row["peer_cpu_s"], row["ours_wall_s"], row["peer_wall_s"]) == (2.0, 4.0, 4.0, 2.0)
    assert (row["ratio"], row["ratio_wall"], row["spread"]) == (0.5, 2.0, 0.0)  # cpu ratio 0.5 every round
    assert clocks.bootstrap_spread([1.0, 2.0, 1.0, 3.0], [1.0, 1.0, 2.0, 1.0]) > 0
    assert clocks.bootstrap_spread([1.0], [2.0]) == 0.0

    class Fake:
        def __init__(self, name):
            self.name, self.last = name, (0.0, 0.0)

    calls = []

    def step(side, x):
        calls.append((side.name, x))
        side.last = (float(x), 1.0)

    row = clocks.interleave("y", [Fake("ours"), Fake("peer")], step, [10, 20, 30], repeats=3, warmup=1)
    assert calls == [("ours", 10), ("peer", 10), ("peer", 20), ("ours", 20), ("ours", 30), ("peer", 30),
                     ("peer", 10), ("ours", 10)]
    assert len(row["times"]["ours"]) == len(row["times"]["peer"]) == 3
    assert row["steps_compared"] == 4 and row["loss_rel_diff"] == 0.0
