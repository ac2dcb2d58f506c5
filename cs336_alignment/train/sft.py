"""Supervised fine-tuning (SFT) on chat demonstrations, with the loss on the assistant's tokens only.

    python -m cs336_alignment sft --init runs/pretrain/ckpt.pt                 # task-world demonstrations
    python -m cs336_alignment sft --init CKPT --data train.jsonl               # your own data
    python -m cs336_alignment sft --init CKPT --resume                         # continue runs/sft exactly

--data accepts GSM8K {"question", "answer"}, {"prompt", "response"} or {"messages": [...]} lines
(`data.load_sft_examples`; a bad line raises DataError naming file:line). Every conversation is rendered
with the chat template; the tokens trained on are the assistant's content and its closing <|end|>
(InstructGPT's SFT stage, Ouyang et al. 2022 §3.5). Per-token log-probs come from
`logprobs.get_response_log_probs`, and the loss and backward pass from `sft.sft_microbatch_train_step`.

Normalisation: each example's summed NLL is divided by one constant, the mean number of response tokens
per training example. This makes every response token weigh the same whatever its sequence's length,
and the loss reads as nats per token.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm import lora
from cs336_alignment.world import tasks
from cs336_alignment.lm.checkpoint import load_checkpoint_extra, load_model, rng_state, set_rng_state
from cs336_alignment.train.config_blocks import (IntervalConfig, LogConfig, MemoryConfig, ModelShapeConfig, OptimConfig,
                                           ResumableRunConfig, ScheduleConfig, with_defaults)
from cs336_alignment.lm.lora import load_checkpoint, save_checkpoint  # merged model + adapters with --lora-rank
from cs336_alignment.lm.data import DataError, collate_chat, load_sft_examples
from cs336_alignment.evaluation.evaluate import evaluate_policy
from cs336_alignment.lm.gpu import configure_model
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.lm.runtime import autocast
from cs336_alignment.sft_step import sft_microbatch_train_step
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train.common import (build_optimizer, cosine_lr, finite_or_raise, num_params,
                                          parse_config, progress_bar, releases_run_dir, stream_indices)
from cs336_alignment.world.verifier import gold_reward


@dataclass
@with_defaults(name="sft", num_steps=400, lr=3e-3, min_lr=3e-4, warmup_steps=20)
class SFTConfig(LogConfig, IntervalConfig, MemoryConfig, ModelShapeConfig, ScheduleConfig, OptimConfig,
                ResumableRunConfig, lora.LoRAConfig):
    """Supervised fine-tuning: the shared blocks (config_blocks) and SFT's own fields below."""

    init: str = ""
    """checkpoint to start from (e.g. runs/pretrain/ckpt.pt); empty = random init with the model fields"""
    # --- data
    data: str = ""
    """jsonl of demonstrations; empty = the task world's train split"""
    eval_data: str = ""
    """jsonl for eval/loss; empty = the task world's test split (or the last examples of --data)"""
    n_examples: int = 4000
    """unique demonstrations trained on (the data-size sweep: 128, 256, ...): the task world writes this many (a
    shorter list is a prefix of a longer one); with --data, the first this many distinct conversations of the
    file (0 = all of them)"""
    verbosity: float = 0.0
    """task-world demonstrations: probability of each optional prose line (tasks.sft_examples; the pipeline's
    tiny preset uses 0.5, so that response lengths vary); 0 = every answer terse"""
    hasty: float = 0.0
    """task-world demonstrations: probability that the writer is hasty (final line only; tasks module docstring)"""
    sloppy: float = 0.0
    """task-world demonstrations: probability that the writer is sloppy (one slip in the steps: a wrong answer)"""
    split: str = "train"
    """task-world split the demonstrations come from: train, or its half sft (disjoint from the RL prompts of
    split rl)"""
    filter_correct: bool = False
    """filtered SFT: train only on the demonstrations whose final answer is right (task-world demonstrations:
    checked with verifier.gold_reward against the problem's answer; removes the sloppy writer's)"""
    n_eval_examples: int = 128
    """examples for eval/loss"""
    n_eval_problems: int = 0
    """held-out test problems answered at each eval (greedy accuracy and T = 1 sampled accuracy); 0 = loss only"""
    max_new_tokens: int = 64
    """response length limit of those answers"""
    # --- optimisation
    max_cpu_s: float = 0.0
    """stop after this many process CPU seconds of training (evals excluded), saving the checkpoint; 0 = no limit
    (the pipeline's matched-compute baseline: SFT trained further for the CPU time GRPO used)"""
    batch_size: int = 32
    """conversations per optimizer step (split into grad_accum_steps micro-batches)"""
    grad_accum_steps: int = 1
    """micro-batches per optimizer step; batch_size must be divisible by it"""
    fused_logprobs: bool = True
    """memory-efficient log-probs from hidden states and lm_head (same values as log_softmax + gather)"""


