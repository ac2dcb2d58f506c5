"""Per-token log-probabilities and entropies of a causal LM's next-token distribution.

Every post-training loss starts here: SFT's NLL, the PPO/GRPO ratio, DPO's implicit reward and the KL to a
reference all need log pi(y_t | y_<t) of the response tokens, and entropy bonuses need H(pi(. | y_<t)).

  * Oracles written the obvious way (naive_log_probs, naive_entropy, naive_linear_log_probs), for the tests.
  * compute_entropy and get_response_log_probs (Stanford CS336 assignment 5; graded).
  * selective_log_softmax: log-probs of the labels from given logits, chunked over rows.
  * fused_linear_log_probs: log-probs (and entropy) straight from the final hidden states and the LM-head
    weight, never holding the (N, V) logits: a torch.autograd.Function that works on (vocab tile × row chunk)
    blocks of logits, combines them with an online log-sum-exp (Milakov & Gimelshein 2018, "Online normalizer
    calculation for softmax", https://arxiv.org/abs/1805.02867), and recomputes each block in backward
    (gradient checkpointing, Chen et al. 2016, https://arxiv.org/abs/1604.06174). The same idea as "Cut Your
    Losses in Large-Vocabulary Language Models" (Wijmans et al. 2024, https://arxiv.org/abs/2411.09009),
    written in plain torch.

Why: at N = 8192 tokens and V = 50257 one float32 copy of the logits is 1.6 GB, and naive log-softmax +
gather keeps about three of them alive in backward, while the inputs' gradients need 0.18 GB (d = 768).
`python -m cs336_alignment bench logprobs` measures the difference.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# Default block of logits processed at once by fused_linear_log_probs: 512 token rows × 4096 vocabulary
# entries = 8 MiB in float32 (two such buffers with the entropy). Chosen by measurement: see the chunk-size
# note in fused_linear_log_probs.
DEFAULT_CHUNK_SIZE = 512
DEFAULT_VOCAB_CHUNK_SIZE = 4096
# selective_log_softmax handles as many rows at once as fit in this many logits (16 MB in float32).
SELECTIVE_CHUNK_ELEMENTS = 1 << 22


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 inputs, float64 for float64 (so gradcheck runs in double precision)."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Oracles: the obvious way, materialising every (..., V) tensor
# ---------------------------------------------------------------------------------------------------------

def naive_log_probs(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] via the full log-softmax. logits (..., V), labels (...) long -> (...) float32+."""
    all_log_probs = torch.log_softmax(logits.to(_accumulation_dtype(logits.dtype)), dim=-1)  # (..., V)
    return all_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)


def naive_entropy(logits: Tensor) -> Tensor:
    """-sum_v p_v log p_v with p = softmax(logits), the textbook formula. (..., V) -> (...) nats.

    Not stable: where a probability underflows to 0 (logit gaps above ~100 in float32) it gives
    0 * log 0 = NaN. compute_entropy is the stable version.
    """
    p = torch.softmax(logits.to(_accumulation_dtype(logits.dtype)), dim=-1)  # (..., V)
    return -(p * torch.log(p)).sum(dim=-1)


