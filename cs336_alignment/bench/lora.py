"""`bench lora`: LoRA (Hu et al. 2021) against full fine-tuning, measured.

    python -m cs336_alignment bench lora --part world    # SFT (from tiny/base.pt) and GRPO (from tiny/sft.pt)
    python -m cs336_alignment bench lora --part memory   # one training step of a model of Qwen2.5-0.5B's shapes

`world`: for each stage, a full fine-tuning run and LoRA runs at each --ranks (all seven projections, alpha = 2r,
lr x --lora-lr-scale) for the same number of steps ("equal steps"), then LoRA again for the CPU seconds the full run
took ("equal CPU": steps = full CPU-s / LoRA CPU-s per step; skipped when that is within 5 % of equal steps, the
equal-steps run standing for it). Each run is its own python process (`--preset tiny` settings, one thread), so its
peak RSS (VmHWM, training only) is its own; then its merged checkpoint answers the same --n-eval held-out test
problems greedily: gold accuracy and its paired difference to the full run, ± SE (`metrics.paired_difference`).

`memory`: a TransformerLM built from Qwen2.5-0.5B's config.json fields (d_model 896, 24 layers, 14 heads / 2 kv
heads, d_ff 4864, vocab 151,936, tied embeddings, QKV bias; random float32 weights), one AdamW step of next-token
loss on batch 1 x --seq-len tokens: peak RSS during the step (VmHWM reset once the model is built), full vs LoRA,
each in a fresh process, one after the other (full fine-tuning needs ~8 GB: weights, gradients, two AdamW moments).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "checkpoints" / "tiny"
QWEN2_5_0_5B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
                "max_position_embeddings": 32768, "num_attention_heads": 14, "num_hidden_layers": 24,
                "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                "tie_word_embeddings": True, "vocab_size": 151936, "model_type": "qwen2"}


def _rss_mib(field: str = "VmHWM") -> float:
    """VmHWM (peak) or VmRSS of this process, MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); nothing elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _fresh(worker: str, spec: dict) -> dict:
    """`worker(spec)` of this module in a new python process; its JSON result."""
    code = (f"import json, sys; from cs336_alignment.bench.lora import {worker}; "
            f"print('RESULT', json.dumps({worker}(json.loads(sys.argv[1]))))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench lora worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------------------
# world: SFT and GRPO on the task world
# ---------------------------------------------------------------------------------------------------------

def _world_worker(spec: dict) -> dict:
    """Train one arm (spec: stage, rank, lr, steps, out, n_eval, smoke) and evaluate its merged checkpoint."""
    # Imported here, in the worker process only: the launcher imports neither torch nor the package, so each
    # run's peak RSS is its own (this module's docstring).
    import torch

    from cs336_alignment.lm import lora

    from cs336_alignment.world import tasks
    from cs336_alignment.lm.checkpoint import load_model
    from cs336_alignment.evaluation.evaluate import evaluate_model
    from cs336_alignment.lm.tokenizer import load_tokenizer
    from cs336_alignment.train import grpo, sft
    from cs336_alignment.train.common import parse_config

    torch.set_num_threads(1)
    module = sft if spec["stage"] == "sft" else grpo
    init = SHIPPED / ("base.pt" if spec["stage"] == "sft" else "sft.pt")
    argv = ["--preset", "tiny", "--init", str(init), "--out", spec["out"], "--overwrite", "--quiet", "--threads", "1",
            "--device", "cpu", "--num-steps", str(spec["steps"]), "--lr", str(spec["lr"]),
            "--min-lr", str(spec["lr"] / 10), "--lora-rank", str(spec["rank"]), "--n-eval-problems", "0",
            "--eval-every", "100000", "--checkpoint-every", "100000"]
    if spec["stage"] == "grpo":
        argv += ["--eval-samples", "1"]
        if spec.get("smoke"):
            argv += ["--prompts-per-step", "2", "--group-size", "2", "--micro-batch-size", "4"]
    elif spec.get("smoke"):
        argv += ["--n-examples", "32", "--batch-size", "4", "--n-eval-examples", "4"]
    cfg = parse_config(sft.SFTConfig if spec["stage"] == "sft" else grpo.GRPOConfig, argv, "bench", section=spec["stage"])
    if spec["stage"] == "sft":
        cfg.warmup_steps = min(cfg.warmup_steps, max(1, spec["steps"] // 10))
    wall = time.perf_counter()
    result = module.train(cfg)
    wall = time.perf_counter() - wall
    peak = _rss_mib()
    counted, _ = load_model(init)
    lora.setup(counted, cfg)                       # rank 0: nothing (every parameter trains)
    trainable, total = lora.count_parameters(counted)
    model, _ = load_model(result["checkpoint"])
    problems = tasks.generate_problems(spec["n_eval"], "test", seed=0)
    with torch.no_grad():
        _, samples = evaluate_model(model.eval(), load_tokenizer(), problems, fmt="chat", max_new_tokens=64)
    return {"steps": result["steps"], "cpu_s": result["cpu_s"], "wall_s": wall, "peak_rss_mib": peak,
            "trainable": trainable, "total": total, "greedy": [s["reward"] for s in samples]}


def bench_world(args: argparse.Namespace) -> dict:
    from cs336_alignment.evaluation.metrics import paired_difference

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_lora_"))
    ranks = [int(r) for r in args.ranks.split(",")]
    report = {}
    for stage in args.stages.split(","):
        steps, lr = (args.sft_steps, args.sft_lr) if stage == "sft" else (args.grpo_steps, args.grpo_lr)
        arms = {}

        def arm(item: tuple[str, int, int, float]) -> None:
            """One run (name, rank, steps, lr) in its own process; its result kept in <out>/<stage>_<name>.json."""
            name, rank, n_steps, arm_lr = item
            spec = {"stage": stage, "rank": rank, "lr": arm_lr, "steps": n_steps, "out": str(out / f"{stage}_{name}"),
                    "n_eval": args.n_eval, "smoke": args.smoke}
            saved = out / f"{stage}_{name}.json"
            if saved.exists() and json.loads(saved.read_text())["spec"] == spec:    # a finished run is not redone
                arms[name] = json.loads(saved.read_text())["result"]
            else:
                arms[name] = {"rank": rank, "lr": arm_lr, **_fresh("_world_worker", spec)}
                saved.write_text(json.dumps({"spec": spec, "result": arms[name]}))
            print(f"{stage} {name}: {n_steps} steps, {arms[name]['cpu_s']:.0f} CPU-s", flush=True)

        def run_all(items: list) -> None:   # --jobs processes at a time (each is timed by its own CPU clock)
            out.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(arm, items))

        run_all([("full", 0, steps, lr)] + [(f"r{r}", r, steps, lr * args.lora_lr_scale) for r in ranks])
        more = []
        for rank in ranks:    # equal CPU: LoRA for the full run's CPU seconds, at its own CPU-s per step
            per_step = arms[f"r{rank}"]["cpu_s"] / max(1, arms[f"r{rank}"]["steps"])
            cpu_steps = max(1, round(arms["full"]["cpu_s"] / per_step))
            if abs(cpu_steps - steps) > 0.05 * steps:
                more.append((f"r{rank}_cpu", rank, cpu_steps, lr * args.lora_lr_scale))
        run_all(more)
        full = arms["full"]
        for name, a in arms.items():
            a["accuracy"] = sum(a["greedy"]) / len(a["greedy"])
            a["se"] = (a["accuracy"] * (1 - a["accuracy"]) / max(1, len(a["greedy"]) - 1)) ** 0.5
            a["vs_full"] = paired_difference(a["greedy"], full["greedy"]) if name != "full" else (0.0, 0.0)
        report[stage] = arms
        print(world_table(stage, arms), flush=True)
    (out / "bench_lora_world.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_lora_world.json'}")
    return report


def world_table(stage: str, arms: dict) -> str:
    lines = [f"\n{stage}: gold accuracy (greedy) on the same held-out problems; difference to full fine-tuning ± paired SE",
             "| run | rank | lr | steps | trainable params | CPU s/step | peak RSS MiB | accuracy ± SE | vs full ± SE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in sorted(arms.items(), key=lambda kv: (kv[1]["rank"], kv[0])):
        lines.append(f"| {name} | {a['rank'] or '-'} | {a['lr']:g} | {a['steps']} | {a['trainable']:,} of "
                     f"{a['total']:,} | {a['cpu_s'] / max(1, a['steps']):.2f} | {a['peak_rss_mib']:.0f} | "
                     f"{a['accuracy']:.3f} ± {a['se']:.3f} | {a['vs_full'][0]:+.3f} ± {a['vs_full'][1]:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# memory: one training step of a model of Qwen2.5-0.5B's shapes
# ---------------------------------------------------------------------------------------------------------

def _memory_worker(spec: dict) -> dict:
    """Build the model (random float32), one AdamW step (full or LoRA) on batch 1 x seq_len; peak RSS."""
    # Imported here, in the worker process only: the launcher imports neither torch nor the package, so each
    # run's peak RSS is its own (this module's docstring).
    import torch

    from cs336_alignment.lm import lora
    from cs336_alignment.lm.model import TransformerLM
    from cs336_alignment.lm.nn_utils import AdamW
    from cs336_alignment.lm.pretrained import config_from_hf

    torch.set_num_threads(1)
    torch.manual_seed(0)
    smoke = {"num_hidden_layers": 1, "vocab_size": 1024} if spec.get("smoke") else {}
    config = config_from_hf({**QWEN2_5_0_5B, **smoke})
    model = TransformerLM(config)
    built = _rss_mib("VmRSS")
    _reset_peak_rss()   # the step's peak, not the random initialisation's temporaries
    cfg = argparse.Namespace(lora_rank=spec["rank"], lora_alpha=0.0, lora_dropout=0.0, lora_targets="q,k,v,o,w1,w2,w3",
                             seed=0)
    params = lora.setup(model, cfg)
    trainable, total = lora.count_parameters(model)
    optimizer = AdamW(params, lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (1, spec["seq_len"] + 1), generator=torch.Generator().manual_seed(0))
    t0 = time.process_time()
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"rank": spec["rank"], "trainable": trainable, "total": total, "rss_after_build_mib": built,
            "peak_rss_mib": _rss_mib(), "step_cpu_s": time.process_time() - t0, "loss": float(loss)}


def bench_memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    for rank in [0] + [int(r) for r in args.ranks.split(",")]:   # one process at a time: full needs ~8 GB
        rows.append(_fresh("_memory_worker", {"rank": rank, "seq_len": args.seq_len, "smoke": args.smoke}))
        print(f"rank {rank or 'full'}: peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    lines = [f"\nOne AdamW step, batch 1 x {args.seq_len} tokens, float32, CPU, model of Qwen2.5-0.5B's shapes"
             f"{' (smoke: 1 layer, vocab 1024)' if args.smoke else ''}",
             "| run | trainable params | RSS after building the model MiB | peak RSS during the step MiB | step CPU-s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'LoRA r=' + str(r['rank']) if r['rank'] else 'full'} | {r['trainable']:,} of {r['total']:,} | "
                     f"{r['rss_after_build_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['step_cpu_s']:.1f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_lora_memory.json").write_text(json.dumps(rows, indent=1))
    return rows


def bench_lora(args: argparse.Namespace) -> None:
    if args.part in ("memory", "all"):
        bench_memory(args)
    if args.part in ("world", "all"):
        bench_world(args)


def add_subcommand(sub) -> None:
    """`bench lora` on bench.py's subparsers."""
    p = sub.add_parser("lora", help="LoRA vs full fine-tuning: SFT/GRPO accuracy, CPU, memory; a 0.5B step's memory")
    p.add_argument("--part", choices=["world", "memory", "all"], default="all")
    p.add_argument("--stages", default="sft,grpo", help="world: comma-separated stages (sft, grpo)")
    p.add_argument("--ranks", default="4,16", help="comma-separated LoRA ranks")
    p.add_argument("--sft-steps", type=int, default=200, help="the writeup's lora problem: 200")
    p.add_argument("--sft-lr", type=float, default=1e-3, help="full fine-tuning's lr (the tiny preset's)")
    p.add_argument("--grpo-steps", type=int, default=6)
    p.add_argument("--grpo-lr", type=float, default=1e-4, help="full fine-tuning's lr (GRPO's default)")
    p.add_argument("--lora-lr-scale", type=float, default=10.0,
                   help="LoRA's lr = this x full fine-tuning's (LoRA's best lr is ~10x higher)")
    p.add_argument("--n-eval", type=int, default=200, help="held-out test problems answered greedily by every run")
    p.add_argument("--jobs", type=int, default=1, help="world: runs at once (each its own process and CPU clock)")
    p.add_argument("--seq-len", type=int, default=64, help="memory: tokens of the one training sequence")
    p.add_argument("--smoke", action="store_true", help="tiny settings: a 1-layer memory model with vocab 1024, small batches")
    p.add_argument("--out", default="", help="directory for the runs and bench_lora_*.json (default: a temp dir)")
    p.set_defaults(func=bench_lora)
