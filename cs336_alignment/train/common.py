"""What every training loop shares, and nothing more: config -> argparse (and the strict dict loader), the run's
setup (`setup_run`: output directory and its lock, threads, seed and device in one call; `rundir.py` has the run
directory's rules), data checks made before training, the data order (one seeded permutation per epoch), RL
prompts, the optimizer, the learning-rate schedule and the metrics logger.
Device, autocast, threads and seeds live in `runtime.py`; loading a model in `checkpoint.py`.

The loops themselves (pretrain.py, sft.py, ...) write their steps out in full, CleanRL style: the
forward pass, `loss.backward()`, clipping, `optimizer.step()` and `optimizer.zero_grad(set_to_none=True)`
are in each loop, not behind a helper here.

Metric names (one vocabulary across loops, see the README):
    loss/train         mean training loss over the steps since the last log line (nats per token; in SFT
                       per response token)
    eval/loss          the same loss on held-out data
    lr                 learning rate of the last step
    grad_norm          global L2 norm of the gradient before clipping (mean since the last log line)
    perf/tokens_per_s  tokens fed through the model per wall-clock second since the last log line
"""
from __future__ import annotations

import argparse
import ast
import atexit
import dataclasses
import functools
import inspect
import json
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from cs336_alignment.lm.checkpoint import SHIPPED_SFT, check_resumable, read_checkpoint
from cs336_alignment.lm.data import DataError, load_problems_file, record_lines
from cs336_alignment.train.log_sinks import Sink, check_installed, open_sinks
from cs336_alignment.train.presets import PRESETS, section_overrides
from cs336_alignment.lm.nn_utils import AdamW, get_lr_cosine_schedule
from cs336_alignment.evaluation.preferences import conversations
from cs336_alignment.lm.rundir import RunLock, clean_stale_temps, prepare
from cs336_alignment.lm.runtime import get_device, set_seed, set_threads
from cs336_alignment.world.tasks import generate_problems

C = TypeVar("C")
R = TypeVar("R")

# ---------------------------------------------------------------------------------------------------------
# Config: one flat dataclass per entry point, each field documented by the string literal under it
# ---------------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring written under it} for a dataclass (the CleanRL `Args` convention)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def build_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--flag` per dataclass field (dashes or underscores), typed, with its doc.

    bool fields become `--flag / --no-flag`; `X | None` fields accept X; defaults are shown by --help. A field
    renamed by the class's FLAG_ALIASES ({old name: field}, config_blocks.RunConfig) also answers to its old flag.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints, docs, aliases = typing.get_type_hints(cls), field_docs(cls), getattr(cls, "FLAG_ALIASES", {})
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `str | None` -> str
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        names = sorted({f"--{f.name.replace('_', '-')}", f"--{f.name}"}, key=lambda s: "_" in s)
        doc = docs.get(f.name, " ")
        old = [name for name, new in aliases.items() if new == f.name]  # renamed fields: the old flags still parse
        if old:
            names += [flag for name in old for flag in dict.fromkeys((f"--{name.replace('_', '-')}", f"--{name}"))]
            doc += f" (old name: {', '.join('--' + name.replace('_', '-') for name in old)})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=f.default, help=doc.replace("%", "%%"))
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            parser.add_argument(*names, type=type(choices[0]), choices=choices, **kwargs)
        else:
            parser.add_argument(*names, type=kind, **kwargs)
    return parser


