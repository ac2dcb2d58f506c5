"""The CS336 assignment-1 Transformer language model, written out by hand, with a KV cache for generation.

Pre-norm decoder (Xiong et al. 2020) with RMSNorm (Zhang & Sennrich 2019), rotary position embeddings
(RoPE, Su et al. 2021, https://arxiv.org/abs/2104.09864, eq. 34 on interleaved pairs), causal multi-head
self-attention (Vaswani et al. 2017, eq. 1) and a SwiGLU feed-forward (Shazeer 2020, eq. 6); untied input
embedding and output head. Module and parameter names are CS336's, so its state dicts load unchanged.
A ScalarHead (d -> 1) turns the final hidden states into rewards or values.

Switches, all off by default (the CS336 model), let the same code hold Llama, Qwen2, Qwen3 and OLMo-2
checkpoints (`pretrained.py` loads them): grouped-query attention (`num_kv_heads`, Ainslie et al. 2023,
https://arxiv.org/abs/2305.13245: each group of num_heads / num_kv_heads query heads shares one key/value
head), a bias on the q/k/v projections (`qkv_bias`, Qwen2), the RMSNorm epsilon (`rms_norm_eps`), an
lm_head tied to the input embedding (`tie_embeddings`, Press & Wolf 2017), a head width independent of
d_model (`head_dim`, Qwen3), RMSNorm on queries and keys before RoPE (`qk_norm`: "full" over the whole q/k
projection, OLMo-2, OLMo et al. 2024, https://arxiv.org/abs/2501.00656 §3.1; "head" over each head, Qwen3,
Yang et al. 2025, https://arxiv.org/abs/2505.09388 §2) and the norm after each sublayer instead of before it
(`norm_placement="post"`, OLMo-2: h = x + RMSNorm(Attn(x)), out = h + RMSNorm(FFN(h))). RoPE stays interleaved here:
`pretrained.py` permutes the q/k projection rows of Hugging Face's rotate-half layout at load and back at
save (exact, since attention scores are dot products within a head).

Around this file: the hyperparameters are `model_config.TransformerConfig` (importable from here too);
`TransformerLM.from_pretrained` / `save_pretrained` use `pretrained.py`, which knows the Hugging Face format
but not this class and sits below this file; sampling and `generate` live in `generation.py`, above it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from cs336_alignment.lm.model_config import TransformerConfig
from cs336_alignment.lm.nn_utils import silu, softmax
from cs336_alignment.lm.pretrained import read_hf_config, read_hf_weights, resolve_dtype, save_hf_checkpoint

# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


class Linear(nn.Module):
    """y = x W^T (+ b). weight (out_features, in_features), init N(0, 2/(in+out)) truncated at ±3σ (CS336).

    bias=False (CS336's layer) has no `bias` entry in the state dict; bias=True adds one (out_features,), zeros.
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class Embedding(nn.Module):
    """Lookup table weight (num_embeddings, embedding_dim), init N(0, 1) truncated at ±3 (CS336)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: Tensor) -> Tensor:  # (...) long -> (..., embedding_dim)
        return self.weight[token_ids]


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + eps) · g (Zhang & Sennrich 2019, eq. 4), computed in float32, cast back."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))
        self.fast = False  # TransformerLM.use_fast_kernels

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> same shape and dtype
        in_dtype = x.dtype
        x = x.float()  # squares of bf16 activations overflow/lose precision
        if self.fast:
            return (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight).to(in_dtype)
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return (x / rms * self.weight).to(in_dtype)


class RotaryPositionalEmbedding(nn.Module):
    """RoPE: rotate each interleaved pair (x[2k], x[2k+1]) by angle pos · theta^(-2k/d_k) (Su et al. 2021, eq. 34).

    cos/sin tables (max_seq_len, d_k/2) are non-persistent buffers: they are not in the state dict.
    float32/64 on CPU/CUDA: each pair is a complex number x[2k] + i·x[2k+1] rotated by one multiplication with
    cos + i·sin (one kernel each way); on CPU the bits of the pair formula below (tests/test_fast_paths.py).
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even d_k, got {d_k}")
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float32) / d_k)  # (d_k/2,)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq  # (S, d_k/2)
        self.register_buffer("cos", torch.cos(angles), persistent=False)
        self.register_buffer("sin", torch.sin(angles), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        """x (..., T, d_k); token_positions (..., T) long, broadcastable to x's leading dims. Returns x's shape."""
        cos = self.cos[token_positions].to(x.dtype)  # (..., T, d_k/2)
        sin = self.sin[token_positions].to(x.dtype)
        if (x.dtype in (torch.float32, torch.float64) and x.device.type in ("cpu", "cuda") and x.stride(-1) == 1
                and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1])):  # complex-viewable
            pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., T, d_k/2) complex, a view of x
            return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)  # (..., T, d_k)
        x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (..., T, d_k/2) each
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # (..., T, d_k/2, 2)
        return rotated.flatten(-2)  # pairs back in place: (..., T, d_k)


