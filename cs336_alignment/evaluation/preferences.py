"""Preference data: a synthetic annotator around the gold reward, labelled pairs sampled from a policy, and
preference files (ours, HH-RLHF and UltraFeedback style).

The annotator (Bradley & Terry 1952; the labelling model assumed by InstructGPT, Ouyang et al. 2022 §3.5,
and by DPO, Rafailov et al. 2023 eq. 1) prefers response a over b with probability

    P(a > b) = sigma((u(a) - u(b)) / tau),      u = gold reward + style terms + length_bias * n_tokens,

where the gold reward is the task world's verifiable reward (1 for a right, formatted final number), the
style terms give partial credit (a final "#### N" line; arithmetically valid worked steps "x op y = z"),
and tau is the annotator's noise: tau -> 0 always picks the higher utility, tau -> inf flips coins.
`length_bias > 0` makes longer responses look better than they are: the knob that lets a reward model
trained on these labels be hacked by length (Singhal et al. 2023, "A Long Way to Go").

Because u is known exactly, the noise ceiling of any reward model is known too: on held-out labels, no
model can beat the accuracy of sign(u(a) - u(b)) in expectation (a tie counts 1/2).

Pair records (what `make_preference_pairs` writes and `load_preferences` returns):
    {"prompt": str, "prompt_messages": [{"role", "content"}, ...], "chosen": str, "rejected": str, ...}
plus, for annotator-made pairs, "ground_truth", "u_chosen", "u_rejected", "p_chosen" = sigma(du / tau),
"gold_chosen", "gold_rejected", "len_chosen", "len_rejected" (tokens).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_alignment.lm.data import DataError, _iter_jsonl, write_jsonl
from cs336_alignment.lm.rollout import sample_responses
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.world.verifier import gold_reward, step_is_valid

# ---------------------------------------------------------------------------------------------------------
# The synthetic annotator
# ---------------------------------------------------------------------------------------------------------

def step_validity(response: str) -> float:
    """Fraction of the worked-step lines "x op y = z" (op in + - * /) whose arithmetic holds; 0 if none.

    Checks each line on its own (a step may start from a wrong number and still be valid arithmetic).
    """
    checks = [valid for valid in map(step_is_valid, response.splitlines()) if valid is not None]
    return sum(checks) / len(checks) if checks else 0.0


def preference_probability(u_a: float, u_b: float, tau: float) -> float:
    """P(a preferred over b) = sigma((u_a - u_b) / tau) under the Bradley-Terry model (Bradley & Terry 1952).

    Args:
        u_a, u_b: utilities of the two responses.
        tau: annotator temperature >= 0; tau = 0 is the noiseless limit (1, 0, or 1/2 on a tie).

    Returns:
        float in [0, 1], computed without overflow for any |u_a - u_b| / tau.

    Raises:
        ValueError: if tau < 0.
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    # BEGIN SOLUTION
    delta = u_a - u_b
    if tau == 0 or delta == 0:
        return 1.0 if delta > 0 else 0.0 if delta < 0 else 0.5
    z = delta / tau
    # sigma(z) = 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) for z < 0: exp never overflows.
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    # END SOLUTION


@dataclass(frozen=True)
class Annotator:
    """Labels pairs with Bradley-Terry noise around u = gold + style + length_bias * tokens (module docstring)."""

    tau: float = 0.25
    """noise temperature of the labels (utility units); 0 = noiseless"""
    format_weight: float = 0.25
    """utility of a final "#### <number>" line (style)"""
    steps_weight: float = 0.25
    """utility of worked steps whose arithmetic is valid, times their fraction (style)"""
    length_bias: float = 0.0
    """utility added per response token (0 = no bias; 0.05 makes 20 extra tokens worth a right answer)"""

    def __post_init__(self):
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")

    def utility(self, response: str, ground_truth: str, n_tokens: int) -> float:
        """u = gold reward + format_weight * format + steps_weight * step validity + length_bias * n_tokens."""
        gold = gold_reward(response, ground_truth)
        return (gold["reward"] + self.format_weight * gold["format_reward"]
                + self.steps_weight * step_validity(response) + self.length_bias * n_tokens)

    def prefers_first(self, u_a: float, u_b: float, rng: random.Random) -> bool:
        """One noisy label: True with probability sigma((u_a - u_b) / tau)."""
        return rng.random() < preference_probability(u_a, u_b, self.tau)


# ---------------------------------------------------------------------------------------------------------
# Pairs from a policy's samples
# ---------------------------------------------------------------------------------------------------------