def parse_config(cls: type[C], argv: list[str] | None, prog: str, description: str | None = None,
                 section: str = "") -> C:
    """Parse command-line flags into `cls`; unknown flags and wrong types exit with argparse's message.

    `--preset NAME` first replaces the defaults of the fields that preset's `section` names (presets.PRESETS, the
    same presets the pipeline runs: `grpo --preset tiny` is the pipeline's tiny GRPO; `gpu` is for one GPU); flags
    given on the command line still win. A key the preset sets that is not a field of `cls` is an error.
    """
    parser = build_parser(cls, prog, description)
    choices = [name for name, sections in PRESETS.items() if section in sections]
    parser.add_argument("--preset", default="", choices=["", *choices],
                        help=f"preset whose {section!r} section overrides these defaults (gpu: a 0.5B-1.5B checkpoint "
                             "on one GPU; the pipeline's presets: its settings for this stage)")
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        aliases = getattr(cls, "FLAG_ALIASES", {})
        overrides = {aliases.get(k, k): v for k, v in section_overrides(preset, section).items()}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"preset {preset!r}: {cls.__name__} has no fields {unknown}")
        parser.set_defaults(**overrides)
    args = vars(parser.parse_args(argv))
    args.pop("preset")
    return cls(**args)


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build `cls` from a dict, rejecting unknown keys by name (nanoGPT's configurator is just as strict).

    A renamed field's old key (the class's FLAG_ALIASES) is read as the new one.

    Raises:
        ValueError: naming the unknown keys and listing the valid ones.
    """
    aliases = getattr(cls, "FLAG_ALIASES", {})
    values = {aliases.get(key, key): value for key, value in values.items()}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(valid)}")
    return cls(**values)


def run_dir(name: str, out: str) -> Path:
    """The output directory of a run: `out` if given, else runs/<name>."""
    return Path(out) if out else Path("runs") / name


# ---------------------------------------------------------------------------------------------------------
# Run setup, data order, prompts, optimizer state
# ---------------------------------------------------------------------------------------------------------


_HELD: list[RunLock] = []  # the locks setup_run took in this process, released by `releases_run_dir`
atexit.register(lambda: [lock.release() for lock in _HELD])  # a setup_run called outside a decorated loop
_SINKS: list[Sink] = []  # the --log-to sinks MetricsLogger opened in this process, closed by `releases_run_dir`
atexit.register(lambda: [_SINKS.pop().close() for _ in list(_SINKS)])


def setup_run(cfg: Any) -> tuple[Path, torch.device]:
    """The first lines of every loop, from the config fields name, out, threads, seed, device (and resume,
    overwrite where the config has them): lock the output directory (`run_dir`) for this run, remove the
    temporary files of a killed run, check what the run may do with it (`rundir.prepare`: a directory holding a
    run is replaced only with overwrite; resume needs <out>/ckpt.pt, and its saved config must match this one in
    every field that changes the run: `checkpoint.check_resumable`), then `set_threads`, `set_seed`, and pick the
    device (`get_device`). The lock is held until the loop decorated with `releases_run_dir` returns.

    Returns:
        (output directory, torch.device).
    Raises:
        rundir.RunDirError, checkpoint.CheckpointError (ValueErrors: one line naming the directory or file);
        ValueError for an unknown --log-to sink or one whose package is missing (log_sinks.check_installed).
    """
    check_installed(getattr(cfg, "log_to", ""))  # a --log-to sink without its package: fail before any work
    out = run_dir(cfg.name, cfg.out)
    hold_run_dir(out)
    resume = bool(getattr(cfg, "resume", False))
    prepare(out, resume, bool(getattr(cfg, "overwrite", False)), can_resume=hasattr(cfg, "resume"))
    if resume:
        check_resumable(out / "ckpt.pt", dataclasses.asdict(cfg))
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    return out, get_device(cfg.device)


def hold_run_dir(out: Path) -> None:
    """Lock `out` for this process (`rundir.RunLock`; RunDirError naming the holder's pid if another run has it)
    and remove the temporary files a killed run left there; the lock is released when the enclosing function
    decorated with `releases_run_dir` returns."""
    _HELD.append(RunLock.acquire(out))
    clean_stale_temps(out)


def releases_run_dir(train: Callable[..., R]) -> Callable[..., R]:
    """Decorate a loop's train(): the run-directory locks its `setup_run` took are released, and the --log-to sinks
    its MetricsLogger opened are closed, when it returns or raises (a killed process's lock is dropped by the kernel
    and taken over by the next run)."""
    @functools.wraps(train)
    def wrapper(*args, **kwargs) -> R:
        depth, sinks = len(_HELD), len(_SINKS)
        try:
            return train(*args, **kwargs)
        finally:
            while len(_SINKS) > sinks:
                _SINKS.pop().close()
            while len(_HELD) > depth:
                _HELD.pop().release()
    return wrapper


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist())


def stream_indices(first: int, count: int, n: int, seed: int) -> list[int]:
    """Positions first .. first + count - 1 of an endless stream of per-epoch permutations of range(n), seeded
    with seed * 7919 + epoch: every loop's data order (SFT's examples, RM/DPO's pairs, RL's prompts). A pure
    function of its arguments, so a resumed run draws the same items without replaying a generator."""
    return [_epoch_order(n, seed, p // n)[p % n] for p in range(first, first + count)]


def prompt_indices(step: int, n_pool: int, per_step: int, seed: int) -> list[int]:
    """The pool indices of RL step `step`: `per_step` consecutive positions of `stream_indices`."""
    return stream_indices(step * per_step, per_step, n_pool, seed)


def init_or_shipped(cfg: C, stage: str) -> C:
    """`cfg` with an empty --init replaced by the shipped tiny SFT model (checkpoint.SHIPPED_SFT), saying so on
    stderr: a stage run alone starts from the model the README names instead of failing on a missing file."""
    if cfg.init:
        return cfg
    print(f"{stage}: no --init given: starting from the shipped SFT model {SHIPPED_SFT}", file=sys.stderr)
    return dataclasses.replace(cfg, init=str(SHIPPED_SFT))


def load_problems(data: str, n_problems: int, split: str, seed: int) -> list[dict[str, str]]:
    """{"question", "answer"} prompts from a jsonl file (`data.load_problems_file`: every record checked, DataError
    "<file>:<line>: ...") or the task world."""
    if data:
        return load_problems_file(data)
    return generate_problems(n_problems, split, seed)


def pair_sources(cfg: Any, out: Path, n_train: int, n_eval: int) -> tuple[list[str], list[str]]:
    """"<file>:<line>" of each train and held-out pair of `preferences.preference_data(cfg, ...)` (its --data and
    --eval-data files, or the files it wrote in `out`), for errors found after loading."""
    if not cfg.data:
        return ([f"{out / 'preferences_train.jsonl'}:{i + 1}" for i in range(n_train)],
                [f"{out / 'preferences_eval.jsonl'}:{i + 1}" for i in range(n_eval)])
    train = [f"{cfg.data}:{n}" for n in record_lines(cfg.data)]
    if cfg.eval_data:
        return train[:n_train], [f"{cfg.eval_data}:{n}" for n in record_lines(cfg.eval_data)][:n_eval]
    return train[:n_train], train[n_train:n_train + n_eval]


GOLD_FIELDS, UTILITY_FIELDS = ("gold_chosen", "gold_rejected"), ("u_chosen", "u_rejected")  # preferences.pair_record's


def check_pairs(pairs: list[dict], sources: list[str], tokenizer, window: slice) -> list[int]:
    """Check every preference pair before training; return the indices of the pairs where the chosen or the rejected
    response has no assistant token inside `window` of its rendered conversation (a prompt that fills the context).

    Raises:
        DataError: "<file>:<line>: field 'gold_chosen': ..." when a pair has one gold field without the other, or
            utilities (u_chosen / u_rejected) without both gold fields, or any of them not a number (the reward
            model's held-out diagnostics read them together).
    """
    no_room = []
    for i, (pair, where) in enumerate(zip(pairs, sources)):
        has_u = any(field in pair for field in UTILITY_FIELDS)
        needed = (UTILITY_FIELDS + GOLD_FIELDS if has_u else GOLD_FIELDS if any(f in pair for f in GOLD_FIELDS)
                  else ())
        for field in needed:
            value = pair.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problem = "missing" if field not in pair else f"must be a number, got {type(value).__name__}"
                raise DataError(f"{where}: field {field!r}: {problem} (a pair with {'utilities' if has_u else 'gold'} "
                                f"fields needs {', '.join(needed)})")
        if any(not any(tokenizer.render(c)[1][window]) for c in conversations(pair)):
            no_room.append(i)
    return no_room


def build_optimizer(params, cfg: Any, lr: float | None = None) -> AdamW:
    """The one optimizer of every loop: our AdamW (nn_utils) with the config's lr (or `lr`), betas
    (cfg.beta1, cfg.beta2) and weight_decay; eps is AdamW's 1e-8."""
    return AdamW(params, lr=cfg.lr if lr is None else lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def load_sft_optimizer_state(path: str, optimizer) -> None:
    """Start `optimizer` from the second moments (and step counts) of the AdamW state saved with the init
    checkpoint, with zero momentum and the optimizer's own hyperparameters. A fresh Adam's first updates are
    about lr * sign(g) for every weight, whatever the gradient's size; with SFT's second moments, a small RL
    gradient gives a small step. (The momentum is zeroed: SFT's would keep doing SFT for a few steps.)"""
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    state = read_checkpoint(path)["optimizer"]
    if state is None:
        raise ValueError(f"{path} has no optimizer state: use --no-init-optimizer")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: field 'optimizer': does not fit this model's optimizer ({e}): use "
                         f"--no-init-optimizer") from None
    for group, saved in zip(optimizer.param_groups, hyper):
        group.update(saved)
    for param_state in optimizer.state.values():  # keep only the scale: SFT's momentum would be more SFT
        param_state["exp_avg"].zero_()


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Logging: one console line per log step + metrics.jsonl
# ---------------------------------------------------------------------------------------------------------


def format_metrics(step: int, num_steps: int, metrics: dict[str, float]) -> str:
    """`step 40/200 | loss 0.412 | eval/loss 0.455 | lr 3.0e-04 | 1.9k tok/s` (loss = loss/train)."""
    parts = [f"step {step}/{num_steps}"]
    for key, value in metrics.items():
        if key == "perf/tokens_per_s":
            continue
        name = "loss" if key == "loss/train" else key
        parts.append(f"{name} {value:.2e}" if key == "lr" else f"{name} {value:.4g}")
    if "perf/tokens_per_s" in metrics:
        tps = metrics["perf/tokens_per_s"]
        parts.append(f"{tps / 1000:.1f}k tok/s" if tps >= 1000 else f"{tps:.0f} tok/s")
    return " | ".join(parts)


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of a JSONL file whose "step" (0 when absent) is at most `step`; [] if there is no file.

    A last line that is not JSON (a run stopped while writing it: a kill, a full disk) is dropped, with a note on
    stderr; any other undecodable line raises DataError "<file>:<line>: ..."."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                print(f"note: {path}:{lineno}: dropped a torn last line (the interrupted run stopped while writing "
                      f"it)", file=sys.stderr)
                continue
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); only a torn last line is dropped on "
                            f"resume") from None
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line)
    return kept


