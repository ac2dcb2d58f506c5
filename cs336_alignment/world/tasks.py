"""The embedded task world: seeded arithmetic word problems in GSM8K's format, their formats and demonstration writers.

Every stage of the pipeline is measured against a reward that is known exactly, so the world is
generated rather than downloaded. Problems use the jsonl schema of GSM8K (Cobbe et al. 2021,
https://arxiv.org/abs/2110.14168), so the same loader and grader also serve the real data set:

    {"question": "Tom has 5 apples. He buys 7 more apples. He gives away 3 apples.
                  How many apples does Tom have now?",
     "answer": "5 + 7 = 12\\n12 - 3 = 9\\n#### 9"}

The world
  * A problem is a chain of 1-3 operations on one quantity of objects owned by one person. It
    starts from a count ("Tom has 5 apples.") or from a product ("Tom buys 4 bags of apples. Each
    bag holds 6 apples.", which is the first operation, ``4 * 6 = 24``). Each later sentence
    applies + ("buys 7 more"), - ("gives away 3"), x ("now has 2 times as many") or an exact
    division ("splits them into 3 equal piles and keeps one pile").
  * Every operand is in 1..20 and every intermediate value in 1..99 (operations that would leave
    this range are redrawn). Numbers are kept this small so that a ~1M-parameter model learns the
    task in a few CPU-minutes yet stays far from perfect, which leaves room for RL to help.
  * Text varies over 20 names (with pronouns), 15 objects (singular/plural), 4 containers and
    several phrasings per operation, so questions are not memorised as a handful of strings.
  * The answer has one worked step per operation, ``"<x> <op> <y> = <z>"`` with op in + - * /,
    then the GSM8K final line ``#### <number>``.

Splits and determinism
  ``generate_problems(n, split, seed)`` draws from ``random.Random(seed)`` and keeps the first n
  distinct questions whose split is ``split``. The split is a pure function of the question text
  (sha256; 1 in 10 questions is "test"), so train and test never share a question whatever the seeds,
  and a longer list from the same seed extends a shorter one.
  The train split has two halves, again by the question's hash (``train_half``): "sft" for demonstrations
  and "rl" for the prompts of RL. Demonstrations drawn from "sft" and RL prompts drawn from "rl" never share
  a question, so an RL prompt is never one whose (perhaps hasty) answer the SFT model memorised, which would
  inflate its training reward. ("train" is both halves; measured: demonstrations from "train" with seed 1 and
  RL prompts from "train" with seed 2 shared 2 of 4,000 questions.)

Demonstration writers (``sft_examples``)
  Real demonstrations come from writers of uneven care; post-training mostly re-weights the behaviours SFT
  taught (Zhou et al. 2023, LIMA; DeepSeek-AI 2025, R1). Each demonstration's writer is drawn, independently,
  from a seeded pool (``random.Random(f"writers/{seed}")``, one draw per problem in order, so a shorter list is
  a prefix of a longer one):
  * careful (probability 1 - hasty - sloppy): the worked answer, with the optional prose lines of
    ``explained_answer`` (``verbosity``);
  * hasty (``hasty``): knows the answer but skips the work: only the final "#### N" line, after the closing
    sentence "So {name} has {N} {obj}." when the verbosity draw gives one (``hasty_answer``). A 4-layer model
    cannot do a 2-3 step chain without its scratchpad, so imitating this writer is mostly wrong;
  * sloppy (``sloppy``): writes the steps but slips once, by 1 or 2 in one step's result, and carries the
    wrong number on correctly, so the final answer is wrong (``sloppy_answer``): what filtered SFT removes.
  hasty = sloppy = 0 (the default) gives every demonstration to the careful writer, exactly as before the
  pool existed (the writer draws use their own generator).

Command line (jsonl to stdout, or raw pretraining text with --format raw):
    python -m cs336_alignment tasks --n 500 --split test --seed 0 > test.jsonl
    python -m cs336_alignment tasks --n 4000 --split sft --format chat --verbosity 0.5 --hasty 0.5 > demos.jsonl

Formats
  * raw (base model, pretraining): ``format_raw_prompt(q) = "Question: {q}\\nAnswer:"``; a document
    is that prompt + " " + answer, and ``pretraining_text`` ends every document with <|endoftext|>.
  * chat (SFT and RL): ``[{"role": "user", "content": q}, {"role": "assistant", "content": a}]``,
    rendered by ``cs336_alignment.lm.tokenizer.Tokenizer.render``.

Grading lives in `verifier.py` (the gold reward, the worked-step checker, the CS336 parsers), below this file:
it reads only text, so real GSM8K answers are graded by the same code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
from typing import Any, Literal

from cs336_alignment.world.verifier import STEP_LINE, gold_reward

ENDOFTEXT = "<|endoftext|>"  # same string as cs336_alignment.lm.tokenizer.ENDOFTEXT (document separator)

# ----------------------------------------------------------------------------
# Vocabulary of the world

NAMES = [("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Ana", "she"), ("Leo", "he"), ("Zoe", "she"),
         ("Ben", "he"), ("Ivy", "she"), ("Max", "he"), ("Eva", "she"), ("Jack", "he"), ("Lily", "she"),
         ("Noah", "he"), ("Emma", "she"), ("Omar", "he"), ("Rosa", "she"), ("Ravi", "he"), ("Nina", "she"),
         ("Carl", "he"), ("Grace", "she")]
OBJECTS = [("apple", "apples"), ("pencil", "pencils"), ("sticker", "stickers"), ("marble", "marbles"),
           ("cookie", "cookies"), ("book", "books"), ("shell", "shells"), ("card", "cards"), ("egg", "eggs"),
           ("balloon", "balloons"), ("stamp", "stamps"), ("coin", "coins"), ("button", "buttons"),
           ("candy", "candies"), ("flower", "flowers")]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars")]
PRONOUNS = {"he": ("He", "him", "his"), "she": ("She", "her", "her")}

MIN_OPERAND, MAX_OPERAND = 1, 20
MIN_VALUE, MAX_VALUE = 1, 99
TEST_FRACTION_DENOMINATOR = 10  # 1 question in 10 (by hash) belongs to the test split
SPLITS = ("train", "test", "sft", "rl")  # "sft" and "rl" are the two halves of "train" (train_half)
WRITERS = ("careful", "hasty", "sloppy")  # demonstration writers (sft_demonstrations)

# Phrasings per operation; {n} is the operand and {obj} agrees with it in number.
_ADD = ["{P} buys {n} more {obj}.", "{friend} gives {him} {n} more {obj}.", "{P} finds {n} more {obj}.",
        "{P} collects {n} more {obj}."]
_SUB = ["{P} gives away {n} {obj}.", "{P} gives {n} {obj} to {friend}.", "{P} loses {n} {obj}.",
        "{P} sells {n} {obj}."]
_MUL = ["{P} now has {n} times as many {objs} as before.", "Then {his} pile of {objs} becomes {n} times as big."]
_DIV = ["{P} splits the {objs} into {n} equal piles and keeps one pile.",
        "{P} shares the {objs} equally among {n} kids, {him} included, and keeps {his} share."]
_QUESTION = ["How many {objs} does {name} have now?", "How many {objs} does {name} have in the end?"]


# ----------------------------------------------------------------------------
# Generation

def split_of(question: str) -> Literal["train", "test"]:
    """The split a question belongs to: "test" when sha256(question) mod 10 == 0, else "train"."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_FRACTION_DENOMINATOR == 0 else "train"


