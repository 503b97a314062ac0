"""Masked losses and metrics: cross-entropy averaged over the valid steps only.

For one sequence of ``n`` valid steps the loss is the mean ``1/n Σ_t -log p(y_t)``; for a padded
batch every valid step of every sequence counts once (padding counts zero times), so the batch
loss equals the sum of the sequences' summed losses divided by their total length.

Example:
    >>> import jax.numpy as jnp
    >>> from jrnn import losses
    >>> logits = jnp.zeros((1, 3, 4))                  # uniform over 4 classes
    >>> targets = jnp.array([[1, 2, 0]])
    >>> mask = jnp.array([[True, True, False]])        # the last step is padding
    >>> round(float(losses.cross_entropy(logits, targets, mask)), 4)   # log 4
    1.3863
    >>> round(float(losses.bits_per_char(jnp.log(4.0))), 4)
    2.0
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check(logits: jax.Array, targets: jax.Array, mask: jax.Array | None) -> None:
    if logits.shape[:-1] != jnp.shape(targets):
        raise ValueError(
            f"targets: expected shape {logits.shape[:-1]} (logits without the class axis), "
            f"got {jnp.shape(targets)}"
        )
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(
            f"targets: expected integer class ids, got dtype {jnp.result_type(targets)}"
        )
    if mask is not None and jnp.shape(mask) != jnp.shape(targets):
        raise ValueError(
            f"mask: expected the shape of targets {jnp.shape(targets)}, got {jnp.shape(mask)}"
        )


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return values.mean()
    weights = mask.astype(values.dtype)
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy averaged over the positions where ``mask`` is true.

    Args:
        logits: `(..., C)` unnormalised scores.
        targets: `(...)` integer class ids in ``[0, C)``.
        mask: optional `(...)` booleans (or 0/1 weights), true at valid positions; all valid when
            None. With no valid position the result is 0.

    Returns:
        The scalar mean loss in nats.
    """
    _check(logits, targets, mask)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return _masked_mean(nll, mask)


def accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of valid positions whose highest-scoring class is the target (shapes as above)."""
    _check(logits, targets, mask)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(logits.dtype)
    return _masked_mean(correct, mask)


def perplexity(loss: jax.Array | float) -> jax.Array:
    """``exp(loss)`` for a mean cross-entropy in nats."""
    return jnp.exp(loss)


def bits_per_char(loss: jax.Array | float) -> jax.Array:
    """``loss / ln 2``: a character model's mean cross-entropy in bits."""
    return jnp.asarray(loss) / math.log(2.0)
