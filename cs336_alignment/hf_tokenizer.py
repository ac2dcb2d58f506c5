"""A Hugging Face checkpoint's tokenizer files, read and checked, and its chat format, as data.

    tokenizer = Tokenizer.from_pretrained("Qwen2.5-0.5B-Instruct")    # or load_tokenizer(that directory)
    ids, mask = tokenizer.render(messages)                             # ChatML, assistant-only loss mask

Layering: this module only parses. `read_tokenizer_files` turns tokenizer.json (+ tokenizer_config.json)
into plain data (`TokenizerFiles`: ranks, special tokens, regex, normalizer, a `ChatFormat`), and
`tokenizer.PretrainedTokenizer` (a Tokenizer subclass, in tokenizer.py, above this file) encodes with it
and renders the chat format it holds. This file imports nothing of the package, so `Tokenizer.from_pretrained`
imports it at the top of tokenizer.py without an import circle.

tokenizer.json (the `tokenizers` library's format) of a byte-level BPE model holds: `model.vocab` (token ->
id, each token's bytes written with GPT-2's printable byte alphabet), `model.merges` (in priority order),
`pre_tokenizer` (a Split regex followed by ByteLevel, or GPT-2's ByteLevel regex), `normalizer` (none, or NFC
for Qwen2) and `added_tokens` (the special tokens). tiktoken merges the adjacent pair whose merged token has
the lowest rank, `tokenizers` the pair whose merge comes first: the two agree when the merged tokens' ids
never decrease in merge order, which we check. Qwen2 and Llama 3 vocabularies come from tiktoken-style
training; a vocabulary converted from tiktoken ranks may list several splits of one token as merges (equal
ids, allowed), and `tokenizers`' BpeTrainer writes one merge per token. tests/test_hf_tokenizer.py compares
`encode`/`decode` with `tokenizers`, including a merges list with such extra splits.

Chat formats (recognised from tokenizer_config.json's `chat_template`; we render them in Python, the text
equal to transformers' `apply_chat_template` for content without special-token strings):
  * ChatML (Qwen2 / Qwen2.5): [<|im_start|>system\\n{default system prompt}<|im_end|>\\n when the first
    message is not a system message and the template inserts one] then per message
    <|im_start|>{role}\\n{content}<|im_end|>\\n; the generation prompt is <|im_start|>assistant\\n.
  * Llama 3: <|begin_of_text|> then per message <|start_header_id|>{role}<|end_header_id|>\\n\\n{content
    stripped}<|eot_id|>; the generation prompt is <|start_header_id|>assistant<|end_header_id|>\\n\\n.
The loss mask is True on the assistant's content tokens and on the end-of-turn token closing its turn
(<|im_end|> / <|eot_id|>), as `Tokenizer.render` does for our own template (and TRL's assistant-only loss).
The text between two special tokens is encoded as one piece, as transformers tokenizes the rendered string,
so the ids equal apply_chat_template's even where a pre-token spans the end of a role header and the start
of the content; such a token counts as content.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GPT-2's pre-tokenizer (ByteLevel with use_regex=true), as the `tokenizers` library writes it.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerFileError(ValueError):
    """A tokenizer.json / tokenizer_config.json we cannot load; the message names the file and field."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (Radford et al. 2019, encoder.py): printable Latin-1 bytes map
    to themselves, the other 68 to U+0100 onwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as "str" or {"content": "str", ...}."""
    return value.get("content") if isinstance(value, dict) else value


# ---------------------------------------------------------------------------------------------------------
# Chat formats
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatFormat:
    """How a checkpoint's chat template renders messages: "chatml" or "llama3" (module docstring)."""
    kind: str
    default_system: str | None = None  # ChatML: the system message inserted when none is given

    @property
    def end_of_turn(self) -> str:
        return "<|im_end|>" if self.kind == "chatml" else "<|eot_id|>"

    def segments(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[tuple[str, bool, bool]]:
        """The rendered conversation as (text, is_special_token, trained) pieces, in order."""
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ValueError(f"messages[{i}] needs role in ['assistant', 'system', 'user'] and str content")
        out: list[tuple[str, bool, bool]] = []
        if self.kind == "chatml":
            if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
                messages = [{"role": "system", "content": self.default_system}, *messages]
            for m in messages:
                trained = m["role"] == "assistant"
                out += [("<|im_start|>", True, False), (f"{m['role']}\n", False, False), (m["content"], False, trained),
                        ("<|im_end|>", True, trained), ("\n", False, False)]
            if add_generation_prompt:
                out += [("<|im_start|>", True, False), ("assistant\n", False, False)]
        else:  # llama3
            out.append(("<|begin_of_text|>", True, False))
            for m in messages:
                trained = m["role"] == "assistant"
                out += [("<|start_header_id|>", True, False), (m["role"], False, False),
                        ("<|end_header_id|>", True, False), ("\n\n", False, False),
                        (m["content"].strip(), False, trained), ("<|eot_id|>", True, trained)]
            if add_generation_prompt:
                out += [("<|start_header_id|>", True, False), ("assistant", False, False),
                        ("<|end_header_id|>", True, False), ("\n\n", False, False)]
        return out


def chat_format_from_template(template: str | None, where: str) -> ChatFormat | None:
    """Recognise a Jinja chat template as ChatML or Llama 3's header format; None when there is no template.

    Raises:
        TokenizerFileError: for a template of neither kind (or Llama 3.1's, which adds dated system text).
    """
    if not template:
        return None
    if "<|im_start|>" in template:
        # Qwen's templates insert a fixed system message: '<|im_start|>system\nYou are ...<|im_end|>\n'.
        match = re.search(r"""(['"])<\|im_start\|>system\\n((?:(?!\1).)*?)<\|im_end\|>\\n\1""", template)
        default = None
        if match:
            default = match.group(2).encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        return ChatFormat("chatml", default)
    if "<|start_header_id|>" in template:
        if "Cutting Knowledge Date" in template or "tools" in template:
            raise TokenizerFileError(f"{where}: field 'chat_template': Llama 3.1+'s template (dated system "
                                     "text, tools) is not supported; Llama 3's is")
        return ChatFormat("llama3")
    raise TokenizerFileError(f"{where}: field 'chat_template' is neither ChatML (<|im_start|>) nor Llama 3 "
                             "(<|start_header_id|>)")


def _pre_tokenizer_pattern(spec: dict | None, where: str) -> str:
    """The regex of a byte-level pre_tokenizer: Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)]
    (Qwen2, Llama 3) or ByteLevel(use_regex=true) (GPT-2)."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec]
    if len(steps) == 1 and steps[0] and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise TokenizerFileError(f"{where}: field 'pre_tokenizer.add_prefix_space' is true; not supported")
        return GPT2_PAT
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and "Regex" in steps[0].get("pattern", {}) and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")):
        return steps[0]["pattern"]["Regex"]
    raise TokenizerFileError(f"{where}: field 'pre_tokenizer' is {json.dumps(spec)[:200]}; supported: a Split regex "
                             "then ByteLevel (Qwen2, Llama 3) or GPT-2's ByteLevel regex")


@dataclass(frozen=True)
class TokenizerFiles:
    """What a checkpoint's tokenizer files say, ready for `tokenizer.PretrainedTokenizer(...)`."""
    mergeable_ranks: dict[bytes, int]  # token bytes -> id, the 256 single bytes included, added tokens excluded
    special_tokens: dict[str, int]  # added tokens (content -> id)
    pat_str: str  # the pre-tokenizer regex
    normalizer: str | None  # "NFC" or None
    chat_format: ChatFormat | None  # None when the checkpoint ships no chat template
    eos_token: str | None  # the end of a document (see `tokenizer.PretrainedTokenizer`)
    pad_token: str | None
    bos_token: str | None
    source_dir: str  # the directory, resolved


def read_tokenizer_files(path: str | os.PathLike) -> TokenizerFiles:
    """Read tokenizer.json (+ tokenizer_config.json, chat_template.jinja when present) from a checkpoint directory.

    Raises:
        FileNotFoundError: no tokenizer.json.
        TokenizerFileError: naming the file and field: not BPE, byte fallback, an unsupported normalizer or
            pre-tokenizer, a vocabulary without all 256 bytes, a merge whose token's id is smaller than an
            earlier merge's.
    """
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json")
    spec = json.loads(file.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerFileError(f"{file}: field 'model.type' is {model.get('type')!r}; only byte-level BPE is "
                                 "supported")
    if model.get("byte_fallback"):
        raise TokenizerFileError(f"{file}: field 'model.byte_fallback' is true (sentencepiece-style BPE); not "
                                 "supported")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise TokenizerFileError(f"{file}: field 'normalizer' is {normalizer.get('type')!r}; only none or NFC")
    pat_str = _pre_tokenizer_pattern(spec.get("pre_tokenizer"), str(file))

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(byte_of[c] for c in token): i for token, i in model["vocab"].items()}
    except KeyError as e:
        raise TokenizerFileError(f"{file}: field 'model.vocab' has a character {e.args[0]!r} outside the byte-level "
                                 "alphabet") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerFileError(f"{file}: field 'model.vocab' lacks the single byte {missing[0]:#04x}")
    previous = -1
    for k, merge in enumerate(model.get("merges", [])):
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        merged = bytes(byte_of[c] for c in a + b)
        # Equal ids are fine: converted tiktoken vocabularies (Llama 3) list every split of a token as a merge.
        if merged not in ranks or ranks[merged] < previous:
            raise TokenizerFileError(f"{file}: field 'model.merges[{k}]' ({a!r} {b!r}): its token is missing or its id "
                                     "is smaller than an earlier merge's (tiktoken merges by id)")
        previous = ranks[merged]
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    for content in specials:
        ranks.pop(content.encode("utf-8"), None)  # an added token listed in the vocab too is matched as special

    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (path / "chat_template.jinja").is_file():  # transformers >= 4.50 saves it beside the config
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    chat_format = chat_format_from_template(template, str(config_file))
    eos = _token_content(config.get("eos_token"))
    if chat_format is not None and eos == chat_format.end_of_turn:
        # Instruct configs (Qwen2.5, Llama 3) name the end of a turn as EOS; ours is the end of a document.
        document_end = "<|endoftext|>" if chat_format.kind == "chatml" else "<|end_of_text|>"
        eos = document_end if document_end in specials else eos
    return TokenizerFiles(ranks, specials, pat_str, normalizer="NFC" if normalizer else None,
                          chat_format=chat_format, eos_token=eos, pad_token=_token_content(config.get("pad_token")),
                          bos_token=_token_content(config.get("bos_token")), source_dir=str(path.resolve()))
