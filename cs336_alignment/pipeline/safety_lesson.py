"""The safety lesson (``pipeline --preset safety``): violations against false refusals, measured exactly.

From the shipped tiny SFT model (data/checkpoints/tiny/sft.pt), in the safety world (safety.py):

  sft_0               more SFT on n_plain ordinary demonstrations only (no refusal demonstration)
  sft_few, sft_more   the same plus `few` / `more` refusal demonstrations (forbidden request -> the refusal line)
  sft_few_contrast,   the same plus as many look-alike demonstrations (the same word in a harmless sense,
  sft_more_contrast   answered normally): the contrastive examples
  dpo                 DPO from `rl_from` on preference pairs: the refusal chosen on forbidden requests, the answer
                      chosen on look-alikes and plain problems (Touvron et al. 2023, Llama 2 §4.2.1, safety RLHF)
  grpo                GRPO from `rl_from` with the safety-aware gold reward (verifier.safety_reward: refuse a
                      forbidden request, answer everything else correctly) on a mix of the three kinds

Every SFT variant trains the same steps on the same ordinary demonstrations, so the variants differ only by the
safety demonstrations. Each policy (and the shipped SFT model) answers the same held-out test prompts of each kind
greedily (eval section: n_problems per kind), scored by evaluate.safety_metrics: safety/violation_rate,
safety/false_refusal_rate, safety/plain_refusal_rate with binomial SEs, and the gold accuracy on plain and
look-alike prompts. report.md has the table, a few responses and GRPO's groups by prompt kind (how many had all
rewards equal, so no gradient: `grpo_groups`); frontier.png plots the violation rate against the false-refusal
rate, one point per policy (the trade-off frontier).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.lm.data import write_jsonl
from cs336_alignment.evaluation.evaluate import safety_metrics
from cs336_alignment.pipeline.lessons import Lesson, LessonStage, Wiring
from cs336_alignment.train.presets import EvalConfig
from cs336_alignment.lm.rollout import generate_responses
from cs336_alignment.lm.runtime import get_device, set_threads
from cs336_alignment.world.safety import (KINDS, SafetyConfig, ground_truth, safety_demonstrations, safety_mixture,
                                    safety_preferences, safety_problems)
from cs336_alignment.lm.tokenizer import build_prompt, load_tokenizer
from cs336_alignment.train import dpo, grpo, sft
from cs336_alignment.train.common import read_metrics
from cs336_alignment.world.verifier import gold_reward, safety_reward

CONTEXT_LENGTH = 128  # the shipped tiny models' context (DPO pairs must fit in it)
VARIANTS = {  # SFT variant -> (refusal demonstrations, look-alike demonstrations), as SafetyConfig field names
    "sft_0": (None, None), "sft_few": ("few", None), "sft_more": ("more", None),
    "sft_few_contrast": ("few", "few"), "sft_more_contrast": ("more", "more")}
LABELS = {"sft_0": "SFT, 0 refusal demos", "sft_few": "SFT, few refusal demos", "sft_more": "SFT, more refusal demos",
          "sft_few_contrast": "SFT, few refusal + look-alike demos",
          "sft_more_contrast": "SFT, more refusal + look-alike demos", "dpo": "DPO (safety pairs)",
          "grpo": "GRPO (safety reward)"}


def _count(cfg: SafetyConfig, field: str | None) -> int:
    return getattr(cfg, field) if field else 0


def fitting(pairs: list[dict], tokenizer, context_length: int = CONTEXT_LENGTH) -> list[dict]:
    """The pairs whose chat prompt and longer response fit in the model's context (DPO rejects a pair whose prompt
    leaves no room; a long look-alike question with three operations can)."""
    def size(p: dict) -> int:
        prompt = build_prompt(p["prompt"], tokenizer, "chat")
        return len(prompt) + max(len(tokenizer.encode(p["chosen"])), len(tokenizer.encode(p["rejected"]))) + 1
    return [p for p in pairs if size(p) <= context_length]


def prepare(out: Path, cfg: SafetyConfig, seed: int) -> None:
    """Write the lesson's data under `out`/data/: one demonstration file per SFT variant and held-out ones for its
    eval/loss, DPO's train and held-out pairs, GRPO's prompts (safety ground truths)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for variant, (refusals, lookalikes) in VARIANTS.items():
        demos = safety_demonstrations(cfg.n_plain, _count(cfg, refusals), _count(cfg, lookalikes), seed=seed + 1)
        write_jsonl(data / f"{variant}.jsonl", demos)
    n_eval = max(4, cfg.n_plain // 16)  # eval/loss: held-out demonstrations of every kind (test split)
    write_jsonl(data / "sft_eval.jsonl", safety_demonstrations(n_eval, n_eval // 4, n_eval // 4, seed, "test"))
    tokenizer = load_tokenizer()
    write_jsonl(data / "pairs_train.jsonl",
                fitting(safety_preferences(cfg.n_pairs, cfg.n_pairs, cfg.n_pairs, "rl", seed), tokenizer))
    n_eval = max(8, cfg.n_pairs // 10)
    write_jsonl(data / "pairs_eval.jsonl", fitting(safety_preferences(n_eval, n_eval, n_eval, "test", seed + 1), tokenizer))
    prompts = safety_mixture(cfg.n_rl_prompts, "rl", seed + 2, cfg.forbidden, cfg.lookalike)
    write_jsonl(data / "grpo_prompts.jsonl", [{"question": p["question"], "answer": ground_truth(p), "kind": p["kind"]}
                                              for p in prompts])


def stages(cfg: SafetyConfig) -> list[LessonStage]:
    """The SFT variants, then DPO and GRPO from cfg.rl_from (only cfg.stages and what they start from, if given).

    Raises:
        ValueError: an unknown rl_from or stage name.
    """
    if cfg.rl_from not in VARIANTS:
        raise ValueError(f"rl_from must be one of {sorted(VARIANTS)}, got {cfg.rl_from!r}")

    def demos(variant: str):
        return lambda w: dict(name=variant, data=str(w.out / "data" / f"{variant}.jsonl"),
                              eval_data=str(w.out / "data" / "sft_eval.jsonl"))

    def pairs(w: Wiring) -> dict:
        return dict(name="dpo", data=str(w.out / "data" / "pairs_train.jsonl"),
                    eval_data=str(w.out / "data" / "pairs_eval.jsonl"))

    every = ([LessonStage(v, "sft", sft.train, demos(v), label=LABELS[v]) for v in VARIANTS]
             + [LessonStage("dpo", "dpo", dpo.train, pairs, needs=cfg.rl_from, label=LABELS["dpo"]),
                LessonStage("grpo", "grpo", functools.partial(grpo.train, reward_fn=safety_reward),
                            lambda w: dict(name="grpo", data=str(w.out / "data" / "grpo_prompts.jsonl")),
                            needs=cfg.rl_from, label=LABELS["grpo"])])
    if not cfg.stages:
        return every
    chosen = set(cfg.stages.split(","))
    unknown = sorted(chosen - {s.name for s in every})
    if unknown:
        raise ValueError(f"stages {unknown} are not stages of the safety lesson: {[s.name for s in every]}")
    chosen |= {s.needs for s in every if s.name in chosen and s.needs}
    return [s for s in every if s.name in chosen]


def evaluate(ckpt: str, out: Path, cfg: SafetyConfig, eval_cfg: EvalConfig, seed: int, device: str,
             threads: int) -> dict:
    """Greedy responses of the checkpoint to eval_cfg.n_problems held-out (test) prompts of each kind:
    evaluate.safety_metrics, the gold accuracy on plain and look-alike prompts ("accuracy/plain",
    "accuracy/lookalike", a refusal scoring 0) with binomial SEs, and cfg.n_samples_shown responses per kind."""
    set_threads(threads)
    model, _ = load_model(ckpt, get_device(device))
    tokenizer = load_tokenizer(model.config.tokenizer)
    responses, kinds, shown, metrics = [], [], {}, {}
    for kind in KINDS:
        problems = safety_problems(eval_cfg.n_problems, kind, "test", seed)
        said = generate_responses(model, tokenizer, [p["question"] for p in problems], fmt="chat",
                                  max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size)
        responses += said
        kinds += [kind] * len(said)
        shown[kind] = [{"question": p["question"], "response": r} for p, r in zip(problems, said)][:cfg.n_samples_shown]
        if kind != "forbidden":
            right = [safety_reward(r, ground_truth(p))["reward"] for p, r in zip(problems, said)]
            acc = sum(right) / len(right) if right else float("nan")
            metrics[f"accuracy/{kind}"] = acc
            metrics[f"accuracy/{kind}_se"] = (acc * (1 - acc) / len(right)) ** 0.5 if right else float("nan")
            metrics[f"accuracy/{kind}_answered"] = (sum(gold_reward(r, p["answer"])["reward"]
                                                        for p, r in zip(problems, said)) / len(said)) if said else 0.0
    return {**safety_metrics(responses, kinds), **metrics, "samples": shown}


def plot_frontier(out: Path, report: dict) -> Path:
    """frontier.png: violation rate against false-refusal rate, one point per policy, with 1-SE bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    for label, m in report["models"].items():
        ax.errorbar(100 * m["safety/false_refusal_rate"], 100 * m["safety/violation_rate"],
                    xerr=100 * m["safety/false_refusal_rate_se"], yerr=100 * m["safety/violation_rate_se"],
                    fmt="o", capsize=3, label=label)
    ax.set(xlabel="false-refusal rate on look-alikes (%)", ylabel="violation rate on forbidden requests (%)",
           title="safety tuning: the refusal frontier (lower left is better)", xlim=(-3, 103), ylim=(-3, 103))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    path = out / "frontier.png"
    fig.savefig(path, dpi=100)
    return path


def grpo_groups(metrics_path: Path) -> dict[str, dict[str, float]]:
    """GRPO's groups per prompt kind, summed over its logged steps (grpo.zero_variance_by_kind; the safety presets
    log every step): {kind: {"groups": n, "zero_variance": n with all rewards equal}}; {} without the file."""
    if not metrics_path.exists():
        return {}
    out: dict[str, dict[str, float]] = {}
    for record in read_metrics(metrics_path):
        for kind in KINDS:
            if f"groups/{kind}/n" in record:
                row = out.setdefault(kind, {"groups": 0.0, "zero_variance": 0.0})
                row["groups"] += record[f"groups/{kind}/n"]
                row["zero_variance"] += record[f"groups/{kind}/zero_variance"]
    return out


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[key]:.1f} ± {100 * m[key + '_se']:.1f}"


def write_report(out: Path, report: dict) -> Path:
    """report.md: the metric table (one row per policy), what each stage started from, seconds, and samples."""
    plot_frontier(out, report)
    n = report["eval_config"]["n_problems"]
    lines = [f"# Safety lesson: violations vs false refusals ({report['preset']}, seed {report['seed']})", "",
             f"Greedy responses to {n} held-out prompts of each kind (± binomial standard error); accuracy counts a "
             f"refusal as wrong. Plot: frontier.png.", "",
             "| policy | starts from | violation rate (%) | false-refusal rate (%) | plain refusal rate (%) | "
             "plain accuracy (%) | look-alike accuracy (%) |", "|---|---|---|---|---|---|---|"]
    starts = {s["label"]: s["needs"] for s in report["stages"].values()}
    labels = {name: s["label"] for name, s in report["stages"].items()}
    for label, m in report["models"].items():
        start = labels.get(starts.get(label, ""), starts.get(label, "—"))
        lines.append(f"| {label} | {start} | {_pct(m, 'safety/violation_rate')} | "
                     f"{_pct(m, 'safety/false_refusal_rate')} | {_pct(m, 'safety/plain_refusal_rate')} | "
                     f"{_pct(m, 'accuracy/plain')} | {_pct(m, 'accuracy/lookalike')} |")
    lines += ["", "| stage | wall s | CPU s (training + its evaluations in that process) |", "|---|---|---|"]
    lines += [f"| {k} | {_secs(v['wall_s'])} | {_secs(v['cpu_s'])} |" for k, v in report["seconds"].items()]
    lines += ["", f"Total: {report['wall_s_total']:.0f} s wall, {report['cpu_s_total']:.0f} CPU-s over "
                  f"{report['jobs']} job(s).", "", "## Responses (the first held-out prompts of each kind)", ""]
    for label, m in report["models"].items():
        lines.append(f"**{label}**")
        lines.append("")
        for kind, samples in m["samples"].items():
            for s in samples:
                response = s["response"].replace("\n", " / ")
                lines.append(f"- {kind}: {s['question']} → `{response}`")
        lines.append("")
    groups = grpo_groups(out / "grpo" / "metrics.jsonl")
    if groups:
        report["grpo_groups"] = groups
        (out / "report.json").write_text(json.dumps(report, indent=2))
        lines += ["## GRPO's groups by prompt kind (a group whose rewards are all equal gives no gradient)", "",
                  "| kind | groups | zero-variance groups | zero-variance (%) |", "|---|---|---|---|"]
        lines += [f"| {kind} | {g['groups']:.0f} | {g['zero_variance']:.0f} | "
                  f"{100 * g['zero_variance'] / max(g['groups'], 1):.1f} |" for kind, g in groups.items()]
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


LESSON = Lesson(name="safety", config=SafetyConfig, stages=stages, prepare=prepare, evaluate=evaluate,
                write_report=write_report)
