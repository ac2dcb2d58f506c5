"""Direct Preference Optimization on preference pairs, from the SFT policy (Rafailov et al. 2023).

    python -m cs336_alignment dpo --init runs/sft/ckpt.pt                       # pairs sampled + labelled here
    python -m cs336_alignment dpo --init CKPT --data runs/rm/preferences_train.jsonl \\
                                  --eval-data runs/rm/preferences_eval.jsonl   # the reward model's pairs
    python -m cs336_alignment dpo --init CKPT --data prefs.jsonl --loss-type ipo

No reward model and no sampling during training: the policy's implicit reward beta * log(pi / pi_ref) is
fitted to the labels directly with `dpo.dpo_loss` (eq. 7). The reference is the frozen initial policy, and
its log-probs never change, so each pair's are computed once: the held-out pairs' before the first step, a
training pair's the first time a step draws it (a run shorter than an epoch computes only the pairs it uses; TRL's
`precompute_ref_log_probs` computes them all up front). Sequence log-probs are sums over the response tokens (the
assistant content and its closing <|end|>), `dpo.sequence_log_probs`.

Metrics: loss/train (plus the NLL term when nll_coef > 0), dpo/margin (mean implicit-reward gap),
dpo/accuracy (fraction of pairs whose chosen response has the higher implicit reward), dpo/chosen_reward,
dpo/rejected_reward; at eval steps eval/loss, eval/dpo/accuracy and eval/dpo/margin on held-out pairs, and
eval/accuracy/greedy (gold accuracy of greedy answers to test problems) with eval/response/length_mean.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm import lora
from cs336_alignment.lm.checkpoint import rng_state
from cs336_alignment.train.config_blocks import (IntervalConfig, LogConfig, OptimConfig, PolicyInitConfig, RunConfig,
                                           ScheduleConfig, with_defaults)
from cs336_alignment.lm.lora import save_checkpoint  # merged model + adapters with --lora-rank
from cs336_alignment.lm.data import DataError, collate_chat
from cs336_alignment.dpo import dpo_loss, sequence_log_probs
from cs336_alignment.evaluation.evaluate import evaluate_model
from cs336_alignment.lm.model import TransformerConfig
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.evaluation.preferences import PreferenceDataConfig, conversations
from cs336_alignment.lm.runtime import autocast
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.train.common import (check_pairs, cosine_lr, finite_or_raise, num_params,
                                          pair_sources, parse_config, progress_bar, releases_run_dir, stream_indices)
from cs336_alignment.train.setup import setup_policy


@dataclass
@with_defaults(name="dpo", num_steps=120, beta2=0.999, log_every=10, eval_every=40)
class DPOConfig(LogConfig, IntervalConfig, ScheduleConfig, OptimConfig, PreferenceDataConfig, PolicyInitConfig,
                RunConfig, lora.LoRAConfig):
    """DPO: the shared blocks (config_blocks), the preference data's (preferences.PreferenceDataConfig) and DPO's."""

    # --- DPO
    beta: float = 0.1
    """KL strength: the implicit reward is beta * log(pi / pi_ref)"""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid = DPO (eq. 7), ipo = IPO's squared loss (Azar et al. 2023)"""
    label_smoothing: float = 0.0
    """assumed label-flip rate (cDPO); sigmoid only"""
    nll_coef: float = 0.0
    """add nll_coef x the chosen responses' NLL per token (RPO, Pang et al. 2024 eq. 1); 0 = plain DPO"""
    batch_size: int = 32
    """preference pairs per optimizer step"""
    n_gold_problems: int = 128
    """test problems answered greedily at each evaluation (0 = skip the gold evaluation)"""

    FLAG_ALIASES = {"k_samples": "group_size"}


