"""The compiled path: a layer's loop over time as one XLA FFI call each way (CPU, float32).

XLA:CPU runs the small recurrent matmul of a scan step at under half of the core's peak and adds
a few dozen kernel launches per step. This path hands the loop to C++ (``jrnn/csrc/``): a
register-tiled matmul over weights packed once per call, ``x_t @ W_ih^T`` and
``h_{t-1} @ W_hh^T`` into the same tiles (no `(T, B, G*H)` array of projected inputs), the gate
math in the same pass, units of 32 hidden units by 16 rows shared out among the cores each step
(the caller pinned to its core for the call, helper threads that outlive calls one on each of
the others), one barrier per step. A forward pass
with no backward pass after it writes no gate activations. The backward call adds each step's
part of the weight and bias gradients, ``[dW_hh | dW_ih] += dgates_t^T [h_{t-1} | x_t]``, while
that step's gate cotangents are in cache (each panel of weights' gradients owned by one thread);
what stays in XLA is one large matmul after the backward loop, the input's gradient.

``matmul_dtype=jnp.bfloat16`` runs here too, with :func:`jrnn.cells.mixed_einsum`'s contract:
``x``, the weights, each ``h_{t-1}`` (and ``m_t``) and in the backward pass each step's
cotangents are rounded to bfloat16 before their matmul, whose exact products are summed in
float32. On a CPU with AVX512-BF16 (instruction set ``"avx512bf16"``) the loops' matmuls then
run on its bfloat16 dot-product instruction (two products per float32 lane and instruction, the
operands stored as bfloat16); elsewhere the float32 kernel sums the rounded operands, the same
numbers at float32 speed.

It runs a layer only when the cell declares a kernel identity (``Cell.kernel``) that this module
has and the cell is the built-in record of that kernel; :func:`unsupported` says why not
otherwise. The library is built by ``pip install`` (see ``setup.py``); where it was not built,
:func:`available` is False (:func:`load_error` says why) and ``method="auto"`` takes the scan
path. Being a custom VJP, the compiled path has reverse-mode derivatives only: forward mode
(``jax.jvp``, ``jax.jacfwd``) needs ``method="scan"``.

The library is built for a baseline CPU and holds the loops once per instruction set: on x86-64
``"avx512bf16"`` (AVX-512 with the bfloat16 dot product), ``"avx512"``, ``"avx2"`` (AVX2 with
FMA) and ``"baseline"`` (x86-64-v2: SSE4.2), elsewhere
``"baseline"`` only. It runs the widest one that the CPU has (:func:`isa`; :func:`isas` lists
the ones it has). The environment variable ``JRNN_ISA``, read when the library is first used,
forces another, e.g. ``JRNN_ISA=baseline``; a name that is not one of them, or one that this
CPU cannot run, is a :func:`load_error`, so ``method="compiled"`` says why and ``method="auto"``
takes the scan path.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jrnn import cells
from jrnn.cells import Cell, Params
from jrnn.methods.common import chunked, valid_mask
from jrnn.methods.options import Options

# kernel identity -> the cell code of jrnn/csrc/recurrence.cc (enum Cell there)
_CODES = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
_TARGETS = {
    "jrnn_recurrence_fwd": "JrnnRecurrenceForward",
    "jrnn_recurrence_bwd": "JrnnRecurrenceBackward",
}

#: The environment variable that forces an instruction set (see above).
ISA_VARIABLE = "JRNN_ISA"


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """The library (None where it did not load), and why it cannot be used (None once its
    handlers are registered with XLA for CPU)."""
    spec = importlib.util.find_spec("jrnn._recurrence")
    if spec is None or not spec.origin:
        return None, "the compiled library jrnn._recurrence was not built (see setup.py)"
    try:
        library = ctypes.CDLL(spec.origin)
        for name in ("JrnnRecurrenceIsa", "JrnnRecurrenceIsas", "JrnnRecurrenceSelectIsa"):
            getattr(library, name).restype = ctypes.c_char_p
    except (OSError, AttributeError) as error:  # AttributeError: built from older sources
        return None, f"the compiled library {spec.origin} failed to load: {error}"
    forced = os.environ.get(ISA_VARIABLE)
    if forced:
        reason = library.JrnnRecurrenceSelectIsa(forced.encode()).decode()
        if reason:
            return library, f"{ISA_VARIABLE}={forced}: {reason}"
    for name, symbol in _TARGETS.items():
        handler = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(name, handler, platform="cpu")
    return library, None


def load_error() -> str | None:
    """Why the compiled library cannot be used, or None once it is registered with XLA for CPU."""
    return _load()[1]


def available() -> bool:
    """Whether the compiled library was built and is registered with XLA for CPU."""
    return load_error() is None


def isa() -> str | None:
    """The instruction set that the compiled loops run (``"avx512bf16"``, ``"avx512"``,
    ``"avx2"`` or ``"baseline"``), or None where the library cannot be used."""
    library, reason = _load()
    return None if reason else library.JrnnRecurrenceIsa().decode()


def isas() -> tuple[str, ...]:
    """The library's instruction sets that this CPU runs, widest first (empty where the library
    did not load)."""
    library, _ = _load()
    return () if library is None else tuple(library.JrnnRecurrenceIsas().decode().split(", "))


def unsupported(cell: Cell, params: tuple[Params, ...], xs: Any, options: Options) -> str | None:
    """Why the compiled path cannot run this layer, or None when it can.

    Args:
        cell: the layer's cell.
        params: the layer's params, one per direction.
        xs: `(T, B, D)` inputs.
        options: the layer's options.
    """
    if cell.kernel is None:
        return f"cell {cell.name} has no compiled kernel"
    if cell.kernel not in _CODES or cells.BUILTIN.get(cell.kernel) != cell._replace(
        name=cell.kernel
    ):
        return (
            f"cell {cell.name} declares kernel {cell.kernel!r}, but it is not jrnn's built-in "
            f"cell of that kernel (built-in kernels: {sorted(_CODES)})"
        )
    reason = load_error()
    if reason:
        return reason
    if jax.default_backend() != "cpu":
        return f"it runs on CPU only, and the default backend is {jax.default_backend()}"
    dtypes = {jnp.dtype(a.dtype) for a in jax.tree.leaves((params, xs))}
    if dtypes != {jnp.dtype(jnp.float32)}:
        return f"it computes in float32 only, got {sorted(map(str, dtypes))}"
    if options.matmul_dtype is not None and jnp.dtype(options.matmul_dtype) != jnp.bfloat16:
        return f"its mixed precision is bfloat16 only, got matmul_dtype={options.matmul_dtype!r}"
    return None


def layer(
    cell: Cell,
    params: tuple[Params, ...],
    xs: jax.Array,
    h0: Any,
    *,
    lengths: jax.Array | None,
    reverse: tuple[bool, ...],
    options: Options,
) -> tuple[jax.Array, Any]:
    """One layer on the compiled path; arguments and results as :func:`jrnn.methods.scan.layer`.

    Without ``remat`` all directions run in one call. With ``remat`` each direction runs in
    chunks of ``remat`` steps, a reverse direction taking its chunks last to first.
    """
    p = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
    mask = None if lengths is None else valid_mask(lengths, xs.shape[0])
    lstm = cell.kernel == "LSTM"
    carry = h0 if lstm else (h0, None)
    bf16 = options.matmul_dtype is not None

    def forward(p, flags, xs, carry, mask):
        names = ("weight_ih", "bias_ih", "weight_hh", "bias_hh")
        weights = [p.get(name) for name in names]
        ys, h, c = call(cell.kernel, xs, *weights, *carry, mask, flags, bf16=bf16,
                        weight_hr=p.get("weight_hr"))  # fmt: skip
        return ys, (h, c)

    if not options.remat:
        ys, (h, c) = forward(p, reverse, xs, carry, mask)
    else:
        results = []
        for j, flag in enumerate(reverse):
            pj, cj = jax.tree.map(lambda a, j=j: a[j : j + 1], (p, carry))
            run = functools.partial(forward, pj, (flag,))
            results.append(chunked(run, options.remat, xs, cj, mask, reverse=flag))
        ys = jnp.concatenate([ys for ys, _ in results], axis=-1)
        h, c = jax.tree.map(lambda *a: jnp.concatenate(a), *[c for _, c in results])
    return ys, ((h, c) if lstm else h)


def call(
    kernel: str,
    xs: jax.Array,
    weight_ih: jax.Array,
    bias_ih: jax.Array | None,
    weight_hh: jax.Array,
    bias_hh: jax.Array | None,
    h0: jax.Array,
    c0: jax.Array | None,
    mask: jax.Array | None,
    reverse: tuple[bool, ...],
    *,
    bf16: bool = False,
    weight_hr: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The compiled FFI call of one layer: input projection and loop over time, and its VJP.

    ``k`` directions, each on its own weights, all in real time: a direction with ``reverse``
    set runs from the last step back to the first (with ``mask``, from each sequence's last
    valid step), reading and writing the same time-ordered arrays as the others. So the output
    comes out as it is returned.

    With ``weight_hr`` (LSTM only) each step's ``h`` is ``m @ W_hr^T`` (PyTorch's ``proj_size``):
    ``h``, the output and ``weight_hh``'s columns have ``P`` units, ``m`` and ``c`` ``H``. Write
    ``O`` for the size of ``h``: ``P`` with a projection, else ``H``.

    Args:
        kernel: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
        xs: `(T, B, D)` inputs.
        weight_ih: `(k, G*H, D)`.
        bias_ih: `(k, G*H)`, or None for no bias.
        weight_hh: `(k, G*H, O)`.
        bias_hh: `(k, G*H)`, or None for no bias.
        h0: `(k, B, O)` initial hidden state.
        c0: `(k, B, H)` initial cell state (LSTM), else None.
        mask: optional `(T, B)` bool, False past a sequence's length: there the carry is kept
            and the output is zero.
        reverse: ``k`` bools, True for a direction that runs backwards in time.
        bf16: mixed precision, the contract of :func:`jrnn.cells.mixed_einsum` with bfloat16:
            every matmul reads its operands (``x_t``, ``h_{t-1}``, ``m_t``, the weights, and in
            the backward pass the cotangents of its output) rounded to bfloat16 and sums their
            exact products in float32; biases, gate math, carries, outputs and gradients stay
            float32.
        weight_hr: `(k, P, H)`, the LSTM's projection, or None for none.

    Returns:
        ``(ys, h, c)``: outputs `(T, B, k*O)`, final `h (k, B, O)` and (LSTM, else None)
        `c (k, B, H)`.
    """
    if kernel not in _CODES:
        raise ValueError(f"kernel: expected one of {sorted(_CODES)}, got {kernel!r}")
    if load_error():
        raise RuntimeError(load_error())
    k, gh, out = weight_hh.shape
    steps, batch = xs.shape[:2]
    if weight_ih.shape[:2] != (k, gh) or weight_ih.shape[2:] != xs.shape[2:]:
        raise ValueError(
            f"weight_ih: expected ({k}, {gh}, {xs.shape[2]}) for weight_hh {weight_hh.shape} and "
            f"xs {xs.shape}, got {weight_ih.shape}"
        )
    if weight_hr is not None and (
        kernel != "LSTM" or weight_hr.ndim != 3 or weight_hr.shape[:2] != (k, out)
    ):
        raise ValueError(
            f"weight_hr: expected an LSTM's ({k}, {out}, H) for weight_hh {weight_hh.shape}, "
            f"got {weight_hr.shape} for {kernel}"
        )
    hidden = out if weight_hr is None else weight_hr.shape[2]
    if len(reverse) != k:
        raise ValueError(f"reverse: expected one flag per direction ({k}), got {reverse!r}")
    code = _CODES[kernel]
    bits = sum(1 << j for j, flag in enumerate(reverse) if flag)
    zeros = jnp.zeros((k, gh), xs.dtype)
    keep = jnp.ones((steps, batch), jnp.uint8) if mask is None else mask.astype(jnp.uint8)
    c0 = h0 if c0 is None else c0
    hs, carry = _layer(
        code, bits, bf16, xs, weight_ih, zeros if bias_ih is None else bias_ih, weight_hh,
        zeros if bias_hh is None else bias_hh, weight_hr, h0.reshape(k * batch, out),
        c0.reshape(k * batch, hidden), keep,
    )  # fmt: skip
    ys = hs.reshape(steps, batch, k * out)
    if mask is not None:
        ys = jnp.where(mask[..., None], ys, 0.0)
    h, c = [a.reshape(k, batch, -1) for a in carry] + [None] * (2 - len(carry))
    return ys, h, c


