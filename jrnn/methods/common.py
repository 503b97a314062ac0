"""Time-axis helpers shared by every path: padding masks, reversal within lengths, remat chunks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def valid_mask(lengths: jax.Array, steps: int) -> jax.Array:
    """`(T, B)` booleans, true where step ``t`` is inside sequence ``b`` (``t < lengths[b]``)."""
    return jnp.arange(steps)[:, None] < lengths[None, :]


def reverse_valid(xs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence of `xs (T, B, ...)` within its first ``lengths[b]`` steps.

    Padding stays in place, so applying it twice gives back ``xs``.
    """
    t = jnp.arange(xs.shape[0])[:, None]
    index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, B)
    index = index.reshape(index.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, index, axis=0)


def reverse_time(xs: Any, lengths: jax.Array | None) -> Any:
    """Every leaf `(T, B, ...)` of ``xs`` reversed in time: within each sequence's length when
    ``lengths`` is given (padding stays at the end), else whole."""
    if lengths is None:
        return jax.tree.map(lambda a: jnp.flip(a, axis=0), xs)
    return jax.tree.map(lambda a: reverse_valid(a, lengths), xs)


def steps_of(xs: Any) -> int:
    """``T``, the leading size of the leaves of ``xs``."""
    return jax.tree.leaves(xs)[0].shape[0]


def chunked(
    forward: Callable[[Any, Any, jax.Array | None], tuple[jax.Array, Any]],
    remat: int,
    xs: Any,
    carry: Any,
    mask: jax.Array | None,
    reverse: bool = False,
) -> tuple[jax.Array, Any]:
    """``forward(xs, carry, mask) -> (ys, carry)`` with rematerialisation in chunks of
    ``remat`` steps, the chunks in reverse order when ``reverse``.

    Differentiated, it runs the chunks under ``jax.checkpoint``: only the carries between
    chunks are saved, and the backward pass recomputes each chunk, input projection included,
    so no `(T, ...)` array wider than the inputs is kept. Not differentiated (a forward pass,
    evaluation, sampling), there is nothing to recompute, so it is ``forward`` over all steps at
    once, as without ``remat``. ``xs`` is a pytree of `(T, B, ...)` arrays; ``mask`` `(T, B)`
    or None; padding steps are masked. ``forward`` may close over arrays being differentiated
    (the parameters): ``jax.closure_convert`` makes them explicit arguments of the rule.
    """
    # closure_convert traces for the shapes it is given, so each form gets its own conversion
    whole, whole_consts = jax.closure_convert(forward, xs, carry, mask)
    in_chunks, chunk_consts = jax.closure_convert(
        lambda xs, carry, mask: _in_chunks(forward, remat, xs, carry, mask, reverse),
        xs,
        carry,
        mask,
    )
    return _rematerialised(whole, in_chunks, xs, carry, mask, whole_consts, chunk_consts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _rematerialised(whole, in_chunks, xs, carry, mask, whole_consts, chunk_consts):
    return whole(xs, carry, mask, *whole_consts)


@_rematerialised.defjvp
def _rematerialised_jvp(whole, in_chunks, primals, tangents):
    xs, carry, mask, _, chunk_consts = primals
    dxs, dcarry, dmask, _, dchunk_consts = tangents

    def chunks(xs, carry, mask, consts):
        return in_chunks(xs, carry, mask, *consts)

    return jax.jvp(chunks, (xs, carry, mask, chunk_consts), (dxs, dcarry, dmask, dchunk_consts))


def _in_chunks(forward, remat, xs, carry, mask, reverse):
    steps = steps_of(xs)
    chunks = -(-steps // remat)
    pad = chunks * remat - steps
    if pad:
        if mask is None:
            mask = jnp.ones((steps, jax.tree.leaves(xs)[0].shape[1]), bool)
        xs = jax.tree.map(
            lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]), xs
        )
        mask = jnp.concatenate([mask, jnp.zeros((pad, mask.shape[1]), bool)])

    def split(a):
        return a.reshape(chunks, remat, *a.shape[1:])

    @jax.checkpoint
    def body(carry, chunk):
        xs_chunk, mask_chunk = chunk
        ys, carry = forward(xs_chunk, carry, mask_chunk)
        return carry, ys

    chunked_xs = (jax.tree.map(split, xs), None if mask is None else split(mask))
    carry, ys = jax.lax.scan(body, carry, chunked_xs, reverse=reverse)
    return ys.reshape(chunks * remat, *ys.shape[2:])[:steps], carry
