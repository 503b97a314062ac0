"""Sequence tagging (many-to-many), e.g. part of speech: ``jrnn train tag``.

- Data: CoNLL-U files, ``train``, ``valid`` and optionally ``test``; the tags of the ``upos``
  or ``xpos`` column.
- Vocabularies: ``"words"`` (lower-cased, seen at least twice in training), ``"chars"`` and
  ``"tags"`` (:func:`build_vocabs`).
- Batches: ``ids``, ``targets``, ``mask`` `(B, T)`, ``lengths`` `(B,)`, and the characters of
  the batch's distinct words: ``chars`` `(U, W)` with ``char_index`` `(B, T)`, the row of
  ``chars`` of each position. ``U`` is ``B`` times a power of two, so it takes few values.
- Model: :class:`Tagger`, word embedding (+ character features) -> stack -> per-step logits.
- Metrics: loss and accuracy over the words.

Example:
    >>> import jax
    >>> from jrnn.training.tasks import tag
    >>> sentences = [("The cat sat".split(), ["DET", "NOUN", "VERB"]),
    ...              ("A cat".split(), ["DET", "NOUN"])]
    >>> vocabs = tag.build_vocabs(sentences, min_count=1)
    >>> batch = next(tag.batches(tag.encode(sentences, vocabs), 2, seed=0, shuffle=False))
    >>> batch["ids"].shape, batch["chars"].shape, batch["char_index"].tolist()
    ((2, 3), (8, 16), [[1, 2, 3], [4, 2, 0]])
    >>> model = tag.Tagger(vocab_size=len(vocabs["words"]), num_tags=len(vocabs["tags"]),
    ...                    char_vocab_size=len(vocabs["chars"]), hidden=8)
    >>> model.forward(model.init(jax.random.key(0)), batch)[0].shape
    (2, 3, 5)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import typer

import jrnn
from jrnn import heads
from jrnn.data import Vocab, batching, read_conllu
from jrnn.training.batches import Batch, TaskData, fill_rows, sentence_data
from jrnn.training.model import Model, Params, drop, drop_words
from jrnn.training.options import Options, check_choice

NAME = "tag"
HELP = "Sequence tagging (many-to-many), e.g. part-of-speech tags from CoNLL-U files."
DEFAULTS = Options(
    hidden=128, embed=100, bidirectional=True, dropout=0.33, batch_size=32, epochs=25
)
DEFAULT_TIME_BUDGET = None
VALIDATE_EACH_EPOCH = True
RESUME_OPTIONS = ("tag",)
COLUMNS = ("upos", "xpos")  # the CoNLL-U columns of tags


def cli_options(
    train: Annotated[Path, typer.Option(help="CoNLL-U training file.")],
    valid: Annotated[Path, typer.Option(help="CoNLL-U validation file.")],
    test: Annotated[Path | None, typer.Option(help="CoNLL-U test file.")] = None,
    tag: Annotated[str | None, typer.Option(help="upos or xpos column.")] = None,
    chars: Annotated[
        bool | None, typer.Option(help="Character-level word features (on by default).")
    ] = None,
) -> tuple[dict[str, Path | None], dict[str, Any]]:
    """The options of ``jrnn train tag`` beyond the common ones: ``(files, options)``."""
    return {"train": train, "valid": valid, "test": test}, {"tag": tag, "chars": chars}


def check(options: Options) -> None:
    """Reject options a tagger cannot take, naming the option."""
    check_choice("tag", options.tag, COLUMNS)


# -- data -------------------------------------------------------------------------------------


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


def build_vocabs(
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


def encode(
    sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
    vocabs: dict[str, Vocab],
    *,
    max_word_len: int = 16,
) -> TagData:
    """Encode sentences with the vocabularies of :func:`build_vocabs`.

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


def batches(
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
    for types, lengths, tags in batching.batches(
        data.items, batch_size, seed=seed, shuffle=shuffle, buckets=buckets
    ):
        mask = np.arange(types.shape[1])[None, :] < lengths[:, None]
        batch = {"types": types, "lengths": lengths, "targets": tags, "mask": mask}
        batch = fill_rows(batch, batch_size)
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


def read(
    files: dict[str, Path | None],
    options: Options,
    vocabs: dict[str, Vocab] | None = None,
    devices: int = 1,
) -> TaskData:
    """Read the CoNLL-U file of each split (None: no such split); vocabularies are built when
    None.

    Every batch has ``batch_size`` rows, whatever the number of ``devices``.
    """
    splits = {k: read_conllu(p, tag=options.tag) for k, p in files.items() if p is not None}
    vocabs = vocabs or build_vocabs(splits["train"])
    items = {k: encode(s, vocabs) for k, s in splits.items()}
    lengths = {k: [len(ids) for ids, _ in v.items] for k, v in items.items()}
    return sentence_data(
        vocabs, items, lengths, batches, batch_size=options.batch_size, seed=options.seed
    )


def read_eval(
    path: Path, options: Options, vocabs: dict[str, Vocab]
) -> tuple[Iterator[Batch], int]:
    """The batches of the CoNLL-U file ``path`` and their number of rows."""
    data = read({"eval": path}, options, vocabs)
    return data.eval_batches["eval"](), data.eval_rows


# -- model ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tagger(Model):
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
    task: ClassVar[str] = NAME

    @property
    def char_rnn(self) -> jrnn.LSTM:
        return jrnn.LSTM(self.char_embed, self.char_hidden, bidirectional=True)

    @property
    def rnn(self) -> Any:
        size = self.embed + (2 * self.char_hidden if self.char_vocab_size else 0)
        return self.stack(size, bidirectional=self.bidirectional)

    def init(self, key: jax.Array) -> Params:
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
        params: Params,
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
        x = heads.embed(params["embedding"], drop_words(dropout_key, self.word_dropout, ids))
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
        x = drop(dropout_key, 0, self.dropout, x)
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        ys, _ = self.rnn.apply(
            params["rnn"], x, lengths=lengths, dropout_key=key, matmul_dtype=self._matmul
        )
        return heads.linear(params["head"], drop(dropout_key, 2, self.dropout, ys))

    def _char_features(self, params: Params, chars: jax.Array) -> jax.Array:
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
        params: Params,
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """:meth:`apply` on a batch (``"chars"`` optional): returns ``(logits, None)``."""
        logits = self.apply(
            params,
            batch["ids"],
            batch["lengths"],
            batch.get("chars"),
            batch.get("char_index"),
            dropout_key=dropout_key,
        )
        return logits, None


MODEL = Tagger


def build_model(options: Options, vocabs: dict[str, Vocab]) -> Tagger:
    """The tagger of ``options`` over the ``"words"``, ``"tags"`` (and ``"chars"``) vocabularies;
    character features only with ``options.chars``."""
    return Tagger(
        vocab_size=len(vocabs["words"]),
        num_tags=len(vocabs["tags"]),
        char_vocab_size=len(vocabs["chars"]) if options.chars else 0,
        embed=options.embed,
        hidden=options.hidden,
        layers=options.layers,
        cell=options.cell,
        bidirectional=options.bidirectional,
        dropout=options.dropout,
        word_dropout=options.word_dropout,
        matmul_dtype=options.matmul_dtype,
    )


# -- metrics ----------------------------------------------------------------------------------


def derived_metrics(loss: float) -> dict[str, float]:
    """Metrics computed from an evaluation's mean loss: none beyond loss and accuracy."""
    return {}


def final_outputs(model: Tagger, params: Params, vocabs: dict[str, Vocab]) -> dict:
    """What a finished run adds to its metrics: nothing."""
    return {}
