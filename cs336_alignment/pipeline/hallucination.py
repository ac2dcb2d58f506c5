"""The hallucination trap, as one run: mid-training on a knowledge corpus, three SFTs, RL with an abstention reward.

    python -m cs336_alignment pipeline --preset hallucination            # the lesson (~8 CPU-min; --jobs 2: side by side)
    python -m cs336_alignment pipeline --preset hallucination_smoke      # seconds; CI runs this
    python -m cs336_alignment.pipeline.hallucination --penalties 0,1,3 --seed 1   # the same, with its knobs

Stages (all from the shipped tiny base model, data/checkpoints/tiny/base.pt; the world is `knowledge.py`'s, its facts
split three ways: SFT facts, RL facts and held-out facts, disjoint):
  1. mid-training (`train/pretrain.py --init`): continued pretraining on the knowledge corpus, every known fact
     stated `repeats` times among raw task-world documents. Unknown facts are never stated.
  2. SFT (`train/sft.py`) three times from the mid-trained model, same steps and recipe, on questions about the
     SFT facts. Known facts get worked answers (the fact recalled in `recall_phrasing`, then the product); unknown
     facts get, by mode,
       sft_answer   the worked answer with the true price (which the model cannot know): the trap;
       sft_abstain  the abstention line "I don't know what a ... costs at ...'s shop." (with `abstain_recall`,
                    after the attempted recall "At Kim's shop a pen costs");
       sft_omit     nothing (no demonstration about an unknown fact).
  3. GRPO (`train/grpo.py`) from sft_abstain with `verifier.abstention_reward`: +1 right, 0 abstain,
     -penalty wrong, one run per penalty (rl_p<penalty>), on train questions about the RL facts (known and
     unknown; SFT never asked about them, so the SFT model is unsure there and the reward has variance).
Every model is evaluated greedily on questions about the held-out facts (never in SFT or RL prompts):
`evaluate.knowledge_metrics` (accuracy_known, false_abstention_rate on known facts; fabrication_rate,
abstention_rate on unknown ones, each with its binomial SE), and on test questions about the SFT and RL facts.
Stages and evaluations run `jobs` at a time (`schedule`: the three SFTs side by side, each GRPO run once
sft_abstain exists, each evaluation once its model exists); every stage is seeded, so the numbers do not depend
on `jobs`. Outputs: report.json, report.md (with each GRPO run's zero-variance group fraction and every stage's
seconds) and accuracy_vs_abstention.png (accuracy on known facts against abstention on unknown ones).
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, replace
from pathlib import Path

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.evaluation.evaluate import knowledge_metrics
from cs336_alignment.world.knowledge import SFT_MODES, HallucinationConfig, KnowledgeWorld
from cs336_alignment.evaluation.metrics import paired_difference
from cs336_alignment.lm.rollout import generate_responses
from cs336_alignment.lm.runtime import get_device, set_threads
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.pipeline.stages import cpu_seconds, make_pool
from cs336_alignment.train.common import config_from_dict, field_docs
from cs336_alignment.train.grpo import GRPOConfig
from cs336_alignment.train.grpo import train as grpo_train
from cs336_alignment.train.pretrain import PretrainConfig
from cs336_alignment.train.pretrain import train as pretrain_train
from cs336_alignment.train.presets import PRESETS
from cs336_alignment.train.sft import SFTConfig
from cs336_alignment.train.sft import train as sft_train
from cs336_alignment.world.verifier import abstention_reward, is_abstention

BASE = Path(__file__).resolve().parents[2] / "data" / "checkpoints" / "tiny" / "base.pt"


def preset(name: str) -> HallucinationConfig:
    """The lesson's config in preset `name` of the one registry (train/presets.py: its "hallucination" section).
    Raises ValueError for an unknown preset or key (train.common.config_from_dict)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return config_from_dict(HallucinationConfig, PRESETS[name].get("hallucination", {}))


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def evaluate_knowledge(ckpt: str, questions: list[dict], max_new_tokens: int, device: str = "cpu",
                       threads: int = 1) -> tuple[dict, list[dict]]:
    """Greedy responses of the checkpoint's model to `questions` (knowledge.KnowledgeWorld.questions rows) and their
    `evaluate.knowledge_metrics`; returns (metrics, [{"question", "response", "known", "correct", "abstained"}])."""
    set_threads(threads)
    model, _ = load_model(ckpt, get_device(device))
    tokenizer = load_tokenizer(model.config.tokenizer)
    responses = generate_responses(model, tokenizer, [q["question"] for q in questions], fmt="chat",
                                   max_new_tokens=max_new_tokens)
    truths, known = [q["answer"] for q in questions], [q["known"] for q in questions]
    metrics = knowledge_metrics(responses, truths, known)
    rows = [{"question": q["question"], "response": r, "known": q["known"],
             "correct": abstention_reward(r, q["answer"])["answer_reward"], "abstained": float(is_abstention(r))}
            for q, r in zip(questions, responses)]
    return metrics, rows


