"""Smoke runs of the reward-model and best-of-N stages on a tiny random model (a few CPU seconds each).

Each asserts what its stage is for: the Bradley-Terry loss falls and held-out accuracy rises (rm), and the proxy
reward rises with N while the KL follows log N - (N - 1) / N (bon). The DPO stage, on the same fixtures, is in
test_train_dpo.py (so that `-k dpo` selects DPO tests only). The preference data is learnable by construction: chosen = the
task world's worked answer, rejected = a refusal.
"""
from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from cs336_alignment.lm.checkpoint import save_checkpoint
from cs336_alignment.evaluation.metrics import best_of_n_kl
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment import reward_model as rm_package
from cs336_alignment.evaluation.preferences import load_preferences, parse_preference, write_preferences
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train import bon, reward_model
from cs336_alignment.train.common import read_metrics

REFUSAL = "I am not sure how to solve this one."


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=load_tokenizer().vocab_size, context_length=128, d_model=32,
                               num_layers=1, num_heads=2, d_ff=64)
    path = tmp_path_factory.mktemp("tiny") / "ckpt.pt"
    save_checkpoint(TransformerLM(config), None, 0, path, model_config=dataclasses.asdict(config))
    return str(path)


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    paths = {}
    for split, n in (("train", 48), ("test", 16)):
        pairs = [{"prompt": p["question"], "chosen": p["answer"], "rejected": REFUSAL}
                 for p in generate_problems(n, split, seed=3)]
        paths[split] = root / f"{split}.jsonl"
        write_preferences(paths[split], pairs)
    return str(paths["train"]), str(paths["test"])


