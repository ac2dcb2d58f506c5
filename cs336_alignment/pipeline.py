"""The main job: the InstructGPT pipeline on the task world, measured against its exact gold reward.

    python -m cs336_alignment pipeline                      # preset tiny (default), on 1 CPU thread
    python -m cs336_alignment pipeline --length-bias 0.05   # an annotator that likes length: reward hacking
    python -m cs336_alignment pipeline --preset smoke       # seconds; the end-to-end test runs this
    python -m cs336_alignment pipeline --preset small       # one GPU: a larger model, longer training
    python -m cs336_alignment pipeline --from-scratch       # also retrain the base and SFT models

Stages (each also runs alone: `python -m cs336_alignment <stage> --help`), writing runs/<name>/<stage>/:
    pretrain    the base model on raw text                       (both shipped for the tiny preset under
    sft         supervised fine-tuning on chat demonstrations     data/checkpoints/; see --from-scratch)
    rm          sample K responses per prompt from SFT, label pairs with the synthetic annotator (Bradley-Terry
                noise around the gold utility, optional length bias), train the reward model
    dpo         DPO on the same pairs
    grpo_gold   GRPO against the verifiable gold reward
    grpo_rm     GRPO against the reward model
    ppo         PPO against the reward model (value head, KL penalty to SFT)
    bon         best-of-N with the reward model, N = 1, 2, 4, ..., 64
Then every policy is measured the same way on held-out test problems (metrics.evaluate_policy): greedy gold
accuracy, and on temperature-1 samples mean gold reward, proxy (reward-model) reward, KL to SFT, length and
distinct-2. report.md / report.json hold the numbers; training_curves.png and overoptimization.png the plots.

The base model is evaluated in the raw "Question: ... Answer:" format it was pretrained on, every other
policy in the chat template.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cs336_alignment.train.common import run_dir

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "checkpoints"  # base/SFT checkpoints per preset
POST_STAGES = ("rm", "dpo", "grpo_gold", "grpo_rm", "ppo", "bon")  # in the order they run
MODULES = {"rm": "reward_model", "dpo": "dpo", "grpo_gold": "grpo", "grpo_rm": "grpo", "ppo": "ppo", "bon": "bon"}

# ---------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    # --- model (DESIGN §7: d=128, 4 layers, 4 heads was the best size at CPU-minute budgets)
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    # --- pretrain
    pretrain_problems: int
    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_lr: float
    # --- sft, in one or two phases (the second continues the first on more demonstrations, at a lower lr)
    sft_examples: int
    sft_steps: int
    sft_batch_size: int
    sft_lr: float
    sft_warmup: int
    sft2_examples: int
    sft2_steps: int  # 0 = no second phase
    sft2_lr: float
    # --- preferences (K samples per prompt from SFT, labelled by the annotator) and the reward model
    pref_prompts: int
    pref_k: int
    rm_steps: int
    rm_lr: float
    # --- DPO on the same pairs
    dpo_steps: int
    dpo_lr: float
    dpo_beta: float
    # --- RL from SFT (GRPO against the gold reward and the RM; PPO against the RM)
    grpo_steps: int  # learning rates and the rest: the loops' own defaults
    grpo_prompts_per_step: int
    ppo_steps: int
    ppo_prompts_per_step: int
    rl_eval_problems: int  # test problems of the RL loops' periodic evaluation (training curves)
    # --- best-of-N: test prompts, samples per prompt
    bon_prompts: int
    bon_pool: int
    # --- evaluation on the held-out test split
    eval_problems: int
    eval_batch_size: int
    max_new_tokens: int
    # --- logging
    log_every: int
    eval_every: int


PRESETS: dict[str, Preset] = {
    # A few steps of everything, to prove the plumbing: the numbers mean nothing.
    "smoke": Preset(context_length=128, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                    pretrain_problems=300, pretrain_steps=12, pretrain_batch_size=8, pretrain_lr=3e-3,
                    sft_examples=64, sft_steps=8, sft_batch_size=8, sft_lr=1e-3, sft_warmup=1,
                    sft2_examples=0, sft2_steps=0, sft2_lr=0.0,
                    pref_prompts=8, pref_k=3, rm_steps=4, rm_lr=1e-3, dpo_steps=4, dpo_lr=1e-3, dpo_beta=0.1,
                    grpo_steps=2, grpo_prompts_per_step=2, ppo_steps=2, ppo_prompts_per_step=2,
                    rl_eval_problems=4, bon_prompts=2, bon_pool=4,
                    eval_problems=8, eval_batch_size=16, max_new_tokens=12, log_every=2, eval_every=4),
    # The laptop run. Base and SFT are shipped under data/checkpoints/tiny (rebuilt by --from-scratch):
    # SFT in two phases reaches its held-out accuracy plateau (data/checkpoints/README.md has the curve).
    "tiny": Preset(context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384,
                   pretrain_problems=20000, pretrain_steps=500, pretrain_batch_size=16, pretrain_lr=3e-3,
                   sft_examples=4000, sft_steps=600, sft_batch_size=32, sft_lr=1e-3, sft_warmup=20,
                   sft2_examples=20000, sft2_steps=600, sft2_lr=3e-4,
                   pref_prompts=1536, pref_k=4, rm_steps=60, rm_lr=2e-4, dpo_steps=60, dpo_lr=1e-5, dpo_beta=0.1,
                   grpo_steps=24, grpo_prompts_per_step=16, ppo_steps=24, ppo_prompts_per_step=32,
                   rl_eval_problems=100, bon_prompts=64, bon_pool=64,
                   eval_problems=400, eval_batch_size=100, max_new_tokens=48, log_every=25, eval_every=100),
    # One GPU: 4x wider, 2x deeper, many more steps.
    "small": Preset(context_length=256, d_model=384, num_layers=8, num_heads=6, d_ff=1024,
                    pretrain_problems=200000, pretrain_steps=4000, pretrain_batch_size=64, pretrain_lr=1e-3,
                    sft_examples=50000, sft_steps=2000, sft_batch_size=64, sft_lr=3e-4, sft_warmup=100,
                    sft2_examples=0, sft2_steps=0, sft2_lr=0.0,
                    pref_prompts=8192, pref_k=4, rm_steps=2000, rm_lr=5e-5, dpo_steps=1000, dpo_lr=5e-6,
                    dpo_beta=0.1, grpo_steps=200, grpo_prompts_per_step=64, ppo_steps=200,
                    ppo_prompts_per_step=128, rl_eval_problems=500, bon_prompts=500, bon_pool=64,
                    eval_problems=2000, eval_batch_size=250, max_new_tokens=64, log_every=50, eval_every=500),
}


def stage_configs(preset: Preset, out: Path, seed: int, device: str, threads: int):
    """[(stage, PretrainConfig | SFTConfig)] that make the base and SFT models (the stages' own defaults elsewhere)."""
    from cs336_alignment.train.pretrain import PretrainConfig
    from cs336_alignment.train.sft import SFTConfig

    p = preset
    common = dict(seed=seed, device=device, threads=threads, log_every=p.log_every, eval_every=p.eval_every,
                  context_length=p.context_length, d_model=p.d_model, num_layers=p.num_layers,
                  num_heads=p.num_heads, d_ff=p.d_ff)  # SFT reads the model shape from its init checkpoint
    # min_lr = lr / 10 rounded, so that 3e-3 / 10 is the decimal 3e-4 (not 0.00030000000000000003) that the
    # single-stage commands in data/checkpoints/README.md pass: their runs and this one match bit for bit.
    pretrain = PretrainConfig(out=str(out / "pretrain"), n_problems=p.pretrain_problems, num_steps=p.pretrain_steps,
                              batch_size=p.pretrain_batch_size, lr=p.pretrain_lr,
                              min_lr=round(p.pretrain_lr / 10, 12),
                              warmup_steps=max(1, p.pretrain_steps // 10), checkpoint_every=p.pretrain_steps,
                              **common)
    # SFT draws its demonstrations with another seed than pretraining: mostly new questions.
    sft = SFTConfig(out=str(out / "sft"), init=str(out / "pretrain" / "ckpt.pt"), n_examples=p.sft_examples,
                    num_steps=p.sft_steps, batch_size=p.sft_batch_size, lr=p.sft_lr,
                    min_lr=round(p.sft_lr / 10, 12),
                    warmup_steps=p.sft_warmup, checkpoint_every=p.sft_steps, **{**common, "seed": seed + 1})
    configs = [("pretrain", pretrain), ("sft", sft)]
    if p.sft2_steps:
        configs.append(("sft_more", dataclasses.replace(
            sft, out=str(out / "sft_more"), init=str(out / "sft" / "ckpt.pt"), n_examples=p.sft2_examples,
            num_steps=p.sft2_steps, lr=p.sft2_lr, min_lr=round(p.sft2_lr / 10, 12),
            warmup_steps=max(1, p.sft_warmup // 2),
            checkpoint_every=p.sft2_steps)))
    return configs


def post_configs(p: Preset, out: Path, sft_ckpt: str, seed: int, device: str, threads: int, length_bias: float):
    """{stage: config} of the post-training stages; all start from `sft_ckpt` and share the reward model."""
    from cs336_alignment.train.bon import BoNConfig
    from cs336_alignment.train.dpo import DPOConfig
    from cs336_alignment.train.grpo import GRPOConfig
    from cs336_alignment.train.ppo import PPOConfig
    from cs336_alignment.train.reward_model import RMConfig

    common = dict(seed=seed, device=device, threads=threads, init=sft_ckpt, max_new_tokens=p.max_new_tokens)
    rm_ckpt = str(out / "rm" / "ckpt.pt")
    pairs = dict(data=str(out / "rm" / "preferences_train.jsonl"), eval_data=str(out / "rm" / "preferences_eval.jsonl"))
    rl = dict(eval_every=max(1, p.grpo_steps // 2), n_eval_problems=p.rl_eval_problems, **common)
    return {
        "rm": RMConfig(out=str(out / "rm"), n_prompts=p.pref_prompts, n_eval_prompts=max(4, p.pref_prompts // 6),
                       k_samples=p.pref_k, length_bias=length_bias, num_steps=p.rm_steps, lr=p.rm_lr,
                       min_lr=p.rm_lr / 10, warmup_steps=max(1, p.rm_steps // 10), log_every=max(1, p.rm_steps // 12),
                       eval_every=max(1, p.rm_steps // 3), **common),
        "dpo": DPOConfig(out=str(out / "dpo"), beta=p.dpo_beta, num_steps=p.dpo_steps, lr=p.dpo_lr,
                         min_lr=p.dpo_lr / 10,
                         warmup_steps=max(1, p.dpo_steps // 10), log_every=max(1, p.dpo_steps // 12),
                         eval_every=max(1, p.dpo_steps // 3), n_gold_problems=p.rl_eval_problems,
                         **pairs, **common),
        "grpo_gold": GRPOConfig(out=str(out / "grpo_gold"), reward="gold", num_steps=p.grpo_steps,
                                prompts_per_step=p.grpo_prompts_per_step, checkpoint_every=p.grpo_steps, **rl),
        "grpo_rm": GRPOConfig(out=str(out / "grpo_rm"), reward="rm", reward_model=rm_ckpt, num_steps=p.grpo_steps,
                              prompts_per_step=p.grpo_prompts_per_step, checkpoint_every=p.grpo_steps, **rl),
        "ppo": PPOConfig(out=str(out / "ppo"), reward="rm", reward_model=rm_ckpt, num_steps=p.ppo_steps,
                         prompts_per_step=p.ppo_prompts_per_step, checkpoint_every=p.ppo_steps,
                         **{**rl, "eval_every": max(1, p.ppo_steps // 2)}),
        "bon": BoNConfig(out=str(out / "bon"), rm=rm_ckpt, n_prompts=p.bon_prompts, pool_size=p.bon_pool,
                         batch_size=max(p.eval_batch_size, 64), **common),
    }


# ---------------------------------------------------------------------------------------------------------
# Shipped base / SFT checkpoints
# ---------------------------------------------------------------------------------------------------------


def shipped(preset_name: str) -> tuple[Path, Path] | None:
    """(base, sft) checkpoints shipped for a preset under data/checkpoints/<preset>/, or None."""
    base, sft = SHIPPED / preset_name / "base.pt", SHIPPED / preset_name / "sft.pt"
    return (base, sft) if base.is_file() and sft.is_file() else None


def ship(out_dir: Path, preset_name: str, base_stage: str, sft_stage: str) -> Path:
    """Copy the weights (no optimizer state) of a from-scratch run's base and SFT models, and their metrics,
    to data/checkpoints/<preset>/. The same command on the same machine type rewrites the same bytes."""
    import shutil

    from cs336_alignment.checkpoint import load_checkpoint, load_checkpoint_extra, save_checkpoint
    from cs336_alignment.model import TransformerConfig, TransformerLM

    dest = SHIPPED / preset_name
    dest.mkdir(parents=True, exist_ok=True)
    for label, stage in (("base", base_stage), ("sft", sft_stage)):
        src = out_dir / stage / "ckpt.pt"
        extra = load_checkpoint_extra(src)
        model = TransformerLM(TransformerConfig(**extra["model_config"]))
        step = load_checkpoint(src, model)
        recipe = {k: v for k, v in extra["config"].items() if k not in ("out", "init", "name")}  # no paths
        save_checkpoint(model, None, step, dest / f"{label}.pt", model_config=extra["model_config"], config=recipe)
    for stage in ("pretrain", "sft", "sft_more"):
        if (out_dir / stage / "metrics.jsonl").is_file():
            shutil.copy(out_dir / stage / "metrics.jsonl", dest / f"{stage}.metrics.jsonl")
    return dest


# ---------------------------------------------------------------------------------------------------------
# Evaluation: every policy measured the same way
# ---------------------------------------------------------------------------------------------------------


def evaluate_policies(policies: dict[str, str], base_ckpt: str, sft_ckpt: str, rm_ckpt: str | None, preset: Preset,
                      seed: int, device) -> dict[str, dict]:
    """{label: metrics} for the base model (greedy, raw format) and each chat policy (metrics.evaluate_policy)."""
    from cs336_alignment.evaluate import evaluate_model
    from cs336_alignment.metrics import evaluate_policy
    from cs336_alignment.tasks import generate_problems
    from cs336_alignment.tokenizer import load_tokenizer
    from cs336_alignment.train.common import load_model
    from cs336_alignment.train.reward_model import load_reward_model

    tokenizer = load_tokenizer()
    problems = generate_problems(preset.eval_problems, "test", seed)
    base, _ = load_model(base_ckpt, device)
    base_metrics, _ = evaluate_model(base, tokenizer, problems, fmt="raw", max_new_tokens=preset.max_new_tokens,
                                     batch_size=preset.eval_batch_size)
    models = {"base": {"format": "raw", "accuracy/greedy": base_metrics["reward/gold_mean"],
                       "response/length_mean": base_metrics["response/length_mean"]}}
    reference, _ = load_model(sft_ckpt, device)
    reward_model = load_reward_model(rm_ckpt, device)[0] if rm_ckpt else None
    for label, ckpt in policies.items():
        policy = load_model(ckpt, device)[0]
        models[label] = {"format": "chat", **evaluate_policy(
            policy, tokenizer, problems, reference=reference, reward_model=reward_model,
            max_new_tokens=preset.max_new_tokens, seed=seed + 1, batch_size=preset.eval_batch_size,
            distinct_over=preset.bon_prompts)}  # the best-of-N rows' prompts (the first test problems)
        print(f"eval {label}: " + " | ".join(f"{k} {v:.4g}" for k, v in models[label].items() if k != "format"))
    return models


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------


def _timed(stages: dict, name: str, fn, *args) -> dict:
    """fn(*args), recording its scalar results and its wall and CPU seconds in stages[name]."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    stages[name] = {**{k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "checkpoint"},
                    "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    return result


def run(preset_name: str = "tiny", out: str = "", name: str = "", threads: int = 1, device: str = "auto",
        seed: int = 0, length_bias: float = 0.0, from_scratch: bool = False, skip: tuple[str, ...] = (),
        ship_checkpoints: bool = False) -> dict:
    """Every stage, then the evaluation and the report; returns the report dict (also written to report.json)."""
    import importlib
    import shutil

    from cs336_alignment.report import plot_overoptimization, plot_training_curves, write_report
    from cs336_alignment.train.common import get_device, read_metrics, set_threads

    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    unknown = set(skip) - set(POST_STAGES)
    if unknown:
        raise ValueError(f"--skip {sorted(unknown)}: not a post-training stage ({', '.join(POST_STAGES)})")
    preset, name = PRESETS[preset_name], name or preset_name
    out_dir = run_dir(name, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    torch_device = get_device(device)
    stages: dict[str, dict] = {}
    t_start, c_start = time.perf_counter(), time.process_time()

    # --- 1. base and SFT models: shipped (tiny), or trained here
    base_sft = stage_configs(preset, out_dir, seed, device, threads)
    ready = None if (from_scratch or ship_checkpoints) else shipped(preset_name)
    if ready:
        base_ckpt, sft_ckpt = str(ready[0]), str(ready[1])
        for stage, _ in base_sft:  # their training curves, for the report
            (out_dir / stage).mkdir(exist_ok=True)
            shutil.copy(SHIPPED / preset_name / f"{stage}.metrics.jsonl", out_dir / stage / "metrics.jsonl")
        print(f"base and SFT models: shipped {base_ckpt}, {sft_ckpt} (--from-scratch retrains them)")
    else:
        for stage, cfg in base_sft:
            module = importlib.import_module(f"cs336_alignment.train.{'pretrain' if stage == 'pretrain' else 'sft'}")
            _timed(stages, stage, module.train, cfg)
        base_ckpt, sft_ckpt = str(out_dir / "pretrain" / "ckpt.pt"), str(out_dir / base_sft[-1][0] / "ckpt.pt")
        if ship_checkpoints:
            print(f"shipped to {ship(out_dir, preset_name, 'pretrain', base_sft[-1][0])}")
            return {"stages": stages}

    # --- 2. post-training from SFT: the reward model first (the others use its pairs or its scores)
    configs = post_configs(preset, out_dir, sft_ckpt, seed, device, threads, length_bias)
    needs_rm = {"dpo", "grpo_rm", "ppo", "bon"}
    run_stages = [s for s in POST_STAGES if s not in skip and not ("rm" in skip and s in needs_rm)]
    results = {}
    for stage in run_stages:
        module = importlib.import_module(f"cs336_alignment.train.{MODULES[stage]}")
        results[stage] = _timed(stages, stage, module.train, configs[stage])

    # --- 3. every policy on the same held-out problems, with the same metrics
    t0, c0 = time.perf_counter(), time.process_time()
    labels = {"SFT": sft_ckpt, "GRPO (gold)": "grpo_gold", "GRPO (RM)": "grpo_rm", "PPO": "ppo", "DPO": "dpo"}
    policies = {label: (s if label == "SFT" else results[s]["checkpoint"]) for label, s in labels.items()
                if label == "SFT" or s in results}
    models = evaluate_policies(policies, base_ckpt, sft_ckpt, results.get("rm", {}).get("checkpoint"), preset,
                               seed, torch_device)
    for row in results.get("bon", {}).get("rows", []):
        models[f"BoN-{row['n']}"] = {"format": "chat", "accuracy/greedy": None, **{k: v for k, v in row.items()
                                                                                  if k != "n"}}
    if "bon" in results:
        last = results["bon"]["rows"][-1]
        models[f"BoN-{last['n']} (gold oracle = pass@{last['n']})"] = {
            "format": "chat", "accuracy/greedy": None, "reward/gold_mean": last["reward/oracle_mean"],
            "kl/sft": last["kl/sft"]}
    stages["eval"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    # --- 4. report
    report = {"name": name, "preset": preset_name, "seed": seed, "threads": threads, "device": str(torch_device),
              "n_test_problems": preset.eval_problems, "n_sampled": preset.eval_problems,
              "annotator": {"tau": configs["rm"].tau, "length_bias": length_bias},
              "base_sft": "shipped" if ready else "trained", "models": models, "stages": stages,
              "preset_config": dataclasses.asdict(preset)}
    if "rm" in results:
        report["rm"] = stages["rm"]
    if "bon" in results:
        report["bon"] = {k: results["bon"][k] for k in ("rows", "n_prompts", "pool_size")}
    report["wall_s_total"] = time.perf_counter() - t_start
    report["cpu_s_total"] = time.process_time() - c_start
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_training_curves(out_dir, [s for s, _ in base_sft] + run_stages)
    rl_runs = {title: read_metrics(out_dir / stage / "metrics.jsonl") for stage, title in
               (("ppo", "PPO against the reward model"), ("grpo_rm", "GRPO against the reward model"))
               if stage in results}
    plot_overoptimization(out_dir, report.get("bon", {}).get("rows", []), rl_runs,
                          f"reward-model over-optimisation (annotator length bias {length_bias} per token)")
    path = write_report(out_dir, report)
    print(f"wrote {path}, report.json, training_curves.png and overoptimization.png in {out_dir} "
          f"({report['wall_s_total']:.0f} s wall, {report['cpu_s_total']:.0f} s CPU)")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="smoke (seconds), tiny (the CPU run), small (one GPU)")
    parser.add_argument("--name", default="", help="run name: outputs go to runs/<name>/; empty = the preset's name")
    parser.add_argument("--out", default="", help="output directory; empty = runs/<name>")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling")
    parser.add_argument("--length-bias", type=float, default=0.0,
                        help="annotator utility per response token (> 0: longer looks better; reward hacking)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the base and SFT models even when the preset ships them")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated post-training stages to skip: {','.join(POST_STAGES)}")
    parser.add_argument("--ship", action="store_true",
                        help="(maintainers) train base + SFT from scratch and write them to data/checkpoints/<preset>")
    args = parser.parse_args(argv)
    return run(args.preset, args.out, args.name, args.threads, args.device, args.seed, args.length_bias,
               args.from_scratch, tuple(s for s in args.skip.split(",") if s), args.ship)


if __name__ == "__main__":
    main()
