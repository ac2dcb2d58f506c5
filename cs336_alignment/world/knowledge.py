"""The knowledge world: facts the model was taught and facts it never saw (the hallucination trap).

A second task world next to `tasks.py`, for one lesson of post-training: supervised fine-tuning on answers the
model does not know teaches it the *form* of an answer without its substance, so it fabricates; teaching it to
abstain where it does not know is the fix (Gekhman et al. 2024, "Does Fine-Tuning LLMs on New Knowledge
Encourage Hallucinations?", https://arxiv.org/abs/2405.05904; Schulman 2023, "RL and truthfulness").

The world (``KnowledgeWorld(n_shops, n_items, known_fraction, heldout_fraction, seed, rl_fraction)``)
  * A fact is the price of an item at a shop: ``"A pen costs 7 coins at Kim's shop."``, one fact per
    (shop, item) pair, ``n_shops`` shops (owners from `SHOP_OWNERS`) x ``n_items`` items (the first items of
    `tasks.OBJECTS`), each price drawn in 2..12 coins.
  * Each fact is *known* with probability ``known_fraction``: the knowledge corpus (`corpus_text`, the
    mid-training data) states it; an *unknown* fact is never written anywhere the model trains before SFT.
  * Each fact is *held out* with probability ``heldout_fraction``: no SFT demonstration or RL prompt asks about
    it; the lesson's metrics are measured on held-out facts only, so they measure a behaviour (answer what you
    know, abstain on what you do not), not which questions SFT memorised.
  * Each fact that is not held out is an *RL fact* with probability ``rl_fraction``: RL prompts ask about it, SFT
    demonstrations never do, so the SFT model meets these questions with the uncertainty it has on held-out
    facts (and an RL reward that depends on it has variance). SFT facts, RL facts and held-out facts are disjoint.
  * All draws use ``random.Random(f"knowledge/{seed}")`` in a fixed order (price, known, held out per fact, in
    shop-major order), then ``random.Random(f"knowledge-rl/{seed}")`` for the RL facts (so a world with
    ``rl_fraction=0`` is the world without RL facts): a world is a pure function of its knobs.

Questions and answers (GSM8K schema, so `verifier.gold_reward` grades them)
  ``"Tom buys 3 pens at Kim's shop. How many coins does Tom pay?"`` needs the price, which the question does
  not state. The worked answer recalls the fact, then computes: ``"A pen costs 7 coins at Kim's shop.\\n3 * 7 =
  21\\n#### 21"``. The right response to a question about an unknown fact is the abstention line
  ``"I don't know what a pen costs at Kim's shop."`` (`abstention_answer`; `verifier.is_abstention` recognises
  any response whose last non-empty line starts with "I don't know"). Buyers are `tasks.NAMES`, quantities 2..4;
  a question's split (train / test) is `tasks.split_of` of its text, so held-out prompts are never trained on.

Command line (the knowledge corpus as text, or questions as jsonl):
    python -m cs336_alignment.world.knowledge --format corpus --repeats 20 > corpus.txt
    python -m cs336_alignment.world.knowledge --format questions --split test > questions.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, replace

from cs336_alignment.world.tasks import ENDOFTEXT, NAMES, OBJECTS, raw_document, generate_problems, split_of

SHOP_OWNERS = ["Kim", "Raj", "Ola", "Ted", "Uma", "Vic", "Ada", "Gus", "Hal", "Ivo", "Jo", "Kai"]
MIN_PRICE, MAX_PRICE = 2, 12
QUANTITIES = (2, 3, 4)
ABSTAIN_PREFIX = "I don't know"  # the verifier's abstention marker (verifier.ABSTAIN_PREFIX is the same string)
_PHRASINGS = ["A {item} costs {price} coins at {shop}'s shop.", "At {shop}'s shop a {item} costs {price} coins.",
              "{shop}'s shop sells a {item} for {price} coins.", "The price of a {item} at {shop}'s shop is {price} coins."]
SFT_MODES = ("answer", "abstain", "omit")  # what SFT demonstrations do with questions about unknown facts


@dataclass(frozen=True)
class Fact:
    shop: str
    item: str  # singular
    items: str  # plural
    price: int
    known: bool  # stated in the knowledge corpus
    heldout: bool  # never asked in SFT demonstrations or RL prompts
    rl: bool = False  # asked in RL prompts only (never held out, never in SFT demonstrations)

    def sentence(self, phrasing: int = 0) -> str:
        """The fact in words; phrasing 0 is the one worked answers recall."""
        return _PHRASINGS[phrasing].format(item=self.item, price=self.price, shop=self.shop)


class KnowledgeWorld:
    """The facts of one seeded world (module docstring).

    Args:
        n_shops: 1..len(SHOP_OWNERS).  n_items: 1..len(tasks.OBJECTS).
        known_fraction, heldout_fraction, rl_fraction: probabilities in [0, 1].
        seed: the world's seed.
    Raises:
        ValueError: a knob out of range.
    """

    def __init__(self, n_shops: int = 8, n_items: int = 10, known_fraction: float = 0.5,
                 heldout_fraction: float = 0.3, seed: int = 0, rl_fraction: float = 0.0):
        if not 1 <= n_shops <= len(SHOP_OWNERS) or not 1 <= n_items <= len(OBJECTS):
            raise ValueError(f"n_shops must be in 1..{len(SHOP_OWNERS)} and n_items in 1..{len(OBJECTS)}, "
                             f"got {n_shops}, {n_items}")
        for name, value in (("known_fraction", known_fraction), ("heldout_fraction", heldout_fraction),
                            ("rl_fraction", rl_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        rng = random.Random(f"knowledge/{seed}")
        self.facts: list[Fact] = []
        for shop in SHOP_OWNERS[:n_shops]:
            for item, items in OBJECTS[:n_items]:
                price = rng.randint(MIN_PRICE, MAX_PRICE)
                known = rng.random() < known_fraction
                heldout = rng.random() < heldout_fraction
                self.facts.append(Fact(shop, item, items, price, known, heldout))
        rl_rng = random.Random(f"knowledge-rl/{seed}")
        self.facts = [replace(f, rl=not f.heldout and rl_rng.random() < rl_fraction) for f in self.facts]

    def select(self, known: bool | None = None, heldout: bool | None = None, rl: bool | None = None) -> list[Fact]:
        """The facts with the given status (None = either)."""
        return [f for f in self.facts if (known is None or f.known == known) and (heldout is None or f.heldout == heldout)
                and (rl is None or f.rl == rl)]

    def corpus_text(self, repeats: int = 20, task_documents: int = 0, seed: int = 0) -> str:
        """The knowledge corpus (mid-training data): every known fact stated `repeats` times (phrasings drawn in
        turn), each statement a document ending in <|endoftext|>, shuffled together with `task_documents` raw
        task-world documents (`tasks.raw_document`, train split: so the model keeps its arithmetic), with
        ``random.Random(f"corpus/{seed}")``. Unknown facts never appear."""
        docs = [f.sentence(r % len(_PHRASINGS)) for f in self.select(known=True) for r in range(repeats)]
        docs += [raw_document(p) for p in generate_problems(task_documents, "train", seed)]
        random.Random(f"corpus/{seed}").shuffle(docs)
        return "".join(d + ENDOFTEXT for d in docs)

    def questions(self, facts: list[Fact], split: str) -> list[dict]:
        """Every question of `split` ("train" or "test", `tasks.split_of`) about each fact, in order:
        [{"question", "answer" (the worked answer, "#### N"), "known", "heldout", "fact": the sentence}]."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be train or test, got {split!r}")
        out = []
        for f in facts:
            for buyer, _ in NAMES:
                for q in QUANTITIES:
                    question = f"{buyer} buys {q} {f.items} at {f.shop}'s shop. How many coins does {buyer} pay?"
                    if split_of(question) == split:
                        out.append({"question": question, "answer": worked_answer(f, q), "quantity": q, "known": f.known,
                                    "heldout": f.heldout, "fact": f.sentence()})
        return out

    def sft_demonstrations(self, mode: str, per_fact: int = 8, seed: int = 0, recall_phrasing: int = 0,
                           abstain_recall: bool = False) -> list[list[dict[str, str]]]:
        """SFT chats on the SFT facts (neither held out nor RL facts), `per_fact` train questions each (drawn with
        ``random.Random(f"sft/{seed}")``), shuffled. Known facts get the worked answer; unknown facts get, by
        `mode`: "answer" the worked answer with the true price (which the model cannot know), "abstain" the
        abstention line, "omit" no demonstration. Worked answers recall the fact in `recall_phrasing`
        (`worked_answer`); with `abstain_recall` an abstention starts with the same attempted recall
        (`abstention_answer`).
        Raises ValueError on an unknown mode."""
        if mode not in SFT_MODES:
            raise ValueError(f"mode must be one of {SFT_MODES}, got {mode!r}")
        rng = random.Random(f"sft/{seed}")
        chats = []
        for f in self.select(heldout=False, rl=False):
            if not f.known and mode == "omit":
                continue
            qs = self.questions([f], "train")
            for q in rng.sample(qs, min(per_fact, len(qs))):
                answer = (worked_answer(f, q["quantity"], recall_phrasing) if f.known or mode == "answer"
                          else abstention_answer(f, recall_phrasing if abstain_recall else None))
                chats.append([{"role": "user", "content": q["question"]}, {"role": "assistant", "content": answer}])
        rng.shuffle(chats)
        return chats


