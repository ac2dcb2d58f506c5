"""The task world: answer parsers and the gold reward (graded), the problem generator (ungraded).

Oracles: CS336 assignment 5's parser examples, hand-graded responses (including real GSM8K answers),
and the worked steps of every generated problem re-evaluated with Python arithmetic.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from cs336_alignment.world.tasks import (ENDOFTEXT, MAX_OPERAND, MAX_VALUE, explained_answer, format_raw_prompt,
                                   generate_problems, is_worked, pretraining_text, prose_lines, sft_demonstrations,
                                   sft_examples, sloppy_answer, split_of, style_accuracy, train_half)
from cs336_alignment.world.verifier import gold_reward, process_rewards, step_is_valid
from tests.adapters import run_parse_gsm8k_response, run_parse_mmlu_response

PART = "1.1 Answer parsing and gold reward"


def _codes(strings: list[str | None]) -> np.ndarray:
    """Strings as a snapshot can compare them: one row of code points each, padded with -1; None is a row of -2."""
    width = max(len(v) for v in strings if v is not None) + 1 if any(v is not None for v in strings) else 1
    return np.array([[-2] * width if v is None else [ord(c) for c in v] + [-1] * (width - len(v)) for v in strings])

GSM8K_ANSWER = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
MMLU_EXAMPLE = {"subject": "virology", "question": "How many human polyomaviruses are known at present?",
                "options": ["100", "1", "10", "unknown"], "answer": "A"}


# ----------------------------------------------------------------------------
# Parsers (CS336 assignment 5)

@pytest.mark.points(1)
def test_parse_gsm8k_response(numpy_snapshot):
    output = ("Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. "
              "The answer is 72.")
    assert run_parse_gsm8k_response(model_output=output) == "72"
    assert run_parse_gsm8k_response(model_output="It costs $1,234 in total, not 5") == "5"
    assert run_parse_gsm8k_response(model_output="It costs $1,234.") == "1234"
    assert run_parse_gsm8k_response(model_output="x = -3") == "-3"
    assert run_parse_gsm8k_response(model_output="48-24") == "24"          # a minus after a digit is not a sign
    assert run_parse_gsm8k_response(model_output="The price is 3.50 now") == "3.50"
    assert run_parse_gsm8k_response(model_output="5 + 7 = 12\n12 - 3 = 9\n#### 9") == "9"
    numpy_snapshot.assert_match(_codes([run_parse_gsm8k_response(model_output=o) for o in (
        output, "It costs $1,234 in total, not 5", "It costs $1,234.", "x = -3", "48-24", "The price is 3.50 now",
        "5 + 7 = 12\n12 - 3 = 9\n#### 9")]), "test_parse_gsm8k_response")


@pytest.mark.points(1)
def test_parse_gsm8k_response_unknown(numpy_snapshot):
    output = ("Natalia sold twenty-four clips in May. Thus, Natalia sold seventy-two clips altogether in April "
              "and May. The answer is seventy-two.")
    assert run_parse_gsm8k_response(model_output=output) is None
    assert run_parse_gsm8k_response(model_output="") is None
    numpy_snapshot.assert_match(_codes([run_parse_gsm8k_response(model_output=o) for o in (output, "")]),
                                "test_parse_gsm8k_response_unknown")


@pytest.mark.points(1)
def test_parse_mmlu_response(numpy_snapshot):
    output = "The correct answer is B. There are 14 known human polyomaviruses."
    assert run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output=output) == "B"
    assert run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output="the correct answer is: (D)") == "D"
    two = "The correct answer is A. Wait, no: the correct answer is C"
    assert run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output=two) == "C"   # the last one counts
    numpy_snapshot.assert_match(_codes([run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output=o)
                                        for o in (output, "the correct answer is: (D)", two)]),
                                "test_parse_mmlu_response")


@pytest.mark.points(1)
def test_parse_mmlu_response_unknown(numpy_snapshot):
    for output in ["The correct answer is 10000 polyomaviruses.", "The correct answer is a mystery.",
                   "The correct answer is E.", "I think B."]:
        assert not run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output=output), output
    # Any falsy value means "no answer": only that is recorded.
    numpy_snapshot.assert_match([bool(run_parse_mmlu_response(mmlu_example=MMLU_EXAMPLE, model_output=o)) for o in [
        "The correct answer is 10000 polyomaviruses.", "The correct answer is a mystery.", "The correct answer is E.",
        "I think B."]], "test_parse_mmlu_response_unknown")


# ----------------------------------------------------------------------------
# Gold reward

def R(response: str, truth: str) -> tuple[float, float, float]:
    r = gold_reward(response, truth)
    assert set(r) == {"reward", "format_reward", "answer_reward"}
    return r["reward"], r["format_reward"], r["answer_reward"]


@pytest.mark.points(2)
def test_gold_reward_task_world_cases(numpy_snapshot):
    truth = "5 + 7 = 12\n12 - 3 = 9\n#### 9"
    assert R(truth, truth) == (1.0, 1.0, 1.0)
    assert R("#### 9", "9") == (1.0, 1.0, 1.0)                                # truth given as the number only
    assert R(" 5 + 7 = 12\n12 - 3 = 9\n#### 9<|end|>", truth) == (1.0, 1.0, 1.0)   # trailing end-of-turn marker
    assert R("5 + 7 = 12\n#### 9\n\n  ", truth) == (1.0, 1.0, 1.0)             # trailing whitespace
    assert R("5 + 7 = 12\n12 - 3 = 8\n#### 8", truth) == (0.0, 1.0, 0.0)      # formatted, wrong
    assert R("5 + 7 = 12\n12 - 3 = 9", truth) == (0.0, 0.0, 0.0)              # right number, no final line
    assert R("The answer is 9", truth) == (0.0, 0.0, 0.0)
    assert R("#### 9\nQuestion: Tom has 3 apples.", truth) == (0.0, 0.0, 0.0)  # rambles past the answer
    assert R("#### nine", truth) == (0.0, 0.0, 0.0)
    assert R("", truth) == (0.0, 0.0, 0.0)
    numpy_snapshot.assert_match([R(response, truth) for response in (
        truth, " 5 + 7 = 12\n12 - 3 = 9\n#### 9<|end|>", "5 + 7 = 12\n#### 9\n\n  ", "5 + 7 = 12\n12 - 3 = 8\n#### 8",
        "5 + 7 = 12\n12 - 3 = 9", "The answer is 9", "#### 9\nQuestion: Tom has 3 apples.", "#### nine", "")]
        + [R("#### 9", "9")], "test_gold_reward_task_world_cases")


@pytest.mark.points(2)
def test_gold_reward_gsm8k_number_formats(numpy_snapshot):
    assert R("48/2 = 24\n48 + 24 = 72\n#### 72", GSM8K_ANSWER) == (1.0, 1.0, 1.0)
    assert R("#### 1,234", "1234") == (1.0, 1.0, 1.0)
    assert R("#### 1234", "#### 1,234") == (1.0, 1.0, 1.0)
    assert R("#### -5", "-5") == (1.0, 1.0, 1.0)
    assert R("#### 5", "-5") == (0.0, 1.0, 0.0)
    assert R("#### 3.50", "3.5") == (1.0, 1.0, 1.0)
    assert R("#### 18.00", "18") == (1.0, 1.0, 1.0)
    assert R("#### 3.51", "3.5") == (0.0, 1.0, 0.0)
    assert R("#### $18", "18") == (1.0, 1.0, 1.0)
    assert R("#### 18.", "18") == (1.0, 1.0, 1.0)
    assert R("####18", "18") == (1.0, 1.0, 1.0)
    assert R("#### 1,23", "123") == (0.0, 0.0, 0.0)                         # not a number
    with pytest.raises(ValueError):
        gold_reward("#### 1", "no number here")
    numpy_snapshot.assert_match([R(response, truth) for response, truth in [
        ("48/2 = 24\n48 + 24 = 72\n#### 72", GSM8K_ANSWER), ("#### 1,234", "1234"), ("#### 1234", "#### 1,234"),
        ("#### -5", "-5"), ("#### 5", "-5"), ("#### 3.50", "3.5"), ("#### 18.00", "18"), ("#### 3.51", "3.5"),
        ("#### $18", "18"), ("#### 18.", "18"), ("####18", "18"), ("#### 1,23", "123")]],
        "test_gold_reward_gsm8k_number_formats")


@pytest.mark.points(1)
def test_gold_reward_on_generated_problems(numpy_snapshot):
    for p in generate_problems(200, "test", seed=5):
        assert R(p["answer"], p["answer"]) == (1.0, 1.0, 1.0)
        final = int(p["answer"].rsplit("#### ", 1)[1])
        wrong = p["answer"].rsplit("#### ", 1)[0] + f"#### {final + 1}"
        assert R(wrong, p["answer"]) == (0.0, 1.0, 0.0)
    problems = generate_problems(200, "test", seed=5)
    wrongs = [q["answer"].rsplit("#### ", 1)[0] + f"#### {int(q['answer'].rsplit('#### ', 1)[1]) + 1}"
              for q in problems]
    numpy_snapshot.assert_match({"right": [R(q["answer"], q["answer"]) for q in problems],
                                 "wrong": [R(w, q["answer"]) for w, q in zip(wrongs, problems)]},
                                "test_gold_reward_on_generated_problems")


# ----------------------------------------------------------------------------
# The generator (ungraded infrastructure: must work in the handout)

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_generate_problems_deterministic_and_prefix_stable():
    a = generate_problems(60, "train", seed=3)
    assert a == generate_problems(60, "train", seed=3)
    assert generate_problems(20, "train", seed=3) == a[:20]
    assert a != generate_problems(60, "train", seed=4)
    assert len({p["question"] for p in a}) == 60
    assert generate_problems(0, "test") == []
    with pytest.raises(ValueError):
        generate_problems(3, "validation")


def test_train_and_test_are_disjoint():
    train = {p["question"] for seed in (0, 1) for p in generate_problems(1500, "train", seed=seed)}
    test = {p["question"] for seed in (0, 1) for p in generate_problems(300, "test", seed=seed)}
    assert not train & test
    assert all(split_of(q) == "test" for q in test) and all(split_of(q) == "train" for q in train)


def test_worked_steps_are_correct_and_in_range():
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y}
    n_steps = set()
    for p in generate_problems(400, "train", seed=7):
        *lines, final = p["answer"].split("\n")
        steps = [STEP.fullmatch(line) for line in lines]
        assert all(steps) and final.startswith("#### "), p["answer"]
        n_steps.add(len(steps))
        previous = None
        operands = []
        for x, op, y, z in (s.groups() for s in steps):
            x, y, z = int(x), int(y), int(z)
            assert ops[op](x, y) == z                        # the arithmetic itself
            assert 1 <= z <= MAX_VALUE and 1 <= y <= MAX_OPERAND
            assert previous is None or x == previous         # a chain on one quantity
            assert previous is not None or 1 <= x <= MAX_OPERAND
            operands += [x] if previous is None else []
            operands.append(y)
            previous = z
        assert int(final[5:]) == previous
        # The question states exactly the operands, in order (names and objects carry no digits).
        assert [int(n) for n in re.findall(r"\d+", p["question"])] == operands, p
    assert n_steps == {1, 2, 3}


def test_raw_and_chat_formats():
    assert format_raw_prompt("Tom has 2 apples.") == "Question: Tom has 2 apples.\nAnswer:"
    text = pretraining_text(5, seed=2)
    docs = text.split(ENDOFTEXT)
    assert docs[-1] == "" and len(docs) == 6
    for doc, p in zip(docs, generate_problems(5, "train", seed=2)):
        assert doc == f"Question: {p['question']}\nAnswer: {p['answer']}"
    chats = sft_examples(3, seed=2)
    assert [c[0]["content"] for c in chats] == [p["question"] for p in generate_problems(3, "train", seed=2)]
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in chats)


def test_explained_answer_hand_example():
    problem = {"question": "Tom has 5 apples. He gives away 4 apples. How many apples does Tom have now?",
               "answer": "5 - 4 = 1\n#### 1"}
    assert explained_answer(problem, False, False) == problem["answer"]
    assert explained_answer(problem, True, True) == ("How many apples does Tom have now?\n5 - 4 = 1\n"
                                                     "So Tom has 1 apple.\n#### 1")
    with pytest.raises(ValueError, match="not a task-world question"):
        explained_answer({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}, True, True)


def test_verbose_demonstrations_keep_gold_reward_and_steps():
    from cs336_alignment.evaluation.preferences import step_validity

    terse = sft_examples(200, seed=5)
    mixed = sft_examples(200, seed=5, verbosity=0.5)
    assert [c[0] for c in mixed] == [c[0] for c in terse]  # same questions
    styles = {(a[1]["content"].count("\n") - b[1]["content"].count("\n")) for a, b in zip(mixed, terse)}
    assert styles == {0, 1, 2}  # no extra line, one, or both
    n_opening = sum(m[1]["content"].startswith("How many") for m in mixed)
    assert 70 <= n_opening <= 130  # each optional line with probability 1/2
    for m, t in zip(mixed, terse):
        answer = t[1]["content"]
        assert gold_reward(m[1]["content"], answer)["reward"] == 1.0
        assert step_validity(m[1]["content"]) == 1.0
        assert [line for line in m[1]["content"].splitlines() if "=" in line] == answer.splitlines()[:-1]
    assert sft_examples(200, seed=5, verbosity=0.0) == terse
    assert all(m[1]["content"].count("\n") == t[1]["content"].count("\n") + 2
               for m, t in zip(sft_examples(20, seed=5, verbosity=1.0), terse))
    with pytest.raises(ValueError, match="verbosity"):
        sft_examples(2, verbosity=1.5)


def test_command_line_formats(capsys):
    import json

    from cs336_alignment.world.tasks import main

    main(["--n", "3", "--split", "test", "--seed", "4"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == generate_problems(3, "test", 4)
    main(["--n", "3", "--format", "chat", "--verbosity", "1.0"])
    lines = [json.loads(line)["messages"] for line in capsys.readouterr().out.splitlines()]
    assert lines == sft_examples(3, verbosity=1.0)
    main(["--n", "5", "--format", "chat", "--split", "sft", "--hasty", "0.5", "--sloppy", "0.5"])
    lines = [json.loads(line)["messages"] for line in capsys.readouterr().out.splitlines()]
    assert lines == sft_examples(5, split="sft", hasty=0.5, sloppy=0.5)
    main(["--n", "2", "--format", "raw"])
    assert capsys.readouterr().out == pretraining_text(2)


# ----------------------------------------------------------------------------
# Process reward (ungraded)

def test_step_is_valid():
    assert step_is_valid("6 * 9 = 54") is True and step_is_valid(" 12 / 4 = 3 ") is True
    assert step_is_valid("6 * 9 = 48") is False and step_is_valid("7 / 0 = 0") is False
    assert step_is_valid("So Tom has 54 apples.") is None and step_is_valid("#### 54") is None


def test_process_rewards_hand_example():
    response = "How many now?\n6 * 9 = 48\n48 - 3 = 45\nSo Tom has 45.\n#### 45"
    # Prose is not scored; the wrong product scores 0, the valid (if misled) subtraction 1, the final answer
    # its gold reward; each end is one past the line's last character.
    assert process_rewards(response, "6 * 9 = 54\n54 - 3 = 51\n#### 51") == [(24, 0.0), (36, 1.0), (59, 0.0)]
    assert [response[:end].rsplit("\n", 1)[-1] for end, _ in process_rewards(response, "51")] == \
           ["6 * 9 = 48", "48 - 3 = 45", "#### 45"]
    assert process_rewards(response, "45")[-1] == (59, 1.0)
    assert process_rewards("2 + 2 = 4\n\n", "4") == [(9, 0.0)]  # the last non-empty line is the outcome: no "####"


def test_process_rewards_of_worked_answers_are_all_one():
    for problem in generate_problems(50, "train", 3):
        rewards = process_rewards(problem["answer"], problem["answer"])
        assert [r for _, r in rewards] == [1.0] * len(rewards)
        assert len(rewards) == problem["answer"].count("\n") + 1  # every step and the final line


# ----------------------------------------------------------------------------
# Demonstration writers, the train split's halves, accuracy by style (ungraded)

def test_writer_pool_default_is_all_careful_and_unchanged():
    for verbosity in (0.0, 0.5):
        demos = sft_demonstrations(300, seed=3, verbosity=verbosity)
        assert {d["writer"] for d in demos} == {"careful"}
        assert [d["messages"] for d in demos] == sft_examples(300, seed=3, verbosity=verbosity)
        # the careful writer's answer is the problem's own (plus prose lines): what the default always gave
        for d, p in zip(demos, generate_problems(300, "train", seed=3)):
            assert d["ground_truth"] == p["answer"]
            assert gold_reward(d["messages"][1]["content"], p["answer"])["reward"] == 1.0


def test_hasty_and_sloppy_writers():
    demos = sft_demonstrations(600, seed=4, verbosity=0.5, hasty=0.3, sloppy=0.2)
    writers = [d["writer"] for d in demos]
    assert 140 <= writers.count("hasty") <= 220 and 80 <= writers.count("sloppy") <= 160  # 180 and 120 expected
    same_style = sft_examples(600, seed=4, verbosity=0.5)  # the prose draws do not depend on the writers
    for d, careful in zip(demos, same_style):
        answer, truth = d["messages"][1]["content"], d["ground_truth"]
        lines = answer.split("\n")
        valid = [step_is_valid(line) for line in lines if step_is_valid(line) is not None]
        if d["writer"] == "careful":
            assert d["messages"] == careful
        elif d["writer"] == "hasty":  # no steps; the right number; the closing sentence iff the careful one had it
            assert valid == [] and not is_worked(answer) and lines[-1] == truth.split("\n")[-1]
            assert gold_reward(answer, truth)["reward"] == 1.0
            assert (len(lines) == 2) == careful[1]["content"].split("\n")[-2].startswith("So ")
        else:  # every step written, exactly one of them wrong, and a wrong final number
            assert is_worked(answer) and len(valid) == len(truth.split("\n")) - 1 and valid.count(False) == 1
            assert gold_reward(answer, truth) == {"reward": 0.0, "format_reward": 1.0, "answer_reward": 0.0}
            steps = [line for line in lines if step_is_valid(line) is not None]
            for before, after in zip(steps, steps[1:]):  # the wrong number is carried on
                assert after.split(" ")[0] == before.split(" = ")[1]
            assert lines[-1] == f"#### {steps[-1].split(' = ')[1]}"
    # a shorter list is a prefix of a longer one (the data-size sweep trains on nested sets)
    assert sft_demonstrations(100, seed=4, verbosity=0.5, hasty=0.3, sloppy=0.2) == demos[:100]
    assert {d["writer"] for d in sft_demonstrations(50, seed=4, hasty=1.0)} == {"hasty"}
    for bad in (dict(hasty=1.5), dict(sloppy=-0.1), dict(hasty=0.6, sloppy=0.6)):
        with pytest.raises(ValueError, match="hasty|sloppy"):
            sft_demonstrations(2, **bad)


def test_sloppy_answer_hand_example():
    import random

    problem = {"question": "Tom has 5 apples. He buys 7 more apples. He gives away 3 apples. "
                           "How many apples does Tom have now?", "answer": "5 + 7 = 12\n12 - 3 = 9\n#### 9"}
    for seed in range(20):
        out = sloppy_answer(problem, random.Random(seed))["answer"].split("\n")
        first, second, final = out
        x = int(first.split(" = ")[1])
        if x == 12:  # the slip is in the second step
            assert first == "5 + 7 = 12" and second.startswith("12 - 3 = ") and second != "12 - 3 = 9"
        else:  # the first step slips and the second carries it: 12 + d - 3 = 9 + d
            assert x - 12 in (-2, -1, 1, 2) and second == f"{x} - 3 = {x - 3}"
        assert final == f"#### {second.split(' = ')[1]}" != "#### 9"


def test_train_halves_are_disjoint_and_cover_train():
    sft = generate_problems(400, "sft", seed=1)
    rl = generate_problems(400, "rl", seed=1)
    assert not {p["question"] for p in sft} & {p["question"] for p in rl}
    assert all(split_of(p["question"]) == "train" and train_half(p["question"]) == "sft" for p in sft)
    assert all(split_of(p["question"]) == "train" and train_half(p["question"]) == "rl" for p in rl)
    train = generate_problems(1000, "train", seed=1)
    halves = [train_half(p["question"]) for p in train]
    assert 430 <= halves.count("rl") <= 570  # each half about 1 in 2 (sd 16)
    # same seed: "sft" is "train" with the rl half left out, in order
    assert [p for p in train if train_half(p["question"]) == "sft"] == generate_problems(halves.count("sft"), "sft", 1)
    with pytest.raises(ValueError, match="split"):
        generate_problems(1, "dev")


def test_prose_lines_hand_example():
    assert prose_lines("2 + 3 = 5\n#### 5") == 0                                  # steps and the final line
    assert prose_lines("#### 5") == 0 and prose_lines("") == 0
    assert prose_lines("So Tom has 5 apples.\n#### 5") == 1                        # the hasty writer's sentence
    assert prose_lines("How many apples does Tom have now?\n2 + 3 = 5\n\nSo Tom has 5 apples.\n  #### 5") == 2
    assert prose_lines("2 + 3 = 6\n7 - 1 = 6\n#### 6") == 0                       # a wrong step is still a step
    assert prose_lines("2 + 3 = 5 apples\nthen #### 5") == 2                       # neither a step nor a final line
    problem = generate_problems(1, "train", 0)[0]
    assert prose_lines(explained_answer(problem, True, True)) == 2 and prose_lines(problem["answer"]) == 0


def test_style_accuracy_hand_example():
    truths = ["2 + 3 = 5\n#### 5"] * 4 + ["4 * 2 = 8\n#### 8"]
    responses = ["2 + 3 = 5\n#### 5",          # worked, right
                 "2 + 3 = 6\n#### 6",          # worked, wrong
                 "#### 5",                     # hasty, right
                 "So Tom has 7 apples.\n#### 7",  # hasty, wrong
                 "4 * 2 = 8\nSo Ana has 8 eggs.\n#### 8"]  # worked, right
    out = style_accuracy(responses, truths)
    assert out == {"n": 5.0, "worked_share": 0.6, "accuracy": 0.6, "n/worked": 3.0, "accuracy/worked": 2 / 3,
                   "n/hasty": 2.0, "accuracy/hasty": 0.5}
    assert math.isnan(style_accuracy(["#### 5"], ["#### 5"])["accuracy/worked"])
    with pytest.raises(ValueError):
        style_accuracy(["#### 5"], [])
