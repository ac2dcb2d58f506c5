"""CS336 2026: grpo_train_step, one optimizer step over a rollout batch of text, on a tiny Hugging Face GPT-2 with a
word-level tokenizer and on our TransformerLM. The oracle is one full-batch step written the naive way (its own
tokenisation, advantages from the formula, per-token losses in plain torch ops, torch's clip_grad_norm_), in
float64: the train step must land on the same parameters for every accumulation, with or without skipping."""
from __future__ import annotations

import copy
import statistics

import pytest
import torch

from cs336_alignment.train.grpo import GRPOConfig, resolve_loss_type
from tests.adapters import run_grpo_train_step

PART = "6.3 GRPO train step"

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["<pad>", "<unk>", "<eos>", "what", "is", "two", "plus", "three", "four", "five", "six", "answer", "the",
         "yes", "no", "maybe", "so", "it", "seven", "."]
PROMPTS = ["what is two plus three", "what is four plus two"]
RESPONSES = ["the answer is five . <eos>", "no", "it is so so six <eos>", "answer five",   # group 1: mixed
             "maybe", "the answer is seven . <eos>", "no no", "four <eos>"]            # group 2: all wrong
TRUTHS = ["five"] * 4 + ["six"] * 4
G, N = 4, 8


def reward_fn(response: str, ground_truth: str) -> dict[str, float]:
    answer = float(ground_truth in response.split())
    fmt = float(response.endswith("<eos>"))
    return {"reward": answer, "format_reward": fmt, "answer_reward": answer}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A word-level `tokenizers` tokenizer wrapped in PreTrainedTokenizerFast, saved and loaded from a temp dir."""
    from tokenizers import models, pre_tokenizers
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path_factory.mktemp("word_level")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                         unk_token="<unk>").save_pretrained(path)
    return transformers.PreTrainedTokenizerFast.from_pretrained(path)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).double()


# ---------------------------------------------------------------------------------------------------------
# The oracle: one full-batch step, written out
# ---------------------------------------------------------------------------------------------------------

def naive_batch(tokenizer, prompts, responses):
    """Prompt and response encoded separately, concatenated, right-padded; labels shifted by one."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [(tokenizer.encode(p), tokenizer.encode(r)) for p, r in zip(prompts, responses)]
    L = max(len(p) + len(r) for p, r in rows)
    full = torch.tensor([p + r + [pad] * (L - len(p) - len(r)) for p, r in rows])
    mask = torch.tensor([[len(p) <= t + 1 < len(p) + len(r) for t in range(L - 1)] for p, r in rows])
    return full[:, :-1], full[:, 1:], mask


def naive_advantages(rewards, baseline, normalizer, eps=1e-6):
    out = []
    for g in range(0, len(rewards), G):
        group = rewards[g:g + G]
        mean = statistics.mean(group)
        d = {"std": statistics.stdev(group) + eps, "mean": mean + eps, "none": 1.0}[normalizer]
        out += [(r - (mean if baseline == "mean" else 0.0)) / d for r in group]
    return torch.tensor(out, dtype=torch.float64)[:, None]


def log_probs_of(model, input_ids, labels):
    logits = getattr(model(input_ids), "logits", None)
    logits = model(input_ids) if logits is None else logits
    return torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).squeeze(-1)


def naive_step(model, tokenizer, max_grad_norm, baseline="mean", normalizer="std", method="none", old=None,
               cliprange=None, loss_normalization="sequence", constant=None, lr=0.1):
    """(loss, grad norm, parameters after one SGD step) of the whole batch at once."""
    input_ids, labels, mask = naive_batch(tokenizer, [p for p in PROMPTS for _ in range(G)], RESPONSES)
    a = naive_advantages([reward_fn(r, t)["reward"] for r, t in zip(RESPONSES, TRUTHS)], baseline, normalizer)
    lp = log_probs_of(model, input_ids, labels)                                             # (N, T)
    if method == "none":
        per_token = -a * lp
    else:
        ratio = torch.exp(lp - old)
        if method == "gspo":
            ratio = torch.exp(((lp - old) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)).expand_as(lp)
        clipped = ratio if method == "noclip" else ratio.clamp(1 - cliprange, 1 + cliprange)
        per_token = -torch.minimum(ratio * a, clipped * a)
    if loss_normalization == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1)).sum() / N
    else:
        loss = (per_token * mask).sum() / constant
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    optimizer.step()
    return float(loss.detach()), float(norm), [p.detach().clone() for p in model.parameters()]


