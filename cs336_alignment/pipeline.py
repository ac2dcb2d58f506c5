"""The main job: pretrain -> SFT -> evaluation on the task world, then a report.

    python -m cs336_alignment pipeline                    # preset tiny (default): < 10 min on 2 CPU cores
    python -m cs336_alignment pipeline --preset smoke     # < 1 min; the end-to-end test runs this
    python -m cs336_alignment pipeline --preset small     # one GPU: a larger model, longer training

Writes runs/<name>/ (or --out DIR):
    pretrain/ckpt.pt, pretrain/metrics.jsonl    the base model (raw text, no chat template)
    sft/ckpt.pt, sft/metrics.jsonl              the SFT model (chat demonstrations, loss on the assistant)
    report.md, report.json                      base vs SFT on the held-out test split, wall time per stage
    loss_curves.png                             loss/train and loss/eval of both stages

The base model is evaluated in the raw "Question: ... Answer:" format it was pretrained on, and the SFT
model in the chat template. The comparison then measures what SFT adds beyond learning the template.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from cs336_alignment.train.common import run_dir

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
    # --- sft
    sft_examples: int
    sft_steps: int
    sft_batch_size: int
    sft_lr: float
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
                    sft_examples=64, sft_steps=8, sft_batch_size=8, sft_lr=1e-3,
                    eval_problems=16, eval_batch_size=16, max_new_tokens=16, log_every=4, eval_every=4),
    # The laptop run (measured figures in the README).
    "tiny": Preset(context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384,
                   pretrain_problems=20000, pretrain_steps=500, pretrain_batch_size=16, pretrain_lr=3e-3,
                   sft_examples=4000, sft_steps=400, sft_batch_size=32, sft_lr=3e-3,
                   eval_problems=500, eval_batch_size=100, max_new_tokens=48, log_every=25, eval_every=100),
    # One GPU: 4x wider, 2x deeper, many more steps.
    "small": Preset(context_length=256, d_model=384, num_layers=8, num_heads=6, d_ff=1024,
                    pretrain_problems=200000, pretrain_steps=4000, pretrain_batch_size=64, pretrain_lr=1e-3,
                    sft_examples=50000, sft_steps=2000, sft_batch_size=64, sft_lr=3e-4,
                    eval_problems=2000, eval_batch_size=250, max_new_tokens=64, log_every=50, eval_every=500),
}


def stage_configs(preset: Preset, out: Path, seed: int, device: str, threads: int):
    """The PretrainConfig and SFTConfig a preset stands for (the stages' own defaults elsewhere)."""
    from cs336_alignment.train.pretrain import PretrainConfig
    from cs336_alignment.train.sft import SFTConfig

    p = preset
    common = dict(seed=seed, device=device, threads=threads, log_every=p.log_every, eval_every=p.eval_every,
                  context_length=p.context_length, d_model=p.d_model, num_layers=p.num_layers,
                  num_heads=p.num_heads, d_ff=p.d_ff)  # SFT reads the model shape from its init checkpoint
    pretrain = PretrainConfig(out=str(out / "pretrain"), n_problems=p.pretrain_problems, num_steps=p.pretrain_steps,
                              batch_size=p.pretrain_batch_size, lr=p.pretrain_lr, min_lr=p.pretrain_lr / 10,
                              warmup_steps=max(1, p.pretrain_steps // 10), checkpoint_every=p.pretrain_steps,
                              **common)
    # SFT draws its demonstrations with another seed than pretraining: mostly new questions.
    sft = SFTConfig(out=str(out / "sft"), init=str(out / "pretrain" / "ckpt.pt"), n_examples=p.sft_examples,
                    num_steps=p.sft_steps, batch_size=p.sft_batch_size, lr=p.sft_lr, min_lr=p.sft_lr / 10,
                    warmup_steps=max(1, p.sft_steps // 20), checkpoint_every=p.sft_steps,
                    **{**common, "seed": seed + 1})
    return pretrain, sft


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def plot_loss_curves(out: Path, stages: list[str]) -> Path:
    """loss_curves.png: one panel per stage, loss/train and loss/eval against the optimizer step."""
    from matplotlib.figure import Figure  # the object API: renders with Agg, touches no global backend

    from cs336_alignment.train.common import read_metrics

    fig = Figure(figsize=(5 * len(stages), 3.6), layout="constrained")
    for ax, stage in zip(fig.subplots(1, len(stages), squeeze=False)[0], stages):
        records = read_metrics(out / stage / "metrics.jsonl")
        for key, style in (("loss/train", "-"), ("loss/eval", "o--")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), style, label=key)
        ax.set(title=stage, xlabel="optimizer step",
               ylabel="loss (nats / token)" if stage == "pretrain" else "loss (nats / response token)")
        ax.grid(alpha=0.3)
        ax.legend()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=110)
    return path


def _pct(p: float, n: int) -> str:
    """A rate with one standard error, e.g. "61.2% ± 2.2"."""
    return f"{100 * p:.1f}% ± {100 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)):.1f}"


def write_report(out: Path, report: dict) -> Path:
    """report.md from the report dict (report.json holds the same numbers)."""
    n = report["n_test_problems"]
    lines = [f"# Pipeline report: {report['name']} (preset `{report['preset']}`)", "",
             f"Held-out test split of the task world: **{n} problems**, greedy decoding. The base model is prompted "
             "in the raw `Question: ... Answer:` format it was pretrained on, the SFT model in the chat template. "
             "Rates are given with one standard error.", "",
             "| model | prompt format | gold accuracy | format rate | mean length (tokens) |",
             "|---|---|---|---|---|"]
    for label, m in report["models"].items():
        lines.append(f"| {label} | {m['format']} | {_pct(m['reward/gold_mean'], n)} | "
                     f"{_pct(m['reward/format_mean'], n)} | {m['response/length_mean']:.1f} |")
    lines += ["", "| stage | steps | loss/train | loss/eval | wall time | CPU time |", "|---|---|---|---|---|---|"]
    for stage, s in report["stages"].items():
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {stage} | {s.get('steps', '')} | {fmt(s.get('loss/train'))} | {fmt(s.get('loss/eval'))} "
                     f"| {s['wall_s']:.0f} s | {s['cpu_s']:.0f} s |")
    lines += ["", f"Total wall time: {report['wall_s_total']:.0f} s ({report['threads']} thread(s), device "
              f"{report['device']}). CPU time is this process's; wall time above it means the CPU was shared.", "",
              "![loss curves](loss_curves.png)", "", "## Samples (first test problems)", ""]
    for sample in report["samples"]:
        lines += [f"**Q:** {sample['question']}  ", f"**gold:** `{sample['answer'].splitlines()[-1]}`", ""]
        for label in report["models"]:
            text = sample[label]["response"].replace("\n", " ⏎ ")
            lines.append(f"- {label} (reward {sample[label]['reward']:.0f}): `{text}`")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------


