"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates from the input alone.

Notation: ``B`` batch (any leading shape), ``D`` input size, ``H`` hidden size.

With ``[a_1; ...; a_G] = x_t @ weight_ih.T + bias_ih`` (``G`` blocks of `(..., H)`) and
``g(v) = v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` otherwise (positive, so that ``h > 0`` from a
positive start and ``log g`` exists):

- minGRU, ``weight_ih (2H, D)`` rows ``[z; h~]``, ``bias_ih (2H,)``:
  ``z = sigmoid(a_z)``, ``h_t = (1 - z) * h_{t-1} + z * g(a_h)``;
- minLSTM, ``weight_ih (3H, D)`` rows ``[f; i; h~]``, ``bias_ih (3H,)``:
  ``f = sigmoid(a_f)``, ``i = sigmoid(a_i)``, ``f' = f / (f + i)``, ``i' = i / (f + i)``,
  ``h_t = f' * h_{t-1} + i' * g(a_h)``.

A step's output is its ``h``. No gate reads ``h_{t-1}``, so both are linear recurrences
``h_t = a_t * h_{t-1} + b_t`` with ``a_t``, ``b_t`` from ``x_t`` alone; their
:class:`jrnn.cells.Linear` form gives ``(a_t, b_t)`` and ``(log a_t, log b_t)`` (for the
log-space parallel scan) to :mod:`jrnn.methods.associative`; the scan path's step is the same
``a * h + b``. Every parameter is drawn from U(-1/sqrt(D), 1/sqrt(D)), ``torch.nn.Linear``'s
init, which the papers' code uses.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells
    >>> params = cells.MIN_GRU.init(jax.random.key(0), 3, 4)
    >>> {name: p.shape for name, p in params.items()}
    {'weight_ih': (8, 3), 'bias_ih': (8,)}
    >>> h, y = cells.MIN_GRU.step(params, jnp.zeros((2, 4)), jnp.ones((2, 3)))
    >>> h.shape, bool((h > 0).all())        # from h = 0 the state stays positive
    ((2, 4), True)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jrnn.cells import Cell, Linear, affine


def g(v: jax.Array) -> jax.Array:
    """The papers' positive candidate activation: ``v + 0.5`` if ``v >= 0``, else ``sigmoid(v)``."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_g(v: jax.Array) -> jax.Array:
    """``log(g(v))``, finite for every ``v``."""
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


def _min_gru_coefficients(params, gx):
    a_z, a_h = jnp.split(gx, 2, axis=-1)
    z = jax.nn.sigmoid(a_z)
    return 1.0 - z, z * g(a_h)


def _min_gru_log_coefficients(params, gx):
    a_z, a_h = jnp.split(gx, 2, axis=-1)
    return -jax.nn.softplus(a_z), -jax.nn.softplus(-a_z) + log_g(a_h)  # log(1 - z), log(z g)


def _log_i_over_f(a_f, a_i):
    """``log(i / f)``, from which ``f' = sigmoid(-log(i/f))`` and ``i' = sigmoid(log(i/f))``."""
    return jax.nn.softplus(-a_f) - jax.nn.softplus(-a_i)


def _min_lstm_coefficients(params, gx):
    a_f, a_i, a_h = jnp.split(gx, 3, axis=-1)
    ratio = _log_i_over_f(a_f, a_i)
    return jax.nn.sigmoid(-ratio), jax.nn.sigmoid(ratio) * g(a_h)


def _min_lstm_log_coefficients(params, gx):
    a_f, a_i, a_h = jnp.split(gx, 3, axis=-1)
    ratio = _log_i_over_f(a_f, a_i)
    return -jax.nn.softplus(ratio), -jax.nn.softplus(-ratio) + log_g(a_h)  # log f', log(i' g)


def _cell(name: str, gates: int, coefficients, log_coefficients, matmul_dtype=None) -> Cell:
    def recur(params, h, gx):
        a, b = coefficients(params, gx)
        h = a * h + b
        return h, h

    def init(key, input_size, hidden_size, *, bias=True, proj_size=0, dtype=jnp.float32):
        if proj_size:
            raise ValueError(f"proj_size: {name} has no projection, got {proj_size}")
        shapes = {"weight_ih": (gates * hidden_size, input_size)}
        if bias:
            shapes["bias_ih"] = (gates * hidden_size,)
        bound = 1.0 / math.sqrt(input_size)
        keys = jax.random.split(key, len(shapes))
        return {
            n: jax.random.uniform(k, shape, dtype, -bound, bound)
            for k, (n, shape) in zip(keys, shapes.items(), strict=True)
        }

    def output_size(params):
        return params["weight_ih"].shape[0] // gates

    return Cell(
        name=name,
        init=init,
        project=lambda params, x: affine(
            x, params["weight_ih"], params.get("bias_ih"), matmul_dtype
        ),
        recur=recur,
        zero_carry=lambda params, batch_shape, dtype: jnp.zeros(
            (*batch_shape, output_size(params)), dtype
        ),
        output_size=output_size,
        associative=Linear(coefficients=coefficients, log_coefficients=log_coefficients),
        with_matmul_dtype=lambda dtype: _cell(
            name, gates, coefficients, log_coefficients, matmul_dtype=dtype
        ),
    )


MIN_GRU = _cell("minGRU", 2, _min_gru_coefficients, _min_gru_log_coefficients)
MIN_LSTM = _cell("minLSTM", 3, _min_lstm_coefficients, _min_lstm_log_coefficients)