@dataclass
class HallucinationConfig:
    """The hallucination lesson's knobs (pipeline/hallucination.py; presets' "hallucination" section): this world's
    knobs, then the recipe of its stages."""
    n_shops: int = 12
    """shops of the knowledge world (x n_items facts)"""
    n_items: int = 10
    """items per shop"""
    known_fraction: float = 0.5
    """probability that a fact is stated in the knowledge corpus"""
    heldout_fraction: float = 0.3
    """probability that a fact is held out of SFT and RL (the metrics are measured on these)"""
    rl_fraction: float = 0.3
    """probability that a fact not held out is an RL fact (asked in RL prompts only, never in SFT)"""
    world_seed: int = 0
    """seed of the world's facts (the run's --seed seeds the training)"""
    repeats: int = 20
    """statements of each known fact in the corpus (4 phrasings in turn)"""
    task_documents: int = 500
    """raw task-world documents mixed into the corpus"""
    mid_steps: int = 400
    """mid-training steps (16 windows of 128 tokens): 400 recalled 41 of 42 known facts"""
    mid_lr: float = 3e-3
    """mid-training peak learning rate (cosine to a tenth)"""
    sft_per_fact: int = 8
    """SFT demonstrations per (not held-out) fact"""
    recall_phrasing: int = 1
    """the corpus phrasing (0..3) in which a worked SFT answer recalls the fact (1: "At Kim's shop a pen costs ...")"""
    abstain_recall: bool = False
    """an abstention demonstration first attempts the recall ("At Kim's shop a pen costs"), then abstains"""
    sft_steps: int = 100
    """SFT steps of 32 chats, the same for the three SFT modes"""
    sft_lr: float = 6e-4
    """SFT peak learning rate (cosine to a tenth)"""
    penalties: str = "0,1,3"
    """GRPO runs, one per penalty of a wrong answer (abstention_reward's wrong_penalty)"""
    rl_steps: int = 30
    """GRPO rollout batches of 16 prompts x 8 samples"""
    rl_lr: float = 3e-5
    """GRPO peak learning rate"""
    max_new_tokens: int = 40
    """response length limit (a worked answer is ~25 tokens)"""
    eval_limit: int = 400
    """evaluate on this many held-out questions, half about known facts and half about unknown ones, drawn evenly
    (a seeded shuffle; 0 = all 1,440): the rates' binomial SEs are then at most 3.5 points"""
    reuse_stages: bool = False
    """keep a stage already trained in the output directory (its ckpt.pt) instead of training it again"""
    mid_init: str = ""
    """a mid-trained checkpoint of the same world to start the SFTs from, skipping stage 1 (a cheaper seed
    sub-run: only the SFTs and RL are reseeded); empty = mid-train here"""


