"""The three task models: language model, classifier and tagger, as immutable specs.

Each model is a frozen, hashable dataclass (usable as a static argument of ``jax.jit``) holding
only hyper-parameters. ``model.init(key)`` returns a params pytree
``{"embedding", "rnn", "head", ...}`` and ``model.apply(params, ...)`` is a pure function of it.
``model.forward(params, batch, carry, dropout_key=...)`` runs the model on a batch dict (as
:mod:`jrnn.tasks` builds them) and is what the training step calls.

``matmul_dtype="bfloat16"`` runs every recurrent matmul with bf16 operands and float32
accumulation (mixed precision, see :func:`jrnn.cells.mixed_einsum`); the default ``"float32"``
is exact.

Dropout (rate ``dropout``) is applied, when a ``dropout_key`` is given, to the embeddings,
between recurrent layers and to the recurrent outputs before the head. The classifier and the
tagger also take ``word_dropout``: in training, each word id becomes ``<unk>`` with that
probability, so that the model learns to cope with words it has never seen.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn.models import Classifier
    >>> model = Classifier(vocab_size=100, num_classes=2, embed=8, hidden=16)
    >>> params = model.init(jax.random.key(0))
    >>> ids = jnp.array([[5, 6, 7], [8, 9, 0]])
    >>> model.apply(params, ids, jnp.array([3, 2])).shape
    (2, 2)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jrnn import heads
from jrnn.data import Vocab
from jrnn.nn import GRU, LSTM, RNN, Spec
from jrnn.stack import dropout

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}

Batch = dict[str, jax.Array]


def _rnn(
    cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool, rate: float
) -> Spec:
    return CELLS[cell](
        input_size, hidden, num_layers=layers, dropout=rate, bidirectional=bidirectional
    )


def _drop(key: jax.Array | None, index: int, rate: float, x: jax.Array) -> jax.Array:
    if key is None or rate == 0:
        return x
    return dropout(jax.random.fold_in(key, index), rate, x)


def _drop_words(key: jax.Array | None, rate: float, ids: jax.Array) -> jax.Array:
    """Word dropout: replace each non-padding id by ``<unk>`` with probability ``rate``."""
    if key is None or rate == 0:
        return ids
    drop = jax.random.bernoulli(jax.random.fold_in(key, 3), rate, ids.shape)
    return jnp.where(drop & (ids != Vocab.pad_id), jnp.full_like(ids, Vocab.unk_id), ids)


MATMUL_DTYPES = ("float32", "bfloat16")


class _Model:
    """Validation and config round trips shared by the task models."""

    task: ClassVar[str]
    cell: str
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

    @property
    def _matmul(self) -> Any:
        return None if self.matmul_dtype == "float32" else jnp.dtype(self.matmul_dtype)

    def config(self) -> dict[str, Any]:
        """``{"task": ..., **fields}``, JSON-serialisable; inverse of :func:`from_config`."""
        return {"task": self.task, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class LanguageModel(_Model):
    """Auto-regressive model: embedding -> unidirectional stack -> per-step softmax over tokens.

    It cannot be bidirectional: each prediction may only read the tokens before it.
    """

    vocab_size: int
    embed: int = 64
    hidden: int = 256
    layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0
    matmul_dtype: str = "float32"
    task: ClassVar[str] = "lm"

    @property
    def rnn(self) -> Spec:
        return _rnn(self.cell, self.embed, self.hidden, self.layers, False, self.dropout)

    def init(self, key: jax.Array) -> dict[str, Any]:
        k_emb, k_rnn, k_head = jax.random.split(key, 3)
        return {
            "embedding": heads.embedding_init(k_emb, self.vocab_size, self.embed),
            "rnn": self.rnn.init(k_rnn),
            "head": heads.linear_init(k_head, self.hidden, self.vocab_size),
        }

    def zero_carry(self, batch_size: int) -> Any:
        """The all-zero state: `(layers, B, H)` (LSTM: a pair of them), ``h_n``'s layout."""
        h = jnp.zeros((self.layers, batch_size, self.hidden), jnp.float32)
        return (h, h) if self.cell == "lstm" else h

    def apply(
        self,
        params: dict[str, Any],
        ids: jax.Array,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Next-token logits.

        Args:
            params: from :meth:`init`.
            ids: `(B, T)` token ids.
            carry: state from the previous chunk (`(layers, B, H)`, a pair for LSTM); zeros
                when None.
            dropout_key: turns dropout on (training).

        Returns:
            ``(logits, carry)``: `(B, T, vocab_size)` and the state after the last step.
        """
        x = _drop(dropout_key, 0, self.dropout, heads.embed(params["embedding"], ids))
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        ys, carry = self.rnn.apply(
            params["rnn"], x, carry, dropout_key=key, matmul_dtype=self._matmul
        )
        ys = _drop(dropout_key, 2, self.dropout, ys)
        return heads.linear(params["head"], ys), carry

    def forward(
        self,
        params: dict[str, Any],
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """``apply`` on ``batch["ids"]``: returns ``(logits, carry)``."""
        return self.apply(params, batch["ids"], carry, dropout_key=dropout_key)


@dataclasses.dataclass(frozen=True)
class Classifier(_Model):
    """Many-to-one model: embedding -> stack -> pooling over time -> linear -> class logits."""

    vocab_size: int
    num_classes: int
    embed: int = 128
    hidden: int = 128
    layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = True
    dropout: float = 0.5
    pooling: str = "last"
    word_dropout: float = 0.0
    matmul_dtype: str = "float32"
    task: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in heads.POOLING:
            raise ValueError(f"pooling: expected one of {heads.POOLING}, got {self.pooling!r}")

    @property
    def rnn(self) -> Spec:
        return _rnn(
            self.cell, self.embed, self.hidden, self.layers, self.bidirectional, self.dropout
        )

    def init(self, key: jax.Array) -> dict[str, Any]:
        k_emb, k_rnn, k_head = jax.random.split(key, 3)
        rnn = self.rnn
        return {
            "embedding": heads.embedding_init(k_emb, self.vocab_size, self.embed),
            "rnn": rnn.init(k_rnn),
            "head": heads.linear_init(
                k_head, rnn.num_directions * rnn.output_size, self.num_classes
            ),
        }

    def apply(
        self,
        params: dict[str, Any],
        ids: jax.Array,
        lengths: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Class logits `(B, num_classes)` for padded `ids (B, T)` with `lengths (B,)`."""
        ids = _drop_words(dropout_key, self.word_dropout, ids)
        x = _drop(dropout_key, 0, self.dropout, heads.embed(params["embedding"], ids))
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        rnn = self.rnn
        ys, _ = rnn.apply(
            params["rnn"], x, lengths=lengths, dropout_key=key, matmul_dtype=self._matmul
        )
        pooled = heads.pool(ys, lengths, mode=self.pooling, num_directions=rnn.num_directions)
        return heads.linear(params["head"], _drop(dropout_key, 2, self.dropout, pooled))

    def forward(
        self,
        params: dict[str, Any],
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """``apply`` on ``batch["ids"]``, ``batch["lengths"]``: returns ``(logits, None)``."""
        return self.apply(params, batch["ids"], batch["lengths"], dropout_key=dropout_key), None


@dataclasses.dataclass(frozen=True)
class Tagger(_Model):
    """Many-to-many tagger: word embedding (+ character features) -> stack -> per-step logits.

    With ``char_vocab_size > 0`` each word is also read character by character by a small
    bidirectional LSTM (``char_hidden`` units per direction), whose final states are concatenated
    to the word embedding, so that words never seen in training still get informative features.
    """

    vocab_size: int
    num_tags: int
    char_vocab_size: int = 0
    embed: int = 100
    hidden: int = 128
    layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = True
    dropout: float = 0.33
    char_embed: int = 64
    char_hidden: int = 128
    word_dropout: float = 0.0
    matmul_dtype: str = "float32"
    task: ClassVar[str] = "tag"

    @property
    def char_rnn(self) -> Spec:
        return LSTM(self.char_embed, self.char_hidden, bidirectional=True)

    @property
    def rnn(self) -> Spec:
        size = self.embed + (2 * self.char_hidden if self.char_vocab_size else 0)
        return _rnn(self.cell, size, self.hidden, self.layers, self.bidirectional, self.dropout)

    def init(self, key: jax.Array) -> dict[str, Any]:
        k_emb, k_rnn, k_head, k_chars, k_char_rnn = jax.random.split(key, 5)
        rnn = self.rnn
        params = {
            "embedding": heads.embedding_init(k_emb, self.vocab_size, self.embed),
            "rnn": rnn.init(k_rnn),
            "head": heads.linear_init(k_head, rnn.num_directions * rnn.output_size, self.num_tags),
        }
        if self.char_vocab_size:
            params["char_embedding"] = heads.embedding_init(
                k_chars, self.char_vocab_size, self.char_embed
            )
            params["char_rnn"] = self.char_rnn.init(k_char_rnn)
        return params

    def apply(
        self,
        params: dict[str, Any],
        ids: jax.Array,
        lengths: jax.Array,
        chars: jax.Array | None = None,
        char_index: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Tag logits.

        Args:
            params: from :meth:`init`.
            ids: `(B, T)` word ids.
            lengths: `(B,)` sentence lengths in ``[1, T]``.
            chars: `(U, W)` character ids of the batch's distinct word forms, right-padded
                with 0; required when the model has a character encoder.
            char_index: `(B, T)` row of ``chars`` holding each position's word.
            dropout_key: turns dropout on (training).

        Returns:
            `(B, T, num_tags)`.
        """
        x = heads.embed(params["embedding"], _drop_words(dropout_key, self.word_dropout, ids))
        if self.char_vocab_size:
            if chars is None or jnp.ndim(chars) != 2 or char_index is None:
                raise ValueError(
                    "chars: expected character ids of shape (U, W) and char_index of shape "
                    f"{ids.shape}, got {None if chars is None else jnp.shape(chars)} and "
                    f"{None if char_index is None else jnp.shape(char_index)}"
                )
            if jnp.shape(char_index) != ids.shape:
                raise ValueError(
                    f"char_index: expected shape {ids.shape} (that of ids), "
                    f"got {jnp.shape(char_index)}"
                )
            x = jnp.concatenate([x, self._char_features(params, chars)[char_index]], axis=-1)
        x = _drop(dropout_key, 0, self.dropout, x)
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        ys, _ = self.rnn.apply(
            params["rnn"], x, lengths=lengths, dropout_key=key, matmul_dtype=self._matmul
        )
        return heads.linear(params["head"], _drop(dropout_key, 2, self.dropout, ys))

    def _char_features(self, params: dict[str, Any], chars: jax.Array) -> jax.Array:
        """`(U, W)` character ids -> `(U, 2*char_hidden)` final states of the char BiLSTM."""
        lengths = jnp.maximum((chars != 0).sum(axis=1), 1).astype(jnp.int32)
        ys, _ = self.char_rnn.apply(
            params["char_rnn"],
            heads.embed(params["char_embedding"], chars),
            lengths=lengths,
            matmul_dtype=self._matmul,
        )
        return heads.pool(ys, lengths, mode="last", num_directions=2)

    def forward(
        self,
        params: dict[str, Any],
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """``apply`` on a batch dict (``"chars"`` optional): returns ``(logits, None)``."""
        logits = self.apply(
            params,
            batch["ids"],
            batch["lengths"],
            batch.get("chars"),
            batch.get("char_index"),
            dropout_key=dropout_key,
        )
        return logits, None


Model = LanguageModel | Classifier | Tagger

MODELS = {cls.task: cls for cls in (LanguageModel, Classifier, Tagger)}


def from_config(config: dict[str, Any]) -> Model:
    """Rebuild a model from :meth:`config`'s dict (e.g. as stored in a checkpoint)."""
    config = dict(config)
    task = config.pop("task", None)
    if task not in MODELS:
        raise ValueError(f"config: expected a task in {sorted(MODELS)}, got {task!r}")
    names = {f.name for f in dataclasses.fields(MODELS[task])}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"config: unknown fields {unknown} for task {task!r}")
    return MODELS[task](**config)