def evaluate_model(ckpt: str, question_sets: dict[str, list[dict]], max_new_tokens: int, device: str = "cpu",
                   threads: int = 1) -> dict[str, tuple[dict, list[dict]]]:
    """`evaluate_knowledge` of one checkpoint on each named question set (one worker call per model)."""
    return {name: evaluate_knowledge(ckpt, qs, max_new_tokens, device, threads) for name, qs in question_sets.items()}


def _stage(train_fn, stage_cfg, reuse: bool) -> dict:
    """train_fn(stage_cfg), or the checkpoint already in stage_cfg.out when `reuse` (HallucinationConfig.reuse_stages)."""
    ckpt = Path(stage_cfg.out) / "ckpt.pt"
    if reuse and ckpt.is_file():
        return {"checkpoint": str(ckpt), "steps": stage_cfg.num_steps, "loss/train": float("nan"),
                "eval/loss": float("nan")}
    return train_fn(stage_cfg)


def _timed(fn, *args) -> tuple:
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - t0, time.process_time() - c0


def schedule(tasks: dict[str, tuple], jobs: int) -> tuple[dict, dict]:
    """Run `tasks` (name -> (picklable fn, args tuple, the name of the task it needs or None)) with at most `jobs`
    at once (`stages.make_pool`: this process for jobs = 1, else spawned workers), each as soon as the task it
    needs is done, earlier names first. Returns ({name: result}, {name: {"wall_s", "cpu_s"}}).
    Raises ValueError on a task that needs an unknown task; a task's exception is raised as is."""
    for name, (_, _, needs) in tasks.items():
        if needs is not None and needs not in tasks:
            raise ValueError(f"task {name!r} needs {needs!r}, which is not a task")
    results, seconds, running, waiting = {}, {}, {}, list(tasks)
    with make_pool(jobs) as pool:
        while waiting or running:
            for name in [n for n in waiting if tasks[n][2] is None or tasks[n][2] in results]:
                if len(running) == jobs:
                    break
                waiting.remove(name)
                running[pool.submit(_timed, tasks[name][0], *tasks[name][1])] = name
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                results[name], wall_s, cpu_s = future.result()
                seconds[name] = {"wall_s": wall_s, "cpu_s": cpu_s}
    return results, seconds


