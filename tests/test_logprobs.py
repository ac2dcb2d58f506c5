"""Log-probs and entropy: compute_entropy and get_response_log_probs (graded), selective_log_softmax and the fused
linear log-prob kernel (given infrastructure, tested just as hard).

Oracles: log_softmax/gather and -sum p log p written out here in float64; hand-computed entropies; float64
torch.autograd.gradcheck; the profiler's peak allocation against the analytic bound; invariances (a sequence alone
vs inside a right-padded batch; the sampler's log-probs vs recomputed ones).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cs336_alignment.logprobs as lp_module
from cs336_alignment.logprobs import (fused_linear_log_probs, get_response_log_probs, naive_entropy,
                                      naive_linear_log_probs, naive_log_probs, selective_log_softmax)
from tests.adapters import run_compute_entropy, run_get_response_log_probs

PART = "2.1 Log-probs and entropy"


def oracle_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax in float64, by the definition z_y - log sum exp z, with the max subtracted by hand."""
    z = logits.double()
    z = z - z.max(dim=-1, keepdim=True).values
    return z.gather(-1, labels[..., None]).squeeze(-1) - z.exp().sum(-1).log()


def oracle_entropy(logits: torch.Tensor) -> torch.Tensor:
    z = logits.double()
    p = torch.softmax(z, dim=-1)
    return -(p * torch.log(p)).sum(-1)


class TinyLogitsLM(nn.Module):
    """Returns (B, T, V) logits: embedding -> tanh -> linear. Optionally wrapped like a Hugging Face output."""

    def __init__(self, vocab_size: int = 11, d: int = 6, hf_style: bool = False):
        super().__init__()
        self.embed, self.head, self.hf_style = nn.Embedding(vocab_size, d), nn.Linear(d, vocab_size), hf_style

    def forward(self, input_ids):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        return SimpleNamespace(logits=logits) if self.hf_style else logits


class TinyHiddenLM(nn.Module):
    """Mimics TransformerLM's interface: an lm_head and forward(input_ids, return_hidden=...)."""

    def __init__(self, vocab_size: int = 11, d: int = 6):
        super().__init__()
        self.embed, self.lm_head = nn.Embedding(vocab_size, d), nn.Linear(d, vocab_size, bias=False)
        self.calls: list[bool] = []

    def forward(self, input_ids, attention_mask=None, *, return_hidden: bool = False):
        self.calls.append(return_hidden)
        hidden = torch.tanh(self.embed(input_ids))  # (B, T, d)
        return hidden if return_hidden else self.lm_head(hidden)


def ids_and_labels(B: int = 3, T: int = 7, V: int = 11):
    tokens = torch.randint(0, V, (B, T + 1))
    return tokens[:, :-1], tokens[:, 1:]


# ---------------------------------------------------------------------------------------------------------
# compute_entropy (graded)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
def test_compute_entropy(numpy_snapshot):
    logits = torch.randn(2, 5, 17) * 3  # (B, T, V)
    entropy = run_compute_entropy(logits=logits)
    assert entropy.shape == (2, 5)
    torch.testing.assert_close(entropy.double(), oracle_entropy(logits), atol=1e-5, rtol=1e-5, msg="entropy")
    numpy_snapshot.assert_match(entropy, "test_compute_entropy")


@pytest.mark.points(1)
def test_compute_entropy_hand_computed(numpy_snapshot):
    uniform = torch.zeros(4, 10)  # H = log 10
    torch.testing.assert_close(run_compute_entropy(logits=uniform), torch.full((4,), math.log(10.0)),
                               msg="uniform distribution")
    two_way = torch.tensor([[0.0, 0.0, -1e4]])  # third token has probability e^-10000 = 0: H = log 2
    torch.testing.assert_close(run_compute_entropy(logits=two_way), torch.tensor([math.log(2.0)]),
                               msg="two equally likely tokens")
    numpy_snapshot.assert_match({"uniform": run_compute_entropy(logits=uniform),
                                 "two_way": run_compute_entropy(logits=two_way)},
                                "test_compute_entropy_hand_computed")


