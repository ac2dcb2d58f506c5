"""Benchmarks that print ratios against a baseline measured in the same run.

    python -m cs336_alignment bench generate   # KV-cache generation vs recomputing the prefix
    python -m cs336_alignment bench logprobs   # fused log-prob kernels vs naive / F.cross_entropy / native

Timings on shared CPUs vary 10-40% run to run: read the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import os

# Must be set before torch is imported: OpenMP's default busy-wait makes small parallel ops cost ~ms each.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---------------------------------------------------------------------------------------------------------
# bench generate  (filled by the model work)
# ---------------------------------------------------------------------------------------------------------

def bench_generate(args: argparse.Namespace) -> None:
    """Greedy generation from a tiny random TransformerLM, with and without the KV cache.

    Without a cache every step re-runs the whole prefix (O(T²) work for T new tokens); with it each step runs
    one token per row against the stored keys/values. Both must produce identical tokens.
    """
    import statistics
    import time

    import torch

    from cs336_alignment.model import TransformerConfig, TransformerLM, generate

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


# ---------------------------------------------------------------------------------------------------------
# bench logprobs  (filled by the fused-kernel work)
# ---------------------------------------------------------------------------------------------------------

def bench_logprobs(args: argparse.Namespace) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    g = sub.add_parser("generate", help="KV-cache generation vs full-prefix recomputation")
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=1)
    g.set_defaults(func=bench_generate)
    lp = sub.add_parser("logprobs", help="fused log-prob kernels vs naive, F.cross_entropy and native")
    lp.add_argument("--quick", action="store_true", help="one small shape only")
    lp.add_argument("--threads", type=int, default=2)
    lp.set_defaults(func=bench_logprobs)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
