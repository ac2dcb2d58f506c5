"""Every training loop for a few CPU steps on tiny settings (CleanRL style): the loss falls, gradient
accumulation is an invariance (1 x 8 = 2 x 4), --resume reproduces an uninterrupted run exactly, and
bad data fails naming file:line, a CPU budget ends SFT early. Also the CLI dispatch and the config parser."""
from __future__ import annotations

import json

import pytest
import torch

from cs336_alignment.__main__ import main as cli_main
from cs336_alignment.lm.checkpoint import load_checkpoint
from cs336_alignment.lm.data import DataError
from cs336_alignment.train import pretrain, sft
from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.train.common import config_from_dict, read_metrics

TINY_MODEL = ["--d-model", "32", "--num-layers", "1", "--num-heads", "2", "--d-ff", "64", "--context-length", "96"]
QUIET = ["--quiet", "--threads", "1", "--device", "cpu"]


def train_losses(out) -> list[float]:
    return [r["loss/train"] for r in read_metrics(out / "metrics.jsonl")]


def pretrain_args(out, steps: int, *extra: str) -> list[str]:
    return [*TINY_MODEL, *QUIET, "--out", str(out), "--num-steps", str(steps), "--n-problems", "300",
            "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "2", "--log-every", "1", "--eval-every", "1000",
            *extra]


def sft_args(out, steps: int, *extra: str) -> list[str]:
    return [*TINY_MODEL, *QUIET, "--out", str(out), "--num-steps", str(steps), "--n-examples", "40",
            "--n-eval-examples", "8", "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "2",
            "--log-every", "1", "--eval-every", "1000", *extra]


class Interrupted(Exception):
    pass


def interrupt_then_resume(module, run, monkeypatch) -> None:
    """Call run(resume=False) with `module.save_checkpoint` killing the run right after its first checkpoint,
    then run(resume=True)."""
    real_save = module.save_checkpoint

    def save_then_die(*a, **k):
        real_save(*a, **k)
        raise Interrupted

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        run(resume=False)
    monkeypatch.setattr(module, "save_checkpoint", real_save)
    run(resume=True)


def run_interrupted_then_resume(module, args: list[str], monkeypatch) -> None:
    """Run `module.main(args)`, kill it right after its first checkpoint, then run it again with --resume."""
    interrupt_then_resume(module, lambda resume: module.main([*args, "--resume"] if resume else args), monkeypatch)


# ---------------------------------------------------------------------------------------------------------
# pretrain
# ---------------------------------------------------------------------------------------------------------

def test_pretrain_loss_falls_and_writes_outputs(tmp_path):
    result = pretrain.main(pretrain_args(tmp_path, 25, "--eval-every", "25"))
    losses = train_losses(tmp_path)
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 - 1.0  # starts near ln(vocab) = 6.2 nats
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert {"loss/train", "lr", "grad_norm", "perf/tokens_per_s"} <= set(records[0])
    assert "eval/loss" in records[-1] and result["eval/loss"] == records[-1]["eval/loss"]
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["config"]["num_steps"] == 25  # the whole config is the first log line
    model, extra = load_model(tmp_path / "ckpt.pt")
    assert extra["config"]["num_steps"] == 25 and model.config.d_model == 32