@pytest.mark.points(1)
def test_compute_entropy_is_stable_for_huge_logits(numpy_snapshot):
    logits = torch.tensor([[1e4, 1e4, -1e4, 0.0], [5e4, 0.0, 0.0, 0.0]])
    assert torch.isnan(naive_entropy(logits)).any()  # the textbook formula breaks here ...
    entropy = run_compute_entropy(logits=logits)  # ... compute_entropy must not
    # float32 holds 1e4 to within 1e-3, so that is all we ask for
    torch.testing.assert_close(entropy, torch.tensor([math.log(2.0), 0.0]), atol=1e-3, rtol=0, msg="huge logits")
    shifted = torch.randn(3, 8)
    torch.testing.assert_close(run_compute_entropy(logits=shifted + 1000.0), oracle_entropy(shifted).float(),
                               atol=1e-3, rtol=0, msg="shift invariance")
    numpy_snapshot.assert_match(entropy, "test_compute_entropy_is_stable_for_huge_logits")   # not the shifted case:
    # float32 holds x + 1000 to ~1e-4 only, looser than the judge's tolerance


# ---------------------------------------------------------------------------------------------------------
# get_response_log_probs (graded)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(2)
@pytest.mark.parametrize("hf_style", [False, True])
def test_get_response_log_probs(numpy_snapshot, hf_style):
    model = TinyLogitsLM(hf_style=hf_style)
    input_ids, labels = ids_and_labels()
    out = run_get_response_log_probs(model=model, input_ids=input_ids, labels=labels, return_token_entropy=True)
    assert set(out) == {"log_probs", "token_entropy"}
    logits = model.head(torch.tanh(model.embed(input_ids)))
    torch.testing.assert_close(out["log_probs"].double(), oracle_log_probs(logits, labels), atol=1e-5, rtol=1e-5,
                               msg="log_probs")
    torch.testing.assert_close(out["token_entropy"].double(), oracle_entropy(logits), atol=1e-5, rtol=1e-5,
                               msg="token_entropy")
    only = run_get_response_log_probs(model=model, input_ids=input_ids, labels=labels, return_token_entropy=False)
    assert set(only) == {"log_probs"}
    numpy_snapshot.assert_match({"log_probs": out["log_probs"], "token_entropy": out["token_entropy"]},
                                "test_get_response_log_probs")


@pytest.mark.points(2)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_get_response_log_probs_fused_path(numpy_snapshot, temperature):
    """A model with lm_head + return_hidden goes through the fused kernel: same values and gradients."""
    model = TinyHiddenLM()
    input_ids, labels = ids_and_labels()
    fused = get_response_log_probs(model, input_ids, labels, True, temperature=temperature)
    assert model.calls == [True]  # hidden states requested, lm_head applied by the kernel
    fused_grads = torch.autograd.grad(fused["log_probs"].sum() + fused["token_entropy"].sum(), model.parameters())
    plain = get_response_log_probs(model, input_ids, labels, True, temperature=temperature, fused=False)
    assert model.calls[-1] is False
    plain_grads = torch.autograd.grad(plain["log_probs"].sum() + plain["token_entropy"].sum(), model.parameters())
    logits = model.lm_head(torch.tanh(model.embed(input_ids))) / temperature
    for out in (fused, plain):
        torch.testing.assert_close(out["log_probs"].double(), oracle_log_probs(logits, labels), atol=1e-5, rtol=1e-5,
                                   msg="log_probs")
        torch.testing.assert_close(out["token_entropy"].double(), oracle_entropy(logits), atol=1e-5, rtol=1e-5,
                                   msg="token_entropy")
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg="gradients of the fused and plain paths")
    numpy_snapshot.assert_match({f"{path}_{key}": out[key] for path, out in (("fused", fused), ("plain", plain))
                                 for key in ("log_probs", "token_entropy")},
                                f"test_get_response_log_probs_fused_path_t{temperature:g}")


