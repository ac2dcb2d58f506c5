"""Checkpoints: atomic save (temp file in the same directory + os.replace) and safe load (torch.load weights_only).

A checkpoint is a plain dict {"model", "optimizer", "iteration", "extra"} holding only what
`torch.load(..., weights_only=True)` accepts: tensors, dicts, lists, tuples, str, int, float, bool, None. Loading
therefore never runs pickled code. `extra` carries the run's config dict and RNG states for exact resumption:

    save_checkpoint(model, optimizer, step, path, config=asdict(cfg), rng=rng_state())
    step = load_checkpoint(path, model, optimizer)
    set_rng_state(load_checkpoint_extra(path)["rng"])
    model, extra = load_model(path, device)          # a TransformerLM rebuilt from the config saved with it
"""
from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import torch

from cs336_alignment.model import TransformerConfig, TransformerLM
from cs336_alignment.pretrained import is_pretrained_dir
from cs336_alignment.provenance import provenance_record

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"  # base/SFT models per preset
SHIPPED_SFT = SHIPPED_DIR / "tiny" / "sft.pt"  # where a stage without --init starts (README, "The main job")
_SAFE_LEAVES = (torch.Tensor, str, int, float, bool, type(None))

# ---------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value that torch.load(weights_only=True) would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] must be str or int")
            _check_weights_only_safe(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]")
    elif not isinstance(obj, _SAFE_LEAVES):
        raise TypeError(f"checkpoint value {where} has type {type(obj).__name__}; store tensors, dicts, lists, "
                        "str, int, float, bool or None (weights_only loading)")


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int,
                    out: PathOrFile, **extra: Any) -> None:
    """Write model and optimizer state, the iteration and `extra` to `out`.

    With a path, the bytes go to a temporary file in the same directory, are flushed to disk, and then
    os.replace() renames it over `out` (atomic on POSIX and Windows): a crash or an exception mid-save leaves the
    previous checkpoint intact and no temp file behind. A file-like object is written directly.

    Args:
        model: its state_dict() is saved.  optimizer: its state_dict(), or None.
        iteration: training step to resume from (int).
        out: path (parent directories are created) or binary file-like object.
        **extra: anything weights_only-safe, e.g. config=dataclasses.asdict(cfg), rng=rng_state().
    Raises:
        TypeError: if `extra` holds a value that weights_only loading would refuse (checked before writing).
    """
    extra.setdefault("provenance", provenance_record(iteration, extra.get("config")))   # read by the leaderboard
    _check_weights_only_safe(extra, "extra")
    state = {"model": model.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(),
             "iteration": int(iteration), "extra": extra}
    if not isinstance(out, (str, os.PathLike)):
        torch.save(state, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(src: PathOrFile) -> dict[str, Any]:
    # map_location="cpu": load_state_dict then copies into wherever the model and optimizer live.
    return torch.load(src, map_location="cpu", weights_only=True)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore model (and optimizer, if given and saved) state from `src`; return the saved iteration.

    Args:
        src: path or binary file-like object written by save_checkpoint.
    Returns:
        The iteration passed to save_checkpoint (int).
    Raises:
        RuntimeError: from load_state_dict on missing/unexpected keys or shape mismatches;
        pickle.UnpicklingError: if the file holds objects that weights_only loading refuses.
    """
    checkpoint = _load(src)
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None and checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return int(checkpoint["iteration"])


def load_checkpoint_extra(src: PathOrFile) -> dict[str, Any]:
    """The `**extra` dict stored by save_checkpoint (e.g. {"config": {...}, "rng": {...}})."""
    return _load(src)["extra"]


# ---------------------------------------------------------------------------------------------------------
# RNG state (python, numpy, torch CPU and CUDA) as weights_only-safe values
# ---------------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Snapshot every global random number generator, as tensors/lists/ints (weights_only-safe)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by rng_state() (CUDA only if saved and available)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[TransformerLM, dict[str, Any]]:
    """Rebuild the TransformerLM stored in a checkpoint written by our loops (its config is saved with it),
    or load a Hugging Face checkpoint directory (Llama / Qwen2: config.json + safetensors, `pretrained.py`).

    Returns:
        (model on `device`, the checkpoint's extra dict: {"config", "model_config", "rng", ...}).
        model.config.tokenizer names the tokenizer directory of a Hugging Face model ("" = the shipped one).
    Raises:
        FileNotFoundError, or ValueError when the checkpoint has no "model_config" (not one of ours).
    """
    if is_pretrained_dir(path):  # a Hugging Face directory: float32 weights, its tokenizer in model_config
        model = TransformerLM.from_pretrained(path, device=device)
        return model, {"model_config": dataclasses.asdict(model.config), "config": {"init": str(path)}}
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there (a loop writes <out>/ckpt.pt; the shipped SFT model "
                                f"is {SHIPPED_SFT.relative_to(SHIPPED_DIR.parent.parent)})")
    extra = load_checkpoint_extra(path)
    if "model_config" not in extra:
        raise ValueError(f"{path}: field 'model_config': missing (was it written by cs336_alignment's train loops?)")
    model = TransformerLM(TransformerConfig(**extra["model_config"]))
    load_checkpoint(path, model)
    return model.to(device), extra
