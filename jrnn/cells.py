"""Recurrent cells as pure functions, with PyTorch's parameter names, layout and numerics.

Notation: ``B`` batch (any leading shape), ``D`` input size, ``H`` hidden size, ``P`` LSTM
projection size, ``G`` number of gates (1 RNN, 4 LSTM, 3 GRU).

A :class:`Cell` is a small record (like an optax ``GradientTransformation``) whose one piece of
cell-specific math is ``pointwise(gx, gh, h, c) -> (m, c)``: the elementwise gate function of the
input half ``gx = x @ weight_ih.T + bias_ih``, the recurrent half ``gh = h @ weight_hh.T +
bias_hh``, the previous ``h`` and (LSTM only, else None) the cell state ``c``. Around it:

- ``init(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=float32) -> params``
- ``project(params, x) -> gx``: the input half, `(..., D) -> (..., G*H)`. It has no time
  dependence, so a sequence layer runs it once over all steps, outside the scan.
- ``recur(params, carry, gx) -> (carry, y)``: the recurrent half, one time step.
- ``step(params, carry, x) -> (carry, y)``: ``recur(params, carry, project(params, x))``, usable
  directly as a ``jax.lax.scan`` body: ``lax.scan(partial(LSTM.step, params), carry, xs)``.
- ``zero_carry(params, batch_shape, dtype) -> carry``.

Params are dicts named like PyTorch's state_dict (``weight_ih (G*H, D)``,
``weight_hh (G*H, H_out)``, ``bias_ih``, ``bias_hh``, ``weight_hr (P, H)``); biases are absent
with ``bias=False``. Gate order is i, f, g, o for LSTM and r, z, n for GRU, with ``bias_hn``
inside ``r * (W_hn h + b_hn)``. Every parameter is drawn from U(-1/sqrt(H), 1/sqrt(H)), as in
``torch.nn``.

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

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # `h (..., H_out)` or, for LSTM, `(h (..., H_out), c (..., H))`
Pointwise = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, jax.Array | None]
]


def affine(
    x: jax.Array, weight: jax.Array, bias: jax.Array | None, matmul_dtype: Any = None
) -> jax.Array:
    """``x @ weight.T + bias`` with the bias broadcast explicitly over the leading axes."""
    y = einsum("...d,gd->...g", x, weight, matmul_dtype)
    return y if bias is None else y + jnp.expand_dims(bias, tuple(range(y.ndim - 1)))


def einsum(subscripts: str, a: jax.Array, b: jax.Array, matmul_dtype: Any = None) -> jax.Array:
    """``jnp.einsum`` of two operands; :func:`mixed_einsum` when ``matmul_dtype`` is given."""
    if matmul_dtype is None:
        return jnp.einsum(subscripts, a, b)
    return mixed_einsum(subscripts, a, b, matmul_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def mixed_einsum(subscripts: str, a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
    """``jnp.einsum(subscripts, a, b)`` with operands rounded to ``dtype`` (e.g. bfloat16).

    Mixed precision: the matmul reads ``dtype`` operands (the bf16 matrix units of recent CPUs
    and GPUs) and accumulates and returns ``a``'s dtype. The backward pass does the same: the
    output cotangent is rounded to ``dtype`` and both gradients come back in the operands' own
    dtypes, so a weight's gradient summed over time steps is summed in float32. (Being a
    custom VJP, it supports reverse-mode differentiation only.)
    """
    return jnp.einsum(subscripts, a.astype(dtype), b.astype(dtype), preferred_element_type=a.dtype)


def _mixed_fwd(subscripts, a, b, dtype):
    # ``a`` is saved rounded (in a scan, one copy per step: half the memory, no second rounding);
    # ``b`` (a weight, the same at every step) as it is, for its gradient's dtype
    a16 = a.astype(dtype)
    y = jnp.einsum(subscripts, a16, b.astype(dtype), preferred_element_type=a.dtype)
    return y, (a16, b)


def _mixed_bwd(subscripts, dtype, residuals, ct):
    a16, b = residuals
    inputs, out = subscripts.split("->")
    sa, sb = inputs.split(",")
    ct16 = ct.astype(dtype)  # ct has the output's dtype, which is a's
    da = jnp.einsum(f"{out},{sb}->{sa}", ct16, b.astype(dtype), preferred_element_type=ct.dtype)
    db = jnp.einsum(f"{out},{sa}->{sb}", ct16, a16, preferred_element_type=b.dtype)
    return da, db


mixed_einsum.defvjp(_mixed_fwd, _mixed_bwd)


class Cell(NamedTuple):
    """A recurrent cell: its name (PyTorch's ``mode``), gate count and gate function.

    Attributes:
        name: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
        gates: ``G``, the number of gate blocks in ``weight_ih`` and ``weight_hh``.
        pointwise: ``(gx, gh, h, c) -> (m, c)``, elementwise; ``m`` is the new hidden state
            before the LSTM projection.
        has_cell_state: whether the carry is ``(h, c)`` (LSTM) or ``h``.
    """

    name: str
    gates: int
    pointwise: Pointwise
    has_cell_state: bool = False

    def init(
        self,
        key: jax.Array,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        proj_size: int = 0,
        dtype: Any = jnp.float32,
    ) -> Params:
        """Params drawn from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as in ``torch.nn``."""
        if proj_size and not self.has_cell_state:
            raise ValueError(
                f"proj_size: only LSTM cells support a projection, got {proj_size} for {self.name}"
            )
        g, h_out = self.gates * hidden_size, proj_size or hidden_size
        shapes = {"weight_ih": (g, input_size), "weight_hh": (g, h_out)}
        if bias:
            shapes |= {"bias_ih": (g,), "bias_hh": (g,)}
        if proj_size:
            shapes["weight_hr"] = (proj_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        keys = jax.random.split(key, len(shapes))
        return {
            name: jax.random.uniform(k, shape, dtype, -bound, bound)
            for k, (name, shape) in zip(keys, shapes.items(), strict=True)
        }

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """Input half ``x @ weight_ih.T + bias_ih``: `(..., D) -> (..., G*H)`."""
        return affine(x, params["weight_ih"], params.get("bias_ih"))

    def recur(self, params: Params, carry: Carry, gx: jax.Array) -> tuple[Carry, jax.Array]:
        """Recurrent half of one step, given the projected input `gx (..., G*H)`."""
        h, c = carry if self.has_cell_state else (carry, None)
        m, c = self.pointwise(gx, affine(h, params["weight_hh"], params.get("bias_hh")), h, c)
        h = m @ params["weight_hr"].T if "weight_hr" in params else m
        return ((h, c) if self.has_cell_state else h), h

    def step(self, params: Params, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One full time step on raw input `x (..., D)`: ``(carry, x) -> (carry, y)``."""
        return self.recur(params, carry, self.project(params, x))

    def zero_carry(self, params: Params, batch_shape: tuple[int, ...], dtype: Any) -> Carry:
        """All-zero carry for inputs with leading shape ``batch_shape``."""
        h = jnp.zeros((*batch_shape, output_size(params)), dtype)
        if not self.has_cell_state:
            return h
        return h, jnp.zeros((*batch_shape, hidden_size(params)), dtype)


def hidden_size(params: Params) -> int:
    """The cell state size ``H`` (``weight_hh`` is `(G*H, H_out)`, ``weight_hr`` is `(P, H)`)."""
    if "weight_hr" in params:
        return params["weight_hr"].shape[1]
    return params["weight_hh"].shape[1]


def output_size(params: Params) -> int:
    """The size of ``h`` and of the output: ``P`` for a projected LSTM, else ``H``."""
    return params["weight_hh"].shape[1]


def _simple(activation: Callable[[jax.Array], jax.Array]) -> Pointwise:
    def pointwise(gx, gh, h, c):
        return activation(gx + gh), None

    return pointwise


def _lstm(gx, gh, h, c):
    i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _gru(gx, gh, h, c):
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h, None


RNN_TANH = Cell("RNN_TANH", 1, _simple(jnp.tanh))
RNN_RELU = Cell("RNN_RELU", 1, _simple(jax.nn.relu))
LSTM = Cell("LSTM", 4, _lstm, has_cell_state=True)
GRU = Cell("GRU", 3, _gru)
