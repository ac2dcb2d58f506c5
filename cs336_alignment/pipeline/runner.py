"""The main job: the InstructGPT pipeline on the task world, measured against its exact gold reward.

    python -m cs336_alignment pipeline                      # preset tiny (default): 2 stages at once, 1 thread each
    python -m cs336_alignment pipeline --jobs 1             # one stage at a time, in this process: same numbers
    python -m cs336_alignment pipeline --length-bias 0.05   # an annotator that likes length: reward hacking
    python -m cs336_alignment pipeline --length-bias 0.05 --skip dpo,sft_baseline,ei,ppo   # the same, faster
    python -m cs336_alignment pipeline --preset smoke       # seconds; the end-to-end test runs this
    python -m cs336_alignment pipeline --preset tiny_rl10 --skip rm,sft_baseline,ei   # 10x GRPO (~30 CPU-min)
    python -m cs336_alignment pipeline --preset small       # one GPU: a larger model, longer training
    python -m cs336_alignment pipeline --from-scratch       # also retrain the base and SFT models

Stages (each also runs alone: `python -m cs336_alignment <stage> --help`), writing runs/<name>/<stage>/:
    pretrain    the base model on raw text                       (both shipped for the tiny preset under
    sft         supervised fine-tuning on chat demonstrations     data/checkpoints/; see --from-scratch)
    rm          sample K responses per prompt from SFT, label pairs with the synthetic annotator (Bradley-Terry
                noise around the gold utility, optional length bias), train the reward model
    dpo         DPO on the same pairs                                               (needs rm)
    grpo_gold   GRPO against the verifiable gold reward
    sft_baseline  the matched-compute baseline (`sft --max-cpu-s`): SFT trained further on the demonstrations it
                was trained on, for the CPU seconds grpo_gold's training took      (needs grpo_gold)
    grpo_rm     GRPO against the reward model                                       (needs rm)
    ppo         PPO against the reward model (value head, KL penalty to SFT)        (needs rm)
    bon         best-of-N with the reward model, N = 1, 2, 4, ..., 64               (needs rm)
    rm_small, grpo_rm_small, bon_small   with --small-rm (on by default with --length-bias): a smaller reward
                model (the preset's rm_small section; tiny: the rm loop's defaults, a quarter of the prompts, the head
                alone) from the same annotator, and GRPO and best-of-N against it: over-optimisation comes sooner
                and harder against a worse reward model (Gao et al. 2023)
    ei          expert iteration against the gold reward (sample, keep what the verifier accepts, SFT on it),
                with as many samples as grpo_gold (the preset's ei section)
The post-training stages run in up to --jobs worker processes at once (--jobs 1: one after the other, in this
process), each as soon as the stage it needs is done: rm and grpo_gold start together. Every stage seeds itself
from its config, so the numbers do not depend on --jobs, except sft_baseline's: its length is measured CPU time.
--skip of a stage also skips the stages that need it.

Every policy is measured the same way on held-out test problems (evaluate.evaluate_policy), one policy per worker,
as soon as it (and the reward model, the proxy) is trained and a worker has no stage to start: greedy gold
accuracy, and on temperature-1 samples mean gold reward, proxy (reward-model) reward, KL to SFT, length, prose
lines, distinct-2 and the share of worked responses (tasks.is_worked). report.md / report.json hold the numbers
and each stage's wall and CPU seconds (eval: the sum over its evaluations); training_curves.png,
overoptimization.png and gold_vs_kl.png (each method's sampled accuracy against its KL to SFT) the plots.

The base model is evaluated in the raw "Question: ... Answer:" format it was pretrained on, every other
policy in the chat template.

Files: presets.py (each preset's per-stage overrides), stages.py (each stage's config, the shipped checkpoints,
scheduling the stages over processes), this file (the run, the evaluation of every policy, the report).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Callable

from cs336_alignment.pipeline import hallucination
from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.evaluation.evaluate import evaluate_model, evaluate_policy
from cs336_alignment.pipeline.lessons import run_lesson
from cs336_alignment.evaluation.metrics import paired_difference
from cs336_alignment.train.presets import PIPELINE_PRESETS, PRESETS, EvalConfig
from cs336_alignment.pipeline.report import (plot_gold_vs_kl, plot_overoptimization, plot_training_curves, sft_progress,
                                    write_report)
from cs336_alignment.reward_model import load_reward_model
from cs336_alignment.pipeline.safety_lesson import LESSON as SAFETY_LESSON
from cs336_alignment.lm.runtime import get_device, set_threads
from cs336_alignment.pipeline.stages import (LABELS, NEEDS, POST_STAGES, SMALL_RM_STAGES, STAGES, base_sft_configs, cpu_seconds,
                                    make_pool, post_configs, record, run_post_training, run_stage, ship, shipped,
                                    shipped_metrics, stage_config)
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.lm.rundir import RunDirError, holds_run
from cs336_alignment.train.common import hold_run_dir, read_metrics, releases_run_dir, run_dir

# ---------------------------------------------------------------------------------------------------------
# Evaluation: every policy measured the same way
# ---------------------------------------------------------------------------------------------------------


def evaluate_checkpoint(ckpt: str, fmt: str, sft_ckpt: str, rm_ckpt: str | None, cfg: EvalConfig, seed: int,
                        device: str, threads: int) -> tuple[dict, dict[str, list[float]], float, float]:
    """The report's metrics of one checkpoint on cfg.n_problems held-out test problems, in the calling process.

    fmt "raw": the base model, greedy gold accuracy in the "Question: ... Answer:" format it was pretrained on.
    fmt "chat": a policy, evaluate.evaluate_policy with the SFT model as reference and the reward model (if any)
    as the proxy reward. Returns (metrics with their "format", per-problem scores {"greedy", "sampled"} (raw:
    greedy only) for paired comparisons, CPU seconds of this process during the call, its wall seconds).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    set_threads(threads)
    torch_device = get_device(device)
    problems = generate_problems(cfg.n_problems, "test", seed)
    policy, _ = load_model(ckpt, torch_device)
    tokenizer = load_tokenizer(policy.config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    if fmt == "raw":
        base_metrics, samples = evaluate_model(policy, tokenizer, problems, fmt="raw",
                                               max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        metrics = {"format": "raw", "accuracy/greedy": base_metrics["reward/gold_mean"],
                   "response/length_mean": base_metrics["response/length_mean"]}
        per_problem = {"greedy": [s["reward"] for s in samples]}
    else:
        reference, _ = load_model(sft_ckpt, torch_device)
        reward_model = load_reward_model(rm_ckpt, torch_device)[0] if rm_ckpt else None
        metrics, per_problem = evaluate_policy(
            policy, tokenizer, problems, reference=reference, reward_model=reward_model,
            samples_per_prompt=cfg.samples, max_new_tokens=cfg.max_new_tokens, seed=seed + 1,
            batch_size=cfg.batch_size, return_per_problem=True,
            distinct_over=cfg.distinct_over)  # the best-of-N rows' prompts (the first test problems)
        metrics = {"format": "chat", **metrics}
    return metrics, per_problem, time.process_time() - c0, time.perf_counter() - t0


def evaluations(labels: dict[str, str], run_stages: list[str], base_ckpt: str, sft_ckpt: str, cfg: EvalConfig,
                seed: int, device: str, threads: int) -> dict[str, tuple[tuple[str, ...], Callable[[dict], tuple]]]:
    """The report's evaluations, for `stages.run_post_training`: the base model, SFT and each policy of
    {report label: stage} whose stage runs, each an evaluate_checkpoint call with the reward model (when rm runs)
    as the proxy; each needs its policy's stage and rm. In the report's order: base, SFT, then `labels`'."""
    rm = ("rm",) if "rm" in run_stages else ()

    def call(checkpoint: Callable[[dict], str], fmt: str) -> Callable[[dict], tuple]:
        return lambda results: (evaluate_checkpoint, checkpoint(results), fmt, sft_ckpt,
                                results.get("rm", {}).get("checkpoint"), cfg, seed, device, threads)

    def trained(stage: str) -> Callable[[dict], str]:
        return lambda results: results[stage]["checkpoint"]

    return {"base": ((), call(lambda results: base_ckpt, "raw")), "SFT": (rm, call(lambda results: sft_ckpt, "chat")),
            **{label: ((stage, *rm), call(trained(stage), "chat")) for label, stage in labels.items()
               if stage in run_stages}}


def paired_comparisons(per_problem: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Each post-trained policy minus SFT, then each stage's policy minus the policy of the stage it is `versus`
    in the stage table (GRPO (gold) minus the matched-compute SFT baseline, expert iteration minus GRPO (gold), GRPO
    against the reward model minus GRPO against the smaller one), on the same test problems:
    [{"a", "b", "greedy": (mean, se), "sampled": (mean, se)}] (metrics.paired_difference)."""
    pairs = [(label, "SFT") for label in per_problem if label not in ("base", "SFT")]
    for a, b in ((s.label, STAGES[s.versus].label) for s in STAGES.values() if s.label and s.versus):
        if a in per_problem and b in per_problem:
            pairs.append((a, b))
    return [{"a": a, "b": b, **{kind: paired_difference(per_problem[a][kind], per_problem[b][kind])
                                for kind in ("greedy", "sampled")}} for a, b in pairs if "SFT" in per_problem]


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------


LESSONS = {"safety": SAFETY_LESSON}  # lesson presets name one in their pipeline section (lessons.py)


@releases_run_dir
def run(preset_name: str = "tiny", *, out: str = "", name: str = "", threads: int = 1, device: str = "auto",
        seed: int = 0, length_bias: float = 0.0, from_scratch: bool = False, skip: tuple[str, ...] = (),
        ship_checkpoints: bool = False, jobs: int = 2, small_rm: bool | None = None, overwrite: bool = False,
        nproc: int = 1) -> dict:
    """Every stage, then the evaluation and the report; returns the report dict (also written to report.json).
    small_rm: run the SMALL_RM_STAGES; None = when length_bias > 0. The output directory is locked for the run
    (rundir.RunLock); one that holds a pipeline run (report.json or a stage's run) is replaced only with
    `overwrite`, which every stage then gets too. nproc > 1: the data parallel stages (sft, rm, dpo, grpo, ppo, ei) each run
    in nproc torchrun processes (`stages.run_stage`).

    Raises:
        ValueError: an unknown preset or --skip stage, or jobs < 1. rundir.RunDirError: the directory is
            another run's, or holds a run and not `overwrite`.
    """
    if preset_name not in PIPELINE_PRESETS:
        raise ValueError(f"unknown pipeline preset {preset_name!r}; choose one of {sorted(PIPELINE_PRESETS)}")
    unknown = set(skip) - set(POST_STAGES)
    if unknown:
        raise ValueError(f"--skip {sorted(unknown)}: not a post-training stage ({', '.join(POST_STAGES)})")
    name = name or preset_name
    eval_cfg = stage_config(preset_name, "eval")
    out_dir = run_dir(name, out)
    hold_run_dir(out_dir)
    present = [p for p in ["report.json"] if (out_dir / p).exists()] + [
        f"{d.name}/{f}" for d in sorted(out_dir.iterdir()) if d.is_dir() for f in holds_run(d)]
    if present and not overwrite:
        raise RunDirError(f"{out_dir}: holds a pipeline run ({', '.join(present[:4])}"
                          f"{', ...' if len(present) > 4 else ''}): pass --overwrite to replace it, or choose another "
                          f"--out")
    lesson = stage_config(preset_name, "pipeline").lesson
    if lesson == "hallucination":  # a lesson with its own runner (pipeline/hallucination.py)
        return hallucination.run(out_dir, seed, preset_name.endswith("smoke"),
                                 stage_config(preset_name, "hallucination"), jobs=jobs, threads=threads, device=device)
    if lesson:  # a lesson preset: its own stages and report (lessons.py)
        return run_lesson(LESSONS[lesson], preset_name, out_dir, seed, device, threads, jobs, overwrite)
    set_threads(threads)
    torch_device = get_device(device)
    stages: dict[str, dict] = {}
    t_start, c_start = time.perf_counter(), cpu_seconds()

    # --- 1. base and SFT models: shipped (tiny), or trained here, in this process (each needs the one before)
    base_sft = [(stage, dataclasses.replace(cfg, overwrite=overwrite))
                for stage, cfg in base_sft_configs(preset_name, out_dir, seed, device, threads)]
    shipped_as = stage_config(preset_name, "pipeline").checkpoints or preset_name
    ready = None if (from_scratch or ship_checkpoints) else shipped(shipped_as)
    if ready:
        base_ckpt, sft_ckpt = str(ready[0]), str(ready[1])
        for stage, _ in base_sft:  # their training curves, for the report
            (out_dir / stage).mkdir(exist_ok=True)
            shutil.copy(shipped_metrics(shipped_as, stage), out_dir / stage / "metrics.jsonl")
        print(f"base and SFT models: shipped {base_ckpt}, {sft_ckpt} (--from-scratch retrains them)")
    else:
        for stage, cfg in base_sft:
            record(stages, stage, *run_stage(stage, cfg, nproc))
        base_ckpt, sft_ckpt = str(out_dir / "pretrain" / "ckpt.pt"), str(out_dir / base_sft[-1][0] / "ckpt.pt")
        if ship_checkpoints:
            print(f"shipped to {ship(out_dir, shipped_as, 'pretrain', base_sft[-1][0])}")
            return {"stages": stages}

    configs = {stage: dataclasses.replace(cfg, overwrite=overwrite) for stage, cfg in
               post_configs(preset_name, out_dir, sft_ckpt, seed, device, threads, length_bias, base_sft).items()}
    small_rm = length_bias > 0 if small_rm is None else small_rm
    run_stages = [s for s in POST_STAGES if s not in skip and (small_rm or s not in SMALL_RM_STAGES)]
    run_stages = [s for s in run_stages if s not in NEEDS or NEEDS[s] in run_stages]  # what they need is not skipped
    # --- 2. post-training from SFT, --jobs stages at a time; 3. every policy on the same held-out problems, with
    # the same metrics, each as soon as it is trained and a worker has no stage to run
    calls = evaluations(LABELS, run_stages, base_ckpt, sft_ckpt, eval_cfg, seed, device, threads)
    with make_pool(jobs) as pool:
        results, evaluated = run_post_training(run_stages, configs, pool, jobs, stages, calls, nproc)
    models, per_problem = {}, {}
    for label in calls:  # the report's order
        models[label], per_problem[label], _, _ = evaluated[label]
        print(f"eval {label}: " + " | ".join(f"{k} {v:.4g}" for k, v in models[label].items() if k != "format"))
    stages["eval"] = {"wall_s": sum(e[3] for e in evaluated.values()), "cpu_s": sum(e[2] for e in evaluated.values())}
    for row in results.get("bon", {}).get("rows", []):
        models[f"BoN-{row['n']}"] = {"format": "chat", "accuracy/greedy": None, **{k: v for k, v in row.items()
                                                                                  if k != "n"}}
    if "bon" in results:
        last = results["bon"]["rows"][-1]
        models[f"BoN-{last['n']} (gold oracle = pass@{last['n']})"] = {
            "format": "chat", "accuracy/greedy": None, "reward/gold_mean": last["reward/oracle_mean"],
            "kl/ref": last["kl/ref"]}

    # --- 4. report
    report = {"name": name, "preset": preset_name, "seed": seed, "threads": threads, "jobs": jobs,
              "device": str(torch_device), "n_test_problems": eval_cfg.n_problems,
              "n_sampled": eval_cfg.n_problems * eval_cfg.samples, "paired": paired_comparisons(per_problem),
              "annotator": {"tau": configs["rm"].tau, "length_bias": length_bias},
              "base_sft": "shipped" if ready else "trained", "models": models, "stages": stages,
              "sft": {**sft_progress(out_dir, [s for s, _ in base_sft if s != "pretrain"]),
                      "n_eval_problems": base_sft[-1][1].n_eval_problems},
              "preset_config": PRESETS[preset_name], **({"nproc": nproc} if nproc > 1 else {})}
    for stage in ("rm", "rm_small"):
        if stage in results:
            report[stage] = stages[stage]
    for stage in ("bon", "bon_small"):
        if stage in results:
            report[stage] = {k: results[stage][k] for k in ("rows", "n_prompts", "pool_size")}
    report["wall_s_total"] = time.perf_counter() - t_start
    report["cpu_s_total"] = cpu_seconds() - c_start  # this process and its workers
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_training_curves(out_dir, {s: STAGES[s].curves for s in [s for s, _ in base_sft] + run_stages
                                   if STAGES[s].curves})
    rl_runs = {title: read_metrics(out_dir / stage / "metrics.jsonl") for stage, title in
               (("ppo", "PPO against the reward model"), ("grpo_rm", "GRPO against the reward model"),
                ("grpo_rm_small", "GRPO against the small reward model")) if stage in results}
    bon_runs = {title: report[stage]["rows"] for stage, title in
                (("bon", "best-of-N (reward model)"), ("bon_small", "best-of-N (small reward model)"))
                if stage in report}
    plot_overoptimization(out_dir, bon_runs, rl_runs,
                          f"reward-model over-optimisation (annotator length bias {length_bias} per token)")
    plot_gold_vs_kl(out_dir, report)
    path = write_report(out_dir, report, {stage: label for label, stage in LABELS.items()})
    print(f"wrote {path}, report.json, training_curves.png, overoptimization.png and gold_vs_kl.png in {out_dir} "
          f"({report['wall_s_total']:.0f} s wall, {report['cpu_s_total']:.0f} s CPU over {jobs} job(s))")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PIPELINE_PRESETS), default="tiny",
                        help="smoke (seconds), tiny (the CPU run), tiny_rl10 (tiny with 10x the GRPO budget), "
                             "small (one GPU); the lessons: safety (safety_smoke: seconds; safety_headline: its "
                             "headline SFT pair), hallucination (hallucination_smoke: seconds)")
    parser.add_argument("--name", default="", help="run name: outputs go to runs/<name>/; empty = the preset's name")
    parser.add_argument("--out", default="", help="output directory; empty = runs/<name>")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads of every stage (0 = torch's default)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="post-training stages (then evaluations) run at once, each in its own worker process; "
                             "1 = one at a time in this process")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling")
    parser.add_argument("--length-bias", type=float, default=0.0,
                        help="annotator utility per response token (> 0: longer looks better; reward hacking)")
    parser.add_argument("--small-rm", action=argparse.BooleanOptionalAction, default=None,
                        help="also train the smaller reward model (the preset's rm_small section) and run GRPO and "
                             "best-of-N against it; default: on with --length-bias > 0")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the base and SFT models even when the preset ships them")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated post-training stages to skip, with the stages that need them: "
                             f"{','.join(POST_STAGES)}")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the pipeline run already in the output directory (without it: an error)")
    # Maintainers only (data/checkpoints/README.md): train base + SFT from scratch and write them to
    # data/checkpoints/<preset>/. Kept out of --help and the README's synopsis: a user never rewrites shipped files.
    parser.add_argument("--ship", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes per data parallel stage (sft, rm, dpo, grpo, ppo, ei: torchrun, distributed.py); "
                             "1 = each stage in one process")
    args = parser.parse_args(argv)
    return run(args.preset, out=args.out, name=args.name, threads=args.threads, device=args.device, seed=args.seed,
               length_bias=args.length_bias, from_scratch=args.from_scratch,
               skip=tuple(s for s in args.skip.split(",") if s), ship_checkpoints=args.ship, jobs=args.jobs,
               small_rm=args.small_rm, overwrite=args.overwrite, nproc=args.nproc)


if __name__ == "__main__":
    main()