def _rl_log(out: Path) -> dict:
    """Mean over a GRPO run's steps of its zero-variance group fraction, and its first and last mean reward."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "groups/zero_variance_fraction" in r]
    if not rows:
        return {}
    return {"zero_variance_fraction": sum(r["groups/zero_variance_fraction"] for r in rows) / len(rows),
            "reward_first": rows[0]["reward/mean"], "reward_last": rows[-1]["reward/mean"]}


def _sample(questions: list[dict], limit: int, key: str) -> list[dict]:
    """Half `limit` questions about known facts and half about unknown ones, spread over the facts (a seeded
    shuffle); all of them when limit is 0."""
    if not limit:
        return questions
    questions = list(questions)
    random.Random(key).shuffle(questions)
    return [q for q in questions if q["known"]][:limit // 2] + [q for q in questions if not q["known"]][:limit // 2]


def run(out: str | Path, seed: int = 0, smoke: bool = False, cfg: HallucinationConfig | None = None,
        quiet: bool = True, jobs: int = 1, threads: int = 1, device: str = "cpu") -> dict:
    """The lesson (module docstring): every stage into `out`, at most `jobs` stages or evaluations at once (the
    three SFTs side by side, then the GRPO runs; the numbers do not depend on `jobs`), each with `threads` torch
    threads on `device`; then report.json, report.md and the plot. Returns the report dict.
    Raises ValueError on a bad penalty list, or penalties with no RL facts in the world."""
    cfg = cfg or preset("hallucination_smoke" if smoke else "hallucination")
    penalties = [float(p) for p in cfg.penalties.split(",") if p.strip()]
    if any(p < 0 for p in penalties):
        raise ValueError(f"penalties must be >= 0, got {cfg.penalties!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_wall, t_cpu = time.perf_counter(), cpu_seconds()
    world = KnowledgeWorld(cfg.n_shops, cfg.n_items, cfg.known_fraction, cfg.heldout_fraction, cfg.world_seed,
                           cfg.rl_fraction)
    if penalties and not world.select(rl=True):
        raise ValueError(f"penalties {cfg.penalties!r} need RL facts; rl_fraction {cfg.rl_fraction} drew none")
    both = ("train", "test")
    question_sets = {  # held-out facts (the metrics), and test questions about the SFT and RL facts
        "heldout": _sample([q for k in (True, False) for sp in both
                            for q in world.questions(world.select(known=k, heldout=True), sp)],
                           cfg.eval_limit, f"eval/{cfg.world_seed}"),
        "sft_facts": _sample(world.questions(world.select(heldout=False, rl=False), "test"), cfg.eval_limit,
                             f"eval/{cfg.world_seed}"),
        "rl_facts": _sample(world.questions(world.select(rl=True), "test"), cfg.eval_limit, f"eval/{cfg.world_seed}")}
    question_sets = {k: v for k, v in question_sets.items() if v}
    common = dict(overwrite=True, seed=seed, threads=threads, device=device, quiet=quiet)
    tasks: dict[str, tuple] = {}

    # 1. mid-training on the knowledge corpus
    corpus = out / "corpus.txt"
    corpus.write_text(world.corpus_text(cfg.repeats, cfg.task_documents, seed))
    mid_ckpt = cfg.mid_init or str(out / "midtrain" / "ckpt.pt")
    if not cfg.mid_init:
        tasks["midtrain"] = (_stage, (pretrain_train, PretrainConfig(
            name="midtrain", out=str(out / "midtrain"), init=str(BASE), data=str(corpus), num_steps=cfg.mid_steps,
            lr=cfg.mid_lr, min_lr=cfg.mid_lr / 10, warmup_steps=min(10, cfg.mid_steps), weight_decay=0.0,
            val_fraction=0.01, eval_every=100, checkpoint_every=cfg.mid_steps, **common), cfg.reuse_stages), None)

    # 2. three SFTs
    eval_chats = _jsonl(out / "sft_eval.jsonl", [{"messages": c} for c in
                                                 world.sft_demonstrations("answer", 1, seed + 1, cfg.recall_phrasing)[:32]])
    for mode in SFT_MODES:
        data = _jsonl(out / f"sft_{mode}.jsonl", [{"messages": c} for c in world.sft_demonstrations(
            mode, cfg.sft_per_fact, seed, cfg.recall_phrasing, cfg.abstain_recall)])
        tasks[f"sft_{mode}"] = (_stage, (sft_train, SFTConfig(
            name=f"sft_{mode}", out=str(out / f"sft_{mode}"), init=mid_ckpt, data=data, eval_data=eval_chats,
            n_examples=0, num_steps=cfg.sft_steps, lr=cfg.sft_lr, min_lr=cfg.sft_lr / 10, warmup_steps=min(10, cfg.sft_steps),
            eval_every=max(cfg.sft_steps // 2, 1), checkpoint_every=cfg.sft_steps, **common), cfg.reuse_stages),
            None if cfg.mid_init else "midtrain")

    # 3. GRPO with the abstention reward, one run per penalty, from the abstention SFT model, on the RL facts
    prompts = _jsonl(out / "rl_prompts.jsonl", [{"question": q["question"], "answer": q["answer"]}
                                                for q in world.questions(world.select(rl=True), "train")])
    for p in penalties:
        name = f"rl_p{p:g}"
        rl = GRPOConfig(name=name, out=str(out / name), init=str(out / "sft_abstain" / "ckpt.pt"), data=prompts,
                        n_problems=10 ** 6, n_eval_problems=0, prompts_per_step=16, group_size=8,
                        max_new_tokens=cfg.max_new_tokens, num_steps=cfg.rl_steps, lr=cfg.rl_lr, min_lr=cfg.rl_lr / 10,
                        warmup_steps=min(3, cfg.rl_steps), eval_every=10 ** 6, checkpoint_every=cfg.rl_steps, **common)
        tasks[name] = (_stage, (functools.partial(grpo_train, reward_fn=functools.partial(
            abstention_reward, wrong_penalty=p)), rl, cfg.reuse_stages), "sft_abstain")

    # 4. every model on the held-out facts (and the SFT and RL facts' test questions), as soon as it exists
    models = [f"sft_{m}" for m in SFT_MODES] + [f"rl_p{p:g}" for p in penalties]
    for name in models:
        tasks[f"eval {name}"] = (evaluate_model, (str(out / name / "ckpt.pt"), question_sets, cfg.max_new_tokens,
                                                  device, threads), name)
    results, seconds = schedule(tasks, jobs)

    stages, per_question = {}, {}
    for name in models:
        evaluated = results[f"eval {name}"]
        metrics, rows = evaluated["heldout"]
        for key in ("sft_facts", "rl_facts"):
            if key in evaluated:
                metrics.update({f"{key}/{k.split('/')[1]}": v for k, v in evaluated[key][0].items()})
        metrics["knowledge/accuracy_known_sft_facts"] = metrics.get("sft_facts/accuracy_known", float("nan"))
        samples = [r for r in rows if not r["known"]][:4] + [r for r in rows if r["known"]][:2]
        stages[name] = {"metrics": metrics, "samples": samples}
        if name.startswith("rl_"):
            stages[name]["rl_log"] = _rl_log(out / name)
        per_question[name] = rows
    mid = results.get("midtrain", {"steps": 0, "loss/train": float("nan"), "eval/loss": float("nan")})

    def diff(a: str, b: str, known: bool, key: str) -> list[float] | None:
        if a not in per_question or b not in per_question:
            return None
        xs = [[float(r[key]) for r in per_question[n] if r["known"] == known] for n in (a, b)]
        return list(paired_difference(*xs)) if len(xs[0]) >= 2 else None

    fabricated = {n: [float(not r["abstained"]) for r in rows if not r["known"]] for n, rows in per_question.items()}
    headline = {
        "accuracy_known: sft_answer - sft_omit": diff("sft_answer", "sft_omit", True, "correct"),
        "abstention_rate: sft_abstain - sft_answer": diff("sft_abstain", "sft_answer", False, "abstained"),
        "false_abstention: sft_abstain - sft_omit": diff("sft_abstain", "sft_omit", True, "abstained"),
        "not abstained on unknown: sft_answer - sft_omit": (list(paired_difference(fabricated["sft_answer"],
                                                                                   fabricated["sft_omit"]))
                                                            if len(fabricated["sft_omit"]) >= 2 else None)}
    if penalties:  # RL at the largest penalty against its start
        top = f"rl_p{max(penalties):g}"
        headline[f"abstention_rate: {top} - sft_abstain"] = diff(top, "sft_abstain", False, "abstained")
        headline[f"false_abstention: {top} - sft_abstain"] = diff(top, "sft_abstain", True, "abstained")
        headline[f"accuracy_known: {top} - sft_abstain"] = diff(top, "sft_abstain", True, "correct")
    report = {"preset": "hallucination_smoke" if smoke else "hallucination", "seed": seed, "config": asdict(cfg),
              "world": {"facts": len(world.facts), "known": len(world.select(known=True)),
                        "sft_facts": len(world.select(heldout=False, rl=False)), "rl_facts": len(world.select(rl=True)),
                        "rl_known": len(world.select(known=True, rl=True)),
                        "heldout_known": len(world.select(known=True, heldout=True)),
                        "heldout_unknown": len(world.select(known=False, heldout=True)),
                        "heldout_questions": len(question_sets["heldout"])},
              "midtrain": {k: mid[k] for k in ("steps", "loss/train", "eval/loss")}, "runs": stages,
              "headline": headline, "seconds": seconds, "jobs": jobs, "threads": threads, "device": device,
              "cpu_s": cpu_seconds() - t_cpu, "wall_s": time.perf_counter() - t_wall}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    plot_accuracy_vs_abstention(out, report)
    write_report(out, report)
    return report


def plot_accuracy_vs_abstention(out: Path, report: dict) -> Path:
    """accuracy_vs_abstention.png: accuracy on known held-out facts (y) against abstention on unknown ones (x), one
    point per model with 1-SE bars; the ideal is the top right corner."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, run_ in report["runs"].items():
        m = run_["metrics"]
        ax.errorbar(100 * m["knowledge/abstention_rate"], 100 * m["knowledge/accuracy_known"],
                    xerr=100 * m["knowledge/abstention_rate_se"], yerr=100 * m["knowledge/accuracy_known_se"],
                    fmt="o" if name.startswith("sft") else "s", capsize=3, label=name)
    ax.set(xlabel="abstention on unknown facts (%)", ylabel="accuracy on known facts (%)",
           title="held-out facts: answer what you know, abstain on the rest", xlim=(-5, 105), ylim=(-5, 105))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "accuracy_vs_abstention.png"
    fig.savefig(path, dpi=100)
    return path


