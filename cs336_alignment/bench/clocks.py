"""Timing on shared cores: each step by its thread's CPU time and by wall time, sides interleaved, medians, spread.

On a machine whose cores other jobs share, the wall time of a step includes the time the thread waited for a
core, so two runs of the same code scatter (by ±15 % between runs of `bench peers` on 2 shared cores). The CPU
time of the thread (`time.thread_time`, one thread per side) counts only the time it ran, so it moves far less
with the load; it still moves somewhat (caches and memory bandwidth are shared too). So the benches:

  * run the sides alternately, the order reversed every round (A B, B A, ...), over the same inputs;
  * record both clocks for every step and take the median of each;
  * give the ratio of medians (ours / peer) on both clocks, and the spread of the CPU ratio: the standard
    deviation of the ratio of medians over bootstrap resamples of the rounds (Efron & Tibshirani 1993, ch. 6),
    an estimate of how far a second run of the same code would land;
  * print the load average (os.getloadavg) before and after.
"""
from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Sequence


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of one call of fn()."""
    c0, w0 = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - c0, time.perf_counter() - w0


def load_average() -> str:
    """The 1-minute load average as text ("n/a" where the OS has none)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "n/a"


def bootstrap_spread(ours: Sequence[float], peer: Sequence[float], resamples: int = 1000, seed: int = 0) -> float:
    """Standard deviation of median(ours)/median(peer) over resamples of the rounds (pairs kept together).

    ours[i] and peer[i] are the times of round i (same input, measured back to back). Returns 0.0 for < 2 rounds.
    """
    n = len(ours)
    if n < 2:
        return 0.0
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(ours[i] for i in idx) / statistics.median(peer[i] for i in idx))
    return statistics.pstdev(ratios)


def compare(name: str, times: dict[str, list[tuple[float, float]]], base: str = "peer") -> dict:
    """Summarise per-step (cpu, wall) times of each side against `base`: medians, ratios, spread.

    Returns {"name", "times" (the input), "<side>_cpu_s", "<side>_wall_s" for every side, and for every other side "<side>_ratio"
    (CPU clock), "<side>_ratio_wall", "<side>_spread" (bootstrap sd of the CPU ratio)}; with a side "ours",
    also "ratio", "ratio_wall" and "spread" for it.
    """
    row: dict = {"name": name, "times": times}
    for side, ts in times.items():
        row[f"{side}_cpu_s"] = statistics.median(t[0] for t in ts)
        row[f"{side}_wall_s"] = statistics.median(t[1] for t in ts)
    for side, ts in times.items():
        if side == base:
            continue
        cpu, base_cpu = [t[0] for t in ts], [t[0] for t in times[base]]
        row[f"{side}_ratio"] = row[f"{side}_cpu_s"] / row[f"{base}_cpu_s"]
        row[f"{side}_ratio_wall"] = row[f"{side}_wall_s"] / row[f"{base}_wall_s"]
        row[f"{side}_spread"] = bootstrap_spread(cpu, base_cpu)
    if "ours_ratio" in row:
        row["ratio"], row["ratio_wall"], row["spread"] = row["ours_ratio"], row["ours_ratio_wall"], row["ours_spread"]
    return row


def interleave(name: str, sides: Sequence, step: Callable, inputs: Sequence, repeats: int, warmup: int = 2) -> dict:
    """Run step(side, inputs[i % len(inputs)]) for every side in turn, the order reversed every round.

    Each side has `.name` and, after a step, `.last` = (loss, grad_norm) for the step-wise check against the
    side named "peer". Returns compare()'s row plus "loss_rel_diff", "grad_norm_rel_diff" (largest relative
    differences ours vs peer over all rounds, warm-up included) and "steps_compared".
    """
    times: dict[str, list[tuple[float, float]]] = {s.name: [] for s in sides}
    trace: dict[str, list[tuple[float, float]]] = {s.name: [] for s in sides}
    for i in range(warmup + repeats):
        for s in (sides if i % 2 == 0 else sides[::-1]):
            t = timed(lambda: step(s, inputs[i % len(inputs)]))
            if i >= warmup:
                times[s.name].append(t)
            trace[s.name].append(s.last)
    row = compare(name, times)
    diffs = [(abs(a[0] - b[0]) / max(abs(b[0]), 1e-12), abs(a[1] - b[1]) / max(abs(b[1]), 1e-12))
             for a, b in zip(trace["ours"], trace["peer"])]
    row.update(loss_rel_diff=max(d[0] for d in diffs), grad_norm_rel_diff=max(d[1] for d in diffs),
               steps_compared=len(diffs))
    return row


def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """Single-thread float32 matmul FLOP/s by thread CPU time: the best of `repeats` (n x n) @ (n x n) products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    return 2 * n ** 3 / min(timed(lambda: a @ b)[0] for _ in range(repeats))


class Rows(list):
    """compare()/interleave() rows, each printed as it is appended (a crash later keeps what was measured): CPU
    medians, the CPU ratio ours / peer ± its spread, the wall ratio, and for a third side ("ours+variant") its
    ratio to the peer and to ours ± that spread; then the step-wise check or the sampled token counts."""

    def append(self, r: dict) -> None:
        alt = next((k[:-len("_ratio")] for k in r if k.endswith("_ratio") and k not in ("ours_ratio",)), None)
        if not self:
            print(f"{'what':<9}{'ours cpu':>9}{'peer cpu':>9}{'ratio':>7}{'±':>6}{'wall':>6}"
                  + (f"  {'variant':>7}{'vs ours':>8}{'±':>6}" if alt else "") + "  check")
        check = (f"{r['steps_compared']} steps: loss rel diff {r['loss_rel_diff']:.1e}, grad norm "
                 f"{r['grad_norm_rel_diff']:.1e}" if "steps_compared" in r else
                 "new tokens " + ", ".join(f"{k} {v}" for k, v in r["tokens"].items()))
        cells = f"{r['ours_cpu_s']:>9.4f}{r['peer_cpu_s']:>9.4f}{r['ratio']:>7.2f}{r['spread']:>6.2f}{r['ratio_wall']:>6.2f}"
        if alt:
            vs = compare(r["name"], {"ours": r["times"]["ours"], alt: r["times"][alt]}, base="ours")
            r[f"{alt}_vs_ours"], r[f"{alt}_vs_ours_spread"] = vs[f"{alt}_ratio"], vs[f"{alt}_spread"]
            cells += f"  {r[alt + '_ratio']:>7.2f}{vs[alt + '_ratio']:>8.3f}{vs[alt + '_spread']:>6.3f}"
        print(f"{r['name']:<9}{cells}  {check}", flush=True)
        super().append(r)
