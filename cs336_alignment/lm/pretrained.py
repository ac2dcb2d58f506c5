"""The Hugging Face checkpoint format of Llama, Qwen2 / Qwen2.5, Qwen3 and OLMo-2, read and written offline.

A checkpoint directory is what `transformers`' `save_pretrained` writes: `config.json` plus the weights in
`model.safetensors`, or in shards listed by `model.safetensors.index.json`. Weights are read with the
`safetensors` library (no pickle, nothing executed); `transformers` itself is not needed.

    model = TransformerLM.from_pretrained("Qwen2.5-0.5B-Instruct")        # float32 unless dtype= says otherwise
    model.save_pretrained("runs/sft/hf", tokenizer=tokenizer)              # opens in transformers again

Layering: this module knows the format (config.json <-> TransformerConfig, tensor names, the RoPE layout,
reading and writing safetensors) but not the network: it imports `model_config.py`, never `model.py`, and
works on state dicts. `TransformerLM.from_pretrained` / `save_pretrained` in `model.py` import it at the top
of that file and do the part that needs the class (build the model on the meta device, assign the tensors,
rebuild the RoPE tables), so there is no import circle.

The four families are the CS336 a1 architecture (pre-norm RMSNorm, RoPE, SwiGLU) plus the switches that
`model.py` documents: grouped-query attention, a bias on q/k/v (Qwen2), rms_norm_eps, tied embeddings, and
for Qwen3 a per-head q/k RMSNorm with its own head_dim, for OLMo-2 a q/k RMSNorm over the whole projection
and the norms after attention and MLP (norm_placement "post").
One more difference is a layout, not an architecture: Hugging Face's RoPE rotates the pairs
(x[k], x[k + d/2]) ("rotate_half", the layout of the original GPT-NeoX code), ours the interleaved pairs
(x[2k], x[2k+1]) of Su et al. eq. 34 and CS336. We convert the weights at load instead of supporting both
layouts in the model: permuting the output rows of q_proj and k_proj (weight and bias) inside every head by
    new[2k + half] = old[half · d/2 + k],   half ∈ {0, 1}, k < d/2
turns HF's rotation into ours, and q·k inside a head is unchanged because q and k get the same permutation
(Meta's convert_llama_weights_to_hf.py applies the inverse permutation to go the other way). A q/k RMSNorm
sits between the projection and RoPE, so its gain gets the same permutation (OLMo-2's, over all heads, per
head; Qwen3's, one head wide, as one head); its mean of squares does not depend on the order. So the graded
RoPE stays the one CS336 tests, and `save_pretrained` applies the inverse to write HF's layout back.

Name map (HF -> ours): model.embed_tokens -> token_embeddings; model.layers.i.self_attn.{q,k,v}_proj ->
layers.i.attn.{q,k,v}_proj; o_proj -> attn.output_proj; mlp.gate_proj -> ffn.w1, mlp.up_proj -> ffn.w3,
mlp.down_proj -> ffn.w2; input_layernorm -> ln1; post_attention_layernorm -> ln2; model.norm -> ln_final;
self_attn.{q,k}_norm -> attn.{q,k}_norm; lm_head -> lm_head (absent when tie_word_embeddings). OLMo-2
(norms after the sublayers): post_attention_layernorm -> ln1, post_feedforward_layernorm -> ln2.

Bad files (empty, truncated, corrupt, a Git LFS pointer) raise CheckpointError naming the file (`hf_files.py`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from cs336_alignment.lm.hf_files import open_safetensors, read_json
from cs336_alignment.lm.model_config import TransformerConfig

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                 "Olmo2ForCausalLM": "olmo2"}
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
# Files a saved directory takes over from the checkpoint it started from (tokenizer, chat template, stop ids).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint directory we cannot load; the message names the file and the field or tensor."""


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """True for a directory holding a Hugging Face config.json (what `from_pretrained` reads)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------
# config.json <-> TransformerConfig
# ---------------------------------------------------------------------------------------------------------


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    """rope_theta from transformers v4 (top level, with rope_scaling) or v5 (rope_parameters) configs."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for name, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise CheckpointError(f"{where}: field '{name}.rope_type' is {kind!r}; only the default RoPE "
                                  "(no scaling, e.g. Llama 3.1's 'llama3') is supported")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def config_from_hf(hf: dict[str, Any], where: str = CONFIG_FILE) -> TransformerConfig:
    """The TransformerConfig of a Llama / Qwen2 / Qwen3 / OLMo-2 config.json (already parsed).

    Raises:
        CheckpointError: naming the field, for an unknown architecture or a feature we do not implement
            (rope scaling, sliding-window attention, a head_dim other than hidden_size / heads outside Qwen3,
            biases on Llama's, Qwen3's or OLMo-2's attention or Llama's MLP, an activation other than SiLU).
    """
    architectures = hf.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES), None)
    if family is None:
        raise CheckpointError(f"{where}: field 'architectures' is {architectures}; supported: {sorted(ARCHITECTURES)}")

    def need(field: str) -> Any:
        if field not in hf:
            raise CheckpointError(f"{where}: missing field {field!r}")
        return hf[field]

    d_model, num_heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = None
    if family == "qwen3":  # Qwen3's head_dim (128) is not hidden_size / heads (e.g. 1024 / 16 in Qwen3-0.6B)
        head_dim = int(hf.get("head_dim") or d_model // num_heads)
    elif hf.get("head_dim") not in (None, d_model // num_heads):
        raise CheckpointError(f"{where}: field 'head_dim' is {hf['head_dim']}, not hidden_size / num_attention_heads")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: field 'hidden_act' is {hf['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    if family == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise CheckpointError(f"{where}: fields 'attention_bias' / 'mlp_bias' are set; Llama biases are not supported")
    if family in ("qwen3", "olmo2") and hf.get("attention_bias"):
        raise CheckpointError(f"{where}: field 'attention_bias' is true; biases are not supported for {family}")
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        raise CheckpointError(f"{where}: field 'use_sliding_window' is true; sliding-window attention is not supported")
    return TransformerConfig(
        vocab_size=int(need("vocab_size")), context_length=int(need("max_position_embeddings")), d_model=d_model,
        num_layers=int(need("num_hidden_layers")), num_heads=num_heads, d_ff=int(need("intermediate_size")),
        rope_theta=_rope_theta(hf, where), num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        qkv_bias=family == "qwen2", rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5 if family == "olmo2" else 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), head_dim=head_dim,
        norm_placement="post" if family == "olmo2" else "pre",
        qk_norm={"olmo2": "full", "qwen3": "head"}.get(family, "none"))


def hf_architecture(config: TransformerConfig) -> str:
    """The transformers architecture that holds a TransformerConfig: OLMo-2 (post-norm, q/k norm over the full
    projection), Qwen3 (per-head q/k norm), Qwen2 (q/k/v bias) or Llama (the CS336 model's shape).

    Raises:
        CheckpointError: for a combination of switches that none of the four has (e.g. post-norm without
            OLMo-2's q/k norm, or a q/k/v bias with a q/k norm).
    """
    default_head = config.head_dim in (None, config.d_model // config.num_heads)
    switches = (config.norm_placement, config.qk_norm, config.qkv_bias)
    if switches == ("post", "full", False) and default_head:
        return "Olmo2ForCausalLM"
    if switches == ("pre", "head", False):
        return "Qwen3ForCausalLM"
    if switches[:2] == ("pre", "none") and default_head:
        return "Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"
    raise CheckpointError(f"no Hugging Face architecture has norm_placement={config.norm_placement!r}, "
                          f"qk_norm={config.qk_norm!r}, qkv_bias={config.qkv_bias}, head_dim={config.d_head} "
                          f"(d_model {config.d_model}, {config.num_heads} heads)")


def config_to_hf(config: TransformerConfig, dtype: torch.dtype, token_ids: dict[str, int | None]) -> dict[str, Any]:
    """config.json for a TransformerConfig, of the architecture `hf_architecture` picks.

    Raises:
        CheckpointError: see `hf_architecture`.
    """
    architecture = hf_architecture(config)
    family = ARCHITECTURES[architecture]
    hf = {"architectures": [architecture], "model_type": family,
          "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.d_ff,
          "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
          "num_key_value_heads": config.num_kv_heads or config.num_heads,
          "head_dim": config.d_head, "hidden_act": "silu",
          "max_position_embeddings": config.context_length, "rms_norm_eps": config.rms_norm_eps,
          "rope_theta": config.rope_theta, "rope_scaling": None, "tie_word_embeddings": config.tie_embeddings,
          "torch_dtype": str(dtype).removeprefix("torch."), "attention_dropout": 0.0, "use_cache": True, **token_ids}
    if family in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.num_layers)
    if family != "qwen2":
        hf.update(attention_bias=False)
    if family == "llama":
        hf.update(mlp_bias=False)
    if family == "olmo2":
        del hf["head_dim"]  # Olmo2Config has none: hidden_size / num_attention_heads
    return hf


# ---------------------------------------------------------------------------------------------------------
# Tensor names and the RoPE layout
# ---------------------------------------------------------------------------------------------------------


def rotate_half_to_interleaved(w: Tensor, num_heads: int) -> Tensor:
    """Permute the rows of a q/k projection (weight (H·d, d_in) or bias (H·d,)) from HF's rotate-half RoPE
    layout to the interleaved one: inside each head, new row 2k + half = old row half · d/2 + k."""
    rest = w.shape[1:]
    d_head = w.shape[0] // num_heads
    return w.reshape(num_heads, 2, d_head // 2, *rest).transpose(1, 2).reshape(w.shape)


def interleaved_to_rotate_half(w: Tensor, num_heads: int) -> Tensor:
    """The inverse of `rotate_half_to_interleaved` (for saving in HF's layout)."""
    rest = w.shape[1:]
    d_head = w.shape[0] // num_heads
    return w.reshape(num_heads, d_head // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


_LAYER_NAMES = {  # ours (after "layers.{i}.") -> HF (after "model.layers.{i}.")
    "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
    "attn.output_proj": "self_attn.o_proj", "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj",
    "ffn.w2": "mlp.down_proj", "ln1": "input_layernorm", "ln2": "post_attention_layernorm",
    "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"}
_POST_NORM_NAMES = {"ln1": "post_attention_layernorm", "ln2": "post_feedforward_layernorm"}  # OLMo-2


def hf_name(name: str, norm_placement: str = "pre") -> str:
    """The HF tensor name of one of our state-dict keys, e.g.
    layers.0.ffn.w1.weight -> model.layers.0.mlp.gate_proj.weight (ln1/ln2 per `norm_placement`)."""
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        module, param = rest.rsplit(".", 1)
        names = {**_LAYER_NAMES, **_POST_NORM_NAMES} if norm_placement == "post" else _LAYER_NAMES
        return f"model.layers.{i}.{names[module]}.{param}"
    return {"token_embeddings.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight"}[name]


def _heads_of(name: str, config: TransformerConfig) -> int | None:
    """Heads of a q/k projection tensor or q/k norm gain (their rows carry RoPE), None for every other tensor.
    A per-head norm gain (Qwen3) is one head wide."""
    if ".attn.q_proj." in name or (".attn.q_norm." in name and config.qk_norm == "full"):
        return config.num_heads
    if ".attn.k_proj." in name or (".attn.k_norm." in name and config.qk_norm == "full"):
        return config.num_kv_heads or config.num_heads
    if ".attn.q_norm." in name or ".attn.k_norm." in name:
        return 1
    return None


# ---------------------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> dict[str, Path]:
    """{HF tensor name: safetensors file holding it}, from the shard index or the single file."""
    if (path / INDEX_FILE).is_file():
        index = read_json(path / INDEX_FILE, CheckpointError)
        if "weight_map" not in index:
            raise CheckpointError(f"{path / INDEX_FILE}: missing field 'weight_map'")
        files = {name: path / shard for name, shard in index["weight_map"].items()}
        missing = sorted({str(f) for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{path / INDEX_FILE}: shard {missing[0]} does not exist")
        return files
    if (path / WEIGHTS_FILE).is_file():
        with open_safetensors(path / WEIGHTS_FILE, CheckpointError) as f:
            return {name: path / WEIGHTS_FILE for name in f.keys()}
    raise CheckpointError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE} (only safetensors weights are read)")


def read_hf_config(path: str | os.PathLike) -> tuple[dict[str, Any], TransformerConfig]:
    """(config.json as parsed, its TransformerConfig with tokenizer = the directory, resolved).

    Raises:
        FileNotFoundError: no config.json in `path`.
        CheckpointError: see `config_from_hf`; or config.json is empty, not JSON, or a Git LFS pointer.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a Hugging Face checkpoint directory)")
    hf = read_json(path / CONFIG_FILE, CheckpointError)
    config = dataclasses.replace(config_from_hf(hf, str(path / CONFIG_FILE)), tokenizer=str(path.resolve()))
    return hf, config


def resolve_dtype(dtype: torch.dtype | str | None, hf: dict[str, Any], path: str | os.PathLike) -> torch.dtype:
    """The dtype to load in: None -> float32, a torch.dtype as given, a name in DTYPES, or "auto" for the
    checkpoint's own `torch_dtype` (hf is its parsed config.json, path its directory, for the error).

    Raises:
        CheckpointError: a name outside DTYPES.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (hf.get("torch_dtype") or hf.get("dtype") or "float32") if dtype == "auto" else dtype
    if name not in DTYPES:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def read_hf_weights(path: str | os.PathLike, config: TransformerConfig, shapes: dict[str, tuple[int, ...]],
                    architecture: str, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """Our state dict, read tensor by tensor from a checkpoint's safetensors file(s): renamed (`hf_name`), q/k
    rows permuted to the interleaved RoPE layout (module docstring), cast to `dtype`, on `device`.

    Args:
        shapes: our state-dict key -> shape, as the model built from `config` has them (lm_head.weight is
            skipped when config.tie_embeddings). architecture: config.json's, for the error message.
    Returns:
        {our key: tensor} for every key of `shapes` (without a tied lm_head.weight).
    Raises:
        CheckpointError: naming the tensor: a missing tensor, an unexpected one, or one of the wrong shape;
            or the file: no weights, a shard the index lists that does not exist, an index or weights file that
            is empty, truncated, corrupt or a Git LFS pointer.
    """
    path = Path(path)
    expected = dict(shapes)
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    by_hf_name = {hf_name(name, config.norm_placement): name for name in expected}
    files = _weight_files(path)
    unexpected = [n for n in files if n not in by_hf_name and not n.endswith("rotary_emb.inv_freq")
                  and not (config.tie_embeddings and n == "lm_head.weight")]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all) for "
                              f"{architecture}")
    missing = [n for n in by_hf_name if n not in files]
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} in all)")
    state: dict[str, Tensor] = {}
    for file in sorted(set(files[n] for n in by_hf_name), key=str):
        with open_safetensors(file, CheckpointError) as f:
            for hf_key in f.keys():
                if hf_key not in by_hf_name:
                    continue
                name, tensor = by_hf_name[hf_key], f.get_tensor(hf_key)
                if tuple(tensor.shape) != expected[name]:
                    raise CheckpointError(f"{file}: tensor {hf_key!r} has shape {tuple(tensor.shape)}, "
                                          f"config.json implies {expected[name]}")
                heads = _heads_of(name, config)
                if heads is not None:
                    tensor = rotate_half_to_interleaved(tensor, heads)
                state[name] = tensor.to(device=device, dtype=dtype)
    return state


# ---------------------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------------------


def hf_state_dict(state_dict: dict[str, Tensor], config: TransformerConfig,
                  dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Our weights (a TransformerLM's state dict) under HF names, q/k rows back in the rotate-half layout,
    lm_head left out when tied; contiguous CPU tensors in `dtype` (default: each tensor's own)."""
    state = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        heads = _heads_of(name, config)
        if heads is not None:
            tensor = interleaved_to_rotate_half(tensor, heads)
        state[hf_name(name, config.norm_placement)] = tensor.detach().to(device="cpu", dtype=dtype or tensor.dtype).contiguous()
    return state


def save_hf_checkpoint(state_dict: dict[str, Tensor], config: TransformerConfig, path: str | os.PathLike,
                       tokenizer=None, dtype: torch.dtype | None = None) -> None:
    """Write a directory that `transformers.AutoModelForCausalLM.from_pretrained` (and
    `TransformerLM.from_pretrained`) opens: config.json (the architecture `hf_architecture` picks: Olmo2,
    Qwen3, Qwen2 or Llama), model.safetensors, and the tokenizer files of the checkpoint the model came from
    (tokenizer.json, tokenizer_config.json with its chat template, generation_config.json, ...), copied unchanged.

    Any TransformerLM can be written, including our own CS336 models (they are Llama-shaped); only a
    checkpoint's own tokenizer files can be copied (the shipped task-world tokenizer has no tokenizer.json).

    Args:
        state_dict, config: the model's (`TransformerLM.save_pretrained` passes them).
        tokenizer: a tokenizer from `Tokenizer.from_pretrained` (its files are copied), or None to copy the
            files of the directory in config.tokenizer, if any.
        dtype: of the saved tensors (default: the model's).
    Raises:
        CheckpointError: the config's switches match no architecture (`hf_architecture`); nothing is written.
    """
    hf_architecture(config)  # before anything is written
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(state_dict, config, dtype)
    saved_dtype = next(iter(state.values())).dtype
    source = getattr(tokenizer, "source_dir", None) or config.tokenizer or None
    token_ids: dict[str, int | None] = {}
    if tokenizer is not None:
        token_ids = {"bos_token_id": getattr(tokenizer, "bos_token_id", None), "eos_token_id": tokenizer.eos_token_id}
    elif source and (Path(source) / CONFIG_FILE).is_file():
        original = read_json(Path(source) / CONFIG_FILE, CheckpointError)
        token_ids = {k: original.get(k) for k in ("bos_token_id", "eos_token_id")}
    tmp = path / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / WEIGHTS_FILE)
    (path / CONFIG_FILE).write_text(json.dumps(config_to_hf(config, saved_dtype, token_ids), indent=2) + "\n")
    if source and Path(source).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, path / name)