def run_step(model, tokenizer, accumulation, max_grad_norm, lr=0.1, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss, metadata = run_grpo_train_step(
        model=model, tokenizer=tokenizer, optimizer=optimizer, gradient_accumulation_steps=accumulation,
        max_grad_norm=max_grad_norm, reward_fn=reward_fn, repeated_prompts=[p for p in PROMPTS for _ in range(G)],
        rollout_responses=RESPONSES, repeated_ground_truths=TRUTHS, group_size=G, **kwargs)
    assert all(p.grad is None for p in model.parameters()), "every .grad must be None after the step"
    return loss, metadata


def assert_same_step(model, tokenizer, accumulation, max_grad_norm, oracle_kwargs, step_kwargs) -> dict:
    """The step equals the oracle's; returns its loss, grad_norm and parameters (flattened) for a snapshot."""
    before = [p.detach().clone() for p in model.parameters()]
    loss, norm, expected = naive_step(copy.deepcopy(model), tokenizer, max_grad_norm, **oracle_kwargs)
    out, metadata = run_step(model, tokenizer, accumulation, max_grad_norm, **step_kwargs)
    assert float(out) == pytest.approx(loss, rel=1e-6, abs=1e-9), "the returned loss is the whole batch's"
    assert float(metadata["grad_norm"]) == pytest.approx(norm, rel=1e-5), "grad_norm: before clipping"
    assert max(float((a - b).abs().max()) for a, b in zip(before, expected)) > 1e-4, "the step must move"
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-6)
    return {"loss": float(out), "grad_norm": float(metadata["grad_norm"]),
            "params": torch.cat([p.detach().flatten() for p in model.parameters()])}


# ---------------------------------------------------------------------------------------------------------
# Graded
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.points(5)
@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_grpo_train_step_standard_on_policy(numpy_snapshot, hf_tokenizer, accumulation):
    """GRPO (mean baseline, std normaliser, per-sequence mean): one full-batch step for 1, 2 and 4 micro-batches,
    with the gradient clipped (max_grad_norm below the norm)."""
    step = assert_same_step(tiny_gpt2(), hf_tokenizer, accumulation, 0.05, {}, {})
    numpy_snapshot.assert_match(step, f"test_grpo_train_step_standard_on_policy_acc{accumulation}")


VARIANTS = {"dr_grpo": dict(baseline="mean", advantage_normalizer="none", loss_normalization="constant",
                            normalization_constant=40.0),
            "rft": dict(baseline="none", advantage_normalizer="none", loss_normalization="constant",
                        normalization_constant=40.0),
            "maxrl": dict(baseline="mean", advantage_normalizer="mean", loss_normalization="sequence"),
            "no_baseline_std": dict(baseline="none", advantage_normalizer="std", loss_normalization="sequence")}


@pytest.mark.points(2.5)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_grpo_train_step_variants_on_policy(numpy_snapshot, hf_tokenizer, name):
    """Every baseline, normaliser and aggregation; rows with advantage exactly 0 never reach the model (fewer
    tokens through the forward pass) and the parameters are those of the step with every row."""
    v = VARIANTS[name]
    model = tiny_gpt2()
    forwarded = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwarded.append(  # not the oracle's copy
        (args[0] if args else kwargs["input_ids"]).numel()) if module is model else None, with_kwargs=True)
    step = assert_same_step(model, hf_tokenizer, 2, None,
                            dict(baseline=v["baseline"], normalizer=v["advantage_normalizer"],
                                 loss_normalization=v["loss_normalization"],
                                 constant=v.get("normalization_constant")), v)
    full = naive_batch(hf_tokenizer, [p for p in PROMPTS for _ in range(G)], RESPONSES)[0].numel()
    assert 0 < sum(forwarded) < full, f"{sum(forwarded)} tokens through the model, the whole batch has {full}: " \
                                      "rows with advantage exactly 0 must be skipped"
    numpy_snapshot.assert_match(step, f"test_grpo_train_step_variants_on_policy_{name}")


