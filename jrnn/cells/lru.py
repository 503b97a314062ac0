"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences"): a complex diagonal linear recurrence between two real projections.

Notation: ``B`` batch (any leading shape), ``D`` input and output size, ``N`` state size.

One layer maps inputs `u (..., D)` to outputs `y (..., D)` through a complex state `x (..., N)`:

- ``lam = exp(-exp(nu_log) + i * exp(theta_log))``, so ``|lam| < 1`` for any params;
- ``x_t = lam * x_{t-1} + exp(gamma_log) * (B u_t)`` with ``B = B_re + i * B_im``;
- ``y_t = Re(C x_t) + D * u_t`` with ``C = C_re + i * C_im``.

Params (all real): ``nu_log, theta_log, gamma_log (N,)``, ``B_re, B_im (N, D)``,
``C_re, C_im (D, N)``, ``D (D,)``. The carry is the complex state (complex64 for float32 inputs);
outputs are real. Init, as in the paper: ``|lam|^2`` uniform in ``[r_min^2, r_max^2]`` (``lam``
uniform on that ring's area), the phase uniform in ``[0, max_phase]``,
``gamma_log = log(sqrt(1 - |lam|^2))``, ``B_re, B_im ~ N(0, 1/(2D))``, ``C_re, C_im ~ N(0, 1/N)``
and ``D ~ N(0, 1)``. The cell has no bias parameters (``D * u_t`` is a skip connection).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jrnn import cells
    >>> lru = cells.lru(r_min=0.9, r_max=0.999)
    >>> lru is cells.lru(r_min=0.9, r_max=0.999)       # equal arguments, the same record
    True
    >>> params = lru.init(jax.random.key(0), 3, 16)    # D = 3 inputs and outputs, N = 16 states
    >>> x, y = lru.step(params, lru.zero_carry(params, (2,), jnp.float32), jnp.ones((2, 3)))
    >>> x.shape, x.dtype, y.shape, y.dtype
    ((2, 16), dtype('complex64'), (2, 3), dtype('float32'))
    >>> magnitude = jnp.exp(-jnp.exp(params["nu_log"]))
    >>> bool(((0.9 <= magnitude) & (magnitude <= 0.999)).all())
    True
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jrnn.cells import Cell, Linear, affine


def check_ring(r_min: float, r_max: float, max_phase: float) -> None:
    """Raise a ``ValueError`` naming the argument unless ``0 <= r_min < r_max <= 1`` and
    ``max_phase > 0``."""
    for name, value in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name}: expected a number, got {value!r}")
    if not 0 <= r_min < r_max:
        raise ValueError(f"r_min: expected 0 <= r_min < r_max={r_max}, got {r_min!r}")
    if not r_max <= 1:
        raise ValueError(f"r_max: expected r_min={r_min} < r_max <= 1, got {r_max!r}")
    if not max_phase > 0:
        raise ValueError(f"max_phase: expected a positive number, got {max_phase!r}")


def lam(params: dict[str, jax.Array]) -> jax.Array:
    """The complex diagonal `(N,)` of the recurrence, ``exp(-exp(nu_log) + i exp(theta_log))``."""
    return jnp.exp(jax.lax.complex(-jnp.exp(params["nu_log"]), jnp.exp(params["theta_log"])))


def _leading(v: jax.Array, ndim: int) -> jax.Array:
    """`v (N,)` with ``ndim - 1`` leading axes of size 1, to broadcast explicitly."""
    return jnp.expand_dims(v, tuple(range(ndim - 1)))


def _project(matmul_dtype, params, u):
    scale = jnp.exp(params["gamma_log"])[:, None]  # (N, 1): gamma folded into B's rows
    b_re = affine(u, params["B_re"] * scale, None, matmul_dtype)
    b_im = affine(u, params["B_im"] * scale, None, matmul_dtype)
    return jax.lax.complex(b_re, b_im), u  # gamma * (B u_t) (..., N), and u_t for the skip


def _readout(matmul_dtype, params, x, gx):
    _, u = gx
    real = affine(x.real, params["C_re"], None, matmul_dtype)
    real = real - affine(x.imag, params["C_im"], None, matmul_dtype)
    return real + _leading(params["D"], u.ndim) * u  # Re(C x) + D * u


def _recur(matmul_dtype, params, x, gx):
    bu, _ = gx
    x = _leading(lam(params), x.ndim) * x + bu
    return x, _readout(matmul_dtype, params, x, gx)


def _coefficients(params, gx):
    bu, _ = gx
    return jnp.broadcast_to(_leading(lam(params), bu.ndim), bu.shape), bu


def _zero_carry(params, batch_shape, dtype):
    complex_dtype = jnp.result_type(dtype, jnp.complex64)  # complex128 for float64
    return jnp.zeros((*batch_shape, params["nu_log"].shape[0]), complex_dtype)


def lru(r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi) -> Cell:
    """The LRU record whose ``init`` draws ``|lam|`` on the ring ``[r_min, r_max]`` and its phase
    in ``[0, max_phase]``; ``hidden_size`` is the state size ``N``, the output size is ``D``.

    Raises a ``ValueError`` naming the argument unless ``0 <= r_min < r_max <= 1`` and
    ``max_phase > 0``. Calls with equal arguments return the same record.
    """
    check_ring(r_min, r_max, max_phase)
    return _lru(float(r_min), float(r_max), float(max_phase))


@functools.cache
def _lru(r_min: float, r_max: float, max_phase: float, matmul_dtype: Any = None) -> Cell:
    def init(key, input_size, hidden_size, *, bias=False, proj_size=0, dtype=jnp.float32):
        if bias:
            raise ValueError(f"bias: the LRU has no bias parameters, got bias={bias!r}")
        if proj_size:
            raise ValueError(f"proj_size: the LRU has no projection, got {proj_size}")
        n, d = hidden_size, input_size
        keys = jax.random.split(key, 7)
        info = jnp.finfo(dtype)
        radius2 = jax.random.uniform(keys[0], (n,), dtype, r_min**2, r_max**2)  # |lam|^2
        radius2 = jnp.clip(radius2, info.tiny, 1 - info.epsneg)  # |lam| in (0, 1): logs finite
        phase = jax.random.uniform(keys[1], (n,), dtype, 0.0, max_phase)
        return {
            "nu_log": jnp.log(-0.5 * jnp.log(radius2)),
            "theta_log": jnp.log(jnp.maximum(phase, info.tiny)),
            "gamma_log": 0.5 * jnp.log1p(-radius2),
            "B_re": jax.random.normal(keys[2], (n, d), dtype) / math.sqrt(2 * d),
            "B_im": jax.random.normal(keys[3], (n, d), dtype) / math.sqrt(2 * d),
            "C_re": jax.random.normal(keys[4], (d, n), dtype) / math.sqrt(n),
            "C_im": jax.random.normal(keys[5], (d, n), dtype) / math.sqrt(n),
            "D": jax.random.normal(keys[6], (d,), dtype),
        }

    return Cell(
        name="LRU",
        init=init,
        project=functools.partial(_project, matmul_dtype),
        recur=functools.partial(_recur, matmul_dtype),
        zero_carry=_zero_carry,
        output_size=lambda params: params["D"].shape[0],
        associative=Linear(
            coefficients=_coefficients, readout=functools.partial(_readout, matmul_dtype)
        ),
        with_matmul_dtype=lambda dtype: _lru(r_min, r_max, max_phase, dtype),
    )
