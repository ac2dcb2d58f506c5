"""The config blocks every training entry point shares: run, optimizer, schedule, logging and RL prompts.

Each stage's config (train/sft.py SFTConfig, train/grpo.py GRPOConfig, ...) is one flat dataclass built from these
blocks by inheritance, so the command line stays flat (`--lr`, `--log-every`, ...) and a field is written once.
A stage whose defaults differ says so in one line, `@with_defaults(name="dpo", num_steps=120)` under `@dataclass`;
a field whose meaning differs is redeclared with its own docstring. Each field is documented by the string literal
under it (the CleanRL convention, read by `train.common.field_docs`, which walks the bases too).

Bases are listed last-first: a dataclass's fields follow its reversed MRO, so
`class SFTConfig(LogConfig, ScheduleConfig, OptimConfig, ResumableRunConfig)` lists the run's fields, then the
optimizer's, the schedule's and the logging's, then its own.

Renamed fields keep their old command-line flag as an alias: `FLAG_ALIASES` of a config class maps an old name to
the field (`build_parser` adds `--old-name` to the field's flag; `config_from_dict` accepts the old key).
"""
from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

C = TypeVar("C", bound=type)


@dataclass
class RunConfig:
    """Where a run writes and how it starts: every stage."""

    name: str = "run"
    """run name: outputs go to runs/<name>/ unless --out is given"""
    out: str = ""
    """output directory (ckpt.pt or the stage's result file, metrics.jsonl); empty = runs/<name>"""
    overwrite: bool = False
    """replace the run already in --out (without it, a directory that holds a run is an error)"""
    seed: int = 0
    """seed of everything the stage draws: its data and data order, its samples, a new model's initialisation"""
    device: str = "auto"
    """cuda, mps, cpu, or auto (cuda, then mps, then cpu)"""
    threads: int = 1
    """torch.set_num_threads; 0 = torch's default (1 was fastest on a shared 2-core CPU)"""

    FLAG_ALIASES: ClassVar[dict[str, str]] = {}  # {old field name: its new name}: the renamed flags still parse


@dataclass
class ResumableRunConfig(RunConfig):
    """A run that saves everything it needs to continue (pretrain, sft, grpo, ppo)."""

    resume: bool = False
    """continue from <out>/ckpt.pt (the same numbers as an uninterrupted run)"""
    checkpoint_every: int = 100
    """steps between checkpoints (and at the last step)"""


@dataclass
class PolicyInitConfig:
    """The policy a post-training stage starts from (grpo, ppo, dpo, ei, bon)."""

    init: str = ""
    """the SFT checkpoint to start from (the policy, and the frozen reference of the KL terms and eval/kl/ref);
    empty = the shipped tiny SFT model (data/checkpoints/tiny/sft.pt)"""


@dataclass
class OptimConfig:
    """The one optimizer of every loop: AdamW (nn_utils) with global gradient-norm clipping."""

    num_steps: int = 100
    """optimizer steps (grpo, ppo: rollout batches, each epochs_per_rollout_batch x minibatches optimizer steps; ei:
    rounds)"""
    lr: float = 1e-4
    """peak learning rate (after linear warmup)"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient L2 norm to this value"""


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine decay to min_lr (train.common.cosine_lr)."""

    min_lr: float = 1e-5
    """learning rate at the end of the cosine decay"""
    warmup_steps: int = 10
    """steps of linear warmup (grpo, ppo: rollout batches)"""


@dataclass
class LogConfig:
    """Where the metrics go: every stage."""

    quiet: bool = False
    """no console lines (metrics.jsonl is still written)"""
    log_to: str = ""
    """metric sinks besides metrics.jsonl, comma-separated (log_sinks.py): wandb (<out>/wandb; WANDB_MODE=offline
    needs no network), tensorboard (<out>/tensorboard); each needs its package: pip install -e '.[logging]'"""


@dataclass
class IntervalConfig:
    """How often a training loop logs and evaluates."""

    log_every: int = 20
    """steps between console/metrics lines (grpo, ppo: rollout batches)"""
    eval_every: int = 100
    """steps between evaluations (and at the last step; grpo, ppo, ei: also before the first)"""


@dataclass
class MemoryConfig:
    """Memory/speed switches of the policy's forward and backward (large checkpoints on a GPU)."""

    gradient_checkpointing: bool = False
    """recompute each transformer block in backward instead of storing its activations (GPU memory for 0.5B+ models)"""
    compile: bool = False
    """torch.compile each block's MLP and norms (gpu.configure_model)"""


