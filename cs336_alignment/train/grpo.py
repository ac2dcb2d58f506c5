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
The loss flags are the CS336 2026 edition's names; the 2025 edition's --loss-type is kept as an alias that sets
them (`LOSS_TYPE_ALIASES`): no_baseline = --baseline none --advantage-normalizer none --importance-reweighting none,
reinforce_with_baseline = --baseline mean --importance-reweighting none, grpo_clip = --baseline mean
--importance-reweighting grpo, grpo_no_clip = --baseline mean --importance-reweighting noclip.

From Python (the pipeline's stages.py calls it with the preset's config), cs336_alignment.train.grpo:
    result = grpo.train(grpo.GRPOConfig(init=sft_ckpt, out=str(run / "grpo"), reward="gold", num_steps=40))
    result -> {"checkpoint": path, "steps": n, "cpu_s": CPU seconds of training, "eval": {...last eval...}}
and runs/<name>/grpo/metrics.jsonl holds one line per step (names below) and the eval/* lines.

Metrics, one line per rollout batch: reward/mean (the training reward), reward/proxy_mean (with an RM),
groups/kept_fraction, groups/zero_variance_fraction (groups whose training rewards are all equal: no signal);
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

from cs336_alignment import lora
from cs336_alignment.advantages import (compute_group_normalized_rewards, compute_group_process_advantages,
                                        compute_rollout_rewards)
from cs336_alignment.checkpoint import load_checkpoint_extra, load_model, rng_state, set_rng_state
from cs336_alignment.lora import load_checkpoint, save_checkpoint  # merged model + adapters with --lora-rank
from cs336_alignment.evaluate import log_generations, run_eval
from cs336_alignment.gpu import configure_model
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.grpo_loss import needs_old_log_probs, policy_and_kl_backward
from cs336_alignment.masked import masked_mean
from cs336_alignment.nn_utils import clip_gradients
from cs336_alignment.reward_model import load_reward_model, rollout_reward_fn
from cs336_alignment.rollout import Rollouts, micro_batch, sample_rollouts, sequence_widths
from cs336_alignment.runtime import autocast
from cs336_alignment.tokenizer import build_prompt, load_tokenizer
from cs336_alignment.train.common import (MetricsLogger, build_optimizer, cosine_lr, finite_or_raise, init_or_shipped,
                                          load_problems, load_sft_optimizer_state, num_params, parse_config,
                                          progress_bar, prompt_indices, releases_run_dir, setup_run)
from cs336_alignment.verifier import gold_reward, process_rewards


@dataclass
class GRPOConfig(lora.LoRAConfig):
    # --- run
    name: str = "grpo"
    """run name: outputs go to runs/<name>/ unless --out is given"""
    out: str = ""
    """output directory (ckpt.pt, metrics.jsonl); default runs/<name>"""
    overwrite: bool = False
    """replace the run already in --out (without it, a directory that holds a run is an error)"""
    seed: int = 0
    """seed of the prompt order and of the sampling"""
    device: str = "auto"
    """cuda, mps, cpu, or auto"""
    threads: int = 1
    """torch.set_num_threads; 0 = torch's default (1 was fastest on a shared 2-core CPU)"""
    resume: bool = False
    """continue from <out>/ckpt.pt"""
    init: str = ""
    """the SFT checkpoint to start from, also the frozen reference; empty = the shipped tiny SFT model
    (data/checkpoints/tiny/sft.pt)"""
    init_optimizer: bool = False
    """start AdamW's second moments from those saved in --init (SFT's gradient scale) instead of zeros"""
    # --- reward and data
    reward: Literal["gold", "rm"] = "gold"
    """gold = the task world's verifiable reward; rm = the learned reward model at --reward-model"""
    reward_model: str = ""
    """reward-model checkpoint (train/reward_model.py) for --reward rm"""
    data: str = ""
    """jsonl of {"question", "answer"} prompts; empty = the task world's --split"""
    split: str = "rl"
    """task-world split of the prompt pool: rl, the half of train that SFT demonstrations drawn from sft never use
    (tasks.train_half), so no RL prompt is a question whose answer the SFT model memorised; train = both halves"""
    n_problems: int = 4000
    """task-world prompts in the pool (when --data is empty)"""
    n_eval_problems: int = 200
    """held-out test problems for eval/* (greedy and sampled accuracy)"""
    eval_data: str = ""
    """jsonl of {"question", "answer"} held-out problems (the first n_eval_problems); empty = the task world's"""
    eval_samples: int = 2
    """T = 1 samples per eval problem for eval/sampled_accuracy"""
    # --- sampling
    prompts_per_step: int = 32
    """questions per rollout batch"""
    group_size: int = 8
    """responses sampled per question (G)"""
    temperature: float = 1.0
    """sampling temperature (log-probs are recomputed at the same temperature)"""
    max_new_tokens: int = 64
    """response length limit (task-world answers: at most ~40 tokens terse, ~60 with both prose lines)"""
    prompt: Literal["chat", "question_only"] = "chat"
    """what the policy reads, in training and in its held-out evaluations (tokenizer.build_prompt): the chat
    template, or the bare question text without it (CS336 a5's prompt ablation; a reward model then reads the
    bare question too)"""
    # --- loss (the CS336 2026 edition's names)
    baseline: Literal["mean", "none"] = "mean"
    """subtract the group's mean reward (mean) or nothing (none: REINFORCE on the raw rewards)"""
    advantage_normalizer: Literal["std", "none", "mean"] = "std"
    """divide the advantages by the group's std + eps (GRPO), by nothing (Dr. GRPO) or by its mean reward + eps
    (MaxRL) (advantages.compute_group_normalized_rewards)"""
    importance_reweighting: Literal["none", "noclip", "grpo", "gspo", "cispo"] = "grpo"
    """per-token loss (grpo_loss.compute_policy_gradient_loss): none (REINFORCE), noclip (pi / pi_old), grpo
    (token-level clip), gspo (sequence-level clip), cispo (clipped detached weight)"""
    cliprange: float = 0.2
    """clip epsilon of grpo, gspo and cispo"""
    advantage_eps: float = 1e-6
    """added to the std or mean the advantages are divided by"""
    loss_normalization: Literal["sequence", "constant"] = "sequence"
    """per-sequence mean, then the mean over sequences (GRPO), or the sum over a constant (Dr. GRPO)"""
    normalization_constant: float = 0.0
    """the constant of --loss-normalization constant, per optimizer step; 0 = max_new_tokens x the step's rows
    (each response's token sum / max_new_tokens, averaged over the responses)"""
    loss_type: Literal["", "no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip"] = ""
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
    epochs_per_rollout_batch: int = 2
    """passes over each rollout batch (> 1 makes the updates off-policy: use grpo_clip)"""
    minibatches: int = 1
    """optimizer steps per epoch (the kept rows are split evenly)"""
    micro_batch_size: int = 64
    """rows per forward/backward (gradient accumulation inside an optimizer step)"""
    # --- optimisation
    num_steps: int = 40
    """rollout batches (each gives epochs_per_rollout_batch * minibatches optimizer steps)"""
    lr: float = 1e-4
    """peak learning rate"""
    min_lr: float = 1e-5
    """learning rate at the end of the cosine decay (lr >= 3e-4 damaged a converged tiny SFT model in 5 steps)"""
    warmup_steps: int = 3
    """rollout batches of linear warmup"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient L2 norm to this value"""
    gradient_checkpointing: bool = False
    """recompute each transformer block in backward instead of storing its activations (GPU memory for 0.5B+ models)"""
    compile: bool = False
    """torch.compile each block's MLP and norms (gpu.configure_model)"""
    # --- logging / eval / checkpoints
    log_every: int = 1
    """rollout batches between console/metrics lines"""
    eval_every: int = 10
    """rollout batches between evaluations (also before the first and after the last)"""
    checkpoint_every: int = 20
    """rollout batches between checkpoints (and at the last)"""
    log_generations_every: int = 0
    """rollout batches between writes of sample responses (prompt, response, ground truth, rewards, entropy) to
    <out>/generations.jsonl (evaluate.log_generations); 0 = never"""
    log_generations_samples: int = 16
    """responses per write: the step's first rows (whole groups when a multiple of group_size)"""
    quiet: bool = False
    """no console lines (metrics.jsonl is still written)"""


LOSS_TYPE_ALIASES: dict[str, dict[str, str]] = {  # the 2025 edition's --loss-type -> the 2026 flags it sets
    "no_baseline": {"baseline": "none", "advantage_normalizer": "none", "importance_reweighting": "none"},
    "reinforce_with_baseline": {"baseline": "mean", "importance_reweighting": "none"},
    "grpo_clip": {"baseline": "mean", "importance_reweighting": "grpo"},
    "grpo_no_clip": {"baseline": "mean", "importance_reweighting": "noclip"}}


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
    if cfg.group_size < 2 and (cfg.baseline == "mean" or cfg.advantage_normalizer == "std"):
        raise ValueError("group baselines (--baseline mean) and --advantage-normalizer std need group_size >= 2")
    if cfg.process_reward and (cfg.reward != "gold" or reward_fn is not None or cfg.baseline != "mean"):
        raise ValueError("--process-reward needs the task world's gold reward (no --reward rm, no reward_fn) "
                         "and --baseline mean")
    cfg = init_or_shipped(cfg, "grpo")  # RL starts from an SFT policy
    out, device = setup_run(cfg)
    ckpt_path = out / "ckpt.pt"
    policy, init_extra = load_model(cfg.init, device)
    tokenizer = load_tokenizer(policy.config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    trainable = lora.setup(policy, cfg)  # every parameter, or (--lora-rank) the adapters alone
    reference = lora.frozen_reference(policy)  # frozen SFT policy (LoRA: adapters disabled): KL and eval/kl_ref
    configure_model(policy, device, gradient_checkpointing=cfg.gradient_checkpointing, compile=cfg.compile)
    reward_model = None
    if cfg.reward == "rm" and reward_fn is None:
        reward_model = load_reward_model(cfg.reward_model, device)[0].requires_grad_(False)
    problems = load_problems(cfg.data, cfg.n_problems, cfg.split, cfg.seed + 2)
    eval_problems = load_problems(cfg.eval_data, cfg.n_eval_problems, "test", 0)[:cfg.n_eval_problems]
    optimizer = build_optimizer(trainable, cfg)
    if cfg.init_optimizer:
        load_sft_optimizer_state(cfg.init, optimizer)
    start_step, cpu_s = 0, 0.0  # cpu_s: process CPU seconds of training so far (evals and checkpoints excluded)
    if cfg.resume and ckpt_path.exists():
        start_step = load_checkpoint(ckpt_path, policy, optimizer)
        extra = load_checkpoint_extra(ckpt_path)
        set_rng_state(extra["rng"])
        cpu_s = extra.get("cpu_s", 0.0)
    logger = MetricsLogger(out, cfg.num_steps, dataclasses.asdict(cfg), resumed_from=start_step, quiet=cfg.quiet)
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
        batch = [problems[i] for i in prompt_indices(step, len(problems), cfg.prompts_per_step, cfg.seed)]
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        prompts = [build_prompt(p["question"], tokenizer, cfg.prompt) for p in batch]
        with autocast(device):  # bf16 matmuls on CUDA; a no-op on CPU
            ro = sample_rollouts(policy, tokenizer, prompts, cfg.group_size,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, generator=generator)
        truths = [p["answer"] for p in batch for _ in range(cfg.group_size)]
        rollout_s = time.perf_counter() - t0

        # --- 2. rewards -> group-normalized advantages (the gold reward, or the RM score looked up by row)
        gold = [gold_reward(text, truth) for text, truth in zip(ro.response_texts, truths)]
        metrics = {}
        if reward_model is None:
            score_fn, responses, keys = reward_fn or gold_reward, ro.response_texts, truths
        else:  # the RM scores the sampled token ids (no decode / re-encode): responses and prompts as id tuples
            score_fn = rollout_reward_fn(reward_model, ro)
            responses, keys = [tuple(r) for r in ro.response_ids], [tuple(p) for p in ro.prompt_ids]
        raw_rewards, _ = compute_rollout_rewards(score_fn, responses, keys)                      # (N,)
        advantages, _ = compute_group_normalized_rewards(raw_rewards, cfg.group_size, cfg.baseline, cfg.advantage_eps,
                                                         cfg.advantage_normalizer)               # (N,)
        if reward_model is not None:
            proxy = raw_rewards.tolist()
            metrics["reward/proxy_mean"] = sum(proxy) / len(proxy)

        tensors = {"input_ids": ro.input_ids, "labels": ro.labels, "response_mask": ro.response_mask}
        if cfg.process_reward:  # per-token advantages (N, T) from the step rewards replace the per-response ones
            tensors["advantages"] = process_advantages(ro, truths, tokenizer, cfg.advantage_eps)

        # --- 3. keep the groups that carry signal
        grouped = raw_rewards.view(-1, cfg.group_size)                               # (n_prompts, G)
        informative = (grouped != grouped[:, :1]).any(dim=-1)                        # (n_prompts,)
        zero_variance = float((~informative).float().mean())  # groups whose training rewards are all equal
        if cfg.process_reward:
            informative = tensors["advantages"].view(-1, cfg.group_size * ro.labels.shape[1]).ne(0).any(dim=-1)
        if not cfg.drop_zero_variance_groups or cfg.baseline != "mean":  # all-equal groups: A = 0 only with a mean
            informative = torch.ones_like(informative)
        keep = informative.repeat_interleave(cfg.group_size).nonzero().squeeze(-1)   # (K,) row indices
        metrics.update({"reward/mean": float(raw_rewards.mean()),
                        "groups/kept_fraction": float(informative.float().mean()),
                        "groups/zero_variance_fraction": zero_variance})

        # --- 4. policy-gradient epochs over the kept rows
        widths = sequence_widths(ro)
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        n_mini = max(1, min(cfg.minibatches, len(keep)))
        plan = [[mini.split(cfg.micro_batch_size) for mini in keep[torch.randperm(len(keep), generator=shuffle)]
                 .tensor_split(n_mini)] for _ in range(cfg.epochs_per_rollout_batch)] if len(keep) else []
        # plan[epoch][minibatch] = the micro-batches (row-index tensors) of one optimizer step
        # old / reference log-probs, in the first epoch's micro-batches (first ratio == 1)
        with torch.no_grad(), autocast(device):
            for name, model, needed in (("old_log_probs", policy, needs_old_log_probs(cfg.importance_reweighting)),
                                        ("ref_log_probs", reference, cfg.kl_coef > 0)):
                if needed and plan:
                    tensors[name] = torch.zeros(ro.labels.shape)                 # (N, T)
                    for rows in (rows for mini in plan[0] for rows in mini):
                        mb = micro_batch(tensors, rows, widths, device)
                        lp = get_response_log_probs(model, mb["input_ids"], mb["labels"],
                                                    temperature=cfg.temperature)["log_probs"]  # (b, T')
                        tensors[name][rows, :lp.shape[1]] = lp.float().cpu()
        stats: dict[str, list[float]] = {}
        n_tokens, train_t0, norms = 0, time.perf_counter(), []
        entropy = torch.full((len(ro),), math.nan)  # (N,) each response's mean token entropy, first epoch
        for epoch, minibatches in enumerate(plan):
            for micros in minibatches:
                mini_rows = sum(len(rows) for rows in micros)
                for rows in micros:
                    mb = micro_batch(tensors, rows, widths, device)
                    with autocast(device):
                        out_lp = get_response_log_probs(policy, mb["input_ids"], mb["labels"],
                                                        return_token_entropy=True, temperature=cfg.temperature)
                    log_probs, mask = out_lp["log_probs"], mb["response_mask"]        # (b, T')
                    # Weigh each micro-batch by its share of the minibatch's rows (a float accumulation
                    # factor), so uneven micro-batches still give exactly the minibatch mean.
                    info, kl = policy_and_kl_backward(
                        log_probs, mask, mini_rows / len(rows), cfg.importance_reweighting,
                        weights=mb["advantages"] if cfg.process_reward                    # (b, T')
                        else advantages[rows].unsqueeze(-1).to(device),                   # (b, 1)
                        old_log_probs=mb.get("old_log_probs"), cliprange=cfg.cliprange,
                        loss_normalization=cfg.loss_normalization,
                        normalization_constant=cfg.normalization_constant or cfg.max_new_tokens * mini_rows,
                        kl_coef=cfg.kl_coef, ref_log_probs=mb.get("ref_log_probs"))
                    if kl is not None:
                        stats.setdefault("kl/ref_per_token", []).append(kl)
                    for key, value in info.items():
                        stats.setdefault(key, []).append(float(value))
                    if epoch == 0:  # the first pass over each trained row
                        entropy[rows] = masked_mean(out_lp["token_entropy"].detach().float(), mask, dim=-1).cpu()
                    n_tokens += int(mb["input_ids"].numel())
                finite_or_raise(stats["loss/policy"][-1], step + 1)
                norms.append(float(clip_gradients(trainable, cfg.grad_clip)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        cpu_s += time.process_time() - cpu0
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
        if done % cfg.log_every == 0 or done == cfg.num_steps:
            logger.log(done, metrics)
        if cfg.log_generations_every and done % cfg.log_generations_every == 0:
            logger.log_generations(done, records)
        if done % cfg.eval_every == 0 or done == cfg.num_steps:
            last_eval = evaluate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.num_steps:
            save_checkpoint(policy, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=init_extra["model_config"], rng=rng_state(), cpu_s=cpu_s)
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "cpu_s": cpu_s, "eval": last_eval}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(GRPOConfig, argv, "python -m cs336_alignment grpo", __doc__.split("\n\n")[0], "grpo")
    return train(cfg)


if __name__ == "__main__":
    main()
