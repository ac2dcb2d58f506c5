"""TransformerConfig: the hyperparameters of `model.TransformerLM`, in a module of their own.

They sit below both readers of them: `model.py` builds the network from a config, and `pretrained.py`
translates a Hugging Face config.json to and from one without knowing the network. Keeping the dataclass
here lets `pretrained.py` sit below `model.py`, so `TransformerLM.from_pretrained` imports it at the top of
the file (no import circle). `from cs336_alignment.model import TransformerConfig` works too.
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
