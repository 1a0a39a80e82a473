"""Text to token ids: a lower-case word tokenizer and a frequency-ranked vocabulary.

Nothing is downloaded: the vocabulary is built from the training split only (the
training clients' data), so the held-out test set never shapes the features. Ids 0
and 1 are reserved for padding and unknown words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
MAX_VOCAB = 20_000  # including the two reserved ids
DEFAULT_MAX_LEN = 64

# Words: runs of (Unicode) letters/digits, keeping inner apostrophes ("don't").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Split `text` into lower-case word tokens; punctuation is dropped."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True, kw_only=True)
class Vocabulary:
    """Token strings by id; id 0 is padding, id 1 stands for any unknown word."""

    tokens: tuple[str, ...] = field(default=(PAD_TOKEN, UNK_TOKEN))

    @cached_property
    def index(self) -> dict[str, int]:
        """Token -> id lookup."""
        return {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` (unknown words map to UNK_ID), not padded."""
        lookup = self.index
        return [lookup.get(token, UNK_ID) for token in tokenize(text)]


def build_vocab(
    texts: Iterable[str],
    *,
    max_size: int = MAX_VOCAB,
    min_count: int = 1,
    max_len: int | None = None,
) -> Vocabulary:
    """The `max_size - 2` most frequent words of `texts` (ties broken alphabetically).

    Words seen fewer than `min_count` times are left out; with `max_len`, only the
    first `max_len` tokens of each text count (the ones `encode` keeps).
    """
    if max_size < 3:
        raise ValueError(
            f"max_size must be at least 3 (pad, unk, one word), got {max_size}"
        )
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text)[:max_len])
    ranked = sorted(
        (word for word, n in counts.items() if n >= min_count),
        key=lambda word: (-counts[word], word),
    )
    return Vocabulary(tokens=(PAD_TOKEN, UNK_TOKEN, *ranked[: max_size - 2]))


def encode(texts: Sequence[str], vocab: Vocabulary, *, max_len: int) -> np.ndarray:
    """Token ids, shape (len(texts), max_len) int64: truncated, then padded with 0."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    out = np.full((len(texts), max_len), PAD_ID, dtype=np.int64)
    for row, text in enumerate(texts):
        ids = vocab.ids(text)[:max_len]
        out[row, : len(ids)] = ids
    return out