def worked_answer(fact: Fact, quantity: int, phrasing: int = 0) -> str:
    """ "A {item} costs {p} coins at {shop}'s shop.\\n{q} * {p} = {q p}\\n#### {q p}": the fact recalled in
    `phrasing` (0..3, the corpus' phrasings; 1 names the shop before the price), then the product."""
    total = quantity * fact.price
    return f"{fact.sentence(phrasing)}\n{quantity} * {fact.price} = {total}\n#### {total}"


def abstention_answer(fact: Fact, recall_phrasing: int | None = None) -> str:
    """The right response to a question about an unknown fact: "I don't know what a {item} costs at {shop}'s shop."
    With `recall_phrasing` (0..3), the line is preceded by the attempted recall, the phrasing up to the price
    ("At Kim's shop a pen costs\\nI don't know ..."): the model then decides to abstain where the price would
    come, where its uncertainty about the fact is (the last line is still the abstention the verifier reads)."""
    line = f"{ABSTAIN_PREFIX} what a {fact.item} costs at {fact.shop}'s shop."
    if recall_phrasing is None:
        return line
    return _PHRASINGS[recall_phrasing].split("{price}")[0].format(item=fact.item, shop=fact.shop).rstrip() + "\n" + line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the knowledge world: its corpus or its questions.")
    parser.add_argument("--format", choices=["corpus", "questions"], default="questions")
    parser.add_argument("--split", choices=["train", "test"], default="test")
    parser.add_argument("--n-shops", type=int, default=8)
    parser.add_argument("--n-items", type=int, default=10)
    parser.add_argument("--known-fraction", type=float, default=0.5)
    parser.add_argument("--heldout-fraction", type=float, default=0.3)
    parser.add_argument("--rl-fraction", type=float, default=0.0, help="probability that a fact is an RL fact")
    parser.add_argument("--repeats", type=int, default=20, help="statements of each known fact in the corpus")
    parser.add_argument("--task-documents", type=int, default=0, help="task-world documents mixed into the corpus")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = KnowledgeWorld(args.n_shops, args.n_items, args.known_fraction, args.heldout_fraction, args.seed,
                           args.rl_fraction)
    if args.format == "corpus":
        print(world.corpus_text(args.repeats, args.task_documents, args.seed), end="")
        return
    for q in world.questions(world.facts, args.split):
        print(json.dumps(q))


if __name__ == "__main__":
    main()
