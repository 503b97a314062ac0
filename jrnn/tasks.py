"""From text, TSV rows and CoNLL-U sentences to the batch dicts the task models take.

A batch is a dict of NumPy arrays with a fixed batch size ``B`` (a short final batch is filled
with dummy rows whose ``mask`` is 0, so every step compiles to the same few shapes and splits
evenly across devices):

- language model: ``ids``, ``targets`` `(B, S)` (one contiguous stream per row, for truncated
  BPTT);
- classifier: ``ids`` `(B, T)`, ``lengths`` `(B,)`, ``targets`` `(B,)`, ``mask`` `(B,)`;
- tagger: ``ids``, ``targets``, ``mask`` `(B, T)`, ``lengths`` `(B,)`, and the characters of
  the batch's distinct words: ``chars`` `(U, W)` with ``char_index`` `(B, T)`, the row of
  ``chars`` of each position. ``U`` is ``B`` times a power of two, so it takes few values.

Example:
    >>> from jrnn.data import Vocab
    >>> from jrnn import tasks
    >>> words, labels = Vocab.build("a good film a bad film".split()), Vocab.build(["pos", "neg"])
    >>> items = tasks.classify_items(["a good film", "bad"], ["pos", "neg"], words, labels)
    >>> batch = next(tasks.classify_batches(items, 4, seed=0, shuffle=False))
    >>> batch["ids"].shape, batch["mask"].tolist()
    ((4, 3), [1.0, 1.0, 0.0, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from jrnn.data import Vocab, batches, lm_stream_batches, tokenize_words

Batch = dict[str, np.ndarray]


# -- language model ---------------------------------------------------------------------------


def lm_split(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """The first ``1 - valid_fraction`` of the characters for training, the rest for validation."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: expected a number in (0, 1), got {valid_fraction!r}")
    cut = round(len(text) * (1.0 - valid_fraction))
    return text[:cut], text[cut:]


