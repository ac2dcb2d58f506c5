"""LoRA, by hand: low-rank adapters on chosen linear layers of a frozen model (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685).

A wrapped layer computes h = W0 x + (alpha / r) * B A x (eq. 3, with the alpha/r scaling of §4.1): W0 (out, in)
is the frozen pretrained weight, A (r, in) is Kaiming-uniform initialised and B (out, r) starts at zero, so the
wrapped model starts identical to the base model and only A and B train (r (in + out) numbers per layer instead of
in x out). Dropout, when asked for, applies to the adapter's input only.

    apply_lora(model, rank=8, alpha=16, targets=("q", "v"))    # wraps layers.*.attn.q_proj / v_proj; freezes the rest
    optimizer = AdamW(lora_parameters(model))                   # optimizer state for the adapters only
    with adapters_disabled(model): ref_logits = model(ids)      # the base model: DPO's reference, no second copy
    save_adapters(model, "adapter.pt"); load_adapters("adapter.pt", base_model)   # adapter-only checkpoints
    merge_lora(model)                                           # W0 += (alpha / r) B A; plain layers again (export)

The training loops (sft, dpo, grpo, rm) take the `LoRAConfig` fields (`--lora-rank 8 --lora-targets q,v`; rank 0,
the default, trains every weight as before) and call `setup` (wrap, freeze, return what the optimizer gets),
`frozen_reference` (DPO's and GRPO's reference: the base with adapters disabled, no copy), and this module's
`save_checkpoint` / `load_checkpoint` instead of checkpoint.py's: the run's ckpt.pt holds the MERGED model, so every
consumer of a checkpoint works unchanged, plus the adapters and their optimizer state for an exact --resume;
adapter.pt beside it holds the adapters alone.

Wrapped layers keep the base layer's parameter names (`weight`, `bias`) and add `lora_A` and `lora_B`, so a
wrapped model's state dict is the base model's plus the adapters', and `merge_lora` gives back exactly the base
model's keys (what `export` and `save_pretrained` write).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cs336_alignment.lm import checkpoint
from cs336_alignment.lm.checkpoint import CheckpointError, PathOrFile, read_checkpoint

# --lora-targets short names -> the TransformerLM module names they wrap (attention q/k/v/output, SwiGLU w1/w2/w3)
TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "output_proj", "w1": "w1", "w2": "w2", "w3": "w3"}


class LoRALinear(nn.Module):
    """y = x W0^T (+ b) + (alpha / r) * dropout(x) A^T B^T, with W0 (and b) frozen (Hu et al. 2021, eq. 3).

    Args:
        base: the layer to adapt: any module with `weight` (out, in) and an optional `bias` (out,) that computes
            x W^T + b (the package's `model.Linear`, or `torch.nn.Linear`). Its parameters are reused, not copied.
        rank: r >= 1.  alpha: the scale numerator (alpha / r multiplies B A).  dropout: on the adapter's input.

    Raises:
        ValueError: for rank < 1, dropout outside [0, 1) or a base layer without a 2-d weight.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        weight = getattr(base, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f"LoRA wraps a linear layer with a 2-d weight, got {type(base).__name__}")
        if rank < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA needs rank >= 1 and 0 <= dropout < 1, got rank={rank}, dropout={dropout}")
        out_features, in_features = weight.shape
        self.weight = weight                                               # (out, in), frozen by apply_lora
        self.bias = getattr(base, "bias", None)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))              # as nn.Linear's (and the LoRA paper's code)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=weight.dtype))
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True   # False: the base layer alone (adapters_disabled)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        if self.enabled:
            y = y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling   # rank-r update, eq. 3
        return y

    def delta_weight(self) -> Tensor:
        """(alpha / r) B A, (out, in): what merging adds to W0."""
        return (self.lora_B @ self.lora_A) * self.scaling


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: Sequence[str] = ("q", "v")) -> list[str]:
    """Wrap every linear layer whose module name ends in one of `targets` (short names of TARGETS, e.g. "q", "w1")
    in a LoRALinear, and freeze every other parameter of the model (embeddings, norms, head, value/reward heads
    included). Returns the wrapped modules' names.

    Raises:
        ValueError: for an unknown target name, or when no layer matches (nothing would train).
    """
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"--lora-targets {unknown}: choose from {','.join(TARGETS)}")
    suffixes = {TARGETS[t] for t in targets}
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in suffixes and not isinstance(child, LoRALinear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no layer named {sorted(suffixes)} in {type(model).__name__}: nothing for LoRA to adapt")
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    return wrapped


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (A and B of every wrapped layer): what the optimizer should see."""
    return [p for _, layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes its base function (every adapter off): the reference policy of DPO,
    GRPO's KL term or PPO without a second copy of the weights."""
    layers = [layer for _, layer in lora_layers(model)]
    states = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, state in zip(layers, states):
            layer.enabled = state


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """W0 += (alpha / r) B A in every wrapped layer and put a plain layer back (the base layer's class, holding the
    merged weight), so the model has exactly its original modules and state-dict keys again. In place; returns it.
    The merged weight is unfrozen (a merged model is an ordinary model)."""
    for name, layer in list(lora_layers(model)):
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if layer.enabled:
            layer.weight.add_(layer.delta_weight().to(layer.weight.dtype))
        plain = _PlainLinear(layer.weight, layer.bias)
        setattr(parent, name.rpartition(".")[2], plain)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


class _PlainLinear(nn.Module):
    """x W^T (+ b) holding given parameters (what merge_lora leaves where a LoRALinear was)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def lora_config(model: nn.Module) -> dict:
    """{"rank", "alpha", "targets"} of a wrapped model (what an adapter checkpoint records)."""
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError("the model has no LoRA adapters")
    names = {name.rsplit(".", 1)[-1] for name, _ in lora_layers(model)}
    return {"rank": layers[0].rank, "alpha": layers[0].alpha,
            "targets": sorted(short for short, full in TARGETS.items() if full in names)}


class _Adapters(nn.Module):
    """A view of a wrapped model whose state dict is its adapters only (for save_checkpoint)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._names = {name: layer for name, layer in lora_layers(model)}

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        return {f"{name}.{p}": getattr(layer, p).detach().clone() for name, layer in self._names.items()
                for p in ("lora_A", "lora_B")}


def save_adapters(model: nn.Module, out: PathOrFile, **extra) -> None:
    """An adapter-only checkpoint (atomic, weights_only-safe): A and B of every wrapped layer, and the LoRA config.
    Its size is the adapters', not the model's."""
    checkpoint.save_checkpoint(_Adapters(model), None, 0, out, lora=lora_config(model), **extra)


def load_adapters(src: PathOrFile, model: nn.Module, dropout: float = 0.0) -> nn.Module:
    """Wrap `model` (the base the adapters were trained on) as the checkpoint's config says and load its adapters.

    Raises:
        ValueError: if `src` is not an adapter checkpoint, or its adapters do not fit the model (names, shapes).
    """
    state = torch.load(src, map_location="cpu", weights_only=True)
    config = state.get("extra", {}).get("lora") if isinstance(state, dict) else None
    if config is None:
        raise ValueError(f"{src}: not a LoRA adapter checkpoint (no 'lora' config)")
    apply_lora(model, config["rank"], config["alpha"], dropout, config["targets"])
    layers = dict(lora_layers(model))
    expected = {f"{name}.{p}": getattr(layer, p) for name, layer in layers.items() for p in ("lora_A", "lora_B")}
    if set(expected) != set(state["model"]):
        missing, extra = sorted(set(expected) - set(state["model"])), sorted(set(state["model"]) - set(expected))
        raise ValueError(f"{src}: adapters do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for key, tensor in state["model"].items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"{src}: {key} is {tuple(tensor.shape)}, the model's is {tuple(expected[key].shape)}")
            expected[key].copy_(tensor)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (a tied weight counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------------------
# Glue for the training loops: config fields, setup, the reference, merged checkpoints and exact resume
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoRAConfig:
    """The LoRA fields every adapter-capable loop's config inherits (sft, dpo, grpo, rm)."""
    lora_rank: int = 0
    """LoRA: train rank-r adapters on --lora-targets and freeze every base weight (Hu et al. 2021); 0 = off (every
    weight trains)"""
    lora_alpha: float = 0.0
    """LoRA scale numerator: the update is (alpha / r) B A; 0 = 2 * lora_rank (the same scale at every rank)"""
    lora_dropout: float = 0.0
    """dropout on the adapters' input (training only)"""
    lora_targets: str = "q,k,v,o,w1,w2,w3"
    """comma-separated projections that get adapters: q, k, v, o (attention), w1, w2, w3 (SwiGLU)"""


def setup(model: nn.Module, cfg: Any, keep_trainable: Sequence[str] = ()) -> list[nn.Parameter]:
    """Wrap `model` as cfg's LoRA fields say (nothing when cfg.lora_rank == 0) and return the parameters the
    optimizer should get: every parameter without LoRA; with it, the adapters (and the parameters whose names
    start with one of `keep_trainable`, e.g. a reward model's new head), the base weights frozen, so the optimizer
    keeps no state for them. A's initialisation draws from its own generator (seeded by cfg.seed), so the run's
    data and sampling draws are the same with and without LoRA.

    Raises:
        ValueError: "--lora-rank must be >= 0", an unknown --lora-targets name, --lora-dropout outside [0, 1),
            or --init-optimizer (an SFT optimizer state for every weight) together with LoRA.
    """
    rank = cfg.lora_rank
    if rank < 0:
        raise ValueError(f"--lora-rank must be >= 0 (0 = off), got {rank}")
    if rank == 0:
        return list(model.parameters())
    if getattr(cfg, "init_optimizer", False):
        raise ValueError("--init-optimizer loads the SFT optimizer state of every weight; with --lora-rank only the "
                         "adapters train: use --no-init-optimizer")
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        apply_lora(model, rank, cfg.lora_alpha or 2.0 * rank, cfg.lora_dropout, targets)
    for name, param in model.named_parameters():
        if any(name.startswith(prefix) for prefix in keep_trainable):
            param.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class BaseModel(nn.Module):
    """The wrapped `model` with its adapters disabled: the frozen reference policy (DPO's pi_ref, GRPO's KL
    reference) computed by the same weights, without a second copy. Calls run under `adapters_disabled`;
    `lm_head` and `config` are the model's. `train()`/`eval()` on the view leave the policy's mode alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, return_hidden: bool = False,
                **kwargs) -> Tensor:
        with adapters_disabled(self.model):
            return self.model(input_ids, attention_mask, return_hidden=return_hidden, **kwargs)

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def config(self):
        return self.model.config

    def train(self, mode: bool = True) -> BaseModel:
        return self


def frozen_reference(model: nn.Module) -> nn.Module:
    """The loop's frozen reference policy: the base with adapters disabled (`BaseModel`) when `model` has LoRA
    adapters, else a frozen deep copy (eval mode, no gradients), as without LoRA."""
    if any(True for _ in lora_layers(model)):
        return BaseModel(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


class _Merged(nn.Module):
    """A view of a wrapped model whose state dict is the merged model's: W0 + (alpha / r) B A under the base keys,
    no adapter keys (what `merge_lora` would leave, without changing the model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["_model"] = model   # not a submodule: only state_dict is used

    def state_dict(self, *args, **kwargs) -> dict[str, Tensor]:
        state = {k: v for k, v in self._model.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}
        for name, layer in lora_layers(self._model):
            if layer.enabled:
                state[f"{name}.weight"] = (layer.weight + layer.delta_weight().to(layer.weight.dtype)).detach()
        return state


def adapter_path(ckpt_path: str | os.PathLike) -> Path:
    """Where a loop writes its adapter-only checkpoint: adapter.pt beside ckpt.pt."""
    return Path(ckpt_path).with_name("adapter.pt")


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int,
                           path: str | os.PathLike, **extra) -> None:
    """`checkpoint.save_checkpoint` of a loop: without adapters, exactly it. With adapters, ckpt.pt holds the MERGED
    model (the base model's keys: evaluate, export and the pipeline load it as any checkpoint), the adapters'
    optimizer state, and extra["lora"] = {rank, alpha, targets, adapters} for `load_checkpoint`; adapter.pt beside
    it holds the adapters alone (`save_adapters`)."""
    if not any(True for _ in lora_layers(model)):
        checkpoint.save_checkpoint(model, optimizer, iteration, path, **extra)
        return
    adapters = _Adapters(model).state_dict()
    checkpoint.save_checkpoint(_Merged(model), optimizer, iteration, path,
                               lora={**lora_config(model), "adapters": adapters}, **extra)
    save_adapters(model, adapter_path(path), step=int(iteration))


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """`checkpoint.load_checkpoint` for a loop's --resume: without adapters, exactly it. With adapters, `model` is
    the base it started from, wrapped by `setup` (the base weights never change): the adapters and the optimizer
    state come from the checkpoint (its merged weights are for the consumers). Returns the saved iteration.

    Raises:
        CheckpointError: the checkpoint has no adapters (a full fine-tuning run), or adapters of other names/shapes.
    """
    if not any(True for _ in lora_layers(model)):
        return checkpoint.load_checkpoint(path, model, optimizer)
    state = read_checkpoint(path)
    saved = state["extra"].get("lora")
    if not isinstance(saved, dict) or not isinstance(saved.get("adapters"), dict):
        raise CheckpointError(f"{path}: field 'lora': missing: a run without --lora-rank cannot be resumed with it")
    expected = _Adapters(model).state_dict()
    for key, tensor in expected.items():
        got = saved["adapters"].get(key)
        if not isinstance(got, Tensor) or got.shape != tensor.shape:
            raise CheckpointError(f"{path}: adapter {key!r}: missing or of another shape (another --lora-rank or "
                                  f"--lora-targets?)")
    layers = dict(lora_layers(model))
    with torch.no_grad():
        for key, tensor in saved["adapters"].items():
            name, _, which = key.rpartition(".")
            getattr(layers[name], which).copy_(tensor)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state["iteration"]