def make_preference_pairs(problems: list[dict[str, str]], samples: list[list[dict[str, Any]]], annotator: Annotator,
                          seed: int = 0, max_pairs_per_prompt: int | None = None) -> list[dict[str, Any]]:
    """Label every pair of distinct responses to each problem with the annotator.

    InstructGPT (§3.5) shows labellers K = 4..9 responses and uses all K choose 2 pairs; we do the same, but
    skip pairs of identical text (they carry no preference) and blank responses (a policy can stop at once;
    `load_preferences` rejects an empty response, so the written file must not hold one). Labels are drawn
    with random.Random(seed).

    Args:
        problems: [{"question", "answer"}] (task-world problems).
        samples: per problem, the responses from `rollout.sample_responses`.
        annotator: the labelling model.
        max_pairs_per_prompt: keep at most this many pairs per prompt (a random subset), None = all.

    Returns:
        pair records (see the module docstring), in problem order.
    """
    if len(problems) != len(samples):
        raise ValueError(f"{len(problems)} problems but {len(samples)} sample lists")
    rng = random.Random(seed)
    pairs = []
    for problem, responses in zip(problems, samples):
        utils = [annotator.utility(r["text"], problem["answer"], r["n_tokens"]) for r in responses]
        kept = [i for i, r in enumerate(responses) if r["text"].strip()]
        candidates = [(i, j) for i in kept for j in kept if i < j and responses[i]["text"] != responses[j]["text"]]
        if max_pairs_per_prompt is not None and len(candidates) > max_pairs_per_prompt:
            candidates = rng.sample(candidates, max_pairs_per_prompt)
        for i, j in candidates:
            a_wins = annotator.prefers_first(utils[i], utils[j], rng)
            c, r = (i, j) if a_wins else (j, i)
            pairs.append(pair_record(problem, responses[c], responses[r], utils[c], utils[r], annotator))
    return pairs


def pair_record(problem: dict[str, str], chosen: dict[str, Any], rejected: dict[str, Any], u_chosen: float,
                u_rejected: float, annotator: Annotator) -> dict[str, Any]:
    return {"prompt": problem["question"], "prompt_messages": [{"role": "user", "content": problem["question"]}],
            "chosen": chosen["text"], "rejected": rejected["text"], "ground_truth": problem["answer"],
            "u_chosen": u_chosen, "u_rejected": u_rejected,
            "p_chosen": preference_probability(u_chosen, u_rejected, annotator.tau),
            "gold_chosen": gold_reward(chosen["text"], problem["answer"])["reward"],
            "gold_rejected": gold_reward(rejected["text"], problem["answer"])["reward"],
            "len_chosen": chosen["n_tokens"], "len_rejected": rejected["n_tokens"]}