def lm_steps(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """Number of chunks :func:`lm_batches` yields for a stream of ``num_tokens`` tokens."""
    return (num_tokens - 1) // batch_size // seq_len


def lm_batches(ids: np.ndarray, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Consecutive `(B, S)` chunks of ``batch_size`` parallel streams (``lm_stream_batches``)."""
    for inputs, targets in lm_stream_batches(ids, batch_size, seq_len):
        yield {"ids": inputs, "targets": targets}


# -- classification ---------------------------------------------------------------------------


def classify_items(
    texts: Sequence[str], labels: Sequence[str], words: Vocab, label_vocab: Vocab
) -> list[tuple[np.ndarray, int]]:
    """``(word ids, label id)`` per text; a text with no word becomes one unknown word."""
    items = []
    for text, label in zip(texts, labels, strict=True):
        ids = words.encode(tokenize_words(text))
        if ids.shape[0] == 0:
            ids = np.array([words.unk_id], dtype=np.int32)
        items.append((ids, int(label_vocab.encode([label])[0])))
    return items


def classify_batches(
    items: Sequence[tuple[np.ndarray, int]],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Padded classification batches of exactly ``batch_size`` rows."""
    for ids, lengths, labels in batches(
        items, batch_size, seed=seed, shuffle=shuffle, buckets=buckets
    ):
        batch = {"ids": ids, "lengths": lengths, "targets": labels}
        batch["mask"] = np.ones(labels.shape, np.float32)
        yield _fill(batch, batch_size)


# -- tagging ----------------------------------------------------------------------------------


class TagData(NamedTuple):
    """Sentences as word-type ids, plus per-type word ids and character ids.

    Attributes:
        items: ``(type ids, tag ids)`` per sentence; type 0 is padding.
        word_ids: `(N_types,)` word-vocabulary id of each type (lower-cased word).
        char_ids: `(N_types, W)` character ids of each type, right-padded with 0.
    """

    items: list[tuple[np.ndarray, np.ndarray]]
    word_ids: np.ndarray
    char_ids: np.ndarray


def tag_vocabs(
    sentences: Sequence[tuple[Sequence[str], Sequence[str]]], *, min_count: int = 2
) -> dict[str, Vocab]:
    """Word (lower-cased, ``min_count``), character and tag vocabularies of training sentences.

    Words seen fewer than ``min_count`` times map to ``<unk>``, so the unknown-word embedding is
    trained too; the character features still tell such words apart.
    """
    words = [w for ws, _ in sentences for w in ws]
    return {
        "words": Vocab.build((w.lower() for w in words), min_count=min_count),
        "chars": Vocab.build("".join(words)),
        "tags": Vocab.build(t for _, ts in sentences for t in ts),
    }


def _clip_word(word: str, width: int) -> str:
    """Keep a long word's prefix and suffix (where most of its morphology is)."""
    return word if len(word) <= width else word[: width // 2] + word[len(word) - width // 2 :]


def tag_data(
    sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
    vocabs: dict[str, Vocab],
    *,
    max_word_len: int = 16,
) -> TagData:
    """Encode sentences with the vocabularies of :func:`tag_vocabs`.

    Args:
        sentences: ``(words, tags)`` pairs, e.g. from ``jrnn.data.read_conllu``.
        vocabs: ``{"words", "chars", "tags"}``.
        max_word_len: Characters kept per word ``W``; longer words keep their first and last
            ``W // 2``.

    Returns:
        The encoded :class:`TagData`.
    """
    types: dict[str, int] = {"": 0}
    items = []
    for words, tags in sentences:
        type_ids = np.array([types.setdefault(w, len(types)) for w in words], dtype=np.int32)
        items.append((type_ids, vocabs["tags"].encode(tags)))
    names = list(types)
    word_ids = vocabs["words"].encode(w.lower() for w in names)
    word_ids[0] = vocabs["words"].pad_id
    char_ids = np.zeros((len(names), max_word_len), np.int32)
    for i, name in enumerate(names[1:], start=1):
        encoded = vocabs["chars"].encode(_clip_word(name, max_word_len))
        char_ids[i, : encoded.shape[0]] = encoded
    return TagData(items, word_ids, char_ids)


def tag_batches(
    data: TagData,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Padded tagging batches of exactly ``batch_size`` rows, with the words' character ids.

    Each distinct word form of a batch appears once in ``chars`` (a batch of 32 sentences has
    about seven times fewer distinct words than positions), so the character encoder runs once
    per word form rather than once per position.
    """
    for types, lengths, tags in batches(
        data.items, batch_size, seed=seed, shuffle=shuffle, buckets=buckets
    ):
        mask = np.arange(types.shape[1])[None, :] < lengths[:, None]
        batch = {"types": types, "lengths": lengths, "targets": tags, "mask": mask}
        batch = _fill(batch, batch_size)
        types = batch.pop("types")
        forms, index = np.unique(types, return_inverse=True)
        rows = batch_size * 2 ** max(0, math.ceil(math.log2(forms.shape[0] / batch_size)))
        chars = np.zeros((rows, data.char_ids.shape[1]), np.int32)
        chars[: forms.shape[0]] = data.char_ids[forms]
        batch["ids"] = data.word_ids[types]
        batch["chars"] = chars
        batch["char_index"] = index.reshape(types.shape).astype(np.int32)
        batch["mask"] = batch["mask"].astype(np.float32)
        yield batch


def _fill(batch: Batch, batch_size: int) -> Batch:
    """Append dummy rows (length 1, mask 0) up to ``batch_size`` rows."""
    missing = batch_size - batch["lengths"].shape[0]
    if missing == 0:
        return batch
    filled = {}
    for name, value in batch.items():
        pad = np.ones if name == "lengths" else np.zeros
        filled[name] = np.concatenate([value, pad((missing, *value.shape[1:]), value.dtype)])
    return filled
