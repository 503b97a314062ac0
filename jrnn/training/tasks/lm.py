"""The character language model task: ``jrnn train lm``.

- Data: one UTF-8 text (Python's own documentation topics, ``pydoc_data``, when none is given);
  its first 90% trains, the rest validates (:func:`split_text`).
- Vocabulary: ``"chars"``, the characters of the training text.
- Batches: ``ids`` and ``targets`` `(B, S)` (:func:`batches`), consecutive chunks of ``B``
  parallel streams, so that the state at the end of a chunk starts the next one (truncated
  BPTT).
- Model: :class:`LanguageModel`, embedding -> unidirectional stack -> per-step softmax.
- Metrics: loss, accuracy and bits per character; a finished run adds a sample of its text.

Example:
    >>> import jax
    >>> from jrnn.data import Vocab
    >>> from jrnn.training.tasks import lm
    >>> chars = Vocab.build("abcdefghi")
    >>> batch = next(lm.batches(chars.encode("abcdefghi"), 2, 4))  # streams abcd, efgh
    >>> "".join(chars.decode(batch["ids"][1])), "".join(chars.decode(batch["targets"][1]))
    ('efgh', 'fghi')
    >>> model = lm.LanguageModel(vocab_size=len(chars), embed=4, hidden=8, cell="gru")
    >>> params = model.init(jax.random.key(0))
    >>> logits, carry = model.forward(params, batch, model.zero_carry(params, 2))
    >>> logits.shape, carry.shape
    ((2, 4, 11), (1, 2, 8))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import typer

from jrnn import heads
from jrnn.data import Vocab, lm_stream_batches, read_text
from jrnn.losses import bits_per_char
from jrnn.training.batches import Batch, TaskData
from jrnn.training.generate import generate
from jrnn.training.model import Model, Params, drop
from jrnn.training.options import Options, check_positive_int

NAME = "lm"
HELP = "Character-level language model; trains for 60 s unless --epochs or --time-budget."
DEFAULTS = Options(layers=1, hidden=256, embed=64, batch_size=32, seq_len=64)
DEFAULT_TIME_BUDGET = 60.0  # seconds, when neither epochs nor a time budget is given
VALIDATE_EACH_EPOCH = False
RESUME_OPTIONS = ("seq_len",)
SAMPLE_PROMPT = "\n"  # of the sample a finished run writes


def cli_options(
    text: Annotated[
        Path | None, typer.Option(help="UTF-8 text (default: Python's own pydoc_data.topics).")
    ] = None,
    seq_len: Annotated[int | None, typer.Option(help="Truncated-BPTT chunk length.")] = None,
) -> tuple[dict[str, Path | None], dict[str, Any]]:
    """The options of ``jrnn train lm`` beyond the common ones: ``(files, options)``."""
    return {"text": text}, {"seq_len": seq_len}


def check(options: Options) -> None:
    """Reject options a language model cannot take, naming the option."""
    if options.bidirectional:
        raise ValueError(
            "--bidirectional: a language model cannot be bidirectional (it generates left to "
            "right, each output being the next input, so it may not read ahead)"
        )
    if options.word_dropout:
        raise ValueError("--word-dropout: a language model reads its own text; not for lm")
    check_positive_int("seq_len", options.seq_len)


# -- data -------------------------------------------------------------------------------------


def default_text() -> str:
    """The English text that ships with Python: its documentation topics (``pydoc_data``)."""
    from pydoc_data.topics import topics

    return "\n".join(topics.values())


def split_text(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """The first ``1 - valid_fraction`` of the characters for training, the rest for validation."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: expected a number in (0, 1), got {valid_fraction!r}")
    cut = round(len(text) * (1.0 - valid_fraction))
    return text[:cut], text[cut:]


