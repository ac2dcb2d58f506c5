"""Pretraining: next-token prediction on raw text. This makes the base model of the pipeline.

    python -m cs336_alignment pretrain                          # the task world's documents
    python -m cs336_alignment pretrain --data corpus.txt        # any UTF-8 text file
    python -m cs336_alignment pretrain --resume                 # continue runs/pretrain/ckpt.pt exactly

The text is tokenized once into one long stream of token ids, with documents separated by
<|endoftext|>. Each step trains on random windows of context_length + 1 tokens (`data.get_batch`, as
in CS336 assignment 1). The last `val_fraction` of the stream is held out, and eval/loss is measured on
fixed windows of it. The loss is the mean cross-entropy over every position (Radford et al. 2018, eq. 1).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cs336_alignment.world import tasks
from cs336_alignment.lm.checkpoint import load_checkpoint, load_checkpoint_extra, load_model, rng_state, save_checkpoint, set_rng_state
from cs336_alignment.train.config_blocks import (IntervalConfig, LogConfig, ModelShapeConfig, OptimConfig, ResumableRunConfig,
                                           ScheduleConfig, with_defaults)
from cs336_alignment.lm.data import DataError, get_batch
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.nn_utils import clip_gradients, cross_entropy
from cs336_alignment.lm.runtime import autocast
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train.common import (MetricsLogger, build_optimizer, cosine_lr, finite_or_raise, num_params,
                                          parse_config, progress_bar, releases_run_dir, setup_run)


@dataclass
@with_defaults(name="pretrain", num_steps=500, lr=3e-3, min_lr=3e-4, warmup_steps=50, weight_decay=0.1,
               checkpoint_every=200)
class PretrainConfig(LogConfig, IntervalConfig, ModelShapeConfig, ScheduleConfig, OptimConfig, ResumableRunConfig):
    """Pretraining from scratch: the shared blocks (config_blocks) and pretraining's own fields below."""

    # --- data
    data: str = ""
    """UTF-8 text file to pretrain on; empty = the task world's documents"""
    n_problems: int = 20000
    """task-world train-split problems rendered as raw documents (when --data is empty)"""
    val_fraction: float = 0.02
    """fraction of the token stream (its end) held out for eval/loss"""
    # --- model (CS336 assignment-1 TransformerLM; the shape fields are config_blocks.ModelShapeConfig's)
    rope_theta: float = 10000.0
    """RoPE base"""
    # --- optimisation
    batch_size: int = 16
    """sequences per optimizer step (split into grad_accum_steps micro-batches)"""
    grad_accum_steps: int = 1
    """micro-batches per optimizer step; batch_size must be divisible by it"""
    eval_batches: int = 4
    """micro-batches of held-out windows per eval/loss"""
    init: str = ""
    """continue pretraining from this checkpoint (mid-training, e.g. on a knowledge corpus: the model fields
    above are then ignored); empty = a randomly initialised model"""


