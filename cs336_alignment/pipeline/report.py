"""The pipeline's report: report.md (tables), the PNG plots, from the report dict that report.json also holds.

report.md: the policies' table, the reward model(s), best-of-N (with each reward model), GRPO against SFT and
against SFT trained further for the same CPU time (the matched-compute baseline), SFT's held-out accuracy along
training, the stage times.

Plots
  training_curves.png   one panel per stage: its loss and the metric the stage is for (SFT's held-out
                        accuracy, held-out RM accuracy against the annotator's ceiling, DPO's greedy
                        accuracy, RL's gold and proxy reward), against the optimizer step
  overoptimization.png  gold and proxy (reward-model) reward against sqrt(KL to SFT), for best-of-N and
                        along the RL runs against the reward model (PPO, GRPO; with --small-rm also against
                        the smaller one), and the mean response length (Gao et al. 2023, "Scaling Laws for
                        Reward Model Overoptimization", fig. 1)
  gold_vs_kl.png        what each method bought and what it cost: each policy's gold reward of temperature-1
                        samples (sampled accuracy, ± its paired standard error against SFT) against its KL to
                        SFT, one point per policy, and the best-of-N curve (N = 1 ... 64)
"""
from __future__ import annotations

import math
from pathlib import Path

from cs336_alignment.train.common import read_metrics

# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------