def num_batches(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """Number of batches :func:`batches` yields for a stream of ``num_tokens`` tokens."""
    return (num_tokens - 1) // batch_size // seq_len


def batches(ids: np.ndarray, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Consecutive `(B, S)` chunks of ``batch_size`` parallel streams (``lm_stream_batches``)."""
    for inputs, targets in lm_stream_batches(ids, batch_size, seq_len):
        yield {"ids": inputs, "targets": targets}


def _eval_rows(num_tokens: int, options: Options, devices: int, name: str) -> int:
    rows = min(options.batch_size, (num_tokens - 1) // options.seq_len) // devices * devices
    if rows < 1:
        raise ValueError(
            f"{name}: text too short to evaluate: {num_tokens} characters, need at least "
            f"{devices * options.seq_len + 1} for seq_len={options.seq_len}"
        )
    return rows


def read(
    files: dict[str, Path | None],
    options: Options,
    vocabs: dict[str, Vocab] | None = None,
    devices: int = 1,
) -> TaskData:
    """Read ``files["text"]`` and cut it into batches; the vocabulary is built when None.

    The validation batches have at most ``batch_size`` rows, a multiple of ``devices``.
    """
    path = files.get("text")
    text = default_text() if path is None else read_text(path)
    name = str(path or "pydoc_data.topics")
    train_text, valid_text = split_text(text)
    vocabs = vocabs or {"chars": Vocab.build(train_text)}
    train_ids, valid_ids = (vocabs["chars"].encode(t) for t in (train_text, valid_text))
    b, seq_len = options.batch_size, options.seq_len
    steps = num_batches(len(train_ids), b, seq_len)
    if steps < 1:
        raise ValueError(
            f"{name}: text too short: {len(train_ids)} training characters, need at least "
            f"batch_size * seq_len + 1 = {b * seq_len + 1}"
        )
    rows = _eval_rows(len(valid_ids), options, devices, f"{name} (last 10%)")
    return TaskData(
        vocabs=vocabs,
        train_batches=lambda epoch: batches(train_ids, b, seq_len),
        steps_per_epoch=steps,
        eval_batches={"valid": lambda: batches(valid_ids, rows, seq_len)},
        eval_rows=rows,
    )


def read_eval(
    path: Path, options: Options, vocabs: dict[str, Vocab]
) -> tuple[Iterator[Batch], int]:
    """The batches of the whole text in ``path`` and their number of rows."""
    ids = vocabs["chars"].encode(read_text(path))
    rows = _eval_rows(len(ids), options, 1, str(path))
    return batches(ids, rows, options.seq_len), rows


# -- model ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModel(Model):
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
    task: ClassVar[str] = NAME

    @property
    def rnn(self) -> Any:
        return self.stack(self.embed, bidirectional=False)

    def init(self, key: jax.Array) -> Params:
        k_emb, k_rnn, k_head = jax.random.split(key, 3)
        return {
            "embedding": heads.embedding_init(k_emb, self.vocab_size, self.embed),
            "rnn": self.rnn.init(k_rnn),
            "head": heads.linear_init(k_head, self.rnn.output_size, self.vocab_size),
        }

    def zero_carry(self, params: Params, batch_size: int | None) -> Any:
        """The all-zero state in ``h_n``'s layout: the cell's carry with leaves `(layers, B, H)`
        (for LSTM ``(h, c)``)."""
        if batch_size is None:
            raise ValueError("batch_size: a language model's state needs the batch size, got None")
        layer = params["rnn"][0][0]  # every layer's state has the same shape
        return self.rnn.cell.zero_carry(layer, (self.layers, batch_size), jnp.float32)

    def apply(
        self,
        params: Params,
        ids: jax.Array,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Next-token logits.

        Args:
            params: from :meth:`init`.
            ids: `(B, T)` token ids.
            carry: the state after the previous chunk (see :meth:`zero_carry`); zeros when
                None.
            dropout_key: turns dropout on (training).

        Returns:
            ``(logits, carry)``: `(B, T, vocab_size)` and the state after the last step.
        """
        x = drop(dropout_key, 0, self.dropout, heads.embed(params["embedding"], ids))
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
        ys, carry = self.rnn.apply(
            params["rnn"], x, carry, dropout_key=key, matmul_dtype=self._matmul
        )
        ys = drop(dropout_key, 2, self.dropout, ys)
        return heads.linear(params["head"], ys), carry

    def forward(
        self,
        params: Params,
        batch: Batch,
        carry: Any = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """:meth:`apply` on ``batch["ids"]``: returns ``(logits, carry)``."""
        return self.apply(params, batch["ids"], carry, dropout_key=dropout_key)


MODEL = LanguageModel


def build_model(options: Options, vocabs: dict[str, Vocab]) -> LanguageModel:
    """The language model of ``options`` over the ``"chars"`` vocabulary."""
    return LanguageModel(
        vocab_size=len(vocabs["chars"]),
        embed=options.embed,
        hidden=options.hidden,
        layers=options.layers,
        cell=options.cell,
        dropout=options.dropout,
        matmul_dtype=options.matmul_dtype,
    )


# -- metrics and samples ----------------------------------------------------------------------


def derived_metrics(loss: float) -> dict[str, float]:
    """Metrics computed from an evaluation's mean loss: ``bpc``, bits per character."""
    return {"bpc": float(bits_per_char(loss))}


def final_outputs(model: LanguageModel, params: Params, vocabs: dict[str, Vocab]) -> dict:
    """What a finished run adds to its metrics: ``sample``, a text the model generated."""
    return {"sample": SAMPLE_PROMPT + sample_text(model, params, vocabs, SAMPLE_PROMPT)}


def sample_text(
    model: LanguageModel,
    params: Params,
    vocabs: dict[str, Vocab],
    prompt: str,
    *,
    length: int = 300,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    allow_unk: bool = False,
) -> str:
    """Continue ``prompt`` (unknown characters read as ``<unk>``) and return the new text: never
    ``<pad>``, nor ``<unk>`` unless ``allow_unk``."""
    if not prompt:
        raise ValueError("--prompt: expected at least one character, got an empty prompt")
    chars = vocabs["chars"]
    ids = generate(
        model, params, chars.encode(prompt), length, jax.random.key(seed),
        temperature=temperature, top_k=top_k, allow_unk=allow_unk,
    )  # fmt: skip
    return "".join(chars.decode(np.asarray(ids)))
