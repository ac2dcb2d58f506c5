"""Evaluation on held-out problems: greedy generation, then gold accuracy, format rate and response length.

    python -m cs336_alignment eval --ckpt runs/tiny/sft/ckpt.pt --format chat
    python -m cs336_alignment eval --ckpt runs/tiny/pretrain/ckpt.pt --format raw
    python -m cs336_alignment eval --ckpt CKPT --data gsm8k_test.jsonl      # real GSM8K-format problems

Prompt formats
  chat  <|user|>{question}<|end|><|assistant|>  and the response ends at <|end|> (SFT and RL models).
  raw   "Question: {question}\\nAnswer:"  and the response ends at <|endoftext|>, at a blank line, or where a
        new "Question:" starts. This is how the base model saw documents in pretraining. Evaluating it with
        the chat template instead would mostly measure that it has never seen the template, so a base-vs-SFT
        comparison would only show chat formatting.

Metrics (names as in every training loop's metrics.jsonl)
  reward/gold_mean      gold accuracy: mean of tasks.gold_reward(...)["reward"] (right number, "#### N" format)
  reward/format_mean    format rate: fraction of responses whose last line is "#### <number>"
  response/length_mean  mean response length in tokens (up to and excluding the stop token)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

import torch

from cs336_alignment.rollout import generate_per_row

Format = Literal["chat", "raw"]

# ---------------------------------------------------------------------------------------------------------
# Prompts and responses
# ---------------------------------------------------------------------------------------------------------


def build_prompt(question: str, tokenizer, fmt: Format) -> list[int]:
    """Token ids of the prompt for one question, in the chat template or the raw pretraining format."""
    from cs336_alignment.tasks import format_raw_prompt

    if fmt == "chat":
        return tokenizer.prompt_ids(question)
    if fmt == "raw":
        return tokenizer.encode_ordinary(format_raw_prompt(question))
    raise ValueError(f"format must be 'chat' or 'raw', got {fmt!r}")


def stop_token_ids(tokenizer, fmt: Format) -> list[int]:
    """Tokens that end a response: <|end|> (and <|endoftext|>) for chat, <|endoftext|> for raw text."""
    return [tokenizer.end_of_turn_id, tokenizer.eos_token_id] if fmt == "chat" else [tokenizer.eos_token_id]


def cut_raw_response(text: str) -> str:
    """A raw-format continuation up to a blank line or the next "Question:" (a base model keeps writing)."""
    for stop in ("\n\n", "Question:"):
        text = text.split(stop, 1)[0]
    return text


@torch.no_grad()
def generate_responses(model, tokenizer, questions: list[str], *, fmt: Format, max_new_tokens: int = 64,
                       batch_size: int = 64, temperature: float = 0.0,
                       generator: torch.Generator | None = None) -> list[str]:
    """Responses (text, stop token removed) to each question, generated in batches with the KV cache.

    Args:
        questions: N question strings.  fmt: "chat" or "raw" (see the module docstring).
        max_new_tokens: upper bound per response (tokens, stop token included); a question whose prompt
            leaves less room in the context gets min(max_new_tokens, context_length - prompt length)
            (`rollout.generate_per_row`), without shortening the other responses of its batch.
        batch_size: prompts generated together.
        temperature: 0 = greedy (the default for evaluation).  generator: for reproducible samples at T > 0.
    Returns:
        N strings, in the order of `questions`.
    Raises:
        ValueError: if a prompt fills the whole context (no room for a response).
    """
    stops = stop_token_ids(tokenizer, fmt)
    prompts = [build_prompt(q, tokenizer, fmt) for q in questions]
    if not prompts:
        return []
    out = generate_per_row(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           temperature=temperature, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                           generator=generator)
    responses: list[str] = []
    for tokens in out.tokens:
        if tokens and tokens[-1] in stops:
            tokens = tokens[:-1]
        text = tokenizer.decode(tokens)
        responses.append(cut_raw_response(text) if fmt == "raw" else text)
    return responses


# ---------------------------------------------------------------------------------------------------------
# Metrics (general: each takes responses and returns plain floats)
# ---------------------------------------------------------------------------------------------------------


def gold_rewards(responses: list[str], ground_truths: list[str]) -> list[dict[str, float]]:
    """tasks.gold_reward of each (response, ground truth) pair: {"reward", "format_reward", "answer_reward"}."""
    from cs336_alignment.tasks import gold_reward

    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    return [gold_reward(r, g) for r, g in zip(responses, ground_truths)]


def response_lengths(responses: list[str], tokenizer) -> list[int]:
    """Length of each response in tokens (special tokens inside a response count as one token each)."""
    return [len(tokenizer.encode(r)) for r in responses]


def summarize(rewards: list[dict[str, float]], lengths: list[int]) -> dict[str, float]:
    """{"reward/gold_mean", "reward/format_mean", "response/length_mean", "n"} over the evaluated problems."""
    n = len(rewards)
    if n == 0:
        raise ValueError("nothing to summarize: no responses")
    return {"reward/gold_mean": sum(r["reward"] for r in rewards) / n,
            "reward/format_mean": sum(r["format_reward"] for r in rewards) / n,
            "response/length_mean": sum(lengths) / n,
            "n": n}


def evaluate_model(model, tokenizer, problems: list[dict[str, str]], *, fmt: Format, max_new_tokens: int = 64,
                   batch_size: int = 64) -> tuple[dict[str, float], list[dict]]:
    """Greedy responses to GSM8K-format problems, scored with the gold reward.

    Args:
        problems: [{"question": str, "answer": "<steps>\\n#### N"}, ...].
    Returns:
        (metrics, samples): metrics as in `summarize`; samples [{"question", "response", "answer",
        "reward", "format_reward", "length"}] in the order of `problems`.
    """
    questions = [p["question"] for p in problems]
    responses = generate_responses(model, tokenizer, questions, fmt=fmt, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
    rewards = gold_rewards(responses, [p["answer"] for p in problems])
    lengths = response_lengths(responses, tokenizer)
    samples = [{"question": q, "response": r, "answer": p["answer"], "reward": w["reward"],
                "format_reward": w["format_reward"], "length": n}
               for q, r, p, w, n in zip(questions, responses, problems, rewards, lengths)]
    return summarize(rewards, lengths), samples


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, float]:
    from cs336_alignment.tokenizer import load_tokenizer
    from cs336_alignment.train.common import autocast, get_device, load_model, set_threads

    parser = argparse.ArgumentParser(prog="python -m cs336_alignment eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", "--init", dest="ckpt", required=True,
                        help="checkpoint written by a train loop (ckpt.pt) or a Hugging Face model directory")
    parser.add_argument("--format", choices=["chat", "raw"], default="chat",
                        help="chat template (SFT/RL models) or raw 'Question: ... Answer:' text (base model)")
    parser.add_argument("--data", default="", help="jsonl of {question, answer}; empty = the task world")
    parser.add_argument("--split", choices=["train", "test"], default="test", help="task-world split")
    parser.add_argument("--n-problems", type=int, default=500, help="task-world problems to evaluate")
    parser.add_argument("--seed", type=int, default=0, help="task-world seed")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="response length limit")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts generated together")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--out", default="", help="write metrics and samples to this json file")
    parser.add_argument("--show", type=int, default=3, help="print this many samples")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    device = get_device(args.device)
    model, _ = load_model(args.ckpt, device)
    tokenizer = load_tokenizer(model.config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    if args.data:
        from cs336_alignment.data import load_jsonl
        problems = load_jsonl(args.data)
    else:
        from cs336_alignment.tasks import generate_problems
        problems = generate_problems(args.n_problems, args.split, args.seed)
    with autocast(device):  # bf16 matmuls on CUDA; a no-op elsewhere
        metrics, samples = evaluate_model(model, tokenizer, problems, fmt=args.format,
                                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    for s in samples[:args.show]:
        print(f"--- Q: {s['question']}\n{s['response']}\n(gold: {s['answer'].splitlines()[-1]}, "
              f"reward {s['reward']:.0f})")
    print(" | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"metrics": metrics, "samples": samples}, indent=1))
    return metrics


if __name__ == "__main__":
    main()