@pytest.mark.points(2.5)
@pytest.mark.parametrize("method", ["noclip", "grpo", "gspo"])
def test_grpo_train_step_off_policy(numpy_snapshot, hf_tokenizer, method):
    """Old log-probs of another policy (per full batch, aligned with the tokenised batch), clipped at 0.1."""
    model, old_model = tiny_gpt2(0), tiny_gpt2(1)
    with torch.no_grad():
        for p, q in zip(old_model.parameters(), model.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
        input_ids, labels, _ = naive_batch(hf_tokenizer, [p for p in PROMPTS for _ in range(G)], RESPONSES)
        old = log_probs_of(old_model, input_ids, labels)                                    # (N, T)
    step = assert_same_step(model, hf_tokenizer, 2, 1.0, dict(method=method, old=old, cliprange=0.1),
                            dict(importance_reweighting_method=method, old_log_probs=old, cliprange=0.1))
    numpy_snapshot.assert_match(step, f"test_grpo_train_step_off_policy_{method}")


# ---------------------------------------------------------------------------------------------------------
# Ungraded: our model and tokenizer, metadata, errors, the loop's flags
# ---------------------------------------------------------------------------------------------------------

def test_grpo_train_step_on_our_transformer_and_tokenizer():
    from cs336_alignment.lm.model import TransformerConfig, TransformerLM
    from cs336_alignment.lm.tokenizer import load_tokenizer
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=tokenizer.vocab_size, context_length=128, d_model=16,
                                            num_layers=1, num_heads=2, d_ff=32)).double()
    for k in (1, 4):
        assert_same_step(copy.deepcopy(model), tokenizer, k, 0.05, {}, {})


def test_metadata(hf_tokenizer):
    _, metadata = run_step(tiny_gpt2(), hf_tokenizer, 2, 1.0, importance_reweighting_method="grpo",
                           old_log_probs=torch.zeros(N, 10, dtype=torch.float64), cliprange=0.2)
    rewards = [reward_fn(r, t) for r, t in zip(RESPONSES, TRUTHS)]
    assert metadata["reward/mean"] == pytest.approx(statistics.mean(r["reward"] for r in rewards))
    assert metadata["reward/format_reward_mean"] == pytest.approx(statistics.mean(r["format_reward"] for r in rewards))
    assert metadata["skipped_fraction"] == 0.5                                 # the all-wrong group
    assert 0.0 <= metadata["clip_fraction"] <= 1.0 and metadata["grad_norm"] > 0


def test_errors(hf_tokenizer):
    with pytest.raises(ValueError):   # 8 rows do not split into 3 micro-batches
        run_step(tiny_gpt2(), hf_tokenizer, 3, 1.0)
    with pytest.raises(ValueError):   # grpo needs old_log_probs of the tokenised batch's shape
        run_step(tiny_gpt2(), hf_tokenizer, 1, 1.0, importance_reweighting_method="grpo", cliprange=0.2,
                 old_log_probs=torch.zeros(N, 3, dtype=torch.float64))


@pytest.mark.parametrize("loss_type,expected", [
    ("no_baseline", dict(baseline="none", advantage_normalizer="none", importance_reweighting="none")),
    ("reinforce_with_baseline", dict(baseline="mean", advantage_normalizer="std", importance_reweighting="none")),
    ("grpo_clip", dict(baseline="mean", advantage_normalizer="std", importance_reweighting="grpo")),
    ("grpo_no_clip", dict(baseline="mean", advantage_normalizer="std", importance_reweighting="noclip"))])
def test_loop_maps_the_2025_loss_type_onto_the_2026_flags(loss_type, expected):
    cfg = resolve_loss_type(GRPOConfig(loss_type=loss_type))
    assert cfg.loss_type == "" and {k: getattr(cfg, k) for k in expected} == expected
    assert resolve_loss_type(GRPOConfig()) == GRPOConfig()                    # the default is GRPO-Clip
    assert GRPOConfig().importance_reweighting == "grpo" and GRPOConfig().baseline == "mean"
