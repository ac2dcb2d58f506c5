"""Hugging Face checkpoints in and out (pretrained.py), against transformers as the oracle.

Tiny random Llama / Qwen2 / Qwen3 / OLMo-2 checkpoints are built locally (2 layers, GQA, QKV bias, tied and
untied embeddings, Qwen3's per-head q/k norm with a head_dim other than hidden / heads, OLMo-2's post-norms and
q/k norm over the whole projection, one sharded) and written with transformers' own save_pretrained; nothing is downloaded. Weights are drawn
with a large scale (and random biases and norm gains) so that a wrong permutation, head grouping or bias
shows up far above the float32 tolerance.
"""
from __future__ import annotations

import json

import pytest
import torch

from cs336_alignment.lm.generation import generate
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.pretrained import (CheckpointError, config_from_hf, hf_architecture, interleaved_to_rotate_half,
                                        rotate_half_to_interleaved)

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

VOCAB = 320
VARIANTS = {  # name -> (config class, kwargs): each switch of model.py on and off at least once
    "qwen2_gqa_bias_tied": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
                                                rms_norm_eps=1e-6)),
    "qwen2_mha_bias_untied": ("Qwen2Config", dict(num_key_value_heads=4, tie_word_embeddings=False,
                                                  rope_theta=1e4, rms_norm_eps=1e-5)),
    "llama_gqa_untied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=5e5,
                                             rms_norm_eps=1e-5)),
    "llama_mqa_tied": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e4,
                                           rms_norm_eps=1e-6)),
    "olmo2_gqa_untied": ("Olmo2Config", dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=5e5,
                                             rms_norm_eps=1e-6)),
    "qwen3_gqa_headdim24_tied": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True,
                                                     rope_theta=1e6, rms_norm_eps=1e-6)),
}


