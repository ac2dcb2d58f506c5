"""`bench gpu`: the GPU checks, in one command, for the next machine with a CUDA GPU.

    python -m cs336_alignment bench gpu                           # one CUDA GPU: the table below; 2 GPUs: + NCCL
    python -m cs336_alignment bench gpu --device cpu --tiny --steps 1   # the same code on a tiny model (tests)

On a TransformerLM of Qwen2.5-0.5B's shapes (`bench lora`'s config: d_model 896, 24 layers, 14 heads / 2 kv heads,
d_ff 4864, vocab 151,936, tied embeddings, QKV bias, rope theta 1e6; random float32 weights), under bf16 autocast
(`runtime.autocast`), four training cases, each on a fresh model:
  * SFT: forward, `sft_loss` on the response half of B random sequences of T tokens, backward, AdamW step
    (`train.common.build_optimizer`'s AdamW, the loops' optimizer);
  * GRPO: the same sequences as sampled responses with per-sequence advantages and old log-probs (from the
    policy before the step, computed once, as the loops do once per rollout batch): per-token GRPO-clip loss
    (`grpo_loss.compute_policy_gradient_loss`, "grpo", cliprange 0.2), the per-sequence mean
    (`aggregate_loss_across_microbatch`), backward, AdamW step;
each with full fine-tuning and with LoRA (`lm.lora.setup`: rank 16 on q, k, v, o, w1, w2, w3, alpha 32). Reported:
tokens/s (B*T / the median of --steps timed steps after one warm-up step, `torch.cuda.synchronize()` around each)
and the peak memory of the case (`torch.cuda.max_memory_allocated()`, reset before the model is built: weights,
gradients, AdamW moments and activations). Then a sampling row: `generation.generate` of --new-tokens tokens
(temperature 1, no EOS) for B prompts of T/2 tokens. With 2 or more GPUs: `bench ddp`'s SFT run (the tiny model,
`--ddp-steps` steps) at 1 and 2 torchrun processes, NCCL, and their throughput ratio: it checks that the NCCL path
runs; at that model size the ratio measures the communication overhead more than the scaling.

Without a CUDA device (and without --device cpu) it prints one line and exits 0.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from cs336_alignment.bench import ddp as bench_ddp
from cs336_alignment.bench.lora import QWEN2_5_0_5B
from cs336_alignment.grpo_loss import aggregate_loss_across_microbatch, compute_policy_gradient_loss
from cs336_alignment.lm import lora
from cs336_alignment.lm.generation import generate
from cs336_alignment.lm.model import TransformerLM
from cs336_alignment.lm.pretrained import config_from_hf
from cs336_alignment.lm.runtime import autocast
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.sft_step import sft_loss
from cs336_alignment.train.common import build_optimizer

# --tiny: the same structure (GQA 4 / 2 heads, QKV bias, tied embeddings, SwiGLU), small enough for a CPU test
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 1024}
LORA_RANK = 16
LORA_TARGETS = "q,k,v,o,w1,w2,w3"
SKIP_LINE = "bench gpu: needs a CUDA device (none found); skipped (--device cpu runs it on the CPU)"


def build_model(tiny: bool, device: torch.device, lora_rank: int = 0) -> tuple[TransformerLM, list]:
    """A random TransformerLM of Qwen2.5-0.5B's shapes (or TINY's) on `device`, float32, with LoRA adapters when
    lora_rank > 0; (model, the parameters the optimizer gets)."""
    torch.manual_seed(0)
    config = config_from_hf({**QWEN2_5_0_5B, **(TINY if tiny else {})})
    model = TransformerLM(config, device=device).train()
    cfg = argparse.Namespace(lora_rank=lora_rank, lora_alpha=0.0, lora_dropout=0.0, lora_targets=LORA_TARGETS, seed=0)
    return model, lora.setup(model, cfg)


def _batch(vocab: int, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """B random sequences of T + 1 tokens: input_ids / labels (B, T), the response mask (second half of the labels)
    and per-sequence advantages (B, 1)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
    mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    mask[:, seq_len // 2:] = True
    advantages = torch.randn(batch_size, 1, generator=g)
    return {k: v.to(device) for k, v in {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "mask": mask,
                                         "advantages": advantages}.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, steps: int) -> float:
    """One warm-up call of step(), then `steps` timed calls: the median seconds."""
    step()
    seconds = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _fresh_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_case(loss: str, lora_rank: int, args: argparse.Namespace, device: torch.device) -> dict:
    """One row: a fresh model, `loss` ("sft" or "grpo") steps as the module docstring says; tokens/s and peak."""
    _fresh_peak(device)
    model, params = build_model(args.tiny, device, lora_rank)
    trainable, total = lora.count_parameters(model)
    optimizer = build_optimizer(params, argparse.Namespace(lr=1e-5, beta1=0.9, beta2=0.95, weight_decay=0.0))
    batch = _batch(model.config.vocab_size, args.batch_size, args.seq_len, device)
    if loss == "grpo":
        with torch.no_grad(), autocast(device):
            old_log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
    values = []

    def step() -> None:
        with autocast(device):
            log_probs = get_response_log_probs(model, batch["input_ids"], batch["labels"])["log_probs"]
            if loss == "sft":
                value = sft_loss(log_probs, batch["mask"], normalize_constant=args.seq_len)
            else:
                per_token, _ = compute_policy_gradient_loss(batch["advantages"], log_probs, "grpo", old_log_probs,
                                                            cliprange=0.2, response_mask=batch["mask"])
                value = aggregate_loss_across_microbatch(per_token, batch["mask"])
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values.append(value.detach())   # read after the timing (float() would synchronize)

    seconds = _timed(step, device, args.steps)
    row = {"case": f"{loss} {'LoRA r=' + str(lora_rank) if lora_rank else 'full'}", "loss": loss, "lora_rank": lora_rank,
           "trainable": trainable, "total": total, "tokens": args.batch_size * args.seq_len, "seconds": seconds,
           "tokens_per_s": args.batch_size * args.seq_len / seconds, "peak_mib": _peak_mib(device),
           "last_loss": float(values[-1])}
    return row


def sampling_case(args: argparse.Namespace, device: torch.device) -> dict:
    """`generate` of --new-tokens tokens (temperature 1, no EOS) for B prompts of T/2 random tokens."""
    _fresh_peak(device)
    model, _ = build_model(args.tiny, device)
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, model.config.vocab_size, (args.batch_size, max(1, args.seq_len // 2)), generator=g)
    new = []

    def step() -> None:
        with autocast(device):
            out = generate(model, prompts.tolist(), max_new_tokens=args.new_tokens, temperature=1.0)
        new.append(sum(len(t) for t in out.tokens))

    seconds = _timed(step, device, args.steps)
    _, total = lora.count_parameters(model)
    return {"case": "sampling", "loss": "", "lora_rank": 0, "trainable": 0, "total": total, "tokens": new[-1],
            "seconds": seconds, "tokens_per_s": new[-1] / seconds, "peak_mib": _peak_mib(device), "last_loss": None}


def nccl_check(args: argparse.Namespace) -> dict | None:
    """`bench ddp`'s SFT run at 1 and 2 torchrun processes (NCCL on CUDA); None (with a line) below 2 GPUs."""
    if torch.device(args.device).type != "cuda" or torch.cuda.device_count() < 2:
        print("NCCL data-parallel check: needs 2 CUDA GPUs; skipped")
        return None
    result = bench_ddp.run("sft", 2, rounds=args.ddp_rounds, steps=args.ddp_steps)
    print(f"NCCL data-parallel check (bench ddp, SFT): 2 vs 1 process: {result['ratio']:.2f}x (ideal 2x)")
    return result


def table(rows: list[dict], header: str) -> str:
    lines = [header, "| case | trainable params | tokens/step | s/step (median) | tokens/s | peak MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        trainable = "-" if r["case"] == "sampling" else f"{r['trainable']:,} of {r['total']:,}"
        lines.append(f"| {r['case']} | {trainable} | {r['tokens']:,} | {r['seconds']:.4f} | {r['tokens_per_s']:,.0f} "
                     f"| {peak} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # as lm/gpu.py's configure_model: the float32 matmuls
    rows = [train_case(loss, rank, args, device) for loss in ("sft", "grpo") for rank in (0, LORA_RANK)]
    if not args.no_sampling:
        rows.append(sampling_case(args, device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"bench gpu: {name}, torch {torch.__version__}, {'tiny model' if args.tiny else 'Qwen2.5-0.5B shapes'}, "
              f"bf16 autocast{'' if device.type == 'cuda' else ' (a no-op off CUDA: float32)'}, batch "
              f"{args.batch_size} x {args.seq_len} tokens, median of {args.steps} step(s) after 1 warm-up; "
              f"sampling: {args.new_tokens} new tokens per prompt")
    print(table(rows, header), flush=True)
    ddp = nccl_check(args)
    if args.out:
        report = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "batch_size": args.batch_size,
                  "seq_len": args.seq_len, "steps": args.steps, "new_tokens": args.new_tokens, "rows": rows,
                  "nccl": ddp and {"ratio": ddp["ratio"], "ratios": ddp["ratios"],
                                   "rates": {str(k): v for k, v in ddp["rates"].items()}}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


def add_parser(sub) -> None:
    """The `bench gpu` subcommand (bench/cli.py's table)."""
    p = sub.add_parser("gpu", help="bf16 SFT/GRPO steps, full vs LoRA, and sampling on a Qwen2.5-0.5B-shaped model; NCCL")
    p.add_argument("--device", default="cuda", help="cuda (default; without one: a skip line, exit 0) or cpu")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (and prompts for sampling)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (the second half is the response)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case, after one warm-up (median reported)")
    p.add_argument("--new-tokens", type=int, default=64, help="sampling: new tokens per prompt")
    p.add_argument("--no-sampling", action="store_true", help="leave out the sampling row")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same structure (d_model 64, 2 layers)")
    p.add_argument("--ddp-rounds", type=int, default=2, help="NCCL check: interleaved (1, 2)-process pairs")
    p.add_argument("--ddp-steps", type=int, default=20, help="NCCL check: SFT steps per run")
    p.add_argument("--out", default="", help="also write the table (and the NCCL ratio) to this JSON file")
    p.set_defaults(func=main)
