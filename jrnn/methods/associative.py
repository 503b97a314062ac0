"""The associative path: a linear cell's layer over time, its coefficients for all steps at once.

A cell with an associative form (``Cell.associative``, a :class:`jrnn.cells.Linear`) has a state
that follows ``h_t = a_t * h_{t-1} + b_t`` elementwise, with ``a_t`` and ``b_t`` from the input
alone. So everything but that one multiply-add runs once over all ``T`` steps (the cell's
``project``, its coefficients, its ``readout``), and the pairs compose associatively,
``(a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2)``:

- on an accelerator, all ``T`` states come out of one ``jax.lax.associative_scan`` in depth
  ``log T``; with ``log_coefficients`` (minGRU, minLSTM: ``a, b > 0``) the pairs compose in log
  space, ``(la1 + la2, logaddexp(lb1 + la2, lb2))``, exact to rounding for any ``T``, and ``h0``
  (of any sign) enters afterwards: ``h_t = exp(la_1 + ... + la_t) * h0 + exp(lb_{1..t})``;
  otherwise (the LRU, complex) in linear space with ``h0`` entering as ``b_0 + a_0 * h0``;
- on CPU, the compositions run in order, one multiply-add per step (``_states``): a few cores
  gain nothing from the depth, and every parallel form measured there made more passes over the
  `(T, B, N)` arrays than the multiply-add loop costs (see ``MIN_STEPS``). Composing in
  order in linear space is as stable as the scan path (the same products and sums);
- the directions of a layer are stacked on one axis and scanned together; a reverse direction
  reads its input reversed in time within each length (one gather for the whole array, see
  :func:`jrnn.methods.common.reverse_time`), its outputs reversed back the same way;
- padding: past a sequence's end the coefficients are ``a = 1, b = 0`` (``0`` and a finite
  stand-in for ``-inf`` in log space, see ``_log_zero``), so its state is kept and the
  final state is the one at the sequence's own end;
  outputs there are zero, as on the scan path;
- ``remat``: chunks of ``remat`` steps under ``jax.checkpoint``, each an associative scan that
  starts from the state the chunk before left (sequential over chunks, parallel within).

``unroll`` is a knob of the scan path and is ignored here.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells, methods
    >>> params = (cells.MIN_GRU.init(jax.random.key(0), 3, 4),) * 2     # two directions
    >>> xs = jax.random.normal(jax.random.key(1), (6, 2, 3))            # (T, B, D)
    >>> h0 = jnp.zeros((2, 2, 4))
    >>> lengths = jnp.array([6, 3])
    >>> run = lambda method: methods.layer(cells.MIN_GRU, params, xs, h0, lengths=lengths,
    ...                                    options=methods.Options(method=method))
    >>> (ys, h_n), (ys_scan, h_n_scan) = run("associative"), run("scan")
    >>> ys.shape, h_n.shape, bool(jnp.allclose(ys, ys_scan, atol=1e-6))
    ((6, 2, 8), (2, 2, 4), True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jrnn.cells import Cell, Params
from jrnn.methods.common import chunked, reverse_time, steps_of, valid_mask
from jrnn.methods.options import Options

# The shortest sequence for which method="auto" takes this path, by backend; None: never. On
# XLA:CPU (2 cores, AMD EPYC, jax 0.10.2; python -m benchmarks.parallel, T = 128, 1,000 and
# 10,000 at B x H 32 x 128, 16 x 128, 8 x 64 and 1 x 64), composed in order, the scan path's time
# over this path's: train step 1.24-5.4 (minGRU), 0.96-3.3 (minLSTM), 1.0-1.5 (LRU); forward pass
# 0.73-0.83 (minGRU, whose scan step fuses into one pass), 0.82-1.78 (minLSTM), 0.88-1.64 (LRU).
# Training decides: every length.
MIN_STEPS: dict[str, int | None] = {"cpu": 1}

# The backends on which the pairs compose in order, one multiply-add per step, rather than by
# jax.lax.associative_scan (see the top; measured in python -m benchmarks.parallel).
SEQUENTIAL: frozenset[str] = frozenset({"cpu"})


def preferred(xs: Any) -> bool:
    """Whether ``method="auto"`` runs a layer with inputs ``xs`` here rather than on the scan
    path: ``T >= MIN_STEPS`` of the default backend (every ``T`` on a backend not listed)."""
    threshold = MIN_STEPS.get(jax.default_backend(), 1)
    return threshold is not None and steps_of(xs) >= threshold


def unsupported(cell: Cell, params: tuple[Params, ...], xs: Any, options: Options) -> str | None:
    """Why the associative path cannot run this layer, or None when it can.

    Args:
        cell: the layer's cell.
        params: the layer's params, one per direction.
        xs: `(T, B, D)` inputs.
        options: the layer's options.
    """
    if cell.associative is None:
        return f"cell {cell.name} has no associative form (Cell.associative)"
    if options.matmul_dtype is not None and cell.with_matmul_dtype is None:
        return f"cell {cell.name} has no mixed-precision form (with_matmul_dtype)"
    return None


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: Any,
    h0: jax.Array,
    *,
    lengths: jax.Array | None,
    reverse: tuple[bool, ...],
    options: Options,
) -> tuple[jax.Array, jax.Array]:
    """One layer with ``k = len(params)`` directions, all in one associative scan.

    Args:
        cell: a cell with an associative form.
        params: one params pytree per direction.
        xs: `(T, B, D)` time-major inputs (or a pytree of such).
        h0: the layer's initial state `(k, B, N)`.
        lengths: optional `(B,)` valid lengths.
        reverse: ``k`` flags, True for a direction that runs backwards in time.
        options: the layer's :class:`jrnn.methods.Options`.

    Returns:
        ``(ys, h_n)``: `ys (T, B, k*H_out)` (directions concatenated, in input order) and the
        final state `(k, B, N)`, each direction's at its sequence's end.
    """
    if options.matmul_dtype is not None:
        cell = cell.with_matmul_dtype(options.matmul_dtype)
    form = cell.associative
    mask = None if lengths is None else valid_mask(lengths, steps_of(xs))
    inputs = [reverse_time(xs, lengths) if flag else xs for flag in reverse]

    parallel = jax.default_backend() not in SEQUENTIAL
    log = parallel and form.log_coefficients is not None
    coefficients = form.log_coefficients if log else form.coefficients

    def forward(inputs, h0, mask):
        gxs = [cell.project(p, x) for p, x in zip(params, inputs, strict=True)]
        pairs = [coefficients(p, gx) for p, gx in zip(params, gxs, strict=True)]
        a, b = (jnp.stack(c, axis=1) for c in zip(*pairs, strict=True))  # (T, k, B, N)
        if mask is not None:
            keep = jnp.broadcast_to(mask[:, None, :, None], a.shape)
            a = jnp.where(keep, a, jnp.zeros_like(a) if log else jnp.ones_like(a))
            b = jnp.where(keep, b, jnp.full_like(b, _log_zero(b)) if log else jnp.zeros_like(b))
        hs = _log_states(a, b, h0) if log else _states(a, b, h0, parallel)
        ys = jnp.stack(
            [
                hs[:, d] if form.readout is None else form.readout(p, hs[:, d], gx)
                for d, (p, gx) in enumerate(zip(params, gxs, strict=True))
            ],
            axis=1,
        )  # (T, k, B, H_out)
        if mask is not None:
            keep = jnp.broadcast_to(mask[:, None, :, None], ys.shape)
            ys = jnp.where(keep, ys, jnp.zeros_like(ys))
        return ys, hs[-1]

    if options.remat:
        ys, h_n = chunked(forward, options.remat, inputs, h0, mask)
    else:
        ys, h_n = forward(inputs, h0, mask)
    outputs = [
        reverse_time(ys[:, d], lengths) if flag else ys[:, d] for d, flag in enumerate(reverse)
    ]
    return (outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)), h_n


def _states(a: jax.Array, b: jax.Array, h0: jax.Array, parallel: bool) -> jax.Array:
    """`(T, ...)` states of ``h_t = a_t * h_{t-1} + b_t`` from ``h0 (...)``: by
    ``jax.lax.associative_scan`` if ``parallel``, else in order, one multiply-add per step."""
    if not parallel:

        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        return jax.lax.scan(step, h0, (a, b))[1]

    def compose(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    return jax.lax.associative_scan(compose, (a, b.at[0].add(a[0] * h0)))[1]


def _log_states(log_a: jax.Array, log_b: jax.Array, h0: jax.Array) -> jax.Array:
    """`(T, ...)` states of ``h_t = a_t * h_{t-1} + b_t`` from ``h0 (...)``, given ``log a`` and
    ``log b``, by ``jax.lax.associative_scan`` in log space."""

    def compose(earlier, later):
        la1, lb1 = earlier
        la2, lb2 = later
        return la1 + la2, jnp.logaddexp(lb1 + la2, lb2)

    log_decay, log_h = jax.lax.associative_scan(compose, (log_a, log_b))
    return jnp.exp(log_decay) * h0[None] + jnp.exp(log_h)


def _log_zero(like: jax.Array) -> float:
    """``log 0`` in log space: a finite stand-in for ``-inf`` (half the dtype's lowest value,
    so that sums with a few log coefficients stay finite). ``exp`` of it is exactly 0 and
    ``logaddexp(x, it)`` exactly ``x`` for any ``x`` in range, as with ``-inf``, but its
    derivatives are finite: ``logaddexp(-inf, -inf)`` has a NaN forward-mode derivative."""
    return float(jnp.finfo(like.dtype).min) / 2
