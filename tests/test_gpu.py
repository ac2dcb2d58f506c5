"""The single-GPU path's pieces that run anywhere (presets, gradient checkpointing), and a CUDA-only smoke run.

torch.compile of the blocks (gpu.configure_model(compile=True)) was checked by hand on CPU: log-probs within
8e-6 and gradients within 3e-5 of eager, the same greedy tokens with the KV cache, but 85 s of compilation,
too slow for this suite.
"""
from __future__ import annotations

import pytest
import torch

from cs336_alignment.lm.gpu import configure_model
from cs336_alignment.train.presets import PIPELINE_PRESETS, PRESETS, section_overrides
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.train.common import parse_config
from cs336_alignment.train.grpo import GRPOConfig
from cs336_alignment.train.sft import SFTConfig


def test_gpu_preset_sets_defaults_and_flags_still_win():
    cfg = parse_config(SFTConfig, ["--preset", "gpu", "--lr", "2e-5"], "sft", section="sft")
    assert cfg.lr == 2e-5  # the flag
    assert cfg.device == "cuda" and cfg.gradient_checkpointing and cfg.grad_accum_steps == 4  # the preset
    assert parse_config(SFTConfig, [], "sft", section="sft") == SFTConfig()  # no preset: the dataclass defaults
    grpo = parse_config(GRPOConfig, ["--preset", "gpu", "--init", "x"], "grpo", section="grpo")
    assert grpo.max_new_tokens == 512 and grpo.init == "x"


def test_one_preset_registry_for_every_command(monkeypatch):
    """--preset means the same for a stage run alone as in the pipeline: the preset's section for that stage."""
    tiny = parse_config(GRPOConfig, ["--preset", "tiny"], "grpo", section="grpo")
    assert all(getattr(tiny, k) == v for k, v in PRESETS["tiny"]["grpo"].items())
    assert "gpu" in PRESETS and "gpu" not in PIPELINE_PRESETS and "tiny" in PIPELINE_PRESETS
    with pytest.raises(ValueError, match="unknown preset"):
        section_overrides("tpu", "sft")
    with pytest.raises(ValueError, match="no 'rm' section"):
        section_overrides("gpu", "rm")
    monkeypatch.setitem(PRESETS, "bad", {"sft": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match=r"SFTConfig has no fields \['learning_rate'\]"):
        parse_config(SFTConfig, ["--preset", "bad"], "sft", section="sft")


def test_gradient_checkpointing_gives_the_same_gradients():
    """Oracle: the same model without checkpointing (recomputation must not change a single value)."""
    config = TransformerConfig(vocab_size=60, context_length=32, d_model=32, num_layers=3, num_heads=4, d_ff=64,
                               num_kv_heads=2, qkv_bias=True, tie_embeddings=True)
    torch.manual_seed(0)
    plain = TransformerLM(config)
    checkpointed = TransformerLM(config)
    checkpointed.load_state_dict(plain.state_dict())
    configure_model(checkpointed, torch.device("cpu"), gradient_checkpointing=True)
    ids = torch.randint(0, 60, (2, 17))
    for model in (plain, checkpointed):
        get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"].sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU preset needs CUDA")
def test_gpu_preset_sft_steps_on_cuda(tmp_path):
    """Two SFT steps with --preset gpu (bf16 autocast, fused log-probs, gradient checkpointing) on CUDA."""
    from cs336_alignment.train import sft

    result = sft.main(["--preset", "gpu", "--num-steps", "2", "--batch-size", "8", "--grad-accum-steps", "2",
                       "--n-examples", "64", "--n-eval-examples", "8", "--eval-every", "2", "--out", str(tmp_path),
                       "--quiet"])
    assert result["steps"] == 2 and torch.isfinite(torch.tensor(result["loss/train"]))
