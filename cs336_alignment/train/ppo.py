"""PPO for language models (RLHF): policy, value model, frozen reference and frozen reward model.

    python -m cs336_alignment ppo --init runs/tiny/sft/ckpt.pt --reward-model runs/tiny/rm/ckpt.pt
    python -m cs336_alignment ppo --init SFT --reward gold                       # the verifiable reward
    python -m cs336_alignment ppo --init SFT --reward-model RM --target-kl 6     # adaptive KL coefficient
    python -m cs336_alignment ppo --init SFT --reward-model RM --resume          # continue runs/ppo exactly

One step (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022 §3.5; Huang et al. 2024, "The N+
implementation details of RLHF with PPO"):
  1. sample responses (`rollout.sample_rollouts`) and score each whole response: the reward model's score
     (read at its last token) or the gold reward;
  2. with no gradient, in the first epoch's micro-batches: the policy's log-probs (pi_old), the reference's,
     and the value model's V(s_t) at every response token;
  3. per-token rewards: -beta * KL_t on every token plus the score on the last one
     (`advantages.compute_kl_shaped_rewards`); then GAE(gamma, lambda) advantages and lambda-returns
     (`advantages.compute_gae`), and whitened advantages (`masked.masked_whiten`);
  4. `epochs_per_rollout_batch` passes, each split into `minibatches` optimizer steps: clipped policy loss
     (`policy_losses.compute_ppo_policy_loss`), clipped value loss (`compute_ppo_value_loss`) and an
     optional entropy bonus; the policy and the value model have their own optimizers;
  5. with --target-kl, update beta with `policy_losses.AdaptiveKLController` (Ziegler et al. 2019 §2.2).
The value model is a RewardModel (LM trunk + ScalarHead): a copy of the reward model (InstructGPT) or of
the SFT trunk with a new head. On the first minibatch of the first epoch the policy is the rollout policy,
so the ratio pi / pi_old is exactly 1 there.
Data parallel (`torchrun --nproc_per_node N -m cs336_alignment ppo ...`, train/distributed.py): each rank samples
its share of the prompts; the advantages are whitened with every rank's moments and the policy's and the value
model's gradients are summed over ranks, each micro-batch weighed by its share of the minibatch's global rows.

Checkpoints: <out>/ckpt.pt holds the policy and its optimizer (what `load_model` and the other stages read)
and, in its extra dict, everything else a resumed run needs: the value model ("value_model") and its
optimizer ("value_optimizer"), the current KL coefficient ("kl_coef", which --target-kl adapts) and the RNG
states. One file, written atomically, so a crash mid-save never leaves a policy and a value model from
different steps. --resume continues from it and gives the same weights as an uninterrupted run.

From Python (the pipeline's stages.py calls it with the preset's config), cs336_alignment.train.ppo:
    result = ppo.train(ppo.PPOConfig(init=sft_ckpt, reward_model=rm_ckpt, out=str(run / "ppo"), num_steps=30))
    result -> {"checkpoint": path, "steps": n, "cpu_s": CPU seconds of training, "eval": {...last eval...}}
Per-step metrics.jsonl lines: reward/proxy_mean (RM score), kl/ref (summed k1 per sequence, nats), kl/coef,
reward/kl_penalty; the rollouts' diagnostics from `evaluate.log_generations`: reward/gold_mean,
reward/format_mean, reward/answer_mean, policy/entropy (mean over the responses of each one's mean token
entropy on the first epoch's pass), response/length_mean, response/length_correct_mean,
response/length_incorrect_mean, response/worked_share; then policy/approx_kl, policy/clipfrac, grad_norm,
value/explained_variance, value/clipfrac, loss/policy, loss/value, perf/tokens_per_s, perf/step_s, perf/cpu_s;
eval/* lines as in grpo.py (eval/accuracy/greedy, eval/reward/gold_mean, eval/reward/proxy_mean, eval/kl/ref,
eval/response/length_mean, ...). Plot reward/proxy_mean and reward/gold_mean against step (or eval/kl/ref) to
see over-optimization of a flawed reward model. --log-generations-every K writes sample responses to
<out>/generations.jsonl every K steps, as in grpo.py.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from cs336_alignment.advantages import apply_missing_eos_penalty, compute_gae, compute_kl_shaped_rewards
from cs336_alignment.lm.checkpoint import rng_state, save_checkpoint, set_rng_state
from cs336_alignment.train.config_blocks import (GenerationLogConfig, IntervalConfig, LogConfig, OptimConfig,
                                           PolicyInitConfig, PolicyUpdateConfig, PromptConfig, ResumableRunConfig,
                                           RewardConfig, RolloutConfig, with_defaults)
from cs336_alignment.evaluation.evaluate import log_generations, run_eval
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.masked import masked_mean
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.policy_losses import (AdaptiveKLController, compute_entropy_bonus, compute_ppo_policy_loss,
                                           compute_ppo_value_loss)
from cs336_alignment.reward_model import RewardModel
from cs336_alignment.lm.rollout import micro_batch, sample_rollouts, sequence_widths
from cs336_alignment.lm.tokenizer import stop_token_ids
from cs336_alignment.train import distributed as ddp
from cs336_alignment.train.common import (build_optimizer, cosine_lr, finite_or_raise, num_params,
                                          parse_config, progress_bar, prompt_indices, releases_run_dir)
from cs336_alignment.train.setup import sequence_rewards, setup_policy
from cs336_alignment.world.verifier import gold_reward


@dataclass
@with_defaults(name="ppo", reward="rm", prompts_per_step=64, group_size=2, minibatches=2, num_steps=30, log_every=1,
               eval_every=10, checkpoint_every=10)
class PPOConfig(LogConfig, GenerationLogConfig, IntervalConfig, OptimConfig, PolicyUpdateConfig, RolloutConfig,
                RewardConfig, PromptConfig, PolicyInitConfig, ResumableRunConfig):
    """PPO with a value model: the shared blocks (config_blocks) and PPO's own fields below. Weight decay, betas and
    the gradient clip apply to both models (each clipped alone)."""

    lr: float = 3e-5
    """policy learning rate"""
    value_lr: float = 1e-4
    """value model learning rate"""
    warmup_steps: int = 2
    """rollout batches of linear warmup (then the learning rates stay constant)"""
    # --- value model and reward shaping
    value_init: Literal["auto", "rm", "sft"] = "auto"
    """value model = copy of the RM (rm) or SFT trunk + new head (sft); auto = rm when there is one"""
    missing_eos_penalty: float = 0.0
    """subtracted from the score of a response cut at max_new_tokens (0 = off)"""
    # --- PPO
    kl_coef: float = 0.05
    """beta: per-token KL penalty to the reference in the reward (initial value when adaptive)"""
    target_kl: float = 0.0
    """> 0: adapt beta so that the summed KL per sequence tracks this many nats (0 = fixed beta)"""
    kl_horizon: int = 10000
    """adaptive KL horizon (samples)"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE lambda"""
    cliprange_value: float = 0.2
    """value clip (reward units)"""
    vf_coef: float = 0.5
    """weight of the value loss (the value model has its own optimizer; this scales its gradient)"""
    ent_coef: float = 0.0
    """weight of the entropy bonus"""

    FLAG_ALIASES = {"ppo_epochs": "epochs_per_rollout_batch"}


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@releases_run_dir
def train(cfg: PPOConfig, reward_fn: Callable[[str, str], dict[str, float]] | None = None) -> dict:
    """Run PPO. Returns {"checkpoint", "steps", "cpu_s", "eval": last eval metrics}.

    reward_fn(response, ground_truth) -> {"reward": float, ...}, if given, replaces cfg.reward as the
    sequence score (custom tasks, tests); reward/gold_mean still logs the task world's gold reward.
    With cfg.resume and an <out>/ckpt.pt, training continues from that checkpoint's step ("cpu_s" counts the
    steps before it too; "eval" is {} if no step was left to run).

    Raises:
        ValueError: with --reward rm but no --reward-model, with --value-init rm but no
            reward model, or on --resume from a checkpoint that holds no value model.
        FloatingPointError: when a loss becomes NaN/inf.
    """
    # ---------------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------------
    if cfg.reward == "rm" and not cfg.reward_model and reward_fn is None:
        raise ValueError("--reward rm needs --reward-model CKPT (or use --reward gold)")
    run = setup_policy(cfg, "ppo")  # RL starts from an SFT policy, also the frozen reference when resuming
    cfg, out, device, ckpt_path = run.cfg, run.out, run.device, run.ckpt_path
    policy, tokenizer, optimizer = run.policy, run.tokenizer, run.optimizer
    reference, reward_model = run.reference, run.reward_model
    problems, eval_problems = run.problems, run.eval_problems
    value_init = cfg.value_init if cfg.value_init != "auto" else ("rm" if reward_model is not None else "sft")
    if value_init == "rm" and reward_model is None:
        raise ValueError("--value-init rm needs --reward-model")
    value_model = copy.deepcopy(reward_model) if value_init == "rm" else RewardModel.from_lm(policy)
    value_model.train().requires_grad_(True)
    ddp.broadcast_parameters(value_model)  # torchrun: rank 0's value head on every rank (a no-op with one process)
    value_optimizer = build_optimizer(value_model.parameters(), cfg, lr=cfg.value_lr)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl > 0 else None
    kl_coef = cfg.kl_coef
    start_step, cpu_s = run.start_step, 0.0  # cpu_s: process CPU seconds of training so far (evals excluded)
    if run.resume_extra:
        extra = run.resume_extra
        if "value_model" not in extra:
            raise ValueError(f"{ckpt_path} holds no value model (written before PPO runs could resume): start anew")
        value_model.load_state_dict(extra["value_model"])
        value_optimizer.load_state_dict(extra["value_optimizer"])
        kl_coef = extra["kl_coef"]
        if kl_ctl is not None:
            kl_ctl.value = kl_coef
        set_rng_state(extra["rng"])
        cpu_s = extra.get("cpu_s", 0.0)
    stops = stop_token_ids(tokenizer, "chat")
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), resumed_from=start_step, quiet=cfg.quiet)
    logger.write(f"ppo: {num_params(policy) / 1e6:.2f}M-parameter policy, value from {value_init}, reward "
                 f"{cfg.reward}, {cfg.prompts_per_step} x {cfg.group_size} rollouts per step, device {device}"
                 + (f", resumed at step {start_step}" if start_step else ""))

    evaluate = functools.partial(run_eval, logger, policy=policy, tokenizer=tokenizer, problems=eval_problems,
                                 reference=reference, reward_model=reward_model, samples=cfg.eval_samples,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)

    last_eval = evaluate(0) if start_step == 0 else {}
    bar = progress_bar(cfg.num_steps, start_step, "ppo")
    for step in range(start_step, cfg.num_steps):
        cpu0, t0 = time.process_time(), time.perf_counter()
        lr_scale = cosine_lr(step + 1, 1.0, 1.0, cfg.warmup_steps, cfg.num_steps + 1)  # warmup, then constant
        for opt, lr in ((optimizer, cfg.lr), (value_optimizer, cfg.value_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * lr_scale

        # --- 1. rollouts and sequence scores
        batch = [problems[i] for i in ddp.shard(prompt_indices(step, len(problems), cfg.prompts_per_step, cfg.seed),
                                                "prompts_per_step")]  # this rank's prompts (torchrun: a share)
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step + 7919 * ddp.rank())
        ro = sample_rollouts(policy, tokenizer, [p["question"] for p in batch], cfg.group_size,
                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, generator=generator,
                             stop_token_ids=stops)
        truths = [p["answer"] for p in batch for _ in range(cfg.group_size)]
        gold = [gold_reward(t, a) for t, a in zip(ro.response_texts, truths)]
        scorer = reward_model if cfg.reward == "rm" else None  # the RM also scores --reward gold runs' evals
        scores, metrics = sequence_rewards(ro, truths, scorer, reward_fn)         # (N,)
        if cfg.missing_eos_penalty:
            scores = apply_missing_eos_penalty(scores, ro.labels, ro.response_mask, stops, cfg.missing_eos_penalty)

        # --- 2. no-grad passes in the first epoch's micro-batches: pi_old, pi_ref, V_old
        N, widths = len(ro), sequence_widths(ro)
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        plan = [[mini.split(cfg.micro_batch_size) for mini in torch.randperm(N, generator=shuffle)
                 .tensor_split(min(cfg.minibatches, N))] for _ in range(cfg.epochs_per_rollout_batch)]
        tensors = {"input_ids": ro.input_ids, "labels": ro.labels, "response_mask": ro.response_mask}
        for name in ("old_log_probs", "ref_log_probs", "old_values"):
            tensors[name] = torch.zeros(ro.labels.shape)                           # (N, T)
        with torch.no_grad():
            for rows in (rows for mini in plan[0] for rows in mini):
                mb = micro_batch(tensors, rows, widths, device)
                width = mb["input_ids"].shape[1]
                for name, model in (("old_log_probs", policy), ("ref_log_probs", reference)):
                    tensors[name][rows, :width] = get_response_log_probs(
                        model, mb["input_ids"], mb["labels"], temperature=cfg.temperature)["log_probs"].float().cpu()
                # V(s_t) at position t: the state after token t, before the action labels[t]
                tensors["old_values"][rows, :width] = value_model.token_scores(mb["input_ids"]).float().cpu()

        # --- 3. KL-shaped per-token rewards -> GAE -> whitened advantages
        mask = ro.response_mask
        rewards, kl_info = compute_kl_shaped_rewards(scores, tensors["old_log_probs"], tensors["ref_log_probs"],
                                                     mask, kl_coef)             # (N, T)
        advantages, returns = compute_gae(rewards, tensors["old_values"], mask, cfg.gamma, cfg.lam)
        # whitened with the moments of every rank's advantages (one process: masked.masked_whiten)
        whiten = ddp.global_count(int(mask.sum())) > 1
        tensors["advantages"] = ddp.whiten_across_ranks(advantages, mask) if whiten else advantages
        tensors["returns"] = returns
        kl_ref = ddp.sum_across_ranks(float(kl_info["objective/kl"]))[0] / ddp.world_size()  # equal rows per rank
        metrics.update({"kl/ref": kl_ref, "kl/coef": kl_coef,
                        "reward/kl_penalty": float(kl_info["objective/non_score_reward"])})

        # --- 4. clipped PPO epochs over minibatches
        stats: dict[str, list[float]] = {}
        n_tokens, train_t0 = 0, time.perf_counter()
        entropy = torch.zeros(N)  # (N,) each response's mean token entropy in the first epoch (covers every row)
        for epoch, minibatches in enumerate(plan):
            for micros in minibatches:
                mini_rows = ddp.global_count(sum(len(rows) for rows in micros))  # the step's rows, all ranks
                for rows in micros:
                    mb = micro_batch(tensors, rows, widths, device)
                    m, weight = mb["response_mask"], len(rows) / mini_rows  # micro-batch share of the minibatch
                    out_lp = get_response_log_probs(policy, mb["input_ids"], mb["labels"],
                                                    return_token_entropy=True, temperature=cfg.temperature)
                    pg_loss, pg_info = compute_ppo_policy_loss(mb["advantages"], out_lp["log_probs"],
                                                               mb["old_log_probs"], m, cfg.cliprange)
                    ent_loss, _ = compute_entropy_bonus(out_lp["token_entropy"], m)
                    values = value_model.token_scores(mb["input_ids"])                 # (b, T')
                    vf_loss, vf_info = compute_ppo_value_loss(values, mb["old_values"], mb["returns"], m,
                                                              cfg.cliprange_value)
                    # Separate models, so the sum's gradients are the policy's and the value model's own.
                    ((pg_loss + cfg.ent_coef * ent_loss + cfg.vf_coef * vf_loss) * weight).backward()
                    for key, value in {**pg_info, **vf_info, "loss/policy": pg_loss.detach(),
                                       "loss/value": vf_loss.detach()}.items():
                        stats.setdefault(key, []).append(float(value))
                    if epoch == 0:  # policy/entropy: per response, on the first pass over it
                        entropy[rows] = masked_mean(out_lp["token_entropy"].detach().float(), m, dim=-1).cpu()
                    n_tokens += 2 * int(mb["input_ids"].numel())  # through the policy and the value model
                finite_or_raise(stats["loss/policy"][-1] + stats["loss/value"][-1], step + 1)
                for model in (policy, value_model):  # torchrun: each rank's loss is its share, so sum
                    ddp.all_reduce_gradients(model.parameters(), average=False)
                stats.setdefault("grad_norm", []).append(float(clip_gradients(policy.parameters(), cfg.grad_clip)))
                clip_gradients(value_model.parameters(), cfg.grad_clip)
                for opt in (optimizer, value_optimizer):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        if kl_ctl is not None:
            kl_coef = kl_ctl.update(metrics["kl/ref"], N * ddp.world_size())
        cpu_s += ddp.sum_across_ranks(time.process_time() - cpu0)[0]  # every rank's CPU seconds
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        # the rollouts' diagnostics: gold reward split, entropy, length by correct / incorrect, worked share
        summary, records = log_generations([tokenizer.decode(ids) for ids in ro.prompt_ids], ro.response_texts,
                                           truths, gold, entropy.tolist(), ro.response_lengths.tolist(),
                                           n_records=cfg.log_generations_samples)
        metrics.update(summary)
        metrics.update({k: sum(v) / len(v) for k, v in stats.items()})
        metrics.update({"perf/tokens_per_s": n_tokens / max(time.perf_counter() - train_t0, 1e-9),
                        "perf/step_s": time.perf_counter() - t0, "perf/cpu_s": cpu_s})
        metrics = ddp.reduce_metrics(metrics)  # means over ranks (equal rollouts each), tokens/s summed
        if done % cfg.log_every == 0 or done == cfg.num_steps:
            logger.log(done, metrics)
        if cfg.log_generations_every and done % cfg.log_generations_every == 0:
            logger.log_generations(done, records)
        if done % cfg.eval_every == 0 or done == cfg.num_steps:
            last_eval = evaluate(done)
        if (done % cfg.checkpoint_every == 0 or done == cfg.num_steps) and ddp.is_main():  # rank 0 alone writes
            save_checkpoint(policy, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=run.model_config, rng=rng_state(),
                            value_model=value_model.state_dict(), value_optimizer=value_optimizer.state_dict(),
                            kl_coef=float(kl_coef), cpu_s=cpu_s)
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "cpu_s": cpu_s, "eval": last_eval}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PPOConfig, argv, "python -m cs336_alignment ppo", __doc__.split("\n\n")[0], "ppo")
    return train(cfg)


if __name__ == "__main__":
    main()