@pytest.mark.points(1)
@pytest.mark.parametrize("fused", [True, False])
def test_log_probs_alone_equal_log_probs_in_a_right_padded_batch(numpy_snapshot, fused):
    """Invariance: padding after a sequence cannot change its per-token log-probs (causal model)."""
    from cs336_alignment.lm.model import TransformerConfig, TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=29, context_length=16, d_model=16, num_layers=2,
                                            num_heads=2, d_ff=32))
    seqs = [[3, 5, 7, 11, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9], [4, 4]]
    L, pad = max(len(s) for s in seqs), 0
    batch = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])  # (3, L) right-padded
    out = get_response_log_probs(model, batch[:, :-1], batch[:, 1:], True, fused=fused)
    for i, s in enumerate(seqs):
        alone = get_response_log_probs(model, torch.tensor([s[:-1]]), torch.tensor([s[1:]]), True, fused=fused)
        n = len(s) - 1
        torch.testing.assert_close(out["log_probs"][i, :n], alone["log_probs"][0], atol=1e-6, rtol=1e-6,
                                   msg="log_probs alone vs in the padded batch")
        torch.testing.assert_close(out["token_entropy"][i, :n], alone["token_entropy"][0], atol=1e-6, rtol=1e-6,
                                   msg="entropy alone vs in the padded batch")
    numpy_snapshot.assert_match(dict(out), f"test_log_probs_alone_equal_log_probs_in_a_right_padded_batch_fused{fused}")


@pytest.mark.points(1)
def test_sampler_log_probs_equal_recomputed_log_probs(numpy_snapshot):
    """Invariance: generate's log-probs at temperature 0.7 are what a trainer recomputes at 0.7."""
    from cs336_alignment.lm.generation import generate
    from cs336_alignment.lm.model import TransformerConfig, TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=31, context_length=32, d_model=16, num_layers=2,
                                            num_heads=2, d_ff=32))
    prompts = [[3, 5, 7], [1, 2, 3, 4, 5, 6], [9]]
    gen = generate(model, prompts, max_new_tokens=8, temperature=0.7, generator=torch.Generator().manual_seed(3))
    for prompt, new, sampled in zip(prompts, gen.tokens, gen.logprobs):
        full = torch.tensor([prompt + new])
        with torch.no_grad():
            out = get_response_log_probs(model, full[:, :-1], full[:, 1:], temperature=0.7)
        torch.testing.assert_close(out["log_probs"][0, len(prompt) - 1:], sampled, atol=1e-5, rtol=1e-5,
                                   msg="sampler vs recomputed log-probs")
    numpy_snapshot.assert_match({"last_recomputed": out["log_probs"], "sampled": torch.cat(list(gen.logprobs))},
                                "test_sampler_log_probs_equal_recomputed_log_probs")


# ---------------------------------------------------------------------------------------------------------
# selective_log_softmax
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_selective_log_softmax_matches_naive(monkeypatch, dtype):
    monkeypatch.setattr(lp_module, "SELECTIVE_CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk: several chunks
    logits = (torch.randn(4, 5, 50) * 4).to(dtype)
    labels = torch.randint(0, 50, (4, 5))
    out = selective_log_softmax(logits, labels)
    assert out.shape == (4, 5) and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # bf16 logits are exact in float64: the only error left is float32 arithmetic
    torch.testing.assert_close(out.double(), oracle_log_probs(logits, labels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, naive_log_probs(logits, labels), atol=1e-5, rtol=1e-5)


def test_selective_log_softmax_gradients(monkeypatch):
    monkeypatch.setattr(lp_module, "SELECTIVE_CHUNK_ELEMENTS", 2 * 13)
    logits = torch.randn(3, 4, 13, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (3, 4))
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, labels, temperature=0.6), (logits,))
    # bf16 logits get a bf16 gradient equal to the float32 oracle's, up to bf16 rounding
    x = logits.detach().to(torch.bfloat16).requires_grad_()
    g = torch.randn(3, 4)
    selective_log_softmax(x, labels).backward(g)
    x32 = x.detach().float().requires_grad_()
    (torch.log_softmax(x32, -1).gather(-1, labels[..., None]).squeeze(-1) * g).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), x32.grad, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------------------