def make_hf_model(variant: str, seed: int = 0):
    """A random transformers causal LM of the variant, in float32, eval mode."""
    config_cls, kwargs = VARIANTS[variant]
    config = getattr(transformers, config_cls)(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    """(variant, transformers model, directory it was saved to); the qwen2 tied variant is sharded."""
    variant = request.param
    hf_model = make_hf_model(variant)
    path = tmp_path_factory.mktemp(variant)
    shard = "40KB" if variant == "qwen2_gqa_bias_tied" else "50GB"
    hf_model.save_pretrained(path, max_shard_size=shard)
    return variant, hf_model, path


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_sharded_checkpoint_really_has_shards(checkpoint):
    variant, _, path = checkpoint
    if variant == "qwen2_gqa_bias_tied":
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 1


def test_logits_match_transformers(checkpoint):
    variant, hf_model, path = checkpoint
    model = TransformerLM.from_pretrained(path).eval()
    ids = random_ids(3, 40)
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    diff = (ours - theirs).abs().max().item()
    print(f"{variant}: max |logit diff| {diff:.2e} (logit scale {theirs.abs().max():.1f})")
    assert theirs.abs().max() > 1.0  # the weights are large enough for a layout error to show
    assert diff <= 1e-4


def test_left_padded_batch_matches_transformers(checkpoint):
    """Left padding + attention mask: each real token's logits equal transformers' with the same mask and
    position ids cumsum(mask) - 1 (what transformers' generate passes; its plain forward would count pads)."""
    variant, hf_model, path = checkpoint
    model = TransformerLM.from_pretrained(path).eval()
    ids, lengths = random_ids(3, 24, seed=2), [24, 17, 5]
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, 24 - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf_model(ids, attention_mask=mask, position_ids=positions).logits
        alone = model(ids[2:, -5:])  # the shortest row without any padding
    real = mask.bool()
    diff = (ours[real] - theirs[real]).abs().max().item()
    print(f"{variant}: left-padded max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
    assert (ours[2, -5:] - alone[0]).abs().max() <= 1e-4


def test_greedy_generation_with_kv_cache_matches_transformers(checkpoint):
    variant, hf_model, path = checkpoint
    model = TransformerLM.from_pretrained(path)
    prompts = [[5, 17, 33, 2 + 7, 101], [250, 3, 8]]
    out = generate(model, prompts, max_new_tokens=32, temperature=0.0, eos_token_id=None, pad_token_id=0)
    for prompt, ours in zip(prompts, out.tokens):
        theirs = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, len(prompt):].tolist()
        assert ours == theirs, variant


def test_dtype_on_load(checkpoint):
    _, _, path = checkpoint
    assert TransformerLM.from_pretrained(path, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16
    assert TransformerLM.from_pretrained(path, dtype="auto").lm_head.weight.dtype == torch.float32  # as saved
    assert TransformerLM.from_pretrained(path).token_embeddings.weight.dtype == torch.float32


def test_tied_embeddings_share_one_parameter(checkpoint):
    variant, _, path = checkpoint
    model = TransformerLM.from_pretrained(path)
    tied = model.lm_head.weight is model.token_embeddings.weight
    assert tied == ("tied" in variant and "untied" not in variant)
    n_hf = sum(p.numel() for p in checkpoint[1].parameters())
    assert sum(p.numel() for p in model.parameters()) == n_hf


def test_rope_permutation_round_trips_and_turns_rotate_half_into_interleaved():
    """Oracle: HF's rotate-half RoPE on x equals our interleaved RoPE on the permuted x, permuted back."""
    from cs336_alignment.lm.model import RotaryPositionalEmbedding

    H, d, T = 3, 8, 6
    w = torch.randn(H * d, 5)
    assert torch.equal(interleaved_to_rotate_half(rotate_half_to_interleaved(w, H), H), w)
    x = torch.randn(H, T, d)
    pos = torch.arange(T)
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    angles = torch.cat([pos[:, None] * inv_freq] * 2, dim=-1)  # (T, d): HF's emb = cat(freqs, freqs)
    rotate_half = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    hf = x * angles.cos() + rotate_half * angles.sin()
    ours = RotaryPositionalEmbedding(10000.0, d, T)(rotate_half_to_interleaved(x.transpose(0, 1).reshape(T, H * d).T, H)
                                                    .T.reshape(T, H, d).transpose(0, 1), pos)
    back = interleaved_to_rotate_half(ours.transpose(0, 1).reshape(T, H * d).T, H).T.reshape(T, H, d).transpose(0, 1)
    torch.testing.assert_close(back, hf)


def test_unknown_architecture_and_missing_tensor_are_named(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="architectures"):
        config_from_hf({"architectures": ["GPT2LMHeadModel"]})
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10,
            "max_position_embeddings": 8, "num_hidden_layers": 1}
    with pytest.raises(CheckpointError, match="'intermediate_size'"):
        config_from_hf(base)
    with pytest.raises(CheckpointError, match="rope_scaling.rope_type"):
        config_from_hf({**base, "intermediate_size": 16, "rope_scaling": {"rope_type": "llama3"}})
    # a checkpoint without one tensor
    from safetensors.torch import load_file, save_file

    _, hf_model, _ = checkpoint
    hf_model.save_pretrained(tmp_path, max_shard_size="50GB")
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        TransformerLM.from_pretrained(tmp_path)


def test_cs336_state_dict_still_loads_strictly():
    """The a1 model (no switches) keeps exactly CS336's state-dict keys: no bias entries appear."""
    config = TransformerConfig(vocab_size=50, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32)
    keys = set(TransformerLM(config).state_dict())
    assert not any("bias" in k for k in keys) and "lm_head.weight" in keys and len(keys) == 2 + 9 * 2 + 1
    TransformerLM(config).load_state_dict(TransformerLM(config).state_dict(), strict=True)


def test_saved_config_reads_back(tmp_path, checkpoint):
    variant, _, path = checkpoint
    model = TransformerLM.from_pretrained(path)
    model.save_pretrained(tmp_path)
    again = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta", "num_kv_heads",
                  "qkv_bias", "rms_norm_eps", "tie_embeddings", "context_length", "head_dim", "norm_placement",
                  "qk_norm", "d_head"):
        assert getattr(again, field) == getattr(model.config, field), field


