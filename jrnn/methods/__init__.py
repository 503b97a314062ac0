"""How one layer runs over time, and the one place that decides it.

A method is a module with two functions of the same signature:

- ``unsupported(cell, params, xs, options) -> str | None``: why it cannot run this layer;
- ``layer(cell, params, xs, h0, *, lengths, reverse, options) -> (ys, carry)``: the layer, all
  of its directions, `xs (T, B, D)` time-major (see :func:`jrnn.methods.scan.layer`).

:data:`METHODS` lists them; :func:`resolve` turns ``Options.method`` into one of them for a
given layer, and :func:`layer` runs it. Every method computes the same function as
``"scan"`` up to float rounding; the tests hold them to it.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells, methods
    >>> params = (cells.GRU.init(jax.random.key(0), 3, 4),)
    >>> xs = jnp.ones((5, 2, 3))
    >>> methods.resolve(cells.GRU, params, xs, methods.Options(method="scan"))
    'scan'
    >>> sin = cells.gated("SIN", 1, lambda gx, gh, h, c: (jnp.sin(gx + gh), None))
    >>> methods.resolve(sin, params, xs, methods.Options(method="compiled"))
    Traceback (most recent call last):
    ...
    ValueError: method: 'compiled' cannot run this layer: cell SIN has no compiled kernel
"""

from __future__ import annotations

from typing import Any

import jax

from jrnn.cells import Cell, Params
from jrnn.methods import associative, compiled, deer, scan
from jrnn.methods.options import Options, Solver

METHODS = {
    "scan": scan,
    "compiled": compiled,
    "associative": associative,
    "deer": deer,
    "quasi-deer": deer,
    "elk": deer,
}
DEFAULT = Options()

__all__ = [
    "METHODS",
    "Options",
    "Solver",
    "associative",
    "compiled",
    "deer",
    "layer",
    "resolve",
    "scan",
]


def resolve(cell: Cell, params: tuple[Params, ...], xs: Any, options: Options) -> str:
    """The method that runs this layer.

    ``"auto"`` is the compiled path where it can run the layer (CPU, float32, a built-in cell,
    mixed precision bfloat16 only), else the associative path for a cell with an
    associative form where it was measured faster (:func:`jrnn.methods.associative.preferred`),
    else the scan. An explicit method that cannot run the layer raises a ``ValueError`` that says
    why.

    Args:
        cell: the layer's cell.
        params: the layer's params, one per direction.
        xs: the layer's `(T, B, D)` inputs (or their ``jax.ShapeDtypeStruct``).
        options: the layer's options.
    """
    name = options.method
    if name == "auto":
        if compiled.unsupported(cell, params, xs, options) is None:
            name = "compiled"
        elif associative.unsupported(cell, params, xs, options) is None:
            name = "associative" if associative.preferred(xs) else "scan"
        else:
            name = "scan"
    reason = METHODS[name].unsupported(cell, params, xs, options)
    if reason:
        raise ValueError(f"method: {options.method!r} cannot run this layer: {reason}")
    return name


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: Any,
    h0: Any,
    *,
    lengths: jax.Array | None = None,
    reverse: tuple[bool, ...] | None = None,
    options: Options = DEFAULT,
) -> tuple[jax.Array, Any]:
    """One layer with ``k = len(params)`` directions by the method :func:`resolve` picks.

    ``reverse`` defaults to ``(False, True)[:k]``: forward, then reverse. Arguments and results
    as :func:`jrnn.methods.scan.layer`.
    """
    if reverse is None:
        reverse = (False, True)[: len(params)]
    method = METHODS[resolve(cell, params, xs, options)]
    return method.layer(cell, params, xs, h0, lengths=lengths, reverse=reverse, options=options)
