"""CS336-style adapters: one-line glue from the course's `run_*` names to this package.

Tests (and graders from Stanford CS336: assignment 1 of Spring 2025, assignment 5 of the Spring 2026 edition) call
these by keyword. The 2025 edition's assignment 5 used some of the same names with other parameters
(compute_group_normalized_rewards, compute_policy_gradient_loss) and names the 2026 edition dropped: every 2025
name and signature is in `adapters_2025.py`.
Imports are inside each function so that one unfinished module never breaks the others' tests.
"""
from __future__ import annotations

import os
from typing import IO, Any, BinaryIO, Callable, Iterable

import numpy as np
import torch
from torch import Tensor


# ============================================================================
# Assignment 1: the transformer and its training loop parts
# ============================================================================

def run_linear(d_in: int, d_out: int, weights: Tensor, in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.model import Linear
    layer = Linear(d_in, d_out)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_embedding(vocab_size: int, d_model: int, weights: Tensor, token_ids: Tensor) -> Tensor:
    from cs336_alignment.lm.model import Embedding
    layer = Embedding(vocab_size, d_model)
    layer.load_state_dict({"weight": weights})
    return layer(token_ids)


def run_swiglu(d_model: int, d_ff: int, w1_weight: Tensor, w2_weight: Tensor, w3_weight: Tensor,
               in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.model import SwiGLU
    ffn = SwiGLU(d_model, d_ff)
    ffn.load_state_dict({"w1.weight": w1_weight, "w2.weight": w2_weight, "w3.weight": w3_weight})
    return ffn(in_features)


def run_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    from cs336_alignment.lm.model import scaled_dot_product_attention
    return scaled_dot_product_attention(Q, K, V, mask)


def run_multihead_self_attention(d_model: int, num_heads: int, q_proj_weight: Tensor, k_proj_weight: Tensor,
                                 v_proj_weight: Tensor, o_proj_weight: Tensor, in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.model import MultiHeadSelfAttention
    attn = MultiHeadSelfAttention(d_model, num_heads)
    attn.load_state_dict({"q_proj.weight": q_proj_weight, "k_proj.weight": k_proj_weight,
                          "v_proj.weight": v_proj_weight, "output_proj.weight": o_proj_weight})
    return attn(in_features)


def run_multihead_self_attention_with_rope(d_model: int, num_heads: int, max_seq_len: int, theta: float,
                                           q_proj_weight: Tensor, k_proj_weight: Tensor, v_proj_weight: Tensor,
                                           o_proj_weight: Tensor, in_features: Tensor,
                                           token_positions: Tensor | None = None) -> Tensor:
    from cs336_alignment.lm.model import MultiHeadSelfAttention, RotaryPositionalEmbedding
    rope = RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len)
    attn = MultiHeadSelfAttention(d_model, num_heads, rope=rope)
    attn.load_state_dict({"q_proj.weight": q_proj_weight, "k_proj.weight": k_proj_weight,
                          "v_proj.weight": v_proj_weight, "output_proj.weight": o_proj_weight}, strict=False)
    return attn(in_features, token_positions=token_positions)


def run_rope(d_k: int, theta: float, max_seq_len: int, in_query_or_key: Tensor, token_positions: Tensor) -> Tensor:
    from cs336_alignment.lm.model import RotaryPositionalEmbedding
    return RotaryPositionalEmbedding(theta, d_k, max_seq_len)(in_query_or_key, token_positions)


def run_transformer_block(d_model: int, num_heads: int, d_ff: int, max_seq_len: int, theta: float,
                          weights: dict[str, Tensor], in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.model import RotaryPositionalEmbedding, TransformerBlock
    rope = RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len)
    block = TransformerBlock(d_model, num_heads, d_ff, rope=rope)
    block.load_state_dict(weights, strict=False)
    return block(in_features)


def run_transformer_lm(vocab_size: int, context_length: int, d_model: int, num_layers: int, num_heads: int,
                       d_ff: int, rope_theta: float, weights: dict[str, Tensor], in_indices: Tensor) -> Tensor:
    from cs336_alignment.lm.model import TransformerConfig, TransformerLM
    cfg = TransformerConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                            num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta)
    model = TransformerLM(cfg)
    model.load_state_dict(weights, strict=False)
    return model(in_indices)


def run_rmsnorm(d_model: int, eps: float, weights: Tensor, in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.model import RMSNorm
    norm = RMSNorm(d_model, eps=eps)
    norm.load_state_dict({"weight": weights})
    return norm(in_features)


def run_silu(in_features: Tensor) -> Tensor:
    from cs336_alignment.lm.nn_utils import silu
    return silu(in_features)


def run_get_batch(dataset: np.ndarray, batch_size: int, context_length: int, device: str) -> tuple[Tensor, Tensor]:
    from cs336_alignment.lm.data import get_batch
    return get_batch(dataset, batch_size, context_length, device)


def run_softmax(in_features: Tensor, dim: int) -> Tensor:
    from cs336_alignment.lm.nn_utils import softmax
    return softmax(in_features, dim)


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    from cs336_alignment.lm.nn_utils import cross_entropy
    return cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    from cs336_alignment.lm.nn_utils import clip_gradients
    clip_gradients(parameters, max_l2_norm)


def get_adamw_cls() -> type[torch.optim.Optimizer]:
    from cs336_alignment.lm.nn_utils import AdamW
    return AdamW


def run_get_lr_cosine_schedule(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
                               cosine_cycle_iters: int) -> float:
    from cs336_alignment.lm.nn_utils import get_lr_cosine_schedule
    return get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)


def run_save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                        out: str | os.PathLike | BinaryIO | IO[bytes]) -> None:
    from cs336_alignment.lm.checkpoint import save_checkpoint
    save_checkpoint(model, optimizer, iteration, out)


