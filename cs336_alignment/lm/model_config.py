"""TransformerConfig: the hyperparameters of `model.TransformerLM`, in a module of their own.

They sit below both readers of them: `model.py` builds the network from a config, and `pretrained.py`
translates a Hugging Face config.json to and from one without knowing the network. Keeping the dataclass
here lets `pretrained.py` sit below `model.py`, so `TransformerLM.from_pretrained` imports it at the top of
the file (no import circle). `from cs336_alignment.lm.model import TransformerConfig` works too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TransformerConfig:
    vocab_size: int  # V, rows of the embedding table and of lm_head
    context_length: int  # longest sequence (also the RoPE table size)
    d_model: int  # residual stream width d
    num_layers: int
    num_heads: int  # d_model / num_heads must be even (RoPE rotates pairs)
    d_ff: int  # SwiGLU inner width (CS336: about 8/3 · d_model, a multiple of 64)
    rope_theta: float = 10000.0  # RoPE base θ
    use_sdpa: bool = True  # torch's fused attention (same maths as the hand-written one; faster)
    # The switches a Llama / Qwen2 checkpoint needs (pretrained.py sets them from its config.json):
    num_kv_heads: int | None = None  # GQA: key/value heads (HF num_key_value_heads); None = num_heads
    qkv_bias: bool = False  # bias on q_proj, k_proj, v_proj (Qwen2)
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon (HF rms_norm_eps)
    tie_embeddings: bool = False  # lm_head shares the input embedding's weight (HF tie_word_embeddings)
    tokenizer: str = ""  # directory of the tokenizer these ids belong to (a HF checkpoint); "" = the shipped one
    # The switches an OLMo-2 / Qwen3 checkpoint needs (defaults: the CS336 model, same state-dict keys):
    head_dim: int | None = None  # width of one head (Qwen3: independent of d_model); None = d_model / num_heads
    norm_placement: str = "pre"  # "pre": x + f(norm(x)) (CS336, Llama, Qwen); "post": x + norm(f(x)) (OLMo-2)
    qk_norm: str = "none"  # RMSNorm on q and k before RoPE: "none", "full" (all heads, OLMo-2), "head" (Qwen3)

    @property
    def d_head(self) -> int:
        """Width of one attention head (the RoPE dimension d_k)."""
        return self.head_dim or self.d_model // self.num_heads
