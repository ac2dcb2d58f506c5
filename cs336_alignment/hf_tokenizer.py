"""A Hugging Face checkpoint's tokenizer.json in our tiktoken-backed Tokenizer, with the checkpoint's chat format.

    tokenizer = Tokenizer.from_pretrained("Qwen2.5-0.5B-Instruct")    # or load_tokenizer(that directory)
    ids, mask = tokenizer.render(messages)                             # ChatML, assistant-only loss mask

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
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_alignment.tokenizer import Tokenizer

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


# ---------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------


class PretrainedTokenizer(Tokenizer):
    """Our Tokenizer (tiktoken for the BPE) with a checkpoint's normalizer, special tokens and chat format.

    Attributes beyond Tokenizer's: source_dir (the checkpoint directory, whose files save_pretrained copies),
    chat_format (None when the checkpoint ships no template), normalizer ("NFC" or None), bos_token_id.
    eos_token_id is the tokenizer's EOS (Qwen2 <|endoftext|>, Llama 3 <|end_of_text|>), end_of_turn_id the
    chat format's (<|im_end|> / <|eot_id|>), pad_token_id the configured pad token, else the EOS.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int], pat_str: str, *,
                 normalizer: str | None, chat_format: ChatFormat | None, eos_token: str | None,
                 pad_token: str | None, bos_token: str | None, source_dir: str = ""):
        super().__init__(mergeable_ranks, special_tokens, pat_str, name=f"pretrained:{Path(source_dir).name}")
        self.normalizer, self.chat_format, self.source_dir = normalizer, chat_format, source_dir
        self.eos_token_id = special_tokens.get(eos_token) if eos_token else None
        self.bos_token_id = special_tokens.get(bos_token) if bos_token else None
        self.pad_token_id = special_tokens.get(pad_token) if pad_token else None
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        self.end_of_turn_id = special_tokens.get(chat_format.end_of_turn) if chat_format else self.eos_token_id
        self._known_ids = frozenset([*mergeable_ranks.values(), *special_tokens.values()])

    def _normalize(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self.normalizer == "NFC" else text

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text` read as plain text (normalized first, as the checkpoint's tokenizer does)."""
        return self.encoding.encode_ordinary(self._normalize(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings become their ids. No BOS is added (as
        `tokenizers`' encode(text, add_special_tokens=False))."""
        if self._special_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(self._special_re.split(text)):  # odd parts are the special tokens
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids; ids the tokenizer lacks (a model's padded vocabulary rows) are dropped."""
        known = [int(i) for i in ids if int(i) in self._known_ids]
        return super().decode(known, skip_special_tokens)

    def _chat(self) -> ChatFormat:
        if self.chat_format is None:
            raise ValueError(f"{self.source_dir}: the checkpoint ships no chat template (tokenizer_config.json)")
        return self.chat_format

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False
               ) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation in the checkpoint's chat format, and the assistant-only loss mask.

        Content is encoded as plain text (a special-token string inside a message stays text). Returns
        (ids, mask) of equal length; mask True on assistant content and the end-of-turn token closing it.
        Raises ValueError on an unknown role, non-str content, or a checkpoint without a chat template.
        """
        ids: list[int] = []
        mask: list[bool] = []
        pending: list[tuple[str, bool]] = []  # text pieces since the last special token

        def flush():
            text = "".join(t for t, _ in pending)
            if not text:
                return
            piece_ids = self.encode_ordinary(text)
            # byte span of each trained piece in the normalized text, then tokens overlapping one are trained
            spans, offset = [], 0
            for t, trained in pending:
                n = len(self._normalize(t).encode("utf-8"))
                if trained and n:
                    spans.append((offset, offset + n))
                offset += n
            start = 0
            for token in piece_ids:
                end = start + len(self.encoding.decode_single_token_bytes(token))
                mask.append(any(s < end and start < e for s, e in spans))
                start = end
            ids.extend(piece_ids)
            pending.clear()

        for text, is_special, trained in self._chat().segments(messages, add_generation_prompt):
            if is_special:
                flush()
                ids.append(self.special_tokens[text])
                mask.append(trained)
            else:
                pending.append((text, trained))
        flush()
        return ids, mask

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The rendered conversation as text (transformers' apply_chat_template(..., tokenize=False))."""
        return "".join(text for text, _, _ in self._chat().segments(messages, add_generation_prompt))

    def prompt_ids(self, question: str) -> list[int]:
        """The chat prompt for one user question, ending with the assistant's generation prompt."""
        return self.render([{"role": "user", "content": question}], add_generation_prompt=True)[0]


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


def load_pretrained_tokenizer(path: str | os.PathLike) -> PretrainedTokenizer:
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
    return PretrainedTokenizer(ranks, specials, pat_str, normalizer="NFC" if normalizer else None,
                               chat_format=chat_format, eos_token=eos,
                               pad_token=_token_content(config.get("pad_token")),
                               bos_token=_token_content(config.get("bos_token")), source_dir=str(path.resolve()))
