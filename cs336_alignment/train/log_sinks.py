"""Optional metric sinks beside metrics.jsonl (always written): Weights & Biases and TensorBoard (`--log-to`).

    python -m cs336_alignment grpo --log-to tensorboard            # <out>/tensorboard: tensorboard --logdir runs/
    WANDB_MODE=offline python -m cs336_alignment grpo --log-to wandb,tensorboard   # <out>/wandb, no network

Each sink receives exactly the {name: float} records that `train.common.MetricsLogger.log` appends to metrics.jsonl,
at the same step (TensorBoard: one scalar per name; W&B: `run.log(metrics, step=step)`), and the run's config once
(W&B: the run's config; TensorBoard: a text summary). Both packages are optional extras
(`pip install -e '.[logging]'`); asking for one that is not installed is a one-line error before any training.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Protocol

SINKS = ("wandb", "tensorboard")
INSTALL = "pip install -e '.[logging]'"


class MissingPackageError(ValueError):
    """--log-to names a sink whose package is not installed (a ValueError: the CLI prints it on one line, exit 2)."""


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def parse_log_to(log_to: str) -> list[str]:
    """The sinks named by --log-to, in order, without repeats ("wandb,tensorboard" -> ["wandb", "tensorboard"];
    "" -> []; "jsonl", the default sink, may be named and is dropped).

    Raises:
        ValueError: "--log-to: unknown sink 'x'; choose from wandb, tensorboard (comma-separated)".
    """
    names = [name.strip() for name in log_to.split(",") if name.strip()]
    for name in names:
        if name not in (*SINKS, "jsonl"):
            raise ValueError(f"--log-to: unknown sink {name!r}; choose from {', '.join(SINKS)} (comma-separated)")
    return [name for name in dict.fromkeys(names) if name != "jsonl"]


def check_installed(log_to: str) -> None:
    """Fail early, before a run does any work, when a sink --log-to names is unknown or its package is missing.

    Raises:
        ValueError: as `parse_log_to`; MissingPackageError "--log-to wandb needs the wandb package: pip install ...".
    """
    for name in parse_log_to(log_to):
        if importlib.util.find_spec(name) is None:
            raise MissingPackageError(f"--log-to {name} needs the {name} package: {INSTALL}")


class TensorBoardSink:
    """Scalars to <out>/tensorboard through torch.utils.tensorboard.SummaryWriter (flushed after every record)."""

    def __init__(self, out_dir: Path, config: dict[str, Any], resumed_from: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingPackageError(f"--log-to tensorboard needs the tensorboard package: {INSTALL}") from None
        # purge_step: a resumed run drops the events an interrupted run wrote after its last checkpoint
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=resumed_from or None)
        if not resumed_from:
            self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per training run, in <out>/wandb, project `WANDB_PROJECT` (default cs336_alignment); W&B's own
    environment variables apply (WANDB_MODE=offline: nothing leaves the machine; `wandb sync` uploads later)."""

    def __init__(self, out_dir: Path, config: dict[str, Any], resumed_from: int = 0):
        try:
            import wandb
        except ImportError:
            raise MissingPackageError(f"--log-to wandb needs the wandb package: {INSTALL}") from None
        os.makedirs(Path(out_dir) / "wandb", exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "cs336_alignment"), dir=str(out_dir),
                              name=str(config.get("name") or Path(out_dir).name), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def open_sinks(log_to: str, out_dir: str | os.PathLike, config: dict[str, Any], resumed_from: int = 0) -> list[Sink]:
    """The sinks --log-to names, opened for a run writing to `out_dir` (see the module docstring).

    Raises:
        ValueError: an unknown sink name; MissingPackageError (a ValueError) when its package is not installed.
    """
    kinds = {"wandb": WandbSink, "tensorboard": TensorBoardSink}
    return [kinds[name](Path(out_dir), config, resumed_from) for name in parse_log_to(log_to)]
