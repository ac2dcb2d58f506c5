"""Which behaviour a policy chose, and how well each works: gold accuracy split by response style.

    python -m cs336_alignment styles --ckpt data/checkpoints/tiny/sft.pt                  # 400 test problems
    python -m cs336_alignment styles --ckpt runs/tiny/grpo_gold/ckpt.pt --n-problems 400 --samples 2

The task world's demonstrations come from writers of uneven care (`tasks` module docstring): careful ones work
the problem out step by step, hasty ones write only the final line. A policy trained on both answers some
questions each way. This command answers the held-out test problems greedily and with `samples` temperature-1
samples each, and reports for both: the accuracy (± its standard error over the problems), the share of worked
responses (`tasks.is_worked`) and the accuracy within each style (`tasks.style_accuracy`, ± binomial standard
errors over that style's responses). Post-training that only re-weights the styles moves the worked share and
the overall accuracy, not the accuracy within a style.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.evaluation.evaluate import evaluate_model
from cs336_alignment.lm.rollout import sample_responses
from cs336_alignment.lm.runtime import get_device, set_threads
from cs336_alignment.world.tasks import generate_problems, style_accuracy
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.world.verifier import gold_reward


def binomial_se(p: float, n: float) -> float:
    """Standard error of a proportion p measured on n independent trials: sqrt(p (1 - p) / n); NaN for n = 0."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def measure(model, tokenizer, problems: list[dict[str, str]], *, samples: int = 2, max_new_tokens: int = 64,
            seed: int = 1, batch_size: int = 100) -> dict[str, dict[str, float]]:
    """{"greedy": ..., "sampled": ...}, each `tasks.style_accuracy` of the responses plus "accuracy_se" (over
    problems: sampled responses to one problem are averaged first) and "accuracy/<style>_se" (binomial).
    Sampling is seeded (`rollout.sample_responses`), so the same call gives the same numbers."""
    truths = [p["answer"] for p in problems]
    _, greedy = evaluate_model(model, tokenizer, problems, fmt="chat", max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    groups = sample_responses(model, tokenizer, [p["question"] for p in problems], samples,
                              max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    runs = {"greedy": ([s["response"] for s in greedy], truths, 1),
            "sampled": ([s["text"] for g in groups for s in g], [t for t in truths for _ in range(samples)], samples)}
    out = {}
    for kind, (responses, answers, k) in runs.items():
        stats = style_accuracy(responses, answers)
        per_problem = torch.tensor([float(s) for s in _rewards(responses, answers)], dtype=torch.float64)
        per_problem = per_problem.view(-1, k).mean(-1)                                           # (n_problems,)
        stats["accuracy_se"] = float(per_problem.std(correction=1) / math.sqrt(len(per_problem)))
        for style in ("worked", "hasty"):
            stats[f"accuracy/{style}_se"] = binomial_se(stats[f"accuracy/{style}"], stats[f"n/{style}"])
        stats["worked_share_se"] = binomial_se(stats["worked_share"], stats["n"])
        out[kind] = stats
    return out


def _rewards(responses: list[str], answers: list[str]) -> list[float]:
    return [gold_reward(r, a)["reward"] for r, a in zip(responses, answers)]


def format_line(kind: str, s: dict[str, float]) -> str:
    """One console line: accuracy ± se, worked share, accuracy within each style."""
    return (f"{kind:8s} accuracy {100 * s['accuracy']:.1f} ± {100 * s['accuracy_se']:.1f} % | worked share "
            f"{100 * s['worked_share']:.1f} % | worked {100 * s['accuracy/worked']:.1f} ± "
            f"{100 * s['accuracy/worked_se']:.1f} % right (n {s['n/worked']:.0f}) | hasty "
            f"{100 * s['accuracy/hasty']:.1f} ± {100 * s['accuracy/hasty_se']:.1f} % right (n {s['n/hasty']:.0f})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment styles", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="policy checkpoint (chat format)")
    parser.add_argument("--n-problems", type=int, default=400, help="held-out test problems (the pipeline's first ones)")
    parser.add_argument("--samples", type=int, default=2, help="temperature-1 samples per problem")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test problems; sampling uses seed + 1")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    model, _ = load_model(args.ckpt, get_device(args.device))
    model.eval()
    problems = generate_problems(args.n_problems, "test", args.seed)
    tokenizer = load_tokenizer(model.config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    result = measure(model, tokenizer, problems, samples=args.samples, max_new_tokens=args.max_new_tokens,
                     seed=args.seed + 1)
    for kind, stats in result.items():
        print(format_line(kind, stats))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ckpt": args.ckpt, **vars(args), **result}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