def conversations(pair: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The chosen and rejected conversations of a pair: prompt messages + the assistant response."""
    prompt = pair["prompt_messages"]
    return (prompt + [{"role": "assistant", "content": pair["chosen"]}],
            prompt + [{"role": "assistant", "content": pair["rejected"]}])


# ---------------------------------------------------------------------------------------------------------
# The preference-data stage: files if given, else samples from a policy labelled by the annotator
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PreferenceDataConfig:
    """Fields shared by every stage that reads preference pairs (rm, dpo)."""

    data: str = ""
    """preference jsonl to train on; empty = sample from --init on task-world prompts and label with the annotator"""
    eval_data: str = ""
    """held-out preference jsonl; empty = task-world test prompts (or the last 10% of --data)"""
    n_prompts: int = 384
    """task-world train prompts to sample pairs on (when --data is empty)"""
    n_eval_prompts: int = 128
    """task-world test prompts for held-out pairs (when --eval-data is empty)"""
    group_size: int = 4
    """responses sampled per prompt; all pairs of distinct responses are labelled (InstructGPT's K)"""
    max_new_tokens: int = 64
    """response length limit when sampling"""
    tau: float = 0.25
    """annotator noise: P(a > b) = sigmoid((u(a) - u(b)) / tau)"""
    format_weight: float = 0.25
    """annotator utility of a final '#### N' line"""
    steps_weight: float = 0.25
    """annotator utility of arithmetically valid worked steps (times their fraction)"""
    length_bias: float = 0.0
    """annotator utility per response token: > 0 makes longer look better (reward hacking)"""


def annotator_from(cfg: PreferenceDataConfig) -> Annotator:
    return Annotator(tau=cfg.tau, format_weight=cfg.format_weight, steps_weight=cfg.steps_weight,
                     length_bias=cfg.length_bias)


def preference_data(cfg: PreferenceDataConfig, model, tokenizer, out_dir, seed: int = 0, log=print
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train pairs, held-out pairs): loaded from cfg.data / cfg.eval_data, or made by sampling `model`.

    Made pairs are written to out_dir/preferences_train.jsonl and preferences_eval.jsonl, so that another
    stage (e.g. DPO after the reward model) can train on exactly the same labels with --data.
    """
    if cfg.data:
        train = load_preferences(cfg.data)
        if cfg.eval_data:
            evals = load_preferences(cfg.eval_data)
        else:
            n_eval = max(1, len(train) // 10)
            train, evals = train[:-n_eval], train[-n_eval:]
        if not train:
            raise DataError(f"{cfg.data}: too few pairs to hold out 10% for evaluation")
        return train, evals
    annotator = annotator_from(cfg)
    out = {}
    for split, n, offset in (("train", cfg.n_prompts, 0), ("test", cfg.n_eval_prompts, 1)):
        problems = generate_problems(n, split, seed)
        samples = sample_responses(model, tokenizer, [p["question"] for p in problems], cfg.group_size,
                                   max_new_tokens=cfg.max_new_tokens, seed=seed + offset)
        out[split] = make_preference_pairs(problems, samples, annotator, seed=seed + offset)
        path = Path(out_dir) / f"preferences_{'eval' if split == 'test' else 'train'}.jsonl"
        write_preferences(path, out[split])
        log(f"preferences: {len(out[split])} pairs from {n} {split} prompts x {cfg.group_size} samples -> {path}")
    if not out["train"] or not out["test"]:
        raise ValueError("the policy gave identical responses to every prompt: no pairs to label")
    return out["train"], out["test"]


# ---------------------------------------------------------------------------------------------------------
# Preference files
# ---------------------------------------------------------------------------------------------------------


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': must be a string or a non-empty list of messages")
    for i, message in enumerate(value):
        if (not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)):
            raise DataError(f"{where}: field '{field}[{i}]': must be {{'role': system|user|assistant, "
                            f"'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _split_conversation(messages: list[dict[str, str]], where: str, field: str):
    """(prompt messages, final assistant text) of a full conversation."""
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}[{len(messages) - 1}].role': the last message must be the "
                        "assistant's response")
    return messages[:-1], messages[-1]["content"]


def parse_preference(record: dict[str, Any], where: str) -> dict[str, Any]:
    """One preference record in any accepted schema -> our pair record (see `load_preferences`)."""
    for field in ("chosen", "rejected"):
        if field not in record:
            raise DataError(f"{where}: field '{field}': missing")
    prompt_messages = None
    if "prompt_messages" in record:  # our own files: the whole conversation before the response
        prompt_messages = _messages(record["prompt_messages"], where, "prompt_messages")
    elif "prompt" in record:
        if isinstance(record["prompt"], str):
            if not record["prompt"].strip():
                raise DataError(f"{where}: field 'prompt': is empty")
            prompt_messages = [{"role": "user", "content": record["prompt"]}]
        else:
            prompt_messages = _messages(record["prompt"], where, "prompt")
    texts = {}
    for field in ("chosen", "rejected"):
        value = record[field]
        if isinstance(value, str):
            if prompt_messages is None:
                raise DataError(f"{where}: field 'prompt': missing (needed when '{field}' is a string)")
            texts[field] = value
            continue
        prefix, texts[field] = _split_conversation(_messages(value, where, field), where, field)
        if prompt_messages is None:
            if not prefix:
                raise DataError(f"{where}: field '{field}': has no user turn before the response")
            prompt_messages = prefix
        elif prefix and prefix != prompt_messages:  # HH-RLHF style: both conversations share the prompt
            raise DataError(f"{where}: field '{field}': its conversation before the response differs from the prompt")
    for field in ("chosen", "rejected"):
        if not texts[field].strip():
            raise DataError(f"{where}: field '{field}': the response is empty")
    if texts["chosen"] == texts["rejected"]:
        raise DataError(f"{where}: field 'rejected': identical to 'chosen' (a pair must differ)")
    users = [m["content"] for m in prompt_messages if m["role"] == "user"]
    if not users or not users[-1].strip():
        raise DataError(f"{where}: field 'prompt': no non-empty user turn")
    extras = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected", "prompt_messages")}
    return {"prompt": users[-1], "prompt_messages": prompt_messages, "chosen": texts["chosen"],
            "rejected": texts["rejected"], **extras}


def load_preferences(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load a preference jsonl file; each line is one of

    * {"prompt": str, "chosen": str, "rejected": str}            (ours, TRL's standard format)
    * {"prompt": [messages], "chosen": str | [messages], "rejected": ...}   (TRL conversational)
    * {"chosen": [messages], "rejected": [messages]}             (HH-RLHF / UltraFeedback: two whole chats that
                                                                  share every message before the last assistant one)

    Our own files (`write_preferences`) also carry "prompt_messages", the whole conversation before the
    response, which then takes precedence over "prompt". Extra fields (e.g. "u_chosen", "gold_chosen") are kept.

    Returns:
        [{"prompt": last user turn, "prompt_messages": [...], "chosen": str, "rejected": str, ...}].
    Raises:
        DataError: "<path>:<line>: field '<name>': <problem>" on malformed JSON, a missing or mistyped field,
            an empty response, conversations with different prompts, or chosen == rejected.
    """
    pairs = [parse_preference(record, f"{path}:{lineno}") for lineno, record in _iter_jsonl(path)]
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs


def write_preferences(path: str | os.PathLike, pairs: list[dict[str, Any]]) -> None:
    """Write pair records as jsonl (readable back by `load_preferences`)."""
    write_jsonl(path, pairs)