def test_round_trip_after_three_sft_steps_opens_in_transformers(tmp_path, checkpoint):
    """Train 3 SFT steps on the loaded model, save_pretrained, reopen with transformers: same logits."""
    from cs336_alignment.logprobs import get_response_log_probs
    from cs336_alignment.lm.nn_utils import AdamW
    from cs336_alignment.sft_step import sft_microbatch_train_step

    variant, hf_model, path = checkpoint
    model = TransformerLM.from_pretrained(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = AdamW(model.parameters(), lr=1e-2)
    ids = random_ids(4, 17, seed=3)
    response_mask = torch.zeros(4, 16, dtype=torch.bool)
    response_mask[:, 8:] = True
    for _ in range(3):
        log_probs = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"]
        sft_microbatch_train_step(log_probs, response_mask, gradient_accumulation_steps=1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "q_proj" in k)
    model.save_pretrained(tmp_path / "trained")
    reopened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "trained", dtype=torch.float32).eval()
    assert type(reopened).__name__ == type(hf_model).__name__
    model.eval()
    with torch.no_grad():
        diff = (model(ids) - reopened(ids).logits).abs().max().item()
    print(f"{variant}: round trip after 3 SFT steps, max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
    again = TransformerLM.from_pretrained(tmp_path / "trained")  # and our loader reads what we wrote, exactly
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_get_response_log_probs_on_transformers_model_equals_ours(checkpoint):
    """The adapter accepts a model whose output has `.logits` (CS336's tests pass HF models) and gives what
    the loaded copy gives through the fused kernel; entropies too."""
    from tests.adapters import run_get_response_log_probs

    variant, hf_model, path = checkpoint
    model = TransformerLM.from_pretrained(path).eval()
    ids = random_ids(2, 21, seed=4)
    with torch.no_grad():
        theirs = run_get_response_log_probs(model=hf_model, input_ids=ids[:, :-1], labels=ids[:, 1:],
                                            return_token_entropy=True)
        ours = run_get_response_log_probs(model=model, input_ids=ids[:, :-1], labels=ids[:, 1:],
                                          return_token_entropy=True)
    for key in ("log_probs", "token_entropy"):
        diff = (theirs[key] - ours[key]).abs().max().item()
        print(f"{variant}: get_response_log_probs {key} max |diff| {diff:.2e}")
        assert diff <= 1e-4


def test_qwen2_5_0_5b_config_gives_its_494m_parameters():
    """The fields of Qwen2.5-0.5B-Instruct's config.json (transformers 4.x style: top-level rope_theta,
    torch_dtype, a sliding_window that use_sliding_window leaves off). Oracle: the parameter count by hand,
    V·d + 24·(q d² + d, k/v 2·(d·128 + 128), o d², MLP 3·d·4864, norms 2d) + d = 494,032,768 (0.49B)."""
    hf = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
          "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
          "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
          "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
          "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
    config = config_from_hf(hf)
    assert (config.num_kv_heads, config.qkv_bias, config.tie_embeddings, config.rope_theta, config.rms_norm_eps) == \
        (2, True, True, 1e6, 1e-6)
    with torch.device("meta"):
        model = TransformerLM(config)
    d = 896
    by_hand = 151936 * d + 24 * ((d * d + d) + 2 * (d * 128 + 128) + d * d + 3 * d * 4864 + 2 * d) + d
    assert sum(p.numel() for p in model.parameters()) == by_hand == 494_032_768


def test_generation_with_kv_cache_equals_without(checkpoint):
    """Sampling (temperature 1, one seed) with the KV cache gives the tokens and log-probs of recomputing the
    whole prefix at every step, on each architecture (q/k norms and post-norms included)."""
    _, _, path = checkpoint
    model = TransformerLM.from_pretrained(path).eval()
    prompts = [[5, 17, 33, 9, 101], [250, 3, 8]]
    runs = [generate(model, prompts, max_new_tokens=20, temperature=1.0, eos_token_id=None, pad_token_id=0,
                     generator=torch.Generator().manual_seed(7), use_kv_cache=cached) for cached in (True, False)]
    assert runs[0].tokens == runs[1].tokens
    for a, b in zip(runs[0].logprobs, runs[1].logprobs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_olmo2_and_qwen3_layouts(checkpoint):
    """The switches each family sets, and the HF tensor names they read (post-norms for OLMo-2)."""
    variant, hf_model, path = checkpoint
    config = TransformerLM.from_pretrained(path).config
    family = variant.split("_")[0]
    assert config.norm_placement == ("post" if family == "olmo2" else "pre")
    assert config.qk_norm == {"olmo2": "full", "qwen3": "head"}.get(family, "none")
    assert config.d_head == (24 if family == "qwen3" else 16)
    assert hf_architecture(config) == type(hf_model).__name__


def test_olmo_2_0425_1b_config_gives_its_1_48b_parameters():
    """The fields of OLMo-2-0425-1B's config.json (the 2026 course model). Oracle: the count by hand,
    2·V·d (untied) + 16·(4 d² attention, 2d q/k norms, 3·d·8192 MLP, 2d post-norms) + d = 1,484,916,736."""
    hf = {"architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
          "eos_token_id": 100257, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
          "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "olmo2",
          "num_attention_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 16, "pad_token_id": 100277,
          "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False,
          "torch_dtype": "float32", "use_cache": True, "vocab_size": 100352}
    config = config_from_hf(hf)
    assert (config.norm_placement, config.qk_norm, config.d_head, config.rope_theta, config.rms_norm_eps) == \
        ("post", "full", 128, 5e5, 1e-6)
    with torch.device("meta"):
        model = TransformerLM(config)
    d = 2048
    by_hand = 2 * 100352 * d + 16 * (4 * d * d + 2 * d + 3 * d * 8192 + 2 * d) + d
    assert sum(p.numel() for p in model.parameters()) == by_hand == 1_484_916_736


def test_qwen3_0_6b_config_gives_its_0_44b_non_embedding_parameters():
    """Qwen3-0.6B's config.json: head_dim 128 with 16 heads on hidden_size 1024 (q_proj 1024 -> 2048).
    Oracle: by hand, 28·(q 1024·2048, k/v 2·1024·1024, o 2048·1024, q/k norms 2·128, MLP 3·1024·3072,
    norms 2·1024) + 1024 = 440,467,456 besides the tied V·d embedding (the model card's 0.44B)."""
    hf = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
          "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
          "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960,
          "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
          "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
          "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
          "use_sliding_window": False, "vocab_size": 151936}
    config = config_from_hf(hf)
    assert (config.qk_norm, config.d_head, config.num_kv_heads, config.tie_embeddings) == ("head", 128, 8, True)
    with torch.device("meta"):
        model = TransformerLM(config)
    by_hand = 28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3072 + 2 * 1024) + 1024
    assert model.num_params(include_embeddings=False) == by_hand == 440_467_456
    assert model.layers[0].attn.q_proj.weight.shape == (2048, 1024)


