"""Expert iteration: sample from the policy, keep what the verifier accepts, fine-tune on it, repeat.

    python -m cs336_alignment ei --init data/checkpoints/tiny/sft.pt                       # 5 rounds, G = 4
    python -m cs336_alignment ei --init SFT --num-steps 5 --group-size 8 --sft-epochs 2 --batch-size 32

One round (Stanford CS336 assignment 5, §5 "expert iteration"; the idea of STaR, Zelikman et al. 2022, and of
rejection-sampling fine-tuning, Yuan et al. 2023):
  1. take the round's `prompts_per_step` questions from the prompt pool and sample `group_size` (G)
     responses to each at `temperature` (`rollout.sample_rollouts`, the RL loops' sampler);
  2. keep the responses the gold reward accepts (`verifier.gold_reward`: the right number in "#### N" format) and
     that ended with the stop token, so the model also learns to stop (--keep-unfinished: also those cut at
     max_new_tokens);
  3. fine-tune on the kept responses for `sft_epochs` epochs of `batch_size` rows: the SFT loss on the sampled
     response tokens (`sft.sft_microbatch_train_step`, per-token log-probs from `logprobs.get_response_log_probs`),
     normalised by the mean kept response length, as train/sft.py does.
Data parallel (`torchrun --nproc_per_node N -m cs336_alignment ei ...`, train/distributed.py): each rank samples its
share of the prompts; the kept samples of every rank are gathered, and each optimizer step's rows are split over
the ranks, each micro-batch weighed by its share of the step's rows, the gradients summed.
No reward model, no advantage, no reference: the only signal is which samples the verifier kept, so expert
iteration can only re-weight behaviours the policy already samples (pass@G becomes pass@1), as GRPO mostly does.
The optimizer (AdamW, constant `lr`) carries over from round to round. The prompt pool comes by default from the
task world's "rl" half of the train split, disjoint from demonstrations drawn from its "sft" half.

Metrics, one line per round: the samples' diagnostics from `evaluate.log_generations` (reward/gold_mean: accuracy
of the round's samples, the training reward; reward/format_mean, reward/answer_mean, policy/entropy: mean over the
samples of each one's mean per-token entropy, nats, before the round's update; response/length_mean,
response/length_correct_mean, response/length_incorrect_mean, response/worked_share), ei/kept (responses kept),
ei/kept_fraction, ei/prompts_solved (share of prompts with at least one kept response: pass@G), loss/train (NLL per kept response token, mean over the round's
updates), grad_norm, perf/rollout_s, perf/cpu_s (process CPU seconds of training, evals excluded). Held-out
evaluations (before the first round and after every `eval_every` rounds) are `metrics.evaluate_policy`'s with an
"eval/" prefix, as in GRPO (evaluate.run_eval): eval/accuracy/greedy, eval/reward/gold_mean (T = 1
accuracy), eval/kl/ref (to the initial policy), eval/response/length_mean. --log-generations-every K writes
sample responses to <out>/generations.jsonl every K rounds, as in grpo.py.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Callable

import torch

from cs336_alignment.lm.checkpoint import save_checkpoint
from cs336_alignment.train.config_blocks import (GenerationLogConfig, LogConfig, OptimConfig, PolicyInitConfig, PromptConfig,
                                           RolloutConfig, RunConfig, with_defaults)
from cs336_alignment.evaluation.evaluate import log_generations, run_eval
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.masked import masked_mean
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.lm.rollout import micro_batch, sample_rollouts, sequence_widths
from cs336_alignment.sft_step import sft_microbatch_train_step
from cs336_alignment.train import distributed as ddp
from cs336_alignment.train.common import (finite_or_raise, num_params, parse_config, progress_bar,
                                          prompt_indices, releases_run_dir)
from cs336_alignment.train.setup import setup_policy
from cs336_alignment.world.verifier import gold_reward


@dataclass
@with_defaults(name="ei")
class EIConfig(LogConfig, GenerationLogConfig, OptimConfig, RolloutConfig, PromptConfig, PolicyInitConfig, RunConfig):
    """Expert iteration: the shared blocks (config_blocks) and its own fields below."""

    prompts_per_step: int = 256
    """questions per round (CS336's expert-iteration batch D_b), taken in turn from the pool"""
    group_size: int = 4
    """responses sampled per question (G; CS336's rollouts per prompt)"""
    # --- expert iteration
    num_steps: int = 5
    """rounds of sample -> filter -> fine-tune (CS336's n_ei_steps)"""
    keep_unfinished: bool = False
    """also keep accepted responses cut at max_new_tokens (by default a kept response must end with the stop
    token, so that fine-tuning on it also teaches the model to stop)"""
    sft_epochs: int = 1
    """passes over each round's kept responses"""
    batch_size: int = 32
    """kept responses per optimizer step"""
    micro_batch_size: int = 64
    """rows per forward/backward (gradient accumulation inside an optimizer step)"""
    lr: float = 1e-4
    """constant learning rate (the matched-compute SFT baseline's; 1e-3, SFT's peak, damages a converged policy)"""
    # --- eval
    eval_every: int = 1
    """rounds between evaluations (also before the first and after the last)"""

    FLAG_ALIASES = {"n_ei_steps": "num_steps", "rollouts_per_prompt": "group_size"}


@releases_run_dir
def train(cfg: EIConfig, reward_fn: Callable[[str, str], dict[str, float]] | None = None) -> dict:
    """Run expert iteration. Returns {"checkpoint", "steps" (rounds), "cpu_s", "eval": last eval metrics}.

    reward_fn(response, ground_truth) -> {"reward": float, ...}, if given, replaces the gold reward as the
    filter (a response is kept when its reward is >= 1; custom tasks, tests); reward/gold_mean still logs the
    task world's gold reward.
    Raises:
        ValueError: no --init, or a count below 1.
    """
    # ---------------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------------
    for name in ("num_steps", "group_size", "prompts_per_step", "sft_epochs", "batch_size",
                 "micro_batch_size", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    run = setup_policy(cfg, "ei")  # the reference is the initial policy: eval/kl/ref
    cfg, out, device, ckpt_path = run.cfg, run.out, run.device, run.ckpt_path
    policy, tokenizer, optimizer, reference = run.policy, run.tokenizer, run.optimizer, run.reference
    problems, eval_problems = run.problems, run.eval_problems
    filter_fn = reward_fn or gold_reward
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), quiet=cfg.quiet)
    logger.write(f"ei: {num_params(policy) / 1e6:.2f}M parameters, {len(problems)} prompts, {cfg.num_steps} rounds "
                 f"of {cfg.prompts_per_step} x {cfg.group_size} samples, device {device}")
    evaluate = functools.partial(run_eval, logger, policy=policy, tokenizer=tokenizer, problems=eval_problems,
                                 reference=reference, reward_model=None, samples=cfg.eval_samples,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)

    # ---------------------------------------------------------------------------------------------------
    # The loop: one round = sample, filter, fine-tune
    # ---------------------------------------------------------------------------------------------------
    last_eval, cpu_s = evaluate(0), 0.0
    bar = progress_bar(cfg.num_steps, 0, "ei")
    for step in range(cfg.num_steps):
        cpu0, t0 = time.process_time(), time.perf_counter()
        # --- 1. G samples for each of the round's prompts
        batch = [problems[i] for i in ddp.shard(prompt_indices(step, len(problems), cfg.prompts_per_step, cfg.seed),
                                                "prompts_per_step")]  # this rank's prompts (torchrun: a share)
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step + 7919 * ddp.rank())
        policy.eval()
        ro = sample_rollouts(policy, tokenizer, [p["question"] for p in batch], cfg.group_size,
                             temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, generator=generator,
                             batch_size=max(cfg.micro_batch_size, 64))
        truths = [p["answer"] for p in batch for _ in range(cfg.group_size)]
        rollout_s = time.perf_counter() - t0

        # --- 2. keep the verified responses (that also ended with the stop token)
        gold = [gold_reward(text, truth) for text, truth in zip(ro.response_texts, truths)]
        accepted = [filter_fn(text, truth)["reward"] >= 1.0 for text, truth in zip(ro.response_texts, truths)]
        finished = ro.finished.tolist() if not cfg.keep_unfinished else [True] * len(ro)
        keep = torch.tensor([a and f for a, f in zip(accepted, finished)])                      # (N,) bool
        tensors = {"input_ids": ro.input_ids, "labels": ro.labels, "response_mask": ro.response_mask}
        widths = sequence_widths(ro)
        with torch.no_grad():  # the policy's entropy on its own samples, before this round's update
            entropies = []
            for rows in torch.arange(len(ro)).split(cfg.micro_batch_size):
                mb = micro_batch(tensors, rows, widths, device)
                ent = get_response_log_probs(policy, mb["input_ids"], mb["labels"], return_token_entropy=True,
                                             temperature=cfg.temperature)["token_entropy"]         # (b, T')
                entropies.append(masked_mean(ent.float(), mb["response_mask"], dim=-1).cpu())      # (b,)
        # the samples' diagnostics: gold reward split, entropy, length by correct / incorrect, worked share
        metrics, records = log_generations([tokenizer.decode(ids) for ids in ro.prompt_ids], ro.response_texts,
                                           truths, gold, torch.cat(entropies).tolist(), ro.response_lengths.tolist(),
                                           n_records=cfg.log_generations_samples)
        metrics.update({"ei/kept": float(keep.sum()), "ei/kept_fraction": float(keep.float().mean()),
                        "ei/prompts_solved": float(keep.view(-1, cfg.group_size).any(-1).float().mean())})

        # --- 3. SFT on the kept responses: sft_epochs passes, batch_size rows per optimizer step. Under torchrun
        # every rank gathers all ranks' kept rows (rank order) and takes its contiguous slice of each step's rows.
        kept = keep.nonzero().squeeze(-1)                                                          # (K,)
        sft_rows, sft_widths = ddp.all_gather_rows({k: v[kept] for k, v in tensors.items()}, widths[kept],
                                                   pad=ro.pad_token_id)
        kept_lengths = sft_rows["response_mask"].sum(-1)                                           # (K_all,)
        # one normaliser per round, the mean kept response length (train/sft.py: nats per token)
        normalize_constant = float(kept_lengths.float().mean()) if len(kept_lengths) else 1.0
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        policy.train()
        nll, n_tokens, norms = 0.0, 0, []
        for _ in range(cfg.sft_epochs if len(kept_lengths) else 0):
            for rows in torch.randperm(len(kept_lengths), generator=shuffle).split(cfg.batch_size):
                mine = ddp.shard_uneven(rows)  # this rank's rows of the step (torchrun: maybe none)
                for micro in mine.split(cfg.micro_batch_size) if len(mine) else ():
                    mb = micro_batch(sft_rows, micro, sft_widths, device)
                    log_probs = get_response_log_probs(policy, mb["input_ids"], mb["labels"])["log_probs"]  # (b, T')
                    # per row: -sum of response log-probs / normalize_constant; mean over the rows; weighed by
                    # the micro-batch's share of the optimizer step's rows. Calls backward.
                    sft_microbatch_train_step(log_probs, mb["response_mask"], len(rows) / len(micro),
                                              normalize_constant=normalize_constant)
                    nll -= float((log_probs.detach().float() * mb["response_mask"]).sum())
                    n_tokens += int(mb["response_mask"].sum())
                finite_or_raise(nll, step + 1)
                ddp.all_reduce_gradients(policy.parameters(), average=False)  # each rank's loss: its share
                norms.append(float(clip_gradients(policy.parameters(), cfg.grad_clip)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        cpu_s += ddp.sum_across_ranks(time.process_time() - cpu0)[0]  # every rank's CPU seconds
        nll, n_tokens = ddp.sum_across_ranks(nll, n_tokens)
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        metrics.update({"loss/train": nll / n_tokens if n_tokens else float("nan"),
                        "grad_norm": sum(norms) / len(norms) if norms else 0.0, "ei/optimizer_steps": len(norms),
                        "perf/rollout_s": rollout_s, "perf/step_s": time.perf_counter() - t0, "perf/cpu_s": cpu_s})
        logger.log(done, ddp.reduce_metrics(metrics, summed=("ei/kept",)))  # means over ranks (equal prompts)
        if cfg.log_generations_every and done % cfg.log_generations_every == 0:
            logger.log_generations(done, records)
        if done % cfg.eval_every == 0 or done == cfg.num_steps:
            last_eval = evaluate(done)
        if ddp.is_main():  # rank 0 alone writes
            save_checkpoint(policy, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=run.model_config, cpu_s=cpu_s)
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "cpu_s": cpu_s, "eval": last_eval}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EIConfig, argv, "python -m cs336_alignment ei", __doc__.split("\n\n")[0], "ei")
    return train(cfg)


if __name__ == "__main__":
    main()
