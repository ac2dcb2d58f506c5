"""What every RL and preference loop builds before its first step, in one place: `setup_policy(cfg, stage)`
returns the run directory and device, the policy, the frozen reference, the checkpoint's own tokenizer, the reward
model, the train and held-out problems, the optimizer and the resume state. `sequence_rewards` is the one reward
seam of grpo and ppo: a reward_fn, the learned reward model, or the task world's gold reward.

The loops keep their steps written out in full (CleanRL style); only their common first lines live here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cs336_alignment.train import distributed as ddp
from cs336_alignment.lm import lora
from cs336_alignment.advantages import compute_rollout_rewards
from cs336_alignment.lm.checkpoint import load_checkpoint_extra, load_model
from cs336_alignment.lm.gpu import configure_model
from cs336_alignment.lm.nn_utils import AdamW
from cs336_alignment.reward_model import RewardModel, load_reward_model, score_rollouts
from cs336_alignment.lm.rollout import Rollouts
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train.common import build_optimizer, init_or_shipped, load_problems, load_sft_optimizer_state
from cs336_alignment.world.verifier import gold_reward

RewardFn = Callable[[str, str], dict[str, float]]


@dataclass
class PolicySetup:
    """What `setup_policy` built. `start_step` is 0 and `resume_extra` {} unless the run resumes."""

    cfg: Any                              # the config, with an empty --init replaced by the shipped SFT model
    out: Path                             # the run directory (locked for this run)
    device: torch.device
    policy: torch.nn.Module               # TransformerLM: the policy being trained
    model_config: dict[str, Any]          # the checkpoint's model config (saved with every checkpoint)
    tokenizer: Any                        # the checkpoint's own tokenizer
    reference: torch.nn.Module | None     # the frozen initial policy (KL terms, eval/kl/ref)
    reward_model: RewardModel | None      # frozen, when the config names one (--reward-model)
    problems: list[dict[str, str]]        # the prompt pool ({"question", "answer"}; [] when not asked for)
    eval_problems: list[dict[str, str]]   # the held-out problems (--eval-data, or the task world's test split)
    optimizer: AdamW | None               # AdamW over `trainable` (None when not asked for)
    trainable: list[torch.nn.Parameter] = dataclasses.field(default_factory=list)  # all, or (LoRA) the adapters
    start_step: int = 0                   # the step a resumed run continues from
    resume_extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # the checkpoint's extra dict on resume

    @property
    def ckpt_path(self) -> Path:
        return self.out / "ckpt.pt"


def setup_policy(cfg: Any, stage: str, *, reference: bool = True, load_rm: bool | None = None, problems: bool = True,
                 optimizer: bool = True) -> PolicySetup:
    """The first lines of a loop that starts from a policy: grpo, ppo and ei use all of it; dpo, rm and bon the
    parts they need (`reference`, `problems`, `optimizer` False leave those out). In this order: an empty --init
    becomes the shipped SFT model (`init_or_shipped`); `setup_run` (run directory and lock, threads, seed, device;
    under torchrun, `distributed.setup_run`); the policy from --init and the checkpoint's own tokenizer (a Hugging
    Face checkpoint's, or ours); with --lora-rank and `optimizer`, its adapters (`lora.setup`); the frozen
    reference (`lora.frozen_reference`: a deep copy, or the base with the adapters disabled); `gpu.configure_model`
    when the config has gradient_checkpointing / compile; the frozen reward model at cfg.reward_model (when
    `load_rm`, by default whenever a path is given); the prompt pool (cfg.data or the task world's cfg.split,
    seeded cfg.seed + 2) and the first cfg.n_eval_problems held-out problems (cfg.eval_data or the task world's
    test split); AdamW over the trainable parameters (with --init-optimizer, SFT's second moments); on --resume
    with <out>/ckpt.pt, the policy (LoRA: its adapters) and optimizer state of that checkpoint and its extra dict
    (the loop restores the RNG state from it once it has built everything else).

    Nothing here draws from the global random generators after `setup_run` seeds them, except the model
    constructors of load_model / load_reward_model, in that order (the loops' own draws keep their order).

    Raises:
        ValueError: as setup_run, load_model, load_reward_model and load_problems do (one line naming the file).
    """
    cfg = init_or_shipped(cfg, stage)
    out, device = ddp.setup_run(cfg)  # under torchrun: rank 0 prepares the directory (distributed.py)
    policy, init_extra = load_model(cfg.init, device)
    tokenizer = load_tokenizer(policy.config.tokenizer)  # the checkpoint's own (e.g. a Hugging Face one's)
    # The policy trains every weight, or with --lora-rank (when it is trained here: `optimizer`) only the adapters;
    # the reference is then the same weights with the adapters disabled (lora.py), not a second copy.
    trainable = lora.setup(policy, cfg) if optimizer and hasattr(cfg, "lora_rank") else list(policy.parameters())
    frozen = lora.frozen_reference(policy) if reference else None
    if hasattr(cfg, "gradient_checkpointing"):
        configure_model(policy, device, gradient_checkpointing=cfg.gradient_checkpointing, compile=cfg.compile)
    rm_path = getattr(cfg, "reward_model", "")
    rm = load_reward_model(rm_path, device)[0].requires_grad_(False) if rm_path and load_rm is not False else None
    pool = load_problems(cfg.data, cfg.n_problems, cfg.split, cfg.seed + 2) if problems else []
    held_out = load_problems(cfg.eval_data, cfg.n_eval_problems, "test", 0)[:cfg.n_eval_problems] if problems else []
    adamw = build_optimizer(trainable, cfg) if optimizer else None
    if adamw is not None and getattr(cfg, "init_optimizer", False):
        load_sft_optimizer_state(cfg.init, adamw)
    setup = PolicySetup(cfg, out, device, policy, init_extra["model_config"], tokenizer, frozen, rm, pool, held_out,
                        adamw, trainable)
    if getattr(cfg, "resume", False) and setup.ckpt_path.exists():
        setup.start_step = lora.load_checkpoint(setup.ckpt_path, policy, adamw)  # (LoRA: the adapters)
        setup.resume_extra = load_checkpoint_extra(setup.ckpt_path)
    return setup


def sequence_rewards(rollouts: Rollouts, truths: list[str], reward_model: RewardModel | None,
                     reward_fn: RewardFn | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The training reward of every rollout, (N,) float32, and {"reward/proxy_mean": ...} when it is not the gold
    reward: `reward_fn(response text, ground truth)["reward"]` if given (custom tasks, tests), else the reward
    model's score of the sampled token ids (`reward_model.score_rollouts`: prompt + response ids as sampled, never
    re-tokenized), else the task world's gold reward (`verifier.gold_reward`)."""
    if reward_fn is None and reward_model is not None:
        scores = score_rollouts(reward_model, rollouts)                                   # (N,)
    else:
        scores, _ = compute_rollout_rewards(reward_fn or gold_reward, rollouts.response_texts, truths)
    proxy = scores.tolist()
    metrics = {} if reward_fn is None and reward_model is None else {"reward/proxy_mean": sum(proxy) / len(proxy)}
    return scores, metrics
