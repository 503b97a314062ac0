"""The hyper-parameters of a run, as the ``jrnn train`` options and the checkpoints hold them.

:class:`Options` has a field for every option of every task; a task reads its own and leaves the
others at their defaults. Each task module's ``DEFAULTS`` is the :class:`Options` its runs start
from. :func:`check_options` rejects impossible values of the options all tasks share, naming
the command-line option; a task's ``check`` rejects those of its own with the same helpers.

Example:
    >>> from jrnn.training.options import Options, check_options
    >>> check_options(Options(hidden=0))
    Traceback (most recent call last):
    ...
    ValueError: --hidden: expected a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jrnn.training.model import CELLS, MATMUL_DTYPES
from jrnn.training.steps import OPTIMIZERS, SCHEDULES


@dataclasses.dataclass(frozen=True)
class Options:
    """A run's hyper-parameters (model and training); ``None`` epochs or time budget: no limit."""

    cell: str = "lstm"
    layers: int = 1
    hidden: int = 128
    embed: int = 128
    bidirectional: bool = False
    dropout: float = 0.0
    word_dropout: float = 0.0  # classify, tag
    pooling: str = "last"  # classify
    chars: bool = True  # tag: character-level word features
    matmul_dtype: str = "float32"  # "bfloat16": mixed-precision recurrent matmuls
    tag: str = "upos"  # tag: the CoNLL-U column
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    schedule: str = "cosine"
    batch_size: int = 32
    seq_len: int = 64  # lm
    epochs: int | None = None
    time_budget: float | None = None
    seed: int = 0
    max_skips: int = 0  # non-finite steps a run may skip (not applied); the next one stops it


def flag(name: str) -> str:
    """The command-line option of the field ``name``: ``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + name.replace("_", "-")


def check_positive_int(name: str, value: Any) -> None:
    """Reject a ``value`` of the option ``name`` that is neither None nor an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{flag(name)}: expected a positive integer, got {value!r}")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Reject a ``value`` of the option ``name`` that is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{flag(name)}: expected one of {', '.join(allowed)}, got {value!r}")


def check_options(options: Options) -> None:
    """Reject impossible values of the options every task shares, naming the option."""
    for name in ("layers", "hidden", "embed", "batch_size", "epochs"):
        check_positive_int(name, getattr(options, name))
    skips = options.max_skips
    if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
        raise ValueError(f"--max-skips: expected an integer >= 0, got {skips!r}")
    for name in ("lr", "clip", "time_budget"):
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise ValueError(f"{flag(name)}: expected a positive number, got {value!r}")
    for name in ("dropout", "word_dropout"):
        rate = getattr(options, name)
        if not 0 <= rate < 1:
            raise ValueError(f"{flag(name)}: expected a number in [0, 1), got {rate!r}")
    check_choice("cell", options.cell, tuple(CELLS))
    check_choice("matmul_dtype", options.matmul_dtype, MATMUL_DTYPES)
    check_choice("optimizer", options.optimizer, OPTIMIZERS)
    check_choice("schedule", options.schedule, SCHEDULES)
