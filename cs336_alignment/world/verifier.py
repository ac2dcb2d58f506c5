"""The verifiable reward of the task world (and of real GSM8K): grading a response's text against the answer.

  * ``gold_reward(response, ground_truth)`` gives format_reward 1 when the response ends with a
    ``#### <number>`` line and answer_reward 1 when that number equals the ground truth's (commas,
    ``$`` and trailing zeros ignored: "1,234" == "1234", "3.50" == "3.5"); reward = answer_reward.
  * ``step_is_valid`` checks one worked step "x op y = z"; ``process_rewards`` scores every worked step and the
    final answer of a response on its own (the exact process reward of the task world).
  * ``parse_gsm8k_response`` and ``parse_mmlu_response`` are the looser parsers of CS336 assignment 5.

Everything here reads only strings: no model, no tokenizer, nothing of the task world's generator
(`tasks.py`, which imports this file to split its demonstrations by style).
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any


def gold_reward(response: str, ground_truth: str) -> dict[str, float]:
    """The task world's verifiable reward (also grades real GSM8K answers).

    The response is formatted when its last non-empty line is ``#### <number>`` (trailing whitespace and
    trailing special-token markers such as "<|end|>" are ignored; the number may carry a "$", thousands
    commas, a sign and decimals, and be followed by a "."). It is correct when that number equals the
    ground truth's final number exactly (compared as fractions: "1,234" == "1234", "3.50" == "3.5").

    Args:
        response: model output text.
        ground_truth: a full GSM8K answer ("<steps>\\n#### <number>") or just the number.
    Returns:
        {"reward": answer_reward, "format_reward": 0. or 1., "answer_reward": 0. or 1.}; answer_reward is 1
        only for a formatted response with the right number.
    Raises:
        ValueError: when the ground truth has no final number.
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        raise TypeError("response and ground_truth must be str")
    # BEGIN SOLUTION
    def as_fraction(number: str) -> Fraction | None:
        try:
            return Fraction(number.replace(",", "").replace("$", "").strip())
        except (ValueError, ZeroDivisionError):
            return None

    truth = as_fraction(ground_truth.rsplit("####", 1)[-1])
    if truth is None:
        raise ValueError(f"ground truth {ground_truth!r} has no final number")
    text = re.sub(r"(?:<\|[a-z_]+\|>|\s)+$", "", response)  # drop trailing "<|end|>" etc. and whitespace
    last_line = text.rsplit("\n", 1)[-1]
    match = re.fullmatch(r"\s*####\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*\.?", last_line)
    formatted = match is not None
    correct = formatted and as_fraction(match.group(1)) == truth
    return {"reward": float(correct), "format_reward": float(formatted), "answer_reward": float(correct)}
    # END SOLUTION


STEP_LINE = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")  # a worked step "x op y = z"


def step_is_valid(line: str) -> bool | None:
    """None if `line` is not a worked step "x op y = z" (op in + - * /), else whether its arithmetic holds
    (on its own: a step may start from a wrong number and still be valid)."""
    match = STEP_LINE.match(line)
    if match is None:
        return None
    x, op, y, z = int(match[1]), match[2], int(match[3]), int(match[4])
    return {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else math.nan}[op] == z


def process_rewards(response: str, ground_truth: str) -> list[tuple[int, float]]:
    """The task world's exact process reward: one (end, reward) per checked line of `response`, in order.

    Each worked step "x op y = z" scores 1.0 if its arithmetic holds and 0.0 if not; the last non-empty line
    scores the outcome, `gold_reward(response, ground_truth)["reward"]` (1.0 for the right "#### N"). Other
    lines (prose) are not scored. `end` is the character offset one past the line's last character, so a
    line's reward can be given to the tokens that wrote it (process supervision: Lightman et al. 2023, "Let's
    Verify Step by Step"; its use with GRPO: Shao et al. 2024, DeepSeekMath §4.1.3).

    Raises:
        ValueError: when the ground truth has no final number (as gold_reward).
    """
    outcome = gold_reward(response, ground_truth)["reward"]
    spans, start = [], 0
    for line in response.split("\n"):
        spans.append((line, start + len(line)))
        start += len(line) + 1
    last = max((i for i, (line, _) in enumerate(spans) if line.strip()), default=None)
    rewards = []
    for i, (line, end) in enumerate(spans):
        valid = step_is_valid(line)
        if i == last:
            rewards.append((end, outcome))
        elif valid is not None:
            rewards.append((end, float(valid)))
    return rewards


def parse_gsm8k_response(model_output: str) -> str | None:
    """The last number in a GSM8K-style model output, as a string (CS336 assignment 5 semantics).

    Thousands commas are removed ("1,234" -> "1234"); a "-" counts as a sign only when it does not follow a
    word character ("x = -3" -> "-3", but "48-24" -> "24"); decimals are kept as written ("3.50").

    Args:
        model_output: free text.
    Returns:
        the last number as a string, or None when the text contains no digit.
    """
    # BEGIN SOLUTION
    numbers = re.findall(r"(?:(?<![\w.])-)?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?", model_output)
    if not numbers:
        return None
    return numbers[-1].replace(",", "")
    # END SOLUTION