def _final(a, k, bits):
    """`(T, k*B, H)` -> `(k*B, H)`: each direction's carry after its last step (time 0 for a
    reverse one), direction-major."""
    steps, rows, hidden = a.shape
    a = a.reshape(steps, rows // k, k, hidden)
    return jnp.concatenate([a[0 if bits >> j & 1 else -1, :, j] for j in range(k)])


def _dummy() -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1,), jnp.float32)


def _bf16(a: jax.Array) -> jax.Array:
    """``a`` rounded to bfloat16, kept in float32 (a matmul operand of the ``bf16`` contract)."""
    return a.astype(jnp.bfloat16).astype(a.dtype)


def _operands(bf16, xs, w_ih, w_hh, w_hr):
    """The matmul operands that XLA hands the calls: with ``bf16``, rounded (:func:`_bf16`);
    without a projection, a (1,) placeholder for ``w_hr``."""
    if w_hr is None:
        w_hr = jnp.zeros((1,), jnp.float32)
    elif bf16:
        w_hr = _bf16(w_hr)
    return (*map(_bf16, (xs, w_ih, w_hh)), w_hr) if bf16 else (xs, w_ih, w_hh, w_hr)


def _call_forward(code, bits, bf16, save, xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep):
    """``(hs, aux, act, ms)``: the loop over time, input projection included; act only with
    ``save`` (a backward pass follows) and for LSTM and GRU, ms (each step's m) only with a
    projection (``w_hr`` of rank 3), else (1,) placeholders. aux and ms hold every step with
    ``save``, else only the last two, by step parity: `(2, k*B, H)`, the last step's at
    ``(T - 1) % 2``. With ``bf16``, xs, w_ih, w_hh and w_hr come rounded (:func:`_bf16`); the
    call rounds each h_{t-1} and m_t."""
    steps, batch = xs.shape[:2]
    k, gh, out = w_hh.shape
    rows = batch * k
    gated = code in (_CODES["LSTM"], _CODES["GRU"])
    state = jax.ShapeDtypeStruct((steps if save else 2, rows, c0.shape[-1]), jnp.float32)
    outputs = (
        jax.ShapeDtypeStruct((steps, rows, out), jnp.float32),
        state if gated else _dummy(),
        jax.ShapeDtypeStruct((steps, rows, gh), jnp.float32) if gated and save else _dummy(),
        state if w_hr.ndim == 3 else _dummy(),
    )
    call = jax.ffi.ffi_call("jrnn_recurrence_fwd", outputs, vmap_method="sequential")
    return call(
        xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep,
        cell=np.int32(code), reverse=np.int32(bits), save=np.int32(save), bf16=np.int32(bf16),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer(code, bits, bf16, xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep):
    """``(hs, carry)``: hs `(T, k*B, O)`, carry the final ``(h,)``, for LSTM ``(h, c)``,
    direction-major, h `(k*B, O)` and c `(k*B, H)`. aux (LSTM's cell states, GRU's n halves)
    stays inside. ``w_hr``: the projection `(k, P, H)`, or None. The operands' rounding
    (``bf16``) is inside the custom VJP, so that the weights' and the input's gradients pass it
    by as they are (float32), as in :func:`jrnn.cells.mixed_einsum`."""
    xs, w_ih, w_hh, w_hr = _operands(bf16, xs, w_ih, w_hh, w_hr)
    hs, aux, _, _ = _call_forward(
        code, bits, bf16, False, xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep
    )
    # aux holds the last two steps, by step parity: every direction's last step (a reverse
    # one's time 0) in slot (T - 1) % 2, the one entry _carry then reads
    last = (hs.shape[0] - 1) % 2
    return _carry(code, bits, w_hh.shape[0], hs, aux[last : last + 1])


def _carry(code, bits, k, hs, aux):
    """The layer's outputs and final carry from the call's hs and aux (LSTM's cell states)."""
    h = _final(hs, k, bits)
    return hs, ((h, _final(aux, k, bits)) if code == _CODES["LSTM"] else (h,))


def _layer_fwd(code, bits, bf16, xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep):
    xs, w_ih, w_hh, w_hr = _operands(bf16, xs, w_ih, w_hh, w_hr)
    hs, aux, act, ms = _call_forward(
        code, bits, bf16, True, xs, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, keep
    )
    residuals = (xs, w_ih, w_hh, w_hr, h0, c0, keep, hs, aux, act, ms)
    return _carry(code, bits, w_hh.shape[0], hs, aux), residuals


def _layer_bwd(code, bits, bf16, residuals, cotangents):
    xs, w_ih, w_hh, w_hr, h0, c0, keep, hs, aux, act, ms = residuals
    dhs, carry = cotangents
    dhn = carry[0]
    dcn = carry[1] if code == _CODES["LSTM"] else c0  # read for LSTM only
    k, gh = w_hh.shape[:2]
    steps, rows = hs.shape[:2]
    # dgx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh
    shapes = (
        (steps, rows, gh), h0.shape, c0.shape, w_ih.shape, w_hh.shape, w_hr.shape, (k, gh),
        (k, gh),
    )  # fmt: skip
    outputs = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    # dgx takes over act's buffer (RNN: dhs's): it is read before written
    aliases = {8: 0} if code in (_CODES["LSTM"], _CODES["GRU"]) else {10: 0}
    call = jax.ffi.ffi_call(
        "jrnn_recurrence_bwd", outputs, vmap_method="sequential", input_output_aliases=aliases
    )
    dgx, dh0, dc0, dw_ih, dw_hh, dw_hr, db_ih, db_hh = call(
        w_hh, w_hr, xs, h0, c0, keep, hs, aux, act, ms, dhs, dhn, dcn,
        cell=np.int32(code), reverse=np.int32(bits), bf16=np.int32(bf16),
    )  # fmt: skip
    # the input's gradient, summed over directions: one matmul over all steps. With bf16 its
    # operands come rounded (the call leaves dgx rounded, w_ih came rounded), so on a CPU with
    # the bfloat16 dot product they convert to bfloat16 exactly and XLA's bfloat16 matmul
    # (products exact, sums in float32) gives what the float32 one does but for the order of
    # the sums: LSTM and 2-layer bidirectional bf16 train steps 1.05x and 1.13x faster on the
    # AVX512-BF16 EPYC
    dgx, w_in = dgx.reshape(steps * rows // k, k * gh), w_ih.reshape(k * gh, xs.shape[-1])
    if bf16 and isa() == "avx512bf16":
        dgx, w_in = dgx.astype(jnp.bfloat16), w_in.astype(jnp.bfloat16)
    dx = jnp.dot(dgx, w_in, preferred_element_type=jnp.float32)
    dw_hr = dw_hr if w_hr.ndim == 3 else None  # none without a projection
    return dx.reshape(xs.shape), dw_ih, db_ih, dw_hh, db_hh, dw_hr, dh0, dc0, None


_layer.defvjp(_layer_fwd, _layer_bwd)