def run_load_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> int:
    from cs336_alignment.lm.checkpoint import load_checkpoint
    return load_checkpoint(src, model, optimizer)


def get_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str] | None = None):
    from cs336_alignment.lm.tokenizer import Tokenizer
    return Tokenizer.from_vocab_and_merges(vocab, merges, special_tokens)


def run_train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str], **kwargs):
    from cs336_alignment.lm.bpe import train_bpe
    return train_bpe(input_path, vocab_size, special_tokens, **kwargs)


# ============================================================================
# Assignment 5 (2026 edition): tokenisation, log-probs, GRPO; the supplement's SFT and DPO
# ============================================================================

def run_tokenize_prompt_and_output(prompt_strs: list[str], output_strs: list[str], tokenizer) -> dict[str, Tensor]:
    from cs336_alignment.lm.data import tokenize_prompt_and_output
    return tokenize_prompt_and_output(prompt_strs, output_strs, tokenizer)


def run_compute_entropy(logits: Tensor) -> Tensor:
    from cs336_alignment.logprobs import compute_entropy
    return compute_entropy(logits)


def run_get_response_log_probs(model: torch.nn.Module, input_ids: Tensor, labels: Tensor,
                               return_token_entropy: bool = False) -> dict[str, Tensor]:
    from cs336_alignment.logprobs import get_response_log_probs
    return get_response_log_probs(model, input_ids, labels, return_token_entropy)


def run_masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    from cs336_alignment.masked import masked_mean
    return masked_mean(tensor, mask, dim)


def run_masked_normalize(tensor: Tensor, mask: Tensor, dim: int | None = None,
                         normalize_constant: float = 1.0) -> Tensor:
    from cs336_alignment.masked import masked_normalize
    return masked_normalize(tensor, mask, dim, normalize_constant)


