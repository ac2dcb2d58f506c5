"""The knowledge world (facts known / unknown), the abstention verifier and reward, and the knowledge metrics.

Oracles: hand-written responses and hand-computed rates / standard errors; properties of the world (unknown facts
never in the corpus, held-out facts never in SFT demonstrations, answers that the gold reward accepts).
"""
from __future__ import annotations

import math

import pytest

from cs336_alignment.evaluation.evaluate import knowledge_metrics
from cs336_alignment.world.knowledge import (SFT_MODES, KnowledgeWorld, abstention_answer, main as knowledge_main,
                                       worked_answer)
from cs336_alignment.world.verifier import abstention_reward, gold_reward, is_abstention

WORLD = KnowledgeWorld(n_shops=4, n_items=5, known_fraction=0.5, heldout_fraction=0.4, seed=3)


def test_world_is_seeded_and_knobs_are_checked():
    again = KnowledgeWorld(n_shops=4, n_items=5, known_fraction=0.5, heldout_fraction=0.4, seed=3)
    assert again.facts == WORLD.facts
    assert KnowledgeWorld(4, 5, 0.5, 0.4, seed=4).facts != WORLD.facts
    assert len(WORLD.facts) == 20 and len({(f.shop, f.item) for f in WORLD.facts}) == 20
    assert all(2 <= f.price <= 12 for f in WORLD.facts)
    assert all(f.known for f in KnowledgeWorld(2, 2, known_fraction=1.0).facts)
    assert not any(f.known for f in KnowledgeWorld(2, 2, known_fraction=0.0).facts)
    for bad in (dict(n_shops=0), dict(n_items=99), dict(known_fraction=1.5), dict(heldout_fraction=-0.1)):
        with pytest.raises(ValueError):
            KnowledgeWorld(**bad)


def test_corpus_states_known_facts_only():
    corpus = WORLD.corpus_text(repeats=4, task_documents=3)
    for f in WORLD.facts:
        mentioned = f"{f.shop}'s shop" in corpus and f" {f.item} " in corpus and (
            f.sentence(0) in corpus or f.sentence(1) in corpus)
        assert mentioned == f.known, f
        assert (f.sentence(0) in corpus) == f.known  # 4 repeats use all 4 phrasings
    assert corpus.count("<|endoftext|>") == 4 * len(WORLD.select(known=True)) + 3
    assert corpus.count("Question:") == 3


def test_questions_need_the_fact_and_the_worked_answer_is_right():
    f = WORLD.facts[0]
    rows = WORLD.questions([f], "train") + WORLD.questions([f], "test")
    assert len(rows) == 20 * 3  # buyers x quantities, split between train and test
    assert not {r["question"] for r in WORLD.questions([f], "train")} & {r["question"] for r in WORLD.questions([f], "test")}
    for r in rows:
        assert str(f.price) not in r["question"].split()  # the price is not stated in the question
        q = int(r["question"].split(" buys ")[1].split()[0])
        assert gold_reward(r["answer"], str(q * f.price))["reward"] == 1.0
    assert worked_answer(f, 3).splitlines()[1] == f"3 * {f.price} = {3 * f.price}"


def test_sft_demonstrations_by_mode():
    by_mode = {m: WORLD.sft_demonstrations(m, per_fact=3) for m in SFT_MODES}
    heldout_shops_items = {(f.shop, f.item) for f in WORLD.select(heldout=True)}
    n_known, n_unknown = len(WORLD.select(known=True, heldout=False)), len(WORLD.select(known=False, heldout=False))
    assert len(by_mode["answer"]) == len(by_mode["abstain"]) == 3 * (n_known + n_unknown)
    assert len(by_mode["omit"]) == 3 * n_known
    for mode, chats in by_mode.items():
        for chat in chats:
            question, answer = chat[0]["content"], chat[1]["content"]
            fact = next(f for f in WORLD.facts if f"{f.items} at {f.shop}'s shop" in question)
            assert (fact.shop, fact.item) not in heldout_shops_items
            assert is_abstention(answer) == (mode == "abstain" and not fact.known)
    with pytest.raises(ValueError):
        WORLD.sft_demonstrations("guess")


def test_is_abstention_on_hand_examples():
    f = WORLD.facts[0]
    assert is_abstention(abstention_answer(f))
    assert is_abstention("I don't know what a pen costs at Kim's shop.<|end|>")
    assert is_abstention("i don\u2019t know.\n")
    assert not is_abstention(worked_answer(f, 2))
    assert not is_abstention("I don't know what a pen costs.\n2 * 5 = 10\n#### 10")  # answered after all
    assert not is_abstention("")


def test_abstention_reward_hand_values():
    truth = "A pen costs 7 coins at Kim's shop.\n3 * 7 = 21\n#### 21"
    right, wrong, abstain = "3 * 7 = 21\n#### 21", "3 * 8 = 24\n#### 24", "I don't know what a pen costs at Kim's shop."
    assert abstention_reward(right, truth)["reward"] == 1.0
    assert abstention_reward(abstain, truth) == {"reward": 0.0, "format_reward": 0.0, "answer_reward": 0.0,
                                                 "abstained": 1.0}
    assert abstention_reward(wrong, truth)["reward"] == -1.0
    assert abstention_reward(wrong, truth, wrong_penalty=3.0)["reward"] == -3.0
    assert abstention_reward("gibberish", truth, wrong_penalty=0.0)["reward"] == 0.0
    with pytest.raises(ValueError):
        abstention_reward(right, truth, wrong_penalty=-1.0)


