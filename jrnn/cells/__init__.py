"""Recurrent cells: each one a record of pure functions, the extension point of jrnn.

Notation: ``B`` batch (any leading shape), ``D`` input size, ``H`` hidden size, ``P`` LSTM
projection size, ``G`` number of gates (1 RNN, 4 LSTM, 3 GRU).

A :class:`Cell` is a small immutable record of functions (like an optax
``GradientTransformation``): how to make params, the input half of a step that can run once for
all steps (``project``), the recurrent half (``recur``), the zero carry, and optional faster forms
a layer may use (a compiled-kernel identity, an associative form). Every path over time
(:mod:`jrnn.methods`) asks the cell, never its name, what it can do.

Most recurrent cells people write are *gated* ``h @ W_hh`` cells: their step is
``pointwise(x @ W_ih.T + b_ih, h @ W_hh.T + b_hh, h, c)``. :func:`gated` builds the record of such a
cell from that one elementwise function; the built-in :data:`RNN_TANH`, :data:`RNN_RELU`,
:data:`LSTM` and :data:`GRU` are made this way. A cell of another shape (a diagonal or complex
state, no ``weight_hh``) is written directly as a :class:`Cell`, like the linear cells
:data:`MIN_GRU` and :data:`MIN_LSTM` (:mod:`jrnn.cells.minimal`) and :func:`lru`
(:mod:`jrnn.cells.lru`), which also declare an associative form (:class:`Linear`).

Params of the gated cells are dicts named like PyTorch's state_dict (``weight_ih (G*H, D)``,
``weight_hh (G*H, H_out)``, ``bias_ih``, ``bias_hh``, ``weight_hr (P, H)``); biases are absent with
``bias=False``. Gate order is i, f, g, o for LSTM and r, z, n for GRU, with ``bias_hn`` inside
``r * (W_hn h + b_hn)``. Every parameter is drawn from U(-1/sqrt(H), 1/sqrt(H)), as in ``torch.nn``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells
    >>> params = cells.LSTM.init(jax.random.key(0), 3, 5)
    >>> carry = cells.LSTM.zero_carry(params, (2,), jnp.float32)
    >>> (h, c), y = cells.LSTM.step(params, carry, jnp.ones((2, 3)))
    >>> h.shape, c.shape, y.shape
    ((2, 5), (2, 5), (2, 5))
    >>> sin_rnn = cells.gated("SIN", 1, lambda gx, gh, h, c: (jnp.sin(gx + gh), None))
    >>> sin_rnn.kernel is None        # a user cell never runs a built-in's compiled kernel
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = Any  # a pytree: `h (..., H_out)` or, for LSTM, `(h (..., H_out), c (..., H))`
Pointwise = Callable[
    [jax.Array, jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, jax.Array | None]
]


class Linear(NamedTuple):
    """The associative form of a cell whose state follows ``h_t = a_t * h_{t-1} + b_t``
    elementwise, with ``a_t`` and ``b_t`` from the step's input alone (no ``h`` in them).

    Pairs compose associatively, ``(a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2)``, which lets
    :mod:`jrnn.methods.associative` compute the coefficients of all ``T`` steps at once and the
    states in depth ``log T``.

    Attributes:
        coefficients: ``(params, gx) -> (a, b)``, each the shape of the state `(..., N)`, from
            the cell's ``project`` output ``gx`` (of every step at once: `(T, B, N)`).
        log_coefficients: optional ``(params, gx) -> (log a, log b)``, for a cell whose ``a``
            and ``b`` are positive; where given, the parallel scan composes in log space
            (stable for any ``T``). The sequential composition on CPU uses ``coefficients``.
        readout: ``(params, h, gx) -> y``, a step's output from its new state, for a cell whose
            output is not its state; None when ``y_t = h_t``.
    """

    coefficients: Callable[[Any, Any], tuple[jax.Array, jax.Array]]
    log_coefficients: Callable[[Any, Any], tuple[jax.Array, jax.Array]] | None = None
    readout: Callable[[Any, jax.Array, Any], jax.Array] | None = None


class Cell(NamedTuple):
    """A recurrent cell as a record of pure functions.

    Attributes:
        name: a name for messages and printing; it decides nothing.
        init: ``(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=float32) ->
            params``, a pytree. A cell without biases or a projection raises a ``ValueError``
            naming the argument when asked for one.
        project: ``(params, x (..., D)) -> gx``, the part of a step that does not depend on the
            carry (usually ``x @ W_ih.T + b_ih``). A layer runs it once over all steps, outside
            the loop; ``gx`` is any pytree of arrays with the leading shape of ``x``.
        recur: ``(params, carry, gx_t) -> (carry, y_t)``, the rest of one step. ``y_t`` is
            `(..., output_size(params))`; it may not depend on the carry's padding.
        zero_carry: ``(params, batch_shape, dtype) -> carry``, the all-zero state.
        output_size: ``params -> int``, the feature size of ``y_t``.
        carry_names: a name for each leaf of the carry, in order (``("h", "c")`` for LSTM); the
            specs call the initial state ``h0``, ``c0``, ... after them.
        kernel: the identity of a compiled kernel (:mod:`jrnn.methods.compiled`) that computes
            exactly this cell, or None. Only the built-in cells declare one.
        with_matmul_dtype: optional ``dtype -> Cell``: the same cell with the operands of its
            matmuls rounded to ``dtype`` (mixed precision, see :func:`mixed_einsum`).
        associative: the cell's :class:`Linear` form, or None. A cell with one has a carry of
            one array, its state ``h``, and ``recur`` computes ``h_t = a_t * h_{t-1} + b_t``.
    """

    name: str
    init: Callable[..., Any]
    project: Callable[[Any, jax.Array], Any]
    recur: Callable[[Any, Carry, Any], tuple[Carry, jax.Array]]
    zero_carry: Callable[[Any, tuple[int, ...], Any], Carry]
    output_size: Callable[[Any], int]
    carry_names: tuple[str, ...] = ("h",)
    kernel: str | None = None
    with_matmul_dtype: Callable[[Any], Cell] | None = None
    associative: Linear | None = None

    def step(self, params: Any, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
        """One full time step on raw input `x (..., D)`: ``(carry, x) -> (carry, y)``, usable as
        a ``jax.lax.scan`` body: ``lax.scan(partial(cell.step, params), carry, xs)``."""
        return self.recur(params, carry, self.project(params, x))

    def __repr__(self) -> str:
        return f"Cell({self.name!r})"


# -- gated h @ W_hh cells ------------------------------------------------------------------------


@functools.cache
def gated(
    name: str,
    gates: int,
    pointwise: Pointwise,
    *,
    cell_state: bool = False,
    kernel: str | None = None,
    matmul_dtype: Any = None,
) -> Cell:
    """The record of a gated cell: ``m, c = pointwise(gx, gh, h, c)`` with ``gx = x @ W_ih.T +
    b_ih`` and ``gh = h @ W_hh.T + b_hh``, then ``h = m`` (or ``m @ W_hr.T`` with a projection).

    Args:
        name: the cell's name.
        gates: ``G``, the number of `(H,)` blocks in ``gx`` and ``gh``.
        pointwise: ``(gx (..., G*H), gh (..., G*H), h (..., H_out), c (..., H) or None) ->
            (m (..., H), c or None)``, elementwise over the batch.
        cell_state: the carry is ``(h, c)`` (LSTM-like; such a cell may take a ``proj_size``),
            else ``h``.
        kernel: the compiled kernel computing exactly this cell (built-ins only).
        matmul_dtype: round the operands of both matmuls to this dtype (see
            :func:`mixed_einsum`); None for exact matmuls.

    Calls with equal arguments return the same record, so cells compare and hash as values.
    """

    def init(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=jnp.float32):
        if proj_size and not cell_state:
            raise ValueError(
                f"proj_size: only cells with a cell state take a projection, got {proj_size} "
                f"for {name}"
            )
        g, h_out = gates * hidden_size, proj_size or hidden_size
        shapes = {"weight_ih": (g, input_size), "weight_hh": (g, h_out)}
        if bias:
            shapes |= {"bias_ih": (g,), "bias_hh": (g,)}
        if proj_size:
            shapes["weight_hr"] = (proj_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        keys = jax.random.split(key, len(shapes))
        return {
            n: jax.random.uniform(k, shape, dtype, -bound, bound)
            for k, (n, shape) in zip(keys, shapes.items(), strict=True)
        }

    def project(params, x):
        return affine(x, params["weight_ih"], params.get("bias_ih"), matmul_dtype)

    def recur(params, carry, gx):
        h, c = carry if cell_state else (carry, None)
        gh = affine(h, params["weight_hh"], params.get("bias_hh"), matmul_dtype)
        m, c = pointwise(gx, gh, h, c)
        if "weight_hr" in params:
            m = einsum("...h,ph->...p", m, params["weight_hr"], matmul_dtype)
        return ((m, c) if cell_state else m), m

    def zero_carry(params, batch_shape, dtype):
        h = jnp.zeros((*batch_shape, output_size(params)), dtype)
        if not cell_state:
            return h
        return h, jnp.zeros((*batch_shape, hidden_size(params)), dtype)

    def mixed(dtype):
        return gated(name, gates, pointwise, cell_state=cell_state, kernel=kernel,
                     matmul_dtype=dtype)  # fmt: skip

    return Cell(
        name=name,
        init=init,
        project=project,
        recur=recur,
        zero_carry=zero_carry,
        output_size=output_size,
        carry_names=("h", "c") if cell_state else ("h",),
        kernel=kernel,
        with_matmul_dtype=mixed,
    )


def hidden_size(params: Params) -> int:
    """A gated cell's state size ``H`` (``weight_hh`` is `(G*H, H_out)`, ``weight_hr`` `(P, H)`)."""
    if "weight_hr" in params:
        return params["weight_hr"].shape[1]
    return params["weight_hh"].shape[1]


def output_size(params: Params) -> int:
    """A gated cell's size of ``h`` and of its output: ``P`` when projected, else ``H``."""
    return params["weight_hh"].shape[1]


def _tanh(gx, gh, h, c):
    return jnp.tanh(gx + gh), None


def _relu(gx, gh, h, c):
    return jax.nn.relu(gx + gh), None


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


RNN_TANH = gated("RNN_TANH", 1, _tanh, kernel="RNN_TANH")
RNN_RELU = gated("RNN_RELU", 1, _relu, kernel="RNN_RELU")
LSTM = gated("LSTM", 4, _lstm, cell_state=True, kernel="LSTM")
GRU = gated("GRU", 3, _gru, kernel="GRU")
BUILTIN = {cell.kernel: cell for cell in (RNN_TANH, RNN_RELU, LSTM, GRU)}


# -- matmuls -------------------------------------------------------------------------------------


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


# -- linear cells, in their own modules (they build on the record above) --------------------------

from jrnn.cells.lru import lru as lru  # noqa: E402
from jrnn.cells.minimal import MIN_GRU as MIN_GRU  # noqa: E402
from jrnn.cells.minimal import MIN_LSTM as MIN_LSTM  # noqa: E402
