"""The stages on a Hugging Face checkpoint directory: eval -> sft -> grpo -> export, a few CPU steps each.

The checkpoint is a tiny random Qwen2 (GQA, QKV bias, tied embeddings) with a byte-level BPE tokenizer and
a ChatML template trained here (tests/test_hf_tokenizer.py's builder); the data are GSM8K-format lines.
"""
from __future__ import annotations

import json

import pytest
import torch

from cs336_alignment.evaluation import evaluate

from cs336_alignment.lm import export

from cs336_alignment.world import tasks
from cs336_alignment.lm.data import write_jsonl
from cs336_alignment.lm.model import TransformerLM
from cs336_alignment.lm.tokenizer import PretrainedTokenizer, load_tokenizer
from cs336_alignment.train import grpo, sft
from cs336_alignment.lm.checkpoint import load_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tests.test_hf_tokenizer import build_hf_tokenizer

    path = tmp_path_factory.mktemp("tiny_qwen2")
    _, fast = build_hf_tokenizer("qwen2", path)
    config = transformers.Qwen2Config(vocab_size=len(fast) + 8, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=384, tie_word_embeddings=True, rope_theta=1e6,
                                      eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k")
    write_jsonl(path / "train.jsonl", tasks.generate_problems(24, "train", seed=0))
    write_jsonl(path / "test.jsonl", tasks.generate_problems(4, "test", seed=0))
    return path


def test_load_model_hook_returns_the_checkpoint_and_its_tokenizer(hf_dir):
    model, extra = load_model(hf_dir)
    assert model.config.qkv_bias and model.config.tie_embeddings and model.config.num_kv_heads == 2
    assert extra["model_config"]["tokenizer"] == str(hf_dir.resolve())
    tokenizer = load_tokenizer(model.config.tokenizer)
    assert isinstance(tokenizer, PretrainedTokenizer) and tokenizer.chat_format.kind == "chatml"


def test_eval_sft_grpo_export_from_a_hugging_face_directory(hf_dir, gsm8k, tmp_path):
    common = ["--device", "cpu", "--threads", "1", "--quiet"]
    metrics = evaluate.main(["--init", str(hf_dir), "--data", str(gsm8k / "test.jsonl"), "--max-new-tokens", "6",
                             "--show", "0", "--device", "cpu"])
    assert metrics["n"] == 4 and 0.0 <= metrics["reward/gold_mean"] <= 1.0

    result = sft.main(["--init", str(hf_dir), "--data", str(gsm8k / "train.jsonl"), "--out", str(tmp_path / "sft"),
                       "--num-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "1",
                       "--log-every", "1", "--eval-every", "3", "--checkpoint-every", "3", "--n-eval-examples", "4",
                       *common])
    assert result["steps"] == 3 and result["loss/train"] > 0 and result["eval/loss"] > 0
    model, extra = load_model(result["checkpoint"])
    assert extra["model_config"]["tokenizer"] == str(hf_dir.resolve())  # later stages find the tokenizer

    result = grpo.main(["--init", result["checkpoint"], "--data", str(gsm8k / "train.jsonl"),
                        "--out", str(tmp_path / "grpo"), "--num-steps", "1", "--prompts-per-step", "2",
                        "--group-size", "2", "--max-new-tokens", "6", "--n-eval-problems", "2",
                        "--eval-data", str(gsm8k / "test.jsonl"),
                        "--eval-samples", "1", "--micro-batch-size", "4", *common])
    assert result["steps"] == 1

    assert export.main(["--ckpt", result["checkpoint"], "--out", str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    policy, _ = load_model(result["checkpoint"])
    reopened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, policy.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (policy.eval()(ids) - reopened(ids).logits).abs().max() <= 1e-4
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")  # tokenizer files came along
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    ours = load_tokenizer(hf_dir)
    assert hf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        ours.apply_chat_template(chat, add_generation_prompt=True)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert isinstance(TransformerLM.from_pretrained(tmp_path / "hf"), TransformerLM)


def test_rm_dpo_ppo_from_a_hugging_face_directory(hf_dir, gsm8k, tmp_path):
    """The other stages take the directory as --init too (and run on its tokenizer and ChatML template)."""
    from cs336_alignment.evaluation.preferences import write_preferences
    from cs336_alignment.train import dpo, ppo, reward_model

    pairs = [{"prompt": p["question"], "chosen": p["answer"], "rejected": "I am not sure."}
             for p in tasks.generate_problems(8, "train", seed=3)]
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    common = ["--init", str(hf_dir), "--device", "cpu", "--threads", "1", "--quiet"]
    data = ["--data", str(tmp_path / "pairs.jsonl"), "--eval-data", str(tmp_path / "pairs.jsonl")]
    rm = reward_model.main([*common, *data, "--out", str(tmp_path / "rm"), "--num-steps", "2", "--batch-size", "4",
                            "--warmup-steps", "1", "--log-every", "1", "--eval-every", "2"])
    assert (tmp_path / "rm" / "ckpt.pt").exists() and 0.0 <= rm["eval/rm/accuracy"] <= 1.0
    result = dpo.main([*common, *data, "--out", str(tmp_path / "dpo"), "--num-steps", "2", "--batch-size", "4",
                       "--warmup-steps", "1", "--log-every", "1", "--eval-every", "2", "--n-gold-problems", "0"])
    assert abs(result["loss/train"]) < 10 and (tmp_path / "dpo" / "ckpt.pt").exists()
    result = ppo.main([*common, "--reward", "gold", "--data", str(gsm8k / "train.jsonl"), "--out", str(tmp_path / "ppo"),
                       "--num-steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6",
                       "--n-eval-problems", "2", "--eval-samples", "1", "--micro-batch-size", "4"])
    assert (tmp_path / "ppo" / "ckpt.pt").exists()


def test_gpu_preset_settings_run_sft_then_grpo_on_cpu(hf_dir, gsm8k, tmp_path):
    """--preset gpu's settings (gradient accumulation, gradient checkpointing, GRPO minibatches, ...) with only
    the device and the sizes cut down, so that the preset's combination runs here."""
    common = ["--preset", "gpu", "--device", "cpu", "--threads", "1", "--quiet"]
    result = sft.main([*common, "--init", str(hf_dir), "--data", str(gsm8k / "train.jsonl"), "--out",
                       str(tmp_path / "sft"), "--num-steps", "2", "--batch-size", "8", "--n-eval-examples", "2"])
    assert result["steps"] == 2
    result = grpo.main([*common, "--init", result["checkpoint"], "--data", str(gsm8k / "train.jsonl"), "--out",
                        str(tmp_path / "grpo"), "--num-steps", "1", "--prompts-per-step", "2", "--group-size", "4",
                        "--max-new-tokens", "8", "--n-eval-problems", "2", "--micro-batch-size", "2"])
    assert result["steps"] == 1
