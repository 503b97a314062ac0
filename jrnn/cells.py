"""Recurrent cells as pure functions, with PyTorch's parameter names, layout and numerics.

Notation: ``B`` batch (any leading shape), ``D`` input size, ``H`` hidden size, ``P`` LSTM
projection size, ``G`` number of gates (1 RNN, 4 LSTM, 3 GRU).

A :class:`Cell` is a small record of pure functions, like an optax ``GradientTransformation``:

- ``init(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=float32) -> params``
- ``project(params, x) -> gx``: the input half ``x @ weight_ih.T + bias_ih``,
  `(..., D) -> (..., G*H)`. It has no time dependence, so a sequence layer runs it once over all steps, outside the scan.
- ``recur(params, carry, gx) -> (carry, y)``: the recurrent half, one time step.
- ``step(params, carry, x) -> (carry, y)``: ``recur(params, carry, project(params, x))``, usable
  directly as a ``jax.lax.scan`` body: ``lax.scan(partial(LSTM.step, params), carry, xs)``.
- ``zero_carry(params, batch_shape, dtype) -> carry``.

Params are dicts named like PyTorch's state_dict (``weight_ih (G*H, D)``,
``weight_hh (G*H, H_out)``, ``bias_ih``, ``bias_hh``, ``weight_hr (P, H)``); biases are absent with ``bias=False``. Gate order
is i, f, g, o for LSTM and r, z, n for GRU, with ``bias_hn`` inside ``r * (W_hn h + b_hn)``.
Every parameter is drawn from U(-1/sqrt(H), 1/sqrt(H)), as in ``torch.nn``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells
    >>> params = cells.LSTM.init(jax.random.key(0), 3, 5)
    >>> carry = cells.LSTM.zero_carry(params, (2,), jnp.float32)
    >>> (h, c), y = cells.LSTM.step(params, carry, jnp.ones((2, 3)))
    >>> h.shape, c.shape, y.shape
    ((2, 5), (2, 5), (2, 5))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # `h (..., H)` or, for LSTM, `(h (..., P or H), c (..., H))`


class Cell(NamedTuple):
    """A recurrent cell: its name (PyTorch's ``mode``), gate count and pure functions."""

    name: str
    gates: int
    init: Callable[..., Params]
    recur: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
    zero_carry: Callable[[Params, tuple[int, ...], Any], Carry]

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """Input projection ``x @ weight_ih.T + bias_ih``: `(..., D) -> (..., G*H)`."""
        return _affine(x, params["weight_ih"], params.get("bias_ih"))

    def step(self, params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One full time step on raw input `x (..., D)`: ``(carry, x) -> (carry, y)``."""
        return self.recur(params, carry, self.project(params, x))


def hidden_size(params: Params) -> int:
    """The cell state size ``H`` (``weight_hh`` is `(G*H, H_out)`, ``weight_hr`` is `(P, H)`)."""
    if "weight_hr" in params:
        return params["weight_hr"].shape[1]
    return params["weight_hh"].shape[1]


def output_size(params: Params) -> int:
    """The size of ``h`` and of the output: ``P`` for a projected LSTM, else ``H``."""
    return params["weight_hh"].shape[1]


def _init(gates: int, *, allow_proj: bool) -> Callable[..., Params]:
    def init(
        key: jax.Array,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        proj_size: int = 0,
        dtype: Any = jnp.float32,
    ) -> Params:
        if proj_size and not allow_proj:
            raise ValueError(f"proj_size: only LSTM cells support a projection, got {proj_size}")
        h_out = proj_size or hidden_size
        shapes = {
            "weight_ih": (gates * hidden_size, input_size),
            "weight_hh": (gates * hidden_size, h_out),
        }
        if bias:
            shapes |= {"bias_ih": (gates * hidden_size,), "bias_hh": (gates * hidden_size,)}
        if proj_size:
            shapes["weight_hr"] = (proj_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        keys = jax.random.split(key, len(shapes))
        return {
            name: jax.random.uniform(k, shape, dtype, -bound, bound)
            for k, (name, shape) in zip(keys, shapes.items(), strict=True)
        }

    return init


def _affine(x: jax.Array, weight: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``x @ weight.T + bias`` with the bias broadcast explicitly over the leading axes."""
    y = x @ weight.T
    return y if bias is None else y + jnp.expand_dims(bias, tuple(range(y.ndim - 1)))


def _recurrent(params: Params, h: jax.Array) -> jax.Array:
    return _affine(h, params["weight_hh"], params.get("bias_hh"))


def _zero_h(params: Params, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return jnp.zeros((*batch_shape, output_size(params)), dtype)


def _simple(activation: Callable[[jax.Array], jax.Array]) -> Callable:
    def recur(params: Params, h: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = activation(gx + _recurrent(params, h))
        return h, h

    return recur


def _lstm_recur(params: Params, carry: Carry, gx: jax.Array) -> tuple[Carry, jax.Array]:
    h, c = carry
    i, f, g, o = jnp.split(gx + _recurrent(params, h), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if "weight_hr" in params:
        h = h @ params["weight_hr"].T
    return (h, c), h


def _lstm_zero(params: Params, batch_shape: tuple[int, ...], dtype: Any) -> Carry:
    return _zero_h(params, batch_shape, dtype), jnp.zeros(
        (*batch_shape, hidden_size(params)), dtype
    )


def _gru_recur(params: Params, h: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(_recurrent(params, h), 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


RNN_TANH = Cell("RNN_TANH", 1, _init(1, allow_proj=False), _simple(jnp.tanh), _zero_h)
RNN_RELU = Cell("RNN_RELU", 1, _init(1, allow_proj=False), _simple(jax.nn.relu), _zero_h)
LSTM = Cell("LSTM", 4, _init(4, allow_proj=True), _lstm_recur, _lstm_zero)
GRU = Cell("GRU", 3, _init(3, allow_proj=False), _gru_recur, _zero_h)

CELLS = {cell.name: cell for cell in (RNN_TANH, RNN_RELU, LSTM, GRU)}
