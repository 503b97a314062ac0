"""Batches: the one batch type of training, and a task's data ready for training.

A :data:`Batch` is a dict of arrays (NumPy as a task builds it, JAX once on a device) whose keys
each task documents. All batches of a run have the same number of rows ``B``: a short final
batch is filled with dummy rows whose ``mask`` is 0 (:func:`fill_rows`), so every step compiles
to the same few shapes and splits evenly across devices. A task's reader returns a
:class:`TaskData`: its vocabularies and the factories of its training and evaluation batches.

Example:
    >>> import numpy as np
    >>> from jrnn.training.batches import fill_rows
    >>> batch = {"ids": np.array([[4, 5]]), "lengths": np.array([2]), "mask": np.array([1.0])}
    >>> {name: value.tolist() for name, value in fill_rows(batch, 3).items()}
    {'ids': [[4, 5], [0, 0], [0, 0]], 'lengths': [2, 1, 1], 'mask': [1.0, 0.0, 0.0]}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.typing import ArrayLike

from jrnn.data import Vocab

Batch = dict[str, ArrayLike]

BUCKET_QUANTILES = (0.5, 0.8, 0.95)  # of the sentence lengths, plus the longest


class TaskData(NamedTuple):
    """A task's data ready for training.

    Attributes:
        vocabs: the task's vocabularies by name (saved with every checkpoint).
        train_batches: ``epoch -> batches`` of that epoch, the same ones at every call.
        steps_per_epoch: the number of training batches per epoch.
        eval_batches: ``split name -> (() -> batches)`` for each evaluation split.
        eval_rows: ``B`` of the evaluation batches.
    """

    vocabs: dict[str, Vocab]
    train_batches: Callable[[int], Iterator[Batch]]
    steps_per_epoch: int
    eval_batches: dict[str, Callable[[], Iterator[Batch]]]
    eval_rows: int


def fill_rows(batch: Batch, rows: int) -> Batch:
    """Append dummy rows (``lengths`` 1, every other array 0) up to ``rows`` rows."""
    missing = rows - batch["lengths"].shape[0]
    if missing == 0:
        return batch
    filled = {}
    for name, value in batch.items():
        pad = np.ones if name == "lengths" else np.zeros
        filled[name] = np.concatenate([value, pad((missing, *value.shape[1:]), value.dtype)])
    return filled


def quantile_buckets(lengths: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """Padded lengths: :data:`BUCKET_QUANTILES` of the ``"train"`` lengths (all splits' when
    there is no ``"train"``) rounded up to multiples of 8, and the longest of all splits."""
    train = np.asarray(lengths.get("train") or [n for v in lengths.values() for n in v])
    cuts = np.quantile(train, BUCKET_QUANTILES)
    longest = max(max(v) for v in lengths.values())
    return tuple(sorted({*(min(int(-(-c // 8) * 8), longest) for c in cuts), longest}))


def sentence_data(
    vocabs: dict[str, Vocab],
    items: Mapping[str, Any],
    lengths: Mapping[str, Sequence[int]],
    make_batches: Callable[..., Iterator[Batch]],
    *,
    batch_size: int,
    seed: int,
) -> TaskData:
    """The :class:`TaskData` of a task over sentences, padded to :func:`quantile_buckets`.

    Args:
        vocabs: the task's vocabularies.
        items: the encoded data of each split (``"train"`` and evaluation splits).
        lengths: the sentence lengths of each split.
        make_batches: ``(items, batch_size, *, seed, shuffle, buckets) -> batches``.
        batch_size: ``B``, for training and evaluation.
        seed: the training batches of epoch ``e`` are shuffled with ``seed + e``.

    Returns:
        Shuffled training batches; evaluation batches of every split but ``"train"``, in order.
    """
    buckets = quantile_buckets(lengths)

    def batches(split: str, shuffle_seed: int, shuffle: bool) -> Iterator[Batch]:
        return make_batches(
            items[split], batch_size, seed=shuffle_seed, shuffle=shuffle, buckets=buckets
        )

    return TaskData(
        vocabs=vocabs,
        train_batches=lambda epoch: batches("train", seed + epoch, True),
        steps_per_epoch=math.ceil(len(lengths.get("train", ())) / batch_size),
        eval_batches={k: (lambda k=k: batches(k, 0, False)) for k in items if k != "train"},
        eval_rows=batch_size,
    )
