"""The compiled recurrence: a layer's loop over time as one XLA FFI call each way (CPU, float32).

:mod:`jrnn.fused` runs every time step as a handful of XLA ops inside ``jax.lax.scan``. On CPU,
XLA runs the step's small recurrent matmul at under half of the core's peak and adds a few
dozen kernel launches per step, forward and backward. This module hands the loop to C++
(``jrnn/csrc/``): a register-tiled matmul over weights packed once per call, the gate math in
the same pass, units of 32 hidden units by 16 rows shared out among the cores each step, and
one barrier per step.

What stays in XLA is what XLA does well, the large matmuls around the loop: the input
projection of every direction before it (one matmul), and after the backward loop the input's
gradient and the weight gradients, each one matmul over all steps:
``[dW_ih | dW_hh] = sum_t dgates_t^T [x_t | h_{t-1}]``.

:func:`layer` is the entry point, used by :func:`jrnn.fused.layer` whenever :func:`unsupported`
finds nothing against it. The pure-JAX scan stays the reference: the tests compare the two,
outputs and gradients. The library is built by ``pip install`` (see ``setup.py``); where it
was not built, :func:`available` is False and every layer takes the pure-JAX path. Being a
custom VJP, the compiled path supports reverse-mode differentiation;
pass ``kernel=False`` to ``apply`` for forward mode (``jax.jvp``, ``jax.jacfwd``).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_CODES = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
_TARGETS = {
    "jrnn_recurrence_fwd": "JrnnRecurrenceForward",
    "jrnn_recurrence_bwd": "JrnnRecurrenceBackward",
}


@functools.cache
def available() -> bool:
    """Whether the compiled library was built, and is now registered with XLA for CPU."""
    spec = importlib.util.find_spec("jrnn._recurrence")
    if spec is None or not spec.origin:
        return False
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError:
        return False
    for name, symbol in _TARGETS.items():
        handler = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(name, handler, platform="cpu")
    return True


def unsupported(cell_name: str, params: Any, xs: jax.Array, matmul_dtype: Any) -> str | None:
    """Why the compiled recurrence cannot run this layer, or None when it can.

    Args:
        cell_name: the cell's ``name``.
        params: the layer's params dicts, one per direction.
        xs: `(T, B, D)` inputs.
        matmul_dtype: the layer's ``matmul_dtype``.
    """
    dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves(params)} | {jnp.dtype(xs.dtype)}
    if not available():
        return "the compiled library jrnn._recurrence was not built (see setup.py)"
    if jax.default_backend() != "cpu":
        return f"it runs on CPU only, and the default backend is {jax.default_backend()}"
    if dtypes != {jnp.dtype(jnp.float32)}:
        return f"it computes in float32 only, got {sorted(map(str, dtypes))}"
    if matmul_dtype is not None:
        return f"it has no mixed precision, got matmul_dtype={matmul_dtype!r}"
    if "weight_hr" in params[0]:
        return "it has no LSTM projection (proj_size)"
    if xs.shape[0] == 0:
        return "the sequence is empty"
    return None


def layer(
    cell_name: str,
    xs: jax.Array,
    weight_ih: jax.Array,
    bias_ih: jax.Array | None,
    weight_hh: jax.Array,
    bias_hh: jax.Array | None,
    h0: jax.Array,
    c0: jax.Array | None,
    mask: jax.Array | None,
    reverse: tuple[bool, ...],
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """One layer of :func:`jrnn.fused.layer`, compiled: projection, loop over time and VJP.

    ``k`` directions, each on its own weights, all in real time: a direction with ``reverse``
    set runs from the last step back to the first (with ``mask``, from each sequence's last
    valid step), reading and writing the same time-ordered arrays as the others. So the input
    projection of all directions is one matmul, and the output comes out as it is returned.

    Args:
        cell_name: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
        xs: `(T, B, D)` inputs.
        weight_ih: `(k, G*H, D)`.
        bias_ih: `(k, G*H)`, or None for no bias.
        weight_hh: `(k, G*H, H)`.
        bias_hh: `(k, G*H)`, or None for no bias.
        h0: `(k, B, H)` initial hidden state.
        c0: `(k, B, H)` initial cell state (LSTM), else None.
        mask: optional `(T, B)` bool, False past a sequence's length: there the carry is kept
            and the output is zero.
        reverse: ``k`` bools, True for a direction that runs backwards in time.

    Returns:
        ``(ys, h, c)``: outputs `(T, B, k*H)`, final `h (k, B, H)` and (LSTM, else None)
        `c (k, B, H)`.
    """
    if cell_name not in _CODES:
        raise ValueError(f"cell_name: expected one of {sorted(_CODES)}, got {cell_name!r}")
    if not available():
        raise RuntimeError("the compiled library jrnn._recurrence was not built (see setup.py)")
    k, gh, hidden = weight_hh.shape
    steps, batch = xs.shape[:2]
    if weight_ih.shape[:2] != (k, gh) or weight_ih.shape[2:] != xs.shape[2:]:
        raise ValueError(
            f"weight_ih: expected ({k}, {gh}, {xs.shape[2]}) for weight_hh {weight_hh.shape} and "
            f"xs {xs.shape}, got {weight_ih.shape}"
        )
    if len(reverse) != k:
        raise ValueError(f"reverse: expected one flag per direction ({k}), got {reverse!r}")
    code = _CODES[cell_name]
    bits = sum(1 << j for j, flag in enumerate(reverse) if flag)
    zeros = jnp.zeros((k, gh), xs.dtype)
    keep = jnp.ones((steps, batch), jnp.uint8) if mask is None else mask.astype(jnp.uint8)
    rows = (k * batch, hidden)  # the carry, direction-major
    c0 = h0 if c0 is None else c0
    hs, aux = _layer(
        code, bits, xs, weight_ih, zeros if bias_ih is None else bias_ih, weight_hh,
        zeros if bias_hh is None else bias_hh, h0.reshape(rows), c0.reshape(rows), keep,
    )  # fmt: skip
    ys = hs.reshape(steps, batch, k * hidden)
    if mask is not None:
        ys = jnp.where(mask[..., None], ys, 0.0)

    def final(a):  # the carry after each direction's last step (time 0 for a reverse one)
        a = a.reshape(steps, batch, k, hidden)
        return jnp.stack([a[0 if flag else -1, :, j] for j, flag in enumerate(reverse)])

    return ys, final(hs), (final(aux) if code == _CODES["LSTM"] else None)


def _dummy() -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1,), jnp.float32)


def _call_forward(code, bits, gx, w, b, h0, c0, keep):
    """``(hs, aux, act)``; act (RNN: hs) takes over gx's buffer, which nothing else reads."""
    steps, rows, hidden = gx.shape[0], gx.shape[1], w.shape[2]
    gated = code in (_CODES["LSTM"], _CODES["GRU"])
    full = jax.ShapeDtypeStruct((steps, rows, hidden), jnp.float32)
    gates = jax.ShapeDtypeStruct(gx.shape, jnp.float32)
    outputs = (full, full, gates) if gated else (full, _dummy(), _dummy())
    call = jax.ffi.ffi_call(
        "jrnn_recurrence_fwd",
        outputs,
        vmap_method="sequential",
        input_output_aliases={0: 2 if gated else 0},
    )
    return call(gx, w, b, h0, c0, keep, cell=np.int32(code), reverse=np.int32(bits))


