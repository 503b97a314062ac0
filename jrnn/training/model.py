"""The base of the task models, and the registry of the recurrent cells they are built from.

Each task (:mod:`jrnn.training.tasks`) has one model: a frozen, hashable dataclass of
hyper-parameters only (usable as a static argument of ``jax.jit``), built by keyword only, so
that no reordering of its fields can swap two hyper-parameters. It subclasses :class:`Model`,
the interface the training steps call:

- ``model.init(key)``: a params pytree ``{"embedding", "rnn", "head", ...}``;
- ``model.forward(params, batch, carry, *, dropout_key=None)``: ``(logits, carry)`` for a
  :data:`~jrnn.training.batches.Batch`;
- ``model.zero_carry(params, batch_size)``: the state a model carries from one batch to the
  next (a language model, trained with truncated BPTT), or None when batches are independent;
- ``model.config()``: a JSON-ready dict that rebuilds the model
  (:func:`jrnn.training.tasks.model_from_config`).

The recurrent stack is ``CELLS[model.cell]``, one of jrnn's specs: a new cell is one more entry
of :data:`CELLS`. ``matmul_dtype="bfloat16"`` gives every recurrent matmul bf16 operands with
float32 accumulation (mixed precision); the default ``"float32"`` is exact.

Dropout (rate ``dropout``) is applied, when a ``dropout_key`` is given, to the embeddings,
between recurrent layers and to the recurrent outputs before the head (:func:`drop`). Word
dropout (:func:`drop_words`) reads words as ``<unk>`` in training, so that a model learns to
cope with words it has never seen.

Example:
    >>> import jax
    >>> from jrnn.training.tasks.classify import Classifier
    >>> model = Classifier(vocab_size=100, num_classes=2, embed=8, hidden=16, cell="gru")
    >>> spec = model.stack(8, bidirectional=True)
    >>> type(spec).__name__, spec.num_directions, spec.output_size
    ('GRU', 2, 16)
    >>> model.config()["cell"], model.zero_carry(model.init(jax.random.key(0)), 4) is None
    ('gru', True)
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

import jrnn
from jrnn.data import Vocab
from jrnn.stack import dropout
from jrnn.training.batches import Batch

CELLS = {
    "rnn": jrnn.RNN,
    "lstm": jrnn.LSTM,
    "gru": jrnn.GRU,
    "mingru": jrnn.MinGRU,
    "minlstm": jrnn.MinLSTM,
    "lru": jrnn.LRU,
}
MATMUL_DTYPES = ("float32", "bfloat16")

Params = dict[str, Any]


class Model(abc.ABC):
    """The base of the task models: checks of the common fields, config round trip, the stack.

    Subclasses are ``dataclasses.dataclass(frozen=True, kw_only=True)`` with the fields
    ``cell``, ``hidden``, ``layers``, ``dropout`` and ``matmul_dtype`` among theirs, and set
    the class variable ``task`` to their task's name.
    """

    task: ClassVar[str]
    cell: str
    hidden: int
    layers: int
    dropout: float
    matmul_dtype: str

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{f.name}: expected an integer, got {value!r}")
            if f.type == "int" and value < (0 if f.name == "char_vocab_size" else 1):
                raise ValueError(f"{f.name}: expected a positive integer, got {value!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {self.cell!r}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(
                f"matmul_dtype: expected one of {MATMUL_DTYPES}, got {self.matmul_dtype!r}"
            )
        for name in ("dropout", "word_dropout"):
            rate = getattr(self, name, 0.0)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1), got {rate!r}")

    @abc.abstractmethod
    def init(self, key: jax.Array) -> Params:
        """Fresh params for ``key``."""

    @abc.abstractmethod
    def forward(
        self,
        params: Params,
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """``(logits, carry)`` for ``batch``; ``dropout_key`` turns dropout on (training)."""

    def zero_carry(self, params: Params, batch_size: int | None) -> Any:
        """The state carried into the first batch: None, batches being independent."""
        return None

    def config(self) -> dict[str, Any]:
        """``{"task": ..., **fields}``, JSON-serialisable; inverse of ``model_from_config``."""
        return {"task": self.task, **dataclasses.asdict(self)}

    def stack(self, input_size: int, *, bidirectional: bool) -> Any:
        """The recurrent stack, a jrnn spec: ``CELLS[cell]`` of ``layers`` x ``hidden`` units."""
        return CELLS[self.cell](
            input_size,
            self.hidden,
            num_layers=self.layers,
            dropout=self.dropout,
            bidirectional=bidirectional,
        )

    @property
    def _matmul(self) -> Any:
        """The ``matmul_dtype`` argument of the stack's ``apply``: None for exact float32."""
        return None if self.matmul_dtype == "float32" else jnp.dtype(self.matmul_dtype)


def drop(key: jax.Array | None, index: int, rate: float, x: jax.Array) -> jax.Array:
    """Dropout at ``rate`` with the key ``fold_in(key, index)``; ``x`` itself without a key."""
    if key is None or rate == 0:
        return x
    return dropout(jax.random.fold_in(key, index), rate, x)


def drop_words(key: jax.Array | None, rate: float, ids: jax.Array) -> jax.Array:
    """Word dropout: replace each non-padding id by ``<unk>`` with probability ``rate``."""
    if key is None or rate == 0:
        return ids
    drop_here = jax.random.bernoulli(jax.random.fold_in(key, 3), rate, ids.shape)
    return jnp.where(drop_here & (ids != Vocab.pad_id), jnp.full_like(ids, Vocab.unk_id), ids)
