"""REINFORCE / GRPO: policy-gradient RL with group baselines (no critic), from an SFT policy.

    python -m cs336_alignment grpo --init runs/tiny/sft/ckpt.pt                          # gold (verifiable) reward
    python -m cs336_alignment grpo --init SFT --reward rm --reward-model runs/tiny/rm/ckpt.pt --kl-coef 0.05
    python -m cs336_alignment grpo --init SFT --importance-reweighting none --epochs-per-rollout-batch 1
    python -m cs336_alignment grpo --init SFT --advantage-normalizer none --loss-normalization constant   # Dr. GRPO
    python -m cs336_alignment grpo --init SFT --prompt question_only     # the bare question, no chat template

One step (Shao et al. 2024, DeepSeekMath §4.1, eq. 3; Stanford CS336 assignment 5):
  1. take `prompts_per_step` questions and sample `group_size` responses to each at `temperature`
     (`rollout.sample_rollouts`, KV cache, contiguous groups);
  2. score them, with the gold reward (`verifier.gold_reward`, right number in "#### N" format) or a learned
     reward model (`advantages.compute_rollout_rewards`), and turn the scores into advantages with
     `advantages.compute_group_normalized_rewards` (--baseline: minus the group mean or not; --advantage-normalizer:
     divided by the group std, by nothing, or by the group mean); with --process-reward, every worked step and the
     final answer are scored on their own (`verifier.process_rewards`) and each token gets the normalized rewards of
     the steps it led to (`advantages.compute_group_process_advantages`, DeepSeekMath §4.1.3);
  3. optionally drop the groups whose rewards are all equal: with the mean baseline their advantages are 0, so
     they only cost compute;
  4. for `epochs_per_rollout_batch` epochs, split the rows into `minibatches` optimizer steps (each over
     micro-batches of `micro_batch_size`) and minimize the per-token loss of `grpo_loss.compute_policy_gradient_loss`
     (--importance-reweighting none, noclip, grpo, gspo or cispo) reduced by `grpo_loss.aggregate_loss_across_
     microbatch` (--loss-normalization sequence or constant), plus, if kl_coef > 0, the k3
     estimate of KL(pi || pi_ref) to the frozen reference (DeepSeekMath eq. 3-4), per-sequence means: one loss,
     one backward pass per micro-batch (`policy_and_kl_backward`).
With --reward rm the reward function scores the sampled token ids with the reward model
(`reward_model.rollout_reward_fn`: responses and prompts as id tuples, never re-tokenized text).
For every reweighting but none, old log-probs come from a no-grad pass of the policy before the first update, in
the same micro-batches as the first epoch, so the first ratio is exactly 1 (after that, the clip has work to do).
The loss flags are the CS336 2026 edition's names; the 2025 edition's --loss-type is kept as an alias that
sets them (`grpo_loss.LOSS_TYPE_ALIASES`): no_baseline = --baseline none --advantage-normalizer none
--importance-reweighting none, reinforce_with_baseline = --baseline mean --importance-reweighting none,
grpo_clip = --baseline mean --importance-reweighting grpo, grpo_no_clip = --baseline mean --importance-reweighting
noclip.

From Python (the pipeline's stages.py calls it with the preset's config), cs336_alignment.train.grpo:
    result = grpo.train(grpo.GRPOConfig(init=sft_ckpt, out=str(run / "grpo"), reward="gold", num_steps=40))
    result -> {"checkpoint": path, "steps": n, "cpu_s": CPU seconds of training, "eval": {...last eval...}}
and runs/<name>/grpo/metrics.jsonl holds one line per step (names below) and the eval/* lines.

Metrics, one line per rollout batch: reward/mean (the training reward), reward/proxy_mean (with an RM),
groups/kept_fraction, groups/zero_variance_fraction (groups whose training rewards are all equal: no signal);
with prompts that carry a "kind" (the safety lesson's forbidden / lookalike / plain), groups/<kind>/n and
groups/<kind>/zero_variance (this step's groups of that kind, and how many had all rewards equal);
the rollouts' diagnostics from `evaluate.log_generations`: reward/gold_mean, reward/format_mean,
reward/answer_mean, policy/entropy (mean over the trained responses of each one's mean token entropy in the
first epoch, nats per token), response/length_mean, response/length_correct_mean,
response/length_incorrect_mean (tokens, stop token included), response/worked_share (tasks.is_worked);
then loss/policy, policy/clipfrac, policy/approx_kl (k3 of KL(pi_old || pi)), kl/ref_per_token (k3 per
token, with kl_coef > 0), grad_norm, lr, perf/tokens_per_s (through the trained forward passes),
perf/rollout_s, perf/step_s, perf/cpu_s (process CPU seconds of training, evals excluded: compare runs by this).
With --log-generations-every K, every K steps the step's first --log-generations-samples responses go to
<out>/generations.jsonl, one {"step", "prompt", "response", "ground_truth", "reward", "format_reward",
"answer_reward", "entropy", "length", "worked"} line each.
Held-out evaluations (before the first step, every eval_every, after the last) are separate lines whose keys
are `evaluate.evaluate_policy`'s with an "eval/" prefix: eval/accuracy/greedy, eval/reward/gold_mean
(accuracy of T = 1 samples), eval/reward/format_mean, eval/reward/proxy_mean (with an RM), eval/kl/ref
(sequence KL to the SFT reference, nats), eval/response/length_mean, eval/response/distinct_2.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm import lora
from cs336_alignment.advantages import (AdvantageNormalizer, Baseline, compute_group_normalized_rewards,
                                        compute_group_process_advantages, needs_group_statistics, zeroes_equal_groups)
from cs336_alignment.lm.checkpoint import rng_state, set_rng_state
from cs336_alignment.train.config_blocks import (GenerationLogConfig, IntervalConfig, LogConfig, MemoryConfig, OptimConfig,
                                           PolicyInitConfig, PolicyUpdateConfig, PromptConfig, ResumableRunConfig,
                                           RewardConfig, RolloutConfig, ScheduleConfig, with_defaults)
from cs336_alignment.lm.lora import save_checkpoint  # merged model + adapters with --lora-rank
from cs336_alignment.evaluation.evaluate import log_generations, run_eval
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.grpo_loss import (LOSS_TYPE_ALIASES, LossNormalization, PolicyLossType, ReweightingMethod,
                                       needs_old_log_probs, policy_and_kl_backward)
from cs336_alignment.masked import masked_mean
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.lm.rollout import Rollouts, micro_batch, sample_rollouts, sequence_widths
from cs336_alignment.lm.runtime import autocast
from cs336_alignment.lm.tokenizer import build_prompt
from cs336_alignment.train.common import (cosine_lr, finite_or_raise, num_params, parse_config,
                                          progress_bar, prompt_indices, releases_run_dir)
from cs336_alignment.train.setup import sequence_rewards, setup_policy
from cs336_alignment.world.verifier import gold_reward, process_rewards


@dataclass
@with_defaults(name="grpo", num_steps=40, warmup_steps=3, log_every=1, eval_every=10, checkpoint_every=20)
class GRPOConfig(LogConfig, GenerationLogConfig, IntervalConfig, MemoryConfig, ScheduleConfig, OptimConfig,
                 PolicyUpdateConfig, RolloutConfig, RewardConfig, PromptConfig, PolicyInitConfig, ResumableRunConfig,
                 lora.LoRAConfig):
    """GRPO / REINFORCE: the shared blocks (config_blocks) and the loss's fields below (the CS336 2026 names)."""

    min_lr: float = 1e-5
    """learning rate at the end of the cosine decay (lr >= 3e-4 damaged a converged tiny SFT model in 5 steps)"""
    prompt: Literal["chat", "question_only"] = "chat"
    """what the policy reads, in training and in its held-out evaluations (tokenizer.build_prompt): the chat
    template, or the bare question text without it (CS336 a5's prompt ablation; a reward model then reads the
    bare question too)"""
    # --- loss (the CS336 2026 edition's names)
    baseline: Baseline = "mean"
    """subtract the group's mean reward (mean) or nothing (none: REINFORCE on the raw rewards)"""
    advantage_normalizer: AdvantageNormalizer = "std"
    """divide the advantages by the group's std + eps (GRPO), by nothing (Dr. GRPO) or by its mean reward + eps
    (MaxRL) (advantages.compute_group_normalized_rewards)"""
    importance_reweighting: ReweightingMethod = "grpo"
    """per-token loss (grpo_loss.compute_policy_gradient_loss): none (REINFORCE), noclip (pi / pi_old), grpo
    (token-level clip), gspo (sequence-level clip), cispo (clipped detached weight); the clip uses --cliprange"""
    advantage_eps: float = 1e-6
    """added to the std or mean the advantages are divided by"""
    loss_normalization: LossNormalization = "sequence"
    """per-sequence mean, then the mean over sequences (GRPO), or the sum over a constant (Dr. GRPO)"""
    normalization_constant: float = 0.0
    """the constant of --loss-normalization constant, per optimizer step; 0 = max_new_tokens x the step's rows
    (each response's token sum / max_new_tokens, averaged over the responses)"""
    loss_type: Literal["", PolicyLossType] = ""
    """the 2025 edition's name for a loss, an alias that sets --baseline and --importance-reweighting (and for
    no_baseline --advantage-normalizer none); empty = use those flags"""
    process_reward: bool = False
    """(--reward gold) per-token advantages from the task world's step checker instead of one per response:
    every worked step and the final answer are rewarded on their own tokens (verifier.process_rewards,
    advantages.compute_group_process_advantages; DeepSeekMath §4.1.3)"""
    drop_zero_variance_groups: bool = True
    """skip groups whose rewards are all equal (advantage 0: no gradient, only cost)"""
    kl_coef: float = 0.0
    """weight of the k3 KL(pi || pi_ref) term in the loss (0 = no reference pass)"""


