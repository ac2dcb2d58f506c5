"""Checkpoints: round trip, exact resumption, atomic writes, weights_only safety, RNG state, and one clear line for
every file that cannot be used (unreadable, foreign, another shape, nothing to resume from)."""
from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch

from cs336_alignment.lm.checkpoint import (CheckpointError, check_resumable, load_checkpoint, load_checkpoint_extra,
                                        load_model, read_checkpoint, rng_state, save_checkpoint, set_rng_state)
from cs336_alignment.lm.model import TransformerConfig, TransformerLM
from cs336_alignment.lm.nn_utils import AdamW, cross_entropy
from tests import adapters

CFG = TransformerConfig(vocab_size=29, context_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=32)


def make(seed: int):
    torch.manual_seed(seed)
    model = TransformerLM(CFG)
    return model, AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train_step(model, opt, ids):
    loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_round_trip_and_resume_gives_identical_next_step(tmp_path):
    ids = torch.randint(0, CFG.vocab_size, (4, 12))
    model, opt = make(0)
    for _ in range(3):
        train_step(model, opt, ids)
    path = tmp_path / "ckpt.pt"
    adapters.run_save_checkpoint(model=model, optimizer=opt, iteration=3, out=path)

    resumed, resumed_opt = make(1)  # different init: everything must come from the file
    assert adapters.run_load_checkpoint(src=path, model=resumed, optimizer=resumed_opt) == 3
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # the optimizer moments and step counts came back too: the next step is bit-identical
    assert train_step(model, opt, ids) == train_step(resumed, resumed_opt, ids)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_file_like_objects_and_extra(tmp_path):
    model, opt = make(0)
    buffer = io.BytesIO()
    save_checkpoint(model, opt, 7, buffer, config={"d_model": 16, "name": "tiny", "betas": [0.9, 0.95]})
    buffer.seek(0)
    fresh, fresh_opt = make(1)
    assert load_checkpoint(buffer, fresh, fresh_opt) == 7
    buffer.seek(0)
    assert load_checkpoint_extra(buffer)["config"] == {"d_model": 16, "name": "tiny", "betas": [0.9, 0.95]}
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    # the optimizer is optional on both sides
    save_checkpoint(model, None, 1, tmp_path / "no_opt.pt")
    assert load_checkpoint(tmp_path / "no_opt.pt", fresh, fresh_opt) == 1


def test_extra_must_be_weights_only_safe(tmp_path):
    model, opt = make(0)
    with pytest.raises(TypeError):
        save_checkpoint(model, opt, 0, tmp_path / "bad.pt", config={"fn": lambda x: x})
    with pytest.raises(TypeError):
        save_checkpoint(model, opt, 0, tmp_path / "bad.pt", rng=np.random.get_state())  # numpy arrays aren't safe
    assert not (tmp_path / "bad.pt").exists()


def test_atomic_write_leaves_no_temp_file_and_failure_keeps_old_checkpoint(tmp_path, monkeypatch):
    model, opt = make(0)
    path = tmp_path / "sub" / "ckpt.pt"  # parent directory is created
    save_checkpoint(model, opt, 1, path)
    assert os.listdir(path.parent) == ["ckpt.pt"]
    old_bytes = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # bytes are written ...
        raise OSError("disk full")  # ... then the save fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(model, opt, 2, path)
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["ckpt.pt"]  # temp file cleaned up
    assert path.read_bytes() == old_bytes  # old checkpoint untouched
    assert load_checkpoint(path, make(1)[0]) == 1


def test_load_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "optimizer": None, "iteration": 0, "extra": {"obj": object()}}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: refused: it holds (builtins\\.)?object, which weights-only"):
        load_checkpoint(path, make(0)[0])


def test_a_tensor_of_another_shape_is_named_with_both_shapes(tmp_path):
    save_checkpoint(make(0)[0], None, 1, tmp_path / "ckpt.pt")
    other = TransformerLM(TransformerConfig(**{**CFG.__dict__, "d_ff": 48}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt.pt", other)
    name = next(k for k, v in other.state_dict().items() if v.shape != make(0)[0].state_dict()[k].shape)
    saved, wanted = tuple(make(0)[0].state_dict()[name].shape), tuple(other.state_dict()[name].shape)
    message = f"{tmp_path / 'ckpt.pt'}: tensor {name!r}: shape {saved} saved, {wanted} in the model"
    assert str(e.value).startswith(message)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("content,problem", [
    (b"", "empty file"), (b"PK\x03\x04 cut short", "corrupt or truncated"), (b"\x80\x02garbage", "not a PyTorch"),
])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_a_plain_state_dict_and_missing_fields_are_named(tmp_path):
    torch.save(make(0)[0].state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="a plain state_dict"):
        read_checkpoint(tmp_path / "sd.pt")
    torch.save({"model": {}, "iteration": 0, "extra": {}}, tmp_path / "no_opt.pt")
    with pytest.raises(CheckpointError, match="field 'optimizer': missing"):
        read_checkpoint(tmp_path / "no_opt.pt")
    save_checkpoint(make(0)[0], None, 1, tmp_path / "ok.pt", config={"seed": 0})
    with pytest.raises(CheckpointError, match="field 'model_config': missing"):
        load_model(tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="field 'rng': missing"):
        check_resumable(tmp_path / "ok.pt", {"seed": 0})
    save_checkpoint(make(0)[0], None, 1, tmp_path / "ok.pt", config={"seed": 0}, rng=rng_state())
    assert check_resumable(tmp_path / "ok.pt", {"seed": 0, "threads": 4})["config"] == {"seed": 0}
    with pytest.raises(CheckpointError, match="field 'seed' is 1 here, 0 in the saved run"):
        check_resumable(tmp_path / "ok.pt", {"seed": 1})


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leave numpy with a cached gaussian
    model, opt = make(0)
    save_checkpoint(model, opt, 0, tmp_path / "ckpt.pt", rng=rng_state())
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(load_checkpoint_extra(tmp_path / "ckpt.pt")["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
