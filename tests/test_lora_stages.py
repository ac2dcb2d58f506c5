"""LoRA in the training loops (`--lora-rank`): sft, dpo, grpo and rm train a few steps with adapters from their
command-line flags; the base weights stay bit-identical, the run's ckpt.pt is the merged model (its outputs equal
the unmerged trained model's), adapter.pt reloads onto the base, the reference is the base with adapters disabled,
--resume is exact, and Hugging Face checkpoints (Llama, Qwen2, OLMo-2, Qwen3) train and merge too."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from cs336_alignment.lm import lora
from cs336_alignment.__main__ import main as cli_main
from cs336_alignment.lm.checkpoint import load_model, read_checkpoint
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.reward_model import load_reward_model
from cs336_alignment.train import dpo, grpo, reward_model, sft
from cs336_alignment.train.common import parse_config, read_metrics
from test_pretrained_stages import gsm8k, hf_dir  # noqa: F401  (pytest fixtures)
from test_train_rl import starts_lowercase
from test_train_rm_bon import pref_files, tiny_ckpt  # noqa: F401  (pytest fixtures)
from test_train_smoke import interrupt_then_resume

LORA = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q,v,o,w1,w2,w3", "--quiet", "--device", "cpu"]
IDS = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def stage_args(stage: str, ckpt: str, prefs: tuple[str, str], out) -> list[str]:
    common = ["--init", ckpt, "--out", str(out), "--num-steps", "2", "--warmup-steps", "0", "--lr", "1e-2",
              "--min-lr", "1e-2", *LORA]
    if stage == "sft":
        return [*common, "--n-examples", "16", "--n-eval-examples", "4", "--batch-size", "4", "--eval-every", "1000"]
    if stage in ("dpo", "rm"):
        extra = ["--n-gold-problems", "0"] if stage == "dpo" else []
        return [*common, "--data", prefs[0], "--eval-data", prefs[1], "--batch-size", "4", "--eval-every", "0", *extra]
    return [*common, "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "3", "--n-problems", "16",
            "--n-eval-problems", "2", "--eval-samples", "1", "--micro-batch-size", "16", "--kl-coef", "0.1"]


MODULES = {"sft": sft, "dpo": dpo, "grpo": grpo, "rm": reward_model}


def run_stage(stage: str, args: list[str]) -> None:
    """The stage as `python -m cs336_alignment <stage> ARGS` runs it (GRPO in-process: its test reward)."""
    if stage == "grpo":
        grpo.train(parse_config(grpo.GRPOConfig, args, "grpo", section="grpo"), reward_fn=starts_lowercase)
    else:
        assert cli_main([stage, *args]) == 0


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)   # (B, T, V) logits, or (B,) rewards for the reward model


@pytest.mark.parametrize("stage", list(MODULES))
def test_stage_trains_adapters_only_and_saves_the_merged_model(stage, tiny_ckpt, pref_files, tmp_path, monkeypatch):
    saved = []   # (a copy of the wrapped model, its parameters) at each checkpoint the loop writes
    module = MODULES[stage]
    real_save = module.save_checkpoint

    def spy(model, *args, **kwargs):
        saved.append(copy.deepcopy(model))
        real_save(model, *args, **kwargs)

    monkeypatch.setattr(module, "save_checkpoint", spy)
    run_stage(stage, stage_args(stage, tiny_ckpt, pref_files, tmp_path))
    trained = saved[-1].eval()
    base = read_checkpoint(tiny_ckpt)["model"]
    prefix = "trunk." if stage == "rm" else ""
    params = dict(trained.named_parameters())
    adapters = {k: p for k, p in params.items() if k.endswith((".lora_A", ".lora_B"))}
    assert len(adapters) == 2 * 6, "one layer, six targets, A and B each"
    assert any(k.endswith("lora_B") and p.abs().max() > 0 for k, p in adapters.items()), "B moved away from 0"
    for key, tensor in base.items():   # bit-identical base weights (tied lm_head: the same parameter)
        assert torch.equal(trained.state_dict()[prefix + key], tensor), key
    if stage == "rm":
        assert params["head.weight"].requires_grad, "the reward model's new head trains with the adapters"

    # ckpt.pt: the merged model, loadable by every consumer, same outputs as the unmerged trained model
    if stage == "rm":
        merged, extra = load_reward_model(tmp_path / "ckpt.pt")
    else:
        merged, extra = load_model(tmp_path / "ckpt.pt")
    assert not any(True for _ in lora.lora_layers(merged)) and extra["lora"]["rank"] == 4
    torch.testing.assert_close(outputs(merged.eval()), outputs(trained), rtol=0, atol=1e-5)
    if stage != "rm":
        assert not torch.allclose(outputs(merged), outputs(load_model(tiny_ckpt)[0])), "it is not the base model"

    # adapter.pt: the adapters alone; onto the base they give the trained model back
    if stage != "rm":
        rebuilt = lora.load_adapters(tmp_path / "adapter.pt", load_model(tiny_ckpt)[0])
        torch.testing.assert_close(outputs(rebuilt), outputs(trained), rtol=0, atol=0)
        assert torch.load(tmp_path / "adapter.pt", weights_only=True)["extra"]["step"] == 2


def test_optimizer_holds_state_for_the_adapters_only(tiny_ckpt, tmp_path):
    assert cli_main(["sft", *stage_args("sft", tiny_ckpt, ("", ""), tmp_path)]) == 0
    state = read_checkpoint(tmp_path / "ckpt.pt")["optimizer"]
    assert len(state["state"]) == 2 * 6 and len(state["param_groups"][0]["params"]) == 2 * 6
    shapes = sorted(tuple(s["exp_avg"].shape) for s in state["state"].values())
    assert all(4 in shape for shape in shapes), f"every moment is an adapter's (rank 4): {shapes}"


def test_reference_is_the_base_with_adapters_disabled(tiny_ckpt):
    """DPO's / GRPO's reference with LoRA: the same weights with the adapters off equal the base model's logits and
    log-probs (both log-prob paths), without a second copy of the weights."""
    base, _ = load_model(tiny_ckpt)
    policy = copy.deepcopy(base)
    cfg = sft.SFTConfig(lora_rank=4, lora_targets="q,k,v,o,w1,w2,w3")
    trainable = lora.setup(policy, cfg)
    with torch.no_grad():
        for p in trainable:
            p.normal_()                                  # a trained-looking adapter (B != 0)
    reference = lora.frozen_reference(policy)
    assert isinstance(reference, lora.BaseModel) and reference.lm_head is policy.lm_head
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in policy.parameters())
    labels = torch.roll(IDS, -1, 1)
    with torch.no_grad():
        assert torch.equal(reference(IDS), base(IDS)) and not torch.allclose(policy(IDS), base(IDS))
        for fused in (True, False):
            torch.testing.assert_close(get_response_log_probs(reference, IDS, labels, fused=fused)["log_probs"],
                                       get_response_log_probs(base, IDS, labels, fused=fused)["log_probs"],
                                       rtol=0, atol=0)
    assert all(layer.enabled for _, layer in lora.lora_layers(policy)), "adapters back on after the reference call"
    policy.train()
    reference.eval()
    assert policy.training, "the view leaves the policy's mode alone"


def test_dpo_with_lora_starts_at_log2(tiny_ckpt, pref_files, tmp_path):
    """At init the adapters add nothing: the policy equals the adapters-disabled reference, loss log 2 exactly."""
    args = [a for a in stage_args("dpo", tiny_ckpt, pref_files, tmp_path) if a != "--quiet"]
    args[args.index("--eval-every") + 1] = "1"
    assert cli_main(["dpo", *args, "--quiet"]) == 0
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["step"] == 0 and abs(records[0]["eval/loss"] - 0.6931471805599453) < 1e-6


def test_rank_zero_changes_nothing(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    params = lora.setup(model, sft.SFTConfig())
    assert params == list(model.parameters()) and all(p.requires_grad for p in params)
    assert not any(True for _ in lora.lora_layers(model))
    assert not isinstance(lora.frozen_reference(model), lora.BaseModel)


@pytest.mark.parametrize("argv,message", [(["--lora-rank", "-1"], "lora-rank must be >= 0"),
                                          (["--lora-rank", "2", "--lora-targets", "q,gate"], "lora-targets"),
                                          (["--lora-rank", "2", "--lora-dropout", "1.5"], "dropout")])
def test_bad_lora_flags_exit_2_with_one_line(argv, message, tiny_ckpt, tmp_path, capsys):
    assert cli_main(["sft", "--init", tiny_ckpt, "--out", str(tmp_path), "--num-steps", "1", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_resume_with_lora_is_exact(stage, tiny_ckpt, pref_files, tmp_path, monkeypatch):
    """4 steps straight vs 2 steps, a crash right after the checkpoint, and --resume: the same adapters, optimizer
    state and merged weights bit for bit, and the same losses."""
    def args(out):
        a = stage_args(stage, tiny_ckpt, pref_files, out)
        a[a.index("--num-steps") + 1] = "4"
        return [*a, "--checkpoint-every", "2", "--log-every", "1", "--lora-dropout", "0.1"]
    run_stage(stage, args(tmp_path / "a"))
    interrupt_then_resume(MODULES[stage], lambda resume: run_stage(stage, [*args(tmp_path / "b")] +
                                                                   (["--resume"] if resume else [])), monkeypatch)
    a, b = (read_checkpoint(tmp_path / run / "ckpt.pt") for run in ("a", "b"))
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["extra"]["lora"]["adapters"]:
        assert torch.equal(a["extra"]["lora"]["adapters"][key], b["extra"]["lora"]["adapters"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k])), (i, k)
    losses = [[r.get("loss/train", r.get("loss/policy")) for r in read_metrics(tmp_path / run / "metrics.jsonl")
               if "loss/train" in r or "loss/policy" in r] for run in ("a", "b")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


@pytest.mark.parametrize("variant", ["llama_gqa_untied", "qwen2_gqa_bias_tied", "olmo2_gqa_untied",
                                     "qwen3_gqa_headdim24_tied"])
def test_hugging_face_checkpoint_trains_with_lora_and_merges(variant, tmp_path):
    """A tiny random checkpoint written by transformers: every projection gets an adapter (the loaded names are
    ours), the adapters train while the base stays bit-identical, and the merged checkpoint, exported and reopened
    by transformers itself, gives the unmerged trained model's logits."""
    transformers = pytest.importorskip("transformers")
    from test_pretrained import make_hf_model

    make_hf_model(variant).save_pretrained(tmp_path / "hf")
    base, _ = load_model(tmp_path / "hf")
    model = copy.deepcopy(base)
    trainable = lora.setup(model, sft.SFTConfig(lora_rank=4, lora_alpha=8.0))
    assert sum(1 for _ in lora.lora_layers(model)) == 7 * base.config.num_layers
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(0, base.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    lora.save_checkpoint(model, optimizer, 3, tmp_path / "ckpt.pt", model_config=dataclasses.asdict(base.config))
    merged, _ = load_model(tmp_path / "ckpt.pt")
    merged.save_pretrained(tmp_path / "merged", dtype=torch.float32)
    reopened = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        unmerged = model.eval()(ids)
        assert not torch.allclose(unmerged, base(ids), atol=1e-3), "the adapters trained"
        torch.testing.assert_close(merged(ids), unmerged, rtol=0, atol=1e-5)
        torch.testing.assert_close(reopened(ids).logits, unmerged, rtol=1e-4, atol=1e-4)


def test_sft_with_lora_from_a_hugging_face_directory(hf_dir, gsm8k, tmp_path):
    """The CLI on a Qwen2 directory (its own tokenizer): --lora-rank trains, ckpt.pt is the merged model."""
    assert cli_main(["sft", "--init", str(hf_dir), "--data", str(gsm8k / "train.jsonl"), "--out", str(tmp_path),
                     "--num-steps", "2", "--batch-size", "4", "--warmup-steps", "0", "--n-eval-examples", "4",
                     "--eval-every", "1000", *LORA]) == 0
    merged, extra = load_model(tmp_path / "ckpt.pt")
    base, _ = load_model(hf_dir)
    assert extra["lora"]["targets"] == ["o", "q", "v", "w1", "w2", "w3"]
    assert merged.config.tokenizer == base.config.tokenizer
    rebuilt = lora.load_adapters(tmp_path / "adapter.pt", base)
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS), rebuilt(IDS), rtol=0, atol=1e-5)


def test_bench_lora_memory_worker_counts_the_adapters_by_hand():
    """`bench lora --part memory --smoke`'s worker (Qwen2.5-0.5B's widths, 1 layer, vocab 1024), LoRA r = 4 on all
    seven projections: r (d_in + d_out) per projection, d 896, kv 2 x 64, d_ff 4864; one finite training step."""
    from cs336_alignment.bench.lora import _memory_worker

    row = _memory_worker({"rank": 4, "seq_len": 8, "smoke": True})
    d, kv, ff = 896, 128, 4864
    per_layer = (d + d) + (d + kv) + (d + kv) + (d + d) + 3 * (d + ff)
    assert row["trainable"] == 4 * per_layer == 91_648
    assert math.isfinite(row["loss"]) and row["step_cpu_s"] > 0