@releases_run_dir
def train(cfg: DPOConfig) -> dict:
    """Run DPO. Returns {"checkpoint", "steps", "loss/train", "eval/loss", "eval/dpo/accuracy",
    "eval/accuracy/greedy", ...} (the last logged values)."""
    # ---------------------------------------------------------------------------------------------------
    # Setup: policy, frozen reference, pairs, reference log-probs (once)
    # ---------------------------------------------------------------------------------------------------
    run = setup_policy(cfg, "dpo", problems=False)  # the SFT policy, its frozen copy as the reference, AdamW
    cfg, out, device, model, tokenizer = run.cfg, run.out, run.device, run.policy, run.tokenizer
    reference, optimizer, model_config = run.reference, run.optimizer, TransformerConfig(**run.model_config)
    trainable = run.trainable  # every parameter, or (--lora-rank) the adapters alone; the reference: adapters off
    context = model_config.context_length
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), quiet=cfg.quiet)
    t_data = time.perf_counter()
    train_pairs, eval_pairs = ddp.preference_data(cfg, model, tokenizer, out, cfg.seed, log=logger.write)
    # Every pair is checked before the first step: a prompt that leaves no response token in the context would
    # stop the run when its batch came (labels are tokens 1 .. context of each conversation).
    for pairs, sources in zip((train_pairs, eval_pairs), pair_sources(cfg, out, len(train_pairs), len(eval_pairs))):
        no_room = check_pairs(pairs, sources, tokenizer, slice(1, context + 1))
        if no_room:
            raise DataError(f"{sources[no_room[0]]}: field 'prompt': leaves no room for a response in context_length "
                            f"{context} ({len(no_room)} such pairs in the file): shorten or drop them")
    train_chats = [conversations(p) for p in train_pairs]                        # [(chosen, rejected)]
    eval_chats = [conversations(p) for p in eval_pairs]
    gold_problems = generate_problems(cfg.n_gold_problems, "test", cfg.seed)

    def batch_logps(m, chats: list[tuple], with_lengths: bool = False):
        """Summed response log-probs of the chosen (B,) and rejected (B,) responses, one forward pass
        (and the chosen responses' token counts (B,) if with_lengths)."""
        batch = collate_chat([c for pair in chats for c in pair], tokenizer, max_length=context)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(device):
            seq = sequence_log_probs(m, batch["input_ids"], batch["labels"], batch["response_mask"])  # (2B,)
        if with_lengths:
            return seq[0::2], seq[1::2], batch["response_mask"][0::2].sum(-1)
        return seq[0::2], seq[1::2]

    @torch.no_grad()
    def precompute(chats: list[tuple], bs: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [batch_logps(reference, chats[i:i + bs]) for i in range(0, len(chats), bs)]
        return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])    # (N,), (N,)

    ref_eval = precompute(eval_chats)
    ref_train = torch.full((2, len(train_chats)), float("nan"))  # (chosen, rejected) x N, filled as pairs are drawn

    @torch.no_grad()
    def reference_logps(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed log-probs of the chosen (B,) and rejected (B,) responses of pairs `idx`."""
        missing = sorted({i for i in idx if torch.isnan(ref_train[0, i])})
        if missing:
            chosen, rejected = precompute([train_chats[i] for i in missing])
            ref_train[:, missing] = torch.stack([chosen, rejected]).float().cpu()
        index = torch.tensor(idx)
        return ref_train[0, index].to(device), ref_train[1, index].to(device)

    pair_tokens = [sum(len(tokenizer.render(c)[0]) for c in pair) for pair in train_chats]  # for perf/tokens_per_s
    t_data = time.perf_counter() - t_data
    logger.write(f"dpo: {num_params(model) / 1e6:.2f}M parameters, {len(train_pairs)} train / {len(eval_pairs)} "
                 f"held-out pairs, beta {cfg.beta}, held-out reference log-probs precomputed ({t_data:.0f} s with "
                 f"the pairs), device {device}")

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        parts = [batch_logps(model, eval_chats[i:i + 64]) for i in range(0, len(eval_chats), 64)]
        chosen, rejected = torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
        loss, m = dpo_loss(chosen, rejected, ref_eval[0], ref_eval[1], cfg.beta, cfg.loss_type, cfg.label_smoothing)
        metrics = {"eval/loss": float(loss), "eval/dpo/accuracy": float(m["dpo/accuracy"]),
                   "eval/dpo/margin": float(m["dpo/margin"])}
        if gold_problems:
            gold, _ = evaluate_model(model, tokenizer, gold_problems, fmt="chat", max_new_tokens=cfg.max_new_tokens)
            metrics["eval/accuracy/greedy"] = gold["reward/gold_mean"]
            metrics["eval/response/length_mean"] = gold["response/length_mean"]
        model.train()
        return metrics

    # ---------------------------------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------------------------------
    model.train()
    keys = ("dpo/margin", "dpo/accuracy", "dpo/chosen_reward", "dpo/rejected_reward")
    window: dict[str, list[float]] = {k: [] for k in ("loss", "norm", *keys)}
    window_tokens, t0, last = 0, time.perf_counter(), {}
    if cfg.eval_every > 0:
        logger.log(0, evaluate())  # the SFT policy: eval/loss = log 2, eval/accuracy/greedy = SFT's
    bar = progress_bar(cfg.num_steps, 0, "dpo")
    for step in range(cfg.num_steps):
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.num_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- forward: policy log-probs of chosen and rejected; the reference's once per pair (no grad)
        idx = stream_indices(step * cfg.batch_size, cfg.batch_size, len(train_chats), cfg.seed)
        idx = ddp.shard(idx, "batch_size")  # this rank's pairs (all of them with one process)
        ref_chosen, ref_rejected = reference_logps(idx)
        policy_chosen, policy_rejected, n_chosen = batch_logps(model, [train_chats[i] for i in idx], True)
        loss, metrics = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type,
                                 cfg.label_smoothing)
        if cfg.nll_coef > 0:
            # RPO: keep the chosen responses likely. DPO alone may lower both log-probs (only their gap is
            # fitted), which on reasoning tasks costs accuracy (Pang et al. 2024, "Iterative Reasoning PO").
            loss = loss + cfg.nll_coef * (-policy_chosen / n_chosen).mean()
        finite_or_raise(loss.item(), step + 1)

        # --- backward / update
        loss.backward()
        ddp.all_reduce_gradients(model.parameters())  # mean over ranks (equal shards): the whole batch's gradient
        grad_norm = clip_gradients(trainable, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window["loss"].append(loss.item())
        window["norm"].append(float(grad_norm))
        for k in keys:
            window[k].append(float(metrics[k]))
        window_tokens += sum(pair_tokens[i] for i in idx)
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        is_last = done == cfg.num_steps
        is_eval = (cfg.eval_every > 0 and done % cfg.eval_every == 0) or is_last
        if done % cfg.log_every == 0 or is_eval:
            tokens_per_s = window_tokens / (time.perf_counter() - t0)
            log = {"loss/train": np.mean(window["loss"]), **{k: np.mean(window[k]) for k in keys}, "lr": lr,
                   "grad_norm": np.mean(window["norm"])}
            if is_eval:
                log.update(evaluate())
            log["perf/tokens_per_s"] = tokens_per_s
            log = ddp.reduce_metrics(log)  # training means over ranks (equal shards), tokens/s summed
            logger.log(done, log)
            last.update(log)
            window = {k: [] for k in window}
            window_tokens, t0 = 0, time.perf_counter()
    bar.close()
    ckpt_path = out / "ckpt.pt"
    if ddp.is_main():  # rank 0 alone writes
        save_checkpoint(model, optimizer, cfg.num_steps, ckpt_path, config=dataclasses.asdict(cfg),
                        model_config=dataclasses.asdict(model_config), rng=rng_state())
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "data_wall_s": t_data,
            "n_pairs": len(train_pairs), "n_eval_pairs": len(eval_pairs),
            **{k: float(v) for k, v in last.items() if k not in ("lr", "grad_norm", "perf/tokens_per_s")}}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPOConfig, argv, "python -m cs336_alignment dpo", __doc__.split("\n\n")[0], "dpo")
    return train(cfg)


if __name__ == "__main__":
    main()
