"""One direction of a recurrent layer over time, with ``jax.lax.scan``.

Sequences are time-major here: `xs (T, B, D)` (or `(T, D)` for one unbatched sequence). With
``lengths`` the layer behaves like PyTorch on a packed sequence: outputs past a sequence's end are
zero, the returned carry is the state after each sequence's own last valid step, and
``reverse=True`` runs each sequence from its last valid element back to its first while the
padding stays at the end.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells
    >>> from jrnn.sequence import scan
    >>> params = cells.GRU.init(jax.random.key(0), 3, 4)
    >>> xs = jnp.ones((6, 2, 3))                      # (T, B, D)
    >>> h, ys = scan(cells.GRU, params, xs, lengths=jnp.array([6, 2]), reverse=True)
    >>> h.shape, ys.shape, bool((ys[2:, 1] == 0).all())
    ((2, 4), (6, 2, 4), True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn.cells import Carry, Cell, Params

# The scan's unroll when none is given, by backend. On an H200 unroll 16 ran the LSTM train step
# (B=32, T=128, H=256) in 2.9 ms against 5.4 ms with unroll 1: each loop iteration has a fixed
# cost of microseconds there. On CPU the step is compute-bound and unrolling only adds compile
# time.
UNROLL = {"gpu": 16}


def default_unroll() -> int:
    """The scan unrolling used when ``unroll`` is None: ``UNROLL`` of the default backend, or 1."""
    return UNROLL.get(jax.default_backend(), 1)


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


def scan(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    carry: Carry | None = None,
    *,
    lengths: jax.Array | None = None,
    reverse: bool = False,
    unroll: int | bool | None = None,
) -> tuple[Carry, jax.Array]:
    """Run ``cell`` over time: the reference path, one ``cell.recur`` per step.

    The input projection runs once for all steps before the scan.

    Args:
        cell: a :class:`jrnn.cells.Cell`.
        params: the cell's params.
        xs: inputs, `(T, B, D)` or `(T, D)`.
        carry: initial state (leaves `(B, H)`); zeros when None.
        lengths: optional `(B,)` integer valid lengths, each in ``[1, T]``.
        reverse: run from the last (valid) step to the first.
        unroll: passed to ``jax.lax.scan``; None: :func:`default_unroll`.

    Returns:
        ``(carry, ys)``: the final state and the outputs `(T, B, H_out)`, in input order.
    """
    if unroll is None:
        unroll = default_unroll()
    if carry is None:
        carry = cell.zero_carry(params, xs.shape[1:-1], xs.dtype)
    gx = cell.project(params, xs)
    if lengths is None:

        def body(carry, gx_t):
            return cell.recur(params, carry, gx_t)

        return jax.lax.scan(body, carry, gx, reverse=reverse, unroll=unroll)

    def masked_body(carry, inputs):
        gx_t, valid_t = inputs
        new, y = cell.recur(params, carry, gx_t)
        keep = valid_t[:, None]
        new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
        return new, jnp.where(keep, y, jnp.zeros_like(y))

    if reverse:
        gx = reverse_valid(gx, lengths)
    carry, ys = jax.lax.scan(
        masked_body, carry, (gx, valid_mask(lengths, xs.shape[0])), unroll=unroll
    )
    if reverse:
        ys = reverse_valid(ys, lengths)
    return carry, ys