def train_half(question: str) -> Literal["sft", "rl"]:
    """The half of the train split a question belongs to: "rl" when byte 8 of sha256(question) is odd, else "sft"
    (independent of `split_of`, which reads bytes 0-7). Meaningful for train questions only."""
    return "rl" if hashlib.sha256(question.encode("utf-8")).digest()[8] % 2 else "sft"


def in_split(question: str, split: str) -> bool:
    """Whether `question` belongs to `split` (one of SPLITS; "sft" and "rl" are the halves of "train")."""
    top = split_of(question)
    if split in ("train", "test"):
        return top == split
    return top == "train" and train_half(question) == split


def _noun(pair: tuple[str, str], n: int) -> str:
    return pair[0] if n == 1 else pair[1]


def _draw_operation(rng: random.Random, x: int) -> tuple[str, int, int] | None:
    """One operation applied to the running value x: (symbol, operand, result) inside the ranges, or None."""
    symbol = rng.choices(["+", "-", "*", "/"], weights=[4, 4, 2, 1])[0]
    if symbol == "+" and x + MIN_OPERAND <= MAX_VALUE:
        n = rng.randint(MIN_OPERAND, min(MAX_OPERAND, MAX_VALUE - x))
        return "+", n, x + n
    if symbol == "-" and x - MIN_OPERAND >= MIN_VALUE:
        n = rng.randint(MIN_OPERAND, min(MAX_OPERAND, x - MIN_VALUE))
        return "-", n, x - n
    if symbol == "*" and 2 * x <= MAX_VALUE:
        n = rng.randint(2, min(MAX_OPERAND, MAX_VALUE // x))
        return "*", n, x * n
    if symbol == "/":
        divisors = [d for d in range(2, min(MAX_OPERAND, x) + 1) if x % d == 0]
        if divisors:
            n = rng.choice(divisors)
            return "/", n, x // n
    return None  # the drawn operation does not fit; the caller draws again


def _draw_problem(rng: random.Random) -> dict[str, str]:
    name, pronoun = rng.choice(NAMES)
    friend = rng.choice([other for other, _ in NAMES if other != name])
    P, him, his = PRONOUNS[pronoun]
    obj = rng.choice(OBJECTS)
    words = dict(name=name, friend=friend, P=P, him=him, his=his, objs=obj[1])
    n_ops = rng.randint(1, 3)
    sentences, steps = [], []

    if rng.random() < 0.3:  # start from a product: it is the first operation
        box = rng.choice(CONTAINERS)
        a, b = rng.randint(2, 9), rng.randint(2, 11)
        sentences.append(f"{name} buys {a} {_noun(box, a)} of {obj[1]}. Each {box[0]} holds {b} {obj[1]}.")
        x = a * b
        steps.append(f"{a} * {b} = {x}")
        n_ops -= 1
    else:
        x = rng.randint(MIN_OPERAND, MAX_OPERAND)
        start = rng.choice(["{name} has {n} {obj}.", "{name} collects {n} {obj}.",
                            "There are {n} {obj} in {name}'s " + rng.choice(CONTAINERS)[0] + "."])
        sentences.append(start.format(name=name, n=x, obj=_noun(obj, x)))

    for _ in range(n_ops):
        op = None
        while op is None:
            op = _draw_operation(rng, x)
        symbol, n, y = op
        template = rng.choice({"+": _ADD, "-": _SUB, "*": _MUL, "/": _DIV}[symbol])
        sentences.append(template.format(n=n, obj=_noun(obj, n), **words))
        steps.append(f"{x} {symbol} {n} = {y}")
        x = y

    sentences.append(rng.choice(_QUESTION).format(**words))
    return {"question": " ".join(sentences), "answer": "\n".join(steps) + f"\n#### {x}"}


def generate_problems(n: int, split: Literal["train", "test", "sft", "rl"], seed: int = 0) -> list[dict[str, str]]:
    """The first n distinct problems of `split` drawn from the world with `random.Random(seed)`.

    Args:
        n: number of problems (>= 0).
        split: "train" or "test" (membership `split_of(question)`), or "sft" / "rl", the two halves of "train"
            (`train_half`): "test", "sft" and "rl" are pairwise disjoint for any seeds.
        seed: the generator's seed. Same (n, split, seed) -> same list; a larger n extends a smaller one.
    Returns:
        list of {"question": str, "answer": "<steps>\\n#### <number>"} (GSM8K jsonl schema).
    Raises:
        ValueError: on a negative n or an unknown split.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict[str, str]] = []
    while len(problems) < n:
        problem = _draw_problem(rng)
        if problem["question"] in seen:
            continue
        seen.add(problem["question"])
        if in_split(problem["question"], split):
            problems.append(problem)
    return problems


# ----------------------------------------------------------------------------
# Formats: raw text for the base model, chat messages for SFT / RL

def format_raw_prompt(question: str) -> str:
    """The base model's prompt: "Question: {question}\\nAnswer:" (the answer follows after one space)."""
    return f"Question: {question}\nAnswer:"


def raw_document(problem: dict[str, str]) -> str:
    """One pretraining document: the raw prompt, a space, and the worked answer (no separator)."""
    return format_raw_prompt(problem["question"]) + " " + problem["answer"]


def pretraining_text(n_problems: int, seed: int = 0) -> str:
    """n_problems train-split documents, each followed by <|endoftext|> (so the base model learns to stop)."""
    return "".join(raw_document(p) + ENDOFTEXT for p in generate_problems(n_problems, "train", seed))


def to_messages(problem: dict[str, str]) -> list[dict[str, str]]:
    """A problem as a chat: the question as the user's turn, the worked answer as the assistant's."""
    return [{"role": "user", "content": problem["question"]},
            {"role": "assistant", "content": problem["answer"]}]


_QUESTION_PARTS = re.compile(r"How many (\w+) does (\w+) have (?:now|in the end)\?$")


def explained_answer(problem: dict[str, str], opening: bool, closing: bool) -> str:
    """The worked answer with optional prose lines, as a more talkative demonstration writer puts it.

    opening repeats the question's last sentence ("How many {objs} does {name} have now?") before the steps; closing adds
    "So {name} has {N} {obj}." before the final "#### N" line. The steps and the final line are unchanged, so
    the gold reward and the step checks read both styles alike; only the length differs (about 10 tokens a line).
    """
    match = _QUESTION_PARTS.search(problem["question"])
    if match is None:
        raise ValueError(f"not a task-world question: {problem['question']!r}")
    objs, name = match.groups()
    question = match.group(0)
    steps, final = problem["answer"].rsplit("\n", 1)
    number = int(final.removeprefix("#### "))
    noun = next((one for one, many in OBJECTS if many == objs), objs) if number == 1 else objs
    lines = ([question] if opening else []) + [steps]
    lines += [f"So {name} has {number} {noun}."] if closing else []
    return "\n".join(lines + [final])


def _closing_sentence(problem: dict[str, str], number: int) -> str:
    """ "So {name} has {number} {obj}." for a task-world question (the noun agrees with the number)."""
    match = _QUESTION_PARTS.search(problem["question"])
    if match is None:
        raise ValueError(f"not a task-world question: {problem['question']!r}")
    objs, name = match.groups()
    noun = next((one for one, many in OBJECTS if many == objs), objs) if number == 1 else objs
    return f"So {name} has {number} {noun}."


def hasty_answer(problem: dict[str, str], sentence: bool) -> str:
    """The hasty writer's answer: no worked steps, only the final "#### N" line, after the closing sentence
    "So {name} has {N} {obj}." when `sentence` (the same sentence `explained_answer` adds with closing=True)."""
    final = problem["answer"].rsplit("\n", 1)[-1]
    number = int(final.removeprefix("#### "))
    return "\n".join(([_closing_sentence(problem, number)] if sentence else []) + [final])


_STEP_PARTS = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def sloppy_answer(problem: dict[str, str], rng: random.Random) -> dict[str, str]:
    """The sloppy writer's problem: the same question, worked steps with one slip, and a wrong final answer.

    One step's result (drawn with `rng`) is off by a drawn delta in {-2, -1, +1, +2}; every later step starts
    from the wrong number and is computed correctly from it, as a careful writer who misread their own digit
    would. Drawn (step, delta) pairs that would make a later division inexact or a value negative are redrawn;
    after 20 tries the last step's result is off by +1 (always possible). The final answer then differs from
    the true one (+, -, *, exact / keep a difference nonzero). Returns {"question", "answer"} for
    `explained_answer`.
    """
    steps = [_STEP_PARTS.match(line) for line in problem["answer"].split("\n")[:-1]]
    if not steps or any(m is None for m in steps):
        raise ValueError(f"not a task-world answer: {problem['answer']!r}")
    parts = [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in steps]

    def carried(slip: int, delta: int) -> list[tuple[int, str, int, int]] | None:
        out = parts[:slip] + [(*parts[slip][:3], parts[slip][3] + delta)]
        for _, op, y, _ in parts[slip + 1:]:
            x = out[-1][3]
            if op == "/" and x % y:
                return None
            out.append((x, op, y, {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else 0}[op]))
        return out if all(z >= 0 for *_, z in out) else None

    worked = None
    for _ in range(20):
        worked = carried(rng.randrange(len(parts)), rng.choice([-2, -1, 1, 2]))
        if worked is not None:
            break
    worked = worked or carried(len(parts) - 1, 1)
    lines = [f"{x} {op} {y} = {z}" for x, op, y, z in worked]
    return {"question": problem["question"], "answer": "\n".join(lines + [f"#### {worked[-1][3]}"])}


def sft_demonstrations(n: int, seed: int = 0, split: Literal["train", "test", "sft", "rl"] = "train",
                       verbosity: float = 0.0, hasty: float = 0.0, sloppy: float = 0.0) -> list[dict[str, Any]]:
    """n demonstrations from `generate_problems(n, split, seed)`, each by a writer drawn from the pool (module
    docstring, "Demonstration writers").

    Args:
        verbosity: probability that a careful (or sloppy) demonstration has the opening line, and independently
            the closing line, of `explained_answer`; a hasty one writes its closing sentence on the closing draw
            (0 = every answer terse; 0.5 = four styles, a quarter each, as if written by several annotators).
            The styles are drawn with `random.Random(seed)`, after the problems, for every problem.
        hasty: probability that a demonstration's writer is the hasty one (final line only).
        sloppy: probability that it is the sloppy one (one slip in the steps: a wrong final answer).
    Returns:
        [{"messages": chat (see `to_messages`), "writer": "careful" | "hasty" | "sloppy",
          "ground_truth": the problem's true answer "<steps>\\n#### N"}], in the order of the problems.
    Raises:
        ValueError: a probability outside [0, 1], or hasty + sloppy > 1.
    """
    for name, value in (("verbosity", verbosity), ("hasty", hasty), ("sloppy", sloppy)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if hasty + sloppy > 1.0:
        raise ValueError(f"hasty + sloppy must be <= 1, got {hasty} + {sloppy}")
    problems = generate_problems(n, split, seed)
    style_rng, writer_rng = random.Random(seed), random.Random(f"writers/{seed}")
    out = []
    for p in problems:
        opening, closing = (style_rng.random() < verbosity, style_rng.random() < verbosity) if verbosity else (0, 0)
        u = writer_rng.random()
        writer = "hasty" if u < hasty else "sloppy" if u < hasty + sloppy else "careful"
        if writer == "hasty":
            answer = hasty_answer(p, bool(closing))
        else:
            written = sloppy_answer(p, writer_rng) if writer == "sloppy" else p
            answer = explained_answer(written, opening, closing) if verbosity else written["answer"]
        out.append({"messages": to_messages({"question": p["question"], "answer": answer}), "writer": writer,
                    "ground_truth": p["answer"]})
    return out


def sft_examples(n: int, seed: int = 0, split: Literal["train", "test", "sft", "rl"] = "train",
                 verbosity: float = 0.0, hasty: float = 0.0, sloppy: float = 0.0) -> list[list[dict[str, str]]]:
    """n chat conversations (message lists, see `to_messages`) for SFT: the "messages" of `sft_demonstrations`
    (same arguments). With hasty = sloppy = 0 every demonstration is the careful writer's, with the optional
    prose lines drawn by `verbosity`; response lengths then vary for the same question, which a length-biased
    reward model can exploit."""
    return [d["messages"] for d in sft_demonstrations(n, seed, split, verbosity, hasty, sloppy)]


def is_worked(response: str) -> bool:
    """Whether a response shows its work: at least one line is a worked step "x op y = z" (`STEP_LINE`, valid
    or not). The careful and sloppy writers' answers are worked, the hasty writer's are not."""
    return any(STEP_LINE.match(line) for line in response.split("\n"))


def prose_lines(response: str) -> int:
    """The number of prose lines of a response: non-empty lines that are neither a worked step "x op y = z"
    (`STEP_LINE`) nor the final "#### N" line, e.g. the talkative writer's restated question and closing sentence
    (`explained_answer`). Two kinds of "longer": more steps, or more prose."""
    return sum(1 for line in response.split("\n")
               if line.strip() and not STEP_LINE.match(line) and not line.lstrip().startswith("####"))


def style_accuracy(responses: list[str], ground_truths: list[str]) -> dict[str, float]:
    """Gold accuracy split by style: which share of the responses is worked (`is_worked`), and how many of the
    worked and of the unworked ("hasty") ones are right (`gold_reward`).

    Returns:
        {"n", "worked_share", "accuracy", "accuracy/worked", "accuracy/hasty", "n/worked", "n/hasty"}; an
        accuracy over no response is NaN.
    Raises:
        ValueError: different numbers of responses and ground truths, or none.
    """
    if len(responses) != len(ground_truths) or not responses:
        raise ValueError(f"need as many responses as ground truths (> 0), got {len(responses)}, {len(ground_truths)}")
    right = [gold_reward(r, g)["reward"] for r, g in zip(responses, ground_truths)]
    worked = [is_worked(r) for r in responses]
    out = {"n": float(len(right)), "worked_share": sum(worked) / len(worked), "accuracy": sum(right) / len(right)}
    for style, flag in (("worked", True), ("hasty", False)):
        chosen = [r for r, w in zip(right, worked) if w == flag]
        out[f"n/{style}"] = float(len(chosen))
        out[f"accuracy/{style}"] = sum(chosen) / len(chosen) if chosen else math.nan
    return out


# ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print task-world problems: jsonl (gsm8k, chat) or raw text.")
    parser.add_argument("--n", type=int, default=100, help="number of problems")
    parser.add_argument("--split", choices=SPLITS, default="train", help='"sft" and "rl" are the halves of "train"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["gsm8k", "chat", "raw"], default="gsm8k",
                        help='{"question","answer"} | {"messages": [...]} | documents ending in <|endoftext|>')
    parser.add_argument("--verbosity", type=float, default=0.0,
                        help="chat format: probability of each optional prose line of a demonstration (sft_examples)")
    parser.add_argument("--hasty", type=float, default=0.0,
                        help="chat format: probability that a demonstration's writer is hasty (final line only)")
    parser.add_argument("--sloppy", type=float, default=0.0,
                        help="chat format: probability that a demonstration's writer is sloppy (one slip: wrong answer)")
    args = parser.parse_args(argv)
    problems = generate_problems(args.n, args.split, args.seed)
    if args.format == "raw":
        print("".join(raw_document(p) + ENDOFTEXT for p in problems), end="")
        return
    if args.format == "chat":
        for messages in sft_examples(args.n, args.seed, args.split, verbosity=args.verbosity, hasty=args.hasty,
                                     sloppy=args.sloppy):
            print(json.dumps({"messages": messages}))
        return
    for p in problems:
        print(json.dumps(p))


if __name__ == "__main__":
    main()
