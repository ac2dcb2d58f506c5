"""Byte-level BPE training (CS336 assignment 1 `train_bpe`) and the pre-tokenizer regex it shares with `Tokenizer`.

Training follows Sennrich et al. 2016 (https://arxiv.org/abs/1508.07909) as byte-level BPE in GPT-2
(Radford et al. 2019), with the semantics of Stanford CS336 assignment 1: text is split on special
tokens, pre-tokenized with a regex, and the most frequent adjacent pair inside a pre-token is merged
until the vocabulary is full; ties go to the lexicographically greater pair. Our pre-tokenizer
differs from GPT-2's in one way: every digit is its own pre-token, so no token holds two digits and
"12" is always "1" "2" (arithmetic stays learnable; LLaMA splits digits for the same reason).

The result (vocab, merges) becomes a tiktoken-backed tokenizer through `tokenizer.Tokenizer.from_vocab_and_merges`;
`tokenizer.build_default_tokenizer` trains the shipped one on the task world's text.
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path

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
