"""Sentence classification (many-to-one): ``jrnn train classify``.

- Data: TSV files of ``label<TAB>text`` lines: ``train``, ``valid`` and optionally ``test``.
- Vocabularies: ``"words"`` (the training words seen at least twice; the others read as
  ``<unk>``) and ``"labels"``.
- Batches: ``ids`` `(B, T)`, ``lengths`` `(B,)`, ``targets`` `(B,)` and ``mask`` `(B,)` (0 on
  the filler rows of a short final batch), padded to a few bucket lengths.
- Model: :class:`Classifier`, embedding -> stack -> pooling over time -> linear.
- Metrics: loss and accuracy.

Example:
    >>> import jax
    >>> from jrnn.training.tasks import classify
    >>> vocabs = classify.build_vocabs(["a good film", "a bad film"] * 2, ["pos", "neg"] * 2)
    >>> items = classify.encode(["a good film", "bad"], ["pos", "neg"], vocabs)
    >>> batch = next(classify.batches(items, 4, seed=0, shuffle=False))
    >>> batch["ids"].shape, batch["mask"].tolist()
    ((4, 3), [1.0, 1.0, 0.0, 0.0])
    >>> model = classify.Classifier(vocab_size=len(vocabs["words"]), num_classes=2, hidden=8)
    >>> model.forward(model.init(jax.random.key(0)), batch)[0].shape
    (4, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import jax
import numpy as np
import typer

from jrnn import heads
from jrnn.data import Vocab, batching, read_tsv, tokenize_words
from jrnn.training.batches import Batch, TaskData, fill_rows, sentence_data
from jrnn.training.model import Model, Params, drop, drop_words
from jrnn.training.options import Options, check_choice

NAME = "classify"
HELP = "Sentence classification (many-to-one): embedding, recurrent stack, pooling, softmax."
DEFAULTS = Options(
    hidden=128,
    embed=128,
    bidirectional=True,
    dropout=0.5,
    word_dropout=0.2,
    pooling="max",
    epochs=15,
)
DEFAULT_TIME_BUDGET = None
VALIDATE_EACH_EPOCH = True
RESUME_OPTIONS = ()


def cli_options(
    train: Annotated[Path, typer.Option(help="TSV file of label<TAB>text lines.")],
    valid: Annotated[Path, typer.Option(help="Validation TSV file.")],
    test: Annotated[Path | None, typer.Option(help="Test TSV file.")] = None,
    pooling: Annotated[
        str | None, typer.Option(help="last, mean or max over time (default: max).")
    ] = None,
) -> tuple[dict[str, Path | None], dict[str, Any]]:
    """The options of ``jrnn train classify`` beyond the common ones: ``(files, options)``."""
    return {"train": train, "valid": valid, "test": test}, {"pooling": pooling}


def check(options: Options) -> None:
    """Reject options a classifier cannot take, naming the option."""
    check_choice("pooling", options.pooling, heads.POOLING)


# -- data -------------------------------------------------------------------------------------


def build_vocabs(texts: Sequence[str], labels: Sequence[str]) -> dict[str, Vocab]:
    """The ``"words"`` (seen at least twice) and ``"labels"`` vocabularies of training data."""
    return {
        "words": Vocab.build((w for text in texts for w in tokenize_words(text)), min_count=2),
        "labels": Vocab.build(labels),
    }


def encode(
    texts: Sequence[str], labels: Sequence[str], vocabs: dict[str, Vocab]
) -> list[tuple[np.ndarray, int]]:
    """``(word ids, label id)`` per text; a text with no word becomes one unknown word."""
    words = vocabs["words"]
    items = []
    for text, label in zip(texts, labels, strict=True):
        ids = words.encode(tokenize_words(text))
        if ids.shape[0] == 0:
            ids = np.array([words.unk_id], dtype=np.int32)
        items.append((ids, int(vocabs["labels"].encode([label])[0])))
    return items


def batches(
    items: Sequence[tuple[np.ndarray, int]],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    buckets: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Padded classification batches of exactly ``batch_size`` rows."""
    for ids, lengths, labels in batching.batches(
        items, batch_size, seed=seed, shuffle=shuffle, buckets=buckets
    ):
        batch = {"ids": ids, "lengths": lengths, "targets": labels}
        batch["mask"] = np.ones(labels.shape, np.float32)
        yield fill_rows(batch, batch_size)