def plot_training_curves(out: Path, curves: dict[str, tuple]) -> Path:
    """training_curves.png: one panel per stage of `curves` that wrote a metrics.jsonl. curves: {stage: (left-axis
    metrics, right-axis metrics, left label, right label)}, in panel order (the stage table's `curves`)."""
    from matplotlib.figure import Figure


    stages = [s for s in curves if (out / s / "metrics.jsonl").is_file()]
    cols = min(4, max(1, len(stages)))
    rows = math.ceil(len(stages) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, stage in zip(axes, stages):
        records = read_metrics(out / stage / "metrics.jsonl")
        left, right, left_label, right_label = curves[stage]
        lines = []
        for key in left:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                lines += ax.plot(*zip(*points), "-" if "train" in key or "reward" in key else "o--", label=key)
        if right and any(k in r for r in records for k in right):
            twin = ax.twinx()
            for key, color in zip(right, ("tab:green", "tab:gray")):
                points = [(r["step"], r[key]) for r in records if key in r]
                if points:
                    lines += twin.plot(*zip(*points), "s:", color=color, label=key)
            twin.set_ylabel(right_label)
        ax.set(title=stage, xlabel="optimizer step", ylabel=left_label)
        ax.grid(alpha=0.3)
        ax.legend(handles=lines, fontsize=7, loc="best")
    for ax in axes[len(stages):]:
        ax.set_visible(False)
    path = out / "training_curves.png"
    fig.savefig(path, dpi=100)
    return path


def rl_points(records: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(eval points, per-step points) of an RL run's metrics.jsonl as (sqrt KL, gold, proxy, length) tuples.

    Eval lines measure the policy on held-out problems (eval/kl/ref: KL to SFT on its own samples); the
    per-step lines measure the training rollouts (kl/ref for PPO). Both are sorted by KL."""
    evals = [(math.sqrt(max(r["eval/kl/ref"], 0.0)), r["eval/reward/gold_mean"], r.get("eval/reward/proxy_mean"),
              r["eval/response/length_mean"]) for r in records
             if {"eval/kl/ref", "eval/reward/gold_mean", "eval/response/length_mean"} <= set(r)]
    steps = [(math.sqrt(max(r["kl/ref"], 0.0)), r["reward/gold_mean"], r.get("reward/proxy_mean"),
              r["response/length_mean"]) for r in records
             if {"kl/ref", "reward/gold_mean", "response/length_mean"} <= set(r)]
    return sorted(evals), sorted(steps)


def plot_overoptimization(out: Path, bon_runs: dict[str, list[dict]], rl_runs: dict[str, list[dict]],
                          title: str) -> Path:
    """overoptimization.png: gold and proxy reward (top) and mean length (bottom) against sqrt(KL to SFT), one
    column per best-of-N curve {title: its rows} (closed-form KL, exact averages; with the gold-oracle curve) and
    per RL run against a reward model {title: its metrics records} (its eval points as a line, its training
    rollouts as faint dots). No best-of-N curve: an empty best-of-N column."""
    from matplotlib.figure import Figure

    panels = [(name, [(math.sqrt(r["kl/ref"]), r["reward/gold_mean"], r["reward/proxy_mean"], r["response/length_mean"])
                      for r in rows], [], [(math.sqrt(r["kl/ref"]), r["reward/oracle_mean"]) for r in rows])
              for name, rows in (bon_runs or {"best-of-N (reward model)": []}).items()]
    panels += [(name, *rl_points(records), []) for name, records in rl_runs.items()]
    fig = Figure(figsize=(4.8 * len(panels), 6.4), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex="col")
    for col, (name, line, dots, oracle) in enumerate(panels):
        ax, ax_len = axes[0, col], axes[1, col]
        ax.set(title=name, ylabel="gold reward (accuracy)")
        ax_len.set(xlabel="sqrt(KL to SFT)  (sqrt nats)", ylabel="mean response length (tokens)")
        for a in (ax, ax_len):
            a.grid(alpha=0.3)
        if not line and not dots:
            continue
        twin = ax.twinx()
        twin.set_ylabel("proxy (reward-model) reward", color="tab:red")
        handles = []
        for points, style, alpha in ((dots, ".", 0.35), (line, "o-", 1.0)):
            if not points:
                continue
            x, gold, proxy, length = zip(*points)
            handles += ax.plot(x, gold, style, color="tab:blue", alpha=alpha, label="gold reward")
            if proxy[0] is not None:
                handles += twin.plot(x, proxy, style.replace("o", "s"), color="tab:red", alpha=alpha, label="proxy")
            ax_len.plot(x, length, style.replace("o", "d"), color="tab:purple", alpha=alpha)
        if oracle:
            handles += ax.plot(*zip(*oracle), "^:", color="tab:cyan", label="gold-oracle best-of-N (pass@N)")
        ax.legend(handles=handles[-3:], fontsize=7, loc="lower left")
    fig.suptitle(title)
    path = out / "overoptimization.png"
    fig.savefig(path, dpi=100)
    return path


def plot_gold_vs_kl(out: Path, report: dict) -> Path:
    """gold_vs_kl.png: for every chat policy of report["models"] (not the best-of-N rows), its sampled gold
    reward against its KL to SFT (nats per sequence), with the paired standard error of its difference to SFT
    as an error bar, and the best-of-N curve from report["bon"]["rows"]. The base model (raw format, no KL)
    is left out."""
    from matplotlib.figure import Figure

    se = {p["a"]: p["sampled"][1] for p in report.get("paired", []) if p["b"] == "SFT"}
    points = [(label, m["kl/ref"], m["reward/gold_mean"]) for label, m in report["models"].items()
              if not label.startswith("BoN-") and m.get("format") == "chat"
              and m.get("kl/ref") is not None and m.get("reward/gold_mean") is not None]
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    rows = report.get("bon", {}).get("rows", [])
    if rows:
        ax.plot([r["kl/ref"] for r in rows], [r["reward/gold_mean"] for r in rows], "^:", color="tab:gray",
                label="best-of-N (reward model), N = " + ", ".join(str(r["n"]) for r in rows))
    for i, (label, kl, gold) in enumerate(points):
        ax.errorbar([kl], [gold], yerr=[se.get(label, 0.0)], fmt="o", capsize=3, color=f"C{i}",
                    label="a policy (± paired standard error of its difference to SFT)" if i == 0 else None)
        ax.annotate(label, (kl, gold), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="KL to SFT (nats per sequence, on the policy's own samples)",
           ylabel="gold reward of T = 1 samples (sampled accuracy)",
           title="what each method bought (gold reward) and what it cost (KL to SFT)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = out / "gold_vs_kl.png"
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------

SFT_EVAL_KEYS = ("eval/loss", "eval/accuracy/greedy", "eval/reward/gold_mean")


def sft_progress(out: Path, stages: list[str]) -> dict:
    """SFT's held-out evals and training CPU time, from the metrics.jsonl of its phases `stages` (trained in the
    run, or copied with the shipped checkpoints).

    Returns:
        {"curve": [{"stage", "step", "eval/loss", "eval/accuracy/greedy", "eval/reward/gold_mean"}, ...] (the evals
        that measured accuracy), "cpu_s": process CPU seconds of training summed over the phases (perf/cpu_s),
        None when a phase did not log it}.
    """

    curve, cpu_s = [], 0.0
    for stage in stages:
        path = out / stage / "metrics.jsonl"
        records = read_metrics(path) if path.is_file() else []
        curve += [{"stage": stage, "step": r["step"], **{k: r.get(k) for k in SFT_EVAL_KEYS}} for r in records
                  if "eval/accuracy/greedy" in r]
        logged = [r["perf/cpu_s"] for r in records if "perf/cpu_s" in r]
        cpu_s = cpu_s + logged[-1] if logged and cpu_s is not None else None
    return {"curve": curve, "cpu_s": cpu_s}


def _matched_compute(report: dict, labels: dict[str, str]) -> list[str]:
    """GRPO against the gold reward vs SFT vs SFT trained further for GRPO's CPU time (labels: {stage: row})."""
    models, stages = report["models"], report["stages"]
    grpo, more = labels["grpo_gold"], labels["sft_baseline"]
    if grpo not in models or more not in models:
        return []

    def cpu(seconds: float | None, plus: str = "") -> str:
        return "CPU time not logged" if seconds is None else f"{plus}{seconds:.1f} s CPU"

    parts = [f"SFT {_pct(models['SFT']['accuracy/greedy'])} / {_pct(models['SFT']['reward/gold_mean'])} "
             f"({cpu(report['sft']['cpu_s'])} of SFT training)"]
    for label, stage in ((more, "sft_baseline"), (grpo, "grpo_gold")):
        parts.append(f"{label} {_pct(models[label]['accuracy/greedy'])} / {_pct(models[label]['reward/gold_mean'])} "
                     f"({cpu(stages[stage].get('train_cpu_s'), '+')}, {stages[stage]['steps']} steps)")
    paired = {(p["a"], p["b"]): p for p in report.get("paired", [])}
    verdicts = []
    for kind, key in (("greedy", "accuracy/greedy"), ("sampled", "reward/gold_mean")):
        above = models[grpo][key] > max(models["SFT"][key], models[more][key])
        gaps = [paired[(grpo, b)][kind] for b in ("SFT", more) if (grpo, b) in paired]
        clear = len(gaps) == 2 and all(mean > 2 * se for mean, se in gaps)
        verdicts.append(f"{kind} {'yes' if above else 'no'}" + (
            f" ({'more' if clear else 'not more'} than 2 paired standard errors above both)" if gaps else ""))
    return ["", "**GRPO vs SFT vs matched-compute SFT** (greedy accuracy / T = 1 sampled accuracy, training CPU "
            "time): " + "; ".join(parts) + ". GRPO above both: " + ", ".join(verdicts) + "."]


def _expert_iteration(report: dict, labels: dict[str, str]) -> list[str]:
    """Expert iteration against GRPO (gold): the same verifier, as many samples (the preset's ei section)."""
    models, stages = report["models"], report["stages"]
    ei, grpo = labels["ei"], labels["grpo_gold"]
    if ei not in models or grpo not in models:
        return []
    parts = [f"{label} {_pct(models[label]['accuracy/greedy'])} / {_pct(models[label]['reward/gold_mean'])}, "
             f"worked share {_pct(models[label].get('response/worked_share'))} ({stages[stage]['steps']} "
             f"{unit}, {stages[stage].get('train_cpu_s', 0.0):.1f} s training CPU)"
             for label, stage, unit in ((ei, "ei", "rounds"), (grpo, "grpo_gold", "steps"))]
    paired = {(p["a"], p["b"]): p for p in report.get("paired", [])}
    gap = ""
    if (ei, grpo) in paired:
        mean, se = paired[(ei, grpo)]["sampled"]
        gap = f"; expert iteration − GRPO (gold), sampled: {100 * mean:+.1f} ± {100 * se:.1f} points"
    return ["", "**Expert iteration vs GRPO (gold)** (both against the gold reward, with as many sampled responses; "
            "greedy accuracy / T = 1 sampled accuracy): " + "; ".join(parts) + gap + "."]


def _paired(report: dict) -> list[str]:
    """Differences between policies on the same test problems, with paired standard errors."""
    if not report.get("paired"):
        return []
    lines = ["", "**Differences on the same test problems** (percentage points ± paired standard error, "
             "metrics.paired_difference; beyond ~2 standard errors a difference is unlikely to be evaluation "
             "noise):", "", "| policy a − policy b | greedy accuracy | sampled accuracy |", "|---|---|---|"]
    for p in report["paired"]:
        cells = [f"{100 * mean:+.1f} ± {100 * se:.1f}" for mean, se in (p["greedy"], p["sampled"])]
        lines.append(f"| {p['a']} − {p['b']} | {cells[0]} | {cells[1]} |")
    return lines


def _sft_curve(report: dict) -> list[str]:
    """SFT's held-out accuracy at each of its evals: where more SFT stops helping."""
    curve = report["sft"]["curve"]
    if not curve:
        return []
    lines = ["", f"**SFT held-out accuracy along training** ({report['sft']['n_eval_problems']} test "
             "problems of SFT's own eval; sampled: 2 temperature-1 answers per problem):", "",
             "| phase | step | held-out loss | greedy accuracy | sampled accuracy |", "|---|---|---|---|---|"]
    for r in curve:
        lines.append(f"| {r['stage']} | {r['step']} | {_num(r['eval/loss'], '.4f')} | "
                     f"{_pct(r['eval/accuracy/greedy'])} | {_pct(r['eval/reward/gold_mean'])} |")
    return lines


def _pct(p: float | None, n: int | None = None) -> str:
    if p is None:
        return "—"
    if n is None:
        return f"{100 * p:.1f}%"
    return f"{100 * p:.1f}% ± {100 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)):.1f}"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def _reward_model(rm: dict, title: str) -> list[str]:
    """A reward model's line: its pairs, held-out accuracy against the label ceiling, and whether it checks
    answers (against the SFT policy's own likelihood)."""
    lines = ["", f"**{title}** ({rm['n_pairs']} training pairs, {rm['n_eval_pairs']} held-out pairs on test "
             f"prompts): held-out pairwise accuracy {_pct(rm.get('eval/rm/accuracy'))}, ECE "
             f"{_num(rm.get('eval/rm/ece'))}; the annotator's own utility orders "
             f"{_pct(rm.get('eval/rm/ceiling_accuracy'))} of those labels (the noise ceiling), the gold reward alone "
             f"{_pct(rm.get('eval/rm/gold_accuracy'))}."]
    if rm.get("eval/rm/correct_preferred") is not None and rm.get("eval/rm/sft_correct_preferred") is not None:
        lines[-1] += (f" Does it check answers? On the {_pct(rm.get('eval/rm/gold_pairs'))} of held-out pairs where "
                      f"one response is correct and the other is not, it scores the correct one higher "
                      f"{_pct(rm['eval/rm/correct_preferred'])} of the time; the SFT policy's own mean token "
                      f"log-prob does so {_pct(rm['eval/rm/sft_correct_preferred'])} of the time.")
    return lines


def _best_of_n(bon: dict, selector: str) -> list[str]:
    """A best-of-N table (samples selected by `selector`): per N its closed-form KL, proxy and gold reward, the
    gold gain over N = 1 and the difference to the peak N (each ± its paired SE over prompts), pass@N, length,
    prose lines and distinct-2."""
    lines = ["", f"**Best-of-N** with {selector}, exact average over all N-subsets of {bon['pool_size']} samples "
             f"for each of {bon['n_prompts']} test prompts:", "",
             "| N | KL (closed form) | proxy | gold | gold − N = 1 (± paired SE over prompts) "
             "| gold − peak N (± paired SE) | gold-oracle (pass@N) | length | prose lines | distinct-2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bon["rows"]:
        gain, drop = ((f"{100 * r[k]:+.1f} ± {100 * r[k + '_se']:.1f}" if k in r else "—")
                      for k in ("reward/gold_gain", "reward/gold_minus_peak"))
        lines.append(f"| {r['n']} | {r['kl/ref']:.2f} | {r['reward/proxy_mean']:.3f} | {_pct(r['reward/gold_mean'])} "
                     f"| {gain} | {drop} | {_pct(r['reward/oracle_mean'])} | {r['response/length_mean']:.1f} | "
                     f"{_num(r.get('response/prose_lines_mean'), '.2f')} | {r['response/distinct_2']:.3f} |")
    return lines


def write_report(out: Path, report: dict, labels: dict[str, str]) -> Path:
    """report.md from the report dict (report.json holds the same numbers); labels: {stage: its policy's row}."""
    n, n_s = report["n_test_problems"], report["n_sampled"]
    lines = [f"# Pipeline report: {report['name']} (preset `{report['preset']}`)", "",
             f"Held-out test split of the task world. **gold accuracy**: greedy answers to {n} problems "
             f"(± one standard error). The other columns are measured on {n_s} temperature-1 samples ({n_s // n} per "
             "problem): "
             "**mean gold reward**, **proxy** (the reward model's score), **KL to SFT** (mean over the "
             "policy's own samples of log pi - log pi_SFT, summed over the response, nats; for best-of-N the "
             "closed form log N - (N-1)/N), **length** (tokens), **prose lines** (per response: lines that are "
             "neither a step nor the final `#### N`, tasks.prose_lines), **distinct-2** and the **worked share** "
             "(responses that show a step `x op y = z`, tasks.is_worked) with the mean gold reward **within the "
             "worked** samples (± its binomial standard error). Annotator: "
             f"tau = {report['annotator']['tau']}, length bias = {report['annotator']['length_bias']} per token.",
             "", "| policy | gold accuracy | mean gold reward | proxy (RM) reward | KL to SFT | length | prose lines | "
             "distinct-2 | worked share | gold within worked |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in report["models"].items():
        share, within = m.get("response/worked_share"), m.get("reward/gold_mean_worked")
        lines.append(f"| {label} | {_pct(m.get('accuracy/greedy'), n)} | {_pct(m.get('reward/gold_mean'))} | "
                     f"{_num(m.get('reward/proxy_mean'))} | {_num(m.get('kl/ref'), '.2f')} | "
                     f"{_num(m.get('response/length_mean'), '.1f')} | {_num(m.get('response/prose_lines_mean'), '.2f')} | "
                     f"{_num(m.get('response/distinct_2'))} | "
                     f"{_pct(share)} | {_pct(within, share * n_s if share else None)} |")
    for stage, title in (("rm", "Reward model"), ("rm_small", "Small reward model")):
        if stage in report:
            lines += _reward_model(report[stage], title)
    for stage, selector in (("bon", "the reward model"), ("bon_small", "the small reward model")):
        if stage in report:
            lines += _best_of_n(report[stage], selector)
    lines += _paired(report) + _matched_compute(report, labels) + _expert_iteration(report, labels)
    lines += _sft_curve(report)
    lines += ["", "**Stage times** (CPU time: of the process that ran the stage, evaluations included; training: the "
              "loop's own count, evaluations excluded):", "",
              "| stage | steps | wall time | CPU time | training CPU time |", "|---|---|---|---|---|"]
    for stage, s in report["stages"].items():
        training = f"{s['train_cpu_s']:.0f} s" if "train_cpu_s" in s else "—"
        lines.append(f"| {stage} | {s.get('steps', '')} | {s['wall_s']:.0f} s | {s['cpu_s']:.0f} s | {training} |")
    lines += ["", f"Total wall time: {report['wall_s_total']:.0f} s, CPU time {report['cpu_s_total']:.0f} s summed "
              f"over this process and its workers (--jobs {report['jobs']}, {report['threads']} thread(s) each, "
              f"device {report['device']}). Stages in different workers run at the same time, so their wall times "
              "overlap; a wall time well above the CPU time means the stage waited for a CPU.", "",
              "![training curves](training_curves.png)", "", "![over-optimisation](overoptimization.png)", "",
              "![gold reward against KL to SFT](gold_vs_kl.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
