"""Padding, length bucketing, shuffled mini-batches, data splits and language-model streams.

All randomness comes from an explicit seed or ``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

PaddedBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ids, lengths, targets)


def pad_batch(
    seqs: Sequence[np.ndarray], *, pad_id: int = 0, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D id sequences into one array.

    Args:
        seqs: ``B`` non-empty 1-D integer arrays.
        pad_id: Fill value after each sequence's end.
        length: Padded length ``T``; defaults to the longest sequence.

    Returns:
        ``(ids, lengths)``: `(B, T)` int32 ids and `(B,)` int32 true lengths.
    """
    if len(seqs) == 0:
        raise ValueError("seqs is empty: need at least one sequence")
    arrays = [np.asarray(s) for s in seqs]
    for i, a in enumerate(arrays):
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"seqs[{i}] must be a non-empty 1-D array, got shape {a.shape}")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    longest = int(lengths.max())
    length = longest if length is None else length
    if longest > length:
        i = int(lengths.argmax())
        raise ValueError(f"seqs[{i}] has length {longest} > length={length}")
    ids = np.full((len(arrays), length), pad_id, dtype=np.int32)
    for row, a in zip(ids, arrays, strict=True):
        row[: a.shape[0]] = a
    return ids, lengths


def bucket_lengths(max_len: int, num_buckets: int) -> tuple[int, ...]:
    """Evenly spaced padded lengths up to ``max_len``, e.g. ``(25, 50, 75, 100)`` for 100, 4.

    Args:
        max_len: The longest sequence to support.
        num_buckets: How many distinct lengths (fewer if ``max_len < num_buckets``).

    Returns:
        Increasing lengths, the last equal to ``max_len``.
    """
    if max_len < 1 or num_buckets < 1:
        raise ValueError(f"need max_len >= 1 and num_buckets >= 1, got {max_len}, {num_buckets}")
    return tuple(sorted({-(-max_len * k // num_buckets) for k in range(1, num_buckets + 1)}))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket length that holds a sequence of length ``n``.

    Args:
        n: The longest sequence length in a batch.
        buckets: Allowed padded lengths (any order).

    Returns:
        ``min(b for b in buckets if b >= n)``.
    """
    fits = [b for b in buckets if b >= n]
    if not fits:
        raise ValueError(f"length {n} exceeds the largest bucket {max(buckets, default=None)}")
    return min(fits)


def batches(
    items: Sequence[tuple[np.ndarray, object]],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
    drop_last: bool = False,
    pad_id: int = 0,
    tag_pad_id: int = 0,
) -> Iterator[PaddedBatch]:
    """Yield padded mini-batches of ``(ids, target)`` examples.

    A target is either one class label per example or a 1-D array of per-token tags as long as
    its ids (padded with ``tag_pad_id``). With ``buckets``, each batch is padded to the smallest
    bucket length that fits it, so at most ``len(buckets)`` sequence lengths occur (times two
    batch sizes unless ``drop_last``). Use ``seed + epoch`` to reshuffle every epoch.

    Args:
        items: ``N`` pairs ``(ids, target)`` with ``ids`` a non-empty 1-D integer array.
        batch_size: Examples per batch ``B`` (the last batch may be smaller).
        seed: Seed for ``np.random.default_rng`` when shuffling.
        shuffle: Visit the items in a random order.
        buckets: Allowed padded lengths; ``None`` pads to each batch's longest sequence.
        drop_last: Skip a final batch smaller than ``batch_size``.
        pad_id: Fill value for ids.
        tag_pad_id: Fill value for per-token tags.

    Yields:
        ``(ids, lengths, targets)``: `(B, T)` int32, `(B,)` int32, and `(B,)` int32 labels or
        `(B, T)` int32 tags.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(items)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        chunk = [items[i] for i in order[start : start + batch_size]]
        seqs = [np.asarray(x) for x, _ in chunk]
        longest = max(s.shape[0] for s in seqs)
        length = longest if buckets is None else bucket_length(longest, buckets)
        ids, lengths = pad_batch(seqs, pad_id=pad_id, length=length)
        yield ids, lengths, _stack_targets([t for _, t in chunk], lengths, length, tag_pad_id)


def _stack_targets(
    targets: list[object], lengths: np.ndarray, length: int, tag_pad_id: int
) -> np.ndarray:
    """Stack scalar labels to `(B,)`, or pad per-token tags to `(B, length)`."""
    if np.ndim(targets[0]) == 0:
        return np.asarray(targets, dtype=np.int32)
    for t, n in zip(targets, lengths, strict=True):
        if np.shape(t) != (n,):
            raise ValueError(f"tags of shape {np.shape(t)} do not match a sequence of length {n}")
    return pad_batch([np.asarray(t) for t in targets], pad_id=tag_pad_id, length=length)[0]


def split(
    n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Randomly partition ``range(n)`` into disjoint index sets of the given fractions.

    Args:
        n: Number of examples.
        fractions: Non-negative shares summing to 1, e.g. train, validation, test.
        seed: Seed for ``np.random.default_rng``.

    Returns:
        One int64 index array per fraction; together they hold each of ``0..n-1`` once.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    bounds = np.round(np.cumsum(fr)[:-1] * n).astype(np.int64)
    return tuple(np.split(np.random.default_rng(seed).permutation(n), bounds))


def _check_stream(ids: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D id stream, got shape {ids.shape}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    return ids.astype(np.int32, copy=False)


def lm_stream_batches(
    ids: np.ndarray, batch_size: int, seq_len: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cut a token stream into parallel contiguous streams for truncated BPTT.

    Row ``b`` of consecutive chunks continues where the previous chunk stopped, so the final
    recurrent carry of one chunk is the right initial carry for the next. The stream is split
    into ``batch_size`` equal parts of ``L = ((len(ids) - 1) // batch_size // seq_len) * seq_len``
    tokens; tokens beyond ``batch_size * L + 1`` are dropped so every chunk has the same shape.

    Args:
        ids: `(N,)` token ids.
        batch_size: Parallel streams ``B``.
        seq_len: Chunk length ``S``.

    Yields:
        ``(inputs, targets)``, both `(B, S)` int32, with ``targets`` the next token of each
        input position.
    """
    ids = _check_stream(ids, batch_size, seq_len)
    row = (ids.shape[0] - 1) // batch_size // seq_len * seq_len
    if row == 0:
        raise ValueError(
            f"ids has {ids.shape[0]} tokens; need at least batch_size * seq_len + 1 = "
            f"{batch_size * seq_len + 1}"
        )
    inputs = ids[: batch_size * row].reshape(batch_size, row)
    targets = ids[1 : batch_size * row + 1].reshape(batch_size, row)
    for start in range(0, row, seq_len):
        yield inputs[:, start : start + seq_len], targets[:, start : start + seq_len]


def lm_random_windows(
    ids: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``batch_size`` random windows of a token stream (non-stateful training).

    Args:
        ids: `(N,)` token ids, ``N > seq_len``.
        batch_size: Windows ``B``.
        seq_len: Window length ``S``.
        rng: The random generator, e.g. ``np.random.default_rng(seed)``.

    Returns:
        ``(inputs, targets)``, both `(B, S)` int32: ``inputs[b] = ids[s:s + S]`` and
        ``targets[b] = ids[s + 1:s + S + 1]`` for a uniform random start ``s``.
    """
    ids = _check_stream(ids, batch_size, seq_len)
    if ids.shape[0] <= seq_len:
        raise ValueError(f"ids has {ids.shape[0]} tokens; need more than seq_len={seq_len}")
    starts = rng.integers(0, ids.shape[0] - seq_len, size=batch_size)
    window = starts[:, None] + np.arange(seq_len)
    return ids[window], ids[window + 1]
