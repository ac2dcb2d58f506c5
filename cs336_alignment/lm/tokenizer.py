"""The tiktoken-backed byte-level BPE tokenizer: special tokens, the chat template, prompt formats, the shipped one.

Training lives in `bpe.py` (CS336 assignment 1's `train_bpe`, digits split); a checkpoint's tokenizer.json is
read by `hf_tokenizer.py` (pure parsing, below this file) into a `PretrainedTokenizer`, the subclass here that
renders the checkpoint's chat format (ChatML, Llama 3) with the same assistant-only loss mask.

Encoding uses `tiktoken` (OpenAI's Rust BPE): ranks are the token ids, all 256 single bytes first and
then the merged tokens in merge order, so tiktoken's "merge the lowest-ranked pair" reproduces
"apply merges in training order" (tests/test_tokenizer.py checks this against a naive encoder).

Vocabulary: ids 0..255 are the bytes, then the merges, then the special tokens in this order:
<|endoftext|> (end of a raw document), <|pad|>, <|system|>, <|user|>, <|assistant|>, <|end|> (end of
a chat turn). The chat template is ``<|user|>{content}<|end|><|assistant|>{content}<|end|>...``
(no newlines added); `render` also returns the assistant mask that SFT trains on.

The shipped ranks in data/tokenizer/ are rebuilt bit-for-bit by
``python -m cs336_alignment tokenizer --out data/tokenizer`` (trained on the task world's text).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import time
import unicodedata
from pathlib import Path
from typing import Literal

import tiktoken

from cs336_alignment.lm.bpe import PAT_STR, train_bpe_on_text
from cs336_alignment.lm.hf_tokenizer import ChatFormat, read_tokenizer_files
from cs336_alignment.world.tasks import format_raw_prompt, pretraining_text, sft_examples

ENDOFTEXT, PAD, SYSTEM, USER, ASSISTANT, END = (
    "<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = [ENDOFTEXT, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

DEFAULT_VOCAB_SIZE = 512
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "data" / "tokenizer"
RANKS_FILE, CONFIG_FILE = "bpe.tiktoken", "tokenizer.json"


# ----------------------------------------------------------------------------
# The tokenizer

class Tokenizer:
    """Byte-level BPE tokenizer: tiktoken for speed, special tokens and the chat template on top.

    Attributes:
        encoding: the `tiktoken.Encoding` doing ordinary (non-special) text.
        special_tokens: special token string -> id.
        vocab_size: number of ids (max id + 1).
        eos_token_id, pad_token_id, end_of_turn_id: ids of <|endoftext|>, <|pad|> and <|end|> (None if absent).
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int],
                 pat_str: str = PAT_STR, name: str = "cs336_alignment"):
        self.encoding = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                          special_tokens=special_tokens)
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = dict(special_tokens)
        self.pat_str = pat_str
        self.vocab_size = max([*mergeable_ranks.values(), *special_tokens.values()]) + 1
        self.eos_token_id = special_tokens.get(ENDOFTEXT)
        self.pad_token_id = special_tokens.get(PAD)
        self.end_of_turn_id = special_tokens.get(END)
        self._special_ids = frozenset(special_tokens.values())
        by_length = sorted(special_tokens, key=len, reverse=True)  # longest match wins when specials overlap
        self._special_re = re.compile("(" + "|".join(map(re.escape, by_length)) + ")") if by_length else None

    def __len__(self) -> int:
        return self.vocab_size

    # --- text <-> ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. "<|end|>") become their special ids."""
        if self._special_re is None:
            return self.encoding.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(self._special_re.split(text)):  # odd parts are the special tokens
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encoding.encode_ordinary(part))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text` read as plain text: "<|end|>" in it is just characters."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (list or 1-D tensor); invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.encoding.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- chat template

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False
               ) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation in the chat template, and the mask of tokens to train on.

        Each message becomes <|role|> content <|end|>; content is encoded as plain text (a literal
        "<|end|>" inside a message cannot end the turn). The mask is True on assistant content tokens
        and on the <|end|> closing each assistant turn (the policy must learn to stop), False elsewhere.

        Args:
            messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
            add_generation_prompt: append <|assistant|> (mask False) so that a model continues as assistant.
        Returns:
            (ids, assistant_mask), two lists of equal length.
        Raises:
            ValueError: on an unknown role or a message without str content.
        """
        ids: list[int] = []
        mask: list[bool] = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in ROLE_TOKENS or not isinstance(content, str):
                raise ValueError(f"messages[{i}] needs role in {sorted(ROLE_TOKENS)} and str content")
            body = self.encode_ordinary(content) + [self.end_of_turn_id]
            ids += [self.special_tokens[ROLE_TOKENS[role]], *body]
            mask += [False] + [role == "assistant"] * len(body)
        if add_generation_prompt:
            ids.append(self.special_tokens[ASSISTANT])
            mask.append(False)
        return ids, mask

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The chat template as text; `encode` of it equals `render(...)[0]` for content free of special tokens."""
        text = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in messages)
        return text + (ASSISTANT if add_generation_prompt else "")

    def prompt_ids(self, question: str) -> list[int]:
        """The chat prompt for one user question: <|user|>question<|end|><|assistant|>."""
        return self.render([{"role": "user", "content": question}], add_generation_prompt=True)[0]

    # --- construction and files

    @classmethod
    def from_vocab_and_merges(cls, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                              special_tokens: list[str] | None = None, pat_str: str = PAT_STR) -> "Tokenizer":
        """A tokenizer from a CS336-style (vocab, merges) pair, keeping the vocab's ids.

        Special tokens found in the vocab keep their ids; others get new ids after the largest one.
        Raises:
            ValueError: when a single byte is missing, a merge's result is not in the vocab, merged ids do not
                increase in merge order (tiktoken merges by id), or a multi-byte token comes from no merge.
        """
        special_tokens = list(special_tokens or [])
        special_bytes = {t.encode("utf-8") for t in special_tokens}
        id_of = {token: i for i, token in vocab.items()}
        if len(id_of) != len(vocab):
            raise ValueError("vocab has duplicate byte strings")
        try:
            ranks = {bytes([b]): id_of[bytes([b])] for b in range(256)}
        except KeyError as e:
            raise ValueError(f"vocab lacks the single byte {e.args[0]!r}") from None
        previous = -1
        for a, b in merges:
            if a + b not in id_of or id_of[a + b] <= previous:
                raise ValueError(f"merge {(a, b)}: result missing from vocab or ids not in merge order")
            previous = ranks[a + b] = id_of[a + b]
        unused = [t for t in vocab.values() if t not in ranks and t not in special_bytes]
        if unused:
            raise ValueError(f"{len(unused)} vocab tokens come from no merge, e.g. {unused[0]!r}")
        specials, next_id = {}, max(vocab) + 1
        for token in special_tokens:
            if token.encode("utf-8") in id_of:
                specials[token] = id_of[token.encode("utf-8")]
            else:
                specials[token], next_id = next_id, next_id + 1
        return cls(ranks, specials, pat_str)

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write `bpe.tiktoken` (tiktoken's format: "base64(token) rank" per line) and `tokenizer.json`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lines = [f"{base64.b64encode(token).decode()} {rank}\n"
                 for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])]
        (path / RANKS_FILE).write_text("".join(lines), encoding="ascii")
        config = {"pat_str": self.pat_str, "special_tokens": self.special_tokens,
                  "vocab_size": self.vocab_size, "num_merges": len(self.mergeable_ranks) - 256,
                  **(metadata or {})}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_files(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a tokenizer written by `save` (a directory with bpe.tiktoken and tokenizer.json)."""
        path = Path(path)
        ranks = {}
        for line in (path / RANKS_FILE).read_text(encoding="ascii").splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return cls(ranks, config["special_tokens"], config["pat_str"])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "PretrainedTokenizer":
        """The tokenizer.json (+ tokenizer_config.json, chat_template.jinja) of a Hugging Face checkpoint
        directory, as a PretrainedTokenizer; `hf_tokenizer.read_tokenizer_files` reads and checks the files.

        Raises:
            FileNotFoundError: no tokenizer.json.
            hf_tokenizer.TokenizerFileError: naming the file and field (see read_tokenizer_files).
        """
        files = read_tokenizer_files(path)
        return PretrainedTokenizer(files.mergeable_ranks, files.special_tokens, files.pat_str,
                                   normalizer=files.normalizer, chat_format=files.chat_format,
                                   eos_token=files.eos_token, pad_token=files.pad_token, bos_token=files.bos_token,
                                   source_dir=files.source_dir, special_ids=files.special_ids)

    @classmethod
    def load_default(cls) -> "Tokenizer":
        """The shipped tokenizer (data/tokenizer/); rebuilt in memory (a few seconds) if the files are absent."""
        if (DEFAULT_DIR / RANKS_FILE).exists():
            return cls.from_files(DEFAULT_DIR)
        return build_default_tokenizer()[0]


class PretrainedTokenizer(Tokenizer):
    """Our Tokenizer (tiktoken for the BPE) with a checkpoint's normalizer, special tokens and chat format.

    Attributes beyond Tokenizer's: source_dir (the checkpoint directory, whose files save_pretrained copies),
    chat_format (None when the checkpoint ships no template), normalizer ("NFC" or None), bos_token_id.
    eos_token_id is the tokenizer's EOS (Qwen2 <|endoftext|>, Llama 3 <|end_of_text|>), end_of_turn_id the
    chat format's (<|im_end|> / <|eot_id|>), pad_token_id the configured pad token, else the EOS.
    special_ids: the added tokens marked "special" in tokenizer.json, the only ones decode(skip_special_tokens=True)
    drops (as `tokenizers`: Qwen3's <think> and <tool_call> are added but not special); None = every added token.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int], pat_str: str, *,
                 normalizer: str | None, chat_format: ChatFormat | None, eos_token: str | None,
                 pad_token: str | None, bos_token: str | None, source_dir: str = "",
                 special_ids: frozenset[int] | None = None):
        super().__init__(mergeable_ranks, special_tokens, pat_str, name=f"pretrained:{Path(source_dir).name}")
        if special_ids is not None:
            self._special_ids = frozenset(special_ids)
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


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer in directory `path`: ours (`Tokenizer.save`: bpe.tiktoken) or a Hugging Face checkpoint's
    (tokenizer.json, `Tokenizer.from_pretrained`); the shipped default when None or ""."""
    if not path:
        return Tokenizer.load_default()
    return Tokenizer.from_files(path) if (Path(path) / RANKS_FILE).exists() else Tokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------
# Prompt formats: what a model reads before its response, and the tokens that end the response
#   chat           <|user|>{question}<|end|><|assistant|>  and the response ends at <|end|> (SFT and RL models).
#   raw            "Question: {question}\nAnswer:"  and the response ends at <|endoftext|>, at a blank line, or
#                  where a new "Question:" starts: how the base model saw documents in pretraining.
#   question_only  {question}, the bare text without the template (CS336 a5's grpo_prompt_ablation); the
#                  response still ends at <|end|>, the stop token the chat model learned.

Format = Literal["chat", "raw", "question_only"]
FORMATS: tuple[str, ...] = ("chat", "raw", "question_only")


def build_prompt(question: str, tokenizer: Tokenizer, fmt: Format) -> list[int]:
    """Token ids of the prompt for one question: the chat template, the raw pretraining format, or the bare
    question text (question_only). Raises ValueError on another format."""
    if fmt == "chat":
        return tokenizer.prompt_ids(question)
    if fmt == "raw":
        return tokenizer.encode_ordinary(format_raw_prompt(question))
    if fmt == "question_only":
        return tokenizer.encode_ordinary(question)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def stop_token_ids(tokenizer: Tokenizer, fmt: Format) -> list[int]:
    """Tokens that end a response: <|endoftext|> for raw text; <|end|> and <|endoftext|> otherwise (chat, and
    question_only: a chat model answering a bare question still ends its turn with <|end|>)."""
    return [tokenizer.eos_token_id] if fmt == "raw" else [tokenizer.end_of_turn_id, tokenizer.eos_token_id]


def cut_raw_response(text: str) -> str:
    """A raw-format continuation up to a blank line or the next "Question:" (a base model keeps writing)."""
    for stop in ("\n\n", "Question:"):
        text = text.split(stop, 1)[0]
    return text


# ----------------------------------------------------------------------------
# The shipped tokenizer: trained on the task world

def default_training_text(n_problems: int = 2000, n_chats: int = 500, seed: int = 0) -> str:
    """The task world's pretraining documents followed by chat-template renderings of SFT conversations."""
    chats = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END
                    for conversation in sft_examples(n_chats, seed=seed + 1) for m in conversation)
    return pretraining_text(n_problems, seed=seed) + chats


def build_default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, n_problems: int = 2000, n_chats: int = 500,
                            seed: int = 0) -> tuple[Tokenizer, dict]:
    """Train the default tokenizer from scratch; returns it and the metadata recorded in tokenizer.json."""
    text = default_training_text(n_problems, n_chats, seed)
    vocab, merges = train_bpe_on_text(text, vocab_size, SPECIAL_TOKENS)
    metadata = {"training": {"corpus": f"tasks.pretraining_text({n_problems}, seed={seed}) + chat renderings of "
                                       f"tasks.sft_examples({n_chats}, seed={seed + 1})",
                             "corpus_chars": len(text), "requested_vocab_size": vocab_size}}
    return Tokenizer.from_vocab_and_merges(vocab, merges, SPECIAL_TOKENS), metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the task world's BPE tokenizer and write its files.")
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="output directory")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="bytes + merges + specials")
    parser.add_argument("--n-problems", type=int, default=2000, help="pretraining documents in the corpus")
    parser.add_argument("--n-chats", type=int, default=500, help="chat-template conversations in the corpus")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tokenizer, metadata = build_default_tokenizer(args.vocab_size, args.n_problems, args.n_chats, args.seed)
    tokenizer.save(args.out, metadata)
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{f} {os.path.getsize(Path(args.out) / f)} B" for f in (RANKS_FILE, CONFIG_FILE))
    print(f"vocab {tokenizer.vocab_size} ({len(tokenizer.mergeable_ranks) - 256} merges) trained on "
          f"{metadata['training']['corpus_chars']:,} chars in {seconds:.1f} s -> {args.out} ({sizes})")


if __name__ == "__main__":
    main()
