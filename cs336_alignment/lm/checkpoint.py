"""Checkpoints: atomic save (temp file in the same directory + os.replace) and safe load (torch.load weights_only).

A checkpoint is a plain dict {"model", "optimizer", "iteration", "extra"} holding only what
`torch.load(..., weights_only=True)` accepts: tensors, dicts, lists, tuples, str, int, float, bool, None. Loading
therefore never runs pickled code. `extra` carries the run's config dict and RNG states for exact resumption:

    save_checkpoint(model, optimizer, step, path, config=asdict(cfg), rng=rng_state())
    step = load_checkpoint(path, model, optimizer)
    set_rng_state(load_checkpoint_extra(path)["rng"])
    model, extra = load_model(path, device)          # a TransformerLM rebuilt from the config saved with it

Every load checks the file first (`read_checkpoint`): an empty, truncated, random or foreign file, a plain
state_dict, a tensor of another shape than the model's, or a resume checkpoint without RNG state raises
CheckpointError (a ValueError) with one line naming the file and what is wrong.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import secrets
import warnings
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
import torch

from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.pretrained import is_pretrained_dir
from cs336_alignment.lm.provenance import provenance_record
from cs336_alignment.lm.rundir import TEMP_SUFFIX, config_difference

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "checkpoints"  # base/SFT models per preset
SHIPPED_SFT = SHIPPED_DIR / "tiny" / "sft.pt"  # where a stage without --init starts (README, "The main job")
_SAFE_LEAVES = (torch.Tensor, str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message reads "<file>: <what is wrong>"."""


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

    With a path, the bytes go to a temporary file in the same directory (.<name>.<hex>.partial, created with
    mode 0666 minus the umask, like any file the run writes), are flushed to disk, and then os.replace() renames
    it over `out` (atomic on POSIX and Windows): a crash or an exception mid-save leaves the previous checkpoint
    intact and no temp file behind (a kill leaves one, which `rundir.clean_stale_temps` removes on the next
    start). A file-like object is written directly.

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
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    # mode 0666: the umask applies, as to any file the run writes (mkstemp's 0600 hid checkpoints from the group)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


def _name(src: PathOrFile) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else str(getattr(src, "name", "<checkpoint>"))


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