@pytest.fixture(scope="module")
def trained_rm(tiny_ckpt, pref_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    cfg = reward_model.RMConfig(init=tiny_ckpt, out=str(out), data=pref_files[0], eval_data=pref_files[1],
                                num_steps=16, batch_size=16, lr=3e-3, warmup_steps=1, log_every=4, eval_every=8,
                                quiet=True)
    return out, reward_model.train(cfg)


# ---------------------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------------------

def test_rm_smoke_loss_falls_and_accuracy_rises(trained_rm, pref_files):
    out, result = trained_rm
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss/train"] for r in records if "loss/train" in r]
    eval_losses = [r["eval/loss"] for r in records if "eval/loss" in r]
    assert losses[-1] < losses[0] and eval_losses[-1] < eval_losses[0], "Bradley-Terry loss falls, held out too"
    assert result["eval/rm/accuracy"] >= 0.9, "held-out pairs ordered"
    assert 0.0 <= result["eval/rm/ece"] <= 1.0
    # The saved model loads, and its rewards are centred on the training responses.
    model, extra = rm_package.load_reward_model(result["checkpoint"])
    pairs = load_preferences(pref_files[0])
    scores = rm_package.score_responses(model, load_tokenizer(), [p["prompt"] for p in pairs] * 2,
                                          [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    assert abs(sum(scores) / len(scores)) < 1e-3, "mean reward 0 on the training responses"
    assert extra["kind"] == "reward_model"


def test_rm_samples_and_labels_its_own_pairs(tiny_ckpt, tmp_path):
    cfg = reward_model.RMConfig(init=tiny_ckpt, out=str(tmp_path), n_prompts=4, n_eval_prompts=2, group_size=3,
                                max_new_tokens=8, num_steps=2, batch_size=4, warmup_steps=1, quiet=True)
    result = reward_model.train(cfg)
    train_pairs = load_preferences(tmp_path / "preferences_train.jsonl")
    assert len(train_pairs) == result["n_pairs"] > 0
    assert {"u_chosen", "u_rejected", "p_chosen", "gold_chosen", "len_chosen"} <= set(train_pairs[0])
    assert 0.0 <= result["eval/rm/ceiling_accuracy"] <= 1.0


def test_correct_preferred_hand_example():
    pairs = [{"gold_chosen": 1.0, "gold_rejected": 0.0},   # chosen is correct, scored higher: right
             {"gold_chosen": 0.0, "gold_rejected": 1.0},   # rejected is correct, scored lower: wrong
             {"gold_chosen": 1.0, "gold_rejected": 1.0},   # gold tie: not counted
             {"gold_chosen": 0.0, "gold_rejected": 1.0},   # score tie: 1/2
             {}]                                           # no gold fields (a user's pair): not counted
    chosen = torch.tensor([2.0, 2.0, 9.0, 0.5, 9.0])
    rejected = torch.tensor([1.0, 1.0, -9.0, 0.5, -9.0])
    assert reward_model.correct_preferred(chosen, rejected, pairs) == pytest.approx((1 + 0 + 0.5) / 3)
    assert reward_model.correct_preferred(chosen[2:3], rejected[2:3], pairs[2:3]) is None


def test_sft_diagnostics_matches_naive_mean_log_probs(tiny_ckpt):
    from cs336_alignment.lm.checkpoint import load_model
    model, _ = load_model(tiny_ckpt)
    tokenizer = load_tokenizer()
    problems = generate_problems(6, "test", seed=5)
    # Responses of very different lengths, so that a summed (not averaged) log-prob would order them otherwise.
    pairs = [{"prompt": p["question"], "chosen": p["answer"] if i % 2 else "7",
              "rejected": "7" if i % 2 else p["answer"], "gold_chosen": float(i % 2), "gold_rejected": float(1 - i % 2)}
             for i, p in enumerate(problems)]
    pairs.append({"prompt": "Hi?", "chosen": "a", "rejected": "b", "gold_chosen": 1.0, "gold_rejected": 1.0})

    def naive_mean_logp(prompt, response):  # log-softmax of the whole sequence, read token by token
        ids, mask = tokenizer.render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
        terms = [logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t]]
        return sum(terms) / len(terms)

    right = 0
    for pair in pairs[:-1]:
        c, r = naive_mean_logp(pair["prompt"], pair["chosen"]), naive_mean_logp(pair["prompt"], pair["rejected"])
        right += (c > r) == (pair["gold_chosen"] > pair["gold_rejected"])
    out = reward_model.sft_diagnostics(model, tokenizer, [parse_preference(p, "test") for p in pairs], 128)
    assert out["eval/rm/gold_pairs"] == pytest.approx(6 / 7)
    assert out["eval/rm/sft_correct_preferred"] == pytest.approx(right / 6)
    assert reward_model.sft_diagnostics(model, tokenizer, [parse_preference(pairs[-1], "test")], 128) == {}


def test_score_sequences_equals_each_sequence_scored_alone(tiny_ckpt):
    """Batches are formed by length; the scores come back in the caller's order, each the one it gets alone."""
    from cs336_alignment.lm.checkpoint import load_model
    model = rm_package.RewardModel.from_lm(load_model(tiny_ckpt, "cpu")[0])
    torch.manual_seed(1)
    sequences = [torch.randint(1, 200, (n,)).tolist() for n in (9, 3, 17, 5, 12, 3, 30)]
    scores = rm_package.score_sequences(model, sequences, pad_token_id=0, batch_size=3)
    with torch.no_grad():
        alone = [float(rm_package.batch_rewards(model.eval(), [s], pad_token_id=0)) for s in sequences]
    assert scores == pytest.approx(alone, abs=1e-5)


def test_rm_reports_whether_it_checks_answers(tiny_ckpt, pref_files, tmp_path):
    """Held-out pairs with gold fields: the RM trained to prefer worked answers over refusals picks the correct one."""
    eval_pairs = [dict(p, gold_chosen=1.0, gold_rejected=0.0) for p in load_preferences(pref_files[1])]
    write_preferences(tmp_path / "eval.jsonl", eval_pairs)
    cfg = reward_model.RMConfig(init=tiny_ckpt, out=str(tmp_path / "rm"), data=pref_files[0],
                                eval_data=str(tmp_path / "eval.jsonl"), num_steps=16, batch_size=16, lr=3e-3,
                                warmup_steps=1, log_every=8, eval_every=8, quiet=True)
    result = reward_model.train(cfg)
    assert result["eval/rm/gold_pairs"] == 1.0
    assert result["eval/rm/correct_preferred"] == result["eval/rm/accuracy"] >= 0.9, "labels = gold here"
    assert 0.0 <= result["eval/rm/sft_correct_preferred"] <= 1.0


# ---------------------------------------------------------------------------------------------------------
# Best-of-N
# ---------------------------------------------------------------------------------------------------------

def test_best_of_n_curve_hand_example():
    proxy = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    gold = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    lengths = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    worked = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    prose = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    rows = bon.best_of_n_curve(proxy, gold, lengths, [1, 2, 4], worked, prose)
    assert rows[0]["reward/gold_mean"] == pytest.approx(0.5) and rows[0]["reward/proxy_mean"] == pytest.approx(0.25)
    assert rows[0]["response/prose_lines_mean"] == pytest.approx(1.5) and rows[2]["response/prose_lines_mean"] == 3.0
    assert rows[1]["response/prose_lines_mean"] == pytest.approx((3 * 3 + 2 * 1 + 2) / 6)
    assert rows[0]["response/worked_share"] == pytest.approx(0.75)
    # N = 2: winners 0.4 (3 pairs, not worked), 0.3 (2 pairs, worked), 0.2 (1 pair, worked)
    assert rows[1]["response/worked_share"] == pytest.approx(3 / 6) and rows[2]["response/worked_share"] == 0.0
    assert "response/worked_share" not in bon.best_of_n_curve(proxy, gold, lengths, [1])[0]
    # N = 2: the 6 pairs' winners are 0.4 (3 pairs: gold 1, len 20), 0.3 (2 pairs: gold 0, len 30), 0.2 (1: gold 1)
    assert rows[1]["reward/gold_mean"] == pytest.approx(4 / 6)
    assert rows[1]["reward/proxy_mean"] == pytest.approx((3 * 0.4 + 2 * 0.3 + 0.2) / 6)
    assert rows[1]["response/length_mean"] == pytest.approx((3 * 20 + 2 * 30 + 40) / 6)
    assert rows[1]["reward/oracle_mean"] == pytest.approx(1 - 1 / 6), "only the pair of wrong answers fails"
    assert rows[2]["reward/gold_mean"] == 1.0 and rows[2]["kl/ref"] == pytest.approx(math.log(4) - 0.75)
    assert rows[1]["reward/gold_gain"] == pytest.approx(4 / 6 - 0.5) and rows[1]["reward/gold_gain_se"] == 0.0


def test_best_of_n_gain_paired_se_by_hand():
    """Two prompts; N = 2 over pools of 2 picks the higher proxy. Gains per prompt: prompt 0 picks gold 1 from a
    pool of mean 0.5 (+0.5); prompt 1 picks gold 0 from a pool of mean 0.5 (-0.5). Mean 0, SE = std([0.5, -0.5],
    ddof 1) / sqrt(2) = 0.5."""
    proxy = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rows = bon.best_of_n_curve(proxy, gold, torch.ones(2, 2), [1, 2])
    assert rows[0]["reward/gold_gain"] == 0.0 and rows[0]["reward/gold_gain_se"] == 0.0
    assert rows[1]["reward/gold_gain"] == pytest.approx(0.0)
    assert rows[1]["reward/gold_gain_se"] == pytest.approx(0.5)


def test_best_of_n_fall_from_peak_by_hand():
    """Two prompts, pools of 4 ranked by proxy; the top-proxy sample of prompt 0 is wrong (over-optimisation).
    Prompt 0, gold [0, 0, 1, 0]: N = 1 gives 1/4; N = 2's 6 pairs are won by samples 1, 2, 3, 2, 3, 3 (gold 0, 1,
    0, 1, 0, 0): 1/3; N = 4 gives sample 3: 0. Prompt 1, gold [0, 1, 1, 1]: 3/4, 1, 1. Means 1/2, 2/3, 1/2: the
    peak is N = 2. N = 4 minus the peak, per prompt: [-1/3, 0], mean -1/6, SE std([-1/3, 0]) / sqrt 2 = 1/6;
    N = 1: [-1/12, -1/4], mean -1/6, SE 1/12."""
    proxy = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    gold = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    rows = bon.best_of_n_curve(proxy, gold, torch.ones(2, 4), [1, 2, 4])
    assert [r["reward/gold_mean"] for r in rows] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert rows[1]["reward/gold_minus_peak"] == 0.0 and rows[1]["reward/gold_minus_peak_se"] == 0.0
    assert rows[2]["reward/gold_minus_peak"] == pytest.approx(-1 / 6)
    assert rows[2]["reward/gold_minus_peak_se"] == pytest.approx(1 / 6)
    assert rows[0]["reward/gold_minus_peak"] == pytest.approx(-1 / 6)
    assert rows[0]["reward/gold_minus_peak_se"] == pytest.approx(1 / 12)


def test_bon_smoke_proxy_rises_with_n(tiny_ckpt, trained_rm, tmp_path):
    _, rm_result = trained_rm
    result = bon.main(["--init", tiny_ckpt, "--rm", rm_result["checkpoint"], "--out", str(tmp_path),
                       "--n-prompts", "3", "--pool-size", "8", "--max-new-tokens", "8", "--quiet"])
    rows = result["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4, 8]
    proxies = [r["reward/proxy_mean"] for r in rows]
    assert all(b > a for a, b in zip(proxies, proxies[1:])), "best-of-N proxy reward rises with N"
    assert all(r["kl/ref"] == pytest.approx(best_of_n_kl(r["n"])) for r in rows)
    assert all(r["reward/oracle_mean"] >= r["reward/gold_mean"] - 1e-9 for r in rows), "pass@N is the ceiling"
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4
    assert json.loads((tmp_path / "bon.json").read_text())["pool_size"] == 8


def test_rm_with_likelihood_term_trains_saves_and_scores_the_response(tiny_ckpt, pref_files, tmp_path):
    """--likelihood-coef: a is learned and logged, the checkpoint reloads with the term, and text pairs and rollouts
    are scored with the response's own tokens (oracle: the model called on each rendered pair alone)."""
    cfg = reward_model.RMConfig(init=tiny_ckpt, out=str(tmp_path), data=pref_files[0], eval_data=pref_files[1],
                                num_steps=8, batch_size=16, lr=3e-3, warmup_steps=1, log_every=4, eval_every=8,
                                likelihood_coef=1.0, quiet=True)
    result = reward_model.train(cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss/train"] for r in records if "loss/train" in r]
    assert losses[-1] < losses[0]
    assert result["rm/likelihood_coef"] != 1.0, "the weight of the likelihood term is trained"
    model, extra = rm_package.load_reward_model(result["checkpoint"])
    assert extra["likelihood_term"] and model.likelihood_coef.item() == pytest.approx(result["rm/likelihood_coef"])
    tokenizer = load_tokenizer()
    pairs = load_preferences(pref_files[1])[:5]
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    scores = rm_package.score_responses(model, tokenizer, prompts, responses, batch_size=2)
    alone = []
    for prompt, response in zip(prompts, responses):
        ids, mask = tokenizer.render([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
        with torch.no_grad():
            alone.append(float(model(torch.tensor([ids]), None, torch.tensor([mask]))))
    assert scores == pytest.approx(alone, abs=1e-4)
    # Rollouts: the response is the sampled ids after the prompt's.
    rendered = [tokenizer.render([{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                for p, r in zip(prompts, responses)]
    starts = [rm_package.response_start(mask) for _, mask in rendered]
    rollouts = SimpleNamespace(prompt_ids=[ids[:s] for (ids, _), s in zip(rendered, starts)],
                               response_ids=[ids[s:] for (ids, _), s in zip(rendered, starts)],
                               pad_token_id=tokenizer.pad_token_id)
    assert rm_package.score_rollouts(model, rollouts, batch_size=2).tolist() == pytest.approx(alone, abs=1e-4)
    with pytest.raises(ValueError, match="response_mask"):
        rm_package.score_sequences(model, [[1, 2, 3]], pad_token_id=0)
