"""Fuzz the command line with bad inputs: every CLI over a table of bad data files, and every checkpoint flag over
a table of bad checkpoints. Each run must exit with status 2 and print exactly one `error:` line that names the
bad file, no traceback, and finish in time (no hang); a malicious pickle must never run."""
from __future__ import annotations

import json
import signal

import pytest
import torch

from cs336_alignment.__main__ import main
from cs336_alignment.lm.checkpoint import rng_state, save_checkpoint
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.nn_utils import AdamW
from cs336_alignment.lm.tokenizer import load_tokenizer

CONTEXT = 64
RUN = ["--threads", "1", "--device", "cpu", "--quiet"]
SMALL_RL = ["--num-steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "2",
            "--n-eval-problems", "2", "--eval-every", "1000", *RUN]
LONG = " ".join(["word"] * 3 * CONTEXT)  # a prompt that fills the tiny model's context


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny policy checkpoint (with optimizer state, as the loops write them)."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=load_tokenizer().vocab_size, context_length=CONTEXT, d_model=16,
                               num_layers=1, num_heads=2, d_ff=32)
    model = TransformerLM(config)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 2, dtype=torch.long)).sum().backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(model, optimizer, 1, path, model_config=config.__dict__, config={"name": "tiny"})
    return str(path)


