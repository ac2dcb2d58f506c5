"""Where and how a run computes: the device, bf16 autocast on CUDA, torch's thread count, and the global seeds.

Every entry point (the training loops, `eval`, the pipeline's evaluation) calls these before it builds a model.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def get_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps (Apple GPUs), then cpu; any other string is passed to torch.device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (matmuls in bfloat16, reductions and weights in float32); a no-op elsewhere.

    On CPU, bf16 matmuls are slower than float32 for models this small, and on mps bf16 support varies.
    """
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    """torch.set_num_threads(threads) when threads > 0 (0 leaves torch's default).

    On the 2-core machines we measured, 2 threads ran ~10x *slower* than 1 when another process used the
    other core (the threads wait for each other), so the loops default to 1.
    """
    if threads > 0:
        torch.set_num_threads(threads)


def set_seed(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
