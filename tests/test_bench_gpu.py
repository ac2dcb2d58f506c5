"""`bench gpu` (bench/gpu.py): the GPU script runs end to end on the CPU at tiny size, its LoRA and model sizes are
the hand-computed ones, and without CUDA its default skips cleanly."""
from __future__ import annotations

import json

import pytest
import torch

from cs336_alignment.bench import cli
from cs336_alignment.bench.gpu import SKIP_LINE, build_model
from cs336_alignment.lm import lora


def lora_count(d: int, kv: int, ff: int, layers: int, r: int) -> int:
    """Rank-r adapters A (r, in) and B (out, r) on q (d->d), k, v (d->kv), o (d->d), w1, w3 (d->ff), w2 (ff->d)."""
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (ff, d), (d, ff)]
    return layers * sum(r * (i + o) for i, o in shapes)


def test_tiny_run_on_cpu_prints_every_row(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert cli.main(["gpu", "--device", "cpu", "--tiny", "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                     "--new-tokens", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # tiny: d_model 64, 4 heads of 16 -> 2 kv heads = 32, d_ff 128, 2 layers, rank 16
    lora_trainable = lora_count(64, 32, 128, 2, 16)
    assert lora_trainable == 32_768
    for case in ("sft full", "sft LoRA r=16", "grpo full", "grpo LoRA r=16", "sampling"):
        assert f"| {case} |" in text, case
    assert f"| sft LoRA r=16 | {lora_trainable:,} of " in text
    assert "NCCL data-parallel check: needs 2 CUDA GPUs" in text
    report = json.loads(out.read_text())
    rows = {r["case"]: r for r in report["rows"]}
    assert set(rows) == {"sft full", "sft LoRA r=16", "grpo full", "grpo LoRA r=16", "sampling"}
    for name in ("sft LoRA r=16", "grpo LoRA r=16"):
        assert rows[name]["trainable"] == lora_trainable
        assert rows[name]["total"] == rows["sft full"]["total"] + lora_trainable
    assert rows["sft full"]["trainable"] == rows["sft full"]["total"]
    assert rows["sampling"]["tokens"] == 2 * 4                        # no EOS: every prompt gets all its tokens
    for r in report["rows"]:
        assert r["tokens_per_s"] > 0 and r["peak_mib"] is None        # CPU: no CUDA peak
        assert r["last_loss"] is None or torch.isfinite(torch.tensor(r["last_loss"]))
    assert report["nccl"] is None


def test_full_size_model_has_qwen2_5_0_5b_counts():
    """On the meta device (no memory): Qwen2.5-0.5B's 494,032,768 parameters (tied embeddings counted once) and
    the rank-16 count of all seven projections, 8,798,208 (the number PEFT prints for this model)."""
    model, _ = build_model(False, torch.device("meta"))
    assert lora.count_parameters(model) == (494_032_768, 494_032_768)
    model, params = build_model(False, torch.device("meta"), lora_rank=16)
    trainable, total = lora.count_parameters(model)
    assert trainable == lora_count(896, 128, 4864, 24, 16) == 8_798_208 == sum(p.numel() for p in params)
    assert total == 494_032_768 + trainable


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_default_without_cuda_prints_the_skip_line_and_exits_0(capsys):
    assert cli.main(["gpu"]) == 0
    assert capsys.readouterr().out.strip() == SKIP_LINE