def naive_linear_log_probs(hidden: Tensor, weight: Tensor, labels: Tensor, *, temperature: float = 1.0,
                           return_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """What fused_linear_log_probs computes, written the obvious way: logits = hidden @ weight.T / temperature.

    hidden (..., d), weight (V, d), labels (...) -> log-probs (...) [, entropy (...)], float32 (float64 for
    float64 inputs). Holds the (..., V) logits, their log-softmax and, in backward, their gradients.
    """
    logits = (hidden @ weight.T).to(_accumulation_dtype(hidden.dtype)) / temperature  # (..., V)
    all_log_probs = torch.log_softmax(logits, dim=-1)  # (..., V)
    log_probs = all_log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (...)
    if not return_entropy:
        return log_probs
    return log_probs, -(all_log_probs.exp() * all_log_probs).sum(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# CS336 assignment 5: entropy and response log-probs (graded)
# ---------------------------------------------------------------------------------------------------------

def compute_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution softmax(logits), stable for huge logits.

    H(p) = -sum_v p_v log p_v with log p = z - logsumexp(z) (CS336 assignment 5, §4.2). Shifting z by its max
    first keeps every intermediate small, so huge logits lose no precision.

    Args:
        logits: (..., V) finite float logits.
    Returns:
        (...) entropy in nats, float32 (float64 for float64 logits); differentiable.
    """
    # BEGIN SOLUTION
    logits = logits.to(_accumulation_dtype(logits.dtype))
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # (..., V) <= 0: exp cannot overflow
    log_p = shifted - torch.logsumexp(shifted, dim=-1, keepdim=True)  # (..., V) log-softmax, small numbers only
    return -(torch.exp(log_p) * log_p).sum(dim=-1)  # (...), an underflowed p contributes 0 · finite = 0
    # END SOLUTION


def _accepts_return_hidden(model: nn.Module) -> bool:
    """True for our TransformerLM: it has an lm_head and forward(..., return_hidden=True)."""
    if not hasattr(model, "lm_head"):
        return False
    return "return_hidden" in inspect.signature(model.forward).parameters


def get_response_log_probs(model: nn.Module, input_ids: Tensor, labels: Tensor, return_token_entropy: bool = False,
                           *, temperature: float = 1.0, fused: bool = True) -> dict[str, Tensor]:
    """Per-token log pi(labels[b, t] | input_ids[b, :t+1]) and optionally the entropy of pi(. | ...).

    CS336 assignment 5 (§4.2) semantics: nothing is masked here; the losses mask prompt and padding tokens.
    The switch `fused` (on by default, used by every training loop) picks how the log-softmax is done:

      * fused=True and a model with `lm_head` that accepts `return_hidden=True` (our TransformerLM): the model
        returns final hidden states (B, T, d) and fused_linear_log_probs applies the head block by block, so
        the (B, T, V) logits never exist at once (same values, far less memory).
      * otherwise: logits = model(input_ids) (its `.logits` if it returns an object, as Hugging Face models
        do), then selective_log_softmax and compute_entropy.

    Args:
        model: causal LM.  input_ids, labels: (B, T) long, labels = input_ids shifted left by one.
        return_token_entropy: also return the entropy of each next-token distribution.
        temperature: > 0; the distribution is softmax(logits / temperature) (match the sampler's).
        fused: use the memory-efficient kernel when the model allows it.
    Returns:
        {"log_probs": (B, T)} and, if asked, {"token_entropy": (B, T)}; float32 (float64 for a float64
        model), nats, differentiable w.r.t. the model's parameters.
    Raises:
        ValueError: if input_ids and labels differ in shape or temperature <= 0.
    """
    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ in shape")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # BEGIN SOLUTION
    if fused and _accepts_return_hidden(model):
        hidden = model(input_ids, return_hidden=True)  # (B, T, d), lm_head not applied
        out = fused_linear_log_probs(hidden, model.lm_head.weight, labels, temperature=temperature,
                                     return_entropy=return_token_entropy)
        log_probs, entropy = out if return_token_entropy else (out, None)
    else:
        output = model(input_ids)
        logits = getattr(output, "logits", output)  # (B, T, V)
        log_probs = selective_log_softmax(logits, labels, temperature=temperature)  # (B, T)
        entropy = compute_entropy(logits / temperature) if return_token_entropy else None
    result = {"log_probs": log_probs}
    if return_token_entropy:
        result["token_entropy"] = entropy  # (B, T)
    return result
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------
# selective_log_softmax: from given logits, one row chunk at a time
# ---------------------------------------------------------------------------------------------------------

class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_probs[i] = z[i, y_i] - logsumexp(z[i]) with z = logits / temperature; logits (N, V), labels (N,)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, rows: int) -> Tensor:
        N = logits.shape[0]
        acc = _accumulation_dtype(logits.dtype)
        log_z = torch.empty(N, dtype=acc, device=logits.device)  # (N,)
        log_probs = torch.empty(N, dtype=acc, device=logits.device)  # (N,)
        for r in range(0, N, rows):
            z = logits[r:r + rows].to(acc, copy=True).div_(temperature)  # (n, V), the only V-sized temporary
            z_y = z.gather(1, labels[r:r + rows, None]).squeeze(1)  # (n,)
            m = z.amax(dim=1)  # (n,) subtract the max so exp cannot overflow
            log_z[r:r + rows] = m + z.sub_(m[:, None]).exp_().sum(dim=1).log()
            log_probs[r:r + rows] = z_y - log_z[r:r + rows]
            del z  # free this chunk before the next one is allocated
        ctx.save_for_backward(logits, labels, log_z)  # logits is an input: saving it costs nothing
        ctx.temperature, ctx.rows = temperature, rows
        return log_probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, labels, log_z = ctx.saved_tensors
        acc, t, rows = log_z.dtype, ctx.temperature, ctx.rows
        grad = torch.empty_like(logits)  # (N, V): the gradient itself, the one unavoidable (N, V) buffer
        for r in range(0, logits.shape[0], rows):
            g = grad_out[r:r + rows, None].to(acc)  # (n, 1)
            z = logits[r:r + rows].to(acc, copy=True).div_(t)  # (n, V)
            p = z.sub_(log_z[r:r + rows, None]).exp_()  # (n, V) softmax, in place
            dz = p.mul_(-g).scatter_add_(1, labels[r:r + rows, None], g)  # d log p_y / dz = onehot(y) - p
            grad[r:r + rows] = dz.div_(t)
            del z, p, dz
        return grad, None, None, None


def selective_log_softmax(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[..., label] without a second (..., V) buffer.

    Equivalent to `naive_log_probs(logits / temperature, labels)` (log_softmax then gather), but the
    log-sum-exp is taken a few rows at a time, so only the gradient (in backward) is logits-sized.
    Pass logits whose leading dims flatten without a copy (e.g. contiguous) to keep it that way.

    Args:
        logits: (..., V) float (bf16 is upcast chunk by chunk).  labels: (...) long in [0, V).
        temperature: > 0.
    Returns:
        (...) float32 (float64 for float64 logits) log-probs in nats; differentiable w.r.t. logits.
    Raises:
        ValueError: on mismatched shapes or temperature <= 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    V = logits.shape[-1]
    rows = max(1, SELECTIVE_CHUNK_ELEMENTS // max(V, 1))
    flat = _SelectiveLogSoftmax.apply(logits.reshape(-1, V), labels.reshape(-1), float(temperature), rows)
    return flat.view(labels.shape)


# ---------------------------------------------------------------------------------------------------------
# fused_linear_log_probs: from hidden states and the LM-head weight, one block of logits at a time
# ---------------------------------------------------------------------------------------------------------

def _block_logits(weight: Tensor, v0: int, vocab_chunk: int, h_scaled: Tensor, acc: torch.dtype) -> Tensor:
    """z[v, i] = weight[v0 + v] · h_scaled[i]: a (v, n) block of logits, transposed, in the accumulation dtype.

    Why transposed: on CPU the GEMM `weight_tile @ h.T` ran 1.3-1.9x faster than `h @ weight_tile.T` (the
    layout of F.linear) at these shapes (measured), and every later step reduces over dim 0 just as easily.
    """
    return (weight[v0:v0 + vocab_chunk] @ h_scaled.T).to(acc)  # (v, n)


def _block_stats(z: Tensor, y_local: Tensor, with_entropy: bool):
    """Summaries of one (v, n) logit block, relative to its own column max m (z is overwritten).

    Returns m (n,), s = sum_v e^(z-m), t = sum_v e^(z-m) (z-m) (entropy only, else None), and z_y (n,): the
    label's logit where the label falls in this block, else 0.
    """
    v = z.shape[0]
    in_block = (y_local >= 0) & (y_local < v)  # (n,)
    z_y = z.gather(0, y_local.clamp(0, v - 1)[None]).squeeze(0) * in_block  # (n,)
    m = z.amax(dim=0)  # (n,)
    a = z.sub_(m)  # (v, n) z - m <= 0, in place
    if not with_entropy:
        return m, a.exp_().sum(dim=0), None, z_y
    e = a.exp()  # (v, n): the second buffer the entropy costs
    return m, e.sum(dim=0), e.mul_(a).sum(dim=0), z_y


def _merge_stats(x, y):
    """Combine two blocks' (m, s, t, z_y) over disjoint vocabulary ranges (online softmax)."""
    m1, s1, t1, zy1 = x
    m2, s2, t2, zy2 = y
    m = torch.maximum(m1, m2)
    d1, d2 = m1 - m, m2 - m  # <= 0
    c1, c2 = d1.exp(), d2.exp()
    # t is relative to m: sum e^(z-m)(z-m) = e^(m1-m) * (t1 + (m1-m) s1) for block 1, and likewise block 2
    t = None if t1 is None else c1 * (t1 + d1 * s1) + c2 * (t2 + d2 * s2)
    return m, c1 * s1 + c2 * s2, t, zy1 + zy2


def _fused_forward(hidden, weight, labels, temperature, with_entropy, chunk, vocab_chunk):
    """Per row: log Z (N,), log p(label) (N,) and, with_entropy, H (N,) (else None), block by block."""
    (N, _), V = hidden.shape, weight.shape[0]
    acc = _accumulation_dtype(hidden.dtype)
    log_z = torch.empty(N, dtype=acc, device=hidden.device)  # (N,) log-sum-exp of each row's logits
    log_probs = torch.empty(N, dtype=acc, device=hidden.device)  # (N,)
    entropy = torch.empty(N, dtype=acc, device=hidden.device) if with_entropy else None  # (N,)
    for r in range(0, N, chunk):
        h = hidden[r:r + chunk] / temperature  # (n, d)
        y = labels[r:r + chunk]  # (n,)
        stats = None
        for v0 in range(0, V, vocab_chunk):
            block = _block_stats(_block_logits(weight, v0, vocab_chunk, h, acc), y - v0, with_entropy)
            stats = block if stats is None else _merge_stats(stats, block)
        m, s, t, z_y = stats
        log_z[r:r + chunk] = m + s.log()
        log_probs[r:r + chunk] = z_y - log_z[r:r + chunk]
        if with_entropy:
            entropy[r:r + chunk] = s.log() - t / s  # H = log Z - E_p[z], both relative to m
    return log_z, log_probs, entropy


def _fused_backward(hidden, weight, labels, log_z, entropy, g_all, g_entropy, temperature, chunk, vocab_chunk,
                    need_h, need_w):
    """grad_h (N, d) and grad_W (V, d) (None where not needed), recomputing every block of logits.

    g_all (N,) is the upstream gradient of the log-probs, g_entropy (N,) that of the entropy (or None).
    """
    (N, _), V, acc = hidden.shape, weight.shape[0], log_z.dtype
    grad_h = torch.empty_like(hidden) if need_h else None  # (N, d)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # (V, d)
    for r in range(0, N, chunk):
        h = hidden[r:r + chunk] / temperature  # (n, d), exactly as in forward
        y, g = labels[r:r + chunk], g_all[r:r + chunk]  # (n,), (n,)
        gh = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None  # (n, d)
        for v0 in range(0, V, vocab_chunk):
            log_p = _block_logits(weight, v0, vocab_chunk, h, acc).sub_(log_z[r:r + chunk])  # (v, n)
            if g_entropy is not None:
                p = log_p.exp()  # (v, n)
                g_h = g_entropy[r:r + chunk]  # (n,)
                dz = log_p.add_(entropy[r:r + chunk]).mul_(g_h).add_(g).mul_(p).neg_()  # -p(g + g_H(log p + H))
                del p
            else:
                dz = log_p.exp_().mul_(-g)  # -p g
            y_local = y - v0
            in_block = (y_local >= 0) & (y_local < dz.shape[0])
            dz.scatter_add_(0, y_local.clamp(0, dz.shape[0] - 1)[None], (g * in_block)[None])  # + onehot(y) g
            if need_h:
                gh += dz.to(weight.dtype).T @ weight[v0:v0 + vocab_chunk]  # (n, d)
            if need_w:
                grad_w[v0:v0 + vocab_chunk].addmm_(dz, h.to(acc))  # (v, d), in place: no (v, d) temporary
            del log_p, dz  # free this block before the next one is allocated
        if need_h:
            grad_h[r:r + chunk] = gh / temperature
    return grad_h, (grad_w.to(weight.dtype) if need_w else None)


class _FusedLinearLogProbs(torch.autograd.Function):
    """log p(y_i) and H_i of softmax(W h_i / temperature); hidden (N, d), weight (V, d), labels (N,) valid ids.

    Forward keeps per row only log Z (and H); backward recomputes each block of logits and uses
        d log p_y / dz = onehot(y) - p          dH / dz = -p (log p + H)
    so dz = onehot(y) g - p (g + g_H (log p + H)) for upstream gradients g (log-probs) and g_H (entropy),
    then grad_h = W^T dz / temperature and grad_W = dz h^T / temperature, accumulated block by block.
    Autocast is off inside: the blocks must be computed identically in forward and backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, with_entropy, chunk, vocab_chunk):
        with torch.autocast(hidden.device.type, enabled=False):
            log_z, log_probs, entropy = _fused_forward(hidden, weight, labels, temperature, with_entropy, chunk,
                                                       vocab_chunk)
        ctx.save_for_backward(hidden, weight, labels, log_z, entropy)
        ctx.temperature, ctx.chunk, ctx.vocab_chunk = temperature, chunk, vocab_chunk
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return log_probs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_probs, grad_entropy):
        hidden, weight, labels, log_z, entropy = ctx.saved_tensors
        g = torch.zeros_like(log_z) if grad_log_probs is None else grad_log_probs.to(log_z.dtype)  # (N,)
        g_entropy = None if grad_entropy is None else grad_entropy.to(log_z.dtype)  # (N,)
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = _fused_backward(hidden, weight, labels, log_z, entropy, g, g_entropy, ctx.temperature,
                                             ctx.chunk, ctx.vocab_chunk, *ctx.needs_input_grad[:2])
        return grad_h, grad_w, None, None, None, None, None


def fused_linear_log_probs(hidden: Tensor, weight: Tensor, labels: Tensor, *, temperature: float = 1.0,
                           return_entropy: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                           vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
                           ignore_index: int = -100) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs (and entropy) of softmax(hidden @ weight.T / temperature) without materialising the logits.

    Equivalent to `naive_linear_log_probs` (and so to log_softmax(F.linear(hidden, weight) / T).gather(...)),
    with gradients for hidden and weight from both outputs. It works on blocks of chunk_size token rows ×
    vocab_chunk_size vocabulary entries; backward recomputes each block. Saved for backward: hidden, weight,
    labels, the per-token log-sum-exp (and entropy), i.e. O(N) beyond the inputs. Peak memory beyond the
    inputs, gradients and outputs is one block of logits (two with the entropy): 8 (16) MiB at the defaults.

    Block size, measured (float32, V = 50257, d ∈ {256, 768}, N = 2048, with and without entropy, CPU time on
    one thread of a shared 2-core CPU, blocks of 0.5M-8M logits with 128-2048 rows): blocks of 1M-2M logits
    ran at 0.55-0.8x naive's time, 4M-logit blocks were up to 15% slower at d = 256 (cache misses), whole-
    vocabulary rows (256 × 50257) slower still; the row count mattered little (more rows = fewer passes over
    W). Hence 512 × 4096. Precision: bf16/fp16 inputs multiply in their own dtype (as F.linear does) and each
    block is upcast at once, so softmax sums and gradients accumulate in float32.

    Args:
        hidden: (..., d) final hidden states (float32, bf16, fp16 or float64).
        weight: (V, d) LM-head weight (cast to hidden's dtype if it differs).
        labels: (...) long token ids in [0, V), or ignore_index.
        temperature: > 0, divides the logits.
        return_entropy: also return H(softmax(logits / temperature)) per position.
        chunk_size, vocab_chunk_size: block shape (token rows, vocabulary entries), both >= 1.
        ignore_index: positions with this label get log-prob 0 and entropy 0, and no gradient.
    Returns:
        log_probs (...) and, with return_entropy, (log_probs, entropy) (...); float32 (float64 for float64
        inputs), nats.
    Raises:
        ValueError: on mismatched shapes, labels out of range, temperature <= 0 or chunk sizes < 1.
    """
    d, V = hidden.shape[-1], weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(f"weight {tuple(weight.shape)} should be (V, {d})")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not match")
    if temperature <= 0 or chunk_size < 1 or vocab_chunk_size < 1:
        raise ValueError("need temperature > 0, chunk_size >= 1 and vocab_chunk_size >= 1")
    # Under autocast the hidden states can be bf16 while the head is float32: multiply in hidden's dtype, as
    # autocast's F.linear would (the cast is differentiable; weight's gradient comes back in its own dtype).
    weight = weight.to(hidden.dtype)
    h, y = hidden.reshape(-1, d), labels.reshape(-1)  # (N, d), (N,)
    keep = y != ignore_index  # (N,)
    all_kept = bool(keep.all())
    if not all_kept:  # drop ignored rows: they cost nothing and get no gradient
        h, y = h[keep], y[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= V):
        raise ValueError(f"labels must lie in [0, {V}) or equal ignore_index={ignore_index}")
    log_probs, entropy = _FusedLinearLogProbs.apply(h, weight, y, float(temperature), return_entropy,
                                                    chunk_size, vocab_chunk_size)
    outputs = [log_probs, entropy] if return_entropy else [log_probs]
    if not all_kept:  # scatter back; ignored positions are 0
        outputs = [torch.zeros(keep.shape, dtype=o.dtype, device=o.device).masked_scatter(keep, o) for o in outputs]
    outputs = [o.view(labels.shape) for o in outputs]
    return tuple(outputs) if return_entropy else outputs[0]
