"""Best-of-N sampling with a reward model: the simplest way to optimise a learned reward, and a ruler for the rest.

    python -m cs336_alignment bon --init runs/sft/ckpt.pt --reward-model runs/rm/ckpt.pt

For each test prompt we draw one pool of 64 temperature-1 samples from the SFT policy and score every
sample with the reward model (the proxy) and the gold reward. Best-of-N for N = 1, 2, 4, ..., 64 returns
the sample with the highest proxy reward among N. Rather than re-drawing random subsets, we average over
*all* N-subsets of the pool exactly (`metrics.best_of_n_weights`): the limit of subsampling the pool
infinitely often, with no extra noise. The gold-oracle best-of-N (pick by the gold reward) is pass@N
(`metrics.pass_at_k`, Chen et al. 2021), the ceiling any reward model could reach with N samples.

Best-of-N needs no training, and its KL from the sampling policy is known in closed form,
KL = log N - (N - 1) / N (Stiennon et al. 2020; an upper bound when samples repeat, Beirami et al. 2024),
so gold and proxy reward against sqrt(KL) trace the reward-model over-optimisation curve of Gao et al. 2023
("Scaling Laws for Reward Model Overoptimization"), with no optimiser in the way.

One metrics.jsonl line per N (step = N): reward/gold_mean, reward/proxy_mean, reward/oracle_mean (pass@N),
reward/gold_gain and reward/gold_gain_se (gold_mean minus N = 1's, with its paired standard error over prompts),
reward/gold_minus_peak and reward/gold_minus_peak_se (gold_mean minus the best N's, with its paired standard error:
over-optimisation is a fall after the peak),
kl/ref (the closed form), response/length_mean, response/worked_share and response/prose_lines_mean (tasks.is_worked,
tasks.prose_lines: of the selected samples), response/distinct_2 (of best-of-N among the first N samples of
each pool: one concrete draw).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch

from cs336_alignment.train.config_blocks import LogConfig, PolicyInitConfig, RunConfig, with_defaults
from cs336_alignment.evaluation.metrics import best_of_n_kl, best_of_n_weights, distinct_n, pass_at_k
from cs336_alignment.reward_model import score_responses
from cs336_alignment.lm.rollout import sample_responses
from cs336_alignment.world.tasks import generate_problems, is_worked, prose_lines
from cs336_alignment.train.common import MetricsLogger, parse_config, releases_run_dir
from cs336_alignment.train.setup import setup_policy
from cs336_alignment.world.verifier import gold_reward


@dataclass
@with_defaults(name="bon")
class BoNConfig(LogConfig, PolicyInitConfig, RunConfig):
    """Best-of-N: the shared run and logging blocks (config_blocks) and its own fields below."""

    reward_model: str = "runs/rm/ckpt.pt"
    """reward-model checkpoint (written by `python -m cs336_alignment rm`)"""
    # --- sampling
    n_prompts: int = 64
    """task-world test prompts"""
    group_size: int = 64
    """samples per prompt (the pool best-of-N picks from); N runs over the powers of two up to it"""
    max_new_tokens: int = 64
    """response length limit"""
    temperature: float = 1.0
    """sampling temperature (the KL formula is for samples of the policy itself, i.e. 1.0)"""
    batch_size: int = 256
    """sequences generated / scored together"""

    FLAG_ALIASES = {"rm": "reward_model", "pool_size": "group_size"}


def best_of_n_curve(proxy: torch.Tensor, gold: torch.Tensor, lengths: torch.Tensor, ns: list[int],
                    worked: torch.Tensor | None = None, prose: torch.Tensor | None = None) -> list[dict]:
    """Exact best-of-N statistics over all N-subsets of each prompt's pool.

    Args:
        proxy: (P, n) reward-model scores of n samples for each of P prompts (selection is by these).
        gold: (P, n) gold rewards (0/1 for the task world).
        lengths: (P, n) response lengths (tokens).
        ns: the N values (each 1 <= N <= n).
        worked: optional (P, n) 0/1, whether each sample shows its work (tasks.is_worked).
        prose: optional (P, n) prose lines of each sample (tasks.prose_lines).

    Returns:
        one dict per N: {"n", "reward/proxy_mean", "reward/gold_mean", "reward/oracle_mean" (pass@N with the
        gold reward as the selector, exact for 0/1 gold rewards), "reward/gold_gain" (gold_mean minus N = 1's,
        i.e. minus the pool's mean gold reward) and "reward/gold_gain_se" (its paired standard error over the P
        prompts: each prompt's gain is one observation; 0 for P = 1), "reward/gold_minus_peak" and
        "reward/gold_minus_peak_se" (gold_mean minus that of the N in `ns` with the highest gold_mean, the peak,
        with its paired standard error: is a fall after the peak more than noise? 0 at the peak),
        "response/length_mean", "kl/ref" (closed form), with `worked` "response/worked_share" (the share of
        worked responses among those selected) and with `prose` "response/prose_lines_mean" (their mean number
        of prose lines)}.
    """
    P, n = proxy.shape
    order = proxy.double().argsort(dim=1, stable=True)                      # (P, n) ascending by proxy
    columns = [("proxy", proxy), ("gold", gold), ("len", lengths)]
    columns += [(name, t) for name, t in (("worked", worked), ("prose", prose)) if t is not None]
    ranked = {name: t.double().gather(1, order) for name, t in columns}
    correct = (gold > 0.5).sum(dim=1).tolist()                              # per prompt, for pass@N
    rows, per_prompt = [], []
    for N in ns:
        w = best_of_n_weights(n, N)                                         # (n,) weight of each rank
        per_prompt.append(ranked["gold"] @ w)                               # (P,) per prompt: BoN-N's gold
        gain = per_prompt[-1] - ranked["gold"].mean(dim=1)                  # (P,) per prompt: BoN-N minus N = 1
        rows.append({"n": N, "reward/proxy_mean": float((ranked["proxy"] @ w).mean()),
                     "reward/gold_mean": float((ranked["gold"] @ w).mean()),
                     "reward/oracle_mean": sum(pass_at_k(n, c, N) for c in correct) / P,
                     "reward/gold_gain": float(gain.mean()),
                     "reward/gold_gain_se": float(gain.std() / math.sqrt(P)) if P > 1 else 0.0,
                     "response/length_mean": float((ranked["len"] @ w).mean()), "kl/ref": best_of_n_kl(N)})
        if worked is not None:
            rows[-1]["response/worked_share"] = float((ranked["worked"] @ w).mean())
        if prose is not None:
            rows[-1]["response/prose_lines_mean"] = float((ranked["prose"] @ w).mean())
    peak = max(range(len(ns)), key=lambda i: rows[i]["reward/gold_mean"])
    for row, gold_n in zip(rows, per_prompt):
        drop = gold_n - per_prompt[peak]                                     # (P,) per prompt: BoN-N minus the peak
        row["reward/gold_minus_peak"] = float(drop.mean())
        row["reward/gold_minus_peak_se"] = float(drop.std() / math.sqrt(P)) if P > 1 else 0.0
    return rows


@releases_run_dir
def train(cfg: BoNConfig) -> dict:
    """Sample the pools, score them, and write the best-of-N curve. Returns {"rows": [...], "wall_s": ...}."""
    run = setup_policy(cfg, "bon", reference=False, problems=False, optimizer=False)  # the sampler and --reward-model
    cfg, out, policy, tokenizer, reward_model = run.cfg, run.out, run.policy, run.tokenizer, run.reward_model
    ns = [2 ** i for i in range(int(math.log2(cfg.group_size)) + 1)]
    logger = MetricsLogger(out, ns[-1], dataclasses.asdict(cfg), quiet=cfg.quiet)

    # --- one pool of samples per prompt, scored by the gold reward and the reward model
    t0 = time.perf_counter()
    problems = generate_problems(cfg.n_prompts, "test", cfg.seed)
    questions = [p["question"] for p in problems]
    pools = sample_responses(policy, tokenizer, questions, cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    t_sample = time.perf_counter() - t0
    n_tokens = sum(s["n_tokens"] for pool in pools for s in pool)
    logger.write(f"bon: {cfg.n_prompts} prompts x {cfg.group_size} samples, {n_tokens} tokens in {t_sample:.0f} s "
                 f"({n_tokens / t_sample:.0f} tok/s)")
    flat_q = [q for q in questions for _ in range(cfg.group_size)]
    flat = [s for pool in pools for s in pool]
    proxy = torch.tensor(score_responses(reward_model, tokenizer, flat_q, [s["text"] for s in flat],
                                         batch_size=cfg.batch_size)).view(cfg.n_prompts, cfg.group_size)
    gold = torch.tensor([gold_reward(s["text"], p["answer"])["reward"] for p, pool in zip(problems, pools)
                         for s in pool]).view(cfg.n_prompts, cfg.group_size)
    lengths = torch.tensor([float(s["n_tokens"]) for s in flat]).view(cfg.n_prompts, cfg.group_size)
    worked = torch.tensor([float(is_worked(s["text"])) for s in flat]).view(cfg.n_prompts, cfg.group_size)
    prose = torch.tensor([float(prose_lines(s["text"])) for s in flat]).view(cfg.n_prompts, cfg.group_size)

    # --- the curve, plus distinct-2 of one concrete best-of-N draw (the first N samples of each pool)
    rows = best_of_n_curve(proxy, gold, lengths, ns, worked, prose)
    for row in rows:
        N = row["n"]
        picks = [pool[int(proxy[j, :N].argmax())] for j, pool in enumerate(pools)]
        row["response/distinct_2"] = distinct_n([s["tokens"][:s["n_tokens"]] for s in picks], 2)
        logger.log(N, {k: v for k, v in row.items() if k != "n"})
    result = {"rows": rows, "n_prompts": cfg.n_prompts, "pool_size": cfg.group_size, "sample_wall_s": t_sample,
              "wall_s": time.perf_counter() - t0, "perf/tokens_per_s": n_tokens / t_sample}
    (out / "bon.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(BoNConfig, argv, "python -m cs336_alignment bon", __doc__.split("\n\n")[0], "bon")
    return train(cfg)


if __name__ == "__main__":
    main()
