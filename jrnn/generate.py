"""One-to-many generation from a language model: greedy, temperature and top-k sampling.

The model reads the prompt, then each sampled token is fed back as the next input, inside one
``jax.lax.scan`` (compiled once per model, length, temperature and ``top_k``). The same key
gives the same text.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn.models import LanguageModel
    >>> from jrnn.generate import generate
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

from jrnn.models import LanguageModel


def sample_logits(
    key: jax.Array, logits: jax.Array, *, temperature: float = 1.0, top_k: int | None = None
) -> jax.Array:
    """Draw a token id from `logits (..., V)`: greedy when ``temperature == 0``.

    Otherwise sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` highest
    scores (all when None). Returns `(...)` int32 ids.
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, jnp.full_like(logits, -jnp.inf), logits)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "temperature", "top_k"))
def _generate(model, params, prompt, key, *, length, temperature, top_k):
    logits, carry = model.apply(params, prompt)
    first = sample_logits(
        jax.random.fold_in(key, 0), logits[:, -1], temperature=temperature, top_k=top_k
    )

    def body(state, step):
        carry, token = state
        logits, carry = model.apply(params, token[:, None], carry)
        key_t = jax.random.fold_in(key, step)
        new = sample_logits(key_t, logits[:, 0], temperature=temperature, top_k=top_k)
        return (carry, new), token

    _, tokens = jax.lax.scan(body, (carry, first), jnp.arange(1, length + 1))
    return tokens.T  # (B, length)


def generate(
    model: Any,
    params: Any,
    prompt: jax.Array,
    length: int,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
    """Continue ``prompt`` by ``length`` tokens.

    Args:
        model: a :class:`jrnn.models.LanguageModel` (a bidirectional model cannot generate:
            an auto-regressive model may not read the future it is writing).
        params: the model's params.
        prompt: `(P,)` or `(B, P)` token ids, ``P >= 1``.
        length: number of new tokens.
        key: PRNG key; the same key gives the same tokens.
        temperature: softmax temperature; 0 for greedy decoding.
        top_k: sample among the ``top_k`` most likely tokens only; None for all.

    Returns:
        `(length,)` or `(B, length)` int32 ids: the new tokens only.
    """
    if getattr(model, "bidirectional", False):
        raise ValueError(
            "model: cannot generate from a bidirectional model; an auto-regressive model feeds "
            "each output back as the next input, so it can only read the past (train a "
            "unidirectional LanguageModel)"
        )
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model: expected a LanguageModel, got {type(model).__name__}")
    prompt = jnp.asarray(prompt)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] < 1:
        raise ValueError(f"prompt: expected (P,) or (B, P) ids with P >= 1, got {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise TypeError(f"prompt: expected integer ids, got dtype {prompt.dtype}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected a positive integer, got {length!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"top_k: expected None or 1..{model.vocab_size}, got {top_k!r}")
    batched = prompt.reshape(-1, prompt.shape[-1]).astype(jnp.int32)
    tokens = _generate(
        model, params, batched, key, length=length, temperature=float(temperature), top_k=top_k
    )
    return tokens if prompt.ndim == 2 else tokens[0]