def test_pretrain_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    pretrain.main(pretrain_args(tmp_path / "a", 8, "--checkpoint-every", "3"))
    run_interrupted_then_resume(pretrain, pretrain_args(tmp_path / "b", 8, "--checkpoint-every", "3"), monkeypatch)
    assert train_losses(tmp_path / "b") == train_losses(tmp_path / "a")  # exactly, step for step
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # nothing logged twice
    a, _ = load_model(tmp_path / "a" / "ckpt.pt")
    b, _ = load_model(tmp_path / "b" / "ckpt.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


# ---------------------------------------------------------------------------------------------------------
# sft
# ---------------------------------------------------------------------------------------------------------

def test_sft_loss_falls(tmp_path):
    sft.main(sft_args(tmp_path, 20))
    losses = train_losses(tmp_path)
    assert sum(losses[-4:]) / 4 < sum(losses[:3]) / 3 - 1.0


def test_sft_from_pretrained_init(tmp_path):
    pretrain.main(pretrain_args(tmp_path / "pre", 2))
    sft.main(sft_args(tmp_path / "sft", 2, "--init", str(tmp_path / "pre" / "ckpt.pt"), "--d-model", "64"))
    model, extra = load_model(tmp_path / "sft" / "ckpt.pt")
    assert model.config.d_model == 32  # the architecture comes from the init checkpoint, not the flags
    assert extra["config"]["init"].endswith("ckpt.pt")


def test_sft_gradient_accumulation_is_invariant(tmp_path):
    """One micro-batch of 8 and two of 4 are the same optimizer step (TRL's invariant tests)."""
    sft.main(sft_args(tmp_path / "a", 3))
    sft.main(sft_args(tmp_path / "b", 3, "--grad-accum-steps", "2"))
    torch.testing.assert_close(train_losses(tmp_path / "b"), train_losses(tmp_path / "a"), rtol=1e-4, atol=1e-5)
    a, _ = load_model(tmp_path / "a" / "ckpt.pt")
    b, _ = load_model(tmp_path / "b" / "ckpt.pt")
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_sft_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--checkpoint-every", "3", "--grad-accum-steps", "2"]  # 8 steps over 40 examples: 2 epochs
    sft.main(sft_args(tmp_path / "a", 8, *args))
    run_interrupted_then_resume(sft, sft_args(tmp_path / "b", 8, *args), monkeypatch)
    assert train_losses(tmp_path / "b") == train_losses(tmp_path / "a")



def test_sft_max_cpu_s_stops_early_with_a_loadable_checkpoint(tmp_path):
    """The pipeline's matched-compute baseline: a CPU budget, not a step count, ends the run."""
    result = sft.main(sft_args(tmp_path, 100_000, "--max-cpu-s", "0.5", "--checkpoint-every", "100000"))
    assert 1 <= result["steps"] < 100_000
    assert result["cpu_s"] >= 0.5
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == result["steps"] and "eval/loss" in records[-1]  # the last step is evaluated
    model, extra = load_model(tmp_path / "ckpt.pt")
    assert load_checkpoint(tmp_path / "ckpt.pt", model) == result["steps"]
    assert extra["config"]["max_cpu_s"] == 0.5 and extra["cpu_s"] == result["cpu_s"]

def test_sft_reads_all_three_schemas(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"question": "Tom has 2 apples. He buys 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"},
            {"prompt": "Say hi.", "response": "hi"},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "#### 4"}]}] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft.main(sft_args(tmp_path / "out", 2, "--data", str(data), "--batch-size", "4"))
    assert len(train_losses(tmp_path / "out")) == 2


def test_sft_skips_conversations_cut_before_their_response(tmp_path):
    # With a 40-token context most task-world prompts (40-80 tokens) leave nothing to train on: those are
    # dropped at setup instead of failing in the middle of the run.
    sft.main(sft_args(tmp_path, 2, "--context-length", "40", "--n-examples", "64"))
    assert len(train_losses(tmp_path)) == 2


def test_sft_bad_data_file_names_file_and_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" + '{"prompt": "no response"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        sft.main(sft_args(tmp_path / "out", 1, "--data", str(data)))


# ---------------------------------------------------------------------------------------------------------
# CLI and config
# ---------------------------------------------------------------------------------------------------------

def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli_main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command in ("pipeline", "pretrain", "sft", "eval", "grpo", "dpo"):
        assert command in listed
    assert cli_main(["no-such-command"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["sft", "--no-such-flag", "1"])  # unknown flags are errors, not silently ignored
    with pytest.raises(SystemExit):
        cli_main(["pretrain", "--num-steps", "many"])  # wrong types too


def test_help_shows_field_docs(capsys):
    with pytest.raises(SystemExit):
        cli_main(["sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "checkpoint to start from" in text and "--grad-accum-steps" in text and "--no-fused-logprobs" in text


def test_config_from_dict_rejects_unknown_keys():
    assert config_from_dict(sft.SFTConfig, {"num_steps": 3}).num_steps == 3
    with pytest.raises(ValueError, match="num_stepz"):
        config_from_dict(sft.SFTConfig, {"num_stepz": 3})