def resolve_loss_type(cfg: GRPOConfig) -> GRPOConfig:
    """The config with its 2025 --loss-type alias (if any) applied to the 2026 flags, and loss_type cleared."""
    if not cfg.loss_type:
        return cfg
    if cfg.loss_type not in LOSS_TYPE_ALIASES:
        raise ValueError(f"unknown --loss-type {cfg.loss_type!r}; expected one of {sorted(LOSS_TYPE_ALIASES)}")
    return dataclasses.replace(cfg, loss_type="", **LOSS_TYPE_ALIASES[cfg.loss_type])


# ---------------------------------------------------------------------------------------------------------
# Per-token advantages from the task world's step rewards (--process-reward)
# ---------------------------------------------------------------------------------------------------------


def process_advantages(rollouts: Rollouts, truths: list[str], tokenizer, advantage_eps: float) -> torch.Tensor:
    """(N, T) float32 per-token advantages in the layout of the rollouts' training tensors (0 off the response
    tokens), from the task world's step rewards: each step's reward reaches the tokens up to its last one."""
    step_rewards, step_ends = [], []
    for ids, text, truth in zip(rollouts.response_ids, rollouts.response_texts, truths):
        char_ends = list(itertools.accumulate(len(tokenizer.decode([t])) for t in ids))  # text length after token k
        steps = process_rewards(text, truth)  # (character offset one past the line, reward)
        step_rewards.append([reward for _, reward in steps])
        step_ends.append([bisect.bisect_left(char_ends, end) for end, _ in steps])  # the token that ends the line
    per_token = compute_group_process_advantages(step_rewards, step_ends, [len(ids) for ids in rollouts.response_ids],
                                                 rollouts.group_size, advantage_eps)  # (N, R_max)
    out = torch.zeros(rollouts.labels.shape)                                          # (N, T)
    for i, (prompt, response) in enumerate(zip(rollouts.prompt_ids, rollouts.response_ids)):
        out[i, len(prompt) - 1:len(prompt) - 1 + len(response)] = per_token[i, :len(response)]
    return out


