"""One-to-many generation from a language model: greedy, temperature and top-k sampling.

The model reads the prompt, then each sampled token is fed back as the next input, inside one
``jax.lax.scan`` (compiled once per model, length, temperature and ``top_k``). The same key
gives the same text. The ids are a :class:`jrnn.data.Vocab`'s: ``<pad>`` (id 0) is never drawn,
nor ``<unk>`` (id 1) unless asked for, whatever the cell, temperature and params (the draw is
among the other ids only, so not even NaN logits can pick them). The model is one that carries
its state from one call to the next, as :class:`jrnn.training.tasks.lm.LanguageModel`:
``model.apply(params, ids, carry)`` returns ``(logits, carry)``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn.training.generate import generate
    >>> from jrnn.training.tasks.lm import LanguageModel
    >>> model = LanguageModel(vocab_size=7, embed=4, hidden=8)
    >>> params = model.init(jax.random.key(0))
    >>> out = generate(model, params, jnp.array([2, 3]), 5, jax.random.key(1), top_k=3)
    >>> out.shape
    (5,)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jrnn.data import Vocab
from jrnn.training.model import Model


def sample_logits(
    key: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    first: int = 0,
) -> jax.Array:
    """Draw a token id in ``[first, V)`` from `logits (..., V)`: greedy when ``temperature == 0``.

    Otherwise sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` highest
    scores (all when None). The ids below ``first`` are never drawn. Returns `(...)` int32 ids.
    """
    logits = logits[..., first:]
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32) + first
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, jnp.full_like(logits, -jnp.inf), logits)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32) + first


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature", "top_k", "first"))
def _generate(model, params, prompt, key, *, length, temperature, top_k, first):
    def draw(key, logits):
        return sample_logits(key, logits, temperature=temperature, top_k=top_k, first=first)

    logits, carry = model.apply(params, prompt)
    token = draw(jax.random.fold_in(key, 0), logits[:, -1])

    def body(state, step):
        carry, token = state
        logits, carry = model.apply(params, token[:, None], carry)
        return (carry, draw(jax.random.fold_in(key, step), logits[:, 0])), token

    _, tokens = jax.lax.scan(body, (carry, token), jnp.arange(1, length + 1))
    return tokens.T  # (B, length)


def generate(
    model: Model,
    params: Any,
    prompt: jax.Array,
    length: int,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    allow_unk: bool = False,
) -> jax.Array:
    """Continue ``prompt`` by ``length`` tokens, never ``<pad>`` (nor ``<unk>`` unless
    ``allow_unk``).

    Args:
        model: a language model, one whose ``zero_carry`` is a state (a bidirectional model
            cannot generate: an auto-regressive model may not read the future it is writing).
        params: the model's params.
        prompt: `(P,)` or `(B, P)` token ids, ``P >= 1``.
        length: number of new tokens.
        key: PRNG key; the same key gives the same tokens.
        temperature: softmax temperature; 0 for greedy decoding.
        top_k: sample among the ``top_k`` most likely tokens only; None for all.
        allow_unk: whether ``<unk>`` (id 1) may be generated.

    Returns:
        `(length,)` or `(B, length)` int32 ids: the new tokens only.
    """
    if getattr(model, "bidirectional", False):
        raise ValueError(
            "model: cannot generate from a bidirectional model; an auto-regressive model feeds "
            "each output back as the next input, so it can only read the past (train a "
            "unidirectional LanguageModel)"
        )
    if not isinstance(model, Model) or model.zero_carry(params, 1) is None:
        raise TypeError(
            "model: expected a language model (a model that carries its state from one call "
            f"to the next), got {type(model).__name__}"
        )
    prompt = jnp.asarray(prompt)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] < 1:
        raise ValueError(f"prompt: expected (P,) or (B, P) ids with P >= 1, got {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise TypeError(f"prompt: expected integer ids, got dtype {prompt.dtype}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected a positive integer, got {length!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    first = Vocab.unk_id if allow_unk else Vocab.unk_id + 1  # the first id that may be drawn
    if model.vocab_size <= first:
        raise ValueError(
            f"model: a vocabulary of {model.vocab_size} ids holds no token to generate besides "
            "<pad> and <unk>"
        )
    drawn = model.vocab_size - first
    if top_k is not None and not 1 <= top_k <= drawn:
        raise ValueError(
            f"top_k: expected None or 1..{drawn} (the ids but <pad>"
            f"{'' if allow_unk else ' and <unk>'}), got {top_k!r}"
        )
    batched = prompt.reshape(-1, prompt.shape[-1]).astype(jnp.int32)
    tokens = _generate(
        model, params, batched, key,
        length=length, temperature=float(temperature), top_k=top_k, first=first,
    )  # fmt: skip
    return tokens if prompt.ndim == 2 else tokens[0]
