"""Data parallel training with `torchrun`: every rank trains on its own share of each batch, gradients are
all-reduced, rank 0 alone writes.

    torchrun --standalone --nproc_per_node 4 -m cs336_alignment sft --preset smoke   # 4 processes, one batch
    python -m cs336_alignment sft --preset smoke                                     # 1 process: unchanged

The loops (train/sft.py, dpo.py, reward_model.py, grpo.py, ppo.py, expert_iteration.py) call the functions below;
with one process (no torchrun: WORLD_SIZE unset or 1) every one of them is the identity or the plain
single-process call, so a run without torchrun computes exactly what it computed before this module existed.

Design (the standard recipe of PyTorch DDP, Li et al. 2020, "PyTorch Distributed", VLDB §3; nanoGPT/nanochat
and CS336 assignment 2, written out):
- `init` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK and joins the process group: gloo on CPU, NCCL on
  CUDA (one GPU per rank: cuda:LOCAL_RANK). Every rank seeds its generators with the same --seed, so a model
  initialised from scratch starts identical on every rank.
- Data: each optimizer step's items (examples, pairs, RL prompts) are the same seeded, resumable stream as with
  one process (`train.common.stream_indices`); `shard` gives rank r the r-th contiguous slice of the step's
  items. The shards are disjoint, their union is the single-process batch, and since the stream is a pure
  function of the step, `--resume` works at any world size that divides the batch. The RL loops' sampling
  generators add 7919 x rank to their seed (rank 0 draws what one process draws for its prompts). PPO whitens
  its advantages with every rank's moments (`whiten_across_ranks`); expert iteration gathers every rank's kept samples
  (`all_gather_rows`) and splits each optimizer step's rows over the ranks (`shard_uneven`: counts may differ).
- Gradients: an explicit all-reduce of the gradients after the last backward of an optimizer step
  (`all_reduce_gradients`: one flat buffer, one collective), not `DistributedDataParallel`. Our loops accumulate
  gradients over micro-batches by hand and some ranks may have nothing to back-propagate (GRPO drops
  zero-variance groups); DDP's hooks fire on every backward, need `no_sync()` for accumulation and a backward on
  every rank, while one call before `clip_gradients` keeps the loops readable. The cost is that communication
  does not overlap the backward pass (DDP's bucketed overlap), which matters for big models on GPUs, not here.
- Loss normalisation (Rafailov/Shao-style losses are means; the bug class TRL users file as "the loss changes
  with the number of GPUs"): where every rank holds the same number of items (SFT's conversations, DPO's and
  the reward model's pairs) each rank's loss is the mean over its items, and the mean of the ranks' gradients
  is the gradient of the mean over the whole batch. Where ranks hold different numbers of items (GRPO keeps
  only the groups with signal; expert iteration's step rows; PPO's minibatches, equal but treated alike) the
  counts are all-reduced first (`global_count`) and each micro-batch is
  weighted by its share of the global batch (`policy_loss_scaling`); then the gradients are summed, not
  averaged. Either way one optimizer step on N ranks equals the step on one rank that accumulates the same
  items (tests/test_distributed.py checks it at 2 ranks, float64, within 1e-10 on the gradients).
- Metrics: `reduce_metrics` gathers every rank's dict and averages each key (NaNs, e.g. the mean length of
  correct responses on a rank with none, are left out); throughput keys are summed. CPU seconds (perf/cpu_s and
  the `max_cpu_s` budget) are summed over ranks, so every rank stops at the same step. Held-out evaluations run
  on every rank (the same numbers) and rank 0 logs them.
- Writes: rank 0 alone locks and prepares the run directory (`setup_run`), writes metrics.jsonl
  (`metrics_logger` hands the other ranks a silent logger), the preference pairs it samples
  (`preference_data`) and, guarded by `is_main()` in the loops, the checkpoints (atomically, as with one process:
  the other ranks hold the same weights, the same gradients having been applied to the same start).
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist

from cs336_alignment.evaluation import preferences
from cs336_alignment.masked import masked_whiten
from cs336_alignment.lm.runtime import get_device, set_seed, set_threads
from cs336_alignment.train import common

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Number of ranks: the process group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the rank that writes."""
    return rank() == 0


