"""Stacks of recurrent layers, each with one or two directions, as pure functions.

Stack params are a tuple over layers of a tuple over directions (forward, then reverse) of cell
params. The structure is the whole description: a layer with two direction params is
bidirectional, so a stack where only some layers are bidirectional is just params built with
``directions=(2, 2, 1)``. The state follows PyTorch: leaves `(S, B, H)` where ``S`` counts
(layer, direction) pairs in the order ``layer * num_directions + direction``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells, stack
    >>> params = stack.init(jax.random.key(0), cells.GRU, 3, 4, directions=(2, 2, 1))
    >>> ys, h_n = stack.apply(cells.GRU, params, jnp.ones((7, 2, 3)))   # (T, B, D)
    >>> ys.shape, h_n.shape
    ((7, 2, 4), (5, 2, 4))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jrnn import methods
from jrnn.cells import Carry, Cell, Params
from jrnn.methods import Options

StackParams = tuple[tuple[Params, ...], ...]


def init(
    key: jax.Array,
    cell: Cell,
    input_size: int,
    hidden_size: int,
    *,
    directions: Sequence[int],
    bias: bool = True,
    proj_size: int = 0,
    dtype: Any = jnp.float32,
) -> StackParams:
    """Params for a stack with ``len(directions)`` layers; ``directions[l]`` is 1 or 2."""
    layers = []
    size = input_size
    keys = jax.random.split(key, len(directions))
    for layer_key, dirs in zip(keys, directions, strict=True):
        dir_keys = jax.random.split(layer_key, dirs)
        layers.append(
            tuple(
                cell.init(k, size, hidden_size, bias=bias, proj_size=proj_size, dtype=dtype)
                for k in dir_keys
            )
        )
        size = dirs * cell.output_size(layers[-1][0])
    return tuple(layers)


def num_states(params: StackParams) -> int:
    """``S``, the number of (layer, direction) pairs: the leading size of ``h0`` and ``h_n``."""
    return sum(len(layer) for layer in params)


def zero_state(cell: Cell, params: StackParams, batch_shape: tuple[int, ...], dtype: Any) -> Carry:
    """The all-zero state, leaves `(S, *batch_shape, H)`."""
    carries = [cell.zero_carry(p, batch_shape, dtype) for layer in params for p in layer]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *carries)


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def apply(
    cell: Cell,
    params: StackParams,
    xs: jax.Array,
    h0: Carry | None = None,
    *,
    lengths: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    **options: Any,
) -> tuple[jax.Array, Carry]:
    """Run a stack over time-major inputs, each layer by :func:`jrnn.methods.layer`.

    Args:
        cell: the cell of every layer.
        params: stack params (see the module docstring).
        xs: `(T, B, D)` or `(T, D)`.
        h0: initial state, leaves `(S, B, H)` (`(S, H)` unbatched); zeros when None.
        lengths: optional `(B,)` valid lengths (see :mod:`jrnn.methods.scan`).
        dropout_rate: dropout on each layer's output except the last's.
        dropout_key: dropout is applied only when a key is given (training).
        **options: the fields of :class:`jrnn.methods.Options` (``method``, ``unroll``,
            ``remat``, ``matmul_dtype``), the same for every layer.

    Returns:
        ``(ys, h_n)``: `ys (T, B, dirs * H_out)` from the last layer and the final state with the
        structure and shapes of ``h0``.
    """
    opts = Options.of(options)
    if h0 is None:
        h0 = zero_state(cell, params, xs.shape[1:-1], xs.dtype)
    unbatched = xs.ndim == 2
    if unbatched:
        xs, h0 = xs[:, None], jax.tree.map(lambda a: a[:, None], h0)
    finals = []
    s = 0
    for index, layer in enumerate(params):
        end = s + len(layer)
        carry = jax.tree.map(lambda a, s=s, end=end: a[s:end], h0)
        xs, carry = methods.layer(cell, layer, xs, carry, lengths=lengths, options=opts)
        finals.append(carry)
        s = end
        if dropout_key is not None and dropout_rate > 0 and index < len(params) - 1:
            xs = dropout(jax.random.fold_in(dropout_key, index), dropout_rate, xs)
    h_n = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *finals)
    if unbatched:
        xs, h_n = xs[:, 0], jax.tree.map(lambda a: a[:, 0], h_n)
    return xs, h_n


def output_features(cell: Cell, params: StackParams) -> int:
    """The feature size of the stack's output: last layer's directions times its output size."""
    return len(params[-1]) * cell.output_size(params[-1][0])
