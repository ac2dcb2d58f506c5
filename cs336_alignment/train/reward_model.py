"""Reward-model training on preference pairs with the Bradley-Terry loss (InstructGPT's RM stage).

    python -m cs336_alignment rm --init runs/sft/ckpt.pt                        # pairs sampled + labelled here
    python -m cs336_alignment rm --init CKPT --length-bias 0.05                 # an annotator that likes length
    python -m cs336_alignment rm --init CKPT --data prefs.jsonl                 # your own pairs (HH-RLHF style ok)

The reward model is the SFT model's trunk with a new scalar head (`RewardModel.from_lm`), read at the last
token of prompt + response (Ouyang et al. 2022 §3.5). Each step scores the chosen and rejected responses
of a batch of pairs in one forward pass and minimises `bradley_terry_loss` (InstructGPT eq. 1). With
--likelihood-coef A the reward adds a learnable a (from A) times the response's mean token log-prob under the
trunk's own LM head (`RewardModel`'s likelihood term), trained by the same loss.

Held-out metrics (on pairs from test-split prompts):
    eval/rm/accuracy     fraction of held-out labels the reward model orders correctly (a tie counts 1/2)
    eval/rm/ece          expected calibration error of sigma(r_a - r_b) against the labels (both orders)
    eval/rm/ceiling_accuracy  the same accuracy for the annotator's own utility u: the best any model can expect,
                         since the labels are noisy (only for pairs made by our annotator)
    eval/rm/gold_accuracy     the same for the gold reward alone (how often the labels agree with correctness)
    eval/rm/gold_pairs        fraction of held-out pairs whose two responses differ in gold reward (one is right)
    eval/rm/correct_preferred  on those pairs, how often the reward model scores the gold-better response
                         higher: does it check answers? (a tie counts 1/2; labels play no part)
    eval/rm/sft_correct_preferred   the same for the SFT policy's own mean token log-prob of each response: what the
                         trunk the reward model starts from already "knows" about correctness
After training the head's bias is shifted so that the mean reward of the training responses is 0 (the
Bradley-Terry loss only sees differences; InstructGPT normalises its RM the same way, §C.2).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm import lora
from cs336_alignment.train.config_blocks import (IntervalConfig, LogConfig, OptimConfig, RunConfig, ScheduleConfig,
                                           with_defaults)
from cs336_alignment.lm.lora import save_checkpoint  # merged model + adapters with --lora-rank
from cs336_alignment.lm.data import DataError
from cs336_alignment.evaluation.evaluate import batched_sequence_log_probs
from cs336_alignment.evaluation.metrics import pairwise_calibration_error
from cs336_alignment.lm.model import TransformerConfig
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.evaluation.preferences import PreferenceDataConfig, conversations
from cs336_alignment.reward_model import (RewardModel, batch_rewards, bradley_terry_loss, response_start,
                                          reward_accuracy, score_sequences)
from cs336_alignment.train.common import (build_optimizer, check_pairs, cosine_lr, finite_or_raise,
                                          num_params, pair_sources, parse_config, progress_bar, releases_run_dir,
                                          stream_indices)
from cs336_alignment.train.setup import setup_policy


@dataclass
@with_defaults(name="rm", num_steps=120, beta2=0.999, log_every=10, eval_every=40)
class RMConfig(LogConfig, IntervalConfig, ScheduleConfig, OptimConfig, PreferenceDataConfig, RunConfig,
               lora.LoRAConfig):
    """Reward model: the shared blocks (config_blocks), the preference data's (preferences.PreferenceDataConfig) and
    its own fields below."""

    out: str = ""
    """output directory (ckpt.pt, metrics.jsonl, preferences_*.jsonl); default runs/<name>"""
    init: str = ""
    """SFT checkpoint: the reward model's trunk, and the policy that samples the pairs; empty = the shipped
    tiny SFT model (data/checkpoints/tiny/sft.pt)"""
    batch_size: int = 32
    """preference pairs per optimizer step (2 x batch_size sequences)"""
    center_coef: float = 0.0
    """reward-centering term of the loss (Eisenstein et al. 2023); the final re-centering is always done"""
    likelihood_coef: float = 0.0
    """nonzero adds a * (mean log-prob per response token under the trunk's own LM head) to the reward, a learnable
    and initialised here (SimPO's length-normalised reward as a feature: `RewardModel`); 0 = the head alone"""

    FLAG_ALIASES = {"k_samples": "group_size"}


# ---------------------------------------------------------------------------------------------------------
# Held-out diagnostics: does a score prefer the correct response?
# ---------------------------------------------------------------------------------------------------------


def correct_preferred(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, pairs: list[dict]
                      ) -> float | None:
    """On the pairs whose "gold_chosen" and "gold_rejected" differ, the fraction where the score of the
    gold-better response is the higher one (a tie counts 1/2); None if no pair has both fields or none differs.

    Args:
        chosen_scores, rejected_scores: (N,) float, any score of each pair's two responses.
        pairs: the N pair records (annotator-made ones carry the gold fields).
    """
    gold = [(p["gold_chosen"], p["gold_rejected"]) if "gold_chosen" in p and "gold_rejected" in p else (0.0, 0.0)
            for p in pairs]
    differs = torch.tensor([c != r for c, r in gold])                              # (N,) bool
    if not differs.any():
        return None
    chosen_better = torch.tensor([c > r for c, r in gold])                         # (N,) bool
    better = torch.where(chosen_better, chosen_scores, rejected_scores)[differs]
    worse = torch.where(chosen_better, rejected_scores, chosen_scores)[differs]
    return float(reward_accuracy(better, worse))


@torch.no_grad()
def sft_diagnostics(sft_model, tokenizer, pairs: list[dict], context: int) -> dict[str, float]:
    """{"eval/rm/gold_pairs", "eval/rm/sft_correct_preferred"} on annotator-made pairs (module docstring); {} when no pair
    differs in gold reward. The SFT score of a response is its mean log-prob per response token (stop included)."""
    differs = [p for p in pairs if "gold_chosen" in p and "gold_rejected" in p and p["gold_chosen"] != p["gold_rejected"]]
    if not differs:
        return {}
    prompts, responses = [], []
    for pair in differs:
        for conversation in conversations(pair):
            ids, mask = tokenizer.render(conversation)
            start = response_start(mask)                                           # the last assistant turn
            prompts.append(ids[:start][:context])
            responses.append(ids[start:context])
    # A prompt that fills the context leaves no response token: that response scores 0 (an empty sum).
    scored = [i for i, r in enumerate(responses) if r]
    lengths = torch.tensor([max(1, len(r)) for r in responses], dtype=torch.float32)
    was_training = sft_model.training
    sft_model.eval()
    logps = torch.zeros(len(responses))                                            # (2n,) nats
    if scored:
        logps[scored] = batched_sequence_log_probs(sft_model, [prompts[i] for i in scored],
                                                   [responses[i] for i in scored], tokenizer.pad_token_id)
    mean_logps = logps / lengths                                                   # (2n,) nats per token
    sft_model.train(was_training)
    return {"eval/rm/gold_pairs": len(differs) / len(pairs),
            "eval/rm/sft_correct_preferred": correct_preferred(mean_logps[0::2], mean_logps[1::2], differs)}


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@releases_run_dir
def train(cfg: RMConfig) -> dict:
    """Train a reward model. Returns {"checkpoint", "steps", "loss/train", "eval/rm/accuracy", "eval/rm/ece",
    "eval/rm/ceiling_accuracy", "eval/rm/gold_accuracy", "n_pairs", "n_eval_pairs", "preferences_train", ...}."""
    # ---------------------------------------------------------------------------------------------------
    # Setup: the SFT model, preference pairs, the reward model
    # ---------------------------------------------------------------------------------------------------
    run = setup_policy(cfg, "rm", reference=False, problems=False, optimizer=False)  # the SFT model: trunk, sampler
    cfg, out, device, sft_model, tokenizer = run.cfg, run.out, run.device, run.policy, run.tokenizer
    model_config = TransformerConfig(**run.model_config)
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), quiet=cfg.quiet)
    t_data = time.perf_counter()
    train_pairs, eval_pairs = ddp.preference_data(cfg, sft_model, tokenizer, out, cfg.seed, log=logger.write)
    t_data = time.perf_counter() - t_data
    context = model_config.context_length
    # Every pair is checked before training; the model reads tokens 0 .. context - 1 of each conversation.
    for pairs, sources in zip((train_pairs, eval_pairs), pair_sources(cfg, out, len(train_pairs), len(eval_pairs))):
        no_room = check_pairs(pairs, sources, tokenizer, slice(0, context))
        if len(no_room) == len(pairs):
            raise DataError(f"{sources[0]}: field 'prompt': every pair's prompt leaves no room for a response in "
                            f"context_length {context}: nothing to score")
        if no_room:
            print(f"note: {sources[no_room[0]]}: {len(no_room)} of {len(pairs)} pairs leave no room for a response in "
                  f"context_length {context} (their two sequences look alike to the reward model)", file=sys.stderr)

    def tokenize(pairs):  # -> [(chosen ids, rejected ids)] cut to the context, [(their response starts)]
        rendered = [[tokenizer.render(c) for c in conversations(p)] for p in pairs]
        return ([tuple(ids[:context] for ids, _ in pair) for pair in rendered],
                [tuple(response_start(mask) for _, mask in pair) for pair in rendered])

    (train_seqs, train_starts), (eval_seqs, eval_starts) = tokenize(train_pairs), tokenize(eval_pairs)
    diagnostics = sft_diagnostics(sft_model, tokenizer, eval_pairs, context)
    model = RewardModel.from_lm(sft_model, cfg.likelihood_coef or None).to(device)
    del sft_model
    trainable = lora.setup(model, cfg, keep_trainable=("head.", "likelihood_coef"))  # LoRA: adapters + the head
    optimizer = build_optimizer(trainable, cfg)
    logger.write(f"rm: {num_params(model) / 1e6:.2f}M parameters, {len(train_pairs)} train / {len(eval_pairs)} "
                 f"held-out pairs ({t_data:.0f} s to make/load them), device {device}")

    # Ceiling: the annotator's own utility ordering the held-out labels (needs our u_* fields).
    has_u = all("u_chosen" in p for p in eval_pairs)
    fixed = {}  # held-out metrics that training does not change
    if has_u:
        def acc(key):
            return float(reward_accuracy(torch.tensor([p[f"{key}_chosen"] for p in eval_pairs], dtype=torch.float64),
                                         torch.tensor([p[f"{key}_rejected"] for p in eval_pairs], dtype=torch.float64)))
        fixed = {"eval/rm/ceiling_accuracy": acc("u"), "eval/rm/gold_accuracy": acc("gold")}
        logger.write(f"held-out label ceiling: utility orders {fixed['eval/rm/ceiling_accuracy']:.3f} of the labels, "
                     f"gold reward alone {fixed['eval/rm/gold_accuracy']:.3f}")
    fixed.update(diagnostics)
    if diagnostics:
        logger.write(f"{diagnostics['eval/rm/gold_pairs']:.3f} of the held-out pairs differ in gold reward; on them the SFT "
                     f"policy's mean token log-prob prefers the correct response "
                     f"{diagnostics['eval/rm/sft_correct_preferred']:.3f} of the time")

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        flat = [s for pair in eval_seqs for s in pair]                             # chosen, rejected, chosen, ...
        starts = [s for pair in eval_starts for s in pair]
        r = torch.tensor(score_sequences(model, flat, tokenizer.pad_token_id, prompt_lengths=starts))  # (2n,)
        chosen, rejected = r[0::2], r[1::2]
        loss, metrics = bradley_terry_loss(chosen, rejected)
        verified = correct_preferred(chosen, rejected, eval_pairs)
        return {"eval/loss": float(loss), "eval/rm/accuracy": float(metrics["rm/accuracy"]),
                "eval/rm/ece": pairwise_calibration_error(chosen, rejected), **fixed,
                **({"eval/rm/correct_preferred": verified} if verified is not None else {})}

    # ---------------------------------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------------------------------
    model.train()
    window = {"loss": [], "acc": [], "margin": [], "norm": []}
    window_tokens, t0, last = 0, time.perf_counter(), {}
    if cfg.eval_every > 0:
        logger.log(0, evaluate())  # the untrained head: accuracy ~ 0.5
    bar = progress_bar(cfg.num_steps, 0, "rm")
    for step in range(cfg.num_steps):
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.num_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- forward: chosen and rejected of every pair in one right-padded batch
        idx = stream_indices(step * cfg.batch_size, cfg.batch_size, len(train_seqs), cfg.seed)
        idx = ddp.shard(idx, "batch_size")  # this rank's pairs (all of them with one process)
        batch = [train_seqs[i] for i in idx]
        sequences = [s for pair in batch for s in pair]                            # 2B sequences
        starts = [s for i in idx for s in train_starts[i]]
        rewards = batch_rewards(model, sequences, tokenizer.pad_token_id, starts)  # (2B,)
        loss, metrics = bradley_terry_loss(rewards[0::2], rewards[1::2], center_coef=cfg.center_coef)
        finite_or_raise(loss.item(), step + 1)

        # --- backward / update
        loss.backward()
        ddp.all_reduce_gradients(model.parameters())  # mean over ranks (equal shards): the whole batch's gradient
        grad_norm = clip_gradients(trainable, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window["loss"].append(loss.item())
        window["acc"].append(float(metrics["rm/accuracy"]))
        window["margin"].append(float(metrics["rm/margin"]))
        window["norm"].append(float(grad_norm))
        window_tokens += sum(len(s) for s in sequences)
        bar.update(1)

        # --- log / eval
        done = step + 1
        is_last = done == cfg.num_steps
        is_eval = (cfg.eval_every > 0 and done % cfg.eval_every == 0) or is_last
        if done % cfg.log_every == 0 or is_eval:
            tokens_per_s = window_tokens / (time.perf_counter() - t0)
            metrics = {"loss/train": np.mean(window["loss"]), "rm/accuracy": np.mean(window["acc"]),
                       "rm/margin": np.mean(window["margin"]), "lr": lr, "grad_norm": np.mean(window["norm"])}
            if model.likelihood_coef is not None:
                metrics["rm/likelihood_coef"] = model.likelihood_coef.item()
            if is_eval:
                metrics.update(evaluate())
            metrics["perf/tokens_per_s"] = tokens_per_s
            metrics = ddp.reduce_metrics(metrics)  # training means over ranks (equal shards), tokens/s summed
            logger.log(done, metrics)
            last.update(metrics)
            window = {k: [] for k in window}
            window_tokens, t0 = 0, time.perf_counter()
    bar.close()

    # --- centre the rewards on the training responses, then save
    offset = float(np.mean(score_sequences(model, [s for pair in train_seqs for s in pair], tokenizer.pad_token_id,
                                           prompt_lengths=[s for pair in train_starts for s in pair])))
    with torch.no_grad():
        model.head.bias -= offset
    ckpt_path = out / "ckpt.pt"
    if ddp.is_main():  # rank 0 alone writes
        save_checkpoint(model, None, cfg.num_steps, ckpt_path, kind="reward_model", config=dataclasses.asdict(cfg),
                        model_config=dataclasses.asdict(model_config), reward_offset=offset,
                        likelihood_term=model.likelihood_coef is not None)
    keys = ("loss/train", "eval/loss", "eval/rm/accuracy", "eval/rm/ece", "eval/rm/ceiling_accuracy", "eval/rm/gold_accuracy",
            "eval/rm/gold_pairs", "eval/rm/correct_preferred", "eval/rm/sft_correct_preferred", "rm/likelihood_coef")
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, **{k: float(last[k]) for k in keys if k in last},
            "n_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs), "data_wall_s": t_data,
            "preferences_train": str(out / "preferences_train.jsonl") if not cfg.data else cfg.data,
            "preferences_eval": str(out / "preferences_eval.jsonl") if not cfg.data else cfg.eval_data}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RMConfig, argv, "python -m cs336_alignment rm", __doc__.split("\n\n")[0], "rm")
    return train(cfg)


if __name__ == "__main__":
    main()