@dataclass
class ModelShapeConfig:
    """The shape of a model trained from scratch (model.TransformerLM; used only without --init)."""

    context_length: int = 128
    """maximum sequence length; longer conversations are cut"""
    d_model: int = 128
    """residual stream width"""
    num_layers: int = 4
    """transformer blocks"""
    num_heads: int = 4
    """attention heads"""
    d_ff: int = 384
    """SwiGLU hidden width"""


@dataclass
class PromptConfig:
    """The RL prompt pool and the held-out problems (grpo, ppo, ei)."""

    data: str = ""
    """jsonl of {"question", "answer"} prompts; empty = the task world's --split"""
    split: str = "rl"
    """task-world split of the prompt pool: rl, the half of train that SFT demonstrations drawn from sft never use
    (tasks.train_half), so no RL prompt is a question whose answer the SFT model memorised; train = both halves"""
    n_problems: int = 4000
    """task-world prompts in the pool (when --data is empty)"""
    n_eval_problems: int = 200
    """held-out test problems for eval/* (greedy and sampled accuracy)"""
    eval_data: str = ""
    """jsonl of {"question", "answer"} held-out problems (the first n_eval_problems); empty = the task world's"""
    eval_samples: int = 2
    """T = 1 samples per eval problem for eval/sampled_accuracy"""


@dataclass
class RolloutConfig:
    """What an RL step samples (grpo, ppo, ei)."""

    prompts_per_step: int = 32
    """questions per rollout batch"""
    group_size: int = 8
    """responses sampled per question (G)"""
    temperature: float = 1.0
    """sampling temperature (log-probs are recomputed at the same temperature)"""
    max_new_tokens: int = 64
    """response length limit (task-world answers: at most ~40 tokens terse, ~60 with both prose lines)"""


@dataclass
class RewardConfig:
    """The training reward of grpo and ppo (one seam: `train.common.setup_policy`)."""

    reward: Literal["gold", "rm"] = "gold"
    """gold = the task world's verifiable reward; rm = the learned reward model at --reward-model"""
    reward_model: str = ""
    """reward-model checkpoint (train/reward_model.py) for --reward rm"""


@dataclass
class PolicyUpdateConfig:
    """How an RL loop updates the policy on one rollout batch (grpo, ppo)."""

    init_optimizer: bool = False
    """start the policy's AdamW second moments from those saved in --init (SFT's gradient scale:
    train.common.load_sft_optimizer_state) instead of zeros"""
    kl_coef: float = 0.0
    """weight of the KL penalty to the frozen reference"""
    cliprange: float = 0.2
    """clip epsilon of the policy ratio pi / pi_old"""
    epochs_per_rollout_batch: int = 2
    """passes over each rollout batch (> 1 makes the updates off-policy: they need a clipped ratio)"""
    minibatches: int = 1
    """optimizer steps per epoch (the rows are split evenly)"""
    micro_batch_size: int = 64
    """rows per forward/backward (gradient accumulation inside an optimizer step)"""


@dataclass
class GenerationLogConfig:
    """Sample responses written to <out>/generations.jsonl (grpo, ppo, ei)."""

    log_generations_every: int = 0
    """steps between writes of sample responses (prompt, response, ground truth, rewards, entropy) to
    <out>/generations.jsonl (evaluate.log_generations); 0 = never"""
    log_generations_samples: int = 16
    """responses per write: the step's first rows (whole groups when a multiple of group_size)"""


def with_defaults(**defaults: Any) -> Callable[[C], C]:
    """Class decorator, placed under `@dataclass`: give inherited fields this stage's defaults, keeping their type,
    their place in the field order (and so on the command line) and their docstring.

    Raises:
        TypeError: naming a key that is not a field of a base class.
    """
    def decorate(cls: C) -> C:
        hints: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            if hasattr(base, "__dataclass_fields__"):
                hints.update({k: v for k, v in typing.get_type_hints(base).items() if k in base.__dataclass_fields__})
        unknown = sorted(set(defaults) - set(hints))
        if unknown:
            raise TypeError(f"{cls.__name__}: with_defaults names {unknown}, which no base config has")
        cls.__annotations__ = {**{k: hints[k] for k in defaults}, **cls.__dict__.get("__annotations__", {})}
        for key, value in defaults.items():
            setattr(cls, key, value)
        return cls
    return decorate

