"""LoRA (Hu et al. 2021): the wrapped model starts identical, only the adapters train, merging changes nothing,
an adapter-only checkpoint reproduces the model, and the gradient of B at init has its closed form."""
from __future__ import annotations

import copy

import pytest
import torch

from cs336_alignment.lm.lora import (LoRALinear, adapters_disabled, apply_lora, count_parameters, load_adapters,
                                  lora_parameters, merge_lora, save_adapters)
from cs336_alignment.lm.model import Linear, TransformerConfig, TransformerLM

CONFIG = TransformerConfig(vocab_size=64, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)
ALL = ("q", "k", "v", "o", "w1", "w2", "w3")


def tiny_lm(seed: int = 0, dtype=torch.float32) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(CONFIG).to(dtype)


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (3, 16), generator=torch.Generator().manual_seed(seed))


def train_adapters(model: TransformerLM, steps: int = 5) -> None:
    """A few AdamW steps of next-token loss on the adapters alone (B moves away from 0)."""
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    x = ids(2)
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_wrapped_model_starts_identical():
    base = tiny_lm()
    model = copy.deepcopy(base)
    wrapped = apply_lora(model, rank=4, alpha=8, targets=ALL)
    assert len(wrapped) == 7 * CONFIG.num_layers
    assert torch.equal(model(ids()), base(ids())), "B = 0: the adapters add exactly nothing at init"
    assert isinstance(model.layers[0].attn.q_proj, LoRALinear) and isinstance(model.lm_head, Linear)


def test_only_the_adapters_train():
    model = tiny_lm()
    apply_lora(model, rank=4, alpha=8, targets=("q", "v", "w2"))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}
    trainable, total = count_parameters(model)
    d, r, ff = CONFIG.d_model, 4, CONFIG.d_ff
    assert trainable == CONFIG.num_layers * (2 * r * (d + d) + r * (ff + d)), "r (in + out) per wrapped layer"
    model(ids()).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    train_adapters(model)
    optimizer = torch.optim.AdamW(lora_parameters(model))
    model(ids()).sum().backward()
    optimizer.step()
    assert len(optimizer.state) == 2 * 3 * CONFIG.num_layers, "optimizer state for the adapters only"
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if "lora_" not in name)


def test_gradient_of_B_at_init_is_the_closed_form():
    """With B = 0, y = x W^T + s (x A^T) B^T, so for L = sum(G * y): dL/dB = s * G^T (x A^T) and dL/dA = 0."""
    torch.manual_seed(0)
    base = Linear(6, 5, dtype=torch.float64)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    g = torch.randn(4, 7, 5, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    xa = x.reshape(-1, 6) @ layer.lora_A.detach().T                          # (N, r)
    expected = 2.0 * g.reshape(-1, 5).T @ xa                                  # s = alpha / r = 2
    torch.testing.assert_close(layer.lora_B.grad, expected, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(layer.lora_A.grad) == 0


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = LoRALinear(Linear(5, 4, dtype=torch.float64), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: layer(x), (x, layer.lora_A, layer.lora_B))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_merge_equals_unmerged(dtype, tol):
    model = tiny_lm(dtype=dtype)
    apply_lora(model, rank=4, alpha=16, targets=ALL)
    train_adapters(model)
    with torch.no_grad():
        unmerged = model(ids())
    keys = set(tiny_lm().state_dict())
    merge_lora(model)
    with torch.no_grad():
        merged = model(ids())
    assert (merged - unmerged).abs().max() <= tol * max(1.0, unmerged.abs().max().item())
    assert set(model.state_dict()) == keys, "a merged model has exactly the base model's keys"
    reloaded = tiny_lm(seed=5, dtype=dtype)
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded(ids()), merged), "the merged weights are an ordinary checkpoint"


def test_adapter_checkpoint_reloads_onto_the_base(tmp_path):
    base = tiny_lm()
    model = copy.deepcopy(base)
    apply_lora(model, rank=2, alpha=4, targets=("q", "k", "w1"))
    train_adapters(model)
    save_adapters(model, tmp_path / "adapter.pt")
    size = (tmp_path / "adapter.pt").stat().st_size
    assert size < sum(p.numel() * 4 for p in base.parameters()) / 5, "adapters only, not the model"
    fresh = load_adapters(tmp_path / "adapter.pt", copy.deepcopy(base))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids()), model(ids()), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a LoRA adapter checkpoint"):
        torch.save({"model": {}, "extra": {}}, tmp_path / "other.pt")
        load_adapters(tmp_path / "other.pt", copy.deepcopy(base))


def test_adapters_disabled_is_the_base_model():
    base = tiny_lm()
    model = copy.deepcopy(base)
    apply_lora(model, rank=4, alpha=8, targets=ALL)
    train_adapters(model)
    with torch.no_grad(), adapters_disabled(model):
        assert torch.equal(model(ids()), base(ids())), "the reference policy without a second copy of the weights"
    with torch.no_grad():
        assert not torch.equal(model(ids()), base(ids())), "and the adapters back on after the block"


def test_bad_arguments():
    with pytest.raises(ValueError, match="lora-targets"):
        apply_lora(tiny_lm(), rank=2, alpha=2, targets=("qq",))
    with pytest.raises(ValueError, match="rank >= 1"):
        LoRALinear(Linear(3, 3), rank=0, alpha=1)
