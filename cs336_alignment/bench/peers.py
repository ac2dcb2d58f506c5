"""`bench peers`: our model and loops against transformers' LlamaForCausalLM and TRL's losses, one thread each.

    pip install -e '.[peers]'                  # transformers + TRL (optional; without them the bench skips)
    python -m cs336_alignment bench peers      # ratios ours / peer, measured interleaved in one run

Both sides start from the same weights: the shipped tiny SFT model (data/checkpoints/tiny/sft.pt), exported to a
Hugging Face Llama directory (`TransformerLM.save_pretrained`) and opened with `LlamaForCausalLM.from_pretrained`
(float32, attn_implementation="sdpa"). Gradient checkpointing is off on both sides. What each row times:

  fwd+bwd   logits of a (B, T) batch without padding mask, mean token cross-entropy, backward (same maths).
  sft       one optimizer step on chat rows, loss on the assistant tokens only (mean per token), clip 1.0.
            Ours: the sft loop's calls (get_response_log_probs, sft_microbatch_train_step with
            normalize_constant = tokens / rows, so the loss is the same per-token mean), clip_gradients and the
            loop's optimizer. Peer: TRL SFTTrainer's compute path (model(input_ids, attention_mask, labels).loss,
            assistant_only_loss), torch's clip_grad_norm_ and AdamW(fused=True) (Trainer's default optim,
            "adamw_torch_fused").
  dpo       one DPO step on pairs (reference log-probs precomputed on both sides). Ours: dpo.sequence_log_probs
            and dpo.dpo_loss. Peer: TRL DPOTrainer._compute_loss's path: trl.trainer.utils.add_fused_lm_head,
            model(..., labels, fused_lm_head=True).log_probs summed per row, -logsigmoid(beta * margin).mean().
  grpo      one GRPO step on fresh samples (one epoch: ratio exactly 1). Ours: get_response_log_probs with
            entropy and grpo_loss.policy_and_kl_backward ("grpo" clip, loss normalised by the step's response
            tokens); `--old-forward` adds the no-grad forward for old log-probs that the loop ran before it reused
            the first pass. Peer: TRL GRPOTrainer._compute_loss's maths (selective_log_softmax and
            entropy_from_logits on the logits, old = log-probs.detach(), DAPO token normalisation).
  sample    256 chat prompts, temperature 1, up to 64 new tokens, stop at <|end|>: generation.generate vs
            LlamaForCausalLM.generate(do_sample=True, top_k=0).
  memory    process RSS over 100 DPO steps of varying shapes, each side in a fresh process.

TRL's trainers themselves (datasets, accelerate, a Hugging Face tokenizer) are not driven: the losses are
computed on the same batches as TRL's trainers compute them, with TRL's own functions where it has them. The
losses and gradient norms of both sides are compared step for step (they start from the same weights and see the
same batches; the optimizers differ only in rounding). Timing (bench/clocks.py): each step's thread CPU time and
wall time, sides interleaved; the ratio uses the median CPU times, ± the bootstrap spread a rerun would show.
`--variant` times a changed copy of ours in the same rounds (one change, before/after in one run).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

from cs336_alignment.lm.checkpoint import SHIPPED_SFT, load_model
from cs336_alignment.lm.data import collate_chat
from cs336_alignment.dpo import dpo_loss, sequence_log_probs
from cs336_alignment.lm.generation import generate
from cs336_alignment.grpo_loss import policy_and_kl_backward
from cs336_alignment.bench.clocks import Rows, compare, interleave, load_average, matmul_peak_flops, timed
from cs336_alignment.logprobs import get_response_log_probs
from cs336_alignment.lm.nn_utils import clip_gradients
from cs336_alignment.sft_step import sft_microbatch_train_step
from cs336_alignment.world.tasks import generate_problems
from cs336_alignment.lm.tokenizer import load_tokenizer
from cs336_alignment.train.common import build_optimizer

BETA, CLIP, LR = 0.1, 0.2, 1e-4


def peers_missing() -> str | None:
    """None when transformers and TRL import, else the line saying what to install."""
    try:
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        return f"bench peers: skipped ({e.name} is not installed): pip install -e '.[peers]'"
    return None


def _rss_mib() -> float:
    """VmRSS of this process (MiB; 0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


class _Opt:  # the fields build_optimizer reads
    lr, beta1, beta2, weight_decay = LR, 0.9, 0.999, 0.0


# ---------------------------------------------------------------------------------------------------------
# The two sides: models, batches, steps
# ---------------------------------------------------------------------------------------------------------


def load_pair(ckpt: str, tmp: str, fast_kernels: bool = False):
    """(ours TransformerLM, peer LlamaForCausalLM, tokenizer), the same float32 weights."""
    from transformers import LlamaForCausalLM

    ours, _ = load_model(ckpt, "cpu")
    if fast_kernels:
        ours.use_fast_kernels()
    ours.save_pretrained(tmp, dtype=torch.float32)
    peer = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
    peer.config.use_cache = False
    return ours.train(), peer.train(), load_tokenizer(ours.config.tokenizer)


def chat_batch(tokenizer, chats: list[list[dict]], context: int) -> dict[str, torch.Tensor]:
    """Our loop's tensors (collate_chat) and the peer's: full rows (B, T+1), attention_mask, labels -100 off
    the assistant tokens (Hugging Face shifts labels inside the model)."""
    b = collate_chat(chats, tokenizer, max_length=context)
    full = torch.cat([b["input_ids"][:, :1], b["labels"]], dim=1)                        # (B, T+1)
    lengths = torch.tensor([min(len(tokenizer.render(c)[0]), context + 1) for c in chats])
    b["hf_input_ids"] = full
    b["hf_attention_mask"] = (torch.arange(full.shape[1])[None, :] < lengths[:, None]).long()
    labels = torch.full_like(full, -100)
    labels[:, 1:] = b["labels"].masked_fill(~b["response_mask"], -100)
    b["hf_labels"] = labels
    return b


def sft_chats(n: int, seed: int) -> list[list[dict]]:
    return [[{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}]
            for p in generate_problems(n, "train", seed)]


def pair_chats(n: int, seed: int, bad_answers: bool = True) -> list[list[dict]]:
    """2n chats: chosen (the gold answer) and rejected (its last line changed), alternating."""
    out = []
    for chat in sft_chats(n, seed):
        wrong = chat[1]["content"].rsplit("#### ", 1)
        rejected = [chat[0], {"role": "assistant", "content": f"{wrong[0]}#### {wrong[-1]}1"}]
        out += [chat, rejected]
    return out


# --variant NAME adds a third side, "ours+NAME": our model and loops with one setting changed, timed in the same
# rounds, so a change is measured before/after in one run (its ratio to "ours" and that ratio's spread).
VARIANTS = {"plain-logprobs": "get_response_log_probs(..., fused=False): the model's logits, selective_log_softmax",
            "fast-kernels": "TransformerLM.use_fast_kernels (F.silu, rsqrt)"}


class Side:
    """One side's model, optimizer and step functions; `last` holds the last step's (loss, grad_norm).

    Ours: `fused` is the log-prob path (the loops': fused), `old_forward` adds GRPO's old no-grad forward."""

    def __init__(self, name: str, model, params_opt):
        self.name, self.model, self.opt, self.last = name, model, params_opt, (0.0, 0.0)
        self.fused, self.old_forward = True, False

    def update(self, loss: torch.Tensor, clip=True) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.name != "peer":
            norm = clip_gradients(params, 1.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last = (float(loss.detach()), float(norm))


def make_sides(ours, peer, old_forward: bool, variant: str = ""):
    """[ours, peer] and, with a variant, "ours+variant" on a copy of our model (same weights)."""
    alt = copy.deepcopy(ours) if variant else None
    o = Side("ours", ours, build_optimizer(ours.parameters(), _Opt))
    p = Side("peer", peer, torch.optim.AdamW(peer.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0,
                                             fused=True))
    o.old_forward = old_forward
    if not variant:
        return [o, p]
    a = Side(f"ours+{variant}", alt, build_optimizer(alt.parameters(), _Opt))
    a.old_forward = old_forward
    if variant == "fast-kernels":
        alt.use_fast_kernels()
    else:
        a.fused = False
    return [o, p, a]


def fwd_bwd(side: Side, b: dict) -> None:
    ids, labels = b["input_ids"], b["labels"]
    logits = side.model(ids) if side.name != "peer" else side.model(input_ids=ids, use_cache=False).logits
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    loss.backward()
    side.model.zero_grad(set_to_none=True)
    side.last = (float(loss.detach()), 0.0)


def sft_step(side: Side, b: dict) -> None:
    if side.name != "peer":
        lp = get_response_log_probs(side.model, b["input_ids"], b["labels"],
                                    fused=side.fused)["log_probs"]
        n_tokens = int(b["response_mask"].sum())
        loss, _ = sft_microbatch_train_step(lp, b["response_mask"], 1, normalize_constant=n_tokens / len(lp))
    else:
        loss = side.model(input_ids=b["hf_input_ids"], attention_mask=b["hf_attention_mask"],
                          labels=b["hf_labels"], use_cache=False).loss
        loss.backward()
    side.update(loss)


def _peer_logps(model, b: dict) -> torch.Tensor:
    """TRL DPOTrainer: per-row summed log-probs of the labelled tokens (fused LM head)."""
    out = model(input_ids=b["hf_input_ids"], attention_mask=b["hf_attention_mask"], labels=b["hf_labels"],
                use_cache=False, fused_lm_head=True)
    seq_len = b["hf_input_ids"].shape[1] - 1
    return out.log_probs[:, -seq_len:].sum(dim=1)                                       # (2B,)


def dpo_step(side: Side, b: dict) -> None:
    if side.name != "peer":
        logps = sequence_log_probs(side.model, b["input_ids"], b["labels"], b["response_mask"])  # (2B,)
        loss, _ = dpo_loss(logps[0::2], logps[1::2], b["ref"][0::2], b["ref"][1::2], BETA)
    else:
        logps = _peer_logps(side.model, b)
        margin = (logps[0::2] - b["ref"][0::2]) - (logps[1::2] - b["ref"][1::2])
        loss = -F.logsigmoid(BETA * margin).mean()
    loss.backward()
    side.update(loss)


def grpo_step(side: Side, b: dict) -> None:
    mask, adv = b["response_mask"], b["advantages"]
    n_tokens = float(mask.sum())
    if side.name != "peer":
        old, fused = None, side.fused
        if side.old_forward:  # what the loop did before reusing the first pass (ratio exactly 1 either way)
            with torch.no_grad():
                old = get_response_log_probs(side.model, b["input_ids"], b["labels"], fused=fused)["log_probs"]
        out = get_response_log_probs(side.model, b["input_ids"], b["labels"], return_token_entropy=True,
                                     fused=fused)
        lp = out["log_probs"]
        info, _ = policy_and_kl_backward(lp, mask, 1.0, "grpo", weights=adv[:, None],
                                         old_log_probs=lp.detach() if old is None else old, cliprange=CLIP,
                                         loss_normalization="constant", normalization_constant=n_tokens)
        side.update(info["loss/policy"])
        return
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    logits = side.model(input_ids=b["hf_input_ids"], attention_mask=b["hf_attention_mask"],
                        use_cache=False).logits[:, :-1]                               # (B, T, V)
    lp = selective_log_softmax(logits, b["labels"])                                     # (B, T)
    with torch.no_grad():
        entropy_from_logits(logits)  # TRL computes the entropies for its metrics (compute_entropy=True)
    coef_1 = torch.exp(lp - lp.detach())
    coef_2 = torch.clamp(coef_1, 1 - CLIP, 1 + CLIP)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    loss = (per_token * mask).sum() / n_tokens                                         # "dapo" normalisation
    loss.backward()
    side.update(loss)


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------


def sampling(models: dict, tokenizer, n_prompts: int, new_tokens: int, repeats: int) -> dict:
    """CPU and wall seconds to sample n_prompts responses, ours vs generate (both batched, temperature 1).

    models: {"ours": TransformerLM, "peer": LlamaForCausalLM} and optionally "ours+variant" (another ours)."""
    context = models["ours"].config.context_length
    prompts = [tokenizer.prompt_ids(p["question"]) for p in generate_problems(4 * n_prompts, "test", 0)]
    prompts = [p for p in prompts if len(p) + new_tokens <= context][:n_prompts]  # room to end
    end, pad = tokenizer.end_of_turn_id, tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as generate expects
        ids[i, width - len(p):], attn[i, width - len(p):] = torch.tensor(p), 1
    times, new = {name: [] for name in models}, {name: 0 for name in models}

    def run(name: str, r: int) -> None:
        torch.manual_seed(r)
        if name != "peer":
            out = generate(models[name], prompts, max_new_tokens=new_tokens, temperature=1.0, eos_token_id=end,
                           pad_token_id=pad, generator=torch.Generator().manual_seed(r))
            new[name] = sum(len(t) for t in out.tokens)
            return
        with torch.no_grad():
            out = models[name].generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0,
                                        top_k=0, top_p=1.0, max_new_tokens=new_tokens, eos_token_id=end,
                                        pad_token_id=pad, use_cache=True)
        gen = out[:, width:]
        stopped = (gen == end).long().cumsum(-1)
        new[name] = int(((stopped == 0) | ((stopped == 1) & (gen == end))).sum())

    names = list(models)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(timed(lambda: run(name, r)))
    return dict(compare("sample", times), tokens=new)


# ---------------------------------------------------------------------------------------------------------
# Memory over DPO steps (fresh process per side)
# ---------------------------------------------------------------------------------------------------------


def dpo_memory_worker(spec: dict) -> dict:
    """`steps` DPO steps of varying shapes on one side; RSS (MiB) after each step."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ours, peer, tok = load_pair(spec["ckpt"], tmp)
    model = ours if spec["side"] == "ours" else peer
    if model is peer:
        from trl.trainer.utils import add_fused_lm_head
        add_fused_lm_head(peer)
    side = make_sides(ours, peer, False)[0 if spec["side"] == "ours" else 1]
    context = ours.config.context_length
    del ours, peer, model
    chats = pair_chats(spec["pairs"] * 4, 1)
    rss = []
    for step in range(spec["steps"]):
        k = spec["pairs"] // 2 + step % (spec["pairs"] // 2 + 1)  # 8..16 pairs: the shapes vary
        start = (step * spec["pairs"]) % (len(chats) // 2 - k)
        b = chat_batch(tok, chats[2 * start: 2 * (start + k)], context)
        b["ref"] = torch.zeros(2 * k)
        dpo_step(side, b)
        rss.append(_rss_mib())
    return {"rss_mib": rss}


def _fresh(spec: dict) -> dict:
    code = ("import json, sys; from cs336_alignment.bench.peers import dpo_memory_worker; "
            "print('RESULT', json.dumps(dpo_memory_worker(json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------------------


def bench_peers(args: argparse.Namespace) -> int:
    """Print ours/peer time ratios for fwd+bwd, SFT, DPO and GRPO steps and sampling, and DPO memory."""
    missing = peers_missing()
    if missing:
        print(missing)
        return 0
    import transformers
    import trl
    from trl.trainer.utils import add_fused_lm_head

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours, peer, tok = load_pair(args.ckpt, tmp, args.fast_kernels)
    add_fused_lm_head(peer)  # TRL's DPO forward; without fused_lm_head=True the forward is the original one
    context, variant = ours.config.context_length, args.variant
    print(f"bench peers: {ours.num_params() / 1e6:.2f}M params ({args.ckpt}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}, 1 thread, batch {args.batch_size}, "
          f"{args.repeats} interleaved steps per side; ratio = median thread CPU time ours / peer (< 1: ours "
          f"faster), ± its bootstrap sd (the spread a rerun would show); wall = the same by wall clock; load "
          f"average {load_average()}" + ("; ours with use_fast_kernels" if args.fast_kernels else "")
          + (f"; ours+{variant}: {VARIANTS[variant]}" if variant else ""))
    rows = Rows()
    sft_batches = [chat_batch(tok, sft_chats(args.batch_size * 4, 0)[i::4], context) for i in range(4)]
    sides = make_sides(ours, peer, args.old_forward, variant)
    rows.append(interleave("fwd+bwd", sides, fwd_bwd, sft_batches, args.repeats))
    rows.append(interleave("sft", sides, sft_step, sft_batches, args.repeats))

    pairs = pair_chats(args.batch_size // 2 * 4, 1)
    dpo_batches = []
    for i in range(4):
        b = chat_batch(tok, pairs[i * args.batch_size: (i + 1) * args.batch_size], context)
        with torch.no_grad():  # the frozen reference = the starting weights
            b["ref"] = sequence_log_probs(ours, b["input_ids"], b["labels"], b["response_mask"])
        dpo_batches.append(b)
    sides = make_sides(*load_pair_again(args.ckpt, args.fast_kernels), args.old_forward, variant)
    rows.append(interleave("dpo", sides, dpo_step, dpo_batches, args.repeats))

    g = torch.Generator().manual_seed(2)
    grpo_batches = []
    for i in range(4):
        b = chat_batch(tok, sft_chats(args.batch_size * 4, 3)[i::4], context)
        b["advantages"] = torch.randn(len(b["input_ids"]), generator=g)
        grpo_batches.append(b)
    sides = make_sides(*load_pair_again(args.ckpt, args.fast_kernels), args.old_forward, variant)
    rows.append(interleave("grpo", sides, grpo_step, grpo_batches, args.repeats))
    sides = make_sides(*load_pair_again(args.ckpt, args.fast_kernels), False, variant)
    rows.append(sampling({s.name: s.model.eval() for s in sides}, tok, args.prompts, args.new_tokens,
                         max(2, args.repeats // 4)))

    peak = matmul_peak_flops()
    flops, done = (statistics.mean(sft_flops(ours, b, tok.pad_token_id, pad) for b in sft_batches) for pad in (0, 1))
    sft = next(r for r in rows if r["name"] == "sft")
    print(f"SFT reaches {flops / sft['ours_cpu_s'] / peak:.0%} of the 1-thread float32 matmul peak by CPU time "
          f"({peak / 1e9:.0f} GFLOP/s on 1024^3, best of 5; {flops / 1e9:.2f} GFLOP/step: per real token "
          f"6 N + 12 L d T, N without the input embedding, T the row's length, PaLM appendix B); counting the "
          f"padded positions the kernels compute ({done / 1e9:.2f} GFLOP/step): {done / sft['ours_cpu_s'] / peak:.0%}"
          f"; load average {load_average()}")
    if args.memory_steps:
        mem = {side: _fresh({"side": side, "ckpt": args.ckpt, "steps": args.memory_steps, "pairs": 16})["rss_mib"]
               for side in ("ours", "peer")}
        marks = sorted({1, 10, args.memory_steps // 2, args.memory_steps} - {0})
        print(f"DPO process RSS (MiB) over {args.memory_steps} steps of 8-16 pairs, fresh process each:")
        for side, rss in mem.items():
            cells = ", ".join(f"step {m}: {rss[m - 1]:.0f}" for m in marks if m <= len(rss))
            print(f"  {side:<5} {cells}; growth after step 10: {rss[-1] - rss[min(9, len(rss) - 1)]:+.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def sft_flops(model, b: dict, pad_token_id: int, padded: bool = False) -> float:
    """Training FLOPs of one SFT batch: sum over rows of n_i (6 N + 12 L d n_i) (PaLM appendix B, with the row's
    own length n_i as the attention span; N = parameters without the input embedding table). n_i counts the real
    tokens, or with padded=True the batch's padded width (what the kernels compute, padding included)."""
    c, n = model.config, model.num_params(include_embeddings=False)
    lengths = (b["input_ids"] != pad_token_id).sum(dim=1).double()  # (B,)
    if padded:
        lengths = torch.full_like(lengths, b["input_ids"].shape[1])
    return float((lengths * (6 * n + 12 * c.num_layers * c.d_model * lengths)).sum())


def load_pair_again(ckpt: str, fast_kernels: bool = False):
    """A fresh (ours, peer) pair from the checkpoint: each step kind starts from the same weights."""
    from trl.trainer.utils import add_fused_lm_head

    with tempfile.TemporaryDirectory() as tmp:
        ours, peer, _ = load_pair(ckpt, tmp, fast_kernels)
    add_fused_lm_head(peer)
    return ours, peer


def add_parser(sub) -> None:
    """The `bench peers` subcommand."""
    p = sub.add_parser("peers", help="ours vs transformers + TRL (optional extra): steps, sampling, DPO memory")
    p.add_argument("--ckpt", default=str(SHIPPED_SFT), help="checkpoint both sides start from")
    p.add_argument("--batch-size", type=int, default=32, help="rows per step (DPO: 2 rows per pair)")
    p.add_argument("--repeats", type=int, default=16, help="timed steps per side (median; sampling: a quarter)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--memory-steps", type=int, default=100, help="DPO steps of the memory check (0 = skip)")
    p.add_argument("--old-forward", action="store_true",
                   help="GRPO: also run the no-grad forward for old log-probs (the loop before it reused the first pass)")
    p.add_argument("--fast-kernels", action="store_true",
                   help="ours with TransformerLM.use_fast_kernels (F.silu, rsqrt: other float rounding; off by default)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="",
                   help="also time ours with one setting changed, in the same rounds: " + "; ".join(
                       f"{k}: {v}" for k, v in VARIANTS.items()))
    p.add_argument("--json", default="", help="also write the rows here")
    p.set_defaults(func=bench_peers)