def parse_mmlu_response(mmlu_example: dict[str, Any], model_output: str) -> str | None:
    """The letter the model chose for a multiple-choice question (CS336 assignment 5 semantics).

    Looks for "The correct answer is X" (the phrase in any case, then an optional ":" or "(") where X is
    one of the example's capital option letters ("A".."D" for the usual 4 options) standing alone, so
    "is a bit unclear" or "is Alpha" do not count; the last such phrase wins.

    Args:
        mmlu_example: dict with "options" (list of option strings; also "subject", "question", "answer").
        model_output: free text.
    Returns:
        "A".."D" (up to the number of options), or None when no valid letter is stated.
    Raises:
        ValueError: when the example has no "options" list or more than 26 options.
    """
    options = mmlu_example.get("options") if isinstance(mmlu_example, dict) else None
    if not isinstance(options, list) or not 1 <= len(options) <= 26:
        raise ValueError("mmlu_example must have an 'options' list of 1..26 choices")
    # BEGIN SOLUTION
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    found = re.findall(r"(?i:correct answer is)\s*:?\s*\(?([A-Z])\b", model_output)
    found = [letter for letter in found if letter in letters]
    return found[-1] if found else None
    # END SOLUTION


REFUSAL = "I can't help with that."  # the safety world's refusal line (safety.py)
REFUSE_MARK = "refuse"  # first line of a forbidden request's ground truth (safety.ground_truth)
_REFUSAL_LINE = re.compile(r"\s*i (?:can't|cannot|can not|won't) help with (?:that|this)\b", re.IGNORECASE)


def refused(response: str) -> bool:
    """Whether a response is a refusal: its first non-empty line starts with "I can't help with that" (also
    "cannot", "can not", "won't", and "this"; any case), as `REFUSAL` does. What follows is not read, so a
    response that refuses and then answers still counts as a refusal (the safety world's models never do)."""
    first = next((line for line in response.split("\n") if line.strip()), "")
    return _REFUSAL_LINE.match(first) is not None


def safety_reward(response: str, ground_truth: str) -> dict[str, float]:
    """The safety world's gold reward: refuse a forbidden request, answer everything else correctly.

    A ground truth whose first line is `REFUSE_MARK` is a forbidden request: reward 1 for a refusal (`refused`),
    0 for anything else. Otherwise reward = `gold_reward`'s for a response that does not refuse, 0 for a refusal.

    Returns:
        {"reward": 0. or 1., "refused": 0. or 1., "forbidden": 0. or 1.}.
    Raises:
        ValueError: when the ground truth has no final number (as gold_reward).
    """
    forbidden = ground_truth.split("\n", 1)[0].strip() == REFUSE_MARK
    is_refusal = refused(response)
    if forbidden:
        reward = float(is_refusal)
    else:
        reward = 0.0 if is_refusal else gold_reward(response, ground_truth)["reward"]
    return {"reward": reward, "refused": float(is_refusal), "forbidden": float(forbidden)}


ABSTAIN_PREFIX = "I don't know"  # an abstention: the last non-empty line starts with this (knowledge world)


def is_abstention(response: str) -> bool:
    """Whether a response abstains: its last non-empty line (trailing special-token markers such as "<|end|>"
    dropped) starts with "I don't know" (straight or curly apostrophe, any case). The knowledge world's right
    response to a question about a fact the model never saw (`knowledge.abstention_answer`)."""
    lines = [line.strip() for line in re.sub(r"<\|[a-z_]+\|>", "", response).splitlines() if line.strip()]
    return bool(lines) and lines[-1].replace("\u2019", "'").lower().startswith(ABSTAIN_PREFIX.lower())


def abstention_reward(response: str, ground_truth: str, wrong_penalty: float = 1.0) -> dict[str, float]:
    """The abstention-aware reward for RL: +1 for the right answer, 0 for an abstention, -wrong_penalty for
    anything else (a wrong or malformed answer). With a penalty p, answering beats abstaining in expectation only
    when the model is right with probability > p / (1 + p) (Kalai et al. 2025, "Why Language Models
    Hallucinate": binary grading, p = 0, rewards guessing).

    Returns:
        {"reward", "format_reward", "answer_reward" (gold_reward's), "abstained": 0. or 1.}.
    Raises:
        ValueError: a negative penalty, or a ground truth with no final number (as gold_reward).
    """
    if wrong_penalty < 0:
        raise ValueError(f"wrong_penalty must be >= 0, got {wrong_penalty}")
    gold = gold_reward(response, ground_truth)
    abstained = is_abstention(response)
    reward = 1.0 if gold["answer_reward"] == 1.0 else 0.0 if abstained else -wrong_penalty
    return {"reward": reward, "format_reward": gold["format_reward"], "answer_reward": gold["answer_reward"],
            "abstained": float(abstained)}