def zero_variance_by_kind(batch: list[dict], grouped: torch.Tensor) -> dict[str, float]:
    """{"groups/<kind>/n": groups, "groups/<kind>/zero_variance": groups whose rewards are all equal} for the
    prompts of `batch` that carry a "kind" field (the safety lesson's prompts); {} when none does.

    Args:
        batch: the step's prompts, one per group, in group order.
        grouped: (n_prompts, G) float training rewards.
    """
    out: dict[str, float] = {}
    equal = (grouped == grouped[:, :1]).all(dim=-1).tolist()                           # (n_prompts,)
    for problem, flat in zip(batch, equal):
        kind = problem.get("kind")
        if kind:
            out[f"groups/{kind}/n"] = out.get(f"groups/{kind}/n", 0.0) + 1.0
            out[f"groups/{kind}/zero_variance"] = out.get(f"groups/{kind}/zero_variance", 0.0) + float(flat)
    return out


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@releases_run_dir
def train(cfg: GRPOConfig, reward_fn: Callable[[str, str], dict[str, float]] | None = None) -> dict:
    """Run GRPO / REINFORCE. Returns {"checkpoint", "steps", "cpu_s", "eval": last eval metrics}.

    reward_fn(response, ground_truth) -> {"reward": float, ...}, if given, replaces cfg.reward as the
    training reward (custom tasks, tests); reward/gold_mean still logs the task world's gold reward.
    """
    # ---------------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------------
    if cfg.reward == "rm" and not cfg.reward_model and reward_fn is None:
        raise ValueError("--reward rm needs --reward-model CKPT")
    cfg = resolve_loss_type(cfg)
    needs_old_log_probs(cfg.importance_reweighting)  # an unknown method fails here, before any work
    if cfg.group_size < 2 and needs_group_statistics(cfg.baseline, cfg.advantage_normalizer):
        raise ValueError("group baselines (--baseline mean) and --advantage-normalizer std need group_size >= 2")
    if cfg.process_reward and (cfg.reward != "gold" or reward_fn is not None or cfg.baseline != "mean"):
        raise ValueError("--process-reward needs the task world's gold reward (no --reward rm, no reward_fn) "
                         "and --baseline mean")
    run = setup_policy(cfg, "grpo", load_rm=cfg.reward == "rm" and reward_fn is None)  # RL starts from SFT
    cfg, out, device, ckpt_path = run.cfg, run.out, run.device, run.ckpt_path
    policy, tokenizer, optimizer = run.policy, run.tokenizer, run.optimizer
    trainable = run.trainable  # every parameter, or (--lora-rank) the adapters alone; the reference: adapters off
    reference, reward_model = run.reference, run.reward_model  # the frozen SFT policy: KL and eval/kl/ref
    problems, eval_problems = run.problems, run.eval_problems
    start_step, cpu_s = run.start_step, 0.0  # cpu_s: process CPU seconds of training so far (evals excluded)
    if run.resume_extra:
        set_rng_state(run.resume_extra["rng"])
        cpu_s = run.resume_extra.get("cpu_s", 0.0)
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), resumed_from=start_step, quiet=cfg.quiet)
    logger.write(f"grpo: {num_params(policy) / 1e6:.2f}M parameters, {len(problems)} prompts, reward {cfg.reward}, "
                 f"{cfg.prompts_per_step} x {cfg.group_size} rollouts per step, device {device}")

    evaluate = functools.partial(run_eval, logger, policy=policy, tokenizer=tokenizer, problems=eval_problems,
                                 reference=reference, reward_model=reward_model, samples=cfg.eval_samples,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1, fmt=cfg.prompt)

    last_eval = evaluate(start_step) if start_step == 0 else {}
    bar = progress_bar(cfg.num_steps, start_step, "grpo")
    for step in range(start_step, cfg.num_steps):
        cpu0, t0 = time.process_time(), time.perf_counter()
        # step + 1: the first rollout batch already trains at lr / warmup_steps (not at 0)
        lr = cosine_lr(step + 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.num_steps + 1)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- 1. rollouts: G samples per prompt, contiguous groups
        # this rank's prompts (all with one process): whole groups stay on one rank, so group statistics are exact
        batch = [problems[i] for i in ddp.shard(prompt_indices(step, len(problems), cfg.prompts_per_step, cfg.seed),
                                                "prompts_per_step")]
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step + 7919 * ddp.rank())
        prompts = [build_prompt(p["question"], tokenizer, cfg.prompt) for p in batch]
        with autocast(device):  # bf16 matmuls on CUDA; a no-op on CPU
            ro = sample_rollouts(policy, tokenizer, prompts, cfg.group_size,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, generator=generator)
        truths = [p["answer"] for p in batch for _ in range(cfg.group_size)]
        rollout_s = time.perf_counter() - t0

        # --- 2. rewards -> group-normalized advantages (the gold reward, or the RM score looked up by row)
        gold = [gold_reward(text, truth) for text, truth in zip(ro.response_texts, truths)]
        raw_rewards, metrics = sequence_rewards(ro, truths, reward_model, reward_fn)             # (N,)
        advantages, _ = compute_group_normalized_rewards(raw_rewards, cfg.group_size, cfg.baseline, cfg.advantage_eps,
                                                         cfg.advantage_normalizer)               # (N,)

        tensors = {"input_ids": ro.input_ids, "labels": ro.labels, "response_mask": ro.response_mask}
        if cfg.process_reward:  # per-token advantages (N, T) from the step rewards replace the per-response ones
            tensors["advantages"] = process_advantages(ro, truths, tokenizer, cfg.advantage_eps)

        # --- 3. keep the groups that carry signal
        grouped = raw_rewards.view(-1, cfg.group_size)                               # (n_prompts, G)
        informative = (grouped != grouped[:, :1]).any(dim=-1)                        # (n_prompts,)
        zero_variance = float((~informative).float().mean())  # groups whose training rewards are all equal
        if cfg.process_reward:
            informative = tensors["advantages"].view(-1, cfg.group_size * ro.labels.shape[1]).ne(0).any(dim=-1)
        if not cfg.drop_zero_variance_groups or not zeroes_equal_groups(cfg.baseline):  # else A != 0 there
            informative = torch.ones_like(informative)
        keep = informative.repeat_interleave(cfg.group_size).nonzero().squeeze(-1)   # (K,) row indices
        metrics.update({"reward/mean": float(raw_rewards.mean()),
                        "groups/kept_fraction": float(informative.float().mean()),
                        "groups/zero_variance_fraction": zero_variance})
        metrics.update(zero_variance_by_kind(batch, grouped))

        # --- 4. policy-gradient epochs over the kept rows
        widths = sequence_widths(ro)
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n_kept = ddp.global_count(len(keep))  # over all ranks: every rank takes the same number of optimizer steps
        n_mini = max(1, min(cfg.minibatches, n_kept))
        plan = [[[r for r in mini.split(cfg.micro_batch_size) if len(r)] for mini in keep[torch.randperm(
            len(keep), generator=shuffle)].tensor_split(n_mini)] for _ in range(cfg.epochs_per_rollout_batch)] \
            if n_kept else []
        # plan[epoch][minibatch] = the micro-batches (row-index tensors) of one optimizer step
        # old / reference log-probs, in the first epoch's micro-batches (first ratio == 1). The first optimizer
        # step's old log-probs are its own forward's, detached (no update yet: the same bits), so no pass here.
        with torch.no_grad(), autocast(device):
            for name, model, needed in (("old_log_probs", policy, needs_old_log_probs(cfg.importance_reweighting)),
                                        ("ref_log_probs", reference, cfg.kl_coef > 0)):
                if needed and plan:
                    tensors[name] = torch.zeros(ro.labels.shape)                 # (N, T)
                    first = 1 if name == "old_log_probs" else 0
                    for rows in (rows for mini in plan[0][first:] for rows in mini):
                        mb = micro_batch(tensors, rows, widths, device)
                        lp = get_response_log_probs(model, mb["input_ids"], mb["labels"],
                                                    temperature=cfg.temperature)["log_probs"]  # (b, T')
                        tensors[name][rows, :lp.shape[1]] = lp.float().cpu()
        stats: dict[str, list[float]] = {}
        n_tokens, train_t0, norms = 0, time.perf_counter(), []
        entropy = torch.full((len(ro),), math.nan)  # (N,) each response's mean token entropy, first epoch
        for epoch, minibatches in enumerate(plan):
            for mini_idx, micros in enumerate(minibatches):
                mini_rows = ddp.global_count(sum(len(rows) for rows in micros))  # the optimizer step's rows, all ranks
                for rows in micros:
                    mb = micro_batch(tensors, rows, widths, device)
                    with autocast(device):
                        out_lp = get_response_log_probs(policy, mb["input_ids"], mb["labels"],
                                                        return_token_entropy=True, temperature=cfg.temperature)
                    log_probs, mask = out_lp["log_probs"], mb["response_mask"]        # (b, T')
                    if epoch == mini_idx == 0 and "old_log_probs" in tensors:  # before the first update
                        mb["old_log_probs"] = log_probs.detach()
                        tensors["old_log_probs"][rows, :log_probs.shape[1]] = log_probs.detach().float().cpu()
                    # Weigh each micro-batch by its share of the minibatch's rows (a float accumulation
                    # factor), so uneven micro-batches still give exactly the minibatch mean.
                    share, constant = ddp.policy_loss_scaling(  # with one process: (mini_rows / len(rows), C)
                        cfg.loss_normalization, mini_rows, len(rows),
                        cfg.normalization_constant or cfg.max_new_tokens * mini_rows)
                    info, kl = policy_and_kl_backward(
                        log_probs, mask, share, cfg.importance_reweighting,
                        weights=mb["advantages"] if cfg.process_reward                    # (b, T')
                        else advantages[rows].unsqueeze(-1).to(device),                   # (b, 1)
                        old_log_probs=mb.get("old_log_probs"), cliprange=cfg.cliprange,
                        loss_normalization=cfg.loss_normalization,
                        normalization_constant=constant,
                        kl_coef=cfg.kl_coef, ref_log_probs=mb.get("ref_log_probs"))
                    if kl is not None:
                        stats.setdefault("kl/ref_per_token", []).append(kl)
                    for key, value in info.items():
                        stats.setdefault(key, []).append(float(value))
                    if epoch == 0:  # the first pass over each trained row
                        entropy[rows] = masked_mean(out_lp["token_entropy"].detach().float(), mask, dim=-1).cpu()
                    n_tokens += int(mb["input_ids"].numel())
                if micros:  # a rank may hold no rows of this step (their groups had no signal)
                    finite_or_raise(stats["loss/policy"][-1], step + 1)
                ddp.all_reduce_gradients(policy.parameters(), average=False)  # each rank's loss is its share
                norms.append(float(clip_gradients(trainable, cfg.grad_clip)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        cpu_s += ddp.sum_across_ranks(time.process_time() - cpu0)[0]  # every rank's CPU seconds
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        # the rollouts' diagnostics: gold reward split, entropy (rows trained on), length by correct / incorrect
        summary, records = log_generations(
            [tokenizer.decode(ids) for ids in ro.prompt_ids], ro.response_texts, truths, gold,
            [None if math.isnan(e) else e for e in entropy.tolist()], ro.response_lengths.tolist(),
            n_records=cfg.log_generations_samples)
        metrics.update(summary)
        metrics.update({k: sum(v) / len(v) for k, v in stats.items()})
        metrics.update({"grad_norm": sum(norms) / len(norms) if norms else 0.0, "lr": lr,
                        "perf/tokens_per_s": n_tokens / max(time.perf_counter() - train_t0, 1e-9),
                        "perf/rollout_s": rollout_s, "perf/step_s": time.perf_counter() - t0, "perf/cpu_s": cpu_s})
        counts = tuple(k for k in metrics if k.startswith("groups/") and k.endswith(("/n", "/zero_variance")))
        metrics = ddp.reduce_metrics(metrics, summed=("perf/tokens_per_s", *counts))  # means over ranks, tokens/s
        # and the per-kind group counts summed
        if done % cfg.log_every == 0 or done == cfg.num_steps:
            logger.log(done, metrics)
        if cfg.log_generations_every and done % cfg.log_generations_every == 0:
            logger.log_generations(done, records)
        if done % cfg.eval_every == 0 or done == cfg.num_steps:
            last_eval = evaluate(done)
        if (done % cfg.checkpoint_every == 0 or done == cfg.num_steps) and ddp.is_main():  # rank 0 alone writes
            save_checkpoint(policy, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=run.model_config, rng=rng_state(), cpu_s=cpu_s)
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "cpu_s": cpu_s, "eval": last_eval}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(GRPOConfig, argv, "python -m cs336_alignment grpo", __doc__.split("\n\n")[0], "grpo")
    return train(cfg)


if __name__ == "__main__":
    main()