def read(
    files: dict[str, Path | None],
    options: Options,
    vocabs: dict[str, Vocab] | None = None,
    devices: int = 1,
) -> TaskData:
    """Read the TSV file of each split (None: no such split); vocabularies are built when None.

    Every batch has ``batch_size`` rows, whatever the number of ``devices``.
    """
    splits = {k: read_tsv(p) for k, p in files.items() if p is not None}
    vocabs = vocabs or build_vocabs(*splits["train"])
    items = {k: encode(texts, labels, vocabs) for k, (texts, labels) in splits.items()}
    lengths = {k: [len(ids) for ids, _ in v] for k, v in items.items()}
    return sentence_data(
        vocabs, items, lengths, batches, batch_size=options.batch_size, seed=options.seed
    )


def read_eval(
    path: Path, options: Options, vocabs: dict[str, Vocab]
) -> tuple[Iterator[Batch], int]:
    """The batches of the TSV file ``path`` and their number of rows."""
    data = read({"eval": path}, options, vocabs)
    return data.eval_batches["eval"](), data.eval_rows


# -- model ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Classifier(Model):
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
    task: ClassVar[str] = NAME

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in heads.POOLING:
            raise ValueError(f"pooling: expected one of {heads.POOLING}, got {self.pooling!r}")

    @property
    def rnn(self) -> Any:
        return self.stack(self.embed, bidirectional=self.bidirectional)

    def init(self, key: jax.Array) -> Params:
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
        params: Params,
        ids: jax.Array,
        lengths: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Class logits `(B, num_classes)` for padded `ids (B, T)` with `lengths (B,)`."""
        ids = drop_words(dropout_key, self.word_dropout, ids)
        x = drop(dropout_key, 0, self.dropout, heads.embed(params["embedding"], ids))
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        rnn = self.rnn
        ys, _ = rnn.apply(
            params["rnn"], x, lengths=lengths, dropout_key=key, matmul_dtype=self._matmul
        )
        pooled = heads.pool(ys, lengths, mode=self.pooling, num_directions=rnn.num_directions)
        return heads.linear(params["head"], drop(dropout_key, 2, self.dropout, pooled))

    def forward(
        self,
        params: Params,
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """:meth:`apply` on ``batch["ids"]``, ``batch["lengths"]``: returns ``(logits, None)``."""
        return self.apply(params, batch["ids"], batch["lengths"], dropout_key=dropout_key), None


MODEL = Classifier


def build_model(options: Options, vocabs: dict[str, Vocab]) -> Classifier:
    """The classifier of ``options`` over the ``"words"`` and ``"labels"`` vocabularies."""
    return Classifier(
        vocab_size=len(vocabs["words"]),
        num_classes=len(vocabs["labels"]),
        embed=options.embed,
        hidden=options.hidden,
        layers=options.layers,
        cell=options.cell,
        bidirectional=options.bidirectional,
        dropout=options.dropout,
        pooling=options.pooling,
        word_dropout=options.word_dropout,
        matmul_dtype=options.matmul_dtype,
    )


# -- metrics ----------------------------------------------------------------------------------


def derived_metrics(loss: float) -> dict[str, float]:
    """Metrics computed from an evaluation's mean loss: none beyond loss and accuracy."""
    return {}


def final_outputs(model: Classifier, params: Params, vocabs: dict[str, Vocab]) -> dict:
    """What a finished run adds to its metrics: nothing."""
    return {}