def read_checkpoint(src: PathOrFile) -> dict[str, Any]:
    """The dict save_checkpoint wrote, read with torch.load(weights_only=True) (pickled code never runs) and checked.

    Returns:
        {"model": {name: tensor}, "optimizer": dict | None, "iteration": int, "extra": dict}.
    Raises:
        FileNotFoundError: no file at `src`.
        CheckpointError: "<file>: ..." for a directory, an empty, truncated or random file, a pickle that
            weights-only loading refuses, a plain state_dict, or a dict without this library's fields.
    """
    name = _name(src)
    if isinstance(src, (str, os.PathLike)):
        if Path(src).is_dir():
            raise CheckpointError(f"{name}: a directory, not a .pt checkpoint file (a Hugging Face model directory "
                                  f"needs its config.json)")
        if not Path(src).exists():
            raise FileNotFoundError(2, "no checkpoint there (a loop writes <out>/ckpt.pt)", name)
        if Path(src).stat().st_size == 0:
            raise CheckpointError(f"{name}: empty file (0 bytes): not a checkpoint (a run killed while saving?)")
    try:  # map_location="cpu": load_state_dict then copies into wherever the model and optimizer live
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(src, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if refused:
            raise CheckpointError(f"{name}: refused: it holds {refused.group(1)}, which weights-only loading does not "
                                  f"allow (not a checkpoint of this library; nothing in it was run)") from None
        raise CheckpointError(f"{name}: not a PyTorch checkpoint (an unreadable or foreign pickle)") from None
    except Exception as e:  # zip / stream / EOF errors of a cut or foreign file
        raise CheckpointError(f"{name}: corrupt or truncated checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: holds a {type(state).__name__}, not a checkpoint dict "
                              f"{{model, optimizer, iteration, extra}}")
    if "model" not in state and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: a plain state_dict (tensors only), not a checkpoint of this library's loops "
                              f"{{model, optimizer, iteration, extra}}: write it with checkpoint.save_checkpoint")
    for field, kinds in (("model", dict), ("optimizer", (dict, type(None))), ("iteration", int), ("extra", dict)):
        if field not in state:
            raise CheckpointError(f"{name}: field {field!r}: missing (not written by save_checkpoint)")
        if not isinstance(state[field], kinds):
            raise CheckpointError(f"{name}: field {field!r}: has type {type(state[field]).__name__}")
    bad = next((k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{name}: field 'model': entry {bad!r} is not a tensor")
    return state


def check_state_dict(saved: dict[str, torch.Tensor], model: torch.nn.Module, name: str) -> None:
    """Raise CheckpointError naming the first tensor the model lacks, has extra, or holds in another shape
    ("<file>: tensor 'layers.0.attn.q_proj.weight': shape (64, 32) saved, (32, 32) in the model")."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key in saved and tuple(saved[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{name}: tensor {key!r}: shape {tuple(saved[key].shape)} saved, "
                                  f"{tuple(tensor.shape)} in the model (a checkpoint of another model shape)")
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        which = (f"tensor {missing[0]!r} missing ({len(missing)} of the model's {len(expected)} missing)" if missing
                 else f"tensor {unexpected[0]!r} unexpected ({len(unexpected)} the model does not have)")
        raise CheckpointError(f"{name}: {which}: a checkpoint of another model?")


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore model (and optimizer, if given and saved) state from `src`; return the saved iteration.

    Args:
        src: path or binary file-like object written by save_checkpoint.
    Returns:
        The iteration passed to save_checkpoint (int).
    Raises:
        CheckpointError: a file `read_checkpoint` refuses, a tensor missing, unexpected or of another shape than
            the model's (named, with both shapes), or optimizer state that does not fit the optimizer.
        FileNotFoundError: no file at `src`.
    """
    checkpoint = read_checkpoint(src)
    check_state_dict(checkpoint["model"], model, _name(src))
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None and checkpoint["optimizer"] is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{_name(src)}: field 'optimizer': does not fit this optimizer "
                                  f"({_first_line(e)})") from None
    return checkpoint["iteration"]


def load_checkpoint_extra(src: PathOrFile) -> dict[str, Any]:
    """The `**extra` dict stored by save_checkpoint (e.g. {"config": {...}, "rng": {...}}); see read_checkpoint."""
    return read_checkpoint(src)["extra"]


def check_resumable(src: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any]:
    """The extra dict of the checkpoint a `--resume` run continues, once it is known to fit `config`.

    Raises:
        CheckpointError: "<file>: field 'rng': missing ..." (cannot resume exactly), or "<file>: --resume with
            another config: field 'seed' is 1 here, 0 in the saved run" (rundir.NOT_RUN_FIELDS may differ).
    """
    extra = load_checkpoint_extra(src)
    for field in ("rng", "config"):
        if not isinstance(extra.get(field), dict):
            raise CheckpointError(f"{src}: field {field!r}: missing: cannot resume from it (a checkpoint of another "
                                  f"kind? start a new run with --init instead)")
    difference = config_difference(extra["config"], config)
    if difference:
        raise CheckpointError(f"{src}: --resume with another config: {difference} (start a new --out, or "
                              f"--overwrite)")
    return extra


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
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no checkpoint there (a loop writes <out>/ckpt.pt; the shipped SFT model "
                                f"is {SHIPPED_SFT.relative_to(SHIPPED_DIR.parent.parent)})")
    extra = load_checkpoint_extra(path)
    model = TransformerLM(model_config_from(extra, path))
    load_checkpoint(path, model)
    return model.to(device), extra


def model_config_from(extra: dict[str, Any], path: str | os.PathLike) -> TransformerConfig:
    """The TransformerConfig saved in a checkpoint's extra dict, checked (a model of it can be built).

    Raises:
        CheckpointError: "<file>: field 'model_config': ..." when it is missing, not a dict, has unknown or
            missing fields, or values no model can have (e.g. num_heads 0).
    """
    saved = extra.get("model_config")
    if saved is None:
        raise CheckpointError(f"{path}: field 'model_config': missing (was it written by cs336_alignment's train "
                              f"loops?)")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: field 'model_config': has type {type(saved).__name__}, not a dict")
    try:
        config = TransformerConfig(**saved)
        for field in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            value = getattr(config, field, 1)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} is {value!r}, must be a positive int")
        if config.d_model % config.num_heads:
            raise ValueError(f"d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'model_config': {_first_line(e)}") from None
    return config