def run_sft_microbatch_train_step(policy_log_probs: Tensor, response_mask: Tensor, gradient_accumulation_steps: int,
                                  normalize_constant: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    from cs336_alignment.sft_step import sft_microbatch_train_step
    return sft_microbatch_train_step(policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant)


def run_compute_rollout_rewards(reward_fn: Callable, rollout_responses: list[str],
                                repeated_ground_truths: list[str]) -> tuple[Tensor, dict[str, float]]:
    from cs336_alignment.advantages import compute_rollout_rewards
    return compute_rollout_rewards(reward_fn, rollout_responses, repeated_ground_truths)


def run_compute_group_normalized_rewards(raw_rewards: Tensor, group_size: int, baseline: str = "mean",
                                         advantage_eps: float = 1e-6,
                                         advantage_normalizer: str = "std") -> tuple[Tensor, dict[str, float]]:
    from cs336_alignment.advantages import compute_group_normalized_rewards
    return compute_group_normalized_rewards(raw_rewards, group_size, baseline, advantage_eps, advantage_normalizer)


def run_compute_policy_gradient_loss(raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor,
                                     importance_reweighting_method: str = "none", old_log_probs: Tensor | None = None,
                                     cliprange: float | None = None,
                                     response_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    from cs336_alignment.grpo_loss import compute_policy_gradient_loss
    return compute_policy_gradient_loss(raw_rewards_or_advantages, policy_log_probs, importance_reweighting_method,
                                        old_log_probs, cliprange, response_mask)


def run_aggregate_loss_across_microbatch(per_token_policy_gradient_loss: Tensor, mask: Tensor,
                                         loss_normalization: str = "sequence",
                                         normalization_constant: float | None = None) -> Tensor:
    from cs336_alignment.grpo_loss import aggregate_loss_across_microbatch
    return aggregate_loss_across_microbatch(per_token_policy_gradient_loss, mask, loss_normalization,
                                            normalization_constant)


def run_grpo_train_step(model: torch.nn.Module, tokenizer, optimizer: torch.optim.Optimizer,
                        gradient_accumulation_steps: int, max_grad_norm: float | None, reward_fn: Callable,
                        repeated_prompts: list[str], rollout_responses: list[str], repeated_ground_truths: list[str],
                        group_size: int, baseline: str = "mean", advantage_eps: float = 1e-6,
                        advantage_normalizer: str = "std", importance_reweighting_method: str = "none",
                        old_log_probs: Tensor | None = None, cliprange: float | None = None,
                        loss_normalization: str = "sequence",
                        normalization_constant: float | None = None) -> tuple[Tensor, dict[str, float]]:
    from cs336_alignment.grpo_step import grpo_train_step
    return grpo_train_step(model, tokenizer, optimizer, gradient_accumulation_steps, max_grad_norm, reward_fn,
                           repeated_prompts, rollout_responses, repeated_ground_truths, group_size, baseline,
                           advantage_eps, advantage_normalizer, importance_reweighting_method, old_log_probs,
                           cliprange, loss_normalization, normalization_constant)


def run_parse_gsm8k_response(model_output: str) -> str | None:
    from cs336_alignment.world.verifier import parse_gsm8k_response
    return parse_gsm8k_response(model_output)


def run_parse_mmlu_response(mmlu_example: dict[str, Any], model_output: str) -> str | None:
    from cs336_alignment.world.verifier import parse_mmlu_response
    return parse_mmlu_response(mmlu_example, model_output)


def run_compute_per_instance_dpo_loss(lm: torch.nn.Module, lm_ref: torch.nn.Module, tokenizer, beta: float,
                                      prompt: str, response_chosen: str, response_rejected: str) -> Tensor:
    from cs336_alignment.dpo import compute_per_instance_dpo_loss
    return compute_per_instance_dpo_loss(lm, lm_ref, tokenizer, beta, prompt, response_chosen, response_rejected)


def get_packed_sft_dataset(tokenizer, dataset_path: str | os.PathLike, seq_length: int, shuffle: bool):
    from cs336_alignment.lm.data import get_packed_sft_dataset as _get
    return _get(tokenizer, dataset_path, seq_length, shuffle)


def run_iterate_batches(dataset, batch_size: int, shuffle: bool):
    from cs336_alignment.lm.data import iterate_batches
    return iterate_batches(dataset, batch_size, shuffle)


# ============================================================================
# Beyond CS336: same style, our own names
# ============================================================================

def run_masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    from cs336_alignment.masked import masked_whiten
    return masked_whiten(values, mask, shift_mean)


def run_bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                           center_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    from cs336_alignment.reward_model import bradley_terry_loss
    return bradley_terry_loss(chosen_rewards, rejected_rewards, margin=margin, center_coef=center_coef)


def run_compute_gae(rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float,
                    lam: float) -> tuple[Tensor, Tensor]:
    from cs336_alignment.advantages import compute_gae
    return compute_gae(rewards, values, response_mask, gamma, lam)


def run_whiten(values: Tensor, mask: Tensor | None = None, shift_mean: bool = True) -> Tensor:
    from cs336_alignment.masked import masked_whiten
    return masked_whiten(values, torch.ones_like(values, dtype=torch.bool) if mask is None else mask, shift_mean)


def run_compute_ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor,
                               cliprange_value: float) -> tuple[Tensor, dict[str, Tensor]]:
    from cs336_alignment.policy_losses import compute_ppo_value_loss
    return compute_ppo_value_loss(values, old_values, returns, response_mask, cliprange_value)


def run_kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, kind: str = "k3") -> Tensor:
    from cs336_alignment.policy_losses import kl_estimate
    return kl_estimate(log_probs, ref_log_probs, kind)


def run_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, beta: float, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    from cs336_alignment.dpo import dpo_loss
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                    loss_type=loss_type, label_smoothing=label_smoothing)


def run_selective_log_softmax(logits: Tensor, labels: Tensor) -> Tensor:
    from cs336_alignment.logprobs import selective_log_softmax
    return selective_log_softmax(logits, labels)


def run_fused_linear_log_probs(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                               return_entropy: bool = False, chunk_size: int | None = None,
                               ignore_index: int = -100):
    from cs336_alignment.logprobs import fused_linear_log_probs
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
    return fused_linear_log_probs(hidden, weight, labels, temperature=temperature, return_entropy=return_entropy,
                                  ignore_index=ignore_index, **kwargs)