# fused_linear_log_probs
# ---------------------------------------------------------------------------------------------------------

def linear_problem(N, d, V, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, d, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, d, generator=g, dtype=dtype) * 2 / math.sqrt(d)).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, labels


@pytest.mark.parametrize("return_entropy,temperature,chunk_size,vocab_chunk_size",
                         [(False, 1.0, 4, 7), (True, 0.6, 4, 7), (True, 1.0, 64, 64), (False, 0.6, 5, 1000)])
def test_fused_gradcheck(return_entropy, temperature, chunk_size, vocab_chunk_size):
    """float64 gradcheck (full Jacobian, i.e. every per-token upstream gradient) with ragged blocks."""
    hidden, weight, labels = linear_problem(11, 5, 23)
    labels[3] = -100  # one ignored position

    def f(h, w):
        return fused_linear_log_probs(h, w, labels, temperature=temperature, return_entropy=return_entropy,
                                      chunk_size=chunk_size, vocab_chunk_size=vocab_chunk_size)

    assert torch.autograd.gradcheck(f, (hidden, weight))


@pytest.mark.parametrize("outputs", ["both", "log_probs", "entropy"])
def test_fused_matches_float64_reference(outputs):
    """float32 kernel vs float64 naive on a medium shape, with random per-token upstream gradients.

    Gradients are compared by relative norm: float32 naive itself is off by ~1e-7 relative here.
    """
    hidden, weight, labels = linear_problem(700, 48, 3001, dtype=torch.float32)
    g_lp, g_h = torch.randn(700), torch.randn(700)
    results = {}
    for name, h, w in (("fused", hidden, weight), ("ref", hidden.double(), weight.double())):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        fn = fused_linear_log_probs if name == "fused" else naive_linear_log_probs
        kwargs = {"chunk_size": 128, "vocab_chunk_size": 1024} if name == "fused" else {}
        lp, ent = fn(h, w, labels, temperature=0.8, return_entropy=True, **kwargs)
        loss = {"both": (lp * g_lp.to(lp.dtype)).sum() + (ent * g_h.to(ent.dtype)).sum(),
                "log_probs": (lp * g_lp.to(lp.dtype)).sum(), "entropy": (ent * g_h.to(ent.dtype)).sum()}[outputs]
        loss.backward()
        results[name] = (lp.detach(), ent.detach(), h.grad, w.grad)
    (lp, ent, gh, gw), (lp_ref, ent_ref, gh_ref, gw_ref) = results["fused"], results["ref"]
    assert lp.dtype == torch.float32 and gh.dtype == torch.float32
    assert (lp.double() - lp_ref).abs().max() <= 1e-5
    assert (ent.double() - ent_ref).abs().max() <= 2e-5
    assert (gh.double() - gh_ref).norm() / gh_ref.norm() <= 1e-6
    assert (gw.double() - gw_ref).norm() / gw_ref.norm() <= 1e-6


def test_fused_leading_dims_ignore_index_and_no_grad():
    hidden, weight, labels = linear_problem(12, 5, 19)
    h3, y3 = hidden.detach().view(3, 4, 5).requires_grad_(), labels.view(3, 4).clone()
    y3[1, 2] = y3[2, 0] = -100
    lp, ent = fused_linear_log_probs(h3, weight, y3, return_entropy=True, chunk_size=3, vocab_chunk_size=8)
    assert lp.shape == ent.shape == (3, 4)
    keep = y3 != -100
    ref_lp, ref_ent = naive_linear_log_probs(h3, weight, y3.clamp(min=0), return_entropy=True)
    torch.testing.assert_close(lp[keep], ref_lp[keep])
    torch.testing.assert_close(ent[keep], ref_ent[keep])
    assert (lp[~keep] == 0).all() and (ent[~keep] == 0).all()
    (lp.sum() + ent.sum()).backward()
    assert (h3.grad[~keep] == 0).all() and (h3.grad[keep] != 0).all()
    with torch.no_grad():  # e.g. a frozen reference model
        torch.testing.assert_close(fused_linear_log_probs(h3, weight, y3), lp.detach())


