"""The hallucination trap, as one run: mid-training on a knowledge corpus, three SFTs, RL with an abstention reward.

    python -m cs336_alignment pipeline --preset hallucination            # the lesson (~10 CPU-min, 1 thread)
    python -m cs336_alignment pipeline --preset hallucination_smoke      # seconds; CI runs this
    python -m cs336_alignment.pipeline.hallucination --penalties 0,1,3 --seed 1   # the same, with its knobs

Stages (all from the shipped tiny base model, data/checkpoints/tiny/base.pt; the world is `knowledge.py`'s):
  1. mid-training (`train/pretrain.py --init`): continued pretraining on the knowledge corpus, every known fact
     stated `repeats` times among raw task-world documents. Unknown facts are never stated.
  2. SFT (`train/sft.py`) three times from the mid-trained model, same steps and recipe, on questions about the
     facts that are not held out. Known facts get worked answers; unknown facts get, by mode,
       sft_answer   the worked answer with the true price (which the model cannot know): the trap;
       sft_abstain  the abstention line "I don't know what a ... costs at ...'s shop.";
       sft_omit     nothing (no demonstration about an unknown fact).
  3. GRPO (`train/grpo.py`) from sft_abstain with `verifier.abstention_reward`: +1 right, 0 abstain,
     -penalty wrong, one run per penalty (rl_p<penalty>), on train questions about the same SFT facts.
Every model is evaluated greedily on every question about the held-out facts (never in SFT or RL prompts):
`evaluate.knowledge_metrics` (accuracy_known, false_abstention_rate on known facts; fabrication_rate,
abstention_rate on unknown ones, each with its binomial SE). Outputs: report.json, report.md and
accuracy_vs_abstention.png (accuracy on known facts against abstention on unknown ones, one point per model).
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.evaluation.evaluate import knowledge_metrics
from cs336_alignment.world.knowledge import SFT_MODES, KnowledgeWorld
from cs336_alignment.evaluation.metrics import paired_difference
from cs336_alignment.lm.rollout import generate_responses
from cs336_alignment.lm.tokenizer import load_tokenizer
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


@dataclass
class HallucinationConfig:
    n_shops: int = 8
    """shops of the knowledge world (x n_items facts)"""
    n_items: int = 10
    """items per shop"""
    known_fraction: float = 0.5
    """probability that a fact is stated in the knowledge corpus"""
    heldout_fraction: float = 0.3
    """probability that a fact is held out of SFT and RL (the metrics are measured on these)"""
    world_seed: int = 0
    """seed of the world's facts (the run's --seed seeds the training)"""
    repeats: int = 20
    """statements of each known fact in the corpus (4 phrasings in turn)"""
    task_documents: int = 500
    """raw task-world documents mixed into the corpus"""
    mid_steps: int = 400
    """mid-training steps (16 windows of 128 tokens; lr 3e-3 -> 3e-4): 400 recalled 41 of 42 known facts"""
    sft_per_fact: int = 8
    """SFT demonstrations per (not held-out) fact"""
    sft_steps: int = 200
    """SFT steps of 32 chats (lr 1e-3 -> 1e-4), the same for the three SFT modes"""
    penalties: str = "0,1,3"
    """GRPO runs, one per penalty of a wrong answer (abstention_reward's wrong_penalty)"""
    rl_steps: int = 20
    """GRPO rollout batches of 16 prompts x 8 samples"""
    rl_lr: float = 1e-4
    """GRPO peak learning rate"""
    max_new_tokens: int = 40
    """response length limit (a worked answer is ~25 tokens)"""
    eval_limit: int = 400
    """evaluate on this many held-out questions, half about known facts and half about unknown ones, drawn evenly
    (a seeded shuffle; 0 = all 1,440): the rates' binomial SEs are then at most 3.5 points"""
    reuse_stages: bool = False
    """keep a stage already trained in the output directory (its ckpt.pt) instead of training it again"""
    mid_init: str = ""
    """a mid-trained checkpoint of the same world to start the SFTs from, skipping stage 1 (a cheaper seed
    sub-run: only the SFTs and RL are reseeded); empty = mid-train here"""


def preset(name: str) -> HallucinationConfig:
    """The lesson's config in preset `name` of the one registry (train/presets.py: its "hallucination" section).
    Raises ValueError for an unknown preset or key (train.common.config_from_dict)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return config_from_dict(HallucinationConfig, PRESETS[name].get("hallucination", {}))


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def evaluate_knowledge(ckpt: str, questions: list[dict], max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Greedy responses of the checkpoint's model to `questions` (knowledge.KnowledgeWorld.questions rows) and their
    `evaluate.knowledge_metrics`; returns (metrics, [{"question", "response", "known", "correct", "abstained"}])."""
    model, _ = load_model(ckpt)
    tokenizer = load_tokenizer(model.config.tokenizer)
    responses = generate_responses(model, tokenizer, [q["question"] for q in questions], fmt="chat",
                                   max_new_tokens=max_new_tokens)
    truths, known = [q["answer"] for q in questions], [q["known"] for q in questions]
    metrics = knowledge_metrics(responses, truths, known)
    rows = [{"question": q["question"], "response": r, "known": q["known"],
             "correct": abstention_reward(r, q["answer"])["answer_reward"], "abstained": float(is_abstention(r))}
            for q, r in zip(questions, responses)]
    return metrics, rows


def run(out: str | Path, seed: int = 0, smoke: bool = False, cfg: HallucinationConfig | None = None,
        quiet: bool = True) -> dict:
    """The lesson (module docstring): every stage into `out`, then report.json, report.md and the plot.
    Returns the report dict. Raises ValueError on a bad penalty list."""
    cfg = cfg or preset("hallucination_smoke" if smoke else "hallucination")
    penalties = [float(p) for p in cfg.penalties.split(",") if p.strip()]
    if any(p < 0 for p in penalties):
        raise ValueError(f"penalties must be >= 0, got {cfg.penalties!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    world = KnowledgeWorld(cfg.n_shops, cfg.n_items, cfg.known_fraction, cfg.heldout_fraction, cfg.world_seed)
    heldout = [q for known in (True, False) for split in ("train", "test")
               for q in world.questions(world.select(known=known, heldout=True), split)]
    sft_facts_test = world.questions(world.select(heldout=False), "test")
    if cfg.eval_limit:  # half about known facts, half about unknown ones, spread over the facts
        random.Random(f"eval/{cfg.world_seed}").shuffle(heldout)
        random.Random(f"eval/{cfg.world_seed}").shuffle(sft_facts_test)
        heldout = ([q for q in heldout if q["known"]][:cfg.eval_limit // 2]
                   + [q for q in heldout if not q["known"]][:cfg.eval_limit // 2])
        sft_facts_test = sft_facts_test[:cfg.eval_limit]
    common = dict(overwrite=True, seed=seed, threads=1, device="cpu", quiet=quiet)

    def trained(train_fn, stage_cfg, **kwargs) -> dict:
        ckpt = Path(stage_cfg.out) / "ckpt.pt"
        if cfg.reuse_stages and ckpt.is_file():
            return {"checkpoint": str(ckpt), "steps": stage_cfg.num_steps, "loss/train": float("nan"),
                    "eval/loss": float("nan")}
        return train_fn(stage_cfg, **kwargs)

    stages: dict[str, dict] = {}

    # 1. mid-training on the knowledge corpus
    corpus = out / "corpus.txt"
    corpus.write_text(world.corpus_text(cfg.repeats, cfg.task_documents, seed))
    if cfg.mid_init:
        mid = {"checkpoint": cfg.mid_init, "steps": 0, "loss/train": float("nan"), "eval/loss": float("nan")}
    else:
        mid = trained(pretrain_train, PretrainConfig(name="midtrain", out=str(out / "midtrain"), init=str(BASE),
                                            data=str(corpus), num_steps=cfg.mid_steps, lr=3e-3, min_lr=3e-4,
                                            warmup_steps=min(10, cfg.mid_steps), weight_decay=0.0, val_fraction=0.01,
                                            eval_every=100, checkpoint_every=cfg.mid_steps, **common))
    checkpoints = {}

    # 2. three SFTs
    eval_chats = _jsonl(out / "sft_eval.jsonl",
                        [{"messages": c} for c in world.sft_demonstrations("answer", 1, seed + 1)[:32]])
    for mode in SFT_MODES:
        data = _jsonl(out / f"sft_{mode}.jsonl",
                      [{"messages": c} for c in world.sft_demonstrations(mode, cfg.sft_per_fact, seed)])
        result = trained(sft_train, SFTConfig(name=f"sft_{mode}", out=str(out / f"sft_{mode}"), init=mid["checkpoint"],
                                              data=data, eval_data=eval_chats, n_examples=0, num_steps=cfg.sft_steps,
                                              lr=1e-3, min_lr=1e-4, warmup_steps=min(10, cfg.sft_steps),
                                              eval_every=max(cfg.sft_steps // 2, 1), checkpoint_every=cfg.sft_steps,
                                              **common))
        checkpoints[f"sft_{mode}"] = result["checkpoint"]

    # 3. GRPO with the abstention reward, one run per penalty, from the abstention SFT model
    prompts = _jsonl(out / "rl_prompts.jsonl", [{"question": q["question"], "answer": q["answer"]}
                                                for q in world.questions(world.select(heldout=False), "train")])
    for p in penalties:
        name = f"rl_p{p:g}"
        rl = GRPOConfig(name=name, out=str(out / name), init=checkpoints["sft_abstain"], data=prompts,
                        n_problems=10 ** 6, n_eval_problems=0, prompts_per_step=16, group_size=8,
                        max_new_tokens=cfg.max_new_tokens, num_steps=cfg.rl_steps, lr=cfg.rl_lr, min_lr=cfg.rl_lr / 10,
                        warmup_steps=min(3, cfg.rl_steps), eval_every=10 ** 6, checkpoint_every=cfg.rl_steps, **common)
        result = trained(grpo_train, rl, reward_fn=functools.partial(abstention_reward, wrong_penalty=p))
        checkpoints[name] = result["checkpoint"]

    # evaluation on held-out facts (and, for known-fact accuracy, on test questions about the SFT facts)
    per_question = {}
    for name, ckpt in checkpoints.items():
        metrics, rows = evaluate_knowledge(ckpt, heldout, cfg.max_new_tokens)
        in_sft, _ = evaluate_knowledge(ckpt, sft_facts_test, cfg.max_new_tokens)
        metrics["knowledge/accuracy_known_sft_facts"] = in_sft["knowledge/accuracy_known"]
        samples = [r for r in rows if not r["known"]][:4] + [r for r in rows if r["known"]][:2]
        stages[name] = {"metrics": metrics, "samples": samples}
        per_question[name] = rows

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
    report = {"preset": "hallucination_smoke" if smoke else "hallucination", "seed": seed, "config": asdict(cfg),
              "world": {"facts": len(world.facts), "known": len(world.select(known=True)),
                        "heldout_known": len(world.select(known=True, heldout=True)),
                        "heldout_unknown": len(world.select(known=False, heldout=True)),
                        "heldout_questions": len(heldout)},
              "midtrain": {k: mid[k] for k in ("steps", "loss/train", "eval/loss")}, "runs": stages,
              "headline": headline, "cpu_s": time.process_time() - t_cpu, "wall_s": time.perf_counter() - t_wall}
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


def write_report(out: Path, report: dict) -> Path:
    """report.md: the world, one row per model (held-out facts), the headline paired differences."""
    w = report["world"]
    lines = [f"# {report['preset']} (seed {report['seed']})", "",
             f"World: {w['facts']} facts, {w['known']} known (in the corpus); held out of SFT/RL: {w['heldout_known']} "
             f"known, {w['heldout_unknown']} unknown ({w['heldout_questions']} questions). Mid-training: "
             + (f"{report['midtrain']['steps']} steps, final train loss {report['midtrain']['loss/train']:.3f}." if
              report["midtrain"]["steps"] else f"reused ({report['config']['mid_init']})."), "",
             "| model | accuracy known | false abstention | fabrication | abstention "
             "| accuracy known (SFT facts, test) |",
             "|---|---|---|---|---|---|"]
    for name, run_ in report["runs"].items():
        m = run_["metrics"]
        lines.append(f"| {name} | {_pm(m, 'knowledge/accuracy_known')} | {_pm(m, 'knowledge/false_abstention_rate')} | "
                     f"{_pm(m, 'knowledge/fabrication_rate')} | {_pm(m, 'knowledge/abstention_rate')} | "
                     f"{100 * m['knowledge/accuracy_known_sft_facts']:.1f} |")
    lines += ["", "Percent ± binomial SE, greedy, on every question about the held-out facts.", "",
              "| paired difference (same questions) | points ± SE |", "|---|---|"]
    for key, value in report["headline"].items():
        lines.append(f"| {key} | " + (f"{100 * value[0]:+.1f} ± {100 * value[1]:.1f}" if value else "—") + " |")
    lines += ["", f"{report['cpu_s']:.0f} CPU-s, {report['wall_s']:.0f} s wall. Plot: accuracy_vs_abstention.png."]
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
    docs = field_docs(HallucinationConfig)
    for field, value in asdict(HallucinationConfig()).items():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument("--" + field.replace("_", "-"), type=kind, default=None,
                            help=f"{docs.get(field, '')} (preset hallucination: {value})")
    args = parser.parse_args(argv)
    overrides = {f: getattr(args, f) for f in asdict(HallucinationConfig()) if getattr(args, f) is not None}
    cfg = replace(preset(args.preset), **overrides)
    report = run(args.out or f"runs/{args.preset}", args.seed, args.preset.endswith("smoke"), cfg, quiet=False)
    print((Path(args.out or f"runs/{args.preset}") / "report.md").read_text())
    return report


if __name__ == "__main__":
    main()
