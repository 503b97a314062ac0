"""Heads around a recurrent stack: token embedding, linear layers and pooling over time.

Params are dicts named like PyTorch's state_dict (``weight``, ``bias``). A per-step head (the
language model's or tagger's) is :func:`linear` applied to every step of `(B, T, F)` outputs; a
many-to-one head pools `(B, T, F)` to `(B, F)` with :func:`pool` first.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import heads
    >>> emb = heads.embedding_init(jax.random.key(0), 10, 4)
    >>> x = heads.embed(emb, jnp.array([[1, 2, 3], [4, 5, 0]]))            # (B, T, E)
    >>> pooled = heads.pool(x, jnp.array([3, 2]), mode="mean")             # (B, E)
    >>> logits = heads.linear(heads.linear_init(jax.random.key(1), 4, 2), pooled)
    >>> x.shape, pooled.shape, logits.shape
    ((2, 3, 4), (2, 4), (2, 2))
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]

POOLING = ("last", "mean", "max")


def embedding_init(
    key: jax.Array, num_embeddings: int, embedding_dim: int, *, dtype: Any = jnp.float32
) -> Params:
    """Embedding table ``{"weight": (V, E)}`` drawn from N(0, 1), as ``torch.nn.Embedding``."""
    return {"weight": jax.random.normal(key, (num_embeddings, embedding_dim), dtype)}


def embed(params: Params, ids: jax.Array) -> jax.Array:
    """Look up integer `ids (...)` in the table: returns `(..., E)`."""
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise TypeError(f"ids: expected an integer array, got dtype {jnp.result_type(ids)}")
    return jnp.take(params["weight"], ids, axis=0)


def linear_init(
    key: jax.Array,
    in_features: int,
    out_features: int,
    *,
    bias: bool = True,
    dtype: Any = jnp.float32,
) -> Params:
    """``{"weight": (O, I), "bias": (O,)}`` drawn from U(-1/sqrt(I), 1/sqrt(I)) as in PyTorch."""
    bound = 1.0 / math.sqrt(in_features)
    w_key, b_key = jax.random.split(key)
    params = {
        "weight": jax.random.uniform(w_key, (out_features, in_features), dtype, -bound, bound)
    }
    if bias:
        params["bias"] = jax.random.uniform(b_key, (out_features,), dtype, -bound, bound)
    return params


def linear(params: Params, x: jax.Array) -> jax.Array:
    """``x @ weight.T + bias``: `(..., I) -> (..., O)`, applied independently at every step."""
    y = x @ params["weight"].T
    if "bias" not in params:
        return y
    return y + params["bias"].reshape((1,) * (y.ndim - 1) + params["bias"].shape)


def pool(
    outputs: jax.Array, lengths: jax.Array, *, mode: str = "last", num_directions: int = 1
) -> jax.Array:
    """Reduce a stack's batch-first outputs over time, ignoring padding.

    Args:
        outputs: `(B, T, num_directions*H)`, the forward features first (as ``jrnn.LSTM`` etc.
            return them).
        lengths: `(B,)` valid lengths in ``[1, T]``.
        mode: ``"last"``: the forward features at each sequence's last valid step and, for a
            bidirectional stack, the backward features at step 0 (each direction's state after
            reading the whole sequence); ``"mean"`` or ``"max"`` over the valid steps.
        num_directions: 1 or 2; only ``"last"`` depends on it.

    Returns:
        `(B, num_directions*H)`.
    """
    if mode not in POOLING:
        raise ValueError(f"mode: expected one of {POOLING}, got {mode!r}")
    if outputs.ndim != 3:
        raise ValueError(f"outputs: expected shape (B, T, F), got {outputs.shape}")
    if tuple(jnp.shape(lengths)) != outputs.shape[:1]:
        raise ValueError(
            f"lengths: expected shape {outputs.shape[:1]} (batch,), got {jnp.shape(lengths)}"
        )
    if num_directions not in (1, 2) or outputs.shape[-1] % num_directions:
        raise ValueError(
            f"num_directions: expected 1 or 2 dividing the feature size {outputs.shape[-1]}, "
            f"got {num_directions}"
        )
    valid = (jnp.arange(outputs.shape[1])[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
    if mode == "mean":
        total = jnp.where(valid, outputs, jnp.zeros_like(outputs)).sum(axis=1)
        return total / lengths[:, None].astype(outputs.dtype)
    if mode == "max":
        return jnp.where(valid, outputs, jnp.full_like(outputs, -jnp.inf)).max(axis=1)
    last = jnp.take_along_axis(outputs, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, F)
    if num_directions == 1:
        return last
    hidden = outputs.shape[-1] // 2
    return jnp.concatenate([last[:, :hidden], outputs[:, 0, hidden:]], axis=-1)