def test_switch_combinations_without_an_hf_architecture_are_refused(tmp_path):
    """Post-norm without OLMo-2's q/k norm, or a q/k/v bias with Qwen3's, has no transformers class: save
    refuses before writing anything; so do OLMo-2 / Qwen3 fields we do not implement."""
    base = dict(vocab_size=50, context_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    for switches in (dict(norm_placement="post"), dict(qk_norm="head", qkv_bias=True), dict(qk_norm="full")):
        with pytest.raises(CheckpointError, match="no Hugging Face architecture"):
            TransformerLM(TransformerConfig(**base, **switches)).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    hf = {"architectures": ["Olmo2ForCausalLM"], "hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10,
          "max_position_embeddings": 8, "num_hidden_layers": 1, "intermediate_size": 16}
    with pytest.raises(CheckpointError, match="'attention_bias'"):
        config_from_hf({**hf, "attention_bias": True})
    with pytest.raises(CheckpointError, match="'head_dim'"):
        config_from_hf({**hf, "head_dim": 8})
    with pytest.raises(CheckpointError, match="'use_sliding_window'"):
        config_from_hf({**hf, "architectures": ["Qwen3ForCausalLM"], "use_sliding_window": True})
    with pytest.raises(ValueError, match="qk_norm"):
        TransformerLM(TransformerConfig(**base, qk_norm="layer"))