def init(device: str | torch.device = "cpu") -> None:
    """Join torchrun's process group when WORLD_SIZE > 1 (a no-op otherwise, and when already joined): NCCL for
    a CUDA device (after torch.cuda.set_device(LOCAL_RANK)), gloo otherwise. MASTER_ADDR / MASTER_PORT come from
    torchrun's environment (env:// rendezvous).

    Raises:
        ValueError: WORLD_SIZE > 1 but RANK is missing (a launcher other than torchrun that sets half of it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if "RANK" not in os.environ:
        raise ValueError("WORLD_SIZE > 1 but RANK is not set: launch with torchrun --nproc_per_node N")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def cleanup() -> None:
    """Leave the process group (after a barrier, so no rank exits while another still needs it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a CUDA device under torchrun (one GPU per rank), else `device` unchanged."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# ---------------------------------------------------------------------------------------------------------
# Data and gradients
# ---------------------------------------------------------------------------------------------------------


def per_rank(n: int, what: str = "batch") -> int:
    """n / world size: one rank's part of n items (n with one process).

    Raises:
        ValueError: n is not divisible by the world size (`what` names the quantity to change).
    """
    if n % world_size():
        raise ValueError(f"{what} {n} is not divisible by the number of processes {world_size()}")
    return n // world_size()


def shard(items: Sequence[T], what: str = "batch") -> list[T]:
    """This rank's contiguous slice of one step's `items` (all of them with one process): rank r gets
    items[r * n / W : (r + 1) * n / W]. Disjoint across ranks, and their concatenation in rank order is `items`.

    Raises:
        ValueError: len(items) is not divisible by the world size (`what` names the flag to change).
    """
    size = per_rank(len(items), what)
    return list(items[rank() * size:(rank() + 1) * size])


def shard_uneven(items):
    """This rank's contiguous slice of `items` (a list or a tensor's first dimension; the same type comes back)
    when len(items) need not divide by the world size (expert iteration's optimizer steps over a variable number
    of kept samples): rank r gets items[r * n // W : (r + 1) * n // W], so slices differ by at most one item, some
    may be empty, and their concatenation in rank order is `items`. All of them with one process."""
    n, w, r = len(items), world_size(), rank()
    return items[r * n // w:(r + 1) * n // w]


def all_gather_rows(tensors: dict[str, torch.Tensor], widths: torch.Tensor,
                    pad: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every rank's rows, concatenated in rank order, on every rank (the inputs unchanged with one process).

    Args:
        tensors: {name: (n_r, T_r) tensor} of this rank's rows (right-padded; T_r and n_r may differ by rank,
            n_r may be 0); every rank passes the same names.
        widths: (n_r,) long, the real positions of each row (`rollout.sequence_widths`).
        pad: the filler of the positions past a row's width (its values reach no masked loss: causal attention).
    Returns:
        ({name: (sum n_r, max T_r) tensor on the CPU}, (sum n_r,) widths). Collective (all_gather_object): every
        rank must call it.
    """
    if world_size() == 1:
        return tensors, widths
    mine = {"widths": widths.cpu(), **{k: v[:, :int(widths.max()) if len(widths) else 0].cpu()
                                        for k, v in tensors.items()}}
    gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, mine)
    width = max((g[k].shape[1] for g in gathered for k in tensors), default=0)
    out = {k: torch.cat([torch.nn.functional.pad(g[k], (0, width - g[k].shape[1]),
                                                 value=False if g[k].dtype == torch.bool else pad) for g in gathered])
           for k in tensors}
    return out, torch.cat([g["widths"] for g in gathered])


def whiten_across_ranks(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`masked.masked_whiten` with the mean and the unbiased variance of the masked entries of *every* rank's
    `values` (PPO's advantage whitening over the whole rollout batch; Huang et al. 2024, "The N+ implementation
    details of RLHF with PPO", detail 6): two all-reduces, of (sum, count), then of the summed squared deviations
    from the global mean. With one process: `masked.masked_whiten` itself.

    Args:
        values: (n_r, T) float, this rank's rows. mask: (n_r, T) bool.
    Returns:
        (n_r, T), same dtype; masked-out positions are 0.
    Raises:
        ValueError: fewer than 2 masked entries over all ranks (no variance).
    """
    if world_size() == 1:
        return masked_whiten(values, mask, eps=eps)
    mask = mask.bool()
    total, count = sum_across_ranks(float(torch.where(mask, values, 0).double().sum()), float(mask.sum()))
    if count < 2:
        raise ValueError("whiten_across_ranks needs at least 2 masked entries over all ranks to estimate a variance")
    mean = total / count
    squares = sum_across_ranks(float(torch.where(mask, (values.double() - mean) ** 2, 0).sum()))[0]
    whitened = (values - mean) * torch.rsqrt(torch.tensor(squares / (count - 1) + eps, dtype=values.dtype))
    return torch.where(mask, whitened, 0)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's `module` (nothing with one process): a model whose
    initialisation draws random numbers (PPO's value head) starts identical on every rank."""
    if world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def sum_across_ranks(*values: float) -> tuple[float, ...]:
    """The sums over ranks of each value (the values themselves with one process), in one collective."""
    if world_size() == 1:
        return values
    return tuple(_sum(values, _comm_device()))


def global_count(n: int) -> int:
    """Sum over ranks of an item count (rows kept, tokens): the denominator of a global mean."""
    return int(round(sum_across_ranks(float(n))[0]))


def _comm_device() -> torch.device:
    """Where collectives' buffers live: the rank's GPU with NCCL, the CPU with gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter], average: bool = True) -> None:
    """Replace each trainable parameter's .grad by its mean over ranks (average=True: each rank's loss was a mean
    over equally many items) or its sum (average=False: each rank's loss was already its share of the global
    loss, `policy_loss_scaling`). One flat buffer, one all-reduce. A parameter without a gradient on some rank
    (a rank with nothing to back-propagate) counts as zero there; one without a gradient on every rank (a reward
    or value model's unused LM head) keeps .grad None, so the optimizer skips it (no weight decay) as with one
    process. With one process: nothing is done.
    Call it after the step's last backward and before clipping (the clip then sees the global norm).
    """
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [has_grad.to(params[0].dtype)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= world_size()
    offset = 0
    for p, flag in zip(params, flat[-len(params):].tolist()):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if flag > 0 else None
        offset += n


def policy_loss_scaling(loss_normalization: str, global_rows: int, micro_rows: int,
                        normalization_constant: float) -> tuple[float, float]:
    """(share, constant) to pass to `grpo_loss.policy_and_kl_backward` for one micro-batch of `micro_rows` rows,
    when the optimizer step's rows are spread over the ranks (`global_rows` = their sum, `global_count`) and the
    gradients are then summed over ranks (`all_reduce_gradients(average=False)`):
    share = global_rows / micro_rows (each sequence-mean weighs 1 / global_rows, the KL term too) and the
    constant of Dr. GRPO's "constant" normalisation is the global one, unchanged. With one rank, global_rows is
    the step's rows: exactly the single-process loop's (share, constant). `loss_normalization` is checked by the
    loss itself; it is an argument so that the call names what it scales."""
    del loss_normalization  # sequence: share does the work; constant: share is unused by the policy term
    return global_rows / micro_rows, normalization_constant


def reduce_metrics(metrics: dict[str, float], summed: Sequence[str] = ("perf/tokens_per_s",)) -> dict[str, float]:
    """Every rank's metrics combined (the dict unchanged with one process): each key's mean over the ranks that
    have it, NaNs left out (NaN if every rank's is), the `summed` keys (throughputs) added. Collective: every rank
    must call it at the same step; keys may differ between ranks (a rank with no rows to train on)."""
    if world_size() == 1:
        return metrics
    gathered: list[dict[str, float]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, {k: float(v) for k, v in metrics.items()})
    out = {}
    for key in dict.fromkeys(k for m in gathered for k in m):  # first-seen order, rank 0's first
        values = [m[key] for m in gathered if key in m]
        finite = [v for v in values if not math.isnan(v)]
        if key in summed:
            out[key] = sum(finite)
        else:
            out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


# ---------------------------------------------------------------------------------------------------------
# Rank 0 alone writes
# ---------------------------------------------------------------------------------------------------------


def setup_run(cfg: Any) -> tuple[Path, torch.device]:
    """`train.common.setup_run` for data parallel runs: joins the process group (`init`); rank 0 locks, checks and
    prepares the output directory; the other ranks wait for it, then only set threads, seed and device.
    Returns (output directory, this rank's torch.device). Raises what `train.common.setup_run` raises (rank 0)."""
    init(get_device(cfg.device))
    if world_size() == 1:
        return common.setup_run(cfg)
    out = common.run_dir(cfg.name, cfg.out)
    if is_main():
        out, device = common.setup_run(cfg)
    else:
        set_threads(cfg.threads)
        set_seed(cfg.seed)
        device = get_device(cfg.device)
    barrier()
    return out, local_device(device)


class _SilentLogger:
    """The logger of ranks other than 0: same methods as `train.common.MetricsLogger`, nothing written."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_generations(self, step: int, records: list) -> None:
        pass

    def write(self, line: str) -> None:
        pass


def metrics_logger(out: Path, num_steps: int, config: dict[str, Any], resumed_from: int = 0,
                   quiet: bool = False):
    """`train.common.MetricsLogger` on rank 0; a logger that writes nothing on the other ranks."""
    if not is_main():
        return _SilentLogger()
    return common.MetricsLogger(out, num_steps, config, resumed_from=resumed_from, quiet=quiet)


def preference_data(cfg: Any, model, tokenizer, out: Path, seed: int, log=print):
    """`preferences.preference_data` for data parallel runs: rank 0 samples, labels and writes the pairs (when
    they are made here, not read from --data); the other ranks wait, then read the files rank 0 wrote."""
    if world_size() == 1 or cfg.data:
        return preferences.preference_data(cfg, model, tokenizer, out, seed, log=log)
    made = preferences.preference_data(cfg, model, tokenizer, out, seed, log=log) if is_main() else None
    barrier()
    if made is not None:
        return made
    files = dataclasses.replace(cfg, data=str(Path(out) / "preferences_train.jsonl"),
                                eval_data=str(Path(out) / "preferences_eval.jsonl"))
    return preferences.preference_data(files, model, tokenizer, out, seed, log=log)


# ---------------------------------------------------------------------------------------------------------
# Launching a loop from Python (the pipeline's --nproc, bench ddp)
# ---------------------------------------------------------------------------------------------------------

DATA_PARALLEL_LOOPS = ("cs336_alignment.train.sft", "cs336_alignment.train.reward_model",
                       "cs336_alignment.train.dpo", "cs336_alignment.train.grpo", "cs336_alignment.train.ppo",
                       "cs336_alignment.train.expert_iteration")  # the loops wired above


def data_parallel(train_fn) -> bool:
    """True if `train_fn` is the train() of a loop that runs data parallel (`DATA_PARALLEL_LOOPS`)."""
    return getattr(train_fn, "__module__", "") in DATA_PARALLEL_LOOPS


def launch(train_fn, cfg: Any, nproc: int) -> tuple[dict, float, float]:
    """Run `train_fn(cfg)` (a loop's train, `data_parallel`) in `nproc` fresh processes: `torchrun --standalone
    --nproc_per_node nproc`, or one plain process when nproc == 1. `--standalone` makes each launch its own group:
    torchrun's agent binds its rendezvous store and the workers' store to port 0 (a free port the kernel picks),
    so launches at once cannot share a port. The config travels as JSON (every field of the loops' configs is a
    str, number or bool); each process runs with OMP_NUM_THREADS = cfg.threads (1 by default). Each rank's
    output goes to this process's and to <cfg.out>/torchrun/ (torchrun --tee 3).

    Returns:
        (rank 0's result dict, wall seconds, CPU seconds of the child processes).
    Raises:
        ValueError: nproc < 1, or a loop that is not data parallel with nproc > 1.
        RuntimeError: the processes failed: the message ends with the last lines of each rank's stderr.
    """
    if nproc < 1 or (nproc > 1 and not data_parallel(train_fn)):
        raise ValueError(f"--nproc {nproc}: only {', '.join(m.rsplit('.', 1)[1] for m in DATA_PARALLEL_LOOPS)} "
                         f"run data parallel, with nproc >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"train": f"{train_fn.__module__}:{train_fn.__name__}",
                "config": f"{type(cfg).__module__}:{type(cfg).__qualname__}", "values": dataclasses.asdict(cfg),
                "result": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        logs = Path(cfg.out or tmp) / "torchrun"
        runner = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "--log-dir",
                  str(logs), "--tee", "3"] if nproc > 1 else []
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, getattr(cfg, "threads", 1)))}
        before, t0 = os.times(), time.perf_counter()
        done = subprocess.run([sys.executable, *runner, "-m", "cs336_alignment.train.distributed", str(spec_path)], env=env)
        wall, after = time.perf_counter() - t0, os.times()
        if done.returncode != 0:
            tails = "".join(f"\n--- {path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-12:])
                            for path in sorted(logs.glob("*/attempt_*/*/stderr.log")))
            raise RuntimeError(f"{train_fn.__module__} with {nproc} process(es) exited with status {done.returncode}"
                               + (f"; the ranks' stderr ends:{tails}" if tails else ""))
        result = json.loads(Path(spec["result"]).read_text())
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return result, wall, cpu


def _resolve(name: str):
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> None:
    """`python -m cs336_alignment.train.distributed SPEC.json` (what `launch` runs in every process): build the config,
    run the loop, rank 0 writes the result next to the spec."""
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    result = _resolve(spec["train"])(common.config_from_dict(_resolve(spec["config"]), spec["values"]))
    if rank() == 0:
        Path(spec["result"]).write_text(json.dumps(result, default=float))
    cleanup()  # every rank leaves together, after rank 0 wrote


if __name__ == "__main__":
    main()