def test_knowledge_metrics_on_hand_examples():
    truth = "#### 21"
    responses = ["3 * 7 = 21\n#### 21",             # known, answered right
                 "3 * 6 = 18\n#### 18",             # known, answered wrong
                 "I don't know what a pen costs.",  # known: a false abstention
                 "3 * 9 = 27\n#### 27",             # unknown: a fabricated number
                 "3 * 7 = 21\n#### 21",             # unknown: right by luck, still a fabrication
                 "I don't know what a pen costs.",  # unknown: abstained
                 "I don't know what a pen costs."]  # unknown: abstained
    known = [True, True, True, False, False, False, False]
    m = knowledge_metrics(responses, [truth] * 7, known)
    assert m["knowledge/n_known"] == 3 and m["knowledge/n_unknown"] == 4
    assert m["knowledge/accuracy_known"] == pytest.approx(1 / 3)
    assert m["knowledge/false_abstention_rate"] == pytest.approx(1 / 3)
    assert m["knowledge/fabrication_rate"] == pytest.approx(2 / 4)
    assert m["knowledge/abstention_rate"] == pytest.approx(2 / 4)
    assert m["knowledge/accuracy_known_se"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 3))
    assert m["knowledge/fabrication_rate_se"] == pytest.approx(math.sqrt(0.25 / 4))
    only_known = knowledge_metrics(responses[:1], [truth], [True])
    assert math.isnan(only_known["knowledge/fabrication_rate"]) and only_known["knowledge/accuracy_known"] == 1.0
    with pytest.raises(ValueError):
        knowledge_metrics(responses, [truth], known)


def test_cli_prints_corpus_and_questions(capsys):
    knowledge_main(["--format", "corpus", "--n-shops", "2", "--n-items", "2", "--known-fraction", "1", "--repeats", "1"])
    assert capsys.readouterr().out.count("<|endoftext|>") == 4
    knowledge_main(["--format", "questions", "--n-shops", "1", "--n-items", "1", "--split", "train"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert 40 <= len(lines) <= 60


def test_rl_facts_are_a_third_disjoint_partition():
    world = KnowledgeWorld(n_shops=6, n_items=8, known_fraction=0.5, heldout_fraction=0.3, seed=3, rl_fraction=0.4)
    without = KnowledgeWorld(n_shops=6, n_items=8, known_fraction=0.5, heldout_fraction=0.3, seed=3)
    # the RL draw comes after the world's draws: prices, known and held-out flags are those of the world without
    assert [(f.price, f.known, f.heldout) for f in world.facts] == [(f.price, f.known, f.heldout) for f in without.facts]
    assert not any(f.rl for f in without.facts)
    rl, heldout = world.select(rl=True), world.select(heldout=True)
    assert rl and not any(f.heldout for f in rl)
    assert {f.known for f in rl} == {True, False}  # at these knobs, both kinds
    sft = world.select(heldout=False, rl=False)
    assert len(sft) + len(rl) + len(heldout) == len(world.facts)
    for mode in SFT_MODES:
        for chat in world.sft_demonstrations(mode, per_fact=2):
            fact = next(f for f in world.facts if f"{f.items} at {f.shop}'s shop" in chat[0]["content"])
            assert fact in sft
    with pytest.raises(ValueError):
        KnowledgeWorld(rl_fraction=1.5)


def test_recall_phrasings_on_hand_examples():
    pen = next(f for f in KnowledgeWorld(1, 1, 1.0, 0.0).facts)  # Kim's shop, the first object
    shop, item, p = pen.shop, pen.item, pen.price
    assert worked_answer(pen, 3, 1) == f"At {shop}'s shop a {item} costs {p} coins.\n3 * {p} = {3 * p}\n#### {3 * p}"
    assert worked_answer(pen, 3) == f"A {item} costs {p} coins at {shop}'s shop.\n3 * {p} = {3 * p}\n#### {3 * p}"
    assert gold_reward(worked_answer(pen, 3, 1), str(3 * p))["reward"] == 1.0
    recalled = abstention_answer(pen, 1)
    assert recalled == f"At {shop}'s shop a {item} costs\nI don't know what a {item} costs at {shop}'s shop."
    assert abstention_answer(pen, 0).startswith(f"A {item} costs\nI don't know")
    assert is_abstention(recalled)  # the verifier reads the last line: an abstention, not a fabrication
    m = knowledge_metrics([recalled], ["#### 21"], [False])
    assert m["knowledge/abstention_rate"] == 1.0 and m["knowledge/fabrication_rate"] == 0.0
    chats = WORLD.sft_demonstrations("abstain", per_fact=2, recall_phrasing=1, abstain_recall=True)
    unknown = [c[1]["content"] for c in chats if is_abstention(c[1]["content"])]
    assert unknown and all(a.split("\n")[0].startswith("At ") and a.split("\n")[0].endswith(" costs") for a in unknown)
    assert all(c[1]["content"].startswith("At ") for c in chats)  # known facts recalled in phrasing 1 too
