"""Small matplotlib helpers shared by the walkthrough notebooks (notebooks/*.ipynb).

  * `show_tokens`: a token sequence drawn as a row-wrapped strip of boxes, coloured by a boolean mask (e.g. the
    SFT loss mask) or by a value per token (e.g. entropy or -log p), so a picture shows which tokens count.
  * `plot_metric`: one metric of a training loop's metrics.jsonl against the step.
  * `main`: `python -m cs336_alignment plot RUN_DIR... --metric KEY --out PNG`, the writeup's experiment plots.

Nothing here is graded, and nothing here computes a loss: the notebooks import the package for that.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt


def _printable(piece: str) -> str:
    """A token's text with whitespace made visible: ' ' -> '·', newline -> '⏎'."""
    return piece.replace(" ", "·").replace("\n", "⏎").replace("\t", "→") or "∅"


def show_tokens(ax, pieces: Sequence[str], mask: Sequence[bool] | None = None, values: Sequence[float] | None = None,
                *, per_row: int = 16, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                label: str = "", title: str = ""):
    """Draw tokens as boxes, `per_row` to a row, filled by `mask` (orange = True) or by `values` (a colour map).

    Args:
        ax: a matplotlib Axes (its ticks are hidden).
        pieces: the text of each token (e.g. [tokenizer.decode([i]) for i in ids]).
        mask: one bool per token; True boxes are orange, False grey. Ignored when `values` is given.
        values: one float per token, coloured with `cmap` between vmin and vmax (default: their range);
            a colour bar labelled `label` is added.
    Returns:
        the ScalarMappable of the colour map (values given) or None.
    """
    n = len(pieces)
    rows = (n + per_row - 1) // per_row
    mappable = None
    if values is not None:
        norm = mcolors.Normalize(vmin=min(values) if vmin is None else vmin, vmax=max(values) if vmax is None else vmax)
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        colours = [mappable.to_rgba(v) for v in values]
    else:
        mask = [False] * n if mask is None else list(mask)
        colours = ["#f4a261" if m else "#e9ecef" for m in mask]
    for i, (piece, colour) in enumerate(zip(pieces, colours)):
        row, col = divmod(i, per_row)
        ax.add_patch(plt.Rectangle((col, -row), 0.95, 0.9, facecolor=colour, edgecolor="#6c757d", linewidth=0.5))
        dark = values is not None and sum(mcolors.to_rgb(colour)) < 1.5
        ax.text(col + 0.47, -row + 0.45, _printable(piece), ha="center", va="center", fontsize=7,
                color="white" if dark else "black", clip_on=True)
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 0.9, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if mappable is not None:
        ax.figure.colorbar(mappable, ax=ax, label=label, fraction=0.03, pad=0.01)
    elif mask is not None:
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="#f4a261"), plt.Rectangle((0, 0), 1, 1, color="#e9ecef")],
                  labels=[label or "mask True", "mask False"], loc="upper right", bbox_to_anchor=(1.0, 1.25),
                  ncol=2, fontsize=8, frameon=False)
    return mappable


def plot_metric(ax, records: Sequence[dict], key: str, *, x: str = "step", label: str | None = None, **style):
    """Plot records[i][key] against records[i][x] for the records that have both (a metrics.jsonl, read with
    `cs336_alignment.train.common.read_metrics`). Returns the Line2D, or None when no record has the key."""
    points = [(r[x], r[key]) for r in records if key in r and x in r]
    if not points:
        return None
    xs, ys = zip(*points)
    (line,) = ax.plot(xs, ys, label=label or key, **style)
    return line


# ---------------------------------------------------------------------------------------------------------
# python -m cs336_alignment plot RUN_DIR... --metric KEY --out PNG  (the writeup's experiment plots)
# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Plot one metric of several runs (each a directory with metrics.jsonl, or the file) against `--x`."""
    plt.switch_backend("Agg")                       # a file, never a window

    p = argparse.ArgumentParser(prog="python -m cs336_alignment plot", description=main.__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl files)")
    p.add_argument("--metric", action="append", required=True, help="metric key, e.g. eval/accuracy/greedy "
                   "(repeat for one panel per metric)")
    p.add_argument("--x", default="step", help="x-axis key (default: step)")
    p.add_argument("--out", type=Path, default=Path("plot.png"), help="PNG file to write")
    args = p.parse_args(argv)
    fig, axes = plt.subplots(1, len(args.metric), figsize=(5.5 * len(args.metric), 3.8), squeeze=False)
    for run in args.runs:
        path = run / "metrics.jsonl" if run.is_dir() else run
        if not path.exists():
            print(f"error: {path}: no metrics.jsonl (did the run write to this --out?)")
            return 2
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for ax, key in zip(axes[0], args.metric):
            if plot_metric(ax, records, key, x=args.x, label=run.name, marker=".") is None:
                print(f"warning: {path}: no record has both {key!r} and {args.x!r}")
    for ax, key in zip(axes[0], args.metric):
        ax.set(xlabel=args.x, ylabel=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0