def load_conversations(cfg: SFTConfig) -> tuple[list, list]:
    """(train, eval) lists of chat conversations (lists of {"role", "content"} messages)."""
    if cfg.n_examples < 0 or (cfg.n_examples == 0 and not cfg.data):
        raise ValueError(f"n_examples must be > 0 (or 0 = all of --data), got {cfg.n_examples}")
    if cfg.data:
        if cfg.filter_correct:
            raise ValueError("--filter-correct checks task-world demonstrations against their problems' answers; "
                             "a --data file has no ground truth (filter it before training)")
        examples = load_sft_examples(cfg.data)
        if not examples:
            raise DataError(f"{cfg.data}: no demonstrations (an empty file)")
        distinct = {json.dumps(e["messages"], sort_keys=True): e["messages"] for e in examples}
        train = list(distinct.values())  # in file order, each conversation once
    else:
        demonstrations = tasks.sft_demonstrations(cfg.n_examples, cfg.seed, split=cfg.split,
                                                  verbosity=cfg.verbosity, hasty=cfg.hasty, sloppy=cfg.sloppy)
        if cfg.filter_correct:
            demonstrations = [d for d in demonstrations
                              if gold_reward(d["messages"][-1]["content"], d["ground_truth"])["reward"] == 1.0]
        train = [d["messages"] for d in demonstrations]
    if cfg.eval_data:
        train = train[:cfg.n_examples or None]
        evals = [e["messages"] for e in load_sft_examples(cfg.eval_data)][:cfg.n_eval_examples]
        if not evals:
            raise DataError(f"{cfg.eval_data}: no demonstrations (an empty file)")
    elif cfg.data:  # hold out the end of the file
        n_eval = min(cfg.n_eval_examples, len(train) // 10)
        train, evals = train[:len(train) - n_eval][:cfg.n_examples or None], train[len(train) - n_eval:]
    else:
        evals = tasks.sft_examples(cfg.n_eval_examples, cfg.seed, split="test", verbosity=cfg.verbosity)
    if not train:
        raise ValueError("no training conversations")
    return train, evals


@releases_run_dir
def train(cfg: SFTConfig) -> dict:
    """Run SFT. Returns {"checkpoint": path, "loss/train": last, "eval/loss": last, "steps": optimizer steps
    done (fewer than num_steps when max_cpu_s stopped the run), "cpu_s": process CPU seconds of training}."""
    # ---------------------------------------------------------------------------------------------------
    # Setup
    # ---------------------------------------------------------------------------------------------------
    if cfg.batch_size % cfg.grad_accum_steps:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by grad_accum_steps {cfg.grad_accum_steps}")
    # per rank: under torchrun each of the W ranks takes 1/W of every micro-batch (distributed.py)
    micro_batch_size = ddp.per_rank(cfg.batch_size // cfg.grad_accum_steps, "batch_size / grad_accum_steps")
    out, device = ddp.setup_run(cfg)
    ckpt_path = out / "ckpt.pt"

    tokenizer = load_tokenizer()
    if cfg.init:
        model, init_extra = load_model(cfg.init, device)
        model_config = TransformerConfig(**init_extra["model_config"])
        tokenizer = load_tokenizer(model_config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    else:
        model_config = TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=cfg.context_length,
                                         d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                                         d_ff=cfg.d_ff)
        model = TransformerLM(model_config).to(device)
    trainable = lora.setup(model, cfg)  # every parameter, or (--lora-rank) the adapters alone
    configure_model(model, device, gradient_checkpointing=cfg.gradient_checkpointing, compile=cfg.compile)
    context = model_config.context_length
    train_chats, eval_chats = load_conversations(cfg)
    # Conversations longer than the context are cut at its end; drop those left with no response token.
    n_cut = sum(len(tokenizer.render(c)[0]) > context + 1 for c in train_chats + eval_chats)
    n_trained = [sum(tokenizer.render(c)[1][1:context + 1]) for c in train_chats]  # labels are ids[1:]
    train_chats = [c for c, n in zip(train_chats, n_trained) if n > 0]
    eval_chats = [c for c in eval_chats if sum(tokenizer.render(c)[1][1:context + 1]) > 0]
    if not train_chats:
        raise DataError(f"{cfg.data or 'the task world'}: no training conversation has a response token within "
                        f"context_length {context}")
    # One constant for the whole run: the mean number of trained-on tokens per conversation.
    normalize_constant = float(np.mean([n for n in n_trained if n > 0]))
    optimizer = build_optimizer(trainable, cfg)

    start_step, cpu_s = 0, 0.0  # cpu_s: process CPU seconds of training so far (evals and checkpoints excluded)
    if cfg.resume and ckpt_path.exists():
        start_step = load_checkpoint(ckpt_path, model, optimizer)
        resumed = load_checkpoint_extra(ckpt_path)
        set_rng_state(resumed["rng"])
        cpu_s = resumed.get("cpu_s", 0.0)
    logger = ddp.metrics_logger(out, cfg.num_steps, dataclasses.asdict(cfg), resumed_from=start_step, quiet=cfg.quiet)
    logger.write(f"sft: {num_params(model) / 1e6:.2f}M parameters, {len(train_chats)} train / {len(eval_chats)} "
                 f"eval conversations ({n_cut} cut to context_length {context}), {normalize_constant:.1f} response "
                 f"tokens per conversation, device {device}" + (f", resumed at step {start_step}" if start_step else ""))

    def batch_indices(step: int, micro: int) -> list[int]:
        """A fresh permutation of the training conversations per epoch (`stream_indices`): resuming at any step
        draws the same examples without replaying a generator."""
        # position in the endless example stream; rank r's micro-batches follow ranks 0 .. r-1's (distributed.shard)
        first = step * cfg.batch_size + (ddp.rank() * cfg.grad_accum_steps + micro) * micro_batch_size
        return stream_indices(first, micro_batch_size, len(train_chats), cfg.seed)

    @torch.no_grad()
    def evaluate() -> float:
        """Mean NLL per response token on the held-out conversations (nats)."""
        model.eval()
        nll, count = 0.0, 0
        for i in range(0, len(eval_chats), micro_batch_size):
            batch = {k: v.to(device) for k, v in collate_chat(eval_chats[i:i + micro_batch_size], tokenizer,
                                                               max_length=context).items()}
            with autocast(device):
                log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"],
                                                   fused=cfg.fused_logprobs)["log_probs"]  # (B, T)
            nll -= float((log_probs.float() * batch["response_mask"]).sum())
            count += int(batch["response_mask"].sum())
        model.train()
        return nll / count

    eval_problems = tasks.generate_problems(cfg.n_eval_problems, "test", seed=cfg.seed + 1000)

    @torch.no_grad()
    def evaluate_accuracy() -> dict[str, float]:
        """Held-out gold accuracy: greedy, and of 2 temperature-1 samples per problem (the plateau curve)."""
        model.eval()
        with autocast(device):
            result = evaluate_policy(model, tokenizer, eval_problems, samples_per_prompt=2,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        model.train()
        return {"eval/accuracy/greedy": result["accuracy/greedy"], "eval/reward/gold_mean": result["reward/gold_mean"]}

    # ---------------------------------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------------------------------
    model.train()
    window_nll, window_count, window_norms, window_tokens, t0 = 0.0, 0, [], 0, time.perf_counter()
    last, done = {}, start_step
    bar = progress_bar(cfg.num_steps, start_step, "sft")
    for step in range(start_step, cfg.num_steps):
        cpu0 = time.process_time()
        # --- learning rate: linear warmup then cosine decay
        lr = cosine_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.num_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # --- forward / backward over micro-batches (gradient accumulation)
        step_nll, step_count = 0.0, 0
        for micro in range(cfg.grad_accum_steps):
            chats = [train_chats[i] for i in batch_indices(step, micro)]
            batch = {k: v.to(device) for k, v in collate_chat(chats, tokenizer, max_length=context).items()}
            with autocast(device):
                log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"],
                                                   fused=cfg.fused_logprobs)["log_probs"]  # (B, T) nats
            # Per conversation: -sum of response log-probs / normalize_constant; mean over the micro-batch;
            # / grad_accum_steps, so the accumulated gradient is the mean over the whole batch. Calls backward.
            loss, _ = sft_microbatch_train_step(log_probs, batch["response_mask"], cfg.grad_accum_steps,
                                                normalize_constant=normalize_constant)
            step_nll -= float((log_probs.detach().float() * batch["response_mask"]).sum())
            step_count += int(batch["response_mask"].sum())
            window_tokens += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
        step_nll, step_count = ddp.sum_across_ranks(step_nll, step_count)  # the whole batch's, on every rank
        finite_or_raise(step_nll, step + 1)

        # --- update
        ddp.all_reduce_gradients(model.parameters())  # mean over ranks (equal shards): the whole batch's gradient
        grad_norm = clip_gradients(trainable, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_nll, window_count = window_nll + step_nll, window_count + step_count
        window_norms.append(float(grad_norm))
        cpu_s += ddp.sum_across_ranks(time.process_time() - cpu0)[0]  # every rank's CPU (so all stop together)
        bar.update(1)

        # --- log / eval / checkpoint
        done = step + 1
        is_last = done == cfg.num_steps or 0 < cfg.max_cpu_s <= cpu_s
        is_eval = done % cfg.eval_every == 0 or is_last
        if done % cfg.log_every == 0 or is_eval:
            tokens_per_s = window_tokens / (time.perf_counter() - t0)  # training only, eval not counted
            metrics = {"loss/train": window_nll / window_count, "lr": lr, "grad_norm": float(np.mean(window_norms))}
            if is_eval and eval_chats:
                metrics["eval/loss"] = evaluate()
            if is_eval and eval_problems:
                metrics.update(evaluate_accuracy())
            metrics.update({"perf/tokens_per_s": tokens_per_s, "perf/cpu_s": cpu_s})
            metrics = ddp.reduce_metrics(metrics)  # tokens/s summed over ranks; the rest is equal on every rank
            logger.log(done, metrics)
            last.update(metrics)
            window_nll, window_count, window_norms, window_tokens, t0 = 0.0, 0, [], 0, time.perf_counter()
        if (done % cfg.checkpoint_every == 0 or is_last) and ddp.is_main():  # rank 0 alone writes
            save_checkpoint(model, optimizer, done, ckpt_path, config=dataclasses.asdict(cfg),
                            model_config=dataclasses.asdict(model_config), rng=rng_state(), cpu_s=cpu_s)
        if is_last:
            break
    bar.close()
    return {"checkpoint": str(ckpt_path), "steps": done, "cpu_s": cpu_s, "loss/train": last.get("loss/train"),
            "eval/loss": last.get("eval/loss")}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SFTConfig, argv, "python -m cs336_alignment sft", __doc__.split("\n\n")[0], "sft")
    return train(cfg)


if __name__ == "__main__":
    main()
