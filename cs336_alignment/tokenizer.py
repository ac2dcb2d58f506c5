"""Byte-level BPE: a trainer, a fast tiktoken-backed tokenizer, special tokens and the chat template.

Training follows Sennrich et al. 2016 (https://arxiv.org/abs/1508.07909) as byte-level BPE in GPT-2
(Radford et al. 2019), with the semantics of Stanford CS336 assignment 1: text is split on special
tokens, pre-tokenized with a regex, and the most frequent adjacent pair inside a pre-token is merged
until the vocabulary is full; ties go to the lexicographically greater pair. Our pre-tokenizer
differs from GPT-2's in one way: every digit is its own pre-token, so no token holds two digits and
"12" is always "1" "2" (arithmetic stays learnable; LLaMA splits digits for the same reason).

Encoding uses `tiktoken` (OpenAI's Rust BPE): ranks are the token ids, all 256 single bytes first and
then the merged tokens in merge order, so tiktoken's "merge the lowest-ranked pair" reproduces
"apply merges in training order" (tests/test_tokenizer.py checks this against a naive encoder).

Vocabulary: ids 0..255 are the bytes, then the merges, then the special tokens in this order:
<|endoftext|> (end of a raw document), <|pad|>, <|system|>, <|user|>, <|assistant|>, <|end|> (end of
a chat turn). The chat template is ``<|user|>{content}<|end|><|assistant|>{content}<|end|>...``
(no newlines added); `render` also returns the assistant mask that SFT trains on.

The shipped ranks in data/tokenizer/ are rebuilt bit-for-bit by
``python -m cs336_alignment.tokenizer --out data/tokenizer`` (trained on the task world's text).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

import tiktoken

from cs336_alignment.tasks import format_raw_prompt, pretraining_text, sft_examples

ENDOFTEXT, PAD, SYSTEM, USER, ASSISTANT, END = (
    "<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = [ENDOFTEXT, PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# GPT-2's pre-tokenizer with ASCII classes and single digits. Written for both engines: Python's `re`
# (training) and tiktoken's Rust regex (encoding) give the same pieces because it avoids \s, \w and \p{..},
# whose Unicode tables differ between them. Non-ASCII characters group like punctuation.
_WS = r"\t\n\x0b\x0c\r "
PAT_STR = (r"'(?:[sdmt]|ll|ve|re)"      # English contractions, as GPT-2
           r"| ?[A-Za-z]+"              # a word with its leading space
           r"|[0-9]"                    # one digit, always alone
           rf"| ?[^A-Za-z0-9{_WS}]+"    # punctuation and other characters, with a leading space
           rf"|[{_WS}]+(?![^{_WS}])"    # whitespace, leaving the last space to the next word
           rf"|[{_WS}]+")

DEFAULT_VOCAB_SIZE = 512
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "tokenizer"
RANKS_FILE, CONFIG_FILE = "bpe.tiktoken", "tokenizer.json"


# ----------------------------------------------------------------------------
# Training

def pretoken_counts(text: str, special_tokens: list[str], pat_str: str = PAT_STR) -> Counter[bytes]:
    """How often each pre-token occurs. Special tokens cut the text and are dropped (never merged)."""
    chunks = [text]
    if special_tokens:
        by_length = sorted(special_tokens, key=len, reverse=True)  # longest first: overlapping specials
        chunks = re.split("|".join(re.escape(t) for t in by_length), text)
    counts: Counter[str] = Counter()
    for chunk in chunks:
        counts.update(m.group() for m in re.finditer(pat_str, chunk))
    return Counter({piece.encode("utf-8"): n for piece, n in counts.items()})


def _merge_word(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe_on_text(text: str, vocab_size: int, special_tokens: list[str], *, pat_str: str = PAT_STR
                      ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Byte-level BPE on a string; see `train_bpe`."""
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} special tokens")
    counts = pretoken_counts(text, special_tokens, pat_str)
    words = [tuple(bytes([b]) for b in piece) for piece in counts]   # each pre-token as a tuple of tokens
    freqs = list(counts.values())

    # pair -> total count, and pair -> words that (may) contain it; updated incrementally after each merge.
    pair_counts: Counter[tuple[bytes, bytes]] = Counter()
    pair_words: defaultdict[tuple[bytes, bytes], set[int]] = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(w)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < n_merges and pair_counts:
        # Most frequent pair; ties -> lexicographically greater pair of byte strings (CS336).
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], pair))
        merges.append(best)
        for w in pair_words.pop(best):
            word, freq = words[w], freqs[w]
            for pair in zip(word, word[1:]):          # remove the old word's pairs ...
                pair_counts[pair] -= freq
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            words[w] = word = _merge_word(word, best)
            for pair in zip(word, word[1:]):          # ... and add the merged word's
                pair_counts[pair] += freq
                pair_words[pair].add(w)

    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab, merges


def train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str], *,
              pat_str: str = PAT_STR) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on a UTF-8 text file (CS336 assignment 1 `train_bpe`).

    Args:
        input_path: the training text. Occurrences of special tokens split it into independent chunks.
        vocab_size: the total vocabulary size: 256 bytes + merges + special tokens. Training stops early
            (smaller vocabulary) when no adjacent pair is left to merge.
        special_tokens: strings added to the vocabulary as whole tokens, never merged with anything.
        pat_str: the pre-tokenization regex (Python `re` syntax); default `PAT_STR` (digits split).
    Returns:
        vocab: id -> token bytes (ids 0..255 the bytes, then the merges in order, then the special tokens).
        merges: the merged pairs (a, b) in the order they were created.
    Raises:
        ValueError: when vocab_size cannot hold the 256 bytes and the special tokens.
    """
    text = Path(input_path).read_text(encoding="utf-8")
    return train_bpe_on_text(text, vocab_size, special_tokens, pat_str=pat_str)


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
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """The tokenizer.json (+ chat template) of a Hugging Face checkpoint directory: see hf_tokenizer.py."""
        from cs336_alignment.hf_tokenizer import load_pretrained_tokenizer  # it subclasses Tokenizer: import late
        return load_pretrained_tokenizer(path)

    @classmethod
    def load_default(cls) -> "Tokenizer":
        """The shipped tokenizer (data/tokenizer/); rebuilt in memory (a few seconds) if the files are absent."""
        if (DEFAULT_DIR / RANKS_FILE).exists():
            return cls.from_files(DEFAULT_DIR)
        return build_default_tokenizer()[0]


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
