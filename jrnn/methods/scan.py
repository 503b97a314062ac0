"""The scan path: a layer's loop over time as one ``jax.lax.scan``, for any cell.

This is the reference every other path is tested against, and the fast pure-JAX path:

- the cell's ``project`` (the input half) runs once over all steps, before the loop;
- the directions of a bidirectional layer advance in the same loop, the cell's ``recur``
  ``jax.vmap``-ed over them (for a gated cell, one batched matmul per step), a reverse direction
  reading its time-reversed input;
- each step's input is read one step ahead into the carry (:func:`_scan_ahead`);
- optional rematerialisation in chunks of ``remat`` steps (input projection included).

With ``lengths`` a layer behaves like PyTorch on a packed sequence: outputs past a sequence's end
are zero, the final carry is the state after each sequence's own last valid step, and a reverse
direction runs each sequence from its last valid element back to its first.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import jrnn
    >>> from jrnn import cells
    >>> params = cells.GRU.init(jax.random.key(0), 3, 4)
    >>> xs = jnp.ones((6, 2, 3))                      # (T, B, D)
    >>> h, ys = jrnn.scan(cells.GRU, params, xs, lengths=jnp.array([6, 2]), reverse=True)
    >>> h.shape, ys.shape, bool((ys[2:, 1] == 0).all())
    ((2, 4), (6, 2, 4), True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jrnn.cells import Carry, Cell, Params
from jrnn.methods.common import chunked, reverse_time, steps_of, valid_mask
from jrnn.methods.options import Options

# The scan's unroll when none is given, by backend. On an H200 unroll 16 ran the LSTM train step
# (B=32, T=128, H=256) in 2.9 ms against 5.4 ms with unroll 1: each loop iteration has a fixed
# cost of microseconds there. On CPU the step is compute-bound and unrolling only adds compile
# time.
UNROLL = {"gpu": 16}


def default_unroll() -> int:
    """The scan unrolling used when ``unroll`` is None: ``UNROLL`` of the default backend, or 1."""
    return UNROLL.get(jax.default_backend(), 1)


def unsupported(cell: Cell, params: tuple[Params, ...], xs: Any, options: Options) -> str | None:
    """Why the scan path cannot run this layer, or None (it runs every cell)."""
    if options.matmul_dtype is not None and cell.with_matmul_dtype is None:
        return f"cell {cell.name} has no mixed-precision form (with_matmul_dtype)"
    return None


def scan(
    cell: Cell,
    params: Params,
    xs: Any,
    carry: Carry | None = None,
    *,
    lengths: jax.Array | None = None,
    reverse: bool = False,
    **options: Any,
) -> tuple[Carry, jax.Array]:
    """Run ``cell`` over time, one direction: the reference path.

    Args:
        cell: a :class:`jrnn.cells.Cell`.
        params: the cell's params.
        xs: time-major inputs, `(T, B, D)` or `(T, D)` (a pytree of such for a cell whose
            ``project`` takes one).
        carry: initial state; zeros when None.
        lengths: optional `(B,)` integer valid lengths, each in ``[1, T]``.
        reverse: run from the last (valid) step to the first.
        **options: ``unroll``, ``remat``, ``matmul_dtype`` of :class:`jrnn.methods.Options`.

    Returns:
        ``(carry, ys)``: the final state and the outputs `(T, B, H_out)`, in input order.
    """
    opts = Options.of(options)
    reason = unsupported(cell, (params,), xs, opts)
    if reason:
        raise ValueError(f"cell: {reason}")
    if carry is None:
        carry = cell.zero_carry(params, jax.tree.leaves(xs)[0].shape[1:-1], _dtype(xs))
    h0 = jax.tree.map(lambda a: a[None], carry)
    ys, h_n = layer(cell, (params,), xs, h0, lengths=lengths, reverse=(reverse,), options=opts)
    return jax.tree.map(lambda a: a[0], h_n), ys


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: Any,
    h0: Carry,
    *,
    lengths: jax.Array | None,
    reverse: tuple[bool, ...],
    options: Options,
) -> tuple[jax.Array, Carry]:
    """One layer with ``k = len(params)`` directions, all in one ``lax.scan``.

    Args:
        cell: the cell.
        params: one params pytree per direction.
        xs: `(T, B, D)` time-major inputs (or a pytree of such).
        h0: the layer's initial carry, leaves `(k, B, ...)`.
        lengths: optional `(B,)` valid lengths.
        reverse: ``k`` flags, True for a direction that runs backwards in time.
        options: the layer's :class:`jrnn.methods.Options`.

    Returns:
        ``(ys, carry)``: `ys (T, B, k*H_out)` (directions concatenated, in input order) and the
        final carry, leaves `(k, B, ...)`.
    """
    k = len(params)
    if options.matmul_dtype is not None:
        cell = cell.with_matmul_dtype(options.matmul_dtype)
    unroll = default_unroll() if options.unroll is None else options.unroll
    mask = None if lengths is None else valid_mask(lengths, steps_of(xs))
    inputs = [reverse_time(xs, lengths) if flag else xs for flag in reverse]
    if k == 1:
        p, recur, inputs = params[0], cell.recur, inputs[0]
        carry = jax.tree.map(lambda a: a[0], h0)
    else:  # directions on axis 1 of each step's arrays: `(T, k, B, ...)`, carry `(k, B, ...)`
        p, recur, carry = _stack(params), jax.vmap(cell.recur), h0

    def forward(inputs, carry, mask):
        if k == 1:
            gx = cell.project(p, inputs)
        else:
            per_direction = [cell.project(pd, x) for pd, x in zip(params, inputs, strict=True)]
            gx = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *per_direction)
        return _scan_ahead(_masked(recur, p, batch_axis=int(k > 1)), carry, (gx, mask), unroll)

    if options.remat:
        ys, carry = chunked(forward, options.remat, inputs, carry, mask)
    else:
        ys, carry = forward(inputs, carry, mask)
    if k == 1:
        outputs = [ys]
        carry = jax.tree.map(lambda a: a[None], carry)
    else:
        outputs = [ys[:, d] for d in range(k)]
    outputs = [
        reverse_time(y, lengths) if flag else y for y, flag in zip(outputs, reverse, strict=True)
    ]
    return (outputs[0] if k == 1 else jnp.concatenate(outputs, axis=-1)), carry


def _stack(trees: tuple[Any, ...]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _dtype(xs: Any) -> Any:
    return jax.tree.leaves(xs)[0].dtype


def _masked(recur, params, batch_axis: int):
    """The scan body: one ``recur``; with a step mask `(B,)`, padded rows keep their carry and
    output zeros."""

    def where(keep, new, old):
        shape = [1] * new.ndim
        shape[batch_axis] = keep.shape[0]
        return jnp.where(keep.reshape(shape), new, old)

    def body(carry, inputs):
        gx_t, keep = inputs
        new, y = recur(params, carry, gx_t)
        if keep is None:
            return new, y
        new = jax.tree.map(lambda n, o: where(keep, n, o), new, carry)
        return new, where(keep, y, jnp.zeros_like(y))

    return body


def _scan_ahead(body, carry, xs, unroll):
    """``jax.lax.scan(body, carry, xs)``, with the inputs of each step read one step ahead.

    Step ``t`` reads the slices of step ``t + 1`` into the carry, so ``body`` works on plain
    buffers: a dynamic slice fused into the elementwise gate kernels made those kernels several
    times slower on XLA:CPU.
    """
    steps = steps_of(xs)

    def read(t):
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def wrapped(state, t):
        carry, x_t = state
        x_next = read(jnp.minimum(t + 1, steps - 1))
        carry, y = body(carry, x_t)
        return (carry, x_next), y

    (carry, _), ys = jax.lax.scan(wrapped, (carry, read(0)), jnp.arange(steps), unroll=unroll)
    return ys, carry
