"""Token vocabularies (character- or word-level) and a simple word tokeniser."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from jrnn.data.readers import FileFormatError, read_json

# A word is a run of letters/digits, with apostrophes allowed inside it ("don't", "film's").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize_words(text: str) -> list[str]:
    """Split text into lower-cased words for classification.

    Words are runs of Unicode letters and digits; an apostrophe (``'`` or ``’``) is kept
    when it sits between two such runs. Everything else separates words and is dropped.

    Args:
        text: Any text.

    Returns:
        The words, in order, e.g. ``"It's GREAT, café!" -> ["it's", "great", "café"]``.
    """
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@dataclass(frozen=True, repr=False)
class Vocab:
    """An immutable mapping between tokens and integer ids.

    ``tokens[i]`` is the token with id ``i``. Id 0 is the padding token and id 1 the unknown
    token (``"<pad>"`` and ``"<unk>"`` when built with the default specials).

    Attributes:
        tokens: All tokens, specials first; unique.
    """

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    pad_id = 0
    unk_id = 1

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        if len(tokens) < 2 or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens must be at least two strings: the pad and unk tokens first")
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            dupes = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"tokens must be unique; repeated: {dupes[:5]}")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        specials: tuple[str, ...] = ("<pad>", "<unk>"),
    ) -> Vocab:
        """Build a vocabulary from a stream of tokens.

        Pass a ``str`` for a character-level vocabulary (it iterates over code points), or a
        list of words for a word-level one. Ids are deterministic: specials first, then tokens
        by descending count, ties broken by the token string.

        Args:
            tokens: The training tokens.
            min_count: Drop tokens seen fewer times than this.
            max_size: Maximum vocabulary size, specials included; ``None`` for no limit.
            specials: Reserved tokens; the first is padding (id 0), the second unknown (id 1).

        Returns:
            The vocabulary.
        """
        if len(specials) < 2:
            raise ValueError(f"specials must hold at least pad and unk, got {specials!r}")
        if max_size is not None and max_size < len(specials):
            raise ValueError(f"max_size={max_size} is smaller than len(specials)={len(specials)}")
        counts = Counter(tokens)
        for s in specials:
            counts.pop(s, None)
        kept = [t for t, c in counts.items() if c >= min_count]
        kept.sort(key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(specials)]
        return cls(tuple(specials) + tuple(kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.tokens[:5]))
        return f"Vocab(size={len(self)}, tokens=({head}{', ...' if len(self) > 5 else ''}))"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Map tokens to ids; tokens not in the vocabulary map to ``unk_id``.

        Args:
            tokens: A ``str`` (characters) or a sequence of words, length ``T``.

        Returns:
            `(T,)` int32 ids.
        """
        get = self._index.get
        return np.fromiter((get(t, self.unk_id) for t in tokens), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids back to tokens.

        Args:
            ids: `(T,)` integer ids, each in ``[0, len(self))``.

        Returns:
            The ``T`` tokens; ``"".join(...)`` them for a character vocabulary.
        """
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is out of range for a vocabulary of size {len(self)}")
            out.append(self.tokens[i])
        return out

    def to_json(self) -> str:
        """Serialise to a JSON string (non-ASCII kept as is; write it as UTF-8)."""
        return json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        """Inverse of `to_json`."""
        return cls._from_data(json.loads(text))

    @classmethod
    def _from_data(cls, data: object) -> Vocab:
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise ValueError('expected a JSON object {"tokens": [...]}')
        return cls(tuple(data["tokens"]))

    def save(self, path: str | PathLike[str]) -> None:
        """Write the vocabulary to ``path`` as UTF-8 JSON."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Vocab:
        """Read a vocabulary written by `save`.

        Raises:
            FileFormatError: If the file is not valid JSON or not a vocabulary.
        """
        data = read_json(path)
        try:
            return cls._from_data(data)
        except ValueError as e:
            raise FileFormatError(path, None, str(e)) from None