def test_fused_bfloat16_accumulates_in_float32():
    hidden, weight, labels = linear_problem(300, 32, 2000, dtype=torch.bfloat16)
    lp, ent = fused_linear_log_probs(hidden, weight, labels, return_entropy=True, chunk_size=64,
                                     vocab_chunk_size=512)
    assert lp.dtype == ent.dtype == torch.float32
    # reference from the same bf16 numbers in float64: what is left is the bf16 rounding of the logits
    logits = hidden.detach().double() @ weight.detach().double().T  # (N, V)
    assert (lp.double() - oracle_log_probs(logits, labels)).abs().max() < 0.05
    assert (ent.double() - oracle_entropy(logits)).abs().max() < 0.05
    (lp.sum() + ent.sum()).backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    lp32, ent32 = naive_linear_log_probs(h32, w32, labels, return_entropy=True)
    (lp32.sum() + ent32.sum()).backward()
    for got, want in ((hidden.grad, h32.grad), (weight.grad, w32.grad)):
        assert (got.float() - want).norm() / want.norm() < 2e-2


def test_fused_under_autocast():
    """An autocast trunk hands bf16 hidden states to a float32 head: the head is cast, its gradient is float32."""
    hidden, weight, labels = linear_problem(64, 16, 300, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = fused_linear_log_probs(hidden.to(torch.bfloat16), weight, labels, chunk_size=16, vocab_chunk_size=128)
        lp.sum().backward()
    assert lp.dtype == weight.grad.dtype == hidden.grad.dtype == torch.float32
    logits = hidden.detach().to(torch.bfloat16).double() @ weight.detach().to(torch.bfloat16).double().T
    assert (lp.double() - oracle_log_probs(logits, labels)).abs().max() < 0.05


def test_fused_rejects_bad_inputs():
    hidden, weight, labels = linear_problem(6, 4, 9)
    with pytest.raises(ValueError):
        fused_linear_log_probs(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError):
        fused_linear_log_probs(hidden, weight, labels[:5])
    with pytest.raises(ValueError):
        fused_linear_log_probs(hidden, weight, torch.full_like(labels, 9))
    with pytest.raises(ValueError):
        fused_linear_log_probs(hidden, weight, labels, temperature=0.0)


@pytest.mark.parametrize("return_entropy", [False, True])
def test_fused_peak_memory_stays_near_the_bound(return_entropy):
    """Profiler-measured peak of forward + backward: gradients + outputs + one block (two with the entropy)."""
    from cs336_alignment.bench.cli import profiled_peak_bytes

    N, d, V = 1024, 32, 4096
    hidden, weight, labels = linear_problem(N, d, V, dtype=torch.float32)
    grads = torch.randn(2, N)

    def step(fn, **kwargs):
        hidden.grad = weight.grad = None
        out = fn(hidden, weight, labels, return_entropy=return_entropy, **kwargs)
        torch.autograd.backward(out, (grads[0], grads[1]) if return_entropy else grads[0])

    block = 128 * 1024 * 4  # bytes of one (vocab chunk × rows) float32 block
    fused = profiled_peak_bytes(lambda: step(fused_linear_log_probs, chunk_size=128, vocab_chunk_size=1024))
    naive = profiled_peak_bytes(lambda: step(naive_linear_log_probs))
    bound = (N + V) * d * 4 + N * 4 * (1 + return_entropy)  # gradients of hidden and weight + outputs
    assert bound <= fused <= bound + (1 + return_entropy) * block + block // 4
    assert naive >= 2 * N * V * 4  # the naive way holds at least two (N, V) float32 tensors at once
