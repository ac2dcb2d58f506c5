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
    pass


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