def load_token_stream(cfg: PretrainConfig, tokenizer) -> np.ndarray:
    """The whole corpus as one (N,) int32 array of token ids. Raises DataError naming --data when it is not UTF-8."""
    if not cfg.data:
        return np.array(tokenizer.encode(tasks.pretraining_text(cfg.n_problems, cfg.seed)), dtype=np.int32)  # (N,)
    try:
        text = Path(cfg.data).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = Path(cfg.data).read_bytes()[:e.start].count(b"\n") + 1
        raise DataError(f"{cfg.data}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return np.array(tokenizer.encode(text), dtype=np.int32)  # (N,)


@releases_run_dir
def train(cfg: PretrainConfig) -> dict:
    """Run pretraining. Returns {"checkpoint": path, "loss/train": last, "eval/loss": last, "steps": n}."""
    # ---------------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------------
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by grad_accum_steps {cfg.grad_accum_steps}")
    micro_batch_size = cfg.batch_size // cfg.grad_accum_steps  # to be filled in at runtime
    out, device = setup_run(cfg)
    ckpt_path = out / "ckpt.pt"

    tokenizer = load_tokenizer()
    tokens = load_token_stream(cfg, tokenizer)  # (N,)
    n_val = max(int(len(tokens) * cfg.val_fraction), cfg.context_length + 2)
    train_tokens, val_tokens = tokens[:-n_val], tokens[-n_val:]
    if len(train_tokens) <= cfg.context_length + 1:
        raise DataError(f"{cfg.data or 'the task world'}: only {len(tokens)} tokens: need more than context_length "
                        f"+ 1 = {cfg.context_length + 1} after holding out {n_val} for validation")

    model_config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=cfg.context_length,
                                     d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                                     d_ff=cfg.d_ff, rope_theta=cfg.rope_theta)
    if cfg.init:  # continued pretraining (mid-training): the checkpoint's architecture and weights
        model, init_extra = load_model(cfg.init, device)
        model_config = TransformerConfig(**init_extra["model_config"])
    else:
        model = TransformerLM(model_config).to(device)
    optimizer = build_optimizer(model.parameters(), cfg)

    start_step = 0
    if cfg.resume and ckpt_path.exists():
        start_step = load_checkpoint(ckpt_path, model, optimizer)
        set_rng_state(load_checkpoint_extra(ckpt_path)["rng"])  # the same batches as the uninterrupted run
    logger = MetricsLogger(out, cfg.num_steps, dataclasses.asdict(cfg), resumed_from=start_step, quiet=cfg.quiet)
    logger.write(f"pretrain: {num_params(model) / 1e6:.2f}M parameters, {len(train_tokens) / 1e6:.2f}M training "
                 f"tokens, device {device}" + (f", resumed at step {start_step}" if start_step else ""))

    # Fixed held-out windows (their own generator), so eval/loss is comparable across steps and runs.
    eval_rng = np.random.default_rng(cfg.seed)
    eval_starts = eval_rng.integers(0, len(val_tokens) - cfg.context_length - 1,
                                    size=(cfg.eval_batches, micro_batch_size))  # (n_batches, B)
    window = np.arange(cfg.context_length + 1)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        losses = []
        for starts in eval_starts:
            chunk = torch.from_numpy(val_tokens[starts[:, None] + window]).long().to(device)  # (B, T + 1)
            with autocast(device):
                logits = model(chunk[:, :-1])  # (B, T, V)
            losses.append(cross_entropy(logits.float(), chunk[:, 1:]).item())
        model.train()
        return float(np.mean(losses))

    # ---------------------------------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------------------------------
    model.train()
    window_losses, window_norms, window_tokens, t0 = [], [], 0, time.perf_counter()
    last = {}
    bar = progress_bar(cfg.num_steps, start_step, "pretrain")
    for step in range(start_step, cfg.num_steps):
        # --- learning rate: linear warmup then cosine decay
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.num_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- forward / backward over micro-batches (gradient accumulation)
        step_loss = 0.0
        for _ in range(cfg.grad_accum_steps):
            x, y = get_batch(train_tokens, micro_batch_size, cfg.context_length, str(device))  # (B, T) each
            with autocast(device):
                logits = model(x)  # (B, T, V)
            loss = cross_entropy(logits.float(), y)  # mean over B*T positions, nats / token
            # Each micro-batch is 1/grad_accum_steps of the batch: the summed gradients are the batch mean.
            (loss / cfg.grad_accum_steps).backward()
            step_loss += loss.item() / cfg.grad_accum_steps
            window_tokens += x.numel()
        finite_or_raise(step_loss, step + 1)

        # --- update
        grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_losses.append(step_loss)
        window_norms.append(float(grad_norm))
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        is_last = done == cfg.num_steps
        is_eval = done % cfg.eval_every == 0 or is_last
        if done % cfg.log_every == 0 or is_eval:
            tokens_per_s = window_tokens / (time.perf_counter() - t0)  # training only, eval not counted
            metrics = {"loss/train": float(np.mean(window_losses)), "lr": lr,
                       "grad_norm": float(np.mean(window_norms))}
            if is_eval:
                metrics["eval/loss"] = evaluate()
            metrics["perf/tokens_per_s"] = tokens_per_s
            logger.log(done, metrics)
            last.update(metrics)
            window_losses, window_norms, window_tokens, t0 = [], [], 0, time.perf_counter()
        if done % cfg.checkpoint_every == 0 or is_last:
            save_checkpoint(model, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=dataclasses.asdict(model_config), rng=rng_state())
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": cfg.num_steps, "loss/train": last.get("loss/train"),
            "eval/loss": last.get("eval/loss")}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PretrainConfig, argv, "python -m cs336_alignment pretrain", __doc__.split("\n\n")[0], "pretrain")
    return train(cfg)


if __name__ == "__main__":
    main()