def _pm(m: dict, key: str) -> str:
    return f"{100 * m[key]:.1f} ± {100 * m[key + '_se']:.1f}"


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[key]:.1f}" if key in m else "—"


def write_report(out: Path, report: dict) -> Path:
    """report.md: the world, one row per model (held-out facts), the RL runs' logs, the headline paired
    differences, the seconds of every stage."""
    w = report["world"]
    lines = [f"# {report['preset']} (seed {report['seed']})", "",
             f"World: {w['facts']} facts, {w['known']} known (in the corpus); {w['sft_facts']} SFT facts, "
             f"{w['rl_facts']} RL facts ({w['rl_known']} known); held out of SFT/RL: {w['heldout_known']} "
             f"known, {w['heldout_unknown']} unknown ({w['heldout_questions']} questions). Mid-training: "
             + (f"{report['midtrain']['steps']} steps, final train loss {report['midtrain']['loss/train']:.3f}." if
              report["midtrain"]["steps"] else f"reused ({report['config']['mid_init']})."), "",
             "| model | accuracy known | false abstention | fabrication | abstention "
             "| SFT facts (test): accuracy known | RL facts (test): accuracy known, abstention on unknown |",
             "|---|---|---|---|---|---|---|"]
    for name, run_ in report["runs"].items():
        m = run_["metrics"]
        lines.append(f"| {name} | {_pm(m, 'knowledge/accuracy_known')} | {_pm(m, 'knowledge/false_abstention_rate')} | "
                     f"{_pm(m, 'knowledge/fabrication_rate')} | {_pm(m, 'knowledge/abstention_rate')} | "
                     f"{_pct(m, 'sft_facts/accuracy_known')} | {_pct(m, 'rl_facts/accuracy_known')}, "
                     f"{_pct(m, 'rl_facts/abstention_rate')} |")
    lines += ["", "Percent ± binomial SE, greedy, on questions about the held-out facts (the last two columns: test "
              "questions about the SFT and RL facts).", ""]
    rl = {n: r["rl_log"] for n, r in report["runs"].items() if r.get("rl_log")}
    if rl:
        lines += ["| GRPO run | zero-variance groups (mean over steps) | mean reward, first step | last step |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {v['zero_variance_fraction']:.2f} | {v['reward_first']:+.3f} | {v['reward_last']:+.3f} |"
                  for n, v in rl.items()]
        lines.append("")
    lines += ["| paired difference (same questions) | points ± SE |", "|---|---|"]
    for key, value in report["headline"].items():
        lines.append(f"| {key} | " + (f"{100 * value[0]:+.1f} ± {100 * value[1]:.1f}" if value else "—") + " |")
    lines += ["", "| stage | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} |" for k, v in report.get("seconds", {}).items()]
    lines += ["", f"{report['cpu_s']:.0f} CPU-s, {report['wall_s']:.0f} s wall ({report.get('jobs', 1)} job(s)). "
              "Plot: accuracy_vs_abstention.png."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment.pipeline.hallucination",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=[n for n in sorted(PRESETS) if "hallucination" in PRESETS[n]],
                        default="hallucination")
    parser.add_argument("--out", default="", help="output directory; empty = runs/<preset>")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training (the world has --world-seed)")
    parser.add_argument("--jobs", type=int, default=1, help="stages and evaluations at once (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every stage (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cuda, mps, cpu or auto")
    docs = field_docs(HallucinationConfig)
    for field, value in asdict(HallucinationConfig()).items():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None,
                            help=f"{docs.get(field, '')} (preset hallucination: {value})")
    args = parser.parse_args(argv)
    overrides = {f: getattr(args, f) for f in asdict(HallucinationConfig()) if getattr(args, f) is not None}
    cfg = replace(preset(args.preset), **overrides)
    report = run(args.out or f"runs/{args.preset}", args.seed, args.preset.endswith("smoke"), cfg, quiet=False,
                 jobs=args.jobs, threads=args.threads, device=args.device)
    print((Path(args.out or f"runs/{args.preset}") / "report.md").read_text())
    return report


if __name__ == "__main__":
    main()
