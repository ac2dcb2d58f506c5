"""A Hugging Face checkpoint's tokenizer files, read and checked, and its chat format, as data.

    tokenizer = Tokenizer.from_pretrained("Qwen2.5-0.5B-Instruct")    # or load_tokenizer(that directory)
    ids, mask = tokenizer.render(messages)                             # ChatML, assistant-only loss mask

Layering: this module only parses. `read_tokenizer_files` turns tokenizer.json (+ tokenizer_config.json)
into plain data (`TokenizerFiles`: ranks, special tokens, regex, normalizer, a `ChatFormat`), and
`tokenizer.PretrainedTokenizer` (a Tokenizer subclass, in tokenizer.py, above this file) encodes with it
and renders the chat format it holds. This file imports only `hf_files.py` (which imports nothing of the
package), so `Tokenizer.from_pretrained` imports it at the top of tokenizer.py without an import circle. An empty,
truncated, corrupt or Git-LFS-pointer tokenizer.json / tokenizer_config.json raises TokenizerFileError naming it.

tokenizer.json (the `tokenizers` library's format) of a byte-level BPE model holds: `model.vocab` (token ->
id, each token's bytes written with GPT-2's printable byte alphabet), `model.merges` (in priority order),
`pre_tokenizer` (a Split regex followed by ByteLevel, or GPT-2's ByteLevel regex), `normalizer` (none, or NFC
for Qwen2) and `added_tokens` (the special tokens). tiktoken merges the adjacent pair whose merged token has
the lowest rank, `tokenizers` the pair whose merge comes first: the two agree when the merged tokens' ids
never decrease in merge order, which we check. Qwen2 and Llama 3 vocabularies come from tiktoken-style
training; a vocabulary converted from tiktoken ranks may list several splits of one token as merges (equal
ids, allowed), and `tokenizers`' BpeTrainer writes one merge per token. tests/test_hf_tokenizer.py compares
`encode`/`decode` with `tokenizers`, including a merges list with such extra splits.

Chat formats (we render them in Python, the text equal to transformers' `apply_chat_template` for content
without special-token strings). A checkpoint's `chat_template` (tokenizer_config.json or chat_template.jinja) is
recognised by what it renders, not by what it contains: it is rendered with Jinja as transformers does
(sandboxed, trim_blocks, lstrip_blocks, the special tokens as variables) on a few probe conversations, with and
without the generation prompt, and a format is accepted only when our rendering equals the template's on every
probe; otherwise loading stops with an error naming the file and the first difference. So Qwen3's template (an
empty <think></think> block in the last assistant turn), Llama 3 *base*'s (no generation prompt) and Llama 3.1's
(dated system text) are refused rather than rendered differently, and Qwen2-VL's default system message, written
as template text rather than a string literal, is read from the rendering of a one-message probe.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cs336_alignment.lm.hf_files import read_json

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


# Probe conversations: system or not, multi-turn, an assistant turn after the last user turn and before it,
# whitespace that Llama 3 trims, non-ASCII text. Each is rendered with and without the generation prompt.
PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "5"}, {"role": "user", "content": " and 4?\n"}],
    [{"role": "user", "content": "  Straße 中文 🙂 "}, {"role": "assistant", "content": "  It is\n\n5.  "}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
)


def render_template(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                    special_tokens: dict[str, str]) -> str:
    """A Jinja chat template rendered as transformers' apply_chat_template(..., tokenize=False) renders it: a
    sandboxed environment with trim_blocks, lstrip_blocks and loop controls, the `tojson` filter, the
    `raise_exception` and `strftime_now` globals, and the special tokens (bos_token, eos_token, ...) as variables.

    Raises:
        jinja2.TemplateError: a template that does not parse, or that raises on these messages.
    """
    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **special_tokens)


def _first_difference(theirs: str, ours: str) -> str:
    """Where two renderings part, with a little context of each."""
    n = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    return f"at character {n} the template gives {theirs[max(0, n - 12):n + 28]!r}, ours {ours[max(0, n - 12):n + 28]!r}"


def chat_format_from_template(template: str | None, where: str,
                              special_tokens: dict[str, str] | None = None) -> ChatFormat | None:
    """The ChatFormat that renders exactly as the Jinja chat `template` does on every probe conversation (PROBES,
    with and without the generation prompt); None when there is no template.

    Candidates: ChatML with the default system message the template inserts before a lone user message (read
    from that rendering), ChatML without one, and Llama 3's headers.

    Args:
        where: the file the template came from, for the error. special_tokens: the template's variables
            (bos_token, eos_token, ... as strings, from tokenizer_config.json).
    Raises:
        TokenizerFileError: naming the file and field 'chat_template': a template that fails to render a probe,
            or one no candidate renders identically (the message shows the first difference).
    """
    if not template:
        return None
    tokens = special_tokens or {}
    try:
        rendered = {(i, g): render_template(template, probe, g, tokens)
                    for i, probe in enumerate(PROBES) for g in (False, True)}
    except Exception as e:  # jinja2's errors, and whatever a template's own code raises
        raise TokenizerFileError(f"{where}: field 'chat_template' fails to render a probe conversation: "
                                 f"{type(e).__name__}: {e}") from None
    candidates = [ChatFormat("chatml"), ChatFormat("llama3")]
    lone_user = rendered[0, False]
    head, user_turn = "<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    if lone_user.startswith(head) and lone_user.endswith(user_turn):
        candidates.insert(0, ChatFormat("chatml", lone_user[len(head):-len(user_turn)]))
    closest = None  # (probes matched before the first miss, the candidate, where that miss is)
    for candidate in candidates:
        for matched, ((i, g), theirs) in enumerate(rendered.items()):
            ours = "".join(text for text, _, _ in candidate.segments(PROBES[i], g))
            if theirs != ours:
                miss = f"probe conversation {i} with add_generation_prompt={g}: {_first_difference(theirs, ours)}"
                if closest is None or matched > closest[0]:
                    closest = (matched, candidate, miss)
                break
        else:
            return candidate
    _, candidate, miss = closest
    name = "Llama 3" if candidate.kind == "llama3" else "ChatML"
    raise TokenizerFileError(f"{where}: field 'chat_template' renders differently from every supported chat format "
                             f"(ChatML, Llama 3); closest, {name}, differs on {miss}")


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
    special_ids: frozenset[int] = frozenset()  # added tokens marked "special" (skipped by decode(skip_special_tokens))


def read_tokenizer_files(path: str | os.PathLike) -> TokenizerFiles:
    """Read tokenizer.json (+ tokenizer_config.json, chat_template.jinja when present) from a checkpoint directory.

    Raises:
        FileNotFoundError: no tokenizer.json.
        TokenizerFileError: naming the file: empty, truncated, corrupt, a Git LFS pointer; a chat template no
            supported format renders identically (`chat_format_from_template`); or naming the field: not BPE, byte fallback, an unsupported normalizer or
            pre-tokenizer, a vocabulary without all 256 bytes, a merge whose token's id is smaller than an
            earlier merge's.
    """
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json")
    spec = read_json(file, TokenizerFileError)
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
    special_ids = frozenset(t["id"] for t in spec.get("added_tokens", []) if t.get("special", True))
    for content in specials:
        ranks.pop(content.encode("utf-8"), None)  # an added token listed in the vocab too is matched as special

    config_file = path / "tokenizer_config.json"
    config = read_json(config_file, TokenizerFileError) if config_file.is_file() else {}
    template, template_file = config.get("chat_template"), config_file
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (path / "chat_template.jinja").is_file():  # transformers >= 4.50 saves it beside the config
        template_file = path / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8")
    token_strings = {name: _token_content(value) for name, value in config.items()
                     if name.endswith("_token") and isinstance(_token_content(value), str)}
    chat_format = chat_format_from_template(template, str(template_file), token_strings)
    eos = _token_content(config.get("eos_token"))
    if chat_format is not None and eos == chat_format.end_of_turn:
        # Instruct configs (Qwen2.5, Llama 3) name the end of a turn as EOS; ours is the end of a document.
        document_end = "<|endoftext|>" if chat_format.kind == "chatml" else "<|end_of_text|>"
        eos = document_end if document_end in specials else eos
    return TokenizerFiles(ranks, specials, pat_str, normalizer="NFC" if normalizer else None,
                          chat_format=chat_format, eos_token=eos, pad_token=_token_content(config.get("pad_token")),
                          bos_token=_token_content(config.get("bos_token")), source_dir=str(path.resolve()),
                          special_ids=special_ids)
