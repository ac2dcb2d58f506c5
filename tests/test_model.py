"""The CS336 a1 Transformer: each module against torch's own ops or the formula written out here.

Oracles: F.linear, F.embedding, F.scaled_dot_product_attention, hand-computed RoPE rotations, the RMSNorm and
SwiGLU formulas, a per-head python loop for attention, and invariances of the full model (padding, the fused
attention path, the KV cache).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cs336_alignment.lm.model import (KVCache, RotaryPositionalEmbedding, ScalarHead, TransformerConfig,
                                   TransformerLM, causal_mask)
from tests import adapters

CFG = dict(vocab_size=37, context_length=32, d_model=16, num_layers=2, num_heads=4, d_ff=24, rope_theta=10000.0)


def tiny_lm(use_sdpa: bool = True, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    model = TransformerLM(TransformerConfig(**CFG, use_sdpa=use_sdpa))
    with torch.no_grad():  # RMSNorm gains start at 1; perturb them so a wrong gain would show
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                p.add_(0.1 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------------------------------------
# Linear, Embedding, RMSNorm, SwiGLU
# ---------------------------------------------------------------------------------------------------------


def test_linear_matches_f_linear():
    w, x = torch.randn(5, 3), torch.randn(2, 4, 3)
    torch.testing.assert_close(adapters.run_linear(d_in=3, d_out=5, weights=w, in_features=x), F.linear(x, w))


def test_linear_init_is_truncated_normal():
    from cs336_alignment.lm.model import Linear
    layer = Linear(300, 200)
    std = math.sqrt(2 / 500)
    assert layer.weight.shape == (200, 300)
    assert abs(layer.weight.std().item() / std - 0.9866) < 0.02  # N(0, σ²) truncated at ±3σ has std 0.9866σ
    assert layer.weight.abs().max().item() <= 3 * std + 1e-6
    assert not any("bias" in n for n, _ in layer.named_parameters())


def test_embedding_matches_f_embedding():
    w, ids = torch.randn(10, 4), torch.randint(0, 10, (3, 5))
    torch.testing.assert_close(adapters.run_embedding(vocab_size=10, d_model=4, weights=w, token_ids=ids),
                               F.embedding(ids, w))


def test_rmsnorm_formula():
    x, g = torch.randn(2, 3, 8), torch.randn(8)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * g
    torch.testing.assert_close(adapters.run_rmsnorm(d_model=8, eps=1e-5, weights=g, in_features=x), expected)


def test_rmsnorm_bf16_computes_in_float32_and_casts_back():
    x, g = (torch.randn(4, 8) * 100).bfloat16(), torch.randn(8)
    out = adapters.run_rmsnorm(d_model=8, eps=1e-5, weights=g, in_features=x)
    assert out.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 / torch.sqrt((x32 ** 2).mean(-1, keepdim=True) + 1e-5) * g).bfloat16()
    torch.testing.assert_close(out, expected)


def test_swiglu_formula():
    d, d_ff = 6, 10
    w1, w2, w3, x = torch.randn(d_ff, d), torch.randn(d, d_ff), torch.randn(d_ff, d), torch.randn(2, 3, d)
    a = x @ w1.T
    expected = ((a * torch.sigmoid(a)) * (x @ w3.T)) @ w2.T
    out = adapters.run_swiglu(d_model=d, d_ff=d_ff, w1_weight=w1, w2_weight=w2, w3_weight=w3, in_features=x)
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------------------


def test_rope_one_pair_is_a_rotation_by_position():
    # d_k = 2: a single pair rotated by pos · θ^0 = pos radians
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])  # (T=3, 2)
    pos = torch.tensor([0, 1, 5])
    out = adapters.run_rope(d_k=2, theta=10000.0, max_seq_len=8, in_query_or_key=x, token_positions=pos)
    for t in range(3):
        a = float(pos[t])
        rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        torch.testing.assert_close(out[t], rotation @ x[t])


def test_rope_d4_manual_formula_and_batch_broadcast():
    theta, d_k = 100.0, 4
    x = torch.randn(2, 3, d_k)  # (B, T, d_k)
    pos = torch.tensor([[0, 2, 7], [3, 1, 0]])  # (B, T)
    out = adapters.run_rope(d_k=d_k, theta=theta, max_seq_len=8, in_query_or_key=x, token_positions=pos)
    for b in range(2):
        for t in range(3):
            for k in range(d_k // 2):  # pair (x[2k], x[2k+1]) rotated by pos · θ^(−2k/d_k)
                angle = pos[b, t].item() * theta ** (-2 * k / d_k)
                x0, x1 = x[b, t, 2 * k].item(), x[b, t, 2 * k + 1].item()
                assert abs(out[b, t, 2 * k].item() - (x0 * math.cos(angle) - x1 * math.sin(angle))) < 1e-5
                assert abs(out[b, t, 2 * k + 1].item() - (x0 * math.sin(angle) + x1 * math.cos(angle))) < 1e-5
    # 1-d positions broadcast over the batch
    out1 = adapters.run_rope(d_k=d_k, theta=theta, max_seq_len=8, in_query_or_key=x, token_positions=pos[0])
    torch.testing.assert_close(out1[1], adapters.run_rope(d_k=d_k, theta=theta, max_seq_len=8,
                                                          in_query_or_key=x[1], token_positions=pos[0]))


def test_rope_has_no_state_dict_entries():
    assert len(RotaryPositionalEmbedding(10000.0, 8, 16).state_dict()) == 0


# ---------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------


def test_sdpa_matches_torch_with_mask_and_leading_dims():
    Q, K, V = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 5)  # more keys than queries
    mask = torch.rand(2, 3, 4, 6) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    out = adapters.run_scaled_dot_product_attention(Q=Q, K=K, V=V, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(Q, K, V, attn_mask=mask))
    torch.testing.assert_close(adapters.run_scaled_dot_product_attention(Q=Q, K=K, V=V),
                               F.scaled_dot_product_attention(Q, K, V))


def test_sdpa_causal_matches_torch_is_causal():
    Q, K, V = torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    out = adapters.run_scaled_dot_product_attention(Q=Q, K=K, V=V, mask=causal_mask(5, 5))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(Q, K, V, is_causal=True))


def test_causal_mask_with_cached_keys():
    # 2 new queries after 3 cached keys: query 0 is position 3, query 1 is position 4
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)


def _naive_mha(x, wq, wk, wv, wo, num_heads, rope=None, positions=None):
    """Per-head python loop: causal softmax attention written with explicit loops over heads."""
    B, T, d = x.shape
    dh = d // num_heads
    heads = []
    for h in range(num_heads):
        sl = slice(h * dh, (h + 1) * dh)
        q, k, v = x @ wq[sl].T, x @ wk[sl].T, x @ wv[sl].T  # (B, T, dh)
        if rope is not None:
            q, k = rope(q, positions), rope(k, positions)
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    return torch.cat(heads, -1) @ wo.T


def test_mha_matches_naive_per_head_loop():
    d, H = 16, 4
    wq, wk, wv, wo = (torch.randn(d, d) / 4 for _ in range(4))
    x = torch.randn(2, 7, d)
    out = adapters.run_multihead_self_attention(d_model=d, num_heads=H, q_proj_weight=wq, k_proj_weight=wk,
                                                v_proj_weight=wv, o_proj_weight=wo, in_features=x)
    torch.testing.assert_close(out, _naive_mha(x, wq, wk, wv, wo, H))


def test_mha_with_rope_matches_naive_loop():
    d, H, theta = 16, 2, 10000.0
    wq, wk, wv, wo = (torch.randn(d, d) / 4 for _ in range(4))
    x = torch.randn(2, 6, d)
    pos = torch.arange(6)
    out = adapters.run_multihead_self_attention_with_rope(d_model=d, num_heads=H, max_seq_len=16, theta=theta,
                                                          q_proj_weight=wq, k_proj_weight=wk, v_proj_weight=wv,
                                                          o_proj_weight=wo, in_features=x, token_positions=pos)
    rope = RotaryPositionalEmbedding(theta, d // H, 16)
    torch.testing.assert_close(out, _naive_mha(x, wq, wk, wv, wo, H, rope, pos))


def test_transformer_block_is_prenorm():
    d, H, d_ff = 16, 4, 24
    torch.manual_seed(3)
    w = {f"attn.{n}_proj.weight": torch.randn(d, d) / 4 for n in ("q", "k", "v", "output")}
    w |= {"ln1.weight": torch.randn(d), "ln2.weight": torch.randn(d), "ffn.w1.weight": torch.randn(d_ff, d) / 4,
          "ffn.w2.weight": torch.randn(d, d_ff) / 4, "ffn.w3.weight": torch.randn(d_ff, d) / 4}
    x = torch.randn(2, 5, d)
    out = adapters.run_transformer_block(d_model=d, num_heads=H, d_ff=d_ff, max_seq_len=8, theta=10000.0,
                                         weights=w, in_features=x)
    rms = lambda t, g: t / torch.sqrt((t ** 2).mean(-1, keepdim=True) + 1e-5) * g
    rope = RotaryPositionalEmbedding(10000.0, d // H, 8)
    y = x + _naive_mha(rms(x, w["ln1.weight"]), w["attn.q_proj.weight"], w["attn.k_proj.weight"],
                       w["attn.v_proj.weight"], w["attn.output_proj.weight"], H, rope, torch.arange(5))
    h = rms(y, w["ln2.weight"])
    a = h @ w["ffn.w1.weight"].T
    expected = y + (F.silu(a) * (h @ w["ffn.w3.weight"].T)) @ w["ffn.w2.weight"].T
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------------------------------
# TransformerLM
# ---------------------------------------------------------------------------------------------------------


def test_state_dict_keys_and_shapes():
    model = tiny_lm()
    d, V, d_ff = CFG["d_model"], CFG["vocab_size"], CFG["d_ff"]
    expected = {"token_embeddings.weight": (V, d), "ln_final.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(CFG["num_layers"]):
        expected |= {f"layers.{i}.attn.{n}_proj.weight": (d, d) for n in ("q", "k", "v", "output")}
        expected |= {f"layers.{i}.ln1.weight": (d,), f"layers.{i}.ln2.weight": (d,),
                     f"layers.{i}.ffn.w1.weight": (d_ff, d), f"layers.{i}.ffn.w2.weight": (d, d_ff),
                     f"layers.{i}.ffn.w3.weight": (d_ff, d)}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.num_params() == sum(math.prod(s) for s in expected.values())
    assert model.num_params(include_embeddings=False) == model.num_params() - 37 * 16


def test_transformer_lm_adapter_loads_weights():
    model = tiny_lm()
    ids = torch.randint(0, CFG["vocab_size"], (2, 9))
    out = adapters.run_transformer_lm(**{k: v for k, v in CFG.items()}, weights=model.state_dict(), in_indices=ids)
    assert out.shape == (2, 9, CFG["vocab_size"])
    torch.testing.assert_close(out, model(ids))


def test_sdpa_path_equals_manual_path():
    fused, manual = tiny_lm(use_sdpa=True), tiny_lm(use_sdpa=False)
    manual.load_state_dict(fused.state_dict())
    ids = torch.randint(0, CFG["vocab_size"], (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, :4] = False  # also with padding (the explicit-mask branch)
    mask[1, 9:] = False
    torch.testing.assert_close(fused(ids), manual(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(ids, mask), manual(ids, mask), atol=1e-5, rtol=1e-5)


def test_return_hidden_then_lm_head_gives_logits():
    model = tiny_lm()
    ids = torch.randint(0, CFG["vocab_size"], (2, 7))
    hidden = model(ids, return_hidden=True)
    assert hidden.shape == (2, 7, CFG["d_model"])
    torch.testing.assert_close(hidden @ model.lm_head.weight.T, model(ids))


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_lm()
    ids = torch.randint(0, CFG["vocab_size"], (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % CFG["vocab_size"]
    torch.testing.assert_close(model(ids)[:, :6], model(changed)[:, :6])


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_left_and_right_padding_give_the_logits_of_the_sequence_alone(use_sdpa):
    # This checks the key-padding mask. (RoPE scores depend only on position differences, so left padding with
    # shifted positions would give the same logits too; cumsum positions keep positions inside the RoPE table.)
    model = tiny_lm(use_sdpa)
    seq = torch.randint(1, CFG["vocab_size"], (1, 6))
    alone = model(seq)[0]  # (6, V)
    pad = torch.zeros(1, 4, dtype=torch.long)
    ones, zeros = torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    left = model(torch.cat([pad, seq], 1), torch.cat([zeros, ones], 1))[0, 4:]
    right = model(torch.cat([seq, pad], 1), torch.cat([ones, zeros], 1))[0, :6]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    # batched with a longer row, bool mask
    other = torch.randint(1, CFG["vocab_size"], (1, 10))
    batch = torch.cat([torch.cat([pad, seq], 1), other])
    mask = torch.cat([torch.cat([zeros, ones], 1), torch.ones(1, 10, dtype=torch.long)]).bool()
    out = model(batch, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 4:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model(other)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_chunks_equal_full_forward(use_sdpa):
    model = tiny_lm(use_sdpa)
    ids = torch.randint(0, CFG["vocab_size"], (2, 11))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, :3] = False  # row 1 left-padded
    full = model(ids, mask)
    cache = KVCache(CFG["num_layers"], max_len=11)
    chunks = [model(ids[:, :5], mask[:, :5], kv_cache=cache)]
    for t in range(5, 11):  # then one token at a time, the mask covering everything seen so far
        chunks.append(model(ids[:, t:t + 1], mask[:, :t + 1], kv_cache=cache))
    assert cache.length == 11
    torch.testing.assert_close(torch.cat(chunks, 1)[1, 3:], full[1, 3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(chunks, 1)[0], full[0], atol=1e-5, rtol=1e-5)
    # without a mask, positions continue after the cached ones
    cache = KVCache(CFG["num_layers"], max_len=11)
    out = torch.cat([model(ids[:, :7], kv_cache=cache), model(ids[:, 7:], kv_cache=cache)], 1)
    torch.testing.assert_close(out, model(ids), atol=1e-5, rtol=1e-5)


def test_context_length_and_mask_shape_are_checked():
    model = tiny_lm()
    with pytest.raises(ValueError):
        model(torch.zeros(1, CFG["context_length"] + 1, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))


def test_padding_does_not_count_against_the_context():
    """A left-padded batch wider than context_length: each row that fits gets the logits it gets alone."""
    model = tiny_lm().eval()
    n = CFG["context_length"]
    long_row = torch.randint(0, CFG["vocab_size"], (n,))
    short_row = torch.randint(0, CFG["vocab_size"], (n - 6,))
    ids = torch.zeros(2, n + 4, dtype=torch.long)
    mask = torch.zeros(2, n + 4, dtype=torch.bool)
    ids[0, 4:], mask[0, 4:] = long_row, True
    ids[1, 10:], mask[1, 10:] = short_row, True
    out = model(ids, mask)
    torch.testing.assert_close(out[0, 4:], model(long_row[None])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 10:], model(short_row[None])[0], atol=1e-5, rtol=1e-5)
    mask[0, 3] = True  # n + 1 real tokens in row 0
    with pytest.raises(ValueError, match="exceeds context_length"):
        model(ids, mask)


def test_training_step_reduces_loss():
    from cs336_alignment.lm.nn_utils import AdamW, cross_entropy
    model = tiny_lm()
    opt = AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, CFG["vocab_size"], (4, 16))
    losses = []
    for _ in range(5):
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_scalar_head():
    head = ScalarHead(8)
    hidden = torch.randn(2, 5, 8)
    with torch.no_grad():
        head.bias.fill_(0.5)
    out = head(hidden)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, hidden @ head.weight[0] + 0.5)
    assert set(head.state_dict()) == {"weight", "bias"}