def run(preset_name: str = "tiny", out: str = "", name: str = "", threads: int = 1, device: str = "auto",
        seed: int = 0) -> dict:
    """pretrain -> sft -> eval; returns the report dict (also written to report.json)."""
    from cs336_alignment.evaluate import evaluate_model
    from cs336_alignment.tasks import generate_problems
    from cs336_alignment.tokenizer import load_tokenizer
    from cs336_alignment.train import pretrain, sft
    from cs336_alignment.train.common import get_device, load_model, set_threads

    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset, name = PRESETS[preset_name], name or preset_name
    out_dir = run_dir(name, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(threads)
    pretrain_cfg, sft_cfg = stage_configs(preset, out_dir, seed, device, threads)
    stages: dict[str, dict] = {}
    t_start = time.perf_counter()

    # --- 1. pretrain the base model on raw text
    t0, c0 = time.perf_counter(), time.process_time()
    stages["pretrain"] = pretrain.train(pretrain_cfg)
    stages["pretrain"].update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)

    # --- 2. SFT on chat demonstrations, from the base model
    t0, c0 = time.perf_counter(), time.process_time()
    stages["sft"] = sft.train(sft_cfg)
    stages["sft"].update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)

    # --- 3. evaluate both on the held-out test split
    t0, c0 = time.perf_counter(), time.process_time()
    torch_device = get_device(device)
    tokenizer = load_tokenizer()
    problems = generate_problems(preset.eval_problems, "test", seed)
    models, samples = {}, {}
    for label, stage, fmt in (("base", "pretrain", "raw"), ("SFT", "sft", "chat")):
        model, _ = load_model(stages[stage]["checkpoint"], torch_device)
        metrics, samples[label] = evaluate_model(model, tokenizer, problems, fmt=fmt,
                                                 max_new_tokens=preset.max_new_tokens,
                                                 batch_size=preset.eval_batch_size)
        models[label] = {"format": fmt, **metrics}
        print(f"eval {label} ({fmt}): " + " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    stages["eval"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    report = {"name": name, "preset": preset_name, "seed": seed, "threads": threads, "device": str(torch_device),
              "n_test_problems": len(problems), "models": models,
              "stages": {k: {kk: vv for kk, vv in v.items() if kk != "checkpoint"} for k, v in stages.items()},
              "wall_s_total": time.perf_counter() - t_start, "preset_config": dataclasses.asdict(preset),
              "samples": [{"question": p["question"], "answer": p["answer"],
                           **{label: {"response": samples[label][i]["response"],
                                      "reward": samples[label][i]["reward"]} for label in models}}
                          for i, p in enumerate(problems[:3])]}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_loss_curves(out_dir, ["pretrain", "sft"])
    path = write_report(out_dir, report)
    print(f"wrote {path}, {out_dir / 'report.json'} and {out_dir / 'loss_curves.png'} "
          f"({report['wall_s_total']:.0f} s in all)")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment pipeline", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="smoke (< 1 min), tiny (< 10 min on 2 CPU cores), small (one GPU)")
    parser.add_argument("--name", default="", help="run name: outputs go to runs/<name>/; empty = the preset's name")
    parser.add_argument("--out", default="", help="output directory; empty = runs/<name>")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling")
    args = parser.parse_args(argv)
    return run(args.preset, args.out, args.name, args.threads, args.device, args.seed)


if __name__ == "__main__":
    main()