@pytest.fixture(autouse=True)
def no_hang():
    """A run that does not stop within 120 s fails the test (SIGALRM) instead of hanging the suite."""
    def timeout(*_):
        raise TimeoutError("the command did not stop within 120 s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def assert_one_error_line(code: int, capsys, names: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    assert names in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------------------------------------
# Bad data files, per CLI
# ---------------------------------------------------------------------------------------------------------

def jl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD_PROBLEM = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
PROBLEM_FILES = {  # eval, grpo, ppo, ei --data
    "empty": "",
    "blank_lines": "\n  \n",
    "no_answer": jl({"question": "What is 2 + 2?"}),
    "answer_not_str": jl(GOOD_PROBLEM, {"question": "q", "answer": 4}),
    "empty_question": jl({"question": "  ", "answer": "4"}),
    "malformed_json": jl(GOOD_PROBLEM, '{"question": "q", "answer'),
    "array_line": jl("[1, 2]"),
    "not_utf8": b"\xff\xfe{}\n",
}
PAIR = {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4\n#### 4", "rejected": "#### 5"}
PREFERENCE_FILES = {  # dpo, rm --data
    "empty": "",
    "no_rejected": jl(PAIR, {"prompt": "q", "chosen": "a"}),
    "chosen_is_rejected": jl({**PAIR, "rejected": PAIR["chosen"]}),
    "utilities_no_gold": jl(*[{**PAIR, "u_chosen": 1.0, "u_rejected": 0.0}] * 4),
    "gold_not_number": jl(*[{**PAIR, "u_chosen": 1.0, "u_rejected": 0.0, "gold_chosen": "1", "gold_rejected": 0}] * 4),
    "malformed_json": jl(PAIR, "{not json"),
    "bad_role": jl({"chosen": [{"role": "robot", "content": "x"}], "rejected": [{"role": "user", "content": "y"}]}),
}
SFT_FILES = {
    "empty": "",
    "no_response": jl({"prompt": "2+2?", "response": "4"}, {"prompt": "3+3?"}),
    "unknown_schema": jl({"text": "hello"}),
    "last_turn_user": jl({"messages": [{"role": "user", "content": "hi"}]}),
    "malformed_json": jl('{"prompt": '),
    "not_utf8": b'{"prompt": "\xff", "response": "x"}\n',
}
PRETRAIN_FILES = {"empty": "", "too_short": "2 + 2 = 4", "not_utf8": b"plain text\n\xff\xfe more"}


def loader_args(command: str, tiny: str, data: str, out: str) -> list[str]:
    return {
        "eval": ["eval", "--ckpt", tiny, "--data", data, "--threads", "1", "--device", "cpu", "--show", "0"],
        "grpo": ["grpo", "--init", tiny, "--data", data, "--out", out, *SMALL_RL],
        "ppo": ["ppo", "--init", tiny, "--data", data, "--out", out, "--reward", "gold", *SMALL_RL],
        "ei": ["ei", "--init", tiny, "--data", data, "--out", out, "--n-ei-steps", "1", "--rollouts-per-prompt", "2",
               "--prompts-per-step", "2", "--max-new-tokens", "2", "--n-eval-problems", "2", *RUN],
        "dpo": ["dpo", "--init", tiny, "--data", data, "--out", out, "--num-steps", "1", "--n-gold-problems", "0",
                "--eval-every", "1000", *RUN],
        "rm": ["rm", "--init", tiny, "--data", data, "--out", out, "--num-steps", "1", "--eval-every", "1000", *RUN],
        "sft": ["sft", "--init", tiny, "--data", data, "--out", out, "--num-steps", "1", "--eval-every", "1000", *RUN],
        "pretrain": ["pretrain", "--data", data, "--out", out, "--num-steps", "1", "--d-model", "16", "--num-layers",
                     "1", "--num-heads", "2", "--d-ff", "32", "--context-length", "32", *RUN],
    }[command]


DATA_CASES = ([(c, name, body) for c in ("eval", "grpo", "ppo", "ei") for name, body in PROBLEM_FILES.items()]
              + [(c, name, body) for c in ("dpo", "rm") for name, body in PREFERENCE_FILES.items()]
              + [("dpo", "long_prompt_at_line_4", jl(PAIR, PAIR, PAIR, {**PAIR, "prompt": LONG}, *[PAIR] * 8)),
                 ("rm", "every_prompt_too_long", jl(*[{**PAIR, "prompt": LONG}] * 12))]
              + [("sft", name, body) for name, body in SFT_FILES.items()]
              + [("pretrain", name, body) for name, body in PRETRAIN_FILES.items()])


@pytest.mark.parametrize("command,name,body", DATA_CASES, ids=[f"{c}-{n}" for c, n, _ in DATA_CASES])
def test_a_bad_data_file_is_one_error_line_naming_it(command, name, body, tiny, tmp_path, capsys):
    data = tmp_path / ("data.txt" if command == "pretrain" else "data.jsonl")
    data.write_bytes(body if isinstance(body, bytes) else body.encode())
    code = main(loader_args(command, tiny, str(data), str(tmp_path / "out")))
    line = assert_one_error_line(code, capsys, str(data))
    if name == "long_prompt_at_line_4":
        assert line.startswith(f"error: {data}:4: field 'prompt'"), line  # found before step 1, not at step 4
    if name == "utilities_no_gold":
        assert line.startswith(f"error: {data}:1: field 'gold_chosen': missing"), line


# ---------------------------------------------------------------------------------------------------------
# Bad checkpoints, per checkpoint flag
# ---------------------------------------------------------------------------------------------------------

class Payload:  # a pickle that would create a file if loading ran it
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_bad_checkpoint(kind: str, path, tiny: str, marker) -> None:
    model = TransformerLM(TransformerConfig(vocab_size=load_tokenizer().vocab_size, context_length=CONTEXT,
                                            d_model=16, num_layers=1, num_heads=2, d_ff=32))
    config = model.config.__dict__
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(tiny, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "text":
        path.write_text('{"model": "not a checkpoint"}\n')
    elif kind == "plain_state_dict":
        torch.save(model.state_dict(), path)
    elif kind == "a_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "malicious_pickle":
        torch.save({"model": {}, "optimizer": None, "iteration": 0, "extra": {"x": Payload(str(marker))}}, path)
    elif kind == "no_model_config":
        save_checkpoint(model, None, 1, path, config={})
    elif kind == "zero_heads":
        save_checkpoint(model, None, 1, path, model_config={**config, "num_heads": 0}, config={})
    elif kind == "model_config_not_dict":
        save_checkpoint(model, None, 1, path, model_config=[1, 2], config={})
    elif kind == "wrong_shape":  # tensors of a d_model-16 model, a config of a d_model-32 one
        save_checkpoint(model, None, 1, path, model_config={**config, "d_model": 32}, config={})
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    else:
        raise AssertionError(kind)


CHECKPOINT_KINDS = ("empty", "truncated", "random", "text", "plain_state_dict", "a_tensor", "malicious_pickle",
                    "no_model_config", "zero_heads", "model_config_not_dict", "wrong_shape", "directory", "missing")
FLAGS = {  # where a checkpoint path goes -> the command line around it
    "eval --ckpt": lambda bad, tiny, out: ["eval", "--ckpt", bad, "--n-problems", "2", "--threads", "1"],
    "export --ckpt": lambda bad, tiny, out: ["export", "--ckpt", bad, "--out", out],
    "sft --init": lambda bad, tiny, out: ["sft", "--init", bad, "--out", out, "--num-steps", "1", *RUN],
    "grpo --init": lambda bad, tiny, out: ["grpo", "--init", bad, "--out", out, *SMALL_RL],
    "dpo --init": lambda bad, tiny, out: ["dpo", "--init", bad, "--out", out, "--num-steps", "1", *RUN],
    "rm --init": lambda bad, tiny, out: ["rm", "--init", bad, "--out", out, "--num-steps", "1", *RUN],
    "grpo --reward-model": lambda bad, tiny, out: ["grpo", "--init", tiny, "--reward", "rm", "--reward-model", bad,
                                                   "--out", out, *SMALL_RL],
    "bon --rm": lambda bad, tiny, out: ["bon", "--init", tiny, "--rm", bad, "--out", out, "--n-prompts", "2",
                                        "--pool-size", "2", "--max-new-tokens", "2", *RUN],
}
CKPT_CASES = [(flag, kind) for flag in FLAGS for kind in CHECKPOINT_KINDS
              if not (flag in ("grpo --reward-model", "bon --rm") and kind in ("wrong_shape",))]


@pytest.mark.parametrize("flag,kind", CKPT_CASES, ids=[f"{f.replace(' --', '-')}-{k}" for f, k in CKPT_CASES])
def test_a_bad_checkpoint_is_one_error_line_naming_it(flag, kind, tiny, tmp_path, capsys):
    bad, marker = tmp_path / "bad.pt", tmp_path / "payload_ran"
    write_bad_checkpoint(kind, bad, tiny, marker)
    code = main(FLAGS[flag](str(bad), tiny, str(tmp_path / "out")))
    line = assert_one_error_line(code, capsys, str(bad))
    assert not marker.exists()  # weights_only loading never ran the pickle
    if kind == "wrong_shape":  # which tensor, saved vs model
        assert "shape (" in line and "saved" in line and "in the model" in line, line


def test_a_policy_checkpoint_given_as_a_reward_model_is_one_error_line(tiny, tmp_path, capsys):
    code = main(FLAGS["bon --rm"](tiny, tiny, str(tmp_path / "out")))
    assert_one_error_line(code, capsys, tiny)


RESUME_KINDS = ("empty", "truncated", "random", "plain_state_dict", "malicious_pickle", "no_rng", "other_shape")


@pytest.mark.parametrize("kind", RESUME_KINDS)
def test_a_bad_checkpoint_to_resume_is_one_error_line_naming_it(kind, tiny, tmp_path, capsys):
    args = ["pretrain", "--out", str(tmp_path), "--num-steps", "2", "--d-model", "16", "--num-layers", "1",
            "--num-heads", "2", "--d-ff", "32", "--context-length", "32", "--n-problems", "40", "--batch-size", "2",
            *RUN]
    assert main(args) == 0  # a real run to resume
    ckpt, marker = tmp_path / "ckpt.pt", tmp_path / "payload_ran"
    saved = torch.load(ckpt, weights_only=True)
    if kind == "no_rng":
        extra = {k: v for k, v in saved["extra"].items() if k != "rng"}
        torch.save({**saved, "extra": extra}, ckpt)
    elif kind == "other_shape":  # the same config, the tensors of another model shape
        model = TransformerLM(TransformerConfig(**{**saved["extra"]["model_config"], "d_model": 32}))
        torch.save({**saved, "model": model.state_dict()}, ckpt)
    else:
        ckpt.unlink()
        write_bad_checkpoint(kind, ckpt, tiny, marker)
    capsys.readouterr()
    line = assert_one_error_line(main([*args, "--resume", "--num-steps", "2"]), capsys, str(ckpt))
    assert not marker.exists()
    if kind == "no_rng":
        assert "field 'rng': missing" in line
    if kind == "other_shape":
        assert "saved" in line and "in the model" in line, line
