"""The fast path: one layer, all of its directions advanced in one scan.

:func:`jrnn.scan` is the reference (one ``cell.recur`` per step, differentiated by JAX). This
module computes the same function, shaped for speed:

- the input projection of each direction is one matmul over all time steps, before the scan;
- the directions of a bidirectional layer run in the same scan as a batch of ``k`` recurrences
  (the reverse direction on its time-reversed input), so each step is one batched matmul;
- every per-step input is read one step ahead into the carry (:func:`_scan_ahead`), which keeps
  dynamic slices out of the elementwise gate kernels: a dynamic-slice fused into a gate fusion
  made XLA:CPU's gate kernel several times slower;
- optional rematerialisation in chunks of ``remat`` steps (input projection included), so the
  saved activations grow as ``T / remat + remat`` instead of ``T``.

The gate math itself is ``cell.pointwise``, shared with the reference path. On CPU, float32
layers without a projection go to the compiled recurrence of :mod:`jrnn.kernel` instead
(projection, loop and VJP; unless ``kernel=False``), where a reverse direction runs backwards in
real time rather than on flipped inputs; under ``remat`` its chunks run one direction at a time.

Shapes: ``k`` directions, time-major `xs (T, B, D)`. Inside the scan the directions are stacked
along the batch as ``R = k * B`` rows (direction-major), so that every array the loop touches is
plain row-major `(R, ...)` and the batched matmul is a reshape away: gate pre-activations are
`(T, R, G*H)`, the carry `(R, H_out)`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jrnn import kernel as compiled
from jrnn.cells import Cell, Params, affine, einsum
from jrnn.sequence import default_unroll, reverse_valid, valid_mask


def _reverse(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    return jnp.flip(x, axis=0) if lengths is None else reverse_valid(x, lengths)


def _per_direction(a: jax.Array, k: int) -> jax.Array:
    return a.reshape(k, a.shape[0] // k, a.shape[1])


def _step(cell: Cell, w_hr, matmul_dtype, gx_t, gh_t, h, c, keep):
    """Gates, optional projection and masking of one step, all `R` rows at once."""
    m, c_new = cell.pointwise(gx_t, gh_t, h, c)
    if w_hr is not None:
        m = einsum("kbh,kph->kbp", _per_direction(m, w_hr.shape[0]), w_hr, matmul_dtype)
    h_new = m.reshape(h.shape)
    y = h_new
    if keep is not None:
        keep = keep[:, None]
        h_new = jnp.where(keep, h_new, h)
        c_new = None if c is None else jnp.where(keep, c_new, c)
        y = jnp.where(keep, y, jnp.zeros_like(y))
    return (h_new, c_new), y


def _recurrent(rec: Params, h: jax.Array, matmul_dtype: Any) -> jax.Array:
    """``h @ weight_hh.T + bias_hh`` per direction: `(R, H_out) -> (R, G*H)`."""
    k = rec["weight_hh"].shape[0]
    gh = einsum("kbh,kgh->kbg", _per_direction(h, k), rec["weight_hh"], matmul_dtype)
    if "bias_hh" in rec:
        gh = gh + rec["bias_hh"][:, None, :]
    return gh.reshape(h.shape[0], -1)


def _scan_ahead(body, carry, xs, *, unroll=1):
    """``jax.lax.scan(body, carry, xs)``, with the inputs of each step read one step ahead.

    Step ``t`` reads the slices of step ``t + 1`` into the carry, so ``body`` works on plain
    buffers: a dynamic slice fused into the elementwise gate kernels made those kernels several
    times slower on XLA:CPU.
    """
    steps = jax.tree.leaves(xs)[0].shape[0]

    def read(t):
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def wrapped(state, t):
        carry, x_t = state
        x_next = read(jnp.minimum(t + 1, steps - 1))
        carry, y = body(carry, x_t)
        return (carry, x_next), y

    (carry, _), ys = jax.lax.scan(wrapped, (carry, read(0)), jnp.arange(steps), unroll=unroll)
    return carry, ys


def _project(p: Params, xs: tuple[jax.Array, ...], matmul_dtype: Any) -> jax.Array:
    """Input half for every step: `k` inputs `(T, B, D)` -> `(T, k*B, G*H)`, one matmul each."""
    gx = [
        affine(x, p["weight_ih"][d], p["bias_ih"][d] if "bias_ih" in p else None, matmul_dtype)
        for d, x in enumerate(xs)
    ]
    return gx[0] if len(gx) == 1 else jnp.concatenate(gx, axis=1)


def _forward(cell: Cell, unroll, matmul_dtype, p: Params, xs, carry, mask):
    """The scan path: project the inputs of every direction, then scan from ``carry``.

    ``xs`` holds one `(T, B, D)` input per direction (the reverse one already time-reversed),
    ``carry`` is ``(h0, c0)`` with leaves `(R, ...)`, ``mask`` `(T, R)` or None.
    Returns ``(ys (T, R, H_out), carry)``.
    """
    gx = _project(p, xs, matmul_dtype)
    rec = {name: p[name] for name in ("weight_hh", "bias_hh") if name in p}
    w_hr = p.get("weight_hr")

    def body(carry, inputs):
        h, c = carry
        gx_t, keep = inputs
        gh_t = _recurrent(rec, h, matmul_dtype)
        return _step(cell, w_hr, matmul_dtype, gx_t, gh_t, h, c, keep)

    carry, ys = _scan_ahead(body, carry, (gx, mask), unroll=unroll)
    return ys, carry


def _compiled(cell: Cell, p: Params, reverse: tuple[bool, ...], xs, carry, mask):
    """The compiled path (:func:`jrnn.kernel.layer`): ``xs`` `(T, B, D)` as given (a reverse
    direction runs backwards in time inside the call), ``carry`` ``(h0, c0)`` with leaves
    `(k, B, H)`, ``mask`` `(T, B)` or None. Returns ``(ys (T, B, k*H), carry)``.
    """
    weights = [p.get(name) for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
    ys, h, c = compiled.layer(cell.name, xs, *weights, *carry, mask, reverse)
    return ys, (h, c)


def _chunked(forward, remat: int, xs, carry, mask, rows: int, reverse: bool = False):
    """``forward(xs, carry, mask) -> (ys, carry)`` in chunks of ``remat`` steps under
    ``jax.checkpoint``, the chunks in reverse order when ``reverse``.

    Only the carries between chunks are saved; the backward pass recomputes each chunk, input
    projection included, so no `(T, ...)` array wider than the inputs is kept. ``xs`` is a
    pytree of `(T, ...)` arrays; ``mask`` `(T, rows)` or None; padding steps are masked.
    """
    steps = jax.tree.leaves(xs)[0].shape[0]
    chunks = -(-steps // remat)
    pad = chunks * remat - steps
    if pad:
        if mask is None:
            mask = jnp.ones((steps, rows), bool)
        xs = jax.tree.map(
            lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]), xs
        )
        mask = jnp.concatenate([mask, jnp.zeros((pad, rows), bool)])

    def split(a):
        return a.reshape(chunks, remat, *a.shape[1:])

    @jax.checkpoint
    def body(carry, chunk):
        xs_chunk, mask_chunk = chunk
        ys, carry = forward(xs_chunk, carry, mask_chunk)
        return carry, ys

    chunked = (jax.tree.map(split, xs), None if mask is None else split(mask))
    carry, ys = jax.lax.scan(body, carry, chunked, reverse=reverse)
    return ys.reshape(chunks * remat, *ys.shape[2:])[:steps], carry


def _use_kernel(kernel: bool | None, cell: Cell, params, xs, matmul_dtype) -> bool:
    if kernel is False:
        return False
    reason = compiled.unsupported(cell.name, params, xs, matmul_dtype)
    if kernel and reason:
        raise ValueError(f"kernel: True, but the compiled recurrence cannot run here: {reason}")
    return reason is None


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: jax.Array,
    h0: Any,
    *,
    lengths: jax.Array | None = None,
    unroll: int | bool | None = None,
    remat: int | None = None,
    matmul_dtype: Any = None,
    kernel: bool | None = None,
) -> tuple[jax.Array, Any]:
    """One layer with ``k = len(params)`` directions (forward, then reverse).

    Args:
        cell: the cell.
        params: one cell params dict per direction.
        xs: `(T, B, D)` time-major inputs.
        h0: the layer's initial carry, leaves `(k, B, ...)`.
        lengths: optional `(B,)` valid lengths.
        unroll: ``jax.lax.scan`` unrolling; None: :func:`jrnn.sequence.default_unroll`.
        remat: recompute activations in chunks of this many steps during the backward pass.
        matmul_dtype: round the matmul operands to this dtype (e.g. ``jnp.bfloat16``), with
            products accumulated in ``xs``'s dtype; None keeps every matmul in ``xs``'s dtype.
        kernel: run the loop over time in the compiled recurrence (:mod:`jrnn.kernel`): None
            (default) when it supports the layer, True to insist (an error says why it
            cannot), False for the pure-JAX scan.

    Returns:
        ``(ys, carry)``: `ys (T, B, k*H_out)` and the final carry, leaves `(k, B, ...)`.
    """
    p = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
    mask = None if lengths is None else valid_mask(lengths, xs.shape[0])
    carry = (h0, None) if not cell.has_cell_state else h0
    if _use_kernel(kernel, cell, params, xs, matmul_dtype):
        ys, (h, c) = _compiled_layer(cell, p, xs, carry, mask, remat)
    else:
        ys, (h, c) = _scan_layer(cell, p, xs, carry, lengths, mask, remat, unroll, matmul_dtype)
    return ys, ((h, c) if cell.has_cell_state else h)


def _compiled_layer(cell: Cell, p: Params, xs, carry, mask, remat):
    """:func:`layer` on the compiled path: ys `(T, B, k*H)`, carry leaves `(k, B, H)`."""
    reverse = (False, True)[: p["weight_hh"].shape[0]]
    if not remat:
        return _compiled(cell, p, reverse, xs, carry, mask)
    # chunks of one direction at a time: a reverse direction takes its chunks last to first
    results = []
    for j, flag in enumerate(reverse):
        pj = jax.tree.map(lambda a, j=j: a[j : j + 1], p)
        cj = jax.tree.map(lambda a, j=j: a[j : j + 1], carry)
        forward = functools.partial(_compiled, cell, pj, (flag,))
        results.append(_chunked(forward, remat, xs, cj, mask, xs.shape[1], reverse=flag))
    ys = jnp.concatenate([ys for ys, _ in results], axis=-1)
    return ys, jax.tree.map(lambda *a: jnp.concatenate(a), *[c for _, c in results])


def _scan_layer(cell: Cell, p: Params, xs, carry, lengths, mask, remat, unroll, matmul_dtype):
    """:func:`layer` on the scan path: the directions as `R = k * B` rows of one scan."""
    steps, batch = xs.shape[0], xs.shape[1]
    k = p["weight_hh"].shape[0]
    unroll = default_unroll() if unroll is None else unroll
    inputs = (xs,) if k == 1 else (xs, _reverse(xs, lengths))
    mask = None if mask is None else jnp.tile(mask, (1, k))
    rows = jax.tree.map(lambda a: a.reshape(k * batch, *a.shape[2:]), carry)
    forward = functools.partial(_forward, cell, unroll, matmul_dtype, p)
    if remat:
        ys, rows = _chunked(forward, remat, inputs, rows, mask, k * batch)
    else:
        ys, rows = forward(inputs, rows, mask)
    if k == 2:
        ys = ys.reshape(steps, 2, batch, -1)
        ys = jnp.concatenate([ys[:, 0], _reverse(ys[:, 1], lengths)], axis=-1)
    return ys, jax.tree.map(lambda a: a.reshape(k, batch, *a.shape[1:]), rows)