def causal_mask(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(Tq, Tk) bool, True where query i may attend key j: j ≤ i + (Tk − Tq) (queries are the last Tq keys)."""
    q_pos = torch.arange(num_queries, device=device)[:, None] + (num_keys - num_queries)
    return torch.arange(num_keys, device=device)[None, :] <= q_pos


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. 2017, eq. 1).

    Args:
        Q: (..., Tq, d_k); K: (..., Tk, d_k); V: (..., Tk, d_v). Tk may exceed Tq (cached keys).
        mask: bool (..., Tq, Tk) broadcastable, True = may attend. A query with no allowed key gives NaN.
    Returns:
        (..., Tq, d_v), dtype of Q.
    """
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ V


class KVCache:
    """Keys and values of the positions seen so far, one preallocated (B, H, max_len, d_head) buffer pair per layer.

    Buffers are allocated on first use with the dtype/device of the keys. `length` counts stored positions;
    TransformerLM.forward advances it after all layers have appended.
    """

    def __init__(self, num_layers: int, max_len: int):
        self.max_len, self.length = max_len, 0
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, d_head) after the cached positions; return all keys/values (B, H, length+T, d_head)."""
        B, H, T, dh = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, H, self.max_len, dh)
            self.v[layer] = v.new_empty(B, H, self.max_len, dh)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def keep(self, rows: Tensor) -> None:
        """Keep only the batch rows `rows` (a (B',) long index) of every buffer, e.g. to drop finished rows."""
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            if k is not None:
                self.k[layer], self.v[layer] = k.index_select(0, rows), v.index_select(0, rows)


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with q/k/v/output projections and optional RoPE on queries and keys.

    use_sdpa=True calls torch's fused F.scaled_dot_product_attention instead of the hand-written one (same maths).
    num_kv_heads < num_heads is grouped-query attention (Ainslie et al. 2023): k_proj and v_proj give
    num_kv_heads heads, query head h reads key/value head h // (num_heads / num_kv_heads) (the grouping of
    Hugging Face's `repeat_kv`), and the KV cache stores only the num_kv_heads heads. qkv_bias adds a bias to
    q_proj, k_proj and v_proj (Qwen2), not to output_proj. head_dim (default d_model / num_heads) sets the
    width of a head: q_proj is (num_heads·head_dim, d_model), output_proj (d_model, num_heads·head_dim).
    qk_norm applies RMSNorm (eps) to queries and keys before RoPE: "full" to the whole projection output
    (q_norm (num_heads·head_dim,), k_norm (num_kv_heads·head_dim,), OLMo-2), "head" to each head
    (q_norm, k_norm (head_dim,), Qwen3); "none" (default) adds no parameters.
    """

    def __init__(self, d_model: int, num_heads: int, rope: RotaryPositionalEmbedding | None = None,
                 use_sdpa: bool = False, device=None, dtype=None, num_kv_heads: int | None = None,
                 qkv_bias: bool = False, head_dim: int | None = None, qk_norm: str = "none", eps: float = 1e-5):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if (head_dim is None and d_model % num_heads) or num_heads % num_kv_heads:
            raise ValueError(f"d_model {d_model} must divide by num_heads {num_heads}, and num_heads by "
                             f"num_kv_heads {num_kv_heads}")
        if qk_norm not in ("none", "full", "head"):
            raise ValueError(f"qk_norm is {qk_norm!r}; choose 'none', 'full' or 'head'")
        self.d_head = head_dim or d_model // num_heads
        self.num_heads, self.rope, self.use_sdpa = num_heads, rope, use_sdpa
        self.num_kv_heads, self.qk_norm = num_kv_heads, qk_norm
        d_q, d_kv = num_heads * self.d_head, num_kv_heads * self.d_head
        self.q_proj = Linear(d_model, d_q, device, dtype, bias=qkv_bias)
        self.k_proj = Linear(d_model, d_kv, device, dtype, bias=qkv_bias)
        self.v_proj = Linear(d_model, d_kv, device, dtype, bias=qkv_bias)
        self.output_proj = Linear(d_q, d_model, device, dtype)
        if qk_norm != "none":  # only then: the CS336 state dict has no q_norm / k_norm
            per_head = qk_norm == "head"
            self.q_norm = RMSNorm(self.d_head if per_head else d_q, eps, device=device, dtype=dtype)
            self.k_norm = RMSNorm(self.d_head if per_head else d_kv, eps, device=device, dtype=dtype)

    def forward(self, x: Tensor, token_positions: Tensor | None = None, mask: Tensor | None = None,
                kv_cache: KVCache | None = None, layer_idx: int = 0) -> Tensor:
        """x (..., T, d_model) -> (..., T, d_model).

        token_positions (..., T) long for RoPE (default: arange after the cached positions).
        mask: bool (..., Tq, Tk) or (Tq, Tk), True = may attend; it *replaces* the causal mask (the caller
        includes causality). Default: causal. kv_cache/layer_idx: append this call's keys/values and attend
        over every cached position too (x must then be (B, T, d_model)).
        """
        *lead, T, _ = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        split = lambda t, heads: t.view(*lead, T, heads, self.d_head).transpose(-3, -2)  # (..., heads, T, dh)
        q, k = self.q_proj(x), self.k_proj(x)  # (..., T, H·dh), (..., T, Hkv·dh)
        if self.qk_norm == "full":  # OLMo-2: over all heads at once
            q, k = self.q_norm(q), self.k_norm(k)
        q = split(q, self.num_heads)  # (..., H, T, dh)
        k, v = split(k, self.num_kv_heads), split(self.v_proj(x), self.num_kv_heads)  # (..., Hkv, T, dh)
        if self.qk_norm == "head":  # Qwen3: each head over its own dh features
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(past, past + T, device=x.device)  # (T,)
            positions = token_positions.unsqueeze(-2)  # (..., 1, T): the same positions for every head
            q, k = self.rope(q, positions), self.rope(k, positions)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # (B, Hkv, past + T, dh)
        if self.num_kv_heads != self.num_heads:  # GQA: each key/value head serves a group of query heads
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)  # (..., H, Tk, dh)
        Tk = k.shape[-2]
        if self.use_sdpa and mask is None and Tk == T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # fast causal kernel
        else:
            mask = causal_mask(T, Tk, x.device) if mask is None else mask
            attend = F.scaled_dot_product_attention if self.use_sdpa else scaled_dot_product_attention
            out = attend(q, k, v, mask)  # (..., H, T, dh)
        out = out.transpose(-3, -2).reshape(*lead, T, self.num_heads * self.d_head)  # heads back side by side
        return self.output_proj(out)


class SwiGLU(nn.Module):
    """FFN(x) = W2 (SiLU(W1 x) ⊙ W3 x) (Shazeer 2020, eq. 6). w1, w3: (d_ff, d_model); w2: (d_model, d_ff)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)
        self.w3 = Linear(d_model, d_ff, device, dtype)
        self.fast = False  # TransformerLM.use_fast_kernels

    def forward(self, x: Tensor) -> Tensor:  # (..., d_model) -> (..., d_model)
        return self.w2((F.silu if self.fast else silu)(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then y + FFN(RMSNorm(y)).

    norm_placement="post" (OLMo-2) normalises each sublayer's output instead: x + ln1(Attn(x)), then
    y + ln2(FFN(y)). head_dim and qk_norm go to the attention (MultiHeadSelfAttention).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, rope: RotaryPositionalEmbedding | None = None,
                 use_sdpa: bool = False, device=None, dtype=None, num_kv_heads: int | None = None,
                 qkv_bias: bool = False, eps: float = 1e-5, head_dim: int | None = None, qk_norm: str = "none",
                 norm_placement: str = "pre"):
        super().__init__()
        if norm_placement not in ("pre", "post"):
            raise ValueError(f"norm_placement is {norm_placement!r}; choose 'pre' or 'post'")
        self.post_norm = norm_placement == "post"
        self.ln1 = RMSNorm(d_model, eps, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(d_model, num_heads, rope, use_sdpa, device, dtype, num_kv_heads, qkv_bias,
                                           head_dim, qk_norm, eps)
        self.ln2 = RMSNorm(d_model, eps, device=device, dtype=dtype)
        self.ffn = SwiGLU(d_model, d_ff, device, dtype)

    def forward(self, x: Tensor, token_positions: Tensor | None = None, mask: Tensor | None = None,
                kv_cache: KVCache | None = None, layer_idx: int = 0) -> Tensor:  # (..., T, d) -> (..., T, d)
        if self.post_norm:  # OLMo-2
            x = x + self.ln1(self.attn(x, token_positions, mask, kv_cache, layer_idx))
            return x + self.ln2(self.ffn(x))
        x = x + self.attn(self.ln1(x), token_positions, mask, kv_cache, layer_idx)
        return x + self.ffn(self.ln2(x))


# ---------------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------------


class TransformerLM(nn.Module):
    """Token embedding -> num_layers pre-norm blocks -> final RMSNorm -> lm_head (V, d) (untied unless
    config.tie_embeddings).

    gradient_checkpointing (an attribute, off by default): in training mode, recompute each block's
    activations in backward instead of storing them (Chen et al. 2016, https://arxiv.org/abs/1604.06174):
    one block's activations at a time instead of num_layers, for one extra forward pass per block.
    """

    def __init__(self, config: TransformerConfig, device=None, dtype=None):
        super().__init__()
        c = self.config = config
        rope = RotaryPositionalEmbedding(c.rope_theta, c.d_head, c.context_length, device)
        self.token_embeddings = Embedding(c.vocab_size, c.d_model, device, dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(c.d_model, c.num_heads, c.d_ff, rope, c.use_sdpa, device, dtype, c.num_kv_heads,
                             c.qkv_bias, c.rms_norm_eps, c.head_dim, c.qk_norm, c.norm_placement)
            for _ in range(c.num_layers))
        self.ln_final = RMSNorm(c.d_model, c.rms_norm_eps, device=device, dtype=dtype)
        self.lm_head = Linear(c.d_model, c.vocab_size, device, dtype)
        if c.tie_embeddings:  # one Parameter under both names (the state dict lists both, sharing storage)
            self.lm_head.weight = self.token_embeddings.weight
        self.gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | str | None = None, device=None) -> "TransformerLM":
        """Load a Llama / Qwen2 / Qwen3 / OLMo-2 Hugging Face checkpoint directory into a TransformerLM.

        The model is built on the meta device (no random init, no second copy) and the tensors are read one by
        one from the safetensors file(s), renamed, permuted to the interleaved RoPE layout (`pretrained.py`),
        cast to `dtype` and assigned. config.tokenizer is set to the directory, so the stages find its tokenizer.

        Args:
            path: the directory (config.json + model.safetensors or sharded model-*.safetensors + index).
            dtype: torch.float32 (default: fp32 weights, bf16 autocast on GPU), torch.bfloat16, a name of one,
                or "auto" for the checkpoint's own `torch_dtype`.
            device: where the weights go (default cpu).
        Returns:
            TransformerLM with config.tokenizer = the directory (training mode, as any new module).
        Raises:
            FileNotFoundError: no config.json in `path`.
            pretrained.CheckpointError: naming the field (config_from_hf) or the tensor: a missing tensor, an
                unexpected one, or one of the wrong shape; or the file: empty, not JSON / safetensors, truncated,
                or a Git LFS pointer.
        """
        hf, config = read_hf_config(path)
        dtype, device = resolve_dtype(dtype, hf, path), torch.device(device or "cpu")
        with torch.device("meta"):
            model = cls(config)
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        state = read_hf_weights(Path(path), config, shapes, hf["architectures"][0], dtype, device)
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.token_embeddings.weight
        # RoPE tables are non-persistent buffers (not in any state dict): build them for real on `device`.
        rope = RotaryPositionalEmbedding(config.rope_theta, config.d_head, config.context_length, device)
        for layer in model.layers:
            layer.attn.rope = rope
        still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if still_meta:  # a bug here, not in the checkpoint
            raise RuntimeError(f"tensors left unloaded: {still_meta[:3]}")
        return model

    def save_pretrained(self, path, tokenizer=None, dtype: torch.dtype | None = None) -> None:
        """Write a directory that transformers' from_pretrained opens (config.json, model.safetensors, the
        tokenizer files of the checkpoint the model came from): see `pretrained.save_hf_checkpoint`.

        Args:
            tokenizer: a tokenizer from `Tokenizer.from_pretrained` (its files are copied), or None to copy the
                files of the directory in config.tokenizer, if any.
            dtype: of the saved tensors (default: the model's).
        """
        save_hf_checkpoint(self.state_dict(), self.config, path, tokenizer=tokenizer, dtype=dtype)

    def use_fast_kernels(self, on: bool = True) -> "TransformerLM":
        """F.silu in SwiGLU and x · rsqrt(mean(x²) + eps) in RMSNorm, in place. Off by default: the same maths with
        other float rounding (≤ 1e-6 per op), so runs would not repeat the default pipeline's bits."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, SwiGLU)):
                module.fast = on
        return self

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of parameters (optionally without the input embedding table)."""
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.token_embeddings.weight.numel()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, return_hidden: bool = False,
                kv_cache: KVCache | None = None) -> Tensor:
        """Next-token logits for every position.

        Args:
            input_ids: (B, T) long.
            attention_mask: (B, T) bool/int, 1 = real token, 0 = padding (with a kv_cache: (B, past + T),
                covering the cached positions too). Padding keys are masked and positions are cumsum(mask) − 1,
                so a left- or right-padded sequence gets the logits it gets alone. Logits at padding positions
                are finite but meaningless. Padding does not count against context_length: the padded width
                may exceed it as long as no row holds more real tokens. None = no padding.
            return_hidden: return the final RMSNorm-ed hidden states (B, T, d) instead of logits (lm_head not
                applied; used by fused log-prob kernels and scalar heads).
            kv_cache: append this call's keys/values to the cache and attend over the cached positions.
        Returns:
            (B, T, V) logits, or (B, T, d) hidden states; dtype of the parameters.
        Raises:
            ValueError: if a row holds more than config.context_length tokens (past + T, or its real tokens
                when attention_mask is given), or attention_mask has the wrong shape.
        """
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        n_max = self.config.context_length
        if attention_mask is None and past + T > n_max:
            raise ValueError(f"sequence of {past + T} tokens exceeds context_length {n_max}")
        positions, mask = None, None  # defaults: positions past..past+T-1, causal mask
        if attention_mask is not None:
            if attention_mask.shape != (B, past + T):
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} should be {(B, past + T)}")
            real = attention_mask.bool()  # (B, past + T)
            if past + T > n_max and int(real.sum(-1).max()) > n_max:  # padding beyond the context is fine
                raise ValueError(f"sequence of {int(real.sum(-1).max())} tokens exceeds context_length {n_max}")
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T): padding doesn't count
            allowed = causal_mask(T, past + T, input_ids.device) & real[:, None, :]  # (B, T, past + T)
            # Each query may also attend to itself, so a padding query (e.g. position 0 when left-padded)
            # has one allowed key: no all -inf row, no NaN that could reach real tokens through 0 · NaN.
            query_pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
            allowed |= torch.arange(past + T, device=input_ids.device) == query_pos[:, None]  # the diagonal
            mask = allowed[:, None]  # (B, 1, T, past + T), broadcast over heads
        x = self.token_embeddings(input_ids)  # (B, T, d)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, layer in enumerate(self.layers):
            if recompute:  # keep only the block's input; backward reruns the block
                x = torch.utils.checkpoint.checkpoint(layer, x, positions, mask, None, i, use_reentrant=False)
            else:
                x = layer(x, positions, mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.ln_final(x)  # (B, T, d)
        return x if return_hidden else self.lm_head(x)  # (B, T, V)


class ScalarHead(nn.Module):
    """r = w·h + b: one scalar per position (reward or value). weight (1, d) ~ N(0, 1/(d+1)), bias 0."""

    def __init__(self, d_model: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, d_model, device=device, dtype=dtype) / math.sqrt(d_model + 1))
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def forward(self, hidden: Tensor) -> Tensor:  # (B, T, d) -> (B, T) float32
        return (hidden @ self.weight.T + self.bias).squeeze(-1).float()