class MetricsLogger:
    """Appends {"step": s, **metrics} lines to <out>/metrics.jsonl and prints one console line per log step;
    `log_generations` appends {"step": s, **record} lines to <out>/generations.jsonl (sample responses).

    The first line of a run is {"config": {...}} (and {"config": ..., "resumed_from": s} on resume, after
    dropping any records past step s that the interrupted run wrote after its last checkpoint; the same for
    generations.jsonl, which a fresh run starts empty).
    `write` prints through tqdm so a progress bar (if any) stays at the bottom. The config's "log_to" names the
    sinks that also receive every `log` record (log_sinks.py: wandb, tensorboard); metrics.jsonl is always written.
    """

    def __init__(self, out_dir: Path, num_steps: int, config: dict[str, Any], resumed_from: int = 0,
                 quiet: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.generations_path = Path(out_dir) / "generations.jsonl"
        self.num_steps, self.quiet = num_steps, quiet
        kept = _lines_up_to(self.path, resumed_from) if resumed_from else []
        header = {"config": config, **({"resumed_from": resumed_from} if resumed_from else {})}
        self.path.write_text("".join(line + "\n" for line in kept + [json.dumps(header)]))
        generations = _lines_up_to(self.generations_path, resumed_from) if resumed_from else []
        if generations or self.generations_path.exists():
            self.generations_path.write_text("".join(line + "\n" for line in generations))
        self.write(f"config: {json.dumps(config)}")
        self.sinks = open_sinks(config.get("log_to", ""), out_dir, config, resumed_from)
        _SINKS.extend(self.sinks)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.log(step, {k: v for k, v in record.items() if k != "step"})
        self.write(format_metrics(step, self.num_steps, metrics))

    def log_generations(self, step: int, records: list[dict[str, Any]]) -> None:
        """Append one {"step": step, **record} line per record (`evaluate.log_generations`'s) to generations.jsonl."""
        with self.generations_path.open("a") as f:
            f.writelines(json.dumps({"step": step, **record}) + "\n" for record in records)

    def write(self, line: str) -> None:
        if not self.quiet:
            tqdm.write(line, file=sys.stdout)


def progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar on an interactive terminal; a no-op object otherwise (logs and CI stay clean)."""
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False,
                disable=not sys.stderr.isatty())


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The {"step", ...} records of a metrics.jsonl (config lines skipped), in file order."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if "step" in r]


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, num_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, cosine decay to min_lr at num_steps."""
    return get_lr_cosine_schedule(step, lr, min_lr, warmup_steps, max(num_steps - 1, warmup_steps))


def finite_or_raise(loss: float, step: int) -> None:
    """Stop a run whose loss became NaN/inf, naming the step (a bad lr is the usual cause)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}: lower --lr or check the data")
