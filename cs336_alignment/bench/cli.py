"""Benchmarks that print ratios against a baseline measured in the same run.

    python -m cs336_alignment bench generate   # KV-cache generation vs recomputing the prefix; dropping finished rows
    python -m cs336_alignment bench logprobs   # fused log-prob kernels vs naive / F.cross_entropy / native
    python -m cs336_alignment bench ddp        # one stage at 1 vs N torchrun processes (bench_ddp.py)
    python -m cs336_alignment bench peers      # vs transformers + TRL (optional extra), see bench_peers.py
    python -m cs336_alignment bench lora       # LoRA vs full fine-tuning (lora_bench.py)
    python -m cs336_alignment bench gpu        # bf16 SFT/GRPO steps, full vs LoRA, sampling; NCCL (bench/gpu.py)

Timings on shared CPUs vary 10-40% run to run: read the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import os

# Must be set before torch is imported: OpenMP's default busy-wait makes small parallel ops cost ~ms each.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cs336_alignment.bench.peers import add_parser as add_peers_parser  # noqa: E402 (after the environ)
from cs336_alignment.logprobs import fused_linear_log_probs, naive_linear_log_probs  # noqa: E402
from cs336_alignment.lm.generation import generate  # noqa: E402
from cs336_alignment.bench import ddp as bench_ddp  # noqa: E402
from cs336_alignment.lm.model import TransformerConfig, TransformerLM  # noqa: E402
from cs336_alignment.bench import lora as lora_bench  # noqa: E402
from cs336_alignment.bench import gpu as bench_gpu  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# bench generate  (filled by the model work)
# ---------------------------------------------------------------------------------------------------------

def bench_generate(args: argparse.Namespace) -> None:
    """Greedy generation from a tiny random TransformerLM, with and without the KV cache; then rows of uneven
    length, with finished rows dropped from the batch or kept in it.

    Without a cache every step re-runs the whole prefix (O(T²) work for T new tokens); with it each step runs
    one token per row against the stored keys/values. Rows that stop early (here: a limit per row, uniform in
    1..new_tokens, like responses that end at different lengths) cost nothing once dropped. Each pair must
    produce identical tokens.
    """
    import statistics
    import time

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=512, context_length=512, d_model=128, num_layers=4, num_heads=4,
                               d_ff=384)
    model = TransformerLM(config).eval()
    g = torch.Generator().manual_seed(0)
    prompt_lengths = torch.randint(24, 41, (args.batch_size,), generator=g).tolist()  # ~32 tokens, left-padded
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in prompt_lengths]

    def run(use_kv_cache: bool) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = generate(model, prompts, max_new_tokens=args.new_tokens, temperature=0.0, use_kv_cache=use_kv_cache)
        return time.perf_counter() - start, out.tokens

    run(True)  # warm-up (allocator, first-call overheads)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[list[int]]] = {}
    for _ in range(args.repeats):
        for use_kv_cache in (False, True):
            elapsed, tokens[use_kv_cache] = run(use_kv_cache)
            seconds[use_kv_cache].append(elapsed)
    assert tokens[True] == tokens[False], "KV-cache and full-recompute generation disagree"

    n_new = sum(len(t) for t in tokens[True])
    median = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"bench generate: {model.num_params() / 1e6:.2f}M params, batch {args.batch_size}, prompts "
          f"{min(prompt_lengths)}-{max(prompt_lengths)} tokens, {args.new_tokens} new tokens (greedy), "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'method':<16}{'seconds':>10}{'tokens/s':>12}")
    for name, key in (("no cache", False), ("KV cache", True)):
        print(f"{name:<16}{median[key]:>10.3f}{n_new / median[key]:>12.0f}")
    print(f"speed-up (no cache / KV cache): {median[False] / median[True]:.2f}x; identical tokens: yes")

    limits = torch.randint(1, args.new_tokens + 1, (args.batch_size,), generator=g).tolist()

    def run_uneven(drop_finished: bool) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = generate(model, prompts, max_new_tokens=limits, temperature=0.0, drop_finished=drop_finished)
        return time.perf_counter() - start, out.tokens

    seconds = {True: [], False: []}
    for _ in range(args.repeats):
        for drop_finished in (False, True):
            elapsed, tokens[drop_finished] = run_uneven(drop_finished)
            seconds[drop_finished].append(elapsed)
    assert tokens[True] == tokens[False], "dropping finished rows changed the tokens"
    median = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"rows of uneven length (limits 1-{args.new_tokens}, mean {sum(limits) / len(limits):.0f}), KV cache:")
    for name, key in (("keep finished", False), ("drop finished", True)):
        print(f"{name:<16}{median[key]:>10.3f}{sum(limits) / median[key]:>12.0f}")
    print(f"speed-up (keep / drop finished rows): {median[False] / median[True]:.2f}x; identical tokens: yes")


# ---------------------------------------------------------------------------------------------------------
# bench logprobs
# ---------------------------------------------------------------------------------------------------------

LOGPROBS_METHODS = ("naive", "cross_entropy", "native", "fused", "naive+entropy", "fused+entropy")


def profiled_peak_bytes(fn) -> int:
    """Peak CPU memory allocated by torch while fn() runs, above the level when it started (bytes).

    From torch.profiler(profile_memory=True)'s raw allocation events ("[memory]", +bytes for an allocation,
    -bytes for a free, including frees of tensors that existed before): the maximum of their running sum.
    Every allocation counts, also temporaries freed inside one op (unlike the per-op totals of prof.events()).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status (KiB; 0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0


def _logprobs_problem(N: int, d: int, V: int, device: str, seed: int = 0):
    """Inputs of one benchmark shape: hidden (N, d), weight (V, d) (leaf tensors), labels, upstream grads."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, d, generator=g).to(device).requires_grad_()
    weight = torch.randn(V, d, generator=g).mul_(d ** -0.5).to(device).requires_grad_()  # logits ~ N(0, 1)
    labels = torch.randint(0, V, (N,), generator=g).to(device)
    grads = torch.randn(2, N, generator=g).to(device)  # arbitrary per-token upstream gradients
    return hidden, weight, labels, grads


def _logprobs_step(method: str, hidden, weight, labels, grads) -> None:
    """One forward + backward of `method`, with per-token upstream gradients; grads are cleared first."""
    import torch
    import torch.nn.functional as F

    hidden.grad = weight.grad = None
    entropy = method.endswith("+entropy")
    if method.startswith("naive"):
        out = naive_linear_log_probs(hidden, weight, labels, return_entropy=entropy)
    elif method.startswith("fused"):
        out = fused_linear_log_probs(hidden, weight, labels, return_entropy=entropy)
    elif method == "cross_entropy":  # F.cross_entropy(reduction="none") = -log p(label)
        out = -F.cross_entropy(F.linear(hidden, weight), labels, reduction="none")
    elif method == "native":  # torch's chunked linear_cross_entropy, automatic chunk size
        out = -F.linear_cross_entropy(hidden, weight, labels, reduction="none",
                                      options=torch.nn.LinearCrossEntropyOptions())
    else:
        raise ValueError(f"unknown method {method!r}")
    if entropy:
        torch.autograd.backward(out, (grads[0], grads[1]))
    else:
        out.backward(grads[0])


def _logprobs_worker(spec: dict) -> dict:
    """Run in a fresh process: memory of the first step (profiler or CUDA peak, and RSS), then timed steps."""
    import time

    import torch

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = _logprobs_problem(spec["N"], spec["d"], spec["V"], device)
    step = lambda: _logprobs_step(spec["method"], *problem)  # noqa: E731

    def timed() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    # warm up libraries (and the profiler) on a tiny problem so that RSS below counts this shape's memory only
    tiny = _logprobs_problem(64, spec["d"], 512, device)
    profiled_peak_bytes(lambda: _logprobs_step(spec["method"], *tiny)) if device == "cpu" else None
    del tiny
    result = {"rss_mib": None}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        first = timed()
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        rss0 = _rss_kib("VmRSS")
        try:  # reset the high-water mark (Linux); otherwise input creation is the only earlier peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        start = time.perf_counter()
        result["peak_mib"] = profiled_peak_bytes(step) / 2**20
        first = time.perf_counter() - start
        result["rss_mib"] = (_rss_kib("VmHWM") - rss0) / 1024 if rss0 else None
    # time the steps after the first (warm-up); slow shapes get fewer repeats, and a step slower than the
    # budget is not repeated: its first (profiled) step's time is reported instead, flagged
    repeats = min(spec["repeats"], int(spec["budget_s"] / max(first, 1e-3)))
    result["seconds"] = [timed() for _ in range(repeats)] or [first]
    result["first_only"] = repeats == 0
    return result


def _logprobs_fresh(method: str, N: int, d: int, V: int, args) -> dict:
    """_logprobs_worker in a new python process (clean allocator, page cache and high-water mark)."""
    import json
    import subprocess
    import sys

    spec = {"method": method, "N": N, "d": d, "V": V, "threads": args.threads,
            "repeats": getattr(args, "repeats", 3), "budget_s": 60.0}
    code = ("import json, sys; from cs336_alignment.bench.cli import _logprobs_worker; "
            "print('RESULT', json.dumps(_logprobs_worker(json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _logprobs_accuracy(d: int, V: int, rows: int = 256) -> dict:
    """fused_linear_log_probs in float32 vs naive float64 on `rows` tokens of this (d, V): max errors."""
    import torch

    hidden, weight, labels, grads = _logprobs_problem(rows, d, V, "cpu", seed=1)
    out = {}
    hidden, weight = hidden.detach(), weight.detach()
    for name, fn, (h, w) in (("fused", fused_linear_log_probs, (hidden, weight)),
                             ("ref", naive_linear_log_probs, (hidden.double(), weight.double()))):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        lp, ent = fn(h, w, labels, return_entropy=True)
        torch.autograd.backward((lp, ent), (grads[0].to(lp.dtype), grads[1].to(lp.dtype)))
        out[name] = (lp.detach().double(), ent.detach().double(), h.grad.double(), w.grad.double())
    (lp, ent, gh, gw), (lp_ref, ent_ref, gh_ref, gw_ref) = out["fused"], out["ref"]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    return {"log_prob_max_err": float((lp - lp_ref).abs().max()), "entropy_max_err": float((ent - ent_ref).abs().max()),
            "grad_h_rel_err": rel(gh, gh_ref), "grad_w_rel_err": rel(gw, gw_ref)}


def bench_logprobs(args: argparse.Namespace) -> None:
    """Forward + backward of per-token log-probs from (N, d) hidden states and a (V, d) head, four ways.

    naive: log_softmax(h @ W.T).gather (+ entropy from the log-softmax); cross_entropy: F.cross_entropy on
    F.linear logits, reduction="none"; native: torch's F.linear_cross_entropy with its automatic chunking
    (when the installed torch has it); fused: ours. Each (shape, method) runs in a fresh process: its first
    step measures peak memory, then the following steps are timed (median). Upstream gradients are random per
    token. Then the fused/naive time ratios are measured again, interleaved in this process.
    """
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    bench_start = time.perf_counter()
    shapes = ([(512, 64, 4096)] if args.quick else
              [(N, d, V) for N in (2048, 8192) for d in (256, 768) for V in (8192, 50257)])
    methods = [m for m in LOGPROBS_METHODS if m != "native" or hasattr(F, "linear_cross_entropy")]
    how = ("torch.cuda.max_memory_allocated() above the inputs" if cuda else
           "torch.profiler(profile_memory=True): peak of allocated CPU memory above the inputs; "
           "RSS = VmHWM - VmRSS before (cross-check, includes allocator slack)")
    print(f"bench logprobs: float32, {'CUDA' if cuda else f'CPU, {args.threads} thread(s)'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}")
    print(f"memory: {how}.\nbound: the gradients of hidden and weight + the outputs (the least any method "
          f"must allocate). time: median of the steps after a warm-up step, each method in a fresh process\n"
          f"(* = slower than 60 s: the single profiled step's time). Shared CPUs: times vary 10-40%; "
          f"compare ratios.")
    header = (f"{'N':>5} {'d':>4} {'V':>6}  {'method':<14}{'time s':>8}{'peak MiB':>10}{'RSS MiB':>9}"
              f"{'bound':>7}{'t/naive':>8}{'mem naive/x':>12}{'t/native':>9}")
    print(header)
    fresh: dict[tuple, dict] = {}
    for N, d, V in shapes:
        for method in methods:
            r = fresh[N, d, V, method] = _logprobs_fresh(method, N, d, V, args)
            r["time"] = statistics.median(r["seconds"])
            entropy = method.endswith("+entropy")
            naive = fresh[N, d, V, "naive+entropy" if entropy else "naive"]  # measured first
            native = fresh.get((N, d, V, "native"))
            bound = ((N + V) * d * 4 + N * 4 * (2 if entropy else 1)) / 2**20  # grads + outputs, float32
            cells = [f"{N:>5} {d:>4} {V:>6}  {method:<14}",
                     f"{r['time']:>7.2f}{'*' if r['first_only'] else ' '}",
                     f"{r['peak_mib']:>10.0f}", "        -" if r["rss_mib"] is None else f"{r['rss_mib']:>9.0f}",
                     f"{bound:>7.0f}{r['time'] / naive['time']:>8.2f}{naive['peak_mib'] / r['peak_mib']:>12.1f}"]
            if native and method.startswith("fused"):
                cells.append(f"{r['time'] / native['time']:>9.2f}")
            print("".join(cells), flush=True)

    print("\ninterleaved in one process (fused / naive time, median of 2 each, order A B B A):")
    for N, d, V in shapes:
        problem = _logprobs_problem(N, d, V, "cuda" if cuda else "cpu")
        ratios = []
        for suffix in ("", "+entropy"):
            seconds: dict[str, list[float]] = {"naive" + suffix: [], "fused" + suffix: []}
            for method in seconds:  # warm-up (first-call costs) on a tiny problem
                _logprobs_step(method, *_logprobs_problem(64, d, 512, "cuda" if cuda else "cpu"))
            for method in ["naive" + suffix, "fused" + suffix, "fused" + suffix, "naive" + suffix]:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                _logprobs_step(method, *problem)
                if cuda:
                    torch.cuda.synchronize()
                seconds[method].append(time.perf_counter() - start)
            ratios.append(statistics.median(seconds["fused" + suffix]) / statistics.median(seconds["naive" + suffix]))
        print(f"  N={N} d={d} V={V}: {ratios[0]:.2f}x, with entropy {ratios[1]:.2f}x", flush=True)
        del problem

    d, V = shapes[-1][1:]
    acc = _logprobs_accuracy(d, V)
    print(f"\naccuracy of fused (float32) vs float64 naive, 256 tokens, d={d}, V={V}: log-prob max err "
          f"{acc['log_prob_max_err']:.1e}, entropy {acc['entropy_max_err']:.1e}, grad_h rel-norm "
          f"{acc['grad_h_rel_err']:.1e}, grad_W rel-norm {acc['grad_w_rel_err']:.1e}")
    print(f"bench logprobs took {time.perf_counter() - bench_start:.0f} s")


# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    g = sub.add_parser("generate", help="KV-cache generation vs full-prefix recomputation; dropping finished rows")
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(func=bench_generate)
    lp = sub.add_parser("logprobs", help="fused log-prob kernels vs naive, F.cross_entropy and native")
    lp.add_argument("--quick", action="store_true", help="one small shape only")
    lp.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    lp.add_argument("--threads", type=int, default=2)
    lp.set_defaults(func=bench_logprobs)
    bench_ddp.add_parser(sub)
    add_peers_parser(sub)
    lora_bench.add_subcommand(sub)
    bench_gpu.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
