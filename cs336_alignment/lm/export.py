"""Write a stage's checkpoint (or a Hugging Face directory) as a Hugging Face directory that transformers opens.

    python -m cs336_alignment export --ckpt runs/grpo/ckpt.pt --out runs/grpo/hf
"""
from __future__ import annotations

import argparse

from cs336_alignment.lm.checkpoint import load_model
from cs336_alignment.lm.pretrained import DTYPES


def main(argv: list[str] | None = None) -> int:
    """Write a stage's checkpoint (or a Hugging Face directory) as a Hugging Face directory."""
    parser = argparse.ArgumentParser(prog="python -m cs336_alignment export", description=main.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", "--init", dest="ckpt", required=True,
                        help="checkpoint written by a stage (ckpt.pt) or a Hugging Face directory")
    parser.add_argument("--out", required=True, help="directory to write (config.json, model.safetensors, "
                                                      "the tokenizer files of the original checkpoint)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                        help="dtype of the saved weights (Qwen2.5 and Llama 3 ship bfloat16)")
    args = parser.parse_args(argv)
    model, _ = load_model(args.ckpt, "cpu")
    model.save_pretrained(args.out, dtype=DTYPES[args.dtype])
    source = model.config.tokenizer or "none (the shipped task-world tokenizer has no tokenizer.json)"
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.dtype}); "
          f"tokenizer files from {source}")
    return 0