def _project(xs, w_ih, b_ih):
    """`(T, B, D)` -> `(T, B*k, G*H)`: every direction's input half, one matmul."""
    k, gh, d = w_ih.shape
    gx = xs.reshape(-1, d) @ w_ih.reshape(k * gh, d).T + b_ih.reshape(1, k * gh)
    return gx.reshape(xs.shape[0], xs.shape[1] * k, gh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _layer(code, bits, xs, w_ih, b_ih, w_hh, b_hh, h0, c0, keep):
    hs, aux, _ = _call_forward(code, bits, _project(xs, w_ih, b_ih), w_hh, b_hh, h0, c0, keep)
    return hs, aux  # aux is LSTM's cell state; for the other cells, unused


def _layer_fwd(code, bits, xs, w_ih, b_ih, w_hh, b_hh, h0, c0, keep):
    gx = _project(xs, w_ih, b_ih)
    hs, aux, act = _call_forward(code, bits, gx, w_hh, b_hh, h0, c0, keep)
    return (hs, aux), (xs, w_ih, w_hh, h0, c0, keep, hs, aux, act)


def _layer_bwd(code, bits, residuals, cotangents):
    xs, w_ih, w_hh, h0, c0, keep, hs, aux, act = residuals
    dhs, daux = cotangents
    k, gh, hidden = w_hh.shape
    steps, rows = hs.shape[:2]
    batch, d = rows // k, xs.shape[-1]
    gru = code == _CODES["GRU"]
    outputs = (
        jax.ShapeDtypeStruct((steps, rows, gh), jnp.float32),
        jax.ShapeDtypeStruct((steps, rows, hidden), jnp.float32) if gru else _dummy(),
        jax.ShapeDtypeStruct(h0.shape, jnp.float32),
        jax.ShapeDtypeStruct(h0.shape, jnp.float32),
    )
    # dgx takes over act's buffer (RNN: dhs's), GRU's drec aux's: each is read before written
    aliases = {6: 0, 5: 1} if gru else {6: 0} if code == _CODES["LSTM"] else {7: 0}
    call = jax.ffi.ffi_call(
        "jrnn_recurrence_bwd", outputs, vmap_method="sequential", input_output_aliases=aliases
    )
    dgx, drec, dh0, dc0 = call(
        w_hh, h0, c0, keep, hs, aux, act, dhs, daux, cell=np.int32(code), reverse=np.int32(bits)
    )
    # the recurrent half's cotangent: for GRU, n's block is r * (W_hn h + b_hn)'s
    dgh = jnp.concatenate([dgx[..., : 2 * hidden], drec], -1) if gru else dgx
    dgx = dgx.reshape(steps * batch, k, gh)
    dgh = dgh.reshape(steps * batch, k, gh)
    x = xs.reshape(steps * batch, d)
    dx = (dgx.reshape(-1, k * gh) @ w_ih.reshape(k * gh, d)).reshape(xs.shape)
    hs = hs.reshape(steps, batch, k, hidden)
    h0 = h0.reshape(k, 1, batch, hidden)
    # Weight gradients, summed over steps and batch: [dW_ih | dW_hh] = dgx^T [x | h_prev] as one
    # matmul where dgx is dgh (all but GRU), computed transposed, which reads dgx as it lies (XLA
    # copies a transposed operand first): the LSTM train step ran 13% faster than with the two
    # matmuls of autodiff.
    dw_ih, dw_hh = [], []
    for j in range(k):
        h_prev = (hs[1:, :, j], h0[j]) if bits >> j & 1 else (h0[j], hs[:-1, :, j])
        h_prev = jnp.concatenate(h_prev).reshape(-1, hidden)
        if gru:
            dw_ih.append((x.T @ dgx[:, j]).T)
            dw_hh.append((h_prev.T @ dgh[:, j]).T)
        else:
            both = (jnp.concatenate([x, h_prev], axis=1).T @ dgx[:, j]).T
            dw_ih.append(both[:, :d])
            dw_hh.append(both[:, d:])
    db_ih = dgx.sum(axis=0)
    db_hh = dgh.sum(axis=0) if gru else db_ih
    return dx, jnp.stack(dw_ih), db_ih, jnp.stack(dw_hh), db_hh, dh0, dc0, None


_layer.defvjp(_layer_fwd, _layer_bwd)
